// Vector helpers shared by nn/attention_fwd and nn/attention_bwd (joined by the shader registry).
// Pure functions.

// Scores of one query row chunk: (x·k0, x·k1, x·k2, x·k3).
fn dot4(x: vec4<f32>, k0: vec4<f32>, k1: vec4<f32>, k2: vec4<f32>, k3: vec4<f32>) -> vec4<f32> {
    return vec4<f32>(dot(x, k0), dot(x, k1), dot(x, k2), dot(x, k3));
}

// Weighted sum of 8 rows: pa.x*v0 + ... + pb.w*v7.
fn wsum(pa: vec4<f32>, pb: vec4<f32>, v0: vec4<f32>, v1: vec4<f32>, v2: vec4<f32>, v3: vec4<f32>,
        v4: vec4<f32>, v5: vec4<f32>, v6: vec4<f32>, v7: vec4<f32>) -> vec4<f32> {
    return ((pa.x * v0 + pa.y * v1) + (pa.z * v2 + pa.w * v3))
         + ((pb.x * v4 + pb.y * v5) + (pb.z * v6 + pb.w * v7));
}
