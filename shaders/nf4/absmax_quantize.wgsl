// Double quantization, step 2: absmax - offset is 8-bit quantized in blocks of 256 against
// bitsandbytes' signed dynamic map with the search of its CUDA kernel (dQuantize<0>).
// One invocation per nested block; codes packed 4 per u32 word, little-endian bytes.
// Joined with nf4/common.wgsl (crates/gpu/src/shaders.rs).

struct Params {
    nblocks: u32,   // NF4 blocks = absmax entries
    nnested: u32,   // ceil(nblocks / 256)
    _p0: u32,
    _p1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> absmax: array<f32>;        // (nblocks)
@group(0) @binding(2) var<storage, read_write> qabsmax: array<u32>; // (ceil(nblocks/4)) bytes
@group(0) @binding(3) var<storage, read_write> dq: array<f32>;      // (256 + 1 + nnested): [map, offset, nested]

fn dyn8_code(x: f32) -> u32 {
    var pivot = 127u;
    var upper_pivot = 255u;
    var lower_pivot = 0u;
    var lower = -1.0;
    var upper = 1.0;
    var val = dq[pivot];
    for (var i = 64u; i > 0u; i >>= 1u) {
        if (x > val) {
            lower_pivot = pivot;
            lower = val;
            pivot += i;
        } else {
            upper_pivot = pivot;
            upper = val;
            pivot -= i;
        }
        val = dq[pivot];
    }
    if (upper_pivot == 255u) {
        upper = dq[upper_pivot];
    }
    if (lower_pivot == 0u) {
        lower = dq[lower_pivot];
    }
    if (x > val) {
        let mid = (upper + val) * 0.5;
        return select(pivot, upper_pivot, x > mid);
    }
    let mid = (lower + val) * 0.5;
    return select(pivot, lower_pivot, x < mid);
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let b = (wid.x + wid.y * nwg.x) * 64u + lid;
    if (b >= p.nnested) {
        return;
    }
    let offset = dq[256];
    let start = b * 256u;
    let end = min(start + 256u, p.nblocks);
    var am = 0.0;
    for (var i = start; i < end; i++) {
        am = max(am, abs(absmax[i] - offset));
    }
    dq[257u + b] = am;
    // All entries equal to the offset: CUDA's 0 * (1/0) = NaN searches down to code 0.
    var inv = 0.0;
    if (am > 0.0) {
        inv = div_rn(1.0, am);
    }
    for (var w = start / 4u; w < (end + 3u) / 4u; w++) {
        var word = 0u;
        for (var k = 0u; k < 4u; k++) {
            let i = w * 4u + k;
            var c = 0u;
            if (i < end && am > 0.0) {
                c = dyn8_code((absmax[i] - offset) * inv);
            }
            word |= c << (8u * k);
        }
        qabsmax[w] = word;
    }
}
