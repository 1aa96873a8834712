//! `PartitionLog`: the ordered segments of one partition, and everything the broker does with them —
//! append (validate, check idempotent sequences, assign offsets by header rewrite, one write),
//! read (whole stored batches, byte for byte), segment rolls, retention, DeleteRecords, flushing,
//! crash recovery at open, and for replication the leader-epoch cache and truncation of a divergent
//! tail (`truncate_to`).
//!
//! It sits between the broker's `Partition` (which holds it under a lock and adds the high watermark
//! and group commit) and the files: `segment` owns each `.log` with its indexes, `batch` validates
//! and rewrites bytes, `producer` tracks idempotent producers, `epoch` the leader epochs.
//!
//! Files in a partition directory, besides the segments:
//! - `log-start-offset`: the DeleteRecords log start offset, written durably (temp, fsync, rename).
//! - `recovery-point`: every offset below it was fsynced; after an unclean shutdown recovery scans in
//!   full only the segments at or after it. Rewritten at each roll (which fsyncs the rolled segment)
//!   and at close.
//! - `clean-shutdown`: written by `close` after everything was fsynced; removed at open and before the
//!   first change after a close. Its presence lets recovery scan only each segment's unindexed tail.
//! - `producer-state`: idempotent-producer state (with ongoing transactions) as of the log end, written
//!   by `close` and used (then removed) by the next open only after a clean shutdown; otherwise the
//!   state is rebuilt by walking batch headers.
//! - `aborted-txns`: the aborted-transaction index (see `txn`).
//! - `leader-epoch-checkpoint`: the leader-epoch cache (see `epoch`), replaced durably before the
//!   first batch of a new epoch is written and whenever retention, DeleteRecords or a truncation
//!   changes it.

use std::collections::VecDeque;
use std::fs;
use std::mem;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use crate::batch::{self, BatchHeader, Origin, TimestampType, TxnMarker, ValidatedBatch};
use crate::epoch::{LEADER_EPOCH_FILE, LeaderEpochCache};
use crate::error::{IoContext, StorageError};
use crate::fs::{Durability, TEMP_SUFFIX, sync_dir, write_atomically};
use crate::index::remove_if_present;
use crate::producer::{PRODUCER_ID_EXPIRATION_MS, PRODUCER_SNAPSHOT_BYTES_MAX, Pending, ProducerStateTable, SequenceCheck};
use crate::segment::{
    BatchScanner, INDEX_SUFFIX, LOG_SUFFIX, POSITION_MAX, RELATIVE_OFFSET_MAX, RecoveryScan, SCAN_BUFFER_BYTES, Segment, TIME_INDEX_SUFFIX,
};
use crate::txn::{ABORTED_TXNS_FILE, AbortedIndex, AbortedTxn};

/// Largest `segment.bytes`: index entries store file positions as u32, and keeping segments below
/// 2 GiB (Kafka's own limit, `Int.MAX_VALUE`) leaves every batch start representable. Larger
/// configured values are clamped to this.
pub const SEGMENT_BYTES_MAX: u64 = i32::MAX as u64;
/// Largest buffer one `append` accepts. The broker's frame limit is far below; this bounds positions.
pub const APPEND_BYTES_MAX: usize = i32::MAX as usize;
/// Most bytes one `read` returns (beyond a single larger first batch under `min_one`), whatever
/// `max_bytes` the caller passes: a fetch's `max_bytes` comes from the client.
pub const READ_BYTES_MAX: usize = 128 * 1024 * 1024;
/// The small offset files hold one decimal i64; anything longer is not ours.
const OFFSET_FILE_BYTES_MAX: usize = 64;

const LOG_START_OFFSET_FILE: &str = "log-start-offset";
const RECOVERY_POINT_FILE: &str = "recovery-point";
const CLEAN_SHUTDOWN_FILE: &str = "clean-shutdown";
const PRODUCER_SNAPSHOT_FILE: &str = "producer-state";
/// Offset below which producer state belongs to another cluster (a promoted mirror): see
/// [`PartitionLog::fence_producers`].
const PRODUCER_FENCE_FILE: &str = "producer-fence";

const DAY_MS: u64 = 24 * 60 * 60 * 1000;
/// Kafka 4.0's default `message.timestamp.after.max.ms`: one hour.
pub const TIMESTAMP_AFTER_MAX_MS_DEFAULT: u64 = 60 * 60 * 1000;

/// A topic's storage settings, by Kafka's names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// segment.bytes, default 1 GiB; clamped to `SEGMENT_BYTES_MAX`.
    pub segment_bytes: u64,
    /// segment.ms, default 7 days; None = never roll on time.
    pub segment_ms: Option<u64>,
    /// retention.ms, default 7 days; None = keep forever (-1 in Kafka).
    pub retention_ms: Option<u64>,
    /// retention.bytes; None = unlimited (-1).
    pub retention_bytes: Option<u64>,
    /// index.interval.bytes, default 4096.
    pub index_interval_bytes: u32,
    /// max.message.bytes, default 1048588.
    pub max_batch_bytes: u32,
    /// message.timestamp.type.
    pub timestamp_type: TimestampType,
    /// cleanup.policy contains "delete".
    pub delete_enabled: bool,
    /// message.timestamp.after.max.ms: how far ahead of the broker's clock a CreateTime record's
    /// timestamp may be. Default 1 hour (Kafka 4.0); `u64::MAX` or anything beyond `i64::MAX` turns
    /// the check off. It also bounds how long a future-dated record already on disk can hold its
    /// segment back from time retention (see `enforce_retention`).
    pub timestamp_after_max_ms: u64,
    /// message.timestamp.before.max.ms: how far behind the broker's clock a CreateTime record's
    /// timestamp may be. Default `i64::MAX` as in Kafka, which accepts any past timestamp.
    pub timestamp_before_max_ms: u64,
    /// producer.id.expiration.ms: idempotent-producer state is forgotten this long after the
    /// producer's last append (broker time).
    pub producer_id_expiration_ms: u64,
}

impl Default for LogConfig {
    fn default() -> LogConfig {
        LogConfig {
            segment_bytes: 1024 * 1024 * 1024,
            segment_ms: Some(7 * DAY_MS),
            retention_ms: Some(7 * DAY_MS),
            retention_bytes: None,
            index_interval_bytes: 4096,
            max_batch_bytes: batch::MAX_BATCH_BYTES_DEFAULT,
            timestamp_type: TimestampType::CreateTime,
            delete_enabled: true,
            timestamp_after_max_ms: TIMESTAMP_AFTER_MAX_MS_DEFAULT,
            timestamp_before_max_ms: i64::MAX as u64,
            producer_id_expiration_ms: PRODUCER_ID_EXPIRATION_MS as u64,
        }
    }
}

impl LogConfig {
    fn producer_expiration_ms(&self) -> i64 {
        i64::try_from(self.producer_id_expiration_ms).unwrap_or(i64::MAX)
    }

    fn sanitized(mut self) -> LogConfig {
        self.segment_bytes = self.segment_bytes.min(SEGMENT_BYTES_MAX);
        self
    }
}

/// How `append` treats the offsets in the batches it is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendMode {
    /// Producer batches: the log assigns offsets by rewriting each batch's base offset.
    AssignOffsets { leader_epoch: i32 },
    /// Replica / offset-preserving mirror batches: offsets already assigned; must be > log end
    /// offset - 1 (gaps allowed), strictly increasing.
    PreserveOffsets,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendResult {
    /// Offset of the first record appended (or of the duplicate's original).
    pub base_offset: i64,
    pub last_offset: i64,
    /// -1 unless LogAppendTime.
    pub log_append_time: i64,
    pub log_start_offset: i64,
    /// Records appended (0 for a duplicate).
    pub record_count: u64,
    pub byte_count: u64,
    /// An idempotent retry: nothing appended, original offsets returned.
    pub duplicate: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadResult {
    /// Whole stored batches, byte for byte as appended.
    pub bytes: Bytes,
    /// The offset after the last batch returned (`offset` itself when nothing was).
    pub next_offset: i64,
    pub log_start_offset: i64,
    pub log_end_offset: i64,
}

/// `len` stored bytes at `position` of a segment file: whole batches, to be sent as they are.
#[derive(Debug, Clone)]
pub struct FileSlice {
    pub file: Arc<fs::File>,
    pub position: u64,
    pub len: usize,
}

impl FileSlice {
    /// Appends the slice's bytes to `out` (for peers that cannot take the file itself).
    pub fn read_into(&self, out: &mut Vec<u8>) -> std::io::Result<()> {
        crate::segment::pread_into(&self.file, out, self.position, self.len)
    }
}

/// A read as file slices: see [`PartitionLog::read_slices`].
#[derive(Debug, Clone)]
pub struct SlicedRead {
    pub slices: Vec<FileSlice>,
    /// Sum of the slices' lengths.
    pub bytes: usize,
    /// The offset after the last batch returned (`offset` itself when nothing was).
    pub next_offset: i64,
    pub log_start_offset: i64,
    pub log_end_offset: i64,
}

/// Segment ranges of a read, in log order, with their total and the offset after the last batch.
struct ReadPlan<'a> {
    ranges: Vec<(&'a Segment, u64, usize)>,
    bytes: usize,
    next_offset: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetentionStats {
    pub segments_deleted: usize,
    pub bytes_deleted: u64,
}

/// Whether the log serves reads and takes writes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Availability {
    Online,
    /// A write left memory and disk in doubt (see `fail_writes`): reads go on, every change is
    /// refused until a restart rebuilds the state from the files.
    WritesFailed(String),
    /// The partition could not be opened (see `offline`): every call that touches data fails.
    Offline(String),
}

#[derive(Debug)]
pub struct PartitionLog {
    dir: PathBuf,
    config: LogConfig,
    /// Segments rolled away (fsynced, no longer appended to), oldest first.
    sealed: VecDeque<Segment>,
    /// The segment appends go to; its base offset is above every sealed segment's.
    active: Segment,
    log_start_offset: i64,
    recovery_point: i64,
    producers: ProducerStateTable,
    aborted: AbortedIndex,
    /// First offset of each leader epoch still in the log; mirrored in `leader-epoch-checkpoint`.
    epochs: LeaderEpochCache,
    /// The clean-shutdown marker is on disk (after `close`); removed before the next change.
    clean_marker: bool,
    /// `delete` removed the directory; every later call fails.
    deleted: bool,
    availability: Availability,
    /// Reused across appends so validating a buffer allocates nothing in the steady state.
    scratch: Vec<ValidatedBatch>,
}

impl PartitionLog {
    /// Opens (creating if absent) the partition directory and runs crash recovery: every segment's
    /// tail after its last trustworthy index entry is CRC-checked, and after an unclean shutdown every
    /// segment at or after the recovery point is checked in full. An invalid batch in the active
    /// segment beyond the recovery point is a torn write and is cut off; anywhere else it is
    /// corruption of acknowledged data, and the segment's bytes from there on are quarantined (kept on
    /// disk, never served, reported) while every later segment stays. Offsets below the recovery point
    /// are never given out again. Then idempotent-producer state is rebuilt from the batch headers.
    pub fn open(dir: &Path, config: LogConfig, now_ms: i64) -> Result<PartitionLog, StorageError> {
        let config = config.sanitized();
        fs::create_dir_all(dir).context(|| format!("create partition directory {}", dir.display()))?;
        let bases = list_segments(dir)?;
        let marker = dir.join(CLEAN_SHUTDOWN_FILE);
        let clean = marker.exists();
        // A producer snapshot describes the log only as `close` left it: read it after a clean shutdown,
        // and in every case remove it before anything can change.
        let snapshot_path = dir.join(PRODUCER_SNAPSHOT_FILE);
        let snapshot = if clean { read_producer_snapshot(&snapshot_path) } else { None };
        remove_if_present(&snapshot_path)?;
        if clean {
            // Gone before anything can change, and durably so: a crash from here on is unclean.
            remove_if_present(&marker)?;
            sync_dir(dir)?;
        }
        let recovery_point = read_offset_file(dir, RECOVERY_POINT_FILE).unwrap_or(0);
        let persisted_start = read_offset_file(dir, LOG_START_OFFSET_FILE).unwrap_or(0).max(0);

        let mut scanner = BatchScanner::new(SCAN_BUFFER_BYTES);
        let mut segments = Vec::with_capacity(bases.len());
        // Acknowledged data was found missing or corrupt: state saved by `close` no longer describes
        // the log, even where the offsets still line up.
        let mut lost_acknowledged = false;
        for (i, &base) in bases.iter().enumerate() {
            let next_base = bases.get(i + 1).copied();
            let scan = if !clean && next_base.is_none_or(|next| next > recovery_point) { RecoveryScan::Full } else { RecoveryScan::Tail };
            let (mut segment, recovered) = Segment::recover(dir, base, next_base, scan, config.index_interval_bytes, &mut scanner)?;
            if let Some((position, reason)) = recovered.invalid {
                // Only the tail of the last segment can be a torn write, and only beyond what was on
                // stable storage: everything else was acknowledged, and cutting it would also hand
                // its offsets out again.
                let torn_tail = next_base.is_none() && segment.next_offset() >= recovery_point;
                if torn_tail {
                    tracing::warn!(dir = %dir.display(), segment = base, position, reason, "recovery cut a torn or invalid tail off the active segment");
                    segment.cut_invalid_tail()?;
                } else {
                    tracing::error!(
                        dir = %dir.display(),
                        segment = base,
                        position,
                        reason,
                        first_lost_offset = segment.next_offset(),
                        next_segment = ?next_base,
                        recovery_point,
                        "CORRUPT SEGMENT: an invalid batch in acknowledged data; its bytes are quarantined (kept in the file, never served) and later segments are kept"
                    );
                    segment.quarantine(position, reason);
                    lost_acknowledged = true;
                }
            }
            if next_base.is_some() {
                segment.seal();
            }
            segments.push(segment);
        }
        // An empty segment after others holds nothing (a roll interrupted before its first append, or
        // a segment cut to nothing): dropping it keeps the log end at the last batch. A quarantined
        // segment is never dropped: its bytes are the evidence.
        // Offsets below an empty segment's base were handed out before it was created.
        let mut end_floor = recovery_point;
        while segments.len() > 1 && segments.last().is_some_and(|s| s.is_empty() && s.quarantined().is_none()) {
            if let Some(empty) = segments.pop() {
                end_floor = end_floor.max(empty.base_offset());
                empty.delete_files()?;
            }
        }
        // The next offset is never below the recovery point, nor after a quarantined last segment:
        // offsets handed out before must not be handed out again.
        let quarantined_last = segments.last().is_some_and(|s| s.quarantined().is_some());
        let active = match segments.pop() {
            Some(mut last) if quarantined_last || last.next_offset() < recovery_point => {
                let base = last.next_offset().max(end_floor);
                if last.next_offset() < recovery_point {
                    lost_acknowledged = true;
                    tracing::error!(dir = %dir.display(), recovered_end = last.next_offset(), recovery_point, "the log ends below its recovery point; offsets up to it are not reused");
                }
                if last.is_empty() && last.quarantined().is_none() {
                    last.delete_files()?;
                } else {
                    last.seal();
                    segments.push(last);
                }
                let active = Segment::create(dir, base)?;
                sync_dir(dir)?;
                active
            }
            Some(mut active) => {
                active.activate()?;
                active
            }
            None => {
                let active = Segment::create(dir, persisted_start.max(recovery_point))?;
                sync_dir(dir)?;
                active
            }
        };

        let mut log = PartitionLog {
            dir: dir.to_path_buf(),
            config,
            sealed: segments.into(),
            active,
            log_start_offset: 0,
            recovery_point: 0,
            producers: ProducerStateTable::default(),
            aborted: AbortedIndex::empty(dir),
            epochs: LeaderEpochCache::default(),
            clean_marker: false,
            deleted: false,
            availability: Availability::Online,
            scratch: Vec::new(),
        };
        log.log_start_offset = persisted_start.max(log.first_segment_base());
        if log.log_start_offset > log.log_end_offset() {
            // DeleteRecords moved the start past data a crash then took back: the log restarts empty at
            // the start offset, so no offset is ever handed out twice.
            tracing::warn!(dir = %dir.display(), log_start_offset = log.log_start_offset, log_end_offset = log.log_end_offset(), "log start is beyond the recovered log end; starting empty");
            for segment in mem::take(&mut log.sealed) {
                segment.delete_files()?;
            }
            log.active.delete_files()?;
            log.active = Segment::create(dir, log.log_start_offset)?;
            sync_dir(dir)?;
        }
        // DeleteRecords persists the start before deleting segments; finish what a crash interrupted.
        log.delete_segments_below_start()?;
        let end = log.log_end_offset();
        log.recovery_point = if clean { end } else { recovery_point.clamp(0, end) };
        log.aborted = AbortedIndex::load(dir, log.log_start_offset, end);
        match snapshot {
            Some((offset, producers)) if offset == end && !lost_acknowledged => {
                log.producers = producers;
                log.producers.expire(now_ms.saturating_sub(log.config.producer_expiration_ms()));
            }
            _ => log.rebuild_producer_state(now_ms, &mut scanner),
        }
        if let Some(fence) = read_offset_file(dir, PRODUCER_FENCE_FILE) {
            // Never above the log's end: what a lost tail held is not there to be forgotten, and
            // local batches written at those offsets again must keep their state.
            log.producers.forget_before(fence.min(end));
        }
        if log.aborted.file_differs() {
            let aborted = &log.aborted;
            aborted.rewrite(|bytes| write_file_atomically(dir, ABORTED_TXNS_FILE, bytes, true))?;
        }
        log.load_epochs()?;
        tracing::debug!(dir = %dir.display(), clean, segments = log.segment_count(), log_start_offset = log.log_start_offset, log_end_offset = end, producers = log.producers.len(), "opened log");
        Ok(log)
    }

    /// A partition that could not be opened: it holds no file, every read or write fails with
    /// `Offline` naming `reason`, and retention and `close` leave it alone. The broker uses it to start
    /// with the partitions it can open and answer KAFKA_STORAGE_ERROR for the others, instead of not
    /// starting at all.
    pub fn offline(dir: &Path, config: LogConfig, reason: String) -> PartitionLog {
        PartitionLog {
            dir: dir.to_path_buf(),
            config: config.sanitized(),
            sealed: VecDeque::new(),
            active: Segment::detached(dir, 0),
            log_start_offset: 0,
            recovery_point: 0,
            producers: ProducerStateTable::default(),
            aborted: AbortedIndex::empty(dir),
            epochs: LeaderEpochCache::default(),
            clean_marker: false,
            deleted: false,
            availability: Availability::Offline(reason),
            scratch: Vec::new(),
        }
    }

    /// Loads the leader-epoch checkpoint at open and fits it to the recovered log (see
    /// `LeaderEpochCache::trim`: entries a crash took the batches of go). A log with batches and no
    /// usable checkpoint (none, damaged, or too long) starts from one entry, epoch 0 at the log start
    /// (see `LeaderEpochCache::seeded`). The file is rewritten when it differs from the result.
    fn load_epochs(&mut self) -> Result<(), StorageError> {
        let (start, end) = (self.log_start_offset, self.log_end_offset());
        let on_disk = LeaderEpochCache::load(&self.dir);
        let mut epochs = match &on_disk {
            Some(loaded) => loaded.clone(),
            None if start < end => LeaderEpochCache::seeded(start),
            None => LeaderEpochCache::default(),
        };
        epochs.trim(start, end);
        // No file is created for a log that has no epoch to record; a damaged one is replaced.
        let nothing_to_write = on_disk.is_none() && epochs.entries().is_empty() && !self.dir.join(LEADER_EPOCH_FILE).exists();
        if on_disk.as_ref() != Some(&epochs) && !nothing_to_write {
            write_file_atomically(&self.dir, LEADER_EPOCH_FILE, &epochs.encode_with(&[]), true)?;
        }
        self.epochs = epochs;
        Ok(())
    }

    /// Why the partition serves nothing, if it is offline (see `offline`).
    pub fn offline_reason(&self) -> Option<&str> {
        match &self.availability {
            Availability::Offline(reason) => Some(reason),
            _ => None,
        }
    }

    /// Segments whose tail recovery quarantined (an invalid batch in acknowledged data): their bytes
    /// from there on stay in the file and are never served. Reported at open; re-found at each open
    /// until the segment is deleted (by retention, or by an operator after looking at it).
    pub fn quarantined_segment_count(&self) -> usize {
        self.segments().filter(|s| s.quarantined().is_some()).count()
    }

    /// Walks batch headers to rebuild idempotent-producer state, ongoing transactions and recent aborts.
    /// Segments whose newest batch is older than the producer expiration cannot hold a live producer's
    /// state (nor an open transaction: transactions time out within minutes) and are skipped. Failures
    /// are logged, not fatal: the log itself is intact, only duplicate detection is weakened.
    fn rebuild_producer_state(&mut self, now_ms: i64, scanner: &mut BatchScanner) {
        let cutoff = now_ms.saturating_sub(self.config.producer_expiration_ms());
        let producers = &mut self.producers;
        let aborted = &mut self.aborted;
        let log_start = self.log_start_offset;
        for segment in self.sealed.iter().chain([&self.active]) {
            // Skip only what is old by both clocks: producers' timestamps can be days old on data
            // written a minute ago (reprocessing keeps input timestamps), and a segment holding an
            // open transaction must never be skipped.
            let old_records = segment.max_timestamp().is_none_or(|(timestamp, _)| timestamp < cutoff);
            if old_records && segment.last_write_ms() < cutoff {
                continue;
            }
            // The append times are not in the log; the segment's last write bounds them from above,
            // so recovered producers expire no earlier than they would have.
            let seen_ms = segment.last_write_ms().min(now_ms);
            let walked = segment.for_each_header(scanner, |header, position| {
                if header.is_control() {
                    match segment.control_type_at(position) {
                        Some(control) => {
                            if let Some(entry) = producers.record_marker(header, control, seen_ms)
                                && entry.last_offset >= log_start
                                && aborted.insert(entry)
                            {
                                tracing::info!(
                                    producer_id = entry.producer_id,
                                    marker = entry.last_offset,
                                    "recovered an aborted transaction from the log"
                                );
                            }
                        }
                        None => tracing::warn!(offset = header.base_offset, "unreadable control record; marker ignored"),
                    }
                } else if header.is_idempotent() {
                    producers.record(header, seen_ms);
                }
            });
            if let Err(error) = walked {
                tracing::warn!(dir = %self.dir.display(), segment = segment.base_offset(), %error, "could not rebuild producer state from a segment");
            }
        }
        producers.expire(cutoff);
    }

    /// Appends a buffer of concatenated batches: validates all of them first (nothing is written if
    /// any fails), checks idempotent sequences, assigns or checks offsets, then writes the buffer to
    /// the active segment in one write (rolling first when due). Assigning offsets rewrites the
    /// batches' headers in place; [`PartitionLog::append_preserved`] is the same append for batches
    /// whose offsets are set already, from a buffer it does not modify.
    pub fn append(&mut self, batches: &mut [u8], mode: AppendMode, now_ms: i64) -> Result<AppendResult, StorageError> {
        let AppendMode::AssignOffsets { leader_epoch } = mode else {
            return self.append_preserved(batches, now_ms);
        };
        self.checked_append(batches.len(), |log, validated| {
            batch::validate(batches, log.config.max_batch_bytes, Origin::Client, validated)?;
            log.assign_and_write(batches, leader_epoch, now_ms, validated)
        })
    }

    /// Appends batches whose offsets were assigned elsewhere (a leader's, for a follower; a source
    /// cluster's, for a mirror), as they are: each must start at or after the log's end, in
    /// increasing order (gaps are allowed: the source may have compacted or deleted records).
    pub fn append_preserved(&mut self, batches: &[u8], now_ms: i64) -> Result<AppendResult, StorageError> {
        self.checked_append(batches.len(), |log, validated| {
            // `max.message.bytes` limits producers. These batches were accepted under the limit of
            // the cluster that assigned their offsets and must not be refused here for a smaller
            // one; the whole append stays bounded by APPEND_BYTES_MAX.
            batch::validate(batches, u32::try_from(APPEND_BYTES_MAX).unwrap_or(u32::MAX), Origin::Replica, validated)?;
            let log_end = log.log_end_offset();
            let mut lowest = log_end;
            for (i, batch) in validated.iter().enumerate() {
                let header = &batch.header;
                if header.base_offset < lowest {
                    return Err(StorageError::InvalidRecord(format!(
                        "batch {i} has base offset {}; offsets must be at least {lowest} (log end offset {log_end}) and strictly increasing",
                        header.base_offset
                    )));
                }
                let Some(last) = header.base_offset.checked_add(i64::from(header.last_offset_delta)).filter(|l| *l < i64::MAX) else {
                    return Err(StorageError::InvalidRecord(format!("batch {i} has offsets beyond the largest offset")));
                };
                lowest = last + 1;
            }
            log.write_validated(batches, validated, -1, now_ms)
        })
    }

    /// The checks every append makes on its size, then `append` with the log's kept scratch vector
    /// for the validated batches.
    fn checked_append(
        &mut self,
        len: usize,
        append: impl FnOnce(&mut PartitionLog, &mut Vec<ValidatedBatch>) -> Result<AppendResult, StorageError>,
    ) -> Result<AppendResult, StorageError> {
        self.ensure_writable()?;
        if len == 0 {
            return Err(StorageError::InvalidRecord("the append holds no record batches".to_string()));
        }
        if len > APPEND_BYTES_MAX {
            return Err(StorageError::RecordTooLarge { size: len, max: APPEND_BYTES_MAX as u32 });
        }
        let mut validated = mem::take(&mut self.scratch);
        validated.clear();
        let result = append(self, &mut validated);
        self.scratch = validated;
        result
    }

    /// A producer's append: timestamps and sequences checked, offsets (and the leader epoch, and
    /// LogAppendTime where the topic uses it) written into the batches, then the write.
    fn assign_and_write(
        &mut self,
        batches: &mut [u8],
        leader_epoch: i32,
        now_ms: i64,
        validated: &mut [ValidatedBatch],
    ) -> Result<AppendResult, StorageError> {
        let log_end = self.log_end_offset();
        let mut log_append_time = -1;
        if self.config.timestamp_type == TimestampType::CreateTime {
            self.check_timestamps(validated, now_ms)?;
        }
        if let Some(duplicate) = self.check_sequences(validated)? {
            return Ok(AppendResult {
                base_offset: duplicate.first_offset,
                last_offset: duplicate.last_offset,
                log_append_time: -1,
                log_start_offset: self.log_start_offset,
                record_count: 0,
                byte_count: 0,
                duplicate: true,
            });
        }
        let stamp = self.config.timestamp_type == TimestampType::LogAppendTime;
        if stamp {
            log_append_time = now_ms;
        }
        let mut next = log_end;
        let mut position = 0usize;
        for batch in validated.iter_mut() {
            let size = batch.header.total_size();
            let last = next.checked_add(i64::from(batch.header.last_offset_delta)).filter(|l| *l < i64::MAX);
            let (Some(bytes), Some(last)) = (batches.get_mut(position..position + size), last) else {
                return Err(StorageError::InvalidRecord(format!("offsets are exhausted at {next}")));
            };
            batch::set_base_offset(bytes, next);
            batch::set_partition_leader_epoch(bytes, leader_epoch);
            batch.header.base_offset = next;
            batch.header.partition_leader_epoch = leader_epoch;
            if stamp {
                batch::set_log_append_time(bytes, now_ms);
                batch.header = BatchHeader::parse(bytes).unwrap_or(batch.header);
                batch.max_timestamp_offset_delta = 0;
            }
            next = last + 1;
            position += size;
        }
        self.write_validated(batches, validated, log_append_time, now_ms)
    }

    /// Writes validated batches (their offsets final) and says what was appended.
    fn write_validated(
        &mut self,
        batches: &[u8],
        validated: &[ValidatedBatch],
        log_append_time: i64,
        now_ms: i64,
    ) -> Result<AppendResult, StorageError> {
        self.write_batches(batches, validated, now_ms)?;
        let (Some(first), Some(last)) = (validated.first(), validated.last()) else {
            return Err(StorageError::InvalidRecord("the append holds no record batches".to_string()));
        };
        Ok(AppendResult {
            base_offset: first.header.base_offset,
            last_offset: last.header.last_offset(),
            log_append_time,
            log_start_offset: self.log_start_offset,
            record_count: validated.iter().map(|b| b.header.record_count.max(0) as u64).sum(),
            byte_count: batches.len() as u64,
            duplicate: false,
        })
    }

    /// Kafka's timestamp bounds for CreateTime topics (`message.timestamp.before.max.ms` /
    /// `message.timestamp.after.max.ms`, Kafka 3.6+): every timestamp a batch carries must lie within
    /// `[now - before, now + after]`, or the whole append is refused. Compressed batches are judged by
    /// their header's base and max timestamps, since the log never decompresses.
    fn check_timestamps(&self, validated: &[ValidatedBatch], now_ms: i64) -> Result<(), StorageError> {
        let bound = |ms: u64| i64::try_from(ms).unwrap_or(i64::MAX);
        let earliest = now_ms.saturating_sub(bound(self.config.timestamp_before_max_ms));
        let latest = now_ms.saturating_add(bound(self.config.timestamp_after_max_ms));
        for (low, high) in validated.iter().filter_map(|b| b.timestamp_range) {
            for timestamp in [low, high] {
                if timestamp < earliest || timestamp > latest {
                    return Err(StorageError::InvalidTimestamp { timestamp, earliest, latest });
                }
            }
        }
        Ok(())
    }

    /// Idempotent-producer checks for a producer append. Returns the original offsets when the append
    /// is a single batch that retries one already in the log. A retried batch inside a multi-batch
    /// append cannot be half-applied, so there it counts as out of order.
    fn check_sequences(&self, validated: &[ValidatedBatch]) -> Result<Option<crate::producer::CachedBatch>, StorageError> {
        let single = validated.len() == 1;
        let mut pending: Vec<Pending> = Vec::new();
        for batch in validated.iter().filter(|b| b.header.is_idempotent()) {
            match self.producers.check(&batch.header, &pending, single)? {
                SequenceCheck::Duplicate(original) => return Ok(Some(original)),
                SequenceCheck::Append if !single => pending.push(Pending {
                    producer_id: batch.header.producer_id,
                    epoch: batch.header.producer_epoch,
                    last_sequence: crate::producer::increment_sequence(batch.header.base_sequence, batch.header.last_offset_delta),
                }),
                SequenceCheck::Append => {}
            }
        }
        Ok(None)
    }

    /// Writes validated batches (offsets final) to the active segment, one write per segment: the
    /// whole buffer normally lands in one segment; it is split only when its offsets would not fit
    /// one segment's u32 relative offsets (offset-preserving appends with huge gaps).
    fn write_batches(&mut self, batches: &[u8], validated: &[ValidatedBatch], now_ms: i64) -> Result<(), StorageError> {
        let mut run_start = 0usize;
        let mut byte_start = 0usize;
        while let Some(first) = validated.get(run_start) {
            let remaining_bytes = (batches.len() - byte_start) as u64;
            self.prepare_active(&first.header, remaining_bytes, now_ms)?;
            let interval = self.config.index_interval_bytes;
            let (base, size) = (self.active.base_offset(), self.active.size_bytes());
            let mut run_end = run_start;
            let mut run_bytes = 0usize;
            while let Some(batch) = validated.get(run_end) {
                let fits = batch.header.last_offset() - base <= RELATIVE_OFFSET_MAX && size + run_bytes as u64 <= POSITION_MAX;
                if run_end > run_start && !fits {
                    break;
                }
                run_bytes += batch.header.total_size();
                run_end += 1;
            }
            let run = validated.get(run_start..run_end).unwrap_or_default();
            let bytes = batches.get(byte_start..byte_start + run_bytes).unwrap_or_default();
            // A new leader epoch reaches its checkpoint before any of its batches reaches the log, so
            // after a crash the file holds a superset of what the log does, and open trims the rest.
            let new_epochs = self.epochs.starting_in(run.iter().map(|b| &b.header));
            if !new_epochs.is_empty() {
                write_file_atomically(&self.dir, LEADER_EPOCH_FILE, &self.epochs.encode_with(&new_epochs), true)?;
            }
            if let Err(error) = self.active.append(bytes, run, interval, now_ms) {
                if !new_epochs.is_empty() {
                    self.restore_epoch_checkpoint();
                }
                return Err(error);
            }
            self.epochs.extend(&new_epochs);
            let mut at = 0usize;
            for batch in run {
                let size = batch.header.total_size();
                if batch.header.is_control() {
                    if let Some(control) = bytes.get(at..at + size).and_then(batch::control_type) {
                        // The abort's index entry reaches the file before anything in memory says the
                        // transaction ended: until then its records stay above the last stable offset,
                        // where read_committed consumers cannot see them.
                        if let Some(entry) = self.producers.aborted_by_marker(&batch.header, control)
                            && let Err(error) = self.aborted.append(entry)
                        {
                            self.fail_writes(format!(
                                "the aborted-transaction index write for the marker at offset {} failed: {error}",
                                batch.header.base_offset
                            ));
                            return Err(error);
                        }
                        self.producers.record_marker(&batch.header, control, now_ms);
                    }
                } else if batch.header.is_idempotent() {
                    self.producers.record(&batch.header, now_ms);
                }
                at += size;
            }
            run_start = run_end;
            byte_start += run_bytes;
        }
        Ok(())
    }

    /// Puts the checkpoint back to the cache after the batches that were to start a new epoch could
    /// not be written. Left as it was, it would name an epoch starting at the log end, and if older
    /// epochs' batches filled those offsets before the next crash, the next open would believe it.
    /// If even that write fails, the log stops taking writes (see `fail_writes`).
    fn restore_epoch_checkpoint(&mut self) {
        if let Err(error) = write_file_atomically(&self.dir, LEADER_EPOCH_FILE, &self.epochs.encode_with(&[]), true) {
            self.fail_writes(format!("the leader-epoch checkpoint names an epoch whose batches were not written: {error}"));
        }
    }

    /// Fits the leader-epoch cache to the log's range after the log start or end moved, rewriting
    /// the checkpoint if it changed.
    fn trim_epochs(&mut self) -> Result<(), StorageError> {
        if self.epochs.trim(self.log_start_offset, self.log_end_offset()) {
            write_file_atomically(&self.dir, LEADER_EPOCH_FILE, &self.epochs.encode_with(&[]), true)?;
        }
        Ok(())
    }

    /// Whether an append of `bytes` bytes at `now_ms` would first roll the active segment (full or
    /// old) or replace an empty one: both fsync a file and the directory, which takes milliseconds to
    /// seconds where an append is otherwise a copy into the page cache. A caller that must not block
    /// for long sends such appends elsewhere. (An append whose offsets the segment cannot address also
    /// rolls; that takes gaps of 2^31 offsets and is not predicted here.)
    pub fn append_may_roll(&self, bytes: u64, now_ms: i64) -> bool {
        self.active.is_empty() || self.segment_due(bytes, now_ms)
    }

    /// The active segment cannot take `bytes` more at `now_ms`: it would pass `segment.bytes`, or
    /// `segment.ms` has passed since its first append.
    fn segment_due(&self, bytes: u64, now_ms: i64) -> bool {
        let active = &self.active;
        let full = active.size_bytes() + bytes > self.config.segment_bytes;
        let old = self
            .config
            .segment_ms
            .is_some_and(|ms| active.first_append_ms().is_some_and(|t| now_ms.saturating_sub(t) >= i64::try_from(ms).unwrap_or(i64::MAX)));
        full || old
    }

    /// Makes the active segment ready for batches starting with `first`: rolls when the segment is
    /// full, old, or cannot address the batch's offsets, and replaces an empty active segment whose
    /// name does not match the first batch (a segment is named by its first batch's base offset).
    fn prepare_active(&mut self, first: &BatchHeader, bytes: u64, now_ms: i64) -> Result<(), StorageError> {
        let active = &self.active;
        if active.is_empty() {
            if active.base_offset() != first.base_offset {
                let replacement = Segment::create(&self.dir, first.base_offset)?;
                sync_dir(&self.dir)?;
                mem::replace(&mut self.active, replacement).delete_files()?;
                if self.sealed.is_empty() {
                    // The log held nothing: it now starts where the replicated batches do, as it would
                    // after a reopen (the log start is never below the first segment's base).
                    self.log_start_offset = self.log_start_offset.max(first.base_offset);
                }
            }
            return Ok(());
        }
        let unaddressable = first.last_offset() - active.base_offset() > RELATIVE_OFFSET_MAX;
        if self.segment_due(bytes, now_ms) || unaddressable {
            self.roll(first.base_offset)?;
        }
        Ok(())
    }

    /// Starts a new active segment at `base_offset`. The old one's `.log` is fsynced first, so only the
    /// active segment is ever unsynced, and the recovery point moves past it.
    fn roll(&mut self, base_offset: i64) -> Result<(), StorageError> {
        self.active.sync(false)?;
        self.recovery_point = self.recovery_point.max(self.active.next_offset());
        let segment = Segment::create(&self.dir, base_offset)?;
        // The new file's directory entry must be durable before an fsync of its data can promise anything.
        sync_dir(&self.dir)?;
        let mut rolled = mem::replace(&mut self.active, segment);
        rolled.seal();
        self.sealed.push_back(rolled);
        // A lost or stale recovery point only costs a longer scan, so this write is not fsynced.
        if let Err(error) = write_offset_file(&self.dir, RECOVERY_POINT_FILE, self.recovery_point, false) {
            tracing::warn!(dir = %self.dir.display(), %error, "could not record the recovery point");
        }
        tracing::debug!(dir = %self.dir.display(), base_offset, "rolled segment");
        Ok(())
    }

    /// Whole batches starting with the one containing `offset`, up to `max_bytes` (at most
    /// `READ_BYTES_MAX`), never a batch reaching `upper_bound` (exclusive; the broker passes the high
    /// watermark). With `min_one` the first batch is returned even when larger than `max_bytes`
    /// (KIP-74). Reads continue into later segments while bytes remain. `offset == log_end_offset`
    /// gives empty bytes; an offset outside `[log_start, log_end]` is `OffsetOutOfRange`.
    pub fn read(&self, offset: i64, max_bytes: usize, upper_bound: i64, min_one: bool) -> Result<ReadResult, StorageError> {
        let plan = self.plan_read(offset, max_bytes, upper_bound, min_one)?;
        let mut out = Vec::with_capacity(plan.bytes);
        for (segment, position, len) in &plan.ranges {
            segment.read_into(&mut out, *position, *len)?;
        }
        Ok(ReadResult {
            bytes: Bytes::from(out),
            next_offset: plan.next_offset,
            log_start_offset: self.log_start_offset,
            log_end_offset: self.log_end_offset(),
        })
    }

    /// The same batches as [`read`](Self::read), as byte ranges of the segment files instead of a
    /// copy: the broker hands them to the socket (`sendfile`), so a Fetch costs no memory for its
    /// records and no copy through user space. Reads no record bytes, only an index lookup and a
    /// few batch headers per segment. The ranges stay valid after the log moves on: stored bytes are
    /// never rewritten, and a deleted segment's file lives as long as a slice holds it.
    pub fn read_slices(&self, offset: i64, max_bytes: usize, upper_bound: i64, min_one: bool) -> Result<SlicedRead, StorageError> {
        let plan = self.plan_read(offset, max_bytes, upper_bound, min_one)?;
        let slices = plan
            .ranges
            .iter()
            .map(|(segment, position, len)| Ok(FileSlice { file: segment.reader()?, position: *position, len: *len }))
            .collect::<Result<Vec<_>, StorageError>>()?;
        Ok(SlicedRead {
            slices,
            bytes: plan.bytes,
            next_offset: plan.next_offset,
            log_start_offset: self.log_start_offset,
            log_end_offset: self.log_end_offset(),
        })
    }

    /// Where the batches of a read lie: per segment, a range that starts and ends on batch
    /// boundaries. Found from the index and batch headers alone.
    fn plan_read(&self, offset: i64, max_bytes: usize, upper_bound: i64, min_one: bool) -> Result<ReadPlan<'_>, StorageError> {
        self.ensure_live()?;
        let (start, end) = (self.log_start_offset, self.log_end_offset());
        if offset < start || offset > end {
            return Err(StorageError::OffsetOutOfRange { requested: offset, start, end });
        }
        let mut plan = ReadPlan { ranges: Vec::new(), bytes: 0, next_offset: offset };
        if offset >= end || offset >= upper_bound {
            return Ok(plan);
        }
        let budget = max_bytes.min(READ_BYTES_MAX);
        let mut target = offset;
        let first = self.segment_for(offset);
        for segment in self.sealed.range(first.min(self.sealed.len())..).chain([&self.active]) {
            let Some((position, header)) = segment.locate(target)? else {
                continue;
            };
            if header.last_offset() >= upper_bound {
                break;
            }
            let remaining = budget.saturating_sub(plan.bytes);
            let allowed = if plan.bytes == 0 && min_one { remaining.max(header.total_size()) } else { remaining };
            if header.total_size() > allowed {
                break;
            }
            let (range_end, next_offset) = segment.batches_end(position, position.saturating_add(allowed as u64), upper_bound)?;
            let len = usize::try_from(range_end - position).unwrap_or(usize::MAX);
            plan.ranges.push((segment, position, len));
            plan.bytes += len;
            plan.next_offset = next_offset;
            if range_end < segment.size_bytes() {
                break;
            }
            target = segment.next_offset();
        }
        Ok(plan)
    }

    /// Appends a transaction marker (a control batch) for `marker` at the log end and ends the
    /// producer's ongoing transaction in this partition; an abort is added to the aborted-transaction
    /// index. A marker whose epoch is older than the producer's is InvalidProducerEpoch. Returns the
    /// marker's offset.
    pub fn append_marker(&mut self, marker: &TxnMarker, leader_epoch: i32, now_ms: i64) -> Result<AppendResult, StorageError> {
        self.ensure_writable()?;
        self.producers.check_marker(marker.producer_id, marker.producer_epoch)?;
        let mut bytes = batch::encode_control_batch(marker, now_ms);
        let offset = self.log_end_offset();
        batch::set_base_offset(&mut bytes, offset);
        batch::set_partition_leader_epoch(&mut bytes, leader_epoch);
        self.checked_append(bytes.len(), |log, validated| {
            batch::validate(&bytes, u32::MAX, Origin::Replica, validated)?;
            log.write_validated(&bytes, validated, -1, now_ms)
        })
    }

    /// The first offset that is not yet decided: the start of the oldest ongoing transaction, or the
    /// log end. read_committed consumers read below it (and below the high watermark).
    pub fn last_stable_offset(&self) -> i64 {
        let end = self.log_end_offset();
        self.producers.first_unstable_offset().map_or(end, |first| first.min(end))
    }

    /// (producer id, first offset) of every transaction with records here and no marker yet.
    /// Forgets the idempotent-producer state of every batch in the log so far, for good (a durable
    /// fence file makes a reopen forget it again after rebuilding). For a mirror promoted to a
    /// normal topic: its batches carry another cluster's producer ids, which may equal ids this
    /// broker hands out, and a local producer must not be judged against a foreign producer's
    /// sequences (a false "duplicate" would acknowledge a record that was never written). A producer
    /// that was forgotten starts fresh, as after expiration. Refused while a transaction is open:
    /// end them first (abort markers), or they would hold the last stable offset forever. Returns
    /// the fence offset (the log end offset).
    pub fn fence_producers(&mut self) -> Result<i64, StorageError> {
        self.ensure_writable()?;
        if let Some((producer_id, first_offset)) = self.producers.ongoing_transactions().first() {
            return Err(StorageError::InvalidRecord(format!(
                "producer {producer_id} has a transaction open since offset {first_offset}; end it before fencing producers"
            )));
        }
        // Everything below the fence (the abort markers just written, too) is on stable storage
        // before the fence is: a power cut cannot leave the fence above the log's end.
        self.flush()?;
        let fence = self.log_end_offset();
        write_offset_file(&self.dir, PRODUCER_FENCE_FILE, fence, true)?;
        self.producers.forget_before(fence);
        Ok(fence)
    }

    pub fn ongoing_transactions(&self) -> Vec<(i64, i64)> {
        self.producers.ongoing_transactions()
    }

    /// The epoch this partition last saw from `producer_id`, if it remembers the producer.
    pub fn producer_epoch(&self, producer_id: i64) -> Option<i16> {
        self.producers.epoch(producer_id)
    }

    /// Aborted transactions overlapping `[from, upper)`, for a read_committed fetch that returns
    /// records from `from` up to (not including) `upper`.
    pub fn aborted_transactions(&self, from: i64, upper: i64) -> Vec<AbortedTxn> {
        self.aborted.overlapping(from, upper)
    }

    /// Number of entries in the aborted-transaction index.
    pub fn aborted_transaction_count(&self) -> usize {
        self.aborted.len()
    }

    /// The latest leader epoch that wrote to the log: the epoch of the last leader-epoch cache entry.
    /// `None` while no batch carried an epoch (or retention, DeleteRecords or a truncation emptied
    /// the log), and for an offline partition.
    pub fn latest_epoch(&self) -> Option<i32> {
        self.epochs.latest_epoch()
    }

    /// OffsetForLeaderEpoch, as a leader serves it (KIP-101 / KIP-279): the largest cached epoch at
    /// or below `epoch`, and the offset where it ended here: the start of the next cached epoch, or
    /// the log end when it is the latest (also when `epoch` is above every cached one). A follower
    /// truncates its log there. `None` when `epoch` is older than every epoch the cache still holds
    /// (retention or DeleteRecords moved the log start past them) or the cache is empty; Kafka
    /// answers UNDEFINED_EPOCH / UNDEFINED_EPOCH_OFFSET then. An offline partition's cache is
    /// empty: check `offline_reason` first.
    pub fn end_offset_for_epoch(&self, epoch: i32) -> Option<(i32, i64)> {
        self.epochs.end_offset_for(epoch, self.log_end_offset())
    }

    /// The leader-epoch cache, `(epoch, first offset)` in increasing order of both, every start in
    /// `[log_start_offset, log_end_offset)`: for tests and diagnostics.
    pub fn leader_epochs(&self) -> &[(i32, i64)] {
        self.epochs.entries()
    }

    pub fn log_start_offset(&self) -> i64 {
        self.log_start_offset
    }

    /// The next offset to assign.
    pub fn log_end_offset(&self) -> i64 {
        self.active.next_offset()
    }

    pub fn size_bytes(&self) -> u64 {
        self.segments().map(Segment::size_bytes).sum()
    }

    pub fn segment_count(&self) -> usize {
        self.sealed.len() + 1
    }

    /// ListOffsets by timestamp: the first offset at or after the log start whose record timestamp is
    /// at least `ts`, with that timestamp. Exact per record for uncompressed CreateTime batches; for
    /// compressed or LogAppendTime batches, the batch's first offset and max timestamp.
    pub fn offset_for_timestamp(&self, ts: i64) -> Result<Option<(i64, i64)>, StorageError> {
        self.ensure_live()?;
        for segment in self.segments() {
            if segment.next_offset() <= self.log_start_offset || segment.max_timestamp().is_none_or(|(t, _)| t < ts) {
                continue;
            }
            if let Some(found) = segment.find_timestamp(ts, self.log_start_offset)? {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }

    /// Largest timestamp in the log and the offset of the first record carrying it (ListOffsets
    /// MAX_TIMESTAMP, -3). Exact per record for uncompressed CreateTime batches; otherwise the
    /// batch's first offset. None while the log holds no batches.
    pub fn max_timestamp(&self) -> Option<(i64, i64)> {
        let mut best: Option<(i64, i64)> = None;
        for segment in self.segments().filter(|s| s.next_offset() > self.log_start_offset) {
            if let Some((timestamp, offset)) = segment.max_timestamp()
                && best.is_none_or(|(t, _)| timestamp > t)
            {
                best = Some((timestamp, offset.max(self.log_start_offset)));
            }
        }
        best
    }

    /// DeleteRecords: moves the log start offset to `offset` (persisted durably before anything is
    /// deleted) and deletes the segments wholly below it, rolling the active segment first when it is
    /// wholly below. The leader-epoch cache follows the new start (see `LeaderEpochCache::trim`).
    /// Returns the new log start offset (the old one if it was already beyond).
    pub fn delete_records_before(&mut self, offset: i64) -> Result<i64, StorageError> {
        self.ensure_writable()?;
        let (start, end) = (self.log_start_offset, self.log_end_offset());
        if offset < 0 || offset > end {
            return Err(StorageError::OffsetOutOfRange { requested: offset, start, end });
        }
        if offset <= start {
            return Ok(start);
        }
        write_offset_file(&self.dir, LOG_START_OFFSET_FILE, offset, true)?;
        self.log_start_offset = offset;
        if !self.active.is_empty() && self.active.next_offset() <= offset {
            self.roll(end)?;
        }
        self.delete_segments_below_start()?;
        self.prune_aborted()?;
        self.trim_epochs()?;
        tracing::debug!(dir = %self.dir.display(), log_start_offset = offset, "moved log start offset");
        Ok(offset)
    }

    /// Removes every batch at or after `offset` and returns the new log end offset: a follower cuts
    /// the tail that diverged from the new leader's log (KIP-101: at the end offset the leader gave
    /// for the follower's latest epoch). A batch is never split, so the cut is rounded down to the
    /// start of the batch holding `offset` (or to the end of the last batch before it, when `offset`
    /// falls in an offset gap): the new end may be below `offset`.
    ///
    /// - `offset >= log_end_offset()`: nothing changes; returns the log end.
    /// - `offset < log_start_offset()` (Kafka's "truncate fully and start at"): every segment goes and
    ///   the log restarts empty at `max(offset, 0)`, its new log start, which is persisted like
    ///   DeleteRecords persists one. The same when no record at or after the log start would stay
    ///   (the cut batch straddles the log start): the log restarts empty at its log start.
    /// - Otherwise every segment whose batches all lie at or after the cut is deleted (files and all),
    ///   and the one holding the cut is cut in its file and indexes and becomes the active segment.
    ///
    /// The recovery point is lowered (and durably rewritten) before anything is cut, and the cut
    /// segment and the directory are fsynced before returning, so a truncation never comes back after
    /// a crash: segments go newest first, and a crash midway leaves a prefix of the log, as if the
    /// truncation had stopped at a later offset. Afterwards aborted-transaction entries whose marker
    /// was cut are dropped, the leader-epoch cache loses the epochs that started at or after the new
    /// end, and idempotent-producer state with ongoing transactions is rebuilt from the log as at
    /// open, the producer fence (see `fence_producers`) included:
    /// truncation is rare, so a full header walk of the recent segments is fine. A producer whose
    /// batches were cut may send their sequence numbers again; a transaction whose marker was cut is
    /// open again and holds the last stable offset. Refused (`Offline`) when the log is offline or its
    /// writes failed; an I/O failure after the first file changed stops the log's writes (see
    /// `fail_writes`) so a restart rebuilds its state from the files.
    ///
    /// `FileSlice`s taken before a truncation must not be sent after it: the offsets they cover may
    /// hold other batches by then (the one exception to "stored bytes are never rewritten").
    pub fn truncate_to(&mut self, offset: i64, now_ms: i64) -> Result<i64, StorageError> {
        self.ensure_writable()?;
        let (start, end) = (self.log_start_offset, self.log_end_offset());
        if offset >= end {
            return Ok(end);
        }
        let mut scanner = BatchScanner::new(SCAN_BUFFER_BYTES);
        if offset < start {
            return self.truncate_fully(offset.max(0), now_ms, &mut scanner);
        }
        // The segment that would hold `offset`, and in it the position of the first batch reaching
        // `offset` (its end when `offset` lies in the gap after its last batch).
        let at = self.segment_for(offset);
        let holding = self.sealed.get(at).unwrap_or(&self.active);
        let position = holding.locate(offset)?.map_or(holding.size_bytes(), |(position, _)| position);
        // A lower bound of the new end, for the recovery point: the previous segment's end when the
        // cut takes the whole segment, else the base of the one being cut.
        let end_at_least = match at.checked_sub(1).and_then(|previous| self.sealed.get(previous)) {
            Some(previous) if position == 0 => previous.next_offset(),
            None if position == 0 => return self.truncate_fully(start, now_ms, &mut scanner),
            _ => holding.base_offset(),
        };
        self.lower_recovery_point(end_at_least)?;
        if let Err(error) = self.cut_segments(at, position, &mut scanner) {
            self.fail_writes(format!("truncating the log to offset {offset} failed: {error}"));
            return Err(error);
        }
        if self.log_end_offset() < start {
            return self.truncate_fully(start, now_ms, &mut scanner);
        }
        self.finish_truncation(now_ms, &mut scanner)
    }

    /// Empties the log and restarts it at `offset`, above its end or not: a follower whose log ends
    /// before its leader's log starts (retention there removed what it misses) continues from the
    /// leader's start. Everything held is dropped, durably, as a truncation drops a tail. Blocking
    /// file I/O.
    pub fn restart_at(&mut self, offset: i64, now_ms: i64) -> Result<i64, StorageError> {
        self.ensure_writable()?;
        let mut scanner = BatchScanner::new(SCAN_BUFFER_BYTES);
        self.truncate_fully(offset.max(0), now_ms, &mut scanner)
    }

    /// The all-segments case of `truncate_to`: the log restarts empty at `new_start`.
    fn truncate_fully(&mut self, new_start: i64, now_ms: i64, scanner: &mut BatchScanner) -> Result<i64, StorageError> {
        self.lower_recovery_point(new_start)?;
        if let Err(error) = self.replace_all_segments(new_start) {
            self.fail_writes(format!("truncating the log fully to start at offset {new_start} failed: {error}"));
            return Err(error);
        }
        self.finish_truncation(now_ms, scanner)
    }

    /// Lowers the recovery point to `offset` at most, durably, before a truncation cuts anything:
    /// a recovery point above the log end would make the next open take the cut for lost data.
    fn lower_recovery_point(&mut self, offset: i64) -> Result<(), StorageError> {
        let recovery_point = self.recovery_point.min(offset);
        write_offset_file(&self.dir, RECOVERY_POINT_FILE, recovery_point, true)?;
        self.recovery_point = recovery_point;
        Ok(())
    }

    /// Deletes the segments after the one at `at` (in `segments()` order), newest first, and cuts
    /// that one at byte `position`; at position 0 it goes too and the one before becomes active.
    /// The kept last segment becomes the active one, fsynced with its indexes, and the deletions
    /// are made durable.
    fn cut_segments(&mut self, at: usize, position: u64, scanner: &mut BatchScanner) -> Result<(), StorageError> {
        let kept = if position == 0 { at } else { at + 1 };
        while self.sealed.len() >= kept {
            self.active.delete_files()?;
            tracing::debug!(dir = %self.dir.display(), segment = self.active.base_offset(), "truncation deleted a segment");
            let Some(previous) = self.sealed.pop_back() else {
                break;
            };
            self.active = previous;
        }
        if position > 0 {
            let recovered = self.active.truncate(&self.dir, position, self.config.index_interval_bytes, scanner)?;
            if let Some((at, reason)) = recovered.invalid {
                return Err(StorageError::CorruptMessage(format!(
                    "segment {} holds an invalid batch at byte {at}, before the truncation point: {reason}",
                    self.active.base_offset()
                )));
            }
        } else {
            self.active.activate()?;
        }
        self.active.sync(true)?;
        sync_dir(&self.dir)
    }

    /// Deletes every segment, newest first, and starts the log empty at `new_start`, persisting the
    /// new log start after the old segments are gone: persisted first, a crash would bring back a
    /// smaller log start over segments DeleteRecords had hidden.
    fn replace_all_segments(&mut self, new_start: i64) -> Result<(), StorageError> {
        self.active.delete_files()?;
        while let Some(newest) = self.sealed.back() {
            newest.delete_files()?;
            self.sealed.pop_back();
        }
        self.active = Segment::create(&self.dir, new_start)?;
        sync_dir(&self.dir)?;
        if new_start != self.log_start_offset {
            write_offset_file(&self.dir, LOG_START_OFFSET_FILE, new_start, true)?;
        }
        self.log_start_offset = new_start;
        Ok(())
    }

    /// The state derived from the log, fitted to a truncated one: aborted-transaction entries whose
    /// marker was cut, producer state (rebuilt, fence applied), and the leader-epoch cache.
    /// Returns the new log end. A failure stops the log's writes, since memory and files then differ.
    fn finish_truncation(&mut self, now_ms: i64, scanner: &mut BatchScanner) -> Result<i64, StorageError> {
        let end = self.log_end_offset();
        self.recovery_point = self.recovery_point.min(end);
        if let Err(error) = self.refit_to_log(now_ms, scanner) {
            self.fail_writes(format!("updating partition state after a truncation to offset {end} failed: {error}"));
            return Err(error);
        }
        tracing::info!(dir = %self.dir.display(), log_start_offset = self.log_start_offset, log_end_offset = end, "truncated the log");
        Ok(end)
    }

    /// `finish_truncation`'s changes, stopping at the first failure.
    fn refit_to_log(&mut self, now_ms: i64, scanner: &mut BatchScanner) -> Result<(), StorageError> {
        let end = self.log_end_offset();
        // Entries are dropped before the rebuild, whose header walk puts back (once: `insert` knows
        // each marker) any abort below the new end the index lacked. Every entry's marker is at or
        // above the log start, so a full truncation below it drops them all here too.
        let dropped = self.aborted.drop_from(end);
        let entries = self.aborted.len();
        self.producers = ProducerStateTable::default();
        self.rebuild_producer_state(now_ms, scanner);
        // As at open. The fence itself stays where it is even above the new end: the batches copied
        // back below it may be the promoted mirror's again, and forgetting a local producer only
        // weakens its duplicate detection, where remembering a foreign one can fake a duplicate.
        if let Some(fence) = read_offset_file(&self.dir, PRODUCER_FENCE_FILE) {
            self.producers.forget_before(fence.min(end));
        }
        if dropped || self.aborted.len() != entries || self.aborted.file_differs() {
            let dir = &self.dir;
            self.aborted.rewrite(|bytes| write_file_atomically(dir, ABORTED_TXNS_FILE, bytes, true))?;
        }
        self.trim_epochs()
    }

    /// Retention by time and size, deleting whole segments from the oldest. A segment expires when its
    /// largest timestamp is older than `retention_ms`, where a timestamp later than the segment's last
    /// write plus `timestamp_after_max_ms` counts as that (see `Segment::retention_timestamp`: one
    /// future-dated record must not keep every later segment); an expired active segment is rolled
    /// first so it can go too. Size retention deletes the oldest segments while the rest still reach
    /// `retention_bytes`; the active segment always stays. Also forgets expired producers, and fits
    /// the leader-epoch cache to the new log start.
    pub fn enforce_retention(&mut self, now_ms: i64) -> Result<RetentionStats, StorageError> {
        let mut stats = RetentionStats::default();
        if self.deleted || matches!(self.availability, Availability::Offline(_)) {
            return Ok(stats);
        }
        self.producers.expire(now_ms.saturating_sub(self.config.producer_expiration_ms()));
        if !self.config.delete_enabled {
            return Ok(stats);
        }
        if let Some(retention_ms) = self.config.retention_ms {
            let cutoff = now_ms.saturating_sub(i64::try_from(retention_ms).unwrap_or(i64::MAX));
            let future_bound_ms = self.config.timestamp_after_max_ms;
            let expired = |segment: &Segment| segment.retention_timestamp(future_bound_ms) < cutoff;
            if !self.active.is_empty() && expired(&self.active) {
                self.ensure_writable()?;
                let end = self.log_end_offset();
                self.roll(end)?;
            }
            while self.sealed.front().is_some_and(expired) {
                self.ensure_writable()?;
                stats.bytes_deleted += self.delete_oldest()?;
                stats.segments_deleted += 1;
            }
        }
        if let Some(retention_bytes) = self.config.retention_bytes {
            let mut size = self.size_bytes();
            while self.sealed.front().is_some_and(|s| size - s.size_bytes() >= retention_bytes) {
                self.ensure_writable()?;
                let deleted = self.delete_oldest()?;
                size -= deleted;
                stats.bytes_deleted += deleted;
                stats.segments_deleted += 1;
            }
        }
        if stats.segments_deleted > 0 {
            self.prune_aborted()?;
            self.trim_epochs()?;
            tracing::debug!(dir = %self.dir.display(), segments = stats.segments_deleted, bytes = stats.bytes_deleted, log_start_offset = self.log_start_offset, "retention deleted segments");
        }
        Ok(stats)
    }

    /// Replaces the settings; takes effect from the next append or retention run.
    pub fn set_config(&mut self, config: LogConfig) {
        self.config = config.sanitized();
    }

    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    /// The active segment's file, so the broker can fdatasync outside its lock, and the log end
    /// offset that sync will cover. (Segments rolled away were fsynced when they rolled.) None for an
    /// offline partition, which has no file to sync.
    pub fn sync_target(&self) -> Option<(Arc<fs::File>, i64)> {
        self.active.file().map(|file| (Arc::clone(file), self.log_end_offset()))
    }

    /// Records that everything below `offset` is on stable storage.
    pub fn mark_flushed(&mut self, offset: i64) {
        self.recovery_point = self.recovery_point.max(offset.min(self.log_end_offset()));
    }

    /// Everything below this offset is known to be on stable storage.
    pub fn recovery_point(&self) -> i64 {
        self.recovery_point
    }

    /// fdatasync of the active segment, under the caller's lock.
    pub fn flush(&mut self) -> Result<(), StorageError> {
        self.ensure_live()?;
        self.active.sync(false)?;
        self.recovery_point = self.log_end_offset();
        Ok(())
    }

    /// Clean shutdown: fsync the active segment and its indexes, write the recovery point, then the
    /// clean-shutdown marker. Takes `&mut self` (not `self`) because the broker holds logs behind locks;
    /// the log stays usable, and the next change removes the marker again.
    pub fn close(&mut self) -> Result<(), StorageError> {
        if self.deleted || self.clean_marker || matches!(self.availability, Availability::Offline(_)) {
            return Ok(());
        }
        self.active.sync(true)?;
        if let Availability::WritesFailed(reason) = &self.availability {
            // No snapshot and no clean-shutdown marker: memory is not what the files say, so the next
            // open must rebuild its state from the log.
            return Err(self.offline_error(reason));
        }
        self.recovery_point = self.log_end_offset();
        let snapshot = self.producers.encode_snapshot(self.recovery_point);
        write_file_atomically(&self.dir, PRODUCER_SNAPSHOT_FILE, &snapshot, true)?;
        write_offset_file(&self.dir, RECOVERY_POINT_FILE, self.recovery_point, true)?;
        let marker = self.dir.join(CLEAN_SHUTDOWN_FILE);
        let file = fs::File::create(&marker).context(|| format!("create {}", marker.display()))?;
        file.sync_all().context(|| format!("fsync {}", marker.display()))?;
        sync_dir(&self.dir)?;
        self.clean_marker = true;
        Ok(())
    }

    /// Removes the partition directory (topic deletion). Every later call on this log fails.
    pub fn delete(&mut self) -> Result<(), StorageError> {
        self.deleted = true;
        match fs::remove_dir_all(&self.dir) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                Err(StorageError::Io(error, format!("remove partition directory {}", self.dir.display())))
            }
            _ => Ok(()),
        }
    }

    /// All segments, oldest first, the active one last.
    fn segments(&self) -> impl Iterator<Item = &Segment> {
        self.sealed.iter().chain([&self.active])
    }

    fn first_segment_base(&self) -> i64 {
        self.sealed.front().unwrap_or(&self.active).base_offset()
    }

    /// Position in `segments()` of the segment that would hold `offset`: the last whose base is at or
    /// below it (the first segment for offsets below every base).
    fn segment_for(&self, offset: i64) -> usize {
        if self.active.base_offset() <= offset {
            return self.sealed.len();
        }
        self.sealed.partition_point(|s| s.base_offset() <= offset).saturating_sub(1)
    }

    /// Deletes the sealed segments that hold only offsets below the log start: those followed by a
    /// segment starting at or below it.
    fn delete_segments_below_start(&mut self) -> Result<(), StorageError> {
        while !self.sealed.is_empty() && self.sealed.get(1).unwrap_or(&self.active).base_offset() <= self.log_start_offset {
            self.delete_oldest()?;
        }
        Ok(())
    }

    /// Drops aborted-transaction entries below the log start, rewriting the index file if any went.
    fn prune_aborted(&mut self) -> Result<(), StorageError> {
        if self.aborted.drop_below(self.log_start_offset) {
            let dir = &self.dir;
            self.aborted.rewrite(|bytes| write_file_atomically(dir, ABORTED_TXNS_FILE, bytes, true))?;
        }
        Ok(())
    }

    /// Deletes the oldest sealed segment (never the active one) and returns its size.
    fn delete_oldest(&mut self) -> Result<u64, StorageError> {
        let Some(oldest) = self.sealed.front() else {
            return Ok(0);
        };
        oldest.delete_files()?;
        let size = oldest.size_bytes();
        self.sealed.pop_front();
        self.log_start_offset = self.log_start_offset.max(self.first_segment_base());
        Ok(size)
    }

    fn ensure_live(&self) -> Result<(), StorageError> {
        if self.deleted {
            return Err(StorageError::Io(
                std::io::Error::new(std::io::ErrorKind::NotFound, "the partition was deleted"),
                format!("use partition log {}", self.dir.display()),
            ));
        }
        if let Availability::Offline(reason) = &self.availability {
            return Err(self.offline_error(reason));
        }
        Ok(())
    }

    fn offline_error(&self, reason: &str) -> StorageError {
        StorageError::Offline { dir: self.dir.display().to_string(), reason: reason.to_string() }
    }

    /// Stops the log taking changes after a write that left memory and the files in doubt, as a failed
    /// fsync stops a partition acknowledging: every later change fails with `Offline`, reads go on,
    /// and `close` writes no clean-shutdown marker, so the restart rebuilds the state from the log.
    fn fail_writes(&mut self, reason: String) {
        tracing::error!(dir = %self.dir.display(), reason = reason.as_str(), "partition stops taking writes until a restart");
        self.availability = Availability::WritesFailed(reason);
    }

    /// Before any change after a clean close, the marker must go: otherwise a crash would be taken for
    /// a clean shutdown and the unsynced change would escape the full recovery scan.
    fn ensure_writable(&mut self) -> Result<(), StorageError> {
        self.ensure_live()?;
        if let Availability::WritesFailed(reason) = &self.availability {
            return Err(self.offline_error(reason));
        }
        if self.clean_marker {
            remove_if_present(&self.dir.join(CLEAN_SHUTDOWN_FILE))?;
            sync_dir(&self.dir)?;
            self.clean_marker = false;
        }
        Ok(())
    }
}

/// Base offsets of the segments in `dir`, sorted. Also removes leftover temporary files and index
/// files whose `.log` is gone (a deletion interrupted by a crash).
fn list_segments(dir: &Path) -> Result<Vec<i64>, StorageError> {
    let mut bases = Vec::new();
    let mut indexes = Vec::new();
    for entry in fs::read_dir(dir).context(|| format!("list {}", dir.display()))? {
        let entry = entry.context(|| format!("list {}", dir.display()))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(TEMP_SUFFIX) {
            remove_if_present(&entry.path())?;
        } else if let Some(stem) = name.strip_suffix(LOG_SUFFIX) {
            match parse_base_offset(stem) {
                Some(base) => bases.push(base),
                None => {
                    tracing::warn!(file = %entry.path().display(), "ignoring a .log file not named by a base offset")
                }
            }
        } else if let Some(base) =
            name.strip_suffix(INDEX_SUFFIX).or_else(|| name.strip_suffix(TIME_INDEX_SUFFIX)).and_then(parse_base_offset)
        {
            indexes.push((base, entry.path()));
        }
    }
    bases.sort_unstable();
    for (base, path) in indexes {
        if bases.binary_search(&base).is_err() {
            remove_if_present(&path)?;
        }
    }
    Ok(bases)
}

/// A segment file stem: exactly 20 decimal digits.
fn parse_base_offset(stem: &str) -> Option<i64> {
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// Reads one of the small offset files; `None` when missing or unreadable (with a warning, since
/// the callers fall back to the safe default).
fn read_offset_file(dir: &Path, name: &str) -> Option<i64> {
    let path = dir.join(name);
    // Read at most one byte past the limit, so an oversized file is recognised without reading it.
    let mut bytes = Vec::with_capacity(OFFSET_FILE_BYTES_MAX + 1);
    let read = fs::File::open(&path)
        .and_then(|file| std::io::Read::read_to_end(&mut std::io::Read::take(file, OFFSET_FILE_BYTES_MAX as u64 + 1), &mut bytes));
    match read {
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return None,
        Err(error) => {
            tracing::warn!(file = %path.display(), %error, "could not read offset file");
            return None;
        }
    }
    let parsed = (bytes.len() <= OFFSET_FILE_BYTES_MAX).then(|| std::str::from_utf8(&bytes).ok()?.trim().parse::<i64>().ok()).flatten();
    if parsed.is_none() {
        tracing::warn!(file = %path.display(), "offset file is not a number; ignoring it");
    }
    parsed
}

/// Reads the producer snapshot, if there is an intact one of a sane size.
fn read_producer_snapshot(path: &Path) -> Option<(i64, ProducerStateTable)> {
    let len = fs::metadata(path).ok()?.len();
    if len > PRODUCER_SNAPSHOT_BYTES_MAX {
        tracing::warn!(file = %path.display(), len, "producer snapshot is too large; rebuilding from the log");
        return None;
    }
    let decoded = fs::read(path).ok().and_then(|bytes| ProducerStateTable::decode_snapshot(&bytes));
    if decoded.is_none() {
        tracing::warn!(file = %path.display(), "producer snapshot is damaged; rebuilding from the log");
    }
    decoded
}

/// Replaces an offset file atomically (see `write_file_atomically`).
fn write_offset_file(dir: &Path, name: &str, value: i64, durable: bool) -> Result<(), StorageError> {
    write_file_atomically(dir, name, format!("{value}\n").as_bytes(), durable)
}

/// Replaces a small file of the partition directory atomically (see `crate::fs`).
fn write_file_atomically(dir: &Path, name: &str, contents: &[u8], durable: bool) -> Result<(), StorageError> {
    let durability = if durable { Durability::Fsync } else { Durability::PageCache };
    write_atomically(&dir.join(name), contents, durability)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_are_twenty_digits() {
        assert_eq!(parse_base_offset("00000000000000000042"), Some(42));
        assert_eq!(parse_base_offset("42"), None);
        assert_eq!(parse_base_offset("0000000000000000004x"), None);
        assert_eq!(parse_base_offset("99999999999999999999"), None, "beyond i64");
    }

    #[test]
    fn offset_files_round_trip_and_reject_junk() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_offset_file(dir.path(), "x"), None);
        write_offset_file(dir.path(), "x", -5, true).unwrap();
        assert_eq!(read_offset_file(dir.path(), "x"), Some(-5));
        assert!(!dir.path().join("x.tmp").exists());
        fs::write(dir.path().join("x"), "12 apples").unwrap();
        assert_eq!(read_offset_file(dir.path(), "x"), None);
        fs::write(dir.path().join("x"), "1".repeat(OFFSET_FILE_BYTES_MAX + 1)).unwrap();
        assert_eq!(read_offset_file(dir.path(), "x"), None);
    }
}
