"""Classic consumer groups: assignment and rebalance on LeaveGroup, committed offsets across a graceful and a
crash restart, kafka-python's group consumer, and the group admin APIs."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import (
    OFFSET_INVALID,
    ConsumerGroupState,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    TopicPartition,
)

from harness import (
    cf_admin,
    cf_consumer,
    cf_produce,
    cf_producer,
    create_topic,
    kp_admin,
    kp_consumer,
    unique,
)


def parts(consumer) -> set[int]:
    return {tp.partition for tp in consumer.assignment()}


def drain(consumer, sink: list, timeout: float = 0.1, max_messages: int = 100) -> None:
    for msg in consumer.consume(num_messages=max_messages, timeout=timeout):
        if msg.error() is None:
            sink.append((msg.partition(), msg.offset(), msg.value()))
        elif msg.error().code() != KafkaError._PARTITION_EOF:
            raise AssertionError(f"consumer error: {msg.error()}")


def produce_round_robin(broker, topic: str, n_partitions: int, values: list[bytes]) -> None:
    records = [{"key": None, "value": v, "partition": i % n_partitions} for i, v in enumerate(values)]
    cf_produce(cf_producer(broker, {"acks": "all"}), topic, records)


def consume_exactly(consumer, n: int, timeout: float = 30.0) -> list:
    """Take exactly `n` records from a subscribed consumer (fewer if the time runs out)."""
    got: list = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        drain(consumer, got, timeout=0.2, max_messages=min(10, n - len(got)))
    return got


def test_two_consumers_share_partitions_then_one_leaves(broker):
    topic = unique("grp-split")
    create_topic(broker, topic, 4)
    produce_round_robin(broker, topic, 4, [f"before-{i}".encode() for i in range(40)])

    group = unique("g-split")
    # session.timeout.ms is long on purpose: a takeover within a few seconds can only come from LeaveGroup.
    conf = {"session.timeout.ms": 30_000, "heartbeat.interval.ms": 500, "partition.assignment.strategy": "range"}
    c1 = cf_consumer(broker, group, conf)
    c2 = cf_consumer(broker, group, conf)
    got1: list = []
    got2: list = []
    try:
        c1.subscribe([topic])
        c2.subscribe([topic])
        deadline = time.monotonic() + 45
        while True:
            drain(c1, got1)
            drain(c2, got2)
            a1, a2 = parts(c1), parts(c2)
            if a1 and a2 and not (a1 & a2) and (a1 | a2) == {0, 1, 2, 3}:
                break
            assert time.monotonic() < deadline, f"no balanced assignment: c1={a1} c2={a2}"
        assert len(a1) == 2 and len(a2) == 2, f"range over 4 partitions and 2 members: c1={a1} c2={a2}"

        c2.close()  # LeaveGroup
        left_at = time.monotonic()
        while parts(c1) != {0, 1, 2, 3}:
            drain(c1, got1)
            assert time.monotonic() - left_at < 10, f"c1 still has {parts(c1)} 10s after c2 left"

        after = [f"after-{i}".encode() for i in range(40)]
        produce_round_robin(broker, topic, 4, after)
        deadline = time.monotonic() + 20
        while not set(after) <= {v for _, _, v in got1}:
            drain(c1, got1)
            assert time.monotonic() < deadline, "c1 did not receive the records produced after the rebalance"
        assert {p for p, _, v in got1 if v in set(after)} == {0, 1, 2, 3}
    finally:
        c1.close()


@pytest.mark.parametrize("restart", ["sigterm", "kill9"])
def test_committed_offsets_survive_restart(broker, restart):
    topic = unique("grp-resume")
    create_topic(broker, topic, 2)
    values = [f"r{i}".encode() for i in range(100)]
    produce_round_robin(broker, topic, 2, values)
    all_positions = {(i % 2, i // 2) for i in range(100)}
    group = unique("g-resume")

    c = cf_consumer(broker, group)
    c.subscribe([topic])
    first = consume_exactly(c, 60)
    assert len(first) == 60, f"consumed only {len(first)} of the first 60"
    committed = c.commit(asynchronous=False)  # synchronous: the broker has acknowledged the commit
    assert all(tp.error is None for tp in committed), committed
    expected = {p: max(o for pp, o, _ in first if pp == p) + 1 for p in {p for p, _, _ in first}}
    seen = {tp.partition: tp.offset for tp in c.committed([TopicPartition(topic, p) for p in (0, 1)], timeout=10)}
    assert {p: o for p, o in seen.items() if o >= 0} == expected
    c.close()

    if restart == "sigterm":
        broker.stop()
    else:
        broker.kill9()
    broker.start()

    c2 = cf_consumer(broker, group)
    try:
        after = {tp.partition: tp.offset for tp in c2.committed([TopicPartition(topic, p) for p in (0, 1)], timeout=10)}
        assert {p: o for p, o in after.items() if o >= 0} == expected, f"committed offsets after restart: {after}"
        c2.subscribe([topic])
        rest = consume_exactly(c2, 40)
        drain(c2, rest, timeout=1.5)  # anything more would be a re-delivery
        got = {(p, o) for p, o, _ in rest}
        assert len(rest) == 40 and got == all_positions - {(p, o) for p, o, _ in first}, (
            f"resumed with {len(rest)} records; re-delivered: {sorted(got & {(p, o) for p, o, _ in first})[:5]}"
        )
        for p, start in expected.items():
            # A partition the first consumer drained completely has nothing left to resume.
            remaining = [o for pp, o, _ in rest if pp == p]
            if start < 50:
                assert remaining and min(remaining) == start, (p, start, remaining[:3])
            else:
                assert not remaining, (p, remaining[:3])
    finally:
        c2.close()


def test_kafka_python_group_consumer(broker):
    from kafka import TopicPartition as KpTopicPartition

    topic = unique("grp-kp")
    create_topic(broker, topic, 3)
    produce_round_robin(broker, topic, 3, [f"a{i}".encode() for i in range(60)])
    group = unique("g-kp")

    kc = kp_consumer(broker, topic, group_id=group)
    try:
        got = []
        deadline = time.monotonic() + 30
        while len(got) < 60 and time.monotonic() < deadline:
            for _, msgs in kc.poll(timeout_ms=200).items():
                got.extend(msgs)
        assert sorted(m.value for m in got) == sorted(f"a{i}".encode() for i in range(60))
        assert {tp.partition for tp in kc.assignment()} == {0, 1, 2}
        kc.commit()
        for p in range(3):
            assert kc.committed(KpTopicPartition(topic, p)) == 20, f"partition {p}"
    finally:
        kc.close(autocommit=False)

    # librdkafka sees the same committed offsets.
    c = cf_consumer(broker, group)
    try:
        offs = c.committed([TopicPartition(topic, p) for p in range(3)], timeout=10)
        assert [tp.offset for tp in offs] == [20, 20, 20]
    finally:
        c.close()

    # A new member of the group gets only what was produced after the commit.
    produce_round_robin(broker, topic, 3, [f"b{i}".encode() for i in range(15)])
    kc = kp_consumer(broker, topic, group_id=group)
    try:
        got = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(got) < 15:
            for _, msgs in kc.poll(timeout_ms=200).items():
                got.extend(msgs)
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            for _, msgs in kc.poll(timeout_ms=200).items():
                got.extend(msgs)
        assert sorted(m.value for m in got) == sorted(f"b{i}".encode() for i in range(15))
        assert all(m.offset >= 20 for m in got)
    finally:
        kc.close(autocommit=False)


def test_group_admin_list_describe_delete(broker):
    topic = unique("grp-admin")
    create_topic(broker, topic, 2)
    produce_round_robin(broker, topic, 2, [f"m{i}".encode() for i in range(10)])
    group = unique("g-admin")
    admin = cf_admin(broker)
    (broker_id,) = admin.list_topics(timeout=10).brokers

    c = cf_consumer(broker, group, {"client.id": "sluice-e2e-member"})
    c.subscribe([topic])
    got = consume_exactly(c, 10)
    assert len(got) == 10

    listing = admin.list_consumer_groups(request_timeout=10).result(timeout=15)
    mine = [g for g in listing.valid if g.group_id == group]
    assert len(mine) == 1, f"{group} not in {[g.group_id for g in listing.valid]} (errors: {listing.errors})"
    assert not mine[0].is_simple_consumer_group
    assert mine[0].state == ConsumerGroupState.STABLE

    desc = admin.describe_consumer_groups([group], request_timeout=10)[group].result(timeout=15)
    assert desc.state == ConsumerGroupState.STABLE
    assert desc.partition_assignor in ("range", "roundrobin"), desc.partition_assignor
    assert desc.coordinator.id == broker_id
    assert len(desc.members) == 1
    (member,) = desc.members
    assert member.client_id == "sluice-e2e-member"
    assert {(tp.topic, tp.partition) for tp in member.assignment.topic_partitions} == {(topic, 0), (topic, 1)}

    kp = kp_admin(broker)
    try:
        assert group in {g["group_id"] for g in kp.list_groups()}
        kdesc = kp.describe_groups([group])[group]
        assert kdesc["error"] is None and kdesc["group_state"] == "Stable", kdesc
        assert len(kdesc["members"]) == 1 and kdesc["protocol_type"] == "consumer"
    finally:
        kp.close()

    # A group with a live member cannot be deleted.
    with pytest.raises(KafkaException) as exc:
        admin.delete_consumer_groups([group], request_timeout=10)[group].result(timeout=15)
    assert exc.value.args[0].code() == KafkaError.NON_EMPTY_GROUP, exc.value

    c.commit(asynchronous=False)
    offsets = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group].result(timeout=15)
    assert {(tp.topic, tp.partition, tp.offset) for tp in offsets.topic_partitions} == {(topic, 0, 5), (topic, 1, 5)}

    c.close()  # LeaveGroup: the group becomes Empty
    deadline = time.monotonic() + 10
    while admin.describe_consumer_groups([group])[group].result(timeout=15).state != ConsumerGroupState.EMPTY:
        assert time.monotonic() < deadline, "group did not become Empty after its only member left"
        time.sleep(0.2)

    admin.delete_consumer_groups([group], request_timeout=10)[group].result(timeout=15)
    listing = admin.list_consumer_groups(request_timeout=10).result(timeout=15)
    assert group not in {g.group_id for g in listing.valid}

    c3 = cf_consumer(broker, group)
    try:
        offs = c3.committed([TopicPartition(topic, p) for p in (0, 1)], timeout=10)
        assert [tp.offset for tp in offs] == [OFFSET_INVALID, OFFSET_INVALID], "deleted group kept its offsets"
    finally:
        c3.close()

    missing = unique("g-none")
    with pytest.raises(KafkaException) as exc:
        admin.delete_consumer_groups([missing], request_timeout=10)[missing].result(timeout=15)
    assert exc.value.args[0].code() == KafkaError.GROUP_ID_NOT_FOUND, exc.value


def test_offset_delete(broker):
    """OffsetDelete (kafka-python admin) removes one partition's committed offset of an empty group."""
    from kafka import TopicPartition as KpTopicPartition
    from kafka.errors import NoError

    topic = unique("grp-offdel")
    create_topic(broker, topic, 2)
    produce_round_robin(broker, topic, 2, [f"o{i}".encode() for i in range(20)])
    group = unique("g-offdel")
    c = cf_consumer(broker, group)
    try:
        c.commit(offsets=[TopicPartition(topic, 0, 3), TopicPartition(topic, 1, 5)], asynchronous=False)
    finally:
        c.close()

    kp = kp_admin(broker)
    try:
        before = kp.list_group_offsets({group: None})[group]
        assert {tp.partition: om.offset for tp, om in before.items() if tp.topic == topic} == {0: 3, 1: 5}
        result = kp.delete_group_offsets(group, [KpTopicPartition(topic, 0)])
        assert result == {KpTopicPartition(topic, 0): NoError}, result
    finally:
        kp.close()

    c = cf_consumer(broker, group)
    try:
        offs = c.committed([TopicPartition(topic, 0), TopicPartition(topic, 1)], timeout=10)
        assert [tp.offset for tp in offs] == [OFFSET_INVALID, 5]
    finally:
        c.close()


def test_kafka_python_two_consumers_rebalance_when_one_leaves(broker):
    """The same rebalance as the librdkafka test above, driven by kafka-python's own group client.

    Each consumer polls in its own thread, as kafka-python consumers are used: one thread driving two
    consumers with short polls leaves joins half-done and makes the client itself rejoin."""
    import threading

    topic = unique("grp-kp2")
    create_topic(broker, topic, 4)
    group = unique("g-kp2")
    consumers = [kp_consumer(broker, topic, group_id=group) for _ in range(2)]
    stops = [threading.Event(), threading.Event()]
    received: list[bytes] = []
    lock = threading.Lock()

    def loop(consumer, stop):
        while not stop.is_set():
            for _, msgs in consumer.poll(timeout_ms=200).items():
                with lock:
                    received.extend(m.value for m in msgs)
        consumer.close(autocommit=False)  # sends LeaveGroup

    threads = [threading.Thread(target=loop, args=(c, s), daemon=True) for c, s in zip(consumers, stops)]
    for t in threads:
        t.start()

    def kp_parts(consumer) -> set[int]:
        return {tp.partition for tp in consumer.assignment()}

    try:
        deadline = time.monotonic() + 30
        while True:
            a1, a2 = kp_parts(consumers[0]), kp_parts(consumers[1])
            if a1 and a2 and a1 | a2 == {0, 1, 2, 3} and not a1 & a2:
                break
            assert time.monotonic() < deadline, f"no split assignment within 30 s: {a1} / {a2}"
            time.sleep(0.1)
        stops[1].set()
        threads[1].join(timeout=15)
        left_at = time.monotonic()
        while kp_parts(consumers[0]) != {0, 1, 2, 3}:
            assert time.monotonic() - left_at < 15, f"consumer 1 holds {kp_parts(consumers[0])} 15 s after consumer 2 left"
            time.sleep(0.1)
        produce_round_robin(broker, topic, 4, [f"x{i}".encode() for i in range(8)])
        deadline = time.monotonic() + 20
        while True:
            with lock:
                got = [v for v in received if v.startswith(b"x")]
            if len(got) >= 8:
                break
            assert time.monotonic() < deadline, f"consumer 1 received {len(got)} of 8 records after the rebalance"
            time.sleep(0.1)
        assert sorted(got) == sorted(f"x{i}".encode() for i in range(8))
    finally:
        for stop in stops:
            stop.set()
        for t in threads:
            t.join(timeout=15)
