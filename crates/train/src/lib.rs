//! Trainer loop, data batching, schedules, checkpoints and PEFT adapter IO for tinytune.
//!
//! The GPU-independent parts live here and build for `wasm32-unknown-unknown`:
//! - [`data`]: `.txt` / `.jsonl` / `.parquet` datasets → `(input_ids, labels)` examples, eval split, seeded
//!   resumable batch order. Tokenizers plug in through [`Tokenize`]; chat templates through [`chat`].
//! - [`schedule`]: LR warmup + cosine / linear / constant, equal to transformers' schedulers.
//! - [`peft`]: `adapter_config.json` + `adapter_model.safetensors` in Hugging Face PEFT's layout.
//! - [`checkpoint`]: adapter + AdamW moments + trainer state + config, resumable.
//! - [`metrics`]: JSON-lines training log.
//!
//! Every format has an in-memory form (`&str` / `&[u8]` in, `String` / `Vec<u8>` out) for the
//! browser; the path-based helpers (in [`fsio`] and the `load`/`save` functions that use it) are
//! native-only (`cfg(not(target_arch = "wasm32"))`).
//!
//! - [`trainer`]: the training loop on the device (LoRA over a frozen f32/NF4 model, AdamW over one
//!   flat buffer, gradient accumulation, clipping, eval, checkpoints); async only at readback.
//! - [`sweep`]: `tinytune sweep`'s grid, successive-halving schedule, ranking and resume record.
//! - [`model_tok`]: the model's tokenizer as the pipeline's [`Tokenize`].

pub mod adapters;
pub mod chat;
pub mod checkpoint;
pub mod config;
pub mod data;
#[cfg(not(target_arch = "wasm32"))]
pub mod fsio;
pub mod merge;
pub mod metrics;
pub mod model_tok;
pub mod options;
pub mod peft;
pub mod prefix;
pub mod prompt;
pub mod rng;
pub mod schedule;
pub mod session;
pub mod sweep;
pub mod tokenize;
pub mod trainer;

pub use adapters::{upload_adapter, AdapterGpu, PeftAdapter, PeftMethod};
pub use chat::{ChatMessage, ChatTemplate, RenderedChat};
pub use checkpoint::{Checkpoint, Moments, OptimizerState, TrainerState};
pub use config::{
    check_layers, eval_split_from, parse_layers_to_transform, parse_target_modules, AdamWConfig,
    LoraHyper, TrainConfig,
};
pub use data::{
    collate, prompt_targets, shift_labels, split_eval, Batch, BatchIter, BatchPlan, Columns,
    DataConfig, DataPosition, DataStats, Dataset, EvalSplit, Example, Stop, TextSplit,
    IGNORE_INDEX,
};
pub use metrics::{MetricsRecord, MetricsWriter, SetLoss};
pub use model_tok::ModelTokenizer;
pub use options::{
    parse_gen_options, parse_train_options, BlockOptions, GenOptions, Layers, Names, NumOrText,
    PromptInit, QuantOption, TrainOptions,
};
pub use peft::{
    LoraAdapter, LoraConfig, LoraKey, LoraModule, LoraPair, LoraWeights, TargetModules,
};
pub use prefix::{PrefixAdapter, PrefixTuningConfig};
pub use prompt::{peft_type, PromptAdapter, PromptTuningConfig};
pub use rng::Rng;
pub use schedule::{Schedule, ScheduleKind};
pub use session::{
    check_eval_set_name, kv_length, parse_eval_data_arg, plan_run, prompt_ids, GenerateSession,
    RunFrom, RunPlan, StepEvent, TrainSession,
};
pub use tokenize::{Tokenize, WithChatTemplate};
pub use trainer::{
    check_batch_fits, evaluate, Clock, PrefixStart, PromptStart, Start, Trainer, VirtualInit,
};

/// Errors of the train crate. Every variant that comes from a file names it (and, for datasets,
/// the 1-based line).
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Model(#[from] tinytune_model::ModelError),
    #[error(transparent)]
    Gpu(#[from] tinytune_gpu::GpuError),
    /// Reading or writing `path` failed.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A record of a dataset file is malformed (`line` is 1-based).
    #[error("{file}:{line}: {msg}")]
    DataRecord {
        file: String,
        line: usize,
        msg: String,
    },
    /// A row of a Parquet dataset is malformed (`row` counts from 0, as pandas and the Hub's
    /// dataset viewer do).
    #[error("{file}: row {row} (from 0): {msg}")]
    DataRow {
        file: String,
        row: usize,
        msg: String,
    },
    /// A dataset as a whole is unusable (empty, unknown extension, bad split...).
    #[error("{file}: {msg}")]
    Data { file: String, msg: String },
    /// A chat template failed to compile or render (including `raise_exception` from the template).
    #[error("chat template: {0}")]
    Template(String),
    /// A PEFT adapter file is malformed or uses a feature tinytune does not support.
    #[error("{file}: {msg}")]
    Adapter { file: String, msg: String },
    /// A checkpoint is malformed or inconsistent.
    #[error("{file}: {msg}")]
    Checkpoint { file: String, msg: String },
    /// An invalid argument (schedule, split, batch plan, config).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A run that cannot fit the device (the message says what to change).
    #[error("{0}")]
    DeviceLimit(String),
    /// A step's loss or gradient norm is not finite: the run diverged. The GPU skipped that
    /// step's update (AdamW leaves every parameter and moment as it was when the norm is not
    /// finite), so the parameters and the checkpoints already saved are intact.
    #[error(
        "step {step}: the loss is {loss} and the gradient norm {grad_norm}: training diverged, \
         so the run stopped (the GPU skipped this step's update; checkpoints already saved are \
         intact). Lower the learning rate (it was {lr:e}), keep gradient clipping on \
         (max_grad_norm), or check the data"
    )]
    NonFinite {
        step: u64,
        loss: f64,
        grad_norm: f64,
        lr: f64,
    },
}

/// Result alias of the train crate.
pub type Result<T, E = TrainError> = std::result::Result<T, E>;
