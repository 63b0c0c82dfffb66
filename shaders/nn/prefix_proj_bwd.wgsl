// Prefix tuning's projection, backward of nn/prefix_proj_fwd for the prefix gradient dkv (P, n):
// writes the gradient of every parameter into `grads` (the layout of the flat parameters,
// [embedding | w1 | b1 | w2 | b2]). Three entry points, run in order:
// - `w2`: dW2 = dkvᵀ · h and db2 = Σ_rows dkv (n*e + n invocations);
// - `dpre`: dpre = (dkv · w2) ⊙ (1 - h²) (P*e invocations) into a scratch buffer;
// - `w1`: dW1 = dpreᵀ · embedding, db1 = Σ_rows dpre and d(embedding) = dpre · w1
//   (e*t + e + P*t invocations).
// Plain loops, sums in index order (as the reference); every element has one writer.
// Joined with nn/prefix_proj_common.wgsl (crates/gpu/src/shaders.rs).

const WG: u32 = 64u;

struct Params {
    p: u32,    // virtual tokens
    t: u32,    // token_dim (the KV width)
    e: u32,    // encoder_hidden_size
    n: u32,    // prefix row, L * 2 * KVD
    w1: u32,   // offsets into params / grads
    b1: u32,
    w2: u32,
    b2: u32,
}

@group(0) @binding(0) var<uniform> u: Params;
// w2
@group(0) @binding(1) var<storage, read> dkv_a: array<f32>;          // (P, n)
@group(0) @binding(2) var<storage, read> h_a: array<f32>;            // (P, e)
@group(0) @binding(3) var<storage, read_write> grads_a: array<f32>;  // (P*t + e*t + e + n*e + n), like params
// dpre
@group(0) @binding(1) var<storage, read> params_b: array<f32>;       // (P*t + e*t + e + n*e + n)
@group(0) @binding(2) var<storage, read> h_b: array<f32>;            // (P, e)
@group(0) @binding(3) var<storage, read> dkv_b: array<f32>;          // (P, n)
@group(0) @binding(4) var<storage, read_write> dpre_b: array<f32>;   // (P, e)
// w1
@group(0) @binding(1) var<storage, read> params_c: array<f32>;       // (P*t + e*t + e + n*e + n)
@group(0) @binding(2) var<storage, read> dpre_c: array<f32>;         // (P, e)
@group(0) @binding(3) var<storage, read_write> grads_c: array<f32>;  // (P*t + e*t + e + n*e + n), like params

@compute @workgroup_size(64)
fn w2(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
      @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i < u.n * u.e) {
        let o = i / u.e;
        let j = i % u.e;
        var s = 0.0;
        for (var r = 0u; r < u.p; r++) {
            s += dkv_a[r * u.n + o] * h_a[r * u.e + j];
        }
        grads_a[u.w2 + i] = s;
    } else if (i < u.n * u.e + u.n) {
        let o = i - u.n * u.e;
        var s = 0.0;
        for (var r = 0u; r < u.p; r++) {
            s += dkv_a[r * u.n + o];
        }
        grads_a[u.b2 + o] = s;
    }
}

@compute @workgroup_size(64)
fn dpre(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i >= u.p * u.e) {
        return;
    }
    let r = i / u.e;
    let j = i % u.e;
    var s = 0.0;
    for (var o = 0u; o < u.n; o++) {
        s += dkv_b[r * u.n + o] * params_b[u.w2 + o * u.e + j];
    }
    let hv = h_b[i];
    dpre_b[i] = s * (1.0 - hv * hv);
}

@compute @workgroup_size(64)
fn w1(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
      @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    let nw = u.e * u.t;
    if (i < nw) {
        let j = i / u.t;
        let c = i % u.t;
        var s = 0.0;
        for (var r = 0u; r < u.p; r++) {
            s += dpre_c[r * u.e + j] * params_c[r * u.t + c];
        }
        grads_c[u.w1 + i] = s;
    } else if (i < nw + u.e) {
        let j = i - nw;
        var s = 0.0;
        for (var r = 0u; r < u.p; r++) {
            s += dpre_c[r * u.e + j];
        }
        grads_c[u.b1 + j] = s;
    } else if (i < nw + u.e + u.p * u.t) {
        let k = i - nw - u.e;
        let r = k / u.t;
        let c = k % u.t;
        var s = 0.0;
        for (var j = 0u; j < u.e; j++) {
            s += dpre_c[r * u.e + j] * params_c[u.w1 + j * u.t + c];
        }
        grads_c[k] = s;
    }
}
