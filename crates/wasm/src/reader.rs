//! Model files read range by range from something that is not in wasm memory (a browser `File` /
//! `Blob`, through `FileReaderSync` in a worker): [`RangeSource`] turns any [`RangeRead`] into a
//! [`ByteSource`] for the model parsers. Small header reads (a GGUF header is parsed one field at a
//! time) go through a window of [`WINDOW`] bytes; a large read (a tensor) is one call for its own
//! range and is never kept. [`Counted`] wraps any source to count what the loader read (a shared
//! [`LoadCounter`]) for progress reports. Plain Rust, tested natively with in-memory readers.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tinytune_model::{ByteSource, ModelError};

/// Bytes fetched at once for a small read; reads of a quarter of it or more are fetched alone.
pub const WINDOW: usize = 256 << 10;

/// Reads `len` bytes at `offset` of a file that lives elsewhere (the range is in bounds).
pub trait RangeRead: Send + Sync {
    fn read_range(&self, offset: u64, len: usize) -> Result<Vec<u8>, String>;
}

/// What a model load has read so far, shared by the files of one load.
#[derive(Debug, Default)]
pub struct LoadCounter {
    /// Bytes the parsers and the loader asked for.
    pub bytes: AtomicU64,
    /// Reads since [`LoadCounter::start_tensors`]: the loader reads each tensor with one call.
    pub tensor_reads: AtomicU64,
    tensors: AtomicBool,
}

impl LoadCounter {
    /// From now on every read is one tensor (the headers are parsed).
    pub fn start_tensors(&self) {
        self.tensors.store(true, Ordering::Relaxed);
    }
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
    pub fn tensor_reads(&self) -> u64 {
        self.tensor_reads.load(Ordering::Relaxed)
    }
}

/// Called after every tensor read.
pub type Notify = fn(&LoadCounter);

/// Counts the reads of a [`ByteSource`] into a shared [`LoadCounter`].
pub struct Counted {
    inner: Box<dyn ByteSource>,
    counter: Arc<LoadCounter>,
    notify: Option<Notify>,
}

impl Counted {
    pub fn new(
        inner: Box<dyn ByteSource>,
        counter: Arc<LoadCounter>,
        notify: Option<Notify>,
    ) -> Counted {
        Counted {
            inner,
            counter,
            notify,
        }
    }
}

impl ByteSource for Counted {
    fn len(&self) -> u64 {
        self.inner.len()
    }
    fn read_at(&self, offset: u64, len: usize) -> tinytune_model::Result<Cow<'_, [u8]>> {
        let b = self.inner.read_at(offset, len)?;
        self.counter.bytes.fetch_add(len as u64, Ordering::Relaxed);
        if self.counter.tensors.load(Ordering::Relaxed) {
            self.counter.tensor_reads.fetch_add(1, Ordering::Relaxed);
            if let Some(n) = self.notify {
                n(&self.counter);
            }
        }
        Ok(b)
    }
    fn name(&self) -> &str {
        self.inner.name()
    }
}

struct Window {
    start: u64,
    bytes: Vec<u8>,
}

/// A [`ByteSource`] over a [`RangeRead`]: nothing of the file is kept but one small window.
pub struct RangeSource<R> {
    inner: R,
    len: u64,
    name: String,
    window: Mutex<Window>,
    /// Calls made to the underlying reader.
    pub fetches: AtomicU64,
}

impl<R: RangeRead> RangeSource<R> {
    pub fn new(inner: R, len: u64, name: impl Into<String>) -> RangeSource<R> {
        RangeSource {
            inner,
            len,
            name: name.into(),
            window: Mutex::new(Window {
                start: 0,
                bytes: Vec::new(),
            }),
            fetches: AtomicU64::new(0),
        }
    }

    fn fetch(&self, offset: u64, len: usize) -> tinytune_model::Result<Vec<u8>> {
        let b = self
            .inner
            .read_range(offset, len)
            .map_err(|e| ModelError::Format(format!("{}: cannot read: {e}", self.name)))?;
        if b.len() != len {
            return Err(ModelError::Format(format!(
                "{}: read {} bytes at {offset}, expected {len} (was the file changed?)",
                self.name,
                b.len()
            )));
        }
        self.fetches.fetch_add(1, Ordering::Relaxed);
        Ok(b)
    }
}

impl<R: RangeRead> ByteSource for RangeSource<R> {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, offset: u64, len: usize) -> tinytune_model::Result<Cow<'_, [u8]>> {
        let end = offset.checked_add(len as u64).filter(|&e| e <= self.len);
        let Some(end) = end else {
            return Err(ModelError::Format(format!(
                "{}: truncated file: bytes {offset}..{} requested, the file has {}",
                self.name,
                offset as u128 + len as u128,
                self.len
            )));
        };
        if len == 0 {
            return Ok(Cow::Borrowed(&[]));
        }
        if len >= WINDOW / 4 {
            return Ok(Cow::Owned(self.fetch(offset, len)?));
        }
        let mut w = self.window.lock().map_err(|_| {
            ModelError::Format(format!("{}: reader poisoned by a panic", self.name))
        })?;
        let inside = offset >= w.start && end <= w.start + w.bytes.len() as u64;
        if !inside {
            let n = (self.len - offset).min(WINDOW as u64) as usize;
            w.bytes = self.fetch(offset, n)?;
            w.start = offset;
        }
        let a = (offset - w.start) as usize;
        Ok(Cow::Owned(w.bytes[a..a + len].to_vec()))
    }

    fn name(&self) -> &str {
        &self.name
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use tinytune_model::MemBytes;

    /// An in-memory "file" that counts the calls made to it.
    struct Recorded {
        data: Vec<u8>,
        calls: AtomicUsize,
        max_len: AtomicUsize,
    }

    impl RangeRead for Arc<Recorded> {
        fn read_range(&self, offset: u64, len: usize) -> Result<Vec<u8>, String> {
            self.calls.fetch_add(1, Ordering::Relaxed);
            self.max_len.fetch_max(len, Ordering::Relaxed);
            Ok(self.data[offset as usize..offset as usize + len].to_vec())
        }
    }

    fn counted(n: usize) -> Arc<Recorded> {
        Arc::new(Recorded {
            data: (0..n).map(|i| (i * 7 % 251) as u8).collect(),
            calls: AtomicUsize::new(0),
            max_len: AtomicUsize::new(0),
        })
    }

    #[test]
    fn reads_match_memory_and_small_reads_share_a_window() {
        let n = 3 * WINDOW + 123;
        let f = counted(n);
        let src = RangeSource::new(f.clone(), n as u64, "f");
        let mem = MemBytes::new(f.data.clone(), "m");
        // 1000 small sequential reads: one fetch.
        for i in 0..1000u64 {
            assert_eq!(
                &*src.read_at(i * 8, 8).unwrap(),
                &*mem.read_at(i * 8, 8).unwrap()
            );
        }
        assert_eq!(f.calls.load(Ordering::Relaxed), 1);
        assert_eq!(src.fetches.load(Ordering::Relaxed), 1);
        // Across the window's end, at the file's end, big reads.
        for (off, len) in [
            (WINDOW as u64 - 3, 10),
            (n as u64 - 5, 5),
            (17, 2 * WINDOW),
            (0, n),
        ] {
            assert_eq!(
                &*src.read_at(off, len).unwrap(),
                &*mem.read_at(off, len).unwrap()
            );
        }
        assert!(src.read_at(n as u64 - 5, 6).is_err());
        assert!(src.read_at(u64::MAX, 2).is_err());
        // A big read is fetched alone, not widened.
        f.max_len.store(0, Ordering::Relaxed);
        src.read_at(5, WINDOW / 2).unwrap();
        assert_eq!(f.max_len.load(Ordering::Relaxed), WINDOW / 2);
    }

    #[test]
    fn tensor_reads_are_counted() {
        let counter = Arc::new(LoadCounter::default());
        static NOTIFIED: AtomicUsize = AtomicUsize::new(0);
        let src = Counted::new(
            Box::new(MemBytes::new(vec![1u8; 1000], "m")),
            counter.clone(),
            Some(|_| {
                NOTIFIED.fetch_add(1, Ordering::Relaxed);
            }),
        );
        src.read_at(0, 16).unwrap();
        src.read_at(16, 4).unwrap();
        assert_eq!((counter.tensor_reads(), counter.bytes()), (0, 20));
        counter.start_tensors();
        src.read_at(100, 40).unwrap();
        src.read_at(400, 400).unwrap();
        assert_eq!((counter.tensor_reads(), counter.bytes()), (2, 460));
        assert_eq!(NOTIFIED.load(Ordering::Relaxed), 2);
        assert!(src.read_at(990, 20).is_err());
    }

    #[test]
    fn short_reads_are_errors() {
        struct Short;
        impl RangeRead for Short {
            fn read_range(&self, _: u64, len: usize) -> Result<Vec<u8>, String> {
                Ok(vec![0; len / 2])
            }
        }
        let src = RangeSource::new(Short, 100, "s");
        let e = src.read_at(0, 10).unwrap_err().to_string();
        assert!(e.contains("s: read 50 bytes"), "{e}");
    }
}
