//! The double quantization kernels (`nf4/absmax_mean`, `nf4/absmax_quantize`) against the
//! reference: bit-exact offset, codes and nested absmax, on awkward block counts.

mod common;

use common::nf4::bits;
use common::{gpu, Rng};
use tinytune::gpu::ops::nf4::{self, DQ_NESTED, DQ_OFFSET};
use tinytune::gpu::{Gpu, GpuBuffer};
use tinytune::reference::nf4::{self as rnf4, DYNAMIC_MAP, NESTED_BLOCK};

/// Block counts: one block, one short of / exactly / one past a nested block, many nested blocks.
const NBLOCKS: &[usize] = &[1, 255, 256, 257, 1000, 256 * 9 + 3];

/// Positive absmax values; with `flat`, the first nested block is all equal (with a single nested
/// block its values all equal the offset: nested absmax 0, which CUDA maps to code 0).
fn absmax(nblocks: usize, seed: u64, flat: bool) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    let mut a: Vec<f32> = rng
        .vec(nblocks, 1.0)
        .iter()
        .map(|v| v.abs() * 0.05 + 1e-4)
        .collect();
    if flat {
        let end = nblocks.min(NESTED_BLOCK);
        a[..end].iter_mut().for_each(|v| *v = 0.0125);
    }
    a
}

/// `[DYNAMIC_MAP, offset, 0 ...]` as the launchers expect `dq`.
fn dq_buffer(gpu: &Gpu, nblocks: usize, offset: f32) -> GpuBuffer {
    let mut dq = vec![0f32; DQ_NESTED + nblocks.div_ceil(NESTED_BLOCK)];
    dq[..256].copy_from_slice(&DYNAMIC_MAP);
    dq[DQ_OFFSET] = offset;
    gpu.upload("dq", &dq).unwrap()
}

#[test]
fn absmax_mean_matches_reference() {
    let Some(gpu) = gpu() else { return };
    for (i, &nb) in NBLOCKS.iter().enumerate() {
        let a = absmax(nb, 10 + i as u64, false);
        let ab = gpu.upload("absmax", &a).unwrap();
        let dq = dq_buffer(gpu, nb, 0.0);
        let mut enc = gpu.encoder();
        nf4::absmax_mean(&mut enc, &ab, &dq, nb).unwrap();
        enc.submit();
        let got = gpu.read_blocking::<f32>(&dq).unwrap();
        assert_eq!(
            got[DQ_OFFSET].to_bits(),
            rnf4::absmax_mean(&a).to_bits(),
            "nblocks={nb}"
        );
        assert_eq!(
            bits(&got[..256]),
            bits(&DYNAMIC_MAP),
            "map kept, nblocks={nb}"
        );
    }
}

#[test]
fn absmax_quantize_matches_reference() {
    let Some(gpu) = gpu() else { return };
    for (i, &nb) in NBLOCKS.iter().enumerate() {
        for flat in [false, true] {
            let a = absmax(nb, 20 + i as u64, flat);
            let offset = rnf4::absmax_mean(&a);
            let want = rnf4::absmax_quantize(&a, offset);
            let ab = gpu.upload("absmax", &a).unwrap();
            let dq = dq_buffer(gpu, nb, offset);
            let q = gpu.alloc("qabsmax", nb as u64).unwrap();
            let mut enc = gpu.encoder();
            nf4::absmax_quantize(&mut enc, &ab, &q, &dq, nb).unwrap();
            enc.submit();
            let codes = pollster::block_on(gpu.read_bytes(&q)).unwrap();
            assert_eq!(codes, want.codes, "codes nblocks={nb} flat={flat}");
            let got = gpu.read_blocking::<f32>(&dq).unwrap();
            assert_eq!(
                bits(&got[DQ_NESTED..]),
                bits(&want.nested_absmax),
                "nested absmax nblocks={nb} flat={flat}"
            );
        }
    }
}

#[test]
fn absmax_launchers_reject_bad_shapes() {
    let Some(gpu) = gpu() else { return };
    let nb = 300;
    let ab = gpu.upload("absmax", &absmax(nb, 1, false)).unwrap();
    let short_dq = dq_buffer(gpu, 1, 0.0);
    let q = gpu.alloc("qabsmax", nb as u64 - 1).unwrap();
    let dq = dq_buffer(gpu, nb, 0.0);
    let mut enc = gpu.encoder();
    assert!(nf4::absmax_mean(&mut enc, &ab, &short_dq, nb).is_err());
    assert!(nf4::absmax_mean(&mut enc, &ab, &dq, 0).is_err());
    assert!(nf4::absmax_mean(&mut enc, &ab, &dq, nb + 1).is_err());
    assert!(nf4::absmax_quantize(&mut enc, &ab, &q, &dq, nb).is_err());
    assert!(nf4::absmax_quantize(&mut enc, &dq, &q, &dq, nb).is_err());
}
