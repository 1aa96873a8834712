//! The `jdbc-sink` connector (a Wasm component on the `sql` capability) driven by the sink driver,
//! into SQLite and into PostgreSQL and MariaDB servers this test starts itself (`support/dbs.rs`):
//!
//! - rows arrive once: inserts, upserts by key, deletes on tombstones, new fields as new columns,
//!   numeric and timestamp columns bound exactly;
//! - the input positions live in the target (`sluice_connect_offsets`), in the transaction of the
//!   rows: after the connector is stopped and resumed and after the broker restarts, nothing is
//!   written twice and nothing is skipped; a KIP-875 reset clears them there;
//! - a row the target refuses (a CHECK constraint) goes to the dead-letter topic with context
//!   headers while the others commit;
//! - the target going away shows as a retrying task with the error, and every row arrives once it
//!   is back.

#[path = "support/dbs.rs"]
mod dbs;
#[path = "support/fixture.rs"]
mod fixture;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use fixture::*;
use sluice_broker::host::{Host, ProducerRecord};
use sluice_connect::sql::SqlValue;
use sluice_connect::store::TargetState;

fn produce(host: &Host, topic: &str, records: &[(Option<String>, Option<String>)]) {
    let mut producer = host.producer("__sluice-test-jdbc-input", 60_000).unwrap();
    let partitions = host.topic(topic).expect("the topic exists").partitions;
    let mut by_partition: BTreeMap<i32, Vec<ProducerRecord>> = BTreeMap::new();
    for (idx, (key, value)) in records.iter().enumerate() {
        let partition = match key {
            Some(key) => sluice_protocol::partitioner::partition_for_key(key.as_bytes(), partitions as usize),
            None => idx as i32 % partitions,
        };
        by_partition.entry(partition).or_default().push(ProducerRecord {
            key: key.clone().map(Bytes::from),
            value: value.clone().map(Bytes::from),
            headers: Vec::new(),
            timestamp_ms: 1,
        });
    }
    for (partition, batch) in &by_partition {
        producer.send(topic, *partition, batch).unwrap();
    }
    producer.commit().unwrap();
}

fn order(id: i64, extra: &str) -> (Option<String>, Option<String>) {
    (Some(format!("{{\"id\": {id}}}")), Some(format!("{{\"id\": {id}, \"qty\": {}, \"note\": \"n{id}\"{extra}}}", id % 7)))
}

/// The pipeline every database must pass: insert mode (a duplicate would be a second row), a stop
/// and resume, then an upsert connector with deletes and schema evolution on a second table.
fn rows_arrive_exactly_once(f: &Fixture, connection: &[(&str, &str)], target: &mut Target) {
    f.host.create_topic("orders", Some(3), &BTreeMap::new()).unwrap();
    let batch: Vec<_> = (0..2_000).map(|id| order(id, "")).collect();
    produce(&f.host, "orders", &batch);
    let mut cfg = config(&[
        ("name", "orders-sink"),
        ("connector.class", "jdbc-sink"),
        ("topics", "orders"),
        ("tasks.max", "2"),
        ("auto.create", "true"),
        ("table.name.format", "sink_${topic}"),
    ]);
    cfg.extend(config(connection));
    f.manager.create(cfg, TargetState::Running).unwrap();
    let count = "SELECT COUNT(*) FROM sink_orders";
    wait_for("2000 rows", || (target.ints(count) == [2_000]).then_some(()));
    f.manager.stop("orders-sink").unwrap();
    produce(&f.host, "orders", &(2_000..2_500).map(|id| order(id, "")).collect::<Vec<_>>());
    f.manager.resume("orders-sink").unwrap();
    wait_for("2500 rows", || (target.ints(count) == [2_500]).then_some(()));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(target.ints("SELECT COUNT(DISTINCT id) FROM sink_orders"), [2_500], "no row twice");
    assert_eq!(target.ints(count), [2_500], "no row twice");
    // The positions in the target's table are the ends of the input partitions (past the commit
    // markers of the producer's transactions too).
    let ends: i64 = (0..3).map(|p| f.host.partition_offsets("orders", p).unwrap().last_stable).sum();
    let positions = target.ints("SELECT SUM(next_offset) FROM sluice_connect_offsets WHERE connector = 'orders-sink'");
    assert_eq!(positions, [ends]);

    // Upserts by key, tombstones deleting, a new field becoming a column.
    f.host.create_topic("customers", Some(1), &BTreeMap::new()).unwrap();
    let mut cfg = config(&[
        ("name", "customers-sink"),
        ("connector.class", "jdbc-sink"),
        ("topics", "customers"),
        ("insert.mode", "upsert"),
        ("pk.mode", "record_key"),
        ("delete.enabled", "true"),
        ("auto.create", "true"),
        ("auto.evolve", "true"),
    ]);
    cfg.extend(config(connection));
    f.manager.create(cfg, TargetState::Running).unwrap();
    produce(
        &f.host,
        "customers",
        &[
            (Some(r#"{"id": 1}"#.into()), Some(r#"{"id": 1, "name": "ann"}"#.into())),
            (Some(r#"{"id": 2}"#.into()), Some(r#"{"id": 2, "name": "bob"}"#.into())),
            (Some(r#"{"id": 1}"#.into()), Some(r#"{"id": 1, "name": "ann2"}"#.into())),
            (Some(r#"{"id": 3}"#.into()), Some(r#"{"id": 3, "name": "cy", "tier": 2}"#.into())),
            (Some(r#"{"id": 2}"#.into()), None),
        ],
    );
    wait_for("customers", || {
        let rows = target.rows("SELECT id, name, tier FROM customers ORDER BY id");
        (rows
            == vec![
                vec![SqlValue::Int(1), SqlValue::Text("ann2".into()), SqlValue::Null],
                vec![SqlValue::Int(3), SqlValue::Text("cy".into()), SqlValue::Int(2)],
            ])
        .then_some(())
    });
    for name in ["orders-sink", "customers-sink"] {
        let status = f.manager.status(name).unwrap();
        assert!(status.tasks.iter().all(|t| t.state == "RUNNING"), "{name}: {:?}", status.tasks);
    }
    // Caught up: every task's lag gauge reads 0.
    assert_eq!(f.gauges("connector_lag_records", "orders-sink"), vec![0.0, 0.0], "two tasks, caught up");
}

#[test]
fn sqlite_rows_arrive_exactly_once_and_survive_a_broker_restart() {
    let f = open(&["jdbc-sink"]);
    let db = f.dir.path().join("target.db");
    let url = format!("sqlite:{}", db.display());
    let mut target = Target::open(&url, None, None);
    rows_arrive_exactly_once(&f, &[("connection.url", &url)], &mut target);

    // A clean broker restart: the sink resumes from the positions in the target.
    let Fixture { manager, host, broker, runtime, dir, .. } = f;
    manager.stop_all();
    drop((manager, host, broker));
    let (manager, host, _broker) = start(dir.path(), &runtime, &[]);
    produce(&host, "orders", &(2_500..2_600).map(|id| order(id, "")).collect::<Vec<_>>());
    wait_for("2600 rows", || (target.ints("SELECT COUNT(*) FROM sink_orders") == [2_600]).then_some(()));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(target.ints("SELECT COUNT(*) FROM sink_orders"), [2_600], "no row twice after the restart");

    // KIP-875 reset reaches the target's table: resumed, the sink replays its input from the start.
    manager.stop("orders-sink").unwrap();
    manager.reset_offsets("orders-sink").unwrap();
    assert_eq!(target.ints("SELECT COUNT(*) FROM sluice_connect_offsets WHERE connector = 'orders-sink'"), [0]);
    manager.resume("orders-sink").unwrap();
    wait_for("the replay", || (target.ints("SELECT COUNT(*) FROM sink_orders") == [5_200]).then_some(()));
    manager.stop_all();
}

#[test]
fn a_row_the_target_refuses_is_dead_lettered_and_the_rest_commit() {
    let f = open(&["jdbc-sink"]);
    let db = f.dir.path().join("target.db");
    let url = format!("sqlite:{}", db.display());
    let mut target = Target::open(&url, None, None);
    target.sql.execute(target.conn, "CREATE TABLE payments (id INTEGER PRIMARY KEY, amount INTEGER CHECK (amount >= 0))", &[]).unwrap();
    f.host.create_topic("payments", Some(1), &BTreeMap::new()).unwrap();
    let records: Vec<_> =
        (0..50).map(|id| (None, Some(format!("{{\"id\": {id}, \"amount\": {}}}", if id == 17 || id == 33 { -1 } else { id })))).collect();
    produce(&f.host, "payments", &records);
    f.manager
        .create(
            config(&[
                ("name", "payments-sink"),
                ("connector.class", "jdbc-sink"),
                ("topics", "payments"),
                ("connection.url", &url),
                ("errors.tolerance", "all"),
                ("errors.deadletterqueue.topic.name", "payments-dlq"),
                ("errors.deadletterqueue.context.headers.enable", "true"),
            ]),
            TargetState::Running,
        )
        .unwrap();
    wait_for("48 rows", || (target.ints("SELECT COUNT(*) FROM payments") == [48]).then_some(()));
    let dead = wait_for("2 dead letters", || Some(f.values("payments-dlq")).filter(|v| v.len() == 2));
    assert!(dead[0].contains("\"id\": 17") && dead[1].contains("\"id\": 33"), "{dead:?}");
    let mut reader = f.host.reader("payments-dlq", 0, 0).unwrap();
    let first = reader.next_batch(10).unwrap().records.remove(0);
    let header = |name: &str| {
        first.headers.iter().find(|(k, _)| k == name).and_then(|(_, v)| v.clone()).map(|v| String::from_utf8(v.to_vec()).unwrap())
    };
    assert_eq!(header("sluice.source.offset").as_deref(), Some("17"));
    assert!(header("sluice.error").is_some_and(|e| e.contains("CHECK")), "{:?}", header("sluice.error"));
    let end = f.host.partition_offsets("payments", 0).unwrap().last_stable;
    wait_for("the position past the input", || {
        (target.ints("SELECT next_offset FROM sluice_connect_offsets WHERE connector = 'payments-sink'") == [end]).then_some(())
    });
}

#[test]
fn postgres_rows_arrive_exactly_once_and_an_outage_is_retried() {
    let pg = dbs::Postgres::start();
    let f = open(&["jdbc-sink"]);
    let mut target = Target::open(&pg.url(), Some(dbs::USER), Some(dbs::PASSWORD));
    let connection =
        [("connection.url", pg.url()), ("connection.user", dbs::USER.to_string()), ("connection.password", dbs::PASSWORD.to_string())];
    let connection: Vec<(&str, &str)> = connection.iter().map(|(k, v)| (*k, v.as_str())).collect();
    rows_arrive_exactly_once(&f, &connection, &mut target);

    // Exact types: numeric and timestamp columns of an existing table.
    target.sql.execute(target.conn, "CREATE TABLE prices (id BIGINT PRIMARY KEY, price NUMERIC(20, 6), at TIMESTAMPTZ)", &[]).unwrap();
    f.host.create_topic("prices", Some(1), &BTreeMap::new()).unwrap();
    let mut cfg = config(&[("name", "prices-sink"), ("connector.class", "jdbc-sink"), ("topics", "prices")]);
    cfg.extend(config(&connection));
    f.manager.create(cfg, TargetState::Running).unwrap();
    produce(
        &f.host,
        "prices",
        &[(None, Some(r#"{"id": 1, "price": "12345678901234.123456", "at": "2024-05-01T10:00:00.123456Z"}"#.into()))],
    );
    wait_for("the price", || {
        let rows = target.rows("SELECT price::text, at FROM prices");
        (rows == vec![vec![SqlValue::Text("12345678901234.123456".into()), SqlValue::TimestampTz("2024-05-01T10:00:00.123456Z".into())]])
            .then_some(())
    });

    // The target goes away: the task retries and says why; when it is back, every row arrives once.
    drop(target);
    pg.stop();
    produce(&f.host, "orders", &(2_500..2_700).map(|id| order(id, "")).collect::<Vec<_>>());
    wait_for("the outage in the status", || {
        let status = f.manager.status("orders-sink").unwrap();
        status.tasks.iter().any(|t| t.state == "RUNNING" && t.retries > 0 && t.last_error.is_some()).then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    pg.start_again();
    let mut target = Target::open(&pg.url(), Some(dbs::USER), Some(dbs::PASSWORD));
    wait_for("2700 rows", || (target.ints("SELECT COUNT(*) FROM sink_orders") == [2_700]).then_some(()));
    assert_eq!(target.ints("SELECT COUNT(DISTINCT id) FROM sink_orders"), [2_700]);
    wait_for("RUNNING again", || {
        f.manager.status("orders-sink").unwrap().tasks.iter().all(|t| t.state == "RUNNING" && t.last_error.is_none()).then_some(())
    });
}

#[test]
fn mariadb_rows_arrive_exactly_once() {
    let maria = dbs::MariaDb::start();
    let f = open(&["jdbc-sink"]);
    let mut target = Target::open(&maria.url(), Some(dbs::USER), Some(dbs::PASSWORD));
    let connection =
        [("connection.url", maria.url()), ("connection.user", dbs::USER.to_string()), ("connection.password", dbs::PASSWORD.to_string())];
    let connection: Vec<(&str, &str)> = connection.iter().map(|(k, v)| (*k, v.as_str())).collect();
    rows_arrive_exactly_once(&f, &connection, &mut target);
}
