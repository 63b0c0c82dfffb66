//! The model's tokenizer: a Hugging Face `tokenizers::Tokenizer` plus the chat template and
//! special token ids, built from `tokenizer.json` or from GGUF metadata.
//!
//! # From GGUF
//! Only `tokenizer.ggml.model = "gpt2"` (byte-level BPE) is supported. The `tokenizer.json` that
//! the GGUF was converted from is rebuilt:
//! * model: BPE over `tokenizer.ggml.tokens` (id = position) and `tokenizer.ggml.merges`;
//! * added tokens: `token_type` 3 (control) as special, 4 (user-defined) as non-special, both
//!   matched whole before pre-tokenization (like llama.cpp and transformers' GGUF loader);
//! * pre-tokenizer from `tokenizer.ggml.pre`, with the splitting rules llama.cpp uses for it
//!   (`llama-bpe`: the Llama-3 regex and `ignore_merges`; `qwen2`: NFC + the Qwen2 regex;
//!   `smollm`/`starcoder`...: single digits + GPT-2 regex; `gpt-2`/`default`: GPT-2 regex);
//!   unknown names are an error rather than a silently different tokenization;
//! * BOS/EOS added by `encode(.., add_special = true)` when `tokenizer.ggml.add_bos_token` /
//!   `add_eos_token` say so (default: BOS for `llama-bpe`, like llama.cpp);
//! * ByteLevel decoder; `tokenizer.chat_template` as the chat template.

use std::ops::Range;

use serde_json::{json, Map, Value};

use crate::config::LlamaConfig;
use crate::gguf::GgufFile;
use crate::{ModelError, Result};

/// Llama-3 pre-tokenizer split (Hugging Face `tokenizer.json`).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2 pre-tokenizer split (Hugging Face `tokenizer.json`).
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// A tokenizer with its special tokens and chat template.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    chat_template: Option<String>,
    bos_id: Option<u32>,
    eos_id: Option<u32>,
    pad_id: Option<u32>,
}

fn tok_err(e: impl std::fmt::Display) -> ModelError {
    ModelError::Tokenizer(e.to_string())
}

/// A special token in `tokenizer_config.json`: a string or `{"content": ...}`.
fn token_str(v: Option<&Value>) -> Option<&str> {
    match v? {
        Value::String(s) => Some(s),
        Value::Object(o) => o.get("content").and_then(Value::as_str),
        _ => None,
    }
}

impl Tokenizer {
    /// From a `tokenizer.json` document, with the chat template and special tokens of
    /// `tokenizer_config.json` (`chat_template` as a string or a list of `{name, template}`, where
    /// `default` or the first is taken); `chat_template_jinja` (a `chat_template.jinja` file)
    /// takes precedence. Special ids fall back to the model config's `bos/eos/pad_token_id`.
    pub fn from_hf_json(
        tokenizer_json: &[u8],
        tokenizer_config_json: Option<&str>,
        chat_template_jinja: Option<&str>,
        config: Option<&LlamaConfig>,
    ) -> Result<Tokenizer> {
        let inner = tokenizers::Tokenizer::from_bytes(tokenizer_json)
            .map_err(|e| ModelError::Tokenizer(format!("tokenizer.json: {e}")))?;
        let tc: Value = match tokenizer_config_json {
            Some(s) => serde_json::from_str(s)
                .map_err(|e| ModelError::Tokenizer(format!("tokenizer_config.json: {e}")))?,
            None => Value::Null,
        };
        let chat_template = match chat_template_jinja {
            Some(t) => Some(t.to_string()),
            None => match tc.get("chat_template") {
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Array(list)) => {
                    let named = |want: Option<&str>| {
                        list.iter().find(|e| {
                            want.is_none_or(|w| e.get("name").and_then(Value::as_str) == Some(w))
                        })
                    };
                    named(Some("default"))
                        .or_else(|| named(None))
                        .and_then(|e| e.get("template"))
                        .and_then(Value::as_str)
                        .map(str::to_string)
                }
                _ => None,
            },
        };
        let id_of = |key: &str| token_str(tc.get(key)).and_then(|t| inner.token_to_id(t));
        let bos_id =
            id_of("bos_token").or_else(|| config.and_then(|c| c.bos_token_id.as_ref()?.first()));
        let eos_id =
            id_of("eos_token").or_else(|| config.and_then(|c| c.eos_token_id.as_ref()?.first()));
        let pad_id = id_of("pad_token").or_else(|| config.and_then(|c| c.pad_token_id));
        Ok(Tokenizer {
            inner,
            chat_template,
            bos_id,
            eos_id,
            pad_id,
        })
    }

    /// From the `tokenizer.ggml.*` metadata of a GGUF file (see the module docs).
    pub fn from_gguf(g: &GgufFile) -> Result<Tokenizer> {
        let json = gguf_tokenizer_json(g)?;
        let inner: tokenizers::Tokenizer = serde_json::from_value(json).map_err(|e| {
            ModelError::Tokenizer(format!("{}: building the tokenizer: {e}", g.name()))
        })?;
        let id = |k: &str| -> Result<Option<u32>> { Ok(g.get_u64(k)?.map(|v| v as u32)) };
        Ok(Tokenizer {
            inner,
            chat_template: g.get_str("tokenizer.chat_template")?.map(str::to_string),
            bos_id: id("tokenizer.ggml.bos_token_id")?,
            eos_id: id("tokenizer.ggml.eos_token_id")?,
            pad_id: id("tokenizer.ggml.padding_token_id")?,
        })
    }

    /// Token ids of `text`. `add_special` adds what the tokenizer adds around a sequence (BOS for
    /// Llama-3; nothing for SmolLM2 or Qwen2), like transformers' `add_special_tokens=True`.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        Ok(self
            .inner
            .encode(text, add_special)
            .map_err(tok_err)?
            .get_ids()
            .to_vec())
    }

    /// Like [`Tokenizer::encode`], with each token's byte range in `text` (empty for added special
    /// tokens such as BOS).
    pub fn encode_with_offsets(
        &self,
        text: &str,
        add_special: bool,
    ) -> Result<Vec<(u32, Range<usize>)>> {
        let enc = self.inner.encode(text, add_special).map_err(tok_err)?;
        Ok(enc
            .get_ids()
            .iter()
            .zip(enc.get_offsets())
            .map(|(&id, &(a, b))| (id, a..b))
            .collect())
    }

    /// Text of `ids`; `skip_special` drops special tokens (`<|im_end|>`...).
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner.decode(ids, skip_special).map_err(tok_err)
    }

    /// The chat template (Jinja source), if the model has one. Rendering is done elsewhere.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// Beginning-of-sequence id.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    /// End-of-sequence id.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos_id
    }

    /// Padding id.
    pub fn pad_id(&self) -> Option<u32> {
        self.pad_id
    }

    /// The string of a token id.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The id of a token string (added tokens included).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Number of ids, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The underlying `tokenizers::Tokenizer`.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

/// The `tokenizer.json` document equivalent to a GGUF's `tokenizer.ggml.*` metadata.
pub fn gguf_tokenizer_json(g: &GgufFile) -> Result<Value> {
    let name = g.name();
    let model = g.get_str("tokenizer.ggml.model")?.ok_or_else(|| {
        ModelError::Tokenizer(format!(
            "{name}: no tokenizer.ggml.model (the GGUF has no tokenizer)"
        ))
    })?;
    if model != "gpt2" {
        return Err(ModelError::Unsupported(format!(
            "{name}: GGUF tokenizer model '{model}' (supported: gpt2, byte-level BPE)"
        )));
    }
    let tokens = g
        .get_str_array("tokenizer.ggml.tokens")?
        .ok_or_else(|| ModelError::Tokenizer(format!("{name}: no tokenizer.ggml.tokens")))?;
    let merges = g
        .get_str_array("tokenizer.ggml.merges")?
        .ok_or_else(|| ModelError::Tokenizer(format!("{name}: no tokenizer.ggml.merges")))?;
    let types = g
        .get_i64_array("tokenizer.ggml.token_type")?
        .unwrap_or_default();
    if !types.is_empty() && types.len() != tokens.len() {
        return Err(ModelError::Tokenizer(format!(
            "{name}: {} token types for {} tokens",
            types.len(),
            tokens.len()
        )));
    }
    let pre = g.get_str("tokenizer.ggml.pre")?.unwrap_or("default");

    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    let split = |re: &str| json!({"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false});
    let (normalizer, pre_tokenizer, ignore_merges, default_bos) = match pre {
        "default" | "gpt-2" | "gpt2" | "phi-2" | "mpt" | "olmo" => {
            (Value::Null, byte_level(true), false, false)
        }
        "smollm" | "starcoder" | "refact" | "codeshell" | "command-r" | "exaone" | "minerva" => (
            Value::Null,
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true},
                byte_level(true),
            ]}),
            false,
            false,
        ),
        "llama-bpe" | "llama3" | "llama-v3" | "falcon3" => (
            Value::Null,
            json!({"type": "Sequence", "pretokenizers": [split(LLAMA3_SPLIT), byte_level(false)]}),
            true,
            true,
        ),
        "dbrx" | "smaug-bpe" => (
            Value::Null,
            json!({"type": "Sequence", "pretokenizers": [split(LLAMA3_SPLIT), byte_level(false)]}),
            false,
            false,
        ),
        "qwen2" | "deepseek-r1-qwen" => (
            json!({"type": "NFC"}),
            json!({"type": "Sequence", "pretokenizers": [split(QWEN2_SPLIT), byte_level(false)]}),
            false,
            false,
        ),
        other => {
            return Err(ModelError::Unsupported(format!(
            "{name}: GGUF pre-tokenizer '{other}' (supported: default, gpt-2, smollm, starcoder, \
                 llama-bpe, dbrx, smaug-bpe, qwen2, deepseek-r1-qwen)"
        )))
        }
    };

    let mut vocab = Map::with_capacity(tokens.len());
    let mut added = Vec::new();
    for (i, &t) in tokens.iter().enumerate() {
        if vocab.contains_key(t) {
            // A duplicate string can only map to one id; the first wins (as in llama.cpp's map).
            continue;
        }
        vocab.insert(t.to_string(), json!(i));
        let ty = types.get(i).copied().unwrap_or(1);
        if ty == 3 || ty == 4 {
            added.push(json!({
                "id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                "normalized": false, "special": ty == 3,
            }));
        }
    }
    let mut merge_list = Vec::with_capacity(merges.len());
    for m in &merges {
        if m.split(' ').count() != 2 {
            return Err(ModelError::Tokenizer(format!(
                "{name}: merge '{m}' is not two tokens"
            )));
        }
        merge_list.push(Value::String(m.to_string()));
    }

    let add_bos = g
        .get_bool("tokenizer.ggml.add_bos_token")?
        .unwrap_or(default_bos);
    let add_eos = g.get_bool("tokenizer.ggml.add_eos_token")?.unwrap_or(false);
    let special_of = |key: &str| -> Result<Option<(String, u32)>> {
        match g.get_u64(key)? {
            None => Ok(None),
            Some(id) => {
                let t = tokens.get(id as usize).ok_or_else(|| {
                    ModelError::Tokenizer(format!("{name}: {key} {id} is outside the vocabulary"))
                })?;
                Ok(Some((t.to_string(), id as u32)))
            }
        }
    };
    let bos = if add_bos {
        Some(special_of("tokenizer.ggml.bos_token_id")?.ok_or_else(|| {
            ModelError::Tokenizer(format!(
                "{name}: add_bos_token is set but there is no bos_token_id"
            ))
        })?)
    } else {
        None
    };
    let eos = if add_eos {
        Some(special_of("tokenizer.ggml.eos_token_id")?.ok_or_else(|| {
            ModelError::Tokenizer(format!(
                "{name}: add_eos_token is set but there is no eos_token_id"
            ))
        })?)
    } else {
        None
    };
    let byte_level_post = json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true});
    let post_processor = if bos.is_none() && eos.is_none() {
        byte_level_post
    } else {
        let mut single = Vec::new();
        let mut pair = Vec::new();
        let mut specials = Map::new();
        let tok = |t: &(String, u32), type_id: u32| json!({"SpecialToken": {"id": t.0, "type_id": type_id}});
        for (seq, type_id) in [("A", 0), ("B", 1)] {
            let list = if seq == "A" { &mut single } else { &mut pair };
            if let Some(b) = &bos {
                list.push(tok(b, type_id));
            }
            list.push(json!({"Sequence": {"id": seq, "type_id": type_id}}));
            if let Some(e) = &eos {
                list.push(tok(e, type_id));
            }
        }
        let pair: Vec<Value> = single.iter().cloned().chain(pair).collect();
        for t in bos.iter().chain(eos.iter()) {
            specials.insert(
                t.0.clone(),
                json!({"id": t.0, "ids": [t.1], "tokens": [t.0]}),
            );
        }
        json!({"type": "Sequence", "processors": [
            byte_level_post,
            {"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": specials},
        ]})
    };

    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": null,
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": false,
            "byte_fallback": false,
            "ignore_merges": ignore_merges,
            "vocab": vocab,
            "merges": merge_list,
        },
    }))
}
