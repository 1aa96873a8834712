//! Committed consumer-group offsets, kept in the broker's own keyed log (`__consumer_offsets-0` in the
//! data directory, see `internal_log`) the way Kafka keeps them in `__consumer_offsets`: every commit
//! appends records whose key is (group, topic, partition) and whose value is the committed position;
//! a tombstone deletes one. The in-memory map is rebuilt by replaying the log at start-up.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use crate::error::BrokerError;
use crate::internal_log::{KeyedEntry, KeyedLog};

pub const OFFSETS_DIR_NAME: &str = "__consumer_offsets-0";
/// Rough bytes per live entry in the log, for the garbage estimate.
const ENTRY_BYTES_ESTIMATE: u64 = 96;
/// Group metadata strings (OffsetCommit's `metadata`) longer than this are refused, like Kafka's
/// `offset.metadata.max.bytes`.
pub const COMMIT_METADATA_BYTES_MAX: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct OffsetKey {
    pub group: String,
    pub topic: String,
    pub partition: i32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommittedOffset {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<String>,
    pub commit_timestamp_ms: i64,
}

type GroupOffsets = BTreeMap<(String, i32), CommittedOffset>;

/// An encoded (key, value) of the rewritten log.
type LiveRecord = (Vec<u8>, Vec<u8>);

/// One entry of a write: a (topic, partition) and its new committed offset, or `None` to delete it.
pub type OffsetWrite = ((String, i32), Option<CommittedOffset>);

pub struct OffsetStore {
    log: KeyedLog,
    offsets: RwLock<HashMap<String, GroupOffsets>>,
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, BrokerError> {
    rmp_serde::to_vec(value).map_err(|e| BrokerError::Storage(e.to_string()))
}

impl OffsetStore {
    pub fn open(data_dir: &Path, now: i64) -> Result<OffsetStore, String> {
        let mut offsets: HashMap<String, GroupOffsets> = HashMap::new();
        let log = KeyedLog::open(data_dir, OFFSETS_DIR_NAME, now, |key, value| {
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
        })?;
        offsets.retain(|_, g| !g.is_empty());
        Ok(OffsetStore { log, offsets: RwLock::new(offsets) })
    }

    /// Number of committed (group, topic, partition) entries.
    pub fn len(&self) -> usize {
        self.offsets.read().values().map(BTreeMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Durably records commits (or deletions, for `None`) for one group, then makes them visible.
    /// Blocking file I/O.
    pub fn write(&self, group: &str, entries: Vec<OffsetWrite>, fsync: bool) -> Result<(), BrokerError> {
        if entries.is_empty() {
            return Ok(());
        }
        let records: Vec<KeyedEntry> = entries
            .iter()
            .map(|((topic, partition), value)| {
                let key = encode(&OffsetKey { group: group.to_string(), topic: topic.clone(), partition: *partition })?;
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
            if let Err(error) = snapshot.map_err(|e| e.to_string()).and_then(|live| log.rewrite(&live)) {
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
                live.push((encode(&OffsetKey { group: group.clone(), topic: topic.clone(), partition: *partition })?, encode(value)?));
            }
        }
        Ok(live)
    }

    pub fn get(&self, group: &str, topic: &str, partition: i32) -> Option<CommittedOffset> {
        self.offsets.read().get(group).and_then(|g| g.get(&(topic.to_string(), partition)).cloned())
    }

    /// Every committed offset of a group, sorted by topic and partition.
    pub fn group(&self, group: &str) -> Vec<((String, i32), CommittedOffset)> {
        self.offsets.read().get(group).map(|g| g.iter().map(|(k, v)| (k.clone(), v.clone())).collect()).unwrap_or_default()
    }

    /// Groups that have committed offsets.
    pub fn groups(&self) -> Vec<String> {
        let mut groups: Vec<String> = self.offsets.read().keys().cloned().collect();
        groups.sort();
        groups
    }

    pub fn delete_group(&self, group: &str) -> Result<(), BrokerError> {
        let keys: Vec<_> = self.group(group).into_iter().map(|(k, _)| (k, None)).collect();
        self.write(group, keys, false)
    }

    /// Drops committed offsets of a deleted topic from every group.
    pub fn forget_topic(&self, topic: &str) {
        let affected: Vec<(String, Vec<OffsetWrite>)> = self
            .offsets
            .read()
            .iter()
            .map(|(g, m)| (g.clone(), m.keys().filter(|(t, _)| t == topic).map(|k| (k.clone(), None)).collect::<Vec<_>>()))
            .filter(|(_, keys)| !keys.is_empty())
            .collect();
        for (group, keys) in affected {
            if let Err(error) = self.write(&group, keys, false) {
                tracing::warn!(group, topic, %error, "could not delete committed offsets of a deleted topic");
            }
        }
    }

    pub fn close(&self) {
        self.log.close();
    }
}
