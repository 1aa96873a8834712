#!/usr/bin/env bash
# Builds every fuzz target and runs each for FUZZ_SECONDS (default 60) on top of its committed seeds,
# two at a time (the machine has two cores). Prints the executions each target ran; exits non-zero if
# any target crashed, hung (10 s per input, FUZZ_INPUT_TIMEOUT), ran out of memory (2 GiB) or failed to start. A crashing
# input is kept under fuzz/artifacts/<target>/ and its log tail printed; reproduce it with
#   fuzz/target/<host>/release/<target> fuzz/artifacts/<target>/<file>
# New inputs the fuzzer finds go to a scratch corpus that is deleted afterwards: the seeds stay as
# committed (regenerate them with fuzz/capture_seeds.py). regressions/<target>/ holds inputs that once
# crashed a target whose fix only shows with overflow checks on; they are replayed on every run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

SECONDS_PER_TARGET="${FUZZ_SECONDS:-60}"
# Seconds one input may take before libFuzzer calls it a hang (wall clock; test.sh raises it because
# it runs this job at the lowest CPU priority beside other tests).
INPUT_TIMEOUT="${FUZZ_INPUT_TIMEOUT:-10}"
TARGETS=(request_decoder record_batch log_recovery admin_json)
# cargo-fuzz passes nightly-only flags; the pinned stable toolchain accepts them with RUSTC_BOOTSTRAP.
export RUSTC_BOOTSTRAP=1

# -s none: no AddressSanitizer (the code under test forbids unsafe, and ASan halves the executions);
# -a: debug assertions, so integer overflow panics instead of wrapping silently.
cargo fuzz build -s none -a -O
bin_dir="target/$(rustc -vV | sed -n 's/^host: //p')/release"

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

run_target() {
    local target="$1" extra=()
    mkdir -p "$scratch/$target" "artifacts/$target"
    # Inputs that once crashed a target are replayed with the seeds before any mutation.
    [[ -d "regressions/$target" ]] && extra+=("regressions/$target")
    [[ -f "dicts/$target.dict" ]] && extra+=("-dict=dicts/$target.dict")
    set +e
    "$bin_dir/$target" "$scratch/$target" "seeds/$target" "${extra[@]}" \
        -max_total_time="$SECONDS_PER_TARGET" -timeout="$INPUT_TIMEOUT" -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="artifacts/$target/" >"$scratch/$target.log" 2>&1
    echo $? >"$scratch/$target.rc"
    set -e
}

for ((i = 0; i < ${#TARGETS[@]}; i += 2)); do
    run_target "${TARGETS[i]}" &
    if ((i + 1 < ${#TARGETS[@]})); then run_target "${TARGETS[i + 1]}" & fi
    wait
done

failed=0
for target in "${TARGETS[@]}"; do
    rc="$(cat "$scratch/$target.rc")"
    runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$scratch/$target.log")"
    corpus="$(find "$scratch/$target" -type f | wc -l)"
    if [[ "$rc" == 0 ]]; then
        printf 'fuzz %-16s %10s executions in %ss, 0 crashes (%s new inputs)\n' "$target" "${runs:-?}" "$SECONDS_PER_TARGET" "$corpus"
    else
        failed=1
        printf 'fuzz %-16s FAILED (exit %s) after %s executions; log tail:\n' "$target" "$rc" "${runs:-?}"
        grep -v '^#' "$scratch/$target.log" | tail -n 40
        ls -1 "artifacts/$target/" 2>/dev/null | sed 's/^/    artifact: /'
    fi
done
exit "$failed"
