// Double quantization, step 2: absmax - offset is 8-bit quantized in blocks of 256 against
// bitsandbytes' signed dynamic map with the search of its CUDA kernel (dQuantize<0>).
// One invocation per nested block; codes packed 4 per u32 word, little-endian bytes.

struct Params {
    nblocks: u32,   // NF4 blocks = absmax entries
    nnested: u32,   // ceil(nblocks / 256)
    _p0: u32,
    _p1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> absmax: array<f32>;        // (nblocks)
@group(0) @binding(2) var<storage, read_write> qabsmax: array<u32>; // (ceil(nblocks/4)) bytes
@group(0) @binding(3) var<storage, read_write> dq: array<f32>;      // (256 + 1 + nnested): [map, offset, nested]

fn dyn8_code(x: f32) -> u32 {
    var pivot = 127u;
    var upper_pivot = 255u;
    var lower_pivot = 0u;
    var lower = -1.0;
    var upper = 1.0;
    var val = dq[pivot];
    for (var i = 64u; i > 0u; i >>= 1u) {
        if (x > val) {
            lower_pivot = pivot;
            lower = val;
            pivot += i;
        } else {
            upper_pivot = pivot;
            upper = val;
            pivot -= i;
        }
        val = dq[pivot];
    }
    if (upper_pivot == 255u) {
        upper = dq[upper_pivot];
    }
    if (lower_pivot == 0u) {
        lower = dq[lower_pivot];
    }
    if (x > val) {
        let mid = (upper + val) * 0.5;
        return select(pivot, upper_pivot, x > mid);
    }
    let mid = (lower + val) * 0.5;
    return select(pivot, lower_pivot, x < mid);
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let b = (wid.x + wid.y * nwg.x) * 64u + lid;
    if (b >= p.nnested) {
        return;
    }
    let offset = dq[256];
    let start = b * 256u;
    let end = min(start + 256u, p.nblocks);
    var am = 0.0;
    for (var i = start; i < end; i++) {
        am = max(am, abs(absmax[i] - offset));
    }
    dq[257u + b] = am;
    // All entries equal to the offset: CUDA's 0 * (1/0) = NaN searches down to code 0.
    var inv = 0.0;
    if (am > 0.0) {
        inv = div_rn(1.0, am);
    }
    for (var w = start / 4u; w < (end + 3u) / 4u; w++) {
        var word = 0u;
        for (var k = 0u; k < 4u; k++) {
            let i = w * 4u + k;
            var c = 0u;
            if (i < end && am > 0.0) {
                c = dyn8_code((absmax[i] - offset) * inv);
            }
            word |= c << (8u * k);
        }
        qabsmax[w] = word;
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
