//! The host side of the `sql` capability: what a connector module imports (`interface sql` in
//! `sdk/wit/plugin.wit`) to talk to databases. [`SqlSession`] (`session.rs`) answers the Wasm
//! import over [`Sql`] and holds a sink's managed connection.
//!
//! - **Connections by name.** A connector's config declares its connections ([`ConnectionSpec`]:
//!   `connection.url`/`.user`/`.password` is `default`, `connections.<name>.*` the others). A module
//!   opens one by that name ([`Sql::open`]); any other name is refused. URLs and passwords stay in the
//!   host: the module only ever holds a [`ConnHandle`].
//! - **Statements**: [`Sql::query`] (rows), [`Sql::execute`] (rows affected), [`Sql::execute_batch`]
//!   (one statement, many parameter rows, atomically), [`Sql::begin`] / [`Sql::commit`] /
//!   [`Sql::rollback`]. Parameters and results are [`SqlValue`]s that keep full precision: numeric
//!   and decimal as exact strings, timestamps with microseconds (and `Z` when they carry a zone),
//!   bytes as bytes, JSON as text, NULL as NULL.
//! - **Bounds** ([`SqlLimits`]): statement size and parameter count are checked before anything is
//!   sent; rows per query, bytes per value and bytes per call are checked while rows stream in, each
//!   value's size read from the driver's row buffer before it is copied — a result over a limit is an
//!   error ([`SqlFailure::Limit`]), never silently cut. (The driver itself buffers one row message at a
//!   time; a single row larger than the database's own limits cannot arrive.)
//! - **Time**: every call's wall time waiting on the database is added to [`Sql::db_wait`], so the Wasm
//!   runtime can leave it out of the guest's CPU bound. Every call has a deadline
//!   ([`SqlLimits::call_timeout`]); a connection whose call timed out is closed.
//!
//! Backed by sqlx: PostgreSQL and MySQL/MariaDB through their pure-Rust drivers (TLS by rustls),
//! SQLite bundled. Calls are blocking (a task's thread) and run on the broker's tokio runtime.

mod decode;
mod encode;
mod session;

pub use session::{MANAGED_CONNECTION, MANAGED_HANDLE, SqlSession};

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{Column, ConnectOptions, Connection, Executor, Row, TypeInfo};

use crate::error::{ConnectError, SqlFailure};

/// A value the sql capability cannot accept: a parameter or column that cannot be converted between
/// its database form and the guest's, or a connection URL or limit that is not valid. The message says
/// what is wrong; the caller adds where (a parameter, a column, a config key).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ValueError(pub String);

impl From<String> for ValueError {
    fn from(message: String) -> ValueError {
        ValueError(message)
    }
}

impl From<ValueError> for String {
    fn from(error: ValueError) -> String {
        error.0
    }
}

impl From<&str> for ValueError {
    fn from(message: &str) -> ValueError {
        ValueError(message.to_string())
    }
}

/// A value crossing the capability, in either direction. Strings hold the exact text of types
/// that have no lossless fixed-size form.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlValue {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    /// NUMERIC / DECIMAL, exactly: `-12.3400` (scale kept), `NaN`, `Infinity`; integers beyond i64
    /// (MySQL's BIGINT UNSIGNED) too.
    Decimal(String),
    Text(String),
    Bytes(Vec<u8>),
    /// JSON as the database returns it.
    Json(String),
    /// `YYYY-MM-DD`
    Date(String),
    /// `HH:MM:SS.ffffff`, with `+HH:MM` for a time with a zone.
    Time(String),
    /// `YYYY-MM-DDTHH:MM:SS.ffffff`, no zone.
    Timestamp(String),
    /// `YYYY-MM-DDTHH:MM:SS.ffffffZ` (UTC), or with an offset as a parameter.
    TimestampTz(String),
    /// `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`
    Uuid(String),
}

/// A column of a result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlColumn {
    pub name: String,
    /// The database's type name (`INT8`, `NUMERIC`, `DATETIME`, `TEXT`…).
    pub type_name: String,
}

/// What a query returned.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SqlRows {
    pub columns: Vec<SqlColumn>,
    pub rows: Vec<Vec<SqlValue>>,
}

/// The capability's bounds, per call. [`SqlLimits::validate`] keeps them under the hard maxima.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SqlLimits {
    pub rows_per_query: usize,
    pub value_bytes: usize,
    /// Every value of a call (and a fixed overhead per value) together.
    pub call_bytes: usize,
    pub statement_bytes: usize,
    pub params_per_statement: usize,
    pub batch_rows: usize,
    pub open_connections: usize,
    pub call_timeout: Duration,
}

/// Counted per value on top of its bytes, so a result of many tiny values is bounded too.
const VALUE_OVERHEAD_BYTES: usize = 16;

impl SqlLimits {
    pub const ROWS_PER_QUERY_MAX: usize = 1_000_000;
    pub const VALUE_BYTES_MAX: usize = 64 << 20;
    pub const CALL_BYTES_MAX: usize = 256 << 20;
    pub const STATEMENT_BYTES_MAX: usize = 1 << 20;
    /// PostgreSQL's and MySQL's own limit on parameters of one statement.
    pub const PARAMS_MAX: usize = 65_535;
    pub const BATCH_ROWS_MAX: usize = 100_000;
    pub const OPEN_CONNECTIONS_MAX: usize = 16;
    pub const CALL_TIMEOUT_MAX: Duration = Duration::from_secs(600);

    pub fn validate(&self) -> Result<(), ValueError> {
        let within = |value: usize, max: usize, what: &str| {
            if value == 0 || value > max { Err(format!("{what} must be 1..={max}")) } else { Ok(()) }
        };
        within(self.rows_per_query, Self::ROWS_PER_QUERY_MAX, "rows per query")?;
        within(self.value_bytes, Self::VALUE_BYTES_MAX, "bytes per value")?;
        within(self.call_bytes, Self::CALL_BYTES_MAX, "bytes per call")?;
        within(self.statement_bytes, Self::STATEMENT_BYTES_MAX, "statement bytes")?;
        within(self.params_per_statement, Self::PARAMS_MAX, "parameters per statement")?;
        within(self.batch_rows, Self::BATCH_ROWS_MAX, "rows per batch")?;
        within(self.open_connections, Self::OPEN_CONNECTIONS_MAX, "open connections")?;
        if self.call_timeout.is_zero() || self.call_timeout > Self::CALL_TIMEOUT_MAX {
            return Err(format!("the call timeout must be 1 ms..={} s", Self::CALL_TIMEOUT_MAX.as_secs()).into());
        }
        Ok(())
    }
}

impl Default for SqlLimits {
    fn default() -> Self {
        SqlLimits {
            rows_per_query: 10_000,
            value_bytes: 16 << 20,
            call_bytes: 64 << 20,
            statement_bytes: 256 << 10,
            params_per_statement: Self::PARAMS_MAX,
            batch_rows: 10_000,
            open_connections: 4,
            call_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    MySql,
    Sqlite,
}

impl Dialect {
    pub fn as_str(self) -> &'static str {
        match self {
            Dialect::Postgres => "postgres",
            Dialect::MySql => "mysql",
            Dialect::Sqlite => "sqlite",
        }
    }
}

/// A connection a connector's config declares. Its `Debug` and [`ConnectionSpec::describe`] never
/// show the password.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectionSpec {
    pub name: String,
    pub dialect: Dialect,
    /// In sqlx's form (`postgres://…`, `mysql://…`, `sqlite:…`), without user or password.
    url: String,
    user: Option<String>,
    password: Option<String>,
}

impl fmt::Debug for ConnectionSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

/// Splits `user`/`password` out of a URL's user info and query (JDBC URLs carry them as
/// parameters), returning the URL without them.
fn split_credentials(url: &str) -> (String, Option<String>, Option<String>) {
    let (mut user, mut password) = (None, None);
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b.to_string(), Some(q)),
        None => (url.to_string(), None),
    };
    let mut base = base;
    if let Some(scheme_end) = base.find("://") {
        let rest = base[scheme_end + 3..].to_string();
        let authority_end = rest.find('/').unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@') {
            let info = &rest[..at];
            match info.split_once(':') {
                Some((u, p)) => {
                    user = Some(percent_decode(u));
                    password = Some(percent_decode(p));
                }
                None => user = Some(percent_decode(info)),
            }
            base = format!("{}{}", &base[..scheme_end + 3], &rest[at + 1..]);
        }
    }
    let mut kept = Vec::new();
    for pair in query.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("user", v)) => user = Some(percent_decode(v)),
            Some(("password", v)) => password = Some(percent_decode(v)),
            _ => kept.push(pair),
        }
    }
    let url = if kept.is_empty() { base } else { format!("{base}?{}", kept.join("&")) };
    (url, user, password)
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(byte) = u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"), 16)
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl ConnectionSpec {
    /// A connection from a URL — `postgres://`, `postgresql://`, `mysql://`, `mariadb://`, `sqlite:`,
    /// or the JDBC forms `jdbc:postgresql://`, `jdbc:mysql://`, `jdbc:mariadb://`, `jdbc:sqlite:` — and
    /// the config's user and password (which win over the URL's).
    pub fn parse(name: &str, url: &str, user: Option<&str>, password: Option<&str>) -> Result<ConnectionSpec, ValueError> {
        let url = url.trim();
        let plain = url.strip_prefix("jdbc:").unwrap_or(url);
        let (dialect, rest) = if let Some(rest) = plain.strip_prefix("postgresql://").or_else(|| plain.strip_prefix("postgres://")) {
            (Dialect::Postgres, format!("postgres://{rest}"))
        } else if let Some(rest) = plain.strip_prefix("mysql://").or_else(|| plain.strip_prefix("mariadb://")) {
            (Dialect::MySql, format!("mysql://{rest}"))
        } else if let Some(rest) = plain.strip_prefix("sqlite:") {
            (Dialect::Sqlite, format!("sqlite:{}", rest.trim_start_matches("//")))
        } else {
            let scheme: String = url.chars().take_while(|c| *c != '/').take(40).collect();
            return Err(ValueError(format!(
                "'{scheme}…' is not a supported database URL: use postgres://, mysql://, mariadb://, sqlite: or their jdbc: forms"
            )));
        };
        let (url, url_user, url_password) = split_credentials(&rest);
        let spec = ConnectionSpec {
            name: name.to_string(),
            dialect,
            url,
            user: user.map(str::to_string).or(url_user),
            password: password.map(str::to_string).or(url_password),
        };
        spec.check()?;
        Ok(spec)
    }

    /// Debezium's `database.*` keys: a PostgreSQL connection.
    pub fn postgres(
        name: &str,
        host: &str,
        port: u16,
        dbname: &str,
        user: Option<&str>,
        password: Option<&str>,
    ) -> Result<ConnectionSpec, ValueError> {
        if host.contains(['/', '@', '?', ' ']) || dbname.contains(['/', '?', ' ']) {
            return Err("database.hostname and database.dbname must be a host name and a database name".into());
        }
        let spec = ConnectionSpec {
            name: name.to_string(),
            dialect: Dialect::Postgres,
            url: format!("postgres://{host}:{port}/{dbname}"),
            user: user.map(str::to_string),
            password: password.map(str::to_string),
        };
        spec.check()?;
        Ok(spec)
    }

    /// Parses the options without connecting, so a bad URL is refused at validation.
    fn check(&self) -> Result<(), ValueError> {
        let shown = |e: sqlx::Error| ValueError(format!("{}: {e}", self.describe()));
        match self.dialect {
            Dialect::Postgres => PgConnectOptions::from_str(&self.url).map(|_| ()).map_err(shown),
            Dialect::MySql => MySqlConnectOptions::from_str(&self.url).map(|_| ()).map_err(shown),
            Dialect::Sqlite => SqliteConnectOptions::from_str(&self.url).map(|_| ()).map_err(shown),
        }
    }

    /// The connection as logs and errors may show it: no password.
    pub fn describe(&self) -> String {
        let user = self.user.as_deref().map(|u| format!(" as {u}")).unwrap_or_default();
        format!("connection '{}' ({}{user})", self.name, self.url)
    }
}

/// What makes a task's [`Sql`]: the connector's connections and the broker's runtime.
#[derive(Clone)]
pub struct SqlFactory {
    pub specs: BTreeMap<String, ConnectionSpec>,
    pub runtime: tokio::runtime::Handle,
    pub limits: SqlLimits,
    /// Whether the connector declares a `default` connection (`connection.url`).
    pub has_default: bool,
}

impl SqlFactory {
    /// `None` for a connector that declares no connection.
    pub fn new(specs: BTreeMap<String, ConnectionSpec>, runtime: tokio::runtime::Handle) -> Option<SqlFactory> {
        if specs.is_empty() {
            return None;
        }
        let has_default = specs.contains_key(MANAGED_CONNECTION);
        Some(SqlFactory { specs, runtime, limits: SqlLimits::default(), has_default })
    }

    pub fn open(&self) -> Result<Sql, ConnectError> {
        Sql::new(self.specs.clone(), self.runtime.clone(), self.limits)
    }
}

/// A connection a module opened, by number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnHandle(pub u32);

enum Conn {
    Postgres(PgConnection),
    MySql(MySqlConnection),
    Sqlite(SqliteConnection),
}

struct Open {
    spec_name: String,
    conn: Conn,
    in_transaction: bool,
}

/// One task's `sql` capability: the connections its connector declares and the ones it opened.
pub struct Sql {
    runtime: tokio::runtime::Handle,
    specs: BTreeMap<String, ConnectionSpec>,
    limits: SqlLimits,
    open: BTreeMap<ConnHandle, Open>,
    next_handle: u32,
    waited: Duration,
    calls: u64,
}

fn failure(failure: SqlFailure, message: impl Into<String>) -> ConnectError {
    ConnectError::sql(failure, message)
}

/// A driver error in the capability's terms. SQLSTATE classes 08 (connection), 40 (rollback:
/// serialization, deadlock), 53 (resources) and 57P (shutdown) are worth retrying.
fn from_sqlx(error: sqlx::Error, what: &str) -> ConnectError {
    match error {
        sqlx::Error::Database(db) => {
            let sqlstate = db.code().map(|c| c.to_string());
            let kind = match sqlstate.as_deref() {
                Some(code) if code.starts_with("08") || code.starts_with("40") || code.starts_with("53") || code.starts_with("57P") => {
                    SqlFailure::Unavailable
                }
                Some("57014") => SqlFailure::TimedOut,
                _ => SqlFailure::Refused,
            };
            ConnectError::Sql { failure: kind, sqlstate, message: format!("{what}: {}", db.message()) }
        }
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) | sqlx::Error::TypeNotFound { .. } => {
            failure(SqlFailure::Unsupported, format!("{what}: {error}"))
        }
        sqlx::Error::Configuration(_) => failure(SqlFailure::Refused, format!("{what}: {error}")),
        other => failure(SqlFailure::Unavailable, format!("{what}: {other}")),
    }
}

impl Sql {
    /// `specs`: the connector's connections. `runtime`: where the drivers' I/O runs (the broker's).
    pub fn new(specs: BTreeMap<String, ConnectionSpec>, runtime: tokio::runtime::Handle, limits: SqlLimits) -> Result<Sql, ConnectError> {
        limits.validate().map_err(|e| failure(SqlFailure::Misuse, format!("sql limits: {e}")))?;
        Ok(Sql { runtime, specs, limits, open: BTreeMap::new(), next_handle: 1, waited: Duration::ZERO, calls: 0 })
    }

    /// Total time calls spent waiting on databases (connecting, round trips, reading rows).
    pub fn db_wait(&self) -> Duration {
        self.waited
    }

    pub fn calls(&self) -> u64 {
        self.calls
    }

    pub fn limits(&self) -> SqlLimits {
        self.limits
    }

    /// Runs `future` on the runtime within the call deadline, timing it as database wait.
    fn wait<T>(&mut self, what: &str, future: impl Future<Output = Result<T, ConnectError>>) -> Result<T, ConnectError> {
        let started = Instant::now();
        let timeout = self.limits.call_timeout;
        let outcome = self.runtime.block_on(async { tokio::time::timeout(timeout, future).await });
        self.waited += started.elapsed();
        self.calls += 1;
        outcome.unwrap_or_else(|_| Err(failure(SqlFailure::TimedOut, format!("{what}: no answer within {} ms", timeout.as_millis()))))
    }

    /// Opens the connection the config declares as `name`.
    pub fn open(&mut self, name: &str) -> Result<ConnHandle, ConnectError> {
        let spec = self.specs.get(name).cloned().ok_or_else(|| {
            let known: Vec<&str> = self.specs.keys().map(String::as_str).collect();
            failure(
                SqlFailure::UnknownConnection,
                format!("no connection named '{name}' in the connector's config (it declares: {known:?})"),
            )
        })?;
        if self.open.len() >= self.limits.open_connections {
            return Err(failure(SqlFailure::Limit, format!("at most {} connections open at once", self.limits.open_connections)));
        }
        let what = format!("opening {}", spec.describe());
        let conn = self.wait(&what, async {
            let error = |e| from_sqlx(e, &what);
            Ok(match spec.dialect {
                Dialect::Postgres => {
                    let mut options = PgConnectOptions::from_str(&spec.url).map_err(error)?;
                    if let Some(user) = &spec.user {
                        options = options.username(user);
                    }
                    if let Some(password) = &spec.password {
                        options = options.password(password);
                    }
                    Conn::Postgres(options.disable_statement_logging().connect().await.map_err(error)?)
                }
                Dialect::MySql => {
                    let mut options = MySqlConnectOptions::from_str(&spec.url).map_err(error)?;
                    if let Some(user) = &spec.user {
                        options = options.username(user);
                    }
                    if let Some(password) = &spec.password {
                        options = options.password(password);
                    }
                    Conn::MySql(options.disable_statement_logging().connect().await.map_err(error)?)
                }
                Dialect::Sqlite => {
                    let options = SqliteConnectOptions::from_str(&spec.url).map_err(error)?.create_if_missing(true);
                    Conn::Sqlite(options.disable_statement_logging().connect().await.map_err(error)?)
                }
            })
        })?;
        let handle = ConnHandle(self.next_handle);
        self.next_handle = self.next_handle.wrapping_add(1).max(1);
        self.open.insert(handle, Open { spec_name: spec.name.clone(), conn, in_transaction: false });
        Ok(handle)
    }

    /// Closes a connection (rolling back an open transaction).
    pub fn close(&mut self, handle: ConnHandle) -> Result<(), ConnectError> {
        let open = self.open.remove(&handle).ok_or_else(|| unknown_handle(handle))?;
        self.wait("closing", async {
            let _ = match open.conn {
                Conn::Postgres(c) => c.close().await,
                Conn::MySql(c) => c.close().await,
                Conn::Sqlite(c) => c.close().await,
            };
            Ok(())
        })
    }

    /// Whether `handle` is open (a connection whose call broke is closed by the capability).
    pub fn is_open(&self, handle: ConnHandle) -> bool {
        self.open.contains_key(&handle)
    }

    /// Whether a transaction is open on `handle`.
    pub fn in_transaction(&self, handle: ConnHandle) -> bool {
        self.open.get(&handle).is_some_and(|open| open.in_transaction)
    }

    /// Which database `handle` talks to.
    pub fn dialect(&self, handle: ConnHandle) -> Result<Dialect, ConnectError> {
        let open = self.open.get(&handle).ok_or_else(|| unknown_handle(handle))?;
        Ok(match open.conn {
            Conn::Postgres(_) => Dialect::Postgres,
            Conn::MySql(_) => Dialect::MySql,
            Conn::Sqlite(_) => Dialect::Sqlite,
        })
    }

    /// The name a handle was opened with.
    pub fn connection_name(&self, handle: ConnHandle) -> Option<&str> {
        self.open.get(&handle).map(|o| o.spec_name.as_str())
    }

    fn check_statement(&self, sql: &str, params: usize) -> Result<(), ConnectError> {
        if sql.len() > self.limits.statement_bytes {
            return Err(failure(
                SqlFailure::Limit,
                format!("the statement is {} bytes; at most {}", sql.len(), self.limits.statement_bytes),
            ));
        }
        if params > self.limits.params_per_statement {
            return Err(failure(SqlFailure::Limit, format!("{params} parameters; at most {}", self.limits.params_per_statement)));
        }
        Ok(())
    }

    /// Runs `call` on an open connection; a connection whose call failed for a reason other than
    /// the statement (timeout, broken connection) is closed, so its half-read state is never reused.
    fn on_conn<T>(
        &mut self,
        handle: ConnHandle,
        what: &str,
        call: impl AsyncFnOnce(&mut Conn, SqlLimits) -> Result<T, ConnectError>,
    ) -> Result<T, ConnectError> {
        let limits = self.limits;
        let mut open = self.open.remove(&handle).ok_or_else(|| unknown_handle(handle))?;
        let outcome = self.wait(what, async { call(&mut open.conn, limits).await });
        let broken = matches!(&outcome, Err(ConnectError::Sql { failure: SqlFailure::Unavailable | SqlFailure::TimedOut, .. }));
        if !broken {
            self.open.insert(handle, open);
        }
        outcome
    }

    /// Runs a query and returns its rows, within the limits.
    pub fn query(&mut self, handle: ConnHandle, sql: &str, params: &[SqlValue]) -> Result<SqlRows, ConnectError> {
        self.check_statement(sql, params.len())?;
        self.on_conn(handle, "query", async |conn, limits| {
            let mut budget = Budget { limits, bytes: 0 };
            match conn {
                Conn::Postgres(c) => {
                    let args = encode::postgres(params)?;
                    let text = format!("{sql}{}", encode::postgres_signature(params));
                    collect_rows(sqlx::query_with(&text, args).fetch(&mut *c), &mut budget, decode::postgres_row).await
                }
                Conn::MySql(c) => {
                    let args = encode::mysql(params)?;
                    collect_rows(sqlx::query_with(sql, args).fetch(&mut *c), &mut budget, decode::mysql_row).await
                }
                Conn::Sqlite(c) => {
                    let args = encode::sqlite(params)?;
                    collect_rows(sqlx::query_with(sql, args).fetch(&mut *c), &mut budget, decode::sqlite_row).await
                }
            }
        })
    }

    /// Runs a statement; returns the rows it affected.
    pub fn execute(&mut self, handle: ConnHandle, sql: &str, params: &[SqlValue]) -> Result<u64, ConnectError> {
        self.check_statement(sql, params.len())?;
        self.on_conn(handle, "execute", async |conn, _| execute_one(conn, sql, params).await)
    }

    /// Runs one statement once per parameter row, all or nothing: inside the open transaction if
    /// there is one, else in a transaction of its own. Returns the rows each run affected.
    pub fn execute_batch(&mut self, handle: ConnHandle, sql: &str, rows: &[Vec<SqlValue>]) -> Result<Vec<u64>, ConnectError> {
        if rows.len() > self.limits.batch_rows {
            return Err(failure(SqlFailure::Limit, format!("{} parameter rows; at most {} per batch", rows.len(), self.limits.batch_rows)));
        }
        let widest = rows.iter().map(Vec::len).max().unwrap_or(0);
        self.check_statement(sql, widest)?;
        let own_transaction = !self.open.get(&handle).ok_or_else(|| unknown_handle(handle))?.in_transaction;
        self.on_conn(handle, "execute_batch", async |conn, _| {
            if own_transaction {
                raw(conn, "BEGIN").await?;
            }
            let mut affected = Vec::with_capacity(rows.len());
            for params in rows {
                match execute_one(conn, sql, params).await {
                    Ok(n) => affected.push(n),
                    Err(error) => {
                        if own_transaction {
                            let _ = raw(conn, "ROLLBACK").await;
                        }
                        return Err(error);
                    }
                }
            }
            if own_transaction {
                raw(conn, "COMMIT").await?;
            }
            Ok(affected)
        })
    }

    pub fn begin(&mut self, handle: ConnHandle) -> Result<(), ConnectError> {
        self.transaction(handle, "BEGIN", Some(false), true)
    }

    pub fn commit(&mut self, handle: ConnHandle) -> Result<(), ConnectError> {
        self.transaction(handle, "COMMIT", Some(true), false)
    }

    pub fn rollback(&mut self, handle: ConnHandle) -> Result<(), ConnectError> {
        self.transaction(handle, "ROLLBACK", Some(true), false)
    }

    fn transaction(
        &mut self,
        handle: ConnHandle,
        statement: &'static str,
        required: Option<bool>,
        after: bool,
    ) -> Result<(), ConnectError> {
        let open = self.open.get(&handle).ok_or_else(|| unknown_handle(handle))?;
        if let Some(required) = required
            && open.in_transaction != required
        {
            let message = if required { "there is no open transaction" } else { "a transaction is already open" };
            return Err(failure(SqlFailure::Misuse, format!("{}: {message}", statement.to_lowercase())));
        }
        let outcome = self.on_conn(handle, statement, async |conn, _| raw(conn, statement).await.map(|_| ()));
        if let Some(open) = self.open.get_mut(&handle) {
            // A failed COMMIT ends the transaction too (the database rolled it back).
            open.in_transaction = if statement == "BEGIN" { outcome.is_ok() } else { after };
        }
        outcome
    }
}

fn unknown_handle(handle: ConnHandle) -> ConnectError {
    failure(SqlFailure::Misuse, format!("connection handle {} is not open", handle.0))
}

/// A query's rows, whatever the database, each counted against the call's budget as it arrives.
async fn collect_rows<R: Row>(
    mut stream: impl futures::Stream<Item = Result<R, sqlx::Error>> + Unpin,
    budget: &mut Budget,
    decode: fn(&R, &mut Budget) -> Result<Vec<SqlValue>, ConnectError>,
) -> Result<SqlRows, ConnectError> {
    let mut rows = SqlRows::default();
    while let Some(row) = stream.try_next().await.map_err(|e| from_sqlx(e, "query"))? {
        budget.row(rows.rows.len())?;
        if rows.columns.is_empty() {
            rows.columns = columns(row.columns());
        }
        rows.rows.push(decode(&row, budget)?);
    }
    Ok(rows)
}

fn columns<C: Column>(columns: &[C]) -> Vec<SqlColumn> {
    columns.iter().map(|c| SqlColumn { name: c.name().to_string(), type_name: c.type_info().name().to_string() }).collect()
}

async fn raw(conn: &mut Conn, statement: &str) -> Result<u64, ConnectError> {
    let result = match conn {
        Conn::Postgres(c) => c.execute(statement).await.map(|r| r.rows_affected()),
        Conn::MySql(c) => c.execute(statement).await.map(|r| r.rows_affected()),
        Conn::Sqlite(c) => c.execute(statement).await.map(|r| r.rows_affected()),
    };
    result.map_err(|e| from_sqlx(e, statement))
}

async fn execute_one(conn: &mut Conn, sql: &str, params: &[SqlValue]) -> Result<u64, ConnectError> {
    let result = match conn {
        Conn::Postgres(c) => {
            let text = format!("{sql}{}", encode::postgres_signature(params));
            sqlx::query_with(&text, encode::postgres(params)?).execute(&mut *c).await.map(|r| r.rows_affected())
        }
        Conn::MySql(c) => sqlx::query_with(sql, encode::mysql(params)?).execute(&mut *c).await.map(|r| r.rows_affected()),
        Conn::Sqlite(c) => sqlx::query_with(sql, encode::sqlite(params)?).execute(&mut *c).await.map(|r| r.rows_affected()),
    };
    result.map_err(|e| from_sqlx(e, "execute"))
}

/// What one call may still take.
pub(crate) struct Budget {
    limits: SqlLimits,
    bytes: usize,
}

impl Budget {
    fn row(&mut self, rows_so_far: usize) -> Result<(), ConnectError> {
        if rows_so_far >= self.limits.rows_per_query {
            return Err(failure(
                SqlFailure::Limit,
                format!("the query returned more than {} rows; add a LIMIT", self.limits.rows_per_query),
            ));
        }
        Ok(())
    }

    /// Accounts for a value of `len` bytes, before it is copied.
    pub(crate) fn take(&mut self, column: &str, len: usize) -> Result<(), ConnectError> {
        if len > self.limits.value_bytes {
            return Err(failure(
                SqlFailure::Limit,
                format!("a value of column '{column}' is {len} bytes; at most {} per value", self.limits.value_bytes),
            ));
        }
        self.bytes += len + VALUE_OVERHEAD_BYTES;
        if self.bytes > self.limits.call_bytes {
            return Err(failure(
                SqlFailure::Limit,
                format!("the result is larger than {} bytes; fetch it in smaller pieces", self.limits.call_bytes),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_of_every_supported_form_parse_and_credentials_are_taken_out() {
        let pg =
            ConnectionSpec::parse("default", "jdbc:postgresql://db.example:5433/shop?user=app&password=p%40ss&sslmode=disable", None, None)
                .unwrap();
        assert_eq!(pg.dialect, Dialect::Postgres);
        assert_eq!(pg.url, "postgres://db.example:5433/shop?sslmode=disable");
        assert_eq!((pg.user.as_deref(), pg.password.as_deref()), (Some("app"), Some("p@ss")));
        let my = ConnectionSpec::parse("dw", "mariadb://u:secret@127.0.0.1:3306/dw", Some("other"), None).unwrap();
        assert_eq!((my.dialect, my.url.as_str()), (Dialect::MySql, "mysql://127.0.0.1:3306/dw"));
        assert_eq!((my.user.as_deref(), my.password.as_deref()), (Some("other"), Some("secret")));
        let lite = ConnectionSpec::parse("local", "jdbc:sqlite:/tmp/x.db", None, None).unwrap();
        assert_eq!((lite.dialect, lite.url.as_str()), (Dialect::Sqlite, "sqlite:/tmp/x.db"));
        assert!(ConnectionSpec::parse("x", "oracle:thin:@db", None, None).is_err());
        let shown = format!("{my:?}");
        assert!(!shown.contains("secret") && shown.contains("dw"), "{shown}");
    }

    #[test]
    fn limits_have_hard_maxima() {
        SqlLimits::default().validate().unwrap();
        assert!(SqlLimits { rows_per_query: 0, ..Default::default() }.validate().is_err());
        assert!(SqlLimits { value_bytes: SqlLimits::VALUE_BYTES_MAX + 1, ..Default::default() }.validate().is_err());
        assert!(SqlLimits { call_timeout: Duration::ZERO, ..Default::default() }.validate().is_err());
    }

    #[test]
    fn unknown_connection_names_are_refused_before_anything_is_opened() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let specs = BTreeMap::from([("default".to_string(), ConnectionSpec::parse("default", "sqlite::memory:", None, None).unwrap())]);
        let mut sql = Sql::new(specs, runtime.handle().clone(), SqlLimits::default()).unwrap();
        let error = sql.open("admin").unwrap_err();
        assert!(matches!(error, ConnectError::Sql { failure: SqlFailure::UnknownConnection, .. }), "{error}");
        assert_eq!(sql.calls(), 0);
    }
}
