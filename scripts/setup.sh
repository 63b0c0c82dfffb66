#!/usr/bin/env bash
# Installs what tinytune's build and tests need on a Debian 12 machine without a GPU:
# Mesa's lavapipe (CPU Vulkan) from bookworm-backports (Mesa 25, twice as fast as bookworm's 22.3)
# and the wasm32 Rust target. Idempotent: does nothing that is already done.
set -euo pipefail

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

have_lavapipe() {
    ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1 &&
        dpkg-query -W -f='${Version}' mesa-vulkan-drivers 2>/dev/null | grep -qE '^(2[5-9]|[3-9][0-9])\.'
}

if [ -f /etc/debian_version ] && ! have_lavapipe; then
    echo "setup: installing Mesa lavapipe from bookworm-backports" >&2
    if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
        echo "deb http://deb.debian.org/debian bookworm-backports main" | $SUDO tee /etc/apt/sources.list.d/backports.list >/dev/null
    fi
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -t bookworm-backports mesa-vulkan-drivers >/dev/null
fi
if ! ls /usr/share/vulkan/icd.d/*.json >/dev/null 2>&1; then
    echo "setup: warning: no Vulkan driver found; install your GPU's Vulkan driver or Mesa's lavapipe" >&2
fi

if ! rustup target list --installed 2>/dev/null | grep -q wasm32-unknown-unknown; then
    echo "setup: adding the wasm32-unknown-unknown Rust target" >&2
    rustup target add wasm32-unknown-unknown
fi

# With --browser (scripts/test.sh), also what the browser test (web/tests/browser.test.mjs) needs:
# Debian's Chromium (WebGPU on SwiftShader), playwright-core pinned by web/package-lock.json (it
# downloads no browser), and wasm-bindgen-cli at Cargo.lock's wasm-bindgen version
# (scripts/build_web.sh).
if [ "${1:-}" = "--browser" ]; then
    ROOT="$(cd "$(dirname "$0")/.." && pwd)"
    if [ -f /etc/debian_version ] && ! command -v chromium >/dev/null 2>&1; then
        echo "setup: installing Debian's chromium (browser test)" >&2
        $SUDO apt-get update -qq
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    fi
    if ! command -v npm >/dev/null 2>&1; then
        echo "setup: installing Node.js and npm (browser test)" >&2
        $SUDO apt-get update -qq
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
    fi
    PW_WANT="$(sed -n 's/.*"playwright-core": "\(.*\)".*/\1/p' "$ROOT/web/package.json")"
    PW_HAVE="$(sed -n 's/^  "version": "\(.*\)".*/\1/p' "$ROOT/web/node_modules/playwright-core/package.json" 2>/dev/null || true)"
    if [ "$PW_HAVE" != "$PW_WANT" ]; then
        echo "setup: npm ci in web/ (playwright-core $PW_WANT)" >&2
        (cd "$ROOT/web" && npm ci --no-audit --no-fund --loglevel=error)
    fi
    WB_VERSION="$(grep -A1 '^name = "wasm-bindgen"$' "$ROOT/Cargo.lock" | sed -n 's/^version = "\(.*\)"/\1/p')"
    if [ "$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')" != "$WB_VERSION" ]; then
        echo "setup: installing wasm-bindgen-cli $WB_VERSION (a few minutes, once)" >&2
        cargo install wasm-bindgen-cli --version "$WB_VERSION" --locked ||
            cargo install wasm-bindgen-cli --version "$WB_VERSION"
    fi
fi
