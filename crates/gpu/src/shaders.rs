//! Every WGSL file under `shaders/`, compiled into the binary with `include_str!` (same on native
//! and wasm). A test fails if a file under `shaders/` is missing here.

/// One WGSL file: its name is its path under `shaders/` without `.wgsl`.
#[derive(Clone, Copy, Debug)]
pub struct Shader {
    pub name: &'static str,
    pub source: &'static str,
}

macro_rules! shaders {
    ($($name:literal),* $(,)?) => {
        /// The shader registry.
        pub static SHADERS: &[Shader] = &[
            $(Shader { name: $name, source: include_str!(concat!("../../../shaders/", $name, ".wgsl")) },)*
        ];
    };
}

shaders!(
    "nf4/quantize",
    "nf4/absmax_mean",
    "nf4/absmax_quantize",
    "nf4/dequantize",
    "nf4/matmul_fwd",
    "nf4/matmul_bwd_input",
    "nn/matmul_fwd",
    "nn/matmul_bwd_input",
    "nn/rmsnorm_fwd",
    "nn/rmsnorm_bwd",
    "nn/rope_fwd",
    "nn/rope_bwd",
    "nn/embedding_fwd",
    "nn/swiglu_fwd",
    "nn/swiglu_bwd",
    "nn/cross_entropy_fwd",
    "nn/cross_entropy_bwd",
    "nn/add_fwd",
    "nn/dropout_fwd",
    "nn/attention_fwd",
    "nn/attention_bwd",
    "nn/bias_add_fwd",
    "nn/prefix_fwd",
    "nn/prefix_bwd",
    "nn/prefix_proj_fwd",
    "nn/prefix_proj_bwd",
    "lora/fwd",
    "lora/bwd",
    "optim/adamw_step",
    "optim/grad_norm",
);

/// Looks a shader up by name.
pub fn get(name: &str) -> Option<&'static Shader> {
    SHADERS.iter().find(|s| s.name == name)
}
