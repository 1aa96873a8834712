//! The `sql` capability against real servers this test starts itself (PostgreSQL with
//! `wal_level=logical`, MariaDB; see `support/dbs.rs`) and SQLite: values round-trip with full
//! precision, transactions and batches are all or nothing, every limit is enforced with a clear error
//! and the connection stays usable, names not in the config are refused, failures are classified
//! (retriable or not, with the SQLSTATE), and time waiting on the database is measured and bounded.

#[path = "support/dbs.rs"]
mod dbs;

use std::collections::BTreeMap;
use std::time::Duration;

use sluice_connect::error::{ConnectError, SqlFailure};
use sluice_connect::sql::{ConnHandle, ConnectionSpec, Sql, SqlLimits, SqlValue};

use SqlValue::*;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap()
}

fn capability(runtime: &tokio::runtime::Runtime, specs: &[ConnectionSpec], limits: SqlLimits) -> Sql {
    let specs: BTreeMap<String, ConnectionSpec> = specs.iter().map(|s| (s.name.clone(), s.clone())).collect();
    Sql::new(specs, runtime.handle().clone(), limits).unwrap()
}

fn failure_of(error: &ConnectError) -> (SqlFailure, Option<String>) {
    match error {
        ConnectError::Sql { failure, sqlstate, .. } => (*failure, sqlstate.clone()),
        other => panic!("not a sql error: {other}"),
    }
}

fn text(s: &str) -> SqlValue {
    Text(s.into())
}

/// Checks shared by the servers: transactions, batches, limits.
fn transactions_batches_and_limits(sql: &mut Sql, conn: ConnHandle, duplicate_sqlstate: &str) {
    sql.execute(conn, "CREATE TABLE accounts (id INT PRIMARY KEY, owner VARCHAR(50))", &[]).unwrap();
    sql.begin(conn).unwrap();
    sql.execute(conn, "INSERT INTO accounts VALUES (1, 'rolled back')", &[]).unwrap();
    sql.rollback(conn).unwrap();
    sql.begin(conn).unwrap();
    assert!(matches!(failure_of(&sql.begin(conn).unwrap_err()).0, SqlFailure::Misuse), "a second BEGIN is refused");
    sql.execute(conn, "INSERT INTO accounts VALUES (2, 'committed')", &[]).unwrap();
    sql.commit(conn).unwrap();
    assert!(matches!(failure_of(&sql.commit(conn).unwrap_err()).0, SqlFailure::Misuse), "COMMIT without a transaction");
    let rows = sql.query(conn, "SELECT id, owner FROM accounts ORDER BY id", &[]).unwrap();
    assert_eq!(rows.rows, vec![vec![Int(2), text("committed")]]);

    // A batch with a duplicate key in its third row leaves nothing behind, and says why.
    let batch: Vec<Vec<SqlValue>> = [10, 11, 2, 12].iter().map(|id| vec![Int(*id), text("batch")]).collect();
    let insert = if duplicate_sqlstate == "23505" { "INSERT INTO accounts VALUES ($1, $2)" } else { "INSERT INTO accounts VALUES (?, ?)" };
    let error = sql.execute_batch(conn, insert, &batch).unwrap_err();
    assert_eq!(failure_of(&error), (SqlFailure::Refused, Some(duplicate_sqlstate.to_string())), "{error}");
    assert!(!error.is_retriable());
    let good: Vec<Vec<SqlValue>> = [20, 21, 22].iter().map(|id| vec![Int(*id), text("batch")]).collect();
    assert_eq!(sql.execute_batch(conn, insert, &good).unwrap(), vec![1, 1, 1]);
    assert_eq!(sql.query(conn, "SELECT COUNT(*) FROM accounts", &[]).unwrap().rows[0][0], Int(4));

    // Limits: each is an error naming the limit, and the connection stays usable.
    let limits = sql.limits();
    assert_eq!(limits.rows_per_query, 3, "the test runs with 3 rows per query");
    let too_many = sql.query(conn, "SELECT id FROM accounts", &[]).unwrap_err();
    assert_eq!(failure_of(&too_many).0, SqlFailure::Limit, "{too_many}");
    assert!(too_many.to_string().contains("more than 3 rows"));
    let wide = if duplicate_sqlstate == "23505" { "SELECT repeat('y', 2000)" } else { "SELECT REPEAT('y', 2000)" };
    let too_wide = sql.query(conn, wide, &[]).unwrap_err();
    assert_eq!(failure_of(&too_wide).0, SqlFailure::Limit);
    assert!(too_wide.to_string().contains("per value"), "{too_wide}");
    let long_statement = format!("SELECT 1 /* {} */", "z".repeat(limits.statement_bytes));
    assert_eq!(failure_of(&sql.query(conn, &long_statement, &[]).unwrap_err()).0, SqlFailure::Limit);
    assert_eq!(sql.query(conn, "SELECT 1", &[]).unwrap().rows.len(), 1, "still usable after every refusal");
}

fn small_limits() -> SqlLimits {
    SqlLimits { rows_per_query: 3, value_bytes: 1000, statement_bytes: 4096, ..SqlLimits::default() }
}

#[test]
fn postgres_keeps_precision_and_bounds_everything() {
    let server = dbs::Postgres::start();
    let runtime = runtime();
    let spec = ConnectionSpec::parse("default", &server.url(), Some(dbs::USER), Some(dbs::PASSWORD)).unwrap();
    let mut sql = capability(&runtime, std::slice::from_ref(&spec), SqlLimits::default());
    let conn = sql.open("default").unwrap();
    assert_eq!(sql.connection_name(conn), Some("default"));

    sql.execute(
        conn,
        "CREATE TABLE t (id BIGINT, n NUMERIC(40,20), d NUMERIC, ts TIMESTAMP(6), tz TIMESTAMPTZ, dt DATE, tm TIME, ttz TIMETZ, \
         b BYTEA, j JSONB, js JSON, s TEXT, u UUID, f FLOAT8, ok BOOLEAN, small INT2, nothing INT)",
        &[],
    )
    .unwrap();
    let row = vec![
        Int(i64::MAX),
        Decimal("12345678901234567890.12345678901234567890".into()),
        Decimal("-0.000000000000000000000000000001".into()),
        Timestamp("2024-02-29T23:59:59.123456".into()),
        TimestampTz("2024-02-29T23:59:59.000001+02:00".into()),
        Date("1999-12-31".into()),
        Time("00:00:00.000001".into()),
        Time("12:34:56.5+05:30".into()),
        Bytes(vec![0, 255, 1, 254]),
        Json(r#"{"a": [1, 2.50, "x"]}"#.into()),
        Json(r#"{"kept":  "as is"}"#.into()),
        text("naïve ✓"),
        Uuid("123e4567-e89b-12d3-a456-426614174000".into()),
        Float(0.1),
        Bool(true),
        Int(-32768),
        Null,
    ];
    // TIMETZ has no parameter form in the capability: it comes in as text and is cast.
    let insert =
        "INSERT INTO t VALUES ($1, $2, $3, $4, $5, $6, $7, $8::text::timetz, $9, $10, $11::jsonb::json, $12, $13, $14, $15, $16, $17)";
    let mut params = row.clone();
    params[7] = text("12:34:56.5+05:30");
    params[10] = Json(r#"{"kept":  "as is"}"#.into());
    assert_eq!(sql.execute(conn, insert, &params).unwrap(), 1);
    let result = sql.query(conn, "SELECT * FROM t", &[]).unwrap();
    assert_eq!(
        result.columns.iter().map(|c| c.type_name.as_str()).collect::<Vec<_>>()[..5],
        ["INT8", "NUMERIC", "NUMERIC", "TIMESTAMP", "TIMESTAMPTZ"]
    );
    let got = &result.rows[0];
    assert_eq!(got[0], Int(i64::MAX));
    assert_eq!(got[1], Decimal("12345678901234567890.12345678901234567890".into()));
    assert_eq!(got[2], Decimal("-0.000000000000000000000000000001".into()));
    assert_eq!(got[3], Timestamp("2024-02-29T23:59:59.123456".into()));
    assert_eq!(got[4], TimestampTz("2024-02-29T21:59:59.000001Z".into()), "the instant, in UTC, to the microsecond");
    assert_eq!(got[5], Date("1999-12-31".into()));
    assert_eq!(got[6], Time("00:00:00.000001".into()));
    assert_eq!(got[7], Time("12:34:56.500000+05:30".into()));
    assert_eq!(got[8], Bytes(vec![0, 255, 1, 254]));
    assert_eq!(got[9], Json(r#"{"a": [1, 2.50, "x"]}"#.into()));
    assert_eq!(got[10], Json(r#"{"kept": "as is"}"#.into()));
    assert_eq!(got[11..], row[11..]);

    // The same statement text bound with other types (NULL first, then a value) is prepared apart.
    sql.execute(conn, "CREATE TABLE n (v NUMERIC, w TIMESTAMP)", &[]).unwrap();
    for params in [vec![Null, Null], vec![Decimal("1.50".into()), Timestamp("2020-01-01T00:00:00".into())], vec![Int(7), Null]] {
        sql.execute(conn, "INSERT INTO n VALUES ($1, $2)", &params).unwrap();
    }
    let values = sql.query(conn, "SELECT v FROM n ORDER BY v NULLS FIRST", &[]).unwrap();
    assert_eq!(values.rows, vec![vec![Null], vec![Decimal("1.50".into())], vec![Decimal("7".into())]]);
    let nan = sql.query(conn, "SELECT 'NaN'::numeric, 'infinity'::timestamptz, $1::numeric", &[Decimal("-00012.3400".into())]).unwrap();
    assert_eq!(nan.rows[0], vec![Decimal("NaN".into()), TimestampTz("infinity".into()), Decimal("-12.3400".into())]);
    let interval = sql.query(conn, "SELECT interval '1 day'", &[]).unwrap_err();
    assert_eq!(failure_of(&interval).0, SqlFailure::Unsupported);
    assert!(interval.to_string().contains("cast it"), "{interval}");

    // Time waiting on the database is measured, and bounded per call.
    let before = sql.db_wait();
    sql.query(conn, "SELECT pg_sleep(0.3)", &[]).unwrap();
    assert!(sql.db_wait() - before >= Duration::from_millis(300), "{:?}", sql.db_wait() - before);
    let mut hasty =
        capability(&runtime, std::slice::from_ref(&spec), SqlLimits { call_timeout: Duration::from_millis(300), ..SqlLimits::default() });
    let slow = hasty.open("default").unwrap();
    let timed_out = hasty.query(slow, "SELECT pg_sleep(5)", &[]).unwrap_err();
    assert_eq!(failure_of(&timed_out).0, SqlFailure::TimedOut);
    assert!(timed_out.is_retriable());
    assert!(hasty.connection_name(slow).is_none(), "a connection whose call timed out is closed");

    // Names not in the config, bad passwords, unreachable servers.
    assert_eq!(failure_of(&sql.open("admin").unwrap_err()).0, SqlFailure::UnknownConnection);
    let wrong = ConnectionSpec::parse("default", &server.url(), Some(dbs::USER), Some("wrong")).unwrap();
    let refused = capability(&runtime, &[wrong], SqlLimits::default()).open("default").unwrap_err();
    assert_eq!(failure_of(&refused), (SqlFailure::Refused, Some("28P01".into())), "{refused}");
    assert!(!refused.to_string().contains("wrong"), "the password never appears in an error: {refused}");
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let nowhere = ConnectionSpec::parse("default", &format!("postgres://127.0.0.1:{closed_port}/x"), None, None).unwrap();
    let unreachable = capability(&runtime, &[nowhere], SqlLimits::default()).open("default").unwrap_err();
    assert_eq!(failure_of(&unreachable).0, SqlFailure::Unavailable);
    assert!(unreachable.is_retriable());

    let mut bounded = capability(&runtime, &[spec], small_limits());
    let conn = bounded.open("default").unwrap();
    transactions_batches_and_limits(&mut bounded, conn, "23505");
    bounded.close(conn).unwrap();
}

#[test]
fn mariadb_keeps_precision_and_bounds_everything() {
    let server = dbs::MariaDb::start();
    let runtime = runtime();
    let spec = ConnectionSpec::parse("dw", &format!("jdbc:mariadb://127.0.0.1:{}/test", server.port), Some(dbs::USER), Some(dbs::PASSWORD))
        .unwrap();
    let mut sql = capability(&runtime, std::slice::from_ref(&spec), SqlLimits::default());
    let conn = sql.open("dw").unwrap();
    sql.execute(
        conn,
        "CREATE TABLE t (id BIGINT, n DECIMAL(40,20), big BIGINT UNSIGNED, ts DATETIME(6), tz TIMESTAMP(6) NULL, dt DATE, tm TIME(6), \
         b BLOB, j JSON, s VARCHAR(20), f DOUBLE, nothing INT)",
        &[],
    )
    .unwrap();
    let params = vec![
        Int(i64::MIN),
        Decimal("-12345678901234567890.12345678901234567890".into()),
        Decimal("18446744073709551615".into()),
        Timestamp("2024-02-29T23:59:59.123456".into()),
        TimestampTz("2024-02-29T23:59:59.000001+02:00".into()),
        Date("1999-12-31".into()),
        Time("23:59:59.999999".into()),
        Bytes(vec![0, 255, 1, 254]),
        Json(r#"{"a": [1, 2.50]}"#.into()),
        text("naïve ✓"),
        Float(0.1),
        Null,
    ];
    assert_eq!(sql.execute(conn, "INSERT INTO t VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", &params).unwrap(), 1);
    let got = sql.query(conn, "SELECT * FROM t", &[]).unwrap().rows.remove(0);
    assert_eq!(got[0], Int(i64::MIN));
    assert_eq!(got[1], Decimal("-12345678901234567890.12345678901234567890".into()));
    assert_eq!(got[2], Decimal("18446744073709551615".into()), "BIGINT UNSIGNED beyond i64 stays exact");
    assert_eq!(got[3], Timestamp("2024-02-29T23:59:59.123456".into()));
    assert_eq!(got[4], TimestampTz("2024-02-29T21:59:59.000001Z".into()));
    assert_eq!(got[5], Date("1999-12-31".into()));
    assert_eq!(got[6], Time("23:59:59.999999".into()));
    assert_eq!(got[7], Bytes(vec![0, 255, 1, 254]));
    // MariaDB's JSON is LONGTEXT COLLATE utf8mb4_bin, which the protocol flags binary like a BLOB:
    // bytes, unless the query casts it to text.
    assert_eq!(got[8], Bytes(br#"{"a": [1, 2.50]}"#.to_vec()));
    let cast = sql.query(conn, "SELECT CAST(j AS CHAR) FROM t", &[]).unwrap();
    assert_eq!(cast.rows[0][0], text(r#"{"a": [1, 2.50]}"#));
    assert_eq!(got[9..], params[9..]);
    assert_eq!(failure_of(&sql.open("default").unwrap_err()).0, SqlFailure::UnknownConnection);
    let wrong = ConnectionSpec::parse("dw", &server.url(), Some(dbs::USER), Some("wrong")).unwrap();
    let refused = capability(&runtime, &[wrong], SqlLimits::default()).open("dw").unwrap_err();
    assert_eq!(failure_of(&refused).0, SqlFailure::Refused, "{refused}");

    let mut bounded = capability(&runtime, &[spec], small_limits());
    let conn = bounded.open("dw").unwrap();
    transactions_batches_and_limits(&mut bounded, conn, "23000");
}

#[test]
fn sqlite_round_trips_and_refuses_what_it_must() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime();
    let url = format!("jdbc:sqlite:{}", dir.path().join("local.db").display());
    let spec = ConnectionSpec::parse("local", &url, None, None).unwrap();
    let mut sql = capability(&runtime, &[spec], SqlLimits::default());
    let conn = sql.open("local").unwrap();
    sql.execute(conn, "CREATE TABLE t (id INTEGER PRIMARY KEY, n TEXT, b BLOB, f REAL, ts TEXT, missing INTEGER)", &[]).unwrap();
    let params = vec![
        Int(1),
        Decimal("0.10000000000000000000001".into()),
        Bytes(vec![0, 255]),
        Float(2.5),
        Timestamp("2024-01-01T00:00:00.000001".into()),
        Null,
    ];
    sql.execute(conn, "INSERT INTO t VALUES (?, ?, ?, ?, ?, ?)", &params).unwrap();
    let got = sql.query(conn, "SELECT * FROM t", &[]).unwrap().rows.remove(0);
    assert_eq!(
        got,
        vec![Int(1), text("0.10000000000000000000001"), Bytes(vec![0, 255]), Float(2.5), text("2024-01-01T00:00:00.000001"), Null]
    );
    let bad = sql.execute(conn, "INSERT INTO t (id) VALUES (?)", &[Decimal("1e5".into())]).unwrap_err();
    assert_eq!(failure_of(&bad).0, SqlFailure::Misuse, "{bad}");
    let duplicate = sql.execute_batch(conn, "INSERT INTO t (id) VALUES (?)", &[vec![Int(5)], vec![Int(1)]]).unwrap_err();
    assert_eq!(failure_of(&duplicate).0, SqlFailure::Refused);
    assert_eq!(sql.query(conn, "SELECT COUNT(*) FROM t", &[]).unwrap().rows[0][0], Int(1), "the batch left nothing");
}
