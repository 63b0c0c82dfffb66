// RoPE forward, transformers' "rotate_half" convention (Llama, SmolLM2, Qwen2), in place on
// x[M, H*D] (the q_proj / k_proj output; H heads of D values per row). For row m, head h and
// i < D/2, with a = f32(pos[m]) * inv_freq[i] rounded to f32, c = cos(a), s = sin(a):
//   x'[i]       = x[i]       * c - x[i + D/2] * s
//   x'[i + D/2] = x[i + D/2] * c + x[i]       * s
// One invocation per (row, i): it computes (s, c) once and rotates that pair in every head.
// Invocations are numbered over a 1-D grid split across x and y (wid.x + wid.y * nwg.x).
// Joined with nn/rope_common.wgsl (crates/gpu/src/shaders.rs).

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;   // (M, H*D) rotated in place
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
        let x1 = x[j];
        let x2 = x[j + p.half];
        x[j] = x1 * sc.y - x2 * sc.x;
        x[j + p.half] = x2 * sc.y + x1 * sc.x;
    }
}
