"""Transform throughput in a cluster against a single node: an identity transform copies RECORDS
records of 100 B from a 3-partition input topic to a 3-partition output topic. With NODES=3 the
brokers form a cluster, both topics are RF=3 (min.insync.replicas=2), and each broker runs the
runners of the input partitions it leads: every transactional call goes over loopback to the
coordinators' leader, every output batch is an acks=all Produce to its partition's leader. With
NODES=1 it is one broker, RF=1, the in-process path. Usage:

    python3 tests/bench_cluster_transform.py [nodes] [records]

It preloads the input, deploys the transform (the guest from `target/wasm-guests`, built by the
test suite or `cargo build --profile wasm-guest --target wasm32-wasip2 -p identity`), and reports
the time from the first runner's first record to the last record copied (every runner's lag 0),
as records/s. The three brokers share the machine's cores with each other and with the load
generator, so the cluster's figure is a floor. Not a test: see BENCHMARKS.md for results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

ROOT = Path(__file__).resolve().parent.parent
BIN = os.environ.get("SLUICE_BIN", str(ROOT / "target" / "release" / "sluice"))
GUEST = ROOT / "target" / "wasm-guests" / "wasm32-wasip2" / "wasm-guest" / "identity.wasm"


def get(url: str):
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return json.load(reply)
    except Exception:
        return None


def main() -> None:
    nodes = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    records = int(sys.argv[2]) if len(sys.argv) > 2 else 1_000_000
    assert GUEST.exists(), f"{GUEST} is missing: build the guests first"
    work = tempfile.mkdtemp(prefix="sluice-bench-cluster-transform-")
    voters = ",".join(f"{n}@127.0.0.1:39{n}93" for n in range(1, nodes + 1))
    procs = []
    for n in range(1, nodes + 1):
        args = [BIN, "server", "--data-dir", f"{work}/n{n}", "--listen", f"127.0.0.1:39{n}92", "--admin-listen", f"127.0.0.1:39{n}44"]
        if nodes > 1:
            args += ["--node-id", str(n), "--controller-voters", voters]
        log = open(f"{work}/n{n}.log", "ab")
        procs.append(subprocess.Popen(args, stdout=log, stderr=log))
    bootstrap = ",".join(f"127.0.0.1:39{n}92" for n in range(1, nodes + 1))
    admins = [f"http://127.0.0.1:39{n}44" for n in range(1, nodes + 1)]
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not all(get(f"{a}/v1/cluster") or get(f"{a}/v1/topics") for a in admins):
            time.sleep(0.5)
        time.sleep(3 if nodes > 1 else 0)
        admin = AdminClient({"bootstrap.servers": bootstrap})
        factor = min(3, nodes)
        config = {"min.insync.replicas": "2"} if factor == 3 else {}
        futures = admin.create_topics([NewTopic(t, 3, factor, config=config) for t in ("bench-in", "bench-out")])
        for future in futures.values():
            future.result(30)
        time.sleep(2)

        producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5, "batch.num.messages": 10000,
                             "queue.buffering.max.messages": 2_000_000})
        value = b"x" * 100
        started = time.monotonic()
        for i in range(records):
            while True:
                try:
                    producer.produce("bench-in", key=str(i % 1000).encode(), value=value)
                    break
                except BufferError:
                    producer.poll(0.05)
        assert producer.flush(120) == 0
        print(f"preloaded {records} records in {time.monotonic() - started:.1f} s")

        deployed_at = time.monotonic()
        subprocess.run([BIN, "transform", "deploy", str(GUEST), "--admin-url", admins[0], "--name", "bench",
                        "--input-topic", "bench-in", "--output-topic", "bench-out"], check=True, stdout=subprocess.DEVNULL)
        first = None
        while True:
            runners = {}
            for url in admins:
                status = get(f"{url}/v1/transforms/bench")
                for p in (status or {}).get("partitions", []):
                    runners[p["partition"]] = p
            copied = sum(p["records_in"] for p in runners.values())
            if first is None and copied > 0:
                first = time.monotonic()
            if len(runners) == 3 and all(p["lag"] == 0 and p["state"] == "RUNNING" for p in runners.values()) and copied >= records:
                done = time.monotonic()
                break
            if time.monotonic() - deployed_at > 600:
                raise SystemExit(f"not done after 600 s: {runners}")
            time.sleep(0.2)
        elapsed = done - (first or deployed_at)
        print(f"nodes={nodes} records={records} deploy->first record {(first or done) - deployed_at:.2f} s, "
              f"copy {elapsed:.2f} s = {records / elapsed:,.0f} records/s (status polled every 0.2 s)")
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait()


if __name__ == "__main__":
    main()
