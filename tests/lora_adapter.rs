//! LoRA forward/backward kernels against the CPU reference, and the reference backward against
//! finite differences of the reference forward.

mod common;

use common::{assert_close, for_each_kernels, Rng};
use tinytune::gpu::ops::lora;
use tinytune::gpu::{Gpu, GpuBuffer, GpuError};
use tinytune::reference::lora as rlora;

/// |gpu - ref| <= atol + rtol * |ref| for `lora/adapter_fwd` (same summation order as the reference; the
/// margin covers a driver contracting mul+add into fma).
const FWD_ATOL: f32 = 2e-5;
const FWD_RTOL: f32 = 1e-5;
/// Same for `lora/adapter_bwd`.
const BWD_ATOL: f32 = 2e-5;
const BWD_RTOL: f32 = 1e-5;

/// (M, K, N, R): M = 1, odd N, K not a multiple of 4 (the tile) or of 64 (the workgroup), R = 1,
/// 8, 17 (partial rank tile), 64 and 256, and enough tiles for several workgroups; M over 64 (the
/// GPU variant's split size), with a partial last split, so its split weight gradients run.
const SHAPES: &[(usize, usize, usize, usize)] = &[
    (150, 45, 23, 8),
    (129, 64, 70, 16),
    (1, 37, 5, 1),
    (1, 130, 67, 8),
    (3, 33, 17, 17),
    (5, 7, 3, 8),
    (13, 101, 29, 17),
    (37, 66, 131, 8),
    (2, 19, 9, 64),
    (6, 10, 7, 256),
];

struct Data {
    x: Vec<f32>,
    a: Vec<f32>,
    b: Vec<f32>,
    scale: f32,
}

/// Activations ~N(0,1), A and B scaled so that H and Y stay O(1), alpha = 16.
fn data(rng: &mut Rng, m: usize, k: usize, n: usize, r: usize) -> Data {
    Data {
        x: rng.vec(m * k, 1.0),
        a: rng.vec(r * k, 1.0 / (k as f32).sqrt()),
        b: rng.vec(n * r, 1.0 / (r as f32).sqrt()),
        scale: 16.0 / r as f32,
    }
}

fn add(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter().zip(b).map(|(x, y)| x + y).collect()
}

fn up(gpu: &Gpu, label: &str, v: &[f32]) -> GpuBuffer {
    gpu.upload(label, v).unwrap()
}

#[test]
fn adapter_fwd_matches_reference() {
    for_each_kernels(|gpu| {
        for (si, &(m, k, n, r)) in SHAPES.iter().enumerate() {
            let mut rng = Rng::new(100 + si as u64);
            let d = data(&mut rng, m, k, n, r);
            // y already holds the base layer's output: the adapter must add to it.
            let y0 = rng.vec(m * n, 1.0);
            let (want_h, y_delta) = rlora::adapter_fwd(&d.x, &d.a, &d.b, m, k, n, r, d.scale);
            let want_y = add(&y0, &y_delta);

            let (xb, ab, bb) = (up(gpu, "x", &d.x), up(gpu, "a", &d.a), up(gpu, "b", &d.b));
            let hb = up(gpu, "h", &vec![f32::NAN; m * r]); // every element must be overwritten
            let yb = up(gpu, "y", &y0);
            let mut enc = gpu.encoder();
            lora::adapter_fwd(
                &mut enc,
                &xb,
                &ab,
                &bb,
                &hb,
                &yb,
                lora::LoraShape {
                    m,
                    k,
                    n,
                    r,
                    scale: d.scale,
                },
            )
            .unwrap();
            enc.submit();
            let tag = format!("lora/adapter_fwd m={m} k={k} n={n} r={r}");
            assert_close(
                &format!("{tag} h"),
                &gpu.read_blocking::<f32>(&hb).unwrap(),
                &want_h,
                FWD_ATOL,
                FWD_RTOL,
            );
            assert_close(
                &format!("{tag} y"),
                &gpu.read_blocking::<f32>(&yb).unwrap(),
                &want_y,
                FWD_ATOL,
                FWD_RTOL,
            );
        }
    });
}

#[test]
fn adapter_bwd_matches_reference() {
    for_each_kernels(|gpu| {
        for (si, &(m, k, n, r)) in SHAPES.iter().enumerate() {
            let mut rng = Rng::new(200 + si as u64);
            let d = data(&mut rng, m, k, n, r);
            let (h, _) = rlora::adapter_fwd(&d.x, &d.a, &d.b, m, k, n, r, d.scale);
            let dy = rng.vec(m * n, 1.0);
            let want = rlora::adapter_bwd(&d.x, &h, &dy, &d.a, &d.b, m, k, n, r, d.scale);
            let want_dh = rlora::dh(&dy, &d.b, m, n, r, d.scale);
            // Nonzero starting gradients: the kernels must accumulate into them.
            let (da0, db0, dx0) = (
                rng.vec(r * k, 1.0),
                rng.vec(n * r, 1.0),
                rng.vec(m * k, 1.0),
            );
            // Run twice for one shape: the second call must add the same gradients again.
            let reps = if si == 2 { 2 } else { 1 };

            let (xb, hb, dyb) = (up(gpu, "x", &d.x), up(gpu, "h", &h), up(gpu, "dy", &dy));
            let (ab, bb) = (up(gpu, "a", &d.a), up(gpu, "b", &d.b));
            let (dab, dbb, dxb) = (
                up(gpu, "da", &da0),
                up(gpu, "db", &db0),
                up(gpu, "dx", &dx0),
            );
            let dhb = up(gpu, "dh", &vec![f32::NAN; m * r]);
            let mut enc = gpu.encoder();
            for _ in 0..reps {
                lora::adapter_bwd(
                    &mut enc,
                    &xb,
                    &hb,
                    &dyb,
                    &ab,
                    &bb,
                    &dab,
                    &dbb,
                    &dxb,
                    &dhb,
                    lora::LoraShape {
                        m,
                        k,
                        n,
                        r,
                        scale: d.scale,
                    },
                )
                .unwrap();
            }
            enc.submit();

            let mut want_da = da0.clone();
            let mut want_db = db0.clone();
            let mut want_dx = dx0.clone();
            for _ in 0..reps {
                want_da = add(&want_da, &want.da);
                want_db = add(&want_db, &want.db);
                want_dx = add(&want_dx, &want.dx);
            }
            let tag = format!("lora/adapter_bwd m={m} k={k} n={n} r={r} x{reps}");
            assert_close(
                &format!("{tag} dh"),
                &gpu.read_blocking::<f32>(&dhb).unwrap(),
                &want_dh,
                BWD_ATOL,
                BWD_RTOL,
            );
            assert_close(
                &format!("{tag} da"),
                &gpu.read_blocking::<f32>(&dab).unwrap(),
                &want_da,
                BWD_ATOL,
                BWD_RTOL,
            );
            assert_close(
                &format!("{tag} db"),
                &gpu.read_blocking::<f32>(&dbb).unwrap(),
                &want_db,
                BWD_ATOL,
                BWD_RTOL,
            );
            assert_close(
                &format!("{tag} dx"),
                &gpu.read_blocking::<f32>(&dxb).unwrap(),
                &want_dx,
                BWD_ATOL,
                BWD_RTOL,
            );
        }
    });
}

/// The reference backward against central differences of the reference forward for
/// `L = Σ G ⊙ y_delta` with random `G` (so `dL/dY = G`). `y_delta = scale · X·Aᵀ·Bᵀ` is linear in
/// each of X, A and B on its own, so a central difference has no truncation error and a large
/// step only leaves f32 rounding of the forward (L is summed in f64).
#[test]
fn adapter_bwd_matches_finite_differences() {
    const STEP: f32 = 0.125; // exact in binary, so x ± STEP is the intended perturbation
    const TOL: f64 = 2e-4;
    for &(m, k, n, r, scale) in &[
        (3usize, 5usize, 4usize, 2usize, 0.75f32),
        (1, 7, 3, 1, 2.0),
        (4, 6, 5, 3, 16.0 / 3f32.sqrt()),
    ] {
        let mut rng = Rng::new(300 + (m * 100 + k * 10 + r) as u64);
        let d = data(&mut rng, m, k, n, r);
        let g = rng.vec(m * n, 1.0);
        let loss = |x: &[f32], a: &[f32], b: &[f32]| -> f64 {
            let (_, y) = rlora::adapter_fwd(x, a, b, m, k, n, r, scale);
            y.iter()
                .zip(&g)
                .map(|(&yi, &gi)| yi as f64 * gi as f64)
                .sum()
        };
        let (h, _) = rlora::adapter_fwd(&d.x, &d.a, &d.b, m, k, n, r, scale);
        let grads = rlora::adapter_bwd(&d.x, &h, &g, &d.a, &d.b, m, k, n, r, scale);
        // Central difference of L in element i of one of the three operands.
        let fd = |which: usize, i: usize| -> f64 {
            let mut ops = [d.x.clone(), d.a.clone(), d.b.clone()];
            ops[which][i] = [&d.x, &d.a, &d.b][which][i] + STEP;
            let lp = loss(&ops[0], &ops[1], &ops[2]);
            ops[which][i] = [&d.x, &d.a, &d.b][which][i] - STEP;
            let lm = loss(&ops[0], &ops[1], &ops[2]);
            (lp - lm) / (2.0 * STEP as f64)
        };
        for (which, name, analytic) in [
            (0, "dx", &grads.dx),
            (1, "da", &grads.da),
            (2, "db", &grads.db),
        ] {
            assert_eq!(
                analytic.len(),
                [m * k, r * k, n * r][which],
                "{name} length"
            );
            for (i, &an) in analytic.iter().enumerate() {
                let num = fd(which, i);
                assert!(
                    (an as f64 - num).abs() <= TOL * (1.0 + num.abs()),
                    "{name}[{i}] m={m} k={k} n={n} r={r}: backward {an} vs finite difference {num}"
                );
            }
        }
    }
}

#[test]
fn lora_launchers_reject_bad_shapes() {
    for_each_kernels(|gpu| {
        let (m, k, n, r) = (2, 8, 4, 2);
        let buf = |label: &str, len: usize| gpu.alloc(label, len as u64 * 4).unwrap();
        let (x, a, b, h, y) = (
            buf("x", m * k),
            buf("a", r * k),
            buf("b", n * r),
            buf("h", m * r),
            buf("y", m * n),
        );
        let (da, db, dx, dh) = (
            buf("da", r * k),
            buf("db", n * r),
            buf("dx", m * k),
            buf("dh", m * r),
        );
        let short = buf("short", m * k - 1);
        let mut enc = gpu.encoder();
        let is_shape = |e: Result<(), GpuError>| matches!(e, Err(GpuError::Shape { .. }));
        assert!(
            is_shape(lora::adapter_fwd(
                &mut enc,
                &short,
                &a,
                &b,
                &h,
                &y,
                lora::LoraShape {
                    m,
                    k,
                    n,
                    r,
                    scale: 1.0
                }
            )),
            "short x"
        );
        assert!(
            is_shape(lora::adapter_fwd(
                &mut enc,
                &x,
                &a,
                &b,
                &h,
                &y,
                lora::LoraShape {
                    m,
                    k,
                    n,
                    r: 0,
                    scale: 1.0
                }
            )),
            "r = 0"
        );
        assert!(
            is_shape(lora::adapter_fwd(
                &mut enc,
                &x,
                &a,
                &b,
                &y,
                &y,
                lora::LoraShape {
                    m,
                    k,
                    n,
                    r,
                    scale: 1.0
                }
            )),
            "h aliases y"
        );
        assert!(
            is_shape(lora::adapter_bwd(
                &mut enc,
                &x,
                &h,
                &y,
                &a,
                &b,
                &da,
                &db,
                &short,
                &dh,
                lora::LoraShape {
                    m,
                    k,
                    n,
                    r,
                    scale: 1.0
                }
            )),
            "short dx"
        );
        assert!(
            is_shape(lora::adapter_bwd(
                &mut enc,
                &x,
                &h,
                &y,
                &a,
                &b,
                &da,
                &db,
                &dx,
                &da,
                lora::LoraShape {
                    m,
                    k,
                    n,
                    r,
                    scale: 1.0
                }
            )),
            "scratch aliases da"
        );
        assert!(lora::adapter_fwd(
            &mut enc,
            &x,
            &a,
            &b,
            &h,
            &y,
            lora::LoraShape {
                m,
                k,
                n,
                r,
                scale: 1.0
            }
        )
        .is_ok());
        assert!(lora::adapter_bwd(
            &mut enc,
            &x,
            &h,
            &y,
            &a,
            &b,
            &da,
            &db,
            &dx,
            &dh,
            lora::LoraShape {
                m,
                k,
                n,
                r,
                scale: 1.0
            }
        )
        .is_ok());
        enc.submit();
        gpu.sync().unwrap();
    });
}
