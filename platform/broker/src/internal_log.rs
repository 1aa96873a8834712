//! The broker's own keyed logs (`__consumer_offsets-0`, `__transaction_state-0` in the data
//! directory), kept the way Kafka keeps its internal topics: every change appends records whose key
//! names an entity and whose value is its new state; a record without a value (a tombstone) deletes
//! it. The owner rebuilds its in-memory map by replaying the log at start-up.
//!
//! Such a log is compacted by rewriting: once it holds much more than the live entries, the live map
//! is written to a fresh log beside it (`<name>.rewrite`), the old one is renamed away
//! (`<name>.retired`) and the new one takes its place. A crash mid-rewrite leaves either the old log
//! (the incomplete rewrite is discarded at the next open) or a complete new one whose swap the next
//! open finishes.
//!
//! Keys and values are opaque bytes here; the owners encode them with rmp-serde. One change is one
//! batch of at most [`BATCH_BYTES_MAX`]; owners bound what they accept so that every change fits
//! ([`record_bytes_max`] is the arithmetic, checked at compile time where the bounds are constants).
//!
//! In a cluster the clients' coordinators keep the same records in one replicated partition instead
//! ([`SharedLog`]: `__sluice_coordinator-0`, led by the coordinator), both stores in it, each key
//! prefixed with its store's tag. A change is an acks=all write there: appended in the leader epoch
//! the coordinator was loaded in, and answered once every in-sync replica holds it, so the next
//! leader's coordinator replays it. That log is compacted by snapshots instead of rewrites: each
//! store appends its live entries, then the log start moves up to the older of the two snapshots
//! (followers follow a leader's log start), see `coordinator`.

use std::fs;
use std::path::{Path, PathBuf};

use bytes::BytesMut;
use kafka_protocol::records::RecordBatchDecoder;
use std::sync::Arc;

use kafka_protocol::ResponseError;
use parking_lot::{Mutex, MutexGuard};
use sluice_storage::{AppendMode, LogConfig, PartitionLog};

use crate::error::BrokerError;
use crate::record_batch::{BatchBuilder, BatchProducer, RecordRef};
use crate::topic::Partition;

const REWRITE_SUFFIX: &str = ".rewrite";
const RETIRED_SUFFIX: &str = ".retired";
/// Bytes read per step while replaying a log at start-up.
const REPLAY_CHUNK_BYTES: usize = 4 * 1024 * 1024;
/// A log is rewritten when it exceeds this size and is several times larger than its live data.
const REWRITE_THRESHOLD_BYTES: u64 = 64 * 1024 * 1024;
const REWRITE_GARBAGE_RATIO: u64 = 4;
/// Entries per record batch when rewriting (batches are also cut before [`BATCH_BYTES_MAX`]).
const REWRITE_BATCH_ENTRIES: usize = 2000;
/// The largest batch (one change: a commit's offsets, one transactional id's state) these logs take.
/// A transaction at every cap of `transactions` is ~16 MB of state; see the assertions there.
pub(crate) const BATCH_BYTES_MAX: usize = 16 * 1024 * 1024;
/// What framing adds to a record's key and value inside a batch, at most: the length prefix (5),
/// attributes (1), timestamp delta (10), offset delta (5), key and value lengths (5 each) and the
/// header count (1), plus the store's tag in front of the key in a shared log (1).
const RECORD_OVERHEAD_BYTES_MAX: usize = 33;

/// The most bytes one record with a key of `key_bytes` and a value of `value_bytes` takes in a batch.
pub(crate) const fn record_bytes_max(key_bytes: usize, value_bytes: usize) -> usize {
    key_bytes + value_bytes + RECORD_OVERHEAD_BYTES_MAX
}

/// Bytes of records one batch may hold (the batch header takes the rest).
pub(crate) const BATCH_RECORD_BYTES_MAX: usize = BATCH_BYTES_MAX - sluice_storage::BATCH_HEADER_BYTES;

/// One record: a key and its new value, or `None` to delete the key.
pub(crate) type KeyedEntry = (Vec<u8>, Option<Vec<u8>>);

pub(crate) struct KeyedLog {
    name: &'static str,
    backend: Backend,
}

enum Backend {
    /// A log of this broker's own (`data_dir/name`), compacted by rewriting.
    Local { dir: PathBuf, log: Mutex<Box<PartitionLog>> },
    /// The store's records in the coordinator's replicated partition, keys prefixed with `tag`.
    /// The mutex orders the store's appends (the partition orders appends of both stores).
    Shared { log: Arc<SharedLog>, tag: u8, order: Mutex<()> },
}

/// The replicated partition (`__sluice_coordinator-0`) the clients' coordinators keep their state
/// in, as the leader that loaded them sees it.
pub(crate) struct SharedLog {
    partition: Arc<Partition>,
    /// The leader epoch the coordinators were loaded in: a write in any other is refused, since
    /// another leader may have written (and this one truncated) in between.
    epoch: i32,
    /// Writes are refused while the ISR is smaller, and fail if it shrinks below it before they are
    /// replicated (the topic's `min.insync.replicas`).
    min_insync: usize,
}

impl SharedLog {
    pub(crate) fn new(partition: Arc<Partition>, epoch: i32, min_insync: usize) -> Arc<SharedLog> {
        Arc::new(SharedLog { partition, epoch, min_insync })
    }

    pub(crate) fn partition(&self) -> &Arc<Partition> {
        &self.partition
    }

    pub(crate) fn epoch(&self) -> i32 {
        self.epoch
    }

    /// Whether the coordinators loaded from this log may still write to it.
    pub(crate) fn is_current(&self) -> bool {
        self.partition.is_leader() && self.partition.leader_epoch() == self.epoch
    }

    /// Appends `batch` as an acks=all write and waits until the in-sync replicas hold it. Returns
    /// the offset of its first record. Refusals are the coordinator's (clients retry both, the first
    /// after finding the coordinator again). Blocking.
    fn write(&self, batch: &mut [u8]) -> Result<i64, BrokerError> {
        if !self.is_current() {
            return Err(BrokerError::Protocol(ResponseError::NotCoordinator));
        }
        if self.partition.is_replicated() && self.partition.isr_len() < self.min_insync {
            return Err(BrokerError::Protocol(ResponseError::CoordinatorNotAvailable));
        }
        let now = crate::now_ms();
        let appended =
            self.partition.append(batch, AppendMode::AssignOffsets { leader_epoch: self.epoch }, now).map_err(|error| match error {
                sluice_storage::StorageError::NotLeader(_) => BrokerError::Protocol(ResponseError::NotCoordinator),
                other => BrokerError::Storage(other),
            })?;
        let end = appended.last_offset + 1;
        let wait = self.partition.wait_marker(end, self.epoch, self.min_insync);
        let waited = match tokio::runtime::Handle::try_current() {
            Ok(handle) => tokio::task::block_in_place(|| handle.block_on(wait)),
            Err(_) => self.partition.flush_blocking().map_err(BrokerError::Storage),
        };
        match waited {
            Ok(()) => Ok(appended.base_offset),
            Err(BrokerError::NotLeader { .. }) => Err(BrokerError::Protocol(ResponseError::NotCoordinator)),
            Err(BrokerError::NotEnoughReplicas { .. } | BrokerError::NotEnoughReplicasAfterAppend { .. } | BrokerError::Timeout(_)) => {
                Err(BrokerError::Protocol(ResponseError::CoordinatorNotAvailable))
            }
            Err(other) => Err(other),
        }
    }

    /// Bytes the log holds now.
    pub(crate) fn size_bytes(&self) -> u64 {
        self.partition.stats().size_bytes
    }

    /// Drops everything before `offset` (both stores snapshotted their live entries at or after it).
    pub(crate) fn truncate_before(&self, offset: i64) -> Result<i64, BrokerError> {
        if !self.is_current() {
            return Err(BrokerError::Protocol(ResponseError::NotCoordinator));
        }
        self.partition.delete_records_before(offset).map_err(BrokerError::Storage)
    }
}

fn log_config() -> LogConfig {
    LogConfig {
        retention_ms: None,
        retention_bytes: None,
        delete_enabled: false,
        segment_bytes: 64 * 1024 * 1024,
        max_batch_bytes: BATCH_BYTES_MAX as u32,
        ..LogConfig::default()
    }
}

fn encode(entries: &[KeyedEntry], now: i64) -> BytesMut {
    let mut builder = BatchBuilder::new(BatchProducer::NONE);
    for (key, value) in entries {
        builder.push(&RecordRef { key: Some(key), value: value.as_deref(), headers: &[], timestamp_ms: now });
    }
    builder.finish()
}

/// The entries of a store tagged for the shared log: each key prefixed with `tag`.
fn encode_tagged(tag: u8, entries: &[KeyedEntry], now: i64) -> BytesMut {
    let mut builder = BatchBuilder::new(BatchProducer::NONE);
    let mut key = Vec::new();
    for (k, value) in entries {
        key.clear();
        key.push(tag);
        key.extend_from_slice(k);
        builder.push(&RecordRef { key: Some(&key), value: value.as_deref(), headers: &[], timestamp_ms: now });
    }
    builder.finish()
}

/// The end of the next batch of `live` from `start`: as many entries as fit one batch (at least
/// one: every entry was appended once already, so it fits).
fn batch_end(live: &[(Vec<u8>, Vec<u8>)], start: usize) -> usize {
    let mut end = start;
    let mut bytes = 0;
    while let Some((key, value)) = live.get(end) {
        let record = record_bytes_max(key.len(), value.len());
        if end > start && (end - start == REWRITE_BATCH_ENTRIES || bytes + record > BATCH_RECORD_BYTES_MAX) {
            break;
        }
        bytes += record;
        end += 1;
    }
    end
}

fn replay(dir: &Path, log: &PartitionLog, each: &mut impl FnMut(&[u8], Option<&[u8]>)) -> Result<(), BrokerError> {
    let mut position = log.log_start_offset();
    let end = log.log_end_offset();
    while position < end {
        let read = log.read(position, REPLAY_CHUNK_BYTES, end, true)?;
        if read.bytes.is_empty() {
            break;
        }
        let mut bytes = read.bytes;
        let sets = RecordBatchDecoder::decode_all(&mut bytes).map_err(|e| BrokerError::Corrupt {
            path: dir.to_path_buf(),
            reason: format!("undecodable batch near offset {position}: {e}"),
        })?;
        for record in sets.iter().flat_map(|s| s.records.iter()) {
            position = position.max(record.offset + 1);
            match &record.key {
                Some(key) => each(key, record.value.as_deref()),
                None => tracing::warn!(log = %dir.display(), offset = record.offset, "skipping a keyless record"),
            }
        }
    }
    Ok(())
}

/// Replays the records of store `tag` in the shared log, from its start to its end (a new leader's
/// log is the one its followers will hold, beyond the high watermark too).
fn replay_shared(log: &SharedLog, tag: u8, each: &mut impl FnMut(&[u8], Option<&[u8]>)) -> Result<(), BrokerError> {
    let partition = log.partition();
    let mut position = partition.log_start_offset();
    let end = partition.log_end_offset();
    while position < end {
        let read = partition.read_to_end(position, REPLAY_CHUNK_BYTES)?;
        if read.bytes.is_empty() {
            break;
        }
        let mut bytes = read.bytes;
        let sets = RecordBatchDecoder::decode_all(&mut bytes).map_err(|e| BrokerError::Corrupt {
            path: partition.dir().to_path_buf(),
            reason: format!("undecodable batch near offset {position}: {e}"),
        })?;
        let before = position;
        for record in sets.iter().flat_map(|s| s.records.iter()) {
            position = position.max(record.offset + 1);
            match record.key.as_deref() {
                Some([first, key @ ..]) if *first == tag => each(key, record.value.as_deref()),
                Some([_, ..]) => {}
                _ => tracing::warn!(offset = record.offset, "skipping a record without a store tag in the coordinator log"),
            }
        }
        // Control batches and empty batches hold no records: step over what was read.
        position = position.max(read.next_offset);
        if position == before {
            break;
        }
    }
    Ok(())
}

impl KeyedLog {
    /// Opens `data_dir/name` (finishing or discarding an interrupted rewrite) and replays every record
    /// into `each`, oldest first.
    pub(crate) fn open(
        data_dir: &Path,
        name: &'static str,
        now: i64,
        mut each: impl FnMut(&[u8], Option<&[u8]>),
    ) -> Result<KeyedLog, BrokerError> {
        let dir = data_dir.join(name);
        let rewrite = data_dir.join(format!("{name}{REWRITE_SUFFIX}"));
        let retired = data_dir.join(format!("{name}{RETIRED_SUFFIX}"));
        // A finished rewrite whose swap was cut short: the new log is complete once the old one has
        // been retired, so finish the swap; otherwise the rewrite is incomplete and discarded.
        if !dir.exists() && rewrite.exists() && retired.exists() {
            fs::rename(&rewrite, &dir).map_err(|e| BrokerError::io(e, "finish the rewrite by renaming", &rewrite))?;
        }
        for leftover in [&rewrite, &retired] {
            if leftover.exists() {
                fs::remove_dir_all(leftover).map_err(|e| BrokerError::io(e, "remove", leftover))?;
            }
        }
        let log = PartitionLog::open(&dir, log_config(), now)?;
        replay(&dir, &log, &mut each)?;
        Ok(KeyedLog { name, backend: Backend::Local { dir, log: Mutex::new(Box::new(log)) } })
    }

    /// The records of store `tag` in the coordinator's replicated log, replayed into `each` oldest
    /// first. Blocking file I/O.
    pub(crate) fn open_shared(
        log: Arc<SharedLog>,
        name: &'static str,
        tag: u8,
        mut each: impl FnMut(&[u8], Option<&[u8]>),
    ) -> Result<KeyedLog, BrokerError> {
        replay_shared(&log, tag, &mut each)?;
        Ok(KeyedLog { name, backend: Backend::Shared { log, tag, order: Mutex::new(()) } })
    }

    /// Exclusive access for an append (and the owner's map update that must follow it in order).
    pub(crate) fn lock(&self) -> KeyedLogGuard<'_> {
        let held = match &self.backend {
            Backend::Local { log, .. } => Held::Local(log.lock()),
            Backend::Shared { order, .. } => Held::Shared(order.lock()),
        };
        KeyedLogGuard { owner: self, held }
    }

    pub(crate) fn close(&self) {
        if let Backend::Local { log, .. } = &self.backend
            && let Err(error) = log.lock().close()
        {
            tracing::error!(log = self.name, %error, "closing an internal log failed");
        }
    }
}

enum Held<'a> {
    Local(MutexGuard<'a, Box<PartitionLog>>),
    Shared(#[allow(dead_code)] MutexGuard<'a, ()>),
}

pub(crate) struct KeyedLogGuard<'a> {
    owner: &'a KeyedLog,
    held: Held<'a>,
}

impl KeyedLogGuard<'_> {
    /// Appends the entries as one batch; with `fsync`, durably (a shared log's writes are always
    /// acks=all). Blocking file I/O.
    pub(crate) fn append(&mut self, entries: &[KeyedEntry], fsync: bool) -> Result<(), BrokerError> {
        if entries.is_empty() {
            return Ok(());
        }
        let now = crate::now_ms();
        match (&mut self.held, &self.owner.backend) {
            (Held::Local(log), _) => {
                let mut batch = encode(entries, now);
                log.append(&mut batch, AppendMode::AssignOffsets { leader_epoch: 0 }, now)?;
                if fsync {
                    log.flush()?;
                }
            }
            (Held::Shared(_), Backend::Shared { log, tag, .. }) => {
                let mut batch = encode_tagged(*tag, entries, now);
                log.write(&mut batch)?;
            }
            (Held::Shared(_), Backend::Local { .. }) => unreachable!("a guard holds its own backend's lock"),
        }
        Ok(())
    }

    /// Whether the log is large and mostly garbage given `live_entries` live keys of about
    /// `entry_bytes` each. Never for a shared log: the coordinators compact it together.
    pub(crate) fn wants_rewrite(&self, live_entries: usize, entry_bytes: u64) -> bool {
        let Held::Local(log) = &self.held else { return false };
        let size = log.size_bytes();
        size > REWRITE_THRESHOLD_BYTES && size > REWRITE_GARBAGE_RATIO * live_entries as u64 * entry_bytes
    }

    /// A shared log's snapshot: appends `live` (every live entry of this store) and returns the
    /// offset it starts at. None of this store's records before that offset is needed any more.
    /// Blocking.
    pub(crate) fn snapshot(&mut self, live: &[(Vec<u8>, Vec<u8>)]) -> Result<i64, BrokerError> {
        let Backend::Shared { log, tag, .. } = &self.owner.backend else {
            return Err(BrokerError::InvalidRequest(format!("{} is not a shared log", self.owner.name)));
        };
        let now = crate::now_ms();
        let mut first = None;
        let mut start = 0;
        while start < live.len() {
            let end = batch_end(live, start);
            let entries: Vec<KeyedEntry> = live[start..end].iter().map(|(k, v)| (k.clone(), Some(v.clone()))).collect();
            let offset = log.write(&mut encode_tagged(*tag, &entries, now))?;
            first.get_or_insert(offset);
            start = end;
        }
        // Nothing live: everything this store wrote before now is garbage.
        Ok(first.unwrap_or_else(|| log.partition().log_end_offset()))
    }

    /// Replaces the log with one holding only `live` (see the module docs). On failure the current
    /// log stays in use.
    pub(crate) fn rewrite(&mut self, live: &[(Vec<u8>, Vec<u8>)]) -> Result<(), BrokerError> {
        let Backend::Local { dir, .. } = &self.owner.backend else {
            return self.snapshot(live).map(drop);
        };
        let Held::Local(log) = &mut self.held else { unreachable!("a guard holds its own backend's lock") };
        let started = std::time::Instant::now();
        let name = self.owner.name;
        let parent = dir.parent().unwrap_or(dir);
        let rewrite = parent.join(format!("{name}{REWRITE_SUFFIX}"));
        let retired = parent.join(format!("{name}{RETIRED_SUFFIX}"));
        let now = crate::now_ms();
        let mut fresh = PartitionLog::open(&rewrite, log_config(), now)?;
        let mut start = 0;
        while start < live.len() {
            let end = batch_end(live, start);
            let entries: Vec<KeyedEntry> = live[start..end].iter().map(|(k, v)| (k.clone(), Some(v.clone()))).collect();
            let mut batch = encode(&entries, now);
            fresh.append(&mut batch, AppendMode::AssignOffsets { leader_epoch: 0 }, now)?;
            start = end;
        }
        fresh.close()?;
        log.close()?;
        fs::rename(dir, &retired).map_err(|e| BrokerError::io(e, "retire", dir))?;
        fs::rename(&rewrite, dir).map_err(|e| BrokerError::io(e, "move into place", &rewrite))?;
        ***log = PartitionLog::open(dir, log_config(), now)?;
        fs::remove_dir_all(&retired).map_err(|e| BrokerError::io(e, "remove", &retired))?;
        tracing::info!(log = name, entries = live.len(), elapsed_ms = started.elapsed().as_millis() as u64, "rewrote an internal log");
        Ok(())
    }
}

#[cfg(test)]
impl KeyedLogGuard<'_> {
    /// Makes every later append fail, as a disk that stopped taking writes would.
    pub(crate) fn break_for_tests(&mut self) {
        if let Held::Local(log) = &mut self.held {
            let _ = log.delete();
        }
    }
}
