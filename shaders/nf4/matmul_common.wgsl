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
