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

use std::fs;
use std::path::{Path, PathBuf};

use bytes::BytesMut;
use kafka_protocol::records::RecordBatchDecoder;
use parking_lot::{Mutex, MutexGuard};
use sluice_storage::{AppendMode, LogConfig, PartitionLog};

use crate::error::BrokerError;
use crate::record_batch::{BatchBuilder, BatchProducer, RecordRef};

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
/// header count (1).
const RECORD_OVERHEAD_BYTES_MAX: usize = 32;

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
    dir: PathBuf,
    log: Mutex<PartitionLog>,
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
        Ok(KeyedLog { name, dir, log: Mutex::new(log) })
    }

    /// Exclusive access for an append (and the owner's map update that must follow it in order).
    pub(crate) fn lock(&self) -> KeyedLogGuard<'_> {
        KeyedLogGuard { owner: self, log: self.log.lock() }
    }

    pub(crate) fn close(&self) {
        if let Err(error) = self.log.lock().close() {
            tracing::error!(log = self.name, %error, "closing an internal log failed");
        }
    }
}

pub(crate) struct KeyedLogGuard<'a> {
    owner: &'a KeyedLog,
    log: MutexGuard<'a, PartitionLog>,
}

impl KeyedLogGuard<'_> {
    /// Appends the entries as one batch; with `fsync`, durably. Blocking file I/O.
    pub(crate) fn append(&mut self, entries: &[KeyedEntry], fsync: bool) -> Result<(), BrokerError> {
        if entries.is_empty() {
            return Ok(());
        }
        let now = crate::now_ms();
        let mut batch = encode(entries, now);
        self.log.append(&mut batch, AppendMode::AssignOffsets { leader_epoch: 0 }, now)?;
        if fsync {
            self.log.flush()?;
        }
        Ok(())
    }

    /// Whether the log is large and mostly garbage given `live_entries` live keys of about
    /// `entry_bytes` each.
    pub(crate) fn wants_rewrite(&self, live_entries: usize, entry_bytes: u64) -> bool {
        let size = self.log.size_bytes();
        size > REWRITE_THRESHOLD_BYTES && size > REWRITE_GARBAGE_RATIO * live_entries as u64 * entry_bytes
    }

    /// Replaces the log with one holding only `live` (see the module docs). On failure the current
    /// log stays in use.
    pub(crate) fn rewrite(&mut self, live: &[(Vec<u8>, Vec<u8>)]) -> Result<(), BrokerError> {
        let started = std::time::Instant::now();
        let name = self.owner.name;
        let dir = &self.owner.dir;
        let parent = dir.parent().unwrap_or(dir);
        let rewrite = parent.join(format!("{name}{REWRITE_SUFFIX}"));
        let retired = parent.join(format!("{name}{RETIRED_SUFFIX}"));
        let now = crate::now_ms();
        let mut fresh = PartitionLog::open(&rewrite, log_config(), now)?;
        let mut start = 0;
        while start < live.len() {
            // As many entries as fit one batch (at least one: every entry was appended once already).
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
            let entries: Vec<KeyedEntry> = live[start..end].iter().map(|(k, v)| (k.clone(), Some(v.clone()))).collect();
            let mut batch = encode(&entries, now);
            fresh.append(&mut batch, AppendMode::AssignOffsets { leader_epoch: 0 }, now)?;
            start = end;
        }
        fresh.close()?;
        self.log.close()?;
        fs::rename(dir, &retired).map_err(|e| BrokerError::io(e, "retire", dir))?;
        fs::rename(&rewrite, dir).map_err(|e| BrokerError::io(e, "move into place", &rewrite))?;
        *self.log = PartitionLog::open(dir, log_config(), now)?;
        fs::remove_dir_all(&retired).map_err(|e| BrokerError::io(e, "remove", &retired))?;
        tracing::info!(log = name, entries = live.len(), elapsed_ms = started.elapsed().as_millis() as u64, "rewrote an internal log");
        Ok(())
    }
}

#[cfg(test)]
impl KeyedLogGuard<'_> {
    /// Makes every later append fail, as a disk that stopped taking writes would.
    pub(crate) fn break_for_tests(&mut self) {
        let _ = self.log.delete();
    }
}
