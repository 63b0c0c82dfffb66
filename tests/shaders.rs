//! Every WGSL file validates with naga, and every file under `shaders/` is in the registry.

use std::path::Path;

use tinytune::gpu::shaders::SHADERS;

#[test]
fn every_shader_validates_with_naga() {
    let mut failures = Vec::new();
    for s in SHADERS {
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
    let missing: Vec<&String> = files
        .iter()
        .filter(|f| !SHADERS.iter().any(|s| s.name == f.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "shaders not in tinytune_gpu::shaders::SHADERS: {missing:?}"
    );
    for s in SHADERS {
        assert!(
            files.iter().any(|f| f == s.name),
            "registered shader {} has no file",
            s.name
        );
    }
    let mut names: Vec<&str> = SHADERS.iter().map(|s| s.name).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), SHADERS.len(), "a shader is registered twice");
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
