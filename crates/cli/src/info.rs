//! `tinytune info`: the adapters wgpu sees, the one tinytune picks, its features and limits.

use anyhow::{Context, Result};
use tinytune_gpu::wgpu::Features;
use tinytune_gpu::{Gpu, GpuOptions};

/// Prints the adapter report on stdout.
pub fn run(adapter: Option<String>) -> Result<()> {
    let adapters = tinytune_gpu::list_adapters();
    println!("adapters found: {}", adapters.len());
    for (i, a) in adapters.iter().enumerate() {
        println!("  [{i}] {a}");
    }
    let gpu = Gpu::new_blocking(GpuOptions {
        adapter_name: adapter,
        ..GpuOptions::default()
    })
    .context("cannot open a GPU device")?;
    let a = &gpu.adapter;
    println!("chosen adapter: {}", a.name);
    println!("  backend:      {}", a.backend);
    println!("  device type:  {}", a.device_type);
    if !a.driver.is_empty() || !a.driver_info.is_empty() {
        println!("  driver:       {} {}", a.driver, a.driver_info);
    }
    println!(
        "  kernels:      {} (TINYTUNE_KERNELS=cpu|gpu, TINYTUNE_COMPUTE_DTYPE=f32|f16 override)",
        gpu.kernel_info()
    );
    let yes_no = |f: Features| {
        if gpu.features.contains(f) {
            "enabled"
        } else {
            "not available"
        }
    };
    println!("features:");
    println!("  SHADER_F16:   {}", yes_no(Features::SHADER_F16));
    println!("  SUBGROUP:     {}", yes_no(Features::SUBGROUP));
    let l = &gpu.limits;
    println!("limits:");
    let rows = [
        ("max_buffer_size", bytes(l.max_buffer_size)),
        (
            "max_storage_buffer_binding_size",
            bytes(l.max_storage_buffer_binding_size),
        ),
        (
            "max_compute_workgroups_per_dimension",
            l.max_compute_workgroups_per_dimension.to_string(),
        ),
        (
            "max_compute_invocations_per_workgroup",
            l.max_compute_invocations_per_workgroup.to_string(),
        ),
        (
            "max_compute_workgroup_storage_size",
            bytes(l.max_compute_workgroup_storage_size as u64),
        ),
        (
            "largest f32 tensor per binding",
            format!("{} elements", gpu.max_binding() / 4),
        ),
    ];
    for (k, v) in rows {
        println!("  {:<39}{v}", format!("{k}:"));
    }
    Ok(())
}

/// `1073741824 (1.00 GiB)`.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{n} ({v:.2} {})", UNITS[u])
    }
}
