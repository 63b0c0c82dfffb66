//! GGUF k-quants (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K) and the other block types (Q5_0, Q5_1, Q8_0,
//! Q4_0, Q4_1): dequantization bit for bit against gguf-py's `quants.dequantize`, the refusal of a
//! block with a non-finite scale, and a mixed-type GGUF (like a `Q4_K_M` file) that loads as NF4
//! and f32 and trains.
//!
//! Fixtures: tests/fixtures/model/kquants.safetensors and llama_kquant.gguf, made by
//! gen_kquant_fixtures.py (see its docstring). The dequantization tests need no GPU; the load and
//! train tests run on the GPU (skipped without one unless `TINYTUNE_REQUIRE_GPU=1`).

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use common::hf::reference_model;
use common::{assert_close, gpu};
use tinytune::model::{
    GgmlType, GgufFile, LlamaModel, MemBytes, ModelError, ModelSource, Quant, SourceFormat,
};
use tinytune::reference::llama;
use tinytune::train::{
    AdamWConfig, DataStats, Dataset, Example, ScheduleKind, Start, Stop, TrainConfig, Trainer,
};

const MIXED: &str = "llama_kquant.gguf";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/model")
}

/// A tensor of kquants.safetensors: its raw bytes and dtype.
struct Raw {
    dtype: safetensors::Dtype,
    data: Vec<u8>,
}

fn kquant_fixture() -> &'static HashMap<String, Raw> {
    static F: std::sync::OnceLock<HashMap<String, Raw>> = std::sync::OnceLock::new();
    F.get_or_init(|| {
        let bytes = std::fs::read(fixtures().join("kquants.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        st.tensors()
            .into_iter()
            .map(|(name, v)| {
                (
                    name,
                    Raw {
                        dtype: v.dtype(),
                        data: v.data().to_vec(),
                    },
                )
            })
            .collect()
    })
}

fn fixture_u8(name: &str) -> Vec<u8> {
    let t = &kquant_fixture()[name];
    assert_eq!(t.dtype, safetensors::Dtype::U8, "{name}");
    t.data.clone()
}

fn fixture_f32(name: &str) -> Vec<f32> {
    let t = &kquant_fixture()[name];
    assert_eq!(t.dtype, safetensors::Dtype::F32, "{name}");
    t.data
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn fixture_i64(name: &str) -> Vec<i64> {
    let t = &kquant_fixture()[name];
    assert_eq!(t.dtype, safetensors::Dtype::I64, "{name}");
    t.data
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// Dequantizes the fixture's random (and, where gguf-py can quantize the type, quantized) blocks of
/// `t` and compares every value's bits with gguf-py's.
fn check_against_gguf_py(t: GgmlType) {
    let raw = fixture_u8(&format!("{}/raw", t.name()));
    let want = fixture_f32(&format!("{}/expected", t.name()));
    assert_eq!(
        raw.len() / t.block_bytes() * t.block_elems(),
        want.len(),
        "{}: fixture sizes",
        t.name()
    );
    assert!(
        want.len() / t.block_elems() >= 3,
        "at least 3 blocks per type"
    );
    let mut got = vec![0f32; want.len()];
    t.dequantize(&raw, &mut got)
        .unwrap_or_else(|e| panic!("{}: {e}", t.name()));
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(
            g.to_bits() == w.to_bits(),
            "{} element {i} (block {}): got {g:e} ({:#010x}), gguf-py {w:e} ({:#010x})",
            t.name(),
            i / t.block_elems(),
            g.to_bits(),
            w.to_bits()
        );
    }
}

#[test]
fn q2_k_dequantize_matches_gguf() {
    check_against_gguf_py(GgmlType::Q2_K);
}

#[test]
fn q3_k_dequantize_matches_gguf() {
    check_against_gguf_py(GgmlType::Q3_K);
}

#[test]
fn q4_k_dequantize_matches_gguf() {
    check_against_gguf_py(GgmlType::Q4_K);
}

#[test]
fn q5_k_dequantize_matches_gguf() {
    check_against_gguf_py(GgmlType::Q5_K);
}

#[test]
fn q6_k_dequantize_matches_gguf() {
    check_against_gguf_py(GgmlType::Q6_K);
}

#[test]
fn q5_0_dequantize_matches_gguf() {
    check_against_gguf_py(GgmlType::Q5_0);
}

#[test]
fn q5_1_dequantize_matches_gguf() {
    check_against_gguf_py(GgmlType::Q5_1);
}

#[test]
fn q8_0_q4_0_q4_1_dequantize_random_blocks_match_gguf() {
    for t in [GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1] {
        check_against_gguf_py(t);
    }
}

/// Overwrites the f16 at `at` with `bits`.
fn put_f16(b: &mut [u8], at: usize, bits: u16) {
    b[at..at + 2].copy_from_slice(&bits.to_le_bytes());
}

#[test]
fn kquant_block_with_non_finite_scale_is_refused() {
    // (type, byte offset of the scale in a block, its name): every f16 scale of every k-quant.
    let cases = [
        (GgmlType::Q2_K, 80, "d"),
        (GgmlType::Q2_K, 82, "dmin"),
        (GgmlType::Q3_K, 108, "d"),
        (GgmlType::Q4_K, 0, "d"),
        (GgmlType::Q4_K, 2, "dmin"),
        (GgmlType::Q5_K, 0, "d"),
        (GgmlType::Q5_K, 2, "dmin"),
        (GgmlType::Q6_K, 208, "d"),
        (GgmlType::Q5_0, 0, "d"),
        (GgmlType::Q5_1, 2, "m"),
    ];
    for (t, at, field) in cases {
        for (bits, shown) in [(0x7C00u16, "inf"), (0xFC00, "-inf"), (0x7E01, "NaN")] {
            let mut raw = fixture_u8(&format!("{}/raw", t.name()));
            put_f16(&mut raw, 2 * t.block_bytes() + at, bits);
            let mut out = vec![0f32; raw.len() / t.block_bytes() * t.block_elems()];
            let e = t.dequantize(&raw, &mut out).unwrap_err();
            assert!(matches!(e, ModelError::Format(_)), "{e:?}");
            let e = e.to_string();
            let be = t.block_elems();
            let want = format!(
                "{} block 2 (elements {}..{}) has a non-finite scale: {field} = {shown} (f16 bits 0x{bits:04X})",
                t.name(),
                2 * be,
                3 * be
            );
            assert!(e.contains(&want), "got: {e}\nwant: {want}");
        }
    }
}

#[test]
fn non_finite_scale_in_a_gguf_tensor_names_file_tensor_and_block() {
    let path = fixtures().join(MIXED);
    let mut bytes = std::fs::read(&path).unwrap();
    let g = GgufFile::open(&path).unwrap();
    // blk.0.ffn_gate.weight is Q2_K: its d sits at byte 80 of each 84-byte block.
    let info = g.tensor_info("blk.0.ffn_gate.weight").unwrap();
    assert_eq!(info.ggml_type().unwrap(), GgmlType::Q2_K);
    let at = (g.data_start() + info.offset) as usize + 5 * 84 + 80;
    put_f16(&mut bytes, at, 0x7C00);
    let g = GgufFile::new(Box::new(MemBytes::new(bytes.clone(), "bad.gguf"))).unwrap();
    let e = g.load_raw("blk.0.ffn_gate.weight").unwrap_err().to_string();
    assert_eq!(
        e,
        "bad.gguf: tensor 'blk.0.ffn_gate.weight': Q2_K block 5 (elements 1280..1536) has a \
         non-finite scale: d = inf (f16 bits 0x7C00); the tensor data is corrupt"
    );
    // The other tensors still load; through the model source the error is the same.
    g.load_raw("blk.0.ffn_up.weight").unwrap();
    let src = ModelSource::from_gguf_bytes(Box::new(MemBytes::new(bytes, "bad.gguf"))).unwrap();
    let e = src
        .load("model.layers.0.mlp.gate_proj.weight")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("bad.gguf: tensor 'blk.0.ffn_gate.weight': Q2_K block 5"),
        "{e}"
    );
}

#[test]
fn mixed_gguf_tensors_match_gguf_py() {
    let g = GgufFile::open(&fixtures().join(MIXED)).unwrap();
    let mut types = std::collections::BTreeSet::new();
    for info in g.tensor_infos() {
        let t = g.load_raw(&info.name).unwrap();
        let key = format!("{MIXED}/{}", info.name);
        let idx = fixture_i64(&format!("{key}/idx"));
        let want = fixture_f32(&format!("{key}/val"));
        assert_eq!(t.data.len() as u64, info.numel());
        for (&i, w) in idx.iter().zip(&want) {
            let got = t.data[i as usize];
            assert!(
                got.to_bits() == w.to_bits(),
                "{} [{i}]: got {got:e}, gguf-py {w:e}",
                info.name
            );
        }
        types.insert(info.ggml_type().unwrap().name());
    }
    let types: Vec<&str> = types.into_iter().collect();
    assert_eq!(
        types,
        ["F32", "Q2_K", "Q3_K", "Q4_0", "Q4_1", "Q4_K", "Q5_0", "Q5_1", "Q5_K", "Q6_K", "Q8_0"]
    );
}

fn mixed_source() -> ModelSource {
    let src = ModelSource::open(fixtures().join(MIXED)).unwrap();
    assert_eq!(src.format(), SourceFormat::Gguf);
    let c = src.config();
    assert_eq!(
        (c.hidden_size, c.intermediate_size, c.num_hidden_layers),
        (256, 256, 2)
    );
    assert_eq!((c.num_attention_heads, c.num_key_value_heads), (4, 2));
    assert!(!c.tie_word_embeddings);
    src
}

/// Token ids for the load and train tests: deterministic, within the 320-token vocabulary.
fn ids(n: usize, seed: u32) -> Vec<u32> {
    (0..n as u32)
        .map(|i| (i.wrapping_mul(2654435761).wrapping_add(seed * 97) >> 7) % 320)
        .collect()
}

#[test]
fn mixed_gguf_loads_as_nf4_and_f32() {
    let Some(gpu) = gpu() else { return };
    let src = mixed_source();
    let (b, t) = (2, 12);
    let input = ids(b * t, 1);
    // The quantized vocabulary kept in f32, as the reference dequantizes it (by default a
    // quantized GGUF vocabulary is stored as f16: tests/model_forward.rs measures that).
    let opts = tinytune::model::LoadOptions {
        vocab_dtype: Some(tinytune::model::FloatDtype::F32),
        ..Default::default()
    };
    for (quant, nf4) in [(Quant::None, false), (Quant::NF4, true)] {
        let model = LlamaModel::load_with(gpu, &src, quant, &opts).unwrap();
        let got = pollster::block_on(model.logits(gpu, &input, b, t)).unwrap();
        let (d, w) = reference_model(&src, nf4);
        let want = llama::forward(&d, &w, None, &input, b, t);
        assert_close(
            &format!("{MIXED} ({quant:?}) logits vs reference"),
            &got,
            &want,
            1e-4,
            1e-4,
        );
    }
}

#[test]
fn mixed_gguf_trains() {
    let Some(gpu) = gpu() else { return };
    let src = mixed_source();
    let model = LlamaModel::load(gpu, &src, Quant::NF4).unwrap();
    let t = 16;
    let examples = (0..2)
        .map(|r| {
            let input_ids = ids(t, r + 7);
            let labels = input_ids.iter().map(|&x| x as i32).collect();
            Example {
                input_ids,
                labels,
                len: t,
            }
        })
        .collect();
    let data = Dataset {
        seq_len: t,
        examples,
        stats: DataStats::default(),
    };
    let config = TrainConfig {
        seq_len: t,
        batch_size: 2,
        stop: Stop::Steps(2),
        lr: 1e-2,
        schedule: ScheduleKind::Constant,
        max_grad_norm: 1.0,
        adamw: AdamWConfig::default(),
        ..TrainConfig::default()
    };
    let mut tr = Trainer::new(gpu, &model, config, data, Start::Fresh, Box::new(|| 0.0)).unwrap();
    let mut losses = Vec::new();
    while let Some(rec) = pollster::block_on(tr.step()).unwrap() {
        eprintln!(
            "{MIXED} step {}: loss {}, grad_norm {}",
            losses.len() + 1,
            rec.loss,
            rec.grad_norm
        );
        assert!(rec.loss.is_finite() && rec.grad_norm.is_finite());
        losses.push(rec.loss);
    }
    assert_eq!(losses.len(), 2);
    // Two AdamW steps on the same batch at lr 1e-2 lower its loss (6.00 -> 5.25 on lavapipe).
    assert!(losses[1] < losses[0], "loss did not fall: {losses:?}");
    // A fresh LoRA starts as the base model (B = 0): the first loss is the base model's.
    assert!(
        (losses[0] - (320f64).ln()).abs() < 2.0,
        "a random model's loss is near ln(vocab): {}",
        losses[0]
    );
}
