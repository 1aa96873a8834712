#!/usr/bin/env bash
# Replication throughput: acks=all produce into RF=1 and RF=3 topics of one 3-node cluster on this
# machine (three broker processes and the load generator share its cores). Usage:
#   tests/bench_cluster.sh [seconds] [record-size] [in-flight]
#   TOPICS="3 1" tests/bench_cluster.sh      # which replication factors, in order (default "1 3")
# Prints one `sluice bench produce` summary per topic. See BENCHMARKS.md for results.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${SLUICE_BIN:-target/release/sluice}
SECS=${1:-8}
SIZE=${2:-1024}
INFLIGHT=${3:-16}
DIR=$(mktemp -d /tmp/sluice-bench-cluster.XXXX)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$DIR"' EXIT
V=1@127.0.0.1:39093,2@127.0.0.1:39193,3@127.0.0.1:39293
for i in 1 2 3; do
    "$BIN" server --node-id "$i" --controller-voters "$V" --data-dir "$DIR/n$i" \
        --listen "127.0.0.1:3${i}092" --admin-listen "127.0.0.1:3${i}644" > "$DIR/n$i.log" 2>&1 &
done
export SLUICE_BROKERS=127.0.0.1:31092,127.0.0.1:32092,127.0.0.1:33092 SLUICE_ADMIN_URL=http://127.0.0.1:31644
for _ in $(seq 150); do [ "$("$BIN" cluster info 2>/dev/null | grep -c ' live$')" -ge 3 ] && break; sleep 0.2; done
"$BIN" cluster info
# CPU seconds (user + system) the three brokers have used so far.
broker_cpu() {
    local ticks=0 pid
    for pid in $(jobs -p); do ticks=$(( ticks + $(awk '{print $14 + $15}' "/proc/$pid/stat") )); done
    echo "scale=2; $ticks / $(getconf CLK_TCK)" | bc
}
for rf in ${TOPICS:-1 3}; do
    "$BIN" topic create "rf$rf" --partitions 8 --replication-factor "$rf" --config min.insync.replicas=$(( rf > 1 ? 2 : 1 ))
    sleep 1
    before=$(broker_cpu)
    "$BIN" bench produce --topic "rf$rf" --record-size "$SIZE" --duration "${SECS}s" --acks all --in-flight "$INFLIGHT"
    echo "  broker CPU s   $(echo "$(broker_cpu) - $before" | bc) (three brokers)"
    # Each run starts with no dirty pages of the one before: deleting the topic drops its files
    # (and their unwritten pages), so the next run is not measured while the kernel writes back
    # gigabytes of the previous one.
    "$BIN" topic delete "rf$rf" > /dev/null
    sync
    sleep 1
done
