//! Embedding lookup kernel (`nn/embedding_fwd`) against the CPU reference.

mod common;

use common::{gpu, Rng};
use tinytune::gpu::ops::nn;
use tinytune::gpu::{GpuError, TableDtype};
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
fn embedding_fwd_matches_reference() {
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
fn embedding_launcher_rejects_bad_shapes() {
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

/// The vocab-chunk lookup (`nn::embedding_fwd_rows`): each chunk copies its ids' rows, writes zeros
/// for ids >= V and leaves other rows unchanged (bit-exact against the reference, starting from a
/// NaN-filled x); 3 uneven chunks run in turn give the whole-table lookup bit for bit.
#[test]
fn embedding_fwd_rows_matches_reference() {
    let Some(gpu) = gpu() else { return };
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    // (M, V, C, chunks as [row0, row0 + rows)): a chunk of one row, C = 1, C = 576, ids of every
    // chunk, repeated ids.
    type Case = (usize, usize, usize, &'static [(usize, usize)]);
    let cases: &[Case] = &[
        (1, 37, 13, &[(0, 20), (20, 21), (21, 37)]),
        (9, 5, 67, &[(0, 1), (1, 4), (4, 5)]),
        (50, 37, 1, &[(0, 12), (12, 30), (30, 37)]),
        (7, 101, 576, &[(0, 50), (50, 51), (51, 101)]),
    ];
    for (si, &(m, v, c, chunks)) in cases.iter().enumerate() {
        let mut rng = Rng::new(180 + si as u64);
        let table = rng.vec(v * c, 1.0);
        let mut ids: Vec<u32> = (0..m).map(|_| (rng.next_u64() % v as u64) as u32).collect();
        if m > 3 {
            ids[0] = (v - 1) as u32;
            ids[1] = v as u32;
            ids[2] = u32::MAX;
            ids[m - 1] = 0;
        }
        let idb = gpu.upload("ids", &ids).unwrap();
        let x0 = vec![f32::NAN; m * c];
        let chunked = gpu.upload("x_chunked", &x0).unwrap();
        let mut want_chunked = x0.clone();
        for &(a, b) in chunks {
            let part = &table[a * c..b * c];
            let tb = gpu.upload("table_chunk", part).unwrap();
            // One chunk alone, into a fresh NaN x.
            let xb = gpu.upload("x", &x0).unwrap();
            let mut enc = gpu.encoder();
            nn::embedding_fwd_rows(&mut enc, &idb, &tb, &xb, m, v, a, b - a, c).unwrap();
            nn::embedding_fwd_rows(&mut enc, &idb, &tb, &chunked, m, v, a, b - a, c).unwrap();
            enc.submit();
            let got = gpu.read_blocking::<f32>(&xb).unwrap();
            let mut want = x0.clone();
            rnn::embedding_fwd_rows(&ids, part, &mut want, m, v, a, b - a, c);
            rnn::embedding_fwd_rows(&ids, part, &mut want_chunked, m, v, a, b - a, c);
            assert_eq!(
                bits(&got),
                bits(&want),
                "nn/embedding_fwd rows m={m} v={v} c={c} chunk {a}..{b}"
            );
        }
        // All chunks: the whole lookup, bit for bit.
        let got = gpu.read_blocking::<f32>(&chunked).unwrap();
        let whole = rnn::embedding_fwd(&ids, &table, m, v, c);
        assert_eq!(bits(&want_chunked), bits(&whole), "reference chunks");
        assert_eq!(
            bits(&got),
            bits(&whole),
            "nn/embedding_fwd chunked m={m} v={v} c={c}"
        );
    }

    // A chunk must lie in the vocabulary and the buffer must hold its rows.
    let (m, v, c) = (4, 10, 6);
    let ids = gpu.alloc("ids", (m * 4) as u64).unwrap();
    let table = gpu.alloc("table", (4 * c * 4) as u64).unwrap();
    let x = gpu.alloc("x", (m * c * 4) as u64).unwrap();
    let is_shape = |e: Result<(), GpuError>| matches!(e, Err(GpuError::Shape { .. }));
    let mut enc = gpu.encoder();
    assert!(
        is_shape(nn::embedding_fwd_rows(
            &mut enc, &ids, &table, &x, m, v, 7, 4, c
        )),
        "chunk past the vocabulary"
    );
    assert!(
        is_shape(nn::embedding_fwd_rows(
            &mut enc, &ids, &table, &x, m, v, 0, 5, c
        )),
        "short table chunk"
    );
    assert!(nn::embedding_fwd_rows(&mut enc, &ids, &table, &x, m, v, 6, 4, c).is_ok());
    enc.submit();
    gpu.sync().unwrap();
}

/// 16-bit bits of `x` in `dtype`, with special values mixed in (subnormals, the largest f16,
/// signed zeros, infinities) so the kernels' bit unpacking is checked on every class.
fn half_bits(x: &[f32], dtype: rnn::Float16) -> Vec<u16> {
    use tinytune::model::float::{f32_to_bf16, f32_to_f16};
    const SPECIAL: [u16; 8] = [
        0x0001, 0x83FF, 0x0400, 0x7BFF, 0x8000, 0x0000, 0x7C00, 0xFBFF,
    ];
    x.iter()
        .enumerate()
        .map(|(i, &v)| match (i % 7 == 3, dtype) {
            (true, _) => SPECIAL[(i / 7) % SPECIAL.len()],
            (false, rnn::Float16::F16) => f32_to_f16(v),
            (false, rnn::Float16::BF16) => f32_to_bf16(v),
        })
        .collect()
}

/// The 16-bit lookup (`nn::embedding_fwd_rows_dtype`, `TABLE_DTYPE` f16 / bf16): tables packed two
/// elements per u32, odd C (rows start mid-word), uneven chunks whose first element is odd; bit-exact
/// against the reference (which widens the bits on the CPU) and against the f32 kernel on the
/// widened table.
#[test]
fn embedding_fwd_rows_dtype_matches_reference() {
    let Some(gpu) = gpu() else { return };
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    type Case = (usize, usize, usize, &'static [(usize, usize)]);
    let cases: &[Case] = &[
        (1, 1, 1, &[(0, 1)]),
        (9, 37, 13, &[(0, 37)]),
        (50, 37, 13, &[(0, 5), (5, 20), (20, 37)]),
        (12, 5, 67, &[(0, 1), (1, 4), (4, 5)]),
        (7, 101, 576, &[(0, 51), (51, 101)]),
    ];
    for dtype in [rnn::Float16::F16, rnn::Float16::BF16] {
        let kd = match dtype {
            rnn::Float16::F16 => TableDtype::F16,
            rnn::Float16::BF16 => TableDtype::BF16,
        };
        for (si, &(m, v, c, chunks)) in cases.iter().enumerate() {
            let mut rng = Rng::new(280 + si as u64);
            let table = half_bits(&rng.vec(v * c, 2.0), dtype);
            let mut ids: Vec<u32> = (0..m).map(|_| (rng.next_u64() % v as u64) as u32).collect();
            if m > 3 {
                ids[0] = (v - 1) as u32;
                ids[1] = v as u32;
                ids[2] = u32::MAX;
            }
            let idb = gpu.upload("ids", &ids).unwrap();
            let x0 = vec![f32::NAN; m * c];
            let xb = gpu.upload("x", &x0).unwrap();
            let x32 = gpu.upload("x_f32", &x0).unwrap();
            let mut want = x0.clone();
            let mut enc = gpu.encoder();
            let mut keep = Vec::new();
            for &(a, b) in chunks {
                let part = &table[a * c..b * c];
                let tb = gpu.upload("table16", part).unwrap();
                let t32 = gpu.upload("table32", &dtype.widen(part)).unwrap();
                nn::embedding_fwd_rows_dtype(&mut enc, &idb, &tb, kd, &xb, m, v, a, b - a, c)
                    .unwrap();
                nn::embedding_fwd_rows(&mut enc, &idb, &t32, &x32, m, v, a, b - a, c).unwrap();
                rnn::embedding_fwd_rows_dtype(&ids, part, dtype, &mut want, m, v, a, b - a, c);
                keep.push((tb, t32));
            }
            enc.submit();
            let got = gpu.read_blocking::<f32>(&xb).unwrap();
            let got32 = gpu.read_blocking::<f32>(&x32).unwrap();
            let name = format!("nn/embedding_fwd {dtype:?} m={m} v={v} c={c}");
            assert_eq!(bits(&got), bits(&want), "{name} vs reference");
            assert_eq!(bits(&got), bits(&got32), "{name} vs the f32 table");
        }
    }
    // A 16-bit table holds ceil(rows * C / 2) words: one byte short is refused.
    let (m, v, c) = (2, 3, 5);
    let ids = gpu.upload("ids", &[0u32, 2]).unwrap();
    let x = gpu.alloc("x", (m * c * 4) as u64).unwrap();
    let exact = gpu
        .alloc("t", TableDtype::BF16.bytes((v * c) as u64))
        .unwrap();
    let short = gpu
        .alloc("t", TableDtype::BF16.bytes((v * c) as u64) - 4)
        .unwrap();
    let mut enc = gpu.encoder();
    assert!(nn::embedding_fwd_rows_dtype(
        &mut enc,
        &ids,
        &exact,
        TableDtype::BF16,
        &x,
        m,
        v,
        0,
        v,
        c
    )
    .is_ok());
    assert!(matches!(
        nn::embedding_fwd_rows_dtype(&mut enc, &ids, &short, TableDtype::BF16, &x, m, v, 0, v, c),
        Err(GpuError::Shape { .. })
    ));
    enc.submit();
}
