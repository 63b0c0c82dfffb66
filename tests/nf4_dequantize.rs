//! `nf4/dequantize` against the reference: bit-exact values, on awkward shapes.

mod common;

use common::nf4::{awkward, bits, device_form};
use common::{gpu, Rng};
use tinytune::gpu::ops::nf4;
use tinytune::reference::nf4::Nf4Tensor;

#[test]
fn dequantize_matches_reference() {
    // Dequantize a host tensor uploaded from the reference (the path a loaded checkpoint takes).
    let Some(gpu) = gpu() else { return };
    for &(n, block, dq) in &[
        (999usize, 64usize, true),
        (999, 64, false),
        (5000, 256, true),
    ] {
        let x = awkward(n, block, 7);
        let t = Nf4Tensor::quantize(&x, block, dq);
        let w = nf4::Nf4Weight::upload(gpu, "w", &device_form(&t)).unwrap();
        let out = gpu.alloc("deq", n as u64 * 4).unwrap();
        let mut enc = gpu.encoder();
        nf4::dequantize(&mut enc, &w, &out).unwrap();
        enc.submit();
        assert_eq!(
            bits(&gpu.read_blocking::<f32>(&out).unwrap()),
            bits(&t.dequantize())
        );
    }
}

#[test]
fn dequantize_large_dispatch_splits_groups() {
    // More than 65535 workgroups of 64: the launcher splits them over x and y.
    let Some(gpu) = gpu() else { return };
    let n = 65536 * 64 + 100;
    let mut rng = Rng::new(3);
    let x = rng.vec(n, 1.0);
    let t = Nf4Tensor::quantize(&x, 64, true);
    let w = nf4::Nf4Weight::upload(gpu, "w", &device_form(&t)).unwrap();
    let out = gpu.alloc("deq", n as u64 * 4).unwrap();
    let mut enc = gpu.encoder();
    nf4::dequantize(&mut enc, &w, &out).unwrap();
    enc.submit();
    let got = gpu.read_blocking::<f32>(&out).unwrap();
    assert_eq!(bits(&got), bits(&t.dequantize()));
}
