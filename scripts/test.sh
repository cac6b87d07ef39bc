#!/usr/bin/env bash
# The README's test command: the native suite on whatever adapter wgpu finds
# (lavapipe on a machine without a GPU), then the browser suite in headless
# Chromium over its WebGPU adapter. Installs the browser tools it lacks
# (scripts/browser-setup.sh). Each stage prints its time.
set -euo pipefail
cd "$(dirname "$0")/.."

stage() {
    local name="$1"
    shift
    local start=$SECONDS
    echo "::: $name"
    "$@"
    echo "::: $name took $((SECONDS - start)) s"
}

stage "native tests" cargo test --locked
# wgpu-loss-burn is outside the default members (a plain build of the
# library never compiles burn); its tests run here, against burn's own
# losses and autodiff on the same adapter.
stage "burn tests (wgpu-loss-burn)" cargo test --locked -p wgpu-loss-burn
stage "browser setup" bash scripts/browser-setup.sh
stage "browser tests" env \
    WASM_BINDGEN_TEST_WEBDRIVER_JSON="$PWD/scripts/webdriver.json" \
    WASM_BINDGEN_TEST_TIMEOUT=600 \
    cargo test --locked --target wasm32-unknown-unknown -p wgpu-loss --test web
stage "demo page build" bash examples/web/build.sh
stage "demo page in headless Chromium" python3 examples/web/check_page.py 300x1001
