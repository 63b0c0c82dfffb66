//! Prefix tuning (PEFT `PREFIX_TUNING`): trainable per-layer key/value rows in front of every
//! sequence's attention. The reference decoder and the GPU model against PEFT
//! (`tests/fixtures/hf/*/prefix_tuning/`, from `gen_prefix_tuning_fixture.py`; GQA models).

mod common;

use std::collections::HashMap;

use common::hf::{fixture, read_tensors, reference_model};
use common::{assert_close, gpu};
use tinytune::model::{LlamaModel, ModelSource, PrefixGpu, Quant, Workspace};
use tinytune::reference::llama;

const MODELS: [&str; 2] = ["llama", "qwen2"];

/// Loss vs PEFT / the reference: |ours - want| <= LOSS_ATOL + LOSS_RTOL * |want|.
const LOSS_ATOL: f32 = 1e-6;
const LOSS_RTOL: f32 = 1e-5;
/// Prefix gradient vs PEFT's (torch CPU) and the reference.
const GRAD_ATOL: f32 = 1e-6;
const GRAD_RTOL: f32 = 1e-3;
/// Logits vs PEFT's.
const LOGITS_ATOL: f32 = 1e-4;
const LOGITS_RTOL: f32 = 1e-4;

type Tensors = HashMap<String, (Vec<usize>, Vec<f32>)>;

/// The fixture batch: `(ids, targets, b, t)` (targets shifted as transformers does).
fn batch(fx: &Tensors) -> (Vec<u32>, Vec<i32>, usize, usize) {
    let (shape, ids) = &fx["input_ids_i32"];
    let (b, t) = (shape[0], shape[1]);
    let ids: Vec<u32> = ids.iter().map(|&v| v as u32).collect();
    let labels: Vec<i32> = fx["labels_i32"].1.iter().map(|&v| v as i32).collect();
    (ids, llama::shift_labels(&labels, b, t), b, t)
}

#[test]
fn reference_prefix_tuning_matches_peft() {
    for name in MODELS {
        let src = ModelSource::open(fixture(&format!("{name}/model"))).unwrap();
        let (d, w) = reference_model(&src, false);
        let fx = read_tensors(&format!("{name}/prefix_tuning/plain.safetensors"));
        let (ids, targets, b, t) = batch(&fx);
        let (shape, prefix) = &fx["init.prefix"];
        assert_eq!(shape[1], d.layers * 2 * d.kv_heads * d.head_dim);
        assert_eq!(llama::prefix_len(&d, prefix), shape[0]);
        // PEFT's saved adapter holds the same prefix.
        let saved = read_tensors(&format!(
            "{name}/prefix_tuning/init/adapter_model.safetensors"
        ));
        assert_eq!(&saved["prompt_embeddings"].1, prefix);
        let logits = llama::prefix_forward(&d, &w, prefix, &ids, b, t);
        assert_close(
            &format!("{name} prefix logits"),
            &logits,
            &fx["logits_init"].1,
            LOGITS_ATOL,
            LOGITS_RTOL,
        );
        let (loss, grad) = llama::prefix_loss_and_grad(&d, &w, prefix, &ids, &targets, b, t);
        eprintln!("{name}: loss {loss} (peft {})", fx["loss"].1[0]);
        assert_close(
            &format!("{name} prefix-tuning loss"),
            &[loss],
            &fx["loss"].1[..1],
            LOSS_ATOL,
            LOSS_RTOL,
        );
        assert_close(
            &format!("{name} prefix gradient"),
            &grad,
            &fx["grad1.prefix"].1,
            GRAD_ATOL,
            GRAD_RTOL,
        );
    }
}

/// GPU prefix tuning (`LlamaModel::forward_backward_prefix`, `logits_prefix`): loss, prefix
/// gradient and logits against the reference (f32 and NF4 bases) and PEFT (f32), with a batch
/// smaller than the workspace's.
#[test]
fn gpu_prefix_tuning_matches_reference_and_peft() {
    let Some(gpu) = gpu() else { return };
    for name in MODELS {
        let src = ModelSource::open(fixture(&format!("{name}/model"))).unwrap();
        let fx = read_tensors(&format!("{name}/prefix_tuning/plain.safetensors"));
        let (ids, targets, b, t) = batch(&fx);
        let (shape, prefix) = &fx["init.prefix"];
        let p = shape[0];
        let n = targets.iter().filter(|&&x| x >= 0).count();
        for (quant, nf4) in [(Quant::None, false), (Quant::NF4, true)] {
            let model = LlamaModel::load(gpu, &src, quant).unwrap();
            let pg = PrefixGpu::upload(gpu, &model.config, prefix, p).unwrap();
            // Room for one more sequence and longer ones than the batch.
            let ws = Workspace::new(gpu, &model, None, (b + 1) * (t + 3), true)
                .unwrap()
                .with_prefix(gpu, &pg, b + 1)
                .unwrap();
            let mut enc = gpu.encoder();
            pg.zero_grad(&mut enc);
            enc.submit();
            model
                .forward_backward_prefix(gpu, &ws, &pg, &ids, &targets, b, t, 1.0 / n as f32)
                .unwrap();
            let loss = (pollster::block_on(ws.loss_sum(gpu, b * t)).unwrap() / n as f64) as f32;
            let grad = pollster::block_on(pg.download_grad(gpu)).unwrap();
            let logits = pollster::block_on(model.logits_prefix(gpu, &pg, &ids, b, t)).unwrap();
            let (d, w) = reference_model(&src, nf4);
            let (want_loss, want) =
                llama::prefix_loss_and_grad(&d, &w, prefix, &ids, &targets, b, t);
            let want_logits = llama::prefix_forward(&d, &w, prefix, &ids, b, t);
            let what = format!("{name} nf4={nf4}");
            eprintln!("{what}: loss gpu {loss} ref {want_loss}");
            assert_close(
                &format!("{what} loss"),
                &[loss],
                &[want_loss],
                LOSS_ATOL,
                LOSS_RTOL,
            );
            assert_close(&format!("{what} grad"), &grad, &want, GRAD_ATOL, GRAD_RTOL);
            assert_close(
                &format!("{what} logits"),
                &logits,
                &want_logits,
                LOGITS_ATOL,
                LOGITS_RTOL,
            );
            if !nf4 {
                assert_close(
                    &format!("{what} loss vs PEFT"),
                    &[loss],
                    &fx["loss"].1[..1],
                    LOSS_ATOL,
                    LOSS_RTOL,
                );
                assert_close(
                    &format!("{what} grad vs PEFT"),
                    &grad,
                    &fx["grad1.prefix"].1,
                    GRAD_ATOL,
                    GRAD_RTOL,
                );
            }
            // Without prefix buffers the pass is refused, not run wrong.
            let plain = Workspace::new(gpu, &model, None, b * t, true).unwrap();
            assert!(model
                .forward_backward_prefix(gpu, &plain, &pg, &ids, &targets, b, t, 1.0)
                .is_err());
        }
    }
}
