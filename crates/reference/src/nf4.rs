//! NF4 block quantization with double quantization of the absmax, bit-compatible with
//! bitsandbytes' CUDA kernels (`kQuantizeBlockwise` with `NF4`, then `General8bit` on the absmax).
//!
//! Layout (bitsandbytes' `quantize_4bit` / `QuantState.as_dict(packed=True)`):
//! - `x` is flattened row-major and cut into blocks of `block_size` (64 by default);
//! - per block `absmax = max |x|`, `s = x * (1 / absmax)`, `code = #{NF4 midpoints m : m < s}`
//!   (ties go to the lower code; for an all-zero block every code is 7, i.e. 0.0);
//! - two codes per byte, element `2i` in the **high** nibble; an odd count pads with code 7;
//! - double quantization: `offset = mean(absmax)`, `absmax - offset` quantized to 8 bits in blocks
//!   of 256 against [`DYNAMIC_MAP`] with the CUDA kernel's search (`dQuantize<0>`).

/// bitsandbytes' NF4 code book (`get_4bit_type("nf4")`), as f32.
#[allow(clippy::excessive_precision)] // bitsandbytes' own literals, kept as written
pub const NF4: [f32; 16] = [
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
];

/// The 15 decision thresholds of bitsandbytes' CUDA `dQuantizeNF4`, its float literals parsed as f32.
/// Four of them (indices 0, 8, 12, 14) are 1 ulp off the f32 midpoint of adjacent codes, which its
/// portable backend (`torch.bucketize` on midpoints) uses instead; we follow CUDA.
#[allow(clippy::excessive_precision)] // bitsandbytes' own literals, kept as written
pub const NF4_MIDPOINTS: [f32; 15] = [
    -0.8480964004993439,
    -0.6106329262256622,
    -0.4599952697753906,
    -0.33967943489551544,
    -0.23460740596055984,
    -0.13791173323988914,
    -0.045525018125772476,
    0.03979014977812767,
    0.1202552504837513,
    0.2035212516784668,
    0.2920137718319893,
    0.3893125355243683,
    0.5016634166240692,
    0.6427869200706482,
    0.8614784181118011,
];

/// Block size of the nested (double) quantization of the absmax, fixed by bitsandbytes.
pub const NESTED_BLOCK: usize = 256;
/// Default NF4 block size.
pub const DEFAULT_BLOCK: usize = 64;
/// Code that pads an odd element count (0.0 in [`NF4`]).
pub const PAD_CODE: u8 = 7;

const _: () = assert!(NF4.len() == 16 && NF4_MIDPOINTS.len() == 15);
const _: () = assert!(
    NESTED_BLOCK.is_multiple_of(4),
    "nested codes pack 4 per u32 word without straddling blocks"
);
const _: () = assert!(
    DEFAULT_BLOCK.is_multiple_of(8),
    "a block's packed codes fill whole u32 words"
);

/// bitsandbytes' signed dynamic map `create_dynamic_map(signed=True)` (256 sorted f32 values).
/// Bit patterns as produced by bitsandbytes 0.4x; `tests/fixtures/bnb` checks them.
pub static DYNAMIC_MAP: [f32; 256] = dynamic_map();

const fn dynamic_map() -> [f32; 256] {
    let mut out = [0f32; 256];
    let mut i = 0;
    while i < 256 {
        out[i] = f32::from_bits(crate::nf4_tables::DYNAMIC_MAP_BITS[i]);
        i += 1;
    }
    out
}

/// Is `block` a block size bitsandbytes accepts (32..=4096, power of two)?
pub fn valid_block_size(block: usize) -> bool {
    block.is_power_of_two() && (32..=4096).contains(&block)
}

/// NF4 code of a normalised value: the number of midpoints strictly below `s`.
/// NaN (from an all-zero block) never compares greater, but we never produce NaN: see [`quantize`].
#[inline]
pub fn nf4_code(s: f32) -> u8 {
    let mut c = 0u8;
    for &m in NF4_MIDPOINTS.iter() {
        if s > m {
            c += 1;
        }
    }
    c
}

/// Blockwise NF4 quantization: returns (packed codes `ceil(n/2)` bytes, absmax per block).
pub fn quantize(x: &[f32], block: usize) -> (Vec<u8>, Vec<f32>) {
    assert!(valid_block_size(block), "block size {block}");
    let n = x.len();
    let nblocks = n.div_ceil(block);
    let mut absmax = vec![0f32; nblocks];
    let mut codes = vec![PAD_CODE; n + (n & 1)];
    for b in 0..nblocks {
        let chunk = &x[b * block..((b + 1) * block).min(n)];
        let am = chunk.iter().fold(0f32, |m, v| m.max(v.abs()));
        absmax[b] = am;
        // All-zero block: every element is 0.0, code 7 (bitsandbytes' portable backend clamps absmax to 1e-38).
        let inv = if am > 0.0 { 1.0 / am } else { 0.0 };
        for (j, &v) in chunk.iter().enumerate() {
            codes[b * block + j] = nf4_code((v * inv).clamp(-1.0, 1.0));
        }
    }
    let packed = codes.chunks(2).map(|p| (p[0] << 4) | p[1]).collect();
    (packed, absmax)
}

/// Unpacks code `i` from bitsandbytes' byte layout.
#[inline]
pub fn code_at(packed: &[u8], i: usize) -> u8 {
    let b = packed[i / 2];
    if i.is_multiple_of(2) {
        b >> 4
    } else {
        b & 15
    }
}

/// `w[i] = NF4[code] * absmax[i / block]` for `n` elements.
pub fn dequantize(packed: &[u8], absmax: &[f32], block: usize, n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| NF4[code_at(packed, i) as usize] * absmax[i / block])
        .collect()
}

/// bitsandbytes' `dQuantize<0>` (round to nearest over the sorted 256-entry `code`, CUDA's search).
pub fn dyn8_code(code: &[f32; 256], x: f32) -> u8 {
    let mut pivot: usize = 127;
    let mut upper_pivot: usize = 255;
    let mut lower_pivot: usize = 0;
    let mut lower = -1.0f32;
    let mut upper = 1.0f32;
    let mut val = code[pivot];
    let mut i = 64;
    while i > 0 {
        if x > val {
            lower_pivot = pivot;
            lower = val;
            pivot += i;
        } else {
            upper_pivot = pivot;
            upper = val;
            pivot -= i;
        }
        val = code[pivot];
        i >>= 1;
    }
    if upper_pivot == 255 {
        upper = code[upper_pivot];
    }
    if lower_pivot == 0 {
        lower = code[lower_pivot];
    }
    if x > val {
        let mid = (upper + val) * 0.5;
        if x > mid {
            upper_pivot as u8
        } else {
            pivot as u8
        }
    } else {
        let mid = (lower + val) * 0.5;
        if x < mid {
            lower_pivot as u8
        } else {
            pivot as u8
        }
    }
}

/// The f32 mean of the absmax in the order the GPU kernel `nf4/absmax_mean` uses:
/// 256 lanes each sum a strided slice sequentially, then a pairwise tree over the lanes.
pub fn absmax_mean(absmax: &[f32]) -> f32 {
    let mut lanes = [0f32; 256];
    for (i, &a) in absmax.iter().enumerate() {
        lanes[i % 256] += a;
    }
    let mut s = 128;
    while s > 0 {
        for t in 0..s {
            lanes[t] += lanes[t + s];
        }
        s /= 2;
    }
    lanes[0] / absmax.len() as f32
}

/// The absmax of a tensor after double quantization, as stored by bitsandbytes.
#[derive(Clone, Debug, PartialEq)]
pub struct DoubleQuant {
    /// 8-bit codes of `absmax - offset`, one per NF4 block.
    pub codes: Vec<u8>,
    /// One absmax per 256 NF4 blocks.
    pub nested_absmax: Vec<f32>,
    /// `mean(absmax)`.
    pub offset: f32,
}

/// Double-quantizes `absmax` with a given `offset` (normally [`absmax_mean`]).
pub fn absmax_quantize(absmax: &[f32], offset: f32) -> DoubleQuant {
    let n = absmax.len();
    let mut codes = vec![0u8; n];
    let nb = n.div_ceil(NESTED_BLOCK);
    let mut nested = vec![0f32; nb];
    for (b, nested_b) in nested.iter_mut().enumerate() {
        let r = b * NESTED_BLOCK..((b + 1) * NESTED_BLOCK).min(n);
        let am = absmax[r.clone()]
            .iter()
            .fold(0f32, |m, &a| m.max((a - offset).abs()));
        *nested_b = am;
        // CUDA computes 0 * (1/0) = NaN for a block of equal absmax, which its search maps to code 0;
        // spelled out here (and in the shader) because WGSL leaves NaN comparisons undefined.
        if am == 0.0 {
            continue;
        }
        let inv = 1.0 / am;
        for i in r {
            codes[i] = dyn8_code(&DYNAMIC_MAP, (absmax[i] - offset) * inv);
        }
    }
    DoubleQuant {
        codes,
        nested_absmax: nested,
        offset,
    }
}

/// Double-quantizes `absmax` with bitsandbytes' defaults.
pub fn double_quantize(absmax: &[f32]) -> DoubleQuant {
    absmax_quantize(absmax, absmax_mean(absmax))
}

/// `absmax[b] = DYNAMIC_MAP[code[b]] * nested_absmax[b / 256] + offset`.
pub fn double_dequantize(dq: &DoubleQuant) -> Vec<f32> {
    dq.codes
        .iter()
        .enumerate()
        .map(|(b, &c)| DYNAMIC_MAP[c as usize] * dq.nested_absmax[b / NESTED_BLOCK] + dq.offset)
        .collect()
}

/// Per-block scales of an NF4 tensor: plain f32, or double-quantized as bitsandbytes stores them.
#[derive(Clone, Debug, PartialEq)]
pub enum Absmax {
    F32(Vec<f32>),
    Double(DoubleQuant),
}

/// A quantized tensor on the host, in bitsandbytes' byte layout.
#[derive(Clone, Debug, PartialEq)]
pub struct Nf4Tensor {
    /// Number of elements.
    pub n: usize,
    pub block: usize,
    /// `ceil(n/2)` bytes, element `2i` in the high nibble.
    pub packed: Vec<u8>,
    pub absmax: Absmax,
}

impl Nf4Tensor {
    /// Quantizes `x` (flattened row-major) exactly as bitsandbytes' `quantize_4bit(..., quant_type="nf4")`.
    pub fn quantize(x: &[f32], block: usize, double_quant: bool) -> Nf4Tensor {
        let (packed, absmax) = quantize(x, block);
        let absmax = if double_quant {
            Absmax::Double(double_quantize(&absmax))
        } else {
            Absmax::F32(absmax)
        };
        Nf4Tensor {
            n: x.len(),
            block,
            packed,
            absmax,
        }
    }

    /// The f32 absmax per block (after undoing double quantization).
    pub fn absmax_f32(&self) -> Vec<f32> {
        match &self.absmax {
            Absmax::F32(a) => a.clone(),
            Absmax::Double(dq) => double_dequantize(dq),
        }
    }

    pub fn nblocks(&self) -> usize {
        self.n.div_ceil(self.block)
    }

    /// `dequant(W)` as f32, bitsandbytes' `dequantize_4bit`.
    pub fn dequantize(&self) -> Vec<f32> {
        dequantize(&self.packed, &self.absmax_f32(), self.block, self.n)
    }
}

/// `y[M,N] = x[M,K] · dequant(w)[N,K]ᵀ`, the reference of `nf4/matmul_fwd` (with `alpha = 1`, no
/// accumulation): the dense matmul ([`crate::nn::matmul_fwd`]) of the dequantized weight.
pub fn matmul_fwd(x: &[f32], w: &Nf4Tensor, m: usize, k: usize, n: usize) -> Vec<f32> {
    assert_eq!(w.n, n * k, "an [n, k] weight holds n * k elements");
    crate::nn::matmul_fwd(x, &w.dequantize(), m, k, n)
}

/// `dx[M,K] = dy[M,N] · dequant(w)[N,K]`, the reference of `nf4/matmul_bwd_input` (no
/// accumulation): [`crate::nn::matmul_bwd_input`] of the dequantized weight.
pub fn matmul_bwd_input(dy: &[f32], w: &Nf4Tensor, m: usize, k: usize, n: usize) -> Vec<f32> {
    assert_eq!(w.n, n * k, "an [n, k] weight holds n * k elements");
    crate::nn::matmul_bwd_input(dy, &w.dequantize(), m, k, n)
}
