//! Dense matrix products in torch `Linear` layout: weights are stored `[out, in]` row-major.
//!
//! Plain triple loops with f32 accumulation in increasing index order; the GPU kernels sum in a
//! different order, so tests compare with a tolerance. The NF4 kernels' references are these
//! functions applied to [`crate::nf4::Nf4Tensor::dequantize`].

/// `y[M,N] = x[M,K] · w[N,K]ᵀ`, i.e. `y[m,n] = Σ_k x[m,k] * w[n,k]` (torch `x @ w.T`).
///
/// Panics if `x` or `w` is shorter than its shape.
pub fn matmul_fwd(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    assert!(
        x.len() >= m * k,
        "matmul_fwd: x has {} values, shape ({m}, {k})",
        x.len()
    );
    assert!(
        w.len() >= n * k,
        "matmul_fwd: w has {} values, shape ({n}, {k})",
        w.len()
    );
    let mut y = vec![0f32; m * n];
    for i in 0..m {
        let xr = &x[i * k..(i + 1) * k];
        for j in 0..n {
            let wr = &w[j * k..(j + 1) * k];
            let mut acc = 0f32;
            for t in 0..k {
                acc += xr[t] * wr[t];
            }
            y[i * n + j] = acc;
        }
    }
    y
}

/// Input gradient of [`matmul_fwd`]: `dx[M,K] = dy[M,N] · w[N,K]`, i.e. `dx[m,k] = Σ_n dy[m,n] * w[n,k]`.
///
/// Panics if `dy` or `w` is shorter than its shape.
pub fn matmul_bwd_input(dy: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    assert!(
        dy.len() >= m * n,
        "matmul_bwd_input: dy has {} values, shape ({m}, {n})",
        dy.len()
    );
    assert!(
        w.len() >= n * k,
        "matmul_bwd_input: w has {} values, shape ({n}, {k})",
        w.len()
    );
    let mut dx = vec![0f32; m * k];
    for i in 0..m {
        for t in 0..k {
            let mut acc = 0f32;
            for j in 0..n {
                acc += dy[i * n + j] * w[j * k + t];
            }
            dx[i * k + t] = acc;
        }
    }
    dx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_products_by_hand() {
        // x (2x3), w (2x3): y = x wᵀ.
        let x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let w = [1.0, 0.0, -1.0, 0.5, 0.5, 0.5];
        assert_eq!(matmul_fwd(&x, &w, 2, 3, 2), vec![-2.0, 3.0, -2.0, 7.5]);
        // dy (2x2) · w (2x3).
        let dy = [1.0, 2.0, -1.0, 0.0];
        assert_eq!(
            matmul_bwd_input(&dy, &w, 2, 3, 2),
            vec![2.0, 1.0, 0.0, -1.0, 0.0, 1.0]
        );
    }

    #[test]
    fn bwd_input_is_the_transpose_of_fwd() {
        // <dy, x wᵀ> == <dy w, x> for any x, dy.
        let (m, k, n) = (3, 5, 4);
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.25)
            .collect();
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 5 % 13) as f32 - 6.0) * 0.125)
            .collect();
        let dy: Vec<f32> = (0..m * n)
            .map(|i| ((i * 3 % 7) as f32 - 3.0) * 0.5)
            .collect();
        let y = matmul_fwd(&x, &w, m, k, n);
        let dx = matmul_bwd_input(&dy, &w, m, k, n);
        let a: f32 = dy.iter().zip(&y).map(|(a, b)| a * b).sum();
        let b: f32 = dx.iter().zip(&x).map(|(a, b)| a * b).sum();
        assert!((a - b).abs() <= 1e-4 * a.abs().max(1.0), "{a} vs {b}");
    }
}
