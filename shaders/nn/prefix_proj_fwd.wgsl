// Prefix tuning's projection (PEFT prefix_projection=True), forward: from the flat parameters
// [embedding (P, t) | w1 (e, t) | b1 (e) | w2 (n, e) | b2 (n)] (PEFT's parameter order), the
// hidden h = tanh(embedding · w1ᵀ + b1) (P, e) and the prefix kv = h · w2ᵀ + b2 (P, n), n = L*2*KVD.
// Plain loops (P is tens of rows; this runs once per optimizer step): entry point `hidden` has one
// invocation per element of h, `out` one per element of kv. Sums start from the bias and run in
// index order, as the reference does.
// Joined with nn/prefix_proj_common.wgsl (crates/gpu/src/shaders.rs).

const WG: u32 = 64u;

struct Params {
    p: u32,    // virtual tokens
    t: u32,    // token_dim (the KV width)
    e: u32,    // encoder_hidden_size
    n: u32,    // prefix row, L * 2 * KVD
    w1: u32,   // offsets into params
    b1: u32,
    w2: u32,
    b2: u32,
}

@group(0) @binding(0) var<uniform> u: Params;
@group(0) @binding(1) var<storage, read> params: array<f32>;      // (P*t + e*t + e + n*e + n)
// hidden
@group(0) @binding(2) var<storage, read_write> h_out: array<f32>;  // (P, e)
// out
@group(0) @binding(2) var<storage, read> h: array<f32>;            // (P, e)
@group(0) @binding(3) var<storage, read_write> kv: array<f32>;     // (P, n)

@compute @workgroup_size(64)
fn hidden(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i >= u.p * u.e) {
        return;
    }
    let r = i / u.e;
    let j = i % u.e;
    var s = params[u.b1 + j];
    for (var c = 0u; c < u.t; c++) {
        s += params[r * u.t + c] * params[u.w1 + j * u.t + c];
    }
    h_out[i] = tanh(s);
}

@compute @workgroup_size(64)
fn out(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
       @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i >= u.p * u.n) {
        return;
    }
    let r = i / u.n;
    let o = i % u.n;
    var s = params[u.b2 + o];
    for (var j = 0u; j < u.e; j++) {
        s += h[r * u.e + j] * params[u.w2 + o * u.e + j];
    }
    kv[i] = s;
}
