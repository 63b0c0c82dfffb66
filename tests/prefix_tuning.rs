//! Prefix tuning (PEFT `PREFIX_TUNING`): trainable per-layer key/value rows in front of every
//! sequence's attention. The reference decoder and the GPU model against PEFT
//! (`tests/fixtures/hf/*/prefix_tuning/`, from `gen_prefix_tuning_fixture.py`; GQA models).

mod common;

use std::collections::HashMap;

use common::hf::{fixture, fixture_dataset, peft_recipe, read_tensors, reference_model};
use common::{assert_close, gpu};
use tinytune::model::{LlamaModel, ModelSource, Peft, PrefixGpu, Quant, Workspace};
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
    (ids, tinytune::train::shift_labels(&labels, b, t), b, t)
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

/// GPU prefix tuning (`LlamaModel::forward_backward`, `logits_with` with `Peft::Prefix`): loss, prefix
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
                .forward_backward(
                    gpu,
                    &ws,
                    Peft::Prefix(&pg),
                    &ids,
                    &targets,
                    b,
                    t,
                    1.0 / n as f32,
                    None,
                )
                .unwrap();
            let loss = (pollster::block_on(ws.loss_sum(gpu, b * t)).unwrap() / n as f64) as f32;
            let grad = pollster::block_on(pg.download_grad(gpu)).unwrap();
            let logits =
                pollster::block_on(model.logits_with(gpu, Some(Peft::Prefix(&pg)), &ids, b, t))
                    .unwrap();
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
                .forward_backward(
                    gpu,
                    &plain,
                    Peft::Prefix(&pg),
                    &ids,
                    &targets,
                    b,
                    t,
                    1.0,
                    None
                )
                .is_err());
        }
    }
}

/// PEFT's saved prefix-tuning adapters (plain, and with the projection folded in) read back as
/// their prefixes, and tinytune writes the very same two files; a LoRA config is refused, and the
/// any-method reader picks the right kind.
#[test]
fn prefix_adapter_files_round_trip_with_peft() {
    use tinytune::train::{PeftAdapter, PeftMethod, PrefixAdapter, TrainError};
    for name in MODELS {
        for (dir, proj) in [("init", false), ("proj_trained", true)] {
            let dir = fixture(&format!("{name}/prefix_tuning/{dir}"));
            let ad = PrefixAdapter::load(&dir).unwrap();
            assert_eq!(ad.config.num_virtual_tokens, 4);
            assert_eq!(
                (ad.config.token_dim, ad.config.num_attention_heads),
                (32, 2)
            );
            assert_eq!(ad.config.prefix_projection, proj);
            assert_eq!(ad.prefix.len(), 4 * 2 * 2 * 32);
            for (file, bytes) in ad.to_files().unwrap() {
                let want = std::fs::read(dir.join(&file)).unwrap();
                assert!(
                    bytes == want,
                    "{name}: {file} differs from PEFT's:\n{}",
                    String::from_utf8_lossy(&bytes)
                );
            }
            let any = PeftAdapter::load(&dir).unwrap();
            assert_eq!(any.method(), PeftMethod::PrefixTuning);
            assert_eq!(any.virtual_tokens(), 4);
        }
        let fx = read_tensors(&format!("{name}/prefix_tuning/plain.safetensors"));
        let init = PrefixAdapter::load(&fixture(&format!("{name}/prefix_tuning/init"))).unwrap();
        assert_eq!(init.prefix, fx["init.prefix"].1);
        let lora = fixture(&format!("{name}/lora_init"));
        let cfg = std::fs::read(lora.join("adapter_config.json")).unwrap();
        let st = std::fs::read(lora.join("adapter_model.safetensors")).unwrap();
        match PrefixAdapter::from_bytes(&cfg, &st, "x") {
            Err(TrainError::Adapter { file, msg }) => {
                assert!(file.ends_with("adapter_config.json") && msg.contains("PREFIX_TUNING"));
            }
            other => panic!("expected an adapter error, got {other:?}"),
        }
        assert_eq!(
            PeftAdapter::from_bytes(&cfg, &st, "x").unwrap().method(),
            PeftMethod::Lora
        );
    }
}

/// The trainer on prefix tuning: 3 AdamW steps (lr 1e-2, wd 0.01, clip 1.0, constant) from PEFT's
/// initial prefix on the fixture batch give PEFT's losses, gradient norms and prefix; the saved
/// adapter evaluates to the trainer's own loss.
#[test]
fn prefix_tuning_three_steps_match_peft() {
    use tinytune::train::{
        evaluate, AdapterGpu, PeftAdapter, PeftMethod, PrefixAdapter, PrefixStart, Start, Trainer,
    };
    let Some(gpu) = gpu() else { return };
    for name in MODELS {
        let src = ModelSource::open(fixture(&format!("{name}/model"))).unwrap();
        let model = LlamaModel::load(gpu, &src, Quant::None).unwrap();
        let rel = format!("{name}/prefix_tuning/plain.safetensors");
        let fx = read_tensors(&rel);
        let data = fixture_dataset(&rel);
        let cfg = peft_recipe(3, data.examples.len());
        let init = PrefixAdapter::load(&fixture(&format!("{name}/prefix_tuning/init"))).unwrap();
        let start = Start::Prefix(PrefixStart::Adapter(init));
        let mut tr = Trainer::new(gpu, &model, cfg, data.clone(), start, Box::new(|| 0.0)).unwrap();
        assert_eq!(tr.method(), PeftMethod::PrefixTuning);
        assert_eq!(tr.n_params(), 4 * 2 * 2 * 32);
        for k in 1..=3usize {
            let rec = pollster::block_on(tr.step()).unwrap().expect("a step");
            let what = format!("{name} prefix step {k}");
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
        }
        assert!(pollster::block_on(tr.step()).unwrap().is_none());
        let PeftAdapter::Prefix(trained) = pollster::block_on(tr.peft_adapter()).unwrap() else {
            panic!("{name}: a prefix-tuning run saves a prefix (not LoRA, not a prompt)")
        };
        assert_close(
            &format!("{name} prefix after 3 steps"),
            &trained.prefix,
            &fx["step3.prefix"].1,
            1e-5,
            1e-3,
        );
        // The adapter's files evaluate (tinytune eval's path) to the trainer's own loss on them.
        let files = pollster::block_on(tr.adapter_files()).unwrap();
        let get = |n: &str| files.iter().find(|(f, _)| f == n).unwrap().1.clone();
        let any = PeftAdapter::from_bytes(
            &get("adapter_config.json"),
            &get("adapter_model.safetensors"),
            "trained",
        )
        .unwrap();
        let ag = AdapterGpu::upload(gpu, &model, &any).unwrap();
        let (loss, n) = pollster::block_on(evaluate(gpu, &model, Some(&ag), &data, 1)).unwrap();
        let want = pollster::block_on(tr.loss_on(&data.examples)).unwrap();
        assert!(n > 0);
        assert_close(
            &format!("{name} eval of the saved prefix"),
            &[loss as f32],
            &[want as f32],
            1e-6,
            1e-5,
        );
    }
}

/// Generation with a prefix-tuning adapter: the KV decoder caches the prefix first and its logits,
/// token by token, equal PEFT's (the initial plain prefix, and a trained adapter with its
/// projection folded, loaded as PEFT loads it for inference).
#[test]
fn kv_decoder_with_prefix_matches_peft_logits() {
    use tinytune::model::KvDecoder;
    use tinytune::train::PrefixAdapter;
    let Some(gpu) = gpu() else { return };
    for name in MODELS {
        let src = ModelSource::open(fixture(&format!("{name}/model"))).unwrap();
        let model = LlamaModel::load(gpu, &src, Quant::None).unwrap();
        let v = model.config.vocab_size;
        for (dir, file, key) in [
            ("init", "plain", "logits_init"),
            ("proj_trained", "proj", "logits_trained"),
        ] {
            let fx = read_tensors(&format!("{name}/prefix_tuning/{file}.safetensors"));
            let (shape, ids) = &fx["input_ids_i32"];
            let t = shape[1];
            let ad = PrefixAdapter::load(&fixture(&format!("{name}/prefix_tuning/{dir}"))).unwrap();
            let p = ad.config.num_virtual_tokens;
            let pf = PrefixGpu::upload(gpu, &model.config, &ad.prefix, p).unwrap();
            let mut dec = KvDecoder::new(gpu, &model, Some(Peft::Prefix(&pf)), p + t).unwrap();
            dec.begin().unwrap();
            assert_eq!(dec.len(), p);
            let want = &fx[key].1; // [2, T, V]
            for (i, &id) in ids[..t].iter().enumerate() {
                let got = pollster::block_on(dec.feed(&[id as u32])).unwrap();
                assert_close(
                    &format!("{name} {dir}: prefix-tuned decoder logits at token {i}"),
                    &got,
                    &want[i * v..(i + 1) * v],
                    LOGITS_ATOL,
                    LOGITS_RTOL,
                );
            }
        }
    }
}

/// Checkpoints of prompt- and prefix-tuning runs: 1 step, a checkpoint through the in-memory
/// files (`--resume` and the browser read the same), 2 resumed steps give the 3 steps of an
/// uninterrupted run bit for bit, and the checkpoint is itself the PEFT adapter.
#[test]
fn prompt_and_prefix_checkpoints_resume_the_same_run() {
    use std::collections::BTreeMap;
    use tinytune::train::{
        Checkpoint, PeftAdapter, PeftMethod, PrefixAdapter, PrefixStart, PromptAdapter,
        PromptStart, Start, Trainer,
    };
    let Some(gpu) = gpu() else { return };
    let name = "qwen2";
    let src = ModelSource::open(fixture(&format!("{name}/model"))).unwrap();
    let model = LlamaModel::load(gpu, &src, Quant::NF4).unwrap();
    let rel = format!("{name}/prefix_tuning/plain.safetensors");
    let start = |prefix: bool| {
        if prefix {
            let a = PrefixAdapter::load(&fixture(&format!("{name}/prefix_tuning/init"))).unwrap();
            Start::Prefix(PrefixStart::Adapter(a))
        } else {
            let a = PromptAdapter::load(&fixture(&format!("{name}/prompt_tuning/init"))).unwrap();
            Start::Prompt(PromptStart::Adapter(a))
        }
    };
    for prefix in [false, true] {
        let run = |start: Start| {
            // Batches of 1 over 2 examples: the data position matters.
            let cfg = peft_recipe(3, 1);
            Trainer::new(
                gpu,
                &model,
                cfg,
                fixture_dataset(&rel),
                start,
                Box::new(|| 0.0),
            )
            .unwrap()
        };
        let mut full = run(start(prefix));
        let mut losses = Vec::new();
        while let Some(r) = pollster::block_on(full.step()).unwrap() {
            losses.push(r.loss);
        }
        let want_files = pollster::block_on(full.adapter_files()).unwrap();
        let mut first = run(start(prefix));
        let r1 = pollster::block_on(first.step()).unwrap().unwrap();
        let ck = pollster::block_on(first.checkpoint()).unwrap();
        let files: BTreeMap<String, Vec<u8>> = ck.to_files().unwrap().into_iter().collect();
        let ck = Checkpoint::from_files(|n| files.get(n).cloned(), "mem").unwrap();
        let method = if prefix {
            PeftMethod::PrefixTuning
        } else {
            PeftMethod::PromptTuning
        };
        assert_eq!(ck.adapter.method(), method);
        let direct = PeftAdapter::from_bytes(
            &files["adapter_config.json"],
            &files["adapter_model.safetensors"],
            "mem",
        )
        .unwrap();
        assert_eq!(direct, ck.adapter);
        let mut second = run(Start::Resume(Box::new(ck)));
        assert_eq!(second.method(), method);
        let mut resumed = vec![r1.loss];
        while let Some(r) = pollster::block_on(second.step()).unwrap() {
            resumed.push(r.loss);
        }
        assert_eq!(
            losses, resumed,
            "prefix={prefix}: resumed losses bit-identical"
        );
        let got_files = pollster::block_on(second.adapter_files()).unwrap();
        assert_eq!(got_files, want_files, "prefix={prefix}: same adapter files");
    }
}

/// `PrefixGpu::from_text`: the prefix of a text's keys and values makes the model continue as if
/// the text were in context: logits of `ids` after it equal the model's own logits of
/// `[text; ids]` at those positions.
#[test]
fn prefix_from_text_is_the_text_in_context() {
    let Some(gpu) = gpu() else { return };
    for name in MODELS {
        let src = ModelSource::open(fixture(&format!("{name}/model"))).unwrap();
        let model = LlamaModel::load(gpu, &src, Quant::NF4).unwrap();
        let v = model.config.vocab_size;
        let text: Vec<u32> = vec![5, 17, 101, 3, 44];
        let ids: Vec<u32> = vec![9, 60, 2, 150, 33, 7];
        let (p, t) = (text.len(), ids.len());
        let pf = PrefixGpu::from_text(gpu, &model, &text).unwrap();
        let got = pollster::block_on(model.logits_with(gpu, Some(Peft::Prefix(&pf)), &ids, 1, t))
            .unwrap();
        let mut both = text.clone();
        both.extend_from_slice(&ids);
        let want = pollster::block_on(model.logits(gpu, &both, 1, p + t)).unwrap();
        assert_close(
            &format!("{name}: logits after a text prefix"),
            &got,
            &want[p * v..],
            LOGITS_ATOL,
            LOGITS_RTOL,
        );
    }
}

/// The projection's five tensors of a fixture entry (`init`, `grad1`, `step3`), flat in PEFT's
/// parameter order.
fn proj_flat(fx: &Tensors, stage: &str) -> Vec<f32> {
    ["embedding", "w1", "b1", "w2", "b2"]
        .iter()
        .flat_map(|k| fx[&format!("{stage}.{k}")].1.clone())
        .collect()
}

/// Prefix tuning through PEFT's projection MLP (`prefix_projection=True`): the reference's loss
/// and parameter gradients equal PEFT's, and the trainer's 3 AdamW steps give PEFT's losses,
/// gradient norms and parameters; the adapter it saves is the folded prefix, and a checkpoint
/// resumes the same run.
#[test]
fn prefix_projection_matches_peft() {
    use std::collections::BTreeMap;
    use tinytune::reference::nn::{prefix_proj_bwd, prefix_proj_fwd, ProjDims};
    use tinytune::train::{
        Checkpoint, PeftAdapter, PrefixStart, PrefixTuningConfig, Start, Trainer,
    };
    for name in MODELS {
        let src = ModelSource::open(fixture(&format!("{name}/model"))).unwrap();
        let (d, w) = reference_model(&src, false);
        let rel = format!("{name}/prefix_tuning/proj.safetensors");
        let fx = read_tensors(&rel);
        let (ids, targets, b, t) = batch(&fx);
        let init = proj_flat(&fx, "init");
        let kvd = d.kv_heads * d.head_dim;
        let dims = ProjDims {
            p: 4,
            t: kvd,
            e: kvd,
            n: d.layers * 2 * kvd,
        };
        let (h, kv) = prefix_proj_fwd(&init, dims);
        let (loss, dkv) = llama::prefix_loss_and_grad(&d, &w, &kv, &ids, &targets, b, t);
        let grads = prefix_proj_bwd(&init, &h, &dkv, dims);
        assert_close(
            &format!("{name} proj loss"),
            &[loss],
            &fx["loss"].1[..1],
            LOSS_ATOL,
            LOSS_RTOL,
        );
        assert_close(
            &format!("{name} proj grads"),
            &grads,
            &proj_flat(&fx, "grad1"),
            GRAD_ATOL,
            GRAD_RTOL,
        );
        let Some(gpu) = gpu() else { continue };
        let model = LlamaModel::load(gpu, &src, Quant::None).unwrap();
        let data = fixture_dataset(&rel);
        let start = || {
            Start::Prefix(PrefixStart::ProjectedParams {
                config: PrefixTuningConfig::for_model(&model.config, 4, true, None),
                params: init.clone(),
            })
        };
        let run = |start: Start| {
            let cfg = peft_recipe(3, data.examples.len());
            Trainer::new(gpu, &model, cfg, data.clone(), start, Box::new(|| 0.0)).unwrap()
        };
        let mut tr = run(start());
        assert_eq!(tr.n_params(), dims.len());
        let mut ck_files = None;
        let mut losses = Vec::new();
        for k in 1..=3usize {
            let rec = pollster::block_on(tr.step()).unwrap().expect("a step");
            losses.push(rec.loss);
            let what = format!("{name} projection step {k}");
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
            if k == 1 {
                let ck = pollster::block_on(tr.checkpoint()).unwrap();
                let files: BTreeMap<String, Vec<u8>> = ck.to_files().unwrap().into_iter().collect();
                assert!(files.contains_key("prefix_projection.safetensors"));
                ck_files = Some(files);
            }
        }
        let ck = pollster::block_on(tr.checkpoint()).unwrap();
        let params = ck.projection.clone().expect("the projection's parameters");
        assert_close(
            &format!("{name} projection after 3 steps"),
            &params,
            &proj_flat(&fx, "step3"),
            1e-5,
            1e-3,
        );
        // The saved adapter is the folded prefix, with prefix_projection true, as PEFT saves it.
        let PeftAdapter::Prefix(ad) = pollster::block_on(tr.peft_adapter()).unwrap() else {
            panic!("{name}: a prefix-tuning run saves a prefix")
        };
        assert!(ad.config.prefix_projection);
        let (_, kv3) = prefix_proj_fwd(&params, dims);
        assert_close(
            &format!("{name} folded prefix"),
            &ad.prefix,
            &kv3,
            1e-5,
            1e-4,
        );
        // 1 step + resume from the checkpoint's files = 3 steps.
        let files = ck_files.unwrap();
        let ck1 = Checkpoint::from_files(|n| files.get(n).cloned(), "mem").unwrap();
        let mut second = run(Start::Resume(Box::new(ck1)));
        let mut resumed_losses = vec![losses[0]];
        while let Some(r) = pollster::block_on(second.step()).unwrap() {
            resumed_losses.push(r.loss);
        }
        assert_eq!(
            resumed_losses, losses,
            "{name}: resumed losses are bit-identical"
        );
        let resumed = pollster::block_on(second.checkpoint())
            .unwrap()
            .projection
            .unwrap();
        assert_eq!(
            resumed, params,
            "{name}: resumed projection run is bit-identical"
        );
    }
}

/// Gradient checkpointing with prompt and prefix tuning: the same losses, gradient norms and
/// adapter bit for bit (the backward recomputes each layer, prefix rows included).
#[test]
fn prompt_and_prefix_tuning_with_gradient_checkpointing_are_bit_identical() {
    use tinytune::train::{PrefixAdapter, PrefixStart, PromptAdapter, PromptStart, Start, Trainer};
    let Some(gpu) = gpu() else { return };
    let name = "llama";
    let src = ModelSource::open(fixture(&format!("{name}/model"))).unwrap();
    let model = LlamaModel::load(gpu, &src, Quant::NF4).unwrap();
    let rel = format!("{name}/prefix_tuning/plain.safetensors");
    for prefix in [false, true] {
        let run = |checkpointing: bool| {
            let start = if prefix {
                let a =
                    PrefixAdapter::load(&fixture(&format!("{name}/prefix_tuning/init"))).unwrap();
                Start::Prefix(PrefixStart::Adapter(a))
            } else {
                let a =
                    PromptAdapter::load(&fixture(&format!("{name}/prompt_tuning/init"))).unwrap();
                Start::Prompt(PromptStart::Adapter(a))
            };
            let mut cfg = peft_recipe(2, 2);
            cfg.gradient_checkpointing = checkpointing;
            let mut tr = Trainer::new(
                gpu,
                &model,
                cfg,
                fixture_dataset(&rel),
                start,
                Box::new(|| 0.0),
            )
            .unwrap();
            let mut recs = Vec::new();
            while let Some(r) = pollster::block_on(tr.step()).unwrap() {
                recs.push((r.loss, r.grad_norm));
            }
            (recs, pollster::block_on(tr.adapter_files()).unwrap())
        };
        let (plain, plain_files) = run(false);
        let (ckpt, ckpt_files) = run(true);
        assert_eq!(plain.len(), 2);
        assert_eq!(plain, ckpt, "prefix={prefix}: losses and grad norms");
        assert!(
            plain_files == ckpt_files,
            "prefix={prefix}: adapters differ"
        );
    }
}
