"""Mirrors between two real broker processes: the target broker copies topics from the source with
`sluice mirror`.

Preserve mode: the copies must equal the source's logs byte for byte (every stored batch: offsets,
timestamps, keys, values, headers, producer ids, compression, transaction markers), survive SIGKILL of
the target and an outage of the source without gaps, pick up new topics and partitions, refuse writes
until promoted, and after promotion take writes from new producers.

Rename mode: the copies hold exactly the source's committed records once each, in per-partition order,
under the policy's names, across SIGKILL of the target; mirrors in both directions never loop; a Wasm
replication policy names the copies, leaves topics and groups out, and drops or rewrites records.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from confluent_kafka import KafkaError, TopicPartition
from confluent_kafka.admin import ConfigResource, NewPartitions, NewTopic

from harness import (
    REPO_ROOT,
    cf_admin,
    cf_consume,
    cf_consumer,
    cf_produce,
    cf_producer,
    create_topic,
    http_request,
    sluice_cli,
    wait_for,
)

COMMITTED = {"isolation.level": "read_committed"}


def partition_log_bytes(broker, topic: str, partition: int) -> bytes:
    """Every stored batch of a partition, in offset order (segments concatenated)."""
    files = sorted(broker.partition_dir(topic, partition).glob("*.log"))
    return b"".join(f.read_bytes() for f in files)


def status(target, name: str) -> dict:
    return json.loads(sluice_cli(target, "mirror", "status", name, "--json").stdout)


def wait_caught_up(source, target, name: str, topics: dict[str, int], timeout: float = 60.0) -> dict:
    """Until every partition of `topics` ({name: partitions}) is copied up to the source's end."""

    def ends() -> dict:
        consumer = cf_consumer(source)
        try:
            return {
                (t, p): consumer.get_watermark_offsets(TopicPartition(t, p), timeout=10)[1]
                for t, n in topics.items()
                for p in range(n)
            }
        finally:
            consumer.close()

    def level():
        want = ends()
        st = status(target, name)
        have = {(p["topic"], p["partition"]): p["target_end_offset"] for p in st["partitions"]}
        return st if all(have.get(k, -1) >= v for k, v in want.items()) else None

    return wait_for(level, f"mirror {name} caught up with {topics}", timeout=timeout, every=0.5)


def assert_identical(source, target, topics: dict[str, int]) -> None:
    for topic, partitions in topics.items():
        for p in range(partitions):
            src, dst = partition_log_bytes(source, topic, p), partition_log_bytes(target, topic, p)
            assert src, f"{topic}-{p} is empty on the source: the test wrote nothing there"
            assert dst == src, f"{topic}-{p}: the copy differs from the source ({len(dst)} vs {len(src)} bytes)"


def produce_mixed(source, topic: str, tag: str, count: int = 200) -> None:
    """Plain, compressed, idempotent, with headers and keys, committed and aborted transactions."""
    plain = cf_producer(source, {"compression.type": "lz4", "enable.idempotence": True})
    cf_produce(plain, topic, [{"key": f"k{i}".encode(), "value": f"{tag}-plain-{i}".encode()} for i in range(count)])
    gz = cf_producer(source, {"compression.type": "gzip", "linger.ms": 20})
    for i in range(count):
        gz.produce(topic, key=f"g{i}".encode(), value=f"{tag}-gzip-{i}".encode(), headers=[("h", f"{i}".encode()), ("h", None)])
    assert gz.flush(30) == 0
    txn = cf_producer(source, {"transactional.id": f"{tag}-txn", "transaction.timeout.ms": 30_000})
    txn.init_transactions(30)
    txn.begin_transaction()
    for i in range(count // 2):
        txn.produce(topic, key=f"t{i}".encode(), value=f"{tag}-committed-{i}".encode())
    txn.commit_transaction(30)
    txn.begin_transaction()
    for i in range(count // 4):
        txn.produce(topic, key=f"a{i}".encode(), value=f"{tag}-aborted-{i}".encode())
    txn.flush(30)
    txn.abort_transaction(30)


def records(broker, topic: str, partitions: int, expected: int, conf=None):
    got = cf_consume(broker, topic, expected, timeout=60, conf=conf)
    return sorted(((r.partition, r.offset, r.key, r.value, r.headers, r.timestamp) for r in got), key=lambda t: (t[0], t[1]))


def test_a_preserve_mirror_is_byte_identical_and_survives_kill9_and_a_source_outage(make_broker):
    source, target = make_broker(), make_broker()
    create_topic(source, "orders", partitions=3, config={"retention.ms": "604800000"})
    create_topic(source, "payments-eu", partitions=1)
    create_topic(source, "skipped", partitions=1)
    produce_mixed(source, "orders", "a")
    produce_mixed(source, "payments-eu", "a", count=40)
    cf_produce(cf_producer(source), "skipped", [{"value": b"not mirrored"}])

    out = sluice_cli(target, "mirror", "create", "dr", "--source-bootstrap", source.bootstrap, "--topics", "orders|payments-.*")
    assert "Created mirror dr" in out.stdout
    topics = {"orders": 3, "payments-eu": 1}
    wait_caught_up(source, target, "dr", topics)
    assert_identical(source, target, topics)
    assert not target.partition_dir("skipped", 0).exists(), "a topic the pattern does not match is not copied"

    # What consumers see is the same, offsets included (read_committed drops the aborted records).
    assert records(target, "orders", 3, 500, COMMITTED) == records(source, "orders", 3, 500, COMMITTED)
    # The source's explicit topic config came along, and the mirror says who owns the copy.
    admin = cf_admin(target)
    configs = admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, "orders")])
    entries = list(configs.values())[0].result(timeout=10)
    assert entries["retention.ms"].value == "604800000"
    assert entries["sluice.mirror"].value == "dr" and entries["sluice.mirror"].is_read_only
    # A setting changed on the source follows (retention here must not delete what the source keeps).
    source_admin = cf_admin(source)
    altered = source_admin.alter_configs([ConfigResource(ConfigResource.Type.TOPIC, "orders", set_config={"retention.ms": "1209600000"})])
    list(altered.values())[0].result(timeout=10)

    def retention_here():
        got = admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, "orders")])
        return list(got.values())[0].result(timeout=10)["retention.ms"].value == "1209600000"

    wait_for(retention_here, "the source's new retention.ms on the copy", timeout=60, every=1)

    # Writes to a mirror topic are refused, with a message saying how to promote.
    errors = []
    producer = cf_producer(target)
    producer.produce("orders", value=b"local", on_delivery=lambda err, msg: errors.append(err))
    producer.flush(30)
    assert errors and errors[0] is not None and errors[0].code() == KafkaError.INVALID_REQUEST, errors
    alter = admin.create_partitions([NewPartitions("orders", 5)])
    try:
        alter["orders"].result(timeout=10)
        raise AssertionError("growing a mirror topic from a client must be refused")
    except Exception as err:  # noqa: BLE001 - the KafkaException carries the broker's message
        assert "read-only mirror" in str(err)

    # SIGKILL the target in the middle of a copy; it resumes from the end of its copy.
    for i in range(5):
        produce_mixed(source, "orders", f"b{i}", count=100)
    target.kill9()
    target.start()
    wait_caught_up(source, target, "dr", topics)
    assert_identical(source, target, topics)

    # The source goes away: the status says so; when it is back, the copy catches up.
    source.stop()
    unreachable = wait_for(
        lambda: (s := status(target, "dr")) and not s["source_reachable"] and s, "the mirror notices the source is down", timeout=60
    )
    assert unreachable["error"], unreachable
    source.start()
    produce_mixed(source, "orders", "c", count=100)
    # New partitions and new matching topics are picked up.
    source_admin = cf_admin(source)  # the source restarted
    source_admin.create_partitions([NewPartitions("orders", 4)])["orders"].result(timeout=10)
    source_admin.create_topics([NewTopic("payments-us", 2, 1)])["payments-us"].result(timeout=10)
    time.sleep(0.5)
    cf_produce(cf_producer(source), "orders", [{"key": b"x", "value": f"late-{i}".encode()} for i in range(50)])
    cf_produce(cf_producer(source), "payments-us", [{"key": b"y", "value": f"us-{i}".encode()} for i in range(50)])
    topics = {"orders": 4, "payments-eu": 1, "payments-us": 2}
    wait_caught_up(source, target, "dr", topics, timeout=90)
    assert_identical(source, target, {"orders": 3, "payments-eu": 1})
    for t, n in (("orders", 4), ("payments-us", 2)):
        for p in range(n):
            assert partition_log_bytes(target, t, p) == partition_log_bytes(source, t, p)

    listing = sluice_cli(target, "mirror", "list").stdout
    assert "dr" in listing and "RUNNING" in listing and "preserve" in listing

    # The source topic is deleted and created again: the new log is not spliced onto the copy.
    before = partition_log_bytes(target, "payments-eu", 0)
    source_admin.delete_topics(["payments-eu"])["payments-eu"].result(timeout=10)
    time.sleep(1)
    source_admin.create_topics([NewTopic("payments-eu", 1, 1)])["payments-eu"].result(timeout=10)
    time.sleep(1)
    cf_produce(cf_producer(source), "payments-eu", [{"value": f"new-{i}".encode()} for i in range(300)])
    st = wait_for(
        lambda: (s := status(target, "dr")) and "payments-eu" in s["topic_errors"] and s,
        "the recreated source topic is reported",
        timeout=60,
        every=0.5,
    )
    assert "created again" in st["topic_errors"]["payments-eu"], st["topic_errors"]
    assert partition_log_bytes(target, "payments-eu", 0) == before, "the copy is kept as it was"


def test_a_preserve_mirror_stays_identical_while_producing_through_three_kill9s(make_broker):
    import threading

    source, target = make_broker(), make_broker()
    create_topic(source, "stream", partitions=2)
    stop = threading.Event()
    failures: list = []

    def produce():
        try:
            plain = cf_producer(source, {"compression.type": "lz4", "enable.idempotence": True, "linger.ms": 5})
            txn = cf_producer(source, {"transactional.id": "stream-txn", "transaction.timeout.ms": 30_000})
            txn.init_transactions(30)
            i = 0
            while not stop.is_set():
                for j in range(50):
                    plain.produce("stream", key=f"k{j}".encode(), value=f"plain-{i}-{j}".encode())
                plain.poll(0)
                txn.begin_transaction()
                for j in range(20):
                    txn.produce("stream", key=f"t{j}".encode(), value=f"txn-{i}-{j}".encode())
                if i % 3 == 2:
                    txn.abort_transaction(30)
                else:
                    txn.commit_transaction(30)
                i += 1
                time.sleep(0.01)
            assert plain.flush(30) == 0
        except Exception as err:  # noqa: BLE001 - reported by the test
            failures.append(err)

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        sluice_cli(target, "mirror", "create", "live", "--source-bootstrap", source.bootstrap, "--topics", "stream")
        for _ in range(3):
            time.sleep(2)
            target.kill9()
            target.start()
        time.sleep(1)
    finally:
        stop.set()
        producer.join(60)
    assert not failures, failures
    wait_caught_up(source, target, "live", {"stream": 2}, timeout=90)
    assert_identical(source, target, {"stream": 2})


def test_promotion_aborts_the_sources_open_transactions_and_new_producers_can_write(make_broker):
    source, target = make_broker(), make_broker()
    create_topic(source, "ledger", partitions=1)
    cf_produce(cf_producer(source, {"enable.idempotence": True}), "ledger", [{"key": b"k", "value": f"v{i}".encode()} for i in range(20)])
    # A transaction left open on the source: its records are copied, its end never will be.
    txn = cf_producer(source, {"transactional.id": "open-txn", "transaction.timeout.ms": 600_000})
    txn.init_transactions(30)
    txn.begin_transaction()
    for i in range(5):
        txn.produce("ledger", value=f"open-{i}".encode())
    txn.flush(30)

    sluice_cli(target, "mirror", "create", "dr", "--source-bootstrap", source.bootstrap, "--topics", "ledger")
    wait_caught_up(source, target, "dr", {"ledger": 1})
    for conf, end in (({"isolation.level": "read_uncommitted"}, 25), (COMMITTED, 20)):
        consumer = cf_consumer(target, conf=conf)
        _, high = consumer.get_watermark_offsets(TopicPartition("ledger", 0), timeout=10)
        consumer.close()
        assert high == end, f"{conf}: the copy ends at {high}; the open transaction holds read_committed readers at 20"
    # A restart of the target must not end the source's transaction in the copy (the broker aborts
    # hanging transactions of its own topics at start-up, never a mirror's).
    target.kill9()
    target.start()
    assert partition_log_bytes(target, "ledger", 0) == partition_log_bytes(source, "ledger", 0)

    promoted = json.loads(sluice_cli(target, "mirror", "promote", "dr", "--topic", "ledger", "--json").stdout)
    assert promoted["promoted"][0]["topic"] == "ledger"
    assert len(promoted["promoted"][0]["aborted_transactions"]) == 1, promoted

    # A new idempotent producer on the target writes; the open source transaction stays invisible, and
    # read_committed readers are no longer held back by it.
    cf_produce(cf_producer(target, {"enable.idempotence": True}), "ledger", [{"key": b"k", "value": f"local-{i}".encode()} for i in range(10)])
    values = [r.value.decode() for r in cf_consume(target, "ledger", 30, conf=COMMITTED)]
    assert values == [f"v{i}" for i in range(20)] + [f"local-{i}" for i in range(10)]

    # Later source writes are not copied into a promoted topic, and the mirror lists it as promoted.
    cf_produce(cf_producer(source), "ledger", [{"value": b"after-promotion"}])
    time.sleep(3)
    assert "after-promotion" not in [r.value.decode() for r in cf_consume(target, "ledger", 31, timeout=5)]
    assert status(target, "dr")["promoted"] == ["ledger"]

    # Deleting the mirror keeps the data; the restart keeps the promoted topic writable.
    target.restart(kill=True)
    cf_produce(cf_producer(target), "ledger", [{"value": b"after-restart"}])
    deleted = sluice_cli(target, "mirror", "delete", "dr").stdout
    assert "Deleted mirror dr" in deleted
    listing = json.loads(sluice_cli(target, "mirror", "list", "--json").stdout)
    assert listing["mirrors"] == []


def test_bad_mirror_requests_get_clear_errors(make_broker):
    target = make_broker()
    bad = sluice_cli(target, "mirror", "create", "m", "--source-bootstrap", "127.0.0.1:1", "--topics", "(", check=False)
    assert bad.returncode != 0 and "not a valid regular expression" in bad.stderr
    bad = sluice_cli(target, "mirror", "create", "m", "--source-bootstrap", "nohost", "--topics", "a", check=False)
    assert bad.returncode != 0 and "host:port" in bad.stderr
    bad = sluice_cli(target, "mirror", "create", "m", "--source-bootstrap", "127.0.0.1:1", "--topics", "a", "--policy", "identity", check=False)
    assert bad.returncode != 0 and "mode 'rename' only" in bad.stderr
    missing = sluice_cli(target, "mirror", "status", "nope", check=False)
    assert missing.returncode != 0 and "no mirror named 'nope'" in missing.stderr
    for body in (b"{", b'{"name": "x"}', b'{"name": "x", "source_bootstrap": ["a:1"], "topics": "a", "extra": 1}'):
        code, _, answer = http_request("POST", f"{target.admin_url}/v1/mirrors", body)
        assert code == 400, (body, code, answer)
    # A source that is not there: the mirror exists, reports the source unreachable, and the broker serves on.
    sluice_cli(target, "mirror", "create", "lost", "--source-bootstrap", "127.0.0.1:1", "--topics", ".*")
    st = wait_for(lambda: (s := status(target, "lost")) and s["error"] and s, "the unreachable source is reported", timeout=60)
    assert not st["source_reachable"]
    create_topic(target, "local")
    cf_produce(cf_producer(target), "local", [{"value": b"still serving"}])


def test_a_stored_mirror_that_no_longer_validates_is_listed_as_failed_and_can_be_deleted(make_broker):
    target = make_broker()
    sluice_cli(target, "mirror", "create", "stale", "--source-bootstrap", "127.0.0.1:1", "--topics", "orders")
    target.stop()
    stored = target.data_dir / "__mirror" / "mirrors" / "stale.json"
    spec = json.loads(stored.read_text())
    spec["spec"]["topics"] = "("  # what a stricter validation in a later version would refuse
    stored.write_text(json.dumps(spec))
    target.start()
    listing = sluice_cli(target, "mirror", "list").stdout
    assert "stale" in listing and "FAILED" in listing, listing
    st = status(target, "stale")
    assert st["state"] == "FAILED" and "not valid" in st["error"], st
    refused = sluice_cli(target, "mirror", "resume", "stale", check=False)
    assert refused.returncode != 0 and "cannot run" in refused.stderr
    sluice_cli(target, "mirror", "delete", "stale")
    assert "stale" not in sluice_cli(target, "mirror", "list").stdout


def committed_offsets(broker, group: str, topic: str, partitions: int) -> dict[int, int]:
    consumer = cf_consumer(broker, group=group)
    try:
        got = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        return {tp.partition: tp.offset for tp in got if tp.offset >= 0}
    finally:
        consumer.close()


def test_group_offsets_are_synced_and_a_group_fails_over_with_no_loss_and_no_duplicates(make_broker):
    from confluent_kafka import Consumer

    source, target = make_broker(), make_broker()
    create_topic(source, "events", partitions=2)
    cf_produce(cf_producer(source), "events", [{"key": f"k{i}".encode(), "value": f"e{i}".encode()} for i in range(400)])
    # The group reads part of the topic on the source and commits.
    consumer = cf_consumer(source, group="billing")
    consumer.subscribe(["events"])
    seen = 0
    deadline = time.monotonic() + 30
    while seen < 150 and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is not None and not msg.error():
            seen += 1
    consumer.commit(asynchronous=False)
    consumer.close()
    on_source = committed_offsets(source, "billing", "events", 2)
    assert sum(on_source.values()) >= 150, on_source

    sluice_cli(
        target, "mirror", "create", "dr", "--source-bootstrap", source.bootstrap, "--topics", "events", "--groups", "billing|audit"
    )
    wait_caught_up(source, target, "dr", {"events": 2})
    wait_for(lambda: committed_offsets(target, "billing", "events", 2) == on_source, "the group's offsets synced", timeout=60, every=0.5)
    st = status(target, "dr")
    assert st["group_offsets"]["billing"]["partitions"] == len(on_source) and st["group_offsets"]["billing"]["error"] is None, st

    # Fail over: the group resumes on the target exactly where it stopped on the source.
    expected = sorted(
        (r.partition, r.offset, r.value)
        for r in cf_consume(source, "events", 400)
        if r.partition in on_source and r.offset >= on_source[r.partition]
    )
    resumed = Consumer(
        {
            "bootstrap.servers": target.bootstrap,
            "group.id": "billing",
            "enable.auto.commit": False,
            # Partitions the group never committed start at the end (nothing is expected from them); a
            # committed offset that did not arrive would show as records lost.
            "auto.offset.reset": "latest",
            "session.timeout.ms": 10_000,
        }
    )
    resumed.subscribe(["events"])
    got = []
    deadline = time.monotonic() + 60
    while len(got) < len(expected) and time.monotonic() < deadline:
        msg = resumed.poll(0.5)
        if msg is not None and not msg.error():
            got.append((msg.partition(), msg.offset(), msg.value()))
    # While the group is active here, the mirror leaves its offsets alone.
    resumed.commit(asynchronous=False)
    mine = committed_offsets(target, "billing", "events", 2)
    active = wait_for(
        lambda: (s := status(target, "dr")) and s["group_offsets"].get("billing", {}).get("error") and s,
        "the mirror skipping the active group",
        timeout=30,
        every=0.5,
    )
    assert "active members" in active["group_offsets"]["billing"]["error"]
    for _ in range(10):
        resumed.poll(0.5)
    assert committed_offsets(target, "billing", "events", 2) == mine
    resumed.close()
    assert sorted(got) == expected, f"{len(got)} records read after failover, {len(expected)} expected"


ORIGIN = "sluice.origin"


def committed_values(broker, topic: str, expected: int) -> dict[int, list]:
    """Per partition, the committed records in offset order as (key, value, headers without the origin)."""
    got = cf_consume(broker, topic, expected, timeout=90, conf=COMMITTED)
    by_partition: dict[int, list] = {}
    for r in sorted(got, key=lambda r: (r.partition, r.offset)):
        headers = [(k, v) for k, v in (r.headers or []) if k != ORIGIN]
        by_partition.setdefault(r.partition, []).append((r.key, r.value, headers, r.timestamp))
    return by_partition


def origins(broker, topic: str, expected: int) -> set:
    got = cf_consume(broker, topic, expected, timeout=60, conf=COMMITTED)
    return {dict(r.headers or []).get(ORIGIN) for r in got}


def test_a_rename_mirror_copies_committed_records_exactly_once_across_kill9(make_broker):
    source, target = make_broker(), make_broker()
    create_topic(source, "orders", partitions=3, config={"retention.ms": "604800000"})
    produce_mixed(source, "orders", "a")  # 500 committed records, 50 aborted
    out = sluice_cli(
        target, "mirror", "create", "east", "--source-bootstrap", source.bootstrap, "--source-alias", "east",
        "--topics", "orders", "--mode", "rename",
    )
    assert "Created mirror east" in out.stdout
    want = committed_values(source, "orders", 500)
    assert sum(map(len, want.values())) == 500
    have = committed_values(target, "east.orders", 500)
    assert have == want, "the copy holds the source's committed records, once each, in per-partition order"
    # The origin is the source cluster's id, on every record.
    source_id = cf_admin(source).list_topics(timeout=10).cluster_id
    assert origins(target, "east.orders", 500) == {source_id.encode()}
    # A normal topic: writable, with the source's explicit settings.
    admin = cf_admin(target)
    entries = list(admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, "east.orders")]).values())[0].result(timeout=10)
    assert entries["retention.ms"].value == "604800000"
    assert "sluice.mirror" not in entries or not entries["sluice.mirror"].value
    cf_produce(cf_producer(target), "east.orders", [{"value": b"local write"}])
    # A setting changed on the source follows.
    source_admin = cf_admin(source)
    list(source_admin.alter_configs([ConfigResource(ConfigResource.Type.TOPIC, "orders", set_config={"retention.ms": "1209600000"})]).values())[0].result(timeout=10)

    def retention_here():
        got = admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, "east.orders")])
        return list(got.values())[0].result(timeout=10)["retention.ms"].value == "1209600000"

    wait_for(retention_here, "the source's new retention.ms on the renamed copy", timeout=60, every=1)

    # SIGKILL the target while records are still arriving: it resumes from its committed positions,
    # nothing twice.
    import threading

    # The source is written in rounds of 250 committed records until the target is back, so the
    # kill lands mid-stream however fast the machine is (a fixed number of rounds could all be done).
    rounds: list[int] = []
    stop = threading.Event()

    def produce_until_stopped():
        for i in range(40):
            if stop.is_set():
                return
            produce_mixed(source, "orders", f"b{i}", count=100)
            rounds.append(i)

    producing = threading.Thread(target=produce_until_stopped)
    producing.start()
    wait_for(lambda: len(rounds) >= 1, "a first round of source writes", timeout=60, every=0.05)
    assert producing.is_alive(), "the kill must land while the source is still being written"
    target.kill9()
    target.start()
    stop.set()
    producing.join(120)
    assert not producing.is_alive()
    total = 500 + 250 * len(rounds)
    want = committed_values(source, "orders", total)
    assert sum(map(len, want.values())) == total
    have = committed_values(target, "east.orders", total + 1)
    local = [r for rs in have.values() for r in rs if r[1] == b"local write"]
    assert len(local) == 1
    have = {p: [r for r in rs if r[1] != b"local write"] for p, rs in have.items()}
    assert have == want, "no record lost or duplicated across SIGKILL"

    st = status(target, "east")
    assert st["mode"] == "rename" and st["policy"] == "default", st
    assert {(p["topic"], p["target_topic"]) for p in st["partitions"]} == {("orders", "east.orders")}
    assert all(p["lag_records"] == 0 for p in st["partitions"]), st["partitions"]
    text = sluice_cli(target, "mirror", "status", "east").stdout
    assert "orders -> east.orders" in text and "policy default" in text
    refused = sluice_cli(target, "mirror", "promote", "east", check=False)
    assert refused.returncode != 0 and "writable topics already" in refused.stderr
    # Per partition: lag in records and ms, record age, bytes/s, failing.
    cf_produce(cf_producer(source), "orders", [{"key": b"k", "value": f"one more {i}".encode()} for i in range(30)])

    def metrics_text():
        _, _, body = http_request("GET", f"{target.admin_url}/metrics")
        return body.decode() if isinstance(body, bytes) else body

    text = wait_for(lambda: (t := metrics_text()) and "sluice_mirror_record_age_ms{" in t and t, "a record age", timeout=30)
    for family in ("lag_records", "lag_ms", "bytes_per_second", "partition_failing"):
        assert f'sluice_mirror_{family}{{mirror="east",partition="0",topic="orders"}}' in text, family


def test_two_way_rename_mirrors_with_identity_names_never_loop(make_broker):
    a, b = make_broker(), make_broker()
    for broker in (a, b):
        create_topic(broker, "shared", partitions=2)
    sluice_cli(a, "mirror", "create", "from-b", "--source-bootstrap", b.bootstrap, "--topics", "shared", "--mode", "rename", "--policy", "identity")
    sluice_cli(b, "mirror", "create", "from-a", "--source-bootstrap", a.bootstrap, "--topics", "shared", "--mode", "rename", "--policy", "identity")
    cf_produce(cf_producer(a), "shared", [{"key": f"a{i}".encode(), "value": f"from-a-{i}".encode()} for i in range(30)])
    cf_produce(cf_producer(b), "shared", [{"key": f"b{i}".encode(), "value": f"from-b-{i}".encode()} for i in range(30)])
    expected = sorted([f"from-a-{i}".encode() for i in range(30)] + [f"from-b-{i}".encode() for i in range(30)])
    for broker, name in ((a, "from-b"), (b, "from-a")):
        wait_for(
            lambda broker=broker, name=name: all(p["lag_records"] == 0 for p in status(broker, name)["partitions"])
            and status(broker, name)["partitions"],
            f"mirror {name} caught up",
            timeout=60,
            every=0.5,
        )
    time.sleep(3)  # several more rounds in both directions: a loop would have grown the topics by now
    for broker, name in ((a, "from-b"), (b, "from-a")):
        got = cf_consume(broker, "shared", 61, timeout=20, conf=COMMITTED)
        assert sorted(r.value for r in got) == expected, f"{name}: each record once on each side"
        looped = sum(p["records_looped"] for p in status(broker, name)["partitions"])
        assert looped == 30, f"{name}: the records that came from here were not copied back ({looped})"


def test_rename_mode_translates_group_offsets_exactly_and_a_group_fails_over_without_loss_or_duplicates(make_broker):
    from confluent_kafka import Consumer

    source, target = make_broker(), make_broker()
    create_topic(source, "events", partitions=2)
    # Markers and aborted records make the copy's offsets differ from the source's.
    produce_mixed(source, "events", "a", count=100)  # 250 committed records
    cf_produce(cf_producer(source), "events", [{"key": f"z{i}".encode(), "value": f"tail-{i}".encode()} for i in range(40)])
    # The group committed past the transactions (markers, aborted records): 10 records before the end.
    committed = sorted(cf_consume(source, "events", 290, conf=COMMITTED), key=lambda r: (r.partition, r.offset))
    on_source = {}
    for p in (0, 1):
        offsets = [r.offset for r in committed if r.partition == p]
        if len(offsets) > 10:
            on_source[p] = offsets[-10]
    assert on_source, "the test wrote records"
    # The group stays active on the source throughout: translation does not wait for it to go idle.
    consumer = cf_consumer(source, group="billing")
    consumer.subscribe(["events"])
    wait_for(lambda: consumer.poll(0.2) is not None or consumer.assignment(), "the source group's assignment", timeout=30)
    consumer.commit(offsets=[TopicPartition("events", p, o) for p, o in on_source.items()], asynchronous=False)
    assert committed_offsets(source, "billing", "events", 2) == on_source

    sluice_cli(
        target, "mirror", "create", "east", "--source-bootstrap", source.bootstrap, "--source-alias", "east",
        "--topics", "events", "--groups", "billing", "--mode", "rename",
    )
    translated = wait_for(
        lambda: consumer.poll(0.1) is None
        and (c := committed_offsets(target, "billing", "east.events", 2))
        and set(c) == set(on_source)
        and c
        or None,
        "the group's offsets translated",
        timeout=60,
        every=0.2,
    )
    assert translated != on_source, "the copy's offsets differ from the source's, so this tests translation"

    # Fail over: the group reads on the target exactly the records after its commit on the source.
    expected: dict[int, list] = {}
    for r in committed:
        if r.partition in on_source and r.offset >= on_source[r.partition]:
            expected.setdefault(r.partition, []).append(r.value)
    resumed = Consumer(
        {
            "bootstrap.servers": target.bootstrap,
            "group.id": "billing",
            "enable.auto.commit": False,
            "auto.offset.reset": "latest",
            "isolation.level": "read_committed",
            "session.timeout.ms": 10_000,
        }
    )
    resumed.subscribe(["east.events"])
    got: dict[int, list] = {}
    want = sum(map(len, expected.values()))
    deadline = time.monotonic() + 60
    while sum(map(len, got.values())) < want and time.monotonic() < deadline:
        msg = resumed.poll(0.5)
        if msg is not None and not msg.error():
            got.setdefault(msg.partition(), []).append(msg.value())
    for _ in range(4):  # anything extra would be a duplicate
        msg = resumed.poll(0.5)
        if msg is not None and not msg.error():
            got.setdefault(msg.partition(), []).append(msg.value())
    resumed.close()
    consumer.close()
    assert got == expected, "the group resumes on the copy with no record lost and none read twice"


def build_guest(package: str) -> Path:
    """Builds one Wasm guest into the shared guest target directory (cargo makes it a no-op when current)."""
    target_dir = REPO_ROOT / "target" / "wasm-guests"
    cmd = ["cargo", "build", "--profile", "wasm-guest", "--target", "wasm32-wasip2", "--target-dir", str(target_dir), "-p", package]
    subprocess.run(cmd, cwd=REPO_ROOT, check=True, timeout=1200)
    path = target_dir / "wasm32-wasip2" / "wasm-guest" / f"{package.replace('-', '_')}.wasm"
    assert path.exists(), f"{path} was not built"
    return path


def test_a_wasm_policy_names_copies_picks_groups_and_filters_records(make_broker):
    policy = build_guest("dr-filter")
    source, target = make_broker(), make_broker()
    # The builtin policies are in the registry of a fresh broker, as mirror-policy modules.
    _, _, body = http_request("GET", f"{target.admin_url}/v1/plugins")
    worlds = {m["name"]: m["worlds"] for m in json.loads(body)["plugins"]}
    assert worlds["default-replication-policy"] == ["mirror-policy"] and worlds["identity-replication-policy"] == ["mirror-policy"]

    create_topic(source, "orders", partitions=2)
    create_topic(source, "audit")
    records_in = []
    for i in range(200):
        key = f"internal-{i}" if i % 4 == 0 else f"k-{i}"
        records_in.append({"key": key.encode(), "value": f"order-{i}".encode(), "headers": [("trace", b"t"), ("keep", f"{i}".encode())]})
    cf_produce(cf_producer(source), "orders", records_in)
    cf_produce(cf_producer(source), "audit", [{"value": b"secret"}])
    for group in ("billing", "test-load"):
        consumer = cf_consumer(source, group=group)
        consumer.commit(offsets=[TopicPartition("orders", 0, 5)], asynchronous=False)
        consumer.close()

    # Bad requests say what to do.
    for args, message in (
        (("--policy", "json-filter"), "not a mirror policy"),
        (("--policy", "nope"), "no module 'nope'"),
        (("--policy", "identity", "--policy-config", "novalue"), "not KEY=VALUE"),
    ):
        bad = sluice_cli(target, "mirror", "create", "x", "--source-bootstrap", source.bootstrap, "--topics", ".*", "--mode", "rename", *args, check=False)
        assert bad.returncode != 0 and message in bad.stderr, (args, bad.stderr)
    # A policy that refuses its configuration: the mirror says why and copies nothing.
    sluice_cli(
        target, "mirror", "create", "typo", "--source-bootstrap", source.bootstrap, "--topics", "orders", "--mode", "rename",
        "--policy", "default", "--policy-config", "separator=-",
    )
    st = wait_for(lambda: (s := status(target, "typo")) and s["error"] and s, "the policy's init error", timeout=30)
    assert "unknown policy_config key" in st["error"], st
    sluice_cli(target, "mirror", "delete", "typo")

    out = sluice_cli(
        target, "mirror", "create", "dr", "--source-bootstrap", source.bootstrap, "--topics", ".*", "--groups", ".*",
        "--mode", "rename", "--policy", str(policy),
        "--policy-config", "skip.topics=audit", "--policy-config", "drop.key.prefix=internal-", "--policy-config", "strip.header=trace",
    ).stdout
    assert "Uploaded policy dr-filter" in out and "Created mirror dr" in out, out

    kept = [r for r in records_in if not r["key"].startswith(b"internal-")]
    wait_for(lambda: {p["target_topic"] for p in status(target, "dr")["partitions"]} == {"dr.orders"}, "dr.orders created", timeout=60)
    got = cf_consume(target, "dr.orders", len(kept), timeout=60, conf=COMMITTED)
    assert sorted(r.value for r in got) == sorted(r["value"] for r in kept), "the policy's drops are not copied; the rest is, once"
    for r in got:
        headers = dict(r.headers or [])
        assert "trace" not in headers and headers["keep"] and headers[ORIGIN], "stripped, kept, and the origin header kept by the host"
    st = wait_for(
        lambda: (s := status(target, "dr")) and "billing" in s["group_offsets"] and s["group_offsets"]["billing"]["synced_at_ms"] and s,
        "the billing group synced",
        timeout=60,
    )
    assert "test-load" not in st["group_offsets"], "the policy leaves test-* groups out"
    assert sum(p["records_filtered"] for p in st["partitions"]) == 50, st["partitions"]
    assert {p["target_topic"] for p in st["partitions"]} == {"dr.orders"}, "audit is not copied"
    assert "dr.audit" not in cf_admin(target).list_topics(timeout=10).topics
    text = sluice_cli(target, "mirror", "status", "dr").stdout
    assert "policy dr-filter" in text and "drop.key.prefix=internal-" in text and "records dropped by the policy" in text, text
    # Translated through the copy: the group resumes at the first copied record at or after offset 5
    # (at most 5: records before it were dropped, none added).
    translated = wait_for(lambda: committed_offsets(target, "billing", "dr.orders", 2).get(0), "billing's offset on dr.orders", timeout=30)
    assert 0 < translated <= 5, translated

    # The copy's name is kept for the mirror's life (a copy is never renamed, even by a new policy).
    names = json.loads((target.data_dir / "__mirror" / "targets" / "dr.json").read_text())
    assert names == {"orders": "dr.orders"}, names
    # Survives a restart of the target: the names and the filter hold, nothing copied twice.
    target.kill9()
    target.start()
    cf_produce(cf_producer(source), "orders", [{"key": b"internal-x", "value": b"late-internal"}, {"key": b"k-x", "value": b"late"}])
    got = cf_consume(target, "dr.orders", len(kept) + 1, timeout=60, conf=COMMITTED)
    assert sorted(r.value for r in got) == sorted([r["value"] for r in kept] + [b"late"])

    # The mirror loads its policy by name whenever it makes an instance: the name cannot be deleted
    # from under it (409, naming the mirror), and can once the mirror is gone.
    code, _, body = http_request("DELETE", f"{target.admin_url}/v1/plugins/dr-filter")
    assert code == 409 and "mirror 'dr'" in body.decode(), (code, body)
    sluice_cli(target, "mirror", "delete", "dr")
    code, _, body = http_request("DELETE", f"{target.admin_url}/v1/plugins/dr-filter")
    assert code == 204, (code, body)
