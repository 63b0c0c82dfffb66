//! Prefix tuning (PEFT `PREFIX_TUNING`) on the device: per-layer trainable key/value rows that
//! every position attends to, stored as PEFT's `prompt_embeddings` `[P, L*2*KVD]` (see
//! [`tinytune_gpu::ops::nn::prefix_fwd`] for the layout), with their gradient (summed over the
//! batch). The reference is [`tinytune_reference::llama::prefix_loss_and_grad`].

use tinytune_gpu::{Encoder, Gpu, GpuBuffer};

use crate::{LlamaConfig, ModelError};

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
            grad: gpu.alloc("prefix.kv.grad", (p * row * 4) as u64)?,
        })
    }

    /// Records zeroing the gradient.
    pub fn zero_grad(&self, enc: &mut Encoder) {
        enc.clear(&self.grad);
    }

    fn len(&self) -> usize {
        self.p * self.n_layers * 2 * self.kvd
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

impl PrefixGpu {
    /// A prefix holding the keys (after RoPE) and values every layer computes for `ids` at
    /// positions `0..P` (`P = ids.len()`): what the model would cache for that text as context,
    /// so training starts from the base model's behaviour after it (the Prefix-Tuning paper's
    /// initialisation from real words' activations) rather than from PEFT's random prefix.
    pub fn from_text(
        gpu: &Gpu,
        model: &crate::LlamaModel,
        ids: &[u32],
    ) -> Result<PrefixGpu, ModelError> {
        let cfg = &model.config;
        let p = ids.len();
        let pf = PrefixGpu::upload(gpu, cfg, &vec![0.0; p * PrefixGpu::row_len(cfg)], p)?;
        let ws = crate::Workspace::new(gpu, model, None, p, true)?;
        // A pass without targets keeps every layer's k and v.
        model.forward_loss(gpu, &ws, None, ids, &vec![-100; p], 1, p)?;
        let dummy_k = gpu.alloc("prefix.init.dk", 4)?;
        let dummy_v = gpu.alloc("prefix.init.dv", 4)?;
        let mut enc = gpu.encoder();
        for i in 0..pf.n_layers {
            let (k, v) = ws.layer_kv(i);
            // prefix_bwd with no real rows adds the P rows into layer i's columns (zero so far).
            tinytune_gpu::ops::nn::prefix_bwd(
                &mut enc,
                k,
                v,
                &dummy_k,
                &dummy_v,
                &pf.kv,
                i,
                pf.n_layers,
                1,
                0,
                p,
                pf.kvd,
            )?;
        }
        enc.submit();
        Ok(pf)
    }
}
