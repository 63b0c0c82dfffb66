//! `tinytune logits`: run the model's forward pass on token ids (or a prompt) and write the f32
//! logits `[T, V]` to a safetensors file, for debugging and parity checks against transformers.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use tinytune_gpu::{Gpu, GpuOptions};
use tinytune_model::safetensors::{self, StDtype};
use tinytune_model::{LlamaModel, ModelSource};
use tinytune_train::{AdapterGpu, PeftAdapter};

/// Storage of the frozen base model's linear layers (the options table's `quant`).
pub use tinytune_train::QuantOption as QuantArg;

#[derive(Args, Debug)]
pub struct LogitsArgs {
    /// Model: a Hugging Face folder (config.json, *.safetensors, tokenizer.json), a .gguf file,
    /// or a Hub id ORG/NAME[@REVISION] (a local path of that name wins), downloaded into the
    /// Hugging Face cache (HF_HOME; HF_TOKEN, HF_ENDPOINT, HF_HUB_OFFLINE=1 apply) [required].
    #[arg(long, value_name = "PATH|ORG/NAME[@REV]")]
    pub model: PathBuf,
    /// With a Hub id as --model: use this .gguf file of the repo instead of its safetensors
    /// [default: config.json + safetensors].
    #[arg(long, value_name = "FILE")]
    pub gguf_file: Option<String>,
    /// PEFT adapter folder applied on top of the model: LoRA, prompt or prefix tuning (the logits
    /// of the real tokens, after the virtual ones) [default: none].
    #[arg(long, value_name = "DIR")]
    pub adapter: Option<PathBuf>,
    /// Storage of the base model's linear layers [default: nf4].
    #[arg(long, value_enum, default_value_t = QuantArg::default())]
    pub quant: QuantArg,
    #[command(flatten)]
    pub blocks: tinytune_train::BlockOptions,
    /// Comma-separated token ids, e.g. `--ids 1,2,3` [one of --ids or --prompt is required].
    #[arg(
        long,
        value_delimiter = ',',
        conflicts_with = "prompt",
        required_unless_present = "prompt"
    )]
    pub ids: Option<Vec<u32>>,
    /// Text to tokenize with the model's tokenizer (no special tokens added) [one of --ids or --prompt is required].
    #[arg(long)]
    pub prompt: Option<String>,
    /// Output safetensors file: `logits` F32 [T, V] and `input_ids` I32 [T]; written atomically
    /// [required].
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

pub fn run(args: &LogitsArgs, adapter: Option<String>) -> Result<()> {
    let model_path = crate::hub::resolve_model(&args.model, args.gguf_file.as_deref())?.path;
    let src = ModelSource::open(&model_path)
        .with_context(|| format!("cannot open model {}", args.model.display()))?;
    let ids = match (&args.ids, &args.prompt) {
        (Some(ids), _) => ids.clone(),
        (None, Some(p)) => src
            .tokenizer()
            .and_then(|t| t.encode(p, false))
            .with_context(|| format!("cannot tokenize the prompt with {}", args.model.display()))?,
        (None, None) => bail!("give --ids or --prompt"),
    };
    let v = src.config().vocab_size;
    if ids.is_empty() {
        bail!("no tokens to run");
    }
    if let Some(bad) = ids.iter().find(|&&i| i as usize >= v) {
        bail!(
            "token id {bad} is outside the vocabulary of {} ({v} tokens)",
            args.model.display()
        );
    }
    let blocks = crate::blocks::resolve(
        &src,
        &args.model,
        args.quant.quant(),
        &args.blocks,
        args.adapter.as_deref(),
        false,
    )?;
    let gpu = Gpu::new_blocking(GpuOptions {
        adapter_name: adapter,
        ..GpuOptions::default()
    })?;
    let opts = tinytune_model::LoadOptions {
        blocks,
        ..Default::default()
    };
    let model = LlamaModel::load_with(&gpu, &src, args.quant.quant(), &opts)
        .with_context(|| format!("cannot load {}", args.model.display()))?;
    let adapter = match &args.adapter {
        Some(dir) => {
            let a = PeftAdapter::load(dir)
                .with_context(|| format!("cannot load the adapter {}", dir.display()))?;
            Some(AdapterGpu::upload(&gpu, &model, &a)?)
        }
        None => None,
    };
    let peft = adapter.as_ref().map(AdapterGpu::peft);
    let logits = pollster::block_on(model.logits_with(&gpu, peft, &ids, 1, ids.len()))?;
    let t = ids.len();
    let ids_i32: Vec<i32> = ids.iter().map(|&i| i as i32).collect();
    let tensors = [
        (
            "input_ids",
            StDtype::I32,
            vec![t],
            bytemuck::cast_slice::<i32, u8>(&ids_i32),
        ),
        (
            "logits",
            StDtype::F32,
            vec![t, v],
            bytemuck::cast_slice::<f32, u8>(&logits),
        ),
    ];
    let bytes = safetensors::serialize(&tensors, None)?;
    let dir = match args.out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".logits.")
        .suffix(".tmp")
        .tempfile_in(&dir)
        .with_context(|| format!("cannot write to {}", dir.display()))?;
    std::io::Write::write_all(&mut tmp, &bytes)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    tmp.persist(&args.out)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    eprintln!(
        "{}: logits [{t}, {v}] of {} ({:?} base)",
        args.out.display(),
        args.model.display(),
        args.quant
    );
    // The most likely next tokens after the last position, decoded when the model has a tokenizer.
    let last = &logits[(t - 1) * v..];
    let mut order: Vec<usize> = (0..v).collect();
    order.sort_by(|&a, &b| last[b].total_cmp(&last[a]));
    let tok = src.tokenizer().ok();
    let shown: Vec<String> = order[..5.min(v)]
        .iter()
        .map(|&i| {
            match tok
                .as_ref()
                .and_then(|tk| tk.decode(&[i as u32], false).ok())
            {
                Some(text) => format!("{text:?} ({i}) {:.3}", last[i]),
                None => format!("{i} {:.3}", last[i]),
            }
        })
        .collect();
    eprintln!("top next tokens: {}", shown.join(", "));
    Ok(())
}
