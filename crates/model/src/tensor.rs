//! [`HostTensor`]: what every weight reader (safetensors, GGUF, [`crate::ModelSource`]) returns.
//! A leaf module, so the readers share the type without importing each other.

/// A tensor converted to f32 on the host, row-major with a torch shape.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl HostTensor {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.data.len()
    }
}
