//! The reference Llama-family decoder (Llama, SmolLM2, TinyLlama, Llama-3.x, Qwen2 with q/k/v
//! biases) with LoRA adapters: forward to logits, and the backward pass from the causal-LM loss to
//! every LoRA parameter, on the CPU, composed from the plain-loop references of each kernel.
//!
//! It is the truth the GPU model is tested against, and it is itself checked against Hugging Face
//! transformers + PEFT (fixtures under `tests/fixtures/hf`). Frozen weights are f32 here; an NF4
//! base is represented by its dequantized weights (`Nf4Tensor::dequantize`), which is exactly what the
//! dequantizing GPU matmuls compute with.
//!
//! Layout: activations are `[M = B*T, C]` row-major; row `b*T + t` is token `t` of sequence `b` and
//! sits at position `t`.

use crate::lora;
use crate::nn;

/// The seven linear layers LoRA can target, in PEFT's names and in the order of [`LayerLora`].
pub const TARGETS: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// Shapes and constants of a model.
#[derive(Clone, Debug)]
pub struct Dims {
    /// `hidden_size` (C).
    pub hidden: usize,
    /// `intermediate_size` (I).
    pub intermediate: usize,
    pub layers: usize,
    /// `num_attention_heads` (H).
    pub heads: usize,
    /// `num_key_value_heads`.
    pub kv_heads: usize,
    /// `head_dim` (D).
    pub head_dim: usize,
    /// `vocab_size` (V).
    pub vocab: usize,
    /// `rms_norm_eps`.
    pub eps: f32,
    /// RoPE inverse frequencies `[D/2]` (transformers' `inv_freq`; the model crate computes it).
    pub inv_freq: Vec<f32>,
}

impl Dims {
    /// `(in, out)` features of target `t` (index into [`TARGETS`]).
    pub fn target_shape(&self, t: usize) -> (usize, usize) {
        let (c, i, q, kv) = (
            self.hidden,
            self.intermediate,
            self.heads * self.head_dim,
            self.kv_heads * self.head_dim,
        );
        match t {
            0 => (c, q),
            1 | 2 => (c, kv),
            3 => (q, c),
            4 | 5 => (c, i),
            6 => (i, c),
            _ => panic!("target index {t}"),
        }
    }
}

/// A frozen linear layer: `w` is `[out, in]` (torch layout), optional bias `[out]`.
#[derive(Clone, Debug)]
pub struct Linear {
    pub w: Vec<f32>,
    pub bias: Option<Vec<f32>>,
}

/// One decoder layer's frozen weights.
#[derive(Clone, Debug)]
pub struct Layer {
    pub input_layernorm: Vec<f32>,
    /// q, k, v, o, gate, up, down, in the order of [`TARGETS`].
    pub linears: [Linear; 7],
    pub post_attention_layernorm: Vec<f32>,
}

/// The frozen model.
#[derive(Clone, Debug)]
pub struct Weights {
    /// `[V, C]`.
    pub embed: Vec<f32>,
    pub layers: Vec<Layer>,
    /// Final norm `[C]`.
    pub norm: Vec<f32>,
    /// `[V, C]`; `None` when tied to `embed`.
    pub lm_head: Option<Vec<f32>>,
}

/// One LoRA pair: `a` is `lora_A.weight` `[R, in]`, `b` is `lora_B.weight` `[out, R]`.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraPair {
    pub a: Vec<f32>,
    pub b: Vec<f32>,
}

/// Per layer, one optional pair per entry of [`TARGETS`].
pub type LayerLora = [Option<LoraPair>; 7];

/// LoRA adapters over the model: rank, scale (`alpha/r`, or `alpha/sqrt(r)` with rsLoRA), pairs.
#[derive(Clone, Debug, PartialEq)]
pub struct Lora {
    pub r: usize,
    pub scale: f32,
    pub layers: Vec<LayerLora>,
}

/// LoRA dropout (PEFT's `lora_dropout`, training only): the input of each adapter's branch is
/// dropped with probability `p` and scaled by `1/(1-p)` ([`nn::dropout_fwd`]); each adapted linear
/// of each layer draws its own mask from [`lora_dropout_seed`]`(seed, layer, target)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LoraDropout {
    pub p: f32,
    pub seed: u64,
}

/// The mask seed of linear `target` (index into [`TARGETS`]) of layer `layer`.
pub fn lora_dropout_seed(seed: u64, layer: usize, target: usize) -> u64 {
    let mut z = seed ^ ((layer * 7 + target) as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The dropout of one adapter: `(p, mask seed)` when `drop` is on.
fn adapter_drop(drop: Option<LoraDropout>, layer: usize, target: usize) -> Option<(f32, u64)> {
    drop.filter(|d| d.p > 0.0)
        .map(|d| (d.p, lora_dropout_seed(d.seed, layer, target)))
}

/// The input of an adapter's branch: `x`, or `dropout(x)` with the adapter's `(p, seed)`.
fn dropped(x: &[f32], drop: Option<(f32, u64)>) -> std::borrow::Cow<'_, [f32]> {
    match drop {
        Some((p, seed)) => std::borrow::Cow::Owned(nn::dropout_fwd(x, p, seed)),
        None => std::borrow::Cow::Borrowed(x),
    }
}

/// Positions `0..T` for each of `B` sequences.
pub fn positions(b: usize, t: usize) -> Vec<u32> {
    positions_from(b, t, 0)
}

/// Positions `p0..p0+T` for each of `B` sequences (after `p0` cached or prefix positions).
pub fn positions_from(b: usize, t: usize, p0: usize) -> Vec<u32> {
    (0..b * t).map(|i| (p0 + i % t) as u32).collect()
}

/// `y = x · wᵀ (+ bias) (+ LoRA)`; returns `(y, h)` with `h = x · aᵀ` when LoRA is present.
#[allow(clippy::too_many_arguments)]
fn linear(
    x: &[f32],
    lin: &Linear,
    pair: Option<&LoraPair>,
    m: usize,
    k: usize,
    n: usize,
    r: usize,
    scale: f32,
    drop: Option<(f32, u64)>,
) -> (Vec<f32>, Vec<f32>) {
    let mut y = nn::matmul_fwd(x, &lin.w, m, k, n);
    if let Some(bias) = &lin.bias {
        for row in y.chunks_mut(n) {
            for (v, bv) in row.iter_mut().zip(bias) {
                *v += bv;
            }
        }
    }
    let mut h = Vec::new();
    if let Some(p) = pair {
        let x = dropped(x, drop);
        let (hh, dy) = lora::adapter_fwd(&x, &p.a, &p.b, m, k, n, r, scale);
        for (v, d) in y.iter_mut().zip(&dy) {
            *v += d;
        }
        h = hh;
    }
    (y, h)
}

/// Activations of one layer kept for the backward pass.
struct LayerCache {
    x: Vec<f32>,
    h1: Vec<f32>,
    rstd1: Vec<f32>,
    /// LoRA `h` per target (empty when the target has no adapter).
    lora_h: [Vec<f32>; 7],
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    attn: Vec<f32>,
    x2: Vec<f32>,
    h2: Vec<f32>,
    rstd2: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    act: Vec<f32>,
}

struct Forward {
    caches: Vec<LayerCache>,
    x_final: Vec<f32>,
    rstdf: Vec<f32>,
    logits: Vec<f32>,
}

fn pair(lora: Option<&Lora>, layer: usize, t: usize) -> Option<&LoraPair> {
    lora.and_then(|l| l.layers.get(layer))
        .and_then(|p| p[t].as_ref())
}

#[allow(clippy::too_many_arguments)]
fn run_forward(
    d: &Dims,
    w: &Weights,
    lora: Option<&Lora>,
    ids: &[u32],
    b: usize,
    t: usize,
    drop: Option<LoraDropout>,
    x0: Option<Vec<f32>>,
    prefix: Option<&[f32]>,
) -> Forward {
    let m = b * t;
    let (c, hd) = (d.hidden, d.head_dim);
    let (r, scale) = lora.map_or((0, 0.0), |l| (l.r, l.scale));
    let np = prefix.map_or(0, |pf| prefix_len(d, pf));
    let pos = positions_from(b, t, np);
    let mut x = match x0 {
        Some(x) => {
            assert_eq!(x.len(), m * c, "forward: input embeddings length");
            x
        }
        None => {
            assert_eq!(ids.len(), m, "forward: ids length");
            nn::embedding_fwd(ids, &w.embed, m, d.vocab, c)
        }
    };
    let mut caches = Vec::with_capacity(d.layers);
    for (li, layer) in w.layers.iter().enumerate() {
        let (h1, rstd1) = nn::rmsnorm_fwd(&x, &layer.input_layernorm, m, c, d.eps);
        let mut lora_h: [Vec<f32>; 7] = Default::default();
        let mut proj = |ti: usize, input: &[f32]| {
            let (k_in, n_out) = d.target_shape(ti);
            let (y, h) = linear(
                input,
                &layer.linears[ti],
                pair(lora, li, ti),
                m,
                k_in,
                n_out,
                r,
                scale,
                adapter_drop(drop, li, ti),
            );
            lora_h[ti] = h;
            y
        };
        let q = nn::rope_fwd(&proj(0, &h1), &pos, &d.inv_freq, m, d.heads, hd);
        let k = nn::rope_fwd(&proj(1, &h1), &pos, &d.inv_freq, m, d.kv_heads, hd);
        let v = proj(2, &h1);
        // Prefix tuning: the layer's key/value prefixes in front of each sequence's own.
        let (k, v) = match prefix {
            Some(pf) => nn::prefix_fwd(pf, &k, &v, li, d.layers, b, t, np, d.kv_heads * hd),
            None => (k, v),
        };
        let (attn, _lse) = nn::attention_fwd(
            &q,
            &k,
            &v,
            b,
            t,
            np + t,
            d.heads,
            d.kv_heads,
            hd,
            1.0 / (hd as f32).sqrt(),
        );
        let o = proj(3, &attn);
        let x2 = nn::add_fwd(&o, &x, 1.0);
        let (h2, rstd2) = nn::rmsnorm_fwd(&x2, &layer.post_attention_layernorm, m, c, d.eps);
        let gate = proj(4, &h2);
        let up = proj(5, &h2);
        let act = nn::swiglu_fwd(&gate, &up);
        let down = proj(6, &act);
        let x3 = nn::add_fwd(&down, &x2, 1.0);
        caches.push(LayerCache {
            x,
            h1,
            rstd1,
            lora_h,
            q,
            k,
            v,
            attn,
            x2,
            h2,
            rstd2,
            gate,
            up,
            act,
        });
        x = x3;
    }
    let (hf, rstdf) = nn::rmsnorm_fwd(&x, &w.norm, m, c, d.eps);
    let head = w.lm_head.as_ref().unwrap_or(&w.embed);
    let logits = nn::matmul_fwd(&hf, head, m, c, d.vocab);
    Forward {
        caches,
        x_final: x,
        rstdf,
        logits,
    }
}

/// Logits `[B*T, V]` of the model (with the adapters when given).
pub fn forward(
    d: &Dims,
    w: &Weights,
    lora: Option<&Lora>,
    ids: &[u32],
    b: usize,
    t: usize,
) -> Vec<f32> {
    run_forward(d, w, lora, ids, b, t, None, None, None).logits
}

/// Mean cross-entropy over the non-ignored `targets` (already shifted, as the train crate's `shift_labels` does).
pub fn loss(
    d: &Dims,
    w: &Weights,
    lora: Option<&Lora>,
    ids: &[u32],
    targets: &[i32],
    b: usize,
    t: usize,
) -> f32 {
    loss_with(d, w, lora, ids, targets, b, t, None)
}

/// [`loss`] with LoRA dropout (training mode).
#[allow(clippy::too_many_arguments)]
pub fn loss_with(
    d: &Dims,
    w: &Weights,
    lora: Option<&Lora>,
    ids: &[u32],
    targets: &[i32],
    b: usize,
    t: usize,
    drop: Option<LoraDropout>,
) -> f32 {
    let f = run_forward(d, w, lora, ids, b, t, drop, None, None);
    mean_loss(
        &nn::cross_entropy_fwd(&f.logits, targets, b * t, d.vocab).loss_rows,
        targets,
        d.vocab,
    )
}

fn mean_loss(rows: &[f32], targets: &[i32], v: usize) -> f32 {
    let n = targets.iter().filter(|&&t| nn::target_valid(t, v)).count();
    if n == 0 {
        return 0.0;
    }
    (rows.iter().map(|&l| l as f64).sum::<f64>() / n as f64) as f32
}

/// Adds `src` into `dst`.
fn acc(dst: &mut [f32], src: &[f32]) {
    for (a, b) in dst.iter_mut().zip(src) {
        *a += b;
    }
}

/// The loss and its gradient with respect to every LoRA parameter (same layout as `lora`).
pub fn loss_and_grads(
    d: &Dims,
    w: &Weights,
    lora: &Lora,
    ids: &[u32],
    targets: &[i32],
    b: usize,
    t: usize,
) -> (f32, Lora) {
    loss_and_grads_with(d, w, lora, ids, targets, b, t, None)
}

/// [`loss_and_grads`] with LoRA dropout (training mode).
#[allow(clippy::too_many_arguments)]
pub fn loss_and_grads_with(
    d: &Dims,
    w: &Weights,
    lora: &Lora,
    ids: &[u32],
    targets: &[i32],
    b: usize,
    t: usize,
    drop: Option<LoraDropout>,
) -> (f32, Lora) {
    let g = loss_grads_dx(d, w, lora, None, None, ids, targets, b, t, drop);
    (g.loss, g.lora)
}

/// What [`loss_grads_dx`] computes.
struct Grads {
    loss: f32,
    /// The LoRA gradients (same layout as the adapters).
    lora: Lora,
    /// The gradient of the decoder's input `[B*T, C]`.
    dx: Vec<f32>,
    /// The gradient of the prefix `[P, L*2*KVD]` (empty without one).
    prefix: Vec<f32>,
}

/// The loss, the LoRA gradients, the gradient of the decoder's input `x0` (`[B*T, C]`; the
/// embedding output, or `x0` when given instead of embedding `ids`) and of the prefix if any.
#[allow(clippy::too_many_arguments)]
fn loss_grads_dx(
    d: &Dims,
    w: &Weights,
    lora: &Lora,
    x0: Option<Vec<f32>>,
    prefix: Option<&[f32]>,
    ids: &[u32],
    targets: &[i32],
    b: usize,
    t: usize,
    drop: Option<LoraDropout>,
) -> Grads {
    let m = b * t;
    let (c, hd, v) = (d.hidden, d.head_dim, d.vocab);
    let (r, scale) = (lora.r, lora.scale);
    let np = prefix.map_or(0, |pf| prefix_len(d, pf));
    let mut dprefix = vec![0f32; prefix.map_or(0, |pf| pf.len())];
    let f = run_forward(d, w, Some(lora), ids, b, t, drop, x0, prefix);
    let ce = nn::cross_entropy_fwd(&f.logits, targets, m, v);
    let nvalid = targets
        .iter()
        .filter(|&&tt| nn::target_valid(tt, v))
        .count();
    let loss = mean_loss(&ce.loss_rows, targets, v);
    let mut grads = Lora {
        r,
        scale,
        layers: lora
            .layers
            .iter()
            .map(|l| {
                l.clone().map(|p| {
                    p.map(|p| LoraPair {
                        a: vec![0.0; p.a.len()],
                        b: vec![0.0; p.b.len()],
                    })
                })
            })
            .collect(),
    };
    if nvalid == 0 {
        return Grads {
            loss,
            lora: grads,
            dx: vec![0.0; m * c],
            prefix: dprefix,
        };
    }
    let dlogits = nn::cross_entropy_bwd(&f.logits, targets, &ce.lse, m, v, 1.0 / nvalid as f32);
    let head = w.lm_head.as_ref().unwrap_or(&w.embed);
    let dhf = nn::matmul_bwd_input(&dlogits, head, m, c, v);
    let mut dx = nn::rmsnorm_bwd(&dhf, &f.x_final, &w.norm, &f.rstdf, m, c);
    let pos = positions_from(b, t, np);
    for li in (0..d.layers).rev() {
        let layer = &w.layers[li];
        let cache = &f.caches[li];
        let g = &mut grads.layers[li];
        // Backward of one projection: dx of its input; LoRA grads into g.
        let mut back = |ti: usize, input: &[f32], dy: &[f32]| -> Vec<f32> {
            let (k_in, n_out) = d.target_shape(ti);
            let mut dinput = nn::matmul_bwd_input(dy, &layer.linears[ti].w, m, k_in, n_out);
            if let Some(p) = pair(Some(lora), li, ti) {
                let mask = adapter_drop(drop, li, ti);
                let input = dropped(input, mask);
                let mut lg = lora::adapter_bwd(
                    &input,
                    &cache.lora_h[ti],
                    dy,
                    &p.a,
                    &p.b,
                    m,
                    k_in,
                    n_out,
                    r,
                    scale,
                );
                if let Some((pd, seed)) = mask {
                    lg.dx = nn::dropout_bwd(&lg.dx, pd, seed);
                }
                acc(&mut dinput, &lg.dx);
                let gp = g[ti].as_mut().expect("grad slot for an adapter");
                acc(&mut gp.a, &lg.da);
                acc(&mut gp.b, &lg.db);
            }
            dinput
        };
        // MLP: x3 = x2 + down(swiglu(gate(h2), up(h2))).
        let dact = back(6, &cache.act, &dx);
        let (dgate, dup) = nn::swiglu_bwd(&dact, &cache.gate, &cache.up);
        let mut dh2 = back(4, &cache.h2, &dgate);
        acc(&mut dh2, &back(5, &cache.h2, &dup));
        let mut dx2 = dx;
        acc(
            &mut dx2,
            &nn::rmsnorm_bwd(
                &dh2,
                &cache.x2,
                &layer.post_attention_layernorm,
                &cache.rstd2,
                m,
                c,
            ),
        );
        // Attention: x2 = x + o(attn(rope(q(h1)), rope(k(h1)), v(h1))).
        let dattn = back(3, &cache.attn, &dx2);
        let (dq, dk, dv) = nn::attention_bwd(
            &dattn,
            &cache.q,
            &cache.k,
            &cache.v,
            b,
            t,
            np + t,
            d.heads,
            d.kv_heads,
            hd,
            1.0 / (hd as f32).sqrt(),
        );
        let (dk, dv) = if prefix.is_some() {
            nn::prefix_bwd(
                &dk,
                &dv,
                &mut dprefix,
                li,
                d.layers,
                b,
                t,
                np,
                d.kv_heads * hd,
            )
        } else {
            (dk, dv)
        };
        let dq = nn::rope_bwd(&dq, &pos, &d.inv_freq, m, d.heads, hd);
        let dk = nn::rope_bwd(&dk, &pos, &d.inv_freq, m, d.kv_heads, hd);
        let mut dh1 = back(0, &cache.h1, &dq);
        acc(&mut dh1, &back(1, &cache.h1, &dk));
        acc(&mut dh1, &back(2, &cache.h1, &dv));
        let mut dxl = dx2;
        acc(
            &mut dxl,
            &nn::rmsnorm_bwd(&dh1, &cache.x, &layer.input_layernorm, &cache.rstd1, m, c),
        );
        dx = dxl;
    }
    Grads {
        loss,
        lora: grads,
        dx,
        prefix: dprefix,
    }
}

/// Prompt tuning (PEFT `PROMPT_TUNING`): the decoder input of each sequence is the `P` trainable
/// virtual token embeddings `prompt` (`[P, C]`) followed by the embeddings of its `T` ids;
/// `[B*(P+T), C]`.
pub fn prompt_inputs(
    d: &Dims,
    w: &Weights,
    prompt: &[f32],
    ids: &[u32],
    b: usize,
    t: usize,
) -> Vec<f32> {
    let c = d.hidden;
    let p = prompt.len() / c;
    let emb = nn::embedding_fwd(ids, &w.embed, b * t, d.vocab, c);
    let mut x = Vec::with_capacity(b * (p + t) * c);
    for s in 0..b {
        x.extend_from_slice(prompt);
        x.extend_from_slice(&emb[s * t * c..(s + 1) * t * c]);
    }
    x
}

/// Prompt tuning's loss and the gradient of the prompt embeddings `[P, C]` (summed over the batch),
/// for a frozen model without adapters; `targets` over the `P+T` positions (the train crate's
/// `prompt_targets`).
pub fn prompt_loss_and_grad(
    d: &Dims,
    w: &Weights,
    prompt: &[f32],
    ids: &[u32],
    targets: &[i32],
    b: usize,
    t: usize,
) -> (f32, Vec<f32>) {
    let c = d.hidden;
    let p = prompt.len() / c;
    let tp = p + t;
    let x0 = prompt_inputs(d, w, prompt, ids, b, t);
    let g = loss_grads_dx(d, w, &no_lora(d), Some(x0), None, &[], targets, b, tp, None);
    let mut grad = vec![0f32; p * c];
    for s in 0..b {
        acc(&mut grad, &g.dx[s * tp * c..(s * tp + p) * c]);
    }
    (g.loss, grad)
}

/// An adapter set without pairs.
fn no_lora(d: &Dims) -> Lora {
    Lora {
        r: 0,
        scale: 0.0,
        layers: (0..d.layers).map(|_| Default::default()).collect(),
    }
}

/// Number of virtual tokens `P` of a prefix `[P, L*2*KVD]`.
///
/// Panics if the length is not a positive multiple of a row.
pub fn prefix_len(d: &Dims, prefix: &[f32]) -> usize {
    let row = d.layers * 2 * d.kv_heads * d.head_dim;
    assert!(
        row > 0 && !prefix.is_empty() && prefix.len().is_multiple_of(row),
        "prefix of {} values is not [P, {row}]",
        prefix.len()
    );
    prefix.len() / row
}

/// Logits `[B*T, V]` with prefix tuning (PEFT `PREFIX_TUNING`): every layer's attention also
/// sees its `P` key/value rows of `prefix` (`[P, L*2*KVD]`, see [`nn::prefix_fwd`]) and the tokens
/// sit at positions `P..P+T`.
pub fn prefix_forward(
    d: &Dims,
    w: &Weights,
    prefix: &[f32],
    ids: &[u32],
    b: usize,
    t: usize,
) -> Vec<f32> {
    run_forward(d, w, None, ids, b, t, None, None, Some(prefix)).logits
}

/// Prefix tuning's loss and the gradient of the prefix `[P, L*2*KVD]` (summed over the batch),
/// for a frozen model without adapters; `targets` per real position (shifted, as the train crate's `shift_labels` does).
pub fn prefix_loss_and_grad(
    d: &Dims,
    w: &Weights,
    prefix: &[f32],
    ids: &[u32],
    targets: &[i32],
    b: usize,
    t: usize,
) -> (f32, Vec<f32>) {
    let g = loss_grads_dx(
        d,
        w,
        &no_lora(d),
        None,
        Some(prefix),
        ids,
        targets,
        b,
        t,
        None,
    );
    (g.loss, g.prefix)
}
