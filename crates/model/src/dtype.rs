//! Element types of GGUF tensors and their conversion to f32 with ggml's exact formulas
//! (`dequantize_row_*` in ggml-quants.c, which gguf-py's `quants.dequantize` mirrors):
//!
//! | type | block | bytes | layout | value |
//! | --- | --- | --- | --- | --- |
//! | F32 | 1 | 4 | f32 | x |
//! | F16 | 1 | 2 | f16 | x |
//! | BF16 | 1 | 2 | bf16 | x |
//! | Q8_0 | 32 | 34 | f16 d, 32 x i8 q | `q * d` |
//! | Q4_0 | 32 | 18 | f16 d, 16 bytes | `(q - 8) * d`, q = low nibble of byte j for element j, high nibble for element j + 16 |
//! | Q4_1 | 32 | 20 | f16 d, f16 m, 16 bytes | `q * d + m`, nibbles as Q4_0 |
//!
//! All arithmetic is single f32 operations (no fused multiply-add), so results match ggml and
//! gguf-py bit for bit.

use crate::float::{f16_to_f32, FloatDtype};
use crate::{ModelError, Result};

/// A GGUF / ggml tensor type this crate can convert to f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q8_0,
    Q4_0,
    Q4_1,
}

/// ggml's name for a type id, including the ones this crate cannot load (for error messages).
pub fn ggml_type_name(id: u32) -> String {
    let name = match id {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        6 => "Q5_0",
        7 => "Q5_1",
        8 => "Q8_0",
        9 => "Q8_1",
        10 => "Q2_K",
        11 => "Q3_K",
        12 => "Q4_K",
        13 => "Q5_K",
        14 => "Q6_K",
        15 => "Q8_K",
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        30 => "BF16",
        34 => "TQ1_0",
        35 => "TQ2_0",
        39 => "MXFP4",
        _ => return format!("unknown type id {id}"),
    };
    format!("{name} (type id {id})")
}

impl GgmlType {
    /// The type for a GGUF type id; unsupported ids are an error naming the type.
    pub fn from_id(id: u32) -> Result<GgmlType> {
        Ok(match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            8 => GgmlType::Q8_0,
            30 => GgmlType::BF16,
            _ => {
                return Err(ModelError::Unsupported(format!(
                    "GGUF tensor type {} (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1)",
                    ggml_type_name(id)
                )))
            }
        })
    }

    /// The GGUF type id.
    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q8_0 => 8,
            GgmlType::BF16 => 30,
        }
    }

    /// ggml's name (`"Q4_1"`...).
    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::BF16 => "BF16",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::Q4_0 => "Q4_0",
            GgmlType::Q4_1 => "Q4_1",
        }
    }

    /// Elements per block (1 for float types, 32 for the quantized ones).
    pub fn block_elems(self) -> usize {
        match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => 1,
            GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q4_1 => 32,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 | GgmlType::BF16 => 2,
            GgmlType::Q8_0 => 34,
            GgmlType::Q4_0 => 18,
            GgmlType::Q4_1 => 20,
        }
    }

    /// Bytes of `n` elements; errors when `n` is not a whole number of blocks.
    pub fn bytes_for(self, n: u64) -> Result<u64> {
        let b = self.block_elems() as u64;
        if !n.is_multiple_of(b) {
            return Err(ModelError::Tensor(format!(
                "{} elements are not a whole number of {} blocks of {b}",
                n,
                self.name()
            )));
        }
        (n / b)
            .checked_mul(self.block_bytes() as u64)
            .ok_or_else(|| ModelError::Tensor(format!("{n} {} elements overflow", self.name())))
    }

    /// Converts `bytes` (whole blocks) to f32, writing `bytes.len() / block_bytes * block_elems`
    /// values into `out` (which must be exactly that long).
    pub fn dequantize(self, bytes: &[u8], out: &mut [f32]) -> Result<()> {
        let bb = self.block_bytes();
        let be = self.block_elems();
        if !bytes.len().is_multiple_of(bb) || bytes.len() / bb * be != out.len() {
            return Err(ModelError::Tensor(format!(
                "dequantize {}: {} bytes do not hold {} elements",
                self.name(),
                bytes.len(),
                out.len()
            )));
        }
        match self {
            GgmlType::F32 => FloatDtype::F32.decode_into(bytes, out),
            GgmlType::F16 => FloatDtype::F16.decode_into(bytes, out),
            GgmlType::BF16 => FloatDtype::BF16.decode_into(bytes, out),
            GgmlType::Q8_0 => {
                for (o, b) in out.chunks_exact_mut(32).zip(bytes.chunks_exact(34)) {
                    let d = f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
                    for (x, &q) in o.iter_mut().zip(&b[2..34]) {
                        *x = (q as i8) as f32 * d;
                    }
                }
            }
            GgmlType::Q4_0 => {
                for (o, b) in out.chunks_exact_mut(32).zip(bytes.chunks_exact(18)) {
                    let d = f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
                    let (lo, hi) = o.split_at_mut(16);
                    for j in 0..16 {
                        let q = b[2 + j];
                        lo[j] = ((q & 0x0F) as i32 - 8) as f32 * d;
                        hi[j] = ((q >> 4) as i32 - 8) as f32 * d;
                    }
                }
            }
            GgmlType::Q4_1 => {
                for (o, b) in out.chunks_exact_mut(32).zip(bytes.chunks_exact(20)) {
                    let d = f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
                    let m = f16_to_f32(u16::from_le_bytes([b[2], b[3]]));
                    let (lo, hi) = o.split_at_mut(16);
                    for j in 0..16 {
                        let q = b[4 + j];
                        lo[j] = (q & 0x0F) as f32 * d + m;
                        hi[j] = (q >> 4) as f32 * d + m;
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4_0_nibble_order_and_offset() {
        // d = 0.5 (f16 0x3800); byte j = low nibble j, high nibble 15 - j.
        let mut b = vec![0x00, 0x38];
        for j in 0..16u8 {
            b.push(j | ((15 - j) << 4));
        }
        let mut out = vec![0.0; 32];
        GgmlType::Q4_0.dequantize(&b, &mut out).unwrap();
        for j in 0..16 {
            assert_eq!(out[j], (j as f32 - 8.0) * 0.5);
            assert_eq!(out[16 + j], ((15 - j) as f32 - 8.0) * 0.5);
        }
    }

    #[test]
    fn q4_1_and_q8_0() {
        // Q4_1: d = 2 (0x4000), m = -1 (0xBC00)
        let mut b = vec![0x00, 0x40, 0x00, 0xBC];
        b.extend((0..16u8).map(|j| j | (3 << 4)));
        let mut out = vec![0.0; 32];
        GgmlType::Q4_1.dequantize(&b, &mut out).unwrap();
        assert_eq!(out[5], 5.0 * 2.0 - 1.0);
        assert_eq!(out[20], 3.0 * 2.0 - 1.0);
        // Q8_0: d = 0.25 (0x3400)
        let mut b = vec![0x00, 0x34];
        b.extend((0..32).map(|j: i32| (j - 16) as i8 as u8));
        GgmlType::Q8_0.dequantize(&b, &mut out).unwrap();
        assert_eq!(out[0], -4.0);
        assert_eq!(out[31], 15.0 * 0.25);
        assert!(GgmlType::Q8_0.dequantize(&b[..33], &mut out).is_err());
    }

    #[test]
    fn unsupported_types_are_named() {
        let e = GgmlType::from_id(14).unwrap_err().to_string();
        assert!(e.contains("Q6_K"), "{e}");
    }
}
