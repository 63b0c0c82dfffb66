//! `nn/bias_add_fwd` against its reference.

mod common;

use common::{assert_close, gpu, Rng};
use tinytune::gpu::ops::nn;
use tinytune::reference::nn as r;

#[test]
fn bias_add_fwd_matches_reference() {
    let Some(gpu) = gpu() else { return };
    for &(m, n) in &[(1usize, 1usize), (1, 7), (5, 64), (13, 131), (300, 3)] {
        let mut rng = Rng::new((m * 1000 + n) as u64);
        let bias = rng.vec(n, 1.0);
        let y = rng.vec(m * n, 1.0);
        let (bb, yb) = (
            gpu.upload("bias", &bias).unwrap(),
            gpu.upload("y", &y).unwrap(),
        );
        let mut enc = gpu.encoder();
        nn::bias_add_fwd(&mut enc, &bb, &yb, m, n).unwrap();
        enc.submit();
        // One f32 addition per element: exact.
        assert_close(
            "nn/bias_add_fwd",
            &gpu.read_blocking::<f32>(&yb).unwrap(),
            &r::bias_add_fwd(&bias, &y, m, n),
            0.0,
            0.0,
        );
    }
}

#[test]
fn bias_add_rejects_short_buffers() {
    let Some(gpu) = gpu() else { return };
    let bb = gpu.upload("bias", &[1f32; 3]).unwrap();
    let yb = gpu.upload("y", &[0f32; 8]).unwrap();
    let mut enc = gpu.encoder();
    assert!(
        nn::bias_add_fwd(&mut enc, &bb, &yb, 2, 4).is_err(),
        "bias of 3 for n=4"
    );
    assert!(
        nn::bias_add_fwd(&mut enc, &bb, &yb, 3, 3).is_err(),
        "y of 8 for 3x3"
    );
}
