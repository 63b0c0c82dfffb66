//! Device creation, buffers, the pipeline cache, dispatch and readback.
//!
//! # How a dispatch is recorded
//!
//! The hot path of a training step is about 2,200 dispatches, so a dispatch allocates nothing on
//! the device and waits for nothing:
//!
//! - **Bind groups are made once.** [`Gpu::kernel`] builds each kernel's bind group layout itself
//!   ([`crate::bindings`]) with binding 0, the uniform `Params`, taking a *dynamic offset*. A
//!   bind group is keyed by the layout (kernel and entry point), the params arena chunk and the
//!   ids of the bound buffers ([`GpuBuffer::id`], never reused), and cached; a later dispatch of
//!   the same kernel on the same buffers reuses it whatever its params. When a buffer's last
//!   handle drops, its id is queued and every cached bind group naming it is dropped at the next
//!   dispatch (a bind group keeps its buffers' device memory alive, so stale entries would leak
//!   memory; ids are never reused, so they could never alias a new buffer). As a backstop the
//!   cache is emptied when it exceeds [`BIND_CACHE_MAX`] entries.
//! - **Params go to one arena per submission.** Each dispatch appends its `Params` to the
//!   encoder's host-side arena at a slot aligned to `min_uniform_buffer_offset_alignment`;
//!   [`Encoder::submit`] uploads the arena with one `queue.write_buffer` per used chunk (one for
//!   up to [`ARENA_CHUNK`] bytes) right before `queue.submit`. The chunks are persistent device
//!   buffers shared by every encoder. This is safe without double buffering because a
//!   `queue.write_buffer` is a queue-timeline operation: it takes effect after every command
//!   buffer submitted before it has executed and before the command buffers of the next submit
//!   (WebGPU's `writeBuffer`; wgpu-core stages the data and records the copy, with the barrier
//!   from the previous `UNIFORM` use, ahead of the next submission). So submission N+1's params
//!   can never overwrite what submission N is still reading. The write and the submit are made
//!   under one lock so that two threads submitting encoders cannot interleave their writes to
//!   the same slots.
//! - **One compute pass for consecutive dispatches.** Dispatches share a compute pass until a
//!   copy, clear, readback or the submit ends it. This needs no explicit barrier: in WebGPU each
//!   dispatch of a compute pass is its own usage scope, so storage writes of one dispatch are
//!   visible to the next (wgpu-core tracks usage per dispatch and inserts the barriers itself;
//!   see the comments on per-dispatch usage scopes in wgpu-core's `command/compute.rs` and
//!   gfx-rs/wgpu#2659).
//! - **Errors are checked at setup.** Pipelines and bind groups are created inside error scopes
//!   (a cache miss); a cache hit pushes no scope. `TINYTUNE_CHECK_DISPATCH=1` (or
//!   [`GpuOptions::check_dispatch`]) checks every dispatch: each is submitted on its own inside
//!   an error scope, so a failure names the kernel (slow; for debugging).
//! - **Reads need not wait.** [`Encoder::read_later`] records a copy into a pooled staging
//!   buffer and maps it after the submit; [`PendingRead::try_take`] returns the data once it is
//!   there without blocking, [`PendingRead::wait`] blocks until its own submission is done
//!   (counted in [`GpuCounters::blocking_reads`] when nothing was queued behind it, so the GPU
//!   idled while the host waited, else in [`GpuCounters::overlapped_reads`]).

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::bindings::{self, BindingKind};
use crate::error::{GpuError, Result};
use crate::kernels::{ComputeDtype, KernelInfo, KernelSet};
use crate::params::{KernelParams, PARAMS};
use crate::shaders;

/// Bytes of one params arena chunk (a uniform buffer on the device). One chunk holds 4,096
/// dispatches at a 256-byte offset alignment; an encoder with more spills into further chunks.
pub const ARENA_CHUNK: u64 = 1 << 20;

/// Most bind groups kept; past it the cache is emptied (a bound on memory should buffers be
/// created and bound in an unbounded stream; dead buffers' entries are dropped anyway).
pub const BIND_CACHE_MAX: usize = 16_384;

/// Most launcher temporaries [`Gpu::scratch`] keeps (past it the cache is emptied).
pub const SCRATCH_MAX: usize = 64;

/// Most staging buffers, and their bytes, kept for reuse by readbacks.
const STAGING_POOL_MAX: usize = 16;
const STAGING_POOL_MAX_BYTES: u64 = 64 << 20;

/// Options for opening a device. `Default` honours `WGPU_BACKEND`, `WGPU_ADAPTER_NAME` and
/// `TINYTUNE_CHECK_DISPATCH`.
#[derive(Clone, Debug, Default)]
pub struct GpuOptions {
    /// Substring (case-insensitive) of the adapter name to pick; `None` reads `WGPU_ADAPTER_NAME`.
    pub adapter_name: Option<String>,
    /// Check every dispatch inside an error scope, submitting it on its own (slow; names the
    /// failing kernel). `None` reads `TINYTUNE_CHECK_DISPATCH` (`1` turns it on).
    pub check_dispatch: Option<bool>,
    /// The kernel variant to run; `None` reads `TINYTUNE_KERNELS` (`cpu` or `gpu`), and without
    /// it chooses from the adapter ([`KernelSet::for_adapter`]).
    pub kernels: Option<KernelSet>,
    /// The frozen-weight matmuls' operand dtype; `None` reads `TINYTUNE_COMPUTE_DTYPE` (`f32` or
    /// `f16`), and without it takes [`ComputeDtype::default_for`] the device. Changeable later
    /// with [`Gpu::set_compute_dtype`].
    pub compute_dtype: Option<ComputeDtype>,
}

/// What the runtime has done since the device was opened, for tests and benchmarks. Take two
/// snapshots with [`Gpu::counters`] and subtract them with [`GpuCounters::delta`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GpuCounters {
    /// `queue.submit` calls.
    pub submits: u64,
    /// Kernel dispatches recorded (empty grids are skipped and not counted).
    pub dispatches: u64,
    /// Buffer-to-buffer copies recorded (including the copies of readbacks into staging).
    pub copies: u64,
    /// Buffer clears recorded.
    pub clears: u64,
    /// Readbacks the host waited for with no later submission queued behind them, so the GPU ran
    /// dry while the host waited ([`Gpu::read`] and its variants, [`PendingRead::wait`] on the
    /// newest submission): a stall of the pipeline.
    pub blocking_reads: u64,
    /// Readbacks the host waited for while later submissions kept the GPU busy (a report taken
    /// one step late): the host waits, the GPU does not.
    pub overlapped_reads: u64,
    /// Bind groups created (cache misses).
    pub bind_groups_created: u64,
    /// Bytes of kernel params uploaded (arena slots, alignment padding included).
    pub params_bytes: u64,
}

impl GpuCounters {
    /// What happened between `earlier` and `self` (field by field `self - earlier`).
    pub fn delta(&self, earlier: &GpuCounters) -> GpuCounters {
        GpuCounters {
            submits: self.submits.saturating_sub(earlier.submits),
            dispatches: self.dispatches.saturating_sub(earlier.dispatches),
            copies: self.copies.saturating_sub(earlier.copies),
            clears: self.clears.saturating_sub(earlier.clears),
            blocking_reads: self.blocking_reads.saturating_sub(earlier.blocking_reads),
            overlapped_reads: self
                .overlapped_reads
                .saturating_sub(earlier.overlapped_reads),
            bind_groups_created: self
                .bind_groups_created
                .saturating_sub(earlier.bind_groups_created),
            params_bytes: self.params_bytes.saturating_sub(earlier.params_bytes),
        }
    }
}

/// The atomics behind [`GpuCounters`].
#[derive(Default)]
struct Counters {
    submits: AtomicU64,
    dispatches: AtomicU64,
    copies: AtomicU64,
    clears: AtomicU64,
    blocking_reads: AtomicU64,
    overlapped_reads: AtomicU64,
    bind_groups_created: AtomicU64,
    params_bytes: AtomicU64,
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
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

/// "the adapter NAME", or "this adapter" when it has no name (browsers may withhold it).
fn adapter_phrase(name: &str) -> String {
    if name.trim().is_empty() {
        "this adapter".into()
    } else {
        format!("the adapter {name}")
    }
}

/// (kernel, entry point, override constants, f16 operands).
type PipelineKey = (&'static str, &'static str, Vec<(String, u64)>, bool);

/// A compute pipeline and the bind group layout wgpu derived from its WGSL (`layout: None`).
#[derive(Clone)]
pub struct Kernel {
    pub name: &'static str,
    pub entry: &'static str,
    pipeline: wgpu::ComputePipeline,
    layout: Arc<BindLayout>,
}

/// The bind group layout of one kernel entry point (shared by its specialisations).
struct BindLayout {
    /// Unique per layout: part of the bind group cache key.
    id: u64,
    layout: wgpu::BindGroupLayout,
    /// Storage bindings 1..=storage the entry point uses.
    storage: usize,
}

/// Cache key of a bind group: layout, params arena chunk, bound buffers in order.
#[derive(Clone, PartialEq, Eq, Hash)]
struct BindKey {
    layout: u64,
    chunk: u32,
    buffers: Vec<u64>,
}

/// Bind groups by key, and the keys each buffer appears in (to drop them with the buffer).
#[derive(Default)]
struct BindCache {
    groups: HashMap<BindKey, wgpu::BindGroup>,
    by_buffer: HashMap<u64, Vec<BindKey>>,
}

impl BindCache {
    /// Drops every bind group that names a dead buffer.
    fn purge(&mut self, dead: &[u64]) {
        for id in dead {
            for key in self.by_buffer.remove(id).unwrap_or_default() {
                self.groups.remove(&key);
                for other in &key.buffers {
                    if other != id {
                        if let Some(keys) = self.by_buffer.get_mut(other) {
                            keys.retain(|k| k != &key);
                        }
                    }
                }
            }
        }
    }

    fn insert(&mut self, key: BindKey, group: wgpu::BindGroup) {
        if self.groups.len() >= BIND_CACHE_MAX {
            self.groups.clear();
            self.by_buffer.clear();
        }
        for id in &key.buffers {
            let keys = self.by_buffer.entry(*id).or_default();
            if !keys.contains(&key) {
                keys.push(key.clone());
            }
        }
        self.groups.insert(key, group);
    }
}

/// The uniform params arena: persistent chunks of [`ARENA_CHUNK`] bytes.
struct Arena {
    /// Bytes bound per dispatch: the largest params struct.
    binding: u64,
    /// Bytes between slots: `binding` rounded up to the uniform offset alignment.
    stride: u64,
    chunks: Mutex<Vec<wgpu::Buffer>>,
    /// Held across "write the arena, submit" (see the module docs).
    submit: Mutex<()>,
}

impl Arena {
    fn new(limits: &wgpu::Limits) -> Arena {
        let binding = PARAMS
            .iter()
            .map(|l| l.size as u64)
            .max()
            .unwrap_or(16)
            .max(16);
        let align = (limits.min_uniform_buffer_offset_alignment as u64).max(16);
        Arena {
            binding,
            stride: binding.div_ceil(align) * align,
            chunks: Mutex::new(Vec::new()),
            submit: Mutex::new(()),
        }
    }

    fn slots_per_chunk(&self) -> u64 {
        ARENA_CHUNK / self.stride
    }

    /// The device buffer of chunk `i`, created on first use.
    fn chunk(&self, device: &wgpu::Device, i: usize) -> wgpu::Buffer {
        let mut chunks = self.chunks.lock().expect("params arena poisoned");
        while chunks.len() <= i {
            chunks.push(device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("params arena"),
                size: ARENA_CHUNK,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }));
        }
        chunks[i].clone()
    }
}

/// Reusable `MAP_READ` staging buffers.
#[derive(Default)]
struct StagingPool {
    free: Mutex<Vec<wgpu::Buffer>>,
}

impl StagingPool {
    /// The smallest free buffer of at least `size` bytes, or a new one (a power of two, at
    /// least 4 KiB, so that sizes recur).
    fn acquire(&self, device: &wgpu::Device, size: u64) -> wgpu::Buffer {
        let mut free = self.free.lock().expect("staging pool poisoned");
        let best = free
            .iter()
            .enumerate()
            .filter(|(_, b)| b.size() >= size)
            .min_by_key(|(_, b)| b.size())
            .map(|(i, _)| i);
        if let Some(i) = best {
            return free.swap_remove(i);
        }
        drop(free);
        device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback staging"),
            size: size.max(4096).next_power_of_two(),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    /// Keeps an unmapped, idle staging buffer for reuse, within the pool's bounds.
    fn release(&self, buf: wgpu::Buffer) {
        let mut free = self.free.lock().expect("staging pool poisoned");
        let bytes: u64 = free.iter().map(|b| b.size()).sum();
        if free.len() < STAGING_POOL_MAX && bytes + buf.size() <= STAGING_POOL_MAX_BYTES {
            free.push(buf);
        }
    }
}

/// Ids of buffers, never reused within a process.
static NEXT_BUFFER_ID: AtomicU64 = AtomicU64::new(1);
/// Ids of bind group layouts.
static NEXT_LAYOUT_ID: AtomicU64 = AtomicU64::new(1);

/// A storage buffer on the device, or a view of a range of one ([`Gpu::view`]). Sizes are in
/// bytes; `len` is the logical length in bytes before rounding up to the 4-byte granularity
/// storage buffers need. Cloning clones the handle (the same device memory). Every use of `raw`
/// goes through `offset` (bindings, copies, clears, writes and reads of a view touch its range
/// only).
#[derive(Clone)]
pub struct GpuBuffer {
    pub label: String,
    pub raw: wgpu::Buffer,
    pub len: u64,
    /// Where the buffer starts in `raw` (0 unless a view).
    pub offset: u64,
    /// Bytes of `raw` from `offset` on that the buffer covers (a binding's size).
    bound: u64,
    /// Counts the buffer in [`Gpu::memory`] until its last clone drops (a view counts nothing
    /// and keeps its parent's share alive).
    _tracked: Arc<Tracked>,
}

/// Bytes of storage buffers alive, and the most ever alive, on one device.
#[derive(Default)]
struct MemoryCounter {
    live: AtomicU64,
    peak: AtomicU64,
}

/// One buffer's share of a [`MemoryCounter`], given back on drop, and its id, queued on drop
/// so that the bind group cache lets go of it.
struct Tracked {
    id: u64,
    bytes: u64,
    counter: Arc<MemoryCounter>,
    dead: Arc<Mutex<Vec<u64>>>,
    /// A view's parent.
    _parent: Option<Arc<Tracked>>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.counter.live.fetch_sub(self.bytes, Ordering::Relaxed);
        if let Ok(mut dead) = self.dead.lock() {
            dead.push(self.id);
        }
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
        self.bound / 4
    }

    /// Whether the two share device memory (the same buffer, or overlapping views of one).
    pub fn overlaps(&self, other: &GpuBuffer) -> bool {
        self.raw == other.raw
            && self.offset < other.offset + other.bound
            && other.offset < self.offset + self.bound
    }

    /// The binding of the buffer's range.
    fn binding(&self) -> wgpu::BindingResource<'_> {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: &self.raw,
            offset: self.offset,
            size: NonZeroU64::new(self.bound),
        })
    }

    /// A process-wide unique id, shared by clones and never given to another buffer (the bind
    /// group cache's key).
    pub fn id(&self) -> u64 {
        self._tracked.id
    }

    /// The bytes this buffer takes in [`Gpu::memory`] (`len` rounded up to 4, at least 4).
    pub fn device_bytes(&self) -> u64 {
        self._tracked.bytes
    }
}

/// An open device with its queue, limits and pipeline cache.
pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub adapter: AdapterSummary,
    pub features: wgpu::Features,
    pub limits: wgpu::Limits,
    /// The kernel variant the launchers dispatch ([`GpuOptions::kernels`]).
    kernels: KernelSet,
    /// [`ComputeDtype::F16`] when set ([`Gpu::set_compute_dtype`]).
    compute_f16: std::sync::atomic::AtomicBool,
    /// The compute dtype chosen when the device was opened.
    default_compute: ComputeDtype,
    pipelines: Mutex<HashMap<PipelineKey, Kernel>>,
    uncaptured: Arc<Mutex<Vec<String>>>,
    /// How many of `uncaptured` `sync` / reads have already returned.
    uncaptured_reported: AtomicU64,
    memory: Arc<MemoryCounter>,
    /// Whether every dispatch is checked on its own ([`GpuOptions::check_dispatch`]).
    check_dispatch: bool,
    counters: Counters,
    layouts: Mutex<HashMap<(&'static str, &'static str), Arc<BindLayout>>>,
    binds: Mutex<BindCache>,
    /// Ids of dropped buffers not yet purged from `binds`.
    dead: Arc<Mutex<Vec<u64>>>,
    arena: Arena,
    staging: StagingPool,
    /// Submissions made so far (the serial of the newest one).
    submitted: AtomicU64,
    /// Launchers' temporaries by (label, bytes), see [`Gpu::scratch`].
    scratch: Mutex<HashMap<(&'static str, u64), GpuBuffer>>,
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
        let kernels = match opts.kernels {
            Some(k) => k,
            None => match std::env::var(crate::kernels::KERNELS_ENV) {
                Ok(v) if !v.trim().is_empty() => {
                    KernelSet::parse(&v).ok_or(GpuError::BadKernels(v))?
                }
                _ => KernelSet::for_adapter(info.device_type, &info.name, &info.driver),
            },
        };
        let has_f16 = features.contains(wgpu::Features::SHADER_F16);
        let compute = match opts.compute_dtype {
            Some(d) => d,
            None => match std::env::var(crate::kernels::COMPUTE_DTYPE_ENV) {
                Ok(v) if !v.trim().is_empty() => {
                    ComputeDtype::parse(&v).ok_or(GpuError::BadComputeDtype(v))?
                }
                // From the adapter's class, not a TINYTUNE_KERNELS override: the GPU variant
                // run on lavapipe (the test suite) stays f32.
                _ => ComputeDtype::default_for(
                    KernelSet::for_adapter(info.device_type, &info.name, &info.driver),
                    has_f16,
                ),
            },
        };
        if compute == ComputeDtype::F16 && !has_f16 {
            return Err(GpuError::NoF16 {
                adapter: adapter_phrase(&info.name),
            });
        }
        let check_dispatch = opts.check_dispatch.unwrap_or_else(|| {
            std::env::var("TINYTUNE_CHECK_DISPATCH").is_ok_and(|v| v.trim() == "1")
        });
        Ok(Gpu {
            check_dispatch,
            kernels,
            compute_f16: std::sync::atomic::AtomicBool::new(compute == ComputeDtype::F16),
            default_compute: compute,
            counters: Counters::default(),
            layouts: Mutex::new(HashMap::new()),
            binds: Mutex::new(BindCache::default()),
            dead: Arc::new(Mutex::new(Vec::new())),
            arena: Arena::new(&limits),
            staging: StagingPool::default(),
            submitted: AtomicU64::new(0),
            scratch: Mutex::new(HashMap::new()),
            device,
            queue,
            adapter: summarize(&info),
            features,
            limits,
            pipelines: Mutex::new(HashMap::new()),
            uncaptured,
            uncaptured_reported: AtomicU64::new(0),
            memory: Arc::new(MemoryCounter::default()),
        })
    }

    /// Native convenience: open a device, blocking.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new_blocking(opts: GpuOptions) -> Result<Gpu> {
        pollster::block_on(Gpu::new(opts))
    }

    /// The kernel variant the launchers dispatch.
    pub fn kernels(&self) -> KernelSet {
        self.kernels
    }

    /// The kernel variant and the optional features it may use, for reports.
    pub fn kernel_info(&self) -> KernelInfo {
        KernelInfo {
            set: self.kernels,
            f16: self.features.contains(wgpu::Features::SHADER_F16),
            subgroups: self.features.contains(wgpu::Features::SUBGROUP),
            compute: self.compute_dtype(),
        }
    }

    /// The frozen-weight matmuls' operand dtype ([`ComputeDtype`]).
    pub fn compute_dtype(&self) -> ComputeDtype {
        if self.compute_f16.load(Ordering::Relaxed) {
            ComputeDtype::F16
        } else {
            ComputeDtype::F32
        }
    }

    /// The compute dtype chosen when the device was opened ([`GpuOptions::compute_dtype`], else
    /// `TINYTUNE_COMPUTE_DTYPE`, else [`ComputeDtype::default_for`] the adapter).
    pub fn default_compute_dtype(&self) -> ComputeDtype {
        self.default_compute
    }

    /// Sets the operand dtype of the matmuls recorded from now on (pipelines of both dtypes are
    /// cached side by side). Fails with [`GpuError::NoF16`] for f16 on a device without
    /// `SHADER_F16`.
    pub fn set_compute_dtype(&self, dtype: ComputeDtype) -> Result<()> {
        if dtype == ComputeDtype::F16 && !self.features.contains(wgpu::Features::SHADER_F16) {
            return Err(GpuError::NoF16 {
                adapter: adapter_phrase(&self.adapter.name),
            });
        }
        self.compute_f16
            .store(dtype == ComputeDtype::F16, Ordering::Relaxed);
        Ok(())
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
            offset: 0,
            bound: size,
            _tracked: Arc::new(Tracked {
                id: NEXT_BUFFER_ID.fetch_add(1, Ordering::Relaxed),
                bytes: size,
                counter,
                dead: self.dead.clone(),
                _parent: None,
            }),
        })
    }

    /// A launcher's temporary of `bytes` bytes (contents undefined), the same buffer every time
    /// for the same `label` and size: made once, so later calls allocate nothing and reuse their
    /// bind groups. Safe to share because the queue runs commands in order: a launcher writes its
    /// temporary before it reads it within the commands it records, so an earlier or later user
    /// of the same scratch never sees a half-done state. At most [`SCRATCH_MAX`] are kept.
    pub fn scratch(&self, label: &'static str, bytes: u64) -> Result<GpuBuffer> {
        let mut cache = self.scratch.lock().expect("scratch cache poisoned");
        if let Some(b) = cache.get(&(label, bytes)) {
            return Ok(b.clone());
        }
        if cache.len() >= SCRATCH_MAX {
            cache.clear();
        }
        let b = self.alloc(label, bytes)?;
        cache.insert((label, bytes), b.clone());
        Ok(b)
    }

    /// The storage-buffer offset alignment views must keep ([`Gpu::view`]), in bytes.
    pub fn view_alignment(&self) -> u64 {
        self.limits.min_storage_buffer_offset_alignment as u64
    }

    /// A view of `bytes` bytes of `parent` from `offset` on (a multiple of
    /// [`Gpu::view_alignment`]): a buffer of its own to every kernel, copy and read, over the
    /// parent's memory (so one flat buffer can hold many tensors that kernels bind one by one).
    pub fn view(
        &self,
        parent: &GpuBuffer,
        label: &str,
        offset: u64,
        bytes: u64,
    ) -> Result<GpuBuffer> {
        let bound = bytes.max(4).div_ceil(4) * 4;
        let align = self.view_alignment();
        if !offset.is_multiple_of(align) || offset + bound > parent.bound {
            return Err(GpuError::Shape {
                kernel: "view".into(),
                message: format!(
                    "{label}: {bytes} bytes at {offset} do not fit {:?} ({} bytes) at the \
                     device's {align}-byte offset alignment",
                    parent.label, parent.bound
                ),
            });
        }
        Ok(GpuBuffer {
            label: label.into(),
            raw: parent.raw.clone(),
            len: bytes,
            offset: parent.offset + offset,
            bound,
            _tracked: Arc::new(Tracked {
                id: NEXT_BUFFER_ID.fetch_add(1, Ordering::Relaxed),
                bytes: 0,
                counter: self.memory.clone(),
                dead: self.dead.clone(),
                _parent: Some(parent._tracked.clone()),
            }),
        })
    }

    /// What the runtime has done so far (see [`GpuCounters`]).
    pub fn counters(&self) -> GpuCounters {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        GpuCounters {
            submits: get(&c.submits),
            dispatches: get(&c.dispatches),
            copies: get(&c.copies),
            clears: get(&c.clears),
            blocking_reads: get(&c.blocking_reads),
            overlapped_reads: get(&c.overlapped_reads),
            bind_groups_created: get(&c.bind_groups_created),
            params_bytes: get(&c.params_bytes),
        }
    }

    /// Whether every dispatch is checked on its own ([`GpuOptions::check_dispatch`]).
    pub fn checks_dispatches(&self) -> bool {
        self.check_dispatch
    }

    /// Device memory in tinytune's storage buffers: alive now and at most so far.
    pub fn memory(&self) -> MemoryStats {
        MemoryStats {
            live_bytes: self.memory.live.load(Ordering::Relaxed),
            peak_bytes: self.memory.peak.load(Ordering::Relaxed),
        }
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
        let at = buf.offset + offset;
        if bytes.len().is_multiple_of(4) {
            self.queue.write_buffer(&buf.raw, at, bytes);
        } else {
            let mut padded = bytes.to_vec();
            padded.resize(bytes.len().div_ceil(4) * 4, 0);
            self.queue.write_buffer(&buf.raw, at, &padded);
        }
    }

    /// Starts recording kernels; nothing runs until [`Encoder::submit`].
    pub fn encoder(&self) -> Encoder<'_> {
        Encoder {
            gpu: self,
            pass: None,
            enc: self.command_encoder(),
            params: Vec::new(),
            maps: Vec::new(),
            staged: Default::default(),
        }
    }

    fn command_encoder(&self) -> wgpu::CommandEncoder {
        self.device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("tinytune"),
            })
    }

    /// The bind group layout of `kernel`'s `entry` (binding 0 the dynamic-offset uniform, then
    /// the storage bindings the entry point uses), made once. Call inside an error scope.
    fn bind_layout(&self, kernel: &'static str, entry: &'static str) -> Result<Arc<BindLayout>> {
        let fail = |message: String| GpuError::Pipeline {
            kernel: kernel.into(),
            entry: entry.into(),
            message,
        };
        let mut layouts = self.layouts.lock().expect("layout cache poisoned");
        if let Some(l) = layouts.get(&(kernel, entry)) {
            return Ok(l.clone());
        }
        let shader = shaders::get(kernel).ok_or_else(|| GpuError::UnknownShader(kernel.into()))?;
        let used = bindings::entry_bindings(shader.source, entry)
            .ok_or_else(|| fail(format!("no @compute entry point {entry:?}")))?;
        let mut entries = vec![wgpu::BindGroupLayoutEntry {
            binding: 0,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Uniform,
                has_dynamic_offset: true,
                min_binding_size: NonZeroU64::new(self.arena.binding),
            },
            count: None,
        }];
        let mut storage = 0;
        for b in &used {
            match (b.binding, b.kind) {
                (0, BindingKind::Uniform) => {}
                (n, BindingKind::Storage { read_only }) if n as usize == storage + 1 => {
                    storage += 1;
                    entries.push(wgpu::BindGroupLayoutEntry {
                        binding: n,
                        visibility: wgpu::ShaderStages::COMPUTE,
                        ty: wgpu::BindingType::Buffer {
                            ty: wgpu::BufferBindingType::Storage { read_only },
                            has_dynamic_offset: false,
                            min_binding_size: None,
                        },
                        count: None,
                    });
                }
                (n, kind) => {
                    return Err(fail(format!(
                        "binding {n} ({kind:?}): binding 0 must be the uniform params and the \
                         storage bindings 1, 2, ... in order"
                    )))
                }
            }
        }
        let layout = self
            .device
            .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some(kernel),
                entries: &entries,
            });
        let l = Arc::new(BindLayout {
            id: NEXT_LAYOUT_ID.fetch_add(1, Ordering::Relaxed),
            layout,
            storage,
        });
        layouts.insert((kernel, entry), l.clone());
        Ok(l)
    }

    /// The cached bind group of `kernel` on arena chunk `chunk` and `buffers`, created (inside
    /// an error scope) on a miss.
    fn bind_group(
        &self,
        kernel: &Kernel,
        chunk: usize,
        buffers: &[&GpuBuffer],
    ) -> Result<wgpu::BindGroup> {
        let key = BindKey {
            layout: kernel.layout.id,
            chunk: chunk as u32,
            buffers: buffers.iter().map(|b| b.id()).collect(),
        };
        let dead = std::mem::take(&mut *self.dead.lock().expect("dead buffer list poisoned"));
        let mut cache = self.binds.lock().expect("bind group cache poisoned");
        if !dead.is_empty() {
            cache.purge(&dead);
        }
        if let Some(g) = cache.groups.get(&key) {
            return Ok(g.clone());
        }
        let arena = self.arena.chunk(&self.device, chunk);
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &arena,
                offset: 0,
                size: NonZeroU64::new(self.arena.binding),
            }),
        }];
        for (i, b) in buffers.iter().enumerate() {
            entries.push(wgpu::BindGroupEntry {
                binding: i as u32 + 1,
                resource: b.binding(),
            });
        }
        let scope = ErrorScope::push(&self.device);
        let group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(kernel.name),
            layout: &kernel.layout.layout,
            entries: &entries,
        });
        if let Some(message) = scope.pop() {
            return Err(GpuError::Pipeline {
                kernel: kernel.name.into(),
                entry: kernel.entry.into(),
                message: format!("binding {} buffers: {message}", buffers.len()),
            });
        }
        bump(&self.counters.bind_groups_created, 1);
        cache.insert(key, group.clone());
        Ok(group)
    }

    /// Gets (compiling once) the pipeline of `kernel`'s `entry` specialised with `constants`.
    pub fn kernel(
        &self,
        kernel: &'static str,
        entry: &'static str,
        constants: &[(&str, f64)],
    ) -> Result<Kernel> {
        // Only the kernels that join the compute-dtype common file have an f16 form (looked up
        // only under f16, so an f32 device's per-dispatch path is the cache lookup alone).
        let f16 = self.compute_dtype() == ComputeDtype::F16
            && shaders::get(kernel).is_some_and(shaders::has_compute_dtype);
        let key: PipelineKey = (
            kernel,
            entry,
            constants
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_bits()))
                .collect(),
            f16,
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
        let layout = match self.bind_layout(kernel, entry) {
            Ok(l) => l,
            Err(e) => {
                let _ = scope.pop();
                return Err(e);
            }
        };
        let pipeline_layout = self
            .device
            .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(kernel),
                bind_group_layouts: &[Some(&layout.layout)],
                immediate_size: 0,
            });
        let module = self
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(kernel),
                source: wgpu::ShaderSource::Wgsl(if f16 {
                    shaders::f16_source(shader).into()
                } else {
                    shader.source.into()
                }),
            });
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(kernel),
                layout: Some(&pipeline_layout),
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

    /// Copies a buffer back to the host, waiting for it (one blocking read in
    /// [`GpuCounters::blocking_reads`]). The only async point of the runtime besides
    /// [`PendingRead::wait_async`].
    pub async fn read_bytes(&self, buf: &GpuBuffer) -> Result<Vec<u8>> {
        let mut enc = self.encoder();
        let pending = enc.read_later(buf, 0..buf.len)?;
        enc.submit();
        pending.wait_async().await
    }

    /// Reads a buffer as `T` values (the buffer's logical length must be a multiple of `size_of::<T>()`).
    pub async fn read<T: bytemuck::Pod>(&self, buf: &GpuBuffer) -> Result<Vec<T>> {
        Ok(cast_bytes(&self.read_bytes(buf).await?))
    }

    /// Native convenience: blocking [`Gpu::read`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_blocking<T: bytemuck::Pod>(&self, buf: &GpuBuffer) -> Result<Vec<T>> {
        pollster::block_on(self.read(buf))
    }
}

/// Bytes as `T` values (a tail shorter than one `T` is dropped).
pub fn cast_bytes<T: bytemuck::Pod>(bytes: &[u8]) -> Vec<T> {
    let n = bytes.len() / std::mem::size_of::<T>();
    let mut out = vec![T::zeroed(); n];
    bytemuck::cast_slice_mut::<T, u8>(&mut out)
        .copy_from_slice(&bytes[..n * std::mem::size_of::<T>()]);
    out
}

/// A readback mapped once its encoder is submitted.
struct MapRequest {
    staging: wgpu::Buffer,
    size: u64,
    done: futures_channel::oneshot::Sender<std::result::Result<(), wgpu::BufferAsyncError>>,
    ticket: Ticket,
}

/// Which submission carries a readback, set when its encoder is submitted: the serial (to tell
/// whether later work is queued behind it) and wgpu's index (to wait for that submission only).
type Ticket = Arc<Mutex<Option<(u64, wgpu::SubmissionIndex)>>>;

/// Records kernel launches into one command buffer. Consecutive dispatches share one compute
/// pass; their params go into the encoder's arena, uploaded at [`Encoder::submit`].
pub struct Encoder<'g> {
    pub gpu: &'g Gpu,
    /// The open compute pass (declared before `enc`: it must end first).
    pass: Option<wgpu::ComputePass<'static>>,
    enc: wgpu::CommandEncoder,
    /// The params of this submission's dispatches, one arena slot (`stride` bytes) each.
    params: Vec<u8>,
    /// Readbacks to map after the submit.
    maps: Vec<MapRequest>,
    /// Bytes of [`Encoder::upload`], written just before the submission.
    staged: crate::upload::Staged,
}

impl<'g> Encoder<'g> {
    /// Records one dispatch. Binding 0 is the uniform `params`, the kernel's WGSL `struct Params`
    /// ([`crate::params`]); bindings 1.. are `buffers` in order, matching the WGSL file's
    /// declarations. Fails if `P` is not the params struct of `kernel`, or (on the bind group's
    /// first use) if the buffers do not fit the kernel's bindings.
    pub fn dispatch<P: KernelParams>(
        &mut self,
        kernel: &Kernel,
        params: &P,
        buffers: &[&GpuBuffer],
        groups: [u32; 3],
    ) -> Result<()> {
        let fail = |message: String| GpuError::Pipeline {
            kernel: kernel.name.into(),
            entry: kernel.entry.into(),
            message,
        };
        if !P::KERNELS.contains(&kernel.name) {
            return Err(fail(format!(
                "params {} are for {:?}",
                std::any::type_name::<P>(),
                P::KERNELS
            )));
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
        if buffers.len() != kernel.layout.storage {
            return Err(fail(format!(
                "entry point uses {} storage bindings, got {} buffers",
                kernel.layout.storage,
                buffers.len()
            )));
        }
        let arena = &self.gpu.arena;
        let slot = self.params.len() as u64 / arena.stride;
        let chunk = slot / arena.slots_per_chunk();
        let offset = (slot % arena.slots_per_chunk()) * arena.stride;
        let bind = self.gpu.bind_group(kernel, chunk as usize, buffers)?;
        self.params.extend_from_slice(bytemuck::bytes_of(params));
        self.params.resize(((slot + 1) * arena.stride) as usize, 0);
        let check = self.gpu.check_dispatch;
        let scope = check.then(|| ErrorScope::push(&self.gpu.device));
        let pass = self.pass.get_or_insert_with(|| {
            self.enc
                .begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("tinytune"),
                    timestamp_writes: None,
                })
                .forget_lifetime()
        });
        pass.set_pipeline(&kernel.pipeline);
        pass.set_bind_group(0, &bind, &[offset as u32]);
        pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
        bump(&self.gpu.counters.dispatches, 1);
        if let Some(scope) = scope {
            // Debug mode: end the pass and submit this dispatch alone, so that any error is
            // this kernel's.
            self.flush();
            if let Some(message) = scope.pop() {
                return Err(fail(format!("dispatch {groups:?} failed: {message}")));
            }
        }
        Ok(())
    }

    /// Ends the shared compute pass, if one is open.
    fn end_pass(&mut self) {
        self.pass = None;
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
        self.end_pass();
        self.enc.copy_buffer_to_buffer(
            &src.raw,
            src.offset + src_off,
            &dst.raw,
            dst.offset + dst_off,
            bytes,
        );
        bump(&self.gpu.counters.copies, 1);
    }

    /// Records writing `bytes` into `dst` at `dst_off` (a multiple of 4) here in the command
    /// stream: kernels recorded before it still see the old contents, those after it the new ones
    /// (a plain [`Gpu::write`] lands before the whole submission). A tail shorter than 4 bytes is
    /// zero-padded. The bytes reach the device with the submission ([`crate::upload`]).
    pub fn upload(&mut self, dst: &GpuBuffer, dst_off: u64, bytes: &[u8]) -> Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        let len = bytes.len().div_ceil(4) as u64 * 4;
        if dst_off + len > dst.bound {
            return Err(GpuError::Shape {
                kernel: "upload".into(),
                message: format!(
                    "{len} bytes at {dst_off} overflow buffer {:?} of {} bytes",
                    dst.label, dst.len
                ),
            });
        }
        let (src, at, len) = self.staged.stage(&self.gpu.device, bytes);
        self.end_pass();
        self.enc
            .copy_buffer_to_buffer(&src, at, &dst.raw, dst.offset + dst_off, len);
        bump(&self.gpu.counters.copies, 1);
        Ok(())
    }

    /// Zeroes a whole buffer.
    pub fn clear(&mut self, buf: &GpuBuffer) {
        self.end_pass();
        self.enc.clear_buffer(&buf.raw, buf.offset, Some(buf.bound));
        bump(&self.gpu.counters.clears, 1);
    }

    /// Requests the bytes `range` of `buf` (the start a multiple of 4, the end at most the
    /// buffer's logical length) back on the host without waiting: records a copy into a pooled
    /// staging buffer, mapped once this encoder is submitted. Take the data with
    /// [`PendingRead::try_take`] (never blocks) or [`PendingRead::wait`].
    pub fn read_later(
        &mut self,
        buf: &GpuBuffer,
        range: std::ops::Range<u64>,
    ) -> Result<PendingRead<'g>> {
        let bad = |message: String| GpuError::Readback {
            label: buf.label.clone(),
            message,
        };
        if range.start > range.end || range.end > buf.len {
            return Err(bad(format!(
                "range {range:?} is outside the buffer's {} bytes",
                buf.len
            )));
        }
        if !range.start.is_multiple_of(4) {
            return Err(bad(format!(
                "range {range:?} must start at a multiple of 4 bytes"
            )));
        }
        let len = range.end - range.start;
        let ticket = Ticket::default();
        let (rx, staging, size) = if len == 0 {
            (None, None, 0)
        } else {
            // Storage buffers are whole words, so the rounded-up copy stays inside the buffer.
            let size = len.div_ceil(4) * 4;
            let staging = self.gpu.staging.acquire(&self.gpu.device, size);
            self.end_pass();
            self.enc
                .copy_buffer_to_buffer(&buf.raw, buf.offset + range.start, &staging, 0, size);
            bump(&self.gpu.counters.copies, 1);
            let (tx, rx) = futures_channel::oneshot::channel();
            self.maps.push(MapRequest {
                staging: staging.clone(),
                size,
                done: tx,
                ticket: ticket.clone(),
            });
            (Some(rx), Some(staging), size)
        };
        Ok(PendingRead {
            gpu: self.gpu,
            ticket,
            label: buf.label.clone(),
            len: len as usize,
            size,
            staging,
            rx,
            taken: false,
        })
    }

    /// Uploads the params arena, submits what was recorded, starts the maps of the readbacks
    /// and leaves the encoder empty (the next commands go to a new command buffer).
    fn flush(&mut self) {
        self.end_pass();
        let enc = std::mem::replace(&mut self.enc, self.gpu.command_encoder());
        let params = std::mem::take(&mut self.params);
        let arena = &self.gpu.arena;
        let (serial, index) = {
            let _order = arena.submit.lock().expect("params arena poisoned");
            let chunk_bytes = (arena.slots_per_chunk() * arena.stride) as usize;
            for (i, bytes) in params.chunks(chunk_bytes).enumerate() {
                let chunk = arena.chunk(&self.gpu.device, i);
                self.gpu.queue.write_buffer(&chunk, 0, bytes);
            }
            self.staged.flush(&self.gpu.queue);
            let index = self.gpu.queue.submit([enc.finish()]);
            let serial = self.gpu.submitted.fetch_add(1, Ordering::Relaxed) + 1;
            (serial, index)
        };
        bump(&self.gpu.counters.params_bytes, params.len() as u64);
        bump(&self.gpu.counters.submits, 1);
        for m in self.maps.drain(..) {
            *m.ticket.lock().expect("read ticket poisoned") = Some((serial, index.clone()));
            let done = m.done;
            m.staging
                .map_async(wgpu::MapMode::Read, 0..m.size, move |r| {
                    let _ = done.send(r);
                });
        }
    }

    /// Submits everything recorded.
    pub fn submit(mut self) {
        self.flush();
    }
}

/// A readback requested with [`Encoder::read_later`]: the data arrive some time after the
/// encoder is submitted. Its staging buffer goes back to the device's pool when the data are
/// taken; one dropped untaken is freed instead.
pub struct PendingRead<'g> {
    gpu: &'g Gpu,
    ticket: Ticket,
    label: String,
    /// Bytes asked for.
    len: usize,
    /// Bytes copied (`len` rounded up to 4).
    size: u64,
    /// `None` for an empty range, or once taken.
    staging: Option<wgpu::Buffer>,
    rx: Option<futures_channel::oneshot::Receiver<std::result::Result<(), wgpu::BufferAsyncError>>>,
    taken: bool,
}

impl PendingRead<'_> {
    fn err(&self, message: impl Into<String>) -> GpuError {
        GpuError::Readback {
            label: self.label.clone(),
            message: message.into(),
        }
    }

    /// The data if they have arrived, else `Ok(None)`; never blocks (native: polls the device
    /// once without waiting; web: the map callback has run or not). Fails if the data were
    /// already taken, the encoder was dropped unsubmitted, or the map failed.
    pub fn try_take(&mut self) -> Result<Option<Vec<u8>>> {
        if self.taken {
            return Err(self.err("already taken"));
        }
        let Some(rx) = self.rx.as_mut() else {
            self.taken = true;
            return Ok(Some(Vec::new()));
        };
        #[cfg(not(target_arch = "wasm32"))]
        self.gpu
            .device
            .poll(wgpu::PollType::Poll)
            .map_err(|e| GpuError::Device(e.to_string()))?;
        match rx.try_recv() {
            Ok(None) => Ok(None),
            Ok(Some(r)) => self.finish(r).map(Some),
            Err(_) => Err(self.err("its encoder was dropped before it was submitted")),
        }
    }

    /// Waits for the data: native, blocks until its own submission is done (not the ones queued
    /// after it); web, awaits the map callback. Counted in [`GpuCounters::overlapped_reads`] when
    /// later submissions are queued behind it, else in [`GpuCounters::blocking_reads`].
    pub async fn wait_async(mut self) -> Result<Vec<u8>> {
        if self.taken {
            return Err(self.err("already taken"));
        }
        let Some(rx) = self.rx.take() else {
            self.taken = true;
            return Ok(Vec::new());
        };
        let ticket = self.ticket.lock().expect("read ticket poisoned").clone();
        let Some((serial, _index)) = ticket else {
            return Err(self.err("its encoder was not submitted"));
        };
        let counter = if self.gpu.submitted.load(Ordering::Relaxed) > serial {
            &self.gpu.counters.overlapped_reads
        } else {
            &self.gpu.counters.blocking_reads
        };
        bump(counter, 1);
        #[cfg(not(target_arch = "wasm32"))]
        self.gpu
            .device
            .poll(wgpu::PollType::Wait {
                submission_index: Some(_index),
                timeout: None,
            })
            .map_err(|e| self.err(e.to_string()))?;
        match rx.await {
            Ok(r) => self.finish(r),
            Err(_) => Err(self.err("its encoder was dropped before it was submitted")),
        }
    }

    /// Native convenience: blocking [`PendingRead::wait_async`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn wait(self) -> Result<Vec<u8>> {
        pollster::block_on(self.wait_async())
    }

    /// Copies the mapped data out, unmaps and returns the staging buffer to the pool.
    fn finish(
        &mut self,
        mapped: std::result::Result<(), wgpu::BufferAsyncError>,
    ) -> Result<Vec<u8>> {
        self.taken = true;
        self.rx = None;
        let staging = self
            .staging
            .take()
            .ok_or_else(|| self.err("already taken"))?;
        mapped.map_err(|e| self.err(e.to_string()))?;
        self.gpu.take_uncaptured()?;
        let view = staging
            .get_mapped_range(0..self.size)
            .map_err(|e| self.err(e.to_string()))?;
        let mut out = view.to_vec();
        drop(view);
        staging.unmap();
        self.gpu.staging.release(staging);
        out.truncate(self.len);
        Ok(out)
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
