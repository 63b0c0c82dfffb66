// Causal grouped-query attention forward, flash-attention style: o = softmax(q·kᵀ·scale + mask)·v
// per head, computed online (running max m and sum l per query row, no T×T buffer), plus
// lse = m + log(l) per row for the backward.
//
// Layouts (row-major f32, read as vec4): q/o (B*Tq, H*D), k/v (B*Tk, KVH*D), head h = columns
// h*D..h*D+D, lse (B, H, Tq). D % 4 == 0 here (the launcher zero-pads other head sizes with the
// `repack` entry point). Query head h reads KV head h / (H/KVH). Query row i of a sequence sits at
// absolute position Tk - Tq + i and attends keys j <= Tk - Tq + i.
//
// Entry point `main`: an invocation owns ROWS (1, 2 or 4) consecutive query rows of one
// (batch, head); their q (pre-multiplied by scale) and output accumulators live in private
// arrays. It walks the keys its last row sees in chunks of 8: the 8 scores of every row (k rows
// read as vec4, each load shared by the ROWS rows), one online-softmax rescale per row by
// exp(m_old - m_new), then the probability-weighted 8 v rows. Keys a row may not see get
// probability 0. No shared memory, no barriers: on lavapipe a storage load in a loop is a per-lane
// gather that costs far more than the arithmetic, so loads are vec4 and shared across rows, and
// the private arrays are touched once per 8 keys (their loop-indexed accesses are not free either).
// Rows past Tq redo the last row and are not stored. Invocations are numbered head fastest
// (neighbouring lanes walk the same number of keys) and query block heaviest (last) first, so the
// long causal rows start early; 1-D grid (wid.x + wid.y * nwg.x). The head size is a uniform, not
// an override: measured as fast on lavapipe, and one pipeline per ROWS instead of one per (D, ROWS)
// (each costs seconds of LLVM time there).
//
// Entry point `repack`: dst[r, c] = src[r, c] for c < min(DS, DD), 0 for DS <= c < DD, over rows
// r of head vectors (zero-pads or un-pads the head dimension; with ACC, dst += instead); one
// invocation per dst element. Also used by the backward's launcher.
// Joined with nn/attention_common.wgsl (crates/gpu/src/shaders.rs).

override ROWS: u32 = 4u;   // query rows per invocation: 1, 2 or 4
override WG: u32 = 64u;    // invocations per workgroup
override ACC: bool = false; // repack: dst += instead of dst =

const DMAX4: u32 = 32u;    // vec4s per row: D <= 4 * DMAX4
const NEG: f32 = -3.0e38;  // "minus infinity" that stays finite (key 0 is always visible)

struct Params {
    b: u32,        // batch
    tq: u32,       // query rows per sequence
    tk: u32,       // key rows per sequence (>= tq)
    h: u32,        // query heads
    kvh: u32,      // key/value heads (divides h)
    scale: f32,    // score scale, usually 1/sqrt(D)
    nblk: u32,     // ceil(tq / ROWS): query blocks per (batch, head)
    nitems: u32,   // nblk * b * h: invocations with work
    d4: u32,       // head dimension / 4 (D % 4 == 0, D <= 4 * DMAX4)
    _p0: u32,
    _p1: u32,
    _p2: u32,
}

struct RepackParams {
    n: u32,        // dst elements: rows * heads * dd
    ds: u32,       // src head size
    dd: u32,       // dst head size
    _p0: u32,
}

// main
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<vec4<f32>>;         // (B*Tq, H*D)
@group(0) @binding(2) var<storage, read> k: array<vec4<f32>>;         // (B*Tk, KVH*D)
@group(0) @binding(3) var<storage, read> v: array<vec4<f32>>;         // (B*Tk, KVH*D)
@group(0) @binding(4) var<storage, read_write> o: array<vec4<f32>>;   // (B*Tq, H*D)
@group(0) @binding(5) var<storage, read_write> lse: array<f32>;       // (B, H, Tq)
// repack
@group(0) @binding(0) var<uniform> rp: RepackParams;
@group(0) @binding(1) var<storage, read> src: array<f32>;             // (rows * heads, DS)
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;       // (rows * heads, DD)

fn hmax(x: vec4<f32>) -> f32 {
    return max(max(x.x, x.y), max(x.z, x.w));
}

fn hsum(x: vec4<f32>) -> f32 {
    return (x.x + x.y) + (x.z + x.w);
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let t = (wid.x + wid.y * nwg.x) * WG + lid;
    if (t >= p.nitems) {
        return;
    }
    let d4 = p.d4;
    let bh = p.b * p.h;
    let i0 = (p.nblk - 1u - t / bh) * ROWS;  // heaviest query block first
    let bi = (t % bh) / p.h;
    let hh = t % p.h;
    let kh = hh / (p.h / p.kvh);
    let shift = p.tk - p.tq;
    let jend = shift + min(i0 + ROWS, p.tq); // keys the block's last row sees (<= tk)
    // Row r sees keys j <= lim[r] (rows past Tq clamp to the last row).
    let lim = vec4<u32>(shift) + min(vec4<u32>(i0) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(p.tq - 1u));

    var q0: array<vec4<f32>, DMAX4>;
    var q1: array<vec4<f32>, DMAX4>;
    var q2: array<vec4<f32>, DMAX4>;
    var q3: array<vec4<f32>, DMAX4>;
    var a0: array<vec4<f32>, DMAX4>;
    var a1: array<vec4<f32>, DMAX4>;
    var a2: array<vec4<f32>, DMAX4>;
    var a3: array<vec4<f32>, DMAX4>;
    let qs = p.h * d4;                       // vec4s per q/o row
    let qb = bi * p.tq * qs + hh * d4;
    let qr = (lim - vec4<u32>(shift)) * qs + vec4<u32>(qb);
    for (var e = 0u; e < d4; e++) {
        q0[e] = q[qr.x + e] * p.scale;
        a0[e] = vec4<f32>(0.0);
        if (ROWS > 1u) {
            q1[e] = q[qr.y + e] * p.scale;
            a1[e] = vec4<f32>(0.0);
        }
        if (ROWS > 2u) {
            q2[e] = q[qr.z + e] * p.scale;
            q3[e] = q[qr.w + e] * p.scale;
            a2[e] = vec4<f32>(0.0);
            a3[e] = vec4<f32>(0.0);
        }
    }
    let ks = p.kvh * d4;                     // vec4s per k/v row
    let kb = bi * p.tk * ks + kh * d4;
    let last = jend - 1u;
    var m = vec4<f32>(NEG);                  // running max per row (x, y, z, w = rows 0..3)
    var l = vec4<f32>(0.0);                  // running sum per row
    for (var j0 = 0u; j0 < jend; j0 += 8u) {
        // The chunk's 8 key rows (clamped to the last key the block needs).
        let o0 = kb + min(j0, last) * ks;
        let o1 = kb + min(j0 + 1u, last) * ks;
        let o2 = kb + min(j0 + 2u, last) * ks;
        let o3 = kb + min(j0 + 3u, last) * ks;
        let o4 = kb + min(j0 + 4u, last) * ks;
        let o5 = kb + min(j0 + 5u, last) * ks;
        let o6 = kb + min(j0 + 6u, last) * ks;
        let o7 = kb + min(j0 + 7u, last) * ks;
        // Scores: row r, keys j0..j0+3 in sa_r and j0+4..j0+7 in sb_r.
        var sa0 = vec4<f32>(0.0);
        var sb0 = vec4<f32>(0.0);
        var sa1 = vec4<f32>(0.0);
        var sb1 = vec4<f32>(0.0);
        var sa2 = vec4<f32>(0.0);
        var sb2 = vec4<f32>(0.0);
        var sa3 = vec4<f32>(0.0);
        var sb3 = vec4<f32>(0.0);
        for (var e = 0u; e < d4; e++) {
            let k0 = k[o0 + e];
            let k1 = k[o1 + e];
            let k2 = k[o2 + e];
            let k3 = k[o3 + e];
            let k4 = k[o4 + e];
            let k5 = k[o5 + e];
            let k6 = k[o6 + e];
            let k7 = k[o7 + e];
            let x0 = q0[e];
            sa0 += dot4(x0, k0, k1, k2, k3);
            sb0 += dot4(x0, k4, k5, k6, k7);
            if (ROWS > 1u) {
                let x1 = q1[e];
                sa1 += dot4(x1, k0, k1, k2, k3);
                sb1 += dot4(x1, k4, k5, k6, k7);
            }
            if (ROWS > 2u) {
                let x2 = q2[e];
                sa2 += dot4(x2, k0, k1, k2, k3);
                sb2 += dot4(x2, k4, k5, k6, k7);
                let x3 = q3[e];
                sa3 += dot4(x3, k0, k1, k2, k3);
                sb3 += dot4(x3, k4, k5, k6, k7);
            }
        }
        // Online softmax per row: mask, new max, rescale factor, probabilities.
        let ja = vec4<u32>(j0) + vec4<u32>(0u, 1u, 2u, 3u);
        let jb = ja + vec4<u32>(4u);
        var pa0 = vec4<f32>(0.0);
        var pb0 = vec4<f32>(0.0);
        var pa1 = vec4<f32>(0.0);
        var pb1 = vec4<f32>(0.0);
        var pa2 = vec4<f32>(0.0);
        var pb2 = vec4<f32>(0.0);
        var pa3 = vec4<f32>(0.0);
        var pb3 = vec4<f32>(0.0);
        var alpha = vec4<f32>(1.0);
        {
            let va = ja <= vec4<u32>(lim.x);
            let vb = jb <= vec4<u32>(lim.x);
            let mx = max(m.x, max(hmax(select(vec4<f32>(NEG), sa0, va)), hmax(select(vec4<f32>(NEG), sb0, vb))));
            alpha.x = select(exp(m.x - mx), 0.0, m.x == NEG);
            m.x = mx;
            pa0 = select(vec4<f32>(0.0), exp(sa0 - vec4<f32>(mx)), va);
            pb0 = select(vec4<f32>(0.0), exp(sb0 - vec4<f32>(mx)), vb);
        }
        if (ROWS > 1u) {
            let va = ja <= vec4<u32>(lim.y);
            let vb = jb <= vec4<u32>(lim.y);
            let mx = max(m.y, max(hmax(select(vec4<f32>(NEG), sa1, va)), hmax(select(vec4<f32>(NEG), sb1, vb))));
            alpha.y = select(exp(m.y - mx), 0.0, m.y == NEG);
            m.y = mx;
            pa1 = select(vec4<f32>(0.0), exp(sa1 - vec4<f32>(mx)), va);
            pb1 = select(vec4<f32>(0.0), exp(sb1 - vec4<f32>(mx)), vb);
        }
        if (ROWS > 2u) {
            let va = ja <= vec4<u32>(lim.z);
            let vb = jb <= vec4<u32>(lim.z);
            let mx = max(m.z, max(hmax(select(vec4<f32>(NEG), sa2, va)), hmax(select(vec4<f32>(NEG), sb2, vb))));
            alpha.z = select(exp(m.z - mx), 0.0, m.z == NEG);
            m.z = mx;
            pa2 = select(vec4<f32>(0.0), exp(sa2 - vec4<f32>(mx)), va);
            pb2 = select(vec4<f32>(0.0), exp(sb2 - vec4<f32>(mx)), vb);
            let wa = ja <= vec4<u32>(lim.w);
            let wb = jb <= vec4<u32>(lim.w);
            let mw = max(m.w, max(hmax(select(vec4<f32>(NEG), sa3, wa)), hmax(select(vec4<f32>(NEG), sb3, wb))));
            alpha.w = select(exp(m.w - mw), 0.0, m.w == NEG);
            m.w = mw;
            pa3 = select(vec4<f32>(0.0), exp(sa3 - vec4<f32>(mw)), wa);
            pb3 = select(vec4<f32>(0.0), exp(sb3 - vec4<f32>(mw)), wb);
        }
        l = l * alpha + vec4<f32>(hsum(pa0 + pb0), hsum(pa1 + pb1), hsum(pa2 + pb2), hsum(pa3 + pb3));
        // Values: acc_r = acc_r * alpha_r + Σ_c p_rc v_c.
        for (var e = 0u; e < d4; e++) {
            let v0 = v[o0 + e];
            let v1 = v[o1 + e];
            let v2 = v[o2 + e];
            let v3 = v[o3 + e];
            let v4 = v[o4 + e];
            let v5 = v[o5 + e];
            let v6 = v[o6 + e];
            let v7 = v[o7 + e];
            a0[e] = a0[e] * alpha.x + wsum(pa0, pb0, v0, v1, v2, v3, v4, v5, v6, v7);
            if (ROWS > 1u) {
                a1[e] = a1[e] * alpha.y + wsum(pa1, pb1, v0, v1, v2, v3, v4, v5, v6, v7);
            }
            if (ROWS > 2u) {
                a2[e] = a2[e] * alpha.z + wsum(pa2, pb2, v0, v1, v2, v3, v4, v5, v6, v7);
                a3[e] = a3[e] * alpha.w + wsum(pa3, pb3, v0, v1, v2, v3, v4, v5, v6, v7);
            }
        }
    }

    let inv = vec4<f32>(1.0) / l;
    let ls = m + log(l);
    let ok = vec4<u32>(i0) + vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(p.tq);
    for (var e = 0u; e < d4; e++) {
        if (ok.x) { o[qr.x + e] = a0[e] * inv.x; }
        if (ROWS > 1u && ok.y) { o[qr.y + e] = a1[e] * inv.y; }
        if (ROWS > 2u && ok.z) { o[qr.z + e] = a2[e] * inv.z; }
        if (ROWS > 2u && ok.w) { o[qr.w + e] = a3[e] * inv.w; }
    }
    let lo = (bi * p.h + hh) * p.tq + i0;
    if (ok.x) { lse[lo] = ls.x; }
    if (ROWS > 1u && ok.y) { lse[lo + 1u] = ls.y; }
    if (ROWS > 2u && ok.z) { lse[lo + 2u] = ls.z; }
    if (ROWS > 2u && ok.w) { lse[lo + 3u] = ls.w; }
}

@compute @workgroup_size(64)
fn repack(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let t = (wid.x + wid.y * nwg.x) * 64u + lid;
    if (t >= rp.n) {
        return;
    }
    let row = t / rp.dd;
    let c = t % rp.dd;
    var x = 0.0;
    if (c < rp.ds) {
        x = src[row * rp.ds + c];
    }
    if (ACC) {
        x += dst[t];
    }
    dst[t] = x;
}

// ---- Entry point `tiled`: the GPU variant (crates/gpu/src/kernels.rs) ----
// A workgroup of 64 invocations owns 64 consecutive query rows of one (batch, head), one row per
// invocation (its pre-scaled q and output accumulator in private arrays of HD4 vec4s: HD4 is an
// override, so the loops over the head have constant trips and the arrays can live in registers).
// The keys the block's last row sees are walked in stages of 16: the workgroup loads the stage's
// 16 k rows and 16 v rows into workgroup memory (neighbouring invocations read neighbouring
// vec4s), and every invocation reads them from there: each k/v element is loaded from storage
// once per 64 query rows instead of once per row. Per stage and row: 16 scores, one online-
// softmax rescale, then the probability-weighted v rows. Keys a row may not see (and stage rows
// past Tk, loaded clamped) get probability 0. Rows past Tq compute the last row and are not
// stored. Workgroups are numbered head fastest and heaviest query block first (1-D grid:
// wid.x + wid.y * nwg.x); the launcher sets nblk = ceil(tq / 64) and nitems = nblk * b * h
// (workgroups). Workgroup memory: 2 × 16 × 128 floats = 16 KiB (WebGPU's minimum limit).

override HD4: u32 = 16u;   // tiled: vec4s per head row (D / 4, at most DMAX4)
const GBQ: u32 = 64u;      // tiled: query rows per workgroup (one per invocation)
const GBK: u32 = 16u;      // tiled: keys per stage

var<workgroup> sk: array<vec4<f32>, 512>;  // (GBK, HD4) stage of k rows
var<workgroup> sv: array<vec4<f32>, 512>;  // (GBK, HD4) stage of v rows

@compute @workgroup_size(64)
fn tiled(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let t = wid.x + wid.y * nwg.x;
    if (t >= p.nitems) {
        return;
    }
    let bh = p.b * p.h;
    let i0 = (p.nblk - 1u - t / bh) * GBQ;   // heaviest query block first
    let bi = (t % bh) / p.h;
    let hh = t % p.h;
    let kh = hh / (p.h / p.kvh);
    let shift = p.tk - p.tq;
    let jend = shift + min(i0 + GBQ, p.tq);  // keys the block's last row sees (<= tk)
    let row = min(i0 + lid, p.tq - 1u);
    let lim = shift + row;                   // this row sees keys j <= lim
    let qr = (bi * p.tq + row) * p.h * HD4 + hh * HD4;
    var qv: array<vec4<f32>, DMAX4>;
    var acc: array<vec4<f32>, DMAX4>;
    for (var e = 0u; e < HD4; e++) {
        qv[e] = q[qr + e] * p.scale;
        acc[e] = vec4<f32>(0.0);
    }
    let ks = p.kvh * HD4;                    // vec4s per k/v row
    let kb = bi * p.tk * ks + kh * HD4;
    var m = NEG;
    var l = 0.0;
    for (var j0 = 0u; j0 < jend; j0 += GBK) {
        for (var s = lid; s < GBK * HD4; s += 64u) {
            let j = min(j0 + s / HD4, p.tk - 1u);
            let at = kb + j * ks + s % HD4;
            sk[s] = k[at];
            sv[s] = v[at];
        }
        workgroupBarrier();
        var sc: array<f32, GBK>;
        var mx = m;
        for (var c = 0u; c < GBK; c++) {
            var d = vec4<f32>(0.0);
            for (var e = 0u; e < HD4; e++) {
                d += qv[e] * sk[c * HD4 + e];
            }
            sc[c] = hsum(d);
            if (j0 + c <= lim) {
                mx = max(mx, sc[c]);
            }
        }
        // Key 0 is in the first stage and every row sees it, so mx is finite from there on.
        let alpha = select(exp(m - mx), 0.0, m == NEG);
        m = mx;
        l *= alpha;
        for (var e = 0u; e < HD4; e++) {
            acc[e] *= alpha;
        }
        for (var c = 0u; c < GBK; c++) {
            let pc = select(0.0, exp(sc[c] - mx), j0 + c <= lim);
            l += pc;
            for (var e = 0u; e < HD4; e++) {
                acc[e] += pc * sv[c * HD4 + e];
            }
        }
        workgroupBarrier();
    }
    if (i0 + lid < p.tq) {
        let inv = 1.0 / l;
        for (var e = 0u; e < HD4; e++) {
            o[qr + e] = acc[e] * inv;
        }
        lse[(bi * p.h + hh) * p.tq + row] = m + log(l);
    }
}
