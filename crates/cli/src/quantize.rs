//! `tinytune quantize`: NF4-quantizes the 2-D float tensors of a safetensors file on the GPU, or
//! every decoder linear weight of a model folder, in the layout transformers stores for
//! bitsandbytes (`tinytune_model::bnb` holds the format and the writer).
//!
//! This file parses the arguments, opens the GPU on first use, shows progress and prints the
//! summary. Each output file is written to a temporary file in OUT's directory and renamed over OUT
//! at the end, so OUT is either absent/untouched or complete; in a model folder `config.json` is
//! written last, so a folder with one is complete.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use tinytune_gpu::{Gpu, GpuOptions};
use tinytune_model::blocks::{parse_block, BlockPlan};
use tinytune_model::bnb::{
    FileSummary, ModelFolder, Progress, QuantizeOptions, QuantizePlan, Select, DEFAULT_BLOCK,
    INDEX_FILE,
};
use tinytune_model::source::COPIED_FILES;
use tinytune_model::{ModelError, SafetensorsFile};

/// Files whose tensors hold fewer bytes than this get no progress bar.
const PROGRESS_MIN_BYTES: u64 = 64 << 20;

/// Arguments of `tinytune quantize`.
#[derive(clap::Args, Debug)]
pub struct QuantizeArgs {
    /// Input safetensors file (F32, F16 or BF16 2-D tensors are quantized; others are copied), or
    /// a Hugging Face model folder (config.json + model.safetensors or a sharded index): then only
    /// the decoder's linear weights are quantized and OUT is a bitsandbytes 4-bit model folder. A
    /// Hub id ORG/NAME[@REVISION] that is not a local path is downloaded into the Hugging Face
    /// cache (HF_HOME) and quantized as a model folder.
    #[arg(value_name = "IN")]
    pub input: PathBuf,
    /// Output safetensors file, or output folder when IN is a folder (created if missing); each
    /// file is written to a temporary file next to it, then renamed.
    #[arg(value_name = "OUT")]
    pub output: PathBuf,
    /// NF4 block sizes: `--block-size N` for a file or a folder; for a model folder also
    /// `--block-size-map` and `--block-size auto [--bits-per-weight B]` (per decoder linear; each
    /// layer's quant state records its own block size) [default: 64].
    #[command(flatten)]
    pub blocks: tinytune_train::BlockOptions,
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

/// Runs `tinytune quantize`.
pub fn run(args: &QuantizeArgs, adapter: Option<String>) -> Result<()> {
    let input = crate::hub::resolve_model(&args.input, None)?.path;
    if input.is_dir() {
        return run_dir(args, &input, adapter);
    }
    let b = &args.blocks;
    if b.block_size_map.is_some() || b.bits_per_weight.is_some() {
        bail!(
            "--block-size-map and --bits-per-weight choose block sizes per decoder layer of a \
             model folder; for a safetensors file give one --block-size N"
        );
    }
    let block = match b.block_size.as_deref() {
        None => DEFAULT_BLOCK,
        Some(s) if s.trim() == "auto" => bail!(
            "--block-size auto chooses block sizes per decoder layer of a model folder; for a \
             safetensors file give one --block-size N"
        ),
        Some(s) => parse_block(s, "--block-size")?,
    };
    let double_quant = !args.no_double_quant;
    let out = args.output.display().to_string();
    let select = if args.tensors.is_empty() {
        Select::All
    } else {
        Select::Names(args.tensors.clone())
    };
    let opts = QuantizeOptions {
        select,
        cast: None,
        block,
        blocks: Default::default(),
        double_quant,
        dequantize: args.dequantize,
    };
    let mut gpu = GpuSlot::new(adapter, args.max_buffer_bytes);
    let s = quantize_file(&input, &args.output, opts, &mut gpu)?;
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
fn quantize_file(
    input: &Path,
    output: &Path,
    opts: QuantizeOptions,
    gpu_slot: &mut GpuSlot,
) -> Result<FileSummary> {
    let inp = input.display().to_string();
    let out = output.display().to_string();
    if input.is_dir() {
        bail!("{inp} is a directory, not a safetensors file");
    }
    let file = SafetensorsFile::open(input).map_err(|e| match e {
        ModelError::Io { source, .. } => anyhow!("cannot open {inp}: {source}"),
        e => e.into(),
    })?;
    let plan = QuantizePlan::new(&file, opts)?;

    let (out_dir, tmp_prefix) = temp_location(output)?;
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
    let gpu = if plan.nquant() > 0 {
        Some(gpu_slot.get()?)
    } else {
        None
    };
    let pb = progress(plan.input_bytes());
    let mut f = tmp.as_file();
    let s = pollster::block_on(plan.write(
        &file,
        gpu,
        &mut f,
        &tmp_path.display().to_string(),
        &mut |p| match p {
            Progress::Tensor(name) => pb.set_message(name.to_string()),
            Progress::Done(bytes) => pb.inc(bytes),
        },
    ))
    .map_err(|e| match e {
        ModelError::Io { source, .. } => werr(source),
        e => e.into(),
    })?;
    pb.finish_and_clear();
    f.set_len(s.bytes_out).map_err(werr)?;
    f.flush().map_err(werr)?;
    f.sync_all().map_err(werr)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp_path, std::fs::Permissions::from_mode(0o644))
            .map_err(werr)?;
    }
    tmp.persist(output)
        .map_err(|e| anyhow!("cannot rename {} to {out}: {}", tmp_path.display(), e.error))?;
    Ok(s)
}

/// `tinytune quantize MODEL_DIR OUT_DIR`: a pre-quantized bitsandbytes-4bit checkpoint (see
/// [`ModelFolder`]).
fn run_dir(args: &QuantizeArgs, inp_dir: &Path, adapter: Option<String>) -> Result<()> {
    let out_dir = &args.output;
    let (inp, out) = (inp_dir.display().to_string(), out_dir.display().to_string());
    if args.dequantize || !args.tensors.is_empty() {
        bail!(
            "--dequantize and --tensor apply to a safetensors file; a model folder ({inp}) is \
             quantized like transformers' BitsAndBytesConfig (the decoder's linear layers)"
        );
    }
    let double_quant = !args.no_double_quant;
    let folder = ModelFolder::open(inp_dir)?;
    let plan: Option<BlockPlan> = match args.blocks.spec(double_quant).map_err(|e| anyhow!(e))? {
        None => None,
        Some(_) => {
            let src = tinytune_model::ModelSource::open(inp_dir)
                .with_context(|| format!("cannot read the model {inp} to plan its block sizes"))?;
            crate::blocks::resolve(
                &src,
                inp_dir,
                tinytune_model::Quant::Nf4 {
                    block: DEFAULT_BLOCK,
                    double_quant,
                },
                &args.blocks,
                None,
                false,
            )?
        }
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
        (0, 0, 0u64, 0u64, 0u64);
    let mut weight_map = serde_json::Map::new();
    for f in &folder.files {
        let s = quantize_file(
            &inp_dir.join(f),
            &out_dir.join(f),
            folder.options(
                double_quant,
                plan.as_ref()
                    .map(BlockPlan::tensor_blocks)
                    .unwrap_or_default(),
            ),
            &mut gpu,
        )?;
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
    if let Some(text) = folder.index_json(weight_map, data_bytes) {
        crate::merge::write_file(&out_dir.join(INDEX_FILE), text.as_bytes())?;
    }
    for name in COPIED_FILES {
        let p = inp_dir.join(name);
        if p.is_file() {
            let bytes =
                std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()))?;
            crate::merge::write_file(&out_dir.join(name), &bytes)?;
        }
    }
    // config.json last: its presence marks a complete folder.
    let text = folder.config_json(double_quant);
    crate::merge::write_file(&out_dir.join("config.json"), text.as_bytes())?;
    println!(
        "{out}: bitsandbytes 4-bit checkpoint of {inp}: {nquant} linear weight(s) quantized to NF4 \
         ({}{}), {ncopied} tensor(s) kept{}; {bytes_in} -> {bytes_out} bytes",
        match plan.as_ref().map(BlockPlan::range) {
            None => "block size 64".to_string(),
            Some((lo, hi)) if lo == hi => format!("block size {lo}"),
            Some((lo, hi)) => format!("block sizes {lo}..{hi} per layer"),
        },
        if double_quant { ", double quant" } else { "" },
        match folder.cast {
            Some(d) => format!(" as {}", d.torch_name()),
            None => String::new(),
        }
    );
    Ok(())
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
        ..GpuOptions::default()
    })
    .context("cannot open a GPU device")?;
    if let Some(cap) = max_buffer_bytes {
        gpu.limits.max_buffer_size = gpu.limits.max_buffer_size.min(cap);
        gpu.limits.max_storage_buffer_binding_size =
            gpu.limits.max_storage_buffer_binding_size.min(cap);
    }
    Ok(gpu)
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
