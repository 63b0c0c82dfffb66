//! The FMA-loop probe (`probe/fma_peak`) against its plain-loop reference.

mod common;

use common::{assert_close, for_each_kernels};
use tinytune::gpu::ops::probe;
use tinytune::reference::probe as rprobe;

#[test]
fn fma_peak_matches_reference() {
    for_each_kernels(|gpu| {
        // n not a multiple of the workgroup, past 1024 (the start values repeat), 0 and 1 rounds.
        for &(n, iters) in &[(1usize, 0u32), (300, 1), (1500, 37), (257, 1000)] {
            let y = gpu.upload("y", &vec![f32::NAN; n]).unwrap();
            let mut enc = gpu.encoder();
            probe::fma_peak(&mut enc, &y, n, iters).unwrap();
            enc.submit();
            let got = gpu.read_blocking::<f32>(&y).unwrap();
            // Multiply-adds may be fused on the device: a rounding per step either way.
            assert_close(
                &format!("probe/fma_peak n={n} iters={iters}"),
                &got,
                &rprobe::fma_peak(n, iters),
                1e-5,
                1e-5,
            );
        }
    });
}
