//! LoRA adapter forward and backward (PEFT semantics), plain f32 loops.
//!
//! Shapes (row-major, torch `Linear` layout): `x[M,K]` the layer input, `a[R,K]` = `lora_A.weight`,
//! `b[N,R]` = `lora_B.weight`, `h[M,R] = x · aᵀ` (saved for the backward), and the adapter's
//! contribution to the layer output `y[M,N] += scale · h · bᵀ`, with `scale = alpha / R`
//! (or `alpha / sqrt(R)` with rsLoRA; callers pass the final value). Dropout is not modelled.
//!
//! Sums run in f32 in increasing index order; the GPU kernels sum in another order, so tests
//! compare with a tolerance.

/// Gradients of the LoRA adapter for an upstream gradient `dy[M,N]` of its output.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraGrads {
    /// `da[R,K] = dhᵀ · x` with `dh = scale · dy · b`.
    pub da: Vec<f32>,
    /// `db[N,R] = scale · dyᵀ · h`.
    pub db: Vec<f32>,
    /// `dx[M,K] = dh · a` (the adapter's share only; the frozen base weight adds its own).
    pub dx: Vec<f32>,
}

fn check(name: &str, v: &[f32], rows: usize, cols: usize) {
    assert!(
        v.len() >= rows * cols,
        "lora: {name} has {} values, shape ({rows}, {cols})",
        v.len()
    );
}

/// Forward: returns `(h, y_delta)` with `h[m,r] = Σ_k x[m,k] a[r,k]` and
/// `y_delta[m,n] = scale · Σ_r h[m,r] b[n,r]` (the amount the adapter adds to the base output).
///
/// Panics if a slice is shorter than its shape.
#[allow(clippy::too_many_arguments)]
pub fn adapter_fwd(
    x: &[f32],
    a: &[f32],
    b: &[f32],
    m: usize,
    k: usize,
    n: usize,
    r: usize,
    scale: f32,
) -> (Vec<f32>, Vec<f32>) {
    check("x", x, m, k);
    check("a", a, r, k);
    check("b", b, n, r);
    let mut h = vec![0f32; m * r];
    for i in 0..m {
        for j in 0..r {
            let mut acc = 0f32;
            for t in 0..k {
                acc += x[i * k + t] * a[j * k + t];
            }
            h[i * r + j] = acc;
        }
    }
    let mut y = vec![0f32; m * n];
    for i in 0..m {
        for c in 0..n {
            let mut acc = 0f32;
            for j in 0..r {
                acc += h[i * r + j] * b[c * r + j];
            }
            y[i * n + c] = scale * acc;
        }
    }
    (h, y)
}

/// `dh[M,R] = scale · dy · b`, i.e. `dh[m,r] = scale · Σ_n dy[m,n] b[n,r]` (the gradient of `h`).
///
/// Panics if a slice is shorter than its shape.
pub fn dh(dy: &[f32], b: &[f32], m: usize, n: usize, r: usize, scale: f32) -> Vec<f32> {
    check("dy", dy, m, n);
    check("b", b, n, r);
    let mut dh = vec![0f32; m * r];
    for i in 0..m {
        for j in 0..r {
            let mut acc = 0f32;
            for c in 0..n {
                acc += dy[i * n + c] * b[c * r + j];
            }
            dh[i * r + j] = scale * acc;
        }
    }
    dh
}

/// Backward of [`adapter_fwd`] for the upstream gradient `dy[M,N]`, given the saved `h = x · aᵀ`:
/// `dh = scale · dy · b`, `da = dhᵀ · x`, `db = scale · dyᵀ · h`, `dx = dh · a`.
/// Returns fresh gradients (the GPU kernels accumulate them into existing buffers).
///
/// Panics if a slice is shorter than its shape.
#[allow(clippy::too_many_arguments)]
pub fn adapter_bwd(
    x: &[f32],
    h: &[f32],
    dy: &[f32],
    a: &[f32],
    b: &[f32],
    m: usize,
    k: usize,
    n: usize,
    r: usize,
    scale: f32,
) -> LoraGrads {
    check("x", x, m, k);
    check("h", h, m, r);
    check("dy", dy, m, n);
    check("a", a, r, k);
    check("b", b, n, r);
    let dh = dh(dy, b, m, n, r, scale);
    let mut da = vec![0f32; r * k];
    for j in 0..r {
        for t in 0..k {
            let mut acc = 0f32;
            for i in 0..m {
                acc += dh[i * r + j] * x[i * k + t];
            }
            da[j * k + t] = acc;
        }
    }
    let mut db = vec![0f32; n * r];
    for c in 0..n {
        for j in 0..r {
            let mut acc = 0f32;
            for i in 0..m {
                acc += dy[i * n + c] * h[i * r + j];
            }
            db[c * r + j] = scale * acc;
        }
    }
    let mut dx = vec![0f32; m * k];
    for i in 0..m {
        for t in 0..k {
            let mut acc = 0f32;
            for j in 0..r {
                acc += dh[i * r + j] * a[j * k + t];
            }
            dx[i * k + t] = acc;
        }
    }
    LoraGrads { da, db, dx }
}
