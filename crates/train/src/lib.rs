//! Trainer loop, data batching, schedules, checkpoints and PEFT adapter IO for tinytune.
//! Filled by the trainer issue; the optimizer kernel it will drive is `tinytune_gpu::ops::optim`.

/// Errors of the train crate.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Model(#[from] tinytune_model::ModelError),
}
