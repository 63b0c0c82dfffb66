// Prefix tuning (PEFT PREFIX_TUNING), forward: one layer's attention keys and values with the
// trainable prefix in front of every sequence, kf/vf[b*(P+T) + j] = prefix row j (j < P), else
// k/v[b*T + j - P].
//
// The prefix is PEFT's prompt_embeddings (P, L*2*KVD): row j, columns (l*2 + s)*KVD.. hold the key
// (s = 0) or value (s = 1) of layer l; `col` is this layer's key column (l*2*KVD), its values follow
// at col + KVD. One invocation per element of kf (it also writes the same element of vf).

const WG: u32 = 64u;

struct Params {
    b: u32,       // sequences
    t: u32,       // real tokens per sequence
    p: u32,       // virtual tokens
    kvd: u32,     // KVH * D
    stride: u32,  // prefix row length, L * 2 * KVD
    col: u32,     // this layer's key column, l * 2 * KVD
    n: u32,       // B * (P + T) * KVD
    _p0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> prefix: array<f32>;      // (P, L*2*KVD)
@group(0) @binding(2) var<storage, read> k: array<f32>;           // (B*T, KVD)
@group(0) @binding(3) var<storage, read> v: array<f32>;           // (B*T, KVD)
@group(0) @binding(4) var<storage, read_write> kf: array<f32>;    // (B*(P+T), KVD)
@group(0) @binding(5) var<storage, read_write> vf: array<f32>;    // (B*(P+T), KVD)

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * nwg.x) * WG + lid;
    if (i >= p.n) {
        return;
    }
    let c = i % p.kvd;
    let row = i / p.kvd;              // b * (P + T) + j
    let j = row % (p.p + p.t);
    let bi = row / (p.p + p.t);
    if (j < p.p) {
        let at = j * p.stride + p.col + c;
        kf[i] = prefix[at];
        vf[i] = prefix[at + p.kvd];
    } else {
        let at = (bi * p.t + j - p.p) * p.kvd + c;
        kf[i] = k[at];
        vf[i] = v[at];
    }
}
