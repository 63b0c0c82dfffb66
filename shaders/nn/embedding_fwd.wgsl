// Token embedding lookup: x[m, c] = table[ids[m], c] for ids[M] (u32) and a table of V rows of C
// f32, f16 or bf16 (TABLE_DTYPE, nn/table_common.wgsl: a 16-bit table is packed two elements per
// u32 and widened exactly, so the output is the f32 value of the stored element). The bound table may be a vocab chunk: rows [row0, row0 + rows) of the full table (row0 = 0,
// rows = V for the whole table), so that a table over the storage-binding limit is looked up one
// chunk at a time:
// - an id >= V (out of range, e.g. a padding id of -1 stored as u32) writes a row of zeros (every
//   chunk does): the kernel never reads outside the table;
// - an id in [row0, row0 + rows) copies table[(id - row0) * C ..];
// - any other id (in the vocabulary, another chunk's row) leaves its output row unchanged.
// One invocation per output element (neighbouring invocations copy neighbouring columns),
// numbered over a 1-D grid (wid.x + wid.y * nwg.x).

struct Params {
    m: u32,     // rows (tokens)
    v: u32,     // vocabulary size (rows of the full table)
    c: u32,     // columns (hidden size)
    n: u32,     // m * c
    row0: u32,  // first vocabulary row held by `table`
    rows: u32,  // rows held by `table` (row0 + rows <= v)
    _p0: u32,
    _p1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> ids: array<u32>;       // (M)
@group(0) @binding(2) var<storage, read> table: array<u32>;     // (rows, C) f32, or (rows*C/2) packed 16-bit pairs: rows row0.. of the table
@group(0) @binding(3) var<storage, read_write> x: array<f32>;   // (M, C)

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let t = (wid.x + wid.y * nwg.x) * 64u + lid;
    if (t >= p.n) {
        return;
    }
    let row = t / p.c;
    let col = t - row * p.c;
    let id = ids[row];
    if (id >= p.v) {
        x[t] = 0.0;
        return;
    }
    // Wraps to >= 2^32 - row0 >= rows for id < row0.
    let r = id - p.row0;
    if (r < p.rows) {
        let i = r * p.c + col;
        x[t] = table_value(table[table_word(i)], i);
    }
}
