//! Dequantizing NF4 matmul launchers: `shaders/nf4/matmul_fwd.wgsl`, `shaders/nf4/matmul_bwd_input.wgsl`
//! (re-exported from [`super::nf4`]). The f32 weight is never materialised: the kernels unpack the
//! 4-bit codes of an [`Nf4Weight`] and apply its block scales on the fly.

use super::nf4::{Nf4Weight, DQ_NESTED};
pub use super::nn::MatmulShape;
use super::nn::{wg_for, Grid};
use super::{check_f32, check_u32, mul};
use crate::device::{Encoder, GpuBuffer};
use crate::error::{shape_err, Result};
use crate::nf4::{valid_block_size, NESTED_BLOCK};
use crate::params::{Nf4MatmulBwdInputParams, Nf4MatmulFwdParams};

/// Checks that `w` holds an `[n, k]` matrix and that its buffers match its layout.
fn check_weight(kernel: &str, w: &Nf4Weight, k: usize, n: usize) -> Result<()> {
    if w.n as u64 != mul(n, k) {
        return Err(shape_err(
            kernel,
            format!(
                "weight has {} elements, shape ({n}, {k}) needs {}",
                w.n,
                mul(n, k)
            ),
        ));
    }
    if !valid_block_size(w.block) {
        return Err(shape_err(
            kernel,
            format!("block size {} must be a power of two in 32..=4096", w.block),
        ));
    }
    let nblocks = w.nblocks() as u64;
    let (absmax, dq) = if w.double_quant {
        (
            nblocks,
            (DQ_NESTED as u64 + nblocks.div_ceil(NESTED_BLOCK as u64)) * 4,
        )
    } else {
        (nblocks * 4, 4)
    };
    for (what, buf, need) in [
        ("codes", &w.codes, (w.n as u64).div_ceil(2)),
        ("absmax", &w.absmax, absmax),
        ("dq", &w.dq, dq),
    ] {
        if buf.len < need {
            return Err(shape_err(
                kernel,
                format!(
                    "weight {what} buffer {:?} holds {} bytes, needs {need}",
                    buf.label, buf.len
                ),
            ));
        }
    }
    Ok(())
}

/// Override constants shared by both kernels.
fn constants(w: &Nf4Weight, k: usize, rows: usize, accumulate: bool) -> [(&'static str, f64); 6] {
    let b = |v: bool| if v { 1.0 } else { 0.0 };
    [
        ("BLOCK", w.block as f64),
        ("DOUBLE_QUANT", b(w.double_quant)),
        ("ACCUMULATE", b(accumulate)),
        ("ROWS", rows as f64),
        ("SHIFTED", b(!k.is_multiple_of(8))),
        ("WG", wg_for(rows) as f64),
    ]
}

/// `y[M,N] = alpha * x[M,K] · dequant(w)[N,K]ᵀ`, or with `accumulate` `y += alpha * x · dequant(w)ᵀ`
/// (`nf4/matmul_fwd`). `w` is an NF4 matrix stored `[n, k]` row-major like a torch `Linear` weight;
/// any block size and K are supported (blocks may straddle rows).
///
/// Errors with [`crate::GpuError::Shape`] if `w.n != n * k`, a buffer is smaller than its shape, or
/// a shape overflows u32 indexing. `m == 0` or `n == 0` records nothing.
pub fn matmul_fwd(
    enc: &mut Encoder,
    x: &GpuBuffer,
    w: &Nf4Weight,
    y: &GpuBuffer,
    s: MatmulShape,
    alpha: f32,
    accumulate: bool,
) -> Result<()> {
    const K: &str = "nf4/matmul_fwd";
    let MatmulShape { m, k, n } = s;
    check_weight(K, w, k, n)?;
    check_u32(
        K,
        &[
            ("x", mul(m, k)),
            ("w (+8 for code-word overrun)", mul(n, k) + 8),
            ("y", mul(m, n)),
        ],
    )?;
    check_f32(K, "x", x, &[m, k])?;
    check_f32(K, "y", y, &[m, n])?;
    if m == 0 || n == 0 {
        return Ok(());
    }
    let gpu = enc.gpu;
    let grid = Grid::new(gpu, m, n, true);
    check_u32(K, &[("tile grid", grid.ntiles as u64)])?;
    let (ntn, ntiles) = (grid.nt, grid.ntiles);
    let kern = gpu.kernel(K, grid.entry, &constants(w, k, grid.rows, accumulate))?;
    let nwords = (n * k).div_ceil(8);
    let params = Nf4MatmulFwdParams {
        m: m as u32,
        k: k as u32,
        n: n as u32,
        alpha,
        ntn: ntn as u32,
        ntiles: ntiles as u32,
        nwords: nwords as u32,
        ..Default::default()
    };
    enc.dispatch(
        &kern,
        &params,
        &[x, &w.codes, &w.absmax, &w.dq, y],
        grid.groups,
    )
}

/// `dx[M,K] = dy[M,N] · dequant(w)[N,K]`, or with `accumulate` `dx += dy · dequant(w)`
/// (`nf4/matmul_bwd_input`): the input gradient of [`matmul_fwd`] with `alpha = 1`. No weight
/// gradient: NF4 base weights are frozen.
///
/// Errors with [`crate::GpuError::Shape`] if `w.n != n * k`, a buffer is smaller than its shape, or
/// a shape overflows u32 indexing. `m == 0` or `k == 0` records nothing; `n == 0` writes (or adds) zeros.
pub fn matmul_bwd_input(
    enc: &mut Encoder,
    dy: &GpuBuffer,
    w: &Nf4Weight,
    dx: &GpuBuffer,
    s: MatmulShape,
    accumulate: bool,
) -> Result<()> {
    const K: &str = "nf4/matmul_bwd_input";
    let MatmulShape { m, k, n } = s;
    check_weight(K, w, k, n)?;
    check_u32(
        K,
        &[
            ("dy", mul(m, n)),
            ("w (+8 for code-word overrun)", mul(n, k) + 8),
            ("dx", mul(m, k)),
        ],
    )?;
    check_f32(K, "dy", dy, &[m, n])?;
    check_f32(K, "dx", dx, &[m, k])?;
    if m == 0 || k == 0 {
        return Ok(());
    }
    let gpu = enc.gpu;
    let grid = Grid::new(gpu, m, k, false);
    check_u32(K, &[("tile grid", grid.ntiles as u64)])?;
    let (ntk, ntiles) = (grid.nt, grid.ntiles);
    let kern = gpu.kernel(K, grid.entry, &constants(w, k, grid.rows, accumulate))?;
    let nwords = (n * k).div_ceil(8);
    let params = Nf4MatmulBwdInputParams {
        m: m as u32,
        k: k as u32,
        n: n as u32,
        ntk: ntk as u32,
        ntiles: ntiles as u32,
        nwords: nwords as u32,
        ..Default::default()
    };
    enc.dispatch(
        &kern,
        &params,
        &[dy, &w.codes, &w.absmax, &w.dq, dx],
        grid.groups,
    )
}
