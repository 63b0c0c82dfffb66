// Input gradient of the NF4 matmul: dx[M,K] (+)= dy[M,N] · dequant(W)[N,K], reading W's 4-bit
// codes and block scales directly (no weight gradient: the base weight is frozen).
//
// W layout as in nf4/matmul_fwd: element (row, k) is flat index e = row*K + k, 8 codes per u32
// word (element 2i in the high nibble of byte i), one scale per BLOCK flat elements; with
// K % 8 != 0 (SHIFTED) a run of 8 k values of one W row may span two words and two blocks.
//
// Register blocking without shared memory: an invocation owns ROWS rows × 8 consecutive k of dx
// (2 vec4 per row) and walks N: per W row it loads one code word (two with SHIFTED), one scale
// (reloaded only when the block changes), ROWS values of dy, and does ROWS × 8 multiply-adds.
// In the last k tile the lanes beyond K compute garbage from clamped indices and are not stored.
// Joined with nf4/common.wgsl, nf4/blocks_common.wgsl, nf4/matmul_common.wgsl (crates/gpu/src/shaders.rs).

override BLOCK: u32 = 64u;          // elements per scale block, a power of two in 32..4096
override DOUBLE_QUANT: bool = true; // absmax = dq[q] * dq[257 + b/256] + dq[256]
override ACCUMULATE: bool = false;  // dx += ... instead of dx = ...
override ROWS: u32 = 8u;            // rows of dx per invocation, 1..=8
override WG: u32 = 64u;             // invocations per workgroup (16 for M=1: more workgroups to share out)
override SHIFTED: bool = false;     // K % 8 != 0: W rows start in the middle of a code word
override WPB: u32 = BLOCK / 8u;     // code words per block

struct Params {
    m: u32,
    k: u32,
    n: u32,
    ntk: u32,      // ceil(k / 8): k tiles
    ntiles: u32,   // ceil(m / ROWS) * ntk
    nwords: u32,   // ceil(n*k / 8): code words
    _p0: u32,
    _p1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> dy: array<f32>;         // (M, N)
@group(0) @binding(2) var<storage, read> codes: array<u32>;      // (ceil(N*K/8)) packed nibbles
@group(0) @binding(3) var<storage, read> absmax: array<u32>;     // (ceil(nblocks/4)) u8 codes, or (nblocks) f32 bits
@group(0) @binding(4) var<storage, read> dq: array<f32>;         // (256 + 1 + nnested) [map, offset, nested], or (1) [0]
@group(0) @binding(5) var<storage, read_write> dx: array<f32>;   // (M, K)

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
    let lastw = p.nwords - 1u;

    var yo: array<u32, 8>;
    for (var i = 0u; i < ROWS; i++) {
        yo[i] = min(r0 + i, p.m - 1u) * N;
    }
    var acc: array<vec4<f32>, 16>;
    for (var i = 0u; i < 2u * ROWS; i++) {
        acc[i] = vec4<f32>(0.0);
    }

    var cb = 0xffffffffu;  // block of the cached scale
    var ca = 0.0;          // the cached scale
    for (var n = 0u; n < N; n++) {
        let e = n * K + k0;
        var c: u32;
        var la: f32;
        var ha: f32;
        var split = 8u;  // elements 0..split use la, the rest ha
        if (SHIFTED) {
            let s = e % 8u;
            let lw = e / 8u;
            let hw = min((e + 7u) / 8u, lastw);
            let lo = linear(codes[lw]);
            let hi = linear(codes[hw]);
            c = select((lo >> (4u * s)) | (hi << (32u - 4u * s)), lo, s == 0u);
            let lb = lw / WPB;
            if (lb != cb) {
                cb = lb;
                ca = block_absmax(lb);
            }
            la = ca;
            let hb = hw / WPB;
            if (hb != cb) {
                cb = hb;
                ca = block_absmax(hb);
            }
            ha = ca;
            split = select(8u - s, 8u, s == 0u);
        } else {
            let w = e / 8u;
            c = codes[w];
            let b = w / WPB;
            if (b != cb) {
                cb = b;
                ca = block_absmax(b);
            }
            la = ca;
            ha = ca;
        }
        var v: array<f32, 8>;
        for (var i = 0u; i < 8u; i++) {
            v[i] = nf4_value((c >> nib(i)) & 15u) * select(ha, la, i < split);
        }
        let wl = rc4(vec4<f32>(v[0], v[1], v[2], v[3]));
        let wh = rc4(vec4<f32>(v[4], v[5], v[6], v[7]));
        for (var i = 0u; i < ROWS; i++) {
            let d = rc(dy[yo[i] + n]);
            acc[2u * i] += d * wl;
            acc[2u * i + 1u] += d * wh;
        }
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
// As nn/matmul_bwd_input's `tiled`: a workgroup of 256 invocations owns a 64×64 tile of dx and
// walks N in stages of 16, loading dy's 64×16 block and W's 16×64 block into workgroup memory; W's
// block is dequantized as it is loaded (each invocation 4 consecutive k of one W row: one code word
// and one scale when K % 4 == 0, element by element otherwise). Values past M, N or K load as 0;
// sums run in increasing n. The launcher sets ntk = ceil(k / 64) and ntiles = ceil(m / 64) * ntk.

const TT: u32 = 64u;    // tile side (outputs)
const TN: u32 = 16u;    // n per stage
const TP: u32 = 65u;    // padded stage row: (n q, index r) at q * TP + r

var<workgroup> sd: array<ct, 1040>;  // (TN, TP) stage of dy: (n q, row r), compute dtype
var<workgroup> sw: array<ct, 1040>;  // (TN, TP) stage of dequantized W: (n q, k c), compute dtype

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
    let r0 = (t / p.ntk) * TT;
    let c0 = (t % p.ntk) * TT;
    let tx = lid % 16u;
    let ty = lid / 16u;
    let dr = lid / 4u;
    let dq_ = (lid % 4u) * 4u;
    let wn = lid / 16u;
    let wc = (lid % 16u) * 4u;
    let dok = r0 + dr < p.m;
    let drow = min(r0 + dr, p.m - 1u) * p.n;
    let aligned = p.k % 4u == 0u;
    var acc: array<vec4<f32>, 4>;  // acc[i][j]: row ty + 16i, k tx + 16j
    for (var n0 = 0u; n0 < p.n; n0 += TN) {
        let wr = n0 + wn;
        let kc0 = c0 + wc;
        let wbase = min(wr, p.n - 1u) * p.k;
        var wq = vec4<f32>(0.0);
        if (aligned) {
            if (wr < p.n && kc0 < p.k) {
                wq = w4_aligned(wbase + kc0);
            }
        } else {
            for (var q = 0u; q < 4u; q++) {
                if (wr < p.n && kc0 + q < p.k) {
                    wq[q] = w1(wbase + kc0 + q);
                }
            }
        }
        for (var q = 0u; q < 4u; q++) {
            let nq = n0 + dq_ + q;
            sd[(dq_ + q) * TP + dr] = ct(select(0.0, dy[drow + min(nq, p.n - 1u)], dok && nq < p.n));
            sw[wn * TP + wc + q] = ct(wq[q]);
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
