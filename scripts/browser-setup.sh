#!/usr/bin/env bash
# Installs what the browser suite needs, where it is missing: Chromium and
# ChromeDriver (Debian packages), the wasm32 target, and wasm-bindgen-cli at
# exactly the wasm-bindgen version in Cargo.lock (the one place it is pinned).
set -euo pipefail
cd "$(dirname "$0")/.."

sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi

if [ ! -x /usr/lib/chromium/chromium ] || ! command -v chromedriver >/dev/null 2>&1; then
    echo "Installing Chromium and ChromeDriver."
    $sudo apt-get update
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends chromium chromium-driver
fi

if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
    rustup target add wasm32-unknown-unknown
fi

version=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)
if [ -z "$version" ]; then
    echo "Cargo.lock names no wasm-bindgen version" >&2
    exit 1
fi
installed=$(wasm-bindgen-test-runner --version 2>/dev/null | awk '{print $2}' || true)
if [ "$installed" != "$version" ]; then
    echo "Installing wasm-bindgen-cli $version (Cargo.lock's wasm-bindgen; about 4.5 minutes on 2 cores)."
    # Not --locked: its lock names a webpki-roots version the registry no longer has.
    cargo install wasm-bindgen-cli --version "$version"
fi
