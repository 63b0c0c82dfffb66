//! SwiGLU launchers (`LlamaMLP`'s `silu(gate) * up`): `shaders/nn/swiglu_fwd.wgsl` and
//! `shaders/nn/swiglu_bwd.wgsl`. Reference: `tinytune_reference::nn::swiglu_fwd` and
//! `tinytune_reference::nn::swiglu_bwd`.

use crate::device::{Encoder, GpuBuffer};
use crate::error::{shape_err, Result};
use crate::ops::{check_distinct, check_f32, groups_for};
use crate::params::SwigluParams;

/// Invocations per workgroup of the elementwise kernels (their `WG`).
pub(crate) const WG: u64 = 256;
/// Elements per invocation (their `ITEMS`, strided by `WG`): a workgroup covers `WG * ITEMS`.
/// Fewer, longer-lived workgroups run about 2x faster on lavapipe than one element per invocation.
pub(crate) const ITEMS: u64 = 16;

/// Keeps the kernels' linear index `(wid.x + wid.y * nwg.x) * WG * ITEMS + k * WG + lid` below
/// 2^32 for every workgroup of the x/y split (the surplus is under 2^17 elements).
pub(crate) fn check_elems(kernel: &str, n: usize) -> Result<()> {
    if n as u64 > u32::MAX as u64 - (1 << 20) {
        return Err(shape_err(
            kernel,
            format!("{n} elements exceed what one kernel indexes"),
        ));
    }
    Ok(())
}

/// `h = silu(gate) * up` elementwise over the first `n` elements (`n = M * I`), with
/// `silu(x) = x * sigmoid(x)` computed without overflow for large `|x|`. One dispatch of
/// `nn/swiglu_fwd`; `n = 0` records nothing.
///
/// Errors with [`crate::GpuError::Shape`] if a buffer holds fewer than `n` f32, `h` is `gate` or
/// `up`, or `n` is beyond 2^32 - 2^20.
pub fn swiglu_fwd(
    enc: &mut Encoder,
    gate: &GpuBuffer,
    up: &GpuBuffer,
    h: &GpuBuffer,
    n: usize,
) -> Result<()> {
    const K: &str = "nn/swiglu_fwd";
    check_elems(K, n)?;
    check_f32(K, "gate", gate, &[n])?;
    check_f32(K, "up", up, &[n])?;
    check_f32(K, "h", h, &[n])?;
    check_distinct(K, &[("h", h)], &[("gate", gate), ("up", up)])?;
    let gpu = enc.gpu;
    let kern = gpu.kernel(K, "main", &[])?;
    enc.dispatch(
        &kern,
        &SwigluParams {
            n: n as u32,
            ..Default::default()
        },
        &[gate, up, h],
        groups_for(gpu, n as u64, WG * ITEMS),
    )
}

/// Backward of [`swiglu_fwd`] from the upstream gradient `dh`: writes (overwrites)
/// `dgate = dh * up * silu'(gate)` with `silu'(x) = s * (1 + x * (1 - s))`, `s = sigmoid(x)`, and
/// `dup = dh * silu(gate)`, over the first `n` elements. One dispatch of `nn/swiglu_bwd`;
/// `n = 0` records nothing.
///
/// Errors with [`crate::GpuError::Shape`] if a buffer holds fewer than `n` f32, an output is
/// another operand, or `n` is beyond 2^32 - 2^20.
pub fn swiglu_bwd(
    enc: &mut Encoder,
    dh: &GpuBuffer,
    gate: &GpuBuffer,
    up: &GpuBuffer,
    dgate: &GpuBuffer,
    dup: &GpuBuffer,
    n: usize,
) -> Result<()> {
    const K: &str = "nn/swiglu_bwd";
    check_elems(K, n)?;
    check_f32(K, "dh", dh, &[n])?;
    check_f32(K, "gate", gate, &[n])?;
    check_f32(K, "up", up, &[n])?;
    check_f32(K, "dgate", dgate, &[n])?;
    check_f32(K, "dup", dup, &[n])?;
    check_distinct(
        K,
        &[("dgate", dgate), ("dup", dup)],
        &[("dh", dh), ("gate", gate), ("up", up)],
    )?;
    let gpu = enc.gpu;
    let kern = gpu.kernel(K, "main", &[])?;
    enc.dispatch(
        &kern,
        &SwigluParams {
            n: n as u32,
            ..Default::default()
        },
        &[dh, gate, up, dgate, dup],
        groups_for(gpu, n as u64, WG * ITEMS),
    )
}
