//! Dropout launchers (PEFT's `lora_dropout` on the LoRA branch's input): `shaders/nn/dropout_fwd.wgsl`
//! for both passes (dropout is its own adjoint). Reference: `tinytune_reference::nn::dropout_fwd`
//! and `tinytune_reference::nn::dropout_bwd`; the mask is
//! `tinytune_reference::nn::dropout_mask`, a hash of `(seed, element index)`.

use super::swiglu::{check_elems, ITEMS, WG};
use crate::device::{Encoder, GpuBuffer};
use crate::error::{shape_err, Result};
use crate::ops::{check_distinct, check_f32, groups_for};
use crate::params::DropoutParams;

/// The keep threshold of drop probability `p`: `round(p * 2^32)`, clamped to `u32::MAX` (an
/// element is kept iff its hash is `>=` this, so `p = 0` keeps everything).
///
/// Panics unless `0 <= p < 1`.
pub fn dropout_threshold(p: f32) -> u32 {
    assert!((0.0..1.0).contains(&p), "dropout: p = {p} is not in [0, 1)");
    (p as f64 * 4294967296.0).round().min(u32::MAX as f64) as u32
}

/// The scale of kept elements, `1 / (1 - p)` computed in f64 and rounded once to f32 (exactly 1
/// for `p = 0`, exactly 2 for `p = 0.5`).
///
/// Panics unless `0 <= p < 1`.
pub fn dropout_scale(p: f32) -> f32 {
    assert!((0.0..1.0).contains(&p), "dropout: p = {p} is not in [0, 1)");
    (1.0 / (1.0 - p as f64)) as f32
}

/// `y = mask(seed, i) * x / (1 - p)` elementwise over the first `n` elements, overwriting `y`;
/// dropped elements are written as 0. Element `i` is kept iff
/// `tinytune_reference::nn::dropout_hash(seed, i) >= round(p * 2^32)`, so the same `seed` gives
/// the same mask in [`dropout_bwd`]; `p = 0` copies `x` exactly. One dispatch of `nn/dropout_fwd`;
/// `n = 0` records nothing.
///
/// Errors with [`crate::GpuError::Shape`] if `p` is not in `[0, 1)`, a buffer holds fewer than
/// `n` f32, `x` and `y` are the same buffer, or `n` is beyond 2^32 - 2^20.
pub fn dropout_fwd(
    enc: &mut Encoder,
    x: &GpuBuffer,
    y: &GpuBuffer,
    n: usize,
    p: f32,
    seed: u64,
) -> Result<()> {
    launch(enc, ("x", x), ("y", y), n, p, seed, false)
}

/// Backward of [`dropout_fwd`] with the forward's `seed` and `p`: `dx += mask(seed, i) * dy /
/// (1 - p)` elementwise over the first `n` elements, adding into `dx` (dropped elements add 0).
/// One dispatch of `nn/dropout_fwd` with `ACCUMULATE`; `n = 0` records nothing.
///
/// Errors with [`crate::GpuError::Shape`] if `p` is not in `[0, 1)`, a buffer holds fewer than
/// `n` f32, `dy` and `dx` are the same buffer, or `n` is beyond 2^32 - 2^20.
pub fn dropout_bwd(
    enc: &mut Encoder,
    dy: &GpuBuffer,
    dx: &GpuBuffer,
    n: usize,
    p: f32,
    seed: u64,
) -> Result<()> {
    launch(enc, ("dy", dy), ("dx", dx), n, p, seed, true)
}

/// `input` and `output` are (name in error messages, buffer).
fn launch(
    enc: &mut Encoder,
    (in_name, input): (&str, &GpuBuffer),
    (out_name, output): (&str, &GpuBuffer),
    n: usize,
    p: f32,
    seed: u64,
    accumulate: bool,
) -> Result<()> {
    const K: &str = "nn/dropout_fwd";
    if !(0.0..1.0).contains(&p) {
        return Err(shape_err(K, format!("p = {p} is not in [0, 1)")));
    }
    check_elems(K, n)?;
    check_f32(K, in_name, input, &[n])?;
    check_f32(K, out_name, output, &[n])?;
    check_distinct(K, &[(out_name, output)], &[(in_name, input)])?;
    let gpu = enc.gpu;
    let kern = gpu.kernel(
        K,
        "main",
        &[("ACCUMULATE", if accumulate { 1.0 } else { 0.0 })],
    )?;
    enc.dispatch(
        &kern,
        &DropoutParams {
            n: n as u32,
            threshold: dropout_threshold(p),
            scale: dropout_scale(p),
            seed_lo: seed as u32,
            seed_hi: (seed >> 32) as u32,
            ..Default::default()
        },
        &[input, output],
        groups_for(gpu, n as u64, WG * ITEMS),
    )
}
