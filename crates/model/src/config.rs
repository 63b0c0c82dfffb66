//! The Llama-family model configuration, with Hugging Face `config.json` field names.
//!
//! Parsing accepts what transformers 4.x and 5.x write: `torch_dtype` or `dtype`, `rope_theta` /
//! `rope_scaling` or the newer `rope_parameters` (`{"rope_theta": ..., "rope_type": ...}`), and
//! `rope_scaling.type` as an older spelling of `rope_scaling.rope_type`. Defaults follow
//! transformers' `LlamaConfig` (`rms_norm_eps` 1e-6, `rope_theta` 10000,
//! `max_position_embeddings` 2048, `tie_word_embeddings` false). After parsing, every derived value
//! is resolved (`num_key_value_heads`, `head_dim`, `rope_theta`) and validated
//! ([`LlamaConfig::validate`]).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{ModelError, Result};

/// Model families this crate loads (`config.json` `model_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelType {
    /// Llama 2/3.x, SmolLM/SmolLM2, TinyLlama... (`LlamaForCausalLM`).
    Llama,
    /// Qwen2 / Qwen2.5 (`Qwen2ForCausalLM`): bias on q/k/v projections (not o).
    Qwen2,
}

impl ModelType {
    /// The `model_type` string.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelType::Llama => "llama",
            ModelType::Qwen2 => "qwen2",
        }
    }

    /// Parses a `model_type` / GGUF `general.architecture` string.
    pub fn parse(s: &str) -> Result<ModelType> {
        match s {
            "llama" => Ok(ModelType::Llama),
            "qwen2" => Ok(ModelType::Qwen2),
            other => Err(ModelError::Unsupported(format!(
                "model type / architecture '{other}' (supported: llama, qwen2)"
            ))),
        }
    }

    /// The transformers class name (`architectures[0]`).
    pub fn hf_class(self) -> &'static str {
        match self {
            ModelType::Llama => "LlamaForCausalLM",
            ModelType::Qwen2 => "Qwen2ForCausalLM",
        }
    }
}

/// RoPE frequency scaling (`rope_scaling`). Only the Llama 3.x scheme is supported; `null` /
/// `"default"` is `None` in [`LlamaConfig::rope_scaling`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rope_type", rename_all = "lowercase")]
pub enum RopeScaling {
    /// transformers' `_compute_llama3_parameters`: frequencies with wavelength above
    /// `original_max_position_embeddings / low_freq_factor` are divided by `factor`, those below
    /// `original_max_position_embeddings / high_freq_factor` are kept, and the ones in between are
    /// interpolated smoothly.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
}

impl RopeScaling {
    /// The divisor applied to each of the `head_dim / 2` inverse frequencies
    /// `theta^(-2i/head_dim)`, computed like llama.cpp's converter writes `rope_freqs.weight` (and
    /// like transformers scales `inv_freq`: `inv_freq / divisor`).
    pub fn freq_divisors(&self, rope_theta: f64, head_dim: usize) -> Vec<f64> {
        match *self {
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                let old = original_max_position_embeddings as f64;
                let low_wl = old / low_freq_factor;
                let high_wl = old / high_freq_factor;
                (0..head_dim / 2)
                    .map(|i| {
                        // The converter computes the frequency in f32 (torch), then works in f64.
                        let freq =
                            1.0f32 / (rope_theta as f32).powf((2 * i) as f32 / head_dim as f32);
                        let wavelen = 2.0 * std::f64::consts::PI / freq as f64;
                        if wavelen < high_wl {
                            1.0
                        } else if wavelen > low_wl {
                            factor
                        } else {
                            let smooth = (old / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            1.0 / ((1.0 - smooth) / factor + smooth)
                        }
                    })
                    .collect()
            }
        }
    }
}

/// Token id(s): `config.json` writes `eos_token_id` as one id or a list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

impl TokenIds {
    /// All ids, in order.
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            TokenIds::One(i) => vec![*i],
            TokenIds::Many(v) => v.clone(),
        }
    }
    /// The first id, if any.
    pub fn first(&self) -> Option<u32> {
        self.to_vec().first().copied()
    }
}

/// A Llama-family configuration with resolved, validated values. Serializes to a `config.json`
/// that transformers reads.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LlamaConfig {
    /// `["LlamaForCausalLM"]` or `["Qwen2ForCausalLM"]` (empty if the source had none).
    pub architectures: Vec<String>,
    pub model_type: ModelType,
    /// Model width C.
    pub hidden_size: usize,
    /// MLP width I.
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    /// Query heads H.
    pub num_attention_heads: usize,
    /// Key/value heads (GQA); defaults to `num_attention_heads`.
    pub num_key_value_heads: usize,
    /// Per-head width D; defaults to `hidden_size / num_attention_heads`.
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    pub vocab_size: usize,
    pub tie_word_embeddings: bool,
    pub max_position_embeddings: usize,
    pub bos_token_id: Option<TokenIds>,
    pub eos_token_id: Option<TokenIds>,
    pub pad_token_id: Option<u32>,
    /// Llama: bias on q, k, v and o. Qwen2 configs have no such field (always q/k/v bias, see
    /// [`LlamaConfig::has_qkv_bias`]).
    pub attention_bias: bool,
    /// Storage dtype the checkpoint declares (`"bfloat16"`...), informational.
    pub torch_dtype: Option<String>,
    pub hidden_act: String,
}

/// What `config.json` may hold, before defaults and validation.
#[derive(Deserialize)]
struct RawConfig {
    #[serde(default)]
    architectures: Option<Vec<String>>,
    model_type: Option<String>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_scaling: Option<Value>,
    rope_parameters: Option<Value>,
    vocab_size: Option<usize>,
    tie_word_embeddings: Option<bool>,
    max_position_embeddings: Option<usize>,
    bos_token_id: Option<TokenIds>,
    eos_token_id: Option<TokenIds>,
    pad_token_id: Option<u32>,
    attention_bias: Option<bool>,
    torch_dtype: Option<String>,
    dtype: Option<String>,
    hidden_act: Option<String>,
    mlp_bias: Option<bool>,
    use_sliding_window: Option<bool>,
}

fn cfg_err(msg: impl Into<String>) -> ModelError {
    ModelError::Config(msg.into())
}

fn need<T>(v: Option<T>, key: &str) -> Result<T> {
    v.ok_or_else(|| cfg_err(format!("missing required field '{key}'")))
}

/// Parses a `rope_scaling` / `rope_parameters` object (`null` and `"default"` are no scaling).
pub(crate) fn parse_rope_scaling(v: &Value) -> Result<Option<RopeScaling>> {
    let obj = match v {
        Value::Null => return Ok(None),
        Value::Object(o) => o,
        other => {
            return Err(cfg_err(format!(
                "rope_scaling must be an object or null, got {other}"
            )))
        }
    };
    let ty = obj
        .get("rope_type")
        .or_else(|| obj.get("type"))
        .and_then(Value::as_str);
    match ty {
        None | Some("default") => Ok(None),
        Some("llama3") => {
            let num = |k: &str| -> Result<f64> {
                obj.get(k)
                    .and_then(Value::as_f64)
                    .ok_or_else(|| cfg_err(format!("rope_scaling (llama3) needs a number '{k}'")))
            };
            let factor = num("factor")?;
            let low = num("low_freq_factor")?;
            let high = num("high_freq_factor")?;
            let orig = num("original_max_position_embeddings")?;
            if !(factor >= 1.0 && low > 0.0 && high > low && orig >= 1.0 && orig.fract() == 0.0) {
                return Err(cfg_err(format!(
                    "rope_scaling (llama3) needs factor >= 1, 0 < low_freq_factor < high_freq_factor and \
                     an integer original_max_position_embeddings >= 1; got factor {factor}, \
                     low_freq_factor {low}, high_freq_factor {high}, original_max_position_embeddings {orig}"
                )));
            }
            Ok(Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor: low,
                high_freq_factor: high,
                original_max_position_embeddings: orig as usize,
            }))
        }
        Some(other) => Err(ModelError::Unsupported(format!(
            "RoPE scaling type '{other}' (supported: none/default, llama3)"
        ))),
    }
}

impl LlamaConfig {
    /// Parses and validates a `config.json` document.
    pub fn from_json(text: &str) -> Result<LlamaConfig> {
        let raw: RawConfig =
            serde_json::from_str(text).map_err(|e| cfg_err(format!("config.json: {e}")))?;
        LlamaConfig::from_raw(raw)
    }

    fn from_raw(r: RawConfig) -> Result<LlamaConfig> {
        let model_type = ModelType::parse(&need(r.model_type, "model_type")?)?;
        let architectures = r.architectures.unwrap_or_default();
        if !architectures.is_empty() && !architectures.iter().any(|a| a == model_type.hf_class()) {
            return Err(ModelError::Unsupported(format!(
                "architectures {architectures:?} for model_type '{}' (expected {})",
                model_type.as_str(),
                model_type.hf_class()
            )));
        }
        let hidden_size = need(r.hidden_size, "hidden_size")?;
        let num_attention_heads = need(r.num_attention_heads, "num_attention_heads")?;
        if num_attention_heads == 0 {
            return Err(cfg_err("num_attention_heads must be > 0"));
        }
        let head_dim = match r.head_dim {
            Some(d) => d,
            None => {
                if hidden_size % num_attention_heads != 0 {
                    return Err(cfg_err(format!(
                        "hidden_size {hidden_size} is not a multiple of num_attention_heads \
                         {num_attention_heads} and no head_dim is given"
                    )));
                }
                hidden_size / num_attention_heads
            }
        };
        let rope_params = r.rope_parameters.unwrap_or(Value::Null);
        let rope_scaling = match &r.rope_scaling {
            Some(v) if !v.is_null() => parse_rope_scaling(v)?,
            _ => parse_rope_scaling(&rope_params)?,
        };
        let rope_theta = r
            .rope_theta
            .or_else(|| rope_params.get("rope_theta").and_then(Value::as_f64))
            .unwrap_or(10000.0);
        if r.mlp_bias == Some(true) {
            return Err(ModelError::Unsupported("mlp_bias = true".into()));
        }
        if r.use_sliding_window == Some(true) {
            return Err(ModelError::Unsupported(
                "use_sliding_window = true (sliding-window attention)".into(),
            ));
        }
        let attention_bias = r.attention_bias.unwrap_or(false);
        if model_type == ModelType::Qwen2 && attention_bias {
            return Err(cfg_err(
                "attention_bias is not a qwen2 option (qwen2 always has q/k/v bias)",
            ));
        }
        let cfg = LlamaConfig {
            architectures,
            model_type,
            hidden_size,
            intermediate_size: need(r.intermediate_size, "intermediate_size")?,
            num_hidden_layers: need(r.num_hidden_layers, "num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads: r.num_key_value_heads.unwrap_or(num_attention_heads),
            head_dim,
            rms_norm_eps: r.rms_norm_eps.unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            vocab_size: need(r.vocab_size, "vocab_size")?,
            tie_word_embeddings: r.tie_word_embeddings.unwrap_or(false),
            max_position_embeddings: r.max_position_embeddings.unwrap_or(2048),
            bos_token_id: r.bos_token_id,
            eos_token_id: r.eos_token_id,
            pad_token_id: r.pad_token_id,
            attention_bias,
            torch_dtype: r.torch_dtype.or(r.dtype),
            hidden_act: r.hidden_act.unwrap_or_else(|| "silu".into()),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks every value is usable: positive sizes, heads divisible by KV heads, even head_dim,
    /// positive finite `rms_norm_eps` and `rope_theta`, `silu` activation.
    pub fn validate(&self) -> Result<()> {
        for (k, v) in [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("vocab_size", self.vocab_size),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if v == 0 {
                return Err(cfg_err(format!("{k} must be > 0")));
            }
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return Err(cfg_err(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads, self.num_key_value_heads
            )));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(cfg_err(format!(
                "head_dim {} must be even for RoPE",
                self.head_dim
            )));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0) {
            return Err(cfg_err(format!(
                "rms_norm_eps {} must be finite and > 0",
                self.rms_norm_eps
            )));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return Err(cfg_err(format!(
                "rope_theta {} must be finite and > 0",
                self.rope_theta
            )));
        }
        if self.hidden_act != "silu" {
            return Err(ModelError::Unsupported(format!(
                "hidden_act '{}' (supported: silu)",
                self.hidden_act
            )));
        }
        if let Some(ids) = &self.eos_token_id {
            if let Some(bad) = ids
                .to_vec()
                .into_iter()
                .find(|&i| i as usize >= self.vocab_size)
            {
                return Err(cfg_err(format!(
                    "eos_token_id {bad} >= vocab_size {}",
                    self.vocab_size
                )));
            }
        }
        if let Some(bad) = self.bos_token_id.as_ref().and_then(|b| b.first()) {
            if bad as usize >= self.vocab_size {
                return Err(cfg_err(format!(
                    "bos_token_id {bad} >= vocab_size {}",
                    self.vocab_size
                )));
            }
        }
        Ok(())
    }

    /// The names [`LlamaConfig::preset`] knows, in order of size.
    pub const PRESETS: &'static [&'static str] = &["smollm2-135m", "qwen2.5-0.5b", "llama3.2-1b"];

    /// The config of a published model by short name (see [`LlamaConfig::PRESETS`]), with the
    /// values of its `config.json` on the Hugging Face hub: `smollm2-135m`
    /// (HuggingFaceTB/SmolLM2-135M-Instruct), `qwen2.5-0.5b` (Qwen/Qwen2.5-0.5B-Instruct) and
    /// `llama3.2-1b` (meta-llama/Llama-3.2-1B-Instruct). The shapes are what benchmarks and
    /// memory estimates need without the files ([`crate::ModelSource::random`]). Parsed through
    /// [`LlamaConfig::from_json`], so a preset is validated like a downloaded config.
    pub fn preset(name: &str) -> Result<LlamaConfig> {
        let v = match name.to_ascii_lowercase().as_str() {
            "smollm2-135m" => serde_json::json!({
                "architectures": ["LlamaForCausalLM"],
                "model_type": "llama",
                "hidden_size": 576,
                "intermediate_size": 1536,
                "num_hidden_layers": 30,
                "num_attention_heads": 9,
                "num_key_value_heads": 3,
                "head_dim": 64,
                "rms_norm_eps": 1e-5,
                "rope_theta": 100000.0,
                "rope_scaling": null,
                "vocab_size": 49152,
                "tie_word_embeddings": true,
                "max_position_embeddings": 8192,
                "bos_token_id": 1,
                "eos_token_id": 2,
                "pad_token_id": 2,
                "attention_bias": false,
                "mlp_bias": false,
                "hidden_act": "silu",
                "torch_dtype": "bfloat16"
            }),
            "qwen2.5-0.5b" => serde_json::json!({
                "architectures": ["Qwen2ForCausalLM"],
                "model_type": "qwen2",
                "hidden_size": 896,
                "intermediate_size": 4864,
                "num_hidden_layers": 24,
                "num_attention_heads": 14,
                "num_key_value_heads": 2,
                "rms_norm_eps": 1e-6,
                "rope_theta": 1000000.0,
                "rope_scaling": null,
                "vocab_size": 151936,
                "tie_word_embeddings": true,
                "max_position_embeddings": 32768,
                "bos_token_id": 151643,
                "eos_token_id": 151645,
                "use_sliding_window": false,
                "hidden_act": "silu",
                "torch_dtype": "bfloat16"
            }),
            "llama3.2-1b" => serde_json::json!({
                "architectures": ["LlamaForCausalLM"],
                "model_type": "llama",
                "hidden_size": 2048,
                "intermediate_size": 8192,
                "num_hidden_layers": 16,
                "num_attention_heads": 32,
                "num_key_value_heads": 8,
                "head_dim": 64,
                "rms_norm_eps": 1e-5,
                "rope_theta": 500000.0,
                "rope_scaling": {
                    "factor": 32.0,
                    "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 8192,
                    "rope_type": "llama3"
                },
                "vocab_size": 128256,
                "tie_word_embeddings": true,
                "max_position_embeddings": 131072,
                "bos_token_id": 128000,
                "eos_token_id": [128001, 128008, 128009],
                "attention_bias": false,
                "mlp_bias": false,
                "hidden_act": "silu",
                "torch_dtype": "bfloat16"
            }),
            other => {
                return Err(cfg_err(format!(
                    "unknown preset '{other}' (known: {})",
                    LlamaConfig::PRESETS.join(", ")
                )))
            }
        };
        LlamaConfig::from_json(&v.to_string())
    }

    /// Parameters of the model this config describes (embeddings, every linear and bias, the
    /// norms, and the LM head unless tied).
    pub fn n_params(&self) -> u64 {
        self.tensor_specs()
            .iter()
            .map(|(_, s)| s.iter().product::<usize>() as u64)
            .sum()
    }

    /// The config as `config.json` text (pretty-printed).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("config serializes")
    }

    /// Width of the concatenated query heads, `num_attention_heads * head_dim`.
    pub fn q_dim(&self) -> usize {
        self.num_attention_heads * self.head_dim
    }

    /// Width of the concatenated key (or value) heads, `num_key_value_heads * head_dim`.
    pub fn kv_dim(&self) -> usize {
        self.num_key_value_heads * self.head_dim
    }

    /// Whether q/k/v projections have a bias (Qwen2 always, Llama with `attention_bias`).
    pub fn has_qkv_bias(&self) -> bool {
        self.model_type == ModelType::Qwen2 || self.attention_bias
    }

    /// Whether the output projection has a bias (Llama with `attention_bias` only).
    pub fn has_o_bias(&self) -> bool {
        self.model_type == ModelType::Llama && self.attention_bias
    }

    /// End-of-sequence ids (empty if none).
    pub fn eos_token_ids(&self) -> Vec<u32> {
        self.eos_token_id
            .as_ref()
            .map(TokenIds::to_vec)
            .unwrap_or_default()
    }

    /// Every tensor the model needs, as (Hugging Face name, torch shape), in a fixed order:
    /// embeddings, then per layer norms/attention/MLP, then the final norm and (unless tied)
    /// `lm_head.weight`.
    pub fn tensor_specs(&self) -> Vec<(String, Vec<usize>)> {
        let (c, i, v) = (self.hidden_size, self.intermediate_size, self.vocab_size);
        let (q, kv) = (self.q_dim(), self.kv_dim());
        let mut out = vec![("model.embed_tokens.weight".to_string(), vec![v, c])];
        for l in 0..self.num_hidden_layers {
            let p = format!("model.layers.{l}");
            out.push((format!("{p}.input_layernorm.weight"), vec![c]));
            out.push((format!("{p}.self_attn.q_proj.weight"), vec![q, c]));
            if self.has_qkv_bias() {
                out.push((format!("{p}.self_attn.q_proj.bias"), vec![q]));
            }
            out.push((format!("{p}.self_attn.k_proj.weight"), vec![kv, c]));
            if self.has_qkv_bias() {
                out.push((format!("{p}.self_attn.k_proj.bias"), vec![kv]));
            }
            out.push((format!("{p}.self_attn.v_proj.weight"), vec![kv, c]));
            if self.has_qkv_bias() {
                out.push((format!("{p}.self_attn.v_proj.bias"), vec![kv]));
            }
            out.push((format!("{p}.self_attn.o_proj.weight"), vec![c, q]));
            if self.has_o_bias() {
                out.push((format!("{p}.self_attn.o_proj.bias"), vec![c]));
            }
            out.push((format!("{p}.post_attention_layernorm.weight"), vec![c]));
            out.push((format!("{p}.mlp.gate_proj.weight"), vec![i, c]));
            out.push((format!("{p}.mlp.up_proj.weight"), vec![i, c]));
            out.push((format!("{p}.mlp.down_proj.weight"), vec![c, i]));
        }
        out.push(("model.norm.weight".to_string(), vec![c]));
        if !self.tie_word_embeddings {
            out.push(("lm_head.weight".to_string(), vec![v, c]));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every preset parses, and has the shapes and parameter count of the published model
    /// (parameter counts as the hub's model cards and `model.num_parameters()` give them).
    #[test]
    fn presets_have_the_published_shapes() {
        let smol = LlamaConfig::preset("smollm2-135m").unwrap();
        assert_eq!(
            (
                smol.hidden_size,
                smol.num_hidden_layers,
                smol.intermediate_size
            ),
            (576, 30, 1536)
        );
        assert_eq!(
            (
                smol.num_attention_heads,
                smol.num_key_value_heads,
                smol.head_dim
            ),
            (9, 3, 64)
        );
        assert_eq!((smol.vocab_size, smol.rope_theta), (49152, 100000.0));
        assert!(smol.tie_word_embeddings && !smol.has_qkv_bias() && smol.rope_scaling.is_none());
        assert_eq!(smol.n_params(), 134_515_008);

        let qwen = LlamaConfig::preset("Qwen2.5-0.5B").unwrap();
        assert_eq!(qwen.model_type, ModelType::Qwen2);
        assert_eq!(
            (
                qwen.hidden_size,
                qwen.num_hidden_layers,
                qwen.intermediate_size
            ),
            (896, 24, 4864)
        );
        assert_eq!(
            (
                qwen.num_attention_heads,
                qwen.num_key_value_heads,
                qwen.head_dim
            ),
            (14, 2, 64)
        );
        assert_eq!((qwen.vocab_size, qwen.rope_theta), (151936, 1e6));
        assert!(qwen.tie_word_embeddings && qwen.has_qkv_bias() && !qwen.has_o_bias());
        assert_eq!(qwen.n_params(), 494_032_768);

        let llama = LlamaConfig::preset("llama3.2-1b").unwrap();
        assert_eq!(
            (
                llama.hidden_size,
                llama.num_hidden_layers,
                llama.intermediate_size
            ),
            (2048, 16, 8192)
        );
        assert_eq!(
            (
                llama.num_attention_heads,
                llama.num_key_value_heads,
                llama.head_dim
            ),
            (32, 8, 64)
        );
        assert_eq!((llama.vocab_size, llama.rope_theta), (128256, 500000.0));
        assert!(llama.tie_word_embeddings && !llama.has_qkv_bias());
        assert_eq!(
            llama.rope_scaling,
            Some(RopeScaling::Llama3 {
                factor: 32.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8192,
            })
        );
        assert_eq!(llama.n_params(), 1_235_814_400);

        for name in LlamaConfig::PRESETS {
            let c = LlamaConfig::preset(name).unwrap();
            assert_eq!(LlamaConfig::from_json(&c.to_json()).unwrap(), c, "{name}");
        }
        let err = LlamaConfig::preset("gpt2").unwrap_err().to_string();
        assert!(
            err.contains("smollm2-135m, qwen2.5-0.5b, llama3.2-1b"),
            "{err}"
        );
    }
}
