//! Streaming reader and writer of `.safetensors` files, the one safetensors implementation of
//! tinytune (model weights, PEFT adapters, checkpoints, `quantize`, `merge` and `logits` output).
//!
//! Reading: the JSON header is parsed once, each tensor is read from the [`ByteSource`] (a memory
//! map, a buffer, or the chunks of a browser stream) and converted to f32 only when asked for.
//!
//! Writing: [`serialize`] produces exactly the bytes of the `safetensors` crate's (and Python
//! `safetensors`') `serialize` (tensors ordered by descending dtype, then name; compact JSON
//! header padded with spaces to a multiple of 8); [`header_json`] lays out a header for callers that
//! stream tensor data to a file themselves.
//!
//! Format: an 8-byte little-endian header length `n`, `n` bytes of JSON
//! (`{"name": {"dtype": "BF16", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {..}}`,
//! offsets relative to the end of the header), then the data, row-major little-endian.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

use crate::bytes::ByteSource;
use crate::float::FloatDtype;
use crate::tensor::HostTensor;
use crate::{format_err, ModelError, Result};

/// Largest JSON header accepted (the format's own limit is 100 MB).
const MAX_HEADER: u64 = 100_000_000;

/// The dtypes of the safetensors format, in the format's own order (by alignment: the writer puts
/// later ones first).
const DTYPES: &[(&str, usize)] = &[
    ("BOOL", 8),
    ("F4", 4),
    ("F6_E2M3", 6),
    ("F6_E3M2", 6),
    ("U8", 8),
    ("I8", 8),
    ("F8_E5M2", 8),
    ("F8_E4M3", 8),
    ("F8_E8M0", 8),
    ("F8_E4M3FNUZ", 8),
    ("F8_E5M2FNUZ", 8),
    ("I16", 16),
    ("U16", 16),
    ("F16", 16),
    ("BF16", 16),
    ("I32", 32),
    ("U32", 32),
    ("F32", 32),
    ("C64", 64),
    ("F64", 64),
    ("I64", 64),
    ("U64", 64),
];

/// A safetensors element type. F32, F16, BF16 (and F64) convert to f32; the others are named so
/// errors can name them, offsets can be checked and tensors copied.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum StDtype {
    F32,
    F16,
    BF16,
    F64,
    U8,
    I32,
    I64,
    /// Any other dtype string (`"F8_E4M3"`, or one this crate does not know).
    Other(String),
}

impl StDtype {
    /// The dtype of a header string.
    pub fn parse(s: &str) -> StDtype {
        match s {
            "F32" => StDtype::F32,
            "F16" => StDtype::F16,
            "BF16" => StDtype::BF16,
            "F64" => StDtype::F64,
            "U8" => StDtype::U8,
            "I32" => StDtype::I32,
            "I64" => StDtype::I64,
            o => StDtype::Other(o.to_string()),
        }
    }

    /// The dtype string as written in the header.
    pub fn name(&self) -> &str {
        match self {
            StDtype::F32 => "F32",
            StDtype::F16 => "F16",
            StDtype::BF16 => "BF16",
            StDtype::F64 => "F64",
            StDtype::U8 => "U8",
            StDtype::I32 => "I32",
            StDtype::I64 => "I64",
            StDtype::Other(s) => s,
        }
    }

    /// Position in the format's dtype list, when the format knows the dtype.
    fn rank(&self) -> Option<usize> {
        DTYPES.iter().position(|(n, _)| *n == self.name())
    }

    /// Bits per element, when known (4 and 6 for the packed float formats).
    pub fn bitsize(&self) -> Option<usize> {
        self.rank().map(|i| DTYPES[i].1)
    }

    /// Bytes per element, when known and whole.
    pub fn size(&self) -> Option<u64> {
        self.bitsize().filter(|b| b % 8 == 0).map(|b| b as u64 / 8)
    }

    /// The float dtype, for F32, F16 and BF16.
    pub fn float(&self) -> Option<FloatDtype> {
        match self {
            StDtype::F32 => Some(FloatDtype::F32),
            StDtype::F16 => Some(FloatDtype::F16),
            StDtype::BF16 => Some(FloatDtype::BF16),
            _ => None,
        }
    }

    /// Orders dtypes as the format's writers do (larger alignment first); unknown dtypes last.
    pub fn cmp_alignment(&self, other: &StDtype) -> std::cmp::Ordering {
        let key = |d: &StDtype| d.rank().map_or(-1, |r| r as i64);
        key(other).cmp(&key(self))
    }
}

impl From<FloatDtype> for StDtype {
    fn from(d: FloatDtype) -> StDtype {
        match d {
            FloatDtype::F32 => StDtype::F32,
            FloatDtype::F16 => StDtype::F16,
            FloatDtype::BF16 => StDtype::BF16,
        }
    }
}

impl std::fmt::Display for StDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
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
    /// Whether the header has a `__metadata__` entry (possibly empty).
    has_metadata: bool,
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
        let mut has_metadata = false;
        for (k, v) in obj {
            if k == "__metadata__" {
                has_metadata = true;
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
            has_metadata,
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

    /// Bytes of the whole file.
    pub fn byte_len(&self) -> u64 {
        self.src.len()
    }

    /// The file name used in messages.
    pub fn name(&self) -> &str {
        self.src.name()
    }

    /// The `__metadata__` map, `None` when the header has none (as opposed to an empty one).
    pub fn metadata_entry(&self) -> Option<&BTreeMap<String, String>> {
        self.has_metadata.then_some(&self.metadata)
    }

    /// One tensor's stored bytes, as they are in the file.
    pub fn raw(&self, name: &str) -> Result<Cow<'_, [u8]>> {
        let info = self
            .info(name)
            .ok_or_else(|| ModelError::Tensor(format!("{}: no tensor '{name}'", self.name())))?;
        let (a, b) = info.data_offsets;
        self.src.read_at(self.data_start + a, (b - a) as usize)
    }

    /// The stored bytes of rows `[row0, row0 + rows)` of a tensor of at least one dimension (a row
    /// is everything after the first dimension), without reading the rest.
    pub fn raw_rows(&self, name: &str, row0: usize, rows: usize) -> Result<Cow<'_, [u8]>> {
        let info = self
            .info(name)
            .ok_or_else(|| ModelError::Tensor(format!("{}: no tensor '{name}'", self.name())))?;
        let Some(size) = info.dtype.size() else {
            return Err(ModelError::Unsupported(format!(
                "{}: tensor '{name}' has dtype {}, not whole bytes per element",
                self.name(),
                info.dtype
            )));
        };
        let n_rows = info.shape.first().copied().unwrap_or(1);
        if row0.checked_add(rows).is_none_or(|end| end > n_rows) {
            return Err(ModelError::Tensor(format!(
                "{}: tensor '{name}' has {n_rows} rows, rows {row0}..{} asked",
                self.name(),
                row0.saturating_add(rows)
            )));
        }
        let row_bytes = info
            .shape
            .iter()
            .skip(1)
            .map(|&d| d as u64)
            .product::<u64>()
            * size;
        let start = info.data_offsets.0 + row0 as u64 * row_bytes;
        self.src
            .read_at(self.data_start + start, (rows as u64 * row_bytes) as usize)
    }

    /// Reads one tensor and converts it to f32 (F32, F16, BF16 exactly; F64 rounded).
    pub fn load(&self, name: &str) -> Result<HostTensor> {
        let bytes = self.raw(name)?;
        let info = self.info(name).expect("raw() found it");
        let n = info.numel() as usize;
        let data = match (&info.dtype, info.dtype.float()) {
            (_, Some(f)) => {
                let mut data = vec![0f32; n];
                f.decode_into(&bytes, &mut data);
                data
            }
            (StDtype::F64, None) => bytes
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
                .collect(),
            (d, None) => {
                return Err(ModelError::Unsupported(format!(
                    "{}: tensor '{name}' has dtype {d} (supported: F32, F16, BF16, F64)",
                    self.name()
                )))
            }
        };
        Ok(HostTensor {
            shape: info.shape.clone(),
            data,
        })
    }
}

/// One tensor of a header being written: name, dtype, shape and byte length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StEntry {
    pub name: String,
    pub dtype: StDtype,
    pub shape: Vec<usize>,
    /// Bytes of data.
    pub len: usize,
}

impl StEntry {
    /// An entry whose length follows from `dtype` and `shape`; errors for dtypes of unknown size
    /// and sub-byte totals.
    pub fn new(name: impl Into<String>, dtype: StDtype, shape: Vec<usize>) -> Result<StEntry> {
        let name = name.into();
        let bits = dtype.bitsize().ok_or_else(|| {
            ModelError::Unsupported(format!(
                "tensor '{name}': unknown safetensors dtype {dtype}"
            ))
        })?;
        let nbits = shape
            .iter()
            .try_fold(bits, |acc, &d| acc.checked_mul(d))
            .filter(|b| b % 8 == 0)
            .ok_or_else(|| {
                ModelError::Tensor(format!(
                    "tensor '{name}': {dtype} x {shape:?} is not a whole number of bytes"
                ))
            })?;
        Ok(StEntry {
            name,
            dtype,
            shape,
            len: nbits / 8,
        })
    }
}

/// The header JSON (compact, unpadded) of `entries` laid out contiguously in the given order, with
/// `__metadata__` first when `metadata` is given; byte-identical to what the `safetensors` crate
/// serializes for the same layout (metadata keys in sorted order). Errors when an entry's length
/// does not match its dtype and shape.
pub fn header_json(
    entries: &[StEntry],
    metadata: Option<&BTreeMap<String, String>>,
) -> Result<Vec<u8>> {
    let q = |s: &str| serde_json::to_string(s).expect("strings serialize");
    let mut out = String::from("{");
    let mut first = true;
    let mut sep = |out: &mut String| {
        if !first {
            out.push(',');
        }
        first = false;
    };
    if let Some(m) = metadata {
        sep(&mut out);
        out.push_str("\"__metadata__\":{");
        for (i, (k, v)) in m.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&q(k));
            out.push(':');
            out.push_str(&q(v));
        }
        out.push('}');
    }
    let mut off = 0usize;
    for e in entries {
        let want = StEntry::new(e.name.clone(), e.dtype.clone(), e.shape.clone())?;
        if want.len != e.len {
            return Err(ModelError::Tensor(format!(
                "tensor '{}': {} bytes planned, {} x {:?} holds {}",
                e.name, e.len, e.dtype, e.shape, want.len
            )));
        }
        sep(&mut out);
        let shape: Vec<String> = e.shape.iter().map(usize::to_string).collect();
        out.push_str(&format!(
            "{}:{{\"dtype\":{},\"shape\":[{}],\"data_offsets\":[{},{}]}}",
            q(&e.name),
            q(e.dtype.name()),
            shape.join(","),
            off,
            off + e.len
        ));
        off += e.len;
    }
    out.push('}');
    Ok(out.into_bytes())
}

/// `header` padded with spaces to a multiple of 8 bytes, preceded by its length: the bytes before
/// the data.
pub fn header_prefix(mut header: Vec<u8>) -> Vec<u8> {
    header.resize(header.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + header.len());
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(&header);
    out
}

/// A whole safetensors file in memory, as the `safetensors` crate's `serialize` writes it: tensors
/// ordered by descending dtype alignment, then by name.
pub fn serialize(
    tensors: &[(&str, StDtype, Vec<usize>, &[u8])],
    metadata: Option<&BTreeMap<String, String>>,
) -> Result<Vec<u8>> {
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by(|&a, &b| {
        let (ta, tb) = (&tensors[a], &tensors[b]);
        ta.1.cmp_alignment(&tb.1).then_with(|| ta.0.cmp(tb.0))
    });
    let mut entries = Vec::with_capacity(tensors.len());
    for &i in &order {
        let (name, dtype, shape, data) = &tensors[i];
        let e = StEntry::new(*name, dtype.clone(), shape.clone())?;
        if e.len != data.len() {
            return Err(ModelError::Tensor(format!(
                "tensor '{name}': {} bytes of data for {dtype} x {shape:?} ({} bytes)",
                data.len(),
                e.len
            )));
        }
        entries.push(e);
    }
    let mut out = header_prefix(header_json(&entries, metadata)?);
    out.reserve(entries.iter().map(|e| e.len).sum());
    for &i in &order {
        out.extend_from_slice(tensors[i].3);
    }
    Ok(out)
}

/// A safetensors file held in memory (an adapter, a checkpoint), parsed with [`SafetensorsFile`].
pub fn from_bytes(bytes: &[u8], name: &str) -> Result<SafetensorsFile> {
    SafetensorsFile::new(Box::new(crate::bytes::MemBytes::new(bytes, name)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `safetensors` crate (dev-dependency only) is the oracle: same bytes for the same tensors.
    #[test]
    fn serialize_matches_the_safetensors_crate() {
        use ::safetensors::tensor::TensorView;
        use ::safetensors::Dtype;
        let bytes = |n: usize, seed: u8| -> Vec<u8> {
            (0..n).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect()
        };
        let specs: Vec<(&str, StDtype, Dtype, Vec<usize>)> = vec![
            ("b.weight", StDtype::BF16, Dtype::BF16, vec![3, 5]),
            ("a.weight", StDtype::F32, Dtype::F32, vec![2, 2]),
            ("ids", StDtype::I64, Dtype::I64, vec![4]),
            ("codes", StDtype::U8, Dtype::U8, vec![7, 1]),
            ("h\u{e9}\"q", StDtype::F16, Dtype::F16, vec![1, 3]),
            ("scalar", StDtype::F64, Dtype::F64, vec![]),
            ("empty", StDtype::I32, Dtype::I32, vec![0, 4]),
            ("a.bias", StDtype::F32, Dtype::F32, vec![2]),
            ("fp8", StDtype::parse("F8_E4M3"), Dtype::F8_E4M3, vec![3]),
        ];
        let data: Vec<Vec<u8>> = specs
            .iter()
            .enumerate()
            .map(|(i, (_, d, _, s))| {
                bytes(
                    s.iter().product::<usize>() * d.size().unwrap() as usize,
                    i as u8,
                )
            })
            .collect();
        for meta in [
            None,
            Some(BTreeMap::new()),
            Some(BTreeMap::from([("format".to_string(), "pt".to_string())])),
        ] {
            let ours: Vec<(&str, StDtype, Vec<usize>, &[u8])> = specs
                .iter()
                .zip(&data)
                .map(|((n, d, _, s), b)| (*n, d.clone(), s.clone(), b.as_slice()))
                .collect();
            let theirs: Vec<(&str, TensorView)> = specs
                .iter()
                .zip(&data)
                .map(|((n, _, d, s), b)| (*n, TensorView::new(*d, s.clone(), b).unwrap()))
                .collect();
            let want =
                ::safetensors::serialize(theirs, meta.clone().map(|m| m.into_iter().collect()))
                    .unwrap();
            let got = serialize(&ours, meta.as_ref()).unwrap();
            assert_eq!(
                String::from_utf8_lossy(&got[..want.len().min(got.len()).min(2000)]),
                String::from_utf8_lossy(&want[..want.len().min(got.len()).min(2000)])
            );
            assert_eq!(got, want);
            // And it reads back.
            let f = from_bytes(&got, "t").unwrap();
            assert_eq!(f.metadata_entry().is_some(), meta.is_some());
            assert_eq!(&*f.raw("b.weight").unwrap(), data[0].as_slice());
            assert_eq!(f.load("a.bias").unwrap().shape, vec![2]);
        }
        // Sizes must match the dtype and shape.
        assert!(serialize(&[("x", StDtype::F32, vec![3], &[0u8; 8][..])], None).is_err());
        assert!(serialize(&[("x", StDtype::parse("Q9"), vec![1], &[0u8; 1][..])], None).is_err());
    }
}
