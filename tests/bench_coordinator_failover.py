"""Coordinator failover: how long an exactly-once consume-transform-produce pipeline cannot commit when
the broker leading `__sluice_coordinator-0` (the group and transaction coordinator) is killed with
SIGKILL (or, with STOP=term, stopped with SIGTERM: a controlled shutdown). Three `sluice server`
processes on this machine, RF=3 input and output topics (min.insync.replicas=2); a producer keeps
writing the input; one read_committed consumer in a group and one transactional producer copy it to
the output, 50 records per transaction, offsets sent to each transaction. Each round kills the
coordinator, measures the longest time the pipeline committed nothing around it, restarts
the killed broker and waits until it is back in sync. At the end every input record must be in the
output exactly once. Usage:

    python3 tests/bench_coordinator_failover.py [rounds] [session-timeout-ms] [heartbeat-interval-ms]

(session and heartbeat default to the broker's defaults, 9000 and 500 ms.) Not a test (no assertion
on time): see BENCHMARKS.md for results."""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

BIN = os.environ.get("SLUICE_BIN", "target/release/sluice")
COORDINATOR_TOPIC = "__sluice_coordinator"


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    session_ms = int(sys.argv[2]) if len(sys.argv) > 2 else 9000
    heartbeat_ms = int(sys.argv[3]) if len(sys.argv) > 3 else 500
    graceful = os.environ.get("STOP", "kill") == "term"
    work = tempfile.mkdtemp(prefix="sluice-coordfail-")
    voters = "1@127.0.0.1:38493,2@127.0.0.1:38593,3@127.0.0.1:38693"
    procs: dict[int, subprocess.Popen] = {}

    def start(node: int) -> None:
        log = open(f"{work}/n{node}.log", "ab")
        procs[node] = subprocess.Popen(
            [BIN, "server", "--node-id", str(node), "--controller-voters", voters, "--data-dir", f"{work}/n{node}",
             "--listen", f"127.0.0.1:38{node + 3}92", "--admin-listen", f"127.0.0.1:38{node + 3}44",
             "--set", f"broker.session.timeout.ms={session_ms}", "--set", f"broker.heartbeat.interval.ms={heartbeat_ms}"],
            stdout=log, stderr=log)

    for node in (1, 2, 3):
        start(node)
    bootstrap = ",".join(f"127.0.0.1:38{n + 3}92" for n in (1, 2, 3))
    admin = AdminClient({"bootstrap.servers": bootstrap})

    def state(topic: str):
        md = admin.list_topics(timeout=10)
        t = md.topics.get(topic)
        if t is None or t.error is not None:
            return None
        return {p: (pm.leader, sorted(pm.isrs)) for p, pm in t.partitions.items()}

    def wait(predicate, what: str, timeout: float = 60.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                value = predicate()
            except Exception:  # noqa: BLE001 - brokers starting or failing over
                value = None
            if value:
                return value
            time.sleep(0.1)
        raise SystemExit(f"timed out waiting for {what}")

    try:
        wait(lambda: (s := state(COORDINATOR_TOPIC)) and s[0][1] == [1, 2, 3], "the coordinators' partition in sync")
        source, sink = "bench-in", "bench-out"
        for topic in (source, sink):
            admin.create_topics([NewTopic(topic, 3, 3, config={"min.insync.replicas": "2"})])[topic].result(30)
        wait(lambda: all(isr == [1, 2, 3] for t in (source, sink) for _, isr in (state(t) or {0: (0, [])}).values()), "topics in sync")

        stop, drained = threading.Event(), threading.Event()
        written = [0]

        def feed():
            producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all", "linger.ms": 5})
            while not stop.is_set():
                for _ in range(100):
                    producer.produce(source, key=f"k{written[0] % 30}".encode(), value=str(written[0]).encode())
                    written[0] += 1
                producer.poll(0)
                time.sleep(0.02)  # ≈ 5,000 records/s
            producer.flush(60)

        commits: list[float] = []
        errors: list[str] = []

        def pipeline():
            consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-eos", "isolation.level": "read_committed",
                                 "enable.auto.commit": False, "auto.offset.reset": "earliest", "session.timeout.ms": 6000,
                                 **({"debug": os.environ["CLIENT_DEBUG"]} if os.environ.get("CLIENT_DEBUG") else {})})
            consumer.subscribe([source])
            txn = Producer({"bootstrap.servers": bootstrap, "transactional.id": "bench-eos", "transaction.timeout.ms": 30_000,
                            **({"debug": os.environ["TXN_DEBUG"]} if os.environ.get("TXN_DEBUG") else {})})
            txn.init_transactions(60)
            idle_since = None
            while not drained.is_set():
                batch = [m for m in consumer.consume(num_messages=50, timeout=0.5) if m.error() is None]
                if not batch:
                    idle_since = idle_since or time.monotonic()
                    continue
                if os.environ.get("VERBOSE") and idle_since and time.monotonic() - idle_since > 1:
                    print(f"  {time.strftime('%H:%M:%S')} the consumer returned nothing for {time.monotonic() - idle_since:.2f} s", flush=True)
                idle_since = None
                try:
                    began = time.monotonic()
                    txn.begin_transaction()
                    for m in batch:
                        txn.produce(sink, key=m.key(), value=m.value())
                    txn.send_offsets_to_transaction(consumer.position(consumer.assignment()), consumer.consumer_group_metadata(), 60)
                    offsets_sent = time.monotonic()
                    txn.commit_transaction(60)
                    commits.append(time.monotonic())
                    if os.environ.get("VERBOSE") and commits[-1] - began > 1:
                        print(f"  {time.strftime('%H:%M:%S')} slow transaction: offsets after {offsets_sent - began:.2f} s, "
                              f"commit after {commits[-1] - offsets_sent:.2f} s more", flush=True)
                except KafkaException as error:
                    kafka_error = error.args[0]
                    if os.environ.get("VERBOSE"):
                        print(f"  {time.strftime('%H:%M:%S')} {kafka_error.name()} abort={kafka_error.txn_requires_abort()} "
                              f"retriable={kafka_error.retriable()}: {kafka_error.str()}", flush=True)
                    if kafka_error.fatal():
                        errors.append(str(kafka_error))
                        return
                    if kafka_error.txn_requires_abort():
                        try:
                            txn.abort_transaction(60)
                        except KafkaException as abort_error:
                            # E.g. fenced: the coordinator aborted a transaction that outlived
                            # transaction.timeout.ms and bumped the epoch (as Kafka's does).
                            errors.append(f"{kafka_error}; then abort_transaction: {abort_error.args[0]}")
                            return
                    for tp in consumer.committed(consumer.assignment(), timeout=60):
                        consumer.seek(TopicPartition(tp.topic, tp.partition, max(tp.offset, 0)))
            consumer.close()

        threads = [threading.Thread(target=feed, daemon=True), threading.Thread(target=pipeline, daemon=True)]
        for t in threads:
            t.start()
        wait(lambda: len(commits) > 20, "the pipeline to commit", timeout=60)
        stalls = []
        for round_ in range(rounds):
            time.sleep(3)
            coordinator = wait(lambda: (s := state(COORDINATOR_TOPIC)) and s[0][0] in (1, 2, 3) and s[0][0], "a coordinator")
            killed_at = time.monotonic()
            if os.environ.get("VERBOSE"):
                print(f"  {time.strftime('%H:%M:%S')} stopping broker {coordinator}", flush=True)
            if graceful:
                procs[coordinator].send_signal(signal.SIGTERM)
            else:
                procs[coordinator].kill()
            moved = wait(lambda: (s := state(COORDINATOR_TOPIC)) and s[0][0] not in (coordinator, -1) and s[0][0], "a new coordinator")
            # The stall: the longest time without a committed transaction from the last commit before
            # the kill until 20 s after it (a transaction in flight may still commit just after the
            # kill, and the next ones wait for the group to re-form at the new coordinator).
            time.sleep(max(0.0, killed_at + 20 - time.monotonic()))
            window = [c for c in list(commits) if c <= killed_at][-1:] + [c for c in list(commits) if killed_at < c <= killed_at + 20]
            stall = max(b - a for a, b in zip(window, window[1:])) if len(window) > 1 else float("inf")
            stalls.append(stall)
            print(f"round {round_ + 1}: stopped coordinator {coordinator} ({'SIGTERM' if graceful else 'SIGKILL'}); "
                  f"new coordinator {moved}; longest time without a commit {stall:.2f} s", flush=True)
            procs[coordinator].wait(30)
            start(coordinator)
            wait(lambda: (s := state(COORDINATOR_TOPIC)) and s[0][1] == [1, 2, 3], "the restarted broker back in sync", timeout=90)
        stop.set()
        threads[0].join(120)
        # The pipeline copies what is left, then stops.
        probe = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-eos", "enable.auto.commit": False})
        parts = [TopicPartition(source, p) for p in range(3)]
        try:
            wait(lambda: errors or all(tp.offset == probe.get_watermark_offsets(tp, timeout=10)[1] for tp in probe.committed(parts, timeout=10)),
                 "the pipeline to copy everything", timeout=120)
        finally:
            print(f"pipeline errors: {errors or 'none'}; work directory {work}", flush=True)
        probe.close()
        drained.set()
        threads[1].join(120)
        if errors:
            raise SystemExit(f"the pipeline failed: {errors}")
        reader = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-check", "isolation.level": "read_committed",
                           "enable.auto.commit": False})
        reader.assign([TopicPartition(sink, p, 0) for p in range(3)])
        seen: Counter = Counter()
        idle = time.monotonic()
        while time.monotonic() - idle < 5:
            batch = [m for m in reader.consume(num_messages=1000, timeout=0.5) if m.error() is None]
            if batch:
                idle = time.monotonic()
            seen.update(int(m.value()) for m in batch)
        reader.close()
        missing = [i for i in range(written[0]) if i not in seen]
        doubled = [i for i, n in seen.items() if n > 1]
        print(f"{written[0]} records written, {sum(seen.values())} read from the output: "
              f"{len(missing)} missing, {len(doubled)} duplicated")
        print(f"longest time without a commit: median {statistics.median(stalls):.2f} s, max {max(stalls):.2f} s over {len(stalls)} rounds")
        if missing or doubled:
            raise SystemExit(f"exactly-once broken: missing {missing[:10]}, duplicated {doubled[:10]}")
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()


if __name__ == "__main__":
    main()
