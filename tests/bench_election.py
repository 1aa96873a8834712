"""Leader election at scale: how long after a broker's loss every partition it led has a new leader.
Three `sluice server` processes on this machine; topics with PARTITIONS partitions in all, replication
factor 2 (so every partition the victim led has one in-sync follower elsewhere); SIGKILL one broker
and poll a survivor's Metadata until no partition names the victim as leader; restart it and time
until every ISR holds both replicas again (the victim rejoins every ISR it left). Usage:

    python3 tests/bench_election.py [partitions] [rounds]

(partitions default 10,000 in topics of 1,000; rounds default 3.) Not a test (no assertion on time):
see BENCHMARKS.md for results."""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from confluent_kafka.admin import AdminClient, NewTopic

BIN = os.environ.get("SLUICE_BIN", "target/release/sluice")
PER_TOPIC = 1000


def main() -> None:
    total = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    work = tempfile.mkdtemp(prefix="sluice-election-")
    voters = "1@127.0.0.1:39093,2@127.0.0.1:39193,3@127.0.0.1:39293"
    procs: dict[int, subprocess.Popen] = {}

    def start(node: int) -> None:
        log = open(f"{work}/n{node}.log", "ab")
        procs[node] = subprocess.Popen(
            [BIN, "server", "--node-id", str(node), "--controller-voters", voters, "--data-dir", f"{work}/n{node}",
             "--listen", f"127.0.0.1:39{node}92", "--admin-listen", f"127.0.0.1:39{node}44",
             # Kafka's default: no automatic rebalance in the middle of a measurement.
             "--set", "auto.leader.rebalance.enable=false"],
            stdout=log, stderr=log)

    for node in (1, 2, 3):
        start(node)
    time.sleep(3)
    admins = {n: AdminClient({"bootstrap.servers": f"127.0.0.1:39{n}92"}) for n in (1, 2, 3)}
    topics = [f"t{i}" for i in range(total // PER_TOPIC)]
    began = time.monotonic()
    for name in topics:
        admins[1].create_topics([NewTopic(name, PER_TOPIC, 2)], request_timeout=120)[name].result(180)
    print(f"created {len(topics)} topics of {PER_TOPIC} partitions (RF 2) in {time.monotonic() - began:.1f} s", flush=True)

    def leaders(node: int) -> list[int]:
        md = admins[node].list_topics(timeout=30)
        return [p.leader for t in topics for p in md.topics[t].partitions.values()]

    def all_in_sync(node: int) -> bool:
        md = admins[node].list_topics(timeout=30)
        return all(len(p.isrs) == 2 for t in topics for p in md.topics[t].partitions.values())

    took = []
    back = []
    try:
        for _ in range(rounds):
            while not all_in_sync(1):
                time.sleep(0.5)
            victim = max((1, 2, 3), key=lambda n: leaders(1).count(n))
            led = leaders(1).count(victim)
            survivor = next(n for n in (1, 2, 3) if n != victim)
            killed = time.monotonic()
            procs[victim].send_signal(signal.SIGKILL)
            procs[victim].wait()
            while True:
                now = leaders(survivor)
                if victim not in now:
                    break
            took.append(time.monotonic() - killed)
            leaderless = now.count(-1)
            print(f"killed broker {victim} (leader of {led} partitions): every one had a new leader after "
                  f"{took[-1] * 1000:.0f} ms ({leaderless} leaderless)", flush=True)
            restarted = time.monotonic()
            start(victim)
            while not all_in_sync(survivor):
                time.sleep(0.2)
            back.append(time.monotonic() - restarted)
            print(f"restarted broker {victim}: back in every ISR after {back[-1]:.1f} s", flush=True)
    finally:
        for proc in procs.values():
            proc.send_signal(signal.SIGKILL)
    print(f"{total} partitions, {rounds} rounds: median {statistics.median(took) * 1000:.0f} ms, max {max(took) * 1000:.0f} ms; "
          f"back in every ISR after a restart: {', '.join(f'{b:.1f} s' for b in back)}")


if __name__ == "__main__":
    main()
