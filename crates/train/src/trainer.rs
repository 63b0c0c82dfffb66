//! The training loop: LoRA adapters over a frozen (f32 or NF4) [`LlamaModel`], trained on the
//! device with AdamW over one flat parameter buffer.
//!
//! One optimizer step = `grad_accum` micro-batches of `batch_size` rows: the LoRA gradients of
//! every micro-batch accumulate, scaled by `1 / (targets in the whole step)` (the gradient of the
//! token-weighted mean loss, as transformers' Trainer does with `num_items_in_batch`), then one
//! `optim/grad_norm` + `optim/adamw_step` dispatch updates the flat state (params, grads, Adam
//! moments share one layout) and the pairs are refreshed from it.
//!
//! Batches are trimmed to their longest row (rows are right-padded, so later positions cannot
//! change earlier ones under the causal mask). Time comes from a caller-provided clock so the same
//! loop runs in a browser.

use tinytune_gpu::ops::optim::{self, AdamW};
use tinytune_gpu::{Gpu, GpuBuffer, PendingRead};
use tinytune_model::llama::LoraDropout;
use tinytune_model::{f32_bytes, LlamaModel, LoraGpu, Mode, Peft, PrefixGpu, PromptGpu, Workspace};

use crate::adapters::{host_lora, AdapterGpu, PeftAdapter, PeftMethod};
use crate::checkpoint::{Checkpoint, Moments, OptimizerState, TrainerState, CHECKPOINT_VERSION};
use crate::config::{check_layers, TrainConfig};
use crate::data::{
    collate, prompt_targets, shift_labels, split_eval, BatchIter, BatchPlan, DataPosition, Dataset,
    Example, Stop,
};
use crate::metrics::MetricsRecord;
use crate::peft::{LoraAdapter, LoraKey, LoraModule, LoraWeights};
use crate::prefix::{PrefixAdapter, PrefixTuningConfig};
use crate::prompt::{PromptAdapter, PromptTuningConfig};
use crate::rng::Rng;
use crate::schedule::Schedule;
use crate::{Result, TrainError};

/// How a run starts.
pub enum Start {
    /// PEFT's default init of a new adapter (seeded by `config.seed`).
    Fresh,
    /// From an existing adapter's weights (`train --adapter DIR`); its config (rank, alpha,
    /// targets, rsLoRA) replaces the run's LoRA settings.
    Adapter(LoraAdapter),
    /// Continue a checkpointed run: same adapter, optimizer state, data order and step count.
    Resume(Box<Checkpoint>),
    /// Prompt tuning (PEFT `PROMPT_TUNING`) instead of LoRA.
    Prompt(PromptStart),
    /// Prefix tuning (PEFT `PREFIX_TUNING`) instead of LoRA.
    Prefix(PrefixStart),
}

/// How a prefix-tuning run starts.
pub enum PrefixStart {
    /// A `[num_virtual_tokens, L*2*KVD]` prefix drawn from N(0, 1) (PEFT's default init of its
    /// `nn.Embedding`), seeded by `config.seed`.
    Random { num_virtual_tokens: usize },
    /// The keys and values every layer computes for `ids` (the tokenized `text`, repeated or cut
    /// to `num_virtual_tokens`) at positions `0..P`: the model starts out as if the text were in
    /// context ([`PrefixGpu::from_text`]; not a PEFT option, the adapter is a plain prefix).
    Text {
        num_virtual_tokens: usize,
        ids: Vec<u32>,
        text: String,
    },
    /// From a saved prefix-tuning adapter (a projection, if it had one, is folded in).
    Adapter(PrefixAdapter),
    /// Through PEFT's reparameterisation (`prefix_projection=True`): `num_virtual_tokens`
    /// embeddings of the KV width and a two-layer MLP (hidden size `encoder_hidden_size`, default
    /// the KV width) produce the prefix; they are what trains, initialised as torch does (N(0, 1)
    /// embeddings, `nn.Linear`'s uniform init), seeded by `config.seed`.
    Projected {
        num_virtual_tokens: usize,
        encoder_hidden_size: Option<usize>,
    },
    /// A checkpointed projection run: its adapter config and the projection's flat parameters.
    ProjectedParams {
        config: PrefixTuningConfig,
        params: Vec<f32>,
    },
}

/// Prompt or prefix tuning's initialisation, as `--prompt-tuning-init` /
/// `--prefix-tuning-init` (and the JS API's keys of the same names) give it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VirtualInit {
    /// N(0, 1), PEFT's `RANDOM`.
    Random,
    /// From a text (`None`: not given, an error).
    Text(Option<String>),
}

impl Start {
    /// How a fresh run of `method` starts: [`Start::Fresh`] for LoRA, else `num_virtual_tokens`
    /// virtual tokens initialised as `prompt_init` / `prefix_init` say (`encode` tokenizes an init
    /// text); `prefix_projection` (`Some(encoder_hidden_size)`) trains the prefix through PEFT's
    /// MLP. Shared by the CLI's flags and the JS API's options.
    pub fn fresh(
        method: PeftMethod,
        num_virtual_tokens: usize,
        prompt_init: &VirtualInit,
        prefix_init: &VirtualInit,
        prefix_projection: Option<Option<usize>>,
        encode: impl Fn(&str) -> std::result::Result<Vec<u32>, String>,
    ) -> Result<Start> {
        let p = num_virtual_tokens;
        let text = |init: &VirtualInit, flag: &str| -> Result<Option<(Vec<u32>, String)>> {
            match init {
                VirtualInit::Random => Ok(None),
                VirtualInit::Text(None) => Err(cfg_err(format!(
                    "{flag} text needs an init text (--{flag}-text; {}_text in the JS API)",
                    flag.replace('-', "_")
                ))),
                VirtualInit::Text(Some(t)) => {
                    let ids = encode(t)
                        .map_err(|e| cfg_err(format!("cannot tokenize the {flag} text: {e}")))?;
                    Ok(Some((ids, t.clone())))
                }
            }
        };
        Ok(match method {
            PeftMethod::Lora => Start::Fresh,
            PeftMethod::PromptTuning => {
                Start::Prompt(match text(prompt_init, "prompt-tuning-init")? {
                    None => PromptStart::Random {
                        num_virtual_tokens: p,
                    },
                    Some((ids, text)) => PromptStart::Text {
                        num_virtual_tokens: p,
                        ids,
                        text,
                    },
                })
            }
            PeftMethod::PrefixTuning => {
                Start::Prefix(
                    match (text(prefix_init, "prefix-tuning-init")?, prefix_projection) {
                        (None, None) => PrefixStart::Random {
                            num_virtual_tokens: p,
                        },
                        (None, Some(e)) => PrefixStart::Projected {
                            num_virtual_tokens: p,
                            encoder_hidden_size: e,
                        },
                        (Some((ids, text)), None) => PrefixStart::Text {
                            num_virtual_tokens: p,
                            ids,
                            text,
                        },
                        (Some(_), Some(_)) => return Err(cfg_err(
                            "prefix projection trains from PEFT's random init: give a text init \
                             or the projection, not both",
                        )),
                    },
                )
            }
        })
    }
}

/// `N(0, 1)` draws (Box-Muller) from the run's seed, as `nn.Embedding` initialises.
fn normal_init(seed: u64, stream: u64, n: usize) -> Vec<f32> {
    let mut rng = Rng::stream(seed, stream);
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        let u1 = rng.next_f64().max(f64::MIN_POSITIVE);
        let u2 = rng.next_f64();
        let r = (-2.0 * u1.ln()).sqrt();
        let th = 2.0 * std::f64::consts::PI * u2;
        out.push((r * th.cos()) as f32);
        out.push((r * th.sin()) as f32);
    }
    out.truncate(n);
    out
}

/// How a prompt-tuning run starts.
pub enum PromptStart {
    /// `num_virtual_tokens` embeddings drawn from N(0, 1) (PEFT's `RANDOM`, `nn.Embedding`'s init),
    /// seeded by `config.seed`.
    Random { num_virtual_tokens: usize },
    /// The embeddings of `ids` (the tokenized `text`), repeated or cut to `num_virtual_tokens`
    /// (PEFT's `TEXT` init).
    Text {
        num_virtual_tokens: usize,
        ids: Vec<u32>,
        text: String,
    },
    /// From a saved prompt-tuning adapter.
    Adapter(PromptAdapter),
}

/// Seconds on some monotonic clock (`Instant` natively, `performance.now()` in a browser).
pub type Clock = Box<dyn Fn() -> f64>;

/// The flat optimizer state on the device.
struct Flat {
    /// Elements the optimizer runs over (LoRA's flat layout has alignment gaps).
    len: usize,
    params: GpuBuffer,
    grads: GpuBuffer,
    m: GpuBuffer,
    v: GpuBuffer,
    norm: GpuBuffer,
}

/// A training run in progress.
pub struct Trainer<'g> {
    gpu: &'g Gpu,
    model: &'g LlamaModel,
    pub config: TrainConfig,
    /// What the run trains (LoRA pairs, a prompt or a prefix) with the config it is saved with.
    adapter: AdapterGpu,
    ws: Workspace,
    flat: Flat,
    /// What one step reports, read back after its one submission: each micro-batch's per-row
    /// losses (`[grad_accum, workspace rows]`), then the gradient norm. One buffer serves every
    /// step: a step's copy into its staging buffer runs before the next step writes here.
    report: GpuBuffer,
    /// Steps submitted whose reports were not taken yet, oldest first.
    in_flight: std::collections::VecDeque<InFlight<'g>>,
    pub state: TrainerState,
    schedule: Schedule,
    train: Vec<Example>,
    eval: Vec<Example>,
    batches: BatchIter,
    clock: Clock,
    /// `clock()` at construction minus the elapsed time of a resumed run.
    t0: f64,
}

/// A submitted step whose report (losses, gradient norm) the host has not taken yet.
struct InFlight<'g> {
    read: PendingRead<'g>,
    step: u64,
    lr: f64,
    tokens: u64,
    /// Target tokens of the step (the loss's denominator).
    targets: usize,
    /// Where each micro-batch's loss rows are in the report: `(start, rows)`.
    loss_rows: Vec<(usize, usize)>,
}

/// Error for an unsupported or inconsistent setting.
fn cfg_err(msg: impl Into<String>) -> TrainError {
    TrainError::Config(msg.into())
}

/// The `(key, in, out)` of every projection `lora` adapts in `model`.
fn lora_shapes(
    model: &LlamaModel,
    targets: &[LoraModule],
    layers: Option<&[usize]>,
) -> Vec<(LoraKey, usize, usize)> {
    let mut out = Vec::new();
    for (layer, l) in model.layers.iter().enumerate() {
        if layers.is_some_and(|ls| !ls.contains(&layer)) {
            continue;
        }
        for (t, module) in LoraModule::ALL.iter().enumerate() {
            if targets.contains(module) {
                let lin = &l.linears[t];
                out.push((
                    LoraKey {
                        layer,
                        module: *module,
                    },
                    lin.n_in,
                    lin.n_out,
                ));
            }
        }
    }
    out
}

/// The initial prompt of a prompt-tuning run and the config it is saved with.
fn init_prompt(
    gpu: &Gpu,
    model: &LlamaModel,
    config: &TrainConfig,
    start: PromptStart,
) -> Result<(PromptGpu, PromptTuningConfig)> {
    let cfg = &model.config;
    let c = cfg.hidden_size;
    let mut pcfg = PromptTuningConfig {
        num_virtual_tokens: 0,
        token_dim: c,
        num_attention_heads: cfg.num_attention_heads,
        num_layers: cfg.num_hidden_layers,
        prompt_tuning_init: "RANDOM".into(),
        prompt_tuning_init_text: None,
        tokenizer_name_or_path: None,
        base_model_name_or_path: (!config.base_model.is_empty()).then(|| config.base_model.clone()),
        revision: None,
        inference_mode: true,
    };
    let check = |p: usize| {
        if p == 0 {
            Err(cfg_err("num_virtual_tokens must be at least 1"))
        } else {
            Ok(p)
        }
    };
    let pg = match start {
        PromptStart::Random { num_virtual_tokens } => {
            let p = check(num_virtual_tokens)?;
            let emb = normal_init(config.seed, 0x7072_6f6d_7074, p * c);
            pcfg.num_virtual_tokens = p;
            PromptGpu::upload(gpu, &emb, p, c)?
        }
        PromptStart::Text {
            num_virtual_tokens,
            ids,
            text,
        } => {
            let p = check(num_virtual_tokens)?;
            if ids.is_empty() {
                return Err(cfg_err("the prompt-tuning init text has no tokens"));
            }
            // PEFT: the text's ids, repeated to cover P, then cut to P.
            let ids: Vec<u32> = ids.iter().copied().cycle().take(p).collect();
            let pg = PromptGpu::upload(gpu, &vec![0.0; p * c], p, c)?;
            let ids_buf = gpu.upload("prompt.init_ids", &ids)?;
            let mut enc = gpu.encoder();
            model.embed.embed(&mut enc, &ids_buf, &pg.emb, p)?;
            enc.submit();
            pcfg.num_virtual_tokens = p;
            pcfg.prompt_tuning_init = "TEXT".into();
            pcfg.prompt_tuning_init_text = Some(text);
            pcfg.tokenizer_name_or_path = pcfg.base_model_name_or_path.clone();
            pg
        }
        PromptStart::Adapter(a) => {
            if a.config.token_dim != c {
                return Err(cfg_err(format!(
                    "the prompt adapter's token_dim is {}, the model's hidden size {c}",
                    a.config.token_dim
                )));
            }
            let p = check(a.config.num_virtual_tokens)?;
            pcfg = a.config.clone();
            if !config.base_model.is_empty() {
                pcfg.base_model_name_or_path = Some(config.base_model.clone());
            }
            PromptGpu::upload(gpu, &a.embeddings, p, c)?
        }
    };
    Ok((pg, pcfg))
}

/// The initial prefix of a prefix-tuning run and the config it is saved with.
fn init_prefix(
    gpu: &Gpu,
    model: &LlamaModel,
    config: &TrainConfig,
    start: PrefixStart,
) -> Result<(PrefixGpu, PrefixTuningConfig)> {
    let mcfg = &model.config;
    let check = |p: usize| {
        if p == 0 {
            Err(cfg_err("num_virtual_tokens must be at least 1"))
        } else {
            Ok(p)
        }
    };
    let (pf, mut pcfg) = match start {
        PrefixStart::Random { num_virtual_tokens } => {
            let p = check(num_virtual_tokens)?;
            let pcfg = PrefixTuningConfig::for_model(mcfg, p, false, None);
            let kv = normal_init(config.seed, 0x7072_6566_6978, p * pcfg.row_len());
            (PrefixGpu::upload(gpu, mcfg, &kv, p)?, pcfg)
        }
        PrefixStart::Text {
            num_virtual_tokens,
            ids,
            text: _,
        } => {
            let p = check(num_virtual_tokens)?;
            if ids.is_empty() {
                return Err(cfg_err("the prefix-tuning init text has no tokens"));
            }
            // As PEFT's TEXT init of prompt tuning: the ids repeated to cover P, then cut to P.
            let ids: Vec<u32> = ids.iter().copied().cycle().take(p).collect();
            let pcfg = PrefixTuningConfig::for_model(mcfg, p, false, None);
            (PrefixGpu::from_text(gpu, model, &ids)?, pcfg)
        }
        PrefixStart::Adapter(a) => {
            a.config.check_model(mcfg)?;
            let mut pcfg = a.config;
            // The saved tensor is the (folded) prefix: training goes on without a projection.
            pcfg.prefix_projection = false;
            let p = pcfg.num_virtual_tokens;
            (PrefixGpu::upload(gpu, mcfg, &a.prefix, p)?, pcfg)
        }
        PrefixStart::Projected {
            num_virtual_tokens,
            encoder_hidden_size,
        } => {
            let p = check(num_virtual_tokens)?;
            if encoder_hidden_size == Some(0) {
                return Err(cfg_err("encoder_hidden_size must be at least 1"));
            }
            let pcfg = PrefixTuningConfig::for_model(mcfg, p, true, encoder_hidden_size);
            let (t, e, n) = (pcfg.token_dim, pcfg.encoder_hidden_size, pcfg.row_len());
            // torch: nn.Embedding ~ N(0, 1); nn.Linear weight and bias ~ U(-1/sqrt(in), 1/sqrt(in)).
            let mut params = normal_init(config.seed, 0x7072_6f6a_656d, p * t);
            let mut rng = Rng::stream(config.seed, 0x7072_6f6a_6d6c);
            for (count, fan_in) in [(e * t + e, t), (n * e + n, e)] {
                let bound = 1.0 / (fan_in as f64).sqrt();
                params.extend((0..count).map(|_| ((rng.next_f64() * 2.0 - 1.0) * bound) as f32));
            }
            (PrefixGpu::with_projection(gpu, mcfg, &params, p, e)?, pcfg)
        }
        PrefixStart::ProjectedParams {
            config: pcfg,
            params,
        } => {
            pcfg.check_model(mcfg)?;
            let p = check(pcfg.num_virtual_tokens)?;
            let e = pcfg.encoder_hidden_size;
            (PrefixGpu::with_projection(gpu, mcfg, &params, p, e)?, pcfg)
        }
    };
    if !config.base_model.is_empty() {
        pcfg.base_model_name_or_path = Some(config.base_model.clone());
    }
    Ok((pf, pcfg))
}

/// A batch ready for the model: trimmed to its longest row, targets shifted.
pub struct ModelBatch {
    pub ids: Vec<u32>,
    /// Per-position targets (already shifted; -100 = ignored).
    pub targets: Vec<i32>,
    pub rows: usize,
    pub t: usize,
    /// Real (non-padding) tokens.
    pub n_tokens: usize,
    /// The labels, unshifted (Hugging Face convention), trimmed like `ids`.
    pub labels: Vec<i32>,
}

impl ModelBatch {
    /// The targets of a pass with `peft`: one per row the model runs, so over the virtual and
    /// the real positions for prompt tuning, as PEFT builds them.
    pub fn targets_for(&self, peft: Peft<'_>) -> Vec<i32> {
        match peft.prompt() {
            Some(pg) => prompt_targets(&self.labels, self.rows, self.t, pg.p),
            None => self.targets.clone(),
        }
    }
}

/// The examples `indices` as a [`ModelBatch`].
pub fn trimmed(examples: &[Example], indices: &[usize]) -> Result<ModelBatch> {
    let b = collate(examples, indices)?;
    let t = indices
        .iter()
        .map(|&i| examples[i].len)
        .max()
        .unwrap_or(0)
        .clamp(1, b.seq_len);
    let mut ids = Vec::with_capacity(b.rows * t);
    let mut labels = Vec::with_capacity(b.rows * t);
    for r in 0..b.rows {
        ids.extend_from_slice(&b.input_ids[r * b.seq_len..r * b.seq_len + t]);
        labels.extend_from_slice(&b.labels[r * b.seq_len..r * b.seq_len + t]);
    }
    let targets = shift_labels(&labels, b.rows, t);
    Ok(ModelBatch {
        ids,
        targets,
        rows: b.rows,
        t,
        n_tokens: b.n_tokens,
        labels,
    })
}

fn count_targets(targets: &[i32], v: usize) -> usize {
    targets
        .iter()
        .filter(|&&t| t >= 0 && (t as usize) < v)
        .count()
}

/// Checks before allocating that one training micro-batch's activations fit: `batch_size` ×
/// (`seq_len` + `virtual_tokens`) rows of `widest` f32s (the model's widest activation: hidden,
/// attention or MLP width) must fit one storage binding of `limit` bytes. Computed in u64: on
/// wasm32 the workspace's own sizes (usize) would wrap around instead.
pub fn check_batch_fits(
    batch_size: usize,
    seq_len: usize,
    virtual_tokens: usize,
    widest: usize,
    limit: u64,
) -> std::result::Result<(), String> {
    let rows = (batch_size as u64).saturating_mul(seq_len as u64 + virtual_tokens as u64);
    let bytes = rows.saturating_mul(widest as u64).saturating_mul(4);
    if bytes <= limit {
        return Ok(());
    }
    let fit = (limit / (widest as u64 * 4)).max(1);
    Err(format!(
        "batch_size {batch_size} x seq_len {seq_len}{} = {rows} rows need {bytes} bytes per \
         activation buffer ({widest} floats a row), but the device allows at most {limit} bytes \
         per buffer. This does not fit the GPU: use a smaller batch_size or seq_len (batch_size \
         x seq_len at most {fit}), or a smaller model.",
        if virtual_tokens > 0 {
            format!(" (+ {virtual_tokens} virtual tokens)")
        } else {
            String::new()
        }
    ))
}

impl<'g> Trainer<'g> {
    /// Sets up a run over `data` (split into train/eval by `config.eval_split`).
    pub fn new(
        gpu: &'g Gpu,
        model: &'g LlamaModel,
        mut config: TrainConfig,
        data: Dataset,
        start: Start,
        clock: Clock,
    ) -> Result<Trainer<'g>> {
        if config.grad_accum == 0 || config.batch_size == 0 {
            return Err(cfg_err(
                "batch size and gradient accumulation must be at least 1",
            ));
        }
        // The run's compute dtype for every kernel recorded from here on: the config's, else the
        // device's default (not whatever an earlier run on the same device set).
        let dtype = match &config.compute_dtype {
            Some(d) => crate::config::parse_compute_dtype(d).map_err(cfg_err)?,
            None => gpu.default_compute_dtype(),
        };
        gpu.set_compute_dtype(dtype)?;
        // Refuse a micro-batch whose activations cannot fit one binding before allocating.
        let c = &model.config;
        let widest = c
            .hidden_size
            .max(c.num_attention_heads * c.head_dim)
            .max(c.intermediate_size);
        // Prompt tuning prepends its virtual tokens to every row (prefix tuning does not).
        let virtual_rows = match &start {
            Start::Prompt(PromptStart::Random { num_virtual_tokens })
            | Start::Prompt(PromptStart::Text {
                num_virtual_tokens, ..
            }) => *num_virtual_tokens,
            Start::Prompt(PromptStart::Adapter(a)) => a.config.num_virtual_tokens,
            Start::Resume(ck) if matches!(ck.adapter, PeftAdapter::Prompt(_)) => {
                ck.adapter.virtual_tokens()
            }
            _ => 0,
        };
        check_batch_fits(
            config.batch_size,
            config.seq_len,
            virtual_rows,
            widest,
            gpu.max_binding().min(u32::MAX as u64),
        )
        .map_err(TrainError::DeviceLimit)?;
        let mut soft_start = None;
        let (weights, lora_config, opt, resumed) = match start {
            Start::Prompt(_) | Start::Prefix(_) => {
                soft_start = Some(start);
                (LoraWeights::default(), config.lora_config(), None, None)
            }
            Start::Fresh => {
                if config.lora.r == 0 {
                    return Err(cfg_err("LoRA rank must be at least 1"));
                }
                if config.lora.targets.is_empty() {
                    return Err(cfg_err("no LoRA target modules"));
                }
                if let Some(ls) = &config.lora.layers_to_transform {
                    check_layers(ls.clone(), model.layers.len())?;
                }
                let w = LoraWeights::init(
                    lora_shapes(
                        model,
                        &config.lora.targets,
                        config.lora.layers_to_transform.as_deref(),
                    ),
                    config.lora.r,
                    config.seed,
                );
                (w, config.lora_config(), None, None)
            }
            Start::Adapter(a) => {
                config.lora.r = a.config.r;
                config.lora.alpha = a.config.lora_alpha;
                config.lora.use_rslora = a.config.use_rslora;
                config.lora.layers_to_transform = a.config.layers_to_transform.clone();
                config.lora.targets = LoraModule::ALL
                    .into_iter()
                    .filter(|m| a.weights.pairs.keys().any(|k| k.module == *m))
                    .collect();
                let mut lc = a.config.clone();
                lc.lora_dropout = config.lora.dropout;
                if !config.base_model.is_empty() {
                    lc.base_model_name_or_path = Some(config.base_model.clone());
                }
                (a.weights, lc, None, None)
            }
            Start::Resume(ck) => {
                let ck = *ck;
                let (opt, state) = (Some(ck.optimizer), Some(ck.state));
                match ck.adapter {
                    PeftAdapter::Lora(a) => (a.weights, a.config, opt, state),
                    PeftAdapter::Prompt(a) => {
                        soft_start = Some(Start::Prompt(PromptStart::Adapter(a)));
                        (LoraWeights::default(), config.lora_config(), opt, state)
                    }
                    PeftAdapter::Prefix(a) => {
                        soft_start = Some(Start::Prefix(match ck.projection {
                            Some(params) => PrefixStart::ProjectedParams {
                                config: a.config,
                                params,
                            },
                            None => PrefixStart::Adapter(a),
                        }));
                        (LoraWeights::default(), config.lora_config(), opt, state)
                    }
                }
            }
        };
        if !(0.0..1.0).contains(&config.lora.dropout) {
            return Err(cfg_err(format!(
                "lora_dropout must be in [0, 1), got {}",
                config.lora.dropout
            )));
        }
        let adapter = match soft_start {
            Some(Start::Prompt(ps)) => {
                let (pg, pc) = init_prompt(gpu, model, &config, ps)?;
                AdapterGpu::Prompt(pg, pc)
            }
            Some(Start::Prefix(ps)) => {
                let (pf, pc) = init_prefix(gpu, model, &config, ps)?;
                AdapterGpu::Prefix(pf, pc)
            }
            _ => {
                let host = host_lora(model, &weights, lora_config.scale())?;
                AdapterGpu::Lora(LoraGpu::upload(gpu, model, &host)?, lora_config)
            }
        };
        let n = adapter.n_params();
        if n == 0 {
            return Err(cfg_err("the adapter has no trainable parameters"));
        }
        // The optimizer updates the adapter's own buffers in place: LoRA's flat parameters and
        // gradients (each pair's tensors are views of them), the virtual tokens' buffers.
        let (len, params, grads) = match &adapter {
            AdapterGpu::Lora(lora, _) => (lora.flat_len, lora.params.clone(), lora.grads.clone()),
            AdapterGpu::Prompt(pg, _) => (n, pg.emb.clone(), pg.grad.clone()),
            AdapterGpu::Prefix(pf, _) => {
                let (p, g) = pf.trainable();
                (n, p.clone(), g.clone())
            }
        };
        let flat = Flat {
            len,
            params,
            grads,
            m: gpu.alloc("adam.exp_avg", f32_bytes(&[len]))?,
            v: gpu.alloc("adam.exp_avg_sq", f32_bytes(&[len]))?,
            norm: gpu.alloc("grad_norm", 4)?,
        };
        if let Some(o) = &opt {
            for (moment, buf) in [(&o.m, &flat.m), (&o.v, &flat.v)] {
                let values = match (moment, &adapter) {
                    (Moments::Lora(w), AdapterGpu::Lora(lora, _)) => {
                        lora.flatten(&host_lora(model, w, 1.0)?)?
                    }
                    (Moments::Embeddings(_, v), _) => v.clone(),
                    (Moments::Lora(_), _) => {
                        return Err(cfg_err(
                            "the checkpoint's optimizer state is LoRA's, its adapter is not",
                        ))
                    }
                };
                if values.len() != len {
                    return Err(cfg_err(format!(
                        "the checkpoint's optimizer state has {} values for {len} parameters",
                        values.len()
                    )));
                }
                gpu.write(buf, 0, bytemuck_f32(&values));
            }
        }

        // Data: eval split, batch plan over micro-batches, total optimizer steps.
        let seq_len = data.seq_len;
        let (train, eval) = split_eval(data.examples, config.eval_split, config.seed)?;
        if train.is_empty() {
            return Err(cfg_err("no training examples"));
        }
        if config.seq_len != seq_len {
            config.seq_len = seq_len;
        }
        let plan = BatchPlan::new(train.len(), config.batch_size, config.seed)?;
        let ga = config.grad_accum as u64;
        let (micro_stop, total_steps) = match config.stop {
            Stop::Steps(s) => (Stop::Steps(s * ga), s),
            Stop::Epochs(e) => (
                Stop::Epochs(e),
                (e * plan.batches_per_epoch() as u64).div_ceil(ga),
            ),
        };
        if total_steps == 0 {
            return Err(cfg_err("the run has 0 optimizer steps"));
        }
        let schedule = config.schedule(total_steps)?;
        let state = match resumed {
            Some(s) => {
                if s.n_train_examples != train.len() || s.data_seed != config.seed {
                    return Err(cfg_err(format!(
                        "the checkpoint was trained on {} examples with seed {}, now {} with seed {}: \
                         the data order cannot be resumed (use the same data, eval split and seed)",
                        s.n_train_examples,
                        s.data_seed,
                        train.len(),
                        config.seed
                    )));
                }
                s
            }
            None => TrainerState {
                version: CHECKPOINT_VERSION,
                global_step: 0,
                position: DataPosition::default(),
                rng_state: crate::rng::mix64(config.seed ^ 0x6C6F_7261_5F64_726F),
                data_seed: config.seed,
                n_train_examples: train.len(),
                total_steps,
                tokens_seen: 0,
                elapsed_s: 0.0,
                last_lr: 0.0,
                best_eval_loss: None,
            },
        };
        let batches = plan.iter(state.position, state.global_step * ga, micro_stop)?;
        let mode = if config.gradient_checkpointing {
            Mode::Checkpointed
        } else {
            Mode::Training
        };
        let ws = Workspace::for_batch(
            gpu,
            model,
            Some(adapter.peft()),
            config.batch_size,
            seq_len,
            mode,
        )?;
        let report = gpu.alloc("step.report", f32_bytes(&[config.grad_accum * ws.rows + 1]))?;
        let t0 = clock() - state.elapsed_s;
        Ok(Trainer {
            gpu,
            model,
            config,
            adapter,
            ws,
            flat,
            report,
            in_flight: Default::default(),
            state,
            schedule,
            train,
            eval,
            batches,
            clock,
            t0,
        })
    }

    /// Optimizer steps of the whole run.
    pub fn total_steps(&self) -> u64 {
        self.state.total_steps
    }

    /// Sets the warmup (e.g. from a ratio of [`Trainer::total_steps`]) before the first step.
    pub fn set_warmup_steps(&mut self, warmup_steps: u64) -> Result<()> {
        if self.state.global_step > 0 {
            return Err(cfg_err("the warmup can only change before the first step"));
        }
        self.config.warmup_steps = warmup_steps;
        self.schedule = self.config.schedule(self.state.total_steps)?;
        Ok(())
    }

    /// Number of trainable parameters.
    pub fn n_params(&self) -> usize {
        self.adapter.n_params()
    }

    /// Virtual tokens of a prompt- or prefix-tuning run (0 for LoRA).
    pub fn virtual_tokens(&self) -> usize {
        self.adapter.virtual_tokens()
    }

    /// The PEFT method this run trains.
    pub fn method(&self) -> PeftMethod {
        self.adapter.method()
    }

    /// Training and eval example counts.
    pub fn n_examples(&self) -> (usize, usize) {
        (self.train.len(), self.eval.len())
    }

    /// The adapter on the device (for generation during or after training).
    pub fn adapter_gpu(&self) -> &AdapterGpu {
        &self.adapter
    }

    /// The adapter on the device, when the run is over.
    pub fn into_adapter(self) -> AdapterGpu {
        self.adapter
    }

    /// Runs one optimizer step and waits for its report; `None` when the run is over. (With
    /// steps already in flight from [`Trainer::submit_step`], it reports the oldest of them.)
    pub async fn step(&mut self) -> Result<Option<MetricsRecord>> {
        self.submit_step()?;
        self.take_report().await
    }

    /// Steps submitted whose reports were not taken yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// The step the next [`Trainer::take_report`] reports, if any is in flight.
    pub fn oldest_in_flight(&self) -> Option<u64> {
        self.in_flight.front().map(|f| f.step)
    }

    /// Records one optimizer step and submits it without waiting: every micro-batch's passes,
    /// the gradient norm, AdamW and the copy of the step's report, one submission. `false` when
    /// the run is over. The trainer's state (step, data position, tokens) moves on at once; the
    /// losses and the norm come with [`Trainer::take_report`], so the host can record the next
    /// step while the GPU runs this one.
    pub fn submit_step(&mut self) -> Result<bool> {
        let gpu = self.gpu;
        let v = self.model.config.vocab_size;
        let mut micro = Vec::new();
        for _ in 0..self.config.grad_accum {
            match self.batches.next() {
                Some(ix) => micro.push(trimmed(&self.train, &ix)?),
                None => break,
            }
        }
        if micro.is_empty() {
            return Ok(false);
        }
        let peft = self.adapter.peft();
        let targets: Vec<Vec<i32>> = micro.iter().map(|mb| mb.targets_for(peft)).collect();
        let total: usize = targets.iter().map(|t| count_targets(t, v)).sum();
        let scale = 1.0 / total.max(1) as f32;
        // The whole optimizer step is one submission: every micro-batch's passes, the gradient
        // norm and AdamW; the losses and the norm are read back once at the end.
        let mut enc = gpu.encoder();
        match &self.adapter {
            AdapterGpu::Lora(lora, _) => lora.zero_grads(&mut enc),
            AdapterGpu::Prompt(pg, _) => pg.zero_grad(&mut enc),
            AdapterGpu::Prefix(pf, _) => pf.zero_grad(&mut enc),
        }
        let mut tokens = 0u64;
        let mut loss_rows = Vec::with_capacity(micro.len());
        let p = self.config.lora.dropout as f32;
        let slot = self.ws.rows;
        for (k, (mb, tg)) in micro.iter().zip(&targets).enumerate() {
            // One mask seed per micro-batch from the trainer's RNG (saved in checkpoints, so a
            // resumed run draws the same masks); only LoRA has dropout.
            let dropout = (p > 0.0 && matches!(peft, Peft::Lora(_))).then(|| {
                let mut rng = Rng::from_state(self.state.rng_state);
                let seed = rng.next_u64();
                self.state.rng_state = rng.state();
                LoraDropout { p, seed }
            });
            let rows = self.model.record_forward_backward(
                &mut enc, &self.ws, peft, &mb.ids, tg, mb.rows, mb.t, scale, dropout,
            )?;
            let at = (k * slot * 4) as u64;
            enc.copy(&self.ws.loss_rows, 0, &self.report, at, (rows * 4) as u64);
            loss_rows.push((k * slot, rows));
            tokens += mb.n_tokens as u64;
        }
        let step = self.state.global_step + 1;
        let lr = self.schedule.lr(self.state.global_step);
        let cfg = AdamW {
            lr,
            beta1: self.config.adamw.beta1,
            beta2: self.config.adamw.beta2,
            eps: self.config.adamw.eps,
            weight_decay: self.config.adamw.weight_decay,
        };
        let f = &self.flat;
        let n = f.len;
        if let AdapterGpu::Prefix(pf, _) = &self.adapter {
            pf.backprop_projection(&mut enc)?;
        }
        optim::grad_norm(&mut enc, &f.grads, n, &f.norm)?;
        let clip = (self.config.max_grad_norm > 0.0).then_some(self.config.max_grad_norm as f32);
        // AdamW skips the update on the GPU when the norm is not finite; the host stops the run
        // when the report arrives.
        optim::adamw_step(
            &mut enc,
            &f.params,
            &f.grads,
            &f.m,
            &f.v,
            &f.norm,
            n,
            step as u32,
            &cfg,
            clip,
        )?;
        // A projected prefix follows its parameters right where they change (the upload made
        // the first one), so steps, evaluation and saving all see the current prefix.
        if let AdapterGpu::Prefix(pf, _) = &self.adapter {
            pf.refresh(&mut enc)?;
        }
        let norm_at = (self.config.grad_accum * slot * 4) as u64;
        enc.copy(&f.norm, 0, &self.report, norm_at, 4);
        // The readback rides in the step's own submission; the host takes it when it wants.
        let read = enc.read_later(&self.report, 0..norm_at + 4)?;
        enc.submit();
        self.in_flight.push_back(InFlight {
            read,
            step,
            lr,
            tokens,
            targets: total,
            loss_rows,
        });
        self.state.global_step = step;
        self.state.position = self.batches.position();
        self.state.tokens_seen += tokens;
        self.state.last_lr = lr;
        Ok(true)
    }

    /// The metrics of the oldest step in flight, waiting for its report if it has not arrived
    /// (the GPU keeps running the steps submitted after it); `None` when none is in flight.
    /// A non-finite loss or gradient norm is [`TrainError::NonFinite`].
    pub async fn take_report(&mut self) -> Result<Option<MetricsRecord>> {
        let Some(f) = self.in_flight.pop_front() else {
            return Ok(None);
        };
        let report: Vec<f32> = tinytune_gpu::cast_bytes(&f.read.wait_async().await?);
        let loss = sum_slots(&report, &f.loss_rows) / f.targets.max(1) as f64;
        let grad_norm = report[self.config.grad_accum * self.ws.rows] as f64;
        if !(loss.is_finite() && grad_norm.is_finite()) {
            return Err(TrainError::NonFinite {
                step: f.step,
                loss,
                grad_norm,
                lr: f.lr,
            });
        }
        let elapsed = (self.clock)() - self.t0;
        let step_time = elapsed - self.state.elapsed_s;
        self.state.elapsed_s = elapsed;
        Ok(Some(MetricsRecord {
            step: f.step,
            loss,
            lr: f.lr,
            grad_norm,
            tokens_per_s: if step_time > 0.0 {
                f.tokens as f64 / step_time
            } else {
                0.0
            },
            elapsed_s: elapsed,
            eval_loss: None,
            eval_ppl: None,
            eval_data: Default::default(),
        }))
    }

    /// Mean loss over the held-out examples (`None` without an eval split).
    pub async fn evaluate(&mut self) -> Result<Option<f64>> {
        if self.eval.is_empty() {
            return Ok(None);
        }
        let loss = self.loss_on(&self.eval).await?;
        if self.state.best_eval_loss.is_none_or(|b| loss < b) {
            self.state.best_eval_loss = Some(loss);
        }
        // Evaluation time is not training time.
        self.t0 = (self.clock)() - self.state.elapsed_s;
        Ok(Some(loss))
    }

    /// Mean loss of the current adapters over another held-out set (`examples` built with this
    /// run's `seq_len`), e.g. a general-knowledge set that measures forgetting. Like
    /// [`Trainer::evaluate`], the time it takes is not training time.
    pub async fn evaluate_examples(&mut self, examples: &[Example]) -> Result<f64> {
        let loss = self.loss_on(examples).await?;
        self.t0 = (self.clock)() - self.state.elapsed_s;
        Ok(loss)
    }

    /// Token-weighted mean loss of the current adapters over `examples`.
    pub async fn loss_on(&self, examples: &[Example]) -> Result<f64> {
        let (sum, count) = loss_sum(
            self.gpu,
            self.model,
            &self.ws,
            Some(self.adapter.peft()),
            examples,
            self.config.batch_size,
        )
        .await?;
        Ok(sum / count.max(1) as f64)
    }

    async fn read_weights(&self, buf: &GpuBuffer) -> Result<LoraWeights> {
        let AdapterGpu::Lora(lora, _) = &self.adapter else {
            return Err(cfg_err("this run does not train LoRA"));
        };
        let flat = self.gpu.read::<f32>(buf).await?;
        Ok(LoraWeights::from_layers(&lora.unflatten(&flat)?))
    }

    /// The current adapter in PEFT's layout, whatever the method.
    pub async fn peft_adapter(&self) -> Result<PeftAdapter> {
        self.adapter.download(self.gpu).await
    }

    /// The current adapter's PEFT files (`adapter_config.json`, `adapter_model.safetensors`),
    /// whatever the method.
    pub async fn adapter_files(&self) -> Result<Vec<(String, Vec<u8>)>> {
        self.peft_adapter().await?.to_files()
    }

    /// The flat parameters of a projected prefix, if this run trains one.
    fn projection_params_buf(&self) -> Option<&GpuBuffer> {
        match &self.adapter {
            AdapterGpu::Prefix(pf, _) => pf.projection.as_ref().map(|pr| &pr.params),
            _ => None,
        }
    }

    /// Everything needed to resume the run.
    pub async fn checkpoint(&self) -> Result<Checkpoint> {
        let adapter = self.peft_adapter().await?;
        let (adapter, m, v) = match self.method() {
            PeftMethod::Lora => (
                adapter,
                Moments::Lora(self.read_weights(&self.flat.m).await?),
                Moments::Lora(self.read_weights(&self.flat.v).await?),
            ),
            _ => {
                // The moments have the layout of the trained tensor, prompt_embeddings.
                let n = self.n_params();
                // (A projection's moments are flat, like its parameters.)
                let shape = if self.projection_params_buf().is_some() {
                    vec![n]
                } else {
                    vec![adapter.virtual_tokens(), n / adapter.virtual_tokens()]
                };
                let read = |buf: GpuBuffer| async move {
                    let mut v = self.gpu.read::<f32>(&buf).await?;
                    v.truncate(n);
                    Ok::<_, TrainError>(v)
                };
                let m = read(self.flat.m.clone()).await?;
                let v = read(self.flat.v.clone()).await?;
                (
                    adapter,
                    Moments::Embeddings(shape.clone(), m),
                    Moments::Embeddings(shape, v),
                )
            }
        };
        let projection = match self.projection_params_buf() {
            Some(buf) => {
                let mut v = self.gpu.read::<f32>(buf).await?;
                v.truncate(self.n_params());
                Some(v)
            }
            None => None,
        };
        Ok(Checkpoint {
            adapter,
            projection,
            optimizer: OptimizerState {
                step: self.state.global_step,
                m,
                v,
            },
            state: self.state.clone(),
            config: self.config.clone(),
        })
    }
}

/// The summed per-row losses of every `(start, rows)` slot of a readback: each slot summed in f64,
/// the slots in order (as the host always summed each pass's rows), so losses stay bit-identical.
fn sum_slots(losses: &[f32], slots: &[(usize, usize)]) -> f64 {
    slots
        .iter()
        .map(|&(at, rows)| losses[at..at + rows].iter().map(|&l| l as f64).sum::<f64>())
        .fold(0.0, |acc, s| acc + s)
}

/// Batches of an evaluation pass recorded into one submission.
const EVAL_BATCHES_PER_SUBMIT: usize = 64;

/// Summed loss and number of targets of `model` (adapted with `peft`) over `examples`, in
/// sequential batches of `batch_size` rows, using a training workspace `ws`.
pub async fn loss_sum(
    gpu: &Gpu,
    model: &LlamaModel,
    ws: &Workspace,
    peft: Option<Peft<'_>>,
    examples: &[Example],
    batch_size: usize,
) -> Result<(f64, usize)> {
    let v = model.config.vocab_size;
    let plan = BatchPlan::sequential(examples.len(), batch_size)?;
    let batches: Vec<Vec<usize>> = plan
        .iter(DataPosition::default(), 0, Stop::Epochs(1))?
        .collect();
    // Each batch's per-row losses land in their own slot of one buffer, read back once at the
    // end; the passes go out in submissions of up to EVAL_BATCHES_PER_SUBMIT batches (one for
    // any eval split of the usual size), which bounds what one command buffer holds.
    let slot = ws.rows;
    let losses = gpu.alloc("eval.losses", f32_bytes(&[batches.len().max(1) * slot]))?;
    let mut enc = gpu.encoder();
    let mut count = 0usize;
    let mut slots = Vec::with_capacity(batches.len());
    for (k, ix) in batches.iter().enumerate() {
        let mb = trimmed(examples, ix)?;
        let tg = match peft {
            Some(p) => mb.targets_for(p),
            None => mb.targets.clone(),
        };
        let rows = model.record_forward_loss(&mut enc, ws, peft, &mb.ids, &tg, mb.rows, mb.t)?;
        enc.copy(
            &ws.loss_rows,
            0,
            &losses,
            (k * slot * 4) as u64,
            (rows * 4) as u64,
        );
        slots.push((k * slot, rows));
        count += count_targets(&tg, v);
        if (k + 1) % EVAL_BATCHES_PER_SUBMIT == 0 {
            std::mem::replace(&mut enc, gpu.encoder()).submit();
        }
    }
    let pending = enc.read_later(&losses, 0..losses.len)?;
    enc.submit();
    let all: Vec<f32> = tinytune_gpu::cast_bytes(&pending.wait_async().await?);
    Ok((sum_slots(&all, &slots), count))
}

/// Evaluates `model` (+ `adapter`: LoRA, prompt or prefix tuning) on a dataset:
/// `(mean loss, targets)`.
pub async fn evaluate(
    gpu: &Gpu,
    model: &LlamaModel,
    adapter: Option<&AdapterGpu>,
    data: &Dataset,
    batch_size: usize,
) -> Result<(f64, usize)> {
    if data.examples.is_empty() {
        return Err(cfg_err("no examples to evaluate"));
    }
    let bs = batch_size.max(1);
    let peft = adapter.map(AdapterGpu::peft);
    let ws = Workspace::for_batch(gpu, model, peft, bs, data.seq_len, Mode::Training)?;
    let (sum, count) = loss_sum(gpu, model, &ws, peft, &data.examples, bs).await?;
    Ok((sum / count.max(1) as f64, count))
}

fn bytemuck_f32(v: &[f32]) -> &[u8] {
    bytemuck::cast_slice(v)
}

#[cfg(test)]
mod tests {
    use super::check_batch_fits;

    #[test]
    fn oversized_batches_are_refused_before_allocating() {
        let gib = 1u64 << 30;
        assert!(check_batch_fits(4, 512, 0, 1536, gib).is_ok());
        // 2^32 rows: a usize product would wrap to 0 on wasm32.
        let e = check_batch_fits(65536, 65536, 0, 96, gib).unwrap_err();
        assert!(
            e.contains("4294967296 rows") && e.contains("smaller batch_size or seq_len"),
            "{e}"
        );
        assert!(e.contains("at most 2796202)"), "{e}");
        // Exactly at the limit fits; one row more does not.
        let rows = gib / (64 * 4);
        assert!(check_batch_fits(rows as usize, 1, 0, 64, gib).is_ok());
        assert!(check_batch_fits(rows as usize + 1, 1, 0, 64, gib).is_err());
        let e = check_batch_fits(rows as usize, 1, 4, 64, gib).unwrap_err();
        assert!(e.contains("+ 4 virtual tokens"), "{e}");
    }
}
