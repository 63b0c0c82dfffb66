//! bitsandbytes 4-bit (NF4) checkpoints, as transformers saves a model loaded with
//! `BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4")`: the writer behind
//! `tinytune quantize` (this module), and the format a reader of such folders shares.
//!
//! # One safetensors file ([`QuantizePlan`])
//! The 2-D float tensors (all, named ones, or the decoder's linear weights) are NF4-quantized on the
//! GPU and written in the layout of bitsandbytes' `QuantState.as_dict(packed=True)`: `NAME` (packed
//! codes, U8 `[n/2, 1]`), `NAME.absmax`, `NAME.quant_map`, with double quantization
//! `NAME.nested_absmax` and `NAME.nested_quant_map`, and `NAME.quant_state.bitsandbytes__nf4` (U8,
//! the `json.dumps` of the other fields, see [`pyrepr`]). Other tensors are copied (cast to the
//! model's dtype when asked) and the file's `__metadata__` is kept.
//!
//! The output is streamed to a seekable writer: [`QuantizePlan::new`] lays out every tensor and
//! reserves the header (the JSON quant-state blobs, whose length depends on the double-quant offset
//! the GPU computes, go last with an upper bound on their length), [`QuantizePlan::write`] writes
//! each tensor at its offset as soon as it is computed and the final header (padded with spaces, as
//! the safetensors format allows) last.
//!
//! # A model folder ([`ModelFolder`])
//! What transformers' `save_pretrained` writes: each weight file (or shard) quantized as above,
//! restricted to the decoder's linear weights after converting the float tensors to the dtype
//! `config.json` declares; the shard index lists the new tensor names; `config.json` gains
//! [`quantization_config`]. The caller writes the files (temporary file, then rename) in the order
//! it likes; `config.json` last marks a complete folder.

pub mod pyrepr;
pub mod read;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use serde_json::Value;
use tinytune_gpu::nf4::{Absmax, Nf4Tensor, DYNAMIC_MAP, NESTED_BLOCK, NF4};
use tinytune_gpu::ops::nf4;
use tinytune_gpu::Gpu;

use crate::float::FloatDtype;
use crate::safetensors::{header_json, SafetensorsFile, StDtype, StEntry, StTensorInfo};
use crate::targets::{linear_group, LINEARS};
use crate::{format_err, ModelError, Result};
use pyrepr::{quant_state_json, MAX_FLOAT_REPR};

pub use tinytune_gpu::nf4::{valid_block_size, DEFAULT_BLOCK};

/// Suffix of the JSON blob transformers writes for an NF4 quant state.
pub const QUANT_STATE_SUFFIX: &str = ".quant_state.bitsandbytes__nf4";

/// The shard index of a sharded Hugging Face folder.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// Which tensors of a file are quantized.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Select {
    /// Every 2-D F32/F16/BF16 tensor.
    All,
    /// Only these (validated: each must exist and be quantizable).
    Names(Vec<String>),
    /// The decoder's linear layer weights, `model.layers.*.{self_attn,mlp}.*_proj.weight`: what
    /// transformers' bitsandbytes integration turns into `Linear4bit` in a Llama-family model.
    DecoderLinears,
}

/// How one safetensors file is quantized.
#[derive(Clone, Debug)]
pub struct QuantizeOptions {
    pub select: Select,
    /// Convert every F32/F16/BF16 tensor to this dtype first (quantized ones before quantizing).
    pub cast: Option<FloatDtype>,
    /// NF4 block size (see [`valid_block_size`]) of every tensor the plan does not name.
    pub block: usize,
    /// Block sizes of named tensors (a per-layer plan's `BlockPlan::tensor_blocks`), overriding
    /// `block`.
    pub blocks: HashMap<String, usize>,
    /// Double-quantize the absmax (8-bit codes, nested blocks of 256).
    pub double_quant: bool,
    /// Write dequant(quant(x)) as F32 under each quantized tensor's own name and shape instead of
    /// the packed layout.
    pub dequantize: bool,
}

impl QuantizeOptions {
    /// The block size tensor `name` is quantized with.
    pub fn block_of(&self, name: &str) -> usize {
        self.blocks.get(name).copied().unwrap_or(self.block)
    }
}

/// Progress of [`QuantizePlan::write`], reported per input tensor.
#[derive(Clone, Copy, Debug)]
pub enum Progress<'a> {
    /// This tensor is being processed.
    Tensor(&'a str),
    /// The tensor processed last held this many input bytes.
    Done(u64),
}

/// What [`QuantizePlan::write`] wrote.
#[derive(Clone, Debug)]
pub struct FileSummary {
    /// Tensors quantized.
    pub nquant: usize,
    /// Tensors copied (or cast).
    pub ncopied: usize,
    /// Bytes of the input file.
    pub bytes_in: u64,
    /// Bytes written (the whole output file).
    pub bytes_out: u64,
    /// Every output tensor name.
    pub names: Vec<String>,
    /// Bytes of tensor data (without the header).
    pub data_bytes: u64,
}

/// What happens to one input tensor.
struct Item {
    info: StTensorInfo,
    /// `Some((rows, cols))` when quantized.
    quantize: Option<(usize, usize)>,
}

/// The layout of one quantized safetensors file, computed before anything is written or the GPU is
/// needed.
pub struct QuantizePlan {
    opts: QuantizeOptions,
    items: Vec<Item>,
    /// Output tensors whose size is known up front, in file order.
    fixed: Vec<StEntry>,
    /// Quant-state blobs (name, upper bound of the length), in file order after `fixed`.
    blobs: Vec<(String, usize)>,
    offsets: HashMap<String, (usize, usize)>,
    fixed_total: usize,
    user_meta: Option<BTreeMap<String, String>>,
    /// Bytes reserved for the header (a multiple of 8).
    reserve: usize,
}

impl QuantizePlan {
    /// Plans the output of `file`; validates the selected names. Errors name `file`.
    pub fn new(file: &SafetensorsFile, opts: QuantizeOptions) -> Result<QuantizePlan> {
        let inp = file.name().to_string();
        if !valid_block_size(opts.block) {
            return Err(ModelError::Option(format!(
                "NF4 block size {} is not one bitsandbytes accepts: use 32, 64, 128, 256, 512, \
                 1024, 2048 or 4096",
                opts.block
            )));
        }
        if let Some((name, b)) = opts.blocks.iter().find(|(_, &b)| !valid_block_size(b)) {
            return Err(ModelError::Option(format!(
                "NF4 block size {b} of {name} is not one bitsandbytes accepts: use 32, 64, 128, \
                 256, 512, 1024, 2048 or 4096"
            )));
        }
        let items = plan(file, &opts.select, &inp)?;
        let (mut fixed, mut blobs) = outputs(&items, &opts, &inp)?;
        // safetensors' own order (larger dtypes first, then by name) keeps every tensor aligned;
        // the quant-state blobs (U8, any length) go last because their length is known only at
        // the end.
        fixed.sort_by(|a, b| {
            a.dtype
                .cmp_alignment(&b.dtype)
                .then_with(|| a.name.cmp(&b.name))
        });
        blobs.sort_by(|a, b| a.0.cmp(&b.0));
        let mut offsets = HashMap::with_capacity(fixed.len());
        let mut fixed_total = 0usize;
        for e in &fixed {
            offsets.insert(e.name.clone(), (fixed_total, fixed_total + e.len));
            fixed_total += e.len;
        }
        let user_meta = file.metadata_entry().cloned();
        let bound = layout_header(&fixed, &blobs, user_meta.as_ref())?;
        Ok(QuantizePlan {
            opts,
            items,
            fixed,
            blobs,
            offsets,
            fixed_total,
            user_meta,
            reserve: bound.len().next_multiple_of(8),
        })
    }

    /// Tensors that will be quantized (a GPU is needed when this is not 0).
    pub fn nquant(&self) -> usize {
        self.items.iter().filter(|i| i.quantize.is_some()).count()
    }

    /// Bytes of input tensor data (the total of [`Progress::Done`]).
    pub fn input_bytes(&self) -> u64 {
        self.items
            .iter()
            .map(|i| i.info.data_offsets.1 - i.info.data_offsets.0)
            .sum()
    }

    /// Writes the quantized file to `out` (positioned anywhere; the file is written from offset 0
    /// and is complete at [`FileSummary::bytes_out`] bytes). `gpu` is required when
    /// [`QuantizePlan::nquant`] is not 0. `out_name` names the output in I/O errors.
    pub async fn write<W: Write + Seek>(
        &self,
        file: &SafetensorsFile,
        gpu: Option<&Gpu>,
        out: &mut W,
        out_name: &str,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<FileSummary> {
        let opts = &self.opts;
        let double_quant = opts.double_quant;
        let inp = file.name().to_string();
        let werr = |e: std::io::Error| ModelError::Io {
            path: out_name.to_string(),
            source: e,
        };
        let data_start = 8 + self.reserve as u64;
        let nquant = self.nquant();
        let gpu = match gpu {
            Some(g) => Some(g),
            None if nquant == 0 => None,
            None => {
                return Err(ModelError::Shape(format!(
                    "quantizing {inp} needs a GPU ({nquant} tensor(s) to quantize)"
                )))
            }
        };

        let put = |out: &mut W, name: &str, bytes: &[u8]| -> Result<()> {
            let &(s, e) = self.offsets.get(name).ok_or_else(|| {
                format_err(format!(
                    "internal error: no slot for output tensor {name:?}"
                ))
            })?;
            if e - s != bytes.len() {
                return Err(format_err(format!(
                    "internal error: output tensor {name:?} has {} bytes, {} planned",
                    bytes.len(),
                    e - s
                )));
            }
            write_at(out, data_start + s as u64, bytes).map_err(werr)
        };
        let mut blob_data: Vec<(String, Vec<u8>)> = Vec::with_capacity(self.blobs.len());
        for item in &self.items {
            let name = item.info.name.as_str();
            let bytes = file.raw(name)?;
            progress(Progress::Tensor(name));
            let stored = &item.info.dtype;
            let cast = out_dtype(stored, opts.cast);
            match (item.quantize, gpu) {
                (Some((rows, cols)), Some(gpu)) => {
                    let block = opts.block_of(name);
                    let fail = |e: ModelError| {
                        ModelError::Tensor(format!("cannot quantize tensor {name:?} of {inp}: {e}"))
                    };
                    let from = stored.float().expect("quantized tensors are floats");
                    let mut x = from.decode(&bytes);
                    if let Some(c) = cast.float() {
                        if cast != *stored {
                            c.round(&mut x);
                        }
                    }
                    if opts.dequantize {
                        let y = gpu_roundtrip(gpu, name, &x, block, double_quant)
                            .await
                            .map_err(fail)?;
                        put(out, name, bytemuck::cast_slice(&y))?;
                    } else {
                        let t = gpu_quantize(gpu, name, &x, block, double_quant)
                            .await
                            .map_err(fail)?;
                        put(out, name, &t.packed)?;
                        put(
                            out,
                            &format!("{name}.quant_map"),
                            bytemuck::cast_slice(&NF4),
                        )?;
                        let offset = match &t.absmax {
                            Absmax::F32(a) => {
                                put(out, &format!("{name}.absmax"), bytemuck::cast_slice(a))?;
                                None
                            }
                            Absmax::Double(d) => {
                                put(out, &format!("{name}.absmax"), &d.codes)?;
                                put(
                                    out,
                                    &format!("{name}.nested_absmax"),
                                    bytemuck::cast_slice(&d.nested_absmax),
                                )?;
                                put(
                                    out,
                                    &format!("{name}.nested_quant_map"),
                                    bytemuck::cast_slice(&DYNAMIC_MAP),
                                )?;
                                Some(d.offset)
                            }
                        };
                        let json = quant_state_json(torch_name(&cast), block, rows, cols, offset);
                        blob_data.push((format!("{name}{QUANT_STATE_SUFFIX}"), json.into_bytes()));
                    }
                }
                _ if cast != *stored => {
                    let (from, to) = (stored.float(), cast.float());
                    let (Some(from), Some(to)) = (from, to) else {
                        return Err(ModelError::Unsupported(format!(
                            "cannot convert tensor {name:?} of {inp} from {stored} to {cast}"
                        )));
                    };
                    put(out, name, &to.encode(&from.decode(&bytes)))?;
                }
                _ => put(out, name, &bytes)?,
            }
            progress(Progress::Done(bytes.len() as u64));
        }

        // The blobs, in the order (and therefore at the offsets) the header lists them.
        blob_data.sort_by(|a, b| a.0.cmp(&b.0));
        let actual: Vec<(String, usize)> = blob_data
            .iter()
            .map(|(n, b)| (n.clone(), b.len()))
            .collect();
        if actual
            .iter()
            .map(|b| &b.0)
            .ne(self.blobs.iter().map(|b| &b.0))
        {
            return Err(format_err(
                "internal error: the quant-state blobs differ from the plan",
            ));
        }
        let mut pos = data_start + self.fixed_total as u64;
        for (_, b) in &blob_data {
            write_at(out, pos, b).map_err(werr)?;
            pos += b.len() as u64;
        }
        let mut header = layout_header(&self.fixed, &actual, self.user_meta.as_ref())?;
        if header.len() > self.reserve {
            return Err(format_err(format!(
                "internal error: header of {} bytes exceeds the {} reserved",
                header.len(),
                self.reserve
            )));
        }
        header.resize(self.reserve, b' ');
        write_at(out, 0, &(self.reserve as u64).to_le_bytes()).map_err(werr)?;
        write_at(out, 8, &header).map_err(werr)?;
        out.flush().map_err(werr)?;

        let mut names: Vec<String> = self.fixed.iter().map(|e| e.name.clone()).collect();
        names.extend(actual.iter().map(|b| b.0.clone()));
        Ok(FileSummary {
            nquant,
            ncopied: self.items.len() - nquant,
            bytes_in: file.byte_len(),
            bytes_out: pos,
            names,
            data_bytes: pos - data_start,
        })
    }
}

/// `quantization_config` exactly as transformers 5.24 writes it to `config.json` for a model loaded
/// with `BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
/// bnb_4bit_use_double_quant=...)` (compute dtype left at its default, float32).
pub fn quantization_config(double_quant: bool) -> Value {
    serde_json::json!({
        "_load_in_4bit": true,
        "_load_in_8bit": false,
        "bnb_4bit_compute_dtype": "float32",
        "bnb_4bit_quant_storage": "uint8",
        "bnb_4bit_quant_type": "nf4",
        "bnb_4bit_use_double_quant": double_quant,
        "llm_int8_enable_fp32_cpu_offload": false,
        "llm_int8_has_fp16_weight": false,
        "llm_int8_skip_modules": null,
        "llm_int8_threshold": 6.0,
        "load_in_4bit": true,
        "load_in_8bit": false,
        "quant_method": "bitsandbytes"
    })
}

/// A Hugging Face model folder to quantize: its `config.json`, the dtype it declares and its weight
/// files.
///
/// Quantizing it mirrors `AutoModelForCausalLM.from_pretrained(MODEL_DIR,
/// quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
/// bnb_4bit_use_double_quant=True))` followed by `save_pretrained(OUT_DIR)`: float tensors take
/// the dtype `config.json` declares (what transformers' default `dtype="auto"` loads), the
/// decoder's linear weights are quantized from those values ([`ModelFolder::options`]), everything
/// else (embeddings, norms, biases, lm_head) is kept, and `config.json` gains
/// [`quantization_config`]. Shards stay shards (the index lists the new names).
pub struct ModelFolder {
    config: Value,
    /// The dtype `config.json` declares (`dtype`, else `torch_dtype`), when it is a float one.
    pub cast: Option<FloatDtype>,
    /// The weight files: `model.safetensors`, or the shards the index names (sorted).
    pub files: Vec<String>,
    /// The shard index, when the folder is sharded.
    index: Option<Value>,
}

impl ModelFolder {
    /// Reads `dir`'s `config.json` and weight file list. Errors when the folder is not a model
    /// folder or is already quantized.
    pub fn open(dir: &Path) -> Result<ModelFolder> {
        let inp = dir.display();
        let cfg_path = dir.join("config.json");
        let cfg_text = std::fs::read_to_string(&cfg_path).map_err(|e| {
            format_err(format!(
                "{inp} is a folder but not a model folder: cannot read its config.json: {e}"
            ))
        })?;
        let config: Value = serde_json::from_str(&cfg_text)
            .map_err(|e| format_err(format!("{} is not valid JSON: {e}", cfg_path.display())))?;
        let obj = config
            .as_object()
            .ok_or_else(|| format_err(format!("{} is not a JSON object", cfg_path.display())))?;
        if obj.contains_key("quantization_config") {
            return Err(format_err(format!(
                "{} already has a quantization_config: {inp} is already quantized",
                cfg_path.display()
            )));
        }
        let cast = ["dtype", "torch_dtype"]
            .iter()
            .find_map(|k| obj.get(*k).and_then(Value::as_str))
            .and_then(FloatDtype::from_torch_name);

        let mut index = None;
        let files: Vec<String> = if dir.join("model.safetensors").is_file() {
            vec!["model.safetensors".into()]
        } else if dir.join(INDEX_FILE).is_file() {
            let p = dir.join(INDEX_FILE);
            let text = std::fs::read_to_string(&p)
                .map_err(|e| format_err(format!("cannot read {}: {e}", p.display())))?;
            let v: Value = serde_json::from_str(&text)
                .map_err(|e| format_err(format!("{} is not valid JSON: {e}", p.display())))?;
            let map = v
                .get("weight_map")
                .and_then(Value::as_object)
                .ok_or_else(|| format_err(format!("{} has no weight_map object", p.display())))?;
            let mut files = BTreeSet::new();
            for (k, f) in map {
                let f = f
                    .as_str()
                    .filter(|f| !f.contains('/') && !f.contains('\\') && *f != "..")
                    .ok_or_else(|| {
                        format_err(format!(
                            "{}: weight_map[{k:?}] is not a plain file name",
                            p.display()
                        ))
                    })?;
                files.insert(f.to_string());
            }
            index = Some(v);
            files.into_iter().collect()
        } else {
            return Err(format_err(format!(
                "{inp} has no model.safetensors or {INDEX_FILE}"
            )));
        };
        Ok(ModelFolder {
            config,
            cast,
            files,
            index,
        })
    }

    /// How each weight file is quantized: the decoder's linear weights, NF4 with the block sizes
    /// of `blocks` (default: block 64), after the cast to [`ModelFolder::cast`]. Every layer's own
    /// quant state records its block size, so mixed sizes load in transformers as they are.
    pub fn options(&self, double_quant: bool, blocks: HashMap<String, usize>) -> QuantizeOptions {
        QuantizeOptions {
            select: Select::DecoderLinears,
            cast: self.cast,
            block: DEFAULT_BLOCK,
            blocks,
            double_quant,
            dequantize: false,
        }
    }

    /// The output shard index (`None` for a single file): the input's with `weight_map` (output
    /// tensor name -> file) and `metadata.total_size` (bytes of tensor data) replaced; the text
    /// written to [`INDEX_FILE`].
    pub fn index_json(
        &self,
        weight_map: serde_json::Map<String, Value>,
        data_bytes: u64,
    ) -> Option<String> {
        let mut v = self.index.clone()?;
        if let Some(o) = v.as_object_mut() {
            o.insert("weight_map".into(), Value::Object(weight_map));
            let meta = o.entry("metadata").or_insert_with(|| serde_json::json!({}));
            if let Some(m) = meta.as_object_mut() {
                m.insert("total_size".into(), serde_json::json!(data_bytes));
            }
        }
        Some(pretty(&v))
    }

    /// The output `config.json` text: the input's with [`quantization_config`] added.
    pub fn config_json(&self, double_quant: bool) -> String {
        let mut config = self.config.clone();
        if let Some(o) = config.as_object_mut() {
            o.insert(
                "quantization_config".into(),
                quantization_config(double_quant),
            );
        }
        pretty(&config)
    }
}

/// `json.dumps(indent=2)`-style text with a final newline, as transformers writes JSON files.
fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).expect("JSON values serialize") + "\n"
}

/// Whether `name` is a decoder linear weight transformers quantizes:
/// `model.layers.<i>.<group>.<proj>.weight` for the seven projections of
/// [`crate::targets::LINEARS`] in their groups.
pub fn is_decoder_linear(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("model.layers.") else {
        return false;
    };
    let Some((layer, rest)) = rest.split_once('.') else {
        return false;
    };
    if layer.is_empty() || !layer.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let Some((block, rest)) = rest.split_once('.') else {
        return false;
    };
    let Some(proj) = rest.strip_suffix(".weight") else {
        return false;
    };
    LINEARS
        .iter()
        .position(|&l| l == proj)
        .is_some_and(|t| linear_group(t) == block)
}

/// The dtype a tensor is written (and quantized) in: `cast` for float tensors, else its own.
fn out_dtype(stored: &StDtype, cast: Option<FloatDtype>) -> StDtype {
    match cast {
        Some(c) if stored.float().is_some() => c.into(),
        _ => stored.clone(),
    }
}

/// The torch name bitsandbytes writes for a quantized tensor's dtype.
fn torch_name(d: &StDtype) -> &'static str {
    d.float().map_or("float32", FloatDtype::torch_name)
}

/// Decides which tensors are quantized; validates the names of [`Select::Names`].
fn plan(file: &SafetensorsFile, select: &Select, inp: &str) -> Result<Vec<Item>> {
    let wanted: &[String] = match select {
        Select::Names(n) => n,
        _ => &[],
    };
    let quantizable = |info: &StTensorInfo| {
        info.shape.len() == 2 && info.dtype.float().is_some() && info.shape[0] * info.shape[1] > 0
    };
    for t in wanted {
        let info = file
            .info(t)
            .ok_or_else(|| ModelError::Tensor(format!("tensor {t:?} not found in {inp}")))?;
        if info.shape.len() != 2 {
            return Err(ModelError::Tensor(format!(
                "tensor {t:?} of {inp} is {}-D (shape {:?}); only 2-D tensors can be quantized",
                info.shape.len(),
                info.shape
            )));
        }
        if info.dtype.float().is_none() {
            return Err(ModelError::Tensor(format!(
                "tensor {t:?} of {inp} has dtype {}; only F32, F16 and BF16 tensors can be \
                 quantized",
                info.dtype
            )));
        }
        if !quantizable(info) {
            return Err(ModelError::Tensor(format!(
                "tensor {t:?} of {inp} has no elements (shape {:?})",
                info.shape
            )));
        }
    }
    let only: Option<HashSet<&str>> =
        (!wanted.is_empty()).then(|| wanted.iter().map(String::as_str).collect());
    Ok(file
        .tensors()
        .iter()
        .map(|info| {
            let selected = match select {
                Select::All => true,
                Select::Names(_) => only
                    .as_ref()
                    .is_some_and(|o| o.contains(info.name.as_str())),
                Select::DecoderLinears => is_decoder_linear(&info.name),
            };
            let quantize = (selected && quantizable(info)).then(|| (info.shape[0], info.shape[1]));
            Item {
                info: info.clone(),
                quantize,
            }
        })
        .collect())
}

/// The output tensors of known size, and the quant-state blobs with an upper bound of their length.
#[allow(clippy::type_complexity)]
fn outputs(
    items: &[Item],
    opts: &QuantizeOptions,
    inp: &str,
) -> Result<(Vec<StEntry>, Vec<(String, usize)>)> {
    let double_quant = opts.double_quant;
    let mut fixed = Vec::new();
    let mut blobs = Vec::new();
    let mut seen: HashMap<String, String> = HashMap::new();
    let mut claim = |name: &str, src: &str| -> Result<()> {
        if let Some(prev) = seen.insert(name.to_string(), src.to_string()) {
            let (a, b) = if prev == name {
                (src, prev.as_str())
            } else {
                (prev.as_str(), src)
            };
            return Err(ModelError::Tensor(format!(
                "output tensor {name:?} (from tensor {a:?}) would collide with tensor {b:?} of \
                 {inp}; rename one of them"
            )));
        }
        Ok(())
    };
    for item in items {
        let name = item.info.name.as_str();
        let Some((rows, cols)) = item.quantize else {
            claim(name, name)?;
            let dtype = out_dtype(&item.info.dtype, opts.cast);
            fixed.push(StEntry::new(name, dtype, item.info.shape.clone())?);
            continue;
        };
        let n = rows * cols;
        if opts.dequantize {
            claim(name, name)?;
            fixed.push(StEntry::new(name, StDtype::F32, vec![rows, cols])?);
            continue;
        }
        let block = opts.block_of(name);
        let nblocks = n.div_ceil(block);
        let mut add = |suffix: &str, dtype: StDtype, shape: Vec<usize>| -> Result<()> {
            let full = format!("{name}{suffix}");
            claim(&full, name)?;
            fixed.push(StEntry::new(full, dtype, shape)?);
            Ok(())
        };
        add("", StDtype::U8, vec![n.div_ceil(2), 1])?;
        if double_quant {
            add(".absmax", StDtype::U8, vec![nblocks])?;
            add(
                ".nested_absmax",
                StDtype::F32,
                vec![nblocks.div_ceil(NESTED_BLOCK)],
            )?;
            add(".nested_quant_map", StDtype::F32, vec![DYNAMIC_MAP.len()])?;
        } else {
            add(".absmax", StDtype::F32, vec![nblocks])?;
        }
        add(".quant_map", StDtype::F32, vec![NF4.len()])?;
        let blob = format!("{name}{QUANT_STATE_SUFFIX}");
        claim(&blob, name)?;
        let dtype = torch_name(&out_dtype(&item.info.dtype, opts.cast));
        let bound = if double_quant {
            quant_state_json(dtype, block, rows, cols, Some(0.0)).len() - "0.0".len()
                + MAX_FLOAT_REPR
        } else {
            quant_state_json(dtype, block, rows, cols, None).len()
        };
        blobs.push((blob, bound));
    }
    Ok((fixed, blobs))
}

/// The safetensors header (JSON, unpadded) for `fixed` then `blobs` (U8), laid out contiguously.
fn layout_header(
    fixed: &[StEntry],
    blobs: &[(String, usize)],
    user_meta: Option<&BTreeMap<String, String>>,
) -> Result<Vec<u8>> {
    let mut list = Vec::with_capacity(fixed.len() + blobs.len());
    list.extend_from_slice(fixed);
    for (name, len) in blobs {
        list.push(StEntry {
            name: name.clone(),
            dtype: StDtype::U8,
            shape: vec![*len],
            len: *len,
        });
    }
    header_json(&list, user_meta)
}

/// Quantizes `x` on the GPU and reads the result back in bitsandbytes' host layout.
async fn gpu_quantize(
    gpu: &Gpu,
    name: &str,
    x: &[f32],
    block: usize,
    double_quant: bool,
) -> Result<Nf4Tensor> {
    let xb = gpu.upload(name, x)?;
    let mut enc = gpu.encoder();
    let w = nf4::quantize(&mut enc, name, &xb, x.len(), block, double_quant)?;
    enc.submit();
    let t = w.to_host(gpu).await?;
    let nblocks = x.len().div_ceil(block);
    let ok = t.packed.len() == x.len().div_ceil(2)
        && match &t.absmax {
            Absmax::F32(a) => !double_quant && a.len() == nblocks,
            Absmax::Double(d) => {
                double_quant
                    && d.codes.len() == nblocks
                    && d.nested_absmax.len() == nblocks.div_ceil(NESTED_BLOCK)
            }
        };
    if !ok {
        return Err(format_err(
            "internal error: the GPU returned a quantized tensor of unexpected size",
        ));
    }
    Ok(t)
}

/// `dequant(quant(x))` computed on the GPU.
async fn gpu_roundtrip(
    gpu: &Gpu,
    name: &str,
    x: &[f32],
    block: usize,
    double_quant: bool,
) -> Result<Vec<f32>> {
    let xb = gpu.upload(name, x)?;
    let mut enc = gpu.encoder();
    let w = nf4::quantize(&mut enc, name, &xb, x.len(), block, double_quant)?;
    let out = gpu.alloc(&format!("{name}.dequantized"), x.len() as u64 * 4)?;
    nf4::dequantize(&mut enc, &w, &out)?;
    enc.submit();
    let y = gpu.read::<f32>(&out).await?;
    if y.len() != x.len() {
        return Err(format_err(format!(
            "internal error: the GPU returned {} values for {}",
            y.len(),
            x.len()
        )));
    }
    Ok(y)
}

fn write_at<W: Write + Seek>(f: &mut W, pos: u64, bytes: &[u8]) -> std::io::Result<()> {
    f.seek(SeekFrom::Start(pos))?;
    f.write_all(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without a tensor to quantize no GPU is needed, and a cast-only file is laid out exactly as
    /// `serialize` lays out the cast tensors (no quant-state blobs, so the reserved header fits).
    #[test]
    fn cast_only_file_matches_serialize() {
        let f32s: Vec<f32> = (0..6).map(|i| i as f32 * 0.1 + 1e-3).collect();
        let ids: Vec<u8> = (0..3i64).flat_map(|v| v.to_le_bytes()).collect();
        let meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
        let bias = FloatDtype::F32.encode(&f32s);
        let input = crate::safetensors::serialize(
            &[
                ("model.norm.weight", StDtype::F32, vec![6], &bias[..]),
                ("model.ids", StDtype::I64, vec![3], &ids[..]),
            ],
            Some(&meta),
        )
        .unwrap();
        let file = crate::safetensors::from_bytes(&input, "in.safetensors").unwrap();
        let opts = QuantizeOptions {
            select: Select::DecoderLinears,
            cast: Some(FloatDtype::BF16),
            block: DEFAULT_BLOCK,
            blocks: HashMap::new(),
            double_quant: true,
            dequantize: false,
        };
        let plan = QuantizePlan::new(&file, opts).unwrap();
        assert_eq!(plan.nquant(), 0);
        let mut out = std::io::Cursor::new(Vec::new());
        let s =
            pollster_free_block_on(plan.write(&file, None, &mut out, "out", &mut |_| {})).unwrap();
        let cast = FloatDtype::BF16.encode(&f32s);
        let want = crate::safetensors::serialize(
            &[
                ("model.norm.weight", StDtype::BF16, vec![6], &cast[..]),
                ("model.ids", StDtype::I64, vec![3], &ids[..]),
            ],
            Some(&meta),
        )
        .unwrap();
        assert_eq!(out.into_inner(), want);
        assert_eq!(
            (s.nquant, s.ncopied, s.bytes_out),
            (0, 2, want.len() as u64)
        );
    }

    /// Polls a future that never waits (no GPU work) to completion.
    fn pollster_free_block_on<F: std::future::Future>(f: F) -> F::Output {
        let mut f = std::pin::pin!(f);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match f.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(v) => v,
            std::task::Poll::Pending => panic!("the future waited"),
        }
    }

    #[test]
    fn decoder_linears() {
        assert!(is_decoder_linear("model.layers.0.self_attn.q_proj.weight"));
        assert!(is_decoder_linear("model.layers.12.mlp.down_proj.weight"));
        assert!(!is_decoder_linear("model.layers.0.self_attn.q_proj.bias"));
        assert!(!is_decoder_linear("model.layers.x.mlp.up_proj.weight"));
        assert!(!is_decoder_linear("model.embed_tokens.weight"));
        assert!(!is_decoder_linear("lm_head.weight"));
        assert!(!is_decoder_linear("model.layers.0.input_layernorm.weight"));
    }
}
