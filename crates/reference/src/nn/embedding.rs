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

/// [`embedding_fwd`] from one vocab chunk, in place: `table` holds rows `[row0, row0 + rows)` of a
/// `[v_total, C]` table. For each of `ids[M]`, row `m` of `x[M,C]` becomes
/// `table[(id - row0) * c ..][..c]` if `row0 <= id < row0 + rows`, zeros if `id >= v_total`, and is
/// left unchanged otherwise (another chunk's id), as the GPU kernel does. Applied once per chunk
/// of a table split into row chunks it gives [`embedding_fwd`] of the whole table.
///
/// Panics if a slice is shorter than its shape or `row0 + rows > v_total`.
#[allow(clippy::too_many_arguments)]
pub fn embedding_fwd_rows(
    ids: &[u32],
    table: &[f32],
    x: &mut [f32],
    m: usize,
    v_total: usize,
    row0: usize,
    rows: usize,
    c: usize,
) {
    assert!(
        row0 + rows <= v_total,
        "embedding_fwd_rows: rows {row0}..{} outside the vocabulary of {v_total}",
        row0 + rows
    );
    assert!(
        ids.len() >= m,
        "embedding_fwd_rows: ids has {} values, m = {m}",
        ids.len()
    );
    assert!(
        table.len() >= rows * c,
        "embedding_fwd_rows: table has {} values, shape ({rows}, {c})",
        table.len()
    );
    assert!(
        x.len() >= m * c,
        "embedding_fwd_rows: x has {} values, shape ({m}, {c})",
        x.len()
    );
    for (r, &id) in ids[..m].iter().enumerate() {
        let id = id as usize;
        let out = &mut x[r * c..(r + 1) * c];
        if id >= v_total {
            out.fill(0.0);
        } else if (row0..row0 + rows).contains(&id) {
            let t = id - row0;
            out.copy_from_slice(&table[t * c..(t + 1) * c]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_chunks_give_the_whole_lookup() {
        let (v, c) = (7, 3);
        let table: Vec<f32> = (0..v * c).map(|i| i as f32 + 1.0).collect();
        let ids = [6u32, 0, 7, 3, u32::MAX, 4, 2];
        let m = ids.len();
        let want = embedding_fwd(&ids, &table, m, v, c);
        let mut x = vec![f32::NAN; m * c];
        for (row0, rows) in [(4, 3), (0, 2), (2, 2)] {
            embedding_fwd_rows(&ids, &table[row0 * c..], &mut x, m, v, row0, rows, c);
        }
        assert_eq!(x, want);
        // One chunk alone leaves the other chunks' rows unchanged.
        let mut x = vec![-1f32; m * c];
        embedding_fwd_rows(&ids, &table[2 * c..], &mut x, m, v, 2, 2, c);
        assert_eq!(&x[..c], &[-1.0; 3]); // id 6: another chunk
        assert_eq!(&x[2 * c..3 * c], &[0.0; 3]); // id 7 = V: zeros
        assert_eq!(&x[3 * c..4 * c], &table[9..12]); // id 3: row 1 of the chunk
    }
}
