//! The Llama-family decoder on the GPU (Llama, SmolLM2, TinyLlama, Llama-3.x, Qwen2 with q/k/v
//! biases), one implementation whatever the storage of its frozen linear layers: quantization is a
//! storage detail ([`Weight`]). This first step is the forward pass to logits; it mirrors
//! [`tinytune_reference::llama`] op for op, which is what the tests compare against, besides the
//! Hugging Face transformers fixtures under `tests/fixtures/hf`.

use tinytune_gpu::ops::{nf4, nn};
use tinytune_gpu::{Encoder, Gpu, GpuBuffer};
use tinytune_reference::nn::{rope_inv_freq, Llama3Scaling};

use crate::{LlamaConfig, ModelError, ModelSource, RopeScaling, Weight};

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

/// The seven linear layers of a decoder layer, in PEFT's names; also the index order of
/// [`Layer::linears`] (same as [`tinytune_reference::llama::TARGETS`]).
pub const LINEARS: [&str; 7] = tinytune_reference::llama::TARGETS;

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

/// A loaded model.
pub struct LlamaModel {
    pub config: LlamaConfig,
    pub quant: Quant,
    pub embed: GpuBuffer,
    pub layers: Vec<Layer>,
    pub norm: GpuBuffer,
    /// `None` when tied to `embed`.
    pub lm_head: Option<GpuBuffer>,
    /// RoPE inverse frequencies `[head_dim / 2]` (with llama3 scaling when configured).
    pub inv_freq: GpuBuffer,
    /// Host copy of `inv_freq`.
    pub inv_freq_host: Vec<f32>,
}

/// The module path of linear `t` in layer `i`, e.g. `model.layers.3.self_attn.q_proj`.
pub fn linear_path(i: usize, t: usize) -> String {
    let group = if t < 4 { "self_attn" } else { "mlp" };
    format!("model.layers.{i}.{group}.{}", LINEARS[t])
}

/// The RoPE inverse frequencies of a config, as transformers computes them.
pub fn config_inv_freq(cfg: &LlamaConfig) -> Vec<f32> {
    let scaling = cfg.rope_scaling.map(|s| match s {
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => Llama3Scaling {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings: original_max_position_embeddings as f64,
        },
    });
    rope_inv_freq(cfg.head_dim, cfg.rope_theta, scaling.as_ref())
}

fn upload(gpu: &Gpu, src: &ModelSource, name: &str) -> Result<GpuBuffer, ModelError> {
    let t = src.load(name)?;
    Ok(gpu.upload(name, &t.data)?)
}

impl LlamaModel {
    /// Loads every tensor of `src` to the device one at a time, quantizing the decoder's linear
    /// layers on the GPU when `quant` asks for it (the f32 copy of each is dropped right after).
    pub fn load(gpu: &Gpu, src: &ModelSource, quant: Quant) -> Result<LlamaModel, ModelError> {
        let cfg = src.config().clone();
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let linears = (0..7)
                .map(|t| {
                    let path = linear_path(i, t);
                    let name = format!("{path}.weight");
                    let host = src.load(&name)?;
                    let (n_out, n_in) = (host.shape[0], host.shape[1]);
                    let f32w = gpu.upload(&name, &host.data)?;
                    drop(host);
                    let weight = match quant {
                        Quant::None => Weight::F32(f32w),
                        Quant::Nf4 {
                            block,
                            double_quant,
                        } => {
                            let mut enc = gpu.encoder();
                            let w = nf4::quantize(
                                &mut enc,
                                &name,
                                &f32w,
                                n_out * n_in,
                                block,
                                double_quant,
                            )?;
                            enc.submit();
                            gpu.sync()?;
                            Weight::Nf4(w)
                        }
                    };
                    let bias_name = format!("{path}.bias");
                    let bias = if src.tensor_meta(&bias_name).is_some() {
                        Some(upload(gpu, src, &bias_name)?)
                    } else {
                        None
                    };
                    Ok(Linear {
                        weight,
                        bias,
                        n_in,
                        n_out,
                    })
                })
                .collect::<Result<Vec<_>, ModelError>>()?;
            let linears: [Linear; 7] = match linears.try_into() {
                Ok(l) => l,
                Err(_) => unreachable!("seven linears were built"),
            };
            layers.push(Layer {
                input_layernorm: upload(
                    gpu,
                    src,
                    &format!("model.layers.{i}.input_layernorm.weight"),
                )?,
                linears,
                post_attention_layernorm: upload(
                    gpu,
                    src,
                    &format!("model.layers.{i}.post_attention_layernorm.weight"),
                )?,
            });
        }
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            Some(upload(gpu, src, "lm_head.weight")?)
        };
        let inv_freq_host = config_inv_freq(&cfg);
        Ok(LlamaModel {
            embed: upload(gpu, src, "model.embed_tokens.weight")?,
            layers,
            norm: upload(gpu, src, "model.norm.weight")?,
            lm_head,
            inv_freq: gpu.upload("rope.inv_freq", &inv_freq_host)?,
            inv_freq_host,
            quant,
            config: cfg,
        })
    }

    /// Records `y (+)= x · Wᵀ (+ bias)` for linear `t` of layer `i`.
    #[allow(clippy::too_many_arguments)]
    fn linear(
        &self,
        enc: &mut Encoder,
        i: usize,
        t: usize,
        x: &GpuBuffer,
        y: &GpuBuffer,
        m: usize,
        accumulate: bool,
    ) -> Result<(), ModelError> {
        let lin = &self.layers[i].linears[t];
        match &lin.weight {
            Weight::F32(w) => {
                nn::matmul_fwd(enc, x, w, y, m, lin.n_in, lin.n_out, 1.0, accumulate)?
            }
            Weight::Nf4(w) => {
                nf4::matmul_fwd(enc, x, w, y, m, lin.n_in, lin.n_out, 1.0, accumulate)?
            }
        }
        if let Some(b) = &lin.bias {
            nn::bias_add_fwd(enc, b, y, m, lin.n_out)?;
        }
        Ok(())
    }

    /// Logits `[B*T, V]` of `B` sequences of `T` tokens (`ids` row-major), positions `0..T`.
    pub async fn logits(
        &self,
        gpu: &Gpu,
        ids: &[u32],
        b: usize,
        t: usize,
    ) -> Result<Vec<f32>, ModelError> {
        let buf = self.forward(gpu, ids, b, t)?;
        Ok(gpu.read::<f32>(&buf).await?)
    }

    /// Records and submits the forward pass; returns the logits buffer `[B*T, V]`.
    pub fn forward(
        &self,
        gpu: &Gpu,
        ids: &[u32],
        b: usize,
        t: usize,
    ) -> Result<GpuBuffer, ModelError> {
        let cfg = &self.config;
        let m = b * t;
        if ids.len() != m || m == 0 {
            return Err(ModelError::Shape(format!(
                "forward: {} ids for B={b} T={t}",
                ids.len()
            )));
        }
        let (c, hd, v) = (cfg.hidden_size, cfg.head_dim, cfg.vocab_size);
        let (h, kvh, inter) = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.intermediate_size,
        );
        let f = |n: usize| (m * n * 4) as u64;
        let ids_b = gpu.upload("ids", ids)?;
        let pos: Vec<u32> = (0..m).map(|i| (i % t) as u32).collect();
        let pos_b = gpu.upload("positions", &pos)?;
        let x = gpu.alloc("x", f(c))?;
        let hbuf = gpu.alloc("normed", f(c))?;
        let rstd = gpu.alloc("rstd", f(1))?;
        let q = gpu.alloc("q", f(h * hd))?;
        let k = gpu.alloc("k", f(kvh * hd))?;
        let vv = gpu.alloc("v", f(kvh * hd))?;
        let attn = gpu.alloc("attn", f(h * hd))?;
        let lse = gpu.alloc("lse", (b * h * t * 4) as u64)?;
        let gate = gpu.alloc("gate", f(inter))?;
        let up = gpu.alloc("up", f(inter))?;
        let act = gpu.alloc("act", f(inter))?;
        let logits = gpu.alloc("logits", f(v))?;
        let eps = cfg.rms_norm_eps as f32;
        let scale = 1.0 / (hd as f32).sqrt();
        let mut enc = gpu.encoder();
        nn::embedding_fwd(&mut enc, &ids_b, &self.embed, &x, m, v, c)?;
        for (i, layer) in self.layers.iter().enumerate() {
            nn::rmsnorm_fwd(
                &mut enc,
                &x,
                &layer.input_layernorm,
                &hbuf,
                &rstd,
                m,
                c,
                eps,
            )?;
            self.linear(&mut enc, i, 0, &hbuf, &q, m, false)?;
            self.linear(&mut enc, i, 1, &hbuf, &k, m, false)?;
            self.linear(&mut enc, i, 2, &hbuf, &vv, m, false)?;
            nn::rope_fwd(&mut enc, &q, &pos_b, &self.inv_freq, m, h, hd)?;
            nn::rope_fwd(&mut enc, &k, &pos_b, &self.inv_freq, m, kvh, hd)?;
            nn::attention_fwd(
                &mut enc, &q, &k, &vv, &attn, &lse, b, t, t, h, kvh, hd, scale,
            )?;
            // Residual connections: the projections accumulate straight into the stream.
            self.linear(&mut enc, i, 3, &attn, &x, m, true)?;
            nn::rmsnorm_fwd(
                &mut enc,
                &x,
                &layer.post_attention_layernorm,
                &hbuf,
                &rstd,
                m,
                c,
                eps,
            )?;
            self.linear(&mut enc, i, 4, &hbuf, &gate, m, false)?;
            self.linear(&mut enc, i, 5, &hbuf, &up, m, false)?;
            nn::swiglu_fwd(&mut enc, &gate, &up, &act, m * inter)?;
            self.linear(&mut enc, i, 6, &act, &x, m, true)?;
            // Bound the size of one command buffer (lavapipe and browsers prefer short ones).
            enc.submit();
            enc = gpu.encoder();
        }
        nn::rmsnorm_fwd(&mut enc, &x, &self.norm, &hbuf, &rstd, m, c, eps)?;
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        nn::matmul_fwd(&mut enc, &hbuf, head, &logits, m, c, v, 1.0, false)?;
        enc.submit();
        Ok(logits)
    }
}
