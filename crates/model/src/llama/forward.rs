//! The forward pass: one linear (with its LoRA branch), one decoder layer (`record_layer`),
//! attention (with prefix tuning's rows), and the decoder up to the final norm.

use tinytune_gpu::ops::{lora, nf4, nn};
use tinytune_gpu::{Encoder, GpuBuffer};

use super::workspace::{LayerActs, LayerScratch, Workspace};
use super::{lora_dropout_seed, LlamaModel, LoraDropout, Peft};
use crate::lora::LoraGpu;
use crate::prefix::PrefixGpu;
use crate::{ModelError, Weight};

impl LlamaModel {
    /// Records `y (+)= x · Wᵀ (+ bias) (+ scale · (x · Aᵀ) · Bᵀ)` for linear `t` of layer `i`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn linear_drop(
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

    pub(super) fn check_batch(
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
    pub(super) fn record_attention(
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
    pub(super) fn check_prefix(
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

    /// Records the decoder up to the final norm into `enc` (`ws.hbuf` holds the normed final
    /// hidden states once it runs): the ids and positions are uploaded in command order, so
    /// several passes fit one submission.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn record_decoder(
        &self,
        enc: &mut Encoder,
        ws: &Workspace,
        peft: Option<Peft<'_>>,
        ids: &[u32],
        b: usize,
        t: usize,
        drop: Option<LoraDropout>,
    ) -> Result<usize, ModelError> {
        let cfg = &self.config;
        let m = self.check_batch(ws, ids.len(), b, t)?;
        let c = cfg.hidden_size;
        let (lora, prompt, prefix) = Peft::parts(peft);
        if let Some(pf) = prefix {
            self.check_prefix(ws, pf, b, t)?;
        }
        enc.upload(&ws.ids, 0, bytemuck::cast_slice(ids))?;
        // With prefix tuning the tokens sit after the P virtual positions.
        let p0 = prefix.map_or(0, |pf| pf.p);
        let pos: Vec<u32> = (0..m).map(|i| (p0 + i % t) as u32).collect();
        enc.upload(&ws.pos, 0, bytemuck::cast_slice(&pos))?;
        let eps = cfg.rms_norm_eps as f32;
        let n_layers = self.layers.len();
        self.embed.embed(enc, &ws.ids, &ws.set(0).x, m)?;
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
            self.record_layer(enc, lora, a, i, &scratch, next, m, |enc, a| {
                self.record_attention(enc, ws, a, i, b, t, prefix)
            })?;
        }
        nn::rmsnorm_fwd(enc, &ws.x_final, &self.norm, &ws.hbuf, &ws.rstdf, m, c, eps)?;
        Ok(m)
    }
}
