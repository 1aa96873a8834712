"""The controller quorum across real `sluice server` processes: a single node is a one-voter quorum;
three nodes with `--controller-voters` elect a leader, register their brokers, fence a SIGKILLed one,
elect again when the leader dies, and take the dead node back when it restarts from its files.

Topics live in the quorum: partitions are placed across the brokers, clients find each partition's
leader through Metadata from any broker, and a partition whose only broker is down is reported
leaderless until it returns. A killed broker is fenced as soon as it misses a heartbeat (its listener
refuses connections); a paused one keeps its session. Replication itself: test_replication.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import Counter, defaultdict

import kafka_wire as wire
from harness import (
    cf_admin,
    cf_consumer,
    cf_producer,
    create_topic,
    free_ports,
    http_request,
    require_binary,
    sluice_cli,
    unique,
    wait_for,
)

SESSION_MS = 3000
HEARTBEAT_MS = 300


def cluster_view(node):
    """GET /v1/cluster as JSON, or None while the node is down or starting."""
    if not node.is_running():
        return None
    try:
        status, _, body = http_request("GET", f"{node.admin_url}/v1/cluster", timeout=2)
    except OSError:
        return None
    return json.loads(body) if status == 200 else None


def brokers_by_state(view, state: str) -> list[int]:
    return sorted(b["id"] for b in view["brokers"] if b["state"] == state)


def metric(node, name: str) -> float:
    _, _, body = http_request("GET", f"{node.admin_url}/metrics", timeout=5)
    for line in body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def test_a_single_node_is_a_one_voter_quorum(broker):
    view = wait_for(
        lambda: (v := cluster_view(broker)) and v["controller"]["role"] == "leader" and v["brokers"] and v,
        "the single node to lead its quorum and register its broker",
        timeout=20,
    )
    assert view["controller"]["leader_id"] == 1
    assert [v["id"] for v in view["controller"]["voters"]] == [1]
    [me] = view["brokers"]
    assert (me["id"], me["port"], me["state"]) == (1, broker.port, "live")
    assert metric(broker, "sluice_controller_is_leader") == 1
    assert metric(broker, "sluice_registered_brokers") == 1

    out = sluice_cli(broker, "cluster", "info").stdout
    assert "Quorum:      leader 1" in out, out
    as_json = json.loads(sluice_cli(broker, "cluster", "info", "--json").stdout)
    assert as_json["quorum"]["controller"]["role"] == "leader"

    # The quorum's files survive a crash: the same broker epoch is not reused after a restart.
    epoch = me["epoch"]
    broker.restart(kill=True)
    view = wait_for(
        lambda: (v := cluster_view(broker)) and v["brokers"] and v["brokers"][0]["epoch"] > epoch and v,
        "the restarted broker to register with a new epoch",
        timeout=20,
    )
    assert view["brokers"][0]["state"] == "live"


def start_three_nodes(make_broker, *settings: str, session_ms: int = SESSION_MS, count: int = 3):
    """`count` (three) nodes of one quorum (each a voter), with `settings` (KEY=VALUE) on every node."""
    voters = ",".join(f"{i + 1}@127.0.0.1:{port}" for i, port in enumerate(free_ports(count)))
    nodes = [
        make_broker(
            f"broker.session.timeout.ms={session_ms}",
            f"broker.heartbeat.interval.ms={HEARTBEAT_MS}",
            *settings,
            extra_args=["--node-id", str(i + 1), "--controller-voters", voters],
            start=False,
        )
        for i in range(count)
    ]
    for node in nodes:
        node.start(wait=False)
    for node in nodes:
        node.wait_ready()
    return nodes


def agreed(members, live):
    """(leader, views) once every node in `members` names the same leader and `live` as its live
    brokers, else None."""
    views = [cluster_view(n) for n in members]
    if not all(views):
        return None
    leaders = {v["controller"]["leader_id"] for v in views}
    if len(leaders) != 1 or None in leaders:
        return None
    if any(brokers_by_state(v, "live") != live for v in views):
        return None
    return leaders.pop(), views


def test_three_nodes_elect_fence_and_take_a_node_back(make_broker):
    nodes = start_three_nodes(make_broker)
    leader, views = wait_for(lambda: agreed(nodes, [1, 2, 3]), "one leader and three live brokers on every node", timeout=30)
    for node, view in zip(nodes, views):
        mine = next(b for b in view["brokers"] if b["id"] == view["node_id"])
        assert mine["port"] == node.port, "each broker registers the address its clients use"
    wait_for(lambda: sum(metric(n, "sluice_controller_is_leader") for n in nodes) == 1, "exactly one node reporting itself leader")

    # SIGKILL the leader: the other two elect a new one, which fences the dead node's broker.
    dead = nodes[leader - 1]
    epoch_before = next(b["epoch"] for b in views[0]["brokers"] if b["id"] == leader)
    dead.kill9()
    rest = [n for n in nodes if n is not dead]
    survivors = sorted(i + 1 for i, n in enumerate(nodes) if n is not dead)
    new_leader, views = wait_for(
        lambda: agreed(rest, survivors), "a new leader and the dead node's broker fenced", timeout=30
    )
    assert new_leader != leader
    assert all(brokers_by_state(v, "fenced") == [leader] for v in views)
    wait_for(lambda: metric(nodes[new_leader - 1], "sluice_fenced_brokers") == 1, "the new leader's fenced_brokers metric")

    # The dead node restarts from its files, rejoins, and its broker registers again (a new epoch).
    # Its own view starts from its files (the old epoch, live): wait for every node to show the new one.
    dead.start()

    def rejoined():
        found = agreed(nodes, [1, 2, 3])
        if not found:
            return None
        epochs = [next(b["epoch"] for b in v["brokers"] if b["id"] == leader) for v in found[1]]
        return found if all(e > epoch_before for e in epochs) else None

    wait_for(rejoined, "the restarted broker live with a new epoch on every node", timeout=30)


def test_a_dead_broker_is_fenced_at_once_and_a_paused_one_keeps_its_session(make_broker):
    """A broker whose process is gone (its listener refuses connections) is fenced as soon as it misses
    a heartbeat, not after `broker.session.timeout.ms`, also when it was the active controller; one
    that is only paused (SIGSTOP: the kernel still accepts its connections) keeps its whole session."""
    session_s = 30
    nodes = start_three_nodes(make_broker, session_ms=session_s * 1000)
    leader, _ = wait_for(lambda: agreed(nodes, [1, 2, 3]), "one leader and three live brokers on every node", timeout=30)

    other = next(i + 1 for i in range(3) if i + 1 != leader)
    os.kill(nodes[other - 1].proc.pid, signal.SIGSTOP)
    try:
        time.sleep(4 * HEARTBEAT_MS / 1000 + 2)
        view = cluster_view(nodes[leader - 1])
        assert brokers_by_state(view, "fenced") == [], f"a paused broker keeps its session: {view}"
    finally:
        os.kill(nodes[other - 1].proc.pid, signal.SIGCONT)

    # Killed: fenced in about a heartbeat interval (the bound is a third of the session, to stay
    # clear of a slow machine while still failing if only the session fenced it).
    killed_at = time.monotonic()
    nodes[other - 1].kill9()
    rest = [n for i, n in enumerate(nodes) if i + 1 != other]
    wait_for(lambda: agreed(rest, sorted(i + 1 for i in range(3) if i + 1 != other)), "the killed broker fenced", timeout=session_s / 3)
    fenced_after = time.monotonic() - killed_at

    # Back, and then the active controller killed: the new one fences it well inside the session too.
    nodes[other - 1].start()
    leader, _ = wait_for(lambda: agreed(nodes, [1, 2, 3]), "the restarted broker live again", timeout=30)
    killed_at = time.monotonic()
    nodes[leader - 1].kill9()
    rest = [n for i, n in enumerate(nodes) if i + 1 != leader]
    wait_for(lambda: agreed(rest, sorted(i + 1 for i in range(3) if i + 1 != leader)), "the dead controller's broker fenced", timeout=session_s / 2)
    print(f"fenced {fenced_after:.1f} s after the kill; the dead controller's broker {time.monotonic() - killed_at:.1f} s after")


def leaders(node, topic: str) -> dict[int, int]:
    """partition -> leader id (-1 while none) in the Metadata that `node` serves."""
    md = cf_admin(node).list_topics(topic, timeout=10)
    return {p: pm.leader for p, pm in md.topics[topic].partitions.items()}


def test_partitions_spread_over_three_brokers_and_clients_follow(make_broker):
    nodes = start_three_nodes(make_broker)
    wait_for(lambda: agreed(nodes, [1, 2, 3]), "one leader and three live brokers on every node", timeout=30)
    topic = unique("spread")
    create_topic(nodes[0], topic, partitions=6)

    # Any broker describes the whole cluster: three brokers, each leading two of the six partitions.
    for node in nodes:
        md = wait_for(
            lambda: (m := cf_admin(node).list_topics(topic, timeout=10)) and len(m.topics[topic].partitions) == 6 and m,
            f"node {node.port} to know the topic",
        )
        assert sorted(md.brokers) == [1, 2, 3]
        placed = {p: (pm.leader, pm.replicas, pm.isrs) for p, pm in md.topics[topic].partitions.items()}
        assert Counter(leader for leader, _, _ in placed.values()) == {1: 2, 2: 2, 3: 2}, placed
        assert all(replicas == [leader] == isr for leader, replicas, isr in placed.values()), placed

    # Straight to a broker that does not lead the partition, without a client's routing:
    # NOT_LEADER_OR_FOLLOWER (6); group requests to a node that does not coordinate groups:
    # NOT_COORDINATOR (16). Both send real clients to refresh their metadata or coordinator.
    elsewhere = next(p for p, leader in leaders(nodes[0], topic).items() if leader != 2)
    with wire.connect(nodes[1].port) as sock:
        sock.sendall(wire.produce_v3(1, topic, elsewhere, wire.record_batch([(None, b"x", ())])))
        [(_, _, code, _)] = wire.parse_produce_v3(wire.read_response(sock)[1])
        assert code == 6
        sock.sendall(wire.frame(12, 0, 2, wire.string("g") + wire.i32(1) + wire.string("m")))
        assert wire.read_response(sock)[1][:2] == wire.i16(16)

    # An idempotent producer that knows only node 3 writes to every partition's leader; its
    # producer id comes from the quorum, so every broker accepts it.
    producer = cf_producer(nodes[2], {"enable.idempotence": True, "acks": "all"})
    failures = []
    for i in range(600):
        producer.produce(topic, key=f"k{i % 30}".encode(), value=str(i).encode(), on_delivery=lambda e, m: e and failures.append(e))
    assert producer.flush(30) == 0 and not failures, failures

    # A group consumer that knows only node 2 finds the coordinator (node 1) and reads all of it,
    # each key's values in order, nothing twice.
    group = unique("g")
    consumer = cf_consumer(nodes[1], group=group)
    consumer.subscribe([topic])
    seen = defaultdict(list)
    per_partition = Counter()
    try:
        def read_all():
            for msg in consumer.consume(num_messages=500, timeout=0.5):
                if msg.error() is None:
                    seen[msg.key()].append(int(msg.value()))
                    per_partition[msg.partition()] += 1
            return sum(map(len, seen.values())) >= 600

        wait_for(read_all, "the group consumer to read all 600 records", timeout=60, every=0)
        consumer.commit(asynchronous=False)
    finally:
        consumer.close()
    assert sum(map(len, seen.values())) == 600
    for key, values in seen.items():
        assert values == sorted(values), f"{key}: out of order"
    # Every node names node 1 (the lowest voter) as the group's coordinator.
    admin = cf_admin(nodes[1])  # held: a collected AdminClient never completes its futures
    described = admin.describe_consumer_groups([group], request_timeout=10)[group].result(timeout=20)
    assert described.coordinator.id == 1

    # Each node holds only its own partitions on disk.
    for i, node in enumerate(nodes):
        held = sorted(int(d.name.rsplit("-", 1)[1]) for d in node.data_dir.glob(f"{topic}-*"))
        led = sorted(p for p, leader in leaders(nodes[0], topic).items() if leader == i + 1)
        assert held == led, (i + 1, held, led)

    # SIGKILL node 3: its two partitions have no other replica, so they go leaderless (the
    # clients hear LEADER_NOT_AVAILABLE) until it returns with its data.
    mine = sorted(p for p, leader in leaders(nodes[0], topic).items() if leader == 3)
    nodes[2].kill9()
    wait_for(
        lambda: sorted(p for p, leader in leaders(nodes[0], topic).items() if leader == -1) == mine,
        "node 3's partitions to be reported leaderless",
        timeout=30,
    )
    assert metric(nodes[0], "sluice_leaderless_partitions") == 2
    # Node 3 is fenced but still holds replicas: Metadata keeps listing it (librdkafka drops a broker
    # that leaves the list, which can undo a partition's move off it in the same response).
    admin = cf_admin(nodes[0])
    assert sorted(admin.list_topics(topic, timeout=10).brokers) == [1, 2, 3]
    info = sluice_cli(nodes[0], "cluster", "info").stdout
    # The internal topics (the coordinators' and the plugin log, one partition of three replicas
    # each) count too.
    assert "8 in 3 topics; 2 leaderless" in info, info
    described = json.loads(sluice_cli(nodes[0], "topic", "describe", topic, "--json").stdout)
    offline = sorted(p["partition"] for p in described["partitions"] if p["leader"] == -1)
    assert offline == mine and all(p["high_watermark"] is None for p in described["partitions"] if p["leader"] == -1)
    nodes[2].start()
    wait_for(lambda: all(l == 3 for p, l in leaders(nodes[0], topic).items() if p in mine), "node 3 to lead its partitions again", timeout=30)
    assert metric(nodes[0], "sluice_leaderless_partitions") == 0
    consumer = cf_consumer(nodes[0])
    try:
        from confluent_kafka import TopicPartition

        consumer.assign([TopicPartition(topic, p, 0) for p in mine])
        expected = sum(per_partition[p] for p in mine)
        back = []
        wait_for(
            lambda: back.extend(m for m in consumer.consume(200, 0.5) if m.error() is None) or len(back) >= expected,
            "node 3's records after its restart",
            every=0,
        )
    finally:
        consumer.close()
    assert expected > 0 and len(back) == expected

    # Deleting through node 2 removes the topic from every node and its files from every disk.
    admin.delete_topics([topic], request_timeout=15)[topic].result(timeout=20)
    for node in nodes:
        wait_for(lambda: not list(node.data_dir.glob(f"{topic}-*")), f"node {node.port} to remove the topic's files", timeout=20)
        status, _, _ = http_request("GET", f"{node.admin_url}/v1/topics/{topic}", timeout=5)
        assert status == 404


def test_topics_from_before_the_quorum_are_handed_to_it(broker):
    """Topics the quorum never had keep their ids and data: those of a data directory from before
    topics lived in the quorum, and those of a node whose controller directory was wiped (its new
    quorum's log soon passes the topics' creation indices, which must not read as deletions)."""
    topic = unique("legacy")
    create_topic(broker, topic, partitions=2)
    producer = cf_producer(broker)
    for i in range(10):
        producer.produce(topic, value=str(i).encode(), partition=i % 2)
    assert producer.flush(20) == 0
    topic_id = json.loads(http_request("GET", f"{broker.admin_url}/v1/topics/{topic}", timeout=5)[2])["id"]
    definition = broker.data_dir / "__cluster" / "topics" / f"{topic}.json"

    def read_all():
        consumer = cf_consumer(broker)
        try:
            from confluent_kafka import TopicPartition

            consumer.assign([TopicPartition(topic, p, 0) for p in range(2)])
            got = []
            wait_for(lambda: got.extend(m for m in consumer.consume(20, 0.5) if m.error() is None) or len(got) >= 10, "the records", every=0)
        finally:
            consumer.close()
        return sorted(int(m.value()) for m in got)

    for case in ("controller directory wiped", "definition from an earlier version"):
        broker.stop()
        stored = json.loads(definition.read_text())
        quorum = stored["quorum"]
        if case == "definition from an earlier version":
            assert stored.pop("created_at") and stored.pop("hosted") == [0, 1] and stored.pop("quorum")
            definition.write_text(json.dumps(stored))
        subprocess.run(["rm", "-rf", str(broker.data_dir / "__controller")], check=True)
        broker.start()
        wait_for(
            lambda: json.loads(definition.read_text()).get("quorum") not in (None, quorum),
            f"{case}: the topic handed to the new quorum",
            timeout=20,
        )
        # Longer than it takes the new quorum's log to pass the topic's old creation index.
        for _ in range(5):
            create_topic(broker, unique("filler"))
        assert json.loads(http_request("GET", f"{broker.admin_url}/v1/topics/{topic}", timeout=5)[2])["id"] == topic_id, case
        assert read_all() == list(range(10)), case


def test_bad_quorum_settings_are_refused_at_start(tmp_path):
    def server(*args):
        return subprocess.run(
            [str(require_binary()), "server", "--data-dir", str(tmp_path / "d"), "--listen", "127.0.0.1:0",
             "--admin-listen", "127.0.0.1:0", *args],
            capture_output=True, text=True, timeout=30,
        )

    bad = server("--controller-voters", "1@localhost")
    assert bad.returncode == 2 and "controller.quorum.voters" in bad.stderr and "no :PORT" in bad.stderr, bad.stderr
    port = free_ports(1)[0]
    outside = server("--node-id", "4", "--controller-voters", f"1@127.0.0.1:{port}")
    assert outside.returncode != 0 and "not among the controller voters" in outside.stderr, outside.stderr
