//! `optim/grad_norm` against the CPU reference.

mod common;

use common::{assert_close, gpu, Rng};
use tinytune::gpu::ops::optim;
use tinytune::gpu::{Gpu, GpuBuffer};
use tinytune::reference::optim as roptim;

/// `optim/grad_norm` against the f64-summed reference.
const NORM_RTOL: f32 = 2e-6;

fn up(gpu: &Gpu, label: &str, v: &[f32]) -> GpuBuffer {
    gpu.upload(label, v).unwrap()
}

fn read(gpu: &Gpu, b: &GpuBuffer) -> Vec<f32> {
    gpu.read_blocking::<f32>(b).unwrap()
}

#[test]
fn grad_norm_matches_reference() {
    let Some(gpu) = gpu() else { return };
    // One element, within one workgroup chunk (4096), exactly one chunk, one past it, and many
    // chunks with a partial last one (> 256 partials for the finish step's loop).
    for (i, &n) in [1usize, 1000, 4096, 4097, 100_003, 1_500_001]
        .iter()
        .enumerate()
    {
        let mut rng = Rng::new(50 + i as u64);
        let g = rng.vec(n, 10f32.powi(i as i32 - 3));
        let gb = up(gpu, "g", &g);
        let out = up(gpu, "norm", &[f32::NAN]);
        let mut enc = gpu.encoder();
        optim::grad_norm(&mut enc, &gb, n, &out).unwrap();
        enc.submit();
        assert_close(
            &format!("optim/grad_norm n={n}"),
            &read(gpu, &out),
            &[roptim::grad_norm(&g)],
            0.0,
            NORM_RTOL,
        );
    }
    // Only the first n elements count; n = 0 gives 0.
    let gb = up(gpu, "g", &[3.0f32, 4.0, 100.0]);
    let out = up(gpu, "norm", &[f32::NAN]);
    let mut enc = gpu.encoder();
    optim::grad_norm(&mut enc, &gb, 2, &out).unwrap();
    enc.submit();
    assert_eq!(read(gpu, &out), vec![5.0]);
    let mut enc = gpu.encoder();
    optim::grad_norm(&mut enc, &gb, 0, &out).unwrap();
    enc.submit();
    assert_eq!(read(gpu, &out), vec![0.0]);
}
