//! Dequantizing NF4 matmul kernels (`nf4/matmul_fwd`, `nf4/matmul_bwd_input`) against the
//! plain-loop reference (dense matmul of the dequantized weight), on awkward shapes.

mod common;

use common::{assert_close, for_each_kernels, Rng};
use tinytune::gpu::ops::nf4;
use tinytune::gpu::{Gpu, GpuError};
use tinytune::reference::nf4::{self as rnf4, Nf4Tensor};

/// f32 sums of K products in a different order: absolute error grows like sqrt(K) ulps of the terms.
const MATMUL_ATOL_PER_SQRT_K: f32 = 1e-5;
const MATMUL_RTOL: f32 = 1e-4;

fn atol(k: usize) -> f32 {
    MATMUL_ATOL_PER_SQRT_K * (k.max(1) as f32).sqrt()
}

/// `want = y0 + alpha * prod` (with `accumulate`) or `alpha * prod`, as the kernels define it.
fn expected(prod: &[f32], y0: &[f32], alpha: f32, accumulate: bool) -> Vec<f32> {
    prod.iter()
        .zip(y0)
        .map(|(p, y)| if accumulate { y + alpha * p } else { alpha * p })
        .collect()
}

/// NF4 cases (M, K, N, block, double_quant, also run with accumulate): M=1, N odd, K % 8 != 0
/// (W rows start mid-word), K % block != 0 and K < block (blocks straddle rows), > 256 blocks (a
/// second nested scale), blocks 32 and 4096, several workgroups. Each (rows tile, block, dq, K % 8 != 0, accumulate)
/// combination is a pipeline to compile (about a second on lavapipe), so cases share them.
const NF4_CASES: &[(usize, usize, usize, usize, bool, bool)] = &[
    (1, 100, 9, 64, true, true),
    (1, 64, 37, 64, false, false),
    (5, 100, 7, 64, true, true),
    (13, 100, 33, 64, false, false),
    (13, 7, 5, 64, false, false),
    (17, 130, 9, 64, false, false),
    (9, 576, 24, 64, true, true),
    (11, 200, 101, 64, true, false),
    (64, 72, 203, 64, true, false),
    (13, 96, 33, 32, true, false),
    (9, 1000, 3, 4096, true, false),
    (70, 68, 130, 128, true, true),
];

struct Nf4Case {
    t: Nf4Tensor,
    w: nf4::Nf4Weight,
}

fn nf4_case(gpu: &Gpu, k: usize, n: usize, block: usize, dq: bool, seed: u64) -> Nf4Case {
    let wf = Rng::new(seed).vec(n * k, 0.5);
    let t = Nf4Tensor::quantize(&wf, block, dq);
    let w = nf4::Nf4Weight::upload(gpu, "w", &common::nf4::device_form(&t)).unwrap();
    Nf4Case { t, w }
}

#[test]
fn matmul_fwd_matches_reference() {
    for_each_kernels(|gpu| {
        for (ci, &(m, k, n, block, dq, acc)) in NF4_CASES.iter().enumerate() {
            let c = nf4_case(gpu, k, n, block, dq, 300 + ci as u64);
            assert_eq!(c.t.n, n * k);
            let mut rng = Rng::new(400 + ci as u64);
            let x = rng.vec(m * k, 1.0);
            let y0 = rng.vec(m * n, 1.0);
            let xb = gpu.upload("x", &x).unwrap();
            let prod = rnf4::matmul_fwd(&x, &c.t, m, k, n);
            let modes: &[(f32, bool)] = if acc {
                &[(1.0, false), (0.5, true)]
            } else {
                &[(-1.5, false)]
            };
            for &(alpha, accumulate) in modes {
                let yb = gpu.upload("y", &y0).unwrap();
                let mut enc = gpu.encoder();
                nf4::matmul_fwd(
                    &mut enc,
                    &xb,
                    &c.w,
                    &yb,
                    nf4::MatmulShape { m, k, n },
                    alpha,
                    accumulate,
                )
                .unwrap();
                enc.submit();
                let got = gpu.read_blocking::<f32>(&yb).unwrap();
                let want = expected(&prod, &y0, alpha, accumulate);
                let name = format!("nf4/matmul_fwd m={m} k={k} n={n} block={block} dq={dq} alpha={alpha} acc={accumulate}");
                assert_close(&name, &got, &want, atol(k), MATMUL_RTOL);
            }
        }
    });
}

#[test]
fn matmul_bwd_input_matches_reference() {
    for_each_kernels(|gpu| {
        for (ci, &(m, k, n, block, dq, acc)) in NF4_CASES.iter().enumerate() {
            let c = nf4_case(gpu, k, n, block, dq, 500 + ci as u64);
            let mut rng = Rng::new(600 + ci as u64);
            let dy = rng.vec(m * n, 1.0);
            let dx0 = rng.vec(m * k, 1.0);
            let dyb = gpu.upload("dy", &dy).unwrap();
            let prod = rnf4::matmul_bwd_input(&dy, &c.t, m, k, n);
            for &accumulate in if acc {
                &[false, true][..]
            } else {
                &[false][..]
            } {
                let dxb = gpu.upload("dx", &dx0).unwrap();
                let mut enc = gpu.encoder();
                nf4::matmul_bwd_input(
                    &mut enc,
                    &dyb,
                    &c.w,
                    &dxb,
                    nf4::MatmulShape { m, k, n },
                    accumulate,
                )
                .unwrap();
                enc.submit();
                let got = gpu.read_blocking::<f32>(&dxb).unwrap();
                let want = expected(&prod, &dx0, 1.0, accumulate);
                let name = format!(
                    "nf4/matmul_bwd_input m={m} k={k} n={n} block={block} dq={dq} acc={accumulate}"
                );
                assert_close(&name, &got, &want, atol(n), MATMUL_RTOL);
            }
        }
    });
}

fn is_shape_err<T: std::fmt::Debug>(r: Result<T, GpuError>, what: &str) {
    match r {
        Err(GpuError::Shape { .. }) => {}
        other => panic!("{what}: expected a shape error, got {other:?}"),
    }
}

#[test]
fn matmul_shape_mismatch_is_an_error() {
    for_each_kernels(|gpu| {
        let (m, k, n) = (4, 16, 8);
        let x = gpu.alloc("x", (m * k * 4) as u64).unwrap();
        let y = gpu.alloc("y", (m * n * 4) as u64).unwrap();
        let c = nf4_case(gpu, k, n, 64, true, 7);
        let mut enc = gpu.encoder();
        // NF4: the weight's element count must be n*k.
        is_shape_err(
            nf4::matmul_fwd(
                &mut enc,
                &x,
                &c.w,
                &y,
                nf4::MatmulShape { m, k, n: n - 1 },
                1.0,
                false,
            ),
            "nf4 fwd n",
        );
        // Same element count (k/2 * 2n), but then y is too small for (m, 2n).
        is_shape_err(
            nf4::matmul_fwd(
                &mut enc,
                &x,
                &c.w,
                &y,
                nf4::MatmulShape {
                    m,
                    k: k / 2,
                    n: n * 2,
                },
                1.0,
                false,
            ),
            "nf4 fwd y",
        );
        is_shape_err(
            nf4::matmul_fwd(
                &mut enc,
                &x,
                &c.w,
                &y,
                nf4::MatmulShape { m: m + 1, k, n },
                1.0,
                false,
            ),
            "nf4 fwd x rows",
        );
        is_shape_err(
            nf4::matmul_bwd_input(
                &mut enc,
                &y,
                &c.w,
                &x,
                nf4::MatmulShape { m, k: k + 1, n },
                false,
            ),
            "nf4 bwd k",
        );
        is_shape_err(
            nf4::matmul_bwd_input(&mut enc, &y, &c.w, &y, nf4::MatmulShape { m, k, n }, true),
            "nf4 bwd dx too small",
        );
        // The valid call still works after the rejected ones.
        nf4::matmul_fwd(
            &mut enc,
            &x,
            &c.w,
            &y,
            nf4::MatmulShape { m, k, n },
            1.0,
            false,
        )
        .unwrap();
        enc.submit();
        gpu.sync().unwrap();
        // A hand-built weight whose buffers do not match its layout, or with an invalid block size.
        let nf4::Nf4Weight {
            n: wn,
            block,
            double_quant,
            codes,
            absmax,
            dq,
        } = c.w;
        let short = gpu.alloc("short", 4).unwrap();
        let bad = nf4::Nf4Weight {
            n: wn,
            block,
            double_quant,
            codes: short,
            absmax,
            dq,
        };
        let mut enc = gpu.encoder();
        is_shape_err(
            nf4::matmul_fwd(
                &mut enc,
                &x,
                &bad,
                &y,
                nf4::MatmulShape { m, k, n },
                1.0,
                false,
            ),
            "nf4 fwd short codes",
        );
        let bad = nf4::Nf4Weight {
            block: 48,
            codes,
            ..bad
        };
        is_shape_err(
            nf4::matmul_bwd_input(&mut enc, &y, &bad, &x, nf4::MatmulShape { m, k, n }, false),
            "nf4 bwd block 48",
        );
    });
}

/// Rows of a large product the test compares: the first and last of every 64-row tile edge it
/// spans, plus a few inside (the GPU variant's tiles are 64 × 64, the CPU variant's 8 rows).
fn sample_rows(m: usize) -> Vec<usize> {
    let mut rows: Vec<usize> = (0..m)
        .step_by(64)
        .flat_map(|r| [r, r + 63, r + 37])
        .collect();
    rows.retain(|&r| r < m);
    rows.push(m - 1);
    rows.sort_unstable();
    rows.dedup();
    rows
}

/// The rows `rows` of a row-major `[_, cols]` matrix.
fn pick(a: &[f32], cols: usize, rows: &[usize]) -> Vec<f32> {
    rows.iter()
        .flat_map(|&r| a[r * cols..(r + 1) * cols].iter().copied())
        .collect()
}

/// Both kernels once on a large grid (M = 512, K = 2048, N = 2048: 32 × 32 tiles of the GPU
/// variant, thousands of CPU-variant invocations), compared on sampled rows (every column).
#[test]
fn matmul_large_grid_matches_reference() {
    let (m, k, n, block) = (512, 2048, 2048, 64);
    for_each_kernels(|gpu| {
        let c = nf4_case(gpu, k, n, block, true, 900);
        let mut rng = Rng::new(901);
        let x = rng.vec(m * k, 1.0);
        let dy = rng.vec(m * n, 1.0);
        let rows = sample_rows(m);
        let (xb, dyb) = (gpu.upload("x", &x).unwrap(), gpu.upload("dy", &dy).unwrap());
        let yb = gpu.alloc("y", (m * n * 4) as u64).unwrap();
        let dxb = gpu.alloc("dx", (m * k * 4) as u64).unwrap();
        let s = nf4::MatmulShape { m, k, n };
        let mut enc = gpu.encoder();
        nf4::matmul_fwd(&mut enc, &xb, &c.w, &yb, s, 1.0, false).unwrap();
        nf4::matmul_bwd_input(&mut enc, &dyb, &c.w, &dxb, s, false).unwrap();
        enc.submit();
        let y = gpu.read_blocking::<f32>(&yb).unwrap();
        let dx = gpu.read_blocking::<f32>(&dxb).unwrap();
        let nr = rows.len();
        let want_y = rnf4::matmul_fwd(&pick(&x, k, &rows), &c.t, nr, k, n);
        assert_close(
            "nf4/matmul_fwd 512x2048x2048",
            &pick(&y, n, &rows),
            &want_y,
            atol(k),
            MATMUL_RTOL,
        );
        let want_dx = rnf4::matmul_bwd_input(&pick(&dy, n, &rows), &c.t, nr, k, n);
        assert_close(
            "nf4/matmul_bwd_input 512x2048x2048",
            &pick(&dx, k, &rows),
            &want_dx,
            atol(n),
            MATMUL_RTOL,
        );
    });
}
