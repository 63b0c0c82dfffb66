//! Dropout kernel (`nn/dropout_fwd`, both passes) against the CPU reference, and the statistics of
//! its hash mask.

mod common;

use common::{assert_close, gpu, Rng};
use tinytune::gpu::ops::nn;
use tinytune::gpu::{Gpu, GpuError};
use tinytune::reference::nn as rnn;

/// `nn/dropout_fwd`: the same integer hash and threshold as the reference, then one f32 product
/// (`x * scale`) or a 0: bit-exact.
const FWD_ATOL: f32 = 0.0;
const FWD_RTOL: f32 = 0.0;
/// `nn/dropout_fwd` with ACCUMULATE (the backward): one product and one sum, the reference's
/// roundings; the floor allows a driver that contracts them into an fma (error below half an ulp
/// of `scale * dy`, O(1) values). The mask itself is checked exactly (dropped elements keep `dx`
/// bit for bit), and `p = 0` / `p = 0.5` (exact products) are checked bit-exact.
const BWD_ATOL: f32 = 2e-7;
const BWD_RTOL: f32 = 1e-7;

/// (n, p, seed): n = 1, n not a multiple of the 256-invocation workgroup or of its 4096 elements,
/// one past 4096, more than one workgroup row; p = 0, small, half, large; seeds with bits only in
/// the low word, only in the high word, both, all.
const CASES: &[(usize, f32, u64)] = &[
    (1, 0.5, 0),
    (1, 0.1, 7),
    (255, 0.1, 1),
    (257, 0.5, 1 << 32),
    (4096, 0.25, 0xDEAD_BEEF_1234_5678),
    (4097, 0.9, u64::MAX),
    (4097, 0.0, 3),
    (70001, 0.1, 12345),
    (70001, 0.5, 0x8000_0000_0000_0000),
];

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Runs `nn::dropout_fwd` over `x` (with a sentinel past `n` that must survive) and reads `y`.
fn run_fwd(gpu: &Gpu, x: &[f32], p: f32, seed: u64) -> Vec<f32> {
    let n = x.len();
    let mut x_ext = x.to_vec();
    x_ext.push(1.0);
    let xb = gpu.upload("x", &x_ext).unwrap();
    let yb = gpu.upload("y", &vec![42.0f32; n + 1]).unwrap();
    let mut enc = gpu.encoder();
    nn::dropout_fwd(&mut enc, &xb, &yb, n, p, seed).unwrap();
    enc.submit();
    let mut got = gpu.read_blocking::<f32>(&yb).unwrap();
    assert_eq!(got[n], 42.0, "nn/dropout_fwd n={n}: wrote past n");
    got.truncate(n);
    got
}

#[test]
fn dropout_fwd_matches_reference() {
    let Some(gpu) = gpu() else { return };
    for (si, &(n, p, seed)) in CASES.iter().enumerate() {
        let mut rng = Rng::new(900 + si as u64);
        let x = rng.vec(n, 1.0);
        let want = rnn::dropout_fwd(&x, p, seed);
        let got = run_fwd(gpu, &x, p, seed);
        let name = format!("nn/dropout_fwd n={n} p={p} seed={seed:#x}");
        assert_close(&name, &got, &want, FWD_ATOL, FWD_RTOL);
        assert_eq!(bits(&got), bits(&want), "{name}: not bit-exact");
        for (i, &g) in got.iter().enumerate() {
            assert_eq!(
                g != 0.0,
                rnn::dropout_mask(seed, i as u32, p) && x[i] != 0.0,
                "{name}: mask at {i}"
            );
        }
    }
}

#[test]
fn dropout_bwd_matches_reference() {
    let Some(gpu) = gpu() else { return };
    for (si, &(n, p, seed)) in CASES.iter().enumerate() {
        let mut rng = Rng::new(950 + si as u64);
        let dy = rng.vec(n, 1.0);
        let dx0 = rng.vec(n, 1.0);
        let term = rnn::dropout_bwd(&dy, p, seed);
        let want: Vec<f32> = dx0.iter().zip(&term).map(|(&a, &t)| a + t).collect();
        let mut dy_ext = dy.clone();
        dy_ext.push(1.0);
        let dyb = gpu.upload("dy", &dy_ext).unwrap();
        let mut dx_ext = dx0.clone();
        dx_ext.push(42.0);
        let dxb = gpu.upload("dx", &dx_ext).unwrap();
        let mut enc = gpu.encoder();
        nn::dropout_bwd(&mut enc, &dyb, &dxb, n, p, seed).unwrap();
        enc.submit();
        let got = gpu.read_blocking::<f32>(&dxb).unwrap();
        let name = format!("nn/dropout_bwd n={n} p={p} seed={seed:#x}");
        assert_eq!(got[n], 42.0, "{name}: wrote past n");
        let got = &got[..n];
        assert_close(&name, got, &want, BWD_ATOL, BWD_RTOL);
        if p == 0.0 || p == 0.5 {
            assert_eq!(bits(got), bits(&want), "{name}: not bit-exact");
        }
        for i in 0..n {
            if !rnn::dropout_mask(seed, i as u32, p) {
                assert_eq!(
                    got[i].to_bits(),
                    dx0[i].to_bits(),
                    "{name}: dropped {i} changed dx"
                );
            }
        }
    }
}

/// Kept count of `mask` against `n (1 - p)`, within 4 binomial standard deviations.
fn assert_keep_rate(what: &str, mask: &[bool], p: f64) {
    let n = mask.len() as f64;
    let kept = mask.iter().filter(|&&k| k).count() as f64;
    let sigma = (n * p * (1.0 - p)).sqrt();
    let dev = (kept - n * (1.0 - p)).abs() / sigma;
    assert!(
        dev <= 4.0,
        "{what}: kept {kept} of {n}, expected {} (off by {dev:.2} sigma)",
        n * (1.0 - p)
    );
}

/// Fraction of `count` events against probability `q` over `trials`, within 4 sigma.
fn assert_rate(what: &str, count: usize, trials: usize, q: f64) {
    let sigma = (trials as f64 * q * (1.0 - q)).sqrt();
    let dev = (count as f64 - trials as f64 * q).abs() / sigma;
    assert!(
        dev <= 4.0,
        "{what}: {count} of {trials}, expected {} (off by {dev:.2} sigma)",
        trials as f64 * q
    );
}

#[test]
fn dropout_keep_rate_and_seed_statistics() {
    let Some(gpu) = gpu() else { return };
    const N: usize = 1_000_000;
    let ones = vec![1.0f32; N];
    for p in [0.1f32, 0.5] {
        let q = p as f64;
        let masks: Vec<(u64, Vec<bool>)> = [1u64, 2, 1 << 32, 0xC0FF_EE00_0000_0001]
            .iter()
            .map(|&seed| {
                let y = run_fwd(gpu, &ones, p, seed);
                (seed, y.iter().map(|&v| v != 0.0).collect())
            })
            .collect();
        for (seed, m) in &masks {
            let what = format!("p={p} seed={seed:#x}");
            assert_keep_rate(&what, m, q);
            // Neighbouring elements are independent: both kept with probability (1 - p)^2.
            let both = m.windows(2).filter(|w| w[0] && w[1]).count();
            assert_rate(
                &format!("{what} neighbours kept"),
                both,
                N - 1,
                (1.0 - q) * (1.0 - q),
            );
            // The same seed gives the same mask.
            let again = run_fwd(gpu, &ones, p, *seed);
            assert!(
                again.iter().map(|&v| v != 0.0).eq(m.iter().copied()),
                "{what}: same seed, different mask"
            );
        }
        // Different seeds (low word, high word) give unrelated masks: agreement p^2 + (1-p)^2.
        for a in 0..masks.len() {
            for b in a + 1..masks.len() {
                let agree = masks[a]
                    .1
                    .iter()
                    .zip(&masks[b].1)
                    .filter(|(x, y)| x == y)
                    .count();
                assert!(agree < N, "p={p}: seeds {a} and {b} gave the same mask");
                assert_rate(
                    &format!(
                        "p={p} seeds {:#x} vs {:#x} agreement",
                        masks[a].0, masks[b].0
                    ),
                    agree,
                    N,
                    q * q + (1.0 - q) * (1.0 - q),
                );
            }
        }
    }
}

#[test]
fn dropout_p_zero_is_identity() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new(990);
    let mut x = rng.vec(5000, 3.0);
    x[0] = -0.0;
    x[1] = 1e-40; // subnormal
    x[2] = f32::MAX;
    x[3] = -f32::MIN_POSITIVE;
    let got = run_fwd(gpu, &x, 0.0, 77);
    assert_eq!(bits(&got), bits(&x), "nn/dropout_fwd p=0: not the identity");
    assert_eq!(bits(&rnn::dropout_fwd(&x, 0.0, 77)), bits(&x));
    // Backward with p = 0: dx += dy exactly.
    let dy = rng.vec(5000, 1.0);
    let dx0 = rng.vec(5000, 1.0);
    let dyb = gpu.upload("dy", &dy).unwrap();
    let dxb = gpu.upload("dx", &dx0).unwrap();
    let mut enc = gpu.encoder();
    nn::dropout_bwd(&mut enc, &dyb, &dxb, 5000, 0.0, 77).unwrap();
    enc.submit();
    let got = gpu.read_blocking::<f32>(&dxb).unwrap();
    let want: Vec<f32> = dx0.iter().zip(&dy).map(|(&a, &b)| a + b).collect();
    assert_eq!(bits(&got), bits(&want), "nn/dropout_bwd p=0: not dx + dy");
}

#[test]
fn dropout_launcher_rejects_bad_shapes() {
    let Some(gpu) = gpu() else { return };
    let a = gpu.alloc("a", 4 * 10).unwrap();
    let b = gpu.alloc("b", 4 * 9).unwrap();
    let is_shape = |e: Result<(), GpuError>| matches!(e, Err(GpuError::Shape { .. }));
    let mut enc = gpu.encoder();
    assert!(is_shape(nn::dropout_fwd(&mut enc, &a, &b, 10, 0.1, 0)));
    assert!(is_shape(nn::dropout_bwd(&mut enc, &a, &b, 10, 0.1, 0)));
    assert!(is_shape(nn::dropout_fwd(&mut enc, &a, &a, 10, 0.1, 0)));
    assert!(is_shape(nn::dropout_bwd(&mut enc, &a, &a, 10, 0.1, 0)));
    for p in [1.0f32, 1.5, -0.1, f32::NAN] {
        assert!(
            is_shape(nn::dropout_fwd(&mut enc, &a, &b, 9, p, 0)),
            "p={p}"
        );
        assert!(
            is_shape(nn::dropout_bwd(&mut enc, &a, &b, 9, p, 0)),
            "p={p}"
        );
    }
    assert!(nn::dropout_fwd(&mut enc, &a, &b, 9, 0.1, 0).is_ok());
    assert!(nn::dropout_bwd(&mut enc, &a, &b, 9, 0.0, 0).is_ok());
    assert!(nn::dropout_fwd(&mut enc, &a, &b, 0, 0.5, 0).is_ok());
}
