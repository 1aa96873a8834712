"""Idempotent producers (InitProducerId + sequence numbers): exactly once and in order, including when the
broker crashes mid-stream and the producer retries batches whose acknowledgement it never saw."""

from __future__ import annotations

import threading
import time
from collections import defaultdict

from harness import (
    assert_contiguous_offsets,
    cf_consume,
    cf_producer,
    create_topic,
    kp_consume,
    kp_produce,
    kp_producer,
    unique,
)

N_PARTITIONS = 4


def idempotent_conf(**extra) -> dict:
    conf = {
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 2,
        "batch.num.messages": 50,  # many small batches, several in flight per partition
        "max.in.flight.requests.per.connection": 5,
        "message.timeout.ms": 60_000,
    }
    conf.update(extra)
    return conf


def assert_exactly_once_in_order(got, n: int) -> None:
    """`got` holds values b"<key>:<seq>"; every one of n appears once and each key's seqs are in order."""
    values = [r.value.decode() for r in sorted(got, key=lambda r: (r.partition, r.offset))]
    dups = {v for v in values if values.count(v) > 1} if len(values) != len(set(values)) else set()
    assert not dups, f"{len(values) - len(set(values))} duplicates, e.g. {sorted(dups)[:5]}"
    assert len(values) == n, f"consumed {len(values)}, expected {n}"
    per_key = defaultdict(list)
    for v in values:
        key, seq = v.split(":")
        per_key[key].append(int(seq))
    for key, seqs in per_key.items():
        assert seqs == sorted(seqs), f"key {key}: out of order at {next(i for i in range(1, len(seqs)) if seqs[i] < seqs[i - 1])}"
    assert_contiguous_offsets(sorted(got, key=lambda r: (r.partition, r.offset)))


def make_records(n: int, n_keys: int = 16) -> list[dict]:
    seq = defaultdict(int)
    out = []
    for i in range(n):
        key = f"k{i % n_keys}"
        out.append({"key": key.encode(), "value": f"{key}:{seq[key]}".encode()})
        seq[key] += 1
    return out


def test_confluent_idempotent_producer_exactly_once(broker):
    topic = unique("idem-cf")
    create_topic(broker, topic, N_PARTITIONS)
    n = 5000
    producer = cf_producer(broker, idempotent_conf())
    failures = []
    for r in make_records(n):
        while True:
            try:
                producer.produce(topic, key=r["key"], value=r["value"],
                                 on_delivery=lambda err, msg: err and failures.append(err))
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    assert producer.flush(60) == 0
    assert not failures, failures[:3]
    got = cf_consume(broker, topic, n, timeout=60)
    assert {r.partition for r in got} == set(range(N_PARTITIONS))
    assert_exactly_once_in_order(got, n)


def test_confluent_idempotent_producer_across_broker_crash(broker):
    """kill -9 the broker while an idempotent producer has batches in flight, restart it on the same port:
    the retried batches must be deduplicated by sequence number (producer state rebuilt from the log)."""
    topic = unique("idem-crash")
    create_topic(broker, topic, N_PARTITIONS)
    n = 6000
    producer = cf_producer(broker, idempotent_conf(**{"retry.backoff.ms": 50, "reconnect.backoff.max.ms": 500}))
    delivered = []
    failures = []

    def on_delivery(err, msg):
        (failures if err else delivered).append(err or msg.value())

    records = make_records(n)
    crashed = threading.Event()

    def crash_when_half_acked():
        deadline = time.monotonic() + 60
        while len(delivered) < n // 3 and time.monotonic() < deadline:
            time.sleep(0.005)
        broker.kill9()
        broker.start()
        crashed.set()

    killer = threading.Thread(target=crash_when_half_acked, daemon=True)
    killer.start()
    for r in records:
        while True:
            try:
                producer.produce(topic, key=r["key"], value=r["value"], on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
        if len(delivered) < n // 3:
            time.sleep(0.0002)  # keep the stream going while the crash happens
    killer.join(timeout=90)
    assert crashed.is_set(), "the broker was not crashed/restarted"
    assert producer.flush(90) == 0
    assert not failures, f"{len(failures)} deliveries failed, first: {failures[:3]}"
    assert len(delivered) == n
    got = cf_consume(broker, topic, n, timeout=60, settle=2.0)
    assert_exactly_once_in_order(got, n)


def test_kafka_python_idempotent_producer(broker):
    topic = unique("idem-kp")
    create_topic(broker, topic, N_PARTITIONS)
    n = 2000
    producer = kp_producer(broker, enable_idempotence=True, acks="all", linger_ms=2, batch_size=2048)
    try:
        acked = kp_produce(producer, topic, make_records(n), timeout=60)
    finally:
        producer.close(timeout=10)
    assert len({(r.partition, r.offset) for r in acked}) == n
    got = kp_consume(broker, topic, n, timeout=60)
    assert_exactly_once_in_order(got, n)
