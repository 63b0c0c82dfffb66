//! Dense f32 launchers: `shaders/nn/*.wgsl`, one submodule per op, re-exported here so a kernel
//! `shaders/nn/<op>_<pass>.wgsl` is launched by `ops::nn::<op>_<pass>`.

mod add;
mod attention;
mod bias_add;
mod cross_entropy;
mod dropout;
mod embedding;
mod matmul;
mod prefix;
mod rmsnorm;
mod rope;
mod swiglu;

pub use add::*;
pub use attention::*;
pub use bias_add::*;
pub use cross_entropy::*;
pub use dropout::*;
pub use embedding::*;
pub use matmul::*;
pub use prefix::*;
pub use rmsnorm::*;
pub use rope::*;
pub use swiglu::*;

pub(crate) use matmul::{wg_for, Grid};
