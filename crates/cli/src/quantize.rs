//! `tinytune quantize`: NF4-quantizes the 2-D float tensors of a safetensors file on the GPU and
//! writes them in the layout transformers stores for bitsandbytes' `QuantState.as_dict(packed=True)`.
//!
//! The output is written to a temporary file in OUT's directory and renamed over OUT at the end,
//! so OUT is either absent/untouched or complete. Tensor data is streamed: the header space is
//! reserved up front (the JSON quant-state blobs, whose length depends on the double-quant offset
//! the GPU computes, are laid out last, with an upper bound on their length), each tensor is written
//! at its offset as soon as it is computed, and the final header (padded with spaces, as the
//! safetensors format allows) is written last.
//!
//! Given a model folder, `tinytune quantize MODEL_DIR OUT_DIR` writes what transformers'
//! `save_pretrained` writes for that model loaded with `BitsAndBytesConfig(load_in_4bit=True,
//! bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True)`: each weight file (or shard) is
//! quantized as above, restricted to the decoder's linear weights, after converting the float
//! tensors to the dtype `config.json` declares; `config.json` gains `quantization_config`.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{IsTerminal, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use memmap2::Mmap;
use safetensors::tensor::{Metadata, TensorInfo};
use safetensors::{Dtype, SafeTensors};
use tinytune_gpu::ops::nf4;
use tinytune_gpu::{Gpu, GpuOptions};
use tinytune_reference::nf4::{
    valid_block_size, Absmax, Nf4Tensor, DEFAULT_BLOCK, DYNAMIC_MAP, NESTED_BLOCK, NF4,
};

use crate::pyrepr::{quant_state_json, torch_dtype_name, MAX_FLOAT_REPR};

/// Files whose tensors hold fewer bytes than this get no progress bar.
const PROGRESS_MIN_BYTES: u64 = 64 << 20;

/// Suffix of the JSON blob transformers writes for an NF4 quant state.
pub const QUANT_STATE_SUFFIX: &str = ".quant_state.bitsandbytes__nf4";

/// Arguments of `tinytune quantize`.
#[derive(clap::Args, Debug)]
pub struct QuantizeArgs {
    /// Input safetensors file (F32, F16 or BF16 2-D tensors are quantized; others are copied), or
    /// a Hugging Face model folder (config.json + model.safetensors or a sharded index): then only
    /// the decoder's linear weights are quantized and OUT is a bitsandbytes 4-bit model folder.
    #[arg(value_name = "IN")]
    pub input: PathBuf,
    /// Output safetensors file, or output folder when IN is a folder (created if missing); each
    /// file is written to a temporary file next to it, then renamed.
    #[arg(value_name = "OUT")]
    pub output: PathBuf,
    /// NF4 block size: a power of two in 32..=4096.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_BLOCK)]
    pub block_size: usize,
    /// Store the per-block absmax as F32 instead of double-quantizing it to 8 bits
    /// [default: off, i.e. double quantization with nested blocks of 256].
    #[arg(long)]
    pub no_double_quant: bool,
    /// Write dequant(quant(x)) as F32 under each quantized tensor's own name and shape, instead of
    /// the packed NF4 layout [default: off].
    #[arg(long)]
    pub dequantize: bool,
    /// Quantize only this tensor (repeatable); it must exist and be a 2-D F32/F16/BF16 tensor
    /// [default: every 2-D F32/F16/BF16 tensor].
    #[arg(long = "tensor", value_name = "NAME")]
    pub tensors: Vec<String>,
    /// Refuse GPU buffers larger than this many bytes, on top of the device's own limits
    /// [default: the device's max_buffer_size and max_storage_buffer_binding_size].
    #[arg(long, value_name = "BYTES")]
    pub max_buffer_bytes: Option<u64>,
}

/// A quant-state JSON blob: name and length in bytes (an upper bound until the GPU has run).
type Blob = (String, usize);

/// One output tensor whose size is known before the GPU runs.
struct Entry {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    len: usize,
}

/// What happens to one input tensor.
struct Item {
    name: String,
    info: TensorInfo,
    /// `Some((rows, cols))` when quantized.
    quantize: Option<(usize, usize)>,
}

/// Which tensors of a file are quantized.
enum Select<'a> {
    /// Every 2-D F32/F16/BF16 tensor.
    All,
    /// Only these (validated: each must exist and be quantizable).
    Names(&'a [String]),
    /// The decoder's linear layer weights, `model.layers.*.{self_attn,mlp}.*_proj.weight`: what
    /// transformers' bitsandbytes integration turns into `Linear4bit` in a Llama-family model.
    DecoderLinears,
}

/// One safetensors file to quantize.
struct FileJob<'a> {
    input: &'a Path,
    output: &'a Path,
    select: Select<'a>,
    /// Convert every F32/F16/BF16 tensor to this dtype first (quantized ones before quantizing).
    cast: Option<Dtype>,
    block: usize,
    double_quant: bool,
    dequantize: bool,
}

/// What [`quantize_file`] wrote.
struct FileSummary {
    nquant: usize,
    ncopied: usize,
    bytes_in: usize,
    bytes_out: u64,
    /// Every output tensor name.
    names: Vec<String>,
    /// Bytes of tensor data (without the header).
    data_bytes: u64,
}

/// Runs `tinytune quantize`.
pub fn run(args: &QuantizeArgs, adapter: Option<String>) -> Result<()> {
    let block = args.block_size;
    if !valid_block_size(block) {
        bail!("--block-size {block} is not a power of two in 32..=4096");
    }
    if args.input.is_dir() {
        return run_dir(args, adapter);
    }
    let double_quant = !args.no_double_quant;
    let out = args.output.display().to_string();
    let select = if args.tensors.is_empty() {
        Select::All
    } else {
        Select::Names(&args.tensors)
    };
    let job = FileJob {
        input: &args.input,
        output: &args.output,
        select,
        cast: None,
        block,
        double_quant,
        dequantize: args.dequantize,
    };
    let mut gpu = GpuSlot::new(adapter, args.max_buffer_bytes);
    let s = quantize_file(&job, &mut gpu)?;
    let what = if args.dequantize {
        "replaced by dequant(quant(x)) as F32"
    } else if double_quant {
        "quantized to NF4 with double quantization"
    } else {
        "quantized to NF4"
    };
    println!(
        "{out}: {} tensor(s) {what} (block size {block}), {} copied; {} -> {} bytes",
        s.nquant, s.ncopied, s.bytes_in, s.bytes_out
    );
    Ok(())
}

/// The GPU, opened on first use.
struct GpuSlot {
    adapter: Option<String>,
    max_buffer_bytes: Option<u64>,
    gpu: Option<Gpu>,
}

impl GpuSlot {
    fn new(adapter: Option<String>, max_buffer_bytes: Option<u64>) -> GpuSlot {
        GpuSlot {
            adapter,
            max_buffer_bytes,
            gpu: None,
        }
    }

    fn get(&mut self) -> Result<&Gpu> {
        if self.gpu.is_none() {
            self.gpu = Some(open_gpu(self.adapter.clone(), self.max_buffer_bytes)?);
        }
        Ok(self.gpu.as_ref().expect("opened"))
    }
}

/// Quantizes one safetensors file into another (temporary file next to the output, then rename).
fn quantize_file(job: &FileJob, gpu_slot: &mut GpuSlot) -> Result<FileSummary> {
    let (block, double_quant) = (job.block, job.double_quant);
    let inp = job.input.display().to_string();
    let out = job.output.display().to_string();

    let file = File::open(job.input).with_context(|| format!("cannot open {inp}"))?;
    if file.metadata().map(|m| m.is_dir()).unwrap_or(false) {
        bail!("{inp} is a directory, not a safetensors file");
    }
    // SAFETY: the mapping is only read. Like every mmap-based safetensors reader, we rely on nobody
    // truncating the file while it is open.
    let mmap = unsafe { Mmap::map(&file) }.with_context(|| format!("cannot map {inp}"))?;
    let (header_len, meta) = SafeTensors::read_metadata(&mmap)
        .map_err(|e| anyhow!("{inp} is not a valid safetensors file: {e}"))?;
    let data = &mmap[8 + header_len..];

    let items = plan(&meta, &job.select, &inp)?;
    let (mut fixed, mut blobs) = outputs(&items, job, &inp)?;

    // safetensors' own order (larger dtypes first, then by name) keeps every tensor aligned; the
    // quant-state blobs (U8, any length) go last because their length is known only at the end.
    fixed.sort_by(|a, b| b.dtype.cmp(&a.dtype).then_with(|| a.name.cmp(&b.name)));
    blobs.sort_by(|a, b| a.0.cmp(&b.0));
    let mut offsets: HashMap<String, (usize, usize)> = HashMap::with_capacity(fixed.len());
    let mut fixed_total = 0usize;
    for e in &fixed {
        offsets.insert(e.name.clone(), (fixed_total, fixed_total + e.len));
        fixed_total += e.len;
    }
    let user_meta = meta.metadata().clone();
    let bound_header = header_json(&fixed, &blobs, user_meta.clone())?;
    let reserve = bound_header.len().next_multiple_of(8);
    let data_start = 8 + reserve as u64;

    let (out_dir, tmp_prefix) = temp_location(job.output)?;
    let tmp = tempfile::Builder::new()
        .prefix(&tmp_prefix)
        .suffix(".tmp")
        .tempfile_in(&out_dir)
        .with_context(|| {
            format!(
                "cannot create a temporary file in {} for {out}",
                out_dir.display()
            )
        })?;
    let tmp_path = tmp.path().to_path_buf();
    let werr = |e: std::io::Error| {
        anyhow!(
            "cannot write {out} (temporary file {}): {e}",
            tmp_path.display()
        )
    };
    let mut f = tmp.as_file();

    let nquant = items.iter().filter(|i| i.quantize.is_some()).count();
    let gpu = if nquant > 0 {
        Some(gpu_slot.get()?)
    } else {
        None
    };

    let total_in: u64 = items
        .iter()
        .map(|i| (i.info.data_offsets.1 - i.info.data_offsets.0) as u64)
        .sum();
    let pb = progress(total_in);

    let mut put = |name: &str, bytes: &[u8]| -> Result<()> {
        let &(s, e) = offsets
            .get(name)
            .ok_or_else(|| anyhow!("internal error: no slot for output tensor {name:?}"))?;
        if e - s != bytes.len() {
            bail!(
                "internal error: output tensor {name:?} has {} bytes, {} planned",
                bytes.len(),
                e - s
            );
        }
        write_at(&mut f, data_start + s as u64, bytes).map_err(werr)
    };
    let mut blob_data: Vec<(String, Vec<u8>)> = Vec::with_capacity(blobs.len());
    for item in &items {
        let name = item.name.as_str();
        let bytes = &data[item.info.data_offsets.0..item.info.data_offsets.1];
        pb.set_message(name.to_string());
        let cast = out_dtype(item.info.dtype, job.cast);
        match (item.quantize, gpu) {
            (Some((rows, cols)), Some(gpu)) => {
                let ctx = || format!("cannot quantize tensor {name:?} of {inp}");
                let mut x = to_f32(item.info.dtype, bytes).with_context(ctx)?;
                if cast != item.info.dtype {
                    round_to(cast, &mut x);
                }
                if job.dequantize {
                    let y = gpu_roundtrip(gpu, name, &x, block, double_quant).with_context(ctx)?;
                    put(name, bytemuck::cast_slice(&y))?;
                } else {
                    let t = gpu_quantize(gpu, name, &x, block, double_quant).with_context(ctx)?;
                    put(name, &t.packed)?;
                    put(&format!("{name}.quant_map"), bytemuck::cast_slice(&NF4))?;
                    let offset = match &t.absmax {
                        Absmax::F32(a) => {
                            put(&format!("{name}.absmax"), bytemuck::cast_slice(a))?;
                            None
                        }
                        Absmax::Double(d) => {
                            put(&format!("{name}.absmax"), &d.codes)?;
                            put(
                                &format!("{name}.nested_absmax"),
                                bytemuck::cast_slice(&d.nested_absmax),
                            )?;
                            put(
                                &format!("{name}.nested_quant_map"),
                                bytemuck::cast_slice(&DYNAMIC_MAP),
                            )?;
                            Some(d.offset)
                        }
                    };
                    let dtype = torch_dtype_name(cast).unwrap_or("float32");
                    let json = quant_state_json(dtype, block, rows, cols, offset);
                    blob_data.push((format!("{name}{QUANT_STATE_SUFFIX}"), json.into_bytes()));
                }
            }
            _ if cast != item.info.dtype => {
                let ctx = || format!("cannot convert tensor {name:?} of {inp}");
                let x = to_f32(item.info.dtype, bytes).with_context(ctx)?;
                put(name, &from_f32(cast, &x).with_context(ctx)?)?;
            }
            _ => put(name, bytes)?,
        }
        pb.inc(bytes.len() as u64);
    }
    pb.finish_and_clear();

    // The blobs, in the order (and therefore at the offsets) the header lists them.
    blob_data.sort_by(|a, b| a.0.cmp(&b.0));
    let actual: Vec<(String, usize)> = blob_data
        .iter()
        .map(|(n, b)| (n.clone(), b.len()))
        .collect();
    let planned: Vec<&String> = blobs.iter().map(|b| &b.0).collect();
    if actual.iter().map(|b| &b.0).ne(planned) {
        bail!("internal error: the quant-state blobs differ from the plan");
    }
    let mut pos = data_start + fixed_total as u64;
    for (_, b) in &blob_data {
        write_at(&mut f, pos, b).map_err(werr)?;
        pos += b.len() as u64;
    }
    let mut header = header_json(&fixed, &actual, user_meta)?;
    if header.len() > reserve {
        bail!(
            "internal error: header of {} bytes exceeds the {reserve} reserved",
            header.len()
        );
    }
    header.resize(reserve, b' ');
    write_at(&mut f, 0, &(reserve as u64).to_le_bytes()).map_err(werr)?;
    write_at(&mut f, 8, &header).map_err(werr)?;
    f.set_len(pos).map_err(werr)?;
    f.flush().map_err(werr)?;
    f.sync_all().map_err(werr)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp_path, std::fs::Permissions::from_mode(0o644))
            .map_err(werr)?;
    }
    tmp.persist(job.output)
        .map_err(|e| anyhow!("cannot rename {} to {out}: {}", tmp_path.display(), e.error))?;

    let mut names: Vec<String> = fixed.iter().map(|e| e.name.clone()).collect();
    names.extend(actual.iter().map(|b| b.0.clone()));
    Ok(FileSummary {
        nquant,
        ncopied: items.len() - nquant,
        bytes_in: mmap.len(),
        bytes_out: pos,
        names,
        data_bytes: pos - data_start,
    })
}

/// `quantization_config` exactly as transformers 5.24 writes it to `config.json` for a model loaded
/// with `BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
/// bnb_4bit_use_double_quant=...)` (compute dtype left at its default, float32).
pub fn bnb_quantization_config(double_quant: bool) -> serde_json::Value {
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

/// `tinytune quantize MODEL_DIR OUT_DIR`: a pre-quantized bitsandbytes-4bit checkpoint.
///
/// Mirrors `AutoModelForCausalLM.from_pretrained(MODEL_DIR, quantization_config=BitsAndBytesConfig(
/// load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True))` followed by
/// `save_pretrained(OUT_DIR)`: float tensors take the dtype `config.json` declares (what
/// transformers' default `dtype="auto"` loads), the decoder's linear weights are quantized from
/// those values, everything else (embeddings, norms, biases, lm_head) is kept, and `config.json`
/// gains transformers' `quantization_config`. Shards stay shards (the index lists the new names).
fn run_dir(args: &QuantizeArgs, adapter: Option<String>) -> Result<()> {
    let inp_dir = &args.input;
    let out_dir = &args.output;
    let (inp, out) = (inp_dir.display().to_string(), out_dir.display().to_string());
    if args.dequantize || !args.tensors.is_empty() || args.block_size != DEFAULT_BLOCK {
        bail!(
            "--dequantize, --tensor and --block-size apply to a safetensors file; a model folder \
             ({inp}) is always quantized like transformers' BitsAndBytesConfig (block size 64, the \
             decoder's linear layers)"
        );
    }
    let double_quant = !args.no_double_quant;
    let cfg_path = inp_dir.join("config.json");
    let cfg_text = std::fs::read_to_string(&cfg_path).with_context(|| {
        format!("{inp} is a folder but not a model folder: cannot read its config.json")
    })?;
    let mut config: serde_json::Value = serde_json::from_str(&cfg_text)
        .with_context(|| format!("{} is not valid JSON", cfg_path.display()))?;
    let obj = config
        .as_object_mut()
        .ok_or_else(|| anyhow!("{} is not a JSON object", cfg_path.display()))?;
    if obj.contains_key("quantization_config") {
        bail!(
            "{} already has a quantization_config: {inp} is already quantized",
            cfg_path.display()
        );
    }
    let cast = ["dtype", "torch_dtype"]
        .iter()
        .find_map(|k| obj.get(*k).and_then(serde_json::Value::as_str))
        .and_then(|d| match d {
            "float32" => Some(Dtype::F32),
            "float16" => Some(Dtype::F16),
            "bfloat16" => Some(Dtype::BF16),
            _ => None,
        });

    // The weight files: one model.safetensors or the shards of an index.
    let index_name = "model.safetensors.index.json";
    let mut index: Option<serde_json::Value> = None;
    let files: Vec<String> = if inp_dir.join("model.safetensors").is_file() {
        vec!["model.safetensors".into()]
    } else if inp_dir.join(index_name).is_file() {
        let p = inp_dir.join(index_name);
        let text =
            std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not valid JSON", p.display()))?;
        let map = v
            .get("weight_map")
            .and_then(serde_json::Value::as_object)
            .ok_or_else(|| anyhow!("{} has no weight_map object", p.display()))?;
        let mut files = std::collections::BTreeSet::new();
        for (k, f) in map {
            let f = f
                .as_str()
                .filter(|f| !f.contains('/') && !f.contains('\\') && *f != "..")
                .ok_or_else(|| {
                    anyhow!(
                        "{}: weight_map[{k:?}] is not a plain file name",
                        p.display()
                    )
                })?;
            files.insert(f.to_string());
        }
        index = Some(v);
        files.into_iter().collect()
    } else {
        bail!("{inp} has no model.safetensors or {index_name}");
    };

    if out_dir.is_file() {
        bail!("{out} is a file; OUT_DIR must be a folder for a model folder input");
    }
    std::fs::create_dir_all(out_dir).with_context(|| format!("cannot create folder {out}"))?;
    if let (Ok(a), Ok(b)) = (inp_dir.canonicalize(), out_dir.canonicalize()) {
        if a == b {
            bail!("OUT_DIR {out} is the model folder itself; choose another folder");
        }
    }

    let mut gpu = GpuSlot::new(adapter, args.max_buffer_bytes);
    let (mut nquant, mut ncopied, mut bytes_in, mut bytes_out, mut data_bytes) =
        (0, 0, 0usize, 0u64, 0u64);
    let mut weight_map = serde_json::Map::new();
    for f in &files {
        let job = FileJob {
            input: &inp_dir.join(f),
            output: &out_dir.join(f),
            select: Select::DecoderLinears,
            cast,
            block: DEFAULT_BLOCK,
            double_quant,
            dequantize: false,
        };
        let s = quantize_file(&job, &mut gpu)?;
        nquant += s.nquant;
        ncopied += s.ncopied;
        bytes_in += s.bytes_in;
        bytes_out += s.bytes_out;
        data_bytes += s.data_bytes;
        for n in s.names {
            weight_map.insert(n, serde_json::Value::String(f.clone()));
        }
    }
    if nquant == 0 {
        eprintln!(
            "warning: {inp} has no model.layers.*.{{self_attn,mlp}}.*_proj.weight tensor; nothing \
             was quantized"
        );
    }
    if let Some(mut v) = index {
        if let Some(o) = v.as_object_mut() {
            o.insert("weight_map".into(), serde_json::Value::Object(weight_map));
            let meta = o.entry("metadata").or_insert_with(|| serde_json::json!({}));
            if let Some(m) = meta.as_object_mut() {
                m.insert("total_size".into(), serde_json::json!(data_bytes));
            }
        }
        let text = serde_json::to_string_pretty(&v).context("serializing the index")? + "\n";
        crate::merge::write_file(&out_dir.join(index_name), text.as_bytes())?;
    }
    for name in crate::merge::COPIED_FILES {
        let p = inp_dir.join(name);
        if p.is_file() {
            let bytes =
                std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()))?;
            crate::merge::write_file(&out_dir.join(name), &bytes)?;
        }
    }
    // config.json last: its presence marks a complete folder.
    obj.insert(
        "quantization_config".into(),
        bnb_quantization_config(double_quant),
    );
    let text = serde_json::to_string_pretty(&config).context("serializing config.json")? + "\n";
    crate::merge::write_file(&out_dir.join("config.json"), text.as_bytes())?;
    println!(
        "{out}: bitsandbytes 4-bit checkpoint of {inp}: {nquant} linear weight(s) quantized to NF4 \
         (block size 64{}), {ncopied} tensor(s) kept{}; {bytes_in} -> {bytes_out} bytes",
        if double_quant { ", double quant" } else { "" },
        match cast {
            Some(d) => format!(" as {}", torch_dtype_name(d).unwrap_or("?")),
            None => String::new(),
        }
    );
    Ok(())
}

/// Whether `name` is a decoder linear weight transformers quantizes:
/// `model.layers.<i>.{self_attn,mlp}.<x>_proj.weight`.
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
    matches!(block, "self_attn" | "mlp") && proj.ends_with("_proj") && !proj.contains('.')
}

/// The dtype a tensor is written (and quantized) in: `cast` for float tensors, else its own.
fn out_dtype(stored: Dtype, cast: Option<Dtype>) -> Dtype {
    match cast {
        Some(c) if torch_dtype_name(stored).is_some() => c,
        _ => stored,
    }
}

/// Rounds f32 values to `dtype` in place (round to nearest even, as torch's `.to(dtype)`).
fn round_to(dtype: Dtype, x: &mut [f32]) {
    match dtype {
        Dtype::F16 => x
            .iter_mut()
            .for_each(|v| *v = half::f16::from_f32(*v).to_f32()),
        Dtype::BF16 => x
            .iter_mut()
            .for_each(|v| *v = half::bf16::from_f32(*v).to_f32()),
        _ => {}
    }
}

/// Little-endian bytes of `x` as F32/F16/BF16 (round to nearest even).
fn from_f32(dtype: Dtype, x: &[f32]) -> Result<Vec<u8>> {
    Ok(match dtype {
        Dtype::F32 => x.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Dtype::F16 => x
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect(),
        Dtype::BF16 => x
            .iter()
            .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
            .collect(),
        other => bail!("cannot convert to dtype {other}"),
    })
}

/// Decides which tensors are quantized; validates `--tensor` names.
fn plan(meta: &Metadata, select: &Select, inp: &str) -> Result<Vec<Item>> {
    let wanted: &[String] = match select {
        Select::Names(n) => n,
        _ => &[],
    };
    let infos = meta.tensors();
    let quantizable = |info: &TensorInfo| {
        info.shape.len() == 2
            && torch_dtype_name(info.dtype).is_some()
            && info.shape[0] * info.shape[1] > 0
    };
    for t in wanted {
        let info = infos
            .get(t)
            .ok_or_else(|| anyhow!("tensor {t:?} not found in {inp}"))?;
        if info.shape.len() != 2 {
            bail!(
                "tensor {t:?} of {inp} is {}-D (shape {:?}); only 2-D tensors can be quantized",
                info.shape.len(),
                info.shape
            );
        }
        if torch_dtype_name(info.dtype).is_none() {
            bail!("tensor {t:?} of {inp} has dtype {}; only F32, F16 and BF16 tensors can be quantized", info.dtype);
        }
        if !quantizable(info) {
            bail!(
                "tensor {t:?} of {inp} has no elements (shape {:?})",
                info.shape
            );
        }
    }
    let only: Option<HashSet<&str>> =
        (!wanted.is_empty()).then(|| wanted.iter().map(String::as_str).collect());
    Ok(meta
        .offset_keys()
        .into_iter()
        .filter_map(|name| {
            let info = (*infos.get(&name)?).clone();
            let selected = match select {
                Select::All => true,
                Select::Names(_) => only.as_ref().is_some_and(|o| o.contains(name.as_str())),
                Select::DecoderLinears => is_decoder_linear(&name),
            };
            let quantize = (selected && quantizable(&info)).then(|| (info.shape[0], info.shape[1]));
            Some(Item {
                name,
                info,
                quantize,
            })
        })
        .collect())
}

/// The output tensors of known size, and the quant-state blobs with an upper bound of their length.
fn outputs(items: &[Item], job: &FileJob, inp: &str) -> Result<(Vec<Entry>, Vec<Blob>)> {
    let (block, double_quant, dequantize) = (job.block, job.double_quant, job.dequantize);
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
            bail!("output tensor {name:?} (from tensor {a:?}) would collide with tensor {b:?} of {inp}; rename one of them");
        }
        Ok(())
    };
    for item in items {
        let name = item.name.as_str();
        let Some((rows, cols)) = item.quantize else {
            claim(name, name)?;
            let (s, e) = item.info.data_offsets;
            let dtype = out_dtype(item.info.dtype, job.cast);
            let len = if dtype == item.info.dtype {
                e - s
            } else {
                item.info.shape.iter().product::<usize>() * dtype.bitsize() / 8
            };
            fixed.push(Entry {
                name: name.into(),
                dtype,
                shape: item.info.shape.clone(),
                len,
            });
            continue;
        };
        let n = rows * cols;
        if dequantize {
            claim(name, name)?;
            fixed.push(Entry {
                name: name.into(),
                dtype: Dtype::F32,
                shape: vec![rows, cols],
                len: n * 4,
            });
            continue;
        }
        let nblocks = n.div_ceil(block);
        let mut add = |suffix: &str, dtype: Dtype, len: usize, shape: Vec<usize>| -> Result<()> {
            let full = format!("{name}{suffix}");
            claim(&full, name)?;
            let bytes = len * dtype.bitsize() / 8;
            fixed.push(Entry {
                name: full,
                dtype,
                shape,
                len: bytes,
            });
            Ok(())
        };
        add("", Dtype::U8, n.div_ceil(2), vec![n.div_ceil(2), 1])?;
        if double_quant {
            add(".absmax", Dtype::U8, nblocks, vec![nblocks])?;
            let nn = nblocks.div_ceil(NESTED_BLOCK);
            add(".nested_absmax", Dtype::F32, nn, vec![nn])?;
            add(
                ".nested_quant_map",
                Dtype::F32,
                DYNAMIC_MAP.len(),
                vec![DYNAMIC_MAP.len()],
            )?;
        } else {
            add(".absmax", Dtype::F32, nblocks, vec![nblocks])?;
        }
        add(".quant_map", Dtype::F32, NF4.len(), vec![NF4.len()])?;
        let blob = format!("{name}{QUANT_STATE_SUFFIX}");
        claim(&blob, name)?;
        let dtype = torch_dtype_name(out_dtype(item.info.dtype, job.cast)).unwrap_or("float32");
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

/// The safetensors header (JSON, unpadded) for `fixed` then `blobs`, laid out contiguously.
fn header_json(
    fixed: &[Entry],
    blobs: &[Blob],
    user_meta: Option<HashMap<String, String>>,
) -> Result<Vec<u8>> {
    let mut list = Vec::with_capacity(fixed.len() + blobs.len());
    let mut off = 0;
    for e in fixed {
        list.push((
            e.name.clone(),
            TensorInfo {
                dtype: e.dtype,
                shape: e.shape.clone(),
                data_offsets: (off, off + e.len),
            },
        ));
        off += e.len;
    }
    for (name, len) in blobs {
        list.push((
            name.clone(),
            TensorInfo {
                dtype: Dtype::U8,
                shape: vec![*len],
                data_offsets: (off, off + len),
            },
        ));
        off += len;
    }
    let meta = Metadata::new(user_meta, list)
        .map_err(|e| anyhow!("internal error: invalid output layout: {e}"))?;
    serde_json::to_vec(&meta).context("internal error: serializing the safetensors header")
}

/// Directory and file-name prefix of the temporary output file.
fn temp_location(out: &Path) -> Result<(PathBuf, String)> {
    let name = out
        .file_name()
        .ok_or_else(|| anyhow!("{} does not name a file", out.display()))?
        .to_string_lossy()
        .into_owned();
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        bail!(
            "cannot write {}: directory {} does not exist",
            out.display(),
            dir.display()
        );
    }
    Ok((dir, format!(".{name}.")))
}

fn open_gpu(adapter: Option<String>, max_buffer_bytes: Option<u64>) -> Result<Gpu> {
    let mut gpu = Gpu::new_blocking(GpuOptions {
        adapter_name: adapter,
    })
    .context("cannot open a GPU device")?;
    if let Some(cap) = max_buffer_bytes {
        gpu.limits.max_buffer_size = gpu.limits.max_buffer_size.min(cap);
        gpu.limits.max_storage_buffer_binding_size =
            gpu.limits.max_storage_buffer_binding_size.min(cap);
    }
    Ok(gpu)
}

/// Host conversion of a little-endian F32/F16/BF16 tensor to f32 (exact).
fn to_f32(dtype: Dtype, bytes: &[u8]) -> Result<Vec<f32>> {
    Ok(match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        other => bail!("dtype {other} cannot be quantized"),
    })
}

/// Quantizes `x` on the GPU and reads the result back in bitsandbytes' host layout.
fn gpu_quantize(
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
    let t = pollster::block_on(w.to_host(gpu))?;
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
        bail!("internal error: the GPU returned a quantized tensor of unexpected size");
    }
    Ok(t)
}

/// `dequant(quant(x))` computed on the GPU.
fn gpu_roundtrip(
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
    let y = gpu.read_blocking::<f32>(&out)?;
    if y.len() != x.len() {
        bail!(
            "internal error: the GPU returned {} values for {}",
            y.len(),
            x.len()
        );
    }
    Ok(y)
}

fn write_at(f: &mut &File, pos: u64, bytes: &[u8]) -> std::io::Result<()> {
    f.seek(SeekFrom::Start(pos))?;
    f.write_all(bytes)
}

fn progress(total: u64) -> ProgressBar {
    if total < PROGRESS_MIN_BYTES || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(total);
    if let Ok(style) =
        ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} ({eta}) {wide_msg}")
    {
        pb.set_style(style);
    }
    pb
}
