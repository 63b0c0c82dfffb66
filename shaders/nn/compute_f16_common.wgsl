// The f16 form of nn/compute_common.wgsl (crates/gpu/src/shaders.rs, f16_source, swaps it in and
// puts `enable f16;` in front of the kernel): `ct` is f16, so the GPU variant's workgroup stages
// hold f16 (half the memory), and rc / rc4 round their operands to the nearest f16 value (ties to
// even; past ±65504 to ±infinity; subnormal steps of 2^-24 below 2^-14) and return it as f32.
// The rounding is written with integer and round() operations: a float conversion f32(f16(v)) —
// or unpack2x16float(pack2x16float(v)) — can be folded away by a driver's optimizer as a no-op
// (Mesa's NIR does), which would silently compute in f32.

alias ct = f16;

// One operand rounded to f16, as f32.
fn rc(v: f32) -> f32 {
    let a = abs(v);
    let b = bitcast<u32>(v);
    // 11 significant bits, ties to even (f16's normal range).
    let normal = bitcast<f32>((b + 0x0fffu + ((b >> 13u) & 1u)) & 0xffffe000u);
    // Below f16's smallest normal (2^-14): multiples of 2^-24.
    let sub = round(v * 16777216.0) / 16777216.0;
    let inf = bitcast<f32>((b & 0x80000000u) | 0x7f800000u);
    return select(select(normal, sub, a < 6.103515625e-5), inf, a >= 65520.0);
}

// Four operands rounded to f16, as f32.
fn rc4(v: vec4<f32>) -> vec4<f32> {
    return vec4<f32>(rc(v.x), rc(v.y), rc(v.z), rc(v.w));
}
