#!/usr/bin/env bash
# The one command that runs every test: the workspace's Rust tests, then the end-to-end suite in tests/ with
# real Kafka clients (confluent-kafka, kafka-python, kcat) against the release binary.
# Written for a fresh Debian machine, run as root. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

export DEBIAN_FRONTEND=noninteractive
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
# Debian's own python3 refuses `pip install` outside a venv (PEP 668); this is a throwaway test machine.
export PIP_BREAK_SYSTEM_PACKAGES=1

phase() { printf '\n==> [%4ss] %s\n' "$SECONDS" "$*"; }

phase "rustup target add wasm32-wasip2 (toolchain auto-install is off)"
rustup target add wasm32-wasip2

phase "kcat"
if ! command -v kcat >/dev/null 2>&1; then
    apt-get update -qq
    apt-get install -y -qq kcat
fi
kcat -V | head -n 1

phase "python test dependencies (tests/requirements.txt)"
python3 -m pip install -q -r tests/requirements.txt

phase "cargo build --release --workspace"
cargo build --release --workspace

phase "cargo test --workspace --release"
cargo test --workspace --release

phase "end-to-end suite: pytest tests/"
SLUICE_BIN=target/release/sluice python3 -m pytest tests/ -q

phase "all tests passed"
