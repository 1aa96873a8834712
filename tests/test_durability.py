"""Durability and recovery: acknowledged records survive kill -9 (with and without fsync before ack), and a
segment whose tail is garbage (a torn or corrupted write) is cut back to its valid prefix on start-up.

The garbage tests after a *graceful* stop ask more than Apache Kafka gives: Kafka skips log recovery after a
clean shutdown. Sluice scans segment tails on every start and never serves a byte that failed its CRC
(README, "Durability"), so both shutdown kinds are tested."""

from __future__ import annotations

import random

import pytest

from harness import (
    assert_contiguous_offsets,
    cf_consume,
    cf_produce,
    cf_producer,
    create_topic,
    unique,
)


def values(prefix: str, n: int) -> list[bytes]:
    return [f"{prefix}-{i:05d}-".encode() + b"d" * (i % 97) for i in range(n)]


@pytest.mark.parametrize(
    "settings",
    [("log.flush.interval.messages=1",), ()],
    ids=["fsync-before-ack", "default-settings"],
)
def test_acked_records_survive_kill9(make_broker, settings):
    broker = make_broker(*settings)
    topic = unique("dur-kill")
    create_topic(broker, topic, 3)
    n = 3000
    sent = values("acked", n)
    records = [{"key": f"k{i % 11}".encode(), "value": v} for i, v in enumerate(sent)]
    reports = cf_produce(cf_producer(broker, {"acks": "all", "linger.ms": 1, "batch.num.messages": 100}), topic, records)
    acked = {(rec.partition, rec.offset): rec.value for _, rec in reports}
    assert len(acked) == n

    broker.kill9()
    broker.start()

    got = cf_consume(broker, topic, n, timeout=60, settle=1.5)
    assert len(got) == n, f"{n - len(got)} acknowledged records lost after kill -9" if len(got) < n else f"{len(got) - n} extra"
    assert {(r.partition, r.offset): r.value for r in got} == acked
    assert_contiguous_offsets(sorted(got, key=lambda r: (r.partition, r.offset)))
    per_key_order = {}
    for r in sorted(got, key=lambda r: (r.partition, r.offset)):
        per_key_order.setdefault(r.key, []).append(r.value)
    for key, vals in per_key_order.items():
        assert vals == sorted(vals), f"key {key!r} out of order after recovery"


def first_batch_as_next(log_bytes: bytes, next_offset: int) -> bytearray:
    """A copy of the segment's first batch re-addressed to `next_offset`, as the next append would be.
    (The base offset is outside the CRC, so the copy is a valid batch.)"""
    batch_len = int.from_bytes(log_bytes[8:12], "big")
    batch = bytearray(log_bytes[: 12 + batch_len])
    batch[0:8] = next_offset.to_bytes(8, "big")
    return batch


def random_garbage(log_bytes: bytes, next_offset: int, rng: random.Random) -> bytes:
    return rng.randbytes(4096)


def torn_batch(log_bytes: bytes, next_offset: int, rng: random.Random) -> bytes:
    """A write cut short: the first half of what would have been the next batch."""
    batch = first_batch_as_next(log_bytes, next_offset)
    return bytes(batch[: max(20, len(batch) // 2)])


def bad_crc_batch(log_bytes: bytes, next_offset: int, rng: random.Random) -> bytes:
    """A complete next batch with one payload byte flipped: every size and offset is plausible, only the
    CRC-32C says it is not valid."""
    batch = first_batch_as_next(log_bytes, next_offset)
    batch[-1] ^= 0xFF
    return bytes(batch)


@pytest.mark.parametrize("garbage", [random_garbage, torn_batch, bad_crc_batch], ids=["random", "torn-batch", "bad-crc-batch"])
@pytest.mark.parametrize("shutdown", ["sigterm", "kill9"])
def test_garbage_tail_is_truncated_on_start(broker, shutdown, garbage):
    topic = unique("dur-tail")
    create_topic(broker, topic, 1)
    n = 200
    first = values("old", n)
    cf_produce(cf_producer(broker, {"acks": "all", "linger.ms": 5}), topic, [{"value": v} for v in first])

    if shutdown == "sigterm":
        broker.stop()
    else:
        broker.kill9()

    segments = broker.segment_files(topic, 0)
    assert segments, f"no .log segment under {broker.partition_dir(topic, 0)}"
    assert all(len(s.stem) == 20 and s.stem.isdigit() for s in segments), [s.name for s in segments]
    newest = segments[-1]
    original = newest.read_bytes()
    rng = random.Random(f"{shutdown}-{garbage.__name__}")
    with open(newest, "ab") as f:
        f.write(garbage(segments[0].read_bytes(), n, rng))

    broker.start()
    got = cf_consume(broker, topic, n, timeout=30, settle=1.0)
    assert [r.value for r in got] == first, (
        f"expected exactly the {n} valid records, got {len(got)}"
        + (f" (first extra at offset {got[n].offset})" if len(got) > n else "")
    )
    assert [r.offset for r in got] == list(range(n))

    more = values("new", 50)
    reports = cf_produce(cf_producer(broker, {"acks": "all"}), topic, [{"value": v} for v in more])
    assert [rec.offset for _, rec in reports] == list(range(n, n + 50))
    got = cf_consume(broker, topic, n + 50, timeout=30, settle=1.0)
    assert [r.value for r in got] == first + more
    assert [r.offset for r in got] == list(range(n + 50))
    assert newest.stat().st_size >= len(original), "recovery must not cut into valid data"
