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
//! | Q5_0 | 32 | 22 | f16 d, u32 qh, 16 bytes | `(q - 16) * d`, q = nibble as Q4_0 plus bit j of qh (little-endian) as bit 4 for element j |
//! | Q5_1 | 32 | 24 | f16 d, f16 m, u32 qh, 16 bytes | `q * d + m`, q as Q5_0 |
//! | Q2_K | 256 | 84 | 16 bytes scales, 64 bytes qs, f16 d, f16 dmin | sixteen 16-element sub-blocks s = e / 16 with `sc = scales[s]`: `(d * (sc & 15)) * q - dmin * (sc >> 4)`; element e = 128h + 32j + l has q = bits 2j..2j+1 of `qs[32h + l]` |
//! | Q3_K | 256 | 110 | 32 bytes hmask, 64 bytes qs, 12 bytes scales, f16 d | sixteen 16-element sub-blocks: `(d * (sc - 32)) * (q - 4)` with sc 6-bit (low 4 bits: low nibble of `scales[s]` for s < 8, high nibble of `scales[s - 8]` for s >= 8; high 2 bits: bits 2(s / 4).. of `scales[8 + s % 4]`), q's low 2 bits as Q2_K and bit 2 = bit e / 32 of `hmask[e % 32]` |
//! | Q4_K | 256 | 144 | f16 d, f16 dmin, 12 bytes scales, 128 bytes qs | eight 32-element sub-blocks s = e / 32: `(d * sc) * q - dmin * m` with 6-bit sc, m (s < 4: low 6 bits of `scales[s]`, `scales[s + 4]`; s >= 4: nibbles of `scales[s + 4]` plus the top 2 bits of `scales[s - 4]`, `scales[s]`); element e = 64c + 32h + l has q = nibble h of `qs[32c + l]` |
//! | Q5_K | 256 | 176 | f16 d, f16 dmin, 12 bytes scales, 32 bytes qh, 128 bytes qs | as Q4_K, plus bit e / 32 of `qh[e % 32]` as q's bit 4 |
//! | Q6_K | 256 | 210 | 128 bytes ql, 64 bytes qh, 16 x i8 scales, f16 d | sixteen 16-element sub-blocks: `(d * scales[s]) * (q - 32)`; element e = 128h + r has q's low nibble = nibble r / 64 of `ql[64h + r % 64]`, high 2 bits = bits 2(r / 32).. of `qh[32h + r % 32]` |
//!
//! All arithmetic is single f32 operations in ggml's order (no fused multiply-add), so results
//! match ggml and gguf-py bit for bit.
//!
//! The f16 scales of a quantized block (`d`, and `m` / `dmin` where the type has one) must be
//! finite: a block with an infinite or NaN scale is corrupt and refused with an error naming the
//! block and the scale, rather than turned into non-finite weights.

use crate::float::{f16_to_f32, FloatDtype};
use crate::{ModelError, Result};

/// Elements of a k-quant super-block (ggml's `QK_K`).
const QK_K: usize = 256;

/// A GGUF / ggml tensor type this crate can convert to f32. Variants carry ggml's names.
#[allow(non_camel_case_types)] // Q2_K..Q6_K, as ggml spells them
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q8_0,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
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

/// Reads the little-endian f16 at `b[at..at + 2]` as f32.
fn f16_at(b: &[u8], at: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[at], b[at + 1]]))
}

impl GgmlType {
    /// Every supported type, in GGUF type id order (F32, F16, the block types, BF16).
    pub const ALL: [GgmlType; 13] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::BF16,
    ];

    /// The type for a GGUF type id; unsupported ids are an error naming the type.
    pub fn from_id(id: u32) -> Result<GgmlType> {
        GgmlType::ALL
            .into_iter()
            .find(|t| t.id() == id)
            .ok_or_else(|| {
                let names: Vec<&str> = GgmlType::ALL.iter().map(|t| t.name()).collect();
                ModelError::Unsupported(format!(
                    "GGUF tensor type {} (supported: {})",
                    ggml_type_name(id),
                    names.join(", ")
                ))
            })
    }

    /// The GGUF type id.
    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q5_0 => 6,
            GgmlType::Q5_1 => 7,
            GgmlType::Q8_0 => 8,
            GgmlType::Q2_K => 10,
            GgmlType::Q3_K => 11,
            GgmlType::Q4_K => 12,
            GgmlType::Q5_K => 13,
            GgmlType::Q6_K => 14,
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
            GgmlType::Q5_0 => "Q5_0",
            GgmlType::Q5_1 => "Q5_1",
            GgmlType::Q2_K => "Q2_K",
            GgmlType::Q3_K => "Q3_K",
            GgmlType::Q4_K => "Q4_K",
            GgmlType::Q5_K => "Q5_K",
            GgmlType::Q6_K => "Q6_K",
        }
    }

    /// Elements per block (1 for float types, 32 for the legacy quantized ones, 256 for the
    /// k-quants).
    pub fn block_elems(self) -> usize {
        match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => 1,
            GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 => {
                32
            }
            GgmlType::Q2_K | GgmlType::Q3_K | GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K => {
                QK_K
            }
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
            GgmlType::Q5_0 => 22,
            GgmlType::Q5_1 => 24,
            GgmlType::Q2_K => 84,
            GgmlType::Q3_K => 110,
            GgmlType::Q4_K => 144,
            GgmlType::Q5_K => 176,
            GgmlType::Q6_K => 210,
        }
    }

    /// The f16 scales of one block: (name, byte offset). Empty for the float types.
    fn scale_fields(self) -> &'static [(&'static str, usize)] {
        match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => &[],
            GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q5_0 => &[("d", 0)],
            GgmlType::Q4_1 | GgmlType::Q5_1 => &[("d", 0), ("m", 2)],
            GgmlType::Q2_K => &[("d", 80), ("dmin", 82)],
            GgmlType::Q3_K => &[("d", 108)],
            GgmlType::Q4_K | GgmlType::Q5_K => &[("d", 0), ("dmin", 2)],
            GgmlType::Q6_K => &[("d", 208)],
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

    /// Refuses a block whose f16 scales are not all finite (`i` is the block's index, for the
    /// message).
    fn check_scales(self, b: &[u8], i: usize) -> Result<()> {
        for &(field, at) in self.scale_fields() {
            let bits = u16::from_le_bytes([b[at], b[at + 1]]);
            let v = f16_to_f32(bits);
            if !v.is_finite() {
                let be = self.block_elems();
                return Err(ModelError::Format(format!(
                    "{} block {i} (elements {}..{}) has a non-finite scale: {field} = {v} \
                     (f16 bits 0x{bits:04X}); the tensor data is corrupt",
                    self.name(),
                    i * be,
                    (i + 1) * be
                )));
            }
        }
        Ok(())
    }

    /// Converts `bytes` (whole blocks) to f32, writing `bytes.len() / block_bytes * block_elems`
    /// values into `out` (which must be exactly that long). A block with a non-finite f16 scale
    /// is an error ([`ModelError::Format`]) naming the type, the block index and the scale.
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
        let dequant_block: fn(&[u8], &mut [f32]) = match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => {
                let f = match self {
                    GgmlType::F32 => FloatDtype::F32,
                    GgmlType::F16 => FloatDtype::F16,
                    _ => FloatDtype::BF16,
                };
                f.decode_into(bytes, out);
                return Ok(());
            }
            GgmlType::Q8_0 => block_q8_0,
            GgmlType::Q4_0 => block_q4_0,
            GgmlType::Q4_1 => block_q4_1,
            GgmlType::Q5_0 => block_q5_0,
            GgmlType::Q5_1 => block_q5_1,
            GgmlType::Q2_K => block_q2_k,
            GgmlType::Q3_K => block_q3_k,
            GgmlType::Q4_K => block_q4_k,
            GgmlType::Q5_K => block_q5_k,
            GgmlType::Q6_K => block_q6_k,
        };
        for (i, (o, b)) in out
            .chunks_exact_mut(be)
            .zip(bytes.chunks_exact(bb))
            .enumerate()
        {
            self.check_scales(b, i)?;
            dequant_block(b, o);
        }
        Ok(())
    }
}

// One block each: `b` is exactly `block_bytes`, `o` exactly `block_elems` long.

fn block_q8_0(b: &[u8], o: &mut [f32]) {
    let d = f16_at(b, 0);
    for (x, &q) in o.iter_mut().zip(&b[2..34]) {
        *x = (q as i8) as f32 * d;
    }
}

fn block_q4_0(b: &[u8], o: &mut [f32]) {
    let d = f16_at(b, 0);
    let (lo, hi) = o.split_at_mut(16);
    for j in 0..16 {
        let q = b[2 + j];
        lo[j] = ((q & 0x0F) as i32 - 8) as f32 * d;
        hi[j] = ((q >> 4) as i32 - 8) as f32 * d;
    }
}

fn block_q4_1(b: &[u8], o: &mut [f32]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    let (lo, hi) = o.split_at_mut(16);
    for j in 0..16 {
        let q = b[4 + j];
        lo[j] = (q & 0x0F) as f32 * d + m;
        hi[j] = (q >> 4) as f32 * d + m;
    }
}

/// The 5-bit values of a Q5_0 / Q5_1 block from its `qh` word and 16 nibble bytes.
fn q5_values(qh: u32, qs: &[u8]) -> [u8; 32] {
    let mut q = [0u8; 32];
    for j in 0..16 {
        let h0 = ((qh >> j) & 1) as u8;
        let h1 = ((qh >> (j + 16)) & 1) as u8;
        q[j] = (qs[j] & 0x0F) | (h0 << 4);
        q[j + 16] = (qs[j] >> 4) | (h1 << 4);
    }
    q
}

fn block_q5_0(b: &[u8], o: &mut [f32]) {
    let d = f16_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    for (x, q) in o.iter_mut().zip(q5_values(qh, &b[6..22])) {
        *x = (q as i32 - 16) as f32 * d;
    }
}

fn block_q5_1(b: &[u8], o: &mut [f32]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    for (x, q) in o.iter_mut().zip(q5_values(qh, &b[8..24])) {
        *x = q as f32 * d + m;
    }
}

fn block_q2_k(b: &[u8], o: &mut [f32]) {
    let (scales, qs) = (&b[0..16], &b[16..80]);
    let d = f16_at(b, 80);
    let dmin = f16_at(b, 82);
    for (e, x) in o.iter_mut().enumerate() {
        let (h, j, l) = (e / 128, (e % 128) / 32, e % 32);
        let sc = scales[e / 16];
        let dl = d * (sc & 0x0F) as f32;
        let ml = dmin * (sc >> 4) as f32;
        let q = (qs[32 * h + l] >> (2 * j)) & 3;
        *x = dl * q as f32 - ml;
    }
}

/// The sixteen signed 6-bit sub-block scales of a Q3_K block (before the `- 32`), from its 12
/// packed bytes.
fn q3_k_scales(s: &[u8]) -> [i32; 16] {
    let mut out = [0i32; 16];
    for (k, v) in out.iter_mut().enumerate() {
        let lo = if k < 8 { s[k] & 0x0F } else { s[k - 8] >> 4 };
        let hi = (s[8 + k % 4] >> (2 * (k / 4))) & 3;
        *v = (lo | (hi << 4)) as i32 - 32;
    }
    out
}

fn block_q3_k(b: &[u8], o: &mut [f32]) {
    let (hmask, qs) = (&b[0..32], &b[32..96]);
    let scales = q3_k_scales(&b[96..108]);
    let d = f16_at(b, 108);
    for (e, x) in o.iter_mut().enumerate() {
        let (h, j, l) = (e / 128, (e % 128) / 32, e % 32);
        let dl = d * scales[e / 16] as f32;
        let low = ((qs[32 * h + l] >> (2 * j)) & 3) as i32;
        let high = (hmask[l] >> (e / 32)) & 1;
        let q = low - if high == 1 { 0 } else { 4 };
        *x = dl * q as f32;
    }
}

/// Scale and min (6 bits each) of sub-block `j` of a Q4_K / Q5_K block from its 12 packed bytes
/// (ggml's `get_scale_min_k4`).
fn scale_min_k4(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// Q4_K (`qh = None`) or Q5_K (`qh` = the 32 high-bit bytes): `qs` is the 128 nibble bytes.
fn k4_k5(d: f32, dmin: f32, scales: &[u8], qh: Option<&[u8]>, qs: &[u8], o: &mut [f32]) {
    for (s, sub) in o.chunks_exact_mut(32).enumerate() {
        let (sc, m) = scale_min_k4(s, scales);
        let dl = d * sc as f32;
        let ml = dmin * m as f32;
        let (c, h) = (s / 2, s % 2);
        for (l, x) in sub.iter_mut().enumerate() {
            let mut q = (qs[32 * c + l] >> (4 * h)) & 0x0F;
            if let Some(qh) = qh {
                q |= ((qh[l] >> s) & 1) << 4;
            }
            *x = dl * q as f32 - ml;
        }
    }
}

fn block_q4_k(b: &[u8], o: &mut [f32]) {
    k4_k5(f16_at(b, 0), f16_at(b, 2), &b[4..16], None, &b[16..144], o);
}

fn block_q5_k(b: &[u8], o: &mut [f32]) {
    k4_k5(
        f16_at(b, 0),
        f16_at(b, 2),
        &b[4..16],
        Some(&b[16..48]),
        &b[48..176],
        o,
    );
}

fn block_q6_k(b: &[u8], o: &mut [f32]) {
    let (ql, qh, scales) = (&b[0..128], &b[128..192], &b[192..208]);
    let d = f16_at(b, 208);
    for (e, x) in o.iter_mut().enumerate() {
        let (h, r) = (e / 128, e % 128);
        let low = (ql[64 * h + r % 64] >> (4 * (r / 64))) & 0x0F;
        let high = (qh[32 * h + r % 32] >> (2 * (r / 32))) & 3;
        let q = (low | (high << 4)) as i32 - 32;
        let dl = d * (scales[e / 16] as i8) as f32;
        *x = dl * q as f32;
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
        let e = GgmlType::from_id(23).unwrap_err().to_string();
        assert!(e.contains("IQ4_XS"), "{e}");
        assert!(e.contains("Q6_K"), "the supported list: {e}");
    }

    #[test]
    fn ids_names_and_sizes_round_trip() {
        for t in GgmlType::ALL {
            assert_eq!(GgmlType::from_id(t.id()).unwrap(), t);
            assert!(ggml_type_name(t.id()).starts_with(t.name()));
            assert!(t.block_bytes() >= 2 * t.scale_fields().len());
        }
        assert_eq!(GgmlType::Q6_K.bytes_for(512).unwrap(), 420);
        assert!(GgmlType::Q4_K.bytes_for(32).is_err());
    }

    #[test]
    fn q5_0_high_bits_come_from_qh() {
        // d = 1 (0x3C00), qh = bit 0 and bit 31 set, all nibbles 0x0F.
        let mut b = vec![0x00, 0x3C];
        b.extend(0x8000_0001u32.to_le_bytes());
        b.extend([0xFF; 16]);
        let mut out = vec![0.0; 32];
        GgmlType::Q5_0.dequantize(&b, &mut out).unwrap();
        assert_eq!(out[0], 31.0 - 16.0);
        assert_eq!(out[1], 15.0 - 16.0);
        assert_eq!(out[31], 31.0 - 16.0);
        assert_eq!(out[16], 15.0 - 16.0);
    }

    #[test]
    fn non_finite_scales_are_refused() {
        // Q4_K, three blocks, block 1's dmin = NaN.
        let mut b = vec![0u8; 3 * 144];
        b[144 + 2..144 + 4].copy_from_slice(&0x7E00u16.to_le_bytes());
        let mut out = vec![0.0; 3 * 256];
        let e = GgmlType::Q4_K.dequantize(&b, &mut out).unwrap_err();
        assert!(matches!(e, ModelError::Format(_)), "{e:?}");
        let e = e.to_string();
        assert!(e.contains("Q4_K block 1 (elements 256..512)"), "{e}");
        assert!(e.contains("dmin = NaN") && e.contains("0x7E00"), "{e}");
        // Q6_K's d sits at the end of the block; Q8_0's at the start.
        let mut b = vec![0u8; 210];
        b[208..210].copy_from_slice(&0xFC00u16.to_le_bytes());
        let e = GgmlType::Q6_K.dequantize(&b, &mut out[..256]).unwrap_err();
        assert!(e.to_string().contains("d = -inf"), "{e}");
        let mut b = vec![0u8; 34];
        b[0..2].copy_from_slice(&0x7C00u16.to_le_bytes());
        let e = GgmlType::Q8_0.dequantize(&b, &mut out[..32]).unwrap_err();
        assert!(e.to_string().contains("Q8_0 block 0"), "{e}");
        // Finite extremes (f16 max, subnormal) are fine.
        let mut b = vec![0u8; 34];
        b[0..2].copy_from_slice(&0x7BFFu16.to_le_bytes());
        GgmlType::Q8_0.dequantize(&b, &mut out[..32]).unwrap();
    }
}
