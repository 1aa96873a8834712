//! The sparse offset index and the time index of one segment, kept together because their entries
//! are written in pairs: entry `i` of `.index` is (relative base offset, file position) of an indexed
//! batch, and entry `i` of `.timeindex` is (largest timestamp in the segment up to and including
//! that batch, relative offset of the record carrying it).
//!
//! Both are caches of the `.log`. Reads and ListOffsets use them to find a starting file position
//! without scanning the segment; recovery trusts only the consistent prefix of the pair and rebuilds
//! the rest from the log. No mmap (unsafe is forbidden): the entries live in memory as vectors and
//! new entries are appended to the files with plain positional writes. The files are opened for each
//! write (one per 32 entries, and at each sync) and closed again: holding them open would cost two
//! descriptors per segment for the life of the broker, for files that are almost never touched.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::batch::{BATCH_HEADER_BYTES, Reader};
use crate::error::{IoContext, StorageError};

/// On-disk size of an offset index entry: relative offset u32, position u32.
pub(crate) const OFFSET_INDEX_ENTRY_BYTES: usize = 8;
/// On-disk size of a time index entry: timestamp i64, relative offset u32.
pub(crate) const TIME_INDEX_ENTRY_BYTES: usize = 12;
/// New entries are written to the files this many at a time (and at every sync), not one write per
/// append: the files are caches, and entries not yet written are rebuilt by recovery's scan of the
/// segment tail after the last entry on disk, which this keeps short (32 index intervals).
const INDEX_WRITE_BATCH_ENTRIES: usize = 32;

/// One indexed batch: both halves of a paired entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IndexEntry {
    /// Base offset of the indexed batch, relative to the segment's base offset.
    pub relative_offset: u32,
    /// File position of the indexed batch in the `.log`.
    pub position: u32,
    /// Largest timestamp in the segment up to and including the indexed batch.
    pub max_timestamp: i64,
    /// Relative offset of the first record carrying `max_timestamp`.
    pub max_timestamp_relative_offset: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct OffsetEntry {
    relative_offset: u32,
    position: u32,
}

/// The paired indexes of one segment.
#[derive(Debug)]
pub(crate) struct SegmentIndex {
    offset_path: PathBuf,
    time_path: PathBuf,
    entries: Vec<OffsetEntry>,
    /// The time index's timestamps, parallel to `entries`. The time index's offsets are needed only
    /// for the last entry (the segment's largest timestamp), which the segment keeps itself; leaving
    /// them on disk saves a third of the memory.
    max_timestamps: Vec<i64>,
    /// Entries `written..` are in memory and encoded in the pending buffers, not yet in the files.
    written: usize,
    pending_offset_bytes: Vec<u8>,
    pending_time_bytes: Vec<u8>,
}

impl SegmentIndex {
    /// Creates empty index files, replacing any that exist.
    pub(crate) fn create(offset_path: PathBuf, time_path: PathBuf) -> Result<SegmentIndex, StorageError> {
        for path in [&offset_path, &time_path] {
            OpenOptions::new().write(true).create(true).truncate(true).open(path).context(|| format!("create index {}", path.display()))?;
        }
        Ok(SegmentIndex::detached(offset_path, time_path))
    }

    /// An index with no entries whose files are not touched (an offline partition's placeholder).
    pub(crate) fn detached(offset_path: PathBuf, time_path: PathBuf) -> SegmentIndex {
        SegmentIndex {
            offset_path,
            time_path,
            entries: Vec::new(),
            max_timestamps: Vec::new(),
            written: 0,
            pending_offset_bytes: Vec::new(),
            pending_time_bytes: Vec::new(),
        }
    }

    /// Loads the longest consistent prefix of a segment's index pair (creating missing files). Entries
    /// must be strictly increasing in offset and position, point inside a `.log` of `log_bytes` bytes,
    /// and have non-decreasing timestamps; the two files are cut to the same length. Also returns the
    /// last kept time entry, (timestamp, relative offset). The files themselves are left as found; the
    /// caller decides how much to trust and then calls `truncate`.
    pub(crate) fn load(
        offset_path: PathBuf,
        time_path: PathBuf,
        log_bytes: u64,
    ) -> Result<(SegmentIndex, Option<(i64, u32)>), StorageError> {
        let open = |path: &Path| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
                .context(|| format!("open index {}", path.display()))
        };
        let offset_file = open(&offset_path)?;
        let time_file = open(&time_path)?;
        // Each entry names a distinct batch after the first, so a valid index cannot hold more entries
        // than the log holds batch headers. Anything longer is garbage and is not read at all.
        let entries_max = usize::try_from(log_bytes / BATCH_HEADER_BYTES as u64).unwrap_or(usize::MAX);
        let offset_bytes = read_prefix(&offset_file, entries_max.saturating_mul(OFFSET_INDEX_ENTRY_BYTES))
            .context(|| format!("read index {}", offset_path.display()))?;
        let time_bytes = read_prefix(&time_file, entries_max.saturating_mul(TIME_INDEX_ENTRY_BYTES))
            .context(|| format!("read index {}", time_path.display()))?;

        let mut entries = Vec::with_capacity(offset_bytes.len() / OFFSET_INDEX_ENTRY_BYTES);
        let mut previous = OffsetEntry { relative_offset: 0, position: 0 };
        for chunk in offset_bytes.chunks_exact(OFFSET_INDEX_ENTRY_BYTES) {
            let mut r = Reader::new(chunk);
            let (Some(relative_offset), Some(position)) = (r.u32(), r.u32()) else {
                break;
            };
            let fits = u64::from(position) + BATCH_HEADER_BYTES as u64 <= log_bytes;
            if relative_offset <= previous.relative_offset || position <= previous.position || !fits {
                break;
            }
            previous = OffsetEntry { relative_offset, position };
            entries.push(previous);
        }

        let mut max_timestamps = Vec::with_capacity(entries.len());
        let mut last_time = None;
        for (i, chunk) in time_bytes.chunks_exact(TIME_INDEX_ENTRY_BYTES).take(entries.len()).enumerate() {
            let mut r = Reader::new(chunk);
            let (Some(timestamp), Some(relative_offset)) = (r.i64(), r.u32()) else {
                break;
            };
            // The record with the running maximum sits in the indexed batch or before it, so before the
            // next indexed batch; and both the maximum and its offset only move forward.
            let before_next = entries.get(i + 1).is_none_or(|next| relative_offset < next.relative_offset);
            let forward = last_time.is_none_or(|(t, o)| timestamp >= t && relative_offset >= o);
            if !before_next || !forward {
                break;
            }
            max_timestamps.push(timestamp);
            last_time = Some((timestamp, relative_offset));
        }
        entries.truncate(max_timestamps.len());
        let written = entries.len();
        let index = SegmentIndex {
            offset_path,
            time_path,
            entries,
            max_timestamps,
            written,
            pending_offset_bytes: Vec::new(),
            pending_time_bytes: Vec::new(),
        };
        Ok((index, last_time))
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// (relative offset, position) of the last entry.
    pub(crate) fn last(&self) -> Option<(u32, u32)> {
        self.entries.last().map(|e| (e.relative_offset, e.position))
    }

    /// Number of entries whose position is below `position`.
    pub(crate) fn count_before_position(&self, position: u64) -> usize {
        self.entries.partition_point(|e| u64::from(e.position) < position)
    }

    /// Keeps the first `n` entries, in memory and on disk (the files are cut only if longer).
    pub(crate) fn truncate(&mut self, n: usize) -> Result<(), StorageError> {
        self.write_pending()?;
        self.entries.truncate(n);
        self.max_timestamps.truncate(n);
        self.written = self.entries.len();
        let n = self.entries.len() as u64;
        for (path, entry_bytes) in [(&self.offset_path, OFFSET_INDEX_ENTRY_BYTES), (&self.time_path, TIME_INDEX_ENTRY_BYTES)] {
            let want = n * entry_bytes as u64;
            let have = std::fs::metadata(path).context(|| format!("stat index {}", path.display()))?.len();
            if have != want {
                open_for_write(path)?.set_len(want).context(|| format!("truncate index {}", path.display()))?;
            }
        }
        Ok(())
    }

    /// Adds an entry in memory and to the pending writes. Entries must come in increasing order.
    pub(crate) fn push(&mut self, entry: IndexEntry) {
        self.pending_offset_bytes.extend_from_slice(&entry.relative_offset.to_be_bytes());
        self.pending_offset_bytes.extend_from_slice(&entry.position.to_be_bytes());
        self.pending_time_bytes.extend_from_slice(&entry.max_timestamp.to_be_bytes());
        self.pending_time_bytes.extend_from_slice(&entry.max_timestamp_relative_offset.to_be_bytes());
        self.entries.push(OffsetEntry { relative_offset: entry.relative_offset, position: entry.position });
        self.max_timestamps.push(entry.max_timestamp);
    }

    /// Writes pending entries once enough have accumulated.
    pub(crate) fn maybe_write(&mut self) -> Result<(), StorageError> {
        if self.entries.len() - self.written >= INDEX_WRITE_BATCH_ENTRIES { self.write_pending() } else { Ok(()) }
    }

    /// Appends pending entries to both files, one write per file. The in-memory entries are kept
    /// even when a write fails: the files are caches, and an inconsistent file is cut back to its
    /// valid prefix and rebuilt at the next open.
    pub(crate) fn write_pending(&mut self) -> Result<(), StorageError> {
        if self.written == self.entries.len() {
            return Ok(());
        }
        let offset_at = (self.written * OFFSET_INDEX_ENTRY_BYTES) as u64;
        let time_at = (self.written * TIME_INDEX_ENTRY_BYTES) as u64;
        self.written = self.entries.len();
        let offset_written = open_for_write(&self.offset_path).and_then(|file| {
            file.write_all_at(&self.pending_offset_bytes, offset_at).context(|| format!("append to index {}", self.offset_path.display()))
        });
        let time_written = open_for_write(&self.time_path).and_then(|file| {
            file.write_all_at(&self.pending_time_bytes, time_at).context(|| format!("append to index {}", self.time_path.display()))
        });
        self.pending_offset_bytes.clear();
        self.pending_time_bytes.clear();
        offset_written.and(time_written)
    }

    /// File position to start scanning from for `relative_offset`: the position of the last indexed
    /// batch whose base offset is at or below it, or 0.
    pub(crate) fn position_for_offset(&self, relative_offset: u32) -> u64 {
        let n = self.entries.partition_point(|e| e.relative_offset <= relative_offset);
        n.checked_sub(1).and_then(|i| self.entries.get(i)).map_or(0, |e| u64::from(e.position))
    }

    /// Position of the last indexed batch that starts at or below `position`, or 0.
    pub(crate) fn position_at_or_below(&self, position: u64) -> u64 {
        let n = self.entries.partition_point(|e| u64::from(e.position) <= position);
        n.checked_sub(1).and_then(|i| self.entries.get(i)).map_or(0, |e| u64::from(e.position))
    }

    /// File position to start scanning from for the first batch with max timestamp >= `timestamp`:
    /// every batch up to the last indexed batch whose running maximum is below `timestamp` can be
    /// skipped, so scanning starts there (or at 0).
    pub(crate) fn position_for_timestamp(&self, timestamp: i64) -> u64 {
        let n = self.max_timestamps.partition_point(|t| *t < timestamp);
        n.checked_sub(1).and_then(|i| self.entries.get(i)).map_or(0, |e| u64::from(e.position))
    }

    /// Writes pending entries and fdatasyncs both files.
    pub(crate) fn sync(&mut self) -> Result<(), StorageError> {
        self.write_pending()?;
        for path in [&self.offset_path, &self.time_path] {
            open_for_write(path)?.sync_data().context(|| format!("fsync index {}", path.display()))?;
        }
        Ok(())
    }

    /// Removes both files; a file already gone is not an error.
    pub(crate) fn delete_files(&self) -> Result<(), StorageError> {
        for path in [&self.offset_path, &self.time_path] {
            remove_if_present(path)?;
        }
        Ok(())
    }
}

/// Opens an existing index file for writing. A missing file is an error, not recreated: the write
/// would leave a hole of zeros, and the next open rebuilds a missing index anyway.
fn open_for_write(path: &Path) -> Result<File, StorageError> {
    OpenOptions::new().write(true).open(path).context(|| format!("open index {}", path.display()))
}

/// Removes a file, treating "not found" as done.
pub(crate) fn remove_if_present(path: &Path) -> Result<(), StorageError> {
    match std::fs::remove_file(path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(StorageError::Io(error, format!("remove {}", path.display()))),
        _ => Ok(()),
    }
}

/// Reads up to `limit` bytes from the start of a file.
fn read_prefix(file: &File, limit: usize) -> std::io::Result<Vec<u8>> {
    let len = usize::try_from(file.metadata()?.len()).unwrap_or(usize::MAX).min(limit);
    let mut buf = vec![0; len];
    let mut filled = 0;
    while let Some(rest) = buf.get_mut(filled..).filter(|r| !r.is_empty()) {
        match file.read_at(rest, filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    buf.truncate(filled);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(relative_offset: u32, position: u32, max_timestamp: i64) -> IndexEntry {
        IndexEntry { relative_offset, position, max_timestamp, max_timestamp_relative_offset: relative_offset }
    }

    fn paths(dir: &Path) -> (PathBuf, PathBuf) {
        (dir.join("0.index"), dir.join("0.timeindex"))
    }

    #[test]
    fn lookups_pick_the_last_entry_at_or_below_the_target() {
        let dir = tempfile::tempdir().unwrap();
        let (o, t) = paths(dir.path());
        let mut index = SegmentIndex::create(o, t).unwrap();
        for e in [entry(10, 1000, 50), entry(20, 2000, 70), entry(30, 3000, 70)] {
            index.push(e);
        }
        assert_eq!(index.position_for_offset(0), 0);
        assert_eq!(index.position_for_offset(9), 0);
        assert_eq!(index.position_for_offset(10), 1000);
        assert_eq!(index.position_for_offset(29), 2000);
        assert_eq!(index.position_for_offset(u32::MAX), 3000);
        assert_eq!(index.position_for_timestamp(50), 0);
        assert_eq!(index.position_for_timestamp(51), 1000);
        assert_eq!(index.position_for_timestamp(70), 1000);
        assert_eq!(index.position_for_timestamp(71), 3000);
    }

    #[test]
    fn load_keeps_the_consistent_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let (o, t) = paths(dir.path());
        let mut index = SegmentIndex::create(o.clone(), t.clone()).unwrap();
        for e in [entry(10, 1000, 50), entry(20, 2000, 60), entry(30, 3000, 70)] {
            index.push(e);
        }
        index.maybe_write().unwrap();
        assert_eq!(std::fs::metadata(&o).unwrap().len(), 0, "a few entries stay pending");
        index.sync().unwrap();
        drop(index);

        let (index, last) = SegmentIndex::load(o.clone(), t.clone(), 10_000).unwrap();
        assert_eq!((index.len(), last), (3, Some((70, 30))));
        // A log that ends before the third entry's batch invalidates it.
        let (index, _) = SegmentIndex::load(o.clone(), t.clone(), 3000).unwrap();
        assert_eq!(index.len(), 2);

        // A torn time index shortens the pair to what both files hold.
        std::fs::OpenOptions::new().write(true).open(&t).unwrap().set_len(12 + 5).unwrap();
        let (mut index, last) = SegmentIndex::load(o.clone(), t.clone(), 10_000).unwrap();
        assert_eq!((index.len(), last), (1, Some((50, 10))));
        index.truncate(1).unwrap();
        assert_eq!(std::fs::metadata(&o).unwrap().len(), 8);

        // Garbage in the offset index stops the prefix at the first entry that breaks ordering.
        std::fs::write(&o, [0u8, 0, 0, 10, 0, 0, 3, 232, 0, 0, 0, 5, 0, 0, 0, 1]).unwrap();
        std::fs::write(&t, [0u8; 24]).unwrap();
        let (index, _) = SegmentIndex::load(o, t, 10_000).unwrap();
        assert_eq!(index.len(), 1);
    }
}
