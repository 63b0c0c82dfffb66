// Double quantization, step 1: offset = mean(absmax), in a fixed summation order (the reference
// `nf4::absmax_mean` mirrors it): 256 lanes sum strided slices, then a pairwise tree.
// One workgroup. Writes dq[256]; dq[0..256] already holds the dynamic map.
// Joined with nf4/common.wgsl (crates/gpu/src/shaders.rs).

struct Params {
    nblocks: u32,  // number of NF4 blocks (absmax entries)
    _p0: u32,
    _p1: u32,
    _p2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> absmax: array<f32>;   // (nblocks)
@group(0) @binding(2) var<storage, read_write> dq: array<f32>;  // (256 + 1 + ceil(nblocks/256))

var<workgroup> lanes: array<f32, 256>;

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) t: u32) {
    var s = 0.0;
    for (var i = t; i < p.nblocks; i += 256u) {
        s += absmax[i];
    }
    lanes[t] = s;
    workgroupBarrier();
    for (var w = 128u; w > 0u; w >>= 1u) {
        if (t < w) {
            lanes[t] = lanes[t] + lanes[t + w];
        }
        workgroupBarrier();
    }
    if (t == 0u) {
        dq[256] = div_rn(lanes[0], f32(p.nblocks));
    }
}
