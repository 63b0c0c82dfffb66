//! RMSNorm kernels (`nn/rmsnorm_fwd`, `nn/rmsnorm_bwd`) against the CPU reference, and the
//! reference backward against finite differences of the reference forward.

mod common;

use common::{assert_close, gpu, Rng};
use tinytune::gpu::ops::nn;
use tinytune::gpu::{Gpu, GpuBuffer, GpuError};
use tinytune::reference::nn as rnn;

/// |gpu - ref| <= atol + rtol * |ref| for `nn/rmsnorm_fwd`: the GPU sums squares in another order
/// (f32 partial sums + a tree, reference f64) and its `1/sqrt` is not correctly rounded (WGSL
/// allows 2.5 ulp for `/`), so y and rstd carry a few ulp.
const FWD_ATOL: f32 = 1e-6;
const FWD_RTOL: f32 = 4e-6;
/// Same for `nn/rmsnorm_bwd` (dx; its dot product is summed like the forward's squares).
const BWD_ATOL: f32 = 2e-6;
const BWD_RTOL: f32 = 1e-5;
/// Same for the `weight_grad` entry point (dw summed over rows in f32 on the GPU, f64 in the
/// reference; at most 65 rows here).
const DW_ATOL: f32 = 1e-5;
const DW_RTOL: f32 = 1e-5;

/// (M, C): M = 1, C = 1, C not a multiple of 4 or of the 64-wide workgroup, C < 64 (idle
/// invocations), C well above 64 (several strided loads per invocation), many rows.
const SHAPES: &[(usize, usize)] = &[
    (1, 1),
    (1, 5),
    (3, 64),
    (2, 67),
    (7, 130),
    (5, 576),
    (65, 9),
    (4, 1000),
];

fn up<T: bytemuck::Pod>(gpu: &Gpu, label: &str, v: &[T]) -> GpuBuffer {
    gpu.upload(label, v).unwrap()
}

/// Rows of different scales: ~N(0,1), tiny (eps matters), large, and (row 3 when present) zeros.
fn input(rng: &mut Rng, m: usize, c: usize) -> Vec<f32> {
    let mut x = Vec::with_capacity(m * c);
    for r in 0..m {
        let scale = match r % 4 {
            0 => 1.0,
            1 => 1e-3,
            2 => 30.0,
            _ => 0.0,
        };
        x.extend(rng.vec(c, scale));
    }
    x
}

/// Weights around 1 like trained norm weights.
fn weight(rng: &mut Rng, c: usize) -> Vec<f32> {
    rng.vec(c, 0.3).iter().map(|v| 1.0 + v).collect()
}

#[test]
fn rmsnorm_fwd_matches_reference() {
    let Some(gpu) = gpu() else { return };
    for (si, &(m, c)) in SHAPES.iter().enumerate() {
        let eps = if si % 2 == 0 { 1e-5 } else { 1e-6 };
        let mut rng = Rng::new(10 + si as u64);
        let x = input(&mut rng, m, c);
        let w = weight(&mut rng, c);
        let (want_y, want_r) = rnn::rmsnorm_fwd(&x, &w, m, c, eps);
        let (xb, wb) = (up(gpu, "x", &x), up(gpu, "w", &w));
        // NaN-filled outputs: every element must be written.
        let yb = up(gpu, "y", &vec![f32::NAN; m * c]);
        let rb = up(gpu, "rstd", &vec![f32::NAN; m]);
        let mut enc = gpu.encoder();
        nn::rmsnorm_fwd(&mut enc, &xb, &wb, &yb, &rb, m, c, eps).unwrap();
        enc.submit();
        let tag = format!("nn/rmsnorm_fwd m={m} c={c}");
        let got_r = gpu.read_blocking::<f32>(&rb).unwrap();
        assert_close(&format!("{tag} rstd"), &got_r, &want_r, 0.0, FWD_RTOL);
        let got_y = gpu.read_blocking::<f32>(&yb).unwrap();
        assert_close(&format!("{tag} y"), &got_y, &want_y, FWD_ATOL, FWD_RTOL);
    }
}

#[test]
fn rmsnorm_bwd_matches_reference() {
    let Some(gpu) = gpu() else { return };
    for (si, &(m, c)) in SHAPES.iter().enumerate() {
        let mut rng = Rng::new(20 + si as u64);
        let x = input(&mut rng, m, c);
        let w = weight(&mut rng, c);
        let (_, rstd) = rnn::rmsnorm_fwd(&x, &w, m, c, 1e-5);
        let dy = rng.vec(m * c, 1.0);
        let want = rnn::rmsnorm_bwd(&dy, &x, &w, &rstd, m, c);
        let dx0 = rng.vec(m * c, 1.0);
        let (dyb, xb, wb, rb) = (
            up(gpu, "dy", &dy),
            up(gpu, "x", &x),
            up(gpu, "w", &w),
            up(gpu, "rstd", &rstd),
        );
        for accumulate in [false, true] {
            let dxb = if accumulate {
                up(gpu, "dx", &dx0)
            } else {
                up(gpu, "dx", &vec![f32::NAN; m * c])
            };
            let mut enc = gpu.encoder();
            nn::rmsnorm_bwd(&mut enc, &dyb, &xb, &wb, &rb, &dxb, m, c, accumulate).unwrap();
            enc.submit();
            let want_dx: Vec<f32> = if accumulate {
                dx0.iter().zip(&want).map(|(a, b)| a + b).collect()
            } else {
                want.clone()
            };
            assert_close(
                &format!("nn/rmsnorm_bwd m={m} c={c} accumulate={accumulate} dx"),
                &gpu.read_blocking::<f32>(&dxb).unwrap(),
                &want_dx,
                BWD_ATOL,
                BWD_RTOL,
            );
        }
    }
}

#[test]
fn rmsnorm_bwd_weight_matches_reference() {
    let Some(gpu) = gpu() else { return };
    for (si, &(m, c)) in SHAPES.iter().enumerate() {
        let mut rng = Rng::new(30 + si as u64);
        let x = input(&mut rng, m, c);
        let w = weight(&mut rng, c);
        let (_, rstd) = rnn::rmsnorm_fwd(&x, &w, m, c, 1e-5);
        let dy = rng.vec(m * c, 1.0);
        let want = rnn::rmsnorm_bwd_weight(&dy, &x, &rstd, m, c);
        let dw0 = rng.vec(c, 1.0);
        let (dyb, xb, rb) = (up(gpu, "dy", &dy), up(gpu, "x", &x), up(gpu, "rstd", &rstd));
        for accumulate in [false, true] {
            let dwb = if accumulate {
                up(gpu, "dw", &dw0)
            } else {
                up(gpu, "dw", &vec![f32::NAN; c])
            };
            let mut enc = gpu.encoder();
            nn::rmsnorm_bwd_weight(&mut enc, &dyb, &xb, &rb, &dwb, m, c, accumulate).unwrap();
            enc.submit();
            let want_dw: Vec<f32> = if accumulate {
                dw0.iter().zip(&want).map(|(a, b)| a + b).collect()
            } else {
                want.clone()
            };
            assert_close(
                &format!("nn/rmsnorm_bwd weight_grad m={m} c={c} accumulate={accumulate} dw"),
                &gpu.read_blocking::<f32>(&dwb).unwrap(),
                &want_dw,
                DW_ATOL,
                DW_RTOL,
            );
        }
    }
}

/// The reference backward (dx and dw) against central differences of the reference forward for
/// `L = Σ G ⊙ y` with random `G` (so `dL/dy = G`). y is smooth in x, so the step trades f32
/// rounding of the forward (L summed in f64) against the O(step²) truncation error.
#[test]
fn rmsnorm_bwd_matches_finite_differences() {
    const STEP: f32 = 1.0 / 256.0; // exact in binary
    const TOL: f64 = 2e-3;
    for &(m, c, eps) in &[(1usize, 7usize, 1e-5f32), (3, 5, 1e-6), (2, 16, 1e-2)] {
        let mut rng = Rng::new(40 + (m * 10 + c) as u64);
        let x = rng.vec(m * c, 1.0);
        let w = weight(&mut rng, c);
        let g = rng.vec(m * c, 1.0);
        let loss = |x: &[f32], w: &[f32]| -> f64 {
            let (y, _) = rnn::rmsnorm_fwd(x, w, m, c, eps);
            y.iter().zip(&g).map(|(&a, &b)| a as f64 * b as f64).sum()
        };
        let (_, rstd) = rnn::rmsnorm_fwd(&x, &w, m, c, eps);
        let dx = rnn::rmsnorm_bwd(&g, &x, &w, &rstd, m, c);
        let dw = rnn::rmsnorm_bwd_weight(&g, &x, &rstd, m, c);
        for (name, analytic, which) in [("dx", &dx, 0), ("dw", &dw, 1)] {
            for (i, &an) in analytic.iter().enumerate() {
                let (mut xp, mut wp) = (x.clone(), w.clone());
                let (mut xm, mut wm) = (x.clone(), w.clone());
                if which == 0 {
                    xp[i] += STEP;
                    xm[i] -= STEP;
                } else {
                    wp[i] += STEP;
                    wm[i] -= STEP;
                }
                let num = (loss(&xp, &wp) - loss(&xm, &wm)) / (2.0 * STEP as f64);
                assert!(
                    (an as f64 - num).abs() <= TOL * (1.0 + num.abs()),
                    "{name}[{i}] m={m} c={c}: backward {an} vs finite difference {num}"
                );
            }
        }
    }
}

#[test]
fn rmsnorm_launchers_reject_bad_shapes() {
    let Some(gpu) = gpu() else { return };
    let (m, c) = (3, 8);
    let buf = |label: &str, len: usize| gpu.alloc(label, len as u64 * 4).unwrap();
    let (x, w, y, r, dy, dx) = (
        buf("x", m * c),
        buf("w", c),
        buf("y", m * c),
        buf("rstd", m),
        buf("dy", m * c),
        buf("dx", m * c),
    );
    let short = buf("short", m * c - 1);
    let is_shape = |e: Result<(), GpuError>| matches!(e, Err(GpuError::Shape { .. }));
    let mut enc = gpu.encoder();
    assert!(
        is_shape(nn::rmsnorm_fwd(&mut enc, &short, &w, &y, &r, m, c, 1e-5)),
        "short x"
    );
    assert!(
        is_shape(nn::rmsnorm_fwd(
            &mut enc,
            &x,
            &w,
            &y,
            &buf("r", m - 1),
            m,
            c,
            1e-5
        )),
        "short rstd"
    );
    assert!(
        is_shape(nn::rmsnorm_fwd(&mut enc, &x, &w, &x, &r, m, c, 1e-5)),
        "y aliases x"
    );
    assert!(
        is_shape(nn::rmsnorm_fwd(&mut enc, &x, &w, &y, &r, m, 0, 1e-5)),
        "c = 0"
    );
    assert!(
        is_shape(nn::rmsnorm_bwd(
            &mut enc, &dy, &x, &w, &r, &short, m, c, false
        )),
        "short dx"
    );
    assert!(
        is_shape(nn::rmsnorm_bwd(&mut enc, &dy, &x, &w, &r, &dy, m, c, true)),
        "dx aliases dy"
    );
    assert!(
        is_shape(nn::rmsnorm_bwd_weight(
            &mut enc,
            &dy,
            &x,
            &r,
            &buf("dw", c - 1),
            m,
            c,
            false
        )),
        "short dw"
    );
    assert!(nn::rmsnorm_fwd(&mut enc, &x, &w, &y, &r, m, c, 1e-5).is_ok());
    assert!(nn::rmsnorm_bwd(&mut enc, &dy, &x, &w, &r, &dx, m, c, true).is_ok());
    enc.submit();
    gpu.sync().unwrap();
}
