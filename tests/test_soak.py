"""The Jepsen-style soak (tests/soak_cluster.py) in a bounded form: three brokers in network
namespaces, 45 seconds of random faults (SIGKILL, SIGSTOP, a broker's link down, a broker cut off from
the others while clients still reach it) under an idempotent acks=all producer with
min.insync.replicas=2 and a transactional producer spanning partitions led by every broker, then a
checker of everything acknowledged (and every transaction's outcome) against what read_committed
consumers read. The long run (minutes of faults) is the same script; its latest result is in
BENCHMARKS.md."""

from __future__ import annotations

import json
import os
import random

import pytest

import soak_cluster

SECONDS = float(os.environ.get("SOAK_SECONDS", "45"))


@pytest.mark.timeout(420)
def test_random_faults_lose_duplicate_and_reorder_nothing_acknowledged():
    seed = int(os.environ.get("SOAK_SEED", random.randrange(1 << 30)))
    print(f"soak seed {seed} (SOAK_SEED={seed} repeats its faults)")
    report = soak_cluster.run(SECONDS, seed)
    print("\n".join(report["faults"]))
    logs = report.pop("logs", "")
    assert not report["violations"], f"seed {seed}: {json.dumps(report, indent=1)[:6000]}\n{logs}"
    # The faults did not stop the writes: the producer failed over by itself every time.
    assert report["acknowledged"] > 1000, report
    assert len(report["faults"]) >= 5, report
    assert report["transactions"]["committed"] > 10, report


def test_the_checker_finds_lost_moved_duplicated_and_reordered_records():
    acked = [(0, 0, "k0", 0), (0, 1, "k0", 1), (1, 0, "k1", 0), (1, 1, "k1", 1)]
    assert not any(soak_cluster.check(acked, {0: [(0, "k0", 0), (1, "k0", 1)], 1: [(0, "k1", 0), (1, "k1", 1)]}).values())
    found = soak_cluster.check(acked, {0: [(0, "k0", 0), (2, "k0", 1), (3, "k0", 0)], 1: [(0, "k1", 0)]})
    assert [v["record"] for v in found["moved"]] == ["k0:1"]
    assert [v["record"] for v in found["lost"]] == ["k1:1"]
    assert [v["record"] for v in found["duplicated"]] == ["k0:0"]
    assert [v["record"] for v in found["reordered"]] == ["k0:0"]
    txns = soak_cluster.Transactions("unused")
    txns.committed, txns.aborted = [0, 1], [2]
    everywhere = {p: [(n, "", n) for n in (0, 2)] for p in range(soak_cluster.PARTITIONS)}
    everywhere[0].append((5, "", 0))
    everywhere[1].append((6, "", 3))
    found = soak_cluster.check_transactions(txns, everywhere)
    assert found["txn_lost"] == [1]
    assert [v["txn"] for v in found["txn_aborted_visible"]] == [2]
    assert [v["txn"] for v in found["txn_duplicated"]] == [0]
    assert [v["txn"] for v in found["txn_partial"]] == [3]
