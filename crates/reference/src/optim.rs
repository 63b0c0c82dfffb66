//! AdamW (exactly `torch.optim.AdamW`: decoupled weight decay, fp32 state) and global-norm gradient
//! clipping (`torch.nn.utils.clip_grad_norm_`) over one flat buffer, plain loops.
//!
//! torch's per-element update for step `t` (1-based, counted after the increment), with its Python
//! float hyper-parameters rounded to f32 where they meet the f32 tensors ([`AdamW::coefficients`]):
//!
//! ```text
//! p  = p * (1 - lr*wd)                                  param.mul_(1 - lr * weight_decay)
//! m  = m + w*(g - m),  w = 1 - beta1                    exp_avg.lerp_(grad, 1 - beta1)   (w < 0.5)
//!      g - (g - m)*(1 - w)                                                               (w >= 0.5)
//! v  = v*beta2 + (1 - beta2)*g*g                        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, 1 - beta2)
//! bc1 = 1 - beta1^t, bc2 = 1 - beta2^t                  (Python floats: f64 here)
//! denom = sqrt(v) / sqrt(bc2) + eps                     (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
//! p  = p - (lr/bc1) * (m / denom)                       param.addcdiv_(exp_avg, denom, value=-step_size)
//! ```
//!
//! Clipping (`clip_grad_norm_(params, max_norm)`, 2-norm): `total = sqrt(Σ g²)` over the whole flat
//! buffer (the norm of the per-tensor norms is the same number), `coef = min(1, max_norm /
//! (total + 1e-6))` in f32, and every gradient is multiplied by `coef` before the update.

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

/// The f32 scalars one AdamW step applies to every element. The GPU launcher computes its own
/// (`tinytune_gpu::ops::optim::StepCoefficients`); `tests/optim_adamw.rs` checks they are these,
/// bit for bit.
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
    /// The scalars of step `step` (1-based: the first update is step 1). Host arithmetic in f64.
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

/// torch's `lerp(start, end, weight)` for f32: `start + w*(end - start)` when `|w| < 0.5`, else
/// `end - (end - start)*(1 - w)`.
pub fn lerp(start: f32, end: f32, w: f32) -> f32 {
    if w.abs() < 0.5 {
        start + w * (end - start)
    } else {
        end - (end - start) * (1.0 - w)
    }
}

/// The L2 norm of the whole buffer, `sqrt(Σ g²)`, summed in f64 and rounded to f32.
pub fn grad_norm(g: &[f32]) -> f32 {
    g.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt() as f32
}

/// `clip_grad_norm_`'s factor: `min(1, max_norm / (total_norm + 1e-6))`, in f32 like torch.
pub fn clip_coef(total_norm: f32, max_norm: f32) -> f32 {
    (max_norm / (total_norm + 1e-6)).min(1.0)
}

/// One AdamW step over flat buffers of equal length, in place; with `clip = Some(max_norm)` the
/// gradients are first scaled by [`clip_coef`] of their [`grad_norm`] (`g` itself is not modified).
/// A non-finite norm leaves everything as it was (tinytune's guard against a diverged step).
///
/// Panics if the lengths differ or `step == 0`.
pub fn adamw_step(
    p: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    step: u32,
    cfg: &AdamW,
    clip: Option<f32>,
) {
    let n = p.len();
    assert!(
        g.len() == n && m.len() == n && v.len() == n,
        "adamw_step: p, g, m, v lengths {n} {} {} {}",
        g.len(),
        m.len(),
        v.len()
    );
    let norm = grad_norm(g);
    if !norm.is_finite() {
        // The step changes nothing (tinytune's guard; torch would write NaNs).
        return;
    }
    let c = cfg.coefficients(step);
    let coef = clip.map_or(1.0, |max_norm| clip_coef(norm, max_norm));
    for i in 0..n {
        let gi = g[i] * coef;
        let pi = p[i] * c.decay;
        let mi = lerp(m[i], gi, c.w1);
        let vi = v[i] * c.beta2 + c.w2 * gi * gi;
        let denom = vi.sqrt() / c.bc2_sqrt + c.eps;
        p[i] = pi - c.step_size * (mi / denom);
        m[i] = mi;
        v[i] = vi;
    }
}
