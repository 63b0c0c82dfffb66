//! The NF4 block sizes of the frozen base (`--block-size`, `--block-size-map`,
//! `--bits-per-weight`), shared by `train`, `eval`, `generate`, `logits` and `quantize`: resolving
//! them against a model (the per-layer table), and the plan file an adapter or checkpoint keeps
//! so that eval, generate and resume rebuild the same base.

use std::path::Path;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use tinytune_model::blocks::{plan_blocks, BlockDefault, PLAN_FILE};
use tinytune_model::{BlockPlan, ModelSource, Quant};
use tinytune_train::BlockOptions;

/// The plan recorded in `dir` (an adapter or checkpoint folder), if it has one.
pub fn stored_plan(dir: &Path, n_layers: usize) -> Result<Option<BlockPlan>> {
    let p = dir.join(PLAN_FILE);
    let text = match std::fs::read_to_string(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(anyhow!("cannot read {}: {e}", p.display())),
    };
    Ok(Some(BlockPlan::from_json(
        &text,
        n_layers,
        &p.display().to_string(),
    )?))
}

/// The block sizes to load `src` with: from the options (printing the per-layer table for `auto`
/// and a map), else the ones recorded in `stored` (an adapter or checkpoint folder), else `None`
/// (block 64 everywhere). `strict` (resume): options that differ from the recorded plan are an
/// error, since a resumed run must train on the same base.
pub fn resolve(
    src: &ModelSource,
    model: &Path,
    quant: Quant,
    opts: &BlockOptions,
    stored: Option<&Path>,
    strict: bool,
) -> Result<Option<BlockPlan>> {
    let n_layers = src.config().num_hidden_layers;
    if src.is_prequantized() {
        if opts.is_set() {
            bail!(
                "{} is a bitsandbytes 4-bit checkpoint: its layers keep the block sizes they were \
                 saved with; leave out --block-size, --block-size-map and --bits-per-weight (or \
                 start from the original float model)",
                model.display()
            );
        }
        return Ok(None);
    }
    let Quant::Nf4 { double_quant, .. } = quant else {
        if opts.is_set() {
            bail!(
                "--block-size, --block-size-map and --bits-per-weight set NF4 block sizes; they \
                 do not apply with --quant none (an f32 base)"
            );
        }
        return Ok(None);
    };
    let recorded = match stored {
        Some(dir) => stored_plan(dir, n_layers)?.map(|p| (p, dir)),
        None => None,
    };
    let Some(spec) = opts.spec(double_quant).map_err(|e| anyhow!(e))? else {
        if let Some((p, dir)) = recorded {
            let (lo, hi) = p.range();
            eprintln!(
                "NF4 block sizes as recorded in {} ({})",
                dir.join(PLAN_FILE).display(),
                if lo == hi {
                    format!("{lo} everywhere")
                } else {
                    format!("{lo}..{hi} per layer")
                }
            );
            return Ok(Some(p));
        }
        return Ok(None);
    };
    let t = Instant::now();
    let total = n_layers * 7;
    // Progress only when measuring takes a while (a real model), every few seconds.
    let mut last = Instant::now();
    let report = plan_blocks(src, &spec, &mut |done, total| {
        if last.elapsed().as_secs_f64() > 5.0 {
            last = Instant::now();
            eprintln!("block sizes: quantization error of {done}/{total} linear layers measured");
        }
    })
    .with_context(|| format!("cannot choose block sizes for {}", model.display()))?;
    match spec.default {
        BlockDefault::Fixed(b) if spec.map.is_empty() => eprintln!(
            "NF4 block size {b} everywhere ({:.4} bits/weight)",
            report.bits_per_weight()
        ),
        _ => {
            eprint!("{}", report.table());
            eprintln!(
                "NF4 block sizes of {total} linear layers chosen in {:.1}s",
                t.elapsed().as_secs_f64()
            );
        }
    }
    if let Some((p, dir)) = &recorded {
        if *p != report.plan {
            if strict {
                bail!(
                    "the block sizes asked for differ from those recorded in {}; a resumed run \
                     trains on the same base: leave out --block-size, --block-size-map and \
                     --bits-per-weight",
                    dir.join(PLAN_FILE).display()
                );
            }
            eprintln!(
                "warning: the adapter was trained on a base with other block sizes ({}); using \
                 the ones asked for",
                dir.join(PLAN_FILE).display()
            );
        }
    }
    Ok(Some(report.plan))
}

/// Records the base's block sizes in `dir` (an adapter or checkpoint folder): `plan`, or block 64
/// everywhere for an NF4 base without one; nothing (and any stale record removed) for an f32 base
/// or a bitsandbytes checkpoint, whose weights need none.
pub fn save_plan(
    dir: &Path,
    src: &ModelSource,
    quant: Quant,
    plan: Option<&BlockPlan>,
) -> Result<()> {
    let path = dir.join(PLAN_FILE);
    let plan = match (quant, src.is_prequantized()) {
        (
            Quant::Nf4 {
                block,
                double_quant,
            },
            false,
        ) => plan.cloned().unwrap_or_else(|| {
            BlockPlan::uniform(src.config().num_hidden_layers, block, double_quant)
        }),
        _ => {
            if path.is_file() {
                std::fs::remove_file(&path)
                    .with_context(|| format!("cannot remove the stale {}", path.display()))?;
            }
            return Ok(());
        }
    };
    crate::merge::write_file(&path, plan.to_json().as_bytes())
}
