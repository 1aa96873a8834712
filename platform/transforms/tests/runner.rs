//! The transform runtime against a broker opened in-process, through the same `host` and
//! `sluice-runtime` the broker runs it with: exactly once across fencing of a crashed runner's open
//! transaction and a redeploy under load, per-key order, partitions added after deploy, and the
//! dead-letter policy diverting only the records that fail. (`tests/test_transforms.py` runs the
//! same runtime end to end with real Kafka clients and SIGKILL.)

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_broker::host::{Extension, Host, ProducerRecord};
use sluice_broker::{Broker, BrokerConfig};
use sluice_runtime::Plugins;
use sluice_transforms::manager::{ModuleSource, TransformManager};
use sluice_transforms::spec::TransformSpec;

/// Builds the guests once per test binary into `target/wasm-guests` (shared with sluice-wasm's tests).
fn guest(name: &str) -> Vec<u8> {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap();
        let target = root.join("target/wasm-guests");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(&root)
            .args(["build", "--profile", "wasm-guest", "--target", "wasm32-wasip2", "--target-dir"])
            .arg(&target)
            .args(["-p", "identity", "-p", "json-filter"])
            .status()
            .unwrap();
        assert!(status.success(), "building the guests failed (is the wasm32-wasip2 target installed?)");
        target.join("wasm32-wasip2/wasm-guest")
    });
    std::fs::read(dir.join(format!("{}.wasm", name.replace('-', "_")))).unwrap()
}

/// Fields drop in order: the manager (stopping its runners) before the runtime they wait on.
struct Fixture {
    manager: TransformManager,
    host: Host,
    _runtime: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

fn open() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let broker = Broker::open(BrokerConfig::default(), dir.path()).unwrap();
    let plugins = Plugins::new();
    let _routes = plugins.start(Host::for_tests(broker.clone(), "plugins", runtime.handle().clone())).unwrap();
    let host = Host::for_tests(broker, "transforms", runtime.handle().clone());
    let manager = TransformManager::open(host.clone(), plugins).unwrap();
    Fixture { manager, host, _runtime: runtime, _dir: dir }
}

impl Fixture {
    fn topic(&self, name: &str, partitions: i32) {
        self.host.create_topic(name, Some(partitions), &BTreeMap::new()).unwrap();
    }

    /// Writes `records` (key, value) to `topic` in one committed transaction, keyed partitioning.
    fn produce(&self, topic: &str, records: &[(String, String)]) {
        let partitions = self.host.topic(topic).unwrap().partitions;
        let mut producer = self.host.producer("__sluice-test-feed", 30_000).unwrap();
        let mut by_partition: BTreeMap<i32, Vec<ProducerRecord>> = BTreeMap::new();
        for (key, value) in records {
            let p = sluice_protocol::partitioner::partition_for_key(key.as_bytes(), partitions as usize);
            by_partition.entry(p).or_default().push(ProducerRecord {
                key: Some(Bytes::from(key.clone())),
                value: Some(Bytes::from(value.clone())),
                headers: Vec::new(),
                timestamp_ms: -1,
            });
        }
        for (p, batch) in by_partition {
            producer.send(topic, p, &batch).unwrap();
        }
        producer.commit().unwrap();
    }

    /// Every committed (key, value) of a topic, per partition in offset order.
    fn read(&self, topic: &str) -> BTreeMap<i32, Vec<(String, String)>> {
        let mut out = BTreeMap::new();
        for p in 0..self.host.topic(topic).unwrap().partitions {
            let mut reader = self.host.reader(topic, p, 0).unwrap();
            let mut records = Vec::new();
            while reader.position() < reader.last_stable_offset() {
                for r in reader.next_batch(1000).unwrap().records {
                    let text = |b: Option<Bytes>| String::from_utf8(b.map(|b| b.to_vec()).unwrap_or_default()).unwrap();
                    records.push((text(r.key), text(r.value)));
                }
            }
            out.insert(p, records);
        }
        out
    }

    /// Waits until the transform has committed everything its input holds now.
    fn wait_for_output(&self, name: &str) {
        let input = self.manager.status(name).unwrap().input_topic;
        let partitions = self.host.topic(&input).unwrap().partitions;
        let ends: Vec<i64> = (0..partitions).map(|p| self.host.partition_offsets(&input, p).unwrap().last_stable).collect();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let status = self.manager.status(name).unwrap();
            assert!(status.error.is_none(), "{name} failed: {:?}", status.error);
            let caught_up =
                ends.iter().enumerate().all(|(p, end)| status.partitions.iter().any(|s| s.partition == p as i32 && s.position >= *end));
            if caught_up {
                return;
            }
            assert!(Instant::now() < deadline, "{name} did not catch up with {ends:?} in 60 s: {status:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn spec(json: serde_json::Value) -> TransformSpec {
    serde_json::from_value(json).unwrap()
}

fn records(range: std::ops::Range<usize>) -> Vec<(String, String)> {
    range.map(|i| (format!("key-{}", i % 37), format!("value-{i}"))).collect()
}

#[test]
fn output_is_exactly_once_in_key_order_across_fencing_redeploy_and_new_partitions() {
    let fx = open();
    fx.topic("in", 2);
    fx.topic("out", 3);
    fx.produce("in", &records(0..2000));

    // A crashed runner's transaction: open, holding output that must never become visible.
    let mut zombie = fx.host.producer("__sluice-transform-copy-0", 60_000).unwrap();
    zombie
        .send("out", 0, &[ProducerRecord { key: None, value: Some(Bytes::from_static(b"zombie")), headers: Vec::new(), timestamp_ms: -1 }])
        .unwrap();

    let identity = guest("identity");
    let copy = spec(serde_json::json!({"name": "copy", "input_topic": "in", "output_topics": ["out"]}));
    fx.manager.deploy(copy.clone(), ModuleSource::Bytes(identity.clone())).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !fx.manager.status("copy").unwrap().partitions.iter().all(|p| p.state == sluice_runtime::TaskState::Running) {
        assert!(Instant::now() < deadline, "the runners did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(zombie.commit().unwrap_err().is_fenced(), "the runner's start fenced the zombie");
    fx.wait_for_output("copy");

    // Redeploy while input keeps arriving: the new version resumes from the committed positions.
    fx.produce("in", &records(2000..3000));
    fx.manager.deploy(copy.clone(), ModuleSource::Bytes(identity)).unwrap();
    fx.produce("in", &records(3000..4000));
    fx.wait_for_output("copy");

    // A partition added to the input topic gets a runner without a redeploy.
    let partitions_before = fx.manager.status("copy").unwrap().partitions.len();
    assert_eq!(partitions_before, 2);
    grow(&fx, "in", 3);
    let deadline = Instant::now() + Duration::from_secs(30);
    while fx.manager.status("copy").unwrap().partitions.len() < 3 {
        assert!(Instant::now() < deadline, "the new partition got no runner");
        std::thread::sleep(Duration::from_millis(100));
    }
    fx.produce("in", &records(4000..5000));
    fx.wait_for_output("copy");

    // Exactly once: every input record once in the output, none of the zombie's, and per key in
    // input order (all of a key's records go through one input partition and one output partition).
    let input = fx.read("in");
    let output = fx.read("out");
    let all_out: Vec<&(String, String)> = output.values().flatten().collect();
    assert_eq!(all_out.len(), 5000, "every input record exactly once");
    assert!(all_out.iter().all(|(_, v)| v != "zombie"));
    // Per key and input partition (growing the topic moved some keys to the new partition), the
    // output keeps the input's order.
    let mut out_by_key: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (k, v) in output.values().flatten() {
        out_by_key.entry(k).or_default().push(v);
    }
    for (p, records) in &input {
        let mut in_by_key: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (k, v) in records {
            in_by_key.entry(k).or_default().push(v);
        }
        for (key, values) in in_by_key {
            let seen: Vec<&str> = out_by_key[key].iter().copied().filter(|v| values.contains(v)).collect();
            assert!(seen == values, "key {key} from input partition {p} is out of order in the output");
        }
    }
}

fn grow(fx: &Fixture, topic: &str, total: i32) {
    fx.host.create_partitions(topic, total).unwrap();
}

#[test]
fn the_dead_letter_policy_diverts_only_the_records_that_fail() {
    let fx = open();
    fx.topic("events", 1);
    fx.topic("kept", 1);
    fx.topic("dlq", 1);
    let mut input = Vec::new();
    for i in 0..3000 {
        let value = if i % 1000 == 500 { format!("not json {i}") } else { format!("{{\"n\": {i}, \"keep\": {}}}", i % 2 == 0) };
        input.push((format!("k{i}"), value));
    }
    fx.produce("events", &input);
    let filter = spec(serde_json::json!({
        "name": "filter", "input_topic": "events", "output_topics": ["kept"],
        "config": {"field": "keep", "equals": "true", "on-invalid": "fail"},
        "error_policy": {"dead_letter": "dlq"},
    }));
    fx.manager.deploy(filter, ModuleSource::Bytes(guest("json-filter"))).unwrap();
    fx.wait_for_output("filter");
    let kept = &fx.read("kept")[&0];
    let dead = &fx.read("dlq")[&0];
    assert_eq!(dead.iter().map(|(_, v)| v.as_str()).collect::<Vec<_>>(), vec!["not json 500", "not json 1500", "not json 2500"]);
    let expected: Vec<String> =
        (0..3000).filter(|i| i % 1000 != 500 && i % 2 == 0).map(|i| format!("{{\"n\": {i}, \"keep\": true}}")).collect();
    assert_eq!(
        kept.iter().map(|(_, v)| v.clone()).collect::<Vec<_>>(),
        expected,
        "the good records of failing batches went through, in order"
    );
    let status = fx.manager.status("filter").unwrap();
    assert_eq!((status.dead_lettered, status.state), (3, "running"));
}
