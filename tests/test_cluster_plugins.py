"""Plugins in a cluster (issue 14): a broker's plugins keep their transactions and input positions in
the cluster's replicated coordinators (the leader of `__sluice_coordinator-0`, reached over the
network from any broker) and write each output partition through its leader with acks=all. So a
transform keeps exactly-once through a SIGKILL of the coordinator's broker and of its own broker:
whoever runs it next fences its open transaction and starts from the position it committed."""

from __future__ import annotations

import json
import time

from harness import cf_producer, http_request, sluice_cli, unique, wait_for
from test_coordinators import in_sync_coordinator
from test_replication import assert_read_back_exactly, bootstrap, create_replicated, partitions, read_everything, start_replicated_nodes, writing
from test_transforms import deploy, guests, status  # noqa: F401 - `guests` is a fixture


ABORTED = 10**9


def node_of(nodes, node_id: int):
    return nodes[node_id - 1]


def test_a_transform_keeps_exactly_once_through_kills_of_the_coordinator_and_of_its_own_broker(make_broker, guests):  # noqa: F811
    nodes = start_replicated_nodes(make_broker)
    coordinator = wait_for(lambda: in_sync_coordinator(nodes, [1, 2, 3]), "the coordinators' partition on three in-sync replicas", timeout=30)
    # The transform runs on a broker that is not the coordinator: every transactional call crosses
    # the network, and killing the coordinator does not stop the transform's broker.
    runner_id = next(i for i in (1, 2, 3) if i != coordinator)
    runner = node_of(nodes, runner_id)
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

    st = deploy(runner, guests, "identity", "cl-copy", src, [dst])
    assert st["state"] == "running", st
    wait_for(lambda: status(runner, "cl-copy")["records_in"] >= 900, "the transform to copy the first records", timeout=60)

    # The plugin's transactional id and group live in the cluster's coordinators, not in the runner
    # broker's own: the coordinator describes them.
    code, _, body = http_request("GET", f"{node_of(nodes, coordinator).admin_url}/v1/groups/__sluice-transform-cl-copy", timeout=10)
    assert code == 200, body
    assert {o["topic"] for o in json.loads(body)["offsets"]} == {src}, body

    with writing(producer, src, 900, failures) as written:
        time.sleep(1.5)
        # 1. The coordinator dies: the runner's calls find its successor.
        node_of(nodes, coordinator).kill9()
        time.sleep(4)
        node_of(nodes, coordinator).start()
        time.sleep(2)
        # 2. The transform's own broker dies mid-transaction: on restart its runners fence the open
        # transaction and resume from the committed positions.
        runner.kill9()
        time.sleep(2)
        runner.start()
        time.sleep(3)
    assert producer.flush(60) == 0, "the producer could not deliver every record"
    assert not failures, failures[:5]
    total = written[0]

    wait_for(lambda: status(runner, "cl-copy")["lag"] == 0, "the restarted transform to catch up", timeout=90)
    seen = read_everything(nodes, dst, total)
    assert not [v for values in seen.values() for v in values if v >= ABORTED], "records of an aborted transaction were copied"
    assert_read_back_exactly(nodes, dst, total)
    # The restarted broker's runners read their positions from the cluster: nothing was copied twice
    # (above) and the status says where they are.
    text = sluice_cli(runner, "transform", "status", "cl-copy").stdout
    assert "running" in text, text
