//! Reference of `nn/bias_add_fwd`.

/// `y + bias` broadcast over the `M` rows of `y[M,N]`.
pub fn bias_add_fwd(bias: &[f32], y: &[f32], m: usize, n: usize) -> Vec<f32> {
    assert!(bias.len() >= n && y.len() >= m * n, "bias_add_fwd: shapes");
    y[..m * n]
        .iter()
        .enumerate()
        .map(|(i, &v)| v + bias[i % n])
        .collect()
}
