//! Dense f32 launchers: `shaders/nn/*.wgsl`.

use crate::device::{groups_1d, Encoder, Gpu, GpuBuffer};
use crate::error::{shape_err, Result};
use crate::kernels::KernelSet;
use crate::ops::{check_distinct, check_f32, check_table, check_u32, groups_for, mul, TableDtype};
use crate::params::{MatmulBwdInputParams, MatmulFwdParams};

/// Output tile side of the GPU variant's matmuls (entry point `tiled`, 256 invocations each
/// owning 4 × 4 outputs of a 64 × 64 tile), here and in the NF4 matmuls.
pub(crate) const GPU_TILE: usize = 64;

/// Most rows the GPU variant's forward matmuls compute with their `matvec` entry point (one
/// workgroup per output column; decoding) rather than 64 × 64 tiles.
pub(crate) const GPU_MATVEC_ROWS: usize = 8;

/// Column tile of the matmul kernels: each invocation owns 8 output columns.
pub(crate) const TILE_N: usize = 8;
/// Most output rows one invocation owns.
pub(crate) const MAX_ROWS: usize = 8;
/// Invocations per workgroup of the matmul kernels (their `WG` override); see [`wg_for`].
pub(crate) const WG: usize = 64;
/// Workgroup size of matrix-vector products (M=1): a 1536-column product is then 12 workgroups
/// rather than 3, which lavapipe's worker threads share out evenly (20-50% faster there).
pub(crate) const WG_MATVEC: usize = 16;

/// The shape of a matmul in torch `Linear` layout: `m` rows of `x` (`dy`), `k` inputs, `n`
/// outputs (`w` is `[n, k]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MatmulShape {
    pub m: usize,
    pub k: usize,
    pub n: usize,
}

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

/// The output tiles of one matmul dispatch (the nn and nf4 forward and input-gradient kernels)
/// for the device's kernel variant: `m` rows by `cols` output columns (N for a forward, K for an
/// input gradient).
pub(crate) struct Grid {
    /// The entry point: `main` (CPU variant, [`rows_for`] rows × 8 columns per invocation),
    /// `tiled` (GPU variant, 64 × 64 per workgroup) or `matvec` (GPU variant, forward, at most
    /// [`GPU_MATVEC_ROWS`] rows: one workgroup per output column).
    pub entry: &'static str,
    /// The kernels' `ROWS` override: [`rows_for`]`(m)` for `main`; [`MAX_ROWS`] (the WGSL
    /// default, unused) for the GPU entry points, so they compile once whatever `m` is.
    pub rows: usize,
    /// Column tiles (the kernels' `ntn` / `ntk`).
    pub nt: usize,
    /// All tiles (workgroups for `tiled` / `matvec`, invocations for `main`).
    pub ntiles: usize,
    pub groups: [u32; 3],
}

impl Grid {
    /// `matvec`: the kernel has a `matvec` entry point (the forward kernels).
    pub fn new(gpu: &Gpu, m: usize, cols: usize, matvec: bool) -> Grid {
        if gpu.kernels() == KernelSet::Cpu {
            let rows = rows_for(m);
            let nt = cols.div_ceil(TILE_N);
            let ntiles = m.div_ceil(rows) * nt;
            return Grid {
                entry: "main",
                rows,
                nt,
                ntiles,
                groups: groups_for(gpu, ntiles as u64, wg_for(rows) as u64),
            };
        }
        let nt = cols.div_ceil(GPU_TILE);
        let (entry, ntiles) = if matvec && m <= GPU_MATVEC_ROWS {
            ("matvec", cols)
        } else {
            ("tiled", m.div_ceil(GPU_TILE) * nt)
        };
        Grid {
            entry,
            rows: MAX_ROWS,
            nt,
            ntiles,
            groups: groups_1d(gpu, ntiles as u64),
        }
    }
}

/// `y[M,N] = alpha * x[M,K] · w[N,K]ᵀ`, or with `accumulate` `y += alpha * x · wᵀ`
/// (`nn/matmul_fwd`). `w` is stored like a torch `Linear` weight `[out, in]`; all f32 row-major.
/// The same as [`matmul_fwd_strided`] with `ldy = n`, `col0 = 0`.
///
/// Errors with [`crate::GpuError::Shape`] if a buffer is smaller than its shape or a shape
/// overflows u32 indexing. `m == 0` or `n == 0` records nothing; `k == 0` writes (or adds) zeros.
pub fn matmul_fwd(
    enc: &mut Encoder,
    x: &GpuBuffer,
    w: &GpuBuffer,
    y: &GpuBuffer,
    s: MatmulShape,
    alpha: f32,
    accumulate: bool,
) -> Result<()> {
    matmul_fwd_strided(enc, x, w, y, s, s.n, 0, alpha, accumulate)
}

/// [`matmul_fwd`] into a column band of a wider output: element `(row, col)` of the `[M,N]` product
/// goes to `y[row * ldy + col0 + col]`; the other elements of `y` are not touched. With the LM
/// head's weight `[V, C]` split into row chunks (vocab chunks, each under the storage-binding
/// limit), chunk `j` holding vocabulary rows `[v0, v0 + n)` writes its logits with `ldy = V`,
/// `col0 = v0`.
///
/// Errors with [`crate::GpuError::Shape`] if `col0 + n > ldy`, if `y` holds fewer than
/// `(m - 1) * ldy + col0 + n` f32 (for `m > 0`), if `x` or `w` is smaller than its shape, or if an
/// index overflows u32. `m == 0` or `n == 0` records nothing; `k == 0` writes (or adds) zeros.
#[allow(clippy::too_many_arguments)]
pub fn matmul_fwd_strided(
    enc: &mut Encoder,
    x: &GpuBuffer,
    w: &GpuBuffer,
    y: &GpuBuffer,
    s: MatmulShape,
    ldy: usize,
    col0: usize,
    alpha: f32,
    accumulate: bool,
) -> Result<()> {
    matmul_fwd_strided_dtype(
        enc,
        x,
        w,
        TableDtype::F32,
        y,
        s,
        ldy,
        col0,
        alpha,
        accumulate,
    )
}

/// [`matmul_fwd_strided`] with `w` stored as `dtype` (a frozen LM head chunk in its checkpoint's
/// 16-bit dtype, packed as [`TableDtype`] says): each element is widened to f32 exactly before
/// the multiply, so the result is the one the f32 copy of `w` gives.
///
/// Errors as [`matmul_fwd_strided`], with `w` checked for `[n, k]` elements of `dtype`.
#[allow(clippy::too_many_arguments)]
pub fn matmul_fwd_strided_dtype(
    enc: &mut Encoder,
    x: &GpuBuffer,
    w: &GpuBuffer,
    w_dtype: TableDtype,
    y: &GpuBuffer,
    s: MatmulShape,
    ldy: usize,
    col0: usize,
    alpha: f32,
    accumulate: bool,
) -> Result<()> {
    const K: &str = "nn/matmul_fwd";
    let MatmulShape { m, k, n } = s;
    let y_len = check_band(K, "y", y, m, n, ldy, col0)?;
    check_u32(K, &[("x", mul(m, k)), ("w", mul(n, k)), ("y", y_len)])?;
    check_f32(K, "x", x, &[m, k])?;
    check_table(K, "w", w, w_dtype, &[n, k])?;
    if m == 0 || n == 0 {
        return Ok(());
    }
    let gpu = enc.gpu;
    let grid = Grid::new(gpu, m, n, true);
    check_u32(K, &[("tile grid", grid.ntiles as u64)])?;
    let kern = gpu.kernel(
        K,
        grid.entry,
        &[
            ("ACCUMULATE", if accumulate { 1.0 } else { 0.0 }),
            ("ROWS", grid.rows as f64),
            ("WG", wg_for(grid.rows) as f64),
            ("TABLE_DTYPE", w_dtype.code()),
        ],
    )?;
    let params = MatmulFwdParams {
        m: m as u32,
        k: k as u32,
        n: n as u32,
        alpha,
        ntn: grid.nt as u32,
        ntiles: grid.ntiles as u32,
        ldy: ldy as u32,
        col0: col0 as u32,
    };
    enc.dispatch(&kern, &params, &[x, w, y], grid.groups)
}

/// Checks a column band `[m rows, columns col0..col0 + n]` of a row-major matrix with row stride
/// `ld` held in `buf`: `col0 + n <= ld` and `buf` holds the `(m - 1) * ld + col0 + n` f32 the band
/// reaches (0 for `m == 0`). Returns that element count.
fn check_band(
    kernel: &str,
    what: &str,
    buf: &GpuBuffer,
    m: usize,
    n: usize,
    ld: usize,
    col0: usize,
) -> Result<u64> {
    let end = col0 as u64 + n as u64;
    if end > ld as u64 {
        return Err(shape_err(
            kernel,
            format!("{what}: columns {col0}..{end} do not fit in its row stride {ld}"),
        ));
    }
    let need = if m == 0 {
        0
    } else {
        (m as u64 - 1) * ld as u64 + end
    };
    if buf.len < need.saturating_mul(4) {
        return Err(shape_err(
            kernel,
            format!(
                "{what} ({m} rows of stride {ld}, columns {col0}..{end}) f32 needs {} bytes, \
                 buffer {:?} holds {}",
                need.saturating_mul(4),
                buf.label,
                buf.len
            ),
        ));
    }
    Ok(need)
}

/// `dx[M,K] = dy[M,N] · w[N,K]`, or with `accumulate` `dx += dy · w` (`nn/matmul_bwd_input`): the
/// input gradient of [`matmul_fwd`] with `alpha = 1`. `w` is stored like a torch `Linear` weight
/// `[out, in]` = `[n, k]`; all f32 row-major. No weight gradient. The same as
/// [`matmul_bwd_input_strided`] with `lddy = n`, `col0 = 0`.
///
/// Errors with [`crate::GpuError::Shape`] if a buffer is smaller than its shape or a shape
/// overflows u32 indexing, or if `dx` is also bound as `dy` or `w`. `m == 0` or `k == 0` records
/// nothing; `n == 0` writes (or adds) zeros.
pub fn matmul_bwd_input(
    enc: &mut Encoder,
    dy: &GpuBuffer,
    w: &GpuBuffer,
    dx: &GpuBuffer,
    s: MatmulShape,
    accumulate: bool,
) -> Result<()> {
    matmul_bwd_input_strided(enc, dy, w, dx, s, s.n, 0, accumulate)
}

/// [`matmul_bwd_input`] reading `dy` from a column band of a wider matrix: `dy(row, j)` is
/// `dy[row * lddy + col0 + j]` for `j < n`. With the LM head's weight `[V, C]` split into row chunks
/// (vocab chunks), chunk `j` holding vocabulary rows `[v0, v0 + n)` takes its share of the full
/// logits gradient with `lddy = V`, `col0 = v0`; the first chunk with `accumulate = false`, the
/// others with `accumulate = true`, sums `dx` over the chunks.
///
/// Errors with [`crate::GpuError::Shape`] if `col0 + n > lddy`, if `dy` holds fewer than
/// `(m - 1) * lddy + col0 + n` f32 (for `m > 0`), if `w` or `dx` is smaller than its shape, if an
/// index overflows u32, or if `dx` is also bound as `dy` or `w`. `m == 0` or `k == 0` records
/// nothing; `n == 0` writes (or adds) zeros.
#[allow(clippy::too_many_arguments)]
pub fn matmul_bwd_input_strided(
    enc: &mut Encoder,
    dy: &GpuBuffer,
    w: &GpuBuffer,
    dx: &GpuBuffer,
    s: MatmulShape,
    lddy: usize,
    col0: usize,
    accumulate: bool,
) -> Result<()> {
    matmul_bwd_input_strided_dtype(enc, dy, w, TableDtype::F32, dx, s, lddy, col0, accumulate)
}

/// [`matmul_bwd_input_strided`] with `w` stored as `dtype` (a frozen LM head chunk in its
/// checkpoint's 16-bit dtype, packed as [`TableDtype`] says), widened to f32 exactly: the result
/// is the one the f32 copy of `w` gives. No gradient for `w`.
///
/// Errors as [`matmul_bwd_input_strided`], with `w` checked for `[n, k]` elements of `dtype`.
#[allow(clippy::too_many_arguments)]
pub fn matmul_bwd_input_strided_dtype(
    enc: &mut Encoder,
    dy: &GpuBuffer,
    w: &GpuBuffer,
    w_dtype: TableDtype,
    dx: &GpuBuffer,
    s: MatmulShape,
    lddy: usize,
    col0: usize,
    accumulate: bool,
) -> Result<()> {
    const K: &str = "nn/matmul_bwd_input";
    let MatmulShape { m, k, n } = s;
    let dy_len = check_band(K, "dy", dy, m, n, lddy, col0)?;
    check_u32(K, &[("dy", dy_len), ("w", mul(n, k)), ("dx", mul(m, k))])?;
    check_table(K, "w", w, w_dtype, &[n, k])?;
    check_f32(K, "dx", dx, &[m, k])?;
    check_distinct(K, &[("dx", dx)], &[("dy", dy), ("w", w)])?;
    if m == 0 || k == 0 {
        return Ok(());
    }
    let gpu = enc.gpu;
    let grid = Grid::new(gpu, m, k, false);
    check_u32(K, &[("tile grid", grid.ntiles as u64)])?;
    let kern = gpu.kernel(
        K,
        grid.entry,
        &[
            ("ACCUMULATE", if accumulate { 1.0 } else { 0.0 }),
            ("ROWS", grid.rows as f64),
            ("WG", wg_for(grid.rows) as f64),
            ("TABLE_DTYPE", w_dtype.code()),
        ],
    )?;
    let params = MatmulBwdInputParams {
        m: m as u32,
        k: k as u32,
        n: n as u32,
        ntk: grid.nt as u32,
        ntiles: grid.ntiles as u32,
        lddy: lddy as u32,
        col0: col0 as u32,
        ..Default::default()
    };
    enc.dispatch(&kern, &params, &[dy, w, dx], grid.groups)
}
