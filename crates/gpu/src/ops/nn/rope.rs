//! Rotary position embedding launchers (`shaders/nn/rope_fwd.wgsl`, `shaders/nn/rope_bwd.wgsl`),
//! transformers' "rotate_half" convention, **in place** on `x[M, H*D]` (one read-write binding:
//! the q_proj / k_proj output, or its gradient). `pos[M]` (u32) is each row's position, so batches,
//! packed sequences and a KV cache all work; `inv_freq[D/2]` comes from the host
//! (`tinytune_model::rope::rope_inv_freq`, which also applies Llama 3's `rope_scaling`).
//!
//! The kernels round the angle `f32(pos) * inv_freq[i]` to f32 exactly as transformers does (in
//! integer arithmetic, so a driver cannot contract it into an fma) and evaluate sin/cos with their
//! own range reduction and polynomials (about 1.5 ulp for angles below ~2e5) rather than the
//! driver's. Reference: `tinytune_reference::nn::rope_fwd`.

use crate::device::{Encoder, GpuBuffer};
use crate::error::{shape_err, Result};
use crate::ops::{check_distinct, check_f32, check_u32, groups_for, mul};
use crate::params::RopeParams;

/// Invocations per workgroup; one invocation per (row, i < D/2) pair, looping over the heads.
const WG: u64 = 64;

/// `[x, pos, inv_freq]`: the rotated buffer, the positions and the frequencies.
fn launch(
    kernel: &'static str,
    enc: &mut Encoder,
    [x, pos, inv_freq]: [&GpuBuffer; 3],
    m: usize,
    h: usize,
    d: usize,
) -> Result<()> {
    if d == 0 || !d.is_multiple_of(2) {
        return Err(shape_err(
            kernel,
            format!("head size d = {d} must be even and positive"),
        ));
    }
    let row = h as u64 * d as u64;
    check_u32(kernel, &[("x", mul(m, h).saturating_mul(d as u64))])?;
    check_f32(kernel, "x", x, &[m, h, d])?;
    check_f32(kernel, "inv_freq", inv_freq, &[d / 2])?;
    if pos.len < mul(m, 4) {
        return Err(shape_err(
            kernel,
            format!(
                "pos ({m}) u32 needs {} bytes, buffer {:?} holds {}",
                mul(m, 4),
                pos.label,
                pos.len
            ),
        ));
    }
    check_distinct(kernel, &[("x", x)], &[("pos", pos), ("inv_freq", inv_freq)])?;
    if m == 0 || row == 0 {
        return Ok(());
    }
    let half = d / 2;
    let n = mul(m, half);
    let gpu = enc.gpu;
    let kern = gpu.kernel(kernel, "main", &[])?;
    let params = RopeParams {
        m: m as u32,
        h: h as u32,
        d: d as u32,
        half: half as u32,
        n: n as u32,
        ..Default::default()
    };
    enc.dispatch(&kern, &params, &[x, pos, inv_freq], groups_for(gpu, n, WG))
}

/// RoPE forward in place on `x[M, H*D]` (f32): for each row `m`, head and `i < D/2`, with
/// `a = f32(pos[m]) * inv_freq[i]` (rounded to f32), `c = cos a`, `s = sin a`:
/// `x[i], x[i+D/2] <- x[i]*c - x[i+D/2]*s, x[i+D/2]*c + x[i]*s`.
///
/// Errors with [`crate::GpuError::Shape`] if `d` is odd or zero, a buffer is smaller than its
/// shape (`pos` holds `m` u32, `inv_freq` `d/2` f32), `x` has more than 2^32 elements, or `x` is
/// also `pos` or `inv_freq`. `m == 0` or `h == 0` records nothing.
pub fn rope_fwd(
    enc: &mut Encoder,
    x: &GpuBuffer,
    pos: &GpuBuffer,
    inv_freq: &GpuBuffer,
    m: usize,
    h: usize,
    d: usize,
) -> Result<()> {
    launch("nn/rope_fwd", enc, [x, pos, inv_freq], m, h, d)
}

/// RoPE backward in place on the gradient `dx[M, H*D]` (f32): the transpose rotation
/// (`angle -> -angle`), `dx[i], dx[i+D/2] <- dx[i]*c + dx[i+D/2]*s, dx[i+D/2]*c - dx[i]*s`, with
/// the same angles as [`rope_fwd`].
///
/// Errors as [`rope_fwd`].
pub fn rope_bwd(
    enc: &mut Encoder,
    dx: &GpuBuffer,
    pos: &GpuBuffer,
    inv_freq: &GpuBuffer,
    m: usize,
    h: usize,
    d: usize,
) -> Result<()> {
    launch("nn/rope_bwd", enc, [dx, pos, inv_freq], m, h, d)
}
