//! The Llama-family decoder on the GPU (Llama, SmolLM2, TinyLlama, Llama-3.x, Qwen2 with q/k/v
//! biases), one implementation whatever the storage of its frozen linear layers: quantization is a
//! storage detail ([`Weight`]). This first step is the forward pass to logits; it mirrors
//! [`tinytune_reference::llama`] op for op, which is what the tests compare against, besides the
//! Hugging Face transformers fixtures under `tests/fixtures/hf`.

use tinytune_gpu::ops::{lora, nf4, nn};
use tinytune_gpu::{Encoder, Gpu, GpuBuffer};
use tinytune_reference::llama::lora_dropout_seed;
pub use tinytune_reference::llama::LoraDropout;
use tinytune_reference::nn::{rope_inv_freq, Llama3Scaling};

use crate::f32_bytes;
use crate::lora::LoraGpu;
use crate::prefix::PrefixGpu;
use crate::prompt::PromptGpu;
use crate::vocab::VocabTable;
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
        let table = |name: &str| -> Result<VocabTable, ModelError> {
            let t = src.load(name)?;
            if t.shape.len() != 2 {
                return Err(ModelError::Shape(format!(
                    "{name}: shape {:?}, expected [V, C]",
                    t.shape
                )));
            }
            VocabTable::upload(
                gpu,
                name,
                &t.data,
                t.shape[0],
                t.shape[1],
                opts.vocab_chunk_rows,
            )
        };
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
            Some(table("lm_head.weight")?)
        };
        let inv_freq_host = config_inv_freq(&cfg);
        Ok(LlamaModel {
            embed: table("model.embed_tokens.weight")?,
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

/// Activations of one decoder layer: kept per layer for the backward pass, or one set shared by
/// every layer in an inference forward. The normed inputs of the projections and the SwiGLU output
/// are not kept; the backward pass recomputes them (cheap elementwise kernels).
#[derive(Clone)]
pub(crate) struct LayerActs {
    /// Layer input (residual stream) `[M, C]`.
    pub(crate) x: GpuBuffer,
    /// `x + o_proj(attention)` `[M, C]`.
    pub(crate) x2: GpuBuffer,
    pub(crate) rstd1: GpuBuffer,
    pub(crate) rstd2: GpuBuffer,
    /// After RoPE `[M, H*D]`.
    pub(crate) q: GpuBuffer,
    /// After RoPE `[M, KVH*D]`.
    pub(crate) k: GpuBuffer,
    pub(crate) v: GpuBuffer,
    /// Attention output `[M, H*D]`.
    pub(crate) attn: GpuBuffer,
    /// `[B, H, T]`.
    pub(crate) lse: GpuBuffer,
    pub(crate) gate: GpuBuffer,
    pub(crate) up: GpuBuffer,
    /// LoRA `h = x · Aᵀ` `[M, R]` of each adapted linear.
    pub(crate) lora_h: [Option<GpuBuffer>; 7],
}

/// Shared buffers of a layer's forward: the normed input, the SwiGLU output, the positions, and
/// the LoRA dropout with its scratch (training only).
pub(crate) struct LayerScratch<'a> {
    pub(crate) hbuf: &'a GpuBuffer,
    pub(crate) act: &'a GpuBuffer,
    pub(crate) pos: &'a GpuBuffer,
    pub(crate) drop: Option<(LoraDropout, &'a GpuBuffer)>,
}

/// Gradient buffers of the backward pass (shared by every layer).
struct GradBufs {
    dx: GpuBuffer,
    dh: GpuBuffer,
    dattn: GpuBuffer,
    dq: GpuBuffer,
    dk: GpuBuffer,
    dv: GpuBuffer,
    dgate: GpuBuffer,
    dup: GpuBuffer,
    dact: GpuBuffer,
    dh_scratch: GpuBuffer,
}

/// Prefix tuning's buffers in a workspace: the prefixed keys and values `[B*(P+T), KVD]` of each
/// activation set (kept for the backward pass) and their gradients.
struct PrefixBufs {
    /// Virtual tokens the buffers were sized for.
    p: usize,
    /// Row capacity `B*T + B*P`.
    rows: usize,
    kf: Vec<GpuBuffer>,
    vf: Vec<GpuBuffer>,
    dkf: Option<GpuBuffer>,
    dvf: Option<GpuBuffer>,
}

/// The trainable virtual tokens of a prompt-learning pass.
#[derive(Clone, Copy)]
enum Virtual<'a> {
    /// Prompt tuning: input embeddings in front of each sequence.
    Prompt(&'a PromptGpu),
    /// Prefix tuning: key/value rows in front of each layer's attention.
    Prefix(&'a PrefixGpu),
}

impl<'a> Virtual<'a> {
    /// The prompt or the prefix of `virt`, if any.
    fn split(virt: Option<Virtual<'a>>) -> (Option<&'a PromptGpu>, Option<&'a PrefixGpu>) {
        match virt {
            Some(Virtual::Prompt(pr)) => (Some(pr), None),
            Some(Virtual::Prefix(pf)) => (None, Some(pf)),
            None => (None, None),
        }
    }
}

/// The LM head + cross-entropy of a training pass runs only on the rows that carry a target (for
/// chat data most positions are prompt), gathered in chunks (the logits of all rows at once would
/// not fit one binding for large vocabularies): the chunk's rows of the normed hidden states, their
/// targets, and the gradient before it is scattered back.
struct HeadChunk {
    h: GpuBuffer,
    targets: GpuBuffer,
    dh: GpuBuffer,
}

/// Device buffers of one forward (and backward) pass of up to `B*T` tokens, reusable across steps.
pub struct Workspace {
    /// Capacity in rows (`B*T`).
    pub rows: usize,
    train: bool,
    /// Gradient checkpointing: layers share their activation buffers (see [`Workspace::checkpointed`]).
    checkpoint: bool,
    ids: GpuBuffer,
    pos: GpuBuffer,
    acts: Vec<LayerActs>,
    x_final: GpuBuffer,
    hbuf: GpuBuffer,
    rstd_scratch: GpuBuffer,
    act: GpuBuffer,
    rstdf: GpuBuffer,
    /// `[chunk_rows, V]`: the logits (inference: all rows).
    logits: GpuBuffer,
    ce_lse: GpuBuffer,
    ce_loss: GpuBuffer,
    /// Per-row cross-entropy `[M]` of the last training pass (0 for ignored rows).
    pub loss_rows: GpuBuffer,
    chunk_rows: usize,
    chunk: Option<HeadChunk>,
    grads: Option<GradBufs>,
    /// LoRA dropout scratch `[M, max in]`: the dropped input and its gradient (training only).
    xd: Option<GpuBuffer>,
    dxd: Option<GpuBuffer>,
    /// Prefix tuning (see [`Workspace::with_prefix`]).
    prefix: Option<PrefixBufs>,
}

/// A run of consecutive rows: `len` rows from `src` of the full batch to `dst` of a chunk.
#[derive(Clone, Copy, Debug)]
struct Segment {
    src: usize,
    dst: usize,
    len: usize,
}

/// Splits the rows with a valid target into chunks of at most `chunk_rows` rows, each a list of
/// segments of consecutive rows.
fn head_chunks(targets: &[i32], v: usize, chunk_rows: usize) -> Vec<Vec<Segment>> {
    let mut chunks: Vec<Vec<Segment>> = Vec::new();
    let mut fill = chunk_rows; // rows in the current chunk; full forces a new chunk
    let mut prev: Option<usize> = None;
    for (r, &t) in targets.iter().enumerate() {
        if !(t >= 0 && (t as usize) < v) {
            continue;
        }
        if fill == chunk_rows {
            chunks.push(Vec::new());
            fill = 0;
            prev = None;
        }
        let segs = chunks.last_mut().expect("a chunk was pushed");
        match (segs.last_mut(), prev) {
            (Some(seg), Some(p)) if p + 1 == r => seg.len += 1,
            _ => segs.push(Segment {
                src: r,
                dst: fill,
                len: 1,
            }),
        }
        prev = Some(r);
        fill += 1;
    }
    chunks
}

/// Bytes of the logits chunk a training pass uses at most.
const HEAD_CHUNK_BYTES: usize = 64 << 20;

/// Rows of the training head's chunks: as many as [`HEAD_CHUNK_BYTES`] of logits hold.
fn default_head_rows(model: &LlamaModel, rows: usize) -> usize {
    (HEAD_CHUNK_BYTES / (model.config.vocab_size * 4)).clamp(1, rows.max(1))
}

impl Workspace {
    /// Buffers for `rows` tokens (`B*T`) of `model`, with room for the LoRA `h` of `lora`'s
    /// pairs; `train` keeps every layer's activations and allocates the gradient buffers.
    pub fn new(
        gpu: &Gpu,
        model: &LlamaModel,
        lora: Option<&LoraGpu>,
        rows: usize,
        train: bool,
    ) -> Result<Workspace, ModelError> {
        let head_rows = if train {
            default_head_rows(model, rows)
        } else {
            rows
        };
        Workspace::build(gpu, model, lora, rows, train, false, head_rows)
    }

    /// A training workspace with gradient checkpointing: only each layer's input is kept; the
    /// backward pass recomputes a layer's activations (one more forward of the adapted layers)
    /// just before its backward, so activation memory is one layer's instead of all of them.
    pub fn checkpointed(
        gpu: &Gpu,
        model: &LlamaModel,
        lora: Option<&LoraGpu>,
        rows: usize,
    ) -> Result<Workspace, ModelError> {
        let head_rows = default_head_rows(model, rows);
        Workspace::build(gpu, model, lora, rows, true, true, head_rows)
    }

    /// [`Workspace::new`] with the LM head + cross-entropy of a training pass done in chunks of
    /// `head_rows` rows (the default bounds a chunk's logits to 64 MiB).
    pub fn with_head_chunk(
        gpu: &Gpu,
        model: &LlamaModel,
        lora: Option<&LoraGpu>,
        rows: usize,
        train: bool,
        head_rows: usize,
    ) -> Result<Workspace, ModelError> {
        Workspace::build(gpu, model, lora, rows, train, false, head_rows)
    }

    fn build(
        gpu: &Gpu,
        model: &LlamaModel,
        lora: Option<&LoraGpu>,
        rows: usize,
        train: bool,
        checkpoint: bool,
        head_rows: usize,
    ) -> Result<Workspace, ModelError> {
        let cfg = &model.config;
        if rows == 0 {
            return Err(ModelError::Shape("workspace for 0 tokens".into()));
        }
        let m = rows;
        let (c, hd, v) = (cfg.hidden_size, cfg.head_dim, cfg.vocab_size);
        let (h, kvh, inter) = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.intermediate_size,
        );
        let f = |n: usize| f32_bytes(&[m, n]);
        // One set per layer when training (with checkpointing the sets share every buffer but
        // the layer input `x`), one shared set for inference.
        let n_sets = if train && !checkpoint {
            model.layers.len()
        } else {
            1
        };
        // Below the lowest adapted layer nothing is kept for the backward pass (it stops there):
        // those layers share one set, the stream included (a layer may write its own input).
        let lowest = if train && !checkpoint {
            lora.and_then(|l| l.lowest_layer()).unwrap_or(0)
        } else {
            0
        };
        let mut acts: Vec<LayerActs> = Vec::with_capacity(n_sets);
        for s in 0..n_sets {
            if s > 0 && s < lowest {
                acts.push(acts[0].clone());
                continue;
            }
            let mut lora_h: [Option<GpuBuffer>; 7] = Default::default();
            if let Some(l) = lora {
                for (t, slot) in lora_h.iter_mut().enumerate() {
                    let used = if train && !checkpoint {
                        l.pair(s, t).is_some()
                    } else {
                        l.layers.iter().any(|p| p[t].is_some())
                    };
                    if used {
                        *slot = Some(gpu.alloc(&format!("acts.{s}.lora_h.{t}"), f(l.r))?);
                    }
                }
            }
            acts.push(LayerActs {
                x: gpu.alloc(&format!("acts.{s}.x"), f(c))?,
                x2: gpu.alloc(&format!("acts.{s}.x2"), f(c))?,
                rstd1: gpu.alloc(&format!("acts.{s}.rstd1"), f(1))?,
                rstd2: gpu.alloc(&format!("acts.{s}.rstd2"), f(1))?,
                q: gpu.alloc(&format!("acts.{s}.q"), f(h * hd))?,
                k: gpu.alloc(&format!("acts.{s}.k"), f(kvh * hd))?,
                v: gpu.alloc(&format!("acts.{s}.v"), f(kvh * hd))?,
                attn: gpu.alloc(&format!("acts.{s}.attn"), f(h * hd))?,
                lse: gpu.alloc(&format!("acts.{s}.lse"), f(h))?,
                gate: gpu.alloc(&format!("acts.{s}.gate"), f(inter))?,
                up: gpu.alloc(&format!("acts.{s}.up"), f(inter))?,
                lora_h,
            });
        }
        if train && checkpoint {
            let base = acts[0].clone();
            for s in 1..model.layers.len() {
                acts.push(LayerActs {
                    x: gpu.alloc(&format!("acts.{s}.x"), f(c))?,
                    ..base.clone()
                });
            }
        }
        let chunk_rows = head_rows.clamp(1, m);
        let chunk = if train {
            Some(HeadChunk {
                h: gpu.alloc("head.h", f32_bytes(&[chunk_rows, c]))?,
                targets: gpu.alloc("head.targets", f32_bytes(&[chunk_rows]))?,
                dh: gpu.alloc("head.dh", f32_bytes(&[chunk_rows, c]))?,
            })
        } else {
            None
        };
        let grads = if train {
            let r = lora.map_or(1, |l| l.r);
            Some(GradBufs {
                dx: gpu.alloc("grad.dx", f(c))?,
                dh: gpu.alloc("grad.dh", f(c))?,
                dattn: gpu.alloc("grad.dattn", f(h * hd))?,
                dq: gpu.alloc("grad.dq", f(h * hd))?,
                dk: gpu.alloc("grad.dk", f(kvh * hd))?,
                dv: gpu.alloc("grad.dv", f(kvh * hd))?,
                dgate: gpu.alloc("grad.dgate", f(inter))?,
                dup: gpu.alloc("grad.dup", f(inter))?,
                dact: gpu.alloc("grad.dact", f(inter))?,
                dh_scratch: gpu.alloc("grad.lora_dh", f(r))?,
            })
        } else {
            None
        };
        let max_in = c.max(inter).max(h * hd);
        let (xd, dxd) = if train {
            (
                Some(gpu.alloc("lora.dropout.x", f(max_in))?),
                Some(gpu.alloc("lora.dropout.dx", f(max_in))?),
            )
        } else {
            (None, None)
        };
        Ok(Workspace {
            prefix: None,
            xd,
            dxd,
            rows,
            train,
            checkpoint,
            ids: gpu.alloc("ids", f(1))?,
            pos: gpu.alloc("positions", f(1))?,
            acts,
            x_final: gpu.alloc("x_final", f(c))?,
            hbuf: gpu.alloc("normed", f(c))?,
            rstd_scratch: gpu.alloc("rstd", f(1))?,
            act: gpu.alloc("act", f(inter))?,
            rstdf: gpu.alloc("rstd_final", f(1))?,
            logits: gpu.alloc("logits", f32_bytes(&[chunk_rows, v]))?,
            ce_lse: gpu.alloc("ce.lse", f32_bytes(&[chunk_rows]))?,
            ce_loss: gpu.alloc("ce.loss", f32_bytes(&[chunk_rows]))?,
            loss_rows: gpu.alloc("loss_rows", f(1))?,
            chunk_rows,
            chunk,
            grads,
        })
    }

    /// Adds the buffers prefix tuning with `prefix`'s shape needs for batches of up to `batch`
    /// sequences (the workspace's `B*T` rows plus `B*P` prefix rows per layer).
    pub fn with_prefix(
        mut self,
        gpu: &Gpu,
        prefix: &PrefixGpu,
        batch: usize,
    ) -> Result<Workspace, ModelError> {
        let rows = self.rows + batch.max(1) * prefix.p;
        let bytes = f32_bytes(&[rows, prefix.kvd]);
        let sets = if self.train && !self.checkpoint {
            self.acts.len()
        } else {
            1
        };
        let mut kf = Vec::with_capacity(sets);
        let mut vf = Vec::with_capacity(sets);
        for s in 0..sets {
            kf.push(gpu.alloc(&format!("acts.{s}.prefix_k"), bytes)?);
            vf.push(gpu.alloc(&format!("acts.{s}.prefix_v"), bytes)?);
        }
        let (dkf, dvf) = if self.train {
            (
                Some(gpu.alloc("grad.prefix_k", bytes)?),
                Some(gpu.alloc("grad.prefix_v", bytes)?),
            )
        } else {
            (None, None)
        };
        self.prefix = Some(PrefixBufs {
            p: prefix.p,
            rows,
            kf,
            vf,
            dkf,
            dvf,
        });
        Ok(self)
    }

    /// Layer `i`'s keys (after RoPE) and values `[M, KVH*D]` of the last pass (a training
    /// workspace keeps every layer's).
    pub(crate) fn layer_kv(&self, i: usize) -> (&GpuBuffer, &GpuBuffer) {
        let a = self.set(i);
        (&a.k, &a.v)
    }

    /// Layer `i`'s prefixed key and value buffers.
    fn prefix_kv(&self, i: usize) -> Option<(&GpuBuffer, &GpuBuffer)> {
        self.prefix.as_ref().map(|pb| {
            let s = if pb.kf.len() > 1 { i } else { 0 };
            (&pb.kf[s], &pb.vf[s])
        })
    }

    /// The logits `[B*T, V]` of the last inference [`LlamaModel::forward_with`].
    pub fn logits(&self) -> &GpuBuffer {
        &self.logits
    }

    /// Reads the summed cross-entropy of the first `m` rows of the last training pass.
    pub async fn loss_sum(&self, gpu: &Gpu, m: usize) -> Result<f64, ModelError> {
        let rows = gpu.read::<f32>(&self.loss_rows).await?;
        Ok(rows.iter().take(m).map(|&l| l as f64).sum())
    }

    fn set(&self, i: usize) -> &LayerActs {
        &self.acts[if self.train { i } else { 0 }]
    }

    /// Where the residual stream goes after layer `i`.
    fn stream_after(&self, i: usize, n_layers: usize) -> &GpuBuffer {
        if i + 1 == n_layers {
            &self.x_final
        } else {
            &self.set(i + 1).x
        }
    }
}

fn grads_of(ws: &Workspace) -> Result<&GradBufs, ModelError> {
    ws.grads
        .as_ref()
        .ok_or_else(|| ModelError::Shape("backward needs a training workspace".into()))
}

impl LlamaModel {
    /// Records `y (+)= x · Wᵀ (+ bias) (+ scale · (x · Aᵀ) · Bᵀ)` for linear `t` of layer `i`.
    #[allow(clippy::too_many_arguments)]
    fn linear_drop(
        &self,
        enc: &mut Encoder,
        lora: Option<&LoraGpu>,
        acts: &LayerActs,
        i: usize,
        t: usize,
        x: &GpuBuffer,
        y: &GpuBuffer,
        m: usize,
        accumulate: bool,
        drop: Option<(LoraDropout, &GpuBuffer)>,
    ) -> Result<(), ModelError> {
        let lin = &self.layers[i].linears[t];
        match &lin.weight {
            Weight::F32(w) => nn::matmul_fwd(
                enc,
                x,
                w,
                y,
                nn::MatmulShape {
                    m,
                    k: lin.n_in,
                    n: lin.n_out,
                },
                1.0,
                accumulate,
            )?,
            Weight::Nf4(w) => nf4::matmul_fwd(
                enc,
                x,
                w,
                y,
                nf4::MatmulShape {
                    m,
                    k: lin.n_in,
                    n: lin.n_out,
                },
                1.0,
                accumulate,
            )?,
        }
        if let Some(b) = &lin.bias {
            nn::bias_add_fwd(enc, b, y, m, lin.n_out)?;
        }
        if let Some((l, p)) = lora.and_then(|l| l.pair(i, t).map(|p| (l, p))) {
            let h = acts.lora_h[t].as_ref().ok_or_else(|| {
                ModelError::Shape("workspace was made without these LoRA adapters".into())
            })?;
            let x = match drop {
                Some((d, xd)) => {
                    let seed = lora_dropout_seed(d.seed, i, t);
                    nn::dropout_fwd(enc, x, xd, m * p.n_in, d.p, seed)?;
                    xd
                }
                None => x,
            };
            lora::adapter_fwd(
                enc,
                x,
                &p.a,
                &p.b,
                h,
                y,
                lora::LoraShape {
                    m,
                    k: p.n_in,
                    n: p.n_out,
                    r: l.r,
                    scale: l.scale,
                },
            )?;
        }
        Ok(())
    }

    /// Records the backward of linear `t` of layer `i` for the upstream gradient `dy`: writes
    /// (or adds, with `accumulate`) `dx = dy · W (+ LoRA's share)` and adds the LoRA gradients.
    #[allow(clippy::too_many_arguments)]
    fn linear_bwd(
        &self,
        enc: &mut Encoder,
        lora: Option<&LoraGpu>,
        acts: &LayerActs,
        g: &GradBufs,
        i: usize,
        t: usize,
        x: &GpuBuffer,
        dy: &GpuBuffer,
        dx: &GpuBuffer,
        m: usize,
        accumulate: bool,
        drop: Option<(LoraDropout, &GpuBuffer, &GpuBuffer)>,
    ) -> Result<(), ModelError> {
        let lin = &self.layers[i].linears[t];
        match &lin.weight {
            Weight::F32(w) => nn::matmul_bwd_input(
                enc,
                dy,
                w,
                dx,
                nn::MatmulShape {
                    m,
                    k: lin.n_in,
                    n: lin.n_out,
                },
                accumulate,
            )?,
            Weight::Nf4(w) => nf4::matmul_bwd_input(
                enc,
                dy,
                w,
                dx,
                nf4::MatmulShape {
                    m,
                    k: lin.n_in,
                    n: lin.n_out,
                },
                accumulate,
            )?,
        }
        if let Some((lora, p)) = lora.and_then(|l| l.pair(i, t).map(|p| (l, p))) {
            let h = acts.lora_h[t].as_ref().ok_or_else(|| {
                ModelError::Shape("workspace was made without these LoRA adapters".into())
            })?;
            // With dropout, the branch saw xd = dropout(x): recompute it, take the branch's
            // gradient w.r.t. xd into `dxd`, and route it back through the same mask.
            let (x_in, dx_out, mask) = match drop {
                Some((d, xd, dxd)) => {
                    let seed = lora_dropout_seed(d.seed, i, t);
                    nn::dropout_fwd(enc, x, xd, m * p.n_in, d.p, seed)?;
                    enc.clear(dxd);
                    (xd, dxd, Some((d.p, seed)))
                }
                None => (x, dx, None),
            };
            lora::adapter_bwd(
                enc,
                x_in,
                h,
                dy,
                &p.a,
                &p.b,
                &p.da,
                &p.db,
                dx_out,
                &g.dh_scratch,
                lora::LoraShape {
                    m,
                    k: p.n_in,
                    n: p.n_out,
                    r: lora.r,
                    scale: lora.scale,
                },
            )?;
            if let Some((pd, seed)) = mask {
                nn::dropout_bwd(enc, dx_out, dx, m * p.n_in, pd, seed)?;
            }
        }
        Ok(())
    }

    fn check_batch(
        &self,
        ws: &Workspace,
        n_ids: usize,
        b: usize,
        t: usize,
    ) -> Result<usize, ModelError> {
        let m = b * t;
        if n_ids != m || m == 0 {
            return Err(ModelError::Shape(format!(
                "forward: {n_ids} ids for B={b} T={t}"
            )));
        }
        if m > ws.rows {
            return Err(ModelError::Shape(format!(
                "forward: B*T = {m} tokens exceed the workspace's {}",
                ws.rows
            )));
        }
        Ok(m)
    }

    /// Records decoder layer `i` on the rows of `a`: from the stream `a.x` to `next` (which may be
    /// `a.x` itself), the attention recorded by `attend` once q, k (after RoPE) and v are ready.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn record_layer(
        &self,
        enc: &mut Encoder,
        lora: Option<&LoraGpu>,
        a: &LayerActs,
        i: usize,
        s: &LayerScratch,
        next: &GpuBuffer,
        m: usize,
        attend: impl FnOnce(&mut Encoder, &LayerActs) -> Result<(), ModelError>,
    ) -> Result<(), ModelError> {
        let cfg = &self.config;
        let (c, hd, inter) = (cfg.hidden_size, cfg.head_dim, cfg.intermediate_size);
        let (h, kvh) = (cfg.num_attention_heads, cfg.num_key_value_heads);
        let eps = cfg.rms_norm_eps as f32;
        let layer = &self.layers[i];
        let drop = s.drop;
        nn::rmsnorm_fwd(
            enc,
            &a.x,
            &layer.input_layernorm,
            s.hbuf,
            &a.rstd1,
            m,
            c,
            eps,
        )?;
        self.linear_drop(enc, lora, a, i, 0, s.hbuf, &a.q, m, false, drop)?;
        self.linear_drop(enc, lora, a, i, 1, s.hbuf, &a.k, m, false, drop)?;
        self.linear_drop(enc, lora, a, i, 2, s.hbuf, &a.v, m, false, drop)?;
        nn::rope_fwd(enc, &a.q, s.pos, &self.inv_freq, m, h, hd)?;
        nn::rope_fwd(enc, &a.k, s.pos, &self.inv_freq, m, kvh, hd)?;
        attend(enc, a)?;
        // Residual connections: copy the stream, then the projection accumulates into it.
        enc.copy(&a.x, 0, &a.x2, 0, (m * c * 4) as u64);
        self.linear_drop(enc, lora, a, i, 3, &a.attn, &a.x2, m, true, drop)?;
        nn::rmsnorm_fwd(
            enc,
            &a.x2,
            &layer.post_attention_layernorm,
            s.hbuf,
            &a.rstd2,
            m,
            c,
            eps,
        )?;
        self.linear_drop(enc, lora, a, i, 4, s.hbuf, &a.gate, m, false, drop)?;
        self.linear_drop(enc, lora, a, i, 5, s.hbuf, &a.up, m, false, drop)?;
        nn::swiglu_fwd(enc, &a.gate, &a.up, s.act, m * inter)?;
        enc.copy(&a.x2, 0, next, 0, (m * c * 4) as u64);
        self.linear_drop(enc, lora, a, i, 6, s.act, next, m, true, drop)
    }

    /// Records layer `i`'s causal attention on `a`'s q, k (after RoPE) and v, with prefix tuning's
    /// key/value rows in front of each sequence's when `prefix` is given.
    #[allow(clippy::too_many_arguments)]
    fn record_attention(
        &self,
        enc: &mut Encoder,
        ws: &Workspace,
        a: &LayerActs,
        i: usize,
        b: usize,
        t: usize,
        prefix: Option<&PrefixGpu>,
    ) -> Result<(), ModelError> {
        let cfg = &self.config;
        let (hd, h, kvh) = (
            cfg.head_dim,
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
        );
        let scale = 1.0 / (hd as f32).sqrt();
        match (prefix, ws.prefix_kv(i)) {
            (None, _) => nn::attention_fwd(
                enc,
                &a.q,
                &a.k,
                &a.v,
                &a.attn,
                &a.lse,
                nn::AttentionShape {
                    b,
                    tq: t,
                    tk: t,
                    h,
                    kvh,
                    d: hd,
                    scale,
                },
            )?,
            (Some(pf), Some((kf, vf))) => {
                nn::prefix_fwd(
                    enc,
                    &pf.kv,
                    &a.k,
                    &a.v,
                    kf,
                    vf,
                    nn::PrefixShape {
                        layer: i,
                        n_layers: pf.n_layers,
                        b,
                        t,
                        p: pf.p,
                        kvd: pf.kvd,
                    },
                )?;
                nn::attention_fwd(
                    enc,
                    &a.q,
                    kf,
                    vf,
                    &a.attn,
                    &a.lse,
                    nn::AttentionShape {
                        b,
                        tq: t,
                        tk: pf.p + t,
                        h,
                        kvh,
                        d: hd,
                        scale,
                    },
                )?;
            }
            (Some(_), None) => {
                return Err(ModelError::Shape(
                    "prefix tuning needs a workspace made with Workspace::with_prefix".into(),
                ))
            }
        }
        Ok(())
    }

    /// Checks that `prefix` fits this model and `ws` for `B` sequences of `T` tokens.
    fn check_prefix(
        &self,
        ws: &Workspace,
        prefix: &PrefixGpu,
        b: usize,
        t: usize,
    ) -> Result<(), ModelError> {
        let cfg = &self.config;
        let kvd = cfg.num_key_value_heads * cfg.head_dim;
        if prefix.n_layers != self.layers.len() || prefix.kvd != kvd {
            return Err(ModelError::Shape(format!(
                "the prefix is for {} layers of key width {}, the model has {} layers of width {kvd}",
                prefix.n_layers,
                prefix.kvd,
                self.layers.len()
            )));
        }
        match &ws.prefix {
            Some(pb) if pb.p == prefix.p && b * (prefix.p + t) <= pb.rows => Ok(()),
            _ => Err(ModelError::Shape(format!(
                "the workspace has no prefix buffers for B={b} sequences of {} + {t} positions \
                 (Workspace::with_prefix)",
                prefix.p
            ))),
        }
    }

    /// Records and submits the decoder up to the final norm (`ws.hbuf` holds the normed final
    /// hidden states afterwards).
    #[allow(clippy::too_many_arguments)]
    fn record_decoder(
        &self,
        gpu: &Gpu,
        ws: &Workspace,
        lora: Option<&LoraGpu>,
        ids: &[u32],
        b: usize,
        t: usize,
        drop: Option<LoraDropout>,
        virt: Option<Virtual<'_>>,
    ) -> Result<usize, ModelError> {
        let cfg = &self.config;
        let m = self.check_batch(ws, ids.len(), b, t)?;
        let c = cfg.hidden_size;
        let (prompt, prefix) = Virtual::split(virt);
        if let Some(pf) = prefix {
            self.check_prefix(ws, pf, b, t)?;
        }
        gpu.write(&ws.ids, 0, bytemuck::cast_slice(ids));
        // With prefix tuning the tokens sit after the P virtual positions.
        let p0 = prefix.map_or(0, |pf| pf.p);
        let pos: Vec<u32> = (0..m).map(|i| (p0 + i % t) as u32).collect();
        gpu.write(&ws.pos, 0, bytemuck::cast_slice(&pos));
        let eps = cfg.rms_norm_eps as f32;
        let n_layers = self.layers.len();
        let mut enc = gpu.encoder();
        self.embed.embed(&mut enc, &ws.ids, &ws.set(0).x, m)?;
        if let Some(pr) = prompt {
            // The first P positions of each sequence are the virtual tokens.
            for s in 0..b {
                let at = (s * t * c * 4) as u64;
                enc.copy(&pr.emb, 0, &ws.set(0).x, at, (pr.p * c * 4) as u64);
            }
        }
        let scratch = LayerScratch {
            hbuf: &ws.hbuf,
            act: &ws.act,
            pos: &ws.pos,
            drop: drop
                .and_then(|d| (d.p > 0.0).then_some(d))
                .zip(ws.xd.as_ref()),
        };
        for i in 0..n_layers {
            let a = ws.set(i);
            let next = ws.stream_after(i, n_layers);
            self.record_layer(&mut enc, lora, a, i, &scratch, next, m, |enc, a| {
                self.record_attention(enc, ws, a, i, b, t, prefix)
            })?;
            // Bound the size of one command buffer (lavapipe and browsers prefer short ones).
            enc.submit();
            enc = gpu.encoder();
        }
        nn::rmsnorm_fwd(
            &mut enc,
            &ws.x_final,
            &self.norm,
            &ws.hbuf,
            &ws.rstdf,
            m,
            c,
            eps,
        )?;
        enc.submit();
        Ok(m)
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

    #[allow(clippy::too_many_arguments)]
    fn train_pass(
        &self,
        gpu: &Gpu,
        ws: &Workspace,
        lora: Option<&LoraGpu>,
        ids: &[u32],
        targets: &[i32],
        b: usize,
        t: usize,
        grad_scale: Option<f32>,
        drop: Option<LoraDropout>,
        virt: Option<Virtual<'_>>,
    ) -> Result<(), ModelError> {
        let g = grads_of(ws)?;
        let (prompt, prefix) = Virtual::split(virt);
        if targets.len() != ids.len() {
            return Err(ModelError::Shape(format!(
                "forward_backward: {} targets for {} ids",
                targets.len(),
                ids.len()
            )));
        }
        let cfg = &self.config;
        let drop = drop.filter(|d| d.p > 0.0);
        let m = self.record_decoder(gpu, ws, lora, ids, b, t, drop, virt)?;
        let (c, hd, v) = (cfg.hidden_size, cfg.head_dim, cfg.vocab_size);
        let (h, kvh, inter) = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.intermediate_size,
        );
        let eps = cfg.rms_norm_eps as f32;
        // LM head + cross-entropy (+ its backward) on the rows with a target, gathered in chunks;
        // dh = d(normed final hidden), zero on the other rows.
        let ch = ws
            .chunk
            .as_ref()
            .ok_or_else(|| ModelError::Shape("training workspace without head buffers".into()))?;
        let mut enc = gpu.encoder();
        enc.clear(&ws.loss_rows);
        enc.clear(&g.dh);
        enc.submit();
        let row_bytes = (c * 4) as u64;
        for segs in head_chunks(targets, v, ws.chunk_rows) {
            let rows: usize = segs.iter().map(|s| s.len).sum();
            let mut tc = Vec::with_capacity(rows);
            for sg in &segs {
                tc.extend_from_slice(&targets[sg.src..sg.src + sg.len]);
            }
            gpu.write(&ch.targets, 0, bytemuck::cast_slice(&tc));
            let mut enc = gpu.encoder();
            for sg in &segs {
                enc.copy(
                    &ws.hbuf,
                    sg.src as u64 * row_bytes,
                    &ch.h,
                    sg.dst as u64 * row_bytes,
                    sg.len as u64 * row_bytes,
                );
            }
            self.head().head_fwd(&mut enc, &ch.h, &ws.logits, rows)?;
            nn::cross_entropy_fwd(
                &mut enc,
                &ws.logits,
                &ch.targets,
                &ws.ce_loss,
                &ws.ce_lse,
                rows,
                v,
                None,
            )?;
            for sg in &segs {
                enc.copy(
                    &ws.ce_loss,
                    (sg.dst * 4) as u64,
                    &ws.loss_rows,
                    (sg.src * 4) as u64,
                    (sg.len * 4) as u64,
                );
            }
            if let Some(grad_scale) = grad_scale {
                nn::cross_entropy_bwd(
                    &mut enc,
                    &ws.logits,
                    &ch.targets,
                    &ws.ce_lse,
                    rows,
                    v,
                    grad_scale,
                )?;
                self.head().head_bwd(&mut enc, &ws.logits, &ch.dh, rows)?;
                for sg in &segs {
                    enc.copy(
                        &ch.dh,
                        sg.dst as u64 * row_bytes,
                        &g.dh,
                        sg.src as u64 * row_bytes,
                        sg.len as u64 * row_bytes,
                    );
                }
            }
            enc.submit();
        }
        if grad_scale.is_none() {
            return Ok(());
        }
        // The backward pass runs down to the lowest adapter, through every layer for prefix
        // tuning, and to the input embeddings for prompt tuning.
        let lowest = match (virt, lora.and_then(|l| l.lowest_layer())) {
            (Some(_), _) => 0,
            (None, Some(l)) => l,
            (None, None) => return Ok(()),
        };
        let bd = match (drop, &ws.xd, &ws.dxd) {
            (Some(d), Some(xd), Some(dxd)) => Some((d, xd, dxd)),
            _ => None,
        };
        let mut enc = gpu.encoder();
        nn::rmsnorm_bwd(
            &mut enc,
            &g.dh,
            &ws.x_final,
            &self.norm,
            &ws.rstdf,
            &g.dx,
            m,
            c,
            false,
        )?;
        let scale = 1.0 / (hd as f32).sqrt();
        let scratch = LayerScratch {
            hbuf: &ws.hbuf,
            act: &ws.act,
            pos: &ws.pos,
            drop: drop.zip(ws.xd.as_ref()),
        };
        let n_layers = self.layers.len();
        for i in (lowest..n_layers).rev() {
            let layer = &self.layers[i];
            let a = ws.set(i);
            if ws.checkpoint {
                // Recompute this layer's activations from its saved input (same masks); its
                // output overwrites the next layer's input, which is no longer needed.
                let next = ws.stream_after(i, n_layers);
                self.record_layer(&mut enc, lora, a, i, &scratch, next, m, |enc, a| {
                    self.record_attention(enc, ws, a, i, b, t, prefix)
                })?;
            }
            // MLP: x3 = x2 + down(swiglu(gate(h2), up(h2))); g.dx holds dx3.
            nn::swiglu_fwd(&mut enc, &a.gate, &a.up, &ws.act, m * inter)?;
            self.linear_bwd(
                &mut enc, lora, a, g, i, 6, &ws.act, &g.dx, &g.dact, m, false, bd,
            )?;
            nn::swiglu_bwd(
                &mut enc,
                &g.dact,
                &a.gate,
                &a.up,
                &g.dgate,
                &g.dup,
                m * inter,
            )?;
            nn::rmsnorm_fwd(
                &mut enc,
                &a.x2,
                &layer.post_attention_layernorm,
                &ws.hbuf,
                &ws.rstd_scratch,
                m,
                c,
                eps,
            )?;
            self.linear_bwd(
                &mut enc, lora, a, g, i, 4, &ws.hbuf, &g.dgate, &g.dh, m, false, bd,
            )?;
            self.linear_bwd(
                &mut enc, lora, a, g, i, 5, &ws.hbuf, &g.dup, &g.dh, m, true, bd,
            )?;
            nn::rmsnorm_bwd(
                &mut enc,
                &g.dh,
                &a.x2,
                &layer.post_attention_layernorm,
                &a.rstd2,
                &g.dx,
                m,
                c,
                true,
            )?;
            // Attention: x2 = x + o(attn(rope(q(h1)), rope(k(h1)), v(h1))); g.dx holds dx2.
            self.linear_bwd(
                &mut enc, lora, a, g, i, 3, &a.attn, &g.dx, &g.dattn, m, false, bd,
            )?;
            match (prefix, ws.prefix_kv(i), &ws.prefix) {
                (
                    Some(pf),
                    Some((kf, vf)),
                    Some(PrefixBufs {
                        dkf: Some(dkf),
                        dvf: Some(dvf),
                        ..
                    }),
                ) => {
                    nn::attention_bwd(
                        &mut enc,
                        &g.dattn,
                        &a.q,
                        kf,
                        vf,
                        &a.attn,
                        &a.lse,
                        &g.dq,
                        dkf,
                        dvf,
                        nn::AttentionShape {
                            b,
                            tq: t,
                            tk: pf.p + t,
                            h,
                            kvh,
                            d: hd,
                            scale,
                        },
                    )?;
                    nn::prefix_bwd(
                        &mut enc,
                        dkf,
                        dvf,
                        &g.dk,
                        &g.dv,
                        &pf.grad,
                        nn::PrefixShape {
                            layer: i,
                            n_layers: pf.n_layers,
                            b,
                            t,
                            p: pf.p,
                            kvd: pf.kvd,
                        },
                    )?;
                }
                (Some(_), _, _) => {
                    return Err(ModelError::Shape(
                        "prefix tuning needs a training workspace made with Workspace::with_prefix"
                            .into(),
                    ))
                }
                (None, _, _) => nn::attention_bwd(
                    &mut enc,
                    &g.dattn,
                    &a.q,
                    &a.k,
                    &a.v,
                    &a.attn,
                    &a.lse,
                    &g.dq,
                    &g.dk,
                    &g.dv,
                    nn::AttentionShape {
                        b,
                        tq: t,
                        tk: t,
                        h,
                        kvh,
                        d: hd,
                        scale,
                    },
                )?,
            }
            // Prefix tuning: below layer 0's keys and values nothing is trained.
            if prefix.is_some() && i == 0 {
                break;
            }
            nn::rope_bwd(&mut enc, &g.dq, &ws.pos, &self.inv_freq, m, h, hd)?;
            nn::rope_bwd(&mut enc, &g.dk, &ws.pos, &self.inv_freq, m, kvh, hd)?;
            nn::rmsnorm_fwd(
                &mut enc,
                &a.x,
                &layer.input_layernorm,
                &ws.hbuf,
                &ws.rstd_scratch,
                m,
                c,
                eps,
            )?;
            self.linear_bwd(
                &mut enc, lora, a, g, i, 0, &ws.hbuf, &g.dq, &g.dh, m, false, bd,
            )?;
            self.linear_bwd(
                &mut enc, lora, a, g, i, 1, &ws.hbuf, &g.dk, &g.dh, m, true, bd,
            )?;
            self.linear_bwd(
                &mut enc, lora, a, g, i, 2, &ws.hbuf, &g.dv, &g.dh, m, true, bd,
            )?;
            if i > lowest || prompt.is_some() {
                nn::rmsnorm_bwd(
                    &mut enc,
                    &g.dh,
                    &a.x,
                    &layer.input_layernorm,
                    &a.rstd1,
                    &g.dx,
                    m,
                    c,
                    true,
                )?;
            }
            enc.submit();
            enc = gpu.encoder();
        }
        // Prompt tuning: g.dx is the gradient of the decoder input; each sequence's first P rows
        // belong to the virtual tokens.
        if let Some(pr) = prompt {
            let bytes = (pr.p * c * 4) as u64;
            for s in 0..b {
                enc.copy(&g.dx, (s * t * c * 4) as u64, &pr.scratch, 0, bytes);
                nn::add_fwd(&mut enc, &pr.scratch, &pr.grad, pr.p * c, 1.0)?;
            }
        }
        enc.submit();
        Ok(())
    }
}
