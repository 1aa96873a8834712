#!/usr/bin/env python3
"""Benchmarks of the in-broker transform runtime (issue 5), against a running broker.

    # throughput: N records already in the input, then deploy; time until the transform has caught up
    python3 tests/perf/transform_perf.py throughput --wasm target/wasm-guests/wasm32-wasip2/release/identity.wasm --records 2000000
    # added latency: records produced at a fixed rate; output arrival minus input arrival, p50/p99
    python3 tests/perf/transform_perf.py latency --wasm .../identity.wasm --rate 20000 --seconds 20
    # deploy to first output: a record waits in the input; POST the module; time until it is in the output
    python3 tests/perf/transform_perf.py deploy --wasm .../fixture_bulky.wasm

Output is one JSON object per run. Not collected by pytest: it measures, it does not assert.
"""

from __future__ import annotations

import argparse
import base64
import json
import time
import uuid

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from perf_http import http


def topics(brokers: str, names: list[str], partitions: int, config: dict | None = None) -> None:
    admin = AdminClient({"bootstrap.servers": brokers})
    for fut in admin.create_topics([NewTopic(n, partitions, 1, config=config or {}) for n in names]).values():
        fut.result(timeout=30)
    time.sleep(0.5)


def deploy(admin: str, wasm: str, name: str, inp: str, out: str, batch: int | None = None):
    with open(wasm, "rb") as f:
        module = base64.b64encode(f.read()).decode()
    body = {"name": name, "input_topic": inp, "output_topics": [out], "module_base64": module}
    if batch:
        body["batch_records"] = batch
    return http(admin, "POST", "/v1/transforms", body)


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def throughput(args) -> dict:
    run = uuid.uuid4().hex[:8]
    inp, out, name = f"tp-in-{run}", f"tp-out-{run}", f"tp-{run}"
    topics(args.brokers, [inp, out], args.partitions)
    p = Producer({"bootstrap.servers": args.brokers, "linger.ms": 20, "batch.size": 1_000_000, "queue.buffering.max.messages": 2_000_000})
    payload = b"x" * args.record_size
    for i in range(args.records):
        while True:
            try:
                p.produce(inp, payload, key=str(i % 1000).encode())
                break
            except BufferError:
                p.poll(0.01)
    p.flush(120)
    started = time.perf_counter()
    deploy(args.admin, args.wasm, name, inp, out, args.batch_records)
    while True:
        st = http(args.admin, "GET", f"/v1/transforms/{name}")
        if st["records_in"] >= args.records:
            break
        if time.perf_counter() - started > 600:
            raise SystemExit(f"did not catch up: {st}")
        time.sleep(0.05)
    seconds = time.perf_counter() - started
    http(args.admin, "DELETE", f"/v1/transforms/{name}")
    return {"mode": "throughput", "records": args.records, "record_size": args.record_size, "partitions": args.partitions,
            "seconds": round(seconds, 3), "records_per_s": round(args.records / seconds)}


def _consume_arrivals(brokers: str, topic: str, partitions: int, group: str, stop_after_idle: float, out_path: str) -> None:
    """Child process: record the arrival time of every record (its value is the send time, unique)."""
    c = Consumer({"bootstrap.servers": brokers, "group.id": group, "isolation.level": "read_committed",
                  "fetch.wait.max.ms": 5, "fetch.min.bytes": 1, "enable.auto.commit": False})
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    arrivals = []
    idle_since = None
    while True:
        msgs = c.consume(5000, 0.05)
        now = time.time_ns()
        if msgs:
            idle_since = None
            # (value, broker append time: the topics use LogAppendTime, arrival time here)
            arrivals.extend((m.value(), m.timestamp()[1], now) for m in msgs if m.error() is None)
        elif arrivals:
            idle_since = idle_since or time.monotonic()
            if time.monotonic() - idle_since > stop_after_idle:
                break
    c.close()
    with open(out_path, "w") as f:
        for value, appended_ms, at in arrivals:
            f.write(f"{value.decode()} {appended_ms} {at}\n")


def latency(args) -> dict:
    import multiprocessing
    import tempfile

    run = uuid.uuid4().hex[:8]
    inp, out, name = f"lat-in-{run}", f"lat-out-{run}", f"lat-{run}"
    # LogAppendTime: each record carries the broker's append time, so the added latency is measured
    # on the broker's clock, free of client polling artefacts.
    topics(args.brokers, [inp, out], args.partitions, {"message.timestamp.type": "LogAppendTime"})
    deploy(args.admin, args.wasm, name, inp, out)
    tmp = tempfile.mkdtemp()
    # One process per consumer and for the producer: no shared interpreter lock between them.
    consumers = [
        multiprocessing.Process(target=_consume_arrivals, args=(args.brokers, t, args.partitions, f"lat-{k}-{run}", 3.0, f"{tmp}/{k}"))
        for t, k in ((inp, "in"), (out, "out"))
    ]
    for c in consumers:
        c.start()
    time.sleep(2.0)
    p = Producer({"bootstrap.servers": args.brokers, "linger.ms": 1, "queue.buffering.max.messages": 2_000_000})
    deadline = time.perf_counter() + args.seconds
    started = time.perf_counter()
    sent = 0
    while time.perf_counter() < deadline:
        # Send in 1 ms slices to hold the rate without a syscall per record.
        due = int((time.perf_counter() - started) * args.rate)
        while sent < due:
            try:
                p.produce(inp, str(time.time_ns()).encode())
                sent += 1
            except BufferError:
                p.poll(0.001)
        p.poll(0)
        time.sleep(0.001)
    p.flush(30)
    for c in consumers:
        c.join(timeout=120)
    http(args.admin, "DELETE", f"/v1/transforms/{name}")
    rows = {}
    for k in ("in", "out"):
        with open(f"{tmp}/{k}") as f:
            rows[k] = {v: (int(appended), int(at)) for v, appended, at in (line.split() for line in f)}
    # Added latency per record: the output record's append time minus the input record's (broker clock,
    # 1 ms resolution; the output becomes visible at its transaction's commit, microseconds later).
    # The first 10% are warm-up.
    values = sorted(rows["in"], key=int)
    values = values[len(values) // 10 :]
    added = [rows["out"][v][0] - rows["in"][v][0] for v in values if v in rows["out"]]
    end_to_end = [(rows["out"][v][1] - int(v)) / 1e6 for v in values if v in rows["out"]]
    return {"mode": "latency", "rate": args.rate, "sent": sent, "received_in": len(rows["in"]), "received_out": len(rows["out"]),
            "added_p50_ms": percentile(added, 0.5), "added_p99_ms": percentile(added, 0.99), "added_max_ms": max(added) if added else None,
            "client_produce_to_output_p50_ms": round(percentile(end_to_end, 0.5), 2),
            "client_produce_to_output_p99_ms": round(percentile(end_to_end, 0.99), 2)}


def deploy_time(args) -> dict:
    run = uuid.uuid4().hex[:8]
    inp, out, name = f"dep-in-{run}", f"dep-out-{run}", f"dep-{run}"
    topics(args.brokers, [inp, out], 1)
    p = Producer({"bootstrap.servers": args.brokers})
    p.produce(inp, b"first")
    p.flush(10)
    c = Consumer({"bootstrap.servers": args.brokers, "group.id": f"dep-{run}", "isolation.level": "read_committed", "fetch.wait.max.ms": 5})
    c.assign([TopicPartition(out, 0, 0)])
    c.consume(1, 0.5)
    size = len(open(args.wasm, "rb").read())
    started = time.perf_counter()
    deploy(args.admin, args.wasm, name, inp, out)
    deployed = time.perf_counter() - started
    while True:
        msgs = [m for m in c.consume(1, 0.01) if m.error() is None]
        if msgs:
            break
        if time.perf_counter() - started > 60:
            raise SystemExit("no output within 60 s")
    first_output = time.perf_counter() - started
    c.close()
    http(args.admin, "DELETE", f"/v1/transforms/{name}")
    return {"mode": "deploy", "module_bytes": size, "deploy_call_s": round(deployed, 3), "first_output_s": round(first_output, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["throughput", "latency", "deploy"])
    parser.add_argument("--brokers", default="127.0.0.1:9092")
    parser.add_argument("--admin", default="http://127.0.0.1:9644")
    parser.add_argument("--wasm", required=True)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--record-size", type=int, default=100)
    parser.add_argument("--partitions", type=int, default=1)
    parser.add_argument("--batch-records", type=int)
    parser.add_argument("--rate", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=15)
    args = parser.parse_args()
    result = {"throughput": throughput, "latency": latency, "deploy": deploy_time}[args.mode](args)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
