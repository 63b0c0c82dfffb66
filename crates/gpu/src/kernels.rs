//! Which variant of the kernels a device runs: chosen once when the device is opened, from the
//! adapter's type, overridable with `TINYTUNE_KERNELS=cpu|gpu`.
//!
//! * [`KernelSet::Cpu`] — CPU Vulkan / WebGPU implementations (Mesa's lavapipe, Chrome's
//!   SwiftShader): register-blocked kernels with no workgroup memory and no barriers, because
//!   there barriers are expensive and storage loads in loops are the cost
//!   (`../shared/notes/lavapipe.md`).
//! * [`KernelSet::Gpu`] — integrated and discrete GPUs: workgroup-memory tiles (64×64 outputs per
//!   workgroup of 256 invocations, coalesced loads, NF4 codes dequantized into the tile), and the
//!   LoRA weight gradients split over the rows (M) into partial sums reduced by a second pass, so
//!   that a dispatch has enough workgroups to fill the card; attention with 64 rows per workgroup
//!   and the other side's rows staged through workgroup memory 16 at a time.
//!
//! Every variant computes the same function (sums may run in another order, so results agree to
//! rounding); the test suite runs each of them on lavapipe against the CPU reference.

use std::fmt;

/// The kernel variants. See the module documentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KernelSet {
    /// Register-blocked kernels for CPU implementations of Vulkan / WebGPU.
    Cpu,
    /// Workgroup-memory tiled kernels for GPUs.
    Gpu,
}

/// The environment variable that overrides the choice.
pub const KERNELS_ENV: &str = "TINYTUNE_KERNELS";

impl KernelSet {
    /// Both variants, for tests that run each.
    pub const ALL: [KernelSet; 2] = [KernelSet::Cpu, KernelSet::Gpu];

    /// Its name, as `TINYTUNE_KERNELS` spells it.
    pub fn name(self) -> &'static str {
        match self {
            KernelSet::Cpu => "cpu",
            KernelSet::Gpu => "gpu",
        }
    }

    /// Parses `cpu` or `gpu` (case-insensitive, surrounding spaces ignored).
    pub fn parse(s: &str) -> Option<KernelSet> {
        match s.trim().to_ascii_lowercase().as_str() {
            "cpu" => Some(KernelSet::Cpu),
            "gpu" => Some(KernelSet::Gpu),
            _ => None,
        }
    }

    /// The variant for an adapter: [`KernelSet::Cpu`] for CPU device types and for the CPU
    /// implementations a browser may report with another type (SwiftShader, llvmpipe, lavapipe,
    /// Microsoft's Basic Render Driver), [`KernelSet::Gpu`] otherwise.
    pub fn for_adapter(device_type: wgpu::DeviceType, name: &str, driver: &str) -> KernelSet {
        let text = format!("{name} {driver}").to_ascii_lowercase();
        let software = [
            "swiftshader",
            "llvmpipe",
            "lavapipe",
            "microsoft basic render",
        ]
        .iter()
        .any(|s| text.contains(s));
        if device_type == wgpu::DeviceType::Cpu || software {
            KernelSet::Cpu
        } else {
            KernelSet::Gpu
        }
    }
}

impl fmt::Display for KernelSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The dtype of the frozen-weight matmuls' operands (the f32 and NF4 forward and input-gradient
/// matmuls, the LM head's included): [`ComputeDtype::F16`] rounds both operands to f16 (round to
/// nearest) as they are loaded and multiplies them exactly in f32, accumulating in f32 — the
/// arithmetic of an f16 tensor-core product, and of bitsandbytes with `bnb_4bit_compute_dtype =
/// float16`; the GPU variant also stages them in f16 workgroup memory (half the footprint).
/// Everything else (the residual stream, norms, softmax statistics, attention, LoRA, the loss,
/// the optimizer and the master parameters) stays f32. An operand beyond f16's range (±65504)
/// becomes infinite: the run then stops at the non-finite loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ComputeDtype {
    F32,
    F16,
}

/// The environment variable that overrides the default compute dtype.
pub const COMPUTE_DTYPE_ENV: &str = "TINYTUNE_COMPUTE_DTYPE";

impl ComputeDtype {
    /// `f32` or `f16`.
    pub fn name(self) -> &'static str {
        match self {
            ComputeDtype::F32 => "f32",
            ComputeDtype::F16 => "f16",
        }
    }

    /// Parses `f32` or `f16` (case-insensitive, surrounding spaces ignored).
    pub fn parse(s: &str) -> Option<ComputeDtype> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" => Some(ComputeDtype::F32),
            "f16" => Some(ComputeDtype::F16),
            _ => None,
        }
    }

    /// The default for a device: f16 on a GPU-class adapter (`set` is
    /// [`KernelSet::for_adapter`]'s choice) with `SHADER_F16`, f32 elsewhere (CPU adapters compute f16 no faster, and the parity tests
    /// against PEFT run in f32).
    pub fn default_for(set: KernelSet, has_f16: bool) -> ComputeDtype {
        if set == KernelSet::Gpu && has_f16 {
            ComputeDtype::F16
        } else {
            ComputeDtype::F32
        }
    }
}

impl fmt::Display for ComputeDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The kernels a device runs and the optional features they may use, as `tinytune info`, the JS
/// `info()` and the benchmarks print it: `gpu (f16, subgroups)`, `cpu (subgroups)`, `cpu`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelInfo {
    pub set: KernelSet,
    /// The device has `SHADER_F16`.
    pub f16: bool,
    /// The device has `SUBGROUP`.
    pub subgroups: bool,
    /// The frozen-weight matmuls' operand dtype.
    pub compute: ComputeDtype,
}

impl fmt::Display for KernelInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut feats = Vec::new();
        if self.f16 {
            feats.push("f16");
        }
        if self.subgroups {
            feats.push("subgroups");
        }
        if feats.is_empty() {
            write!(f, "{}", self.set)?;
        } else {
            write!(f, "{} ({})", self.set, feats.join(", "))?;
        }
        write!(f, ", compute {}", self.compute)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_set_parses_and_prints() {
        for k in KernelSet::ALL {
            assert_eq!(
                KernelSet::parse(&format!(" {} ", k.name().to_uppercase())),
                Some(k)
            );
        }
        assert_eq!(KernelSet::parse("tpu"), None);
    }

    #[test]
    fn software_adapters_get_cpu_kernels() {
        use wgpu::DeviceType as D;
        assert_eq!(
            KernelSet::for_adapter(D::Cpu, "llvmpipe (LLVM 19)", ""),
            KernelSet::Cpu
        );
        assert_eq!(
            KernelSet::for_adapter(D::Other, "", "SwiftShader driver"),
            KernelSet::Cpu
        );
        assert_eq!(
            KernelSet::for_adapter(D::DiscreteGpu, "NVIDIA H200", "NVIDIA 570"),
            KernelSet::Gpu
        );
        assert_eq!(KernelSet::for_adapter(D::Other, "", ""), KernelSet::Gpu);
        let info = KernelInfo {
            set: KernelSet::Gpu,
            f16: true,
            subgroups: true,
            compute: ComputeDtype::F16,
        };
        assert_eq!(info.to_string(), "gpu (f16, subgroups), compute f16");
    }

    #[test]
    fn compute_dtype_parses_and_defaults() {
        assert_eq!(ComputeDtype::parse(" F16 "), Some(ComputeDtype::F16));
        assert_eq!(ComputeDtype::parse("f32"), Some(ComputeDtype::F32));
        assert_eq!(ComputeDtype::parse("bf16"), None);
        assert_eq!(
            ComputeDtype::default_for(KernelSet::Gpu, true),
            ComputeDtype::F16
        );
        assert_eq!(
            ComputeDtype::default_for(KernelSet::Gpu, false),
            ComputeDtype::F32
        );
        assert_eq!(
            ComputeDtype::default_for(KernelSet::Cpu, true),
            ComputeDtype::F32
        );
    }
}
