//! `tinytune train` / `eval` / `generate --adapter` end to end on the tiny Llama fixture (HF folder
//! with a tokenizer and chat template): the loss falls, the adapter is in PEFT's layout, checkpoints
//! resume bit-identically, and bad input gives one-line errors.

mod common;

use common::{assert_fails, have_gpu, root, tinytune};

use std::path::{Path, PathBuf};
use std::process::Output;

fn model() -> PathBuf {
    root().join("tests/fixtures/model/llama_hf")
}

fn ok(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "tinytune failed: {err}");
    err
}

/// A chat dataset with one repeated behaviour (the answer always starts with "Arr!").
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

/// Every line of `metrics.jsonl`, the step-0 evaluation before training included.
fn metrics_lines(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The training steps' lines of `metrics.jsonl` (step >= 1).
fn metrics(dir: &Path) -> Vec<serde_json::Value> {
    metrics_lines(dir)
        .into_iter()
        .filter(|r| r["step"].as_u64().unwrap() > 0)
        .collect()
}

fn train_args<'a>(data: &'a str, out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![
        "train",
        "--data",
        data,
        "--output-dir",
        out,
        "--seq-len",
        "32",
        "--batch-size",
        "2",
        "--num-steps",
        "6",
        "--learning-rate",
        "1e-2",
        "--lora-r",
        "4",
        "--eval-split",
        "2",
        "--save-every",
        "3",
        "--log-steps",
    ];
    a.extend_from_slice(extra);
    a
}

#[test]
fn train_saves_a_peft_adapter_and_resumes_bit_identically() {
    if !have_gpu() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = write_data(tmp.path());
    let (data, m) = (data.to_str().unwrap(), model());
    let m = m.to_str().unwrap();
    let out = tmp.path().join("run");
    let out_s = out.to_str().unwrap();
    let mut args = train_args(data, out_s, &["--model", m]);
    args.extend_from_slice(&["--lr-scheduler", "constant"]);
    let log = ok(&tinytune(&args));
    assert!(log.contains("step 6/6"), "{log}");

    // PEFT layout at the top of the output dir.
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["task_type"], "CAUSAL_LM");
    assert_eq!(cfg["r"], 4);
    assert_eq!(cfg["bias"], "none");
    let st = std::fs::read(out.join("adapter_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&st).unwrap();
    // 2 layers x 7 projections x (A, B).
    assert_eq!(st.len(), 28);
    let a = st
        .tensor("base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight")
        .unwrap();
    assert_eq!(a.shape(), &[4, 64]);

    // The loss falls and metrics carry every field; eval at the end.
    let recs = metrics(&out);
    assert_eq!(recs.len(), 6);
    let first = recs[0]["loss"].as_f64().unwrap();
    let last = recs[5]["loss"].as_f64().unwrap();
    assert!(last < first * 0.8, "loss {first} -> {last}");
    for k in [
        "step",
        "loss",
        "lr",
        "grad_norm",
        "tokens_per_s",
        "elapsed_s",
    ] {
        assert!(recs[5].get(k).is_some(), "metrics lack {k}: {}", recs[5]);
    }
    assert!(recs[5]["eval_loss"].as_f64().is_some());
    // The evaluation before training is the step-0 line, without training fields.
    let before = &metrics_lines(&out)[0];
    assert_eq!(before["step"], 0, "{before}");
    assert!(before["eval_loss"].as_f64().unwrap() > recs[5]["eval_loss"].as_f64().unwrap());
    assert!(
        before.get("loss").is_none() && before.get("lr").is_none(),
        "{before}"
    );
    assert!(out.join("checkpoint-3").is_dir() && out.join("checkpoint-6").is_dir());

    // Resume from step 3 in a copy: steps 4..6 repeat exactly.
    let out2 = tmp.path().join("resumed");
    std::fs::create_dir_all(&out2).unwrap();
    let ck = out2.join("checkpoint-3");
    std::fs::create_dir_all(&ck).unwrap();
    for e in std::fs::read_dir(out.join("checkpoint-3")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), ck.join(e.file_name())).unwrap();
    }
    let first3: String = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["step"].as_u64() <= Some(3)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(out2.join("metrics.jsonl"), first3).unwrap();
    let out2_s = out2.to_str().unwrap();
    let mut args = train_args(data, out2_s, &["--model", m, "--resume"]);
    args.extend_from_slice(&["--lr-scheduler", "constant"]);
    let log = ok(&tinytune(&args));
    assert!(log.contains("resuming from"), "{log}");
    let again = metrics(&out2);
    assert_eq!(again.len(), 6);
    for (a, b) in recs.iter().zip(&again) {
        assert_eq!(a["loss"], b["loss"], "step {}", a["step"]);
        assert_eq!(a["grad_norm"], b["grad_norm"], "step {}", a["step"]);
    }
    assert_eq!(
        std::fs::read(out.join("adapter_model.safetensors")).unwrap(),
        std::fs::read(out2.join("adapter_model.safetensors")).unwrap(),
        "resumed run ends with the same adapter"
    );

    // --gradient-checkpointing: the same run, the same numbers.
    let out4 = tmp.path().join("ckpt");
    let out4_s = out4.to_str().unwrap();
    let mut args = train_args(data, out4_s, &["--model", m, "--gradient-checkpointing"]);
    args.extend_from_slice(&["--lr-scheduler", "constant"]);
    ok(&tinytune(&args));
    for (a, b) in recs.iter().zip(&metrics(&out4)) {
        assert_eq!(a["loss"], b["loss"], "checkpointed step {}", a["step"]);
    }

    // eval: the adapter lowers the loss on its training data.
    let eval = |extra: &[&str]| -> f64 {
        let mut a = vec!["eval", "--model", m, "--data", data, "--seq-len", "32"];
        a.extend_from_slice(extra);
        let o = tinytune(&a);
        ok(&o);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["eval_loss"].as_f64().unwrap()
    };
    let base = eval(&[]);
    let tuned = eval(&["--adapter", out_s]);
    assert!(
        tuned < base * 0.8,
        "eval loss base {base} vs adapter {tuned}"
    );

    // generate --adapter loads it.
    let o = tinytune(&[
        "generate",
        "--model",
        m,
        "--adapter",
        out_s,
        "--prompt",
        "Question number 3?",
        "--max-new-tokens",
        "4",
    ]);
    ok(&o);

    // train --adapter continues from its weights: its first loss is the trained adapter's.
    let out3 = tmp.path().join("cont");
    let out3_s = out3.to_str().unwrap();
    let args = train_args(data, out3_s, &["--model", m, "--adapter", out_s]);
    ok(&tinytune(&args));
    let cont = metrics(&out3);
    assert!(
        cont[0]["loss"].as_f64().unwrap() < first * 0.8,
        "continued run starts from the adapter: {} vs fresh {first}",
        cont[0]["loss"]
    );
}

/// `--compute-dtype f16` (f16 operands in the frozen-weight matmuls, f32 accumulation) trains:
/// every step's loss within 1% of the f32 run's, though not identical to it; the choice is
/// recorded in `training_config.json`; a bad value is one clear error. (lavapipe has SHADER_F16;
/// the refusal on an adapter without it is checked in the browser test, on SwiftShader.)
#[test]
fn train_with_f16_compute_stays_within_one_percent_of_f32() {
    if !have_gpu() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = write_data(tmp.path());
    let (data, m) = (data.to_str().unwrap(), model());
    let m = m.to_str().unwrap();
    let mut losses = Vec::new();
    for dtype in ["f32", "f16"] {
        let out = tmp.path().join(dtype);
        let out_s = out.to_str().unwrap();
        let args = train_args(data, out_s, &["--model", m, "--compute-dtype", dtype]);
        ok(&tinytune(&args));
        let cfg = std::fs::read_to_string(out.join("checkpoint-6/training_config.json")).unwrap();
        assert!(
            cfg.contains(&format!("\"compute_dtype\": \"{dtype}\"")),
            "{cfg}"
        );
        let l: Vec<f64> = metrics(&out)
            .iter()
            .map(|r| r["loss"].as_f64().unwrap())
            .collect();
        assert_eq!(l.len(), 6);
        losses.push(l);
    }
    for (step, (a, b)) in losses[0].iter().zip(&losses[1]).enumerate() {
        assert!(
            (a - b).abs() <= 0.01 * a.abs(),
            "step {}: f16 loss {b} vs f32 {a}",
            step + 1
        );
    }
    assert_ne!(
        losses[0], losses[1],
        "f16 compute gave the f32 losses exactly"
    );
    let out = tmp.path().join("bad");
    let args = train_args(
        data,
        out.to_str().unwrap(),
        &["--model", m, "--compute-dtype", "bf16"],
    );
    assert_fails(&args, &["compute_dtype", "bf16", "f32 or f16"]);
}

#[test]
fn train_errors_are_one_line() {
    if !have_gpu() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"text\": \"fine\"}\n{\"text\": oops}\n").unwrap();
    let good = write_data(tmp.path());
    let m = model();
    let m = m.to_str().unwrap();
    let out = tmp.path().join("o");
    for (extra, needle) in [
        (vec!["--data", bad.to_str().unwrap()], "bad.jsonl:2"),
        (
            vec!["--data", "/nonexistent/data.jsonl"],
            "/nonexistent/data.jsonl",
        ),
        (
            vec![
                "--data",
                good.to_str().unwrap(),
                "--target-modules",
                "qq_proj",
            ],
            "qq_proj",
        ),
        (
            vec!["--data", good.to_str().unwrap(), "--lora-dropout", "1.5"],
            "lora_dropout",
        ),
        (
            vec![
                "--data",
                good.to_str().unwrap(),
                "--layers-to-transform",
                "7",
            ],
            "layer 7",
        ),
        (
            // Diverges at step 2: the run stops with what to change.
            vec![
                "--data",
                good.to_str().unwrap(),
                "--learning-rate",
                "1e30",
                "--max-grad-norm",
                "0",
                "--num-steps",
                "20",
            ],
            "training diverged",
        ),
    ] {
        let mut a = vec!["train", "--model", m, "--output-dir", out.to_str().unwrap()];
        a.extend_from_slice(&extra);
        let o = tinytune(&a);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{extra:?} succeeded");
        assert!(err.contains(needle), "{extra:?}: {err}");
        let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(errors.len(), 1, "{extra:?}: {err}");
        assert!(errors[0].contains(needle), "{extra:?}: {err}");
    }
}

/// `--eval-data NAME=FILE`: each extra set is evaluated before training, every `--eval-every`
/// steps and at the end, with its loss and perplexity in `metrics.jsonl` and the log; training on
/// the data lowers its own set's loss more than an unrelated set's; bad arguments are one-line
/// errors naming the set.
#[test]
fn eval_data_sets_are_logged_before_every_eval_every_and_at_the_end() {
    if !have_gpu() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = write_data(tmp.path());
    let other = tmp.path().join("other.jsonl");
    std::fs::write(
        &other,
        "{\"text\": \"The sun is a star. Water boils at one hundred degrees.\"}\n\
         {\"prompt\": \"Two plus two is\", \"completion\": \" four.\"}\n",
    )
    .unwrap();
    let (data, m) = (data.to_str().unwrap(), model());
    let m = m.to_str().unwrap();
    let out = tmp.path().join("run");
    let out_s = out.to_str().unwrap();
    let own = format!("own={data}");
    let general = format!("general={}", other.display());
    let mut args = train_args(data, out_s, &["--model", m]);
    args.extend_from_slice(&[
        "--eval-every",
        "2",
        "--eval-data",
        &own,
        "--eval-data",
        &general,
    ]);
    let log = ok(&tinytune(&args));
    assert!(log.contains("eval set general: 2 examples"), "{log}");
    let lines = metrics_lines(&out);
    let steps: Vec<u64> = lines.iter().map(|r| r["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, [0, 1, 2, 3, 4, 5, 6]);
    for r in &lines {
        let step = r["step"].as_u64().unwrap();
        let due = step % 2 == 0;
        assert_eq!(r.get("eval_data").is_some(), due, "{r}");
        assert_eq!(r.get("eval_loss").is_some(), due, "{r}");
        if due {
            for set in ["own", "general"] {
                let (l, p) = (
                    r["eval_data"][set]["loss"].as_f64().unwrap(),
                    r["eval_data"][set]["ppl"].as_f64().unwrap(),
                );
                assert!(l > 0.0 && (p - l.exp()).abs() < 1e-9 * p, "{r}");
            }
        }
    }
    let loss = |r: &serde_json::Value, set: &str| r["eval_data"][set]["loss"].as_f64().unwrap();
    let (first, last) = (&lines[0], &lines[6]);
    let own_drop = loss(first, "own") - loss(last, "own");
    let general_drop = loss(first, "general") - loss(last, "general");
    assert!(
        own_drop > 0.0 && own_drop > general_drop,
        "own {own_drop}, general {general_drop}"
    );
    assert!(log.contains("eval before training: eval_loss"), "{log}");
    assert!(
        log.contains(" general_loss ") && log.contains(" own_loss "),
        "{log}"
    );
    assert!(log.contains("step 6/6"), "{log}");

    for (arg, needle) in [
        ("general".to_string(), "expected NAME=FILE"),
        ("a b=x.jsonl".to_string(), "\"a b\""),
        (
            "general=/nonexistent/g.jsonl".to_string(),
            "/nonexistent/g.jsonl",
        ),
        (own.clone(), "two eval sets are named \"own\""),
    ] {
        let mut a = train_args(data, out_s, &["--model", m, "--eval-data", &own]);
        a.extend_from_slice(&["--eval-data", &arg]);
        let o = tinytune(&a);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{arg} succeeded");
        let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(errors.len(), 1, "{arg}: {err}");
        assert!(err.contains(needle), "{arg}: {err}");
    }
}

/// Several `--data` files of different formats mix into one dataset (JSONL messages, ShareGPT
/// JSONL, Parquet as the Hub serves it, Parquet with other column names mapped by
/// `--data-column`); a bad Parquet row is a one-line error naming the file, row and column.
#[test]
fn eval_mixes_dataset_formats_and_names_bad_parquet_rows() {
    if !have_gpu() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let chat = write_data(tmp.path());
    let share = tmp.path().join("share.jsonl");
    std::fs::write(
        &share,
        "{\"conversations\": [{\"from\": \"human\", \"value\": \"Hi?\"}, {\"from\": \"gpt\", \"value\": \"Arr!\"}]}\n",
    )
    .unwrap();
    let fx = |n: &str| root().join("tests/fixtures/data").join(n);
    let (m, chat, share) = (
        model(),
        chat.display().to_string(),
        share.display().to_string(),
    );
    let (msgs, qa) = (fx("messages.parquet"), fx("qa.parquet"));
    let (msgs, qa) = (msgs.to_str().unwrap(), qa.to_str().unwrap());
    let m = m.to_str().unwrap();
    let examples = |extra: &[&str]| -> u64 {
        let mut a = vec!["eval", "--model", m, "--seq-len", "64"];
        a.extend_from_slice(extra);
        let o = tinytune(&a);
        ok(&o);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert!(v["eval_loss"].as_f64().unwrap().is_finite(), "{v}");
        v["examples"].as_u64().unwrap()
    };
    // 12 chat records + 1 ShareGPT + 3 Parquet rows (zstd, two row groups).
    assert_eq!(
        examples(&["--data", &chat, "--data", &share, "--data", msgs]),
        16
    );
    assert_eq!(
        examples(&[
            "--data",
            qa,
            "--data-column",
            "prompt=question",
            "--data-column",
            "completion=answer"
        ]),
        2
    );
    for (data, needle) in [
        (
            fx("bad_row.parquet"),
            "bad_row.parquet: row 1 (from 0): messages[0].content must be a string, got null",
        ),
        (
            fx("qa.parquet"),
            "qa.parquet: row 0 (from 0): expected a \"text\"",
        ),
    ] {
        let o = tinytune(&["eval", "--model", m, "--data", data.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{err}");
        let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(errors.len(), 1, "{err}");
        assert!(errors[0].contains(needle), "{err}");
    }
}

/// The `eval_loss` `tinytune eval` prints.
fn eval_loss(args: &[&str]) -> f64 {
    let o = tinytune(args);
    ok(&o);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["eval_loss"].as_f64().unwrap()
}

/// `--peft prompt-tuning` (random and text init) and `--peft prefix-tuning`: the loss falls, the
/// output is a PEFT PROMPT_TUNING / PREFIX_TUNING adapter, and `eval --adapter` and
/// `generate --adapter` take it (eval: lower loss than the base model on the training data).
#[test]
fn train_prompt_and_prefix_tuning_save_peft_adapters() {
    if !have_gpu() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = write_data(tmp.path());
    let (data, m) = (data.to_str().unwrap(), model());
    let m = m.to_str().unwrap();
    let base = eval_loss(&["eval", "--model", m, "--data", data, "--seq-len", "32"]);
    for (i, extra) in [
        &["--peft", "prompt-tuning", "--prompt-tuning-init", "random"][..],
        &[
            "--peft",
            "prompt-tuning",
            "--prompt-tuning-init",
            "text",
            "--prompt-tuning-init-text",
            "Answer like a pirate",
        ][..],
        &["--peft", "prefix-tuning"][..],
        &[
            "--peft",
            "prefix-tuning",
            "--prefix-tuning-init",
            "text",
            "--prefix-tuning-init-text",
            "Answer like a pirate",
        ][..],
    ]
    .iter()
    .enumerate()
    {
        let prefix = extra[1] == "prefix-tuning";
        let out = tmp.path().join(format!("pt{i}"));
        let out_s = out.to_str().unwrap();
        // The whole training set every step (10 examples), so the loss is comparable across steps.
        let mut args = vec![
            "train",
            "--model",
            m,
            "--data",
            data,
            "--output-dir",
            out_s,
            "--seq-len",
            "32",
            "--batch-size",
            "10",
            "--num-steps",
            "6",
            "--learning-rate",
            "5e-2",
            "--eval-split",
            "2",
            "--log-steps",
            "--num-virtual-tokens",
            "5",
        ];
        args.extend_from_slice(extra);
        ok(&tinytune(&args));
        let cfg: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("adapter_config.json")).unwrap())
                .unwrap();
        let st = std::fs::read(out.join("adapter_model.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&st).unwrap();
        let shape = st.tensor("prompt_embeddings").unwrap().shape().to_vec();
        assert_eq!(cfg["num_virtual_tokens"], 5);
        if prefix {
            // The tiny Llama: 2 layers, 2 KV heads of 16 (GQA), so token_dim is 32 as in PEFT.
            assert_eq!(cfg["peft_type"], "PREFIX_TUNING");
            assert_eq!(cfg["token_dim"], 32);
            assert_eq!(cfg["num_attention_heads"], 2);
            assert_eq!(shape, [5, 2 * 2 * 32]);
        } else {
            assert_eq!(cfg["peft_type"], "PROMPT_TUNING");
            assert_eq!(cfg["token_dim"], 64);
            assert_eq!(shape, [5, 64]);
        }
        let recs = metrics(&out);
        assert_eq!(recs.len(), 6);
        let (first, last) = (
            recs[0]["loss"].as_f64().unwrap(),
            recs[5]["loss"].as_f64().unwrap(),
        );
        assert!(last < first, "{extra:?}: loss {first} -> {last}");
        // The final checkpoint (adapter + optimizer state) is a PEFT adapter folder of its own.
        let ck_cfg = std::fs::read(out.join("checkpoint-6/adapter_config.json")).unwrap();
        assert_eq!(
            ck_cfg,
            std::fs::read(out.join("adapter_config.json")).unwrap()
        );
        let adapted = eval_loss(&[
            "eval",
            "--model",
            m,
            "--data",
            data,
            "--seq-len",
            "32",
            "--adapter",
            out_s,
        ]);
        assert!(adapted < base, "{extra:?}: eval loss {base} -> {adapted}");
        // generate --adapter takes it (virtual positions first).
        ok(&tinytune(&[
            "generate",
            "--model",
            m,
            "--adapter",
            out_s,
            "--prompt",
            "Question number 3?",
            "--max-new-tokens",
            "4",
        ]));
    }
}

/// A second `train` into a directory a live run holds is refused with the holder's pid; a lock
/// left by a process that is gone (a killed run) is taken over with a message.
#[test]
fn a_second_run_into_a_live_runs_directory_is_refused() {
    if !have_gpu() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = write_data(tmp.path());
    let out = tmp.path().join("o");
    std::fs::create_dir_all(&out).unwrap();
    let mut holder = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    std::fs::write(out.join("tinytune.lock"), format!("{}\n", holder.id())).unwrap();
    let m = model();
    let (d, o) = (data.to_str().unwrap(), out.to_str().unwrap());
    let args = train_args(d, o, &["--model", m.to_str().unwrap()]);
    assert_fails(
        &args,
        &[
            "in use by another tinytune run",
            &format!("process {}", holder.id()),
        ],
    );
    holder.kill().unwrap();
    holder.wait().unwrap();
    let r = tinytune(&args);
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "{stderr}");
    assert!(stderr.contains("taking over the stale lock"), "{stderr}");
    assert!(
        !out.join("tinytune.lock").exists(),
        "the lock is removed at the end"
    );
}
