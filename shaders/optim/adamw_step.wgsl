// One torch.optim.AdamW step (decoupled weight decay, fp32 state) over a flat buffer, optionally
// after clip_grad_norm_'s global-norm scaling. One invocation per element:
//   g     = g * coef,  coef = min(1, max_norm / (norm[0] + 1e-6))     (only when CLIP)
//   p     = p * decay                                                  decay = 1 - lr*wd
//   m     = lerp(m, g, w1)   (torch: m + w*(g-m) if |w| < 0.5, else g - (g-m)*(1-w))
//   v     = v * beta2 + w2 * g * g                                     w2 = 1 - beta2
//   denom = sqrt(v) / bc2_sqrt + eps
//   p     = p - step_size * (m / denom)                                step_size = lr / bc1
// The host computes the scalars in f64 and rounds them to f32 (reference: optim::AdamW::coefficients).
// `grads` is only read (the clipped gradient is not written back). `norm` is the output of
// optim/grad_norm. When it is not finite (the gradients hold an inf or a NaN) the step changes
// nothing: param, m and v keep their values, so a diverged step cannot poison the parameters
// (the host stops the run when it reads the norm).

override CLIP: bool = false;

struct Params {
    n: u32,          // elements
    decay: f32,      // 1 - lr * weight_decay
    w1: f32,         // 1 - beta1 (lerp weight)
    beta2: f32,
    w2: f32,         // 1 - beta2
    step_size: f32,  // lr / (1 - beta1^t)
    bc2_sqrt: f32,   // sqrt(1 - beta2^t)
    eps: f32,
    max_norm: f32,   // clip threshold (CLIP only)
    _p0: u32,
    _p1: u32,
    _p2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> param: array<f32>;  // (n)
@group(0) @binding(2) var<storage, read> grads: array<f32>;        // (n)
@group(0) @binding(3) var<storage, read_write> m: array<f32>;      // (n) exp_avg
@group(0) @binding(4) var<storage, read_write> v: array<f32>;      // (n) exp_avg_sq
@group(0) @binding(5) var<storage, read> norm: array<f32>;         // (1) global grad norm

// inf and NaN have every exponent bit set (a bit test: compilers may assume no NaN in `x != x`).
fn is_finite(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7f800000u) != 0x7f800000u;
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * nwg.x) * 256u + lid;
    let gnorm = norm[0];
    if (i >= p.n || !is_finite(gnorm)) {
        return;
    }
    var g = grads[i];
    if (CLIP) {
        g *= min(p.max_norm / (gnorm + 1e-6), 1.0);
    }
    let pd = param[i] * p.decay;
    let mo = m[i];
    var mi: f32;
    if (abs(p.w1) < 0.5) {
        mi = mo + p.w1 * (g - mo);
    } else {
        mi = g - (g - mo) * (1.0 - p.w1);
    }
    let vi = v[i] * p.beta2 + p.w2 * g * g;
    let denom = sqrt(vi) / p.bc2_sqrt + p.eps;
    param[i] = pd - p.step_size * (mi / denom);
    m[i] = mi;
    v[i] = vi;
}
