//! The backward pass: one linear's backward (with its LoRA branch), one decoder layer's
//! backward (`backward_layer`, the mirror of `record_layer`), and the training pass's head.

use tinytune_gpu::ops::{lora, nf4, nn};
use tinytune_gpu::{Encoder, GpuBuffer};

use super::workspace::{head_chunks, GradBufs, LayerActs, LayerScratch, PrefixBufs, Workspace};
use super::{grads_of, lora_dropout_seed, LlamaModel, LoraDropout, Peft};
use crate::lora::LoraGpu;
use crate::prefix::PrefixGpu;
use crate::{ModelError, Weight};

impl LlamaModel {
    /// Records the backward of linear `t` of layer `i` for the upstream gradient `dy`: writes
    /// (or adds, with `accumulate`) `dx = dy · W (+ LoRA's share)` and adds the LoRA gradients.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn linear_bwd(
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

    #[allow(clippy::too_many_arguments)]
    pub(super) fn train_pass(
        &self,
        enc: &mut Encoder,
        ws: &Workspace,
        peft: Option<Peft<'_>>,
        ids: &[u32],
        targets: &[i32],
        b: usize,
        t: usize,
        grad_scale: Option<f32>,
        drop: Option<LoraDropout>,
    ) -> Result<(), ModelError> {
        let g = grads_of(ws)?;
        let (lora, prompt, prefix) = Peft::parts(peft);
        if targets.len() != ids.len() {
            return Err(ModelError::Shape(format!(
                "forward_backward: {} targets for {} ids",
                targets.len(),
                ids.len()
            )));
        }
        let cfg = &self.config;
        let drop = drop.filter(|d| d.p > 0.0);
        let m = self.record_decoder(enc, ws, peft, ids, b, t, drop)?;
        let c = cfg.hidden_size;
        self.record_head_loss(enc, ws, g, targets, grad_scale)?;
        if grad_scale.is_none() {
            return Ok(());
        }
        // The backward pass runs down to the lowest adapter, through every layer for prefix
        // tuning, and to the input embeddings for prompt tuning.
        let lowest = match (
            prompt.is_some() || prefix.is_some(),
            lora.and_then(|l| l.lowest_layer()),
        ) {
            (true, _) => 0,
            (false, Some(l)) => l,
            (false, None) => return Ok(()),
        };
        let bd = match (drop, &ws.xd, &ws.dxd) {
            (Some(d), Some(xd), Some(dxd)) => Some((d, xd, dxd)),
            _ => None,
        };
        nn::rmsnorm_bwd(
            enc,
            &g.dh,
            &ws.x_final,
            &self.norm,
            &ws.rstdf,
            &g.dx,
            m,
            c,
            false,
        )?;
        let scratch = LayerScratch {
            hbuf: &ws.hbuf,
            act: &ws.act,
            pos: &ws.pos,
            drop: drop.zip(ws.xd.as_ref()),
        };
        let n_layers = self.layers.len();
        for i in (lowest..n_layers).rev() {
            if ws.checkpoint {
                let a = ws.set(i);
                // Recompute this layer's activations from its saved input (same masks); its
                // output overwrites the next layer's input, which is no longer needed.
                let next = ws.stream_after(i, n_layers);
                self.record_layer(enc, lora, a, i, &scratch, next, m, |enc, a| {
                    self.record_attention(enc, ws, a, i, b, t, prefix)
                })?;
            }
            self.backward_layer(
                enc,
                ws,
                g,
                lora,
                i,
                b,
                t,
                m,
                prefix,
                bd,
                i > lowest || prompt.is_some(),
            )?;
            // Prefix tuning: below layer 0's keys and values nothing is trained.
            if prefix.is_some() && i == 0 {
                break;
            }
        }
        // Prompt tuning: g.dx is the gradient of the decoder input; each sequence's first P rows
        // belong to the virtual tokens.
        if let Some(pr) = prompt {
            let bytes = (pr.p * c * 4) as u64;
            for s in 0..b {
                enc.copy(&g.dx, (s * t * c * 4) as u64, &pr.scratch, 0, bytes);
                nn::add_fwd(enc, &pr.scratch, &pr.grad, pr.p * c, 1.0)?;
            }
        }
        Ok(())
    }

    /// The backward of decoder layer `i` (the mirror of [`LlamaModel::record_layer`]): `g.dx`
    /// holds the gradient of the layer's output on entry and of its input on return (when
    /// `input_grad`; prefix tuning stops at layer 0's keys and values). The LoRA gradients of the
    /// layer's adapted linears accumulate, and prefix tuning's gradient of its key/value rows.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn backward_layer(
        &self,
        enc: &mut Encoder,
        ws: &Workspace,
        g: &GradBufs,
        lora: Option<&LoraGpu>,
        i: usize,
        b: usize,
        t: usize,
        m: usize,
        prefix: Option<&PrefixGpu>,
        bd: Option<(LoraDropout, &GpuBuffer, &GpuBuffer)>,
        input_grad: bool,
    ) -> Result<(), ModelError> {
        let cfg = &self.config;
        let (c, hd) = (cfg.hidden_size, cfg.head_dim);
        let (h, kvh, inter) = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.intermediate_size,
        );
        let eps = cfg.rms_norm_eps as f32;
        let scale = 1.0 / (hd as f32).sqrt();
        let layer = &self.layers[i];
        let a = ws.set(i);
        // MLP: x3 = x2 + down(swiglu(gate(h2), up(h2))); g.dx holds dx3.
        nn::swiglu_fwd(enc, &a.gate, &a.up, &ws.act, m * inter)?;
        self.linear_bwd(enc, lora, a, g, i, 6, &ws.act, &g.dx, &g.dact, m, false, bd)?;
        nn::swiglu_bwd(enc, &g.dact, &a.gate, &a.up, &g.dgate, &g.dup, m * inter)?;
        nn::rmsnorm_fwd(
            enc,
            &a.x2,
            &layer.post_attention_layernorm,
            &ws.hbuf,
            &ws.rstd_scratch,
            m,
            c,
            eps,
        )?;
        self.linear_bwd(
            enc, lora, a, g, i, 4, &ws.hbuf, &g.dgate, &g.dh, m, false, bd,
        )?;
        self.linear_bwd(enc, lora, a, g, i, 5, &ws.hbuf, &g.dup, &g.dh, m, true, bd)?;
        nn::rmsnorm_bwd(
            enc,
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
            enc, lora, a, g, i, 3, &a.attn, &g.dx, &g.dattn, m, false, bd,
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
                    enc,
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
                    enc,
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
                enc,
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
            return Ok(());
        }
        nn::rope_bwd(enc, &g.dq, &ws.pos, &self.inv_freq, m, h, hd)?;
        nn::rope_bwd(enc, &g.dk, &ws.pos, &self.inv_freq, m, kvh, hd)?;
        nn::rmsnorm_fwd(
            enc,
            &a.x,
            &layer.input_layernorm,
            &ws.hbuf,
            &ws.rstd_scratch,
            m,
            c,
            eps,
        )?;
        self.linear_bwd(enc, lora, a, g, i, 0, &ws.hbuf, &g.dq, &g.dh, m, false, bd)?;
        self.linear_bwd(enc, lora, a, g, i, 1, &ws.hbuf, &g.dk, &g.dh, m, true, bd)?;
        self.linear_bwd(enc, lora, a, g, i, 2, &ws.hbuf, &g.dv, &g.dh, m, true, bd)?;
        if input_grad {
            nn::rmsnorm_bwd(
                enc,
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
        Ok(())
    }

    /// The LM head + cross-entropy (+ its backward when `grad_scale` is given) of a training pass
    /// on the rows with a target, gathered in chunks: per-row losses into `ws.loss_rows`,
    /// `g.dh` = d(normed final hidden), zero on the other rows.
    pub(super) fn record_head_loss(
        &self,
        enc: &mut Encoder,
        ws: &Workspace,
        g: &GradBufs,
        targets: &[i32],
        grad_scale: Option<f32>,
    ) -> Result<(), ModelError> {
        let (c, v) = (self.config.hidden_size, self.config.vocab_size);
        // LM head + cross-entropy (+ its backward) on the rows with a target, gathered in chunks;
        // dh = d(normed final hidden), zero on the other rows.
        let ch = ws
            .chunk
            .as_ref()
            .ok_or_else(|| ModelError::Shape("training workspace without head buffers".into()))?;
        enc.clear(&ws.loss_rows);
        enc.clear(&g.dh);
        let row_bytes = (c * 4) as u64;
        for segs in head_chunks(targets, v, ws.chunk_rows) {
            let rows: usize = segs.iter().map(|s| s.len).sum();
            let mut tc = Vec::with_capacity(rows);
            for sg in &segs {
                tc.extend_from_slice(&targets[sg.src..sg.src + sg.len]);
            }
            enc.upload(&ch.targets, 0, bytemuck::cast_slice(&tc))?;
            for sg in &segs {
                enc.copy(
                    &ws.hbuf,
                    sg.src as u64 * row_bytes,
                    &ch.h,
                    sg.dst as u64 * row_bytes,
                    sg.len as u64 * row_bytes,
                );
            }
            self.head().head_fwd(enc, &ch.h, &ws.logits, rows)?;
            nn::cross_entropy_fwd(
                enc,
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
                    enc,
                    &ws.logits,
                    &ch.targets,
                    &ws.ce_lse,
                    rows,
                    v,
                    grad_scale,
                )?;
                self.head().head_bwd(enc, &ws.logits, &ch.dh, rows)?;
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
        }
        Ok(())
    }
}
