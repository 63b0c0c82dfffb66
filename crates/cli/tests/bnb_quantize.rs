//! `tinytune quantize IN OUT` (and `--dequantize`) against what bitsandbytes 0.50.2 / transformers save
//! for the same weights: `tests/fixtures/bnb/quantize_*.safetensors`, made by `gen_bnb_fixtures.py`.
//!
//! Expected output of `quantize`, per 2-D float tensor NAME (NF4, blocksize 64, double quantization):
//! `NAME` (U8 `[ceil(n/2), 1]`), `NAME.absmax` (U8), `NAME.quant_map` (F32 [16]), `NAME.nested_absmax`
//! (F32), `NAME.nested_quant_map` (F32 [256]), `NAME.quant_state.bitsandbytes__nf4` (U8, the JSON blob with
//! keys quant_type, blocksize, dtype, shape, nested_blocksize, nested_dtype, nested_offset); every other
//! tensor copied unchanged. With `--dequantize`: NAME as F32 of the original shape, dequantized.
//!
//! Documented differences from bitsandbytes' CPU output (tinytune follows bitsandbytes' CUDA kernels):
//! NF4 codes in the 1-ulp threshold windows / bnb's division of the partial last block, and nested
//! absmax codes where bnb's CPU lookup table differs from the CUDA search. The generator recorded where
//! they occur and the CUDA emulation's values there (`quantize_cuda.safetensors`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use safetensors::{tensor::TensorView, Dtype, SafeTensors};
use serde_json::Value;

const DEQUANT_RTOL: f32 = 1e-6;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/bnb")
        .join(name)
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn st(bytes: &[u8]) -> SafeTensors<'_> {
    SafeTensors::deserialize(bytes).expect("safetensors")
}

fn tensor<'a>(s: &SafeTensors<'a>, name: &str, file: &str) -> TensorView<'a> {
    s.tensor(name)
        .unwrap_or_else(|e| panic!("{file}: no tensor {name}: {e:?}"))
}

fn f32s(v: &TensorView) -> Vec<f32> {
    assert_eq!(v.dtype(), Dtype::F32);
    v.data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn code_at(packed: &[u8], i: usize) -> u8 {
    if i.is_multiple_of(2) {
        packed[i / 2] >> 4
    } else {
        packed[i / 2] & 15
    }
}

fn ulp_dist(a: f32, b: f32) -> u32 {
    let ord = |x: f32| {
        let i = x.to_bits() as i32;
        if i < 0 {
            -(i & 0x7fff_ffff) as i64
        } else {
            i as i64
        }
    };
    (ord(a) - ord(b)).unsigned_abs() as u32
}

fn usizes(v: &Value) -> Vec<usize> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect()
}

/// The literal text of a top-level number in a JSON object, parsed with Rust's correctly rounded `parse`
/// (serde_json without `float_roundtrip` may be 1 ulp off).
fn json_number(text: &str, key: &str) -> f64 {
    let k = format!("\"{key}\"");
    let at = text
        .find(&k)
        .unwrap_or_else(|| panic!("no {key} in {text}"))
        + k.len();
    let rest = text[at..]
        .trim_start()
        .strip_prefix(':')
        .expect("colon")
        .trim_start();
    let end = rest.find([',', '}']).expect("end of number");
    rest[..end]
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{key} in {text}: {e}"))
}

/// Runs the CLI; returns the output file's bytes.
fn run_cli(tag: &str, extra: &[&str]) -> Vec<u8> {
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "bnb_quantize_{tag}_{}.safetensors",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&out);
    let input = fixture("quantize_in.safetensors");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tinytune"));
    cmd.arg("quantize").arg(&input).arg(&out).args(extra);
    let res = cmd.output().expect("run tinytune");
    assert!(
        res.status.success(),
        "{cmd:?} failed: {}\nstdout:\n{}\nstderr:\n{}",
        res.status,
        String::from_utf8_lossy(&res.stdout),
        String::from_utf8_lossy(&res.stderr)
    );
    let bytes =
        std::fs::read(&out).unwrap_or_else(|e| panic!("{cmd:?} wrote no {}: {e}", out.display()));
    let _ = std::fs::remove_file(&out);
    bytes
}

/// The generator's record of each 2-D tensor (what bnb and the CUDA emulation did).
fn records(cuda_bytes: &[u8]) -> serde_json::Map<String, Value> {
    let (_, m) = SafeTensors::read_metadata(cuda_bytes).expect("metadata");
    let s = m
        .metadata()
        .as_ref()
        .and_then(|m| m.get("fixture"))
        .expect("fixture metadata");
    let v: Value = serde_json::from_str(s).expect("json");
    let cases = v["cases"].as_object().expect("cases").clone();
    assert_eq!(cases.len(), 5);
    cases
}

fn assert_passthrough(out: &SafeTensors, input: &SafeTensors, quantized: &BTreeSet<String>) {
    for (name, v) in input.tensors() {
        if quantized.contains(&name) {
            continue;
        }
        let o = tensor(out, &name, "output");
        assert_eq!(o.dtype(), v.dtype(), "{name}: copied tensor dtype");
        assert_eq!(o.shape(), v.shape(), "{name}: copied tensor shape");
        assert_eq!(o.data(), v.data(), "{name}: copied tensor data");
    }
}

#[test]
fn cli_quantize_matches_bitsandbytes() {
    let out_bytes = run_cli("q", &[]);
    let (in_bytes, bnb_bytes, cuda_bytes) = (
        read(&fixture("quantize_in.safetensors")),
        read(&fixture("quantize_bnb.safetensors")),
        read(&fixture("quantize_cuda.safetensors")),
    );
    let (out, input, bnb, cuda) = (
        st(&out_bytes),
        st(&in_bytes),
        st(&bnb_bytes),
        st(&cuda_bytes),
    );
    let recs = records(&cuda_bytes);
    let quantized: BTreeSet<String> = recs.keys().cloned().collect();

    // Exactly bnb's tensors for the 2-D weights, plus the copied ones.
    let mut expected: BTreeSet<String> = bnb.names().iter().map(|s| s.to_string()).collect();
    expected.extend(
        input
            .names()
            .iter()
            .filter(|n| !quantized.contains(**n))
            .map(|s| s.to_string()),
    );
    let got: BTreeSet<String> = out.names().iter().map(|s| s.to_string()).collect();
    assert_eq!(got, expected, "output tensor names");
    assert_passthrough(&out, &input, &quantized);

    for (name, rec) in &recs {
        let n = rec["n"].as_u64().unwrap() as usize;
        let block = rec["block"].as_u64().unwrap() as usize;
        let nblocks = n.div_ceil(block);
        // dtype and shape of every tensor as bnb saved it (the JSON blob's length may differ).
        for suffix in [
            "",
            ".absmax",
            ".quant_map",
            ".nested_absmax",
            ".nested_quant_map",
            ".quant_state.bitsandbytes__nf4",
        ] {
            let key = format!("{name}{suffix}");
            let (o, b) = (tensor(&out, &key, "output"), tensor(&bnb, &key, "bnb"));
            assert_eq!(o.dtype(), b.dtype(), "{key}: dtype");
            if !suffix.starts_with(".quant_state") {
                assert_eq!(o.shape(), b.shape(), "{key}: shape");
            }
        }
        assert_eq!(tensor(&bnb, name, "bnb").shape(), &[n.div_ceil(2), 1]);

        // Packed NF4 codes: bnb's, except where the generator found bnb's CPU path differs from CUDA.
        let ours = tensor(&out, name, "output").data().to_vec();
        let theirs = tensor(&bnb, name, "bnb").data().to_vec();
        let cuda_packed = tensor(&cuda, &format!("{name}.cuda.packed"), "cuda")
            .data()
            .to_vec();
        let mut documented: BTreeSet<usize> = usizes(&rec["nf4_diff_threshold_window"])
            .into_iter()
            .collect();
        documented.extend(usizes(&rec["nf4_diff_partial_block_division"]));
        let mut code_diffs = 0;
        for i in 0..n + n % 2 {
            let (o, b) = (code_at(&ours, i), code_at(&theirs, i));
            if documented.contains(&i) {
                assert_eq!(
                    o,
                    code_at(&cuda_packed, i),
                    "{name}: NF4 code {i} (documented case: CUDA's)"
                );
                code_diffs += (o != b) as usize;
            } else {
                assert_eq!(o, b, "{name}: NF4 code {i}");
            }
        }

        // Code books.
        for suffix in [".quant_map", ".nested_quant_map"] {
            let key = format!("{name}{suffix}");
            assert_eq!(
                tensor(&out, &key, "output").data(),
                tensor(&bnb, &key, "bnb").data(),
                "{key}"
            );
        }

        // The quant-state JSON: equal as JSON, nested_offset equal as f32 (or our documented mean).
        let key = format!("{name}.quant_state.bitsandbytes__nf4");
        let ot =
            String::from_utf8(tensor(&out, &key, "output").data().to_vec()).expect("utf-8 JSON");
        let bt = String::from_utf8(tensor(&bnb, &key, "bnb").data().to_vec()).unwrap();
        let (mut oj, mut bj): (Value, Value) = (
            serde_json::from_str(&ot).expect(&ot),
            serde_json::from_str(&bt).unwrap(),
        );
        let keys = [
            "quant_type",
            "blocksize",
            "dtype",
            "shape",
            "nested_blocksize",
            "nested_dtype",
            "nested_offset",
        ];
        let pos: Vec<usize> = keys
            .iter()
            .map(|k| {
                ot.find(&format!("\"{k}\""))
                    .unwrap_or_else(|| panic!("{key}: no {k} in {ot}"))
            })
            .collect();
        assert!(pos.windows(2).all(|w| w[0] < w[1]), "{key}: key order {ot}");
        let (oo, bo) = (
            json_number(&ot, "nested_offset"),
            json_number(&bt, "nested_offset"),
        );
        let (oo32, bo32) = (oo as f32, bo as f32);
        assert_eq!(
            oo32 as f64, oo,
            "{key}: nested_offset {oo} is not an f32 value"
        );
        assert_eq!(
            bo32.to_bits() as u64,
            rec["offset_bnb_bits"].as_u64().unwrap()
        );
        oj.as_object_mut().unwrap().remove("nested_offset");
        bj.as_object_mut().unwrap().remove("nested_offset");
        assert_eq!(oj, bj, "{key}: {ot} vs {bt}");

        // Double-quantized absmax.
        let ocodes = tensor(&out, &format!("{name}.absmax"), "output")
            .data()
            .to_vec();
        let bcodes = tensor(&bnb, &format!("{name}.absmax"), "bnb")
            .data()
            .to_vec();
        let onest = f32s(&tensor(&out, &format!("{name}.nested_absmax"), "output"));
        assert_eq!(ocodes.len(), nblocks);
        let ulp = ulp_dist(oo32, bo32);
        let nested_diffs = if ulp == 0 {
            // Same offset as bnb: bnb's codes except where its CPU lookup table differs from CUDA's search.
            let lut: BTreeSet<usize> = usizes(&rec["nested_diff_lut"]).into_iter().collect();
            let cu = tensor(&cuda, &format!("{name}.cuda.absmax_codes"), "cuda")
                .data()
                .to_vec();
            for b in 0..nblocks {
                let want = if lut.contains(&b) { cu[b] } else { bcodes[b] };
                assert_eq!(ocodes[b], want, "{name}: nested code of block {b}");
            }
            let bnest = f32s(&tensor(&bnb, &format!("{name}.nested_absmax"), "bnb"));
            assert_eq!(
                onest.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                bnest.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                "{name}: nested absmax"
            );
            lut.len()
        } else {
            // tinytune's own f32 mean (tinytune_reference::nf4::absmax_mean's order) differs from torch's.
            assert_eq!(
                oo32.to_bits() as u64,
                rec["offset_ours_bits"].as_u64().unwrap(),
                "{name}: offset {oo32:e} is neither bnb's {bo32:e} nor tinytune's documented mean"
            );
            let cu = tensor(&cuda, &format!("{name}.cuda_ourmean.absmax_codes"), "cuda")
                .data()
                .to_vec();
            assert_eq!(
                ocodes, cu,
                "{name}: nested codes (CUDA search with our mean)"
            );
            let cn = f32s(&tensor(
                &cuda,
                &format!("{name}.cuda_ourmean.nested_absmax"),
                "cuda",
            ));
            assert_eq!(
                onest.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                cn.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                "{name}: nested absmax"
            );
            (0..nblocks).filter(|&b| ocodes[b] != bcodes[b]).count()
        };
        eprintln!(
            "{name}: n={n}: NF4 codes differing from bnb {code_diffs}, nested codes differing {nested_diffs} of {nblocks}, offset {ulp} ulp from bnb's"
        );
    }
}

#[test]
fn cli_quantize_dequantize_matches_bitsandbytes() {
    let out_bytes = run_cli("dq", &["--dequantize"]);
    let (in_bytes, deq_bytes, cuda_bytes) = (
        read(&fixture("quantize_in.safetensors")),
        read(&fixture("quantize_bnb_dequant.safetensors")),
        read(&fixture("quantize_cuda.safetensors")),
    );
    let (out, input, deq, cuda) = (
        st(&out_bytes),
        st(&in_bytes),
        st(&deq_bytes),
        st(&cuda_bytes),
    );
    let bnb_bytes = read(&fixture("quantize_bnb.safetensors"));
    let bnb = st(&bnb_bytes);
    let recs = records(&cuda_bytes);
    let quantized: BTreeSet<String> = recs.keys().cloned().collect();
    let got: BTreeSet<String> = out.names().iter().map(|s| s.to_string()).collect();
    let expected: BTreeSet<String> = input.names().iter().map(|s| s.to_string()).collect();
    assert_eq!(got, expected, "output tensor names");
    assert_passthrough(&out, &input, &quantized);

    for (name, rec) in &recs {
        let block = rec["block"].as_u64().unwrap() as usize;
        let o = tensor(&out, name, "output");
        assert_eq!(o.dtype(), Dtype::F32, "{name}");
        assert_eq!(o.shape(), tensor(&input, name, "input").shape(), "{name}");
        let (ov, bv) = (f32s(&o), f32s(&tensor(&deq, name, "bnb dequant")));
        // Elements whose NF4 code or block scale is documented to differ from bnb's CPU output.
        let mut skip_el: BTreeSet<usize> = usizes(&rec["nf4_diff_threshold_window"])
            .into_iter()
            .collect();
        skip_el.extend(usizes(&rec["nf4_diff_partial_block_division"]));
        let mut skip_blocks: BTreeSet<usize> =
            usizes(&rec["nested_diff_lut"]).into_iter().collect();
        // If tinytune's mean differs from torch's, the blocks whose nested code that changes.
        let cu = tensor(&cuda, &format!("{name}.cuda.absmax_codes"), "cuda")
            .data()
            .to_vec();
        let cu2 = tensor(&cuda, &format!("{name}.cuda_ourmean.absmax_codes"), "cuda")
            .data()
            .to_vec();
        skip_blocks.extend((0..cu.len()).filter(|&b| cu[b] != cu2[b]));
        // There: the CUDA emulation (with tinytune's mean), dequantized as bnb does it.
        let code4 = f32s(&tensor(&bnb, &format!("{name}.quant_map"), "bnb"));
        let code8 = f32s(&tensor(&bnb, &format!("{name}.nested_quant_map"), "bnb"));
        let cpacked = tensor(&cuda, &format!("{name}.cuda.packed"), "cuda")
            .data()
            .to_vec();
        let cnested = f32s(&tensor(
            &cuda,
            &format!("{name}.cuda_ourmean.nested_absmax"),
            "cuda",
        ));
        let off = f32::from_bits(rec["offset_ours_bits"].as_u64().unwrap() as u32);
        let cuda_dequant = |i: usize| {
            let b = i / block;
            let absmax = code8[cu2[b] as usize] * cnested[b / 256] + off;
            code4[code_at(&cpacked, i) as usize] * absmax
        };
        let (mut checked, mut worst, mut documented) = (0usize, 0f32, 0usize);
        for i in 0..ov.len() {
            let a = ov[i];
            if skip_el.contains(&i) || skip_blocks.contains(&(i / block)) {
                let c = cuda_dequant(i);
                assert!(
                    (a - c).abs() <= DEQUANT_RTOL * c.abs(),
                    "{name}[{i}]: tinytune {a:e}, CUDA emulation {c:e} (bnb {:e})",
                    bv[i]
                );
                documented += 1;
                continue;
            }
            let b = bv[i];
            assert!(
                (a - b).abs() <= DEQUANT_RTOL * b.abs(),
                "{name}[{i}]: tinytune {a:e}, bnb {b:e}"
            );
            if b != 0.0 {
                worst = worst.max((a - b).abs() / b.abs());
            }
            checked += 1;
        }
        assert!(checked * 2 >= ov.len(), "{name}");
        eprintln!(
            "{name}: {checked} of {} dequantized values compared with bnb (worst relative error {worst:e}), \
             {documented} with the CUDA emulation",
            ov.len()
        );
    }
}
