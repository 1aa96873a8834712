//! A connector's `transforms` chain at run time: first-party Wasm transforms (`pii-mask`, `router`,
//! `json-filter`) and a hostile one (`fixture-hostile`) between a source's `poll` and its topics and
//! between a sink's topics and its `put`:
//!
//! - a source's records are masked, rerouted to the step's `outputs` and filtered, in order, and
//!   still arrive exactly once across a task restart;
//! - a sink's records are filtered and rerouted (a JDBC sink's `${topic}` table follows the route);
//!   a record a step fails on goes to the dead-letter topic with the step named in its context while
//!   the others are written; a batch the chain filters out entirely still moves the positions;
//! - a transform that panics, refuses its config, or is missing fails its connector alone with a
//!   status that names the step.

#[path = "support/fixture.rs"]
mod fixture;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use fixture::*;
use serde_json::{Value, json};
use sluice_broker::host::{Host, ProducerRecord};
use sluice_connect::sql::SqlValue;
use sluice_connect::store::TargetState;

const CHAIN_GUESTS: &[&str] = &["file-source", "file-sink", "jdbc-sink", "pii-mask", "router", "json-filter", "fixture-hostile"];

fn produce(host: &Host, topic: &str, values: &[String]) {
    let mut producer = host.producer("__sluice-test-chain-input", 60_000).unwrap();
    let records: Vec<ProducerRecord> = values
        .iter()
        .map(|v| ProducerRecord { key: None, value: Some(Bytes::from(v.clone())), headers: Vec::new(), timestamp_ms: 1 })
        .collect();
    producer.send(topic, 0, &records).unwrap();
    producer.commit().unwrap();
}

fn event(id: usize, region: &str, keep: bool) -> String {
    json!({"id": id, "region": region, "email": format!("u{id}@example.com"), "keep": keep}).to_string()
}

fn parsed(values: &[String]) -> Vec<Value> {
    values.iter().map(|v| serde_json::from_str(v).unwrap()).collect()
}

#[test]
fn a_sources_records_are_masked_routed_and_filtered_in_order_exactly_once() {
    let f = open(CHAIN_GUESTS);
    let files = tempfile::tempdir().unwrap();
    let path = files.path().join("events.jsonl");
    let lines =
        |from: usize, to: usize| (from..to).map(|i| event(i, if i % 3 == 0 { "eu" } else { "us" }, i % 5 != 0) + "\n").collect::<String>();
    append(&path, &lines(0, 30));
    f.manager
        .create(
            config(&[
                ("name", "events"),
                ("connector.class", "file-source"),
                ("file", path.to_str().unwrap()),
                ("topic", "events"),
                ("batch.size", "7"),
                ("transforms", "keep,mask,route"),
                ("transforms.keep.type", "json-filter"),
                ("transforms.keep.field", "keep"),
                ("transforms.keep.equals", "true"),
                ("transforms.mask.type", "pii-mask"),
                ("transforms.mask.fields", "email"),
                ("transforms.route.type", "router"),
                ("transforms.route.field", "region"),
                ("transforms.route.routes", "eu:events-eu"),
                ("transforms.route.outputs", "events-eu"),
            ]),
            TargetState::Running,
        )
        .unwrap();
    let expect = |to: usize, eu: bool| -> Vec<Value> {
        (0..to)
            .filter(|i| i % 5 != 0 && (i % 3 == 0) == eu)
            .map(|i| json!({"id": i, "region": if eu { "eu" } else { "us" }, "email": "***", "keep": true}))
            .collect()
    };
    wait_for("30 lines through the chain", || {
        (parsed(&f.values("events")) == expect(30, false) && parsed(&f.values("events-eu")) == expect(30, true)).then_some(())
    });

    // A restart of the task in between: each line still once, in order.
    append(&path, &lines(30, 45));
    f.manager.restart("events", true, false).unwrap();
    append(&path, &lines(45, 60));
    wait_for("60 lines", || {
        (parsed(&f.values("events")) == expect(60, false) && parsed(&f.values("events-eu")) == expect(60, true)).then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(parsed(&f.values("events")), expect(60, false), "nothing twice");
    assert_eq!(f.task_state("events").0, "RUNNING");
}

#[test]
fn a_sinks_chain_filters_routes_and_dead_letters_with_the_step_named() {
    let f = open(CHAIN_GUESTS);
    f.host.create_topic("events", Some(1), &BTreeMap::new()).unwrap();
    let db = f.dir.path().join("target.db");
    let url = format!("sqlite:{}", db.display());
    let mut target = Target::open(&url, None, None);
    // The table the router sends `eu` rows to refuses id 4: `put` fails on that (rerouted, masked)
    // record, and its dead letter is the record as it was read.
    target.exec("CREATE TABLE t_events_eu (id INTEGER CHECK (id <> 4), region TEXT, email TEXT, keep INTEGER)");
    let mut values: Vec<String> = (0..40).map(|i| event(i, if i % 2 == 0 { "eu" } else { "us" }, i % 4 != 3)).collect();
    // Not JSON: `pii-mask` with `on-invalid=fail` fails on it alone.
    values[10] = "not json".into();
    values[21] = "{broken".into();
    produce(&f.host, "events", &values);
    f.manager
        .create(
            config(&[
                ("name", "events-sink"),
                ("connector.class", "jdbc-sink"),
                ("connection.url", &url),
                ("topics", "events"),
                ("auto.create", "true"),
                ("table.name.format", "t_${topic}"),
                ("transforms", "mask,keep,route"),
                ("transforms.mask.type", "pii-mask"),
                ("transforms.mask.fields", "email"),
                ("transforms.mask.on-invalid", "fail"),
                ("transforms.keep.type", "json-filter"),
                ("transforms.keep.field", "keep"),
                ("transforms.keep.equals", "true"),
                ("transforms.route.type", "router"),
                ("transforms.route.field", "region"),
                ("transforms.route.routes", "eu:events_eu"),
                ("transforms.route.outputs", "events_eu"),
                ("errors.tolerance", "all"),
                ("errors.deadletterqueue.topic.name", "events-dlq"),
                ("errors.deadletterqueue.context.headers.enable", "true"),
            ]),
            TargetState::Running,
        )
        .unwrap();
    let kept = |eu: bool| -> Vec<i64> {
        (0..40).filter(|i| *i != 4 && *i != 10 && *i != 21 && i % 4 != 3 && (i % 2 == 0) == eu).map(|i| i as i64).collect()
    };
    wait_for("the routed rows", || {
        let us = target.ints("SELECT id FROM t_events ORDER BY id");
        let eu = target.ints("SELECT id FROM t_events_eu ORDER BY id");
        (us == kept(false) && eu == kept(true)).then_some(())
    });
    let emails = target.rows("SELECT DISTINCT email FROM t_events UNION SELECT DISTINCT email FROM t_events_eu");
    assert_eq!(emails, vec![vec![SqlValue::Text("***".into())]], "every email masked");

    // The two records the mask step failed on and the one the target refused are dead-lettered as
    // they were read (the refused one unmasked, from its input topic), with context.
    let dead = wait_for("three dead letters", || Some(f.values("events-dlq")).filter(|v| v.len() == 3));
    assert_eq!(dead[..2], ["not json", "{broken"]);
    assert_eq!(serde_json::from_str::<Value>(&dead[2]).unwrap(), serde_json::from_str::<Value>(&values[4]).unwrap());
    let mut reader = f.host.reader("events-dlq", 0, 0).unwrap();
    let records = reader.next_batch(10).unwrap().records;
    let header = |idx: usize, name: &str| {
        records[idx].headers.iter().find(|(k, _)| k == name).and_then(|(_, v)| v.clone()).map(|v| String::from_utf8(v.to_vec()).unwrap())
    };
    assert!(header(0, "sluice.error").unwrap().contains("transform 'mask' (pii-mask)"), "{:?}", header(0, "sluice.error"));
    assert_eq!(header(0, "sluice.source.offset").as_deref(), Some("10"));
    assert_eq!(header(0, "sluice.connector").as_deref(), Some("events-sink"));
    assert_eq!(header(2, "sluice.source.topic").as_deref(), Some("events"), "not the topic the chain routed it to");
    assert_eq!(header(2, "sluice.source.offset").as_deref(), Some("4"));

    // A batch the chain filters out entirely still moves the positions.
    produce(&f.host, "events", &(40..45).map(|i| event(i, "us", false)).collect::<Vec<_>>());
    let end = f.host.reader("events", 0, 0).unwrap().last_stable_offset();
    wait_for("positions past the filtered batch", || {
        (target.ints("SELECT next_offset FROM sluice_connect_offsets WHERE connector = 'events-sink'") == [end]).then_some(())
    });
    assert_eq!(target.ints("SELECT COUNT(*) FROM t_events"), [kept(false).len() as i64]);
    assert_eq!(f.task_state("events-sink").0, "RUNNING");
}

#[test]
fn a_failing_transform_fails_its_connector_alone_and_says_which_step() {
    let f = open(CHAIN_GUESTS);
    let files = tempfile::tempdir().unwrap();
    let path = files.path().join("in.txt");
    append(&path, "a\nb\n");
    let file = path.to_str().unwrap();
    let source = |name: &str, mode: &str| {
        config(&[
            ("name", name),
            ("connector.class", "file-source"),
            ("file", file),
            ("topic", name),
            ("transforms", "boom"),
            ("transforms.boom.type", "fixture-hostile"),
            ("transforms.boom.mode", mode),
        ])
    };
    f.manager.create(source("good", "identity"), TargetState::Running).unwrap();
    f.manager.create(source("panics", "panic"), TargetState::Running).unwrap();
    f.manager.create(source("refuses", "reject-config"), TargetState::Running).unwrap();
    for (name, expected) in [("panics", "trapped"), ("refuses", "refuses to start")] {
        let (_, trace) = wait_for(&format!("{name} FAILED"), || Some(f.task_state(name)).filter(|(state, _)| state == "FAILED"));
        let trace = trace.unwrap_or_default();
        assert!(trace.contains("transform 'boom' (fixture-hostile)") && trace.contains(expected), "{name}: {trace}");
    }
    assert!(f.values("panics").is_empty(), "nothing of the failed poll was written");
    wait_for("the good connector's lines", || (f.values("good") == ["a", "b"]).then_some(()));

    // With errors.tolerance=all a source skips (and logs) the records a step fails on.
    append(&path, "bad\nc\n");
    f.manager
        .create(
            config(&[
                ("name", "tolerant"),
                ("connector.class", "file-source"),
                ("file", file),
                ("topic", "tolerant"),
                ("transforms", "boom"),
                ("transforms.boom.type", "fixture-hostile"),
                ("transforms.boom.mode", "fail-on-bad"),
                ("errors.tolerance", "all"),
            ]),
            TargetState::Running,
        )
        .unwrap();
    wait_for("the good lines", || (f.values("tolerant") == ["a", "b", "c"]).then_some(()));
    let logs = f.manager.logs("tolerant", 100).unwrap();
    assert!(logs.iter().any(|l| l.message.contains("skipped") && l.message.contains("offset")), "{logs:?}");
    let warning = f.manager.status("tolerant").unwrap().connector.warning.unwrap_or_default();
    assert!(warning.contains("skipped"), "the status shows the recent warning: {warning:?}");

    // A step whose module was deleted from the registry: the connector fails at its next start.
    f.manager.stop("good").unwrap();
    f.manager.catalog().plugins().unwrap().registry().unwrap().remove("fixture-hostile").unwrap();
    f.manager.resume("good").unwrap();
    let status = wait_for("good FAILED", || {
        let status = f.manager.status("good").unwrap();
        (status.connector.state == "FAILED").then_some(status)
    });
    let trace = status.connector.trace.unwrap_or_default();
    assert!(trace.contains("transforms.boom.type: 'fixture-hostile' is not a Wasm transform in the module registry"), "{trace}");
    assert_eq!(f.task_state("tolerant").0, "RUNNING", "the others keep running");
}
