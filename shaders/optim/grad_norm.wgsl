// Global L2 norm of a flat gradient buffer, sqrt(Σ g²), for clip_grad_norm_ and logging.
//
// Two entry points, one dispatch each, in this order:
//   stage_partial: workgroup w sums g² over elements [w*CHUNK, (w+1)*CHUNK) into parts[w]
//                  (CHUNK = 256 * ITEMS; bindings 1 g, 2 parts)
//   stage_finish:  one workgroup sums parts[0..nparts) and writes out[0] = sqrt(total)
//                  (bindings 1 parts, 2 out)
// Each entry point declares its own bindings (the launcher passes exactly those buffers in that
// order); binding numbers repeat across entry points, never within one. Within a workgroup each
// invocation sums a strided run (coalesced loads), then a shared-memory tree adds the 256 values
// (8 barriers per workgroup, none in the load loop).

const WG: u32 = 256u;
const ITEMS: u32 = 16u;          // elements per invocation in stage_partial
const CHUNK: u32 = WG * ITEMS;   // elements per workgroup in stage_partial (4096)

struct Params {
    n: u32,       // gradient elements
    nparts: u32,  // ceil(n / CHUNK)
    _p0: u32,
    _p1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

// stage_partial
@group(0) @binding(1) var<storage, read> g: array<f32>;              // (n)
@group(0) @binding(2) var<storage, read_write> parts: array<f32>;    // (nparts) partial sums of g²

// stage_finish
@group(0) @binding(1) var<storage, read> parts_in: array<f32>;       // (nparts)
@group(0) @binding(2) var<storage, read_write> out: array<f32>;       // (1) out[0] = sqrt(Σ g²)

var<workgroup> red: array<f32, WG>;

// Tree-sums red[0..WG) into red[0]; every invocation must call it (uniform control flow).
fn reduce(lid: u32, v: f32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            red[lid] += red[lid + s];
        }
        workgroupBarrier();
    }
    return red[0];
}

@compute @workgroup_size(256)
fn stage_partial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let w = wid.x + wid.y * nwg.x;
    // Workgroups past nparts (from the x/y split) still reach the barriers, then store nothing.
    let base = w * CHUNK + lid;
    let last = max(p.n, 1u) - 1u;
    var acc = 0.0;
    for (var i = 0u; i < ITEMS; i++) {
        let idx = base + i * WG;
        let v = g[min(idx, last)];
        acc += select(0.0, v * v, idx < p.n);
    }
    let total = reduce(lid, acc);
    if (lid == 0u && w < p.nparts) {
        parts[w] = total;
    }
}

@compute @workgroup_size(256)
fn stage_finish(@builtin(local_invocation_index) lid: u32) {
    var acc = 0.0;
    // Trip count depends on uniform values only, so the barriers below stay in uniform control flow.
    for (var i = 0u; i < p.nparts; i += WG) {
        let idx = i + lid;
        if (idx < p.nparts) {
            acc += parts_in[idx];
        }
    }
    let total = reduce(lid, acc);
    if (lid == 0u) {
        out[0] = sqrt(total);
    }
}
