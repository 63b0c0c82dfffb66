//! How a run starts and is driven, and how generation is set up: the decisions the CLI and the
//! browser module share. The hosts only parse arguments, print, and store files.
//!
//! - [`plan_run`]: a fresh run, one from an adapter, or a resumed checkpoint, from
//!   [`TrainOptions`].
//! - [`TrainSession`]: evaluates before training, steps, evaluates every `eval_every` steps and at
//!   the end (the eval split and the extra held-out sets of [`TrainSession::add_eval_set`]), and
//!   says when a checkpoint is due (every `save_every` steps, at the end, and on a stop once a step
//!   was taken).
//! - [`GenerateSession`]: renders the prompt with the chat template, checks the length cap, sizes
//!   the KV cache from the adapter (its virtual tokens included) and generates.

use tinytune_gpu::Gpu;
use tinytune_model::{
    stop_ids, GenerateOptions, Generated, KvDecoder, LlamaConfig, LlamaModel, Tokenizer,
};

use crate::adapters::{AdapterGpu, PeftAdapter};
use crate::chat::ChatMessage;
use crate::checkpoint::Checkpoint;
use crate::config::TrainConfig;
use crate::data::Dataset;
use crate::metrics::MetricsRecord;
use crate::model_tok::ModelTokenizer;
use crate::options::{GenOptions, TrainOptions};
use crate::trainer::{Clock, PrefixStart, PromptStart, Start, Trainer};
use crate::{Result, TrainError};

/// Where a run starts.
#[allow(clippy::large_enum_variant)] // one per run, consumed at once
pub enum RunFrom {
    /// A new adapter, initialised as the options say.
    Fresh,
    /// An existing adapter's weights (the CLI's `--adapter DIR`, the JS `"adapter": true`);
    /// `name` says which in errors.
    Adapter { adapter: PeftAdapter, name: String },
    /// A checkpointed run, continued with its own settings (the options are not used).
    Resume(Box<Checkpoint>),
}

/// A run ready to start: its config, how the trainer starts, and the warmup ratio to apply once
/// the number of steps is known.
pub struct RunPlan {
    pub config: TrainConfig,
    pub start: Start,
    pub warmup_ratio: Option<f64>,
}

impl RunPlan {
    /// Whether the run continues a checkpoint.
    pub fn resumed(&self) -> bool {
        matches!(self.start, Start::Resume(_))
    }
}

/// Checks the options and decides how the run starts. `data` names the dataset files (saved in
/// the config), `n_layers` checks `layers_to_transform`, `encode` tokenizes an init text.
pub fn plan_run(
    opts: &TrainOptions,
    from: RunFrom,
    base_model: &str,
    data: Vec<String>,
    n_layers: usize,
    encode: impl Fn(&str) -> std::result::Result<Vec<u32>, String>,
) -> std::result::Result<RunPlan, String> {
    match from {
        RunFrom::Resume(ck) => Ok(RunPlan {
            config: ck.config.clone(),
            start: Start::Resume(ck),
            warmup_ratio: None,
        }),
        RunFrom::Adapter { adapter, name } => {
            let method = adapter.method();
            if method != opts.peft {
                return Err(format!(
                    "{name} is a {m} adapter: pass --peft {m} (\"peft\": \"{m}\" in the JS API)",
                    m = method.name()
                ));
            }
            let config = opts.to_config(base_model, data, n_layers, true)?;
            let start = match adapter {
                PeftAdapter::Lora(a) => Start::Adapter(a),
                PeftAdapter::Prompt(a) => Start::Prompt(PromptStart::Adapter(a)),
                PeftAdapter::Prefix(a) => Start::Prefix(PrefixStart::Adapter(a)),
            };
            Ok(RunPlan {
                config,
                start,
                warmup_ratio: opts.warmup_ratio,
            })
        }
        RunFrom::Fresh => {
            let config = opts.to_config(base_model, data, n_layers, false)?;
            Ok(RunPlan {
                config,
                start: opts.peft_start(encode)?,
                warmup_ratio: opts.warmup_ratio,
            })
        }
    }
}

/// One optimizer step as the session reports it.
pub struct StepEvent {
    /// The step's metrics, with the eval loss when an evaluation was due.
    pub rec: MetricsRecord,
    pub total_steps: u64,
    /// The last step of the run.
    pub last: bool,
    /// A checkpoint is due now (every `save_every` steps, and at the end).
    pub checkpoint_due: bool,
}

/// A training run: the [`Trainer`] plus when to evaluate and save.
pub struct TrainSession<'g> {
    pub trainer: Trainer<'g>,
    resumed: bool,
    /// Extra held-out sets (`--eval-data NAME=FILE`), evaluated with the eval split.
    eval_sets: Vec<(String, Dataset)>,
}

/// Checks the name of an extra held-out set (`--eval-data NAME=FILE`, the JS `eval_data` keys):
/// it becomes a key of `metrics.jsonl`'s `eval_data` and a word of the log.
pub fn check_eval_set_name(name: &str) -> std::result::Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "eval set name {name:?}: use 1-64 letters, digits, '_', '-' or '.' (e.g. general)"
        ))
    }
}

/// Splits an `--eval-data NAME=FILE` argument.
pub fn parse_eval_data_arg(arg: &str) -> std::result::Result<(String, String), String> {
    let (name, file) = arg.split_once('=').ok_or_else(|| {
        format!("--eval-data {arg:?}: expected NAME=FILE, e.g. general=general.jsonl")
    })?;
    check_eval_set_name(name)?;
    if file.is_empty() {
        return Err(format!(
            "--eval-data {arg:?}: the file after '=' is missing"
        ));
    }
    Ok((name.to_string(), file.to_string()))
}

impl<'g> TrainSession<'g> {
    /// Sets up the trainer (which refuses a batch that cannot fit the device) and applies the
    /// warmup ratio to a new run (transformers: `ceil(warmup_ratio * max_steps)`).
    pub fn new(
        gpu: &'g Gpu,
        model: &'g LlamaModel,
        plan: RunPlan,
        data: Dataset,
        clock: Clock,
    ) -> Result<TrainSession<'g>> {
        let resumed = plan.resumed();
        let mut trainer = Trainer::new(gpu, model, plan.config, data, plan.start, clock)?;
        if let (Some(r), false) = (plan.warmup_ratio, resumed) {
            trainer.set_warmup_steps((r * trainer.total_steps() as f64).ceil() as u64)?;
        }
        Ok(TrainSession {
            trainer,
            resumed,
            eval_sets: Vec::new(),
        })
    }

    /// Adds an extra held-out set, evaluated before training, every `eval_every` steps and at
    /// the end along with the eval split (its loss goes in each record's `eval_data`). `data`
    /// must be built with the run's data config ([`TrainConfig::data_config`]).
    pub fn add_eval_set(&mut self, name: &str, data: Dataset) -> Result<()> {
        check_eval_set_name(name).map_err(TrainError::Config)?;
        if self.eval_sets.iter().any(|(n, _)| n == name) {
            return Err(TrainError::Config(format!(
                "two eval sets are named {name:?}: give each --eval-data (eval_data) set its own \
                 name"
            )));
        }
        if data.seq_len != self.trainer.config.seq_len {
            return Err(TrainError::Config(format!(
                "eval set {name:?} has examples of {} tokens, the run's seq_len is {}: build it \
                 with the run's data config",
                data.seq_len, self.trainer.config.seq_len
            )));
        }
        if data.examples.is_empty() {
            return Err(TrainError::Config(format!(
                "eval set {name:?} holds no examples"
            )));
        }
        self.eval_sets.push((name.to_string(), data));
        Ok(())
    }

    /// Whether anything is evaluated (an eval split or an extra set).
    fn evaluates(&self) -> bool {
        self.trainer.n_examples().1 > 0 || !self.eval_sets.is_empty()
    }

    /// Evaluates the eval split and the extra sets into `rec`.
    async fn evaluate_into(&mut self, mut rec: MetricsRecord) -> Result<MetricsRecord> {
        if let Some(l) = self.trainer.evaluate().await? {
            rec = rec.with_eval(l);
        }
        for (name, data) in &self.eval_sets {
            let l = self.trainer.evaluate_examples(&data.examples).await?;
            rec = rec.with_eval_set(name, l);
        }
        Ok(rec)
    }

    /// Whether the run continues a checkpoint.
    pub fn resumed(&self) -> bool {
        self.resumed
    }

    /// The evaluation before the first step of a new run with an eval split or extra eval sets:
    /// the step-0 record of `metrics.jsonl` ([`MetricsRecord::before_training`]); `None` when
    /// there is nothing to evaluate or the run continues a checkpoint.
    pub async fn eval_before(&mut self) -> Result<Option<MetricsRecord>> {
        if !self.evaluates() || self.trainer.state.global_step > 0 {
            return Ok(None);
        }
        self.evaluate_into(MetricsRecord::before_training())
            .await
            .map(Some)
    }

    /// The next optimizer step's event (`None` when the run is over), evaluating after it every
    /// `eval_every` steps and after the last one.
    ///
    /// Steps are pipelined: the session submits step N+1 before it waits for step N's report, so
    /// the GPU never runs dry while the host reads losses; it does not run ahead of a step after
    /// which it evaluates or a checkpoint is due (those see exactly step N's parameters). At most
    /// one step is in flight when this returns; a host that stops early takes its event with
    /// [`TrainSession::stop`].
    pub async fn step(&mut self) -> Result<Option<StepEvent>> {
        let tr = &mut self.trainer;
        if tr.in_flight() == 0 && !tr.submit_step()? {
            return Ok(None);
        }
        let oldest = tr.oldest_in_flight().unwrap_or(tr.state.global_step);
        if !self.pauses_after(oldest) {
            self.trainer.submit_step()?;
        }
        let Some(rec) = self.trainer.take_report().await? else {
            return Ok(None);
        };
        self.event(rec).await.map(Some)
    }

    /// The event of the step still in flight, if any, without submitting another: what a host
    /// that stops early reports before it saves (the trainer's state already counts that step).
    pub async fn stop(&mut self) -> Result<Option<StepEvent>> {
        match self.trainer.take_report().await? {
            Some(rec) => self.event(rec).await.map(Some),
            None => Ok(None),
        }
    }

    /// Whether the session waits after `step` (an evaluation, a checkpoint, or the end).
    fn pauses_after(&self, step: u64) -> bool {
        let c = &self.trainer.config;
        step >= self.trainer.total_steps()
            || (self.evaluates() && c.eval_every > 0 && step.is_multiple_of(c.eval_every))
            || (c.save_every > 0 && step.is_multiple_of(c.save_every))
    }

    /// A reported step as the session's event, evaluated when due.
    async fn event(&mut self, mut rec: MetricsRecord) -> Result<StepEvent> {
        let total = self.trainer.total_steps();
        let (eval_every, save_every) = (
            self.trainer.config.eval_every,
            self.trainer.config.save_every,
        );
        let step = rec.step;
        let last = step == total;
        // Never evaluate with a later step in flight (it would see that step's parameters).
        let alone = self.trainer.in_flight() == 0;
        if alone
            && self.evaluates()
            && ((eval_every > 0 && step.is_multiple_of(eval_every)) || last)
        {
            rec = self.evaluate_into(rec).await?;
        }
        Ok(StepEvent {
            rec,
            total_steps: total,
            last,
            checkpoint_due: alone && ((save_every > 0 && step.is_multiple_of(save_every)) || last),
        })
    }

    /// Whether a run stopped early has something to checkpoint (a step was taken).
    pub fn checkpoint_on_stop(&self) -> bool {
        self.trainer.state.global_step > 0
    }
}

/// The token ids of a text prompt: a user message (after `opts.system`) rendered with the chat
/// template and the generation prompt, or with `opts.raw` (or no template) the text as-is with
/// the tokenizer's special tokens.
pub fn prompt_ids(
    tok: &ModelTokenizer,
    prompt: &str,
    opts: &GenOptions,
) -> std::result::Result<Vec<u32>, String> {
    match (&tok.template, opts.raw) {
        (Some(t), false) => {
            let mut msgs = Vec::new();
            if let Some(s) = &opts.system {
                msgs.push(ChatMessage::new("system", s));
            }
            msgs.push(ChatMessage::new("user", prompt));
            let text = t
                .render(&msgs, true)
                .map_err(|e| format!("cannot render the prompt with the chat template: {e}"))?;
            // The template writes the special tokens itself (transformers' apply_chat_template
            // tokenizes without adding any).
            tok.tok.encode(&text, false).map_err(|e| e.to_string())
        }
        _ => {
            if opts.system.is_some() && !opts.raw {
                return Err("system needs a chat template, and the tokenizer has none".into());
            }
            tok.tok.encode(prompt, true).map_err(|e| e.to_string())
        }
    }
}

/// The KV cache's length for `n_ids` prompt tokens behind `virtual_tokens` virtual ones (a prompt
/// or prefix adapter's): `virtual + ids + max_new_tokens`, capped by `max_length` (default, and
/// at most, the model's `max_position_embeddings`). Errors when nothing can be generated.
pub fn kv_length(
    cfg: &LlamaConfig,
    n_ids: usize,
    virtual_tokens: usize,
    opts: &GenOptions,
) -> std::result::Result<usize, String> {
    if n_ids == 0 {
        return Err("the prompt has no tokens".into());
    }
    let cap = match opts.max_length {
        Some(0) => return Err("max_length must be positive".into()),
        Some(n) if n > cfg.max_position_embeddings => {
            return Err(format!(
                "max_length {n} exceeds the model's max_position_embeddings ({})",
                cfg.max_position_embeddings
            ))
        }
        Some(n) => n,
        None => cfg.max_position_embeddings,
    };
    if n_ids >= cap {
        return Err(format!(
            "the prompt has {n_ids} tokens: no room to generate within the {cap} tokens in all \
             that the model's max_position_embeddings (or max_length) allows"
        ));
    }
    if n_ids + virtual_tokens >= cap {
        return Err(format!(
            "the prompt's {n_ids} tokens and the adapter's {virtual_tokens} virtual tokens leave \
             no room to generate within {cap}"
        ));
    }
    Ok((virtual_tokens + n_ids + opts.max_new_tokens).min(cap))
}

/// A generation on the device: the prompt, a KV cache sized for it and the adapter's virtual
/// tokens, and the decoding settings.
pub struct GenerateSession<'a> {
    dec: KvDecoder<'a>,
    ids: Vec<u32>,
    opts: GenerateOptions,
}

impl<'a> GenerateSession<'a> {
    /// Sets up generation after `ids` with `adapter` (LoRA, prompt or prefix tuning; `None`: the
    /// base model). `tok` adds its end-of-sequence id to the model's stop ids.
    pub fn new(
        gpu: &'a Gpu,
        model: &'a LlamaModel,
        tok: Option<&Tokenizer>,
        adapter: Option<&'a AdapterGpu>,
        ids: Vec<u32>,
        opts: &GenOptions,
    ) -> std::result::Result<GenerateSession<'a>, String> {
        let sampling = opts.sampling();
        sampling.validate().map_err(|e| e.to_string())?;
        let virt = adapter.map_or(0, AdapterGpu::virtual_tokens);
        let max_len = kv_length(&model.config, ids.len(), virt, opts)?;
        let dec = KvDecoder::new(gpu, model, adapter.map(AdapterGpu::peft), max_len)
            .map_err(|e| e.to_string())?;
        Ok(GenerateSession {
            dec,
            ids,
            opts: GenerateOptions {
                max_new_tokens: opts.max_new_tokens,
                sampling,
                stop_ids: stop_ids(model, tok),
            },
        })
    }

    /// The prompt's token ids.
    pub fn prompt(&self) -> &[u32] {
        &self.ids
    }

    /// Generates; `on_token` gets every new token (return `false` to stop).
    pub async fn run(&mut self, on_token: impl FnMut(u32) -> bool) -> Result<Generated> {
        Ok(self.dec.generate(&self.ids, &self.opts, on_token).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> LlamaConfig {
        LlamaConfig::from_json(
            &std::fs::read_to_string(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../tests/fixtures/model/llama_hf/config.json"
            ))
            .unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn the_kv_cache_holds_the_virtual_tokens_too() {
        let cfg = config(); // max_position_embeddings 256
        let opts = |max_new_tokens, max_length| GenOptions {
            max_new_tokens,
            max_length,
            ..GenOptions::default()
        };
        // Fewer new tokens than virtual tokens: all of them still fit.
        assert_eq!(kv_length(&cfg, 30, 8, &opts(3, None)), Ok(41));
        assert_eq!(kv_length(&cfg, 30, 0, &opts(3, None)), Ok(33));
        // Capped by max_length, then by the model.
        assert_eq!(kv_length(&cfg, 30, 8, &opts(100, Some(64))), Ok(64));
        assert_eq!(kv_length(&cfg, 30, 8, &opts(1000, None)), Ok(256));
        let e = kv_length(&cfg, 30, 8, &opts(3, Some(38))).unwrap_err();
        assert!(e.contains("8 virtual tokens"), "{e}");
        assert!(kv_length(&cfg, 30, 0, &opts(3, Some(30))).is_err());
        assert!(kv_length(&cfg, 3, 0, &opts(3, Some(257)))
            .unwrap_err()
            .contains("max_position_embeddings"));
        assert!(kv_length(&cfg, 0, 0, &opts(3, None)).is_err());
    }
}
