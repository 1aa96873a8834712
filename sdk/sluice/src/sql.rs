//! Databases, for connectors: `sluice::sql::Connection::open("default")?` opens the connection the
//! connector's config declares (`connection.url`, `connection.user`, `connection.password`; other
//! names as `connections.<name>.url` and so on). The URL and password stay in the broker: the
//! plugin holds only a number. Values keep full precision ([`Value`]).
//!
//! In a sink, the `default` connection is *managed* ([`Connection::is_managed`]): in `put`, the
//! runtime's transaction begins at the first statement that writes, and the runtime commits it
//! together with the sink's input position once `put` returns `Ok` (and rolls it back otherwise).
//! Write the batch through it and do not begin or commit: that is what makes the sink exactly once.
//! Make schema changes (`CREATE`, `ALTER`) before the batch's first write: MySQL and MariaDB commit
//! the open transaction on a schema change, so there the runtime refuses one after a write.
//!
//! ```no_run
//! use sluice::sql::{Connection, Value};
//!
//! # fn main() -> sluice::Result<()> {
//! let db = Connection::open("default")?;
//! let rows = db.query("SELECT id, name FROM users WHERE id > $1", &[Value::Int(10)])?;
//! for row in &rows.rows {
//!     sluice::log::info!("{:?}", row);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! The capability exists only inside the broker; natively (unit tests) every call fails with
//! [`Failure::Unavailable`].

use std::fmt;

/// A value in either direction. Types with no lossless fixed-size form are exact text.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    /// NUMERIC / DECIMAL exactly (`-12.3400`, `NaN`), and integers beyond i64.
    Decimal(String),
    Text(String),
    Bytes(Vec<u8>),
    /// JSON text.
    Json(String),
    /// `YYYY-MM-DD`
    Date(String),
    /// `HH:MM:SS.ffffff`, with `+HH:MM` for a time with a zone.
    Time(String),
    /// `YYYY-MM-DDTHH:MM:SS.ffffff`, no zone.
    Timestamp(String),
    /// `YYYY-MM-DDTHH:MM:SS.ffffffZ` (UTC) as a result; any offset as a parameter.
    TimestampTz(String),
    Uuid(String),
}

impl Value {
    /// The value as JSON, the way the first-party connectors write rows: numbers for integers and
    /// floats (a float JSON cannot hold, such as NaN, as text), booleans, `null`, bytes as base64
    /// (as Kafka Connect's JSON converter writes them), and everything else as its exact text —
    /// NUMERIC keeps its scale, timestamps their microseconds, JSON its own text.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as Json;
        match self {
            Value::Null => Json::Null,
            Value::Bool(b) => Json::Bool(*b),
            Value::Int(i) => Json::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f).map_or_else(|| Json::String(f.to_string()), Json::Number),
            Value::Bytes(bytes) => Json::String(base64::engine::Engine::encode(&base64::engine::general_purpose::STANDARD, bytes)),
            Value::Decimal(s)
            | Value::Text(s)
            | Value::Json(s)
            | Value::Date(s)
            | Value::Time(s)
            | Value::Timestamp(s)
            | Value::TimestampTz(s)
            | Value::Uuid(s) => Json::String(s.clone()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    /// The database's type name (`INT8`, `NUMERIC`, `DATETIME`, `TEXT`…).
    pub type_name: String,
}

/// What a query returned.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Rows {
    pub columns: Vec<Column>,
    pub rows: Vec<Vec<Value>>,
}

impl Rows {
    /// The position of the column named `name`.
    pub fn column(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }
}

/// Which database a connection talks to: SQL differs (placeholders are `$1` on PostgreSQL and `?`
/// elsewhere; upserts, quoting and types differ too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    MySql,
    Sqlite,
}

impl Dialect {
    /// An identifier (table, column) quoted for this database: `"name"`, or `` `name` `` on MySQL.
    pub fn quote(self, ident: &str) -> String {
        match self {
            Dialect::MySql => format!("`{}`", ident.replace('`', "``")),
            Dialect::Postgres | Dialect::Sqlite => format!("\"{}\"", ident.replace('"', "\"\"")),
        }
    }

    /// The placeholder of the `n`th parameter (from 1): `$n` on PostgreSQL, `?` elsewhere.
    pub fn placeholder(self, n: usize) -> String {
        match self {
            Dialect::Postgres => format!("${n}"),
            Dialect::MySql | Dialect::Sqlite => "?".to_owned(),
        }
    }
}

/// Why a call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The name is not a connection the connector's config declares.
    UnknownConnection,
    /// A limit of the capability (rows, bytes, parameters, connections).
    Limit,
    /// The database could not be reached or the connection broke: worth retrying later.
    Unavailable,
    /// The database refused the statement (`sqlstate` says why).
    Refused,
    /// The statement or the call took too long.
    TimedOut,
    /// A value the capability cannot represent: cast it in SQL.
    Unsupported,
    /// A call that makes no sense (see [`Connection::is_managed`]).
    Misuse,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlError {
    pub failure: Failure,
    /// The database's SQLSTATE, when it gave one (`23505`: unique violation on PostgreSQL).
    pub sqlstate: Option<String>,
    pub message: String,
}

impl SqlError {
    /// Worth trying again later: the database was unavailable or slow.
    pub fn is_retriable(&self) -> bool {
        matches!(self.failure, Failure::Unavailable | Failure::TimedOut)
    }
}

impl fmt::Display for SqlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.sqlstate {
            Some(state) => write!(f, "{} (SQLSTATE {state})", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// A connector's error from a database error: retriable when the database was unavailable.
impl From<SqlError> for crate::Error {
    fn from(error: SqlError) -> crate::Error {
        if error.is_retriable() { crate::Error::retriable(&error) } else { crate::Error::msg(&error) }
    }
}

/// What carries calls to the host: the `sql` import of the connector's world, registered by the
/// world's export glue at `init` (see `log::set_host_log` for why not a direct call).
#[doc(hidden)]
pub trait Backend: Sync {
    fn open(&self, name: &str) -> Result<(u32, Dialect, bool), SqlError>;
    fn close(&self, handle: u32);
    fn query(&self, handle: u32, statement: &str, params: &[Value]) -> Result<Rows, SqlError>;
    fn execute(&self, handle: u32, statement: &str, params: &[Value]) -> Result<u64, SqlError>;
    fn execute_batch(&self, handle: u32, statement: &str, rows: &[Vec<Value>]) -> Result<Vec<u64>, SqlError>;
    fn begin(&self, handle: u32) -> Result<(), SqlError>;
    fn commit(&self, handle: u32) -> Result<(), SqlError>;
    fn rollback(&self, handle: u32) -> Result<(), SqlError>;
}

static BACKEND: std::sync::OnceLock<&'static dyn Backend> = std::sync::OnceLock::new();

#[doc(hidden)]
pub fn set_backend(backend: &'static dyn Backend) {
    let _ = BACKEND.set(backend);
}

fn backend() -> Result<&'static dyn Backend, SqlError> {
    BACKEND.get().copied().ok_or_else(|| SqlError {
        failure: Failure::Unavailable,
        sqlstate: None,
        message: "the sql capability exists only inside the broker (a connector's Wasm instance)".to_owned(),
    })
}

/// An open connection. Closed when dropped (a managed one stays open: the runtime owns it).
#[derive(Debug)]
pub struct Connection {
    handle: u32,
    dialect: Dialect,
    managed: bool,
}

impl Connection {
    /// Opens the connection the connector's config declares as `name` (`"default"` for
    /// `connection.url`).
    pub fn open(name: &str) -> Result<Connection, SqlError> {
        let (handle, dialect, managed) = backend()?.open(name)?;
        Ok(Connection { handle, dialect, managed })
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// True for a sink's `default` connection: its transaction is the runtime's (see the module
    /// docs); `begin`, `commit` and `rollback` on it fail with [`Failure::Misuse`].
    pub fn is_managed(&self) -> bool {
        self.managed
    }

    pub fn query(&self, statement: &str, params: &[Value]) -> Result<Rows, SqlError> {
        backend()?.query(self.handle, statement, params)
    }

    /// Rows affected.
    pub fn execute(&self, statement: &str, params: &[Value]) -> Result<u64, SqlError> {
        backend()?.execute(self.handle, statement, params)
    }

    /// One statement for each parameter row, all or nothing; rows affected per row.
    pub fn execute_batch(&self, statement: &str, rows: &[Vec<Value>]) -> Result<Vec<u64>, SqlError> {
        backend()?.execute_batch(self.handle, statement, rows)
    }

    pub fn begin(&self) -> Result<(), SqlError> {
        backend()?.begin(self.handle)
    }

    pub fn commit(&self) -> Result<(), SqlError> {
        backend()?.commit(self.handle)
    }

    pub fn rollback(&self) -> Result<(), SqlError> {
        backend()?.rollback(self.handle)
    }

    /// The columns of `table`'s primary key, in key order (empty without one). `schema`: PostgreSQL's
    /// (default `public`); MySQL/MariaDB use the connection's database and SQLite has none.
    pub fn primary_key(&self, schema: Option<&str>, table: &str) -> Result<Vec<String>, SqlError> {
        let table_value = Value::Text(table.to_owned());
        let rows = match self.dialect {
            Dialect::Postgres => self.query(
                "SELECT a.attname::text FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
                 WHERE i.indrelid = (quote_ident($1) || '.' || quote_ident($2))::regclass AND i.indisprimary \
                 ORDER BY array_position(i.indkey::int2[], a.attnum)",
                &[Value::Text(schema.unwrap_or("public").to_owned()), table_value],
            )?,
            Dialect::MySql => self.query(
                "SELECT CAST(column_name AS CHAR) FROM information_schema.key_column_usage \
                 WHERE table_schema = DATABASE() AND table_name = ? AND constraint_name = 'PRIMARY' ORDER BY ordinal_position",
                &[table_value],
            )?,
            Dialect::Sqlite => self.query("SELECT name FROM pragma_table_info(?) WHERE pk > 0 ORDER BY pk", &[table_value])?,
        };
        Ok(rows
            .rows
            .into_iter()
            .filter_map(|row| match row.into_iter().next() {
                Some(Value::Text(column)) => Some(column),
                _ => None,
            })
            .collect())
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        if let Ok(backend) = backend() {
            backend.close(self.handle);
        }
    }
}
