// FMA-loop probe of a device's arithmetic peak (examples/bench_kernels.rs divides each kernel's
// GFLOP/s by this kernel's). Invocation i runs `iters` rounds of 8 independent vec4 chains
// x = x * MUL + ADD (64 flops per round, no memory traffic in the loop: the chains start from
// i and are summed into y[i] at the end, so no compiler can drop the work). The chains converge
// to ADD / (1 - MUL) and stay finite for any iters.

const MUL: f32 = 0.9990234375;  // 1 - 2^-10
const ADD: f32 = 0.0009765625;  // 2^-10

struct Params {
    n: u32,      // invocations (outputs)
    iters: u32,  // rounds per invocation
    _p0: u32,
    _p1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;  // (N)

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * nwg.x) * 256u + lid;
    if (i >= p.n) {
        return;
    }
    let s = f32(i % 1024u) * 0.0009765625;
    var x0 = vec4<f32>(s, s + 0.125, s + 0.25, s + 0.375);
    var x1 = x0 + vec4<f32>(0.5);
    var x2 = x0 + vec4<f32>(1.0);
    var x3 = x0 + vec4<f32>(1.5);
    var x4 = x0 + vec4<f32>(2.0);
    var x5 = x0 + vec4<f32>(2.5);
    var x6 = x0 + vec4<f32>(3.0);
    var x7 = x0 + vec4<f32>(3.5);
    for (var r = 0u; r < p.iters; r++) {
        x0 = x0 * MUL + ADD;
        x1 = x1 * MUL + ADD;
        x2 = x2 * MUL + ADD;
        x3 = x3 * MUL + ADD;
        x4 = x4 * MUL + ADD;
        x5 = x5 * MUL + ADD;
        x6 = x6 * MUL + ADD;
        x7 = x7 * MUL + ADD;
    }
    let t = ((x0 + x1) + (x2 + x3)) + ((x4 + x5) + (x6 + x7));
    y[i] = (t.x + t.y) + (t.z + t.w);
}
