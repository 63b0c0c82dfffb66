//! `tinytune quantize`: NF4-quantizes the 2-D float tensors of a safetensors file on the GPU and
//! writes them in the layout transformers stores for bitsandbytes' `QuantState.as_dict(packed=True)`.
//!
//! The output is written to a temporary file in OUT's directory and renamed over OUT at the end,
//! so OUT is either absent/untouched or complete. Tensor data is streamed: the header space is
//! reserved up front (the JSON quant-state blobs, whose length depends on the double-quant offset
//! the GPU computes, are laid out last, with an upper bound on their length), each tensor is written
//! at its offset as soon as it is computed, and the final header (padded with spaces, as the
//! safetensors format allows) is written last.

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
    /// Input safetensors file (F32, F16 or BF16 2-D tensors are quantized; others are copied).
    #[arg(value_name = "IN")]
    pub input: PathBuf,
    /// Output safetensors file; written to a temporary file next to it, then renamed.
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

/// Runs `tinytune quantize`.
pub fn run(args: &QuantizeArgs, adapter: Option<String>) -> Result<()> {
    let block = args.block_size;
    if !valid_block_size(block) {
        bail!("--block-size {block} is not a power of two in 32..=4096");
    }
    let double_quant = !args.no_double_quant;
    let inp = args.input.display().to_string();
    let out = args.output.display().to_string();

    let file = File::open(&args.input).with_context(|| format!("cannot open {inp}"))?;
    if file.metadata().map(|m| m.is_dir()).unwrap_or(false) {
        bail!("{inp} is a directory, not a safetensors file");
    }
    // SAFETY: the mapping is only read. Like every mmap-based safetensors reader, we rely on nobody
    // truncating the file while it is open.
    let mmap = unsafe { Mmap::map(&file) }.with_context(|| format!("cannot map {inp}"))?;
    let (header_len, meta) = SafeTensors::read_metadata(&mmap)
        .map_err(|e| anyhow!("{inp} is not a valid safetensors file: {e}"))?;
    let data = &mmap[8 + header_len..];

    let items = plan(&meta, &args.tensors, &inp)?;
    let (mut fixed, mut blobs) = outputs(&items, block, double_quant, args.dequantize, &inp)?;

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

    let (out_dir, tmp_prefix) = temp_location(&args.output)?;
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
        Some(open_gpu(adapter, args.max_buffer_bytes)?)
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
        match (item.quantize, gpu.as_ref()) {
            (Some((rows, cols)), Some(gpu)) => {
                let ctx = || format!("cannot quantize tensor {name:?} of {inp}");
                let x = to_f32(item.info.dtype, bytes).with_context(ctx)?;
                if args.dequantize {
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
                    let dtype = torch_dtype_name(item.info.dtype).unwrap_or("float32");
                    let json = quant_state_json(dtype, block, rows, cols, offset);
                    blob_data.push((format!("{name}{QUANT_STATE_SUFFIX}"), json.into_bytes()));
                }
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
    tmp.persist(&args.output)
        .map_err(|e| anyhow!("cannot rename {} to {out}: {}", tmp_path.display(), e.error))?;

    let what = if args.dequantize {
        "replaced by dequant(quant(x)) as F32"
    } else if double_quant {
        "quantized to NF4 with double quantization"
    } else {
        "quantized to NF4"
    };
    println!(
        "{out}: {nquant} tensor(s) {what} (block size {block}), {} copied; {} -> {pos} bytes",
        items.len() - nquant,
        mmap.len()
    );
    Ok(())
}

/// Decides which tensors are quantized; validates `--tensor` names.
fn plan(meta: &Metadata, wanted: &[String], inp: &str) -> Result<Vec<Item>> {
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
            let selected = only.as_ref().is_none_or(|o| o.contains(name.as_str()));
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
fn outputs(
    items: &[Item],
    block: usize,
    double_quant: bool,
    dequantize: bool,
    inp: &str,
) -> Result<(Vec<Entry>, Vec<Blob>)> {
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
            fixed.push(Entry {
                name: name.into(),
                dtype: item.info.dtype,
                shape: item.info.shape.clone(),
                len: e - s,
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
        let dtype = torch_dtype_name(item.info.dtype).unwrap_or("float32");
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
