//! Causal grouped-query attention, forward and backward (flash-attention style, no T×T buffer):
//! `shaders/nn/attention_fwd.wgsl` and `shaders/nn/attention_bwd.wgsl`. Reference:
//! `tinytune_reference::nn::attention_fwd` / `tinytune_reference::nn::attention_bwd`.
//!
//! Layouts (f32, row-major) are the projection outputs directly: `q[B*Tq, H*D]`,
//! `k[B*Tk, KVH*D]`, `v[B*Tk, KVH*D]`, `o[B*Tq, H*D]` (head `h` = columns `h*D..h*D+D`; batch `b`'s
//! rows start at `b*Tq` / `b*Tk`), and `lse[B, H, Tq]`. Query head `h` reads KV head
//! `h / (H/KVH)`. Causal mask with `Tk >= Tq`: query row `i` sits at absolute position
//! `Tk - Tq + i` and attends keys `j <= Tk - Tq + i` (training `Tk = Tq`; decoding with a KV
//! cache `Tq = 1` or a chunk). Memory is O(T·D) per head for any T.
//!
//! Two variants ([`crate::KernelSet`]): the CPU variant's entry points (`main`, `stage_dq`,
//! `stage_dkdv`) give each invocation up to 4 rows and no workgroup memory (lavapipe); the GPU
//! variant's (`tiled`, `tiled_dq`, `tiled_dkdv`) give a workgroup of 64 invocations 64 rows, one
//! each, and walk the other side in stages of 16 rows loaded once per workgroup into workgroup
//! memory (16 KiB), with the head size an override so the private vectors can stay in registers.
//!
//! The kernels read rows as `vec4` and so need `D % 4 == 0` (every Llama-family model: D = 64 or
//! 128). Other head sizes work too: the launchers then copy the operands into zero-padded
//! temporary buffers (head size rounded up to a multiple of 4, allocated per call and freed when
//! the recorded work completes) and copy the results back, with the `repack` entry point of
//! `nn/attention_fwd`.

use crate::device::{groups_1d, Encoder, Gpu, GpuBuffer};
use crate::error::{shape_err, Result};
use crate::kernels::KernelSet;
use crate::ops::{check_distinct, check_f32, check_u32, groups_for, mul};
use crate::params::{AttentionParams, RepackParams};

/// Largest head dimension: the kernels hold `ROWS` rows of up to 128 floats per operand in
/// private arrays.
pub const ATTENTION_MAX_D: usize = 128;

/// Most rows an invocation owns (the kernels' `ROWS` override is 1, 2 or 4): every k/v (or q/dO)
/// vector a kernel loads serves that many rows, which is what makes them fast on lavapipe, where
/// a storage load in a loop is a per-lane gather.
const MAX_ROWS: usize = 4;

/// Workgroup size of the `repack` entry point.
const WG_REPACK: u64 = 64;

/// Rows a workgroup of the GPU variant's entry points (`tiled`, `tiled_dq`, `tiled_dkdv`) owns,
/// one per invocation.
const GPU_BLOCK: usize = 64;

/// Whether the device runs the GPU variant (workgroup-memory stages of k/v or q/dO rows).
fn gpu_variant(gpu: &Gpu) -> bool {
    gpu.kernels() == KernelSet::Gpu
}

/// The `HD4` override of the GPU entry points: vec4s per (padded) head row.
fn hd4(s: &AttentionShape) -> f64 {
    (s.d / 4) as f64
}

/// The `ROWS` override for `n` owned rows: the next power of two up to [`MAX_ROWS`] (no wasted
/// rows for decoding, few pipeline variants).
fn rows_for(n: usize) -> usize {
    n.max(1).next_power_of_two().min(MAX_ROWS)
}

/// The `WG` override: 8 (one SIMD vector) on CPU adapters (lavapipe), so the causal blocks of
/// very different lengths are shared out finely between worker threads; 64 elsewhere.
fn wg_for(gpu: &Gpu) -> usize {
    if gpu.adapter.device_type == "Cpu" {
        8
    } else {
        64
    }
}

/// The shape of one attention call and its score scale: `b` sequences of `tq` query rows and
/// `tk >= tq` key rows, `h` query heads sharing `kvh` key/value heads, head size `d`; scores are
/// `q·kᵀ·scale` (usually `scale = 1/sqrt(d)`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionShape {
    pub b: usize,
    pub tq: usize,
    pub tk: usize,
    pub h: usize,
    pub kvh: usize,
    pub d: usize,
    pub scale: f32,
}

fn check_dims(kernel: &str, s: &AttentionShape) -> Result<()> {
    let AttentionShape {
        b,
        tq,
        tk,
        h,
        kvh,
        d,
        ..
    } = *s;
    if h == 0 || kvh == 0 || !h.is_multiple_of(kvh) {
        return Err(shape_err(
            kernel,
            format!("H = {h} must be a positive multiple of KVH = {kvh}"),
        ));
    }
    if d == 0 || d > ATTENTION_MAX_D {
        return Err(shape_err(
            kernel,
            format!("head dimension D = {d} must be in 1..={ATTENTION_MAX_D}"),
        ));
    }
    if tk < tq {
        return Err(shape_err(
            kernel,
            format!("Tk = {tk} keys < Tq = {tq} queries (the causal mask needs Tk >= Tq)"),
        ));
    }
    // Element counts with the head size padded to a multiple of 4 (what the kernels index).
    let dp = d.next_multiple_of(4);
    check_u32(
        kernel,
        &[
            ("q", mul(b, tq).saturating_mul(mul(h, dp))),
            ("k", mul(b, tk).saturating_mul(mul(kvh, dp))),
            ("lse", mul(b, h).saturating_mul(tq as u64)),
        ],
    )
}

/// The `Params` of the attention kernels; `s.d` is the (padded) head size, a multiple of 4.
fn params(s: &AttentionShape, nblk: usize, nitems: usize) -> AttentionParams {
    let AttentionShape {
        b,
        tq,
        tk,
        h,
        kvh,
        d,
        scale,
    } = *s;
    AttentionParams {
        b: b as u32,
        tq: tq as u32,
        tk: tk as u32,
        h: h as u32,
        kvh: kvh as u32,
        scale,
        nblk: nblk as u32,
        nitems: nitems as u32,
        d4: (d / 4) as u32,
        ..Default::default()
    }
}

/// Records `dst[r, c] = src[r, c]` for `c < min(ds, dd)` and `0` for `ds <= c < dd` over `rows`
/// rows (`src` is `(rows, ds)`, `dst` `(rows, dd)`); with `accumulate`, adds to `dst` instead.
fn repack(
    enc: &mut Encoder,
    src: &GpuBuffer,
    dst: &GpuBuffer,
    rows: usize,
    ds: usize,
    dd: usize,
    accumulate: bool,
) -> Result<()> {
    let gpu = enc.gpu;
    let n = rows * dd;
    let kern = gpu.kernel(
        "nn/attention_fwd",
        "repack",
        &[("ACC", if accumulate { 1.0 } else { 0.0 })],
    )?;
    enc.dispatch(
        &kern,
        &RepackParams {
            n: n as u32,
            ds: ds as u32,
            dd: dd as u32,
            ..Default::default()
        },
        &[src, dst],
        groups_for(gpu, n as u64, WG_REPACK),
    )
}

/// A new buffer holding `src` (`rows` rows of `heads` vectors of `d` floats) with each vector
/// zero-padded to `dp` floats.
fn padded(
    enc: &mut Encoder,
    label: &'static str,
    src: &GpuBuffer,
    rows: usize,
    d: usize,
    dp: usize,
) -> Result<GpuBuffer> {
    let buf = enc.gpu.scratch(label, (rows * dp * 4) as u64)?;
    repack(enc, src, &buf, rows, d, dp, false)?;
    Ok(buf)
}

/// The forward on operands whose head size `d` is a multiple of 4.
fn fwd_aligned(
    enc: &mut Encoder,
    q: &GpuBuffer,
    k: &GpuBuffer,
    v: &GpuBuffer,
    o: &GpuBuffer,
    lse: &GpuBuffer,
    s: &AttentionShape,
) -> Result<()> {
    let AttentionShape { b, tq, h, .. } = *s;
    let gpu = enc.gpu;
    if gpu_variant(gpu) {
        let nblk = tq.div_ceil(GPU_BLOCK);
        let n = nblk * b * h;
        let kern = gpu.kernel("nn/attention_fwd", "tiled", &[("HD4", hd4(s))])?;
        return enc.dispatch(
            &kern,
            &params(s, nblk, n),
            &[q, k, v, o, lse],
            groups_1d(gpu, n as u64),
        );
    }
    let rows = rows_for(tq);
    let wg = wg_for(gpu);
    let nblk = tq.div_ceil(rows);
    let n = nblk * b * h;
    let kern = gpu.kernel(
        "nn/attention_fwd",
        "main",
        &[("ROWS", rows as f64), ("WG", wg as f64)],
    )?;
    enc.dispatch(
        &kern,
        &params(s, nblk, n),
        &[q, k, v, o, lse],
        groups_for(gpu, n as u64, wg as u64),
    )
}

/// Causal GQA forward (`nn/attention_fwd`): writes `o[B*Tq, H*D] = softmax(q·kᵀ·scale + mask)·v`
/// for every head and `lse[B, H, Tq]` (log-sum-exp of each masked, scaled score row, kept for
/// [`attention_bwd`]). Both outputs are overwritten. One dispatch (plus the padding copies when
/// `D % 4 != 0`); online softmax over keys, so memory is O(T·D) per head.
///
/// Errors with [`crate::GpuError::Shape`] if `H` is not a positive multiple of `KVH`, `D` is not
/// in `1..=`[`ATTENTION_MAX_D`], `Tk < Tq`, a buffer is smaller than its shape, a count overflows
/// u32 indexing, or `o`/`lse` alias another operand. `B == 0` or `Tq == 0` records nothing.
pub fn attention_fwd(
    enc: &mut Encoder,
    q: &GpuBuffer,
    k: &GpuBuffer,
    v: &GpuBuffer,
    o: &GpuBuffer,
    lse: &GpuBuffer,
    s: AttentionShape,
) -> Result<()> {
    const K: &str = "nn/attention_fwd";
    let AttentionShape {
        b,
        tq,
        tk,
        h,
        kvh,
        d,
        ..
    } = s;
    check_dims(K, &s)?;
    check_f32(K, "q", q, &[b * tq, h * d])?;
    check_f32(K, "k", k, &[b * tk, kvh * d])?;
    check_f32(K, "v", v, &[b * tk, kvh * d])?;
    check_f32(K, "o", o, &[b * tq, h * d])?;
    check_f32(K, "lse", lse, &[b, h, tq])?;
    check_distinct(
        K,
        &[("o", o), ("lse", lse)],
        &[("q", q), ("k", k), ("v", v)],
    )?;
    if b == 0 || tq == 0 {
        return Ok(());
    }
    if d.is_multiple_of(4) {
        return fwd_aligned(enc, q, k, v, o, lse, &s);
    }
    let dp = d.next_multiple_of(4);
    let qp = padded(enc, "attention q (padded)", q, b * tq * h, d, dp)?;
    let kp = padded(enc, "attention k (padded)", k, b * tk * kvh, d, dp)?;
    let vp = padded(enc, "attention v (padded)", v, b * tk * kvh, d, dp)?;
    let op = enc
        .gpu
        .scratch("attention o (padded)", (b * tq * h * dp * 4) as u64)?;
    fwd_aligned(enc, &qp, &kp, &vp, &op, lse, &AttentionShape { d: dp, ..s })?;
    repack(enc, &op, o, b * tq * h, dp, d, false)
}

/// The backward's two stages on operands whose head size `d` is a multiple of 4.
#[allow(clippy::too_many_arguments)]
fn bwd_aligned(
    enc: &mut Encoder,
    dout: &GpuBuffer,
    q: &GpuBuffer,
    k: &GpuBuffer,
    v: &GpuBuffer,
    o: &GpuBuffer,
    lse: &GpuBuffer,
    dq: &GpuBuffer,
    dk: &GpuBuffer,
    dv: &GpuBuffer,
    s: &AttentionShape,
    accumulate: bool,
) -> Result<()> {
    const K: &str = "nn/attention_bwd";
    let AttentionShape {
        b, tq, tk, h, kvh, ..
    } = *s;
    let gpu = enc.gpu;
    let wg = wg_for(gpu);
    let acc = if accumulate { 1.0 } else { 0.0 };
    // Di = rowsum(dO ⊙ o), written by stage_dq for stage_dkdv.
    let delta = gpu.scratch("attention delta", (b * h * tq * 4) as u64)?;
    if gpu_variant(gpu) {
        let hd = ("HD4", hd4(s));
        if tq > 0 {
            let nblk = tq.div_ceil(GPU_BLOCK);
            let n = nblk * b * h;
            let kern = gpu.kernel(K, "tiled_dq", &[hd, ("ACCUMULATE", acc)])?;
            enc.dispatch(
                &kern,
                &params(s, nblk, n),
                &[q, k, v, dout, lse, o, &delta, dq],
                groups_1d(gpu, n as u64),
            )?;
        }
        let nblk = tk.div_ceil(GPU_BLOCK);
        let n = nblk * b * kvh;
        let kern = gpu.kernel(K, "tiled_dkdv", &[hd, ("ACCUMULATE", acc)])?;
        return enc.dispatch(
            &kern,
            &params(s, nblk, n),
            &[q, k, v, dout, lse, &delta, dk, dv],
            groups_1d(gpu, n as u64),
        );
    }
    if tq > 0 {
        let rows = rows_for(tq);
        let nblk = tq.div_ceil(rows);
        let n = nblk * b * h;
        let kern = gpu.kernel(
            K,
            "stage_dq",
            &[
                ("ROWS", rows as f64),
                ("WG", wg as f64),
                ("ACCUMULATE", acc),
            ],
        )?;
        enc.dispatch(
            &kern,
            &params(s, nblk, n),
            &[q, k, v, dout, lse, o, &delta, dq],
            groups_for(gpu, n as u64, wg as u64),
        )?;
    }
    let rows = rows_for(tk);
    let nblk = tk.div_ceil(rows);
    let n = nblk * b * kvh;
    let kern = gpu.kernel(
        K,
        "stage_dkdv",
        &[
            ("ROWS", rows as f64),
            ("WG", wg as f64),
            ("ACCUMULATE", acc),
        ],
    )?;
    enc.dispatch(
        &kern,
        &params(s, nblk, n),
        &[q, k, v, dout, lse, &delta, dk, dv],
        groups_for(gpu, n as u64, wg as u64),
    )
}

#[allow(clippy::too_many_arguments)]
fn bwd(
    enc: &mut Encoder,
    dout: &GpuBuffer,
    q: &GpuBuffer,
    k: &GpuBuffer,
    v: &GpuBuffer,
    o: &GpuBuffer,
    lse: &GpuBuffer,
    dq: &GpuBuffer,
    dk: &GpuBuffer,
    dv: &GpuBuffer,
    s: &AttentionShape,
    accumulate: bool,
) -> Result<()> {
    const K: &str = "nn/attention_bwd";
    let AttentionShape {
        b,
        tq,
        tk,
        h,
        kvh,
        d,
        ..
    } = *s;
    check_dims(K, s)?;
    check_f32(K, "dout", dout, &[b * tq, h * d])?;
    check_f32(K, "q", q, &[b * tq, h * d])?;
    check_f32(K, "k", k, &[b * tk, kvh * d])?;
    check_f32(K, "v", v, &[b * tk, kvh * d])?;
    check_f32(K, "o", o, &[b * tq, h * d])?;
    check_f32(K, "lse", lse, &[b, h, tq])?;
    check_f32(K, "dq", dq, &[b * tq, h * d])?;
    check_f32(K, "dk", dk, &[b * tk, kvh * d])?;
    check_f32(K, "dv", dv, &[b * tk, kvh * d])?;
    check_distinct(
        K,
        &[("dq", dq), ("dk", dk), ("dv", dv)],
        &[
            ("dout", dout),
            ("q", q),
            ("k", k),
            ("v", v),
            ("o", o),
            ("lse", lse),
        ],
    )?;
    // Nothing to do without keys; without queries dk = dv = 0 (written by stage_dkdv).
    if b == 0 || tk == 0 || (tq == 0 && accumulate) {
        return Ok(());
    }
    if d.is_multiple_of(4) {
        return bwd_aligned(enc, dout, q, k, v, o, lse, dq, dk, dv, s, accumulate);
    }
    let dp = d.next_multiple_of(4);
    let (nq, nk) = (b * tq * h, b * tk * kvh);
    let gp = padded(enc, "attention dout (padded)", dout, nq, d, dp)?;
    let qp = padded(enc, "attention q (padded)", q, nq, d, dp)?;
    let kp = padded(enc, "attention k (padded)", k, nk, d, dp)?;
    let vp = padded(enc, "attention v (padded)", v, nk, d, dp)?;
    let op = padded(enc, "attention o (padded)", o, nq, d, dp)?;
    let gpu = enc.gpu;
    let dqp = gpu.scratch("attention dq (padded)", (nq * dp * 4) as u64)?;
    let dkp = gpu.scratch("attention dk (padded)", (nk * dp * 4) as u64)?;
    let dvp = gpu.scratch("attention dv (padded)", (nk * dp * 4) as u64)?;
    let sp = AttentionShape { d: dp, ..*s };
    bwd_aligned(
        enc, &gp, &qp, &kp, &vp, &op, lse, &dqp, &dkp, &dvp, &sp, false,
    )?;
    repack(enc, &dqp, dq, nq, dp, d, accumulate)?;
    repack(enc, &dkp, dk, nk, dp, d, accumulate)?;
    repack(enc, &dvp, dv, nk, dp, d, accumulate)
}

/// Causal GQA backward (`nn/attention_bwd`, FlashAttention-2 algorithm) for the upstream
/// gradient `dout[B*Tq, H*D]`, given the forward's `q`, `k`, `v`, `o` and `lse`: **overwrites**
/// `dq[B*Tq, H*D]`, `dk[B*Tk, KVH*D]` and `dv[B*Tk, KVH*D]` (the query heads sharing a KV head
/// sum into its `dk`/`dv`); [`attention_bwd_accumulate`] adds instead.
///
/// Two dispatches of `nn/attention_bwd`: `stage_dq` (invocations own query rows; computes
/// `Di = rowsum(dout ⊙ o)` into a temporary `[B, H, Tq]` buffer the launcher allocates, and `dq`),
/// then `stage_dkdv` (invocations own key rows and loop over the query rows and heads of their
/// group; `dk`, `dv`). No float atomics, no T×T buffer; deterministic.
///
/// Errors with [`crate::GpuError::Shape`] like [`attention_fwd`], or if `dq`/`dk`/`dv` alias each
/// other or an input. `B == 0` or `Tk == 0` records nothing; `Tq == 0` zeroes `dk` and `dv`.
#[allow(clippy::too_many_arguments)]
pub fn attention_bwd(
    enc: &mut Encoder,
    dout: &GpuBuffer,
    q: &GpuBuffer,
    k: &GpuBuffer,
    v: &GpuBuffer,
    o: &GpuBuffer,
    lse: &GpuBuffer,
    dq: &GpuBuffer,
    dk: &GpuBuffer,
    dv: &GpuBuffer,
    s: AttentionShape,
) -> Result<()> {
    bwd(enc, dout, q, k, v, o, lse, dq, dk, dv, &s, false)
}

/// [`attention_bwd`] that **adds** the gradients to `dq`, `dk` and `dv` (gradient accumulation,
/// or a `dk`/`dv` that other paths also feed) instead of overwriting them (the kernels'
/// `ACCUMULATE` override).
#[allow(clippy::too_many_arguments)]
pub fn attention_bwd_accumulate(
    enc: &mut Encoder,
    dout: &GpuBuffer,
    q: &GpuBuffer,
    k: &GpuBuffer,
    v: &GpuBuffer,
    o: &GpuBuffer,
    lse: &GpuBuffer,
    dq: &GpuBuffer,
    dk: &GpuBuffer,
    dv: &GpuBuffer,
    s: AttentionShape,
) -> Result<()> {
    bwd(enc, dout, q, k, v, o, lse, dq, dk, dv, &s, true)
}
