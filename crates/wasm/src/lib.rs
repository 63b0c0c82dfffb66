//! wasm-bindgen API of tinytune for browsers: class [`Tinytune`] opens WebGPU, loads a model from
//! picked files (a GGUF, or a Hugging Face folder's files), fine-tunes LoRA adapters on it with the
//! same trainer as the CLI, generates with or without them, and saves / loads adapters in PEFT's
//! layout, all in memory.
//!
//! ```js
//! import init, { Tinytune } from "./pkg/tinytune_wasm.js";
//! await init();
//! const tt = await Tinytune.create();              // JsError when WebGPU is missing
//! await tt.loadModel({ "model.gguf": bytes }, "nf4");
//! await tt.train(jsonlText, "data.jsonl", JSON.stringify({ num_steps: 20 }), (m) => console.log(m));
//! await tt.generate("Hi!", "{}", (piece) => console.log(piece));
//! const files = await tt.saveAdapter();            // {"adapter_config.json": Uint8Array, ...}
//! ```
//!
//! Every method that touches the GPU returns a `Promise`; only one of them runs at a time (a second
//! call while one runs is rejected), except [`Tinytune::stop`], which asks a running `train` or
//! `generate` to finish after its current step or token. Run it in a Web Worker: model loading and
//! data tokenization are synchronous.
//!
//! The options (the CLI's names and defaults), how a run starts and is driven, and the generate
//! setup are `tinytune_train`'s [`options`](tinytune_train::options) and
//! [`session`](tinytune_train::session), shared with the CLI; this crate adds the JS glue, the JS-only
//! `"adapter"` key ([`options`]) and models and adapters from named in-memory files ([`files`]),
//! tested natively.

pub mod files;
pub mod health;
pub mod options;
pub mod reader;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;

use js_sys::{Array, Function, Object, Promise, Reflect, Uint8Array};
use serde_json::json;
use tinytune_gpu::{Gpu, GpuOptions};
use tinytune_model::{ByteSource, LlamaModel, MemBytes, StopReason, TextStream};
use tinytune_train::{
    plan_run, prompt_ids, AdapterGpu, Checkpoint, Clock, Dataset, GenerateSession, ModelTokenizer,
    PeftAdapter, QuantOption, RunFrom, StepEvent, TrainSession, Trainer,
};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::{future_to_promise, JsFuture};

use crate::files::NamedFile;

#[wasm_bindgen(typescript_custom_section)]
const TS_TYPES: &'static str = r#"
/** Picked files by name: a File / Blob (read range by range in a worker), or bytes in one
 * piece or in chunks. */
export type ModelFiles =
    | Map<string, Blob | Uint8Array | ArrayBuffer | Uint8Array[]>
    | Record<string, Blob | Uint8Array | ArrayBuffer | Uint8Array[]>;
export interface TinytuneInfo {
    adapter: { name: string; backend: string; device_type: string; driver: string; driver_info: string };
    features: string[];
    /** The kernel variant in use, the optional features it may use and the compute dtype of
     * the frozen-weight matmuls, e.g. `"gpu (f16, subgroups), compute f16"` or
     * `"cpu, compute f32"` (CPU implementations such as SwiftShader). */
    kernels: string;
    limits: Record<string, number>;
    shaders: number;
    model: ModelInfo | null;
    has_adapter: boolean;
    /** Bytes of tinytune's storage buffers on the GPU: alive now, and the most alive at once
     * (since the last `train` began). */
    memory: { live_bytes: number; peak_bytes: number };
    /** The device-lost callback fired (`GPUDevice.lost`). */
    device_lost: boolean;
    /** Once the device was lost or reported an error: what happened and what to do (reload);
     * every later GPU call is rejected with it. */
    gpu_error: string | null;
}
export interface ModelInfo {
    name: string; format: "hf" | "gguf"; model_type: string; layers: number; hidden_size: number;
    vocab_size: number; max_position_embeddings: number; quant: "nf4" | "none";
    chat_template: boolean; tokenizer_error: string | null; load_s: number;
    /** Bytes the loader read from the files, and their total size. */
    bytes_read: number; file_bytes: number;
    /** GPU bytes of the loaded model (tinytune's buffers alive after loading). */
    model_bytes: number;
    /** Where `model_bytes` go: the decoder's linears (`"nf4"` or `"f32"`), the embedding and
     * the LM head (`null` when tied) in their stored dtype, norms / biases / RoPE (f32). */
    model_memory: {
        linears: number; linears_dtype: "nf4" | "f32"; embed: number; embed_dtype: "f32" | "f16" | "bf16";
        lm_head: number | null; lm_head_dtype: "f32" | "f16" | "bf16" | null; other: number;
    };
}
/** Model loading: after the headers (0 tensors) and after each tensor read. */
export interface LoadProgress {
    phase: "tensors"; loaded_tensors: number; total_tensors: number; bytes: number;
    total_bytes: number;
}
/** One optimizer step (the CLI's metrics.jsonl line) plus the run's total steps. */
export interface StepMetrics {
    step: number; total_steps: number; loss: number; lr: number; grad_norm: number;
    tokens_per_s: number; elapsed_s: number; eval_loss?: number; eval_ppl?: number;
    /** The extra held-out sets (`eval_data`) evaluated at this step, by name. */
    eval_data?: Record<string, { loss: number; ppl: number }>;
}
export interface TrainSummary {
    resumed: boolean; peft: "lora" | "prompt-tuning" | "prefix-tuning"; checkpoints: boolean; steps: number; total_steps: number; stopped: boolean; n_params: number; n_train: number;
    n_eval: number; tokens_seen: number; elapsed_s: number; eval_loss_before: number | null;
    /** The extra held-out sets (`eval_data`) before training, by name (null when nothing was
     * evaluated before training: a resumed run, or no eval split and no sets). */
    eval_data_before: Record<string, { loss: number; ppl: number }> | null;
    final_loss: number | null; data: { records: number; examples: number; tokens: number;
    targets: number; truncated: number; dropped: number };
    /** The most GPU bytes alive at once during the run (model, adapter, activations,
     * optimizer state). */
    peak_bytes: number;
}
export interface GenerateResult {
    text: string; tokens: number[]; prompt_tokens: number; adapter: boolean;
    stop: "eos" | "max_new_tokens" | "max_length" | "stopped"; first_token_s: number;
    tokens_per_s: number | null;
}
/** A checkpoint (adapter, optimizer and trainer state, config): `train`'s `resume` takes
 * `files` back. */
export interface CheckpointFiles {
    step: number; total_steps: number; files: Record<string, Uint8Array>;
}
export interface AdapterFiles {
    "adapter_config.json": Uint8Array;
    "adapter_model.safetensors": Uint8Array;
}
export interface AdapterInfo {
    peft: "lora" | "prompt-tuning" | "prefix-tuning"; n_params: number;
    /** LoRA */ r?: number; lora_alpha?: number; target_modules?: string[];
    /** prompt and prefix tuning */ num_virtual_tokens?: number;
}
"#;

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_namespace = console, js_name = error)]
    fn console_error(s: &str);
}

/// A model on the device with its tokenizer.
struct Loaded {
    info: serde_json::Value,
    model: LlamaModel,
    tok: Result<ModelTokenizer, String>,
}

struct Inner {
    gpu: Gpu,
    health: health::DeviceHealth,
    model: RefCell<Option<Rc<Loaded>>>,
    adapter: RefCell<Option<Rc<AdapterGpu>>>,
    stop: Cell<bool>,
    busy: Cell<Option<&'static str>>,
}

/// Clears the busy flag when the operation ends (returns, fails or is dropped).
struct Busy(Rc<Inner>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.set(None);
    }
}

impl Inner {
    fn begin(self: &Rc<Self>, what: &'static str) -> Result<Busy, JsValue> {
        if let Some(b) = self.busy.get() {
            return Err(err(format!(
                "tinytune is busy ({b} is running): wait for it, or stop() it first"
            )));
        }
        // A lost device, or one that reported an error, fails every later call the same way.
        self.health.check(&self.gpu).map_err(err)?;
        self.busy.set(Some(what));
        self.stop.set(false);
        Ok(Busy(self.clone()))
    }

    fn loaded(&self) -> Result<Rc<Loaded>, JsValue> {
        self.model
            .borrow()
            .clone()
            .ok_or_else(|| err("no model loaded: call loadModel first"))
    }
}

/// The block sizes `loadModel` asked for (see `tinytune train --block-size`), resolved against
/// the model; `None`: block 64 everywhere.
fn block_plan(
    src: &tinytune_model::ModelSource,
    quant: QuantOption,
    blocks: &tinytune_train::BlockOptions,
) -> Result<Option<tinytune_model::BlockPlan>, String> {
    if !blocks.is_set() {
        return Ok(None);
    }
    if src.is_prequantized() {
        return Err(
            "the model is a bitsandbytes 4-bit checkpoint: its layers keep the block \
                    sizes they were saved with; leave out block_size, block_size_map and \
                    bits_per_weight"
                .into(),
        );
    }
    let tinytune_model::Quant::Nf4 { double_quant, .. } = quant.quant() else {
        return Err(
            "block_size, block_size_map and bits_per_weight set NF4 block sizes; they do \
                    not apply with quant \"none\""
                .into(),
        );
    };
    let Some(spec) = blocks.spec(double_quant)? else {
        return Ok(None);
    };
    let report = tinytune_model::blocks::plan_blocks(src, &spec, &mut |_, _| {})
        .map_err(|e| format!("cannot choose block sizes: {e}"))?;
    Ok(Some(report.plan))
}

fn err(e: impl std::fmt::Display) -> JsValue {
    JsError::new(&e.to_string()).into()
}

/// [`err`] with what to change when the GPU ran out of room ([`options::with_gpu_hint`]).
fn gpu_err(what: &'static str) -> impl Fn(String) -> JsValue {
    move |m| err(options::with_gpu_hint(m, what))
}

/// [`tinytune_model::ModelMemory`] as `ModelInfo.model_memory`.
fn model_memory_json(m: &tinytune_model::ModelMemory) -> serde_json::Value {
    let name = |d| tinytune_model::vocab::kernel_dtype(d).name();
    json!({
        "linears": m.linears,
        "linears_dtype": match m.quant {
            tinytune_model::Quant::None => "f32",
            tinytune_model::Quant::Nf4 { .. } => "nf4",
        },
        "embed": m.embed.0,
        "embed_dtype": name(m.embed.1),
        "lm_head": m.lm_head.map(|h| h.0),
        "lm_head_dtype": m.lm_head.map(|h| name(h.1)),
        "other": m.other,
    })
}

fn memory_json(gpu: &Gpu) -> serde_json::Value {
    let m = gpu.memory();
    json!({ "live_bytes": m.live_bytes, "peak_bytes": m.peak_bytes })
}

fn to_js(v: &serde_json::Value) -> Result<JsValue, JsValue> {
    js_sys::JSON::parse(&v.to_string())
}

fn global_get(name: &str) -> JsValue {
    Reflect::get(&js_sys::global(), &JsValue::from_str(name)).unwrap_or(JsValue::UNDEFINED)
}

/// Seconds from `performance.now()` (`Date.now()` where there is none).
fn clock() -> Clock {
    let perf = global_get("performance");
    let now = Reflect::get(&perf, &JsValue::from_str("now"))
        .ok()
        .and_then(|f| f.dyn_into::<Function>().ok());
    match now {
        Some(now) if !perf.is_undefined() => Box::new(move || {
            now.call0(&perf)
                .ok()
                .and_then(|v| v.as_f64())
                .unwrap_or(0.0)
                / 1000.0
        }),
        _ => Box::new(|| js_sys::Date::now() / 1000.0),
    }
}

/// `fetch(url, {method})` on the global scope (a page or a worker): the `Response`.
async fn fetch(url: &str, method: &str) -> Result<JsValue, JsValue> {
    let f = global_get("fetch")
        .dyn_into::<Function>()
        .map_err(|_| err("this context has no fetch()"))?;
    let init = Object::new();
    Reflect::set(&init, &"method".into(), &method.into())?;
    let p: Promise = f
        .call2(&JsValue::NULL, &url.into(), &init)?
        .dyn_into()
        .map_err(|_| err("fetch() did not return a Promise"))?;
    JsFuture::from(p)
        .await
        .map_err(|e| err(format!("{url}: {}", js_message(&e))))
}

/// Calls a `Response`'s promise-returning method (`blob`, `json`).
async fn response_call(resp: &JsValue, method: &str) -> Result<JsValue, JsValue> {
    let f: Function = Reflect::get(resp, &method.into())?
        .dyn_into()
        .map_err(|_| err(format!("Response has no {method}()")))?;
    let p: Promise = f
        .call0(resp)?
        .dyn_into()
        .map_err(|_| err(format!("Response.{method}() did not return a Promise")))?;
    JsFuture::from(p).await
}

fn response_ok(resp: &JsValue) -> bool {
    Reflect::get(resp, &"ok".into())
        .ok()
        .and_then(|v| v.as_bool())
        .unwrap_or(false)
}

/// The files of a model URL, `(name, url)`: a `.gguf` (by its path), or a Hugging Face folder: a
/// folder URL holding `config.json` (`https://huggingface.co/ORG/NAME` means its `resolve/main/`),
/// its safetensors (the shards `model.safetensors.index.json` names, else `model.safetensors`) and
/// whichever of `tokenizer.json`, `tokenizer_config.json`, `chat_template.jinja` it has.
async fn model_url_files(url: &str) -> Result<Vec<(String, String)>, JsValue> {
    let bare = url.split(['?', '#']).next().unwrap_or(url);
    if bare.to_ascii_lowercase().ends_with(".gguf") {
        let name = bare.rsplit('/').next().unwrap_or("model.gguf").to_string();
        return Ok(vec![(name, url.to_string())]);
    }
    let trimmed = bare.trim_end_matches('/');
    let hf_repo = trimmed
        .strip_prefix("https://huggingface.co/")
        .is_some_and(|rest| rest.split('/').count() == 2);
    let dir = if hf_repo {
        format!("{trimmed}/resolve/main/")
    } else {
        format!("{trimmed}/")
    };
    let exists = |name: &'static str| {
        let u = format!("{dir}{name}");
        async move { fetch(&u, "HEAD").await.is_ok_and(|r| response_ok(&r)) }
    };
    if !exists("config.json").await {
        return Err(err(format!(
            "{url}: neither a .gguf nor a model folder with a config.json ({dir}config.json is not there)"
        )));
    }
    let mut out = vec![("config.json".to_string(), format!("{dir}config.json"))];
    let index = fetch(&format!("{dir}model.safetensors.index.json"), "GET").await;
    match index {
        Ok(r) if response_ok(&r) => {
            let v = response_call(&r, "json").await?;
            let map = Reflect::get(&v, &"weight_map".into())?;
            let mut shards: Vec<String> = Object::values(&map.unchecked_into::<Object>())
                .iter()
                .filter_map(|s: JsValue| s.as_string())
                .collect();
            shards.sort();
            shards.dedup();
            if shards.is_empty() {
                return Err(err(format!(
                    "{dir}model.safetensors.index.json: no weight_map"
                )));
            }
            out.extend(shards.into_iter().map(|s| (s.clone(), format!("{dir}{s}"))));
        }
        _ => out.push((
            "model.safetensors".to_string(),
            format!("{dir}model.safetensors"),
        )),
    }
    for name in [
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
    ] {
        if exists(name).await {
            out.push((name.to_string(), format!("{dir}{name}")));
        }
    }
    Ok(out)
}

/// Lets the event loop run (messages such as a stop request, UI updates) between steps.
async fn yield_now() {
    let set_timeout = global_get("setTimeout").dyn_into::<Function>();
    if let Ok(st) = set_timeout {
        let p = Promise::new(&mut |resolve, _| {
            let _ = st.call2(&JsValue::NULL, &resolve, &JsValue::from_f64(0.0));
        });
        let _ = JsFuture::from(p).await;
    }
}

#[wasm_bindgen]
extern "C" {
    /// A `Blob` (a picked `File`, or one from the Origin Private File System).
    #[wasm_bindgen(js_name = Blob)]
    type JsBlob;
    #[wasm_bindgen(method, getter)]
    fn size(this: &JsBlob) -> f64;
    #[wasm_bindgen(method)]
    fn slice(this: &JsBlob, start: f64, end: f64) -> JsBlob;
    #[wasm_bindgen(method, js_name = arrayBuffer)]
    fn array_buffer(this: &JsBlob) -> Promise;

    /// Synchronous reads of a `Blob`: dedicated workers only.
    type FileReaderSync;
    #[wasm_bindgen(constructor, catch)]
    fn new() -> Result<FileReaderSync, JsValue>;
    #[wasm_bindgen(method, catch, js_name = readAsArrayBuffer)]
    fn read_as_array_buffer(
        this: &FileReaderSync,
        blob: &JsBlob,
    ) -> Result<js_sys::ArrayBuffer, JsValue>;
}

/// A `Blob` read range by range with `FileReaderSync`.
#[cfg(target_arch = "wasm32")]
struct BlobRead {
    blob: JsBlob,
    reader: FileReaderSync,
}

// SAFETY: wasm32-unknown-unknown as built here has no threads (no atomics target feature), so a
// JS handle never crosses threads; `ByteSource` asks for `Send + Sync` for the native loaders.
#[cfg(target_arch = "wasm32")]
unsafe impl Send for BlobRead {}
#[cfg(target_arch = "wasm32")]
unsafe impl Sync for BlobRead {}

#[cfg(target_arch = "wasm32")]
impl reader::RangeRead for BlobRead {
    fn read_range(&self, offset: u64, len: usize) -> Result<Vec<u8>, String> {
        let part = self.blob.slice(offset as f64, (offset + len as u64) as f64);
        let ab = self
            .reader
            .read_as_array_buffer(&part)
            .map_err(|e| js_message(&e))?;
        Ok(Uint8Array::new(&ab).to_vec())
    }
}

/// A `Blob` as a byte source: read range by range in a worker, or whole where there is no
/// `FileReaderSync` (the main thread).
async fn blob_source(blob: JsBlob, name: &str) -> Result<Box<dyn ByteSource>, JsValue> {
    let len = blob.size() as u64;
    #[cfg(target_arch = "wasm32")]
    if let Ok(reader) = FileReaderSync::new() {
        let src = reader::RangeSource::new(BlobRead { blob, reader }, len, name);
        return Ok(Box::new(src));
    }
    let ab = JsFuture::from(blob.array_buffer()).await?;
    let bytes = Uint8Array::new(&ab).to_vec();
    if bytes.len() as u64 != len {
        return Err(err(format!("{name}: read {} of {len} bytes", bytes.len())));
    }
    Ok(Box::new(MemBytes::new(bytes, name)))
}

/// The message of a thrown JS value.
fn js_message(e: &JsValue) -> String {
    e.dyn_ref::<js_sys::Error>()
        .map(|e| String::from(e.message()))
        .or_else(|| e.as_string())
        .unwrap_or_else(|| format!("{e:?}"))
}

/// Where `loadModel` reports progress: the caller's callback and the load's totals.
struct ProgressSink {
    f: Function,
    total_tensors: usize,
    total_bytes: u64,
}

thread_local! {
    static PROGRESS: RefCell<Option<ProgressSink>> = const { RefCell::new(None) };
}

fn report_progress(c: &reader::LoadCounter) {
    PROGRESS.with(|p| {
        if let Some(p) = p.borrow().as_ref() {
            let v = json!({
                "phase": "tensors",
                "loaded_tensors": (c.tensor_reads() as usize).min(p.total_tensors),
                "total_tensors": p.total_tensors,
                "bytes": c.bytes(),
                "total_bytes": p.total_bytes,
            });
            if let Ok(v) = to_js(&v) {
                let _ = p.f.call1(&JsValue::NULL, &v);
            }
        }
    });
}

/// Clears [`PROGRESS`] when a load ends.
struct ProgressGuard;

impl Drop for ProgressGuard {
    fn drop(&mut self) {
        PROGRESS.with(|p| p.replace(None));
    }
}

/// Reads `{name: bytes | Blob}` (a `Map` or a plain object) into named files, each counted into
/// `counter`. Returns them and their total size.
async fn named_files(
    files: &JsValue,
    counter: &Arc<reader::LoadCounter>,
) -> Result<(Vec<NamedFile>, u64), JsValue> {
    let entries: Vec<(String, JsValue)> = if let Some(map) = files.dyn_ref::<js_sys::Map>() {
        let mut v = Vec::new();
        map.for_each(&mut |value, key| v.push((key.as_string().unwrap_or_default(), value)));
        v
    } else if files.is_object() {
        Object::entries(files.unchecked_ref())
            .iter()
            .map(|e| {
                let e: Array = e.unchecked_into();
                (e.get(0).as_string().unwrap_or_default(), e.get(1))
            })
            .collect()
    } else {
        return Err(err(
            "files must be a Map or an object of name -> File, Blob or Uint8Array",
        ));
    };
    let mut out = Vec::with_capacity(entries.len());
    let mut total = 0;
    for (name, value) in entries {
        let chunk = |v: &JsValue| -> Result<Box<[u8]>, JsValue> {
            if let Some(a) = v.dyn_ref::<Uint8Array>() {
                Ok(a.to_vec().into_boxed_slice())
            } else if let Some(b) = v.dyn_ref::<js_sys::ArrayBuffer>() {
                Ok(Uint8Array::new(b).to_vec().into_boxed_slice())
            } else {
                Err(err(format!(
                    "file {name:?}: expected a File, a Blob, a Uint8Array, an ArrayBuffer or an \
                     array of Uint8Arrays"
                )))
            }
        };
        let bytes: Box<dyn ByteSource> = if value.is_instance_of::<JsBlob>() {
            blob_source(value.unchecked_into(), files::base_name(&name)).await?
        } else {
            let chunks = if let Some(arr) = value.dyn_ref::<Array>() {
                arr.iter()
                    .map(|c| chunk(&c))
                    .collect::<Result<Vec<_>, _>>()?
            } else {
                vec![chunk(&value)?]
            };
            NamedFile::from_chunks(&name, chunks).bytes
        };
        total += bytes.len();
        let counted = reader::Counted::new(bytes, counter.clone(), Some(report_progress));
        out.push(NamedFile::new(&name, Box::new(counted)));
    }
    Ok((out, total))
}

/// Hands `trainer`'s checkpoint to `f` as a [`CheckpointFiles`].
async fn emit_checkpoint(trainer: &Trainer<'_>, f: &Function) -> Result<(), JsValue> {
    let ck = trainer.checkpoint().await.map_err(err)?;
    let files = Object::new();
    for (name, bytes) in ck.to_files().map_err(err)? {
        Reflect::set(
            &files,
            &JsValue::from_str(&name),
            &Uint8Array::from(&bytes[..]),
        )?;
    }
    let out = Object::new();
    Reflect::set(
        &out,
        &"step".into(),
        &JsValue::from_f64(ck.state.global_step as f64),
    )?;
    Reflect::set(
        &out,
        &"total_steps".into(),
        &JsValue::from_f64(ck.state.total_steps as f64),
    )?;
    Reflect::set(&out, &"files".into(), &files)?;
    f.call1(&JsValue::NULL, &out)?;
    Ok(())
}

/// A model name for `base_model_name_or_path`: the picked folder's name or the GGUF's file name.
fn model_name(files: &[(String, bool)]) -> String {
    for (path, gguf) in files {
        if *gguf {
            return files::base_name(path).to_string();
        }
    }
    for (path, _) in files {
        let p = path.replace('\\', "/");
        if let Some((dir, _)) = p.rsplit_once('/') {
            return files::base_name(dir).to_string();
        }
    }
    String::new()
}

fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            console_error(&format!("tinytune panicked: {info}"))
        }));
    });
}

/// tinytune in a browser: one WebGPU device, at most one model and one adapter at a time.
#[wasm_bindgen]
pub struct Tinytune {
    inner: Rc<Inner>,
}

#[wasm_bindgen]
impl Tinytune {
    /// The files a model URL stands for, `[{name, url}]`: a `.gguf`, or a Hugging Face folder (a
    /// folder URL holding `config.json`; `https://huggingface.co/ORG/NAME` means its
    /// `resolve/main/`) with its safetensors (the shards its index names) and tokenizer files.
    /// Rejects with a message when the URL is neither.
    #[wasm_bindgen(js_name = modelUrlFiles, unchecked_return_type = "Promise<{ name: string; url: string }[]>")]
    pub fn model_url_files(url: String) -> Promise {
        future_to_promise(async move {
            let out = Array::new();
            for (name, u) in model_url_files(&url).await? {
                let o = Object::new();
                Reflect::set(&o, &"name".into(), &name.into())?;
                Reflect::set(&o, &"url".into(), &u.into())?;
                out.push(&o);
            }
            Ok(out.into())
        })
    }

    /// Opens WebGPU (the adapter's own maximum limits, as the native runtime does). Rejects with a
    /// message saying so when the browser has no WebGPU or no adapter.
    pub async fn create() -> Result<Tinytune, JsError> {
        install_panic_hook();
        let navigator = global_get("navigator");
        let has_gpu = !navigator.is_undefined()
            && Reflect::get(&navigator, &JsValue::from_str("gpu"))
                .map(|g| !g.is_undefined() && !g.is_null())
                .unwrap_or(false);
        if !has_gpu {
            return Err(JsError::new(
                "WebGPU is not available in this browser (navigator.gpu is missing). Use a \
                 browser with WebGPU enabled (Chrome or Edge 113+, Safari 26+, or Firefox 141+ on \
                 Windows), on a secure origin (https or localhost).",
            ));
        }
        let gpu = Gpu::new(GpuOptions::default()).await.map_err(|e| match e {
            tinytune_gpu::GpuError::NoAdapter { .. } => JsError::new(
                "WebGPU is present but the browser offers no GPU adapter: WebGPU may be disabled \
                 or blocklisted for this GPU or driver (on Linux, Chrome needs \
                 chrome://flags/#enable-unsafe-webgpu or --enable-unsafe-webgpu).",
            ),
            e => JsError::new(&format!(
                "WebGPU is present but the GPU device cannot be opened: {e}"
            )),
        })?;
        let health = health::DeviceHealth::watch(&gpu);
        Ok(Tinytune {
            inner: Rc::new(Inner {
                gpu,
                health,
                model: RefCell::new(None),
                adapter: RefCell::new(None),
                stop: Cell::new(false),
                busy: Cell::new(None),
            }),
        })
    }

    /// The adapter, its features and limits, and the loaded model.
    #[wasm_bindgen(unchecked_return_type = "TinytuneInfo")]
    pub fn info(&self) -> Result<JsValue, JsError> {
        let g = &self.inner.gpu;
        let l = &g.limits;
        let features: Vec<String> = g.features.iter().map(|f| format!("{f:?}")).collect();
        let v = json!({
            "adapter": {
                "name": g.adapter.name, "backend": g.adapter.backend,
                "device_type": g.adapter.device_type, "driver": g.adapter.driver,
                "driver_info": g.adapter.driver_info,
            },
            "features": features,
            "kernels": g.kernel_info().to_string(),
            "limits": {
                "max_buffer_size": l.max_buffer_size,
                "max_storage_buffer_binding_size": l.max_storage_buffer_binding_size,
                "max_storage_buffers_per_shader_stage": l.max_storage_buffers_per_shader_stage,
                "max_compute_workgroup_storage_size": l.max_compute_workgroup_storage_size,
                "max_compute_invocations_per_workgroup": l.max_compute_invocations_per_workgroup,
                "max_compute_workgroup_size_x": l.max_compute_workgroup_size_x,
                "max_compute_workgroups_per_dimension": l.max_compute_workgroups_per_dimension,
            },
            "shaders": tinytune_gpu::shaders::SHADERS.len(),
            "model": self.inner.model.borrow().as_ref().map(|m| m.info.clone()),
            "has_adapter": self.inner.adapter.borrow().is_some(),
            "memory": memory_json(g),
            "device_lost": self.inner.health.lost().is_some(),
            "gpu_error": self.inner.health.check(g).err(),
        });
        to_js(&v).map_err(|_| JsError::new("info: JSON"))
    }

    /// Asks a running `train` (after its current step) or `generate` (after its current token) to
    /// finish; the adapter trained so far is kept.
    pub fn stop(&self) {
        self.inner.stop.set(true);
    }

    /// Loads a model from picked files, `{name: File | Blob | Uint8Array}`: one `.gguf`, or a
    /// Hugging Face folder's `config.json`, `*.safetensors`, `tokenizer.json` and
    /// `tokenizer_config.json`; or from a URL string (see [`Tinytune::model_url_files`]; each file
    /// is fetched as a `Blob`, which the browser keeps outside the JS heap and wasm memory). `quant`
    /// is `"nf4"` (QLoRA, default) or `"none"` (f32 base).
    /// Replaces any model and adapter. In a worker, `File`s / `Blob`s are read tensor by tensor
    /// (`FileReaderSync`): the file is never whole in memory. `onProgress` gets
    /// [`LoadProgress`] after the headers and after each tensor.
    #[wasm_bindgen(js_name = loadModel, unchecked_return_type = "Promise<ModelInfo>")]
    pub fn load_model(
        &self,
        #[wasm_bindgen(unchecked_param_type = "ModelFiles | string")] files: JsValue,
        quant: Option<String>,
        #[wasm_bindgen(js_name = onProgress, unchecked_param_type = "((progress: LoadProgress) => void) | null | undefined")]
        on_progress: Option<Function>,
    ) -> Promise {
        let inner = self.inner.clone();
        future_to_promise(async move {
            let _busy = inner.begin("loadModel")?;
            let (quant, blocks) = options::parse_load_options(quant.as_deref()).map_err(err)?;
            let t0 = (clock())();
            let counter = Arc::new(reader::LoadCounter::default());
            let files = match files.as_string() {
                Some(url) => {
                    let obj = Object::new();
                    for (name, u) in model_url_files(&url).await? {
                        let r = fetch(&u, "GET").await?;
                        if !response_ok(&r) {
                            let status = Reflect::get(&r, &"status".into())?;
                            return Err(err(format!(
                                "{u}: HTTP {}",
                                status.as_f64().unwrap_or(0.0)
                            )));
                        }
                        Reflect::set(&obj, &name.into(), &response_call(&r, "blob").await?)?;
                    }
                    obj.into()
                }
                None => files,
            };
            let (files, total_bytes) = named_files(&files, &counter).await?;
            let names: Vec<(String, bool)> = files
                .iter()
                .map(|f| {
                    (
                        f.name.clone(),
                        f.name.to_ascii_lowercase().ends_with(".gguf"),
                    )
                })
                .collect();
            let src = files::open_model(files).map_err(err)?;
            let _progress = ProgressGuard;
            if let Some(f) = on_progress {
                PROGRESS.with(|p| {
                    p.replace(Some(ProgressSink {
                        f,
                        total_tensors: src.tensors().len(),
                        total_bytes,
                    }))
                });
            }
            counter.start_tensors();
            report_progress(&counter);
            inner.model.replace(None);
            inner.adapter.replace(None);
            let plan = block_plan(&src, quant, &blocks).map_err(err)?;
            let load_opts = tinytune_model::LoadOptions {
                blocks: plan,
                ..Default::default()
            };
            let model = LlamaModel::load_with(&inner.gpu, &src, quant.quant(), &load_opts)
                .map_err(|e| gpu_err("loadModel")(format!("cannot load the model: {e}")))?;
            let tok = src
                .tokenizer()
                .map_err(|e| e.to_string())
                .and_then(|t| ModelTokenizer::new(t).map_err(|e| e.to_string()));
            // Surface device errors (out of memory, limits) now rather than at the first step.
            inner
                .gpu
                .sync()
                .map_err(|e| gpu_err("loadModel")(e.to_string()))?;
            let c = &model.config;
            // The old model and adapter are gone: what is alive now is this model.
            let model_bytes = inner.gpu.memory().live_bytes;
            let info = json!({
                "name": model_name(&names),
                "format": match src.format() {
                    tinytune_model::SourceFormat::Gguf => "gguf",
                    tinytune_model::SourceFormat::HfFolder => "hf",
                },
                "model_type": c.model_type.as_str(),
                "layers": c.num_hidden_layers,
                "hidden_size": c.hidden_size,
                "vocab_size": c.vocab_size,
                "max_position_embeddings": c.max_position_embeddings,
                "quant": quant.name(),
                "chat_template": tok.as_ref().is_ok_and(|t| t.template.is_some()),
                "tokenizer_error": tok.as_ref().err(),
                "load_s": (clock())() - t0,
                "bytes_read": counter.bytes(),
                "file_bytes": total_bytes,
                "model_bytes": model_bytes,
                "model_memory": model_memory_json(&model.memory()),
            });
            inner.model.replace(Some(Rc::new(Loaded {
                info: info.clone(),
                model,
                tok,
            })));
            to_js(&info)
        })
    }

    /// Fine-tunes LoRA adapters on `dataText` (a `.jsonl` or `.txt` file's contents, or a
    /// `Uint8Array` of a `.parquet` file's bytes; `dataName`'s extension says which). `optionsJson` takes `tinytune train`'s flag names and defaults
    /// (`lora_r`, `lora_alpha`, `learning_rate`, `num_steps` / `epochs`, `batch_size`, `seq_len`,
    /// `seed`, `lr_scheduler`, `warmup_steps`, `eval_split`, `save_every`, ...; `"adapter": true`
    /// starts from the loaded adapter). `onStep` gets each step's metrics as a JSON string
    /// ([`StepMetrics`]). `onCheckpoint` gets a [`CheckpointFiles`] every `save_every` steps, at
    /// the end and when stopped. `resume` (a checkpoint's `files`) continues that run with its own
    /// settings (the options are then ignored; the data must be the same). `stop()` ends the run
    /// early; the adapter trained so far becomes the current adapter.
    #[wasm_bindgen(unchecked_return_type = "Promise<TrainSummary>")]
    pub fn train(
        &self,
        #[wasm_bindgen(js_name = dataText, unchecked_param_type = "string | Uint8Array")]
        data_text: JsValue,
        #[wasm_bindgen(js_name = dataName)] data_name: String,
        #[wasm_bindgen(js_name = optionsJson)] options_json: String,
        #[wasm_bindgen(js_name = onStep, unchecked_param_type = "((metricsJson: string) => void) | null | undefined")]
        on_step: Option<Function>,
        #[wasm_bindgen(js_name = onCheckpoint, unchecked_param_type = "((checkpoint: CheckpointFiles) => void) | null | undefined")]
        on_checkpoint: Option<Function>,
        #[wasm_bindgen(unchecked_param_type = "ModelFiles | null | undefined")] resume: JsValue,
    ) -> Promise {
        let inner = self.inner.clone();
        future_to_promise(async move {
            let _busy = inner.begin("train")?;
            inner.gpu.reset_peak_memory();
            let loaded = inner.loaded()?;
            let tok = loaded
                .tok
                .as_ref()
                .map_err(|e| err(format!("the model has no usable tokenizer: {e}")))?;
            let opts = options::parse_train_options(&options_json).map_err(err)?;
            let base = loaded.info["name"].as_str().unwrap_or("").to_string();
            let resume = if resume.is_undefined() || resume.is_null() {
                None
            } else {
                let (files, _) = named_files(&resume, &Arc::default()).await?;
                let ck = Checkpoint::from_files(
                    |name| {
                        files
                            .iter()
                            .find(|f| f.name == name)
                            .and_then(|f| f.to_vec().ok())
                    },
                    "checkpoint",
                )
                .map_err(|e| err(format!("cannot resume: {e}")))?;
                Some(ck)
            };
            let from = match resume {
                Some(ck) => {
                    if opts.adapter {
                        return Err(err(
                            "give \"adapter\": true or a checkpoint to resume, not both",
                        ));
                    }
                    RunFrom::Resume(Box::new(ck))
                }
                None if opts.adapter => {
                    let t = inner.adapter.borrow().clone();
                    let t = t.ok_or_else(|| err("\"adapter\": true but no adapter is loaded"))?;
                    RunFrom::Adapter {
                        adapter: t.download(&inner.gpu).await.map_err(err)?,
                        name: "\"adapter\": true: the current adapter".into(),
                    }
                }
                None => RunFrom::Fresh,
            };
            let plan = plan_run(
                &opts,
                from,
                &base,
                vec![data_name.clone()],
                loaded.model.layers.len(),
                |t| tok.tok.encode(t, false).map_err(|e| e.to_string()),
            )
            .map_err(err)?;
            let resumed = plan.resumed();
            let data_config = plan.config.data_config();
            // Text (.jsonl, .txt), or a file's bytes (.parquet, or any of them).
            let data = match data_text.as_string() {
                Some(text) => Dataset::from_named_str(&data_name, &text, tok, &data_config),
                None if data_text.is_instance_of::<Uint8Array>() => {
                    let bytes = Uint8Array::from(data_text).to_vec();
                    Dataset::from_named_bytes(&data_name, &bytes, tok, &data_config)
                }
                None => {
                    return Err(err(format!(
                        "{data_name}: the data must be a string (.jsonl, .txt) or a Uint8Array \
                         (a .parquet file's bytes)"
                    )))
                }
            }
            .map_err(err)?;
            let mut eval_sets = Vec::with_capacity(opts.eval_data.len());
            for (name, f) in &opts.eval_data {
                let set = Dataset::from_named_str(&f.file, &f.text, tok, &data_config)
                    .map_err(|e| err(format!("eval_data.{name}: {e}")))?;
                eval_sets.push((name.clone(), set));
            }
            if data.examples.is_empty() {
                return Err(err(format!("{data_name}: the dataset holds no examples")));
            }
            let s = &data.stats;
            let data_stats = json!({
                "records": s.records, "examples": s.examples, "tokens": s.tokens,
                "targets": s.targets, "truncated": s.truncated, "dropped": s.dropped,
            });
            let mut session = TrainSession::new(&inner.gpu, &loaded.model, plan, data, clock())
                .map_err(|e| gpu_err("train")(e.to_string()))?;
            for (name, set) in eval_sets {
                session.add_eval_set(&name, set).map_err(err)?;
            }
            let (n_train, n_eval) = session.trainer.n_examples();
            let total = session.trainer.total_steps();
            let eval_before = session
                .eval_before()
                .await
                .map_err(|e| gpu_err("train")(e.to_string()))?;
            let eval_data_before = eval_before.as_ref().map(|r| &r.eval_data);
            let eval_data_before = serde_json::to_value(eval_data_before).map_err(err)?;
            let eval_before = eval_before.and_then(|r| r.eval_loss);
            let mut stopped = false;
            let mut final_loss = None;
            let emit_step = |ev: &StepEvent| -> Result<(), JsValue> {
                if let Some(f) = &on_step {
                    let mut v = serde_json::to_value(&ev.rec).map_err(err)?;
                    v["total_steps"] = json!(ev.total_steps);
                    f.call1(&JsValue::NULL, &JsValue::from_str(&v.to_string()))?;
                }
                Ok(())
            };
            loop {
                if inner.stop.get() {
                    stopped = true;
                    // The step still in flight is reported before the checkpoint that holds it.
                    let last = session.stop().await;
                    if let Some(ev) = last.map_err(|e| gpu_err("train")(e.to_string()))? {
                        final_loss = Some(ev.rec.loss);
                        emit_step(&ev)?;
                    }
                    if session.checkpoint_on_stop() {
                        if let Some(f) = &on_checkpoint {
                            emit_checkpoint(&session.trainer, f).await?;
                        }
                    }
                    break;
                }
                let step = session.step().await;
                let Some(ev) = step.map_err(|e| gpu_err("train")(e.to_string()))? else {
                    break;
                };
                final_loss = Some(ev.rec.loss);
                emit_step(&ev)?;
                if let Some(f) = &on_checkpoint {
                    if ev.checkpoint_due {
                        emit_checkpoint(&session.trainer, f).await?;
                    }
                }
                yield_now().await;
            }
            let trainer = session.trainer;
            let summary = json!({
                "resumed": resumed,
                "peft": trainer.method().name(),
                "checkpoints": on_checkpoint.is_some(),
                "steps": trainer.state.global_step,
                "total_steps": total,
                "stopped": stopped,
                "n_params": trainer.n_params(),
                "n_train": n_train,
                "n_eval": n_eval,
                "tokens_seen": trainer.state.tokens_seen,
                "elapsed_s": trainer.state.elapsed_s,
                "eval_loss_before": eval_before,
                "eval_data_before": eval_data_before,
                "final_loss": final_loss,
                "data": data_stats,
                "peak_bytes": inner.gpu.memory().peak_bytes,
            });
            // The trained adapter stays on the device as the current adapter.
            let tuned = trainer.into_adapter();
            if summary["steps"].as_u64().unwrap_or(0) > 0 {
                inner.adapter.replace(Some(Rc::new(tuned)));
            }
            to_js(&summary)
        })
    }

    /// Generates after `prompt` (rendered as a user message with the model's chat template unless
    /// `"raw": true`). `optionsJson` takes `tinytune generate`'s names and defaults
    /// (`max_new_tokens` 128, `temperature` 0 = greedy, `top_k`, `top_p`, `repetition_penalty`,
    /// `seed`, `system`, `max_length`) and `"adapter": false` for the base model alone (default:
    /// the current adapter when there is one). `onToken` gets each new piece of text.
    #[wasm_bindgen(unchecked_return_type = "Promise<GenerateResult>")]
    pub fn generate(
        &self,
        prompt: String,
        #[wasm_bindgen(js_name = optionsJson)] options_json: String,
        #[wasm_bindgen(js_name = onToken, unchecked_param_type = "((piece: string) => void) | null | undefined")]
        on_token: Option<Function>,
    ) -> Promise {
        let inner = self.inner.clone();
        future_to_promise(async move {
            let _busy = inner.begin("generate")?;
            let loaded = inner.loaded()?;
            let tok = loaded
                .tok
                .as_ref()
                .map_err(|e| err(format!("the model has no usable tokenizer: {e}")))?;
            let opts = options::parse_gen_options(&options_json).map_err(err)?;
            opts.sampling().validate().map_err(err)?;
            let ids = prompt_ids(tok, &prompt, &opts).map_err(err)?;
            let tuned = inner.adapter.borrow().clone();
            let use_adapter = opts.adapter.unwrap_or(tuned.is_some());
            if use_adapter && tuned.is_none() {
                return Err(err("no adapter: train or loadAdapter first"));
            }
            let used = tuned.as_deref().filter(|_| use_adapter);
            let mut session =
                GenerateSession::new(&inner.gpu, &loaded.model, Some(&tok.tok), used, ids, &opts)
                    .map_err(gpu_err("generate"))?;
            let mut stream = TextStream::new(&tok.tok, true);
            let mut text = String::new();
            let mut failure: Option<JsValue> = None;
            let now = clock();
            let t0 = now();
            let mut first_at = None;
            let mut last_at = t0;
            let gen = session
                .run(|t| {
                    last_at = now();
                    first_at.get_or_insert(last_at);
                    match stream.push(t) {
                        Ok(piece) if !piece.is_empty() => {
                            text.push_str(&piece);
                            if let Some(f) = &on_token {
                                if let Err(e) = f.call1(&JsValue::NULL, &JsValue::from_str(&piece))
                                {
                                    failure = Some(e);
                                    return false;
                                }
                            }
                        }
                        Ok(_) => {}
                        Err(e) => {
                            failure = Some(err(e));
                            return false;
                        }
                    }
                    !inner.stop.get()
                })
                .await
                .map_err(err)?;
            if let Some(e) = failure {
                return Err(e);
            }
            let rest = stream.finish().map_err(err)?;
            if !rest.is_empty() {
                text.push_str(&rest);
                if let Some(f) = &on_token {
                    f.call1(&JsValue::NULL, &JsValue::from_str(&rest))?;
                }
            }
            let n = gen.tokens.len();
            let first = first_at.unwrap_or(t0);
            let result = json!({
                "text": text,
                "tokens": gen.tokens,
                "prompt_tokens": session.prompt().len(),
                "adapter": used.is_some(),
                "stop": match gen.stop {
                    StopReason::Eos => "eos",
                    StopReason::MaxNewTokens => "max_new_tokens",
                    StopReason::MaxLength => "max_length",
                    StopReason::Callback => "stopped",
                },
                "first_token_s": first - t0,
                "tokens_per_s": if n > 1 && last_at > first {
                    Some((n - 1) as f64 / (last_at - first))
                } else {
                    None
                },
            });
            to_js(&result)
        })
    }

    /// The current adapter's two files in PEFT's layout.
    #[wasm_bindgen(js_name = saveAdapter, unchecked_return_type = "Promise<AdapterFiles>")]
    pub fn save_adapter(&self) -> Promise {
        let inner = self.inner.clone();
        future_to_promise(async move {
            let tuned = inner
                .adapter
                .borrow()
                .clone()
                .ok_or_else(|| err("no adapter: train or loadAdapter first"))?;
            let out = Object::new();
            let files = tuned.download(&inner.gpu).await.map_err(err)?;
            for (name, bytes) in files.to_files().map_err(err)? {
                Reflect::set(
                    &out,
                    &JsValue::from_str(&name),
                    &Uint8Array::from(&bytes[..]),
                )?;
            }
            Ok(out.into())
        })
    }

    /// Loads a PEFT adapter (`adapter_config.json` + `adapter_model.safetensors`) for the loaded
    /// model; it becomes the current adapter (for `generate`, `saveAdapter`, and `train` with
    /// `"adapter": true`).
    #[wasm_bindgen(js_name = loadAdapter, unchecked_return_type = "Promise<AdapterInfo>")]
    pub fn load_adapter(
        &self,
        #[wasm_bindgen(unchecked_param_type = "ModelFiles")] files: JsValue,
    ) -> Promise {
        let inner = self.inner.clone();
        future_to_promise(async move {
            let _busy = inner.begin("loadAdapter")?;
            let loaded = inner.loaded()?;
            let (files, _) = named_files(&files, &Arc::default()).await?;
            let adapter = files::open_adapter(files).map_err(err)?;
            let mut info = json!({
                "peft": adapter.method().name(),
                "num_virtual_tokens": adapter.virtual_tokens(),
            });
            match &adapter {
                PeftAdapter::Lora(a) => {
                    let c = &a.config;
                    let mut targets: Vec<&str> =
                        a.weights.pairs.keys().map(|k| k.module.name()).collect();
                    targets.sort_unstable();
                    targets.dedup();
                    info["r"] = json!(c.r);
                    info["lora_alpha"] = json!(c.lora_alpha);
                    info["target_modules"] = json!(targets);
                    info["n_params"] = json!(a.weights.n_params());
                }
                PeftAdapter::Prompt(a) => info["n_params"] = json!(a.embeddings.len()),
                PeftAdapter::Prefix(a) => info["n_params"] = json!(a.prefix.len()),
            }
            let t = AdapterGpu::upload(&inner.gpu, &loaded.model, &adapter).map_err(err)?;
            inner.adapter.replace(Some(Rc::new(t)));
            to_js(&info)
        })
    }
}
