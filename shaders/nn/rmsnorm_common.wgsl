// Workgroup tree sum of nn/rmsnorm_fwd and nn/rmsnorm_bwd (joined by the shader registry). Uses the
// kernel's `const WG` and `var<workgroup> red: array<f32, WG>`.

// Tree-sums v over the workgroup; every invocation gets the total (call in uniform control flow).
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
