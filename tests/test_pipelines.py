"""Topic → database pipelines end to end: the first-party `jdbc-sink` connector (a Wasm component) uploaded with
`sluice plugin upload` and created over Kafka Connect's REST API on a real broker process, fed by a real Kafka
client (confluent-kafka, idempotent), writing into a SQLite database, while the broker is killed with SIGKILL.

The sink keeps its input positions in the target database, in the same transaction as the rows it writes, so
after every crash the target holds each record exactly once: a row count equal to the number of distinct ids
equal to the number produced.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time

import pytest

from harness import sluice_cli as sluice, REPO_ROOT, cf_produce, cf_producer, create_topic, http_request, require_binary, unique, wait_for

GUEST_DIR = REPO_ROOT / "target" / "wasm-guests" / "wasm32-wasip2" / "release"


@pytest.fixture(scope="session")
def jdbc_sink():
    """Builds the jdbc-sink component once per session (a no-op when it is current)."""
    cmd = ["cargo", "build", "--release", "--target", "wasm32-wasip2", "--target-dir", str(REPO_ROOT / "target" / "wasm-guests"), "-p", "jdbc-sink"]
    subprocess.run(cmd, cwd=REPO_ROOT, check=True, timeout=1200)
    path = GUEST_DIR / "jdbc_sink.wasm"
    assert path.exists(), f"{path} was not built"
    return path


def rest(broker, method: str, path: str, body=None):
    status, _, raw = http_request(method, f"{broker.admin_url}{path}", body=body, timeout=30)
    return status, (json.loads(raw) if raw.strip() else None)


def counts(db) -> tuple[int, int]:
    """(rows, distinct ids) in the target, or (-1, -1) while the table does not exist or is locked."""
    try:
        with sqlite3.connect(db, timeout=1) as conn:
            return conn.execute("SELECT COUNT(*), COUNT(DISTINCT id) FROM sink_orders").fetchone()
    except sqlite3.Error:
        return (-1, -1)


def produce(broker, topic: str, ids: range):
    producer = cf_producer(broker, {"enable.idempotence": True, "acks": "all"})
    cf_produce(producer, topic, [{"key": json.dumps({"id": i}).encode(), "value": json.dumps({"id": i, "qty": i % 9, "note": f"n{i}"}).encode()} for i in ids])


def test_rows_arrive_exactly_once_in_sqlite_across_three_kill_9s_mid_pipeline(make_broker, jdbc_sink, tmp_path):
    broker = make_broker()
    topic = unique("orders")
    create_topic(broker, topic, partitions=3)
    out = sluice(broker, "plugin", "upload", str(jdbc_sink), "--name", "jdbc-sink").stdout
    assert out.startswith("Uploaded jdbc-sink (") and "sink" in out, out
    db = tmp_path / "target.db"
    config = {
        "connector.class": "jdbc-sink",
        "topics": topic,
        "tasks.max": "2",
        "connection.url": f"jdbc:sqlite:{db}",
        "auto.create": "true",
        "table.name.format": "sink_orders",
    }
    status, body = rest(broker, "POST", "/connectors", {"name": "orders-sink", "config": config})
    assert status == 201, body

    total = 0
    for round_ in range(3):
        produce(broker, topic, range(total, total + 10_000))
        total += 10_000
        # Kill the broker while the sink is part-way through what was just produced.
        wait_for(lambda: counts(db)[0] > total - 10_000, f"round {round_}: the sink writing", timeout=60)
        broker.kill9()
        rows, distinct = counts(db)
        assert rows == distinct, f"after kill {round_ + 1}: {rows} rows but {distinct} ids"
        broker.start()
    wait_for(lambda: counts(db) == (total, total), f"all {total} rows once", timeout=120)
    time.sleep(1)
    assert counts(db) == (total, total)
    with sqlite3.connect(db) as conn:
        positions = conn.execute("SELECT SUM(next_offset) FROM sluice_connect_offsets WHERE connector = 'orders-sink'").fetchone()[0]
    # Idempotent, non-transactional producers: no markers, so the positions are the record counts.
    assert positions == total
    status, body = rest(broker, "GET", "/connectors/orders-sink/status")
    assert status == 200 and all(t["state"] == "RUNNING" for t in body["tasks"]), body
    # What GET .../offsets shows follows the target's positions (copied at most a second behind).
    wait_for(lambda: sum(e["offset"]["kafka_offset"] for e in rest(broker, "GET", "/connectors/orders-sink/offsets")[1]["offsets"]) == total,
             "offsets shown")
