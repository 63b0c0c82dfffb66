//! Loading a model's tensors to the device (quantizing the frozen linears on the way), and LoRA
//! adapters onto a loaded model.

use tinytune_gpu::ops::nf4;
use tinytune_gpu::{Gpu, GpuBuffer};

use super::{linear_path, Layer, Linear, LlamaModel, LoadOptions, Quant, Workspace};
use crate::f32_bytes;
use crate::lora::{flat_layout, Lora, LoraGpu, LoraPairGpu};
use crate::prefix::PrefixGpu;
use crate::rope::{rope_inv_freq, Llama3Scaling};
use crate::targets::LINEARS;
use crate::vocab::VocabTable;
use crate::{LlamaConfig, ModelError, ModelSource, RopeScaling, Weight};

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
        LlamaModel::load_with(gpu, src, quant, &LoadOptions::default())
    }

    /// [`LlamaModel::load`] with options.
    pub fn load_with(
        gpu: &Gpu,
        src: &ModelSource,
        quant: Quant,
        opts: &LoadOptions,
    ) -> Result<LlamaModel, ModelError> {
        let cfg = src.config().clone();
        if let (Some(p), Quant::Nf4 { double_quant, .. }) = (&opts.blocks, quant) {
            if p.blocks.len() != cfg.num_hidden_layers || p.double_quant != double_quant {
                return Err(ModelError::Option(format!(
                    "the block-size plan is for {} layers{}, the model has {}{}",
                    p.blocks.len(),
                    if p.double_quant {
                        " with double quantization"
                    } else {
                        ""
                    },
                    cfg.num_hidden_layers,
                    if double_quant {
                        " with double quantization"
                    } else {
                        ""
                    }
                )));
            }
        }
        let table = |name: &str| -> Result<VocabTable, ModelError> {
            VocabTable::load(gpu, src, name, opts.vocab_dtype, opts.vocab_chunk_rows)
        };
        // The embedding first: its host copies (the stored tensor, its f32 form, wgpu's staging
        // copy) are the largest of the model and are gone before the layers pile up on the device.
        let embed = table("model.embed_tokens.weight")?;
        gpu.encoder().submit();
        gpu.sync()?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let linears = (0..7)
                .map(|t| {
                    let path = linear_path(i, t);
                    let name = format!("{path}.weight");
                    let (n_out, n_in) = match src.tensor_meta(&name).map(|m| &m.shape[..]) {
                        Some(&[o, i]) => (o, i),
                        _ => {
                            return Err(ModelError::Tensor(format!(
                                "the model has no 2-D tensor '{name}'"
                            )))
                        }
                    };
                    // A bitsandbytes checkpoint's codes, used as they are.
                    if let Some(t) = src.nf4(&name)? {
                        let w = tinytune_gpu::ops::nf4::Nf4Weight::upload(gpu, &name, &t)?;
                        let weight = match quant {
                            Quant::Nf4 { .. } => Weight::Nf4(w),
                            Quant::None => {
                                let out = gpu.alloc(&name, crate::f32_bytes(&[n_out, n_in]))?;
                                let mut enc = gpu.encoder();
                                nf4::dequantize(&mut enc, &w, &out)?;
                                enc.submit();
                                gpu.sync()?;
                                Weight::F32(out)
                            }
                        };
                        let bias_name = format!("{path}.bias");
                        let bias = if src.tensor_meta(&bias_name).is_some() {
                            Some(upload(gpu, src, &bias_name)?)
                        } else {
                            None
                        };
                        return Ok(Linear {
                            weight,
                            bias,
                            n_in,
                            n_out,
                        });
                    }
                    let host = src.load(&name)?;
                    let f32w = gpu.upload(&name, &host.data)?;
                    drop(host);
                    let weight = match quant {
                        Quant::None => Weight::F32(f32w),
                        Quant::Nf4 {
                            block,
                            double_quant,
                        } => {
                            let block = opts.blocks.as_ref().map_or(block, |p| p.block(i, t));
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
            if quant == Quant::None || src.is_prequantized() {
                // wgpu stages every `write_buffer` until the next submit: without one (an f32
                // base, or a bitsandbytes checkpoint's codes, has no quantize pass to submit), a
                // whole model's staging copies would pile up in host memory before the first
                // step. Flush them layer by layer.
                gpu.encoder().submit();
                gpu.sync()?;
            }
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
            Some(table("lm_head.weight")?)
        };
        let inv_freq_host = config_inv_freq(&cfg);
        Ok(LlamaModel {
            embed,
            layers,
            norm: upload(gpu, src, "model.norm.weight")?,
            lm_head,
            inv_freq: gpu.upload("rope.inv_freq", &inv_freq_host)?,
            inv_freq_host,
            quant,
            config: cfg,
        })
    }
}

impl LoraGpu {
    /// Uploads host adapters, checking every pair's shape against the model.
    pub fn upload(gpu: &Gpu, model: &LlamaModel, lora: &Lora) -> Result<LoraGpu, ModelError> {
        let n_layers = model.layers.len();
        if lora.layers.len() != n_layers {
            return Err(ModelError::Shape(format!(
                "LoRA adapters for {} layers, the model has {n_layers}",
                lora.layers.len()
            )));
        }
        if lora.r == 0 {
            return Err(ModelError::Shape("LoRA rank must be positive".into()));
        }
        let r = lora.r;
        let align = (gpu.view_alignment() / 4).max(1) as usize;
        let (spots, flat_len) = flat_layout(lora, align);
        // Check every pair's shape before anything is allocated.
        for (i, pairs) in lora.layers.iter().enumerate() {
            for (t, p) in pairs.iter().enumerate() {
                let Some(p) = p else { continue };
                let lin = &model.layers[i].linears[t];
                let (k, n) = (lin.n_in, lin.n_out);
                if p.a.len() != r * k || p.b.len() != n * r {
                    return Err(ModelError::Shape(format!(
                        "LoRA layers.{i}.{}: lora_A has {} values and lora_B {}, expected [{r}, {k}] and [{n}, {r}]",
                        LINEARS[t],
                        p.a.len(),
                        p.b.len()
                    )));
                }
            }
        }
        let mut host = vec![0f32; flat_len.max(1)];
        for (p, &(a_at, b_at)) in lora
            .layers
            .iter()
            .flat_map(|l| l.iter().flatten())
            .zip(&spots)
        {
            host[a_at..a_at + p.a.len()].copy_from_slice(&p.a);
            host[b_at..b_at + p.b.len()].copy_from_slice(&p.b);
        }
        let params = gpu.upload("lora.params", &host)?;
        let grads = gpu.alloc("lora.grads", f32_bytes(&[host.len()]))?;
        let mut spots = spots.into_iter();
        let mut layers = Vec::with_capacity(n_layers);
        let mut n_params = 0;
        for (i, pairs) in lora.layers.iter().enumerate() {
            let mut out: [Option<LoraPairGpu>; 7] = Default::default();
            for (t, pair) in pairs.iter().enumerate() {
                if pair.is_none() {
                    continue;
                }
                let (a_at, b_at) = spots.next().expect("one spot per pair");
                let lin = &model.layers[i].linears[t];
                let (k, n) = (lin.n_in, lin.n_out);
                let name = format!("layers.{i}.{}", LINEARS[t]);
                let view = |flat: &GpuBuffer, what: &str, at: usize, len: usize| {
                    gpu.view(
                        flat,
                        &format!("{name}.{what}"),
                        (at * 4) as u64,
                        (len * 4) as u64,
                    )
                };
                out[t] = Some(LoraPairGpu {
                    a: view(&params, "lora_A", a_at, r * k)?,
                    b: view(&params, "lora_B", b_at, n * r)?,
                    da: view(&grads, "lora_A.grad", a_at, r * k)?,
                    db: view(&grads, "lora_B.grad", b_at, n * r)?,
                    n_in: k,
                    n_out: n,
                    a_at,
                    b_at,
                });
                n_params += r * (k + n);
            }
            layers.push(out);
        }
        Ok(LoraGpu {
            r,
            scale: lora.scale,
            layers,
            n_params,
            flat_len,
            params,
            grads,
        })
    }
}

/// The prefix-tuning text init runs the model, so it lives with the model, not in `prefix.rs`
/// (which the model's passes import).
impl PrefixGpu {
    /// A prefix holding the keys (after RoPE) and values every layer computes for `ids` at
    /// positions `0..P` (`P = ids.len()`): what the model would cache for that text as context,
    /// so training starts from the base model's behaviour after it (the Prefix-Tuning paper's
    /// initialisation from real words' activations) rather than from PEFT's random prefix.
    pub fn from_text(gpu: &Gpu, model: &LlamaModel, ids: &[u32]) -> Result<PrefixGpu, ModelError> {
        let cfg = &model.config;
        let p = ids.len();
        let pf = PrefixGpu::upload(gpu, cfg, &vec![0.0; p * PrefixGpu::row_len(cfg)], p)?;
        let ws = Workspace::new(gpu, model, None, p, true)?;
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
                tinytune_gpu::ops::nn::PrefixShape {
                    layer: i,
                    n_layers: pf.n_layers,
                    b: 1,
                    t: 0,
                    p,
                    kvd: pf.kvd,
                },
            )?;
        }
        enc.submit();
        Ok(pf)
    }
}
