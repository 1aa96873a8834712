//! One task's `sql` capability as its Wasm instance sees it: [`SqlSession`] answers the connector
//! worlds' `sql` import (`sluice_wasm::SqlHost`) over [`Sql`], and gives the sink driver the
//! *managed* connection — the target connection whose transaction the runtime owns, so that the
//! rows a sink's `put` writes and the sink's input position commit together.
//!
//! The managed connection is the connector's `default` one. The guest sees it under a handle of its
//! own, [`MANAGED_HANDLE`], which stays valid when the runtime has to open the connection again
//! (after the database went away): the guest may keep what `open` returned in its state across
//! batches. On it, `begin`, `commit` and `rollback` are refused (`misuse`) and `close` does nothing.
//!
//! **The batch transaction** ([`SqlSession::start_batch`] … [`SqlSession::finish_batch`]) begins
//! lazily, at the guest's first statement that writes: reads (`SELECT`, `SHOW`, `PRAGMA`, …) and
//! schema changes (`CREATE`, `ALTER`, `DROP`, …) before it run on their own. That matters on
//! MySQL/MariaDB, where a schema change commits the open transaction implicitly: there, a schema
//! change after the batch has written is refused (`misuse`: make schema changes first), so the rows
//! and the input positions always commit together. PostgreSQL and SQLite change schemas inside the
//! transaction. The driver's savepoints (one per attempt at a range of the batch, so a failing
//! attempt can be undone without losing the good ones) follow the same lazy begin.

use parking_lot::Mutex;
use sluice_wasm::{SqlCallError, SqlColumn, SqlConnection, SqlDialect, SqlFailure as WitFailure, SqlHost, SqlRows, SqlValue as WitValue};

use super::{ConnHandle, Dialect, Sql, SqlRows as Rows, SqlValue};
use crate::error::{ConnectError, SqlFailure};

/// The guest's handle for the managed connection (the capability's own handles start at 1).
pub const MANAGED_HANDLE: u32 = 0;
/// The connection a sink's writes and input position commit on.
pub const MANAGED_CONNECTION: &str = "default";

struct Inner {
    sql: Sql,
    /// Whether this session has a managed connection at all (sinks do, sources do not).
    managed: bool,
    /// The managed connection's handle in `sql`, while it is open.
    managed_handle: Option<ConnHandle>,
    /// The batch in progress (between `start_batch` and `finish_batch` / `abort_batch`).
    batch: Option<Batch>,
}

/// The state of the batch transaction.
#[derive(Debug, Clone, Copy, Default)]
struct Batch {
    /// Whether `BEGIN` went to the database (at the first write).
    begun: bool,
    savepoint: Savepoint,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Savepoint {
    #[default]
    None,
    /// Asked for before the transaction began: set right after `BEGIN`.
    Wanted,
    Set,
}

const SAVEPOINT: &str = "sluice_attempt";

/// What a statement does, by its first keyword.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Read,
    Schema,
    Write,
}

fn kind_of(statement: &str) -> Kind {
    let mut rest = statement.trim_start();
    // Leading comments and parentheses do not change what a statement does.
    loop {
        if let Some(after) = rest.strip_prefix("--") {
            rest = after.split_once('\n').map_or("", |(_, r)| r).trim_start();
        } else if let Some(after) = rest.strip_prefix("/*") {
            rest = after.split_once("*/").map_or("", |(_, r)| r).trim_start();
        } else if let Some(after) = rest.strip_prefix('(') {
            rest = after.trim_start();
        } else {
            break;
        }
    }
    let word: String = rest.chars().take_while(|c| c.is_ascii_alphabetic()).collect::<String>().to_ascii_uppercase();
    match word.as_str() {
        "SELECT" | "SHOW" | "PRAGMA" | "EXPLAIN" | "DESCRIBE" | "DESC" | "VALUES" | "TABLE" => Kind::Read,
        "CREATE" | "ALTER" | "DROP" | "TRUNCATE" | "RENAME" | "COMMENT" => Kind::Schema,
        _ => Kind::Write,
    }
}

/// A task's database connections, shared by its Wasm instance and its driver.
pub struct SqlSession {
    inner: Mutex<Inner>,
}

impl SqlSession {
    /// `managed`: give the sink driver the `default` connection's transaction.
    pub fn new(sql: Sql, managed: bool) -> SqlSession {
        SqlSession { inner: Mutex::new(Inner { sql, managed, managed_handle: None, batch: None }) }
    }

    /// Starts a batch: the guest's first write on the managed connection begins its transaction.
    pub fn start_batch(&self) {
        let mut inner = self.inner.lock();
        inner.abort_batch();
        inner.batch = Some(Batch::default());
    }

    /// Marks where an attempt starts, so [`SqlSession::rollback_attempt`] can undo it alone.
    pub fn start_attempt(&self) -> Result<(), ConnectError> {
        let mut inner = self.inner.lock();
        let Some(batch) = inner.batch else { return Ok(()) };
        if batch.begun {
            inner.exec_managed(&format!("SAVEPOINT {SAVEPOINT}"))?;
            inner.set_savepoint(Savepoint::Set);
        } else {
            inner.set_savepoint(Savepoint::Wanted);
        }
        Ok(())
    }

    /// Keeps what the attempt wrote.
    pub fn keep_attempt(&self) -> Result<(), ConnectError> {
        let mut inner = self.inner.lock();
        if inner.batch.is_some_and(|b| b.savepoint == Savepoint::Set) {
            inner.exec_managed(&format!("RELEASE SAVEPOINT {SAVEPOINT}"))?;
        }
        inner.set_savepoint(Savepoint::None);
        Ok(())
    }

    /// Undoes what the attempt wrote (and only that).
    pub fn rollback_attempt(&self) -> Result<(), ConnectError> {
        let mut inner = self.inner.lock();
        if inner.batch.is_some_and(|b| b.savepoint == Savepoint::Set) {
            inner.exec_managed(&format!("ROLLBACK TO SAVEPOINT {SAVEPOINT}"))?;
            inner.exec_managed(&format!("RELEASE SAVEPOINT {SAVEPOINT}"))?;
        }
        inner.set_savepoint(Savepoint::None);
        Ok(())
    }

    /// Commits the batch: begins the transaction if the guest wrote nothing, runs `positions`
    /// (the driver's own writes) in it, and commits. On an error the transaction is rolled back.
    pub fn finish_batch(&self, positions: impl FnOnce(&mut Sql, ConnHandle) -> Result<(), ConnectError>) -> Result<(), ConnectError> {
        let mut inner = self.inner.lock();
        let outcome = (|| {
            inner.begin_batch()?;
            let handle = inner.managed_handle()?;
            positions(&mut inner.sql, handle)?;
            inner.sql.commit(handle)
        })();
        if outcome.is_err() {
            inner.abort_batch();
        }
        inner.batch = None;
        outcome
    }

    /// Rolls the batch back, if it began.
    pub fn abort_batch(&self) {
        self.inner.lock().abort_batch();
    }

    /// Runs `call` on the managed connection, opening it first when it is not open (anymore).
    pub fn with_managed<R>(&self, call: impl FnOnce(&mut Sql, ConnHandle) -> Result<R, ConnectError>) -> Result<R, ConnectError> {
        let mut inner = self.inner.lock();
        let handle = inner.managed_handle()?;
        call(&mut inner.sql, handle)
    }

    /// The managed connection's dialect (opening it if needed).
    pub fn managed_dialect(&self) -> Result<Dialect, ConnectError> {
        self.with_managed(|sql, handle| sql.dialect(handle))
    }

    /// Time spent waiting on databases so far.
    pub fn db_wait(&self) -> std::time::Duration {
        self.inner.lock().sql.db_wait()
    }
}

impl Inner {
    fn set_savepoint(&mut self, state: Savepoint) {
        if let Some(batch) = self.batch.as_mut() {
            batch.savepoint = state;
        }
    }

    fn exec_managed(&mut self, statement: &str) -> Result<(), ConnectError> {
        let handle = self.managed_handle()?;
        self.sql.execute(handle, statement, &[]).map(drop)
    }

    /// Sends `BEGIN` (and a wanted savepoint) if the batch has not begun.
    fn begin_batch(&mut self) -> Result<(), ConnectError> {
        let Some(batch) = self.batch else { return Ok(()) };
        if batch.begun {
            return Ok(());
        }
        let handle = self.managed_handle()?;
        if !self.sql.in_transaction(handle) {
            self.sql.begin(handle)?;
        }
        if let Some(batch) = self.batch.as_mut() {
            batch.begun = true;
        }
        if batch.savepoint == Savepoint::Wanted {
            self.exec_managed(&format!("SAVEPOINT {SAVEPOINT}"))?;
            self.set_savepoint(Savepoint::Set);
        }
        Ok(())
    }

    fn abort_batch(&mut self) {
        if let Some(handle) = self.managed_handle
            && self.sql.in_transaction(handle)
        {
            let _ = self.sql.rollback(handle);
        }
        self.batch = None;
    }

    /// Before a guest statement on the managed connection: a write begins the batch; a schema
    /// change after it began is refused on MySQL (it would commit the batch implicitly).
    fn before_managed(&mut self, statement: &str) -> Result<(), ConnectError> {
        let Some(batch) = self.batch else { return Ok(()) };
        match kind_of(statement) {
            Kind::Read => Ok(()),
            Kind::Write => self.begin_batch(),
            Kind::Schema if batch.begun => {
                let handle = self.managed_handle()?;
                if self.sql.dialect(handle)? == Dialect::MySql {
                    return Err(ConnectError::sql(
                        SqlFailure::Misuse,
                        "a schema change after this batch has written rows: on MySQL/MariaDB it would commit the batch's transaction \
                         without its input position; make schema changes before the batch's first write",
                    ));
                }
                Ok(())
            }
            Kind::Schema => Ok(()),
        }
    }

    fn managed_handle(&mut self) -> Result<ConnHandle, ConnectError> {
        if !self.managed {
            return Err(ConnectError::sql(SqlFailure::Misuse, "this task has no managed connection"));
        }
        if let Some(handle) = self.managed_handle
            && self.sql.is_open(handle)
        {
            return Ok(handle);
        }
        let handle = self.sql.open(MANAGED_CONNECTION)?;
        self.managed_handle = Some(handle);
        Ok(handle)
    }

    /// The capability's handle for a guest's handle, after `before_managed` for the managed one.
    fn handle(&mut self, guest: u32, statement: &str) -> Result<ConnHandle, ConnectError> {
        if guest == MANAGED_HANDLE && self.managed {
            self.before_managed(statement)?;
            self.managed_handle()
        } else {
            Ok(ConnHandle(guest))
        }
    }

    fn unmanaged(&mut self, guest: u32, what: &str) -> Result<ConnHandle, ConnectError> {
        if guest == MANAGED_HANDLE && self.managed {
            return Err(ConnectError::sql(
                SqlFailure::Misuse,
                format!(
                    "{what} on the sink's managed connection: the runtime begins and commits its transaction, with the input position, around each put"
                ),
            ));
        }
        Ok(ConnHandle(guest))
    }
}

fn call_error(error: ConnectError) -> SqlCallError {
    match error {
        ConnectError::Sql { failure, sqlstate, message } => {
            let failure = match failure {
                SqlFailure::UnknownConnection => WitFailure::UnknownConnection,
                SqlFailure::Limit => WitFailure::Limit,
                SqlFailure::Unavailable => WitFailure::Unavailable,
                SqlFailure::Refused => WitFailure::Refused,
                SqlFailure::TimedOut => WitFailure::TimedOut,
                SqlFailure::Unsupported => WitFailure::Unsupported,
                SqlFailure::Misuse => WitFailure::Misuse,
            };
            SqlCallError { failure, sqlstate, message }
        }
        other => SqlCallError { failure: WitFailure::Misuse, sqlstate: None, message: other.to_string() },
    }
}

fn value_in(value: WitValue) -> SqlValue {
    match value {
        WitValue::Null => SqlValue::Null,
        WitValue::Boolean(v) => SqlValue::Bool(v),
        WitValue::Int(v) => SqlValue::Int(v),
        WitValue::Float(v) => SqlValue::Float(v),
        WitValue::Decimal(v) => SqlValue::Decimal(v),
        WitValue::Text(v) => SqlValue::Text(v),
        WitValue::Bytes(v) => SqlValue::Bytes(v),
        WitValue::Json(v) => SqlValue::Json(v),
        WitValue::Date(v) => SqlValue::Date(v),
        WitValue::Time(v) => SqlValue::Time(v),
        WitValue::Timestamp(v) => SqlValue::Timestamp(v),
        WitValue::Timestamptz(v) => SqlValue::TimestampTz(v),
        WitValue::Uuid(v) => SqlValue::Uuid(v),
    }
}

fn value_out(value: SqlValue) -> WitValue {
    match value {
        SqlValue::Null => WitValue::Null,
        SqlValue::Bool(v) => WitValue::Boolean(v),
        SqlValue::Int(v) => WitValue::Int(v),
        SqlValue::Float(v) => WitValue::Float(v),
        SqlValue::Decimal(v) => WitValue::Decimal(v),
        SqlValue::Text(v) => WitValue::Text(v),
        SqlValue::Bytes(v) => WitValue::Bytes(v),
        SqlValue::Json(v) => WitValue::Json(v),
        SqlValue::Date(v) => WitValue::Date(v),
        SqlValue::Time(v) => WitValue::Time(v),
        SqlValue::Timestamp(v) => WitValue::Timestamp(v),
        SqlValue::TimestampTz(v) => WitValue::Timestamptz(v),
        SqlValue::Uuid(v) => WitValue::Uuid(v),
    }
}

fn rows_out(rows: Rows) -> SqlRows {
    SqlRows {
        columns: rows.columns.into_iter().map(|c| SqlColumn { name: c.name, type_name: c.type_name }).collect(),
        rows: rows.rows.into_iter().map(|row| row.into_iter().map(value_out).collect()).collect(),
    }
}

fn dialect_out(dialect: Dialect) -> SqlDialect {
    match dialect {
        Dialect::Postgres => SqlDialect::Postgres,
        Dialect::MySql => SqlDialect::Mysql,
        Dialect::Sqlite => SqlDialect::Sqlite,
    }
}

impl SqlHost for SqlSession {
    fn open(&self, name: &str) -> Result<SqlConnection, SqlCallError> {
        let mut inner = self.inner.lock();
        if inner.managed && name == MANAGED_CONNECTION {
            let handle = inner.managed_handle().map_err(call_error)?;
            let dialect = inner.sql.dialect(handle).map_err(call_error)?;
            return Ok(SqlConnection { handle: MANAGED_HANDLE, dialect: dialect_out(dialect), managed: true });
        }
        let handle = inner.sql.open(name).map_err(call_error)?;
        let dialect = inner.sql.dialect(handle).map_err(call_error)?;
        Ok(SqlConnection { handle: handle.0, dialect: dialect_out(dialect), managed: false })
    }

    fn close(&self, handle: u32) {
        let mut inner = self.inner.lock();
        if let Ok(handle) = inner.unmanaged(handle, "close") {
            let _ = inner.sql.close(handle);
        }
    }

    fn query(&self, handle: u32, statement: &str, params: Vec<WitValue>) -> Result<SqlRows, SqlCallError> {
        let params: Vec<SqlValue> = params.into_iter().map(value_in).collect();
        let mut inner = self.inner.lock();
        let handle = inner.handle(handle, statement).map_err(call_error)?;
        inner.sql.query(handle, statement, &params).map(rows_out).map_err(call_error)
    }

    fn execute(&self, handle: u32, statement: &str, params: Vec<WitValue>) -> Result<u64, SqlCallError> {
        let params: Vec<SqlValue> = params.into_iter().map(value_in).collect();
        let mut inner = self.inner.lock();
        let handle = inner.handle(handle, statement).map_err(call_error)?;
        inner.sql.execute(handle, statement, &params).map_err(call_error)
    }

    fn execute_batch(&self, handle: u32, statement: &str, rows: Vec<Vec<WitValue>>) -> Result<Vec<u64>, SqlCallError> {
        let rows: Vec<Vec<SqlValue>> = rows.into_iter().map(|row| row.into_iter().map(value_in).collect()).collect();
        let mut inner = self.inner.lock();
        let handle = inner.handle(handle, statement).map_err(call_error)?;
        inner.sql.execute_batch(handle, statement, &rows).map_err(call_error)
    }

    fn begin(&self, handle: u32) -> Result<(), SqlCallError> {
        let mut inner = self.inner.lock();
        let handle = inner.unmanaged(handle, "begin").map_err(call_error)?;
        inner.sql.begin(handle).map_err(call_error)
    }

    fn commit(&self, handle: u32) -> Result<(), SqlCallError> {
        let mut inner = self.inner.lock();
        let handle = inner.unmanaged(handle, "commit").map_err(call_error)?;
        inner.sql.commit(handle).map_err(call_error)
    }

    fn rollback(&self, handle: u32) -> Result<(), SqlCallError> {
        let mut inner = self.inner.lock();
        let handle = inner.unmanaged(handle, "rollback").map_err(call_error)?;
        inner.sql.rollback(handle).map_err(call_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_are_told_apart_by_their_first_keyword() {
        assert_eq!(kind_of("  select 1"), Kind::Read);
        assert_eq!(kind_of("-- why\n/* note */ (SELECT 1)"), Kind::Read);
        assert_eq!(kind_of("CREATE TABLE t (a INT)"), Kind::Schema);
        assert_eq!(kind_of("alter table t add column b int"), Kind::Schema);
        assert_eq!(kind_of("INSERT INTO t VALUES (1)"), Kind::Write);
        assert_eq!(kind_of("WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x"), Kind::Write);
        assert_eq!(kind_of(""), Kind::Write);
    }

    #[test]
    fn the_batch_begins_at_the_first_write_and_commits_with_the_positions() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let spec = super::super::ConnectionSpec::parse("default", "sqlite::memory:", None, None).unwrap();
        let sql = Sql::new(std::collections::BTreeMap::from([("default".to_string(), spec)]), runtime.handle().clone(), Default::default())
            .unwrap();
        let session = SqlSession::new(sql, true);
        let db = session.open("default").unwrap();
        assert!(db.managed && db.handle == MANAGED_HANDLE);
        session.execute(MANAGED_HANDLE, "CREATE TABLE t (a INTEGER CHECK (a >= 0))", Vec::new()).unwrap();
        assert_eq!(session.begin(MANAGED_HANDLE).unwrap_err().failure, WitFailure::Misuse);

        // A batch whose second attempt fails keeps the first attempt's row only.
        session.start_batch();
        session.start_attempt().unwrap();
        session.execute(MANAGED_HANDLE, "INSERT INTO t VALUES (1)", Vec::new()).unwrap();
        session.keep_attempt().unwrap();
        session.start_attempt().unwrap();
        session.execute(MANAGED_HANDLE, "INSERT INTO t VALUES (2)", Vec::new()).unwrap();
        assert!(session.execute(MANAGED_HANDLE, "INSERT INTO t VALUES (-1)", Vec::new()).is_err());
        session.rollback_attempt().unwrap();
        session.finish_batch(|sql, handle| sql.execute(handle, "INSERT INTO t VALUES (100)", &[]).map(drop)).unwrap();
        let rows = session.query(MANAGED_HANDLE, "SELECT a FROM t ORDER BY a", Vec::new()).unwrap();
        assert_eq!(rows.rows, vec![vec![WitValue::Int(1)], vec![WitValue::Int(100)]]);

        // An aborted batch leaves nothing.
        session.start_batch();
        session.execute(MANAGED_HANDLE, "INSERT INTO t VALUES (3)", Vec::new()).unwrap();
        session.abort_batch();
        let rows = session.query(MANAGED_HANDLE, "SELECT COUNT(*) FROM t", Vec::new()).unwrap();
        assert_eq!(rows.rows, vec![vec![WitValue::Int(2)]]);
    }
}
