//! Every joined WGSL kernel validates with naga, and every file under `shaders/` is a registered
//! kernel or a common file a registered kernel uses.

use std::path::Path;

use tinytune::gpu::params;
use tinytune::gpu::shaders::{self, SHADERS};

#[test]
fn every_shader_validates_with_naga() {
    let mut failures = Vec::new();
    // Every kernel as registered, and the f16-operand form of those that have one.
    let mut sources: Vec<(String, String)> = SHADERS
        .iter()
        .map(|s| (s.name.to_string(), s.source.to_string()))
        .collect();
    let f16: Vec<(String, String)> = SHADERS
        .iter()
        .filter(|s| shaders::has_compute_dtype(s))
        .map(|s| (format!("{} (f16)", s.name), shaders::f16_source(s)))
        .collect();
    assert_eq!(
        f16.len(),
        4,
        "the f32 and NF4 forward and input-gradient matmuls have an f16 form"
    );
    for (name, src) in &f16 {
        assert!(
            src.starts_with("enable f16;")
                && src.contains("alias ct = f16;")
                && !src.contains("alias ct = f32;"),
            "{name}: not swapped to f16"
        );
    }
    sources.extend(f16);
    for (name, source) in &sources {
        let s = Named { name, source };
        let module = match naga::front::wgsl::parse_str(s.source) {
            Ok(m) => m,
            Err(e) => {
                failures.push(format!("{}: {}", s.name, e.emit_to_string(s.source)));
                continue;
            }
        };
        let mut v = naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::all(),
        );
        if let Err(e) = v.validate(&module) {
            failures.push(format!("{}: {}", s.name, e.emit_to_string(s.source)));
        }
        assert!(
            module
                .entry_points
                .iter()
                .any(|e| e.stage == naga::ShaderStage::Compute),
            "{} has no compute entry point",
            s.name
        );
    }
    assert!(
        failures.is_empty(),
        "invalid shaders:\n{}",
        failures.join("\n")
    );
}

/// A kernel source and the name to report it by.
struct Named<'a> {
    name: &'a str,
    source: &'a str,
}

fn wgsl_files(dir: &Path, root: &Path, out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).expect("read shaders/") {
        let p = entry.expect("dir entry").path();
        if p.is_dir() {
            wgsl_files(&p, root, out);
        } else if p.extension().is_some_and(|e| e == "wgsl") {
            let rel = p
                .strip_prefix(root)
                .expect("under shaders/")
                .with_extension("");
            out.push(rel.to_string_lossy().replace('\\', "/"));
        }
    }
}

#[test]
fn every_shader_file_is_registered() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let mut files = Vec::new();
    wgsl_files(&root, &root, &mut files);
    assert!(
        !files.is_empty(),
        "no shaders found under {}",
        root.display()
    );
    // A kernel file is registered; a common file is joined to at least one registered kernel.
    let (commons, kernels): (Vec<&String>, Vec<&String>) =
        files.iter().partition(|f| shaders::is_common(f));
    let missing: Vec<&&String> = kernels
        .iter()
        .filter(|f| !SHADERS.iter().any(|s| s.name == f.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "shaders not in tinytune_gpu::shaders::SHADERS: {missing:?}"
    );
    let unused: Vec<&&String> = commons
        .iter()
        .filter(|c| !SHADERS.iter().any(|s| s.commons.contains(&c.as_str())))
        // The f16 form of nn/compute_common is swapped in at pipeline creation, not joined.
        .filter(|c| c.as_str() != shaders::COMPUTE_F16_COMMON)
        .collect();
    assert!(unused.is_empty(), "common files no kernel uses: {unused:?}");
    for s in SHADERS {
        assert!(
            !shaders::is_common(s.name),
            "common file {} registered as a kernel",
            s.name
        );
        assert!(
            kernels.iter().any(|f| *f == s.name),
            "registered shader {} has no file",
            s.name
        );
        for c in s.commons {
            assert!(
                shaders::is_common(c) && commons.iter().any(|f| f == c),
                "{}: {c} is not a common file under shaders/",
                s.name
            );
        }
        let mut cs = s.commons.to_vec();
        cs.sort();
        cs.dedup();
        assert_eq!(
            cs.len(),
            s.commons.len(),
            "{}: a common file joined twice",
            s.name
        );
    }
    let mut names: Vec<&str> = SHADERS.iter().map(|s| s.name).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), SHADERS.len(), "a shader is registered twice");
}

#[test]
fn common_files_hold_no_entry_point_or_binding() {
    // Common files are helpers only: a kernel's entry points and bindings stay in the kernel file.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    for s in SHADERS {
        for c in s.commons {
            let text = std::fs::read_to_string(root.join(format!("{c}.wgsl"))).expect("read");
            assert!(
                !text.contains("@compute") && !text.contains("@binding"),
                "{c}.wgsl declares an entry point or binding"
            );
            assert!(
                s.source.contains(&text),
                "{}: source does not include {c}.wgsl",
                s.name
            );
        }
    }
}

#[test]
fn every_shader_documents_its_bindings() {
    // Each storage binding carries a shape comment, e.g. `// (B*T, C)`.
    for s in SHADERS {
        for line in s.source.lines().filter(|l| l.contains("var<storage")) {
            assert!(
                line.contains("// ("),
                "{}: binding without a shape comment: {line}",
                s.name
            );
        }
    }
}

fn wgsl_scalar(module: &naga::Module, ty: naga::Handle<naga::Type>) -> String {
    match module.types[ty].inner {
        naga::TypeInner::Scalar(s) if s == naga::Scalar::U32 => "u32".into(),
        naga::TypeInner::Scalar(s) if s == naga::Scalar::F32 => "f32".into(),
        naga::TypeInner::Scalar(s) if s == naga::Scalar::I32 => "i32".into(),
        ref other => format!("{other:?}"),
    }
}

#[test]
fn every_kernel_params_struct_matches_its_rust_mirror() {
    // Each uniform struct a kernel binds (`Params`, or e.g. attention's `RepackParams`) has a
    // `#[repr(C)]` Pod mirror in tinytune_gpu::params with the same fields, offsets, types and size.
    let mut failures = Vec::new();
    let mut used = Vec::new();
    for s in SHADERS {
        let module = naga::front::wgsl::parse_str(s.source).expect("parses");
        let uniforms: Vec<_> = module
            .global_variables
            .iter()
            .filter(|(_, g)| g.space == naga::AddressSpace::Uniform)
            .collect();
        assert!(!uniforms.is_empty(), "{} binds no uniform params", s.name);
        for (_, g) in uniforms {
            let ty = &module.types[g.ty];
            let wgsl = ty.name.clone().unwrap_or_default();
            let naga::TypeInner::Struct { members, span } = &ty.inner else {
                failures.push(format!("{}: uniform {wgsl} is not a struct", s.name));
                continue;
            };
            let Some(layout) = params::layout(s.name, &wgsl) else {
                failures.push(format!("{}: no Rust params struct for {wgsl}", s.name));
                continue;
            };
            used.push((layout.rust_name, s.name));
            let wgsl_fields: Vec<(String, usize, String)> = members
                .iter()
                .map(|m| {
                    (
                        m.name.clone().unwrap_or_default(),
                        m.offset as usize,
                        wgsl_scalar(&module, m.ty),
                    )
                })
                .collect();
            let rust_fields: Vec<(String, usize, String)> = layout
                .fields
                .iter()
                .map(|f| (f.name.to_string(), f.offset, f.ty.to_string()))
                .collect();
            if wgsl_fields != rust_fields || *span as usize != layout.size {
                failures.push(format!(
                    "{} {wgsl} ({span} bytes): {wgsl_fields:?}\n  != {} ({} bytes): {rust_fields:?}",
                    s.name, layout.rust_name, layout.size
                ));
            }
            if layout.size % 16 != 0 {
                failures.push(format!("{}: {} bytes", layout.rust_name, layout.size));
            }
        }
    }
    for l in params::PARAMS {
        for k in l.kernels {
            if !used.contains(&(l.rust_name, *k)) {
                failures.push(format!("{} lists {k}, which does not bind it", l.rust_name));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "params mismatches:\n{}",
        failures.join("\n")
    );
}

/// `.rs` files of module `family` under `dir`: `family.rs`, `family/**.rs` and `family_*.rs`
/// (e.g. `ops/nf4_matmul.rs`, re-exported by `ops::nf4`).
fn family_sources(dir: &Path, family: &str) -> Vec<(String, String)> {
    fn walk(p: &Path, out: &mut Vec<(String, String)>) {
        if p.is_dir() {
            for e in std::fs::read_dir(p).expect("read dir") {
                walk(&e.expect("dir entry").path(), out);
            }
        } else if p.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(p).expect("read source");
            out.push((p.display().to_string(), text));
        }
    }
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("read dir") {
        let p = e.expect("dir entry").path();
        let stem = p
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        if stem == family || stem.starts_with(&format!("{family}_")) {
            walk(&p, &mut out);
        }
    }
    out
}

#[test]
fn every_kernel_has_one_name_in_four_places() {
    // Kernel `shaders/<family>/<name>.wgsl` ↔ launcher `gpu::ops::<family>::<name>` (a `pub fn
    // <name>(` in the family's ops sources that also names the kernel) ↔ reference
    // `reference::<family>::<name>` ↔ test `<name>_matches_reference` in `tests/<family>_<op>.rs`,
    // where `<name>` starts with `<op>` (`nn/matmul_bwd_input` is tested in tests/nn_matmul.rs).
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tests: Vec<(String, String)> = std::fs::read_dir(root.join("tests"))
        .expect("read tests/")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .map(|p| {
            let stem = p
                .file_stem()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            (stem, std::fs::read_to_string(&p).expect("read test"))
        })
        .collect();
    let mut failures = Vec::new();
    for s in SHADERS {
        let (family, name) = s.name.split_once('/').expect("family/name");
        let launcher = format!("pub fn {name}(");
        let ops = family_sources(&root.join("crates/gpu/src/ops"), family);
        if !ops
            .iter()
            .any(|(_, t)| t.contains(&launcher) && t.contains(&format!("\"{}\"", s.name)))
        {
            failures.push(format!(
                "{}: no launcher gpu::ops::{family}::{name}",
                s.name
            ));
        }
        let refs = family_sources(&root.join("crates/reference/src"), family);
        if !refs.iter().any(|(_, t)| t.contains(&launcher)) {
            failures.push(format!("{}: no reference::{family}::{name}", s.name));
        }
        let test = format!("fn {name}_matches_reference(");
        let found = tests.iter().any(|(stem, t)| {
            stem.strip_prefix(&format!("{family}_"))
                .is_some_and(|op| name.starts_with(op))
                && t.contains(&test)
        });
        if !found {
            failures.push(format!(
                "{}: no test {name}_matches_reference in tests/{family}_<op>.rs",
                s.name
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "kernel names out of step:\n{}",
        failures.join("\n")
    );
}

/// The runtime builds each entry point's bind group layout from `tinytune_gpu::bindings`' scan of
/// the WGSL; it must list exactly the bindings naga's usage analysis finds (the set wgpu's derived
/// layouts held), with the same kind: uniform, read-only storage or read-write storage.
#[test]
fn entry_bindings_match_naga_usage() {
    use tinytune::gpu::bindings::{entry_bindings, Binding, BindingKind};
    let mut checked = 0;
    for s in SHADERS {
        let module = naga::front::wgsl::parse_str(s.source).expect("parses");
        let info = naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::all(),
        )
        .validate(&module)
        .expect("validates");
        for (i, ep) in module.entry_points.iter().enumerate() {
            let fi = info.get_entry_point(i);
            let mut want: Vec<Binding> = module
                .global_variables
                .iter()
                .filter(|(h, _)| !fi[*h].is_empty())
                .filter_map(|(_, g)| {
                    let b = g.binding.as_ref()?;
                    assert_eq!(b.group, 0, "{} {}", s.name, ep.name);
                    let kind = match g.space {
                        naga::AddressSpace::Uniform => BindingKind::Uniform,
                        naga::AddressSpace::Storage { access } => BindingKind::Storage {
                            read_only: !access.contains(naga::StorageAccess::STORE),
                        },
                        other => panic!("{} {}: binding in {other:?}", s.name, ep.name),
                    };
                    Some(Binding {
                        binding: b.binding,
                        kind,
                    })
                })
                .collect();
            want.sort_by_key(|b| b.binding);
            let got = entry_bindings(s.source, &ep.name)
                .unwrap_or_else(|| panic!("{}: entry {} not found", s.name, ep.name));
            assert_eq!(got, want, "{} entry {}", s.name, ep.name);
            checked += 1;
        }
    }
    assert!(checked >= SHADERS.len(), "{checked} entry points");
}
