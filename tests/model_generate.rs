//! Generation with a KV cache (`KvDecoder`): cached logits and greedy tokens against the full
//! forward pass (`LlamaModel::logits_with`) on the tiny Llama, tied Llama-3 and Qwen2 fixtures
//! (f32 and NF4 bases, with and without the PEFT adapter fixture) and, when
//! `TINYTUNE_SMOLLM2_GGUF` is set, on SmolLM2-135M; the host sampling functions; incremental
//! detokenization of multi-byte characters.

mod common;

use common::gpu;
use common::hf::{fixture, read_tensors};
use tinytune::model::sampling::{
    apply_repetition_penalty, argmax, softmax, top_k_filter, top_p_filter,
};
use tinytune::model::{
    GenerateOptions, KvDecoder, LlamaModel, LoraGpu, ModelSource, Peft, Quant, Sampler,
    SamplingParams, StopReason, TextStream, Tokenizer,
};
use tinytune::train::LoraAdapter;

const MODELS: [&str; 3] = ["llama", "llama_tied_llama3", "qwen2"];

/// Last-row logits of the cached path vs the full forward's row at the same position:
/// |cached - full| <= KV_ATOL + KV_RTOL * |full| (same kernels; the attention and matmul
/// launchers pick other row blockings for 1 row than for T rows, so f32 sums differ in order).
const KV_ATOL: f32 = 1e-4;
const KV_RTOL: f32 = 1e-4;

/// Prompt length (first row of the fixture's ids) and greedy steps on the tiny models.
const PROMPT: usize = 5;
const STEPS: usize = 6;

fn prompt_of(name: &str) -> Vec<u32> {
    let t = read_tensors(&format!("{name}/logits.safetensors"));
    t["input_ids_i32"].1[..PROMPT]
        .iter()
        .map(|&v| v as u32)
        .collect()
}

fn adapter_of(name: &str, model: &LlamaModel) -> LoraGpu {
    let ad = LoraAdapter::load(&fixture(&format!("{name}/adapter"))).unwrap();
    let lora = ad
        .weights
        .to_layers(model.layers.len(), ad.config.scale() as f32)
        .unwrap();
    LoraGpu::upload(gpu().unwrap(), model, &lora).unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

fn assert_rows_close(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            g.is_finite() && (g - w).abs() <= KV_ATOL + KV_RTOL * w.abs(),
            "{what}: logit {i}: cached {g} vs full forward {w}"
        );
    }
}

/// Greedy decoding with the cache, step by step, checked against one full forward over the
/// prompt and the generated tokens (causal: its row `P-1+s` is the distribution after the first
/// `s` generated tokens, so its argmax chain is what repeated full forwards would give).
fn check_greedy(
    tag: &str,
    model: &LlamaModel,
    lora: Option<&LoraGpu>,
    prompt: &[u32],
    chunk: usize,
) {
    let gpu = gpu().unwrap();
    let v = model.config.vocab_size;
    let mut dec = KvDecoder::with_chunk(
        gpu,
        model,
        lora.map(Peft::Lora),
        prompt.len() + STEPS,
        chunk,
    )
    .unwrap();
    let mut seq = prompt.to_vec();
    let mut rows = Vec::new();
    let mut logits = pollster::block_on(dec.feed(prompt)).unwrap();
    for s in 0..STEPS {
        let tok = argmax(&logits);
        rows.push(logits.clone());
        seq.push(tok);
        if s + 1 < STEPS {
            logits = pollster::block_on(dec.feed(&[tok])).unwrap();
        }
    }
    assert_eq!(dec.len(), prompt.len() + STEPS - 1);
    let t = seq.len() - 1;
    let full =
        pollster::block_on(model.logits_with(gpu, lora.map(Peft::Lora), &seq[..t], 1, t)).unwrap();
    let mut worst = 0f32;
    for (s, row) in rows.iter().enumerate() {
        let p = prompt.len() - 1 + s;
        let want = &full[p * v..(p + 1) * v];
        worst = worst.max(max_abs_diff(row, want));
        assert_rows_close(&format!("{tag} step {s}"), row, want);
        assert_eq!(
            argmax(want),
            seq[prompt.len() + s],
            "{tag} step {s}: greedy token differs from the full forward's argmax"
        );
    }
    eprintln!(
        "{tag}: greedy {:?}, max |cached - full| = {worst:e}",
        &seq[prompt.len()..]
    );
    // generate() gives the same tokens (from a reset cache).
    let opts = GenerateOptions {
        max_new_tokens: STEPS,
        sampling: SamplingParams::greedy(),
        stop_ids: vec![],
    };
    let mut streamed = Vec::new();
    let out = pollster::block_on(dec.generate(prompt, &opts, |t| {
        streamed.push(t);
        true
    }))
    .unwrap();
    assert_eq!(out.tokens, &seq[prompt.len()..], "{tag}: generate()");
    assert_eq!(streamed, out.tokens, "{tag}: streamed tokens");
    assert_eq!(out.stop, StopReason::MaxNewTokens);
}

#[test]
fn greedy_kv_cache_matches_full_forward() {
    let Some(gpu) = gpu() else { return };
    for name in MODELS {
        let src = ModelSource::open(fixture(&format!("{name}/model"))).unwrap();
        let prompt = prompt_of(name);
        for (qname, quant) in [("f32", Quant::None), ("nf4", Quant::NF4)] {
            let model = LlamaModel::load(gpu, &src, quant).unwrap();
            let lora = adapter_of(name, &model);
            check_greedy(&format!("{name} {qname}"), &model, None, &prompt, 512);
            check_greedy(
                &format!("{name} {qname} + adapter"),
                &model,
                Some(&lora),
                &prompt,
                512,
            );
        }
    }
}

/// The prompt run in chunks of 2 rows (queries aligned to the end of the cached keys, Tq > 1 and
/// Tk > Tq) gives the same logits as one pass.
#[test]
fn chunked_prefill_matches_full_forward() {
    let Some(gpu) = gpu() else { return };
    let src = ModelSource::open(fixture("qwen2/model")).unwrap();
    let model = LlamaModel::load(gpu, &src, Quant::NF4).unwrap();
    let lora = adapter_of("qwen2", &model);
    check_greedy(
        "qwen2 nf4 + adapter, chunks of 2",
        &model,
        Some(&lora),
        &prompt_of("qwen2"),
        2,
    );
}

#[test]
fn kv_cache_limits() {
    let Some(gpu) = gpu() else { return };
    let src = ModelSource::open(fixture("llama/model")).unwrap();
    let model = LlamaModel::load(gpu, &src, Quant::None).unwrap();
    let max_pos = model.config.max_position_embeddings;
    let err = KvDecoder::new(gpu, &model, None, max_pos + 1)
        .err()
        .expect("a cache past max_position_embeddings must be refused")
        .to_string();
    assert!(err.contains("max_position_embeddings"), "{err}");
    let prompt = prompt_of("llama");
    let mut dec = KvDecoder::new(gpu, &model, None, prompt.len() + 2).unwrap();
    // Feeding past the capacity is an error that says so (and leaves the cache as it was).
    pollster::block_on(dec.feed(&prompt)).unwrap();
    let err = pollster::block_on(dec.feed(&[1, 2, 3]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("exceed the KV cache"), "{err}");
    assert_eq!(dec.len(), prompt.len());
    // A too-long prompt for generate() too.
    let long: Vec<u32> = (0..prompt.len() as u32 + 3).collect();
    let opts = GenerateOptions {
        max_new_tokens: 10,
        sampling: SamplingParams::greedy(),
        stop_ids: vec![],
    };
    assert!(pollster::block_on(dec.generate(&long, &opts, |_| true)).is_err());
    // Generation stops when the cache is full: prompt + generated <= capacity.
    let out = pollster::block_on(dec.generate(&prompt, &opts, |_| true)).unwrap();
    assert_eq!(out.stop, StopReason::MaxLength);
    assert_eq!(out.tokens.len(), 2);
    let full: Vec<u32> = (0..prompt.len() as u32 + 2).collect();
    let none = pollster::block_on(dec.generate(&full, &opts, |_| true)).unwrap();
    assert_eq!((none.tokens.len(), none.stop), (0, StopReason::MaxLength));
    // Stop at an EOS id (the first greedy token made a stop id), and at the callback's request.
    let first = out.tokens[0];
    let eos = GenerateOptions {
        stop_ids: vec![first],
        ..opts.clone()
    };
    let out = pollster::block_on(dec.generate(&prompt, &eos, |_| true)).unwrap();
    assert_eq!(
        (out.tokens.as_slice(), out.stop),
        (&[first][..], StopReason::Eos)
    );
    let out = pollster::block_on(dec.generate(&prompt, &opts, |_| false)).unwrap();
    assert_eq!((out.tokens.len(), out.stop), (1, StopReason::Callback));
    // Out-of-vocabulary ids are refused.
    dec.reset();
    let v = model.config.vocab_size as u32;
    assert!(pollster::block_on(dec.feed(&[v])).is_err());
}

/// Sampled generation is reproducible from the seed, and top-k = 1 is greedy.
#[test]
fn sampled_generation_is_seeded() {
    let Some(gpu) = gpu() else { return };
    let src = ModelSource::open(fixture("llama/model")).unwrap();
    let model = LlamaModel::load(gpu, &src, Quant::None).unwrap();
    let prompt = prompt_of("llama");
    let mut dec = KvDecoder::new(gpu, &model, None, 32).unwrap();
    let run = |dec: &mut KvDecoder, sampling: SamplingParams| {
        let opts = GenerateOptions {
            max_new_tokens: 12,
            sampling,
            stop_ids: vec![],
        };
        pollster::block_on(dec.generate(&prompt, &opts, |_| true))
            .unwrap()
            .tokens
    };
    let hot = |seed| SamplingParams {
        temperature: 1.5,
        seed,
        ..SamplingParams::default()
    };
    let a = run(&mut dec, hot(7));
    assert_eq!(a, run(&mut dec, hot(7)), "same seed, same tokens");
    let others: Vec<Vec<u32>> = (8..12).map(|s| run(&mut dec, hot(s))).collect();
    assert!(
        others.iter().any(|o| *o != a),
        "five seeds gave the same sampled tokens"
    );
    let greedy = run(&mut dec, SamplingParams::greedy());
    let k1 = run(&mut dec, SamplingParams { top_k: 1, ..hot(3) });
    assert_eq!(k1, greedy, "top-k 1 must be greedy");
}

// ---------------------------------------------------------------------------------------------
// Host sampling.

#[test]
fn sampling_greedy_and_argmax() {
    assert_eq!(argmax(&[0.0, 3.0, -1.0, 3.0]), 1, "first index on ties");
    assert_eq!(argmax(&[f32::NAN, 1.0, 0.5]), 1);
    let logits = [0.1f32, 2.0, 1.9, -4.0];
    let mut s = Sampler::new(SamplingParams::greedy()).unwrap();
    assert_eq!(s.sample(&logits, &[]), 1);
    // top-k = 1 at any temperature and seed is the argmax.
    for seed in 0..20 {
        let mut s = Sampler::new(SamplingParams {
            temperature: 5.0,
            top_k: 1,
            seed,
            ..SamplingParams::default()
        })
        .unwrap();
        assert_eq!(s.sample(&logits, &[]), 1);
    }
    // A tiny top-p keeps only the most likely token.
    let mut s = Sampler::new(SamplingParams {
        temperature: 1.0,
        top_p: 1e-6,
        seed: 1,
        ..SamplingParams::default()
    })
    .unwrap();
    for _ in 0..20 {
        assert_eq!(s.sample(&logits, &[]), 1);
    }
}

#[test]
fn sampling_top_k() {
    let mut x = vec![1.0f32, 5.0, 3.0, 3.0, 0.0];
    top_k_filter(&mut x, 2);
    // The 2nd largest is 3.0, and ties with it are kept (transformers: remove `< kth value`).
    assert_eq!(x, vec![f32::NEG_INFINITY, 5.0, 3.0, 3.0, f32::NEG_INFINITY]);
    let mut y = vec![1.0f32, 2.0];
    top_k_filter(&mut y, 0);
    assert_eq!(y, vec![1.0, 2.0]);
    top_k_filter(&mut y, 5);
    assert_eq!(y, vec![1.0, 2.0]);
}

#[test]
fn sampling_top_p() {
    // probs 0.5, 0.25, 0.125, 0.125 (logits = ln p).
    let p = [0.5f64, 0.25, 0.125, 0.125];
    let logits: Vec<f32> = p.iter().map(|v| v.ln() as f32).collect();
    let kept = |top_p: f32| -> Vec<usize> {
        let mut x = logits.clone();
        top_p_filter(&mut x, top_p);
        (0..x.len()).filter(|&i| x[i].is_finite()).collect()
    };
    // Smallest set with cumulative probability >= top_p.
    assert_eq!(kept(0.5), vec![0]);
    assert_eq!(kept(0.6), vec![0, 1]);
    assert_eq!(kept(0.75), vec![0, 1]);
    // 0.5 + 0.25 + 0.125 >= 0.8: one of the two tied tokens goes (the later index).
    assert_eq!(kept(0.8), vec![0, 1, 2]);
    assert_eq!(kept(0.9), vec![0, 1, 2, 3]);
    assert_eq!(kept(1.0), vec![0, 1, 2, 3], "1.0 is off");
    // Always at least one token, even for a tiny top_p or a one-hot distribution.
    assert_eq!(kept(1e-9), vec![0]);
    let mut one_hot = vec![f32::NEG_INFINITY, 0.0, f32::NEG_INFINITY];
    top_p_filter(&mut one_hot, 0.3);
    assert_eq!(one_hot, vec![f32::NEG_INFINITY, 0.0, f32::NEG_INFINITY]);
    // After top-k's -inf the remaining mass is renormalised.
    let mut x = logits.clone();
    top_k_filter(&mut x, 2);
    top_p_filter(&mut x, 0.7);
    assert_eq!(
        (0..4).filter(|&i| x[i].is_finite()).collect::<Vec<_>>(),
        vec![0, 1]
    );
    let probs = softmax(&x);
    assert!((probs[0] - 2.0 / 3.0).abs() < 1e-6 && probs[2] == 0.0);
}

#[test]
fn sampling_repetition_penalty() {
    let mut x = vec![2.0f32, -2.0, 1.0, 4.0];
    // transformers: positive logits are divided, negative ones multiplied; repeats count once.
    apply_repetition_penalty(&mut x, &[0, 1, 1, 0, 99], 2.0);
    assert_eq!(x, vec![1.0, -4.0, 1.0, 4.0]);
    // Greedy with a penalty avoids the repeated token.
    let logits = [3.0f32, 2.0, 0.0];
    let mut s = Sampler::new(SamplingParams {
        repetition_penalty: 2.0,
        ..SamplingParams::default()
    })
    .unwrap();
    assert_eq!(s.sample(&logits, &[]), 0);
    assert_eq!(s.sample(&logits, &[0]), 1);
}

#[test]
fn sampling_is_seeded_and_follows_the_distribution() {
    let logits: Vec<f32> = [0.5f64, 0.3, 0.2].iter().map(|p| p.ln() as f32).collect();
    let params = |seed| SamplingParams {
        temperature: 1.0,
        seed,
        ..SamplingParams::default()
    };
    let draw = |seed| {
        let mut s = Sampler::new(params(seed)).unwrap();
        (0..4000)
            .map(|_| s.sample(&logits, &[]))
            .collect::<Vec<u32>>()
    };
    let a = draw(42);
    assert_eq!(a, draw(42), "same seed, same draws");
    assert_ne!(a, draw(43), "another seed, other draws");
    for (i, want) in [0.5f64, 0.3, 0.2].iter().enumerate() {
        let got = a.iter().filter(|&&t| t as usize == i).count() as f64 / a.len() as f64;
        assert!(
            (got - want).abs() < 0.03,
            "token {i}: frequency {got} vs {want}"
        );
    }
    // Invalid parameters are refused.
    for bad in [
        SamplingParams {
            temperature: -1.0,
            ..SamplingParams::default()
        },
        SamplingParams {
            top_p: 0.0,
            ..SamplingParams::default()
        },
        SamplingParams {
            top_p: 1.5,
            ..SamplingParams::default()
        },
        SamplingParams {
            repetition_penalty: 0.0,
            ..SamplingParams::default()
        },
    ] {
        assert!(Sampler::new(bad.clone()).is_err(), "{bad:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Incremental detokenization.

/// A byte-level BPE tokenizer with one token per byte (GPT-2's byte-to-unicode alphabet, no
/// merges) and `<eos>` = 256: every non-ASCII character spans several tokens.
fn byte_tokenizer() -> Tokenizer {
    let mut bytes: Vec<u32> = (b'!'..=b'~')
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .map(u32::from)
        .collect();
    let mut chars = bytes.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bytes.contains(&b) {
            bytes.push(b);
            chars.push(256 + n);
            n += 1;
        }
    }
    let vocab: serde_json::Map<String, serde_json::Value> = bytes
        .iter()
        .zip(&chars)
        .map(|(&b, &c)| (char::from_u32(c).unwrap().to_string(), b.into()))
        .collect();
    let byte_level = serde_json::json!({
        "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true
    });
    let json = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [{
            "id": 256, "content": "<eos>", "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true
        }],
        "normalizer": null,
        "pre_tokenizer": byte_level,
        "post_processor": null,
        "decoder": byte_level,
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null,
            "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": []
        }
    });
    Tokenizer::from_hf_json(json.to_string().as_bytes(), None, None, None).unwrap()
}

#[test]
fn text_stream_keeps_multibyte_characters_whole() {
    let tok = byte_tokenizer();
    let text = "Grüße, 東京 🦀 ok";
    let ids = tok.encode(text, false).unwrap();
    assert_eq!(ids.len(), text.len(), "one token per byte");
    let mut stream = TextStream::new(&tok, true);
    let mut pieces = Vec::new();
    for &id in ids.iter().chain(&[256]) {
        let piece = stream.push(id).unwrap();
        assert!(
            !piece.contains('\u{FFFD}'),
            "incomplete character {piece:?}"
        );
        pieces.push(piece);
    }
    pieces.push(stream.finish().unwrap());
    assert_eq!(pieces.concat(), text, "pieces {pieces:?}");
    // The crab's 4 bytes: nothing for the first 3, the whole character with the 4th.
    let crab = text.find('🦀').unwrap();
    assert_eq!(&pieces[crab..crab + 4], &["", "", "", "🦀"]);
    // A cut-off character comes out as U+FFFD at the end.
    let mut stream = TextStream::new(&tok, true);
    let mut out = String::new();
    for &id in &ids[..crab + 2] {
        out += &stream.push(id).unwrap();
    }
    out += &stream.finish().unwrap();
    assert_eq!(out, format!("{}\u{FFFD}", &text[..crab]));
}

// ---------------------------------------------------------------------------------------------
// SmolLM2.

/// SmolLM2-135M-Instruct from its Q4_1 GGUF (set `TINYTUNE_SMOLLM2_GGUF`; see
/// `scripts/fetch_model.sh`) on an NF4 base: greedy generation with the cache after
/// "The capital of France is" equals the full forward's argmax chain, with close logits.
#[test]
fn smollm2_gguf_greedy_generation() {
    let Some(path) = common::smollm2_gguf() else {
        return;
    };
    let Some(gpu) = gpu() else { return };
    let src = ModelSource::open(&path).unwrap();
    let tok = src.tokenizer().unwrap();
    let model = LlamaModel::load(gpu, &src, Quant::NF4).unwrap();
    let prompt = tok.encode("The capital of France is", false).unwrap();
    let n = 8;
    let mut dec = KvDecoder::new(gpu, &model, None, prompt.len() + n).unwrap();
    let v = model.config.vocab_size;
    let mut seq = prompt.clone();
    let mut rows = Vec::new();
    let mut logits = pollster::block_on(dec.feed(&prompt)).unwrap();
    for s in 0..n {
        let t = argmax(&logits);
        rows.push(logits.clone());
        seq.push(t);
        if s + 1 < n {
            logits = pollster::block_on(dec.feed(&[t])).unwrap();
        }
    }
    let text = tok.decode(&seq[prompt.len()..], false).unwrap();
    eprintln!("smollm2 nf4 greedy: {:?} {text:?}", &seq[prompt.len()..]);
    assert!(text.contains("Paris"), "{text:?}");
    let t = seq.len() - 1;
    let full = pollster::block_on(model.logits(gpu, &seq[..t], 1, t)).unwrap();
    let mut worst = 0f32;
    for (s, row) in rows.iter().enumerate() {
        let p = prompt.len() - 1 + s;
        let want = &full[p * v..(p + 1) * v];
        assert_eq!(argmax(want), seq[prompt.len() + s], "step {s}");
        worst = worst.max(max_abs_diff(row, want));
    }
    eprintln!("smollm2: max |cached - full| over {n} steps = {worst:e}");
    // Logits are O(10-30) here; the tolerance scales with them.
    assert!(
        worst <= 2e-3,
        "cached logits differ from the full forward by {worst}"
    );
}
