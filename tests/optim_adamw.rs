//! `optim/adamw_step` (with global-norm clipping) against the CPU reference, and the reference
//! against hand-derived torch.optim.AdamW / clip_grad_norm_ numbers.

mod common;

use common::{assert_close, gpu, Rng};
use tinytune::gpu::ops::optim::{self, AdamW};
use tinytune::gpu::{Gpu, GpuBuffer, GpuError};
use tinytune::reference::optim as roptim;

/// The same hyper-parameters as the reference's own type (the oracle keeps its own `AdamW`).
fn oracle(cfg: &AdamW) -> roptim::AdamW {
    let AdamW {
        lr,
        beta1,
        beta2,
        eps,
        weight_decay,
    } = *cfg;
    roptim::AdamW {
        lr,
        beta1,
        beta2,
        eps,
        weight_decay,
    }
}

/// The launcher's host coefficients and defaults are the reference's, bit for bit.
#[test]
fn coefficients_match_the_reference() {
    assert_eq!(oracle(&AdamW::default()), roptim::AdamW::default());
    let cfgs = [
        AdamW::default(),
        AdamW {
            lr: 0.1,
            beta1: 0.9,
            beta2: 0.999,
            eps: 0.01,
            weight_decay: 0.1,
        },
        AdamW {
            lr: 2e-4,
            beta1: 0.5,
            beta2: 0.95,
            eps: 1e-6,
            weight_decay: 0.0,
        },
        AdamW {
            lr: 3e-5,
            beta1: 0.0,
            beta2: 0.0,
            eps: 0.0,
            weight_decay: 1.0,
        },
    ];
    for cfg in &cfgs {
        for step in [1, 2, 3, 10, 1000, 123_457, u32::MAX] {
            let (a, b) = (cfg.coefficients(step), oracle(cfg).coefficients(step));
            let got = [a.decay, a.w1, a.beta2, a.w2, a.step_size, a.bc2_sqrt, a.eps];
            let want = [b.decay, b.w1, b.beta2, b.w2, b.step_size, b.bc2_sqrt, b.eps];
            assert_eq!(
                got.map(f32::to_bits),
                want.map(f32::to_bits),
                "{cfg:?} step {step}"
            );
        }
    }
}

/// `optim/adamw_step`: |gpu - ref| <= atol + rtol*|ref| for the parameters (O(1) values) ...
const ADAMW_P_ATOL: f32 = 1e-7;
const ADAMW_P_RTOL: f32 = 1e-6;
/// ... and for the moments m (O(0.1)) and v (O(1e-3)): only mul/add, so near bit-exact.
const ADAMW_STATE_ATOL: f32 = 1e-10;
const ADAMW_STATE_RTOL: f32 = 1e-6;
/// `optim/grad_norm` against the f64-summed reference.
const NORM_RTOL: f32 = 2e-6;

fn up(gpu: &Gpu, label: &str, v: &[f32]) -> GpuBuffer {
    gpu.upload(label, v).unwrap()
}

fn read(gpu: &Gpu, b: &GpuBuffer) -> Vec<f32> {
    gpu.read_blocking::<f32>(b).unwrap()
}

/// Runs `steps` AdamW steps on the GPU and the reference from the same start, comparing p, m, v
/// after every step. `clip = Some(max_norm)` computes the norm with `optim/grad_norm` in the same
/// encoder, as the trainer does, and checks it too.
fn run_adamw(
    gpu: &Gpu,
    n: usize,
    cfg: &AdamW,
    steps: u32,
    clip: Option<f32>,
    seed: u64,
) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    let mut p = rng.vec(n, 1.0);
    let mut m = vec![0f32; n];
    let mut v = vec![0f32; n];
    let (pb, mb, vb) = (up(gpu, "p", &p), up(gpu, "m", &m), up(gpu, "v", &v));
    let normb = gpu.alloc("norm", 4).unwrap();
    let mut coefs = Vec::new();
    for step in 1..=steps {
        // A different gradient scale each step so that clipping coefficients and m/v mixes vary.
        let g = rng.vec(n, 0.5 + step as f32);
        let gb = up(gpu, "g", &g);
        let mut enc = gpu.encoder();
        optim::grad_norm(&mut enc, &gb, n, &normb).unwrap();
        optim::adamw_step(&mut enc, &pb, &gb, &mb, &vb, &normb, n, step, cfg, clip).unwrap();
        enc.submit();
        roptim::adamw_step(&mut p, &g, &mut m, &mut v, step, &oracle(cfg), clip);
        let tag = format!(
            "optim/adamw_step n={n} step={step} clip={clip:?} beta1={}",
            cfg.beta1
        );
        if let Some(max_norm) = clip {
            let want = roptim::grad_norm(&g);
            assert_close(
                &format!("{tag} norm"),
                &read(gpu, &normb),
                &[want],
                0.0,
                NORM_RTOL,
            );
            coefs.push(roptim::clip_coef(want, max_norm));
        }
        assert_close(
            &format!("{tag} m"),
            &read(gpu, &mb),
            &m,
            ADAMW_STATE_ATOL,
            ADAMW_STATE_RTOL,
        );
        assert_close(
            &format!("{tag} v"),
            &read(gpu, &vb),
            &v,
            ADAMW_STATE_ATOL,
            ADAMW_STATE_RTOL,
        );
        assert_close(
            &format!("{tag} p"),
            &read(gpu, &pb),
            &p,
            ADAMW_P_ATOL,
            ADAMW_P_RTOL,
        );
    }
    coefs
}

#[test]
fn adamw_step_matches_reference() {
    let Some(gpu) = gpu() else { return };
    let cfg = AdamW {
        lr: 1e-2,
        weight_decay: 0.1,
        ..AdamW::default()
    };
    // Odd n over many workgroups of 256, and a tiny n inside one partial workgroup.
    run_adamw(gpu, 70_001, &cfg, 5, None, 1);
    run_adamw(gpu, 3, &cfg, 3, None, 2);
    // beta1 < 0.5 takes torch's other lerp branch (weight 1 - beta1 >= 0.5).
    let cfg = AdamW {
        lr: 3e-3,
        beta1: 0.3,
        beta2: 0.95,
        eps: 1e-6,
        weight_decay: 0.05,
    };
    run_adamw(gpu, 1001, &cfg, 4, None, 3);
}

#[test]
fn adamw_step_clipped_matches_reference() {
    let Some(gpu) = gpu() else { return };
    let cfg = AdamW {
        lr: 1e-2,
        weight_decay: 0.1,
        ..AdamW::default()
    };
    let n = 20_003;
    // Gradient norms are ~ sqrt(n) * (0.5 + step) >= 200: max_norm 1 clips every step ...
    let coefs = run_adamw(gpu, n, &cfg, 4, Some(1.0), 4);
    assert!(
        coefs.iter().all(|&c| c < 0.01),
        "clipping should be active: {coefs:?}"
    );
    // ... max_norm 1e6 never does (coefficient exactly 1).
    let coefs = run_adamw(gpu, n, &cfg, 3, Some(1e6), 5);
    assert!(
        coefs.iter().all(|&c| c == 1.0),
        "clipping should be inactive: {coefs:?}"
    );
}

/// The reference pinned to torch semantics with numbers derived by hand (f64 arithmetic, shown to
/// 10 digits), one element, two steps, lr = 0.1, weight_decay = 0.1, betas (0.9, 0.999), eps = 0.01
/// (large so that where eps enters the denominator shows in the result).
///
/// Unclipped, p0 = 1, g = 0.5 then -0.25:
///   step 1: p = 1 * (1 - 0.1*0.1) = 0.99;  m = 0 + 0.1*(0.5 - 0) = 0.05;  v = 0.001 * 0.5^2 = 0.00025
///           bc1 = 1 - 0.9 = 0.1, bc2 = 1 - 0.999 = 0.001, step_size = 0.1/0.1 = 1
///           denom = sqrt(0.00025)/sqrt(0.001) + 0.01 = 0.5 + 0.01 = 0.51
///           p = 0.99 - 1 * 0.05/0.51 = 0.99 - 0.0980392157 = 0.8919607843
///   step 2: p = 0.8919607843 * 0.99 = 0.8830411765;  m = 0.05 + 0.1*(-0.25 - 0.05) = 0.02
///           v = 0.999*0.00025 + 0.001*0.0625 = 0.00031225
///           bc1 = 1 - 0.81 = 0.19, bc2 = 1 - 0.998001 = 0.001999, step_size = 0.1/0.19 = 0.5263157895
///           denom = sqrt(0.00031225/0.001999) + 0.01 = sqrt(0.1562031016) + 0.01 = 0.4052253807
///           p = 0.8830411765 - 0.5263157895 * 0.02/0.4052253807 = 0.8830411765 - 0.0259764474
///             = 0.8570647291
/// Clipped with max_norm = 1, p0 = 1, g = 3 then 0.5 (the norm of a one-element buffer is |g|):
///   step 1: coef = min(1, 1/(3 + 1e-6)) = 0.3333332222, g = 3*coef = 0.9999996667
///           p = 0.99;  m = 0.1*g = 0.0999999667;  v = 0.001*g^2 = 0.0009999993333
///           denom = sqrt(v/0.001) + 0.01 = g + 0.01 = 1.0099996667
///           p = 0.99 - 0.0999999667/1.0099996667 = 0.99 - 0.0990099007 = 0.8909900993
///   step 2: coef = min(1, 1/(0.5 + 1e-6)) = 1, g = 0.5
///           p = 0.8909900993 * 0.99 = 0.8820801983;  m = 0.0999999667 + 0.1*(0.5 - 0.0999999667) = 0.13999997
///           v = 0.999*0.0009999993333 + 0.001*0.25 = 0.001248999334
///           denom = sqrt(0.001248999334/0.001999) + 0.01 = 0.7904505507 + 0.01 = 0.8004505507
///           p = 0.8820801983 - 0.5263157895 * 0.13999997/0.8004505507 = 0.8820801983 - 0.0920534000
///             = 0.7900267983
/// (Without clipping the second case would give step-1 p = 0.99 - 0.3/3.01 = 0.8903322259.)
#[test]
fn reference_matches_hand_derived_torch_numbers() {
    const TOL: f32 = 1e-6;
    let cfg = roptim::AdamW {
        lr: 0.1,
        beta1: 0.9,
        beta2: 0.999,
        eps: 0.01,
        weight_decay: 0.1,
    };
    let close = |what: &str, got: f32, want: f64| {
        assert!(
            (got as f64 - want).abs() <= TOL as f64,
            "{what}: reference {got}, by hand {want}"
        );
    };

    let (mut p, mut m, mut v) = ([1.0f32], [0.0f32], [0.0f32]);
    roptim::adamw_step(&mut p, &[0.5], &mut m, &mut v, 1, &cfg, None);
    close("step 1 p", p[0], 0.8919607843);
    close("step 1 m", m[0], 0.05);
    close("step 1 v", v[0], 0.00025);
    roptim::adamw_step(&mut p, &[-0.25], &mut m, &mut v, 2, &cfg, None);
    close("step 2 p", p[0], 0.8570647291);
    close("step 2 m", m[0], 0.02);
    close("step 2 v", v[0], 0.00031225);

    let (mut p, mut m, mut v) = ([1.0f32], [0.0f32], [0.0f32]);
    roptim::adamw_step(&mut p, &[3.0], &mut m, &mut v, 1, &cfg, Some(1.0));
    close("clipped step 1 p", p[0], 0.8909900993);
    close("clipped step 1 m", m[0], 0.0999999667);
    roptim::adamw_step(&mut p, &[0.5], &mut m, &mut v, 2, &cfg, Some(1.0));
    close("clipped step 2 p", p[0], 0.7900267983);
    close("clipped step 2 m", m[0], 0.13999997);
    close("clipped step 2 v", v[0], 0.001248999334);

    // clip_grad_norm_ pieces: the 2-norm of the whole buffer and the clamped coefficient.
    assert_eq!(roptim::grad_norm(&[3.0, -4.0, 12.0]), 13.0);
    close(
        "clip coef 5 -> 1",
        roptim::clip_coef(5.0, 1.0),
        1.0 / 5.000001,
    );
    assert_eq!(roptim::clip_coef(5.0, 10.0), 1.0);

    // torch's defaults.
    assert_eq!(
        AdamW::default(),
        AdamW {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01
        }
    );
}

#[test]
fn launchers_reject_bad_input() {
    let Some(gpu) = gpu() else { return };
    let n = 10;
    let buf = |label: &str, len: usize| gpu.alloc(label, len as u64 * 4).unwrap();
    let (p, g, m, v, norm) = (
        buf("p", n),
        buf("g", n),
        buf("m", n),
        buf("v", n),
        buf("norm", 1),
    );
    let short = buf("short", n - 1);
    let cfg = AdamW::default();
    let is_shape = |e: Result<(), GpuError>| matches!(e, Err(GpuError::Shape { .. }));
    let mut enc = gpu.encoder();
    assert!(
        is_shape(optim::adamw_step(
            &mut enc, &p, &g, &m, &v, &norm, n, 0, &cfg, None
        )),
        "step 0"
    );
    assert!(
        is_shape(optim::adamw_step(
            &mut enc, &p, &g, &m, &short, &norm, n, 1, &cfg, None
        )),
        "short v"
    );
    assert!(
        is_shape(optim::adamw_step(
            &mut enc, &p, &g, &m, &m, &norm, n, 1, &cfg, None
        )),
        "m aliases v"
    );
    assert!(
        is_shape(optim::adamw_step(
            &mut enc,
            &p,
            &g,
            &m,
            &v,
            &norm,
            n,
            1,
            &cfg,
            Some(0.0)
        )),
        "max_norm 0"
    );
    assert!(
        is_shape(optim::adamw_step(
            &mut enc, &p, &g, &m, &v, &m, n, 1, &cfg, None
        )),
        "norm aliases m"
    );
    let bad = AdamW { beta2: 1.0, ..cfg };
    assert!(
        is_shape(optim::adamw_step(
            &mut enc, &p, &g, &m, &v, &norm, n, 1, &bad, None
        )),
        "beta2 = 1"
    );
    assert!(
        is_shape(optim::grad_norm(&mut enc, &short, n, &norm)),
        "short grads"
    );
    assert!(
        is_shape(optim::grad_norm(&mut enc, &g, n, &g)),
        "norm aliases grads"
    );
    assert!(optim::grad_norm(&mut enc, &g, n, &norm).is_ok());
    assert!(optim::adamw_step(&mut enc, &p, &g, &m, &v, &norm, n, 1, &cfg, Some(1.0)).is_ok());
    enc.submit();
    gpu.sync().unwrap();
}

/// A gradient holding an inf or a NaN makes the norm non-finite; the step then changes nothing
/// (parameters and moments keep their values), on the device as in the reference.
#[test]
fn adamw_step_skips_a_non_finite_gradient() {
    let Some(gpu) = gpu() else { return };
    let n = 300; // more than one workgroup
    let mut rng = Rng::new(7);
    let cfg = AdamW {
        lr: 0.1,
        ..AdamW::default()
    };
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        for clip in [None, Some(1.0)] {
            let p0 = rng.vec(n, 1.0);
            let m0 = rng.vec(n, 0.1);
            let v0: Vec<f32> = rng.vec(n, 0.1).iter().map(|x| x * x).collect();
            let mut g = rng.vec(n, 1.0);
            g[n - 1] = bad;
            let (pb, gb, mb, vb) = (
                up(gpu, "p", &p0),
                up(gpu, "g", &g),
                up(gpu, "m", &m0),
                up(gpu, "v", &v0),
            );
            let normb = gpu.alloc("norm", 4).unwrap();
            let mut enc = gpu.encoder();
            optim::grad_norm(&mut enc, &gb, n, &normb).unwrap();
            optim::adamw_step(&mut enc, &pb, &gb, &mb, &vb, &normb, n, 3, &cfg, clip).unwrap();
            enc.submit();
            let what = format!("gradient {bad}, clip {clip:?}");
            assert!(!read(gpu, &normb)[0].is_finite(), "{what}: the norm");
            for (name, buf, want) in [("p", &pb, &p0), ("m", &mb, &m0), ("v", &vb, &v0)] {
                let got = read(gpu, buf);
                assert!(
                    got.iter()
                        .zip(want)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{what}: {name} changed"
                );
            }
            let (mut p, mut m, mut v) = (p0.clone(), m0.clone(), v0.clone());
            roptim::adamw_step(&mut p, &g, &mut m, &mut v, 3, &oracle(&cfg), clip);
            assert!(
                p == p0 && m == m0 && v == v0,
                "{what}: the reference changed"
            );
        }
    }
}
