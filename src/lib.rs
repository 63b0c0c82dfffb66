//! tinytune: QLoRA fine-tuning of small language models on WebGPU.
//!
//! This facade re-exports the workspace crates so integration tests and examples live at the root.

pub use tinytune_gpu as gpu;
pub use tinytune_model as model;
pub use tinytune_reference as reference;
pub use tinytune_train as train;
