//! The source layout's rules that no compiler checks: no circle of imports between the files
//! (top-level modules) of a crate. A module `a` depends on `b` when `a`'s code (comments aside)
//! names `crate::b::...`, or an item that `lib.rs` re-exports from `b` (`crate::Item`,
//! `use crate::{Item, ...}`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Source text without `//` comment lines (doc links name modules without depending on them).
fn code(text: &str) -> String {
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The identifier at the start of `s`, if any.
fn ident(s: &str) -> Option<&str> {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    (end > 0 && !s.as_bytes()[0].is_ascii_digit()).then(|| &s[..end])
}

/// The first segment of every path written after `crate::` (a `crate::{a, b::c}` group gives
/// `a` and `b`).
fn crate_paths(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let (mut depth, mut start) = (0usize, 0usize);
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        out.extend(ident(group[start..j].trim()).map(str::to_string));
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.extend(ident(group[start..j].trim()).map(str::to_string));
                        start = j + 1;
                    }
                    _ => {}
                }
            }
        } else if let Some(name) = ident(rest) {
            out.push(name.to_string());
        }
    }
    out
}

/// `pub use module::{A, B}` / `pub use module::A` in `lib.rs`: item name -> module.
fn reexports(lib: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for stmt in lib.split(';') {
        let Some(rest) = stmt.trim().strip_prefix("pub use ") else {
            continue;
        };
        let Some((module, items)) = rest.split_once("::") else {
            continue;
        };
        for item in items.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if !item.is_empty() {
                out.insert(item.to_string(), module.trim().to_string());
            }
        }
    }
    out
}

fn rs_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            rs_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The modules of a crate's `src/` and which others each one uses.
fn module_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rs_files(src, &mut files);
    let mut texts: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut lib = String::new();
    for f in files {
        let rel = f.strip_prefix(src).unwrap().with_extension("");
        let rel = rel.to_string_lossy().replace('\\', "/");
        let text = code(&std::fs::read_to_string(&f).unwrap());
        if rel == "lib" || rel == "main" {
            lib = text;
            continue;
        }
        let top = rel.split('/').next().unwrap().to_string();
        texts.entry(top).or_default().push(text);
    }
    let re = reexports(&lib);
    texts
        .iter()
        .map(|(m, ts)| {
            let deps = ts
                .iter()
                .flat_map(|t| crate_paths(t))
                .filter_map(|p| {
                    if texts.contains_key(&p) {
                        Some(p)
                    } else {
                        re.get(&p).filter(|m| texts.contains_key(*m)).cloned()
                    }
                })
                .filter(|d| d != m)
                .collect();
            (m.clone(), deps)
        })
        .collect()
}

/// One circle of `graph`, if it has any (depth-first search).
fn find_circle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        v: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        done: &mut BTreeSet<String>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == v) {
            let mut c = path[i..].to_vec();
            c.push(v.to_string());
            return Some(c);
        }
        if done.contains(v) {
            return None;
        }
        path.push(v.to_string());
        for w in graph.get(v).into_iter().flatten() {
            if let Some(c) = visit(w, graph, done, path) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(v.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|v| visit(v, graph, &mut done, &mut Vec::new()))
}

#[test]
fn no_import_circles_between_files() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("crates");
    let mut circles = Vec::new();
    let mut checked = 0;
    for e in std::fs::read_dir(&crates).unwrap().flatten() {
        let src = e.path().join("src");
        if !src.is_dir() {
            continue;
        }
        let graph = module_graph(&src);
        checked += graph.len();
        if let Some(c) = find_circle(&graph) {
            circles.push(format!(
                "{}: {}",
                e.file_name().to_string_lossy(),
                c.join(" -> ")
            ));
        }
    }
    assert!(
        checked > 40,
        "only {checked} modules found under crates/*/src"
    );
    assert!(
        circles.is_empty(),
        "import circles between files:\n  {}",
        circles.join("\n  ")
    );
}

#[test]
fn the_circle_finder_finds_circles() {
    let g = |edges: &[(&str, &str)]| {
        let mut m: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (a, b) in edges {
            m.entry(a.to_string()).or_default().insert(b.to_string());
            m.entry(b.to_string()).or_default();
        }
        m
    };
    assert_eq!(find_circle(&g(&[("a", "b"), ("b", "c")])), None);
    assert_eq!(
        find_circle(&g(&[("a", "b"), ("b", "c"), ("c", "a")])),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
    assert_eq!(
        crate_paths("use crate::{a::X, b, c::{d, e}};\nlet y = crate::f::g();"),
        vec!["a", "b", "c", "f"]
    );
    assert_eq!(
        reexports("pub use peft::{LoraAdapter, LoraKey};\npub use rng::Rng;")
            .into_iter()
            .collect::<Vec<_>>(),
        vec![
            ("LoraAdapter".into(), "peft".into()),
            ("LoraKey".into(), "peft".into()),
            ("Rng".into(), "rng".into())
        ]
    );
}
