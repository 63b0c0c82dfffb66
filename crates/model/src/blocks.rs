//! NF4 block sizes chosen per linear layer: `--block-size N`, `--block-size-map
//! 'mlp.down_proj=32,self_attn.*=128'` and `--block-size auto [--bits-per-weight B]`.
//!
//! A [`BlockSpec`] (what the user asked) is resolved against a model into a [`BlockPlan`] (one block
//! size per decoder linear, what the loader and `tinytune quantize` use) by [`plan_blocks`]. The
//! plan is stored beside an adapter or checkpoint ([`PLAN_FILE`], [`BlockPlan::to_json`]) so that
//! eval, generate and resume rebuild the same base.
//!
//! # Memory
//! [`bits_per_weight`] counts every byte a quantized weight stores: the packed codes (`ceil(n/2)`),
//! and per block one f32 absmax, or with double quantization one 8-bit code per block, one f32
//! nested absmax per 256 blocks and the f32 offset. The shared code books (16 + 256 f32 per tensor in
//! a bitsandbytes file, constants on the device) are not counted.
//!
//! # `auto`
//! For every linear and every block size bitsandbytes accepts, the relative squared error of its
//! NF4 weights, `e = ||W - dequant(quant(W))||² / ||W||²`, is computed on the host with the same
//! arithmetic as the GPU quantizer (absmax, nearest NF4 code, double-quantized absmax). The plan
//! minimises the parameter-weighted sum of these errors, `Σ n_l e_l` (the mean relative squared
//! error per weight), subject to the average bits per weight: a multiple-choice knapsack solved on
//! the lower convex hull of each layer's (bits, error) options (Lagrangian relaxation), then filled
//! greedily with the budget left. Without `--bits-per-weight` the budget is the memory of block 64
//! everywhere, and the result is never worse than block 64 everywhere (it falls back to it).
//! Modules pinned by `--block-size-map` keep their size and count toward the budget.

use tinytune_gpu::nf4::{valid_block_size, DEFAULT_BLOCK, DYNAMIC_MAP, NESTED_BLOCK, NF4};

use crate::targets::linear_path;
use crate::{ModelError, ModelSource, Result};

/// Every block size bitsandbytes accepts for 4-bit quantization (CUDA: 32 ..= 4096).
pub const BLOCK_SIZES: [usize; 8] = [32, 64, 128, 256, 512, 1024, 2048, 4096];

/// File that records the block sizes of the base an adapter or checkpoint was trained on.
pub const PLAN_FILE: &str = "tinytune_blocks.json";

/// The default block size of every module (before the map).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum BlockDefault {
    Fixed(usize),
    /// Chosen per layer; `Some(B)`: within B bits per weight on average, `None`: within the memory
    /// of block 64 everywhere.
    Auto(Option<f64>),
}

/// What the user asked for.
#[derive(Clone, Debug, PartialEq)]
pub struct BlockSpec {
    pub default: BlockDefault,
    /// `(pattern, block)` in the order given; later entries win.
    pub map: Vec<(String, usize)>,
    pub double_quant: bool,
}

fn cfg_err(msg: String) -> ModelError {
    ModelError::Option(msg)
}

/// Parses one block size (`--block-size`, a map entry).
pub fn parse_block(s: &str, what: &str) -> Result<usize> {
    let b: usize = s.trim().parse().map_err(|_| {
        cfg_err(format!(
            "{what} {s:?} is not a block size: use one of 32, 64, 128, 256, 512, 1024, 2048, 4096"
        ))
    })?;
    if !valid_block_size(b) {
        return Err(cfg_err(format!(
            "{what} {b} is not a block size bitsandbytes accepts for 4-bit quantization: use one \
             of 32, 64, 128, 256, 512, 1024, 2048, 4096"
        )));
    }
    Ok(b)
}

impl BlockSpec {
    /// From the options: `block_size` `N` or `auto`, `map` `PATTERN=N,...`, `bits_per_weight`
    /// (only with `auto`). `None` when none is given (block 64 everywhere).
    pub fn parse(
        block_size: Option<&str>,
        map: Option<&str>,
        bits_per_weight: Option<f64>,
        double_quant: bool,
    ) -> Result<Option<BlockSpec>> {
        if block_size.is_none() && map.is_none() && bits_per_weight.is_none() {
            return Ok(None);
        }
        let default = match block_size.map(str::trim) {
            Some("auto") => BlockDefault::Auto(bits_per_weight),
            Some(s) => BlockDefault::Fixed(parse_block(s, "--block-size")?),
            None => BlockDefault::Fixed(DEFAULT_BLOCK),
        };
        if let (Some(b), BlockDefault::Fixed(_)) = (bits_per_weight, default) {
            return Err(cfg_err(format!(
                "--bits-per-weight {b} needs --block-size auto (a fixed block size has fixed bits \
                 per weight)"
            )));
        }
        if let Some(b) = bits_per_weight {
            if !b.is_finite() || b <= 0.0 {
                return Err(cfg_err(format!(
                    "--bits-per-weight {b} must be a positive number, e.g. 4.1"
                )));
            }
        }
        let mut entries = Vec::new();
        for part in map.unwrap_or("").split(',') {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let (pat, b) = part.split_once('=').ok_or_else(|| {
                cfg_err(format!(
                    "--block-size-map entry {part:?} is not PATTERN=N (e.g. mlp.down_proj=32)"
                ))
            })?;
            let pat = pat.trim();
            if pat.is_empty() {
                return Err(cfg_err(format!(
                    "--block-size-map entry {part:?} has no module pattern before '='"
                )));
            }
            let b = parse_block(b, &format!("--block-size-map {pat:?}: block size"))?;
            entries.push((pat.to_string(), b));
        }
        if map.is_some() && entries.is_empty() {
            return Err(cfg_err(
                "--block-size-map is empty: give PATTERN=N entries, e.g. 'mlp.down_proj=32'".into(),
            ));
        }
        Ok(Some(BlockSpec {
            default,
            map: entries,
            double_quant,
        }))
    }
}

/// `*` matches any run of characters (dots included); everything else matches itself.
fn glob(pat: &[u8], s: &[u8]) -> bool {
    match pat.split_first() {
        None => s.is_empty(),
        Some((b'*', rest)) => (0..=s.len()).any(|i| glob(rest, &s[i..])),
        Some((c, rest)) => s.first() == Some(c) && glob(rest, &s[1..]),
    }
}

/// Whether map pattern `pat` matches module `module` (`model.layers.3.mlp.down_proj`): the whole
/// name or any dot-separated suffix of it (`mlp.down_proj`, `down_proj`, `layers.3.*`), with `*`
/// matching any characters.
pub fn pattern_matches(pat: &str, module: &str) -> bool {
    let (p, m) = (pat.as_bytes(), module.as_bytes());
    if glob(p, m) {
        return true;
    }
    module.match_indices('.').any(|(i, _)| glob(p, &m[i + 1..]))
}

/// Bytes a quantized weight of `n` elements stores (see the module docs).
pub fn quantized_bytes(n: usize, block: usize, double_quant: bool) -> u64 {
    let nblocks = n.div_ceil(block) as u64;
    let codes = n.div_ceil(2) as u64;
    if double_quant {
        codes + nblocks + 4 * nblocks.div_ceil(NESTED_BLOCK as u64) + 4
    } else {
        codes + 4 * nblocks
    }
}

/// Bits per weight of a quantized weight of `n` elements.
pub fn bits_per_weight(n: usize, block: usize, double_quant: bool) -> f64 {
    quantized_bytes(n, block, double_quant) as f64 * 8.0 / n.max(1) as f64
}

/// Midpoints between consecutive NF4 codes (bitsandbytes' decision thresholds), as the reference
/// and the GPU kernel use them.
const NF4_MIDPOINTS: [f32; 15] = [
    -0.8480964004993439,
    -0.6106329262256622,
    -0.4599952697753906,
    -0.33967943489551544,
    -0.23460740596055984,
    -0.13791173323988914,
    -0.045525018125772476,
    0.03979014977812767,
    0.1202552504837513,
    0.2035212516784668,
    0.2920137718319893,
    0.3893125355243683,
    0.5016634166240692,
    0.6427869200706482,
    0.8614784181118011,
];

#[inline]
fn nf4_code(s: f32) -> usize {
    NF4_MIDPOINTS.iter().filter(|&&m| s > m).count()
}

/// bitsandbytes' `dQuantize<0>` search over the dynamic map (CUDA's rounding).
fn dyn8_code(x: f32) -> usize {
    let code = &DYNAMIC_MAP;
    let (mut pivot, mut upper_pivot, mut lower_pivot) = (127usize, 255usize, 0usize);
    let (mut lower, mut upper) = (-1.0f32, 1.0f32);
    let mut val = code[pivot];
    let mut i = 64;
    while i > 0 {
        if x > val {
            lower_pivot = pivot;
            lower = val;
            pivot += i;
        } else {
            upper_pivot = pivot;
            upper = val;
            pivot -= i;
        }
        val = code[pivot];
        i >>= 1;
    }
    if upper_pivot == 255 {
        upper = code[upper_pivot];
    }
    if lower_pivot == 0 {
        lower = code[lower_pivot];
    }
    if x > val {
        if x > (upper + val) * 0.5 {
            upper_pivot
        } else {
            pivot
        }
    } else if x < (lower + val) * 0.5 {
        lower_pivot
    } else {
        pivot
    }
}

/// The mean of the absmax in the GPU kernel's order (256 strided lanes, then a pairwise tree).
fn absmax_mean(absmax: &[f32]) -> f32 {
    let mut lanes = [0f32; 256];
    for (i, &a) in absmax.iter().enumerate() {
        lanes[i % 256] += a;
    }
    let mut s = 128;
    while s > 0 {
        for t in 0..s {
            lanes[t] += lanes[t + s];
        }
        s /= 2;
    }
    lanes[0] / absmax.len() as f32
}

/// The absmax the dequantization uses after double quantization.
fn double_quantized(absmax: &[f32]) -> Vec<f32> {
    let offset = absmax_mean(absmax);
    let mut out = vec![0f32; absmax.len()];
    for (chunk, o) in absmax
        .chunks(NESTED_BLOCK)
        .zip(out.chunks_mut(NESTED_BLOCK))
    {
        let am = chunk.iter().fold(0f32, |m, &a| m.max((a - offset).abs()));
        if am == 0.0 {
            o.iter_mut().for_each(|v| *v = DYNAMIC_MAP[0] * am + offset);
            continue;
        }
        let inv = 1.0 / am;
        for (v, &a) in o.iter_mut().zip(chunk) {
            *v = DYNAMIC_MAP[dyn8_code((a - offset) * inv)] * am + offset;
        }
    }
    out
}

/// `||x - dequant(quant(x))||²` of blockwise NF4 quantization of `x` (flattened), computed as the
/// GPU quantizer does (f32 absmax, nearest code; with `double_quant` the dequantization uses the
/// 8-bit absmax), summed in f64.
pub fn nf4_sq_error(x: &[f32], block: usize, double_quant: bool) -> f64 {
    let absmax: Vec<f32> = x
        .chunks(block)
        .map(|c| c.iter().fold(0f32, |m, v| m.max(v.abs())))
        .collect();
    let scale = if double_quant {
        double_quantized(&absmax)
    } else {
        absmax.clone()
    };
    let mut err = 0f64;
    for ((chunk, &am), &s) in x.chunks(block).zip(&absmax).zip(&scale) {
        let inv = if am > 0.0 { 1.0 / am } else { 0.0 };
        for &v in chunk {
            let q = NF4[nf4_code((v * inv).clamp(-1.0, 1.0))] * s;
            let d = (v - q) as f64;
            err += d * d;
        }
    }
    err
}

/// One block size per decoder linear (`blocks[layer][t]`, `t` in [`crate::targets::LINEARS`] order).
#[derive(Clone, Debug, PartialEq)]
pub struct BlockPlan {
    pub double_quant: bool,
    pub blocks: Vec<[usize; 7]>,
}

impl BlockPlan {
    /// Block `block` everywhere.
    pub fn uniform(n_layers: usize, block: usize, double_quant: bool) -> BlockPlan {
        BlockPlan {
            double_quant,
            blocks: vec![[block; 7]; n_layers],
        }
    }

    /// Block size of `model.layers.{i}.<LINEARS[t]>`.
    pub fn block(&self, i: usize, t: usize) -> usize {
        self.blocks[i][t]
    }

    /// Block size of a weight by tensor name (`model.layers.3.mlp.down_proj.weight`), if it is a
    /// decoder linear of the plan.
    pub fn block_of_tensor(&self, name: &str) -> Option<usize> {
        let module = name.strip_suffix(".weight")?;
        let rest = module.strip_prefix("model.layers.")?;
        let (i, rest) = rest.split_once('.')?;
        let i: usize = i.parse().ok()?;
        let t = (0..7).find(|&t| linear_path(i, t) == module)?;
        let _ = rest;
        self.blocks.get(i).map(|b| b[t])
    }

    /// Block size by tensor name (`model.layers.3.mlp.down_proj.weight`), for
    /// `bnb::QuantizeOptions::blocks`.
    pub fn tensor_blocks(&self) -> std::collections::HashMap<String, usize> {
        let mut out = std::collections::HashMap::new();
        for (i, b) in self.blocks.iter().enumerate() {
            for (t, &block) in b.iter().enumerate() {
                out.insert(format!("{}.weight", linear_path(i, t)), block);
            }
        }
        out
    }

    /// `{"quant": "nf4", "double_quant": true, "block_sizes": {"model.layers.0.self_attn.q_proj":
    /// 64, ...}}`, the text of [`PLAN_FILE`].
    pub fn to_json(&self) -> String {
        let mut sizes = serde_json::Map::new();
        for (i, b) in self.blocks.iter().enumerate() {
            for (t, &block) in b.iter().enumerate() {
                sizes.insert(linear_path(i, t), serde_json::json!(block));
            }
        }
        let v = serde_json::json!({
            "quant": "nf4",
            "double_quant": self.double_quant,
            "block_sizes": sizes,
        });
        serde_json::to_string_pretty(&v).expect("JSON values serialize") + "\n"
    }

    /// Parses [`BlockPlan::to_json`]'s text for a model of `n_layers` layers; `what` names the
    /// file in errors.
    pub fn from_json(text: &str, n_layers: usize, what: &str) -> Result<BlockPlan> {
        let bad = |m: String| ModelError::Format(format!("{what}: {m}"));
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        let double_quant = v
            .get("double_quant")
            .and_then(serde_json::Value::as_bool)
            .ok_or_else(|| bad("no boolean \"double_quant\"".into()))?;
        let sizes = v
            .get("block_sizes")
            .and_then(serde_json::Value::as_object)
            .ok_or_else(|| bad("no \"block_sizes\" object".into()))?;
        let mut blocks = vec![[0usize; 7]; n_layers];
        for (i, b) in blocks.iter_mut().enumerate() {
            for (t, slot) in b.iter_mut().enumerate() {
                let m = linear_path(i, t);
                let s = sizes
                    .get(&m)
                    .and_then(serde_json::Value::as_u64)
                    .ok_or_else(|| {
                        bad(format!(
                        "no block size for {m}: the file was written for another model (this one \
                         has {n_layers} layers)"
                    ))
                    })? as usize;
                if !valid_block_size(s) {
                    return Err(bad(format!(
                        "block size {s} of {m} is not one bitsandbytes accepts"
                    )));
                }
                *slot = s;
            }
        }
        if sizes.len() != n_layers * 7 {
            return Err(bad(format!(
                "{} block sizes for a model of {} decoder linears: the file was written for \
                 another model",
                sizes.len(),
                n_layers * 7
            )));
        }
        Ok(BlockPlan {
            double_quant,
            blocks,
        })
    }

    /// The smallest and largest block size of the plan.
    pub fn range(&self) -> (usize, usize) {
        let all = self.blocks.iter().flatten();
        (
            all.clone().copied().min().unwrap_or(DEFAULT_BLOCK),
            all.copied().max().unwrap_or(DEFAULT_BLOCK),
        )
    }
}

/// One row of the per-layer table.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerChoice {
    /// `model.layers.3.mlp.down_proj`.
    pub module: String,
    pub block: usize,
    /// Elements of the weight.
    pub n: usize,
    pub bits_per_weight: f64,
    /// `||W - Q(W)||² / ||W||²` at the chosen block size (`None` when not computed).
    pub rel_error: Option<f64>,
}

/// A resolved plan and its per-layer table.
#[derive(Clone, Debug)]
pub struct PlanReport {
    pub plan: BlockPlan,
    pub layers: Vec<LayerChoice>,
}

impl PlanReport {
    /// Average bits per weight over every decoder linear.
    pub fn bits_per_weight(&self) -> f64 {
        let bytes: u64 = self
            .layers
            .iter()
            .map(|l| quantized_bytes(l.n, l.block, self.plan.double_quant))
            .sum();
        let n: usize = self.layers.iter().map(|l| l.n).sum();
        bytes as f64 * 8.0 / n.max(1) as f64
    }

    /// The parameter-weighted mean relative squared error (what `auto` minimises), when every
    /// layer's error is known.
    pub fn mean_rel_error(&self) -> Option<f64> {
        let n: usize = self.layers.iter().map(|l| l.n).sum();
        let s: Option<f64> = self
            .layers
            .iter()
            .map(|l| l.rel_error.map(|e| e * l.n as f64))
            .sum();
        s.map(|s| s / n.max(1) as f64)
    }

    /// The table: module, block size, bits/weight, relative error; then the totals.
    pub fn table(&self) -> String {
        let w = self
            .layers
            .iter()
            .map(|l| l.module.len())
            .max()
            .unwrap_or(6)
            .max(6);
        let mut s = format!(
            "{:<w$}  {:>5}  {:>11}  {:>14}\n",
            "module", "block", "bits/weight", "relative error"
        );
        for l in &self.layers {
            let e = l.rel_error.map_or("-".to_string(), |e| format!("{e:.4e}"));
            s.push_str(&format!(
                "{:<w$}  {:>5}  {:>11.4}  {:>14}\n",
                l.module, l.block, l.bits_per_weight, e
            ));
        }
        let e = self
            .mean_rel_error()
            .map_or("-".to_string(), |e| format!("{e:.4e}"));
        s.push_str(&format!(
            "{:<w$}  {:>5}  {:>11.4}  {:>14}\n",
            "all (weighted by size)",
            "",
            self.bits_per_weight(),
            e
        ));
        s
    }
}

/// The modules (`model.layers.{i}.<group>.<proj>`) of a model with `n_layers` layers, in plan
/// order.
pub fn modules(n_layers: usize) -> Vec<String> {
    (0..n_layers)
        .flat_map(|i| (0..7).map(move |t| linear_path(i, t)))
        .collect()
}

/// Applies the map to `modules`: the block each pinned module gets (later entries win). A pattern
/// that matches no module is an error naming it.
fn pinned(spec: &BlockSpec, modules: &[String]) -> Result<Vec<Option<usize>>> {
    let mut out = vec![None; modules.len()];
    for (pat, b) in &spec.map {
        let mut any = false;
        for (m, slot) in modules.iter().zip(out.iter_mut()) {
            if pattern_matches(pat, m) {
                *slot = Some(*b);
                any = true;
            }
        }
        if !any {
            return Err(cfg_err(format!(
                "--block-size-map pattern {pat:?} matches no module of this model (modules are \
                 named like {} or {}; a pattern matches a whole name or a dot-separated suffix, \
                 '*' matches anything)",
                modules
                    .first()
                    .map_or("model.layers.0.self_attn.q_proj", |m| m),
                modules.last().map_or("model.layers.0.mlp.down_proj", |m| m),
            )));
        }
    }
    Ok(out)
}

/// Resolves `spec` against `src`'s decoder linears. `Fixed` needs no weights; with a map the
/// errors of the chosen sizes are computed for the table; `auto` computes the error of every block
/// size of every linear (on the host, in parallel over the available cores) and solves the budget.
/// `progress(done, total)` is called after each linear.
pub fn plan_blocks(
    src: &ModelSource,
    spec: &BlockSpec,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<PlanReport> {
    let n_layers = src.config().num_hidden_layers;
    let mods = modules(n_layers);
    let pins = pinned(spec, &mods)?;
    let dq = spec.double_quant;
    let sizes: Vec<usize> = mods
        .iter()
        .map(|m| {
            src.tensor_meta(&format!("{m}.weight"))
                .map(|t| t.shape.iter().product())
                .ok_or_else(|| ModelError::Tensor(format!("the model has no tensor {m}.weight")))
        })
        .collect::<Result<_>>()?;
    let total = mods.len();
    let auto = match spec.default {
        BlockDefault::Fixed(b) => {
            let blocks: Vec<usize> = pins.iter().map(|p| p.unwrap_or(b)).collect();
            // The errors of the chosen sizes, for the table, only when a map makes them differ.
            let errors: Vec<Option<f64>> = if spec.map.is_empty() {
                vec![None; total]
            } else {
                let mut out = Vec::with_capacity(total);
                for (k, m) in mods.iter().enumerate() {
                    let w = src.load(&format!("{m}.weight"))?.data;
                    let norm = sq_norm(&w);
                    out.push(Some(rel(nf4_sq_error(&w, blocks[k], dq), norm)));
                    progress(k + 1, total);
                }
                out
            };
            return Ok(report(&mods, &sizes, &blocks, &errors, dq));
        }
        BlockDefault::Auto(b) => b,
    };
    let n_total: usize = sizes.iter().sum();
    let budget_bits = match auto {
        Some(b) => b * n_total as f64,
        None => {
            sizes
                .iter()
                .zip(&pins)
                .map(|(&n, p)| quantized_bytes(n, p.unwrap_or(DEFAULT_BLOCK), dq))
                .sum::<u64>() as f64
                * 8.0
        }
    };
    // The least memory: the largest block everywhere (the pinned modules as given); checked before
    // any error is measured.
    let min_bits: f64 = sizes
        .iter()
        .zip(&pins)
        .map(|(&n, p)| quantized_bytes(n, p.unwrap_or(BLOCK_SIZES[BLOCK_SIZES.len() - 1]), dq))
        .sum::<u64>() as f64
        * 8.0;
    if min_bits > budget_bits + 1e-9 {
        return Err(cfg_err(format!(
            "--bits-per-weight {:.4} is below the smallest this model allows, {:.4} (block 4096 \
             everywhere{}); raise it",
            budget_bits / n_total as f64,
            min_bits / n_total as f64,
            if spec.map.is_empty() {
                ""
            } else {
                ", the --block-size-map modules as given"
            }
        )));
    }
    // Options per module: (block, bytes, weighted error).
    let mut options: Vec<Vec<(usize, u64, f64)>> = Vec::with_capacity(total);
    for (k, m) in mods.iter().enumerate() {
        let w = src.load(&format!("{m}.weight"))?.data;
        let norm = sq_norm(&w);
        let cands: Vec<usize> = match pins[k] {
            Some(b) => vec![b],
            None => BLOCK_SIZES.to_vec(),
        };
        let errs = parallel_errors(&w, &cands, dq);
        options.push(
            cands
                .iter()
                .zip(errs)
                .map(|(&b, e)| (b, quantized_bytes(w.len(), b, dq), rel(e, norm)))
                .collect(),
        );
        progress(k + 1, total);
    }
    let budget = (budget_bits / 8.0).floor() as u64;
    let weights: Vec<f64> = sizes.iter().map(|&n| n as f64).collect();
    let mut pick = knapsack(&options, &weights, budget);
    if auto.is_none() {
        // Never worse than block 64 everywhere (the pinned modules as given), which fits the
        // budget by construction.
        let base: Vec<usize> = options
            .iter()
            .map(|o| o.iter().position(|x| x.0 == DEFAULT_BLOCK).unwrap_or(0))
            .collect();
        let cost = |p: &[usize]| -> f64 {
            p.iter()
                .zip(&options)
                .zip(&weights)
                .map(|((&j, o), w)| o[j].2 * w)
                .sum()
        };
        if cost(&base) < cost(&pick) {
            pick = base;
        }
    }
    let blocks: Vec<usize> = pick.iter().zip(&options).map(|(&j, o)| o[j].0).collect();
    let errors: Vec<Option<f64>> = pick
        .iter()
        .zip(&options)
        .map(|(&j, o)| Some(o[j].2))
        .collect();
    Ok(report(&mods, &sizes, &blocks, &errors, dq))
}

fn sq_norm(w: &[f32]) -> f64 {
    w.iter().map(|&v| (v as f64) * (v as f64)).sum()
}

fn rel(err: f64, norm: f64) -> f64 {
    if norm > 0.0 {
        err / norm
    } else {
        0.0
    }
}

fn report(
    mods: &[String],
    sizes: &[usize],
    blocks: &[usize],
    errors: &[Option<f64>],
    dq: bool,
) -> PlanReport {
    let n_layers = mods.len() / 7;
    let mut plan = BlockPlan::uniform(n_layers, DEFAULT_BLOCK, dq);
    for (k, &b) in blocks.iter().enumerate() {
        plan.blocks[k / 7][k % 7] = b;
    }
    let layers = mods
        .iter()
        .zip(sizes)
        .zip(blocks)
        .zip(errors)
        .map(|(((m, &n), &b), &e)| LayerChoice {
            module: m.clone(),
            block: b,
            n,
            bits_per_weight: bits_per_weight(n, b, dq),
            rel_error: e,
        })
        .collect();
    PlanReport { plan, layers }
}

/// The errors of `w` at each block size, on up to as many threads as there are sizes and cores.
fn parallel_errors(w: &[f32], blocks: &[usize], dq: bool) -> Vec<f64> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(blocks.len())
        .max(1);
    if threads == 1 || w.len() < 1 << 16 {
        return blocks.iter().map(|&b| nf4_sq_error(w, b, dq)).collect();
    }
    let mut out = vec![0f64; blocks.len()];
    std::thread::scope(|s| {
        let per = blocks.len().div_ceil(threads);
        for (bs, os) in blocks.chunks(per).zip(out.chunks_mut(per)) {
            s.spawn(move || {
                for (&b, o) in bs.iter().zip(os.iter_mut()) {
                    *o = nf4_sq_error(w, b, dq);
                }
            });
        }
    });
    out
}

/// Multiple-choice knapsack: one option per item (bytes, relative error; the cost is error times
/// the item's weight), total bytes within `budget`, least total cost. Lagrangian relaxation on the
/// items' lower convex hulls (binary search on the multiplier), then the budget left filled
/// greedily with the best error reduction per byte. Returns each item's option index.
fn knapsack(options: &[Vec<(usize, u64, f64)>], weights: &[f64], budget: u64) -> Vec<usize> {
    let choose = |lambda: f64| -> Vec<usize> {
        options
            .iter()
            .zip(weights)
            .map(|(o, w)| {
                let mut best = 0;
                let score = |x: &(usize, u64, f64)| x.2 * w + lambda * x.1 as f64;
                for (j, x) in o.iter().enumerate() {
                    let (s, sb) = (score(x), score(&o[best]));
                    if s < sb || (s == sb && x.1 < o[best].1) {
                        best = j;
                    }
                }
                best
            })
            .collect()
    };
    let bytes = |p: &[usize]| -> u64 { p.iter().zip(options).map(|(&j, o)| o[j].1).sum() };
    // lambda large enough picks the cheapest option everywhere (fits: checked by the caller).
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    while bytes(&choose(hi)) > budget {
        hi *= 2.0;
        if hi > 1e30 {
            break;
        }
    }
    let mut pick = choose(hi);
    if bytes(&choose(lo)) <= budget {
        return choose(lo);
    }
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        let p = choose(mid);
        if bytes(&p) <= budget {
            hi = mid;
            pick = p;
        } else {
            lo = mid;
        }
    }
    // Fill what is left: the best cost reduction per extra byte that still fits, repeatedly.
    let mut used = bytes(&pick);
    loop {
        let mut best: Option<(usize, usize, f64)> = None;
        for (k, (o, w)) in options.iter().zip(weights).enumerate() {
            let cur = &o[pick[k]];
            for (j, x) in o.iter().enumerate() {
                let gain = (cur.2 - x.2) * w;
                if gain <= 0.0 {
                    continue;
                }
                let extra = x.1.saturating_sub(cur.1);
                if used - cur.1 + x.1 > budget {
                    continue;
                }
                let ratio = gain / (extra.max(1) as f64);
                if best.is_none_or(|b| ratio > b.2) {
                    best = Some((k, j, ratio));
                }
            }
        }
        let Some((k, j, _)) = best else { break };
        used = used - options[k][pick[k]].1 + options[k][j].1;
        pick[k] = j;
    }
    pick
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_whole_names_and_dot_suffixes() {
        let m = "model.layers.3.mlp.down_proj";
        for p in [
            "mlp.down_proj",
            "down_proj",
            "layers.3.*",
            "*",
            "model.layers.3.mlp.down_proj",
            "mlp.*",
            "*_proj",
        ] {
            assert!(pattern_matches(p, m), "{p}");
        }
        for p in [
            "own_proj",
            "self_attn.*",
            "layers.30.*",
            "mlp.up_proj",
            "layers.3",
        ] {
            assert!(!pattern_matches(p, m), "{p}");
        }
    }

    #[test]
    fn spec_parsing_names_what_is_wrong() {
        let e = BlockSpec::parse(Some("48"), None, None, true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("48") && e.contains("4096"), "{e}");
        let e = BlockSpec::parse(None, Some("mlp.down_proj:32"), None, true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("PATTERN=N"), "{e}");
        let e = BlockSpec::parse(Some("128"), None, Some(4.1), true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--block-size auto"), "{e}");
        assert_eq!(BlockSpec::parse(None, None, None, true).unwrap(), None);
        let s = BlockSpec::parse(Some("auto"), Some("mlp.*=32, q_proj=4096"), Some(4.2), true)
            .unwrap()
            .unwrap();
        assert_eq!(s.default, BlockDefault::Auto(Some(4.2)));
        assert_eq!(
            s.map,
            vec![("mlp.*".to_string(), 32), ("q_proj".to_string(), 4096)]
        );
    }

    #[test]
    fn bits_per_weight_counts_codes_absmax_and_nested_absmax() {
        // 4096 x 4096 at block 64, double quant: 4 bits + 8/64 + 32/(64*256) + offset.
        let n = 4096 * 4096;
        let want = 4.0 + 8.0 / 64.0 + 32.0 / (64.0 * 256.0) + 32.0 / n as f64;
        assert!((bits_per_weight(n, 64, true) - want).abs() < 1e-12);
        assert!((bits_per_weight(n, 64, false) - 4.5).abs() < 1e-12);
        // A partial last block still stores its absmax; an odd count pads one nibble.
        assert_eq!(quantized_bytes(65, 64, false), 33 + 8);
    }

    #[test]
    fn host_error_matches_the_reference_quantizer() {
        use tinytune_reference::nf4::Nf4Tensor as Ref;
        let x: Vec<f32> = (0..5000)
            .map(|i| ((i as f32 * 0.37).sin() * (1.0 + (i % 97) as f32 / 13.0)) * 0.02)
            .collect();
        for dq in [false, true] {
            for b in [32, 64, 256, 4096] {
                let y = Ref::quantize(&x, b, dq).dequantize();
                let want: f64 = x
                    .iter()
                    .zip(&y)
                    .map(|(a, b)| ((a - b) as f64).powi(2))
                    .sum();
                let got = nf4_sq_error(&x, b, dq);
                assert_eq!(got, want, "block {b} double quant {dq}");
            }
        }
    }

    #[test]
    fn knapsack_respects_the_budget_and_prefers_cheap_error() {
        // Two items: item 0's error falls steeply with bytes, item 1's barely.
        let options = vec![
            vec![(4096, 10, 1.0), (64, 20, 0.1)],
            vec![(4096, 10, 1.0), (64, 20, 0.9)],
        ];
        let pick = knapsack(&options, &[1.0, 1.0], 30);
        assert_eq!(pick, vec![1, 0]);
        assert_eq!(knapsack(&options, &[1.0, 1.0], 20), vec![0, 0]);
        assert_eq!(knapsack(&options, &[1.0, 1.0], 40), vec![1, 1]);
    }

    #[test]
    fn plan_json_round_trips_and_refuses_another_model() {
        let mut p = BlockPlan::uniform(2, 64, true);
        p.blocks[1][6] = 32;
        p.blocks[0][0] = 4096;
        let text = p.to_json();
        assert_eq!(BlockPlan::from_json(&text, 2, "f").unwrap(), p);
        let e = BlockPlan::from_json(&text, 3, "f").unwrap_err().to_string();
        assert!(e.contains("model.layers.2.self_attn.q_proj"), "{e}");
        let e = BlockPlan::from_json(&text, 1, "f").unwrap_err().to_string();
        assert!(e.contains("another model"), "{e}");
        assert_eq!(
            p.block_of_tensor("model.layers.1.mlp.down_proj.weight"),
            Some(32)
        );
        assert_eq!(p.block_of_tensor("model.embed_tokens.weight"), None);
    }
}
