//! Dense f32 launchers: `shaders/nn/*.wgsl`.

use crate::device::{Encoder, GpuBuffer};
use crate::error::Result;
use crate::ops::{check_distinct, check_f32, check_u32, f, groups_for, mul};

/// Column tile of the matmul kernels: each invocation owns 8 output columns.
pub(crate) const TILE_N: usize = 8;
/// Most output rows one invocation owns.
pub(crate) const MAX_ROWS: usize = 8;
/// Invocations per workgroup of the matmul kernels (their `WG` override); see [`wg_for`].
pub(crate) const WG: usize = 64;
/// Workgroup size of matrix-vector products (M=1): a 1536-column product is then 12 workgroups
/// rather than 3, which lavapipe's worker threads share out evenly (20-50% faster there).
pub(crate) const WG_MATVEC: usize = 16;

/// The kernels' `ROWS` override for `m` output rows: the next power of two up to [`MAX_ROWS`]
/// (M=1 matrix-vector products do no wasted work; few pipeline variants to compile).
pub(crate) fn rows_for(m: usize) -> usize {
    m.max(1).next_power_of_two().min(MAX_ROWS)
}

/// The kernels' `WG` override for `rows` (= [`rows_for`]`(m)`).
pub(crate) fn wg_for(rows: usize) -> usize {
    if rows == 1 {
        WG_MATVEC
    } else {
        WG
    }
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
    check_u32(K, &[("x", mul(m, k)), ("w", mul(n, k)), ("y", mul(m, n))])?;
    check_f32(K, "x", x, &[m, k])?;
    check_f32(K, "w", w, &[n, k])?;
    check_f32(K, "y", y, &[m, n])?;
    if m == 0 || n == 0 {
        return Ok(());
    }
    let rows = rows_for(m);
    let ntn = n.div_ceil(TILE_N);
    let ntiles = m.div_ceil(rows) * ntn;
    check_u32(K, &[("tile grid", ntiles as u64)])?;
    let gpu = enc.gpu;
    let wg = wg_for(rows);
    let kern = gpu.kernel(
        K,
        "main",
        &[
            ("ACCUMULATE", if accumulate { 1.0 } else { 0.0 }),
            ("ROWS", rows as f64),
            ("WG", wg as f64),
        ],
    )?;
    let params = [
        m as u32,
        k as u32,
        n as u32,
        f(alpha),
        ntn as u32,
        ntiles as u32,
        0,
        0,
    ];
    enc.dispatch(
        &kern,
        &params,
        &[x, w, y],
        groups_for(gpu, ntiles as u64, wg as u64),
    )
}

/// `dx[M,K] = dy[M,N] · w[N,K]`, or with `accumulate` `dx += dy · w` (`nn/matmul_bwd_input`): the
/// input gradient of [`matmul_fwd`] with `alpha = 1`. `w` is stored like a torch `Linear` weight
/// `[out, in]` = `[n, k]`; all f32 row-major. No weight gradient.
///
/// Errors with [`crate::GpuError::Shape`] if a buffer is smaller than its shape or a shape
/// overflows u32 indexing, or if `dx` is also bound as `dy` or `w`. `m == 0` or `k == 0` records
/// nothing; `n == 0` writes (or adds) zeros.
#[allow(clippy::too_many_arguments)]
pub fn matmul_bwd_input(
    enc: &mut Encoder,
    dy: &GpuBuffer,
    w: &GpuBuffer,
    dx: &GpuBuffer,
    m: usize,
    k: usize,
    n: usize,
    accumulate: bool,
) -> Result<()> {
    const K: &str = "nn/matmul_bwd_input";
    check_u32(K, &[("dy", mul(m, n)), ("w", mul(n, k)), ("dx", mul(m, k))])?;
    check_f32(K, "dy", dy, &[m, n])?;
    check_f32(K, "w", w, &[n, k])?;
    check_f32(K, "dx", dx, &[m, k])?;
    check_distinct(K, &[("dx", dx)], &[("dy", dy), ("w", w)])?;
    if m == 0 || k == 0 {
        return Ok(());
    }
    let rows = rows_for(m);
    let ntk = k.div_ceil(TILE_N);
    let ntiles = m.div_ceil(rows) * ntk;
    check_u32(K, &[("tile grid", ntiles as u64)])?;
    let gpu = enc.gpu;
    let wg = wg_for(rows);
    let kern = gpu.kernel(
        K,
        "main",
        &[
            ("ACCUMULATE", if accumulate { 1.0 } else { 0.0 }),
            ("ROWS", rows as f64),
            ("WG", wg as f64),
        ],
    )?;
    let params = [
        m as u32,
        k as u32,
        n as u32,
        ntk as u32,
        ntiles as u32,
        0,
        0,
        0,
    ];
    enc.dispatch(
        &kern,
        &params,
        &[dy, w, dx],
        groups_for(gpu, ntiles as u64, wg as u64),
    )
}
