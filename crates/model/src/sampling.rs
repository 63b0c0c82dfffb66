//! Choosing the next token from a row of logits, on the host: greedy, temperature, top-k, top-p
//! and repetition penalty with the semantics of Hugging Face transformers' logits processors, and
//! a seeded RNG so a sampled generation is reproducible.
//!
//! [`Sampler::sample`] applies, in transformers' order: the repetition penalty
//! (`RepetitionPenaltyLogitsProcessor`, also in greedy mode), then, when sampling, the temperature
//! (`TemperatureLogitsWarper`), top-k (`TopKLogitsWarper`) and top-p (`TopPLogitsWarper`), and
//! draws from the softmax of what is left. Temperature 0 means greedy (argmax, the first index on
//! ties, like `torch.argmax`); top-k and top-p are then ignored, as transformers ignores its
//! warpers when `do_sample=False`.

use crate::{ModelError, Result};

/// How to pick the next token.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// Softmax temperature; 0 = greedy (argmax).
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens (ties with the k-th kept); 0 = off.
    pub top_k: usize,
    /// Nucleus sampling: keep the smallest set of most likely tokens whose probabilities sum to at
    /// least `top_p` (at least one token); 1.0 = off.
    pub top_p: f32,
    /// transformers' repetition penalty over the prompt and the generated tokens: a seen token's
    /// logit is divided by it when positive and multiplied by it when negative; 1.0 = off.
    pub repetition_penalty: f32,
    /// Seed of the sampling RNG.
    pub seed: u64,
}

impl Default for SamplingParams {
    /// Greedy, no penalty.
    fn default() -> SamplingParams {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            repetition_penalty: 1.0,
            seed: 0,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding (argmax), no penalty.
    pub fn greedy() -> SamplingParams {
        SamplingParams::default()
    }

    /// Whether this picks the argmax (temperature 0).
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }

    /// Checks the ranges: temperature finite and >= 0, top_p in (0, 1], repetition penalty
    /// finite and > 0.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ModelError::Config(m));
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return bad(format!(
                "temperature must be >= 0 (0 = greedy), got {}",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!(
                "top_p must be in (0, 1] (1 = off), got {}",
                self.top_p
            ));
        }
        if !self.repetition_penalty.is_finite() || self.repetition_penalty <= 0.0 {
            return bad(format!(
                "repetition penalty must be > 0 (1 = off), got {}",
                self.repetition_penalty
            ));
        }
        Ok(())
    }
}

/// SplitMix64: a tiny seeded generator (the same as the trainer's and the tests').
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)` (53 random bits).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Index of the largest logit (the first one on ties; NaN never wins).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, &x) in logits.iter().enumerate() {
        if x > logits[best] || logits[best].is_nan() {
            best = i;
        }
    }
    best as u32
}

/// transformers' `RepetitionPenaltyLogitsProcessor`: for every distinct id in `seen`, its logit
/// `s` becomes `s * penalty` if `s < 0`, else `s / penalty`. Ids outside the row are ignored.
pub fn apply_repetition_penalty(logits: &mut [f32], seen: &[u32], penalty: f32) {
    if penalty == 1.0 {
        return;
    }
    let mut done = vec![false; logits.len()];
    for &id in seen {
        let i = id as usize;
        if i >= logits.len() || done[i] {
            continue;
        }
        done[i] = true;
        let s = logits[i];
        logits[i] = if s < 0.0 { s * penalty } else { s / penalty };
    }
}

/// `TemperatureLogitsWarper`: divides every logit by `temperature` (> 0).
pub fn apply_temperature(logits: &mut [f32], temperature: f32) {
    if temperature != 1.0 {
        for x in logits.iter_mut() {
            *x /= temperature;
        }
    }
}

/// `TopKLogitsWarper`: sets to -inf every logit below the `k`-th largest (ties with it are kept);
/// `k == 0` or `k >= len` keeps everything.
pub fn top_k_filter(logits: &mut [f32], k: usize) {
    if k == 0 || k >= logits.len() {
        return;
    }
    let mut sorted: Vec<f32> = logits.to_vec();
    // The k-th largest value: partition so that index k-1 holds it (descending order).
    sorted.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
    let kth = sorted[k - 1];
    for x in logits.iter_mut() {
        if *x < kth {
            *x = f32::NEG_INFINITY;
        }
    }
}

/// `TopPLogitsWarper` (`min_tokens_to_keep = 1`): sorts the logits ascending, takes the
/// cumulative softmax probabilities, and sets to -inf every token whose cumulative probability is
/// `<= 1 - top_p`, except the most likely one; what stays is the smallest set of most likely
/// tokens whose probabilities sum to at least `top_p`. `top_p >= 1` keeps everything.
pub fn top_p_filter(logits: &mut [f32], top_p: f32) {
    if top_p >= 1.0 || logits.is_empty() {
        return;
    }
    let probs = softmax(logits);
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[a].total_cmp(&logits[b]).then(b.cmp(&a)));
    let limit = 1.0 - top_p as f64;
    let mut cum = 0.0f64;
    let last = order.len() - 1;
    for (rank, &i) in order.iter().enumerate() {
        cum += probs[i];
        if rank < last && cum <= limit {
            logits[i] = f32::NEG_INFINITY;
        }
    }
}

/// Softmax in f64 (`-inf` logits get probability 0). All `-inf` gives all zeros.
pub fn softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits
        .iter()
        .copied()
        .filter(|x| !x.is_nan())
        .fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return vec![0.0; logits.len()];
    }
    let mut p: Vec<f64> = logits
        .iter()
        .map(|&x| {
            if x.is_nan() {
                0.0
            } else {
                ((x - max) as f64).exp()
            }
        })
        .collect();
    let sum: f64 = p.iter().sum();
    for x in p.iter_mut() {
        *x /= sum;
    }
    p
}

/// The index where the cumulative sum of `probs` first exceeds `u * total` (`u` in `[0, 1)`);
/// never an index of probability 0.
pub fn sample_index(probs: &[f64], u: f64) -> u32 {
    let total: f64 = probs.iter().sum();
    let target = u * total;
    let mut cum = 0.0;
    let mut last_nonzero = 0;
    for (i, &p) in probs.iter().enumerate() {
        if p > 0.0 {
            cum += p;
            last_nonzero = i;
            if cum > target {
                return i as u32;
            }
        }
    }
    last_nonzero as u32
}

/// Picks tokens with fixed [`SamplingParams`] and its own seeded RNG.
#[derive(Clone, Debug)]
pub struct Sampler {
    pub params: SamplingParams,
    rng: SplitMix64,
}

impl Sampler {
    /// A sampler seeded with `params.seed`; errors on out-of-range parameters.
    pub fn new(params: SamplingParams) -> Result<Sampler> {
        params.validate()?;
        Ok(Sampler {
            rng: SplitMix64::new(params.seed),
            params,
        })
    }

    /// The next token after `logits` (one row, `[V]`); `seen` is every token so far (prompt and
    /// generated), for the repetition penalty.
    pub fn sample(&mut self, logits: &[f32], seen: &[u32]) -> u32 {
        let p = &self.params;
        let mut x = logits.to_vec();
        apply_repetition_penalty(&mut x, seen, p.repetition_penalty);
        if p.is_greedy() {
            return argmax(&x);
        }
        apply_temperature(&mut x, p.temperature);
        top_k_filter(&mut x, p.top_k);
        top_p_filter(&mut x, p.top_p);
        let probs = softmax(&x);
        let u = self.rng.next_f64();
        sample_index(&probs, u)
    }
}
