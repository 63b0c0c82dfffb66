//! The only filesystem access of the crate (native only; the browser build keeps files in memory
//! and uses the `to_files`/`from_bytes` forms). Every error names the path.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{Result, TrainError};

fn io_err(path: &Path, source: std::io::Error) -> TrainError {
    TrainError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Reads a whole file.
pub fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| io_err(path, e))
}

/// Creates `dir` and its parents.
pub fn create_dir_all(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))
}

/// A unique sibling name `.{name}.{tag}-{pid}-{n}` of `path` (same directory, so `rename` is
/// atomic).
fn sibling(path: &Path, tag: &str) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = path
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{tag}-{}-{n}", std::process::id()))
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory is written,
/// flushed to disk and renamed over `path`, so readers see the old or the new content, never a
/// partial file. The temporary file is removed on error.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = sibling(path, "tmp");
    let res = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_err(path, e));
    }
    sync_parent(path);
    Ok(())
}

/// Writes a directory of `files` (name → bytes) atomically: the files go into a temporary sibling
/// directory which is then renamed to `dir`. An existing `dir` is first renamed aside and removed
/// after the new one is in place, so at every moment either the complete old or the complete new
/// directory exists under `dir` or under its `.{name}.old-*` sibling (and never a partial one
/// under `dir`).
pub fn write_dir_atomic(dir: &Path, files: &[(String, Vec<u8>)]) -> Result<()> {
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir_all(parent)?;
    }
    let tmp = sibling(dir, "tmp");
    let res = (|| -> std::io::Result<()> {
        std::fs::create_dir(&tmp)?;
        for (name, bytes) in files {
            let mut f = std::fs::File::create(tmp.join(name))?;
            f.write_all(bytes)?;
            f.sync_all()?;
        }
        Ok(())
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(io_err(dir, e));
    }
    let old = if dir.exists() {
        let old = sibling(dir, "old");
        std::fs::rename(dir, &old).map_err(|e| io_err(dir, e))?;
        Some(old)
    } else {
        None
    };
    if let Err(e) = std::fs::rename(&tmp, dir) {
        if let Some(old) = &old {
            let _ = std::fs::rename(old, dir);
        }
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(io_err(dir, e));
    }
    sync_parent(dir);
    if let Some(old) = old {
        std::fs::remove_dir_all(&old).map_err(|e| io_err(&old, e))?;
    }
    Ok(())
}

/// Best effort: flushes the directory entry of a rename to disk (Unix; a no-op elsewhere).
fn sync_parent(path: &Path) {
    if let Some(parent) = path.parent() {
        let parent = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        if let Ok(d) = std::fs::File::open(parent) {
            let _ = d.sync_all();
        }
    }
}
