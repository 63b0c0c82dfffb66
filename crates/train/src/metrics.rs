//! The training log: one JSON object per line,
//! `{"step", "loss", "lr", "grad_norm", "tokens_per_s", "elapsed_s", "eval_loss"?, "eval_ppl"?}`.
//! Non-finite numbers (a diverged loss) are written as `null` and read back as NaN. Time is
//! measured by the caller (`std::time::Instant` does not exist in wasm32).

use std::io::Write;

use serde::{Deserialize, Deserializer, Serialize};

use crate::{Result, TrainError};

fn nan_if_null<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// One line of the training log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricsRecord {
    /// Optimizer steps done (1 after the first update).
    pub step: u64,
    /// Mean training loss of the step (nats per target token).
    #[serde(deserialize_with = "nan_if_null")]
    pub loss: f64,
    /// Learning rate used by the step.
    #[serde(deserialize_with = "nan_if_null")]
    pub lr: f64,
    /// Global gradient norm before clipping.
    #[serde(deserialize_with = "nan_if_null")]
    pub grad_norm: f64,
    #[serde(deserialize_with = "nan_if_null")]
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
}

impl MetricsRecord {
    /// Adds an evaluation result (`eval_ppl = exp(eval_loss)`).
    pub fn with_eval(mut self, eval_loss: f64) -> MetricsRecord {
        self.eval_loss = Some(eval_loss);
        self.eval_ppl = Some(eval_loss.exp());
        self
    }

    /// The record as one JSON line (no newline).
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
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
