"""ListOffsets (earliest, latest, by timestamp, max timestamp), message.timestamp.type and DeleteRecords."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import (
    OFFSET_END,
    TIMESTAMP_CREATE_TIME,
    TIMESTAMP_LOG_APPEND_TIME,
    KafkaError,
    KafkaException,
    TopicPartition,
)
from confluent_kafka.admin import OffsetSpec

from harness import (
    cf_admin,
    cf_consume,
    cf_consumer,
    cf_produce,
    cf_producer,
    create_topic,
    kp_admin,
    kp_consumer,
    unique,
)


def watermarks(broker, topic: str, partition: int) -> tuple[int, int]:
    c = cf_consumer(broker)
    try:
        return c.get_watermark_offsets(TopicPartition(topic, partition), timeout=10, cached=False)
    finally:
        c.close()


def test_offsets_for_times(broker):
    topic = unique("off-times")
    create_topic(broker, topic, 1)
    base = int(time.time() * 1000) - 600_000
    ts = [base + i * 1000 for i in range(20)]
    producer = cf_producer(broker, {"acks": "all", "linger.ms": 50})
    for i in range(10):  # one batch per record
        cf_produce(producer, topic, [{"key": b"k", "value": f"v{i}".encode(), "timestamp": ts[i]}])
    # ten records in (most likely) one batch: the lookup must find records inside a batch too
    cf_produce(producer, topic, [{"key": b"k", "value": f"v{i}".encode(), "timestamp": ts[i]} for i in range(10, 20)])

    got = cf_consume(broker, topic, 20)
    assert [(r.offset, r.timestamp) for r in got] == list(enumerate(ts))

    cases = {
        base - 5_000: 0,
        base: 0,
        base + 5_000: 5,
        base + 5_001: 6,
        base + 12_500: 13,
        base + 15_000: 15,
        base + 19_000: 19,
        base + 19_001: -1,  # no record that late: offset -1
    }
    c = cf_consumer(broker)
    try:
        for target, want in cases.items():
            (tp,) = c.offsets_for_times([TopicPartition(topic, 0, target)], timeout=10)
            assert tp.error is None and tp.offset == want, f"timestamp {target - base:+} ms: got {tp.offset}, want {want}"
        # Consuming from the returned offset yields the record with that timestamp.
        (tp,) = c.offsets_for_times([TopicPartition(topic, 0, base + 7_000)], timeout=10)
        c.assign([tp])
        msg = None
        deadline = time.monotonic() + 10
        while msg is None and time.monotonic() < deadline:
            msg = c.poll(0.2)
        assert msg is not None and msg.error() is None
        assert (msg.offset(), msg.timestamp(), msg.value()) == (7, (TIMESTAMP_CREATE_TIME, base + 7_000), b"v7")
    finally:
        c.close()

    from kafka import TopicPartition as KpTopicPartition

    kc = kp_consumer(broker)
    try:
        tp = KpTopicPartition(topic, 0)
        found = kc.offsets_for_times({tp: base + 14_500})[tp]
        assert (found.offset, found.timestamp) == (15, base + 15_000)
        assert kc.offsets_for_times({tp: base + 60_000})[tp] is None
    finally:
        kc.close(autocommit=False)


def test_watermarks_and_list_offsets(broker):
    topic = unique("off-marks")
    create_topic(broker, topic, 3)
    base = int(time.time() * 1000) - 60_000
    # Partition 0: record 7 carries the largest timestamp; partition 1: 25 records; partition 2: empty.
    p0 = [{"value": f"p0-{i}".encode(), "partition": 0, "timestamp": base + (50_000 if i == 7 else i)} for i in range(10)]
    p1 = [{"value": f"p1-{i}".encode(), "partition": 1} for i in range(25)]
    cf_produce(cf_producer(broker, {"acks": "all"}), topic, p0 + p1)

    assert watermarks(broker, topic, 0) == (0, 10)
    assert watermarks(broker, topic, 1) == (0, 25)
    assert watermarks(broker, topic, 2) == (0, 0)

    admin = cf_admin(broker)
    tps = [TopicPartition(topic, p) for p in range(3)]
    for spec, want in [(OffsetSpec.earliest(), [0, 0, 0]), (OffsetSpec.latest(), [10, 25, 0])]:
        futs = admin.list_offsets({tp: spec for tp in tps}, request_timeout=10)
        assert [futs[tp].result(timeout=15).offset for tp in tps] == want
    info = admin.list_offsets({tps[0]: OffsetSpec.max_timestamp()}, request_timeout=10)[tps[0]].result(timeout=15)
    assert (info.offset, info.timestamp) == (7, base + 50_000)

    from kafka import TopicPartition as KpTopicPartition

    kc = kp_consumer(broker)
    try:
        ktps = [KpTopicPartition(topic, p) for p in range(3)]
        assert [kc.beginning_offsets(ktps)[tp] for tp in ktps] == [0, 0, 0]
        assert [kc.end_offsets(ktps)[tp] for tp in ktps] == [10, 25, 0]
    finally:
        kc.close(autocommit=False)


def test_log_append_time_topic(broker):
    topic = unique("off-lat")
    create_topic(broker, topic, 1, config={"message.timestamp.type": "LogAppendTime"})
    old = int(time.time() * 1000) - 3_600_000
    before = int(time.time() * 1000)
    cf_produce(cf_producer(broker, {"acks": "all"}), topic,
               [{"value": f"v{i}".encode(), "timestamp": old} for i in range(5)])
    after = int(time.time() * 1000)
    c = cf_consumer(broker)
    try:
        c.assign([TopicPartition(topic, 0, 0)])
        msgs = []
        deadline = time.monotonic() + 15
        while len(msgs) < 5 and time.monotonic() < deadline:
            msgs += [m for m in c.consume(10, 0.2) if m.error() is None]
        assert len(msgs) == 5
        for m in msgs:
            kind, ts = m.timestamp()
            assert kind == TIMESTAMP_LOG_APPEND_TIME, f"timestamp type {kind}"
            assert before - 1000 <= ts <= after + 1000, f"log append time {ts} outside [{before}, {after}]"
    finally:
        c.close()


def test_delete_records_moves_log_start(broker):
    topic = unique("off-del")
    create_topic(broker, topic, 2)
    cf_produce(cf_producer(broker, {"acks": "all"}), topic,
               [{"value": f"v{i}".encode(), "partition": 0} for i in range(100)]
               + [{"value": f"w{i}".encode(), "partition": 1} for i in range(10)])
    admin = cf_admin(broker)

    tp0 = TopicPartition(topic, 0, 30)
    res = admin.delete_records([tp0], request_timeout=10)
    (fut,) = res.values()
    assert fut.result(timeout=15).low_watermark == 30
    assert watermarks(broker, topic, 0) == (30, 100)
    assert watermarks(broker, topic, 1) == (0, 10), "other partitions are untouched"

    got = cf_consume(broker, topic, 70, partitions=[0])
    assert [r.offset for r in got] == list(range(30, 100))
    assert got[0].value == b"v30"

    # OFFSET_END (-1) deletes everything up to the high watermark.
    (fut,) = admin.delete_records([TopicPartition(topic, 1, OFFSET_END)], request_timeout=10).values()
    assert fut.result(timeout=15).low_watermark == 10
    assert watermarks(broker, topic, 1) == (10, 10)

    # Past the high watermark: OFFSET_OUT_OF_RANGE, nothing changes.
    (fut,) = admin.delete_records([TopicPartition(topic, 0, 101)], request_timeout=10).values()
    with pytest.raises(KafkaException) as exc:
        fut.result(timeout=15)
    assert exc.value.args[0].code() == KafkaError.OFFSET_OUT_OF_RANGE, exc.value
    assert watermarks(broker, topic, 0) == (30, 100)

    from kafka import TopicPartition as KpTopicPartition

    kp = kp_admin(broker)
    try:
        out = kp.delete_records({KpTopicPartition(topic, 0): 50})
        assert out[KpTopicPartition(topic, 0)]["low_watermark"] == 50, out
    finally:
        kp.close()

    # New records continue the offsets; the log start survives a graceful restart.
    reports = cf_produce(cf_producer(broker, {"acks": "all"}), topic, [{"value": b"v100", "partition": 0}])
    assert reports[0][1].offset == 100
    broker.stop()
    broker.start()
    assert watermarks(broker, topic, 0) == (50, 101)
    assert watermarks(broker, topic, 1) == (10, 10)
    got = cf_consume(broker, topic, 51, partitions=[0])
    assert [r.offset for r in got] == list(range(50, 101))

    # A fetch below the log start is out of range; auto.offset.reset=earliest lands on the log start.
    got = cf_consume(broker, topic, 51, partitions=[0], start_offset=10)
    assert got and got[0].offset == 50, [r.offset for r in got[:3]]
