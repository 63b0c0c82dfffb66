//! The one place where tinytune converts between f32 and the 16-bit float formats (IEEE half,
//! bfloat16) of model files: safetensors and GGUF reading, PEFT adapters, `quantize` casts and
//! `merge` output all call these functions, so every path rounds the same way.
//!
//! - To f32 the conversion is exact. f16 goes through the `half` crate; bf16 is the plain 16-bit
//!   shift torch's `.float()` does (NaN payloads are kept as they are).
//! - From f32 it rounds to nearest, ties to even (the `half` crate, like torch's `.to(dtype)`);
//!   NaN stays NaN, out-of-range values become infinities.
//!
//! A leaf module: it imports nothing from the crate.

/// IEEE half (bits) to f32, exactly.
pub fn f16_to_f32(bits: u16) -> f32 {
    half::f16::from_bits(bits).to_f32()
}

/// bfloat16 (bits) to f32, exactly.
pub fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// f32 to IEEE half bits, round to nearest even.
pub fn f32_to_f16(x: f32) -> u16 {
    half::f16::from_f32(x).to_bits()
}

/// f32 to bfloat16 bits, round to nearest even.
pub fn f32_to_bf16(x: f32) -> u16 {
    half::bf16::from_f32(x).to_bits()
}

/// A float element type of a model file: what tensors are stored in, converted from and cast to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FloatDtype {
    F32,
    F16,
    BF16,
}

impl FloatDtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            FloatDtype::F32 => 4,
            FloatDtype::F16 | FloatDtype::BF16 => 2,
        }
    }

    /// The safetensors dtype string (`"F32"`, `"F16"`, `"BF16"`).
    pub fn st_name(self) -> &'static str {
        match self {
            FloatDtype::F32 => "F32",
            FloatDtype::F16 => "F16",
            FloatDtype::BF16 => "BF16",
        }
    }

    /// The torch name (`str(dtype)` without `torch.`), as `config.json`'s `dtype` / `torch_dtype`
    /// and bitsandbytes' quant state write it.
    pub fn torch_name(self) -> &'static str {
        match self {
            FloatDtype::F32 => "float32",
            FloatDtype::F16 => "float16",
            FloatDtype::BF16 => "bfloat16",
        }
    }

    /// The dtype of a torch name (`"float32"`, `"float16"`, `"bfloat16"`).
    pub fn from_torch_name(name: &str) -> Option<FloatDtype> {
        Some(match name {
            "float32" => FloatDtype::F32,
            "float16" => FloatDtype::F16,
            "bfloat16" => FloatDtype::BF16,
            _ => return None,
        })
    }

    /// Converts little-endian `bytes` to f32 into `out` (exact). `out.len()` elements are
    /// converted; `bytes` must hold at least that many.
    pub fn decode_into(self, bytes: &[u8], out: &mut [f32]) {
        match self {
            FloatDtype::F32 => {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                    *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
            FloatDtype::F16 => {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = f16_to_f32(u16::from_le_bytes([c[0], c[1]]));
                }
            }
            FloatDtype::BF16 => {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = bf16_to_f32(u16::from_le_bytes([c[0], c[1]]));
                }
            }
        }
    }

    /// Little-endian `bytes` (whole elements) as f32 (exact).
    pub fn decode(self, bytes: &[u8]) -> Vec<f32> {
        let mut out = vec![0f32; bytes.len() / self.size()];
        self.decode_into(bytes, &mut out);
        out
    }

    /// Appends the little-endian encoding of `x` to `out` (round to nearest even).
    pub fn encode_into(self, x: &[f32], out: &mut Vec<u8>) {
        out.reserve(x.len() * self.size());
        match self {
            FloatDtype::F32 => x
                .iter()
                .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
            FloatDtype::F16 => x
                .iter()
                .for_each(|v| out.extend_from_slice(&f32_to_f16(*v).to_le_bytes())),
            FloatDtype::BF16 => x
                .iter()
                .for_each(|v| out.extend_from_slice(&f32_to_bf16(*v).to_le_bytes())),
        }
    }

    /// The little-endian encoding of `x` (round to nearest even).
    pub fn encode(self, x: &[f32]) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(x, &mut out);
        out
    }

    /// Rounds `x` in place to the values this dtype holds (`decode(encode(x))`).
    pub fn round(self, x: &mut [f32]) {
        match self {
            FloatDtype::F32 => {}
            FloatDtype::F16 => x.iter_mut().for_each(|v| *v = f16_to_f32(f32_to_f16(*v))),
            FloatDtype::BF16 => x.iter_mut().for_each(|v| *v = bf16_to_f32(f32_to_bf16(*v))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_to_nearest_even_and_exact_widening() {
        // 1 + 2^-11 is halfway between two f16 values: ties to the even one (1.0).
        assert_eq!(f32_to_f16(1.0 + 2f32.powi(-11)), 0x3C00);
        assert_eq!(f32_to_f16(1.0 + 3.0 * 2f32.powi(-11)), 0x3C02);
        // bf16: 1 + 2^-8 ties to 1.0, 1 + 3 * 2^-8 to 1 + 2^-6.
        assert_eq!(f32_to_bf16(1.0 + 2f32.powi(-8)), 0x3F80);
        assert_eq!(f32_to_bf16(1.0 + 3.0 * 2f32.powi(-8)), 0x3F82);
        assert_eq!(f32_to_f16(1e6), 0x7C00);
        assert!(f16_to_f32(f32_to_f16(f32::NAN)).is_nan());
        for bits in [0u16, 1, 0x3C00, 0x8001, 0x7BFF, 0xFC00] {
            assert_eq!(f32_to_f16(f16_to_f32(bits)), bits);
            assert_eq!(f32_to_bf16(bf16_to_f32(bits)), bits);
        }
        let x = [0.1f32, -3.5, 65504.0, 1e-7];
        for d in [FloatDtype::F32, FloatDtype::F16, FloatDtype::BF16] {
            let mut r = x;
            d.round(&mut r);
            assert_eq!(d.decode(&d.encode(&x)), r);
            assert_eq!(FloatDtype::from_torch_name(d.torch_name()), Some(d));
        }
    }
}
