//! NF4 launchers: `shaders/nf4/*.wgsl`. Storage of a quantized weight on the device and its
//! round trip to bitsandbytes' host layout ([`crate::nf4::Nf4Tensor`]).

use crate::nf4::{valid_block_size, DYNAMIC_MAP, NESTED_BLOCK};
pub use crate::nf4::{Absmax, DoubleQuant, Nf4Tensor};

pub use super::nf4_matmul::*;
use super::{check_distinct, check_f32, groups_for};
use crate::device::{Encoder, Gpu, GpuBuffer};
use crate::error::{shape_err, Result};
use crate::params::{AbsmaxMeanParams, AbsmaxQuantizeParams, DequantizeParams, QuantizeParams};

/// A frozen NF4 weight on the device. Codes are bitsandbytes' packed bytes, read as u32 words.
pub struct Nf4Weight {
    /// Number of elements (rows * cols for a matrix stored `[rows, cols]` row-major).
    pub n: usize,
    pub block: usize,
    pub double_quant: bool,
    /// `ceil(n/2)` bytes of packed codes.
    pub codes: GpuBuffer,
    /// Double quant: one u8 code per block (packed 4 per word); else one f32 per block.
    pub absmax: GpuBuffer,
    /// Double quant: `[DYNAMIC_MAP (256), offset, nested_absmax (ceil(nblocks/256))]`; else `[0.0]`.
    pub dq: GpuBuffer,
}

/// Index of the offset inside [`Nf4Weight::dq`].
pub const DQ_OFFSET: usize = 256;
/// Index of the first nested absmax inside [`Nf4Weight::dq`].
pub const DQ_NESTED: usize = 257;

impl Nf4Weight {
    pub fn nblocks(&self) -> usize {
        self.n.div_ceil(self.block)
    }

    /// Uploads a host tensor (for example one read from a bitsandbytes checkpoint).
    pub fn upload(gpu: &Gpu, label: &str, t: &Nf4Tensor) -> Result<Nf4Weight> {
        check_block("nf4/upload", t.block)?;
        let codes = gpu.upload(&format!("{label}.codes"), &t.packed)?;
        let (absmax, dq, double_quant) = match &t.absmax {
            Absmax::F32(a) => (
                gpu.upload(&format!("{label}.absmax"), a)?,
                gpu.upload(&format!("{label}.dq"), &[0f32])?,
                false,
            ),
            Absmax::Double(d) => {
                let mut dqv = DYNAMIC_MAP.to_vec();
                dqv.push(d.offset);
                dqv.extend_from_slice(&d.nested_absmax);
                (
                    gpu.upload(&format!("{label}.absmax"), &d.codes)?,
                    gpu.upload(&format!("{label}.dq"), &dqv)?,
                    true,
                )
            }
        };
        Ok(Nf4Weight {
            n: t.n,
            block: t.block,
            double_quant,
            codes,
            absmax,
            dq,
        })
    }

    /// Reads the weight back into bitsandbytes' host layout.
    pub async fn to_host(&self, gpu: &Gpu) -> Result<Nf4Tensor> {
        let packed = gpu.read::<u8>(&self.codes).await?;
        let absmax = if self.double_quant {
            let codes = gpu.read::<u8>(&self.absmax).await?;
            let dq = gpu.read::<f32>(&self.dq).await?;
            Absmax::Double(DoubleQuant {
                codes,
                nested_absmax: dq[DQ_NESTED..].to_vec(),
                offset: dq[DQ_OFFSET],
            })
        } else {
            Absmax::F32(gpu.read::<f32>(&self.absmax).await?)
        };
        Ok(Nf4Tensor {
            n: self.n,
            block: self.block,
            packed,
            absmax,
        })
    }
}

fn check_block(kernel: &str, block: usize) -> Result<()> {
    if !valid_block_size(block) {
        return Err(shape_err(
            kernel,
            format!("block size {block} must be a power of two in 32..=4096"),
        ));
    }
    Ok(())
}

/// Quantizes `n` f32 values of `x` into a new [`Nf4Weight`] (`nf4/quantize`, then with
/// `double_quant` `nf4/absmax_mean` and `nf4/absmax_quantize`).
pub fn quantize(
    enc: &mut Encoder,
    label: &str,
    x: &GpuBuffer,
    n: usize,
    block: usize,
    double_quant: bool,
) -> Result<Nf4Weight> {
    const K: &str = "nf4/quantize";
    check_block(K, block)?;
    if n == 0 {
        return Err(shape_err(
            K,
            format!("{label}: cannot quantize an empty tensor"),
        ));
    }
    check_f32(K, label, x, &[n])?;
    if n > u32::MAX as usize / 2 {
        return Err(shape_err(
            K,
            format!("{label}: {n} elements exceed the 2^31 a kernel indexes"),
        ));
    }
    let gpu = enc.gpu;
    let nblocks = n.div_ceil(block);
    let nbytes = n.div_ceil(2);
    let codes = gpu.alloc(&format!("{label}.codes"), nbytes as u64)?;
    let absmax_f = gpu.alloc(&format!("{label}.absmax"), nblocks as u64 * 4)?;
    let k = gpu.kernel(K, "main", &[("BLOCK", block as f64)])?;
    let params = QuantizeParams {
        n: n as u32,
        nblocks: nblocks as u32,
        nwords: nbytes.div_ceil(4) as u32,
        ..Default::default()
    };
    enc.dispatch(
        &k,
        &params,
        &[x, &codes, &absmax_f],
        groups_for(gpu, nblocks as u64, 64),
    )?;
    if !double_quant {
        let dq = gpu.upload(&format!("{label}.dq"), &[0f32])?;
        return Ok(Nf4Weight {
            n,
            block,
            double_quant,
            codes,
            absmax: absmax_f,
            dq,
        });
    }
    let nnested = nblocks.div_ceil(NESTED_BLOCK);
    let mut dqv = vec![0f32; DQ_NESTED + nnested];
    dqv[..256].copy_from_slice(&DYNAMIC_MAP);
    let dq = gpu.upload(&format!("{label}.dq"), &dqv)?;
    let qabsmax = gpu.alloc(&format!("{label}.absmax"), nblocks as u64)?;
    absmax_mean(enc, &absmax_f, &dq, nblocks)?;
    absmax_quantize(enc, &absmax_f, &qabsmax, &dq, nblocks)?;
    Ok(Nf4Weight {
        n,
        block,
        double_quant,
        codes,
        absmax: qabsmax,
        dq,
    })
}

/// Double quantization, step 1 (`nf4/absmax_mean`): writes `dq[DQ_OFFSET] = mean(absmax[..nblocks])`
/// in a fixed summation order (256 lanes each sum a strided slice, then a pairwise tree over the
/// lanes; the reference is `tinytune_reference::nf4::absmax_mean`). One workgroup.
///
/// Errors with [`crate::GpuError::Shape`] if `nblocks` is 0 or a buffer is smaller than its shape
/// (`dq` holds `DQ_NESTED + ceil(nblocks / 256)` f32).
pub fn absmax_mean(
    enc: &mut Encoder,
    absmax: &GpuBuffer,
    dq: &GpuBuffer,
    nblocks: usize,
) -> Result<()> {
    const K: &str = "nf4/absmax_mean";
    check_absmax(K, absmax, dq, nblocks)?;
    let kern = enc.gpu.kernel(K, "main", &[])?;
    enc.dispatch(
        &kern,
        &AbsmaxMeanParams {
            nblocks: nblocks as u32,
            ..Default::default()
        },
        &[absmax, dq],
        [1, 1, 1],
    )
}

/// Double quantization, step 2 (`nf4/absmax_quantize`): 8-bit codes of `absmax - dq[DQ_OFFSET]`
/// against the dynamic map `dq[..256]` in blocks of 256, one byte per NF4 block into `qabsmax`
/// (packed 4 per u32), and each nested block's absmax into `dq[DQ_NESTED..]`, as
/// `tinytune_reference::nf4::absmax_quantize`.
///
/// Errors with [`crate::GpuError::Shape`] if `nblocks` is 0 or a buffer is smaller than its shape.
pub fn absmax_quantize(
    enc: &mut Encoder,
    absmax: &GpuBuffer,
    qabsmax: &GpuBuffer,
    dq: &GpuBuffer,
    nblocks: usize,
) -> Result<()> {
    const K: &str = "nf4/absmax_quantize";
    check_absmax(K, absmax, dq, nblocks)?;
    if qabsmax.len < nblocks as u64 {
        return Err(shape_err(
            K,
            format!(
                "qabsmax ({nblocks}) u8 needs {nblocks} bytes, buffer {:?} holds {}",
                qabsmax.label, qabsmax.len
            ),
        ));
    }
    let nnested = nblocks.div_ceil(NESTED_BLOCK);
    let gpu = enc.gpu;
    let kern = gpu.kernel(K, "main", &[])?;
    enc.dispatch(
        &kern,
        &AbsmaxQuantizeParams {
            nblocks: nblocks as u32,
            nnested: nnested as u32,
            ..Default::default()
        },
        &[absmax, qabsmax, dq],
        groups_for(gpu, nnested as u64, 64),
    )
}

/// Checks the operands of the double quantization kernels.
fn check_absmax(kernel: &str, absmax: &GpuBuffer, dq: &GpuBuffer, nblocks: usize) -> Result<()> {
    if nblocks == 0 || nblocks > u32::MAX as usize / 2 {
        return Err(shape_err(kernel, format!("{nblocks} blocks")));
    }
    check_f32(kernel, "absmax", absmax, &[nblocks])?;
    check_f32(
        kernel,
        "dq",
        dq,
        &[DQ_NESTED + nblocks.div_ceil(NESTED_BLOCK)],
    )?;
    check_distinct(kernel, &[("dq", dq)], &[("absmax", absmax)])
}

/// `out[i] = dequant(w)[i]` for all `w.n` elements (`nf4/dequantize`).
pub fn dequantize(enc: &mut Encoder, w: &Nf4Weight, out: &GpuBuffer) -> Result<()> {
    const K: &str = "nf4/dequantize";
    check_f32(K, "output", out, &[w.n])?;
    let gpu = enc.gpu;
    let k = gpu.kernel(
        K,
        "main",
        &[
            ("BLOCK", w.block as f64),
            ("DOUBLE_QUANT", if w.double_quant { 1.0 } else { 0.0 }),
        ],
    )?;
    enc.dispatch(
        &k,
        &DequantizeParams {
            n: w.n as u32,
            ..Default::default()
        },
        &[&w.codes, &w.absmax, &w.dq, out],
        groups_for(gpu, w.n as u64, 64),
    )
}
