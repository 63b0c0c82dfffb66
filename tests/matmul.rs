//! Matmul kernels (f32 and dequantizing NF4) against the plain-loop reference, on awkward shapes.

mod common;

use common::{assert_close, gpu, Rng};
use tinytune::gpu::ops::{nf4, nn};
use tinytune::gpu::{Gpu, GpuError};
use tinytune::reference::nf4::Nf4Tensor;
use tinytune::reference::nn as rnn;

/// f32 sums of K products in a different order: absolute error grows like sqrt(K) ulps of the terms.
const MATMUL_ATOL_PER_SQRT_K: f32 = 1e-5;
const MATMUL_RTOL: f32 = 1e-4;

fn atol(k: usize) -> f32 {
    MATMUL_ATOL_PER_SQRT_K * (k.max(1) as f32).sqrt()
}

/// `want = y0 + alpha * prod` (with `accumulate`) or `alpha * prod`, as the kernels define it.
fn expected(prod: &[f32], y0: &[f32], alpha: f32, accumulate: bool) -> Vec<f32> {
    prod.iter().zip(y0).map(|(p, y)| if accumulate { y + alpha * p } else { alpha * p }).collect()
}

/// Shapes (M, K, N): M=1, M not a multiple of 8, K not a multiple of 4 or 8, N odd, one element.
const SHAPES: &[(usize, usize, usize)] =
    &[(1, 1, 1), (1, 64, 37), (3, 7, 5), (8, 16, 8), (13, 100, 29), (17, 129, 40), (40, 96, 65), (9, 576, 24)];

fn run_nn(gpu: &Gpu, m: usize, k: usize, n: usize, alpha: f32, accumulate: bool, seed: u64) {
    let mut rng = Rng::new(seed);
    let x = rng.vec(m * k, 1.0);
    let w = rng.vec(n * k, 0.5);
    let y0 = rng.vec(m * n, 1.0);
    let xb = gpu.upload("x", &x).unwrap();
    let wb = gpu.upload("w", &w).unwrap();
    let yb = gpu.upload("y", &y0).unwrap();
    let mut enc = gpu.encoder();
    nn::matmul_fwd(&mut enc, &xb, &wb, &yb, m, k, n, alpha, accumulate).unwrap();
    enc.submit();
    let got = gpu.read_blocking::<f32>(&yb).unwrap();
    let want = expected(&rnn::matmul_fwd(&x, &w, m, k, n), &y0, alpha, accumulate);
    assert_close(&format!("nn/matmul_fwd m={m} k={k} n={n} alpha={alpha} acc={accumulate}"), &got, &want, atol(k), MATMUL_RTOL);
}

#[test]
fn nn_matmul_fwd_matches_reference() {
    let Some(gpu) = gpu() else { return };
    for (i, &(m, k, n)) in SHAPES.iter().enumerate() {
        run_nn(gpu, m, k, n, 1.0, false, 100 + i as u64);
        run_nn(gpu, m, k, n, -0.75, true, 200 + i as u64);
    }
}
