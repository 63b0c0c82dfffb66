// Reading a frozen vocabulary table (token embedding, LM head) bound as array<u32>, whatever it
// stores: f32 (one element per word, the word's bits) or a 16-bit float (two elements per word,
// element 2j in the low half, 2j + 1 in the high half, as a little-endian [V*C] u16 array packs;
// a table of an odd number of elements has a zero high half in its last word). Unpacked with bit
// operations, exactly, so no shader-f16 is needed (SwiftShader has none):
// - bf16: the bits are the top half of an f32;
// - f16: sign, exponent rebiased 15 -> 127, mantissa widened; subnormals as m * 2^-24 (a normal
//   f32, so a device that flushes f32 subnormals still gets it right); infinities and NaN kept.

override TABLE_DTYPE: u32 = 0u;  // 0: f32, 1: f16, 2: bf16

// The word holding element i.
fn table_word(i: u32) -> u32 {
    if (TABLE_DTYPE == 0u) {
        return i;
    }
    return i >> 1u;
}

// IEEE half bits (low 16 bits of h) to f32, exactly.
fn f16_bits_to_f32(h: u32) -> f32 {
    let sign = (h & 0x8000u) << 16u;
    let e = (h >> 10u) & 0x1fu;
    let m = h & 0x3ffu;
    let ebits = select((e + 112u) << 23u, 0x7f800000u, e == 31u);
    let normal = bitcast<f32>(sign | ebits | (m << 13u));
    // 0x33800000 is 2^-24; m * 2^-24 is exact.
    let sub = bitcast<f32>(sign | 0x33800000u) * f32(m);
    return select(normal, sub, e == 0u);
}

// Element i's value from its word (`word` = table[table_word(i)]).
fn table_value(word: u32, i: u32) -> f32 {
    if (TABLE_DTYPE == 0u) {
        return bitcast<f32>(word);
    }
    let h = (word >> ((i & 1u) << 4u)) & 0xffffu;
    if (TABLE_DTYPE == 2u) {
        return bitcast<f32>(h << 16u);
    }
    return f16_bits_to_f32(h);
}
