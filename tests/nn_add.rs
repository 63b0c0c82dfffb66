//! Scaled elementwise add kernel against the CPU reference.

mod common;

use common::{assert_close, gpu, Rng};
use tinytune::gpu::ops::nn;
use tinytune::gpu::GpuError;
use tinytune::reference::nn as rnn;

/// `nn/add_fwd`: one product and one sum, the same roundings as the reference; the floor allows a
/// driver that contracts them into an fma (error below half an ulp of `alpha * x`, O(1) values).
const ADD_ATOL: f32 = 2e-7;
const ADD_RTOL: f32 = 1e-7;

#[test]
fn add_fwd_matches_reference() {
    let Some(gpu) = gpu() else { return };
    for (si, &(n, alpha)) in [
        (1usize, 1.0f32),
        (255, -0.5),
        (257, 2.0),
        (1000, 0.0),
        (4099, 1.0),
        (70001, 0.125),
    ]
    .iter()
    .enumerate()
    {
        let mut rng = Rng::new(500 + si as u64);
        let x = rng.vec(n, 1.0);
        let y = rng.vec(n, 1.0);
        let want = rnn::add_fwd(&x, &y, alpha);
        // One spare element past n in both buffers: the kernel must not touch y's.
        let mut x_ext = x.clone();
        x_ext.push(1.0);
        let xb = gpu.upload("x", &x_ext).unwrap();
        let mut y_ext = y.clone();
        y_ext.push(42.0);
        let yb = gpu.upload("y", &y_ext).unwrap();
        let mut enc = gpu.encoder();
        nn::add_fwd(&mut enc, &xb, &yb, n, alpha).unwrap();
        enc.submit();
        let got = gpu.read_blocking::<f32>(&yb).unwrap();
        assert_eq!(got[n], 42.0, "nn/add_fwd n={n}: wrote past n");
        assert_close(
            &format!("nn/add_fwd n={n} alpha={alpha}"),
            &got[..n],
            &want,
            ADD_ATOL,
            ADD_RTOL,
        );
        if alpha != 0.0 {
            assert!(got[..n] != y[..], "nn/add_fwd n={n}: y unchanged");
        }
    }
}

#[test]
fn add_launcher_rejects_bad_shapes() {
    let Some(gpu) = gpu() else { return };
    let a = gpu.alloc("a", 4 * 10).unwrap();
    let b = gpu.alloc("b", 4 * 9).unwrap();
    let is_shape = |e: Result<(), GpuError>| matches!(e, Err(GpuError::Shape { .. }));
    let mut enc = gpu.encoder();
    assert!(is_shape(nn::add_fwd(&mut enc, &a, &b, 10, 1.0)));
    assert!(is_shape(nn::add_fwd(&mut enc, &a, &a, 10, 1.0)));
    assert!(nn::add_fwd(&mut enc, &a, &b, 9, 1.0).is_ok());
}
