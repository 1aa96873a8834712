"""Failover time: how long an idempotent acks=all producer cannot write when the leader of its
partition is killed with SIGKILL (or, with STOP=term, stopped with SIGTERM: a graceful stop, which
runs the controlled shutdown unless BROKER_SETTINGS=controlled.shutdown.enable=false). Three `sluice server` processes on this machine, one RF=3 topic
(min.insync.replicas=2); each round kills the current leader, measures the time from the kill to the
first acknowledgement of a record produced after it, restarts the killed broker and waits until it is
back in the ISR. Usage:

    python3 tests/bench_failover.py [rounds] [session-timeout-ms] [heartbeat-interval-ms]

(session and heartbeat default to the broker's defaults, 9000 and 500 ms.) PRODUCER_SETTINGS="k=v,k=v" adds
librdkafka settings to the producer's (e.g. `reconnect.backoff.max.ms=1000` or `debug=metadata`);
BROKER_SETTINGS="k=v,k=v" adds broker settings. Each round also reports the worst produce-to-ack
latency of the records produced from 0.5 s before the kill to 5 s after it (what a client waited).
Each round prints when each step of the failover became visible on a surviving broker.

Not a test (no assertion on time): see BENCHMARKS.md for results."""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import json

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

BIN = os.environ.get("SLUICE_BIN", "target/release/sluice")


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    session_ms = int(sys.argv[2]) if len(sys.argv) > 2 else 9000
    heartbeat_ms = int(sys.argv[3]) if len(sys.argv) > 3 else 500
    work = tempfile.mkdtemp(prefix="sluice-failover-")
    voters = "1@127.0.0.1:38093,2@127.0.0.1:38193,3@127.0.0.1:38293"
    procs: dict[int, subprocess.Popen] = {}
    graceful = os.environ.get("STOP", "kill") == "term"
    broker_settings = [kv for kv in os.environ.get("BROKER_SETTINGS", "").split(",") if kv]

    def start(node: int) -> None:
        log = open(f"{work}/n{node}.log", "ab")
        procs[node] = subprocess.Popen(
            [BIN, "server", "--node-id", str(node), "--controller-voters", voters, "--data-dir", f"{work}/n{node}",
             "--listen", f"127.0.0.1:38{node}92", "--admin-listen", f"127.0.0.1:38{node}44",
             "--set", f"broker.session.timeout.ms={session_ms}", "--set", f"broker.heartbeat.interval.ms={heartbeat_ms}",
             *[arg for kv in broker_settings for arg in ("--set", kv)]],
            stdout=log, stderr=log)

    for node in (1, 2, 3):
        start(node)
    bootstrap = ",".join(f"127.0.0.1:38{n}92" for n in (1, 2, 3))
    admin = AdminClient({"bootstrap.servers": bootstrap})
    time.sleep(3)
    admin.create_topics([NewTopic("failover", 1, 3, config={"min.insync.replicas": "2"})])["failover"].result(30)

    def partition_state():
        md = admin.list_topics("failover", timeout=10).topics["failover"].partitions[0]
        return md.leader, sorted(md.isrs)

    acked: list[tuple[float, float]] = []  # (produced, acknowledged)
    lock = threading.Lock()
    # PRODUCER_SETTINGS="reconnect.backoff.max.ms=1000,debug=metadata": more librdkafka settings.
    extra = dict(kv.split("=", 1) for kv in os.environ.get("PRODUCER_SETTINGS", "").split(",") if kv)
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True, "linger.ms": 1,
                         "message.timeout.ms": 60_000,
                         **extra})
    stop = threading.Event()

    def on_delivery(produced: float):
        def done(error, _msg):
            if error is None:
                with lock:
                    acked.append((produced, time.monotonic()))

        return done

    def load():
        i = 0
        while not stop.is_set():
            producer.produce("failover", value=str(i).encode(), on_delivery=on_delivery(time.monotonic()))
            producer.poll(0)
            i += 1
            time.sleep(0.001)
        producer.flush(60)

    writer = threading.Thread(target=load)
    writer.start()
    gaps = []
    worst: list[float] = []
    steps: dict[str, list[float]] = {}

    def get(node: int, path: str):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:38{node}44{path}", timeout=0.5) as reply:
                return json.load(reply)
        except Exception:
            return None

    def watch(killed: int, killed_at: float, was_controller: bool, until: threading.Event) -> dict[str, float]:
        """When each step of the failover became visible on a survivor (seconds after the kill)."""
        seen: dict[str, float] = {}
        first_hw: dict[int, int] = {}
        first_end: dict[int, int] = {}
        survivors = [n for n in (1, 2, 3) if n != killed]
        while not until.is_set() and len(seen) < 5:
            now = time.monotonic() - killed_at
            cluster = get(survivors[0], "/v1/cluster")
            if cluster:
                leader = cluster["controller"]["leader_id"]
                if was_controller and "controller elected" not in seen and leader not in (None, killed):
                    seen["controller elected"] = now
                state = [b["state"] for b in cluster["brokers"] if b["id"] == killed]
                if "fenced" not in seen and state == ["fenced"]:
                    seen["fenced"] = now
            for n in survivors:
                topic = get(n, "/v1/topics/failover")
                partition = topic["partition_details"][0] if topic else None
                if partition and partition["leader"] == n:
                    if "new leader serving" not in seen:
                        seen["new leader serving"] = now
                        first_hw[n] = partition["high_watermark"]
                        first_end[n] = partition["log_end_offset"]
                    elif "first write appended" not in seen and partition["log_end_offset"] > first_end.get(n, 1 << 62):
                        seen["first write appended"] = now
                    elif "high watermark moved" not in seen and partition["high_watermark"] > first_hw.get(n, 1 << 62):
                        seen["high watermark moved"] = now
            time.sleep(0.02)
        return seen

    try:
        for _ in range(rounds):
            while partition_state()[1] != [1, 2, 3]:
                time.sleep(0.2)
            time.sleep(1)
            leader = partition_state()[0]
            was_controller = (get(leader, "/v1/cluster") or {}).get("controller", {}).get("leader_id") == leader
            killed_at = time.monotonic()
            print(f"{'stop' if graceful else 'kill'} at {time.time():.3f}", flush=True)
            procs[leader].send_signal(signal.SIGTERM if graceful else signal.SIGKILL)
            procs[leader].wait()
            done_watching = threading.Event()
            timeline: dict[str, float] = {}
            watcher = threading.Thread(target=lambda: timeline.update(watch(leader, killed_at, was_controller, done_watching)))
            watcher.start()
            while True:
                time.sleep(0.1)
                with lock:
                    after = [done for produced, done in acked if produced > killed_at]
                if after:
                    break
            gaps.append(min(after) - killed_at)
            time.sleep(5.5)
            with lock:
                around = [done - produced for produced, done in acked if killed_at - 0.5 <= produced <= killed_at + 5]
            worst.append(max(around, default=0.0))
            done_watching.set()
            watcher.join()
            timeline["acknowledged again"] = gaps[-1]
            for step, at in timeline.items():
                steps.setdefault(step, []).append(at)
            line = ", ".join(f"{step} {at * 1000:.0f}" for step, at in sorted(timeline.items(), key=lambda kv: kv[1]))
            role = " (the active controller)" if was_controller else ""
            print(f"{'stopped' if graceful else 'killed'} leader {leader}{role}: ms after the signal: {line}; "
                  f"worst wait of a record produced around it {worst[-1] * 1000:.0f} ms", flush=True)
            start(leader)
    finally:
        stop.set()
        writer.join()
        for proc in procs.values():
            proc.send_signal(signal.SIGKILL)
    gaps.sort()
    worst.sort()
    print(f"session {session_ms} ms, heartbeat {heartbeat_ms} ms, {len(gaps)} failovers: p50 {statistics.median(gaps) * 1000:.0f} ms, "
          f"max {gaps[-1] * 1000:.0f} ms; worst record wait p50 {statistics.median(worst) * 1000:.0f} ms, max {worst[-1] * 1000:.0f} ms")
    for step, ats in steps.items():
        print(f"  {step}: median {statistics.median(ats) * 1000:.0f} ms over {len(ats)} rounds")


if __name__ == "__main__":
    main()
