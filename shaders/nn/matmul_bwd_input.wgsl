// Input gradient of the dense f32 matmul: dx[M,K] (+)= dy[M,N] · w[N,K], with w stored in torch
// Linear layout [out, in] (the input gradient of nn/matmul_fwd with alpha = 1). w is f32, or f16 /
// bf16 packed two elements per u32 (TABLE_DTYPE, nn/table_common.wgsl), widened exactly.
//
// Register blocking without shared memory, tiled like nf4/matmul_bwd_input: an invocation owns
// ROWS rows × 8 consecutive k of dx (2 vec4 per row) and walks N in increasing order like the
// reference: per w row it loads 8 consecutive w values and ROWS values of dy and does ROWS × 8
// multiply-adds. In the last k tile the lanes beyond K read a clamped (valid) column and are not
// stored; out-of-range rows read a clamped row of dy and are not stored. Tiles are numbered k-tile
// fastest over a 1-D grid (wid.x + wid.y * nwg.x).
//
// dy may be a column band of a wider matrix: dy(row, n) is read from dy[row * lddy + col0 + n]
// (lddy = N, col0 = 0 for a plain [M,N] dy), so that a weight split into row chunks (vocab chunks
// of an LM head) takes its chunk's columns of the full logits gradient; with ACCUMULATE the chunks
// sum into one dx. Only the dy row offsets depend on lddy / col0; the inner loop is the same.

override ACCUMULATE: bool = false;  // dx += dy·w instead of dx = dy·w
override ROWS: u32 = 8u;            // rows of dx per invocation, 1..=8
override WG: u32 = 64u;             // invocations per workgroup (16 for M=1: more workgroups to share out)

struct Params {
    m: u32,
    k: u32,
    n: u32,
    ntk: u32,     // ceil(k / 8): k tiles
    ntiles: u32,  // ceil(m / ROWS) * ntk
    lddy: u32,    // row stride of dy (>= col0 + n)
    col0: u32,    // column of dy holding this product's n = 0
    _p0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> dy: array<f32>;        // (M, lddy), columns col0..col0+N
@group(0) @binding(2) var<storage, read> w: array<u32>;         // (N, K) f32, or (N*K/2) packed 16-bit pairs
@group(0) @binding(3) var<storage, read_write> dx: array<f32>;  // (M, K)

// Element i of w (row-major (N, K)) as f32.
fn wv(i: u32) -> f32 {
    return rc(table_value(w[table_word(i)], i));
}

fn store(row: u32, col: u32, v: f32) {
    if (col < p.k) {
        let i = row * p.k + col;
        var r = v;
        if (ACCUMULATE) {
            r += dx[i];
        }
        dx[i] = r;
    }
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let t = (wid.x + wid.y * nwg.x) * WG + lid;
    if (t >= p.ntiles) {
        return;
    }
    let K = p.k;
    let N = p.n;
    let r0 = (t / p.ntk) * ROWS;
    let k0 = (t % p.ntk) * 8u;
    let kl = K - 1u;

    // Column offsets of the 8 k lanes within a w row (clamped), and ROWS dy row offsets (clamped).
    var co: array<u32, 8>;
    for (var j = 0u; j < 8u; j++) {
        co[j] = min(k0 + j, kl);
    }
    var yo: array<u32, 8>;
    for (var i = 0u; i < ROWS; i++) {
        yo[i] = min(r0 + i, p.m - 1u) * p.lddy + p.col0;
    }
    var acc: array<vec4<f32>, 16>;
    for (var i = 0u; i < 2u * ROWS; i++) {
        acc[i] = vec4<f32>(0.0);
    }

    var wr = 0u;  // n * K: start of w row n
    for (var n = 0u; n < N; n++) {
        let wl = vec4<f32>(wv(wr + co[0]), wv(wr + co[1]), wv(wr + co[2]), wv(wr + co[3]));
        let wh = vec4<f32>(wv(wr + co[4]), wv(wr + co[5]), wv(wr + co[6]), wv(wr + co[7]));
        for (var i = 0u; i < ROWS; i++) {
            let d = rc(dy[yo[i] + n]);
            acc[2u * i] += d * wl;
            acc[2u * i + 1u] += d * wh;
        }
        wr += K;
    }

    for (var i = 0u; i < ROWS; i++) {
        let row = r0 + i;
        if (row < p.m) {
            let a = acc[2u * i];
            let b = acc[2u * i + 1u];
            store(row, k0, a.x);
            store(row, k0 + 1u, a.y);
            store(row, k0 + 2u, a.z);
            store(row, k0 + 3u, a.w);
            store(row, k0 + 4u, b.x);
            store(row, k0 + 5u, b.y);
            store(row, k0 + 6u, b.z);
            store(row, k0 + 7u, b.w);
        }
    }
}

// ---- Entry point `tiled`: the GPU variant (crates/gpu/src/kernels.rs) ----
// A workgroup of 256 invocations owns a 64×64 tile of dx (64 rows × 64 k) and walks N in stages of
// 16: each stage loads dy's 64×16 block (4 consecutive n of one row per invocation) and w's 16×64
// block (4 consecutive k of one w row per invocation) into workgroup memory; every invocation then
// does 4×4 multiply-adds per n for its outputs (rows ty + 16i, k tx + 16j). Values past M, N or K
// load as 0; sums run in increasing n like the reference. The launcher sets ntk = ceil(k / 64) and
// ntiles = ceil(m / 64) * ntk (tiles k-fastest, 1-D grid).

const TT: u32 = 64u;    // tile side (outputs)
const TN: u32 = 16u;    // n per stage
const TP: u32 = 65u;    // padded stage row: (n q, index r) at q * TP + r

var<workgroup> sd: array<ct, 1040>;  // (TN, TP) stage of dy: (n q, row r), compute dtype
var<workgroup> sw: array<ct, 1040>;  // (TN, TP) stage of w: (n q, k c), compute dtype

@compute @workgroup_size(256)
fn tiled(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let t = wid.x + wid.y * nwg.x;
    if (t >= p.ntiles) {
        return;
    }
    let r0 = (t / p.ntk) * TT;
    let c0 = (t % p.ntk) * TT;
    let tx = lid % 16u;
    let ty = lid / 16u;
    // dy share: 4 consecutive n (dq..dq+3) of stage row dr. w share: 4 consecutive k (wc..wc+3)
    // of stage n row wn.
    let dr = lid / 4u;
    let dq = (lid % 4u) * 4u;
    let wn = lid / 16u;
    let wc = (lid % 16u) * 4u;
    let dok = r0 + dr < p.m;
    let drow = min(r0 + dr, p.m - 1u) * p.lddy + p.col0;
    var acc: array<vec4<f32>, 4>;  // acc[i][j]: row ty + 16i, k tx + 16j
    for (var n0 = 0u; n0 < p.n; n0 += TN) {
        for (var q = 0u; q < 4u; q++) {
            let nq = n0 + dq + q;
            sd[(dq + q) * TP + dr] = ct(select(0.0, dy[drow + min(nq, p.n - 1u)], dok && nq < p.n));
            let wr = n0 + wn;
            let kq = c0 + wc + q;
            let wi = min(wr, p.n - 1u) * p.k + min(kq, p.k - 1u);
            sw[wn * TP + wc + q] = ct(select(0.0, wv(wi), wr < p.n && kq < p.k));
        }
        workgroupBarrier();
        for (var q = 0u; q < TN; q++) {
            let o = q * TP;
            let b = vec4<f32>(vec4<ct>(sw[o + tx], sw[o + tx + 16u], sw[o + tx + 32u], sw[o + tx + 48u]));
            for (var i = 0u; i < 4u; i++) {
                acc[i] += f32(sd[o + ty + 16u * i]) * b;
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        let row = r0 + ty + 16u * i;
        if (row < p.m) {
            for (var j = 0u; j < 4u; j++) {
                store(row, c0 + tx + 16u * j, acc[i][j]);
            }
        }
    }
}
