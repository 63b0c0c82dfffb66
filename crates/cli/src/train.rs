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

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use tinytune_gpu::{Gpu, GpuOptions};
use tinytune_model::{BlockPlan, LlamaModel, LoadOptions, ModelSource, PrefixGpu};
use tinytune_train::data::{Columns, DataConfig, TextSplit};
use tinytune_train::metrics::MetricsWriter;
use tinytune_train::MetricsRecord;
use tinytune_train::{
    evaluate, parse_eval_data_arg, plan_run, AdapterGpu, BlockOptions, Checkpoint, Dataset,
    ModelTokenizer, PeftAdapter, PeftMethod, RunFrom, TrainOptions, TrainSession, Trainer,
};

use crate::logits::QuantArg;

fn defaults() -> TrainOptions {
    TrainOptions::default()
}

/// The model and the dataset files, shared by `train` and `eval`.
#[derive(Args, Clone, Debug)]
pub struct ModelDataArgs {
    /// Model: a Hugging Face folder (config.json, *.safetensors, tokenizer.json), a .gguf file,
    /// or a Hub id ORG/NAME[@REVISION] (a local path of that name wins), downloaded into the
    /// Hugging Face cache (HF_HOME; HF_TOKEN, HF_ENDPOINT, HF_HUB_OFFLINE=1 apply) [required].
    #[arg(long, value_name = "PATH|ORG/NAME[@REV]")]
    pub model: PathBuf,
    /// With a Hub id as --model: use this .gguf file of the repo instead of its safetensors
    /// [default: config.json + safetensors].
    #[arg(long, value_name = "FILE")]
    pub gguf_file: Option<String>,
    /// Storage of the frozen base's linear layers: nf4 = QLoRA (bitsandbytes NF4, block 64,
    /// double quant), none = f32.
    #[arg(long, value_enum, default_value_t = QuantArg::default())]
    pub quant: QuantArg,
    #[command(flatten)]
    pub blocks: BlockOptions,
    /// Dataset file(s), repeatable (mixed): .txt (plain text), or .jsonl / .parquet with
    /// {"text"}, {"prompt","completion"}, {"messages":[{"role","content"}...]}, ShareGPT
    /// {"conversations":[{"from","value"}...]} or pre-tokenized {"input_ids","labels"?} records
    /// (chat records go through the model's chat template; only assistant tokens carry loss)
    /// [required].
    #[arg(long, value_name = "FILE", required = true)]
    pub data: Vec<PathBuf>,
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    #[command(flatten)]
    pub input: ModelDataArgs,
    /// Where the adapter, metrics.jsonl and checkpoint-<step>/ folders go.
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
    /// Print one line per step instead of a progress bar [default: a bar on a terminal].
    #[arg(long)]
    pub log_steps: bool,
    /// An extra held-out set, repeatable: NAME=FILE (any --data format), evaluated before
    /// training, every --eval-every steps and at the end; its loss and perplexity go in the log
    /// and in metrics.jsonl's "eval_data" under NAME (e.g. general=general.jsonl to measure
    /// forgetting) [default: none].
    #[arg(long, value_name = "NAME=FILE")]
    pub eval_data: Vec<String>,
    #[command(flatten)]
    pub options: TrainOptions,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    pub input: ModelDataArgs,
    /// Tokens per example: longer records are truncated, text is packed into blocks of this size.
    #[arg(long, default_value_t = defaults().seq_len)]
    pub seq_len: usize,
    /// How .txt files are split into documents.
    #[arg(long, value_enum, default_value_t = defaults().text_split)]
    pub text_split: TextSplit,
    /// Read a record field from another key / column, repeatable: FIELD=COLUMN (as train's)
    /// [default: none, each field under its own name].
    #[arg(long, value_name = "FIELD=COLUMN")]
    pub data_column: Vec<String>,
    /// Rows per micro-batch.
    #[arg(long, default_value_t = defaults().batch_size)]
    pub batch_size: usize,
    /// PEFT adapter folder to evaluate on top of the model [default: the base model alone].
    #[arg(long, value_name = "DIR")]
    pub adapter: Option<PathBuf>,
}

pub(crate) fn open_source(path: &Path) -> Result<ModelSource> {
    ModelSource::open(path).with_context(|| format!("cannot open model {}", path.display()))
}

pub(crate) fn tokenizer(src: &ModelSource, path: &Path) -> Result<ModelTokenizer> {
    let tok = src
        .tokenizer()
        .with_context(|| format!("{} has no usable tokenizer", path.display()))?;
    Ok(ModelTokenizer::new(tok)?)
}

/// Loads the datasets.
pub(crate) fn load_data(
    files: &[PathBuf],
    tok: &ModelTokenizer,
    cfg: &DataConfig,
) -> Result<Dataset> {
    let mut data: Option<Dataset> = None;
    for path in files {
        let d = Dataset::load(path, tok, cfg)?;
        match &mut data {
            Some(all) => all.extend(d)?,
            None => data = Some(d),
        }
    }
    let data = data.context("no --data files")?;
    if data.examples.is_empty() {
        bail!("the datasets hold no examples");
    }
    Ok(data)
}

/// Loads the extra held-out sets of `--eval-data NAME=FILE` arguments.
pub(crate) fn load_eval_sets(
    args: &[String],
    tok: &ModelTokenizer,
    cfg: &DataConfig,
) -> Result<Vec<(String, Dataset)>> {
    let mut eval_sets = Vec::new();
    for arg in args {
        let (name, file) = parse_eval_data_arg(arg).map_err(|e| anyhow!(e))?;
        if eval_sets.iter().any(|(n, _)| n == &name) {
            bail!("two eval sets are named {name:?}: give each --eval-data its own NAME");
        }
        let set = load_data(&[PathBuf::from(&file)], tok, cfg)
            .with_context(|| format!("--eval-data {arg}"))?;
        eprintln!(
            "eval set {name}: {} examples ({} tokens with loss) from {file}",
            set.stats.examples, set.stats.targets
        );
        eval_sets.push((name, set));
    }
    Ok(eval_sets)
}

/// What a run trains, for the log: the method, its trainable parameters and their shape.
pub(crate) fn describe(trainer: &Trainer<'_>, model: &LlamaModel) -> String {
    let c = &trainer.config;
    if trainer.method() == PeftMethod::PromptTuning {
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
    }
}

pub(crate) fn open_gpu(gpu_name: Option<String>) -> Result<Gpu> {
    Ok(Gpu::new_blocking(GpuOptions {
        adapter_name: gpu_name,
        ..GpuOptions::default()
    })?)
}

/// Loads the model with the given block sizes (`None`: the quant's own block everywhere).
pub fn load_model(
    gpu: &Gpu,
    src: &ModelSource,
    path: &Path,
    quant: QuantArg,
    blocks: Option<BlockPlan>,
) -> Result<LlamaModel> {
    let t = Instant::now();
    let opts = LoadOptions {
        blocks,
        ..LoadOptions::default()
    };
    let model = LlamaModel::load_with(gpu, src, quant.quant(), &opts)
        .with_context(|| format!("cannot load {}", path.display()))?;
    eprintln!(
        "model: {} ({} layers, hidden {}, vocab {}), {}, loaded in {:.1}s",
        path.display(),
        model.config.num_hidden_layers,
        model.config.hidden_size,
        model.config.vocab_size,
        if src.is_prequantized() {
            "bitsandbytes NF4 base (its own codes)".to_string()
        } else {
            format!("{quant:?} base")
        },
        t.elapsed().as_secs_f64()
    );
    eprintln!("model memory: {}", model.memory());
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

/// Where the run starts: `--resume`, `--adapter` or fresh; and the folder it starts from (whose
/// recorded block sizes the base takes).
fn run_from(args: &TrainArgs) -> Result<(RunFrom, Option<PathBuf>)> {
    let from = match (&args.resume, &args.adapter) {
        (Some(p), _) if p.as_os_str() == "latest" && !p.exists() => {
            Some(newest_checkpoint(&args.output_dir)?)
        }
        (Some(p), _) => Some(p.clone()),
        (None, Some(a)) => Some(a.clone()),
        (None, None) => None,
    };
    let run = match (&args.resume, &args.adapter) {
        (Some(_), _) => {
            let dir = from.clone().expect("a resume folder");
            let ck = Checkpoint::load(&dir)?;
            eprintln!(
                "resuming from {} (step {} of {})",
                dir.display(),
                ck.state.global_step,
                ck.state.total_steps
            );
            RunFrom::Resume(Box::new(ck))
        }
        (None, Some(a)) => RunFrom::Adapter {
            adapter: PeftAdapter::load(a)?,
            name: format!("--adapter {}", a.display()),
        },
        (None, None) => RunFrom::Fresh,
    };
    Ok((run, from))
}

/// How [`drive`] shows the steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// A progress bar (a terminal), with a line per evaluation.
    Bar,
    /// A line per step.
    Lines,
    /// Nothing (a sweep prints one line per trial instead).
    Quiet,
}

/// What a run's folders record besides the adapter: the block sizes of its frozen base.
pub struct Store<'a> {
    pub src: &'a ModelSource,
    pub quant: QuantArg,
    pub blocks: Option<&'a BlockPlan>,
}

/// Runs a session to its end in `out`: `metrics.jsonl` (one line per step, after the evaluation
/// before training), `checkpoint-<step>/` folders when due, and the final adapter in PEFT's
/// layout; returns every record written. `train` and every trial of `sweep` run through here.
pub fn drive(
    session: &mut TrainSession<'_>,
    out: &Path,
    store: &Store<'_>,
    progress: Progress,
) -> Result<Vec<MetricsRecord>> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let trainer = &session.trainer;
    let resumed_at = (trainer.state.global_step > 0).then_some(trainer.state.global_step);
    let mut metrics = MetricsWriter::open(&out.join("metrics.jsonl"), resumed_at)?;
    let mut records = Vec::new();
    if let Some(rec) = pollster::block_on(session.eval_before())? {
        metrics.write(&rec)?;
        if progress != Progress::Quiet {
            eprintln!("eval before training:{}", rec.eval_summary());
        }
        records.push(rec);
    }
    let total = session.trainer.total_steps();
    let bar = if progress == Progress::Bar {
        let b = ProgressBar::new(total);
        b.set_style(
            ProgressStyle::with_template(
                "{bar:30.cyan/blue} {pos}/{len} steps [{elapsed_precise}<{eta_precise}] {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b.set_position(session.trainer.state.global_step);
        Some(b)
    } else {
        None
    };
    while let Some(ev) = pollster::block_on(session.step())? {
        let rec = &ev.rec;
        let step = rec.step;
        metrics.write(rec)?;
        let eval = rec.eval_summary();
        let line = format!(
            "loss {:.4} lr {:.2e} grad_norm {:.3} {:.0} tok/s{eval}",
            rec.loss, rec.lr, rec.grad_norm, rec.tokens_per_s
        );
        match &bar {
            Some(b) => {
                b.set_position(step);
                b.set_message(line);
                if rec.has_eval() {
                    b.println(format!("step {step}/{total}: {}", b.message()));
                }
            }
            None if progress == Progress::Lines => eprintln!("step {step}/{total}: {line}"),
            None => {}
        }
        if ev.checkpoint_due {
            let dir = out.join(format!("checkpoint-{step}"));
            pollster::block_on(session.trainer.checkpoint())?.save(&dir)?;
            crate::blocks::save_plan(&dir, store.src, store.quant.quant(), store.blocks)?;
        }
        records.push(ev.rec);
    }
    if let Some(b) = bar {
        b.finish();
    }
    pollster::block_on(session.trainer.peft_adapter())?.save(out)?;
    crate::blocks::save_plan(out, store.src, store.quant.quant(), store.blocks)?;
    Ok(records)
}

pub fn run_train(args: &TrainArgs, gpu_name: Option<String>) -> Result<()> {
    let resolved = crate::hub::resolve_model(&args.input.model, args.input.gguf_file.as_deref())?;
    let model_path = &resolved.path;
    let src = open_source(model_path)?;
    let tok = tokenizer(&src, model_path)?;
    let (from, from_dir) = run_from(args)?;
    let blocks = crate::blocks::resolve(
        &src,
        model_path,
        args.input.quant.quant(),
        &args.input.blocks,
        from_dir.as_deref(),
        args.resume.is_some(),
    )?;
    let plan = plan_run(
        &args.options,
        from,
        // A Hub id is recorded as the adapter's base_model_name_or_path, as PEFT does.
        &resolved.name,
        args.input
            .data
            .iter()
            .map(|p| p.display().to_string())
            .collect(),
        src.config().num_hidden_layers,
        |t| tok.tok.encode(t, false).map_err(|e| e.to_string()),
    )
    .map_err(|e| anyhow!(e))?;
    // One run per output directory (a second one is refused while this one lives).
    let _lock = crate::lock::RunLock::acquire(&args.output_dir)?;
    let data = load_data(&args.input.data, &tok, &plan.config.data_config())?;
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
    let eval_sets = load_eval_sets(&args.eval_data, &tok, &plan.config.data_config())?;
    let gpu = open_gpu(gpu_name)?;
    let model = load_model(&gpu, &src, model_path, args.input.quant, blocks.clone())?;
    let model_bytes = gpu.memory().live_bytes;
    // The peak of the run itself, not of quantizing the model at load.
    gpu.reset_peak_memory();
    let clock_start = Instant::now();
    let clock = Box::new(move || clock_start.elapsed().as_secs_f64());
    let mut session = TrainSession::new(&gpu, &model, plan, data, clock)?;
    for (name, set) in eval_sets {
        session.add_eval_set(&name, set)?;
    }
    let trainer = &session.trainer;
    let (n_train, n_eval) = trainer.n_examples();
    let c = &trainer.config;
    let what = describe(trainer, &model);
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
    let progress = if std::io::stderr().is_terminal() && !args.log_steps {
        Progress::Bar
    } else {
        Progress::Lines
    };
    let store = Store {
        src: &src,
        quant: args.input.quant,
        blocks: blocks.as_ref(),
    };
    drive(&mut session, &args.output_dir, &store, progress)?;
    let trainer = &session.trainer;
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
    match crate::plot::plot_run(&args.output_dir) {
        Ok(files) => eprintln!("plots: {}", crate::plot::list(&files)),
        Err(e) => eprintln!("warning: cannot draw the plots: {e:#}"),
    }
    Ok(())
}

pub fn run_eval(args: &EvalArgs, gpu_name: Option<String>) -> Result<()> {
    let resolved = crate::hub::resolve_model(&args.input.model, args.input.gguf_file.as_deref())?;
    let model_path = &resolved.path;
    let src = open_source(model_path)?;
    let tok = tokenizer(&src, model_path)?;
    if args.seq_len < 2 {
        bail!("--seq-len must be at least 2");
    }
    let cfg = DataConfig {
        seq_len: args.seq_len,
        text_split: args.text_split,
        columns: Columns::parse(&args.data_column).map_err(|e| anyhow!(e))?,
    };
    let data = load_data(&args.input.data, &tok, &cfg)?;
    let blocks = crate::blocks::resolve(
        &src,
        model_path,
        args.input.quant.quant(),
        &args.input.blocks,
        args.adapter.as_deref(),
        false,
    )?;
    let gpu = open_gpu(gpu_name)?;
    let model = load_model(&gpu, &src, model_path, args.input.quant, blocks)?;
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
        args.batch_size,
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
