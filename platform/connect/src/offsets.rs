//! A connector's positions, in KIP-875's shapes: `{"offsets": [{"partition": {...}, "offset": {...}}]}`.
//! A source's partition and offset are whatever the plugin says (`{"table": "orders"}` →
//! `{"incrementing": 42}`); a sink's are `{"kafka_topic": "t", "kafka_partition": 0}` →
//! `{"kafka_offset": 17}`.
//!
//! [`OffsetStore`] keeps them in `<data-dir>/__connect/offsets/<connector>.json`, replaced atomically,
//! bounded in entries ([`OFFSET_ENTRIES_MAX`]) and in size per entry ([`OFFSET_ENTRY_BYTES_MAX`]).
//! They survive a restart and the connector's deletion (a connector created again under the same
//! name resumes, as in Kafka Connect).
//!
//! Source positions are exactly once with the records they cover. A file cannot join a broker
//! transaction, so the source driver (`crate::task`) makes the transaction decide for it: before it
//! writes a poll's records it *stages* the poll's positions here as the task's pending set
//! ([`PendingPositions`]: a sequence number and the partition that carries the transaction's marker),
//! and the transaction that holds the records also commits the sequence number as the task's group
//! offset on that partition. Whether the pending set's transaction committed is then a question the
//! broker answers: the set is *settled* — promoted into the stored positions, or dropped — right
//! after the commit, or, after a crash, when the task starts again (once its previous producer is
//! fenced, so the transaction's outcome is final). [`OffsetStore::read`], and so `GET
//! .../offsets`, shows settled positions only. A task has at most one pending set, so the file stays
//! bounded: [`OFFSET_ENTRIES_MAX`] settled entries plus, per task, one poll's positions. The sink
//! driver (which keeps its position in the target database) will answer through the same shapes.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sluice_broker::host::write_file_atomically;

use crate::config::{ConnectorType, TASKS_MAX_LIMIT, check_topic_name};
use crate::error::ConnectError;
use crate::task::POLL_POSITIONS_MAX;

/// Most partitions one connector keeps a position for.
pub const OFFSET_ENTRIES_MAX: usize = 10_000;
/// Largest partition + offset of one entry, as JSON.
pub const OFFSET_ENTRY_BYTES_MAX: usize = 4 * 1024;
/// Settled entries plus one pending poll per task, with room for the JSON around them.
const OFFSETS_FILE_BYTES_MAX: u64 =
    ((OFFSET_ENTRIES_MAX + TASKS_MAX_LIMIT as usize * POLL_POSITIONS_MAX) * (OFFSET_ENTRY_BYTES_MAX + 64)) as u64;

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

/// A source task's positions staged for the transaction it is committing, whose outcome decides
/// whether they become the connector's positions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingPositions {
    /// The marker the transaction commits as the task's group offset on `marker_topic` /
    /// `marker_partition`: more than that offset held when the set was staged, so it is there (or
    /// higher) only if the transaction committed.
    pub seq: i64,
    pub marker_topic: String,
    pub marker_partition: i32,
    pub entries: Vec<ConnectorOffset>,
}

#[derive(Default, Serialize, Deserialize)]
struct Stored {
    /// Keyed by the partition's canonical JSON, so an entry is replaced, not duplicated.
    entries: BTreeMap<String, ConnectorOffset>,
    /// Per source task, positions whose transaction has not been settled (at most one set each).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pending: BTreeMap<i32, PendingPositions>,
}

impl Stored {
    /// Refuses `extra` when the settled entries, every pending set and `extra` together name more
    /// than [`OFFSET_ENTRIES_MAX`] partitions: room is taken when positions are staged, so settling a
    /// committed set never fails on it (after its records are visible it would be too late to refuse).
    fn check_room(&self, connector: &str, extra: &[ConnectorOffset]) -> Result<(), ConnectError> {
        let mut keys: BTreeSet<String> = self.entries.keys().cloned().collect();
        let staged = self.pending.values().flat_map(|p| p.entries.iter()).chain(extra);
        keys.extend(staged.filter(|e| e.offset.is_some()).map(|e| key_of(&e.partition)));
        if keys.len() > OFFSET_ENTRIES_MAX {
            return Err(ConnectError::BadRequest(format!(
                "connector {connector} would have more than {OFFSET_ENTRIES_MAX} partitions with a position"
            )));
        }
        Ok(())
    }

    /// Sets (or, for a `null` offset, removes) the entries' positions, with no room check.
    fn apply(&mut self, entries: &[ConnectorOffset]) {
        for entry in entries {
            let key = key_of(&entry.partition);
            match &entry.offset {
                None => {
                    self.entries.remove(&key);
                }
                Some(_) => {
                    self.entries.insert(key, entry.clone());
                }
            }
        }
    }
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

    /// The connector's settled positions, sorted by partition (pending sets are not positions yet).
    pub fn read(&self, connector: &str) -> Result<ConnectorOffsets, ConnectError> {
        let _guard = self.lock.lock();
        Ok(ConnectorOffsets { offsets: self.load(connector)?.entries.into_values().collect() })
    }

    /// Stages a source task's positions for the transaction it is about to write (before anything of
    /// it is sent). Refused if the task still has a set to settle, if the set is larger than one poll
    /// may report, or if it would take the connector past [`OFFSET_ENTRIES_MAX`] partitions.
    pub fn stage(&self, connector: &str, task: i32, pending: PendingPositions) -> Result<(), ConnectError> {
        let _guard = self.lock.lock();
        let mut stored = self.load(connector)?;
        if !(0..TASKS_MAX_LIMIT as i32).contains(&task) {
            return Err(ConnectError::BadRequest(format!("task {task} is outside 0..{TASKS_MAX_LIMIT}")));
        }
        if pending.entries.len() > POLL_POSITIONS_MAX {
            return Err(ConnectError::BadRequest(format!("{} positions in one poll; at most {POLL_POSITIONS_MAX}", pending.entries.len())));
        }
        if let Some(earlier) = stored.pending.get(&task) {
            // The driver settles before it stages again; a set left here means it did not, and
            // replacing it would lose positions whose records may have committed.
            return Err(ConnectError::WrongState(format!(
                "task {task} of connector {connector} still has the positions of transaction {} to settle",
                earlier.seq
            )));
        }
        stored.check_room(connector, &pending.entries)?;
        stored.pending.insert(task, pending);
        self.save(connector, &stored)
    }

    /// The task's pending set, if it has one.
    pub fn pending(&self, connector: &str, task: i32) -> Result<Option<PendingPositions>, ConnectError> {
        let _guard = self.lock.lock();
        Ok(self.load(connector)?.pending.remove(&task))
    }

    /// The tasks that have a pending set, in order.
    pub fn pending_tasks(&self, connector: &str) -> Result<Vec<i32>, ConnectError> {
        let _guard = self.lock.lock();
        Ok(self.load(connector)?.pending.into_keys().collect())
    }

    /// Settles the task's pending set `seq` once its transaction's outcome is known: promotes its
    /// positions if the transaction `committed`, drops them otherwise. A set with another sequence
    /// number (or none) is left as it is, so settling twice is harmless.
    pub fn settle(&self, connector: &str, task: i32, seq: i64, committed: bool) -> Result<(), ConnectError> {
        let _guard = self.lock.lock();
        let mut stored = self.load(connector)?;
        let Some(pending) = stored.pending.remove(&task).filter(|p| p.seq == seq) else { return Ok(()) };
        if committed {
            stored.apply(&pending.entries);
        }
        self.save(connector, &stored)
    }

    /// Saves a source task's positions directly, with no transaction: for a poll that reported
    /// positions but no records (nothing to repeat or lose if a crash forgets them). Pending sets stay.
    pub fn save_positions(&self, connector: &str, entries: &[ConnectorOffset]) -> Result<(), ConnectError> {
        let _guard = self.lock.lock();
        let mut stored = self.load(connector)?;
        stored.check_room(connector, entries)?;
        stored.apply(entries);
        self.save(connector, &stored)
    }

    /// KIP-875's alteration, of a STOPPED connector: sets (or, for a `null` offset, removes) the given
    /// partitions' positions; others stay. Pending sets are dropped: the manager settles them before
    /// (`crate::task::settle_stopped_tasks`), so what is left belongs to no transaction that can
    /// still commit, and the operator's positions are the ones the tasks must start from.
    pub fn alter(&self, connector: &str, entries: &[ConnectorOffset]) -> Result<(), ConnectError> {
        let _guard = self.lock.lock();
        let mut stored = self.load(connector)?;
        stored.pending.clear();
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

    /// Forgets every position of the connector, pending sets included.
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

    fn pending(seq: i64, entries: Vec<ConnectorOffset>) -> PendingPositions {
        PendingPositions { seq, marker_topic: "out".into(), marker_partition: 0, entries }
    }

    #[test]
    fn staged_positions_count_only_once_settled_and_alteration_drops_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = OffsetStore::open(dir.path()).unwrap();
        let at = |id: u64| entry(json!({"partition": {"table": "a"}, "offset": {"id": id}}));
        store.stage("c", 0, pending(1, vec![at(5)])).unwrap();
        assert!(store.read("c").unwrap().offsets.is_empty(), "a pending set is not a position yet");
        assert!(matches!(store.stage("c", 0, pending(2, vec![at(6)])), Err(ConnectError::WrongState(_))), "one set per task");
        store.settle("c", 0, 7, true).unwrap();
        assert_eq!(store.pending("c", 0).unwrap().map(|p| p.seq), Some(1), "another transaction's outcome leaves it");
        // Reopened: the pending set survives a restart.
        let store = OffsetStore::open(dir.path()).unwrap();
        store.settle("c", 0, 1, true).unwrap();
        assert_eq!(store.read("c").unwrap().offsets, vec![at(5)]);
        assert_eq!(store.pending("c", 0).unwrap(), None);
        store.stage("c", 0, pending(2, vec![at(9)])).unwrap();
        store.settle("c", 0, 2, false).unwrap();
        assert_eq!(store.read("c").unwrap().offsets, vec![at(5)], "an aborted transaction's positions are dropped");
        store.stage("c", 1, pending(1, vec![at(9)])).unwrap();
        assert_eq!(store.pending_tasks("c").unwrap(), vec![1]);
        store.alter("c", &[at(3)]).unwrap();
        assert_eq!(store.pending_tasks("c").unwrap(), Vec::<i32>::new());
        assert_eq!(store.read("c").unwrap().offsets, vec![at(3)]);
        store.stage("c", 0, pending(3, vec![at(4)])).unwrap();
        store.reset("c").unwrap();
        assert_eq!(store.pending("c", 0).unwrap(), None);
    }

    #[test]
    fn staging_reserves_room_so_settling_a_committed_set_never_fails() {
        let dir = tempfile::tempdir().unwrap();
        let store = OffsetStore::open(dir.path()).unwrap();
        let table = |n: usize| entry(json!({"partition": {"table": n}, "offset": {"id": 1}}));
        let full: Vec<ConnectorOffset> = (0..OFFSET_ENTRIES_MAX - 1).map(table).collect();
        store.save_positions("c", &full).unwrap();
        store.stage("c", 0, pending(1, vec![table(OFFSET_ENTRIES_MAX - 1)])).unwrap();
        // The last free partition is reserved by task 0's pending set.
        assert!(matches!(store.stage("c", 1, pending(1, vec![table(OFFSET_ENTRIES_MAX)])), Err(ConnectError::BadRequest(_))));
        assert!(matches!(store.save_positions("c", &[table(OFFSET_ENTRIES_MAX)]), Err(ConnectError::BadRequest(_))));
        // A partition that already has a position takes no room.
        store.stage("c", 1, pending(1, vec![table(0)])).unwrap();
        store.settle("c", 0, 1, true).unwrap();
        store.settle("c", 1, 1, true).unwrap();
        assert_eq!(store.read("c").unwrap().offsets.len(), OFFSET_ENTRIES_MAX);
        let too_many: Vec<ConnectorOffset> = (0..=POLL_POSITIONS_MAX).map(table).collect();
        assert!(matches!(store.stage("c", 0, pending(2, too_many)), Err(ConnectError::BadRequest(_))));
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
