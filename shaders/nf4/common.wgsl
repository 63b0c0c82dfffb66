// NF4 helpers shared by every nf4 kernel (joined to a kernel's source by the shader registry,
// crates/gpu/src/shaders.rs). Pure functions: they use no binding, constant or override.

// Correctly rounded a / b for positive normal f32 (WGSL only promises 2.5 ULP for `/`, and
// lavapipe's reciprocal is not exact; bitsandbytes' CUDA `1.0f / absmax` is). Mantissa long
// division in u32, round to nearest even. Falls back to `/` if the result leaves the normal range.
fn div_rn(a: f32, b: f32) -> f32 {
    let ua = bitcast<u32>(a);
    let ub = bitcast<u32>(b);
    let ea = i32((ua >> 23u) & 255u);
    let eb = i32((ub >> 23u) & 255u);
    if (a == 0.0) {
        return 0.0;
    }
    if (ea == 0 || eb == 0 || ea == 255 || eb == 255 || a < 0.0 || b < 0.0) {
        return a / b;
    }
    let mb = (ub & 0x7fffffu) | 0x800000u;
    var r = (ua & 0x7fffffu) | 0x800000u;
    var q = 0u;
    for (var i = 0u; i < 26u; i++) {
        let d = r >= mb;
        if (d) {
            r -= mb;
        }
        q = (q << 1u) | u32(d);
        r <<= 1u;
    }
    // q = floor(ma / mb * 2^25), in [2^24, 2^26).
    var e = ea - eb + 127;
    var mant: u32;
    var guard: u32;
    var sticky = u32(r != 0u);
    if (q >= 0x2000000u) {
        mant = q >> 2u;
        guard = (q >> 1u) & 1u;
        sticky |= q & 1u;
    } else {
        mant = q >> 1u;
        guard = q & 1u;
        e -= 1;
    }
    if (guard == 1u && (sticky == 1u || (mant & 1u) == 1u)) {
        mant += 1u;
        if (mant == 0x1000000u) {
            mant >>= 1u;
            e += 1;
        }
    }
    if (e <= 0 || e >= 255) {
        return a / b;
    }
    return bitcast<f32>((u32(e) << 23u) | (mant & 0x7fffffu));
}

fn nf4_value(c: u32) -> f32 {
    var t = array<u32, 16>(
        0xbf800000u, 0xbf3239b1u, 0xbf066b30u, 0xbeca32a0u, 0xbe91a24du, 0xbe3d353fu, 0xbdba7871u, 0x00000000u,
        0x3da2faffu, 0x3e24cae3u, 0x3e7c04ddu, 0x3ead033au, 0x3ee1a4b8u, 0x3f1007abu, 0x3f3913b3u, 0x3f800000u);
    return bitcast<f32>(t[c]);
}
