//! Text generation with a KV cache: [`KvDecoder`] runs the decoder of a [`LlamaModel`] (with or
//! without LoRA adapters) incrementally, keeping every layer's keys and values on the device, and
//! [`KvDecoder::generate`] samples token after token ([`crate::sampling`]) until an end-of-sequence
//! id, `max_new_tokens`, or the cache's capacity, handing each token to a streaming callback.
//! [`TextStream`] turns the token stream back into text piece by piece.
//!
//! # How a step runs
//! [`KvDecoder::feed`] takes `n` new tokens at positions `len..len+n` (the prompt in chunks of up
//! to [`KvDecoder::chunk`] rows, then one token per decoding step). Per layer it runs the same
//! kernels as [`LlamaModel::forward_with`] (the shared `LlamaModel::linear`, so NF4 / f32 bases and
//! LoRA behave identically), with three differences: RoPE reads the absolute positions, the keys
//! (after RoPE) and values of the new rows are appended to the layer's cache with buffer copies, and
//! attention runs the new queries against the whole cache (`Tq = n`, `Tk = len + n`: the kernel
//! aligns the queries to the end of the keys, so query `i` sees keys `<= len + i`). Only the last
//! row goes through the final norm and the LM head, and one row of logits (`V` floats) is read
//! back.

use tinytune_gpu::ops::nn;
use tinytune_gpu::{Gpu, GpuBuffer};

use crate::f32_bytes;
use crate::llama::{LayerActs, LayerScratch, LlamaModel, Peft};
use crate::lora::LoraGpu;
use crate::prefix::PrefixGpu;
use crate::prompt::PromptGpu;
use crate::sampling::{Sampler, SamplingParams};
use crate::tokenizer::Tokenizer;
use crate::{ModelError, Result};

/// What one pass embeds: token ids, or the virtual tokens of a prompt-tuning adapter.
#[derive(Clone, Copy)]
enum Rows<'x> {
    Ids(&'x [u32]),
    Prompt(&'x PromptGpu),
}

/// Largest number of prompt rows one prefill pass runs by default (bounds the activations).
pub const DEFAULT_PREFILL_CHUNK: usize = 512;

/// An incremental decoder over one sequence (batch size 1) with per-layer K/V caches.
pub struct KvDecoder<'a> {
    gpu: &'a Gpu,
    model: &'a LlamaModel,
    lora: Option<&'a LoraGpu>,
    /// Prompt tuning: virtual tokens fed before every prompt (positions `0..P`).
    prompt: Option<&'a PromptGpu>,
    /// Prefix tuning: key/value rows cached before every prompt (positions `0..P`).
    prefix: Option<&'a PrefixGpu>,
    /// Per layer `[max_len, KVH*D]` keys (after RoPE) and values.
    kcache: Vec<GpuBuffer>,
    vcache: Vec<GpuBuffer>,
    /// Activations of up to `chunk` rows, shared by every layer.
    acts: LayerActs,
    ids: GpuBuffer,
    pos: GpuBuffer,
    hbuf: GpuBuffer,
    act: GpuBuffer,
    x_final: GpuBuffer,
    /// The last row's residual stream `[C]`, its norm, and its logits `[V]`.
    last_x: GpuBuffer,
    last_h: GpuBuffer,
    last_rstd: GpuBuffer,
    logits: GpuBuffer,
    max_len: usize,
    chunk: usize,
    len: usize,
}

impl<'a> KvDecoder<'a> {
    /// A decoder whose caches hold `max_len` positions (at most the model's
    /// `max_position_embeddings`), running prompts in chunks of up to [`DEFAULT_PREFILL_CHUNK`]
    /// rows, adapted with `peft` in every later call: LoRA pairs on the linears; prompt tuning's
    /// virtual tokens, which [`KvDecoder::generate`] feeds first (positions `0..P`, as PEFT does);
    /// or prefix tuning's keys and values, which [`KvDecoder::begin`] puts in every layer's cache
    /// (positions `0..P`, as PEFT's `past_key_values`), so the prompt starts at position `P`.
    /// `max_len` counts the virtual positions. Errors if the cache or one prefill chunk cannot
    /// hold the virtual tokens, or the adapter belongs to another model.
    pub fn new(
        gpu: &'a Gpu,
        model: &'a LlamaModel,
        peft: Option<Peft<'a>>,
        max_len: usize,
    ) -> Result<KvDecoder<'a>> {
        KvDecoder::with_chunk(gpu, model, peft, max_len, DEFAULT_PREFILL_CHUNK)
    }

    /// [`KvDecoder::new`] with prompts run in chunks of up to `chunk` rows.
    pub fn with_chunk(
        gpu: &'a Gpu,
        model: &'a LlamaModel,
        peft: Option<Peft<'a>>,
        max_len: usize,
        chunk: usize,
    ) -> Result<KvDecoder<'a>> {
        let cfg = &model.config;
        let lora = peft.and_then(Peft::lora);
        if max_len == 0 {
            return Err(ModelError::Shape("KV cache of 0 positions".into()));
        }
        if max_len > cfg.max_position_embeddings {
            return Err(ModelError::Shape(format!(
                "a KV cache of {max_len} positions exceeds the model's max_position_embeddings ({})",
                cfg.max_position_embeddings
            )));
        }
        let m = chunk.clamp(1, max_len);
        let (c, hd, v) = (cfg.hidden_size, cfg.head_dim, cfg.vocab_size);
        let (h, kvh, inter) = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.intermediate_size,
        );
        let f = |rows: usize, n: usize| f32_bytes(&[rows, n]);
        let mut kcache = Vec::with_capacity(model.layers.len());
        let mut vcache = Vec::with_capacity(model.layers.len());
        for i in 0..model.layers.len() {
            kcache.push(gpu.alloc(&format!("kv.{i}.k"), f(max_len, kvh * hd))?);
            vcache.push(gpu.alloc(&format!("kv.{i}.v"), f(max_len, kvh * hd))?);
        }
        let mut lora_h: [Option<GpuBuffer>; 7] = Default::default();
        if let Some(l) = lora {
            for (t, slot) in lora_h.iter_mut().enumerate() {
                if l.layers.iter().any(|p| p[t].is_some()) {
                    *slot = Some(gpu.alloc(&format!("dec.lora_h.{t}"), f(m, l.r))?);
                }
            }
        }
        let acts = LayerActs {
            x: gpu.alloc("dec.x", f(m, c))?,
            x2: gpu.alloc("dec.x2", f(m, c))?,
            rstd1: gpu.alloc("dec.rstd1", f(m, 1))?,
            rstd2: gpu.alloc("dec.rstd2", f(m, 1))?,
            q: gpu.alloc("dec.q", f(m, h * hd))?,
            k: gpu.alloc("dec.k", f(m, kvh * hd))?,
            v: gpu.alloc("dec.v", f(m, kvh * hd))?,
            attn: gpu.alloc("dec.attn", f(m, h * hd))?,
            lse: gpu.alloc("dec.lse", f(m, h))?,
            gate: gpu.alloc("dec.gate", f(m, inter))?,
            up: gpu.alloc("dec.up", f(m, inter))?,
            lora_h,
        };
        let dec = KvDecoder {
            gpu,
            model,
            lora,
            prompt: None,
            prefix: None,
            kcache,
            vcache,
            acts,
            ids: gpu.alloc("dec.ids", f(m, 1))?,
            pos: gpu.alloc("dec.positions", f(m, 1))?,
            hbuf: gpu.alloc("dec.normed", f(m, c))?,
            act: gpu.alloc("dec.act", f(m, inter))?,
            x_final: gpu.alloc("dec.x_final", f(m, c))?,
            last_x: gpu.alloc("dec.last_x", f(1, c))?,
            last_h: gpu.alloc("dec.last_h", f(1, c))?,
            last_rstd: gpu.alloc("dec.last_rstd", 4)?,
            logits: gpu.alloc("dec.logits", f(1, v))?,
            max_len,
            chunk: m,
            len: 0,
        };
        match peft {
            Some(Peft::Prompt(pg)) => dec.with_prompt(pg),
            Some(Peft::Prefix(pf)) => dec.with_prefix(pf),
            _ => Ok(dec),
        }
    }

    /// Checks and keeps a prompt-tuning adapter's virtual tokens.
    fn with_prompt(mut self, prompt: &'a PromptGpu) -> Result<KvDecoder<'a>> {
        if prompt.c != self.model.config.hidden_size
            || prompt.p > self.chunk
            || prompt.p >= self.max_len
        {
            return Err(ModelError::Shape(format!(
                "{} virtual tokens of width {} do not fit this decoder (chunk {}, cache {}, hidden {})",
                prompt.p,
                prompt.c,
                self.chunk,
                self.max_len,
                self.model.config.hidden_size
            )));
        }
        self.prompt = Some(prompt);
        Ok(self)
    }

    /// Checks and keeps a prefix-tuning adapter's keys and values.
    fn with_prefix(mut self, prefix: &'a PrefixGpu) -> Result<KvDecoder<'a>> {
        let cfg = &self.model.config;
        if prefix.n_layers != self.model.layers.len()
            || prefix.kvd != cfg.num_key_value_heads * cfg.head_dim
            || prefix.p >= self.max_len
        {
            return Err(ModelError::Shape(format!(
                "a prefix of {} virtual tokens for {} layers of width {} does not fit this decoder \
                 ({} layers of width {}, cache {})",
                prefix.p,
                prefix.n_layers,
                prefix.kvd,
                self.model.layers.len(),
                cfg.num_key_value_heads * cfg.head_dim,
                self.max_len
            )));
        }
        self.prefix = Some(prefix);
        Ok(self)
    }

    /// Empties the cache and feeds the prompt-tuning virtual tokens or caches the prefix-tuning
    /// keys and values, if any: what [`KvDecoder::generate`] does first; [`KvDecoder::feed`]
    /// continues from there.
    pub fn begin(&mut self) -> Result<()> {
        self.reset();
        if let Some(pg) = self.prompt {
            self.record_pass(Rows::Prompt(pg))?;
            self.len = pg.p;
        }
        if let Some(pf) = self.prefix {
            // prefix_fwd with no real rows writes just the P prefix rows, at the cache's start.
            let mut enc = self.gpu.encoder();
            for i in 0..self.model.layers.len() {
                nn::prefix_fwd(
                    &mut enc,
                    &pf.kv,
                    &self.acts.k,
                    &self.acts.v,
                    &self.kcache[i],
                    &self.vcache[i],
                    nn::PrefixShape {
                        layer: i,
                        n_layers: pf.n_layers,
                        b: 1,
                        t: 0,
                        p: pf.p,
                        kvd: pf.kvd,
                    },
                )?;
            }
            enc.submit();
            self.len = pf.p;
        }
        Ok(())
    }

    /// Number of virtual positions cached before each prompt (0 without prompt or prefix tuning).
    pub fn virtual_tokens(&self) -> usize {
        self.prompt.map_or(0, |p| p.p) + self.prefix.map_or(0, |p| p.p)
    }

    /// Positions cached so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Positions the caches hold.
    pub fn capacity(&self) -> usize {
        self.max_len
    }

    /// Most rows one pass runs.
    pub fn chunk(&self) -> usize {
        self.chunk
    }

    /// Forgets the cached positions (the next [`KvDecoder::feed`] starts at position 0).
    pub fn reset(&mut self) {
        self.len = 0;
    }

    /// Appends `ids` at positions `len..len + ids.len()` and returns the logits `[V]` of the last
    /// one (the distribution of the token after it). Errors if the caches would overflow or an id
    /// is outside the vocabulary.
    pub async fn feed(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        if ids.is_empty() {
            return Err(ModelError::Shape("feed: no tokens".into()));
        }
        let v = self.model.config.vocab_size;
        if let Some(bad) = ids.iter().find(|&&i| i as usize >= v) {
            return Err(ModelError::Shape(format!(
                "token id {bad} is outside the vocabulary ({v} tokens)"
            )));
        }
        if self.len + ids.len() > self.max_len {
            return Err(ModelError::Shape(format!(
                "{} positions exceed the KV cache's {} (cached {}, {} new; the model's \
                 max_position_embeddings is {})",
                self.len + ids.len(),
                self.max_len,
                self.len,
                ids.len(),
                self.model.config.max_position_embeddings
            )));
        }
        for part in ids.chunks(self.chunk) {
            self.record_pass(Rows::Ids(part))?;
            self.len += part.len();
        }
        let mut out = self.gpu.read::<f32>(&self.logits).await?;
        out.truncate(v);
        Ok(out)
    }

    /// Records and submits one pass over `ids` (at most `chunk` rows) at positions `len..`: the
    /// decoder layers, then the final norm and LM head of the last row into `self.logits`.
    fn record_pass(&self, rows: Rows) -> Result<()> {
        let (gpu, model, lora, a) = (self.gpu, self.model, self.lora, &self.acts);
        let cfg = &model.config;
        let m = match rows {
            Rows::Ids(ids) => ids.len(),
            Rows::Prompt(pg) => pg.p,
        };
        let p0 = self.len;
        let tk = p0 + m;
        let (c, hd) = (cfg.hidden_size, cfg.head_dim);
        let (h, kvh) = (cfg.num_attention_heads, cfg.num_key_value_heads);
        let kvw = (kvh * hd * 4) as u64;
        let pos: Vec<u32> = (p0..tk).map(|p| p as u32).collect();
        gpu.write(&self.pos, 0, bytemuck::cast_slice(&pos));
        let eps = cfg.rms_norm_eps as f32;
        let scale = 1.0 / (hd as f32).sqrt();
        let n_layers = model.layers.len();
        let mut enc = gpu.encoder();
        match rows {
            Rows::Ids(ids) => {
                gpu.write(&self.ids, 0, bytemuck::cast_slice(ids));
                model.embed.embed(&mut enc, &self.ids, &a.x, m)?;
            }
            Rows::Prompt(pg) => enc.copy(&pg.emb, 0, &a.x, 0, (m * c * 4) as u64),
        }
        let scratch = LayerScratch {
            hbuf: &self.hbuf,
            act: &self.act,
            pos: &self.pos,
            drop: None,
        };
        for i in 0..n_layers {
            let next = if i + 1 == n_layers {
                &self.x_final
            } else {
                &a.x
            };
            let (kc, vc) = (&self.kcache[i], &self.vcache[i]);
            model.record_layer(&mut enc, lora, a, i, &scratch, next, m, |enc, a| {
                enc.copy(&a.k, 0, kc, p0 as u64 * kvw, m as u64 * kvw);
                enc.copy(&a.v, 0, vc, p0 as u64 * kvw, m as u64 * kvw);
                Ok(nn::attention_fwd(
                    enc,
                    &a.q,
                    kc,
                    vc,
                    &a.attn,
                    &a.lse,
                    nn::AttentionShape {
                        b: 1,
                        tq: m,
                        tk,
                        h,
                        kvh,
                        d: hd,
                        scale,
                    },
                )?)
            })?;
            // Prompt chunks: bound the size of one command buffer, as the full forward does.
            if m > 1 {
                enc.submit();
                enc = gpu.encoder();
            }
        }
        enc.copy(
            &self.x_final,
            ((m - 1) * c * 4) as u64,
            &self.last_x,
            0,
            (c * 4) as u64,
        );
        nn::rmsnorm_fwd(
            &mut enc,
            &self.last_x,
            &model.norm,
            &self.last_h,
            &self.last_rstd,
            1,
            c,
            eps,
        )?;
        model
            .head()
            .head_fwd(&mut enc, &self.last_h, &self.logits, 1)?;
        enc.submit();
        Ok(())
    }

    /// Generates after `prompt` from an empty cache (the cache is reset first): samples with
    /// `opts.sampling`, calls `on_token` with every generated token as soon as it is chosen (an
    /// end-of-sequence token included; return `false` to stop), and stops at a stop id, after
    /// `opts.max_new_tokens` tokens, or when prompt + generated tokens reach
    /// [`KvDecoder::capacity`]. Errors if the prompt is empty or does not fit.
    pub async fn generate(
        &mut self,
        prompt: &[u32],
        opts: &GenerateOptions,
        mut on_token: impl FnMut(u32) -> bool,
    ) -> Result<Generated> {
        let mut sampler = Sampler::new(opts.sampling.clone())?;
        if prompt.is_empty() {
            return Err(ModelError::Shape("generate: empty prompt".into()));
        }
        let virt = self.virtual_tokens();
        let cap = self.max_len - virt;
        if prompt.len() > cap {
            return Err(ModelError::Shape(format!(
                "the prompt's {} tokens exceed the KV cache's {} positions",
                prompt.len(),
                cap
            )));
        }
        self.begin()?;
        let mut out = Generated {
            tokens: Vec::new(),
            stop: StopReason::MaxNewTokens,
        };
        if opts.max_new_tokens == 0 {
            return Ok(out);
        }
        if prompt.len() == cap {
            out.stop = StopReason::MaxLength;
            return Ok(out);
        }
        let mut seen = prompt.to_vec();
        let mut logits = self.feed(prompt).await?;
        loop {
            let tok = sampler.sample(&logits, &seen);
            seen.push(tok);
            out.tokens.push(tok);
            let go_on = on_token(tok);
            if opts.stop_ids.contains(&tok) {
                out.stop = StopReason::Eos;
                break;
            }
            if !go_on {
                out.stop = StopReason::Callback;
                break;
            }
            if out.tokens.len() >= opts.max_new_tokens {
                out.stop = StopReason::MaxNewTokens;
                break;
            }
            // Like transformers' max_length: prompt + generated <= capacity (the last token is
            // never fed, so the cache's last slot stays unused).
            if seen.len() >= cap {
                out.stop = StopReason::MaxLength;
                break;
            }
            logits = self.feed(&[tok]).await?;
        }
        Ok(out)
    }
}

/// What [`KvDecoder::generate`] does.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerateOptions {
    /// Most tokens to generate.
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
    /// Generation stops after any of these (see [`stop_ids`]).
    pub stop_ids: Vec<u32>,
}

/// Why a generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// A stop id was generated (it is the last token).
    Eos,
    /// `max_new_tokens` were generated.
    MaxNewTokens,
    /// The KV cache is full.
    MaxLength,
    /// The callback returned `false`.
    Callback,
}

/// The result of [`KvDecoder::generate`].
#[derive(Clone, Debug, PartialEq)]
pub struct Generated {
    /// The generated tokens (the stop id last, if one ended it).
    pub tokens: Vec<u32>,
    pub stop: StopReason,
}

/// End-of-sequence ids of a model: the config's `eos_token_id` (one id or a list) and the
/// tokenizer's EOS token, deduplicated.
pub fn stop_ids(model: &LlamaModel, tok: Option<&Tokenizer>) -> Vec<u32> {
    let mut ids = model.config.eos_token_ids();
    if let Some(e) = tok.and_then(Tokenizer::eos_id) {
        ids.push(e);
    }
    let mut out = Vec::new();
    for id in ids {
        if !out.contains(&id) {
            out.push(id);
        }
    }
    out
}

/// Incremental detokenization: text pieces of a token stream that are only released once they
/// are complete, so characters split over several tokens (multi-byte UTF-8 in byte-level BPE) come
/// out whole. Decodes a small window of recent tokens per step (the prefix/read offsets of
/// transformers' `TextStreamer` and TGI), so words that the decoder joins differently in context
/// (leading spaces) come out as in a full decode.
pub struct TextStream<'t> {
    tok: &'t Tokenizer,
    skip_special: bool,
    ids: Vec<u32>,
    prefix: usize,
    read: usize,
}

impl<'t> TextStream<'t> {
    /// A stream; `skip_special` drops special tokens (EOS, chat markers) from the text.
    pub fn new(tok: &'t Tokenizer, skip_special: bool) -> TextStream<'t> {
        TextStream {
            tok,
            skip_special,
            ids: Vec::new(),
            prefix: 0,
            read: 0,
        }
    }

    /// Adds a token; returns the new text it completes (empty while a character is incomplete).
    pub fn push(&mut self, id: u32) -> Result<String> {
        self.ids.push(id);
        let before = self
            .tok
            .decode(&self.ids[self.prefix..self.read], self.skip_special)?;
        let now = self
            .tok
            .decode(&self.ids[self.prefix..], self.skip_special)?;
        if now.len() > before.len() && !now.ends_with('\u{FFFD}') {
            // `now` extends `before` (the window's start is decoded alike); if a decoder ever
            // rewrote the overlap, the bytes past `before`'s length are still the new text.
            let piece = match now.strip_prefix(&before) {
                Some(rest) => rest,
                None => match now.get(before.len()..) {
                    Some(rest) => rest,
                    None => return Ok(String::new()),
                },
            };
            let piece = piece.to_string();
            self.prefix = self.read;
            self.read = self.ids.len();
            Ok(piece)
        } else {
            Ok(String::new())
        }
    }

    /// The text still held back (an incomplete character at the end: with U+FFFD for the
    /// missing bytes); call once after the last token.
    pub fn finish(&mut self) -> Result<String> {
        let before = self
            .tok
            .decode(&self.ids[self.prefix..self.read], self.skip_special)?;
        let now = self
            .tok
            .decode(&self.ids[self.prefix..], self.skip_special)?;
        self.prefix = self.ids.len();
        self.read = self.ids.len();
        Ok(match now.strip_prefix(&before) {
            Some(rest) => rest.to_string(),
            None => String::new(),
        })
    }
}
