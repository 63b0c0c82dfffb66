//! One run per output directory: `train` holds `OUTPUT_DIR/tinytune.lock` (the run's process id)
//! while it writes there. A second run into the same directory is refused while the first is
//! alive; a lock left by a run that was killed (its process is gone) is taken over with a message.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// The lock file's name inside the output directory.
pub const LOCK_FILE: &str = "tinytune.lock";

/// A held lock; dropping it removes the file.
#[derive(Debug)]
pub struct RunLock {
    path: PathBuf,
}

/// Whether process `pid` is alive: `Some(bool)` where the system can tell (`/proc`), `None`
/// elsewhere.
pub(crate) fn alive(pid: u32) -> Option<bool> {
    let proc = Path::new("/proc");
    if !proc.join("self").exists() {
        return None;
    }
    Some(proc.join(pid.to_string()).exists())
}

impl RunLock {
    /// Takes the lock of `dir` (created if missing) for this process.
    ///
    /// Errors when another live run holds it (naming its pid and what to do), or when the lock
    /// cannot be written.
    pub fn acquire(dir: &Path) -> Result<RunLock> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let path = dir.join(LOCK_FILE);
        let me = std::process::id();
        for _ in 0..2 {
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut f) => {
                    writeln!(f, "{me}")
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    return Ok(RunLock { path });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let text = std::fs::read_to_string(&path).unwrap_or_default();
                    let holder = text.trim().parse::<u32>().ok();
                    match holder.map(|pid| (pid, alive(pid))) {
                        Some((pid, Some(true))) if pid != me => bail!(
                            "{} is in use by another tinytune run (process {pid}, lock {}): \
                             wait for it to finish or stop it, or choose another --output-dir",
                            dir.display(),
                            path.display()
                        ),
                        Some((pid, None)) if pid != me => bail!(
                            "{} has a lock from process {pid} ({}) and this system cannot tell \
                             whether it still runs: if no tinytune run writes there, delete the \
                             lock file and start again",
                            dir.display(),
                            path.display()
                        ),
                        _ => {
                            let who = holder.map_or("an unreadable lock".to_string(), |p| {
                                format!("process {p}, no longer running")
                            });
                            eprintln!(
                                "taking over the stale lock {} ({who}: a run that was killed)",
                                path.display()
                            );
                            std::fs::remove_file(&path)
                                .with_context(|| format!("cannot remove {}", path.display()))?;
                        }
                    }
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot create {}", path.display()))
                }
            }
        }
        bail!(
            "cannot take the lock {}: another run took it at the same time",
            path.display()
        )
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_runs_lock_is_refused_and_a_stale_one_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        // A lock held by a live process (pid 1 always exists where /proc does).
        std::fs::write(dir.path().join(LOCK_FILE), "1\n").unwrap();
        if alive(1) == Some(true) {
            let e = RunLock::acquire(dir.path()).unwrap_err().to_string();
            assert!(
                e.contains("in use by another tinytune run (process 1"),
                "{e}"
            );
        }
        // A lock from a process that is gone: taken over, then removed on drop.
        std::fs::write(dir.path().join(LOCK_FILE), "4294967295\n").unwrap();
        let lock = RunLock::acquire(dir.path()).unwrap();
        let held = std::fs::read_to_string(dir.path().join(LOCK_FILE)).unwrap();
        assert_eq!(held.trim(), std::process::id().to_string());
        drop(lock);
        assert!(!dir.path().join(LOCK_FILE).exists());
    }
}
