// Causal grouped-query attention backward (FlashAttention-2 algorithm, no T×T buffer): given the
// upstream gradient dO, the forward's q, k, v, o and lse,
//   Di = rowsum(dO ⊙ o),  p = exp(q·kᵀ·scale - lse),  dv = Σ pᵀ·dO,  dp = dO·vᵀ,
//   ds = p ⊙ (dp - Di),   dq = ds·k·scale,            dk = Σ dsᵀ·q·scale,
// where dk and dv sum over the H/KVH query heads that share a KV head.
//
// Layouts as in attention_fwd.wgsl (row-major, read as vec4, D % 4 == 0; the launcher zero-pads
// other head sizes): q/o/dO/dq (B*Tq, H*D), k/v/dk/dv (B*Tk, KVH*D), lse/delta (B, H, Tq).
//
// Two entry points, one dispatch each, in this order (no float atomics, so every output element
// has exactly one writer and the result is deterministic):
//   stage_dq:   an invocation owns ROWS query rows of one (batch, head); writes Di to delta and dq.
//               Bindings 1 q, 2 k, 3 v, 4 dout, 5 lse, 6 o, 7 delta, 8 dq.
//   stage_dkdv: an invocation owns ROWS key rows of one (batch, KV head) and loops over the query
//               rows that see them and the query heads of its group; writes dk and dv.
//               Bindings 1 q, 2 k, 3 v, 4 dout, 5 lse, 6 delta, 7 dk, 8 dv.
// dq, dk, dv are overwritten, or with ACCUMULATE added to. Both stages work like the forward:
// the owned rows live in private arrays, the other side is walked in chunks of 8 rows loaded as
// vec4 (each load shared by the ROWS owned rows), two passes per chunk (dot products, then the
// weighted sums), no shared memory, no barriers. Each pass runs one loop per operand it loads
// (q then dO, or k then v): with both in one loop twice as many vectors are live and lavapipe's
// spilling made stage_dkdv 3-5x slower. Invocations are numbered with the fastest-varying head
// first and the heaviest block first; 1-D grid (wid.x + wid.y * nwg.x).
// Joined with nn/attention_common.wgsl (crates/gpu/src/shaders.rs).

override ROWS: u32 = 4u;            // owned rows per invocation: 1, 2 or 4
override WG: u32 = 64u;             // invocations per workgroup
override ACCUMULATE: bool = false;  // dq/dk/dv += instead of =

const DMAX4: u32 = 32u;             // vec4s per row: D <= 4 * DMAX4

struct Params {
    b: u32,        // batch
    tq: u32,       // query rows per sequence
    tk: u32,       // key rows per sequence (>= tq)
    h: u32,        // query heads
    kvh: u32,      // key/value heads (divides h)
    scale: f32,    // score scale, usually 1/sqrt(D)
    nblk: u32,     // ceil(tq / ROWS) (stage_dq) or ceil(tk / ROWS) (stage_dkdv)
    nitems: u32,   // invocations with work: nblk * b * h (stage_dq) or nblk * b * kvh (stage_dkdv)
    d4: u32,       // head dimension / 4 (D % 4 == 0, D <= 4 * DMAX4)
    _p0: u32,
    _p1: u32,
    _p2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<vec4<f32>>;            // (B*Tq, H*D)
@group(0) @binding(2) var<storage, read> k: array<vec4<f32>>;            // (B*Tk, KVH*D)
@group(0) @binding(3) var<storage, read> v: array<vec4<f32>>;            // (B*Tk, KVH*D)
@group(0) @binding(4) var<storage, read> dout: array<vec4<f32>>;         // (B*Tq, H*D)
@group(0) @binding(5) var<storage, read> lse: array<f32>;                // (B, H, Tq)
// stage_dq
@group(0) @binding(6) var<storage, read> o: array<vec4<f32>>;            // (B*Tq, H*D)
@group(0) @binding(7) var<storage, read_write> delta: array<f32>;        // (B, H, Tq)
@group(0) @binding(8) var<storage, read_write> dq: array<vec4<f32>>;     // (B*Tq, H*D)
// stage_dkdv
@group(0) @binding(6) var<storage, read> delta_in: array<f32>;           // (B, H, Tq)
@group(0) @binding(7) var<storage, read_write> dk: array<vec4<f32>>;     // (B*Tk, KVH*D)
@group(0) @binding(8) var<storage, read_write> dv: array<vec4<f32>>;     // (B*Tk, KVH*D)

const OFS = vec4<u32>(0u, 1u, 2u, 3u);

@compute @workgroup_size(WG)
fn stage_dq(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
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
    let jend = shift + min(i0 + ROWS, p.tq);  // keys the block's last row sees
    let ic = min(vec4<u32>(i0) + OFS, vec4<u32>(p.tq - 1u));
    let lim = vec4<u32>(shift) + ic;          // row r sees keys j <= lim[r]
    let qs = p.h * d4;
    let qr = ic * qs + vec4<u32>(bi * p.tq * qs + hh * d4);
    let li = vec4<u32>((bi * p.h + hh) * p.tq) + ic;
    let ls = vec4<f32>(lse[li.x], lse[li.y], lse[li.z], lse[li.w]);

    var q0: array<vec4<f32>, DMAX4>;
    var q1: array<vec4<f32>, DMAX4>;
    var q2: array<vec4<f32>, DMAX4>;
    var q3: array<vec4<f32>, DMAX4>;
    var g0: array<vec4<f32>, DMAX4>;  // dO rows
    var g1: array<vec4<f32>, DMAX4>;
    var g2: array<vec4<f32>, DMAX4>;
    var g3: array<vec4<f32>, DMAX4>;
    var a0: array<vec4<f32>, DMAX4>;  // dq accumulators
    var a1: array<vec4<f32>, DMAX4>;
    var a2: array<vec4<f32>, DMAX4>;
    var a3: array<vec4<f32>, DMAX4>;
    var di = vec4<f32>(0.0);          // Di per row
    for (var e = 0u; e < d4; e++) {
        q0[e] = q[qr.x + e] * p.scale;
        g0[e] = dout[qr.x + e];
        a0[e] = vec4<f32>(0.0);
        di.x += dot(g0[e], o[qr.x + e]);
        if (ROWS > 1u) {
            q1[e] = q[qr.y + e] * p.scale;
            g1[e] = dout[qr.y + e];
            a1[e] = vec4<f32>(0.0);
            di.y += dot(g1[e], o[qr.y + e]);
        }
        if (ROWS > 2u) {
            q2[e] = q[qr.z + e] * p.scale;
            g2[e] = dout[qr.z + e];
            a2[e] = vec4<f32>(0.0);
            di.z += dot(g2[e], o[qr.z + e]);
            q3[e] = q[qr.w + e] * p.scale;
            g3[e] = dout[qr.w + e];
            a3[e] = vec4<f32>(0.0);
            di.w += dot(g3[e], o[qr.w + e]);
        }
    }
    let ok = vec4<u32>(i0) + OFS < vec4<u32>(p.tq);
    if (ok.x) { delta[li.x] = di.x; }
    if (ROWS > 1u && ok.y) { delta[li.y] = di.y; }
    if (ROWS > 2u && ok.z) { delta[li.z] = di.z; }
    if (ROWS > 2u && ok.w) { delta[li.w] = di.w; }

    let ks = p.kvh * d4;
    let kb = bi * p.tk * ks + kh * d4;
    let last = jend - 1u;
    for (var j0 = 0u; j0 < jend; j0 += 8u) {
        let o0 = kb + min(j0, last) * ks;
        let o1 = kb + min(j0 + 1u, last) * ks;
        let o2 = kb + min(j0 + 2u, last) * ks;
        let o3 = kb + min(j0 + 3u, last) * ks;
        let o4 = kb + min(j0 + 4u, last) * ks;
        let o5 = kb + min(j0 + 5u, last) * ks;
        let o6 = kb + min(j0 + 6u, last) * ks;
        let o7 = kb + min(j0 + 7u, last) * ks;
        // Pass 1: scores s = q·k (q pre-scaled) and dp = dO·v for the 8 keys, per row.
        var sa0 = vec4<f32>(0.0);
        var sb0 = vec4<f32>(0.0);
        var sa1 = vec4<f32>(0.0);
        var sb1 = vec4<f32>(0.0);
        var sa2 = vec4<f32>(0.0);
        var sb2 = vec4<f32>(0.0);
        var sa3 = vec4<f32>(0.0);
        var sb3 = vec4<f32>(0.0);
        var pa0 = vec4<f32>(0.0);
        var pb0 = vec4<f32>(0.0);
        var pa1 = vec4<f32>(0.0);
        var pb1 = vec4<f32>(0.0);
        var pa2 = vec4<f32>(0.0);
        var pb2 = vec4<f32>(0.0);
        var pa3 = vec4<f32>(0.0);
        var pb3 = vec4<f32>(0.0);
        // (One loop per operand keeps fewer vectors live: these kernels run out of registers.)
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
        for (var e = 0u; e < d4; e++) {
            let v0 = v[o0 + e];
            let v1 = v[o1 + e];
            let v2 = v[o2 + e];
            let v3 = v[o3 + e];
            let v4 = v[o4 + e];
            let v5 = v[o5 + e];
            let v6 = v[o6 + e];
            let v7 = v[o7 + e];
            let y0 = g0[e];
            pa0 += dot4(y0, v0, v1, v2, v3);
            pb0 += dot4(y0, v4, v5, v6, v7);
            if (ROWS > 1u) {
                let y1 = g1[e];
                pa1 += dot4(y1, v0, v1, v2, v3);
                pb1 += dot4(y1, v4, v5, v6, v7);
            }
            if (ROWS > 2u) {
                let y2 = g2[e];
                pa2 += dot4(y2, v0, v1, v2, v3);
                pb2 += dot4(y2, v4, v5, v6, v7);
                let y3 = g3[e];
                pa3 += dot4(y3, v0, v1, v2, v3);
                pb3 += dot4(y3, v4, v5, v6, v7);
            }
        }
        // ds = p ⊙ (dp - Di) with p = exp(s - lse), 0 where the key is masked (stored over s).
        let ja = vec4<u32>(j0) + OFS;
        let jb = ja + vec4<u32>(4u);
        sa0 = select(vec4<f32>(0.0), exp(sa0 - vec4<f32>(ls.x)), ja <= vec4<u32>(lim.x)) * (pa0 - vec4<f32>(di.x));
        sb0 = select(vec4<f32>(0.0), exp(sb0 - vec4<f32>(ls.x)), jb <= vec4<u32>(lim.x)) * (pb0 - vec4<f32>(di.x));
        if (ROWS > 1u) {
            sa1 = select(vec4<f32>(0.0), exp(sa1 - vec4<f32>(ls.y)), ja <= vec4<u32>(lim.y)) * (pa1 - vec4<f32>(di.y));
            sb1 = select(vec4<f32>(0.0), exp(sb1 - vec4<f32>(ls.y)), jb <= vec4<u32>(lim.y)) * (pb1 - vec4<f32>(di.y));
        }
        if (ROWS > 2u) {
            sa2 = select(vec4<f32>(0.0), exp(sa2 - vec4<f32>(ls.z)), ja <= vec4<u32>(lim.z)) * (pa2 - vec4<f32>(di.z));
            sb2 = select(vec4<f32>(0.0), exp(sb2 - vec4<f32>(ls.z)), jb <= vec4<u32>(lim.z)) * (pb2 - vec4<f32>(di.z));
            sa3 = select(vec4<f32>(0.0), exp(sa3 - vec4<f32>(ls.w)), ja <= vec4<u32>(lim.w)) * (pa3 - vec4<f32>(di.w));
            sb3 = select(vec4<f32>(0.0), exp(sb3 - vec4<f32>(ls.w)), jb <= vec4<u32>(lim.w)) * (pb3 - vec4<f32>(di.w));
        }
        // Pass 2: dq += ds·k.
        for (var e = 0u; e < d4; e++) {
            let k0 = k[o0 + e];
            let k1 = k[o1 + e];
            let k2 = k[o2 + e];
            let k3 = k[o3 + e];
            let k4 = k[o4 + e];
            let k5 = k[o5 + e];
            let k6 = k[o6 + e];
            let k7 = k[o7 + e];
            a0[e] += wsum(sa0, sb0, k0, k1, k2, k3, k4, k5, k6, k7);
            if (ROWS > 1u) {
                a1[e] += wsum(sa1, sb1, k0, k1, k2, k3, k4, k5, k6, k7);
            }
            if (ROWS > 2u) {
                a2[e] += wsum(sa2, sb2, k0, k1, k2, k3, k4, k5, k6, k7);
                a3[e] += wsum(sa3, sb3, k0, k1, k2, k3, k4, k5, k6, k7);
            }
        }
    }

    for (var e = 0u; e < d4; e++) {
        if (ok.x) {
            var x = a0[e] * p.scale;
            if (ACCUMULATE) { x += dq[qr.x + e]; }
            dq[qr.x + e] = x;
        }
        if (ROWS > 1u && ok.y) {
            var x = a1[e] * p.scale;
            if (ACCUMULATE) { x += dq[qr.y + e]; }
            dq[qr.y + e] = x;
        }
        if (ROWS > 2u && ok.z) {
            var x = a2[e] * p.scale;
            if (ACCUMULATE) { x += dq[qr.z + e]; }
            dq[qr.z + e] = x;
        }
        if (ROWS > 2u && ok.w) {
            var x = a3[e] * p.scale;
            if (ACCUMULATE) { x += dq[qr.w + e]; }
            dq[qr.w + e] = x;
        }
    }
}

@compute @workgroup_size(WG)
fn stage_dkdv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let t = (wid.x + wid.y * nwg.x) * WG + lid;
    if (t >= p.nitems) {
        return;
    }
    let d4 = p.d4;
    let bk = p.b * p.kvh;
    let j0 = (t / bk) * ROWS;                // first keys see the most queries: heaviest first
    let bi = (t % bk) / p.kvh;
    let kh = t % p.kvh;
    let grp = p.h / p.kvh;
    let shift = p.tk - p.tq;
    let jr = vec4<u32>(j0) + OFS;            // owned keys (past Tk: never visible, not stored)
    let ks = p.kvh * d4;
    let kr = min(jr, vec4<u32>(p.tk - 1u)) * ks + vec4<u32>(bi * p.tk * ks + kh * d4);

    var k0: array<vec4<f32>, DMAX4>;
    var k1: array<vec4<f32>, DMAX4>;
    var k2: array<vec4<f32>, DMAX4>;
    var k3: array<vec4<f32>, DMAX4>;
    var v0: array<vec4<f32>, DMAX4>;
    var v1: array<vec4<f32>, DMAX4>;
    var v2: array<vec4<f32>, DMAX4>;
    var v3: array<vec4<f32>, DMAX4>;
    var dk0: array<vec4<f32>, DMAX4>;
    var dk1: array<vec4<f32>, DMAX4>;
    var dk2: array<vec4<f32>, DMAX4>;
    var dk3: array<vec4<f32>, DMAX4>;
    var dv0: array<vec4<f32>, DMAX4>;
    var dv1: array<vec4<f32>, DMAX4>;
    var dv2: array<vec4<f32>, DMAX4>;
    var dv3: array<vec4<f32>, DMAX4>;
    for (var e = 0u; e < d4; e++) {
        k0[e] = k[kr.x + e] * p.scale;
        v0[e] = v[kr.x + e];
        dk0[e] = vec4<f32>(0.0);
        dv0[e] = vec4<f32>(0.0);
        if (ROWS > 1u) {
            k1[e] = k[kr.y + e] * p.scale;
            v1[e] = v[kr.y + e];
            dk1[e] = vec4<f32>(0.0);
            dv1[e] = vec4<f32>(0.0);
        }
        if (ROWS > 2u) {
            k2[e] = k[kr.z + e] * p.scale;
            v2[e] = v[kr.z + e];
            dk2[e] = vec4<f32>(0.0);
            dv2[e] = vec4<f32>(0.0);
            k3[e] = k[kr.w + e] * p.scale;
            v3[e] = v[kr.w + e];
            dk3[e] = vec4<f32>(0.0);
            dv3[e] = vec4<f32>(0.0);
        }
    }

    // Query row i sees key j iff j <= shift + i: the owned keys need i >= j0 - shift.
    let istart = select(0u, j0 - shift, j0 > shift);
    let qs = p.h * d4;
    let lastq = p.tq - 1u;
    for (var g = 0u; g < grp; g++) {
        let hh = kh * grp + g;
        let qb = bi * p.tq * qs + hh * d4;
        let lb = (bi * p.h + hh) * p.tq;
        for (var i0 = istart; i0 < p.tq; i0 += 8u) {
            let ia = vec4<u32>(i0) + OFS;
            let ib = ia + vec4<u32>(4u);
            let ca = min(ia, vec4<u32>(lastq));
            let cb = min(ib, vec4<u32>(lastq));
            let oa = ca * qs + vec4<u32>(qb);
            let ob = cb * qs + vec4<u32>(qb);
            let lsa = vec4<f32>(lse[lb + ca.x], lse[lb + ca.y], lse[lb + ca.z], lse[lb + ca.w]);
            let lsb = vec4<f32>(lse[lb + cb.x], lse[lb + cb.y], lse[lb + cb.z], lse[lb + cb.w]);
            let dia = vec4<f32>(delta_in[lb + ca.x], delta_in[lb + ca.y], delta_in[lb + ca.z], delta_in[lb + ca.w]);
            let dib = vec4<f32>(delta_in[lb + cb.x], delta_in[lb + cb.y], delta_in[lb + cb.z], delta_in[lb + cb.w]);
            // Pass 1: s = k·q (k pre-scaled) and dp = v·dO for the 8 query rows, per owned key.
            var sa0 = vec4<f32>(0.0);
            var sb0 = vec4<f32>(0.0);
            var sa1 = vec4<f32>(0.0);
            var sb1 = vec4<f32>(0.0);
            var sa2 = vec4<f32>(0.0);
            var sb2 = vec4<f32>(0.0);
            var sa3 = vec4<f32>(0.0);
            var sb3 = vec4<f32>(0.0);
            var pa0 = vec4<f32>(0.0);
            var pb0 = vec4<f32>(0.0);
            var pa1 = vec4<f32>(0.0);
            var pb1 = vec4<f32>(0.0);
            var pa2 = vec4<f32>(0.0);
            var pb2 = vec4<f32>(0.0);
            var pa3 = vec4<f32>(0.0);
            var pb3 = vec4<f32>(0.0);
            // (One loop per operand keeps fewer vectors live: these kernels run out of registers.)
            for (var e = 0u; e < d4; e++) {
                let q0 = q[oa.x + e];
                let q1 = q[oa.y + e];
                let q2 = q[oa.z + e];
                let q3 = q[oa.w + e];
                let q4 = q[ob.x + e];
                let q5 = q[ob.y + e];
                let q6 = q[ob.z + e];
                let q7 = q[ob.w + e];
                let x0 = k0[e];
                sa0 += dot4(x0, q0, q1, q2, q3);
                sb0 += dot4(x0, q4, q5, q6, q7);
                if (ROWS > 1u) {
                    let x1 = k1[e];
                    sa1 += dot4(x1, q0, q1, q2, q3);
                    sb1 += dot4(x1, q4, q5, q6, q7);
                }
                if (ROWS > 2u) {
                    let x2 = k2[e];
                    sa2 += dot4(x2, q0, q1, q2, q3);
                    sb2 += dot4(x2, q4, q5, q6, q7);
                    let x3 = k3[e];
                    sa3 += dot4(x3, q0, q1, q2, q3);
                    sb3 += dot4(x3, q4, q5, q6, q7);
                }
            }
            for (var e = 0u; e < d4; e++) {
                let g0 = dout[oa.x + e];
                let g1 = dout[oa.y + e];
                let g2 = dout[oa.z + e];
                let g3 = dout[oa.w + e];
                let g4 = dout[ob.x + e];
                let g5 = dout[ob.y + e];
                let g6 = dout[ob.z + e];
                let g7 = dout[ob.w + e];
                let y0 = v0[e];
                pa0 += dot4(y0, g0, g1, g2, g3);
                pb0 += dot4(y0, g4, g5, g6, g7);
                if (ROWS > 1u) {
                    let y1 = v1[e];
                    pa1 += dot4(y1, g0, g1, g2, g3);
                    pb1 += dot4(y1, g4, g5, g6, g7);
                }
                if (ROWS > 2u) {
                    let y2 = v2[e];
                    pa2 += dot4(y2, g0, g1, g2, g3);
                    pb2 += dot4(y2, g4, g5, g6, g7);
                    let y3 = v3[e];
                    pa3 += dot4(y3, g0, g1, g2, g3);
                    pb3 += dot4(y3, g4, g5, g6, g7);
                }
            }
            // p = exp(s - lse) where query i (< Tq) sees key j (j <= shift + i), else 0; then
            // p stays in sa/sb and ds = p ⊙ (dp - Di) goes over pa/pb.
            let okq = ia < vec4<u32>(p.tq);
            let okb = ib < vec4<u32>(p.tq);
            let va = vec4<u32>(shift) + ia;
            let vb = vec4<u32>(shift) + ib;
            sa0 = select(vec4<f32>(0.0), exp(sa0 - lsa), okq & (vec4<u32>(jr.x) <= va));
            sb0 = select(vec4<f32>(0.0), exp(sb0 - lsb), okb & (vec4<u32>(jr.x) <= vb));
            pa0 = sa0 * (pa0 - dia);
            pb0 = sb0 * (pb0 - dib);
            if (ROWS > 1u) {
                sa1 = select(vec4<f32>(0.0), exp(sa1 - lsa), okq & (vec4<u32>(jr.y) <= va));
                sb1 = select(vec4<f32>(0.0), exp(sb1 - lsb), okb & (vec4<u32>(jr.y) <= vb));
                pa1 = sa1 * (pa1 - dia);
                pb1 = sb1 * (pb1 - dib);
            }
            if (ROWS > 2u) {
                sa2 = select(vec4<f32>(0.0), exp(sa2 - lsa), okq & (vec4<u32>(jr.z) <= va));
                sb2 = select(vec4<f32>(0.0), exp(sb2 - lsb), okb & (vec4<u32>(jr.z) <= vb));
                pa2 = sa2 * (pa2 - dia);
                pb2 = sb2 * (pb2 - dib);
                sa3 = select(vec4<f32>(0.0), exp(sa3 - lsa), okq & (vec4<u32>(jr.w) <= va));
                sb3 = select(vec4<f32>(0.0), exp(sb3 - lsb), okb & (vec4<u32>(jr.w) <= vb));
                pa3 = sa3 * (pa3 - dia);
                pb3 = sb3 * (pb3 - dib);
            }
            // Pass 2: dv += pᵀ·dO, dk += dsᵀ·q.
            for (var e = 0u; e < d4; e++) {
                let g0 = dout[oa.x + e];
                let g1 = dout[oa.y + e];
                let g2 = dout[oa.z + e];
                let g3 = dout[oa.w + e];
                let g4 = dout[ob.x + e];
                let g5 = dout[ob.y + e];
                let g6 = dout[ob.z + e];
                let g7 = dout[ob.w + e];
                dv0[e] += wsum(sa0, sb0, g0, g1, g2, g3, g4, g5, g6, g7);
                if (ROWS > 1u) {
                    dv1[e] += wsum(sa1, sb1, g0, g1, g2, g3, g4, g5, g6, g7);
                }
                if (ROWS > 2u) {
                    dv2[e] += wsum(sa2, sb2, g0, g1, g2, g3, g4, g5, g6, g7);
                    dv3[e] += wsum(sa3, sb3, g0, g1, g2, g3, g4, g5, g6, g7);
                }
            }
            for (var e = 0u; e < d4; e++) {
                let q0 = q[oa.x + e];
                let q1 = q[oa.y + e];
                let q2 = q[oa.z + e];
                let q3 = q[oa.w + e];
                let q4 = q[ob.x + e];
                let q5 = q[ob.y + e];
                let q6 = q[ob.z + e];
                let q7 = q[ob.w + e];
                dk0[e] += wsum(pa0, pb0, q0, q1, q2, q3, q4, q5, q6, q7);
                if (ROWS > 1u) {
                    dk1[e] += wsum(pa1, pb1, q0, q1, q2, q3, q4, q5, q6, q7);
                }
                if (ROWS > 2u) {
                    dk2[e] += wsum(pa2, pb2, q0, q1, q2, q3, q4, q5, q6, q7);
                    dk3[e] += wsum(pa3, pb3, q0, q1, q2, q3, q4, q5, q6, q7);
                }
            }
        }
    }

    let ok = jr < vec4<u32>(p.tk);
    for (var e = 0u; e < d4; e++) {
        if (ok.x) {
            var x = dk0[e] * p.scale;
            var y = dv0[e];
            if (ACCUMULATE) { x += dk[kr.x + e]; y += dv[kr.x + e]; }
            dk[kr.x + e] = x;
            dv[kr.x + e] = y;
        }
        if (ROWS > 1u && ok.y) {
            var x = dk1[e] * p.scale;
            var y = dv1[e];
            if (ACCUMULATE) { x += dk[kr.y + e]; y += dv[kr.y + e]; }
            dk[kr.y + e] = x;
            dv[kr.y + e] = y;
        }
        if (ROWS > 2u && ok.z) {
            var x = dk2[e] * p.scale;
            var y = dv2[e];
            if (ACCUMULATE) { x += dk[kr.z + e]; y += dv[kr.z + e]; }
            dk[kr.z + e] = x;
            dv[kr.z + e] = y;
        }
        if (ROWS > 2u && ok.w) {
            var x = dk3[e] * p.scale;
            var y = dv3[e];
            if (ACCUMULATE) { x += dk[kr.w + e]; y += dv[kr.w + e]; }
            dk[kr.w + e] = x;
            dv[kr.w + e] = y;
        }
    }
}

// ---- Entry points `tiled_dq` and `tiled_dkdv`: the GPU variant (crates/gpu/src/kernels.rs) ----
// Same two stages, same bindings, same results up to summation order; laid out for GPUs like
// attention_fwd's `tiled`. A workgroup of 64 invocations owns 64 rows, one per invocation, with
// its vectors in private arrays of HD4 vec4s (an override: constant loop trips, registers); the
// other side is walked in stages of 16 rows that the workgroup loads into workgroup memory
// (neighbouring invocations read neighbouring vec4s), so each element is loaded from storage once
// per 64 owned rows. Workgroup memory: 2 × 16 × 128 floats = 16 KiB (WebGPU's minimum limit).
//   tiled_dq:   64 query rows of one (batch, head), stages of 16 k and v rows; nblk =
//               ceil(tq / 64), nitems = nblk * b * h workgroups (head fastest, heaviest first).
//   tiled_dkdv: 64 key rows of one (batch, KV head), stages of 16 q and dO rows of each query
//               head of the group (their lse and Di read directly: one address per stage row,
//               the same for the whole workgroup); nblk = ceil(tk / 64), nitems = nblk * b * kvh.
// Stage rows past the end are loaded clamped and get probability 0; owned rows past the end
// compute the last row and are not stored.

override HD4: u32 = 16u;   // tiled_*: vec4s per head row (D / 4, at most DMAX4)
const GB: u32 = 64u;       // tiled_*: owned rows per workgroup (one per invocation)
const GS: u32 = 16u;       // tiled_*: rows per stage

var<workgroup> sa: array<vec4<f32>, 512>;  // (GS, HD4) stage: k rows (dq) or q rows (dkdv)
var<workgroup> sb: array<vec4<f32>, 512>;  // (GS, HD4) stage: v rows (dq) or dO rows (dkdv)

@compute @workgroup_size(64)
fn tiled_dq(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let t = wid.x + wid.y * nwg.x;
    if (t >= p.nitems) {
        return;
    }
    let bh = p.b * p.h;
    let i0 = (p.nblk - 1u - t / bh) * GB;    // heaviest query block first
    let bi = (t % bh) / p.h;
    let hh = t % p.h;
    let kh = hh / (p.h / p.kvh);
    let shift = p.tk - p.tq;
    let jend = shift + min(i0 + GB, p.tq);   // keys the block's last row sees
    let row = min(i0 + lid, p.tq - 1u);
    let lim = shift + row;                   // this row sees keys j <= lim
    let qr = (bi * p.tq + row) * p.h * HD4 + hh * HD4;
    let li = (bi * p.h + hh) * p.tq + row;
    let ls = lse[li];
    var qv: array<vec4<f32>, DMAX4>;
    var gv: array<vec4<f32>, DMAX4>;         // dO row
    var acc: array<vec4<f32>, DMAX4>;        // dq accumulator
    var d4 = vec4<f32>(0.0);
    for (var e = 0u; e < HD4; e++) {
        qv[e] = q[qr + e] * p.scale;
        gv[e] = dout[qr + e];
        acc[e] = vec4<f32>(0.0);
        d4 += gv[e] * o[qr + e];
    }
    let di = (d4.x + d4.y) + (d4.z + d4.w);
    let own = i0 + lid < p.tq;
    if (own) {
        delta[li] = di;
    }
    let ks = p.kvh * HD4;
    let kb = bi * p.tk * ks + kh * HD4;
    for (var j0 = 0u; j0 < jend; j0 += GS) {
        for (var s = lid; s < GS * HD4; s += 64u) {
            let j = min(j0 + s / HD4, p.tk - 1u);
            let at = kb + j * ks + s % HD4;
            sa[s] = k[at];
            sb[s] = v[at];
        }
        workgroupBarrier();
        for (var c = 0u; c < GS; c++) {
            var sd = vec4<f32>(0.0);
            var pd = vec4<f32>(0.0);
            for (var e = 0u; e < HD4; e++) {
                sd += qv[e] * sa[c * HD4 + e];
                pd += gv[e] * sb[c * HD4 + e];
            }
            let pc = select(0.0, exp((sd.x + sd.y) + (sd.z + sd.w) - ls), j0 + c <= lim);
            let ds = pc * ((pd.x + pd.y) + (pd.z + pd.w) - di);
            for (var e = 0u; e < HD4; e++) {
                acc[e] += ds * sa[c * HD4 + e];
            }
        }
        workgroupBarrier();
    }
    if (own) {
        for (var e = 0u; e < HD4; e++) {
            var x = acc[e] * p.scale;
            if (ACCUMULATE) { x += dq[qr + e]; }
            dq[qr + e] = x;
        }
    }
}

@compute @workgroup_size(64)
fn tiled_dkdv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let t = wid.x + wid.y * nwg.x;
    if (t >= p.nitems) {
        return;
    }
    let bk = p.b * p.kvh;
    let j0 = (t / bk) * GB;                  // first keys see the most queries: heaviest first
    let bi = (t % bk) / p.kvh;
    let kh = t % p.kvh;
    let grp = p.h / p.kvh;
    let shift = p.tk - p.tq;
    let j = min(j0 + lid, p.tk - 1u);        // this invocation's key row
    let ks = p.kvh * HD4;
    let kr = (bi * p.tk + j) * ks + kh * HD4;
    var kv: array<vec4<f32>, DMAX4>;         // k row (pre-scaled)
    var vv: array<vec4<f32>, DMAX4>;
    var dkv: array<vec4<f32>, DMAX4>;
    var dvv: array<vec4<f32>, DMAX4>;
    for (var e = 0u; e < HD4; e++) {
        kv[e] = k[kr + e] * p.scale;
        vv[e] = v[kr + e];
        dkv[e] = vec4<f32>(0.0);
        dvv[e] = vec4<f32>(0.0);
    }
    // Query row i sees key j iff j <= shift + i: the block's keys need i >= j0 - shift.
    let istart = select(0u, j0 - shift, j0 > shift);
    let qs = p.h * HD4;
    for (var g = 0u; g < grp; g++) {
        let hh = kh * grp + g;
        let qb = bi * p.tq * qs + hh * HD4;
        let lb = (bi * p.h + hh) * p.tq;
        for (var i0 = istart; i0 < p.tq; i0 += GS) {
            for (var s = lid; s < GS * HD4; s += 64u) {
                let i = min(i0 + s / HD4, p.tq - 1u);
                let at = qb + i * qs + s % HD4;
                sa[s] = q[at];
                sb[s] = dout[at];
            }
            workgroupBarrier();
            for (var c = 0u; c < GS; c++) {
                let i = min(i0 + c, p.tq - 1u);
                var sd = vec4<f32>(0.0);
                var pd = vec4<f32>(0.0);
                for (var e = 0u; e < HD4; e++) {
                    sd += kv[e] * sa[c * HD4 + e];
                    pd += vv[e] * sb[c * HD4 + e];
                }
                let seen = i0 + c < p.tq && j <= shift + i0 + c;
                let pc = select(0.0, exp((sd.x + sd.y) + (sd.z + sd.w) - lse[lb + i]), seen);
                let ds = pc * ((pd.x + pd.y) + (pd.z + pd.w) - delta_in[lb + i]);
                for (var e = 0u; e < HD4; e++) {
                    dvv[e] += pc * sb[c * HD4 + e];
                    dkv[e] += ds * sa[c * HD4 + e];
                }
            }
            workgroupBarrier();
        }
    }
    if (j0 + lid < p.tk) {
        for (var e = 0u; e < HD4; e++) {
            var x = dkv[e] * p.scale;
            var y = dvv[e];
            if (ACCUMULATE) { x += dk[kr + e]; y += dv[kr + e]; }
            dk[kr + e] = x;
            dv[kr + e] = y;
        }
    }
}
