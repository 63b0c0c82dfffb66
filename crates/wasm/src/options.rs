//! The JSON options of `train` and `generate`: the one options table of `tinytune-train`
//! ([`TrainOptions`], [`GenOptions`]: the CLI's flag names, `--lora-r` is `"lora_r"`, and its
//! defaults) plus the JS API's own keys: `"adapter"`, and `train`'s `"eval_data"` (the CLI's
//! `--eval-data NAME=FILE` with the file's contents). Plain Rust, so they are tested natively.

use std::collections::BTreeMap;

use std::ops::Deref;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use tinytune_train::options::parse_named;
pub use tinytune_train::options::{
    parse_eval_split, parse_layers, parse_targets, GenOptions, Layers, Names, NumOrText,
    PeftMethod, PromptInit, TrainOptions,
};
use tinytune_train::{BlockOptions, QuantOption, TrainConfig};

/// `train`'s options: the options table plus `"adapter"` and `"eval_data"`.
#[derive(Clone, Debug, PartialEq)]
pub struct JsTrainOptions {
    pub options: TrainOptions,
    /// Start from the adapter given to `loadAdapter` (the CLI's `--adapter DIR`) instead of a
    /// fresh init.
    pub adapter: bool,
    /// Extra held-out sets by name (the CLI's `--eval-data NAME=FILE`), in name order.
    pub eval_data: Vec<(String, EvalFile)>,
}

/// One extra held-out set of `"eval_data": {"NAME": {"file": "general.jsonl", "text": "..."}}`:
/// the file's name (its extension picks the format, as `train`'s `dataName` does) and contents.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalFile {
    pub file: String,
    pub text: String,
}

/// Parses the `"eval_data"` value: an object of set name -> `{file, text}`.
fn parse_eval_data(v: serde_json::Value) -> Result<Vec<(String, EvalFile)>, String> {
    let sets: BTreeMap<String, serde_json::Value> = serde_json::from_value(v).map_err(|_| {
        "train options: eval_data: expected an object of set name -> {\"file\": \"NAME.jsonl\", \
         \"text\": \"...\"}"
            .to_string()
    })?;
    let mut out = Vec::with_capacity(sets.len());
    for (name, v) in sets {
        tinytune_train::check_eval_set_name(&name)
            .map_err(|e| format!("train options: eval_data: {e}"))?;
        let f: EvalFile = serde_json::from_value(v).map_err(|e| {
            format!(
                "train options: eval_data.{name}: {e} (expected {{\"file\": \"NAME.jsonl\", \
                 \"text\": \"...\"}})"
            )
        })?;
        out.push((name, f));
    }
    Ok(out)
}

impl Deref for JsTrainOptions {
    type Target = TrainOptions;
    fn deref(&self) -> &TrainOptions {
        &self.options
    }
}

impl PartialEq<TrainOptions> for JsTrainOptions {
    fn eq(&self, other: &TrainOptions) -> bool {
        !self.adapter && self.eval_data.is_empty() && self.options == *other
    }
}

impl JsTrainOptions {
    /// The trainer's config, as `tinytune train` builds it from the same flags.
    pub fn to_config(
        &self,
        base_model: &str,
        data_name: &str,
        n_layers: usize,
    ) -> Result<TrainConfig, String> {
        self.options.to_config(
            base_model,
            vec![data_name.to_string()],
            n_layers,
            self.adapter,
        )
    }
}

/// `generate`'s options: the options table plus `"adapter"`.
#[derive(Clone, Debug, PartialEq)]
pub struct JsGenOptions {
    pub options: GenOptions,
    /// Use the trained / loaded adapter (default: when there is one); `false` = the base model.
    pub adapter: Option<bool>,
}

impl Deref for JsGenOptions {
    type Target = GenOptions;
    fn deref(&self) -> &GenOptions {
        &self.options
    }
}

/// Takes the JS-only `"adapter"` key (and `extra`, when given) out of an options object, then
/// parses the rest as the options table (unknown names are errors that name the key).
fn parse_with_adapter<T: DeserializeOwned + Default, A: DeserializeOwned + Default>(
    json: &str,
    what: &str,
    extra: Option<&str>,
) -> Result<(T, A, Option<serde_json::Value>), String> {
    let Ok(serde_json::Value::Object(mut obj)) = serde_json::from_str(json) else {
        return Ok((parse_named(json, what)?, A::default(), None));
    };
    let adapter = match obj.remove("adapter") {
        Some(v) => serde_json::from_value(v).map_err(|e| format!("{what}: adapter: {e}"))?,
        None => A::default(),
    };
    let extra = extra.and_then(|k| obj.remove(k));
    let rest = serde_json::Value::Object(obj).to_string();
    Ok((parse_named(&rest, what)?, adapter, extra))
}

/// Parses `train`'s options JSON (empty = defaults); unknown names are errors.
pub fn parse_train_options(json: &str) -> Result<JsTrainOptions, String> {
    let (options, adapter, eval_data) =
        parse_with_adapter(json, "train options", Some("eval_data"))?;
    let eval_data = match eval_data {
        Some(v) => parse_eval_data(v)?,
        None => Vec::new(),
    };
    Ok(JsTrainOptions {
        options,
        adapter,
        eval_data,
    })
}

/// Parses `generate`'s options JSON (empty = defaults); unknown names are errors.
pub fn parse_gen_options(json: &str) -> Result<JsGenOptions, String> {
    let (options, adapter, _) = parse_with_adapter(json, "generate options", None)?;
    Ok(JsGenOptions { options, adapter })
}

/// `loadModel`'s `quant`: `"nf4"`, `"none"`, or a JSON object with `quant` and the block-size
/// options of `tinytune train` (`{"quant": "nf4", "block_size": "auto", "bits_per_weight": 4.1}`,
/// `"block_size_map": "mlp.down_proj=32"`); unknown keys are errors that name them.
pub fn parse_load_options(quant: Option<&str>) -> Result<(QuantOption, BlockOptions), String> {
    let Some(q) = quant.map(str::trim) else {
        return Ok((QuantOption::default(), BlockOptions::default()));
    };
    if !q.starts_with('{') {
        return Ok((QuantOption::parse(q)?, BlockOptions::default()));
    }
    let Ok(serde_json::Value::Object(mut obj)) = serde_json::from_str(q) else {
        return Err(format!(
            "quant: {q:?} is neither \"nf4\", \"none\" nor a JSON object"
        ));
    };
    let quant = match obj.remove("quant") {
        None => QuantOption::default(),
        Some(serde_json::Value::String(s)) => QuantOption::parse(&s)?,
        Some(v) => return Err(format!("quant: {v} is not \"nf4\" or \"none\"")),
    };
    let blocks: BlockOptions = serde_json::from_value(serde_json::Value::Object(obj))
        .map_err(|e| format!("loadModel options: {e}"))?;
    Ok((quant, blocks))
}

/// A GPU error's message plus what to change: over a device limit or out of memory while
/// training or generating means a smaller batch / sequence (or model); other messages pass as they
/// are (and so do messages that already say what to change). `what` is `"train"`, `"generate"` or
/// `"loadModel"`.
pub fn with_gpu_hint(msg: String, what: &str) -> String {
    let limit = msg.contains("the device allows at most")
        || msg.contains("out of GPU memory")
        || msg.contains("over the device limit");
    let lost = msg.contains("device error") || msg.to_ascii_lowercase().contains("device lost");
    if (!limit && !lost) || msg.contains("This does not fit the GPU") {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_options_take_a_quant_or_block_sizes() {
        let (q, b) = parse_load_options(Some("none")).unwrap();
        assert_eq!((q, b.is_set()), (QuantOption::None, false));
        let (q, b) = parse_load_options(Some(
            r#"{"quant": "nf4", "block_size": 128, "block_size_map": "mlp.down_proj=32"}"#,
        ))
        .unwrap();
        assert_eq!(q, QuantOption::Nf4);
        assert_eq!(b.block_size.as_deref(), Some("128"));
        assert_eq!(b.block_size_map.as_deref(), Some("mlp.down_proj=32"));
        let (_, b) =
            parse_load_options(Some(r#"{"block_size": "auto", "bits_per_weight": 4.1}"#)).unwrap();
        assert_eq!(
            (b.block_size.as_deref(), b.bits_per_weight),
            (Some("auto"), Some(4.1))
        );
        let e = parse_load_options(Some(r#"{"blok_size": 64}"#)).unwrap_err();
        assert!(e.contains("blok_size"), "{e}");
    }
    use tinytune_model::SamplingParams;
    use tinytune_train::data::{EvalSplit, Stop};
    use tinytune_train::peft::LoraModule;
    use tinytune_train::{PrefixStart, PromptStart, ScheduleKind, Start};

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
        assert_eq!(o.peft, PeftMethod::Lora);
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
    fn eval_data_sets_are_named_files() {
        let o = parse_train_options(
            r#"{"lora_r": 4, "eval_data": {"general": {"file": "g.jsonl", "text": "{}"},
                "code": {"file": "c.txt", "text": "x"}}}"#,
        )
        .unwrap();
        assert_eq!(o.lora_r, 4);
        let names: Vec<(&str, &str)> = o
            .eval_data
            .iter()
            .map(|(n, f)| (n.as_str(), f.file.as_str()))
            .collect();
        assert_eq!(names, [("code", "c.txt"), ("general", "g.jsonl")]);
        for (json, want) in [
            (r#"{"eval_data": ["g.jsonl"]}"#, "set name -> {"),
            (
                r#"{"eval_data": {"a b": {"file": "g.jsonl", "text": ""}}}"#,
                "\"a b\"",
            ),
            (
                r#"{"eval_data": {"g": {"file": "g.jsonl"}}}"#,
                "eval_data.g: missing field `text`",
            ),
            (r#"{"eval_data": {"g": "text"}}"#, "eval_data.g"),
        ] {
            let e = parse_train_options(json).unwrap_err();
            assert!(e.contains(want), "{json}: {e}");
        }
    }

    #[test]
    fn generate_defaults_are_the_cli_defaults() {
        let g = parse_gen_options("").unwrap();
        assert_eq!(g.max_new_tokens, 128);
        assert_eq!(g.sampling(), SamplingParams::default());
    }
}
