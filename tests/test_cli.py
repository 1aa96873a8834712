"""End-to-end tests of the `sluice` client commands against a real broker, cross-checked with
confluent-kafka (librdkafka) where it matters: keys land in the partitions the Java partitioner picks,
records written by one client read back identically through the other, group members split partitions,
and offsets reset by `sluice group reset-offsets` are where a librdkafka consumer in that group starts.

Every command runs as a subprocess with a timeout, so a hang fails the test instead of the run.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from harness import (
    Broker,
    cf_consume,
    cf_consumer,
    cf_produce,
    cf_producer,
    create_topic,
    http_request,
    partition_count,
    require_binary,
    unique,
)

CLI_TIMEOUT_S = 60
# Group tests do not wait the default 3 s for more members before the first rebalance.
FAST_GROUPS = "group.initial.rebalance.delay.ms=100"


def cli_env(extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    env["NO_COLOR"] = "1"
    # No profile file from the machine running the tests.
    env["SLUICE_PROFILES"] = "/nonexistent/sluice-profiles.toml"
    env.update(extra or {})
    return env


def sluice(broker: Broker | None, *args: str, input: bytes | None = None, env: dict | None = None,
           timeout: float = CLI_TIMEOUT_S, check: bool = True) -> subprocess.CompletedProcess:
    """Run `sluice ARGS --brokers B --admin-url A`; with check=True it must exit 0."""
    cmd = [str(require_binary()), *args]
    if broker is not None:
        cmd += ["--brokers", broker.bootstrap, "--admin-url", broker.admin_url]
    proc = subprocess.run(cmd, input=input, capture_output=True, timeout=timeout, env=cli_env(env))
    if check:
        assert proc.returncode == 0, (
            f"{' '.join(cmd)} exited {proc.returncode}\nstdout: {proc.stdout.decode(errors='replace')[-2000:]}\n"
            f"stderr: {proc.stderr.decode(errors='replace')[-2000:]}"
        )
    return proc


def sluice_json(broker: Broker, *args: str, **kwargs):
    return json.loads(sluice(broker, *args, "--json", **kwargs).stdout)


def json_lines(out: bytes) -> list[dict]:
    return [json.loads(line) for line in out.decode().splitlines() if line.strip()]


def java_partition(broker: Broker, topic: str, keys: list[bytes]) -> dict[bytes, int]:
    """Where librdkafka's Java-compatible partitioner (murmur2) puts each key."""
    producer = cf_producer(broker, {"partitioner": "murmur2"})
    reports = cf_produce(producer, topic, [{"key": k, "value": b"probe"} for k in keys])
    return {k: rec.partition for k, (_, rec) in zip(keys, reports)}


# ---------------------------------------------------------------------------------------------------------
# topics
# ---------------------------------------------------------------------------------------------------------


def test_topic_create_list_describe_alter_grow_delete(broker):
    topic = unique("cli-topic")
    out = sluice(broker, "topic", "create", topic, "-p", "3", "-c", "retention.ms=3600000", "-c", "segment.bytes=1048576")
    assert b"3 partition" in out.stdout
    assert partition_count(broker, topic) == 3

    listed = sluice_json(broker, "topic", "list")
    entry = next(t for t in listed if t["name"] == topic)
    assert entry["partitions"] == 3 and entry["replicas"] == 1
    assert topic in sluice(broker, "topic", "list").stdout.decode()

    cf_produce(cf_producer(broker), topic, [{"value": b"x", "partition": 1} for _ in range(4)])
    described = sluice_json(broker, "topic", "describe", topic)
    assert [p["partition"] for p in described["partitions"]] == [0, 1, 2]
    p1 = described["partitions"][1]
    assert (p1["low_watermark"], p1["high_watermark"], p1["leader"], p1["isr"]) == (0, 4, p1["replicas"][0], p1["replicas"])
    configs = {c["name"]: (c["value"], c["source"]) for c in described["configs"]}
    assert configs == {"retention.ms": ("3600000", "topic"), "segment.bytes": ("1048576", "topic")}
    text = sluice(broker, "topic", "describe", topic).stdout.decode()
    assert "retention.ms" in text and "HIGH" in text

    sluice(broker, "topic", "alter-config", topic, "--set", "retention.ms=7200000", "--delete", "segment.bytes")
    configs = {c["name"]: c["value"] for c in sluice_json(broker, "topic", "describe", topic)["configs"]}
    assert configs == {"retention.ms": "7200000"}
    all_configs = sluice_json(broker, "topic", "describe", topic, "--all-configs")["configs"]
    assert any(c["name"] == "segment.bytes" and c["source"] != "topic" for c in all_configs)

    sluice(broker, "topic", "add-partitions", topic, "-p", "5")
    assert partition_count(broker, topic) == 5
    shrink = sluice(broker, "topic", "add-partitions", topic, "-p", "2", check=False)
    assert shrink.returncode == 2 and b"already has 5 partitions" in shrink.stderr

    again = sluice(broker, "topic", "create", topic, check=False)
    assert again.returncode == 1 and b"already exists" in again.stderr
    sluice(broker, "topic", "create", topic, "--if-not-exists")

    sluice(broker, "topic", "delete", topic)
    assert topic not in [t["name"] for t in sluice_json(broker, "topic", "list")]
    gone = sluice(broker, "topic", "describe", topic, check=False)
    assert gone.returncode == 1
    assert f"topic `{topic}` does not exist on {broker.bootstrap}".encode() in gone.stderr


def test_bad_topic_config_is_reported(broker):
    bad = sluice(broker, "topic", "create", unique("cli-bad"), "-c", "no.such.setting=1", check=False)
    assert bad.returncode == 1
    assert b"creating topic" in bad.stderr and b"no.such.setting" in bad.stderr


def test_delete_records_by_offset_and_time(broker):
    topic = unique("cli-del")
    create_topic(broker, topic, 2)
    producer = cf_producer(broker)
    cf_produce(producer, topic, [{"value": b"old-%d" % i, "partition": 0, "timestamp": 1_000_000 + i} for i in range(10)])
    cf_produce(producer, topic, [{"value": b"old", "partition": 1, "timestamp": 1_000_000} for _ in range(3)])
    # Dated now: the broker refuses CreateTime records more than message.timestamp.after.max.ms (1 h) ahead.
    cf_produce(producer, topic, [{"value": b"new", "partition": 1, "timestamp": int(time.time() * 1000)} for _ in range(2)])

    out = sluice_json(broker, "topic", "delete-records", topic, "--partition", "0", "--offset", "4")
    assert out["partitions"] == [{"partition": 0, "low_watermark": 4}]
    got = cf_consume(broker, topic, 6, partitions=[0], settle=0.3)
    assert [r.value for r in got] == [b"old-%d" % i for i in range(4, 10)]

    # --before deletes everything older than the time, in every partition.
    out = sluice_json(broker, "topic", "delete-records", topic, "--before", "1970-01-01T00:16:40.005Z")
    assert {p["partition"]: p["low_watermark"] for p in out["partitions"]} == {0: 5, 1: 3}
    lows = {p["partition"]: p["low_watermark"] for p in sluice_json(broker, "topic", "describe", topic)["partitions"]}
    assert lows == {0: 5, 1: 3}

    missing = sluice(broker, "topic", "delete-records", topic, "--partition", "9", "--offset", "1", check=False)
    assert missing.returncode == 2 and b"no partition 9" in missing.stderr


# ---------------------------------------------------------------------------------------------------------
# produce
# ---------------------------------------------------------------------------------------------------------


def test_produce_keys_headers_land_where_java_puts_them(broker):
    topic, reference = unique("cli-keys"), unique("cli-ref")
    create_topic(broker, topic, 6)
    create_topic(broker, reference, 6)
    keys = [f"user-{i}".encode() for i in range(40)]
    lines = b"".join(b"%s::value %d: with:colons\n" % (k, i) for i, k in enumerate(keys))
    sluice(broker, "produce", topic, "--key-separator", "::", "-H", "source=cli", "-H", "trace=a=b", input=lines)

    got = cf_consume(broker, topic, len(keys), settle=0.5)
    assert len(got) == len(keys)
    expected_partition = java_partition(broker, reference, keys)
    for rec in got:
        i = keys.index(rec.key)
        assert rec.value == b"value %d: with:colons" % i
        assert rec.headers == (("source", b"cli"), ("trace", b"a=b"))
        assert rec.partition == expected_partition[rec.key], f"key {rec.key!r}"
    assert len({r.partition for r in got}) > 1


@pytest.mark.parametrize("compression", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_produce_file_with_compression_and_summary(broker, tmp_path, compression):
    topic = unique("cli-file")
    create_topic(broker, topic, 3)
    path = tmp_path / "in.txt"
    values = [f"record {i} " + "x" * (i % 50) for i in range(5000)]
    path.write_text("\n".join(values) + "\n")
    out = sluice_json(broker, "produce", topic, "--file", str(path), "--compression", compression, "--acks", "all")
    assert (out["records"], out["failed"]) == (5000, 0)
    assert sum(p["last_offset"] - p["first_offset"] + 1 for p in out["partitions"].values()) == 5000
    got = cf_consume(broker, topic, 5000, settle=0.3)
    assert sorted(r.value.decode() for r in got) == sorted(values)
    # Per partition, the file's order is kept.
    for p in range(3):
        mine = [r.value.decode() for r in sorted((r for r in got if r.partition == p), key=lambda r: r.offset)]
        assert mine == sorted(mine, key=values.index)

    summary = sluice(broker, "produce", topic, "--file", str(path), "--acks", "1").stderr.decode()
    assert "produced 5,000 records" in summary and "records/s" in summary


def test_produce_to_one_partition_with_acks_0(broker):
    topic = unique("cli-p")
    create_topic(broker, topic, 3)
    sluice(broker, "produce", topic, "--partition", "2", "--acks", "0", input=b"a\nb\r\n\nc")
    got = cf_consume(broker, topic, 4, settle=0.3)
    assert [(r.partition, r.value) for r in got] == [(2, b"a"), (2, b"b"), (2, b""), (2, b"c")]


def test_produce_refuses_oversized_lines(broker):
    topic = unique("cli-big")
    create_topic(broker, topic, 1, config={"max.message.bytes": "2000"})
    too_big = sluice(broker, "produce", topic, input=b"small\n" + b"y" * 5000 + b"\n", check=False)
    assert too_big.returncode == 1
    assert b"line 2" in too_big.stderr and b"max.message.bytes (2000)" in too_big.stderr
    too_long = sluice(broker, "produce", topic, "--max-line-bytes", "10", input=b"0123456789abc\n", check=False)
    assert too_long.returncode == 1 and b"longer than --max-line-bytes (10 bytes)" in too_long.stderr
    no_sep = sluice(broker, "produce", topic, "-K", ":", input=b"k:v\nnovalue\n", check=False)
    assert no_sep.returncode == 1 and b"line 2 has no key separator" in no_sep.stderr


def test_produce_and_consume_unknown_topic(broker):
    for args in (["produce", "nope-topic"], ["consume", "nope-topic", "-e"]):
        proc = sluice(broker, *args, input=b"x\n", check=False)
        assert proc.returncode == 1, args
        assert b"topic `nope-topic` does not exist" in proc.stderr and broker.bootstrap.encode() in proc.stderr


# ---------------------------------------------------------------------------------------------------------
# consume
# ---------------------------------------------------------------------------------------------------------


def test_consume_json_reads_what_librdkafka_wrote(broker):
    topic = unique("cli-json")
    create_topic(broker, topic, 2)
    records = [
        {"key": b"k1", "value": b"hello", "headers": [("h1", b"v1"), ("bin", b"\xff\x00")], "partition": 0},
        {"key": None, "value": b"\x00\x01\xfe", "partition": 1},
        {"key": b"k3", "value": "héllo".encode(), "partition": 0, "timestamp": 1_700_000_000_000},
    ]
    cf_produce(cf_producer(broker, {"compression.type": "lz4"}), topic, records)
    out = sluice(broker, "consume", topic, "--from-beginning", "-e", "--format", "json")
    got = sorted(json_lines(out.stdout), key=lambda r: (r["partition"], r["offset"]))
    assert [(r["topic"], r["partition"], r["offset"]) for r in got] == [(topic, 0, 0), (topic, 0, 1), (topic, 1, 0)]
    assert got[0]["key"] == "k1" and got[0]["value"] == "hello"
    assert got[0]["headers"] == {"h1": "v1", "bin": {"base64": base64.b64encode(b"\xff\x00").decode()}}
    assert got[1]["value"] == "héllo" and got[1]["timestamp"] == 1_700_000_000_000
    assert got[2]["key"] is None and got[2]["value"] == {"base64": base64.b64encode(b"\x00\x01\xfe").decode()}
    assert got[2]["headers"] == {}
    # --json is the same as --format json.
    assert json_lines(sluice(broker, "consume", topic, "--from-beginning", "-e", "--json").stdout) == json_lines(out.stdout)


def test_consume_positions_count_and_templates(broker):
    topic = unique("cli-pos")
    create_topic(broker, topic, 2)
    producer = cf_producer(broker)
    cf_produce(producer, topic, [{"key": b"k%d" % i, "value": b"v%d" % i, "partition": 0, "timestamp": 1_000 * (i + 1),
                                  "headers": [("n", b"%d" % i)]} for i in range(10)])
    text = sluice(broker, "consume", topic, "-p", "0", "--offset", "7", "-e").stdout
    assert text == b"v7\nv8\nv9\n"
    assert sluice(broker, "consume", topic, "-p", "0", "--offset", "-2", "-e").stdout == b"v8\nv9\n"
    assert sluice(broker, "consume", topic, "--from-time", "5000", "-e").stdout == b"v4\nv5\nv6\nv7\nv8\nv9\n"
    assert sluice(broker, "consume", topic, "--from-time", "1970-01-01T00:00:09Z", "-e").stdout == b"v8\nv9\n"
    assert sluice(broker, "consume", topic, "--from-beginning", "-n", "3").stdout == b"v0\nv1\nv2\n"
    templ = sluice(broker, "consume", topic, "--from-beginning", "-n", "2", "--format", "%t|%p|%o|%k|%v|%h|%T").stdout.decode()
    assert templ == f"{topic}|0|0|k0|v0|n=0|1000\n{topic}|0|1|k1|v1|n=1|2000\n"
    # Without a start flag the consumer begins at the end: -e then prints nothing.
    assert sluice(broker, "consume", topic, "-e").stdout == b""


def test_consume_waits_for_new_records_and_stops_on_sigterm(broker):
    topic = unique("cli-follow")
    create_topic(broker, topic, 1)
    proc = subprocess.Popen([str(require_binary()), "consume", topic, "--brokers", broker.bootstrap, "--format", "%o:%v"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env())
    try:
        time.sleep(1.5)
        cf_produce(cf_producer(broker), topic, [{"value": b"live"}])
        line = proc.stdout.readline()
        assert line == b"0:live\n"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()


# ---------------------------------------------------------------------------------------------------------
# groups
# ---------------------------------------------------------------------------------------------------------


def read_until(stream, predicate, timeout: float) -> list[str]:
    """Reads lines from a pipe (in a thread-free way: the child writes little) until predicate(lines)."""
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(stream, selectors.EVENT_READ)
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    buf = b""
    while not predicate(lines):
        left = deadline - time.monotonic()
        assert left > 0, f"timed out; lines so far: {lines}"
        if sel.select(timeout=min(left, 0.5)):
            chunk = os.read(stream.fileno(), 65536)
            if not chunk:
                break
            buf += chunk
            *complete, buf = buf.split(b"\n")
            lines += [c.decode(errors="replace") for c in complete]
    return lines


def assigned(lines: list[str]) -> set[int] | None:
    joined = [line for line in lines if "joined group" in line]
    if not joined:
        return None
    inside = joined[-1].split("[", 1)[1].split("]", 1)[0]
    return {int(p) for p in inside.split(",") if p}


def test_two_group_consumers_split_partitions(make_broker):
    broker = make_broker(FAST_GROUPS)
    topic, group = unique("cli-split"), unique("cli-g")
    create_topic(broker, topic, 4)
    cmd = [str(require_binary()), "consume", topic, "--group", group, "--from-beginning", "--format", "%p %v",
           "--brokers", broker.bootstrap]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env())
    second = None
    try:
        err1 = read_until(first.stderr, lambda ls: assigned(ls) == {0, 1, 2, 3}, 20)
        second = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env())
        err2 = read_until(second.stderr, lambda ls: assigned(ls) is not None and len(assigned(ls)) == 2, 30)
        err1 += read_until(first.stderr, lambda ls: assigned(err1 + ls) is not None and len(assigned(err1 + ls)) == 2, 30)
        mine1, mine2 = assigned(err1), assigned(err2)
        assert mine1 | mine2 == {0, 1, 2, 3} and not mine1 & mine2
        # The range assignor gives the member with the smaller id partitions 0-1.
        assert {frozenset(mine1), frozenset(mine2)} == {frozenset({0, 1}), frozenset({2, 3})}

        values = [{"value": b"r%d" % i, "partition": i % 4} for i in range(40)]
        cf_produce(cf_producer(broker), topic, values)
        time.sleep(3)
        for proc in (first, second):
            proc.send_signal(signal.SIGTERM)
        outs = [proc.communicate(timeout=15)[0].decode().splitlines() for proc in (first, second)]
        assert first.returncode == 0 and second.returncode == 0
        for out, mine in zip(outs, (mine1, mine2)):
            assert {int(line.split()[0]) for line in out} == mine
        assert sorted(line.split()[1] for out in outs for line in out) == sorted(f"r{i}" for i in range(40))

        # Both left and committed: the group is empty, with every partition caught up.
        described = sluice_json(broker, "group", "describe", group)
        assert described["state"] == "Empty" and described["members"] == []
        assert {(p["partition"], p["committed_offset"], p["lag"]) for p in described["partitions"]} == {(p, 10, 0) for p in range(4)}
    finally:
        for proc in (first, second):
            if proc is not None:
                proc.kill()


def test_group_describe_lag_reset_offsets_and_delete(make_broker):
    broker = make_broker(FAST_GROUPS)
    topic, group = unique("cli-lag"), unique("cli-g")
    create_topic(broker, topic, 2)
    producer = cf_producer(broker)
    cf_produce(producer, topic, [{"value": b"a%d" % i, "partition": i % 2, "timestamp": 1_000_000 + i} for i in range(10)])

    out = sluice(broker, "consume", topic, "--group", group, "--from-beginning", "-n", "3")
    assert len(out.stdout.splitlines()) == 3
    described = sluice_json(broker, "group", "describe", group)
    assert described["state"] == "Empty"
    assert sum(p["committed_offset"] for p in described["partitions"]) == 3
    assert described["total_lag"] == 7
    assert all(p["end_offset"] == 5 for p in described["partitions"])
    text = sluice(broker, "group", "describe", group).stdout.decode()
    assert "LOG-END-OFFSET" in text and "LAG" in text

    listed = sluice_json(broker, "group", "list")
    assert {"group": group, "state": "Empty", "protocol_type": "consumer"} in listed

    # A dry run prints the plan and commits nothing.
    plan = sluice_json(broker, "group", "reset-offsets", group, "--topic", topic, "--to-latest", "--dry-run")
    assert plan["dry_run"] and {p["new_offset"] for p in plan["partitions"]} == {5}
    assert sluice_json(broker, "group", "describe", group)["total_lag"] == 7
    assert b"dry run" in sluice(broker, "group", "reset-offsets", group, "--topic", topic, "--to-latest", "--dry-run").stdout

    sluice(broker, "group", "reset-offsets", group, "--topic", topic, "--to-earliest")
    assert {p["committed_offset"] for p in sluice_json(broker, "group", "describe", group)["partitions"]} == {0}
    sluice(broker, "group", "reset-offsets", group, "--topic", topic, "--shift-by", "3")
    assert {p["committed_offset"] for p in sluice_json(broker, "group", "describe", group)["partitions"]} == {3}
    sluice(broker, "group", "reset-offsets", group, "--topic", topic, "--shift-by", "-100")
    assert {p["committed_offset"] for p in sluice_json(broker, "group", "describe", group)["partitions"]} == {0}
    # Records 1_000_006.. are offsets 3 and 4 in each partition (timestamps alternate between partitions).
    sluice(broker, "group", "reset-offsets", group, "--topic", topic, "--to-datetime", "1970-01-01T00:16:40.006Z")
    assert {p["partition"]: p["committed_offset"] for p in sluice_json(broker, "group", "describe", group)["partitions"]} == {0: 3, 1: 3}

    # A librdkafka consumer in the group starts where the reset put it.
    consumer = cf_consumer(broker, group=group)
    try:
        consumer.subscribe([topic])
        seen = []
        deadline = time.monotonic() + 30
        while len(seen) < 4 and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                seen.append((msg.partition(), msg.offset()))
        assert sorted(seen) == [(0, 3), (0, 4), (1, 3), (1, 4)]
        # While it is a member, resets and deletes are refused with advice.
        refused = sluice(broker, "group", "reset-offsets", group, "--topic", topic, "--to-earliest", check=False)
        assert refused.returncode == 1 and b"active member" in refused.stderr and b"stop its consumers" in refused.stderr
        busy = sluice(broker, "group", "delete", group, check=False)
        assert busy.returncode == 1 and b"active members" in busy.stderr
    finally:
        consumer.close()

    sluice(broker, "group", "delete", group)
    assert group not in [g["group"] for g in sluice_json(broker, "group", "list")]
    unknown = sluice(broker, "group", "describe", unique("cli-none"), check=False)
    assert unknown.returncode == 1 and b"does not exist" in unknown.stderr


# ---------------------------------------------------------------------------------------------------------
# cluster, verify
# ---------------------------------------------------------------------------------------------------------


def test_cluster_info(broker):
    info = sluice_json(broker, "cluster", "info")
    _, _, body = http_request("GET", f"{broker.admin_url}/health")
    health = json.loads(body)
    assert info["cluster_id"] == health["cluster_id"]
    assert info["brokers"] == [{"id": health["node_id"], "host": "127.0.0.1", "port": broker.port, "rack": None, "controller": True}]
    assert info["admin"]["reachable"] and info["admin"]["health"]["status"] == "ok"
    assert info["apis_supported"] > 10
    text = sluice(broker, "cluster", "info").stdout.decode()
    assert health["cluster_id"] in text and "Admin API" in text
    # A wrong admin URL is reported, not fatal: the Kafka listener answered.
    dead_port = free_port()
    proc = subprocess.run([str(require_binary()), "cluster", "info", "--json", "--brokers", broker.bootstrap,
                           "--admin-url", f"http://127.0.0.1:{dead_port}"], capture_output=True, timeout=30, env=cli_env())
    assert proc.returncode == 0
    assert json.loads(proc.stdout)["admin"]["reachable"] is False


def test_verify_produce_then_consume(broker):
    topic = unique("cli-verify")
    create_topic(broker, topic, 3)
    produced = sluice_json(broker, "verify", "produce", "--topic", topic, "--count", "3000", "--acks", "all")
    assert (produced["acked"], produced["failed"]) == (3000, 0)
    assert produced["latency_ms"]["p50"] is not None and produced["latency_ms"]["p99"] >= produced["latency_ms"]["p50"]
    checked = sluice_json(broker, "verify", "consume", "--topic", topic, "--expect", "3000")
    assert checked == {**checked, "records": 3000, "unique": 3000, "missing": 0, "duplicates": 0, "ok": True}

    # Lose some records and duplicate one: the check fails and says what is wrong.
    sluice(broker, "topic", "delete-records", topic, "--partition", "0", "--offset", "10")
    cf_produce(cf_producer(broker), topic, [{"value": b"2999", "partition": 1}])
    bad = sluice(broker, "verify", "consume", "--topic", topic, "--expect", "3000", "--json", check=False)
    assert bad.returncode == 1
    report = json.loads(bad.stdout)
    assert (report["missing"], report["duplicates"], report["ok"]) == (10, 1, False)
    assert b"sequence check failed" in bad.stderr


# ---------------------------------------------------------------------------------------------------------
# errors, conventions
# ---------------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("args", [["topic", "list"], ["group", "list"], ["cluster", "info"], ["consume", "t", "-e"],
                                  ["produce", "t"], ["verify", "consume", "--topic", "t"]])
def test_unreachable_broker_fails_fast_with_exit_3(args):
    addr = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    proc = subprocess.run([str(require_binary()), *args, "--brokers", addr], input=b"x\n", capture_output=True,
                          timeout=30, env=cli_env())
    assert time.monotonic() - started < 5
    assert proc.returncode == 3, proc.stderr
    assert f"cannot connect to broker at {addr}".encode() in proc.stderr
    assert b"sluice server" in proc.stderr  # what to try


def test_silent_broker_times_out_within_seconds():
    # A peer that accepts TCP connections but never answers: the handshake gives up in seconds.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        addr = "127.0.0.1:%d" % silent.getsockname()[1]
        started = time.monotonic()
        proc = subprocess.run([str(require_binary()), "topic", "list", "--brokers", addr],
                              capture_output=True, timeout=30, env=cli_env())
        elapsed = time.monotonic() - started
    assert elapsed < 12
    assert proc.returncode == 3
    assert f"broker at {addr} accepted the connection but sent no ApiVersions response".encode() in proc.stderr


@pytest.mark.parametrize("args, message", [
    (["topic", "create"], b"required"),
    (["topic", "create", "x", "-p", "0"], b"-p"),
    (["produce", "t", "--acks", "2"], b"--acks"),
    (["produce", "t", "--compression", "brotli"], b"--compression"),
    (["consume", "t", "--offset", "3", "--group", "g"], b"cannot be used with"),
    (["consume", "t", "--from-time", "yesterday"], b"not a time"),
    (["group", "reset-offsets", "g", "--topic", "t"], b"required"),
    (["topic", "list", "--bogus"], b"--bogus"),
    (["completions", "powershell-9"], b"invalid value"),
])
def test_bad_flags_exit_2(args, message):
    proc = subprocess.run([str(require_binary()), *args], capture_output=True, timeout=30, env=cli_env())
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr


def test_usage_errors_found_after_parsing_exit_2(broker, tmp_path):
    assert sluice(broker, "topic", "alter-config", "x", check=False).returncode == 2
    missing_file = sluice(broker, "produce", "t", "--file", str(tmp_path / "nope.txt"), check=False)
    assert missing_file.returncode == 2 and b"cannot open" in missing_file.stderr
    bad_format = sluice(broker, "consume", "t", "--format", "%q", check=False)
    assert bad_format.returncode == 2 and b"unknown placeholder %q" in bad_format.stderr
    bad_addr = subprocess.run([str(require_binary()), "topic", "list", "--brokers", "http://x:1"], capture_output=True,
                              timeout=30, env=cli_env())
    assert bad_addr.returncode == 2 and b"must be host:port" in bad_addr.stderr


def test_env_and_profiles(broker, tmp_path):
    topic = unique("cli-prof")
    create_topic(broker, topic, 1)
    binary = str(require_binary())
    run = lambda *args, env: subprocess.run([binary, *args], capture_output=True, timeout=30, env=cli_env(env))

    # Environment variables.
    out = run("topic", "list", "--json", env={"SLUICE_BROKERS": broker.bootstrap})
    assert out.returncode == 0 and topic in [t["name"] for t in json.loads(out.stdout)]

    profiles = tmp_path / "profiles.toml"
    dead = f"127.0.0.1:{free_port()}"
    profiles.write_text(
        f'default = "local"\n[profiles.local]\nbrokers = "{broker.bootstrap}"\nadmin_url = "{broker.admin_url}"\n'
        f'[profiles.dead]\nbrokers = ["{dead}"]\n'
    )
    env = {"SLUICE_PROFILES": str(profiles)}
    # The file's default profile.
    out = run("cluster", "info", "--json", env=env)
    assert out.returncode == 0 and json.loads(out.stdout)["admin"]["reachable"] is True
    # --profile and SLUICE_PROFILE pick another one.
    assert run("topic", "list", "--profile", "dead", env=env).returncode == 3
    assert run("topic", "list", env={**env, "SLUICE_PROFILE": "dead"}).returncode == 3
    # Environment beats profile, flag beats environment.
    assert run("topic", "list", "--profile", "dead", env={**env, "SLUICE_BROKERS": broker.bootstrap}).returncode == 0
    assert run("topic", "list", "--brokers", broker.bootstrap, env={**env, "SLUICE_BROKERS": dead}).returncode == 0
    # XDG_CONFIG_HOME is where the file is looked for by default.
    xdg = tmp_path / "xdg"
    (xdg / "sluice").mkdir(parents=True)
    (xdg / "sluice" / "profiles.toml").write_text(profiles.read_text())
    xdg_env = {k: v for k, v in cli_env({"XDG_CONFIG_HOME": str(xdg)}).items() if k != "SLUICE_PROFILES"}
    out = subprocess.run([binary, "topic", "list", "--json"], capture_output=True, timeout=30, env=xdg_env)
    assert out.returncode == 0 and topic in out.stdout.decode()
    # An unknown profile is a usage error naming the known ones.
    unknown = run("topic", "list", "--profile", "prod", env=env)
    assert unknown.returncode == 2 and b"profile `prod` is not defined" in unknown.stderr and b"dead, local" in unknown.stderr


def test_help_has_examples_and_completions_generate():
    binary = str(require_binary())
    commands = [["topic", c] for c in ("create", "list", "describe", "alter-config", "add-partitions", "delete", "delete-records")]
    commands += [["group", c] for c in ("list", "describe", "reset-offsets", "delete")]
    commands += [["produce"], ["consume"], ["cluster", "info"], ["verify", "produce"], ["verify", "consume"], ["bench", "produce"]]
    for cmd in commands:
        out = subprocess.run([binary, *cmd, "--help"], capture_output=True, timeout=30, env=cli_env())
        assert out.returncode == 0 and b"Example" in out.stdout and b"sluice " in out.stdout, cmd
    top = subprocess.run([binary, "--help"], capture_output=True, timeout=30, env=cli_env()).stdout
    assert b"Exit codes" in top and b"SLUICE_BROKERS" in top
    for shell, marker in (("bash", b"complete"), ("zsh", b"#compdef sluice"), ("fish", b"complete -c sluice")):
        out = subprocess.run([binary, "completions", shell], capture_output=True, timeout=30, env=cli_env())
        assert out.returncode == 0 and marker in out.stdout and b"reset-offsets" in out.stdout, shell


def test_consume_into_closed_pipe_exits_quietly(broker):
    topic = unique("cli-pipe")
    create_topic(broker, topic, 1)
    cf_produce(cf_producer(broker), topic, [{"value": b"v" * 100} for _ in range(5000)])
    shell = f"{require_binary()} consume {topic} --brokers {broker.bootstrap} --from-beginning -e | head -n 1"
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", shell], capture_output=True, timeout=30, env=cli_env())
    assert proc.stdout == b"v" * 100 + b"\n"
    assert b"panicked" not in proc.stderr


# ---------------------------------------------------------------------------------------------------------
# server logs
# ---------------------------------------------------------------------------------------------------------


def start_logging_broker(make_broker, tmp_path, *extra: str) -> tuple[Broker, Path]:
    """A broker whose stderr (only) goes to a file, started WITHOUT NO_COLOR in its environment (the harness
    sets it for every other broker, which hid the bug), so colour depends on the terminal check alone."""
    broker = make_broker(start=False, extra_args=extra)
    log_path = tmp_path / "stderr.log"
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "SLUICE_LOG_FORMAT")}
    env["RUST_LOG"] = "info"
    with open(log_path, "wb") as log:
        broker.proc = subprocess.Popen(broker.command(), stdout=subprocess.DEVNULL, stderr=log, stdin=subprocess.DEVNULL, env=env)
    broker.wait_ready()
    # Something that logs beyond start-up: a topic created through the Kafka protocol.
    create_topic(broker, unique("cli-logs"), 1)
    return broker, log_path


def test_server_logs_to_a_file_carry_no_colour_codes(make_broker, tmp_path):
    broker, log_path = start_logging_broker(make_broker, tmp_path)
    broker.kill9()
    text = log_path.read_bytes()
    assert b"INFO" in text, text[-2000:]
    assert b"\x1b[" not in text, f"ANSI escape codes in a log written to a file: {text[:500]!r}"


def test_server_log_format_json_writes_one_object_per_line(make_broker, tmp_path):
    broker, log_path = start_logging_broker(make_broker, tmp_path, "--log-format", "json")
    broker.kill9()
    lines = [line for line in log_path.read_text().splitlines() if line.strip()]
    assert len(lines) >= 2, lines
    for line in lines:
        entry = json.loads(line)
        assert entry["level"] in ("TRACE", "DEBUG", "INFO", "WARN", "ERROR"), entry
        assert isinstance(entry.get("message"), str) and entry["message"], entry
        assert "timestamp" in entry and "target" in entry, entry
    bad = subprocess.run([str(require_binary()), "server", "--log-format", "xml"], capture_output=True, timeout=30, env=cli_env())
    assert bad.returncode == 2 and b"--log-format" in bad.stderr
