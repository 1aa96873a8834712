//! The `postgres-cdc` connector (a Wasm component reading logical decoding through the `sql`
//! capability) against a PostgreSQL server this test starts with `wal_level=logical`:
//!
//! - the initial snapshot and the stream meet exactly: rows inserted while the snapshot runs arrive
//!   once each, as a snapshot read or as an insert, never both and never neither;
//! - inserts, updates and deletes (with a tombstone) arrive in Debezium's envelope, in commit order,
//!   values in the same forms as the snapshot's;
//! - transactions committed out of order and a transaction larger than a poll arrive whole, once;
//! - a stop/resume and a broker restart neither lose nor repeat a change;
//! - an idle slot is moved forward (the heartbeat), so it does not pin WAL.

#[path = "support/dbs.rs"]
mod dbs;
#[path = "support/fixture.rs"]
mod fixture;

use std::collections::BTreeMap;
use std::time::Duration;

use fixture::*;
use serde_json::Value as Json;
use sluice_connect::store::TargetState;

const TOPIC: &str = "cdc.public.orders";

/// Every record of a topic: (key, value), null values (tombstones) as `Json::Null`.
fn events(f: &Fixture, topic: &str) -> Vec<(Json, Json)> {
    let Some(info) = f.host.topic(topic) else { return Vec::new() };
    let mut out = Vec::new();
    for p in 0..info.partitions {
        let mut reader = f.host.reader(topic, p, 0).unwrap();
        while reader.position() < reader.last_stable_offset() {
            for r in reader.next_batch(1000).unwrap().records {
                let parse = |b: Option<bytes::Bytes>| b.map_or(Json::Null, |b| serde_json::from_slice(&b).unwrap());
                out.push((parse(r.key), parse(r.value)));
            }
        }
    }
    out
}

/// Change events (not tombstones) per id: the ops in offset order (per partition, and one id is one key).
fn ops_by_id(f: &Fixture) -> BTreeMap<i64, Vec<String>> {
    let mut by_id: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    for (key, value) in events(f, TOPIC) {
        if value.is_null() {
            continue;
        }
        let id = key["id"].as_i64().unwrap();
        by_id.entry(id).or_default().push(value["op"].as_str().unwrap().to_owned());
    }
    by_id
}

fn wait_for_ops(f: &Fixture, what: &str, check: impl Fn(&BTreeMap<i64, Vec<String>>) -> bool) -> BTreeMap<i64, Vec<String>> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let ops = ops_by_id(f);
        if check(&ops) {
            return ops;
        }
        if std::time::Instant::now() > deadline {
            let status = f.manager.status("cdc").unwrap();
            let logs = f.manager.logs("cdc", 10).unwrap();
            panic!("timed out waiting for {what}: {} ids; status {status:#?}; logs {logs:#?}", ops.len());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn connect(pg: &dbs::Postgres) -> Target {
    Target::open(&pg.url(), Some(dbs::USER), Some(dbs::PASSWORD))
}

#[test]
fn snapshot_and_stream_meet_exactly_and_changes_arrive_once_across_restarts() {
    let pg = dbs::Postgres::start();
    let mut db = connect(&pg);
    db.exec("CREATE TABLE orders (id BIGSERIAL PRIMARY KEY, note TEXT, amount NUMERIC(10, 2), at TIMESTAMPTZ NOT NULL DEFAULT now())");
    db.exec("INSERT INTO orders (note, amount, at) SELECT 'n' || i, i * 1.5, '2026-01-01T00:00:00Z'::timestamptz + i * interval '1 ms' FROM generate_series(1, 5000) i");
    let f = open(&["postgres-cdc"]);
    let port = pg.port.to_string();
    let cfg = config(&[
        ("name", "cdc"),
        ("connector.class", "io.debezium.connector.postgresql.PostgresConnector"),
        ("database.hostname", "127.0.0.1"),
        ("database.port", &port),
        ("database.user", dbs::USER),
        ("database.password", dbs::PASSWORD),
        ("database.dbname", "postgres"),
        ("plugin.name", "pgoutput"),
        ("topic.prefix", "cdc"),
        ("max.batch.size", "100"),
        ("poll.interval.ms", "50"),
        ("heartbeat.interval.ms", "200"),
    ]);
    f.manager.create(cfg, TargetState::Running).unwrap();
    // Rows committed while the snapshot pages through the table, one transaction each.
    let url = pg.url();
    let writer = std::thread::spawn(move || {
        let mut db = Target::open(&url, Some(dbs::USER), Some(dbs::PASSWORD));
        for i in 0..1_000 {
            db.exec(&format!("INSERT INTO orders (note, amount) VALUES ('during {i}', 1)"));
        }
    });
    writer.join().unwrap();
    let ops = wait_for_ops(&f, "6000 rows", |ops| ops.len() == 6_000 && ops.values().all(|o| o.len() == 1));
    let reads = ops.values().filter(|o| o[0] == "r").count();
    assert!(ops.values().all(|o| o.len() == 1), "each row exactly once, as a read or an insert");
    assert!(reads >= 5_000, "{reads} snapshot reads");

    // The snapshot's and the stream's values have the same forms.
    let all = events(&f, TOPIC);
    let read = all.iter().find(|(k, v)| k["id"] == 3 && v["op"] == "r").unwrap().1.clone();
    assert_eq!(read["after"]["amount"], "4.50");
    assert_eq!(read["after"]["at"], "2026-01-01T00:00:00.003000Z");
    assert_eq!(read["source"]["table"], "orders");

    // Changes: update, delete (a tombstone follows), and two transactions committed out of order.
    db.exec("UPDATE orders SET note = 'changed', amount = 2.25, at = '2026-02-01T00:00:00.000001Z' WHERE id = 3");
    db.exec("DELETE FROM orders WHERE id = 4");
    let mut first = connect(&pg);
    let mut second = connect(&pg);
    first.sql.begin(first.conn).unwrap();
    first.exec("INSERT INTO orders (note) VALUES ('first begun')");
    second.sql.begin(second.conn).unwrap();
    second.exec("INSERT INTO orders (note) VALUES ('second begun')");
    second.sql.commit(second.conn).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    first.sql.commit(first.conn).unwrap();
    wait_for_ops(&f, "the changes", |ops| ops.len() == 6_002 && ops[&3].len() == 2 && ops[&4].len() == 2);
    let all = events(&f, TOPIC);
    let update = all.iter().find(|(k, v)| k["id"] == 3 && v["op"] == "u").unwrap().1.clone();
    assert_eq!(update["after"]["amount"], "2.25");
    assert_eq!(update["after"]["at"], "2026-02-01T00:00:00.000001Z");
    let delete = all.iter().position(|(k, v)| k["id"] == 4 && v["op"] == "d").unwrap();
    assert_eq!(all[delete].1["before"]["id"], 4);
    assert!(all[delete].1["after"].is_null());
    assert!(all[delete + 1].1.is_null() && all[delete + 1].0["id"] == 4, "a tombstone after the delete");

    // A small transaction then one larger than a poll, decoded together: the first poll ends inside
    // the second, whose rows the next poll's decoding session numbers differently (it describes the
    // table again): none twice. Then a stop and resume, then a broker restart.
    f.manager.stop("cdc").unwrap();
    db.exec("INSERT INTO orders (note) SELECT 'small ' || i FROM generate_series(1, 5) i");
    db.exec("INSERT INTO orders (note) SELECT 'bulk ' || i FROM generate_series(1, 1000) i");
    f.manager.resume("cdc").unwrap();
    wait_for_ops(&f, "the bulk transaction", |ops| ops.len() == 7_007);
    std::thread::sleep(Duration::from_millis(300));
    assert!(ops_by_id(&f).iter().all(|(id, o)| o.len() == 1 || *id == 3 || *id == 4), "no change twice");
    f.manager.stop("cdc").unwrap();
    db.exec("INSERT INTO orders (note) SELECT 'stopped ' || i FROM generate_series(1, 50) i");
    f.manager.resume("cdc").unwrap();
    wait_for_ops(&f, "rows written while stopped", |ops| ops.len() == 7_057);

    let Fixture { manager, host, broker, runtime, dir, .. } = f;
    manager.stop_all();
    drop((manager, host, broker));
    db.exec("INSERT INTO orders (note) SELECT 'restart ' || i FROM generate_series(1, 500) i");
    let (manager, host, broker) = start(dir.path(), &runtime, &[]);
    let f = Fixture::from_parts(manager, host, broker, runtime, dir);
    let ops = wait_for_ops(&f, "rows written across the restart", |ops| ops.len() == 7_557);
    std::thread::sleep(Duration::from_millis(500));
    let ops_after = ops_by_id(&f);
    assert_eq!(ops, ops_after);
    assert!(ops_after.iter().all(|(id, o)| o.len() == 1 || *id == 3 || *id == 4), "no change twice");

    // The heartbeat: WAL written in another database moves the idle slot forward.
    db.exec("CREATE DATABASE elsewhere");
    let elsewhere_url = pg.url().replace("/postgres", "/elsewhere");
    let mut elsewhere = Target::open(&elsewhere_url, Some(dbs::USER), Some(dbs::PASSWORD));
    elsewhere.exec("CREATE TABLE busy AS SELECT i FROM generate_series(1, 10000) i");
    let lsn = |db: &mut Target, sql: &str| match db.rows(sql).remove(0).remove(0) {
        sluice_connect::sql::SqlValue::Int(n) => n,
        other => panic!("{other:?}"),
    };
    let now = lsn(&mut db, "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint");
    wait_for("the slot to move forward", || {
        (lsn(&mut db, "SELECT pg_wal_lsn_diff(confirmed_flush_lsn, '0/0')::bigint FROM pg_replication_slots WHERE slot_name = 'debezium'")
            >= now)
            .then_some(())
    });
    let status = f.manager.status("cdc").unwrap();
    assert!(status.tasks.iter().all(|t| t.state == "RUNNING"), "{status:?}");
    f.manager.stop_all();
}

/// PostgreSQL → postgres-cdc → topic → jdbc-sink → PostgreSQL: inserts, updates and deletes (the sink
/// unwraps Debezium's envelope and deletes on `op: d`) leave the copy equal to the table, through a
/// transaction larger than one read of the slot.
#[test]
fn a_cdc_pipeline_keeps_a_copy_equal_to_the_table_deletes_included() {
    let pg = dbs::Postgres::start();
    let mut db = connect(&pg);
    db.exec("CREATE TABLE orders (id BIGSERIAL PRIMARY KEY, note TEXT, amount NUMERIC(10, 2))");
    db.exec("CREATE TABLE orders_copy (id BIGINT PRIMARY KEY, note TEXT, amount NUMERIC(10, 2))");
    db.exec("INSERT INTO orders (note, amount) SELECT 'n' || i, i * 0.25 FROM generate_series(1, 2000) i");
    let f = open(&["postgres-cdc", "jdbc-sink"]);
    let url = pg.url();
    let connection = [("connection.url", url.as_str()), ("connection.user", dbs::USER), ("connection.password", dbs::PASSWORD)];
    let mut source = config(&[
        ("name", "cdc"),
        ("connector.class", "postgres-cdc"),
        ("topic.prefix", "cdc"),
        ("table.include.list", "public\\.orders"),
        ("poll.interval.ms", "50"),
    ]);
    source.extend(config(&connection));
    f.host.create_topic(TOPIC, Some(3), &BTreeMap::new()).unwrap();
    let mut sink = config(&[
        ("name", "copy"),
        ("connector.class", "jdbc-sink"),
        ("topics", TOPIC),
        ("table.name.format", "orders_copy"),
        ("insert.mode", "upsert"),
        ("pk.mode", "record_key"),
        ("delete.enabled", "true"),
    ]);
    sink.extend(config(&connection));
    f.manager.create(source, TargetState::Running).unwrap();
    f.manager.create(sink, TargetState::Running).unwrap();
    db.exec("UPDATE orders SET note = 'updated', amount = amount + 1 WHERE id % 10 = 0");
    db.exec("DELETE FROM orders WHERE id % 7 = 0");
    // More changes than one query may return (10,000 rows), in small transactions: the connector
    // reads ahead of its polls, in bounded steps.
    db.exec(
        "DO $$ BEGIN FOR b IN 0..399 LOOP \
         INSERT INTO orders (note, amount) SELECT 'late ' || i, 9.99 FROM generate_series(b * 50 + 1, b * 50 + 50) i; \
         COMMIT; END LOOP; END $$",
    );
    let difference = "SELECT COUNT(*) FROM ((SELECT * FROM orders EXCEPT SELECT * FROM orders_copy) \
                      UNION ALL (SELECT * FROM orders_copy EXCEPT SELECT * FROM orders)) d";
    let count = |db: &mut Target, sql: &str| db.ints(sql).first().copied().unwrap_or(-1);
    wait_for("the copy equal to the table", || {
        (count(&mut db, difference) == 0 && count(&mut db, "SELECT COUNT(*) FROM orders_copy") == 21_715).then_some(())
    });
    for name in ["cdc", "copy"] {
        let status = f.manager.status(name).unwrap();
        assert!(status.tasks.iter().all(|t| t.state == "RUNNING"), "{name}: {status:?}");
    }
    // The WAL the slot retains is the task's own gauge, set by the module.
    let retained = f.gauges("connector_plugin_gauge", "cdc");
    assert!(retained.len() == 1 && retained[0] > 0.0, "sluice_connector_plugin_gauge{{name=\"retained_wal_bytes\"}}: {retained:?}");
    f.manager.stop_all();
}
