"""Hostile and malformed input on the Kafka port, spoken with raw sockets. After each case the broker must
still be healthy and serve a normal produce/consume round-trip: a bad frame costs one connection, never the
server."""

from __future__ import annotations

import random
import socket
import time

from confluent_kafka import KafkaError, TopicPartition

from harness import assert_serves_traffic, cf_consume, cf_consumer, cf_produce, cf_producer, create_topic, unique
from kafka_wire import (
    API_VERSIONS,
    CORRUPT_MESSAGE,
    UNSUPPORTED_VERSION,
    api_versions_v0,
    api_versions_v3,
    closed_by_peer,
    connect,
    frame,
    i32,
    parse_api_versions,
    parse_produce_v3,
    produce_v3,
    read_response,
    record_batch,
)

RSS_LIMIT_BYTES = 1024 * 1024 * 1024
INVALID_TIMESTAMP = 32
INVALID_RECORD = 87
HOUR_MS = 3_600_000


def high_watermark(broker, topic: str) -> int:
    c = cf_consumer(broker)
    try:
        return c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10, cached=False)[1]
    finally:
        c.close()


def test_api_versions_v0_and_v3(broker):
    with connect(broker.port) as s:
        s.sendall(api_versions_v0(7))
        corr, body = read_response(s)
        assert corr == 7
        err, v0 = parse_api_versions(body)
        assert err == 0
        s.sendall(api_versions_v3(8))
        corr, body = read_response(s)
        assert corr == 8
        err, v3 = parse_api_versions(body, flexible=True)
        assert err == 0
    assert v0 == v3, "both versions must advertise the same table"
    for key in (0, 1, 2, 3, 8, 9, 10, 11, 12, 13, 14, 18, 19, 20):
        assert key in v0, f"api key {key} not advertised: {sorted(v0)}"
    assert v0[API_VERSIONS][0] == 0 and v0[API_VERSIONS][1] >= 3
    assert v0[0][0] <= 3 <= v0[0][1], f"Produce v3 (used below) not in {v0[0]}"
    assert_serves_traffic(broker)


def test_api_versions_unsupported_version(broker):
    with connect(broker.port) as s:
        # Kafka answers an ApiVersions version it does not know with UNSUPPORTED_VERSION in a v0 body that
        # still lists its ApiVersions range, so the client can retry with a version both sides speak.
        s.sendall(frame(API_VERSIONS, 99, 41, b"", flexible_header=True))
        corr, body = read_response(s)
        assert corr == 41
        err, apis = parse_api_versions(body)
        assert err == UNSUPPORTED_VERSION, f"error code {err}"
        assert API_VERSIONS in apis and apis[API_VERSIONS][0] == 0 and apis[API_VERSIONS][1] >= 3, apis
        # The connection stays usable for the retry.
        s.sendall(api_versions_v0(42))
        corr, body = read_response(s)
        assert corr == 42 and parse_api_versions(body)[0] == 0
    assert_serves_traffic(broker)


def test_hand_made_batches_valid_and_bad_crc(broker):
    topic = unique("raw")
    create_topic(broker, topic, 1)
    good = record_batch([(b"k1", b"v1", [("h", b"x")]), (None, b"v2", []), (b"k3", None, [])])
    bad = record_batch([(b"evil", b"payload", [])], corrupt_crc=True)
    with connect(broker.port) as s:
        s.sendall(produce_v3(1, topic, 0, good))
        corr, body = read_response(s)
        assert corr == 1
        assert parse_produce_v3(body) == [(topic, 0, 0, 0)]

        s.sendall(produce_v3(2, topic, 0, bad))
        corr, body = read_response(s)
        assert corr == 2
        [(t, p, err, _)] = parse_produce_v3(body)
        assert (t, p, err) == (topic, 0, CORRUPT_MESSAGE), f"bad CRC answered with error {err}"

        s.sendall(produce_v3(3, topic, 0, good))
        corr, body = read_response(s)
        assert corr == 3 and parse_produce_v3(body) == [(topic, 0, 0, 3)]

    assert high_watermark(broker, topic) == 6, "the corrupt batch must not be stored"
    got = cf_consume(broker, topic, 6)
    assert [(r.offset, r.key, r.value, r.headers) for r in got] == [
        (0, b"k1", b"v1", (("h", b"x"),)), (1, None, b"v2", ()), (2, b"k3", None, ()),
        (3, b"k1", b"v1", (("h", b"x"),)), (4, None, b"v2", ()), (5, b"k3", None, ()),
    ]
    assert_serves_traffic(broker)


def test_acks_zero_gets_no_response(broker):
    topic = unique("raw-acks0")
    create_topic(broker, topic, 1)
    with connect(broker.port) as s:
        s.sendall(produce_v3(100, topic, 0, record_batch([(b"k", b"fire-and-forget", [])]), acks=0))
        s.sendall(api_versions_v0(101))
        corr, _ = read_response(s)
        assert corr == 101, "the broker answered an acks=0 produce"
    deadline = time.monotonic() + 5
    while high_watermark(broker, topic) != 1:
        assert time.monotonic() < deadline, "acks=0 record was not stored"
        time.sleep(0.1)
    assert_serves_traffic(broker)


def test_negative_frame_length(broker):
    with connect(broker.port) as s:
        s.sendall(i32(-1) + b"\x00" * 16)
        assert closed_by_peer(s), "a frame of length -1 must close the connection"
    assert_serves_traffic(broker)


def test_frame_claiming_2gb(broker):
    with connect(broker.port) as s:
        try:
            s.sendall(i32(0x7FFFFFFF) + b"\x00" * 65536)
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed before we finished: fine
        assert closed_by_peer(s), "a 2 GiB frame must be refused by closing the connection"
    assert broker.rss_bytes() < RSS_LIMIT_BYTES, f"broker RSS {broker.rss_bytes()} after a 2 GiB length prefix"
    assert_serves_traffic(broker)


def test_truncated_frame_then_disconnect(broker):
    for _ in range(5):
        with connect(broker.port) as s:
            s.sendall(i32(100) + api_versions_v0(5)[4:])  # promises 100 bytes, sends a few
    with connect(broker.port) as s:  # half a length prefix
        s.sendall(b"\x00\x00")
    assert_serves_traffic(broker)


def test_random_garbage(broker):
    rng = random.Random(20240601)
    for i in range(30):
        with connect(broker.port) as s:
            try:
                s.sendall(rng.randbytes(rng.randint(1, 8192)))
                s.shutdown(socket.SHUT_WR)
            except OSError:  # the broker already closed it (EPIPE, ECONNRESET, ENOTCONN)
                continue
            assert closed_by_peer(s, timeout=10), f"garbage #{i}: connection left open after EOF"
    assert broker.rss_bytes() < RSS_LIMIT_BYTES
    assert_serves_traffic(broker)


def test_unknown_api_key(broker):
    with connect(broker.port) as s:
        s.sendall(frame(9999, 0, 77, b"\x00" * 8))
        assert closed_by_peer(s), "an unknown api key cannot be answered; the connection must be closed"
    # The same for a known api at a version far outside its range (Metadata v999).
    with connect(broker.port) as s:
        s.sendall(frame(3, 999, 78, b"\x00" * 8))
        assert closed_by_peer(s), "an unsupported Metadata version must close the connection"
    assert_serves_traffic(broker)


def test_silent_and_stalled_clients_do_not_block_others(broker):
    idle = [connect(broker.port) for _ in range(20)]
    stalled = [connect(broker.port) for _ in range(5)]
    for s in stalled:
        s.sendall(i32(64) + b"\x00\x12")  # a header that never finishes
    try:
        assert_serves_traffic(broker)
        with connect(broker.port) as s:  # and raw requests on a new connection are answered at once
            s.sendall(api_versions_v0(9))
            assert read_response(s)[0] == 9
    finally:
        for s in idle + stalled:
            s.close()
    assert_serves_traffic(broker)


def test_header_keys_must_be_utf8(broker):
    """Issue 10, item 11: clients decode header keys as strings, so a record whose header key is not UTF-8
    breaks every consumer of the topic. The produce is refused with INVALID_RECORD and nothing is stored."""
    topic = unique("raw-hdr")
    create_topic(broker, topic, 1)
    bad = record_batch([(b"k", b"v", [("fine", b"\xff"), (b"\xc3\x28", b"x")])])
    good = record_batch([(b"k", b"v", [("cl\u00e9", b"\xff\x00")])])
    with connect(broker.port) as s:
        s.sendall(produce_v3(1, topic, 0, bad))
        corr, body = read_response(s)
        assert corr == 1 and parse_produce_v3(body)[0][2] == INVALID_RECORD, parse_produce_v3(body)
        s.sendall(produce_v3(2, topic, 0, good))
        corr, body = read_response(s)
        assert corr == 2 and parse_produce_v3(body) == [(topic, 0, 0, 0)]
    assert high_watermark(broker, topic) == 1
    assert [r.headers for r in cf_consume(broker, topic, 1)] == [(("cl\u00e9", b"\xff\x00"),)]
    assert_serves_traffic(broker)


def test_future_timestamps_are_refused_with_invalid_timestamp(make_broker):
    """Issue 10, item 8: one record dated in the year 3000 used to pin time retention for the whole
    partition. As in Kafka 4.0, a CreateTime record more than message.timestamp.after.max.ms (1 hour by
    default) ahead of the broker's clock is refused with INVALID_TIMESTAMP; a topic may loosen it."""
    broker = make_broker()
    topic, loose = unique("ts-bound"), unique("ts-loose")
    create_topic(broker, topic, 1)
    create_topic(broker, loose, 1, config={"message.timestamp.after.max.ms": str(1000 * 24 * HOUR_MS)})
    now = int(time.time() * 1000)
    year_3000 = 32_503_680_000_000
    producer = cf_producer(broker, {"retries": 0})
    # Separate produces: a refusal covers the whole batch, as in Kafka.
    [(error, _)] = cf_produce(producer, topic, [{"value": b"far", "timestamp": year_3000}], check=False)
    assert error is not None and error.code() == KafkaError.INVALID_TIMESTAMP, error
    cf_produce(producer, topic, [{"value": b"soon", "timestamp": now + HOUR_MS // 2}])
    # Raw frames get the same answer, and nothing of the refused batch is stored.
    with connect(broker.port) as s:
        s.sendall(produce_v3(1, topic, 0, record_batch([(None, b"raw", [])], base_timestamp=now + 2 * HOUR_MS)))
        _, body = read_response(s)
        assert parse_produce_v3(body)[0][2] == INVALID_TIMESTAMP
    assert high_watermark(broker, topic) == 1
    # The topic override loosens the bound.
    cf_produce(producer, loose, [{"value": b"later", "timestamp": now + 10 * 24 * HOUR_MS}])
    assert high_watermark(broker, loose) == 1
