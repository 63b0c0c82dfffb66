//! The runtime's errors are typed and name what went wrong; buffers round-trip; the counters
//! count what the runtime does: bind groups are made once, params go through the arena, reads
//! can be taken without blocking.

mod common;

use common::gpu;
use tinytune::gpu::ops::nn::add_fwd;
use tinytune::gpu::{Gpu, GpuError, GpuOptions};

/// A device of its own (the counters of the shared one move with the other tests), checking
/// each dispatch or not.
fn own_gpu(check_dispatch: bool) -> Option<Gpu> {
    gpu()?;
    Some(
        Gpu::new_blocking(GpuOptions {
            check_dispatch: Some(check_dispatch),
            ..GpuOptions::default()
        })
        .unwrap(),
    )
}

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

/// Two dispatches in one encoder are two dispatches and one submit; the same kernel on the same
/// buffers makes its bind group once, in this and later encoders, whatever its params; a new
/// buffer makes a new one. Results are those of the ops.
#[test]
fn runtime_counters_count_dispatches_and_reuse_bind_groups() {
    let Some(gpu) = own_gpu(false) else { return };
    let n = 1000;
    let x = gpu.upload("x", &vec![1.0f32; n]).unwrap();
    let y = gpu.upload("y", &vec![0.5f32; n]).unwrap();
    let c0 = gpu.counters();
    let mut enc = gpu.encoder();
    add_fwd(&mut enc, &x, &y, n, 2.0).unwrap();
    add_fwd(&mut enc, &x, &y, n, 3.0).unwrap();
    enc.submit();
    let d = gpu.counters().delta(&c0);
    assert_eq!(
        (
            d.dispatches,
            d.submits,
            d.bind_groups_created,
            d.blocking_reads
        ),
        (2, 1, 1, 0),
        "{d:?}"
    );
    assert!(d.params_bytes >= 2 * 16, "{d:?}");
    assert_eq!(d.params_bytes % 2, 0, "{d:?}");

    let c1 = gpu.counters();
    let mut enc = gpu.encoder();
    add_fwd(&mut enc, &x, &y, n, -1.0).unwrap();
    enc.copy(&y, 0, &x, 0, 8);
    enc.clear(&x);
    enc.submit();
    let d = gpu.counters().delta(&c1);
    assert_eq!(
        (
            d.dispatches,
            d.submits,
            d.bind_groups_created,
            d.copies,
            d.clears
        ),
        (1, 1, 0, 1, 1),
        "{d:?}"
    );
    // y = 0.5 + 2 + 3 - 1
    assert!(gpu
        .read_blocking::<f32>(&y)
        .unwrap()
        .iter()
        .all(|&v| v == 4.5));
    assert!(gpu
        .read_blocking::<f32>(&x)
        .unwrap()
        .iter()
        .all(|&v| v == 0.0));

    let z = gpu.upload("z", &vec![1.0f32; n]).unwrap();
    let c2 = gpu.counters();
    let mut enc = gpu.encoder();
    add_fwd(&mut enc, &z, &y, n, 1.0).unwrap();
    enc.submit();
    let d = gpu.counters().delta(&c2);
    assert_eq!(d.bind_groups_created, 1, "a new buffer: {d:?}");
    assert!(gpu
        .read_blocking::<f32>(&y)
        .unwrap()
        .iter()
        .all(|&v| v == 5.5));
}

/// Buffer ids are shared by clones and never reused, even after a buffer drops.
#[test]
fn runtime_buffer_ids_are_never_reused() {
    let Some(gpu) = gpu() else { return };
    let a = gpu.alloc("a", 16).unwrap();
    assert_eq!(a.id(), a.clone().id());
    let id = a.id();
    drop(a);
    for _ in 0..4 {
        assert_ne!(gpu.alloc("b", 16).unwrap().id(), id);
    }
}

/// More dispatches than one params arena chunk holds, each with its own params, in one encoder:
/// every dispatch reads its own slot.
#[test]
fn runtime_params_arena_spills_into_more_chunks() {
    let Some(gpu) = own_gpu(false) else { return };
    let n = 64;
    let x = gpu.upload("x", &vec![1.0f32; n]).unwrap();
    let y = gpu.alloc("y", 4 * n as u64).unwrap();
    // The slot size is what one dispatch uploads.
    let c0 = gpu.counters();
    let mut enc = gpu.encoder();
    add_fwd(&mut enc, &x, &y, n, 1.0).unwrap();
    enc.submit();
    let stride = gpu.counters().delta(&c0).params_bytes;
    let count = (tinytune::gpu::device::ARENA_CHUNK / stride) as usize + 5;
    let c1 = gpu.counters();
    let mut enc = gpu.encoder();
    let mut want = 1.0f32;
    for i in 0..count {
        let alpha = (i % 3) as f32 + 1.0;
        want += alpha;
        add_fwd(&mut enc, &x, &y, n, alpha).unwrap();
    }
    enc.submit();
    let d = gpu.counters().delta(&c1);
    assert_eq!(
        (d.dispatches, d.submits, d.bind_groups_created),
        (count as u64, 1, 1),
        "one more bind group for the second chunk: {d:?}"
    );
    assert_eq!(d.params_bytes, count as u64 * stride);
    let got = gpu.read_blocking::<f32>(&y).unwrap();
    assert!(got.iter().all(|&v| v == want), "{} != {want}", got[0]);
}

/// Encoders submitted from several threads at once each see their own params (the arena write
/// and the submit are one step).
#[test]
fn runtime_concurrent_encoders_keep_their_params() {
    let Some(gpu) = own_gpu(false) else { return };
    let n = 256;
    let x = gpu.upload("x", &vec![1.0f32; n]).unwrap();
    std::thread::scope(|s| {
        for t in 0..3 {
            let (gpu, x) = (&gpu, &x);
            s.spawn(move || {
                let y = gpu.alloc("y", 4 * n as u64).unwrap();
                for _ in 0..40 {
                    let mut enc = gpu.encoder();
                    add_fwd(&mut enc, x, &y, n, t as f32 + 1.0).unwrap();
                    enc.submit();
                }
                let got = gpu.read_blocking::<f32>(&y).unwrap();
                let want = 40.0 * (t as f32 + 1.0);
                assert!(
                    got.iter().all(|&v| v == want),
                    "thread {t}: {} != {want}",
                    got[0]
                );
            });
        }
    });
}

/// `read_later` + `wait` is one blocking read; `try_take` never counts one, returns nothing
/// before the submit and the data once they are there; ranges are checked.
#[test]
fn runtime_read_later_blocks_only_in_wait() {
    let Some(gpu) = own_gpu(false) else { return };
    let data: Vec<f32> = (0..100).map(|i| i as f32).collect();
    let b = gpu.upload("data", &data).unwrap();
    let c0 = gpu.counters();
    let mut enc = gpu.encoder();
    let mut pending = enc.read_later(&b, 8..400).unwrap();
    assert_eq!(pending.try_take().unwrap(), None, "not submitted yet");
    enc.submit();
    let start = std::time::Instant::now();
    let got = loop {
        if let Some(bytes) = pending.try_take().unwrap() {
            break bytes;
        }
        assert!(start.elapsed().as_secs() < 60, "read never arrived");
        std::thread::sleep(std::time::Duration::from_millis(1));
    };
    assert_eq!(tinytune::gpu::cast_bytes::<f32>(&got), &data[2..]);
    assert!(pending.try_take().is_err(), "taken twice");
    let d = gpu.counters().delta(&c0);
    assert_eq!((d.blocking_reads, d.copies, d.submits), (0, 1, 1), "{d:?}");

    let c1 = gpu.counters();
    let mut enc = gpu.encoder();
    let p = enc.read_later(&b, 0..6).unwrap();
    enc.submit();
    let bytes = p.wait().unwrap();
    assert_eq!(bytes, bytemuck::cast_slice::<f32, u8>(&data)[..6]);
    assert_eq!(gpu.read_blocking::<f32>(&b).unwrap(), data);
    let d = gpu.counters().delta(&c1);
    assert_eq!(d.blocking_reads, 2, "{d:?}");

    let mut enc = gpu.encoder();
    for bad in [2..8, 0..404, 8..4] {
        match enc.read_later(&b, bad.clone()) {
            Err(GpuError::Readback { label, .. }) => assert_eq!(label, "data"),
            Err(e) => panic!("{bad:?}: wrong error {e}"),
            Ok(_) => panic!("{bad:?} accepted"),
        }
    }
    let empty = enc.read_later(&b, 4..4).unwrap();
    let unsent = enc.read_later(&b, 0..4).unwrap();
    drop(enc);
    assert_eq!(empty.wait().unwrap(), Vec::<u8>::new());
    assert!(unsent.wait().is_err(), "encoder dropped unsubmitted");
}

/// With `check_dispatch` every dispatch is submitted on its own; a wrong number of buffers is a
/// typed error naming the kernel either way.
#[test]
fn runtime_check_dispatch_submits_each_dispatch() {
    let Some(gpu) = own_gpu(true) else { return };
    assert!(gpu.checks_dispatches());
    let n = 100;
    let x = gpu.upload("x", &vec![1.0f32; n]).unwrap();
    let y = gpu.alloc("y", 4 * n as u64).unwrap();
    let c0 = gpu.counters();
    let mut enc = gpu.encoder();
    add_fwd(&mut enc, &x, &y, n, 2.0).unwrap();
    add_fwd(&mut enc, &x, &y, n, 3.0).unwrap();
    enc.submit();
    let d = gpu.counters().delta(&c0);
    assert_eq!((d.dispatches, d.submits), (2, 3), "{d:?}");
    assert!(gpu
        .read_blocking::<f32>(&y)
        .unwrap()
        .iter()
        .all(|&v| v == 5.0));

    let kern = gpu.kernel("nn/add_fwd", "main", &[]).unwrap();
    let p = tinytune::gpu::params::AddParams {
        n: n as u32,
        alpha: 1.0,
        ..Default::default()
    };
    let mut enc = gpu.encoder();
    match enc.dispatch(&kern, &p, &[&x], [1, 1, 1]) {
        Err(GpuError::Pipeline { kernel, .. }) => assert_eq!(kernel, "nn/add_fwd"),
        Err(e) => panic!("wrong error: {e}"),
        Ok(()) => panic!("one buffer for two bindings accepted"),
    }
}
