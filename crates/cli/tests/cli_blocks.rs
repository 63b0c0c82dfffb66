//! Per-layer NF4 block sizes (`--block-size N|auto`, `--block-size-map`, `--bits-per-weight`)
//! end to end on the tiny Llama fixture: training records the choice with the adapter and every
//! checkpoint, and eval, generate and resume rebuild the same base from it; `auto` prints its
//! per-layer table and stays within its budget; `quantize MODEL_DIR OUT_DIR` writes each layer's
//! own block size into its quant state, and the output folder loads back as the same model
//! (logits bit for bit); bitsandbytes folders that cannot be read get one clear error each.
//!
//! Needs a GPU adapter (`WGPU_BACKEND=vulkan XDG_RUNTIME_DIR=/tmp`) except the error cases.

mod common;

use common::{assert_fails, have_gpu, root, tinytune};

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;

const MAP: &str = "mlp.down_proj=32,self_attn.*=128,layers.1.self_attn.v_proj=4096";

fn model() -> PathBuf {
    root().join("tests/fixtures/model/llama_hf")
}

fn ok(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "tinytune failed: {err}");
    err
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn write_data(dir: &Path) -> PathBuf {
    let mut text = String::new();
    for i in 0..12 {
        text.push_str(&format!(
            "{{\"messages\":[{{\"role\":\"user\",\"content\":\"Question number {i}?\"}},{{\"role\":\"assistant\",\"content\":\"Arr! Answer {i}.\"}}]}}\n"
        ));
    }
    let p = dir.join("data.jsonl");
    std::fs::write(&p, text).unwrap();
    p
}

fn json(p: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .unwrap()
}

/// The block size recorded for `module` in a `tinytune_blocks.json`.
fn recorded(dir: &Path, module: &str) -> u64 {
    json(&dir.join("tinytune_blocks.json"))["block_sizes"][module]
        .as_u64()
        .unwrap()
}

fn losses(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["loss"].clone())
        .collect()
}

fn eval_loss(args: &[&str]) -> (f64, String) {
    let o = tinytune(args);
    let err = ok(&o);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    (v["eval_loss"].as_f64().unwrap(), err)
}

#[test]
fn per_layer_block_sizes_train_save_resume_and_evaluate() {
    if !have_gpu() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = write_data(tmp.path());
    let m = model();
    let out = tmp.path().join("run");
    let train = |out: &Path, extra: &[&str]| -> String {
        let mut a = vec![
            "train",
            "--model",
            s(&m),
            "--data",
            s(&data),
            "--output-dir",
            s(out),
            "--seq-len",
            "32",
            "--batch-size",
            "2",
            "--num-steps",
            "4",
            "--learning-rate",
            "1e-2",
            "--lora-r",
            "4",
            "--save-every",
            "2",
            "--log-steps",
        ];
        a.extend_from_slice(extra);
        ok(&tinytune(&a))
    };
    train(&out, &["--block-size-map", MAP]);
    for dir in [
        out.clone(),
        out.join("checkpoint-2"),
        out.join("checkpoint-4"),
    ] {
        assert_eq!(recorded(&dir, "model.layers.0.mlp.down_proj"), 32);
        assert_eq!(recorded(&dir, "model.layers.1.self_attn.q_proj"), 128);
        assert_eq!(recorded(&dir, "model.layers.1.self_attn.v_proj"), 4096);
        assert_eq!(recorded(&dir, "model.layers.0.mlp.gate_proj"), 64);
    }

    // eval --adapter rebuilds the recorded base: the same loss as asking for the map again, not
    // block 64's.
    let base = [
        "eval",
        "--model",
        s(&m),
        "--data",
        s(&data),
        "--seq-len",
        "32",
    ];
    let with = |extra: &[&str]| {
        let mut a = base.to_vec();
        a.extend_from_slice(extra);
        eval_loss(&a)
    };
    let (stored, log) = with(&["--adapter", s(&out)]);
    assert!(log.contains("as recorded in"), "{log}");
    let (asked, _) = with(&["--adapter", s(&out), "--block-size-map", MAP]);
    let (block64, _) = with(&["--adapter", s(&out), "--block-size", "64"]);
    assert_eq!(stored, asked);
    assert_ne!(stored, block64, "the recorded block sizes were not used");

    // generate --adapter loads the same base.
    let log = ok(&tinytune(&[
        "generate",
        "--model",
        s(&m),
        "--adapter",
        s(&out),
        "--prompt",
        "Question number 3?",
        "--max-new-tokens",
        "3",
    ]));
    assert!(log.contains("as recorded in"), "{log}");

    // Resume from checkpoint-2 in a copy: steps 3 and 4 repeat exactly, on the recorded base.
    let out2 = tmp.path().join("resumed");
    let ck = out2.join("checkpoint-2");
    std::fs::create_dir_all(&ck).unwrap();
    for e in std::fs::read_dir(out.join("checkpoint-2")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), ck.join(e.file_name())).unwrap();
    }
    let first2: String = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .take(2)
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(out2.join("metrics.jsonl"), first2).unwrap();
    train(&out2, &["--resume"]);
    assert_eq!(losses(&out), losses(&out2));
    assert_eq!(recorded(&out2, "model.layers.1.self_attn.v_proj"), 4096);

    // Resuming on another base is refused.
    let mut a = vec![
        "train",
        "--model",
        s(&m),
        "--data",
        s(&data),
        "--output-dir",
        s(&out2),
        "--num-steps",
        "4",
        "--save-every",
        "2",
        "--resume",
    ];
    a.extend_from_slice(&["--block-size", "64"]);
    let o = tinytune(&a);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("resumed run"), "{err}");
}

/// The "all" row of the per-layer table: (bits per weight, weighted relative error).
fn table_totals(log: &str) -> (f64, f64) {
    let line = log
        .lines()
        .find(|l| l.starts_with("all (weighted by size)"))
        .unwrap_or_else(|| panic!("no table in {log}"));
    let v: Vec<f64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (v[0], v[1])
}

fn logits(model: &Path, out: &Path, extra: &[&str]) -> String {
    let mut a = vec![
        "logits",
        "--model",
        s(model),
        "--ids",
        "1,5,9,33,100,7",
        "--out",
        s(out),
    ];
    a.extend_from_slice(extra);
    ok(&tinytune(&a))
}

#[test]
fn block_size_auto_prints_a_table_within_its_budget() {
    if !have_gpu() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("l.safetensors");
    let m = model();
    // Block 64 everywhere, with its errors (a map that pins every module).
    let log = logits(&m, &f, &["--block-size-map", "*=64"]);
    assert!(
        log.contains("module") && log.contains("relative error"),
        "{log}"
    );
    let (bits64, err64) = table_totals(&log);
    // auto: the same memory at most, the error no larger.
    let log = logits(&m, &f, &["--block-size", "auto"]);
    let (bits, err) = table_totals(&log);
    assert!(
        bits <= bits64 + 1e-9,
        "auto {bits} bits > block 64's {bits64}"
    );
    assert!(err <= err64, "auto error {err} > block 64's {err64}");
    for line in log.lines().filter(|l| l.starts_with("model.layers.")) {
        assert_eq!(line.split_whitespace().count(), 4, "{line}");
    }
    // With a budget: within it, and more bits buy less error.
    let log = logits(
        &m,
        &f,
        &["--block-size", "auto", "--bits-per-weight", "4.6"],
    );
    let (bits_hi, err_hi) = table_totals(&log);
    assert!(bits_hi <= 4.6, "{bits_hi}");
    assert!(
        err_hi < err,
        "4.6 bits/weight: error {err_hi} not below {err}"
    );
    let log = logits(
        &m,
        &f,
        &["--block-size", "auto", "--bits-per-weight", "4.05"],
    );
    let (bits_lo, err_lo) = table_totals(&log);
    assert!(bits_lo <= 4.05, "{bits_lo}");
    assert!(
        err_lo > err,
        "4.05 bits/weight: error {err_lo} not above {err}"
    );
}

#[test]
fn block_size_errors_name_what_is_wrong() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("l.safetensors");
    let m = model();
    let base = ["logits", "--model", s(&m), "--ids", "1,2", "--out", s(&f)];
    let fails = |extra: &[&str], mentions: &[&str]| {
        let mut a = base.to_vec();
        a.extend_from_slice(extra);
        assert_fails(&a, mentions);
    };
    fails(
        &["--block-size-map", "mlp.down_proj=32,mlp.nope=64"],
        &["\"mlp.nope\"", "matches no module"],
    );
    fails(&["--block-size", "48"], &["--block-size 48", "4096"]);
    fails(
        &["--block-size-map", "mlp.down_proj=100"],
        &["mlp.down_proj", "100"],
    );
    fails(&["--block-size-map", "mlp.down_proj"], &["PATTERN=N"]);
    fails(
        &["--block-size", "128", "--bits-per-weight", "4.2"],
        &["--block-size auto"],
    );
    fails(
        &["--block-size", "auto", "--bits-per-weight", "3.5"],
        &["--bits-per-weight", "below"],
    );
    fails(
        &["--quant", "none", "--block-size", "128"],
        &["--quant none"],
    );
    assert!(!f.exists());
}

/// (block size, double quant) of every quantized weight of a folder's safetensors files.
fn quant_states(dir: &Path) -> Vec<(String, u64, bool)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().and_then(|x| x.to_str()) != Some("safetensors") {
            continue;
        }
        let bytes = std::fs::read(&p).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        for (name, v) in st.tensors() {
            if let Some(w) = name.strip_suffix(".quant_state.bitsandbytes__nf4") {
                let q: Value = serde_json::from_slice(v.data()).unwrap();
                out.push((
                    w.to_string(),
                    q["blocksize"].as_u64().unwrap(),
                    q.get("nested_offset").is_some(),
                ));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn quantize_folder_with_per_layer_block_sizes_round_trips() {
    if !have_gpu() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let m = model();
    let (direct, loaded) = (tmp.path().join("a"), tmp.path().join("b"));
    for (i, flags) in [
        vec!["--block-size-map", MAP],
        vec!["--block-size", "256"],
        vec!["--block-size", "auto", "--bits-per-weight", "4.3"],
    ]
    .into_iter()
    .enumerate()
    {
        let out = tmp.path().join(format!("q{i}"));
        let mut a = vec!["quantize", s(&m), s(&out)];
        a.extend_from_slice(&flags);
        ok(&tinytune(&a));
        let states = quant_states(&out);
        assert_eq!(states.len(), 14, "{flags:?}");
        for (w, block, dq) in &states {
            assert!(dq, "{w}");
            let want = match i {
                0 if w.ends_with("mlp.down_proj.weight") => Some(32),
                0 if w == "model.layers.1.self_attn.v_proj.weight" => Some(4096),
                0 if w.contains("self_attn") => Some(128),
                0 => Some(64),
                1 => Some(256),
                _ => None,
            };
            if let Some(b) = want {
                assert_eq!(*block, b, "{flags:?}: {w}");
            }
        }
        // The folder loads as the base quantized directly with the same options, bit for bit.
        logits(&m, &direct, &flags);
        let log = logits(&out, &loaded, &[]);
        assert!(log.contains("bitsandbytes") || !log.is_empty());
        assert_eq!(
            std::fs::read(&direct).unwrap(),
            std::fs::read(&loaded).unwrap(),
            "{flags:?}: logits of the quantized folder differ from the direct load"
        );
        if i == 0 {
            // Its block sizes are its own.
            assert_fails(
                &[
                    "logits",
                    "--model",
                    s(&out),
                    "--ids",
                    "1",
                    "--out",
                    s(&direct),
                    "--block-size",
                    "64",
                ],
                &["bitsandbytes 4-bit checkpoint"],
            );
        }
    }

    // Without double quantization: f32 absmax per block, each layer's own block size, and the
    // folder loads (its codes as they are).
    let out = tmp.path().join("nodq");
    ok(&tinytune(&[
        "quantize",
        s(&m),
        s(&out),
        "--no-double-quant",
        "--block-size-map",
        MAP,
    ]));
    let states = quant_states(&out);
    assert!(states.iter().all(|(_, _, dq)| !dq));
    assert!(states
        .iter()
        .any(|(w, b, _)| w.ends_with("layers.0.mlp.down_proj.weight") && *b == 32));
    logits(&out, &loaded, &[]);
}

/// A copy of the bitsandbytes fixture folder with `config.json`'s quantization_config edited.
fn edited_bnb_folder(dir: &Path, edit: impl Fn(&mut Value)) -> PathBuf {
    let src = root().join("tests/fixtures/hf/llama/nf4/model");
    let out = dir.join("bnb");
    std::fs::create_dir_all(&out).unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), out.join(e.file_name())).unwrap();
    }
    let mut cfg = json(&out.join("config.json"));
    edit(&mut cfg["quantization_config"]);
    std::fs::write(out.join("config.json"), cfg.to_string()).unwrap();
    out
}

#[test]
fn unsupported_bitsandbytes_folders_get_one_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("l.safetensors");
    let run = |m: &Path, mentions: &[&str]| {
        assert_fails(
            &["logits", "--model", s(m), "--ids", "1,2", "--out", s(&f)],
            mentions,
        );
    };
    let m = edited_bnb_folder(tmp.path(), |q| {
        q["load_in_4bit"] = Value::Bool(false);
        q["_load_in_4bit"] = Value::Bool(false);
        q["load_in_8bit"] = Value::Bool(true);
        q["_load_in_8bit"] = Value::Bool(true);
    });
    run(&m, &["8-bit", "not supported"]);
    let m = edited_bnb_folder(tmp.path(), |q| {
        q["bnb_4bit_quant_type"] = Value::String("fp4".into());
    });
    run(&m, &["\"fp4\"", "not supported"]);
    let m = edited_bnb_folder(tmp.path(), |q| {
        q["quant_method"] = Value::String("gptq".into());
    });
    run(&m, &["\"gptq\"", "not supported"]);
}

#[test]
fn merge_dequantizes_a_bitsandbytes_base() {
    if !have_gpu() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let fx = root().join("tests/fixtures/hf/llama");
    let out = tmp.path().join("merged");
    ok(&tinytune(&[
        "merge",
        "--model",
        s(&fx.join("nf4/model")),
        "--adapter",
        s(&fx.join("adapter")),
        "--output-dir",
        s(&out),
        "--dtype",
        "f32",
    ]));
    let cfg = json(&out.join("config.json"));
    assert!(cfg.get("quantization_config").is_none(), "{cfg}");
    let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let w = st.tensor("model.layers.0.mlp.down_proj.weight").unwrap();
    assert_eq!(w.dtype(), safetensors::Dtype::F32);
    assert!(st.names().iter().all(|n| !n.contains("quant_state")));
}
