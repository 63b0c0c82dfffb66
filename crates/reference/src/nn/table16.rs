//! Frozen tables (token embedding, LM head) stored as 16-bit floats: the references of
//! `nn/embedding_fwd`, `nn/matmul_fwd` and `nn/matmul_bwd_input` with a 16-bit table
//! (`TABLE_DTYPE` f16 / bf16). Each takes the stored bits, widens every element to f32 exactly
//! (plain bit arithmetic, no library) and runs the f32 reference: the GPU kernels widen the same
//! way, so a 16-bit table gives exactly what its f32 copy gives.

use super::{embedding_fwd_rows, matmul_bwd_input_strided, matmul_fwd_strided};

/// A 16-bit float format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Float16 {
    /// IEEE half: 1 sign, 5 exponent (bias 15), 10 mantissa bits.
    F16,
    /// bfloat16: the top 16 bits of an f32.
    BF16,
}

impl Float16 {
    /// The f32 value of `bits`, exactly (NaN stays NaN).
    pub fn to_f32(self, bits: u16) -> f32 {
        match self {
            Float16::BF16 => f32::from_bits((bits as u32) << 16),
            Float16::F16 => {
                let sign = if bits & 0x8000 != 0 { -1.0f32 } else { 1.0 };
                let e = ((bits >> 10) & 0x1f) as i32;
                let m = (bits & 0x3ff) as f32;
                match e {
                    0 => sign * m * 2f32.powi(-24),
                    31 if m == 0.0 => sign * f32::INFINITY,
                    31 => f32::NAN,
                    _ => sign * (1.0 + m / 1024.0) * 2f32.powi(e - 15),
                }
            }
        }
    }

    /// Every element of `bits` as f32, exactly.
    pub fn widen(self, bits: &[u16]) -> Vec<f32> {
        bits.iter().map(|&b| self.to_f32(b)).collect()
    }
}

/// [`embedding_fwd_rows`] from a chunk of 16-bit elements `table` (`[rows, C]` bits of `dtype`).
///
/// Panics as [`embedding_fwd_rows`].
#[allow(clippy::too_many_arguments)]
pub fn embedding_fwd_rows_dtype(
    ids: &[u32],
    table: &[u16],
    dtype: Float16,
    x: &mut [f32],
    m: usize,
    v_total: usize,
    row0: usize,
    rows: usize,
    c: usize,
) {
    embedding_fwd_rows(ids, &dtype.widen(table), x, m, v_total, row0, rows, c);
}

/// [`matmul_fwd_strided`] with `w` (`[N, K]`) given as 16-bit elements of `dtype`.
///
/// Panics as [`matmul_fwd_strided`].
#[allow(clippy::too_many_arguments)]
pub fn matmul_fwd_strided_dtype(
    x: &[f32],
    w: &[u16],
    dtype: Float16,
    y: &mut [f32],
    m: usize,
    k: usize,
    n: usize,
    ldy: usize,
    col0: usize,
    alpha: f32,
    accumulate: bool,
) {
    matmul_fwd_strided(x, &dtype.widen(w), y, m, k, n, ldy, col0, alpha, accumulate);
}

/// [`matmul_bwd_input_strided`] with `w` (`[N, K]`) given as 16-bit elements of `dtype`.
///
/// Panics as [`matmul_bwd_input_strided`].
#[allow(clippy::too_many_arguments)]
pub fn matmul_bwd_input_strided_dtype(
    dy: &[f32],
    w: &[u16],
    dtype: Float16,
    dx: &mut [f32],
    m: usize,
    k: usize,
    n: usize,
    lddy: usize,
    col0: usize,
    accumulate: bool,
) {
    matmul_bwd_input_strided(dy, &dtype.widen(w), dx, m, k, n, lddy, col0, accumulate);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widening_by_hand() {
        let f = Float16::F16;
        assert_eq!(f.to_f32(0x3C00), 1.0);
        assert_eq!(f.to_f32(0xC000), -2.0);
        assert_eq!(f.to_f32(0x7BFF), 65504.0);
        assert_eq!(f.to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f.to_f32(0x83FF), -1023.0 * 2f32.powi(-24));
        assert_eq!(f.to_f32(0x0400), 2f32.powi(-14));
        assert_eq!(f.to_f32(0x3555), 0.333251953125);
        assert_eq!(f.to_f32(0xFC00), f32::NEG_INFINITY);
        assert!(f.to_f32(0x7E00).is_nan());
        assert_eq!(f.to_f32(0x8000).to_bits(), 0x8000_0000);
        let b = Float16::BF16;
        assert_eq!(b.to_f32(0x3F80), 1.0);
        assert_eq!(b.to_f32(0xC049), f32::from_bits(0xC049_0000));
    }
}
