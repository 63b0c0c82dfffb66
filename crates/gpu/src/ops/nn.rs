//! Dense f32 launchers: `shaders/nn/*.wgsl`.

use super::{f, groups_for};
use crate::device::{Encoder, GpuBuffer};
use crate::error::{shape_err, Result};

/// Column tile of the matmul kernels: each invocation owns 8 output columns.
pub(crate) const TILE_N: usize = 8;
/// Most output rows one invocation owns (the kernels' `ROWS` override is `min(m, MAX_ROWS)`).
pub(crate) const MAX_ROWS: usize = 8;
/// Invocations per workgroup of the matmul kernels.
pub(crate) const WG: u64 = 64;

/// Checks that `buf` holds at least `elems` f32 (`what` names it in the error).
pub(crate) fn check_f32(kernel: &str, what: &str, buf: &GpuBuffer, elems: usize, shape: String) -> Result<()> {
    let need = elems as u64 * 4;
    if buf.len < need {
        return Err(shape_err(kernel, format!("{what} {shape} needs {need} bytes, buffer {:?} holds {}", buf.label, buf.len)));
    }
    Ok(())
}

/// Checks that every element count a kernel indexes with u32 fits.
pub(crate) fn check_u32(kernel: &str, counts: &[(&str, usize)]) -> Result<()> {
    for (what, c) in counts {
        if *c > u32::MAX as usize {
            return Err(shape_err(kernel, format!("{what} has {c} elements, over the 2^32 a kernel indexes")));
        }
    }
    Ok(())
}

/// `y[M,N] = alpha * x[M,K] · w[N,K]ᵀ`, or with `accumulate` `y += alpha * x · wᵀ`
/// (`nn/matmul_fwd`). `w` is stored like a torch `Linear` weight `[out, in]`; all f32 row-major.
///
/// Errors with [`crate::GpuError::Shape`] if a buffer is smaller than its shape or a shape
/// overflows u32 indexing. `m == 0` or `n == 0` records nothing; `k == 0` writes (or adds) zeros.
#[allow(clippy::too_many_arguments)]
pub fn matmul_fwd(
    enc: &mut Encoder,
    x: &GpuBuffer,
    w: &GpuBuffer,
    y: &GpuBuffer,
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    accumulate: bool,
) -> Result<()> {
    const K: &str = "nn/matmul_fwd";
    check_u32(K, &[("x", m * k), ("w", n * k), ("y", m * n)])?;
    check_f32(K, "x", x, m * k, format!("({m}, {k})"))?;
    check_f32(K, "w", w, n * k, format!("({n}, {k})"))?;
    check_f32(K, "y", y, m * n, format!("({m}, {n})"))?;
    if m == 0 || n == 0 {
        return Ok(());
    }
    let rows = m.min(MAX_ROWS);
    let ntn = n.div_ceil(TILE_N);
    let ntiles = m.div_ceil(rows) * ntn;
    check_u32(K, &[("tile grid", ntiles)])?;
    let gpu = enc.gpu;
    let kern = gpu.kernel(K, "main", &[("ACCUMULATE", if accumulate { 1.0 } else { 0.0 }), ("ROWS", rows as f64)])?;
    let params = [m as u32, k as u32, n as u32, f(alpha), ntn as u32, ntiles as u32, 0, 0];
    enc.dispatch(&kern, &params, &[x, w, y], groups_for(gpu, ntiles as u64, WG))
}
