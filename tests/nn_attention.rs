//! Causal grouped-query attention (forward and backward) against the CPU reference, the reference
//! backward against finite differences of the reference forward, and a T = 2048 smoke check.

mod common;

use common::{assert_close, gpu, Rng};
use tinytune::gpu::ops::nn;
use tinytune::gpu::{Gpu, GpuBuffer, GpuError};
use tinytune::reference::nn as rnn;

/// |gpu - ref| <= atol + rtol * |ref| for `nn/attention_fwd` (o and lse). The kernel sums in f32
/// in another order (online softmax, scale folded into q) than the f64-accumulating reference;
/// every shape here (T = 2048 included) also passes with a fifth of these (and of the BWD ones)
/// on lavapipe.
const FWD_ATOL: f32 = 1e-5;
const FWD_RTOL: f32 = 5e-5;
/// Same for `nn/attention_bwd` (dq, dk, dv): longer f32 sums (dk/dv over every query row of
/// every head of the group) and the `dp - Di` cancellation.
const BWD_ATOL: f32 = 5e-5;
const BWD_RTOL: f32 = 5e-4;

/// (B, Tq, Tk, H, KVH, D): odd T (37), decode (Tq = 1, Tk = 20), a chunk after a cache (Tq = 5,
/// Tk = 12), B = 2, GQA groups of 2 (H=4, KVH=2), 1 (H=3, KVH=3) and 6 (H=6, KVH=1), D = 64, 8,
/// 2 and 6 (not multiples of 4: the zero-padding path) and 128; Tq = 2, 3 (1- and 2-row blocks
/// and a partial 4-row block) and key blocks that end past Tk; T = 150 and Tq = 70 < Tk = 97 span
/// several 64-row blocks and 16-row stages of the GPU variant (a partial last block and stage).
const SHAPES: &[(usize, usize, usize, usize, usize, usize)] = &[
    (1, 37, 37, 4, 2, 64),
    (1, 1, 20, 4, 2, 8),
    (1, 5, 12, 3, 3, 64),
    (2, 13, 13, 6, 1, 8),
    (2, 9, 17, 4, 2, 2),
    (1, 19, 19, 3, 3, 2),
    (2, 1, 33, 6, 1, 64),
    (1, 11, 11, 2, 1, 128),
    (1, 2, 7, 9, 3, 6),
    (1, 3, 3, 6, 2, 8),
    (1, 150, 150, 4, 2, 64),
    (2, 70, 97, 3, 1, 12),
];

struct Data {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    scale: f32,
}

/// q, k, v ~ N(0, 1) with scale 1/sqrt(D): score rows with a spread of O(1), like a trained model.
fn data(rng: &mut Rng, b: usize, tq: usize, tk: usize, h: usize, kvh: usize, d: usize) -> Data {
    Data {
        q: rng.vec(b * tq * h * d, 1.0),
        k: rng.vec(b * tk * kvh * d, 1.0),
        v: rng.vec(b * tk * kvh * d, 1.0),
        scale: 1.0 / (d as f32).sqrt(),
    }
}

fn up(gpu: &Gpu, label: &str, v: &[f32]) -> GpuBuffer {
    gpu.upload(label, v).unwrap()
}

fn read(gpu: &Gpu, b: &GpuBuffer) -> Vec<f32> {
    gpu.read_blocking::<f32>(b).unwrap()
}

fn add(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter().zip(b).map(|(x, y)| x + y).collect()
}

/// Runs the GPU forward into NaN-filled outputs (every element must be written); returns (o, lse).
#[allow(clippy::too_many_arguments)]
fn gpu_fwd(
    gpu: &Gpu,
    dt: &Data,
    b: usize,
    tq: usize,
    tk: usize,
    h: usize,
    kvh: usize,
    d: usize,
) -> (Vec<f32>, Vec<f32>) {
    let (qb, kb, vb) = (
        up(gpu, "q", &dt.q),
        up(gpu, "k", &dt.k),
        up(gpu, "v", &dt.v),
    );
    let ob = up(gpu, "o", &vec![f32::NAN; b * tq * h * d]);
    let lb = up(gpu, "lse", &vec![f32::NAN; b * h * tq]);
    let mut enc = gpu.encoder();
    nn::attention_fwd(
        &mut enc,
        &qb,
        &kb,
        &vb,
        &ob,
        &lb,
        nn::AttentionShape {
            b,
            tq,
            tk,
            h,
            kvh,
            d,
            scale: dt.scale,
        },
    )
    .unwrap();
    enc.submit();
    (read(gpu, &ob), read(gpu, &lb))
}

#[test]
fn attention_fwd_matches_reference() {
    common::for_each_kernels(|gpu| {
        for (si, &(b, tq, tk, h, kvh, d)) in SHAPES.iter().enumerate() {
            let mut rng = Rng::new(1000 + si as u64);
            let dt = data(&mut rng, b, tq, tk, h, kvh, d);
            let (want_o, want_l) =
                rnn::attention_fwd(&dt.q, &dt.k, &dt.v, b, tq, tk, h, kvh, d, dt.scale);
            let (got_o, got_l) = gpu_fwd(gpu, &dt, b, tq, tk, h, kvh, d);
            let tag = format!("nn/attention_fwd b={b} tq={tq} tk={tk} h={h} kvh={kvh} d={d}");
            assert_close(&format!("{tag} o"), &got_o, &want_o, FWD_ATOL, FWD_RTOL);
            assert_close(&format!("{tag} lse"), &got_l, &want_l, FWD_ATOL, FWD_RTOL);
        }
    });
}

#[test]
fn attention_bwd_matches_reference() {
    common::for_each_kernels(|gpu| {
        for (si, &(b, tq, tk, h, kvh, d)) in SHAPES.iter().enumerate() {
            let mut rng = Rng::new(2000 + si as u64);
            let dt = data(&mut rng, b, tq, tk, h, kvh, d);
            let dout = rng.vec(b * tq * h * d, 1.0);
            let (o, lse) = rnn::attention_fwd(&dt.q, &dt.k, &dt.v, b, tq, tk, h, kvh, d, dt.scale);
            let (want_dq, want_dk, want_dv) =
                rnn::attention_bwd(&dout, &dt.q, &dt.k, &dt.v, b, tq, tk, h, kvh, d, dt.scale);
            // Every other shape also runs the accumulating variant on nonzero starting gradients.
            let accumulate = si % 2 == 1;
            let (dq0, dk0, dv0) = if accumulate {
                (
                    rng.vec(b * tq * h * d, 1.0),
                    rng.vec(b * tk * kvh * d, 1.0),
                    rng.vec(b * tk * kvh * d, 1.0),
                )
            } else {
                (
                    vec![f32::NAN; b * tq * h * d],
                    vec![f32::NAN; b * tk * kvh * d],
                    vec![f32::NAN; b * tk * kvh * d],
                )
            };

            let (gb, qb, kb, vb) = (
                up(gpu, "dout", &dout),
                up(gpu, "q", &dt.q),
                up(gpu, "k", &dt.k),
                up(gpu, "v", &dt.v),
            );
            let (ob, lb) = (up(gpu, "o", &o), up(gpu, "lse", &lse));
            let (dqb, dkb, dvb) = (
                up(gpu, "dq", &dq0),
                up(gpu, "dk", &dk0),
                up(gpu, "dv", &dv0),
            );
            let mut enc = gpu.encoder();
            let run = if accumulate {
                nn::attention_bwd_accumulate
            } else {
                nn::attention_bwd
            };
            run(
                &mut enc,
                &gb,
                &qb,
                &kb,
                &vb,
                &ob,
                &lb,
                &dqb,
                &dkb,
                &dvb,
                nn::AttentionShape {
                    b,
                    tq,
                    tk,
                    h,
                    kvh,
                    d,
                    scale: dt.scale,
                },
            )
            .unwrap();
            enc.submit();

            let (want_dq, want_dk, want_dv) = if accumulate {
                (
                    add(&dq0, &want_dq),
                    add(&dk0, &want_dk),
                    add(&dv0, &want_dv),
                )
            } else {
                (want_dq, want_dk, want_dv)
            };
            let tag = format!(
            "nn/attention_bwd b={b} tq={tq} tk={tk} h={h} kvh={kvh} d={d} accumulate={accumulate}"
        );
            assert_close(
                &format!("{tag} dq"),
                &read(gpu, &dqb),
                &want_dq,
                BWD_ATOL,
                BWD_RTOL,
            );
            assert_close(
                &format!("{tag} dk"),
                &read(gpu, &dkb),
                &want_dk,
                BWD_ATOL,
                BWD_RTOL,
            );
            assert_close(
                &format!("{tag} dv"),
                &read(gpu, &dvb),
                &want_dv,
                BWD_ATOL,
                BWD_RTOL,
            );
        }
    });
}

/// The reference backward against central differences of the reference forward for
/// `L = Σ G ⊙ o` with random `G` (so dL/do = G), perturbing every element of q, k and v. The
/// reference sums in f64 and rounds o to f32 once, and L is summed in f64, so with a step of 2^-6
/// (exact in binary) the truncation error (O(step²)) and the rounding error (≈1e-7·|L|/step) both
/// stay far below the tolerance.
#[test]
fn attention_bwd_matches_finite_differences() {
    const STEP: f32 = 1.0 / 64.0;
    const ATOL: f64 = 2e-4;
    const RTOL: f64 = 2e-3;
    // (B, Tq, Tk, H, KVH, D): training (Tq = Tk), a chunk after a cache (Tq < Tk) with GQA, B = 2.
    for &(b, tq, tk, h, kvh, d) in &[
        (1usize, 5usize, 5usize, 2usize, 1usize, 3usize),
        (1, 3, 6, 4, 2, 4),
        (2, 4, 4, 2, 2, 2),
    ] {
        let mut rng = Rng::new(3000 + (tq * 100 + tk * 10 + h) as u64);
        let dt = data(&mut rng, b, tq, tk, h, kvh, d);
        let g = rng.vec(b * tq * h * d, 1.0);
        let loss = |q: &[f32], k: &[f32], v: &[f32]| -> f64 {
            let (o, _) = rnn::attention_fwd(q, k, v, b, tq, tk, h, kvh, d, dt.scale);
            o.iter()
                .zip(&g)
                .map(|(&oi, &gi)| oi as f64 * gi as f64)
                .sum()
        };
        let (dq, dk, dv) =
            rnn::attention_bwd(&g, &dt.q, &dt.k, &dt.v, b, tq, tk, h, kvh, d, dt.scale);
        let base = [&dt.q, &dt.k, &dt.v];
        for (which, (name, grad)) in [("dq", &dq), ("dk", &dk), ("dv", &dv)].iter().enumerate() {
            for i in 0..base[which].len() {
                let mut ops = [dt.q.clone(), dt.k.clone(), dt.v.clone()];
                ops[which][i] = base[which][i] + STEP;
                let lp = loss(&ops[0], &ops[1], &ops[2]);
                ops[which][i] = base[which][i] - STEP;
                let lm = loss(&ops[0], &ops[1], &ops[2]);
                let fd = (lp - lm) / (2.0 * STEP as f64);
                let an = grad[i] as f64;
                assert!(
                    (an - fd).abs() <= ATOL + RTOL * fd.abs(),
                    "attention_bwd {name}[{i}] b={b} tq={tq} tk={tk} h={h} kvh={kvh} d={d}: \
                     analytic {an} vs finite difference {fd}"
                );
            }
        }
    }
}

/// T = 2048, D = 64 (SmolLM2's 9 query / 3 KV heads): the forward on the GPU (O(T·D) memory per
/// head), checked on a few rows against the reference run for that row alone (Tq = 1 with the
/// keys up to its position, which is the same causal row), plus dq of the same rows from the
/// backward (dq of a row depends only on that row's inputs and the keys it sees).
#[test]
fn attention_t2048_smoke() {
    common::for_each_kernels(|gpu| {
        let (b, t, h, kvh, d) = (1usize, 2048usize, 9usize, 3usize, 64usize);
        let mut rng = Rng::new(4000);
        let dt = data(&mut rng, b, t, t, h, kvh, d);
        let dout = rng.vec(b * t * h * d, 1.0);
        let (qb, kb, vb) = (
            up(gpu, "q", &dt.q),
            up(gpu, "k", &dt.k),
            up(gpu, "v", &dt.v),
        );
        let ob = up(gpu, "o", &vec![f32::NAN; t * h * d]);
        let lb = up(gpu, "lse", &vec![f32::NAN; h * t]);
        let gb = up(gpu, "dout", &dout);
        let dqb = up(gpu, "dq", &vec![f32::NAN; t * h * d]);
        let dkb = up(gpu, "dk", &vec![f32::NAN; t * kvh * d]);
        let dvb = up(gpu, "dv", &vec![f32::NAN; t * kvh * d]);
        let mut enc = gpu.encoder();
        nn::attention_fwd(
            &mut enc,
            &qb,
            &kb,
            &vb,
            &ob,
            &lb,
            nn::AttentionShape {
                b,
                tq: t,
                tk: t,
                h,
                kvh,
                d,
                scale: dt.scale,
            },
        )
        .unwrap();
        nn::attention_bwd(
            &mut enc,
            &gb,
            &qb,
            &kb,
            &vb,
            &ob,
            &lb,
            &dqb,
            &dkb,
            &dvb,
            nn::AttentionShape {
                b,
                tq: t,
                tk: t,
                h,
                kvh,
                d,
                scale: dt.scale,
            },
        )
        .unwrap();
        enc.submit();
        let (o, lse, dq) = (read(gpu, &ob), read(gpu, &lb), read(gpu, &dqb));
        for &i in &[0usize, 1, 7, 1000, 2046, 2047] {
            let row = |x: &[f32]| x[i * h * d..(i + 1) * h * d].to_vec();
            let kv = |x: &[f32]| x[..(i + 1) * kvh * d].to_vec();
            let (qi, gi) = (row(&dt.q), row(&dout));
            let (ki, vi) = (kv(&dt.k), kv(&dt.v));
            let (want_o, want_l) =
                rnn::attention_fwd(&qi, &ki, &vi, 1, 1, i + 1, h, kvh, d, dt.scale);
            let (want_dq, _, _) =
                rnn::attention_bwd(&gi, &qi, &ki, &vi, 1, 1, i + 1, h, kvh, d, dt.scale);
            let tag = format!("nn/attention T=2048 row {i}");
            assert_close(&format!("{tag} o"), &row(&o), &want_o, FWD_ATOL, FWD_RTOL);
            let got_l: Vec<f32> = (0..h).map(|hh| lse[hh * t + i]).collect();
            assert_close(&format!("{tag} lse"), &got_l, &want_l, FWD_ATOL, FWD_RTOL);
            assert_close(
                &format!("{tag} dq"),
                &row(&dq),
                &want_dq,
                BWD_ATOL,
                BWD_RTOL,
            );
        }
        // Every element written and finite (the check above covers only a few rows).
        for (name, x) in [
            ("o", &o),
            ("lse", &lse),
            ("dq", &dq),
            ("dk", &read(gpu, &dkb)),
            ("dv", &read(gpu, &dvb)),
        ] {
            assert!(
                x.iter().all(|v| v.is_finite()),
                "nn/attention T=2048: non-finite {name}"
            );
        }
    });
}

#[test]
fn attention_rejects_bad_shapes() {
    let Some(gpu) = gpu() else { return };
    let buf = |n: usize| gpu.alloc("buf", (n * 4) as u64).unwrap();
    let (q, k, v, o, l) = (
        buf(4 * 4 * 8),
        buf(4 * 2 * 8),
        buf(4 * 2 * 8),
        buf(4 * 4 * 8),
        buf(16),
    );
    let mut enc = gpu.encoder();
    let mut fwd = |o: &GpuBuffer, tq: usize, tk: usize, h: usize, kvh: usize, d: usize| {
        nn::attention_fwd(
            &mut enc,
            &q,
            &k,
            &v,
            o,
            &l,
            nn::AttentionShape {
                b: 1,
                tq,
                tk,
                h,
                kvh,
                d,
                scale: 0.5,
            },
        )
    };
    let is_shape = |r: Result<(), GpuError>| matches!(r, Err(GpuError::Shape { .. }));
    assert!(fwd(&o, 4, 4, 4, 2, 8).is_ok());
    assert!(is_shape(fwd(&o, 4, 4, 4, 3, 8)), "H not a multiple of KVH");
    assert!(is_shape(fwd(&o, 4, 4, 4, 0, 8)), "KVH = 0");
    assert!(is_shape(fwd(&o, 4, 4, 4, 2, 0)), "D = 0");
    assert!(is_shape(fwd(&o, 4, 4, 4, 2, 132)), "D > 128");
    assert!(is_shape(fwd(&o, 4, 3, 4, 2, 8)), "Tk < Tq");
    assert!(is_shape(fwd(&o, 4, 5, 4, 2, 8)), "k too small");
    assert!(is_shape(fwd(&q, 4, 4, 4, 2, 8)), "o aliases q");
    let dq = buf(4 * 4 * 8);
    let r = nn::attention_bwd(
        &mut enc,
        &o,
        &q,
        &k,
        &v,
        &o,
        &l,
        &dq,
        &dq,
        &v,
        nn::AttentionShape {
            b: 1,
            tq: 4,
            tk: 4,
            h: 4,
            kvh: 2,
            d: 8,
            scale: 0.5,
        },
    );
    assert!(is_shape(r), "dk aliases dq");
}

/// Milliseconds of the kernels for B=1, T=256, H=9, KVH=3, D=64 (SmolLM2-135M's attention), the
/// fastest of 7 runs after a warm-up (the least disturbed by other work on the machine). Informational:
/// `cargo test --test nn_attention -- --ignored --nocapture`.
#[test]
#[ignore]
fn attention_timing() {
    let Some(gpu) = gpu() else { return };
    let (b, t, h, kvh, d) = (1usize, 256usize, 9usize, 3usize, 64usize);
    let mut rng = Rng::new(7);
    let dt = data(&mut rng, b, t, t, h, kvh, d);
    let dout = rng.vec(b * t * h * d, 1.0);
    let (qb, kb, vb) = (
        up(gpu, "q", &dt.q),
        up(gpu, "k", &dt.k),
        up(gpu, "v", &dt.v),
    );
    let gb = up(gpu, "dout", &dout);
    let f32s = |n: usize| gpu.alloc("out", (n * 4) as u64).unwrap();
    let (ob, lb) = (f32s(b * t * h * d), f32s(b * h * t));
    let (dqb, dkb, dvb) = (
        f32s(b * t * h * d),
        f32s(b * t * kvh * d),
        f32s(b * t * kvh * d),
    );
    let time = |f: &dyn Fn()| -> f64 {
        f();
        gpu.sync().unwrap();
        let mut v: Vec<f64> = (0..7)
            .map(|_| {
                let s = std::time::Instant::now();
                f();
                gpu.sync().unwrap();
                s.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[0]
    };
    let fwd = time(&|| {
        let mut enc = gpu.encoder();
        nn::attention_fwd(
            &mut enc,
            &qb,
            &kb,
            &vb,
            &ob,
            &lb,
            nn::AttentionShape {
                b,
                tq: t,
                tk: t,
                h,
                kvh,
                d,
                scale: dt.scale,
            },
        )
        .unwrap();
        enc.submit();
    });
    let bwd = time(&|| {
        let mut enc = gpu.encoder();
        nn::attention_bwd(
            &mut enc,
            &gb,
            &qb,
            &kb,
            &vb,
            &ob,
            &lb,
            &dqb,
            &dkb,
            &dvb,
            nn::AttentionShape {
                b,
                tq: t,
                tk: t,
                h,
                kvh,
                d,
                scale: dt.scale,
            },
        )
        .unwrap();
        enc.submit();
    });
    // Causal FLOPs: 2 matmuls forward, 5 backward (s and dp, then dv, dq, dk; s recomputed
    // twice counts once here), each 2·D per visible (query, key) pair and head.
    let pairs = (h * t * (t + 1) / 2) as f64;
    let (ffl, bfl) = (4.0 * d as f64 * pairs, 10.0 * d as f64 * pairs);
    println!(
        "attention B={b} T={t} H={h} KVH={kvh} D={d} on {}:",
        gpu.adapter
    );
    println!("  fwd {fwd:.1} ms ({:.2} GFLOP/s)", ffl / fwd / 1e6);
    println!("  bwd {bwd:.1} ms ({:.2} GFLOP/s)", bfl / bwd / 1e6);
}
