//! wasm-bindgen API of tinytune for browsers. For now: open the browser's WebGPU device and
//! report the adapter, so the GPU core is proven to compile and link for wasm32. The typed training
//! API arrives with the browser issue.

use wasm_bindgen::prelude::*;

/// Opens WebGPU through tinytune's runtime and returns a one-line description of the adapter,
/// or a `JsError` saying why WebGPU is unavailable.
#[wasm_bindgen(js_name = adapterInfo)]
pub async fn adapter_info() -> Result<String, JsError> {
    let gpu = tinytune_gpu::Gpu::new(tinytune_gpu::GpuOptions::default())
        .await
        .map_err(|e| JsError::new(&e.to_string()))?;
    Ok(format!(
        "{} | max buffer {} B | max storage binding {} B | shaders {}",
        gpu.adapter,
        gpu.limits.max_buffer_size,
        gpu.limits.max_storage_buffer_binding_size,
        tinytune_gpu::shaders::SHADERS.len()
    ))
}
