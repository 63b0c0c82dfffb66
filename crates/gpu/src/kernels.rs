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

/// The kernels a device runs and the optional features they may use, as `tinytune info`, the JS
/// `info()` and the benchmarks print it: `gpu (f16, subgroups)`, `cpu (subgroups)`, `cpu`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelInfo {
    pub set: KernelSet,
    /// The device has `SHADER_F16`.
    pub f16: bool,
    /// The device has `SUBGROUP`.
    pub subgroups: bool,
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
            write!(f, "{}", self.set)
        } else {
            write!(f, "{} ({})", self.set, feats.join(", "))
        }
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
        };
        assert_eq!(info.to_string(), "gpu (f16, subgroups)");
    }
}
