#!/usr/bin/env python3
"""librdkafka's view of a broker's throughput: a second opinion next to `sluice bench`.

Produces N records of a given size with confluent-kafka (librdkafka) and reports MB/s, records/s and
delivery-latency percentiles (time from produce() to the delivery report), then consumes them back
from the beginning and reports consume MB/s. Works against any Kafka-compatible broker.

    python3 tests/perf/rdkafka_perf.py --brokers 127.0.0.1:9092 --topic perf --records 2000000 \
        --record-size 100 --acks 1 --partitions 8

Transactions (issue 4's benchmark): `--transactional-commit-ms 100` produces inside transactions
committed every 100 ms; `--isolation read_committed --skip-produce` consumes what is there as a
read_committed consumer.

Not collected by pytest (no test_ prefix): it measures, it does not assert.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    idx = min(len(sorted_values) - 1, int(q * len(sorted_values)))
    return sorted_values[idx]


def ensure_topic(brokers: str, topic: str, partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": brokers})
    if topic in admin.list_topics(timeout=10).topics:
        return
    for fut in admin.create_topics([NewTopic(topic, partitions, 1)]).values():
        fut.result(timeout=30)


def produce(args) -> dict:
    conf = {
        "bootstrap.servers": args.brokers,
        "acks": args.acks,
        "linger.ms": args.linger_ms,
        "batch.size": args.batch_bytes,
        "compression.type": args.compression,
        "queue.buffering.max.messages": 1_000_000,
        "queue.buffering.max.kbytes": 1_048_576,
        "enable.idempotence": args.idempotence,
    }
    if args.transactional_commit_ms:
        conf["transactional.id"] = f"rdkafka-perf-{time.time_ns()}"
    producer = Producer(conf)
    commit_every = args.transactional_commit_ms / 1000 if args.transactional_commit_ms else None
    transactions = 0
    if commit_every:
        producer.init_transactions(30)
        producer.begin_transaction()
    last_commit = time.perf_counter()
    payload = os.urandom(args.record_size)
    latencies: list[float] = []
    errors = 0
    sample_every = max(1, args.records // 200_000)

    def report(err, msg):
        nonlocal errors
        if err is not None:
            errors += 1

    def make_timed(sent_at: float):
        def timed(err, msg):
            report(err, msg)
            latencies.append(time.perf_counter() - sent_at)

        return timed

    started = time.perf_counter()
    for i in range(args.records):
        callback = make_timed(time.perf_counter()) if i % sample_every == 0 else report
        while True:
            try:
                producer.produce(args.topic, payload, on_delivery=callback)
                break
            except BufferError:
                producer.poll(0.001)
        if i % 10_000 == 0:
            producer.poll(0)
        if commit_every and i % 1000 == 0 and time.perf_counter() - last_commit >= commit_every:
            producer.commit_transaction(60)
            transactions += 1
            producer.begin_transaction()
            last_commit = time.perf_counter()
    producer.flush(120)
    if commit_every:
        producer.commit_transaction(60)
        transactions += 1
    seconds = time.perf_counter() - started
    latencies.sort()
    total_bytes = args.records * args.record_size
    return {
        "mode": "produce",
        "records": args.records,
        "record_size": args.record_size,
        "acks": args.acks,
        "idempotence": args.idempotence,
        "transactions": transactions,
        "seconds": round(seconds, 3),
        "mb_per_s": round(total_bytes / seconds / 1e6, 1),
        "records_per_s": round(args.records / seconds),
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 2),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
        "p999_ms": round(percentile(latencies, 0.999) * 1000, 2),
        "errors": errors,
    }


def consume(args, partitions: int) -> dict:
    consumer = Consumer(
        {
            "bootstrap.servers": args.brokers,
            "group.id": f"rdkafka-perf-{time.time_ns()}",
            "enable.auto.commit": False,
            "fetch.max.bytes": 52_428_800,
            "max.partition.fetch.bytes": 1_048_576,
            "queued.max.messages.kbytes": 1_048_576,
            "isolation.level": args.isolation,
        }
    )
    consumer.assign([TopicPartition(args.topic, p, 0) for p in range(partitions)])
    got = 0
    got_bytes = 0
    started = None
    deadline = time.monotonic() + 300
    while got < args.records and time.monotonic() < deadline:
        batch = consumer.consume(10_000, 1.0)
        if batch and started is None:
            started = time.perf_counter()
        for msg in batch:
            if msg.error() is None:
                got += 1
                got_bytes += len(msg.value() or b"")
    seconds = time.perf_counter() - (started or time.perf_counter())
    consumer.close()
    return {
        "mode": "consume",
        "isolation": args.isolation,
        "records": got,
        "seconds": round(seconds, 3),
        "mb_per_s": round(got_bytes / max(seconds, 1e-9) / 1e6, 1),
        "records_per_s": round(got / max(seconds, 1e-9)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--brokers", default="127.0.0.1:9092")
    parser.add_argument("--topic", default="rdkafka-perf")
    parser.add_argument("--partitions", type=int, default=1)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--record-size", type=int, default=100)
    parser.add_argument("--acks", default="1")
    parser.add_argument("--linger-ms", type=int, default=5)
    parser.add_argument("--batch-bytes", type=int, default=1_000_000)
    parser.add_argument("--compression", default="none")
    parser.add_argument("--idempotence", action="store_true")
    parser.add_argument("--skip-consume", action="store_true")
    parser.add_argument("--skip-produce", action="store_true", help="only consume (an earlier run's records)")
    parser.add_argument("--transactional-commit-ms", type=int, default=0, help="produce in transactions committed this often")
    parser.add_argument("--isolation", default="read_uncommitted", choices=["read_uncommitted", "read_committed"])
    args = parser.parse_args()
    ensure_topic(args.brokers, args.topic, args.partitions)
    if not args.skip_produce:
        print(json.dumps(produce(args)))
    if not args.skip_consume:
        print(json.dumps(consume(args, args.partitions)))


if __name__ == "__main__":
    main()
