//! `tinytune-reference` is the test oracle, not a production dependency: the crates listed in
//! [`CLEAN`] take it (if at all) only as a dev-dependency, and their `src/` names
//! `tinytune_reference` only in comments and `#[cfg(test)]` code.
//!
//! Extend [`CLEAN`] as crates stop depending on the reference.

use std::path::{Path, PathBuf};

/// Crates (under `crates/`) whose production code must not depend on `tinytune-reference`.
const CLEAN: &[&str] = &["gpu", "model", "train", "cli", "wasm"];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The `[...]` section of every line of `Cargo.toml` that names `tinytune-reference`.
fn reference_sections(manifest: &str) -> Vec<String> {
    let mut section = String::new();
    let mut found = Vec::new();
    for line in manifest.lines() {
        let t = line.trim();
        if t.starts_with('#') {
            continue;
        }
        if t.starts_with('[') {
            section = t.to_string();
        } else if t.contains("tinytune-reference") || t.contains("tinytune_reference") {
            found.push(section.clone());
        }
    }
    found
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Lines of `src` that name `tinytune_reference` in code before the file's first `#[cfg(test)]`.
fn production_mentions(src: &str) -> Vec<(usize, String)> {
    src.lines()
        .enumerate()
        .take_while(|(_, l)| l.trim() != "#[cfg(test)]")
        .filter(|(_, l)| {
            let code = l.split("//").next().unwrap();
            code.contains("tinytune_reference")
        })
        .map(|(i, l)| (i + 1, l.to_string()))
        .collect()
}

#[test]
fn the_checker_sees_production_uses() {
    assert_eq!(
        reference_sections("[dependencies]\ntinytune-reference.workspace = true\n[dev-dependencies]\ntinytune-reference.workspace = true\n"),
        ["[dependencies]", "[dev-dependencies]"]
    );
    let src = "//! [`tinytune_reference::nn`]\nuse tinytune_reference::nn::X; // x\n#[cfg(test)]\nmod t { use tinytune_reference::nn::Y; }\n";
    assert_eq!(
        production_mentions(src),
        [(2, "use tinytune_reference::nn::X; // x".to_string())]
    );
}

#[test]
fn clean_crates_take_the_reference_only_as_a_dev_dependency() {
    for name in CLEAN {
        let dir = root().join("crates").join(name);
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        for section in reference_sections(&manifest) {
            assert_eq!(
                section, "[dev-dependencies]",
                "crates/{name}/Cargo.toml names tinytune-reference under {section}"
            );
        }
        let mut files = Vec::new();
        rust_files(&dir.join("src"), &mut files);
        assert!(!files.is_empty(), "crates/{name}/src has no Rust files");
        for f in files {
            let src = std::fs::read_to_string(&f).unwrap();
            let hits = production_mentions(&src);
            assert!(
                hits.is_empty(),
                "{} names tinytune_reference in production code: {hits:?}",
                f.display()
            );
        }
    }
}
