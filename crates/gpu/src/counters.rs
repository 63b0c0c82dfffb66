//! What the runtime asked of the device: submits, dispatches, copies, clears, blocking reads,
//! bind groups created and uniform bytes written, counted since the device was opened.
//!
//! [`crate::Gpu::counters`] takes a snapshot; [`GpuCounters::delta`] of two snapshots is what
//! happened between them (a benchmark's work per training step, or what a test asserts a step
//! costs). The counts are of calls recorded on the host, not of work the device finished. (This
//! file does not import `device.rs`: `Gpu::counters` lives there, so the two files form no import
//! circle.)

use std::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of a device's counters (see [`crate::Gpu::counters`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GpuCounters {
    /// Command buffers submitted to the queue (by [`crate::Encoder::submit`] and readbacks).
    pub submits: u64,
    /// Compute dispatches recorded (dispatches of zero workgroups are skipped, not counted).
    pub dispatches: u64,
    /// Buffer-to-buffer copies recorded with [`crate::Encoder::copy`] and [`crate::Encoder::upload`].
    pub copies: u64,
    /// Buffer clears recorded with [`crate::Encoder::clear`].
    pub clears: u64,
    /// Readbacks that waited for the device ([`crate::Gpu::read`], [`crate::Gpu::read_bytes`],
    /// `Gpu::read_blocking`); [`crate::Gpu::sync`] is not a read and is not counted.
    pub blocking_reads: u64,
    /// Bind groups created for dispatches.
    pub bind_groups_created: u64,
    /// Bytes of uniform `Params` written for dispatches.
    pub params_bytes: u64,
}

impl GpuCounters {
    /// What happened between `earlier` and `self` (field by field, saturating at 0).
    pub fn delta(&self, earlier: &GpuCounters) -> GpuCounters {
        GpuCounters {
            submits: self.submits.saturating_sub(earlier.submits),
            dispatches: self.dispatches.saturating_sub(earlier.dispatches),
            copies: self.copies.saturating_sub(earlier.copies),
            clears: self.clears.saturating_sub(earlier.clears),
            blocking_reads: self.blocking_reads.saturating_sub(earlier.blocking_reads),
            bind_groups_created: self
                .bind_groups_created
                .saturating_sub(earlier.bind_groups_created),
            params_bytes: self.params_bytes.saturating_sub(earlier.params_bytes),
        }
    }
}

/// The live counters one [`crate::Gpu`] holds (atomics: the runtime records through `&Gpu`).
#[derive(Debug, Default)]
pub struct Counters {
    submits: AtomicU64,
    dispatches: AtomicU64,
    copies: AtomicU64,
    clears: AtomicU64,
    blocking_reads: AtomicU64,
    bind_groups_created: AtomicU64,
    params_bytes: AtomicU64,
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

impl Counters {
    /// One queue submit.
    pub(crate) fn submit(&self) {
        bump(&self.submits, 1);
    }

    /// One dispatch with its new bind group and `params_bytes` bytes of uniform params.
    pub(crate) fn dispatch(&self, params_bytes: u64) {
        bump(&self.dispatches, 1);
        bump(&self.bind_groups_created, 1);
        bump(&self.params_bytes, params_bytes);
    }

    /// One buffer copy.
    pub(crate) fn copy(&self) {
        bump(&self.copies, 1);
    }

    /// One buffer clear.
    pub(crate) fn clear(&self) {
        bump(&self.clears, 1);
    }

    /// One readback that waits for the device.
    pub(crate) fn blocking_read(&self) {
        bump(&self.blocking_reads, 1);
    }

    /// The current values.
    pub fn snapshot(&self) -> GpuCounters {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        GpuCounters {
            submits: get(&self.submits),
            dispatches: get(&self.dispatches),
            copies: get(&self.copies),
            clears: get(&self.clears),
            blocking_reads: get(&self.blocking_reads),
            bind_groups_created: get(&self.bind_groups_created),
            params_bytes: get(&self.params_bytes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delta_counts_between_snapshots() {
        let c = Counters::default();
        c.submit();
        c.dispatch(16);
        let a = c.snapshot();
        c.dispatch(32);
        c.copy();
        c.clear();
        c.blocking_read();
        c.submit();
        let d = c.snapshot().delta(&a);
        assert_eq!(
            d,
            GpuCounters {
                submits: 1,
                dispatches: 1,
                copies: 1,
                clears: 1,
                blocking_reads: 1,
                bind_groups_created: 1,
                params_bytes: 32,
            }
        );
        assert_eq!(a.delta(&c.snapshot()), GpuCounters::default());
    }
}
