"""Broker configuration: Kafka setting names through --set and --config FILE.toml, validated at start-up."""

from __future__ import annotations

import subprocess

import pytest

from harness import cf_admin, cf_produce, cf_producer, free_ports, partition_count, require_binary, unique

START_FAIL_TIMEOUT_S = 10


def run_expecting_failure(tmp_path, *args: str) -> str:
    """Start `sluice server` with `args`; it must exit non-zero on its own. Returns its stdout+stderr."""
    port, admin_port = free_ports(2)
    cmd = [str(require_binary()), "server", "--data-dir", str(tmp_path / "data"),
           "--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin_port}", *args]
    try:
        out = subprocess.run(cmd, capture_output=True, timeout=START_FAIL_TIMEOUT_S)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"{args} was accepted: the broker was still running after {START_FAIL_TIMEOUT_S}s "
                    f"(output: {(err.stdout or b'')[-2000:]!r} {(err.stderr or b'')[-2000:]!r})")
    text = (out.stdout + out.stderr).decode(errors="replace")
    assert out.returncode != 0, f"exit code 0 for {args}:\n{text[-2000:]}"
    return text


def auto_created_partitions(broker) -> int:
    """Partition count of a topic created implicitly by producing to it (auto.create.topics.enable)."""
    topic = unique("cfg-auto")
    cf_produce(cf_producer(broker, {"acks": "all"}), topic, [{"value": b"x"}])
    return partition_count(broker, topic)


def test_unknown_setting_is_rejected(tmp_path):
    text = run_expecting_failure(tmp_path, "--set", "foo.bar=1")
    assert "foo.bar" in text, f"the error should name the unknown setting:\n{text[-2000:]}"


@pytest.mark.parametrize("setting", ["num.partitions=abc", "log.segment.bytes=-5", "auto.create.topics.enable=maybe"])
def test_invalid_value_is_rejected(tmp_path, setting):
    name = setting.split("=")[0]
    text = run_expecting_failure(tmp_path, "--set", setting)
    assert name in text, f"the error should name {name}:\n{text[-2000:]}"


def test_malformed_set_argument_is_rejected(tmp_path):
    run_expecting_failure(tmp_path, "--set", "num.partitions")


def test_set_num_partitions_applies_to_auto_created_topics(make_broker):
    broker = make_broker("num.partitions=3")
    assert auto_created_partitions(broker) == 3


def test_auto_create_can_be_disabled(make_broker):
    broker = make_broker("auto.create.topics.enable=false")
    topic = unique("cfg-noauto")
    # A producer's metadata request asks for auto-creation (librdkafka's allow.auto.create.topics=true).
    md = cf_producer(broker).list_topics(topic=topic, timeout=10)
    t = md.topics.get(topic)
    assert t is None or t.error is not None, f"{topic} was auto-created although auto-creation is disabled"
    assert topic not in cf_admin(broker).list_topics(timeout=10).topics


@pytest.mark.parametrize(
    "toml",
    [
        '# Kafka setting names as quoted keys\n"num.partitions" = 4\n',
        "# or as TOML dotted keys\nnum.partitions = 4\n",
        "[num]\npartitions = 4\n",
    ],
    ids=["quoted-key", "dotted-key", "nested-table"],
)
def test_toml_config_file(make_broker, tmp_path, toml):
    cfg = tmp_path / "sluice.toml"
    cfg.write_text(toml)
    broker = make_broker(config_file=cfg)
    assert auto_created_partitions(broker) == 4


def test_set_overrides_config_file(make_broker, tmp_path):
    cfg = tmp_path / "sluice.toml"
    cfg.write_text('"num.partitions" = 4\n')
    broker = make_broker("num.partitions=2", config_file=cfg)
    assert auto_created_partitions(broker) == 2


def test_toml_config_file_with_unknown_key_is_rejected(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('"num.partitions" = 2\n"no.such.setting" = 1\n')
    text = run_expecting_failure(tmp_path, "--config", str(cfg))
    assert "no.such.setting" in text, text[-2000:]
