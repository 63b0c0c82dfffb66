//! `tinytune merge`: folds a PEFT LoRA adapter into its base model and writes a plain Hugging Face
//! model folder (`config.json`, `model.safetensors`, tokenizer files) that transformers loads
//! without PEFT.
//!
//! Every adapted linear weight becomes `W' = W + (B @ A) * scale` (PEFT's `merge_and_unload`:
//! `scale = lora_alpha / r`, or `lora_alpha / sqrt(r)` with rsLoRA), computed on the host in f32
//! and then cast to the output dtype; every other tensor is copied (cast). The model is streamed:
//! the safetensors header is laid out from the tensor shapes first, then each tensor is loaded,
//! merged, converted and written in turn, so at most one tensor is held in memory. Each output
//! file is written to a temporary file inside OUT and renamed into place; `config.json` comes
//! last, so a folder with a `config.json` is complete.
//!
//! Tied embeddings (`tie_word_embeddings`) are written once (`model.embed_tokens.weight`, no
//! `lm_head.weight`), as transformers saves such models. A GGUF source gets a `config.json` built
//! from its metadata and, for byte-level BPE (`tokenizer.ggml.model = gpt2`) tokenizers, a
//! `tokenizer.json` + `tokenizer_config.json` rebuilt from it; other GGUF tokenizers are reported
//! and skipped.

use std::collections::HashMap;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, ValueEnum};
use safetensors::tensor::{Metadata, TensorInfo};
use safetensors::Dtype;
use serde_json::{json, Value};
use tinytune_model::{ModelSource, SourceFormat};
use tinytune_train::{Adapter, LoraPair};

/// Element type of the merged model's tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutDtype {
    /// IEEE half precision (torch.float16).
    F16,
    /// bfloat16 (torch.bfloat16).
    Bf16,
    /// f32 (torch.float32): the merge exactly as computed.
    F32,
}

impl OutDtype {
    fn st(self) -> Dtype {
        match self {
            OutDtype::F16 => Dtype::F16,
            OutDtype::Bf16 => Dtype::BF16,
            OutDtype::F32 => Dtype::F32,
        }
    }

    /// The name `config.json` uses (`dtype` / `torch_dtype`).
    fn torch_name(self) -> &'static str {
        match self {
            OutDtype::F16 => "float16",
            OutDtype::Bf16 => "bfloat16",
            OutDtype::F32 => "float32",
        }
    }

    fn size(self) -> usize {
        match self {
            OutDtype::F32 => 4,
            OutDtype::F16 | OutDtype::Bf16 => 2,
        }
    }

    /// Appends the little-endian encoding of `x` (round to nearest even, as torch casts).
    fn encode(self, x: &[f32], out: &mut Vec<u8>) {
        out.reserve(x.len() * self.size());
        match self {
            OutDtype::F32 => x
                .iter()
                .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
            OutDtype::F16 => x
                .iter()
                .for_each(|v| out.extend_from_slice(&half::f16::from_f32(*v).to_le_bytes())),
            OutDtype::Bf16 => x
                .iter()
                .for_each(|v| out.extend_from_slice(&half::bf16::from_f32(*v).to_le_bytes())),
        }
    }
}

/// Arguments of `tinytune merge`.
#[derive(Args, Debug)]
pub struct MergeArgs {
    /// Base model: a Hugging Face folder (config.json + model.safetensors or a sharded index) or a
    /// .gguf file (llama / qwen2) [required].
    #[arg(long, value_name = "PATH")]
    pub model: PathBuf,
    /// PEFT LoRA adapter folder (adapter_config.json + adapter_model.safetensors) trained on MODEL
    /// [required].
    #[arg(long, value_name = "DIR")]
    pub adapter: String,
    /// Output folder (created if missing): config.json, model.safetensors and the tokenizer files.
    /// Existing files of those names are replaced; the source model is never overwritten [required].
    #[arg(long, value_name = "DIR")]
    pub output_dir: PathBuf,
    /// Element type of every written tensor (the merge itself is computed in f32).
    #[arg(long, value_enum, default_value_t = OutDtype::F16)]
    pub dtype: OutDtype,
}

/// Files of a Hugging Face folder copied as they are (those present).
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

/// Runs `tinytune merge`.
pub fn run(args: &MergeArgs) -> Result<()> {
    let model_path = &args.model;
    let model = model_path.display().to_string();
    let adapter_dir = PathBuf::from(&args.adapter);
    let out_dir = &args.output_dir;
    let out = out_dir.display().to_string();

    if !model_path.exists() {
        bail!("model {model} does not exist");
    }
    if !adapter_dir.is_dir() {
        bail!(
            "adapter {} is not a folder (expected a PEFT adapter folder with adapter_config.json)",
            args.adapter
        );
    }
    let src =
        ModelSource::open(model_path).with_context(|| format!("cannot open model {model}"))?;
    let adapter = Adapter::load(&adapter_dir)
        .with_context(|| format!("cannot load adapter {}", args.adapter))?;
    let cfg = src.config();

    // Every adapted projection must exist in the model with the adapter's shape.
    let mut pairs: HashMap<String, &LoraPair> = HashMap::new();
    for (key, pair) in &adapter.weights.pairs {
        let name = format!("{}.weight", key.module_path());
        let Some(meta) = src.tensor_meta(&name) else {
            bail!(
                "adapter {} does not fit model {model}: it adapts {} but the model has {} layers",
                args.adapter,
                key.module_path(),
                cfg.num_hidden_layers
            );
        };
        if meta.shape != [pair.out_features, pair.in_features] {
            bail!(
                "adapter {} does not fit model {model}: {} is [{}, {}] (out, in) in the model but \
                 [{}, {}] in the adapter (an adapter for a different model?)",
                args.adapter,
                key.module_path(),
                meta.shape[0],
                meta.shape.get(1).copied().unwrap_or(0),
                pair.out_features,
                pair.in_features
            );
        }
        pairs.insert(name, pair);
    }
    let scale = adapter.config.scale() as f32;

    std::fs::create_dir_all(out_dir).with_context(|| format!("cannot create folder {out}"))?;
    if same_dir(model_path, out_dir) {
        bail!("--output-dir {out} is the model folder itself; choose another folder");
    }

    // The safetensors layout: tensors sorted by name (as transformers writes them), contiguous.
    let dtype = args.dtype;
    let mut names: Vec<(String, Vec<usize>)> = src
        .tensors()
        .iter()
        .map(|t| (t.name.clone(), t.shape.clone()))
        .collect();
    names.sort();
    let mut infos = Vec::with_capacity(names.len());
    let mut off = 0usize;
    for (name, shape) in &names {
        let len = shape.iter().product::<usize>() * dtype.size();
        infos.push((
            name.clone(),
            TensorInfo {
                dtype: dtype.st(),
                shape: shape.clone(),
                data_offsets: (off, off + len),
            },
        ));
        off += len;
    }
    let data_len = off;
    let user_meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    let header = Metadata::new(Some(user_meta), infos)
        .map_err(|e| anyhow!("internal error: invalid output layout: {e}"))?;
    let mut header = serde_json::to_vec(&header)
        .context("internal error: serializing the safetensors header")?;
    header.resize(header.len().next_multiple_of(8), b' ');

    let st_path = out_dir.join("model.safetensors");
    let st_name = st_path.display().to_string();
    let tmp = tempfile::Builder::new()
        .prefix(".model.safetensors.")
        .suffix(".tmp")
        .tempfile_in(out_dir)
        .with_context(|| format!("cannot create a temporary file in {out}"))?;
    let werr = |e: std::io::Error| anyhow!("cannot write {st_name}: {e}");
    {
        let mut w = BufWriter::with_capacity(1 << 20, tmp.as_file());
        w.write_all(&(header.len() as u64).to_le_bytes())
            .map_err(werr)?;
        w.write_all(&header).map_err(werr)?;
        let mut buf = Vec::new();
        for (name, _) in &names {
            let mut t = src
                .load(name)
                .with_context(|| format!("cannot read tensor {name} of {model}"))?;
            if let Some(pair) = pairs.get(name) {
                merge_into(&mut t.data, pair, scale);
            }
            // Convert in slices so a large tensor is not held twice.
            for chunk in t.data.chunks(1 << 20) {
                buf.clear();
                dtype.encode(chunk, &mut buf);
                w.write_all(&buf).map_err(werr)?;
            }
        }
        w.flush().map_err(werr)?;
    }
    let f = tmp.as_file();
    let written = f.metadata().map_err(werr)?.len();
    let expect = (8 + header.len() + data_len) as u64;
    if written != expect {
        bail!("internal error: wrote {written} bytes to {st_name}, {expect} planned");
    }
    f.sync_all().map_err(werr)?;
    persist(tmp, &st_path)?;

    // Tokenizer (and generation config) files.
    let mut notes = Vec::new();
    match src.format() {
        SourceFormat::HfFolder => {
            for name in COPIED_FILES {
                let p = model_path.join(name);
                if p.is_file() {
                    let bytes = std::fs::read(&p)
                        .with_context(|| format!("cannot read {}", p.display()))?;
                    write_file(&out_dir.join(name), &bytes)?;
                }
            }
            if !model_path.join("tokenizer.json").is_file()
                && !model_path.join("tokenizer.model").is_file()
            {
                notes.push(format!("{model} has no tokenizer files, so {out} has none"));
            }
        }
        SourceFormat::Gguf => match gguf_tokenizer_files(&src) {
            Ok(files) => {
                for (name, bytes) in files {
                    write_file(&out_dir.join(name), &bytes)?;
                }
            }
            Err(e) => notes.push(format!(
                "no tokenizer written ({}); add tokenizer.json / tokenizer_config.json from the \
                 original Hugging Face model",
                super::one_line(&format!("{e:#}"))
            )),
        },
    }

    // config.json last: its presence marks a complete folder.
    let config = output_config(&src, model_path, dtype)?;
    let text = serde_json::to_string_pretty(&config).context("serializing config.json")? + "\n";
    write_file(&out_dir.join("config.json"), text.as_bytes())?;

    println!(
        "{out}: merged {} LoRA pair(s) (r {}, scale {}) into {model}; {} tensor(s) written as {} \
         ({} bytes){}",
        pairs.len(),
        adapter.config.r,
        adapter.config.scale(),
        names.len(),
        dtype.torch_name(),
        expect,
        if cfg.tie_word_embeddings {
            ", embeddings tied (no lm_head.weight)"
        } else {
            ""
        }
    );
    for n in notes {
        println!("note: {n}");
    }
    Ok(())
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

/// The output `config.json`: the source folder's own (all its keys kept), or one built from the
/// GGUF metadata; `dtype` (and `torch_dtype` where present) set to the written dtype.
fn output_config(src: &ModelSource, model_path: &Path, dtype: OutDtype) -> Result<Value> {
    let cfg = src.config();
    let mut v: Value = match src.format() {
        SourceFormat::HfFolder => {
            let p = model_path.join("config.json");
            let text = std::fs::read_to_string(&p)
                .with_context(|| format!("cannot read {}", p.display()))?;
            serde_json::from_str(&text).with_context(|| format!("{} is not JSON", p.display()))?
        }
        SourceFormat::Gguf => {
            let mut v: Value = serde_json::from_str(&cfg.to_json())
                .context("internal error: the model config does not serialize")?;
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
        anyhow!(
            "config.json of {} is not a JSON object",
            model_path.display()
        )
    })?;
    let archs_empty = o
        .get("architectures")
        .and_then(Value::as_array)
        .is_none_or(|a| a.is_empty());
    if archs_empty {
        o.insert("architectures".into(), json!([cfg.model_type.hf_class()]));
    }
    o.insert("dtype".into(), json!(dtype.torch_name()));
    if o.contains_key("torch_dtype") {
        o.insert("torch_dtype".into(), json!(dtype.torch_name()));
    }
    Ok(v)
}

/// `tokenizer.json` and `tokenizer_config.json` rebuilt from a GGUF's `tokenizer.ggml.*` metadata.
fn gguf_tokenizer_files(src: &ModelSource) -> Result<Vec<(&'static str, Vec<u8>)>> {
    let g = src
        .gguf()
        .ok_or_else(|| anyhow!("internal error: not a GGUF source"))?;
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
            serde_json::to_vec_pretty(&tok_json).context("serializing tokenizer.json")?,
        ),
        (
            "tokenizer_config.json",
            serde_json::to_vec_pretty(&Value::Object(tc))
                .context("serializing tokenizer_config.json")?,
        ),
    ])
}

/// Whether two paths name the same existing folder.
fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

/// Writes a small file atomically (temporary sibling, then rename).
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    tinytune_train::fsio::write_atomic(path, bytes).map_err(|e| anyhow!("cannot write {e}"))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644));
    }
    Ok(())
}

/// Renames a finished temporary file to `path` (mode 0644 on Unix).
pub fn persist(tmp: tempfile::NamedTempFile, path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o644))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let tmp_path = tmp.path().to_path_buf();
    tmp.persist(path).map_err(|e| {
        anyhow!(
            "cannot rename {} to {}: {}",
            tmp_path.display(),
            path.display(),
            e.error
        )
    })?;
    Ok(())
}
