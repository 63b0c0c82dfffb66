// Prefix tuning (PEFT PREFIX_TUNING), backward of nn/prefix_fwd: from the gradients of one layer's
// prefixed keys and values dkf/dvf (B*(P+T), KVD), writes the real tokens' dk/dv (B*T, KVD) and
// adds the prefix rows, summed over the batch in sequence order, into the layer's columns of the
// prefix gradient (P, L*2*KVD) (keys at `col`, values at col + KVD).
//
// Invocations 0..B*T*KVD copy one element of dk and dv; the next P*KVD each sum one prefix element
// of both. No atomics: every gradient element has one writer.

const WG: u32 = 64u;

struct Params {
    b: u32,       // sequences
    t: u32,       // real tokens per sequence
    p: u32,       // virtual tokens
    kvd: u32,     // KVH * D
    stride: u32,  // prefix row length, L * 2 * KVD
    col: u32,     // this layer's key column, l * 2 * KVD
    n: u32,       // (B * T + P) * KVD
    _p0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> dkf: array<f32>;           // (B*(P+T), KVD)
@group(0) @binding(2) var<storage, read> dvf: array<f32>;           // (B*(P+T), KVD)
@group(0) @binding(3) var<storage, read_write> dk: array<f32>;      // (B*T, KVD)
@group(0) @binding(4) var<storage, read_write> dv: array<f32>;      // (B*T, KVD)
@group(0) @binding(5) var<storage, read_write> grad: array<f32>;    // (P, L*2*KVD)

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * nwg.x) * WG + lid;
    if (i >= p.n) {
        return;
    }
    let tk = p.p + p.t;
    let ncopy = p.b * p.t * p.kvd;
    if (i < ncopy) {
        let c = i % p.kvd;
        let row = i / p.kvd;          // b * T + t
        let at = ((row / p.t) * tk + p.p + row % p.t) * p.kvd + c;
        dk[i] = dkf[at];
        dv[i] = dvf[at];
        return;
    }
    let e = i - ncopy;                // j * KVD + c
    let c = e % p.kvd;
    let j = e / p.kvd;
    var sk = 0.0;
    var sv = 0.0;
    for (var bi = 0u; bi < p.b; bi++) {
        let at = (bi * tk + j) * p.kvd + c;
        sk += dkf[at];
        sv += dvf[at];
    }
    let g = j * p.stride + p.col + c;
    grad[g] = grad[g] + sk;
    grad[g + p.kvd] = grad[g + p.kvd] + sv;
}
