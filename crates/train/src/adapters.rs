//! Any PEFT adapter tinytune trains — LoRA, prompt tuning or prefix tuning — read from its two
//! files by `peft_type` ([`PeftAdapter`]), and on the device ([`AdapterGpu`]) for evaluation and
//! generation.

use tinytune_gpu::Gpu;
use tinytune_model::{LlamaModel, LoraGpu, PrefixGpu, PromptGpu};

use tinytune_reference::llama::Lora;

use crate::peft::{Adapter, LoraModule, LoraWeights, ADAPTER_CONFIG};
use crate::prefix::PrefixAdapter;
use crate::prompt::{peft_type, PromptAdapter};
use crate::{Result, TrainError};

/// A PEFT adapter of one of the supported methods.
#[derive(Clone, Debug, PartialEq)]
pub enum PeftAdapter {
    Lora(Adapter),
    Prompt(PromptAdapter),
    Prefix(PrefixAdapter),
}

impl PeftAdapter {
    /// Parses the two files, by the config's `peft_type` (`dir` only names them in errors).
    pub fn from_bytes(config_json: &[u8], safetensors: &[u8], dir: &str) -> Result<PeftAdapter> {
        match peft_type(config_json).as_deref() {
            Some("PROMPT_TUNING") => Ok(PeftAdapter::Prompt(PromptAdapter::from_bytes(
                config_json,
                safetensors,
                dir,
            )?)),
            Some("PREFIX_TUNING") => Ok(PeftAdapter::Prefix(PrefixAdapter::from_bytes(
                config_json,
                safetensors,
                dir,
            )?)),
            Some("LORA") | None => Ok(PeftAdapter::Lora(Adapter::from_bytes(
                config_json,
                safetensors,
                dir,
            )?)),
            Some(other) => Err(TrainError::Adapter {
                file: format!("{dir}/{ADAPTER_CONFIG}"),
                msg: format!(
                    "peft_type {other:?} is not supported (LORA, PROMPT_TUNING or PREFIX_TUNING)"
                ),
            }),
        }
    }

    /// Reads an adapter directory (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn load(dir: &std::path::Path) -> Result<PeftAdapter> {
        let (cfg, st) = crate::prompt::read_files(dir)?;
        PeftAdapter::from_bytes(&cfg, &st, &dir.display().to_string())
    }

    /// The two files of the adapter directory.
    pub fn to_files(&self) -> Result<Vec<(String, Vec<u8>)>> {
        match self {
            PeftAdapter::Lora(a) => a.to_files(),
            PeftAdapter::Prompt(a) => a.to_files(),
            PeftAdapter::Prefix(a) => a.to_files(),
        }
    }

    /// Writes the two files into `dir` (created if missing), each atomically (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn save(&self, dir: &std::path::Path) -> Result<()> {
        crate::prompt::save_files(dir, self.to_files()?)
    }

    /// The method it was trained with.
    pub fn method(&self) -> PeftMethod {
        match self {
            PeftAdapter::Lora(_) => PeftMethod::Lora,
            PeftAdapter::Prompt(_) => PeftMethod::PromptTuning,
            PeftAdapter::Prefix(_) => PeftMethod::PrefixTuning,
        }
    }

    /// Virtual positions it puts in front of every sequence (0 for LoRA).
    pub fn virtual_tokens(&self) -> usize {
        match self {
            PeftAdapter::Lora(_) => 0,
            PeftAdapter::Prompt(a) => a.config.num_virtual_tokens,
            PeftAdapter::Prefix(a) => a.config.num_virtual_tokens,
        }
    }
}

impl PeftMethod {
    /// The CLI's `--peft` value.
    pub fn name(self) -> &'static str {
        match self {
            PeftMethod::Lora => "lora",
            PeftMethod::PromptTuning => "prompt-tuning",
            PeftMethod::PrefixTuning => "prefix-tuning",
        }
    }
}

/// An adapter on the device.
#[allow(clippy::large_enum_variant)] // one per model, never in collections
pub enum AdapterGpu {
    Lora(LoraGpu),
    Prompt(PromptGpu),
    Prefix(PrefixGpu),
}

impl AdapterGpu {
    /// Uploads `adapter` for `model`, checking that it belongs to it.
    pub fn upload(gpu: &Gpu, model: &LlamaModel, adapter: &PeftAdapter) -> Result<AdapterGpu> {
        let cfg = &model.config;
        Ok(match adapter {
            PeftAdapter::Lora(a) => AdapterGpu::Lora(upload_adapter(gpu, model, a)?),
            PeftAdapter::Prompt(a) => {
                if a.config.token_dim != cfg.hidden_size {
                    return Err(TrainError::Config(format!(
                        "the prompt adapter's token_dim is {}, the model's hidden size {}: it \
                         belongs to another model",
                        a.config.token_dim, cfg.hidden_size
                    )));
                }
                AdapterGpu::Prompt(PromptGpu::upload(
                    gpu,
                    &a.embeddings,
                    a.config.num_virtual_tokens,
                    a.config.token_dim,
                )?)
            }
            PeftAdapter::Prefix(a) => {
                a.config.check_model(cfg)?;
                AdapterGpu::Prefix(PrefixGpu::upload(
                    gpu,
                    cfg,
                    &a.prefix,
                    a.config.num_virtual_tokens,
                )?)
            }
        })
    }

    /// The LoRA adapters, if that is what it is.
    pub fn lora(&self) -> Option<&LoraGpu> {
        match self {
            AdapterGpu::Lora(l) => Some(l),
            _ => None,
        }
    }

    /// How many virtual positions the adapter puts in front of the tokens (0 for LoRA).
    pub fn virtual_tokens(&self) -> usize {
        match self {
            AdapterGpu::Lora(_) => 0,
            AdapterGpu::Prompt(p) => p.p,
            AdapterGpu::Prefix(p) => p.p,
        }
    }

    /// The virtual tokens of a prompt-learning adapter.
    pub fn soft(&self) -> Option<SoftRef<'_>> {
        match self {
            AdapterGpu::Lora(_) => None,
            AdapterGpu::Prompt(p) => Some(SoftRef::Prompt(p)),
            AdapterGpu::Prefix(p) => Some(SoftRef::Prefix(p)),
        }
    }
}

/// The PEFT method a run trains.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeftMethod {
    Lora,
    PromptTuning,
    PrefixTuning,
}

/// A prompt-learning method's parameters on the device, for [`crate::trainer::loss_sum`].
#[derive(Clone, Copy)]
pub enum SoftRef<'a> {
    Prompt(&'a PromptGpu),
    Prefix(&'a PrefixGpu),
}

/// Uploads a PEFT adapter for inference or training.
pub fn upload_adapter(gpu: &Gpu, model: &LlamaModel, adapter: &Adapter) -> Result<LoraGpu> {
    let lora = host_lora(model, &adapter.weights, adapter.config.scale())?;
    Ok(LoraGpu::upload(gpu, model, &lora)?)
}

/// Host LoRA of `weights` for `model`, checking every pair's shape.
pub(crate) fn host_lora(model: &LlamaModel, weights: &LoraWeights, scale: f64) -> Result<Lora> {
    for (k, p) in &weights.pairs {
        let lin = model
            .layers
            .get(k.layer)
            .map(|l| {
                &l.linears[LoraModule::ALL
                    .iter()
                    .position(|m| *m == k.module)
                    .unwrap_or(0)]
            })
            .ok_or_else(|| {
                TrainError::Config(format!(
                    "the adapter has layer {} but the model has {} layers",
                    k.layer,
                    model.layers.len()
                ))
            })?;
        if p.in_features != lin.n_in || p.out_features != lin.n_out {
            return Err(TrainError::Config(format!(
                "adapter {} is [{} -> {}], the model's layer is [{} -> {}]: the adapter belongs to another model",
                k.module_path(),
                p.in_features,
                p.out_features,
                lin.n_in,
                lin.n_out
            )));
        }
    }
    weights.to_layers(model.layers.len(), scale as f32)
}
