//! One segment of a partition log: `{base_offset:020}.log` holding whole RecordBatch v2 batches back
//! to back, with its paired `.index` / `.timeindex` (see `index`). `PartitionLog` appends to the last
//! (active) segment, reads from any, and deletes whole segments for retention.
//!
//! Data is written with one positional write per append and read with `read_at`, so readers share the
//! file through `&self`. Only the active segment holds its `.log` open; a sealed one opens it when
//! read, through the process-wide cache in `handles`. This module also holds the two scanners the log
//! uses: `BatchScanner` walks a segment in large chunks (recovery with CRC checks, producer-state
//! rebuild with headers only), and lookups walk batch headers from an index position with a small
//! buffer.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use crate::batch::{
    BATCH_HEADER_BYTES, BATCH_LENGTH_MIN, BatchHeader, COMPRESSION_NONE, CRC_COVERED_FROM, LOG_OVERHEAD_BYTES, MAGIC_V2, Records,
    TimestampType, ValidatedBatch,
};
use crate::error::{IoContext, StorageError};
use crate::handles::CachedFile;
use crate::index::{IndexEntry, SegmentIndex, remove_if_present};

/// Buffer for whole-segment scans (recovery, producer-state rebuild). Twice Kafka's default
/// `max.message.bytes`, so a default-sized batch always fits and its records can be looked at.
pub(crate) const SCAN_BUFFER_BYTES: usize = 2 * 1024 * 1024;
/// Buffer for header walks from an index position: a few index intervals of small batches.
pub(crate) const LOOKUP_BUFFER_BYTES: usize = 16 * 1024;
/// Buffer for finding where a read ends: the walk starts at an index entry, so it covers about one
/// `index.interval.bytes` of headers.
const BOUNDARY_WALK_BUFFER_BYTES: usize = 4 * 1024;
/// How much a header-only walk reads at a time. Small batches come many to a read; the payload of a
/// large batch is mostly skipped instead of read.
const HEADER_WALK_READ_BYTES: usize = 64 * 1024;
/// Index entries hold relative offsets as u32: a segment spans at most this many offsets.
pub(crate) const RELATIVE_OFFSET_MAX: i64 = u32::MAX as i64;
/// Index entries hold file positions as u32: no batch may start beyond this.
pub(crate) const POSITION_MAX: u64 = u32::MAX as u64;

pub(crate) const LOG_SUFFIX: &str = ".log";
pub(crate) const INDEX_SUFFIX: &str = ".index";
pub(crate) const TIME_INDEX_SUFFIX: &str = ".timeindex";

pub(crate) fn segment_path(dir: &Path, base_offset: i64, suffix: &str) -> PathBuf {
    dir.join(format!("{base_offset:020}{suffix}"))
}

/// How much of a segment recovery must check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RecoveryScan {
    /// Trust the consistent index prefix and scan only the tail after its last entry.
    Tail,
    /// Scan every batch and rebuild the indexes (unclean shutdown, at or after the recovery point).
    Full,
}

/// What recovery found in one segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Recovered {
    /// Set when the scan stopped at an invalid batch (or the file ended inside one): why, and at
    /// which position. The file is left as it is; the caller decides between cutting the tail
    /// (`cut_invalid_tail`) and keeping the bytes aside (`quarantine`).
    pub invalid: Option<(u64, String)>,
}

/// How a segment reaches its `.log`.
#[derive(Debug)]
enum SegmentFile {
    /// The active segment (and a segment under recovery): held open, written and fsynced.
    Open(Arc<File>),
    /// A sealed segment: opened read-only through the process-wide cache when read.
    Sealed(CachedFile),
    /// An offline partition's placeholder: there is no file to read.
    Detached,
}

#[derive(Debug)]
pub(crate) struct Segment {
    base_offset: i64,
    log_path: PathBuf,
    file: SegmentFile,
    /// Bytes of valid batches; appends go here and reads never look past it.
    size_bytes: u64,
    /// Last offset of the last batch + 1, or the base offset while empty.
    next_offset: i64,
    index: SegmentIndex,
    bytes_since_index_entry: u64,
    /// Largest batch max timestamp and the offset of the first record carrying it.
    max_timestamp: Option<(i64, i64)>,
    /// Wall-clock ms of the first append, for `segment.ms`.
    first_append_ms: Option<i64>,
    /// Broker-clock ms of the last append (the file's modification time for a recovered segment):
    /// no record in the segment was written later, whatever its timestamp says. Retention uses it.
    last_write_ms: i64,
    /// Set when recovery kept an invalid batch aside instead of cutting it off (see `quarantine`):
    /// the file holds bytes after `size_bytes` that are never served. Position and reason.
    quarantined: Option<(u64, String)>,
}

impl Segment {
    /// Creates a new, empty segment. Fails if its `.log` already exists.
    pub(crate) fn create(dir: &Path, base_offset: i64) -> Result<Segment, StorageError> {
        let log_path = segment_path(dir, base_offset, LOG_SUFFIX);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&log_path)
            .context(|| format!("create segment {}", log_path.display()))?;
        let index = SegmentIndex::create(segment_path(dir, base_offset, INDEX_SUFFIX), segment_path(dir, base_offset, TIME_INDEX_SUFFIX))?;
        let last_write_ms = file_time_ms(&file).unwrap_or(0);
        Ok(Segment {
            base_offset,
            log_path,
            file: SegmentFile::Open(Arc::new(file)),
            size_bytes: 0,
            next_offset: base_offset,
            index,
            bytes_since_index_entry: 0,
            max_timestamp: None,
            first_append_ms: None,
            last_write_ms,
            quarantined: None,
        })
    }

    /// An empty segment with no files behind it: the placeholder an offline partition holds. Every
    /// read of it fails; the log never writes to it.
    pub(crate) fn detached(dir: &Path, base_offset: i64) -> Segment {
        Segment {
            base_offset,
            log_path: segment_path(dir, base_offset, LOG_SUFFIX),
            file: SegmentFile::Detached,
            size_bytes: 0,
            next_offset: base_offset,
            index: SegmentIndex::detached(segment_path(dir, base_offset, INDEX_SUFFIX), segment_path(dir, base_offset, TIME_INDEX_SUFFIX)),
            bytes_since_index_entry: 0,
            max_timestamp: None,
            first_append_ms: None,
            last_write_ms: 0,
            quarantined: None,
        }
    }

    /// Stops appending to this segment: its `.log` is closed and reopened read-only through the
    /// process-wide cache when read. Callers fsync it first (a roll does).
    pub(crate) fn seal(&mut self) {
        if matches!(self.file, SegmentFile::Open(_)) {
            self.file = SegmentFile::Sealed(CachedFile::new(&self.log_path));
        }
    }

    /// Makes a sealed segment the active one again (recovery dropped the empty segments after it):
    /// its `.log` is reopened for writing and held.
    pub(crate) fn activate(&mut self) -> Result<(), StorageError> {
        if matches!(self.file, SegmentFile::Sealed(_)) {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&self.log_path)
                .context(|| format!("open segment {}", self.log_path.display()))?;
            self.file = SegmentFile::Open(Arc::new(file));
        }
        Ok(())
    }

    /// The `.log` for reading.
    pub(crate) fn reader(&self) -> Result<Arc<File>, StorageError> {
        match &self.file {
            SegmentFile::Open(file) => Ok(Arc::clone(file)),
            SegmentFile::Sealed(cached) => cached.get().context(|| format!("open segment {}", self.log_path.display())),
            SegmentFile::Detached => Err(StorageError::Io(
                std::io::Error::new(std::io::ErrorKind::NotFound, "the partition is offline"),
                format!("read {}", self.log_path.display()),
            )),
        }
    }

    /// The `.log` for writing: only the active segment has one.
    fn writer(&self) -> Result<&Arc<File>, StorageError> {
        match &self.file {
            SegmentFile::Open(file) => Ok(file),
            SegmentFile::Sealed(_) | SegmentFile::Detached => Err(StorageError::Io(
                std::io::Error::other("the segment is not the active one"),
                format!("write {}", self.log_path.display()),
            )),
        }
    }

    /// Opens an existing segment and checks it (see `RecoveryScan`): every scanned batch must be a
    /// well-framed v2 batch with a matching CRC-32C, the first at the segment's base offset, offsets
    /// strictly increasing and below `next_base_offset`. The segment ends, in memory, before the first
    /// batch that is not (the file is not changed: see `Recovered`), and the indexes are rebuilt from
    /// the last trusted entry to match. The segment comes back open for writing; `seal` it unless it
    /// is the active one.
    pub(crate) fn recover(
        dir: &Path,
        base_offset: i64,
        next_base_offset: Option<i64>,
        scan: RecoveryScan,
        index_interval_bytes: u32,
        scanner: &mut BatchScanner,
    ) -> Result<(Segment, Recovered), StorageError> {
        let log_path = segment_path(dir, base_offset, LOG_SUFFIX);
        let file = OpenOptions::new().read(true).write(true).open(&log_path).context(|| format!("open segment {}", log_path.display()))?;
        let log_bytes = file.metadata().context(|| format!("stat segment {}", log_path.display()))?.len();
        let (index, last_time) =
            SegmentIndex::load(segment_path(dir, base_offset, INDEX_SUFFIX), segment_path(dir, base_offset, TIME_INDEX_SUFFIX), log_bytes)?;
        let first_append_ms = file_time_ms(&file);
        let file = Arc::new(file);
        let mut segment = Segment {
            base_offset,
            log_path,
            file: SegmentFile::Open(Arc::clone(&file)),
            size_bytes: 0,
            next_offset: base_offset,
            index,
            bytes_since_index_entry: 0,
            max_timestamp: None,
            first_append_ms: None,
            last_write_ms: file.metadata().ok().and_then(|m| m.modified().ok()).and_then(system_time_ms).unwrap_or(0),
            quarantined: None,
        };

        // Start at the last index entry if it points at the batch it claims to; otherwise scan all.
        let mut start = None;
        if scan == RecoveryScan::Tail
            && let (Some((relative_offset, position)), Some((timestamp, time_relative))) = (segment.index.last(), last_time)
        {
            let expected = base_offset + i64::from(relative_offset);
            let header = segment.read_header(&file, u64::from(position))?;
            if header.is_some_and(|h| h.magic == MAGIC_V2 && h.base_offset == expected) {
                start = Some((u64::from(position), expected));
                segment.max_timestamp = Some((timestamp, base_offset + i64::from(time_relative)));
            }
        }
        let outcome = match start {
            Some((position, expected)) => {
                let outcome = segment.scan(&file, position, expected, log_bytes, next_base_offset, index_interval_bytes, scanner)?;
                if outcome.invalid.as_ref().is_some_and(|(at, _)| *at == position) {
                    // The indexed batch itself is bad, so the index's running maximum may describe it:
                    // distrust the index entirely and rebuild from the start.
                    None
                } else {
                    Some(outcome)
                }
            }
            None => None,
        };
        let outcome = match outcome {
            Some(outcome) => outcome,
            None => {
                segment.index.truncate(0)?;
                segment.max_timestamp = None;
                segment.scan(&file, 0, base_offset, log_bytes, next_base_offset, index_interval_bytes, scanner)?
            }
        };
        if segment.size_bytes > 0 {
            segment.first_append_ms = first_append_ms;
        }
        Ok((segment, outcome))
    }

    /// Cuts the file back to the batches recovery accepted: for a torn or garbage tail of the active
    /// segment, beyond what was known to be on stable storage.
    pub(crate) fn cut_invalid_tail(&mut self) -> Result<(), StorageError> {
        let file = self.writer()?;
        let len = file.metadata().context(|| format!("stat segment {}", self.log_path.display()))?.len();
        if self.size_bytes < len {
            file.set_len(self.size_bytes).context(|| format!("truncate segment {}", self.log_path.display()))?;
        }
        Ok(())
    }

    /// Cuts the segment back to its first `position` bytes, which must be a batch boundary: a
    /// truncation of the log (`PartitionLog::truncate_to`). The `.log` is cut (reopened for writing
    /// first if the segment was sealed), then the segment is recovered from its files as at open
    /// with `RecoveryScan::Tail`, so nothing here works out size, next offset, max timestamp or
    /// indexes a second way: index entries at or beyond the cut fail the load's bounds check and go
    /// with the batches they name, and the batches after the last kept entry are scanned again. The
    /// segment comes back open for writing, as the last one; nothing is fsynced here. `Recovered`
    /// reports a batch before the cut that no longer checks out (the disk changed under us).
    pub(crate) fn truncate(
        &mut self,
        dir: &Path,
        position: u64,
        index_interval_bytes: u32,
        scanner: &mut BatchScanner,
    ) -> Result<Recovered, StorageError> {
        self.activate()?;
        self.writer()?.set_len(position).context(|| format!("truncate segment {} to {position} bytes", self.log_path.display()))?;
        let (segment, recovered) = Segment::recover(dir, self.base_offset, None, RecoveryScan::Tail, index_interval_bytes, scanner)?;
        *self = segment;
        Ok(recovered)
    }

    /// Keeps the bytes after the accepted batches on disk, untouched and never served: an invalid
    /// batch in data that was acknowledged (a closed segment, or below the recovery point) is
    /// corruption, not a torn write, and cutting it would also give its offsets out again.
    pub(crate) fn quarantine(&mut self, position: u64, reason: String) {
        self.quarantined = Some((position, reason));
    }

    /// Where and why recovery kept bytes of this segment aside, if it did.
    pub(crate) fn quarantined(&self) -> Option<&(u64, String)> {
        self.quarantined.as_ref()
    }

    /// Scans from `position` (where a batch with base offset `expected_base` must start) to the end
    /// of the file, updating size, next offset, max timestamp and the indexes.
    #[allow(clippy::too_many_arguments)]
    fn scan(
        &mut self,
        file: &File,
        position: u64,
        expected_base: i64,
        log_bytes: u64,
        next_base_offset: Option<i64>,
        index_interval_bytes: u32,
        scanner: &mut BatchScanner,
    ) -> Result<Recovered, StorageError> {
        // Entries at or after the scan start are rebuilt by the scan (the one at `position` is kept:
        // the batch there is the one it names, as the caller checked).
        let kept = self.index.count_before_position(position.saturating_add(1));
        self.index.truncate(kept)?;
        self.size_bytes = position;
        self.next_offset = expected_base;
        self.bytes_since_index_entry = 0;
        let first_position = position;
        let mut previous_last: Option<i64> = None;
        let mut invalid = None;
        scanner.reset(position);
        loop {
            let scanned = scanner.next(file, log_bytes, true).context(|| format!("read segment {}", self.log_path.display()))?;
            let (position, header, bytes) = match scanned {
                Scanned::End => break,
                Scanned::Invalid { position, reason } => {
                    invalid = Some((position, reason));
                    break;
                }
                Scanned::Batch { position, header, bytes } => (position, header, bytes),
            };
            if let Some(reason) = self.offset_problem(&header, position, previous_last, expected_base, next_base_offset) {
                invalid = Some((position, reason));
                break;
            }
            let delta = if self.max_timestamp.is_none_or(|(t, _)| header.max_timestamp > t) {
                max_timestamp_offset_delta(&header, bytes)
            } else {
                0
            };
            if let Some(entry) = self.account(&header, position, delta, index_interval_bytes, position == first_position) {
                self.index.push(entry);
            }
            previous_last = Some(header.last_offset());
        }
        if let Err(error) = self.index.write_pending() {
            tracing::warn!(segment = %self.log_path.display(), %error, "could not write rebuilt index entries; they stay in memory");
        }
        if invalid.is_none() && self.size_bytes < log_bytes {
            invalid = Some((self.size_bytes, "file ends inside a batch".to_string()));
        }
        Ok(Recovered { invalid })
    }

    /// Why a CRC-valid batch still cannot be part of this segment, if it cannot.
    fn offset_problem(
        &self,
        header: &BatchHeader,
        position: u64,
        previous_last: Option<i64>,
        expected_base: i64,
        next_base_offset: Option<i64>,
    ) -> Option<String> {
        match previous_last {
            None if header.base_offset != expected_base => {
                return Some(format!("batch has base offset {}, expected {expected_base}", header.base_offset));
            }
            Some(last) if header.base_offset <= last => {
                return Some(format!("batch base offset {} does not follow the previous batch's last offset {last}", header.base_offset));
            }
            _ => {}
        }
        if header.last_offset_delta < 0
            || header.record_count < 0
            || i64::from(header.record_count) > i64::from(header.last_offset_delta) + 1
        {
            return Some(format!("record count {} does not fit last offset delta {}", header.record_count, header.last_offset_delta));
        }
        // The base offset is outside the CRC, so these bounds also keep the arithmetic below (and the
        // next offset, last + 1) from overflowing on a garbage header.
        let Some(last_offset) = header.base_offset.checked_add(i64::from(header.last_offset_delta)).filter(|last| *last < i64::MAX) else {
            return Some(format!("base offset {} is out of range", header.base_offset));
        };
        if last_offset.saturating_sub(self.base_offset) > RELATIVE_OFFSET_MAX {
            return Some(format!("last offset {} is too far from the segment base {}", header.last_offset(), self.base_offset));
        }
        if next_base_offset.is_some_and(|next| header.last_offset() >= next) {
            return Some(format!("last offset {} overlaps the next segment", header.last_offset()));
        }
        if position > POSITION_MAX {
            return Some(format!("batch starts beyond byte {POSITION_MAX}"));
        }
        None
    }

    /// Updates size, offsets and max timestamp for a batch now at `position`, and returns the index
    /// entry to add for it, if one is due. The first batch of a segment is never indexed (a lookup
    /// that finds no entry starts at 0); `already_indexed` marks a batch whose entry exists.
    fn account(
        &mut self,
        header: &BatchHeader,
        position: u64,
        max_timestamp_offset_delta: i32,
        index_interval_bytes: u32,
        already_indexed: bool,
    ) -> Option<IndexEntry> {
        if self.max_timestamp.is_none_or(|(t, _)| header.max_timestamp > t) {
            self.max_timestamp = Some((header.max_timestamp, header.base_offset.saturating_add(i64::from(max_timestamp_offset_delta))));
        }
        let mut entry = None;
        if already_indexed {
            self.bytes_since_index_entry = 0;
        } else if self.bytes_since_index_entry > u64::from(index_interval_bytes) {
            let (max_timestamp, max_offset) = self.max_timestamp.unwrap_or((header.max_timestamp, header.base_offset));
            entry = Some(IndexEntry {
                relative_offset: (header.base_offset - self.base_offset) as u32,
                position: position as u32,
                max_timestamp,
                max_timestamp_relative_offset: (max_offset - self.base_offset) as u32,
            });
            self.bytes_since_index_entry = 0;
        }
        let size = header.total_size() as u64;
        self.bytes_since_index_entry += size;
        self.size_bytes = position + size;
        self.next_offset = header.last_offset().saturating_add(1);
        entry
    }

    /// Appends already-validated batches (offsets assigned, in order, all belonging here) with one
    /// write, then updates the indexes. On a failed write the file is cut back so the segment stays
    /// exactly as before.
    pub(crate) fn append(
        &mut self,
        bytes: &[u8],
        batches: &[ValidatedBatch],
        index_interval_bytes: u32,
        now_ms: i64,
    ) -> Result<(), StorageError> {
        let start = self.size_bytes;
        let file = self.writer()?;
        if let Err(error) = file.write_all_at(bytes, start) {
            if let Err(cut) = file.set_len(start) {
                tracing::warn!(segment = %self.log_path.display(), %cut, "could not cut a failed append back; recovery will");
            }
            return Err(StorageError::Io(error, format!("append {} bytes to {}", bytes.len(), self.log_path.display())));
        }
        let mut position = start;
        for batch in batches {
            if let Some(entry) = self.account(&batch.header, position, batch.max_timestamp_offset_delta, index_interval_bytes, false) {
                self.index.push(entry);
            }
            position += batch.header.total_size() as u64;
        }
        self.first_append_ms.get_or_insert(now_ms);
        self.last_write_ms = now_ms;
        if let Err(error) = self.index.maybe_write() {
            // The data is written and readable; the index is a cache that the next open repairs.
            tracing::warn!(segment = %self.log_path.display(), %error, "index write failed");
        }
        Ok(())
    }

    /// Reads the header of the batch at `position`; `None` past the end of the file.
    fn read_header(&self, file: &File, position: u64) -> Result<Option<BatchHeader>, StorageError> {
        let mut buf = [0u8; BATCH_HEADER_BYTES];
        match file.read_exact_at(&mut buf, position) {
            Ok(()) => Ok(BatchHeader::parse(&buf)),
            Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
            Err(error) => Err(StorageError::Io(error, format!("read {}", self.log_path.display()))),
        }
    }

    /// Walks batch headers from `from` until `wanted` accepts one; returns its position and header.
    fn find_batch(
        &self,
        file: &File,
        from: u64,
        mut wanted: impl FnMut(&BatchHeader) -> bool,
    ) -> Result<Option<(u64, BatchHeader)>, StorageError> {
        let mut scanner = BatchScanner::new(LOOKUP_BUFFER_BYTES);
        scanner.reset(from);
        loop {
            match scanner.next(file, self.size_bytes, false).context(|| format!("read segment {}", self.log_path.display()))? {
                Scanned::End => return Ok(None),
                Scanned::Invalid { position, reason } => {
                    return Err(StorageError::CorruptMessage(format!("segment {} at byte {position}: {reason}", self.log_path.display())));
                }
                Scanned::Batch { position, header, .. } => {
                    if wanted(&header) {
                        return Ok(Some((position, header)));
                    }
                }
            }
        }
    }

    /// The first batch whose last offset is at or above `offset`: its position and header.
    pub(crate) fn locate(&self, offset: i64) -> Result<Option<(u64, BatchHeader)>, StorageError> {
        if self.size_bytes == 0 || offset >= self.next_offset {
            return Ok(None);
        }
        let relative = (offset - self.base_offset).clamp(0, RELATIVE_OFFSET_MAX) as u32;
        self.find_batch(&*self.reader()?, self.index.position_for_offset(relative), |h| h.last_offset() >= offset)
    }

    /// The first record at or after `min_offset` with timestamp >= `timestamp`: (offset, timestamp).
    /// Record-level for uncompressed CreateTime batches; otherwise the batch's first offset (at or
    /// after `min_offset`) with its max timestamp, since batches are never decompressed.
    pub(crate) fn find_timestamp(&self, timestamp: i64, min_offset: i64) -> Result<Option<(i64, i64)>, StorageError> {
        let file = self.reader()?;
        let mut from = self.index.position_for_timestamp(timestamp);
        loop {
            let Some((position, header)) =
                self.find_batch(&file, from, |h| h.max_timestamp >= timestamp && h.last_offset() >= min_offset)?
            else {
                return Ok(None);
            };
            if header.compression() != COMPRESSION_NONE || header.timestamp_type() == TimestampType::LogAppendTime {
                return Ok(Some((header.base_offset.max(min_offset), header.max_timestamp)));
            }
            let mut batch = vec![0u8; header.total_size()];
            file.read_exact_at(&mut batch, position).context(|| format!("read {}", self.log_path.display()))?;
            for record in Records::new(&batch) {
                let record = record.map_err(|why| {
                    StorageError::CorruptMessage(format!("segment {} at byte {position}: {why}", self.log_path.display()))
                })?;
                let offset = header.base_offset.saturating_add(i64::from(record.offset_delta));
                let record_timestamp = header.base_timestamp.wrapping_add(record.timestamp_delta);
                if offset >= min_offset && record_timestamp >= timestamp {
                    return Ok(Some((offset, record_timestamp)));
                }
            }
            // The header's max timestamp promised a record that the records do not hold (a producer
            // that set it wrong): keep looking after this batch.
            from = position + header.total_size() as u64;
        }
    }

    /// Reads `len` bytes at `position`, appending them to `out` (see [`pread_into`]).
    pub(crate) fn read_into(&self, out: &mut Vec<u8>, position: u64, len: usize) -> Result<(), StorageError> {
        pread_into(&*self.reader()?, out, position, len)
            .map_err(|e| StorageError::Io(e, format!("read {len} bytes at {position} from {}", self.log_path.display())))
    }

    /// The end of the run of whole batches that starts at `position` (a batch boundary), ends at or
    /// before `limit` and holds only offsets below `upper_bound`, with the offset after the run. The
    /// caller has checked that the first batch qualifies. Costs no I/O when the rest of the segment
    /// qualifies; otherwise an index lookup and a walk over the few headers after an index entry.
    pub(crate) fn batches_end(&self, position: u64, limit: u64, upper_bound: i64) -> Result<(u64, i64), StorageError> {
        let mut limit = limit.min(self.size_bytes);
        if upper_bound < self.next_offset {
            // The first batch reaching the bound, and everything after it, stay out.
            if let Some((bound, _)) = self.locate(upper_bound)? {
                limit = limit.min(bound);
            }
        }
        if limit == self.size_bytes {
            return Ok((self.size_bytes, self.next_offset));
        }
        let file = self.reader()?;
        let mut scanner = BatchScanner::new(BOUNDARY_WALK_BUFFER_BYTES);
        let from = self.index.position_at_or_below(limit).max(position);
        scanner.reset(from);
        let mut end = from;
        loop {
            match scanner.next(&file, self.size_bytes, false).context(|| format!("read segment {}", self.log_path.display()))? {
                Scanned::End => return Ok((self.size_bytes, self.next_offset)),
                Scanned::Invalid { position, reason } => {
                    return Err(StorageError::CorruptMessage(format!("segment {} at byte {position}: {reason}", self.log_path.display())));
                }
                Scanned::Batch { position, header, .. } => {
                    let batch_end = position + header.total_size() as u64;
                    if batch_end > limit {
                        // No record lies between the run's last batch and this one.
                        return Ok((end, header.base_offset));
                    }
                    end = batch_end;
                }
            }
        }
    }

    /// Walks every batch header (no CRC, payloads skipped where possible) in order.
    pub(crate) fn for_each_header(&self, scanner: &mut BatchScanner, mut each: impl FnMut(&BatchHeader, u64)) -> Result<(), StorageError> {
        if self.size_bytes == 0 {
            return Ok(());
        }
        let file = self.reader()?;
        scanner.reset(0);
        loop {
            match scanner.next(&file, self.size_bytes, false).context(|| format!("read segment {}", self.log_path.display()))? {
                Scanned::End => return Ok(()),
                Scanned::Invalid { position, reason } => {
                    return Err(StorageError::CorruptMessage(format!("segment {} at byte {position}: {reason}", self.log_path.display())));
                }
                Scanned::Batch { header, position, .. } => each(&header, position),
            }
        }
    }

    /// When the segment was last written, by the broker's clock (ms since the epoch): the last
    /// append, or the file's modification time for a segment recovered at open. Record timestamps
    /// come from producers and can be old for fresh data, or far in the future; this can be neither.
    pub(crate) fn last_write_ms(&self) -> i64 {
        self.last_write_ms
    }

    /// The control type of the control batch at file position `position` (read from its first
    /// record's key). `None` when it cannot be read; recovery then treats the marker as unknown.
    pub(crate) fn control_type_at(&self, position: u64) -> Option<crate::batch::ControlType> {
        let mut buf = [0u8; crate::batch::CONTROL_BATCH_BYTES + 16];
        let available = usize::try_from(self.size_bytes.saturating_sub(position)).ok()?.min(buf.len());
        let target = buf.get_mut(..available)?;
        self.reader().ok()?.read_exact_at(target, position).ok()?;
        crate::batch::control_type(target)
    }

    /// fdatasync of the `.log`. Pending index entries are written too; the index files are fsynced
    /// only when `with_indexes` (clean shutdown). They need not be otherwise: entries are only ever
    /// appended, so after a crash the files hold true entries up to some point and zeros or nothing
    /// after it, and recovery keeps only the valid prefix and checks its last entry against the log.
    pub(crate) fn sync(&mut self, with_indexes: bool) -> Result<(), StorageError> {
        self.writer()?.sync_data().context(|| format!("fsync {}", self.log_path.display()))?;
        if with_indexes {
            self.index.sync()?;
        } else if let Err(error) = self.index.write_pending() {
            tracing::warn!(segment = %self.log_path.display(), %error, "index write failed");
        }
        Ok(())
    }

    /// Removes the segment's files: indexes first, so a crash in between leaves a `.log` whose indexes
    /// are rebuilt rather than orphaned indexes.
    pub(crate) fn delete_files(&self) -> Result<(), StorageError> {
        self.index.delete_files()?;
        remove_if_present(&self.log_path)
    }

    pub(crate) fn base_offset(&self) -> i64 {
        self.base_offset
    }

    pub(crate) fn next_offset(&self) -> i64 {
        self.next_offset
    }

    pub(crate) fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.size_bytes == 0
    }

    /// The `.log` while the segment is the active one (the file an fsync must reach).
    pub(crate) fn file(&self) -> Option<&Arc<File>> {
        self.writer().ok()
    }

    pub(crate) fn max_timestamp(&self) -> Option<(i64, i64)> {
        self.max_timestamp
    }

    pub(crate) fn first_append_ms(&self) -> Option<i64> {
        self.first_append_ms
    }

    #[cfg(test)]
    pub(crate) fn index_entries(&self) -> usize {
        self.index.len()
    }

    /// The timestamp retention judges the segment by. Kafka's rule is the largest record timestamp
    /// (or the last write when batches carry none, -1). Alone, that lets one record dated far in the
    /// future keep its segment, and so every later one, until the disk fills. So the largest timestamp
    /// counts only up to `last_write + future_bound_ms`: the latest timestamp the broker accepts today
    /// for a record written then (`message.timestamp.after.max.ms`). Data accepted under that bound
    /// expires exactly as in Kafka; an outlier written before the bound existed (or by an
    /// offset-preserving mirror) holds its segment at most `future_bound_ms` longer than its last
    /// write would. A segment recovery emptied counts by its last write.
    pub(crate) fn retention_timestamp(&self, future_bound_ms: u64) -> i64 {
        let written = self.last_write_ms;
        match self.max_timestamp {
            Some((timestamp, _)) if timestamp >= 0 => {
                let bound = written.saturating_add(i64::try_from(future_bound_ms).unwrap_or(i64::MAX));
                timestamp.min(bound)
            }
            _ => written,
        }
    }
}

/// Offset delta of the first record with the batch's largest timestamp, if the batch's records can
/// be looked at (uncompressed, CreateTime, fully in the scan buffer); 0 otherwise.
fn max_timestamp_offset_delta(header: &BatchHeader, bytes: Option<&[u8]>) -> i32 {
    let Some(bytes) = bytes.filter(|_| header.compression() == COMPRESSION_NONE && header.timestamp_type() == TimestampType::CreateTime)
    else {
        return 0;
    };
    let mut best: Option<(i64, i32)> = None;
    for record in Records::new(bytes).map_while(Result::ok) {
        let timestamp = header.base_timestamp.wrapping_add(record.timestamp_delta);
        if best.is_none_or(|(t, _)| timestamp > t) {
            best = Some((timestamp, record.offset_delta));
        }
    }
    best.map_or(0, |(_, delta)| delta)
}

/// When the segment file was created (or last modified, where creation times are unsupported), in
/// ms since the epoch: the best estimate of the first append after a restart.
fn file_time_ms(file: &File) -> Option<i64> {
    let metadata = file.metadata().ok()?;
    metadata.created().or_else(|_| metadata.modified()).ok().and_then(system_time_ms)
}

fn system_time_ms(time: std::time::SystemTime) -> Option<i64> {
    time.duration_since(UNIX_EPOCH).ok().and_then(|d| i64::try_from(d.as_millis()).ok())
}

/// Reads `len` bytes of `file` at `position`, appending them to `out`. The bytes are read into
/// `out`'s spare capacity (rustix's `spare_capacity`), not into zeros written first only to be
/// overwritten: a Fetch of 32 MiB is 32 MiB of memset saved (7.6 % of a broker's samples serving a
/// mirror, BENCHMARKS.md). On error `out` is as it was.
pub(crate) fn pread_into(file: &File, out: &mut Vec<u8>, position: u64, len: usize) -> std::io::Result<()> {
    let start = out.len();
    let end = start + len;
    out.reserve_exact(len);
    while out.len() < end {
        // The spare capacity may be a little larger than what is left to read: the excess read
        // (bytes after the range, or none at the file's end) is cut off below.
        let at = position + (out.len() - start) as u64;
        let read = match rustix::io::pread(file, rustix::buffer::spare_capacity(out), at) {
            Ok(read) => read,
            Err(rustix::io::Errno::INTR) => continue,
            Err(errno) => {
                out.truncate(start);
                return Err(errno.into());
            }
        };
        if read == 0 {
            out.truncate(start);
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
        }
        if out.len() < end && out.capacity() == out.len() {
            out.reserve_exact(end - out.len());
        }
    }
    out.truncate(end);
    Ok(())
}

/// One step of a scan.
#[derive(Debug)]
pub(crate) enum Scanned<'a> {
    /// A batch at `position`; `bytes` is the whole batch when the scan verified it and it fit the
    /// buffer.
    Batch { position: u64, header: BatchHeader, bytes: Option<&'a [u8]> },
    /// The scan reached its limit exactly at a batch boundary.
    End,
    /// The bytes at `position` are not a valid batch (torn, garbage, or CRC mismatch).
    Invalid { position: u64, reason: String },
}

/// Walks the batches of a segment file through one reusable buffer, reading large chunks rather than
/// one syscall per header. With `verify`, each batch's CRC-32C is checked (streaming through the buffer
/// for batches larger than it); without, payloads that are not already buffered are skipped.
#[derive(Debug)]
pub(crate) struct BatchScanner {
    buf: Vec<u8>,
    /// Unconsumed bytes are `buf[start..end]`; `buf[0]` is at file position `buf_position`.
    start: usize,
    end: usize,
    buf_position: u64,
}

impl BatchScanner {
    pub(crate) fn new(capacity: usize) -> BatchScanner {
        BatchScanner { buf: vec![0; capacity.max(BATCH_HEADER_BYTES)], start: 0, end: 0, buf_position: 0 }
    }

    /// Restarts the walk at file position `position`.
    pub(crate) fn reset(&mut self, position: u64) {
        self.buf_position = position;
        self.start = 0;
        self.end = 0;
    }

    /// Makes at least `need` unconsumed bytes available, or as many as the file holds below `limit`,
    /// reading up to `read_ahead` bytes beyond what is buffered.
    fn fill(&mut self, file: &File, limit: u64, need: usize, read_ahead: usize) -> std::io::Result<()> {
        if self.end - self.start >= need {
            return Ok(());
        }
        self.buf.copy_within(self.start..self.end, 0);
        self.buf_position += self.start as u64;
        self.end -= self.start;
        self.start = 0;
        let target_end = self.buf.len().min(self.end + read_ahead.max(need));
        while self.end < need {
            let file_position = self.buf_position + self.end as u64;
            let room = (target_end - self.end).min(usize::try_from(limit.saturating_sub(file_position)).unwrap_or(usize::MAX));
            let Some(target) = self.buf.get_mut(self.end..self.end + room).filter(|t| !t.is_empty()) else {
                break;
            };
            match file.read_at(target, file_position) {
                Ok(0) => break,
                Ok(n) => self.end += n,
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    pub(crate) fn next(&mut self, file: &File, limit: u64, verify: bool) -> std::io::Result<Scanned<'_>> {
        let position = self.buf_position + self.start as u64;
        if position >= limit {
            return Ok(Scanned::End);
        }
        // A verifying scan reads every byte anyway, so it reads as much as the buffer holds.
        let read_ahead = if verify { self.buf.len() } else { HEADER_WALK_READ_BYTES };
        self.fill(file, limit, BATCH_HEADER_BYTES, read_ahead)?;
        let available = self.buf.get(self.start..self.end).unwrap_or_default();
        if available.is_empty() {
            // The file is shorter than the limit we were given: nothing more to read.
            return Ok(Scanned::End);
        }
        let invalid = |reason: String| Ok(Scanned::Invalid { position, reason });
        let Some(header) = BatchHeader::parse(available) else {
            return invalid(format!("torn batch: {} bytes left, too few for a header", available.len()));
        };
        if header.magic != MAGIC_V2 {
            return invalid(format!("magic {} where a v2 batch should start", header.magic));
        }
        let Some(length) = usize::try_from(header.batch_length).ok().filter(|l| *l >= BATCH_LENGTH_MIN) else {
            return invalid(format!("batch length {} is invalid", header.batch_length));
        };
        let total = LOG_OVERHEAD_BYTES + length;
        let remaining = limit - position;
        if total as u64 > remaining {
            return invalid(format!("torn batch: {total} bytes claimed, {remaining} left in the file"));
        }
        if total <= self.buf.len() {
            if verify {
                self.fill(file, limit, total, read_ahead)?;
            }
            let range = self.start..self.start + total;
            // Only bytes already read are the batch: a header walk reads ahead a bounded amount, so
            // a batch may run past `end` even though the buffer has room for it.
            let bytes = self.buf.get(range.clone()).filter(|_| range.end <= self.end);
            if verify {
                let Some(bytes) = bytes else {
                    return invalid("torn batch: the file ended while reading it".to_string());
                };
                let computed = crate::batch::batch_crc(bytes);
                if computed != header.crc {
                    return invalid(format!("CRC-32C mismatch: stored {:#010x}, computed {computed:#010x}", header.crc));
                }
            }
            if bytes.is_some() {
                self.start = range.end;
            } else {
                self.reset(position + total as u64);
            }
            return Ok(Scanned::Batch { position, header, bytes: self.buf.get(range).filter(|_| verify) });
        }
        // Larger than the buffer: stream the CRC through it chunk by chunk.
        if verify {
            let mut crc = crc32c::crc32c(available.get(CRC_COVERED_FROM..).unwrap_or_default());
            let mut at = position + available.len() as u64;
            let end = position + total as u64;
            while at < end {
                let n = usize::try_from(end - at).unwrap_or(usize::MAX).min(self.buf.len());
                let Some(chunk) = self.buf.get_mut(..n) else {
                    break;
                };
                match file.read_exact_at(chunk, at) {
                    Ok(()) => {}
                    Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => {
                        self.reset(position);
                        return invalid("torn batch: the file ended while reading it".to_string());
                    }
                    Err(error) => return Err(error),
                }
                crc = crc32c::crc32c_append(crc, chunk);
                at += n as u64;
            }
            if crc != header.crc {
                self.reset(position);
                return invalid(format!("CRC-32C mismatch: stored {:#010x}, computed {crc:#010x}", header.crc));
            }
        }
        self.reset(position + total as u64);
        Ok(Scanned::Batch { position, header, bytes: None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{Origin, set_base_offset, validate};
    use crate::testing::BatchBuilder;

    fn validated(bytes: &[u8]) -> Vec<ValidatedBatch> {
        let mut out = Vec::new();
        validate(bytes, u32::MAX, Origin::Replica, &mut out).unwrap();
        out
    }

    /// A segment at base 100 holding `n` batches of 3 records, each `value_bytes` per record.
    fn filled(dir: &Path, n: usize, value_bytes: usize, interval: u32) -> Segment {
        let mut segment = Segment::create(dir, 100).unwrap();
        for i in 0..n {
            let mut bytes = BatchBuilder::new(1_000 + i as i64 * 10).records(3, value_bytes).build();
            set_base_offset(&mut bytes, 100 + 3 * i as i64);
            let batches = validated(&bytes);
            segment.append(&bytes, &batches, interval, 5).unwrap();
        }
        segment
    }

    #[test]
    fn locate_finds_the_batch_holding_an_offset() {
        let dir = tempfile::tempdir().unwrap();
        let segment = filled(dir.path(), 50, 20, 100);
        assert!(segment.index_entries() > 5);
        for offset in 100..250 {
            let (_, header) = segment.locate(offset).unwrap().unwrap();
            assert!(header.base_offset <= offset && offset <= header.last_offset(), "offset {offset}");
        }
        assert!(segment.locate(250).unwrap().is_none());
        assert_eq!(segment.next_offset(), 250);
        assert_eq!(segment.max_timestamp(), Some((1_000 + 49 * 10 + 2, 249)));
    }

    #[test]
    fn finds_records_by_timestamp() {
        let dir = tempfile::tempdir().unwrap();
        let segment = filled(dir.path(), 50, 20, 0);
        // Batch i holds timestamps 1000+10i .. 1000+10i+2 at offsets 100+3i .. 100+3i+2.
        assert_eq!(segment.find_timestamp(0, 0).unwrap(), Some((100, 1_000)));
        assert_eq!(segment.find_timestamp(1_001, 0).unwrap(), Some((101, 1_001)));
        assert_eq!(segment.find_timestamp(1_003, 0).unwrap(), Some((103, 1_010)));
        assert_eq!(segment.find_timestamp(1_252, 0).unwrap(), Some((177, 1_252)));
        assert_eq!(segment.find_timestamp(1_253, 0).unwrap(), Some((178, 1_260)));
        assert_eq!(segment.find_timestamp(1_000, 150).unwrap(), Some((150, 1_162)));
        assert_eq!(segment.find_timestamp(5_000, 0).unwrap(), None);
    }

    #[test]
    fn recovery_rebuilds_a_deleted_index_and_keeps_an_intact_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut segment = filled(dir.path(), 40, 20, 64);
        segment.sync(true).unwrap();
        let (entries, size, max) = (segment.index_entries(), segment.size_bytes(), segment.max_timestamp());
        drop(segment);
        let mut scanner = BatchScanner::new(1024);
        let (segment, outcome) = Segment::recover(dir.path(), 100, None, RecoveryScan::Tail, 64, &mut scanner).unwrap();
        assert_eq!((outcome.invalid, segment.index_entries(), segment.size_bytes(), segment.max_timestamp()), (None, entries, size, max));
        drop(segment);
        std::fs::remove_file(segment_path(dir.path(), 100, INDEX_SUFFIX)).unwrap();
        let (segment, outcome) = Segment::recover(dir.path(), 100, None, RecoveryScan::Tail, 64, &mut scanner).unwrap();
        assert_eq!((outcome.invalid, segment.index_entries(), segment.size_bytes(), segment.max_timestamp()), (None, entries, size, max));
        assert_eq!(std::fs::metadata(segment_path(dir.path(), 100, INDEX_SUFFIX)).unwrap().len(), entries as u64 * 8);
    }

    #[test]
    fn scanner_streams_batches_larger_than_its_buffer() {
        let dir = tempfile::tempdir().unwrap();
        let segment = filled(dir.path(), 3, 700, 0);
        let mut scanner = BatchScanner::new(BATCH_HEADER_BYTES + 10);
        scanner.reset(0);
        let mut seen = 0;
        while let Scanned::Batch { bytes, .. } = scanner.next(segment.file().unwrap(), segment.size_bytes(), true).unwrap() {
            assert!(bytes.is_none());
            seen += 1;
        }
        assert_eq!(seen, 3);
        // Flip a payload byte of the middle batch: the streamed CRC catches it.
        let second = segment.locate(103).unwrap().unwrap().0;
        segment.file().unwrap().write_all_at(&[0xAB], second + 500).unwrap();
        scanner.reset(0);
        assert!(matches!(scanner.next(segment.file().unwrap(), segment.size_bytes(), true).unwrap(), Scanned::Batch { .. }));
        assert!(
            matches!(scanner.next(segment.file().unwrap(), segment.size_bytes(), true).unwrap(), Scanned::Invalid { position, .. } if position == second)
        );
    }
}
