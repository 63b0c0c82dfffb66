//! Token embedding launcher (`shaders/nn/embedding_fwd.wgsl`): `x[m, :] = table[ids[m], :]`, from
//! the whole table or from one vocab chunk of it.
//! References: `tinytune_reference::nn::embedding_fwd`, `tinytune_reference::nn::embedding_fwd_rows`.

use crate::device::{Encoder, GpuBuffer};
use crate::error::{shape_err, Result};
use crate::ops::{check_distinct, check_f32, check_table, check_u32, groups_for, mul, TableDtype};
use crate::params::EmbeddingParams;

/// Invocations per workgroup; one invocation per output element.
const WG: u64 = 64;

/// Embedding forward: gathers rows of `table[V,C]` (f32) for `ids[M]` (u32) into `x[M,C]`.
/// The launcher cannot see the ids (they live on the GPU): an id `>= v` writes a row of zeros
/// instead of reading outside the table. The same as [`embedding_fwd_rows`] with `row0 = 0`,
/// `rows = v`.
///
/// Errors with [`crate::GpuError::Shape`] if a buffer is smaller than its shape (`ids` holds `m`
/// u32), `table` or `x` has more than 2^32 elements, or `x` is also `ids` or `table`.
/// `m == 0` or `c == 0` records nothing.
pub fn embedding_fwd(
    enc: &mut Encoder,
    ids: &GpuBuffer,
    table: &GpuBuffer,
    x: &GpuBuffer,
    m: usize,
    v: usize,
    c: usize,
) -> Result<()> {
    embedding_fwd_rows(enc, ids, table, x, m, v, 0, v, c)
}

/// Embedding forward from one vocab chunk: `table` holds rows `[row0, row0 + rows)` of a
/// `[v_total, C]` embedding table (f32), for tables over the storage-binding limit that are stored
/// as several row-chunk buffers. For each of `ids[M]` (u32), output row `x[m, :]` (f32 `[M,C]`) is
/// - `table[(id - row0) * c ..][..c]` if `row0 <= id < row0 + rows`,
/// - zeros if `id >= v_total` (as [`embedding_fwd`]: every chunk writes them),
/// - left unchanged otherwise (the id belongs to another chunk).
///
/// Running it once per chunk (in any order) gives [`embedding_fwd`] over the whole table.
///
/// Errors with [`crate::GpuError::Shape`] if `row0 + rows > v_total`, a buffer is smaller than
/// its shape (`ids` holds `m` u32, `table` `[rows, c]`), `table` or `x` has more than 2^32
/// elements, `v_total` does not fit u32, or `x` is also `ids` or `table`. `m == 0` or `c == 0`
/// records nothing.
#[allow(clippy::too_many_arguments)]
pub fn embedding_fwd_rows(
    enc: &mut Encoder,
    ids: &GpuBuffer,
    table: &GpuBuffer,
    x: &GpuBuffer,
    m: usize,
    v_total: usize,
    row0: usize,
    rows: usize,
    c: usize,
) -> Result<()> {
    embedding_fwd_rows_dtype(
        enc,
        ids,
        table,
        TableDtype::F32,
        x,
        m,
        v_total,
        row0,
        rows,
        c,
    )
}

/// [`embedding_fwd_rows`] from a chunk stored as `dtype` (a 16-bit table packed as
/// [`TableDtype`] says, its elements widened to f32 exactly: the same `x` as the f32 copy of the
/// chunk gives).
///
/// Errors as [`embedding_fwd_rows`], with `table` checked for `[rows, c]` elements of `dtype`.
#[allow(clippy::too_many_arguments)]
pub fn embedding_fwd_rows_dtype(
    enc: &mut Encoder,
    ids: &GpuBuffer,
    table: &GpuBuffer,
    dtype: TableDtype,
    x: &GpuBuffer,
    m: usize,
    v_total: usize,
    row0: usize,
    rows: usize,
    c: usize,
) -> Result<()> {
    const K: &str = "nn/embedding_fwd";
    check_u32(
        K,
        &[
            ("table", mul(rows, c)),
            ("x", mul(m, c)),
            ("vocabulary", v_total as u64),
        ],
    )?;
    if row0 as u64 + rows as u64 > v_total as u64 {
        return Err(shape_err(
            K,
            format!(
                "table chunk rows {row0}..{} outside the vocabulary of {v_total}",
                row0 as u64 + rows as u64
            ),
        ));
    }
    if ids.len < mul(m, 4) {
        return Err(shape_err(
            K,
            format!(
                "ids ({m}) u32 needs {} bytes, buffer {:?} holds {}",
                mul(m, 4),
                ids.label,
                ids.len
            ),
        ));
    }
    check_table(K, "table", table, dtype, &[rows, c])?;
    check_f32(K, "x", x, &[m, c])?;
    check_distinct(K, &[("x", x)], &[("ids", ids), ("table", table)])?;
    if m == 0 || c == 0 {
        return Ok(());
    }
    let n = mul(m, c);
    let gpu = enc.gpu;
    let kern = gpu.kernel(K, "main", &[("TABLE_DTYPE", dtype.code())])?;
    let params = EmbeddingParams {
        m: m as u32,
        v: v_total as u32,
        c: c as u32,
        n: n as u32,
        row0: row0 as u32,
        rows: rows as u32,
        ..Default::default()
    };
    enc.dispatch(&kern, &params, &[ids, table, x], groups_for(gpu, n, WG))
}
