//! Softmax cross-entropy forward/backward kernels against the CPU reference, the reference
//! backward against finite differences of the reference loss, and the reference against torch.

mod common;

use common::{assert_close, gpu, Rng};
use tinytune::gpu::ops::nn;
use tinytune::gpu::{Gpu, GpuBuffer, GpuError};
use tinytune::reference::nn::{self as rnn, IGNORE_INDEX};

/// `nn/cross_entropy_fwd`, per counted row: |gpu - ref| <= atol + rtol * max(|lse|, |logit[t]|) for
/// both lse and loss (the loss is lse - logit[t], so its error is that of lse, however small the
/// loss). Sources: f32 sums of exp over V terms in another order, rescaling by exp at each new
/// running max, WGSL exp/log (a few ulp), and the final rounding of lse (lavapipe: at most
/// 1.9e-7 * max(|lse|, |logit[t]|), V up to 151936, logits up to ±80).
const FWD_ATOL: f32 = 2e-6;
const FWD_RTOL: f32 = 1e-6;
/// The summed loss (f32 tree sum of M rows vs f64) and the mean (one `/`, 2.5 ulp).
const SUM_RTOL: f32 = 1e-5;
/// `nn/cross_entropy_bwd`: |gpu - ref| <= |scale| * atol + rtol * |ref|. p = exp(x - lse) with
/// x - lse rounded to f32 (half an ulp of |x - lse|, 4e-6 relative at 88, below which p is no
/// longer a normal f32) and WGSL's exp (3 + 2|x| ulp: 2.1e-5 at 88), so a relative bound (lavapipe:
/// 7.4e-6); the absolute floor only covers denormals flushed to zero. In the target column p - 1
/// cancels: there the error is a few ulp of 1, times scale.
const BWD_RTOL: f32 = 3e-5;
const BWD_ATOL: f32 = 1e-30;
const BWD_ATOL_TARGET: f32 = 5e-7;
/// Reference backward against central differences of the reference mean loss (step 1e-2).
const FD_ATOL: f64 = 1e-4;
const FD_RTOL: f64 = 1e-3;

#[derive(Clone, Copy)]
enum Logits {
    /// ~N(0, sigma^2)
    Normal(f32),
    /// Uniform in [-80, 80) with exact ±80 planted: exp(x) alone would overflow f32.
    Large,
}

/// (M, V, logits, note): V = 1, V not a multiple of the 256-invocation workgroup, V smaller than
/// it, V = 49152 (SmolLM2) with M = 3, M > 256 (the summing stage loops), every row ignored.
const CASES: &[(usize, usize, Logits)] = &[
    (1, 1, Logits::Normal(1.0)),
    (3, 49152, Logits::Normal(2.0)),
    (5, 1000, Logits::Normal(1.0)),
    (4, 300, Logits::Large),
    (7, 513, Logits::Large),
    (300, 19, Logits::Normal(3.0)),
    (2, 257, Logits::Normal(1.0)),
    (1, 255, Logits::Normal(10.0)),
];

struct Case {
    m: usize,
    v: usize,
    logits: Vec<f32>,
    targets: Vec<i32>,
}

fn argmax(row: &[f32]) -> usize {
    (0..row.len()).fold(0, |b, j| if row[j] > row[b] { j } else { b })
}

fn argmin(row: &[f32]) -> usize {
    (0..row.len()).fold(0, |b, j| if row[j] < row[b] { j } else { b })
}

/// Targets: random in [0, V), with ignored rows: -100 every 4th row (from row 1), other
/// out-of-range values (V, -7) in rows 2 and 3 when M > 4; the case (2, 257) ignores every row.
/// With large logits, rows 0 and 2 target their max and min (loss ~0 and ~160).
fn make_case(seed: u64, m: usize, v: usize, kind: Logits) -> Case {
    let mut rng = Rng::new(seed);
    let logits: Vec<f32> = match kind {
        Logits::Normal(s) => rng.vec(m * v, s),
        Logits::Large => (0..m * v)
            .map(|i| match i % 97 {
                3 => 80.0,
                50 => -80.0,
                _ => rng.uniform() * 80.0,
            })
            .collect(),
    };
    let mut targets: Vec<i32> = (0..m).map(|_| (rng.next_u64() % v as u64) as i32).collect();
    for r in (1..m).step_by(4) {
        targets[r] = IGNORE_INDEX;
    }
    if m > 4 {
        targets[2] = v as i32;
        targets[3] = -7;
    }
    if (m, v) == (2, 257) {
        targets.fill(IGNORE_INDEX);
    }
    if let Logits::Large = kind {
        targets[0] = argmax(&logits[..v]) as i32;
        if m > 2 {
            targets[2] = argmin(&logits[2 * v..3 * v]) as i32;
        }
    }
    Case {
        m,
        v,
        logits,
        targets,
    }
}

fn valid(t: i32, v: usize) -> bool {
    t >= 0 && (t as usize) < v
}

fn up<T: bytemuck::Pod>(gpu: &Gpu, label: &str, v: &[T]) -> GpuBuffer {
    gpu.upload(label, v).unwrap()
}

fn read(gpu: &Gpu, b: &GpuBuffer) -> Vec<f32> {
    gpu.read_blocking::<f32>(b).unwrap()
}

/// Runs the forward (with the summed output) and returns (loss_rows, lse, total).
fn gpu_fwd(gpu: &Gpu, c: &Case) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let lb = up(gpu, "logits", &c.logits);
    let tb = up(gpu, "targets", &c.targets);
    // Every output element must be written, ignored rows included.
    let lossb = up(gpu, "loss_rows", &vec![f32::NAN; c.m]);
    let lseb = up(gpu, "lse", &vec![f32::NAN; c.m]);
    let totb = up(gpu, "total", &[f32::NAN; 3]);
    let mut enc = gpu.encoder();
    nn::cross_entropy_fwd(&mut enc, &lb, &tb, &lossb, &lseb, c.m, c.v, Some(&totb)).unwrap();
    enc.submit();
    (read(gpu, &lossb), read(gpu, &lseb), read(gpu, &totb))
}

#[test]
fn cross_entropy_fwd_matches_reference() {
    let Some(gpu) = gpu() else { return };
    for (ci, &(m, v, kind)) in CASES.iter().enumerate() {
        let c = make_case(600 + ci as u64, m, v, kind);
        let want = rnn::cross_entropy_fwd(&c.logits, &c.targets, m, v);
        let (loss, lse, total) = gpu_fwd(gpu, &c);
        let tag = format!("nn/cross_entropy_fwd m={m} v={v}");
        for r in 0..m {
            let t = c.targets[r];
            if !valid(t, v) {
                assert_eq!(
                    (loss[r], lse[r]),
                    (0.0, 0.0),
                    "{tag}: ignored row {r} (target {t})"
                );
                continue;
            }
            let mag = want.lse[r].abs().max(c.logits[r * v + t as usize].abs());
            let tol = FWD_ATOL + FWD_RTOL * mag;
            for (what, g, w) in [
                ("lse", lse[r], want.lse[r]),
                ("loss", loss[r], want.loss_rows[r]),
            ] {
                assert!(
                    (g - w).abs() <= tol,
                    "{tag}: {what}[{r}] gpu {g} ref {w} (tolerance {tol})"
                );
            }
        }
        assert_eq!(total[1], want.count as f32, "{tag}: count");
        assert_close(
            &format!("{tag} sum"),
            &total[..1],
            &[want.sum],
            1e-6,
            SUM_RTOL,
        );
        assert_close(
            &format!("{tag} mean"),
            &total[2..],
            &[want.mean],
            1e-6,
            SUM_RTOL,
        );
    }
}

/// Checks a backward result with the [`BWD_RTOL`] / [`BWD_ATOL`] / [`BWD_ATOL_TARGET`] bounds.
fn check_bwd(tag: &str, got: &[f32], want: &[f32], targets: &[i32], v: usize, scale: f32) {
    assert_eq!(got.len(), want.len(), "{tag}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let (r, j) = (i / v, i % v);
        let atol = if targets[r] == j as i32 {
            BWD_ATOL_TARGET
        } else {
            BWD_ATOL
        };
        let tol = scale.abs() * atol + BWD_RTOL * w.abs();
        assert!(
            (g - w).abs() <= tol && g.is_finite(),
            "{tag}: [{r}, {j}] gpu {g} ref {w} (tolerance {tol})"
        );
    }
}

/// Scale 1/count as for the mean loss, except one case with an arbitrary upstream factor.
fn scale_for(ci: usize, count: u32) -> f32 {
    if ci == 4 {
        -0.37
    } else {
        1.0 / count.max(1) as f32
    }
}

#[test]
fn cross_entropy_bwd_matches_reference() {
    let Some(gpu) = gpu() else { return };
    for (ci, &(m, v, kind)) in CASES.iter().enumerate() {
        let c = make_case(700 + ci as u64, m, v, kind);
        let fwd = rnn::cross_entropy_fwd(&c.logits, &c.targets, m, v);
        let scale = scale_for(ci, fwd.count);
        let want = rnn::cross_entropy_bwd(&c.logits, &c.targets, &fwd.lse, m, v, scale);
        let lb = up(gpu, "logits", &c.logits);
        let tb = up(gpu, "targets", &c.targets);
        let lseb = up(gpu, "lse", &fwd.lse);
        let mut enc = gpu.encoder();
        nn::cross_entropy_bwd(&mut enc, &lb, &tb, &lseb, m, v, scale).unwrap();
        enc.submit();
        let got = read(gpu, &lb);
        let tag = format!("nn/cross_entropy_bwd m={m} v={v} scale={scale}");
        for r in 0..m {
            if !valid(c.targets[r], v) {
                assert!(
                    got[r * v..(r + 1) * v].iter().all(|&g| g == 0.0),
                    "{tag}: ignored row {r} has a nonzero gradient"
                );
            }
        }
        check_bwd(&tag, &got, &want, &c.targets, v, scale);
    }
}

/// Forward then backward in one submission on the device, as the trainer runs them (the backward
/// reads the forward's lse and overwrites the logits).
#[test]
fn cross_entropy_fwd_then_bwd_on_device() {
    let Some(gpu) = gpu() else { return };
    let (m, v) = (6, 1531);
    let c = make_case(800, m, v, Logits::Normal(2.0));
    let fwd = rnn::cross_entropy_fwd(&c.logits, &c.targets, m, v);
    let scale = 1.0 / fwd.count as f32;
    let want = rnn::cross_entropy_bwd(&c.logits, &c.targets, &fwd.lse, m, v, scale);
    let lb = up(gpu, "logits", &c.logits);
    let tb = up(gpu, "targets", &c.targets);
    let lossb = gpu.alloc("loss_rows", 4 * m as u64).unwrap();
    let lseb = gpu.alloc("lse", 4 * m as u64).unwrap();
    let mut enc = gpu.encoder();
    nn::cross_entropy_fwd(&mut enc, &lb, &tb, &lossb, &lseb, m, v, None).unwrap();
    nn::cross_entropy_bwd(&mut enc, &lb, &tb, &lseb, m, v, scale).unwrap();
    enc.submit();
    check_bwd(
        "nn/cross_entropy fwd+bwd",
        &read(gpu, &lb),
        &want,
        &c.targets,
        v,
        scale,
    );
}

/// Mean loss over counted rows, from the reference forward, summed in f64.
fn mean_loss(logits: &[f32], targets: &[i32], m: usize, v: usize) -> f64 {
    let f = rnn::cross_entropy_fwd(logits, targets, m, v);
    f.loss_rows.iter().map(|&l| l as f64).sum::<f64>() / f.count as f64
}

#[test]
fn cross_entropy_bwd_matches_finite_differences() {
    let (m, v) = (5, 7);
    let mut rng = Rng::new(9);
    let logits = rng.vec(m * v, 1.5);
    // Row 1 ignored, row 3 out of range (also ignored): their gradients must be 0 numerically too.
    let targets = [3, IGNORE_INDEX, 0, 7, 6];
    let fwd = rnn::cross_entropy_fwd(&logits, &targets, m, v);
    assert_eq!(fwd.count, 3);
    let grad = rnn::cross_entropy_bwd(&logits, &targets, &fwd.lse, m, v, 1.0 / fwd.count as f32);
    let step = 1e-2f32;
    for i in 0..m * v {
        let (mut lp, mut lm) = (logits.clone(), logits.clone());
        lp[i] += step;
        lm[i] -= step;
        let num = (mean_loss(&lp, &targets, m, v) - mean_loss(&lm, &targets, m, v))
            / (lp[i] as f64 - lm[i] as f64);
        let a = grad[i] as f64;
        assert!(
            (num - a).abs() <= FD_ATOL + FD_RTOL * a.abs(),
            "cross_entropy_bwd [{}, {}]: analytic {a} vs numeric {num}",
            i / v,
            i % v
        );
    }
}

/// The reference (and the kernels) against torch 2.15, values printed by:
/// ```python
/// import torch, torch.nn.functional as F
/// logits = torch.tensor([[0.5, -1.25, 2.0, 0.0, 3.5],
///                        [1.0, 1.0, 1.0, 1.0, 1.0],
///                        [-80.0, 80.0, 79.5, -3.0, 0.25],
///                        [4.0, -2.0, 0.75, 1.5, -0.5]], requires_grad=True)
/// targets = torch.tensor([2, -100, 0, 3])
/// loss = F.cross_entropy(logits, targets, ignore_index=-100)
/// loss.backward()
/// print(repr(loss.item()))
/// print([repr(x) for x in logits.grad.flatten().tolist()])
/// ```
#[test]
fn cross_entropy_reference_matches_torch() {
    let (m, v) = (4, 5);
    #[rustfmt::skip]
    let logits = [
        0.5f32, -1.25, 2.0, 0.0, 3.5,
        1.0, 1.0, 1.0, 1.0, 1.0,
        -80.0, 80.0, 79.5, -3.0, 0.25,
        4.0, -2.0, 0.75, 1.5, -0.5,
    ];
    let targets = [2, IGNORE_INDEX, 0, 3];
    // torch's float32 results, printed as Python floats (f64); `as f32` recovers them exactly.
    let torch_loss = 54.95719909667969f64 as f32;
    #[rustfmt::skip]
    let torch_grad: [f64; 20] = [
        0.012651405297219753, 0.0021984847262501717, -0.27663367986679077,
        0.0076734647154808044, 0.25411030650138855,
        0.0, 0.0, 0.0, 0.0, 0.0,
        -0.3333333432674408, 0.20748645067214966, 0.12584689259529114,
        1.8644402745222866e-37, 4.808454562633424e-36,
        0.29382893443107605, 0.0007283290615305305, 0.011392983607947826,
        -0.30921438336372375, 0.0032641440629959106,
    ];
    let torch_grad = torch_grad.map(|g| g as f32);
    let fwd = rnn::cross_entropy_fwd(&logits, &targets, m, v);
    assert_eq!(fwd.count, 3);
    assert_close(
        "cross_entropy_fwd vs torch",
        &[fwd.mean],
        &[torch_loss],
        0.0,
        1e-6,
    );
    let scale = 1.0 / fwd.count as f32;
    let grad = rnn::cross_entropy_bwd(&logits, &targets, &fwd.lse, m, v, scale);
    assert_close("cross_entropy_bwd vs torch", &grad, &torch_grad, 1e-8, 1e-5);

    let Some(gpu) = gpu() else { return };
    let c = Case {
        m,
        v,
        logits: logits.to_vec(),
        targets: targets.to_vec(),
    };
    let (_, lse, total) = gpu_fwd(gpu, &c);
    assert_close(
        "gpu mean vs torch",
        &total[2..],
        &[torch_loss],
        0.0,
        SUM_RTOL,
    );
    let lb = up(gpu, "logits", &logits);
    let tb = up(gpu, "targets", &targets);
    let lseb = up(gpu, "lse", &lse);
    let mut enc = gpu.encoder();
    nn::cross_entropy_bwd(&mut enc, &lb, &tb, &lseb, m, v, scale).unwrap();
    enc.submit();
    check_bwd(
        "gpu grad vs torch",
        &read(gpu, &lb),
        &torch_grad,
        &targets,
        v,
        scale,
    );
}

#[test]
fn cross_entropy_launchers_reject_bad_shapes() {
    let Some(gpu) = gpu() else { return };
    let (m, v) = (3, 10);
    let logits = gpu.alloc("logits", 4 * (m * v) as u64).unwrap();
    let short = gpu.alloc("short", 4 * (m * v - 1) as u64).unwrap();
    let targets = up(gpu, "targets", &[0i32, 1, 2]);
    let t2 = up(gpu, "t2", &[0i32, 1]);
    let a = gpu.alloc("a", 4 * m as u64).unwrap();
    let b = gpu.alloc("b", 4 * m as u64).unwrap();
    let tot = gpu.alloc("tot", 8).unwrap();
    let is_shape = |e: Result<(), GpuError>| matches!(e, Err(GpuError::Shape { .. }));
    let mut enc = gpu.encoder();
    let fwd = nn::cross_entropy_fwd;
    assert!(is_shape(fwd(
        &mut enc, &short, &targets, &a, &b, m, v, None
    )));
    assert!(is_shape(fwd(&mut enc, &logits, &t2, &a, &b, m, v, None)));
    assert!(is_shape(fwd(
        &mut enc, &logits, &targets, &a, &a, m, v, None
    )));
    assert!(is_shape(fwd(
        &mut enc,
        &logits,
        &targets,
        &a,
        &b,
        m,
        v,
        Some(&tot)
    )));
    assert!(is_shape(fwd(
        &mut enc, &logits, &targets, &a, &b, m, 0, None
    )));
    assert!(is_shape(fwd(
        &mut enc,
        &logits,
        &targets,
        &a,
        &b,
        1 << 16,
        1 << 16,
        None
    )));
    assert!(fwd(&mut enc, &logits, &targets, &a, &b, m, v, None).is_ok());
    let bwd = nn::cross_entropy_bwd;
    assert!(is_shape(bwd(&mut enc, &short, &targets, &a, m, v, 1.0)));
    assert!(is_shape(bwd(
        &mut enc, &logits, &targets, &logits, m, v, 1.0
    )));
    assert!(is_shape(bwd(&mut enc, &logits, &t2, &a, m, v, 1.0)));
    assert!(bwd(&mut enc, &logits, &targets, &a, m, v, 1.0).is_ok());
    drop(enc);
    // No rows: the summed output still gets written, as [0, 0, 0].
    let tot3 = up(gpu, "tot3", &[f32::NAN; 3]);
    let mut enc = gpu.encoder();
    fwd(&mut enc, &logits, &targets, &a, &b, 0, v, Some(&tot3)).unwrap();
    enc.submit();
    assert_eq!(read(gpu, &tot3), [0.0; 3]);
}
