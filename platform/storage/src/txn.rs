//! The aborted-transaction index of one partition: every transaction that ended with an abort marker,
//! as (producer id, first offset, marker offset), in marker order. read_committed fetches report the
//! entries overlapping what they return so that clients drop those producers' records, as Kafka's
//! `.txnindex` files do.
//!
//! It lives in one file per partition, `aborted-txns`: fixed 28-byte entries (producer id i64, first
//! offset i64, last offset i64, big-endian, then a CRC-32C u32 of those 24 bytes). An entry is
//! appended and fdatasynced right after its abort marker is written to the log, and only then does the
//! transaction end in memory; if that write fails the log stops taking writes until a restart, which
//! (being unclean) walks the log and puts the entry back. If a crash falls in
//! between, the marker is in the log but not here; recovery after an unclean shutdown walks the recent
//! segments' batch headers anyway (for idempotent-producer state) and puts back every abort it finds.
//! At open, entries at or beyond the recovered log end (their marker was lost) are dropped, and the
//! file is rewritten whenever its contents change that way, retention moves the log start past
//! entries, or a truncation cuts markers off the log end.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{IoContext, StorageError};
pub use crate::producer::AbortedTxn;

pub(crate) const ABORTED_TXNS_FILE: &str = "aborted-txns";
const ENTRY_BYTES: usize = 8 + 8 + 8 + 4;
/// Largest index file read at open (over two million aborted transactions); a larger one is ignored
/// and the recent aborts are rebuilt from the log.
pub(crate) const ABORTED_INDEX_BYTES_MAX: u64 = 64 * 1024 * 1024;

#[derive(Debug)]
pub(crate) struct AbortedIndex {
    path: PathBuf,
    /// Sorted by `last_offset` (the marker's offset), which is also the order markers are written in.
    entries: Vec<AbortedTxn>,
    /// Largest `last_offset - first_offset` of any entry: lets a lookup stop early.
    max_span: i64,
}

fn encode(entry: &AbortedTxn) -> [u8; ENTRY_BYTES] {
    let mut out = [0u8; ENTRY_BYTES];
    out[0..8].copy_from_slice(&entry.producer_id.to_be_bytes());
    out[8..16].copy_from_slice(&entry.first_offset.to_be_bytes());
    out[16..24].copy_from_slice(&entry.last_offset.to_be_bytes());
    let crc = crc32c::crc32c(&out[..24]);
    out[24..28].copy_from_slice(&crc.to_be_bytes());
    out
}

fn decode(bytes: &[u8]) -> Option<AbortedTxn> {
    let body = bytes.get(..24)?;
    let crc = u32::from_be_bytes(bytes.get(24..28)?.try_into().ok()?);
    if crc32c::crc32c(body) != crc {
        return None;
    }
    let field = |at: usize| body.get(at..at + 8).and_then(|b| b.try_into().ok()).map(i64::from_be_bytes);
    let entry = AbortedTxn { producer_id: field(0)?, first_offset: field(8)?, last_offset: field(16)? };
    (entry.first_offset >= 0 && entry.first_offset <= entry.last_offset).then_some(entry)
}

impl AbortedIndex {
    /// An index with no entries for the partition in `dir` (nothing read yet).
    pub(crate) fn empty(dir: &Path) -> AbortedIndex {
        AbortedIndex { path: dir.join(ABORTED_TXNS_FILE), entries: Vec::new(), max_span: 0 }
    }

    /// Loads the index of the partition in `dir`, keeping the intact prefix of entries whose marker
    /// lies in `[log_start, log_end)`.
    pub(crate) fn load(dir: &Path, log_start: i64, log_end: i64) -> AbortedIndex {
        let path = dir.join(ABORTED_TXNS_FILE);
        let mut index = AbortedIndex { path, entries: Vec::new(), max_span: 0 };
        let Ok(metadata) = fs::metadata(&index.path) else {
            return index;
        };
        if metadata.len() > ABORTED_INDEX_BYTES_MAX {
            tracing::warn!(file = %index.path.display(), len = metadata.len(), "aborted-transaction index is too large; rebuilding recent aborts from the log");
            return index;
        }
        let bytes = match fs::read(&index.path) {
            Ok(bytes) => bytes,
            Err(error) => {
                tracing::warn!(file = %index.path.display(), %error, "cannot read the aborted-transaction index; rebuilding recent aborts from the log");
                return index;
            }
        };
        let mut previous = i64::MIN;
        for chunk in bytes.chunks(ENTRY_BYTES) {
            match decode(chunk) {
                Some(entry) if entry.last_offset > previous => {
                    previous = entry.last_offset;
                    if entry.last_offset >= log_start && entry.last_offset < log_end {
                        index.entries.push(entry);
                    }
                }
                _ => break,
            }
        }
        index.recompute_span();
        index
    }

    fn recompute_span(&mut self) {
        self.max_span = self.entries.iter().map(|e| e.last_offset - e.first_offset).max().unwrap_or(0);
    }

    /// Adds an abort found in the log (recovery), unless it is already known. Returns whether it was new.
    pub(crate) fn insert(&mut self, entry: AbortedTxn) -> bool {
        let at = self.entries.partition_point(|e| e.last_offset < entry.last_offset);
        if self.entries.get(at).is_some_and(|e| e.last_offset == entry.last_offset) {
            return false;
        }
        self.entries.insert(at, entry);
        self.max_span = self.max_span.max(entry.last_offset - entry.first_offset);
        true
    }

    /// Appends the entry for an abort marker just written: to the file, fdatasynced, and only then to
    /// memory. On failure memory is unchanged, and the caller must stop the log (a clean shutdown would
    /// otherwise let the next open trust a file that lacks the entry).
    pub(crate) fn append(&mut self, entry: AbortedTxn) -> Result<(), StorageError> {
        if self.contains(&entry) {
            return Ok(());
        }
        let mut file =
            fs::OpenOptions::new().create(true).append(true).open(&self.path).context(|| format!("open {}", self.path.display()))?;
        file.write_all(&encode(&entry)).context(|| format!("append to {}", self.path.display()))?;
        file.sync_data().context(|| format!("fsync {}", self.path.display()))?;
        self.insert(entry);
        Ok(())
    }

    fn contains(&self, entry: &AbortedTxn) -> bool {
        let at = self.entries.partition_point(|e| e.last_offset < entry.last_offset);
        self.entries.get(at).is_some_and(|e| e.last_offset == entry.last_offset)
    }

    /// Replaces the file with the entries in memory (after recovery changed them or retention dropped some).
    pub(crate) fn rewrite(&self, write_atomically: impl FnOnce(&[u8]) -> Result<(), StorageError>) -> Result<(), StorageError> {
        let mut bytes = Vec::with_capacity(self.entries.len() * ENTRY_BYTES);
        for entry in &self.entries {
            bytes.extend_from_slice(&encode(entry));
        }
        write_atomically(&bytes)
    }

    /// Whether the file on disk may hold entries other than those in memory.
    pub(crate) fn file_differs(&self) -> bool {
        let on_disk = fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
        on_disk != (self.entries.len() * ENTRY_BYTES) as u64
    }

    /// Drops entries whose marker is below the new log start. Returns whether any were dropped.
    pub(crate) fn drop_below(&mut self, log_start: i64) -> bool {
        let keep_from = self.entries.partition_point(|e| e.last_offset < log_start);
        if keep_from == 0 {
            return false;
        }
        self.entries.drain(..keep_from);
        self.recompute_span();
        true
    }

    /// Drops entries whose marker is at or beyond `log_end`: a truncation cut the marker, so the
    /// transaction is not over here any more. Returns whether any were dropped.
    pub(crate) fn drop_from(&mut self, log_end: i64) -> bool {
        let keep = self.entries.partition_point(|e| e.last_offset < log_end);
        if keep == self.entries.len() {
            return false;
        }
        self.entries.truncate(keep);
        self.recompute_span();
        true
    }

    /// Aborted transactions whose range overlaps `[from, upper)`: their marker is at or after `from`
    /// and their first record below `upper`.
    pub(crate) fn overlapping(&self, from: i64, upper: i64) -> Vec<AbortedTxn> {
        let start = self.entries.partition_point(|e| e.last_offset < from);
        let mut found = Vec::new();
        for entry in self.entries.get(start..).unwrap_or_default() {
            // Every later entry's first offset is at least its marker minus the largest span.
            if entry.last_offset.saturating_sub(self.max_span) >= upper {
                break;
            }
            if entry.first_offset < upper {
                found.push(*entry);
            }
        }
        found
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(producer_id: i64, first_offset: i64, last_offset: i64) -> AbortedTxn {
        AbortedTxn { producer_id, first_offset, last_offset }
    }

    #[test]
    fn appends_survive_a_reload_and_a_torn_tail_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let mut index = AbortedIndex::load(dir.path(), 0, 100);
        index.append(entry(1, 0, 5)).unwrap();
        index.append(entry(2, 3, 9)).unwrap();
        index.append(entry(2, 3, 9)).unwrap();
        let mut file = fs::OpenOptions::new().append(true).open(dir.path().join(ABORTED_TXNS_FILE)).unwrap();
        file.write_all(&[1, 2, 3]).unwrap();
        let loaded = AbortedIndex::load(dir.path(), 0, 100);
        assert_eq!(loaded.entries, vec![entry(1, 0, 5), entry(2, 3, 9)]);
        // Markers at or past a recovered log end were lost with it.
        assert_eq!(AbortedIndex::load(dir.path(), 0, 9).entries, vec![entry(1, 0, 5)]);
        assert_eq!(AbortedIndex::load(dir.path(), 6, 100).entries, vec![entry(2, 3, 9)]);
    }

    #[test]
    fn a_damaged_entry_ends_the_load() {
        let dir = tempfile::tempdir().unwrap();
        let mut index = AbortedIndex::load(dir.path(), 0, 100);
        index.append(entry(1, 0, 5)).unwrap();
        index.append(entry(1, 6, 8)).unwrap();
        let path = dir.path().join(ABORTED_TXNS_FILE);
        let mut bytes = fs::read(&path).unwrap();
        bytes[ENTRY_BYTES + 3] ^= 0x40;
        fs::write(&path, bytes).unwrap();
        assert_eq!(AbortedIndex::load(dir.path(), 0, 100).entries, vec![entry(1, 0, 5)]);
    }

    #[test]
    fn overlapping_finds_exactly_the_ranges_that_touch_the_read() {
        let dir = tempfile::tempdir().unwrap();
        let mut index = AbortedIndex::load(dir.path(), 0, 1000);
        for e in [entry(1, 0, 10), entry(2, 5, 50), entry(3, 20, 30), entry(4, 60, 70)] {
            index.insert(e);
        }
        let ids = |index: &AbortedIndex, from, upper| index.overlapping(from, upper).iter().map(|e| e.producer_id).collect::<Vec<_>>();
        assert_eq!(ids(&index, 0, 5), vec![1]);
        assert_eq!(ids(&index, 0, 6), vec![1, 2]);
        assert_eq!(ids(&index, 11, 25), vec![3, 2]);
        assert_eq!(ids(&index, 31, 60), vec![2]);
        assert_eq!(ids(&index, 51, 1000), vec![4]);
        assert_eq!(ids(&index, 71, 1000), Vec::<i64>::new());
        assert!(index.drop_below(31));
        assert_eq!(ids(&index, 0, 1000), vec![2, 4]);
        assert!(!index.drop_from(71));
        assert!(index.drop_from(70));
        assert_eq!(ids(&index, 0, 1000), vec![2]);
    }
}
