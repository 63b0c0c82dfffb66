//! The benchmark's real configs without files: every preset builds, a model of a preset's kind
//! (shrunk: few layers, narrow, small vocabulary) loads from random weights, and a training step
//! on it is counted by the runtime's counters (`Gpu::counters`).

mod common;

use common::gpu;
use tinytune::gpu::{Gpu, GpuOptions};
use tinytune::model::{
    LlamaConfig, LlamaModel, Lora, LoraGpu, LoraPair, ModelSource, Peft, Quant, Workspace,
};

/// `name`'s preset with its kind kept (model type, biases, tied embeddings, RoPE scaling) and its
/// sizes shrunk so a test loads it in a moment.
fn shrunk(name: &str) -> LlamaConfig {
    let mut c = LlamaConfig::preset(name).unwrap();
    c.hidden_size = 64;
    c.intermediate_size = 96;
    c.num_hidden_layers = 2;
    c.num_attention_heads = 4;
    c.num_key_value_heads = 2;
    c.head_dim = 16;
    c.vocab_size = 300;
    c.bos_token_id = None;
    c.eos_token_id = None;
    c.pad_token_id = None;
    c.validate().unwrap();
    c
}

#[test]
fn presets_build_and_shrunk_presets_load() {
    for name in LlamaConfig::PRESETS {
        let c = LlamaConfig::preset(name).unwrap();
        // The big ones build a random source without allocating their weights.
        let src = ModelSource::random(&c, 1).unwrap();
        assert_eq!(src.tensors().len(), c.tensor_specs().len(), "{name}");
    }
    let Some(gpu) = gpu() else { return };
    for name in ["qwen2.5-0.5b", "llama3.2-1b"] {
        let cfg = shrunk(name);
        let src = ModelSource::random(&cfg, 3).unwrap();
        for quant in [Quant::NF4, Quant::None] {
            let model = LlamaModel::load(gpu, &src, quant).unwrap();
            assert_eq!(model.layers.len(), 2);
            assert_eq!(
                model.layers[0].linears[0].bias.is_some(),
                cfg.has_qkv_bias(),
                "{name}"
            );
            let (b, t) = (2, 8);
            let ids: Vec<u32> = (0..b * t).map(|i| (i * 37 % 300) as u32).collect();
            let targets: Vec<i32> = (0..b * t).map(|i| (i * 11 % 300) as i32).collect();
            let ws = Workspace::new(gpu, &model, None, b * t, true).unwrap();
            model
                .forward_loss(gpu, &ws, None, &ids, &targets, b, t)
                .unwrap();
            let loss = pollster::block_on(ws.loss_sum(gpu, b * t)).unwrap() / (b * t) as f64;
            // Random weights of std 0.02: the logits are near zero, the loss near ln V.
            let ln_v = 300f64.ln();
            assert!((loss - ln_v).abs() < 0.5, "{name} {quant:?}: loss {loss}");
        }
    }
}

#[test]
fn a_training_step_is_counted() {
    if gpu().is_none() {
        return;
    }
    // A device of its own: the tests of this binary run in parallel on the shared one.
    let own = Gpu::new_blocking(GpuOptions::default()).unwrap();
    let gpu = &own;
    let cfg = shrunk("smollm2-135m");
    let src = ModelSource::random(&cfg, 5).unwrap();
    let model = LlamaModel::load(gpu, &src, Quant::NF4).unwrap();
    let r = 4;
    let lora = Lora {
        r,
        scale: 2.0,
        layers: model
            .layers
            .iter()
            .map(|l| {
                std::array::from_fn(|t| {
                    let lin = &l.linears[t];
                    Some(LoraPair::new(
                        r,
                        vec![0.01; r * lin.n_in],
                        vec![0.0; lin.n_out * r],
                    ))
                })
            })
            .collect(),
    };
    let lora = LoraGpu::upload(gpu, &model, &lora).unwrap();
    let (b, t) = (1, 8);
    let ws = Workspace::new(gpu, &model, Some(&lora), b * t, true).unwrap();
    let ids: Vec<u32> = (0..8).collect();
    let targets: Vec<i32> = (1..9).collect();
    let before = gpu.counters();
    model
        .forward_backward(gpu, &ws, Peft::Lora(&lora), &ids, &targets, b, t, 1.0, None)
        .unwrap();
    let step = gpu.counters().delta(&before);
    assert_eq!(step.submits, 1, "one pass, one submission: {step:?}");
    assert!(step.dispatches > 10 * model.layers.len() as u64, "{step:?}");
    assert!(step.bind_groups_created <= step.dispatches, "{step:?}");
    assert!(step.params_bytes >= 4 * step.dispatches, "{step:?}");
    assert_eq!(
        step.blocking_reads, 0,
        "a step records and submits, it never waits"
    );
    // The same pass again reuses every bind group (cached with their buffers; the launchers'
    // temporaries, such as attention's delta, are the same scratch buffers every time).
    let before = gpu.counters();
    model
        .forward_backward(gpu, &ws, Peft::Lora(&lora), &ids, &targets, b, t, 1.0, None)
        .unwrap();
    let again = gpu.counters().delta(&before);
    assert_eq!(again.dispatches, step.dispatches, "{again:?}");
    assert_eq!(again.bind_groups_created, 0, "{again:?}");
    // A read is one blocking read and one submit.
    let before = gpu.counters();
    gpu.read_blocking::<f32>(&ws.loss_rows).unwrap();
    let read = gpu.counters().delta(&before);
    assert_eq!((read.blocking_reads, read.submits), (1, 1), "{read:?}");
    assert_eq!(read.dispatches, 0);
}
