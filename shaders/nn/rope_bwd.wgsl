// RoPE backward (see rope_fwd.wgsl), in place on the gradient dx[M, H*D]: the transpose rotation
// (angle -> -angle) of the incoming gradient, in torch autograd's order:
//   dx'[i]       = dx[i]       * c + dx[i + D/2] * s
//   dx'[i + D/2] = dx[i + D/2] * c - dx[i]       * s
// Binding 1 (`x`) holds the gradient. Same angle and sin/cos as the forward, bit for bit.
// Joined with nn/rope_common.wgsl (crates/gpu/src/shaders.rs).

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;   // (M, H*D) gradient, rotated in place
@group(0) @binding(2) var<storage, read> pos: array<u32>;       // (M) position of each row
@group(0) @binding(3) var<storage, read> inv_freq: array<f32>;  // (D/2)

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let t = (wid.x + wid.y * nwg.x) * 64u + lid;
    if (t >= p.n) {
        return;
    }
    let row = t / p.half;
    let i = t - row * p.half;
    let sc = sincos(angle(pos[row], inv_freq[i]));
    let stride = p.h * p.d;
    for (var hd = 0u; hd < p.h; hd++) {
        let j = row * stride + hd * p.d + i;
        let g1 = x[j];
        let g2 = x[j + p.half];
        x[j] = g1 * sc.y + g2 * sc.x;
        x[j + p.half] = g2 * sc.y - g1 * sc.x;
    }
}
