"""Database pipelines end to end on a real broker process, with the first-party connectors the binary carries
(no upload):

- topic → database: `jdbc-sink` created over Kafka Connect's REST API, fed by a real Kafka client
  (confluent-kafka, idempotent), writing into a SQLite database, while the broker is killed with SIGKILL;
- database → topic → transform → database: `examples/pipelines/sqlite.sh`, the demo the README starts with,
  run as a user would against a running broker;
- a connector's `transforms` chain with the bundled transforms, seen by a Kafka consumer.

The sink keeps its input positions in the target database, in the same transaction as the rows it writes, so
after every crash the target holds each record exactly once: a row count equal to the number of distinct ids
equal to the number produced.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from harness import sluice_cli as sluice, REPO_ROOT, cf_consume, cf_produce, cf_producer, create_topic, http_request, require_binary, unique, wait_for

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


def test_rows_arrive_exactly_once_in_sqlite_across_three_kill_9s_mid_pipeline(make_broker, tmp_path):
    broker = make_broker()
    topic = unique("orders")
    create_topic(broker, topic, partitions=3)
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
    shown = {}

    def offsets_shown():
        shown["body"] = rest(broker, "GET", "/connectors/orders-sink/offsets")[1]
        return sum(e["offset"]["kafka_offset"] for e in shown["body"]["offsets"]) == total

    if not offsets_shown():
        try:
            wait_for(offsets_shown, "offsets shown")
        except AssertionError as e:
            raise AssertionError(f"{e}: {shown['body']}") from None


def test_database_to_database_in_sqlite_survives_three_kill_9s_mid_pipeline(make_broker, tmp_path):
    """jdbc-source → topic → jdbc-sink with the broker killed three times while rows flow: the target ends equal
    to the source, every row once (the source's position commits with its records in a broker transaction,
    the sink's with its rows in the target's)."""
    broker = make_broker()
    source, target = tmp_path / "source.db", tmp_path / "target.db"
    with sqlite3.connect(source) as conn:
        conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT NOT NULL, qty INTEGER NOT NULL)")
    create_topic(broker, "db-orders", partitions=3)
    sink = {"connector.class": "jdbc-sink", "topics": "db-orders", "tasks.max": "2", "connection.url": f"sqlite:{target}",
            "table.name.format": "orders", "insert.mode": "upsert", "pk.mode": "record_key", "auto.create": "true"}
    src = {"connector.class": "io.confluent.connect.jdbc.JdbcSourceConnector", "connection.url": f"jdbc:sqlite:{source}",
           "mode": "incrementing", "incrementing.column.name": "id", "topic.prefix": "db-", "batch.max.rows": "500",
           "poll.interval.ms": "100"}
    for name, config in (("db-sink", sink), ("db-source", src)):
        status, body = rest(broker, "POST", "/connectors", {"name": name, "config": config})
        assert status == 201, body

    def target_counts():
        try:
            with sqlite3.connect(target, timeout=1) as conn:
                return conn.execute("SELECT COUNT(*), COUNT(DISTINCT id) FROM orders").fetchone()
        except sqlite3.Error:
            return (-1, -1)

    total = 0
    for round_ in range(3):
        with sqlite3.connect(source) as conn:
            conn.executemany("INSERT INTO orders VALUES (?, ?, ?)", [(i, f"c{i % 97}", i % 13) for i in range(total + 1, total + 10_001)])
        total += 10_000
        wait_for(lambda: target_counts()[0] > total - 10_000, f"round {round_}: rows flowing", timeout=60)
        broker.kill9()
        rows, distinct = target_counts()
        assert rows == distinct, f"after kill {round_ + 1}: {rows} rows but {distinct} ids"
        broker.start()
    wait_for(lambda: target_counts() == (total, total), f"all {total} rows once", timeout=180)
    with sqlite3.connect(target) as conn:
        assert conn.execute("SELECT MIN(id), MAX(id), SUM(qty) FROM orders").fetchone() == (1, total, sum(i % 13 for i in range(1, total + 1)))
    # Upserts would hide a record written twice: the topic itself holds each row once.
    records = cf_consume(broker, "db-orders", total, conf={"isolation.level": "read_committed"}, timeout=60)
    assert len(records) == total and len({r.key for r in records}) == total
    for name in ("db-source", "db-sink"):
        status, body = rest(broker, "GET", f"/connectors/{name}/status")
        assert status == 200 and all(t["state"] == "RUNNING" for t in body["tasks"]), body


def test_the_sqlite_example_pipeline_runs_as_documented(make_broker, tmp_path):
    """`examples/pipelines/sqlite.sh`: SQLite → jdbc-source → pii-mask → jdbc-sink → SQLite, rows, new rows and
    an update arriving with emails masked; the script checks the target itself and exits non-zero otherwise."""
    broker = make_broker()
    env = dict(os.environ, SLUICE=str(require_binary()), SLUICE_BROKERS=broker.bootstrap, SLUICE_ADMIN_URL=broker.admin_url,
               DEMO_DIR=str(tmp_path / "demo"))
    script = REPO_ROOT / "examples" / "pipelines" / "sqlite.sh"
    proc = subprocess.run([str(script)], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, f"{script} exited {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
    assert "10,100 rows in the target" in proc.stdout, proc.stdout
    listed = sluice(broker, "connector", "list").stdout
    assert "orders-source" in listed and "orders-sink" in listed and "FAILED" not in listed, listed


def test_a_connectors_transform_chain_masks_routes_and_filters_with_the_bundled_transforms(make_broker, tmp_path):
    """`file-source` with `transforms=keep,mask,route` (the binary's json-filter, pii-mask and router), created over
    the REST API: a Kafka consumer sees only kept lines, emails masked, `eu` ones in the route's topic; a step naming
    a module the registry lacks is refused at create."""
    broker = make_broker()
    lines = tmp_path / "events.jsonl"
    events = [{"id": i, "region": "eu" if i % 3 == 0 else "us", "email": f"u{i}@example.com", "keep": i % 5 != 0} for i in range(30)]
    lines.write_text("".join(json.dumps(e) + "\n" for e in events))
    suffix = unique("chain")
    topic, eu = f"events-{suffix}", f"events-eu-{suffix}"
    config = {
        "connector.class": "file-source", "file": str(lines), "topic": topic,
        "transforms": "keep,mask,route",
        "transforms.keep.type": "json-filter", "transforms.keep.field": "keep", "transforms.keep.equals": "true",
        "transforms.mask.type": "pii-mask", "transforms.mask.fields": "email",
        "transforms.route.type": "router", "transforms.route.field": "region", "transforms.route.routes": f"eu:{eu}",
        "transforms.route.outputs": eu,
    }
    status, body = rest(broker, "POST", "/connectors", {"name": f"chain-{suffix}", "config": config})
    assert status == 201, body
    expected = lambda region: [dict(e, email="***") for e in events if e["keep"] and e["region"] == region]
    for name, region in ((topic, "us"), (eu, "eu")):
        wait_for(lambda: http_request("GET", f"{broker.admin_url}/v1/topics/{name}", timeout=5)[0] == 200, f"topic {name}")
        got = [json.loads(r.value) for r in cf_consume(broker, name, len(expected(region)), conf={"isolation.level": "read_committed"})]
        assert sorted(got, key=lambda e: e["id"]) == expected(region), name
    status, body = rest(broker, "GET", f"/connectors/chain-{suffix}/status")
    assert status == 200 and body["tasks"][0]["state"] == "RUNNING", body
    # A step naming a module the registry does not have is refused when the connector is created.
    bad = dict(config, **{"transforms.route.type": "no-such-transform"})
    status, body = rest(broker, "POST", "/connectors", {"name": f"bad-{suffix}", "config": bad})
    assert status == 400 and "no-such-transform" in body["message"], body


@pytest.mark.parametrize("script", ["postgres.sh", "mariadb.sh"])
def test_the_server_example_pipelines_carry_100000_rows(make_broker, script):
    """`examples/pipelines/{postgres,mariadb}.sh`: a throwaway server from the system's binaries, 100,000 orders
    → jdbc-source → pii-mask → jdbc-sink → another database of it, then new rows and an update; the script
    checks the target (counts, the update, every email masked) and exits non-zero otherwise."""
    broker = make_broker()
    demo = Path(tempfile.mkdtemp(prefix="sluice-demo-"))
    demo.chmod(0o755)  # PostgreSQL runs as nobody under root: it must reach its directory
    try:
        env = dict(os.environ, SLUICE=str(require_binary()), SLUICE_BROKERS=broker.bootstrap, SLUICE_ADMIN_URL=broker.admin_url,
                   DEMO_DIR=str(demo))
        path = REPO_ROOT / "examples" / "pipelines" / script
        proc = subprocess.run([str(path)], capture_output=True, text=True, timeout=600, env=env, cwd=demo)
        assert proc.returncode == 0, f"{script} exited {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
        assert "100,100 rows in warehouse.orders" in proc.stdout, proc.stdout
    finally:
        shutil.rmtree(demo, ignore_errors=True)
