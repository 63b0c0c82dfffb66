//! A bitsandbytes 4-bit folder as the frozen base: `tests/fixtures/hf/llama/nf4/model`, saved by
//! transformers 5.24 + bitsandbytes 0.50.2 (NF4, double quantization, block 64; see
//! `tests/fixtures/hf/README.md`), loads with its codes used as they are: every weight on the
//! device reads back as the file's bytes, and the logits match transformers' on the same codes
//! (`base_logits` of `nf4/lora_train.safetensors`).

mod common;

use common::hf::{fixture, read_tensors};
use common::{assert_close, gpu};
use tinytune::gpu::ops::nf4::Absmax;
use tinytune::model::targets::linear_path;
use tinytune::model::{LlamaModel, ModelSource, Quant, Weight};

/// transformers computes the same f32 dequantization and matmuls on the CPU; the model tests'
/// logits tolerance.
const LOGITS_ATOL: f32 = 1e-4;
const LOGITS_RTOL: f32 = 1e-4;

fn f32s(b: &[u8]) -> Vec<u32> {
    b.chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

#[test]
fn bnb_checkpoint_codes_load_bit_exactly() {
    let Some(gpu) = gpu() else { return };
    let dir = fixture("llama/nf4/model");
    let src = ModelSource::open(&dir).unwrap();
    assert!(src.is_prequantized());
    let model = LlamaModel::load(gpu, &src, Quant::NF4).unwrap();
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let raw = |n: &str| st.tensor(n).unwrap().data().to_vec();
    let mut checked = 0;
    for (i, layer) in model.layers.iter().enumerate() {
        for (t, lin) in layer.linears.iter().enumerate() {
            let name = format!("{}.weight", linear_path(i, t));
            let Weight::Nf4(w) = &lin.weight else {
                panic!("{name} is not NF4 on the device")
            };
            let host = pollster::block_on(w.to_host(gpu)).unwrap();
            assert_eq!(host.block, 64, "{name}");
            assert_eq!(host.packed, raw(&name), "{name}: codes");
            let Absmax::Double(d) = &host.absmax else {
                panic!("{name}: not double-quantized")
            };
            assert_eq!(
                d.codes,
                raw(&format!("{name}.absmax")),
                "{name}: absmax codes"
            );
            assert_eq!(
                d.nested_absmax
                    .iter()
                    .map(|v| v.to_bits())
                    .collect::<Vec<_>>(),
                f32s(&raw(&format!("{name}.nested_absmax"))),
                "{name}: nested absmax"
            );
            let qs: serde_json::Value =
                serde_json::from_slice(&raw(&format!("{name}.quant_state.bitsandbytes__nf4")))
                    .unwrap();
            let offset = qs["nested_offset"].as_f64().unwrap() as f32;
            assert_eq!(d.offset.to_bits(), offset.to_bits(), "{name}: offset");
            checked += 1;
        }
    }
    assert_eq!(checked, 14);
}

#[test]
fn bnb_checkpoint_logits_match_transformers() {
    let Some(gpu) = gpu() else { return };
    let src = ModelSource::open(fixture("llama/nf4/model")).unwrap();
    let model = LlamaModel::load(gpu, &src, Quant::NF4).unwrap();
    let t = read_tensors("llama/nf4/lora_train.safetensors");
    let (shape, ids) = &t["input_ids_i32"];
    let ids: Vec<u32> = ids.iter().map(|&v| v as u32).collect();
    let got = pollster::block_on(model.logits(gpu, &ids, shape[0], shape[1])).unwrap();
    let want = &t["base_logits"].1;
    assert_close(
        "bnb folder NF4 logits vs transformers + bitsandbytes",
        &got,
        want,
        LOGITS_ATOL,
        LOGITS_RTOL,
    );
    // --quant none dequantizes the same codes: the same logits up to the matmul's order.
    let f32_model = LlamaModel::load(gpu, &src, Quant::None).unwrap();
    let got32 = pollster::block_on(f32_model.logits(gpu, &ids, shape[0], shape[1])).unwrap();
    assert_close(
        "bnb folder dequantized to f32 vs transformers + bitsandbytes",
        &got32,
        want,
        LOGITS_ATOL,
        LOGITS_RTOL,
    );
}

#[test]
fn bnb_checkpoint_dequantizes_on_the_host_like_the_device() {
    let Some(gpu) = gpu() else { return };
    // What merge and the host readers get: the same values the GPU dequantizes to.
    let src = ModelSource::open(fixture("llama/nf4/model")).unwrap();
    let model = LlamaModel::load(gpu, &src, Quant::None).unwrap();
    for (i, layer) in model.layers.iter().enumerate() {
        for (t, lin) in layer.linears.iter().enumerate() {
            let name = format!("{}.weight", linear_path(i, t));
            let Weight::F32(b) = &lin.weight else {
                panic!("{name} is not f32")
            };
            let dev = pollster::block_on(gpu.read::<f32>(b)).unwrap();
            let host = src.load(&name).unwrap().data;
            assert_close(&name, &host, &dev, 1e-7, 1e-6);
        }
    }
}
