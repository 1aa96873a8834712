//! Connectors: a [`Source`] reads an outside system and returns records with the positions after
//! them; a [`Sink`] writes committed records to an outside system. A connector is a type that
//! implements one of the traits, marked with the matching attribute:
//!
//! ```
//! use sluice::connector::{ConfigKey, KeyType, Poll, Position, Source, SourceRecord};
//! use sluice::{Config, Result};
//!
//! struct Counter { topic: String, next: u64 }
//!
//! #[sluice::source]
//! impl Source for Counter {
//!     fn keys() -> Vec<ConfigKey> {
//!         vec![ConfigKey::new("topic", KeyType::String, "Where the numbers go.").required()]
//!     }
//!
//!     fn init(config: &Config, positions: Vec<Position>) -> Result<Counter> {
//!         let next = positions.first().and_then(|p| p.offset["next"].as_u64()).unwrap_or(0);
//!         Ok(Counter { topic: config.require("topic")?.to_owned(), next })
//!     }
//!
//!     fn poll(&mut self) -> Result<Poll> {
//!         let record = SourceRecord::new(&self.topic, self.next.to_string());
//!         self.next += 1;
//!         let position = Position::new(serde_json::json!({"counter": 0}), serde_json::json!({"next": self.next}));
//!         Ok(Poll::records(vec![record], vec![position]))
//!     }
//! }
//! # fn main() {}
//! ```
//!
//! Everything here is plain Rust that runs natively, so `cargo test` calls `init`, `poll` and `put`
//! directly. Built for wasm32-wasip2, the attribute adds the export glue of the `source` or `sink`
//! world (`sdk/wit/plugin.wit`), generated in the connector's own crate.
//!
//! Errors: return [`crate::Error::retriable`] when the outside system is unavailable for now (the
//! runtime backs off and tries again); any other error stops the task FAILED with its message. A
//! sink names the record that failed with [`crate::Error::at_record`].

use std::rc::Rc;

use crate::{Config, Error, Header, Result};

/// How a configuration key's value is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyType {
    String,
    Int,
    Long,
    Boolean,
    List,
    Password,
    /// An absolute path on the broker's host. The broker grants the connector the directory that
    /// holds it — read-only to a source, read-write to a sink — and nothing else.
    File,
}

/// One configuration key the connector reads. The broker refuses any key that neither the connector
/// nor the runtime declares, so list every key the connector reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigKey {
    pub name: String,
    pub kind: KeyType,
    pub required: bool,
    pub default_value: Option<String>,
    pub documentation: String,
}

impl ConfigKey {
    pub fn new(name: &str, kind: KeyType, documentation: &str) -> ConfigKey {
        ConfigKey { name: name.to_owned(), kind, required: false, default_value: None, documentation: documentation.to_owned() }
    }

    pub fn required(self) -> ConfigKey {
        ConfigKey { required: true, ..self }
    }

    pub fn default_value(self, value: &str) -> ConfigKey {
        ConfigKey { default_value: Some(value.to_owned()), ..self }
    }
}

/// A source position, Kafka Connect's way: which part of the source (`partition`, a JSON object such
/// as `{"file": "/data/in.txt"}`) and how far into it (`offset`, such as `{"position": 1024}`).
#[derive(Clone, Debug, PartialEq)]
pub struct Position {
    pub partition: serde_json::Value,
    pub offset: serde_json::Value,
}

impl Position {
    pub fn new(partition: serde_json::Value, offset: serde_json::Value) -> Position {
        Position { partition, offset }
    }
}

/// A record a source produces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceRecord {
    pub topic: String,
    /// `None`: by the key's hash, or the task's number without a key.
    pub partition: Option<i32>,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<Header>,
    /// Milliseconds since the Unix epoch; -1 lets the broker set it.
    pub timestamp_ms: i64,
}

impl SourceRecord {
    pub fn new(topic: &str, value: impl Into<Vec<u8>>) -> SourceRecord {
        SourceRecord {
            topic: topic.to_owned(),
            partition: None,
            key: None,
            value: Some(value.into()),
            headers: Vec::new(),
            timestamp_ms: -1,
        }
    }

    pub fn with_key(self, key: impl Into<Vec<u8>>) -> SourceRecord {
        SourceRecord { key: Some(key.into()), ..self }
    }
}

/// What one poll returns.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Poll {
    pub records: Vec<SourceRecord>,
    /// The positions after `records`; the broker saves them once the records are committed.
    pub positions: Vec<Position>,
    /// With no records: how long to wait before polling again (the broker caps it).
    pub idle_ms: u32,
}

impl Poll {
    pub fn records(records: Vec<SourceRecord>, positions: Vec<Position>) -> Poll {
        Poll { records, positions, idle_ms: 0 }
    }

    /// Nothing new; poll again after `idle_ms`.
    pub fn idle(idle_ms: u32) -> Poll {
        Poll { idle_ms, ..Poll::default() }
    }
}

/// A committed record a sink receives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SinkRecord {
    /// Shared by every record of the batch from the same topic.
    pub topic: Rc<str>,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<Header>,
    pub timestamp_ms: i64,
}

/// A source connector. One value per task, made by `init`, polled from one thread.
pub trait Source: Sized + 'static {
    /// Every configuration key the connector reads.
    fn keys() -> Vec<ConfigKey>;
    /// Make the task's state from its configuration (the connector's keys, plus `task.id`,
    /// `tasks.max` and `topic.prefix` when set) and every position last committed for the connector.
    fn init(config: &Config, positions: Vec<Position>) -> Result<Self>;
    /// Return what is new, and the positions after it.
    fn poll(&mut self) -> Result<Poll>;
}

/// A sink connector. One value per task, made by `init`.
pub trait Sink: Sized + 'static {
    /// Every configuration key the connector reads.
    fn keys() -> Vec<ConfigKey>;
    fn init(config: &Config) -> Result<Self>;
    /// Write one batch of committed records. An error names the failing record with
    /// [`Error::at_record`] when one record is to blame.
    fn put(&mut self, batch: Vec<SinkRecord>) -> Result<()>;
}

/// Parse the positions the host passed (JSON objects as text).
pub(crate) fn parse_positions(positions: Vec<(String, String)>) -> Result<Vec<Position>> {
    positions
        .into_iter()
        .map(|(partition, offset)| {
            let parse = |what: &str, text: &str| {
                serde_json::from_str::<serde_json::Value>(text)
                    .map_err(|e| Error::msg(format_args!("the host passed a {what} that is not JSON: {e}")))
            };
            Ok(Position { partition: parse("partition", &partition)?, offset: parse("offset", &offset)? })
        })
        .collect()
}
