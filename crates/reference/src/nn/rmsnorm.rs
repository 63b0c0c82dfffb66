//! RMSNorm as transformers' `LlamaRMSNorm` (also Qwen2's) in float32:
//! `rstd = 1 / sqrt(mean(x²) + eps)`, `y = (x * rstd) * w`, per row of `x[M, C]`.
//!
//! Row reductions (the mean of squares, the backward's dot product) are summed in f64 and rounded
//! once: torch's vectorised sums are more accurate than a naive f32 loop, and the GPU kernels sum
//! in yet another order, so the truth is the (nearly) exact sum; tests compare with a tolerance.

fn check_rows(kernel: &str, what: &str, v: &[f32], m: usize, c: usize) {
    assert!(
        v.len() >= m * c,
        "{kernel}: {what} has {} values, shape ({m}, {c})",
        v.len()
    );
}

/// RMSNorm forward of `x[M,C]` with weight `w[C]`: returns `(y[M,C], rstd[M])` where
/// `rstd[m] = 1 / sqrt(mean_c(x[m,c]²) + eps)` (f32 `1/sqrt`, as torch's `rsqrt`) and
/// `y[m,c] = (x[m,c] * rstd[m]) * w[c]` (each product rounded, in transformers' order).
///
/// Panics if a slice is shorter than its shape.
pub fn rmsnorm_fwd(x: &[f32], w: &[f32], m: usize, c: usize, eps: f32) -> (Vec<f32>, Vec<f32>) {
    check_rows("rmsnorm_fwd", "x", x, m, c);
    check_rows("rmsnorm_fwd", "w", w, 1, c);
    let mut y = vec![0f32; m * c];
    let mut rstd = vec![0f32; m];
    for r in 0..m {
        let xr = &x[r * c..(r + 1) * c];
        let ss: f64 = xr.iter().map(|&v| v as f64 * v as f64).sum();
        let mean = (ss / c as f64) as f32;
        let rs = 1.0 / (mean + eps).sqrt();
        rstd[r] = rs;
        for j in 0..c {
            y[r * c + j] = (xr[j] * rs) * w[j];
        }
    }
    (y, rstd)
}

/// RMSNorm backward to the input: `dx[M,C]` from the output gradient `dy[M,C]`, the forward's
/// `x`, `w` and saved `rstd[M]`. With `g = w ⊙ dy` and `r = rstd[m]`:
/// `dx[m,c] = r * g[c] - x[m,c] * (r³ / C) * Σ_k g[k] x[m,k]`.
///
/// Panics if a slice is shorter than its shape.
pub fn rmsnorm_bwd(dy: &[f32], x: &[f32], w: &[f32], rstd: &[f32], m: usize, c: usize) -> Vec<f32> {
    check_rows("rmsnorm_bwd", "dy", dy, m, c);
    check_rows("rmsnorm_bwd", "x", x, m, c);
    check_rows("rmsnorm_bwd", "w", w, 1, c);
    check_rows("rmsnorm_bwd", "rstd", rstd, m, 1);
    let mut dx = vec![0f32; m * c];
    for r in 0..m {
        let (xr, dyr) = (&x[r * c..(r + 1) * c], &dy[r * c..(r + 1) * c]);
        let dot: f64 = (0..c).map(|j| (w[j] * dyr[j]) as f64 * xr[j] as f64).sum();
        let rs = rstd[r];
        let coef = (rs * rs * rs) * (dot / c as f64) as f32;
        for j in 0..c {
            dx[r * c + j] = rs * (w[j] * dyr[j]) - xr[j] * coef;
        }
    }
    dx
}

/// RMSNorm weight gradient (optional: norm weights are frozen under LoRA):
/// `dw[c] = Σ_m dy[m,c] * (x[m,c] * rstd[m])`, summed over rows in f64.
///
/// Panics if a slice is shorter than its shape.
pub fn rmsnorm_bwd_weight(dy: &[f32], x: &[f32], rstd: &[f32], m: usize, c: usize) -> Vec<f32> {
    check_rows("rmsnorm_bwd_weight", "dy", dy, m, c);
    check_rows("rmsnorm_bwd_weight", "x", x, m, c);
    check_rows("rmsnorm_bwd_weight", "rstd", rstd, m, 1);
    (0..c)
        .map(|j| {
            (0..m)
                .map(|r| dy[r * c + j] as f64 * (x[r * c + j] * rstd[r]) as f64)
                .sum::<f64>() as f32
        })
        .collect()
}
