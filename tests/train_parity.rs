//! The trainer against PEFT: 3 AdamW steps (clipping, weight decay) from the same initial adapter
//! on the same batch (`tests/fixtures/hf/*/lora_train.safetensors`, f32 base, and
//! `*/nf4/lora_train.safetensors`, PEFT + bitsandbytes QLoRA): losses, gradient norms and the
//! adapter after every step. Also checkpoint/resume: 1 + 2 steps equal 3 steps.

mod common;

use common::hf::{fixture, fixture_dataset, peft_recipe, read_tensors};
use common::{assert_close, gpu};
use tinytune::model::{LlamaModel, ModelSource, Quant};
use tinytune::train::{
    LoraAdapter, LoraModule, PeftAdapter, RunPlan, Start, TrainError, TrainSession, Trainer,
};

const MODELS: [&str; 3] = ["llama", "llama_tied_llama3", "qwen2"];

/// Loss vs PEFT: |ours - peft| <= LOSS_ATOL + LOSS_RTOL * |peft| (the issue asks 1e-4 relative).
const LOSS_ATOL: f32 = 0.0;
const LOSS_RTOL: f32 = 1e-4;
/// Gradient norm before clipping.
const NORM_RTOL: f32 = 1e-4;
/// LoRA weights after each step (the issue asks 1e-3 relative), per tensor:
/// `||ours - peft|| <= W_RTOL * ||peft||`. Not elementwise: AdamW's update `m / (sqrt(v) + eps)`
/// is ill-conditioned where a gradient is near `eps` (qwen2's k_proj has a step-1 gradient of
/// 3.8e-8, whose update then depends on its last bits), while the tensor as a whole is stable.
const W_RTOL: f64 = 1e-3;

/// `||a - b|| / ||b||`.
fn rel_norm(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let d: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let n: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (d / n.max(f64::MIN_POSITIVE)).sqrt()
}

fn check_run(name: &str, quant: Quant, train_rel: &str) {
    let gpu = gpu().unwrap();
    let src = ModelSource::open(fixture(&format!("{name}/model"))).unwrap();
    let model = LlamaModel::load(gpu, &src, quant).unwrap();
    let init = LoraAdapter::load(&fixture(&format!("{name}/lora_init"))).unwrap();
    let want = read_tensors(train_rel);
    let mut tr = Trainer::new(
        gpu,
        &model,
        peft_recipe(3, 2),
        fixture_dataset(train_rel),
        Start::Adapter(init),
        Box::new(|| 0.0),
    )
    .unwrap();
    assert_eq!(tr.total_steps(), 3);
    for k in 1..=3u64 {
        let rec = pollster::block_on(tr.step()).unwrap().expect("a step");
        let what = format!("{train_rel} step {k}");
        eprintln!(
            "{what}: loss {} (peft {}), grad_norm {} (peft {})",
            rec.loss,
            want["loss"].1[k as usize - 1],
            rec.grad_norm,
            want["grad_norm"].1[k as usize - 1]
        );
        assert_close(
            &format!("{what} loss"),
            &[rec.loss as f32],
            &want["loss"].1[k as usize - 1..k as usize],
            LOSS_ATOL,
            LOSS_RTOL,
        );
        assert_close(
            &format!("{what} grad_norm"),
            &[rec.grad_norm as f32],
            &want["grad_norm"].1[k as usize - 1..k as usize],
            0.0,
            NORM_RTOL,
        );
        let ad = lora_of(&tr);
        assert_eq!(ad.weights.pairs.len(), 14 * model.layers.len() / 2);
        let mut worst = (0.0, String::new());
        for (key, p) in &ad.weights.pairs {
            for (which, got) in [('A', &p.a), ('B', &p.b)] {
                let name = format!("step{k}.{}", key.tensor_name(which));
                let e = rel_norm(got, &want[&name].1);
                if e > worst.0 {
                    worst = (e, name);
                }
            }
        }
        eprintln!(
            "{what}: worst adapter tensor ||d||/||peft|| = {:.2e} ({})",
            worst.0, worst.1
        );
        assert!(
            worst.0 <= W_RTOL,
            "{what}: {} differs from PEFT by {:.2e} relative",
            worst.1,
            worst.0
        );
    }
    assert!(
        pollster::block_on(tr.step()).unwrap().is_none(),
        "3 steps only"
    );
}

#[test]
fn three_adamw_steps_match_peft_f32() {
    if gpu().is_none() {
        return;
    }
    for name in MODELS {
        check_run(name, Quant::None, &format!("{name}/lora_train.safetensors"));
    }
}

#[test]
fn three_adamw_steps_match_peft_qlora_nf4() {
    if gpu().is_none() {
        return;
    }
    for name in MODELS {
        check_run(
            name,
            Quant::NF4,
            &format!("{name}/nf4/lora_train.safetensors"),
        );
    }
}

#[test]
fn checkpoint_resume_continues_the_same_run() {
    let Some(gpu) = gpu() else { return };
    let name = "qwen2";
    let rel = format!("{name}/lora_train.safetensors");
    let src = ModelSource::open(fixture(&format!("{name}/model"))).unwrap();
    let model = LlamaModel::load(gpu, &src, Quant::NF4).unwrap();
    let init = || LoraAdapter::load(&fixture(&format!("{name}/lora_init"))).unwrap();
    // With LoRA dropout: the masks come from the trainer's RNG, which the checkpoint carries.
    let run = |start: Start, steps: u64| {
        let mut cfg = peft_recipe(steps, 2);
        cfg.lora.dropout = 0.1;
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
    let mut full = run(Start::Adapter(init()), 3);
    let mut losses = Vec::new();
    while let Some(r) = pollster::block_on(full.step()).unwrap() {
        losses.push(r.loss);
    }
    let mut first = run(Start::Adapter(init()), 3);
    let r1 = pollster::block_on(first.step()).unwrap().unwrap();
    let ck = pollster::block_on(first.checkpoint()).unwrap();
    // Through the files, as `--resume` reads them.
    let dir = std::env::temp_dir().join(format!("tinytune-resume-{}", std::process::id()));
    ck.save(&dir).unwrap();
    let ck = tinytune::train::Checkpoint::load(&dir).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(ck.state.global_step, 1);
    let mut second = run(Start::Resume(Box::new(ck)), 3);
    let mut resumed = vec![r1.loss];
    while let Some(r) = pollster::block_on(second.step()).unwrap() {
        resumed.push(r.loss);
        assert_eq!(r.step, resumed.len() as u64);
    }
    assert_eq!(resumed.len(), 3);
    for (a, b) in losses.iter().zip(&resumed) {
        assert_eq!(
            a, b,
            "resumed losses are bit-identical: {losses:?} vs {resumed:?}"
        );
    }
    let fa = lora_of(&full);
    let sa = lora_of(&second);
    assert_eq!(fa.weights, sa.weights, "same final adapter");
}

/// The LoRA adapter a LoRA run has trained so far.
fn lora_of(tr: &Trainer) -> LoraAdapter {
    match pollster::block_on(tr.peft_adapter()).unwrap() {
        PeftAdapter::Lora(a) => a,
        _ => panic!("a LoRA run saves a LoRA adapter"),
    }
}

/// A LoRA optimizer step is one submission (every micro-batch, the gradient norm and AdamW), and
/// through the session the host never stalls the GPU: it submits step N+1 before it waits for
/// step N's report, so every wait is overlapped with queued work (the runtime counts a wait with
/// nothing queued behind it as a blocking read), with gradient accumulation 1 and 4. Only the
/// run's last step, after which nothing is left to queue, is waited for alone. The pipelined
/// losses and gradient norms equal unpipelined steps' bit for bit.
#[test]
fn a_training_step_is_one_submission_and_never_stalls() {
    gpu().unwrap(); // fails without a device under TINYTUNE_REQUIRE_GPU=1
                    // A device of its own: the other tests of this binary run in parallel on the shared one.
    let own = tinytune::gpu::Gpu::new_blocking(Default::default()).unwrap();
    let gpu = &own;
    let name = "llama";
    let train_rel = format!("{name}/lora_train.safetensors");
    let src = ModelSource::open(fixture(&format!("{name}/model"))).unwrap();
    let model = LlamaModel::load(gpu, &src, Quant::NF4).unwrap();
    let steps = 5u64;
    for grad_accum in [1, 4] {
        let config = || {
            let mut cfg = peft_recipe(steps, 1);
            cfg.grad_accum = grad_accum;
            cfg
        };
        let start =
            || Start::Adapter(LoraAdapter::load(&fixture(&format!("{name}/lora_init"))).unwrap());
        let data = || fixture_dataset(&train_rel);
        let mut plain =
            Trainer::new(gpu, &model, config(), data(), start(), Box::new(|| 0.0)).unwrap();
        let want: Vec<_> = (0..steps)
            .map(|_| pollster::block_on(plain.step()).unwrap().expect("a step"))
            .collect();
        let plan = RunPlan {
            config: config(),
            start: start(),
            warmup_ratio: None,
        };
        let mut session = TrainSession::new(gpu, &model, plan, data(), Box::new(|| 0.0)).unwrap();
        for step in 1..=steps {
            let before = gpu.counters();
            let ev = pollster::block_on(session.step()).unwrap().expect("a step");
            let d = gpu.counters().delta(&before);
            let what = format!("grad_accum {grad_accum} step {step}: {d:?}");
            let (rec, w) = (&ev.rec, &want[step as usize - 1]);
            assert_eq!(rec.step, step, "{what}");
            assert_eq!(rec.loss.to_bits(), w.loss.to_bits(), "{what}: loss");
            assert_eq!(rec.grad_norm.to_bits(), w.grad_norm.to_bits(), "{what}");
            // Step 1 submits itself and step 2; the last step submits nothing more.
            let (submits, blocking, overlapped) = match step {
                1 => (2, 0, 1),
                s if s == steps => (0, 1, 0),
                _ => (1, 0, 1),
            };
            assert_eq!(
                (d.submits, d.blocking_reads, d.overlapped_reads),
                (submits, blocking, overlapped),
                "{what}"
            );
            assert_eq!(ev.last, step == steps, "{what}");
        }
        assert!(pollster::block_on(session.step()).unwrap().is_none());
    }
}

/// A run that diverges stops with a clear message when the first non-finite loss or gradient
/// norm is reported, and the GPU skipped that step's update: the adapter holds the last finite
/// step's weights, so what is saved stays usable.
#[test]
fn a_non_finite_loss_stops_the_run() {
    let gpu = gpu().unwrap();
    let name = "llama";
    let src = ModelSource::open(fixture(&format!("{name}/model"))).unwrap();
    let model = LlamaModel::load(gpu, &src, Quant::NF4).unwrap();
    let mut cfg = peft_recipe(20, 1);
    // Without clipping, a learning rate of 1e30 moves every weight by about 1e30 at step 1;
    // step 2's forward then overflows.
    cfg.lr = 1e30;
    cfg.max_grad_norm = 0.0;
    let plan = RunPlan {
        config: cfg,
        start: Start::Adapter(LoraAdapter::load(&fixture(&format!("{name}/lora_init"))).unwrap()),
        warmup_ratio: None,
    };
    let data = fixture_dataset(&format!("{name}/lora_train.safetensors"));
    let mut session = TrainSession::new(gpu, &model, plan, data, Box::new(|| 0.0)).unwrap();
    let mut reported = 0;
    let err = loop {
        match pollster::block_on(session.step()) {
            Ok(Some(ev)) => {
                assert!(ev.rec.loss.is_finite() && ev.rec.grad_norm.is_finite());
                reported += 1;
                assert!(reported < 20, "the run never diverged");
            }
            Ok(None) => panic!("the run ended without diverging"),
            Err(e) => break e,
        }
    };
    let TrainError::NonFinite { step, lr, .. } = &err else {
        panic!("wrong error: {err}");
    };
    assert_eq!(
        *step,
        reported + 1,
        "the first non-finite step is the one reported"
    );
    assert_eq!(*lr, 1e30);
    let msg = err.to_string();
    for part in ["diverged", "Lower the learning rate", "skipped"] {
        assert!(msg.contains(part), "{msg}");
    }
    // The steps after the diverged one (one may have been in flight) changed nothing either.
    let a = lora_of(&session.trainer);
    let finite = a
        .weights
        .pairs
        .values()
        .all(|p| p.a.iter().chain(&p.b).all(|x| x.is_finite()));
    assert!(finite, "a NaN reached the adapter");
}

/// LoRA's parameters and gradients live in the optimizer's flat buffers (each pair's tensors are
/// views of them): a step copies no parameter, so its copies (the inputs' uploads, the loss rows
/// and the norm into the report, the report's readback) do not depend on how many pairs there
/// are, and zeroing the gradients is one clear.
#[test]
fn a_lora_step_copies_no_parameters() {
    gpu().unwrap(); // fails without a device under TINYTUNE_REQUIRE_GPU=1
    let own = tinytune::gpu::Gpu::new_blocking(Default::default()).unwrap();
    let gpu = &own;
    let name = "llama";
    let src = ModelSource::open(fixture(&format!("{name}/model"))).unwrap();
    let model = LlamaModel::load(gpu, &src, Quant::NF4).unwrap();
    let mut per_step = Vec::new();
    for (layers, targets) in [
        (vec![1], vec![LoraModule::Q]),
        (vec![0, 1], LoraModule::ALL.to_vec()),
    ] {
        let mut cfg = peft_recipe(3, 1);
        cfg.lora.layers_to_transform = Some(layers);
        cfg.lora.targets = targets;
        let data = fixture_dataset(&format!("{name}/lora_train.safetensors"));
        let mut tr = Trainer::new(gpu, &model, cfg, data, Start::Fresh, Box::new(|| 0.0)).unwrap();
        pollster::block_on(tr.step()).unwrap().expect("a step");
        let before = gpu.counters();
        pollster::block_on(tr.step()).unwrap().expect("a step");
        let d = gpu.counters().delta(&before);
        per_step.push((tr.n_params(), d));
    }
    let ((n1, one), (n14, all)) = (per_step[0], per_step[1]);
    assert!(n14 > 10 * n1, "{n1} vs {n14} parameters");
    assert_eq!(one.copies, all.copies, "1 pair: {one:?}\n14 pairs: {all:?}");
    assert_eq!(one.clears, all.clears, "1 pair: {one:?}\n14 pairs: {all:?}");
    assert!(all.copies < 28, "{all:?}");
}
