//! `tinytune quantize MODEL_DIR OUT_DIR`: a pre-quantized bitsandbytes 4-bit checkpoint, checked
//! against what transformers 5.24 + bitsandbytes 0.50.2 saved for the same tiny model
//! (`tests/fixtures/hf/llama/nf4/model`: tensor names, dtypes, shapes, `quantization_config`) and,
//! code for code, against `tinytune_reference::nf4` quantization of the source weights.
//!
//! The quantize runs need a GPU adapter (run with `WGPU_BACKEND=vulkan XDG_RUNTIME_DIR=/tmp`);
//! without one they are skipped with a message unless `TINYTUNE_REQUIRE_GPU=1`. The error cases
//! always run.

mod common;

use common::{assert_fails, have_gpu, root, tinytune};

use std::collections::BTreeMap;
use std::path::Path;

use safetensors::{Dtype, SafeTensors};
use serde_json::Value;
use tinytune_reference::nf4::{Absmax, Nf4Tensor, DYNAMIC_MAP, NF4};

const QS: &str = ".quant_state.bitsandbytes__nf4";

fn quantize_ok(inp: &Path, out: &Path) {
    let o = tinytune(&["quantize", inp.to_str().unwrap(), out.to_str().unwrap()]);
    assert!(
        o.status.success(),
        "tinytune quantize {}: {}",
        inp.display(),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A tensor: dtype, shape, raw bytes.
type Raw = (Dtype, Vec<usize>, Vec<u8>);

fn read_raw(path: &Path) -> BTreeMap<String, Raw> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = SafeTensors::deserialize(&bytes).expect("safetensors");
    st.tensors()
        .into_iter()
        .map(|(n, v)| (n, (v.dtype(), v.shape().to_vec(), v.data().to_vec())))
        .collect()
}

fn f32s(dtype: Dtype, b: &[u8]) -> Vec<f32> {
    match dtype {
        Dtype::F32 => b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        Dtype::BF16 => b
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes(c.try_into().unwrap()).to_f32())
            .collect(),
        Dtype::F16 => b
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes(c.try_into().unwrap()).to_f32())
            .collect(),
        d => panic!("{d} is not float"),
    }
}

/// Every float tensor converted to `dtype` (round to nearest even, as torch's `.to(dtype)`).
fn converted(m: BTreeMap<String, Raw>, dtype: Dtype) -> BTreeMap<String, Raw> {
    m.into_iter()
        .map(|(n, (d, s, b))| {
            let x = f32s(d, &b);
            let v: Vec<u8> = match dtype {
                Dtype::F32 => x.iter().flat_map(|v| v.to_le_bytes()).collect(),
                Dtype::BF16 => x
                    .iter()
                    .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                    .collect(),
                Dtype::F16 => x
                    .iter()
                    .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                    .collect(),
                d => panic!("{d}"),
            };
            (n, (dtype, s, v))
        })
        .collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn is_linear(name: &str) -> bool {
    name.starts_with("model.layers.")
        && (name.contains(".self_attn.") || name.contains(".mlp."))
        && name.ends_with("_proj.weight")
}

/// Every tensor of `out` against the source tensors `src` (already in the dtype the output should
/// hold): decoder linears quantized exactly as `tinytune_reference::nf4` does (NF4, block 64,
/// double quant), everything else byte-identical. Returns the number of quantized tensors.
fn check_tensors(out: &BTreeMap<String, Raw>, src: &BTreeMap<String, Raw>, dtype: &str) -> usize {
    let mut n = 0;
    let mut seen = 0;
    for (name, (d, shape, bytes)) in src {
        if !is_linear(name) {
            let (od, os, ob) = out.get(name).unwrap_or_else(|| panic!("no {name}"));
            assert_eq!((od, os), (d, shape), "{name}");
            assert!(ob == bytes, "{name}: not copied unchanged");
            seen += 1;
            continue;
        }
        n += 1;
        let want = Nf4Tensor::quantize(&f32s(*d, bytes), 64, true);
        let get = |suffix: &str| {
            out.get(&format!("{name}{suffix}"))
                .unwrap_or_else(|| panic!("no {name}{suffix}"))
        };
        let (pd, ps, packed) = get("");
        assert_eq!((*pd, ps.clone()), (Dtype::U8, vec![want.packed.len(), 1]));
        assert!(
            packed == &want.packed,
            "{name}: codes differ from the reference"
        );
        let Absmax::Double(dq) = &want.absmax else {
            unreachable!()
        };
        assert_eq!(get(".absmax").2, dq.codes, "{name}.absmax codes");
        let (_, _, nested) = get(".nested_absmax");
        assert_eq!(bits(&f32s(Dtype::F32, nested)), bits(&dq.nested_absmax));
        assert_eq!(bits(&f32s(Dtype::F32, &get(".quant_map").2)), bits(&NF4));
        assert_eq!(
            bits(&f32s(Dtype::F32, &get(".nested_quant_map").2)),
            bits(&DYNAMIC_MAP)
        );
        let qs: Value = serde_json::from_slice(&get(QS).2).expect("quant state JSON");
        assert_eq!(qs["quant_type"], "nf4");
        assert_eq!(qs["blocksize"], 64);
        assert_eq!(qs["dtype"], dtype, "{name}");
        assert_eq!(qs["shape"], serde_json::json!(shape));
        assert_eq!(qs["nested_blocksize"], 256);
        assert_eq!(qs["nested_dtype"], "float32");
        assert_eq!(qs["nested_offset"].as_f64().unwrap() as f32, dq.offset);
        seen += 6;
    }
    assert_eq!(out.len(), seen, "unexpected extra tensors in the output");
    n
}

#[test]
fn quantize_model_folder_like_transformers_bnb() {
    if !have_gpu() {
        return;
    }
    for model in ["llama", "llama_tied_llama3", "qwen2"] {
        let fx = root().join("tests/fixtures/hf").join(model);
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("q");
        quantize_ok(&fx.join("model"), &out);
        let got = read_raw(&out.join("model.safetensors"));
        let src = read_raw(&fx.join("model/model.safetensors"));
        assert_eq!(check_tensors(&got, &src, "float32"), 14, "{model}");
        // Same tensor names, dtypes and shapes as transformers' save_pretrained of the model loaded
        // with BitsAndBytesConfig (nf4, double quant).
        let hf = read_raw(&fx.join("nf4/model/model.safetensors"));
        let layout = |m: &BTreeMap<String, Raw>| -> Vec<(String, Dtype, Vec<usize>)> {
            m.iter()
                .filter(|(n, _)| !n.ends_with(QS)) // JSON length depends on the offset's digits
                .map(|(n, (d, s, _))| (n.clone(), *d, s.clone()))
                .collect()
        };
        assert_eq!(layout(&got), layout(&hf), "{model}: layout vs transformers");
        // config.json: the source's keys plus transformers' quantization_config, exactly.
        let cfg = json(&out.join("config.json"));
        let src_cfg = json(&fx.join("model/config.json"));
        let hf_cfg = json(&fx.join("nf4/model/config.json"));
        assert_eq!(cfg["quantization_config"], hf_cfg["quantization_config"]);
        let mut rest = cfg.as_object().unwrap().clone();
        rest.remove("quantization_config");
        assert_eq!(
            &rest,
            src_cfg.as_object().unwrap(),
            "{model}: other config keys"
        );
        assert_eq!(
            std::fs::read(out.join("generation_config.json")).unwrap(),
            std::fs::read(fx.join("model/generation_config.json")).unwrap()
        );
    }
}

/// A sharded folder with a tokenizer: every shard quantized in place, the index lists every new
/// tensor in its shard, the tokenizer files are copied.
#[test]
fn quantize_sharded_model_folder() {
    if !have_gpu() {
        return;
    }
    let inp = root().join("tests/fixtures/model/llama_hf");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("q");
    quantize_ok(&inp, &out);
    let index = json(&out.join("model.safetensors.index.json"));
    let map = index["weight_map"].as_object().unwrap();
    let shards = [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ];
    let mut total = 0;
    let mut nquant = 0;
    for shard in shards {
        let got = read_raw(&out.join(shard));
        // Stored as BF16 (layer 0), F16 (layer 1, lm_head) and F32, declared float32: transformers
        // loads (and quantizes) everything as f32.
        let src = converted(read_raw(&inp.join(shard)), Dtype::F32);
        nquant += check_tensors(&got, &src, "float32");
        for name in got.keys() {
            assert_eq!(map[name], shard, "{name}");
        }
        total += got.values().map(|t| t.2.len()).sum::<usize>();
    }
    assert_eq!(nquant, 14);
    assert_eq!(index["metadata"]["total_size"], total);
    let listed: usize = shards.iter().map(|s| read_raw(&out.join(s)).len()).sum();
    assert_eq!(map.len(), listed);
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        assert_eq!(
            std::fs::read(out.join(f)).unwrap(),
            std::fs::read(inp.join(f)).unwrap(),
            "{f}"
        );
    }
    assert_eq!(
        json(&out.join("config.json"))["quantization_config"]["quant_method"],
        "bitsandbytes"
    );
}

/// transformers loads a model in the dtype its config.json declares (dtype="auto") before
/// quantizing: an F32 checkpoint declaring bfloat16 becomes BF16 tensors and NF4 codes of the
/// bf16-rounded weights, with quant-state dtype "bfloat16".
#[test]
fn quantize_model_folder_follows_config_dtype() {
    if !have_gpu() {
        return;
    }
    let fx = root().join("tests/fixtures/hf/llama/model");
    let dir = tempfile::tempdir().unwrap();
    let inp = dir.path().join("m");
    std::fs::create_dir(&inp).unwrap();
    std::fs::copy(fx.join("model.safetensors"), inp.join("model.safetensors")).unwrap();
    let mut cfg = json(&fx.join("config.json"));
    cfg["dtype"] = "bfloat16".into();
    std::fs::write(inp.join("config.json"), cfg.to_string()).unwrap();
    let out = dir.path().join("q");
    quantize_ok(&inp, &out);
    // The source as transformers would hold it: every float tensor rounded to bf16.
    let src = converted(read_raw(&inp.join("model.safetensors")), Dtype::BF16);
    let got = read_raw(&out.join("model.safetensors"));
    assert_eq!(check_tensors(&got, &src, "bfloat16"), 14);
    assert_eq!(json(&out.join("config.json"))["dtype"], "bfloat16");
}

#[test]
fn quantize_model_folder_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("q");
    let o = out.to_str().unwrap();
    let fx = root().join("tests/fixtures/hf/llama");
    let model = fx.join("model");
    let m = model.to_str().unwrap();
    assert_fails(&["quantize", m, o, "--dequantize"], &["--dequantize"]);
    assert_fails(
        &["quantize", m, o, "--block-size", "48"],
        &["--block-size 48"],
    );
    assert_fails(
        &["quantize", m, o, "--block-size-map", "mlp.nope=32"],
        &["\"mlp.nope\""],
    );
    assert_fails(
        &["quantize", m, o, "--tensor", "model.norm.weight"],
        &["--tensor"],
    );
    assert_fails(
        &["quantize", fx.join("nf4/model").to_str().unwrap(), o],
        &["already quantized"],
    );
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    assert_fails(&["quantize", empty.to_str().unwrap(), o], &["config.json"]);
    assert_fails(&["quantize", m, m], &["model folder itself"]);
    assert!(!out.exists(), "an output folder was created");
}
