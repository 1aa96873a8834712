"""Jepsen-style soak of a three-broker cluster: random faults for a while, then a checker.

Each broker runs in a network namespace of its own (a veth on a bridge; the clients run in the host's
namespace and reach every broker, as on a real network). While an idempotent acks=all producer writes
keyed, numbered records to an RF=3 topic with min.insync.replicas=2, a nemesis injects one fault at a
time, each for a few seconds, then heals it:

- kill:      SIGKILL a broker, start it again afterwards (same data directory);
- pause:     SIGSTOP a broker, SIGCONT afterwards (its sockets stay open, nothing answers);
- isolate:   take its link down (nothing reaches it and it reaches nothing: packets vanish);
- cut:       blackhole routes between it and the other brokers only (clients still reach it: a leader
             that still takes writes but cannot replicate them or reach the controller quorum).

Beside it a transactional producer writes one record to every partition of a second topic per
transaction (its partitions are led by all three brokers: the coordinator, node 1, sends the others
their markers) and commits four transactions in five, aborting the fifth.

Afterwards every fault is healed, every broker runs, and the soak waits until every partition has
its three replicas in sync; the producer stops and a read_committed consumer reads every partition
from offset 0. The checker then verifies, per partition, the log of acknowledged writes against what
was read:

- lost:       an acknowledged record is not at the offset its acknowledgement named (nor anywhere);
- moved:      it is, but at another offset (the log diverged after acknowledging);
- duplicated: a record (key and number) appears twice;
- reordered:  one key's numbers do not increase along its partition;
- fatal:      the idempotent producer hit a fatal error (it could not fail over by itself);
- txn_partial: a transaction visible on some of its partitions only (atomicity);
- txn_lost:   a transaction whose commit returned is not visible (durability of commit);
- txn_aborted_visible: a transaction whose abort returned is visible;
- txn_duplicated: a transaction's record visible twice on one partition.

Any of these is a violation. Records that were never acknowledged may or may not be there.

    python3 tests/soak_cluster.py [seconds] [seed]

Needs root (namespaces, links, routes) and target/release/sluice (or $SLUICE_BIN). tests/test_soak.py
runs a bounded form in the test suite; BENCHMARKS.md has the latest long run."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from dataclasses import dataclass, field

BROKERS = (1, 2, 3)
KAFKA_PORT = 9092
CONTROLLER_PORT = 9093
ADMIN_PORT = 8080
TOPIC = "soak"
TXN_TOPIC = "soak-txn"
PARTITIONS = 6
KEYS = 24
SESSION_MS = 3000
HEARTBEAT_MS = 500
LAG_MS = 5000


def sh(command: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(command, shell=True, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise RuntimeError(f"`{command}` failed: {done.stderr.strip()}")
    return done


class Network:
    """One namespace per broker on a bridge that the host (the clients) is also on."""

    def __init__(self) -> None:
        tag = os.getpid() % 100000
        self.prefix = f"sk{tag}"
        self.subnet = f"10.77.{20 + tag % 200}"
        self.bridge = f"{self.prefix}br"
        self.cuts: set[tuple[int, int]] = set()

    def ns(self, node: int) -> str:
        return f"{self.prefix}n{node}"

    def ip(self, node: int) -> str:
        return f"{self.subnet}.{node}"

    def link(self, node: int) -> str:
        return f"{self.prefix}h{node}"

    def up(self) -> None:
        sh(f"ip link add {self.bridge} type bridge")
        sh(f"ip addr add {self.subnet}.254/24 dev {self.bridge}")
        sh(f"ip link set {self.bridge} up")
        for node in BROKERS:
            ns, link = self.ns(node), self.link(node)
            sh(f"ip netns add {ns}")
            sh(f"ip link add {link} type veth peer name eth0 netns {ns}")
            sh(f"ip link set {link} master {self.bridge} up")
            sh(f"ip -n {ns} addr add {self.ip(node)}/24 dev eth0")
            sh(f"ip -n {ns} link set eth0 up")
            sh(f"ip -n {ns} link set lo up")

    def down(self) -> None:
        for node in BROKERS:
            sh(f"ip netns del {self.ns(node)}", check=False)
            sh(f"ip link del {self.link(node)}", check=False)
        sh(f"ip link del {self.bridge}", check=False)

    def isolate(self, node: int, isolated: bool) -> None:
        sh(f"ip link set {self.link(node)} {'down' if isolated else 'up'}")

    def cut(self, a: int, b: int) -> None:
        """Packets from `a` to `b` vanish (a blackhole route in `a`'s namespace)."""
        sh(f"ip -n {self.ns(a)} route add blackhole {self.ip(b)}/32")
        self.cuts.add((a, b))

    def heal_cuts(self) -> None:
        for a, b in sorted(self.cuts):
            sh(f"ip -n {self.ns(a)} route del blackhole {self.ip(b)}/32", check=False)
        self.cuts.clear()


class Cluster:
    def __init__(self, net: Network, work: str, binary: str) -> None:
        self.net, self.work, self.binary = net, work, binary
        self.procs: dict[int, subprocess.Popen] = {}
        self.paused: set[int] = set()
        self.voters = ",".join(f"{n}@{net.ip(n)}:{CONTROLLER_PORT}" for n in BROKERS)

    @property
    def bootstrap(self) -> str:
        return ",".join(f"{self.net.ip(n)}:{KAFKA_PORT}" for n in BROKERS)

    def start(self, node: int) -> None:
        log = open(f"{self.work}/broker-{node}.log", "ab")
        ip = self.net.ip(node)
        self.procs[node] = subprocess.Popen(
            ["ip", "netns", "exec", self.net.ns(node), self.binary, "server", "--node-id", str(node),
             "--controller-voters", self.voters, "--data-dir", f"{self.work}/data-{node}",
             "--listen", f"{ip}:{KAFKA_PORT}", "--admin-listen", f"{ip}:{ADMIN_PORT}",
             "--set", f"broker.session.timeout.ms={SESSION_MS}", "--set", f"broker.heartbeat.interval.ms={HEARTBEAT_MS}",
             "--set", f"replica.lag.time.max.ms={LAG_MS}"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, "RUST_LOG": "info", "NO_COLOR": "1"})

    def kill9(self, node: int) -> None:
        proc = self.procs[node]
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def pause(self, node: int, paused: bool) -> None:
        self.procs[node].send_signal(signal.SIGSTOP if paused else signal.SIGCONT)
        (self.paused.add if paused else self.paused.discard)(node)

    def running(self, node: int) -> bool:
        return node in self.procs and self.procs[node].poll() is None

    def admin(self, node: int, path: str):
        try:
            with urllib.request.urlopen(f"http://{self.net.ip(node)}:{ADMIN_PORT}{path}", timeout=1) as reply:
                return json.load(reply)
        except Exception:
            return None

    def stop_all(self) -> None:
        for node, proc in self.procs.items():
            if proc.poll() is None:
                if node in self.paused:
                    proc.send_signal(signal.SIGCONT)
                proc.send_signal(signal.SIGKILL)
                proc.wait()

    def log_tails(self, lines: int = 40) -> str:
        out = []
        for node in BROKERS:
            try:
                with open(f"{self.work}/broker-{node}.log", errors="replace") as log:
                    tail = log.readlines()[-lines:]
            except OSError:
                tail = []
            out.append(f"--- broker {node} ---\n" + "".join(tail))
        return "\n".join(out)


@dataclass
class Workload:
    """An idempotent acks=all producer of `KEYS` keys, each with its own increasing numbers."""

    bootstrap: str
    acked: list = field(default_factory=list)  # (partition, offset, key, number)
    failed: Counter = field(default_factory=Counter)  # error name -> records not acknowledged
    fatal: list = field(default_factory=list)
    sent: int = 0

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def producer(self):
        from confluent_kafka import Producer

        return Producer({"bootstrap.servers": self.bootstrap, "enable.idempotence": True, "acks": "all", "linger.ms": 5,
                         "message.timeout.ms": 30_000, "reconnect.backoff.max.ms": 1000, "log_level": 0})

    def run(self) -> None:
        producer = self.producer()
        numbers = [0] * KEYS

        def delivered(error, msg) -> None:
            with self.lock:
                if error is None:
                    key = msg.key().decode()
                    self.acked.append((msg.partition(), msg.offset(), key, int(msg.value())))
                else:
                    self.failed[error.name()] += 1
                    if error.fatal():
                        self.fatal.append(str(error))

        i = 0
        while not self.stop.is_set():
            key = i % KEYS
            try:
                producer.produce(TOPIC, key=f"k{key}".encode(), value=str(numbers[key]).encode(), on_delivery=delivered)
                numbers[key] += 1
                self.sent += 1
            except BufferError:
                pass
            producer.poll(0)
            i += 1
            if self.fatal:
                # A fatal idempotence error ends this producer; a new one (a new producer id) goes on.
                producer.flush(5)
                producer = self.producer()
                with self.lock:
                    self.fatal.append("(replaced the producer)")
            time.sleep(0.002)
        producer.flush(60)


@dataclass
class Transactions:
    """A transactional producer: transaction n writes the record `n` to every partition of
    TXN_TOPIC, then commits, or aborts when n % 5 == 4."""

    bootstrap: str
    committed: list = field(default_factory=list)
    aborted: list = field(default_factory=list)
    uncertain: list = field(default_factory=list)  # the outcome never came back: all or nothing
    errors: Counter = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def producer(self):
        from confluent_kafka import Producer

        while not self.stop.is_set():
            producer = Producer({"bootstrap.servers": self.bootstrap, "transactional.id": "soak-txn", "transaction.timeout.ms": 20_000,
                                 "message.timeout.ms": 20_000, "reconnect.backoff.max.ms": 1000, "log_level": 0})
            try:
                producer.init_transactions(30)
                return producer
            except Exception as error:  # the coordinator may be down: try again
                self.errors[f"init: {error.args[0].name() if error.args else error}"] += 1
                time.sleep(1)
        return None

    def run(self) -> None:
        from confluent_kafka import KafkaException

        producer = self.producer()
        n = 0
        while producer is not None and not self.stop.is_set():
            commit = n % 5 != 4
            try:
                producer.begin_transaction()
                for p in range(PARTITIONS):
                    producer.produce(TXN_TOPIC, value=str(n).encode(), partition=p)
                producer.flush(20)
            except (KafkaException, BufferError) as error:
                self.errors[f"write: {error}"] += 1
                self.uncertain.append(n)
                n += 1
                producer = self.recover(producer)
                continue
            outcome = self.finish(producer, commit)
            (self.committed if outcome == "committed" else self.aborted if outcome == "aborted" else self.uncertain).append(n)
            if outcome == "uncertain":
                producer = self.recover(producer)
            n += 1
            time.sleep(0.05)

    def finish(self, producer, commit: bool) -> str:
        from confluent_kafka import KafkaException

        for _ in range(3):
            try:
                if commit:
                    producer.commit_transaction(30)
                    return "committed"
                producer.abort_transaction(30)
                return "aborted"
            except KafkaException as error:
                kafka_error = error.args[0]
                self.errors[f"{'commit' if commit else 'abort'}: {kafka_error.name()}"] += 1
                if kafka_error.txn_requires_abort():
                    try:
                        producer.abort_transaction(30)
                        return "aborted"
                    except KafkaException:
                        return "uncertain"
                if not kafka_error.retriable():
                    return "uncertain"
        return "uncertain"

    def recover(self, producer):
        """After an unknown outcome: abort what may be open, or start a new producer (which fences
        the old one and makes the coordinator finish its transaction)."""
        try:
            producer.abort_transaction(30)
            return producer
        except Exception:
            return self.producer()


def check_transactions(txns: Transactions, log: dict[int, list[tuple[int, str, int]]]) -> dict[str, list]:
    visible: dict[int, list[int]] = defaultdict(list)  # transaction -> partitions it is visible on
    for p, entries in log.items():
        for _, _, number in entries:
            visible[number].append(p)
    violations: dict[str, list] = {"txn_partial": [], "txn_lost": [], "txn_aborted_visible": [], "txn_duplicated": []}
    for n, parts in visible.items():
        if len(parts) != len(set(parts)):
            violations["txn_duplicated"].append({"txn": n, "partitions": sorted(parts)})
        if len(set(parts)) != PARTITIONS:
            violations["txn_partial"].append({"txn": n, "partitions": sorted(set(parts))})
    for n in txns.committed:
        if n not in visible:
            violations["txn_lost"].append(n)
    for n in txns.aborted:
        if n in visible:
            violations["txn_aborted_visible"].append({"txn": n, "partitions": sorted(set(visible[n]))})
    return violations


def read_all(bootstrap: str, topic: str = TOPIC) -> dict[int, list[tuple[int, str, int]]]:
    """partition -> [(offset, key, number)] of everything committed, read from offset 0 up to the
    high watermark (the consumer's position passes transaction markers and aborted records too)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"soak-check-{os.getpid()}", "enable.auto.commit": False,
                         "isolation.level": "read_committed", "auto.offset.reset": "earliest", "log_level": 0})
    ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=20)[1] for p in range(PARTITIONS)}
    consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    log: dict[int, list] = defaultdict(list)
    deadline = time.monotonic() + 120

    def behind() -> bool:
        positions = consumer.position([TopicPartition(topic, p) for p in range(PARTITIONS)])
        return any(tp.offset < ends[tp.partition] for tp in positions)

    while behind() and time.monotonic() < deadline:
        for msg in consumer.consume(num_messages=1000, timeout=0.5):
            if msg.error() is None:
                log[msg.partition()].append((msg.offset(), (msg.key() or b"").decode(), int(msg.value())))
    consumer.close()
    return log


def check(acked: list, log: dict[int, list]) -> dict[str, list]:
    at = {(p, offset): (key, number) for p, entries in log.items() for offset, key, number in entries}
    where = defaultdict(list)
    for (p, offset), record in at.items():
        where[record].append((p, offset))
    violations: dict[str, list] = {"lost": [], "moved": [], "duplicated": [], "reordered": []}
    for p, offset, key, number in acked:
        if at.get((p, offset)) == (key, number):
            continue
        found = where.get((key, number))
        violations["moved" if found else "lost"].append({"partition": p, "offset": offset, "record": f"{key}:{number}", "now_at": found})
    for record, places in where.items():
        if len(places) > 1:
            violations["duplicated"].append({"record": f"{record[0]}:{record[1]}", "at": places})
    for p, entries in log.items():
        last: dict[str, int] = {}
        for offset, key, number in entries:
            if number <= last.get(key, -1):
                violations["reordered"].append({"partition": p, "offset": offset, "record": f"{key}:{number}", "after": last[key]})
            last[key] = max(number, last.get(key, -1))
    return violations


def all_in_sync(cluster: Cluster) -> bool:
    for node in BROKERS:
        for name in (TOPIC, TXN_TOPIC):
            topic = cluster.admin(node, f"/v1/topics/{name}")
            if not topic:
                return False
            if any(sorted(p.get("isr", [])) != list(BROKERS) for p in topic["partition_details"]):
                return False
    return True


def run(seconds: float, seed: int, say=print) -> dict:
    """Runs the soak; returns its report ("violations" holds what the checker found)."""
    from confluent_kafka.admin import AdminClient, NewTopic

    binary = os.environ.get("SLUICE_BIN", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "target", "release", "sluice"))
    rng = random.Random(seed)
    work = tempfile.mkdtemp(prefix="sluice-soak-")
    net = Network()
    cluster = Cluster(net, work, os.path.abspath(binary))
    faults: list[str] = []
    report: dict = {"seed": seed, "seconds": seconds, "work": work}
    net.down()
    net.up()
    try:
        for node in BROKERS:
            cluster.start(node)
        admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
        deadline = time.monotonic() + 30
        while True:
            try:
                for name in (TOPIC, TXN_TOPIC):
                    if name not in admin.list_topics(timeout=10).topics:
                        admin.create_topics([NewTopic(name, PARTITIONS, 3, config={"min.insync.replicas": "2"})])[name].result(15)
                break
            except Exception as error:  # the quorum may still be forming
                if time.monotonic() > deadline:
                    raise RuntimeError(f"cannot create the topic: {error}\n{cluster.log_tails()}") from error
                time.sleep(0.5)
        wait(lambda: all_in_sync(cluster), 30, "every partition in sync before the faults", cluster)

        workload = Workload(cluster.bootstrap)
        workload.thread.start()
        txns = Transactions(cluster.bootstrap)
        txns.thread.start()
        def cut_off(node: int) -> None:
            for other in BROKERS:
                if other != node:
                    net.cut(node, other)
                    net.cut(other, node)

        # Each fault: how it is injected into a broker, and how it is healed.
        nemesis = {
            "kill": (cluster.kill9, cluster.start),
            "pause": (lambda n: cluster.pause(n, True), lambda n: cluster.pause(n, False)),
            "isolate": (lambda n: net.isolate(n, True), lambda n: net.isolate(n, False)),
            "cut": (cut_off, lambda n: net.heal_cuts()),
        }
        started = time.monotonic()
        time.sleep(2)
        while time.monotonic() - started < seconds:
            kind = rng.choice(list(nemesis))
            node = rng.choice(BROKERS)
            # Some faults outlast the broker session (3 s): the broker is fenced and its partitions move.
            hold = rng.uniform(1.0, 8.0)
            at = time.monotonic() - started
            inject, heal = nemesis[kind]
            inject(node)
            faults.append(f"{at:6.1f}s {kind} broker {node} for {hold:.1f}s")
            say(f"  {faults[-1]} (acknowledged so far: {len(workload.acked)})")
            time.sleep(hold)
            heal(node)
            time.sleep(rng.uniform(1.0, 4.0))
        # Healed: every partition must get back to three in-sync replicas while the producer writes.
        wait(lambda: all_in_sync(cluster), 90, "every partition back in sync after the faults", cluster)
        time.sleep(2)
        workload.stop.set()
        txns.stop.set()
        workload.thread.join(90)
        txns.thread.join(120)
        log = read_all(cluster.bootstrap)
        violations = check(workload.acked, log)
        if workload.fatal:
            violations["fatal"] = workload.fatal
        violations.update(check_transactions(txns, read_all(cluster.bootstrap, TXN_TOPIC)))
        report.update({
            "faults": faults,
            "sent": workload.sent,
            "acknowledged": len(workload.acked),
            "not_acknowledged": dict(workload.failed),
            "read": sum(len(v) for v in log.values()),
            "transactions": {"committed": len(txns.committed), "aborted": len(txns.aborted), "uncertain": len(txns.uncertain),
                             "errors": dict(txns.errors)},
            "violations": {k: v for k, v in violations.items() if v},
        })
        if report["violations"]:
            report["logs"] = cluster.log_tails()
        return report
    finally:
        cluster.stop_all()
        net.down()
        if not report.get("violations") and not os.environ.get("SOAK_KEEP"):
            shutil.rmtree(work, ignore_errors=True)


def wait(condition, timeout: float, what: str, cluster: Cluster) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}\n{cluster.log_tails()}")
        time.sleep(0.25)


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 600
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else random.randrange(1 << 30)
    print(f"soak: {seconds:.0f} s of faults, seed {seed}", flush=True)
    began = time.monotonic()
    report = run(seconds, seed, say=lambda line: print(line, flush=True))
    logs = report.pop("logs", None)
    print(json.dumps({k: v for k, v in report.items() if k != "faults"}, indent=2))
    print(f"{len(report.get('faults', []))} faults in {time.monotonic() - began:.0f} s; "
          f"{report.get('acknowledged')} acknowledged, {report.get('read')} read")
    if report.get("violations"):
        print(logs)
        print("VIOLATIONS FOUND", file=sys.stderr)
        sys.exit(1)
    print("no violation: nothing acknowledged lost or moved, nothing duplicated or reordered")


if __name__ == "__main__":
    main()
