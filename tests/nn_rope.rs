//! RoPE kernels (`nn/rope_fwd`, `nn/rope_bwd`, in place) against the CPU reference, their sin/cos
//! against f64, the reference backward against finite differences, and `rope_inv_freq` against
//! transformers' own `inv_freq` buffers.

mod common;

use common::{assert_close, gpu, Rng};
use tinytune::gpu::ops::nn;
use tinytune::gpu::{Gpu, GpuBuffer, GpuError};
use tinytune::model::rope::{rope_inv_freq, Llama3Scaling};
use tinytune::reference::nn as rnn;

/// |gpu - ref| <= atol + rtol * |ref| for `nn/rope_fwd` and `nn/rope_bwd`: the kernels' own
/// sin/cos are within ~1.5 ulp (ANGLE_ATOL), the reference's (libm) within 0.5 ulp; with inputs
/// up to ~4 that is a few 1e-7 absolute after the rotation's two products and one sum.
const ROPE_ATOL: f32 = 1e-6;
const ROPE_RTOL: f32 = 1e-6;
/// Largest |gpu - f64| of the kernels' cos/sin of the (f32) angle, positions up to 131072.
const ANGLE_ATOL: f64 = 2e-7;

fn llama3(factor: f64, low: f64, high: f64, orig: f64) -> Llama3Scaling {
    Llama3Scaling {
        factor,
        low_freq_factor: low,
        high_freq_factor: high,
        original_max_position_embeddings: orig,
    }
}

/// (M, H, D, rope_theta, Llama 3 scaling): M = 1, D = 2, D = 6 and 18 (not multiples of 8, odd
/// D/2), odd H, D = 64 and 128, many rows, default and "llama3" frequencies.
fn cases() -> Vec<(usize, usize, usize, f64, Option<Llama3Scaling>)> {
    vec![
        (1, 1, 2, 10000.0, None),
        (1, 3, 64, 100000.0, None),
        (3, 5, 64, 100000.0, None),
        (4, 3, 6, 10000.0, None),
        (2, 9, 128, 500000.0, Some(llama3(8.0, 1.0, 4.0, 8192.0))),
        (37, 2, 18, 1e6, None),
        (5, 14, 64, 500000.0, Some(llama3(32.0, 1.0, 4.0, 8192.0))),
    ]
}

/// Positions up to 4096: the edges first, then random (rows need not be in order: packed
/// sequences and a KV cache give any position to any row).
fn positions(rng: &mut Rng, m: usize) -> Vec<u32> {
    let edges = [4096u32, 0, 4095, 1, 2048];
    (0..m)
        .map(|r| {
            if r < edges.len() {
                edges[r]
            } else {
                (rng.next_u64() % 4097) as u32
            }
        })
        .collect()
}

fn up<T: bytemuck::Pod>(gpu: &Gpu, label: &str, v: &[T]) -> GpuBuffer {
    gpu.upload(label, v).unwrap()
}

/// Runs `nn/rope_fwd` (or `_bwd`) in place on a copy of `x` and reads it back.
#[allow(clippy::too_many_arguments)]
fn run(
    gpu: &Gpu,
    bwd: bool,
    x: &[f32],
    pos: &[u32],
    inv_freq: &[f32],
    m: usize,
    h: usize,
    d: usize,
) -> Vec<f32> {
    let (xb, pb, fb) = (
        up(gpu, "x", x),
        up(gpu, "pos", pos),
        up(gpu, "inv_freq", inv_freq),
    );
    let mut enc = gpu.encoder();
    if bwd {
        nn::rope_bwd(&mut enc, &xb, &pb, &fb, m, h, d).unwrap();
    } else {
        nn::rope_fwd(&mut enc, &xb, &pb, &fb, m, h, d).unwrap();
    }
    enc.submit();
    gpu.read_blocking::<f32>(&xb).unwrap()
}

#[test]
fn rope_fwd_matches_reference() {
    let Some(gpu) = gpu() else { return };
    for (ci, (m, h, d, theta, scaling)) in cases().into_iter().enumerate() {
        let mut rng = Rng::new(50 + ci as u64);
        let inv_freq = rope_inv_freq(d, theta, scaling.as_ref());
        let pos = positions(&mut rng, m);
        let x = rng.vec(m * h * d, 1.0);
        let want = rnn::rope_fwd(&x, &pos, &inv_freq, m, h, d);
        let got = run(gpu, false, &x, &pos, &inv_freq, m, h, d);
        assert_close(
            &format!("nn/rope_fwd m={m} h={h} d={d} theta={theta}"),
            &got,
            &want,
            ROPE_ATOL,
            ROPE_RTOL,
        );
    }
}

#[test]
fn rope_bwd_matches_reference() {
    let Some(gpu) = gpu() else { return };
    for (ci, (m, h, d, theta, scaling)) in cases().into_iter().enumerate() {
        let mut rng = Rng::new(60 + ci as u64);
        let inv_freq = rope_inv_freq(d, theta, scaling.as_ref());
        let pos = positions(&mut rng, m);
        let dy = rng.vec(m * h * d, 1.0);
        let want = rnn::rope_bwd(&dy, &pos, &inv_freq, m, h, d);
        let got = run(gpu, true, &dy, &pos, &inv_freq, m, h, d);
        assert_close(
            &format!("nn/rope_bwd m={m} h={h} d={d} theta={theta}"),
            &got,
            &want,
            ROPE_ATOL,
            ROPE_RTOL,
        );
    }
}

/// The kernels' cos/sin against f64 of the same f32 angle (transformers rounds
/// `pos * inv_freq` to f32, then takes cos/sin): a head vector of ones then zeros rotates into
/// `(cos a_i, sin a_i)`. Positions up to Llama 3.1's 131072, all D/2 = 32 frequencies.
#[test]
fn rope_fwd_angles_match_f64() {
    let Some(gpu) = gpu() else { return };
    let (h, d) = (1, 64);
    let inv_freq = rope_inv_freq(d, 500000.0, None);
    let pos: Vec<u32> = (0..=131072u32)
        .step_by(97)
        .chain([4096, 8191, 8192, 65535, 131071, 131072])
        .collect();
    let m = pos.len();
    let x: Vec<f32> = (0..m * d)
        .map(|i| if i % d < d / 2 { 1.0 } else { 0.0 })
        .collect();
    let got = run(gpu, false, &x, &pos, &inv_freq, m, h, d);
    let mut worst = (0f64, 0u32, 0usize);
    for (r, &p) in pos.iter().enumerate() {
        for (i, &f) in inv_freq.iter().enumerate() {
            let a = (p as f32 * f) as f64; // the f32 product, as torch rounds it
            let (c, s) = (got[r * d + i] as f64, got[r * d + i + d / 2] as f64);
            let err = (c - a.cos()).abs().max((s - a.sin()).abs());
            if err > worst.0 {
                worst = (err, p, i);
            }
        }
    }
    assert!(
        worst.0 <= ANGLE_ATOL,
        "nn/rope_fwd cos/sin off by {:e} at pos {} i {} (limit {ANGLE_ATOL:e})",
        worst.0,
        worst.1,
        worst.2
    );
}

/// The reference backward against central differences of the reference forward for
/// `L = Σ G ⊙ rope_fwd(x)` with random `G`. The rotation is linear in x, so a large step leaves
/// only f32 rounding of the forward (L summed in f64).
#[test]
fn rope_bwd_matches_finite_differences() {
    const STEP: f32 = 0.5;
    const TOL: f64 = 1e-5;
    for &(m, h, d) in &[(1usize, 1usize, 2usize), (3, 2, 6), (2, 3, 8)] {
        let mut rng = Rng::new(70 + (m * 100 + h * 10 + d) as u64);
        let inv_freq = rope_inv_freq(d, 10000.0, None);
        let pos: Vec<u32> = (0..m).map(|_| (rng.next_u64() % 4097) as u32).collect();
        let x = rng.vec(m * h * d, 1.0);
        let g = rng.vec(m * h * d, 1.0);
        let loss = |x: &[f32]| -> f64 {
            let y = rnn::rope_fwd(x, &pos, &inv_freq, m, h, d);
            y.iter().zip(&g).map(|(&a, &b)| a as f64 * b as f64).sum()
        };
        let dx = rnn::rope_bwd(&g, &pos, &inv_freq, m, h, d);
        for (i, &an) in dx.iter().enumerate() {
            let (mut xp, mut xm) = (x.clone(), x.clone());
            xp[i] += STEP;
            xm[i] -= STEP;
            let num = (loss(&xp) - loss(&xm)) / (2.0 * STEP as f64);
            assert!(
                (an as f64 - num).abs() <= TOL * (1.0 + num.abs()),
                "dx[{i}] m={m} h={h} d={d}: backward {an} vs finite difference {num}"
            );
        }
    }
}

/// `rope_inv_freq` bit for bit against transformers' `inv_freq` buffers, pasted as f32 bits from
/// (torch 2.15 CPU with AVX-512, transformers 5.24):
///
/// ```python
/// cfg = LlamaConfig(hidden_size=4 * d, num_attention_heads=4, head_dim=d,
///                   max_position_embeddings=131072,
///                   rope_parameters={"rope_type": "default", "rope_theta": theta}
///                   # or {"rope_type": "llama3", "rope_theta": theta, "factor": f,
///                   #     "low_freq_factor": lo, "high_freq_factor": hi,
///                   #     "original_max_position_embeddings": orig}
///                   )
/// bits = [struct.unpack("<I", struct.pack("<f", v))[0]
///         for v in LlamaRotaryEmbedding(cfg).inv_freq.tolist()]
/// ```
///
/// Cases: SmolLM2 (64, 1e5), Qwen2 (64 and 128, 1e6; torch's SLEEF `pow` differs from the
/// correctly rounded power at i = 37 of the 128 case), D = 2, Llama 3.2 1B (64, 5e5, factor 32)
/// and Llama 3.1 8B (128, 5e5, factor 8), and an odd llama3 config (non-power-of-two factor,
/// low_freq_factor 0.5) with all three wavelength bands.
#[test]
#[allow(clippy::type_complexity)]
fn rope_inv_freq_llama3() {
    let cases: &[(usize, f64, Option<Llama3Scaling>, &[u32])] = &[
        (
            64,
            100000.0,
            None,
            &[
                0x3f800000, 0x3f32a506, 0x3ef953cf, 0x3eadfcff, 0x3e72d423, 0x3e297409, 0x3dec7fd6,
                0x3da50956, 0x3d6655c2, 0x3d20bc1d, 0x3ce054d2, 0x3c9c8b97, 0x3c5a7bf2, 0x3c187705,
                0x3bd4ca15, 0x3b947dae, 0x3b4f3e38, 0x3b109edb, 0x3ac9d75c, 0x3a8cd9db, 0x3a44948c,
                0x3a092e02, 0x39bf74d7, 0x39859aa9, 0x393a7753, 0x39021f2b, 0x38b59b1b, 0x387d75d4,
                0x3830df52, 0x37f6da96, 0x37ac431d, 0x37706b6d,
            ],
        ),
        (
            64,
            1000000.0,
            None,
            &[
                0x3f800000, 0x3f263de0, 0x3ed7e89b, 0x3e8c3504, 0x3e361887, 0x3dec7fd6, 0x3d99940d,
                0x3d47763f, 0x3d0186e3, 0x3ca8398b, 0x3c5a7bf2, 0x3c0de12d, 0x3bb8449c, 0x3b6f520e,
                0x3b1b690d, 0x3ac9d75c, 0x3a83126f, 0x3a2a3b44, 0x39dd1725, 0x398f9272, 0x393a7753,
                0x38f22ce2, 0x389d43a4, 0x384c3fbe, 0x3804a2b2, 0x37ac431d, 0x375fba4f, 0x371148e3,
                0x36bcb0c1, 0x36751070, 0x361f23e4, 0x35ceaf79,
            ],
        ),
        (
            128,
            1000000.0,
            None,
            &[
                0x3f800000, 0x3f4e4bad, 0x3f263de0, 0x3f05f6ef, 0x3ed7e89b, 0x3eadfcff, 0x3e8c3504,
                0x3e61f835, 0x3e361887, 0x3e12bd91, 0x3dec7fd6, 0x3dbe94c6, 0x3d99940d, 0x3d778513,
                0x3d47763f, 0x3d20bc1d, 0x3d0186e3, 0x3cd0c1a8, 0x3ca8398b, 0x3c879008, 0x3c5a7bf2,
                0x3c301052, 0x3c0de12d, 0x3be4aa46, 0x3bb8449c, 0x3b947dae, 0x3b6f520e, 0x3b40dac5,
                0x3b1b690d, 0x3afa78f0, 0x3ac9d75c, 0x3aa2a6f7, 0x3a83126f, 0x3a533f28, 0x3a2a3b44,
                0x3a092e02, 0x39dd1725, 0x39b229fb, 0x398f9272, 0x39676492, 0x393a7753, 0x39164324,
                0x38f22ce2, 0x38c327b5, 0x389d43a4, 0x387d75d4, 0x384c3fbe, 0x382497ab, 0x3804a2b2,
                0x37d5c441, 0x37ac431d, 0x378ad0ed, 0x375fba4f, 0x37344a0e, 0x371148e3, 0x36ea2732,
                0x36bcb0c1, 0x36980e02, 0x36751070, 0x36457bab, 0x361f23e4, 0x36003dec, 0x35ceaf79,
                0x35a68e4c,
            ],
        ),
        (2, 10000.0, None, &[0x3f800000]),
        (
            64,
            500000.0,
            Some(llama3(32.0, 1.0, 4.0, 8192.0)),
            &[
                0x3f800000, 0x3f29e1c6, 0x3ee177bc, 0x3e959ee3, 0x3e4693b0, 0x3e03c6a0, 0x3daee4ad,
                0x3d681e67, 0x3d1a08c8, 0x3ccc6f49, 0x3c87a9c3, 0x3c340d6d, 0x3beef74f, 0x3b9e9402,
                0x3b527720, 0x3aa9279b, 0x39e13620, 0x38cb98f7, 0x37a3418d, 0x3758ac81, 0x370fc8f8,
                0x36bed4f4, 0x367d45c3, 0x3628126b, 0x35df10c4, 0x359406cb, 0x35447610, 0x35025f34,
                0x34ad07a7, 0x3465a54d, 0x341864a7, 0x33ca41b0,
            ],
        ),
        (
            128,
            500000.0,
            Some(llama3(8.0, 1.0, 4.0, 8192.0)),
            &[
                0x3f800000, 0x3f508ac1, 0x3f29e1c6, 0x3f0a6384, 0x3ee177bc, 0x3eb7ab7d, 0x3e959ee3,
                0x3e73c461, 0x3e4693b0, 0x3e21c3a0, 0x3e03c6a0, 0x3dd6b19c, 0x3daee4ad, 0x3d8e7898,
                0x3d681e67, 0x3d3d1684, 0x3d1a08c8, 0x3cfaf53f, 0x3ccc6f49, 0x3ca68939, 0x3c87a9c3,
                0x3c5d06ec, 0x3c340d6d, 0x3c12ac7f, 0x3beef74f, 0x3bc2aa76, 0x3b9e9402, 0x3b812e35,
                0x3b527720, 0x3b0dfd06, 0x3ab3d11d, 0x3a60979e, 0x3a0995d2, 0x39a3f108, 0x393b2dd2,
                0x38c86886, 0x38a3418d, 0x3884fdbf, 0x3858ac81, 0x38308199, 0x380fc8f8, 0x37ea426f,
                0x37bed4f4, 0x379b7475, 0x377d45c3, 0x374e51f5, 0x3728126b, 0x3708ea0f, 0x36df10c4,
                0x36b5b687, 0x369406cb, 0x36712b80, 0x36447610, 0x36200a69, 0x36025f34, 0x35d46808,
                0x35ad07a7, 0x358cf400, 0x3565a54d, 0x353b12c7, 0x351864a7, 0x34f848c2, 0x34ca41b0,
                0x34a4c2ff,
            ],
        ),
        (
            96,
            12345.5,
            Some(llama3(3.0, 0.5, 3.0, 1000.0)),
            &[
                0x3f800000, 0x3f5260c0, 0x3f2ce2e1, 0x3f0e1374, 0x3ee9834d, 0x3ebfe5f7, 0x3e9db32b,
                0x3e819894, 0x3e550048, 0x3e2f0abc, 0x3e0fd8f6, 0x3dec6cad, 0x3dc24a81, 0x3d9faa8c,
                0x3d833640, 0x3d57a82f, 0x3d313977, 0x3d11a420, 0x3cef5f5a, 0x3cc4b6af, 0x3ca1a835,
                0x3c6c01f2, 0x3c272abc, 0x3bee9437, 0x3baba1ee, 0x3b791891, 0x3b366bca, 0x3b06dcee,
                0x3ac95509, 0x3a97b9c7, 0x3a723a91, 0x3a470f9b, 0x3a239604, 0x3a066ee5, 0x39dcf38f,
                0x39b59348, 0x39953773, 0x39753fc7, 0x39498afc, 0x3925a031, 0x39081c03, 0x38dfb4d1,
                0x38b7d6e3, 0x389713c3, 0x38784e97, 0x384c0e53, 0x3827b0e1, 0x3809ce76,
            ],
        ),
    ];
    for (d, theta, scaling, want) in cases {
        let got = rope_inv_freq(*d, *theta, scaling.as_ref());
        assert_eq!(got.len(), d / 2, "d={d}: length");
        for (i, (g, &w)) in got.iter().zip(want.iter()).enumerate() {
            assert_eq!(
                g.to_bits(),
                w,
                "d={d} theta={theta} {scaling:?}: inv_freq[{i}] = {g:e}, transformers {:e}",
                f32::from_bits(w)
            );
        }
    }
}

#[test]
fn rope_launchers_reject_bad_shapes() {
    let Some(gpu) = gpu() else { return };
    let (m, h, d) = (3, 2, 8);
    let x = gpu.alloc("x", (m * h * d * 4) as u64).unwrap();
    let pos = gpu.alloc("pos", (m * 4) as u64).unwrap();
    let f = gpu.alloc("inv_freq", (d / 2 * 4) as u64).unwrap();
    let short_pos = gpu.alloc("pos", ((m - 1) * 4) as u64).unwrap();
    let is_shape = |e: Result<(), GpuError>| matches!(e, Err(GpuError::Shape { .. }));
    let mut enc = gpu.encoder();
    assert!(
        is_shape(nn::rope_fwd(&mut enc, &x, &pos, &f, m, h, 7)),
        "odd d"
    );
    assert!(
        is_shape(nn::rope_fwd(&mut enc, &x, &pos, &f, m, h, 0)),
        "d = 0"
    );
    assert!(
        is_shape(nn::rope_fwd(&mut enc, &x, &pos, &f, m, h + 1, d)),
        "short x"
    );
    assert!(
        is_shape(nn::rope_fwd(&mut enc, &x, &pos, &f, m, h, 2 * d)),
        "short inv_freq"
    );
    assert!(
        is_shape(nn::rope_bwd(&mut enc, &x, &short_pos, &f, m, h, d)),
        "short pos"
    );
    assert!(
        is_shape(nn::rope_bwd(&mut enc, &x, &x, &f, m, h, d)),
        "x aliases pos"
    );
    assert!(nn::rope_fwd(&mut enc, &x, &pos, &f, m, h, d).is_ok());
    assert!(nn::rope_bwd(&mut enc, &x, &pos, &f, m, h, d).is_ok());
    enc.submit();
    gpu.sync().unwrap();
}
