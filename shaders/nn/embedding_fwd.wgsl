// Token embedding lookup: x[m, c] = table[ids[m], c] for ids[M] (u32) and table[V, C] (f32).
// An id >= V (out of range, e.g. a padding id of -1 stored as u32) writes a row of zeros: the
// kernel never reads outside the table. One invocation per output element (neighbouring
// invocations copy neighbouring columns), numbered over a 1-D grid (wid.x + wid.y * nwg.x).

struct Params {
    m: u32,   // rows (tokens)
    v: u32,   // vocabulary size (rows of the table)
    c: u32,   // columns (hidden size)
    n: u32,   // m * c
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> ids: array<u32>;       // (M)
@group(0) @binding(2) var<storage, read> table: array<f32>;     // (V, C)
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
    var v = 0.0;
    if (id < p.v) {
        v = table[id * p.c + col];
    }
    x[t] = v;
}
