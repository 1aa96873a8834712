"""Commit latency of transactions that write many partitions led by the transaction coordinator, in
a three-broker cluster (RF 3, min.insync.replicas 2): the coordinator writes those partitions' markers
itself and must wait for each to reach the in-sync replicas before it answers EndTxn. Usage:

    SLUICE_BIN=target/release/sluice python3 tests/perf/txn_cluster.py [transactions] [partitions]

One transactional confluent-kafka producer: each transaction writes one record to every partition,
then commits; prints the commit time's median, p90 and max, and transactions/s. Not a test."""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

BIN = os.environ.get("SLUICE_BIN", "target/release/sluice")


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    partitions = int(sys.argv[2]) if len(sys.argv) > 2 else 16
    work = tempfile.mkdtemp(prefix="sluice-txnbench-")
    voters = "1@127.0.0.1:39093,2@127.0.0.1:39193,3@127.0.0.1:39293"
    procs = []
    try:
        for node in (1, 2, 3):
            log = open(f"{work}/n{node}.log", "ab")
            procs.append(subprocess.Popen(
                [BIN, "server", "--node-id", str(node), "--controller-voters", voters, "--data-dir", f"{work}/n{node}",
                 "--listen", f"127.0.0.1:39{node}92", "--admin-listen", f"127.0.0.1:39{node}44"],
                stdout=log, stderr=log))
        bootstrap = ",".join(f"127.0.0.1:39{n}92" for n in (1, 2, 3))
        admin = AdminClient({"bootstrap.servers": bootstrap})
        time.sleep(3)
        # Every partition on all three brokers, led by broker 1: the coordinator (the lowest voter).
        topic = NewTopic("txn", num_partitions=partitions, replica_assignment=[[1, 2, 3]] * partitions,
                         config={"min.insync.replicas": "2"})
        admin.create_topics([topic])["txn"].result(30)
        while any(len(p.isrs) < 3 for p in admin.list_topics("txn", timeout=10).topics["txn"].partitions.values()):
            time.sleep(0.2)
        producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": "bench", "linger.ms": 0})
        producer.init_transactions(30)
        commits = []
        started = time.monotonic()
        for i in range(count):
            producer.begin_transaction()
            for p in range(partitions):
                producer.produce("txn", value=str(i).encode(), partition=p)
            producer.flush(30)
            at = time.monotonic()
            producer.commit_transaction(30)
            commits.append(time.monotonic() - at)
        elapsed = time.monotonic() - started
        commits.sort()
        ms = lambda s: f"{s * 1000:.1f} ms"
        print(f"{count} transactions over {partitions} partitions led by the coordinator: commit median {ms(statistics.median(commits))}, "
              f"p90 {ms(commits[int(len(commits) * 0.9)])}, max {ms(commits[-1])}; {count / elapsed:.0f} transactions/s")
    finally:
        for proc in procs:
            proc.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
