//! `jdbc-sink`: writes records into tables of PostgreSQL, MySQL/MariaDB or SQLite, configured with
//! the keys of Confluent's JDBC sink connector so that an existing config carries over with only
//! `connector.class` changed:
//!
//! | key | meaning |
//! |---|---|
//! | `connection.url`, `connection.user`, `connection.password` | the target (read by the runtime; the plugin never sees the URL or password) |
//! | `insert.mode` | `insert` (default), `upsert` (insert or update by primary key), `update` |
//! | `pk.mode` | `none` (default), `record_key` (the key's fields, or the key itself as `pk.fields`' one name), `record_value` (`pk.fields` of the value) |
//! | `pk.fields` | the primary key's columns (for a primitive key: one name, default `__connect_key`) |
//! | `auto.create` | create a missing table from the first record's fields (`false` by default) |
//! | `auto.evolve` | add columns for fields the table lacks (`false` by default) |
//! | `delete.enabled` | a record with a null value (a tombstone) deletes the row of its key; needs `pk.mode=record_key` |
//! | `table.name.format` | the table for a topic, `${topic}` replaced by the topic's name (default `${topic}`) |
//!
//! Values are JSON objects, schemaless or in Connect's `{"schema": …, "payload": {…}}` envelope
//! (the payload is written). A change event in Debezium's envelope (from `postgres-cdc` or Debezium:
//! `before`, `after`, `op`, `source`) writes its `after` row, and a delete (`op: d`) deletes the row of
//! its key when `delete.enabled=true`, so a CDC topic feeds a table with no unwrapping transform. Each field becomes a column: values are bound by the column's type in
//! the table (numeric and decimal exactly, timestamps and dates from their text or from epoch
//! milliseconds, JSON as JSON), or, for a column this sink creates, by the JSON type it first saw
//! (integers `BIGINT`, other numbers `DOUBLE`, booleans `BOOLEAN`, the rest text) — types are then
//! kept stable.
//!
//! Exactly once: the runtime begins a transaction on the connector's `default` connection before each
//! batch and commits it with the connector's input positions after `put` returns, so the batch's rows
//! are written once or not at all. Rows go in multi-row statements (one per run of records with the
//! same table and columns, up to [`ROWS_PER_STATEMENT_MAX`] rows), so a batch costs a few round
//! trips, not one per row. A record the database refuses (a constraint) fails its statement; the
//! runtime then isolates it and applies the connector's error policy (`errors.tolerance`, the
//! dead-letter topic) to that record alone.

use std::collections::{BTreeSet, HashMap};

use serde_json::{Map, Value as Json};
use sluice::connector::{ConfigKey, KeyType, Sink, SinkRecord};
use sluice::sql::{Connection, Dialect, Value};
use sluice::{Config, Error, Result};

/// Most rows in one multi-row statement.
pub const ROWS_PER_STATEMENT_MAX: usize = 500;
/// Most parameters in one statement (PostgreSQL's and MySQL's limit is 65,535).
const PARAMS_PER_STATEMENT_MAX: usize = 30_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertMode {
    Insert,
    Upsert,
    Update,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PkMode {
    None,
    RecordKey,
    RecordValue,
}

/// The connector's settings, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub insert_mode: InsertMode,
    pub pk_mode: PkMode,
    pub pk_fields: Vec<String>,
    pub auto_create: bool,
    pub auto_evolve: bool,
    pub delete_enabled: bool,
    pub table_format: String,
}

fn flag(config: &Config, key: &str) -> Result<bool> {
    Ok(config.parse::<bool>(key)?.unwrap_or(false))
}

impl Settings {
    pub fn from_config(config: &Config) -> Result<Settings> {
        let insert_mode = match config.get("insert.mode").unwrap_or("insert") {
            "insert" => InsertMode::Insert,
            "upsert" => InsertMode::Upsert,
            "update" => InsertMode::Update,
            other => return Err(Error::msg(format_args!("insert.mode '{other}': use insert, upsert or update"))),
        };
        let pk_mode = match config.get("pk.mode").unwrap_or("none") {
            "none" => PkMode::None,
            "record_key" => PkMode::RecordKey,
            "record_value" => PkMode::RecordValue,
            "kafka" => return Err(Error::msg("pk.mode 'kafka' is not supported: use record_key or record_value")),
            other => return Err(Error::msg(format_args!("pk.mode '{other}': use none, record_key or record_value"))),
        };
        let pk_fields: Vec<String> = config.list("pk.fields").into_iter().map(str::to_owned).collect();
        let settings = Settings {
            insert_mode,
            pk_mode,
            pk_fields,
            auto_create: flag(config, "auto.create")?,
            auto_evolve: flag(config, "auto.evolve")?,
            delete_enabled: flag(config, "delete.enabled")?,
            table_format: config.get("table.name.format").unwrap_or("${topic}").to_owned(),
        };
        if settings.insert_mode != InsertMode::Insert && settings.pk_mode == PkMode::None {
            return Err(Error::msg("insert.mode upsert and update need a primary key: set pk.mode to record_key or record_value"));
        }
        if settings.pk_mode == PkMode::RecordValue && settings.pk_fields.is_empty() {
            return Err(Error::msg("pk.mode=record_value needs pk.fields: the value's fields that form the primary key"));
        }
        if settings.delete_enabled && settings.pk_mode != PkMode::RecordKey {
            return Err(Error::msg("delete.enabled=true needs pk.mode=record_key (a tombstone has only its key)"));
        }
        Ok(settings)
    }

    pub fn table_for(&self, topic: &str) -> String {
        self.table_format.replace("${topic}", topic)
    }
}

/// What one record asks of the table.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Insert, upsert or update a row: its fields in order, and which of them form the key.
    Write { table: String, fields: Vec<(String, Json)>, pk: Vec<String> },
    /// Delete the row with this key.
    Delete { table: String, key: Vec<(String, Json)> },
    /// Nothing to do (a tombstone with deletes off).
    Skip,
}

fn parse_json(bytes: &[u8], what: &str) -> Result<Json> {
    serde_json::from_slice(bytes).map_err(|e| Error::msg(format_args!("the record's {what} is not JSON: {e}")))
}

/// A value's fields: a JSON object, or the `payload` of Connect's schema envelope.
fn object_of(json: Json, what: &str) -> Result<Map<String, Json>> {
    match json {
        Json::Object(mut map) if map.len() == 2 && map.contains_key("schema") && map.contains_key("payload") => {
            match map.remove("payload") {
                Some(Json::Object(payload)) => Ok(payload),
                _ => Err(Error::msg(format_args!("the record's {what} has a schema envelope whose payload is not an object"))),
            }
        }
        Json::Object(map) => Ok(map),
        other => Err(Error::msg(format_args!("the record's {what} is JSON but not an object: {}", kind_of(&other)))),
    }
}

fn kind_of(json: &Json) -> &'static str {
    match json {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

/// The key's fields under `pk.mode=record_key`.
fn key_fields(settings: &Settings, record: &SinkRecord) -> Result<Vec<(String, Json)>> {
    let Some(key) = &record.key else { return Err(Error::msg("pk.mode=record_key, but the record has no key")) };
    let key = parse_json(key, "key")?;
    let key = match key {
        Json::Object(_) => object_of(key, "key")?,
        primitive => {
            let name = match settings.pk_fields.as_slice() {
                [] => "__connect_key".to_owned(),
                [one] => one.clone(),
                _ => return Err(Error::msg("a primitive key is one column: pk.fields names one field")),
            };
            return Ok(vec![(name, primitive)]);
        }
    };
    if settings.pk_fields.is_empty() {
        return Ok(key.into_iter().collect());
    }
    settings
        .pk_fields
        .iter()
        .map(|name| match key.get(name) {
            Some(value) => Ok((name.clone(), value.clone())),
            None => Err(Error::msg(format_args!("pk.fields names '{name}', which the key does not have"))),
        })
        .collect()
}

/// A change event in Debezium's envelope (what `postgres-cdc` and Debezium write): `Some(Some(row))`
/// for a snapshot read, insert or update (the row after it), `Some(None)` for a delete, `None` for any
/// other value — as Debezium's `ExtractNewRecordState` transform would unwrap it.
fn debezium_change(value: &Map<String, Json>) -> Option<Option<Map<String, Json>>> {
    let op = value.get("op")?.as_str()?;
    if !value.contains_key("source") || !value.contains_key("after") || !value.contains_key("before") {
        return None;
    }
    match (op, value.get("after")) {
        ("c" | "u" | "r", Some(Json::Object(after))) => Some(Some(after.clone())),
        ("d", _) => Some(None),
        _ => None,
    }
}

/// What `record` asks of its table.
pub fn op_of(settings: &Settings, record: &SinkRecord) -> Result<Op> {
    let table = settings.table_for(&record.topic);
    let Some(value) = &record.value else {
        if !settings.delete_enabled {
            return Ok(Op::Skip);
        }
        return Ok(Op::Delete { table, key: key_fields(settings, record)? });
    };
    let value = object_of(parse_json(value, "value")?, "value")?;
    let value = match debezium_change(&value) {
        None => value,
        Some(Some(after)) => after,
        Some(None) if settings.delete_enabled => return Ok(Op::Delete { table, key: key_fields(settings, record)? }),
        Some(None) => return Ok(Op::Skip),
    };
    match settings.pk_mode {
        PkMode::None => Ok(Op::Write { table, fields: value.into_iter().collect(), pk: Vec::new() }),
        PkMode::RecordValue => {
            if let Some(missing) = settings.pk_fields.iter().find(|f| !value.contains_key(*f)) {
                return Err(Error::msg(format_args!("pk.fields names '{missing}', which the value does not have")));
            }
            Ok(Op::Write { table, fields: value.into_iter().collect(), pk: settings.pk_fields.clone() })
        }
        PkMode::RecordKey => {
            let key = key_fields(settings, record)?;
            let pk: Vec<String> = key.iter().map(|(name, _)| name.clone()).collect();
            let mut fields = key;
            fields.extend(value.into_iter().filter(|(name, _)| !pk.contains(name)));
            Ok(Op::Write { table, fields, pk })
        }
    }
}

/// SQL spelled for one database.
#[derive(Debug, Clone, Copy)]
pub struct Sql {
    pub dialect: Dialect,
}

impl Sql {
    pub fn quote(&self, name: &str) -> String {
        self.dialect.quote(name)
    }

    fn placeholder(&self, n: usize) -> String {
        self.dialect.placeholder(n)
    }

    /// The column type this sink creates for a JSON value.
    pub fn column_type(&self, value: &Json, primary_key: bool) -> &'static str {
        match (value, self.dialect) {
            (Json::Bool(_), Dialect::Sqlite) => "INTEGER",
            (Json::Bool(_), _) => "BOOLEAN",
            (Json::Number(n), Dialect::Sqlite) if n.is_i64() || n.is_u64() => "INTEGER",
            (Json::Number(n), _) if n.is_i64() || n.is_u64() => "BIGINT",
            (Json::Number(_), Dialect::Postgres) => "DOUBLE PRECISION",
            (Json::Number(_), Dialect::MySql) => "DOUBLE",
            (Json::Number(_), Dialect::Sqlite) => "REAL",
            // MySQL cannot index TEXT without a length.
            (_, Dialect::MySql) if primary_key => "VARCHAR(255)",
            _ => "TEXT",
        }
    }

    /// `CREATE TABLE` for a row's fields.
    pub fn create_table(&self, table: &str, fields: &[(String, Json)], pk: &[String]) -> String {
        let mut columns: Vec<String> = fields
            .iter()
            .map(|(name, value)| {
                let is_pk = pk.contains(name);
                format!("{} {}{}", self.quote(name), self.column_type(value, is_pk), if is_pk { " NOT NULL" } else { "" })
            })
            .collect();
        if !pk.is_empty() {
            columns.push(format!("PRIMARY KEY ({})", pk.iter().map(|c| self.quote(c)).collect::<Vec<_>>().join(", ")));
        }
        // IF NOT EXISTS: tasks of one connector may create the same table at once.
        format!("CREATE TABLE IF NOT EXISTS {} ({})", self.quote(table), columns.join(", "))
    }

    /// The catalog query for a table's columns and their types (one parameter: the table).
    pub fn columns_query(&self) -> &'static str {
        match self.dialect {
            Dialect::Postgres => {
                "SELECT column_name::text, data_type::text FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = $1"
            }
            Dialect::MySql => {
                "SELECT CAST(column_name AS CHAR), CAST(data_type AS CHAR) FROM information_schema.columns WHERE table_schema = DATABASE() AND table_name = ?"
            }
            Dialect::Sqlite => "SELECT name, type FROM pragma_table_info(?)",
        }
    }

    /// A multi-row `INSERT` (`Upsert`: insert or update by `pk`) of `rows` rows of `columns`.
    pub fn insert(&self, table: &str, columns: &[String], pk: &[String], rows: usize, mode: InsertMode) -> String {
        let names: Vec<String> = columns.iter().map(|c| self.quote(c)).collect();
        let mut n = 0;
        let values: Vec<String> = (0..rows)
            .map(|_| {
                let row: Vec<String> = columns
                    .iter()
                    .map(|_| {
                        n += 1;
                        self.placeholder(n)
                    })
                    .collect();
                format!("({})", row.join(", "))
            })
            .collect();
        let mut statement = format!("INSERT INTO {} ({}) VALUES {}", self.quote(table), names.join(", "), values.join(", "));
        if mode == InsertMode::Upsert {
            let rest: Vec<&String> = columns.iter().filter(|c| !pk.contains(c)).collect();
            match self.dialect {
                Dialect::MySql => {
                    let sets: Vec<String> = if rest.is_empty() {
                        vec![format!("{0} = {0}", self.quote(&pk[0]))]
                    } else {
                        rest.iter().map(|c| format!("{0} = VALUES({0})", self.quote(c))).collect()
                    };
                    statement.push_str(&format!(" ON DUPLICATE KEY UPDATE {}", sets.join(", ")));
                }
                Dialect::Postgres | Dialect::Sqlite => {
                    let target = pk.iter().map(|c| self.quote(c)).collect::<Vec<_>>().join(", ");
                    if rest.is_empty() {
                        statement.push_str(&format!(" ON CONFLICT ({target}) DO NOTHING"));
                    } else {
                        let sets: Vec<String> = rest.iter().map(|c| format!("{0} = excluded.{0}", self.quote(c))).collect();
                        statement.push_str(&format!(" ON CONFLICT ({target}) DO UPDATE SET {}", sets.join(", ")));
                    }
                }
            }
        }
        statement
    }

    /// `UPDATE` of one row's non-key `columns` by its key; parameters: the columns, then the key.
    pub fn update(&self, table: &str, columns: &[String], pk: &[String]) -> String {
        let mut n = 0;
        let mut next = || {
            n += 1;
            self.placeholder(n)
        };
        let sets: Vec<String> = columns.iter().map(|c| format!("{} = {}", self.quote(c), next())).collect();
        let wheres: Vec<String> = pk.iter().map(|c| format!("{} = {}", self.quote(c), next())).collect();
        format!("UPDATE {} SET {} WHERE {}", self.quote(table), sets.join(", "), wheres.join(" AND "))
    }

    pub fn delete(&self, table: &str, pk: &[String]) -> String {
        let wheres: Vec<String> = pk.iter().enumerate().map(|(i, c)| format!("{} = {}", self.quote(c), self.placeholder(i + 1))).collect();
        format!("DELETE FROM {} WHERE {}", self.quote(table), wheres.join(" AND "))
    }
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// Epoch milliseconds as `YYYY-MM-DDTHH:MM:SS.ffffff` (UTC).
pub fn timestamp_from_millis(ms: i64) -> String {
    let (days, ms_of_day) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    let (year, month, day) = civil_from_days(days);
    let secs = ms_of_day / 1_000;
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}000", secs / 3_600, secs / 60 % 60, secs % 60, ms_of_day % 1_000)
}

/// A JSON value as a parameter for a column of type `column_type` (the catalog's name; empty for
/// a column this sink has just created, whose type follows the JSON).
pub fn bind(value: &Json, column_type: &str) -> Value {
    let ty = column_type.to_ascii_lowercase();
    let text = |s: &str| s.to_owned();
    match value {
        Json::Null => Value::Null,
        Json::Object(_) | Json::Array(_) if ty.contains("json") => Value::Json(value.to_string()),
        Json::Object(_) | Json::Array(_) => Value::Text(value.to_string()),
        Json::Bool(b) if ty.contains("int") && !ty.contains("interval") => Value::Int(i64::from(*b)),
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) if ty.contains("timestamp") || ty.contains("datetime") => match n.as_i64() {
            Some(ms) if ty.contains("with time zone") || ty == "timestamptz" => {
                Value::TimestampTz(format!("{}Z", timestamp_from_millis(ms)))
            }
            Some(ms) => Value::Timestamp(timestamp_from_millis(ms)),
            None => Value::Decimal(n.to_string()),
        },
        Json::Number(n) if ty.contains("date") => match n.as_i64() {
            // Connect's Date is days since the epoch.
            Some(days) => Value::Date(timestamp_from_millis(days * 86_400_000)[..10].to_owned()),
            None => Value::Decimal(n.to_string()),
        },
        Json::Number(n) if ty.contains("numeric") || ty.contains("decimal") => Value::Decimal(n.to_string()),
        Json::Number(n) if ty.contains("double") || ty.contains("float") || ty.contains("real") => {
            Value::Float(n.as_f64().unwrap_or(f64::NAN))
        }
        Json::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None if n.is_u64() => Value::Decimal(n.to_string()),
            None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) if ty.contains("timestamp") && (ty.contains("with time zone") || ty == "timestamptz") => {
            Value::TimestampTz(s.replacen(' ', "T", 1))
        }
        Json::String(s) if ty.contains("timestamp") || ty.contains("datetime") => Value::Timestamp(s.replacen(' ', "T", 1)),
        Json::String(s) if ty == "date" => Value::Date(text(s)),
        Json::String(s) if ty.starts_with("time") => Value::Time(text(s)),
        Json::String(s) if ty.contains("numeric") || ty.contains("decimal") => Value::Decimal(text(s)),
        Json::String(s) if ty == "uuid" => Value::Uuid(text(s)),
        Json::String(s) if ty.contains("json") => Value::Json(text(s)),
        Json::String(s) if ty.contains("bytea") || ty.contains("blob") || ty.contains("binary") => Value::Bytes(s.as_bytes().to_vec()),
        Json::String(s) => Value::Text(text(s)),
    }
}

/// A table as the sink knows it: column name → the catalog's type name.
#[derive(Debug, Clone, Default)]
struct Table {
    columns: HashMap<String, String>,
}

pub struct JdbcSink {
    settings: Settings,
    db: Connection,
    sql: Sql,
    tables: HashMap<String, Table>,
}

/// A run of consecutive ops that go in one statement.
struct Run {
    start: usize,
    ops: Vec<usize>,
}

impl JdbcSink {
    fn load_table(&mut self, table: &str) -> Result<Option<Table>> {
        let rows = self.db.query(self.sql.columns_query(), &[Value::Text(table.to_owned())])?;
        if rows.rows.is_empty() {
            return Ok(None);
        }
        let mut columns = HashMap::new();
        for row in rows.rows {
            if let [Value::Text(name), Value::Text(ty)] = row.as_slice() {
                columns.insert(name.clone(), ty.clone());
            }
        }
        Ok(Some(Table { columns }))
    }

    /// Makes sure `table` has every field of `fields` as a column (creating or evolving it if
    /// allowed). `record_idx`: which record asked, for its error.
    fn prepare(&mut self, table: &str, fields: &[(String, Json)], pk: &[String], record_idx: usize) -> Result<()> {
        if !self.tables.contains_key(table) {
            let loaded = match self.load_table(table)? {
                Some(loaded) => loaded,
                None if self.settings.auto_create => {
                    self.db.execute(&self.sql.create_table(table, fields, pk), &[])?;
                    sluice::log::info!("created table {table}");
                    self.load_table(table)?.unwrap_or_default()
                }
                None => {
                    return Err(
                        Error::msg(format_args!("table {table} does not exist; create it or set auto.create=true")).at_record(record_idx)
                    );
                }
            };
            self.tables.insert(table.to_owned(), loaded);
        }
        let known = &self.tables[table].columns;
        let missing: Vec<(String, Json)> = fields.iter().filter(|(name, _)| !known.contains_key(name)).cloned().collect();
        if missing.is_empty() {
            return Ok(());
        }
        if !self.settings.auto_evolve {
            let names: Vec<&str> = missing.iter().map(|(n, _)| n.as_str()).collect();
            return Err(Error::msg(format_args!("table {table} has no column for fields {names:?}; add them or set auto.evolve=true"))
                .at_record(record_idx));
        }
        for (name, value) in &missing {
            // A null says nothing about the type: text, like Connect's optional string.
            let ty = self.sql.column_type(value, false);
            match self.db.execute(&format!("ALTER TABLE {} ADD COLUMN {} {ty}", self.sql.quote(table), self.sql.quote(name)), &[]) {
                Ok(_) => sluice::log::info!("added column {name} {ty} to {table}"),
                // Another task of the connector may have added it meanwhile: look again below.
                Err(error) if !error.is_retriable() => sluice::log::warn!("adding column {name} to {table}: {error}"),
                Err(error) => return Err(error.into()),
            }
        }
        let reloaded = self.load_table(table)?.unwrap_or_default();
        if let Some((name, _)) = missing.iter().find(|(name, _)| !reloaded.columns.contains_key(name)) {
            return Err(Error::msg(format_args!("could not add column {name} to {table} (see the log)")).at_record(record_idx));
        }
        self.tables.insert(table.to_owned(), reloaded);
        Ok(())
    }

    fn column_type(&self, table: &str, column: &str) -> &str {
        self.tables.get(table).and_then(|t| t.columns.get(column)).map_or("", String::as_str)
    }

    fn row(&self, table: &str, fields: &[(String, Json)]) -> Vec<Value> {
        fields.iter().map(|(name, value)| bind(value, self.column_type(table, name))).collect()
    }

    /// Writes a run of `Write` ops with the same table and columns.
    fn write_run(&mut self, ops: &[&Op], first_idx: usize) -> Result<()> {
        let Op::Write { table, fields, pk } = ops[0] else { return Ok(()) };
        let columns: Vec<String> = fields.iter().map(|(n, _)| n.clone()).collect();
        let at = |e: Error| if ops.len() == 1 { e.at_record(first_idx) } else { e };
        match self.settings.insert_mode {
            InsertMode::Update => {
                let rest: Vec<String> = columns.iter().filter(|c| !pk.contains(c)).cloned().collect();
                let statement = self.sql.update(table, &rest, pk);
                let rows: Vec<Vec<Value>> = ops
                    .iter()
                    .map(|op| {
                        let Op::Write { fields, .. } = op else { unreachable!("a run holds writes") };
                        let mut ordered: Vec<(String, Json)> = fields.iter().filter(|(n, _)| !pk.contains(n)).cloned().collect();
                        ordered.extend(pk.iter().filter_map(|k| fields.iter().find(|(n, _)| n == k).cloned()));
                        self.row(table, &ordered)
                    })
                    .collect();
                self.db.execute_batch(&statement, &rows).map_err(|e| at(e.into()))?;
            }
            mode => {
                let per_statement = ROWS_PER_STATEMENT_MAX.min(PARAMS_PER_STATEMENT_MAX / columns.len().max(1)).max(1);
                for chunk in ops.chunks(per_statement) {
                    let statement = self.sql.insert(table, &columns, pk, chunk.len(), mode);
                    let params: Vec<Value> = chunk
                        .iter()
                        .flat_map(|op| match op {
                            Op::Write { fields, .. } => self.row(table, fields),
                            _ => Vec::new(),
                        })
                        .collect();
                    self.db.execute(&statement, &params).map_err(|e| at(e.into()))?;
                }
            }
        }
        Ok(())
    }

    fn delete(&mut self, table: &str, key: &[(String, Json)], record_idx: usize) -> Result<()> {
        if !self.tables.contains_key(table) && self.load_table(table)?.is_none() {
            // Nothing to delete from a table that does not exist.
            return Ok(());
        }
        let pk: Vec<String> = key.iter().map(|(n, _)| n.clone()).collect();
        let params = self.row(table, key);
        self.db.execute(&self.sql.delete(table, &pk), &params).map_err(|e| Error::from(e).at_record(record_idx))?;
        Ok(())
    }
}

/// Splits ops into runs that share a statement: consecutive writes to the same table with the same
/// columns (for upserts, also no key twice in a run: PostgreSQL refuses to update a row twice in one
/// statement).
fn runs(ops: &[Op]) -> Vec<Run> {
    /// A write's key values, as one comparable string.
    fn key_of(fields: &[(String, Json)], pk: &[String]) -> String {
        pk.iter().filter_map(|k| fields.iter().find(|(n, _)| n == k)).map(|(_, v)| v.to_string()).collect::<Vec<_>>().join("\u{1}")
    }
    let mut runs: Vec<Run> = Vec::new();
    let mut keys_in_run: BTreeSet<String> = BTreeSet::new();
    for (idx, op) in ops.iter().enumerate() {
        let joins = match (runs.last(), op) {
            (Some(run), Op::Write { table, fields, pk }) => match &ops[run.ops[0]] {
                Op::Write { table: t, fields: f, .. } => {
                    let same = t == table && f.len() == fields.len() && f.iter().zip(fields).all(|(a, b)| a.0 == b.0);
                    same && (pk.is_empty() || !keys_in_run.contains(&key_of(fields, pk)))
                }
                _ => false,
            },
            _ => false,
        };
        if !joins {
            runs.push(Run { start: idx, ops: Vec::new() });
            keys_in_run.clear();
        }
        if let Op::Write { fields, pk, .. } = op {
            keys_in_run.insert(key_of(fields, pk));
        }
        runs.last_mut().expect("pushed above").ops.push(idx);
    }
    runs
}

#[sluice::sink]
impl Sink for JdbcSink {
    fn keys() -> Vec<ConfigKey> {
        vec![
            ConfigKey::new("insert.mode", KeyType::String, "insert, upsert (by primary key) or update.").default_value("insert"),
            ConfigKey::new("pk.mode", KeyType::String, "none, record_key or record_value: where the primary key comes from.")
                .default_value("none"),
            ConfigKey::new("pk.fields", KeyType::List, "The primary key's fields (for a primitive key, its one column name).")
                .default_value(""),
            ConfigKey::new("auto.create", KeyType::Boolean, "Create missing tables from the records' fields.").default_value("false"),
            ConfigKey::new("auto.evolve", KeyType::Boolean, "Add columns for fields a table lacks.").default_value("false"),
            ConfigKey::new("delete.enabled", KeyType::Boolean, "A tombstone (null value) deletes its key's row; needs pk.mode=record_key.")
                .default_value("false"),
            ConfigKey::new("table.name.format", KeyType::String, "The table for a topic: ${topic} is replaced by its name.")
                .default_value("${topic}"),
        ]
    }

    fn init(config: &Config) -> Result<JdbcSink> {
        let settings = Settings::from_config(config)?;
        let db = Connection::open("default").map_err(|e| Error::from(e).context("opening connection.url"))?;
        let sql = Sql { dialect: db.dialect() };
        Ok(JdbcSink { settings, db, sql, tables: HashMap::new() })
    }

    fn put(&mut self, batch: Vec<SinkRecord>) -> Result<()> {
        let mut ops = Vec::with_capacity(batch.len());
        for (idx, record) in batch.iter().enumerate() {
            let op = op_of(&self.settings, record)
                .map_err(|e| e.context(format_args!("record {}-{}@{}", record.topic, record.partition, record.offset)).at_record(idx))?;
            ops.push(op);
        }
        let runs = runs(&ops);
        // Schema changes first: on MySQL/MariaDB a CREATE or ALTER commits the open transaction, so
        // the runtime refuses one after the batch has written (see `sluice::sql`).
        for run in &runs {
            if let Op::Write { table, fields, pk } = &ops[run.ops[0]] {
                let (table, fields, pk) = (table.clone(), fields.clone(), pk.clone());
                self.prepare(&table, &fields, &pk, run.start)?;
            }
        }
        for run in &runs {
            match &ops[run.ops[0]] {
                Op::Skip => {}
                Op::Delete { table, key } => {
                    let (table, key) = (table.clone(), key.clone());
                    self.delete(&table, &key, run.start)?;
                }
                Op::Write { .. } => {
                    let members: Vec<&Op> = run.ops.iter().map(|i| &ops[*i]).collect();
                    self.write_run(&members, run.start)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::rc::Rc;

    use serde_json::json;

    use super::*;

    fn record(key: Option<&str>, value: Option<&str>) -> SinkRecord {
        SinkRecord {
            topic: Rc::from("orders"),
            partition: 0,
            offset: 0,
            key: key.map(|k| k.as_bytes().to_vec()),
            value: value.map(|v| v.as_bytes().to_vec()),
            headers: Vec::new(),
            timestamp_ms: 0,
        }
    }

    fn settings(pairs: &[(&str, &str)]) -> Result<Settings> {
        Settings::from_config(&Config::from_pairs(pairs.iter().copied()))
    }

    #[test]
    fn settings_refuse_combinations_that_cannot_work() {
        assert!(settings(&[("insert.mode", "upsert")]).is_err());
        assert!(settings(&[("pk.mode", "record_value")]).is_err());
        assert!(settings(&[("delete.enabled", "true"), ("pk.mode", "record_value"), ("pk.fields", "id")]).is_err());
        assert!(settings(&[("insert.mode", "merge")]).is_err());
        let ok = settings(&[("insert.mode", "upsert"), ("pk.mode", "record_key"), ("delete.enabled", "true")]).unwrap();
        assert_eq!((ok.insert_mode, ok.pk_mode, ok.delete_enabled), (InsertMode::Upsert, PkMode::RecordKey, true));
    }

    #[test]
    fn keys_and_values_become_rows_with_their_primary_key() {
        let s = settings(&[("insert.mode", "upsert"), ("pk.mode", "record_key"), ("delete.enabled", "true")]).unwrap();
        let op = op_of(&s, &record(Some(r#"{"id": 7}"#), Some(r#"{"id": 7, "name": "a", "total": 1.5}"#))).unwrap();
        assert_eq!(
            op,
            Op::Write {
                table: "orders".into(),
                fields: vec![("id".into(), json!(7)), ("name".into(), json!("a")), ("total".into(), json!(1.5))],
                pk: vec!["id".into()]
            }
        );
        let primitive = op_of(&s, &record(Some("42"), None)).unwrap();
        assert_eq!(primitive, Op::Delete { table: "orders".into(), key: vec![("__connect_key".into(), json!(42))] });
        let envelope =
            op_of(&settings(&[]).unwrap(), &record(None, Some(r#"{"schema": {"type": "struct"}, "payload": {"a": 1}}"#))).unwrap();
        assert_eq!(envelope, Op::Write { table: "orders".into(), fields: vec![("a".into(), json!(1))], pk: vec![] });
        assert!(op_of(&settings(&[]).unwrap(), &record(None, Some("[1]"))).is_err());
        assert!(op_of(&settings(&[]).unwrap(), &record(None, Some("not json"))).is_err());
        assert_eq!(op_of(&settings(&[]).unwrap(), &record(None, None)).unwrap(), Op::Skip);
    }

    #[test]
    fn debezium_change_events_write_their_after_row_and_deletes_delete() {
        let s = settings(&[("insert.mode", "upsert"), ("pk.mode", "record_key"), ("delete.enabled", "true")]).unwrap();
        let event = |op: &str, after: &str| {
            format!(r#"{{"before": null, "after": {after}, "source": {{"table": "t"}}, "op": "{op}", "ts_ms": 1}}"#)
        };
        let update = op_of(&s, &record(Some(r#"{"id": 3}"#), Some(&event("u", r#"{"id": 3, "note": "x"}"#)))).unwrap();
        assert_eq!(
            update,
            Op::Write { table: "orders".into(), fields: vec![("id".into(), json!(3)), ("note".into(), json!("x"))], pk: vec!["id".into()] }
        );
        let delete = op_of(&s, &record(Some(r#"{"id": 3}"#), Some(&event("d", "null")))).unwrap();
        assert_eq!(delete, Op::Delete { table: "orders".into(), key: vec![("id".into(), json!(3))] });
        let no_deletes = settings(&[("insert.mode", "upsert"), ("pk.mode", "record_key")]).unwrap();
        assert_eq!(op_of(&no_deletes, &record(Some(r#"{"id": 3}"#), Some(&event("d", "null")))).unwrap(), Op::Skip);
        // A row that merely has a field named `op` is a row.
        let plain = op_of(&settings(&[]).unwrap(), &record(None, Some(r#"{"op": "c", "after": 1}"#))).unwrap();
        assert!(matches!(plain, Op::Write { ref fields, .. } if fields.len() == 2));
    }

    #[test]
    fn statements_are_spelled_for_each_database() {
        let pg = Sql { dialect: Dialect::Postgres };
        let cols = vec!["id".to_owned(), "name".to_owned()];
        let pk = vec!["id".to_owned()];
        assert_eq!(
            pg.insert("t", &cols, &pk, 2, InsertMode::Upsert),
            r#"INSERT INTO "t" ("id", "name") VALUES ($1, $2), ($3, $4) ON CONFLICT ("id") DO UPDATE SET "name" = excluded."name""#
        );
        let my = Sql { dialect: Dialect::MySql };
        assert_eq!(
            my.insert("t", &cols, &pk, 1, InsertMode::Upsert),
            "INSERT INTO `t` (`id`, `name`) VALUES (?, ?) ON DUPLICATE KEY UPDATE `name` = VALUES(`name`)"
        );
        assert_eq!(pg.update("t", &cols[1..], &pk), r#"UPDATE "t" SET "name" = $1 WHERE "id" = $2"#);
        assert_eq!(my.delete("t", &pk), "DELETE FROM `t` WHERE `id` = ?");
        assert_eq!(
            my.create_table("t", &[("id".into(), json!("x")), ("n".into(), json!(1))], &pk),
            "CREATE TABLE IF NOT EXISTS `t` (`id` VARCHAR(255) NOT NULL, `n` BIGINT, PRIMARY KEY (`id`))"
        );
    }

    #[test]
    fn values_are_bound_by_the_columns_type() {
        assert_eq!(bind(&json!("12.340"), "numeric"), Value::Decimal("12.340".into()));
        assert_eq!(bind(&json!(12.5), "numeric"), Value::Decimal("12.5".into()));
        assert_eq!(
            bind(&json!("2024-05-01 10:00:00.123456"), "timestamp without time zone"),
            Value::Timestamp("2024-05-01T10:00:00.123456".into())
        );
        assert_eq!(bind(&json!(0), "timestamp with time zone"), Value::TimestampTz("1970-01-01T00:00:00.000000Z".into()));
        assert_eq!(bind(&json!(19_000), "date"), Value::Date("2022-01-08".into()));
        assert_eq!(bind(&json!({"a": 1}), "jsonb"), Value::Json(r#"{"a":1}"#.into()));
        assert_eq!(bind(&json!(true), "tinyint"), Value::Int(1));
        assert_eq!(bind(&json!(7), ""), Value::Int(7));
        assert_eq!(bind(&json!(null), "text"), Value::Null);
        assert_eq!(timestamp_from_millis(1_700_000_000_123), "2023-11-14T22:13:20.123000");
    }

    #[test]
    fn runs_group_same_shaped_writes_and_never_repeat_a_key_in_an_upsert() {
        let w = |id: i64, extra: bool| {
            let mut fields = vec![("id".to_owned(), json!(id))];
            if extra {
                fields.push(("x".to_owned(), json!(1)));
            }
            Op::Write { table: "t".into(), fields, pk: vec!["id".into()] }
        };
        let ops = vec![w(1, false), w(2, false), w(1, false), w(3, true), Op::Skip, w(4, true)];
        let shape: Vec<Vec<usize>> = runs(&ops).into_iter().map(|r| r.ops).collect();
        assert_eq!(shape, vec![vec![0, 1], vec![2], vec![3], vec![4], vec![5]]);
    }
}
