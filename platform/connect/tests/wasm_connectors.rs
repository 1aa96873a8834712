//! Wasm connectors on a broker opened in-process, with the real `plugins` extension (registry,
//! engine) and the connector manager: the first-party `file-source` and `file-sink` components and
//! a hostile source, built for wasm32-wasip2 and uploaded to the registry as an operator would.
//!
//! - `GET /connector-plugins`, served on an ephemeral port, lists them by world with Connect's shape;
//! - lines appended to a file arrive on the topic exactly once across task restarts and a clean
//!   broker restart;
//! - the file-sink guest writes a topic's committed records to a file (through the seam: the sink
//!   driver that would read the topic itself is not built yet, so the test reads the topic);
//! - a hostile source (a loop in `poll`, a panic, garbage) fails alone — its task FAILED with the
//!   reason — while a file source beside it keeps flowing and the broker keeps serving.

#[path = "support/guests.rs"]
mod guests;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{Value, json};
use sluice_broker::host::{Extension, Host, ProducerRecord};
use sluice_broker::{Broker, BrokerConfig};
use sluice_connect::ConnectorManager;
use sluice_connect::plugins::Catalog;
use sluice_connect::store::TargetState;
use sluice_connect::task::{SinkRecord, TaskConfig};
use sluice_runtime::Plugins;

/// Fields drop in order: the manager (stopping its tasks) before the runtime they wait on.
struct Fixture {
    manager: Arc<ConnectorManager>,
    host: Host,
    _broker: Arc<Broker>,
    runtime: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

fn open() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (manager, host, broker) = start(dir.path(), &runtime, true);
    Fixture { manager, host, _broker: broker, runtime, _dir: dir }
}

/// Opens a broker in `dir` with the plugins extension and the connector manager, uploading the
/// guests first if `upload` (a restarted broker finds them in its registry).
fn start(dir: &std::path::Path, runtime: &tokio::runtime::Runtime, upload: bool) -> (Arc<ConnectorManager>, Host, Arc<Broker>) {
    let broker = Broker::open(BrokerConfig::default(), dir).unwrap();
    let plugins = Plugins::new();
    // The registry's own routes (`/v1/plugins`) are not under test here.
    let _routes = plugins.start(Host::for_tests(broker.clone(), "plugins", runtime.handle().clone())).unwrap();
    if upload {
        let registry = plugins.registry().unwrap();
        for name in ["file-source", "file-sink", "fixture-hostile-source", "pii-mask"] {
            registry.add(name, &guests::guest(name), false).unwrap_or_else(|e| panic!("registering {name}: {e}"));
        }
    }
    let host = Host::for_tests(broker.clone(), "connect", runtime.handle().clone());
    let manager = ConnectorManager::open(host.clone(), Catalog::new(Some(plugins))).unwrap();
    manager.start_all();
    (manager, host, broker)
}

fn config(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn wait_for<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn append(path: &std::path::Path, text: &str) {
    std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap().write_all(text.as_bytes()).unwrap();
}

/// Every committed value of `topic`, partition by partition, in offset order.
fn values(host: &Host, topic: &str) -> Vec<String> {
    let Some(info) = host.topic(topic) else { return Vec::new() };
    let mut out = Vec::new();
    for p in 0..info.partitions {
        let mut reader = host.reader(topic, p, 0).unwrap();
        while reader.position() < reader.last_stable_offset() {
            let batch = reader.next_batch(1000).unwrap();
            out.extend(batch.records.into_iter().map(|r| String::from_utf8(r.value.unwrap().to_vec()).unwrap()));
        }
    }
    out
}

impl Fixture {
    fn values(&self, topic: &str) -> Vec<String> {
        values(&self.host, topic)
    }

    fn task_state(&self, name: &str) -> (String, Option<String>) {
        let status = self.manager.status(name).unwrap();
        let task = status.tasks.into_iter().next().expect("one task");
        (task.state, task.trace)
    }

    /// `GET path` on the connector REST API, served on an ephemeral port: (status, JSON body).
    fn get(&self, path: &str) -> (u16, Value) {
        let listener = self.runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let router = sluice_connect::api::router(Arc::clone(&self.manager));
        let server = self.runtime.spawn(async move { axum::serve(listener, router).await });
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        write!(stream, "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        server.abort();
        let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        (status, serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}")))
    }
}

#[test]
fn connector_plugins_lists_wasm_connectors_by_world_with_connects_shape() {
    let f = open();
    let (status, body) = f.get("/connector-plugins");
    assert_eq!(status, 200);
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        body,
        json!([
            {"class": "file-sink", "type": "sink", "version": version},
            {"class": "file-source", "type": "source", "version": version},
            {"class": "fixture-hostile-source", "type": "source", "version": version},
        ])
    );
    // The transform is listed only with connectorsOnly=false, as a transformation.
    let (_, all) = f.get("/connector-plugins?connectorsOnly=false");
    assert!(all.as_array().unwrap().iter().any(|p| p["class"] == "pii-mask" && p["type"] == "transformation"), "{all}");
    // Its keys, as the guest's describe declared them, in Connect's ConfigKeyInfo shape.
    let (status, keys) = f.get("/connector-plugins/file-source/config");
    assert_eq!(status, 200);
    let names: Vec<(&str, &str, bool)> = keys
        .as_array()
        .unwrap()
        .iter()
        .map(|k| (k["name"].as_str().unwrap(), k["type"].as_str().unwrap(), k["required"].as_bool().unwrap()))
        .collect();
    assert_eq!(names, [("file", "STRING", true), ("topic", "STRING", true), ("batch.size", "INT", false)]);
    // Validation knows the keys the guest declared, and refuses others.
    let (parsed, validation) = f.manager.validate(&config(&[
        ("name", "v"),
        ("connector.class", "file-source"),
        ("file", "/tmp/x.txt"),
        ("topic", "t"),
        ("no.such.key", "1"),
    ]));
    assert!(parsed.is_none());
    assert!(validation.messages().iter().any(|m| m.contains("no.such.key")), "{:?}", validation.messages());
}

#[test]
fn lines_appended_to_a_file_arrive_exactly_once_across_task_restarts() {
    let f = open();
    let files = tempfile::tempdir().unwrap();
    let path = files.path().join("in.txt");
    append(&path, "line-0\nline-1\nline-2\n");
    let file = path.to_str().unwrap();
    f.manager
        .create(
            config(&[("name", "lines"), ("connector.class", "file-source"), ("file", file), ("topic", "lines"), ("batch.size", "2")]),
            TargetState::Running,
        )
        .unwrap();
    let expected = |n: usize| (0..n).map(|i| format!("line-{i}")).collect::<Vec<_>>();
    wait_for("3 lines", || (f.values("lines") == expected(3)).then_some(()));

    // A partial line waits for its newline; a restart of the task in between changes nothing.
    append(&path, "line-3\nline-");
    wait_for("4 lines", || (f.values("lines") == expected(4)).then_some(()));
    f.manager.restart("lines", true, false).unwrap();
    append(&path, "4\nline-5\n");
    wait_for("6 lines", || (f.values("lines") == expected(6)).then_some(()));

    // Paused and stopped, then resumed: still each line once.
    f.manager.pause("lines").unwrap();
    append(&path, "line-6\n");
    f.manager.stop("lines").unwrap();
    append(&path, "line-7\n");
    f.manager.resume("lines").unwrap();
    wait_for("8 lines", || (f.values("lines") == expected(8)).then_some(()));
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(f.values("lines"), expected(8), "nothing arrived twice");
    let offsets = serde_json::to_value(f.manager.offsets("lines").unwrap()).unwrap();
    let size = std::fs::metadata(&path).unwrap().len();
    assert_eq!(offsets["offsets"][0], json!({"partition": {"filename": file}, "offset": {"position": size}}));
    assert_eq!(f.task_state("lines").0, "RUNNING");
}

#[test]
fn lines_arrive_exactly_once_across_a_broker_restart() {
    let dir = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let path = files.path().join("in.txt");
    append(&path, "a\nb\n");
    let file = path.to_str().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (manager, host, broker) = start(dir.path(), &runtime, true);
    manager
        .create(config(&[("name", "lines"), ("connector.class", "file-source"), ("file", file), ("topic", "lines")]), TargetState::Running)
        .unwrap();
    wait_for("2 lines", || (values(&host, "lines") == ["a", "b"]).then_some(()));
    manager.stop_all();
    drop((manager, host, broker));
    append(&path, "c\n");

    // A clean restart: the registry, the connector and its position come back from the data directory.
    let (manager, host, _broker) = start(dir.path(), &runtime, false);
    append(&path, "d\n");
    wait_for("4 lines", || (values(&host, "lines") == ["a", "b", "c", "d"]).then_some(()));
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(values(&host, "lines"), ["a", "b", "c", "d"], "nothing arrived twice");
    manager.stop_all();
}

#[test]
fn a_file_source_given_a_relative_path_fails_with_the_reason() {
    let f = open();
    f.manager
        .create(
            config(&[("name", "relative"), ("connector.class", "file-source"), ("file", "in.txt"), ("topic", "x")]),
            TargetState::Running,
        )
        .unwrap();
    let (_, trace) = wait_for("FAILED", || Some(f.task_state("relative")).filter(|(state, _)| state == "FAILED"));
    assert!(trace.as_deref().is_some_and(|t| t.contains("not an absolute path")), "{trace:?}");
}

#[test]
fn the_file_sink_guest_writes_a_topics_committed_records_to_a_file() {
    let f = open();
    let mut producer = f.host.producer("__sluice-test-sink-input", 60_000).unwrap();
    f.host.create_topic("orders", Some(1), &BTreeMap::new()).unwrap();
    let records: Vec<ProducerRecord> = (0..5)
        .map(|i| ProducerRecord { key: None, value: Some(Bytes::from(format!("order-{i}"))), headers: Vec::new(), timestamp_ms: 1 })
        .collect();
    producer.send("orders", 0, &records).unwrap();
    producer.commit().unwrap();

    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("out.txt");
    let plugin = f.manager.catalog().resolve("file-sink").expect("file-sink is a plugin");
    let task =
        TaskConfig { connector: "sink".into(), task: 0, tasks: 1, config: config(&[("file", path.to_str().unwrap())]), topic_prefix: None };
    let mut sink = plugin.sink_module(&task, &Arc::new(sluice_runtime::LogBuffer::new("sink"))).unwrap();
    sink.start(&task).unwrap();
    let mut reader = f.host.reader("orders", 0, 0).unwrap();
    let batch = reader.next_batch(100).unwrap();
    let input: Vec<SinkRecord> = batch
        .records
        .into_iter()
        .map(|r| SinkRecord {
            topic: "orders".into(),
            partition: 0,
            offset: r.offset,
            key: r.key,
            value: r.value,
            headers: Vec::new(),
            timestamp_ms: r.timestamp_ms,
        })
        .collect();
    assert_eq!(input.len(), 5);
    sink.put(&input).unwrap();
    sink.stop();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "order-0\norder-1\norder-2\norder-3\norder-4\n");
}

#[test]
fn a_hostile_source_fails_alone_while_the_broker_and_other_connectors_keep_working() {
    let f = open();
    let files = tempfile::tempdir().unwrap();
    let path = files.path().join("in.txt");
    append(&path, "before\n");
    f.manager
        .create(
            config(&[("name", "good"), ("connector.class", "file-source"), ("file", path.to_str().unwrap()), ("topic", "good")]),
            TargetState::Running,
        )
        .unwrap();
    let cases = [
        ("loop", "CPU limit exceeded"),
        ("trap", "poll panicked on purpose"),
        ("garbage", "malformed output"),
        ("bad-position", "not a JSON object"),
        ("big-position", "an offset entry is"),
        ("fail-init", "refusing to start"),
    ];
    for (mode, _) in cases {
        let name = format!("hostile-{mode}");
        f.manager
            .create(config(&[("name", &name), ("connector.class", "fixture-hostile-source"), ("mode", mode)]), TargetState::Running)
            .unwrap();
    }
    for (mode, expected) in cases {
        let name = format!("hostile-{mode}");
        let (_, trace) = wait_for(&format!("{name} FAILED"), || Some(f.task_state(&name)).filter(|(state, _)| state == "FAILED"));
        let trace = trace.unwrap_or_default();
        assert!(trace.contains(expected), "{name}: {trace}");
        assert_eq!(f.manager.status(&name).unwrap().connector.state, "RUNNING", "the connector stays; its task failed");
    }
    // A poll refused for its positions wrote none of its records.
    assert!(f.values("hostile").is_empty(), "{:?}", f.values("hostile"));
    // Beside them, the good source still flows and the broker still serves.
    append(&path, "after\n");
    wait_for("the good connector's lines", || (f.values("good") == ["before", "after"]).then_some(()));
    assert_eq!(f.task_state("good").0, "RUNNING");
    let (status, _) = f.get("/connectors");
    assert_eq!(status, 200);
    // Restarting a failed hostile task fails it again the same way, alone.
    f.manager.restart("hostile-trap", true, true).unwrap();
    let (_, trace) = wait_for("hostile-trap FAILED again", || {
        Some(f.task_state("hostile-trap")).filter(|(state, trace)| state == "FAILED" && trace.is_some())
    });
    assert!(trace.unwrap().contains("poll panicked on purpose"));
    // The guest's own last words (the SDK logs a panic before trapping) are in the connector's log.
    let logs = f.manager.logs("hostile-trap", 100).unwrap();
    assert!(logs.iter().any(|line| line.message.contains("poll panicked on purpose")), "{logs:?}");
}
