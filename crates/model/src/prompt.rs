//! Prompt tuning (PEFT `PROMPT_TUNING`) on the device: `P` trainable virtual token embeddings
//! `[P, C]` prepended to every sequence, with their gradient (summed over the batch). The host
//! form is a plain `[P, C]` f32 vector (`prompt_embeddings` of PEFT's adapter file); the reference
//! is [`tinytune_reference::llama::prompt_loss_and_grad`].

use tinytune_gpu::{Encoder, Gpu, GpuBuffer};

use crate::f32_bytes;
use crate::ModelError;

/// Virtual token embeddings and their gradient.
pub struct PromptGpu {
    /// Number of virtual tokens.
    pub p: usize,
    /// Hidden size.
    pub c: usize,
    /// `[P, C]`.
    pub emb: GpuBuffer,
    /// `[P, C]`, accumulates until [`PromptGpu::zero_grad`].
    pub grad: GpuBuffer,
    /// `[P, C]` scratch (one sequence's share of the gradient).
    pub(crate) scratch: GpuBuffer,
}

impl PromptGpu {
    /// Uploads `[p, c]` embeddings.
    pub fn upload(gpu: &Gpu, emb: &[f32], p: usize, c: usize) -> Result<PromptGpu, ModelError> {
        if p == 0 || emb.len() != p * c {
            return Err(ModelError::Shape(format!(
                "prompt embeddings: {} values for [{p}, {c}]",
                emb.len()
            )));
        }
        Ok(PromptGpu {
            p,
            c,
            emb: gpu.upload("prompt_embeddings", emb)?,
            grad: gpu.alloc("prompt_embeddings.grad", f32_bytes(&[p, c]))?,
            scratch: gpu.alloc("prompt_embeddings.scratch", f32_bytes(&[p, c]))?,
        })
    }

    /// Records zeroing the gradient.
    pub fn zero_grad(&self, enc: &mut Encoder) {
        enc.clear(&self.grad);
    }

    /// Reads the embeddings back.
    pub async fn download(&self, gpu: &Gpu) -> Result<Vec<f32>, ModelError> {
        let mut v = gpu.read::<f32>(&self.emb).await?;
        v.truncate(self.p * self.c);
        Ok(v)
    }

    /// Reads the gradient back.
    pub async fn download_grad(&self, gpu: &Gpu) -> Result<Vec<f32>, ModelError> {
        let mut v = gpu.read::<f32>(&self.grad).await?;
        v.truncate(self.p * self.c);
        Ok(v)
    }
}
