// NF4 dequantization (tests and export only; the matmuls never materialise W):
// w[i] = NF4[code(i)] * absmax(i / BLOCK), with absmax = map[q] * nested[b/256] + offset under
// double quantization, else the stored f32.
// Joined with nf4/common.wgsl, nf4/blocks_common.wgsl (crates/gpu/src/shaders.rs).

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
