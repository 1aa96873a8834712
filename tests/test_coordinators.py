"""A cluster's group and transaction coordinators live on the leader of `__sluice_coordinator-0` and
fail over with it (issue 14): committed offsets, transactions and exactly-once read-process-write
pipelines carry on when that broker is killed with SIGKILL."""

from __future__ import annotations

import json
import time
from collections import Counter

from harness import cf_admin, cf_consumer, cf_producer, http_request, unique, wait_for
from test_replication import bootstrap, create_replicated, partitions, read_everything, start_replicated_nodes

COORDINATOR_TOPIC = "__sluice_coordinator"


def coordinator_partition(node):
    """(leader, replicas, isr) of the coordinators' partition, once the cluster created it."""
    md = cf_admin(node).list_topics(timeout=10)
    topic = md.topics.get(COORDINATOR_TOPIC)
    if topic is None or topic.error is not None or 0 not in topic.partitions:
        return None
    p = topic.partitions[0]
    return p.leader, sorted(p.replicas), sorted(p.isrs)


def in_sync_coordinator(nodes, live: list[int]):
    """The coordinator's id once its partition has a live leader and every live broker in sync."""
    state = coordinator_partition(nodes[0])
    if state is None or state[0] not in live or state[2] != sorted(live):
        return None
    return state[0]


def test_the_coordinators_topic_is_internal_replicated_and_protected(make_broker):
    nodes = start_replicated_nodes(make_broker)
    leader = wait_for(lambda: in_sync_coordinator(nodes, [1, 2, 3]), "the coordinators' partition on three in-sync replicas", timeout=30)
    md = cf_admin(nodes[0]).list_topics(timeout=10)
    assert md.topics[COORDINATOR_TOPIC].partitions[0].replicas == [1, 2, 3]
    assert leader == 1, "the lowest broker id is its preferred leader"
    # Clients may read it but not delete or write it.
    admin = cf_admin(nodes[0])
    try:
        admin.delete_topics([COORDINATOR_TOPIC], request_timeout=10)[COORDINATOR_TOPIC].result(timeout=15)
        raise AssertionError("deleting the coordinators' topic must fail")
    except Exception as error:  # noqa: BLE001 - confluent_kafka raises KafkaException
        assert "TOPIC_EXCEPTION" in str(error), error  # INVALID_TOPIC_EXCEPTION
    producer = cf_producer(nodes[0], {"bootstrap.servers": bootstrap(nodes), "message.timeout.ms": 5000})
    failures = []
    producer.produce(COORDINATOR_TOPIC, b"x", on_delivery=lambda e, m: e and failures.append(e))
    producer.flush(10)
    assert failures, "a client's write to the coordinators' topic is refused"
    status, _, body = http_request("DELETE", f"{nodes[0].admin_url}/v1/topics/{COORDINATOR_TOPIC}", timeout=10)
    assert status == 400 and b"internal" in body, (status, body)


def test_offsets_and_an_exactly_once_pipeline_survive_a_coordinator_kill(make_broker):
    """A consume-transform-produce loop (read_committed consumer in a group, transactional producer
    sending its offsets to each transaction) runs while the coordinator is killed with SIGKILL. The
    clients find the new coordinator by themselves; every input record appears in the output exactly
    once, and the group's committed offsets (plain and transactional) are where they were."""
    from confluent_kafka import KafkaException, TopicPartition

    nodes = start_replicated_nodes(make_broker)
    coordinator = wait_for(lambda: in_sync_coordinator(nodes, [1, 2, 3]), "the coordinators' partition in sync", timeout=30)
    source, sink = unique("eos-in"), unique("eos-out")
    for topic in (source, sink):
        create_replicated(nodes[0], topic, 3, 3, {"min.insync.replicas": "2"})
    wait_for(lambda: all(len(isr) == 3 for t in (source, sink) for _, _, isr in partitions(nodes[0], t).values()), "topics in sync")
    servers = bootstrap(nodes)
    total = 600
    producer = cf_producer(nodes[0], {"bootstrap.servers": servers, "enable.idempotence": True, "acks": "all"})
    for i in range(total):
        producer.produce(source, key=f"k{i % 30}".encode(), value=str(i).encode())
    assert producer.flush(30) == 0

    # A plain commit of another group, read back after the kill.
    plain = unique("plain")
    committer = cf_consumer(nodes[0], group=plain, conf={"bootstrap.servers": servers, "enable.auto.commit": False})
    committer.commit(offsets=[TopicPartition(source, p, 7 + p) for p in range(3)], asynchronous=False)
    committer.close()

    group = unique("eos")
    consumer = cf_consumer(
        nodes[0],
        group=group,
        conf={
            "bootstrap.servers": servers,
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000,
        },
    )
    consumer.subscribe([source])
    txn = cf_producer(nodes[0], {"bootstrap.servers": servers, "transactional.id": unique("eos-txn"), "transaction.timeout.ms": 30_000})
    txn.init_transactions(30)

    processed = 0
    killed, killed_at, recovered_after = False, 0.0, None
    aborted = 0
    deadline = time.monotonic() + 120
    while processed < total:
        assert time.monotonic() < deadline, f"the pipeline stalled after {processed} records ({aborted} aborts)"
        if not killed and processed >= total // 3:
            nodes[coordinator - 1].kill9()
            killed, killed_at = True, time.monotonic()
        batch = [m for m in consumer.consume(num_messages=40, timeout=1) if m.error() is None]
        if not batch:
            continue
        try:
            txn.begin_transaction()
            for m in batch:
                txn.produce(sink, key=m.key(), value=m.value())
            txn.send_offsets_to_transaction(consumer.position(consumer.assignment()), consumer.consumer_group_metadata(), 30)
            txn.commit_transaction(30)
            processed += len(batch)
            if killed and recovered_after is None:
                recovered_after = time.monotonic() - killed_at
        except KafkaException as error:
            kafka_error = error.args[0]
            assert not kafka_error.fatal(), f"the producer hit a fatal error: {kafka_error}"
            aborted += 1
            if kafka_error.txn_requires_abort():
                txn.abort_transaction(30)
            # Start again from what the group committed (the aborted batch is read again).
            assignment = consumer.assignment()
            for tp in consumer.committed(assignment, timeout=30):
                consumer.seek(TopicPartition(tp.topic, tp.partition, tp.offset if tp.offset >= 0 else 0))
    assert killed
    print(f"processed {processed} records; {aborted} transactions retried; committing again {recovered_after:.2f} s after the kill")
    survivors = [n for i, n in enumerate(nodes) if i + 1 != coordinator]
    moved = wait_for(lambda: in_sync_coordinator(survivors, [n for n in (1, 2, 3) if n != coordinator]), "a new coordinator", timeout=30)
    assert moved != coordinator

    committed = consumer.committed([TopicPartition(source, p) for p in range(3)], timeout=30)
    consumer.close()
    watermarks = cf_consumer(survivors[0], conf={"bootstrap.servers": bootstrap(survivors)})
    try:
        for tp in committed:
            low, high = watermarks.get_watermark_offsets(TopicPartition(source, tp.partition), timeout=10)
            assert tp.offset == high, f"partition {tp.partition}: the group committed {tp.offset}, the input ends at {high}"
    finally:
        watermarks.close()

    seen = read_everything(survivors, sink, total)
    values = Counter(int(v) for vs in seen.values() for v in vs)
    assert sorted(values) == list(range(total)), "every input record reached the output"
    assert max(values.values()) == 1, f"no record was written twice: {[v for v, n in values.items() if n > 1][:10]}"

    reader = cf_consumer(survivors[0], group=plain, conf={"bootstrap.servers": bootstrap(survivors)})
    try:
        offsets = reader.committed([TopicPartition(source, p) for p in range(3)], timeout=30)
        assert [tp.offset for tp in offsets] == [7, 8, 9], offsets
    finally:
        reader.close()


def describe_group(node, group: str) -> dict | None:
    status, _, body = http_request("GET", f"{node.admin_url}/v1/groups/{group}", timeout=10)
    return json.loads(body) if status == 200 else None


def test_a_stable_group_keeps_its_generation_and_assignments_across_a_coordinator_kill(make_broker):
    """Group membership is replicated: when the coordinator is killed, the next one loads the group
    as it was (Stable, same generation, same assignments) and its members carry on — heartbeats and
    commits in their generation are accepted, and nobody rebalances."""
    from confluent_kafka import TopicPartition

    nodes = start_replicated_nodes(make_broker)
    coordinator = wait_for(lambda: in_sync_coordinator(nodes, [1, 2, 3]), "the coordinators' partition in sync", timeout=30)
    topic = unique("members")
    create_replicated(nodes[0], topic, 4, 3, {"min.insync.replicas": "2"})
    wait_for(lambda: all(len(isr) == 3 for _, _, isr in partitions(nodes[0], topic).values()), "the topic in sync")
    servers = bootstrap(nodes)
    producer = cf_producer(nodes[0], {"bootstrap.servers": servers, "acks": "all"})

    group = unique("stable")
    rebalances: list[str] = []
    consumers = []
    for name in ("a", "b"):
        consumer = cf_consumer(
            nodes[0],
            group=group,
            conf={"bootstrap.servers": servers, "enable.auto.commit": False, "auto.offset.reset": "earliest", "session.timeout.ms": 6000},
        )
        consumer.subscribe(
            [topic],
            on_assign=lambda c, ps, name=name: rebalances.append(f"{name} assigned {sorted(p.partition for p in ps)}"),
            on_revoke=lambda c, ps, name=name: rebalances.append(f"{name} revoked {sorted(p.partition for p in ps)}"),
        )
        consumers.append(consumer)

    def poll_all(seconds: float) -> int:
        received = 0
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            for consumer in consumers:
                received += sum(1 for m in consumer.consume(num_messages=100, timeout=0.1) if m.error() is None)
        return received

    def settled():
        poll_all(0.5)
        view = describe_group(nodes[coordinator - 1], group)
        if view is None or view["state"] != "Stable" or len(view["members"]) != 2 or not all(c.assignment() for c in consumers):
            return None
        return view

    before = wait_for(settled, "both consumers in a stable group", timeout=60)
    rebalances_before = list(rebalances)
    for i in range(200):
        producer.produce(topic, key=str(i).encode(), value=b"v")
    assert producer.flush(30) == 0
    assert poll_all(3) > 0

    nodes[coordinator - 1].kill9()
    survivors = [n for i, n in enumerate(nodes) if i + 1 != coordinator]
    live = [n for n in (1, 2, 3) if n != coordinator]
    moved = wait_for(lambda: in_sync_coordinator(survivors, live), "a new coordinator", timeout=30)
    # Longer than the session timeout: members the new coordinator did not hear from would be gone.
    for i in range(200):
        producer.produce(topic, key=str(i).encode(), value=b"w")
    producer.flush(30)
    received = poll_all(10)
    after = describe_group(nodes[moved - 1], group)
    assert after is not None, "the new coordinator knows the group"
    assert rebalances == rebalances_before, f"nobody rebalanced: {rebalances[len(rebalances_before):]}"
    assert (after["state"], after["generation"]) == ("Stable", before["generation"]), after
    by_member = lambda view: {m["member_id"]: m["assignment"] for m in view["members"]}  # noqa: E731
    assert by_member(after) == by_member(before), "the same members with the same assignments"
    assert received > 0, "the members kept consuming"
    # Commits in the generation are accepted by the new coordinator.
    for consumer in consumers:
        consumer.commit(asynchronous=False)
    committed = consumers[0].committed([TopicPartition(topic, p) for p in range(4)], timeout=30)
    assert any(tp.offset > 0 for tp in committed), committed
    for consumer in consumers:
        consumer.close()
