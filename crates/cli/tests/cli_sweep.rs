//! `tinytune sweep` and `tinytune plot` end to end on the tiny Llama fixture: the sweep ranks its
//! trials by eval loss, stops the weak ones by the halving rule, resumes without rerunning what
//! sweep.json records, and its best trial's command reproduces the eval loss; the charts are
//! well-formed SVG with the expected series; bad inputs give one-line errors.

mod common;

use common::{assert_fails, have_gpu, root, tinytune};

use std::path::{Path, PathBuf};
use std::process::Output;

fn model() -> String {
    root()
        .join("tests/fixtures/model/llama_hf")
        .display()
        .to_string()
}

fn ok(o: &Output) -> (String, String) {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "tinytune failed: {err}");
    (String::from_utf8_lossy(&o.stdout).into_owned(), err)
}

/// A chat dataset with one repeated behaviour, and a small general set.
fn write_data(dir: &Path) -> (String, String) {
    let mut text = String::new();
    for i in 0..16 {
        text.push_str(&format!(
            "{{\"messages\":[{{\"role\":\"user\",\"content\":\"Question number {i}?\"}},{{\"role\":\"assistant\",\"content\":\"Arr! Answer {i}.\"}}]}}\n"
        ));
    }
    let p = dir.join("data.jsonl");
    std::fs::write(&p, text).unwrap();
    let g = dir.join("general.jsonl");
    std::fs::write(
        &g,
        "{\"text\": \"The sun is a star. Water boils at one hundred degrees.\"}\n\
         {\"prompt\": \"Two plus two is\", \"completion\": \" four.\"}\n",
    )
    .unwrap();
    (p.display().to_string(), g.display().to_string())
}

/// The sweep of these tests: 2 LoRA trials (learning rates 2e-4, 1e-3) and 2 prompt-tuning
/// trials (3e-3, 3e-2); 4 trials -> rounds of 4 and 2 trials, 4 + 2*2 = 8 steps per s0.
fn sweep_args(data: &str, general: &str, out: &str, budget: &str) -> Vec<String> {
    [
        "sweep",
        "--model",
        &model(),
        "--data",
        data,
        "--eval-data",
        &format!("general={general}"),
        "--output-dir",
        out,
        "--methods",
        "lora,prompt-tuning",
        "--lora-r",
        "4",
        "--target-modules",
        "q_proj,v_proj",
        "--prompt-tuning-init",
        "random",
        "--num-virtual-tokens",
        "4",
        "--seq-len",
        "32",
        "--batch-size",
        "2",
        "--eval-split",
        "4",
        "--budget-steps",
        budget,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn run(args: &[String]) -> Output {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    tinytune(&a)
}

fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

/// The last eval loss of a metrics.jsonl.
fn last_eval_loss(dir: &Path) -> f64 {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["eval_loss"].as_f64())
        .unwrap()
}

fn result<'a>(state: &'a serde_json::Value, id: &str, round: u64) -> Option<&'a serde_json::Value> {
    state["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id && r["round"] == round)
}

fn loss(r: &serde_json::Value) -> f64 {
    r["eval_loss"].as_f64().unwrap()
}

/// The parsed SVG: element tags (a series' line, drawn 2 px wide, as `series`), and every text.
struct Svg {
    tags: Vec<String>,
    texts: Vec<String>,
}

fn parse_svg(p: &Path) -> Svg {
    let text = std::fs::read_to_string(p).unwrap();
    let doc = roxmltree::Document::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    let mut tags = Vec::new();
    let mut texts = Vec::new();
    for n in doc.descendants().filter(|n| n.is_element()) {
        let wide = n.attribute("stroke-width") == Some("2");
        tags.push(match n.tag_name().name() {
            "polyline" if wide => "series".to_string(),
            t => t.to_string(),
        });
        if n.tag_name().name() == "text" {
            texts.push(n.text().unwrap_or("").trim().to_string());
        }
    }
    Svg { tags, texts }
}

impl Svg {
    fn count(&self, tag: &str) -> usize {
        self.tags.iter().filter(|t| *t == tag).count()
    }
    fn has_text(&self, s: &str) -> bool {
        self.texts.iter().any(|t| t == s)
    }
}

#[test]
fn a_sweep_ranks_stops_resumes_and_reproduces_its_best() {
    if !have_gpu() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (data, general) = write_data(tmp.path());
    let out = tmp.path().join("sweep");
    let out_s = out.display().to_string();
    let args = sweep_args(&data, &general, &out_s, "16");
    let (stdout, log) = ok(&run(&args));

    // The schedule: s0 = 16 / 8 = 2 steps, 4 trials then the best 2 for 4 steps.
    let state = read_json(&out.join("sweep.json"));
    assert_eq!(
        state["schedule"],
        serde_json::json!([{"trials": 4, "steps": 2}, {"trials": 2, "steps": 4}])
    );
    let ids: Vec<String> = state["trials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        ids,
        [
            "t01-lora",
            "t02-lora",
            "t03-prompt-tuning",
            "t04-prompt-tuning"
        ]
    );
    assert_eq!(state["results"].as_array().unwrap().len(), 6, "{state}");
    assert_eq!(log.matches("round 1/2 trial").count(), 4, "{log}");
    assert_eq!(log.matches("round 2/2 trial").count(), 2, "{log}");

    // Round 0's recorded losses are the trials' own metrics (the stopped ones keep their run).
    let r0: Vec<f64> = ids
        .iter()
        .map(|id| loss(result(&state, id, 0).unwrap()))
        .collect();
    // The two that went on have the two lowest round-0 losses; the others stopped.
    let mut order: Vec<usize> = (0..4).collect();
    order.sort_by(|&a, &b| r0[a].total_cmp(&r0[b]));
    let kept: Vec<&String> = ids
        .iter()
        .filter(|id| result(&state, id, 1).is_some())
        .collect();
    assert_eq!(kept.len(), 2);
    for &i in &order[..2] {
        assert!(kept.contains(&&ids[i]), "{ids:?} {r0:?} kept {kept:?}");
    }
    for &i in &order[2..] {
        let d = out.join("trials").join(&ids[i]);
        assert_eq!(last_eval_loss(&d), r0[i], "{}", ids[i]);
        assert!(log.contains("the others stop"), "{log}");
    }
    // The best: the lower round-1 loss, named in the output, first in the table.
    let (a, b) = (
        result(&state, kept[0], 1).unwrap(),
        result(&state, kept[1], 1).unwrap(),
    );
    let best = if loss(a) <= loss(b) { a } else { b };
    let best_id = best["id"].as_str().unwrap();
    assert_eq!(state["best"], best_id);
    assert!(stdout.contains(&format!("best: {best_id} (")), "{stdout}");
    let table: Vec<&str> = stdout.lines().collect();
    assert!(
        table[0].starts_with("trial") && table[0].contains("general loss"),
        "{stdout}"
    );
    assert!(table[2].starts_with(best_id), "{stdout}");
    assert_eq!(best["steps"], 4);
    assert!(best["eval_data"]["general"].as_f64().is_some(), "{best}");
    for k in ["n_params", "peak_bytes", "tokens_per_s"] {
        assert!(best[k].as_f64().unwrap() > 0.0, "{k}: {best}");
    }

    // The best adapter in PEFT's layout, and the command that reproduces it.
    let cfg = read_json(&out.join("best/adapter_config.json"));
    let peft_type = if best_id.contains("lora") {
        "LORA"
    } else {
        "PROMPT_TUNING"
    };
    assert_eq!(cfg["peft_type"], peft_type);
    assert!(out.join("best/adapter_model.safetensors").is_file());
    let command = std::fs::read_to_string(out.join("best/command.txt")).unwrap();
    assert_eq!(state["best_command"].as_str().unwrap(), command.trim());
    let words: Vec<String> = command.split_whitespace().map(str::to_string).collect();
    assert_eq!(&words[..2], ["tinytune", "train"], "{command}");
    assert!(command.contains("--num-steps 4"), "{command}");
    ok(&run(&words[1..]));
    let again = last_eval_loss(&out.join("best-run"));
    assert!(
        (again - loss(best)).abs() <= 1e-6 * loss(best).abs(),
        "reproduced {again}, sweep {}",
        loss(best)
    );

    // The charts: every trial's eval curve, and a bar per trial coloured by method.
    let curves = parse_svg(&out.join("plots/sweep_eval_loss.svg"));
    for (i, id) in ids.iter().enumerate() {
        assert!(
            curves.texts.iter().any(|t| t.starts_with(id.as_str())),
            "legend lacks {id} (trial {i}): {:?}",
            curves.texts
        );
    }
    // A line and a legend line per trial.
    assert_eq!(curves.count("series"), 8, "{:?}", curves.tags);
    assert!(curves.has_text("step") && curves.has_text("Sweep: eval loss of every trial"));
    let bars = parse_svg(&out.join("plots/sweep_results.svg"));
    assert!(
        bars.has_text("lora") && bars.has_text("prompt-tuning"),
        "{:?}",
        bars.texts
    );
    for id in &ids {
        assert!(bars.has_text(id), "{:?}", bars.texts);
    }
    // 4 bars + 2 legend swatches + the background and the legend box at least.
    assert!(bars.count("rect") >= 6, "{:?}", bars.tags);

    // Resume: forget one final-round run; the rerun does only that one, with the same result.
    let mut edited = state.clone();
    let forgotten = kept[1].clone();
    edited["results"]
        .as_array_mut()
        .unwrap()
        .retain(|r| !(r["id"] == forgotten.as_str() && r["round"] == 1));
    edited["best"] = serde_json::Value::Null;
    std::fs::write(out.join("sweep.json"), edited.to_string()).unwrap();
    let (stdout2, log2) = ok(&run(&args));
    assert!(log2.contains("5 runs recorded, not rerun"), "{log2}");
    assert_eq!(log2.matches("round 1/2 trial").count(), 0, "{log2}");
    assert_eq!(log2.matches("round 2/2 trial").count(), 1, "{log2}");
    assert!(
        log2.contains(&format!("round 2/2 trial {forgotten}")),
        "{log2}"
    );
    let state2 = read_json(&out.join("sweep.json"));
    assert_eq!(state2["best"], best_id);
    assert_eq!(
        loss(result(&state2, &forgotten, 1).unwrap()),
        loss(result(&state, &forgotten, 1).unwrap())
    );
    assert!(stdout2.contains(&format!("best: {best_id} (")), "{stdout2}");
    // A finished sweep reruns nothing.
    let (_, log3) = ok(&run(&args));
    assert!(log3.contains("6 runs recorded"), "{log3}");
    assert_eq!(log3.matches(" trial t0").count(), 0, "{log3}");

    // Other settings into the same folder are refused.
    let mut other = args.clone();
    let n = other.len();
    other[n - 1] = "24".into();
    let o: Vec<&str> = other.iter().map(String::as_str).collect();
    assert_fails(&o, &["sweep.json", "other settings", "--output-dir"]);
}

#[test]
fn train_and_plot_draw_the_runs_series() {
    if !have_gpu() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (data, general) = write_data(tmp.path());
    let out = tmp.path().join("run");
    let m = model();
    let g = format!("general={general}");
    let (_, log) = ok(&tinytune(&[
        "train",
        "--model",
        &m,
        "--data",
        &data,
        "--output-dir",
        out.to_str().unwrap(),
        "--seq-len",
        "32",
        "--batch-size",
        "2",
        "--num-steps",
        "4",
        "--lora-r",
        "4",
        "--eval-split",
        "2",
        "--eval-every",
        "2",
        "--eval-data",
        &g,
        "--log-steps",
    ]));
    assert!(log.contains("plots: "), "{log}");
    let loss = parse_svg(&out.join("plots/loss.svg"));
    for s in [
        "training loss",
        "eval loss",
        "eval loss: general",
        "Loss",
        "step",
    ] {
        assert!(loss.has_text(s), "{s}: {:?}", loss.texts);
    }
    // Three series, each a line and a legend line; markers at every point (4 + 3 + 3).
    assert_eq!(loss.count("series"), 6, "{:?}", loss.tags);
    assert_eq!(loss.count("circle"), 10, "{:?}", loss.tags);

    // `tinytune plot` redraws them (and lists them on stdout).
    std::fs::remove_dir_all(out.join("plots")).unwrap();
    let (stdout, _) = ok(&tinytune(&["plot", out.to_str().unwrap()]));
    let files: Vec<PathBuf> = stdout.lines().map(PathBuf::from).collect();
    assert_eq!(files.len(), 3, "{stdout}");
    for (file, legend) in [
        ("loss.svg", "training loss"),
        ("lr.svg", "learning rate"),
        ("grad_norm.svg", "gradient norm"),
    ] {
        let p = out.join("plots").join(file);
        assert!(files.contains(&p), "{stdout}");
        let svg = parse_svg(&p);
        assert!(svg.has_text(legend), "{file}: {:?}", svg.texts);
    }
    assert_eq!(parse_svg(&out.join("plots/lr.svg")).count("circle"), 4);
    // A folder with neither file.
    assert_fails(
        &["plot", tmp.path().to_str().unwrap()],
        &["neither metrics.jsonl", "sweep.json"],
    );
}

/// A sweep killed mid-run resumes: the rerun skips the runs sweep.json recorded, redoes the rest,
/// and ends with the results of an uninterrupted sweep.
#[test]
fn a_killed_sweep_resumes_with_the_same_results() {
    if !have_gpu() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (data, general) = write_data(tmp.path());
    let whole = tmp.path().join("whole");
    ok(&run(&sweep_args(
        &data,
        &general,
        whole.to_str().unwrap(),
        "16",
    )));
    let out = tmp.path().join("killed");
    let args = sweep_args(&data, &general, out.to_str().unwrap(), "16");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tinytune"))
        .args(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once two runs are recorded (and before the sweep ends).
    let recorded = |p: &Path| -> usize {
        std::fs::read_to_string(p.join("sweep.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["results"].as_array().map(Vec::len))
            .unwrap_or(0)
    };
    let t0 = std::time::Instant::now();
    while recorded(&out) < 2 {
        assert!(t0.elapsed().as_secs() < 300, "the sweep recorded nothing");
        assert!(child.try_wait().unwrap().is_none(), "the sweep ended early");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let done = recorded(&out);
    assert!((2..6).contains(&done), "{done} runs recorded at the kill");
    let (_, log) = ok(&run(&args));
    assert!(
        log.contains(&format!("{done} runs recorded, not rerun")),
        "{log}"
    );
    assert_eq!(log.matches(" trial t0").count(), 6 - done, "{log}");
    let (a, b) = (
        read_json(&whole.join("sweep.json")),
        read_json(&out.join("sweep.json")),
    );
    assert_eq!(a["best"], b["best"]);
    for r in a["results"].as_array().unwrap() {
        let id = r["id"].as_str().unwrap();
        let round = r["round"].as_u64().unwrap();
        let other = result(&b, id, round).unwrap_or_else(|| panic!("{id} round {round}: {b}"));
        assert_eq!(r["eval_loss"], other["eval_loss"], "{id} round {round}");
    }
}

/// `--budget-minutes` turns minutes into steps from a probe; `--continue-steps` trains the best
/// trial's settings to a full run.
#[test]
fn a_minutes_budget_and_continuing_the_best() {
    if !have_gpu() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (data, general) = write_data(tmp.path());
    let out = tmp.path().join("sweep");
    let mut args = sweep_args(&data, &general, out.to_str().unwrap(), "1");
    let i = args.iter().position(|a| a == "--budget-steps").unwrap();
    args.splice(
        i..i + 2,
        ["--budget-minutes".to_string(), "0.5".to_string()],
    );
    args.extend(["--continue-steps".to_string(), "3".to_string()]);
    let (stdout, log) = ok(&run(&args));
    assert!(log.contains("(a 2-step probe of t01-lora)"), "{log}");
    let state = read_json(&out.join("sweep.json"));
    let budget = state["budget_steps"].as_u64().unwrap();
    assert!(budget >= 8, "{state}");
    assert!(!out.join("probe").exists());
    let best = state["best"].as_str().unwrap();
    assert!(stdout.contains(&format!("best: {best} (")), "{stdout}");
    // The continued run: the best trial's options, 3 steps.
    let cont = out.join("continued");
    let steps: Vec<u64> = std::fs::read_to_string(cont.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(steps, [0, 1, 2, 3]);
    let command = std::fs::read_to_string(cont.join("command.txt")).unwrap();
    let best_command = std::fs::read_to_string(out.join("best/command.txt")).unwrap();
    let strip = |c: &str| -> Vec<String> {
        let w: Vec<&str> = c.split_whitespace().collect();
        let mut keep = Vec::new();
        let mut i = 0;
        while i < w.len() {
            if w[i] == "--num-steps" || w[i] == "--output-dir" {
                i += 2;
                continue;
            }
            keep.push(w[i].to_string());
            i += 1;
        }
        keep
    };
    assert_eq!(strip(&command), strip(&best_command));
    assert!(command.contains("--num-steps 3"), "{command}");
    let peft = read_json(&cont.join("adapter_config.json"))["peft_type"].clone();
    assert_eq!(
        peft,
        read_json(&out.join("best/adapter_config.json"))["peft_type"]
    );
}

/// Each bad input stops the sweep before any training, with one line that says what to change.
#[test]
fn sweep_bad_inputs_are_one_line_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, general) = write_data(tmp.path());
    let out = tmp.path().join("sweep").display().to_string();
    let with = |budget: &str, f: &dyn Fn(&mut Vec<String>)| {
        let mut a = sweep_args(&data, &general, &out, budget);
        f(&mut a);
        a
    };
    let set = |a: &mut Vec<String>, flag: &str, v: &str| {
        let i = a.iter().position(|x| x == flag).unwrap();
        a[i + 1] = v.to_string();
    };
    let check = |a: Vec<String>, mentions: &[&str]| {
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        assert_fails(&a, mentions);
    };
    // 4 trials need 4 + 2*2 = 8 steps for one step per trial and round.
    check(
        with("7", &|_| {}),
        &[
            "budget of 7 steps is too small for 4 trials",
            "at least 8 steps",
        ],
    );
    check(
        with("16", &|a| set(a, "--methods", "")),
        &["--methods is empty"],
    );
    check(
        with("16", &|a| set(a, "--methods", "lora,ia3")),
        &["unknown method \"ia3\""],
    );
    // --num-virtual-tokens and --prompt-tuning-init with LoRA alone; --lora-r and
    // --target-modules with prompt tuning alone.
    check(
        with("16", &|a| set(a, "--methods", "lora")),
        &[
            "applies to prompt-tuning",
            "--methods lora includes none of them",
        ],
    );
    check(
        with("16", &|a| set(a, "--methods", "prompt-tuning")),
        &[
            "applies to lora",
            "--methods prompt-tuning includes none of them",
        ],
    );
    check(
        with("16", &|a| a.extend(["--peft".into(), "lora".into()])),
        &["--peft", "--methods"],
    );
    check(
        with("16", &|a| a.extend(["--num-steps".into(), "5".into()])),
        &["--num-steps", "--budget-steps"],
    );
    check(
        with("16", &|a| set(a, "--eval-split", "0")),
        &["ranks trials by eval loss", "--eval-split"],
    );
    assert!(!Path::new(&out).join("sweep.json").exists());
}
