"""Partition replication across three real `sluice server` processes (issue 14, replication piece):
followers copy their leaders' logs, the ISR follows them, acks=all waits for the ISR and
min.insync.replicas refuses writes when too few replicas are in sync. A leader killed with SIGKILL
hands its partitions to an in-sync follower: no acknowledged record is lost or duplicated, the
clients find the new leader themselves, and the killed broker comes back as a follower, catches up
and rejoins the ISR."""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from collections import defaultdict

import kafka_wire as wire
from harness import cf_admin, cf_consumer, cf_producer, http_request, sluice_cli, unique, wait_for
from test_cluster import agreed, metric, start_three_nodes

LAG_MS = 3000


def start_replicated_nodes(make_broker):
    nodes = start_three_nodes(make_broker, f"replica.lag.time.max.ms={LAG_MS}")
    wait_for(lambda: agreed(nodes, [1, 2, 3]), "one leader and three live brokers on every node", timeout=30)
    return nodes


def bootstrap(nodes) -> str:
    return ",".join(n.bootstrap for n in nodes)


def partitions(node, topic: str) -> dict[int, tuple[int, list[int], list[int]]]:
    """partition -> (leader, replicas, isr) in the Metadata `node` serves."""
    md = cf_admin(node).list_topics(topic, timeout=10)
    return {p: (pm.leader, sorted(pm.replicas), sorted(pm.isrs)) for p, pm in md.topics[topic].partitions.items()}


def log_ends(node, topic: str) -> dict[int, int]:
    """partition -> log end offset of the copy `node` holds (its admin API)."""
    status, _, body = http_request("GET", f"{node.admin_url}/v1/topics/{topic}", timeout=5)
    assert status == 200, body
    return {p["partition"]: p["log_end_offset"] for p in json.loads(body)["partition_details"]}


def create_replicated(node, topic: str, count: int, factor: int, config: dict) -> None:
    from confluent_kafka.admin import NewTopic

    admin = cf_admin(node)
    admin.create_topics([NewTopic(topic, num_partitions=count, replication_factor=factor, config=config)], request_timeout=15)[
        topic
    ].result(timeout=20)


def read_everything(nodes, topic: str, expected: int) -> dict[bytes, list[int]]:
    """Every record of `topic`, read_committed from offset 0 of each partition, by key. Assigned, not
    subscribed: no group to wait for while a coordinator a test killed fails over."""
    from confluent_kafka import TopicPartition

    consumer = cf_consumer(nodes[0], conf={"bootstrap.servers": bootstrap(nodes), "isolation.level": "read_committed"})
    count = len(cf_admin(nodes[0], {"bootstrap.servers": bootstrap(nodes)}).list_topics(topic, timeout=10).topics[topic].partitions)
    consumer.assign([TopicPartition(topic, p, 0) for p in range(count)])
    seen: dict[bytes, list[int]] = defaultdict(list)
    try:

        def more():
            for msg in consumer.consume(num_messages=500, timeout=0.5):
                if msg.error() is None:
                    seen[msg.key()].append(int(msg.value()))
            return sum(map(len, seen.values())) >= expected

        wait_for(more, f"a consumer to read {expected} records", timeout=60, every=0)
        time.sleep(1)  # anything beyond `expected` (a duplicate) arrives now
        more()
    finally:
        consumer.close()
    return seen


def produce(producer, topic: str, values, failures: list) -> None:
    for i in values:
        producer.produce(topic, key=f"k{i % 20}".encode(), value=str(i).encode(), on_delivery=lambda e, m: e and failures.append(e))
        producer.poll(0)


@contextlib.contextmanager
def writing(producer, topic: str, first: int, failures: list, step: int = 20):
    """Keeps `producer` writing records first, first + 1, … to `topic` until the block ends; yields
    a one-element list holding the next value (how many were produced once the block is left)."""
    stop = threading.Event()
    written = [first]

    def keep_writing():
        while not stop.is_set():
            produce(producer, topic, range(written[0], written[0] + step), failures)
            written[0] += step
            time.sleep(0.005)

    writer = threading.Thread(target=keep_writing, daemon=True)
    writer.start()
    try:
        yield written
    finally:
        stop.set()
        writer.join(timeout=10)


def assert_read_back_exactly(nodes, topic: str, count: int) -> None:
    """Every acknowledged record 0..count is read once, in per-key order."""
    seen = read_everything(nodes, topic, count)
    assert sum(map(len, seen.values())) == count, "nothing acknowledged was lost, nothing was written twice"
    for key, values in seen.items():
        assert values == sorted(values) and len(set(values)) == len(values), f"{key}: out of order or duplicated"


def test_a_killed_leader_hands_its_partitions_to_an_in_sync_follower(make_broker):
    nodes = start_replicated_nodes(make_broker)
    topic = unique("replicated")
    create_replicated(nodes[0], topic, 3, 3, {"min.insync.replicas": "2"})

    # Every broker holds every partition; leaders spread over the three; the ISR is all three.
    placed = wait_for(
        lambda: (p := partitions(nodes[1], topic)) and len(p) == 3 and all(len(isr) == 3 for _, _, isr in p.values()) and p,
        "three partitions with three in-sync replicas",
    )
    assert all(replicas == [1, 2, 3] for _, replicas, _ in placed.values()), placed
    assert sorted(leader for leader, _, _ in placed.values()) == [1, 2, 3], placed
    for node in nodes:
        assert sorted(int(d.name.rsplit("-", 1)[1]) for d in node.data_dir.glob(f"{topic}-*")) == [0, 1, 2]

    producer = cf_producer(nodes[0], {"bootstrap.servers": bootstrap(nodes), "enable.idempotence": True, "acks": "all"})
    failures: list = []
    produce(producer, topic, range(0, 600), failures)
    assert producer.flush(30) == 0 and not failures, failures

    # acks=all returned: every replica has every record (followers copy byte for byte).
    wait_for(lambda: len({tuple(sorted(log_ends(n, topic).items())) for n in nodes}) == 1, "every copy to reach the same log end")
    ends = log_ends(nodes[0], topic)
    assert sum(ends.values()) >= 600, ends

    # SIGKILL the leader of partition 0 while the producer keeps writing: an in-sync follower takes
    # over, the producer and the consumer find it without help.
    victim = placed[0][0]
    survivors = [n for i, n in enumerate(nodes) if i + 1 != victim]
    nodes[victim - 1].kill9()
    produce(producer, topic, range(600, 1200), failures)
    moved = wait_for(
        lambda: (p := partitions(survivors[0], topic)) and p[0][0] not in (victim, -1) and victim not in p[0][2] and p,
        "partition 0 to get a new leader from its ISR",
        timeout=30,
    )
    assert all(leader != victim for leader, _, _ in moved.values()), moved
    assert producer.flush(60) == 0 and not failures, failures
    # The topic's three and the internal topics' two (the coordinators' and the plugin log's, each
    # with replicas on all three brokers).
    wait_for(lambda: metric(survivors[0], "sluice_under_replicated_partitions") == 5, "five under-replicated partitions")

    seen = read_everything(survivors, topic, 1200)
    assert sum(map(len, seen.values())) == 1200, "nothing acknowledged was lost, nothing was written twice"
    for key, values in seen.items():
        assert values == sorted(values) and len(set(values)) == len(values), f"{key}: out of order or duplicated"

    # The killed broker comes back as a follower. It answers clients only once it has caught up with
    # the quorum's log: its very first Metadata names the new leaders and the cluster's id, not the
    # view it died with (which had it leading partition 0) nor its own directory's id.
    cluster_id = cf_admin(survivors[0]).list_topics(timeout=10).cluster_id
    nodes[victim - 1].start(wait=False)
    first = first_metadata(nodes[victim - 1], topic)
    assert first["cluster_id"] == cluster_id, first
    error, served = first["topics"][topic]
    assert error == 0 and sorted(served) == [0, 1, 2], first
    assert all(leader not in (victim, -1) and victim not in isr for _, leader, _, isr in served.values()), first
    nodes[victim - 1].wait_ready()
    # It catches up and rejoins every ISR.
    wait_for(
        lambda: all(isr == [1, 2, 3] for _, _, isr in partitions(nodes[0], topic).values()),
        "the restarted broker to rejoin every ISR",
        timeout=40,
    )
    wait_for(lambda: len({tuple(sorted(log_ends(n, topic).items())) for n in nodes}) == 1, "its copies to match the others")
    wait_for(lambda: metric(nodes[0], "sluice_under_replicated_partitions") == 0, "no under-replicated partition")

    # Its copies are the real thing: kill partition 0's current leader, so that the restarted
    # broker leads some partitions, and read everything again.
    leader_now = partitions(nodes[0], topic)[0][0]
    nodes[leader_now - 1].kill9()
    rest = [n for i, n in enumerate(nodes) if i + 1 != leader_now]
    wait_for(
        lambda: all(l not in (leader_now, -1) for l, _, _ in partitions(rest[0], topic).values()),
        "every partition led by the two remaining brokers",
        timeout=30,
    )
    seen = read_everything(rest, topic, 1200)
    assert sum(map(len, seen.values())) == 1200
    producer.flush(5)


def first_metadata(node, topic: str) -> dict:
    """The first Metadata answer of a starting broker: asked as soon as its port accepts connections
    (a connection it closes unanswered is tried again)."""
    deadline = time.monotonic() + 30
    while True:
        assert time.monotonic() < deadline, "no Metadata answer within 30 s"
        try:
            sock = wire.connect(node.port, timeout=10)
        except ConnectionRefusedError:
            time.sleep(0.005)
            continue
        try:
            sock.sendall(wire.metadata_v2(1, [topic]))
            _, body = wire.read_response(sock)
            return wire.parse_metadata_v2(body)
        except ConnectionError:
            continue
        finally:
            sock.close()


def test_acks_all_needs_min_insync_replicas(make_broker):
    nodes = start_replicated_nodes(make_broker)
    topic = unique("insync")

    # More replicas than brokers is refused up front, with a reason (the CLI's CreateTopics).
    refused = sluice_cli(nodes[0], "topic", "create", unique("wide"), "--replication-factor", "4", check=False)
    assert refused.returncode != 0 and "replication factor" in (refused.stdout + refused.stderr).lower(), refused

    create_replicated(nodes[0], topic, 1, 3, {"min.insync.replicas": "3"})
    leader = wait_for(lambda: (p := partitions(nodes[0], topic)) and p[0][2] == [1, 2, 3] and p[0][0], "the partition's ISR")
    leader_node = nodes[leader - 1]
    follower = next(i + 1 for i in range(3) if i + 1 != leader)

    def produce_raw(acks: int, timeout_ms: int = 10_000) -> int:
        with wire.connect(leader_node.port) as sock:
            batch = wire.record_batch([(None, b"v", ())])
            sock.sendall(wire.produce_v3(1, topic, 0, batch, acks=acks, timeout_ms=timeout_ms))
            [(_, _, code, _)] = wire.parse_produce_v3(wire.read_response(sock)[1])
            return code

    assert produce_raw(-1) == 0, "all three in sync: acks=all succeeds"
    nodes[follower - 1].kill9()
    # The controller fences the dead broker and drops it from the ISR: two in sync, three needed.
    wait_for(lambda: len(partitions(leader_node, topic)[0][2]) == 2, "the ISR to shrink to two", timeout=30)
    # The metadata a broker serves is the quorum's state; the leader applies it to its own partition a
    # moment later (as a Kafka leader learns its ISR from the AlterPartition answer): until then an
    # acks=all write still waits for the dead follower and times out (7).
    codes = []
    wait_for(lambda: codes.append(produce_raw(-1, 1_000)) or codes[-1] == 19, f"NOT_ENOUGH_REPLICAS (codes {codes})", timeout=15)
    assert set(codes) <= {7, 19}, codes
    assert produce_raw(1) == 0, "acks=1 does not ask for replicas"
    nodes[follower - 1].start()
    wait_for(lambda: partitions(leader_node, topic)[0][2] == [1, 2, 3], "the follower to rejoin the ISR", timeout=40)
    codes.clear()
    wait_for(lambda: codes.append(produce_raw(-1)) or codes[-1] == 0, f"acks=all to succeed again (codes {codes})", timeout=15)
    assert set(codes) <= {0, 19}, codes


def test_a_follower_behind_the_leaders_log_start_starts_over_from_there(make_broker):
    """Retention on the leader removed everything a dead follower misses: back, it cannot copy the
    gap, so it empties its copy, continues from the leader's log start and rejoins the ISR."""
    nodes = start_three_nodes(make_broker, f"replica.lag.time.max.ms={LAG_MS}", "log.retention.check.interval.ms=200")
    wait_for(lambda: agreed(nodes, [1, 2, 3]), "one leader and three live brokers on every node", timeout=30)
    topic = unique("retained")
    mib = 1024 * 1024
    create_replicated(nodes[0], topic, 1, 3, {"segment.bytes": str(mib), "retention.bytes": str(mib)})
    leader = wait_for(lambda: (p := partitions(nodes[0], topic)) and p[0][2] == [1, 2, 3] and p[0][0], "the partition's ISR")
    follower = next(i + 1 for i in range(3) if i + 1 != leader)
    nodes[follower - 1].kill9()
    wait_for(lambda: len(partitions(nodes[leader - 1], topic)[0][2]) == 2, "the ISR to drop the dead follower", timeout=30)

    producer = cf_producer(nodes[leader - 1], {"acks": "all", "linger.ms": 20})
    failures: list = []
    value = b"x" * 10_000
    for _ in range(600):  # ~6 MB: several segments, most of them past retention
        producer.produce(topic, value=value, on_delivery=lambda e, m: e and failures.append(e))
        producer.poll(0)
    assert producer.flush(60) == 0 and not failures, failures

    def leader_start():
        status, _, body = http_request("GET", f"{nodes[leader - 1].admin_url}/v1/topics/{topic}", timeout=5)
        return json.loads(body)["partition_details"][0]["log_start_offset"]

    start = wait_for(lambda: (s := leader_start()) > 0 and s, "retention to move the leader's log start")
    nodes[follower - 1].start()
    # Asked of the leader: the restarted node's own view starts from the state it died with.
    wait_for(lambda: partitions(nodes[leader - 1], topic)[0][2] == [1, 2, 3], "the follower to rejoin the ISR", timeout=40)

    def copy():
        status, _, body = http_request("GET", f"{nodes[follower - 1].admin_url}/v1/topics/{topic}", timeout=5)
        return json.loads(body)["partition_details"][0]

    wait_for(lambda: copy()["log_end_offset"] == log_ends(nodes[leader - 1], topic)[0], "the copy to reach the leader's end")
    assert copy()["log_start_offset"] >= start, copy()


def test_deleted_records_stay_deleted_when_another_replica_leads(make_broker):
    """DeleteRecords (kafka-delete-records.sh) moves the log start of every in-sync copy before it
    answers, as Kafka's does (the followers learn the leader's log start from their fetches): after
    the leader is killed, the new leader's log starts where the deletion left it and a consumer from
    the beginning reads only what was kept."""
    from confluent_kafka import TopicPartition

    nodes = start_replicated_nodes(make_broker)
    topic = unique("trimmed")
    create_replicated(nodes[0], topic, 1, 3, {"min.insync.replicas": "2"})
    leader = wait_for(lambda: (p := partitions(nodes[0], topic)) and p[0][2] == [1, 2, 3] and p[0][0], "the partition's ISR")
    producer = cf_producer(nodes[0], {"bootstrap.servers": bootstrap(nodes), "enable.idempotence": True, "acks": "all"})
    failures: list = []
    produce(producer, topic, range(1000), failures)
    assert producer.flush(30) == 0 and not failures, failures
    out = sluice_cli(nodes[leader - 1], "topic", "delete-records", topic, "--partition", "0", "--offset", "600", "--json")
    assert "600" in out.stdout, out.stdout

    def starts():
        found = {}
        for node in nodes:
            if node.is_running():
                status, _, body = http_request("GET", f"{node.admin_url}/v1/topics/{topic}", timeout=5)
                found[node] = json.loads(body)["partition_details"][0]["log_start_offset"]
        return found

    assert set(starts().values()) == {600}, "every in-sync copy moved its log start before the answer"
    nodes[leader - 1].kill9()
    survivors = [n for n in nodes if n.is_running()]
    wait_for(lambda: partitions(survivors[0], topic)[0][0] not in (leader, -1), "a new leader")
    consumer = cf_consumer(survivors[0], conf={"bootstrap.servers": bootstrap(survivors)})
    try:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
        assert (low, high) == (600, 1000), (low, high)
    finally:
        consumer.close()
    seen = read_everything(survivors, topic, 400)
    assert sorted(v for values in seen.values() for v in values) == list(range(600, 1000))


def preferred_and_leaders(node, topic: str) -> dict[int, tuple[int, int, list[int]]]:
    """partition -> (preferred leader: the first replica, leader, isr)."""
    md = cf_admin(node).list_topics(topic, timeout=10)
    return {p: (pm.replicas[0], pm.leader, sorted(pm.isrs)) for p, pm in md.topics[topic].partitions.items()}


def restart_a_preferred_leader(nodes, topic: str):
    """Kills the broker that is the preferred leader of partition 0, waits until its partitions are
    led by others, restarts it and waits until it is back in every ISR. Returns its id and a broker
    that was not restarted (the restarted one serves its old view until it has caught up with the
    quorum's log)."""
    victim = preferred_and_leaders(nodes[0], topic)[0][0]
    others = [n for i, n in enumerate(nodes) if i + 1 != victim]
    nodes[victim - 1].kill9()
    wait_for(
        lambda: all(leader not in (victim, -1) for _, leader, _ in preferred_and_leaders(others[0], topic).values()),
        "the killed broker's partitions to move",
        timeout=30,
    )
    nodes[victim - 1].start()
    wait_for(
        lambda: all(isr == [1, 2, 3] for _, _, isr in preferred_and_leaders(others[0], topic).values()),
        "the restarted broker to rejoin every ISR",
        timeout=40,
    )
    return victim, others[0]


def test_elect_leaders_gives_partitions_back_to_their_preferred_replicas(make_broker):
    """kafka-leader-election.sh --election-type PREFERRED: a restarted broker stays a follower until
    ElectLeaders moves leadership back; an idempotent acks=all producer writing through the move
    loses nothing and duplicates nothing."""
    from confluent_kafka import ElectionType, KafkaError, TopicPartition

    nodes = start_three_nodes(make_broker, f"replica.lag.time.max.ms={LAG_MS}", "auto.leader.rebalance.enable=false")
    wait_for(lambda: agreed(nodes, [1, 2, 3]), "one leader and three live brokers on every node", timeout=30)
    topic = unique("preferred")
    create_replicated(nodes[0], topic, 6, 3, {"min.insync.replicas": "2"})
    wait_for(lambda: all(len(isr) == 3 for _, _, isr in preferred_and_leaders(nodes[0], topic).values()), "six in-sync partitions")
    producer = cf_producer(nodes[0], {"bootstrap.servers": bootstrap(nodes), "enable.idempotence": True, "acks": "all"})
    failures: list = []
    produce(producer, topic, range(0, 500), failures)
    assert producer.flush(30) == 0 and not failures, failures

    victim, observer = restart_a_preferred_leader(nodes, topic)
    state = preferred_and_leaders(observer, topic)
    mine = sorted(p for p, (preferred, _, _) in state.items() if preferred == victim)
    assert mine and all(state[p][1] != victim for p in mine), state

    admin = cf_admin(nodes[1], {"bootstrap.servers": bootstrap(nodes)})  # held: see harness
    # Named partitions: one to move, one already led by its preferred replica, one that does not exist.
    settled = next(p for p in state if p not in mine)
    asked = [TopicPartition(topic, mine[0]), TopicPartition(topic, settled), TopicPartition(topic, 99)]
    produce(producer, topic, range(500, 1000), failures)
    results = admin.elect_leaders(ElectionType.PREFERRED, asked).result(timeout=30)
    codes = {tp.partition: (error.code() if error else 0) for tp, error in results.items()}
    assert codes == {mine[0]: 0, settled: KafkaError.ELECTION_NOT_NEEDED, 99: KafkaError.UNKNOWN_TOPIC_OR_PART}, codes
    # The CLI names one partition, then every partition (the rest move too).
    assert len(mine) == 2, state
    produce(producer, topic, range(1000, 1500), failures)
    out = json.loads(sluice_cli(nodes[2], "cluster", "elect-leaders", "--topic", topic, "--partition", str(mine[1]), "--json").stdout)
    assert out["results"] == [{"topic": topic, "partition": mine[1], "ok": True, "result": "elected"}], out
    # Every partition: the topic's are all settled now; the internal topics' partitions (replicas on
    # all three) move back too when the restarted broker was their preferred leader.
    everything = sluice_cli(nodes[2], "cluster", "elect-leaders").stdout
    assert "Every partition is led by its preferred replica" in everything or (
        topic not in everything and ("__sluice_coordinator" in everything or "__sluice_plugins" in everything)
    ), everything
    refused = sluice_cli(nodes[2], "cluster", "elect-leaders", "--topic", topic, "--partition", "99", check=False)
    assert refused.returncode != 0 and "99" in refused.stdout, refused
    wait_for(
        lambda: all(preferred == leader for preferred, leader, _ in preferred_and_leaders(observer, topic).values()),
        "every partition led by its preferred replica",
    )
    produce(producer, topic, range(1500, 2000), failures)
    assert producer.flush(60) == 0 and not failures, failures
    seen = read_everything(nodes, topic, 2000)
    assert sum(map(len, seen.values())) == 2000, "nothing acknowledged was lost, nothing was written twice"
    for key, values in seen.items():
        assert values == sorted(values) and len(set(values)) == len(values), f"{key}: out of order or duplicated"
    # Unclean elections do not exist here.
    unclean = admin.elect_leaders(ElectionType.UNCLEAN, [TopicPartition(topic, 0)])
    try:
        outcome = unclean.result(timeout=30)
        assert all(error is not None for error in outcome.values()), outcome
    except Exception as error:  # the whole request refused
        assert "unclean" in str(error).lower() or "INVALID_REQUEST" in str(error), error


def test_the_controller_rebalances_leaders_by_itself(make_broker):
    """auto.leader.rebalance.enable (default true): once a restarted broker is back in sync, the active
    controller gives it back the partitions it is preferred for."""
    nodes = start_three_nodes(make_broker, f"replica.lag.time.max.ms={LAG_MS}", "leader.imbalance.check.interval.seconds=1")
    wait_for(lambda: agreed(nodes, [1, 2, 3]), "one leader and three live brokers on every node", timeout=30)
    topic = unique("rebalanced")
    create_replicated(nodes[0], topic, 3, 3, {})
    wait_for(lambda: all(len(isr) == 3 for _, _, isr in preferred_and_leaders(nodes[0], topic).values()), "three in-sync partitions")
    _, observer = restart_a_preferred_leader(nodes, topic)
    wait_for(
        lambda: all(preferred == leader for preferred, leader, _ in preferred_and_leaders(observer, topic).values()),
        "the controller to move leadership back to the preferred replicas",
        timeout=20,
    )


def test_a_transaction_spans_partitions_led_by_every_broker_and_survives_a_leader_kill(make_broker):
    """The coordinator (node 1) writes its own partitions' markers and sends WriteTxnMarkers to the
    leaders of the others; a leader killed mid-transaction hands the open transaction to its successor,
    whose marker then commits it. read_committed consumers see exactly the committed records."""
    from confluent_kafka import TopicPartition

    nodes = start_replicated_nodes(make_broker)
    topic = unique("txn-spread")
    create_replicated(nodes[0], topic, 3, 3, {"min.insync.replicas": "2"})
    placed = wait_for(
        lambda: (p := partitions(nodes[0], topic)) and len(p) == 3 and all(len(isr) == 3 for _, _, isr in p.values()) and p,
        "three partitions with three in-sync replicas",
    )
    assert sorted(leader for leader, _, _ in placed.values()) == [1, 2, 3], placed

    producer = cf_producer(nodes[0], {"bootstrap.servers": bootstrap(nodes), "transactional.id": unique("spread"),
                                      "transaction.timeout.ms": 60_000})
    producer.init_transactions(30)

    def transaction(tag: str, commit: bool) -> None:
        producer.begin_transaction()
        for p in range(3):
            for i in range(5):
                producer.produce(topic, key=f"{tag}-{p}".encode(), value=f"{tag}-{i}".encode(), partition=p)
        producer.flush(30)
        (producer.commit_transaction if commit else producer.abort_transaction)(60)

    transaction("a", commit=True)
    transaction("b", commit=False)

    # A transaction open on every partition when the leader of one (not the coordinator) is killed.
    victim = next(leader for leader, _, _ in placed.values() if leader != 1)
    producer.begin_transaction()
    for p in range(3):
        producer.produce(topic, key=f"c-{p}".encode(), value=b"c", partition=p)
    producer.flush(30)
    nodes[victim - 1].kill9()
    survivors = [n for i, n in enumerate(nodes) if i + 1 != victim]
    wait_for(
        lambda: all(leader not in (victim, -1) for leader, _, _ in partitions(survivors[0], topic).values()),
        "the killed broker's partition to move",
        timeout=30,
    )
    producer.commit_transaction(60)

    def read(isolation: str) -> dict[int, list[bytes]]:
        consumer = cf_consumer(survivors[0], conf={"bootstrap.servers": bootstrap(survivors), "isolation.level": isolation})
        consumer.assign([TopicPartition(topic, p, 0) for p in range(3)])
        seen: dict[int, list[bytes]] = defaultdict(list)
        try:
            wanted = 6 if isolation == "read_committed" else 11

            def more():
                for msg in consumer.consume(num_messages=100, timeout=0.5):
                    if msg.error() is None:
                        seen[msg.partition()].append(msg.value())
                return all(len(seen[p]) >= wanted for p in range(3))

            wait_for(more, f"{wanted} {isolation} records on every partition", timeout=30, every=0)
            time.sleep(0.5)
            more()
        finally:
            consumer.close()
        return seen

    committed = read("read_committed")
    for p in range(3):
        assert committed[p] == [f"a-{i}".encode() for i in range(5)] + [b"c"], (p, committed[p])
    uncommitted = read("read_uncommitted")
    for p in range(3):
        assert sorted(uncommitted[p]) == sorted([f"a-{i}".encode() for i in range(5)] + [f"b-{i}".encode() for i in range(5)] + [b"c"])


def test_a_hanging_transaction_on_a_broker_that_is_not_the_coordinator_is_aborted(make_broker):
    """A transactional batch the coordinator never heard of (a client writing after EndTxn, a retry
    from before it) on a partition led by another broker would hold that partition's last stable
    offset forever. Its leader asks the coordinator about transactions open longer than
    transaction.max.timeout.ms and aborts those the coordinator does not have ongoing there."""
    from confluent_kafka import TopicPartition

    nodes = start_three_nodes(
        make_broker,
        f"replica.lag.time.max.ms={LAG_MS}",
        "transaction.max.timeout.ms=2000",
        "transaction.abort.timed.out.transaction.cleanup.interval.ms=300",
    )
    wait_for(lambda: agreed(nodes, [1, 2, 3]), "one leader and three live brokers on every node", timeout=30)
    topic = unique("hanging")
    create_replicated(nodes[0], topic, 3, 2, {})
    placed = wait_for(lambda: (p := partitions(nodes[0], topic)) and all(len(isr) == 2 for _, _, isr in p.values()) and p, "in sync")
    index, (leader, _, _) = next((p, s) for p, s in placed.items() if s[0] != 1)  # node 1 coordinates

    # A transactional write under a producer id no coordinator knows, straight to the leader.
    batch = wire.record_batch([(b"k", b"ghost", ())], producer=(987_654, 0, 0), transactional=True)
    with wire.connect(nodes[leader - 1].port) as sock:
        sock.sendall(wire.produce_v3(1, topic, index, batch, acks=-1, transactional_id="ghost-writer"))
        _, body = wire.read_response(sock)
    assert wire.parse_produce_v3(body)[0][2] == 0, "a broker that is not the coordinator takes the transactional batch"
    unstable = f'sluice_unstable_offsets{{partition="{index}",topic="{topic}"}}'
    wait_for(lambda: metric(nodes[leader - 1], unstable) > 0, "the open transaction to hold the last stable offset back")

    # transaction.max.timeout.ms (2 s) plus six checks later, the leader asks node 1 and aborts it.
    wait_for(lambda: metric(nodes[leader - 1], unstable) == 0, "the hanging transaction to be aborted", timeout=30)
    consumer = cf_consumer(nodes[0], conf={"bootstrap.servers": bootstrap(nodes), "isolation.level": "read_committed"})
    try:
        consumer.assign([TopicPartition(topic, index, 0)])
        time.sleep(2)
        assert not [m for m in consumer.consume(num_messages=10, timeout=1) if m.error() is None], "the aborted record stays unread"
    finally:
        consumer.close()


def test_five_brokers_lose_two_at_once_including_the_controller(make_broker):
    """Five voters, RF 3: SIGKILL the active controller and another broker together while an
    idempotent acks=all producer writes. The three left are a majority: they elect a controller,
    fence both, re-lead every partition from its ISR; partitions that lost two replicas refuse acks=all
    below min.insync.replicas=2 until one returns. Both come back and catch up; nothing acknowledged
    is lost or duplicated."""
    nodes = start_three_nodes(make_broker, f"replica.lag.time.max.ms={LAG_MS}", count=5)
    ids = [1, 2, 3, 4, 5]
    wait_for(lambda: agreed(nodes, ids), "one leader and five live brokers on every node", timeout=45)
    topic = unique("five")
    create_replicated(nodes[0], topic, 5, 3, {"min.insync.replicas": "2"})
    wait_for(
        lambda: (p := partitions(nodes[0], topic)) and len(p) == 5 and all(len(isr) == 3 for _, _, isr in p.values()) and p,
        "five partitions with three in-sync replicas",
    )
    controller = agreed(nodes, ids)[0]
    other = next(leader for leader, _, _ in partitions(nodes[0], topic).values() if leader != controller)
    killed = sorted({controller, other})
    survivors = [n for i, n in enumerate(nodes) if i + 1 not in killed]

    producer = cf_producer(nodes[0], {"bootstrap.servers": bootstrap(nodes), "enable.idempotence": True, "acks": "all",
                                      "message.timeout.ms": 120_000})
    failures: list = []
    produce(producer, topic, range(0, 500), failures)
    assert producer.flush(30) == 0 and not failures, failures
    for victim in killed:
        nodes[victim - 1].kill9()
    produce(producer, topic, range(500, 1000), failures)
    live = [i for i in ids if i not in killed]
    wait_for(lambda: agreed(survivors, live), "the three survivors to agree on a controller and fence both", timeout=30)
    moved = wait_for(
        lambda: (p := partitions(survivors[0], topic)) and all(l in live for l, _, _ in p.values()) and p,
        "every partition led by a survivor",
        timeout=30,
    )
    assert all(set(isr) <= set(live) for _, _, isr in moved.values()), moved

    for victim in killed:
        nodes[victim - 1].start()
    wait_for(
        lambda: all(len(isr) == 3 for _, _, isr in partitions(survivors[0], topic).values()),
        "every ISR whole again",
        timeout=60,
    )
    assert producer.flush(60) == 0 and not failures, failures
    seen = read_everything(survivors, topic, 1000)
    assert sum(map(len, seen.values())) == 1000, "nothing acknowledged was lost, nothing was written twice"
    for key, values in seen.items():
        assert values == sorted(values) and len(set(values)) == len(values), f"{key}: out of order or duplicated"


def replicas_of(node, topic: str) -> dict[int, tuple[int, list[int], list[int]]]:
    """partition -> (leader, replicas in order, isr sorted), as `node` answers Metadata."""
    md = cf_admin(node).list_topics(topic, timeout=10)
    return {p: (pm.leader, list(pm.replicas), sorted(pm.isrs)) for p, pm in md.topics[topic].partitions.items()}


def test_a_reassignment_moves_a_partition_while_it_is_written(make_broker):
    """kafka-reassign-partitions.sh's job (KIP-455): a partition held by one broker moves to two
    others while an idempotent acks=all producer writes to it. The new replicas copy the log, join
    the ISR, the partition is then theirs (led by the first target replica) and the old copy's
    directory is removed; nothing acknowledged is lost or duplicated. A move to a broker that is down
    stays in progress (listed with the broker being added) until it is cancelled; what cannot work
    is refused with Kafka's error codes."""
    from confluent_kafka.admin import NewTopic

    nodes = start_replicated_nodes(make_broker)
    topic = unique("moved")
    admin = cf_admin(nodes[0], {"bootstrap.servers": bootstrap(nodes)})
    admin.create_topics([NewTopic(topic, num_partitions=2, replica_assignment=[[1], [1]])], request_timeout=15)[topic].result(timeout=20)
    producer = cf_producer(nodes[0], {"bootstrap.servers": bootstrap(nodes), "enable.idempotence": True, "acks": "all"})
    failures: list = []
    produce(producer, topic, range(0, 3000), failures)
    assert producer.flush(30) == 0 and not failures, failures

    # Partition 0 from broker 1 to brokers 2 and 3, with the producer writing all along.
    with writing(producer, topic, 3000, failures) as written:
        out = sluice_cli(nodes[1], "topic", "reassign", topic, "--partition", "0", "--replicas", "2,3", "--wait", "--json", timeout=120)
        result = json.loads(out.stdout)
        assert result["results"] == [{"topic": topic, "partition": 0, "ok": True, "error": None}], result
        assert result["completed_in_ms"] is not None, result
    assert producer.flush(30) == 0 and not failures, failures
    wait_for(lambda: replicas_of(nodes[0], topic)[0] == (2, [2, 3], [2, 3]), "partition 0 on brokers 2 and 3, led by 2")
    assert replicas_of(nodes[0], topic)[1] == (1, [1], [1]), "partition 1 did not move"
    wait_for(lambda: not nodes[0].partition_dir(topic, 0).exists(), "broker 1 to remove its copy of partition 0")
    assert nodes[1].partition_dir(topic, 0).exists() and nodes[2].partition_dir(topic, 0).exists()
    assert "No partition is being reassigned" in sluice_cli(nodes[0], "topic", "reassignments").stdout
    assert_read_back_exactly(nodes, topic, written[0])

    # A move to a broker that is down waits for it; it is listed, then cancelled.
    nodes[2].kill9()
    wait_for(lambda: agreed(nodes[:2], [1, 2]), "broker 3 fenced")
    sluice_cli(nodes[0], "topic", "reassign", topic, "--partition", "1", "--replicas", "1,3")
    listed = json.loads(sluice_cli(nodes[0], "topic", "reassignments", topic, "--json").stdout)["reassignments"]
    assert listed == [{"topic": topic, "partition": 1, "replicas": [1, 3], "adding": [3], "removing": []}], listed
    time.sleep(1)
    assert replicas_of(nodes[0], topic)[1] == (1, [1, 3], [1]), "still moving: broker 3 cannot copy"
    described = json.loads(sluice_cli(nodes[0], "topic", "describe", topic, "--json").stdout)["partitions"]
    assert [(p["partition"], p["adding"], p["removing"]) for p in described] == [(0, None, None), (1, [3], [])], described
    assert "adding 3" in sluice_cli(nodes[0], "topic", "describe", topic).stdout
    assert metric(nodes[0], "sluice_reassigning_partitions") == 1
    sluice_cli(nodes[0], "topic", "reassign", topic, "--partition", "1", "--cancel")
    assert replicas_of(nodes[0], topic)[1] == (1, [1], [1])
    assert "No partition is being reassigned" in sluice_cli(nodes[0], "topic", "reassignments").stdout

    # Refused: an unknown broker, a broker twice, a cancel with nothing to cancel, no such partition.
    for args, code in [
        (["--partition", "1", "--replicas", "9"], "INVALID_REPLICA_ASSIGNMENT"),
        (["--partition", "1", "--replicas", "2,2"], "INVALID_REPLICA_ASSIGNMENT"),
        (["--partition", "1", "--replicas", ",".join(str(b) for b in range(1, 18))], "INVALID_REPLICA_ASSIGNMENT"),
        (["--partition", "1", "--cancel"], "NO_REASSIGNMENT_IN_PROGRESS"),
        (["--partition", "7", "--replicas", "1"], "UNKNOWN_TOPIC_OR_PARTITION"),
    ]:
        refused = sluice_cli(nodes[0], "topic", "reassign", topic, *args, check=False)
        assert refused.returncode == 1 and code in refused.stdout, (args, refused.stdout, refused.stderr)
    assert replicas_of(nodes[0], topic)[1] == (1, [1], [1]), "nothing changed"


def test_a_rolling_restart_hands_leadership_over_before_each_broker_stops(make_broker):
    """A rolling restart with SIGTERM under an idempotent acks=all producer (RF 3,
    min.insync.replicas 2): each stopping broker first has the quorum move the partitions it leads
    to other in-sync replicas (Kafka's controlled shutdown) and only then stops serving; the
    producer never fails, nothing is lost or duplicated, and each broker is back in every ISR
    before the next one stops."""
    nodes = start_three_nodes(make_broker, f"replica.lag.time.max.ms={LAG_MS}", "auto.leader.rebalance.enable=false")
    wait_for(lambda: agreed(nodes, [1, 2, 3]), "one leader and three live brokers on every node", timeout=30)
    topic = unique("rolling")
    create_replicated(nodes[0], topic, 6, 3, {"min.insync.replicas": "2"})
    wait_for(lambda: all(isr == [1, 2, 3] for _, _, isr in partitions(nodes[0], topic).values()), "six in-sync partitions")
    producer = cf_producer(nodes[0], {"bootstrap.servers": bootstrap(nodes), "enable.idempotence": True, "acks": "all"})
    failures: list = []
    with writing(producer, topic, 0, failures) as written:
        for i, node in enumerate(nodes):
            node_id = i + 1
            other = nodes[(i + 1) % 3]
            # The topic's partitions it leads, and the internal topics' partitions it leads.
            internal = (topic, "__sluice_coordinator", "__sluice_plugins")
            led = sum(1 for t in internal for leader, _, _ in partitions(other, t).values() if leader == node_id)
            node.stop()
            moved = re.findall(r"controlled shutdown: the partitions this broker led moved.*partitions=(\d+)", node.log_tail(400))
            assert moved and int(moved[-1]) == led, (led, moved, node.log_tail(60))
            wait_for(
                lambda: all(leader not in (node_id, -1) for leader, _, _ in partitions(other, topic).values()),
                f"broker {node_id}'s partitions led by others",
                timeout=5,
            )
            node.start()
            wait_for(
                lambda: all(isr == [1, 2, 3] for _, _, isr in partitions(other, topic).values()),
                f"broker {node_id} back in every ISR",
                timeout=40,
            )
    assert producer.flush(60) == 0 and not failures, failures
    assert_read_back_exactly(nodes, topic, written[0])
