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

/// [`matmul_fwd`] into a column band of a wider output, in place, as the GPU kernel
/// `nn/matmul_fwd` defines it: for `row < m`, `col < n`, with `p = Σ_k x[row,k] * w[col,k]`,
/// `y[row * ldy + col0 + col]` becomes `alpha * p`, or with `accumulate` its old value plus
/// `alpha * p`. The other elements of `y` are not touched. `ldy = n`, `col0 = 0` is a plain `[M,N]`
/// output; with `w` split into row chunks (vocab chunks), chunk rows `[v0, v0 + n)` write the full
/// logits with `ldy = V`, `col0 = v0`.
///
/// Panics if `col0 + n > ldy` or a slice is shorter than its shape.
#[allow(clippy::too_many_arguments)]
pub fn matmul_fwd_strided(
    x: &[f32],
    w: &[f32],
    y: &mut [f32],
    m: usize,
    k: usize,
    n: usize,
    ldy: usize,
    col0: usize,
    alpha: f32,
    accumulate: bool,
) {
    assert!(
        col0 + n <= ldy,
        "matmul_fwd_strided: columns {col0}..{} over the row stride {ldy}",
        col0 + n
    );
    assert!(
        m == 0 || y.len() >= (m - 1) * ldy + col0 + n,
        "matmul_fwd_strided: y has {} values, {m} rows of stride {ldy}",
        y.len()
    );
    let prod = matmul_fwd(x, w, m, k, n);
    for i in 0..m {
        let out = &mut y[i * ldy + col0..i * ldy + col0 + n];
        for (o, &p) in out.iter_mut().zip(&prod[i * n..(i + 1) * n]) {
            *o = if accumulate {
                *o + alpha * p
            } else {
                alpha * p
            };
        }
    }
}

/// [`matmul_bwd_input`] reading `dy` from a column band of a wider matrix, in place, as the GPU
/// kernel `nn/matmul_bwd_input` defines it: with `dy(row, j) = dy[row * lddy + col0 + j]` for
/// `j < n`, `dx[row, t]` becomes `Σ_j dy(row, j) * w[j, t]`, or with `accumulate` its old value
/// plus that sum. With `w` split into row chunks (vocab chunks), chunk rows `[v0, v0 + n)` take
/// their share of the logits gradient with `lddy = V`, `col0 = v0`.
///
/// Panics if `col0 + n > lddy` or a slice is shorter than its shape.
#[allow(clippy::too_many_arguments)]
pub fn matmul_bwd_input_strided(
    dy: &[f32],
    w: &[f32],
    dx: &mut [f32],
    m: usize,
    k: usize,
    n: usize,
    lddy: usize,
    col0: usize,
    accumulate: bool,
) {
    assert!(
        col0 + n <= lddy,
        "matmul_bwd_input_strided: columns {col0}..{} over the row stride {lddy}",
        col0 + n
    );
    assert!(
        m == 0 || dy.len() >= (m - 1) * lddy + col0 + n,
        "matmul_bwd_input_strided: dy has {} values, {m} rows of stride {lddy}",
        dy.len()
    );
    assert!(
        dx.len() >= m * k,
        "matmul_bwd_input_strided: dx has {} values, shape ({m}, {k})",
        dx.len()
    );
    // The band as a packed [m, n] matrix, then the plain product.
    let band: Vec<f32> = (0..m)
        .flat_map(|i| dy[i * lddy + col0..i * lddy + col0 + n].iter().copied())
        .collect();
    let prod = matmul_bwd_input(&band, w, m, k, n);
    for (o, &p) in dx[..m * k].iter_mut().zip(&prod) {
        *o = if accumulate { *o + p } else { p };
    }
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

    #[test]
    fn strided_band_by_hand() {
        // x (2x3), w (2x3) into columns 1..3 of a 2x4 y, with accumulate.
        let x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let w = [1.0, 0.0, -1.0, 0.5, 0.5, 0.5];
        let mut y = [9.0, 1.0, 1.0, 9.0, 9.0, 1.0, 1.0, 9.0];
        matmul_fwd_strided(&x, &w, &mut y, 2, 3, 2, 4, 1, 2.0, true);
        assert_eq!(y, [9.0, -3.0, 7.0, 9.0, 9.0, -3.0, 16.0, 9.0]);
        // dy = columns 1..3 of a 2x4 matrix (as in small_products_by_hand).
        let dy = [7.0, 1.0, 2.0, 7.0, 7.0, -1.0, 0.0, 7.0];
        let mut dx = [5f32; 6];
        matmul_bwd_input_strided(&dy, &w, &mut dx, 2, 3, 2, 4, 1, false);
        assert_eq!(dx, [2.0, 1.0, 0.0, -1.0, 0.0, 1.0]);
    }
}
