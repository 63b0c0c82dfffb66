//! Softmax cross-entropy launchers over LM-head logits (HF causal-LM loss):
//! `shaders/nn/cross_entropy_fwd.wgsl` and `shaders/nn/cross_entropy_bwd.wgsl`.
//! Reference: `tinytune_reference::nn::cross_entropy_fwd` and
//! `tinytune_reference::nn::cross_entropy_bwd`.
//!
//! `logits[M, V]` f32, `targets[M]` i32. A row is *ignored* when its target is [`IGNORE_INDEX`]
//! (-100) or, unlike torch (which raises), any other value outside `[0, V)`: zero loss, not
//! counted, zero gradient, and the target is never used as an index. Typical step:
//! `cross_entropy_fwd(.., Some(&total))`, read `total` (or not), then
//! `cross_entropy_bwd(.., scale = 1 / count)` which turns the logits into their gradient in place.

/// The target value that marks a row as ignored (torch's default `ignore_index`).
pub const IGNORE_INDEX: i32 = -100;

use crate::device::{groups_1d, Encoder, GpuBuffer};
use crate::error::{shape_err, Result};
use crate::ops::{check_distinct, check_f32, check_u32, mul};
use crate::params::{CrossEntropyBwdParams, CrossEntropyFwdParams};

fn check_dims(
    kernel: &str,
    logits: &GpuBuffer,
    targets: &GpuBuffer,
    m: usize,
    v: usize,
) -> Result<()> {
    check_u32(kernel, &[("logits", mul(m, v))])?;
    if m > 0 && v == 0 {
        return Err(shape_err(kernel, format!("empty vocabulary for {m} rows")));
    }
    check_f32(kernel, "logits", logits, &[m, v])?;
    // i32 targets: the same 4 bytes per element as f32.
    if targets.len < 4 * m as u64 {
        return Err(shape_err(
            kernel,
            format!(
                "targets ({m}) i32 needs {} bytes, buffer {:?} holds {}",
                4 * m as u64,
                targets.label,
                targets.len
            ),
        ));
    }
    Ok(())
}

/// Cross-entropy forward, one workgroup per row (`main` of `nn/cross_entropy_fwd`): writes
/// `lse[r] = logsumexp(logits[r, :])` (saved for [`cross_entropy_bwd`]) and
/// `loss_rows[r] = lse[r] - logits[r, targets[r]]`, both 0 for ignored rows.
///
/// With `total = Some(buf)` (3 f32), a second one-workgroup dispatch (`stage_sum`) writes
/// `buf = [sum of loss_rows over counted rows, count, sum / count]`: `buf[2]` is the HF loss
/// (`F.cross_entropy(..., ignore_index=-100)`), `buf[1]` the number of counted rows (exact up to
/// 2^24), and `buf[2] = 0` when no row is counted (torch gives NaN; `m = 0` writes `[0, 0, 0]`).
///
/// Errors with [`crate::GpuError::Shape`] if a buffer is shorter than its shape, `m * v` overflows
/// u32 indexing, `v = 0` with rows, or an output is another operand.
#[allow(clippy::too_many_arguments)]
pub fn cross_entropy_fwd(
    enc: &mut Encoder,
    logits: &GpuBuffer,
    targets: &GpuBuffer,
    loss_rows: &GpuBuffer,
    lse: &GpuBuffer,
    m: usize,
    v: usize,
    total: Option<&GpuBuffer>,
) -> Result<()> {
    const K: &str = "nn/cross_entropy_fwd";
    check_dims(K, logits, targets, m, v)?;
    check_f32(K, "loss_rows", loss_rows, &[m])?;
    check_f32(K, "lse", lse, &[m])?;
    let inputs = [("logits", logits), ("targets", targets)];
    check_distinct(K, &[("loss_rows", loss_rows), ("lse", lse)], &inputs)?;
    if let Some(t) = total {
        check_f32(K, "total", t, &[3])?;
        check_distinct(
            K,
            &[("total", t)],
            &[("loss_rows", loss_rows), ("lse", lse), inputs[0], inputs[1]],
        )?;
    }
    let gpu = enc.gpu;
    let params = CrossEntropyFwdParams {
        m: m as u32,
        v: v as u32,
        ..Default::default()
    };
    if m > 0 {
        let kr = gpu.kernel(K, "main", &[])?;
        enc.dispatch(
            &kr,
            &params,
            &[logits, targets, loss_rows, lse],
            groups_1d(gpu, m as u64),
        )?;
    }
    if let Some(t) = total {
        let ks = gpu.kernel(K, "stage_sum", &[])?;
        enc.dispatch(&ks, &params, &[loss_rows, targets, t], [1, 1, 1])?;
    }
    Ok(())
}

/// Cross-entropy backward **in place**: overwrites `logits[M, V]` with
/// `dlogits[r, j] = (exp(logits[r, j] - lse[r]) - [j == targets[r]]) * scale` for counted rows
/// and 0 for ignored rows, one workgroup per row (`nn/cross_entropy_bwd`). `lse` must come from
/// [`cross_entropy_fwd`] on the same logits; `scale` is the gradient of the loss with respect to
/// each row's loss (`1 / count` for the mean loss, times any upstream factor). `m = 0` records
/// nothing.
///
/// Errors with [`crate::GpuError::Shape`] if a buffer is shorter than its shape, `m * v` overflows
/// u32 indexing, `v = 0` with rows, or `logits` is also `targets` or `lse`.
pub fn cross_entropy_bwd(
    enc: &mut Encoder,
    logits: &GpuBuffer,
    targets: &GpuBuffer,
    lse: &GpuBuffer,
    m: usize,
    v: usize,
    scale: f32,
) -> Result<()> {
    const K: &str = "nn/cross_entropy_bwd";
    check_dims(K, logits, targets, m, v)?;
    check_f32(K, "lse", lse, &[m])?;
    check_distinct(
        K,
        &[("logits", logits)],
        &[("targets", targets), ("lse", lse)],
    )?;
    if m == 0 {
        return Ok(());
    }
    let gpu = enc.gpu;
    let kern = gpu.kernel(K, "main", &[])?;
    enc.dispatch(
        &kern,
        &CrossEntropyBwdParams {
            m: m as u32,
            v: v as u32,
            scale,
            ..Default::default()
        },
        &[logits, targets, lse],
        groups_1d(gpu, m as u64),
    )
}
