"""Plugins in a cluster (issue 14). A transform deployed on any broker is written to the cluster's
plugin log (`__sluice_plugins`, replicated): every broker runs the runners of the input partitions
it leads, and a runner moves with its partition's leadership. Runners keep their transactions and
input positions in the cluster's replicated coordinators (the leader of `__sluice_coordinator-0`,
reached over the network from any broker) and write each output partition through its leader with
acks=all. So a transform keeps exactly-once through a SIGKILL of the coordinator's broker and of
the broker it was deployed on, and keeps running while that broker is down: whoever runs a
partition next fences its open transaction and starts from the position it committed."""

from __future__ import annotations

import json
import time

import pytest

from harness import cf_producer, http_request, sluice_cli, unique, wait_for
from test_coordinators import in_sync_coordinator
from test_replication import assert_read_back_exactly, bootstrap, create_replicated, partitions, read_everything, start_replicated_nodes, writing
from test_transforms import deploy, guests, status  # noqa: F401 - `guests` is a fixture


ABORTED = 10**9


def node_of(nodes, node_id: int):
    return nodes[node_id - 1]


def transform_on(node, name: str) -> dict | None:
    """The transform's status as `node` serves it; None if `node` is down (or not answering) or
    answers 404 (it does not have the transform)."""
    if not node.is_running():
        return None
    try:
        code, _, body = http_request("GET", f"{node.admin_url}/v1/transforms/{name}", timeout=10)
    except OSError:
        return None
    if code == 404:
        return None
    assert code == 200, (code, body)
    return json.loads(body)


def runners(nodes, name: str) -> dict[int, list[tuple[int, dict]]]:
    """partition -> [(broker id, its status)] of the runners on the live brokers."""
    found: dict[int, list[tuple[int, dict]]] = {}
    for node in nodes:
        st = transform_on(node, name)
        for p in (st or {}).get("partitions", []):
            found.setdefault(p["partition"], []).append((st["broker_id"], p))
    return found


def on_the_leaders(nodes, name: str, topic: str, count: int, without: int | None = None) -> bool:
    """Every input partition has exactly one runner, on its leader (a live broker other than
    `without`), running."""
    live = [n for n in nodes if n.is_running()]
    leaders = {p: leader for p, (leader, _, _) in partitions(live[0], topic).items()}
    found = runners(nodes, name)
    return sorted(found) == list(range(count)) and all(
        len(found[p]) == 1 and found[p][0][0] == leaders[p] != without and found[p][0][1]["state"] == "RUNNING" for p in found
    )


def caught_up(nodes, name: str, count: int) -> bool:
    found = runners(nodes, name)
    return sorted(found) == list(range(count)) and all(
        len(runs) == 1 and runs[0][1]["lag"] == 0 and runs[0][1]["state"] == "RUNNING" for runs in found.values()
    )


@pytest.mark.timeout(300)
def test_a_transform_follows_leadership_and_keeps_exactly_once_through_kills_of_the_coordinator_and_of_its_broker(make_broker, guests):  # noqa: F811
    nodes = start_replicated_nodes(make_broker)
    coordinator = wait_for(lambda: in_sync_coordinator(nodes, [1, 2, 3]), "the coordinators' partition on three in-sync replicas", timeout=30)
    # Deployed on a broker that is not the coordinator: killing the coordinator does not stop the
    # deploying broker, and killing the deploying broker does not stop the coordinator.
    deployer_id = next(i for i in (1, 2, 3) if i != coordinator)
    deployer = node_of(nodes, deployer_id)
    src, dst = unique("cl-in"), unique("cl-out")
    for topic in (src, dst):
        create_replicated(nodes[0], topic, 3, 3, {"min.insync.replicas": "2"})
        wait_for(lambda t=topic: all(len(isr) == 3 for _, _, isr in partitions(nodes[0], t).values()), f"{topic} fully in sync", timeout=30)

    producer = cf_producer(nodes[0], {"bootstrap.servers": bootstrap(nodes), "enable.idempotence": True, "acks": "all"})
    failures: list = []
    for i in range(600):
        producer.produce(src, key=f"k{i % 20}".encode(), value=str(i).encode(), on_delivery=lambda e, m: e and failures.append(e))
    assert producer.flush(30) == 0 and not failures, failures
    # An aborted transaction on every input partition, between committed records: the runners that
    # read a partition from its leader over the network drop it as one that reads its own log does.
    txn = cf_producer(nodes[0], {"bootstrap.servers": bootstrap(nodes), "transactional.id": unique("cl-aborter")})
    txn.init_transactions(30)
    txn.begin_transaction()
    for i in range(60):
        txn.produce(src, key=f"k{i % 20}".encode(), value=str(ABORTED + i).encode())
    txn.flush(30)
    txn.abort_transaction(30)
    for i in range(600, 900):
        producer.produce(src, key=f"k{i % 20}".encode(), value=str(i).encode(), on_delivery=lambda e, m: e and failures.append(e))
    assert producer.flush(30) == 0 and not failures, failures

    st = deploy(deployer, guests, "identity", "cl-copy", src, [dst])
    assert st["state"] == "running" and st["broker_id"] == deployer_id, st
    # Every broker read the deployment (and its module) from the plugin log and runs the partitions
    # it leads; the deploying broker's status names where the others run.
    wait_for(lambda: on_the_leaders(nodes, "cl-copy", src, 3), "a runner on each input partition's leader", timeout=60)
    mine = {p["partition"] for p in transform_on(deployer, "cl-copy")["partitions"]}
    elsewhere = {p["partition"] for p in transform_on(deployer, "cl-copy")["partitions_elsewhere"]}
    assert mine | elsewhere == {0, 1, 2} and not mine & elsewhere, (mine, elsewhere)
    # The leaders are spread (one partition each): the deploying broker runs one, which has to move
    # when it dies.
    assert mine, f"broker {deployer_id} leads no input partition: {partitions(nodes[0], src)}"
    moving = min(mine)
    wait_for(lambda: caught_up(nodes, "cl-copy", 3), "the transform to copy the first records", timeout=60)

    # The plugin's transactional ids and group live in the cluster's coordinators: the coordinator
    # describes them.
    code, _, body = http_request("GET", f"{node_of(nodes, coordinator).admin_url}/v1/groups/__sluice-transform-cl-copy", timeout=10)
    assert code == 200, body
    assert {o["topic"] for o in json.loads(body)["offsets"]} == {src}, body

    with writing(producer, src, 900, failures) as written:
        time.sleep(1.5)
        # 1. The coordinator dies: the runners' calls find its successor.
        node_of(nodes, coordinator).kill9()
        time.sleep(4)
        node_of(nodes, coordinator).start()
        time.sleep(2)
        # 2. The deploying broker dies mid-transaction. Its partitions' new leaders take over their
        # runners (fencing its open transactions) while it is down: the transform does not depend
        # on the broker that took the deploy.
        deployer.kill9()
        wait_for(
            lambda: on_the_leaders(nodes, "cl-copy", src, 3, without=deployer_id),
            "every runner on a live leader while the deploying broker is down",
            timeout=60,
        )
        # The partition the dead broker ran moved to its new leader and advances there.
        position = runners(nodes, "cl-copy")[moving][0][1]["position"]
        wait_for(
            lambda: (runs := runners(nodes, "cl-copy").get(moving)) and runs[0][0] != deployer_id and runs[0][1]["position"] > position,
            f"partition {moving}'s runner to advance on its new leader without the deploying broker",
            timeout=30,
        )
        deployer.start()
        time.sleep(3)
    assert producer.flush(60) == 0, "the producer could not deliver every record"
    assert not failures, failures[:5]
    total = written[0]

    wait_for(lambda: caught_up(nodes, "cl-copy", 3), "the transform to catch up", timeout=90)
    seen = read_everything(nodes, dst, total)
    assert not [v for values in seen.values() for v in values if v >= ABORTED], "records of an aborted transaction were copied"
    assert_read_back_exactly(nodes, dst, total)
    # The restarted broker knows the deployment from the plugin log.
    wait_for(lambda: transform_on(deployer, "cl-copy") is not None, "the restarted broker to read the deployment", timeout=30)
    text = sluice_cli(deployer, "transform", "status", "cl-copy").stdout
    assert "running" in text, text

    # A pause on one broker pauses it everywhere; a delete on another removes it everywhere.
    sluice_cli(nodes[2], "transform", "pause", "cl-copy")
    wait_for(lambda: all((transform_on(n, "cl-copy") or {}).get("state") == "paused" for n in nodes), "paused on every broker", timeout=30)
    sluice_cli(nodes[0], "transform", "delete", "cl-copy")
    wait_for(lambda: all(transform_on(n, "cl-copy") is None for n in nodes), "deleted on every broker", timeout=30)
    # The plugin log ends with the deployment's tombstone and its unused module's: compaction drops
    # them (no deployment leaves state behind for good).
    latest = plugin_log(nodes)
    assert latest["transform/cl-copy"] is None, latest
    modules = [k for k in latest if k.startswith("module/")]
    assert modules and all(latest[k] is None for k in modules), latest


def plugin_log(nodes) -> dict[str, bytes | None]:
    """The latest value of every key of `__sluice_plugins` (read_committed, as a client may)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {"bootstrap.servers": bootstrap(nodes), "group.id": unique("plugin-log-reader"), "isolation.level": "read_committed", "enable.partition.eof": True}
    )
    consumer.assign([TopicPartition("__sluice_plugins", 0, 0)])
    latest: dict[str, bytes | None] = {}
    deadline = time.time() + 30
    try:
        while time.time() < deadline:
            msg = consumer.poll(1.0)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == -191:  # _PARTITION_EOF
                    return latest
                raise AssertionError(msg.error())
            latest[msg.key().decode()] = msg.value()
    finally:
        consumer.close()
    raise AssertionError("the plugin log was not read to its end within 30 s")


def test_only_brokers_write_the_plugin_log_and_every_broker_ignores_a_change_made_from_a_stale_copy(make_broker, guests):  # noqa: F811
    nodes = start_replicated_nodes(make_broker)
    wait_for(lambda: partitions(nodes[0], "__sluice_plugins").get(0, (-1,))[0] in (1, 2, 3), "the plugin log to have a leader", timeout=30)
    src, dst = unique("st-in"), unique("st-out")
    for topic in (src, dst):
        create_replicated(nodes[0], topic, 1, 3, {"min.insync.replicas": "2"})
    deploy(nodes[0], guests, "identity", "st-copy", src, [dst])
    wait_for(lambda: all(transform_on(n, "st-copy") for n in nodes), "every broker to read the deployment", timeout=30)

    # A client cannot write the plugin log (nor delete its records).
    failures: list = []
    client = cf_producer(nodes[0], {"bootstrap.servers": bootstrap(nodes)})
    client.produce("__sluice_plugins", key=b"transform/st-copy", value=None, on_delivery=lambda e, m: failures.append(e))
    client.flush(30)
    assert failures and failures[0] is not None, "a client wrote the plugin log"

    # A pause made from a copy that is not the latest record (a broker that had not yet read a
    # change, simulated by writing as a peer with a wrong `based_on`) is ignored by every broker…
    record = json.loads(plugin_log(nodes)["transform/st-copy"])
    stale = dict(record, paused=True, based_on=record.get("based_on", 0) - 1)
    peer = cf_producer(nodes[0], {"bootstrap.servers": bootstrap(nodes), "client.id": "__sluice-broker-99", "acks": "all"})
    peer.produce("__sluice_plugins", key=b"transform/st-copy", value=json.dumps(stale).encode(), on_delivery=lambda e, m: failures.append(e))
    assert peer.flush(30) == 0 and failures[-1] is None, failures
    # …so a limit change written after it, from the latest record, applies everywhere and leaves the
    # transform running (had the stale pause been applied, this change would carry it).
    sluice_cli(nodes[1], "transform", "set-limits", "st-copy", "--memory-mb", "48")
    wait_for(
        lambda: all((transform_on(n, "st-copy") or {}).get("memory_bytes") == 48 << 20 for n in nodes),
        "the limit change on every broker",
        timeout=30,
    )
    assert all(transform_on(n, "st-copy")["state"] == "running" for n in nodes), [transform_on(n, "st-copy")["state"] for n in nodes]
