#!/usr/bin/env python3
"""CDC lag benchmark (issue 12): PostgreSQL → postgres-cdc → topic, at a steady insert rate, measured the way a
user would see it — from the moment a row is inserted to the moment a read_committed Kafka consumer receives its
change event.

    python3 tests/perf/cdc_lag.py --brokers 127.0.0.1:9092 --admin http://127.0.0.1:9644 --rate 25000 --seconds 60

A throwaway PostgreSQL cluster with `wal_level=logical` is started from the system's binaries (see sink_perf.py).
The writer runs inside PostgreSQL (a DO block committing `--txn-rows` rows every `txn-rows / rate` seconds, paced
against the clock, so no client round trips distort the rate); each row carries `created_us`, the server's
clock_timestamp() at insert, in microseconds. The consumer (confluent-kafka, on the same machine and clock)
computes receive time minus `created_us` for every event. The first `--warmup` seconds are left out. Output is one
JSON object: the rate reached at each end, and the lag's p50/p99/p99.9/max. Not collected by pytest: it measures,
it does not assert.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import uuid

from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient, NewTopic

from sink_perf import USER, Postgres
from transform_perf import http


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--brokers", default="127.0.0.1:9092")
    ap.add_argument("--admin", default="http://127.0.0.1:9644")
    ap.add_argument("--rate", type=int, default=25_000, help="rows inserted per second")
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--warmup", type=float, default=5.0)
    ap.add_argument("--txn-rows", type=int, default=50, help="rows per source transaction")
    ap.add_argument("--poll-ms", type=int, default=None, help="the connector's poll.interval.ms (its default if unset)")
    ap.add_argument("--max-batch", type=int, default=None, help="the connector's max.batch.size (its default if unset)")
    args = ap.parse_args()

    pg = Postgres({"wal_level": "logical", "max_replication_slots": "4", "max_wal_senders": "4"})
    run = uuid.uuid4().hex[:8]
    prefix = f"cdc{run}"
    connector = f"{prefix}-source"
    try:
        pg.psql("CREATE TABLE events (id BIGSERIAL PRIMARY KEY, created_us BIGINT NOT NULL, customer TEXT, sku TEXT, "
                "qty BIGINT, price DOUBLE PRECISION, note TEXT)")
        topic = f"{prefix}.public.events"
        admin = AdminClient({"bootstrap.servers": args.brokers})
        for fut in admin.create_topics([NewTopic(topic, 1, 1)]).values():
            fut.result(timeout=30)
        config = {"connector.class": "postgres-cdc", "database.hostname": "127.0.0.1", "database.port": str(pg.port),
                  "database.user": USER, "database.dbname": "postgres", "topic.prefix": prefix, "slot.name": f"slot_{run}",
                  "publication.name": f"pub_{run}", "table.include.list": "public.events", "snapshot.mode": "no_data"}
        if args.poll_ms is not None:
            config["poll.interval.ms"] = str(args.poll_ms)
        if args.max_batch is not None:
            config["max.batch.size"] = str(args.max_batch)
        http(args.admin, "POST", "/connectors", {"name": connector, "config": config})
        deadline = time.time() + 60
        while pg.psql(f"SELECT COUNT(*) FROM pg_replication_slots WHERE slot_name = 'slot_{run}'") != "1":
            if time.time() > deadline:
                raise SystemExit("the connector did not create its slot within 60 s")
            time.sleep(0.2)
        time.sleep(1.0)

        total = args.rate * args.seconds
        lags: list[tuple[float, float]] = []  # (receive time, lag ms)
        done = threading.Event()

        def consume():
            consumer = Consumer({"bootstrap.servers": args.brokers, "group.id": f"{prefix}-lag", "auto.offset.reset": "earliest",
                                 "isolation.level": "read_committed", "enable.auto.commit": False, "fetch.wait.max.ms": 10})
            consumer.subscribe([topic])
            seen = 0
            idle_since = None
            while seen < total:
                msgs = consumer.consume(10_000, timeout=0.2)
                now = time.time()
                if not msgs:
                    idle_since = idle_since or now
                    if done.is_set() and now - idle_since > 30:
                        break
                    continue
                idle_since = None
                for m in msgs:
                    if m.error() or m.value() is None:
                        continue
                    value = json.loads(m.value())
                    after = value.get("payload", value).get("after") or {}
                    created = after.get("created_us")
                    if created is None:
                        continue
                    seen += 1
                    lags.append((now, now * 1000 - int(created) / 1000))
            consumer.close()

        reader = threading.Thread(target=consume)
        reader.start()
        interval = args.txn_rows / args.rate
        batches = total // args.txn_rows
        writer = f"""
DO $$
DECLARE
  started timestamptz := clock_timestamp();
  ahead double precision;
BEGIN
  FOR b IN 0..{batches - 1} LOOP
    INSERT INTO events (created_us, customer, sku, qty, price, note)
      SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint, 'customer-' || lpad((i % 9973)::text, 5, '0'),
             'SKU-' || lpad((i % 131)::text, 4, '0') || '-XL', i % 17, round(((i % 10000) / 7.0)::numeric, 2), repeat('x', 96)
      FROM generate_series(b * {args.txn_rows}, (b + 1) * {args.txn_rows} - 1) i;
    COMMIT;
    ahead := extract(epoch FROM (started + (b + 1) * interval '{interval * 1e6:.0f} microseconds' - clock_timestamp()));
    IF ahead > 0 THEN PERFORM pg_sleep(ahead); END IF;
  END LOOP;
END $$;
"""
        write_started = time.time()
        pg.psql(writer)
        write_seconds = time.time() - write_started
        done.set()
        reader.join()

        steady = sorted(lag for at, lag in lags if at - write_started >= args.warmup and at <= write_started + write_seconds)
        received = [at for at, _ in lags]
        read_seconds = (max(received) - min(received)) if received else float("nan")
        print(json.dumps({
            "rate_target": args.rate,
            "rows": total,
            "rows_received": len(lags),
            "insert_rows_per_s": round(total / write_seconds),
            "receive_rows_per_s": round(len(lags) / read_seconds) if read_seconds else None,
            "lag_ms": {"p50": round(percentile(steady, 0.50), 1), "p99": round(percentile(steady, 0.99), 1),
                       "p999": round(percentile(steady, 0.999), 1), "max": round(steady[-1], 1) if steady else None,
                       "samples": len(steady)},
            "txn_rows": args.txn_rows,
            "poll_interval_ms": args.poll_ms,
            "max_batch_size": args.max_batch,
        }, indent=2))
    finally:
        try:
            http(args.admin, "DELETE", f"/connectors/{connector}")
        except Exception:
            pass
        try:
            pg.psql(f"SELECT pg_drop_replication_slot('slot_{run}')")
        except Exception:
            pass
        pg.stop()


if __name__ == "__main__":
    main()
