//! `nn/bias_add_fwd`: adds a linear layer's bias to every row of its output.

use crate::device::{Encoder, GpuBuffer};
use crate::error::Result;
use crate::ops::{check_distinct, check_f32, check_u32, groups_for, mul};
use crate::params::BiasAddParams;

/// `y[M,N] += bias[N]` on every row (`nn/bias_add_fwd`).
///
/// Errors with [`crate::GpuError::Shape`] if a buffer is shorter than its shape, `y` is `bias`,
/// or `M*N` overflows u32 indexing.
pub fn bias_add_fwd(
    enc: &mut Encoder,
    bias: &GpuBuffer,
    y: &GpuBuffer,
    m: usize,
    n: usize,
) -> Result<()> {
    const K: &str = "nn/bias_add_fwd";
    check_u32(K, &[("y", mul(m, n))])?;
    check_f32(K, "bias", bias, &[n])?;
    check_f32(K, "y", y, &[m, n])?;
    check_distinct(K, &[("y", y)], &[("bias", bias)])?;
    if m == 0 || n == 0 {
        return Ok(());
    }
    let nq = n.div_ceil(4);
    let gpu = enc.gpu;
    let k = gpu.kernel(K, "main", &[])?;
    enc.dispatch(
        &k,
        &BiasAddParams {
            m: m as u32,
            n: n as u32,
            nq: nq as u32,
            ..Default::default()
        },
        &[bias, y],
        groups_for(gpu, mul(m, nq), 64),
    )
}
