//! Planning the device buffers of a pass: activations kept per layer (or shared, with
//! gradient checkpointing), gradient buffers, the chunks of the training head, prefix tuning's
//! prefixed keys and values.

use tinytune_gpu::{Gpu, GpuBuffer};

use super::{LlamaModel, LoraDropout, Peft};
use crate::f32_bytes;
use crate::lora::LoraGpu;
use crate::prefix::PrefixGpu;
use crate::ModelError;

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
pub(super) struct GradBufs {
    pub(super) dx: GpuBuffer,
    pub(super) dh: GpuBuffer,
    pub(super) dattn: GpuBuffer,
    pub(super) dq: GpuBuffer,
    pub(super) dk: GpuBuffer,
    pub(super) dv: GpuBuffer,
    pub(super) dgate: GpuBuffer,
    pub(super) dup: GpuBuffer,
    pub(super) dact: GpuBuffer,
    pub(super) dh_scratch: GpuBuffer,
}

/// Prefix tuning's buffers in a workspace: the prefixed keys and values `[B*(P+T), KVD]` of each
/// activation set (kept for the backward pass) and their gradients.
pub(super) struct PrefixBufs {
    /// Virtual tokens the buffers were sized for.
    pub(super) p: usize,
    /// Row capacity `B*T + B*P`.
    pub(super) rows: usize,
    pub(super) kf: Vec<GpuBuffer>,
    pub(super) vf: Vec<GpuBuffer>,
    pub(super) dkf: Option<GpuBuffer>,
    pub(super) dvf: Option<GpuBuffer>,
}

/// The LM head + cross-entropy of a training pass runs only on the rows that carry a target (for
/// chat data most positions are prompt), gathered in chunks (the logits of all rows at once would
/// not fit one binding for large vocabularies): the chunk's rows of the normed hidden states, their
/// targets, and the gradient before it is scattered back.
pub(super) struct HeadChunk {
    pub(super) h: GpuBuffer,
    pub(super) targets: GpuBuffer,
    pub(super) dh: GpuBuffer,
}

/// Device buffers of one forward (and backward) pass of up to `B*T` tokens, reusable across steps.
pub struct Workspace {
    /// Capacity in rows (`B*T`).
    pub rows: usize,
    pub(super) train: bool,
    /// Gradient checkpointing: layers share their activation buffers (see [`Workspace::checkpointed`]).
    pub(super) checkpoint: bool,
    pub(super) ids: GpuBuffer,
    pub(super) pos: GpuBuffer,
    pub(super) acts: Vec<LayerActs>,
    pub(super) x_final: GpuBuffer,
    pub(super) hbuf: GpuBuffer,
    pub(super) rstd_scratch: GpuBuffer,
    pub(super) act: GpuBuffer,
    pub(super) rstdf: GpuBuffer,
    /// `[chunk_rows, V]`: the logits (inference: all rows).
    pub(super) logits: GpuBuffer,
    pub(super) ce_lse: GpuBuffer,
    pub(super) ce_loss: GpuBuffer,
    /// Per-row cross-entropy `[M]` of the last training pass (0 for ignored rows).
    pub loss_rows: GpuBuffer,
    pub(super) chunk_rows: usize,
    pub(super) chunk: Option<HeadChunk>,
    pub(super) grads: Option<GradBufs>,
    /// LoRA dropout scratch `[M, max in]`: the dropped input and its gradient (training only).
    pub(super) xd: Option<GpuBuffer>,
    pub(super) dxd: Option<GpuBuffer>,
    /// Prefix tuning (see [`Workspace::with_prefix`]).
    pub(super) prefix: Option<PrefixBufs>,
}

/// A run of consecutive rows: `len` rows from `src` of the full batch to `dst` of a chunk.
#[derive(Clone, Copy, Debug)]
pub(super) struct Segment {
    pub(super) src: usize,
    pub(super) dst: usize,
    pub(super) len: usize,
}

/// Splits the rows with a valid target into chunks of at most `chunk_rows` rows, each a list of
/// segments of consecutive rows.
pub(super) fn head_chunks(targets: &[i32], v: usize, chunk_rows: usize) -> Vec<Vec<Segment>> {
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
pub(super) const HEAD_CHUNK_BYTES: usize = 64 << 20;

/// Rows of the training head's chunks: as many as [`HEAD_CHUNK_BYTES`] of logits hold.
pub(super) fn default_head_rows(model: &LlamaModel, rows: usize) -> usize {
    (HEAD_CHUNK_BYTES / (model.config.vocab_size * 4)).clamp(1, rows.max(1))
}

/// What a [`Workspace`] is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Forward passes to logits ([`LlamaModel::forward_with`]).
    Inference,
    /// Losses and gradients, every layer's activations kept.
    Training,
    /// Losses and gradients with gradient checkpointing ([`Workspace::checkpointed`]).
    Checkpointed,
}

impl Workspace {
    /// The workspace for batches of up to `b` sequences of `t` tokens of `model` adapted with
    /// `peft`: room for LoRA's `h`, prompt tuning's virtual rows and prefix tuning's keys and
    /// values.
    pub fn for_batch(
        gpu: &Gpu,
        model: &LlamaModel,
        peft: Option<Peft<'_>>,
        b: usize,
        t: usize,
        mode: Mode,
    ) -> Result<Workspace, ModelError> {
        let rows = b * Peft::rows_per_sequence(peft, t);
        let lora = peft.and_then(Peft::lora);
        let ws = match mode {
            Mode::Inference => Workspace::new(gpu, model, lora, rows, false)?,
            Mode::Training => Workspace::new(gpu, model, lora, rows, true)?,
            Mode::Checkpointed => Workspace::checkpointed(gpu, model, lora, rows)?,
        };
        match peft.and_then(Peft::prefix) {
            Some(pf) => ws.with_prefix(gpu, pf, b),
            None => Ok(ws),
        }
    }

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
    pub(super) fn prefix_kv(&self, i: usize) -> Option<(&GpuBuffer, &GpuBuffer)> {
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

    pub(super) fn set(&self, i: usize) -> &LayerActs {
        &self.acts[if self.train { i } else { 0 }]
    }

    /// Where the residual stream goes after layer `i`.
    pub(super) fn stream_after(&self, i: usize, n_layers: usize) -> &GpuBuffer {
        if i + 1 == n_layers {
            &self.x_final
        } else {
            &self.set(i + 1).x
        }
    }
}

pub(super) fn grads_of(ws: &Workspace) -> Result<&GradBufs, ModelError> {
    ws.grads
        .as_ref()
        .ok_or_else(|| ModelError::Shape("backward needs a training workspace".into()))
}
