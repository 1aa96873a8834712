//! The leader-epoch cache of one partition (Kafka's KIP-101 / KIP-279): for each leader epoch that
//! wrote to the log, the first offset it wrote, as `(epoch, start offset)` in increasing order of
//! both. A follower that lost its leader asks the new one where its own latest epoch ended
//! (OffsetForLeaderEpoch) and truncates there, instead of trusting a high watermark that may count
//! records the new leader never had; `PartitionLog::end_offset_for_epoch` answers that question.
//!
//! Entries come from the `partition_leader_epoch` of the batches written: a batch whose epoch is
//! above the latest entry's starts a new entry at its base offset. Older epochs add nothing (a
//! leader never writes them; a replica copies them as they are), nor do negative ones (-1 from old
//! clients and from batches no leader stamped).
//!
//! It lives in `leader-epoch-checkpoint`, Kafka's text format: a version line (0), a count line,
//! then one `epoch start_offset` line per entry. The file is replaced durably (see `crate::fs`)
//! before the batch that starts a new epoch is written, so after a crash it holds a superset of
//! what the log does; `trim` then drops what lies beyond the recovered log end. Epochs change at
//! leader elections only, so the fsync costs nothing that matters.

use std::fs;
use std::io::Read;
use std::path::Path;

use crate::batch::BatchHeader;

pub(crate) const LEADER_EPOCH_FILE: &str = "leader-epoch-checkpoint";
/// Most entries the checkpoint may hold. One entry is one leader election that wrote to the
/// partition, so a real log stays far below; a longer file is not ours and is ignored, and past
/// it the cache forgets its oldest entries (see [`LeaderEpochCache::extend`]).
pub const LEADER_EPOCHS_MAX: usize = 100_000;
const CHECKPOINT_VERSION: &str = "0";
/// Longest line the checkpoint can hold: an i32, a space, an i64 and the newline.
const LINE_BYTES_MAX: usize = 11 + 1 + 20 + 1;
/// Largest checkpoint read at open: the version and count lines and `LEADER_EPOCHS_MAX` entries.
const CHECKPOINT_BYTES_MAX: usize = 2 * LINE_BYTES_MAX + LEADER_EPOCHS_MAX * LINE_BYTES_MAX;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct LeaderEpochCache {
    /// Strictly increasing in both epoch and start offset.
    entries: Vec<(i32, i64)>,
}

impl LeaderEpochCache {
    /// Reads the checkpoint in `dir`. `None` when there is none, or it cannot be read, is longer than
    /// `LEADER_EPOCHS_MAX` entries or is not a checkpoint at all (with a warning for those): the
    /// caller starts from an empty cache.
    pub(crate) fn load(dir: &Path) -> Option<LeaderEpochCache> {
        let path = dir.join(LEADER_EPOCH_FILE);
        // Read at most one byte past the limit, so an oversized file is recognised without reading it.
        let mut bytes = Vec::new();
        let read = fs::File::open(&path).and_then(|file| file.take(CHECKPOINT_BYTES_MAX as u64 + 1).read_to_end(&mut bytes));
        match read {
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return None,
            Err(error) => {
                tracing::warn!(file = %path.display(), %error, "cannot read the leader-epoch checkpoint; starting without it");
                return None;
            }
        }
        let parsed = (bytes.len() <= CHECKPOINT_BYTES_MAX).then(|| decode(&bytes)).flatten();
        if parsed.is_none() {
            tracing::warn!(file = %path.display(), len = bytes.len(), "the leader-epoch checkpoint is damaged or too long; starting without it");
        }
        parsed.map(|entries| LeaderEpochCache { entries })
    }

    /// A cache for a log that has batches but no checkpoint (written before the cache existed, or
    /// the file was lost): one entry, epoch 0 from the log start. The log's real epochs are not
    /// looked for; a follower asking about an older epoch than the next leader's is told the log end.
    pub(crate) fn seeded(log_start: i64) -> LeaderEpochCache {
        LeaderEpochCache { entries: vec![(0, log_start)] }
    }

    pub(crate) fn entries(&self) -> &[(i32, i64)] {
        &self.entries
    }

    pub(crate) fn latest_epoch(&self) -> Option<i32> {
        self.entries.last().map(|(epoch, _)| *epoch)
    }

    /// The entries that writing `batches` (in order, offsets final) would add: one per batch whose
    /// epoch is non-negative and above every epoch before it. Empty (no allocation) in the steady state.
    pub(crate) fn starting_in<'a>(&self, batches: impl IntoIterator<Item = &'a BatchHeader>) -> Vec<(i32, i64)> {
        let mut latest = self.latest_epoch();
        let mut added = Vec::new();
        for header in batches {
            let epoch = header.partition_leader_epoch;
            if epoch >= 0 && latest.is_none_or(|l| epoch > l) {
                added.push((epoch, header.base_offset));
                latest = Some(epoch);
            }
        }
        added
    }

    /// The entries with `added` after them (as `starting_in` returned them), as the checkpoint holds
    /// them: what is written before the batches are.
    pub(crate) fn encode_with(&self, added: &[(i32, i64)]) -> Vec<u8> {
        let kept = (self.entries.len() + added.len()).saturating_sub(LEADER_EPOCHS_MAX);
        let all: Vec<&(i32, i64)> = self.entries.iter().chain(added).skip(kept).collect();
        let mut out = format!("{CHECKPOINT_VERSION}\n{}\n", all.len());
        for (epoch, start) in all {
            out.push_str(&format!("{epoch} {start}\n"));
        }
        out.into_bytes()
    }

    /// Adds entries `starting_in` returned, once their batches are written. Beyond
    /// `LEADER_EPOCHS_MAX` the oldest entries go, as `encode_with` left them out of the file.
    pub(crate) fn extend(&mut self, added: &[(i32, i64)]) {
        self.entries.extend_from_slice(added);
        let excess = self.entries.len().saturating_sub(LEADER_EPOCHS_MAX);
        self.entries.drain(..excess);
    }

    /// Fits the cache to a log holding `[log_start, log_end)`: of the entries starting at or below
    /// the log start only the last stays, moved up to the log start (Kafka's `truncateFromStart`),
    /// and then every entry starting at or beyond the log end goes (its batches are gone: a crash
    /// took them back, or a truncation cut them). An empty log (start == end) keeps no entry. The
    /// result does not depend on the order of earlier trims, so open and the runtime agree. Returns
    /// whether anything changed.
    pub(crate) fn trim(&mut self, log_start: i64, log_end: i64) -> bool {
        let before = self.entries.len();
        let mut moved = false;
        let at_or_below = self.entries.partition_point(|(_, start)| *start <= log_start);
        if at_or_below > 0 {
            self.entries.drain(..at_or_below - 1);
            if let Some(first) = self.entries.first_mut()
                && first.1 != log_start
            {
                first.1 = log_start;
                moved = true;
            }
        }
        let below_end = self.entries.partition_point(|(_, start)| *start < log_end);
        self.entries.truncate(below_end);
        moved || self.entries.len() != before
    }

    /// OffsetForLeaderEpoch as the leader answers it (KIP-101): the largest cached epoch at or below
    /// `epoch` and where it ended, which is the start of the next cached epoch, or `log_end` when it
    /// is the latest (also for an `epoch` above every cached one). `None` when `epoch` is below
    /// every cached epoch (Kafka's UNDEFINED_EPOCH / UNDEFINED_EPOCH_OFFSET).
    pub(crate) fn end_offset_for(&self, epoch: i32, log_end: i64) -> Option<(i32, i64)> {
        let after = self.entries.partition_point(|(e, _)| *e <= epoch);
        let (found, _) = *self.entries.get(after.checked_sub(1)?)?;
        Some((found, self.entries.get(after).map_or(log_end, |(_, next_start)| *next_start)))
    }
}

/// Parses a checkpoint: version 0, a count of at most `LEADER_EPOCHS_MAX`, then exactly that many
/// entries, non-negative and strictly increasing in epoch and in start offset.
fn decode(bytes: &[u8]) -> Option<Vec<(i32, i64)>> {
    let text = std::str::from_utf8(bytes).ok()?;
    let mut lines = text.strip_suffix('\n').unwrap_or(text).split('\n');
    if lines.next()?.trim() != CHECKPOINT_VERSION {
        return None;
    }
    let count: usize = lines.next()?.trim().parse().ok()?;
    if count > LEADER_EPOCHS_MAX {
        return None;
    }
    let mut entries: Vec<(i32, i64)> = Vec::with_capacity(count);
    for line in lines {
        let mut fields = line.split_whitespace();
        let (Some(epoch), Some(start), None) = (fields.next(), fields.next(), fields.next()) else {
            return None;
        };
        let entry: (i32, i64) = (epoch.parse().ok()?, start.parse().ok()?);
        let increasing = entries.last().is_none_or(|(e, s)| entry.0 > *e && entry.1 > *s);
        if entry.0 < 0 || entry.1 < 0 || !increasing || entries.len() == count {
            return None;
        }
        entries.push(entry);
    }
    (entries.len() == count).then_some(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(entries: &[(i32, i64)]) -> LeaderEpochCache {
        LeaderEpochCache { entries: entries.to_vec() }
    }

    fn header(epoch: i32, base_offset: i64) -> BatchHeader {
        let bytes = crate::testing::BatchBuilder::new(0).base_offset(base_offset).partition_leader_epoch(epoch).records(1, 1).build();
        BatchHeader::parse(&bytes).unwrap()
    }

    #[test]
    fn checkpoints_round_trip_and_junk_is_refused() {
        let c = cache(&[(0, 0), (2, 17), (5, 40)]);
        let bytes = c.encode_with(&[(9, 50)]);
        assert_eq!(std::str::from_utf8(&bytes).unwrap(), "0\n4\n0 0\n2 17\n5 40\n9 50\n");
        assert_eq!(decode(&bytes), Some(vec![(0, 0), (2, 17), (5, 40), (9, 50)]));
        assert_eq!(decode(b"0\n0\n"), Some(vec![]));
        for junk in [
            &b""[..],
            b"1\n0\n",
            b"0\n2\n0 0\n",
            b"0\n1\n0 0\n1 5\n",
            b"0\n2\n3 0\n2 5\n",
            b"0\n2\n1 5\n2 5\n",
            b"0\n1\n-1 0\n",
            b"0\n1\n0 0 0\n",
            b"0\n1\n0 x\n",
            b"0\n100001\n",
        ] {
            assert_eq!(decode(junk), None, "{:?}", std::str::from_utf8(junk));
        }
    }

    #[test]
    fn load_ignores_missing_damaged_and_oversized_files() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(LeaderEpochCache::load(dir.path()), None);
        let path = dir.path().join(LEADER_EPOCH_FILE);
        fs::write(&path, cache(&[(1, 3)]).encode_with(&[])).unwrap();
        assert_eq!(LeaderEpochCache::load(dir.path()), Some(cache(&[(1, 3)])));
        fs::write(&path, "0\n1\n1 ").unwrap();
        assert_eq!(LeaderEpochCache::load(dir.path()), None);
        let mut long = format!("0\n{}\n", LEADER_EPOCHS_MAX + 1);
        for i in 0..=LEADER_EPOCHS_MAX {
            long.push_str(&format!("{i} {i}\n"));
        }
        fs::write(&path, long).unwrap();
        assert_eq!(LeaderEpochCache::load(dir.path()), None);
    }

    #[test]
    fn only_newer_non_negative_epochs_start_entries() {
        let mut c = cache(&[(2, 10)]);
        let headers = [header(-1, 12), header(1, 13), header(2, 14), header(4, 15), header(3, 16), header(4, 17), header(6, 18)];
        let added = c.starting_in(&headers);
        assert_eq!(added, vec![(4, 15), (6, 18)]);
        c.extend(&added);
        assert_eq!(c.entries(), &[(2, 10), (4, 15), (6, 18)]);
        assert!(LeaderEpochCache::default().starting_in(&[header(-1, 0)]).is_empty());
    }

    #[test]
    fn the_oldest_entries_go_beyond_the_bound() {
        let mut c = cache(&(0..LEADER_EPOCHS_MAX as i32).map(|i| (i, i64::from(i))).collect::<Vec<_>>());
        let added = [(LEADER_EPOCHS_MAX as i32, LEADER_EPOCHS_MAX as i64)];
        assert_eq!(decode(&c.encode_with(&added)).unwrap().first(), Some(&(1, 1)));
        c.extend(&added);
        assert_eq!((c.entries().len(), c.entries().first()), (LEADER_EPOCHS_MAX, Some(&(1, 1))));
    }

    #[test]
    fn trim_fits_the_log_range() {
        let mut c = cache(&[(0, 0), (2, 10), (5, 20)]);
        assert!(!c.trim(0, 30));
        assert!(c.trim(12, 30));
        assert_eq!(c.entries(), &[(2, 12), (5, 20)]);
        assert!(c.trim(20, 30));
        assert_eq!(c.entries(), &[(5, 20)]);
        assert!(!c.trim(20, 30));
        let mut c = cache(&[(0, 0), (2, 10), (5, 20)]);
        assert!(c.trim(0, 20));
        assert_eq!(c.entries(), &[(0, 0), (2, 10)]);
        assert!(c.trim(15, 15), "an empty log keeps nothing");
        assert!(c.entries().is_empty());
    }

    #[test]
    fn end_offsets_follow_kip_101() {
        let c = cache(&[(0, 0), (2, 10), (5, 20)]);
        let answers: Vec<_> = [0, 1, 2, 3, 5, 7].iter().map(|e| c.end_offset_for(*e, 30)).collect();
        assert_eq!(answers, vec![Some((0, 10)), Some((0, 10)), Some((2, 20)), Some((2, 20)), Some((5, 30)), Some((5, 30))]);
        assert_eq!(cache(&[(3, 5)]).end_offset_for(2, 30), None);
        assert_eq!(LeaderEpochCache::default().end_offset_for(0, 30), None);
    }
}
