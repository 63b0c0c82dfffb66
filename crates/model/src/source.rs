//! [`ModelSource`]: one model, from a Hugging Face folder or a GGUF file, presented in Hugging
//! Face terms (config, tensor names, torch shapes) and loaded one tensor at a time as f32.

use std::collections::{BTreeSet, HashMap, HashSet};

use crate::bytes::ByteSource;
use crate::config::{LlamaConfig, ModelType};
use crate::float::FloatDtype;
use crate::gguf::{config_from_gguf, gguf_to_hf_name, hf_to_gguf_name, GgufFile};
use crate::safetensors::SafetensorsFile;
use crate::tensor::HostTensor;
use crate::tokenizer::Tokenizer;
use crate::{format_err, ModelError, Result};

/// Files of a Hugging Face folder that a rewritten model (quantized, merged) carries over as they
/// are (those present): tokenizer and generation config.
pub const COPIED_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "generation_config.json",
];

/// Where a [`ModelSource`] reads from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceFormat {
    /// A Hugging Face folder (`config.json` + safetensors).
    HfFolder,
    /// A GGUF file.
    Gguf,
}

/// What a model tensor is stored as, before conversion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorMeta {
    /// Hugging Face name.
    pub name: String,
    /// Torch shape.
    pub shape: Vec<usize>,
    /// Stored element type (`"BF16"`, `"Q4_1"`...).
    pub dtype: String,
    /// The file (shard) holding it.
    pub file: String,
}

/// The pieces of a Hugging Face model folder, for callers without a file system (the browser):
/// everything but the shards is small text.
pub struct HfParts {
    /// `config.json`.
    pub config_json: String,
    /// The safetensors files (one, or every shard of a sharded checkpoint), in any order.
    pub shards: Vec<Box<dyn ByteSource>>,
    /// `tokenizer.json`, if present.
    pub tokenizer_json: Option<String>,
    /// `tokenizer_config.json`, if present (chat template, special token strings).
    pub tokenizer_config_json: Option<String>,
    /// `chat_template.jinja`, if present (takes precedence over `tokenizer_config.json`'s).
    pub chat_template: Option<String>,
}

enum Inner {
    Hf {
        shards: Vec<SafetensorsFile>,
        /// HF name -> shard index.
        map: HashMap<String, usize>,
        tokenizer_json: Option<String>,
        tokenizer_config_json: Option<String>,
        chat_template: Option<String>,
        /// Weights stored as bitsandbytes 4-bit NF4 (a pre-quantized checkpoint).
        nf4: HashSet<String>,
    },
    Gguf(GgufFile),
}

/// A model's config, tensors and tokenizer, from a Hugging Face folder or a GGUF file.
///
/// Opening reads only headers and validates that every tensor the config implies
/// ([`LlamaConfig::tensor_specs`]) is present with the right shape and a supported type, and that
/// there are no unknown ones; [`ModelSource::load`] then converts one tensor at a time.
pub struct ModelSource {
    config: LlamaConfig,
    tensors: Vec<TensorMeta>,
    index: HashMap<String, usize>,
    inner: Inner,
}

/// Tensors a Hugging Face checkpoint may carry that the model does not need.
fn ignorable_hf_tensor(name: &str) -> bool {
    name.ends_with(".rotary_emb.inv_freq")
}

impl ModelSource {
    /// Opens a Hugging Face folder (`config.json` with `model.safetensors` or
    /// `model.safetensors.index.json`) or a `.gguf` file (native targets; files are memory-mapped).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open(path: impl AsRef<std::path::Path>) -> Result<ModelSource> {
        let path = path.as_ref();
        if path.is_dir() {
            return ModelSource::open_hf_folder(path);
        }
        let mut magic = [0u8; 4];
        {
            use std::io::Read;
            let mut f = std::fs::File::open(path).map_err(|e| crate::io_err(path, e))?;
            f.read_exact(&mut magic)
                .map_err(|e| crate::io_err(path, e))?;
        }
        if &magic == b"GGUF" {
            return ModelSource::from_gguf(GgufFile::open(path)?);
        }
        Err(format_err(format!(
            "{}: neither a model folder (config.json + safetensors) nor a GGUF file",
            path.display()
        )))
    }

    #[cfg(not(target_arch = "wasm32"))]
    fn open_hf_folder(dir: &std::path::Path) -> Result<ModelSource> {
        let read = |name: &str| -> Result<Option<String>> {
            let p = dir.join(name);
            match std::fs::read_to_string(&p) {
                Ok(s) => Ok(Some(s)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(crate::io_err(&p, e)),
            }
        };
        let config_json = read("config.json")?
            .ok_or_else(|| format_err(format!("{}: no config.json", dir.display())))?;
        let single = dir.join("model.safetensors");
        let mut shards: Vec<Box<dyn ByteSource>> = Vec::new();
        let mut index_map: Option<(String, HashMap<String, String>)> = None;
        if single.is_file() {
            shards.push(Box::new(crate::bytes::MmapBytes::open(&single)?));
        } else if let Some(idx) = read("model.safetensors.index.json")? {
            let iname = dir
                .join("model.safetensors.index.json")
                .display()
                .to_string();
            let v: serde_json::Value =
                serde_json::from_str(&idx).map_err(|e| format_err(format!("{iname}: {e}")))?;
            let wm = v
                .get("weight_map")
                .and_then(|w| w.as_object())
                .ok_or_else(|| format_err(format!("{iname}: no weight_map object")))?;
            let mut map = HashMap::new();
            for (k, f) in wm {
                let f = f.as_str().ok_or_else(|| {
                    format_err(format!("{iname}: weight_map['{k}'] is not a file name"))
                })?;
                if f.contains('/') || f.contains('\\') || f == ".." {
                    return Err(format_err(format!(
                        "{iname}: shard name '{f}' is not a plain file name"
                    )));
                }
                map.insert(k.clone(), f.to_string());
            }
            let files: BTreeSet<&String> = map.values().collect();
            for f in files {
                shards.push(Box::new(crate::bytes::MmapBytes::open(&dir.join(f))?));
            }
            index_map = Some((iname, map));
        } else {
            return Err(format_err(format!(
                "{}: no model.safetensors or model.safetensors.index.json",
                dir.display()
            )));
        }
        let src = ModelSource::from_hf_parts(HfParts {
            config_json,
            shards,
            tokenizer_json: read("tokenizer.json")?,
            tokenizer_config_json: read("tokenizer_config.json")?,
            chat_template: read("chat_template.jinja")?,
        })?;
        // The index must agree with where the tensors really are.
        if let (
            Some((iname, map)),
            Inner::Hf {
                shards, map: real, ..
            },
        ) = (&index_map, &src.inner)
        {
            for (k, f) in map {
                let ok = real.get(k).is_some_and(|&i| {
                    std::path::Path::new(shards[i].name())
                        .file_name()
                        .and_then(|n| n.to_str())
                        == Some(f.as_str())
                });
                if !ok {
                    return Err(format_err(format!(
                        "{iname}: tensor '{k}' is not in shard '{f}'"
                    )));
                }
            }
        }
        Ok(src)
    }

    /// A model from the parts of a Hugging Face folder (any [`ByteSource`]s).
    pub fn from_hf_parts(parts: HfParts) -> Result<ModelSource> {
        let config = LlamaConfig::from_json(&parts.config_json)?;
        let prequantized =
            crate::bnb::read::check_quantization_config(&parts.config_json, "config.json")?;
        let mut shards = Vec::with_capacity(parts.shards.len());
        for s in parts.shards {
            shards.push(SafetensorsFile::new(s)?);
        }
        if shards.is_empty() {
            return Err(format_err("no safetensors files"));
        }
        let mut map = HashMap::new();
        for (i, sh) in shards.iter().enumerate() {
            for t in sh.tensors() {
                if let Some(j) = map.insert(t.name.clone(), i) {
                    return Err(format_err(format!(
                        "tensor '{}' is in both {} and {}",
                        t.name,
                        shards[j].name(),
                        sh.name()
                    )));
                }
            }
        }
        let specs = config.tensor_specs();
        let mut tensors = Vec::with_capacity(specs.len());
        let mut nf4 = HashSet::new();
        let mut companions: HashSet<String> = HashSet::new();
        for (name, shape) in &specs {
            let &i = map.get(name).ok_or_else(|| {
                ModelError::Tensor(format!(
                    "checkpoint has no tensor '{name}' (expected shape {shape:?})"
                ))
            })?;
            if crate::bnb::read::is_nf4_weight(&shards[i], name)? {
                let qs = crate::bnb::read::quant_state(&shards[i], name)?;
                if [qs.rows, qs.cols][..] != shape[..] {
                    return Err(ModelError::Tensor(format!(
                        "{}: bitsandbytes weight '{name}' has shape [{}, {}], the config implies \
                         {shape:?}",
                        shards[i].name(),
                        qs.rows,
                        qs.cols
                    )));
                }
                for c in crate::bnb::read::COMPANIONS
                    .iter()
                    .chain([&crate::bnb::QUANT_STATE_SUFFIX])
                {
                    companions.insert(format!("{name}{c}"));
                }
                nf4.insert(name.clone());
                tensors.push(TensorMeta {
                    name: name.clone(),
                    shape: shape.clone(),
                    dtype: "NF4".to_string(),
                    file: shards[i].name().to_string(),
                });
                continue;
            }
            let info = shards[i].info(name).expect("mapped");
            if &info.shape != shape {
                return Err(ModelError::Tensor(format!(
                    "{}: tensor '{name}' has shape {:?}, the config implies {shape:?}",
                    shards[i].name(),
                    info.shape
                )));
            }
            if info.dtype.float().is_none() {
                return Err(ModelError::Unsupported(format!(
                    "{}: tensor '{name}' has dtype {} (supported: F32, F16, BF16)",
                    shards[i].name(),
                    info.dtype
                )));
            }
            tensors.push(TensorMeta {
                name: name.clone(),
                shape: shape.clone(),
                dtype: info.dtype.name().to_string(),
                file: shards[i].name().to_string(),
            });
        }
        let expected: BTreeSet<&str> = specs.iter().map(|(n, _)| n.as_str()).collect();
        let unexpected: Vec<&str> = map
            .keys()
            .map(String::as_str)
            .filter(|n| {
                !expected.contains(n) && !ignorable_hf_tensor(n) && !companions.contains(*n)
            })
            // A tied checkpoint may still store lm_head.weight (a copy of the embeddings).
            .filter(|n| !(config.tie_word_embeddings && *n == "lm_head.weight"))
            .collect();
        if !unexpected.is_empty() {
            let mut u = unexpected;
            u.sort();
            return Err(ModelError::Unsupported(format!(
                "{} tensor(s) a {} model does not have: {}",
                u.len(),
                config.model_type.as_str(),
                u.iter().take(8).cloned().collect::<Vec<_>>().join(", ")
            )));
        }
        let index = tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(ModelSource {
            config,
            tensors,
            index,
            inner: Inner::Hf {
                shards,
                map,
                tokenizer_json: parts.tokenizer_json,
                tokenizer_config_json: parts.tokenizer_config_json,
                chat_template: parts.chat_template,
                nf4,
            },
        })
        .and_then(|src| match (prequantized, src.is_prequantized()) {
            (crate::bnb::read::Prequantized::Nf4, false) => Err(ModelError::Tensor(
                "config.json has a bitsandbytes 4-bit quantization_config but no weight is \
                 stored quantized (no NAME.quant_state.bitsandbytes__nf4 tensor); is this the \
                 right folder?"
                    .into(),
            )),
            _ => Ok(src),
        })
    }

    /// A model from a GGUF file (architectures `llama` and `qwen2`).
    pub fn from_gguf(g: GgufFile) -> Result<ModelSource> {
        let config = config_from_gguf(&g)?;
        let mut by_hf = HashMap::new();
        let mut unknown = Vec::new();
        for t in g.tensor_infos() {
            if t.name == "rope_freqs.weight" {
                continue; // folded into config.rope_scaling
            }
            match gguf_to_hf_name(&t.name) {
                Some(hf) => {
                    by_hf.insert(hf, t);
                }
                None => unknown.push(t.name.as_str()),
            }
        }
        if !unknown.is_empty() {
            return Err(ModelError::Unsupported(format!(
                "{}: {} tensor(s) outside the llama/qwen2 layout: {}",
                g.name(),
                unknown.len(),
                unknown
                    .iter()
                    .take(8)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let specs = config.tensor_specs();
        let mut tensors = Vec::with_capacity(specs.len());
        for (name, shape) in &specs {
            let info = by_hf.remove(name).ok_or_else(|| {
                ModelError::Tensor(format!(
                    "{}: no tensor '{}' ({name}, expected torch shape {shape:?})",
                    g.name(),
                    hf_to_gguf_name(name).unwrap_or_default()
                ))
            })?;
            if &info.shape() != shape {
                return Err(ModelError::Tensor(format!(
                    "{}: tensor '{}' has ne {:?} (torch shape {:?}), the config implies torch shape {shape:?}",
                    g.name(),
                    info.name,
                    info.ne,
                    info.shape()
                )));
            }
            let t = info.ggml_type()?;
            tensors.push(TensorMeta {
                name: name.clone(),
                shape: shape.clone(),
                dtype: t.name().to_string(),
                file: g.name().to_string(),
            });
        }
        if !by_hf.is_empty() {
            let mut u: Vec<String> = by_hf.values().map(|t| t.name.clone()).collect();
            u.sort();
            return Err(ModelError::Unsupported(format!(
                "{}: tensor(s) a {} model with this config does not have: {}",
                g.name(),
                config.model_type.as_str(),
                u.join(", ")
            )));
        }
        let index = tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(ModelSource {
            config,
            tensors,
            index,
            inner: Inner::Gguf(g),
        })
    }

    /// A model from a GGUF file held by any [`ByteSource`] (e.g. [`crate::ChunkedBytes`]).
    pub fn from_gguf_bytes(src: Box<dyn ByteSource>) -> Result<ModelSource> {
        ModelSource::from_gguf(GgufFile::new(src)?)
    }

    /// The model config.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// Folder or GGUF.
    pub fn format(&self) -> SourceFormat {
        match self.inner {
            Inner::Hf { .. } => SourceFormat::HfFolder,
            Inner::Gguf(_) => SourceFormat::Gguf,
        }
    }

    /// The underlying GGUF file (raw metadata and tensors), if this is one.
    pub fn gguf(&self) -> Option<&GgufFile> {
        match &self.inner {
            Inner::Gguf(g) => Some(g),
            Inner::Hf { .. } => None,
        }
    }

    /// Hugging Face names of every model tensor, in [`LlamaConfig::tensor_specs`] order.
    pub fn tensor_names(&self) -> Vec<&str> {
        self.tensors.iter().map(|t| t.name.as_str()).collect()
    }

    /// Name, shape and stored type of every model tensor.
    pub fn tensors(&self) -> &[TensorMeta] {
        &self.tensors
    }

    /// One tensor's metadata.
    pub fn tensor_meta(&self, name: &str) -> Option<&TensorMeta> {
        self.index.get(name).map(|&i| &self.tensors[i])
    }

    /// Reads one tensor by Hugging Face name and converts it to f32 with its torch shape. For GGUF
    /// `llama` models the q/k projection rows are put back into Hugging Face order.
    pub fn load(&self, name: &str) -> Result<HostTensor> {
        let meta = self.tensor_meta(name).ok_or_else(|| {
            let hint = if name == "lm_head.weight" && self.config.tie_word_embeddings {
                " (the embeddings are tied: use model.embed_tokens.weight)"
            } else {
                ""
            };
            ModelError::Tensor(format!("the model has no tensor '{name}'{hint}"))
        })?;
        let t = match &self.inner {
            Inner::Hf {
                shards, map, nf4, ..
            } if nf4.contains(name) => {
                let (t, _) = crate::bnb::read::read_nf4(&shards[map[name]], name)?;
                HostTensor {
                    shape: meta.shape.clone(),
                    data: crate::bnb::read::dequantize(&t),
                }
            }
            Inner::Hf { shards, map, .. } => shards[map[name]].load(name)?,
            Inner::Gguf(g) => {
                let gname = hf_to_gguf_name(name).expect("model tensors map to GGUF names");
                let mut t = g.load_raw(&gname)?;
                if self.config.model_type == ModelType::Llama {
                    let n_head = if name.contains(".self_attn.q_proj.") {
                        Some(self.config.num_attention_heads)
                    } else if name.contains(".self_attn.k_proj.") {
                        Some(self.config.num_key_value_heads)
                    } else {
                        None
                    };
                    if let Some(n_head) = n_head {
                        let rows = t.shape[0];
                        let cols = t.data.len() / rows.max(1);
                        t.data = unpermute_qk_rows(&t.data, rows, cols, n_head)?;
                    }
                }
                t
            }
        };
        debug_assert_eq!(t.shape, meta.shape);
        Ok(t)
    }

    /// Whether some linear weights are stored as bitsandbytes 4-bit NF4 (a pre-quantized folder:
    /// the loader uses their codes as they are).
    pub fn is_prequantized(&self) -> bool {
        matches!(&self.inner, Inner::Hf { nf4, .. } if !nf4.is_empty())
    }

    /// A weight stored as bitsandbytes 4-bit NF4, read as it is stored (codes, absmax, block
    /// size); `None` for a tensor stored as floats (or quantized in a GGUF).
    pub fn nf4(&self, name: &str) -> Result<Option<tinytune_gpu::nf4::Nf4Tensor>> {
        match &self.inner {
            Inner::Hf {
                shards, map, nf4, ..
            } if nf4.contains(name) => Ok(Some(
                crate::bnb::read::read_nf4(&shards[map[name]], name)?.0,
            )),
            _ => Ok(None),
        }
    }

    /// The float dtype a tensor is stored in (F32, F16, BF16), or `None` when it is stored
    /// quantized (a GGUF Q8_0 / Q4_0 / Q4_1 tensor).
    pub fn stored_float(&self, name: &str) -> Option<FloatDtype> {
        match self.tensor_meta(name)?.dtype.as_str() {
            "F32" => Some(FloatDtype::F32),
            "F16" => Some(FloatDtype::F16),
            "BF16" => Some(FloatDtype::BF16),
            _ => None,
        }
    }

    /// Rows `[row0, row0 + rows)` of a 2-D tensor (`[rows, C]`, torch shape) as little-endian
    /// `to` elements, reading only those rows: the stored bytes as they are when the tensor is
    /// stored as `to`, else converted through f32 ([`FloatDtype::encode`]: exact to f32, round to
    /// nearest even to a 16-bit dtype). For tensors kept in their own dtype on the device (the
    /// vocabulary tables), loaded a chunk at a time without an f32 copy of the whole tensor. Not
    /// for a GGUF llama model's q/k projections, which [`ModelSource::load`] reorders.
    pub fn load_rows(
        &self,
        name: &str,
        row0: usize,
        rows: usize,
        to: FloatDtype,
    ) -> Result<Vec<u8>> {
        let meta = self
            .tensor_meta(name)
            .ok_or_else(|| ModelError::Tensor(format!("the model has no tensor '{name}'")))?;
        let [n_rows, c] = meta.shape[..] else {
            return Err(ModelError::Shape(format!(
                "{name}: shape {:?}, expected [rows, C]",
                meta.shape
            )));
        };
        if row0.checked_add(rows).is_none_or(|end| end > n_rows) {
            return Err(ModelError::Shape(format!(
                "{name}: rows {row0}..{} of {n_rows}",
                row0.saturating_add(rows)
            )));
        }
        if name.contains(".self_attn.q_proj.") || name.contains(".self_attn.k_proj.") {
            return Err(ModelError::Unsupported(format!(
                "{name}: q/k projections load whole (ModelSource::load)"
            )));
        }
        let n = rows * c;
        let mut f32s = vec![0f32; n];
        match &self.inner {
            Inner::Hf { nf4, .. } if nf4.contains(name) => {
                let all = self.load(name)?;
                f32s.copy_from_slice(&all.data[row0 * c..(row0 + rows) * c]);
            }
            Inner::Hf { shards, map, .. } => {
                let sh = &shards[map[name]];
                let bytes = sh.raw_rows(name, row0, rows)?;
                let from = self.stored_float(name).ok_or_else(|| {
                    ModelError::Unsupported(format!("{name}: dtype {}", meta.dtype))
                })?;
                if from == to {
                    return Ok(bytes.into_owned());
                }
                from.decode_into(&bytes, &mut f32s);
            }
            Inner::Gguf(g) => {
                let gname = hf_to_gguf_name(name).expect("model tensors map to GGUF names");
                let (t, bytes) = g.raw_rows(&gname, row0, rows)?;
                if self.stored_float(name) == Some(to) {
                    return Ok(bytes.into_owned());
                }
                t.dequantize(&bytes, &mut f32s)?;
            }
        }
        Ok(to.encode(&f32s))
    }

    /// The tokenizer: `tokenizer.json` (+ `tokenizer_config.json` / `chat_template.jinja`) of a
    /// folder, or the `tokenizer.ggml.*` metadata of a GGUF file.
    pub fn tokenizer(&self) -> Result<Tokenizer> {
        match &self.inner {
            Inner::Hf {
                tokenizer_json,
                tokenizer_config_json,
                chat_template,
                ..
            } => {
                let tj = tokenizer_json.as_deref().ok_or_else(|| {
                    ModelError::Tokenizer("the model folder has no tokenizer.json".into())
                })?;
                Tokenizer::from_hf_json(
                    tj.as_bytes(),
                    tokenizer_config_json.as_deref(),
                    chat_template.as_deref(),
                    Some(&self.config),
                )
            }
            Inner::Gguf(g) => Tokenizer::from_gguf(g),
        }
    }
}

/// Undoes llama.cpp's `LlamaModel.permute` on the rows of a q or k projection (weight
/// `[rows, cols]` or bias `[rows]`, `cols = 1`).
///
/// The converter computes `w.reshape(n_head, 2, D/2, C).swapaxes(1, 2).reshape(rows, C)` with
/// `D = rows / n_head` (for k, `n_head` is the KV head count): Hugging Face row `h*D + s*D/2 + j`
/// (`s` in {0, 1}, `j < D/2`, i.e. rotate-half RoPE pairs `j` and `j + D/2`) becomes GGUF row
/// `h*D + 2*j + s` (interleaved pairs). This puts every row back.
pub fn unpermute_qk_rows(
    data: &[f32],
    rows: usize,
    cols: usize,
    n_head: usize,
) -> Result<Vec<f32>> {
    if n_head == 0
        || !rows.is_multiple_of(n_head)
        || !(rows / n_head).is_multiple_of(2)
        || data.len() != rows * cols
    {
        return Err(ModelError::Tensor(format!(
            "cannot un-permute a [{rows}, {cols}] q/k projection ({} values) for {n_head} heads",
            data.len()
        )));
    }
    let d = rows / n_head;
    let half = d / 2;
    let mut out = vec![0f32; data.len()];
    for h in 0..n_head {
        for s in 0..2 {
            for j in 0..half {
                let hf = h * d + s * half + j;
                let gg = h * d + 2 * j + s;
                out[hf * cols..(hf + 1) * cols].copy_from_slice(&data[gg * cols..(gg + 1) * cols]);
            }
        }
    }
    Ok(out)
}
