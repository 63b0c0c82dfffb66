//! The runtime's errors are typed and name what went wrong; buffers round-trip.

mod common;

use common::gpu;
use tinytune::gpu::GpuError;

#[test]
fn runtime_buffer_over_limit_is_a_typed_error() {
    let Some(gpu) = gpu() else { return };
    let too_big = gpu
        .limits
        .max_buffer_size
        .max(gpu.limits.max_storage_buffer_binding_size)
        + 4;
    match gpu.alloc("model.embed_tokens.weight", too_big) {
        Err(e @ GpuError::BufferTooLarge { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("model.embed_tokens.weight") && msg.contains(&too_big.to_string()),
                "{msg}"
            );
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("allocation over the limit succeeded"),
    }
}

#[test]
fn runtime_unknown_shader_is_a_typed_error() {
    let Some(gpu) = gpu() else { return };
    let e = gpu
        .kernel("nn/does_not_exist", "main", &[])
        .err()
        .expect("must fail");
    assert!(matches!(e, GpuError::UnknownShader(_)), "{e}");
}

#[test]
fn runtime_bad_entry_point_is_a_pipeline_error() {
    let Some(gpu) = gpu() else { return };
    let e = gpu
        .kernel("nf4/dequantize", "no_such_entry", &[])
        .err()
        .expect("must fail");
    match e {
        GpuError::Pipeline { kernel, entry, .. } => assert_eq!(
            (kernel.as_str(), entry.as_str()),
            ("nf4/dequantize", "no_such_entry")
        ),
        other => panic!("wrong error: {other}"),
    }
}

#[test]
fn runtime_readback_keeps_logical_length() {
    let Some(gpu) = gpu() else { return };
    let data = [1u8, 2, 3, 4, 5];
    let b = gpu.upload("bytes", &data).unwrap();
    assert_eq!(gpu.read_blocking::<u8>(&b).unwrap(), data);
    let f = gpu.upload("floats", &[1.5f32, -2.0, 3.25]).unwrap();
    assert_eq!(gpu.read_blocking::<f32>(&f).unwrap(), [1.5, -2.0, 3.25]);
}

#[test]
fn runtime_reports_adapter_and_limits() {
    let Some(gpu) = gpu() else { return };
    assert!(!gpu.adapter.name.is_empty());
    // The device was opened with the adapter's own limits, not WebGPU's 128 MiB default binding.
    assert!(
        gpu.max_binding() >= 128 << 20,
        "max binding {}",
        gpu.max_binding()
    );
    eprintln!(
        "adapter: {} (max binding {} B)",
        gpu.adapter,
        gpu.max_binding()
    );
}

/// `Gpu::memory` counts the storage buffers alive (rounded to 4 bytes), once however often a
/// buffer is cloned, until the last clone drops; the peak stays until reset.
#[test]
fn runtime_memory_counts_live_buffers() {
    if gpu().is_none() {
        return;
    }
    // A device of its own: the other tests of this binary allocate concurrently on the shared one.
    let gpu = tinytune::gpu::Gpu::new_blocking(tinytune::gpu::GpuOptions::default()).unwrap();
    let m0 = gpu.memory();
    assert_eq!((m0.live_bytes, m0.peak_bytes), (0, 0));
    let a = gpu.alloc("a", 1000).unwrap();
    let b = gpu.alloc("b", 10).unwrap(); // rounded up to 12
    let a2 = a.clone();
    assert_eq!(gpu.memory().live_bytes, 1012);
    drop(a);
    assert_eq!(gpu.memory().live_bytes, 1012, "a clone keeps the buffer");
    drop(a2);
    let m = gpu.memory();
    assert_eq!((m.live_bytes, m.peak_bytes), (12, 1012));
    gpu.reset_peak_memory();
    assert_eq!(gpu.memory().peak_bytes, 12);
    drop(b);
    assert_eq!(gpu.memory().live_bytes, 0);
}
