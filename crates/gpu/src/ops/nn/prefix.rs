//! Prefix tuning's key/value prefixes (PEFT `PREFIX_TUNING`): `shaders/nn/prefix_fwd.wgsl` and
//! `shaders/nn/prefix_bwd.wgsl`. Reference: `tinytune_reference::nn::prefix_fwd` /
//! `tinytune_reference::nn::prefix_bwd`.
//!
//! The prefix is PEFT's `prompt_embeddings` `[P, L*2*KVD]` (`KVD = KVH*D`): row `j` holds virtual
//! token `j`'s key and value of every layer (layer `l`'s keys at columns `l*2*KVD..`, its values
//! right after). The prefixed operands `[B*(P+T), KVD]` feed [`super::attention_fwd`] with
//! `Tk = P + T`, whose causal mask lets every query see the whole prefix.

use crate::device::{Encoder, GpuBuffer};
use crate::error::{shape_err, Result};
use crate::ops::{check_distinct, check_f32, check_u32, groups_for, mul};
use crate::params::{PrefixParams, PrefixProjParams};

const WG: u64 = 64;

/// Which layer of a prefix and the shapes of [`prefix_fwd`] / [`prefix_bwd`]: layer `layer` of
/// an `n_layers`-layer prefix of `p` virtual tokens, `b` sequences of `t` real tokens, key/value
/// width `kvd` (`KVH*D`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrefixShape {
    pub layer: usize,
    pub n_layers: usize,
    pub b: usize,
    pub t: usize,
    pub p: usize,
    pub kvd: usize,
}

/// The shape of [`prefix_proj_fwd`] / [`prefix_proj_bwd`]: `p` virtual tokens of width `t`,
/// hidden size `e`, output width `n`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrefixProjShape {
    pub p: usize,
    pub t: usize,
    pub e: usize,
    pub n: usize,
}

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

fn params(
    b: usize,
    t: usize,
    p: usize,
    kvd: usize,
    stride: usize,
    layer: usize,
    n: u64,
) -> PrefixParams {
    PrefixParams {
        b: b as u32,
        t: t as u32,
        p: p as u32,
        kvd: kvd as u32,
        stride: stride as u32,
        col: (layer * 2 * kvd) as u32,
        n: n as u32,
        ..Default::default()
    }
}

/// Forward (`nn/prefix_fwd`): **overwrites** `kf` and `vf` (`[B*(P+T), KVD]`) with, per sequence,
/// layer `layer`'s `P` key (value) rows of `prefix` (`[P, n_layers*2*KVD]`) followed by the
/// sequence's `T` rows of `k` (`v`) (`[B*T, KVD]`). One dispatch; `B == 0` records nothing.
///
/// Errors with [`crate::GpuError::Shape`] if `layer >= n_layers`, `P` or `KVD` is 0, a buffer is
/// smaller than its shape, a count overflows u32 indexing, or `kf`/`vf` alias another operand.
pub fn prefix_fwd(
    enc: &mut Encoder,
    prefix: &GpuBuffer,
    k: &GpuBuffer,
    v: &GpuBuffer,
    kf: &GpuBuffer,
    vf: &GpuBuffer,
    s: PrefixShape,
) -> Result<()> {
    const K: &str = "nn/prefix_fwd";
    let PrefixShape {
        layer,
        n_layers,
        b,
        t,
        p,
        kvd,
    } = s;
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
pub fn prefix_bwd(
    enc: &mut Encoder,
    dkf: &GpuBuffer,
    dvf: &GpuBuffer,
    dk: &GpuBuffer,
    dv: &GpuBuffer,
    grad: &GpuBuffer,
    s: PrefixShape,
) -> Result<()> {
    const K: &str = "nn/prefix_bwd";
    let PrefixShape {
        layer,
        n_layers,
        b,
        t,
        p,
        kvd,
    } = s;
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

/// The `Params` of the projection kernels: `p, t, e, n` and the offsets of `w1, b1, w2,
/// b2` in the flat parameters.
fn proj_params(p: usize, t: usize, e: usize, n: usize) -> PrefixProjParams {
    let w1 = p * t;
    let b1 = w1 + e * t;
    let w2 = b1 + e;
    let b2 = w2 + n * e;
    PrefixProjParams {
        p: p as u32,
        t: t as u32,
        e: e as u32,
        n: n as u32,
        w1: w1 as u32,
        b1: b1 as u32,
        w2: w2 as u32,
        b2: b2 as u32,
    }
}

/// Checks the projection's shapes; returns the number of flat parameters.
fn check_proj(kernel: &str, p: usize, t: usize, e: usize, n: usize) -> Result<usize> {
    if p == 0 || t == 0 || e == 0 || n == 0 {
        return Err(shape_err(
            kernel,
            format!("P = {p}, t = {t}, e = {e}, n = {n} must be positive"),
        ));
    }
    let len = mul(p, t) + mul(e, t) + e as u64 + mul(n, e) + n as u64;
    check_u32(kernel, &[("params", len), ("kv", mul(p, n))])?;
    Ok(len as usize)
}

/// Prefix projection forward (`nn/prefix_proj_fwd`, PEFT's `prefix_projection=True`): from the
/// flat `params` `[embedding (P, t) | w1 (e, t) | b1 (e) | w2 (n, e) | b2 (n)]` (PEFT's parameter
/// order), **overwrites** `h = tanh(embedding · w1ᵀ + b1)` `[P, e]` and the prefix
/// `kv = h · w2ᵀ + b2` `[P, n]`. Two dispatches. Reference:
/// `tinytune_reference::nn::prefix_proj_fwd`.
///
/// Errors with [`crate::GpuError::Shape`] if a dimension is 0, a buffer is smaller than its
/// shape, a count overflows u32 indexing, or the outputs alias each other or `params`.
pub fn prefix_proj_fwd(
    enc: &mut Encoder,
    params: &GpuBuffer,
    h: &GpuBuffer,
    kv: &GpuBuffer,
    s: PrefixProjShape,
) -> Result<()> {
    const K: &str = "nn/prefix_proj_fwd";
    let PrefixProjShape { p, t, e, n } = s;
    let len = check_proj(K, p, t, e, n)?;
    check_f32(K, "params", params, &[len])?;
    check_f32(K, "h", h, &[p, e])?;
    check_f32(K, "kv", kv, &[p, n])?;
    check_distinct(K, &[("h", h), ("kv", kv)], &[("params", params)])?;
    let gpu = enc.gpu;
    let u = proj_params(p, t, e, n);
    let kern = gpu.kernel(K, "hidden", &[])?;
    enc.dispatch(&kern, &u, &[params, h], groups_for(gpu, mul(p, e), WG))?;
    let kern = gpu.kernel(K, "out", &[])?;
    enc.dispatch(&kern, &u, &[params, h, kv], groups_for(gpu, mul(p, n), WG))
}

/// Prefix projection backward (`nn/prefix_proj_bwd`) for the prefix gradient `dkv` `[P, n]`,
/// given the forward's `h`: **overwrites** `grads` (the layout of `params`) with the gradient of
/// every parameter, using `dpre` `[P, e]` as scratch. Three dispatches. Reference:
/// `tinytune_reference::nn::prefix_proj_bwd`.
///
/// Errors with [`crate::GpuError::Shape`] like [`prefix_proj_fwd`], or if `dpre`/`grads` alias
/// each other or an input.
pub fn prefix_proj_bwd(
    enc: &mut Encoder,
    params: &GpuBuffer,
    h: &GpuBuffer,
    dkv: &GpuBuffer,
    dpre: &GpuBuffer,
    grads: &GpuBuffer,
    s: PrefixProjShape,
) -> Result<()> {
    const K: &str = "nn/prefix_proj_bwd";
    let PrefixProjShape { p, t, e, n } = s;
    let len = check_proj(K, p, t, e, n)?;
    check_f32(K, "params", params, &[len])?;
    check_f32(K, "h", h, &[p, e])?;
    check_f32(K, "dkv", dkv, &[p, n])?;
    check_f32(K, "dpre", dpre, &[p, e])?;
    check_f32(K, "grads", grads, &[len])?;
    check_distinct(
        K,
        &[("dpre", dpre), ("grads", grads)],
        &[("params", params), ("h", h), ("dkv", dkv)],
    )?;
    let gpu = enc.gpu;
    let u = proj_params(p, t, e, n);
    let kern = gpu.kernel(K, "w2", &[])?;
    enc.dispatch(
        &kern,
        &u,
        &[dkv, h, grads],
        groups_for(gpu, mul(n, e) + n as u64, WG),
    )?;
    let kern = gpu.kernel(K, "dpre", &[])?;
    enc.dispatch(
        &kern,
        &u,
        &[params, h, dkv, dpre],
        groups_for(gpu, mul(p, e), WG),
    )?;
    let kern = gpu.kernel(K, "w1", &[])?;
    enc.dispatch(
        &kern,
        &u,
        &[params, dpre, grads],
        groups_for(gpu, mul(e, t) + e as u64 + mul(p, t), WG),
    )
}
