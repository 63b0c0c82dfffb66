//! The Llama-family decoder on the GPU (Llama, SmolLM2, TinyLlama, Llama-3.x, Qwen2 with q/k/v
//! biases), one implementation whatever the storage of its frozen linear layers: quantization is a
//! storage detail ([`Weight`]). This first step is the forward pass to logits; it mirrors
//! [`tinytune_reference::llama`] op for op, which is what the tests compare against, besides the
//! Hugging Face transformers fixtures under `tests/fixtures/hf`.
//!
//! The model is split by pass, as llm.c is: [`load`] (tensors to the device), [`workspace`]
//! (planning the activation / gradient buffers of a pass), [`forward`] (one layer's forward,
//! `record_layer`, and the decoder up to the final norm) and [`backward`] (one layer's backward,
//! `backward_layer`, beside it). This file holds the model's types and its public passes.

mod backward;
mod forward;
mod load;
mod workspace;

use tinytune_gpu::{Encoder, Gpu, GpuBuffer};

use crate::float::FloatDtype;
use crate::lora::LoraGpu;
use crate::prefix::PrefixGpu;
use crate::prompt::PromptGpu;
use crate::vocab::VocabTable;
use crate::{LlamaConfig, ModelError, Weight};

pub use crate::targets::{linear_path, LINEARS};
pub use load::config_inv_freq;
use workspace::grads_of;
pub(crate) use workspace::{LayerActs, LayerScratch};
pub use workspace::{Mode, Workspace};

/// How the frozen linear layers of the decoder are stored on the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quant {
    /// f32, as loaded (plain LoRA).
    None,
    /// NF4 with the given block size and double quantization of the absmax (QLoRA), quantized on
    /// the GPU at load time exactly as bitsandbytes does. Norms and biases stay f32, as
    /// bitsandbytes leaves them; the embedding and LM head stay in the checkpoint's dtype
    /// ([`LoadOptions::vocab_dtype`]).
    Nf4 { block: usize, double_quant: bool },
}

impl Quant {
    /// bitsandbytes' QLoRA default: NF4, block 64, double quantization.
    pub const NF4: Quant = Quant::Nf4 {
        block: 64,
        double_quant: true,
    };
}

/// A frozen linear layer `[out, in]` with an optional bias.
pub struct Linear {
    pub weight: Weight,
    pub bias: Option<GpuBuffer>,
    pub n_in: usize,
    pub n_out: usize,
}

/// One decoder layer on the device.
pub struct Layer {
    pub input_layernorm: GpuBuffer,
    pub linears: [Linear; 7],
    pub post_attention_layernorm: GpuBuffer,
}

/// Options of [`LlamaModel::load_with`].
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Rows per chunk of the embedding / LM head (default: as many as one binding holds).
    pub vocab_chunk_rows: Option<usize>,
    /// What the embedding / LM head are stored as on the device (default: the checkpoint's own
    /// dtype, f16 for a quantized GGUF table; see [`crate::vocab::table_dtype`]). `Some(F32)` is
    /// the f32 path the 16-bit tables are compared against.
    pub vocab_dtype: Option<FloatDtype>,
    /// NF4 block size of every decoder linear (with [`Quant::Nf4`]; its `block` is then unused
    /// and its `double_quant` must agree). Default: the quant's block everywhere. Ignored for the
    /// weights a pre-quantized (bitsandbytes) source stores as NF4: their codes are used as
    /// they are.
    pub blocks: Option<crate::blocks::BlockPlan>,
}

/// Where a loaded model's device bytes go ([`LlamaModel::memory`]), as [`Gpu::memory`] counts
/// them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelMemory {
    /// The decoder's linear layers (NF4 codes, absmax and constants, or f32), biases excluded.
    pub linears: u64,
    /// How the linears are stored.
    pub quant: Quant,
    /// The token embedding and what it is stored as.
    pub embed: (u64, FloatDtype),
    /// The LM head and what it is stored as; `None` when tied to the embedding (one table).
    pub lm_head: Option<(u64, FloatDtype)>,
    /// Norm weights, biases and the RoPE frequencies (f32).
    pub other: u64,
}

impl ModelMemory {
    /// The whole model.
    pub fn total(&self) -> u64 {
        self.linears + self.embed.0 + self.lm_head.map_or(0, |h| h.0) + self.other
    }
}

impl std::fmt::Display for ModelMemory {
    /// `106.6 MiB: decoder linears 52.4 MiB (NF4), embeddings 54.0 MiB (f16, tied LM head),
    /// norms / biases 0.1 MiB (f32)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
        let name = |d: FloatDtype| crate::vocab::kernel_dtype(d).name();
        let quant = match self.quant {
            Quant::None => "f32",
            Quant::Nf4 { .. } => "NF4",
        };
        write!(
            f,
            "{:.1} MiB: decoder linears {:.1} MiB ({quant}), embeddings {:.1} MiB ({}",
            mib(self.total()),
            mib(self.linears),
            mib(self.embed.0),
            name(self.embed.1)
        )?;
        match self.lm_head {
            None => write!(f, ", tied LM head)")?,
            Some((b, d)) => write!(f, "), LM head {:.1} MiB ({})", mib(b), name(d))?,
        }
        write!(f, ", norms / biases {:.1} MiB (f32)", mib(self.other))
    }
}

/// A loaded model.
pub struct LlamaModel {
    pub config: LlamaConfig,
    pub quant: Quant,
    /// Token embedding `[V, C]`, in row chunks that each fit one binding.
    pub embed: VocabTable,
    pub layers: Vec<Layer>,
    pub norm: GpuBuffer,
    /// `None` when tied to `embed`.
    pub lm_head: Option<VocabTable>,
    /// RoPE inverse frequencies `[head_dim / 2]` (with llama3 scaling when configured).
    pub inv_freq: GpuBuffer,
    /// Host copy of `inv_freq`.
    pub inv_freq_host: Vec<f32>,
}

/// The PEFT method a pass adapts the frozen model with, carrying its parameters on the device:
/// the one argument every pass, workspace and decoder takes (`None`: the plain model).
#[derive(Clone, Copy)]
pub enum Peft<'a> {
    /// LoRA pairs on the linear layers.
    Lora(&'a LoraGpu),
    /// Prompt tuning: `P` input embeddings in front of each sequence (positions `0..P`).
    Prompt(&'a PromptGpu),
    /// Prefix tuning: `P` key/value rows in front of each layer's attention.
    Prefix(&'a PrefixGpu),
}

impl<'a> Peft<'a> {
    /// The LoRA pairs, if the method is LoRA.
    pub fn lora(self) -> Option<&'a LoraGpu> {
        match self {
            Peft::Lora(l) => Some(l),
            _ => None,
        }
    }

    /// The prompt embeddings, if the method is prompt tuning.
    pub fn prompt(self) -> Option<&'a PromptGpu> {
        match self {
            Peft::Prompt(p) => Some(p),
            _ => None,
        }
    }

    /// The key/value prefix, if the method is prefix tuning.
    pub fn prefix(self) -> Option<&'a PrefixGpu> {
        match self {
            Peft::Prefix(p) => Some(p),
            _ => None,
        }
    }

    /// Virtual positions in front of every sequence (0 for LoRA).
    pub fn virtual_tokens(self) -> usize {
        match self {
            Peft::Lora(_) => 0,
            Peft::Prompt(p) => p.p,
            Peft::Prefix(p) => p.p,
        }
    }

    /// The LoRA pairs, prompt and prefix of `peft` (each `None` unless it is that method).
    pub(crate) fn parts(
        peft: Option<Peft<'a>>,
    ) -> (
        Option<&'a LoraGpu>,
        Option<&'a PromptGpu>,
        Option<&'a PrefixGpu>,
    ) {
        (
            peft.and_then(Peft::lora),
            peft.and_then(Peft::prompt),
            peft.and_then(Peft::prefix),
        )
    }

    /// Rows of the residual stream a sequence of `t` tokens takes (prompt tuning runs its
    /// virtual tokens as rows; a prefix only adds keys and values).
    pub fn rows_per_sequence(peft: Option<Peft<'_>>, t: usize) -> usize {
        t + peft.and_then(Peft::prompt).map_or(0, |p| p.p)
    }
}

/// LoRA dropout (PEFT's `lora_dropout`, training only): the input of each adapter's branch is
/// dropped with probability `p` and scaled by `1/(1-p)` (`nn/dropout_fwd`); each adapted linear of
/// each layer draws its own mask from [`lora_dropout_seed`]`(seed, layer, target)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LoraDropout {
    pub p: f32,
    pub seed: u64,
}

/// The mask seed of linear `target` (index into [`LINEARS`]) of layer `layer` (SplitMix64's
/// finaliser of the run's seed and the linear's index; the reference draws the same masks).
pub fn lora_dropout_seed(seed: u64, layer: usize, target: usize) -> u64 {
    let mut z = seed ^ ((layer * 7 + target) as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl LlamaModel {
    /// The device bytes of each part of the model.
    pub fn memory(&self) -> ModelMemory {
        let mut linears = 0;
        let mut other = self.norm.device_bytes() + self.inv_freq.device_bytes();
        for l in &self.layers {
            other += l.input_layernorm.device_bytes() + l.post_attention_layernorm.device_bytes();
            for lin in &l.linears {
                linears += match &lin.weight {
                    Weight::F32(b) => b.device_bytes(),
                    Weight::Nf4(w) => {
                        w.codes.device_bytes() + w.absmax.device_bytes() + w.dq.device_bytes()
                    }
                };
                other += lin.bias.as_ref().map_or(0, |b| b.device_bytes());
            }
        }
        ModelMemory {
            linears,
            quant: self.quant,
            embed: (self.embed.device_bytes(), self.embed.dtype),
            lm_head: self.lm_head.as_ref().map(|h| (h.device_bytes(), h.dtype)),
            other,
        }
    }

    /// The LM head weight `[V, C]` (the embedding when tied).
    pub(crate) fn head(&self) -> &VocabTable {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    /// Logits `[B*T, V]` of `B` sequences of `T` tokens (`ids` row-major), positions `0..T`.
    pub async fn logits(
        &self,
        gpu: &Gpu,
        ids: &[u32],
        b: usize,
        t: usize,
    ) -> Result<Vec<f32>, ModelError> {
        self.logits_with(gpu, None, ids, b, t).await
    }

    /// [`LlamaModel::logits`] of the model adapted with `peft`: the logits `[B*T, V]` of the
    /// real tokens (prompt tuning's virtual positions are run but not returned; with prefix
    /// tuning the tokens sit at positions `P..P+T`).
    pub async fn logits_with(
        &self,
        gpu: &Gpu,
        peft: Option<Peft<'_>>,
        ids: &[u32],
        b: usize,
        t: usize,
    ) -> Result<Vec<f32>, ModelError> {
        let ws = Workspace::for_batch(gpu, self, peft, b.max(1), t.max(1), Mode::Inference)?;
        self.forward_with(gpu, &ws, peft, ids, b, t)?;
        let v = self.config.vocab_size;
        let all = gpu.read::<f32>(ws.logits()).await?;
        let tp = Peft::rows_per_sequence(peft, t);
        let p = tp - t;
        let mut out = Vec::with_capacity(b * t * v);
        for s in 0..b {
            out.extend_from_slice(&all[(s * tp + p) * v..(s + 1) * tp * v]);
        }
        Ok(out)
    }

    /// Records and submits the forward pass; returns the logits buffer `[B*T, V]`.
    pub fn forward(
        &self,
        gpu: &Gpu,
        ids: &[u32],
        b: usize,
        t: usize,
    ) -> Result<GpuBuffer, ModelError> {
        let ws = Workspace::new(gpu, self, None, (b * t).max(1), false)?;
        self.forward_with(gpu, &ws, None, ids, b, t)?;
        Ok(ws.logits)
    }

    /// Records and submits the forward pass of `B` sequences of `T` tokens into an inference
    /// workspace: `ws.logits()` holds `[B*(P+T), V]` afterwards, `P` being prompt tuning's
    /// virtual tokens (0 otherwise).
    pub fn forward_with(
        &self,
        gpu: &Gpu,
        ws: &Workspace,
        peft: Option<Peft<'_>>,
        ids: &[u32],
        b: usize,
        t: usize,
    ) -> Result<(), ModelError> {
        if ws.train {
            return Err(ModelError::Shape(
                "forward_with needs an inference workspace".into(),
            ));
        }
        let (ids, tp) = self.with_virtual_ids(peft, ids, b, t)?;
        let mut enc = gpu.encoder();
        let m = self.record_decoder(&mut enc, ws, peft, &ids, b, tp, None)?;
        self.head().head_fwd(&mut enc, &ws.hbuf, &ws.logits, m)?;
        enc.submit();
        Ok(())
    }

    /// One forward and backward pass of the causal-LM loss on `B` sequences of `T` tokens,
    /// recorded and submitted; the gradient of `peft`'s parameters **accumulates** into its
    /// gradient buffers (zero them at the start of an optimizer step), scaled by `grad_scale`
    /// (pass `1 / number of counted targets` of the whole optimizer step: the gradient of the
    /// mean loss), with LoRA dropout when `dropout` is given (training mode; the masks follow from
    /// its seed).
    ///
    /// `targets` are per row of the pass, already shifted (-100 = ignored): `B*T` of them
    /// (the train crate's `shift_labels`), or `B*(P+T)` for prompt tuning, whose
    /// virtual positions come first as PEFT runs them
    /// (its `prompt_targets`). Returns the rows of the pass, whose
    /// per-row losses are in `ws.loss_rows` afterwards ([`Workspace::loss_sum`]). `ws` is a
    /// training workspace for `peft` ([`Workspace::for_batch`]).
    #[allow(clippy::too_many_arguments)]
    pub fn forward_backward(
        &self,
        gpu: &Gpu,
        ws: &Workspace,
        peft: Peft<'_>,
        ids: &[u32],
        targets: &[i32],
        b: usize,
        t: usize,
        grad_scale: f32,
        dropout: Option<LoraDropout>,
    ) -> Result<usize, ModelError> {
        let mut enc = gpu.encoder();
        let rows = self
            .record_forward_backward(&mut enc, ws, peft, ids, targets, b, t, grad_scale, dropout)?;
        enc.submit();
        Ok(rows)
    }

    /// [`LlamaModel::forward_backward`] recorded into `enc` (its inputs are uploaded in command
    /// order, so the passes of several micro-batches and the optimizer fit one submission).
    #[allow(clippy::too_many_arguments)]
    pub fn record_forward_backward(
        &self,
        enc: &mut Encoder,
        ws: &Workspace,
        peft: Peft<'_>,
        ids: &[u32],
        targets: &[i32],
        b: usize,
        t: usize,
        grad_scale: f32,
        dropout: Option<LoraDropout>,
    ) -> Result<usize, ModelError> {
        let (ids, tp) = self.with_virtual_ids(Some(peft), ids, b, t)?;
        let dropout = dropout.filter(|_| matches!(peft, Peft::Lora(_)));
        self.train_pass(
            enc,
            ws,
            Some(peft),
            &ids,
            targets,
            b,
            tp,
            Some(grad_scale),
            dropout,
        )?;
        Ok(b * tp)
    }

    /// The forward half of [`LlamaModel::forward_backward`] (evaluation): per-row losses into
    /// `ws.loss_rows`, no gradients; returns the rows of the pass.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_loss(
        &self,
        gpu: &Gpu,
        ws: &Workspace,
        peft: Option<Peft<'_>>,
        ids: &[u32],
        targets: &[i32],
        b: usize,
        t: usize,
    ) -> Result<usize, ModelError> {
        let mut enc = gpu.encoder();
        let rows = self.record_forward_loss(&mut enc, ws, peft, ids, targets, b, t)?;
        enc.submit();
        Ok(rows)
    }

    /// [`LlamaModel::forward_loss`] recorded into `enc`.
    #[allow(clippy::too_many_arguments)]
    pub fn record_forward_loss(
        &self,
        enc: &mut Encoder,
        ws: &Workspace,
        peft: Option<Peft<'_>>,
        ids: &[u32],
        targets: &[i32],
        b: usize,
        t: usize,
    ) -> Result<usize, ModelError> {
        let (ids, tp) = self.with_virtual_ids(peft, ids, b, t)?;
        self.train_pass(enc, ws, peft, &ids, targets, b, tp, None, None)?;
        Ok(b * tp)
    }

    /// The ids of the rows a pass runs, and its rows per sequence: prompt tuning's virtual
    /// positions get an out-of-vocabulary id (the embedding writes zeros there, then the prompt
    /// rows overwrite them) in front of each sequence's `T` tokens.
    fn with_virtual_ids<'i>(
        &self,
        peft: Option<Peft<'_>>,
        ids: &'i [u32],
        b: usize,
        t: usize,
    ) -> Result<(std::borrow::Cow<'i, [u32]>, usize), ModelError> {
        let Some(prompt) = peft.and_then(Peft::prompt) else {
            return Ok((ids.into(), t));
        };
        if ids.len() != b * t || prompt.c != self.config.hidden_size {
            return Err(ModelError::Shape(format!(
                "prompt tuning: {} ids for B={b} T={t}, prompt width {} for hidden {}",
                ids.len(),
                prompt.c,
                self.config.hidden_size
            )));
        }
        let v = self.config.vocab_size as u32;
        let mut full = Vec::with_capacity(b * (prompt.p + t));
        for s in 0..b {
            full.extend(std::iter::repeat_n(v, prompt.p));
            full.extend_from_slice(&ids[s * t..(s + 1) * t]);
        }
        Ok((full.into(), prompt.p + t))
    }
}
