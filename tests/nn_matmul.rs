//! Dense f32 matmul kernels (`nn/matmul_fwd`, `nn/matmul_bwd_input`) against the plain-loop
//! reference, on awkward shapes.

mod common;

use common::{assert_close, for_each_kernels, Rng};
use tinytune::gpu::ops::nn;
use tinytune::gpu::{Gpu, GpuError, TableDtype};
use tinytune::reference::nn as rnn;

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

/// Shapes (M, K, N): M=1, M not a multiple of 8, K not a multiple of 4 or 8, N odd, one element,
/// several workgroups.
const SHAPES: &[(usize, usize, usize)] = &[
    (1, 1, 1),
    (1, 64, 37),
    (3, 7, 5),
    (8, 16, 8),
    (13, 100, 29),
    (17, 129, 40),
    (40, 96, 65),
    (9, 576, 24),
    (70, 33, 131),
];

fn run_nn(gpu: &Gpu, m: usize, k: usize, n: usize, alpha: f32, accumulate: bool, seed: u64) {
    let mut rng = Rng::new(seed);
    let x = rng.vec(m * k, 1.0);
    let w = rng.vec(n * k, 0.5);
    let y0 = rng.vec(m * n, 1.0);
    let xb = gpu.upload("x", &x).unwrap();
    let wb = gpu.upload("w", &w).unwrap();
    let yb = gpu.upload("y", &y0).unwrap();
    let mut enc = gpu.encoder();
    nn::matmul_fwd(
        &mut enc,
        &xb,
        &wb,
        &yb,
        nn::MatmulShape { m, k, n },
        alpha,
        accumulate,
    )
    .unwrap();
    enc.submit();
    let got = gpu.read_blocking::<f32>(&yb).unwrap();
    let want = expected(&rnn::matmul_fwd(&x, &w, m, k, n), &y0, alpha, accumulate);
    assert_close(
        &format!("nn/matmul_fwd m={m} k={k} n={n} alpha={alpha} acc={accumulate}"),
        &got,
        &want,
        atol(k),
        MATMUL_RTOL,
    );
}

#[test]
fn matmul_fwd_matches_reference() {
    for_each_kernels(|gpu| {
        for (i, &(m, k, n)) in SHAPES.iter().enumerate() {
            run_nn(gpu, m, k, n, 1.0, false, 100 + i as u64);
            run_nn(gpu, m, k, n, -0.75, true, 200 + i as u64);
        }
    });
}

fn run_nn_bwd_input(gpu: &Gpu, m: usize, k: usize, n: usize, accumulate: bool, seed: u64) {
    let mut rng = Rng::new(seed);
    // Zero-size operands (n = 0) still get a one-element buffer to bind.
    let dy = rng.vec((m * n).max(1), 1.0);
    let w = rng.vec((n * k).max(1), 0.5);
    let dx0 = rng.vec(m * k, 1.0);
    let dyb = gpu.upload("dy", &dy).unwrap();
    let wb = gpu.upload("w", &w).unwrap();
    let dxb = gpu.upload("dx", &dx0).unwrap();
    let mut enc = gpu.encoder();
    nn::matmul_bwd_input(
        &mut enc,
        &dyb,
        &wb,
        &dxb,
        nn::MatmulShape { m, k, n },
        accumulate,
    )
    .unwrap();
    enc.submit();
    let got = gpu.read_blocking::<f32>(&dxb).unwrap();
    let want = expected(
        &rnn::matmul_bwd_input(&dy, &w, m, k, n),
        &dx0,
        1.0,
        accumulate,
    );
    assert_close(
        &format!("nn/matmul_bwd_input m={m} k={k} n={n} acc={accumulate}"),
        &got,
        &want,
        atol(n),
        MATMUL_RTOL,
    );
}

#[test]
fn matmul_bwd_input_matches_reference() {
    for_each_kernels(|gpu| {
        // SHAPES as (M, K, N): M=1, K=7, K=100, K=129, N odd, several workgroups.
        for (i, &(m, k, n)) in SHAPES.iter().enumerate() {
            run_nn_bwd_input(gpu, m, k, n, false, 700 + i as u64);
            run_nn_bwd_input(gpu, m, k, n, true, 800 + i as u64);
        }
        // N = 0: dx = 0, or dx unchanged with accumulate.
        run_nn_bwd_input(gpu, 5, 7, 0, false, 900);
        run_nn_bwd_input(gpu, 5, 7, 0, true, 901);

        // Shape mismatches are errors, not panics.
        let (m, k, n) = (4, 16, 8);
        let dy = gpu.alloc("dy", (m * n * 4) as u64).unwrap();
        let w = gpu.alloc("w", (n * k * 4) as u64).unwrap();
        let dx = gpu.alloc("dx", (m * k * 4) as u64).unwrap();
        let mut enc = gpu.encoder();
        is_shape_err(
            nn::matmul_bwd_input(
                &mut enc,
                &dy,
                &w,
                &dx,
                nn::MatmulShape { m: m + 1, k, n },
                false,
            ),
            "nn bwd dy rows",
        );
        is_shape_err(
            nn::matmul_bwd_input(
                &mut enc,
                &dy,
                &w,
                &dx,
                nn::MatmulShape { m, k, n: n + 1 },
                false,
            ),
            "nn bwd n",
        );
        is_shape_err(
            nn::matmul_bwd_input(
                &mut enc,
                &dy,
                &w,
                &dx,
                nn::MatmulShape { m, k: k + 1, n },
                true,
            ),
            "nn bwd k",
        );
        is_shape_err(
            nn::matmul_bwd_input(&mut enc, &dy, &w, &dy, nn::MatmulShape { m, k, n }, false),
            "nn bwd dx too small",
        );
        is_shape_err(
            nn::matmul_bwd_input(
                &mut enc,
                &w,
                &w,
                &w,
                nn::MatmulShape { m: 8, k: 16, n: 8 },
                false,
            ),
            "nn bwd dx aliases dy and w",
        );
        // The valid call still works after the rejected ones.
        nn::matmul_bwd_input(&mut enc, &dy, &w, &dx, nn::MatmulShape { m, k, n }, true).unwrap();
        enc.submit();
        gpu.sync().unwrap();
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
        let wf = gpu.alloc("w", (n * k * 4) as u64).unwrap();
        let y = gpu.alloc("y", (m * n * 4) as u64).unwrap();
        let mut enc = gpu.encoder();
        // f32: every operand too small for its shape.
        is_shape_err(
            nn::matmul_fwd(
                &mut enc,
                &x,
                &wf,
                &y,
                nn::MatmulShape { m: m + 1, k, n },
                1.0,
                false,
            ),
            "nn x rows",
        );
        is_shape_err(
            nn::matmul_fwd(
                &mut enc,
                &x,
                &wf,
                &y,
                nn::MatmulShape { m, k, n: n + 1 },
                1.0,
                false,
            ),
            "nn w rows",
        );
        is_shape_err(
            nn::matmul_fwd(
                &mut enc,
                &x,
                &y,
                &wf,
                nn::MatmulShape { m, k, n },
                1.0,
                false,
            ),
            "nn w/y swapped",
        );
        enc.submit();
        gpu.sync().unwrap();
    });
}

/// Sentinel for the elements of a strided output outside the written band (a NaN with a payload,
/// compared by bits): a kernel that touched them would not leave these bits.
const SENTINEL: u32 = 0x7fc0_1234;

/// Compares a `[m rows of stride ld, columns col0..col0 + n]` band of `got` with `want` (`atol` /
/// `rtol`), and every element outside the band bit-exactly.
#[allow(clippy::too_many_arguments)]
fn assert_band(
    name: &str,
    got: &[f32],
    want: &[f32],
    m: usize,
    n: usize,
    ld: usize,
    col0: usize,
    atol: f32,
    rtol: f32,
) {
    assert_eq!(got.len(), want.len(), "{name}: length");
    let in_band = |i: usize| i / ld < m && (col0..col0 + n).contains(&(i % ld));
    let (mut g, mut w) = (Vec::new(), Vec::new());
    for (i, (&a, &b)) in got.iter().zip(want).enumerate() {
        if in_band(i) {
            g.push(a);
            w.push(b);
        } else {
            assert_eq!(
                a.to_bits(),
                b.to_bits(),
                "{name}: element {i} outside the band"
            );
        }
    }
    assert_close(name, &g, &w, atol, rtol);
}

/// (M, K, N, ld, col0) for the strided kernels: M = 1, the band at the right edge (col0 + N = ld),
/// a band of one column, col0 = 0 with a wider stride, ld = N (plain), several workgroups.
const STRIDED: &[(usize, usize, usize, usize, usize)] = &[
    (1, 64, 37, 100, 50),
    (3, 7, 5, 12, 7),
    (8, 16, 8, 9, 0),
    (13, 100, 29, 40, 3),
    (17, 129, 40, 41, 1),
    (9, 576, 24, 24, 0),
    (5, 33, 1, 7, 4),
    (70, 33, 131, 300, 150),
];

#[test]
fn matmul_fwd_strided_matches_reference() {
    for_each_kernels(|gpu| {
        for (i, &(m, k, n, ldy, col0)) in STRIDED.iter().enumerate() {
            for (alpha, accumulate) in [(1.0, false), (-0.75, true)] {
                let mut rng = Rng::new(1000 + i as u64);
                let x = rng.vec(m * k, 1.0);
                let w = rng.vec(n * k, 0.5);
                // The whole [M, ldy] matrix plus a tail: band values random, the rest sentinels.
                let len = m * ldy + 3;
                let band = rng.vec(len, 1.0);
                let y0: Vec<f32> = (0..len)
                    .map(|j| {
                        if j / ldy < m && (col0..col0 + n).contains(&(j % ldy)) {
                            band[j]
                        } else {
                            f32::from_bits(SENTINEL)
                        }
                    })
                    .collect();
                let xb = gpu.upload("x", &x).unwrap();
                let wb = gpu.upload("w", &w).unwrap();
                let yb = gpu.upload("y", &y0).unwrap();
                let mut enc = gpu.encoder();
                nn::matmul_fwd_strided(
                    &mut enc,
                    &xb,
                    &wb,
                    &yb,
                    nn::MatmulShape { m, k, n },
                    ldy,
                    col0,
                    alpha,
                    accumulate,
                )
                .unwrap();
                enc.submit();
                let got = gpu.read_blocking::<f32>(&yb).unwrap();
                let mut want = y0.clone();
                rnn::matmul_fwd_strided(&x, &w, &mut want, m, k, n, ldy, col0, alpha, accumulate);
                let name = format!(
                "nn/matmul_fwd m={m} k={k} n={n} ldy={ldy} col0={col0} alpha={alpha} acc={accumulate}"
            );
                assert_band(&name, &got, &want, m, n, ldy, col0, atol(k), MATMUL_RTOL);
            }
        }

        // The band must fit its stride, and y must reach the band's last element; the exact length does.
        let (m, k, n, ldy, col0) = (3, 8, 5, 11, 6);
        let x = gpu.alloc("x", (m * k * 4) as u64).unwrap();
        let w = gpu.alloc("w", (n * k * 4) as u64).unwrap();
        let exact = (m - 1) * ldy + col0 + n;
        let y = gpu.alloc("y", (exact * 4) as u64).unwrap();
        let short = gpu.alloc("y_short", ((exact - 1) * 4) as u64).unwrap();
        let mut enc = gpu.encoder();
        is_shape_err(
            nn::matmul_fwd_strided(
                &mut enc,
                &x,
                &w,
                &short,
                nn::MatmulShape { m, k, n },
                ldy,
                col0,
                1.0,
                false,
            ),
            "nn fwd strided y short by one",
        );
        is_shape_err(
            nn::matmul_fwd_strided(
                &mut enc,
                &x,
                &w,
                &y,
                nn::MatmulShape { m, k, n },
                ldy,
                col0 + 1,
                1.0,
                false,
            ),
            "nn fwd strided band over the stride",
        );
        is_shape_err(
            nn::matmul_fwd_strided(
                &mut enc,
                &x,
                &w,
                &y,
                nn::MatmulShape { m, k, n },
                4,
                0,
                1.0,
                false,
            ),
            "nn fwd strided ldy < n",
        );
        nn::matmul_fwd_strided(
            &mut enc,
            &x,
            &w,
            &y,
            nn::MatmulShape { m, k, n },
            ldy,
            col0,
            1.0,
            true,
        )
        .unwrap();
        enc.submit();
        gpu.sync().unwrap();
    });
}

#[test]
fn matmul_bwd_input_strided_matches_reference() {
    for_each_kernels(|gpu| {
        for (i, &(m, k, n, lddy, col0)) in STRIDED.iter().enumerate() {
            for accumulate in [false, true] {
                let mut rng = Rng::new(1100 + i as u64);
                let w = rng.vec(n * k, 0.5);
                let dx0 = rng.vec(m * k, 1.0);
                // dy outside its band is NaN: a kernel reading it would give a non-finite dx.
                let len = m * lddy + 3;
                let vals = rng.vec(len, 1.0);
                let dy: Vec<f32> = (0..len)
                    .map(|j| {
                        if j / lddy < m && (col0..col0 + n).contains(&(j % lddy)) {
                            vals[j]
                        } else {
                            f32::from_bits(SENTINEL)
                        }
                    })
                    .collect();
                let dyb = gpu.upload("dy", &dy).unwrap();
                let wb = gpu.upload("w", &w).unwrap();
                let dxb = gpu.upload("dx", &dx0).unwrap();
                let mut enc = gpu.encoder();
                nn::matmul_bwd_input_strided(
                    &mut enc,
                    &dyb,
                    &wb,
                    &dxb,
                    nn::MatmulShape { m, k, n },
                    lddy,
                    col0,
                    accumulate,
                )
                .unwrap();
                enc.submit();
                let got = gpu.read_blocking::<f32>(&dxb).unwrap();
                let mut want = dx0.clone();
                rnn::matmul_bwd_input_strided(&dy, &w, &mut want, m, k, n, lddy, col0, accumulate);
                assert_close(
                    &format!(
                    "nn/matmul_bwd_input m={m} k={k} n={n} lddy={lddy} col0={col0} acc={accumulate}"
                ),
                    &got,
                    &want,
                    atol(n),
                    MATMUL_RTOL,
                );
            }
        }

        let (m, k, n, lddy, col0) = (3, 8, 5, 11, 6);
        let exact = (m - 1) * lddy + col0 + n;
        let dy = gpu.alloc("dy", (exact * 4) as u64).unwrap();
        let short = gpu.alloc("dy_short", ((exact - 1) * 4) as u64).unwrap();
        let w = gpu.alloc("w", (n * k * 4) as u64).unwrap();
        let dx = gpu.alloc("dx", (m * k * 4) as u64).unwrap();
        let mut enc = gpu.encoder();
        is_shape_err(
            nn::matmul_bwd_input_strided(
                &mut enc,
                &short,
                &w,
                &dx,
                nn::MatmulShape { m, k, n },
                lddy,
                col0,
                false,
            ),
            "nn bwd strided dy short by one",
        );
        is_shape_err(
            nn::matmul_bwd_input_strided(
                &mut enc,
                &dy,
                &w,
                &dx,
                nn::MatmulShape { m, k, n },
                lddy,
                col0 + 1,
                false,
            ),
            "nn bwd strided band over the stride",
        );
        is_shape_err(
            nn::matmul_bwd_input_strided(
                &mut enc,
                &dy,
                &w,
                &dy,
                nn::MatmulShape { m, k, n },
                lddy,
                col0,
                false,
            ),
            "nn bwd strided dx aliases dy",
        );
        nn::matmul_bwd_input_strided(
            &mut enc,
            &dy,
            &w,
            &dx,
            nn::MatmulShape { m, k, n },
            lddy,
            col0,
            true,
        )
        .unwrap();
        enc.submit();
        gpu.sync().unwrap();
    });
}

/// An LM head `w[V, C]` stored as 3 uneven row chunks (vocab chunks): the strided forward per chunk
/// into one logits buffer equals the whole-w forward bit for bit (each logit is the same k-ordered
/// sum in the same pipeline), and the strided input gradient accumulated over the chunks equals the
/// whole-w one within the matmul tolerance over V terms (the chunks' partial sums add in another
/// order).
#[test]
fn vocab_chunked_head_equals_whole() {
    for_each_kernels(|gpu| {
        let (v, c) = (203, 72);
        let chunks = [(0, 61), (61, 150), (150, 203)];
        for (case, m) in [1usize, 40].into_iter().enumerate() {
            let mut rng = Rng::new(1200 + case as u64);
            let w = rng.vec(v * c, 0.5);
            let x = rng.vec(m * c, 1.0);
            let y0 = rng.vec(m * v, 1.0);
            let dlogits = rng.vec(m * v, 1.0);
            let xb = gpu.upload("x", &x).unwrap();
            let wb = gpu.upload("w", &w).unwrap();
            let dyb = gpu.upload("dlogits", &dlogits).unwrap();
            let wcb: Vec<_> = chunks
                .iter()
                .map(|&(a, b)| gpu.upload("w_chunk", &w[a * c..b * c]).unwrap())
                .collect();

            for (alpha, accumulate) in [(1.0, false), (0.5, true)] {
                let whole = gpu.upload("logits", &y0).unwrap();
                let chunked = gpu.upload("logits_chunked", &y0).unwrap();
                let mut enc = gpu.encoder();
                nn::matmul_fwd(
                    &mut enc,
                    &xb,
                    &wb,
                    &whole,
                    nn::MatmulShape { m, k: c, n: v },
                    alpha,
                    accumulate,
                )
                .unwrap();
                for (&(a, b), wc) in chunks.iter().zip(&wcb) {
                    nn::matmul_fwd_strided(
                        &mut enc,
                        &xb,
                        wc,
                        &chunked,
                        nn::MatmulShape { m, k: c, n: b - a },
                        v,
                        a,
                        alpha,
                        accumulate,
                    )
                    .unwrap();
                }
                enc.submit();
                let got = gpu.read_blocking::<f32>(&chunked).unwrap();
                let want = gpu.read_blocking::<f32>(&whole).unwrap();
                let bits = |s: &[f32]| s.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert!(
                bits(&got) == bits(&want),
                "chunked LM head m={m} alpha={alpha} acc={accumulate}: logits differ from the whole head"
            );
                let reference = expected(&rnn::matmul_fwd(&x, &w, m, c, v), &y0, alpha, accumulate);
                assert_close(
                    &format!("nn/matmul_fwd chunked head m={m}"),
                    &got,
                    &reference,
                    atol(c),
                    MATMUL_RTOL,
                );
            }

            let dx_whole = gpu.alloc("dx", (m * c * 4) as u64).unwrap();
            let dx_chunked = gpu.upload("dx_chunked", &vec![f32::NAN; m * c]).unwrap();
            let mut enc = gpu.encoder();
            nn::matmul_bwd_input(
                &mut enc,
                &dyb,
                &wb,
                &dx_whole,
                nn::MatmulShape { m, k: c, n: v },
                false,
            )
            .unwrap();
            for (j, (&(a, b), wc)) in chunks.iter().zip(&wcb).enumerate() {
                nn::matmul_bwd_input_strided(
                    &mut enc,
                    &dyb,
                    wc,
                    &dx_chunked,
                    nn::MatmulShape { m, k: c, n: b - a },
                    v,
                    a,
                    j > 0,
                )
                .unwrap();
            }
            enc.submit();
            let got = gpu.read_blocking::<f32>(&dx_chunked).unwrap();
            let want = gpu.read_blocking::<f32>(&dx_whole).unwrap();
            assert_close(
                &format!("nn/matmul_bwd_input chunked head vs whole m={m}"),
                &got,
                &want,
                atol(v),
                MATMUL_RTOL,
            );
            assert_close(
                &format!("nn/matmul_bwd_input chunked head vs reference m={m}"),
                &got,
                &rnn::matmul_bwd_input(&dlogits, &w, m, c, v),
                atol(v),
                MATMUL_RTOL,
            );
        }
    });
}

/// 16-bit bits of `x` in `dtype` (round to nearest even), with subnormals, the largest f16 and
/// signed zeros mixed in.
fn half_bits(x: &[f32], dtype: rnn::Float16) -> Vec<u16> {
    use tinytune::model::float::{f32_to_bf16, f32_to_f16};
    const SPECIAL: [u16; 6] = [0x0001, 0x83FF, 0x0400, 0x3BFF, 0x8000, 0x0000];
    x.iter()
        .enumerate()
        .map(|(i, &v)| match (i % 5 == 2, dtype) {
            (true, _) => SPECIAL[(i / 5) % SPECIAL.len()],
            (false, rnn::Float16::F16) => f32_to_f16(v),
            (false, rnn::Float16::BF16) => f32_to_bf16(v),
        })
        .collect()
}

fn table_dtype(d: rnn::Float16) -> TableDtype {
    match d {
        rnn::Float16::F16 => TableDtype::F16,
        rnn::Float16::BF16 => TableDtype::BF16,
    }
}

/// `nn/matmul_fwd` with a 16-bit w (`TABLE_DTYPE` f16 / bf16, packed two per u32; odd K puts rows
/// mid-word): against the reference (which widens the bits) within the f32 tolerance, and bit for
/// bit against the f32 kernel on the widened w (the kernel widens exactly, then does the same sums).
#[test]
fn matmul_fwd_strided_dtype_matches_reference() {
    for_each_kernels(|gpu| {
        for dtype in [rnn::Float16::F16, rnn::Float16::BF16] {
            for (i, &(m, k, n, ldy, col0)) in STRIDED.iter().enumerate() {
                for (alpha, accumulate) in [(1.0, false), (-0.75, true)] {
                    let mut rng = Rng::new(2000 + i as u64);
                    let x = rng.vec(m * k, 1.0);
                    let w = half_bits(&rng.vec(n * k, 0.5), dtype);
                    let y0 = rng.vec(m * ldy + 3, 1.0);
                    let xb = gpu.upload("x", &x).unwrap();
                    let wb = gpu.upload("w16", &w).unwrap();
                    let w32 = gpu.upload("w32", &dtype.widen(&w)).unwrap();
                    let yb = gpu.upload("y", &y0).unwrap();
                    let y32 = gpu.upload("y32", &y0).unwrap();
                    let s = nn::MatmulShape { m, k, n };
                    let mut enc = gpu.encoder();
                    nn::matmul_fwd_strided_dtype(
                        &mut enc,
                        &xb,
                        &wb,
                        table_dtype(dtype),
                        &yb,
                        s,
                        ldy,
                        col0,
                        alpha,
                        accumulate,
                    )
                    .unwrap();
                    nn::matmul_fwd_strided(
                        &mut enc, &xb, &w32, &y32, s, ldy, col0, alpha, accumulate,
                    )
                    .unwrap();
                    enc.submit();
                    let got = gpu.read_blocking::<f32>(&yb).unwrap();
                    let got32 = gpu.read_blocking::<f32>(&y32).unwrap();
                    let mut want = y0.clone();
                    rnn::matmul_fwd_strided_dtype(
                        &x, &w, dtype, &mut want, m, k, n, ldy, col0, alpha, accumulate,
                    );
                    let name = format!(
                    "nn/matmul_fwd {dtype:?} m={m} k={k} n={n} ldy={ldy} col0={col0} acc={accumulate}"
                );
                    assert_close(&name, &got, &want, atol(k), MATMUL_RTOL);
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(
                        bits(&got),
                        bits(&got32),
                        "{name}: not the f32 kernel's result"
                    );
                }
            }
        }
        // w holds ceil(n * k / 2) words.
        let (m, k, n) = (2, 3, 5);
        let x = gpu.alloc("x", (m * k * 4) as u64).unwrap();
        let y = gpu.alloc("y", (m * n * 4) as u64).unwrap();
        let short = gpu
            .alloc("w", TableDtype::F16.bytes((n * k) as u64) - 4)
            .unwrap();
        let mut enc = gpu.encoder();
        let s = nn::MatmulShape { m, k, n };
        assert!(matches!(
            nn::matmul_fwd_strided_dtype(
                &mut enc,
                &x,
                &short,
                TableDtype::F16,
                &y,
                s,
                n,
                0,
                1.0,
                false
            ),
            Err(GpuError::Shape { .. })
        ));
        enc.submit();
    });
}

/// `nn/matmul_bwd_input` with a 16-bit w, as [`matmul_fwd_strided_dtype_matches_reference`].
#[test]
fn matmul_bwd_input_strided_dtype_matches_reference() {
    for_each_kernels(|gpu| {
        for dtype in [rnn::Float16::F16, rnn::Float16::BF16] {
            for (i, &(m, k, n, lddy, col0)) in STRIDED.iter().enumerate() {
                for accumulate in [false, true] {
                    let mut rng = Rng::new(2100 + i as u64);
                    let w = half_bits(&rng.vec(n * k, 0.5), dtype);
                    let dx0 = rng.vec(m * k, 1.0);
                    let dy = rng.vec(m * lddy + 3, 1.0);
                    let dyb = gpu.upload("dy", &dy).unwrap();
                    let wb = gpu.upload("w16", &w).unwrap();
                    let w32 = gpu.upload("w32", &dtype.widen(&w)).unwrap();
                    let dxb = gpu.upload("dx", &dx0).unwrap();
                    let dx32 = gpu.upload("dx32", &dx0).unwrap();
                    let s = nn::MatmulShape { m, k, n };
                    let mut enc = gpu.encoder();
                    nn::matmul_bwd_input_strided_dtype(
                        &mut enc,
                        &dyb,
                        &wb,
                        table_dtype(dtype),
                        &dxb,
                        s,
                        lddy,
                        col0,
                        accumulate,
                    )
                    .unwrap();
                    nn::matmul_bwd_input_strided(
                        &mut enc, &dyb, &w32, &dx32, s, lddy, col0, accumulate,
                    )
                    .unwrap();
                    enc.submit();
                    let got = gpu.read_blocking::<f32>(&dxb).unwrap();
                    let got32 = gpu.read_blocking::<f32>(&dx32).unwrap();
                    let mut want = dx0.clone();
                    rnn::matmul_bwd_input_strided_dtype(
                        &dy, &w, dtype, &mut want, m, k, n, lddy, col0, accumulate,
                    );
                    let name = format!(
                    "nn/matmul_bwd_input {dtype:?} m={m} k={k} n={n} lddy={lddy} col0={col0} acc={accumulate}"
                );
                    assert_close(&name, &got, &want, atol(n), MATMUL_RTOL);
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(
                        bits(&got),
                        bits(&got32),
                        "{name}: not the f32 kernel's result"
                    );
                }
            }
        }
    });
}
