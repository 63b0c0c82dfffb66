// Softmax cross-entropy backward, in place over the logits (saves an M x V buffer):
//   logits[r, j] <- (exp(logits[r, j] - lse[r]) - [j == target[r]]) * scale
// for counted rows, and 0 for ignored rows (target outside [0, V): -100, or any other out-of-range
// value, which is never used as an index). lse comes from cross_entropy_fwd on the same logits;
// scale is the caller's upstream factor (1 / number of counted rows for the mean loss).
//
// One workgroup per row, each invocation a strided slice of it (coalesced loads and stores, no
// shared memory, no barriers).

const WG: u32 = 256u;

struct Params {
    m: u32,      // rows
    v: u32,      // vocabulary (row length)
    scale: f32,  // gradient of the loss with respect to each row's loss (1 / count for the mean)
    _p0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> logits: array<f32>;  // (M, V) in: logits, out: dlogits
@group(0) @binding(2) var<storage, read> targets: array<i32>;       // (M) -100 = ignore
@group(0) @binding(3) var<storage, read> lse: array<f32>;           // (M) from cross_entropy_fwd

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= p.m) {
        return;
    }
    let t = targets[row];
    let base = row * p.v;
    if (t < 0 || u32(t) >= p.v) {
        for (var j = lid; j < p.v; j += WG) {
            logits[base + j] = 0.0;
        }
        return;
    }
    let l = lse[row];
    let tu = u32(t);
    for (var j = lid; j < p.v; j += WG) {
        let prob = exp(logits[base + j] - l);
        logits[base + j] = (prob - select(0.0, 1.0, j == tu)) * p.scale;
    }
}
