"""Topic administration through both admin clients and kcat: CreateTopics, Metadata, DescribeConfigs,
IncrementalAlterConfigs / AlterConfigs, CreatePartitions, DeleteTopics, DescribeCluster."""

from __future__ import annotations

import re
import time

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicCollection
from confluent_kafka.admin import (
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ConfigSource,
    NewPartitions,
    NewTopic,
    ResourceType,
)

from harness import cf_admin, kcat, kp_admin, unique, wait_for_partitions


def cf_describe(admin, topic: str) -> dict:
    res = ConfigResource(ResourceType.TOPIC, topic)
    return admin.describe_configs([res], request_timeout=10)[res].result(timeout=15)


def is_topic_override(entry) -> bool:
    return (not entry.is_default) and ConfigSource(entry.source) == ConfigSource.DYNAMIC_TOPIC_CONFIG


def wait_topic_gone(list_names, topic: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while topic in list_names():
        assert time.monotonic() < deadline, f"topic {topic} still listed {timeout}s after deletion"
        time.sleep(0.1)


def test_confluent_admin_topic_lifecycle(broker):
    admin = cf_admin(broker)
    topic = unique("topics-cf")

    fs = admin.create_topics(
        [NewTopic(topic, num_partitions=3, replication_factor=1,
                  config={"retention.ms": "3600000", "cleanup.policy": "delete"})],
        request_timeout=15,
    )
    fs[topic].result(timeout=20)
    wait_for_partitions(broker, topic, 3, admin=admin)

    md = admin.list_topics(timeout=10)
    assert topic in md.topics
    tmd = md.topics[topic]
    assert tmd.error is None
    assert sorted(tmd.partitions) == [0, 1, 2]
    broker_ids = set(md.brokers)
    assert len(broker_ids) == 1, f"single-node cluster should list one broker, got {md.brokers}"
    for p in tmd.partitions.values():
        assert p.leader in broker_ids and p.replicas == [p.leader] and p.isrs == [p.leader]
    only = next(iter(md.brokers.values()))
    assert (only.host, only.port) == ("127.0.0.1", broker.port), f"advertised listener: {only}"

    desc = admin.describe_topics(TopicCollection([topic]), request_timeout=10)[topic].result(timeout=15)
    assert desc.name == topic and len(desc.partitions) == 3 and not desc.is_internal

    cluster = admin.describe_cluster(request_timeout=10).result(timeout=15)
    assert [n.id for n in cluster.nodes] == list(broker_ids)
    assert cluster.controller is not None and cluster.controller.id in broker_ids

    # DescribeConfigs: the overrides are there and say so; other keys come back with Kafka's defaults.
    cfg = cf_describe(admin, topic)
    assert cfg["retention.ms"].value == "3600000" and is_topic_override(cfg["retention.ms"]), cfg["retention.ms"]
    assert cfg["cleanup.policy"].value == "delete"
    assert cfg["max.message.bytes"].value == "1048588" and cfg["max.message.bytes"].is_default
    assert "segment.bytes" in cfg and "message.timestamp.type" in cfg

    # IncrementalAlterConfigs: SET two keys, then DELETE one back to its default.
    res = ConfigResource(
        ResourceType.TOPIC, topic,
        incremental_configs=[
            ConfigEntry("retention.ms", "7200000", incremental_operation=AlterConfigOpType.SET),
            ConfigEntry("max.message.bytes", "2000000", incremental_operation=AlterConfigOpType.SET),
        ],
    )
    admin.incremental_alter_configs([res])[res].result(timeout=15)
    cfg = cf_describe(admin, topic)
    assert cfg["retention.ms"].value == "7200000"
    assert cfg["max.message.bytes"].value == "2000000" and is_topic_override(cfg["max.message.bytes"])
    assert cfg["cleanup.policy"].value == "delete", "an incremental alter must not touch other keys"

    res = ConfigResource(
        ResourceType.TOPIC, topic,
        incremental_configs=[ConfigEntry("max.message.bytes", None, incremental_operation=AlterConfigOpType.DELETE)],
    )
    admin.incremental_alter_configs([res])[res].result(timeout=15)
    cfg = cf_describe(admin, topic)
    assert cfg["max.message.bytes"].value == "1048588" and cfg["max.message.bytes"].is_default

    # Legacy AlterConfigs replaces the whole set of overrides: keys left out go back to their defaults.
    res = ConfigResource(ResourceType.TOPIC, topic, set_config={"retention.ms": "1000000"})
    admin.alter_configs([res])[res].result(timeout=15)
    cfg = cf_describe(admin, topic)
    assert cfg["retention.ms"].value == "1000000" and is_topic_override(cfg["retention.ms"])
    assert not is_topic_override(cfg["cleanup.policy"]), "AlterConfigs must drop overrides it does not list"

    # An unknown config key is refused and changes nothing.
    res = ConfigResource(
        ResourceType.TOPIC, topic,
        incremental_configs=[ConfigEntry("no.such.config", "1", incremental_operation=AlterConfigOpType.SET)],
    )
    with pytest.raises(KafkaException) as exc:
        admin.incremental_alter_configs([res])[res].result(timeout=15)
    assert exc.value.args[0].code() == KafkaError.INVALID_CONFIG, exc.value

    # CreatePartitions grows the topic; shrinking is refused.
    admin.create_partitions([NewPartitions(topic, 5)], request_timeout=15)[topic].result(timeout=15)
    wait_for_partitions(broker, topic, 5, admin=admin)
    with pytest.raises(KafkaException) as exc:
        admin.create_partitions([NewPartitions(topic, 2)], request_timeout=15)[topic].result(timeout=15)
    assert exc.value.args[0].code() == KafkaError.INVALID_PARTITIONS, exc.value
    assert len(admin.list_topics(timeout=10).topics[topic].partitions) == 5

    admin.delete_topics([topic], request_timeout=15)[topic].result(timeout=15)
    wait_topic_gone(lambda: admin.list_topics(timeout=10).topics, topic)

    # Deleting it again: UNKNOWN_TOPIC_OR_PARTITION.
    with pytest.raises(KafkaException) as exc:
        admin.delete_topics([topic], request_timeout=15)[topic].result(timeout=15)
    assert exc.value.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART, exc.value


def test_confluent_admin_create_errors(broker):
    admin = cf_admin(broker)
    topic = unique("topics-dup")
    admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])[topic].result(timeout=20)

    with pytest.raises(KafkaException) as exc:
        admin.create_topics([NewTopic(topic, num_partitions=4, replication_factor=1)])[topic].result(timeout=20)
    assert exc.value.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS, exc.value
    wait_for_partitions(broker, topic, 2, admin=admin)  # the failed create changed nothing

    for bad in ["bad topic name!", "a" * 250, "..", "slash/ed"]:
        with pytest.raises(KafkaException) as exc:
            admin.create_topics([NewTopic(bad, num_partitions=1, replication_factor=1)])[bad].result(timeout=20)
        assert exc.value.args[0].code() == KafkaError.TOPIC_EXCEPTION, f"{bad!r}: {exc.value}"
        assert bad not in admin.list_topics(timeout=10).topics

    # An unknown topic config is refused at creation, and the topic is not created.
    odd = unique("topics-badcfg")
    with pytest.raises(KafkaException) as exc:
        admin.create_topics([NewTopic(odd, num_partitions=1, replication_factor=1,
                                      config={"no.such.config": "1"})])[odd].result(timeout=20)
    assert exc.value.args[0].code() == KafkaError.INVALID_CONFIG, exc.value
    assert odd not in admin.list_topics(timeout=10).topics


def test_kafka_python_admin_topic_lifecycle(broker):
    from kafka.admin import ConfigResource as KpConfigResource
    from kafka.errors import InvalidTopicError, TopicAlreadyExistsError

    admin = kp_admin(broker)
    try:
        topic = unique("topics-kp")
        admin.create_topics({topic: {"num_partitions": 2, "replication_factor": 1,
                                     "configs": {"retention.ms": "3600000"}}})
        admin.wait_for_topics([topic], timeout_ms=10_000)
        assert topic in admin.list_topics()
        (desc,) = admin.describe_topics([topic])
        assert desc["name"] == topic and desc["error_code"] == 0
        assert sorted(p["partition_index"] for p in desc["partitions"]) == [0, 1]

        def modified() -> dict:
            out = admin.describe_configs([KpConfigResource("TOPIC", topic)])
            return {k: v["value"] for k, v in out["topic"][topic].items()}

        assert modified().get("retention.ms") == "3600000", modified()

        # Incremental (the client's default when the broker offers IncrementalAlterConfigs).
        result = admin.alter_configs([KpConfigResource("TOPIC", topic, {"retention.ms": "7200000"})],
                                     incremental=True)
        assert result["topic"][topic] == "OK", result
        assert modified().get("retention.ms") == "7200000"

        # Non-incremental AlterConfigs (the client re-sends the other modified keys).
        result = admin.alter_configs([KpConfigResource("TOPIC", topic, {"segment.bytes": "1048576"})],
                                     incremental=False)
        assert result["topic"][topic] == "OK", result
        now = modified()
        assert now.get("segment.bytes") == "1048576" and now.get("retention.ms") == "7200000", now

        admin.create_partitions({topic: 4})
        wait_for_partitions(broker, topic, 4)
        (desc,) = admin.describe_topics([topic])
        assert len(desc["partitions"]) == 4

        with pytest.raises(TopicAlreadyExistsError):
            admin.create_topics({topic: {"num_partitions": 1, "replication_factor": 1}})
        with pytest.raises(InvalidTopicError):
            admin.create_topics({"no spaces allowed": {"num_partitions": 1, "replication_factor": 1}})

        admin.delete_topics([topic])
        wait_topic_gone(admin.list_topics, topic)
    finally:
        admin.close()


def test_kcat_metadata_lists_topic(broker):
    admin = cf_admin(broker)
    topic = unique("topics-kcat")
    admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])[topic].result(timeout=20)
    wait_for_partitions(broker, topic, 3, admin=admin)

    out = kcat(broker, "-L", "-t", topic)
    text = out.stdout.decode(errors="replace")
    assert out.returncode == 0, f"kcat -L failed ({out.returncode}): {out.stderr.decode(errors='replace')}"
    assert f'topic "{topic}" with 3 partitions:' in text, text
    parts = re.findall(r"partition (\d+), leader (-?\d+)", text)
    assert sorted(int(p) for p, _ in parts) == [0, 1, 2], text
    assert all(int(leader) >= 0 for _, leader in parts), text
    assert "1 brokers:" in text, text
