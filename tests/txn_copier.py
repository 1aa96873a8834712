"""A read-process-write loop with librdkafka's transactional producer, run as its own process so tests can
SIGKILL it: copies every record of topic A to topic B exactly once (key and value unchanged, value
prefixed "copy:"), committing its input offsets in the same transaction with send_offsets_to_transaction.

    python3 txn_copier.py BOOTSTRAP INPUT OUTPUT GROUP TRANSACTIONAL_ID [--idle-exit SECONDS]

It assigns every input partition itself (no group rebalances to wait for after a kill) and resumes from the
group's committed offsets, which a read_committed consumer only sees once the transaction that wrote them
committed. Exit codes: 0 idle for --idle-exit seconds, 3 fatal producer error (fenced, or the broker lost
state the client cannot recover from) -- the test then starts a new copier, as an operator would.
"""

from __future__ import annotations

import sys
import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer, TopicPartition

BATCH = 200


def log(msg: str) -> None:
    print(f"[copier {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def commit(producer: Producer) -> None:
    """commit_transaction, retried while librdkafka calls the failure retriable (its documented contract)."""
    for attempt in range(10):
        try:
            producer.commit_transaction(30)
            return
        except KafkaException as e:
            if not e.args[0].retriable() or attempt == 9:
                raise
            log(f"commit retriable failure ({e.args[0]}); retrying")
            time.sleep(0.5)


def main() -> int:
    bootstrap, source, sink, group, txn_id = sys.argv[1:6]
    idle_exit = float(sys.argv[sys.argv.index("--idle-exit") + 1]) if "--idle-exit" in sys.argv else 5.0
    common = {"bootstrap.servers": bootstrap, "broker.address.family": "v4", "socket.connection.setup.timeout.ms": 5000}
    producer = Producer(
        {**common, "transactional.id": txn_id, "transaction.timeout.ms": 10_000, "linger.ms": 5, "message.timeout.ms": 10_000}
    )
    consumer = Consumer(
        {
            **common,
            "group.id": group,
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": 50,
        }
    )
    # Fencing first: a previous copier's open transaction is aborted, so the committed offsets read
    # next are stable.
    producer.init_transactions(30)
    metadata = consumer.list_topics(source, timeout=10)
    partitions = [TopicPartition(source, p) for p in sorted(metadata.topics[source].partitions)]

    def rewind() -> None:
        committed = consumer.committed(partitions, timeout=30)
        for tp in committed:
            tp.offset = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
        consumer.assign(committed)
        log("assigned " + ", ".join(f"{tp.partition}@{tp.offset}" for tp in committed))

    rewind()
    idle_since = time.monotonic()
    copied = 0
    while True:
        msgs = [m for m in consumer.consume(BATCH, timeout=0.2) if m.error() is None]
        if not msgs:
            if time.monotonic() - idle_since > idle_exit:
                log(f"idle for {idle_exit}s after copying {copied}; exiting")
                return 0
            continue
        idle_since = time.monotonic()
        try:
            producer.begin_transaction()
            for m in msgs:
                while True:
                    try:
                        producer.produce(sink, key=m.key(), value=b"copy:" + (m.value() or b""))
                        break
                    except BufferError:
                        producer.poll(0.05)
            positions = consumer.position(consumer.assignment())
            producer.send_offsets_to_transaction(positions, consumer.consumer_group_metadata(), 30)
            commit(producer)
            copied += len(msgs)
        except KafkaException as e:
            err: KafkaError = e.args[0]
            if err.fatal() or not err.txn_requires_abort():
                log(f"fatal or unrecoverable: {err}")
                return 3
            log(f"transaction failed ({err}); aborting and rewinding")
            try:
                producer.abort_transaction(30)
            except KafkaException as abort_error:
                if abort_error.args[0].fatal():
                    log(f"fatal during abort: {abort_error.args[0]}")
                    return 3
                log(f"abort failed: {abort_error.args[0]}; exiting")
                return 3
            rewind()


if __name__ == "__main__":
    sys.exit(main())
