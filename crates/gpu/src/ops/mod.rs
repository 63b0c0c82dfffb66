//! One launcher per shader; module paths mirror `shaders/<family>/<op>.wgsl`.

pub mod lora;
pub mod nf4;
mod nf4_matmul;
pub mod nn;
pub mod optim;

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
            if ob.raw == bb.raw {
                return Err(shape_err(
                    kernel,
                    format!("{on} and {other} are the same buffer ({})", ob.label),
                ));
            }
        }
    }
    Ok(())
}
