#!/usr/bin/env bash
# The broker-core benchmark matrix behind BENCHMARKS.md. Starts a fresh broker per flush policy on
# 127.0.0.1:19092 (admin 19644), runs `sluice bench` for 100 B and 1 KiB records, acks=1 and acks=all,
# 1 and 8 partitions, then a consume run per topic, and prints one JSON object per run.
#   tests/perf/run_matrix.sh [DURATION]   (default 8s per produce run)
# Needs a release build: cargo build --release. Runs only on loopback and stops by itself.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
BIN=target/release/sluice
DURATION=${1:-8s}
DATA=$(mktemp -d /tmp/sluice-bench.XXXXXX)
trap 'kill -9 ${PID:-0} 2>/dev/null || true; rm -rf "$DATA"' EXIT

start() {
    rm -rf "$DATA/data"
    "$BIN" server --data-dir "$DATA/data" --listen 127.0.0.1:19092 --admin-listen 127.0.0.1:19644 "$@" 2>"$DATA/broker.log" &
    PID=$!
    for _ in $(seq 100); do curl -sf 127.0.0.1:19644/health >/dev/null && return; sleep 0.1; done
    echo "broker did not start" >&2; cat "$DATA/broker.log" >&2; exit 1
}
stop() { kill -TERM "$PID"; wait "$PID" || true; }

run() { # policy size acks partitions
    local topic="b-$1-$2-$3-$4"
    printf '{"policy":"%s","record_size":%s,"acks":"%s","partitions":%s,"result":' "$1" "$2" "$3" "$4"
    "$BIN" bench produce --brokers 127.0.0.1:19092 --topic "$topic" --partitions "$4" --record-size "$2" \
        --acks "$3" --duration "$DURATION" --in-flight 16 --batches-per-request "$4" --json 2>/dev/null | tr -d '\n'
    printf '}\n'
}
consume() { # policy size acks partitions
    local topic="b-$1-$2-$3-$4"
    printf '{"policy":"%s","record_size":%s,"consume_topic":"%s","result":' "$1" "$2" "$topic"
    "$BIN" bench consume --brokers 127.0.0.1:19092 --topic "$topic" --duration 5s --json 2>/dev/null | tr -d '\n'
    printf '}\n'
}

for policy in page-cache fsync-before-ack; do
    if [ "$policy" = fsync-before-ack ]; then start --set log.flush.interval.messages=1; else start; fi
    for size in 100 1024; do
        for acks in 1 all; do
            for partitions in 1 8; do run "$policy" "$size" "$acks" "$partitions"; done
        done
    done
    if [ "$policy" = page-cache ]; then
        consume "$policy" 1024 1 8
        consume "$policy" 100 1 8
    fi
    stop
done
