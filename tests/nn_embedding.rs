//! Embedding lookup kernel (`nn/embedding_fwd`) against the CPU reference.

mod common;

use common::{gpu, Rng};
use tinytune::gpu::ops::nn;
use tinytune::gpu::GpuError;
use tinytune::reference::nn as rnn;

/// (M, V, C): M = 1, C = 1, C odd and not a multiple of 4 or 64, C = 576 (SmolLM2-135M), more
/// rows than the vocabulary (repeated ids).
const SHAPES: &[(usize, usize, usize)] = &[
    (1, 1, 1),
    (1, 37, 13),
    (9, 5, 67),
    (50, 37, 13),
    (7, 101, 576),
];

#[test]
fn nn_embedding_fwd_matches_reference() {
    let Some(gpu) = gpu() else { return };
    for (si, &(m, v, c)) in SHAPES.iter().enumerate() {
        let mut rng = Rng::new(80 + si as u64);
        let table = rng.vec(v * c, 1.0);
        // In-range ids, plus out-of-range ones (V, a large id, -1 as u32) where there is room:
        // those rows must come out zero, without reading outside the table.
        let mut ids: Vec<u32> = (0..m).map(|_| (rng.next_u64() % v as u64) as u32).collect();
        if m > 3 {
            ids[1] = v as u32;
            ids[2] = u32::MAX;
            ids[m - 1] = 1 << 30;
        }
        let want = rnn::embedding_fwd(&ids, &table, m, v, c);
        let idb = gpu.upload("ids", &ids).unwrap();
        let tb = gpu.upload("table", &table).unwrap();
        let xb = gpu.upload("x", &vec![f32::NAN; m * c]).unwrap();
        let mut enc = gpu.encoder();
        nn::embedding_fwd(&mut enc, &idb, &tb, &xb, m, v, c).unwrap();
        enc.submit();
        let got = gpu.read_blocking::<f32>(&xb).unwrap();
        // A copy: bit-exact.
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(
            bits(&got),
            bits(&want),
            "nn/embedding_fwd m={m} v={v} c={c}"
        );
        if m > 3 {
            assert!(
                got[c..3 * c].iter().all(|&x| x == 0.0),
                "out-of-range rows not zero"
            );
        }
    }
}

#[test]
fn nn_embedding_launcher_rejects_bad_shapes() {
    let Some(gpu) = gpu() else { return };
    let (m, v, c) = (4, 10, 6);
    let ids = gpu.alloc("ids", (m * 4) as u64).unwrap();
    let table = gpu.alloc("table", (v * c * 4) as u64).unwrap();
    let x = gpu.alloc("x", (m * c * 4) as u64).unwrap();
    let is_shape = |e: Result<(), GpuError>| matches!(e, Err(GpuError::Shape { .. }));
    let mut enc = gpu.encoder();
    assert!(
        is_shape(nn::embedding_fwd(&mut enc, &ids, &table, &x, m + 1, v, c)),
        "short ids"
    );
    assert!(
        is_shape(nn::embedding_fwd(&mut enc, &ids, &table, &x, m, v + 1, c)),
        "short table"
    );
    assert!(
        is_shape(nn::embedding_fwd(&mut enc, &ids, &table, &table, m, v, c)),
        "x aliases table"
    );
    assert!(nn::embedding_fwd(&mut enc, &ids, &table, &x, m, v, c).is_ok());
    enc.submit();
    gpu.sync().unwrap();
}
