// RMSNorm forward (transformers' LlamaRMSNorm in float32), one workgroup per row of x[M, C]:
//   rstd[m] = 1 / sqrt(mean_c(x[m,c]²) + eps),   y[m,c] = (x[m,c] * rstd[m]) * w[c].
// Each invocation sums the squares of a strided run of the row (c = lid, lid + WG, ...), a
// shared-memory tree adds the WG partial sums (log2(WG) + 1 barriers per row, none in the load
// loop), then every invocation writes its strided run of y. The mean is sum * (1/C) with 1/C
// rounded on the host (WGSL `/` is not correctly rounded on every driver). Rows are numbered over a
// 1-D grid split across x and y (wid.x + wid.y * nwg.x).
// Joined with nn/rmsnorm_common.wgsl (crates/gpu/src/shaders.rs).

const WG: u32 = 64u;

struct Params {
    m: u32,       // rows
    c: u32,       // columns (hidden size)
    eps: f32,     // variance epsilon
    inv_c: f32,   // 1 / C, rounded to f32 on the host
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;            // (M, C)
@group(0) @binding(2) var<storage, read> w: array<f32>;            // (C)
@group(0) @binding(3) var<storage, read_write> y: array<f32>;      // (M, C)
@group(0) @binding(4) var<storage, read_write> rstd: array<f32>;   // (M)

var<workgroup> red: array<f32, WG>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let row = wid.x + wid.y * nwg.x;
    // Uniform per workgroup: spare workgroups of the x/y split leave before any barrier.
    if (row >= p.m) {
        return;
    }
    let base = row * p.c;
    var ss = 0.0;
    for (var j = lid; j < p.c; j += WG) {
        let v = x[base + j];
        ss += v * v;
    }
    let total = reduce(lid, ss);
    let r = 1.0 / sqrt(total * p.inv_c + p.eps);
    if (lid == 0u) {
        rstd[row] = r;
    }
    for (var j = lid; j < p.c; j += WG) {
        y[base + j] = (x[base + j] * r) * w[j];
    }
}
