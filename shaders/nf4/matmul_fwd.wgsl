// Dequantizing NF4 matmul, torch Linear layout: y[M,N] (+)= alpha * x[M,K] · dequant(W)[N,K]ᵀ,
// reading W's 4-bit codes and block scales directly (the f32 weight is never materialised).
//
// W is bitsandbytes' flat layout: element (row, k) is flat index e = row*K + k, 8 codes per u32
// word (element 2i in the high nibble of byte i, bytes little-endian), one scale per BLOCK flat
// elements, so blocks (and with K % 8 != 0 even words) straddle rows.
//
// Register blocking without shared memory, as nn/matmul_fwd: an invocation owns ROWS rows × 8
// columns of y (2 vec4 accumulators per row) and walks K eight at a time. Per step and column it
// loads ONE code word (the word holding the run's last element; with SHIFTED the word holding its
// first is the previous step's) and reloads the block scale only when the block changes; then for
// each of the 8 k it dequantizes one value per column (code -> NF4 value * scale, exactly as
// nf4/dequantize) and does ROWS × 8 multiply-adds with ROWS scalar x loads (an outer product, sums
// in increasing k like the reference). x reads as 0 beyond K, which handles K % 8 (the W values
// there are finite: the next row's, or clamped / padding codes; they are multiplied by 0).
// Joined with nf4/common.wgsl, nf4/blocks_common.wgsl, nf4/matmul_common.wgsl (crates/gpu/src/shaders.rs).

override BLOCK: u32 = 64u;          // elements per scale block, a power of two in 32..4096
override DOUBLE_QUANT: bool = true; // absmax = dq[q] * dq[257 + b/256] + dq[256]
override ACCUMULATE: bool = false;  // y += ... instead of y = ...
override ROWS: u32 = 8u;            // rows of y per invocation, 1..=8
override WG: u32 = 64u;             // invocations per workgroup (16 for M=1: more workgroups to share out)
override SHIFTED: bool = false;     // K % 8 != 0: W rows start in the middle of a code word
override WPB: u32 = BLOCK / 8u;     // code words per block

struct Params {
    m: u32,
    k: u32,
    n: u32,
    alpha: f32,
    ntn: u32,      // ceil(n / 8): column tiles
    ntiles: u32,   // ceil(m / ROWS) * ntn
    nwords: u32,   // ceil(n*k / 8): code words
    _p0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;          // (M, K)
@group(0) @binding(2) var<storage, read> codes: array<u32>;      // (ceil(N*K/8)) packed nibbles
@group(0) @binding(3) var<storage, read> absmax: array<u32>;     // (ceil(nblocks/4)) u8 codes, or (nblocks) f32 bits
@group(0) @binding(4) var<storage, read> dq: array<f32>;         // (256 + 1 + nnested) [map, offset, nested], or (1) [0]
@group(0) @binding(5) var<storage, read_write> y: array<f32>;    // (M, N)

struct State {
    f: array<u32, 8>,    // flat index of each column's W row start
    s: array<u32, 8>,    // f % 8 (0 unless SHIFTED)
    pw: array<u32, 8>,   // SHIFTED: previous step's last word (linear), holding this step's first elements
    pa: array<f32, 8>,   // its scale
    cb: array<u32, 8>,   // block of the last scale loaded
    ca: array<f32, 8>,   // that scale
    xo: array<u32, 8>,   // x row starts (clamped rows)
    acc: array<vec4<f32>, 16>,  // row i: acc[2i] columns 0..3, acc[2i+1] columns 4..7
}

// One step of 8 k values starting at kk.
fn step(st: ptr<function, State>, kk: u32) {
    var cw: array<u32, 8>;    // column j's 8 codes of this step
    var la: array<f32, 8>;    // scale of elements 0..split[j]
    var ha: array<f32, 8>;    // scale of the rest
    var split: array<u32, 8>;
    for (var j = 0u; j < 8u; j++) {
        let e = (*st).f[j] + kk;
        let hw = min((e + 7u) / 8u, p.nwords - 1u);
        var h = codes[hw];
        let hb = hw / WPB;
        if (hb != (*st).cb[j]) {
            (*st).cb[j] = hb;
            (*st).ca[j] = block_absmax(hb);
        }
        ha[j] = (*st).ca[j];
        cw[j] = h;
        la[j] = ha[j];
        split[j] = 8u;
        if (SHIFTED) {
            h = linear(h);
            let sj = (*st).s[j];
            if (sj == 0u) {
                cw[j] = h;
            } else {
                cw[j] = ((*st).pw[j] >> (4u * sj)) | (h << (32u - 4u * sj));
                la[j] = (*st).pa[j];
                split[j] = 8u - sj;
            }
            (*st).pw[j] = h;
            (*st).pa[j] = ha[j];
        }
    }
    for (var q = 0u; q < 8u; q++) {
        var v: array<f32, 8>;
        for (var j = 0u; j < 8u; j++) {
            v[j] = nf4_value((cw[j] >> nib(q)) & 15u) * select(ha[j], la[j], q < split[j]);
        }
        let wa = rc4(vec4<f32>(v[0], v[1], v[2], v[3]));
        let wb = rc4(vec4<f32>(v[4], v[5], v[6], v[7]));
        let kq = kk + q;
        for (var i = 0u; i < ROWS; i++) {
            // Past K (last step when K % 8 != 0): x reads as 0, its index clamped into the row.
            let xs = select(0.0, rc(x[(*st).xo[i] + min(kq, p.k - 1u)]), kq < p.k);
            (*st).acc[2u * i] += xs * wa;
            (*st).acc[2u * i + 1u] += xs * wb;
        }
    }
}

fn store(row: u32, col: u32, v: f32) {
    if (col < p.n) {
        let i = row * p.n + col;
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

    var st: State;
    for (var j = 0u; j < 8u; j++) {
        let f = min(c0 + j, p.n - 1u) * K;
        st.f[j] = f;
        st.cb[j] = 0xffffffffu;
        if (SHIFTED) {
            st.s[j] = f % 8u;
            let w0 = min(f / 8u, p.nwords - 1u);
            st.pw[j] = linear(codes[w0]);
            st.pa[j] = block_absmax(w0 / WPB);
        }
    }
    for (var i = 0u; i < ROWS; i++) {
        st.xo[i] = min(r0 + i, p.m - 1u) * K;
    }

    for (var kk = 0u; kk < K; kk += 8u) {
        step(&st, kk);
    }

    for (var i = 0u; i < ROWS; i++) {
        let row = r0 + i;
        if (row < p.m) {
            let a = st.acc[2u * i];
            let b = st.acc[2u * i + 1u];
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
// As nn/matmul_fwd's `tiled`: a workgroup of 256 invocations owns a 64×64 tile of y and walks K in
// stages of 16, loading x's 64×16 block and W's 64×16 block into workgroup memory; W's block is
// dequantized as it is loaded (each invocation 4 consecutive k of one W row: one code word and one
// scale when K % 4 == 0, element by element otherwise), so the f32 weight exists only one stage at
// a time in workgroup memory. Values past M, N or K load as 0; sums run in increasing k. The
// launcher sets ntn = ceil(n / 64) and ntiles = ceil(m / 64) * ntn.

const TT: u32 = 64u;    // tile side (outputs)
const TK: u32 = 16u;    // k per stage
const TP: u32 = 65u;    // padded stage row: (k q, row r) at q * TP + r

var<workgroup> sx: array<ct, 1040>;  // (TK, TP) stage of x, in the compute dtype
var<workgroup> sw: array<ct, 1040>;  // (TK, TP) stage of dequantized W, in the compute dtype

@compute @workgroup_size(256)
fn tiled(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let t = wid.x + wid.y * nwg.x;
    if (t >= p.ntiles) {
        return;
    }
    if (lid < 16u) {
        nf4_lut[lid] = nf4_value(lid);
    }
    workgroupBarrier();
    let r0 = (t / p.ntn) * TT;
    let c0 = (t % p.ntn) * TT;
    let tx = lid % 16u;
    let ty = lid / 16u;
    let lr = lid / 4u;
    let lq = (lid % 4u) * 4u;
    let xok = r0 + lr < p.m;
    let wok = c0 + lr < p.n;
    let xrow = min(r0 + lr, p.m - 1u) * p.k;
    let wrow = min(c0 + lr, p.n - 1u) * p.k;
    let aligned = p.k % 4u == 0u;
    var acc: array<vec4<f32>, 4>;  // acc[i][j]: row ty + 16i, column tx + 16j
    for (var k0 = 0u; k0 < p.k; k0 += TK) {
        let kq0 = k0 + lq;
        var wq = vec4<f32>(0.0);
        if (aligned) {
            if (wok && kq0 < p.k) {
                wq = w4_aligned(wrow + kq0);
            }
        } else {
            for (var q = 0u; q < 4u; q++) {
                let kq = kq0 + q;
                if (wok && kq < p.k) {
                    wq[q] = w1(wrow + kq);
                }
            }
        }
        for (var q = 0u; q < 4u; q++) {
            let kq = kq0 + q;
            sx[(lq + q) * TP + lr] = ct(select(0.0, x[xrow + min(kq, p.k - 1u)], xok && kq < p.k));
            sw[(lq + q) * TP + lr] = ct(wq[q]);
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
// As nn/matmul_fwd's `matvec`: one workgroup of 64 invocations per column of y, invocation lid
// dequantizing and multiplying k = lid, lid + 64, ... (neighbouring invocations read the same or
// neighbouring code words), then a workgroup-memory tree over the 64 partial sums of each row.

var<workgroup> mv: array<vec4<f32>, 128>;  // (64, 2): invocation i's partial sums of rows 0..3, 4..7

@compute @workgroup_size(64)
fn matvec(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let col = wid.x + wid.y * nwg.x;
    if (col >= p.n) {
        return;
    }
    if (lid < 16u) {
        nf4_lut[lid] = nf4_value(lid);
    }
    workgroupBarrier();
    let wbase = col * p.k;
    var lo = vec4<f32>(0.0);
    var hi = vec4<f32>(0.0);
    for (var kk = lid; kk < p.k; kk += 64u) {
        let wk = rc(w1(wbase + kk));
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
