#!/usr/bin/env bash
# Builds the demo page into examples/web/pkg: `bash examples/web/build.sh`,
# then serve examples/web with any static server, e.g.
# `python3 -m http.server -d examples/web 8000`, and open
# http://localhost:8000 in a browser with WebGPU. Needs the wasm32 target and
# wasm-bindgen-cli at Cargo.lock's version (scripts/browser-setup.sh installs both).
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --locked --release --target wasm32-unknown-unknown -p wgpu-loss-web-demo
wasm-bindgen --target web --no-typescript --out-dir examples/web/pkg \
    target/wasm32-unknown-unknown/release/wgpu_loss_web_demo.wasm
echo "built examples/web/pkg; serve examples/web and open index.html"
