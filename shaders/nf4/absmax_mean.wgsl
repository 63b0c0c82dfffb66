// Double quantization, step 1: offset = mean(absmax), in a fixed summation order (the reference
// `nf4::absmax_mean` mirrors it): 256 lanes sum strided slices, then a pairwise tree.
// One workgroup. Writes dq[256]; dq[0..256] already holds the dynamic map.

struct Params {
    nblocks: u32,  // number of NF4 blocks (absmax entries)
    _p0: u32,
    _p1: u32,
    _p2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> absmax: array<f32>;   // (nblocks)
@group(0) @binding(2) var<storage, read_write> dq: array<f32>;  // (256 + 1 + ceil(nblocks/256))

var<workgroup> lanes: array<f32, 256>;

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) t: u32) {
    var s = 0.0;
    for (var i = t; i < p.nblocks; i += 256u) {
        s += absmax[i];
    }
    lanes[t] = s;
    workgroupBarrier();
    for (var w = 128u; w > 0u; w >>= 1u) {
        if (t < w) {
            lanes[t] = lanes[t] + lanes[t + w];
        }
        workgroupBarrier();
    }
    if (t == 0u) {
        dq[256] = div_rn(lanes[0], f32(p.nblocks));
    }
}

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
