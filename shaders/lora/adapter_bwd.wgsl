// LoRA backward (PEFT) for an upstream gradient dY of Y += scale · (X·Aᵀ) · Bᵀ, given the saved H = X·Aᵀ.
//
// Four entry points, one dispatch each; stage_dh must run before stage_da and stage_dx:
//   stage_dh: dH[m,r]  = scale · Σ_n dY[m,n] B[n,r]   bindings 1 dy, 2 b, 3 dh     (dH overwritten)
//   stage_db: dB[n,r] += scale · Σ_m dY[m,n] H[m,r]   bindings 1 dy, 2 h, 3 db
//   stage_da: dA[r,k] += Σ_m dH[m,r] X[m,k]           bindings 1 dh, 2 x, 3 da
//   stage_dx: dX[m,k] += Σ_r dH[m,r] A[r,k]           bindings 1 dh, 2 a, 3 dx
// dA, dB and dX accumulate (+=) so gradient accumulation and the frozen base weight's share of dX
// add up in place; zeroing them is the caller's job. Each entry point declares its own bindings
// 1..3 (the launcher passes exactly those buffers in that order); binding numbers repeat across
// entry points, never within one.
//
// Each invocation computes a 4 x 4 output tile with vec4 accumulators, looping over the reduction
// index with no shared memory and no barriers (lavapipe-friendly). Tile rows/columns past the edge
// are clamped to the last valid index so loads never go out of range; their results are not
// stored. Every output is summed in increasing index order, like the CPU reference.
// Joined with lora/common.wgsl (crates/gpu/src/shaders.rs).

struct Params {
    m: u32,      // rows of X, Y
    k: u32,      // input features
    n: u32,      // output features
    r: u32,      // LoRA rank
    scale: f32,  // alpha / r (or alpha / sqrt(r) with rsLoRA)
    mc: u32,     // split_db / split_da: rows of X per split (the last split may have fewer)
    nsplit: u32, // split_db / split_da / reduce: splits
    len: u32,    // reduce: elements of the gradient (N*R for dB, R*K for dA)
}

@group(0) @binding(0) var<uniform> p: Params;

// stage_dh and stage_db
@group(0) @binding(1) var<storage, read> dy: array<f32>;            // (M, N)
// stage_dh
@group(0) @binding(2) var<storage, read> b: array<f32>;             // (N, R) lora_B.weight
@group(0) @binding(3) var<storage, read_write> dh: array<f32>;      // (M, R)
// stage_db
@group(0) @binding(2) var<storage, read> h: array<f32>;             // (M, R) saved X·Aᵀ
@group(0) @binding(3) var<storage, read_write> db: array<f32>;      // (N, R)
// stage_da and stage_dx
@group(0) @binding(1) var<storage, read> dh_in: array<f32>;         // (M, R)
// stage_da
@group(0) @binding(2) var<storage, read> x: array<f32>;             // (M, K)
@group(0) @binding(3) var<storage, read_write> da: array<f32>;      // (R, K)
// stage_dx
@group(0) @binding(2) var<storage, read> a: array<f32>;             // (R, K) lora_A.weight
@group(0) @binding(3) var<storage, read_write> dx: array<f32>;      // (M, K)

// split_db and split_da
@group(0) @binding(3) var<storage, read_write> part: array<f32>;    // (nsplit, N*R) or (nsplit, R*K)
// reduce
@group(0) @binding(1) var<storage, read> part_in: array<f32>;       // (nsplit, len)
@group(0) @binding(2) var<storage, read_write> grad: array<f32>;    // (len) dB or dA

const WG: u32 = 64u;

@compute @workgroup_size(64)
fn stage_dh(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let tiles_r = (p.r + 3u) / 4u;
    let id = linear_id(wid, nwg, lid);
    if (id >= ((p.m + 3u) / 4u) * tiles_r) {
        return;
    }
    let tm = id / tiles_r;
    let tr = id % tiles_r;
    let rows = tile4(tm, p.m) * p.n;  // dY row offsets
    let ranks = tile4(tr, p.r);       // B columns
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var c = 0u; c < p.n; c++) {
        let o = c * p.r;
        let bv = vec4<f32>(b[o + ranks.x], b[o + ranks.y], b[o + ranks.z], b[o + ranks.w]);
        acc0 += dy[rows.x + c] * bv;
        acc1 += dy[rows.y + c] * bv;
        acc2 += dy[rows.z + c] * bv;
        acc3 += dy[rows.w + c] * bv;
    }
    let m0 = tm * 4u;
    let r0 = tr * 4u;
    let accs = array<vec4<f32>, 4>(acc0, acc1, acc2, acc3);
    for (var i = 0u; i < 4u; i++) {
        let mi = m0 + i;
        if (mi < p.m) {
            for (var j = 0u; j < 4u; j++) {
                if (r0 + j < p.r) {
                    dh[mi * p.r + r0 + j] = p.scale * accs[i][j];
                }
            }
        }
    }
}

@compute @workgroup_size(64)
fn stage_db(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let tiles_r = (p.r + 3u) / 4u;
    let id = linear_id(wid, nwg, lid);
    if (id >= ((p.n + 3u) / 4u) * tiles_r) {
        return;
    }
    let tn = id / tiles_r;
    let tr = id % tiles_r;
    let cols = tile4(tn, p.n);   // dY columns
    let ranks = tile4(tr, p.r);  // H columns
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var i = 0u; i < p.m; i++) {
        let oh = i * p.r;
        let od = i * p.n;
        let hv = vec4<f32>(h[oh + ranks.x], h[oh + ranks.y], h[oh + ranks.z], h[oh + ranks.w]);
        acc0 += dy[od + cols.x] * hv;
        acc1 += dy[od + cols.y] * hv;
        acc2 += dy[od + cols.z] * hv;
        acc3 += dy[od + cols.w] * hv;
    }
    let n0 = tn * 4u;
    let r0 = tr * 4u;
    let accs = array<vec4<f32>, 4>(acc0, acc1, acc2, acc3);
    for (var c = 0u; c < 4u; c++) {
        let nc = n0 + c;
        if (nc < p.n) {
            for (var j = 0u; j < 4u; j++) {
                if (r0 + j < p.r) {
                    let o = nc * p.r + r0 + j;
                    db[o] = db[o] + p.scale * accs[c][j];
                }
            }
        }
    }
}

@compute @workgroup_size(64)
fn stage_da(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let tiles_k = (p.k + 3u) / 4u;
    let id = linear_id(wid, nwg, lid);
    if (id >= ((p.r + 3u) / 4u) * tiles_k) {
        return;
    }
    let tr = id / tiles_k;
    let tk = id % tiles_k;
    let ranks = tile4(tr, p.r);  // dH columns
    let feats = tile4(tk, p.k);  // X columns
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var i = 0u; i < p.m; i++) {
        let oh = i * p.r;
        let ox = i * p.k;
        let xv = vec4<f32>(x[ox + feats.x], x[ox + feats.y], x[ox + feats.z], x[ox + feats.w]);
        acc0 += dh_in[oh + ranks.x] * xv;
        acc1 += dh_in[oh + ranks.y] * xv;
        acc2 += dh_in[oh + ranks.z] * xv;
        acc3 += dh_in[oh + ranks.w] * xv;
    }
    let r0 = tr * 4u;
    let k0 = tk * 4u;
    let accs = array<vec4<f32>, 4>(acc0, acc1, acc2, acc3);
    for (var j = 0u; j < 4u; j++) {
        let rj = r0 + j;
        if (rj < p.r) {
            for (var t = 0u; t < 4u; t++) {
                if (k0 + t < p.k) {
                    let o = rj * p.k + k0 + t;
                    da[o] = da[o] + accs[j][t];
                }
            }
        }
    }
}

@compute @workgroup_size(64)
fn stage_dx(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let tiles_k = (p.k + 3u) / 4u;
    let id = linear_id(wid, nwg, lid);
    if (id >= ((p.m + 3u) / 4u) * tiles_k) {
        return;
    }
    let tm = id / tiles_k;
    let tk = id % tiles_k;
    let rows = tile4(tm, p.m) * p.r;  // dH row offsets
    let feats = tile4(tk, p.k);       // A columns
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var j = 0u; j < p.r; j++) {
        let oa = j * p.k;
        let av = vec4<f32>(a[oa + feats.x], a[oa + feats.y], a[oa + feats.z], a[oa + feats.w]);
        acc0 += dh_in[rows.x + j] * av;
        acc1 += dh_in[rows.y + j] * av;
        acc2 += dh_in[rows.z + j] * av;
        acc3 += dh_in[rows.w + j] * av;
    }
    let m0 = tm * 4u;
    let k0 = tk * 4u;
    let accs = array<vec4<f32>, 4>(acc0, acc1, acc2, acc3);
    for (var i = 0u; i < 4u; i++) {
        let mi = m0 + i;
        if (mi < p.m) {
            for (var t = 0u; t < 4u; t++) {
                if (k0 + t < p.k) {
                    let o = mi * p.k + k0 + t;
                    dx[o] = dx[o] + accs[i][t];
                }
            }
        }
    }
}

// ---- The GPU variant (crates/gpu/src/kernels.rs) of stage_db and stage_da ----
// stage_db and stage_da reduce over all M rows with one invocation per 4×4 output tile: for a
// LoRA layer that is a handful of workgroups, far too few for a GPU. split_db / split_da cut the
// rows into nsplit splits of mc rows; invocation (split s, tile) sums its tile over the split's
// rows (increasing) into part[s, ...] (dB's partials already scaled), and reduce adds the splits'
// partials in increasing s into the gradient: grad[o] += Σ_s part_in[s * len + o]. The grid of a
// split kernel is tiles fastest, then splits.

@compute @workgroup_size(64)
fn split_db(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let tiles_r = (p.r + 3u) / 4u;
    let ntiles = ((p.n + 3u) / 4u) * tiles_r;
    let id = linear_id(wid, nwg, lid);
    if (id >= ntiles * p.nsplit) {
        return;
    }
    let sp = id / ntiles;
    let tile = id % ntiles;
    let tn = tile / tiles_r;
    let tr = tile % tiles_r;
    let cols = tile4(tn, p.n);
    let ranks = tile4(tr, p.r);
    var acc = array<vec4<f32>, 4>();
    let m_end = min((sp + 1u) * p.mc, p.m);
    for (var i = sp * p.mc; i < m_end; i++) {
        let oh = i * p.r;
        let od = i * p.n;
        let hv = vec4<f32>(h[oh + ranks.x], h[oh + ranks.y], h[oh + ranks.z], h[oh + ranks.w]);
        acc[0] += dy[od + cols.x] * hv;
        acc[1] += dy[od + cols.y] * hv;
        acc[2] += dy[od + cols.z] * hv;
        acc[3] += dy[od + cols.w] * hv;
    }
    let n0 = tn * 4u;
    let r0 = tr * 4u;
    let base = sp * p.n * p.r;
    for (var c = 0u; c < 4u; c++) {
        let nc = n0 + c;
        if (nc < p.n) {
            for (var j = 0u; j < 4u; j++) {
                if (r0 + j < p.r) {
                    part[base + nc * p.r + r0 + j] = p.scale * acc[c][j];
                }
            }
        }
    }
}

@compute @workgroup_size(64)
fn split_da(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let tiles_k = (p.k + 3u) / 4u;
    let ntiles = ((p.r + 3u) / 4u) * tiles_k;
    let id = linear_id(wid, nwg, lid);
    if (id >= ntiles * p.nsplit) {
        return;
    }
    let sp = id / ntiles;
    let tile = id % ntiles;
    let tr = tile / tiles_k;
    let tk = tile % tiles_k;
    let ranks = tile4(tr, p.r);
    let feats = tile4(tk, p.k);
    var acc = array<vec4<f32>, 4>();
    let m_end = min((sp + 1u) * p.mc, p.m);
    for (var i = sp * p.mc; i < m_end; i++) {
        let oh = i * p.r;
        let ox = i * p.k;
        let xv = vec4<f32>(x[ox + feats.x], x[ox + feats.y], x[ox + feats.z], x[ox + feats.w]);
        acc[0] += dh_in[oh + ranks.x] * xv;
        acc[1] += dh_in[oh + ranks.y] * xv;
        acc[2] += dh_in[oh + ranks.z] * xv;
        acc[3] += dh_in[oh + ranks.w] * xv;
    }
    let r0 = tr * 4u;
    let k0 = tk * 4u;
    let base = sp * p.r * p.k;
    for (var j = 0u; j < 4u; j++) {
        let rj = r0 + j;
        if (rj < p.r) {
            for (var t = 0u; t < 4u; t++) {
                if (k0 + t < p.k) {
                    part[base + rj * p.k + k0 + t] = acc[j][t];
                }
            }
        }
    }
}

@compute @workgroup_size(64)
fn reduce(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let o = linear_id(wid, nwg, lid);
    if (o >= p.len) {
        return;
    }
    var s = 0.0;
    for (var sp = 0u; sp < p.nsplit; sp++) {
        s += part_in[sp * p.len + o];
    }
    grad[o] = grad[o] + s;
}
