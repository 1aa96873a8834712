//! The `jdbc-source` connector (a Wasm component on the `sql` capability) reading SQLite, and
//! PostgreSQL and MariaDB servers this test starts itself (`support/dbs.rs`):
//!
//! - a table arrives complete, then its new rows, each once, across a stop/resume and a broker
//!   restart; values keep their precision; keys are the primary key;
//! - rows committed out of order by two concurrent transactions (the later-committing one holding
//!   the lower id and the older timestamp) all arrive, in incrementing and in timestamp modes;
//! - an initial 100,000-row PostgreSQL table arrives complete.

#[path = "support/dbs.rs"]
mod dbs;
#[path = "support/fixture.rs"]
mod fixture;

use std::collections::BTreeSet;
use std::time::Duration;

use fixture::*;
use serde_json::Value as Json;
use sluice_connect::store::TargetState;

fn json_values(f: &Fixture, topic: &str) -> Vec<Json> {
    f.values(topic).iter().map(|v| serde_json::from_str(v).unwrap()).collect()
}

/// The `id`s of a topic's records, checked to be distinct (no record twice).
fn ids(f: &Fixture, topic: &str) -> BTreeSet<i64> {
    let values = json_values(f, topic);
    let ids: BTreeSet<i64> = values.iter().map(|v| v["id"].as_i64().unwrap()).collect();
    assert_eq!(ids.len(), values.len(), "a row arrived twice in {topic}");
    ids
}

/// Waits until the ids in `topic` are `expected`; on timeout, says what arrived and how every connector is.
fn wait_for_ids(f: &Fixture, topic: &str, expected: impl IntoIterator<Item = i64>) {
    let expected: BTreeSet<i64> = expected.into_iter().collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let got = ids(f, topic);
        if got == expected {
            return;
        }
        if std::time::Instant::now() > deadline {
            let statuses: Vec<_> =
                f.manager.names().into_iter().map(|name| (f.manager.status(&name).unwrap(), f.manager.logs(&name, 5).unwrap())).collect();
            let missing: Vec<_> = expected.difference(&got).take(10).collect();
            panic!("{topic}: {} of {} ids, missing {missing:?}; connectors: {statuses:#?}", got.len(), expected.len());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn connector(name: &str, connection: &[(&str, &str)], extra: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
    let mut cfg = config(&[("name", name), ("connector.class", "jdbc-source"), ("poll.interval.ms", "100")]);
    cfg.extend(config(connection));
    cfg.extend(config(extra));
    cfg
}

fn assert_running(f: &Fixture, name: &str) {
    let status = f.manager.status(name).unwrap();
    assert!(status.tasks.iter().all(|t| t.state == "RUNNING"), "{name}: {:?}", status.tasks);
}

#[test]
fn sqlite_tables_arrive_once_across_a_restart_in_every_mode() {
    let f = open(&["jdbc-source"]);
    let db = f.dir.path().join("source.db");
    let url = format!("sqlite:{}", db.display());
    let mut source = Target::open(&url, None, None);
    source.exec("CREATE TABLE orders (id INTEGER PRIMARY KEY, amount NUMERIC, note TEXT, updated_at TEXT NOT NULL)");
    source.exec("CREATE TABLE skipped (id INTEGER PRIMARY KEY)");
    source.exec(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5000) \
         INSERT INTO orders SELECT i, i * 1.5, 'note ' || i, printf('2026-01-01T00:00:%02d.000000', i % 60) FROM n",
    );
    let connection = [("connection.url", url.as_str())];
    let incrementing = connector(
        "sq-inc",
        &connection,
        &[
            ("mode", "incrementing"),
            ("incrementing.column.name", "id"),
            ("table.whitelist", "orders"),
            ("topic.prefix", "inc-"),
            ("batch.max.rows", "700"),
        ],
    );
    f.manager.create(incrementing, TargetState::Running).unwrap();
    let both = connector(
        "sq-both",
        &connection,
        &[
            ("mode", "timestamp+incrementing"),
            ("incrementing.column.name", "id"),
            ("timestamp.column.name", "updated_at"),
            ("table.include.list", "ord.*"),
            ("topic.prefix", "both-"),
            ("batch.max.rows", "333"),
        ],
    );
    f.manager.create(both, TargetState::Running).unwrap();
    wait_for_ids(&f, "inc-orders", 1..=5000);
    wait_for_ids(&f, "both-orders", 1..=5000);
    assert!(f.host.topic("inc-skipped").is_none(), "table.whitelist leaves the other table out");
    let ages = f.gauges("connector_position_age_seconds", "sq-inc");
    assert!(ages.len() == 1 && ages[0] < 60.0, "the source task's position age: {ages:?}");

    // Keys are the primary key; values are the row, NUMERIC as exact text.
    let mut reader = f.host.reader("inc-orders", 0, 0).unwrap();
    let first = reader.next_batch(1).unwrap().records.remove(0);
    let key: Json = serde_json::from_slice(first.key.as_deref().unwrap()).unwrap();
    let value: Json = serde_json::from_slice(first.value.as_deref().unwrap()).unwrap();
    assert_eq!(key, serde_json::json!({ "id": value["id"] }));
    assert!(value["note"].as_str().unwrap().starts_with("note "), "{value}");

    // Stopped, the connectors miss nothing; updates arrive again in timestamp+incrementing mode.
    f.manager.stop("sq-inc").unwrap();
    source.exec("INSERT INTO orders VALUES (5001, 1, 'late', '2026-01-02T00:00:00.000000')");
    source.exec("UPDATE orders SET note = 'changed', updated_at = '2026-01-03T00:00:00.000001' WHERE id = 7");
    f.manager.resume("sq-inc").unwrap();
    wait_for_ids(&f, "inc-orders", 1..=5001);
    wait_for("the update", || {
        let values = json_values(&f, "both-orders");
        (values.len() == 5002 && values.last().unwrap()["note"] == "changed").then_some(())
    });

    // A broker restart: each connector resumes from its committed position.
    let Fixture { manager, host, broker, runtime, dir, .. } = f;
    manager.stop_all();
    drop((manager, host, broker));
    let (manager, host, broker) = start(dir.path(), &runtime, &[]);
    let f = Fixture::from_parts(manager, host, broker, runtime, dir);
    source.exec("INSERT INTO orders VALUES (5002, 2, 'after', '2026-01-04T00:00:00.000000')");
    wait_for_ids(&f, "inc-orders", 1..=5002);
    wait_for("5003 records", || (json_values(&f, "both-orders").len() == 5003).then_some(()));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(ids(&f, "inc-orders").len(), 5002, "no row twice after the restart");
    assert_eq!(json_values(&f, "both-orders").len(), 5003, "no row twice after the restart");

    // Bulk mode reads the whole table each time; query mode reads a query into topic.prefix.
    let bulk = connector("sq-bulk", &connection, &[("mode", "bulk"), ("table.whitelist", "skipped"), ("topic.prefix", "bulk-")]);
    source.exec("INSERT INTO skipped VALUES (1), (2), (3)");
    f.manager.create(bulk, TargetState::Running).unwrap();
    wait_for("two passes over the table", || (f.values("bulk-skipped").len() >= 6).then_some(()));
    let query = connector(
        "sq-query",
        &connection,
        &[
            ("mode", "incrementing"),
            ("incrementing.column.name", "id"),
            ("query", "SELECT id, note FROM orders WHERE note LIKE 'note 1%'"),
            ("topic.prefix", "notes-one"),
            ("value.converter.schemas.enable", "true"),
        ],
    );
    f.manager.create(query, TargetState::Running).unwrap();
    let expected = (1..=5000).filter(|i: &i64| i.to_string().starts_with('1')).count();
    let values = wait_for("the query's rows", || Some(json_values(&f, "notes-one")).filter(|v| v.len() == expected));
    assert_eq!(values[0]["schema"]["fields"][0]["field"], "id");
    assert_eq!(values[0]["payload"]["note"], "note 1");
    for name in ["sq-inc", "sq-both", "sq-bulk", "sq-query"] {
        assert_running(&f, name);
    }
    f.manager.stop_all();
}

/// Two concurrent transactions: the first takes the lower id (and the older `now()`), the second
/// commits first; the first commits only after the connectors have polled in between.
fn commit_out_of_order(url: &str, insert: &str) {
    let mut first = Target::open(url, Some(dbs::USER), Some(dbs::PASSWORD));
    let mut second = Target::open(url, Some(dbs::USER), Some(dbs::PASSWORD));
    first.sql.begin(first.conn).unwrap();
    first.exec(insert);
    std::thread::sleep(Duration::from_millis(20));
    second.sql.begin(second.conn).unwrap();
    second.exec(insert);
    second.sql.commit(second.conn).unwrap();
    // Several polls see the second row committed and the first still open.
    std::thread::sleep(Duration::from_millis(1_500));
    first.sql.commit(first.conn).unwrap();
}

#[test]
fn postgres_initial_load_and_out_of_order_commits_in_incrementing_and_timestamp_modes() {
    let pg = dbs::Postgres::start();
    let url = pg.url();
    let mut source = Target::open(&url, Some(dbs::USER), Some(dbs::PASSWORD));
    source.exec(
        "CREATE TABLE orders (id BIGSERIAL PRIMARY KEY, amount NUMERIC(14, 4) NOT NULL, note TEXT, \
         updated_at TIMESTAMPTZ NOT NULL DEFAULT now())",
    );
    source.exec(
        "INSERT INTO orders (amount, note, updated_at) SELECT i * 1.0001, repeat('x', 150), \
         '2026-01-01T00:00:00Z'::timestamptz + i * interval '1 microsecond' FROM generate_series(1, 100000) i",
    );
    let f = open(&["jdbc-source"]);
    let connection = [("connection.url", url.as_str()), ("connection.user", dbs::USER), ("connection.password", dbs::PASSWORD)];
    let incrementing = connector(
        "pg-inc",
        &connection,
        &[("mode", "incrementing"), ("incrementing.column.name", "id"), ("topic.prefix", "inc-"), ("batch.max.rows", "5000")],
    );
    let timestamp = connector(
        "pg-ts",
        &connection,
        &[("mode", "timestamp"), ("timestamp.column.name", "updated_at"), ("topic.prefix", "ts-"), ("batch.max.rows", "5000")],
    );
    f.manager.create(incrementing, TargetState::Running).unwrap();
    f.manager.create(timestamp, TargetState::Running).unwrap();
    wait_for_ids(&f, "inc-orders", 1..=100_000);
    wait_for_ids(&f, "ts-orders", 1..=100_000);
    let sample = json_values(&f, "inc-orders").into_iter().find(|v| v["id"] == 3).unwrap();
    assert_eq!(sample["amount"], "3.0003", "NUMERIC exactly");
    assert_eq!(sample["updated_at"], "2026-01-01T00:00:00.000003Z", "microseconds kept");

    commit_out_of_order(&url, "INSERT INTO orders (amount, note) VALUES (1, 'concurrent')");
    wait_for_ids(&f, "inc-orders", 1..=100_002);
    wait_for_ids(&f, "ts-orders", 1..=100_002);

    // An update moves a row's timestamp: timestamp mode reads it again, incrementing mode does not.
    source.exec("UPDATE orders SET note = 'updated', updated_at = now() WHERE id = 5");
    wait_for("the update", || json_values(&f, "ts-orders").iter().any(|v| v["note"] == "updated").then_some(()));
    assert_eq!(json_values(&f, "ts-orders").len(), 100_003);
    assert_running(&f, "pg-inc");
    assert_running(&f, "pg-ts");
    f.manager.stop_all();
}

#[test]
fn mariadb_rows_committed_out_of_order_arrive_within_the_lag_window() {
    let maria = dbs::MariaDb::start();
    let url = maria.url();
    let mut source = Target::open(&url, Some(dbs::USER), Some(dbs::PASSWORD));
    source.exec("CREATE TABLE orders (id BIGINT AUTO_INCREMENT PRIMARY KEY, note VARCHAR(100), at DATETIME(6) NOT NULL DEFAULT NOW(6))");
    for _ in 0..10 {
        source.exec("INSERT INTO orders (note) VALUES ('a'), ('b'), ('c'), ('d'), ('e'), ('f'), ('g'), ('h'), ('i'), ('j')");
    }
    let f = open(&["jdbc-source"]);
    let connection = [("connection.url", url.as_str()), ("connection.user", dbs::USER), ("connection.password", dbs::PASSWORD)];
    let common = [("topic.prefix", "m-"), ("commit.lag.ms", "3000")];
    let mut incrementing = connector("m-inc", &connection, &[("mode", "incrementing"), ("incrementing.column.name", "id")]);
    incrementing.extend(config(&common));
    let mut timestamp = connector(
        "m-ts",
        &connection,
        &[
            ("mode", "timestamp+incrementing"),
            ("incrementing.column.name", "id"),
            ("timestamp.column.name", "at"),
            ("topic.prefix", "mts-"),
        ],
    );
    timestamp.insert("commit.lag.ms".into(), "3000".into());
    f.manager.create(incrementing, TargetState::Running).unwrap();
    f.manager.create(timestamp, TargetState::Running).unwrap();
    wait_for_ids(&f, "m-orders", 1..=100);
    wait_for_ids(&f, "mts-orders", 1..=100);
    commit_out_of_order(&url, "INSERT INTO orders (note) VALUES ('concurrent')");
    wait_for_ids(&f, "m-orders", 1..=102);
    wait_for_ids(&f, "mts-orders", 1..=102);
    assert_running(&f, "m-inc");
    assert_running(&f, "m-ts");
    f.manager.stop_all();
}

#[test]
fn a_bad_configuration_fails_with_a_clear_status() {
    let f = open(&["jdbc-source"]);
    let url = format!("sqlite:{}", f.dir.path().join("none.db").display());
    let cfg = connector("bad", &[("connection.url", &url)], &[("mode", "incrementing")]);
    f.manager.create(cfg, TargetState::Running).unwrap();
    let (state, trace) = wait_for("FAILED", || Some(f.task_state("bad")).filter(|(state, _)| state == "FAILED"));
    assert_eq!(state, "FAILED");
    assert!(trace.unwrap_or_default().contains("incrementing.column.name"));
}
