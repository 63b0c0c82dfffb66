//! Host data uploaded in command order: `Encoder::upload` stages bytes for a buffer and records
//! the copy into it at that point of the command stream, so that several uploads to the same
//! buffer inside one submission each reach the kernels recorded after them (a plain
//! `queue.write_buffer` runs before the whole submission, so the last write would win).
//!
//! The staged bytes go to the device in one `queue.write_buffer` per staging buffer when the
//! encoder is submitted, just before its command buffer. Each encoder has its own staging
//! buffers (64 KiB or more, usually one per encoder). Sharing a pool of them between encoders
//! relying on the queue's order of `write_buffer` and submissions was tried and gave stale inputs
//! on lavapipe (tests/model_backward.rs, tests/prefix_tuning.rs): reusing a staging buffer needs
//! its submission to be known complete first, which is left to the runtime's own buffer pool.

/// Smallest staging buffer (bytes).
const MIN_STAGING: u64 = 64 << 10;

/// What one encoder has staged: per staging buffer in use, the buffer and its bytes.
#[derive(Default)]
pub(crate) struct Staged {
    parts: Vec<(wgpu::Buffer, Vec<u8>)>,
}

impl Staged {
    /// Stages `bytes` (zero-padded to a multiple of 4): returns the staging buffer, the offset
    /// and the padded length the caller records its copy from.
    pub(crate) fn stage(
        &mut self,
        device: &wgpu::Device,
        bytes: &[u8],
    ) -> (wgpu::Buffer, u64, u64) {
        let len = bytes.len().div_ceil(4) * 4;
        let fits = |part: &(wgpu::Buffer, Vec<u8>)| (part.1.len() + len) as u64 <= part.0.size();
        if !self.parts.last().is_some_and(fits) {
            let buf = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("upload.staging"),
                size: (len as u64).max(MIN_STAGING).next_power_of_two(),
                usage: wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            self.parts.push((buf, Vec::new()));
        }
        let (buf, host) = self.parts.last_mut().expect("a staging buffer");
        let at = host.len();
        host.extend_from_slice(bytes);
        host.resize(at + len, 0);
        (buf.clone(), at as u64, len as u64)
    }

    /// Writes every staged byte to its staging buffer (just before the encoder's submission).
    pub(crate) fn flush(&mut self, queue: &wgpu::Queue) {
        for (buf, bytes) in self.parts.drain(..) {
            if !bytes.is_empty() {
                queue.write_buffer(&buf, 0, &bytes);
            }
        }
    }
}
