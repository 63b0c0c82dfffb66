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
