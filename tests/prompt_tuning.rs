//! Prompt tuning (PEFT `PROMPT_TUNING`): trainable virtual token embeddings prepended to every
//! sequence. The reference decoder's loss and prompt gradient against PEFT's
//! (`tests/fixtures/hf/*/prompt_tuning/`, from `gen_prompt_tuning_fixture.py`).

mod common;

use common::hf::{fixture, fixture_dataset, peft_recipe, read_tensors, reference_model};
use common::{assert_close, gpu};
use tinytune::model::{LlamaModel, ModelSource, Peft, PromptGpu, Quant, Workspace};
use tinytune::reference::llama;
use tinytune::train::{prompt_targets, PeftAdapter, PeftMethod};

const MODELS: [&str; 2] = ["llama", "qwen2"];

/// Loss vs PEFT: |ours - peft| <= LOSS_ATOL + LOSS_RTOL * |peft|.
const LOSS_ATOL: f32 = 1e-6;
const LOSS_RTOL: f32 = 1e-5;
/// Prompt gradient vs PEFT's (torch CPU).
const GRAD_ATOL: f32 = 1e-6;
const GRAD_RTOL: f32 = 1e-3;

#[test]
fn reference_prompt_tuning_matches_peft() {
    for name in MODELS {
        let src = ModelSource::open(fixture(&format!("{name}/model"))).unwrap();
        let (d, w) = reference_model(&src, false);
        let fx = read_tensors(&format!("{name}/prompt_tuning/prompt_tuning.safetensors"));
        let (shape, ids) = &fx["input_ids_i32"];
        let (b, t) = (shape[0], shape[1]);
        let ids: Vec<u32> = ids.iter().map(|&v| v as u32).collect();
        let labels: Vec<i32> = fx["labels_i32"].1.iter().map(|&v| v as i32).collect();
        let prompt = &fx["init"].1;
        let p = fx["init"].0[0];
        // The saved adapter holds the same initial prompt.
        let saved = read_tensors(&format!(
            "{name}/prompt_tuning/init/adapter_model.safetensors"
        ));
        assert_eq!(&saved["prompt_embeddings"].1, prompt);
        // Logits of [prompt; embed(ids)].
        let x0 = llama::prompt_inputs(&d, &w, prompt, &ids, b, t);
        assert_eq!(x0.len(), b * (p + t) * d.hidden);
        let targets = prompt_targets(&labels, b, t, p);
        let (loss, grad) = llama::prompt_loss_and_grad(&d, &w, prompt, &ids, &targets, b, t);
        eprintln!("{name}: loss {loss} (peft {})", fx["loss"].1[0]);
        assert_close(
            &format!("{name} prompt-tuning loss"),
            &[loss],
            &fx["loss"].1[..1],
            LOSS_ATOL,
            LOSS_RTOL,
        );
        assert_close(
            &format!("{name} prompt gradient"),
            &grad,
            &fx["grad1"].1,
            GRAD_ATOL,
            GRAD_RTOL,
        );
    }
}

/// GPU prompt tuning (`LlamaModel::forward_backward` with `Peft::Prompt`): loss and prompt gradient against the
/// reference (f32 and NF4 bases) and against PEFT's (f32).
#[test]
fn gpu_prompt_tuning_matches_reference_and_peft() {
    let Some(gpu) = gpu() else { return };
    for name in MODELS {
        let src = ModelSource::open(fixture(&format!("{name}/model"))).unwrap();
        let fx = read_tensors(&format!("{name}/prompt_tuning/prompt_tuning.safetensors"));
        let (shape, ids) = &fx["input_ids_i32"];
        let (b, t) = (shape[0], shape[1]);
        let ids: Vec<u32> = ids.iter().map(|&v| v as u32).collect();
        let labels: Vec<i32> = fx["labels_i32"].1.iter().map(|&v| v as i32).collect();
        let prompt = &fx["init"].1;
        let p = fx["init"].0[0];
        let targets = prompt_targets(&labels, b, t, p);
        let n = targets.iter().filter(|&&x| x >= 0).count();
        for (quant, nf4) in [(Quant::None, false), (Quant::NF4, true)] {
            let model = LlamaModel::load(gpu, &src, quant).unwrap();
            let c = model.config.hidden_size;
            let pg = PromptGpu::upload(gpu, prompt, p, c).unwrap();
            let ws = Workspace::new(gpu, &model, None, b * (p + t), true).unwrap();
            let mut enc = gpu.encoder();
            pg.zero_grad(&mut enc);
            enc.submit();
            let rows = model
                .forward_backward(
                    gpu,
                    &ws,
                    Peft::Prompt(&pg),
                    &ids,
                    &targets,
                    b,
                    t,
                    1.0 / n as f32,
                    None,
                )
                .unwrap();
            assert_eq!(rows, b * (p + t));
            let loss =
                (pollster::block_on(ws.loss_sum(gpu, b * (p + t))).unwrap() / n as f64) as f32;
            let grad = pollster::block_on(pg.download_grad(gpu)).unwrap();
            let (d, w) = reference_model(&src, nf4);
            let (want_loss, want) =
                llama::prompt_loss_and_grad(&d, &w, prompt, &ids, &targets, b, t);
            let what = format!("{name} nf4={nf4}");
            eprintln!("{what}: loss gpu {loss} ref {want_loss}");
            assert_close(
                &format!("{what} loss"),
                &[loss],
                &[want_loss],
                LOSS_ATOL,
                LOSS_RTOL,
            );
            assert_close(
                &format!("{what} prompt grad"),
                &grad,
                &want,
                GRAD_ATOL,
                GRAD_RTOL,
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
                    &fx["grad1"].1,
                    GRAD_ATOL,
                    GRAD_RTOL,
                );
            }
        }
    }
}

/// PEFT's saved prompt-tuning adapter reads back as its embeddings, and tinytune writes the very same
/// two files; bad configs are errors naming the file.
#[test]
fn prompt_adapter_files_round_trip_with_peft() {
    use tinytune::train::{PromptAdapter, TrainError};
    for name in MODELS {
        let dir = fixture(&format!("{name}/prompt_tuning/init"));
        let ad = PromptAdapter::load(&dir).unwrap();
        let fx = read_tensors(&format!("{name}/prompt_tuning/prompt_tuning.safetensors"));
        assert_eq!(ad.embeddings, fx["init"].1);
        assert_eq!(ad.config.num_virtual_tokens, 4);
        assert_eq!(ad.config.token_dim, 64);
        for (file, bytes) in ad.to_files().unwrap() {
            let want = std::fs::read(dir.join(&file)).unwrap();
            assert!(bytes == want, "{name}: {file} differs from PEFT's");
        }
        // A LoRA config is not a prompt-tuning adapter.
        let lora = fixture(&format!("{name}/lora_init"));
        let cfg = std::fs::read(lora.join("adapter_config.json")).unwrap();
        let st = std::fs::read(dir.join("adapter_model.safetensors")).unwrap();
        match PromptAdapter::from_bytes(&cfg, &st, "x") {
            Err(TrainError::Adapter { file, msg }) => {
                assert!(file.ends_with("adapter_config.json") && msg.contains("PROMPT_TUNING"));
            }
            other => panic!("expected an adapter error, got {other:?}"),
        }
    }
}

/// The trainer on prompt tuning: 3 AdamW steps (lr 1e-2, wd 0.01, clip 1.0, constant) from PEFT's
/// initial prompt on the fixture batch give PEFT's losses, gradient norms and embeddings.
#[test]
fn prompt_tuning_three_steps_match_peft() {
    use tinytune::train::{PromptAdapter, PromptStart, Start, Trainer};
    let Some(gpu) = gpu() else { return };
    for name in MODELS {
        let src = ModelSource::open(fixture(&format!("{name}/model"))).unwrap();
        let model = LlamaModel::load(gpu, &src, Quant::None).unwrap();
        let rel = format!("{name}/prompt_tuning/prompt_tuning.safetensors");
        let fx = read_tensors(&rel);
        let data = fixture_dataset(&rel);
        let cfg = peft_recipe(3, data.examples.len());
        let init = PromptAdapter::load(&fixture(&format!("{name}/prompt_tuning/init"))).unwrap();
        let start = Start::Prompt(PromptStart::Adapter(init));
        let mut tr = Trainer::new(gpu, &model, cfg, data, start, Box::new(|| 0.0)).unwrap();
        assert!(tr.method() == PeftMethod::PromptTuning && tr.n_params() == 4 * 64);
        for k in 1..=3usize {
            let rec = pollster::block_on(tr.step()).unwrap().expect("a step");
            let what = format!("{name} prompt step {k}");
            assert_close(
                &format!("{what} loss"),
                &[rec.loss as f32],
                &fx["loss"].1[k - 1..k],
                LOSS_ATOL,
                LOSS_RTOL,
            );
            assert_close(
                &format!("{what} grad_norm"),
                &[rec.grad_norm as f32],
                &fx["grad_norm"].1[k - 1..k],
                0.0,
                1e-4,
            );
            let PeftAdapter::Prompt(ad) = pollster::block_on(tr.peft_adapter()).unwrap() else {
                panic!("{what}: a prompt-tuning run saves a prompt (not LoRA)")
            };
            let emb = ad.embeddings;
            assert_close(
                &format!("{what} embeddings"),
                &emb,
                &fx[&format!("step{k}")].1,
                1e-5,
                1e-3,
            );
        }
        assert!(pollster::block_on(tr.step()).unwrap().is_none());
    }
}

/// Generation with a prompt-tuning adapter: the KV decoder feeds the virtual tokens first and its
/// logits, token by token, equal PEFT's logits of [prompt; ids] (`logits_init`).
#[test]
fn kv_decoder_with_prompt_matches_peft_logits() {
    use tinytune::model::KvDecoder;
    let Some(gpu) = gpu() else { return };
    for name in MODELS {
        let src = ModelSource::open(fixture(&format!("{name}/model"))).unwrap();
        let model = LlamaModel::load(gpu, &src, Quant::None).unwrap();
        let fx = read_tensors(&format!("{name}/prompt_tuning/prompt_tuning.safetensors"));
        let (shape, ids) = &fx["input_ids_i32"];
        let t = shape[1];
        let (p, c) = (fx["init"].0[0], fx["init"].0[1]);
        let v = model.config.vocab_size;
        let pg = PromptGpu::upload(gpu, &fx["init"].1, p, c).unwrap();
        let mut dec = KvDecoder::new(gpu, &model, Some(Peft::Prompt(&pg)), p + t).unwrap();
        dec.begin().unwrap();
        assert_eq!(dec.len(), p);
        let want = &fx["logits_init"].1; // [2, P+T, V]
        for (i, &id) in ids[..t].iter().enumerate() {
            let got = pollster::block_on(dec.feed(&[id as u32])).unwrap();
            let row = (p + i) * v;
            assert_close(
                &format!("{name} prompt-tuned decoder logits at token {i}"),
                &got,
                &want[row..row + v],
                1e-4,
                1e-4,
            );
        }
        // The whole-sequence logits of the real tokens (`logits_with`) are PEFT's too, for both
        // rows of the batch.
        let b = shape[0];
        let all: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
        let got = pollster::block_on(model.logits_with(gpu, Some(Peft::Prompt(&pg)), &all, b, t))
            .unwrap();
        for s in 0..b {
            let row = (s * (p + t) + p) * v;
            assert_close(
                &format!("{name} prompt-tuned logits of sequence {s}"),
                &got[s * t * v..(s + 1) * t * v],
                &want[row..row + t * v],
                1e-4,
                1e-4,
            );
        }
    }
}
