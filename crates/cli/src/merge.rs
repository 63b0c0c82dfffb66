//! `tinytune merge`: folds a PEFT LoRA adapter into its base model and writes a plain Hugging Face
//! model folder (`config.json`, `model.safetensors`, tokenizer files) that transformers loads
//! without PEFT. The merge itself (`W + (B @ A) * scale`, the streamed safetensors layout, the
//! output config and GGUF tokenizer files) is `tinytune_train::merge`; this file parses the
//! arguments, writes each file to a temporary file inside OUT and renames it into place
//! (`config.json` last, so a folder with a `config.json` is complete), and prints the summary.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, ValueEnum};
use tinytune_model::source::COPIED_FILES;
use tinytune_model::{FloatDtype, ModelSource, SourceFormat};
use tinytune_train::merge::{adapted_weights, gguf_tokenizer_files, output_config, MergePlan};
use tinytune_train::{LoraAdapter, TrainError};

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
    fn float(self) -> FloatDtype {
        match self {
            OutDtype::F16 => FloatDtype::F16,
            OutDtype::Bf16 => FloatDtype::BF16,
            OutDtype::F32 => FloatDtype::F32,
        }
    }
}

/// Arguments of `tinytune merge`.
#[derive(Args, Debug)]
pub struct MergeArgs {
    /// Base model: a Hugging Face folder (config.json + model.safetensors or a sharded index), a
    /// .gguf file (llama / qwen2), or a Hub id ORG/NAME[@REVISION] downloaded into the Hugging Face
    /// cache (a local path of that name wins) [required].
    #[arg(long, value_name = "PATH|ORG/NAME[@REV]")]
    pub model: PathBuf,
    /// With a Hub id as --model: use this .gguf file of the repo instead of its safetensors
    /// [default: config.json + safetensors].
    #[arg(long, value_name = "FILE")]
    pub gguf_file: Option<String>,
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

/// Runs `tinytune merge`.
pub fn run(args: &MergeArgs) -> Result<()> {
    let resolved = crate::hub::resolve_model(&args.model, args.gguf_file.as_deref())?;
    let model_path = &resolved.path;
    let model = args.model.display().to_string();
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
    let adapter = LoraAdapter::load(&adapter_dir)
        .with_context(|| format!("cannot load adapter {}", args.adapter))?;
    let cfg = src.config();

    // Every adapted projection must exist in the model with the adapter's shape.
    let pairs = adapted_weights(&src, &adapter)
        .map_err(|e| anyhow!("adapter {} does not fit model {model}: {e}", args.adapter))?;

    std::fs::create_dir_all(out_dir).with_context(|| format!("cannot create folder {out}"))?;
    if same_dir(model_path, out_dir) {
        bail!("--output-dir {out} is the model folder itself; choose another folder");
    }

    let dtype = args.dtype.float();
    let plan = MergePlan::new(&src, &adapter, pairs, dtype)?;
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
        plan.write(&src, &model, &mut w, &st_name)
            .map_err(|e| match e {
                TrainError::Io { source, .. } => werr(source),
                e => e.into(),
            })?;
        w.flush().map_err(werr)?;
    }
    let f = tmp.as_file();
    let written = f.metadata().map_err(werr)?.len();
    let expect = plan.file_len();
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
                super::one_line(&format!("{:#}", anyhow::Error::from(e)))
            )),
        },
    }

    // config.json last: its presence marks a complete folder.
    let text = output_config(&src, model_path, dtype)?;
    write_file(&out_dir.join("config.json"), text.as_bytes())?;

    println!(
        "{out}: merged {} LoRA pair(s) (r {}, scale {}) into {model}; {} tensor(s) written as {} \
         ({} bytes){}",
        plan.pair_count(),
        adapter.config.r,
        adapter.config.scale(),
        plan.tensor_count(),
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
