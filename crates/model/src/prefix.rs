//! Prefix tuning (PEFT `PREFIX_TUNING`) on the device: per-layer trainable key/value rows that
//! every position attends to, stored as PEFT's `prompt_embeddings` `[P, L*2*KVD]` (see
//! [`tinytune_gpu::ops::nn::prefix_fwd`] for the layout), with their gradient (summed over the
//! batch). The reference is [`tinytune_reference::llama::prefix_loss_and_grad`].

use tinytune_gpu::ops::nn;
use tinytune_gpu::{Encoder, Gpu, GpuBuffer};

use crate::f32_bytes;
use crate::{LlamaConfig, ModelError};

/// PEFT's reparameterisation of the prefix (`prefix_projection=True`): the trainable parameters
/// are `P` embeddings of width `t` and a two-layer MLP, `kv = tanh(emb · w1ᵀ + b1) · w2ᵀ + b2`,
/// in one flat buffer (PEFT's parameter order, see [`tinytune_gpu::ops::nn::prefix_proj_fwd`]).
pub struct PrefixProjection {
    /// `token_dim` (the KV width).
    pub t: usize,
    /// `encoder_hidden_size`.
    pub e: usize,
    /// The flat parameters.
    pub params: GpuBuffer,
    /// Their gradient, written by [`PrefixGpu::backprop_projection`].
    pub grads: GpuBuffer,
    /// `tanh` output `[P, e]` of the last [`PrefixGpu::refresh`].
    h: GpuBuffer,
    /// Scratch `[P, e]`.
    dpre: GpuBuffer,
}

/// Key/value prefixes of every layer and their gradient.
pub struct PrefixGpu {
    /// Number of virtual tokens.
    pub p: usize,
    /// Decoder layers.
    pub n_layers: usize,
    /// Key (or value) width of a layer, `KVH * D`.
    pub kvd: usize,
    /// `[P, L*2*KVD]`.
    pub kv: GpuBuffer,
    /// `[P, L*2*KVD]`, accumulates until [`PrefixGpu::zero_grad`].
    pub grad: GpuBuffer,
    /// With a projection, `kv` is its output and the projection's parameters are what trains.
    pub projection: Option<PrefixProjection>,
}

impl PrefixGpu {
    /// Row length `L*2*KVD` of `config`'s prefixes.
    pub fn row_len(config: &LlamaConfig) -> usize {
        config.num_hidden_layers * 2 * config.num_key_value_heads * config.head_dim
    }

    /// Uploads a `[p, L*2*KVD]` prefix for `config`'s model.
    pub fn upload(
        gpu: &Gpu,
        config: &LlamaConfig,
        kv: &[f32],
        p: usize,
    ) -> Result<PrefixGpu, ModelError> {
        let row = PrefixGpu::row_len(config);
        if p == 0 || kv.len() != p * row {
            return Err(ModelError::Shape(format!(
                "prefix: {} values for [{p}, {row}] (P virtual tokens, num_layers*2*KV width)",
                kv.len()
            )));
        }
        Ok(PrefixGpu {
            p,
            n_layers: config.num_hidden_layers,
            kvd: config.num_key_value_heads * config.head_dim,
            kv: gpu.upload("prefix.kv", kv)?,
            grad: gpu.alloc("prefix.kv.grad", f32_bytes(&[p, row]))?,
            projection: None,
        })
    }

    /// A prefix reparameterised by PEFT's projection MLP with hidden size `e`: `params` are its
    /// flat parameters (embeddings `[p, KVD]`, `w1`, `b1`, `w2`, `b2`); `kv` is computed from them.
    pub fn with_projection(
        gpu: &Gpu,
        config: &LlamaConfig,
        params: &[f32],
        p: usize,
        e: usize,
    ) -> Result<PrefixGpu, ModelError> {
        let t = config.num_key_value_heads * config.head_dim;
        let n = PrefixGpu::row_len(config);
        let len = p * t + e * t + e + n * e + n;
        if p == 0 || e == 0 || params.len() != len {
            return Err(ModelError::Shape(format!(
                "prefix projection: {} parameters for P = {p}, KV width {t}, hidden {e}, row {n} \
                 (expected {len})",
                params.len()
            )));
        }
        let mut pf = PrefixGpu::upload(gpu, config, &vec![0.0; p * n], p)?;
        pf.projection = Some(PrefixProjection {
            t,
            e,
            params: gpu.upload("prefix.projection", params)?,
            grads: gpu.alloc("prefix.projection.grad", f32_bytes(&[len]))?,
            h: gpu.alloc("prefix.projection.h", f32_bytes(&[p, e]))?,
            dpre: gpu.alloc("prefix.projection.dpre", f32_bytes(&[p, e]))?,
        });
        let mut enc = gpu.encoder();
        pf.refresh(&mut enc)?;
        enc.submit();
        Ok(pf)
    }

    /// Records recomputing `kv` from the projection's parameters (after they changed); nothing
    /// without a projection.
    pub fn refresh(&self, enc: &mut Encoder) -> Result<(), ModelError> {
        if let Some(pr) = &self.projection {
            let n = self.row();
            nn::prefix_proj_fwd(
                enc,
                &pr.params,
                &pr.h,
                &self.kv,
                nn::PrefixProjShape {
                    p: self.p,
                    t: pr.t,
                    e: pr.e,
                    n,
                },
            )?;
        }
        Ok(())
    }

    /// Records the projection's backward: from the accumulated prefix gradient `grad` into
    /// `projection.grads` (overwritten); nothing without a projection.
    pub fn backprop_projection(&self, enc: &mut Encoder) -> Result<(), ModelError> {
        if let Some(pr) = &self.projection {
            let n = self.row();
            nn::prefix_proj_bwd(
                enc,
                &pr.params,
                &pr.h,
                &self.grad,
                &pr.dpre,
                &pr.grads,
                nn::PrefixProjShape {
                    p: self.p,
                    t: pr.t,
                    e: pr.e,
                    n,
                },
            )?;
        }
        Ok(())
    }

    /// The trainable parameters and their gradient: the projection's, or the prefix itself.
    pub fn trainable(&self) -> (&GpuBuffer, &GpuBuffer) {
        match &self.projection {
            Some(pr) => (&pr.params, &pr.grads),
            None => (&self.kv, &self.grad),
        }
    }

    /// Number of trainable parameters.
    pub fn n_trainable(&self) -> usize {
        let n = self.row();
        match &self.projection {
            Some(pr) => self.p * pr.t + pr.e * pr.t + pr.e + n * pr.e + n,
            None => self.p * n,
        }
    }

    /// Records zeroing the gradient.
    pub fn zero_grad(&self, enc: &mut Encoder) {
        enc.clear(&self.grad);
    }

    /// Row length `L*2*KVD` of the prefix.
    fn row(&self) -> usize {
        self.n_layers * 2 * self.kvd
    }

    fn len(&self) -> usize {
        self.p * self.row()
    }

    /// Reads the prefix back.
    pub async fn download(&self, gpu: &Gpu) -> Result<Vec<f32>, ModelError> {
        let mut v = gpu.read::<f32>(&self.kv).await?;
        v.truncate(self.len());
        Ok(v)
    }

    /// Reads the gradient back.
    pub async fn download_grad(&self, gpu: &Gpu) -> Result<Vec<f32>, ModelError> {
        let mut v = gpu.read::<f32>(&self.grad).await?;
        v.truncate(self.len());
        Ok(v)
    }
}
