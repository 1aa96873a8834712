#!/usr/bin/env python3
"""Benchmark of topic → jdbc-sink → PostgreSQL (issue 12), beside the raw limits of the same database measured
the same way (multi-row INSERT statements of the size the sink sends, and COPY), on a throwaway PostgreSQL
cluster this script starts from the system's binaries (initdb/pg_ctl, as `nobody` when run as root).

    python3 tests/perf/sink_perf.py --brokers 127.0.0.1:9092 --admin http://127.0.0.1:9644 --records 200000 --tasks 1

(the broker's own first-party jdbc-sink; `--wasm FILE` uploads another build of it first).

N records of ~200 bytes (JSON objects with an id and five fields) are produced first; then the connector is
created and timed until the target table holds all N rows (polled with psql). Output is one JSON object.
Not collected by pytest: it measures, it does not assert.
"""

from __future__ import annotations

import argparse
import base64
import glob
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from transform_perf import http

USER = "bench"


def pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else name


def as_pg_user(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "nobody", "--", *cmd] if os.geteuid() == 0 else cmd


class Postgres:
    """A throwaway cluster with trust authentication on 127.0.0.1 and fsync on (like a real target)."""

    def __init__(self, settings: dict[str, str] | None = None):
        self.dir = tempfile.mkdtemp(prefix="sink-perf-pg-")
        os.chmod(self.dir, 0o755)
        if os.geteuid() == 0:
            shutil.chown(self.dir, "nobody")
        self.data = os.path.join(self.dir, "data")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        subprocess.run(as_pg_user([pg_bin("initdb"), "-D", self.data, "-U", USER, "-A", "trust", "-E", "UTF8"]), check=True,
                       capture_output=True)
        opts = f"-c port={self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.dir}"
        opts += "".join(f" -c {key}={value}" for key, value in (settings or {}).items())
        subprocess.run(as_pg_user([pg_bin("pg_ctl"), "-D", self.data, "-w", "-o", opts, "-l", os.path.join(self.dir, "log"), "start"]),
                       check=True, capture_output=True)

    def psql(self, sql: str, file: str | None = None) -> str:
        cmd = [pg_bin("psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", USER, "-d", "postgres", "-Atq", "-v", "ON_ERROR_STOP=1"]
        cmd += ["-f", file] if file else ["-c", sql]
        return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()

    def url(self) -> str:
        return f"postgres://127.0.0.1:{self.port}/postgres"

    def stop(self):
        subprocess.run(as_pg_user([pg_bin("pg_ctl"), "-D", self.data, "-m", "immediate", "stop"]), capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


def wait_for_rows(pg: Postgres, table: str, rows: int, started: float, timeout_s: float = 900) -> float:
    """Polls `SELECT COUNT(*)` every 250 ms until `table` holds `rows`; the seconds since `started`."""
    count = 0
    while count < rows:
        time.sleep(0.25)
        try:
            count = int(pg.psql(f"SELECT COUNT(*) FROM {table}") or 0)
        except subprocess.CalledProcessError:
            count = 0
        if time.perf_counter() - started > timeout_s:
            raise SystemExit(f"timed out with {count} of {rows} rows in {table}")
    return time.perf_counter() - started


def row(i: int) -> dict:
    return {"id": i, "customer": f"customer-{i % 9973:05d}", "sku": f"SKU-{i % 131:04d}-XL", "qty": i % 17,
            "price": round((i % 10_000) / 7, 2), "note": "x" * 96}


def raw_limits(pg: Postgres, records: int) -> dict:
    """The same rows into the same database without Sluice: 500-row INSERTs (what the sink sends) and COPY."""
    cols = "id, customer, sku, qty, price, note"
    pg.psql(f"CREATE TABLE raw_insert (id BIGINT, customer TEXT, sku TEXT, qty BIGINT, price DOUBLE PRECISION, note TEXT)")
    pg.psql(f"CREATE TABLE raw_copy (LIKE raw_insert)")
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
        f.write("BEGIN;\n")
        for start in range(0, records, 500):
            values = ",".join(
                "({id},'{customer}','{sku}',{qty},{price},'{note}')".format(**row(i)) for i in range(start, min(records, start + 500)))
            f.write(f"INSERT INTO raw_insert ({cols}) VALUES {values};\n")
            if (start // 500) % 10 == 9:
                f.write("COMMIT; BEGIN;\n")
        f.write("COMMIT;\n")
        insert_file = f.name
    with tempfile.NamedTemporaryFile("w", suffix=".csv", delete=False) as f:
        for i in range(records):
            r = row(i)
            f.write(f"{r['id']},{r['customer']},{r['sku']},{r['qty']},{r['price']},{r['note']}\n")
        csv_file = f.name
    os.chmod(insert_file, 0o644)
    os.chmod(csv_file, 0o644)
    started = time.perf_counter()
    pg.psql("", file=insert_file)
    insert_s = time.perf_counter() - started
    started = time.perf_counter()
    pg.psql(f"\\copy raw_copy FROM '{csv_file}' WITH (FORMAT csv)")
    copy_s = time.perf_counter() - started
    os.unlink(insert_file)
    os.unlink(csv_file)
    return {"insert_500_rows_per_statement_rows_per_s": round(records / insert_s), "copy_rows_per_s": round(records / copy_s)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--brokers", default="127.0.0.1:9092")
    ap.add_argument("--admin", default="http://127.0.0.1:9644")
    ap.add_argument("--wasm", help="upload this jdbc-sink component first (default: the broker's first-party one)")
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--tasks", type=int, default=1)
    args = ap.parse_args()

    pg = Postgres()
    try:
        run = uuid.uuid4().hex[:8]
        topic, name = f"sink-perf-{run}", f"sink-perf-{run}"
        admin = AdminClient({"bootstrap.servers": args.brokers})
        for fut in admin.create_topics([NewTopic(topic, args.partitions, 1)]).values():
            fut.result(timeout=30)
        p = Producer({"bootstrap.servers": args.brokers, "linger.ms": 20, "batch.size": 1_000_000,
                      "queue.buffering.max.messages": 2_000_000, "enable.idempotence": True})
        payload_bytes = 0
        for i in range(args.records):
            value = json.dumps(row(i)).encode()
            payload_bytes += len(value)
            while True:
                try:
                    p.produce(topic, key=json.dumps({"id": i}).encode(), value=value)
                    break
                except BufferError:
                    p.poll(0.05)
        assert p.flush(120) == 0

        if args.wasm:
            with open(args.wasm, "rb") as f:
                module = base64.b64encode(f.read()).decode()
            http(args.admin, "POST", "/v1/plugins", {"name": "jdbc-sink", "module_base64": module})
        config = {"connector.class": "jdbc-sink", "topics": topic, "tasks.max": str(args.tasks),
                  "connection.url": pg.url(), "connection.user": USER, "auto.create": "true",
                  "table.name.format": "sink_rows"}
        started = time.perf_counter()
        http(args.admin, "POST", "/connectors", {"name": name, "config": config})
        elapsed = wait_for_rows(pg, "sink_rows", args.records, started)
        http(args.admin, "DELETE", f"/connectors/{name}")
        result = {
            "records": args.records,
            "avg_value_bytes": round(payload_bytes / args.records),
            "partitions": args.partitions,
            "tasks": args.tasks,
            "sink_seconds": round(elapsed, 2),
            "sink_rows_per_s": round(args.records / elapsed),
        }
        result.update(raw_limits(pg, args.records))
        print(json.dumps(result))
    finally:
        pg.stop()


if __name__ == "__main__":
    main()
