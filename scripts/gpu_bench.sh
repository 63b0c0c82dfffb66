#!/usr/bin/env bash
# Training-step benchmark of the three real configs (random weights, the published shapes), next to
# the H100 PEFT + bitsandbytes QLoRA figures. Needs only a built bench_train binary, so it runs on a
# GPU machine without Rust:
#
#   BENCH_TRAIN=path/to/bench_train bash scripts/gpu_bench.sh [--lavapipe | --full] [OUT.jsonl]
#   bash scripts/gpu_bench.sh --table OUT.jsonl     # only print the table of earlier runs
#
# BENCH_TRAIN defaults to target/release/examples/bench_train (built with cargo when missing and
# cargo is there). Writes one JSON line per run to OUT.jsonl (default bench.jsonl; bench_train's
# own table and any errors go to OUT.log) and prints a Markdown table.
#
# On a real GPU (--full): SmolLM2-135M, Qwen2.5-0.5B and Llama-3.2-1B at 1x256 and 4x512, QLoRA
# (NF4 base; with the device's default compute dtype, then with f32 compute) and LoRA on an f32
# base, LoRA r 8 on all seven projections of every layer, one warm-up and 2 timed steps. Each
# run is capped at BENCH_RUN_TIMEOUT seconds (default 70) and the script stops starting runs after
# BENCH_BUDGET seconds (default 450), so it stays under 9 minutes.
# On lavapipe (detected from the adapter's name, or --lavapipe): SmolLM2-135M at 4x64 only, one
# timed step (defaults 1200 s per run, 2400 s in all).
set -uo pipefail

mode=auto
out=bench.jsonl
for a in "$@"; do
    case "$a" in
        --lavapipe) mode=lavapipe ;;
        --full) mode=full ;;
        --table) mode=table ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        -*) echo "gpu_bench: unknown option $a" >&2; exit 2 ;;
        *) out="$a" ;;
    esac
done
log="${out%.jsonl}.log"

# A numeric or string field of one JSON line (bench_train writes flat objects, keys sorted).
field() {
    sed -n "s/.*\"$2\":\(\"[^\"]*\"\|[^,}]*\).*/\1/p" <<<"$1" | tr -d '"'
}

root="$(cd "$(dirname "$0")/.." && pwd)"
failed=()
start=$SECONDS
if [ "$mode" = table ]; then
    first="$(head -n 1 "$out")"
    adapter="$(field "$first" adapter) | $(field "$first" adapter_type) | $(field "$first" backend)"
    reps="$(field "$first" reps)"
else
    : >"$log"
    bin="${BENCH_TRAIN:-$root/target/release/examples/bench_train}"
    if [ ! -x "$bin" ]; then
        if [ -z "${BENCH_TRAIN:-}" ] && command -v cargo >/dev/null; then
            echo "gpu_bench: building bench_train (release)" >&2
            (cd "$root" && cargo build --release --example bench_train) >&2 || exit 1
        else
            echo "gpu_bench: no bench_train binary at $bin (set BENCH_TRAIN=path)" >&2
            exit 2
        fi
    fi

    adapter="$("$bin" --adapter 2>>"$log")" || {
        echo "gpu_bench: bench_train found no adapter (see $log)" >&2
        exit 1
    }
    if [ "$mode" = auto ]; then
        case "$(echo "$adapter" | tr '[:upper:]' '[:lower:]')" in
            *llvmpipe*|*lavapipe*|*swiftshader*|*"| cpu |"*) mode=lavapipe ;;
            *) mode=full ;;
        esac
    fi
    echo "gpu_bench: adapter $adapter ($mode)" >&2

    # lavapipe compiles every pipeline with LLVM on the CPU (about a minute) before the first step.
    if [ "$mode" = lavapipe ]; then
        configs="smollm2-135m"
        shapes="4x64"
        reps=1
        run_timeout="${BENCH_RUN_TIMEOUT:-1200}"
        budget="${BENCH_BUDGET:-2400}"
    else
        configs="smollm2-135m qwen2.5-0.5b llama3.2-1b"
        shapes="1x256,4x512"
        reps=2
        run_timeout="${BENCH_RUN_TIMEOUT:-70}"
        budget="${BENCH_BUDGET:-450}"
    fi

    : >"$out"
    have_timeout=$(command -v timeout || true)
    # Runs as config:quant:compute (compute empty: the device's default, f16 on a GPU with
    # SHADER_F16): QLoRA of every config first, then LoRA on an f32 base, then (GPU only) QLoRA
    # with f32 compute, so that a spent budget cuts the least wanted rows.
    runs=""
    for cfg in $configs; do runs="$runs $cfg:nf4:"; done
    for cfg in $configs; do runs="$runs $cfg:none:"; done
    if [ "$mode" = full ]; then
        for cfg in $configs; do runs="$runs $cfg:nf4:f32"; done
    fi
    for run in $runs; do
        IFS=: read -r cfg quant compute <<<"$run"
        what="$cfg $quant${compute:+ compute $compute}"
        if [ $((SECONDS - start)) -ge "$budget" ]; then
            failed+=("$what: skipped (the ${budget} s budget was spent)")
            continue
        fi
        echo "gpu_bench: $what $shapes" >&2
        cmd=("$bin" --config "$cfg" --shapes "$shapes" --quant "$quant" --layers all
            --reps "$reps" --json)
        if [ -n "$have_timeout" ]; then
            cmd=(timeout "$run_timeout" "${cmd[@]}")
        fi
        if [ -n "$compute" ]; then
            cmd=(env "TINYTUNE_COMPUTE_DTYPE=$compute" "${cmd[@]}")
        fi
        if ! "${cmd[@]}" >>"$out" 2>>"$log"; then
            failed+=("$what: failed or timed out (see $log)")
        fi
    done
fi

# H100 PEFT + bitsandbytes QLoRA (tok/s at 1x256 / 4x512; peak GiB at 1x256 / 4x512).
h100() {
    case "$1 $2" in
        "smollm2-135m 1x256") echo "625 | 0.6" ;;
        "smollm2-135m 4x512") echo "5823 | 3.7" ;;
        "qwen2.5-0.5b 1x256") echo "811 | 1.5" ;;
        "qwen2.5-0.5b 4x512") echo "7317 | 8.5" ;;
        "llama3.2-1b 1x256") echo "1465 | 2.1" ;;
        "llama3.2-1b 4x512") echo "10708 | 9.8" ;;
        *) echo "- | -" ;;
    esac
}

echo
echo "tinytune on $adapter; LoRA r 8 on every linear of every layer, random weights; $reps timed step(s)."
echo
echo "| model | B×T | base | kernels | tok/s | step s | forward s | host ms/step | dispatches | submits | blocking reads | model GiB | peak GiB | H100 PEFT+bnb tok/s | H100 peak GiB |"
echo "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
while IFS= read -r line; do
    [ -z "$line" ] && continue
    m=$(field "$line" model)
    bt="$(field "$line" b)x$(field "$line" t)"
    q=$(field "$line" quant)
    ref="- | -"
    [ "$q" = nf4 ] && ref=$(h100 "$m" "$bt")
    base=$([ "$q" = nf4 ] && echo "NF4 (QLoRA)" || echo "f32 (LoRA)")
    printf '| %s | %s | %s | %s | %.1f | %.3f | %.3f | %.1f | %s | %s | %s | %.2f | %.2f | %s |\n' \
        "$m" "${bt/x/×}" "$base" "$(field "$line" kernels)" "$(field "$line" tokens_per_s)" "$(field "$line" step_s)" \
        "$(field "$line" forward_s)" "$(field "$line" host_ms_per_step)" \
        "$(field "$line" dispatches_per_step)" "$(field "$line" submits_per_step)" \
        "$(field "$line" blocking_reads_per_step)" \
        "$(awk "BEGIN{print $(field "$line" model_bytes)/1073741824}")" \
        "$(awk "BEGIN{print $(field "$line" peak_bytes)/1073741824}")" "$ref"
done <"$out"
for f in "${failed[@]}"; do
    echo
    echo "- $f"
done
echo
[ "$mode" = table ] || echo "gpu_bench: $(grep -c . "$out") run(s) in $((SECONDS - start)) s; JSON lines in $out, log in $log" >&2
[ ${#failed[@]} -eq 0 ]
