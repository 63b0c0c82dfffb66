//! The training log: one JSON object per line,
//! `{"step", "loss", "lr", "grad_norm", "tokens_per_s", "elapsed_s", "eval_loss"?, "eval_ppl"?,
//! "eval_data"?: {NAME: {"loss", "ppl"}}}`; `eval_data` holds the extra held-out sets
//! (`--eval-data NAME=FILE`) evaluated at that step. The evaluation before training, when there is
//! one, is a line of step 0 without the training fields (`{"step": 0, "elapsed_s": 0, "eval_loss"?,
//! "eval_ppl"?, "eval_data"?}`). Non-finite numbers (a diverged loss) are written as `null` and
//! read back as NaN. Time is measured by the caller (`std::time::Instant` does not exist in wasm32).

use std::collections::BTreeMap;
use std::io::Write;

use serde::{Deserialize, Deserializer, Serialize};

use crate::{Result, TrainError};

fn nan_if_null<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

fn nan() -> f64 {
    f64::NAN
}

/// Whether a record has none of the training fields (the evaluation before training).
fn no_training_fields(r: &MetricsRecord) -> bool {
    [r.loss, r.lr, r.grad_norm, r.tokens_per_s]
        .iter()
        .all(|v| v.is_nan())
}

/// A step-0 line: [`MetricsRecord`] without the training fields, in the same key order.
#[derive(Serialize)]
struct BeforeTraining<'a> {
    step: u64,
    elapsed_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    eval_loss: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    eval_ppl: Option<f64>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    eval_data: &'a BTreeMap<String, SetLoss>,
}

/// Loss and perplexity of one extra held-out set.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SetLoss {
    /// Mean loss per target token.
    #[serde(deserialize_with = "nan_if_null")]
    pub loss: f64,
    /// `exp(loss)`.
    #[serde(deserialize_with = "nan_if_null")]
    pub ppl: f64,
}

impl SetLoss {
    /// The loss and its perplexity.
    pub fn new(loss: f64) -> SetLoss {
        SetLoss {
            loss,
            ppl: loss.exp(),
        }
    }
}

/// One line of the training log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricsRecord {
    /// Optimizer steps done (1 after the first update).
    pub step: u64,
    /// Mean training loss of the step (nats per target token); NaN in the step-0 line.
    #[serde(default = "nan", deserialize_with = "nan_if_null")]
    pub loss: f64,
    /// Learning rate used by the step.
    #[serde(default = "nan", deserialize_with = "nan_if_null")]
    pub lr: f64,
    /// Global gradient norm before clipping.
    #[serde(default = "nan", deserialize_with = "nan_if_null")]
    pub grad_norm: f64,
    #[serde(default = "nan", deserialize_with = "nan_if_null")]
    pub tokens_per_s: f64,
    /// Seconds since the start of training (including time before a resume).
    #[serde(deserialize_with = "nan_if_null")]
    pub elapsed_s: f64,
    /// Mean loss on the eval set, when evaluated at this step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_loss: Option<f64>,
    /// `exp(eval_loss)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_ppl: Option<f64>,
    /// Each extra held-out set evaluated at this step, by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub eval_data: BTreeMap<String, SetLoss>,
}

impl MetricsRecord {
    /// Adds an evaluation result (`eval_ppl = exp(eval_loss)`).
    pub fn with_eval(mut self, eval_loss: f64) -> MetricsRecord {
        self.eval_loss = Some(eval_loss);
        self.eval_ppl = Some(eval_loss.exp());
        self
    }

    /// Adds the loss of the extra held-out set `name`.
    pub fn with_eval_set(mut self, name: &str, loss: f64) -> MetricsRecord {
        self.eval_data.insert(name.to_string(), SetLoss::new(loss));
        self
    }

    /// The evaluation before training: step 0, no training fields (NaN here, left out of the
    /// JSON line), elapsed 0.
    pub fn before_training() -> MetricsRecord {
        MetricsRecord {
            step: 0,
            loss: f64::NAN,
            lr: f64::NAN,
            grad_norm: f64::NAN,
            tokens_per_s: f64::NAN,
            elapsed_s: 0.0,
            eval_loss: None,
            eval_ppl: None,
            eval_data: BTreeMap::new(),
        }
    }

    /// Whether anything was evaluated at this step.
    pub fn has_eval(&self) -> bool {
        self.eval_loss.is_some() || !self.eval_data.is_empty()
    }

    /// The record as one JSON line (no newline); a step-0 line leaves out the training fields.
    pub fn to_json_line(&self) -> String {
        let line = if self.step == 0 && no_training_fields(self) {
            serde_json::to_string(&BeforeTraining {
                step: 0,
                elapsed_s: self.elapsed_s,
                eval_loss: self.eval_loss,
                eval_ppl: self.eval_ppl,
                eval_data: &self.eval_data,
            })
        } else {
            serde_json::to_string(self)
        };
        line.unwrap_or_default()
    }

    /// The evaluations of the record for a log line: ` eval_loss L ppl P NAME_loss L ppl P ...`
    /// (empty when nothing was evaluated).
    pub fn eval_summary(&self) -> String {
        let mut s = String::new();
        if let Some(l) = self.eval_loss {
            s += &format!(" eval_loss {l:.4} ppl {:.2}", l.exp());
        }
        for (name, e) in &self.eval_data {
            s += &format!(" {name}_loss {:.4} ppl {:.2}", e.loss, e.ppl);
        }
        s
    }
}

/// Parses a JSON-lines log (blank lines skipped); `file` and the 1-based line name errors.
pub fn parse_metrics(text: &str, file: &str) -> Result<Vec<MetricsRecord>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        out.push(
            serde_json::from_str(line).map_err(|e| TrainError::DataRecord {
                file: file.to_string(),
                line: i + 1,
                msg: format!("bad metrics record: {e}"),
            })?,
        );
    }
    Ok(out)
}

/// Writes [`MetricsRecord`]s as JSON lines, flushing after each so a crash loses at most the line
/// being written.
pub struct MetricsWriter<W: Write> {
    out: W,
    name: String,
}

impl<W: Write> MetricsWriter<W> {
    /// A writer to `out`; `name` labels IO errors.
    pub fn new(out: W, name: &str) -> MetricsWriter<W> {
        MetricsWriter {
            out,
            name: name.to_string(),
        }
    }

    /// Appends one record.
    pub fn write(&mut self, rec: &MetricsRecord) -> Result<()> {
        let line = rec.to_json_line();
        let io = |e| TrainError::Io {
            path: self.name.clone(),
            source: e,
        };
        self.out
            .write_all(line.as_bytes())
            .and_then(|_| self.out.write_all(b"\n"))
            .and_then(|_| self.out.flush())
            .map_err(io)
    }

    /// The underlying writer.
    pub fn into_inner(self) -> W {
        self.out
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl MetricsWriter<std::fs::File> {
    /// Opens `path` for appending (created if missing). When resuming from a checkpoint at
    /// `resume_step`, records with a larger step (written after that checkpoint by the interrupted
    /// run) and a partial last line are removed first so the log has no duplicates; pass `None`
    /// for a fresh log, which truncates the file.
    pub fn open(path: &std::path::Path, resume_step: Option<u64>) -> Result<Self> {
        let name = path.display().to_string();
        let io = |e| TrainError::Io {
            path: name.clone(),
            source: e,
        };
        match resume_step {
            None => {
                let f = std::fs::File::create(path).map_err(io)?;
                return Ok(MetricsWriter::new(f, &name));
            }
            Some(step) if path.exists() => {
                let text = String::from_utf8_lossy(&crate::fsio::read(path)?).into_owned();
                // A crash can leave a partial last line: drop it; any other bad line is an error.
                let text = match text.trim_end().rsplit_once('\n') {
                    Some((head, last)) if serde_json::from_str::<MetricsRecord>(last).is_err() => {
                        head.to_string()
                    }
                    None if serde_json::from_str::<MetricsRecord>(text.trim_end()).is_err() => {
                        String::new()
                    }
                    _ => text,
                };
                let kept: String = parse_metrics(&text, &name)?
                    .into_iter()
                    .filter(|r| r.step <= step)
                    .map(|r| r.to_json_line() + "\n")
                    .collect();
                crate::fsio::write_atomic(path, kept.as_bytes())?;
            }
            Some(_) => {}
        }
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io)?;
        Ok(MetricsWriter::new(f, &name))
    }
}
