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
mod plot;
mod quantize;
mod sweep;
mod train;

use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};

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
    /// Compare LoRA, prompt tuning and prefix tuning on your data: short trials over a small grid
    /// of each method's options, on the same train/eval split and seed, scheduled by successive
    /// halving; prints a table, names the best trial by eval loss and writes its adapter and the
    /// `tinytune train` command that reproduces it.
    ///
    /// The grid: LoRA rank {4, 16} x target modules {q_proj,v_proj; all-linear} x learning rate
    /// {2e-4, 1e-3}; prompt tuning init {random, text} x learning rate {3e-3, 3e-2}; prefix
    /// tuning {random init, text init, random init + projection} x learning rate {1e-3, 1e-2}
    /// (18 trials; text init:
    /// --prompt-tuning-init-text / --prefix-tuning-init-text, else "You are a helpful assistant.
    /// Answer the question."). A `train` option given on the command line fixes its dimension
    /// (--lora-r 8 sweeps rank 8 only; --learning-rate fixes every method's rate); the others
    /// keep train's defaults, except --eval-split (0.1: the ranking needs an eval split).
    ///
    /// The rule (successive halving, eta = 2): with n trials and a budget of B steps, rounds
    /// r = 0..R-1, R = max(1, ceil(log2 n)); round 0 runs all n trials, round r+1 the best
    /// ceil(n_r / 2) of round r (the last round has 2 trials). In round r each trial trains
    /// s_r = s_0 * 2^r steps from scratch (so it equals `tinytune train --num-steps s_r`), with
    /// s_0 = floor(B / sum_r n_r * 2^r). Best = lowest eval loss after the run; ties: fewer
    /// trainable parameters, then less peak device memory, then the earlier trial. The sweep's
    /// best is the best of the last round.
    ///
    /// OUTPUT_DIR gets sweep.json (every finished run; a rerun with the same settings resumes and
    /// reruns nothing recorded there), trials/<id>/ (metrics.jsonl, adapter), best/ (the best
    /// adapter in PEFT's layout, command.txt) and plots/.
    Sweep(Box<sweep::SweepArgs>),
    /// Draw SVG charts of a train run (loss, eval loss per set, learning rate, gradient norm
    /// against the step) or of a sweep (every trial's eval loss, a bar chart of the final table)
    /// into DIR/plots/.
    Plot(plot::PlotArgs),
}

/// The ids of the arguments given on the command line (not defaulted) of a subcommand: a sweep
/// lets a given `train` option fix that dimension of its grid.
fn given_ids(m: &ArgMatches) -> Vec<String> {
    m.ids()
        .filter(|id| m.value_source(id.as_str()) == Some(ValueSource::CommandLine))
        .map(|id| id.to_string())
        .collect()
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
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    let result = match &cli.command {
        Command::Info => info::run(cli.gpu.clone()),
        Command::Quantize(args) => quantize::run(args, cli.gpu.clone()),
        Command::Logits(args) => logits::run(args, cli.gpu.clone()),
        Command::Generate(args) => generate::run(args, cli.gpu.clone()),
        Command::Train(args) => train::run_train(args, cli.gpu.clone()),
        Command::Eval(args) => train::run_eval(args, cli.gpu.clone()),
        Command::Merge(args) => merge::run(args),
        Command::Sweep(args) => {
            let given = matches
                .subcommand_matches("sweep")
                .map(given_ids)
                .unwrap_or_default();
            sweep::run(args, &given, cli.gpu.clone())
        }
        Command::Plot(args) => plot::run(args),
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
