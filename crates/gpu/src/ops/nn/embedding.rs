//! Token embedding launcher (`shaders/nn/embedding_fwd.wgsl`): `x[m, :] = table[ids[m], :]`.
//! Reference: [`tinytune_reference::nn::embedding_fwd`].

use crate::device::{Encoder, GpuBuffer};
use crate::error::{shape_err, Result};
use crate::ops::{check_distinct, check_f32, check_u32, groups_for, mul};

/// Invocations per workgroup; one invocation per output element.
const WG: u64 = 64;

/// Embedding forward: gathers rows of `table[V,C]` (f32) for `ids[M]` (u32) into `x[M,C]`.
/// The launcher cannot see the ids (they live on the GPU): an id `>= v` writes a row of zeros
/// instead of reading outside the table.
///
/// Errors with [`crate::GpuError::Shape`] if a buffer is smaller than its shape (`ids` holds `m`
/// u32), `table` or `x` has more than 2^32 elements, or `x` is also `ids` or `table`.
/// `m == 0` or `c == 0` records nothing.
#[allow(clippy::too_many_arguments)]
pub fn embedding_fwd(
    enc: &mut Encoder,
    ids: &GpuBuffer,
    table: &GpuBuffer,
    x: &GpuBuffer,
    m: usize,
    v: usize,
    c: usize,
) -> Result<()> {
    const K: &str = "nn/embedding_fwd";
    check_u32(K, &[("table", mul(v, c)), ("x", mul(m, c))])?;
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
    check_f32(K, "table", table, &[v, c])?;
    check_f32(K, "x", x, &[m, c])?;
    check_distinct(K, &[("x", x)], &[("ids", ids), ("table", table)])?;
    if m == 0 || c == 0 {
        return Ok(());
    }
    let n = mul(m, c);
    let gpu = enc.gpu;
    let kern = gpu.kernel(K, "main", &[])?;
    let params = [m as u32, v as u32, c as u32, n as u32];
    enc.dispatch(&kern, &params, &[ids, table, x], groups_for(gpu, n, WG))
}
