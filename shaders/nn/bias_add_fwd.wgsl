// y[m, n] += bias[n]: the bias of a linear layer (Qwen2's q/k/v projections), added after the matmul.
// Frozen in LoRA training, so there is no backward kernel: the gradient passes through unchanged.
// One invocation per 4 consecutive elements of a row.

struct Params {
    m: u32,  // rows
    n: u32,  // columns (bias length)
    nq: u32, // ceil(n / 4): invocations per row
    _p0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> bias: array<f32>;     // (N)
@group(0) @binding(2) var<storage, read_write> y: array<f32>;  // (M, N)

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let g = (wid.x + wid.y * nwg.x) * 64u + lid;
    let row = g / p.nq;
    if (row >= p.m) {
        return;
    }
    let c0 = (g % p.nq) * 4u;
    let c1 = min(c0 + 4u, p.n);
    for (var c = c0; c < c1; c++) {
        y[row * p.n + c] += bias[c];
    }
}
