//! Kernel benchmark: time, GFLOP/s and GB/s of every kernel on linear-layer shapes of SmolLM2-135M,
//! Qwen2.5-0.5B and Llama-3.2-1B (T = 1, 256 and 2048; causal attention of their heads at T = 256
//! and 2048), beside the same shape through the plain-loop
//! CPU reference (single thread), with the adapter name — a table to compare across machines.
//!
//! ```sh
//! cargo run --release --example bench_kernels              # full shapes on a GPU, tiny ones on a CPU adapter
//! cargo run --release --example bench_kernels -- --tiny    # tiny shapes (lavapipe)
//! cargo run --release --example bench_kernels -- --full    # full shapes anywhere
//! cargo run --release --example bench_kernels -- --kernels all   # one table per kernel variant (cpu, gpu)
//! ```
//! The CPU reference runs only where it takes less than about 2 GFLOP (`--reference-all` for every row).
//! Each kernel's GFLOP/s is also given as a percentage of the device's measured f32 peak (the
//! `probe/fma_peak` FMA loop).

use std::time::Instant;

use tinytune::gpu::ops::{lora, nf4, nn, optim, probe};
use tinytune::gpu::{Gpu, GpuBuffer, GpuOptions, KernelSet};
use tinytune::reference as r;
use tinytune::reference::nf4::Nf4Tensor;

struct Layer {
    model: &'static str,
    name: &'static str,
    k: usize, // in features
    n: usize, // out features
}

const FULL: &[Layer] = &[
    Layer {
        model: "SmolLM2-135M",
        name: "q_proj",
        k: 576,
        n: 576,
    },
    Layer {
        model: "SmolLM2-135M",
        name: "up_proj",
        k: 576,
        n: 1536,
    },
    Layer {
        model: "SmolLM2-135M",
        name: "down_proj",
        k: 1536,
        n: 576,
    },
    Layer {
        model: "Qwen2.5-0.5B",
        name: "q_proj",
        k: 896,
        n: 896,
    },
    Layer {
        model: "Qwen2.5-0.5B",
        name: "up_proj",
        k: 896,
        n: 4864,
    },
    Layer {
        model: "Llama-3.2-1B",
        name: "q_proj",
        k: 2048,
        n: 2048,
    },
    Layer {
        model: "Llama-3.2-1B",
        name: "up_proj",
        k: 2048,
        n: 8192,
    },
    Layer {
        model: "Llama-3.2-1B",
        name: "down_proj",
        k: 8192,
        n: 2048,
    },
];

const TINY: &[Layer] = &[
    Layer {
        model: "SmolLM2-135M",
        name: "q_proj",
        k: 576,
        n: 576,
    },
    Layer {
        model: "SmolLM2-135M",
        name: "up_proj",
        k: 576,
        n: 1536,
    },
];

const LORA_R: usize = 16;

struct Row {
    kernel: &'static str,
    shape: String,
    gpu_ms: f64,
    flops: f64,
    bytes: f64,
    ref_ms: Option<f64>,
}

fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1
        })
        .collect()
}

/// Median wall time in ms of `f` (recorded into one encoder, submitted and waited for), after a warm-up.
fn time_gpu(gpu: &Gpu, mut f: impl FnMut(&mut tinytune::gpu::Encoder)) -> f64 {
    let mut run = || {
        let t = Instant::now();
        let mut enc = gpu.encoder();
        f(&mut enc);
        enc.submit();
        gpu.sync().expect("device error");
        t.elapsed().as_secs_f64() * 1e3
    };
    run();
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < 3 || (times.len() < 20 && start.elapsed().as_secs_f64() < 1.0) {
        times.push(run());
    }
    times.sort_by(|a, b| a.total_cmp(b));
    times[times.len() / 2]
}

fn time_ref(enabled: bool, f: impl FnOnce()) -> Option<f64> {
    if !enabled {
        return None;
    }
    let t = Instant::now();
    f();
    Some(t.elapsed().as_secs_f64() * 1e3)
}

fn buf(gpu: &Gpu, label: &str, v: &[f32]) -> GpuBuffer {
    gpu.upload(label, v).expect("upload")
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `--kernels cpu|gpu|all`: the variants to measure (default: the one the device picks).
    let sets: Vec<Option<KernelSet>> = match args
        .iter()
        .position(|a| a == "--kernels")
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
    {
        None => vec![None],
        Some("all") => KernelSet::ALL.into_iter().map(Some).collect(),
        Some(s) => match KernelSet::parse(s) {
            Some(k) => vec![Some(k)],
            None => {
                eprintln!("error: --kernels takes cpu, gpu or all, not {s:?}");
                std::process::exit(2)
            }
        },
    };
    for kernels in sets {
        let gpu = Gpu::new_blocking(GpuOptions {
            kernels,
            ..GpuOptions::default()
        })
        .unwrap_or_else(|e| {
            eprintln!("error: {e}");
            std::process::exit(1)
        });
        bench(&gpu, &args);
    }
}

/// Measures every kernel on `gpu` and prints the table.
fn bench(gpu: &Gpu, args: &[String]) {
    let cpu_adapter = gpu.adapter.device_type == "Cpu";
    let tiny =
        args.iter().any(|a| a == "--tiny") || (cpu_adapter && !args.iter().any(|a| a == "--full"));
    let ref_all = args.iter().any(|a| a == "--reference-all");
    let (layers, ts): (&[Layer], &[usize]) = if tiny {
        (TINY, &[1, 64])
    } else {
        (FULL, &[1, 256, 2048])
    };
    let mut rows: Vec<Row> = Vec::new();

    for l in layers {
        let (k, n) = (l.k, l.n);
        let w = rand_vec(n * k, 1);
        let wq = Nf4Tensor::quantize(&w, 64, true);
        let w_dq = wq.dequantize();
        let wb = buf(gpu, "w", &w);
        let wn = nf4::Nf4Weight::upload(gpu, "w", &device_form(&wq)).expect("upload nf4");
        let tag = |t: usize| format!("{} {} T={t} K={k} N={n}", l.model, l.name);

        // Quantization of the whole weight (once per model load).
        let deq = gpu.alloc("deq", (n * k * 4) as u64).expect("alloc");
        rows.push(Row {
            kernel: "nf4/quantize (+double quant)",
            shape: format!("{} {} {}x{}", l.model, l.name, n, k),
            gpu_ms: time_gpu(gpu, |enc| {
                nf4::quantize(enc, "wq", &wb, n * k, 64, true).expect("quantize");
            }),
            flops: 0.0,
            bytes: (n * k * 4 + n * k / 2 + n * k / 64) as f64,
            ref_ms: time_ref(true, || {
                std::hint::black_box(Nf4Tensor::quantize(&w, 64, true));
            }),
        });
        rows.push(Row {
            kernel: "nf4/dequantize",
            shape: format!("{} {} {}x{}", l.model, l.name, n, k),
            gpu_ms: time_gpu(gpu, |enc| {
                nf4::dequantize(enc, &wn, &deq).expect("dequantize")
            }),
            flops: 0.0,
            bytes: (n * k * 4 + n * k / 2 + n * k / 64) as f64,
            ref_ms: time_ref(true, || {
                std::hint::black_box(wq.dequantize());
            }),
        });

        for &t in ts {
            let m = t;
            let x = rand_vec(m * k, 2);
            let dy_h = rand_vec(m * n, 3);
            let xb = buf(gpu, "x", &x);
            let yb = gpu.alloc("y", (m * n * 4) as u64).expect("alloc");
            let dyb = buf(gpu, "dy", &dy_h);
            let dxb = gpu.alloc("dx", (m * k * 4) as u64).expect("alloc");
            let mm_flops = 2.0 * (m * n * k) as f64;
            let ref_ok = ref_all || mm_flops < 2e9;
            rows.push(Row {
                kernel: "nn/matmul_fwd (f32 W)",
                shape: tag(t),
                gpu_ms: time_gpu(gpu, |enc| {
                    nn::matmul_fwd(enc, &xb, &wb, &yb, nn::MatmulShape { m, k, n }, 1.0, false)
                        .expect("matmul")
                }),
                flops: mm_flops,
                bytes: 4.0 * (m * k + n * k + m * n) as f64,
                ref_ms: time_ref(ref_ok, || {
                    std::hint::black_box(r::nn::matmul_fwd(&x, &w, m, k, n));
                }),
            });
            let nf4_bytes = 4.0 * (m * k + m * n) as f64 + (n * k) as f64 * (0.5 + 1.0 / 64.0);
            rows.push(Row {
                kernel: "nf4/matmul_fwd",
                shape: tag(t),
                gpu_ms: time_gpu(gpu, |enc| {
                    nf4::matmul_fwd(enc, &xb, &wn, &yb, nf4::MatmulShape { m, k, n }, 1.0, false)
                        .expect("matmul")
                }),
                flops: mm_flops,
                bytes: nf4_bytes,
                ref_ms: time_ref(ref_ok, || {
                    std::hint::black_box(r::nn::matmul_fwd(&x, &wq.dequantize(), m, k, n));
                }),
            });
            rows.push(Row {
                kernel: "nf4/matmul_bwd_input",
                shape: tag(t),
                gpu_ms: time_gpu(gpu, |enc| {
                    nf4::matmul_bwd_input(enc, &dyb, &wn, &dxb, nf4::MatmulShape { m, k, n }, false)
                        .expect("bwd")
                }),
                flops: mm_flops,
                bytes: nf4_bytes,
                ref_ms: time_ref(ref_ok, || {
                    std::hint::black_box(r::nn::matmul_bwd_input(&dy_h, &w_dq, m, k, n));
                }),
            });

            let rr = LORA_R;
            let a = rand_vec(rr * k, 4);
            let b = rand_vec(n * rr, 5);
            let (ab, bb) = (buf(gpu, "lora_A", &a), buf(gpu, "lora_B", &b));
            let hb = gpu.alloc("h", (m * rr * 4) as u64).expect("alloc");
            let dab = gpu.alloc("dA", (rr * k * 4) as u64).expect("alloc");
            let dbb = gpu.alloc("dB", (n * rr * 4) as u64).expect("alloc");
            let dhb = gpu.alloc("dH", (m * rr * 4) as u64).expect("alloc");
            rows.push(Row {
                kernel: "lora/adapter_fwd (R=16)",
                shape: tag(t),
                gpu_ms: time_gpu(gpu, |enc| {
                    lora::adapter_fwd(
                        enc,
                        &xb,
                        &ab,
                        &bb,
                        &hb,
                        &yb,
                        lora::LoraShape {
                            m,
                            k,
                            n,
                            r: rr,
                            scale: 2.0,
                        },
                    )
                    .expect("lora fwd")
                }),
                flops: 2.0 * (m * rr * (k + n)) as f64,
                bytes: 4.0 * (m * k + rr * k + n * rr + 2 * m * rr + 2 * m * n) as f64,
                ref_ms: time_ref(true, || {
                    std::hint::black_box(r::lora::adapter_fwd(&x, &a, &b, m, k, n, rr, 2.0));
                }),
            });
            let h = r::lora::adapter_fwd(&x, &a, &b, m, k, n, rr, 2.0).0;
            rows.push(Row {
                kernel: "lora/adapter_bwd (R=16)",
                shape: tag(t),
                gpu_ms: time_gpu(gpu, |enc| {
                    lora::adapter_bwd(
                        enc,
                        &xb,
                        &hb,
                        &dyb,
                        &ab,
                        &bb,
                        &dab,
                        &dbb,
                        &dxb,
                        &dhb,
                        lora::LoraShape {
                            m,
                            k,
                            n,
                            r: rr,
                            scale: 2.0,
                        },
                    )
                    .expect("lora bwd")
                }),
                flops: 4.0 * (m * rr * (k + n)) as f64,
                bytes: 4.0 * (2 * m * n + 2 * m * k + 3 * m * rr + 3 * rr * k + 3 * n * rr) as f64,
                ref_ms: time_ref(true, || {
                    std::hint::black_box(r::lora::adapter_bwd(
                        &x, &h, &dy_h, &a, &b, m, k, n, rr, 2.0,
                    ));
                }),
            });
        }
    }

    // Causal attention of the three configs (one sequence; every head size is 64).
    let heads: &[(&str, usize, usize)] = if tiny {
        &[("SmolLM2-135M", 9, 3)]
    } else {
        &[
            ("SmolLM2-135M", 9, 3),
            ("Qwen2.5-0.5B", 14, 2),
            ("Llama-3.2-1B", 32, 8),
        ]
    };
    let att_ts: &[usize] = if tiny { &[64] } else { &[256, 2048] };
    for &(model, h, kvh) in heads {
        for &t in att_ts {
            let d = 64;
            let (nq, nk) = (t * h * d, t * kvh * d);
            let (q, k, v) = (rand_vec(nq, 8), rand_vec(nk, 9), rand_vec(nk, 10));
            let dout = rand_vec(nq, 11);
            let scale = 1.0 / (d as f32).sqrt();
            let (qb, kb, vb, gb) = (
                buf(gpu, "q", &q),
                buf(gpu, "k", &k),
                buf(gpu, "v", &v),
                buf(gpu, "dout", &dout),
            );
            let ob = gpu.alloc("o", (nq * 4) as u64).expect("alloc");
            let lb = gpu.alloc("lse", (t * h * 4) as u64).expect("alloc");
            let dqb = gpu.alloc("dq", (nq * 4) as u64).expect("alloc");
            let dkb = gpu.alloc("dk", (nk * 4) as u64).expect("alloc");
            let dvb = gpu.alloc("dv", (nk * 4) as u64).expect("alloc");
            let shape = nn::AttentionShape {
                b: 1,
                tq: t,
                tk: t,
                h,
                kvh,
                d,
                scale,
            };
            // One causal (T×T)/2 product per matmul: the forward does 2 (scores, values), the
            // backward 5 (scores again, dO·vᵀ, dv, dk, dq).
            let mm = 2.0 * (t * (t + 1) / 2 * d * h) as f64;
            let bytes = 4.0 * (2 * nq + 2 * nk) as f64;
            let ref_ok = ref_all || 2.0 * mm < 2e9;
            let tag = format!("{model} H={h} KVH={kvh} D={d} T={t}");
            rows.push(Row {
                kernel: "nn/attention_fwd",
                shape: tag.clone(),
                gpu_ms: time_gpu(gpu, |enc| {
                    nn::attention_fwd(enc, &qb, &kb, &vb, &ob, &lb, shape).expect("attention")
                }),
                flops: 2.0 * mm,
                bytes,
                ref_ms: time_ref(ref_ok, || {
                    std::hint::black_box(r::nn::attention_fwd(
                        &q, &k, &v, 1, t, t, h, kvh, d, scale,
                    ));
                }),
            });
            rows.push(Row {
                kernel: "nn/attention_bwd",
                shape: tag,
                gpu_ms: time_gpu(gpu, |enc| {
                    nn::attention_bwd(enc, &gb, &qb, &kb, &vb, &ob, &lb, &dqb, &dkb, &dvb, shape)
                        .expect("attention bwd")
                }),
                flops: 5.0 * mm,
                bytes: 2.0 * bytes,
                ref_ms: time_ref(ref_ok && 5.0 * mm < 2e9, || {
                    std::hint::black_box(r::nn::attention_bwd(
                        &dout, &q, &k, &v, 1, t, t, h, kvh, d, scale,
                    ));
                }),
            });
        }
    }

    // The optimizer over a flat buffer the size of SmolLM2-135M's all-linear LoRA at R=16 (~4.9M).
    let np = if tiny { 1 << 20 } else { 4_884_480 };
    let p = rand_vec(np, 6);
    let g = rand_vec(np, 7);
    let (pb, gb) = (buf(gpu, "params", &p), buf(gpu, "grads", &g));
    let mb = gpu.alloc("m", (np * 4) as u64).expect("alloc");
    let vb = gpu.alloc("v", (np * 4) as u64).expect("alloc");
    let norm = gpu.alloc("norm", 4).expect("alloc");
    let cfg = optim::AdamW::default();
    let rcfg = r::optim::AdamW::default();
    rows.push(Row {
        kernel: "optim/grad_norm",
        shape: format!("n={np}"),
        gpu_ms: time_gpu(gpu, |enc| {
            optim::grad_norm(enc, &gb, np, &norm).expect("norm")
        }),
        flops: 2.0 * np as f64,
        bytes: 4.0 * np as f64,
        ref_ms: time_ref(true, || {
            std::hint::black_box(r::optim::grad_norm(&g));
        }),
    });
    let mut step = 0u32;
    rows.push(Row {
        kernel: "optim/adamw_step (+clip)",
        shape: format!("n={np}"),
        gpu_ms: time_gpu(gpu, |enc| {
            step += 1;
            optim::adamw_step(enc, &pb, &gb, &mb, &vb, &norm, np, step, &cfg, Some(1.0))
                .expect("adamw")
        }),
        flops: 16.0 * np as f64,
        bytes: 28.0 * np as f64,
        ref_ms: time_ref(true, || {
            let (mut p2, mut m2, mut v2) = (p.clone(), vec![0f32; np], vec![0f32; np]);
            r::optim::adamw_step(&mut p2, &g, &mut m2, &mut v2, 1, &rcfg, Some(1.0));
            std::hint::black_box(p2);
        }),
    });

    // The arithmetic peak: the FMA-loop probe, sized to run for a while on either kind of adapter.
    let (pn, piters) = if cpu_adapter {
        (1 << 16, 256)
    } else {
        (1 << 22, 4096)
    };
    let pb = gpu.alloc("probe", (pn * 4) as u64).expect("alloc");
    let peak_ms = time_gpu(gpu, |enc| {
        probe::fma_peak(enc, &pb, pn, piters).expect("probe")
    });
    let peak = probe::fma_peak_flops(pn, piters) / peak_ms / 1e6;

    println!("tinytune kernel benchmark");
    println!("adapter: {} | kernels {}", gpu.adapter, gpu.kernel_info());
    println!(
        "peak: {peak:.1} GFLOP/s f32 (probe/fma_peak: {pn} invocations x {piters} rounds of 8 vec4 multiply-adds, {peak_ms:.2} ms)"
    );
    println!(
        "shapes: {} (R={LORA_R} for LoRA); CPU reference: plain loops, one thread\n",
        if tiny { "tiny" } else { "full" }
    );
    println!("| kernel | shape | GPU ms | GFLOP/s | % peak | GB/s | CPU ref ms | speed-up |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    for row in &rows {
        let (gf, pct) = if row.flops > 0.0 {
            let g = row.flops / row.gpu_ms / 1e6;
            (format!("{g:.2}"), format!("{:.1}", 100.0 * g / peak))
        } else {
            ("-".into(), "-".into())
        };
        let gbs = row.bytes / row.gpu_ms / 1e6;
        let (rm, sp) = match row.ref_ms {
            Some(t) => (format!("{t:.2}"), format!("{:.1}x", t / row.gpu_ms)),
            None => ("-".into(), "-".into()),
        };
        println!(
            "| {} | {} | {:.3} | {} | {} | {:.2} | {} | {} |",
            row.kernel, row.shape, row.gpu_ms, gf, pct, gbs, rm, sp
        );
    }
}

/// The reference's host tensor as the production type the device uploads (a field-by-field copy).
fn device_form(t: &Nf4Tensor) -> tinytune::gpu::nf4::Nf4Tensor {
    use tinytune::gpu::nf4 as g;
    use tinytune::reference::nf4 as rn;
    g::Nf4Tensor {
        n: t.n,
        block: t.block,
        packed: t.packed.clone(),
        absmax: match &t.absmax {
            rn::Absmax::F32(a) => g::Absmax::F32(a.clone()),
            rn::Absmax::Double(d) => g::Absmax::Double(g::DoubleQuant {
                codes: d.codes.clone(),
                nested_absmax: d.nested_absmax.clone(),
                offset: d.offset,
            }),
        },
    }
}
