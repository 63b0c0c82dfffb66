//! NF4 kernels against the reference: bit-exact codes and absmax, on awkward shapes.

mod common;

use common::{gpu, Rng};
use tinytune::gpu::ops::nf4;
use tinytune::reference::nf4::{self as rnf4, Absmax, Nf4Tensor};

/// Data with the corner cases the issue lists: an all-zero block, values exactly on NF4 codes and
/// exactly halfway between two codes (ties), a single huge value.
fn awkward(n: usize, block: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    let mut x = rng.vec(n, 0.02);
    if n >= 2 * block {
        // Block 1: all zeros.
        x[block..2 * block].iter_mut().for_each(|v| *v = 0.0);
    }
    if n >= 3 * block {
        // Block 2: absmax 1.0 at its first element, then every midpoint and every code exactly.
        let b = &mut x[2 * block..3 * block];
        b[0] = 1.0;
        for (j, m) in rnf4::NF4_MIDPOINTS.iter().enumerate() {
            if 1 + j < b.len() {
                b[1 + j] = *m;
            }
        }
        for (j, c) in rnf4::NF4.iter().enumerate() {
            if 16 + j < b.len() {
                b[16 + j] = *c;
            }
        }
    }
    x
}

fn run(n: usize, block: usize, double_quant: bool) {
    let Some(gpu) = gpu() else { return };
    let x = awkward(n, block, n as u64 * 31 + block as u64);
    let want = Nf4Tensor::quantize(&x, block, double_quant);
    let xb = gpu.upload("x", &x).unwrap();
    let mut enc = gpu.encoder();
    let w = nf4::quantize(&mut enc, "w", &xb, n, block, double_quant).unwrap();
    let out = gpu.alloc("deq", n as u64 * 4).unwrap();
    nf4::dequantize(&mut enc, &w, &out).unwrap();
    enc.submit();
    let got = pollster::block_on(w.to_host(gpu)).unwrap();
    assert_eq!(got.packed.len(), n.div_ceil(2));
    let mismatches: Vec<usize> = (0..got.packed.len())
        .filter(|&i| got.packed[i] != want.packed[i])
        .collect();
    assert!(
        mismatches.is_empty(),
        "n={n} block={block}: {} code bytes differ, first at {} (gpu {:02x} ref {:02x})",
        mismatches.len(),
        mismatches[0],
        got.packed[mismatches[0]],
        want.packed[mismatches[0]]
    );
    match (&got.absmax, &want.absmax) {
        (Absmax::F32(a), Absmax::F32(b)) => {
            assert_eq!(bits(a), bits(b), "absmax n={n} block={block}")
        }
        (Absmax::Double(a), Absmax::Double(b)) => {
            assert_eq!(
                a.offset.to_bits(),
                b.offset.to_bits(),
                "offset n={n} block={block}"
            );
            assert_eq!(
                bits(&a.nested_absmax),
                bits(&b.nested_absmax),
                "nested absmax n={n} block={block}"
            );
            assert_eq!(a.codes, b.codes, "absmax codes n={n} block={block}");
        }
        _ => panic!("absmax kind differs"),
    }
    let deq = gpu.read_blocking::<f32>(&out).unwrap();
    assert_eq!(
        bits(&deq),
        bits(&want.dequantize()),
        "dequantize n={n} block={block} dq={double_quant}"
    );
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|f| f.to_bits()).collect()
}

#[test]
fn nf4_quantize_matches_reference() {
    // Odd n (pad nibble), partial last block, single block, many blocks (> 256 for the nested blocks).
    for &(n, block) in &[
        (1usize, 64usize),
        (63, 64),
        (64 * 3 + 7, 64),
        (1000, 32),
        (4096 * 3 + 1, 4096),
        (64 * 600 + 33, 64),
        (129 * 7, 128),
    ] {
        run(n, block, false);
    }
}

#[test]
fn nf4_double_quant_matches_reference() {
    for &(n, block) in &[
        (1usize, 64usize),
        (64 * 3 + 7, 64),
        (64 * 256, 64),
        (64 * 700 + 5, 64),
        (2048 * 300, 2048),
    ] {
        run(n, block, true);
    }
}

#[test]
fn nf4_dequantize_matches_reference() {
    // Dequantize a host tensor uploaded from the reference (the path a loaded checkpoint takes).
    let Some(gpu) = gpu() else { return };
    for &(n, block, dq) in &[
        (999usize, 64usize, true),
        (999, 64, false),
        (5000, 256, true),
    ] {
        let x = awkward(n, block, 7);
        let t = Nf4Tensor::quantize(&x, block, dq);
        let w = nf4::Nf4Weight::upload(gpu, "w", &t).unwrap();
        let out = gpu.alloc("deq", n as u64 * 4).unwrap();
        let mut enc = gpu.encoder();
        nf4::dequantize(&mut enc, &w, &out).unwrap();
        enc.submit();
        assert_eq!(
            bits(&gpu.read_blocking::<f32>(&out).unwrap()),
            bits(&t.dequantize())
        );
    }
}

#[test]
fn nf4_rejects_bad_block_size() {
    let Some(gpu) = gpu() else { return };
    let xb = gpu.upload("x", &[0f32; 100]).unwrap();
    let mut enc = gpu.encoder();
    let err = nf4::quantize(&mut enc, "w", &xb, 100, 48, true)
        .err()
        .expect("block 48 must be refused");
    assert!(err.to_string().contains("block size 48"), "{err}");
}

#[test]
fn nf4_dequantize_large_dispatch_splits_groups() {
    // More than 65535 workgroups of 64: the launcher splits them over x and y.
    let Some(gpu) = gpu() else { return };
    let n = 65536 * 64 + 100;
    let mut rng = Rng::new(3);
    let x = rng.vec(n, 1.0);
    let t = Nf4Tensor::quantize(&x, 64, true);
    let w = nf4::Nf4Weight::upload(gpu, "w", &t).unwrap();
    let out = gpu.alloc("deq", n as u64 * 4).unwrap();
    let mut enc = gpu.encoder();
    nf4::dequantize(&mut enc, &w, &out).unwrap();
    enc.submit();
    let got = gpu.read_blocking::<f32>(&out).unwrap();
    assert_eq!(bits(&got), bits(&t.dequantize()));
}
