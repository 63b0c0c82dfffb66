//! GGUF (v2/v3, little-endian) reader: header, metadata key/values (every value type, arrays
//! included), tensor infos, aligned data section; tensors are read one at a time from the
//! [`ByteSource`] and dequantized to f32 ([`GgmlType`]).
//!
//! Layout (ggml `docs/gguf.md`): magic `GGUF`, u32 version, u64 tensor count, u64 metadata count,
//! the metadata (`string key, u32 type, value`; strings are u64 length + UTF-8 bytes; arrays are
//! u32 element type + u64 count + elements), the tensor infos (`string name, u32 n_dims,
//! u64 ne[n_dims], u32 type, u64 offset`), padding to `general.alignment` (default 32), then the
//! data section; each tensor's offset is relative to the data section and aligned.
//!
//! `ne[0]` is the fastest-varying dimension, so the torch shape is `ne` reversed: a linear weight
//! `[out, in]` is stored with `ne = [in, out]`. [`GgufFile::load_raw`] returns tensors in the
//! file's element order with the reversed shape; name mapping, Q/K un-permutation and the model
//! config live in [`crate::source`] and [`config_from_gguf`].

use std::collections::HashMap;

use crate::bytes::{ByteSource, Cursor};
use crate::config::{LlamaConfig, ModelType, RopeScaling, TokenIds};
use crate::dtype::GgmlType;
use crate::tensor::HostTensor;
use crate::{format_err, ModelError, Result};

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's GGML_MAX_DIMS.
const MAX_DIMS: u32 = 4;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Vec<GgufValue>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl GgufValue {
    /// Any integer type that is non-negative, as u64.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U8(v) => Some(v as u64),
            GgufValue::U16(v) => Some(v as u64),
            GgufValue::U32(v) => Some(v as u64),
            GgufValue::U64(v) => Some(v),
            GgufValue::I8(v) => u64::try_from(v).ok(),
            GgufValue::I16(v) => u64::try_from(v).ok(),
            GgufValue::I32(v) => u64::try_from(v).ok(),
            GgufValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }
    /// Any integer type as i64 (u64 above i64::MAX is `None`).
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            GgufValue::I8(v) => Some(v as i64),
            GgufValue::I16(v) => Some(v as i64),
            GgufValue::I32(v) => Some(v as i64),
            GgufValue::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }
    /// Any numeric type as f64.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(v as f64),
            GgufValue::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }
    /// A string value.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }
    /// A bool value.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            GgufValue::Bool(b) => Some(b),
            _ => None,
        }
    }
    /// An array value.
    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            GgufValue::Array(a) => Some(a),
            _ => None,
        }
    }
    /// GGUF's name of the value type (for messages).
    pub fn type_name(&self) -> &'static str {
        match self {
            GgufValue::U8(_) => "UINT8",
            GgufValue::I8(_) => "INT8",
            GgufValue::U16(_) => "UINT16",
            GgufValue::I16(_) => "INT16",
            GgufValue::U32(_) => "UINT32",
            GgufValue::I32(_) => "INT32",
            GgufValue::F32(_) => "FLOAT32",
            GgufValue::Bool(_) => "BOOL",
            GgufValue::String(_) => "STRING",
            GgufValue::Array(_) => "ARRAY",
            GgufValue::U64(_) => "UINT64",
            GgufValue::I64(_) => "INT64",
            GgufValue::F64(_) => "FLOAT64",
        }
    }
}

/// One tensor's info.
#[derive(Debug, Clone)]
pub struct GgufTensorInfo {
    pub name: String,
    /// ggml dims, fastest first.
    pub ne: Vec<u64>,
    /// The GGUF type id (see [`crate::dtype::ggml_type_name`]).
    pub type_id: u32,
    /// Offset relative to the data section.
    pub offset: u64,
    /// Bytes of data (`None` for types this crate does not know the size of).
    pub n_bytes: Option<u64>,
}

impl GgufTensorInfo {
    /// Number of elements.
    pub fn numel(&self) -> u64 {
        self.ne.iter().product()
    }
    /// The torch shape: `ne` reversed.
    pub fn shape(&self) -> Vec<usize> {
        self.ne.iter().rev().map(|&d| d as usize).collect()
    }
    /// The element type, or an error naming an unsupported one.
    pub fn ggml_type(&self) -> Result<GgmlType> {
        GgmlType::from_id(self.type_id).map_err(|e| {
            ModelError::Unsupported(format!("tensor '{}': {}", self.name, strip_unsupported(e)))
        })
    }
}

fn strip_unsupported(e: ModelError) -> String {
    match e {
        ModelError::Unsupported(m) => m,
        e => e.to_string(),
    }
}

/// An opened GGUF file.
pub struct GgufFile {
    src: Box<dyn ByteSource>,
    version: u32,
    metadata: Vec<(String, GgufValue)>,
    meta_index: HashMap<String, usize>,
    tensors: Vec<GgufTensorInfo>,
    tensor_index: HashMap<String, usize>,
    alignment: u64,
    data_start: u64,
}

fn read_string(c: &mut Cursor<'_>, what: &str) -> Result<String> {
    let n = c.u64()?;
    if n > c.remaining() {
        return Err(format_err(format!(
            "{}: {what}: string length {n} at offset {} exceeds the file",
            c.src.name(),
            c.pos - 8
        )));
    }
    let b = c.take(n as usize)?;
    String::from_utf8(b.into_owned()).map_err(|_| {
        format_err(format!(
            "{}: {what}: string is not valid UTF-8",
            c.src.name()
        ))
    })
}

/// Smallest encoded size of one value of type `t` (for sanity-checking array counts).
fn min_size(t: u32) -> u64 {
    match t {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 | 10 | 11 | 12 => 8,
        9 => 12,
        _ => 1,
    }
}

fn read_value(c: &mut Cursor<'_>, t: u32, key: &str, depth: u32) -> Result<GgufValue> {
    Ok(match t {
        0 => GgufValue::U8(c.u8()?),
        1 => GgufValue::I8(c.u8()? as i8),
        2 => GgufValue::U16(c.u16()?),
        3 => GgufValue::I16(c.u16()? as i16),
        4 => GgufValue::U32(c.u32()?),
        5 => GgufValue::I32(c.u32()? as i32),
        6 => GgufValue::F32(f32::from_bits(c.u32()?)),
        7 => match c.u8()? {
            0 => GgufValue::Bool(false),
            1 => GgufValue::Bool(true),
            b => {
                return Err(format_err(format!(
                    "{}: key '{key}': bool byte {b}",
                    c.src.name()
                )))
            }
        },
        8 => GgufValue::String(read_string(c, &format!("key '{key}'"))?),
        9 => {
            if depth > 8 {
                return Err(format_err(format!(
                    "{}: key '{key}': arrays nested too deeply",
                    c.src.name()
                )));
            }
            let et = c.u32()?;
            let n = c.u64()?;
            if n.saturating_mul(min_size(et)) > c.remaining() {
                return Err(format_err(format!(
                    "{}: key '{key}': array of {n} elements exceeds the file",
                    c.src.name()
                )));
            }
            let mut v = Vec::with_capacity(n as usize);
            for _ in 0..n {
                v.push(read_value(c, et, key, depth + 1)?);
            }
            GgufValue::Array(v)
        }
        10 => GgufValue::U64(c.u64()?),
        11 => GgufValue::I64(c.u64()? as i64),
        12 => GgufValue::F64(f64::from_bits(c.u64()?)),
        t => {
            return Err(format_err(format!(
                "{}: key '{key}': unknown value type {t}",
                c.src.name()
            )))
        }
    })
}

impl GgufFile {
    /// Memory-maps and parses the file at `path` (native targets).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open(path: &std::path::Path) -> Result<GgufFile> {
        GgufFile::new(Box::new(crate::bytes::MmapBytes::open(path)?))
    }

    /// Parses the header, metadata and tensor infos of the GGUF file in `src`.
    pub fn new(src: Box<dyn ByteSource>) -> Result<GgufFile> {
        let (version, metadata, tensors, alignment, data_start) = {
            let mut c = Cursor::new(&*src, 0);
            let name = src.name().to_string();
            let magic = c
                .take(4)
                .map_err(|_| format_err(format!("{name}: not a GGUF file (too short)")))?;
            if &*magic != MAGIC {
                return Err(format_err(format!(
                    "{name}: not a GGUF file (magic {:?})",
                    &*magic
                )));
            }
            let version = c.u32()?;
            if version == 1 {
                return Err(ModelError::Unsupported(format!(
                    "{name}: GGUF version 1 (supported: 2, 3)"
                )));
            }
            if version & 0xFFFF == 0 && version != 0 {
                return Err(ModelError::Unsupported(format!("{name}: big-endian GGUF")));
            }
            if !(2..=3).contains(&version) {
                return Err(ModelError::Unsupported(format!(
                    "{name}: GGUF version {version} (supported: 2, 3)"
                )));
            }
            let n_tensors = c.u64()?;
            let n_kv = c.u64()?;
            // Each KV takes at least 8+4+1 bytes, each tensor info at least 8+4+8+4+8.
            if n_kv.saturating_mul(13) > c.remaining()
                || n_tensors.saturating_mul(32) > c.remaining()
            {
                return Err(format_err(format!(
                    "{name}: header claims {n_kv} metadata entries and {n_tensors} tensors, which exceeds the file"
                )));
            }
            let mut metadata = Vec::with_capacity(n_kv as usize);
            for i in 0..n_kv {
                let key = read_string(&mut c, &format!("metadata key #{i}"))?;
                let t = c.u32()?;
                let v = read_value(&mut c, t, &key, 0)?;
                metadata.push((key, v));
            }
            let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
                None => DEFAULT_ALIGNMENT,
                Some((_, v)) => match v.as_u64() {
                    Some(a) if a > 0 && a.is_power_of_two() => a,
                    _ => {
                        return Err(format_err(format!(
                            "{name}: general.alignment must be a power of two, got {v:?}"
                        )))
                    }
                },
            };
            let mut tensors = Vec::with_capacity(n_tensors as usize);
            for i in 0..n_tensors {
                let tname = read_string(&mut c, &format!("tensor #{i} name"))?;
                let n_dims = c.u32()?;
                if n_dims == 0 || n_dims > MAX_DIMS {
                    return Err(format_err(format!(
                        "{name}: tensor '{tname}': {n_dims} dims (1..=4 allowed)"
                    )));
                }
                let mut ne = Vec::with_capacity(n_dims as usize);
                for _ in 0..n_dims {
                    ne.push(c.u64()?);
                }
                let type_id = c.u32()?;
                let offset = c.u64()?;
                let numel = ne
                    .iter()
                    .try_fold(1u64, |a, &d| a.checked_mul(d))
                    .ok_or_else(|| {
                        format_err(format!("{name}: tensor '{tname}': dims {ne:?} overflow"))
                    })?;
                let n_bytes = match GgmlType::from_id(type_id) {
                    Ok(t) => {
                        if ne[0] % t.block_elems() as u64 != 0 {
                            return Err(ModelError::Tensor(format!(
                                "{name}: tensor '{tname}': row length ne[0] = {} is not a multiple of the {} block size {}",
                                ne[0],
                                t.name(),
                                t.block_elems()
                            )));
                        }
                        Some(t.bytes_for(numel)?)
                    }
                    Err(_) => None,
                };
                if offset % alignment != 0 {
                    return Err(format_err(format!(
                        "{name}: tensor '{tname}': offset {offset} is not a multiple of the alignment {alignment}"
                    )));
                }
                tensors.push(GgufTensorInfo {
                    name: tname,
                    ne,
                    type_id,
                    offset,
                    n_bytes,
                });
            }
            let data_start = c.pos.div_ceil(alignment) * alignment;
            let data_len = src.len().saturating_sub(data_start);
            for t in &tensors {
                if let Some(nb) = t.n_bytes {
                    if t.offset.checked_add(nb).is_none_or(|end| end > data_len) {
                        return Err(format_err(format!(
                            "{name}: tensor '{}' ({} bytes at data offset {}) extends past the end of the file",
                            t.name, nb, t.offset
                        )));
                    }
                }
            }
            (version, metadata, tensors, alignment, data_start)
        };
        let meta_index = metadata
            .iter()
            .enumerate()
            .map(|(i, (k, _))| (k.clone(), i))
            .collect();
        let mut tensor_index = HashMap::with_capacity(tensors.len());
        for (i, t) in tensors.iter().enumerate() {
            if tensor_index.insert(t.name.clone(), i).is_some() {
                return Err(format_err(format!(
                    "{}: duplicate tensor '{}'",
                    src.name(),
                    t.name
                )));
            }
        }
        Ok(GgufFile {
            src,
            version,
            metadata,
            meta_index,
            tensors,
            tensor_index,
            alignment,
            data_start,
        })
    }

    /// The GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The data alignment (`general.alignment`, default 32).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// The file name used in messages.
    pub fn name(&self) -> &str {
        self.src.name()
    }

    /// All metadata, in file order.
    pub fn metadata(&self) -> &[(String, GgufValue)] {
        &self.metadata
    }

    /// One metadata value.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.meta_index.get(key).map(|&i| &self.metadata[i].1)
    }

    /// A metadata string (error if present with another type).
    pub fn get_str(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| type_err(key, "a string", v)),
        }
    }

    /// A metadata non-negative integer of any width.
    pub fn get_u64(&self, key: &str) -> Result<Option<u64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| type_err(key, "a non-negative integer", v)),
        }
    }

    /// A metadata number of any type.
    pub fn get_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| type_err(key, "a number", v)),
        }
    }

    /// A metadata bool.
    pub fn get_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| type_err(key, "a bool", v)),
        }
    }

    /// All tensor infos, in file order.
    pub fn tensor_infos(&self) -> &[GgufTensorInfo] {
        &self.tensors
    }

    /// One tensor's info.
    pub fn tensor_info(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// Absolute file offset of the data section (a tensor's data starts at this plus its
    /// [`GgufTensorInfo::offset`]).
    pub fn data_start(&self) -> u64 {
        self.data_start
    }

    /// Reads one tensor by its GGUF name and converts it to f32, in the file's element order;
    /// the shape is `ne` reversed (torch order). A quantized block with a non-finite scale is a
    /// [`ModelError::Format`] naming the file, the tensor and the block.
    pub fn load_raw(&self, name: &str) -> Result<HostTensor> {
        let info = self
            .tensor_info(name)
            .ok_or_else(|| ModelError::Tensor(format!("{}: no tensor '{name}'", self.name())))?;
        let t = info.ggml_type()?;
        let nb = info.n_bytes.expect("known types have a size");
        let bytes = self
            .src
            .read_at(self.data_start + info.offset, nb as usize)?;
        let mut data = vec![0f32; info.numel() as usize];
        t.dequantize(&bytes, &mut data).map_err(|e| match e {
            ModelError::Format(m) => {
                ModelError::Format(format!("{}: tensor '{name}': {m}", self.name()))
            }
            e => e,
        })?;
        Ok(HostTensor {
            shape: info.shape(),
            data,
        })
    }

    /// The stored bytes of rows `[row0, row0 + rows)` of a tensor (a row is `ne[0]` elements, a
    /// whole number of blocks) and its type, without reading the rest.
    pub fn raw_rows(
        &self,
        name: &str,
        row0: usize,
        rows: usize,
    ) -> Result<(GgmlType, std::borrow::Cow<'_, [u8]>)> {
        let info = self
            .tensor_info(name)
            .ok_or_else(|| ModelError::Tensor(format!("{}: no tensor '{name}'", self.name())))?;
        let t = info.ggml_type()?;
        let row_elems = info.ne.first().copied().unwrap_or(1);
        let n_rows = info.numel() / row_elems.max(1);
        if (row0 as u64).saturating_add(rows as u64) > n_rows {
            return Err(ModelError::Tensor(format!(
                "{}: tensor '{name}' has {n_rows} rows, rows {row0}..{} asked",
                self.name(),
                row0.saturating_add(rows)
            )));
        }
        let row_bytes = t.bytes_for(row_elems)?;
        let bytes = self.src.read_at(
            self.data_start + info.offset + row0 as u64 * row_bytes,
            (rows as u64 * row_bytes) as usize,
        )?;
        Ok((t, bytes))
    }

    /// A string-array metadata value (`tokenizer.ggml.tokens`...), borrowed.
    pub fn get_str_array(&self, key: &str) -> Result<Option<Vec<&str>>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => {
                let a = v
                    .as_array()
                    .ok_or_else(|| type_err(key, "an array of strings", v))?;
                a.iter()
                    .map(|e| {
                        e.as_str()
                            .ok_or_else(|| type_err(key, "an array of strings", e))
                    })
                    .collect::<Result<Vec<_>>>()
                    .map(Some)
            }
        }
    }

    /// An integer-array metadata value (`tokenizer.ggml.token_type`...).
    pub fn get_i64_array(&self, key: &str) -> Result<Option<Vec<i64>>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => {
                let a = v
                    .as_array()
                    .ok_or_else(|| type_err(key, "an array of integers", v))?;
                a.iter()
                    .map(|e| {
                        e.as_i64()
                            .ok_or_else(|| type_err(key, "an array of integers", e))
                    })
                    .collect::<Result<Vec<_>>>()
                    .map(Some)
            }
        }
    }
}

fn type_err(key: &str, want: &str, v: &GgufValue) -> ModelError {
    ModelError::Config(format!(
        "GGUF key '{key}' should be {want}, found {}",
        v.type_name()
    ))
}

/// The Hugging Face name of a GGUF tensor name of a llama/qwen2 model, or `None` for names outside
/// that set.
pub fn gguf_to_hf_name(name: &str) -> Option<String> {
    match name {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer_s, rest) = rest.split_once('.')?;
    let layer: usize = layer_s.parse().ok()?;
    if layer.to_string() != layer_s {
        return None;
    }
    let (base, suffix) = rest.rsplit_once('.')?;
    if suffix != "weight" && suffix != "bias" {
        return None;
    }
    let hf = match base {
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.{suffix}"))
}

/// The GGUF name of a Hugging Face tensor name (inverse of [`gguf_to_hf_name`]).
pub fn hf_to_gguf_name(name: &str) -> Option<String> {
    match name {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        "lm_head.weight" => return Some("output.weight".into()),
        _ => {}
    }
    let rest = name.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (base, suffix) = rest.rsplit_once('.')?;
    let g = match base {
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{layer}.{g}.{suffix}"))
}

/// Builds the model config from GGUF metadata (`{arch}.*` keys, the token list and the tensor
/// table). Llama-3 RoPE scaling is recovered from the `rope_freqs.weight` tensor (see
/// [`rope_scaling_from_freqs`]).
pub fn config_from_gguf(g: &GgufFile) -> Result<LlamaConfig> {
    let arch = g
        .get_str("general.architecture")?
        .ok_or_else(|| ModelError::Config(format!("{}: no general.architecture", g.name())))?;
    let model_type = ModelType::parse(arch)?;
    let key = |k: &str| format!("{arch}.{k}");
    let req = |k: &str| -> Result<u64> {
        g.get_u64(&key(k))?.ok_or_else(|| {
            ModelError::Config(format!("{}: missing GGUF key '{}'", g.name(), key(k)))
        })
    };
    let hidden = req("embedding_length")? as usize;
    let layers = req("block_count")? as usize;
    let ffn = req("feed_forward_length")? as usize;
    let heads = req("attention.head_count")? as usize;
    let kv_heads = g
        .get_u64(&key("attention.head_count_kv"))?
        .map_or(heads, |v| v as usize);
    let eps = g
        .get_f64(&key("attention.layer_norm_rms_epsilon"))?
        .ok_or_else(|| {
            ModelError::Config(format!(
                "{}: missing GGUF key '{}'",
                g.name(),
                key("attention.layer_norm_rms_epsilon")
            ))
        })?;
    let theta = g.get_f64(&key("rope.freq_base"))?.unwrap_or(10000.0);
    let ctx = g
        .get_u64(&key("context_length"))?
        .map_or(2048, |v| v as usize);
    if heads == 0 {
        return Err(ModelError::Config(format!(
            "{}: {} is 0",
            g.name(),
            key("attention.head_count")
        )));
    }
    let head_dim = match g.get_u64(&key("attention.key_length"))? {
        Some(d) => d as usize,
        None => hidden / heads,
    };
    if let Some(vl) = g.get_u64(&key("attention.value_length"))? {
        if vl as usize != head_dim {
            return Err(ModelError::Unsupported(format!(
                "{}: attention.value_length {vl} != key_length {head_dim}",
                g.name()
            )));
        }
    }
    if let Some(rd) = g.get_u64(&key("rope.dimension_count"))? {
        if rd as usize != head_dim {
            return Err(ModelError::Unsupported(format!(
                "{}: partial rotary embedding (rope.dimension_count {rd} != head_dim {head_dim})",
                g.name()
            )));
        }
    }
    if let Some(t) = g.get_str(&key("rope.scaling.type"))? {
        if t != "none" {
            return Err(ModelError::Unsupported(format!(
                "{}: RoPE scaling type '{t}' in GGUF",
                g.name()
            )));
        }
    }
    let n_tokens = g
        .get("tokenizer.ggml.tokens")
        .and_then(GgufValue::as_array)
        .map(<[GgufValue]>::len);
    let vocab = match n_tokens {
        Some(n) => n,
        None => match g.get_u64(&key("vocab_size"))? {
            Some(v) => v as usize,
            None => g
                .tensor_info("token_embd.weight")
                .and_then(|t| t.ne.get(1).copied())
                .ok_or_else(|| {
                    ModelError::Config(format!("{}: cannot tell the vocabulary size", g.name()))
                })? as usize,
        },
    };
    let tied = g.tensor_info("output.weight").is_none();
    let rope_scaling = match g.tensor_info("rope_freqs.weight") {
        None => None,
        Some(_) => {
            let f = g.load_raw("rope_freqs.weight")?;
            Some(
                rope_scaling_from_freqs(&f.data, theta, head_dim).map_err(|m| {
                    ModelError::Unsupported(format!("{}: rope_freqs.weight: {m}", g.name()))
                })?,
            )
        }
    };
    let tok_id = |k: &str| -> Result<Option<TokenIds>> {
        Ok(g.get_u64(k)?.map(|v| TokenIds::One(v as u32)))
    };
    let cfg = LlamaConfig {
        architectures: vec![model_type.hf_class().to_string()],
        model_type,
        hidden_size: hidden,
        intermediate_size: ffn,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        num_key_value_heads: kv_heads,
        head_dim,
        rms_norm_eps: eps,
        rope_theta: theta,
        rope_scaling,
        vocab_size: vocab,
        tie_word_embeddings: tied,
        max_position_embeddings: ctx,
        bos_token_id: tok_id("tokenizer.ggml.bos_token_id")?,
        eos_token_id: tok_id("tokenizer.ggml.eos_token_id")?,
        pad_token_id: g
            .get_u64("tokenizer.ggml.padding_token_id")?
            .map(|v| v as u32),
        attention_bias: false,
        torch_dtype: None,
        hidden_act: "silu".into(),
    };
    cfg.validate().map_err(|e| match e {
        ModelError::Config(m) => ModelError::Config(format!("{}: {m}", g.name())),
        e => e,
    })?;
    Ok(cfg)
}

/// Recovers Llama-3 RoPE scaling parameters from the per-frequency divisors llama.cpp's converter
/// stores in `rope_freqs.weight` (the GGUF keeps no `rope_scaling` metadata for it).
///
/// The divisors are 1 (short wavelengths), `factor` (long ones), and `1 / ((1 - s) / factor + s)`
/// in between with `s = (orig / wavelen - low) / (high - low)`. `factor` is the largest divisor;
/// the in-between values determine `orig / (high - low)` and `low / (high - low)`, which with
/// `low_freq_factor = 1` (every Llama 3.x release) give `high_freq_factor` and
/// `original_max_position_embeddings`. The result is accepted only if it reproduces every stored
/// divisor (relative error 1e-4); otherwise this is an error.
pub fn rope_scaling_from_freqs(
    divisors: &[f32],
    rope_theta: f64,
    head_dim: usize,
) -> std::result::Result<RopeScaling, String> {
    if divisors.len() != head_dim / 2 {
        return Err(format!(
            "{} values, expected head_dim / 2 = {}",
            divisors.len(),
            head_dim / 2
        ));
    }
    let factor = divisors.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    if factor.is_nan() || factor <= 1.0 {
        return Err(format!("largest divisor {factor} is not > 1"));
    }
    let wavelen = |i: usize| {
        let freq = 1.0f32 / (rope_theta as f32).powf((2 * i) as f32 / head_dim as f32);
        2.0 * std::f64::consts::PI / freq as f64
    };
    // (1 / wavelen, s) for the in-between frequencies.
    let mid: Vec<(f64, f64)> = divisors
        .iter()
        .enumerate()
        .filter(|(_, &r)| {
            (r as f64 - 1.0).abs() > 1e-6 && (r as f64 - factor).abs() > 1e-6 * factor
        })
        .map(|(i, &r)| {
            let s = (1.0 / r as f64 - 1.0 / factor) / (1.0 - 1.0 / factor);
            (1.0 / wavelen(i), s)
        })
        .collect();
    if mid.len() < 2 {
        return Err(
            "fewer than two interpolated frequencies; cannot recover the llama3 parameters".into(),
        );
    }
    // Least squares s = a * (1 / wavelen) - b.
    let n = mid.len() as f64;
    let (sx, sy) = mid
        .iter()
        .fold((0.0, 0.0), |(a, b), &(x, y)| (a + x, b + y));
    let (mx, my) = (sx / n, sy / n);
    let (sxy, sxx) = mid.iter().fold((0.0, 0.0), |(a, b), &(x, y)| {
        (a + (x - mx) * (y - my), b + (x - mx) * (x - mx))
    });
    let a = sxy / sxx;
    let b = a * mx - my;
    if !(a > 0.0 && b > 0.0) {
        return Err(format!(
            "divisors do not follow the llama3 scheme (a {a}, b {b})"
        ));
    }
    // low = 1: b = 1 / (high - 1), a = orig / (high - 1).
    let high = 1.0 + 1.0 / b;
    let orig = (a / b).round();
    // Snap `high` to a short decimal if that still reproduces the divisors.
    let high_snapped = (high * 1e3).round() / 1e3;
    for h in [high_snapped, high] {
        let rs = RopeScaling::Llama3 {
            factor,
            low_freq_factor: 1.0,
            high_freq_factor: h,
            original_max_position_embeddings: orig as usize,
        };
        let re = rs.freq_divisors(rope_theta, head_dim);
        if re
            .iter()
            .zip(divisors)
            .all(|(&x, &y)| (x - y as f64).abs() <= 1e-4 * x.abs())
        {
            return Ok(rs);
        }
    }
    Err("recovered llama3 parameters do not reproduce the stored divisors".into())
}
