#!/usr/bin/env bash
# Paired benchmark runs on fresh brokers (BENCHMARKS.md, 2026-11-30): on this VM the page cache's
# speed moves by 2x from one hour to the next, so a figure is compared only with one taken minutes
# apart on the same machine.
#
#   tests/perf/pairs.sh mirror preserve|rename     # sluice bench produce into a source, then the mirror copies it
#   tests/perf/pairs.sh transform BIN WASM         # identity throughput, 2 M records of 100 B (BIN: a sluice binary)
#   tests/perf/pairs.sh deploy BIN WASM            # deploy -> first output, cold (compiles) then warm
#   tests/perf/pairs.sh consume BIN SIZE PARTS N   # rdkafka_performance: produce N records, then one C consumer reads them
#   tests/perf/pairs.sh latency BIN RATE SIZE      # sluice bench produce --rate RATE (records/s), acks=all, 20 s
#
# rdkafka_performance comes from tests/perf/build_rdkafka_performance.sh (RDKAFKA_PERF overrides).
# Run alternately with two binaries (e.g. a worktree build of an older commit) to compare them.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
BIN_DEFAULT=target/release/sluice

fresh() { # DIR PORT ADMIN_PORT BIN
    pkill -f "server --data-dir $1" 2>/dev/null || true
    sleep 0.5
    rm -rf "$1"
    nohup "$4" server --data-dir "$1" --listen "127.0.0.1:$2" --admin-listen "127.0.0.1:$3" > "$1.log" 2>&1 &
    sleep 1.5
}
field() { python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }

case "${1:-}" in
mirror)
    mode=$2
    fresh /tmp/pairs-src 29092 29644 $BIN_DEFAULT
    fresh /tmp/pairs-dst 29192 29744 $BIN_DEFAULT
    produce=$($BIN_DEFAULT bench produce --brokers 127.0.0.1:29092 --admin-url http://127.0.0.1:29644 --topic mb --partitions 4 \
        --record-size 1024 --records 1000000 --acks 1 --connections 2 --json 2>/dev/null | tail -1 | field mb_per_s)
    sync; sleep 2
    mirror=$(python3 tests/perf/mirror_perf.py throughput --source 127.0.0.1:29092 --target-admin http://127.0.0.1:29744 --topic mb --mode "$mode" \
        | python3 -c "import json,sys; d=json.load(sys.stdin); print(round(d['bytes']/d['seconds']/1e6,1))")
    echo "{\"pair\": \"mirror\", \"mode\": \"$mode\", \"produce_mb_per_s\": $produce, \"mirror_mb_per_s\": $mirror}"
    pkill -f "server --data-dir /tmp/pairs-" || true
    ;;
transform)
    fresh /tmp/pairs-tp 29092 29644 "$2"
    python3 tests/perf/transform_perf.py throughput --brokers 127.0.0.1:29092 --admin http://127.0.0.1:29644 --wasm "$3" --records 2000000
    pkill -f "server --data-dir /tmp/pairs-tp" || true
    ;;
deploy)
    fresh /tmp/pairs-dep 29392 29944 "$2"
    for run in cold warm; do
        echo -n "$run "
        python3 tests/perf/transform_perf.py deploy --brokers 127.0.0.1:29392 --admin http://127.0.0.1:29944 --wasm "$3"
    done
    pkill -f "server --data-dir /tmp/pairs-dep" || true
    ;;
consume)
    perf=${RDKAFKA_PERF:-$(tests/perf/build_rdkafka_performance.sh)}
    bin=$2 size=$3 parts=$4 count=$5
    fresh /tmp/pairs-cons 29492 29494 "$bin"
    "$bin" topic create ct -p "$parts" --brokers 127.0.0.1:29492 > /dev/null
    partitions=$(seq -s ' ' 0 $((parts - 1)) | sed 's/\([0-9]*\)/-p \1/g')
    # Producer: the same C client, spreading records over the partitions, acks=1.
    "$perf" -P -t ct -b 127.0.0.1:29492 -s "$size" -c "$count" -a 1 -q -X linger.ms=5 -X batch.size=1000000 \
        -X queue.buffering.max.kbytes=1048576 2>&1 | grep -E 'messages .* produced|produced' | tail -1
    sync; sleep 2
    # shellcheck disable=SC2086
    "$perf" -C -t ct -b 127.0.0.1:29492 $partitions -o beginning -c "$count" -q -X fetch.max.bytes=52428800 \
        -X fetch.message.max.bytes=16777216 2>&1 | grep -E 'consumed' | tail -1
    pkill -f "server --data-dir /tmp/pairs-cons" || true
    ;;
latency)
    bin=$2 rate=$3 size=$4
    fresh /tmp/pairs-lat 29592 29594 "$bin"
    "$bin" bench produce --brokers 127.0.0.1:29592 --admin-url http://127.0.0.1:29594 --topic lat --partitions 8 --record-size "$size" \
        --rate "$rate" --duration 20s --acks all --batch-bytes 16384 --json 2>/dev/null | tail -1
    pkill -f "server --data-dir /tmp/pairs-lat" || true
    ;;
*)
    sed -n '2,16p' "$0"
    exit 2
    ;;
esac
