//! `postgres-cdc`: log-based change data capture from PostgreSQL, like Debezium's PostgreSQL connector
//! and with its keys, so that a Debezium config carries over with only `connector.class` changed:
//!
//! | key | meaning |
//! |---|---|
//! | `database.hostname`, `.port`, `.user`, `.password`, `.dbname` | the database (read by the runtime; the plugin never sees the password) |
//! | `plugin.name` | `pgoutput` (the built-in logical decoding plugin; the only one) |
//! | `slot.name` | the logical replication slot (default `debezium`), created if missing |
//! | `publication.name` | the publication (default `dbz_publication`), created `FOR ALL TABLES` if missing (`publication.autocreate.mode`) |
//! | `table.include.list` / `table.exclude.list` | regular expressions over `schema.table` |
//! | `topic.prefix` | topics are `{topic.prefix}.{schema}.{table}` (required) |
//! | `snapshot.mode` | `initial` (default: the tables' rows first, then changes), `no_data` / `never` (changes only) |
//! | `heartbeat.interval.ms` | how often an idle connector moves the slot forward so it does not pin WAL (default 10000) |
//! | `tombstones.on.delete` | a null-valued record with the key after each delete (default true) |
//! | `max.batch.size` | most change events per poll (default 2048) |
//! | `poll.interval.ms` | how long to wait when there is nothing new (default 500) |
//!
//! Each change is a record keyed by the row's primary key (`{"id": 1}`) whose value is Debezium's
//! envelope: `before`, `after`, `op` (`r` snapshot read, `c` insert, `u` update, `d` delete),
//! `source` (`connector`, `name`, `db`, `schema`, `table`, `txId`, `lsn`, `ts_ms`, `snapshot`) and
//! `ts_ms`. Values as `jdbc-source` gives them: numeric exactly as text, timestamps with
//! microseconds, bytes as base64.
//!
//! **How it reads the log.** Through SQL only (the `sql` capability has no replication protocol):
//! `pg_logical_slot_peek_binary_changes` decodes the slot's committed transactions with `pgoutput`,
//! in commit order — so transactions that commit out of order arrive in the order they committed,
//! each whole. The slot is moved (`pg_replication_slot_advance`) only past transactions whose events
//! the broker has committed: a poll's events and the connector's position (the slot position it read
//! from and how many decoded rows after it were emitted) commit in one broker transaction, and the
//! next poll — which runs only after that commit — advances the slot. A restarted task advances the
//! slot to its committed position if the slot is behind, so a crash at any instant neither loses nor
//! repeats a change. A transaction larger than a poll is emitted over several polls.
//!
//! Each peek is a new decoding session, which starts at the slot's restart point — where PostgreSQL
//! last logged the running transactions, up to ~15 s of WAL behind — so its cost grows with the write
//! rate. One peek therefore reads ahead up to 32 polls' worth of rows (cut at 16 MiB by their running
//! size, packed many to a value so that a session is not limited to one query's 10,000 rows) that the next polls
//! emit; they live only in the guest, and a restarted task reads them again from its committed
//! position.
//!
//! **Snapshot consistent with the slot.** The slot is created first; then the tables are read in one
//! REPEATABLE READ transaction, whose snapshot is kept in the position. Changes of transactions that
//! snapshot already saw are skipped when the stream reaches them; every later one is emitted. A task
//! that restarts during the snapshot takes a new one and reads the tables again (their `r` events may
//! repeat; the stream after the snapshot is exactly once).
//!
//! **WAL.** A slot keeps every WAL segment from its position on. When nothing in the publication
//! changes, the connector still moves the slot to the current WAL position every
//! `heartbeat.interval.ms`. The WAL the slot retains is the task's gauge `retained_wal_bytes`
//! (every 10 s), and a warning in its log (once a minute) while it is more than 1 GiB.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use regex::Regex;
use serde_json::{Map, Value as Json, json};
use sluice::connector::{ConfigKey, KeyType, Poll, Position, Source, SourceRecord};
use sluice::sql::{Connection, Dialect, Value};
use sluice::{Config, Error, Result};

pub const MAX_BATCH_SIZE_DEFAULT: usize = 2_048;
/// At most this many events per poll (the runtime takes 10,000 records, and a delete adds a tombstone).
pub const MAX_BATCH_SIZE_MAX: usize = 4_000;
pub const HEARTBEAT_MS_DEFAULT: u64 = 10_000;
/// One decoding session reads ahead up to this many times `max.batch.size` rows…
const READ_AHEAD_BATCHES: usize = 32;
/// …and up to this many bytes of them (and the row that crosses it), kept in the guest.
const READ_AHEAD_BYTES: usize = 16 << 20;
/// The rows come packed, ~this many bytes to a value (plus at most one row), so that one session is
/// not capped at one query's rows, and a value stays under the capability's per-value bound
/// (16 MiB) unless a single row is near that large.
const GROUP_BYTES: usize = 256 << 10;
pub const POLL_INTERVAL_MS_DEFAULT: u64 = 500;
/// Retained WAL above which the connector warns.
pub const RETAINED_WAL_WARN_BYTES: i64 = 1 << 30;
const WAL_CHECK_INTERVAL: Duration = Duration::from_secs(10);
const WAL_WARN_INTERVAL: Duration = Duration::from_secs(60);
/// pgoutput messages a decoding session sends depending on where it started (Origin, Relation, Type),
/// as byte values for SQL and for the guest.
const SESSION_MESSAGES: &str = "79, 82, 89";
const SESSION_MESSAGE_KINDS: [u8; 3] = [b'O', b'R', b'Y'];
/// Microseconds between the Unix epoch and PostgreSQL's (2000-01-01).
const PG_EPOCH_OFFSET_MS: i64 = 946_684_800_000;

/// An LSN as PostgreSQL writes it (`16/B374D848`) from its 64-bit value, and back.
pub fn lsn_text(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

pub fn parse_lsn(text: &str) -> Result<u64> {
    let (hi, lo) = text.split_once('/').ok_or_else(|| Error::msg(format_args!("'{text}' is not an LSN")))?;
    let part = |p: &str| u64::from_str_radix(p, 16).map_err(|_| Error::msg(format_args!("'{text}' is not an LSN")));
    Ok((part(hi)? << 32) | part(lo)?)
}

/// The snapshot the initial read used: which transactions it saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub xmin: u64,
    pub xmax: u64,
    pub xip: Vec<u64>,
    /// The WAL position when it was taken: a transaction committing later is not in it.
    pub lsn: u64,
}

impl Snapshot {
    /// `xmin:xmax:xip,…` as `pg_current_snapshot()::text` shows it.
    pub fn parse(text: &str, lsn: u64) -> Result<Snapshot> {
        let bad = || Error::msg(format_args!("an unexpected snapshot '{text}'"));
        let mut parts = text.split(':');
        let (Some(xmin), Some(xmax), Some(xip), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(bad());
        };
        let number = |s: &str| s.parse::<u64>().map_err(|_| bad());
        let xip = xip.split(',').filter(|x| !x.is_empty()).map(number).collect::<Result<Vec<u64>>>()?;
        Ok(Snapshot { xmin: number(xmin)?, xmax: number(xmax)?, xip, lsn })
    }

    /// Whether the snapshot saw transaction `xid` (a 32-bit xid from the log, compared within the
    /// snapshot's epoch).
    pub fn saw(&self, xid: u32) -> bool {
        // The 64-bit xid nearest `xmax` with these low bits: the log's transactions are within 2^31
        // of it (PostgreSQL's wraparound protection).
        let distance = i64::from(xid.wrapping_sub(self.xmax as u32) as i32);
        let full = (self.xmax as i64).wrapping_add(distance) as u64;
        full < self.xmin || (full < self.xmax && !self.xip.contains(&full))
    }

    fn to_json(&self) -> Json {
        json!({ "xmin": self.xmin, "xmax": self.xmax, "xip": self.xip, "lsn": lsn_text(self.lsn) })
    }

    fn from_json(json: &Json) -> Result<Snapshot> {
        let bad = || Error::msg(format_args!("the saved snapshot {json} is not one this connector wrote"));
        let number = |key: &str| json.get(key).and_then(Json::as_u64).ok_or_else(bad);
        let xip =
            json.get("xip").and_then(Json::as_array).ok_or_else(bad)?.iter().map(|x| x.as_u64().ok_or_else(bad)).collect::<Result<_>>()?;
        let lsn = parse_lsn(json.get("lsn").and_then(Json::as_str).ok_or_else(bad)?)?;
        Ok(Snapshot { xmin: number("xmin")?, xmax: number("xmax")?, xip, lsn })
    }
}

/// Where the connector is in the log: `lsn`, the slot position it reads from (the end of the last
/// transaction whose events all committed), and `consumed`, how many decoded rows after it were
/// already emitted, Relation/Type/Origin messages not counted (they depend on where a decoding
/// session starts) (a transaction larger than a poll).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamPosition {
    pub lsn: u64,
    pub consumed: u64,
    /// Until the stream passes it, the snapshot whose transactions are skipped.
    pub snapshot: Option<Snapshot>,
}

impl StreamPosition {
    pub fn to_json(&self) -> Json {
        let mut offset = json!({ "lsn": lsn_text(self.lsn), "consumed": self.consumed });
        if let Some(snapshot) = &self.snapshot {
            offset["snapshot"] = snapshot.to_json();
        }
        offset
    }

    pub fn from_json(offset: &Json) -> Result<Option<StreamPosition>> {
        let Some(lsn) = offset.get("lsn").and_then(Json::as_str) else { return Ok(None) };
        Ok(Some(StreamPosition {
            lsn: parse_lsn(lsn)?,
            consumed: offset.get("consumed").and_then(Json::as_u64).unwrap_or(0),
            snapshot: offset.get("snapshot").map(Snapshot::from_json).transpose()?,
        }))
    }
}

// ---- pgoutput ------------------------------------------------------------------------------------

/// A relation as a `pgoutput` Relation message describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Relation {
    pub schema: String,
    pub name: String,
    /// (name, type oid, part of the replica identity key)
    pub columns: Vec<(String, u32, bool)>,
}

/// One column of a tuple.
#[derive(Debug, Clone, PartialEq)]
pub enum Datum {
    Null,
    /// A TOASTed value the update did not change (not in the log).
    Unchanged,
    Text(String),
}

/// A decoded `pgoutput` message (protocol version 1).
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Begin {
        final_lsn: u64,
        commit_ts_us: i64,
        xid: u32,
    },
    Commit {
        commit_lsn: u64,
        end_lsn: u64,
        commit_ts_us: i64,
    },
    Relation {
        oid: u32,
        relation: Relation,
    },
    Insert {
        oid: u32,
        new: Vec<Datum>,
    },
    Update {
        oid: u32,
        old: Option<Vec<Datum>>,
        new: Vec<Datum>,
    },
    Delete {
        oid: u32,
        old: Vec<Datum>,
    },
    /// Origin, Type, Truncate, Message: nothing to emit.
    Other(u8),
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end =
            self.at.checked_add(n).filter(|end| *end <= self.bytes.len()).ok_or_else(|| Error::msg("a truncated pgoutput message"))?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_be_bytes(self.take(2)?.try_into().unwrap_or_default()))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().unwrap_or_default()))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_be_bytes(self.take(8)?.try_into().unwrap_or_default()))
    }
    fn string(&mut self) -> Result<String> {
        let rest = &self.bytes[self.at..];
        let end = rest.iter().position(|b| *b == 0).ok_or_else(|| Error::msg("an unterminated string in a pgoutput message"))?;
        let text = String::from_utf8_lossy(&rest[..end]).into_owned();
        self.at += end + 1;
        Ok(text)
    }
    fn tuple(&mut self) -> Result<Vec<Datum>> {
        let n = self.u16()?;
        let mut datums = Vec::with_capacity(usize::from(n).min(1_600));
        for _ in 0..n {
            datums.push(match self.u8()? {
                b'n' => Datum::Null,
                b'u' => Datum::Unchanged,
                b't' => {
                    let len = self.u32()? as usize;
                    Datum::Text(String::from_utf8_lossy(self.take(len)?).into_owned())
                }
                other => sluice::bail!("a pgoutput tuple column of kind {:?}", other as char),
            });
        }
        Ok(datums)
    }
}

pub fn decode(bytes: &[u8]) -> Result<Message> {
    let mut r = Reader { bytes, at: 0 };
    let kind = r.u8()?;
    Ok(match kind {
        b'B' => Message::Begin { final_lsn: r.u64()?, commit_ts_us: r.u64()? as i64, xid: r.u32()? },
        b'C' => {
            let _flags = r.u8()?;
            Message::Commit { commit_lsn: r.u64()?, end_lsn: r.u64()?, commit_ts_us: r.u64()? as i64 }
        }
        b'R' => {
            let oid = r.u32()?;
            let schema = r.string()?;
            let name = r.string()?;
            let _replica_identity = r.u8()?;
            let n = r.u16()?;
            let mut columns = Vec::with_capacity(usize::from(n).min(1_600));
            for _ in 0..n {
                let flags = r.u8()?;
                let column = r.string()?;
                let type_oid = r.u32()?;
                let _modifier = r.u32()?;
                columns.push((column, type_oid, flags & 1 == 1));
            }
            let schema = if schema.is_empty() { "pg_catalog".to_owned() } else { schema };
            Message::Relation { oid, relation: Relation { schema, name, columns } }
        }
        b'I' => {
            let oid = r.u32()?;
            if r.u8()? != b'N' {
                sluice::bail!("an Insert message without a new tuple");
            }
            Message::Insert { oid, new: r.tuple()? }
        }
        b'U' => {
            let oid = r.u32()?;
            let mut marker = r.u8()?;
            let mut old = None;
            if marker == b'K' || marker == b'O' {
                old = Some(r.tuple()?);
                marker = r.u8()?;
            }
            if marker != b'N' {
                sluice::bail!("an Update message without a new tuple");
            }
            Message::Update { oid, old, new: r.tuple()? }
        }
        b'D' => {
            let oid = r.u32()?;
            match r.u8()? {
                b'K' | b'O' => Message::Delete { oid, old: r.tuple()? },
                other => sluice::bail!("a Delete message with {:?} instead of an old tuple", other as char),
            }
        }
        other => Message::Other(other),
    })
}

/// A column's text (as pgoutput and the text protocol give it) as the JSON `jdbc-source` writes for the
/// same column: numbers for integers, floats and booleans, ISO timestamps with microseconds, base64
/// for bytea, exact text for the rest.
pub fn text_to_json(type_oid: u32, text: &str) -> Json {
    match type_oid {
        16 => Json::Bool(text == "t"),
        20 | 21 | 23 | 26 => text.parse::<i64>().map_or_else(|_| Json::String(text.to_owned()), |n| json!(n)),
        700 | 701 => {
            text.parse::<f64>().ok().and_then(serde_json::Number::from_f64).map_or_else(|| Json::String(text.to_owned()), Json::Number)
        }
        17 => match text.strip_prefix("\\x").and_then(hex) {
            Some(bytes) => Value::Bytes(bytes).to_json(),
            None => Json::String(text.to_owned()),
        },
        1114 => Json::String(iso_timestamp(text, false)),
        1184 => Json::String(iso_timestamp(text, true)),
        _ => Json::String(text.to_owned()),
    }
}

fn hex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

/// `2026-01-01 10:00:00.5+00` → `2026-01-01T10:00:00.500000Z` (the session runs in UTC); without a
/// zone → `2026-01-01T10:00:00.500000`. Other forms (infinity, BC dates) are kept as they are.
pub fn iso_timestamp(text: &str, zoned: bool) -> String {
    let body = if zoned { text.strip_suffix("+00").unwrap_or(text) } else { text };
    let Some((date, time)) = body.split_once(' ') else { return text.to_owned() };
    if date.len() != 10 || time.len() < 8 || !time.as_bytes()[..8].iter().all(|b| b.is_ascii_digit() || *b == b':') {
        return text.to_owned();
    }
    let (whole, fraction) = time.split_once('.').unwrap_or((time, ""));
    if !fraction.bytes().all(|b| b.is_ascii_digit()) || fraction.len() > 6 {
        return text.to_owned();
    }
    format!("{date}T{whole}.{fraction:0<6}{}", if zoned { "Z" } else { "" })
}

// ---- the connector -------------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct Settings {
    pub slot: String,
    pub publication: String,
    pub autocreate_publication: bool,
    pub include: Vec<Regex>,
    pub exclude: Vec<Regex>,
    pub topic_prefix: String,
    pub snapshot: bool,
    pub heartbeat: Duration,
    pub tombstones: bool,
    pub batch: usize,
    pub poll_interval_ms: u32,
}

/// Slot and publication names are identifiers PostgreSQL folds and limits: keep them plain.
fn identifier(config: &Config, key: &str, default: &str) -> Result<String> {
    let name = config.get(key).unwrap_or(default).to_owned();
    if name.is_empty() || name.len() > 63 || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
        sluice::bail!("{key} '{name}': use 1 to 63 lower-case letters, digits and '_'");
    }
    Ok(name)
}

impl Settings {
    pub fn from_config(config: &Config) -> Result<Settings> {
        match config.get("plugin.name").unwrap_or("pgoutput") {
            "pgoutput" => {}
            other => sluice::bail!("plugin.name '{other}': only pgoutput (PostgreSQL's built-in decoding plugin) is supported"),
        }
        let snapshot = match config.get("snapshot.mode").unwrap_or("initial") {
            "initial" => true,
            "no_data" | "never" => false,
            other => sluice::bail!("snapshot.mode '{other}': use initial, no_data or never"),
        };
        let autocreate_publication = match config.get("publication.autocreate.mode").unwrap_or("all_tables") {
            "all_tables" => true,
            "disabled" => false,
            other => sluice::bail!("publication.autocreate.mode '{other}': use all_tables or disabled"),
        };
        let topic_prefix = config.require("topic.prefix")?.to_owned();
        let batch = match config.parse::<usize>("max.batch.size")? {
            None => MAX_BATCH_SIZE_DEFAULT,
            Some(n) if (1..=MAX_BATCH_SIZE_MAX).contains(&n) => n,
            Some(n) => sluice::bail!("max.batch.size is {n}; use 1..={MAX_BATCH_SIZE_MAX}"),
        };
        let heartbeat = config.parse::<u64>("heartbeat.interval.ms")?.unwrap_or(HEARTBEAT_MS_DEFAULT);
        let poll_interval_ms = config.parse::<u32>("poll.interval.ms")?.unwrap_or(POLL_INTERVAL_MS_DEFAULT as u32).clamp(1, 60_000);
        if config.get("task.id").is_some_and(|task| task != "0") {
            sluice::bail!("postgres-cdc reads one replication slot from one task; set tasks.max=1");
        }
        Ok(Settings {
            slot: identifier(config, "slot.name", "debezium")?,
            publication: identifier(config, "publication.name", "dbz_publication")?,
            autocreate_publication,
            include: config.regexes("table.include.list")?,
            exclude: config.regexes("table.exclude.list")?,
            topic_prefix,
            snapshot,
            heartbeat: Duration::from_millis(heartbeat),
            tombstones: config.parse::<bool>("tombstones.on.delete")?.unwrap_or(true),
            batch,
            poll_interval_ms,
        })
    }

    pub fn captures(&self, schema: &str, table: &str) -> bool {
        let qualified = format!("{schema}.{table}");
        (self.include.is_empty() || self.include.iter().any(|re| re.is_match(&qualified)))
            && !self.exclude.iter().any(|re| re.is_match(&qualified))
    }

    fn topic(&self, schema: &str, table: &str) -> String {
        format!("{}.{schema}.{table}", self.topic_prefix)
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// The initial read, in progress: one REPEATABLE READ transaction held across polls.
struct SnapshotRead {
    snapshot: Snapshot,
    /// The slot position the stream starts from once the read is done.
    start_lsn: u64,
    /// Tables left to read, (schema, table), and where the current one is (its last `ctid`).
    tables: Vec<(String, String)>,
    after_ctid: Option<String>,
    /// Primary key columns by table.
    keys: HashMap<(String, String), Vec<String>>,
}

pub struct PostgresCdc {
    conn: Connection,
    settings: Settings,
    db: String,
    reading: Option<SnapshotRead>,
    /// The position after the last poll's events (committed by the runtime before the next poll).
    position: StreamPosition,
    /// Relations by oid, as the log described them.
    relations: HashMap<u32, Relation>,
    last_heartbeat: Instant,
    last_wal_check: Option<Instant>,
    last_wal_warning: Option<Instant>,
    /// Decoded rows (lsn, xid, data) read ahead of the polls: each decoding session starts at the
    /// slot's restart point, which can trail it by many megabytes of WAL, so one session feeds
    /// several polls. Only the guest holds them; a restarted task reads them again from the slot.
    ahead: VecDeque<(u64, u32, Vec<u8>)>,
    /// The commit time of the transaction being emitted (its Begin may have come in an earlier poll).
    commit_ts_ms: i64,
}

/// Appends the rows of one packed value (lsn u64, xid u64, length u32, data; big-endian) to `ahead`.
fn unpack_rows(mut packed: &[u8], ahead: &mut VecDeque<(u64, u32, Vec<u8>)>) -> Result<()> {
    while !packed.is_empty() {
        let Some((header, rest)) = packed.split_at_checked(20) else { sluice::bail!("a packed row from the slot is cut short") };
        let lsn = u64::from_be_bytes(header[..8].try_into().expect("8 bytes"));
        let xid = u64::from_be_bytes(header[8..16].try_into().expect("8 bytes")) as u32;
        let len = u32::from_be_bytes(header[16..20].try_into().expect("4 bytes")) as usize;
        let Some((data, rest)) = rest.split_at_checked(len) else { sluice::bail!("a packed row from the slot is cut short") };
        ahead.push_back((lsn, xid, data.to_vec()));
        packed = rest;
    }
    Ok(())
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::Text(t) => Some(t.clone()),
        _ => None,
    }
}

impl PostgresCdc {
    fn partition(&self) -> Json {
        json!({ "server": self.settings.topic_prefix })
    }

    fn query_one(&self, statement: &str, params: &[Value]) -> Result<Option<Value>> {
        Ok(self.conn.query(statement, params)?.rows.into_iter().next().and_then(|row| row.into_iter().next()))
    }

    /// The publication and the slot, created when missing: the slot's confirmed position, and whether
    /// the slot was created now.
    fn prepare(&self) -> Result<(u64, bool)> {
        let publication = Value::Text(self.settings.publication.clone());
        let exists = self.query_one("SELECT 1 FROM pg_publication WHERE pubname = $1::name", std::slice::from_ref(&publication))?;
        if exists.is_none() {
            if !self.settings.autocreate_publication {
                sluice::bail!("publication {} does not exist (publication.autocreate.mode=disabled): create it", self.settings.publication);
            }
            sluice::log::info!("creating publication {} FOR ALL TABLES", self.settings.publication);
            self.conn
                .execute(&format!("CREATE PUBLICATION {} FOR ALL TABLES", Dialect::Postgres.quote(&self.settings.publication)), &[])?;
        }
        let slot = Value::Text(self.settings.slot.clone());
        let existing = self.conn.query(
            "SELECT plugin::text, database::text, confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1::name",
            std::slice::from_ref(&slot),
        )?;
        if let Some(row) = existing.rows.into_iter().next() {
            if text(&row[0]).as_deref() != Some("pgoutput") || text(&row[1]).as_deref() != Some(self.db.as_str()) {
                sluice::bail!(
                    "slot {} exists for another plugin or database ({:?}, {:?}): choose another slot.name",
                    self.settings.slot,
                    row[0],
                    row[1]
                );
            }
            return Ok((text(&row[2]).map(|lsn| parse_lsn(&lsn)).transpose()?.unwrap_or(0), false));
        }
        sluice::log::info!("creating replication slot {} (pgoutput)", self.settings.slot);
        let created = self.query_one("SELECT lsn::text FROM pg_create_logical_replication_slot($1::name, 'pgoutput')", &[slot])?;
        Ok((created.as_ref().and_then(text).map(|lsn| parse_lsn(&lsn)).transpose()?.unwrap_or(0), true))
    }

    /// Tables to capture: in the publication and selected by the include/exclude lists.
    fn tables(&self) -> Result<Vec<(String, String)>> {
        let rows = self.conn.query(
            "SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1::name ORDER BY 1, 2",
            &[Value::Text(self.settings.publication.clone())],
        )?;
        Ok(rows
            .rows
            .into_iter()
            .filter_map(|row| Some((text(&row[0])?, text(&row[1])?)))
            .filter(|(schema, table)| self.settings.captures(schema, table))
            .collect())
    }

    /// Begins the initial read: a REPEATABLE READ snapshot taken after the slot exists.
    fn begin_snapshot(&mut self, start_lsn: u64) -> Result<()> {
        let tables = self.tables()?;
        let mut keys = HashMap::new();
        for (schema, table) in &tables {
            keys.insert((schema.clone(), table.clone()), self.conn.primary_key(Some(schema), table)?);
        }
        self.conn.begin()?;
        self.conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY", &[])?;
        // The insert position: every commit the snapshot saw was inserted before it.
        let row = self.conn.query("SELECT pg_current_snapshot()::text, pg_current_wal_insert_lsn()::text", &[])?.rows.into_iter().next();
        let (Some(snap), Some(lsn)) = (row.as_ref().and_then(|r| text(&r[0])), row.as_ref().and_then(|r| text(&r[1]))) else {
            sluice::bail!("pg_current_snapshot() returned nothing");
        };
        let snapshot = Snapshot::parse(&snap, parse_lsn(&lsn)?)?;
        sluice::log::info!("snapshot of {} tables at {lsn} ({snap})", tables.len());
        let mut tables = tables;
        tables.reverse();
        self.reading = Some(SnapshotRead { snapshot, start_lsn, tables, after_ctid: None, keys });
        Ok(())
    }

    /// The next page of the initial read; at its end, the position that starts the stream.
    fn read_snapshot(&mut self) -> Result<Poll> {
        let batch = self.settings.batch;
        let Some(reading) = self.reading.as_mut() else { return Ok(Poll::idle(1)) };
        let Some((schema, table)) = reading.tables.last().cloned() else {
            // Done: the stream starts at the slot, skipping what the snapshot saw.
            let reading = self.reading.take().expect("reading");
            self.conn.commit()?;
            self.position = StreamPosition { lsn: reading.start_lsn, consumed: 0, snapshot: Some(reading.snapshot) };
            sluice::log::info!("snapshot done; streaming from {}", lsn_text(reading.start_lsn));
            return Ok(Poll::records(Vec::new(), vec![Position::new(self.partition(), self.position.to_json())]));
        };
        let mut params = Vec::new();
        let mut statement = format!(
            "SELECT ctid::text AS sluice_ctid, t.* FROM {}.{} t",
            Dialect::Postgres.quote(&schema),
            Dialect::Postgres.quote(&table)
        );
        if let Some(ctid) = &reading.after_ctid {
            statement.push_str(" WHERE ctid > $1::tid");
            params.push(Value::Text(ctid.clone()));
        }
        statement.push_str(&format!(" ORDER BY ctid LIMIT {batch}"));
        let rows = self.conn.query(&statement, &params)?;
        let reading = self.reading.as_mut().expect("reading");
        if rows.rows.len() < batch {
            reading.tables.pop();
            reading.after_ctid = None;
        } else {
            reading.after_ctid = rows.rows.last().and_then(|row| text(&row[0]));
        }
        let key = reading.keys.get(&(schema.clone(), table.clone())).cloned().unwrap_or_default();
        let topic = self.settings.topic(&schema, &table);
        let source = self.source(&schema, &table, 0, 0, now_ms(), "true");
        let mut records = Vec::with_capacity(rows.rows.len());
        for row in &rows.rows {
            let after: Map<String, Json> = rows.columns.iter().zip(row).skip(1).map(|(c, v)| (c.name.clone(), v.to_json())).collect();
            let key_json = key_of(&key, &after);
            let value = json!({ "before": null, "after": after, "source": source, "op": "r", "ts_ms": now_ms() });
            records.push(record(&topic, key_json, Some(value)));
        }
        Ok(Poll::records(records, Vec::new()))
    }

    fn source(&self, schema: &str, table: &str, xid: u32, lsn: u64, ts_ms: i64, snapshot: &str) -> Json {
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "connector": "postgresql",
            "name": self.settings.topic_prefix,
            "ts_ms": ts_ms,
            "snapshot": snapshot,
            "db": self.db,
            "schema": schema,
            "table": table,
            "txId": xid,
            "lsn": lsn,
        })
    }

    /// Moves the slot to the committed position (a no-op when it is there or beyond).
    fn advance_slot(&self, lsn: u64) -> Result<()> {
        if lsn > 0 {
            self.conn.query(
                "SELECT (pg_replication_slot_advance($1::name, $2::pg_lsn)).end_lsn::text FROM pg_replication_slots \
                 WHERE slot_name = $1::name AND confirmed_flush_lsn < $2::pg_lsn",
                &[Value::Text(self.settings.slot.clone()), Value::Text(lsn_text(lsn))],
            )?;
        }
        Ok(())
    }

    /// Reads decoded rows ahead from the slot, after the committed position; `false` when there are
    /// none (the slot may then move on, as a heartbeat).
    fn read_ahead(&mut self) -> Result<bool> {
        self.advance_slot(self.position.lsn)?;
        self.check_wal();
        // The flushed WAL position now (the peek decodes no further than what is flushed): commits up
        // to it are decoded by this peek, so with nothing to emit the slot can move there.
        let current =
            self.query_one("SELECT pg_current_wal_flush_lsn()::text", &[])?.as_ref().and_then(text).map(|t| parse_lsn(&t)).transpose()?;
        let consumed = self.position.consumed;
        let rows_max = self.settings.batch * READ_AHEAD_BATCHES;
        let slot = Value::Text(self.settings.slot.clone());
        let publication = Value::Text(self.settings.publication.clone());
        let upto = Value::Text(lsn_text(current.unwrap_or(0)));
        let nchanges = Value::Int((consumed + rows_max as u64) as i64);
        let peek = "pg_logical_slot_peek_binary_changes($1::name, $2::pg_lsn, $3::int, 'proto_version', '1', 'publication_names', $4) \
                    WITH ORDINALITY AS c(lsn, xid, data, n)";
        // `consumed` counts the rows after the slot position that every decoding session produces
        // alike: not the Relation, Type and Origin messages, which pgoutput sends the first time a
        // session meets a relation (so where they fall depends on where the session started). Those
        // come back from before the resume point too: the guest needs the relations.
        // Then the rows are cut at READ_AHEAD_BYTES by their running size (`cum`) and packed
        // (lsn u64, xid u64, length u32, data; big-endian) into values of about GROUP_BYTES.
        let rows = self.conn.query(
            &format!(
                "SELECT string_agg(int8send((lsn - '0/0'::pg_lsn)::bigint) || int8send(xid::text::bigint) \
                 || int4send(octet_length(data)) || data, ''::bytea ORDER BY n) FROM (\
                 SELECT lsn, xid, data, n, (cum - 1) / $7 AS g FROM (\
                 SELECT lsn, xid, data, n, sum(octet_length(data) + 20) OVER (ORDER BY n) AS cum FROM (\
                 SELECT lsn, xid, data, n FROM (SELECT lsn, xid, data, n, \
                 count(*) FILTER (WHERE get_byte(data, 0) NOT IN ({SESSION_MESSAGES})) OVER (ORDER BY n) AS m FROM {peek}) s \
                 WHERE m > $5 OR get_byte(data, 0) IN ({SESSION_MESSAGES}) ORDER BY n LIMIT $6) u) v \
                 WHERE cum - (octet_length(data) + 20) < $8) t GROUP BY g ORDER BY g"
            ),
            &[
                slot,
                upto,
                nchanges,
                publication,
                Value::Int(consumed as i64),
                Value::Int(rows_max as i64),
                Value::Int(GROUP_BYTES as i64),
                Value::Int(READ_AHEAD_BYTES as i64),
            ],
        )?;
        if rows.rows.is_empty() {
            if consumed == 0
                && let Some(current) = current
                && current > self.position.lsn
                && self.last_heartbeat.elapsed() >= self.settings.heartbeat
            {
                // Nothing of ours up to `current`: the slot may move there (the heartbeat).
                self.advance_slot(current)?;
                self.position.lsn = current;
                self.last_heartbeat = Instant::now();
            }
            return Ok(false);
        }
        for row in rows.rows {
            let Some(Value::Bytes(packed)) = row.into_iter().next() else { sluice::bail!("the slot returned a group without data") };
            unpack_rows(&packed, &mut self.ahead)?;
        }
        Ok(true)
    }

    /// The next changes from the slot: at most `max.batch.size` decoded rows.
    fn stream(&mut self) -> Result<Poll> {
        if self.ahead.is_empty() && !self.read_ahead()? {
            return Ok(Poll::idle(self.settings.poll_interval_ms));
        }
        let take = self.settings.batch.min(self.ahead.len());
        let rows: Vec<(u64, u32, Vec<u8>)> = self.ahead.drain(..take).collect();
        match self.emit(&rows) {
            Ok(records) => Ok(Poll::records(records, vec![Position::new(self.partition(), self.position.to_json())])),
            Err(error) => {
                // Not emitted: the rows go back, so that nothing is skipped even if this instance
                // polled again (a failed poll restarts the task today, which reads them again anyway).
                for row in rows.into_iter().rev() {
                    self.ahead.push_front(row);
                }
                Err(error)
            }
        }
    }

    /// The change events of decoded rows; the position moves past them only if all of them decode.
    fn emit(&mut self, rows: &[(u64, u32, Vec<u8>)]) -> Result<Vec<SourceRecord>> {
        let mut records = Vec::new();
        let mut position = self.position.clone();
        let mut commit_ts_ms = self.commit_ts_ms;
        for (lsn, xid, data) in rows {
            let (lsn, xid) = (*lsn, *xid);
            if !SESSION_MESSAGE_KINDS.contains(&data.first().copied().unwrap_or(0)) {
                position.consumed += 1;
            }
            let skip = position.snapshot.as_ref().is_some_and(|s| s.saw(xid));
            match decode(data)? {
                Message::Begin { commit_ts_us, .. } => commit_ts_ms = commit_ts_us / 1000 + PG_EPOCH_OFFSET_MS,
                Message::Commit { end_lsn, .. } => {
                    position.lsn = end_lsn;
                    position.consumed = 0;
                    if position.snapshot.as_ref().is_some_and(|s| end_lsn > s.lsn) {
                        position.snapshot = None;
                    }
                }
                Message::Relation { oid, relation } => {
                    self.relations.insert(oid, relation);
                }
                Message::Insert { oid, new } if !skip => self.change(&mut records, oid, None, Some(new), "c", xid, lsn, commit_ts_ms)?,
                Message::Update { oid, old, new } if !skip => {
                    self.change(&mut records, oid, old, Some(new), "u", xid, lsn, commit_ts_ms)?
                }
                Message::Delete { oid, old } if !skip => self.change(&mut records, oid, Some(old), None, "d", xid, lsn, commit_ts_ms)?,
                _ => {}
            }
        }
        self.position = position;
        self.commit_ts_ms = commit_ts_ms;
        Ok(records)
    }

    #[allow(clippy::too_many_arguments)]
    fn change(
        &self,
        records: &mut Vec<SourceRecord>,
        oid: u32,
        old: Option<Vec<Datum>>,
        new: Option<Vec<Datum>>,
        op: &str,
        xid: u32,
        lsn: u64,
        ts_ms: i64,
    ) -> Result<()> {
        let relation =
            self.relations.get(&oid).ok_or_else(|| Error::msg(format_args!("a change of relation {oid} before its description")))?;
        if !self.settings.captures(&relation.schema, &relation.name) {
            return Ok(());
        }
        let object = |datums: &[Datum]| -> Map<String, Json> {
            relation
                .columns
                .iter()
                .zip(datums)
                .filter_map(|((name, oid, _), datum)| match datum {
                    Datum::Null => Some((name.clone(), Json::Null)),
                    Datum::Unchanged => Some((name.clone(), Json::String("__debezium_unavailable_value".into()))),
                    Datum::Text(t) => Some((name.clone(), text_to_json(*oid, t))),
                })
                .collect()
        };
        let before = old.as_deref().map(object);
        let after = new.as_deref().map(object);
        let key_columns: Vec<String> = relation.columns.iter().filter(|c| c.2).map(|c| c.0.clone()).collect();
        let key = after.as_ref().or(before.as_ref()).map(|row| key_of(&key_columns, row)).unwrap_or(None);
        let topic = self.settings.topic(&relation.schema, &relation.name);
        let value = json!({
            "before": before,
            "after": after,
            "source": self.source(&relation.schema, &relation.name, xid, lsn, ts_ms, "false"),
            "op": op,
            "ts_ms": now_ms(),
        });
        records.push(record(&topic, key.clone(), Some(value)));
        if op == "d" && self.settings.tombstones && key.is_some() {
            records.push(record(&topic, key, None));
        }
        Ok(())
    }

    /// Publishes the WAL the slot retains (the gauge `retained_wal_bytes`, every
    /// [`WAL_CHECK_INTERVAL`]) and warns, once a minute at most, while it is more than it should be.
    fn check_wal(&mut self) {
        if self.last_wal_check.is_some_and(|at| at.elapsed() < WAL_CHECK_INTERVAL) {
            return;
        }
        self.last_wal_check = Some(Instant::now());
        let retained = self.query_one(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint FROM pg_replication_slots WHERE slot_name = $1::name",
            &[Value::Text(self.settings.slot.clone())],
        );
        let Ok(Some(Value::Int(bytes))) = retained else { return };
        sluice::metrics::gauge("retained_wal_bytes", bytes as f64);
        if bytes > RETAINED_WAL_WARN_BYTES && self.last_wal_warning.is_none_or(|at| at.elapsed() >= WAL_WARN_INTERVAL) {
            self.last_wal_warning = Some(Instant::now());
            sluice::log::warn!(
                "replication slot {} retains {} MiB of WAL: the connector is behind or stopped (a stopped connector's slot keeps growing; drop the slot if the connector is gone)",
                self.settings.slot,
                bytes >> 20
            );
        }
    }
}

fn key_of(columns: &[String], row: &Map<String, Json>) -> Option<Json> {
    if columns.is_empty() {
        return None;
    }
    let key: Map<String, Json> = columns.iter().map(|c| (c.clone(), row.get(c).cloned().unwrap_or(Json::Null))).collect();
    Some(Json::Object(key))
}

fn record(topic: &str, key: Option<Json>, value: Option<Json>) -> SourceRecord {
    SourceRecord {
        topic: topic.to_owned(),
        partition: None,
        key: key.map(|k| serde_json::to_vec(&k).unwrap_or_default()),
        value: value.map(|v| serde_json::to_vec(&v).unwrap_or_default()),
        headers: Vec::new(),
        timestamp_ms: -1,
    }
}

#[sluice::source]
impl Source for PostgresCdc {
    fn keys() -> Vec<ConfigKey> {
        vec![
            ConfigKey::new("plugin.name", KeyType::String, "The logical decoding plugin: pgoutput.").default_value("pgoutput"),
            ConfigKey::new("slot.name", KeyType::String, "The logical replication slot (created if missing).").default_value("debezium"),
            ConfigKey::new("publication.name", KeyType::String, "The publication (created FOR ALL TABLES if missing).")
                .default_value("dbz_publication"),
            ConfigKey::new("publication.autocreate.mode", KeyType::String, "all_tables or disabled.").default_value("all_tables"),
            ConfigKey::new(
                "table.include.list",
                KeyType::List,
                "Capture only the tables matching these regular expressions (schema.table).",
            ),
            ConfigKey::new("table.exclude.list", KeyType::List, "Skip the tables matching these regular expressions (schema.table)."),
            ConfigKey::new("snapshot.mode", KeyType::String, "initial (rows first, then changes), no_data or never (changes only).")
                .default_value("initial"),
            ConfigKey::new("heartbeat.interval.ms", KeyType::Long, "How often an idle connector moves its slot forward.")
                .default_value("10000"),
            ConfigKey::new("tombstones.on.delete", KeyType::Boolean, "A null-valued record with the key after each delete.")
                .default_value("true"),
            ConfigKey::new("max.batch.size", KeyType::Int, "The most change events per poll.").default_value("2048"),
            ConfigKey::new("poll.interval.ms", KeyType::Int, "How long to wait when there is nothing new.").default_value("500"),
        ]
    }

    fn init(config: &Config, positions: Vec<Position>) -> Result<PostgresCdc> {
        let settings = Settings::from_config(config)?;
        let conn = Connection::open("default")?;
        if conn.dialect() != Dialect::Postgres {
            sluice::bail!("postgres-cdc reads PostgreSQL; this connection is another database");
        }
        // Timestamps with a zone come out of the log in the session's zone.
        conn.execute("SET TIME ZONE 'UTC'", &[])?;
        let db = conn
            .query("SELECT current_database()::text", &[])?
            .rows
            .into_iter()
            .next()
            .and_then(|r| r.first().and_then(text))
            .unwrap_or_default();
        let mut cdc = PostgresCdc {
            conn,
            settings,
            db,
            reading: None,
            position: StreamPosition { lsn: 0, consumed: 0, snapshot: None },
            relations: HashMap::new(),
            last_heartbeat: Instant::now(),
            last_wal_check: None,
            last_wal_warning: None,
            ahead: VecDeque::new(),
            commit_ts_ms: now_ms(),
        };
        let partition = cdc.partition();
        let saved =
            positions.iter().find(|p| p.partition == partition).map(|p| StreamPosition::from_json(&p.offset)).transpose()?.flatten();
        let (slot_lsn, created) = cdc.prepare()?;
        if created && saved.is_some() {
            sluice::bail!(
                "replication slot {} was missing and has been created again: changes made while it was gone are lost to it. \
                 To read the tables again, stop the connector, reset its offsets and resume it",
                cdc.settings.slot
            );
        }
        match saved {
            Some(position) => cdc.position = position,
            None if cdc.settings.snapshot => cdc.begin_snapshot(slot_lsn)?,
            None => cdc.position = StreamPosition { lsn: slot_lsn, consumed: 0, snapshot: None },
        }
        Ok(cdc)
    }

    fn poll(&mut self) -> Result<Poll> {
        if self.reading.is_some() {
            return self.read_snapshot();
        }
        self.stream()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_rows_unpack_in_order_and_a_cut_one_is_an_error() {
        let mut packed = Vec::new();
        for (lsn, xid, data) in [(0x16_B374_D848u64, 7u64, &b"BEGIN"[..]), (0x16_B374_D900, 7, b"")] {
            packed.extend(lsn.to_be_bytes());
            packed.extend(xid.to_be_bytes());
            packed.extend((data.len() as u32).to_be_bytes());
            packed.extend(data);
        }
        let mut ahead = VecDeque::new();
        unpack_rows(&packed, &mut ahead).unwrap();
        assert_eq!(ahead, [(0x16_B374_D848, 7, b"BEGIN".to_vec()), (0x16_B374_D900, 7, Vec::new())]);
        assert!(unpack_rows(&packed[..packed.len() - 1], &mut VecDeque::new()).is_err());
        assert!(unpack_rows(&packed[..22], &mut VecDeque::new()).is_err());
        assert!(unpack_rows(&packed[..10], &mut VecDeque::new()).is_err());
    }

    #[test]
    fn lsns_round_trip() {
        assert_eq!(parse_lsn("16/B374D848").unwrap(), 0x16_B374_D848);
        assert_eq!(lsn_text(0x16_B374_D848), "16/B374D848");
        assert!(parse_lsn("nope").is_err());
    }

    #[test]
    fn the_snapshot_says_which_transactions_it_saw() {
        let snapshot = Snapshot::parse("100:105:101,103", 0).unwrap();
        assert!(snapshot.saw(99) && snapshot.saw(100) && snapshot.saw(102) && snapshot.saw(104));
        assert!(!snapshot.saw(101) && !snapshot.saw(103) && !snapshot.saw(105) && !snapshot.saw(200));
        // 32-bit xids from the log, in the snapshot's epoch.
        let high = Snapshot::parse(&format!("{}:{}:", (1u64 << 32) + 10, (1u64 << 32) + 20), 0).unwrap();
        assert!(high.saw(5) && high.saw(15) && !high.saw(25) && !high.saw(20));
        assert!(high.saw(u32::MAX), "the previous epoch's last xid");
    }

    #[test]
    fn positions_round_trip() {
        let position = StreamPosition { lsn: 0x1_0000_0010, consumed: 7, snapshot: Some(Snapshot::parse("5:9:6", 0x1_0000_0000).unwrap()) };
        assert_eq!(StreamPosition::from_json(&position.to_json()).unwrap(), Some(position));
        assert_eq!(StreamPosition::from_json(&json!({})).unwrap(), None);
    }

    fn tuple(columns: &[Option<&str>]) -> Vec<u8> {
        let mut out = (columns.len() as u16).to_be_bytes().to_vec();
        for column in columns {
            match column {
                None => out.push(b'n'),
                Some(text) => {
                    out.push(b't');
                    out.extend((text.len() as u32).to_be_bytes());
                    out.extend(text.as_bytes());
                }
            }
        }
        out
    }

    #[test]
    fn pgoutput_messages_decode() {
        let mut relation = vec![b'R'];
        relation.extend(16_385u32.to_be_bytes());
        relation.extend(b"public\0orders\0");
        relation.push(b'd');
        relation.extend(2u16.to_be_bytes());
        relation.push(1);
        relation.extend(b"id\0");
        relation.extend(20u32.to_be_bytes());
        relation.extend((-1i32).to_be_bytes());
        relation.push(0);
        relation.extend(b"note\0");
        relation.extend(25u32.to_be_bytes());
        relation.extend((-1i32).to_be_bytes());
        let Message::Relation { oid, relation } = decode(&relation).unwrap() else { panic!() };
        assert_eq!(oid, 16_385);
        assert_eq!(relation.columns, vec![("id".into(), 20, true), ("note".into(), 25, false)]);

        let mut update = vec![b'U'];
        update.extend(16_385u32.to_be_bytes());
        update.push(b'K');
        update.extend(tuple(&[Some("1"), None]));
        update.push(b'N');
        update.extend(tuple(&[Some("2"), Some("hi")]));
        assert_eq!(
            decode(&update).unwrap(),
            Message::Update {
                oid: 16_385,
                old: Some(vec![Datum::Text("1".into()), Datum::Null]),
                new: vec![Datum::Text("2".into()), Datum::Text("hi".into())]
            }
        );
        assert!(decode(&update[..update.len() - 1]).is_err(), "truncated");
        assert!(decode(&[]).is_err());
    }

    #[test]
    fn text_values_match_the_snapshot_forms() {
        assert_eq!(text_to_json(20, "42"), json!(42));
        assert_eq!(text_to_json(16, "t"), json!(true));
        assert_eq!(text_to_json(1700, "12.3400"), json!("12.3400"));
        assert_eq!(text_to_json(1184, "2026-01-01 10:00:00.5+00"), json!("2026-01-01T10:00:00.500000Z"));
        assert_eq!(text_to_json(1184, "2026-01-01 10:00:00+00"), json!("2026-01-01T10:00:00.000000Z"));
        assert_eq!(text_to_json(1114, "2026-01-01 10:00:00.000003"), json!("2026-01-01T10:00:00.000003"));
        assert_eq!(text_to_json(17, "\\x00ff"), json!("AP8="));
        assert_eq!(text_to_json(1184, "infinity"), json!("infinity"));
    }
}
