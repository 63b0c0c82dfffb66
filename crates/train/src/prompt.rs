//! PEFT prompt-tuning adapters (`peft_type` `PROMPT_TUNING`, `task_type` `CAUSAL_LM`):
//! `adapter_config.json` + `adapter_model.safetensors` holding `prompt_embeddings` `[P, C]`, as
//! PEFT 0.21.2's `save_pretrained` writes them (sorted keys, two-space indent; safetensors metadata
//! `{"format": "pt"}`). The device side is [`tinytune_model::PromptGpu`].

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::peft::{
    read_f32_safetensors, write_f32_safetensors, ADAPTER_CONFIG, ADAPTER_WEIGHTS,
    PEFT_FORMAT_VERSION,
};
use crate::{Result, TrainError};

/// The tensor name PEFT saves the virtual token embeddings under.
pub const PROMPT_EMBEDDINGS: &str = "prompt_embeddings";

/// `adapter_config.json` of a prompt-tuning adapter.
#[derive(Clone, Debug, PartialEq)]
pub struct PromptTuningConfig {
    pub num_virtual_tokens: usize,
    /// Hidden size C.
    pub token_dim: usize,
    pub num_attention_heads: usize,
    pub num_layers: usize,
    /// `"RANDOM"` or `"TEXT"`.
    pub prompt_tuning_init: String,
    pub prompt_tuning_init_text: Option<String>,
    pub tokenizer_name_or_path: Option<String>,
    pub base_model_name_or_path: Option<String>,
    pub revision: Option<String>,
    pub inference_mode: bool,
}

/// A prompt-tuning adapter: config and `[num_virtual_tokens, token_dim]` embeddings.
#[derive(Clone, Debug, PartialEq)]
pub struct PromptAdapter {
    pub config: PromptTuningConfig,
    pub embeddings: Vec<f32>,
}

impl PromptTuningConfig {
    /// `adapter_config.json` as PEFT writes it.
    pub fn to_json(&self) -> String {
        let v = json!({
            "auto_mapping": null,
            "base_model_name_or_path": self.base_model_name_or_path,
            "inference_mode": self.inference_mode,
            "modules_to_save": null,
            "num_attention_heads": self.num_attention_heads,
            "num_layers": self.num_layers,
            "num_transformer_submodules": 1,
            "num_virtual_tokens": self.num_virtual_tokens,
            "peft_type": "PROMPT_TUNING",
            "peft_version": PEFT_FORMAT_VERSION,
            "prompt_tuning_init": self.prompt_tuning_init,
            "prompt_tuning_init_text": self.prompt_tuning_init_text,
            "revision": self.revision,
            "task_type": "CAUSAL_LM",
            "token_dim": self.token_dim,
            "tokenizer_kwargs": null,
            "tokenizer_name_or_path": self.tokenizer_name_or_path,
        });
        peft_json(v)
    }

    /// Parses `adapter_config.json` (`file` names it in errors).
    pub fn from_json(text: &str, file: &str) -> Result<PromptTuningConfig> {
        let err = |msg: String| TrainError::Adapter {
            file: file.to_string(),
            msg,
        };
        let v: Value = serde_json::from_str(text).map_err(|e| err(format!("not JSON: {e}")))?;
        let s = |k: &str| v.get(k).and_then(Value::as_str);
        let n = |k: &str| {
            v.get(k)
                .and_then(Value::as_u64)
                .map(|x| x as usize)
                .ok_or_else(|| err(format!("{k} is missing or not a whole number")))
        };
        let opt = |k: &str| s(k).map(str::to_string);
        check_prompt_learning(&v, "PROMPT_TUNING", file)?;
        let cfg = PromptTuningConfig {
            num_virtual_tokens: n("num_virtual_tokens")?,
            token_dim: n("token_dim")?,
            num_attention_heads: n("num_attention_heads").unwrap_or(0),
            num_layers: n("num_layers").unwrap_or(0),
            prompt_tuning_init: opt("prompt_tuning_init").unwrap_or_else(|| "RANDOM".into()),
            prompt_tuning_init_text: opt("prompt_tuning_init_text"),
            tokenizer_name_or_path: opt("tokenizer_name_or_path"),
            base_model_name_or_path: opt("base_model_name_or_path"),
            revision: opt("revision"),
            inference_mode: v
                .get("inference_mode")
                .and_then(Value::as_bool)
                .unwrap_or(true),
        };
        if cfg.num_virtual_tokens == 0 || cfg.token_dim == 0 {
            return Err(err(
                "num_virtual_tokens and token_dim must be positive".into()
            ));
        }
        Ok(cfg)
    }
}

impl PromptAdapter {
    /// The two files of the adapter directory.
    pub fn to_files(&self) -> Result<Vec<(String, Vec<u8>)>> {
        let c = &self.config;
        let shape = vec![c.num_virtual_tokens, c.token_dim];
        let st = write_f32_safetensors(
            &[(PROMPT_EMBEDDINGS.to_string(), shape, &self.embeddings)],
            &[],
        )?;
        Ok(vec![
            (ADAPTER_CONFIG.to_string(), c.to_json().into_bytes()),
            (ADAPTER_WEIGHTS.to_string(), st),
        ])
    }

    /// Parses the two files (`dir` only names them in errors).
    pub fn from_bytes(config_json: &[u8], safetensors: &[u8], dir: &str) -> Result<PromptAdapter> {
        let cfg_file = format!("{dir}/{ADAPTER_CONFIG}");
        let st_file = format!("{dir}/{ADAPTER_WEIGHTS}");
        let text = std::str::from_utf8(config_json).map_err(|e| TrainError::Adapter {
            file: cfg_file.clone(),
            msg: format!("not UTF-8: {e}"),
        })?;
        let config = PromptTuningConfig::from_json(text, &cfg_file)?;
        let shape = [config.num_virtual_tokens, config.token_dim];
        let embeddings = read_prompt_embeddings(safetensors, &shape, &st_file)?;
        Ok(PromptAdapter { config, embeddings })
    }

    /// Writes the two files into `dir` (created if missing), each atomically; other files of
    /// `dir` stay (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn save(&self, dir: &std::path::Path) -> Result<()> {
        save_files(dir, self.to_files()?)
    }

    /// Reads an adapter directory (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn load(dir: &std::path::Path) -> Result<PromptAdapter> {
        let (cfg, st) = read_files(dir)?;
        PromptAdapter::from_bytes(&cfg, &st, &dir.display().to_string())
    }
}

/// An `adapter_config.json` value as PEFT writes it: sorted keys, two-space indent.
pub(crate) fn peft_json(v: Value) -> String {
    let sorted: BTreeMap<String, Value> = match v {
        Value::Object(m) => m.into_iter().collect(),
        _ => BTreeMap::new(),
    };
    let obj: Map<String, Value> = sorted.into_iter().collect();
    serde_json::to_string_pretty(&Value::Object(obj)).unwrap_or_default()
}

/// Checks the fields every prompt-learning config shares: `peft_type`, a causal-LM task, one
/// transformer submodule.
pub(crate) fn check_prompt_learning(v: &Value, peft_type: &str, file: &str) -> Result<()> {
    let err = |msg: String| TrainError::Adapter {
        file: file.to_string(),
        msg,
    };
    let s = |k: &str| v.get(k).and_then(Value::as_str);
    if s("peft_type") != Some(peft_type) {
        return Err(err(format!(
            "peft_type is {:?}, expected \"{peft_type}\"",
            v.get("peft_type")
        )));
    }
    if let Some(t) = s("task_type") {
        if t != "CAUSAL_LM" {
            return Err(err(format!(
                "task_type {t:?} is not supported (CAUSAL_LM only)"
            )));
        }
    }
    let subs = v
        .get("num_transformer_submodules")
        .and_then(Value::as_u64)
        .unwrap_or(1);
    if subs != 1 {
        return Err(err(format!(
            "num_transformer_submodules {subs} is not supported (decoder-only models have 1)"
        )));
    }
    Ok(())
}

/// The `prompt_embeddings` tensor of an adapter's safetensors, checked against `shape`.
pub(crate) fn read_prompt_embeddings(
    safetensors: &[u8],
    shape: &[usize],
    st_file: &str,
) -> Result<Vec<f32>> {
    let (mut tensors, _) = read_f32_safetensors(safetensors, st_file)?;
    let (got, data) = tensors
        .remove(PROMPT_EMBEDDINGS)
        .ok_or_else(|| TrainError::Adapter {
            file: st_file.to_string(),
            msg: format!("no {PROMPT_EMBEDDINGS} tensor"),
        })?;
    if got != shape {
        return Err(TrainError::Adapter {
            file: st_file.to_string(),
            msg: format!("{PROMPT_EMBEDDINGS} has shape {got:?}, the config says {shape:?}"),
        });
    }
    Ok(data)
}

/// Writes an adapter's files into `dir` (created if missing), each atomically.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn save_files(dir: &std::path::Path, files: Vec<(String, Vec<u8>)>) -> Result<()> {
    crate::fsio::create_dir_all(dir)?;
    for (name, bytes) in files {
        crate::fsio::write_atomic(&dir.join(name), &bytes)?;
    }
    Ok(())
}

/// Reads an adapter directory's `adapter_config.json` and `adapter_model.safetensors`.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn read_files(dir: &std::path::Path) -> Result<(Vec<u8>, Vec<u8>)> {
    Ok((
        crate::fsio::read(&dir.join(ADAPTER_CONFIG))?,
        crate::fsio::read(&dir.join(ADAPTER_WEIGHTS))?,
    ))
}

/// The `peft_type` of an `adapter_config.json` (`None` if it is not JSON or has none).
pub fn peft_type(config_json: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(config_json).ok()?;
    v.get("peft_type")?.as_str().map(str::to_string)
}
