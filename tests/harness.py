"""Black-box test harness for the Sluice broker.

`Broker` runs the real `sluice` binary on ephemeral loopback ports with its own data directory; the client
helpers below build real Kafka clients (confluent-kafka / librdkafka, kafka-python, kcat) with short
timeouts, so that a broken broker fails a test in seconds instead of hanging it.

Nothing in here knows how Sluice is implemented: everything goes through the Kafka protocol, the admin HTTP
API, signals and the files in the data directory.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BIN = REPO_ROOT / "target" / "release" / "sluice"

# Every client gets these bounds: a broker that does not answer makes the test fail in ~10 s.
CLIENT_TIMEOUT_MS = 10_000
HEALTH_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 15.0
LOG_TAIL_LINES = 80


# ---------------------------------------------------------------------------------------------------------
# Process management
# ---------------------------------------------------------------------------------------------------------


def sluice_bin() -> Path:
    """The broker binary: $SLUICE_BIN (relative to the cwd or the repo root) or target/release/sluice."""
    raw = os.environ.get("SLUICE_BIN")
    if not raw:
        return DEFAULT_BIN
    path = Path(raw)
    if path.is_absolute():
        return path
    for base in (Path.cwd(), REPO_ROOT):
        if (base / path).exists():
            return (base / path).resolve()
    return (REPO_ROOT / path).resolve()


def require_binary() -> Path:
    binary = sluice_bin()
    if not binary.exists():
        pytest.fail(
            f"sluice binary not found at {binary}: build it with `cargo build --release -p sluice-cli` "
            "or point SLUICE_BIN at it",
            pytrace=False,
        )
    return binary


def sluice_cli(broker, *args: str, timeout: int = 180, check: bool = True) -> subprocess.CompletedProcess:
    """Run the `sluice` CLI against `broker` (bootstrap and admin URL from the environment, no colour);
    with check=True it must exit 0."""
    env = dict(os.environ, SLUICE_BROKERS=broker.bootstrap, SLUICE_ADMIN_URL=broker.admin_url, NO_COLOR="1")
    proc = subprocess.run([str(require_binary()), *args], capture_output=True, text=True, timeout=timeout, env=env)
    if check:
        assert proc.returncode == 0, f"sluice {' '.join(args)} exited {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
    return proc


def _ephemeral_low() -> int:
    """The lowest port the kernel hands out as the source port of an outgoing connection."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_PORTS = random.Random()
# Every port this process has handed out: ports are chosen before the processes that bind them start
# (a cluster's voter ports, then each broker's own), so a port only checked free could be handed out
# twice and make the second bind fail. A test session uses a few thousand of the ~22,000.
_HANDED_OUT: set[int] = set()


def free_ports(count: int) -> list[int]:
    """Distinct free TCP ports on 127.0.0.1 (all sockets are held open until every port is chosen).

    Chosen below the kernel's ephemeral range: a broker keeps its ports across restarts, and a port
    from that range, free while the broker was down, can meanwhile become the source port of some
    outgoing connection (a client's, another broker's), which makes the restart fail with "Address
    already in use". No port is handed out twice by one process (see `_HANDED_OUT`)."""
    high = _ephemeral_low() - 1
    socks = []
    try:
        while len(socks) < count:
            port = _PORTS.randint(10000, high)
            if port in _HANDED_OUT:
                continue
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                s.close()
                continue
            socks.append(s)
            _HANDED_OUT.add(port)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def port_accepts(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def unique(prefix: str) -> str:
    """A topic / group name no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def tail_of(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return f"(no log file at {path})"
    text = _ANSI.sub("", data.decode("utf-8", errors="replace")).splitlines()
    return "\n".join(text[-lines:])


class Broker:
    """One `sluice server` process with fixed ports and data directory across restarts."""

    def __init__(self, workdir: Path, settings=(), config_file: Path | None = None, extra_args=()):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.workdir / "data"
        self.data_dir.mkdir(exist_ok=True)
        self.log_path = self.workdir / "broker.log"
        self.port, self.admin_port = free_ports(2)
        self.settings = list(settings)
        self.config_file = config_file
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen | None = None
        self.start_count = 0

    # -- addresses -------------------------------------------------------------------------------------
    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def command(self) -> list[str]:
        cmd = [
            str(require_binary()),
            "server",
            "--data-dir",
            str(self.data_dir),
            "--listen",
            self.bootstrap,
            "--admin-listen",
            f"127.0.0.1:{self.admin_port}",
        ]
        if self.config_file is not None:
            cmd += ["--config", str(self.config_file)]
        for setting in self.settings:
            cmd += ["--set", setting]
        return cmd + self.extra_args

    # -- lifecycle -------------------------------------------------------------------------------------
    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, wait: bool = True) -> "Broker":
        assert not self.is_running(), "broker is already running"
        cmd = self.command()
        env = dict(os.environ)
        env["RUST_LOG"] = os.environ.get("SLUICE_TEST_RUST_LOG", "info")
        env["NO_COLOR"] = "1"
        env.setdefault("RUST_BACKTRACE", "1")
        self.start_count += 1
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== start #{self.start_count}: {' '.join(cmd)} =====\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            )
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = HEALTH_TIMEOUT_S) -> None:
        """Wait until GET /health is 200 and the Kafka port accepts connections."""
        deadline = time.monotonic() + timeout
        last = "no attempt"
        while True:
            code = self.proc.poll()
            if code is not None:
                pytest.fail(
                    f"broker exited with code {code} during start-up\n--- broker log ---\n{self.log_tail()}",
                    pytrace=False,
                )
            try:
                status, _, _ = http_request("GET", f"{self.admin_url}/health", timeout=1.0)
                if status == 200 and port_accepts(self.port):
                    return
                last = f"/health status {status}"
            except OSError as err:
                last = repr(err)
            if time.monotonic() > deadline:
                self.kill9()
                pytest.fail(
                    f"broker not ready within {timeout:.0f}s (last: {last})\n--- broker log ---\n{self.log_tail()}",
                    pytrace=False,
                )
            time.sleep(0.05)

    def kill9(self) -> None:
        """SIGKILL and reap: a crash, nothing gets flushed or closed."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> int:
        """SIGTERM (graceful shutdown); it must exit 0 within STOP_TIMEOUT_S."""
        assert self.is_running(), "broker is not running"
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill9()
            pytest.fail(
                f"broker did not exit within {STOP_TIMEOUT_S:.0f}s of SIGTERM\n--- broker log ---\n{self.log_tail()}",
                pytrace=False,
            )
        assert code == 0, f"graceful shutdown exited with code {code}\n--- broker log ---\n{self.log_tail()}"
        return code

    def restart(self, kill: bool = False) -> "Broker":
        self.kill9() if kill else self.stop()
        return self.start()

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return tail_of(self.log_path, lines)

    def rss_bytes(self) -> int:
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def partition_dir(self, topic: str, partition: int) -> Path:
        return self.data_dir / f"{topic}-{partition}"

    def segment_files(self, topic: str, partition: int) -> list[Path]:
        """The partition's `.log` files, oldest first (names are 20-digit base offsets)."""
        return sorted(self.partition_dir(topic, partition).glob("*.log"))


# ---------------------------------------------------------------------------------------------------------
# HTTP
# ---------------------------------------------------------------------------------------------------------


def http_request(method: str, url: str, body=None, timeout: float = 10.0, headers=None):
    """(status, headers, body bytes); HTTP errors are returned, not raised."""
    data = None
    hdrs = dict(headers or {})
    if body is not None:
        if isinstance(body, (bytes, str)):
            data = body.encode() if isinstance(body, str) else body
        else:
            data = json.dumps(body).encode()
        hdrs.setdefault("Content-Type", "application/json")
    req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers or {}), err.read()


def assert_healthy(broker: Broker) -> None:
    status, _, body = http_request("GET", f"{broker.admin_url}/health", timeout=5)
    assert status == 200, f"/health answered {status}: {body[:500]!r}"


# ---------------------------------------------------------------------------------------------------------
# Records as both clients see them
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rec:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple = field(default=())  # ((str, bytes), ...)
    timestamp: int = -1


def _norm_headers(headers) -> tuple:
    if not headers:
        return ()
    return tuple((k, None if v is None else bytes(v)) for k, v in headers)


# ---------------------------------------------------------------------------------------------------------
# confluent-kafka (librdkafka)
# ---------------------------------------------------------------------------------------------------------


class _LogBudget(logging.Filter):
    """Caps librdkafka's log lines per test: a client spinning on a bad response can log thousands a second."""

    limit = 30

    def __init__(self):
        super().__init__()
        self.seen = 0

    def filter(self, record: logging.LogRecord) -> bool:
        self.seen += 1
        if self.seen == self.limit + 1:
            record.msg, record.args = f"(further librdkafka log lines suppressed: {self.limit} per test)", ()
        return self.seen <= self.limit + 1


_LOG_BUDGET = _LogBudget()
RDKAFKA_LOGGER = logging.getLogger("librdkafka")
RDKAFKA_LOGGER.addFilter(_LOG_BUDGET)


def reset_client_log_budget() -> None:
    _LOG_BUDGET.seen = 0


def _cf_base(broker: Broker) -> dict:
    return {
        "logger": RDKAFKA_LOGGER,
        "bootstrap.servers": broker.bootstrap,
        "broker.address.family": "v4",
        "socket.timeout.ms": CLIENT_TIMEOUT_MS,
        "socket.connection.setup.timeout.ms": CLIENT_TIMEOUT_MS,
    }


def cf_producer(broker: Broker, conf: dict | None = None):
    from confluent_kafka import Producer

    base = _cf_base(broker)
    base.update({"message.timeout.ms": 30_000, "request.timeout.ms": CLIENT_TIMEOUT_MS, "linger.ms": 5})
    base.update(conf or {})
    return Producer(base)


def cf_consumer(broker: Broker, group: str | None = None, conf: dict | None = None):
    from confluent_kafka import Consumer

    base = _cf_base(broker)
    base.update(
        {
            "group.id": group or unique("assign-only"),
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 10_000,
            "heartbeat.interval.ms": 1_000,
            "fetch.wait.max.ms": 100,
        }
    )
    base.update(conf or {})
    return Consumer(base)


def cf_admin(broker: Broker, conf: dict | None = None):
    from confluent_kafka.admin import AdminClient

    base = _cf_base(broker)
    base.update(conf or {})
    return AdminClient(base)


def create_topic(broker: Broker, name: str, partitions: int = 1, config: dict | None = None) -> None:
    """CreateTopics through librdkafka, then wait until Metadata shows every partition with a leader."""
    from confluent_kafka.admin import NewTopic

    admin = cf_admin(broker)
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=1, config=config or {})],
        request_timeout=15,
    )
    futures[name].result(timeout=20)
    wait_for_partitions(broker, name, partitions, admin=admin)


def wait_for(predicate, what: str, timeout: float = 30.0, every: float = 0.1):
    """Polls `predicate` until it returns something truthy (returned), or fails after `timeout` seconds
    saying what was awaited and the last value seen."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}; last: {last}")


def wait_for_partitions(broker: Broker, topic: str, count: int, admin=None, timeout: float = 10.0) -> None:
    admin = admin or cf_admin(broker)
    deadline = time.monotonic() + timeout
    seen = None
    while True:
        md = admin.list_topics(timeout=10)
        t = md.topics.get(topic)
        if t is not None and t.error is None:
            seen = {p: (pm.leader, pm.error) for p, pm in t.partitions.items()}
            if len(seen) == count and all(leader >= 0 and err is None for leader, err in seen.values()):
                return
        if time.monotonic() > deadline:
            raise AssertionError(f"topic {topic} not ready with {count} partitions; metadata: {seen}")
        time.sleep(0.1)


def partition_count(broker: Broker, topic: str) -> int:
    md = cf_admin(broker).list_topics(timeout=10)
    t = md.topics.get(topic)
    assert t is not None and t.error is None, f"topic {topic} missing from metadata: {t and t.error}"
    return len(t.partitions)


def cf_produce(producer, topic: str, records, flush_timeout: float = 60.0, check: bool = True):
    """Produce dicts {key, value, headers, partition, timestamp}; return delivery reports in send order.

    Each report is (error or None, Rec) with the offset the broker assigned. With check=True every report
    must be a success.
    """
    reports = [None] * len(records)

    def callback_for(i):
        def on_delivery(err, msg):
            reports[i] = (
                err,
                Rec(msg.topic(), msg.partition(), msg.offset(), msg.key(), msg.value(),
                    _norm_headers(msg.headers()), msg.timestamp()[1]),
            )

        return on_delivery

    for i, r in enumerate(records):
        kwargs = {"value": r.get("value"), "key": r.get("key"), "on_delivery": callback_for(i)}
        if r.get("headers") is not None:
            kwargs["headers"] = list(r["headers"])
        if r.get("partition") is not None:
            kwargs["partition"] = r["partition"]
        if r.get("timestamp") is not None:
            kwargs["timestamp"] = r["timestamp"]
        while True:
            try:
                producer.produce(topic, **kwargs)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    remaining = producer.flush(flush_timeout)
    assert remaining == 0, f"{remaining} records still undelivered after {flush_timeout}s"
    assert all(r is not None for r in reports), "missing delivery reports"
    if check:
        failed = [(i, err) for i, (err, _) in enumerate(reports) if err is not None]
        assert not failed, f"{len(failed)} deliveries failed, first: {failed[:3]}"
    return reports


def cf_consume(
    broker: Broker,
    topic: str,
    expected: int,
    timeout: float = 30.0,
    settle: float = 1.0,
    partitions=None,
    start_offset=None,
    conf: dict | None = None,
) -> list[Rec]:
    """Assign the topic's partitions (no group) from the beginning and read until `expected` records have
    arrived (or `timeout`), then keep polling `settle` seconds to catch extra records."""
    from confluent_kafka import OFFSET_BEGINNING, TopicPartition

    if partitions is None:
        partitions = range(partition_count(broker, topic))
    consumer = cf_consumer(broker, conf=conf)
    try:
        offset = OFFSET_BEGINNING if start_offset is None else start_offset
        consumer.assign([TopicPartition(topic, p, offset) for p in partitions])
        return _cf_poll(consumer, expected, timeout, settle)
    finally:
        consumer.close()


def _cf_poll(consumer, expected: int, timeout: float, settle: float) -> list[Rec]:
    from confluent_kafka import KafkaError

    out: list[Rec] = []
    deadline = time.monotonic() + timeout
    settle_until = None
    while True:
        now = time.monotonic()
        if settle_until is None and len(out) >= expected:
            settle_until = now + settle
        if settle_until is not None and now >= settle_until:
            break
        if settle_until is None and now >= deadline:
            break
        for msg in consumer.consume(num_messages=500, timeout=0.2):
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                raise AssertionError(f"consumer error: {err}")
            out.append(
                Rec(msg.topic(), msg.partition(), msg.offset(), msg.key(), msg.value(),
                    _norm_headers(msg.headers()), msg.timestamp()[1])
            )
    return out


# ---------------------------------------------------------------------------------------------------------
# kafka-python
# ---------------------------------------------------------------------------------------------------------


def kp_producer(broker: Broker, **overrides):
    from kafka import KafkaProducer

    conf = dict(
        bootstrap_servers=broker.bootstrap,
        request_timeout_ms=CLIENT_TIMEOUT_MS,
        bootstrap_timeout_ms=CLIENT_TIMEOUT_MS,
        max_block_ms=CLIENT_TIMEOUT_MS,
        delivery_timeout_ms=30_000,
        linger_ms=5,
        # Explicit: kafka-python 3 defaults to idempotence; the idempotence tests turn it on themselves.
        enable_idempotence=False,
    )
    conf.update(overrides)
    return KafkaProducer(**conf)


def kp_consumer(broker: Broker, *topics, **overrides):
    from kafka import KafkaConsumer

    conf = dict(
        bootstrap_servers=broker.bootstrap,
        request_timeout_ms=CLIENT_TIMEOUT_MS,
        bootstrap_timeout_ms=CLIENT_TIMEOUT_MS,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=10_000,
        heartbeat_interval_ms=1_000,
        fetch_max_wait_ms=100,
    )
    conf.update(overrides)
    return KafkaConsumer(*topics, **conf)


def kp_admin(broker: Broker, **overrides):
    from kafka import KafkaAdminClient

    conf = dict(
        bootstrap_servers=broker.bootstrap,
        request_timeout_ms=CLIENT_TIMEOUT_MS,
        bootstrap_timeout_ms=CLIENT_TIMEOUT_MS,
    )
    conf.update(overrides)
    return KafkaAdminClient(**conf)


def kp_produce(producer, topic: str, records, timeout: float = 30.0) -> list[Rec]:
    """Send dicts {key, value, headers, partition, timestamp}; wait for every ack; return the metadata."""
    futures = []
    for r in records:
        kwargs = {"key": r.get("key"), "value": r.get("value")}
        if r.get("headers") is not None:
            kwargs["headers"] = list(r["headers"])
        if r.get("partition") is not None:
            kwargs["partition"] = r["partition"]
        if r.get("timestamp") is not None:
            kwargs["timestamp_ms"] = r["timestamp"]
        futures.append((r, producer.send(topic, **kwargs)))
    producer.flush(timeout=timeout)
    out = []
    for r, fut in futures:
        md = fut.get(timeout=timeout)
        out.append(Rec(md.topic, md.partition, md.offset, r.get("key"), r.get("value"),
                       _norm_headers(r.get("headers")), md.timestamp))
    return out


def kp_consume(broker: Broker, topic: str, expected: int, timeout: float = 30.0, settle: float = 1.0,
               partitions=None) -> list[Rec]:
    from kafka import TopicPartition

    if partitions is None:
        partitions = range(partition_count(broker, topic))
    consumer = kp_consumer(broker)
    try:
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        return _kp_poll(consumer, expected, timeout, settle)
    finally:
        consumer.close(autocommit=False)


def _kp_poll(consumer, expected: int, timeout: float, settle: float) -> list[Rec]:
    out: list[Rec] = []
    deadline = time.monotonic() + timeout
    settle_until = None
    while True:
        now = time.monotonic()
        if settle_until is None and len(out) >= expected:
            settle_until = now + settle
        if settle_until is not None and now >= settle_until:
            break
        if settle_until is None and now >= deadline:
            break
        batches = consumer.poll(timeout_ms=200)
        for _tp, msgs in sorted(batches.items(), key=lambda kv: kv[0].partition):
            for m in msgs:
                out.append(Rec(m.topic, m.partition, m.offset, m.key, m.value,
                               _norm_headers(m.headers), m.timestamp))
    return out


# ---------------------------------------------------------------------------------------------------------
# kcat
# ---------------------------------------------------------------------------------------------------------


def kcat(broker: Broker, *args: str, input: bytes | None = None, timeout: int = 30) -> subprocess.CompletedProcess:
    """Run kcat against the broker under coreutils `timeout`, capturing bytes output."""
    cmd = [
        "timeout", str(timeout), "kcat", "-b", broker.bootstrap,
        "-X", "broker.address.family=v4",
        "-X", f"socket.timeout.ms={CLIENT_TIMEOUT_MS}",
        *args,
    ]
    return subprocess.run(cmd, input=input, capture_output=True, timeout=timeout + 5)


# ---------------------------------------------------------------------------------------------------------
# Assertions shared by modules
# ---------------------------------------------------------------------------------------------------------


def assert_contiguous_offsets(recs: list[Rec], start: dict | None = None) -> None:
    """Per partition, offsets are strictly increasing without gaps, from `start[p]` (default 0)."""
    by_part: dict[int, list[int]] = {}
    for r in recs:
        by_part.setdefault(r.partition, []).append(r.offset)
    for p, offsets in by_part.items():
        first = (start or {}).get(p, 0)
        want = list(range(first, first + len(offsets)))
        assert offsets == want, (
            f"partition {p}: offsets not contiguous from {first}: got {offsets[:10]}... "
            f"(len {len(offsets)}), first mismatch at index "
            f"{next((i for i, (a, b) in enumerate(zip(offsets, want)) if a != b), len(want))}"
        )


def assert_serves_traffic(broker: Broker) -> None:
    """The broker is healthy and a fresh produce + consume round-trip works."""
    assert_healthy(broker)
    topic = unique("probe")
    create_topic(broker, topic, 1)
    value = uuid.uuid4().hex.encode()
    reports = cf_produce(cf_producer(broker, {"acks": "all"}), topic, [{"key": b"probe", "value": value}])
    assert reports[0][1].offset == 0
    got = cf_consume(broker, topic, 1, timeout=15, settle=0.2)
    assert [(r.key, r.value) for r in got] == [(b"probe", value)]
