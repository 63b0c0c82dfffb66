#!/usr/bin/env bash
# The test command of README.md: sets up (scripts/setup.sh), runs every test of the workspace on the
# Vulkan adapter (lavapipe on a machine without a GPU; a missing adapter fails the run), then builds
# the browser app (scripts/build_web.sh) and runs its test in headless Chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --browser
export WGPU_BACKEND="${WGPU_BACKEND:-vulkan}"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
export TINYTUNE_REQUIRE_GPU=1
# The parity tests compare against f32 references: f32 compute even where the device's default
# would be f16 (a GPU with SHADER_F16). The f16 tests choose f16 themselves.
export TINYTUNE_COMPUTE_DTYPE=f32
# The real default model for the parity tests against transformers: required (a test that needs it
# fails under TINYTUNE_REQUIRE_GPU=1 rather than skipping), so a failed download stops here.
if [ -z "${TINYTUNE_SMOLLM2_GGUF:-}" ]; then
    TINYTUNE_SMOLLM2_GGUF="$(bash scripts/fetch_model.sh)" || {
        echo "test.sh: could not fetch the SmolLM2 GGUF (scripts/fetch_model.sh); set TINYTUNE_SMOLLM2_GGUF to a local copy" >&2
        exit 1
    }
    export TINYTUNE_SMOLLM2_GGUF
fi
cargo fmt --all --check
cargo test --workspace
# The parity tests again with the GPU kernel variant (workgroup-memory tiles, split LoRA gradients;
# crates/gpu/src/kernels.rs), which a CPU adapter does not pick by itself: every variant must
# match PEFT. (The kernel tests already run both variants.)
TINYTUNE_KERNELS=gpu cargo test --test train_parity --test model_forward --test model_backward \
    --test train_peft --test prompt_tuning --test prefix_tuning
bash scripts/build_web.sh
echo "wasm: tinytune-wasm builds for wasm32-unknown-unknown"
# The browser app end to end in headless Chromium (WebGPU on SwiftShader): load, train, generate,
# download the adapter; the losses must match the native CLI's (target/debug/tinytune, just built).
node web/tests/browser.test.mjs
