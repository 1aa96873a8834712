#!/usr/bin/env python3
"""Benchmarks of mirrors (issue 13), between two running brokers: the source and the target (which
runs the mirror).

    # throughput: the source topic is filled first (`sluice bench produce`), then the mirror is
    # created; time until its copy has caught up
    python3 tests/perf/mirror_perf.py throughput --source 127.0.0.1:29092 --target-admin http://127.0.0.1:29744 \\
        --topic mb --mode preserve
    # replication latency: records produced on the source at a fixed rate, each stamped with its send
    # time; a consumer on the target reports arrival minus send time, p50/p99/max
    python3 tests/perf/mirror_perf.py latency --source 127.0.0.1:29092 --target 127.0.0.1:29192 \\
        --target-admin http://127.0.0.1:29744 --rate 2000 --seconds 20

Output is one JSON object per run. Not collected by pytest: it measures, it does not assert.
"""

from __future__ import annotations

import argparse
import json
import struct
import threading
import time
import uuid

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from perf_http import http


def source_ends(brokers: str, topic: str) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": brokers, "group.id": "mirror-perf"})
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in meta.partitions}
    finally:
        consumer.close()


def throughput(args) -> dict:
    ends = source_ends(args.source, args.topic)
    name = f"perf-{uuid.uuid4().hex[:6]}"
    body = {"name": name, "source_bootstrap": [args.source], "topics": args.topic, "mode": args.mode}
    started = time.monotonic()
    http(args.target_admin, "POST", "/v1/mirrors", body)
    while True:
        status = http(args.target_admin, "GET", f"/v1/mirrors/{name}")
        have = {p["partition"]: p["target_end_offset"] for p in status["partitions"] if p["topic"] == args.topic}
        if all(have.get(p, -1) >= end for p, end in ends.items()):
            break
        if time.monotonic() - started > args.timeout:
            raise SystemExit(f"not caught up after {args.timeout} s: {have} of {ends}")
        time.sleep(0.05)
    elapsed = time.monotonic() - started
    status = http(args.target_admin, "GET", f"/v1/mirrors/{name}")
    http(args.target_admin, "DELETE", f"/v1/mirrors/{name}")
    return {
        "bench": "mirror-throughput",
        "mode": args.mode,
        "records": sum(ends.values()),
        "bytes": status["bytes"],
        "seconds": round(elapsed, 3),
        "records_per_second": round(sum(ends.values()) / elapsed),
        "mib_per_second": round(status["bytes"] / elapsed / (1 << 20), 1),
    }


def latency(args) -> dict:
    topic = f"lat-{uuid.uuid4().hex[:6]}"
    admin = AdminClient({"bootstrap.servers": args.source})
    for fut in admin.create_topics([NewTopic(topic, args.partitions, 1)]).values():
        fut.result(timeout=30)
    time.sleep(0.5)
    name = f"perf-{uuid.uuid4().hex[:6]}"
    http(args.target_admin, "POST", "/v1/mirrors", {"name": name, "source_bootstrap": [args.source], "topics": topic, "mode": args.mode})
    target_topic = topic if args.mode == "preserve" else f"{name}.{topic}"
    # Wait until the copy exists on the target.
    deadline = time.monotonic() + 30
    while not any(p["topic"] == topic for p in http(args.target_admin, "GET", f"/v1/mirrors/{name}")["partitions"]):
        if time.monotonic() > deadline:
            raise SystemExit("the mirror did not pick the topic up")
        time.sleep(0.1)
    samples: list[float] = []
    done = threading.Event()

    def consume():
        consumer = Consumer(
            {
                "bootstrap.servers": args.target,
                "group.id": f"lat-{uuid.uuid4().hex[:6]}",
                "auto.offset.reset": "earliest",
                "fetch.wait.max.ms": 5,
                "isolation.level": "read_committed",
            }
        )
        consumer.subscribe([target_topic])
        while not done.is_set():
            msg = consumer.poll(0.1)
            if msg is None or msg.error() or len(msg.value() or b"") < 8:
                continue
            (sent,) = struct.unpack(">d", msg.value()[:8])
            samples.append(time.time() - sent)
        consumer.close()

    reader = threading.Thread(target=consume)
    reader.start()
    time.sleep(3)  # the consumer joins
    producer = Producer({"bootstrap.servers": args.source, "linger.ms": 1, "acks": "all"})
    pad = b"x" * max(0, args.record_size - 8)
    interval = 1.0 / args.rate
    sent = 0
    start = time.monotonic()
    while time.monotonic() - start < args.seconds:
        due = start + sent * interval
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
        producer.produce(topic, value=struct.pack(">d", time.time()) + pad)
        producer.poll(0)
        sent += 1
    producer.flush(30)
    deadline = time.monotonic() + 30
    while len(samples) < sent and time.monotonic() < deadline:
        time.sleep(0.1)
    done.set()
    reader.join()
    http(args.target_admin, "DELETE", f"/v1/mirrors/{name}")
    ordered = sorted(samples)

    def pct(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 1) if ordered else -1

    return {
        "bench": "mirror-latency",
        "mode": args.mode,
        "rate": args.rate,
        "sent": sent,
        "received": len(samples),
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "max_ms": round(ordered[-1] * 1000, 1) if ordered else -1,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bench", choices=["throughput", "latency"])
    parser.add_argument("--source", required=True, help="host:port of the source broker")
    parser.add_argument("--target", help="host:port of the target broker (latency)")
    parser.add_argument("--target-admin", required=True, help="the target broker's admin URL")
    parser.add_argument("--topic", default="mb", help="throughput: the filled source topic")
    parser.add_argument("--mode", default="preserve", choices=["preserve", "rename"])
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--rate", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--record-size", type=int, default=100)
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args()
    result = throughput(args) if args.bench == "throughput" else latency(args)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
