// SwiGLU forward (LlamaMLP): h = silu(gate) * up elementwise, silu(x) = x * sigmoid(x).
// sigmoid without overflow: with e = exp(-|x|) in (0, 1], sigmoid(x) = 1/(1+e) for x >= 0 and
// e/(1+e) for x < 0 (one exp, no inf for large |x|).
// Each invocation handles ITEMS elements strided by WG (coalesced; no shared memory).
// Joined with nn/swiglu_common.wgsl (crates/gpu/src/shaders.rs).

const WG: u32 = 256u;
const ITEMS: u32 = 16u;  // elements per invocation, strided by WG (a workgroup covers WG * ITEMS)

struct Params {
    n: u32,  // elements (M * I)
    _p0: u32,
    _p1: u32,
    _p2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> gate: array<f32>;     // (M, I)
@group(0) @binding(2) var<storage, read> up: array<f32>;       // (M, I)
@group(0) @binding(3) var<storage, read_write> h: array<f32>;  // (M, I)

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let base = (wid.x + wid.y * nwg.x) * (WG * ITEMS) + lid;
    for (var k = 0u; k < ITEMS; k++) {
        let i = base + k * WG;
        if (i >= p.n) {
            return;
        }
        let g = gate[i];
        h[i] = g * sigmoid(g) * up[i];
    }
}
