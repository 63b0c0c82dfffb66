//! The one error type of the GPU runtime.

/// Everything that can go wrong between a launcher and the device.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error("no GPU adapter found (backends {backends}); on Linux without a GPU install Mesa's lavapipe (mesa-vulkan-drivers) and set WGPU_BACKEND=vulkan")]
    NoAdapter { backends: String },
    #[error("WGPU_ADAPTER_NAME={wanted:?} matches no adapter; found: {found}")]
    AdapterNotFound { wanted: String, found: String },
    #[error("could not open the device on {adapter}: {message}")]
    RequestDevice { adapter: String, message: String },
    #[error("unknown shader {0:?} (not registered in tinytune_gpu::shaders::SHADERS)")]
    UnknownShader(String),
    #[error("compiling kernel {kernel} (entry {entry}) failed: {message}")]
    Pipeline {
        kernel: String,
        entry: String,
        message: String,
    },
    #[error("buffer {label:?} needs {bytes} bytes but the device allows at most {limit} bytes per {what}")]
    BufferTooLarge {
        label: String,
        bytes: u64,
        limit: u64,
        what: &'static str,
    },
    #[error("out of GPU memory allocating buffer {label:?} of {bytes} bytes: {message}")]
    OutOfMemory {
        label: String,
        bytes: u64,
        message: String,
    },
    #[error("kernel {kernel} needs {groups} workgroups, over the device limit {limit}")]
    DispatchTooLarge {
        kernel: String,
        groups: u64,
        limit: u64,
    },
    #[error("{kernel}: {message}")]
    Shape { kernel: String, message: String },
    #[error("reading back buffer {label:?} failed: {message}")]
    Readback { label: String, message: String },
    #[error("TINYTUNE_KERNELS={0:?} is not a kernel variant: use cpu or gpu (or unset it to choose from the adapter)")]
    BadKernels(String),
    #[error("TINYTUNE_COMPUTE_DTYPE={0:?} is not a compute dtype: use f32 or f16 (or unset it for the device's default)")]
    BadComputeDtype(String),
    #[error("f16 compute needs the SHADER_F16 feature, which {adapter} does not have: compute in f32 (--compute-dtype f32, or compute_dtype \"f32\" in JS)")]
    NoF16 {
        /// "the adapter NAME", or "this adapter" where the browser gives no name.
        adapter: String,
    },
    #[error("device error: {0}")]
    Device(String),
}

pub type Result<T, E = GpuError> = std::result::Result<T, E>;

/// Shape check helper used by every launcher.
pub(crate) fn shape_err(kernel: &str, message: impl Into<String>) -> GpuError {
    GpuError::Shape {
        kernel: kernel.to_string(),
        message: message.into(),
    }
}
