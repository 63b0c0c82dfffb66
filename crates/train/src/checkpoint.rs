//! Resumable checkpoints: a directory holding
//! - `adapter_config.json` + `adapter_model.safetensors`: the adapter in PEFT's layout (LoRA,
//!   prompt or prefix tuning; so a checkpoint directory is itself loadable with
//!   `PeftModel.from_pretrained`);
//! - `optimizer.safetensors`: the AdamW moments, F32, keyed `<adapter tensor>.exp_avg` (m) and
//!   `<adapter tensor>.exp_avg_sq` (v), with the optimizer step count in the metadata (`step`);
//! - `prefix_projection.safetensors` (prefix tuning with `prefix_projection` only): the
//!   projection's parameters under PEFT's names (`prompt_encoder.default.embedding.weight`,
//!   `...transform.0.weight`, ...), which the adapter holds only folded; the AdamW moments of
//!   such a run are flat, in the order of these tensors;
//! - `trainer_state.json`: step, data position, RNG state, counters ([`TrainerState`]);
//! - `training_config.json`: the [`TrainConfig`].
//!
//! [`Checkpoint::to_files`] / [`Checkpoint::from_files`] work in memory (browser);
//! [`Checkpoint::save`] writes the directory atomically (all files into a temporary sibling,
//! then one rename) and [`Checkpoint::load`] reads it back (native).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::adapters::PeftAdapter;
use crate::config::TrainConfig;
use crate::data::{BatchIter, BatchPlan, DataPosition, Stop};
use crate::peft::{
    read_f32_safetensors, write_f32_safetensors, LoraWeights, ADAPTER_CONFIG, ADAPTER_WEIGHTS,
};
use crate::prompt::PROMPT_EMBEDDINGS;
use crate::{Result, TrainError};

/// File name of the optimizer state.
pub const OPTIMIZER_STATE: &str = "optimizer.safetensors";
/// File name of a projected prefix's parameters.
pub const PREFIX_PROJECTION: &str = "prefix_projection.safetensors";
/// PEFT's names of the projection's parameters, in the order of the flat layout.
const PROJECTION_TENSORS: [&str; 5] = [
    "prompt_encoder.default.embedding.weight",
    "prompt_encoder.default.transform.0.weight",
    "prompt_encoder.default.transform.0.bias",
    "prompt_encoder.default.transform.2.weight",
    "prompt_encoder.default.transform.2.bias",
];
/// File name of the trainer state.
pub const TRAINER_STATE: &str = "trainer_state.json";
/// File name of the training config.
pub const TRAINING_CONFIG: &str = "training_config.json";
/// Version of the checkpoint layout written in `trainer_state.json`.
pub const CHECKPOINT_VERSION: u32 = 1;

const M_SUFFIX: &str = ".exp_avg";
const V_SUFFIX: &str = ".exp_avg_sq";

/// Where training stands.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Layout version ([`CHECKPOINT_VERSION`]).
    pub version: u32,
    /// Optimizer steps done.
    pub global_step: u64,
    /// Position of the next batch.
    pub position: DataPosition,
    /// State of the trainer's [`crate::Rng`] (e.g. for dropout), see [`crate::Rng::state`].
    pub rng_state: u64,
    /// Seed of the data order, and the number of training examples it was drawn over: resuming
    /// with other data would silently change the order, so [`Checkpoint::resume_batches`] checks
    /// both.
    pub data_seed: u64,
    pub n_train_examples: usize,
    /// Total steps of the run (the LR schedule's `num_training_steps`).
    pub total_steps: u64,
    /// Real tokens trained on so far.
    pub tokens_seen: u64,
    /// Training seconds so far (continues across resumes).
    pub elapsed_s: f64,
    /// Learning rate of the last step.
    pub last_lr: f64,
    /// Best eval loss so far.
    #[serde(default)]
    pub best_eval_loss: Option<f64>,
}

/// One AdamW moment, laid out like the adapter's trainable tensors.
#[derive(Clone, Debug, PartialEq)]
pub enum Moments {
    /// LoRA: like the adapter's pairs.
    Lora(LoraWeights),
    /// Prompt or prefix tuning: like `prompt_embeddings` (shape, values).
    Embeddings(Vec<usize>, Vec<f32>),
}

impl Moments {
    fn push_tensors<'a>(&'a self, suffix: &str, out: &mut Vec<(String, Vec<usize>, &'a [f32])>) {
        match self {
            Moments::Lora(w) => w.push_tensors(suffix, out),
            Moments::Embeddings(shape, v) => {
                out.push((format!("{PROMPT_EMBEDDINGS}{suffix}"), shape.clone(), v))
            }
        }
    }

    /// Whether the moment has the adapter's layout.
    fn fits(&self, adapter: &PeftAdapter) -> bool {
        match (self, adapter) {
            (Moments::Lora(w), PeftAdapter::Lora(a)) => w.same_layout(&a.weights),
            (Moments::Embeddings(_, v), PeftAdapter::Prompt(a)) => v.len() == a.embeddings.len(),
            (Moments::Embeddings(_, v), PeftAdapter::Prefix(a)) => v.len() == a.prefix.len(),
            _ => false,
        }
    }
}

/// AdamW state: the step count and the first/second moments, laid out like the adapter.
#[derive(Clone, Debug, PartialEq)]
pub struct OptimizerState {
    pub step: u64,
    pub m: Moments,
    pub v: Moments,
}

impl OptimizerState {
    /// Zero moments for LoRA `weights`, step 0.
    pub fn new(weights: &LoraWeights) -> OptimizerState {
        OptimizerState {
            step: 0,
            m: Moments::Lora(weights.zeros_like()),
            v: Moments::Lora(weights.zeros_like()),
        }
    }

    /// `optimizer.safetensors` bytes.
    pub fn to_safetensors(&self) -> Result<Vec<u8>> {
        let mut tensors = Vec::new();
        self.m.push_tensors(M_SUFFIX, &mut tensors);
        self.v.push_tensors(V_SUFFIX, &mut tensors);
        write_f32_safetensors(
            &tensors,
            &[
                ("step", self.step.to_string()),
                ("optimizer", "adamw".to_string()),
            ],
        )
    }

    /// Parses `optimizer.safetensors` (`file` names it in errors).
    pub fn from_safetensors(bytes: &[u8], file: &str) -> Result<OptimizerState> {
        let err = |msg: String| TrainError::Checkpoint {
            file: file.to_string(),
            msg,
        };
        let (tensors, meta) = read_f32_safetensors(bytes, file)?;
        let step = meta
            .get("step")
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| err("metadata has no integer \"step\"".into()))?;
        let mut m = BTreeMap::new();
        let mut v = BTreeMap::new();
        for (name, t) in tensors {
            if name.ends_with(V_SUFFIX) {
                v.insert(name, t);
            } else if name.ends_with(M_SUFFIX) {
                m.insert(name, t);
            } else {
                return Err(err(format!(
                    "unexpected tensor {name:?} (expected names ending in {M_SUFFIX} or {V_SUFFIX})"
                )));
            }
        }
        let em = format!("{PROMPT_EMBEDDINGS}{M_SUFFIX}");
        let ev = format!("{PROMPT_EMBEDDINGS}{V_SUFFIX}");
        if m.contains_key(&em) || v.contains_key(&ev) {
            // Prompt or prefix tuning: exactly the two moments of prompt_embeddings.
            let (mut m, mut v) = (m, v);
            return match (m.remove(&em), v.remove(&ev)) {
                (Some((ms, md)), Some((vs, vd))) if m.is_empty() && v.is_empty() => {
                    Ok(OptimizerState {
                        step,
                        m: Moments::Embeddings(ms, md),
                        v: Moments::Embeddings(vs, vd),
                    })
                }
                _ => Err(err(format!(
                    "expected exactly the tensors {em:?} and {ev:?} of a prompt-learning run"
                ))),
            };
        }
        Ok(OptimizerState {
            step,
            m: Moments::Lora(LoraWeights::from_tensors(m, file, M_SUFFIX, None)?),
            v: Moments::Lora(LoraWeights::from_tensors(v, file, V_SUFFIX, None)?),
        })
    }
}

/// Everything needed to continue a run.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    pub adapter: PeftAdapter,
    /// A projected prefix's flat parameters (prefix tuning with `prefix_projection`).
    pub projection: Option<Vec<f32>>,
    pub optimizer: OptimizerState,
    pub state: TrainerState,
    pub config: TrainConfig,
}

impl Checkpoint {
    /// The shapes of a projected prefix's tensors, in [`PROJECTION_TENSORS`]' order; errors
    /// unless the adapter is a prefix with a projection.
    fn projection_shapes(&self, dir: &str) -> Result<Vec<Vec<usize>>> {
        match &self.adapter {
            PeftAdapter::Prefix(a) if a.config.prefix_projection => {
                let c = &a.config;
                let (p, t, e, n) = (
                    c.num_virtual_tokens,
                    c.token_dim,
                    c.encoder_hidden_size,
                    c.row_len(),
                );
                Ok(vec![vec![p, t], vec![e, t], vec![e], vec![n, e], vec![n]])
            }
            _ => Err(TrainError::Checkpoint {
                file: format!("{dir}/{PREFIX_PROJECTION}"),
                msg: "projection parameters for an adapter without prefix_projection".into(),
            }),
        }
    }

    /// Checks that the optimizer moments (and a projection's parameters) match the adapter's
    /// layout.
    pub fn validate(&self, dir: &str) -> Result<()> {
        let file = format!("{dir}/{OPTIMIZER_STATE}");
        let projection_len = match &self.projection {
            Some(params) => {
                let n: usize = self
                    .projection_shapes(dir)?
                    .iter()
                    .map(|s| s.iter().product::<usize>())
                    .sum();
                if params.len() != n {
                    return Err(TrainError::Checkpoint {
                        file: format!("{dir}/{PREFIX_PROJECTION}"),
                        msg: format!(
                            "{} parameters, the adapter's projection has {n}",
                            params.len()
                        ),
                    });
                }
                Some(n)
            }
            None => None,
        };
        for (what, w) in [
            ("exp_avg", &self.optimizer.m),
            ("exp_avg_sq", &self.optimizer.v),
        ] {
            let fits = match (projection_len, w) {
                (Some(n), Moments::Embeddings(_, v)) => v.len() == n,
                (Some(_), _) => false,
                (None, w) => w.fits(&self.adapter),
            };
            if !fits {
                return Err(TrainError::Checkpoint {
                    file,
                    msg: format!("{what} tensors do not match the adapter's keys and shapes"),
                });
            }
        }
        if self.state.version != CHECKPOINT_VERSION {
            return Err(TrainError::Checkpoint {
                file: format!("{dir}/{TRAINER_STATE}"),
                msg: format!(
                    "checkpoint version {} (this build reads {CHECKPOINT_VERSION})",
                    self.state.version
                ),
            });
        }
        if self.state.position.index > self.state.n_train_examples {
            return Err(TrainError::Checkpoint {
                file: format!("{dir}/{TRAINER_STATE}"),
                msg: format!(
                    "data position {} beyond {} training examples",
                    self.state.position.index, self.state.n_train_examples
                ),
            });
        }
        Ok(())
    }

    /// The files of the checkpoint directory (name, bytes).
    pub fn to_files(&self) -> Result<Vec<(String, Vec<u8>)>> {
        self.validate(".")?;
        let mut files = self.adapter.to_files()?;
        if let Some(params) = &self.projection {
            let shapes = self.projection_shapes(".")?;
            let mut tensors = Vec::new();
            let mut at = 0;
            for (name, shape) in PROJECTION_TENSORS.iter().zip(shapes) {
                let len: usize = shape.iter().product();
                tensors.push((name.to_string(), shape, &params[at..at + len]));
                at += len;
            }
            files.push((
                PREFIX_PROJECTION.to_string(),
                write_f32_safetensors(&tensors, &[])?,
            ));
        }
        files.push((
            OPTIMIZER_STATE.to_string(),
            self.optimizer.to_safetensors()?,
        ));
        let state = serde_json::to_string_pretty(&self.state)
            .map_err(|e| TrainError::Config(format!("trainer state: {e}")))?;
        files.push((TRAINER_STATE.to_string(), state.into_bytes()));
        files.push((
            TRAINING_CONFIG.to_string(),
            self.config.to_json().into_bytes(),
        ));
        Ok(files)
    }

    /// Parses the files of a checkpoint (`get(name)` returns a file's bytes; `dir` only names
    /// files in errors). A missing file is an error naming it.
    pub fn from_files(get: impl Fn(&str) -> Option<Vec<u8>>, dir: &str) -> Result<Checkpoint> {
        let need = |name: &str| {
            get(name).ok_or_else(|| TrainError::Checkpoint {
                file: format!("{dir}/{name}"),
                msg: "missing".into(),
            })
        };
        let adapter =
            PeftAdapter::from_bytes(&need(ADAPTER_CONFIG)?, &need(ADAPTER_WEIGHTS)?, dir)?;
        let projection = match get(PREFIX_PROJECTION) {
            Some(bytes) => {
                let file = format!("{dir}/{PREFIX_PROJECTION}");
                let (mut tensors, _) = read_f32_safetensors(&bytes, &file)?;
                let mut flat = Vec::new();
                for name in PROJECTION_TENSORS {
                    let (_, v) = tensors.remove(name).ok_or_else(|| TrainError::Checkpoint {
                        file: file.clone(),
                        msg: format!("no tensor {name}"),
                    })?;
                    flat.extend(v);
                }
                Some(flat)
            }
            None => None,
        };
        let optimizer = OptimizerState::from_safetensors(
            &need(OPTIMIZER_STATE)?,
            &format!("{dir}/{OPTIMIZER_STATE}"),
        )?;
        let state_file = format!("{dir}/{TRAINER_STATE}");
        let state: TrainerState =
            serde_json::from_slice(&need(TRAINER_STATE)?).map_err(|e| TrainError::Checkpoint {
                file: state_file.clone(),
                msg: format!("bad trainer state: {e}"),
            })?;
        let cfg_file = format!("{dir}/{TRAINING_CONFIG}");
        let cfg_bytes = need(TRAINING_CONFIG)?;
        let cfg_text = std::str::from_utf8(&cfg_bytes).map_err(|e| TrainError::Checkpoint {
            file: cfg_file.clone(),
            msg: format!("invalid UTF-8: {e}"),
        })?;
        let config = TrainConfig::from_json(cfg_text, &cfg_file)?;
        let ck = Checkpoint {
            adapter,
            projection,
            optimizer,
            state,
            config,
        };
        ck.validate(dir)?;
        Ok(ck)
    }

    /// The batch iterator that continues this run over `plan` until `stop`. Errors if the plan's
    /// example count or seed differs from the checkpoint's (the order would not be the same).
    pub fn resume_batches(&self, plan: &BatchPlan, stop: Stop) -> Result<BatchIter> {
        if plan.n_examples != self.state.n_train_examples || plan.seed != self.state.data_seed {
            return Err(TrainError::Config(format!(
                "the checkpoint was trained on {} examples with data seed {}, now {} with seed {}: \
                 the data order cannot be resumed",
                self.state.n_train_examples, self.state.data_seed, plan.n_examples, plan.seed
            )));
        }
        plan.iter(self.state.position, self.state.global_step, stop)
    }

    /// Writes the checkpoint directory atomically (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn save(&self, dir: &std::path::Path) -> Result<()> {
        crate::fsio::write_dir_atomic(dir, &self.to_files()?)
    }

    /// Reads a checkpoint directory (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn load(dir: &std::path::Path) -> Result<Checkpoint> {
        Checkpoint::from_files(
            |name| std::fs::read(dir.join(name)).ok(),
            &dir.display().to_string(),
        )
    }
}
