//! The one table of what a user sets: `train`'s and `generate`'s options, their names, defaults
//! and checks. The CLI parses its flags into these structs (clap derive: `--lora-r` is
//! `lora_r`), the browser module its options JSON (serde, the same snake_case names); one
//! [`Default`] each, and [`TrainConfig`]'s defaults come from [`TrainOptions::default`].

use std::fmt;
use std::str::FromStr;

use serde::Deserialize;
use tinytune_model::{Quant, SamplingParams};

pub use crate::adapters::PeftMethod;
use crate::config::{
    check_layers, eval_split_from, parse_compute_dtype, parse_layers_to_transform,
    parse_target_modules, AdamWConfig, LoraHyper, TrainConfig,
};
use crate::data::{Columns, EvalSplit, Stop, TextSplit};
use crate::peft::LoraModule;
use crate::schedule::ScheduleKind;
use crate::trainer::{Start, VirtualInit};

/// A number or a string (the CLI takes `--eval-split 0.1` or `--eval-split 10`; JSON callers may
/// write either form).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum NumOrText {
    Num(f64),
    Text(String),
}

/// A list of names or one comma-separated string (`--target-modules q_proj,v_proj`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Names {
    List(Vec<String>),
    Text(String),
}

/// Layers as a list of indices or the CLI's spec string (`3,5`, `20-29`, `top:8`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Layers {
    List(Vec<usize>),
    Text(String),
}

impl fmt::Display for NumOrText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NumOrText::Num(v) => write!(f, "{v}"),
            NumOrText::Text(s) => f.write_str(s),
        }
    }
}

impl FromStr for NumOrText {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.trim().parse() {
            Ok(v) => NumOrText::Num(v),
            Err(_) => NumOrText::Text(s.to_string()),
        })
    }
}

impl fmt::Display for Names {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Names::List(l) => f.write_str(&l.join(",")),
            Names::Text(s) => f.write_str(s),
        }
    }
}

impl FromStr for Names {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Names::Text(s.to_string()))
    }
}

impl fmt::Display for Layers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Layers::List(l) => {
                let l: Vec<String> = l.iter().map(usize::to_string).collect();
                f.write_str(&l.join(","))
            }
            Layers::Text(s) => f.write_str(s),
        }
    }
}

impl FromStr for Layers {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Layers::Text(s.to_string()))
    }
}

/// Prompt and prefix tuning's initialisation.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PromptInit {
    /// N(0, 1).
    Random,
    /// From the init text: its embeddings (prompt tuning), or the keys and values of every layer
    /// on it (prefix tuning).
    Text,
}

/// `--quant` (train, generate, eval, logits) and `loadModel`'s `quant`: storage of the frozen
/// base model's linear layers.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum QuantOption {
    /// NF4, block 64, double-quantized absmax (QLoRA, bitsandbytes-compatible).
    #[default]
    Nf4,
    /// f32, as loaded.
    None,
}

impl QuantOption {
    /// The loader's setting.
    pub fn quant(self) -> Quant {
        match self {
            QuantOption::Nf4 => Quant::NF4,
            QuantOption::None => Quant::None,
        }
    }

    /// `"nf4"` or `"none"`.
    pub fn name(self) -> &'static str {
        match self {
            QuantOption::Nf4 => "nf4",
            QuantOption::None => "none",
        }
    }

    /// Parses `"nf4"` or `"none"`.
    pub fn parse(s: &str) -> Result<QuantOption, String> {
        match s {
            "nf4" => Ok(QuantOption::Nf4),
            "none" => Ok(QuantOption::None),
            q => Err(format!("quant {q:?}: expected \"nf4\" or \"none\"")),
        }
    }
}

/// `--block-size`, `--block-size-map`, `--bits-per-weight` (train, eval, generate, logits,
/// quantize) and the same keys of the JS `loadModel` options: the NF4 block size of each frozen
/// linear layer ([`tinytune_model::blocks`]). None given: block 64 everywhere (or what an adapter
/// or checkpoint recorded).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct BlockOptions {
    /// NF4 block size of every frozen linear layer: 32, 64, 128, 256, 512, 1024, 2048 or 4096
    /// (what bitsandbytes accepts), or `auto`: per layer the size with the least quantization
    /// error within --bits-per-weight (default: the memory of block 64 everywhere); prints a
    /// per-layer table [default: 64, or the sizes stored with --adapter / --resume].
    #[arg(long, value_name = "N|auto")]
    #[serde(deserialize_with = "text_or_number")]
    pub block_size: Option<String>,
    /// Per-module block sizes, `PATTERN=N,...` (e.g. 'mlp.down_proj=32,self_attn.*=128'): a
    /// pattern matches a module's whole name (model.layers.3.mlp.down_proj) or a dot-separated
    /// suffix of it, `*` matches anything; later entries win; with --block-size auto the listed
    /// modules keep their size [default: none].
    #[arg(long, value_name = "PATTERN=N,...")]
    pub block_size_map: Option<String>,
    /// With --block-size auto: average bits per quantized weight to stay within, codes + absmax +
    /// nested absmax counted (block 64 with double quantization is about 4.127) [default: the
    /// memory of block 64 everywhere].
    #[arg(long, value_name = "B")]
    pub bits_per_weight: Option<f64>,
}

/// A JSON string or number as text (`"block_size": 128` or `"auto"`).
fn text_or_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<NumOrText>::deserialize(d)?.map(|v| v.to_string()))
}

impl BlockOptions {
    /// Whether any of the three is given.
    pub fn is_set(&self) -> bool {
        self.block_size.is_some() || self.block_size_map.is_some() || self.bits_per_weight.is_some()
    }

    /// The model crate's spec (`None`: nothing given).
    pub fn spec(&self, double_quant: bool) -> Result<Option<tinytune_model::BlockSpec>, String> {
        tinytune_model::BlockSpec::parse(
            self.block_size.as_deref(),
            self.block_size_map.as_deref(),
            self.bits_per_weight,
            double_quant,
        )
        .map_err(|e| e.to_string())
    }
}

fn defaults() -> TrainOptions {
    TrainOptions::default()
}

fn gen_defaults() -> GenOptions {
    GenOptions::default()
}

/// `train`'s options: `tinytune train`'s flags (less the host's own: model, data, output
/// directory, adapter folder, resume, logging) and the JS `train()` options JSON.
#[derive(Clone, Debug, Deserialize, PartialEq, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct TrainOptions {
    /// What to train: lora (LoRA adapters; QLoRA with --quant nf4), prompt-tuning (PEFT's
    /// PROMPT_TUNING: --num-virtual-tokens trainable embeddings prepended to every sequence) or
    /// prefix-tuning (PEFT's PREFIX_TUNING: --num-virtual-tokens trainable key/value rows in front
    /// of every layer's attention).
    #[arg(long, value_enum, default_value_t = defaults().peft)]
    pub peft: PeftMethod,
    /// Prompt and prefix tuning: number of virtual tokens.
    #[arg(long, default_value_t = defaults().num_virtual_tokens)]
    pub num_virtual_tokens: usize,
    /// Prompt tuning: initialise the virtual tokens from N(0, 1) (random) or from the embeddings of
    /// --prompt-tuning-init-text (text), as PEFT does.
    #[arg(long, value_enum, default_value_t = defaults().prompt_tuning_init)]
    pub prompt_tuning_init: PromptInit,
    /// Prompt tuning: the init text for --prompt-tuning-init text [default: none].
    #[arg(long, value_name = "TEXT")]
    pub prompt_tuning_init_text: Option<String>,
    /// Prefix tuning: initialise the prefixes from N(0, 1) (random, PEFT's init; the model starts
    /// far from the base model's behaviour) or from the keys and values every layer computes for
    /// --prefix-tuning-init-text (text: training starts as if that text were in context).
    #[arg(long, value_enum, default_value_t = defaults().prefix_tuning_init)]
    pub prefix_tuning_init: PromptInit,
    /// Prefix tuning: the init text for --prefix-tuning-init text [default: none].
    #[arg(long, value_name = "TEXT")]
    pub prefix_tuning_init_text: Option<String>,
    /// Prefix tuning: train the prefixes through PEFT's reparameterisation MLP
    /// (prefix_projection=True: embeddings -> Linear -> tanh -> Linear); the saved adapter holds
    /// the folded prefix, the checkpoints the MLP [default: off].
    #[arg(long)]
    pub prefix_projection: bool,
    /// Prefix tuning with --prefix-projection: the MLP's hidden size (PEFT's
    /// encoder_hidden_size) [default: the key/value width, num_key_value_heads * head_dim].
    #[arg(long, value_name = "N")]
    pub encoder_hidden_size: Option<usize>,
    /// LoRA rank.
    #[arg(long, default_value_t = defaults().lora_r)]
    pub lora_r: usize,
    /// LoRA alpha; the update is scaled by alpha / r (alpha / sqrt(r) with --use-rslora).
    #[arg(long, default_value_t = defaults().lora_alpha)]
    pub lora_alpha: f64,
    /// LoRA dropout on each adapter's input during training (PEFT's lora_dropout).
    #[arg(long, default_value_t = defaults().lora_dropout)]
    pub lora_dropout: f64,
    /// Modules to adapt, PEFT names separated by commas, or all-linear (all-linear =
    /// q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj).
    #[arg(long, value_name = "NAMES", default_value_t = defaults().target_modules)]
    pub target_modules: Names,
    /// Adapt only these layers (PEFT's layers_to_transform): comma-separated indices, or a range
    /// like 20-29, or top:N for the last N layers. The backward pass stops at the lowest adapted
    /// layer, so adapting only the top layers is faster [default: every layer].
    #[arg(long, value_name = "LAYERS")]
    pub layers_to_transform: Option<Layers>,
    /// rsLoRA scaling alpha / sqrt(r) [default: off].
    #[arg(long)]
    pub use_rslora: bool,
    /// Peak learning rate.
    #[arg(long, default_value_t = defaults().learning_rate)]
    pub learning_rate: f64,
    /// LR schedule after warmup: linear, cosine or constant.
    #[arg(long, default_value_t = defaults().lr_scheduler)]
    pub lr_scheduler: String,
    /// Linear warmup steps.
    #[arg(long, default_value_t = defaults().warmup_steps, conflicts_with = "warmup_ratio")]
    pub warmup_steps: u64,
    /// Warmup as a fraction of the total steps (like transformers' warmup_ratio) [default: unset].
    #[arg(long)]
    pub warmup_ratio: Option<f64>,
    /// Number of optimizer steps [default: unset; --epochs decides].
    #[arg(long, conflicts_with = "epochs")]
    pub num_steps: Option<u64>,
    /// Passes over the training set [default: 1].
    #[arg(long)]
    pub epochs: Option<u64>,
    /// Rows per micro-batch.
    #[arg(long, default_value_t = defaults().batch_size)]
    pub batch_size: usize,
    /// Micro-batches per optimizer step (gradient accumulation).
    #[arg(long, default_value_t = defaults().grad_accum)]
    pub grad_accum: usize,
    /// Tokens per example: longer records are truncated, text is packed into blocks of this size.
    #[arg(long, default_value_t = defaults().seq_len)]
    pub seq_len: usize,
    /// How .txt files are split into documents.
    #[arg(long, value_enum, default_value_t = defaults().text_split)]
    pub text_split: TextSplit,
    /// Read a record field from another key / column, repeatable: FIELD=COLUMN with FIELD one of
    /// text, prompt, completion, messages, conversations, input_ids, labels (e.g.
    /// --data-column prompt=question --data-column completion=answer); naming a field also
    /// picks its form when records have several [default: none, each field under its own name].
    #[arg(long, value_name = "FIELD=COLUMN")]
    pub data_column: Vec<String>,
    /// Clip the global gradient norm to this (0: off).
    #[arg(long, default_value_t = defaults().max_grad_norm)]
    pub max_grad_norm: f64,
    /// AdamW weight decay.
    #[arg(long, default_value_t = defaults().weight_decay)]
    pub weight_decay: f64,
    /// Recompute each layer's activations during the backward pass instead of storing them all:
    /// activation memory of one layer instead of every layer, for about one more forward pass of
    /// compute (transformers' gradient_checkpointing) [default: off].
    #[arg(long)]
    pub gradient_checkpointing: bool,
    /// Operand dtype of the frozen-weight matmuls: f16 (operands rounded to f16, products and
    /// sums in f32, as bitsandbytes' compute dtype; residual stream, norms, softmax, loss and
    /// parameters stay f32) or f32 [default: f16 on a GPU with SHADER_F16, f32 elsewhere].
    #[arg(long, value_name = "f32|f16")]
    pub compute_dtype: Option<String>,
    /// Held-out eval set: a fraction in (0, 1) or a count of examples; 0 = none.
    #[arg(long, value_name = "N", default_value_t = defaults().eval_split)]
    pub eval_split: NumOrText,
    /// Evaluate every N steps (0: only at the end).
    #[arg(long, default_value_t = defaults().eval_every)]
    pub eval_every: u64,
    /// Save a checkpoint every N steps (0: only at the end and when stopped).
    #[arg(long, default_value_t = defaults().save_every)]
    pub save_every: u64,
    /// Seed of the LoRA init, the data order and the eval split.
    #[arg(long, default_value_t = defaults().seed)]
    pub seed: u64,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            peft: PeftMethod::Lora,
            num_virtual_tokens: 20,
            prompt_tuning_init: PromptInit::Random,
            prompt_tuning_init_text: None,
            prefix_tuning_init: PromptInit::Random,
            prefix_tuning_init_text: None,
            prefix_projection: false,
            encoder_hidden_size: None,
            lora_r: 8,
            lora_alpha: 16.0,
            lora_dropout: 0.0,
            target_modules: Names::Text("all-linear".into()),
            layers_to_transform: None,
            use_rslora: false,
            learning_rate: 2e-4,
            lr_scheduler: "linear".into(),
            warmup_steps: 0,
            warmup_ratio: None,
            num_steps: None,
            epochs: None,
            batch_size: 4,
            grad_accum: 1,
            seq_len: 512,
            text_split: TextSplit::Document,
            data_column: Vec::new(),
            max_grad_norm: 1.0,
            weight_decay: 0.0,
            gradient_checkpointing: false,
            compute_dtype: None,
            eval_split: NumOrText::Num(0.0),
            eval_every: 0,
            save_every: 0,
            seed: 42,
        }
    }
}

/// Deserializes options JSON (empty = the defaults); unknown names are errors, and an error names
/// the option at fault (serde_json's message alone gives a line and column but not the key).
/// `what` starts the message (`"train options"`).
pub fn parse_named<T: serde::de::DeserializeOwned + Default>(
    json: &str,
    what: &str,
) -> Result<T, String> {
    if json.trim().is_empty() {
        return Ok(T::default());
    }
    serde_json::from_str(json).map_err(|e| {
        let v: Option<serde_json::Value> = serde_json::from_str(json).ok();
        let culprit = v.as_ref().and_then(|v| v.as_object()).and_then(|obj| {
            obj.iter().find_map(|(k, val)| {
                let one =
                    serde_json::Value::Object([(k.clone(), val.clone())].into_iter().collect());
                serde_json::from_value::<T>(one)
                    .err()
                    .map(|e| match e.to_string() {
                        m if m.contains(&format!("`{k}`")) => format!("{what}: {m}"),
                        m => format!("{what}: {k}: {m}"),
                    })
            })
        });
        culprit.unwrap_or_else(|| format!("{what}: {e}"))
    })
}

/// Parses `train`'s options JSON (empty = defaults); unknown names are errors.
pub fn parse_train_options(json: &str) -> Result<TrainOptions, String> {
    parse_named(json, "train options")
}

/// `--target-modules`: PEFT names or `all-linear` ([`parse_target_modules`]).
pub fn parse_targets(names: &Names) -> Result<Vec<LoraModule>, String> {
    let list: Vec<String> = match names {
        Names::List(l) => l.clone(),
        Names::Text(t) => t.split(',').map(str::to_string).collect(),
    };
    parse_target_modules(&list).map_err(|e| e.to_string())
}

/// `--layers-to-transform`: indices, `20-29` (inclusive), or `top:N`, against `n_layers`.
pub fn parse_layers(spec: &Layers, n_layers: usize) -> Result<Vec<usize>, String> {
    match spec {
        Layers::List(l) => check_layers(l.clone(), n_layers),
        Layers::Text(spec) => parse_layers_to_transform(spec, n_layers),
    }
    .map_err(|e| e.to_string())
}

/// `--eval-split`: 0 = none, a fraction in (0, 1), or a whole count.
pub fn parse_eval_split(v: &NumOrText) -> Result<EvalSplit, String> {
    let v = match v {
        NumOrText::Num(v) => *v,
        NumOrText::Text(s) => s
            .trim()
            .parse()
            .map_err(|_| format!("eval_split {s:?}: expected a fraction or a count"))?,
    };
    eval_split_from(v).map_err(|e| e.to_string())
}

impl Default for TrainConfig {
    /// The defaults of [`TrainOptions`] (the one table of option defaults).
    fn default() -> Self {
        TrainOptions::default()
            .to_config("", Vec::new(), 0, false)
            .expect("the default options are valid")
    }
}

impl TrainOptions {
    /// How a fresh run of `peft` starts: [`Start::Fresh`] for LoRA (its settings are in the
    /// config), the virtual tokens' init for prompt (`encode` tokenizes the init text) and prefix
    /// tuning.
    pub fn peft_start(
        &self,
        encode: impl Fn(&str) -> Result<Vec<u32>, String>,
    ) -> Result<Start, String> {
        let init = |kind: PromptInit, text: &Option<String>| match kind {
            PromptInit::Random => VirtualInit::Random,
            PromptInit::Text => VirtualInit::Text(text.clone()),
        };
        Start::fresh(
            self.peft,
            self.num_virtual_tokens,
            &init(self.prompt_tuning_init, &self.prompt_tuning_init_text),
            &init(self.prefix_tuning_init, &self.prefix_tuning_init_text),
            self.prefix_projection.then_some(self.encoder_hidden_size),
            encode,
        )
        .map_err(|e| e.to_string())
    }

    /// Checks the options (each message names the option) and builds the trainer's config.
    /// `from_adapter`: the run starts from an adapter, whose rank replaces `lora_r`;
    /// `n_layers` checks `layers_to_transform`.
    pub fn to_config(
        &self,
        base_model: &str,
        data: Vec<String>,
        n_layers: usize,
        from_adapter: bool,
    ) -> Result<TrainConfig, String> {
        if self.num_steps.is_some() && self.epochs.is_some() {
            return Err("give num_steps or epochs, not both".into());
        }
        if self.warmup_ratio.is_some() && self.warmup_steps > 0 {
            return Err("give warmup_steps or warmup_ratio, not both".into());
        }
        if let Some(r) = self.warmup_ratio {
            if !(0.0..1.0).contains(&r) {
                return Err("warmup_ratio must be in [0, 1)".into());
            }
        }
        if self.seq_len < 2 {
            return Err("seq_len must be at least 2".into());
        }
        // The trainer checks these too, in its own words; here they carry the option's name.
        for (name, v) in [
            ("batch_size", self.batch_size),
            ("grad_accum", self.grad_accum),
            ("num_virtual_tokens", self.num_virtual_tokens),
        ] {
            if v == 0 {
                return Err(format!("{name} must be at least 1"));
            }
        }
        if self.peft == PeftMethod::Lora && self.lora_r == 0 && !from_adapter {
            return Err("lora_r must be at least 1".into());
        }
        if self.num_steps == Some(0) || self.epochs == Some(0) {
            return Err("num_steps and epochs must be at least 1".into());
        }
        for (name, v) in [
            ("learning_rate", self.learning_rate),
            ("lora_alpha", self.lora_alpha),
            ("max_grad_norm", self.max_grad_norm),
            ("weight_decay", self.weight_decay),
        ] {
            if !v.is_finite() || v < 0.0 {
                return Err(format!("{name} must be a finite number >= 0 (got {v})"));
            }
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return Err(format!(
                "lora_dropout must be in [0, 1) (got {})",
                self.lora_dropout
            ));
        }
        let stop = match (self.num_steps, self.epochs) {
            (Some(s), _) => Stop::Steps(s),
            (None, Some(e)) => Stop::Epochs(e),
            (None, None) => Stop::Epochs(1),
        };
        Ok(TrainConfig {
            base_model: base_model.to_string(),
            data,
            seq_len: self.seq_len,
            text_split: self.text_split,
            data_columns: Columns::parse(&self.data_column)?,
            batch_size: self.batch_size,
            grad_accum: self.grad_accum,
            stop,
            eval_split: parse_eval_split(&self.eval_split)?,
            eval_every: self.eval_every,
            save_every: self.save_every,
            seed: self.seed,
            lr: self.learning_rate,
            schedule: ScheduleKind::parse(&self.lr_scheduler).map_err(|e| e.to_string())?,
            warmup_steps: self.warmup_steps,
            max_grad_norm: self.max_grad_norm,
            gradient_checkpointing: self.gradient_checkpointing,
            compute_dtype: match &self.compute_dtype {
                None => None,
                Some(s) => Some(parse_compute_dtype(s)?.name().to_string()),
            },
            adamw: AdamWConfig {
                weight_decay: self.weight_decay,
                ..AdamWConfig::default()
            },
            lora: LoraHyper {
                r: self.lora_r,
                alpha: self.lora_alpha,
                dropout: self.lora_dropout,
                targets: parse_targets(&self.target_modules)?,
                use_rslora: self.use_rslora,
                layers_to_transform: match &self.layers_to_transform {
                    Some(spec) => Some(parse_layers(spec, n_layers)?),
                    None => None,
                },
            },
        })
    }
}

/// `generate`'s options: `tinytune generate`'s flags (less the host's own: model, adapter
/// folder, prompt, quant) and the JS `generate()` options JSON.
#[derive(Clone, Debug, Deserialize, PartialEq, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct GenOptions {
    /// Most tokens to generate (generation also stops at an end-of-sequence token).
    #[arg(long, value_name = "N", default_value_t = gen_defaults().max_new_tokens)]
    pub max_new_tokens: usize,
    /// Sampling temperature; 0 picks the most likely token (greedy).
    #[arg(long, value_name = "T", default_value_t = gen_defaults().temperature)]
    pub temperature: f32,
    /// Sample from the K most likely tokens only; 0 = off (ignored when greedy).
    #[arg(long, value_name = "K", default_value_t = gen_defaults().top_k)]
    pub top_k: usize,
    /// Nucleus sampling: the smallest set of most likely tokens whose probabilities sum to at
    /// least P; 1.0 = off (ignored when greedy).
    #[arg(long, value_name = "P", default_value_t = gen_defaults().top_p)]
    pub top_p: f32,
    /// Repetition penalty over the prompt and the generated tokens (transformers' semantics:
    /// a seen token's logit is divided by it if positive, multiplied if negative); 1.0 = off.
    #[arg(long, value_name = "R", default_value_t = gen_defaults().repetition_penalty)]
    pub repetition_penalty: f32,
    /// Seed of the sampling RNG (the same seed and settings give the same text).
    #[arg(long, default_value_t = gen_defaults().seed)]
    pub seed: u64,
    /// Tokenize the prompt as-is (with the tokenizer's BOS if it adds one) instead of rendering
    /// it as a user message with the model's chat template and the generation prompt [default:
    /// the chat template when the tokenizer has one].
    #[arg(long)]
    pub raw: bool,
    /// System message of the chat [default: none, the template's own default if it has one].
    #[arg(long, value_name = "TEXT", conflicts_with = "raw")]
    pub system: Option<String>,
    /// Cap on prompt + generated tokens (the KV cache's size) [default: the model's
    /// max_position_embeddings].
    #[arg(long, value_name = "N")]
    pub max_length: Option<usize>,
}

impl Default for GenOptions {
    fn default() -> Self {
        let s = SamplingParams::default();
        GenOptions {
            max_new_tokens: 128,
            temperature: s.temperature,
            top_k: s.top_k,
            top_p: s.top_p,
            repetition_penalty: s.repetition_penalty,
            seed: s.seed,
            raw: false,
            system: None,
            max_length: None,
        }
    }
}

impl GenOptions {
    /// The sampler's settings.
    pub fn sampling(&self) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            repetition_penalty: self.repetition_penalty,
            seed: self.seed,
        }
    }
}

/// Parses `generate`'s options JSON (empty = defaults); unknown names are errors.
pub fn parse_gen_options(json: &str) -> Result<GenOptions, String> {
    parse_named(json, "generate options")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct TrainCli {
        #[command(flatten)]
        o: TrainOptions,
    }

    #[derive(Parser)]
    struct GenCli {
        #[command(flatten)]
        o: GenOptions,
    }

    #[test]
    fn json_and_flags_share_one_table_of_defaults() {
        let json = parse_train_options("{}").unwrap();
        let flags = TrainCli::try_parse_from(["tinytune"]).unwrap().o;
        assert_eq!(json, TrainOptions::default());
        assert_eq!(flags, TrainOptions::default());
        let c = json.to_config("", Vec::new(), 4, false).unwrap();
        assert_eq!(c, TrainConfig::default());
        assert_eq!(
            (c.stop, c.eval_split, c.max_grad_norm, c.schedule),
            (Stop::Epochs(1), EvalSplit::None, 1.0, ScheduleKind::Linear)
        );
        assert_eq!(c.lora, LoraHyper::default());

        let json = parse_gen_options("{}").unwrap();
        let flags = GenCli::try_parse_from(["tinytune"]).unwrap().o;
        assert_eq!(json, GenOptions::default());
        assert_eq!(flags, GenOptions::default());
        assert_eq!(json.sampling(), SamplingParams::default());
        assert_eq!(json.max_new_tokens, 128);
    }

    #[test]
    fn flags_and_json_parse_alike() {
        let flags = TrainCli::try_parse_from([
            "tinytune",
            "--lora-r",
            "4",
            "--eval-split",
            "0.25",
            "--target-modules",
            "q_proj,v_proj",
            "--layers-to-transform",
            "top:1",
            "--peft",
            "prompt-tuning",
            "--text-split",
            "lines",
            "--data-column",
            "prompt=question",
            "--data-column",
            "completion=answer",
        ])
        .unwrap()
        .o;
        let json = parse_train_options(
            r#"{"lora_r": 4, "eval_split": 0.25, "target_modules": "q_proj,v_proj",
                "layers_to_transform": "top:1", "peft": "prompt-tuning", "text_split": "lines",
                "data_column": ["prompt=question", "completion=answer"]}"#,
        )
        .unwrap();
        assert_eq!(flags, json);
        let c = flags.to_config("m", vec!["d".into()], 2, false).unwrap();
        assert_eq!(c.lora.targets, vec![LoraModule::Q, LoraModule::V]);
        assert_eq!(c.lora.layers_to_transform, Some(vec![1]));
        assert_eq!(c.eval_split, EvalSplit::Fraction(0.25));
        assert_eq!(c.data_config().columns.col("prompt"), "question");
        assert_eq!(
            c.data_columns.specs(),
            ["completion=answer", "prompt=question"]
        );
        let bad = TrainOptions {
            data_column: vec!["answer".into()],
            ..TrainOptions::default()
        };
        let e = bad.to_config("m", vec![], 2, false).unwrap_err();
        assert!(
            e.contains("data_column \"answer\": expected FIELD=COLUMN"),
            "{e}"
        );
    }
}
