"""Produce and Fetch with real clients: every codec, both Python clients crossed, kcat, the three acks paths,
and the record-size limit."""

from __future__ import annotations

import os
from collections import Counter, defaultdict

import pytest
from confluent_kafka import KafkaError, TopicPartition

from harness import (
    assert_contiguous_offsets,
    cf_consume,
    cf_consumer,
    cf_produce,
    cf_producer,
    create_topic,
    kcat,
    kp_consume,
    kp_produce,
    kp_producer,
    unique,
)

CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]
N_RECORDS = 300
N_KEYS = 7


def keyed_records(n: int, tag: str, n_keys: int = N_KEYS) -> list[dict]:
    """`n` records over `n_keys` keys; each value carries its key and its sequence number within the key.
    Values are partly repetitive so that the codecs have something to compress."""
    seq = Counter()
    out = []
    for i in range(n):
        key = f"key-{i % n_keys}"
        s = seq[key]
        seq[key] += 1
        value = f"{key}|{s}|{tag}|".encode() + b"sluice-" * (i % 40) + os.urandom(8)
        headers = [("seq", str(s).encode()), ("tag", tag.encode()), ("bin", bytes([i % 256, 0, 255]))]
        out.append({"key": key.encode(), "value": value, "headers": headers})
    return out


def assert_same_records(sent: list[dict], got, label: str) -> None:
    """Exactly the sent records, no duplicates, per-key order kept, contiguous offsets from 0."""
    assert len(got) == len(sent), f"{label}: consumed {len(got)} records, produced {len(sent)}"
    assert len({(r.partition, r.offset) for r in got}) == len(got), f"{label}: duplicate offsets"
    sent_set = Counter((r["key"], r["value"], tuple(r["headers"])) for r in sent)
    got_set = Counter((r.key, r.value, r.headers) for r in got)
    assert got_set == sent_set, f"{label}: record contents differ; missing {list((sent_set - got_set).items())[:2]}"
    per_key_sent = defaultdict(list)
    for r in sent:
        per_key_sent[r["key"]].append(r["value"])
    per_key_got = defaultdict(list)
    for r in sorted(got, key=lambda r: (r.partition, r.offset)):
        per_key_got[r.key].append(r.value)
    for key, values in per_key_sent.items():
        assert per_key_got[key] == values, f"{label}: order of key {key!r} not preserved"
    assert_contiguous_offsets(sorted(got, key=lambda r: (r.partition, r.offset)))


@pytest.mark.parametrize("producer_client", ["confluent", "kafka-python"])
@pytest.mark.parametrize("codec", CODECS)
def test_codec_roundtrip_both_clients(broker, codec, producer_client):
    topic = unique(f"pc-{codec}")
    create_topic(broker, topic, 3)
    sent = keyed_records(N_RECORDS, tag=f"{codec}-{producer_client}")

    if producer_client == "confluent":
        producer = cf_producer(broker, {"compression.type": codec, "linger.ms": 20, "acks": "all"})
        reports = cf_produce(producer, topic, sent)
        acked = [rec for _, rec in reports]
    else:
        producer = kp_producer(broker, compression_type=None if codec == "none" else codec, linger_ms=20, acks="all")
        try:
            acked = kp_produce(producer, topic, sent)
        finally:
            producer.close(timeout=5)

    # The acknowledged offsets are the ones the consumers then see.
    assert len({(r.partition, r.offset) for r in acked}) == N_RECORDS
    assert {r.partition for r in acked} == {0, 1, 2}, "7 keys should hash onto all 3 partitions"

    got_cf = cf_consume(broker, topic, N_RECORDS)
    assert_same_records(sent, got_cf, f"confluent consumer ({codec}, produced by {producer_client})")
    got_kp = kp_consume(broker, topic, N_RECORDS)
    assert_same_records(sent, got_kp, f"kafka-python consumer ({codec}, produced by {producer_client})")
    assert {(r.partition, r.offset, r.value) for r in got_cf} == {(r.partition, r.offset, r.value) for r in acked}


@pytest.mark.parametrize("codec", ["none", "snappy"])
def test_kcat_produce_and_consume(broker, codec):
    topic = unique("pc-kcat")
    create_topic(broker, topic, 3)
    lines = [f"k{i % 5}:v{i}-{'x' * (i % 13)}" for i in range(120)]
    out = kcat(broker, "-P", "-t", topic, "-K:", "-z", codec, input=("\n".join(lines) + "\n").encode())
    assert out.returncode == 0, f"kcat -P failed ({out.returncode}): {out.stderr.decode(errors='replace')}"
    assert b"Delivery failed" not in out.stderr, out.stderr.decode(errors="replace")

    expected = [tuple(line.split(":", 1)) for line in lines]
    out = kcat(broker, "-C", "-t", topic, "-e", "-o", "beginning", "-q", "-f", "%k %s\n")
    assert out.returncode == 0, f"kcat -C failed ({out.returncode}): {out.stderr.decode(errors='replace')}"
    consumed = [tuple(line.split(" ", 1)) for line in out.stdout.decode().splitlines() if line]
    assert sorted(consumed) == sorted(expected)
    for k in {k for k, _ in expected}:
        assert [v for kk, v in consumed if kk == k] == [v for kk, v in expected if kk == k], f"order of {k}"

    # The same records through librdkafka's consumer, and confluent-produced records through kcat.
    got = cf_consume(broker, topic, len(lines))
    assert sorted((r.key.decode(), r.value.decode()) for r in got) == sorted(expected)
    topic2 = unique("pc-kcat2")
    create_topic(broker, topic2, 2)
    plain = [{"key": f"key{i % 3}".encode(), "value": f"value-{i}".encode()} for i in range(40)]
    cf_produce(cf_producer(broker, {"compression.type": codec}), topic2, plain)
    out = kcat(broker, "-C", "-t", topic2, "-e", "-o", "beginning", "-q", "-f", "%k %s %p %o\n")
    assert out.returncode == 0, out.stderr.decode(errors="replace")
    rows = [line.split(" ") for line in out.stdout.decode().splitlines() if line]
    assert sorted((k, v) for k, v, _, _ in rows) == sorted((r["key"].decode(), r["value"].decode()) for r in plain)
    by_part = defaultdict(list)
    for _, _, p, o in rows:
        by_part[int(p)].append(int(o))
    for p, offsets in by_part.items():
        assert offsets == list(range(len(offsets))), f"partition {p} offsets {offsets}"


@pytest.mark.parametrize("acks", ["0", "1", "all"])
@pytest.mark.parametrize("client", ["confluent", "kafka-python"])
def test_acks_paths(broker, client, acks):
    topic = unique(f"pc-acks{acks}")
    create_topic(broker, topic, 2)
    sent = keyed_records(80, tag=f"acks{acks}")
    if client == "confluent":
        acked = [rec for _, rec in cf_produce(cf_producer(broker, {"acks": acks}), topic, sent)]
    else:
        producer = kp_producer(broker, acks=int(acks) if acks != "all" else "all")
        try:
            acked = kp_produce(producer, topic, sent)
        finally:
            producer.close(timeout=5)
    if acks == "0":
        if client == "confluent":  # (kafka-python makes up offsets from base -1 for acks=0)
            assert all(r.offset is None or r.offset < 0 for r in acked), "acks=0 gets no offsets back"
    else:
        assert_contiguous_offsets(sorted(acked, key=lambda r: (r.partition, r.offset)))
    assert_same_records(sent, cf_consume(broker, topic, len(sent)), f"{client} acks={acks}")


@pytest.mark.parametrize("client", ["confluent", "kafka-python"])
def test_large_record_near_default_limit(broker, client):
    topic = unique("pc-large")
    create_topic(broker, topic, 1)
    big = os.urandom(900 * 1024)  # incompressible, below max.message.bytes (1048588) with batch overhead
    small = b"after-the-big-one"
    records = [{"key": b"big", "value": big, "partition": 0}, {"key": b"small", "value": small, "partition": 0}]
    if client == "confluent":
        cf_produce(cf_producer(broker, {"acks": "all"}), topic, records)
    else:
        producer = kp_producer(broker, acks="all")
        try:
            kp_produce(producer, topic, records)
        finally:
            producer.close(timeout=5)
    for got in (cf_consume(broker, topic, 2), kp_consume(broker, topic, 2)):
        assert [(r.offset, r.key, len(r.value)) for r in got] == [(0, b"big", len(big)), (1, b"small", len(small))]
        assert got[0].value == big and got[1].value == small


def _high_watermark(broker, topic: str, partition: int = 0) -> int:
    consumer = cf_consumer(broker)
    try:
        return consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10, cached=False)[1]
    finally:
        consumer.close()


@pytest.mark.parametrize(
    "topic_limit,size",
    [(100_000, 200_000), (None, 1_200_000)],  # a topic override, and the broker default (1048588)
    ids=["topic-max.message.bytes", "default-limit"],
)
def test_record_over_max_message_bytes_is_rejected(broker, topic_limit, size):
    topic = unique("pc-toolarge")
    create_topic(broker, topic, 1, config={"max.message.bytes": str(topic_limit)} if topic_limit else None)
    too_big = os.urandom(size)

    # librdkafka: its own limit is raised so that the broker is the one that refuses.
    producer = cf_producer(broker, {"acks": "all", "message.max.bytes": 2_000_000, "compression.type": "none"})
    reports = cf_produce(producer, topic, [{"key": b"k", "value": too_big}], check=False)
    err = reports[0][0]
    assert err is not None and err.code() == KafkaError.MSG_SIZE_TOO_LARGE, f"delivery report: {err}"

    # kafka-python: same, through its own request path.
    from kafka.errors import MessageSizeTooLargeError

    kp = kp_producer(broker, acks="all", max_request_size=2_000_000, retries=0)
    try:
        fut = kp.send(topic, key=b"k", value=too_big)
        with pytest.raises(MessageSizeTooLargeError):
            fut.get(timeout=20)
    finally:
        kp.close(timeout=5)

    assert _high_watermark(broker, topic) == 0, "a rejected record must not be stored"
    cf_produce(cf_producer(broker, {"acks": "all"}), topic, [{"key": b"k", "value": b"fits"}])
    got = cf_consume(broker, topic, 1)
    assert [(r.offset, r.value) for r in got] == [(0, b"fits")]
