//! End-to-end tests of the `tinytune` binary: `info`, `quantize` (bitsandbytes packed layout,
//! bit-exact against `tinytune_reference::nf4`), and its error handling.
//!
//! The quantize runs need a GPU adapter (run with `WGPU_BACKEND=vulkan XDG_RUNTIME_DIR=/tmp`);
//! without one they are skipped with a message unless `TINYTUNE_REQUIRE_GPU=1`. The error cases
//! that fail before the GPU is opened always run.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Output;

use common::{have_gpu, tinytune};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use tinytune_reference::nf4::{Absmax, Nf4Tensor, DYNAMIC_MAP, NESTED_BLOCK, NF4};

const QS: &str = ".quant_state.bitsandbytes__nf4";

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// SplitMix64, for reproducible test data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E3779B97F4A7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
        z ^ (z >> 31)
    }
    /// Roughly normal with standard deviation `std` (sum of 4 uniforms).
    fn normal(&mut self, std: f32) -> f32 {
        let s: f32 = (0..4)
            .map(|_| (self.next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5)
            .sum();
        s * std * 1.732
    }
}

/// One tensor of the test input.
struct T {
    name: &'static str,
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl T {
    fn n(&self) -> usize {
        self.shape.iter().product()
    }
    /// The values as f32 (exact for F32/F16/BF16).
    fn f32s(&self) -> Vec<f32> {
        match self.dtype {
            Dtype::F32 => self
                .bytes
                .chunks(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect(),
            Dtype::F16 => self
                .bytes
                .chunks(2)
                .map(|c| half::f16::from_le_bytes(c.try_into().unwrap()).to_f32())
                .collect(),
            Dtype::BF16 => self
                .bytes
                .chunks(2)
                .map(|c| half::bf16::from_le_bytes(c.try_into().unwrap()).to_f32())
                .collect(),
            d => panic!("{d} is not float"),
        }
    }
    fn torch_dtype(&self) -> &'static str {
        match self.dtype {
            Dtype::F32 => "float32",
            Dtype::F16 => "float16",
            Dtype::BF16 => "bfloat16",
            d => panic!("{d} is not float"),
        }
    }
    fn quantizable(&self) -> bool {
        self.shape.len() == 2
            && matches!(self.dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16)
            && self.n() > 0
    }
}

fn values(n: usize, seed: u64, std: f32) -> Vec<f32> {
    let mut rng = Rng(seed);
    (0..n).map(|_| rng.normal(std)).collect()
}

fn f32_tensor(name: &'static str, shape: Vec<usize>, x: Vec<f32>) -> T {
    T {
        name,
        dtype: Dtype::F32,
        shape,
        bytes: x.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

/// Awkward shapes: odd element counts, partial blocks, more than 256 blocks (two nested blocks),
/// an all-zero block, exact NF4 codes and a huge outlier; plus tensors that must be copied.
fn sample() -> Vec<T> {
    let mut w = values(33 * 70, 1, 0.02);
    w[64..128].iter_mut().for_each(|v| *v = 0.0); // an all-zero block (block size 64)
    for (j, c) in NF4.iter().enumerate() {
        w[128 + j] = *c; // a block whose absmax is 1.0 and holds every code exactly
    }
    w[2000] = 40.0;
    let big = values(130 * 129, 2, 1.0);
    let h: Vec<u8> = values(17 * 9, 3, 0.5)
        .iter()
        .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
        .collect();
    let b: Vec<u8> = values(3 * 100, 4, 3.0)
        .iter()
        .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
        .collect();
    vec![
        f32_tensor("model.w_f32", vec![33, 70], w),
        f32_tensor("model.big", vec![130, 129], big),
        T {
            name: "model.w_f16",
            dtype: Dtype::F16,
            shape: vec![17, 9],
            bytes: h,
        },
        T {
            name: "model.w_bf16",
            dtype: Dtype::BF16,
            shape: vec![3, 100],
            bytes: b,
        },
        f32_tensor("model.bias", vec![5], values(5, 5, 1.0)),
        T {
            name: "model.ids",
            dtype: Dtype::I64,
            shape: vec![2, 3],
            bytes: (0..6i64).flat_map(|v| v.to_le_bytes()).collect(),
        },
        f32_tensor("model.empty", vec![0, 4], vec![]),
    ]
}

fn user_metadata() -> HashMap<String, String> {
    HashMap::from([
        ("format".to_string(), "pt".to_string()),
        ("note".to_string(), "tinytune test".to_string()),
    ])
}

fn write_input(path: &Path, tensors: &[T]) {
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|t| {
            (
                t.name.to_string(),
                TensorView::new(t.dtype, t.shape.clone(), &t.bytes).unwrap(),
            )
        })
        .collect();
    std::fs::write(
        path,
        safetensors::serialize(views, Some(user_metadata())).unwrap(),
    )
    .unwrap();
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|f| f.to_bits()).collect()
}

fn as_f32(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// A temp dir with `in.safetensors` written from `tensors`.
fn setup(tensors: &[T]) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let inp = dir.path().join("in.safetensors");
    write_input(&inp, tensors);
    let out = dir.path().join("out.safetensors");
    (dir, inp, out)
}

fn run_ok(args: &[&str]) {
    let o = tinytune(args);
    assert!(
        o.status.success(),
        "tinytune {args:?} failed: {}",
        stderr(&o)
    );
}

/// Reads OUT and checks the header/data, the user metadata and 4-byte alignment of F32 tensors.
fn read_out(out: &Path) -> Vec<u8> {
    let bytes = std::fs::read(out).unwrap();
    let (n, meta) =
        SafeTensors::read_metadata(&bytes).expect("OUT is not a valid safetensors file");
    assert_eq!(
        meta.metadata().as_ref(),
        Some(&user_metadata()),
        "__metadata__ not kept"
    );
    for (name, info) in meta.tensors() {
        if info.dtype == Dtype::F32 {
            assert_eq!(
                (8 + n + info.data_offsets.0) % 4,
                0,
                "{name} is not 4-byte aligned"
            );
        }
    }
    bytes
}

fn check_copied(st: &SafeTensors, t: &T) {
    let v = st
        .tensor(t.name)
        .unwrap_or_else(|_| panic!("{} missing from OUT", t.name));
    assert_eq!(
        (v.dtype(), v.shape()),
        (t.dtype, &t.shape[..]),
        "{} not copied unchanged",
        t.name
    );
    assert_eq!(v.data(), &t.bytes[..], "{} bytes changed", t.name);
}

fn check_view(st: &SafeTensors, name: &str, dtype: Dtype, shape: &[usize]) -> Vec<u8> {
    let v = st
        .tensor(name)
        .unwrap_or_else(|_| panic!("{name} missing from OUT"));
    assert_eq!(v.dtype(), dtype, "dtype of {name}");
    assert_eq!(v.shape(), shape, "shape of {name}");
    v.data().to_vec()
}

/// Checks OUT holds exactly bitsandbytes' packed layout for the quantized tensors (which must be
/// bit-identical to the reference quantizer) and the other tensors unchanged.
fn check_packed(
    out: &Path,
    tensors: &[T],
    block: usize,
    double_quant: bool,
    only: Option<&[&str]>,
) {
    let bytes = read_out(out);
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut want_names = BTreeSet::new();
    let mut nquant = 0;
    for t in tensors {
        let quantized = t.quantizable() && only.is_none_or(|o| o.contains(&t.name));
        want_names.insert(t.name.to_string());
        if !quantized {
            check_copied(&st, t);
            continue;
        }
        nquant += 1;
        let name = t.name;
        let n = t.n();
        let nblocks = n.div_ceil(block);
        let want = Nf4Tensor::quantize(&t.f32s(), block, double_quant);
        let packed = check_view(&st, name, Dtype::U8, &[n.div_ceil(2), 1]);
        assert!(
            packed == want.packed,
            "{name}: codes differ from the reference"
        );
        let qmap = check_view(&st, &format!("{name}.quant_map"), Dtype::F32, &[16]);
        assert_eq!(bits(&as_f32(&qmap)), bits(&NF4), "{name}.quant_map");
        let mut suffixes = vec!["", ".absmax", ".quant_map", QS];
        let absmax = match &want.absmax {
            Absmax::F32(a) => {
                let got = check_view(&st, &format!("{name}.absmax"), Dtype::F32, &[nblocks]);
                assert_eq!(bits(&as_f32(&got)), bits(a), "{name}.absmax");
                None
            }
            Absmax::Double(d) => {
                suffixes.extend([".nested_absmax", ".nested_quant_map"]);
                let got = check_view(&st, &format!("{name}.absmax"), Dtype::U8, &[nblocks]);
                assert!(
                    got == d.codes,
                    "{name}.absmax codes differ from the reference"
                );
                let nn = nblocks.div_ceil(NESTED_BLOCK);
                let got = check_view(&st, &format!("{name}.nested_absmax"), Dtype::F32, &[nn]);
                assert_eq!(
                    bits(&as_f32(&got)),
                    bits(&d.nested_absmax),
                    "{name}.nested_absmax"
                );
                let got = check_view(&st, &format!("{name}.nested_quant_map"), Dtype::F32, &[256]);
                assert_eq!(
                    bits(&as_f32(&got)),
                    bits(&DYNAMIC_MAP),
                    "{name}.nested_quant_map"
                );
                Some(d.offset)
            }
        };
        for s in &suffixes {
            want_names.insert(format!("{name}{s}"));
        }
        // The JSON blob: U8 [len], json.dumps' separators, the fields in bitsandbytes' order.
        let blob = st.tensor(&format!("{name}{QS}")).unwrap();
        assert_eq!(
            (blob.dtype(), blob.shape()),
            (Dtype::U8, &[blob.data().len()][..]),
            "{name}{QS}"
        );
        let text = std::str::from_utf8(blob.data()).expect("quant state is not UTF-8");
        let json: serde_json::Value = serde_json::from_str(text).expect("quant state is not JSON");
        let mut keys = vec!["quant_type", "blocksize", "dtype", "shape"];
        let head = format!(
            r#"{{"quant_type": "nf4", "blocksize": {block}, "dtype": "{}", "shape": [{}, {}]"#,
            t.torch_dtype(),
            t.shape[0],
            t.shape[1]
        );
        assert!(
            text.starts_with(&head),
            "{name}: quant state {text} does not start with {head}"
        );
        match absmax {
            None => assert_eq!(text, format!("{head}}}")),
            Some(offset) => {
                keys.extend(["nested_blocksize", "nested_dtype", "nested_offset"]);
                let mid =
                    r#", "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": "#;
                let rest = text[head.len()..]
                    .strip_prefix(mid)
                    .unwrap_or_else(|| panic!("{name}: {text}"));
                let token = rest.strip_suffix('}').unwrap();
                // serde_json's default float parser is not correctly rounded: check the token with std.
                assert!(
                    json["nested_offset"].is_f64(),
                    "{name}: nested_offset {token}"
                );
                assert_eq!(
                    token.parse::<f64>().unwrap(),
                    offset as f64,
                    "{name}: offset token {token}"
                );
                assert!(
                    token.contains('.') || token.contains('e'),
                    "{name}: {token} is not a Python float repr"
                );
                let digits = token
                    .split('e')
                    .next()
                    .unwrap()
                    .chars()
                    .filter(char::is_ascii_digit);
                assert!(
                    digits.skip_while(|&c| c == '0').count() <= 17,
                    "{name}: {token} is not the shortest repr"
                );
            }
        }
        let obj = json.as_object().unwrap();
        assert_eq!(obj.len(), keys.len(), "{name}: {text}");
        let pos: Vec<usize> = keys
            .iter()
            .map(|k| text.find(&format!("\"{k}\": ")).expect(k))
            .collect();
        assert!(
            pos.windows(2).all(|w| w[0] < w[1]),
            "{name}: fields out of order in {text}"
        );
        assert_eq!(json["blocksize"], block);
        assert_eq!(json["shape"], serde_json::json!([t.shape[0], t.shape[1]]));
    }
    let got_names: BTreeSet<String> = st.names().into_iter().map(String::from).collect();
    assert_eq!(got_names, want_names, "OUT's tensor names");
    assert!(nquant > 0);
}

#[test]
fn quantize_default_writes_bnb_packed_layout_with_double_quant() {
    if !have_gpu() {
        return;
    }
    let tensors = sample();
    let (_dir, inp, out) = setup(&tensors);
    run_ok(&["quantize", inp.to_str().unwrap(), out.to_str().unwrap()]);
    check_packed(&out, &tensors, 64, true, None);
}

#[test]
fn quantize_no_double_quant_writes_f32_absmax() {
    if !have_gpu() {
        return;
    }
    let tensors = sample();
    let (_dir, inp, out) = setup(&tensors);
    run_ok(&[
        "quantize",
        "--no-double-quant",
        inp.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    check_packed(&out, &tensors, 64, false, None);
}

#[test]
fn quantize_block_size_128() {
    if !have_gpu() {
        return;
    }
    let tensors = sample();
    let (_dir, inp, out) = setup(&tensors);
    run_ok(&[
        "quantize",
        "--block-size",
        "128",
        inp.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    check_packed(&out, &tensors, 128, true, None);
}

#[test]
fn quantize_named_tensors_only() {
    if !have_gpu() {
        return;
    }
    let tensors = sample();
    let (_dir, inp, out) = setup(&tensors);
    let args = [
        "quantize",
        "--tensor",
        "model.w_f16",
        "--tensor",
        "model.w_bf16",
        "--block-size",
        "32",
    ];
    let mut args: Vec<&str> = args.to_vec();
    args.extend([inp.to_str().unwrap(), out.to_str().unwrap()]);
    run_ok(&args);
    check_packed(
        &out,
        &tensors,
        32,
        true,
        Some(&["model.w_f16", "model.w_bf16"]),
    );
}

#[test]
fn quantize_dequantize_writes_f32_roundtrip() {
    if !have_gpu() {
        return;
    }
    let tensors = sample();
    for dq in [true, false] {
        let (_dir, inp, out) = setup(&tensors);
        let mut args = vec![
            "quantize",
            "--dequantize",
            inp.to_str().unwrap(),
            out.to_str().unwrap(),
        ];
        if !dq {
            args.push("--no-double-quant");
        }
        run_ok(&args);
        let bytes = read_out(&out);
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let names: BTreeSet<&str> = st.names().into_iter().collect();
        assert_eq!(
            names,
            tensors.iter().map(|t| t.name).collect::<BTreeSet<_>>(),
            "dequantized OUT keeps the names"
        );
        for t in &tensors {
            if !t.quantizable() {
                check_copied(&st, t);
                continue;
            }
            let got = check_view(&st, t.name, Dtype::F32, &t.shape);
            let want = Nf4Tensor::quantize(&t.f32s(), 64, dq).dequantize();
            assert_eq!(
                bits(&as_f32(&got)),
                bits(&want),
                "{} dq={dq}: dequant(quant(x)) differs",
                t.name
            );
        }
    }
}

#[test]
fn info_lists_adapter_features_and_limits() {
    if !have_gpu() {
        return;
    }
    let o = tinytune(&["info"]);
    assert!(o.status.success());
    let text = String::from_utf8(o.stdout).unwrap();
    for key in [
        "adapters found:",
        "chosen adapter:",
        "backend:",
        "SHADER_F16:",
        "SUBGROUP:",
        "max_buffer_size:",
        "max_storage_buffer_binding_size:",
        "max_compute_workgroups_per_dimension:",
        "max_compute_invocations_per_workgroup:",
        "max_compute_workgroup_storage_size:",
    ] {
        assert!(text.contains(key), "`tinytune info` lacks {key:?}:\n{text}");
    }
}

#[test]
fn help_documents_every_flag_with_its_default() {
    // Every flag of every subcommand states its default, or that it is required.
    for sub in [
        "quantize", "logits", "train", "eval", "generate", "merge", "info", "sweep", "plot",
    ] {
        let o = tinytune(&[sub, "--help"]);
        assert!(o.status.success(), "{sub} --help");
        let text = String::from_utf8(o.stdout).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let t = line.trim_start();
            let is_flag = t.starts_with("--") || (t.starts_with('-') && t.contains(", --"));
            if !is_flag || t.contains("--help") || t.contains("--version") {
                continue;
            }
            // Long help wraps: the flag's paragraph runs to the next flag.
            let para: String = std::iter::once(line)
                .chain(lines[i + 1..].iter().take_while(|l| {
                    let l = l.trim_start();
                    !(l.starts_with("--") || (l.starts_with('-') && l.contains(", --")))
                }))
                .copied()
                .collect::<Vec<_>>()
                .join(" ");
            assert!(
                para.contains("default") || para.contains("required"),
                "`tinytune {sub}`: {t} states neither its default nor that it is required: {para}"
            );
        }
    }
    let o = tinytune(&["quantize", "--help"]);
    let text = String::from_utf8(o.stdout).unwrap();
    assert!(text.contains("--gpu"));
    assert!(text.contains("[default: 64"));
    let v = tinytune(&["--version"]);
    assert!(
        v.status.success()
            && String::from_utf8_lossy(&v.stdout).contains(env!("CARGO_PKG_VERSION"))
    );
}

/// Runs a failing command: non-zero exit, exactly one `error: ` line on stderr that contains every
/// string of `mentions`, and nothing left in OUT's directory but the files that were there before.
fn assert_fails(args: &[&str], out: &Path, mentions: &[&str]) {
    let dir = out.parent().unwrap();
    let before: BTreeSet<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let old = std::fs::read(out).ok();
    let o = tinytune(args);
    let err = stderr(&o);
    assert!(!o.status.success(), "tinytune {args:?} succeeded");
    assert_eq!(
        o.status.code(),
        Some(1),
        "tinytune {args:?}: exit status (stderr {err})"
    );
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "tinytune {args:?}: want one line on stderr, got {err:?}"
    );
    assert!(lines[0].starts_with("error: "), "{err}");
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err}"
    );
    for m in mentions {
        assert!(
            lines[0].contains(m),
            "tinytune {args:?}: {err:?} does not mention {m:?}"
        );
    }
    assert_eq!(std::fs::read(out).ok(), old, "OUT was created or changed");
    let after: BTreeSet<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(after, before, "files left behind");
}

#[test]
fn error_missing_input_file() {
    let dir = tempfile::tempdir().unwrap();
    let inp = dir.path().join("missing.safetensors");
    let out = dir.path().join("out.safetensors");
    assert_fails(
        &["quantize", inp.to_str().unwrap(), out.to_str().unwrap()],
        &out,
        &["missing.safetensors"],
    );
}

#[test]
fn error_not_a_safetensors_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.safetensors");
    for (i, junk) in [
        &b"this is not a safetensors file, just text"[..],
        b"",
        b"\x05\x00\x00\x00\x00\x00\x00\x00{abc}",
    ]
    .iter()
    .enumerate()
    {
        let inp = dir.path().join(format!("junk{i}.safetensors"));
        std::fs::write(&inp, junk).unwrap();
        assert_fails(
            &["quantize", inp.to_str().unwrap(), out.to_str().unwrap()],
            &out,
            &[&format!("junk{i}.safetensors")],
        );
    }
}

#[test]
fn error_truncated_file() {
    let (dir, inp, out) = setup(&sample());
    let full = std::fs::read(&inp).unwrap();
    let header = u64::from_le_bytes(full[..8].try_into().unwrap()) as usize;
    for (what, len) in [
        ("header", 8 + header / 2),
        ("length", 5),
        ("data", full.len() - 7),
    ] {
        let cut = dir.path().join(format!("cut_{what}.safetensors"));
        std::fs::write(&cut, &full[..len]).unwrap();
        assert_fails(
            &["quantize", cut.to_str().unwrap(), out.to_str().unwrap()],
            &out,
            &[&format!("cut_{what}.safetensors")],
        );
    }
}

#[test]
fn error_named_tensor_not_quantizable_or_missing() {
    let (_dir, inp, out) = setup(&sample());
    let (i, o) = (inp.to_str().unwrap(), out.to_str().unwrap());
    assert_fails(
        &["quantize", "--tensor", "model.bias", i, o],
        &out,
        &["model.bias", "1-D", "in.safetensors"],
    );
    assert_fails(
        &["quantize", "--tensor", "model.nope", i, o],
        &out,
        &["model.nope", "not found", "in.safetensors"],
    );
    assert_fails(
        &[
            "quantize",
            "--tensor",
            "model.w_f32",
            "--tensor",
            "model.ids",
            i,
            o,
        ],
        &out,
        &["model.ids", "I64"],
    );
    assert_fails(
        &["quantize", "--tensor", "model.empty", i, o],
        &out,
        &["model.empty"],
    );
}

#[test]
fn error_bad_block_size() {
    let (_dir, inp, out) = setup(&sample());
    for b in ["100", "16", "8192", "0"] {
        assert_fails(
            &[
                "quantize",
                "--block-size",
                b,
                inp.to_str().unwrap(),
                out.to_str().unwrap(),
            ],
            &out,
            &["--block-size", b],
        );
    }
}

#[test]
fn error_output_directory_missing() {
    let (dir, inp, _) = setup(&sample());
    let out = dir.path().join("no_such_dir").join("out.safetensors");
    let o = tinytune(&["quantize", inp.to_str().unwrap(), out.to_str().unwrap()]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: ") && err.contains("no_such_dir"),
        "{err}"
    );
    assert!(!out.exists());
}

/// A tensor over the device's buffer limit fails in the GPU runtime (`GpuError::BufferTooLarge`);
/// `--max-buffer-bytes` lowers the limit so a small file exercises that path. The failure comes
/// after OUT's temporary file was created and written to: it must be removed, and an existing OUT
/// must be left as it was.
#[test]
fn error_tensor_too_large_for_device_leaves_no_output() {
    if !have_gpu() {
        return;
    }
    let tensors = vec![
        f32_tensor("a.small", vec![4, 16], values(64, 9, 1.0)),
        f32_tensor("b.large", vec![40, 33], values(40 * 33, 10, 1.0)),
        f32_tensor("c.bias", vec![3], values(3, 11, 1.0)),
    ];
    let (_dir, inp, out) = setup(&tensors);
    let (i, o) = (inp.to_str().unwrap(), out.to_str().unwrap());
    // 40*33*4 = 5280 bytes > 4096; the small tensor (256 bytes) passes and is written first.
    assert_fails(
        &["quantize", "--max-buffer-bytes", "4096", i, o],
        &out,
        &["b.large", "in.safetensors", "5280", "4096"],
    );
    std::fs::write(&out, b"previous contents").unwrap();
    assert_fails(
        &["quantize", "--max-buffer-bytes", "4096", i, o],
        &out,
        &["b.large"],
    );
    // The same file fits the device's real limits.
    run_ok(&["quantize", i, o]);
    let bytes = read_out(&out);
    assert_eq!(SafeTensors::deserialize(&bytes).unwrap().len(), 2 * 6 + 1);
}
