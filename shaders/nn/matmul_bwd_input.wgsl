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
    return table_value(w[table_word(i)], i);
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
            let d = dy[yo[i] + n];
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
