//! `nf4/quantize` against the reference (with the double quantization kernels of
//! `ops::nf4::quantize`, and the dequantized round trip): bit-exact codes and absmax, on awkward shapes.

mod common;

use common::gpu;
use common::nf4::{awkward, bits, device_form};
use tinytune::gpu::nf4::Absmax;
use tinytune::gpu::ops::nf4;
use tinytune::reference::nf4::Nf4Tensor;

fn run(n: usize, block: usize, double_quant: bool) {
    let Some(gpu) = gpu() else { return };
    let x = awkward(n, block, n as u64 * 31 + block as u64);
    let oracle = Nf4Tensor::quantize(&x, block, double_quant);
    let want = device_form(&oracle);
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
        bits(&oracle.dequantize()),
        "dequantize n={n} block={block} dq={double_quant}"
    );
}

#[test]
fn quantize_matches_reference() {
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
fn quantize_double_quant_matches_reference() {
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
fn quantize_rejects_bad_block_size() {
    let Some(gpu) = gpu() else { return };
    let xb = gpu.upload("x", &[0f32; 100]).unwrap();
    let mut enc = gpu.encoder();
    let err = nf4::quantize(&mut enc, "w", &xb, 100, 48, true)
        .err()
        .expect("block 48 must be refused");
    assert!(err.to_string().contains("block size 48"), "{err}");
}
