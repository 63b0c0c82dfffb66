// RoPE angle and sin/cos shared by nn/rope_fwd and nn/rope_bwd (joined by the shader registry), so
// that both rotate by the same angles bit for bit. Also their `Params`.

struct Params {
    m: u32,      // rows (tokens)
    h: u32,      // heads per row
    d: u32,      // head size (even)
    half: u32,   // d / 2
    n: u32,      // m * half: invocations that do work
    _p0: u32,
    _p1: u32,
    _p2: u32,
}

// fl(f32(q) * f): the product rounded to nearest even, in integer arithmetic so that no driver can
// fuse it into the following subtraction (transformers rounds the angle to f32 before cos/sin, and
// Vulkan lets a compiler contract a*b - c into an fma). For q < 2^24 and normal f; otherwise the
// plain product.
fn angle(q: u32, f: f32) -> f32 {
    let fb = bitcast<u32>(f);
    let ef = (fb >> 23u) & 0xffu;
    if (q == 0u || ef == 0u || ef == 255u || q >= 0x1000000u) {
        return f32(q) * f;
    }
    let mf = (fb & 0x7fffffu) | 0x800000u;
    // 48-bit product q * mf as hi:lo from 16-bit halves.
    let ql = q & 0xffffu;
    let qh = q >> 16u;
    let ml = mf & 0xffffu;
    let mh = mf >> 16u;
    let ll = ql * ml;
    let mid = qh * ml + ql * mh;   // < 2^25
    let lo = ll + (mid << 16u);
    let hi = qh * mh + (mid >> 16u) + select(0u, 1u, lo < ll);
    var bits = 32u - countLeadingZeros(lo);
    if (hi != 0u) {
        bits = 64u - countLeadingZeros(hi);
    }
    var shift = bits - 24u;        // 0..24: drop this many low bits
    var mant = lo;
    if (shift > 0u) {
        mant = (lo >> shift) | (hi << (32u - shift));
        let rem = lo & ((1u << shift) - 1u);
        let halfway = 1u << (shift - 1u);
        if (rem > halfway || (rem == halfway && (mant & 1u) == 1u)) {
            mant += 1u;
            if (mant == 0x1000000u) {
                mant >>= 1u;
                shift += 1u;
            }
        }
    }
    return bitcast<f32>((fb & 0x80000000u) | ((shift + ef) << 23u) | (mant & 0x7fffffu));
}

// (sin a, cos a) to about 1.5 ulp for |a| < 2^17 * pi/2 (~205000), independent of the driver's
// sin/cos (whose precision Vulkan only bounds on [-pi, pi]). Cody-Waite reduction by pi/2 with
// three 7-bit pieces (q * piece is exact for |q| < 2^17) and an f32 tail, then Cephes' sinf/cosf
// polynomials on [-pi/4, pi/4].
fn sincos(a: f32) -> vec2<f32> {
    let q = round(a * bitcast<f32>(0x3f22f983u));    // a * 2/pi
    var r = a - q * 1.5625;
    r = r - q * 0.0081787109375;
    r = r - q * 0.00011730194091796875;
    r = r - q * bitcast<f32>(0x34a8885au);          // 3.1391647e-7
    let z = r * r;
    let s = ((-1.9515295891e-4 * z + 8.3321608736e-3) * z - 1.6666654611e-1) * z * r + r;
    let c = ((2.443315711809948e-5 * z - 1.388731625493765e-3) * z + 4.166664568298827e-2) * z * z
            - 0.5 * z + 1.0;
    // Quadrant q mod 4 (two's complement, so negative angles work too).
    let k = i32(q) & 3;
    var v = vec2<f32>(s, c);
    if (k == 1) {
        v = vec2<f32>(c, -s);
    } else if (k == 2) {
        v = vec2<f32>(-s, -c);
    } else if (k == 3) {
        v = vec2<f32>(-c, s);
    }
    return v;
}
