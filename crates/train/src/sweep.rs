//! Choosing the PEFT method and its hyperparameters: the sweep's grid, its successive-halving
//! schedule, the ranking of trials and the bookkeeping that lets an interrupted sweep resume.
//!
//! Pure and host-agnostic (no files, no device, no clock): the CLI's `tinytune sweep` runs the
//! trials with [`crate::TrainSession`] and stores [`SweepState`] as `sweep.json`; a browser host
//! can run the same plan in a tab.
//!
//! # The schedule (successive halving, η = 2)
//!
//! With `n` trials and a budget of `B` optimizer steps in all:
//! - rounds `r = 0 .. R-1` with `R = max(1, ceil(log2 n))`; round 0 runs all `n` trials, round
//!   `r + 1` the best `n_{r+1} = ceil(n_r / 2)` of round `r` (so the last round has 2 trials, or 1
//!   when `n = 1`);
//! - in round `r` every trial trains `s_r = s_0 * 2^r` steps, from scratch, so each result is
//!   exactly what `tinytune train --num-steps s_r` (same options and seed) gives;
//! - `s_0 = floor(B / sum_r n_r * 2^r)`; a budget under that sum (`s_0 = 0`) is refused;
//! - "best" means the lowest eval loss at the end of the run; ties go to fewer trainable
//!   parameters, then less peak device memory, then the earlier trial of the grid;
//! - the sweep's best trial is the best of the last round.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::data::EvalSplit;
use crate::options::{parse_eval_split, Names, NumOrText, PeftMethod, PromptInit, TrainOptions};

/// Errors of a sweep's setup: each says what to change.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SweepError {
    #[error(
        "--methods is empty: name at least one of lora, prompt-tuning, prefix-tuning (e.g. \
         --methods lora,prompt-tuning)"
    )]
    NoMethods,
    #[error("--methods: unknown method {0:?}: expected lora, prompt-tuning or prefix-tuning")]
    UnknownMethod(String),
    #[error("--methods names {0} twice")]
    DuplicateMethod(String),
    #[error(
        "a budget of {budget} steps is too small for {trials} trials: successive halving needs \
         at least {needed} steps for one step per trial and round (raise --budget-steps or \
         --budget-minutes, or narrow the grid with --methods or fixed options such as --lora-r)"
    )]
    BudgetTooSmall {
        budget: u64,
        trials: usize,
        needed: u64,
    },
    #[error("{flag} applies to {applies}, and --methods {methods} includes none of them")]
    OptionNotAccepted {
        flag: String,
        applies: String,
        methods: String,
    },
    #[error("{flag}: {why}")]
    SweepSets { flag: String, why: String },
    #[error("a sweep ranks trials by eval loss: --eval-split must hold out examples (got {0})")]
    NoEvalSplit(String),
    #[error("trial {id} ({label}): {msg}")]
    Trial {
        id: String,
        label: String,
        msg: String,
    },
    #[error("sweep.json: {0}")]
    State(String),
}

/// How much a sweep may train: optimizer steps over all trials, or wall-clock minutes (which
/// the host turns into steps from a measured step time, see [`steps_for_minutes`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Budget {
    Steps(u64),
    Minutes(f64),
}

/// The init text of text-initialised prompt / prefix trials when the user gives none.
pub const DEFAULT_INIT_TEXT: &str = "You are a helpful assistant. Answer the question.";

/// The default eval split of a sweep (a sweep cannot rank without one).
pub const DEFAULT_EVAL_SPLIT: f64 = 0.1;

/// LoRA's learning rates, ranks and target modules in the default grid.
pub const LORA_LRS: [f64; 2] = [2e-4, 1e-3];
pub const LORA_RANKS: [usize; 2] = [4, 16];
pub const LORA_TARGETS: [&str; 2] = ["q_proj,v_proj", "all-linear"];
/// Prompt tuning's learning rates (virtual-token embeddings want much larger steps than LoRA).
pub const PROMPT_LRS: [f64; 2] = [3e-3, 3e-2];
/// Prefix tuning's learning rates.
pub const PREFIX_LRS: [f64; 2] = [1e-3, 1e-2];

/// Parses `--methods` (comma-separated; empty entries are an error, not skipped, so
/// `--methods ""` says so).
pub fn parse_methods(s: &str) -> Result<Vec<PeftMethod>, SweepError> {
    if s.trim().is_empty() {
        return Err(SweepError::NoMethods);
    }
    let mut out = Vec::new();
    for name in s.split(',').map(str::trim) {
        let m = match name {
            "lora" => PeftMethod::Lora,
            "prompt-tuning" => PeftMethod::PromptTuning,
            "prefix-tuning" => PeftMethod::PrefixTuning,
            "" => return Err(SweepError::NoMethods),
            other => return Err(SweepError::UnknownMethod(other.to_string())),
        };
        if out.contains(&m) {
            return Err(SweepError::DuplicateMethod(m.name().into()));
        }
        out.push(m);
    }
    Ok(out)
}

/// One trial of the grid: a method and its full `train` options (without a step count: the
/// schedule sets it per round).
#[derive(Clone, Debug, PartialEq)]
pub struct Trial {
    /// `t01-lora`, `t09-prompt-tuning`...: the trial's folder under `trials/`.
    pub id: String,
    pub method: PeftMethod,
    /// The options the grid varies, for the table (`r=4 q_proj,v_proj lr=2e-4`).
    pub label: String,
    pub options: TrainOptions,
}

impl Trial {
    /// The options of a run of `steps` steps.
    pub fn options_for(&self, steps: u64) -> TrainOptions {
        TrainOptions {
            num_steps: Some(steps),
            epochs: None,
            ..self.options.clone()
        }
    }
}

/// The `train` options (by their snake_case names, clap's ids) that only some methods use.
fn applies_to(option: &str) -> Option<&'static [PeftMethod]> {
    use PeftMethod::*;
    Some(match option {
        "lora_r"
        | "lora_alpha"
        | "lora_dropout"
        | "target_modules"
        | "layers_to_transform"
        | "use_rslora" => &[Lora],
        "prompt_tuning_init" | "prompt_tuning_init_text" => &[PromptTuning],
        "prefix_tuning_init"
        | "prefix_tuning_init_text"
        | "prefix_projection"
        | "encoder_hidden_size" => &[PrefixTuning],
        "num_virtual_tokens" => &[PromptTuning, PrefixTuning],
        _ => return None,
    })
}

fn flag(option: &str) -> String {
    format!("--{}", option.replace('_', "-"))
}

fn join_methods(m: &[PeftMethod]) -> String {
    m.iter().map(|m| m.name()).collect::<Vec<_>>().join(",")
}

/// Formats a learning rate as it is typed (`2e-4`, `0.03` -> `3e-2`).
fn lr_text(v: f64) -> String {
    format!("{v:e}")
}

/// The trials of a sweep over `methods`, each starting from `base` (the user's `train` options).
///
/// `given` names the options the user set explicitly (snake_case, as clap's ids): a given option
/// that the grid varies fixes that dimension (`--lora-r 8` sweeps rank 8 only; `--learning-rate`
/// fixes every method's rate); a given option that no selected method uses, `--peft`, and the
/// step counts (`--num-steps`, `--epochs`) are errors.
pub fn grid(
    methods: &[PeftMethod],
    base: &TrainOptions,
    given: &[String],
) -> Result<Vec<Trial>, SweepError> {
    if methods.is_empty() {
        return Err(SweepError::NoMethods);
    }
    let is_given = |o: &str| given.iter().any(|g| g == o);
    for g in given {
        match g.as_str() {
            "peft" => {
                return Err(SweepError::SweepSets {
                    flag: "--peft".into(),
                    why: "a sweep tries several methods: pick them with --methods".into(),
                })
            }
            "num_steps" | "epochs" => {
                return Err(SweepError::SweepSets {
                    flag: flag(g),
                    why: "the sweep's budget sets each trial's steps: give --budget-steps or \
                          --budget-minutes (and --continue-steps for a full run of the best)"
                        .into(),
                })
            }
            _ => {}
        }
        if let Some(applies) = applies_to(g) {
            if !applies.iter().any(|m| methods.contains(m)) {
                return Err(SweepError::OptionNotAccepted {
                    flag: flag(g),
                    applies: join_methods(applies),
                    methods: join_methods(methods),
                });
            }
        }
    }
    let mut base = base.clone();
    if !is_given("eval_split") {
        base.eval_split = NumOrText::Num(DEFAULT_EVAL_SPLIT);
    }
    match parse_eval_split(&base.eval_split) {
        Ok(EvalSplit::None) => return Err(SweepError::NoEvalSplit(base.eval_split.to_string())),
        Ok(_) => {}
        Err(e) => {
            return Err(SweepError::SweepSets {
                flag: "--eval-split".into(),
                why: e,
            })
        }
    }
    let lrs = |defaults: &[f64]| -> Vec<f64> {
        if is_given("learning_rate") {
            vec![base.learning_rate]
        } else {
            defaults.to_vec()
        }
    };
    let mut trials = Vec::new();
    for &method in methods {
        let mut variants: Vec<(String, TrainOptions)> = Vec::new();
        let o = TrainOptions {
            peft: method,
            ..base.clone()
        };
        match method {
            PeftMethod::Lora => {
                let ranks = if is_given("lora_r") {
                    vec![base.lora_r]
                } else {
                    LORA_RANKS.to_vec()
                };
                let targets: Vec<Names> = if is_given("target_modules") {
                    vec![base.target_modules.clone()]
                } else {
                    LORA_TARGETS
                        .iter()
                        .map(|t| Names::Text(t.to_string()))
                        .collect()
                };
                for &r in &ranks {
                    for t in &targets {
                        for &lr in &lrs(&LORA_LRS) {
                            variants.push((
                                format!("r={r} {t} lr={}", lr_text(lr)),
                                TrainOptions {
                                    lora_r: r,
                                    target_modules: t.clone(),
                                    learning_rate: lr,
                                    ..o.clone()
                                },
                            ));
                        }
                    }
                }
            }
            PeftMethod::PromptTuning => {
                let inits = if is_given("prompt_tuning_init") {
                    vec![base.prompt_tuning_init]
                } else {
                    vec![PromptInit::Random, PromptInit::Text]
                };
                for &init in &inits {
                    for &lr in &lrs(&PROMPT_LRS) {
                        let text = (init == PromptInit::Text).then(|| {
                            base.prompt_tuning_init_text
                                .clone()
                                .unwrap_or_else(|| DEFAULT_INIT_TEXT.into())
                        });
                        variants.push((
                            format!("init={} lr={}", init_name(init), lr_text(lr)),
                            TrainOptions {
                                prompt_tuning_init: init,
                                prompt_tuning_init_text: text,
                                learning_rate: lr,
                                ..o.clone()
                            },
                        ));
                    }
                }
            }
            PeftMethod::PrefixTuning => {
                let inits = if is_given("prefix_tuning_init") {
                    vec![base.prefix_tuning_init]
                } else {
                    vec![PromptInit::Random, PromptInit::Text]
                };
                let projections = if is_given("prefix_projection") {
                    vec![base.prefix_projection]
                } else {
                    vec![false, true]
                };
                // PEFT's projection trains from its random init: a text init goes without it
                // (unless both are given, which `validate` then refuses in train's words).
                let both_given = is_given("prefix_tuning_init") && is_given("prefix_projection");
                for &init in &inits {
                    for &proj in &projections {
                        if init == PromptInit::Text && proj && !both_given {
                            continue;
                        }
                        for &lr in &lrs(&PREFIX_LRS) {
                            let text = (init == PromptInit::Text).then(|| {
                                base.prefix_tuning_init_text
                                    .clone()
                                    .unwrap_or_else(|| DEFAULT_INIT_TEXT.into())
                            });
                            variants.push((
                                format!(
                                    "init={}{} lr={}",
                                    init_name(init),
                                    if proj { " projection" } else { "" },
                                    lr_text(lr)
                                ),
                                TrainOptions {
                                    prefix_tuning_init: init,
                                    prefix_tuning_init_text: text,
                                    prefix_projection: proj,
                                    learning_rate: lr,
                                    ..o.clone()
                                },
                            ));
                        }
                    }
                }
            }
        }
        for (label, options) in variants {
            trials.push(Trial {
                id: format!("t{:02}-{}", trials.len() + 1, method.name()),
                method,
                label,
                options,
            });
        }
    }
    Ok(trials)
}

fn init_name(i: PromptInit) -> &'static str {
    match i {
        PromptInit::Random => "random",
        PromptInit::Text => "text",
    }
}

/// Checks every trial's options as `train` would (`n_layers` checks `--layers-to-transform`),
/// so a bad combination fails before anything trains.
pub fn validate(trials: &[Trial], n_layers: usize) -> Result<(), SweepError> {
    for t in trials {
        let o = t.options_for(1);
        o.to_config("", Vec::new(), n_layers, false)
            .and_then(|_| o.peft_start(|_| Ok(vec![0])).map(|_| ()))
            .map_err(|msg| SweepError::Trial {
                id: t.id.clone(),
                label: t.label.clone(),
                msg,
            })?;
    }
    Ok(())
}

/// One round of the schedule: how many trials run and how many steps each trains.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Round {
    pub trials: usize,
    pub steps: u64,
}

/// The successive-halving schedule of `n` trials within `budget` steps (the rule is in the
/// module's documentation).
pub fn halving_schedule(n: usize, budget: u64) -> Result<Vec<Round>, SweepError> {
    if n == 0 {
        return Err(SweepError::NoMethods);
    }
    let mut counts = vec![n];
    while *counts.last().unwrap_or(&1) > 2 {
        let last = counts[counts.len() - 1];
        counts.push(last.div_ceil(2));
    }
    let needed: u64 = counts
        .iter()
        .enumerate()
        .map(|(r, &c)| c as u64 * (1u64 << r))
        .sum();
    let s0 = budget / needed;
    if s0 == 0 {
        return Err(SweepError::BudgetTooSmall {
            budget,
            trials: n,
            needed,
        });
    }
    Ok(counts
        .iter()
        .enumerate()
        .map(|(r, &c)| Round {
            trials: c,
            steps: s0 << r,
        })
        .collect())
}

/// The step budget that `minutes` of training buys at `secs_per_step` (the host measures it),
/// with a tenth kept for the evaluations and the model's setup per trial.
pub fn steps_for_minutes(minutes: f64, secs_per_step: f64) -> u64 {
    if !(minutes > 0.0 && secs_per_step > 0.0) {
        return 0;
    }
    (minutes * 60.0 * 0.9 / secs_per_step).floor() as u64
}

/// What a trial's run measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrialResult {
    pub id: String,
    /// The round (0-based) of the run.
    pub round: usize,
    pub steps: u64,
    /// Eval loss after the last step (`None`: not finite, ranked last).
    pub eval_loss: Option<f64>,
    /// The extra held-out sets' losses after the last step, by name.
    #[serde(default)]
    pub eval_data: BTreeMap<String, f64>,
    pub n_params: usize,
    /// Peak device memory of tinytune's buffers during the run (the frozen model included).
    pub peak_bytes: u64,
    /// Mean tokens per second over the run's steps.
    pub tokens_per_s: f64,
    /// Seconds of training.
    pub elapsed_s: f64,
}

fn loss_key(r: &TrialResult) -> f64 {
    r.eval_loss
        .filter(|l| l.is_finite())
        .unwrap_or(f64::INFINITY)
}

/// Sorts results best first: eval loss, then fewer parameters, then less memory, then `order`
/// (the trial's index in the grid).
pub fn rank<'a>(
    results: impl IntoIterator<Item = &'a TrialResult>,
    order: impl Fn(&str) -> usize,
) -> Vec<&'a TrialResult> {
    let mut v: Vec<&TrialResult> = results.into_iter().collect();
    v.sort_by(|a, b| {
        loss_key(a)
            .total_cmp(&loss_key(b))
            .then(a.n_params.cmp(&b.n_params))
            .then(a.peak_bytes.cmp(&b.peak_bytes))
            .then(order(&a.id).cmp(&order(&b.id)))
    });
    v
}

/// A trial as `sweep.json` records it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrialEntry {
    pub id: String,
    pub method: String,
    pub label: String,
}

/// What to do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// Run trial `trial` (index into the grid) for round `round`'s steps.
    Run { round: usize, trial: usize },
    /// Every round is done.
    Done,
}

/// A sweep's record (`sweep.json`): its settings, schedule, trials and every finished run. A
/// resumed sweep reruns nothing recorded here.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SweepState {
    pub version: u32,
    /// The host's description of the sweep (model, data, methods, options); a resumed sweep must
    /// match it.
    pub settings: serde_json::Value,
    pub budget_steps: u64,
    pub schedule: Vec<Round>,
    pub trials: Vec<TrialEntry>,
    /// Finished runs, in the order they finished.
    pub results: Vec<TrialResult>,
    /// The best trial, once every round is done.
    #[serde(default)]
    pub best: Option<String>,
    /// The `tinytune train` command that reproduces the best trial.
    #[serde(default)]
    pub best_command: Option<String>,
}

impl SweepState {
    /// A new sweep of `trials` within `budget_steps`.
    pub fn new(
        settings: serde_json::Value,
        trials: &[Trial],
        budget_steps: u64,
    ) -> Result<SweepState, SweepError> {
        Ok(SweepState {
            version: 1,
            settings,
            budget_steps,
            schedule: halving_schedule(trials.len(), budget_steps)?,
            trials: trials
                .iter()
                .map(|t| TrialEntry {
                    id: t.id.clone(),
                    method: t.method.name().into(),
                    label: t.label.clone(),
                })
                .collect(),
            results: Vec::new(),
            best: None,
            best_command: None,
        })
    }

    /// Parses `sweep.json`.
    pub fn from_json(text: &str) -> Result<SweepState, SweepError> {
        serde_json::from_str(text).map_err(|e| SweepError::State(e.to_string()))
    }

    /// The record as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default() + "\n"
    }

    /// Checks that a recorded sweep is the one asked for now (same settings and grid).
    pub fn check_same(&self, settings: &serde_json::Value, trials: &[Trial]) -> Result<(), String> {
        if &self.settings != settings {
            return Err(format!(
                "it records a sweep with other settings ({}; now {})",
                self.settings, settings
            ));
        }
        let ids: Vec<&str> = trials.iter().map(|t| t.id.as_str()).collect();
        let recorded: Vec<&str> = self.trials.iter().map(|t| t.id.as_str()).collect();
        if ids != recorded {
            return Err("it records another grid of trials".into());
        }
        Ok(())
    }

    fn index(&self, id: &str) -> usize {
        self.trials
            .iter()
            .position(|t| t.id == id)
            .unwrap_or(usize::MAX)
    }

    /// The result of trial `id` in `round`.
    pub fn result(&self, id: &str, round: usize) -> Option<&TrialResult> {
        self.results.iter().find(|r| r.id == id && r.round == round)
    }

    /// The trials (grid indices, in grid order) that run in `round`: every trial in round 0, then
    /// the best `schedule[round].trials` of the previous round. `None` while the previous round
    /// is unfinished.
    pub fn survivors(&self, round: usize) -> Option<Vec<usize>> {
        if round == 0 {
            return Some((0..self.trials.len()).collect());
        }
        let prev = self.survivors(round - 1)?;
        let mut results = Vec::new();
        for &i in &prev {
            results.push(self.result(&self.trials[i].id, round - 1)?);
        }
        let keep = self.schedule.get(round)?.trials;
        let mut kept: Vec<usize> = rank(results, |id| self.index(id))
            .into_iter()
            .take(keep)
            .map(|r| self.index(&r.id))
            .collect();
        kept.sort_unstable();
        Some(kept)
    }

    /// The next run: the first trial of the earliest unfinished round without a result.
    pub fn next(&self) -> Next {
        for round in 0..self.schedule.len() {
            let Some(trials) = self.survivors(round) else {
                return Next::Done;
            };
            for trial in trials {
                if self.result(&self.trials[trial].id, round).is_none() {
                    return Next::Run { round, trial };
                }
            }
        }
        Next::Done
    }

    /// Records a finished run (replacing an earlier record of the same trial and round).
    pub fn record(&mut self, result: TrialResult) {
        self.results
            .retain(|r| !(r.id == result.id && r.round == result.round));
        self.results.push(result);
    }

    /// The round in which trial `id` stopped (its last run) and that run's result.
    pub fn last_result(&self, id: &str) -> Option<&TrialResult> {
        self.results
            .iter()
            .filter(|r| r.id == id)
            .max_by_key(|r| r.round)
    }

    /// Every trial's last result, best first: trials that reached a later round rank above
    /// those stopped earlier, and within a round by [`rank`].
    pub fn table(&self) -> Vec<&TrialResult> {
        let mut last: Vec<&TrialResult> = self
            .trials
            .iter()
            .filter_map(|t| self.last_result(&t.id))
            .collect();
        let ranked = rank(last.iter().copied(), |id| self.index(id));
        last = ranked;
        last.sort_by_key(|r| std::cmp::Reverse(r.round));
        last
    }

    /// The best trial once every round is done: the best of the last round.
    pub fn best_result(&self) -> Option<&TrialResult> {
        if self.next() != Next::Done {
            return None;
        }
        let round = self.schedule.len().checked_sub(1)?;
        let ids = self.survivors(round)?;
        let results = ids
            .iter()
            .filter_map(|&i| self.result(&self.trials[i].id, round));
        rank(results, |id| self.index(id)).first().copied()
    }
}

/// `tinytune train`'s flags for `opts`: every option that differs from its default, in the
/// options table's order, so `train` with these flags (plus the host's model, data and output
/// folder) runs exactly `opts`.
pub fn train_flags(opts: &TrainOptions) -> Vec<String> {
    let d = TrainOptions::default();
    let mut f: Vec<String> = Vec::new();
    let mut push = |name: &str, v: String| {
        f.push(format!("--{name}"));
        f.push(v);
    };
    if opts.peft != d.peft {
        push("peft", opts.peft.name().into());
    }
    if opts.num_virtual_tokens != d.num_virtual_tokens {
        push("num-virtual-tokens", opts.num_virtual_tokens.to_string());
    }
    if opts.prompt_tuning_init != d.prompt_tuning_init {
        push(
            "prompt-tuning-init",
            init_name(opts.prompt_tuning_init).into(),
        );
    }
    if let Some(t) = &opts.prompt_tuning_init_text {
        push("prompt-tuning-init-text", t.clone());
    }
    if opts.prefix_tuning_init != d.prefix_tuning_init {
        push(
            "prefix-tuning-init",
            init_name(opts.prefix_tuning_init).into(),
        );
    }
    if let Some(t) = &opts.prefix_tuning_init_text {
        push("prefix-tuning-init-text", t.clone());
    }
    if let Some(n) = opts.encoder_hidden_size {
        push("encoder-hidden-size", n.to_string());
    }
    if opts.lora_r != d.lora_r {
        push("lora-r", opts.lora_r.to_string());
    }
    if opts.lora_alpha != d.lora_alpha {
        push("lora-alpha", opts.lora_alpha.to_string());
    }
    if opts.lora_dropout != d.lora_dropout {
        push("lora-dropout", opts.lora_dropout.to_string());
    }
    if opts.target_modules.to_string() != d.target_modules.to_string() {
        push("target-modules", opts.target_modules.to_string());
    }
    if let Some(l) = &opts.layers_to_transform {
        push("layers-to-transform", l.to_string());
    }
    if opts.learning_rate != d.learning_rate {
        push("learning-rate", opts.learning_rate.to_string());
    }
    if opts.lr_scheduler != d.lr_scheduler {
        push("lr-scheduler", opts.lr_scheduler.clone());
    }
    if opts.warmup_steps != d.warmup_steps {
        push("warmup-steps", opts.warmup_steps.to_string());
    }
    if let Some(r) = opts.warmup_ratio {
        push("warmup-ratio", r.to_string());
    }
    if let Some(n) = opts.num_steps {
        push("num-steps", n.to_string());
    }
    if let Some(n) = opts.epochs {
        push("epochs", n.to_string());
    }
    if opts.batch_size != d.batch_size {
        push("batch-size", opts.batch_size.to_string());
    }
    if opts.grad_accum != d.grad_accum {
        push("grad-accum", opts.grad_accum.to_string());
    }
    if opts.seq_len != d.seq_len {
        push("seq-len", opts.seq_len.to_string());
    }
    if opts.text_split != d.text_split {
        push("text-split", text_split_name(opts.text_split));
    }
    for c in &opts.data_column {
        push("data-column", c.clone());
    }
    if opts.max_grad_norm != d.max_grad_norm {
        push("max-grad-norm", opts.max_grad_norm.to_string());
    }
    if opts.weight_decay != d.weight_decay {
        push("weight-decay", opts.weight_decay.to_string());
    }
    if opts.eval_split != d.eval_split {
        push("eval-split", opts.eval_split.to_string());
    }
    if opts.eval_every != d.eval_every {
        push("eval-every", opts.eval_every.to_string());
    }
    if opts.save_every != d.save_every {
        push("save-every", opts.save_every.to_string());
    }
    if opts.seed != d.seed {
        push("seed", opts.seed.to_string());
    }
    // Switches take no value.
    for (on, name) in [
        (opts.prefix_projection, "--prefix-projection"),
        (opts.use_rslora, "--use-rslora"),
        (opts.gradient_checkpointing, "--gradient-checkpointing"),
    ] {
        if on {
            f.push(name.into());
        }
    }
    f
}

fn text_split_name(s: crate::data::TextSplit) -> String {
    use clap::ValueEnum;
    s.to_possible_value()
        .map(|v| v.get_name().to_string())
        .unwrap_or_default()
}

/// Quotes a word for a POSIX shell when it needs it (`'...'`, with `'` as `'\''`).
pub fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=,:+@%".contains(c));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct TrainCli {
        #[command(flatten)]
        o: TrainOptions,
    }

    fn result(id: &str, round: usize, loss: f64, n_params: usize) -> TrialResult {
        TrialResult {
            id: id.into(),
            round,
            steps: 1,
            eval_loss: Some(loss),
            eval_data: BTreeMap::new(),
            n_params,
            peak_bytes: 100,
            tokens_per_s: 1.0,
            elapsed_s: 1.0,
        }
    }

    #[test]
    fn the_schedule_halves_the_trials_and_doubles_the_steps() {
        let s = halving_schedule(8, 100).unwrap();
        // Cost per s0: 8*1 + 4*2 + 2*4 = 24 -> s0 = 4.
        assert_eq!(
            s,
            vec![
                Round {
                    trials: 8,
                    steps: 4
                },
                Round {
                    trials: 4,
                    steps: 8
                },
                Round {
                    trials: 2,
                    steps: 16
                }
            ]
        );
        let s = halving_schedule(5, 1000).unwrap();
        let counts: Vec<usize> = s.iter().map(|r| r.trials).collect();
        assert_eq!(counts, [5, 3, 2]);
        // 5 + 6 + 8 = 19 per s0.
        assert_eq!(s[0].steps, 1000 / 19);
        assert_eq!(
            halving_schedule(2, 3).unwrap(),
            [Round {
                trials: 2,
                steps: 1
            }]
        );
        assert_eq!(
            halving_schedule(1, 3).unwrap(),
            [Round {
                trials: 1,
                steps: 3
            }]
        );
        // 20 trials: 20, 10, 5, 3, 2 -> 20 + 20 + 20 + 24 + 32 = 116.
        assert_eq!(halving_schedule(20, 116).unwrap()[0].steps, 1);
        assert_eq!(
            halving_schedule(20, 115).unwrap_err(),
            SweepError::BudgetTooSmall {
                budget: 115,
                trials: 20,
                needed: 116
            }
        );
        // Within budget, always.
        for n in 1..40 {
            for b in [n as u64 * 3, 500, 1234] {
                if let Ok(s) = halving_schedule(n, b) {
                    let used: u64 = s.iter().map(|r| r.trials as u64 * r.steps).sum();
                    assert!(used <= b, "n {n} budget {b} uses {used}");
                    assert!(s.last().unwrap().trials <= 2);
                }
            }
        }
    }

    #[test]
    fn methods_parse_with_clear_errors() {
        assert_eq!(
            parse_methods("lora,prefix-tuning").unwrap(),
            [PeftMethod::Lora, PeftMethod::PrefixTuning]
        );
        assert_eq!(parse_methods(""), Err(SweepError::NoMethods));
        assert_eq!(parse_methods("lora,"), Err(SweepError::NoMethods));
        assert_eq!(
            parse_methods("lora,ia3"),
            Err(SweepError::UnknownMethod("ia3".into()))
        );
        assert!(parse_methods("lora,lora").is_err());
    }

    #[test]
    fn the_grid_varies_what_is_not_given() {
        let all = [
            PeftMethod::Lora,
            PeftMethod::PromptTuning,
            PeftMethod::PrefixTuning,
        ];
        let t = grid(&all, &TrainOptions::default(), &[]).unwrap();
        assert_eq!(t.len(), 8 + 4 + 6);
        assert_eq!(t[0].id, "t01-lora");
        assert_eq!(t[8].id, "t09-prompt-tuning");
        assert!(t.iter().all(|t| t.options.peft == t.method));
        assert!(t
            .iter()
            .all(|t| t.options.eval_split == NumOrText::Num(DEFAULT_EVAL_SPLIT)));
        let text = t
            .iter()
            .find(|t| t.options.prompt_tuning_init == PromptInit::Text)
            .unwrap();
        assert_eq!(
            text.options.prompt_tuning_init_text.as_deref(),
            Some(DEFAULT_INIT_TEXT)
        );
        // Given options fix their dimension.
        let base = TrainOptions {
            lora_r: 8,
            target_modules: Names::Text("q_proj".into()),
            ..TrainOptions::default()
        };
        let given = ["lora_r".to_string(), "target_modules".to_string()];
        let t = grid(&[PeftMethod::Lora], &base, &given).unwrap();
        assert_eq!(t.len(), 2);
        assert!(t.iter().all(|t| t.options.lora_r == 8));
        assert_eq!(t[0].label, "r=8 q_proj lr=2e-4");
        // Options no selected method accepts.
        let e = grid(&[PeftMethod::Lora], &base, &["num_virtual_tokens".into()]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--num-virtual-tokens applies to prompt-tuning,prefix-tuning, and --methods lora \
             includes none of them"
        );
        assert!(grid(&[PeftMethod::PromptTuning], &base, &["lora_r".into()]).is_err());
        assert!(grid(&all, &base, &["peft".into()]).is_err());
        assert!(grid(&all, &base, &["num_steps".into()]).is_err());
        let no_eval = TrainOptions {
            eval_split: NumOrText::Num(0.0),
            ..TrainOptions::default()
        };
        assert!(matches!(
            grid(&all, &no_eval, &["eval_split".into()]),
            Err(SweepError::NoEvalSplit(_))
        ));
        validate(&grid(&all, &TrainOptions::default(), &[]).unwrap(), 2).unwrap();
        // Text init with the projection: only when both are given, and then train refuses it.
        let both = TrainOptions {
            prefix_tuning_init: PromptInit::Text,
            prefix_projection: true,
            ..TrainOptions::default()
        };
        let given = [
            "prefix_tuning_init".to_string(),
            "prefix_projection".to_string(),
        ];
        let t = grid(&[PeftMethod::PrefixTuning], &both, &given).unwrap();
        assert!(matches!(validate(&t, 2), Err(SweepError::Trial { .. })));
        let text = TrainOptions {
            prefix_tuning_init: PromptInit::Text,
            ..TrainOptions::default()
        };
        let t = grid(&[PeftMethod::PrefixTuning], &text, &given[..1]).unwrap();
        assert_eq!(t.len(), 2);
        assert!(t.iter().all(|t| !t.options.prefix_projection));
    }

    #[test]
    fn train_flags_parse_back_to_the_same_options() {
        let all = [
            PeftMethod::Lora,
            PeftMethod::PromptTuning,
            PeftMethod::PrefixTuning,
        ];
        let base = TrainOptions {
            seq_len: 32,
            batch_size: 2,
            seed: 7,
            data_column: vec!["prompt=question".into()],
            use_rslora: true,
            ..TrainOptions::default()
        };
        for t in grid(&all, &base, &["use_rslora".into()]).unwrap() {
            let o = t.options_for(12);
            let mut argv = vec!["tinytune".to_string()];
            argv.extend(train_flags(&o));
            let parsed = TrainCli::try_parse_from(&argv).unwrap().o;
            assert_eq!(parsed, o, "{argv:?}");
        }
        assert_eq!(shell_quote("a b'c"), "'a b'\\''c'");
        assert_eq!(shell_quote("q_proj,v_proj"), "q_proj,v_proj");
    }

    #[test]
    fn rounds_keep_the_best_and_resume_where_they_stopped() {
        let all = [PeftMethod::Lora];
        let trials = grid(&all, &TrainOptions::default(), &[]).unwrap(); // 8
        let mut s = SweepState::new(serde_json::json!({"a": 1}), &trials, 24).unwrap();
        assert_eq!(s.schedule.len(), 3);
        let losses = [5.0, 3.0, 4.0, 1.0, 2.0, 6.0, 3.0, 7.0];
        // Round 0: every trial in order.
        for (i, &l) in losses.iter().enumerate() {
            assert_eq!(s.next(), Next::Run { round: 0, trial: i });
            // Trial 6 ties trial 1's loss with fewer parameters.
            let p = if i == 6 { 10 } else { 20 };
            s.record(result(&trials[i].id, 0, l, p));
        }
        // The best 4: losses 1 (3), 2 (4), 3 with fewer params (6)... then 3 (1).
        assert_eq!(s.survivors(1), Some(vec![1, 3, 4, 6]));
        assert_eq!(s.next(), Next::Run { round: 1, trial: 1 });
        for (i, l) in [(1, 0.5), (3, 0.9), (4, 0.7), (6, 0.8)] {
            s.record(result(&trials[i].id, 1, l, 20));
        }
        assert_eq!(s.survivors(2), Some(vec![1, 4]));
        assert_eq!(s.best_result(), None);
        s.record(result(&trials[1].id, 2, 0.4, 20));
        // Resume from the JSON: the one missing run is next.
        let back = SweepState::from_json(&s.to_json()).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.next(), Next::Run { round: 2, trial: 4 });
        s.record(result(&trials[4].id, 2, 0.3, 20));
        assert_eq!(s.next(), Next::Done);
        assert_eq!(s.best_result().unwrap().id, trials[4].id);
        let table: Vec<&str> = s.table().iter().map(|r| r.id.as_str()).collect();
        assert_eq!(table[0], trials[4].id);
        assert_eq!(table[1], trials[1].id);
        assert_eq!(table.len(), 8);
        // A non-finite loss ranks last.
        let mut nan = result("x", 0, f64::NAN, 1);
        nan.eval_loss = None;
        let r = result("y", 0, 9.0, 1000);
        let ranked = rank([&nan, &r], |_| 0);
        assert_eq!(ranked[0].id, "y");
        assert!(s.check_same(&serde_json::json!({"a": 2}), &trials).is_err());
        assert!(s.check_same(&serde_json::json!({"a": 1}), &trials).is_ok());
    }

    #[test]
    fn minutes_become_steps() {
        assert_eq!(steps_for_minutes(1.0, 0.5), 108);
        assert_eq!(steps_for_minutes(0.0, 0.5), 0);
        assert_eq!(steps_for_minutes(1.0, 0.0), 0);
    }
}
