//! `jdbc-source`: reads tables of PostgreSQL, MySQL/MariaDB or SQLite into topics, configured with
//! the keys of Confluent's JDBC source connector so that an existing config carries over with only
//! `connector.class` changed:
//!
//! | key | meaning |
//! |---|---|
//! | `connection.url`, `connection.user`, `connection.password` | the source (read by the runtime; the plugin never sees the URL or password) |
//! | `mode` | `bulk` (the whole table every `poll.interval.ms`), `incrementing` (new rows by a strictly increasing column), `timestamp` (new and updated rows by a timestamp column), `timestamp+incrementing` (both: exact even with equal timestamps) |
//! | `incrementing.column.name`, `timestamp.column.name` | the columns those modes follow (`timestamp.column.name`: a list, the first non-null one counts) |
//! | `table.whitelist` / `table.blacklist` | tables by name (`orders` or `public.orders`) |
//! | `table.include.list` / `table.exclude.list` | tables by regular expression over `schema.table` or `table` (Debezium's keys) |
//! | `query` | read this query's rows instead of tables (the mode's conditions are applied around it); the topic is `topic.prefix` |
//! | `topic.prefix` | topics are `{topic.prefix}{table}` |
//! | `poll.interval.ms` | how often a table that has nothing new is asked again (default 5000) |
//! | `batch.max.rows` | most rows per poll (default 100) |
//! | `timestamp.delay.interval.ms` | timestamp modes: rows become eligible this long after their timestamp (default 0) |
//! | `commit.lag.ms` | MySQL/MariaDB only: how long a transaction may stay open after taking an id or a timestamp (default 5000; see below) |
//! | `table.poll.interval.ms` | how often the table list is read again (default 60000) |
//! | `value.converter.schemas.enable`, `key.converter.schemas.enable` | wrap values / keys in Connect's `{"schema", "payload"}` envelope (default false) |
//!
//! Each row is a record whose value is a JSON object of its columns (numeric and decimal as exact
//! strings, timestamps with their microseconds, bytes as base64, NULL as null) and whose key is its
//! primary key's columns. The position is Connect's: partition `{"protocol": "1", "table": <name>}`
//! (`{"query": <query>}` in query mode), offset `{"incrementing": <id>}` and/or `{"timestamp": <text>}`.
//!
//! **Rows that commit out of order still arrive.** A polling source goes wrong when a transaction
//! that took a lower id (or an older timestamp) commits after one that took a higher one: the poll
//! between the two commits moves past the lower id, which then never matches `id > position`. This
//! connector never moves its position past a value that a still-open transaction may hold:
//! - PostgreSQL, `incrementing`: each poll reads the transaction snapshot (`pg_current_snapshot()`).
//!   A transaction still in progress that the previous poll did not see started writing after that
//!   poll, so its ids are above what that poll saw; the position stops below the lowest such bound
//!   until those transactions end. (Ids must come from a sequence or identity without `CACHE`.)
//! - PostgreSQL, timestamp modes: rows are read only up to the start of the oldest transaction still
//!   open (`pg_stat_activity.xact_start`; `now()` is a transaction's start time), and up to
//!   `timestamp.delay.interval.ms` before now. The connection's user must see the other sessions
//!   (the same user, or a member of `pg_read_all_stats`); otherwise only the delay protects.
//! - MySQL/MariaDB: no portable view of open transactions, so a lag window: an id is read once it has
//!   been visible for `commit.lag.ms`, a timestamp once it is `commit.lag.ms` old. A transaction that
//!   stays open longer than that after its insert can still be missed: raise it for such workloads.
//! - SQLite has one writer at a time, so commits happen in id order: nothing is held back.
//!
//! Timestamp mode alone cannot tell apart rows with equal timestamps, so a batch never ends in the
//! middle of such a run (a run longer than `batch.max.rows` is read whole). Prefer
//! `timestamp+incrementing`.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use regex::Regex;
use serde_json::{Map, Value as Json, json};
use sluice::connector::{ConfigKey, KeyType, Poll, Position, Source, SourceRecord};
use sluice::sql::{Column, Connection, Dialect, Rows, Value};
use sluice::{Config, Error, Result};

/// Confluent's default `batch.max.rows`.
pub const BATCH_MAX_ROWS_DEFAULT: usize = 100;
/// The largest `batch.max.rows`: the runtime takes at most 10,000 records per poll.
pub const BATCH_MAX_ROWS_MAX: usize = 10_000;
pub const POLL_INTERVAL_MS_DEFAULT: u64 = 5_000;
pub const TABLE_POLL_INTERVAL_MS_DEFAULT: u64 = 60_000;
/// The lag window on MySQL/MariaDB.
pub const COMMIT_LAG_MS_DEFAULT: u64 = 5_000;
/// The longest a poll asks the runtime to wait.
const IDLE_MS_MAX: u64 = 1_000;
/// The table in which sinks keep their positions: never a source table.
const SINK_POSITIONS_TABLE: &str = "sluice_connect_offsets";
/// The alias of the table or query in every statement.
const SRC: &str = "sluice_src";
/// The computed timestamp column (several `timestamp.column.name`s), dropped from records.
const TS_ALIAS: &str = "sluice_ts";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Bulk,
    Incrementing,
    Timestamp,
    TimestampIncrementing,
}

impl Mode {
    fn incrementing(self) -> bool {
        matches!(self, Mode::Incrementing | Mode::TimestampIncrementing)
    }

    fn timestamp(self) -> bool {
        matches!(self, Mode::Timestamp | Mode::TimestampIncrementing)
    }
}

/// The connector's settings, checked.
#[derive(Debug, Clone)]
pub struct Settings {
    pub mode: Mode,
    pub incrementing_column: Option<String>,
    pub timestamp_columns: Vec<String>,
    pub whitelist: Vec<String>,
    pub blacklist: Vec<String>,
    pub include: Vec<Regex>,
    pub exclude: Vec<Regex>,
    pub query: Option<String>,
    pub topic_prefix: String,
    pub poll_interval: Duration,
    pub batch_max_rows: usize,
    pub timestamp_delay_ms: u64,
    pub commit_lag_ms: u64,
    pub table_poll_interval: Duration,
    pub value_schemas: bool,
    pub key_schemas: bool,
    pub task: u32,
    pub tasks: u32,
}

fn number(config: &Config, key: &str, default: u64, max: u64) -> Result<u64> {
    match config.parse::<u64>(key)? {
        None => Ok(default),
        Some(n) if n <= max => Ok(n),
        Some(n) => Err(Error::msg(format_args!("{key} is {n}; at most {max}"))),
    }
}

impl Settings {
    pub fn from_config(config: &Config) -> Result<Settings> {
        let mode = match config.require("mode")? {
            "bulk" => Mode::Bulk,
            "incrementing" => Mode::Incrementing,
            "timestamp" => Mode::Timestamp,
            "timestamp+incrementing" => Mode::TimestampIncrementing,
            other => sluice::bail!("mode '{other}': use bulk, incrementing, timestamp or timestamp+incrementing"),
        };
        let incrementing_column = config.get("incrementing.column.name").map(str::trim).filter(|c| !c.is_empty()).map(str::to_owned);
        let timestamp_columns: Vec<String> = config.list("timestamp.column.name").into_iter().map(str::to_owned).collect();
        if mode.incrementing() && incrementing_column.is_none() {
            sluice::bail!("mode {} needs incrementing.column.name: a strictly increasing integer column", config.require("mode")?);
        }
        if mode.timestamp() && timestamp_columns.is_empty() {
            sluice::bail!("mode {} needs timestamp.column.name: the column(s) set when a row is written", config.require("mode")?);
        }
        let batch_max_rows = number(config, "batch.max.rows", BATCH_MAX_ROWS_DEFAULT as u64, BATCH_MAX_ROWS_MAX as u64)? as usize;
        if batch_max_rows == 0 {
            sluice::bail!("batch.max.rows must be at least 1");
        }
        let query = config.get("query").map(str::trim).filter(|q| !q.is_empty()).map(|q| q.trim_end_matches(';').to_owned());
        let whitelist: Vec<String> = config.list("table.whitelist").into_iter().map(str::to_owned).collect();
        let blacklist: Vec<String> = config.list("table.blacklist").into_iter().map(str::to_owned).collect();
        let include = config.regexes("table.include.list")?;
        let exclude = config.regexes("table.exclude.list")?;
        if query.is_some() && !(whitelist.is_empty() && blacklist.is_empty() && include.is_empty() && exclude.is_empty()) {
            sluice::bail!(
                "query reads its own rows: leave out table.whitelist, table.blacklist, table.include.list and table.exclude.list"
            );
        }
        if !whitelist.is_empty() && !blacklist.is_empty() {
            sluice::bail!("set table.whitelist or table.blacklist, not both");
        }
        let topic_prefix = config.get("topic.prefix").unwrap_or("").to_owned();
        if query.is_some() && topic_prefix.is_empty() {
            sluice::bail!("query mode writes to the topic named by topic.prefix: set it");
        }
        let flag = |key: &str| -> Result<bool> { Ok(config.parse::<bool>(key)?.unwrap_or(false)) };
        let task = config.parse::<u32>("task.id")?.unwrap_or(0);
        let tasks = config.parse::<u32>("tasks.max")?.unwrap_or(1).max(1);
        Ok(Settings {
            mode,
            incrementing_column,
            timestamp_columns,
            whitelist,
            blacklist,
            include,
            exclude,
            query,
            topic_prefix,
            poll_interval: Duration::from_millis(number(config, "poll.interval.ms", POLL_INTERVAL_MS_DEFAULT, 86_400_000)?),
            batch_max_rows,
            timestamp_delay_ms: number(config, "timestamp.delay.interval.ms", 0, 86_400_000)?,
            commit_lag_ms: number(config, "commit.lag.ms", COMMIT_LAG_MS_DEFAULT, 3_600_000)?,
            table_poll_interval: Duration::from_millis(number(
                config,
                "table.poll.interval.ms",
                TABLE_POLL_INTERVAL_MS_DEFAULT,
                86_400_000,
            )?),
            value_schemas: flag("value.converter.schemas.enable")?,
            key_schemas: flag("key.converter.schemas.enable")?,
            task,
            tasks,
        })
    }

    /// Whether this task reads the table (tables are spread over tasks by a stable hash of the name).
    fn owns(&self, qualified: &str) -> bool {
        self.tasks <= 1 || fnv1a(qualified.as_bytes()) % u64::from(self.tasks) == u64::from(self.task)
    }

    fn selects(&self, schema: Option<&str>, name: &str) -> bool {
        let qualified = qualified(schema, name);
        let named = |list: &[String]| list.iter().any(|entry| entry == name || *entry == qualified);
        let matches = |list: &[Regex]| list.iter().any(|re| re.is_match(name) || re.is_match(&qualified));
        name != SINK_POSITIONS_TABLE
            && (self.whitelist.is_empty() || named(&self.whitelist))
            && !named(&self.blacklist)
            && (self.include.is_empty() || matches(&self.include))
            && !matches(&self.exclude)
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |hash, b| (hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

fn qualified(schema: Option<&str>, name: &str) -> String {
    match schema {
        Some(schema) => format!("{schema}.{name}"),
        None => name.to_owned(),
    }
}

/// A statement under construction: placeholders numbered for the dialect.
struct Statement {
    dialect: Dialect,
    sql: String,
    params: Vec<Value>,
}

impl Statement {
    fn new(dialect: Dialect) -> Statement {
        Statement { dialect, sql: String::new(), params: Vec::new() }
    }

    fn push(&mut self, text: &str) -> &mut Statement {
        self.sql.push_str(text);
        self
    }

    fn bind(&mut self, value: Value) -> &mut Statement {
        self.params.push(value);
        self.sql.push_str(&self.dialect.placeholder(self.params.len()));
        self
    }
}

/// How far a table has been read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Offset {
    pub incrementing: Option<i64>,
    /// The last timestamp read, as the database returned it (its variant is bound back).
    pub timestamp: Option<Value>,
}

fn timestamp_to_json(value: &Value) -> Option<Json> {
    let (kind, text) = match value {
        Value::Timestamp(t) => ("timestamp", t),
        Value::TimestampTz(t) => ("timestamptz", t),
        Value::Date(t) => ("date", t),
        Value::Text(t) => ("text", t),
        Value::Int(i) => return Some(json!({ "timestamp": i, "timestamp.type": "int" })),
        _ => return None,
    };
    Some(json!({ "timestamp": text, "timestamp.type": kind }))
}

fn timestamp_from_json(offset: &Json) -> Result<Option<Value>> {
    let Some(ts) = offset.get("timestamp") else { return Ok(None) };
    let kind = offset.get("timestamp.type").and_then(Json::as_str).unwrap_or("timestamp");
    let text = || ts.as_str().map(str::to_owned).ok_or_else(|| Error::msg(format_args!("the saved timestamp {ts} is not text")));
    Ok(Some(match kind {
        "timestamp" => Value::Timestamp(text()?),
        "timestamptz" => Value::TimestampTz(text()?),
        "date" => Value::Date(text()?),
        "text" => Value::Text(text()?),
        "int" => Value::Int(ts.as_i64().ok_or_else(|| Error::msg(format_args!("the saved timestamp {ts} is not an integer")))?),
        other => sluice::bail!("the saved timestamp has an unknown type '{other}'"),
    }))
}

impl Offset {
    pub fn to_json(&self) -> Json {
        let mut map = Map::new();
        if let Some(id) = self.incrementing {
            map.insert("incrementing".into(), json!(id));
        }
        if let Some(Json::Object(ts)) = self.timestamp.as_ref().and_then(timestamp_to_json) {
            map.extend(ts);
        }
        Json::Object(map)
    }

    pub fn from_json(offset: &Json) -> Result<Offset> {
        let incrementing = match offset.get("incrementing") {
            None => None,
            Some(id) => {
                Some(id.as_i64().ok_or_else(|| Error::msg(format_args!("the saved offset's incrementing {id} is not an integer")))?)
            }
        };
        Ok(Offset { incrementing, timestamp: timestamp_from_json(offset)? })
    }
}

/// One table (or the query) this task reads.
#[derive(Debug)]
struct Table {
    /// `schema.table` (`table` on SQLite), or the query text.
    name: String,
    /// The FROM clause: the quoted table or the parenthesised query, aliased.
    from: String,
    topic: String,
    partition: Json,
    /// The primary key's columns: the record key.
    key: Vec<String>,
    offset: Offset,
    /// When a poll last found nothing new (the table waits `poll.interval.ms` from then).
    idle_since: Option<Instant>,
    /// Bulk mode: rows of the current pass already read.
    bulk_done: usize,
    /// PostgreSQL: transactions in progress at some poll, with the highest id that was visible at
    /// the poll before (their ids are above it).
    open_xids: BTreeMap<u64, i64>,
    /// The highest id visible at the previous poll.
    last_visible: Option<i64>,
    /// MySQL/MariaDB: when each highest id was first visible (the lag window).
    visible: VecDeque<(Instant, i64)>,
}

impl Table {
    fn new(name: String, from: String, topic: String, partition: Json, key: Vec<String>) -> Table {
        Table {
            name,
            from,
            topic,
            partition,
            key,
            offset: Offset::default(),
            idle_since: None,
            bulk_done: 0,
            open_xids: BTreeMap::new(),
            last_visible: None,
            visible: VecDeque::new(),
        }
    }

    fn due(&self, now: Instant, interval: Duration) -> Option<Duration> {
        match self.idle_since {
            None => None,
            Some(since) => interval.checked_sub(now.duration_since(since)).filter(|d| !d.is_zero()),
        }
    }
}

/// A PostgreSQL snapshot as `pg_current_snapshot()::text` shows it: `xmin:xmax:xip,…`.
pub fn parse_snapshot(text: &str) -> Result<Vec<u64>> {
    let mut parts = text.split(':');
    let (Some(_xmin), Some(_xmax), Some(xip), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        sluice::bail!("an unexpected snapshot '{text}'");
    };
    xip.split(',')
        .filter(|x| !x.is_empty())
        .map(|x| x.parse::<u64>().map_err(|_| Error::msg(format_args!("an unexpected snapshot '{text}'"))))
        .collect()
}

/// The highest id the position may move to on PostgreSQL: below every id a transaction still in
/// progress may hold. `in_progress`: the snapshot's transactions; updates `open` (transactions seen
/// in progress, with their bound) and returns the bound (`None`: no transaction in progress).
pub fn postgres_bound(open: &mut BTreeMap<u64, i64>, in_progress: &[u64], last_visible: Option<i64>, position: i64) -> Option<i64> {
    open.retain(|xid, _| in_progress.contains(xid));
    for xid in in_progress {
        // Not seen before: it started writing after the previous poll (or before this task
        // started, when the position is all that is known).
        open.entry(*xid).or_insert_with(|| last_visible.unwrap_or(position).max(position));
    }
    open.values().min().copied()
}

/// The highest id the position may move to on MySQL/MariaDB: the highest id that has been visible
/// for `lag`. `visible` holds (first seen, highest id) in order.
pub fn lagged_bound(visible: &mut VecDeque<(Instant, i64)>, now: Instant, highest: Option<i64>, lag: Duration) -> Option<i64> {
    if let Some(highest) = highest
        && visible.back().is_none_or(|(_, last)| *last < highest)
    {
        visible.push_back((now, highest));
    }
    // Keep the newest entry old enough, drop the ones before it.
    while visible.len() > 1 && now.duration_since(visible[1].0) >= lag {
        visible.pop_front();
    }
    visible.front().filter(|(seen, _)| now.duration_since(*seen) >= lag).map(|(_, id)| *id)
}

pub struct JdbcSource {
    conn: Connection,
    dialect: Dialect,
    settings: Settings,
    tables: Vec<Table>,
    /// The next table to poll (round robin).
    cursor: usize,
    tables_read_at: Option<Instant>,
    /// Positions passed to `init`, for tables found later.
    saved: Vec<Position>,
}

impl JdbcSource {
    fn discover(&mut self) -> Result<()> {
        let dialect = self.dialect;
        let found: Vec<(Option<String>, String)> = if let Some(query) = &self.settings.query {
            if self.tables.is_empty() && self.settings.task == 0 {
                let table = Table::new(
                    query.clone(),
                    format!("({query}) {SRC}"),
                    self.settings.topic_prefix.clone(),
                    json!({ "query": query }),
                    Vec::new(),
                );
                self.add(table)?;
            }
            self.tables_read_at = Some(Instant::now());
            return Ok(());
        } else {
            let statement = match dialect {
                // Tables and partitioned tables, not their partitions (whose rows the parent reads).
                Dialect::Postgres => {
                    "SELECT n.nspname::text, c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
                     AND n.nspname NOT LIKE 'pg\\_toast%' ORDER BY 1, 2"
                }
                Dialect::MySql => {
                    "SELECT CAST(table_schema AS CHAR), CAST(table_name AS CHAR) FROM information_schema.tables \
                     WHERE table_schema = DATABASE() AND table_type = 'BASE TABLE' ORDER BY 2"
                }
                Dialect::Sqlite => "SELECT NULL, name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
            };
            let rows = self.conn.query(statement, &[])?;
            rows.rows
                .into_iter()
                .filter_map(|row| {
                    let text = |v: &Value| match v {
                        Value::Text(t) => Some(t.clone()),
                        _ => None,
                    };
                    let schema = if dialect == Dialect::Sqlite { None } else { row.first().and_then(text) };
                    Some((schema, row.get(1).and_then(text)?))
                })
                .collect()
        };
        for (schema, name) in found {
            let qualified = qualified(schema.as_deref(), &name);
            if !self.settings.selects(schema.as_deref(), &name)
                || !self.settings.owns(&qualified)
                || self.tables.iter().any(|t| t.name == qualified)
            {
                continue;
            }
            let from = match &schema {
                // MySQL: the connection's database (DATABASE()) already.
                Some(schema) if dialect == Dialect::Postgres => format!("{}.{} {SRC}", dialect.quote(schema), dialect.quote(&name)),
                _ => format!("{} {SRC}", dialect.quote(&name)),
            };
            let key = self.conn.primary_key(schema.as_deref(), &name)?;
            let topic = format!("{}{name}", self.settings.topic_prefix);
            let partition = json!({ "protocol": "1", "table": qualified });
            sluice::log::info!("reading table {qualified} into topic {topic}");
            self.add(Table::new(qualified, from, topic, partition, key))?;
        }
        self.tables_read_at = Some(Instant::now());
        Ok(())
    }

    fn add(&mut self, mut table: Table) -> Result<()> {
        if let Some(saved) = self.saved.iter().find(|p| p.partition == table.partition) {
            table.offset = Offset::from_json(&saved.offset).map_err(|e| e.context(format_args!("table {}", table.name)))?;
        }
        self.tables.push(table);
        Ok(())
    }

    fn column(&self, name: &str) -> String {
        format!("{SRC}.{}", self.dialect.quote(name))
    }

    /// The timestamp expression: the column, or the first non-null of several.
    fn timestamp_expr(&self) -> String {
        match self.settings.timestamp_columns.as_slice() {
            [one] => self.column(one),
            many => format!("COALESCE({})", many.iter().map(|c| self.column(c)).collect::<Vec<_>>().join(", ")),
        }
    }

    /// The upper bound of timestamps that may be read (`None`: no bound). Read by a statement of its
    /// own *before* the rows: a transaction that commits after it either was open then (and so holds
    /// the bound down) or started later (and so stamps later times); read in the rows' statement,
    /// one committing between that statement's snapshot and its `pg_stat_activity` read would be
    /// in neither.
    fn timestamp_bound(&self) -> Result<Option<Value>> {
        let statement = match self.dialect {
            Dialect::Postgres => format!(
                "SELECT LEAST(statement_timestamp() - interval '{} milliseconds', (SELECT min(xact_start) FROM pg_stat_activity \
                 WHERE backend_type = 'client backend' AND xact_start IS NOT NULL AND pid <> pg_backend_pid()))",
                self.settings.timestamp_delay_ms
            ),
            Dialect::MySql => {
                format!("SELECT NOW(6) - INTERVAL {} MICROSECOND", self.settings.timestamp_delay_ms.max(self.settings.commit_lag_ms) * 1000)
            }
            Dialect::Sqlite => return Ok(None),
        };
        let bound = self.conn.query(&statement, &[])?.rows.into_iter().next().and_then(|row| row.into_iter().next());
        match bound {
            Some(value @ (Value::TimestampTz(_) | Value::Timestamp(_))) => Ok(Some(value)),
            other => sluice::bail!("the database's clock read as {other:?}"),
        }
    }

    /// The highest id the position may reach now, by the dialect's rule; `None`: no bound.
    fn incrementing_bound(&mut self, index: usize) -> Result<Option<i64>> {
        let inc = self.column(self.settings.incrementing_column.as_deref().unwrap_or_default());
        let lag = Duration::from_millis(self.settings.commit_lag_ms);
        let table = &self.tables[index];
        let position = table.offset.incrementing.unwrap_or(i64::MIN);
        match self.dialect {
            Dialect::Sqlite => Ok(None),
            Dialect::Postgres => {
                // One statement, one snapshot: the transactions in progress and the highest id visible.
                let rows = self.conn.query(&format!("SELECT pg_current_snapshot()::text, (SELECT max({inc}) FROM {})", table.from), &[])?;
                let row = rows.rows.into_iter().next().unwrap_or_default();
                let snapshot = match row.first() {
                    Some(Value::Text(text)) => parse_snapshot(text)?,
                    other => sluice::bail!("pg_current_snapshot() returned {other:?}"),
                };
                let visible = row.get(1).map(|v| integer(v, "the highest id")).transpose()?.flatten();
                let table = &mut self.tables[index];
                let bound = postgres_bound(&mut table.open_xids, &snapshot, table.last_visible, position);
                table.last_visible = visible;
                // Rows committed after this snapshot by transactions not in it took ids above
                // `visible`: the position stops there too.
                Ok(Some(bound.map_or(visible.unwrap_or(position), |b| b.min(visible.unwrap_or(position)))))
            }
            Dialect::MySql => {
                let rows = self.conn.query(&format!("SELECT max({inc}) FROM {}", table.from), &[])?;
                let visible = rows.rows.first().and_then(|row| row.first()).map(|v| integer(v, "the highest id")).transpose()?.flatten();
                let table = &mut self.tables[index];
                Ok(Some(lagged_bound(&mut table.visible, Instant::now(), visible, lag).unwrap_or(position)))
            }
        }
    }

    /// Reads the next rows of table `index`: records, and whether the table has more now.
    fn read(&mut self, index: usize) -> Result<(Vec<SourceRecord>, bool)> {
        let limit = self.settings.batch_max_rows;
        let mode = self.settings.mode;
        let mut statement = Statement::new(self.dialect);
        statement.push(&format!("SELECT {SRC}.*"));
        let ts_expr = self.timestamp_expr();
        if mode.timestamp() {
            statement.push(&format!(", {ts_expr} AS {TS_ALIAS}"));
        }
        statement.push(&format!(" FROM {} WHERE 1 = 1", self.tables[index].from));
        let inc = self.settings.incrementing_column.as_deref().map(|c| self.column(c));
        if mode == Mode::Incrementing {
            let bound = self.incrementing_bound(index)?;
            let column = inc.clone().unwrap_or_default();
            let position = self.tables[index].offset.incrementing;
            if let (Some(bound), Some(position)) = (bound, position)
                && bound <= position
            {
                return Ok((Vec::new(), false));
            }
            if let Some(position) = position {
                statement.push(&format!(" AND {column} > ")).bind(Value::Int(position));
            }
            if let Some(bound) = bound {
                statement.push(&format!(" AND {column} <= ")).bind(Value::Int(bound));
            }
        }
        if mode.timestamp() {
            if let Some(ts) = self.tables[index].offset.timestamp.clone() {
                match (mode, self.tables[index].offset.incrementing) {
                    (Mode::TimestampIncrementing, Some(id)) => {
                        let inc = inc.clone().unwrap_or_default();
                        statement.push(&format!(" AND ({ts_expr} > ")).bind(ts.clone());
                        statement
                            .push(&format!(" OR ({ts_expr} = "))
                            .bind(ts)
                            .push(&format!(" AND {inc} > "))
                            .bind(Value::Int(id))
                            .push("))");
                    }
                    _ => {
                        statement.push(&format!(" AND {ts_expr} > ")).bind(ts);
                    }
                }
            } else {
                statement.push(&format!(" AND {ts_expr} IS NOT NULL"));
            }
            if let Some(bound) = self.timestamp_bound()? {
                statement.push(&format!(" AND {ts_expr} < ")).bind(bound);
            }
        }
        self.finish_read(index, statement, inc, limit)
    }

    fn finish_read(
        &mut self,
        index: usize,
        mut statement: Statement,
        inc: Option<String>,
        limit: usize,
    ) -> Result<(Vec<SourceRecord>, bool)> {
        let mode = self.settings.mode;
        let order: Vec<String> = match mode {
            Mode::Bulk => self.bulk_order(index),
            Mode::Incrementing => vec![inc.unwrap_or_default()],
            Mode::Timestamp => vec![TS_ALIAS.to_owned()],
            Mode::TimestampIncrementing => vec![TS_ALIAS.to_owned(), inc.unwrap_or_default()],
        };
        if !order.is_empty() {
            statement.push(&format!(" ORDER BY {}", order.join(", ")));
        }
        // A full batch: the table may have more now.
        statement.push(&format!(" LIMIT {limit}"));
        if mode == Mode::Bulk {
            statement.push(&format!(" OFFSET {}", self.tables[index].bulk_done));
        }
        let mut rows = self.conn.query(&statement.sql, &statement.params)?;
        let mut more = rows.rows.len() >= limit;
        if mode == Mode::Timestamp && more {
            more = self.whole_timestamp_runs(index, &mut rows)?;
        }
        let table = &mut self.tables[index];
        if mode == Mode::Bulk {
            table.bulk_done = if more { table.bulk_done + rows.rows.len() } else { 0 };
        }
        let records = self.records(index, rows)?;
        Ok((records, more))
    }

    /// Timestamp mode: a batch must not end inside a run of equal timestamps (the next poll asks for
    /// later ones only). Drops a trailing run, or, when the whole batch is one run, reads all of it.
    fn whole_timestamp_runs(&mut self, index: usize, rows: &mut Rows) -> Result<bool> {
        let ts = rows.column(TS_ALIAS).ok_or_else(|| Error::msg("the timestamp column is missing from the result"))?;
        let last = rows.rows.last().map(|row| row[ts].clone());
        let Some(last) = last else { return Ok(false) };
        if rows.rows.first().is_some_and(|row| row[ts] != last) {
            while rows.rows.last().is_some_and(|row| row[ts] == last) {
                rows.rows.pop();
            }
            return Ok(true);
        }
        let ts_expr = self.timestamp_expr();
        let mut statement = Statement::new(self.dialect);
        statement.push(&format!("SELECT {SRC}.*, {ts_expr} AS {TS_ALIAS} FROM {} WHERE {ts_expr} = ", self.tables[index].from)).bind(last);
        statement.push(&format!(" LIMIT {BATCH_MAX_ROWS_MAX}"));
        *rows = self.conn.query(&statement.sql, &statement.params)?;
        if rows.rows.len() >= BATCH_MAX_ROWS_MAX {
            sluice::bail!(
                "{BATCH_MAX_ROWS_MAX} or more rows share one timestamp, more than one poll can carry: \
                 use mode=timestamp+incrementing, which tells them apart"
            );
        }
        Ok(true)
    }

    /// Bulk mode pages through the table in order of its primary key (else of its first column).
    fn bulk_order(&self, index: usize) -> Vec<String> {
        let table = &self.tables[index];
        if table.key.is_empty() { vec!["1".to_owned()] } else { table.key.iter().map(|k| self.column(k)).collect() }
    }

    /// Rows into records; moves the table's offset past them.
    fn records(&mut self, index: usize, rows: Rows) -> Result<Vec<SourceRecord>> {
        if rows.rows.is_empty() {
            // Some drivers describe no columns for an empty result.
            return Ok(Vec::new());
        }
        let mode = self.settings.mode;
        let inc_index = match (&self.settings.incrementing_column, mode.incrementing()) {
            (Some(column), true) => Some(rows.column(column).ok_or_else(|| {
                Error::msg(format_args!("incrementing.column.name '{column}' is not a column of {}", self.tables[index].name))
            })?),
            _ => None,
        };
        let ts_index = rows.column(TS_ALIAS);
        let table = &self.tables[index];
        let key_index: Vec<usize> = table.key.iter().filter_map(|k| rows.column(k)).collect();
        let value_columns: Vec<usize> = (0..rows.columns.len()).filter(|i| Some(*i) != ts_index).collect();
        let value_schema = self.settings.value_schemas.then(|| schema_of(&rows.columns, &value_columns, &table.name));
        let key_schema = self.settings.key_schemas.then(|| schema_of(&rows.columns, &key_index, &format!("{}.Key", table.name)));
        let mut offset = table.offset.clone();
        let mut records = Vec::with_capacity(rows.rows.len());
        for row in &rows.rows {
            let value = envelope(object_of(&rows.columns, row, &value_columns), value_schema.as_ref());
            let mut record = SourceRecord::new(&table.topic, serde_json::to_vec(&value).unwrap_or_default());
            if key_index.len() == table.key.len() && !key_index.is_empty() {
                let key = envelope(object_of(&rows.columns, row, &key_index), key_schema.as_ref());
                record = record.with_key(serde_json::to_vec(&key).unwrap_or_default());
            }
            if let Some(i) = inc_index {
                offset.incrementing = Some(
                    integer(&row[i], "incrementing.column.name")?
                        .ok_or_else(|| Error::msg(format_args!("a row of {} has a NULL incrementing column", table.name)))?,
                );
            }
            if let Some(i) = ts_index {
                offset.timestamp = Some(row[i].clone());
            }
            records.push(record);
        }
        self.tables[index].offset = offset;
        Ok(records)
    }
}

/// An integer column's value (`None` for NULL).
fn integer(value: &Value, what: &str) -> Result<Option<i64>> {
    match value {
        Value::Null => Ok(None),
        Value::Int(i) => Ok(Some(*i)),
        Value::Decimal(d) if d.parse::<i64>().is_ok() => Ok(d.parse().ok()),
        other => Err(Error::msg(format_args!("{what} must be an integer column, not {other:?}"))),
    }
}

fn object_of(columns: &[Column], row: &[Value], indexes: &[usize]) -> Json {
    Json::Object(indexes.iter().map(|i| (columns[*i].name.clone(), row[*i].to_json())).collect())
}

/// Connect's schema type for a database type.
fn connect_type(type_name: &str) -> &'static str {
    let t = type_name.to_ascii_uppercase();
    if t.contains("BOOL") {
        "boolean"
    } else if t.contains("INT") && !t.contains("INTERVAL") && !t.contains("POINT") {
        "int64"
    } else if t.contains("FLOAT") || t.contains("DOUBLE") || t == "REAL" {
        "double"
    } else if t.contains("BYTEA") || t.contains("BLOB") || t.contains("BINARY") {
        "bytes"
    } else {
        "string"
    }
}

fn schema_of(columns: &[Column], indexes: &[usize], name: &str) -> Json {
    let fields: Vec<Json> = indexes
        .iter()
        .map(|i| json!({ "field": columns[*i].name, "type": connect_type(&columns[*i].type_name), "optional": true }))
        .collect();
    json!({ "type": "struct", "fields": fields, "optional": false, "name": name })
}

fn envelope(payload: Json, schema: Option<&Json>) -> Json {
    match schema {
        Some(schema) => json!({ "schema": schema, "payload": payload }),
        None => payload,
    }
}

#[sluice::source]
impl Source for JdbcSource {
    fn keys() -> Vec<ConfigKey> {
        vec![
            ConfigKey::new("mode", KeyType::String, "bulk, incrementing, timestamp or timestamp+incrementing.").required(),
            ConfigKey::new("incrementing.column.name", KeyType::String, "The strictly increasing integer column (incrementing modes)."),
            ConfigKey::new(
                "timestamp.column.name",
                KeyType::List,
                "The timestamp column(s) set when a row is written (timestamp modes); the first non-null counts.",
            ),
            ConfigKey::new("table.whitelist", KeyType::List, "Read only these tables (`table` or `schema.table`)."),
            ConfigKey::new("table.blacklist", KeyType::List, "Read every table except these."),
            ConfigKey::new("table.include.list", KeyType::List, "Read the tables matching these regular expressions."),
            ConfigKey::new("table.exclude.list", KeyType::List, "Skip the tables matching these regular expressions."),
            ConfigKey::new("query", KeyType::String, "Read this query's rows instead of tables; the topic is topic.prefix."),
            ConfigKey::new("poll.interval.ms", KeyType::Int, "How often a table with nothing new is read again.").default_value("5000"),
            ConfigKey::new("batch.max.rows", KeyType::Int, "The most rows one poll returns.").default_value("100"),
            ConfigKey::new("timestamp.delay.interval.ms", KeyType::Long, "Timestamp modes: rows are read this long after their timestamp.")
                .default_value("0"),
            ConfigKey::new(
                "commit.lag.ms",
                KeyType::Long,
                "MySQL/MariaDB: how long a transaction may stay open after taking an id or timestamp; newer rows wait this long.",
            )
            .default_value("5000"),
            ConfigKey::new("table.poll.interval.ms", KeyType::Long, "How often the list of tables is read again.").default_value("60000"),
            ConfigKey::new("value.converter.schemas.enable", KeyType::Boolean, "Values in Connect's {schema, payload} envelope.")
                .default_value("false"),
            ConfigKey::new("key.converter.schemas.enable", KeyType::Boolean, "Keys in Connect's {schema, payload} envelope.")
                .default_value("false"),
        ]
    }

    fn init(config: &Config, positions: Vec<Position>) -> Result<JdbcSource> {
        let settings = Settings::from_config(config)?;
        let conn = Connection::open("default")?;
        let dialect = conn.dialect();
        if dialect == Dialect::Sqlite && settings.timestamp_delay_ms > 0 {
            sluice::bail!("timestamp.delay.interval.ms is not supported on SQLite, which commits in order (one writer at a time)");
        }
        let mut source = JdbcSource { conn, dialect, settings, tables: Vec::new(), cursor: 0, tables_read_at: None, saved: positions };
        source.discover()?;
        if source.tables.is_empty() && source.settings.task == 0 {
            sluice::log::warn!("no table matches the configuration yet; looking again every table.poll.interval.ms");
        }
        Ok(source)
    }

    fn poll(&mut self) -> Result<Poll> {
        let now = Instant::now();
        if self.tables_read_at.is_none_or(|at| now.duration_since(at) >= self.settings.table_poll_interval) {
            self.discover()?;
        }
        let mut wait = Duration::from_millis(IDLE_MS_MAX);
        for _ in 0..self.tables.len() {
            let index = self.cursor % self.tables.len();
            self.cursor = (index + 1) % self.tables.len();
            if let Some(remaining) = self.tables[index].due(now, self.settings.poll_interval) {
                wait = wait.min(remaining);
                continue;
            }
            let (records, more) = self.read(index).map_err(|e| e.context(format_args!("table {}", self.tables[index].name)))?;
            let table = &mut self.tables[index];
            table.idle_since = if more { None } else { Some(now) };
            if records.is_empty() {
                if !more {
                    wait = wait.min(self.settings.poll_interval);
                }
                continue;
            }
            let positions = match self.settings.mode {
                Mode::Bulk => Vec::new(),
                _ => vec![Position::new(table.partition.clone(), table.offset.to_json())],
            };
            return Ok(Poll::records(records, positions));
        }
        Ok(Poll::idle(u32::try_from(wait.as_millis()).unwrap_or(u32::MAX).max(1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_parse() {
        assert_eq!(parse_snapshot("100:105:100,102").unwrap(), vec![100, 102]);
        assert_eq!(parse_snapshot("100:100:").unwrap(), Vec::<u64>::new());
        assert!(parse_snapshot("garbage").is_err());
    }

    #[test]
    fn the_postgres_bound_stays_below_ids_open_transactions_may_hold() {
        let mut open = BTreeMap::new();
        // First poll: a transaction in progress, nothing known about it: the position is the bound.
        assert_eq!(postgres_bound(&mut open, &[7], None, 10), Some(10));
        // It is still open; a newer one appears after a poll that saw id 20: it holds ids above 20.
        assert_eq!(postgres_bound(&mut open, &[7, 9], Some(20), 10), Some(10));
        // The first ends: the bound is the second's.
        assert_eq!(postgres_bound(&mut open, &[9], Some(25), 10), Some(20));
        assert_eq!(postgres_bound(&mut open, &[], Some(30), 20), None);
        assert!(open.is_empty());
    }

    #[test]
    fn the_lag_window_holds_ids_until_they_have_been_visible_long_enough() {
        let lag = Duration::from_millis(100);
        let start = Instant::now();
        let mut seen = VecDeque::new();
        assert_eq!(lagged_bound(&mut seen, start, Some(5), lag), None);
        assert_eq!(lagged_bound(&mut seen, start + Duration::from_millis(50), Some(9), lag), None);
        assert_eq!(lagged_bound(&mut seen, start + Duration::from_millis(120), Some(9), lag), Some(5));
        assert_eq!(lagged_bound(&mut seen, start + Duration::from_millis(160), Some(12), lag), Some(9));
        assert_eq!(seen.len(), 2, "older entries are dropped");
    }

    #[test]
    fn offsets_round_trip_with_their_timestamp_type() {
        let offset = Offset { incrementing: Some(42), timestamp: Some(Value::TimestampTz("2026-01-02T03:04:05.123456Z".into())) };
        let json = offset.to_json();
        assert_eq!(json["incrementing"], 42);
        assert_eq!(json["timestamp.type"], "timestamptz");
        assert_eq!(Offset::from_json(&json).unwrap(), offset);
        assert!(Offset::from_json(&json!({"incrementing": "x"})).is_err());
    }

    #[test]
    fn settings_are_checked() {
        let base = [("mode", "incrementing"), ("incrementing.column.name", "id")];
        assert!(Settings::from_config(&Config::from_pairs(base)).is_ok());
        assert!(Settings::from_config(&Config::from_pairs([("mode", "incrementing")])).is_err());
        assert!(Settings::from_config(&Config::from_pairs([("mode", "timestamp")])).is_err());
        assert!(Settings::from_config(&Config::from_pairs([("mode", "sometimes")])).is_err());
        let query = Config::from_pairs([("mode", "bulk"), ("query", "SELECT 1")]);
        assert!(Settings::from_config(&query).unwrap_err().message().contains("topic.prefix"));
        let rows = Config::from_pairs([("mode", "bulk"), ("batch.max.rows", "100000")]);
        assert!(Settings::from_config(&rows).is_err());
        let re = Config::from_pairs([("mode", "bulk"), ("table.include.list", "public\\.ord.*")]);
        let settings = Settings::from_config(&re).unwrap();
        assert!(settings.selects(Some("public"), "orders") && !settings.selects(Some("public"), "users"));
        assert!(!settings.selects(None, SINK_POSITIONS_TABLE));
    }

    #[test]
    fn values_keep_their_precision_as_json() {
        assert_eq!(Value::Decimal("12345678901234567890.000001".into()).to_json(), json!("12345678901234567890.000001"));
        assert_eq!(Value::Bytes(vec![0, 255]).to_json(), json!("AP8="));
        assert_eq!(Value::Timestamp("2026-01-02T03:04:05.000001".into()).to_json(), json!("2026-01-02T03:04:05.000001"));
    }
}
