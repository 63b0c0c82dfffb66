// Blockwise NF4 quantization, bitsandbytes layout: per block absmax = max|x|, s = x * (1/absmax),
// code = number of NF4 midpoints strictly below s, two codes per byte with element 2i in the high
// nibble, an odd count padded with code 7. One invocation per block, no shared memory.
// Joined with nf4/common.wgsl (crates/gpu/src/shaders.rs).

override BLOCK: u32 = 64u;  // elements per block, a power of two in 32..4096

struct Params {
    n: u32,        // elements
    nblocks: u32,  // ceil(n / BLOCK)
    nwords: u32,   // ceil(ceil(n / 2) / 4): u32 words of packed codes
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;             // (n)
@group(0) @binding(2) var<storage, read_write> codes: array<u32>;   // (nwords) packed bytes
@group(0) @binding(3) var<storage, read_write> absmax: array<f32>;  // (nblocks)

// bitsandbytes' dQuantizeNF4 thresholds: its CUDA float literals, which for 4 of the 15 differ by
// 1 ulp from the f32 midpoints of adjacent NF4 values (reference: nf4::NF4_MIDPOINTS).
fn nf4_code(s: f32) -> u32 {
    return u32(s > bitcast<f32>(0xbf591cd9u)) + u32(s > bitcast<f32>(0xbf1c5270u))
         + u32(s > bitcast<f32>(0xbeeb8480u)) + u32(s > bitcast<f32>(0xbeadea76u))
         + u32(s > bitcast<f32>(0xbe703cecu)) + u32(s > bitcast<f32>(0xbe0d38bcu))
         + u32(s > bitcast<f32>(0xbd3a7871u)) + u32(s > bitcast<f32>(0x3d22faffu))
         + u32(s > bitcast<f32>(0x3df64863u)) + u32(s > bitcast<f32>(0x3e5067e0u))
         + u32(s > bitcast<f32>(0x3e9582d4u)) + u32(s > bitcast<f32>(0x3ec753f9u))
         + u32(s > bitcast<f32>(0x3f006d03u)) + u32(s > bitcast<f32>(0x3f248dafu))
         + u32(s > bitcast<f32>(0x3f5c89d9u));
}

fn code_of(i: u32, inv: f32) -> u32 {
    if (i >= p.n) {
        return 7u;
    }
    return nf4_code(x[i] * inv);
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let b = (wid.x + wid.y * nwg.x) * 64u + lid;
    if (b >= p.nblocks) {
        return;
    }
    let start = b * BLOCK;
    let end = min(start + BLOCK, p.n);
    var am = 0.0;
    for (var i = start; i < end; i++) {
        am = max(am, abs(x[i]));
    }
    absmax[b] = am;
    // An all-zero block quantizes to code 7 (0.0) everywhere.
    var inv = 0.0;
    if (am > 0.0) {
        inv = div_rn(1.0, am);
    }
    let w0 = start / 8u;
    let w1 = min(w0 + BLOCK / 8u, p.nwords);
    for (var w = w0; w < w1; w++) {
        var word = 0u;
        for (var k = 0u; k < 4u; k++) {
            let e = w * 8u + 2u * k;
            let byte = (code_of(e, inv) << 4u) | code_of(e + 1u, inv);
            word |= byte << (8u * k);
        }
        codes[w] = word;
    }
}
