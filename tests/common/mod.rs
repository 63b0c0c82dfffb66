//! Shared helpers of the integration tests: one device per test binary, seeded data, tolerances.
#![allow(dead_code)]

use std::cell::Cell;
use std::sync::OnceLock;

use tinytune::gpu::{Gpu, GpuOptions, KernelSet};

/// The device for this test binary. With `TINYTUNE_REQUIRE_GPU=1` (CI) a missing adapter fails the
/// test; otherwise the test is skipped with a message.
pub fn gpu() -> Option<&'static Gpu> {
    static GPU: OnceLock<Result<Gpu, String>> = OnceLock::new();
    let g = GPU.get_or_init(|| Gpu::new_blocking(GpuOptions::default()).map_err(|e| e.to_string()));
    match g {
        Ok(g) => Some(g),
        Err(e) => {
            if std::env::var("TINYTUNE_REQUIRE_GPU").as_deref() == Ok("1") {
                panic!("TINYTUNE_REQUIRE_GPU=1 but no GPU device: {e}");
            }
            eprintln!("SKIPPED: no GPU adapter ({e})");
            None
        }
    }
}

thread_local! {
    /// The kernel variant [`for_each_kernels`] is running, named in [`assert_close`]'s failures.
    static VARIANT: Cell<Option<KernelSet>> = const { Cell::new(None) };
}

/// Runs `f` on one device per kernel variant ([`KernelSet::ALL`]: the CPU variant and the GPU
/// variant, both on whatever adapter the machine has), so that kernel tests check every variant
/// against the reference. A missing adapter fails or skips as [`gpu`] does.
pub fn for_each_kernels(mut f: impl FnMut(&'static Gpu)) {
    static GPUS: [OnceLock<Result<Gpu, String>>; 2] = [OnceLock::new(), OnceLock::new()];
    for (i, k) in KernelSet::ALL.into_iter().enumerate() {
        let g = GPUS[i].get_or_init(|| {
            Gpu::new_blocking(GpuOptions {
                kernels: Some(k),
                ..GpuOptions::default()
            })
            .map_err(|e| e.to_string())
        });
        match g {
            Ok(g) => {
                assert_eq!(g.kernels(), k);
                VARIANT.with(|v| v.set(Some(k)));
                f(g);
                VARIANT.with(|v| v.set(None));
            }
            Err(e) => {
                if std::env::var("TINYTUNE_REQUIRE_GPU").as_deref() == Ok("1") {
                    panic!("TINYTUNE_REQUIRE_GPU=1 but no GPU device: {e}");
                }
                eprintln!("SKIPPED: no GPU adapter ({e})");
                return;
            }
        }
    }
}

/// The SmolLM2-135M-Instruct Q4_1 GGUF (`TINYTUNE_SMOLLM2_GGUF`, which `scripts/fetch_model.sh`
/// prints). Under `TINYTUNE_REQUIRE_GPU=1` (the test command) a missing or unset path fails the
/// test rather than skipping it; otherwise the test is skipped with a message.
pub fn smollm2_gguf() -> Option<String> {
    let path = std::env::var("TINYTUNE_SMOLLM2_GGUF")
        .ok()
        .filter(|p| !p.is_empty());
    let problem = match &path {
        None => "TINYTUNE_SMOLLM2_GGUF is not set".to_string(),
        Some(p) if !std::path::Path::new(p).is_file() => {
            format!("TINYTUNE_SMOLLM2_GGUF={p} is not a file")
        }
        Some(_) => return path,
    };
    let fix =
        "set it to SmolLM2-135M-Instruct.Q4_1.gguf (bash scripts/fetch_model.sh prints the path)";
    if std::env::var("TINYTUNE_REQUIRE_GPU").as_deref() == Ok("1") {
        panic!("TINYTUNE_REQUIRE_GPU=1 (the test command) needs the real model: {problem}; {fix}");
    }
    eprintln!("SKIPPED: {problem}; {fix}");
    None
}

/// Deterministic SplitMix64 generator for test data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E3779B97F4A7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
    /// Approximately standard normal (sum of uniforms).
    pub fn normal(&mut self) -> f32 {
        (0..4).map(|_| self.uniform()).sum::<f32>() * 0.866
    }
    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.normal() * scale).collect()
    }
}

/// Asserts `|got - want| <= atol + rtol * |want|` elementwise, naming the kernel and the worst index.
pub fn assert_close(kernel: &str, got: &[f32], want: &[f32], atol: f32, rtol: f32) {
    let named;
    let kernel = match VARIANT.with(|v| v.get()) {
        Some(k) => {
            named = format!("{kernel} [{k} kernels]");
            named.as_str()
        }
        None => kernel,
    };
    assert_eq!(got.len(), want.len(), "{kernel}: length");
    let mut worst = (0usize, 0f32);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs();
        let tol = atol + rtol * w.abs();
        assert!(g.is_finite(), "{kernel}: non-finite {g} at {i}");
        if err - tol > worst.1 {
            worst = (i, err - tol);
        }
    }
    if worst.1 > 0.0 {
        let i = worst.0;
        panic!(
            "{kernel}: |gpu-ref| over atol {atol} + rtol {rtol}: at {i} gpu {} ref {}",
            got[i], want[i]
        );
    }
}
pub mod hf;
pub mod nf4;
