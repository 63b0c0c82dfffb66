//! The JSON options of `train` and `generate`, with the CLI's flag names (`--lora-r` is
//! `"lora_r"`) and defaults. Plain Rust, so they are tested natively.

use serde::Deserialize;
use tinytune_model::SamplingParams;
use tinytune_train::data::{EvalSplit, Stop, TextSplit};
use tinytune_train::peft::LoraModule;
use tinytune_train::{
    check_layers, eval_split_from, parse_layers_to_transform, parse_target_modules, AdamWConfig,
    LoraHyper, PeftMethod, ScheduleKind, Start, TrainConfig, VirtualInit,
};

/// A number or a string (the CLI takes `--eval-split 0.1` or `--eval-split 10`, and
/// `--layers-to-transform 3,5` or `top:8`; JSON callers may write either form).
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

/// Layers as a list of indices or the CLI's spec string.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Layers {
    List(Vec<usize>),
    Text(String),
}

/// `--peft`: what a run trains.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Peft {
    /// LoRA adapters on the linear layers (PEFT `LORA`).
    Lora,
    /// Trainable virtual token embeddings (PEFT `PROMPT_TUNING`).
    PromptTuning,
    /// Trainable per-layer key/value prefixes (PEFT `PREFIX_TUNING`).
    PrefixTuning,
}

impl Peft {
    /// The trainer's method.
    pub fn method(self) -> PeftMethod {
        match self {
            Peft::Lora => PeftMethod::Lora,
            Peft::PromptTuning => PeftMethod::PromptTuning,
            Peft::PrefixTuning => PeftMethod::PrefixTuning,
        }
    }
}

/// `--prompt-tuning-init`.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PromptInit {
    Random,
    Text,
}

/// `train`'s options: the names and defaults of `tinytune train`'s flags.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TrainOptions {
    pub peft: Peft,
    pub num_virtual_tokens: usize,
    pub prompt_tuning_init: PromptInit,
    pub prompt_tuning_init_text: Option<String>,
    pub prefix_tuning_init: PromptInit,
    pub prefix_tuning_init_text: Option<String>,
    pub prefix_projection: bool,
    pub encoder_hidden_size: Option<usize>,
    pub lora_r: usize,
    pub lora_alpha: f64,
    pub lora_dropout: f64,
    pub target_modules: Names,
    pub layers_to_transform: Option<Layers>,
    pub use_rslora: bool,
    pub learning_rate: f64,
    pub lr_scheduler: String,
    pub warmup_steps: u64,
    pub warmup_ratio: Option<f64>,
    pub num_steps: Option<u64>,
    pub epochs: Option<u64>,
    pub batch_size: usize,
    pub grad_accum: usize,
    pub seq_len: usize,
    pub text_split: TextSplit,
    pub max_grad_norm: f64,
    pub weight_decay: f64,
    pub gradient_checkpointing: bool,
    pub eval_split: NumOrText,
    pub eval_every: u64,
    /// Checkpoint every N steps (0: only at the end and when stopped); checkpoints go to
    /// `train`'s `onCheckpoint`.
    pub save_every: u64,
    pub seed: u64,
    /// Start from the adapter given to `loadAdapter` (the CLI's `--adapter DIR`) instead of a
    /// fresh init.
    pub adapter: bool,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            peft: Peft::Lora,
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
            max_grad_norm: 1.0,
            weight_decay: 0.0,
            gradient_checkpointing: false,
            eval_split: NumOrText::Num(0.0),
            eval_every: 0,
            save_every: 0,
            seed: 42,
            adapter: false,
        }
    }
}

/// Parses `train`'s options JSON (empty = defaults); unknown names are errors.
pub fn parse_train_options(json: &str) -> Result<TrainOptions, String> {
    if json.trim().is_empty() {
        return Ok(TrainOptions::default());
    }
    parse_named(json, "train options")
}

/// Deserializes options JSON; an error names the option at fault (serde_json's message alone
/// gives a line and column but not the key).
fn parse_named<T: serde::de::DeserializeOwned>(json: &str, what: &str) -> Result<T, String> {
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
            self.peft.method(),
            self.num_virtual_tokens,
            &init(self.prompt_tuning_init, &self.prompt_tuning_init_text),
            &init(self.prefix_tuning_init, &self.prefix_tuning_init_text),
            self.prefix_projection.then_some(self.encoder_hidden_size),
            encode,
        )
        .map_err(|e| e.to_string())
    }

    /// The trainer's config, as `tinytune train` builds it from the same flags. (Fields the
    /// trainer gains later take their defaults until they get an option here.)
    #[allow(clippy::needless_update)]
    pub fn to_config(
        &self,
        base_model: &str,
        data_name: &str,
        n_layers: usize,
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
        if self.peft == Peft::Lora && self.lora_r == 0 && !self.adapter {
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
            data: vec![data_name.to_string()],
            seq_len: self.seq_len,
            text_split: self.text_split,
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
            ..TrainConfig::default()
        })
    }
}

/// Checks before allocating that one training micro-batch's activations fit: `batch_size` ×
/// (`seq_len` + `virtual_tokens`) rows of `widest` f32s (the model's widest activation: hidden,
/// attention or MLP width) must fit one storage binding of `limit` bytes. Computed in u64: on
/// wasm32 the workspace's own sizes (usize) would wrap around instead.
pub fn check_batch_fits(
    batch_size: usize,
    seq_len: usize,
    virtual_tokens: usize,
    widest: usize,
    limit: u64,
) -> Result<(), String> {
    let rows = (batch_size as u64).saturating_mul(seq_len as u64 + virtual_tokens as u64);
    let bytes = rows.saturating_mul(widest as u64).saturating_mul(4);
    if bytes <= limit {
        return Ok(());
    }
    let fit = (limit / (widest as u64 * 4)).max(1);
    Err(format!(
        "batch_size {batch_size} x seq_len {seq_len}{} = {rows} rows need {bytes} bytes per \
         activation buffer ({widest} floats a row), but the device allows at most {limit} bytes \
         per buffer. This does not fit the GPU: use a smaller batch_size or seq_len (batch_size \
         x seq_len at most {fit}), or a smaller model.",
        if virtual_tokens > 0 {
            format!(" (+ {virtual_tokens} virtual tokens)")
        } else {
            String::new()
        }
    ))
}

/// A GPU error's message plus what to change: over a device limit or out of memory while
/// training or generating means a smaller batch / sequence (or model); other messages pass as they
/// are. `what` is `"train"`, `"generate"` or `"loadModel"`.
pub fn with_gpu_hint(msg: String, what: &str) -> String {
    let limit = msg.contains("the device allows at most")
        || msg.contains("out of GPU memory")
        || msg.contains("over the device limit");
    let lost = msg.contains("device error") || msg.to_ascii_lowercase().contains("device lost");
    if !limit && !lost {
        return msg;
    }
    let change = match what {
        "train" => {
            "use a smaller batch_size or seq_len (or gradient_checkpointing, fewer \
                    layers_to_transform, or a smaller model)"
        }
        "generate" => {
            "use a shorter prompt or fewer max_new_tokens (or max_length), or a smaller \
                       model"
        }
        _ => "use a smaller model (or quant \"nf4\" instead of \"none\")",
    };
    let prefix = if lost {
        "The GPU device failed: reload the page, then "
    } else {
        "This does not fit the GPU: "
    };
    format!(
        "{}. {prefix}{change}.",
        msg.trim_end().trim_end_matches('.')
    )
}

/// `generate`'s options: the names and defaults of `tinytune generate`'s flags.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct GenOptions {
    pub max_new_tokens: usize,
    pub temperature: f32,
    pub top_k: usize,
    pub top_p: f32,
    pub repetition_penalty: f32,
    pub seed: u64,
    /// Tokenize the prompt as-is instead of rendering it with the chat template.
    pub raw: bool,
    pub system: Option<String>,
    pub max_length: Option<usize>,
    /// Use the trained / loaded adapter (default: when there is one); `false` = the base model.
    pub adapter: Option<bool>,
}

impl Default for GenOptions {
    fn default() -> Self {
        GenOptions {
            max_new_tokens: 128,
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            repetition_penalty: 1.0,
            seed: 0,
            raw: false,
            system: None,
            max_length: None,
            adapter: None,
        }
    }
}

impl GenOptions {
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
    if json.trim().is_empty() {
        return Ok(GenOptions::default());
    }
    parse_named(json, "generate options")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tinytune_train::{PrefixStart, PromptStart};

    #[test]
    fn defaults_are_the_cli_defaults() {
        let o = parse_train_options("{}").unwrap();
        assert_eq!(o, TrainOptions::default());
        let c = o.to_config("m", "d.jsonl", 4).unwrap();
        let d = TrainConfig::default();
        assert_eq!(c.lora, d.lora);
        assert_eq!(
            (c.lr, c.batch_size, c.seq_len, c.seed),
            (d.lr, d.batch_size, d.seq_len, d.seed)
        );
        assert_eq!(
            (c.stop, c.eval_split, c.max_grad_norm),
            (Stop::Epochs(1), EvalSplit::None, 1.0)
        );
        assert_eq!(c.schedule, ScheduleKind::Linear);
    }

    #[test]
    fn cli_names_and_forms() {
        let o = parse_train_options(
            r#"{"lora_r": 4, "lora_alpha": 8, "learning_rate": 0.001, "num_steps": 6,
                "batch_size": 2, "seq_len": 64, "seed": 7, "lr_scheduler": "cosine",
                "warmup_steps": 1, "eval_split": "0.25", "target_modules": "q_proj,v_proj",
                "layers_to_transform": "top:1"}"#,
        )
        .unwrap();
        let c = o.to_config("m", "d.jsonl", 2).unwrap();
        assert_eq!(c.lora.r, 4);
        assert_eq!(c.stop, Stop::Steps(6));
        assert_eq!(c.eval_split, EvalSplit::Fraction(0.25));
        assert_eq!(c.lora.targets, vec![LoraModule::Q, LoraModule::V]);
        assert_eq!(c.lora.layers_to_transform, Some(vec![1]));
        let o = parse_train_options(r#"{"eval_split": 3, "layers_to_transform": [1, 0, 1], "target_modules": ["all-linear"]}"#).unwrap();
        let c = o.to_config("m", "d", 2).unwrap();
        assert_eq!(c.eval_split, EvalSplit::Count(3));
        assert_eq!(c.lora.layers_to_transform, Some(vec![0, 1]));
        assert_eq!(c.lora.targets.len(), 7);
        assert_eq!(
            parse_layers(&Layers::Text("0-2,5".into()), 8).unwrap(),
            vec![0, 1, 2, 5]
        );
    }

    #[test]
    fn bad_options_are_named() {
        let e = parse_train_options(r#"{"lora_rank": 4}"#).unwrap_err();
        assert!(e.contains("lora_rank"), "{e}");
        let o = parse_train_options(r#"{"layers_to_transform": "top:3"}"#).unwrap();
        assert!(o.to_config("m", "d", 2).unwrap_err().contains("2 layers"));
        let o = parse_train_options(r#"{"lr_scheduler": "step"}"#).unwrap();
        assert!(o.to_config("m", "d", 2).unwrap_err().contains("step"));
        let o = parse_train_options(r#"{"target_modules": "qkv"}"#).unwrap();
        assert!(o.to_config("m", "d", 2).unwrap_err().contains("qkv"));
        for (json, name) in [
            (r#"{"lora_r": 0}"#, "lora_r"),
            (r#"{"batch_size": 0}"#, "batch_size"),
            (r#"{"grad_accum": 0}"#, "grad_accum"),
            (r#"{"num_steps": 0}"#, "num_steps"),
            (r#"{"learning_rate": -1}"#, "learning_rate"),
            (r#"{"lora_dropout": 1}"#, "lora_dropout"),
            (
                r#"{"peft": "prompt-tuning", "num_virtual_tokens": 0}"#,
                "num_virtual_tokens",
            ),
        ] {
            let o = parse_train_options(json).unwrap();
            let e = o.to_config("m", "d", 2).unwrap_err();
            assert!(e.contains(name), "{json}: {e}");
        }
        let e = parse_train_options(r#"{"learning_rate": "fast"}"#).unwrap_err();
        assert!(
            e.contains("learning_rate") || e.contains("invalid type"),
            "{e}"
        );
        let o = parse_train_options(r#"{"eval_split": 1.5}"#).unwrap();
        assert!(o.to_config("m", "d", 2).is_err());
        assert!(parse_gen_options(r#"{"max_tokens": 3}"#)
            .unwrap_err()
            .contains("max_tokens"));
    }

    #[test]
    fn oversized_batches_are_refused_before_allocating() {
        let gib = 1u64 << 30;
        assert!(check_batch_fits(4, 512, 0, 1536, gib).is_ok());
        // 2^32 rows: a usize product would wrap to 0 on wasm32.
        let e = check_batch_fits(65536, 65536, 0, 96, gib).unwrap_err();
        assert!(
            e.contains("4294967296 rows") && e.contains("smaller batch_size or seq_len"),
            "{e}"
        );
        assert!(e.contains("at most 2796202)"), "{e}");
        // Exactly at the limit fits; one row more does not.
        let rows = gib / (64 * 4);
        assert!(check_batch_fits(rows as usize, 1, 0, 64, gib).is_ok());
        assert!(check_batch_fits(rows as usize + 1, 1, 0, 64, gib).is_err());
        let e = check_batch_fits(rows as usize, 1, 4, 64, gib).unwrap_err();
        assert!(e.contains("+ 4 virtual tokens"), "{e}");
    }

    #[test]
    fn gpu_errors_say_what_to_change() {
        let m = with_gpu_hint(
            "buffer \"acts\" needs 9 bytes but the device allows at most 8 bytes per storage binding"
                .into(),
            "train",
        );
        assert!(m.contains("smaller batch_size or seq_len"), "{m}");
        let m = with_gpu_hint(
            "out of GPU memory allocating buffer \"w\"".into(),
            "loadModel",
        );
        assert!(m.contains("smaller model"), "{m}");
        let m = with_gpu_hint("device error: Device lost".into(), "generate");
        assert!(
            m.contains("reload the page") && m.contains("max_new_tokens"),
            "{m}"
        );
        assert_eq!(
            with_gpu_hint("data.jsonl: line 3".into(), "train"),
            "data.jsonl: line 3"
        );
    }

    #[test]
    fn peft_methods() {
        let enc = |t: &str| Ok(t.bytes().map(u32::from).collect());
        let o = parse_train_options("{}").unwrap();
        assert_eq!(o.peft, Peft::Lora);
        assert!(matches!(o.peft_start(enc).unwrap(), Start::Fresh));
        let o = parse_train_options(r#"{"peft": "prompt-tuning"}"#).unwrap();
        match o.peft_start(enc).unwrap() {
            Start::Prompt(PromptStart::Random { num_virtual_tokens }) => {
                assert_eq!(num_virtual_tokens, 20)
            }
            _ => panic!("random init with the CLI's 20 tokens"),
        }
        let o =
            parse_train_options(r#"{"peft": "prefix-tuning", "num_virtual_tokens": 7}"#).unwrap();
        match o.peft_start(enc).unwrap() {
            Start::Prefix(PrefixStart::Random { num_virtual_tokens }) => {
                assert_eq!(num_virtual_tokens, 7)
            }
            _ => panic!("prefix tuning, random init"),
        }
        let o = parse_train_options(
            r#"{"peft": "prompt-tuning", "num_virtual_tokens": 4, "prompt_tuning_init": "text",
                "prompt_tuning_init_text": "ab"}"#,
        )
        .unwrap();
        match o.peft_start(enc).unwrap() {
            Start::Prompt(PromptStart::Text {
                num_virtual_tokens,
                ids,
                text,
            }) => assert_eq!(
                (num_virtual_tokens, ids, text.as_str()),
                (4, vec![97, 98], "ab")
            ),
            _ => panic!("text init"),
        }
        let o = parse_train_options(r#"{"peft": "prompt-tuning", "prompt_tuning_init": "text"}"#)
            .unwrap();
        assert!(o
            .peft_start(enc)
            .err()
            .unwrap()
            .contains("prompt_tuning_init_text"));
        let e = parse_train_options(r#"{"peft": "ia3"}"#).unwrap_err();
        assert!(e.contains("ia3") && e.contains("prompt-tuning"), "{e}");
    }

    #[test]
    fn generate_defaults_are_the_cli_defaults() {
        let g = parse_gen_options("").unwrap();
        assert_eq!(g.max_new_tokens, 128);
        assert_eq!(g.sampling(), SamplingParams::default());
    }
}
