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
        nn::prefix_fwd(
            &mut enc,
            &pb,
            &kb,
            &vb,
            &kf,
            &vf,
            nn::PrefixShape {
                layer,
                n_layers: nl,
                b,
                t,
                p,
                kvd,
            },
        )
        .unwrap();
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
            &mut enc,
            &dkfb,
            &dvfb,
            &dk,
            &dv,
            &gb,
            nn::PrefixShape {
                layer,
                n_layers: nl,
                b,
                t,
                p,
                kvd,
            },
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
        &mut enc,
        &prefix,
        &k,
        &v,
        &kf,
        &vf,
        nn::PrefixShape {
            layer: 2,
            n_layers: nl,
            b,
            t,
            p,
            kvd
        }
    )));
    assert!(is_shape(nn::prefix_fwd(
        &mut enc,
        &prefix,
        &k,
        &v,
        &kf,
        &vf,
        nn::PrefixShape {
            layer: 0,
            n_layers: nl,
            b,
            t: t + 1,
            p,
            kvd
        }
    )));
    assert!(is_shape(nn::prefix_fwd(
        &mut enc,
        &prefix,
        &k,
        &v,
        &kf,
        &kf,
        nn::PrefixShape {
            layer: 0,
            n_layers: nl,
            b,
            t,
            p,
            kvd
        }
    )));
    assert!(is_shape(nn::prefix_fwd(
        &mut enc,
        &prefix,
        &k,
        &v,
        &kf,
        &vf,
        nn::PrefixShape {
            layer: 0,
            n_layers: nl,
            b,
            t,
            p: 0,
            kvd
        }
    )));
    assert!(nn::prefix_fwd(
        &mut enc,
        &prefix,
        &k,
        &v,
        &kf,
        &vf,
        nn::PrefixShape {
            layer: 1,
            n_layers: nl,
            b,
            t,
            p,
            kvd
        }
    )
    .is_ok());
    let grad = a(p * nl * 2 * kvd);
    assert!(is_shape(nn::prefix_bwd(
        &mut enc,
        &kf,
        &vf,
        &k,
        &v,
        &a(3),
        nn::PrefixShape {
            layer: 0,
            n_layers: nl,
            b,
            t,
            p,
            kvd
        }
    )));
    assert!(is_shape(nn::prefix_bwd(
        &mut enc,
        &kf,
        &vf,
        &k,
        &k,
        &grad,
        nn::PrefixShape {
            layer: 0,
            n_layers: nl,
            b,
            t,
            p,
            kvd
        }
    )));
    assert!(nn::prefix_bwd(
        &mut enc,
        &kf,
        &vf,
        &k,
        &v,
        &grad,
        nn::PrefixShape {
            layer: 1,
            n_layers: nl,
            b,
            t,
            p,
            kvd
        }
    )
    .is_ok());
}

/// `nn/prefix_proj_*`: sums of t, e or n products per element, in the reference's order; the
/// driver may contract them into fmas and its tanh may differ by a few ulps.
const PROJ_ATOL: f32 = 1e-5;
const PROJ_RTOL: f32 = 1e-4;

/// (P, t, e, n): single rows, odd sizes, e != t.
const PROJ_SHAPES: &[(usize, usize, usize, usize)] =
    &[(1, 4, 4, 8), (3, 5, 7, 12), (20, 32, 24, 128)];

#[test]
fn prefix_proj_fwd_matches_reference() {
    use common::assert_close;
    use tinytune::reference::nn::ProjDims;
    let Some(gpu) = gpu() else { return };
    for (si, &(p, t, e, n)) in PROJ_SHAPES.iter().enumerate() {
        let d = ProjDims { p, t, e, n };
        let mut rng = Rng::new(990 + si as u64);
        let params = rng.vec(d.len(), 0.5);
        let (want_h, want_kv) = rnn::prefix_proj_fwd(&params, d);
        let pb = gpu.upload("params", &params).unwrap();
        let a = |n: usize| gpu.alloc("x", (n * 4) as u64).unwrap();
        let (h, kv) = (a(p * e), a(p * n));
        let mut enc = gpu.encoder();
        nn::prefix_proj_fwd(&mut enc, &pb, &h, &kv, nn::PrefixProjShape { p, t, e, n }).unwrap();
        enc.submit();
        let what = format!("prefix_proj_fwd shape {si}");
        let got_h = gpu.read_blocking::<f32>(&h).unwrap();
        assert_close(&format!("{what} h"), &got_h, &want_h, PROJ_ATOL, PROJ_RTOL);
        let got_kv = gpu.read_blocking::<f32>(&kv).unwrap();
        assert_close(
            &format!("{what} kv"),
            &got_kv,
            &want_kv,
            PROJ_ATOL,
            PROJ_RTOL,
        );
    }
    // Bad shapes are typed errors.
    let x = gpu.alloc("x", 64).unwrap();
    let y = gpu.alloc("y", 64).unwrap();
    let mut enc = gpu.encoder();
    assert!(nn::prefix_proj_fwd(
        &mut enc,
        &x,
        &y,
        &x,
        nn::PrefixProjShape {
            p: 1,
            t: 1,
            e: 1,
            n: 1
        }
    )
    .is_err());
    assert!(nn::prefix_proj_fwd(
        &mut enc,
        &x,
        &y,
        &y,
        nn::PrefixProjShape {
            p: 1,
            t: 1,
            e: 1,
            n: 1
        }
    )
    .is_err());
    assert!(nn::prefix_proj_fwd(
        &mut enc,
        &x,
        &y,
        &x,
        nn::PrefixProjShape {
            p: 1,
            t: 0,
            e: 1,
            n: 1
        }
    )
    .is_err());
}

#[test]
fn prefix_proj_bwd_matches_reference() {
    use common::assert_close;
    use tinytune::reference::nn::ProjDims;
    let Some(gpu) = gpu() else { return };
    for (si, &(p, t, e, n)) in PROJ_SHAPES.iter().enumerate() {
        let d = ProjDims { p, t, e, n };
        let mut rng = Rng::new(990 + si as u64);
        let params = rng.vec(d.len(), 0.5);
        let dkv = rng.vec(p * n, 1.0);
        // The forward's h from the reference, so that the backward is checked on its own.
        let (want_h, _) = rnn::prefix_proj_fwd(&params, d);
        let want_g = rnn::prefix_proj_bwd(&params, &want_h, &dkv, d);
        let pb = gpu.upload("params", &params).unwrap();
        let h = gpu.upload("h", &want_h).unwrap();
        let dkvb = gpu.upload("dkv", &dkv).unwrap();
        let a = |n: usize| gpu.alloc("x", (n * 4) as u64).unwrap();
        let (dpre, g) = (a(p * e), a(d.len()));
        let mut enc = gpu.encoder();
        nn::prefix_proj_bwd(
            &mut enc,
            &pb,
            &h,
            &dkvb,
            &dpre,
            &g,
            nn::PrefixProjShape { p, t, e, n },
        )
        .unwrap();
        enc.submit();
        let got_g = gpu.read_blocking::<f32>(&g).unwrap();
        assert_close(
            &format!("prefix_proj_bwd shape {si} grads"),
            &got_g,
            &want_g,
            PROJ_ATOL,
            PROJ_RTOL,
        );
    }
}
