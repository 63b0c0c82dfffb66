//! Every WGSL kernel under `shaders/`, compiled into the binary with `include_str!` (same on native
//! and wasm). WGSL cannot import, so a kernel that shares helpers names the per-family common files
//! (`shaders/<family>/common.wgsl`, `shaders/<family>/<op>_common.wgsl`) it uses, and its
//! [`Shader::source`] is the kernel file followed by those files, joined with `concat!` at compile
//! time: plain WGSL, no templating. A test fails if a file under `shaders/` is neither a registered
//! kernel nor a common file some kernel uses, and validates every joined source with naga.

/// One WGSL kernel: its name is its path under `shaders/` without `.wgsl`.
#[derive(Clone, Copy, Debug)]
pub struct Shader {
    pub name: &'static str,
    /// The common files (names like `name`) joined after the kernel file, in order.
    pub commons: &'static [&'static str],
    /// The kernel file followed by its common files.
    pub source: &'static str,
}

macro_rules! shaders {
    ($($name:literal $(=> [$($common:literal),* $(,)?])?),* $(,)?) => {
        /// The shader registry.
        pub static SHADERS: &[Shader] = &[
            $(Shader {
                name: $name,
                commons: &[$($($common),*)?],
                source: concat!(
                    include_str!(concat!("../../../shaders/", $name, ".wgsl")),
                    $($("\n", include_str!(concat!("../../../shaders/", $common, ".wgsl")),)*)?
                ),
            },)*
        ];
    };
}

shaders!(
    "nf4/quantize" => ["nf4/common"],
    "nf4/absmax_mean" => ["nf4/common"],
    "nf4/absmax_quantize" => ["nf4/common"],
    "nf4/dequantize" => ["nf4/common", "nf4/blocks_common"],
    "nf4/matmul_fwd" => ["nf4/common", "nf4/blocks_common", "nf4/matmul_common", "nn/compute_common"],
    "nf4/matmul_bwd_input" => ["nf4/common", "nf4/blocks_common", "nf4/matmul_common", "nn/compute_common"],
    "nn/matmul_fwd" => ["nn/table_common", "nn/compute_common"],
    "nn/matmul_bwd_input" => ["nn/table_common", "nn/compute_common"],
    "nn/rmsnorm_fwd" => ["nn/rmsnorm_common"],
    "nn/rmsnorm_bwd" => ["nn/rmsnorm_common"],
    "nn/rope_fwd" => ["nn/rope_common"],
    "nn/rope_bwd" => ["nn/rope_common"],
    "nn/embedding_fwd" => ["nn/table_common"],
    "nn/swiglu_fwd" => ["nn/swiglu_common"],
    "nn/swiglu_bwd" => ["nn/swiglu_common"],
    "nn/cross_entropy_fwd",
    "nn/cross_entropy_bwd",
    "nn/add_fwd",
    "nn/dropout_fwd",
    "nn/attention_fwd" => ["nn/attention_common"],
    "nn/attention_bwd" => ["nn/attention_common"],
    "nn/bias_add_fwd",
    "nn/prefix_fwd",
    "nn/prefix_bwd",
    "nn/prefix_proj_fwd" => ["nn/prefix_proj_common"],
    "nn/prefix_proj_bwd" => ["nn/prefix_proj_common"],
    "lora/adapter_fwd" => ["lora/common"],
    "lora/adapter_bwd" => ["lora/common"],
    "optim/adamw_step",
    "optim/grad_norm",
    "probe/fma_peak",
);

/// The common file that declares the compute dtype of the frozen-weight matmuls' operands
/// (`alias ct = f32;`, see [`crate::ComputeDtype`]).
pub const COMPUTE_COMMON: &str = "nn/compute_common";

/// [`COMPUTE_COMMON`]'s text, which [`f16_source`] replaces.
const COMPUTE_F32: &str = include_str!("../../../shaders/nn/compute_common.wgsl");

/// The f16 form of [`COMPUTE_COMMON`] (`shaders/nn/compute_f16_common.wgsl`), joined by no kernel
/// as registered.
pub const COMPUTE_F16_COMMON: &str = "nn/compute_f16_common";
const COMPUTE_F16: &str = include_str!("../../../shaders/nn/compute_f16_common.wgsl");

/// Whether a kernel has an f16-operand form (it joins [`COMPUTE_COMMON`]).
pub fn has_compute_dtype(shader: &Shader) -> bool {
    shader.commons.contains(&COMPUTE_COMMON)
}

/// The f16-operand form of a kernel that joins [`COMPUTE_COMMON`]: `enable f16;` in front and
/// [`COMPUTE_F16_COMMON`]'s text in place of [`COMPUTE_COMMON`]'s — the one textual change made
/// to a kernel (a module using f16 must name the extension, and only devices with `SHADER_F16`
/// may compile it, so it cannot share the f32 module).
pub fn f16_source(shader: &Shader) -> String {
    debug_assert!(has_compute_dtype(shader) && shader.source.contains(COMPUTE_F32));
    format!(
        "enable f16;\n{}",
        shader.source.replacen(COMPUTE_F32, COMPUTE_F16, 1)
    )
}

/// Looks a shader up by name.
pub fn get(name: &str) -> Option<&'static Shader> {
    SHADERS.iter().find(|s| s.name == name)
}

/// Whether a file name under `shaders/` (without `.wgsl`) names a common file rather than a kernel.
pub fn is_common(name: &str) -> bool {
    name.rsplit('/')
        .next()
        .is_some_and(|f| f == "common" || f.ends_with("_common"))
}
