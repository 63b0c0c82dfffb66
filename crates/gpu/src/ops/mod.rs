//! One launcher per shader; module paths mirror `shaders/<family>/<op>.wgsl`.

pub mod lora;
pub mod nf4;
mod nf4_matmul;
pub mod nn;
pub mod optim;

use crate::device::{groups_1d, Encoder, Gpu};

/// Workgroups for `n` items handled by workgroups of `wg` invocations (1-D, split over x and y).
pub(crate) fn groups_for(gpu: &Gpu, n: u64, wg: u64) -> [u32; 3] {
    groups_1d(gpu, n.div_ceil(wg))
}

#[allow(dead_code)]
pub(crate) fn f(v: f32) -> u32 {
    v.to_bits()
}

#[allow(dead_code)]
pub(crate) type Enc<'a, 'g> = &'a mut Encoder<'g>;
