//! `tinytune sweep`: short trials of LoRA, prompt tuning and prefix tuning on the same data, split
//! and seed, scheduled by successive halving ([`tinytune_train::sweep`] holds the grid, the rule,
//! the ranking and the resume record; this host loads the model once and runs each trial through
//! the same [`crate::train::drive`] as `tinytune train`).
//!
//! Output directory: `sweep.json` (settings, schedule, every finished run, the best trial and its
//! command), `trials/<id>/` (the trial's last run: `metrics.jsonl`, adapter, checkpoint),
//! `best/` (the best adapter in PEFT's layout, its `metrics.jsonl` and `command.txt`), `plots/`,
//! and with `--continue-steps` `continued/` (the best trial's full run).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use tinytune_gpu::Gpu;
use tinytune_model::{BlockPlan, LlamaModel, ModelSource};
use tinytune_train::sweep::{
    self, shell_quote, train_flags, Budget, Next, SweepState, Trial, TrialResult,
};
use tinytune_train::{
    plan_run, Dataset, ModelTokenizer, RunFrom, TrainError, TrainOptions, TrainSession,
};

use crate::train::{self as tr, ModelDataArgs, Progress, Store, TrainArgs};

/// `tinytune sweep`'s arguments: the model and data, the budget, the methods, and any `train`
/// option (a given option that the grid varies fixes it).
#[derive(Args, Clone, Debug)]
pub struct SweepArgs {
    #[command(flatten)]
    pub input: ModelDataArgs,
    /// Optimizer steps over all trials and rounds (the halving rule sets each trial's steps)
    /// [one of --budget-steps or --budget-minutes is required].
    #[arg(
        long,
        value_name = "N",
        conflicts_with = "budget_minutes",
        required_unless_present = "budget_minutes"
    )]
    pub budget_steps: Option<u64>,
    /// Wall-clock minutes of training over all trials, turned into a step budget from the speed
    /// of a 2-step probe of the first trial (90% of it: the rest is left for evaluations); the
    /// step budget is recorded in sweep.json, so a resumed sweep keeps it [one of --budget-steps or
    /// --budget-minutes is required].
    #[arg(long, value_name = "T")]
    pub budget_minutes: Option<f64>,
    /// Methods to compare, comma-separated: lora, prompt-tuning, prefix-tuning.
    #[arg(
        long,
        value_name = "LIST",
        default_value = "lora,prompt-tuning,prefix-tuning"
    )]
    pub methods: String,
    /// Where sweep.json, trials/<id>/, best/ and plots/ go; a folder with a sweep.json of the same
    /// settings resumes that sweep.
    #[arg(long, value_name = "DIR", default_value = "tinytune-sweep")]
    pub output_dir: PathBuf,
    /// An extra held-out set, repeatable: NAME=FILE, evaluated with every trial (a column of the
    /// table; the ranking stays on the eval split) [default: none].
    #[arg(long, value_name = "NAME=FILE")]
    pub eval_data: Vec<String>,
    /// After the sweep, train the best trial's settings for N steps (a fresh full run, so its LR
    /// schedule spans the N steps) into OUTPUT_DIR/continued [default: off].
    #[arg(long, value_name = "N")]
    pub continue_steps: Option<u64>,
    /// Print every step of every trial [default: one line per trial].
    #[arg(long)]
    pub log_steps: bool,
    #[command(flatten)]
    pub options: TrainOptions,
}

/// The loaded model, data and device every trial shares.
struct Bench<'a> {
    gpu: &'a Gpu,
    model: &'a LlamaModel,
    src: &'a ModelSource,
    tok: &'a ModelTokenizer,
    blocks: Option<&'a BlockPlan>,
    data: &'a Dataset,
    eval_sets: &'a [(String, Dataset)],
    args: &'a SweepArgs,
}

/// The sweep's identity in sweep.json: a resumed sweep must have the same.
fn settings(args: &SweepArgs, trials: &[Trial]) -> serde_json::Value {
    let b = &args.input.blocks;
    serde_json::json!({
        "model": args.input.model.display().to_string(),
        "data": args.input.data.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "quant": args.input.quant.name(),
        "block_size": b.block_size,
        "block_size_map": b.block_size_map,
        "bits_per_weight": b.bits_per_weight,
        "eval_data": args.eval_data,
        "methods": args.methods,
        "budget": match (args.budget_steps, args.budget_minutes) {
            (Some(s), _) => format!("{s} steps"),
            (None, Some(m)) => format!("{m} minutes"),
            (None, None) => String::new(),
        },
        "trials": trials.iter().map(|t| train_flags(&t.options).join(" ")).collect::<Vec<_>>(),
    })
}

/// `tinytune train` for `opts` into `out`, with this sweep's model, data and eval sets.
fn train_command(args: &SweepArgs, opts: &TrainOptions, out: &Path) -> String {
    let mut w: Vec<String> = vec!["tinytune".into(), "train".into()];
    let mut push = |a: &str, b: String| {
        w.push(a.into());
        w.push(b);
    };
    push("--model", args.input.model.display().to_string());
    if args.input.quant != crate::logits::QuantArg::default() {
        push("--quant", args.input.quant.name().into());
    }
    let b = &args.input.blocks;
    if let Some(v) = &b.block_size {
        push("--block-size", v.clone());
    }
    if let Some(v) = &b.block_size_map {
        push("--block-size-map", v.clone());
    }
    if let Some(v) = b.bits_per_weight {
        push("--bits-per-weight", v.to_string());
    }
    for d in &args.input.data {
        push("--data", d.display().to_string());
    }
    for e in &args.eval_data {
        push("--eval-data", e.clone());
    }
    push("--output-dir", out.display().to_string());
    w.extend(train_flags(opts));
    w.iter()
        .map(|s| shell_quote(s))
        .collect::<Vec<_>>()
        .join(" ")
}

fn save_state(path: &Path, state: &SweepState) -> Result<()> {
    tinytune_train::fsio::write_atomic(path, state.to_json().as_bytes())?;
    Ok(())
}

/// Runs `trial` for `steps` steps in `out` (emptied first) and measures it. A run that diverges
/// is a result too (no eval loss: ranked last), not the end of the sweep.
fn run_trial(
    b: &Bench<'_>,
    trial: &Trial,
    round: usize,
    steps: u64,
    out: &Path,
) -> Result<TrialResult> {
    let opts = trial.options_for(steps);
    let model_path = &b.args.input.model;
    let plan = plan_run(
        &opts,
        RunFrom::Fresh,
        &model_path.display().to_string(),
        b.args
            .input
            .data
            .iter()
            .map(|p| p.display().to_string())
            .collect(),
        b.src.config().num_hidden_layers,
        |t| b.tok.tok.encode(t, false).map_err(|e| e.to_string()),
    )
    .map_err(|e| anyhow!("trial {} ({}): {e}", trial.id, trial.label))?;
    if out.exists() {
        std::fs::remove_dir_all(out).with_context(|| format!("cannot empty {}", out.display()))?;
    }
    b.gpu.reset_peak_memory();
    let clock_start = Instant::now();
    let clock = Box::new(move || clock_start.elapsed().as_secs_f64());
    let mut session = TrainSession::new(b.gpu, b.model, plan, b.data.clone(), clock)?;
    for (name, set) in b.eval_sets {
        session.add_eval_set(name, set.clone())?;
    }
    let n_params = session.trainer.n_params();
    let store = Store {
        src: b.src,
        quant: b.args.input.quant,
        blocks: b.blocks,
    };
    let progress = if b.args.log_steps {
        Progress::Lines
    } else {
        Progress::Quiet
    };
    let records = match tr::drive(&mut session, out, &store, progress) {
        Ok(r) => r,
        Err(e) if matches!(e.downcast_ref(), Some(TrainError::NonFinite { .. })) => {
            eprintln!("trial {} diverged: {e}", trial.id);
            Vec::new()
        }
        Err(e) => return Err(e.context(format!("trial {} ({})", trial.id, trial.label))),
    };
    std::fs::create_dir_all(out)?;
    std::fs::write(
        out.join("command.txt"),
        train_command(b.args, &opts, out) + "\n",
    )?;
    let last = records.iter().rev().find(|r| r.eval_loss.is_some());
    let steps_done: Vec<f64> = records
        .iter()
        .filter(|r| r.step > 0)
        .map(|r| r.tokens_per_s)
        .filter(|v| v.is_finite())
        .collect();
    Ok(TrialResult {
        id: trial.id.clone(),
        round,
        steps,
        eval_loss: last.and_then(|r| r.eval_loss).filter(|l| l.is_finite()),
        eval_data: last
            .map(|r| {
                r.eval_data
                    .iter()
                    .map(|(k, v)| (k.clone(), v.loss))
                    .collect()
            })
            .unwrap_or_default(),
        n_params,
        peak_bytes: b.gpu.memory().peak_bytes,
        tokens_per_s: if steps_done.is_empty() {
            0.0
        } else {
            steps_done.iter().sum::<f64>() / steps_done.len() as f64
        },
        elapsed_s: session.trainer.state.elapsed_s,
    })
}

fn mib(b: u64) -> f64 {
    b as f64 / (1u64 << 20) as f64
}

fn loss_text(l: Option<f64>) -> String {
    l.map_or("diverged".into(), |l| format!("{l:.4}"))
}

/// The final table, best first (trials stopped in an earlier round below those that went on).
fn table(state: &SweepState, trials: &[Trial], eval_names: &[String]) -> String {
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut head: Vec<String> = [
        "trial",
        "method",
        "options",
        "params",
        "peak MiB",
        "tok/s",
        "steps",
        "eval loss",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    head.extend(eval_names.iter().map(|n| format!("{n} loss")));
    head.push("round".into());
    rows.push(head);
    let last_round = state.schedule.len();
    for r in state.table() {
        let Some(t) = trials.iter().find(|t| t.id == r.id) else {
            continue;
        };
        let mut row = vec![
            t.id.clone(),
            t.method.name().to_string(),
            t.label.clone(),
            r.n_params.to_string(),
            format!("{:.1}", mib(r.peak_bytes)),
            format!("{:.0}", r.tokens_per_s),
            r.steps.to_string(),
            loss_text(r.eval_loss),
        ];
        for n in eval_names {
            row.push(loss_text(r.eval_data.get(n).copied()));
        }
        row.push(if r.round + 1 == last_round {
            format!("{}/{last_round} (final)", r.round + 1)
        } else {
            format!("{}/{last_round} (stopped)", r.round + 1)
        });
        rows.push(row);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut s = String::new();
    for (i, row) in rows.iter().enumerate() {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:<w$}"))
            .collect();
        s += line.join("  ").trim_end();
        s += "\n";
        if i == 0 {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            s += &rule.join("  ");
            s += "\n";
        }
    }
    s
}

/// Copies the regular files of `from` (adapter, metrics, block plan, command) into `to`.
fn copy_files(from: &Path, to: &Path) -> Result<()> {
    if to.exists() {
        std::fs::remove_dir_all(to).with_context(|| format!("cannot empty {}", to.display()))?;
    }
    std::fs::create_dir_all(to).with_context(|| format!("cannot create {}", to.display()))?;
    for e in std::fs::read_dir(from).with_context(|| format!("cannot read {}", from.display()))? {
        let e = e?;
        if e.file_type()?.is_file() {
            std::fs::copy(e.path(), to.join(e.file_name()))
                .with_context(|| format!("cannot copy {}", e.path().display()))?;
        }
    }
    Ok(())
}

pub fn run(args: &SweepArgs, given: &[String], gpu_name: Option<String>) -> Result<()> {
    // A Hub id (ORG/NAME[@REV]) becomes its local snapshot: every trial and the reproduction
    // command then name that folder.
    let resolved = crate::hub::resolve_model(&args.input.model, args.input.gguf_file.as_deref())?;
    let mut local = args.clone();
    local.input.model = resolved.path;
    local.input.gguf_file = None;
    let args = &local;
    let methods = sweep::parse_methods(&args.methods)?;
    let trials = sweep::grid(&methods, &args.options, given)?;
    if args.continue_steps == Some(0) {
        bail!("--continue-steps must be at least 1");
    }
    let budget = match (args.budget_steps, args.budget_minutes) {
        (Some(s), _) => Budget::Steps(s),
        (None, Some(m)) if m.is_finite() && m > 0.0 => Budget::Minutes(m),
        (None, Some(m)) => bail!("--budget-minutes must be a positive number (got {m})"),
        (None, None) => bail!("give --budget-steps or --budget-minutes"),
    };
    let model_path = &args.input.model;
    let src = tr::open_source(model_path)?;
    let tok = tr::tokenizer(&src, model_path)?;
    sweep::validate(&trials, src.config().num_hidden_layers)?;
    let settings = settings(args, &trials);
    let out = &args.output_dir;
    let state_path = out.join("sweep.json");
    let mut state = if state_path.exists() {
        let text = std::fs::read_to_string(&state_path)
            .with_context(|| format!("cannot read {}", state_path.display()))?;
        let s =
            SweepState::from_json(&text).with_context(|| format!("{}", state_path.display()))?;
        s.check_same(&settings, &trials).map_err(|e| {
            anyhow!(
                "{}: {e}: give another --output-dir, or delete it to start over",
                state_path.display()
            )
        })?;
        Some(s)
    } else if let Budget::Steps(b) = budget {
        // A budget too small fails here, before the model loads.
        Some(SweepState::new(settings.clone(), &trials, b)?)
    } else {
        None
    };
    let _lock = crate::lock::RunLock::acquire(out)?;
    let blocks = crate::blocks::resolve(
        &src,
        model_path,
        args.input.quant.quant(),
        &args.input.blocks,
        None,
        false,
    )?;
    // Every trial shares the data config (the grid varies no data option), so the data loads
    // once and each trial splits it with the same seed.
    let data_cfg = trials[0]
        .options_for(1)
        .to_config("", Vec::new(), src.config().num_hidden_layers, false)
        .map_err(|e| anyhow!(e))?
        .data_config();
    let data = tr::load_data(&args.input.data, &tok, &data_cfg)?;
    eprintln!(
        "data: {} records -> {} examples of <= {} tokens",
        data.stats.records, data.stats.examples, data.seq_len
    );
    let eval_sets = tr::load_eval_sets(&args.eval_data, &tok, &data_cfg)?;
    let eval_names: Vec<String> = eval_sets.iter().map(|(n, _)| n.clone()).collect();
    let best_opts;
    {
        let gpu = tr::open_gpu(gpu_name.clone())?;
        let model = tr::load_model(&gpu, &src, model_path, args.input.quant, blocks.clone())?;
        let bench = Bench {
            gpu: &gpu,
            model: &model,
            src: &src,
            tok: &tok,
            blocks: blocks.as_ref(),
            data: &data,
            eval_sets: &eval_sets,
            args,
        };
        std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
        let mut state = match state.take() {
            Some(s) => s,
            None => {
                let Budget::Minutes(minutes) = budget else {
                    unreachable!("a step budget makes its state above")
                };
                let probe_dir = out.join("probe");
                let r = run_trial(&bench, &trials[0], 0, 2, &probe_dir)?;
                let _ = std::fs::remove_dir_all(&probe_dir);
                let per_step = r.elapsed_s / 2.0;
                let steps = sweep::steps_for_minutes(minutes, per_step);
                eprintln!(
                    "budget: {minutes} minutes at {per_step:.2}s per step (a 2-step probe of {}) \
                     = {steps} steps",
                    trials[0].id
                );
                SweepState::new(settings.clone(), &trials, steps).with_context(|| {
                    format!(
                        "--budget-minutes {minutes} buys {steps} steps at {per_step:.3}s per step"
                    )
                })?
            }
        };
        let recorded = state.results.len();
        if recorded > 0 {
            eprintln!(
                "resuming the sweep in {}: {recorded} runs recorded, not rerun",
                out.display()
            );
        }
        let rounds = state.schedule.len();
        eprintln!(
            "sweep: {} trials, {} steps budget, successive halving over {rounds} round(s): {}",
            trials.len(),
            state.budget_steps,
            state
                .schedule
                .iter()
                .map(|r| format!("{} x {} steps", r.trials, r.steps))
                .collect::<Vec<_>>()
                .join(", then ")
        );
        save_state(&state_path, &state)?;
        let started = Instant::now();
        while let Next::Run { round, trial } = state.next() {
            let t = &trials[trial];
            let steps = state.schedule[round].steps;
            let r = run_trial(&bench, t, round, steps, &out.join("trials").join(&t.id))?;
            let mut extra = String::new();
            for n in &eval_names {
                extra += &format!(", {n} loss {}", loss_text(r.eval_data.get(n).copied()));
            }
            eprintln!(
                "round {}/{rounds} trial {} {} {}: {} steps, eval loss {}{extra}, {} params, \
                 {:.1} MiB peak, {:.0} tok/s, {:.1}s",
                round + 1,
                t.id,
                t.method.name(),
                t.label,
                steps,
                loss_text(r.eval_loss),
                r.n_params,
                mib(r.peak_bytes),
                r.tokens_per_s,
                r.elapsed_s
            );
            let round_was_open = state.survivors(round + 1).is_none();
            state.record(r);
            save_state(&state_path, &state)?;
            if round + 1 < rounds && round_was_open {
                if let Some(kept) = state.survivors(round + 1) {
                    let ids: Vec<&str> = kept.iter().map(|&i| trials[i].id.as_str()).collect();
                    eprintln!(
                        "round {} done: the best {} go on ({}), the others stop",
                        round + 1,
                        kept.len(),
                        ids.join(", ")
                    );
                }
            }
        }
        let best = state
            .best_result()
            .context("the sweep finished without a best trial")?
            .clone();
        let best_trial = trials
            .iter()
            .find(|t| t.id == best.id)
            .context("the best trial is not in the grid")?;
        print!("{}", table(&state, &trials, &eval_names));
        let best_dir = out.join("best");
        copy_files(&out.join("trials").join(&best.id), &best_dir)?;
        let opts = best_trial.options_for(best.steps);
        let command = train_command(args, &opts, &out.join("best-run"));
        std::fs::write(best_dir.join("command.txt"), format!("{command}\n"))?;
        println!(
            "best: {} ({} {}), eval loss {} after {} steps; adapter in {}; reproduce with:\n{command}",
            best.id,
            best_trial.method.name(),
            best_trial.label,
            loss_text(best.eval_loss),
            best.steps,
            best_dir.display()
        );
        state.best = Some(best.id.clone());
        state.best_command = Some(command);
        save_state(&state_path, &state)?;
        eprintln!(
            "sweep done in {:.1}s ({} runs this time)",
            started.elapsed().as_secs_f64(),
            state.results.len() - recorded
        );
        best_opts = best_trial.options.clone();
    }
    match crate::plot::plot_sweep(out) {
        Ok(files) => eprintln!("plots: {}", crate::plot::list(&files)),
        Err(e) => eprintln!("warning: cannot draw the plots: {e:#}"),
    }
    if let Some(n) = args.continue_steps {
        let dir = out.join("continued");
        eprintln!(
            "continuing the best trial to a full run of {n} steps in {}",
            dir.display()
        );
        let train_args = TrainArgs {
            input: ModelDataArgs {
                model: args.input.model.clone(),
                gguf_file: args.input.gguf_file.clone(),
                quant: args.input.quant,
                blocks: args.input.blocks.clone(),
                data: args.input.data.clone(),
            },
            output_dir: dir.clone(),
            adapter: None,
            resume: None,
            log_steps: args.log_steps,
            eval_data: args.eval_data.clone(),
            options: TrainOptions {
                num_steps: Some(n),
                epochs: None,
                ..best_opts.clone()
            },
        };
        std::fs::create_dir_all(&dir)?;
        std::fs::write(
            dir.join("command.txt"),
            train_command(args, &train_args.options, &dir) + "\n",
        )?;
        tr::run_train(&train_args, gpu_name)?;
    }
    Ok(())
}
