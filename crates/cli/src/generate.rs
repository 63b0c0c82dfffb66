//! `tinytune generate`: text generation with a KV cache from a model (HF folder or GGUF), with or
//! without a PEFT adapter; the text streams to stdout as tokens arrive, the speed goes to stderr.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use tinytune_gpu::{Gpu, GpuOptions};
use tinytune_model::{
    stop_ids, GenerateOptions, KvDecoder, LlamaModel, ModelSource, SamplingParams, StopReason,
    TextStream, Tokenizer,
};
use tinytune_train::{AdapterGpu, ChatMessage, ChatTemplate, PeftAdapter};

use crate::logits::QuantArg;

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// Model: a Hugging Face folder (config.json, *.safetensors, tokenizer.json) or a .gguf file
    /// [required].
    #[arg(long, value_name = "PATH")]
    pub model: PathBuf,
    /// Storage of the base model's linear layers [default: nf4].
    #[arg(long, value_enum, default_value_t = QuantArg::Nf4)]
    pub quant: QuantArg,
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
    /// System message of the chat [default: none, the template's own default if it has one].
    #[arg(long, value_name = "TEXT", conflicts_with = "raw")]
    pub system: Option<String>,
    /// Tokenize the prompt as-is (with the tokenizer's BOS if it adds one) instead of rendering
    /// it as a user message with the model's chat template and the generation prompt [default:
    /// the chat template when the tokenizer has one].
    #[arg(long)]
    pub raw: bool,
    /// Most tokens to generate (generation also stops at an end-of-sequence token).
    #[arg(long, default_value_t = 128, value_name = "N")]
    pub max_new_tokens: usize,
    /// Sampling temperature; 0 picks the most likely token (greedy).
    #[arg(long, default_value_t = 0.0, value_name = "T")]
    pub temperature: f32,
    /// Sample from the K most likely tokens only; 0 = off (ignored when greedy).
    #[arg(long, default_value_t = 0, value_name = "K")]
    pub top_k: usize,
    /// Nucleus sampling: the smallest set of most likely tokens whose probabilities sum to at
    /// least P; 1.0 = off (ignored when greedy).
    #[arg(long, default_value_t = 1.0, value_name = "P")]
    pub top_p: f32,
    /// Repetition penalty over the prompt and the generated tokens (transformers' semantics:
    /// a seen token's logit is divided by it if positive, multiplied if negative); 1.0 = off.
    #[arg(long, default_value_t = 1.0, value_name = "R")]
    pub repetition_penalty: f32,
    /// Seed of the sampling RNG (the same seed and settings give the same text).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Cap on prompt + generated tokens (the KV cache's size) [default: the model's
    /// max_position_embeddings].
    #[arg(long, value_name = "N")]
    pub max_length: Option<usize>,
}

/// Renders `prompt` as a user message with the tokenizer's chat template (generation prompt on).
fn render_chat(
    tok: &Tokenizer,
    template: &str,
    system: Option<&str>,
    prompt: &str,
) -> Result<String> {
    let name = |id: Option<u32>| id.and_then(|i| tok.id_to_token(i)).unwrap_or_default();
    let t = ChatTemplate::new(template, &name(tok.bos_id()), &name(tok.eos_id()))
        .context("cannot compile the model's chat template")?;
    let mut msgs = Vec::new();
    if let Some(s) = system {
        msgs.push(ChatMessage::new("system", s));
    }
    msgs.push(ChatMessage::new("user", prompt));
    t.render(&msgs, true)
        .context("cannot render the prompt with the model's chat template")
}

pub fn run(args: &GenerateArgs, gpu_name: Option<String>) -> Result<()> {
    let sampling = SamplingParams {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        repetition_penalty: args.repetition_penalty,
        seed: args.seed,
    };
    sampling.validate()?;
    let src = ModelSource::open(&args.model)
        .with_context(|| format!("cannot open model {}", args.model.display()))?;
    let cfg = src.config().clone();
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
                Some(t) => t,
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
            match (args.raw, tok.chat_template()) {
                (false, Some(template)) => {
                    let rendered = render_chat(tok, template, args.system.as_deref(), &text)?;
                    // The template writes the special tokens itself (transformers'
                    // apply_chat_template tokenizes without adding any).
                    tok.encode(&rendered, false)?
                }
                _ => {
                    if !args.raw && args.system.is_some() {
                        bail!("--system needs a chat template, and the tokenizer has none");
                    }
                    tok.encode(&text, true)?
                }
            }
        }
    };
    if ids.is_empty() {
        bail!("the prompt has no tokens");
    }
    let cap = match args.max_length {
        Some(0) => bail!("--max-length must be positive"),
        Some(n) if n > cfg.max_position_embeddings => bail!(
            "--max-length {n} exceeds the model's max_position_embeddings ({})",
            cfg.max_position_embeddings
        ),
        Some(n) => n,
        None => cfg.max_position_embeddings,
    };
    if ids.len() >= cap {
        bail!(
            "the prompt has {} tokens: no room to generate within the {cap} tokens in all that \
             the model's max_position_embeddings (or --max-length) allows",
            ids.len()
        );
    }
    // Prompt- and prefix-tuning adapters put their virtual positions first.
    let adapter = match &args.adapter {
        Some(dir) => Some(
            PeftAdapter::load(dir)
                .with_context(|| format!("cannot load the adapter {}", dir.display()))?,
        ),
        None => None,
    };
    let virt = adapter.as_ref().map_or(0, PeftAdapter::virtual_tokens);
    if ids.len() + virt >= cap {
        bail!(
            "the prompt's {} tokens and the adapter's {virt} virtual tokens leave no room to generate within {cap}",
            ids.len()
        );
    }
    let max_len = (virt + ids.len() + args.max_new_tokens).min(cap);
    let gpu = Gpu::new_blocking(GpuOptions {
        adapter_name: gpu_name,
    })?;
    let model = LlamaModel::load(&gpu, &src, args.quant.quant())
        .with_context(|| format!("cannot load {}", args.model.display()))?;
    let adapter_gpu = match (&adapter, &args.adapter) {
        (Some(a), Some(dir)) => Some(
            AdapterGpu::upload(&gpu, &model, a)
                .with_context(|| format!("cannot apply the adapter {}", dir.display()))?,
        ),
        _ => None,
    };
    let lora = adapter_gpu.as_ref().and_then(AdapterGpu::lora);
    let mut dec = KvDecoder::new(&gpu, &model, lora, max_len)?;
    match &adapter_gpu {
        Some(AdapterGpu::Prompt(pg)) => dec = dec.with_prompt(pg)?,
        Some(AdapterGpu::Prefix(pf)) => dec = dec.with_prefix(pf)?,
        _ => {}
    }
    let opts = GenerateOptions {
        max_new_tokens: args.max_new_tokens,
        sampling,
        stop_ids: stop_ids(&model, tok.as_ref()),
    };
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
    let gen = pollster::block_on(dec.generate(&ids, &opts, |t| {
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
        ids.len(),
        args.quant,
        if adapter.is_some() { " + adapter" } else { "" }
    );
    Ok(())
}
