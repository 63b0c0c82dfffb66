// Scaled elementwise add in place (residual connections): y += alpha * x.
// Each invocation handles ITEMS elements strided by WG (coalesced; no shared memory).

const WG: u32 = 256u;
const ITEMS: u32 = 16u;  // elements per invocation, strided by WG (a workgroup covers WG * ITEMS)

struct Params {
    n: u32,      // elements
    alpha: f32,  // scale of x
    _p0: u32,
    _p1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;        // (n)
@group(0) @binding(2) var<storage, read_write> y: array<f32>;  // (n)

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let base = (wid.x + wid.y * nwg.x) * (WG * ITEMS) + lid;
    for (var k = 0u; k < ITEMS; k++) {
        let i = base + k * WG;
        if (i >= p.n) {
            return;
        }
        y[i] = y[i] + p.alpha * x[i];
    }
}
