//! `tinytune generate`: text generation with a KV cache from a model (HF folder or GGUF), with or
//! without a PEFT adapter; the text streams to stdout as tokens arrive, the speed goes to stderr.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use tinytune_gpu::{Gpu, GpuOptions};
use tinytune_model::{LlamaModel, ModelSource, StopReason, TextStream};
use tinytune_train::{
    prompt_ids, AdapterGpu, GenOptions, GenerateSession, ModelTokenizer, PeftAdapter,
};

use crate::logits::QuantArg;

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// Model: a Hugging Face folder (config.json, *.safetensors, tokenizer.json), a .gguf file,
    /// or a Hub id ORG/NAME[@REVISION] (a local path of that name wins), downloaded into the
    /// Hugging Face cache (HF_HOME; HF_TOKEN, HF_ENDPOINT, HF_HUB_OFFLINE=1 apply) [required].
    #[arg(long, value_name = "PATH|ORG/NAME[@REV]")]
    pub model: PathBuf,
    /// With a Hub id as --model: use this .gguf file of the repo instead of its safetensors
    /// [default: config.json + safetensors].
    #[arg(long, value_name = "FILE")]
    pub gguf_file: Option<String>,
    /// Storage of the base model's linear layers.
    #[arg(long, value_enum, default_value_t = QuantArg::default())]
    pub quant: QuantArg,
    #[command(flatten)]
    pub blocks: tinytune_train::BlockOptions,
    /// PEFT adapter folder (adapter_config.json + adapter_model.safetensors; LoRA, prompt tuning
    /// or prefix tuning), e.g. the output of `tinytune train` [default: none, the base model
    /// alone].
    #[arg(long, value_name = "DIR")]
    pub adapter: Option<PathBuf>,
    /// The prompt (the user message of a chat unless --raw) [one of --prompt, --prompt-file or
    /// --ids is required].
    #[arg(long, conflicts_with_all = ["prompt_file", "ids"], required_unless_present_any = ["prompt_file", "ids"])]
    pub prompt: Option<String>,
    /// Read the prompt from a file (UTF-8) instead [one of --prompt, --prompt-file or --ids is
    /// required].
    #[arg(long, value_name = "FILE", conflicts_with = "ids")]
    pub prompt_file: Option<PathBuf>,
    /// Comma-separated prompt token ids, fed as-is (for models without a tokenizer; the output is
    /// then token ids too) [one of --prompt, --prompt-file or --ids is required].
    #[arg(long, value_delimiter = ',')]
    pub ids: Option<Vec<u32>>,
    #[command(flatten)]
    pub options: GenOptions,
}

pub fn run(args: &GenerateArgs, gpu_name: Option<String>) -> Result<()> {
    args.options.sampling().validate()?;
    let model_path = crate::hub::resolve_model(&args.model, args.gguf_file.as_deref())?.path;
    let src = ModelSource::open(&model_path)
        .with_context(|| format!("cannot open model {}", args.model.display()))?;
    let tok = src.tokenizer().ok();
    let ids = match (&args.ids, &args.prompt, &args.prompt_file) {
        (Some(ids), _, _) => ids.clone(),
        (None, p, f) => {
            let text = match (p, f) {
                (Some(p), _) => p.clone(),
                (None, Some(f)) => std::fs::read_to_string(f)
                    .with_context(|| format!("cannot read the prompt file {}", f.display()))?,
                (None, None) => bail!("give --prompt, --prompt-file or --ids"),
            };
            let tok = match &tok {
                Some(t) => t.clone(),
                None => {
                    let e = src
                        .tokenizer()
                        .err()
                        .map(|e| e.to_string())
                        .unwrap_or_default();
                    bail!(
                        "{} has no usable tokenizer ({e}); give the prompt as --ids",
                        args.model.display()
                    )
                }
            };
            let tok = if args.options.raw {
                ModelTokenizer {
                    tok,
                    template: None,
                }
            } else {
                ModelTokenizer::new(tok).context("cannot compile the model's chat template")?
            };
            prompt_ids(&tok, &text, &args.options).map_err(|e| anyhow!(e))?
        }
    };
    // Prompt- and prefix-tuning adapters put their virtual positions first: check the room for
    // them before opening the GPU.
    let adapter = match &args.adapter {
        Some(dir) => Some(
            PeftAdapter::load(dir)
                .with_context(|| format!("cannot load the adapter {}", dir.display()))?,
        ),
        None => None,
    };
    let virt = adapter.as_ref().map_or(0, PeftAdapter::virtual_tokens);
    tinytune_train::kv_length(src.config(), ids.len(), virt, &args.options)
        .map_err(|e| anyhow!(e))?;
    let blocks = crate::blocks::resolve(
        &src,
        &args.model,
        args.quant.quant(),
        &args.blocks,
        args.adapter.as_deref(),
        false,
    )?;
    let gpu = Gpu::new_blocking(GpuOptions {
        adapter_name: gpu_name,
        ..GpuOptions::default()
    })?;
    let opts = tinytune_model::LoadOptions {
        blocks,
        ..Default::default()
    };
    let model = LlamaModel::load_with(&gpu, &src, args.quant.quant(), &opts)
        .with_context(|| format!("cannot load {}", args.model.display()))?;
    let adapter_gpu = match (&adapter, &args.adapter) {
        (Some(a), Some(dir)) => Some(
            AdapterGpu::upload(&gpu, &model, a)
                .with_context(|| format!("cannot apply the adapter {}", dir.display()))?,
        ),
        _ => None,
    };
    let mut session = GenerateSession::new(
        &gpu,
        &model,
        tok.as_ref(),
        adapter_gpu.as_ref(),
        ids,
        &args.options,
    )
    .map_err(|e| anyhow!(e))?;
    // Text mode when the prompt was text; token ids otherwise.
    let mut stream = match (&args.ids, &tok) {
        (None, Some(t)) => Some(TextStream::new(t, true)),
        _ => None,
    };
    let mut out = std::io::stdout().lock();
    let mut write_err: Option<std::io::Error> = None;
    let mut ends_with_newline = true;
    let mut first_at: Option<Instant> = None;
    let mut last_at = Instant::now();
    let mut n_tokens = 0usize;
    let mut stream_err = None;
    let start = Instant::now();
    let gen = pollster::block_on(session.run(|t| {
        last_at = Instant::now();
        first_at.get_or_insert(last_at);
        n_tokens += 1;
        let piece = match stream.as_mut() {
            Some(s) => match s.push(t) {
                Ok(p) => p,
                Err(e) => {
                    stream_err = Some(e);
                    return false;
                }
            },
            None => format!("{}{t}", if n_tokens > 1 { "," } else { "" }),
        };
        if !piece.is_empty() {
            ends_with_newline = piece.ends_with('\n');
            if let Err(e) = out.write_all(piece.as_bytes()).and_then(|_| out.flush()) {
                write_err = Some(e);
                return false;
            }
        }
        true
    }))?;
    if let Some(e) = stream_err {
        return Err(e).context("cannot decode the generated tokens");
    }
    if let Some(e) = write_err {
        return Err(e).context("cannot write to stdout");
    }
    if let Some(s) = stream.as_mut() {
        let rest = s.finish()?;
        ends_with_newline = if rest.is_empty() {
            ends_with_newline
        } else {
            rest.ends_with('\n')
        };
        out.write_all(rest.as_bytes())?;
    }
    if !ends_with_newline || stream.is_none() {
        out.write_all(b"\n")?;
    }
    out.flush()?;
    drop(out);
    let stop = match gen.stop {
        StopReason::Eos => "end-of-sequence token",
        StopReason::MaxNewTokens => "--max-new-tokens",
        StopReason::MaxLength => "the length cap (max_position_embeddings or --max-length)",
        StopReason::Callback => "output closed",
    };
    let first = first_at.map_or(0.0, |f| (f - start).as_secs_f64());
    let decode = first_at.map_or(0.0, |f| (last_at - f).as_secs_f64());
    let rate = if n_tokens > 1 && decode > 0.0 {
        format!("{:.1} tokens/s", (n_tokens - 1) as f64 / decode)
    } else {
        "n/a tokens/s".into()
    };
    eprintln!(
        "{n_tokens} tokens, stopped by {stop}; prompt {} tokens -> first token in {first:.2} s, \
         then {rate} ({:?} base{})",
        session.prompt().len(),
        args.quant,
        if adapter.is_some() { " + adapter" } else { "" }
    );
    Ok(())
}
