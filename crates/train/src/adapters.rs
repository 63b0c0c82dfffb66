//! Any PEFT adapter tinytune trains — LoRA, prompt tuning or prefix tuning — read from its two
//! files by `peft_type` ([`PeftAdapter`]), and on the device ([`AdapterGpu`]) for evaluation and
//! generation.

use tinytune_gpu::Gpu;
use tinytune_model::{LlamaModel, LoraGpu, Peft, PrefixGpu, PromptGpu};

use crate::peft::{Lora, LoraAdapter, LoraConfig, LoraModule, LoraWeights, ADAPTER_CONFIG};
use crate::prefix::{PrefixAdapter, PrefixTuningConfig};
use crate::prompt::{peft_type, PromptAdapter, PromptTuningConfig};
use crate::{Result, TrainError};

/// The PEFT method a run trains (`--peft`, the JS `peft`); an adapter's own is
/// [`crate::PeftAdapter::method`].
#[derive(Clone, Copy, Debug, serde::Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum PeftMethod {
    /// LoRA adapters on the linear layers.
    Lora,
    /// Trainable virtual token embeddings (PEFT PROMPT_TUNING).
    PromptTuning,
    /// Trainable per-layer key/value prefixes (PEFT PREFIX_TUNING).
    PrefixTuning,
}

impl PeftMethod {
    /// The CLI's `--peft` value (the JS `peft`).
    pub fn name(self) -> &'static str {
        match self {
            PeftMethod::Lora => "lora",
            PeftMethod::PromptTuning => "prompt-tuning",
            PeftMethod::PrefixTuning => "prefix-tuning",
        }
    }
}

/// A PEFT adapter of one of the supported methods.
#[derive(Clone, Debug, PartialEq)]
pub enum PeftAdapter {
    Lora(LoraAdapter),
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
            Some("LORA") | None => Ok(PeftAdapter::Lora(LoraAdapter::from_bytes(
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

/// An adapter on the device, with the config it is saved with: what generation, evaluation and
/// a [`crate::Trainer`] run on ([`AdapterGpu::peft`]), and what [`AdapterGpu::download`] turns
/// back into a [`PeftAdapter`].
#[allow(clippy::large_enum_variant)] // one per model, never in collections
pub enum AdapterGpu {
    Lora(LoraGpu, LoraConfig),
    Prompt(PromptGpu, PromptTuningConfig),
    Prefix(PrefixGpu, PrefixTuningConfig),
}

impl AdapterGpu {
    /// Uploads `adapter` for `model`, checking that it belongs to it.
    pub fn upload(gpu: &Gpu, model: &LlamaModel, adapter: &PeftAdapter) -> Result<AdapterGpu> {
        let cfg = &model.config;
        Ok(match adapter {
            PeftAdapter::Lora(a) => {
                AdapterGpu::Lora(upload_adapter(gpu, model, a)?, a.config.clone())
            }
            PeftAdapter::Prompt(a) => {
                if a.config.token_dim != cfg.hidden_size {
                    return Err(TrainError::Config(format!(
                        "the prompt adapter's token_dim is {}, the model's hidden size {}: it \
                         belongs to another model",
                        a.config.token_dim, cfg.hidden_size
                    )));
                }
                AdapterGpu::Prompt(
                    PromptGpu::upload(
                        gpu,
                        &a.embeddings,
                        a.config.num_virtual_tokens,
                        a.config.token_dim,
                    )?,
                    a.config.clone(),
                )
            }
            PeftAdapter::Prefix(a) => {
                a.config.check_model(cfg)?;
                AdapterGpu::Prefix(
                    PrefixGpu::upload(gpu, cfg, &a.prefix, a.config.num_virtual_tokens)?,
                    a.config.clone(),
                )
            }
        })
    }

    /// The method and its parameters, as the model's passes take them.
    pub fn peft(&self) -> Peft<'_> {
        match self {
            AdapterGpu::Lora(l, _) => Peft::Lora(l),
            AdapterGpu::Prompt(p, _) => Peft::Prompt(p),
            AdapterGpu::Prefix(p, _) => Peft::Prefix(p),
        }
    }

    /// The method.
    pub fn method(&self) -> PeftMethod {
        match self {
            AdapterGpu::Lora(..) => PeftMethod::Lora,
            AdapterGpu::Prompt(..) => PeftMethod::PromptTuning,
            AdapterGpu::Prefix(..) => PeftMethod::PrefixTuning,
        }
    }

    /// How many virtual positions the adapter puts in front of the tokens (0 for LoRA).
    pub fn virtual_tokens(&self) -> usize {
        self.peft().virtual_tokens()
    }

    /// Number of trainable parameters (a projected prefix trains its projection).
    pub fn n_params(&self) -> usize {
        match self {
            AdapterGpu::Lora(l, _) => l.n_params,
            AdapterGpu::Prompt(p, _) => p.p * p.c,
            AdapterGpu::Prefix(p, _) => p.n_trainable(),
        }
    }

    /// Reads the adapter back in PEFT's layout (a prefix projection folded in, as PEFT saves it).
    pub async fn download(&self, gpu: &Gpu) -> Result<PeftAdapter> {
        Ok(match self {
            AdapterGpu::Lora(l, config) => PeftAdapter::Lora(LoraAdapter {
                config: config.clone(),
                weights: LoraWeights::from_layers(&l.download(gpu).await?),
            }),
            AdapterGpu::Prompt(p, config) => PeftAdapter::Prompt(PromptAdapter {
                config: config.clone(),
                embeddings: p.download(gpu).await?,
            }),
            AdapterGpu::Prefix(p, config) => PeftAdapter::Prefix(PrefixAdapter {
                config: config.clone(),
                prefix: p.download(gpu).await?,
            }),
        })
    }
}

/// Uploads a PEFT adapter for inference or training.
pub fn upload_adapter(gpu: &Gpu, model: &LlamaModel, adapter: &LoraAdapter) -> Result<LoraGpu> {
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
