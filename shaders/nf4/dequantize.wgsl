// NF4 dequantization (tests and export only; the matmuls never materialise W):
// w[i] = NF4[code(i)] * absmax(i / BLOCK), with absmax = map[q] * nested[b/256] + offset under
// double quantization, else the stored f32.

override BLOCK: u32 = 64u;
override DOUBLE_QUANT: bool = true;

struct Params {
    n: u32,  // elements
    _p0: u32,
    _p1: u32,
    _p2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> codes: array<u32>;       // (ceil(n/8)) packed nibbles
@group(0) @binding(2) var<storage, read> absmax: array<u32>;      // (ceil(nblocks/4)) u8 codes, or (nblocks) f32 bits
@group(0) @binding(3) var<storage, read> dq: array<f32>;          // (256 + 1 + nnested) [map, offset, nested], or (1) [0]
@group(0) @binding(4) var<storage, read_write> out: array<f32>;   // (n)

fn nf4_value(c: u32) -> f32 {
    var t = array<u32, 16>(
        0xbf800000u, 0xbf3239b1u, 0xbf066b30u, 0xbeca32a0u, 0xbe91a24du, 0xbe3d353fu, 0xbdba7871u, 0x00000000u,
        0x3da2faffu, 0x3e24cae3u, 0x3e7c04ddu, 0x3ead033au, 0x3ee1a4b8u, 0x3f1007abu, 0x3f3913b3u, 0x3f800000u);
    return bitcast<f32>(t[c]);
}

fn block_absmax(b: u32) -> f32 {
    if (DOUBLE_QUANT) {
        let q = (absmax[b / 4u] >> (8u * (b % 4u))) & 255u;
        return dq[q] * dq[257u + b / 256u] + dq[256];
    }
    return bitcast<f32>(absmax[b]);
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * nwg.x) * 64u + lid;
    if (i >= p.n) {
        return;
    }
    let byte = (codes[i / 8u] >> (8u * ((i / 2u) % 4u))) & 255u;
    let c = select(byte & 15u, byte >> 4u, i % 2u == 0u);
    out[i] = nf4_value(c) * block_absmax(i / BLOCK);
}
