#!/usr/bin/env python3
"""Regenerates the committed seed corpora in fuzz/seeds/ from real clients and real stored data.

A `sluice` broker runs behind a recording TCP proxy (it advertises the proxy's port, so every
connection goes through it) while librdkafka (confluent-kafka) and kafka-python do what applications
do: admin calls, idempotent producers in every compression, a consumer group, a transaction. Then:

- request_decoder/: the client-to-broker frames (without their length prefix), a few per client, API
  key and version;
- record_batch/: batches cut from the partitions' segment files, alone and a few back to back, behind
  the target's flags byte (1: rewrite CRCs after mutation);
- log_recovery/: those segment files as the target reads its input (a flags byte, an optional
  recovery point, segments split by `#segment#`), whole, split in two, cut short and bit-flipped;
- admin_json/: request bodies for the admin API (an endpoint byte, then the JSON).

Finally `cargo run -p sluice-protocol --example fuzz_seeds` adds a codec-encoded request of every
supported API and version, and record batches in every compression.

Run from the repository root after `cargo build --release -p sluice-cli`:
    python3 fuzz/capture_seeds.py            # writes fuzz/seeds/
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from harness import Broker, free_ports  # noqa: E402

FRAME_SEED_BYTES_MAX = 32 * 1024
FRAMES_PER_KEY = 3
SEGMENT_SEED_BYTES_MAX = 48 * 1024
SEGMENT_SEPARATOR = b"#segment#"


class RecordingProxy:
    """Forwards 127.0.0.1:listen_port to the broker and keeps every request frame clients send."""

    def __init__(self, listen_port: int, target_port: int):
        self.target_port = target_port
        self.frames: list[tuple[str, bytes]] = []
        self.client = "setup"
        self.lock = threading.Lock()
        self.server = socket.create_server(("127.0.0.1", listen_port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                downstream, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            threading.Thread(target=self._requests, args=(downstream, upstream), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, downstream), daemon=True).start()

    def _requests(self, src: socket.socket, dst: socket.socket):
        pending = b""
        try:
            while chunk := src.recv(65536):
                dst.sendall(chunk)
                pending += chunk
                while len(pending) >= 4:
                    (size,) = struct.unpack(">i", pending[:4])
                    if len(pending) < 4 + size:
                        break
                    with self.lock:
                        self.frames.append((self.client, pending[4:4 + size]))
                    pending = pending[4 + size:]
        except OSError:
            pass
        finally:
            for s in (src, dst):
                s.close()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket):
        try:
            while chunk := src.recv(65536):
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                s.close()


def librdkafka_workload(bootstrap: str) -> None:
    from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient, ConfigResource, NewPartitions, NewTopic

    base = {"bootstrap.servers": bootstrap, "broker.address.family": "v4"}
    admin = AdminClient(base)
    for future in admin.create_topics(
        [NewTopic("orders", 3, 1, config={"retention.ms": "86400000"}), NewTopic("scratch", 1, 1)]
    ).values():
        future.result(timeout=20)
    admin.list_topics(timeout=10)
    resource = ConfigResource("topic", "orders")
    for future in admin.describe_configs([resource]).values():
        future.result(timeout=10)
    for compression in ("none", "gzip", "snappy", "lz4", "zstd"):
        producer = Producer(
            {**base, "acks": "all", "enable.idempotence": True, "compression.type": compression, "linger.ms": 5}
        )
        for i in range(20):
            producer.produce(
                "orders",
                key=f"customer-{i % 5}".encode(),
                value=f'{{"order": {i}, "codec": "{compression}", "note": "{"x" * (i * 3)}"}}'.encode(),
                headers=[("trace-id", f"{i:08x}".encode()), ("empty", None)],
            )
        assert producer.flush(20) == 0
    consumer = Consumer({**base, "group.id": "billing", "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe(["orders"])
    got = 0
    for _ in range(40):
        got += len(consumer.consume(num_messages=100, timeout=0.5))
        if got >= 100:
            break
    consumer.commit(asynchronous=False)
    consumer.committed([TopicPartition("orders", p) for p in range(3)], timeout=10)
    txn = Producer({**base, "transactional.id": "seed-txn", "acks": "all"})
    txn.init_transactions(20)
    txn.begin_transaction()
    txn.produce("scratch", key=b"k", value=b"in a transaction")
    txn.send_offsets_to_transaction(consumer.position(consumer.assignment()), consumer.consumer_group_metadata(), 20)
    txn.commit_transaction(20)
    txn.begin_transaction()
    txn.produce("scratch", value=b"aborted")
    txn.abort_transaction(20)
    consumer.close()
    for future in admin.create_partitions([NewPartitions("scratch", 2)]).values():
        future.result(timeout=10)
    try:
        for future in admin.list_consumer_groups().result(timeout=10).valid:
            pass
        for future in admin.describe_consumer_groups(["billing"]).values():
            future.result(timeout=10)
        admin.describe_cluster().result(timeout=10)
        for future in admin.delete_records([TopicPartition("scratch", 0, 1)]).values():
            future.result(timeout=10)
    except KafkaException as err:  # an API the broker refuses is still a seed
        print(f"librdkafka admin: {err}")
    for future in admin.delete_topics(["scratch"]).values():
        future.result(timeout=20)


def kafka_python_workload(bootstrap: str) -> None:
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
    from kafka.admin import ConfigResource, ConfigResourceType, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic("events", 2, 1)])
    admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, "events")])
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", compression_type="gzip")
    for i in range(10):
        producer.send("events", key=b"k%d" % i, value=b"event %d" % i, headers=[("h", b"v")])
    producer.flush(20)
    producer.close()
    consumer = KafkaConsumer(
        "events", bootstrap_servers=bootstrap, group_id="audit", auto_offset_reset="earliest",
        enable_auto_commit=False, consumer_timeout_ms=5000,
    )
    for i, _ in enumerate(consumer):
        if i >= 9:
            break
    consumer.commit()
    consumer.close()
    for call, args in (("list_consumer_groups", ()), ("list_groups", ()), ("describe_consumer_groups", (["audit"],))):
        if hasattr(admin, call):  # the names moved between kafka-python releases
            getattr(admin, call)(*args)
    admin.delete_topics(["events"])
    admin.close()


def write_request_seeds(frames: list[tuple[str, bytes]], out: Path) -> int:
    kept: dict[tuple[str, int, int], list[bytes]] = {}
    seen = set()
    for client, frame in frames:
        if len(frame) < 8 or len(frame) > FRAME_SEED_BYTES_MAX:
            continue
        digest = hashlib.sha1(frame).digest()
        if digest in seen:
            continue
        seen.add(digest)
        api_key, version = struct.unpack(">hh", frame[:4])
        bucket = kept.setdefault((client, api_key, version), [])
        if len(bucket) < FRAMES_PER_KEY:
            bucket.append(frame)
    for (client, api_key, version), bucket in kept.items():
        for i, frame in enumerate(bucket):
            (out / f"captured-{client}-key{api_key}-v{version}-{i}").write_bytes(frame)
    return sum(len(b) for b in kept.values())


def batches_of(segment: bytes) -> list[bytes]:
    out, position = [], 0
    while position + 12 <= len(segment):
        (length,) = struct.unpack(">i", segment[position + 8:position + 12])
        end = position + 12 + length
        if length < 49 or end > len(segment):
            break
        out.append(segment[position:end])
        position = end
    return out


def write_storage_seeds(data_dir: Path, batch_out: Path, log_out: Path) -> tuple[int, int]:
    batch_seeds: dict[bytes, bytes] = {}
    log_seeds: dict[str, bytes] = {}
    for log in sorted(data_dir.glob("*/*.log")):
        segment = log.read_bytes()
        batches = batches_of(segment)
        if not batches:
            continue
        for batch in batches:
            attributes = struct.unpack(">h", batch[21:23])[0]
            key = bytes([attributes & 0x3F])  # compression, timestamp type, transactional, control
            if key not in batch_seeds or len(batch) < len(batch_seeds[key]):
                batch_seeds[key] = batch
        batch_seeds[b"run-" + log.parent.name.encode()] = b"".join(batches[:3])
        whole = b""
        for batch in batches:
            if len(whole) + len(batch) > SEGMENT_SEED_BYTES_MAX:
                break
            whole += batch
        name = log.parent.name
        # Flags: bit 0 clean-shutdown marker, bit 1 recovery point follows, bit 2 rewrite CRCs.
        log_seeds[f"{name}-unclean"] = b"\x04" + whole
        log_seeds[f"{name}-clean"] = b"\x05" + whole
        log_seeds[f"{name}-recovery-point"] = b"\x06" + struct.pack(">q", 1) + whole
        cut = batches_of(whole)
        if len(cut) >= 2:
            half = len(cut) // 2
            log_seeds[f"{name}-two-segments"] = b"\x04" + b"".join(cut[:half]) + SEGMENT_SEPARATOR + b"".join(cut[half:])
        log_seeds[f"{name}-torn-tail"] = b"\x00" + whole[:-7]
        flipped = bytearray(whole)
        flipped[len(flipped) // 2] ^= 0x40
        log_seeds[f"{name}-bit-flip"] = b"\x00" + bytes(flipped)
    for i, (key, batch) in enumerate(sorted(batch_seeds.items())):
        (batch_out / f"stored-{i:02d}").write_bytes(b"\x01" + batch)
        if i == 0:
            (batch_out / "stored-exact-crc").write_bytes(b"\x00" + batch)
    for name, seed in log_seeds.items():
        (log_out / name).write_bytes(seed)
    return len(batch_seeds), len(log_seeds)


ADMIN_BODIES = [
    (0, '{"name": "orders", "partitions": 3}'),
    (0, '{"name": "orders", "partitions": 1, "configs": {"retention.ms": "86400000", "cleanup.policy": "delete"}}'),
    (0, '{"name": "logs", "replication_factor": 1, "configs": {"segment.bytes": "1048576", "max.message.bytes": "2000000"}}'),
    (0, '{"name": "x", "configs": {"message.timestamp.type": "LogAppendTime", "retention.bytes": "-1"}}'),
    (1, '{"name": "mask", "input_topic": "in", "output_topics": ["out"], "module_base64": "AGFzbQEAAAA="}'),
    (1, '{"name": "route", "input_topic": "in", "output_topics": ["a", "b"], "config": {"field": "country"},'
        ' "from": {"offset": 42}, "error_policy": {"dead_letter": "dlq"}, "partitioning": "same_as_input",'
        ' "memory_bytes": 16777216, "cpu_ms_per_call": 500, "batch_records": 100, "module_base64": ""}'),
    (1, '{"name": "retry", "input_topic": "in", "output_topics": ["out"], "from": {"timestamp": 1700000000000},'
        ' "error_policy": {"retry": {"max_attempts": 3, "backoff_ms": 100}}, "module_base64": "AGFzbQ=="}'),
    (1, '{"name": "latest", "input_topic": "in", "output_topics": ["out"], "from": "latest", "error_policy": "stop",'
        ' "partitioning": "key_hash", "module_base64": "AGFzbQEAAAA="}'),
    (2, '{"memory_bytes": 33554432, "cpu_ms_per_call": 1000}'),
    (2, '{"cpu_ms_per_call": 5}'),
    (2, '{}'),
]


def write_admin_seeds(out: Path) -> int:
    for i, (endpoint, body) in enumerate(ADMIN_BODIES):
        (out / f"body-{i:02d}").write_bytes(bytes([endpoint]) + body.encode())
    return len(ADMIN_BODIES)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "fuzz" / "seeds")
    args = parser.parse_args()
    dirs = {name: args.out / name for name in ("request_decoder", "record_batch", "log_recovery", "admin_json")}
    for d in dirs.values():
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)

    with tempfile.TemporaryDirectory() as scratch:
        (proxy_port,) = free_ports(1)
        broker = Broker(Path(scratch), [f"advertised.listeners=PLAINTEXT://127.0.0.1:{proxy_port}"])
        broker.start()
        try:
            proxy = RecordingProxy(proxy_port, broker.port)
            bootstrap = f"127.0.0.1:{proxy_port}"
            proxy.client = "librdkafka"
            librdkafka_workload(bootstrap)
            proxy.client = "kafka-python"
            kafka_python_workload(bootstrap)
            requests = write_request_seeds(proxy.frames, dirs["request_decoder"])
            broker.stop()
            batches, logs = write_storage_seeds(broker.data_dir, dirs["record_batch"], dirs["log_recovery"])
        finally:
            broker.kill9()
    admin = write_admin_seeds(dirs["admin_json"])
    print(f"captured {requests} request frames, {batches} record batches, {logs} segment seeds; {admin} admin bodies")
    subprocess.run(
        ["cargo", "run", "--quiet", "--release", "-p", "sluice-protocol", "--example", "fuzz_seeds", "--", str(args.out)],
        cwd=REPO, check=True,
    )


if __name__ == "__main__":
    main()
