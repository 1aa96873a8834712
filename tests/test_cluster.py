"""The controller quorum across real `sluice server` processes: a single node is a one-voter quorum;
three nodes with `--controller-voters` elect a leader, register their brokers, fence a SIGKILLed one,
elect again when the leader dies, and take the dead node back when it restarts from its files.

Partitions are not replicated yet (issue 14 lands in pieces): these tests are about the quorum, its
broker registry and what `/v1/cluster`, `/metrics` and `sluice cluster info` report."""

from __future__ import annotations

import json
import subprocess

from harness import free_ports, http_request, require_binary, sluice_cli, wait_for

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


def test_three_nodes_elect_fence_and_take_a_node_back(make_broker):
    voters = ",".join(f"{i + 1}@127.0.0.1:{port}" for i, port in enumerate(free_ports(3)))
    nodes = [
        make_broker(
            f"broker.session.timeout.ms={SESSION_MS}",
            f"broker.heartbeat.interval.ms={HEARTBEAT_MS}",
            extra_args=["--node-id", str(i + 1), "--controller-voters", voters],
            start=False,
        )
        for i in range(3)
    ]
    for node in nodes:
        node.start(wait=False)
    for node in nodes:
        node.wait_ready()

    def agreed(members, live):
        views = [cluster_view(n) for n in members]
        if not all(views):
            return None
        leaders = {v["controller"]["leader_id"] for v in views}
        if len(leaders) != 1 or None in leaders:
            return None
        if any(brokers_by_state(v, "live") != live for v in views):
            return None
        return leaders.pop(), views

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
