//! RoPE's inverse frequencies, computed on the host exactly as transformers computes its
//! `inv_freq` buffer (default and Llama 3 `rope_scaling`), bit for bit: what the rope kernels
//! (`shaders/nn/rope_*.wgsl`) and the CPU reference rotate by. The model owns this (it is what
//! loading a config produces); `tests/nn_rope.rs` checks it against transformers' buffers.

/// `rope_scaling` / `rope_parameters` of `"rope_type": "llama3"` (Llama 3.1 / 3.2 configs), as
/// the config's JSON numbers (Python floats, hence f64).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Llama3Scaling {
    /// `factor` (8 for Llama 3.1, 32 for Llama 3.2 1B/3B).
    pub factor: f64,
    /// `low_freq_factor` (1 in Meta's configs).
    pub low_freq_factor: f64,
    /// `high_freq_factor` (4 in Meta's configs).
    pub high_freq_factor: f64,
    /// `original_max_position_embeddings` (8192 in Meta's configs).
    pub original_max_position_embeddings: f64,
}

/// A double-f32 number `hi + lo` (|lo| <= ulp(hi) / 2 after normalisation).
#[derive(Clone, Copy)]
struct Df {
    hi: f32,
    lo: f32,
}

const fn df(hi: f32, lo: f32) -> Df {
    Df { hi, lo }
}

/// Double-f32 helpers with fused multiply-adds, the arithmetic of SLEEF's single-precision
/// functions as built for x86 AVX2/AVX-512 and AArch64 (`ENABLE_FMA_SP`, no FP contraction).
impl Df {
    /// `hi + lo` re-split so that `hi` is the rounded sum.
    fn normalize(self) -> Df {
        let s = self.hi + self.lo;
        df(s, (self.hi - s) + self.lo)
    }
    fn scale(self, k: f32) -> Df {
        df(self.hi * k, self.lo * k)
    }
    /// Exact `a + b` (any magnitudes).
    fn add2_ff(a: f32, b: f32) -> Df {
        let s = a + b;
        let v = s - a;
        df(s, (a - (s - v)) + (b - v))
    }
    /// `self + b` for `|self| >= |b|`.
    fn add(self, b: Df) -> Df {
        let s = self.hi + b.hi;
        df(s, (((self.hi - s) + b.hi) + self.lo) + b.lo)
    }
    /// `a + self` for `|a| >= |self|`.
    fn add_to_f(self, a: f32) -> Df {
        let s = a + self.hi;
        df(s, ((a - s) + self.hi) + self.lo)
    }
    /// `self + b`, any magnitudes.
    fn add2(self, b: Df) -> Df {
        let s = self.hi + b.hi;
        let v = s - self.hi;
        let t = (self.hi - (s - v)) + (b.hi - v);
        df(s, t + (self.lo + b.lo))
    }
    /// `self + b`, any magnitudes.
    fn add2_f(self, b: f32) -> Df {
        let s = self.hi + b;
        let v = s - self.hi;
        let t = (self.hi - (s - v)) + (b - v);
        df(s, t + self.lo)
    }
    fn mul_f(self, b: f32) -> Df {
        let s = self.hi * b;
        df(s, self.lo.mul_add(b, self.hi.mul_add(b, -s)))
    }
    fn mul(self, b: Df) -> Df {
        let s = self.hi * b.hi;
        df(
            s,
            self.hi
                .mul_add(b.lo, self.lo.mul_add(b.hi, self.hi.mul_add(b.hi, -s))),
        )
    }
    fn square(self) -> Df {
        let s = self.hi * self.hi;
        df(
            s,
            (self.hi + self.hi).mul_add(self.lo, self.hi.mul_add(self.hi, -s)),
        )
    }
    fn div(self, d: Df) -> Df {
        let t = 1.0 / d.hi;
        let s = self.hi * t;
        let u = t.mul_add(self.hi, -s);
        let v = (-d.lo).mul_add(t, (-d.hi).mul_add(t, 1.0));
        df(s, s.mul_add(v, self.lo.mul_add(t, u)))
    }
}

/// `ln(d)` as a double-f32, for positive normal `d` (SLEEF's `logkf`). The constants are SLEEF's,
/// written out exactly.
#[allow(clippy::excessive_precision)]
fn sleef_logk(d: f32) -> Df {
    // d = m * 2^e with m in [0.75, 1.5).
    let e = ((((d * (1.0f32 / 0.75)).to_bits() >> 23) & 0xff) as i32) - 127;
    let m = f32::from_bits((d.to_bits() as i32 - (e << 23)) as u32);
    let x = Df::add2_ff(-1.0, m).div(Df::add2_ff(1.0, m));
    let x2 = x.square();
    let mut t = 0.240320354700088500976562f32;
    t = t.mul_add(x2.hi, 0.285112679004669189453125);
    t = t.mul_add(x2.hi, 0.400007992982864379882812);
    let c = df(0.66666662693023681640625, 3.69183861259614332084311e-09);
    let mut s = df(0.69314718246459960938, -1.904654323148236017e-09).mul_f(e as f32);
    s = s.add(x.scale(2.0));
    s.add(x2.mul(x).mul(x2.mul_f(t).add2(c)))
}

/// `exp(d)` of a double-f32, rounded to f32 (SLEEF's `expkf`), for `d` in the normal range.
#[allow(clippy::excessive_precision)]
fn sleef_expk(d: Df) -> f32 {
    const R_LN2: f32 = std::f32::consts::LOG2_E;
    const L2U: f32 = 0.693145751953125;
    const L2L: f32 = 1.428606765330187045e-06;
    let q = ((d.hi + d.lo) * R_LN2).round_ties_even();
    let mut s = d.add2_f(q * -L2U);
    s = s.add2_f(q * -L2L);
    s = s.normalize();
    let mut u = 0.00136324646882712841033936f32;
    u = u.mul_add(s.hi, 0.00836596917361021041870117);
    u = u.mul_add(s.hi, 0.0416710823774337768554688);
    u = u.mul_add(s.hi, 0.166665524244308471679688);
    u = u.mul_add(s.hi, 0.499999850988388061523438);
    let t = s.add(s.square().mul_f(u)).add_to_f(1.0);
    // ldexp by q (|q| is small here: exact power-of-two scaling in two steps).
    let q = q as i32;
    let (q1, q2) = (q >> 1, q - (q >> 1));
    let p2 = |k: i32| f32::from_bits(((k + 127) as u32) << 23);
    (t.hi + t.lo) * p2(q1) * p2(q2)
}

/// f32 `base ** e` for `base > 0` normal and `|e * ln(base)| < 80`, bit for bit as torch's
/// vectorised CPU `pow` (SLEEF's `Sleef_powf*_u10`: `expkf(logkf(base) * e)` in double-f32
/// arithmetic with fused multiply-adds, as built for AVX2, AVX-512 and AArch64; algorithm and
/// constants from the SLEEF project, Boost Software License 1.0).
fn pow_f32(base: f32, e: f32) -> f32 {
    if e == 0.0 || base == 1.0 {
        return 1.0;
    }
    sleef_expk(sleef_logk(base).mul_f(e))
}

/// The `D/2` inverse frequencies of a rotary embedding with head size `head_dim` (even) and base
/// `theta` (`rope_theta`), optionally rescaled by Llama 3's `rope_scaling`, equal to transformers'
/// `inv_freq` buffer (`_compute_default_rope_parameters` / `_compute_llama3_parameters`, computed
/// on the CPU in float32).
///
/// Mirrors torch's float32 operations one by one:
/// - default: `e_i = f32(2i) / f32(D)` (f32 division), `p_i = f32(theta) ** e_i` (torch casts the
///   Python-float base to the tensor's f32 and evaluates the power with SLEEF's vectorised
///   `powf`, reproduced here bit for bit; it is not correctly rounded, so a plain f64 `powf`
///   would miss about 1.3% of values by an ulp), `inv_freq_i = 1 / p_i` (torch's `1.0 / t` is
///   `t.reciprocal() * 1.0`: a correctly rounded f32 reciprocal).
///
///   Caveat: torch's CPU loop runs SLEEF on whole vector blocks (32 elements with AVX-512, 16 with
///   AVX2) and the scalar libm `powf` on the last `(D/2) mod 32` (or 16) elements, which may differ
///   by an ulp from SLEEF. For D = 64 and 128 (every Llama / SmolLM2 / Qwen2 size) all D/2
///   elements take the SLEEF path and the result is bit-exact; checked against torch 2.15 for
///   D = 2..256 and ten bases, where every SLEEF-path element agrees.
/// - llama3: with Python-float `low_wl = orig / low_freq_factor`, `high_wl = orig / high_freq_factor`
///   (compared against f32 tensors, so rounded to f32), `wavelen = recip(inv) * f32(2π)`
///   (`2π / t` is `t.reciprocal() * 2π`), `inv' = inv / f32(factor)` where `wavelen > low_wl`,
///   else `inv`; `sf = (recip(wavelen) * f32(orig) - f32(low)) / f32(high - low)`,
///   `smoothed = ((1 - sf) * inv') / f32(factor) + sf * inv'`, used where
///   `!(wavelen < high_wl) && !(wavelen > low_wl)`.
///
/// Panics if `head_dim` is odd or zero or `theta` is not a finite number above 1.
pub fn rope_inv_freq(head_dim: usize, theta: f64, scaling: Option<&Llama3Scaling>) -> Vec<f32> {
    assert!(
        head_dim > 0 && head_dim.is_multiple_of(2),
        "rope_inv_freq: head_dim {head_dim} must be even and positive"
    );
    assert!(
        theta.is_finite() && theta > 1.0,
        "rope_inv_freq: rope_theta {theta} must be finite and above 1"
    );
    let base = theta as f32;
    let dim = head_dim as f32;
    let inv: Vec<f32> = (0..head_dim)
        .step_by(2)
        .map(|i| 1.0f32 / pow_f32(base, i as f32 / dim))
        .collect();
    let Some(s) = scaling else { return inv };
    let factor = s.factor as f32;
    let old = s.original_max_position_embeddings;
    let low_wl = (old / s.low_freq_factor) as f32;
    let high_wl = (old / s.high_freq_factor) as f32;
    let two_pi = std::f64::consts::TAU as f32;
    let low = s.low_freq_factor as f32;
    let span = (s.high_freq_factor - s.low_freq_factor) as f32;
    inv.iter()
        .map(|&f| {
            let wavelen = (1.0f32 / f) * two_pi;
            let scaled = if wavelen > low_wl { f / factor } else { f };
            // torch: `~(wavelen < high_wl) * ~(wavelen > low_wl)`; wavelen is never NaN here.
            let medium = wavelen >= high_wl && wavelen <= low_wl;
            if medium {
                let sf = ((1.0f32 / wavelen) * old as f32 - low) / span;
                ((1.0 - sf) * scaled) / factor + sf * scaled
            } else {
                scaled
            }
        })
        .collect()
}
