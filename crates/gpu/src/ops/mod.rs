//! One launcher per shader; module paths mirror `shaders/<family>/<op>.wgsl`.

pub mod lora;
pub mod nf4;
mod nf4_matmul;
pub mod nn;
pub mod optim;
pub mod probe;

use crate::device::{groups_1d, Encoder, Gpu, GpuBuffer};
use crate::error::{shape_err, Result};

/// Workgroups for `n` items handled by workgroups of `wg` invocations (1-D, split over x and y).
pub(crate) fn groups_for(gpu: &Gpu, n: u64, wg: u64) -> [u32; 3] {
    groups_1d(gpu, n.div_ceil(wg))
}

#[allow(dead_code)]
pub(crate) type Enc<'a, 'g> = &'a mut Encoder<'g>;

/// `a * b` without overflow on 32-bit targets.
pub(crate) fn mul(a: usize, b: usize) -> u64 {
    a as u64 * b as u64
}

/// Checks that `buf` holds at least the f32 elements of `shape` (`what` names the operand).
pub(crate) fn check_f32(kernel: &str, what: &str, buf: &GpuBuffer, shape: &[usize]) -> Result<()> {
    let need = shape
        .iter()
        .fold(4u64, |acc, &d| acc.saturating_mul(d as u64));
    if buf.len < need {
        let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
        return Err(shape_err(
            kernel,
            format!(
                "{what} ({}) f32 needs {need} bytes, buffer {:?} holds {}",
                dims.join(", "),
                buf.label,
                buf.len
            ),
        ));
    }
    Ok(())
}

/// The element type of a frozen table a kernel reads (the `TABLE_DTYPE` override of
/// `shaders/nn/table_common.wgsl`): the token embedding and LM head kept in their checkpoint's
/// dtype. A 16-bit table is its little-endian u16 elements packed two per u32 (element `2j` in
/// the low half), as uploading the `[V*C]` u16 array (padded with one zero u16 when odd) gives;
/// the kernels widen each element to f32 exactly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum TableDtype {
    /// f32 elements.
    #[default]
    F32,
    /// IEEE half elements.
    F16,
    /// bfloat16 elements.
    BF16,
}

impl TableDtype {
    /// The `TABLE_DTYPE` override value.
    pub(crate) fn code(self) -> f64 {
        match self {
            TableDtype::F32 => 0.0,
            TableDtype::F16 => 1.0,
            TableDtype::BF16 => 2.0,
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            TableDtype::F32 => 4,
            TableDtype::F16 | TableDtype::BF16 => 2,
        }
    }

    /// Bytes of a buffer holding `n` elements (whole u32 words: a 16-bit table of an odd number
    /// of elements takes one more u16).
    pub fn bytes(self, n: u64) -> u64 {
        match self {
            TableDtype::F32 => n.saturating_mul(4),
            TableDtype::F16 | TableDtype::BF16 => n.div_ceil(2).saturating_mul(4),
        }
    }

    /// `"f32"`, `"f16"`, `"bf16"`.
    pub fn name(self) -> &'static str {
        match self {
            TableDtype::F32 => "f32",
            TableDtype::F16 => "f16",
            TableDtype::BF16 => "bf16",
        }
    }
}

/// Checks that `buf` holds the elements of `shape` stored as `dtype` (see [`TableDtype::bytes`]).
pub(crate) fn check_table(
    kernel: &str,
    what: &str,
    buf: &GpuBuffer,
    dtype: TableDtype,
    shape: &[usize],
) -> Result<()> {
    if dtype == TableDtype::F32 {
        return check_f32(kernel, what, buf, shape);
    }
    let n = shape
        .iter()
        .fold(1u64, |acc, &d| acc.saturating_mul(d as u64));
    let need = dtype.bytes(n);
    // Buffers are whole words: an upload of an odd number of u16 is padded to the last word.
    if buf.len.div_ceil(4) * 4 < need {
        let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
        return Err(shape_err(
            kernel,
            format!(
                "{what} ({}) {} needs {need} bytes, buffer {:?} holds {}",
                dims.join(", "),
                dtype.name(),
                buf.label,
                buf.len
            ),
        ));
    }
    Ok(())
}

/// Checks that every element count a kernel indexes with u32 fits.
pub(crate) fn check_u32(kernel: &str, counts: &[(&str, u64)]) -> Result<()> {
    for (what, c) in counts {
        if *c > u32::MAX as u64 {
            return Err(shape_err(
                kernel,
                format!("{what} has {c} elements, over the 2^32 a kernel indexes"),
            ));
        }
    }
    Ok(())
}

/// Fails if an output buffer is also bound as another output or an input of the same op.
pub(crate) fn check_distinct(
    kernel: &str,
    outputs: &[(&str, &GpuBuffer)],
    inputs: &[(&str, &GpuBuffer)],
) -> Result<()> {
    for (i, (on, ob)) in outputs.iter().enumerate() {
        for (other, bb) in outputs[i + 1..].iter().chain(inputs) {
            if ob.overlaps(bb) {
                return Err(shape_err(
                    kernel,
                    format!("{on} and {other} share memory ({})", ob.label),
                ));
            }
        }
    }
    Ok(())
}
