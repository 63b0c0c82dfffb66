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

use tinytune_gpu::{Gpu, GpuBuffer};
pub use tinytune_reference::llama::LoraDropout;

use crate::lora::LoraGpu;
use crate::prefix::PrefixGpu;
use crate::prompt::PromptGpu;
use crate::vocab::VocabTable;
use crate::{LlamaConfig, ModelError, Weight};

pub use crate::targets::{linear_path, LINEARS};
pub use load::config_inv_freq;
use workspace::grads_of;
pub use workspace::Workspace;
pub(crate) use workspace::{LayerActs, LayerScratch};

/// How the frozen linear layers of the decoder are stored on the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quant {
    /// f32, as loaded (plain LoRA).
    None,
    /// NF4 with the given block size and double quantization of the absmax (QLoRA), quantized on
    /// the GPU at load time exactly as bitsandbytes does. Embeddings, norms, biases and the LM head
    /// stay f32, as bitsandbytes leaves them.
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

/// The trainable virtual tokens of a prompt-learning pass.
#[derive(Clone, Copy)]
pub(super) enum Virtual<'a> {
    /// Prompt tuning: input embeddings in front of each sequence.
    Prompt(&'a PromptGpu),
    /// Prefix tuning: key/value rows in front of each layer's attention.
    Prefix(&'a PrefixGpu),
}

impl<'a> Virtual<'a> {
    /// The prompt or the prefix of `virt`, if any.
    pub(super) fn split(
        virt: Option<Virtual<'a>>,
    ) -> (Option<&'a PromptGpu>, Option<&'a PrefixGpu>) {
        match virt {
            Some(Virtual::Prompt(pr)) => (Some(pr), None),
            Some(Virtual::Prefix(pf)) => (None, Some(pf)),
            None => (None, None),
        }
    }
}

impl LlamaModel {
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

    /// [`LlamaModel::logits`] with LoRA adapters.
    pub async fn logits_with(
        &self,
        gpu: &Gpu,
        lora: Option<&LoraGpu>,
        ids: &[u32],
        b: usize,
        t: usize,
    ) -> Result<Vec<f32>, ModelError> {
        let ws = Workspace::new(gpu, self, lora, (b * t).max(1), false)?;
        self.forward_with(gpu, &ws, lora, ids, b, t)?;
        let mut out = gpu.read::<f32>(ws.logits()).await?;
        out.truncate(b * t * self.config.vocab_size);
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

    /// Records and submits the forward pass into an inference workspace (`ws.logits()` holds
    /// `[B*T, V]` afterwards).
    pub fn forward_with(
        &self,
        gpu: &Gpu,
        ws: &Workspace,
        lora: Option<&LoraGpu>,
        ids: &[u32],
        b: usize,
        t: usize,
    ) -> Result<(), ModelError> {
        if ws.train {
            return Err(ModelError::Shape(
                "forward_with needs an inference workspace".into(),
            ));
        }
        let m = self.record_decoder(gpu, ws, lora, ids, b, t, None, None)?;
        let mut enc = gpu.encoder();
        self.head().head_fwd(&mut enc, &ws.hbuf, &ws.logits, m)?;
        enc.submit();
        Ok(())
    }

    /// One forward and backward pass of the causal-LM loss on a batch, recorded and submitted:
    /// `targets` are per-position (already shifted, see
    /// [`tinytune_reference::llama::shift_labels`]; -100 = ignored). The LoRA gradients
    /// **accumulate** into `lora`'s gradient buffers (zero them with [`LoraGpu::zero_grads`] at
    /// the start of an optimizer step), scaled by `grad_scale` (pass `1 / number of counted
    /// targets` of the whole optimizer step: the gradient of the mean loss), with LoRA dropout when
    /// `dropout` is given (training mode; the masks follow from its seed). Per-row losses are in
    /// `ws.loss_rows` afterwards ([`Workspace::loss_sum`]).
    #[allow(clippy::too_many_arguments)]
    pub fn forward_backward(
        &self,
        gpu: &Gpu,
        ws: &Workspace,
        lora: &LoraGpu,
        ids: &[u32],
        targets: &[i32],
        b: usize,
        t: usize,
        grad_scale: f32,
        dropout: Option<LoraDropout>,
    ) -> Result<(), ModelError> {
        self.train_pass(
            gpu,
            ws,
            Some(lora),
            ids,
            targets,
            b,
            t,
            Some(grad_scale),
            dropout,
            None,
        )
    }

    /// Prompt tuning's forward and backward pass: `ids` are `B` sequences of `T` real tokens;
    /// the model runs on `P + T` positions per sequence (the virtual tokens first, as PEFT does),
    /// `targets` are per position over those `P + T` (see
    /// [`tinytune_reference::llama::prompt_targets`]). The gradient of the prompt embeddings
    /// accumulates into `prompt.grad`, scaled by `grad_scale`; `ws` needs `B * (P + T)` rows.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_backward_prompt(
        &self,
        gpu: &Gpu,
        ws: &Workspace,
        prompt: &PromptGpu,
        ids: &[u32],
        targets: &[i32],
        b: usize,
        t: usize,
        grad_scale: f32,
    ) -> Result<(), ModelError> {
        self.prompt_pass(gpu, ws, prompt, ids, targets, b, t, Some(grad_scale))
    }

    /// The forward half of [`LlamaModel::forward_backward_prompt`] (evaluation).
    #[allow(clippy::too_many_arguments)]
    pub fn forward_loss_prompt(
        &self,
        gpu: &Gpu,
        ws: &Workspace,
        prompt: &PromptGpu,
        ids: &[u32],
        targets: &[i32],
        b: usize,
        t: usize,
    ) -> Result<(), ModelError> {
        self.prompt_pass(gpu, ws, prompt, ids, targets, b, t, None)
    }

    #[allow(clippy::too_many_arguments)]
    fn prompt_pass(
        &self,
        gpu: &Gpu,
        ws: &Workspace,
        prompt: &PromptGpu,
        ids: &[u32],
        targets: &[i32],
        b: usize,
        t: usize,
        grad_scale: Option<f32>,
    ) -> Result<(), ModelError> {
        if ids.len() != b * t || prompt.c != self.config.hidden_size {
            return Err(ModelError::Shape(format!(
                "prompt tuning: {} ids for B={b} T={t}, prompt width {} for hidden {}",
                ids.len(),
                prompt.c,
                self.config.hidden_size
            )));
        }
        let tp = prompt.p + t;
        // Virtual positions get an out-of-vocabulary id (the embedding writes zeros there) and are
        // then overwritten by the prompt rows.
        let v = self.config.vocab_size as u32;
        let mut full = Vec::with_capacity(b * tp);
        for s in 0..b {
            full.extend(std::iter::repeat_n(v, prompt.p));
            full.extend_from_slice(&ids[s * t..(s + 1) * t]);
        }
        self.train_pass(
            gpu,
            ws,
            None,
            &full,
            targets,
            b,
            tp,
            grad_scale,
            None,
            Some(Virtual::Prompt(prompt)),
        )
    }

    /// Prefix tuning's forward and backward pass: `ids` are `B` sequences of `T` tokens at
    /// positions `P..P+T`, every layer's attention also sees its `P` key/value rows of `prefix`;
    /// `targets` are per real position (as for [`LlamaModel::forward_backward`]). The gradient of
    /// the prefix accumulates into `prefix.grad`, scaled by `grad_scale`; `ws` is a training
    /// workspace with [`Workspace::with_prefix`].
    #[allow(clippy::too_many_arguments)]
    pub fn forward_backward_prefix(
        &self,
        gpu: &Gpu,
        ws: &Workspace,
        prefix: &PrefixGpu,
        ids: &[u32],
        targets: &[i32],
        b: usize,
        t: usize,
        grad_scale: f32,
    ) -> Result<(), ModelError> {
        let virt = Some(Virtual::Prefix(prefix));
        self.train_pass(
            gpu,
            ws,
            None,
            ids,
            targets,
            b,
            t,
            Some(grad_scale),
            None,
            virt,
        )
    }

    /// The forward half of [`LlamaModel::forward_backward_prefix`] (evaluation).
    #[allow(clippy::too_many_arguments)]
    pub fn forward_loss_prefix(
        &self,
        gpu: &Gpu,
        ws: &Workspace,
        prefix: &PrefixGpu,
        ids: &[u32],
        targets: &[i32],
        b: usize,
        t: usize,
    ) -> Result<(), ModelError> {
        let virt = Some(Virtual::Prefix(prefix));
        self.train_pass(gpu, ws, None, ids, targets, b, t, None, None, virt)
    }

    /// Logits `[B*T, V]` with prefix tuning (see [`LlamaModel::forward_backward_prefix`]).
    pub async fn logits_prefix(
        &self,
        gpu: &Gpu,
        prefix: &PrefixGpu,
        ids: &[u32],
        b: usize,
        t: usize,
    ) -> Result<Vec<f32>, ModelError> {
        let ws =
            Workspace::new(gpu, self, None, (b * t).max(1), false)?.with_prefix(gpu, prefix, b)?;
        let m = self.record_decoder(
            gpu,
            &ws,
            None,
            ids,
            b,
            t,
            None,
            Some(Virtual::Prefix(prefix)),
        )?;
        let mut enc = gpu.encoder();
        self.head().head_fwd(&mut enc, &ws.hbuf, &ws.logits, m)?;
        enc.submit();
        let mut out = gpu.read::<f32>(ws.logits()).await?;
        out.truncate(m * self.config.vocab_size);
        Ok(out)
    }

    /// The forward half of [`LlamaModel::forward_backward`] (evaluation): per-row losses into
    /// `ws.loss_rows`, no gradients.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_loss(
        &self,
        gpu: &Gpu,
        ws: &Workspace,
        lora: Option<&LoraGpu>,
        ids: &[u32],
        targets: &[i32],
        b: usize,
        t: usize,
    ) -> Result<(), ModelError> {
        self.train_pass(gpu, ws, lora, ids, targets, b, t, None, None, None)
    }
}
