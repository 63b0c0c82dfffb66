//! Scaled elementwise add launcher (residual connections): `shaders/nn/add_fwd.wgsl`.
//! Reference: `tinytune_reference::nn::add_fwd`.

use super::swiglu::{check_elems, ITEMS, WG};
use crate::device::{Encoder, GpuBuffer};
use crate::error::Result;
use crate::ops::{check_distinct, check_f32, groups_for};
use crate::params::AddParams;

/// `y += alpha * x` elementwise over the first `n` elements, in place in `y`. One dispatch of
/// `nn/add_fwd`; `n = 0` records nothing.
///
/// Errors with [`crate::GpuError::Shape`] if a buffer holds fewer than `n` f32, `x` and `y` are
/// the same buffer (`y *= 1 + alpha` is not this op), or `n` is beyond 2^32 - 2^20.
pub fn add_fwd(
    enc: &mut Encoder,
    x: &GpuBuffer,
    y: &GpuBuffer,
    n: usize,
    alpha: f32,
) -> Result<()> {
    const K: &str = "nn/add_fwd";
    check_elems(K, n)?;
    check_f32(K, "x", x, &[n])?;
    check_f32(K, "y", y, &[n])?;
    check_distinct(K, &[("y", y)], &[("x", x)])?;
    let gpu = enc.gpu;
    let kern = gpu.kernel(K, "main", &[])?;
    enc.dispatch(
        &kern,
        &AddParams {
            n: n as u32,
            alpha,
            ..Default::default()
        },
        &[x, y],
        groups_for(gpu, n as u64, WG * ITEMS),
    )
}
