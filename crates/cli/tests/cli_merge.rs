//! `tinytune merge` on the tiny Hugging Face fixtures (`tests/fixtures/hf/*/{model,adapter}`):
//! merged weights against `W + scale * B @ A` computed here from the fixture files, dtypes,
//! config.json, tied embeddings, errors, and (with a GPU) the merged model's logits against PEFT's
//! logits of base + adapter (`adapter_logits.safetensors`).
//!
//! The GPU test needs an adapter (run with `WGPU_BACKEND=vulkan XDG_RUNTIME_DIR=/tmp`); without one
//! it is skipped with a message unless `TINYTUNE_REQUIRE_GPU=1`.

mod common;

use common::{assert_fails, root, tinytune};

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Output;

use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

/// |merged - (W + scale * B @ A)| for f32 output: the merge is f32 arithmetic with the rank summed
/// in order; the expectation here is computed in f64 and rounded once.
const F32_ATOL: f32 = 1e-6;

/// PEFT logits vs the merged model's GPU logits: |got - want| <= ATOL + RTOL * |want| (the fixture's
/// own check of the merge against PEFT's unmerged forward is 1e-4).
const LOGITS_ATOL: f32 = 2e-4;
const LOGITS_RTOL: f32 = 1e-4;

fn fixture(rel: &str) -> PathBuf {
    root().join("tests/fixtures/hf").join(rel)
}

fn merge(model: &str, out: &Path, extra: &[&str]) -> Output {
    let m = fixture(&format!("{model}/model"));
    let a = fixture(&format!("{model}/adapter"));
    let mut args = vec![
        "merge",
        "--model",
        m.to_str().unwrap(),
        "--adapter",
        a.to_str().unwrap(),
        "--output-dir",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    tinytune(&args)
}

fn merge_ok(model: &str, out: &Path, extra: &[&str]) {
    let o = merge(model, out, extra);
    assert!(
        o.status.success(),
        "tinytune merge {model} {extra:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Every tensor of a safetensors file as (dtype, shape, f32 values).
fn read_all(path: &Path) -> BTreeMap<String, (Dtype, Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = SafeTensors::deserialize(&bytes).expect("safetensors");
    st.tensors()
        .into_iter()
        .map(|(name, v)| {
            let data: Vec<f32> = match v.dtype() {
                Dtype::F32 => v
                    .data()
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
                Dtype::F16 => v
                    .data()
                    .chunks_exact(2)
                    .map(|c| half::f16::from_le_bytes(c.try_into().unwrap()).to_f32())
                    .collect(),
                Dtype::BF16 => v
                    .data()
                    .chunks_exact(2)
                    .map(|c| half::bf16::from_le_bytes(c.try_into().unwrap()).to_f32())
                    .collect(),
                Dtype::I32 => v
                    .data()
                    .chunks_exact(4)
                    .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as f32)
                    .collect(),
                _ => Vec::new(),
            };
            (name, (v.dtype(), v.shape().to_vec(), data))
        })
        .collect()
}

/// The expected merged tensors, computed from the fixture files: for each adapted linear
/// `W + scale * B @ A` (f64 accumulation, `scale = lora_alpha / r` from adapter_config.json),
/// every other tensor unchanged.
fn expected(model: &str) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    let base = read_all(&fixture(&format!("{model}/model/model.safetensors")));
    let lora = read_all(&fixture(&format!(
        "{model}/adapter/adapter_model.safetensors"
    )));
    let cfg: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture(&format!("{model}/adapter/adapter_config.json"))).unwrap(),
    )
    .unwrap();
    let r = cfg["r"].as_f64().unwrap();
    let scale = cfg["lora_alpha"].as_f64().unwrap() / r;
    assert!(!cfg["use_rslora"].as_bool().unwrap());
    let mut out = BTreeMap::new();
    let mut merged = 0;
    for (name, (_, shape, w)) in base {
        let stem = name.strip_suffix(".weight").unwrap_or(&name);
        let a = lora.get(&format!("base_model.model.{stem}.lora_A.weight"));
        let b = lora.get(&format!("base_model.model.{stem}.lora_B.weight"));
        let w = match (a, b) {
            (Some((_, sa, a)), Some((_, sb, b))) => {
                merged += 1;
                let (n_out, n_in, r) = (shape[0], shape[1], sa[0]);
                assert_eq!(sa, &vec![r, n_in]);
                assert_eq!(sb, &vec![n_out, r]);
                (0..n_out * n_in)
                    .map(|idx| {
                        let (o, i) = (idx / n_in, idx % n_in);
                        let d: f64 = (0..r)
                            .map(|k| b[o * r + k] as f64 * a[k * n_in + i] as f64)
                            .sum();
                        (w[idx] as f64 + scale * d) as f32
                    })
                    .collect()
            }
            (None, None) => w,
            _ => panic!("{name}: only one of lora_A / lora_B"),
        };
        out.insert(name, (shape, w));
    }
    assert_eq!(merged, 14, "{model}: adapted linears in the fixture");
    out
}

fn config(dir: &Path) -> Value {
    let text = std::fs::read_to_string(dir.join("config.json")).expect("config.json");
    serde_json::from_str(&text).expect("config.json is JSON")
}

#[test]
fn merge_f32_equals_w_plus_scaled_ba() {
    for model in ["llama", "qwen2"] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("merged");
        merge_ok(model, &out, &["--dtype", "f32"]);
        let got = read_all(&out.join("model.safetensors"));
        let want = expected(model);
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>(),
            "{model}: tensor names"
        );
        let mut worst = 0f32;
        for (name, (shape, w)) in &want {
            let (dtype, gshape, g) = &got[name];
            assert_eq!(*dtype, Dtype::F32, "{model} {name}");
            assert_eq!(gshape, shape, "{model} {name}");
            for (i, (x, y)) in g.iter().zip(w).enumerate() {
                let d = (x - y).abs();
                worst = worst.max(d);
                assert!(d <= F32_ATOL, "{model} {name}[{i}]: {x} vs {y}");
            }
        }
        eprintln!("{model}: max |merged - (W + scale B@A)| = {worst:e}");
        // The original config, all keys kept, with the written dtype; a valid model config.
        let cfg = config(&out);
        let src = config(&fixture(&format!("{model}/model")));
        for (k, v) in src.as_object().unwrap() {
            if k != "dtype" && k != "torch_dtype" {
                assert_eq!(&cfg[k], v, "{model}: config.json key {k}");
            }
        }
        assert_eq!(cfg["dtype"], "float32");
        tinytune_model::LlamaConfig::from_json(&serde_json::to_string(&cfg).unwrap()).unwrap();
        // Files of the source folder besides config and weights are copied.
        assert_eq!(
            std::fs::read(out.join("generation_config.json")).unwrap(),
            std::fs::read(fixture(&format!("{model}/model/generation_config.json"))).unwrap()
        );
        // Nothing else (no temporary files) is left in the folder.
        let files: BTreeSet<String> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            files,
            ["config.json", "generation_config.json", "model.safetensors"]
                .into_iter()
                .map(String::from)
                .collect()
        );
    }
}

#[test]
fn merge_default_dtype_is_f16() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("merged");
    merge_ok("llama", &out, &[]);
    let got = read_all(&out.join("model.safetensors"));
    let want = expected("llama");
    for (name, (shape, w)) in &want {
        let (dtype, gshape, g) = &got[name];
        assert_eq!(*dtype, Dtype::F16, "{name}");
        assert_eq!(gshape, shape, "{name}");
        for (i, (x, y)) in g.iter().zip(w).enumerate() {
            // One rounding to f16 (half an ulp, 2^-11 relative) of a value within F32_ATOL.
            let tol = F32_ATOL + y.abs() * 2f32.powi(-11) + 6e-8;
            assert!((x - y).abs() <= tol, "{name}[{i}]: {x} vs {y}");
        }
    }
    assert_eq!(config(&out)["dtype"], "float16");
}

#[test]
fn merge_bf16_dtype() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("merged");
    merge_ok("llama", &out, &["--dtype", "bf16"]);
    let got = read_all(&out.join("model.safetensors"));
    assert!(got.values().all(|(d, _, _)| *d == Dtype::BF16));
    assert_eq!(config(&out)["dtype"], "bfloat16");
}

#[test]
fn merge_tied_embeddings_writes_no_lm_head() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("merged");
    merge_ok("llama_tied_llama3", &out, &["--dtype", "f32"]);
    let got = read_all(&out.join("model.safetensors"));
    assert!(!got.contains_key("lm_head.weight"));
    let want = expected("llama_tied_llama3");
    assert!(!want.contains_key("lm_head.weight"));
    assert_eq!(got.len(), want.len());
    assert_eq!(
        got["model.embed_tokens.weight"].2,
        want["model.embed_tokens.weight"].1
    );
    let cfg = config(&out);
    assert_eq!(cfg["tie_word_embeddings"], true);
    assert_eq!(cfg["rope_scaling"]["rope_type"], "llama3");
    // And it opens as a tied model.
    let src = tinytune_model::ModelSource::open(&out).unwrap();
    assert!(src.config().tie_word_embeddings);
}

/// The merged folder, loaded by tinytune's own model loader and run on the GPU, gives PEFT's logits
/// of base + adapter.
#[test]
fn merged_model_reproduces_peft_adapter_logits() {
    let gpu = match tinytune_gpu::Gpu::new_blocking(tinytune_gpu::GpuOptions::default()) {
        Ok(g) => g,
        Err(e) => {
            if std::env::var("TINYTUNE_REQUIRE_GPU").as_deref() == Ok("1") {
                panic!("TINYTUNE_REQUIRE_GPU=1 but no GPU device: {e}");
            }
            eprintln!("SKIPPED: no GPU adapter ({e})");
            return;
        }
    };
    for model in ["llama", "llama_tied_llama3", "qwen2"] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("merged");
        merge_ok(model, &out, &["--dtype", "f32"]);
        let src = tinytune_model::ModelSource::open(&out).unwrap();
        let m = tinytune_model::LlamaModel::load(&gpu, &src, tinytune_model::Quant::None).unwrap();
        let fx = read_all(&fixture(&format!("{model}/adapter_logits.safetensors")));
        let (_, ishape, ids) = &fx["input_ids_i32"];
        let ids: Vec<u32> = ids.iter().map(|&v| v as u32).collect();
        let (b, t) = (ishape[0], ishape[1]);
        let got = pollster::block_on(m.logits(&gpu, &ids, b, t)).unwrap();
        let want = &fx["logits"].2;
        assert_eq!(got.len(), want.len());
        let mut worst = 0f32;
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            worst = worst.max((g - w).abs());
            assert!(
                (g - w).abs() <= LOGITS_ATOL + LOGITS_RTOL * w.abs(),
                "{model} logit {i}: merged {g} vs PEFT {w}"
            );
        }
        eprintln!("{model}: max |merged logits - PEFT adapter logits| = {worst:e}");
    }
}

#[test]
fn merge_errors_are_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("merged");
    let o = out.to_str().unwrap();
    let llama = fixture("llama/model");
    let adapter = fixture("llama/adapter");
    let (m, a) = (llama.to_str().unwrap(), adapter.to_str().unwrap());
    // An adapter for another model: tests/fixtures/model/llama_hf has intermediate_size 96, not 80.
    let other = root().join("tests/fixtures/model/llama_hf");
    assert_fails(
        &[
            "merge",
            "--model",
            other.to_str().unwrap(),
            "--adapter",
            a,
            "--output-dir",
            o,
        ],
        &["does not fit", "mlp."],
    );
    assert!(!out.join("model.safetensors").exists());
    let missing = dir.path().join("nope");
    let nope = missing.to_str().unwrap();
    assert_fails(
        &["merge", "--model", nope, "--adapter", a, "--output-dir", o],
        &["nope"],
    );
    assert_fails(
        &["merge", "--model", m, "--adapter", nope, "--output-dir", o],
        &["nope"],
    );
    // An adapter folder without its weights.
    let half = dir.path().join("half");
    std::fs::create_dir(&half).unwrap();
    std::fs::copy(
        adapter.join("adapter_config.json"),
        half.join("adapter_config.json"),
    )
    .unwrap();
    assert_fails(
        &[
            "merge",
            "--model",
            m,
            "--adapter",
            half.to_str().unwrap(),
            "--output-dir",
            o,
        ],
        &["adapter_model.safetensors"],
    );
    // The model folder itself as output.
    assert_fails(
        &["merge", "--model", m, "--adapter", a, "--output-dir", m],
        &["model folder itself"],
    );
    assert!(!out.join("model.safetensors").exists());
}

#[test]
fn merge_help_documents_every_flag() {
    let o = tinytune(&["merge", "--help"]);
    assert!(o.status.success());
    let text = String::from_utf8(o.stdout).unwrap();
    for flag in ["--model", "--adapter", "--output-dir", "--dtype"] {
        assert!(text.contains(flag), "{flag} undocumented:\n{text}");
    }
    assert!(text.contains("[default: f16]"), "{text}");
}
