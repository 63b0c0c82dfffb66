// Dense f32 matmul in torch Linear layout: y[M,N] (+)= alpha * x[M,K] · w[N,K]ᵀ.
//
// w is f32, or f16 / bf16 packed two elements per u32 (TABLE_DTYPE, nn/table_common.wgsl: a frozen
// LM head kept in its checkpoint's 16-bit dtype); each element is widened exactly to f32 before the
// multiply, so a 16-bit w gives the same sums as the f32 copy of it.
//
// The output may be a column band of a wider matrix: element (row, col) is stored at
// y[row * ldy + col0 + col] (ldy = n, col0 = 0 for a plain [M,N] output), so that a weight split
// into row chunks (vocab chunks of an LM head) writes each chunk's columns of the full logits.
// Only the store address depends on ldy / col0; columns outside [col0, col0 + n) are not touched.
//
// Register blocking without shared memory (fast on lavapipe, where storage loads inside loops are
// the cost and barriers are expensive): each invocation owns a tile of ROWS rows × 8 columns of y,
// kept as 2 vec4 accumulators per row, and walks K one value at a time as an outer product: per k
// it loads 8 w values (one per column) and ROWS x values and does ROWS × 8 multiply-adds. Sums run
// in increasing k like the reference. Out-of-range rows and columns read a clamped (valid) row and
// are not stored. Tiles are numbered column-tile fastest over a 1-D grid (wid.x + wid.y * nwg.x).

override ACCUMULATE: bool = false;  // y += alpha * x·wᵀ instead of y = alpha * x·wᵀ
override ROWS: u32 = 8u;            // rows of y per invocation, 1..=8
override WG: u32 = 64u;             // invocations per workgroup (16 for M=1: more workgroups to share out)

struct Params {
    m: u32,
    k: u32,
    n: u32,
    alpha: f32,
    ntn: u32,     // ceil(n / 8): column tiles
    ntiles: u32,  // ceil(m / ROWS) * ntn
    ldy: u32,     // row stride of y (>= col0 + n)
    col0: u32,    // column of y where this product's column 0 goes
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;         // (M, K)
@group(0) @binding(2) var<storage, read> w: array<u32>;         // (N, K) f32, or (N*K/2) packed 16-bit pairs
@group(0) @binding(3) var<storage, read_write> y: array<f32>;   // (M, ldy), columns col0..col0+N

// Element i of w (row-major (N, K)) as f32.
fn wv(i: u32) -> f32 {
    return rc(table_value(w[table_word(i)], i));
}

fn store(row: u32, col: u32, v: f32) {
    if (col < p.n) {
        let i = row * p.ldy + p.col0 + col;
        var r = p.alpha * v;
        if (ACCUMULATE) {
            r += y[i];
        }
        y[i] = r;
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
    let r0 = (t / p.ntn) * ROWS;
    let c0 = (t % p.ntn) * 8u;
    let cl = p.n - 1u;
    let rl = p.m - 1u;

    // Start offsets of the 8 w rows (clamped columns) and ROWS x rows (clamped rows).
    var wo: array<u32, 8>;
    for (var j = 0u; j < 8u; j++) {
        wo[j] = min(c0 + j, cl) * K;
    }
    var xo: array<u32, 8>;
    for (var i = 0u; i < ROWS; i++) {
        xo[i] = min(r0 + i, rl) * K;
    }
    var acc: array<vec4<f32>, 16>;
    for (var i = 0u; i < 2u * ROWS; i++) {
        acc[i] = vec4<f32>(0.0);
    }

    for (var kk = 0u; kk < K; kk++) {
        let wa = vec4<f32>(wv(wo[0] + kk), wv(wo[1] + kk), wv(wo[2] + kk), wv(wo[3] + kk));
        let wb = vec4<f32>(wv(wo[4] + kk), wv(wo[5] + kk), wv(wo[6] + kk), wv(wo[7] + kk));
        for (var i = 0u; i < ROWS; i++) {
            let xs = rc(x[xo[i] + kk]);
            acc[2u * i] += xs * wa;
            acc[2u * i + 1u] += xs * wb;
        }
    }

    for (var i = 0u; i < ROWS; i++) {
        let row = r0 + i;
        if (row < p.m) {
            let a = acc[2u * i];
            let b = acc[2u * i + 1u];
            store(row, c0, a.x);
            store(row, c0 + 1u, a.y);
            store(row, c0 + 2u, a.z);
            store(row, c0 + 3u, a.w);
            store(row, c0 + 4u, b.x);
            store(row, c0 + 5u, b.y);
            store(row, c0 + 6u, b.z);
            store(row, c0 + 7u, b.w);
        }
    }
}

// ---- Entry point `tiled`: the GPU variant (crates/gpu/src/kernels.rs) ----
// A workgroup of 256 invocations owns a 64×64 tile of y and walks K in stages of 16: each stage
// loads a 64×16 block of x and of w into workgroup memory (each invocation 4 consecutive k of one
// row, so neighbouring invocations read neighbouring addresses), then every invocation does 4×4
// multiply-adds per k for its outputs (rows ty + 16i, columns tx + 16j: conflict-free reads of the
// stage). Values past M, N or K load as 0; sums run in increasing k like the reference. The launcher
// sets ntn = ceil(n / 64) and ntiles = ceil(m / 64) * ntn (tiles column-fastest, 1-D grid).

const TT: u32 = 64u;    // tile side (outputs)
const TK: u32 = 16u;    // k per stage
const TP: u32 = 65u;    // padded stage row: (k q, row r) at q * TP + r

var<workgroup> sx: array<ct, 1040>;  // (TK, TP) stage of x, in the compute dtype
var<workgroup> sw: array<ct, 1040>;  // (TK, TP) stage of w, in the compute dtype

@compute @workgroup_size(256)
fn tiled(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let t = wid.x + wid.y * nwg.x;
    if (t >= p.ntiles) {
        return;
    }
    let r0 = (t / p.ntn) * TT;
    let c0 = (t % p.ntn) * TT;
    let tx = lid % 16u;
    let ty = lid / 16u;
    // This invocation's share of each stage: 4 consecutive k (lq..lq+3) of stage row lr.
    let lr = lid / 4u;
    let lq = (lid % 4u) * 4u;
    let xok = r0 + lr < p.m;
    let wok = c0 + lr < p.n;
    let xrow = min(r0 + lr, p.m - 1u) * p.k;
    let wrow = min(c0 + lr, p.n - 1u) * p.k;
    var acc: array<vec4<f32>, 4>;  // acc[i][j]: row ty + 16i, column tx + 16j
    for (var k0 = 0u; k0 < p.k; k0 += TK) {
        for (var q = 0u; q < 4u; q++) {
            let kq = k0 + lq + q;
            let kc = min(kq, p.k - 1u);
            let kin = kq < p.k;
            sx[(lq + q) * TP + lr] = ct(select(0.0, x[xrow + kc], xok && kin));
            sw[(lq + q) * TP + lr] = ct(select(0.0, wv(wrow + kc), wok && kin));
        }
        workgroupBarrier();
        for (var q = 0u; q < TK; q++) {
            let o = q * TP;
            let b = vec4<f32>(vec4<ct>(sw[o + tx], sw[o + tx + 16u], sw[o + tx + 32u], sw[o + tx + 48u]));
            for (var i = 0u; i < 4u; i++) {
                acc[i] += f32(sx[o + ty + 16u * i]) * b;
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

// ---- Entry point `matvec`: the GPU variant for M <= 8 (decoding) ----
// A workgroup of 64 invocations owns one column of y for all M rows: invocation lid sums the
// products of k = lid, lid + 64, ... (neighbouring invocations read neighbouring w and x
// elements), then a workgroup-memory tree adds the 64 partial sums of each row (6 barriers).
// The launcher dispatches one workgroup per column (1-D grid over N).

var<workgroup> mv: array<vec4<f32>, 128>;  // (64, 2): invocation i's partial sums of rows 0..3, 4..7

@compute @workgroup_size(64)
fn matvec(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let col = wid.x + wid.y * nwg.x;
    if (col >= p.n) {
        return;
    }
    let wbase = col * p.k;
    var lo = vec4<f32>(0.0);
    var hi = vec4<f32>(0.0);
    for (var kk = lid; kk < p.k; kk += 64u) {
        let wk = wv(wbase + kk);
        var xs: array<f32, 8>;
        for (var i = 0u; i < 8u; i++) {
            xs[i] = select(0.0, rc(x[min(i, p.m - 1u) * p.k + kk]), i < p.m);
        }
        lo += vec4<f32>(xs[0], xs[1], xs[2], xs[3]) * wk;
        hi += vec4<f32>(xs[4], xs[5], xs[6], xs[7]) * wk;
    }
    mv[2u * lid] = lo;
    mv[2u * lid + 1u] = hi;
    workgroupBarrier();
    for (var s = 32u; s > 0u; s >>= 1u) {
        if (lid < s) {
            mv[2u * lid] += mv[2u * (lid + s)];
            mv[2u * lid + 1u] += mv[2u * (lid + s) + 1u];
        }
        workgroupBarrier();
    }
    if (lid < p.m) {
        store(lid, col, mv[lid / 4u][lid % 4u]);
    }
}
