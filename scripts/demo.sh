#!/usr/bin/env bash
# The main job of README.md, as far as it exists today: set up, then run the GPU core on this machine —
# the device report, NF4 quantization of a safetensors file into bitsandbytes' state-dict layout (and back),
# a forward pass of the default model on an NF4 base, and the kernel benchmark table. Fine-tuning arrives
# with `tinytune train`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export WGPU_BACKEND="${WGPU_BACKEND:-vulkan}"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
cargo build --release -q -p tinytune-cli
tt=target/release/tinytune
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

echo "== tinytune info"
"$tt" info
echo
echo "== tinytune quantize (tests/fixtures/bnb/quantize_in.safetensors: F32, F16 and BF16 weights)"
"$tt" quantize tests/fixtures/bnb/quantize_in.safetensors "$out/nf4.safetensors"
"$tt" quantize --dequantize tests/fixtures/bnb/quantize_in.safetensors "$out/roundtrip.safetensors"
echo
echo "== tinytune logits on the default model (SmolLM2-135M-Instruct, NF4 base)"
gguf="$(bash scripts/fetch_model.sh)"
"$tt" logits --model "$gguf" --prompt "The capital of France is" --out "$out/logits.safetensors"
echo
echo "== kernel benchmark (tiny shapes on a CPU adapter; --full for the large ones)"
cargo run --release -q --example bench_kernels -- "$@"
