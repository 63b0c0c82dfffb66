// Code word nibble helpers of the nf4 matmuls (joined by the shader registry). `nib` uses the
// kernel's `override SHIFTED`.

// Nibble order made linear: element j of the word at bits 4j.
fn linear(w: u32) -> u32 {
    return ((w >> 4u) & 0x0f0f0f0fu) | ((w & 0x0f0f0f0fu) << 4u);
}

// Bit offset of element j (0..8) of a code word: linear after `linear`, else the byte's nibble swapped.
fn nib(j: u32) -> u32 {
    return select((4u * j) ^ 4u, 4u * j, SHIFTED);
}

// ---- Helpers of the GPU variant's entry points (`tiled`) ----
// The NF4 code book in workgroup memory: invocations 0..15 fill it before the first stage.
var<workgroup> nf4_lut: array<f32, 16>;

// Elements e0..e0+3 of W dequantized, for e0 % 4 == 0: one code word (bytes 2h and 2h+1 of it,
// h = (e0 % 8) / 4; element 2i in the high nibble of byte i) and one scale (blocks are multiples
// of 4 elements, so the four share it). Each value is code value * scale, as nf4/dequantize.
fn w4_aligned(e0: u32) -> vec4<f32> {
    let h = codes[e0 / 8u] >> (16u * ((e0 % 8u) / 4u));
    let v = vec4<f32>(nf4_lut[(h >> 4u) & 15u], nf4_lut[h & 15u], nf4_lut[(h >> 12u) & 15u],
                      nf4_lut[(h >> 8u) & 15u]);
    return v * block_absmax(e0 / BLOCK);
}

// Element e of W dequantized (any e).
fn w1(e: u32) -> f32 {
    let c = (codes[e / 8u] >> (8u * ((e % 8u) / 2u) + select(0u, 4u, e % 2u == 0u))) & 15u;
    return nf4_lut[c] * block_absmax(e / BLOCK);
}
