//! Llama-family models for tinytune: config, weight loading, forward/backward on the GPU, LoRA,
//! generation. Filled by the model issue; today it holds the storage type every linear layer uses.

use tinytune_gpu::ops::nf4::Nf4Weight;
use tinytune_gpu::GpuBuffer;

/// A frozen linear weight `[out, in]`: quantization is a storage detail, never a second model.
pub enum Weight {
    F32(GpuBuffer),
    Nf4(Nf4Weight),
}

/// Errors of the model crate.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Gpu(#[from] tinytune_gpu::GpuError),
}
