//! Probe launchers: `shaders/probe/fma_peak.wgsl`, the arithmetic peak `examples/bench_kernels.rs`
//! measures the other kernels against. Reference: `tinytune_reference::probe`.

use super::{check_f32, check_u32, groups_for};
use crate::device::{Encoder, GpuBuffer};
use crate::error::Result;
use crate::params::FmaPeakParams;

/// Workgroup size of `probe/fma_peak`.
const WG: u64 = 256;

/// Floating-point operations of one [`fma_peak`] call: `n` invocations of `iters` rounds of 8
/// vec4 multiply-adds.
pub fn fma_peak_flops(n: usize, iters: u32) -> f64 {
    n as f64 * iters as f64 * 64.0
}

/// `y[i]` for `i < n`: the sum of 32 chains of `iters` multiply-adds each (`probe/fma_peak`), a
/// kernel that does [`fma_peak_flops`] and no memory traffic but its one store per invocation.
///
/// Errors with [`crate::GpuError::Shape`] if `y` holds fewer than `n` f32 or `n` overflows u32.
pub fn fma_peak(enc: &mut Encoder, y: &GpuBuffer, n: usize, iters: u32) -> Result<()> {
    const K: &str = "probe/fma_peak";
    check_u32(K, &[("y", n as u64)])?;
    check_f32(K, "y", y, &[n])?;
    let gpu = enc.gpu;
    let kern = gpu.kernel(K, "main", &[])?;
    enc.dispatch(
        &kern,
        &FmaPeakParams {
            n: n as u32,
            iters,
            ..Default::default()
        },
        &[y],
        groups_for(gpu, n as u64, WG),
    )
}
