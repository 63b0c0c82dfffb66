//! The bindings each entry point of a registered WGSL kernel uses, read from its source.
//!
//! The runtime builds each kernel's bind group layout itself (rather than letting wgpu derive it
//! with `layout: None`) so that binding 0, the uniform `Params`, can take a dynamic offset into
//! the per-submission params arena ([`crate::device`]). A derived layout holds exactly the
//! bindings the entry point statically uses, and the launchers pass exactly those buffers; this
//! module recovers the same set from the WGSL text with a small scanner (no naga at run time, so
//! the wasm module does not grow): the `@group(0) @binding(n) var<...> name` declarations, the
//! functions, and the identifiers each function body names, closed over the functions it calls.
//! `tests/shaders.rs` checks the result against naga's own usage analysis for every entry point
//! of every registered kernel.

use std::collections::{BTreeMap, HashMap, HashSet};

/// What a binding holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BindingKind {
    /// `var<uniform>`: the kernel's `Params`.
    Uniform,
    /// `var<storage, read>` (`read_only: true`) or `var<storage, read_write>`.
    Storage { read_only: bool },
}

/// One binding of group 0 that an entry point uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Binding {
    pub binding: u32,
    pub kind: BindingKind,
}

/// A module-scope resource declaration.
struct Global {
    binding: u32,
    kind: BindingKind,
}

/// Removes `//` and `/* */` comments, keeping line structure irrelevant to the scan.
fn strip_comments(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    let mut depth = 0usize;
    while i < b.len() {
        if depth == 0 && b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            depth += 1;
            i += 2;
        } else if depth > 0 && b[i..].starts_with(b"*/") {
            depth -= 1;
            i += 2;
            out.push(' ');
        } else {
            if depth == 0 {
                out.push(b[i] as char);
            }
            i += 1;
        }
    }
    out
}

#[derive(Clone, Debug, PartialEq)]
enum Tok<'a> {
    Ident(&'a str),
    Num(&'a str),
    Punct(char),
}

fn tokenize(src: &str) -> Vec<Tok<'_>> {
    let b = src.as_bytes();
    let mut toks = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c.is_ascii_alphabetic() || c == b'_' {
            let s = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            toks.push(Tok::Ident(&src[s..i]));
        } else if c.is_ascii_digit() {
            let s = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'.') {
                i += 1;
            }
            toks.push(Tok::Num(&src[s..i]));
        } else {
            toks.push(Tok::Punct(c as char));
            i += 1;
        }
    }
    toks
}

/// The `n` of `@<attr>(n)` starting at `toks[i] == '@'`, if that is the attribute.
fn attr_number(toks: &[Tok], i: usize, attr: &str) -> Option<u32> {
    match toks.get(i..i + 5)? {
        [Tok::Punct('@'), Tok::Ident(a), Tok::Punct('('), Tok::Num(n), Tok::Punct(')')]
            if *a == attr =>
        {
            n.trim_end_matches('u').parse().ok()
        }
        _ => None,
    }
}

/// The bindings (sorted by number) that `entry` of the WGSL `source` uses, or `None` when
/// `source` has no `@compute` entry point of that name.
pub fn entry_bindings(source: &str, entry: &str) -> Option<Vec<Binding>> {
    let text = strip_comments(source);
    let toks = tokenize(&text);
    let mut globals: HashMap<&str, Global> = HashMap::new();
    // Function name -> identifiers its signature and body name (not after a `.`).
    let mut functions: HashMap<&str, HashSet<&str>> = HashMap::new();
    let mut entries: HashSet<&str> = HashSet::new();
    let mut depth = 0i32;
    let mut i = 0;
    let mut pending_compute = false;
    let mut pending_binding: Option<u32> = None;
    while i < toks.len() {
        match &toks[i] {
            Tok::Punct('{') => depth += 1,
            Tok::Punct('}') => depth -= 1,
            Tok::Punct('@') if depth == 0 => {
                if let Some(n) = attr_number(&toks, i, "binding") {
                    pending_binding = Some(n);
                    i += 5;
                    continue;
                }
                if matches!(toks.get(i + 1), Some(Tok::Ident("compute"))) {
                    pending_compute = true;
                }
            }
            Tok::Ident("var") if depth == 0 => {
                // var<uniform> name / var<storage, read[_write]> name / var<workgroup> name
                let mut j = i + 1;
                let mut space = Vec::new();
                if toks.get(j) == Some(&Tok::Punct('<')) {
                    j += 1;
                    while let Some(t) = toks.get(j) {
                        j += 1;
                        match t {
                            Tok::Punct('>') => break,
                            Tok::Ident(s) => space.push(*s),
                            _ => {}
                        }
                    }
                }
                if let (Some(binding), Some(Tok::Ident(name))) =
                    (pending_binding.take(), toks.get(j))
                {
                    let kind = match space.as_slice() {
                        ["uniform"] => Some(BindingKind::Uniform),
                        ["storage"] | ["storage", "read"] => {
                            Some(BindingKind::Storage { read_only: true })
                        }
                        ["storage", "read_write"] => {
                            Some(BindingKind::Storage { read_only: false })
                        }
                        _ => None,
                    };
                    if let Some(kind) = kind {
                        globals.insert(name, Global { binding, kind });
                    }
                }
                i = j;
                continue;
            }
            Tok::Ident("fn") if depth == 0 => {
                let Some(Tok::Ident(name)) = toks.get(i + 1) else {
                    i += 1;
                    continue;
                };
                if std::mem::take(&mut pending_compute) {
                    entries.insert(name);
                }
                // The signature up to the body, then the body with its nested braces.
                let mut used = HashSet::new();
                let mut j = i + 2;
                while j < toks.len() && toks[j] != Tok::Punct('{') {
                    if let Tok::Ident(s) = toks[j] {
                        used.insert(s);
                    }
                    j += 1;
                }
                let mut d = 0i32;
                while j < toks.len() {
                    match toks[j] {
                        Tok::Punct('{') => d += 1,
                        Tok::Punct('}') => {
                            d -= 1;
                            if d == 0 {
                                break;
                            }
                        }
                        Tok::Ident(s) if j == 0 || toks[j - 1] != Tok::Punct('.') => {
                            used.insert(s);
                        }
                        _ => {}
                    }
                    j += 1;
                }
                functions.insert(name, used);
                i = j + 1;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    if !entries.contains(entry) {
        return None;
    }
    // Close over the functions the entry point calls.
    let mut seen: HashSet<&str> = HashSet::new();
    let mut stack = vec![entry];
    let mut out: BTreeMap<u32, BindingKind> = BTreeMap::new();
    while let Some(f) = stack.pop() {
        if !seen.insert(f) {
            continue;
        }
        for id in functions.get(f).into_iter().flatten() {
            if let Some(g) = globals.get(id) {
                out.insert(g.binding, g.kind);
            }
            if functions.contains_key(id) {
                stack.push(id);
            }
        }
    }
    Some(
        out.into_iter()
            .map(|(binding, kind)| Binding { binding, kind })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: &str = r#"
struct Params { n: u32, x: u32 }
@group(0) @binding(0) var<uniform> p: Params;
// a: @group(0) @binding(9) var<storage, read> fake: array<f32>;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
/* @group(0) @binding(7) var<storage, read> gone: array<f32>; */
@group(0) @binding(1) var<storage, read> z: array<f32>;
@group(0) @binding(3) var<storage, read_write> w: array<f32>;
var<workgroup> tmp: array<f32, 64>;
fn helper(i: u32) -> f32 { return x[i] * f32(p.n); }
@compute @workgroup_size(64)
fn first(@builtin(global_invocation_id) g: vec3<u32>) { y[g.x] = helper(g.x); tmp[0] = 1.0; }
@compute
@workgroup_size(64)
fn second(@builtin(global_invocation_id) g: vec3<u32>) { let q = p.x; w[g.x] = z[g.x] + f32(q); }
"#;

    #[test]
    fn entry_bindings_follow_calls_and_skip_comments_and_members() {
        use BindingKind::*;
        let b = |binding, kind| Binding { binding, kind };
        assert_eq!(
            entry_bindings(SRC, "first").unwrap(),
            [
                b(0, Uniform),
                b(1, Storage { read_only: true }),
                b(2, Storage { read_only: false })
            ]
        );
        // `p.x` is a member, not the global `x`.
        assert_eq!(
            entry_bindings(SRC, "second").unwrap(),
            [
                b(0, Uniform),
                b(1, Storage { read_only: true }),
                b(3, Storage { read_only: false })
            ]
        );
        assert_eq!(entry_bindings(SRC, "helper"), None);
        assert_eq!(entry_bindings(SRC, "nope"), None);
    }
}
