//! Committed consumer-group offsets, kept in the broker's own log (`__consumer_offsets-0` in the data
//! directory) the way Kafka keeps them in `__consumer_offsets`: every commit appends records whose key
//! is (group, topic, partition) and whose value is the committed position; a record without a value
//! (a tombstone) deletes one. The in-memory map is rebuilt by replaying the log at start-up.
//!
//! The log is compacted by rewriting: once it holds much more than the live entries, the live map is
//! written to a fresh log beside it, which then replaces the old one by rename. A crash mid-rewrite
//! leaves the old log in place and an incomplete rewrite that the next start discards.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use bytes::BytesMut;
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::records::{Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use sluice_storage::{AppendMode, LogConfig, PartitionLog};

use crate::error::BrokerError;

pub const OFFSETS_DIR_NAME: &str = "__consumer_offsets-0";
const REWRITE_SUFFIX: &str = ".rewrite";
const RETIRED_SUFFIX: &str = ".retired";

/// Bytes read per step while replaying the log at start-up.
const REPLAY_CHUNK_BYTES: usize = 4 * 1024 * 1024;
/// The log is rewritten when it exceeds this size and is several times larger than its live data.
const REWRITE_THRESHOLD_BYTES: u64 = 64 * 1024 * 1024;
const REWRITE_GARBAGE_RATIO: u64 = 4;
/// Rough bytes per live entry in the log, for the garbage estimate.
const ENTRY_BYTES_ESTIMATE: u64 = 96;
/// Entries per record batch when rewriting, to keep each batch well below the batch size limit.
const REWRITE_BATCH_ENTRIES: usize = 2000;
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

/// One entry of a write: a (topic, partition) and its new committed offset, or `None` to delete it.
pub type OffsetWrite = ((String, i32), Option<CommittedOffset>);

pub struct OffsetStore {
    dir: PathBuf,
    log: Mutex<PartitionLog>,
    offsets: RwLock<HashMap<String, GroupOffsets>>,
}

fn log_config() -> LogConfig {
    LogConfig { retention_ms: None, retention_bytes: None, delete_enabled: false, segment_bytes: 64 * 1024 * 1024, ..LogConfig::default() }
}

fn encode_entries<'a>(
    entries: impl Iterator<Item = (&'a OffsetKey, Option<&'a CommittedOffset>)>,
    now: i64,
) -> Result<BytesMut, BrokerError> {
    // Offsets inside the batch must be consecutive: the encoder derives the batch's last offset
    // delta from them, and the log rejects a batch whose count and delta disagree.
    let records: Vec<Record> = entries
        .enumerate()
        .map(|(i, (key, value))| {
            Ok(Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: 0,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset: i as i64,
                sequence: -1,
                timestamp: now,
                key: Some(rmp_serde::to_vec(key).map_err(|e| BrokerError::Storage(e.to_string()))?.into()),
                value: match value {
                    Some(v) => Some(rmp_serde::to_vec(v).map_err(|e| BrokerError::Storage(e.to_string()))?.into()),
                    None => None,
                },
                headers: IndexMap::new(),
            })
        })
        .collect::<Result<_, BrokerError>>()?;
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(&mut buf, records.iter(), &RecordEncodeOptions { version: 2, compression: Compression::None })
        .map_err(|e| BrokerError::Storage(format!("encoding offset commit: {e}")))?;
    Ok(buf)
}

fn replay(log: &PartitionLog, offsets: &mut HashMap<String, GroupOffsets>) -> Result<(), String> {
    let mut position = log.log_start_offset();
    let end = log.log_end_offset();
    while position < end {
        let read = log.read(position, REPLAY_CHUNK_BYTES, end, true).map_err(|e| e.to_string())?;
        if read.bytes.is_empty() {
            break;
        }
        let mut bytes = read.bytes;
        let sets = RecordBatchDecoder::decode_all(&mut bytes).map_err(|e| format!("offsets log: {e}"))?;
        for record in sets.iter().flat_map(|s| s.records.iter()) {
            position = position.max(record.offset + 1);
            let Some(key) = record.key.as_ref().and_then(|k| rmp_serde::from_slice::<OffsetKey>(k).ok()) else {
                tracing::warn!(offset = record.offset, "skipping unreadable record in the offsets log");
                continue;
            };
            let group = offsets.entry(key.group).or_default();
            match record.value.as_ref().and_then(|v| rmp_serde::from_slice::<CommittedOffset>(v).ok()) {
                Some(value) => {
                    group.insert((key.topic, key.partition), value);
                }
                None => {
                    group.remove(&(key.topic, key.partition));
                }
            }
        }
    }
    offsets.retain(|_, g| !g.is_empty());
    Ok(())
}

impl OffsetStore {
    pub fn open(data_dir: &Path, now: i64) -> Result<OffsetStore, String> {
        let dir = data_dir.join(OFFSETS_DIR_NAME);
        let rewrite = data_dir.join(format!("{OFFSETS_DIR_NAME}{REWRITE_SUFFIX}"));
        let retired = data_dir.join(format!("{OFFSETS_DIR_NAME}{RETIRED_SUFFIX}"));
        // A finished rewrite whose swap was cut short: the new log is complete once the old one has
        // been retired, so finish the swap; otherwise the rewrite is incomplete and discarded.
        if !dir.exists() && rewrite.exists() && retired.exists() {
            fs::rename(&rewrite, &dir).map_err(|e| format!("finishing offsets log rewrite: {e}"))?;
        }
        for leftover in [&rewrite, &retired] {
            if leftover.exists() {
                fs::remove_dir_all(leftover).map_err(|e| format!("removing {}: {e}", leftover.display()))?;
            }
        }
        let log = PartitionLog::open(&dir, log_config(), now).map_err(|e| format!("cannot open offsets log {}: {e}", dir.display()))?;
        let mut offsets = HashMap::new();
        replay(&log, &mut offsets)?;
        Ok(OffsetStore { dir, log: Mutex::new(log), offsets: RwLock::new(offsets) })
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
        let now = crate::now_ms();
        let keys: Vec<OffsetKey> =
            entries.iter().map(|((t, p), _)| OffsetKey { group: group.to_string(), topic: t.clone(), partition: *p }).collect();
        let mut batch = encode_entries(keys.iter().zip(entries.iter().map(|(_, v)| v.as_ref())), now)?;
        let mut log = self.log.lock();
        log.append(&mut batch, AppendMode::AssignOffsets { leader_epoch: 0 }, now)?;
        if fsync {
            log.flush()?;
        }
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
        let live = offsets.values().map(BTreeMap::len).sum::<usize>() as u64;
        drop(offsets);
        let size = log.size_bytes();
        if size > REWRITE_THRESHOLD_BYTES
            && size > REWRITE_GARBAGE_RATIO * live * ENTRY_BYTES_ESTIMATE
            && let Err(error) = self.rewrite(&mut log)
        {
            tracing::warn!(%error, "offsets log rewrite failed; keeping the current log");
        }
        Ok(())
    }

    fn rewrite(&self, log: &mut PartitionLog) -> Result<(), String> {
        let started = std::time::Instant::now();
        let parent = self.dir.parent().ok_or("offsets dir has no parent")?;
        let rewrite = parent.join(format!("{OFFSETS_DIR_NAME}{REWRITE_SUFFIX}"));
        let retired = parent.join(format!("{OFFSETS_DIR_NAME}{RETIRED_SUFFIX}"));
        let now = crate::now_ms();
        let mut fresh = PartitionLog::open(&rewrite, log_config(), now).map_err(|e| e.to_string())?;
        let entries: Vec<(OffsetKey, CommittedOffset)> = self
            .offsets
            .read()
            .iter()
            .flat_map(|(g, m)| {
                m.iter().map(move |((t, p), v)| (OffsetKey { group: g.clone(), topic: t.clone(), partition: *p }, v.clone()))
            })
            .collect();
        for chunk in entries.chunks(REWRITE_BATCH_ENTRIES) {
            let mut batch = encode_entries(chunk.iter().map(|(k, v)| (k, Some(v))), now).map_err(|e| e.to_string())?;
            fresh.append(&mut batch, AppendMode::AssignOffsets { leader_epoch: 0 }, now).map_err(|e| e.to_string())?;
        }
        fresh.close().map_err(|e| e.to_string())?;
        log.close().map_err(|e| e.to_string())?;
        fs::rename(&self.dir, &retired).map_err(|e| e.to_string())?;
        fs::rename(&rewrite, &self.dir).map_err(|e| e.to_string())?;
        *log = PartitionLog::open(&self.dir, log_config(), now).map_err(|e| e.to_string())?;
        fs::remove_dir_all(&retired).map_err(|e| e.to_string())?;
        tracing::info!(entries = entries.len(), elapsed_ms = started.elapsed().as_millis() as u64, "rewrote the offsets log");
        Ok(())
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
        if let Err(error) = self.log.lock().close() {
            tracing::error!(%error, "closing the offsets log failed");
        }
    }
}
