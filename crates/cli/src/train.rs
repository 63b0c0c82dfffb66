//! `tinytune train` and `tinytune eval`: LoRA / QLoRA fine-tuning of a model folder or GGUF on
//! `.txt` / `.jsonl` data, and the loss of a model (+ adapter) on a dataset.
//!
//! Output directory (`--output-dir`): the final adapter in PEFT's layout (`adapter_config.json`,
//! `adapter_model.safetensors`) at its top, `metrics.jsonl` (one JSON line per step), and
//! `checkpoint-<step>/` folders (adapter + optimizer state + trainer state + config) that
//! `--resume` continues from with the same data order.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use tinytune_gpu::{Gpu, GpuOptions};
use tinytune_model::{LlamaModel, ModelSource, PrefixGpu};
use tinytune_train::data::{DataConfig, EvalSplit, Stop, TextSplit};
use tinytune_train::metrics::MetricsWriter;
use tinytune_train::{
    eval_split_from, evaluate, parse_layers_to_transform, parse_target_modules, AdamWConfig,
    AdapterGpu, Checkpoint, Dataset, LoraHyper, ModelTokenizer, PeftAdapter, PeftMethod,
    PrefixStart, PromptStart, ScheduleKind, Start, TrainConfig, Trainer, VirtualInit,
};

use crate::logits::QuantArg;

/// How `.txt` files are split into documents.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TextSplitArg {
    /// The whole file is one document (packed into --seq-len blocks).
    Document,
    /// Every non-blank line is a document.
    Lines,
    /// Blank-line separated paragraphs are documents.
    Paragraphs,
}

impl TextSplitArg {
    fn get(self) -> TextSplit {
        match self {
            TextSplitArg::Document => TextSplit::Document,
            TextSplitArg::Lines => TextSplit::Lines,
            TextSplitArg::Paragraphs => TextSplit::Paragraphs,
        }
    }
}

/// The PEFT method `train` trains.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PeftArg {
    /// LoRA adapters on the linear layers.
    Lora,
    /// Trainable virtual token embeddings (PEFT PROMPT_TUNING).
    PromptTuning,
    /// Trainable per-layer key/value prefixes (PEFT PREFIX_TUNING).
    PrefixTuning,
}

impl PeftArg {
    fn method(self) -> PeftMethod {
        match self {
            PeftArg::Lora => PeftMethod::Lora,
            PeftArg::PromptTuning => PeftMethod::PromptTuning,
            PeftArg::PrefixTuning => PeftMethod::PrefixTuning,
        }
    }
}

/// Prompt and prefix tuning's initialisation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PromptInitArg {
    /// N(0, 1).
    Random,
    /// From the init text: its embeddings (prompt tuning), or the keys and values of every layer
    /// on it (prefix tuning).
    Text,
}

/// Model and data options shared by `train` and `eval`.
#[derive(Args, Debug)]
pub struct DataArgs {
    /// Model: a Hugging Face folder (config.json, *.safetensors, tokenizer.json) or a .gguf file
    /// [required].
    #[arg(long, value_name = "PATH")]
    pub model: PathBuf,
    /// Storage of the frozen base's linear layers: nf4 = QLoRA (bitsandbytes NF4, block 64,
    /// double quant), none = f32 [default: nf4].
    #[arg(long, value_enum, default_value_t = QuantArg::Nf4)]
    pub quant: QuantArg,
    /// Dataset file(s), repeatable: .txt (plain text), or .jsonl with {"text"},
    /// {"prompt","completion"} or {"messages":[{"role","content"}...]} records (chat records go
    /// through the model's chat template; only assistant tokens carry loss) [required].
    #[arg(long, value_name = "FILE", required = true)]
    pub data: Vec<PathBuf>,
    /// Tokens per example: longer records are truncated, text is packed into blocks of this size
    /// [default: 512].
    #[arg(long, default_value_t = 512)]
    pub seq_len: usize,
    /// How .txt files are split into documents [default: document].
    #[arg(long, value_enum, default_value_t = TextSplitArg::Document)]
    pub text_split: TextSplitArg,
    /// Rows per micro-batch [default: 4].
    #[arg(long, default_value_t = 4)]
    pub batch_size: usize,
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// Where the adapter, metrics.jsonl and checkpoint-<step>/ folders go [default: tinytune-out].
    #[arg(long, value_name = "DIR", default_value = "tinytune-out")]
    pub output_dir: PathBuf,
    /// Start from this PEFT adapter's weights (and its r / alpha / targets) instead of a fresh init
    /// [default: none, PEFT's init seeded by --seed].
    #[arg(long, value_name = "DIR", conflicts_with = "resume")]
    pub adapter: Option<PathBuf>,
    /// Continue a run from a checkpoint folder, or with no value (or `latest`) from the newest
    /// OUTPUT_DIR/checkpoint-<step>; the run's saved settings are used (same data needed)
    /// [default: off, a new run].
    #[arg(long, value_name = "CKPT", num_args = 0..=1, default_missing_value = "latest")]
    pub resume: Option<PathBuf>,
    /// What to train: lora (LoRA adapters; QLoRA with --quant nf4), prompt-tuning (PEFT's
    /// PROMPT_TUNING: --num-virtual-tokens trainable embeddings prepended to every sequence) or
    /// prefix-tuning (PEFT's PREFIX_TUNING: --num-virtual-tokens trainable key/value rows in front
    /// of every layer's attention) [default: lora].
    #[arg(long, value_enum, default_value_t = PeftArg::Lora)]
    pub peft: PeftArg,
    /// Prompt and prefix tuning: number of virtual tokens [default: 20].
    #[arg(long, default_value_t = 20)]
    pub num_virtual_tokens: usize,
    /// Prompt tuning: initialise the virtual tokens from N(0, 1) (random) or from the embeddings of
    /// --prompt-tuning-init-text (text), as PEFT does [default: random].
    #[arg(long, value_enum, default_value_t = PromptInitArg::Random)]
    pub prompt_tuning_init: PromptInitArg,
    /// Prompt tuning: the init text for --prompt-tuning-init text [default: none].
    #[arg(long, value_name = "TEXT")]
    pub prompt_tuning_init_text: Option<String>,
    /// Prefix tuning: initialise the prefixes from N(0, 1) (random, PEFT's init; the model starts
    /// far from the base model's behaviour) or from the keys and values every layer computes for
    /// --prefix-tuning-init-text (text: training starts as if that text were in context)
    /// [default: random].
    #[arg(long, value_enum, default_value_t = PromptInitArg::Random)]
    pub prefix_tuning_init: PromptInitArg,
    /// Prefix tuning: the init text for --prefix-tuning-init text [default: none].
    #[arg(long, value_name = "TEXT")]
    pub prefix_tuning_init_text: Option<String>,
    /// Prefix tuning: train the prefixes through PEFT's reparameterisation MLP
    /// (prefix_projection=True: embeddings -> Linear -> tanh -> Linear); the saved adapter holds
    /// the folded prefix, the checkpoints the MLP [default: off].
    #[arg(long)]
    pub prefix_projection: bool,
    /// Prefix tuning with --prefix-projection: the MLP's hidden size (PEFT's
    /// encoder_hidden_size) [default: the key/value width, num_key_value_heads * head_dim].
    #[arg(long, value_name = "N")]
    pub encoder_hidden_size: Option<usize>,
    /// LoRA rank [default: 8].
    #[arg(long, default_value_t = 8)]
    pub lora_r: usize,
    /// LoRA alpha; the update is scaled by alpha / r (alpha / sqrt(r) with --use-rslora)
    /// [default: 16].
    #[arg(long, default_value_t = 16.0)]
    pub lora_alpha: f64,
    /// LoRA dropout on each adapter's input during training (PEFT's lora_dropout) [default: 0].
    #[arg(long, default_value_t = 0.0)]
    pub lora_dropout: f64,
    /// Modules to adapt, PEFT names separated by commas, or all-linear
    /// [default: all-linear = q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj].
    #[arg(long, value_delimiter = ',', default_value = "all-linear")]
    pub target_modules: Vec<String>,
    /// Adapt only these layers (PEFT's layers_to_transform): comma-separated indices, or a range
    /// like 20-29, or top:N for the last N layers. The backward pass stops at the lowest adapted
    /// layer, so adapting only the top layers is faster [default: every layer].
    #[arg(long, value_name = "LAYERS")]
    pub layers_to_transform: Option<String>,
    /// rsLoRA scaling alpha / sqrt(r) [default: off].
    #[arg(long)]
    pub use_rslora: bool,
    /// Peak learning rate [default: 2e-4].
    #[arg(long, default_value_t = 2e-4)]
    pub learning_rate: f64,
    /// LR schedule after warmup: linear, cosine or constant [default: linear].
    #[arg(long, default_value = "linear")]
    pub lr_scheduler: String,
    /// Linear warmup steps [default: 0].
    #[arg(long, default_value_t = 0, conflicts_with = "warmup_ratio")]
    pub warmup_steps: u64,
    /// Warmup as a fraction of the total steps (like transformers' warmup_ratio) [default: unset].
    #[arg(long)]
    pub warmup_ratio: Option<f64>,
    /// Number of optimizer steps [default: unset; --epochs decides].
    #[arg(long, conflicts_with = "epochs")]
    pub num_steps: Option<u64>,
    /// Passes over the training set [default: 1].
    #[arg(long)]
    pub epochs: Option<u64>,
    /// Micro-batches per optimizer step (gradient accumulation) [default: 1].
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    /// Clip the global gradient norm to this (0: off) [default: 1.0].
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f64,
    /// Recompute each layer's activations during the backward pass instead of storing them all:
    /// activation memory of one layer instead of every layer, for about one more forward pass of
    /// compute (transformers' gradient_checkpointing) [default: off].
    #[arg(long)]
    pub gradient_checkpointing: bool,
    /// AdamW weight decay [default: 0].
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    /// Held-out eval set: a fraction in (0, 1) or a count of examples; 0 = none [default: 0].
    #[arg(long, default_value = "0")]
    pub eval_split: String,
    /// Evaluate every N steps (0: only at the end) [default: 0].
    #[arg(long, default_value_t = 0)]
    pub eval_every: u64,
    /// Save a checkpoint every N steps (0: only at the end) [default: 0].
    #[arg(long, default_value_t = 0)]
    pub save_every: u64,
    /// Seed of the LoRA init, the data order and the eval split [default: 42].
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Print one line per step instead of a progress bar [default: a bar on a terminal].
    #[arg(long)]
    pub log_steps: bool,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// PEFT adapter folder to evaluate on top of the model [default: the base model alone].
    #[arg(long, value_name = "DIR")]
    pub adapter: Option<PathBuf>,
}

fn parse_eval_split(s: &str) -> Result<EvalSplit> {
    let v: f64 = s
        .parse()
        .with_context(|| format!("--eval-split {s:?}: expected a fraction or a count"))?;
    Ok(eval_split_from(v)?)
}

/// Opens the model, its tokenizer and the datasets.
fn load_data(args: &DataArgs) -> Result<(ModelSource, Dataset)> {
    let src = ModelSource::open(&args.model)
        .with_context(|| format!("cannot open model {}", args.model.display()))?;
    let tok = src
        .tokenizer()
        .with_context(|| format!("{} has no usable tokenizer", args.model.display()))?;
    let tok = ModelTokenizer::new(tok)?;
    if args.seq_len < 2 {
        bail!("--seq-len must be at least 2");
    }
    let cfg = DataConfig {
        seq_len: args.seq_len,
        text_split: args.text_split.get(),
    };
    let mut data: Option<Dataset> = None;
    for path in &args.data {
        let d = Dataset::load(path, &tok, &cfg)?;
        match &mut data {
            Some(all) => all.extend(d)?,
            None => data = Some(d),
        }
    }
    let data = data.context("no --data files")?;
    if data.examples.is_empty() {
        bail!("the datasets hold no examples");
    }
    Ok((src, data))
}

fn open_gpu(gpu_name: Option<String>) -> Result<Gpu> {
    Ok(Gpu::new_blocking(GpuOptions {
        adapter_name: gpu_name,
    })?)
}

fn load_model(gpu: &Gpu, src: &ModelSource, path: &Path, quant: QuantArg) -> Result<LlamaModel> {
    let t = Instant::now();
    let model = LlamaModel::load(gpu, src, quant.quant())
        .with_context(|| format!("cannot load {}", path.display()))?;
    eprintln!(
        "model: {} ({} layers, hidden {}, vocab {}), {:?} base, loaded in {:.1}s",
        path.display(),
        model.config.num_hidden_layers,
        model.config.hidden_size,
        model.config.vocab_size,
        quant,
        t.elapsed().as_secs_f64()
    );
    Ok(model)
}

/// The newest `checkpoint-<step>` folder in `dir`.
fn newest_checkpoint(dir: &Path) -> Result<PathBuf> {
    let mut best: Option<(u64, PathBuf)> = None;
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("--resume: cannot read {}", dir.display()))?;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if let Some(step) = name
            .strip_prefix("checkpoint-")
            .and_then(|s| s.parse::<u64>().ok())
        {
            if best.as_ref().is_none_or(|(b, _)| step > *b) {
                best = Some((step, e.path()));
            }
        }
    }
    best.map(|(_, p)| p)
        .with_context(|| format!("--resume: no checkpoint-<step> folder in {}", dir.display()))
}

pub fn run_train(args: &TrainArgs, gpu_name: Option<String>) -> Result<()> {
    let (src, data) = load_data(&args.data)?;
    let stats = &data.stats;
    eprintln!(
        "data: {} records -> {} examples of <= {} tokens ({} tokens, {} with loss; {} truncated, {} dropped)",
        stats.records,
        stats.examples,
        data.seq_len,
        stats.tokens,
        stats.targets,
        stats.truncated,
        stats.dropped
    );
    let stop = match (args.num_steps, args.epochs) {
        (Some(s), _) => Stop::Steps(s),
        (None, Some(e)) => Stop::Epochs(e),
        (None, None) => Stop::Epochs(1),
    };
    let mut config = TrainConfig {
        base_model: args.data.model.display().to_string(),
        data: args
            .data
            .data
            .iter()
            .map(|p| p.display().to_string())
            .collect(),
        seq_len: args.data.seq_len,
        text_split: args.data.text_split.get(),
        batch_size: args.data.batch_size,
        grad_accum: args.grad_accum,
        stop,
        eval_split: parse_eval_split(&args.eval_split)?,
        eval_every: args.eval_every,
        save_every: args.save_every,
        seed: args.seed,
        lr: args.learning_rate,
        schedule: ScheduleKind::parse(&args.lr_scheduler)?,
        warmup_steps: args.warmup_steps,
        max_grad_norm: args.max_grad_norm,
        gradient_checkpointing: args.gradient_checkpointing,
        adamw: AdamWConfig {
            weight_decay: args.weight_decay,
            ..AdamWConfig::default()
        },
        lora: LoraHyper {
            r: args.lora_r,
            alpha: args.lora_alpha,
            dropout: args.lora_dropout,
            targets: parse_target_modules(&args.target_modules)?,
            use_rslora: args.use_rslora,
            layers_to_transform: match &args.layers_to_transform {
                Some(spec) => Some(parse_layers_to_transform(
                    spec,
                    src.config().num_hidden_layers,
                )?),
                None => None,
            },
        },
    };
    let start = match (&args.resume, &args.adapter) {
        (Some(p), _) => {
            let dir = if p.as_os_str() == "latest" && !p.exists() {
                newest_checkpoint(&args.output_dir)?
            } else {
                p.clone()
            };
            let ck = Checkpoint::load(&dir)?;
            eprintln!(
                "resuming from {} (step {} of {})",
                dir.display(),
                ck.state.global_step,
                ck.state.total_steps
            );
            // The run's own settings win over the command line's, so that it continues unchanged.
            config = ck.config.clone();
            Start::Resume(Box::new(ck))
        }
        (None, Some(a)) => match PeftAdapter::load(a)? {
            PeftAdapter::Lora(ad) if args.peft == PeftArg::Lora => Start::Adapter(ad),
            PeftAdapter::Prompt(ad) if args.peft == PeftArg::PromptTuning => {
                Start::Prompt(PromptStart::Adapter(ad))
            }
            PeftAdapter::Prefix(ad) if args.peft == PeftArg::PrefixTuning => {
                Start::Prefix(PrefixStart::Adapter(ad))
            }
            other => bail!(
                "--adapter {} is a {} adapter: pass --peft {}",
                a.display(),
                other.method().name(),
                other.method().name()
            ),
        },
        (None, None) => {
            let init = |kind: PromptInitArg, text: &Option<String>| match kind {
                PromptInitArg::Random => VirtualInit::Random,
                PromptInitArg::Text => VirtualInit::Text(text.clone()),
            };
            let tok = || src.tokenizer().map_err(|e| e.to_string());
            Start::fresh(
                args.peft.method(),
                args.num_virtual_tokens,
                &init(args.prompt_tuning_init, &args.prompt_tuning_init_text),
                &init(args.prefix_tuning_init, &args.prefix_tuning_init_text),
                args.prefix_projection.then_some(args.encoder_hidden_size),
                |t| tok()?.encode(t, false).map_err(|e| e.to_string()),
            )?
        }
    };
    if let Some(r) = args.warmup_ratio {
        if !(0.0..1.0).contains(&r) {
            bail!("--warmup-ratio must be in [0, 1)");
        }
    }
    let gpu = open_gpu(gpu_name)?;
    let model = load_model(&gpu, &src, &args.data.model, args.data.quant)?;
    let model_bytes = gpu.memory().live_bytes;
    // The peak of the run itself, not of quantizing the model at load.
    gpu.reset_peak_memory();
    let clock_start = Instant::now();
    let clock = Box::new(move || clock_start.elapsed().as_secs_f64());
    let mut trainer = Trainer::new(&gpu, &model, config, data, start, clock)?;
    if let (Some(r), None) = (args.warmup_ratio, &args.resume) {
        // transformers: warmup_steps = ceil(warmup_ratio * max_steps).
        trainer.set_warmup_steps((r * trainer.total_steps() as f64).ceil() as u64)?;
    }
    let (n_train, n_eval) = trainer.n_examples();
    let c = &trainer.config;
    let what = if trainer.method() == PeftMethod::PromptTuning {
        format!(
            "{} prompt-tuning parameters ({} virtual tokens)",
            trainer.n_params(),
            trainer.virtual_tokens()
        )
    } else if trainer.method() == PeftMethod::PrefixTuning {
        let cfg = &model.config;
        let p = trainer.virtual_tokens();
        let projected = trainer.n_params() != p * PrefixGpu::row_len(cfg);
        format!(
            "{} prefix-tuning parameters ({p} virtual tokens x {} layers x key+value{})",
            trainer.n_params(),
            cfg.num_hidden_layers,
            if projected {
                ", through the projection MLP"
            } else {
                ""
            }
        )
    } else {
        format!(
            "{} LoRA parameters (r {}, alpha {}, {})",
            trainer.n_params(),
            c.lora.r,
            c.lora.alpha,
            c.lora
                .targets
                .iter()
                .map(|m| m.name())
                .collect::<Vec<_>>()
                .join(",")
        )
    };
    eprintln!(
        "training: {what}, {n_train} train / {n_eval} eval examples, \
         {} steps of {} x {} rows, lr {} ({:?}, warmup {})",
        trainer.total_steps(),
        c.grad_accum,
        c.batch_size,
        c.lr,
        c.schedule,
        c.warmup_steps
    );
    std::fs::create_dir_all(&args.output_dir)
        .with_context(|| format!("cannot create {}", args.output_dir.display()))?;
    let resumed_at = (trainer.state.global_step > 0).then_some(trainer.state.global_step);
    let mut metrics = MetricsWriter::open(&args.output_dir.join("metrics.jsonl"), resumed_at)?;

    if n_eval > 0 && trainer.state.global_step == 0 {
        if let Some(l) = pollster::block_on(trainer.evaluate())? {
            eprintln!("eval before training: loss {l:.4} ppl {:.2}", l.exp());
        }
    }
    let total = trainer.total_steps();
    let bar = if std::io::stderr().is_terminal() && !args.log_steps {
        let b = ProgressBar::new(total);
        b.set_style(
            ProgressStyle::with_template(
                "{bar:30.cyan/blue} {pos}/{len} steps [{elapsed_precise}<{eta_precise}] {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b.set_position(trainer.state.global_step);
        Some(b)
    } else {
        None
    };
    let (eval_every, save_every) = (trainer.config.eval_every, trainer.config.save_every);
    while let Some(mut rec) = pollster::block_on(trainer.step())? {
        let step = rec.step;
        let last = step == total;
        if n_eval > 0 && ((eval_every > 0 && step % eval_every == 0) || last) {
            if let Some(l) = pollster::block_on(trainer.evaluate())? {
                rec = rec.with_eval(l);
            }
        }
        metrics.write(&rec)?;
        let eval = rec
            .eval_loss
            .map(|l| format!(" eval_loss {l:.4} ppl {:.2}", l.exp()))
            .unwrap_or_default();
        let line = format!(
            "loss {:.4} lr {:.2e} grad_norm {:.3} {:.0} tok/s{eval}",
            rec.loss, rec.lr, rec.grad_norm, rec.tokens_per_s
        );
        match &bar {
            Some(b) => {
                b.set_position(step);
                b.set_message(line);
                if rec.eval_loss.is_some() {
                    b.println(format!("step {step}/{total}: {}", b.message()));
                }
            }
            None => eprintln!("step {step}/{total}: {line}"),
        }
        if (save_every > 0 && step % save_every == 0) || last {
            let dir = args.output_dir.join(format!("checkpoint-{step}"));
            pollster::block_on(trainer.checkpoint())?.save(&dir)?;
        }
    }
    if let Some(b) = bar {
        b.finish();
    }
    pollster::block_on(trainer.peft_adapter())?.save(&args.output_dir)?;
    eprintln!(
        "saved the adapter (PEFT layout) to {} after {} steps, {:.1}s of training ({} tokens)",
        args.output_dir.display(),
        trainer.state.global_step,
        trainer.state.elapsed_s,
        trainer.state.tokens_seen
    );
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    eprintln!(
        "device memory: {:.1} MiB peak in tinytune's buffers ({:.1} MiB the frozen model, {:.1} MiB \
         training: activations, adapter, optimizer state)",
        mib(gpu.memory().peak_bytes),
        mib(model_bytes),
        mib(gpu.memory().peak_bytes.saturating_sub(model_bytes))
    );
    Ok(())
}

pub fn run_eval(args: &EvalArgs, gpu_name: Option<String>) -> Result<()> {
    let (src, data) = load_data(&args.data)?;
    let gpu = open_gpu(gpu_name)?;
    let model = load_model(&gpu, &src, &args.data.model, args.data.quant)?;
    let adapter = match &args.adapter {
        Some(dir) => {
            let a = PeftAdapter::load(dir)
                .with_context(|| format!("cannot load the adapter {}", dir.display()))?;
            Some(AdapterGpu::upload(&gpu, &model, &a)?)
        }
        None => None,
    };
    let t = Instant::now();
    let (loss, n) = pollster::block_on(evaluate(
        &gpu,
        &model,
        adapter.as_ref(),
        &data,
        args.data.batch_size,
    ))?;
    println!(
        "{{\"eval_loss\": {loss:.6}, \"eval_ppl\": {:.4}, \"targets\": {n}, \"examples\": {}}}",
        loss.exp(),
        data.examples.len()
    );
    eprintln!(
        "eval: loss {loss:.4}, perplexity {:.2} over {n} target tokens ({:.1}s)",
        loss.exp(),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}
