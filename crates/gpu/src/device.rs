//! Device creation, buffers, the pipeline cache, dispatch and readback.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::counters::Counters;
use crate::error::{GpuError, Result};
use crate::params::KernelParams;
use crate::shaders;

/// Options for opening a device. `Default` honours `WGPU_BACKEND` and `WGPU_ADAPTER_NAME`.
#[derive(Clone, Debug, Default)]
pub struct GpuOptions {
    /// Substring (case-insensitive) of the adapter name to pick; `None` reads `WGPU_ADAPTER_NAME`.
    pub adapter_name: Option<String>,
}

/// Description of the chosen adapter, for `tinytune info` and benchmark tables.
#[derive(Clone, Debug)]
pub struct AdapterSummary {
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
    pub driver_info: String,
}

impl std::fmt::Display for AdapterSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}, {}", self.name, self.backend, self.device_type)?;
        if !self.driver.is_empty() {
            write!(f, ", {} {}", self.driver, self.driver_info)?;
        }
        write!(f, ")")
    }
}

fn summarize(info: &wgpu::AdapterInfo) -> AdapterSummary {
    AdapterSummary {
        name: info.name.clone(),
        backend: format!("{:?}", info.backend),
        device_type: format!("{:?}", info.device_type),
        driver: info.driver.clone(),
        driver_info: info.driver_info.clone(),
    }
}

type PipelineKey = (&'static str, &'static str, Vec<(String, u64)>);

/// A compute pipeline and the bind group layout wgpu derived from its WGSL (`layout: None`).
#[derive(Clone)]
pub struct Kernel {
    pub name: &'static str,
    pub entry: &'static str,
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
}

/// A storage buffer on the device. Sizes are in bytes; `len` is the logical length in bytes
/// before rounding up to the 4-byte granularity storage buffers need. Cloning clones the handle
/// (the same device memory).
#[derive(Clone)]
pub struct GpuBuffer {
    pub label: String,
    pub raw: wgpu::Buffer,
    pub len: u64,
    /// Counts the buffer in [`Gpu::memory`] until its last clone drops.
    _tracked: Arc<Tracked>,
}

impl GpuBuffer {
    /// The bytes this buffer takes in [`Gpu::memory`] (`len` rounded up to 4, at least 4).
    pub fn device_bytes(&self) -> u64 {
        self._tracked.bytes
    }
}

/// Bytes of storage buffers alive, and the most ever alive, on one device.
#[derive(Default)]
struct MemoryCounter {
    live: AtomicU64,
    peak: AtomicU64,
}

/// One buffer's share of a [`MemoryCounter`], given back on drop.
struct Tracked {
    bytes: u64,
    counter: Arc<MemoryCounter>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.counter.live.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// What [`Gpu::memory`] reports: the storage buffers tinytune allocated (model weights,
/// activations, adapters, optimizer state), not the driver's own memory or staging buffers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Bytes of buffers alive now.
    pub live_bytes: u64,
    /// Most bytes alive at once since the device was opened (or [`Gpu::reset_peak_memory`]).
    pub peak_bytes: u64,
}

impl GpuBuffer {
    /// Number of 4-byte words the buffer holds.
    pub fn words(&self) -> u64 {
        self.raw.size() / 4
    }
}

/// An open device with its queue, limits and pipeline cache.
pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub adapter: AdapterSummary,
    pub features: wgpu::Features,
    pub limits: wgpu::Limits,
    pipelines: Mutex<HashMap<PipelineKey, Kernel>>,
    uncaptured: Arc<Mutex<Vec<String>>>,
    /// How many of `uncaptured` `sync` / reads have already returned.
    uncaptured_reported: AtomicU64,
    memory: Arc<MemoryCounter>,
    /// Submits, dispatches, copies, clears and blocking reads ([`Gpu::counters`]).
    pub(crate) counters: Counters,
}

impl Gpu {
    /// Opens the best adapter (or the one named by `WGPU_ADAPTER_NAME`) with its own maximum limits.
    pub async fn new(opts: GpuOptions) -> Result<Gpu> {
        let instance = create_instance();
        let adapter = pick_adapter(&instance, &opts).await?;
        let info = adapter.get_info();
        let available = adapter.features();
        let wanted = wgpu::Features::SHADER_F16 | wgpu::Features::SUBGROUP;
        let features = available & wanted;
        // The adapter's own maxima, not WebGPU's defaults: model tensors need large bindings.
        let limits = adapter.limits();
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("tinytune"),
                required_features: features,
                required_limits: limits.clone(),
                experimental_features: wgpu::ExperimentalFeatures::disabled(),
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .map_err(|e| GpuError::RequestDevice {
                adapter: info.name.clone(),
                message: e.to_string(),
            })?;
        let uncaptured = Arc::new(Mutex::new(Vec::new()));
        let sink = uncaptured.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            if let Ok(mut v) = sink.lock() {
                v.push(e.to_string());
            }
        }));
        let limits = device.limits();
        Ok(Gpu {
            device,
            queue,
            adapter: summarize(&info),
            features,
            limits,
            pipelines: Mutex::new(HashMap::new()),
            uncaptured,
            uncaptured_reported: AtomicU64::new(0),
            memory: Arc::new(MemoryCounter::default()),
            counters: Counters::default(),
        })
    }

    /// Native convenience: open a device, blocking.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new_blocking(opts: GpuOptions) -> Result<Gpu> {
        pollster::block_on(Gpu::new(opts))
    }

    /// The largest buffer one storage binding may hold.
    pub fn max_binding(&self) -> u64 {
        self.limits
            .max_storage_buffer_binding_size
            .min(self.limits.max_buffer_size)
    }

    fn check_size(&self, label: &str, bytes: u64, size: u64) -> Result<()> {
        if size > self.limits.max_buffer_size {
            return Err(GpuError::BufferTooLarge {
                label: label.into(),
                bytes,
                limit: self.limits.max_buffer_size,
                what: "buffer",
            });
        }
        if size > self.limits.max_storage_buffer_binding_size {
            return Err(GpuError::BufferTooLarge {
                label: label.into(),
                bytes,
                limit: self.limits.max_storage_buffer_binding_size,
                what: "storage binding",
            });
        }
        Ok(())
    }

    /// A zero-filled storage buffer of `bytes` bytes (rounded up to a multiple of 4, at least 4).
    pub fn alloc(&self, label: &str, bytes: u64) -> Result<GpuBuffer> {
        let size = bytes.max(4).div_ceil(4) * 4;
        self.check_size(label, bytes, size)?;
        let scope = ErrorScope::push(&self.device);
        let raw = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        if let Some(message) = scope.pop() {
            return Err(GpuError::OutOfMemory {
                label: label.into(),
                bytes: size,
                message,
            });
        }
        let counter = self.memory.clone();
        let live = counter.live.fetch_add(size, Ordering::Relaxed) + size;
        counter.peak.fetch_max(live, Ordering::Relaxed);
        Ok(GpuBuffer {
            label: label.into(),
            raw,
            len: bytes,
            _tracked: Arc::new(Tracked {
                bytes: size,
                counter,
            }),
        })
    }

    /// Device memory in tinytune's storage buffers: alive now and at most so far.
    pub fn memory(&self) -> MemoryStats {
        MemoryStats {
            live_bytes: self.memory.live.load(Ordering::Relaxed),
            peak_bytes: self.memory.peak.load(Ordering::Relaxed),
        }
    }

    /// What the runtime has asked of the device since it was opened (a snapshot; take two and
    /// [`crate::GpuCounters::delta`] them to count a step).
    pub fn counters(&self) -> crate::counters::GpuCounters {
        self.counters.snapshot()
    }

    /// Starts a new peak: [`MemoryStats::peak_bytes`] becomes the bytes alive now.
    pub fn reset_peak_memory(&self) {
        let live = self.memory.live.load(Ordering::Relaxed);
        self.memory.peak.store(live, Ordering::Relaxed);
    }

    /// Uploads plain data (f32, u32, u8 ...) into a new storage buffer.
    pub fn upload<T: bytemuck::Pod>(&self, label: &str, data: &[T]) -> Result<GpuBuffer> {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        let buf = self.alloc(label, bytes.len() as u64)?;
        self.write(&buf, 0, bytes);
        Ok(buf)
    }

    /// Writes bytes at `offset` (multiple of 4); a tail shorter than 4 bytes is zero-padded.
    pub fn write(&self, buf: &GpuBuffer, offset: u64, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if bytes.len().is_multiple_of(4) {
            self.queue.write_buffer(&buf.raw, offset, bytes);
        } else {
            let mut padded = bytes.to_vec();
            padded.resize(bytes.len().div_ceil(4) * 4, 0);
            self.queue.write_buffer(&buf.raw, offset, &padded);
        }
    }

    /// Starts recording kernels; nothing runs until [`Encoder::submit`].
    pub fn encoder(&self) -> Encoder<'_> {
        Encoder {
            gpu: self,
            staged: Default::default(),
            enc: self
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("tinytune"),
                }),
        }
    }

    /// Gets (compiling once) the pipeline of `kernel`'s `entry` specialised with `constants`.
    pub fn kernel(
        &self,
        kernel: &'static str,
        entry: &'static str,
        constants: &[(&str, f64)],
    ) -> Result<Kernel> {
        let key: PipelineKey = (
            kernel,
            entry,
            constants
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_bits()))
                .collect(),
        );
        if let Some(k) = self
            .pipelines
            .lock()
            .expect("pipeline cache poisoned")
            .get(&key)
        {
            return Ok(k.clone());
        }
        let shader = shaders::get(kernel).ok_or_else(|| GpuError::UnknownShader(kernel.into()))?;
        let fail = |message: String| GpuError::Pipeline {
            kernel: kernel.into(),
            entry: entry.into(),
            message,
        };
        let scope = ErrorScope::push(&self.device);
        let module = self
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(kernel),
                source: wgpu::ShaderSource::Wgsl(shader.source.into()),
            });
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(kernel),
                layout: None,
                module: &module,
                entry_point: Some(entry),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants,
                    zero_initialize_workgroup_memory: true,
                },
                cache: None,
            });
        if let Some(message) = scope.pop() {
            return Err(fail(message));
        }
        let layout = pipeline.get_bind_group_layout(0);
        let k = Kernel {
            name: kernel,
            entry,
            pipeline,
            layout,
        };
        self.pipelines
            .lock()
            .expect("pipeline cache poisoned")
            .insert(key, k.clone());
        Ok(k)
    }

    /// Waits until all submitted work is done (native; a no-op on the web).
    pub fn sync(&self) -> Result<()> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| GpuError::Device(e.to_string()))?;
        self.take_uncaptured()
    }

    fn take_uncaptured(&self) -> Result<()> {
        let errs = self.uncaptured.lock().expect("error sink poisoned");
        let seen = self
            .uncaptured_reported
            .swap(errs.len() as u64, Ordering::Relaxed) as usize;
        match errs.get(seen..) {
            Some(new) if !new.is_empty() => Err(GpuError::Device(new.join("; "))),
            _ => Ok(()),
        }
    }

    /// Every error the device reported outside an error scope since it was opened, including
    /// those [`Gpu::sync`] and reads already returned. In a browser this is where validation and
    /// out-of-memory errors land (error scopes there resolve too late to be used).
    pub fn uncaptured_errors(&self) -> Vec<String> {
        self.uncaptured.lock().expect("error sink poisoned").clone()
    }

    /// Copies a buffer back to the host. The only async point of the runtime.
    pub async fn read_bytes(&self, buf: &GpuBuffer) -> Result<Vec<u8>> {
        let size = buf.raw.size();
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("readback"),
            });
        enc.copy_buffer_to_buffer(&buf.raw, 0, &staging, 0, size);
        self.queue.submit([enc.finish()]);
        self.counters.submit();
        self.counters.blocking_read();
        let (tx, rx) = futures_channel::oneshot::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| GpuError::Readback {
                label: buf.label.clone(),
                message: e.to_string(),
            })?;
        let mapped = rx.await.map_err(|e| GpuError::Readback {
            label: buf.label.clone(),
            message: e.to_string(),
        })?;
        mapped.map_err(|e| GpuError::Readback {
            label: buf.label.clone(),
            message: e.to_string(),
        })?;
        self.take_uncaptured()?;
        let view = staging
            .get_mapped_range(..)
            .map_err(|e| GpuError::Readback {
                label: buf.label.clone(),
                message: e.to_string(),
            })?;
        let mut out = view.to_vec();
        drop(view);
        staging.unmap();
        out.truncate(buf.len as usize);
        Ok(out)
    }

    /// Reads a buffer as `T` values (the buffer's logical length must be a multiple of `size_of::<T>()`).
    pub async fn read<T: bytemuck::Pod>(&self, buf: &GpuBuffer) -> Result<Vec<T>> {
        let bytes = self.read_bytes(buf).await?;
        let n = bytes.len() / std::mem::size_of::<T>();
        let mut out = vec![T::zeroed(); n];
        bytemuck::cast_slice_mut::<T, u8>(&mut out)
            .copy_from_slice(&bytes[..n * std::mem::size_of::<T>()]);
        Ok(out)
    }

    /// Native convenience: blocking [`Gpu::read`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_blocking<T: bytemuck::Pod>(&self, buf: &GpuBuffer) -> Result<Vec<T>> {
        pollster::block_on(self.read(buf))
    }
}

/// Records kernel launches into one command buffer.
pub struct Encoder<'g> {
    pub gpu: &'g Gpu,
    enc: wgpu::CommandEncoder,
    /// Bytes of [`Encoder::upload`], written just before the submission.
    pub(crate) staged: crate::upload::Staged,
}

impl<'g> Encoder<'g> {
    /// Records one dispatch. Binding 0 is the uniform `params`, the kernel's WGSL `struct Params`
    /// ([`crate::params`]); bindings 1.. are `buffers` in order, matching the WGSL file's
    /// declarations. Fails if `P` is not the params struct of `kernel`.
    pub fn dispatch<P: KernelParams>(
        &mut self,
        kernel: &Kernel,
        params: &P,
        buffers: &[&GpuBuffer],
        groups: [u32; 3],
    ) -> Result<()> {
        if !P::KERNELS.contains(&kernel.name) {
            return Err(GpuError::Pipeline {
                kernel: kernel.name.into(),
                entry: kernel.entry.into(),
                message: format!(
                    "params {} are for {:?}",
                    std::any::type_name::<P>(),
                    P::KERNELS
                ),
            });
        }
        let max = self.gpu.limits.max_compute_workgroups_per_dimension;
        if groups.iter().any(|&g| g > max) {
            let total = groups.iter().map(|&g| g as u64).product();
            return Err(GpuError::DispatchTooLarge {
                kernel: kernel.name.into(),
                groups: total,
                limit: max as u64,
            });
        }
        if groups.contains(&0) {
            return Ok(());
        }
        let uniform = wgpu::util::DeviceExt::create_buffer_init(
            &self.gpu.device,
            &wgpu::util::BufferInitDescriptor {
                label: Some("params"),
                contents: bytemuck::bytes_of(params),
                usage: wgpu::BufferUsages::UNIFORM,
            },
        );
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: uniform.as_entire_binding(),
        }];
        for (i, b) in buffers.iter().enumerate() {
            entries.push(wgpu::BindGroupEntry {
                binding: i as u32 + 1,
                resource: b.raw.as_entire_binding(),
            });
        }
        let scope = ErrorScope::push(&self.gpu.device);
        let bind = self
            .gpu
            .device
            .create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(kernel.name),
                layout: &kernel.layout,
                entries: &entries,
            });
        if let Some(message) = scope.pop() {
            return Err(GpuError::Pipeline {
                kernel: kernel.name.into(),
                entry: kernel.entry.into(),
                message: format!("binding {} buffers: {message}", buffers.len()),
            });
        }
        let mut pass = self.enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some(kernel.name),
            timestamp_writes: None,
        });
        pass.set_pipeline(&kernel.pipeline);
        pass.set_bind_group(0, &bind, &[]);
        pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
        self.gpu.counters.dispatch(std::mem::size_of::<P>() as u64);
        Ok(())
    }

    /// Copies `bytes` bytes between buffers (offsets and size multiples of 4).
    pub fn copy(
        &mut self,
        src: &GpuBuffer,
        src_off: u64,
        dst: &GpuBuffer,
        dst_off: u64,
        bytes: u64,
    ) {
        self.enc
            .copy_buffer_to_buffer(&src.raw, src_off, &dst.raw, dst_off, bytes);
        self.gpu.counters.copy();
    }

    /// Records writing `bytes` into `dst` at `dst_off` (a multiple of 4) here in the command
    /// stream: kernels recorded before it still see the old contents, those after it the new ones
    /// (a plain [`Gpu::write`] lands before the whole submission). A tail shorter than 4 bytes is
    /// zero-padded. The bytes reach the device with the submission ([`crate::upload`]).
    pub fn upload(&mut self, dst: &GpuBuffer, dst_off: u64, bytes: &[u8]) -> Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        let (src, at, len) = self.staged.stage(&self.gpu.device, bytes);
        if dst_off + len > dst.len {
            return Err(GpuError::Shape {
                kernel: "upload".into(),
                message: format!(
                    "{len} bytes at {dst_off} overflow buffer {:?} of {} bytes",
                    dst.label, dst.len
                ),
            });
        }
        self.enc
            .copy_buffer_to_buffer(&src, at, &dst.raw, dst_off, len);
        self.gpu.counters.copy();
        Ok(())
    }

    /// Zeroes a whole buffer.
    pub fn clear(&mut self, buf: &GpuBuffer) {
        self.enc.clear_buffer(&buf.raw, 0, None);
        self.gpu.counters.clear();
    }

    /// Submits everything recorded.
    pub fn submit(mut self) {
        self.staged.flush(&self.gpu.queue);
        self.gpu.queue.submit([self.enc.finish()]);
        self.gpu.counters.submit();
    }
}

/// Splits `n` workgroups over x and y so that neither exceeds the per-dimension limit.
/// Shaders recover the linear index as `wid.x + wid.y * nwg.x`.
pub fn groups_1d(gpu: &Gpu, n: u64) -> [u32; 3] {
    split_groups(n, gpu.limits.max_compute_workgroups_per_dimension as u64)
}

/// [`groups_1d`] for a given per-dimension limit: `x * y >= n`, both `<= max`, `x * y - n < y`.
pub fn split_groups(n: u64, max: u64) -> [u32; 3] {
    if n <= max {
        [n as u32, 1, 1]
    } else {
        let y = n.div_ceil(max);
        let x = n.div_ceil(y);
        [x as u32, y as u32, 1]
    }
}

/// Validation + out-of-memory + internal error scopes around device calls.
/// On native the scope resolves at once; in the browser, errors arrive through the
/// uncaptured-error handler instead and surface at the next readback or `sync`.
struct ErrorScope {
    #[cfg(not(target_arch = "wasm32"))]
    guards: [wgpu::ErrorScopeGuard; 3],
}

impl ErrorScope {
    fn push(device: &wgpu::Device) -> ErrorScope {
        #[cfg(not(target_arch = "wasm32"))]
        {
            ErrorScope {
                guards: [
                    device.push_error_scope(wgpu::ErrorFilter::Validation),
                    device.push_error_scope(wgpu::ErrorFilter::OutOfMemory),
                    device.push_error_scope(wgpu::ErrorFilter::Internal),
                ],
            }
        }
        #[cfg(target_arch = "wasm32")]
        {
            let _ = device;
            ErrorScope {}
        }
    }

    fn pop(self) -> Option<String> {
        #[cfg(not(target_arch = "wasm32"))]
        {
            let mut first = None;
            let [v, o, i] = self.guards;
            // Pop innermost first.
            for g in [i, o, v] {
                if let Some(e) = pollster::block_on(g.pop()) {
                    first.get_or_insert_with(|| e.to_string());
                }
            }
            first
        }
        #[cfg(target_arch = "wasm32")]
        {
            None
        }
    }
}

fn create_instance() -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = wgpu::Backends::from_env().unwrap_or(wgpu::Backends::all());
    wgpu::Instance::new(desc)
}

#[cfg(not(target_arch = "wasm32"))]
async fn pick_adapter(instance: &wgpu::Instance, opts: &GpuOptions) -> Result<wgpu::Adapter> {
    let backends = wgpu::Backends::from_env().unwrap_or(wgpu::Backends::all());
    let wanted = opts
        .adapter_name
        .clone()
        .or_else(|| std::env::var("WGPU_ADAPTER_NAME").ok())
        .filter(|s| !s.is_empty());
    let adapters = instance.enumerate_adapters(backends).await;
    if let Some(w) = wanted {
        let lw = w.to_lowercase();
        let found: Vec<String> = adapters.iter().map(|a| a.get_info().name).collect();
        return adapters
            .into_iter()
            .find(|a| a.get_info().name.to_lowercase().contains(&lw))
            .ok_or_else(|| GpuError::AdapterNotFound {
                wanted: w,
                found: found.join(", "),
            });
    }
    instance
        .request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            force_fallback_adapter: false,
            compatible_surface: None,
            apply_limit_buckets: false,
        })
        .await
        .map_err(|_| GpuError::NoAdapter {
            backends: format!("{backends:?}"),
        })
}

#[cfg(target_arch = "wasm32")]
async fn pick_adapter(instance: &wgpu::Instance, _opts: &GpuOptions) -> Result<wgpu::Adapter> {
    instance
        .request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            force_fallback_adapter: false,
            compatible_surface: None,
            apply_limit_buckets: false,
        })
        .await
        .map_err(|_| GpuError::NoAdapter {
            backends: "browser WebGPU".into(),
        })
}

/// Lists every adapter (native), for `tinytune info`.
#[cfg(not(target_arch = "wasm32"))]
pub fn list_adapters() -> Vec<AdapterSummary> {
    let instance = create_instance();
    let backends = wgpu::Backends::from_env().unwrap_or(wgpu::Backends::all());
    pollster::block_on(instance.enumerate_adapters(backends))
        .iter()
        .map(|a| summarize(&a.get_info()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::split_groups;

    #[test]
    fn split_groups_covers_n_within_limits() {
        for &(n, max) in &[
            (0u64, 65535u64),
            (1, 65535),
            (65535, 65535),
            (65536, 65535),
            (10_000_007, 65535),
            (1000, 40),
        ] {
            let [x, y, z] = split_groups(n, max);
            let (x, y) = (x as u64, y as u64);
            assert!(x <= max && y <= max && z == 1, "n={n}: {x}x{y}");
            assert!(x * y >= n && x * y - n < y.max(1), "n={n}: {x}x{y}");
        }
    }
}
