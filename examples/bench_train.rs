//! Training-step benchmark: time of the forward pass (loss only) and of a training step (the
//! forward and backward passes with LoRA r 8 on all seven projections, then the optimizer: gradient
//! copy, norm, clipped AdamW, parameter copy, gradient zeroing) over every layer and the top 8, for a
//! batch of B sequences of T tokens with a target at every position; on a real model file or on
//! a published model's shapes with random weights (`--config`, no download).
//!
//! ```sh
//! cargo run --release --example bench_train -- MODEL [B] [T] [options]
//! # e.g. MODEL = ~/.cache/tinytune/SmolLM2-135M-Instruct.Q4_1.gguf (bash scripts/fetch_model.sh)
//! cargo run --release --example bench_train -- --config llama3.2-1b 1 16 --json
//! ```
//!
//! Options:
//! - `--config NAME`: `smollm2-135m`, `qwen2.5-0.5b` or `llama3.2-1b` (`LlamaConfig::preset`)
//!   with seeded random weights (`ModelSource::random`), instead of MODEL.
//! - `--shapes BxT[,BxT...]`: several batch shapes on one loaded model (instead of B T).
//! - `--quant nf4|none`: the frozen linears in NF4 (QLoRA, the default) or f32 (LoRA).
//! - `--layers all|N[,...]`: adapt every layer and/or the top N (default `all,8`).
//! - `--reps N`: timed repetitions after one warm-up (default 2).
//! - `--json`: one JSON line per run on stdout (the table goes to stderr).
//! - `--adapter`: print the adapter (`name | type | backend`) and exit.
//!
//! A JSON line has the keys `model`, `source` (`config` or `file`), `b`, `t`, `quant`,
//! `layers_adapted`, `layers`, `lora_params`, `reps`, `load_s`, `forward_s`, `step_s`,
//! `tokens_per_s` (B*T / `step_s`), `host_ms_per_step`, `submits_per_step`,
//! `dispatches_per_step`, `copies_per_step`, `clears_per_step`, `blocking_reads_per_step`,
//! `bind_groups_per_step`, `params_bytes_per_step` (from `Gpu::counters`), `model_bytes` (device
//! buffers after loading), `peak_bytes` (the most alive during the run, model included),
//! `host_peak_rss_bytes` (the process's VmHWM so far, Linux; else null), `adapter`,
//! `adapter_type`, `backend`.

use std::time::{Duration, Instant};

use tinytune::gpu::ops::optim::{self, AdamW};
use tinytune::gpu::{Gpu, GpuOptions};
use tinytune::model::{
    LlamaConfig, LlamaModel, Lora, LoraGpu, LoraPair, ModelSource, Peft, Quant, Workspace,
};

type BoxResult<T> = Result<T, Box<dyn std::error::Error>>;

const USAGE: &str = "usage: bench_train (MODEL | --config NAME) [B] [T] [--shapes BxT,...] \
                     [--quant nf4|none] [--layers all|N,...] [--reps N] [--json] [--adapter]";

/// Seed of `--config`'s random weights.
const SEED: u64 = 0x7137;

/// What the command line asks for.
struct Args {
    /// A model file / folder, or a preset name with `from_config`.
    model: String,
    from_config: bool,
    shapes: Vec<(usize, usize)>,
    quant: Quant,
    /// `None` = every layer.
    layers: Vec<Option<usize>>,
    reps: usize,
    json: bool,
    adapter_only: bool,
}

fn parse_usize(what: &str, s: &str) -> BoxResult<usize> {
    match s.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{what}: '{s}' is not a positive integer").into()),
    }
}

fn parse_args(argv: &[String]) -> BoxResult<Args> {
    let mut positional = Vec::new();
    let mut config = None;
    let mut shapes = None;
    let mut quant = Quant::NF4;
    let mut layers = vec![None, Some(8)];
    let mut reps = 2;
    let (mut json, mut adapter_only) = (false, false);
    let mut it = argv.iter();
    while let Some(a) = it.next() {
        let mut value = |flag: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match a.as_str() {
            "--config" => config = Some(value("--config")?),
            "--shapes" => {
                let v = value("--shapes")?;
                let parsed = v
                    .split(',')
                    .map(|s| {
                        let (b, t) = s
                            .split_once(['x', 'X'])
                            .ok_or_else(|| format!("--shapes: '{s}' is not BxT"))?;
                        Ok((parse_usize("--shapes B", b)?, parse_usize("--shapes T", t)?))
                    })
                    .collect::<BoxResult<Vec<_>>>()?;
                shapes = Some(parsed);
            }
            "--quant" => {
                quant = match value("--quant")?.as_str() {
                    "nf4" => Quant::NF4,
                    "none" => Quant::None,
                    other => return Err(format!("--quant: '{other}' (nf4 or none)").into()),
                }
            }
            // The old spelling: a bare `none` anywhere.
            "none" => quant = Quant::None,
            "--layers" => {
                layers = value("--layers")?
                    .split(',')
                    .map(|s| match s {
                        "all" => Ok(None),
                        n => parse_usize("--layers", n).map(Some),
                    })
                    .collect::<BoxResult<Vec<_>>>()?;
            }
            "--reps" => reps = parse_usize("--reps", &value("--reps")?)?,
            "--json" => json = true,
            "--adapter" => adapter_only = true,
            "-h" | "--help" => return Err(USAGE.into()),
            s if s.starts_with("--") => return Err(format!("unknown option {s}\n{USAGE}").into()),
            s => positional.push(s.to_string()),
        }
    }
    let (model, from_config, nums) = match config {
        Some(c) => (c, true, &positional[..]),
        None if adapter_only => (String::new(), false, &positional[..]),
        None => match positional.split_first() {
            Some((m, rest)) => (m.clone(), false, rest),
            None => return Err(USAGE.into()),
        },
    };
    if nums.len() > 2 {
        return Err(format!("unexpected argument '{}'\n{USAGE}", nums[2]).into());
    }
    let b = nums.first().map(|s| parse_usize("B", s)).transpose()?;
    let t = nums.get(1).map(|s| parse_usize("T", s)).transpose()?;
    let shapes = match shapes {
        Some(s) if b.is_none() => s,
        Some(_) => return Err("give either B T or --shapes, not both".into()),
        None => vec![(b.unwrap_or(4), t.unwrap_or(64))],
    };
    Ok(Args {
        model,
        from_config,
        shapes,
        quant,
        layers,
        reps,
        json,
        adapter_only,
    })
}

fn lora_for(model: &LlamaModel, r: usize, top: usize) -> Lora {
    let n = model.layers.len();
    let layers = (0..n)
        .map(|i| {
            std::array::from_fn(|t| {
                (i + top >= n).then(|| {
                    let lin = &model.layers[i].linears[t];
                    LoraPair::new(r, vec![0.01; r * lin.n_in], vec![0.01; lin.n_out * r])
                })
            })
        })
        .collect();
    Lora {
        r,
        scale: 2.0,
        layers,
    }
}

/// The process's peak resident set (`VmHWM`), where the OS says it.
fn host_peak_rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let args = match parse_args(&argv) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(&args) {
        eprintln!("bench_train: {e}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> BoxResult<()> {
    let gpu = Gpu::new_blocking(GpuOptions::default())?;
    let ad = &gpu.adapter;
    if args.adapter_only {
        println!("{} | {} | {}", ad.name, ad.device_type, ad.backend);
        return Ok(());
    }
    // The table goes to stdout, or to stderr when stdout carries the JSON lines.
    let say = |line: String| {
        if args.json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    };
    let t_load = Instant::now();
    let src = if args.from_config {
        ModelSource::random(&LlamaConfig::preset(&args.model)?, SEED)?
    } else {
        ModelSource::open(&args.model)?
    };
    let model = LlamaModel::load(&gpu, &src, args.quant)?;
    gpu.sync()?;
    let load_s = t_load.elapsed().as_secs_f64();
    drop(src);
    let model_bytes = gpu.memory().live_bytes;
    let quant = match args.quant {
        Quant::None => "none",
        Quant::Nf4 { .. } => "nf4",
    };
    let n_layers = model.layers.len();
    say(format!("model memory: {}", model.memory()));
    say(format!(
        "adapter: {ad} | model {} ({n_layers} layers{}) quant {quant} | loaded in {load_s:.1} s, \
         {:.1} MiB of device buffers",
        args.model,
        if args.from_config {
            ", random weights"
        } else {
            ""
        },
        model_bytes as f64 / (1 << 20) as f64
    ));
    let v = model.config.vocab_size;
    for &(b, t) in &args.shapes {
        let m = b * t;
        let ids: Vec<u32> = (0..m).map(|i| ((i * 7919 + 13) % v) as u32).collect();
        let targets: Vec<i32> = (0..m).map(|i| ((i * 104729 + 7) % v) as i32).collect();
        for &top in &args.layers {
            let top = top.unwrap_or(n_layers).min(n_layers);
            gpu.reset_peak_memory();
            let lora = LoraGpu::upload(&gpu, &model, &lora_for(&model, 8, top))?;
            let ws = Workspace::new(&gpu, &model, Some(&lora), m, true)?;
            let n = lora.n_params;
            let flat: Vec<_> = (0..4)
                .map(|i| gpu.alloc(&format!("flat{i}"), (n * 4) as u64))
                .collect::<Result<_, _>>()?;
            let norm = gpu.alloc("norm", 4)?;
            let forward = || -> BoxResult<()> {
                model.forward_loss(&gpu, &ws, Some(Peft::Lora(&lora)), &ids, &targets, b, t)?;
                Ok(())
            };
            // One training step as the trainer records it, submitted but not waited on.
            let step = || -> BoxResult<()> {
                let peft = Peft::Lora(&lora);
                model.forward_backward(&gpu, &ws, peft, &ids, &targets, b, t, 1e-3, None)?;
                let mut enc = gpu.encoder();
                lora.copy_grads_to(&mut enc, &flat[1])?;
                optim::grad_norm(&mut enc, &flat[1], n, &norm)?;
                optim::adamw_step(
                    &mut enc,
                    &flat[0],
                    &flat[1],
                    &flat[2],
                    &flat[3],
                    n,
                    1,
                    &AdamW {
                        lr: 1e-4,
                        beta1: 0.9,
                        beta2: 0.999,
                        eps: 1e-8,
                        weight_decay: 0.0,
                    },
                    Some((1.0, &norm)),
                )?;
                lora.copy_params_from(&mut enc, &flat[0])?;
                lora.zero_grads(&mut enc);
                enc.submit();
                Ok(())
            };
            // Warm-up (pipelines compile), then the timed repetitions.
            forward()?;
            gpu.sync()?;
            let t0 = Instant::now();
            for _ in 0..args.reps {
                forward()?;
                gpu.sync()?;
            }
            let forward_s = t0.elapsed().as_secs_f64() / args.reps as f64;
            step()?;
            gpu.sync()?;
            let c0 = gpu.counters();
            let mut host = Duration::ZERO;
            let t0 = Instant::now();
            for _ in 0..args.reps {
                // Host time: recording and submitting the step, without waiting on the device
                // (on lavapipe the "GPU" is the CPU too, so the two compete for the same cores).
                let h0 = Instant::now();
                step()?;
                host += h0.elapsed();
                gpu.sync()?;
            }
            let step_s = t0.elapsed().as_secs_f64() / args.reps as f64;
            let c = gpu.counters().delta(&c0);
            let per = |x: u64| x / args.reps as u64;
            let peak_bytes = gpu.memory().peak_bytes;
            let host_ms = host.as_secs_f64() * 1e3 / args.reps as f64;
            let tokens_per_s = m as f64 / step_s;
            say(format!(
                "B={b} T={t} LoRA on the top {top:>2} layers ({n:>8} params): forward {forward_s:>7.3} s \
                 | step {step_s:>7.3} s ({tokens_per_s:>7.1} tok/s, host {host_ms:.1} ms) \
                 | {} dispatches, {} submits, {} copies, {} blocking reads per step \
                 | peak {:.1} MiB",
                per(c.dispatches),
                per(c.submits),
                per(c.copies),
                per(c.blocking_reads),
                peak_bytes as f64 / (1 << 20) as f64
            ));
            if args.json {
                let line = serde_json::json!({
                    "model": args.model,
                    "source": if args.from_config { "config" } else { "file" },
                    "b": b,
                    "t": t,
                    "quant": quant,
                    "layers_adapted": top,
                    "layers": n_layers,
                    "lora_params": n,
                    "reps": args.reps,
                    "load_s": load_s,
                    "forward_s": forward_s,
                    "step_s": step_s,
                    "tokens_per_s": tokens_per_s,
                    "host_ms_per_step": host_ms,
                    "submits_per_step": per(c.submits),
                    "dispatches_per_step": per(c.dispatches),
                    "copies_per_step": per(c.copies),
                    "clears_per_step": per(c.clears),
                    "blocking_reads_per_step": per(c.blocking_reads),
                    "bind_groups_per_step": per(c.bind_groups_created),
                    "params_bytes_per_step": per(c.params_bytes),
                    "model_bytes": model_bytes,
                    "peak_bytes": peak_bytes,
                    "host_peak_rss_bytes": host_peak_rss(),
                    "adapter": ad.name,
                    "adapter_type": ad.device_type,
                    "backend": ad.backend,
                });
                println!("{line}");
            }
        }
    }
    Ok(())
}
