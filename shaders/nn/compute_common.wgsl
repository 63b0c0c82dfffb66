// The compute dtype of the frozen-weight matmuls' operands (crates/gpu/src/kernels.rs,
// ComputeDtype), joined by nn/matmul_fwd, nn/matmul_bwd_input, nf4/matmul_fwd and
// nf4/matmul_bwd_input. This file is the f32 form: `ct` is f32 and rc / rc4 return their
// operands. For f16 compute the shader registry (crates/gpu/src/shaders.rs, f16_source) puts
// `enable f16;` in front of the kernel and this file's text is replaced by
// nn/compute_f16_common.wgsl. Operands pass through rc / rc4 as they are loaded and the GPU
// variant stages them in workgroup arrays of `ct`; products are taken in f32 and summed in f32.
alias ct = f32;

// One operand in the compute dtype, as f32.
fn rc(v: f32) -> f32 {
    return v;
}

// Four operands in the compute dtype, as f32.
fn rc4(v: vec4<f32>) -> vec4<f32> {
    return v;
}
