//! Helpers shared by the CLI integration tests: the repository root, running the built binary,
//! the GPU check, and the one-line error contract.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs the `tinytune` binary of this build.
pub fn tinytune(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tinytune"))
        .args(args)
        .output()
        .expect("cannot run the tinytune binary")
}

/// Whether `tinytune info` finds a device; `TINYTUNE_REQUIRE_GPU=1` turns a missing one into a
/// failure, otherwise the test is skipped with a message.
pub fn have_gpu() -> bool {
    static OK: OnceLock<Result<(), String>> = OnceLock::new();
    let r = OK.get_or_init(|| {
        let o = tinytune(&["info"]);
        if o.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&o.stderr).into_owned())
        }
    });
    match r {
        Ok(()) => true,
        Err(e) => {
            if std::env::var("TINYTUNE_REQUIRE_GPU").as_deref() == Ok("1") {
                panic!("TINYTUNE_REQUIRE_GPU=1 but `tinytune info` failed: {e}");
            }
            eprintln!("SKIPPED: no GPU adapter ({})", e.trim());
            false
        }
    }
}

/// A failing run: exit status 1 and stderr exactly one `error: ` line mentioning every string of
/// `mentions`.
pub fn assert_fails(args: &[&str], mentions: &[&str]) {
    let o = tinytune(args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "tinytune {args:?}: {err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "tinytune {args:?}: {err:?}");
    assert!(lines[0].starts_with("error: "), "{err}");
    for m in mentions {
        assert!(lines[0].contains(m), "{err:?} does not mention {m:?}");
    }
}
