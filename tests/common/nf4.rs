//! NF4 test data shared by the nf4 kernel tests.

use super::Rng;
use tinytune::gpu::nf4 as gnf4;
use tinytune::reference::nf4 as rnf4;

/// Data with the corner cases the issue lists: an all-zero block, values exactly on NF4 codes and
/// exactly halfway between two codes (ties), a single huge value.
pub fn awkward(n: usize, block: usize, seed: u64) -> Vec<f32> {
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

/// The bits of each value (for bit-exact comparisons).
pub fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|f| f.to_bits()).collect()
}

/// The reference's host tensor as the production type the device uploads (a field-by-field copy).
pub fn device_form(t: &rnf4::Nf4Tensor) -> gnf4::Nf4Tensor {
    gnf4::Nf4Tensor {
        n: t.n,
        block: t.block,
        packed: t.packed.clone(),
        absmax: match &t.absmax {
            rnf4::Absmax::F32(a) => gnf4::Absmax::F32(a.clone()),
            rnf4::Absmax::Double(d) => gnf4::Absmax::Double(gnf4::DoubleQuant {
                codes: d.codes.clone(),
                nested_absmax: d.nested_absmax.clone(),
                offset: d.offset,
            }),
        },
    }
}
