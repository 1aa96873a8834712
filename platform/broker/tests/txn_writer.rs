//! The in-process transactional producer (what transforms, connectors and mirrors use): output
//! records and group offsets commit together, aborts are invisible to read_committed readers, a
//! restarted writer fences the old one, and everything holds across a broker reopen.

use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::records::RecordBatchDecoder;
use sluice_broker::config::TopicConfig;
use sluice_broker::txn_writer::{OutRecord, TransactionalProducer};
use sluice_broker::{Broker, BrokerConfig};

fn record(value: &str) -> OutRecord {
    OutRecord { key: Some(Bytes::from_static(b"k")), value: Some(Bytes::from(value.to_string())), headers: Vec::new(), timestamp_ms: -1 }
}

/// Values a read_committed consumer of partition 0 of `topic` would get.
fn committed_values(broker: &Arc<Broker>, topic: &str) -> Vec<String> {
    let partition = broker.partition(topic, 0).unwrap();
    let read = partition.read_isolated(0, 1 << 20, true, true).unwrap();
    let aborted = read.aborted.unwrap_or_default();
    let mut bytes = read.read.bytes;
    RecordBatchDecoder::decode_all(&mut bytes)
        .unwrap()
        .into_iter()
        .flat_map(|set| set.records)
        .filter(|r| !r.control)
        .filter(|r| !aborted.iter().any(|a| a.producer_id == r.producer_id && r.offset >= a.first_offset && r.offset < a.last_offset))
        .map(|r| String::from_utf8(r.value.unwrap().to_vec()).unwrap())
        .collect()
}

#[test]
fn output_and_progress_commit_together_and_aborts_stay_invisible() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::open(BrokerConfig::default(), dir.path()).unwrap();
    broker.create_topic("out", Some(1), TopicConfig::default(), false).unwrap();
    broker.create_topic("in", Some(1), TopicConfig::default(), false).unwrap();

    let mut writer = TransactionalProducer::init(Arc::clone(&broker), "transform-x-0", 30_000).unwrap();
    writer.send("out", 0, &[record("a"), record("b")]).unwrap();
    writer.send_offsets("transform-x", &[("in".to_string(), 0, 2)]).unwrap();
    assert!(committed_values(&broker, "out").is_empty(), "nothing is visible before the commit");
    assert!(broker.offsets.get("transform-x", "in", 0).is_none());
    writer.commit().unwrap();
    assert_eq!(committed_values(&broker, "out"), vec!["a", "b"]);
    assert_eq!(broker.offsets.get("transform-x", "in", 0).unwrap().offset, 2);

    writer.send("out", 0, &[record("dropped")]).unwrap();
    writer.send_offsets("transform-x", &[("in".to_string(), 0, 3)]).unwrap();
    writer.abort().unwrap();
    writer.send("out", 0, &[record("c")]).unwrap();
    writer.commit().unwrap();
    assert_eq!(committed_values(&broker, "out"), vec!["a", "b", "c"]);
    assert_eq!(broker.offsets.get("transform-x", "in", 0).unwrap().offset, 2, "the aborted progress was dropped");

    // A restarted runner fences this one; its open transaction is aborted.
    writer.send("out", 0, &[record("zombie")]).unwrap();
    let mut successor = TransactionalProducer::init(Arc::clone(&broker), "transform-x-0", 30_000).unwrap();
    let fenced = writer.send("out", 0, &[record("zombie-2")]).unwrap_err();
    assert!(fenced.is_fenced(), "{fenced}");
    assert!(writer.commit().unwrap_err().is_fenced());
    successor.send("out", 0, &[record("d")]).unwrap();
    successor.commit().unwrap();
    assert_eq!(committed_values(&broker, "out"), vec!["a", "b", "c", "d"]);

    // Without a clean close (a crash), state comes back from the logs.
    successor.send("out", 0, &[record("in-flight")]).unwrap();
    drop(successor);
    drop(writer);
    drop(broker);
    let broker = Broker::open(BrokerConfig::default(), dir.path()).unwrap();
    let view = broker.transactions.describe("transform-x-0").unwrap();
    assert_eq!(view.state, "Ongoing", "an open transaction survives a restart until its producer returns or it times out");
    assert_eq!(committed_values(&broker, "out"), vec!["a", "b", "c", "d"]);
    let mut restarted = TransactionalProducer::init(Arc::clone(&broker), "transform-x-0", 30_000).unwrap();
    restarted.send("out", 0, &[record("e")]).unwrap();
    restarted.commit().unwrap();
    assert_eq!(committed_values(&broker, "out"), vec!["a", "b", "c", "d", "e"]);
    assert_eq!(broker.offsets.get("transform-x", "in", 0).unwrap().offset, 2);
}
