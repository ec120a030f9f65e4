#!/usr/bin/env bash
# The test command (README): installs what the tests need, then runs every test in the workspace.
#   - the wasm32-wasip1 target (rustup's auto-install may be off: RUSTUP_AUTO_INSTALL=0)
#   - Python packages pinned in models/requirements.txt (to fetch public models and make fixtures)
#   - the public models (silero VAD, PP-OCR) with their ONNX Runtime reference outputs
#   - the thumbv7em-none-eabihf target and qemu-system-arm, to run the firmware under QEMU
#   - cargo-deny (licenses, bans, sources) and clippy with warnings denied
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

toolchain=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)
step "Rust $toolchain with the wasm32-wasip1 target"
if ! rustup target list --installed --toolchain "$toolchain" 2>/dev/null | grep -qx wasm32-wasip1; then
  rustup toolchain install "$toolchain" --profile minimal --component rustfmt,clippy
  rustup target add wasm32-wasip1 --toolchain "$toolchain"
fi

step "thumbv7em-none-eabihf target and llvm-tools (firmware)"
if ! rustup target list --installed --toolchain "$toolchain" 2>/dev/null | grep -qx thumbv7em-none-eabihf; then
  rustup target add thumbv7em-none-eabihf --toolchain "$toolchain"
fi
rustup component list --installed --toolchain "$toolchain" 2>/dev/null | grep -q '^llvm-tools' \
  || rustup component add llvm-tools --toolchain "$toolchain"

step "qemu-system-arm (runs the firmware image in tests)"
if ! command -v qemu-system-arm >/dev/null; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends qemu-system-arm
fi

step "Python packages (models/requirements.txt)"
if ! python3 -c 'import onnx, onnxruntime, sklearn, skl2onnx, tritonclient.http' 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check -r models/requirements.txt
fi

step "Public models (silero VAD, PP-OCR) and their ONNX Runtime reference outputs"
python3 models/fetch_public_models.py

step "Firmware board images (QEMU mps2-an386, nRF52840-DK) and their sizes"
bash firmware/build-boards.sh

step "Supply chain: cargo deny check licenses bans sources (deny.toml)"
if ! command -v cargo-deny >/dev/null; then
  cargo install cargo-deny --locked --version 0.20.2 --quiet
fi
cargo deny --log-level error check licenses bans sources
# The RustSec advisory database lives on GitHub, which these machines cannot reach; where it can
# be fetched, run `cargo deny check advisories` too.

step "cargo clippy --workspace --all-targets (warnings are errors)"
rustup component list --installed --toolchain "$toolchain" 2>/dev/null | grep -q '^clippy' \
  || rustup component add clippy --toolchain "$toolchain"
cargo clippy --workspace --all-targets --locked --quiet -- -D warnings

step "cargo test --workspace"
cargo test --workspace --locked "$@"
