//! `tinytune`: the command-line tool of tinytune (QLoRA fine-tuning on WebGPU).
//!
//! Errors print as one line `error: <message>` on stderr and exit with status 1.

mod blocks;
mod generate;
mod hub;
mod info;
mod lock;
mod logits;
mod merge;
mod quantize;
mod train;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "tinytune", version, about)]
struct Cli {
    /// Use the GPU adapter whose name contains NAME (case-insensitive)
    /// [default: $WGPU_ADAPTER_NAME, else the high-performance adapter wgpu picks;
    /// WGPU_BACKEND restricts the backends, e.g. WGPU_BACKEND=vulkan].
    #[arg(long, global = true, value_name = "NAME")]
    gpu: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List the GPU adapters, the chosen one, its backend, enabled features and key limits.
    Info,
    /// Quantize the 2-D float tensors of a safetensors file to NF4 on the GPU.
    ///
    /// Each quantized tensor NAME is written in the layout transformers saves for bitsandbytes
    /// (`QuantState.as_dict(packed=True)`): NAME (packed codes), NAME.absmax, NAME.quant_map,
    /// with double quantization NAME.nested_absmax and NAME.nested_quant_map, and
    /// NAME.quant_state.bitsandbytes__nf4 (the JSON of the other fields). Other tensors and the
    /// file's __metadata__ are copied unchanged.
    ///
    /// Given a model folder (IN) and an output folder (OUT), writes a pre-quantized checkpoint that
    /// transformers loads with bitsandbytes: the decoder's linear layers as NF4 with double
    /// quantization, every other tensor kept, and config.json with transformers'
    /// quantization_config; tokenizer files are copied.
    Quantize(quantize::QuantizeArgs),
    /// Run the forward pass of a model (HF folder or GGUF) on token ids or a prompt and write the
    /// f32 logits [T, V] to a safetensors file (for debugging and parity checks).
    Logits(logits::LogitsArgs),
    /// Generate text after a prompt with a KV cache (greedy or sampled), optionally with a PEFT
    /// LoRA adapter, streaming it to stdout; the speed goes to stderr.
    Generate(generate::GenerateArgs),
    /// Fine-tune LoRA adapters (QLoRA with the default --quant nf4) on .txt / .jsonl data; writes
    /// a PEFT adapter, metrics.jsonl and resumable checkpoints to --output-dir.
    Train(Box<train::TrainArgs>),
    /// Loss and perplexity of a model (+ optional PEFT adapter) on .txt / .jsonl data.
    Eval(train::EvalArgs),
    /// Merge a PEFT LoRA adapter into its base model (HF folder or GGUF) and write a Hugging Face
    /// model folder (config.json, model.safetensors, tokenizer files) that loads without PEFT.
    Merge(merge::MergeArgs),
}

fn main() -> ExitCode {
    // A bug must still end as one readable line, not a backtrace.
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".into());
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!("error: internal error: {}{at}", one_line(&msg));
    }));
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Info => info::run(cli.gpu.clone()),
        Command::Quantize(args) => quantize::run(args, cli.gpu.clone()),
        Command::Logits(args) => logits::run(args, cli.gpu.clone()),
        Command::Generate(args) => generate::run(args, cli.gpu.clone()),
        Command::Train(args) => train::run_train(args, cli.gpu.clone()),
        Command::Eval(args) => train::run_eval(args, cli.gpu.clone()),
        Command::Merge(args) => merge::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}

/// Joins a possibly multi-line message (wgpu validation errors span lines) into one line.
fn one_line(msg: &str) -> String {
    msg.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}
