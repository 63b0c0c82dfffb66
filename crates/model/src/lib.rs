//! Llama-family models for tinytune: config, weight loading, tokenizer (this layer), and later the
//! forward/backward pass on the GPU, LoRA and generation ([`KvDecoder`], [`sampling`]).
//!
//! # Loading a model
//! [`ModelSource::open`] takes either a Hugging Face folder (`config.json` + `model.safetensors` or
//! a sharded `model.safetensors.index.json`, plus `tokenizer.json`) or a `.gguf` file
//! (architectures `llama` and `qwen2`). Either way the model is presented in Hugging Face terms:
//! a [`LlamaConfig`] with `config.json` field names, tensors named like
//! `model.layers.3.self_attn.q_proj.weight` with torch shapes (`[out, in]` for linear weights), and
//! a [`Tokenizer`] (the `tokenizers` crate) with the chat template string.
//!
//! Tensors are converted one at a time to f32 on the host ([`ModelSource::load`] ->
//! [`HostTensor`]): files are memory-mapped natively (the page cache holds the bytes, never a
//! second full copy of the model), and any [`ByteSource`] (for instance a [`ChunkedBytes`] filled
//! from a JS stream in the browser) can stand in for a file.
//!
//! GGUF specifics: quantized types are dequantized with ggml's exact formulas ([`GgmlType`]),
//! GGUF names and reversed (`ne`) dims are mapped back to HF names and torch shapes, and the
//! Q/K row permutation that llama.cpp's converter applies to `llama` models is undone, so a GGUF
//! and the HF folder it was converted from load to the same tensors (up to quantization).

pub mod blocks;
pub mod bnb;
pub mod bytes;
pub mod config;
pub mod dtype;
pub mod float;
pub mod generate;
pub mod gguf;
pub mod llama;
pub mod lora;
pub mod prefix;
pub mod prompt;
pub mod random;
pub mod rope;
pub mod safetensors;
pub mod sampling;
pub mod source;
pub mod targets;
pub mod tensor;
pub mod tokenizer;
pub mod vocab;

pub use blocks::{BlockPlan, BlockSpec, PlanReport};
#[cfg(not(target_arch = "wasm32"))]
pub use bytes::MmapBytes;
pub use bytes::{ByteSource, ChunkedBytes, MemBytes};
pub use config::{LlamaConfig, ModelType, RopeScaling, TokenIds};
pub use dtype::GgmlType;
pub use float::FloatDtype;
pub use generate::{stop_ids, GenerateOptions, Generated, KvDecoder, StopReason, TextStream};
pub use gguf::{
    config_from_gguf, gguf_to_hf_name, hf_to_gguf_name, GgufFile, GgufTensorInfo, GgufValue,
};
pub use llama::{LlamaModel, LoadOptions, Mode, ModelMemory, Peft, Quant, Workspace};
pub use lora::{Lora, LoraGpu, LoraPair, LoraPairGpu};
pub use prefix::PrefixGpu;
pub use prompt::PromptGpu;
pub use random::RandomWeights;
pub use safetensors::{SafetensorsFile, StDtype, StEntry, StTensorInfo};
pub use sampling::{Sampler, SamplingParams};
pub use source::{unpermute_qk_rows, HfParts, ModelSource, SourceFormat, TensorMeta};
pub use tensor::HostTensor;
pub use tokenizer::Tokenizer;
pub use vocab::{VocabChunk, VocabTable};

use tinytune_gpu::ops::nf4::Nf4Weight;
use tinytune_gpu::GpuBuffer;

/// A frozen linear weight `[out, in]`: quantization is a storage detail, never a second model.
pub enum Weight {
    F32(GpuBuffer),
    Nf4(Nf4Weight),
}

/// Errors of the model crate. Every message names the file, tensor, key or value at fault.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Gpu(#[from] tinytune_gpu::GpuError),
    /// Reading a file failed.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A file is malformed (bad magic, truncated, inconsistent offsets, bad JSON...).
    #[error("{0}")]
    Format(String),
    /// A `config.json` or GGUF metadata value is missing or invalid.
    #[error("invalid model config: {0}")]
    Config(String),
    /// Valid input that this crate does not support (architecture, tensor type, RoPE scaling...).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A tensor is missing, unknown, or has the wrong shape.
    #[error("{0}")]
    Tensor(String),
    /// Building or running the tokenizer failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// Inputs of a forward/backward call do not fit the model (token count, batch shape...).
    #[error("{0}")]
    Shape(String),
    /// An option the user gave is invalid for this model (block sizes, block-size patterns).
    #[error("{0}")]
    Option(String),
}

/// Result alias of this crate.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;

pub(crate) fn format_err(msg: impl Into<String>) -> ModelError {
    ModelError::Format(msg.into())
}

#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn io_err(path: &std::path::Path, source: std::io::Error) -> ModelError {
    ModelError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Bytes of an f32 tensor of shape `dims`, computed in u64 (a `usize` product wraps at 4 GiB on
/// wasm32; the allocation then fails with a clear error instead of making a tiny buffer).
pub fn f32_bytes(dims: &[usize]) -> u64 {
    dims.iter()
        .fold(4u64, |acc, &d| acc.saturating_mul(d as u64))
}
