//! The f16 compute dtype (`ComputeDtype::F16`, `shaders/nn/compute_common.wgsl`) of the four
//! frozen-weight matmuls, in both kernel variants: results stay within a stated bound of the f32
//! reference and differ from the f32 compute dtype's (so the f16 form really runs).
//! A device without `SHADER_F16` refuses f16 with `GpuError::NoF16`.

mod common;

use common::{assert_close, Rng};
use tinytune::gpu::ops::{nf4, nn};
use tinytune::gpu::{ComputeDtype, Gpu, GpuBuffer, GpuError, GpuOptions, KernelSet};
use tinytune::reference::nf4::{self as rnf4, Nf4Tensor};
use tinytune::reference::nn as rnn;

/// Same as the f32 matmul tests: f32 sums of K products in another order.
const MATMUL_ATOL_PER_SQRT_K: f32 = 1e-5;
const MATMUL_RTOL: f32 = 1e-4;

/// f16 keeps 11 significant bits, and WGSL leaves the direction of rounding to f16 to the
/// implementation: each operand may be off by up to 2^-10 of itself, a product by about 2^-9 of
/// |x|·|w|. Element i may be that far (plus the f32 summation tolerance) from the f32 reference
/// on the exact operands: F16_BOUND · Σ_k |x_ik|·|w_jk|.
const F16_BOUND: f32 = 1.0 / 512.0;

/// (M, K, N): M = 1 (matvec in the GPU variant), M not a multiple of the 64-row tile, K and N odd.
const SHAPES: &[(usize, usize, usize)] = &[(1, 37, 9), (5, 64, 33), (70, 130, 65), (3, 8, 200)];

fn atol(k: usize) -> f32 {
    MATMUL_ATOL_PER_SQRT_K * (k.max(1) as f32).sqrt()
}

/// A device of each kernel variant computing in `dtype`; `None` (after printing why) where the
/// adapter has no `SHADER_F16` — the refusal itself is checked.
fn device(kernels: KernelSet, dtype: ComputeDtype) -> Option<Gpu> {
    match Gpu::new_blocking(GpuOptions {
        kernels: Some(kernels),
        compute_dtype: Some(dtype),
        ..GpuOptions::default()
    }) {
        Ok(g) => {
            assert_eq!(g.compute_dtype(), dtype);
            assert_eq!(g.kernel_info().compute, dtype);
            Some(g)
        }
        Err(GpuError::NoF16 { adapter }) => {
            assert!(
                adapter_lacks_f16(),
                "NoF16 from an adapter that has SHADER_F16"
            );
            eprintln!("SKIPPED: adapter {adapter} has no SHADER_F16 (f16 refused as expected)");
            None
        }
        Err(e) => {
            if std::env::var("TINYTUNE_REQUIRE_GPU").as_deref() == Ok("1") {
                panic!("TINYTUNE_REQUIRE_GPU=1 but no GPU device: {e}");
            }
            eprintln!("SKIPPED: no GPU adapter ({e})");
            None
        }
    }
}

fn adapter_lacks_f16() -> bool {
    let g = Gpu::new_blocking(GpuOptions {
        compute_dtype: Some(ComputeDtype::F32),
        ..GpuOptions::default()
    })
    .expect("an f32 device");
    !g.features
        .contains(tinytune::gpu::wgpu::Features::SHADER_F16)
}

fn abs(v: &[f32]) -> Vec<f32> {
    v.iter().map(|x| x.abs()).collect()
}

/// The four products of one shape on one device: (nn fwd, nn bwd_input, nf4 fwd, nf4 bwd_input).
struct Operands {
    x: Vec<f32>,
    dy: Vec<f32>,
    w: Vec<f32>,
    q: Nf4Tensor,
}

fn operands(m: usize, k: usize, n: usize, seed: u64) -> Operands {
    let mut rng = Rng::new(seed);
    let w = rng.vec(n * k, 0.5);
    Operands {
        x: rng.vec(m * k, 1.0),
        dy: rng.vec(m * n, 1.0),
        q: Nf4Tensor::quantize(&w, 64, true),
        w,
    }
}

fn run(gpu: &Gpu, o: &Operands, m: usize, k: usize, n: usize) -> [Vec<f32>; 4] {
    let up = |label: &str, v: &[f32]| -> GpuBuffer { gpu.upload(label, v).unwrap() };
    let (xb, dyb, wb) = (up("x", &o.x), up("dy", &o.dy), up("w", &o.w));
    let wq = nf4::Nf4Weight::upload(gpu, "w", &common::nf4::device_form(&o.q)).unwrap();
    let outs: Vec<GpuBuffer> = [m * n, m * k, m * n, m * k]
        .iter()
        .map(|&len| gpu.alloc("out", (len * 4) as u64).unwrap())
        .collect();
    let mut enc = gpu.encoder();
    nn::matmul_fwd(
        &mut enc,
        &xb,
        &wb,
        &outs[0],
        nn::MatmulShape { m, k, n },
        1.0,
        false,
    )
    .unwrap();
    nn::matmul_bwd_input(
        &mut enc,
        &dyb,
        &wb,
        &outs[1],
        nn::MatmulShape { m, k, n },
        false,
    )
    .unwrap();
    nf4::matmul_fwd(
        &mut enc,
        &xb,
        &wq,
        &outs[2],
        nf4::MatmulShape { m, k, n },
        1.0,
        false,
    )
    .unwrap();
    nf4::matmul_bwd_input(
        &mut enc,
        &dyb,
        &wq,
        &outs[3],
        nf4::MatmulShape { m, k, n },
        false,
    )
    .unwrap();
    enc.submit();
    [0, 1, 2, 3].map(|i| gpu.read_blocking::<f32>(&outs[i]).unwrap())
}

#[test]
fn f16_compute_matmuls_stay_within_the_f16_bound() {
    for kernels in KernelSet::ALL {
        let Some(g16) = device(kernels, ComputeDtype::F16) else {
            return;
        };
        let g32 = device(kernels, ComputeDtype::F32).expect("an f32 device");
        for (si, &(m, k, n)) in SHAPES.iter().enumerate() {
            let o = operands(m, k, n, 700 + si as u64);
            let got = run(&g16, &o, m, k, n);
            let f32s = run(&g32, &o, m, k, n);
            let wd = o.q.dequantize();
            // The f32 reference on exact operands, and of |x|·|w|.
            let exact = [
                rnn::matmul_fwd(&o.x, &o.w, m, k, n),
                rnn::matmul_bwd_input(&o.dy, &o.w, m, k, n),
                rnf4::matmul_fwd(&o.x, &o.q, m, k, n),
                rnf4::matmul_bwd_input(&o.dy, &o.q, m, k, n),
            ];
            let mags = [
                rnn::matmul_fwd(&abs(&o.x), &abs(&o.w), m, k, n),
                rnn::matmul_bwd_input(&abs(&o.dy), &abs(&o.w), m, k, n),
                rnn::matmul_fwd(&abs(&o.x), &abs(&wd), m, k, n),
                rnn::matmul_bwd_input(&abs(&o.dy), &abs(&wd), m, k, n),
            ];
            let names = [
                "nn/matmul_fwd",
                "nn/matmul_bwd_input",
                "nf4/matmul_fwd",
                "nf4/matmul_bwd_input",
            ];
            let kk = [k, n, k, n];
            for i in 0..4 {
                let tag = format!(
                    "{} f16 compute, {kernels} kernels, m={m} k={k} n={n}",
                    names[i]
                );
                for (j, ((g, e), a)) in got[i].iter().zip(&exact[i]).zip(&mags[i]).enumerate() {
                    let bound = F16_BOUND * a + atol(kk[i]);
                    assert!(
                        (g - e).abs() <= bound,
                        "{tag}: element {j} is {g}, f32 reference {e}, more than {bound} apart"
                    );
                }
                assert!(
                    got[i] != f32s[i],
                    "{tag}: identical to the f32 compute dtype's result (f16 form not used?)"
                );
            }
        }
    }
}

#[test]
fn compute_dtype_can_change_on_an_open_device() {
    let Some(gpu) = device(KernelSet::Gpu, ComputeDtype::F16) else {
        return;
    };
    let (m, k, n) = (3, 40, 20);
    let o = operands(m, k, n, 900);
    let a16 = run(&gpu, &o, m, k, n);
    gpu.set_compute_dtype(ComputeDtype::F32).unwrap();
    assert_eq!(gpu.kernel_info().compute, ComputeDtype::F32);
    let a32 = run(&gpu, &o, m, k, n);
    let want = rnn::matmul_fwd(&o.x, &o.w, m, k, n);
    assert_close(
        "nn/matmul_fwd back to f32",
        &a32[0],
        &want,
        atol(k),
        MATMUL_RTOL,
    );
    assert_ne!(a16[0], a32[0]);
}
