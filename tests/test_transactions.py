"""Kafka transactions with real clients: librdkafka (confluent-kafka) and kafka-python transactional
producers, read_committed and read_uncommitted consumers, fencing, and a read-process-write loop
(`txn_copier.py`) SIGKILLed at random points -- the client process and, separately, the broker -- that
must still leave each input record exactly once in the output for a read_committed consumer.
"""

from __future__ import annotations

import collections
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
from confluent_kafka import KafkaException

from harness import cf_consume, cf_produce, cf_producer, create_topic, unique

COPIER = Path(__file__).resolve().parent / "txn_copier.py"
COMMITTED = {"isolation.level": "read_committed"}
UNCOMMITTED = {"isolation.level": "read_uncommitted"}


def txn_producer(broker, txn_id: str, **conf):
    return cf_producer(broker, {"transactional.id": txn_id, "transaction.timeout.ms": 30_000, **conf})


def produce_all(producer, topic: str, values: list[str], partition: int | None = None) -> None:
    for v in values:
        kwargs = {"value": v.encode()}
        if partition is not None:
            kwargs["partition"] = partition
        producer.produce(topic, **kwargs)
    assert producer.flush(30) == 0


def values_of(recs) -> list[str]:
    return [r.value.decode() for r in recs]


def test_read_committed_sees_only_committed_records(broker):
    topic = unique("txn-vis")
    create_topic(broker, topic, partitions=2)
    p = txn_producer(broker, unique("tid"))
    p.init_transactions(30)

    p.begin_transaction()
    produce_all(p, topic, [f"c-{i}" for i in range(10)])
    p.commit_transaction(30)

    p.begin_transaction()
    produce_all(p, topic, [f"a-{i}" for i in range(5)])
    p.abort_transaction(30)

    p.begin_transaction()
    produce_all(p, topic, [f"o-{i}" for i in range(4)], partition=0)
    # A plain producer writes behind the open transaction: stable only once the transaction ends.
    cf_produce(cf_producer(broker), topic, [{"value": f"p-{i}".encode(), "partition": 0} for i in range(3)])

    committed = values_of(cf_consume(broker, topic, expected=10, conf=COMMITTED, settle=1.5))
    assert sorted(committed) == sorted(f"c-{i}" for i in range(10)), committed
    uncommitted = values_of(cf_consume(broker, topic, expected=22, conf=UNCOMMITTED))
    assert len(uncommitted) == 22 and {v[0] for v in uncommitted} == {"c", "a", "o", "p"}, uncommitted

    p.commit_transaction(30)
    committed = values_of(cf_consume(broker, topic, expected=17, conf=COMMITTED))
    assert len(committed) == 17, committed
    assert not any(v.startswith("a-") for v in committed), "aborted records reached a read_committed consumer"
    # In partition 0 the transaction's records precede the plain ones, as written.
    p0 = [v for v in values_of(cf_consume(broker, topic, expected=0, partitions=[0], conf=COMMITTED, settle=1.0))]
    assert [v for v in p0 if v[0] in "op"] == [f"o-{i}" for i in range(4)] + [f"p-{i}" for i in range(3)]


def test_a_second_producer_with_the_same_transactional_id_fences_the_first(broker):
    topic = unique("txn-fence")
    create_topic(broker, topic)
    txn_id = unique("tid")
    zombie = txn_producer(broker, txn_id)
    zombie.init_transactions(30)
    zombie.begin_transaction()
    produce_all(zombie, topic, ["zombie-1", "zombie-2"])

    successor = txn_producer(broker, txn_id)
    successor.init_transactions(30)
    with pytest.raises(KafkaException) as raised:
        zombie.commit_transaction(30)
    assert raised.value.args[0].fatal(), f"the fenced producer's error should be fatal: {raised.value.args[0]}"

    successor.begin_transaction()
    produce_all(successor, topic, ["new-1"])
    successor.commit_transaction(30)
    assert values_of(cf_consume(broker, topic, expected=1, conf=COMMITTED)) == ["new-1"]
    assert sorted(values_of(cf_consume(broker, topic, expected=3, conf=UNCOMMITTED))) == ["new-1", "zombie-1", "zombie-2"]


def test_kafka_python_transactions_interoperate_with_librdkafka(broker):
    from kafka import KafkaConsumer, KafkaProducer

    topic = unique("txn-kp")
    create_topic(broker, topic)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, transactional_id=unique("kp-tid"), request_timeout_ms=10_000)
    producer.init_transactions()
    producer.begin_transaction()
    for i in range(5):
        producer.send(topic, f"kept-{i}".encode())
    producer.commit_transaction()
    producer.begin_transaction()
    for i in range(3):
        producer.send(topic, f"dropped-{i}".encode())
    producer.abort_transaction()
    producer.close()

    assert sorted(values_of(cf_consume(broker, topic, expected=5, conf=COMMITTED))) == [f"kept-{i}" for i in range(5)]
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=broker.bootstrap,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        consumer_timeout_ms=4000,
        enable_auto_commit=False,
    )
    seen = [m.value.decode() for m in consumer]
    consumer.close()
    assert sorted(seen) == [f"kept-{i}" for i in range(5)]


def test_an_abandoned_transaction_times_out_and_unblocks_readers(make_broker):
    broker = make_broker("transaction.abort.timed.out.transaction.cleanup.interval.ms=200")
    topic = unique("txn-timeout")
    create_topic(broker, topic)
    stuck = txn_producer(broker, unique("tid"), **{"transaction.timeout.ms": 2500, "socket.timeout.ms": 2500, "message.timeout.ms": 2500})
    stuck.init_transactions(30)
    stuck.begin_transaction()
    produce_all(stuck, topic, ["never"])
    cf_produce(cf_producer(broker), topic, [{"value": b"after"}])
    # Until the timeout aborts the transaction, "after" is behind the last stable offset.
    assert values_of(cf_consume(broker, topic, expected=1, conf=COMMITTED, timeout=8)) == ["after"]
    with pytest.raises(KafkaException):
        stuck.commit_transaction(10)


# ---------------------------------------------------------------------------------------------------------
# Read-process-write under SIGKILL
# ---------------------------------------------------------------------------------------------------------


def start_copier(broker, source, sink, group, txn_id, log_path: Path, idle_exit: float = 4.0) -> subprocess.Popen:
    log = open(log_path, "ab")
    return subprocess.Popen(
        [sys.executable, str(COPIER), broker.bootstrap, source, sink, group, txn_id, "--idle-exit", str(idle_exit)],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )


def seed_input(broker, topic: str, keys: int, per_key: int) -> list[str]:
    records = [{"key": f"k{k}".encode(), "value": f"k{k}-{n:05d}".encode()} for n in range(per_key) for k in range(keys)]
    cf_produce(cf_producer(broker, {"linger.ms": 20, "enable.idempotence": True}), topic, records)
    return [r["value"].decode() for r in records]


def assert_exactly_once_in_key_order(broker, sink: str, expected: list[str]) -> None:
    out = cf_consume(broker, sink, expected=len(expected), conf=COMMITTED, timeout=60, settle=2.0)
    got = [v.removeprefix("copy:") for v in values_of(out)]
    counts = collections.Counter(got)
    duplicates = {v: c for v, c in counts.items() if c > 1}
    missing = set(expected) - set(counts)
    assert not duplicates and not missing, f"{len(duplicates)} duplicated (e.g. {list(duplicates)[:3]}), {len(missing)} missing (e.g. {sorted(missing)[:3]})"
    assert len(got) == len(expected)
    # Per key, the copies appear in input order (each key maps to one output partition).
    by_key: dict[str, list[str]] = collections.defaultdict(list)
    for r in out:
        by_key[r.key.decode()].append(r.value.decode())
    for key, values in by_key.items():
        assert values == sorted(values), f"key {key} out of order"


def finish_copier(broker, source, sink, group, txn_id, log_path: Path) -> None:
    for _ in range(5):
        proc = start_copier(broker, source, sink, group, txn_id, log_path, idle_exit=4.0)
        code = proc.wait(timeout=90)
        if code == 0:
            return
    pytest.fail(f"the copier kept failing; last exit {code}\n{log_path.read_text()[-3000:]}")


@pytest.mark.timeout(300)
def test_read_process_write_is_exactly_once_when_the_client_is_killed(broker, tmp_path):
    source, sink, group, txn_id = unique("eos-in"), unique("eos-out"), unique("eos-g"), unique("eos-tid")
    create_topic(broker, source, partitions=3)
    create_topic(broker, sink, partitions=3)
    expected = seed_input(broker, source, keys=12, per_key=1000)
    log_path = tmp_path / "copier.log"
    rng = random.Random(20261123)
    kills = 0
    for _ in range(8):
        proc = start_copier(broker, source, sink, group, txn_id, log_path)
        time.sleep(rng.uniform(0.8, 2.5))
        if proc.poll() is None:
            proc.kill()
            kills += 1
        proc.wait(timeout=10)
    assert kills >= 4, f"the copier finished too early to be killed mid-stream ({kills} kills)\n{log_path.read_text()[-2000:]}"
    finish_copier(broker, source, sink, group, txn_id, log_path)
    assert_exactly_once_in_key_order(broker, sink, expected)


@pytest.mark.timeout(400)
def test_read_process_write_is_exactly_once_when_the_broker_is_killed(broker, tmp_path):
    source, sink, group, txn_id = unique("eos-in"), unique("eos-out"), unique("eos-g"), unique("eos-tid")
    create_topic(broker, source, partitions=3)
    create_topic(broker, sink, partitions=3)
    expected = seed_input(broker, source, keys=12, per_key=1000)
    log_path = tmp_path / "copier.log"
    rng = random.Random(112326)
    proc = start_copier(broker, source, sink, group, txn_id, log_path, idle_exit=30.0)
    for _ in range(4):
        time.sleep(rng.uniform(0.8, 2.5))
        broker.kill9()
        time.sleep(rng.uniform(0.0, 0.5))
        broker.start()
        if proc.poll() is not None:
            # A fatal client error (e.g. its transaction timed out while the broker was down): start
            # another copier, as a supervisor would.
            proc = start_copier(broker, source, sink, group, txn_id, log_path, idle_exit=30.0)
    proc.kill()
    proc.wait(timeout=10)
    finish_copier(broker, source, sink, group, txn_id, log_path)
    assert_exactly_once_in_key_order(broker, sink, expected)
