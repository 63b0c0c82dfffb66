// SwiGLU backward for h = silu(gate) * up, from the upstream gradient dh:
//   dgate = dh * up * silu'(gate),  silu'(x) = s * (1 + x * (1 - s)),  s = sigmoid(x)
//   dup   = dh * silu(gate)
// sigmoid as in swiglu_fwd (one exp of -|x|, no overflow).
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
@group(0) @binding(1) var<storage, read> dh: array<f32>;           // (M, I)
@group(0) @binding(2) var<storage, read> gate: array<f32>;         // (M, I)
@group(0) @binding(3) var<storage, read> up: array<f32>;           // (M, I)
@group(0) @binding(4) var<storage, read_write> dgate: array<f32>;  // (M, I)
@group(0) @binding(5) var<storage, read_write> dup: array<f32>;    // (M, I)

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
        let d = dh[i];
        let s = sigmoid(g);
        dgate[i] = d * up[i] * (s * (1.0 + g * (1.0 - s)));
        dup[i] = d * (g * s);
    }
}
