//! Streaming reader of `.safetensors` files: the JSON header is parsed once, each tensor is read
//! from the [`ByteSource`] and converted to f32 only when asked for.
//!
//! Format: an 8-byte little-endian header length `n`, `n` bytes of JSON
//! (`{"name": {"dtype": "BF16", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {..}}`,
//! offsets relative to the end of the header), then the data, row-major little-endian.

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

use crate::bytes::ByteSource;
use crate::dtype::{bf16_to_f32, f16_to_f32};
use crate::source::HostTensor;
use crate::{format_err, ModelError, Result};

/// Largest JSON header accepted (the format's own limit is 100 MB).
const MAX_HEADER: u64 = 100_000_000;

/// A safetensors element type. Only F32, F16 and BF16 convert to f32; the others are listed so
/// errors can name them and offsets can be checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StDtype {
    F32,
    F16,
    BF16,
    /// Any other dtype string (`"I64"`, `"F8_E4M3"`...).
    Other(String),
}

impl StDtype {
    fn parse(s: &str) -> StDtype {
        match s {
            "F32" => StDtype::F32,
            "F16" => StDtype::F16,
            "BF16" => StDtype::BF16,
            o => StDtype::Other(o.to_string()),
        }
    }

    /// The dtype string as written in the header.
    pub fn name(&self) -> &str {
        match self {
            StDtype::F32 => "F32",
            StDtype::F16 => "F16",
            StDtype::BF16 => "BF16",
            StDtype::Other(s) => s,
        }
    }

    /// Bytes per element, when known.
    pub fn size(&self) -> Option<u64> {
        Some(match self.name() {
            "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" | "F8_E8M0" => 1,
            "I16" | "U16" | "F16" | "BF16" => 2,
            "I32" | "U32" | "F32" => 4,
            "I64" | "U64" | "F64" | "C64" => 8,
            _ => return None,
        })
    }
}

/// One tensor's header entry.
#[derive(Debug, Clone)]
pub struct StTensorInfo {
    pub name: String,
    pub dtype: StDtype,
    pub shape: Vec<usize>,
    /// Byte range relative to the start of the data section.
    pub data_offsets: (u64, u64),
}

impl StTensorInfo {
    /// Number of elements.
    pub fn numel(&self) -> u64 {
        self.shape.iter().map(|&d| d as u64).product()
    }
}

/// An opened safetensors file: header parsed, data left in the byte source.
pub struct SafetensorsFile {
    src: Box<dyn ByteSource>,
    data_start: u64,
    tensors: Vec<StTensorInfo>,
    index: HashMap<String, usize>,
    metadata: BTreeMap<String, String>,
}

impl SafetensorsFile {
    /// Memory-maps and parses the file at `path` (native targets).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open(path: &std::path::Path) -> Result<SafetensorsFile> {
        SafetensorsFile::new(Box::new(crate::bytes::MmapBytes::open(path)?))
    }

    /// Parses the header of a safetensors file held by `src`.
    pub fn new(src: Box<dyn ByteSource>) -> Result<SafetensorsFile> {
        let name = src.name().to_string();
        let ferr = |m: String| format_err(format!("{name}: not a valid safetensors file: {m}"));
        let total = src.len();
        let n = u64::from_le_bytes(
            src.read_at(0, 8)
                .map_err(|_| ferr(format!("only {total} bytes")))?
                .as_ref()
                .try_into()
                .unwrap(),
        );
        if n > MAX_HEADER || n > total - 8 {
            return Err(ferr(format!(
                "header length {n} exceeds the file ({total} bytes)"
            )));
        }
        let header = src.read_at(8, n as usize)?;
        let json: Value =
            serde_json::from_slice(&header).map_err(|e| ferr(format!("header JSON: {e}")))?;
        drop(header);
        let obj = json
            .as_object()
            .ok_or_else(|| ferr("header is not a JSON object".into()))?;
        let data_start = 8 + n;
        let data_len = total - data_start;
        let mut tensors = Vec::with_capacity(obj.len());
        let mut metadata = BTreeMap::new();
        for (k, v) in obj {
            if k == "__metadata__" {
                if let Some(m) = v.as_object() {
                    for (mk, mv) in m {
                        metadata.insert(
                            mk.clone(),
                            mv.as_str()
                                .map(str::to_string)
                                .unwrap_or_else(|| mv.to_string()),
                        );
                    }
                }
                continue;
            }
            let bad = |m: &str| ferr(format!("tensor '{k}': {m}"));
            let dtype = StDtype::parse(
                v.get("dtype")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad("no dtype"))?,
            );
            let shape = v
                .get("shape")
                .and_then(Value::as_array)
                .ok_or_else(|| bad("no shape"))?
                .iter()
                .map(|d| {
                    d.as_u64()
                        .map(|d| d as usize)
                        .ok_or_else(|| bad("shape is not a list of integers"))
                })
                .collect::<Result<Vec<_>>>()?;
            let offs = v
                .get("data_offsets")
                .and_then(Value::as_array)
                .filter(|a| a.len() == 2)
                .and_then(|a| Some((a[0].as_u64()?, a[1].as_u64()?)))
                .ok_or_else(|| bad("data_offsets must be [begin, end]"))?;
            if offs.0 > offs.1 || offs.1 > data_len {
                return Err(bad(&format!(
                    "data_offsets {:?} outside the data section ({data_len} bytes)",
                    offs
                )));
            }
            let info = StTensorInfo {
                name: k.clone(),
                dtype,
                shape,
                data_offsets: offs,
            };
            if let Some(sz) = info.dtype.size() {
                let want = info.numel().checked_mul(sz);
                if want != Some(offs.1 - offs.0) {
                    return Err(bad(&format!(
                        "{} x {:?} needs {:?} bytes but data_offsets span {}",
                        info.dtype.name(),
                        info.shape,
                        want,
                        offs.1 - offs.0
                    )));
                }
            }
            tensors.push(info);
        }
        tensors.sort_by_key(|t| t.data_offsets);
        let index = tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(SafetensorsFile {
            src,
            data_start,
            tensors,
            index,
            metadata,
        })
    }

    /// The tensors, in file order.
    pub fn tensors(&self) -> &[StTensorInfo] {
        &self.tensors
    }

    /// One tensor's header entry.
    pub fn info(&self, name: &str) -> Option<&StTensorInfo> {
        self.index.get(name).map(|&i| &self.tensors[i])
    }

    /// The `__metadata__` map.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// The file name used in messages.
    pub fn name(&self) -> &str {
        self.src.name()
    }

    /// Reads one tensor and converts it to f32 (F32, F16 and BF16 only).
    pub fn load(&self, name: &str) -> Result<HostTensor> {
        let info = self
            .info(name)
            .ok_or_else(|| ModelError::Tensor(format!("{}: no tensor '{name}'", self.name())))?;
        let (a, b) = info.data_offsets;
        let bytes = self.src.read_at(self.data_start + a, (b - a) as usize)?;
        let n = info.numel() as usize;
        let mut data = vec![0f32; n];
        match info.dtype {
            StDtype::F32 => {
                for (o, c) in data.iter_mut().zip(bytes.chunks_exact(4)) {
                    *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
            StDtype::F16 => {
                for (o, c) in data.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = f16_to_f32(u16::from_le_bytes([c[0], c[1]]));
                }
            }
            StDtype::BF16 => {
                for (o, c) in data.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = bf16_to_f32(u16::from_le_bytes([c[0], c[1]]));
                }
            }
            StDtype::Other(ref d) => {
                return Err(ModelError::Unsupported(format!(
                    "{}: tensor '{name}' has dtype {d} (supported: F32, F16, BF16)",
                    self.name()
                )))
            }
        }
        Ok(HostTensor {
            shape: info.shape.clone(),
            data,
        })
    }
}
