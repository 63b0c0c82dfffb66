//! Prefix tuning's key/value prefixes (PEFT `PREFIX_TUNING`): `shaders/nn/prefix_fwd.wgsl` and
//! `shaders/nn/prefix_bwd.wgsl`. Reference: [`tinytune_reference::nn::prefix_fwd`] /
//! [`tinytune_reference::nn::prefix_bwd`].
//!
//! The prefix is PEFT's `prompt_embeddings` `[P, L*2*KVD]` (`KVD = KVH*D`): row `j` holds virtual
//! token `j`'s key and value of every layer (layer `l`'s keys at columns `l*2*KVD..`, its values
//! right after). The prefixed operands `[B*(P+T), KVD]` feed [`super::attention_fwd`] with
//! `Tk = P + T`, whose causal mask lets every query see the whole prefix.

use crate::device::{Encoder, GpuBuffer};
use crate::error::{shape_err, Result};
use crate::ops::{check_distinct, check_f32, check_u32, groups_for, mul};

const WG: u64 = 64;

/// Shape checks shared by both passes; returns the prefix row length `L*2*KVD`.
fn check_dims(kernel: &str, layer: usize, n_layers: usize, p: usize, kvd: usize) -> Result<usize> {
    if layer >= n_layers {
        return Err(shape_err(
            kernel,
            format!("layer {layer} of a {n_layers}-layer prefix"),
        ));
    }
    if p == 0 || kvd == 0 {
        return Err(shape_err(
            kernel,
            format!("P = {p} virtual tokens and KVD = {kvd} must be positive"),
        ));
    }
    Ok(n_layers * 2 * kvd)
}

#[allow(clippy::too_many_arguments)]
fn params(
    b: usize,
    t: usize,
    p: usize,
    kvd: usize,
    stride: usize,
    layer: usize,
    n: u64,
) -> [u32; 8] {
    [
        b as u32,
        t as u32,
        p as u32,
        kvd as u32,
        stride as u32,
        (layer * 2 * kvd) as u32,
        n as u32,
        0,
    ]
}

/// Forward (`nn/prefix_fwd`): **overwrites** `kf` and `vf` (`[B*(P+T), KVD]`) with, per sequence,
/// layer `layer`'s `P` key (value) rows of `prefix` (`[P, n_layers*2*KVD]`) followed by the
/// sequence's `T` rows of `k` (`v`) (`[B*T, KVD]`). One dispatch; `B == 0` records nothing.
///
/// Errors with [`crate::GpuError::Shape`] if `layer >= n_layers`, `P` or `KVD` is 0, a buffer is
/// smaller than its shape, a count overflows u32 indexing, or `kf`/`vf` alias another operand.
#[allow(clippy::too_many_arguments)]
pub fn prefix_fwd(
    enc: &mut Encoder,
    prefix: &GpuBuffer,
    k: &GpuBuffer,
    v: &GpuBuffer,
    kf: &GpuBuffer,
    vf: &GpuBuffer,
    layer: usize,
    n_layers: usize,
    b: usize,
    t: usize,
    p: usize,
    kvd: usize,
) -> Result<()> {
    const K: &str = "nn/prefix_fwd";
    let stride = check_dims(K, layer, n_layers, p, kvd)?;
    let n = mul(mul(b, p + t) as usize, kvd);
    check_u32(K, &[("kf", n), ("prefix", mul(p, stride))])?;
    check_f32(K, "prefix", prefix, &[p, stride])?;
    check_f32(K, "k", k, &[b * t, kvd])?;
    check_f32(K, "v", v, &[b * t, kvd])?;
    check_f32(K, "kf", kf, &[b * (p + t), kvd])?;
    check_f32(K, "vf", vf, &[b * (p + t), kvd])?;
    check_distinct(
        K,
        &[("kf", kf), ("vf", vf)],
        &[("prefix", prefix), ("k", k), ("v", v)],
    )?;
    if n == 0 {
        return Ok(());
    }
    let gpu = enc.gpu;
    let kern = gpu.kernel(K, "main", &[])?;
    enc.dispatch(
        &kern,
        &params(b, t, p, kvd, stride, layer, n),
        &[prefix, k, v, kf, vf],
        groups_for(gpu, n, WG),
    )
}

/// Backward (`nn/prefix_bwd`) for the gradients `dkf`, `dvf` (`[B*(P+T), KVD]`) of
/// [`prefix_fwd`]'s outputs: **overwrites** `dk`, `dv` (`[B*T, KVD]`) with the real tokens' rows
/// and **adds** the prefix rows, summed over the batch, into layer `layer`'s columns of `grad`
/// (`[P, n_layers*2*KVD]`). One dispatch; deterministic (no atomics).
///
/// Errors with [`crate::GpuError::Shape`] like [`prefix_fwd`], or if the outputs alias each other
/// or an input.
#[allow(clippy::too_many_arguments)]
pub fn prefix_bwd(
    enc: &mut Encoder,
    dkf: &GpuBuffer,
    dvf: &GpuBuffer,
    dk: &GpuBuffer,
    dv: &GpuBuffer,
    grad: &GpuBuffer,
    layer: usize,
    n_layers: usize,
    b: usize,
    t: usize,
    p: usize,
    kvd: usize,
) -> Result<()> {
    const K: &str = "nn/prefix_bwd";
    let stride = check_dims(K, layer, n_layers, p, kvd)?;
    let n = mul(mul(b, t) as usize + p, kvd);
    check_u32(
        K,
        &[
            ("dkf", mul(mul(b, p + t) as usize, kvd)),
            ("grad", mul(p, stride)),
            ("work", n),
        ],
    )?;
    check_f32(K, "dkf", dkf, &[b * (p + t), kvd])?;
    check_f32(K, "dvf", dvf, &[b * (p + t), kvd])?;
    check_f32(K, "dk", dk, &[b * t, kvd])?;
    check_f32(K, "dv", dv, &[b * t, kvd])?;
    check_f32(K, "grad", grad, &[p, stride])?;
    check_distinct(
        K,
        &[("dk", dk), ("dv", dv), ("grad", grad)],
        &[("dkf", dkf), ("dvf", dvf)],
    )?;
    if b == 0 {
        return Ok(());
    }
    let gpu = enc.gpu;
    let kern = gpu.kernel(K, "main", &[])?;
    enc.dispatch(
        &kern,
        &params(b, t, p, kvd, stride, layer, n),
        &[dkf, dvf, dk, dv, grad],
        groups_for(gpu, n, WG),
    )
}
