//! LoRA adapter launchers (PEFT semantics): `shaders/lora/adapter_fwd.wgsl` and `shaders/lora/adapter_bwd.wgsl`.
//!
//! Shapes (f32, row-major): `x[M,K]`, `a[R,K]` (`lora_A.weight`), `b[N,R]` (`lora_B.weight`),
//! `h[M,R] = x · aᵀ`, `y[M,N]`, and `scale = alpha / R` (or `alpha / sqrt(R)` with rsLoRA; the
//! caller passes the final value). Reference: `tinytune_reference::lora`.
//!
//! Each op is several dispatches of separate entry points of one WGSL file (`stage_*`), recorded
//! in order into the caller's encoder.

use super::{check_distinct, check_f32, check_u32, groups_for, mul};
use crate::device::{Encoder, GpuBuffer};
use crate::error::{shape_err, Result};
use crate::kernels::KernelSet;
use crate::params::LoraParams;

/// Workgroup size of every LoRA kernel; each invocation computes a 4 x 4 output tile.
const WG: u64 = 64;

/// Rows of `x` per split of the GPU variant's split weight-gradient kernels (`split_db`,
/// `split_da`); with at most this many rows the single-pass kernels run.
const SPLIT_ROWS: usize = 64;

/// Invocations for an `rows x cols` output in 4 x 4 tiles.
fn tiles(rows: usize, cols: usize) -> u64 {
    rows.div_ceil(4) as u64 * cols.div_ceil(4) as u64
}

fn check_dims(kernel: &str, m: usize, k: usize, n: usize, r: usize) -> Result<()> {
    if m == 0 || k == 0 || n == 0 || r == 0 {
        return Err(shape_err(
            kernel,
            format!("empty shape m={m} k={k} n={n} r={r}"),
        ));
    }
    for (name, count) in [
        ("M*K", m.checked_mul(k)),
        ("M*N", m.checked_mul(n)),
        ("R*K", r.checked_mul(k)),
        ("N*R", n.checked_mul(r)),
        ("M*R", m.checked_mul(r)),
    ] {
        if count.is_none_or(|c| c > u32::MAX as usize) {
            return Err(shape_err(
                kernel,
                format!(
                    "{name} elements exceed the 2^32 a kernel indexes (m={m} k={k} n={n} r={r})"
                ),
            ));
        }
    }
    // Tile counts stay below 2^32 because each is at most (M+3)/4 * (K+3)/4 etc.
    Ok(())
}

/// The shape of one LoRA adapter call: `m` rows, `k` inputs, `n` outputs, rank `r`, and its
/// `scale` (PEFT's `lora_alpha / r`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LoraShape {
    pub m: usize,
    pub k: usize,
    pub n: usize,
    pub r: usize,
    pub scale: f32,
}

fn params(s: LoraShape) -> LoraParams {
    let LoraShape { m, k, n, r, scale } = s;
    LoraParams {
        m: m as u32,
        k: k as u32,
        n: n as u32,
        r: r as u32,
        scale,
        ..Default::default()
    }
}

/// LoRA forward: writes `h = x · aᵀ` (`[M,R]`, kept for [`adapter_bwd`]) and accumulates
/// `y += scale · h · bᵀ` into `y` (`[M,N]`, typically already holding the base layer's output).
/// Two dispatches of `lora/adapter_fwd` (`stage_h`, then `stage_y`).
///
/// Errors with [`crate::GpuError::Shape`] on an empty shape, a buffer shorter than its shape,
/// more than 2^32 elements in one operand, or `h`/`y` aliasing another operand.
pub fn adapter_fwd(
    enc: &mut Encoder,
    x: &GpuBuffer,
    a: &GpuBuffer,
    b: &GpuBuffer,
    h: &GpuBuffer,
    y: &GpuBuffer,
    s: LoraShape,
) -> Result<()> {
    const K: &str = "lora/adapter_fwd";
    let LoraShape { m, k, n, r, .. } = s;
    check_dims(K, m, k, n, r)?;
    check_f32(K, "x", x, &[m, k])?;
    check_f32(K, "a", a, &[r, k])?;
    check_f32(K, "b", b, &[n, r])?;
    check_f32(K, "h", h, &[m, r])?;
    check_f32(K, "y", y, &[m, n])?;
    check_distinct(K, &[("h", h), ("y", y)], &[("x", x), ("a", a), ("b", b)])?;
    let gpu = enc.gpu;
    let pr = params(s);
    let kh = gpu.kernel(K, "stage_h", &[])?;
    enc.dispatch(&kh, &pr, &[x, a, h], groups_for(gpu, tiles(m, r), WG))?;
    let ky = gpu.kernel(K, "stage_y", &[])?;
    enc.dispatch(&ky, &pr, &[h, b, y], groups_for(gpu, tiles(m, n), WG))
}

/// LoRA backward for the upstream gradient `dy[M,N]`, given the forward's `x`, saved `h`, `a`, `b`:
///
/// - `dh_scratch[M,R] = scale · dy · b` (overwritten; caller-provided so one scratch buffer of
///   the largest `M*R` can serve every adapter; it holds `dh` afterwards),
/// - `db[N,R] += scale · dyᵀ · h`,
/// - `da[R,K] += dhᵀ · x`,
/// - `dx[M,K] += dh · a`.
///
/// `da`, `db` and `dx` **accumulate**: zero them before the first micro-batch (gradient
/// accumulation), and let the frozen base weight add its share of `dx` before or after.
/// Four dispatches of `lora/adapter_bwd` (`stage_dh`, `stage_db`, `stage_da`, `stage_dx`); with
/// the GPU kernel variant and more than 64 rows, `stage_db` and `stage_da` are each a split pass
/// over 64-row slices and a reduction (`split_db` / `split_da`, then `reduce`), so that the
/// weight gradients run on many workgroups.
///
/// Errors with [`crate::GpuError::Shape`] on an empty shape, a buffer shorter than its shape,
/// more than 2^32 elements in one operand, or an output aliasing another operand.
#[allow(clippy::too_many_arguments)]
pub fn adapter_bwd(
    enc: &mut Encoder,
    x: &GpuBuffer,
    h: &GpuBuffer,
    dy: &GpuBuffer,
    a: &GpuBuffer,
    b: &GpuBuffer,
    da: &GpuBuffer,
    db: &GpuBuffer,
    dx: &GpuBuffer,
    dh_scratch: &GpuBuffer,
    s: LoraShape,
) -> Result<()> {
    const K: &str = "lora/adapter_bwd";
    let LoraShape { m, k, n, r, .. } = s;
    check_dims(K, m, k, n, r)?;
    check_f32(K, "x", x, &[m, k])?;
    check_f32(K, "h", h, &[m, r])?;
    check_f32(K, "dy", dy, &[m, n])?;
    check_f32(K, "a", a, &[r, k])?;
    check_f32(K, "b", b, &[n, r])?;
    check_f32(K, "da", da, &[r, k])?;
    check_f32(K, "db", db, &[n, r])?;
    check_f32(K, "dx", dx, &[m, k])?;
    check_f32(K, "dh_scratch", dh_scratch, &[m, r])?;
    check_distinct(
        K,
        &[
            ("da", da),
            ("db", db),
            ("dx", dx),
            ("dh_scratch", dh_scratch),
        ],
        &[("x", x), ("h", h), ("dy", dy), ("a", a), ("b", b)],
    )?;
    let gpu = enc.gpu;
    let pr = params(s);
    let k_dh = gpu.kernel(K, "stage_dh", &[])?;
    enc.dispatch(
        &k_dh,
        &pr,
        &[dy, b, dh_scratch],
        groups_for(gpu, tiles(m, r), WG),
    )?;
    if gpu.kernels() == KernelSet::Gpu && m > SPLIT_ROWS {
        // Split over the rows, then reduce (see the kernel's `split_db`).
        let nsplit = m.div_ceil(SPLIT_ROWS);
        for (entry, ins, grad, len, ntiles) in [
            ("split_db", [dy, h], db, n * r, tiles(n, r)),
            ("split_da", [dh_scratch, x], da, r * k, tiles(r, k)),
        ] {
            let sp = LoraParams {
                mc: SPLIT_ROWS as u32,
                nsplit: nsplit as u32,
                len: len as u32,
                ..pr
            };
            check_u32(
                K,
                &[
                    ("partials", mul(nsplit, len)),
                    ("split grid", ntiles * nsplit as u64),
                ],
            )?;
            let part = gpu.scratch("lora partials", mul(nsplit, len) * 4)?;
            let ks = gpu.kernel(K, entry, &[])?;
            enc.dispatch(
                &ks,
                &sp,
                &[ins[0], ins[1], &part],
                groups_for(gpu, ntiles * nsplit as u64, WG),
            )?;
            let kr = gpu.kernel(K, "reduce", &[])?;
            enc.dispatch(&kr, &sp, &[&part, grad], groups_for(gpu, len as u64, WG))?;
        }
    } else {
        let k_db = gpu.kernel(K, "stage_db", &[])?;
        enc.dispatch(&k_db, &pr, &[dy, h, db], groups_for(gpu, tiles(n, r), WG))?;
        let k_da = gpu.kernel(K, "stage_da", &[])?;
        enc.dispatch(
            &k_da,
            &pr,
            &[dh_scratch, x, da],
            groups_for(gpu, tiles(r, k), WG),
        )?;
    }
    let k_dx = gpu.kernel(K, "stage_dx", &[])?;
    enc.dispatch(
        &k_dx,
        &pr,
        &[dh_scratch, a, dx],
        groups_for(gpu, tiles(m, k), WG),
    )
}
