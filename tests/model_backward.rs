//! The GPU model's LoRA backward pass (`LlamaModel::forward_backward`): loss and every LoRA gradient
//! against the reference decoder (f32 and NF4 bases) and against PEFT's step-1 gradients
//! (`tests/fixtures/hf/*/lora_train.safetensors`), on the tiny Llama, tied Llama-3 and Qwen2 models.

mod common;

use common::hf::{fixture, model_lora, read_tensors, reference_lora, reference_model};
use common::{assert_close, gpu};
use tinytune::model::llama::LoraDropout;
use tinytune::model::Lora;
use tinytune::model::{LlamaModel, LoraGpu, ModelSource, Peft, Quant, Workspace};
use tinytune::reference::llama;
use tinytune::train::{LoraAdapter, LoraWeights};

const MODELS: [&str; 3] = ["llama", "llama_tied_llama3", "qwen2"];

/// Loss vs the reference: |gpu - ref| <= LOSS_ATOL + LOSS_RTOL * |ref|.
const LOSS_ATOL: f32 = 1e-5;
const LOSS_RTOL: f32 = 1e-5;
/// LoRA gradients vs the reference (f32 sums in a different order over a chain of ~30 kernels).
const GRAD_ATOL: f32 = 1e-5;
const GRAD_RTOL: f32 = 1e-3;
/// LoRA gradients vs PEFT's (torch CPU).
const PEFT_GRAD_ATOL: f32 = 2e-5;
const PEFT_GRAD_RTOL: f32 = 2e-3;

struct Batch {
    ids: Vec<u32>,
    targets: Vec<i32>,
    b: usize,
    t: usize,
}

fn batch(name: &str) -> Batch {
    let tr = read_tensors(&format!("{name}/lora_train.safetensors"));
    let (shape, ids) = &tr["input_ids_i32"];
    let (b, t) = (shape[0], shape[1]);
    let labels: Vec<i32> = tr["labels_i32"].1.iter().map(|&v| v as i32).collect();
    Batch {
        ids: ids.iter().map(|&v| v as u32).collect(),
        targets: tinytune::train::shift_labels(&labels, b, t),
        b,
        t,
    }
}

fn init_adapter(name: &str, n_layers: usize) -> Lora {
    let ad = LoraAdapter::load(&fixture(&format!("{name}/lora_init"))).unwrap();
    ad.weights
        .to_layers(n_layers, ad.config.scale() as f32)
        .unwrap()
}

fn flat_pairs(l: &Lora) -> Vec<(String, Vec<f32>)> {
    let mut out = Vec::new();
    for (i, layer) in l.layers.iter().enumerate() {
        for (t, p) in layer.iter().enumerate() {
            if let Some(p) = p {
                out.push((
                    format!("layers.{i}.{}.lora_A", llama::TARGETS[t]),
                    p.a.clone(),
                ));
                out.push((
                    format!("layers.{i}.{}.lora_B", llama::TARGETS[t]),
                    p.b.clone(),
                ));
            }
        }
    }
    out
}

/// GPU loss and gradients of one batch, with the LM head done in chunks of `head_rows` rows.
fn gpu_loss_and_grads(
    model: &LlamaModel,
    lora: &Lora,
    bt: &Batch,
    head_rows: usize,
    dropout: Option<LoraDropout>,
) -> (f32, Lora) {
    let gpu = gpu().unwrap();
    let lg = LoraGpu::upload(gpu, model, lora).unwrap();
    let m = bt.b * bt.t;
    let ws = Workspace::with_head_chunk(gpu, model, Some(&lg), m, true, head_rows).unwrap();
    let n = bt
        .targets
        .iter()
        .filter(|&&t| t >= 0 && (t as usize) < model.config.vocab_size)
        .count();
    let mut enc = gpu.encoder();
    lg.zero_grads(&mut enc);
    enc.submit();
    model
        .forward_backward(
            gpu,
            &ws,
            Peft::Lora(&lg),
            &bt.ids,
            &bt.targets,
            bt.b,
            bt.t,
            1.0 / n as f32,
            dropout,
        )
        .unwrap();
    let loss = pollster::block_on(ws.loss_sum(gpu, m)).unwrap() / n as f64;
    let grads = pollster::block_on(lg.download_grads(gpu)).unwrap();
    (loss as f32, grads)
}

#[test]
fn forward_backward_matches_reference() {
    let Some(gpu) = gpu() else { return };
    for name in MODELS {
        let src = ModelSource::open(fixture(&format!("{name}/model"))).unwrap();
        let bt = batch(name);
        for (quant, nf4) in [(Quant::None, false), (Quant::NF4, true)] {
            let model = LlamaModel::load(gpu, &src, quant).unwrap();
            let lora = init_adapter(name, model.layers.len());
            let (d, w) = reference_model(&src, nf4);
            // Whole head at once, and in chunks of 3 rows (partial last chunk); with LoRA dropout.
            let drop = Some(LoraDropout { p: 0.25, seed: 9 });
            for (head_rows, drop) in [(bt.b * bt.t, None), (3, None), (bt.b * bt.t, drop)] {
                let (want_loss, want) = llama::loss_and_grads_with(
                    &d,
                    &w,
                    &reference_lora(&lora),
                    &bt.ids,
                    &bt.targets,
                    bt.b,
                    bt.t,
                    drop.map(|d| llama::LoraDropout {
                        p: d.p,
                        seed: d.seed,
                    }),
                );
                let want = model_lora(&want);
                let (loss, got) = gpu_loss_and_grads(&model, &lora, &bt, head_rows, drop);
                let what = format!("{name} nf4={nf4} head_rows={head_rows} dropout={drop:?}");
                eprintln!("{what}: loss gpu {loss} ref {want_loss}");
                assert_close(
                    &format!("{what} loss"),
                    &[loss],
                    &[want_loss],
                    LOSS_ATOL,
                    LOSS_RTOL,
                );
                for ((k, g), (_, r)) in flat_pairs(&got).iter().zip(flat_pairs(&want)) {
                    assert_close(&format!("{what} grad {k}"), g, &r, GRAD_ATOL, GRAD_RTOL);
                }
            }
        }
    }
}

#[test]
fn forward_backward_matches_peft_step1_gradients() {
    let Some(gpu) = gpu() else { return };
    for name in MODELS {
        let src = ModelSource::open(fixture(&format!("{name}/model"))).unwrap();
        let model = LlamaModel::load(gpu, &src, Quant::None).unwrap();
        let bt = batch(name);
        let lora = init_adapter(name, model.layers.len());
        let (loss, got) = gpu_loss_and_grads(&model, &lora, &bt, bt.b * bt.t, None);
        let tr = read_tensors(&format!("{name}/lora_train.safetensors"));
        assert_close(
            &format!("{name} loss vs PEFT"),
            &[loss],
            &tr["loss"].1[..1],
            1e-5,
            1e-4,
        );
        let got = LoraWeights::from_layers(&got);
        let mut checked = 0;
        for (key, p) in &got.pairs {
            for (which, g) in [('A', &p.a), ('B', &p.b)] {
                let want = &tr[&format!("grad1.{}", key.tensor_name(which))].1;
                assert_close(
                    &format!("{name} grad {}", key.tensor_name(which)),
                    g,
                    want,
                    PEFT_GRAD_ATOL,
                    PEFT_GRAD_RTOL,
                );
                checked += 1;
            }
        }
        assert_eq!(checked, 28, "{name}: every LoRA tensor compared");
    }
}

/// Vocab-chunked embedding / LM head: the same loss and LoRA gradients as whole tables.
#[test]
fn forward_backward_with_vocab_chunks_matches_whole() {
    let Some(gpu) = gpu() else { return };
    for name in MODELS {
        let src = ModelSource::open(fixture(&format!("{name}/model"))).unwrap();
        let bt = batch(name);
        let whole = LlamaModel::load(gpu, &src, Quant::None).unwrap();
        let opts = tinytune::model::LoadOptions {
            vocab_chunk_rows: Some(64),
            ..Default::default()
        };
        let chunked = LlamaModel::load_with(gpu, &src, Quant::None, &opts).unwrap();
        let lora = init_adapter(name, whole.layers.len());
        let (wl, wg) = gpu_loss_and_grads(&whole, &lora, &bt, bt.b * bt.t, None);
        let (cl, cg) = gpu_loss_and_grads(&chunked, &lora, &bt, bt.b * bt.t, None);
        assert_eq!(wl, cl, "{name}: loss");
        for ((k, g), (_, r)) in flat_pairs(&cg).iter().zip(flat_pairs(&wg)) {
            // dh sums the chunks' shares in another order: f32 rounding only, which the backward
            // carries into every gradient at the scale of its largest elements (a small element
            // that is a sum of larger terms keeps that absolute error).
            let big = r.iter().fold(0f32, |a, x| a.max(x.abs()));
            assert_close(&format!("{name} chunked grad {k}"), g, &r, 1e-5 * big, 1e-5);
        }
    }
}

/// Gradient checkpointing (activations recomputed per layer in the backward pass) gives the very
/// same loss and gradients, with and without LoRA dropout.
#[test]
fn gradient_checkpointing_matches_stored_activations() {
    let Some(gpu) = gpu() else { return };
    for name in MODELS {
        let src = ModelSource::open(fixture(&format!("{name}/model"))).unwrap();
        let bt = batch(name);
        let model = LlamaModel::load(gpu, &src, Quant::NF4).unwrap();
        let lora = init_adapter(name, model.layers.len());
        let lg = LoraGpu::upload(gpu, &model, &lora).unwrap();
        let m = bt.b * bt.t;
        for drop in [None, Some(LoraDropout { p: 0.2, seed: 3 })] {
            let mut results = Vec::new();
            for ws in [
                Workspace::new(gpu, &model, Some(&lg), m, true).unwrap(),
                Workspace::checkpointed(gpu, &model, Some(&lg), m).unwrap(),
            ] {
                let mut enc = gpu.encoder();
                lg.zero_grads(&mut enc);
                enc.submit();
                model
                    .forward_backward(
                        gpu,
                        &ws,
                        Peft::Lora(&lg),
                        &bt.ids,
                        &bt.targets,
                        bt.b,
                        bt.t,
                        0.1,
                        drop,
                    )
                    .unwrap();
                let loss = pollster::block_on(ws.loss_sum(gpu, m)).unwrap();
                let grads = pollster::block_on(lg.download_grads(gpu)).unwrap();
                results.push((loss, grads));
            }
            assert_eq!(results[0].0, results[1].0, "{name} {drop:?}: loss");
            assert_eq!(results[0].1, results[1].1, "{name} {drop:?}: gradients");
        }
    }
}

/// LoRA only on the top layers of a deeper model (5 layers, adapters on 3 and 4): the layers
/// below the lowest adapter share one activation set in the workspace; loss and gradients still
/// equal the reference's.
#[test]
fn top_layer_adapters_match_reference() {
    let Some(gpu) = gpu() else { return };
    let name = "llama";
    let tmp = std::env::temp_dir().join(format!("tinytune-deep-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    // A 5-layer model made of the fixture's two layers, alternating.
    let dir = fixture(&format!("{name}/model"));
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    let layers = 5;
    cfg["num_hidden_layers"] = layers.into();
    std::fs::write(tmp.join("config.json"), cfg.to_string()).unwrap();
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, safetensors::tensor::TensorView)> = Vec::new();
    for (n, view) in st.tensors() {
        match n.strip_prefix("model.layers.") {
            Some(rest) => {
                let (l, tail) = rest.split_once('.').unwrap();
                let l: usize = l.parse().unwrap();
                for i in (0..layers).filter(|i| i % 2 == l) {
                    tensors.push((format!("model.layers.{i}.{tail}"), view.clone()));
                }
            }
            None => tensors.push((n.to_string(), view)),
        }
    }
    let out = safetensors::serialize(tensors, None).unwrap();
    std::fs::write(tmp.join("model.safetensors"), out).unwrap();

    let src = ModelSource::open(&tmp).unwrap();
    let model = LlamaModel::load(gpu, &src, Quant::None).unwrap();
    let (d, w) = reference_model(&src, false);
    let init = init_adapter(name, 2);
    let mut lora = Lora {
        r: init.r,
        scale: init.scale,
        layers: (0..layers).map(|_| Default::default()).collect(),
    };
    lora.layers[3] = init.layers[1].clone();
    lora.layers[4] = init.layers[0].clone();
    let bt = batch(name);
    let (want_loss, want) = llama::loss_and_grads(
        &d,
        &w,
        &reference_lora(&lora),
        &bt.ids,
        &bt.targets,
        bt.b,
        bt.t,
    );
    let want = model_lora(&want);
    let (loss, got) = gpu_loss_and_grads(&model, &lora, &bt, bt.b * bt.t, None);
    std::fs::remove_dir_all(&tmp).ok();
    assert_close(
        "top-layer adapters loss",
        &[loss],
        &[want_loss],
        LOSS_ATOL,
        LOSS_RTOL,
    );
    let (g, r) = (flat_pairs(&got), flat_pairs(&want));
    assert_eq!(g.len(), 28);
    for ((k, g), (_, r)) in g.iter().zip(r) {
        assert_close(&format!("top-layer grad {k}"), g, &r, GRAD_ATOL, GRAD_RTOL);
    }
}

/// A 16-bit vocabulary (embedding and LM head stored bf16 or f16 on the device, as the
/// checkpoint has them) gives bit for bit the loss and LoRA gradients of its f32 copy
/// (`LoadOptions::vocab_dtype = F32`): the kernels widen every element exactly. Whole and chunked
/// tables, tied and untied heads; the tables take half the bytes.
#[test]
fn sixteen_bit_vocabulary_matches_its_f32_copy_exactly() {
    use tinytune::model::{FloatDtype, LoadOptions};
    let Some(gpu) = gpu() else { return };
    for (name, dtype) in [
        ("llama", FloatDtype::BF16),
        ("llama_tied_llama3", FloatDtype::BF16),
        ("qwen2", FloatDtype::F16),
    ] {
        let src = common::hf::with_vocab_dtype(&format!("{name}/model"), dtype);
        let bt = batch(name);
        for chunk in [None, Some(64)] {
            let half = LoadOptions {
                vocab_chunk_rows: chunk,
                ..Default::default()
            };
            let full = LoadOptions {
                vocab_chunk_rows: chunk,
                vocab_dtype: Some(FloatDtype::F32),
                ..Default::default()
            };
            let m16 = LlamaModel::load_with(gpu, &src, Quant::None, &half).unwrap();
            let m32 = LlamaModel::load_with(gpu, &src, Quant::None, &full).unwrap();
            assert_eq!(m16.embed.dtype, dtype);
            assert_eq!(m32.embed.dtype, FloatDtype::F32);
            let (mem16, mem32) = (m16.memory(), m32.memory());
            assert_eq!(mem16.linears, mem32.linears);
            assert_eq!(mem16.other, mem32.other);
            let vocab = |m: &tinytune::model::ModelMemory| m.embed.0 + m.lm_head.map_or(0, |h| h.0);
            assert!(
                2 * vocab(&mem16) <= vocab(&mem32) + 8,
                "{name}: {mem16} vs {mem32}"
            );
            let (ids, b, t) = (&bt.ids, bt.b, bt.t);
            let l16 = pollster::block_on(m16.logits(gpu, ids, b, t)).unwrap();
            let l32 = pollster::block_on(m32.logits(gpu, ids, b, t)).unwrap();
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                bits(&l16),
                bits(&l32),
                "{name} {dtype:?} chunk {chunk:?}: logits"
            );
            let lora = init_adapter(name, m16.layers.len());
            let (loss16, g16) = gpu_loss_and_grads(&m16, &lora, &bt, bt.b * bt.t, None);
            let (loss32, g32) = gpu_loss_and_grads(&m32, &lora, &bt, bt.b * bt.t, None);
            assert_eq!(loss16.to_bits(), loss32.to_bits(), "{name}: loss");
            for ((k, a), (_, r)) in flat_pairs(&g16).iter().zip(flat_pairs(&g32)) {
                assert_eq!(
                    bits(a),
                    bits(&r),
                    "{name} {dtype:?} chunk {chunk:?}: grad {k}"
                );
            }
        }
    }
}
