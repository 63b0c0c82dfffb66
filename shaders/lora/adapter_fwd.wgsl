// LoRA forward (PEFT): H = X · Aᵀ (saved for the backward), then Y += scale · H · Bᵀ.
//
// Two entry points, one dispatch each, in this order (the second reads all of H):
//   stage_h: H[m,r]  = Σ_k X[m,k] A[r,k]            bindings 1 x, 2 a, 3 h
//   stage_y: Y[m,n] += scale · Σ_r H[m,r] B[n,r]    bindings 1 h, 2 b, 3 y
// Each entry point declares its own bindings 1..3 (the launcher passes exactly those buffers in
// that order); binding numbers repeat across entry points, never within one.
//
// Each invocation computes a 4 x 4 output tile with vec4 accumulators, looping over the reduction
// index with no shared memory and no barriers (lavapipe-friendly). Tile rows/columns past the edge
// are clamped to the last valid index so loads never go out of range and loops stay branch-free;
// their results are simply not stored. Every output is summed in increasing index order, the same
// order as the CPU reference.
// Joined with lora/common.wgsl (crates/gpu/src/shaders.rs).

struct Params {
    m: u32,      // rows of X, Y, H
    k: u32,      // input features
    n: u32,      // output features
    r: u32,      // LoRA rank
    scale: f32,  // alpha / r (or alpha / sqrt(r) with rsLoRA)
    mc: u32,      // unused here (lora/adapter_bwd's split kernels)
    nsplit: u32,  // unused here
    len: u32,     // unused here
}

@group(0) @binding(0) var<uniform> p: Params;

// stage_h
@group(0) @binding(1) var<storage, read> x: array<f32>;             // (M, K)
@group(0) @binding(2) var<storage, read> a: array<f32>;             // (R, K) lora_A.weight
@group(0) @binding(3) var<storage, read_write> h: array<f32>;       // (M, R)

// stage_y
@group(0) @binding(1) var<storage, read> h_in: array<f32>;          // (M, R)
@group(0) @binding(2) var<storage, read> b: array<f32>;             // (N, R) lora_B.weight
@group(0) @binding(3) var<storage, read_write> y: array<f32>;       // (M, N)

const WG: u32 = 64u;

@compute @workgroup_size(64)
fn stage_h(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let tiles_r = (p.r + 3u) / 4u;
    let id = linear_id(wid, nwg, lid);
    if (id >= ((p.m + 3u) / 4u) * tiles_r) {
        return;
    }
    let tm = id / tiles_r;
    let tr = id % tiles_r;
    let rows = tile4(tm, p.m) * p.k;   // X row offsets
    let ranks = tile4(tr, p.r) * p.k;  // A row offsets
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var kk = 0u; kk < p.k; kk++) {
        let av = vec4<f32>(a[ranks.x + kk], a[ranks.y + kk], a[ranks.z + kk], a[ranks.w + kk]);
        acc0 += x[rows.x + kk] * av;
        acc1 += x[rows.y + kk] * av;
        acc2 += x[rows.z + kk] * av;
        acc3 += x[rows.w + kk] * av;
    }
    let m0 = tm * 4u;
    let r0 = tr * 4u;
    let accs = array<vec4<f32>, 4>(acc0, acc1, acc2, acc3);
    for (var i = 0u; i < 4u; i++) {
        let mi = m0 + i;
        if (mi < p.m) {
            for (var j = 0u; j < 4u; j++) {
                if (r0 + j < p.r) {
                    h[mi * p.r + r0 + j] = accs[i][j];
                }
            }
        }
    }
}

@compute @workgroup_size(64)
fn stage_y(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let tiles_n = (p.n + 3u) / 4u;
    let id = linear_id(wid, nwg, lid);
    if (id >= ((p.m + 3u) / 4u) * tiles_n) {
        return;
    }
    let tm = id / tiles_n;
    let tn = id % tiles_n;
    let rows = tile4(tm, p.m) * p.r;  // H row offsets
    let cols = tile4(tn, p.n) * p.r;  // B row offsets
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var j = 0u; j < p.r; j++) {
        let bv = vec4<f32>(b[cols.x + j], b[cols.y + j], b[cols.z + j], b[cols.w + j]);
        acc0 += h_in[rows.x + j] * bv;
        acc1 += h_in[rows.y + j] * bv;
        acc2 += h_in[rows.z + j] * bv;
        acc3 += h_in[rows.w + j] * bv;
    }
    let m0 = tm * 4u;
    let n0 = tn * 4u;
    let accs = array<vec4<f32>, 4>(acc0, acc1, acc2, acc3);
    for (var i = 0u; i < 4u; i++) {
        let mi = m0 + i;
        if (mi < p.m) {
            for (var c = 0u; c < 4u; c++) {
                if (n0 + c < p.n) {
                    let o = mi * p.n + n0 + c;
                    y[o] = y[o] + p.scale * accs[i][c];
                }
            }
        }
    }
}
