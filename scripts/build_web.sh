#!/usr/bin/env bash
# Builds the browser app's module: crates/wasm for wasm32 (release) and its JS bindings + TypeScript
# declarations (wasm-bindgen --target web) into web/pkg, which web/index.html's worker imports.
# Needs the wasm32-unknown-unknown target and wasm-bindgen-cli at Cargo.lock's wasm-bindgen version
# (scripts/setup.sh installs both).
set -euo pipefail
cd "$(dirname "$0")/.."
want="$(grep -A1 '^name = "wasm-bindgen"$' Cargo.lock | sed -n 's/^version = "\(.*\)"/\1/p')"
have="$(wasm-bindgen --version 2>/dev/null | awk '{print $2}' || true)"
if [ "$have" != "$want" ]; then
    echo "build_web: wasm-bindgen-cli $want is needed (found: ${have:-none}); run bash scripts/setup.sh" >&2
    exit 1
fi
cargo build --release --target wasm32-unknown-unknown -p tinytune-wasm
rm -rf web/pkg
wasm-bindgen --target web --out-dir web/pkg target/wasm32-unknown-unknown/release/tinytune_wasm.wasm
echo "build_web: web/pkg ($(du -h web/pkg/tinytune_wasm_bg.wasm | cut -f1) wasm); serve with: cd web && python3 -m http.server 8000"
