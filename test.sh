#!/usr/bin/env bash
# The one command that runs every test: the end-to-end suite in tests/ with real Kafka clients
# (confluent-kafka, kafka-python, kcat) against the release binary, the workspace's Rust tests (compiled
# in the background meanwhile), and every fuzz target in fuzz/ for a minute (in the background).
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

# The suite runs a copy of the binary `cargo build` made: `cargo test --workspace` (below, in the
# background) links target/release/sluice again with test-only features unified across the workspace
# (sluice-wasm's test-host-imports), which is not the broker users run, and replaces it mid-suite.
e2e_bin="$(mktemp -d)/sluice"
cp target/release/sluice "$e2e_bin"

# Beside the end-to-end suite, which spends much of its time waiting on brokers, clients and databases,
# two background jobs take the idle CPU at the lowest priority: first the Rust tests are compiled
# (`cargo test --no-run`; they run after the suite, at normal priority, because several measure
# time), then the fuzz job (install cargo-fuzz once, build the targets, run each for 60 s:
# fuzz/run.sh). Each costs the suite nearly nothing and the whole run is shorter by their length. The
# fuzzers' per-input hang limit is raised to 60 s, because a starved fuzzer can be descheduled for
# seconds; a real hang never ends and still fails.
phase "background: compile the Rust tests, then the fuzz job (logs printed at the end)"
tests_log="$(mktemp)"
fuzz_log="$(mktemp)"
# setsid: process groups of their own, so that the trap below stops cargo and the fuzzers with them.
nice -n 19 setsid bash -c '
    set -euo pipefail
    cargo test --workspace --release --no-run
    echo "Rust tests compiled in ${SECONDS} s"
' >"$tests_log" 2>&1 &
tests_pid=$!
nice -n 19 setsid bash -c '
    set -euo pipefail
    while kill -0 "$1" 2>/dev/null; do sleep 2; done
    started=$SECONDS
    if ! cargo fuzz --version >/dev/null 2>&1; then
        cargo install cargo-fuzz --locked --version 0.13.2
    fi
    FUZZ_INPUT_TIMEOUT=60 fuzz/run.sh
    echo "fuzz job took $((SECONDS - started)) s after the Rust tests were compiled"
' fuzz "$tests_pid" >"$fuzz_log" 2>&1 &
fuzz_pid=$!
# A failing stage below exits the script; the background jobs must not outlive it.
trap 'kill -- -"$tests_pid" -"$fuzz_pid" 2>/dev/null || true' EXIT

phase "end-to-end suite: pytest tests/ (the background jobs run beside it)"
pytest_status=0
SLUICE_BIN="$e2e_bin" python3 -m pytest tests/ -q --durations=15 || pytest_status=$?
[ "$pytest_status" -eq 0 ] || { echo "the end-to-end suite failed (exit $pytest_status)" >&2; exit "$pytest_status"; }

phase "Rust tests: waiting for their compilation"
tests_status=0
wait "$tests_pid" || tests_status=$?
tail -n 5 "$tests_log"
[ "$tests_status" -eq 0 ] || { cat "$tests_log"; echo "compiling the Rust tests failed (exit $tests_status)" >&2; exit "$tests_status"; }

phase "cargo test --workspace --release"
# Rust's test harness has no per-test timeout; a hung test must fail this run, not run into CI's limit.
# The harness names a test running over 60 s above, so the hung one is in the log.
status=0
timeout --kill-after=30 1800 cargo test --workspace --release || status=$?
if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
    echo "cargo test ran over 30 minutes: a test hangs (see 'has been running for over 60 seconds' above)" >&2
fi
[ "$status" -eq 0 ] || exit "$status"

phase "fuzz job: waiting for it to finish"
fuzz_status=0
wait "$fuzz_pid" || fuzz_status=$?
cat "$fuzz_log"
[ "$fuzz_status" -eq 0 ] || { echo "the fuzz job failed (exit $fuzz_status); its log is above" >&2; exit "$fuzz_status"; }

phase "all tests passed"
