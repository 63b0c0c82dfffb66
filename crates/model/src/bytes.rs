//! Random access to the bytes of a model file, so the parsers never need the whole file in memory:
//! a memory map natively ([`MmapBytes`]), one buffer ([`MemBytes`]) or a list of chunks
//! ([`ChunkedBytes`], what a browser build fills from a JS `ReadableStream` without ever
//! concatenating the chunks into one allocation).

use std::borrow::Cow;
use std::sync::Arc;

use crate::{format_err, Result};

/// Random-access bytes of one file. Implementations must be cheap to read in small pieces (the
/// GGUF header is parsed one field at a time) and return borrowed slices where they can.
pub trait ByteSource: Send + Sync {
    /// Total length in bytes.
    fn len(&self) -> u64;

    /// Whether the source is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `len` bytes at `offset`: borrowed when they are contiguous in memory, copied otherwise.
    /// Errors (never panics) when the range is outside the source.
    fn read_at(&self, offset: u64, len: usize) -> Result<Cow<'_, [u8]>>;

    /// A name for error messages (file path, or a description).
    fn name(&self) -> &str;
}

/// Checks `offset..offset+len` against `total`, returning the range as `usize`s.
pub(crate) fn check_range(
    name: &str,
    total: u64,
    offset: u64,
    len: usize,
) -> Result<(usize, usize)> {
    let end = offset.checked_add(len as u64);
    match end {
        Some(end) if end <= total => Ok((offset as usize, end as usize)),
        _ => Err(format_err(format!(
            "{name}: truncated file: bytes {offset}..{} requested, the file has {total}",
            offset as u128 + len as u128
        ))),
    }
}

/// The whole file in one buffer (tests, small files, or a browser `ArrayBuffer`).
#[derive(Clone)]
pub struct MemBytes {
    data: Arc<[u8]>,
    name: String,
}

impl MemBytes {
    /// Wraps `data`; `name` is used in error messages.
    pub fn new(data: impl Into<Arc<[u8]>>, name: impl Into<String>) -> MemBytes {
        MemBytes {
            data: data.into(),
            name: name.into(),
        }
    }
}

impl ByteSource for MemBytes {
    fn len(&self) -> u64 {
        self.data.len() as u64
    }
    fn read_at(&self, offset: u64, len: usize) -> Result<Cow<'_, [u8]>> {
        let (a, b) = check_range(&self.name, self.len(), offset, len)?;
        Ok(Cow::Borrowed(&self.data[a..b]))
    }
    fn name(&self) -> &str {
        &self.name
    }
}

/// A file as a list of chunks in order (for example the `Uint8Array`s of a JS stream). Reads inside
/// one chunk are borrowed; reads across chunk boundaries are copied (only the requested bytes).
pub struct ChunkedBytes {
    chunks: Vec<Box<[u8]>>,
    /// Start offset of each chunk, plus the total length at the end.
    starts: Vec<u64>,
    name: String,
}

impl ChunkedBytes {
    /// An empty source; append chunks with [`ChunkedBytes::push`].
    pub fn new(name: impl Into<String>) -> ChunkedBytes {
        ChunkedBytes {
            chunks: Vec::new(),
            starts: vec![0],
            name: name.into(),
        }
    }

    /// Appends the next chunk of the file (empty chunks are ignored).
    pub fn push(&mut self, chunk: impl Into<Box<[u8]>>) {
        let chunk = chunk.into();
        if chunk.is_empty() {
            return;
        }
        let end = self.starts.last().copied().unwrap_or(0) + chunk.len() as u64;
        self.chunks.push(chunk);
        self.starts.push(end);
    }

    /// Index of the chunk holding byte `pos` (`pos < len`).
    fn chunk_of(&self, pos: u64) -> usize {
        // starts[i] <= pos < starts[i + 1]
        self.starts.partition_point(|&s| s <= pos) - 1
    }
}

impl ByteSource for ChunkedBytes {
    fn len(&self) -> u64 {
        self.starts.last().copied().unwrap_or(0)
    }
    fn read_at(&self, offset: u64, len: usize) -> Result<Cow<'_, [u8]>> {
        check_range(&self.name, self.len(), offset, len)?;
        if len == 0 {
            return Ok(Cow::Borrowed(&[]));
        }
        let mut i = self.chunk_of(offset);
        let within = (offset - self.starts[i]) as usize;
        if within + len <= self.chunks[i].len() {
            return Ok(Cow::Borrowed(&self.chunks[i][within..within + len]));
        }
        let mut out = Vec::with_capacity(len);
        let mut pos = within;
        while out.len() < len {
            let c = &self.chunks[i];
            let take = (c.len() - pos).min(len - out.len());
            out.extend_from_slice(&c[pos..pos + take]);
            i += 1;
            pos = 0;
        }
        Ok(Cow::Owned(out))
    }
    fn name(&self) -> &str {
        &self.name
    }
}

/// A read-only memory map of a file (native targets only). The OS pages the bytes in on demand and
/// can drop them again, so a model is never held twice in memory.
#[cfg(not(target_arch = "wasm32"))]
pub struct MmapBytes {
    map: memmap2::Mmap,
    name: String,
}

#[cfg(not(target_arch = "wasm32"))]
impl MmapBytes {
    /// Maps the file at `path`.
    pub fn open(path: &std::path::Path) -> Result<MmapBytes> {
        let file = std::fs::File::open(path).map_err(|e| crate::io_err(path, e))?;
        // SAFETY: the map is read-only; like every mmap-based loader we assume the file is not
        // truncated or rewritten while the model is open.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| crate::io_err(path, e))?;
        Ok(MmapBytes {
            map,
            name: path.display().to_string(),
        })
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl ByteSource for MmapBytes {
    fn len(&self) -> u64 {
        self.map.len() as u64
    }
    fn read_at(&self, offset: u64, len: usize) -> Result<Cow<'_, [u8]>> {
        let (a, b) = check_range(&self.name, self.len(), offset, len)?;
        Ok(Cow::Borrowed(&self.map[a..b]))
    }
    fn name(&self) -> &str {
        &self.name
    }
}

/// A sequential reader over a [`ByteSource`] (little-endian), used by the header parsers.
pub(crate) struct Cursor<'a> {
    pub src: &'a dyn ByteSource,
    pub pos: u64,
}

impl<'a> Cursor<'a> {
    pub fn new(src: &'a dyn ByteSource, pos: u64) -> Cursor<'a> {
        Cursor { src, pos }
    }
    pub fn remaining(&self) -> u64 {
        self.src.len().saturating_sub(self.pos)
    }
    pub fn take(&mut self, n: usize) -> Result<Cow<'a, [u8]>> {
        let b = self.src.read_at(self.pos, n)?;
        self.pos += n as u64;
        Ok(b)
    }
    fn arr<const N: usize>(&mut self) -> Result<[u8; N]> {
        let b = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(&b);
        Ok(a)
    }
    pub fn u8(&mut self) -> Result<u8> {
        Ok(self.arr::<1>()?[0])
    }
    pub fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.arr()?))
    }
    pub fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.arr()?))
    }
    pub fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.arr()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_reads_match_contiguous() {
        let data: Vec<u8> = (0..100u8).collect();
        let mut c = ChunkedBytes::new("t");
        c.push(data[..7].to_vec());
        c.push(Vec::new());
        c.push(data[7..8].to_vec());
        c.push(data[8..61].to_vec());
        c.push(data[61..].to_vec());
        let m = MemBytes::new(data.clone(), "m");
        assert_eq!(c.len(), 100);
        for off in 0..100u64 {
            for len in 0..=(100 - off as usize) {
                assert_eq!(
                    &*c.read_at(off, len).unwrap(),
                    &*m.read_at(off, len).unwrap()
                );
            }
        }
        assert!(c.read_at(99, 2).is_err());
        assert!(m.read_at(u64::MAX, 2).is_err());
        assert!(matches!(c.read_at(10, 5).unwrap(), Cow::Borrowed(_)));
    }
}
