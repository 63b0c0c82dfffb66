//! Token embedding lookup (`nn.Embedding` forward): `x[m, :] = table[ids[m], :]`.

/// Gathers rows of `table[V,C]` for `ids[M]` into `x[M,C]`. An id `>= V` (out of range, e.g. a
/// padding id of -1 stored as u32) gives a row of zeros, as the GPU kernel does: it never reads
/// outside the table.
///
/// Panics if a slice is shorter than its shape.
pub fn embedding_fwd(ids: &[u32], table: &[f32], m: usize, v: usize, c: usize) -> Vec<f32> {
    assert!(
        ids.len() >= m,
        "embedding_fwd: ids has {} values, m = {m}",
        ids.len()
    );
    assert!(
        table.len() >= v * c,
        "embedding_fwd: table has {} values, shape ({v}, {c})",
        table.len()
    );
    let mut x = vec![0f32; m * c];
    for (r, &id) in ids[..m].iter().enumerate() {
        let id = id as usize;
        if id < v {
            x[r * c..(r + 1) * c].copy_from_slice(&table[id * c..(id + 1) * c]);
        }
    }
    x
}
