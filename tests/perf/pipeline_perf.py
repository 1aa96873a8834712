#!/usr/bin/env python3
"""Benchmark of PostgreSQL → jdbc-source → topic → jdbc-sink → PostgreSQL (issue 12), end to end, with the
first-party connectors the broker carries, on a throwaway PostgreSQL cluster this script starts (see
sink_perf.py), beside the raw limits of the same database (500-row INSERTs and COPY of the same rows).

    python3 tests/perf/pipeline_perf.py --brokers 127.0.0.1:9092 --admin http://127.0.0.1:9644 --records 200000

A source table of N rows of ~200 bytes is loaded first; then the sink and the source connector are created and
timed until the target table holds all N rows (polled with psql): the initial load through the whole pipeline.
Output is one JSON object. Not collected by pytest: it measures, it does not assert.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid

from confluent_kafka.admin import AdminClient, NewTopic

from sink_perf import USER, Postgres, raw_limits, wait_for_rows
from transform_perf import http


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--brokers", default="127.0.0.1:9092")
    ap.add_argument("--admin", default="http://127.0.0.1:9644")
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--sink-tasks", type=int, default=2)
    ap.add_argument("--batch-rows", type=int, default=5000, help="the source's batch.max.rows")
    ap.add_argument("--chain", choices=["none", "source", "sink"], default="none",
                    help="put a pii-mask step (masking `customer`) in the source's or the sink's transforms chain")
    args = ap.parse_args()

    pg = Postgres()
    try:
        run = uuid.uuid4().hex[:8]
        pg.psql("CREATE TABLE src_rows (id BIGSERIAL PRIMARY KEY, customer TEXT, sku TEXT, qty BIGINT, price DOUBLE PRECISION, note TEXT)")
        pg.psql(f"INSERT INTO src_rows (customer, sku, qty, price, note) SELECT 'customer-' || lpad((i % 9973)::text, 5, '0'), "
                f"'SKU-' || lpad((i % 131)::text, 4, '0') || '-XL', i % 17, round(((i % 10000) / 7.0)::numeric, 2), repeat('x', 96) "
                f"FROM generate_series(1, {args.records}) i")
        pg.psql("CREATE TABLE dst_rows (id BIGINT PRIMARY KEY, customer TEXT, sku TEXT, qty BIGINT, price DOUBLE PRECISION, note TEXT)")
        prefix = f"pipe-{run}-"
        topic = f"{prefix}src_rows"
        admin = AdminClient({"bootstrap.servers": args.brokers})
        for fut in admin.create_topics([NewTopic(topic, args.partitions, 1)]).values():
            fut.result(timeout=30)
        connection = {"connection.url": pg.url(), "connection.user": USER}
        sink = {"connector.class": "jdbc-sink", "topics": topic, "tasks.max": str(args.sink_tasks), "table.name.format": "dst_rows",
                "insert.mode": "upsert", "pk.mode": "record_key", **connection}
        source = {"connector.class": "jdbc-source", "mode": "incrementing", "incrementing.column.name": "id",
                  "table.whitelist": "src_rows", "topic.prefix": prefix, "batch.max.rows": str(args.batch_rows),
                  "poll.interval.ms": "100", **connection}
        mask = {"transforms": "mask", "transforms.mask.type": "pii-mask", "transforms.mask.fields": "customer"}
        if args.chain == "source":
            source.update(mask)
        elif args.chain == "sink":
            sink.update(mask)
        http(args.admin, "POST", "/connectors", {"name": f"{prefix}sink", "config": sink})
        started = time.perf_counter()
        http(args.admin, "POST", "/connectors", {"name": f"{prefix}source", "config": source})
        elapsed = wait_for_rows(pg, "dst_rows", args.records, started)
        for name in (f"{prefix}source", f"{prefix}sink"):
            http(args.admin, "DELETE", f"/connectors/{name}")
        avg = int(pg.psql("SELECT avg(octet_length(t::text))::int FROM dst_rows t LIMIT 1"))
        result = {"records": args.records, "avg_row_text_bytes": avg, "partitions": args.partitions, "sink_tasks": args.sink_tasks,
                  "source_batch_rows": args.batch_rows, "chain": args.chain, "pipeline_seconds": round(elapsed, 2),
                  "pipeline_rows_per_s": round(args.records / elapsed)}
        result.update(raw_limits(pg, args.records))
        print(json.dumps(result))
    finally:
        pg.stop()


if __name__ == "__main__":
    main()
