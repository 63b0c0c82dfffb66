//! PEFT prefix-tuning adapters (`peft_type` `PREFIX_TUNING`, `task_type` `CAUSAL_LM`):
//! `adapter_config.json` + `adapter_model.safetensors` holding `prompt_embeddings`
//! `[P, num_layers*2*token_dim]`, as PEFT 0.21.2's `save_pretrained` writes them. For grouped-query
//! models PEFT sets `token_dim` to the key/value width (`num_key_value_heads * head_dim`) and
//! `num_attention_heads` to the KV heads; with `prefix_projection` the saved tensor is the
//! projection's output (PEFT folds the MLP when saving), so every adapter loads as a plain prefix.
//! The device side is [`tinytune_model::PrefixGpu`].

use serde_json::{json, Value};
use tinytune_model::LlamaConfig;

use crate::peft::{write_f32_safetensors, ADAPTER_CONFIG, ADAPTER_WEIGHTS, PEFT_FORMAT_VERSION};
use crate::prompt::{check_prompt_learning, peft_json, read_prompt_embeddings, PROMPT_EMBEDDINGS};
use crate::{Result, TrainError};

/// `adapter_config.json` of a prefix-tuning adapter.
#[derive(Clone, Debug, PartialEq)]
pub struct PrefixTuningConfig {
    pub num_virtual_tokens: usize,
    /// Key/value width of a layer, `num_key_value_heads * head_dim`.
    pub token_dim: usize,
    /// Key/value heads.
    pub num_attention_heads: usize,
    pub num_layers: usize,
    /// Hidden size of the projection MLP (PEFT writes it even without a projection).
    pub encoder_hidden_size: usize,
    /// Whether the prefix was trained through PEFT's MLP reparameterisation.
    pub prefix_projection: bool,
    pub base_model_name_or_path: Option<String>,
    pub revision: Option<String>,
    pub inference_mode: bool,
}

/// A prefix-tuning adapter: config and the `[num_virtual_tokens, num_layers*2*token_dim]` prefix.
#[derive(Clone, Debug, PartialEq)]
pub struct PrefixAdapter {
    pub config: PrefixTuningConfig,
    pub prefix: Vec<f32>,
}

impl PrefixTuningConfig {
    /// The config PEFT derives for `model` (its `_prepare_prompt_learning_config` on a model with
    /// `num_key_value_heads`): KV width and heads, `encoder_hidden_size` defaulting to the width.
    pub fn for_model(
        model: &LlamaConfig,
        num_virtual_tokens: usize,
        prefix_projection: bool,
        encoder_hidden_size: Option<usize>,
    ) -> PrefixTuningConfig {
        let kvd = model.num_key_value_heads * model.head_dim;
        PrefixTuningConfig {
            num_virtual_tokens,
            token_dim: kvd,
            num_attention_heads: model.num_key_value_heads,
            num_layers: model.num_hidden_layers,
            encoder_hidden_size: encoder_hidden_size.unwrap_or(kvd),
            prefix_projection,
            base_model_name_or_path: None,
            revision: None,
            inference_mode: true,
        }
    }

    /// Row length of the prefix, `num_layers * 2 * token_dim`.
    pub fn row_len(&self) -> usize {
        self.num_layers * 2 * self.token_dim
    }

    /// Errors unless the adapter fits `model` (layers, KV width).
    pub fn check_model(&self, model: &LlamaConfig) -> Result<()> {
        let kvd = model.num_key_value_heads * model.head_dim;
        if self.num_layers != model.num_hidden_layers || self.token_dim != kvd {
            return Err(TrainError::Config(format!(
                "the prefix adapter is for {} layers of key/value width {}, the model has {} layers \
                 of width {kvd} (num_key_value_heads * head_dim): it belongs to another model",
                self.num_layers, self.token_dim, model.num_hidden_layers
            )));
        }
        Ok(())
    }

    /// `adapter_config.json` as PEFT writes it.
    pub fn to_json(&self) -> String {
        peft_json(json!({
            "auto_mapping": null,
            "base_model_name_or_path": self.base_model_name_or_path,
            "encoder_hidden_size": self.encoder_hidden_size,
            "inference_mode": self.inference_mode,
            "init_weights": null,
            "modules_to_save": null,
            "num_attention_heads": self.num_attention_heads,
            "num_layers": self.num_layers,
            "num_transformer_submodules": 1,
            "num_virtual_tokens": self.num_virtual_tokens,
            "peft_type": "PREFIX_TUNING",
            "peft_version": PEFT_FORMAT_VERSION,
            "prefix_projection": self.prefix_projection,
            "revision": self.revision,
            "task_type": "CAUSAL_LM",
            "token_dim": self.token_dim,
        }))
    }

    /// Parses `adapter_config.json` (`file` names it in errors).
    pub fn from_json(text: &str, file: &str) -> Result<PrefixTuningConfig> {
        let err = |msg: String| TrainError::Adapter {
            file: file.to_string(),
            msg,
        };
        let v: Value = serde_json::from_str(text).map_err(|e| err(format!("not JSON: {e}")))?;
        check_prompt_learning(&v, "PREFIX_TUNING", file)?;
        let n = |k: &str| {
            v.get(k)
                .and_then(Value::as_u64)
                .map(|x| x as usize)
                .ok_or_else(|| err(format!("{k} is missing or not a whole number")))
        };
        let opt = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        let token_dim = n("token_dim")?;
        let cfg = PrefixTuningConfig {
            num_virtual_tokens: n("num_virtual_tokens")?,
            token_dim,
            num_attention_heads: n("num_attention_heads")?,
            num_layers: n("num_layers")?,
            encoder_hidden_size: n("encoder_hidden_size").unwrap_or(token_dim),
            prefix_projection: v
                .get("prefix_projection")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            base_model_name_or_path: opt("base_model_name_or_path"),
            revision: opt("revision"),
            inference_mode: v
                .get("inference_mode")
                .and_then(Value::as_bool)
                .unwrap_or(true),
        };
        if cfg.num_virtual_tokens == 0 || cfg.token_dim == 0 || cfg.num_layers == 0 {
            return Err(err(
                "num_virtual_tokens, token_dim and num_layers must be positive".into(),
            ));
        }
        Ok(cfg)
    }
}

impl PrefixAdapter {
    /// The two files of the adapter directory.
    pub fn to_files(&self) -> Result<Vec<(String, Vec<u8>)>> {
        let c = &self.config;
        let shape = vec![c.num_virtual_tokens, c.row_len()];
        let st =
            write_f32_safetensors(&[(PROMPT_EMBEDDINGS.to_string(), shape, &self.prefix)], &[])?;
        Ok(vec![
            (ADAPTER_CONFIG.to_string(), c.to_json().into_bytes()),
            (ADAPTER_WEIGHTS.to_string(), st),
        ])
    }

    /// Parses the two files (`dir` only names them in errors).
    pub fn from_bytes(config_json: &[u8], safetensors: &[u8], dir: &str) -> Result<PrefixAdapter> {
        let cfg_file = format!("{dir}/{ADAPTER_CONFIG}");
        let text = std::str::from_utf8(config_json).map_err(|e| TrainError::Adapter {
            file: cfg_file.clone(),
            msg: format!("not UTF-8: {e}"),
        })?;
        let config = PrefixTuningConfig::from_json(text, &cfg_file)?;
        let shape = [config.num_virtual_tokens, config.row_len()];
        let prefix =
            read_prompt_embeddings(safetensors, &shape, &format!("{dir}/{ADAPTER_WEIGHTS}"))?;
        Ok(PrefixAdapter { config, prefix })
    }

    /// Writes the two files into `dir` (created if missing), each atomically (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn save(&self, dir: &std::path::Path) -> Result<()> {
        crate::prompt::save_files(dir, self.to_files()?)
    }

    /// Reads an adapter directory (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn load(dir: &std::path::Path) -> Result<PrefixAdapter> {
        let (cfg, st) = crate::prompt::read_files(dir)?;
        PrefixAdapter::from_bytes(&cfg, &st, &dir.display().to_string())
    }
}
