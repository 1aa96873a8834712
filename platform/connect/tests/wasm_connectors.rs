//! Wasm connectors on a broker opened in-process, with the real `plugins` extension (registry,
//! engine) and the connector manager: the first-party `file-source` and `file-sink` components and
//! a hostile source, built for wasm32-wasip2 and uploaded to the registry as an operator would.
//!
//! - `GET /connector-plugins`, served on an ephemeral port, lists them by world with Connect's shape;
//! - lines appended to a file arrive on the topic exactly once across task restarts and a clean
//!   broker restart;
//! - the file-sink connector writes a topic's committed records (not aborted ones) to a file and
//!   resumes from its position after a stop;
//! - a hostile source (a loop in `poll`, a panic, garbage) fails alone — its task FAILED with the
//!   reason — while a file source beside it keeps flowing and the broker keeps serving.

#[path = "support/fixture.rs"]
mod fixture;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use fixture::*;
use serde_json::json;
use sluice_broker::host::ProducerRecord;
use sluice_connect::store::TargetState;

#[test]
fn connector_plugins_lists_wasm_connectors_by_world_with_connects_shape() {
    let f = open(GUESTS);
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
    let f = open(GUESTS);
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
    let (manager, host, broker) = start(dir.path(), &runtime, GUESTS);
    manager
        .create(config(&[("name", "lines"), ("connector.class", "file-source"), ("file", file), ("topic", "lines")]), TargetState::Running)
        .unwrap();
    wait_for("2 lines", || (values(&host, "lines") == ["a", "b"]).then_some(()));
    manager.stop_all();
    drop((manager, host, broker));
    append(&path, "c\n");

    // A clean restart: the registry, the connector and its position come back from the data directory.
    let (manager, host, _broker) = start(dir.path(), &runtime, &[]);
    append(&path, "d\n");
    wait_for("4 lines", || (values(&host, "lines") == ["a", "b", "c", "d"]).then_some(()));
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(values(&host, "lines"), ["a", "b", "c", "d"], "nothing arrived twice");
    manager.stop_all();
}

#[test]
fn a_file_source_given_a_relative_path_fails_with_the_reason() {
    let f = open(GUESTS);
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
fn the_file_sink_writes_a_topics_committed_records_to_a_file_and_resumes_where_it_stopped() {
    let f = open(GUESTS);
    f.host.create_topic("orders", Some(1), &BTreeMap::new()).unwrap();
    let produce = |from: usize, to: usize| {
        let mut producer = f.host.producer("__sluice-test-sink-input", 60_000).unwrap();
        let records: Vec<ProducerRecord> = (from..to)
            .map(|i| ProducerRecord { key: None, value: Some(Bytes::from(format!("order-{i}"))), headers: Vec::new(), timestamp_ms: 1 })
            .collect();
        producer.send("orders", 0, &records).unwrap();
        producer.commit().unwrap();
    };
    produce(0, 5);
    // An aborted transaction in the input is never written.
    let mut aborted = f.host.producer("__sluice-test-sink-aborted", 60_000).unwrap();
    aborted
        .send("orders", 0, &[ProducerRecord { key: None, value: Some(Bytes::from("aborted")), headers: Vec::new(), timestamp_ms: 1 }])
        .unwrap();
    aborted.abort().unwrap();

    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("out.txt");
    let expected = |n: usize| (0..n).map(|i| format!("order-{i}\n")).collect::<String>();
    f.manager
        .create(
            config(&[("name", "sink"), ("connector.class", "file-sink"), ("file", path.to_str().unwrap()), ("topics", "orders")]),
            TargetState::Running,
        )
        .unwrap();
    wait_for("five lines", || (std::fs::read_to_string(&path).unwrap_or_default() == expected(5)).then_some(()));
    // Stopped and resumed from its saved position: the next records only, once.
    f.manager.stop("sink").unwrap();
    produce(5, 8);
    f.manager.resume("sink").unwrap();
    wait_for("eight lines", || (std::fs::read_to_string(&path).unwrap_or_default() == expected(8)).then_some(()));
    let (status, offsets) = f.get("/connectors/sink/offsets");
    assert_eq!(status, 200);
    assert_eq!(offsets["offsets"][0]["partition"], json!({"kafka_topic": "orders", "kafka_partition": 0}), "{offsets}");
    assert_eq!(f.task_state("sink").0, "RUNNING");
}

#[test]
fn a_hostile_source_fails_alone_while_the_broker_and_other_connectors_keep_working() {
    let f = open(GUESTS);
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
        ("foreign-connection", "no connection named 'admin'"),
    ];
    // The connectors are given one database connection (`default`); `foreign-connection` asks for another.
    let db = format!("sqlite:{}", files.path().join("given.db").display());
    for (mode, _) in cases {
        let name = format!("hostile-{mode}");
        f.manager
            .create(
                config(&[("name", &name), ("connector.class", "fixture-hostile-source"), ("mode", mode), ("connection.url", &db)]),
                TargetState::Running,
            )
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
