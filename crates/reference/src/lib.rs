//! Plain-loop f32 CPU reference of every tinytune kernel, forward and backward, and NF4.
//! No wgpu here: this crate is the truth the GPU tests compare against.

pub mod llama;
pub mod lora;
pub mod nf4;
mod nf4_tables;
pub mod nn;
pub mod optim;
pub mod probe;
