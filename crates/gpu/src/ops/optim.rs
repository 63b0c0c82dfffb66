//! Optimizer launchers: `shaders/optim/grad_norm.wgsl` (global L2 norm of a flat gradient buffer)
//! and `shaders/optim/adamw_step.wgsl` (one `torch.optim.AdamW` step, optionally clipped like
//! `torch.nn.utils.clip_grad_norm_`). Reference: `tinytune_reference::optim`.
//!
//! Typical step: `grad_norm(enc, grads, n, &norm)` then `adamw_step(..., &norm, ..., Some(max_norm))`
//! in the same encoder; the update reads the norm on the device (no readback in between), skips
//! itself when the norm is not finite, and the trainer may read `norm[0]` afterwards.

use super::{check_distinct, check_f32, groups_for};
use crate::device::{Encoder, GpuBuffer};
use crate::error::{shape_err, Result};
use crate::params::{AdamwParams, GradNormParams};

/// Elements one `stage_partial` workgroup of `optim/grad_norm` reduces (256 invocations x 16).
const NORM_CHUNK: u64 = 4096;
/// Workgroup size of `optim/adamw_step`.
const STEP_WG: u64 = 256;

/// AdamW hyper-parameters. f64 like torch's Python floats; [`Default`] is torch's defaults.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamW {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamW {
    /// `torch.optim.AdamW` defaults: lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight_decay 0.01.
    fn default() -> Self {
        AdamW {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

/// The f32 scalars one AdamW step applies to every element, computed on the host
/// ([`AdamW::coefficients`]) and passed to `optim/adamw_step`. The per-element update they enter
/// is torch's (see `tinytune_reference::optim`, whose plain loop computes the same scalars itself).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepCoefficients {
    /// `f32(1 - lr*wd)`.
    pub decay: f32,
    /// Lerp weight `f32(1 - beta1)`.
    pub w1: f32,
    /// `f32(beta2)`.
    pub beta2: f32,
    /// `f32(1 - beta2)`.
    pub w2: f32,
    /// `f32(lr / (1 - beta1^t))`.
    pub step_size: f32,
    /// `f32(sqrt(1 - beta2^t))`.
    pub bc2_sqrt: f32,
    /// `f32(eps)`.
    pub eps: f32,
}

impl AdamW {
    /// The scalars of step `step` (1-based: the first update is step 1). Host arithmetic in f64
    /// (torch's Python floats), each result rounded once to f32.
    ///
    /// Panics if `step == 0` (the bias corrections would divide by zero).
    pub fn coefficients(&self, step: u32) -> StepCoefficients {
        assert!(step >= 1, "AdamW steps count from 1");
        let t = step as f64;
        let bc1 = 1.0 - self.beta1.powf(t);
        let bc2 = 1.0 - self.beta2.powf(t);
        StepCoefficients {
            decay: (1.0 - self.lr * self.weight_decay) as f32,
            w1: (1.0 - self.beta1) as f32,
            beta2: self.beta2 as f32,
            w2: (1.0 - self.beta2) as f32,
            step_size: (self.lr / bc1) as f32,
            bc2_sqrt: bc2.sqrt() as f32,
            eps: self.eps as f32,
        }
    }
}

fn check_n(kernel: &str, n: usize) -> Result<()> {
    // Keeps every index (and w*CHUNK + 4095 in grad_norm) below 2^32.
    if n as u64 > u32::MAX as u64 - NORM_CHUNK {
        return Err(shape_err(
            kernel,
            format!("{n} elements exceed what one kernel indexes"),
        ));
    }
    Ok(())
}

/// Writes `out_norm[0] = sqrt(Σ g²)` over the first `n` elements of `grads` (f32), in two
/// dispatches of `optim/grad_norm`: per-workgroup partial sums of squares into a scratch buffer
/// allocated here (`ceil(n/4096)` f32), then one workgroup adds them and takes the root.
/// `out_norm` needs room for one f32; `n = 0` writes 0.
///
/// Errors with [`crate::GpuError::Shape`] if a buffer is too short, `out_norm` is `grads`, or
/// `n` is beyond 2^32 - 4097.
pub fn grad_norm(
    enc: &mut Encoder,
    grads: &GpuBuffer,
    n: usize,
    out_norm: &GpuBuffer,
) -> Result<()> {
    const K: &str = "optim/grad_norm";
    check_n(K, n)?;
    check_f32(K, "grads", grads, &[n])?;
    check_f32(K, "out_norm", out_norm, &[1])?;
    check_distinct(K, &[("out_norm", out_norm)], &[("grads", grads)])?;
    let gpu = enc.gpu;
    let nparts = (n as u64).div_ceil(NORM_CHUNK);
    let parts = gpu.scratch("grad_norm.partials", nparts * 4)?;
    let params = GradNormParams {
        n: n as u32,
        nparts: nparts as u32,
        ..Default::default()
    };
    let kp = gpu.kernel(K, "stage_partial", &[])?;
    enc.dispatch(&kp, &params, &[grads, &parts], groups_for(gpu, nparts, 1))?;
    let kf = gpu.kernel(K, "stage_finish", &[])?;
    enc.dispatch(&kf, &params, &[&parts, out_norm], [1, 1, 1])
}

fn check_cfg(kernel: &str, cfg: &AdamW) -> Result<()> {
    // torch.optim.AdamW's own argument checks (NaN fails every range).
    let checks = [
        ("learning rate", cfg.lr, (0.0..).contains(&cfg.lr)),
        ("epsilon", cfg.eps, (0.0..).contains(&cfg.eps)),
        ("beta1", cfg.beta1, (0.0..1.0).contains(&cfg.beta1)),
        ("beta2", cfg.beta2, (0.0..1.0).contains(&cfg.beta2)),
        (
            "weight_decay",
            cfg.weight_decay,
            (0.0..).contains(&cfg.weight_decay),
        ),
    ];
    match checks.iter().find(|c| !c.2) {
        Some((what, v, _)) => Err(shape_err(kernel, format!("invalid {what}: {v}"))),
        None => Ok(()),
    }
}

/// One AdamW step (`torch.optim.AdamW` semantics, see `tinytune_reference::optim`) over the first
/// `n` elements of the flat buffers `params`, `grads`, `m` (exp_avg) and `v` (exp_avg_sq), which
/// share one layout; `params`, `m` and `v` are updated in place, `grads` is only read. `step` is
/// the 1-based step number (1 for the first update; the bias corrections use it).
///
/// `norm[0]` holds the global gradient norm written by [`grad_norm`] earlier in the same (or an
/// earlier) submission. With `clip = Some(max_norm)` every gradient is scaled by
/// `min(1, max_norm / (norm + 1e-6))` first, as `clip_grad_norm_` does. When the norm is not
/// finite the step changes nothing (torch would write NaNs; the trainer stops the run instead and
/// keeps the parameters). One dispatch of `optim/adamw_step`.
///
/// Errors with [`crate::GpuError::Shape`] if a buffer is too short, two of `params`/`m`/`v`/`grads`
/// are the same buffer, `step == 0`, `max_norm` is not positive, or a hyper-parameter is out of
/// torch's range.
#[allow(clippy::too_many_arguments)]
pub fn adamw_step(
    enc: &mut Encoder,
    params: &GpuBuffer,
    grads: &GpuBuffer,
    m: &GpuBuffer,
    v: &GpuBuffer,
    norm: &GpuBuffer,
    n: usize,
    step: u32,
    cfg: &AdamW,
    clip: Option<f32>,
) -> Result<()> {
    const K: &str = "optim/adamw_step";
    check_n(K, n)?;
    check_cfg(K, cfg)?;
    if step == 0 {
        return Err(shape_err(K, "step counts from 1"));
    }
    for (name, b) in [("params", params), ("grads", grads), ("m", m), ("v", v)] {
        check_f32(K, name, b, &[n])?;
    }
    check_distinct(
        K,
        &[("params", params), ("grads", grads), ("m", m), ("v", v)],
        &[],
    )?;
    check_f32(K, "norm", norm, &[1])?;
    if [params, m, v].iter().any(|b| b.overlaps(norm)) {
        return Err(shape_err(K, "the norm buffer must not be params, m or v"));
    }
    let max_norm = match clip {
        Some(max_norm) if !(max_norm > 0.0 && max_norm.is_finite()) => {
            return Err(shape_err(
                K,
                format!("max_norm must be positive and finite, got {max_norm}"),
            ))
        }
        Some(max_norm) => max_norm,
        None => 0.0,
    };
    let c = cfg.coefficients(step);
    let gpu = enc.gpu;
    let k = gpu.kernel(
        K,
        "main",
        &[("CLIP", if clip.is_some() { 1.0 } else { 0.0 })],
    )?;
    let pr = AdamwParams {
        n: n as u32,
        decay: c.decay,
        w1: c.w1,
        beta2: c.beta2,
        w2: c.w2,
        step_size: c.step_size,
        bc2_sqrt: c.bc2_sqrt,
        eps: c.eps,
        max_norm,
        ..Default::default()
    };
    enc.dispatch(
        &k,
        &pr,
        &[params, grads, m, v, norm],
        groups_for(gpu, n as u64, STEP_WG),
    )
}
