//! Whether the WebGPU device still works: lost (wgpu's device-lost callback, which the web backend
//! hooks to `GPUDevice.lost`) or reporting uncaptured errors (on the web, error scopes resolve
//! too late to be used, so validation and out-of-memory errors land in [`Gpu::uncaptured_errors`]
//! and surface at the next readback). Plain Rust over [`Gpu`], so it is tested natively.

use std::sync::{Arc, Mutex};

use tinytune_gpu::{wgpu, Gpu};

/// What to do once the device failed: the page offers to reload.
pub const WHAT_TO_DO: &str = "Reload the page; then use a smaller batch_size or seq_len, or a \
                              smaller model";

/// Watches one device from [`DeviceHealth::watch`] on.
#[derive(Clone, Default)]
pub struct DeviceHealth {
    lost: Arc<Mutex<Option<String>>>,
}

impl DeviceHealth {
    /// Installs the device-lost callback on `gpu`'s device.
    pub fn watch(gpu: &Gpu) -> DeviceHealth {
        let h = DeviceHealth::default();
        let lost = h.lost.clone();
        gpu.device.set_device_lost_callback(move |reason, message| {
            if let Ok(mut l) = lost.lock() {
                let reason = match reason {
                    wgpu::DeviceLostReason::Destroyed => "destroyed",
                    _ => "unknown reason",
                };
                l.get_or_insert(if message.is_empty() {
                    reason.to_string()
                } else {
                    format!("{reason}: {message}")
                });
            }
        });
        h
    }

    /// Why the device was lost, if it was.
    pub fn lost(&self) -> Option<String> {
        self.lost.lock().ok().and_then(|l| l.clone())
    }

    /// `Err` with one message saying what happened and what to do once the device was lost or
    /// reported an error; after that every GPU call would fail or compute garbage.
    pub fn check(&self, gpu: &Gpu) -> Result<(), String> {
        if let Some(why) = self.lost() {
            return Err(format!("The GPU device was lost ({why}). {WHAT_TO_DO}."));
        }
        let errs = gpu.uncaptured_errors();
        if let Some(first) = errs.first() {
            let more = match errs.len() {
                1 => String::new(),
                n => format!(" (and {} more)", n - 1),
            };
            return Err(format!(
                "The GPU reported an error: {}{more}. {WHAT_TO_DO}.",
                first.trim_end().trim_end_matches('.')
            ));
        }
        Ok(())
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;
    use tinytune_gpu::GpuOptions;

    fn gpu() -> Option<Gpu> {
        match Gpu::new_blocking(GpuOptions::default()) {
            Ok(g) => Some(g),
            Err(e) => {
                eprintln!("no GPU adapter, skipped: {e}");
                None
            }
        }
    }

    #[test]
    fn a_lost_device_says_reload() {
        let Some(g) = gpu() else { return };
        let h = DeviceHealth::watch(&g);
        assert_eq!(h.check(&g), Ok(()));
        assert_eq!(h.lost(), None);
        g.device.destroy();
        // Native wgpu calls the callback from poll once the queue is idle.
        let _ = g.device.poll(wgpu::PollType::wait_indefinitely());
        assert_eq!(h.lost().as_deref(), Some("destroyed"));
        let e = h.check(&g).unwrap_err();
        assert!(
            e.starts_with("The GPU device was lost (destroyed). Reload the page"),
            "{e}"
        );
        assert!(e.contains("smaller batch_size or seq_len"), "{e}");
    }

    #[test]
    fn uncaptured_errors_fail_every_later_check() {
        let Some(g) = gpu() else { return };
        let h = DeviceHealth::watch(&g);
        // No error scope: a buffer both mappable for reading and a storage buffer is invalid
        // and goes to the uncaptured-error handler, as every error does in a browser.
        let _bad = g.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("invalid"),
            size: 16,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        // `sync` returns it once (what a readback in train or generate reports) ...
        assert!(g.sync().is_err());
        assert!(g.sync().is_ok());
        // ... and the health check keeps saying so.
        for _ in 0..2 {
            let e = h.check(&g).unwrap_err();
            assert!(e.starts_with("The GPU reported an error: "), "{e}");
            assert!(
                e.contains("invalid") && e.contains("Reload the page"),
                "{e}"
            );
        }
        assert_eq!(h.lost(), None);
    }
}
