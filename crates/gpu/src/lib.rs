//! The wgpu runtime of tinytune: device, limits, buffers, pipeline cache, shader registry,
//! readback, one launcher per WGSL kernel (`ops`), and the host types the launchers take
//! (bitsandbytes' NF4 layout in [`nf4`], AdamW's hyper-parameters in [`ops::optim`]).

pub mod bindings;
pub mod device;
pub mod error;
pub mod kernels;
pub mod nf4;
pub mod ops;
pub mod params;
pub mod shaders;
pub(crate) mod upload;

#[cfg(not(target_arch = "wasm32"))]
pub use device::list_adapters;
pub use device::{
    cast_bytes, groups_1d, AdapterSummary, Encoder, Gpu, GpuBuffer, GpuCounters, GpuOptions,
    Kernel, MemoryStats, PendingRead,
};
pub use error::{GpuError, Result};
pub use kernels::{ComputeDtype, KernelInfo, KernelSet};
pub use ops::TableDtype;
pub use wgpu;
