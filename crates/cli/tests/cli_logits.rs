//! `tinytune logits` against transformers' logits of the tiny Llama fixture, and its errors.

use std::path::PathBuf;
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read_f32(bytes: &[u8], name: &str) -> (Vec<usize>, Vec<f32>) {
    let st = safetensors::SafeTensors::deserialize(bytes).expect("safetensors");
    let t = st.tensor(name).expect(name);
    let data = t
        .data()
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    (t.shape().to_vec(), data)
}

#[test]
fn cli_logits_match_transformers() {
    let fixture = std::fs::read(root().join("tests/fixtures/hf/llama/logits.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&fixture).unwrap();
    let ids_view = st.tensor("input_ids_i32").unwrap();
    let ids: Vec<i32> = ids_view
        .data()
        .chunks(4)
        .map(|c| i32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let t = ids_view.shape()[1];
    let (_, want) = read_f32(&fixture, "logits");
    let v = want.len() / ids.len();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("logits.safetensors");
    let ids_arg: Vec<String> = ids[..t].iter().map(|i| i.to_string()).collect();
    let run = Command::new(env!("CARGO_BIN_EXE_tinytune"))
        .args(["logits", "--quant", "none", "--model"])
        .arg(root().join("tests/fixtures/hf/llama/model"))
        .args(["--ids", &ids_arg.join(","), "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let (shape, got) = read_f32(&std::fs::read(&out).unwrap(), "logits");
    assert_eq!(shape, vec![t, v]);
    // Sequence 0 of the fixture batch: |cli - transformers| <= 1e-4 + 1e-4 |transformers|.
    for (i, (g, w)) in got.iter().zip(&want[..t * v]).enumerate() {
        assert!(
            (g - w).abs() <= 1e-4 + 1e-4 * w.abs(),
            "logit {i}: {g} vs {w}"
        );
    }
}

#[test]
fn cli_logits_errors_are_one_line_and_leave_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("logits.safetensors");
    let model = root().join("tests/fixtures/hf/llama/model");
    for (args, needle) in [
        (vec!["--ids", "1,2,99999"], "99999"),
        (vec!["--ids", "1,x"], "x"),
    ] {
        let run = Command::new(env!("CARGO_BIN_EXE_tinytune"))
            .args(["logits", "--model"])
            .arg(&model)
            .args(&args)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        assert!(!run.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&run.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!out.exists(), "{args:?} left an output file");
    }
    let run = Command::new(env!("CARGO_BIN_EXE_tinytune"))
        .args([
            "logits",
            "--model",
            "/nonexistent/model",
            "--ids",
            "1",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(
        !run.status.success() && err.lines().count() == 1 && err.contains("/nonexistent/model"),
        "{err}"
    );
}
