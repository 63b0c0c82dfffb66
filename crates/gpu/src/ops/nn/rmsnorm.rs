//! RMSNorm launchers (`shaders/nn/rmsnorm_fwd.wgsl`, `shaders/nn/rmsnorm_bwd.wgsl`): transformers'
//! `LlamaRMSNorm` in f32 over rows of `x[M, C]`. Reference: `tinytune_reference::nn::rmsnorm_fwd`.

use crate::device::{Encoder, GpuBuffer};
use crate::error::{shape_err, Result};
use crate::ops::{check_distinct, check_f32, check_u32, groups_for, mul};
use crate::params::{RmsnormBwdParams, RmsnormFwdParams};

/// Invocations per workgroup of the `weight_grad` entry point (one per column).
const WG: u64 = 64;

/// `1 / C` rounded once on the host (the kernels multiply by it: WGSL `/` is not correctly
/// rounded on every driver).
fn inv(c: usize) -> f32 {
    (1.0f64 / c as f64) as f32
}

/// RMSNorm forward: `rstd[m] = 1 / sqrt(mean_c(x[m,c]²) + eps)` (kept for [`rmsnorm_bwd`]) and
/// `y[m,c] = (x[m,c] * rstd[m]) * w[c]`, for `x[M,C]`, `w[C]`, `y[M,C]`, `rstd[M]`, all f32.
/// One workgroup per row.
///
/// Errors with [`crate::GpuError::Shape`] if a buffer is smaller than its shape, `c == 0` with
/// rows to normalise, more than 2^32 elements, or `y`/`rstd` aliasing another operand.
/// `m == 0` records nothing.
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_fwd(
    enc: &mut Encoder,
    x: &GpuBuffer,
    w: &GpuBuffer,
    y: &GpuBuffer,
    rstd: &GpuBuffer,
    m: usize,
    c: usize,
    eps: f32,
) -> Result<()> {
    const K: &str = "nn/rmsnorm_fwd";
    check_u32(K, &[("x", mul(m, c))])?;
    check_f32(K, "x", x, &[m, c])?;
    check_f32(K, "w", w, &[c])?;
    check_f32(K, "y", y, &[m, c])?;
    check_f32(K, "rstd", rstd, &[m])?;
    check_distinct(K, &[("y", y), ("rstd", rstd)], &[("x", x), ("w", w)])?;
    if m == 0 {
        return Ok(());
    }
    if c == 0 {
        return Err(shape_err(
            K,
            format!("c = 0: no mean over an empty row (m = {m})"),
        ));
    }
    let gpu = enc.gpu;
    let kern = gpu.kernel(K, "main", &[])?;
    let params = RmsnormFwdParams {
        m: m as u32,
        c: c as u32,
        eps,
        inv_c: inv(c),
    };
    enc.dispatch(
        &kern,
        &params,
        &[x, w, y, rstd],
        groups_for(gpu, m as u64, 1),
    )
}

/// RMSNorm backward to the input, for the output gradient `dy[M,C]` and the forward's `x[M,C]`,
/// `w[C]` and saved `rstd[M]`: with `g = w ⊙ dy[m,:]` and `r = rstd[m]`,
/// `dx[m,c] = r * g[c] - x[m,c] * (r³ / C) * Σ_k g[k] x[m,k]`, written into `dx[M,C]`, or with
/// `accumulate` added to it (`dx += ...`: the residual stream's gradient). One workgroup per row.
///
/// Errors with [`crate::GpuError::Shape`] if a buffer is smaller than its shape, more than 2^32
/// elements, or `dx` aliasing an input. `m == 0` or `c == 0` records nothing.
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_bwd(
    enc: &mut Encoder,
    dy: &GpuBuffer,
    x: &GpuBuffer,
    w: &GpuBuffer,
    rstd: &GpuBuffer,
    dx: &GpuBuffer,
    m: usize,
    c: usize,
    accumulate: bool,
) -> Result<()> {
    const K: &str = "nn/rmsnorm_bwd";
    check_u32(K, &[("x", mul(m, c))])?;
    check_f32(K, "dy", dy, &[m, c])?;
    check_f32(K, "x", x, &[m, c])?;
    check_f32(K, "w", w, &[c])?;
    check_f32(K, "rstd", rstd, &[m])?;
    check_f32(K, "dx", dx, &[m, c])?;
    check_distinct(
        K,
        &[("dx", dx)],
        &[("dy", dy), ("x", x), ("w", w), ("rstd", rstd)],
    )?;
    if m == 0 || c == 0 {
        return Ok(());
    }
    let gpu = enc.gpu;
    let kern = gpu.kernel(
        K,
        "main",
        &[("ACCUMULATE", if accumulate { 1.0 } else { 0.0 })],
    )?;
    let params = RmsnormBwdParams {
        m: m as u32,
        c: c as u32,
        inv_c: inv(c),
        ..Default::default()
    };
    enc.dispatch(
        &kern,
        &params,
        &[dy, x, rstd, w, dx],
        groups_for(gpu, m as u64, 1),
    )
}

/// RMSNorm weight gradient (optional: norm weights stay frozen under LoRA), entry point
/// `weight_grad` of `shaders/nn/rmsnorm_bwd.wgsl`: `dw[c] = Σ_m dy[m,c] * (x[m,c] * rstd[m])`
/// into `dw[C]`, or with `accumulate` added to it. One invocation per column, rows summed in order.
///
/// Errors with [`crate::GpuError::Shape`] if a buffer is smaller than its shape, more than 2^32
/// elements, or `dw` aliasing an input. `c == 0` records nothing; `m == 0` writes zeros (or adds
/// nothing).
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_bwd_weight(
    enc: &mut Encoder,
    dy: &GpuBuffer,
    x: &GpuBuffer,
    rstd: &GpuBuffer,
    dw: &GpuBuffer,
    m: usize,
    c: usize,
    accumulate: bool,
) -> Result<()> {
    const K: &str = "nn/rmsnorm_bwd";
    check_u32(K, &[("x", mul(m, c))])?;
    check_f32(K, "dy", dy, &[m, c])?;
    check_f32(K, "x", x, &[m, c])?;
    check_f32(K, "rstd", rstd, &[m])?;
    check_f32(K, "dw", dw, &[c])?;
    check_distinct(K, &[("dw", dw)], &[("dy", dy), ("x", x), ("rstd", rstd)])?;
    if c == 0 {
        return Ok(());
    }
    let gpu = enc.gpu;
    let kern = gpu.kernel(
        K,
        "weight_grad",
        &[("ACCUMULATE", if accumulate { 1.0 } else { 0.0 })],
    )?;
    let params = RmsnormBwdParams {
        m: m as u32,
        c: c as u32,
        inv_c: inv(c),
        ..Default::default()
    };
    enc.dispatch(
        &kern,
        &params,
        &[dy, x, rstd, dw],
        groups_for(gpu, c as u64, WG),
    )
}
