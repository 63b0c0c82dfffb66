//! SwiGLU forward/backward kernels against the CPU reference, the reference backward against
//! finite differences of the reference forward, and the reference against torch.

mod common;

use common::{assert_close, gpu, Rng};
use tinytune::gpu::ops::nn;
use tinytune::gpu::{Gpu, GpuBuffer, GpuError};
use tinytune::reference::nn as rnn;

/// `nn/swiglu_fwd`: |gpu - ref| <= atol + rtol*|ref| against a once-rounded f64 reference. The
/// error is dominated by exp(-|x|): its relative error grows with |x| (WGSL allows 3 + 2|x| ulp;
/// an exp2-based exp is off by about |x| * log2(e) * 2^-24, 9e-6 at |x| = 100; lavapipe measured
/// 3.6e-6 at x = -68), plus one `/` (2.5 ulp) and three rounded products. The absolute floor only
/// covers results that underflow to zero or denormals (x <= -88).
const FWD_ATOL: f32 = 1e-30;
const FWD_RTOL: f32 = 2e-5;
/// `nn/swiglu_bwd`: the same ingredients, plus the cancellation in `1 + x * (1 - s)` near its root
/// x ≈ -1.278 where dgate's relative error is unbounded; there the absolute error is a few ulps of
/// |dh * up| = O(1) (lavapipe: at most 3e-9 near the root, 2.9e-6 at values of 10 and more).
const BWD_ATOL: f32 = 1e-6;
const BWD_RTOL: f32 = 2e-5;
/// Reference backward against central differences (step 1e-2 in f32 inputs, O(1) values).
const FD_ATOL: f64 = 2e-4;
const FD_RTOL: f64 = 1e-3;

/// Element counts: one, below / at / just over a 256-invocation workgroup, odd, several
/// workgroups.
const SIZES: &[usize] = &[1, 7, 255, 256, 257, 1000, 4099];

/// Gate values ~N(0, 3) with every 11th element replaced by a large-magnitude or special value
/// (silu must not overflow for |x| up to 100, and 0 is exact).
fn gate_values(rng: &mut Rng, n: usize) -> Vec<f32> {
    const SPECIAL: [f32; 10] = [
        -100.0, -88.5, -30.0, -1.2785, -1e-3, 0.0, 1e-3, 30.0, 88.5, 100.0,
    ];
    (0..n)
        .map(|i| {
            if i % 11 == 5 {
                SPECIAL[(i / 11) % SPECIAL.len()]
            } else {
                rng.normal() * 3.0
            }
        })
        .collect()
}

fn up(gpu: &Gpu, label: &str, v: &[f32]) -> GpuBuffer {
    gpu.upload(label, v).unwrap()
}

fn read(gpu: &Gpu, b: &GpuBuffer) -> Vec<f32> {
    gpu.read_blocking::<f32>(b).unwrap()
}

#[test]
fn swiglu_fwd_matches_reference() {
    let Some(gpu) = gpu() else { return };
    for (si, &n) in SIZES.iter().enumerate() {
        let mut rng = Rng::new(300 + si as u64);
        let gate = gate_values(&mut rng, n);
        let upv = rng.vec(n, 1.5);
        let want = rnn::swiglu_fwd(&gate, &upv);
        let (gb, ub) = (up(gpu, "gate", &gate), up(gpu, "up", &upv));
        let hb = up(gpu, "h", &vec![f32::NAN; n]); // every element must be overwritten
        let mut enc = gpu.encoder();
        nn::swiglu_fwd(&mut enc, &gb, &ub, &hb, n).unwrap();
        enc.submit();
        assert_close(
            &format!("nn/swiglu_fwd n={n}"),
            &read(gpu, &hb),
            &want,
            FWD_ATOL,
            FWD_RTOL,
        );
    }
}

#[test]
fn swiglu_bwd_matches_reference() {
    let Some(gpu) = gpu() else { return };
    for (si, &n) in SIZES.iter().enumerate() {
        let mut rng = Rng::new(400 + si as u64);
        let gate = gate_values(&mut rng, n);
        let upv = rng.vec(n, 1.5);
        let dh = rng.vec(n, 1.0);
        let (want_dg, want_du) = rnn::swiglu_bwd(&dh, &gate, &upv);
        let (dhb, gb, ub) = (
            up(gpu, "dh", &dh),
            up(gpu, "gate", &gate),
            up(gpu, "up", &upv),
        );
        let dgb = up(gpu, "dgate", &vec![f32::NAN; n]);
        let dub = up(gpu, "dup", &vec![f32::NAN; n]);
        let mut enc = gpu.encoder();
        nn::swiglu_bwd(&mut enc, &dhb, &gb, &ub, &dgb, &dub, n).unwrap();
        enc.submit();
        let tag = format!("nn/swiglu_bwd n={n}");
        assert_close(
            &format!("{tag} dgate"),
            &read(gpu, &dgb),
            &want_dg,
            BWD_ATOL,
            BWD_RTOL,
        );
        assert_close(
            &format!("{tag} dup"),
            &read(gpu, &dub),
            &want_du,
            BWD_ATOL,
            BWD_RTOL,
        );
    }
}

/// `L = Σ dh * swiglu_fwd(gate, up)`; its central differences in each gate and up element must
/// match `swiglu_bwd`.
#[test]
fn swiglu_bwd_matches_finite_differences() {
    let mut rng = Rng::new(7);
    let n = 48;
    // Moderate gates so the step stays small against the curvature; include 0 and the root of
    // silu' region.
    let mut gate = rng.vec(n, 2.0);
    gate[0] = 0.0;
    gate[1] = -1.28;
    gate[2] = 6.0;
    gate[3] = -6.0;
    let upv = rng.vec(n, 1.0);
    let dh = rng.vec(n, 1.0);
    let (dgate, dup) = rnn::swiglu_bwd(&dh, &gate, &upv);
    let loss = |g: &[f32], u: &[f32]| -> f64 {
        rnn::swiglu_fwd(g, u)
            .iter()
            .zip(&dh)
            .map(|(&h, &d)| h as f64 * d as f64)
            .sum()
    };
    let step = 1e-2f32;
    let fd = |which: usize, i: usize| -> f64 {
        let (mut gp, mut up_) = (gate.clone(), upv.clone());
        let (mut gm, mut um) = (gate.clone(), upv.clone());
        let (hi, lo) = if which == 0 {
            gp[i] += step;
            gm[i] -= step;
            (gp[i], gm[i])
        } else {
            up_[i] += step;
            um[i] -= step;
            (up_[i], um[i])
        };
        (loss(&gp, &up_) - loss(&gm, &um)) / (hi as f64 - lo as f64)
    };
    for i in 0..n {
        for (which, name, analytic) in [(0, "dgate", &dgate), (1, "dup", &dup)] {
            let num = fd(which, i);
            let a = analytic[i] as f64;
            assert!(
                (num - a).abs() <= FD_ATOL + FD_RTOL * a.abs(),
                "swiglu_bwd {name}[{i}] (gate {}, up {}, dh {}): analytic {a} vs numeric {num}",
                gate[i],
                upv[i],
                dh[i]
            );
        }
    }
}

/// The reference against torch 2.15 (the values printed by):
/// ```python
/// import torch, torch.nn.functional as F
/// x = torch.tensor([-100.0, -20.0, -1.5, 0.0, 0.75, 20.0, 100.0], requires_grad=True)
/// u = torch.tensor([0.5, -2.0, 1.25, 3.0, -0.75, 1.5, -0.25])
/// h = F.silu(x) * u
/// print([repr(v) for v in h.tolist()])
/// h.backward(torch.tensor([1.0, -0.5, 2.0, 0.25, 1.5, -1.0, 0.75]))
/// print([repr(v) for v in x.grad.tolist()])
/// ```
/// (torch's `x / (1 + exp(-x))` underflows to -0 at x = -100 where the stable form gives
/// -1.9e-42; both are within the absolute floor.)
#[test]
fn swiglu_reference_matches_torch() {
    let gate = [-100.0f32, -20.0, -1.5, 0.0, 0.75, 20.0, 100.0];
    let upv = [0.5f32, -2.0, 1.25, 3.0, -0.75, 1.5, -0.25];
    let dh = [1.0f32, -0.5, 2.0, 0.25, 1.5, -1.0, 0.75];
    // torch's float32 results, printed as Python floats (f64); `as f32` recovers them exactly.
    let torch_h = [
        -0.0f64,
        8.244614946306683e-08,
        -0.3420478403568268,
        0.0,
        -0.38203802704811096,
        30.0,
        -25.0,
    ]
    .map(|v| v as f32);
    let torch_dgate = [
        -0.0f64,
        -3.916192170549948e-08,
        -0.1032354012131691,
        0.375,
        -0.9479249715805054,
        -1.5,
        -0.1875,
    ]
    .map(|v| v as f32);
    assert_close(
        "swiglu_fwd vs torch",
        &rnn::swiglu_fwd(&gate, &upv),
        &torch_h,
        1e-30,
        1e-6,
    );
    let (dgate, _) = rnn::swiglu_bwd(&dh, &gate, &upv);
    assert_close(
        "swiglu_bwd dgate vs torch",
        &dgate,
        &torch_dgate,
        1e-30,
        1e-6,
    );
}

#[test]
fn swiglu_launchers_reject_bad_shapes() {
    let Some(gpu) = gpu() else { return };
    let a = gpu.alloc("a", 4 * 10).unwrap();
    let b = gpu.alloc("b", 4 * 10).unwrap();
    let c = gpu.alloc("c", 4 * 9).unwrap();
    let d = gpu.alloc("d", 4 * 10).unwrap();
    let is_shape = |e: Result<(), GpuError>| matches!(e, Err(GpuError::Shape { .. }));
    let mut enc = gpu.encoder();
    assert!(is_shape(nn::swiglu_fwd(&mut enc, &a, &b, &c, 10)));
    assert!(is_shape(nn::swiglu_fwd(&mut enc, &a, &b, &a, 10)));
    assert!(is_shape(nn::swiglu_bwd(&mut enc, &a, &b, &d, &c, &a, 9)));
    assert!(is_shape(nn::swiglu_bwd(&mut enc, &a, &b, &d, &c, &c, 9)));
    // Two read-only inputs may share a buffer.
    assert!(nn::swiglu_bwd(&mut enc, &a, &b, &b, &c, &d, 9).is_ok());
    assert!(nn::swiglu_fwd(&mut enc, &a, &b, &c, 0).is_ok());
}
