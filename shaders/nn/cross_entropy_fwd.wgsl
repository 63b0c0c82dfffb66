// Softmax cross-entropy forward over LM-head logits (HF causal-LM loss, ignore_index = -100).
//
// Two entry points, one dispatch each, in this order (the second is optional):
//   main:      one workgroup per row r: lse[r] = logsumexp(logits[r, :]) and
//              loss_rows[r] = lse[r] - logits[r, target[r]]   bindings 1 logits, 2 targets,
//              3 loss_rows, 4 lse
//   stage_sum: one workgroup: total = (Σ loss_rows over counted rows, count, sum / count)
//              bindings 1 loss_in, 2 targets, 3 total
// Each entry point declares its own bindings (the launcher passes exactly those buffers in that
// order); binding numbers repeat across entry points, never within one.
//
// A row is ignored when its target is outside [0, V) (-100, or anything else out of range, which
// torch would reject): loss_rows[r] = lse[r] = 0, it is not counted, and its logits are never
// indexed by the target. `mean` is 0 when no row is counted (torch: NaN).
//
// main: each invocation runs an online (max, sum-exp) over a strided slice of the row (coalesced
// loads, one exp per element, no barriers in the loop), then one shared-memory tree merges the WG
// pairs (log2(WG) barriers per row).

const WG: u32 = 256u;
// Start of a running max: finite, so differences stay finite and exp() of them is 0.
const NEG_BIG: f32 = -3.0e38;

struct Params {
    m: u32,  // rows
    v: u32,  // vocabulary (row length)
    _p0: u32,
    _p1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

// main
@group(0) @binding(1) var<storage, read> logits: array<f32>;           // (M, V)
@group(0) @binding(2) var<storage, read> targets: array<i32>;          // (M) -100 = ignore
@group(0) @binding(3) var<storage, read_write> loss_rows: array<f32>;  // (M)
@group(0) @binding(4) var<storage, read_write> lse: array<f32>;        // (M)

// stage_sum
@group(0) @binding(1) var<storage, read> loss_in: array<f32>;          // (M)
@group(0) @binding(3) var<storage, read_write> total: array<f32>;      // (3) sum, count, mean

var<workgroup> red_a: array<f32, WG>;
var<workgroup> red_b: array<f32, WG>;

// Merges the running pair (m, s) -- meaning s * exp(m) -- with (m2, s2), with one exp.
fn merge(m: f32, s: f32, m2: f32, s2: f32) -> vec2<f32> {
    let e = exp(-abs(m - m2));
    return vec2<f32>(max(m, m2), select(s + s2 * e, s * e + s2, m2 > m));
}

fn valid_target(t: i32) -> bool {
    return t >= 0 && u32(t) < p.v;
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let row = wid.x + wid.y * nwg.x;
    // Uniform per workgroup: surplus workgroups of the x/y split leave before any barrier.
    if (row >= p.m) {
        return;
    }
    let t = targets[row];
    let valid = valid_target(t);
    let base = row * p.v;
    // Ignored rows skip the loop (no barrier inside, so a non-uniform bound is fine).
    let end = select(0u, p.v, valid);
    var m = NEG_BIG;
    var s = 0.0;
    for (var j = lid; j < end; j += WG) {
        let x = logits[base + j];
        let e = exp(-abs(x - m));
        s = select(s + e, s * e + 1.0, x > m);
        m = max(m, x);
    }
    red_a[lid] = m;
    red_b[lid] = s;
    workgroupBarrier();
    for (var k = WG / 2u; k > 0u; k >>= 1u) {
        if (lid < k) {
            let r = merge(red_a[lid], red_b[lid], red_a[lid + k], red_b[lid + k]);
            red_a[lid] = r.x;
            red_b[lid] = r.y;
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        var l = 0.0;
        var loss = 0.0;
        if (valid) {
            l = red_a[0] + log(red_b[0]);
            loss = l - logits[base + u32(t)];
        }
        lse[row] = l;
        loss_rows[row] = loss;
    }
}

@compute @workgroup_size(256)
fn stage_sum(@builtin(local_invocation_index) lid: u32) {
    var acc = 0.0;
    var cnt = 0u;
    for (var r = lid; r < p.m; r += WG) {
        if (valid_target(targets[r])) {
            acc += loss_in[r];
            cnt += 1u;
        }
    }
    red_a[lid] = acc;
    red_b[lid] = f32(cnt);
    workgroupBarrier();
    for (var k = WG / 2u; k > 0u; k >>= 1u) {
        if (lid < k) {
            red_a[lid] += red_a[lid + k];
            red_b[lid] += red_b[lid + k];
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        let sum = red_a[0];
        let count = red_b[0];
        total[0] = sum;
        total[1] = count;
        total[2] = select(0.0, sum / max(count, 1.0), count > 0.0);
    }
}
