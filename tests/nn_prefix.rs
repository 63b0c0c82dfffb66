//! Prefix tuning's key/value prefix kernels against the CPU reference.

mod common;

use common::{gpu, Rng};
use tinytune::gpu::ops::nn;
use tinytune::gpu::GpuError;
use tinytune::reference::nn as rnn;

/// (B, T, P, KVD, layer, layers): single rows, KVD not a multiple of 4, the last layer.
const SHAPES: [(usize, usize, usize, usize, usize, usize); 5] = [
    (1, 1, 1, 4, 0, 1),
    (2, 5, 3, 3, 1, 2),
    (3, 7, 2, 20, 2, 3),
    (1, 9, 5, 64, 0, 2),
    (4, 2, 1, 6, 3, 4),
];

#[test]
fn prefix_fwd_matches_reference() {
    let Some(gpu) = gpu() else { return };
    for (si, &(b, t, p, kvd, layer, nl)) in SHAPES.iter().enumerate() {
        let mut rng = Rng::new(900 + si as u64);
        let prefix = rng.vec(p * nl * 2 * kvd, 1.0);
        let k = rng.vec(b * t * kvd, 1.0);
        let v = rng.vec(b * t * kvd, 1.0);
        let (wk, wv) = rnn::prefix_fwd(&prefix, &k, &v, layer, nl, b, t, p, kvd);
        let up = |n: &str, x: &[f32]| gpu.upload(n, x).unwrap();
        let (pb, kb, vb) = (up("prefix", &prefix), up("k", &k), up("v", &v));
        let kf = gpu.alloc("kf", (b * (p + t) * kvd * 4) as u64).unwrap();
        let vf = gpu.alloc("vf", (b * (p + t) * kvd * 4) as u64).unwrap();
        let mut enc = gpu.encoder();
        nn::prefix_fwd(&mut enc, &pb, &kb, &vb, &kf, &vf, layer, nl, b, t, p, kvd).unwrap();
        enc.submit();
        // Pure copies: bit-exact.
        assert_eq!(gpu.read_blocking::<f32>(&kf).unwrap(), wk, "kf, shape {si}");
        assert_eq!(gpu.read_blocking::<f32>(&vf).unwrap(), wv, "vf, shape {si}");
    }
}

#[test]
fn prefix_bwd_matches_reference() {
    let Some(gpu) = gpu() else { return };
    for (si, &(b, t, p, kvd, layer, nl)) in SHAPES.iter().enumerate() {
        let mut rng = Rng::new(950 + si as u64);
        let dkf = rng.vec(b * (p + t) * kvd, 1.0);
        let dvf = rng.vec(b * (p + t) * kvd, 1.0);
        // The gradient already holds something (accumulation over layers and micro-batches).
        let grad0 = rng.vec(p * nl * 2 * kvd, 1.0);
        let mut want_grad = grad0.clone();
        let (wk, wv) = rnn::prefix_bwd(&dkf, &dvf, &mut want_grad, layer, nl, b, t, p, kvd);
        let up = |n: &str, x: &[f32]| gpu.upload(n, x).unwrap();
        let (dkfb, dvfb, gb) = (up("dkf", &dkf), up("dvf", &dvf), up("grad", &grad0));
        let dk = gpu.alloc("dk", (b * t * kvd * 4) as u64).unwrap();
        let dv = gpu.alloc("dv", (b * t * kvd * 4) as u64).unwrap();
        let mut enc = gpu.encoder();
        nn::prefix_bwd(
            &mut enc, &dkfb, &dvfb, &dk, &dv, &gb, layer, nl, b, t, p, kvd,
        )
        .unwrap();
        enc.submit();
        assert_eq!(gpu.read_blocking::<f32>(&dk).unwrap(), wk, "dk, shape {si}");
        assert_eq!(gpu.read_blocking::<f32>(&dv).unwrap(), wv, "dv, shape {si}");
        // The same additions in the same order as the reference: bit-exact.
        let got = gpu.read_blocking::<f32>(&gb).unwrap();
        assert_eq!(got, want_grad, "grad, shape {si}");
        assert_ne!(got, grad0, "grad unchanged, shape {si}");
    }
}

#[test]
fn prefix_launchers_reject_bad_shapes() {
    let Some(gpu) = gpu() else { return };
    let (b, t, p, kvd, nl) = (2, 3, 2, 4, 2);
    let a = |n: usize| gpu.alloc("x", (n * 4) as u64).unwrap();
    let (prefix, k, v) = (a(p * nl * 2 * kvd), a(b * t * kvd), a(b * t * kvd));
    let (kf, vf) = (a(b * (p + t) * kvd), a(b * (p + t) * kvd));
    let is_shape = |e: Result<(), GpuError>| matches!(e, Err(GpuError::Shape { .. }));
    let mut enc = gpu.encoder();
    assert!(is_shape(nn::prefix_fwd(
        &mut enc, &prefix, &k, &v, &kf, &vf, 2, nl, b, t, p, kvd
    )));
    assert!(is_shape(nn::prefix_fwd(
        &mut enc,
        &prefix,
        &k,
        &v,
        &kf,
        &vf,
        0,
        nl,
        b,
        t + 1,
        p,
        kvd
    )));
    assert!(is_shape(nn::prefix_fwd(
        &mut enc, &prefix, &k, &v, &kf, &kf, 0, nl, b, t, p, kvd
    )));
    assert!(is_shape(nn::prefix_fwd(
        &mut enc, &prefix, &k, &v, &kf, &vf, 0, nl, b, t, 0, kvd
    )));
    assert!(nn::prefix_fwd(&mut enc, &prefix, &k, &v, &kf, &vf, 1, nl, b, t, p, kvd).is_ok());
    let grad = a(p * nl * 2 * kvd);
    assert!(is_shape(nn::prefix_bwd(
        &mut enc,
        &kf,
        &vf,
        &k,
        &v,
        &a(3),
        0,
        nl,
        b,
        t,
        p,
        kvd
    )));
    assert!(is_shape(nn::prefix_bwd(
        &mut enc, &kf, &vf, &k, &k, &grad, 0, nl, b, t, p, kvd
    )));
    assert!(nn::prefix_bwd(&mut enc, &kf, &vf, &k, &v, &grad, 1, nl, b, t, p, kvd).is_ok());
}
