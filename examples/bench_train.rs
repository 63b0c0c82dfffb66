//! Training-step benchmark on a real model: time of the forward pass (loss only) and of a forward +
//! backward pass with LoRA (r 8, all seven projections) over every layer and over the top 8, for a
//! batch of B sequences of T tokens with a target at every position, plus the optimizer step.
//!
//! ```sh
//! cargo run --release --example bench_train -- MODEL [B] [T] [--quant none]
//! # e.g. MODEL = ~/.cache/tinytune/SmolLM2-135M-Instruct.Q4_1.gguf (bash scripts/fetch_model.sh)
//! ```

use std::time::Instant;

use tinytune::gpu::ops::optim::{self, AdamW};
use tinytune::gpu::{Gpu, GpuOptions};
use tinytune::model::{LlamaModel, Lora, LoraGpu, LoraPair, ModelSource, Peft, Quant, Workspace};

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

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(path) = args.first() else {
        eprintln!("usage: bench_train MODEL [B] [T] [--quant none]");
        std::process::exit(2);
    };
    let num = |i: usize, d: usize| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    let (b, t) = (num(1, 4), num(2, 64));
    let quant = if args.iter().any(|a| a == "none") {
        Quant::None
    } else {
        Quant::NF4
    };
    let gpu = Gpu::new_blocking(GpuOptions::default())?;
    let src = ModelSource::open(path)?;
    let model = LlamaModel::load(&gpu, &src, quant)?;
    println!("model memory: {}", model.memory());
    let v = model.config.vocab_size;
    let m = b * t;
    let ids: Vec<u32> = (0..m).map(|i| ((i * 7919 + 13) % v) as u32).collect();
    let targets: Vec<i32> = (0..m).map(|i| ((i * 104729 + 7) % v) as i32).collect();
    println!(
        "adapter: {} | model {} ({} layers) {:?} | B={b} T={t}",
        gpu.adapter.name,
        path,
        model.layers.len(),
        quant
    );
    let time = |f: &mut dyn FnMut() -> Result<(), Box<dyn std::error::Error>>| {
        f().and_then(|_| gpu.sync().map_err(Into::into))?; // warm-up (pipelines)
        let reps = 2;
        let t0 = Instant::now();
        for _ in 0..reps {
            f()?;
            gpu.sync()?;
        }
        Ok::<f64, Box<dyn std::error::Error>>(t0.elapsed().as_secs_f64() / reps as f64)
    };
    for top in [model.layers.len(), 8] {
        let lora = LoraGpu::upload(&gpu, &model, &lora_for(&model, 8, top))?;
        let ws = Workspace::new(&gpu, &model, Some(&lora), m, true)?;
        let fwd = time(&mut || {
            model.forward_loss(&gpu, &ws, Some(Peft::Lora(&lora)), &ids, &targets, b, t)?;
            Ok(())
        })?;
        let fb = time(&mut || {
            let peft = Peft::Lora(&lora);
            model.forward_backward(&gpu, &ws, peft, &ids, &targets, b, t, 1e-3, None)?;
            Ok(())
        })?;
        let n = lora.n_params;
        let flat: Vec<_> = (0..4)
            .map(|i| gpu.alloc(&format!("flat{i}"), (n * 4) as u64))
            .collect::<Result<_, _>>()?;
        let norm = gpu.alloc("norm", 4)?;
        let opt = time(&mut || {
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
            enc.submit();
            Ok(())
        })?;
        println!(
            "LoRA on the top {top:>2} layers ({n:>8} params): forward {:>7.3} s | forward+backward {:>7.3} s ({:>6.1} tok/s) | optimizer {:>6.3} s",
            fwd,
            fb,
            m as f64 / (fb + opt),
            opt
        );
    }
    Ok(())
}
