#!/usr/bin/env python3
"""Benchmarks of the in-broker transform runtime (issue 5), against a running broker.

    # throughput: N records already in the input, then deploy; time until the transform has caught up
    python3 tests/perf/transform_perf.py throughput --wasm target/wasm-guests/wasm32-wasip2/release/identity.wasm --records 2000000
    # added latency: records produced at a fixed rate; output arrival minus input arrival, p50/p99
    python3 tests/perf/transform_perf.py latency --wasm .../identity.wasm --rate 20000 --seconds 20
    # deploy to first output: a record waits in the input; POST the module; time until it is in the output
    python3 tests/perf/transform_perf.py deploy --wasm .../fixture_bulky.wasm

Output is one JSON object per run. Not collected by pytest: it measures, it does not assert.
"""

from __future__ import annotations

import argparse
import base64
import json
import threading
import time
import urllib.request
import uuid

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic


def http(admin: str, method: str, path: str, body=None, timeout=120):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(admin + path, data=data, method=method, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        text = resp.read().decode()
        return json.loads(text) if text else None


def topics(brokers: str, names: list[str], partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": brokers})
    for fut in admin.create_topics([NewTopic(n, partitions, 1) for n in names]).values():
        fut.result(timeout=30)
    time.sleep(0.5)


def deploy(admin: str, wasm: str, name: str, inp: str, out: str, batch: int | None = None):
    with open(wasm, "rb") as f:
        module = base64.b64encode(f.read()).decode()
    body = {"name": name, "input_topic": inp, "output_topics": [out], "module_base64": module}
    if batch:
        body["batch_records"] = batch
    return http(admin, "POST", "/v1/transforms", body)


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def throughput(args) -> dict:
    run = uuid.uuid4().hex[:8]
    inp, out, name = f"tp-in-{run}", f"tp-out-{run}", f"tp-{run}"
    topics(args.brokers, [inp, out], args.partitions)
    p = Producer({"bootstrap.servers": args.brokers, "linger.ms": 20, "batch.size": 1_000_000, "queue.buffering.max.messages": 2_000_000})
    payload = b"x" * args.record_size
    for i in range(args.records):
        while True:
            try:
                p.produce(inp, payload, key=str(i % 1000).encode())
                break
            except BufferError:
                p.poll(0.01)
    p.flush(120)
    started = time.perf_counter()
    deploy(args.admin, args.wasm, name, inp, out, args.batch_records)
    while True:
        st = http(args.admin, "GET", f"/v1/transforms/{name}")
        if st["records_in"] >= args.records:
            break
        if time.perf_counter() - started > 600:
            raise SystemExit(f"did not catch up: {st}")
        time.sleep(0.05)
    seconds = time.perf_counter() - started
    http(args.admin, "DELETE", f"/v1/transforms/{name}")
    return {"mode": "throughput", "records": args.records, "record_size": args.record_size, "partitions": args.partitions,
            "seconds": round(seconds, 3), "records_per_s": round(args.records / seconds)}


def latency(args) -> dict:
    run = uuid.uuid4().hex[:8]
    inp, out, name = f"lat-in-{run}", f"lat-out-{run}", f"lat-{run}"
    topics(args.brokers, [inp, out], args.partitions)
    deploy(args.admin, args.wasm, name, inp, out)
    # Arrival time of each record (by its value, unique) at a consumer of the input and of the output.
    arrivals = {"in": {}, "out": {}}

    def consume(topic: str, key: str, stop: threading.Event):
        c = Consumer({"bootstrap.servers": args.brokers, "group.id": f"lat-{key}-{run}", "isolation.level": "read_committed",
                      "fetch.wait.max.ms": 5, "fetch.min.bytes": 1, "enable.auto.commit": False})
        c.assign([TopicPartition(topic, p, 0) for p in range(args.partitions)])
        while not stop.is_set():
            for m in c.consume(1000, 0.05):
                if m.error() is None:
                    arrivals[key][m.value()] = time.time_ns() / 1e6
        c.close()

    stop = threading.Event()
    threads = [threading.Thread(target=consume, args=(t, k, stop)) for t, k in ((inp, "in"), (out, "out"))]
    for t in threads:
        t.start()
    time.sleep(2.0)
    p = Producer({"bootstrap.servers": args.brokers, "linger.ms": 0})
    interval = 1.0 / args.rate
    deadline = time.perf_counter() + args.seconds
    next_at = time.perf_counter()
    sent = 0
    while time.perf_counter() < deadline:
        now = time.perf_counter()
        if now < next_at:
            time.sleep(min(next_at - now, 0.001))
            continue
        p.produce(inp, str(time.time_ns()).encode())
        sent += 1
        next_at += interval
        if sent % 100 == 0:
            p.poll(0)
    p.flush(30)
    time.sleep(2.0)
    stop.set()
    for t in threads:
        t.join()
    http(args.admin, "DELETE", f"/v1/transforms/{name}")
    # Added latency per record: when its result reached a read_committed consumer of the output, minus
    # when the record itself reached a read_committed consumer of the input (same process, same
    # polling), so client-side delays cancel out. The first 10% are warm-up.
    values = sorted(arrivals["in"], key=int)
    values = values[len(values) // 10 :]
    added = [arrivals["out"][v] - arrivals["in"][v] for v in values if v in arrivals["out"]]
    end_to_end = [arrivals["out"][v] - int(v) / 1e6 for v in values if v in arrivals["out"]]
    return {"mode": "latency", "rate": args.rate, "sent": sent, "received_in": len(arrivals["in"]), "received_out": len(arrivals["out"]),
            "added_p50_ms": round(percentile(added, 0.5), 2), "added_p99_ms": round(percentile(added, 0.99), 2),
            "added_max_ms": round(max(added), 2) if added else None,
            "produce_to_output_p50_ms": round(percentile(end_to_end, 0.5), 2), "produce_to_output_p99_ms": round(percentile(end_to_end, 0.99), 2)}


def deploy_time(args) -> dict:
    run = uuid.uuid4().hex[:8]
    inp, out, name = f"dep-in-{run}", f"dep-out-{run}", f"dep-{run}"
    topics(args.brokers, [inp, out], 1)
    p = Producer({"bootstrap.servers": args.brokers})
    p.produce(inp, b"first")
    p.flush(10)
    c = Consumer({"bootstrap.servers": args.brokers, "group.id": f"dep-{run}", "isolation.level": "read_committed", "fetch.wait.max.ms": 5})
    c.assign([TopicPartition(out, 0, 0)])
    c.consume(1, 0.5)
    size = len(open(args.wasm, "rb").read())
    started = time.perf_counter()
    deploy(args.admin, args.wasm, name, inp, out)
    deployed = time.perf_counter() - started
    while True:
        msgs = [m for m in c.consume(1, 0.01) if m.error() is None]
        if msgs:
            break
        if time.perf_counter() - started > 60:
            raise SystemExit("no output within 60 s")
    first_output = time.perf_counter() - started
    c.close()
    http(args.admin, "DELETE", f"/v1/transforms/{name}")
    return {"mode": "deploy", "module_bytes": size, "deploy_call_s": round(deployed, 3), "first_output_s": round(first_output, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["throughput", "latency", "deploy"])
    parser.add_argument("--brokers", default="127.0.0.1:9092")
    parser.add_argument("--admin", default="http://127.0.0.1:9644")
    parser.add_argument("--wasm", required=True)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--record-size", type=int, default=100)
    parser.add_argument("--partitions", type=int, default=1)
    parser.add_argument("--batch-records", type=int)
    parser.add_argument("--rate", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=15)
    args = parser.parse_args()
    result = {"throughput": throughput, "latency": latency, "deploy": deploy_time}[args.mode](args)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
