//! Training-step benchmark: time of the forward pass (loss only) and of a training step as the
//! trainer takes it (one submission: the forward and backward passes with LoRA r 8 on all seven
//! projections, the gradient norm and clipped AdamW; steps pipelined as in `tinytune train`) over
//! every layer and the top 8, for a batch of B sequences of T tokens with a target at every
//! position; on a real model file or on a published model's shapes with random weights
//! (`--config`, no download).
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
//! - `--reps N`: timed repetitions after one warm-up (default 2; the step is timed twice: host
//!   time on an idle device, then throughput pipelined).
//! - `--json`: one JSON line per run on stdout (the table goes to stderr).
//! - `--adapter`: print the adapter (`name | type | backend`) and exit.
//!
//! A JSON line has the keys `model`, `source` (`config` or `file`), `b`, `t`, `quant`,
//! `layers_adapted`, `layers`, `lora_params`, `reps`, `load_s`, `forward_s`, `step_s`,
//! `tokens_per_s` (B*T / `step_s`, steps pipelined as in `tinytune train`), `host_ms_per_step`
//! (recording and submitting one step on an idle device: the host's own cost, no GPU wait in it),
//! the mean per step of `submits`, `dispatches`, `copies`, `clears`, `blocking_reads` (waits that
//! left the GPU idle), `overlapped_reads` (waits with the next step queued), `bind_groups`,
//! `params_bytes` (each `<name>_per_step`, from `Gpu::counters`), `model_bytes` (device
//! buffers after loading), `peak_bytes` (the most alive during the run, model included),
//! `host_peak_rss_bytes` (the process's VmHWM so far, Linux; else null), `adapter`,
//! `adapter_type`, `backend`.

use std::time::{Duration, Instant};

use tinytune::gpu::{Gpu, GpuOptions};
use tinytune::model::{
    LlamaConfig, LlamaModel, Lora, LoraGpu, LoraPair, ModelSource, Peft, Quant, Workspace,
};
use tinytune::train::{
    Dataset, Example, LoraModule, ScheduleKind, Start, Stop, TrainConfig, Trainer,
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

/// A trainer over `b` x `t` synthetic examples (a target at every position): LoRA r 8 (alpha 16)
/// on the seven projections of the top `top` layers, PEFT's init, AdamW with clipping, `steps`
/// optimizer steps.
fn trainer<'g>(
    gpu: &'g Gpu,
    model: &'g LlamaModel,
    b: usize,
    t: usize,
    top: usize,
    steps: usize,
) -> BoxResult<Trainer<'g>> {
    let v = model.config.vocab_size;
    let n_layers = model.layers.len();
    let examples: Vec<Example> = (0..4 * b)
        .map(|e| {
            let ids: Vec<u32> = (0..t)
                .map(|i| ((e * 131 + i * 7919 + 13) % v) as u32)
                .collect();
            Example {
                labels: ids.iter().map(|&x| x as i32).collect(),
                input_ids: ids,
                len: t,
            }
        })
        .collect();
    let data = Dataset {
        seq_len: t,
        examples,
        stats: Default::default(),
    };
    let mut config = TrainConfig {
        batch_size: b,
        seq_len: t,
        stop: Stop::Steps(steps as u64),
        lr: 1e-4,
        schedule: ScheduleKind::Constant,
        max_grad_norm: 1.0,
        ..TrainConfig::default()
    };
    config.lora.r = 8;
    config.lora.alpha = 16.0;
    config.lora.dropout = 0.0;
    config.lora.targets = LoraModule::ALL.to_vec();
    config.lora.layers_to_transform =
        (top < n_layers).then(|| (n_layers - top..n_layers).collect());
    Ok(Trainer::new(
        gpu,
        model,
        config,
        data,
        Start::Fresh,
        Box::new(|| 0.0),
    )?)
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
        "adapter: {ad} | kernels {} | model {} ({n_layers} layers{}) quant {quant} | loaded in \
         {load_s:.1} s, {:.1} MiB of device buffers",
        gpu.kernel_info(),
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
            // The forward pass alone (loss only), on its own adapter and workspace.
            let forward_s = {
                let lora = LoraGpu::upload(&gpu, &model, &lora_for(&model, 8, top))?;
                let ws = Workspace::new(&gpu, &model, Some(&lora), m, true)?;
                let forward = || -> BoxResult<()> {
                    model.forward_loss(&gpu, &ws, Some(Peft::Lora(&lora)), &ids, &targets, b, t)?;
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
                t0.elapsed().as_secs_f64() / args.reps as f64
            };
            // Training steps as `tinytune train` takes them: the trainer's one submission per
            // optimizer step (forward, backward, gradient norm, clipped AdamW), pipelined like the
            // session (step N+1 is submitted before step N's report is taken).
            gpu.reset_peak_memory();
            let mut tr = trainer(&gpu, &model, b, t, top, 2 * args.reps + 1)?;
            let n = tr.n_params();
            pollster::block_on(tr.step())?.ok_or("no warm-up step")?;
            // Host time: recording and submitting one step on an idle device, so that it holds
            // no wait for the GPU (a queue already holding work can block in `queue.submit`:
            // lavapipe does from the third step in flight) and, on lavapipe, where the "GPU" is
            // the CPU too, nothing competes for the cores.
            let mut host = Duration::ZERO;
            for _ in 0..args.reps {
                gpu.sync()?;
                let h0 = Instant::now();
                tr.submit_step()?;
                host += h0.elapsed();
                pollster::block_on(tr.take_report())?;
            }
            // Throughput and counters: steps pipelined as the session takes them.
            let c0 = gpu.counters();
            let t0 = Instant::now();
            for _ in 0..args.reps {
                tr.submit_step()?;
                if tr.in_flight() > 1 {
                    pollster::block_on(tr.take_report())?;
                }
            }
            while tr.in_flight() > 0 {
                pollster::block_on(tr.take_report())?;
            }
            let step_s = t0.elapsed().as_secs_f64() / args.reps as f64;
            let c = gpu.counters().delta(&c0);
            let per = |x: u64| x as f64 / args.reps as f64;
            let peak_bytes = gpu.memory().peak_bytes;
            let host_ms = host.as_secs_f64() * 1e3 / args.reps as f64;
            let tokens_per_s = m as f64 / step_s;
            say(format!(
                "B={b} T={t} LoRA on the top {top:>2} layers ({n:>8} params): forward {forward_s:>7.3} s \
                 | step {step_s:>7.3} s ({tokens_per_s:>7.1} tok/s, host {host_ms:.1} ms) \
                 | {} dispatches, {} submits, {} copies, {} blocking reads ({} overlapped) per step \
                 | peak {:.1} MiB",
                per(c.dispatches),
                per(c.submits),
                per(c.copies),
                per(c.blocking_reads),
                per(c.overlapped_reads),
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
                    "overlapped_reads_per_step": per(c.overlapped_reads),
                    "bind_groups_per_step": per(c.bind_groups_created),
                    "params_bytes_per_step": per(c.params_bytes),
                    "model_bytes": model_bytes,
                    "peak_bytes": peak_bytes,
                    "host_peak_rss_bytes": host_peak_rss(),
                    "adapter": ad.name,
                    "adapter_type": ad.device_type,
                    "backend": ad.backend,
                    "kernels": gpu.kernel_info().to_string(),
                });
                println!("{line}");
            }
        }
    }
    Ok(())
}
