//! `tinytune plot DIR` (and the end of `train` and `sweep`): SVG charts of a run's
//! `metrics.jsonl` or of a sweep's `sweep.json`, drawn with plotters' SVG backend (text is laid
//! out by estimate, so no system fonts are needed).
//!
//! A run (`DIR/metrics.jsonl`): `plots/loss.svg` (training loss and the eval loss of each set
//! against the step), `plots/lr.svg` (learning rate), `plots/grad_norm.svg` (gradient norm before
//! clipping). A sweep (`DIR/sweep.json`): `plots/sweep_eval_loss.svg` (every trial's eval loss
//! against the step, from its last run), `plots/sweep_results.svg` (a bar per trial: the final
//! table's eval loss, coloured by method), and the run charts of `DIR/best`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use plotters::prelude::*;
use tinytune_train::metrics::parse_metrics;
use tinytune_train::sweep::SweepState;
use tinytune_train::MetricsRecord;

#[derive(Args, Debug)]
pub struct PlotArgs {
    /// A `train` output folder (with metrics.jsonl) or a `sweep` output folder (with sweep.json);
    /// the charts go to DIR/plots/.
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
}

pub fn run(args: &PlotArgs) -> Result<()> {
    let files = if args.dir.join("sweep.json").is_file() {
        plot_sweep(&args.dir)?
    } else if args.dir.join("metrics.jsonl").is_file() {
        plot_run(&args.dir)?
    } else {
        bail!(
            "{} holds neither metrics.jsonl (a train run) nor sweep.json (a sweep)",
            args.dir.display()
        );
    };
    for f in files {
        println!("{}", f.display());
    }
    Ok(())
}

/// The written files, for a log line.
pub fn list(files: &[PathBuf]) -> String {
    files
        .iter()
        .map(|f| f.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

type Series = (String, Vec<(f64, f64)>);

fn read_metrics(path: &Path) -> Result<Vec<MetricsRecord>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(parse_metrics(&text, &path.display().to_string())?)
}

/// The finite points of `f` over the records.
fn points(recs: &[MetricsRecord], f: impl Fn(&MetricsRecord) -> Option<f64>) -> Vec<(f64, f64)> {
    recs.iter()
        .filter_map(|r| f(r).filter(|v| v.is_finite()).map(|v| (r.step as f64, v)))
        .collect()
}

fn plots_dir(dir: &Path) -> Result<PathBuf> {
    let p = dir.join("plots");
    std::fs::create_dir_all(&p).with_context(|| format!("cannot create {}", p.display()))?;
    Ok(p)
}

/// The charts of one run's `metrics.jsonl`.
pub fn plot_run(dir: &Path) -> Result<Vec<PathBuf>> {
    let recs = read_metrics(&dir.join("metrics.jsonl"))?;
    let out = plots_dir(dir)?;
    let training = |r: &MetricsRecord| (r.step > 0).then_some(r.loss);
    let mut loss: Vec<Series> = vec![("training loss".into(), points(&recs, training))];
    loss.push(("eval loss".into(), points(&recs, |r| r.eval_loss)));
    let mut names: Vec<&String> = recs.iter().flat_map(|r| r.eval_data.keys()).collect();
    names.sort();
    names.dedup();
    for n in names {
        loss.push((
            format!("eval loss: {n}"),
            points(&recs, |r| r.eval_data.get(n).map(|s| s.loss)),
        ));
    }
    loss.retain(|(_, p)| !p.is_empty());
    let charts = [
        ("loss.svg", "Loss", "loss (nats per token)", loss),
        (
            "lr.svg",
            "Learning rate",
            "learning rate",
            vec![(
                "learning rate".to_string(),
                points(&recs, |r| (r.step > 0).then_some(r.lr)),
            )],
        ),
        (
            "grad_norm.svg",
            "Gradient norm (before clipping)",
            "global gradient norm",
            vec![(
                "gradient norm".to_string(),
                points(&recs, |r| (r.step > 0).then_some(r.grad_norm)),
            )],
        ),
    ];
    let mut files = Vec::new();
    for (file, title, y, series) in charts {
        let path = out.join(file);
        line_chart(&path, title, y, &series)?;
        files.push(path);
    }
    Ok(files)
}

/// The charts of a sweep folder.
pub fn plot_sweep(dir: &Path) -> Result<Vec<PathBuf>> {
    let path = dir.join("sweep.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let state = SweepState::from_json(&text).with_context(|| path.display().to_string())?;
    let out = plots_dir(dir)?;
    let mut curves: Vec<Series> = Vec::new();
    for t in &state.trials {
        let m = dir.join("trials").join(&t.id).join("metrics.jsonl");
        if !m.is_file() {
            continue;
        }
        let pts = points(&read_metrics(&m)?, |r| r.eval_loss);
        if !pts.is_empty() {
            curves.push((format!("{} {} {}", t.id, t.method, t.label), pts));
        }
    }
    let mut files = Vec::new();
    let p = out.join("sweep_eval_loss.svg");
    line_chart(
        &p,
        "Sweep: eval loss of every trial",
        "eval loss (nats per token)",
        &curves,
    )?;
    files.push(p);
    let bars: Vec<(String, String, f64)> = state
        .table()
        .iter()
        .filter_map(|r| {
            let t = state.trials.iter().find(|t| t.id == r.id)?;
            Some((r.id.clone(), t.method.clone(), r.eval_loss?))
        })
        .collect();
    let p = out.join("sweep_results.svg");
    bar_chart(&p, "Sweep: final eval loss per trial (best first)", &bars)?;
    files.push(p);
    if dir.join("best").join("metrics.jsonl").is_file() {
        files.extend(plot_run(&dir.join("best"))?);
    }
    Ok(files)
}

/// The range of `vals` with a margin (a flat series gets one too).
fn range(vals: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in vals {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = if hi > lo {
        (hi - lo) * 0.05
    } else {
        lo.abs().max(1e-3) * 0.05
    };
    (lo - pad, hi + pad)
}

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("drawing a chart: {e}")
}

/// A line chart of `series` against the step, with a legend.
fn line_chart(path: &Path, title: &str, y_desc: &str, series: &[Series]) -> Result<()> {
    // Tall enough for the legend of a whole sweep (18 trials by default) to leave the curves
    // readable.
    let height = 540.max(160 + 18 * series.len() as u32);
    let root = SVGBackend::new(path, (900, height)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (x0, x1) = range(series.iter().flat_map(|(_, p)| p.iter().map(|q| q.0)));
    let (y0, y1) = range(series.iter().flat_map(|(_, p)| p.iter().map(|q| q.1)));
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(72)
        .build_cartesian_2d(x0.max(0.0)..x1, y0..y1)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc(y_desc)
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(err)?;
    for (i, (name, pts)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
            .map_err(err)?
            .label(name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        // Markers, so a two-point eval curve (before and after) reads as measurements.
        chart
            .draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(err)?;
    }
    if !series.is_empty() {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font(("sans-serif", 13))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

/// A bar per `(trial, method, loss)`, coloured by method (one legend entry per method).
fn bar_chart(path: &Path, title: &str, bars: &[(String, String, f64)]) -> Result<()> {
    let root = SVGBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (_, hi) = range(bars.iter().map(|b| b.2));
    let n = bars.len().max(1);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(150)
        .y_label_area_size(72)
        .build_cartesian_2d(-0.5f64..n as f64 - 0.5, 0f64..hi.max(1e-6))
        .map_err(err)?;
    let ids: Vec<String> = bars.iter().map(|b| b.0.clone()).collect();
    let label = move |x: &f64| {
        let i = x.round();
        if (x - i).abs() < 1e-6 && i >= 0.0 {
            ids.get(i as usize).cloned().unwrap_or_default()
        } else {
            String::new()
        }
    };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n)
        .x_label_formatter(&label)
        // Trial ids read downwards under their bars, so 18 of them do not overlap.
        .x_label_style(
            ("sans-serif", 13)
                .into_font()
                .transform(FontTransform::Rotate90),
        )
        .x_desc("trial")
        .y_desc("eval loss (nats per token)")
        .draw()
        .map_err(err)?;
    let mut methods: Vec<&str> = bars.iter().map(|b| b.1.as_str()).collect();
    methods.dedup();
    let mut seen: Vec<&str> = Vec::new();
    for m in methods {
        if seen.contains(&m) {
            continue;
        }
        seen.push(m);
        let color = Palette99::pick(seen.len() - 1).to_rgba();
        let rects = bars
            .iter()
            .enumerate()
            .filter(|(_, b)| b.1 == m)
            .map(|(i, b)| {
                let x = i as f64;
                Rectangle::new([(x - 0.35, 0.0), (x + 0.35, b.2)], color.filled())
            });
        chart
            .draw_series(rects)
            .map_err(err)?
            .label(m)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], color.filled()));
    }
    if !bars.is_empty() {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}
