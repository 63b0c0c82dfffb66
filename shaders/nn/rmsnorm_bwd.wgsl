// RMSNorm backward (see rmsnorm_fwd.wgsl). Two entry points, one dispatch each:
//
//   main:        dx[m,c] (+)= r * g[c] - x[m,c] * (r³ / C) * Σ_k g[k] x[m,k],  g = w ⊙ dy[m,:],
//                r = rstd[m]; one workgroup per row, the dot product summed like the forward's
//                squares (strided runs, then a shared-memory tree).
//                Bindings 1 dy, 2 x, 3 rstd, 4 w, 5 dx.  ACCUMULATE adds into dx (the residual
//                stream's gradient) instead of overwriting it.
//   weight_grad: dw[c] (+)= Σ_m dy[m,c] * (x[m,c] * rstd[m]); one invocation per column walking
//                the rows in order (neighbouring invocations read neighbouring columns).
//                Bindings 1 dy, 2 x, 3 rstd, 4 dw.  ACCUMULATE adds into dw.
//
// Each entry point declares its own bindings (the launcher passes exactly those buffers in that
// order); binding numbers repeat across entry points, never within one.
// Joined with nn/rmsnorm_common.wgsl (crates/gpu/src/shaders.rs).

override ACCUMULATE: bool = false;

const WG: u32 = 64u;

struct Params {
    m: u32,       // rows
    c: u32,       // columns
    inv_c: f32,   // 1 / C, rounded to f32 on the host
    _p0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> dy: array<f32>;           // (M, C)
@group(0) @binding(2) var<storage, read> x: array<f32>;            // (M, C)
@group(0) @binding(3) var<storage, read> rstd: array<f32>;         // (M) saved by the forward

// main
@group(0) @binding(4) var<storage, read> w: array<f32>;            // (C)
@group(0) @binding(5) var<storage, read_write> dx: array<f32>;     // (M, C)

// weight_grad
@group(0) @binding(4) var<storage, read_write> dw: array<f32>;     // (C)

var<workgroup> red: array<f32, WG>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let row = wid.x + wid.y * nwg.x;
    // Uniform per workgroup: spare workgroups of the x/y split leave before any barrier.
    if (row >= p.m) {
        return;
    }
    let base = row * p.c;
    var acc = 0.0;
    for (var j = lid; j < p.c; j += WG) {
        acc += (w[j] * dy[base + j]) * x[base + j];
    }
    let dot = reduce(lid, acc);
    let r = rstd[row];
    let coef = (r * r * r) * (dot * p.inv_c);
    for (var j = lid; j < p.c; j += WG) {
        let g = r * (w[j] * dy[base + j]) - x[base + j] * coef;
        if (ACCUMULATE) {
            dx[base + j] += g;
        } else {
            dx[base + j] = g;
        }
    }
}

@compute @workgroup_size(64)
fn weight_grad(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let col = (wid.x + wid.y * nwg.x) * WG + lid;
    if (col >= p.c) {
        return;
    }
    var acc = 0.0;
    for (var r = 0u; r < p.m; r++) {
        let i = r * p.c + col;
        acc += dy[i] * (x[i] * rstd[r]);
    }
    if (ACCUMULATE) {
        dw[col] += acc;
    } else {
        dw[col] = acc;
    }
}
