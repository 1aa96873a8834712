#!/usr/bin/env bash
# The one command that runs every test: the workspace's Rust tests, every fuzz target in fuzz/ for a minute,
# then the end-to-end suite in tests/ with real Kafka clients (confluent-kafka, kafka-python, kcat) against the
# release binary.
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

phase "database servers for the connector tests (PostgreSQL, MariaDB; the tests start their own instances)"
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || [ ! -x /usr/sbin/mariadbd ] || ! command -v mariadb-install-db >/dev/null 2>&1; then
    apt-get update -qq
    apt-get install -y -qq postgresql mariadb-server mariadb-client
fi
ls /usr/lib/postgresql/*/bin/initdb | head -n 1
/usr/sbin/mariadbd --version

phase "python test dependencies (tests/requirements.txt)"
python3 -m pip install -q -r tests/requirements.txt

phase "cargo build --release --workspace"
cargo build --release --workspace

phase "cargo test --workspace --release"
# Rust's test harness has no per-test timeout; a hung test must fail this run, not run into CI's limit.
# The harness names a test running over 60 s above, so the hung one is in the log.
status=0
timeout --kill-after=30 1800 cargo test --workspace --release || status=$?
if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
    echo "cargo test ran over 30 minutes: a test hangs (see 'has been running for over 60 seconds' above)" >&2
fi
[ "$status" -eq 0 ] || exit "$status"

phase "cargo-fuzz (installed once)"
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked --version 0.13.2
fi

phase "fuzz: every target for 60 s on its committed seeds (fuzz/run.sh)"
fuzz/run.sh

phase "end-to-end suite: pytest tests/"
SLUICE_BIN=target/release/sluice python3 -m pytest tests/ -q

phase "all tests passed"
