//! A connector's positions, in KIP-875's shapes: `{"offsets": [{"partition": {...}, "offset": {...}}]}`.
//! A source's partition and offset are whatever the plugin says (`{"table": "orders"}` →
//! `{"incrementing": 42}`); a sink's are `{"kafka_topic": "t", "kafka_partition": 0}` →
//! `{"kafka_offset": 17}`.
//!
//! [`OffsetStore`] keeps them in `<data-dir>/__connect/offsets/<connector>.json`, replaced atomically,
//! bounded in entries ([`OFFSET_ENTRIES_MAX`]) and in size per entry ([`OFFSET_ENTRY_BYTES_MAX`]).
//! They survive a restart and the connector's deletion (a connector created again under the same
//! name resumes, as in Kafka Connect). The source driver saves a task's positions right after the
//! transaction holding its records commits (at least once across a crash between the two); the
//! exactly-once source driver and the sink driver (which keeps its position in the target database)
//! will own their stores and answer through the same shapes.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sluice_broker::host::write_file_atomically;

use crate::config::{ConnectorType, check_topic_name};
use crate::error::ConnectError;

/// Most partitions one connector keeps a position for.
pub const OFFSET_ENTRIES_MAX: usize = 10_000;
/// Largest partition + offset of one entry, as JSON.
pub const OFFSET_ENTRY_BYTES_MAX: usize = 4 * 1024;
const OFFSETS_FILE_BYTES_MAX: u64 = (OFFSET_ENTRIES_MAX * (OFFSET_ENTRY_BYTES_MAX + 64)) as u64;

/// One partition's position.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectorOffset {
    pub partition: Map<String, Value>,
    /// `None` in a PATCH removes the partition's position.
    pub offset: Option<Map<String, Value>>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ConnectorOffsets {
    pub offsets: Vec<ConnectorOffset>,
}

/// Checks one entry of a PATCH against the connector's type (KIP-875's rules for sinks).
pub fn check_entry(kind: ConnectorType, entry: &ConnectorOffset) -> Result<(), ConnectError> {
    let bad = |message: String| Err(ConnectError::BadRequest(message));
    let size = serde_json::to_vec(entry).map_or(usize::MAX, |b| b.len());
    if size > OFFSET_ENTRY_BYTES_MAX {
        return bad(format!("an offset entry is {size} bytes as JSON; at most {OFFSET_ENTRY_BYTES_MAX}"));
    }
    if entry.partition.is_empty() {
        return bad("each offset entry needs a non-empty \"partition\"".into());
    }
    if kind == ConnectorType::Sink {
        match entry.partition.get("kafka_topic") {
            Some(Value::String(topic)) => check_topic_name(topic).map_err(|e| ConnectError::BadRequest(e.into()))?,
            _ => return bad("sink connector partitions need \"kafka_topic\" (a string)".into()),
        }
        match entry.partition.get("kafka_partition") {
            Some(Value::Number(n)) if n.as_i64().is_some_and(|p| (0..=i64::from(i32::MAX)).contains(&p)) => {}
            _ => return bad("sink connector partitions need \"kafka_partition\" (a non-negative integer)".into()),
        }
        if entry.partition.len() != 2 {
            return bad("sink connector partitions have only \"kafka_topic\" and \"kafka_partition\"".into());
        }
        if let Some(offset) = &entry.offset {
            match offset.get("kafka_offset") {
                Some(Value::Number(n)) if n.as_i64().is_some_and(|o| o >= 0) && offset.len() == 1 => {}
                _ => return bad("sink connector offsets are {\"kafka_offset\": <non-negative integer>} (or null to reset)".into()),
            }
        }
    }
    Ok(())
}

#[derive(Default, Serialize, Deserialize)]
struct Stored {
    /// Keyed by the partition's canonical JSON, so an entry is replaced, not duplicated.
    entries: BTreeMap<String, ConnectorOffset>,
}

/// Every connector's positions, one file each.
pub struct OffsetStore {
    dir: PathBuf,
    /// Serialises read-modify-write of the files (tasks of one connector save concurrently).
    lock: Mutex<()>,
}

fn key_of(partition: &Map<String, Value>) -> String {
    // serde_json's Map is ordered by key (no preserve_order feature), so this is canonical.
    serde_json::to_string(partition).unwrap_or_default()
}

impl OffsetStore {
    /// `root`: the extension's directory. Blocking file I/O.
    pub fn open(root: &Path) -> Result<OffsetStore, ConnectError> {
        let dir = root.join("offsets");
        fs::create_dir_all(&dir).map_err(|e| ConnectError::file(&dir, e))?;
        Ok(OffsetStore { dir, lock: Mutex::new(()) })
    }

    fn path(&self, connector: &str) -> PathBuf {
        self.dir.join(format!("{connector}.json"))
    }

    fn load(&self, connector: &str) -> Result<Stored, ConnectError> {
        let path = self.path(connector);
        match fs::metadata(&path) {
            Ok(meta) if meta.len() > OFFSETS_FILE_BYTES_MAX => Err(ConnectError::file(&path, "larger than any offsets file Sluice writes")),
            Ok(_) => {
                let bytes = fs::read(&path).map_err(|e| ConnectError::file(&path, e))?;
                serde_json::from_slice(&bytes).map_err(|e| ConnectError::file(&path, e))
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(Stored::default()),
            Err(error) => Err(ConnectError::file(&path, error)),
        }
    }

    fn save(&self, connector: &str, stored: &Stored) -> Result<(), ConnectError> {
        let json = serde_json::to_vec(stored).map_err(|e| ConnectError::BadRequest(e.to_string()))?;
        write_file_atomically(&self.path(connector), &json)?;
        Ok(())
    }

    /// The connector's positions, sorted by partition.
    pub fn read(&self, connector: &str) -> Result<ConnectorOffsets, ConnectError> {
        let _guard = self.lock.lock();
        Ok(ConnectorOffsets { offsets: self.load(connector)?.entries.into_values().collect() })
    }

    /// Sets (or, for a `null` offset, removes) the given partitions' positions; others stay.
    pub fn alter(&self, connector: &str, entries: &[ConnectorOffset]) -> Result<(), ConnectError> {
        let _guard = self.lock.lock();
        let mut stored = self.load(connector)?;
        for entry in entries {
            let key = key_of(&entry.partition);
            match &entry.offset {
                None => {
                    stored.entries.remove(&key);
                }
                Some(_) => {
                    if !stored.entries.contains_key(&key) && stored.entries.len() >= OFFSET_ENTRIES_MAX {
                        return Err(ConnectError::BadRequest(format!(
                            "connector {connector} already has {OFFSET_ENTRIES_MAX} partitions with a position"
                        )));
                    }
                    stored.entries.insert(key, entry.clone());
                }
            }
        }
        self.save(connector, &stored)
    }

    /// Forgets every position of the connector.
    pub fn reset(&self, connector: &str) -> Result<(), ConnectError> {
        let _guard = self.lock.lock();
        let path = self.path(connector);
        match fs::remove_file(&path) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(ConnectError::file(&path, error)),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entry(value: Value) -> ConnectorOffset {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn positions_are_replaced_per_partition_removed_by_null_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let store = OffsetStore::open(dir.path()).unwrap();
        store.alter("c", &[entry(json!({"partition": {"table": "a"}, "offset": {"id": 1}}))]).unwrap();
        store
            .alter(
                "c",
                &[
                    entry(json!({"partition": {"table": "a"}, "offset": {"id": 2}})),
                    entry(json!({"partition": {"table": "b"}, "offset": {"id": 9}})),
                ],
            )
            .unwrap();
        let reopened = OffsetStore::open(dir.path()).unwrap();
        let offsets = reopened.read("c").unwrap();
        assert_eq!(
            serde_json::to_value(&offsets).unwrap(),
            json!({"offsets": [
                {"partition": {"table": "a"}, "offset": {"id": 2}},
                {"partition": {"table": "b"}, "offset": {"id": 9}},
            ]})
        );
        reopened.alter("c", &[entry(json!({"partition": {"table": "a"}, "offset": null}))]).unwrap();
        assert_eq!(reopened.read("c").unwrap().offsets.len(), 1);
        reopened.reset("c").unwrap();
        assert!(reopened.read("c").unwrap().offsets.is_empty());
    }

    #[test]
    fn sink_entries_must_have_kip_875_shapes() {
        let good = entry(json!({"partition": {"kafka_topic": "t", "kafka_partition": 2}, "offset": {"kafka_offset": 10}}));
        check_entry(ConnectorType::Sink, &good).unwrap();
        for bad in [
            json!({"partition": {"kafka_topic": "t"}, "offset": {"kafka_offset": 1}}),
            json!({"partition": {"kafka_topic": "t", "kafka_partition": -1}, "offset": {"kafka_offset": 1}}),
            json!({"partition": {"kafka_topic": "t", "kafka_partition": 0}, "offset": {"kafka_offset": "1"}}),
            json!({"partition": {}, "offset": {"x": 1}}),
        ] {
            assert!(check_entry(ConnectorType::Sink, &entry(bad.clone())).is_err(), "{bad}");
        }
        check_entry(ConnectorType::Source, &entry(json!({"partition": {"file": "a"}, "offset": null}))).unwrap();
    }
}
