//! Folding a PEFT LoRA adapter into its base model: the Hugging Face folder `tinytune merge`
//! writes (`model.safetensors`, `config.json`, tokenizer files) that transformers loads without
//! PEFT.
//!
//! Every adapted linear weight becomes `W' = W + (B @ A) * scale` (PEFT's `merge_and_unload`:
//! `scale = lora_alpha / r`, or `lora_alpha / sqrt(r)` with rsLoRA), computed on the host in f32
//! and then cast to the output dtype; every other tensor is copied (cast). The model is streamed:
//! the safetensors header is laid out from the tensor shapes first ([`MergePlan::new`]), then each
//! tensor is loaded, merged, converted and written in turn ([`MergePlan::write`]), so at most one
//! tensor is held in memory.
//!
//! Tied embeddings (`tie_word_embeddings`) are written once (`model.embed_tokens.weight`, no
//! `lm_head.weight`), as transformers saves such models. A GGUF source gets a `config.json` built
//! from its metadata ([`output_config`]) and, for byte-level BPE (`tokenizer.ggml.model = gpt2`)
//! tokenizers, a `tokenizer.json` + `tokenizer_config.json` rebuilt from it
//! ([`gguf_tokenizer_files`]).

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;

use serde_json::{json, Value};
use tinytune_model::safetensors::{header_json, header_prefix, StEntry};
use tinytune_model::{FloatDtype, ModelError, ModelSource, SourceFormat};

use crate::peft::{LoraAdapter, LoraPair};
use crate::{Result, TrainError};

/// An adapter that does not fit the model: the message says which module and how.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Misfit(pub String);

/// The model weights each LoRA pair of `adapter` applies to, by tensor name
/// (`<module path>.weight`); errors when a module is missing or has another shape.
pub fn adapted_weights<'a>(
    src: &ModelSource,
    adapter: &'a LoraAdapter,
) -> std::result::Result<HashMap<String, &'a LoraPair>, Misfit> {
    let mut pairs = HashMap::new();
    for (key, pair) in &adapter.weights.pairs {
        let name = format!("{}.weight", key.module_path());
        let Some(meta) = src.tensor_meta(&name) else {
            return Err(Misfit(format!(
                "it adapts {} but the model has {} layers",
                key.module_path(),
                src.config().num_hidden_layers
            )));
        };
        if meta.shape != [pair.out_features, pair.in_features] {
            return Err(Misfit(format!(
                "{} is [{}, {}] (out, in) in the model but [{}, {}] in the adapter (an adapter for \
                 a different model?)",
                key.module_path(),
                meta.shape[0],
                meta.shape.get(1).copied().unwrap_or(0),
                pair.out_features,
                pair.in_features
            )));
        }
        pairs.insert(name, pair);
    }
    Ok(pairs)
}

/// The merged `model.safetensors`: its layout, known before any tensor is read.
pub struct MergePlan<'a> {
    pairs: HashMap<String, &'a LoraPair>,
    scale: f32,
    dtype: FloatDtype,
    /// Tensor names (sorted, as transformers writes them) and shapes.
    names: Vec<(String, Vec<usize>)>,
    /// Length, header and padding: the bytes before the data.
    prefix: Vec<u8>,
    data_len: u64,
}

impl<'a> MergePlan<'a> {
    /// Lays out the merge of `adapter` (weights from [`adapted_weights`]) into `src`, every tensor
    /// written as `dtype`.
    pub fn new(
        src: &ModelSource,
        adapter: &'a LoraAdapter,
        pairs: HashMap<String, &'a LoraPair>,
        dtype: FloatDtype,
    ) -> Result<MergePlan<'a>> {
        let mut names: Vec<(String, Vec<usize>)> = src
            .tensors()
            .iter()
            .map(|t| (t.name.clone(), t.shape.clone()))
            .collect();
        names.sort();
        let entries = names
            .iter()
            .map(|(name, shape)| StEntry::new(name.clone(), dtype.into(), shape.clone()))
            .collect::<tinytune_model::Result<Vec<_>>>()?;
        let data_len = entries.iter().map(|e| e.len as u64).sum();
        let meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
        let prefix = header_prefix(header_json(&entries, Some(&meta))?);
        Ok(MergePlan {
            pairs,
            scale: adapter.config.scale() as f32,
            dtype,
            names,
            prefix,
            data_len,
        })
    }

    /// Bytes of the whole file.
    pub fn file_len(&self) -> u64 {
        self.prefix.len() as u64 + self.data_len
    }

    /// Tensors written.
    pub fn tensor_count(&self) -> usize {
        self.names.len()
    }

    /// LoRA pairs merged.
    pub fn pair_count(&self) -> usize {
        self.pairs.len()
    }

    /// Streams the merged file to `w` (header, then each tensor in order). `model` names the
    /// source and `out` the output in errors.
    pub fn write<W: Write>(
        &self,
        src: &ModelSource,
        model: &str,
        w: &mut W,
        out: &str,
    ) -> Result<()> {
        let werr = |e: std::io::Error| TrainError::Io {
            path: out.to_string(),
            source: e,
        };
        w.write_all(&self.prefix).map_err(werr)?;
        let mut buf = Vec::new();
        for (name, _) in &self.names {
            let mut t = src.load(name).map_err(|e| {
                ModelError::Tensor(format!("cannot read tensor {name} of {model}: {e}"))
            })?;
            if let Some(pair) = self.pairs.get(name) {
                merge_into(&mut t.data, pair, self.scale);
            }
            // Convert in slices so a large tensor is not held twice.
            for chunk in t.data.chunks(1 << 20) {
                buf.clear();
                self.dtype.encode_into(chunk, &mut buf);
                w.write_all(&buf).map_err(werr)?;
            }
        }
        Ok(())
    }
}

/// `w += (B @ A) * scale` for a row-major `[out, in]` weight, in f32, summing over the rank in
/// order (as a plain f32 matmul does).
pub fn merge_into(w: &mut [f32], pair: &LoraPair, scale: f32) {
    let (n_out, n_in, r) = (pair.out_features, pair.in_features, pair.r);
    debug_assert_eq!(w.len(), n_out * n_in);
    let mut delta = vec![0f32; n_in];
    for o in 0..n_out {
        delta.iter_mut().for_each(|d| *d = 0.0);
        for k in 0..r {
            let b = pair.b[o * r + k];
            let a = &pair.a[k * n_in..(k + 1) * n_in];
            for (d, &x) in delta.iter_mut().zip(a) {
                *d += b * x;
            }
        }
        for (x, d) in w[o * n_in..(o + 1) * n_in].iter_mut().zip(&delta) {
            *x += d * scale;
        }
    }
}

/// The output `config.json` text: the source folder's own (all its keys kept), or one built from
/// the GGUF metadata; `dtype` (and `torch_dtype` where present) set to the written dtype.
pub fn output_config(src: &ModelSource, model_path: &Path, dtype: FloatDtype) -> Result<String> {
    let plain = |m: String| TrainError::Model(ModelError::Format(m));
    let cfg = src.config();
    let mut v: Value = match src.format() {
        SourceFormat::HfFolder => {
            let p = model_path.join("config.json");
            let text = std::fs::read_to_string(&p)
                .map_err(|e| plain(format!("cannot read {}: {e}", p.display())))?;
            serde_json::from_str(&text)
                .map_err(|e| plain(format!("{} is not JSON: {e}", p.display())))?
        }
        SourceFormat::Gguf => {
            let mut v: Value = serde_json::from_str(&cfg.to_json()).map_err(|e| {
                plain(format!(
                    "internal error: the model config does not serialize: {e}"
                ))
            })?;
            if let Some(o) = v.as_object_mut() {
                // Qwen2 configs have no attention_bias (the q/k/v biases are implied).
                if cfg.model_type == tinytune_model::ModelType::Qwen2 {
                    o.remove("attention_bias");
                }
                o.retain(|_, x| !x.is_null());
                // Both spellings, for transformers 4.x (torch_dtype) and 5.x (dtype).
                o.insert("torch_dtype".into(), Value::Null);
            }
            v
        }
    };
    let o = v.as_object_mut().ok_or_else(|| {
        plain(format!(
            "config.json of {} is not a JSON object",
            model_path.display()
        ))
    })?;
    let archs_empty = o
        .get("architectures")
        .and_then(Value::as_array)
        .is_none_or(|a| a.is_empty());
    if archs_empty {
        o.insert("architectures".into(), json!([cfg.model_type.hf_class()]));
    }
    // A bitsandbytes source is written dequantized: the output is a plain float folder.
    o.remove("quantization_config");
    o.insert("dtype".into(), json!(dtype.torch_name()));
    if o.contains_key("torch_dtype") {
        o.insert("torch_dtype".into(), json!(dtype.torch_name()));
    }
    Ok(serde_json::to_string_pretty(&v).expect("JSON values serialize") + "\n")
}

/// `tokenizer.json` and `tokenizer_config.json` rebuilt from a GGUF's `tokenizer.ggml.*` metadata.
pub fn gguf_tokenizer_files(src: &ModelSource) -> Result<Vec<(&'static str, Vec<u8>)>> {
    let g = src
        .gguf()
        .ok_or_else(|| ModelError::Format("internal error: not a GGUF source".into()))?;
    let tok_json = tinytune_model::tokenizer::gguf_tokenizer_json(g)?;
    let tok = src.tokenizer()?;
    let token = |id: Option<u32>| id.and_then(|i| tok.id_to_token(i));
    let mut tc = serde_json::Map::new();
    tc.insert("tokenizer_class".into(), json!("PreTrainedTokenizerFast"));
    tc.insert("clean_up_tokenization_spaces".into(), json!(false));
    tc.insert(
        "model_max_length".into(),
        json!(src.config().max_position_embeddings),
    );
    for (key, id) in [
        ("bos_token", tok.bos_id()),
        ("eos_token", tok.eos_id()),
        ("pad_token", tok.pad_id()),
    ] {
        if let Some(t) = token(id) {
            tc.insert(key.into(), json!(t));
        }
    }
    if let Some(t) = tok.chat_template() {
        tc.insert("chat_template".into(), json!(t));
    }
    Ok(vec![
        (
            "tokenizer.json",
            serde_json::to_vec_pretty(&tok_json).expect("JSON values serialize"),
        ),
        (
            "tokenizer_config.json",
            serde_json::to_vec_pretty(&Value::Object(tc)).expect("JSON values serialize"),
        ),
    ])
}
