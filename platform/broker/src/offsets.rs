//! Committed consumer-group offsets, kept in the broker's own keyed log (`__consumer_offsets-0` in the
//! data directory, see `internal_log`) the way Kafka keeps them in `__consumer_offsets`: every commit
//! appends records whose key is (group, topic, partition) and whose value is the committed position;
//! a tombstone deletes one. The in-memory map is rebuilt by replaying the log at start-up.
//!
//! One write (a commit) is one batch of the internal log, so it is atomic; `write` refuses a commit
//! whose records could exceed the batch limit before it encodes anything (`CommitTooLarge`).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use crate::error::BrokerError;
use crate::internal_log::{BATCH_RECORD_BYTES_MAX, KeyedEntry, KeyedLog, SharedLog, record_bytes_max};

pub(crate) const OFFSETS_DIR_NAME: &str = "__consumer_offsets-0";
/// This store's tag in the coordinator's shared log.
const SHARED_TAG: u8 = b'o';
/// Rough bytes per live entry in the log, for the garbage estimate.
pub(crate) const ENTRY_BYTES_ESTIMATE: u64 = 96;
/// Group metadata strings (OffsetCommit's `metadata`) longer than this are refused, like Kafka's
/// `offset.metadata.max.bytes`.
pub(crate) const COMMIT_METADATA_BYTES_MAX: usize = 4096;

/// A record's key in the log, as read back at start-up.
#[derive(Debug, Deserialize)]
struct OffsetKey {
    group: String,
    topic: String,
    partition: i32,
}

/// The same key, borrowed, for writing: encoding a commit clones no group id per entry.
#[derive(Serialize)]
struct OffsetKeyRef<'a> {
    group: &'a str,
    topic: &'a str,
    partition: i32,
}

/// The most bytes one committed offset takes in a batch of the log, from the lengths of its group id,
/// topic name and metadata: rmp-serde's key (array 1, two strings with headers of up to 5, an i32 of
/// up to 5) and value (array 1, i64 9, i32 5, metadata with a header of up to 5, i64 9), plus framing.
pub(crate) const fn offset_record_bytes_max(group_bytes: usize, topic_bytes: usize, metadata_bytes: usize) -> usize {
    record_bytes_max(group_bytes + topic_bytes + 16, metadata_bytes + 29)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CommittedOffset {
    pub(crate) offset: i64,
    pub(crate) leader_epoch: i32,
    pub(crate) metadata: Option<String>,
    /// Broker time of the commit.
    pub(crate) commit_timestamp_ms: i64,
}

impl CommittedOffset {
    /// What an OffsetCommit or TxnOffsetCommit entry commits, at broker time `now`.
    pub(crate) fn from_request(offset: i64, leader_epoch: i32, metadata: Option<&str>, now: i64) -> CommittedOffset {
        CommittedOffset { offset, leader_epoch, metadata: metadata.map(str::to_string), commit_timestamp_ms: now }
    }
}

type GroupOffsets = BTreeMap<(String, i32), CommittedOffset>;

/// An encoded (key, value) of the rewritten log.
type LiveRecord = (Vec<u8>, Vec<u8>);

/// One entry of a write: a (topic, partition) and its new committed offset, or `None` to delete it.
pub(crate) type OffsetWrite = ((String, i32), Option<CommittedOffset>);

/// One replayed record: a commit or a tombstone.
fn replay(offsets: &mut HashMap<String, GroupOffsets>, key: &[u8], value: Option<&[u8]>) {
    let Ok(key) = rmp_serde::from_slice::<OffsetKey>(key) else {
        tracing::warn!("skipping unreadable record in the offsets log");
        return;
    };
    let group = offsets.entry(key.group).or_default();
    match value.and_then(|v| rmp_serde::from_slice::<CommittedOffset>(v).ok()) {
        Some(value) => {
            group.insert((key.topic, key.partition), value);
        }
        None => {
            group.remove(&(key.topic, key.partition));
        }
    }
}

pub(crate) struct OffsetStore {
    log: KeyedLog,
    offsets: RwLock<HashMap<String, GroupOffsets>>,
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, BrokerError> {
    rmp_serde::to_vec(value).map_err(|source| BrokerError::Encode { what: "a committed offset", source })
}

impl OffsetStore {
    pub(crate) fn open(data_dir: &Path, now: i64) -> Result<OffsetStore, BrokerError> {
        let mut offsets = HashMap::new();
        let log = KeyedLog::open(data_dir, OFFSETS_DIR_NAME, now, |key, value| replay(&mut offsets, key, value))?;
        Ok(OffsetStore::from_replayed(log, offsets))
    }

    /// The clients' offsets of a cluster, replayed from the coordinator's replicated log. Blocking.
    pub(crate) fn open_shared(log: Arc<SharedLog>) -> Result<OffsetStore, BrokerError> {
        let mut offsets = HashMap::new();
        let log = KeyedLog::open_shared(log, "offsets", SHARED_TAG, |key, value| replay(&mut offsets, key, value))?;
        Ok(OffsetStore::from_replayed(log, offsets))
    }

    fn from_replayed(log: KeyedLog, mut offsets: HashMap<String, GroupOffsets>) -> OffsetStore {
        offsets.retain(|_, g| !g.is_empty());
        OffsetStore { log, offsets: RwLock::new(offsets) }
    }

    /// Copies the offsets of the clients' groups (not `__sluice…`) into the coordinators' shared
    /// log, which must be new: a cluster that ran before coordinators were replicated kept them in
    /// its lowest voter's local store. Returns how many were copied. Blocking.
    pub(crate) fn copy_clients_to(&self, log: &Arc<SharedLog>) -> Result<usize, BrokerError> {
        let live: Vec<LiveRecord> = self
            .live_records()?
            .into_iter()
            .filter(|(key, _)| rmp_serde::from_slice::<OffsetKey>(key).is_ok_and(|k| !crate::host::is_internal_name(&k.group)))
            .collect();
        if !live.is_empty() {
            KeyedLog::open_shared(Arc::clone(log), "offsets", SHARED_TAG, |_, _| {})?.lock().snapshot(&live)?;
        }
        Ok(live.len())
    }

    /// Appends every live entry to a shared log and returns where that snapshot starts (see
    /// `internal_log`). Blocking.
    pub(crate) fn snapshot(&self) -> Result<i64, BrokerError> {
        let mut log = self.log.lock();
        let live = self.live_records()?;
        log.snapshot(&live)
    }

    /// Number of committed (group, topic, partition) entries.
    pub(crate) fn len(&self) -> usize {
        self.offsets.read().values().map(BTreeMap::len).sum()
    }

    /// Durably records commits (or deletions, for `None`) for one group, then makes them visible.
    /// Blocking file I/O.
    pub(crate) fn write(&self, group: &str, entries: Vec<OffsetWrite>, fsync: bool) -> Result<(), BrokerError> {
        if entries.is_empty() {
            return Ok(());
        }
        let bytes: usize = entries
            .iter()
            .map(|((topic, _), value)| {
                let metadata = value.as_ref().and_then(|v| v.metadata.as_ref()).map_or(0, String::len);
                offset_record_bytes_max(group.len(), topic.len(), metadata)
            })
            .sum();
        if bytes > BATCH_RECORD_BYTES_MAX {
            return Err(BrokerError::CommitTooLarge { group: group.to_string(), bytes, limit: BATCH_RECORD_BYTES_MAX });
        }
        let records: Vec<KeyedEntry> = entries
            .iter()
            .map(|((topic, partition), value)| {
                let key = encode(&OffsetKeyRef { group, topic, partition: *partition })?;
                Ok((key, value.as_ref().map(encode).transpose()?))
            })
            .collect::<Result<_, BrokerError>>()?;
        let mut log = self.log.lock();
        log.append(&records, fsync)?;
        let mut offsets = self.offsets.write();
        let group_offsets = offsets.entry(group.to_string()).or_default();
        for (key, value) in entries {
            match value {
                Some(v) => {
                    group_offsets.insert(key, v);
                }
                None => {
                    group_offsets.remove(&key);
                }
            }
        }
        if group_offsets.is_empty() {
            offsets.remove(group);
        }
        let live = offsets.values().map(BTreeMap::len).sum::<usize>();
        drop(offsets);
        if log.wants_rewrite(live, ENTRY_BYTES_ESTIMATE) {
            let snapshot = self.live_records();
            if let Err(error) = snapshot.and_then(|live| log.rewrite(&live)) {
                tracing::warn!(%error, "offsets log rewrite failed; keeping the current log");
            }
        }
        Ok(())
    }

    fn live_records(&self) -> Result<Vec<LiveRecord>, BrokerError> {
        let offsets = self.offsets.read();
        let mut live = Vec::with_capacity(offsets.values().map(BTreeMap::len).sum());
        for (group, entries) in offsets.iter() {
            for ((topic, partition), value) in entries {
                live.push((encode(&OffsetKeyRef { group, topic, partition: *partition })?, encode(value)?));
            }
        }
        Ok(live)
    }

    pub(crate) fn get(&self, group: &str, topic: &str, partition: i32) -> Option<CommittedOffset> {
        self.offsets.read().get(group).and_then(|g| g.get(&(topic.to_string(), partition)).cloned())
    }

    /// Every committed offset of a group, sorted by topic and partition.
    pub(crate) fn group(&self, group: &str) -> Vec<((String, i32), CommittedOffset)> {
        self.offsets.read().get(group).map(|g| g.iter().map(|(k, v)| (k.clone(), v.clone())).collect()).unwrap_or_default()
    }

    /// Whether the group has any committed offset.
    pub(crate) fn has_group(&self, group: &str) -> bool {
        self.offsets.read().contains_key(group)
    }

    /// Groups that have committed offsets.
    pub(crate) fn groups(&self) -> Vec<String> {
        let mut groups: Vec<String> = self.offsets.read().keys().cloned().collect();
        groups.sort();
        groups
    }

    /// Deletes committed offsets of one group. Unlike a commit this need not be atomic, so a group
    /// with more offsets than one batch holds is deleted in several. Blocking file I/O.
    pub(crate) fn remove(&self, group: &str, keys: Vec<(String, i32)>) -> Result<(), BrokerError> {
        let mut batch: Vec<OffsetWrite> = Vec::new();
        let mut bytes = 0;
        for key in keys {
            let record = offset_record_bytes_max(group.len(), key.0.len(), 0);
            if bytes + record > BATCH_RECORD_BYTES_MAX {
                self.write(group, std::mem::take(&mut batch), false)?;
                bytes = 0;
            }
            bytes += record;
            batch.push((key, None));
        }
        self.write(group, batch, false)
    }

    pub(crate) fn delete_group(&self, group: &str) -> Result<(), BrokerError> {
        let keys: Vec<(String, i32)> = self.group(group).into_iter().map(|(k, _)| k).collect();
        self.remove(group, keys)
    }

    /// Drops committed offsets of a deleted topic from every group.
    pub(crate) fn forget_topic(&self, topic: &str) {
        let affected: Vec<(String, Vec<(String, i32)>)> = self
            .offsets
            .read()
            .iter()
            .map(|(g, m)| (g.clone(), m.keys().filter(|(t, _)| t == topic).cloned().collect::<Vec<_>>()))
            .filter(|(_, keys)| !keys.is_empty())
            .collect();
        for (group, keys) in affected {
            if let Err(error) = self.remove(&group, keys) {
                tracing::warn!(group, topic, %error, "could not delete committed offsets of a deleted topic");
            }
        }
    }

    pub(crate) fn close(&self) {
        self.log.close();
    }
}
