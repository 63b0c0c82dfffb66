//! The training configuration (stored in every checkpoint as `training_config.json`).

use serde::{Deserialize, Serialize};

use crate::data::{Columns, DataConfig, EvalSplit, Stop, TextSplit};
use crate::peft::{LoraConfig, LoraModule};
use crate::schedule::{Schedule, ScheduleKind};
use crate::{Result, TrainError};

/// AdamW hyper-parameters (defaults: transformers' `TrainingArguments`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// LoRA hyper-parameters (defaults: [`TrainOptions`]'s).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LoraHyper {
    pub r: usize,
    pub alpha: f64,
    pub dropout: f64,
    pub targets: Vec<LoraModule>,
    pub use_rslora: bool,
    /// Adapt only these layers (PEFT's `layers_to_transform`; `None`: every layer). The backward
    /// pass stops at the lowest adapted layer, so adapting only the top layers trains faster.
    pub layers_to_transform: Option<Vec<usize>>,
}

impl Default for LoraHyper {
    fn default() -> Self {
        TrainConfig::default().lora
    }
}

/// Everything that defines a training run (its `Default` is the options table's, in
/// `options.rs`). Unknown fields are rejected, missing ones take the
/// defaults (transformers' where one exists: linear schedule, no warmup, AdamW 0.9/0.999/1e-8).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Base model (path or name), written as `base_model_name_or_path` of the adapter.
    pub base_model: String,
    /// Dataset files.
    pub data: Vec<String>,
    pub seq_len: usize,
    pub text_split: TextSplit,
    /// Which key or column holds each record field (`--data-column FIELD=COLUMN`).
    #[serde(skip_serializing_if = "Columns::is_empty")]
    pub data_columns: Columns,
    pub batch_size: usize,
    /// Micro-batches of `batch_size` rows per optimizer step (gradient accumulation).
    pub grad_accum: usize,
    /// When training ends; `Steps` counts optimizer steps.
    pub stop: Stop,
    pub eval_split: EvalSplit,
    /// Evaluate every this many steps (0: only at the end).
    pub eval_every: u64,
    /// Save a checkpoint every this many steps (0: only at the end).
    pub save_every: u64,
    /// Seed of the data order, the eval split and the LoRA init.
    pub seed: u64,
    pub lr: f64,
    pub schedule: ScheduleKind,
    pub warmup_steps: u64,
    /// Recompute each layer's activations in the backward pass instead of keeping them all
    /// (transformers' `gradient_checkpointing`): less memory, about one more forward of compute.
    pub gradient_checkpointing: bool,
    /// The frozen-weight matmuls' operand dtype (`f32` / `f16`, [`tinytune_gpu::ComputeDtype`]);
    /// `None`: the device's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute_dtype: Option<String>,
    /// Gradient clipping by global norm (0: off).
    pub max_grad_norm: f64,
    pub adamw: AdamWConfig,
    pub lora: LoraHyper,
}

/// A `compute_dtype` option or config value as a [`tinytune_gpu::ComputeDtype`]; the message
/// names the option.
pub fn parse_compute_dtype(s: &str) -> std::result::Result<tinytune_gpu::ComputeDtype, String> {
    tinytune_gpu::ComputeDtype::parse(s)
        .ok_or_else(|| format!("compute_dtype {s:?}: expected f32 or f16"))
}

impl TrainConfig {
    /// Pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Parses JSON (`file` names it in errors).
    pub fn from_json(text: &str, file: &str) -> Result<TrainConfig> {
        serde_json::from_str(text).map_err(|e| TrainError::Checkpoint {
            file: file.to_string(),
            msg: format!("bad training config: {e}"),
        })
    }

    /// The data settings.
    pub fn data_config(&self) -> DataConfig {
        DataConfig {
            seq_len: self.seq_len,
            text_split: self.text_split,
            columns: self.data_columns.clone(),
        }
    }

    /// The LR schedule for a run of `total_steps`.
    pub fn schedule(&self, total_steps: u64) -> Result<Schedule> {
        Schedule::new(self.schedule, self.lr, self.warmup_steps, total_steps)
    }

    /// The PEFT config of the adapter this run trains.
    pub fn lora_config(&self) -> LoraConfig {
        let mut c = LoraConfig::new(self.lora.r, self.lora.alpha, &self.lora.targets);
        c.lora_dropout = self.lora.dropout;
        c.use_rslora = self.lora.use_rslora;
        c.layers_to_transform = self.lora.layers_to_transform.clone();
        if !self.base_model.is_empty() {
            c.base_model_name_or_path = Some(self.base_model.clone());
        }
        c
    }
}

/// PEFT `target_modules` names (`q_proj` ... `down_proj`), or `all-linear` for all seven: the
/// modules in the given order, without repeats. Shared by the CLI's flag and the JS option.
pub fn parse_target_modules<S: AsRef<str>>(names: &[S]) -> Result<Vec<LoraModule>> {
    let mut out = Vec::new();
    for name in names {
        let name = name.as_ref().trim();
        if name == "all-linear" {
            return Ok(LoraModule::ALL.to_vec());
        }
        match LoraModule::from_name(name) {
            Some(m) if !out.contains(&m) => out.push(m),
            Some(_) => {}
            None => {
                return Err(TrainError::Config(format!(
                    "target_modules: unknown module {name:?} (expected q_proj, k_proj, v_proj, \
                     o_proj, gate_proj, up_proj, down_proj or all-linear)"
                )))
            }
        }
    }
    if out.is_empty() {
        return Err(TrainError::Config("target_modules is empty".into()));
    }
    Ok(out)
}

/// PEFT's `layers_to_transform` written as `3,5,7`, `20-29` (inclusive) or `top:N` (the last N of
/// `n_layers`), checked by [`check_layers`].
pub fn parse_layers_to_transform(spec: &str, n_layers: usize) -> Result<Vec<usize>> {
    let bad = || {
        TrainError::Config(format!(
            "layers_to_transform {spec:?}: expected e.g. 3,5,7 or 20-29 or top:8"
        ))
    };
    if let Some(n) = spec.strip_prefix("top:") {
        let n: usize = n.trim().parse().map_err(|_| bad())?;
        if n == 0 || n > n_layers {
            return Err(TrainError::Config(format!(
                "layers_to_transform top:{n}: the model has {n_layers} layers"
            )));
        }
        return Ok((n_layers - n..n_layers).collect());
    }
    let mut out = Vec::new();
    for part in spec.split(',') {
        let part = part.trim();
        match part.split_once('-') {
            Some((a, b)) => {
                let a: usize = a.trim().parse().map_err(|_| bad())?;
                let b: usize = b.trim().parse().map_err(|_| bad())?;
                if a > b {
                    return Err(bad());
                }
                out.extend(a..=b);
            }
            None => out.push(part.parse().map_err(|_| bad())?),
        }
    }
    check_layers(out, n_layers)
}

/// Layer indices sorted, without repeats, each below `n_layers`, at least one.
pub fn check_layers(mut layers: Vec<usize>, n_layers: usize) -> Result<Vec<usize>> {
    layers.sort_unstable();
    layers.dedup();
    if layers.is_empty() {
        return Err(TrainError::Config("layers_to_transform is empty".into()));
    }
    if let Some(l) = layers.iter().find(|&&l| l >= n_layers) {
        return Err(TrainError::Config(format!(
            "layers_to_transform names layer {l}, the model has {n_layers} layers (0..{})",
            n_layers.saturating_sub(1)
        )));
    }
    Ok(layers)
}

/// The eval split written as one number: 0 = none, a fraction in (0, 1), or a whole count.
pub fn eval_split_from(v: f64) -> Result<EvalSplit> {
    if v == 0.0 {
        Ok(EvalSplit::None)
    } else if v > 0.0 && v < 1.0 {
        Ok(EvalSplit::Fraction(v))
    } else if v >= 1.0 && v.fract() == 0.0 {
        Ok(EvalSplit::Count(v as usize))
    } else {
        Err(TrainError::Config(format!(
            "eval_split {v}: expected a fraction in (0, 1) or a whole count"
        )))
    }
}
