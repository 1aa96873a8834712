"""The admin HTTP API on --admin-listen. Its JSON shapes are not final, so these tests assert on status codes
and on fields any shape will have (`name`, `partitions`, `lag`), and cross-check state through Kafka clients."""

from __future__ import annotations

import json
import re
import time

import pytest
from confluent_kafka import TopicPartition

from harness import (
    cf_admin,
    cf_consumer,
    cf_produce,
    cf_producer,
    create_topic,
    http_request,
    unique,
    wait_for_partitions,
)

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)(\s+-?\d+)?$")


def call(broker, method: str, path: str, body=None):
    status, headers, raw = http_request(method, broker.admin_url + path, body=body)
    return status, headers, raw


def as_json(raw: bytes, context: str):
    try:
        return json.loads(raw)
    except ValueError:
        pytest.fail(f"{context}: body is not JSON: {raw[:500]!r}")


def find_named(doc, name: str):
    """The first object in `doc` whose `name` is `name` (or `name` itself when listed as a bare string)."""
    if isinstance(doc, dict):
        if doc.get("name") == name:
            return doc
        for v in doc.values():
            hit = find_named(v, name)
            if hit is not None:
                return hit
    elif isinstance(doc, list):
        for v in doc:
            if v == name:
                return v
            hit = find_named(v, name)
            if hit is not None:
                return hit
    return None


def values_of(doc, key: str) -> list:
    out = []
    if isinstance(doc, dict):
        for k, v in doc.items():
            if k == key:
                out.append(v)
            out += values_of(v, key)
    elif isinstance(doc, list):
        for v in doc:
            out += values_of(v, key)
    return out


def partition_count_of(obj) -> int | None:
    p = obj.get("partitions") if isinstance(obj, dict) else None
    if isinstance(p, int):
        return p
    if isinstance(p, list):
        return len(p)
    return None


def test_health(broker):
    status, _, body = call(broker, "GET", "/health")
    assert status == 200, body


def test_metrics_after_produce(broker):
    topic = unique("http-metrics")
    create_topic(broker, topic, 2)
    cf_produce(cf_producer(broker, {"acks": "all"}), topic, [{"key": b"k", "value": b"v" * 100} for _ in range(25)])

    deadline = time.monotonic() + 5
    while True:
        status, headers, raw = call(broker, "GET", "/metrics")
        assert status == 200, raw[:500]
        text = raw.decode()
        if any(topic in line for line in text.splitlines() if not line.startswith("#")):
            break
        assert time.monotonic() < deadline, f"no metric mentions topic {topic}:\n{text[:3000]}"
        time.sleep(0.2)

    content_type = {k.lower(): v for k, v in headers.items()}.get("content-type", "")
    assert content_type.startswith("text/plain"), content_type
    names = set()
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, f"not a Prometheus sample line: {line!r}"
        float(m.group(3))  # the value parses (NaN/+Inf included)
        names.add(m.group(1))
    assert any(n.startswith("sluice_") for n in names), sorted(names)[:20]
    # The memory budgets and the per-address cap are visible to operators (issue 10).
    for name in ("sluice_request_bytes_in_flight", "sluice_fetch_reply_bytes_unsent", "sluice_connections_refused_total"):
        assert name in names, f"{name} missing from /metrics"


def test_topic_crud_over_http(broker):
    topic = unique("http-topic")
    status, _, raw = call(broker, "POST", "/v1/topics",
                          {"name": topic, "partitions": 3, "configs": {"retention.ms": "3600000"}})
    assert status in (200, 201), f"create: {status} {raw[:500]!r}"

    # Visible to Kafka clients, with the config.
    admin = cf_admin(broker)
    wait_for_partitions(broker, topic, 3, admin=admin)
    from confluent_kafka.admin import ConfigResource, ResourceType

    res = ConfigResource(ResourceType.TOPIC, topic)
    cfg = admin.describe_configs([res])[res].result(timeout=15)
    assert cfg["retention.ms"].value == "3600000"

    status, _, raw = call(broker, "GET", "/v1/topics")
    assert status == 200, raw[:500]
    listing = as_json(raw, "GET /v1/topics")
    assert find_named(listing, topic) is not None, f"{topic} not listed: {raw[:1000]!r}"

    status, _, raw = call(broker, "GET", f"/v1/topics/{topic}")
    assert status == 200, raw[:500]
    doc = as_json(raw, "GET /v1/topics/{name}")
    described = find_named(doc, topic)
    assert isinstance(described, dict), f"no object named {topic}: {raw[:1000]!r}"
    assert partition_count_of(described) == 3, f"partitions: {raw[:1000]!r}"

    status, _, raw = call(broker, "POST", "/v1/topics", {"name": topic, "partitions": 1})
    assert 400 <= status < 500, f"creating an existing topic answered {status}: {raw[:500]!r}"
    as_json(raw, "duplicate create")

    status, _, raw = call(broker, "DELETE", f"/v1/topics/{topic}")
    assert status in (200, 202, 204), f"delete: {status} {raw[:500]!r}"
    deadline = time.monotonic() + 10
    while topic in admin.list_topics(timeout=10).topics:
        assert time.monotonic() < deadline, "topic deleted over HTTP is still in Kafka metadata"
        time.sleep(0.1)
    status, _, raw = call(broker, "GET", f"/v1/topics/{topic}")
    assert status == 404, f"deleted topic: {status} {raw[:500]!r}"


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"",
        b"[1, 2, 3]",
        json.dumps({"partitions": 3}).encode(),  # no name
        json.dumps({"name": "bad name!", "partitions": 1}).encode(),
        json.dumps({"name": "ok-name", "partitions": -5}).encode(),
        json.dumps({"name": "ok-name", "partitions": "three"}).encode(),
    ],
    ids=["malformed", "empty", "array", "no-name", "invalid-name", "negative-partitions", "string-partitions"],
)
def test_bad_create_requests_are_4xx_json(broker, body):
    status, _, raw = call(broker, "POST", "/v1/topics", body)
    assert 400 <= status < 500, f"{body!r} answered {status}: {raw[:500]!r}"
    as_json(raw, f"error body for {body!r}")
    status, _, raw = call(broker, "GET", "/health")
    assert status == 200
    assert "ok-name" not in cf_admin(broker).list_topics(timeout=10).topics


def test_unknown_topic_and_group_are_404(broker):
    missing = unique("http-missing")
    for method, path in [("GET", f"/v1/topics/{missing}"), ("DELETE", f"/v1/topics/{missing}"),
                         ("GET", f"/v1/groups/{missing}")]:
        status, _, raw = call(broker, method, path)
        assert status == 404, f"{method} {path}: {status} {raw[:500]!r}"
    assert missing not in cf_admin(broker).list_topics(timeout=10).topics, "a lookup must not create the topic"


def test_groups_over_http_with_lag(broker):
    topic = unique("http-lag")
    create_topic(broker, topic, 1)
    cf_produce(cf_producer(broker, {"acks": "all"}), topic, [{"value": f"v{i}".encode()} for i in range(10)])
    group = unique("g-http")
    c = cf_consumer(broker, group)
    try:
        c.commit(offsets=[TopicPartition(topic, 0, 4)], asynchronous=False)
    finally:
        c.close()

    status, _, raw = call(broker, "GET", "/v1/groups")
    assert status == 200, raw[:500]
    assert group in raw.decode(), f"{group} not listed: {raw[:1000]!r}"

    status, _, raw = call(broker, "GET", f"/v1/groups/{group}")
    assert status == 200, raw[:500]
    doc = as_json(raw, "GET /v1/groups/{id}")
    lags = values_of(doc, "lag")
    assert 6 in lags, f"expected a partition lag of 6 (10 records, committed 4): {raw[:1500]!r}"
