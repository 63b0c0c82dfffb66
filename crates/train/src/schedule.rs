//! Learning-rate schedules: linear warmup followed by cosine / linear decay or a constant,
//! computed in `f64` exactly like transformers' `get_cosine_schedule_with_warmup`,
//! `get_linear_schedule_with_warmup` and `get_constant_schedule_with_warmup` (pinned in
//! `tests/train_data.rs` with values printed by transformers).
//!
//! `step` is the number of optimizer steps already taken: the update of step `k` (0-based) uses
//! [`Schedule::lr`]`(k)`, which is what `scheduler.get_last_lr()` reports after `k` calls of
//! `scheduler.step()` in a transformers `Trainer` loop (`optimizer.step(); scheduler.step()`).
//! So the very first update uses `lr(0) = 0` when there is warmup, as in transformers.

use serde::{Deserialize, Serialize};

use crate::{Result, TrainError};

/// Shape of the schedule after warmup.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    /// `get_constant_schedule_with_warmup`.
    Constant,
    /// `get_linear_schedule_with_warmup`: to 0 at `total_steps`.
    Linear,
    /// `get_cosine_schedule_with_warmup(num_cycles)`; transformers' default `num_cycles` is 0.5
    /// (half a cosine wave, from 1 to 0 at `total_steps`).
    Cosine { num_cycles: f64 },
}

impl ScheduleKind {
    /// Cosine with transformers' default `num_cycles = 0.5`.
    pub const COSINE: ScheduleKind = ScheduleKind::Cosine { num_cycles: 0.5 };

    /// Parses `"constant"`, `"linear"` or `"cosine"` (transformers' `lr_scheduler_type` names).
    pub fn parse(name: &str) -> Result<ScheduleKind> {
        match name {
            "constant" | "constant_with_warmup" => Ok(ScheduleKind::Constant),
            "linear" => Ok(ScheduleKind::Linear),
            "cosine" => Ok(ScheduleKind::COSINE),
            _ => Err(TrainError::Config(format!(
                "unknown LR schedule {name:?} (expected constant, linear or cosine)"
            ))),
        }
    }
}

/// A learning-rate schedule.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub kind: ScheduleKind,
    /// Peak learning rate (the optimizer's `lr`).
    pub base_lr: f64,
    pub warmup_steps: u64,
    /// `num_training_steps` (unused by `Constant`).
    pub total_steps: u64,
}

/// transformers' `TrainingArguments.get_warmup_steps` for a ratio: `ceil(total_steps * ratio)`.
pub fn warmup_steps_from_ratio(total_steps: u64, ratio: f64) -> u64 {
    (total_steps as f64 * ratio).ceil() as u64
}

impl Schedule {
    /// A schedule; errors on a negative or non-finite `base_lr`.
    pub fn new(
        kind: ScheduleKind,
        base_lr: f64,
        warmup_steps: u64,
        total_steps: u64,
    ) -> Result<Schedule> {
        if !(base_lr.is_finite() && base_lr >= 0.0) {
            return Err(TrainError::Config(format!(
                "learning rate must be >= 0, got {base_lr}"
            )));
        }
        Ok(Schedule {
            kind,
            base_lr,
            warmup_steps,
            total_steps,
        })
    }

    /// The multiplier of `base_lr` after `step` optimizer steps (transformers' `lr_lambda`).
    pub fn factor(&self, step: u64) -> f64 {
        let w = self.warmup_steps;
        if step < w {
            return step as f64 / w.max(1) as f64;
        }
        let t = self.total_steps;
        match self.kind {
            ScheduleKind::Constant => 1.0,
            ScheduleKind::Linear => {
                let num = t as f64 - step as f64; // may be negative past the end; clamped below
                (num / t.saturating_sub(w).max(1) as f64).max(0.0)
            }
            ScheduleKind::Cosine { num_cycles } => {
                let progress = (step - w) as f64 / t.saturating_sub(w).max(1) as f64;
                let f = 0.5 * (1.0 + (std::f64::consts::PI * num_cycles * 2.0 * progress).cos());
                f.max(0.0)
            }
        }
    }

    /// Learning rate of the update after `step` optimizer steps: `base_lr * factor(step)`.
    pub fn lr(&self, step: u64) -> f64 {
        self.base_lr * self.factor(step)
    }
}
