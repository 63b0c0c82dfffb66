//! Scaled elementwise add (residual connections).

/// `y + alpha * x` elementwise (the kernel updates `y` in place), in f32: `alpha * x` rounded,
/// then the sum rounded, as the kernel computes it.
///
/// Panics if the lengths differ.
pub fn add_fwd(x: &[f32], y: &[f32], alpha: f32) -> Vec<f32> {
    assert_eq!(x.len(), y.len(), "add_fwd: x and y lengths");
    x.iter().zip(y).map(|(&a, &b)| b + alpha * a).collect()
}
