//! Rename mode's source → target offset map, from which consumer-group offsets are translated
//! exactly.
//!
//! Every record a rename-mode mirror writes has a source offset and a target offset. A [`Run`] is a
//! stretch of records whose offsets are consecutive on both sides; runs break where the source has
//! gaps (transaction markers, aborted or looped records, compaction) and where the target has them
//! (the mirror's own commit markers, other writers' batches). A group that committed source offset
//! `S` — "the next record I read is the first at or after `S`" — resumes on the target at the target
//! offset of the first copied record at or after `S`.
//!
//! The map is as durable as the log, and exact across crashes: a round's runs are appended to
//! `<data-dir>/__mirror/offset-maps/<mirror>` *before* the round's transaction commits (and
//! fdatasync'd first when the broker fsyncs before it acknowledges; otherwise, like the log, they
//! survive a process crash but not a power cut), and runs at or past a partition's committed
//! position are dropped when the position is read at start (their transaction did not commit). A run of an aborted round is cut off the file
//! at once. Each partition keeps at most [`RUNS_PER_PARTITION_MAX`] runs (the oldest go first;
//! an offset older than every kept run translates to the oldest run's start, so a group may read
//! some records again but never skips one), and the file is rewritten when it holds more than twice
//! what is kept.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use sluice_runtime::RuntimeError;

/// Most runs kept per partition.
pub const RUNS_PER_PARTITION_MAX: usize = 50_000;
/// Longest line read back from a map file (a topic name is at most 249 bytes).
const LINE_BYTES_MAX: usize = 512;

/// `len` records at source offsets `source..source + len` went to `target..target + len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub source: i64,
    pub target: i64,
    pub len: i64,
}

impl Run {
    fn source_end(&self) -> i64 {
        self.source + self.len
    }
}

/// Builds the runs of one partition's records from their source offsets (ascending) and where the
/// producer placed them ((base offset, count) per batch, in order).
pub fn runs(source_offsets: &[i64], placed: &[(i64, usize)]) -> Vec<Run> {
    let mut out: Vec<Run> = Vec::new();
    let mut sources = source_offsets.iter().copied();
    for &(base, count) in placed {
        for (target, source) in (base..).zip(sources.by_ref().take(count)) {
            match out.last_mut() {
                Some(run) if run.source_end() == source && run.target + run.len == target => run.len += 1,
                _ => out.push(Run { source, target, len: 1 }),
            }
        }
    }
    out
}

pub struct OffsetMap {
    path: PathBuf,
    file: File,
    runs: BTreeMap<(String, i32), VecDeque<Run>>,
    /// Lines in the file (to know when to rewrite it).
    lines: usize,
    /// The file's length before the round being written, and that round's runs.
    staged: Option<(u64, Vec<(String, i32, Run)>)>,
}

impl OffsetMap {
    /// Opens (or creates) a mirror's map. A torn or unreadable line (a crash mid-append) is skipped.
    pub fn open(path: &Path) -> Result<OffsetMap, RuntimeError> {
        let io = |what: &str, e: std::io::Error| RuntimeError::Invalid(format!("{what} {}: {e}", path.display()));
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| io("creating the directory of", e))?;
        }
        let mut runs: BTreeMap<(String, i32), VecDeque<Run>> = BTreeMap::new();
        let mut lines = 0;
        // Where the last whole line ends: a torn tail (a crash mid-append) is cut off, so the next
        // append starts a line of its own.
        let mut whole = 0u64;
        if let Ok(file) = File::open(path) {
            let mut reader = BufReader::new(file);
            let mut line = Vec::new();
            loop {
                line.clear();
                let read = (&mut reader).take(LINE_BYTES_MAX as u64).read_until(b'\n', &mut line).map_err(|e| io("reading", e))?;
                if read == 0 || line.last() != Some(&b'\n') {
                    break;
                }
                whole += read as u64;
                lines += 1;
                if let Some((topic, partition, run)) = parse(&line) {
                    push(runs.entry((topic, partition)).or_default(), run);
                }
            }
        }
        let file = OpenOptions::new().create(true).append(true).open(path).map_err(|e| io("opening", e))?;
        if file.metadata().map_err(|e| io("reading", e))?.len() > whole {
            file.set_len(whole).map_err(|e| io("cutting the torn tail of", e))?;
        }
        Ok(OffsetMap { path: path.to_path_buf(), file, runs, lines, staged: None })
    }

    /// Drops a partition's runs at or past its committed position: they belong to a round whose
    /// transaction never committed.
    pub fn truncate_from(&mut self, topic: &str, partition: i32, position: i64) {
        if let Some(runs) = self.runs.get_mut(&(topic.to_string(), partition)) {
            while runs.back().is_some_and(|r| r.source >= position) {
                runs.pop_back();
            }
            if let Some(last) = runs.back_mut()
                && last.source_end() > position
            {
                last.len = position - last.source;
            }
        }
    }

    /// Writes a round's runs to the file (and fdatasyncs it with `sync`), before the round's
    /// transaction commits. [`commit`](Self::commit) or [`rollback`](Self::rollback) follows.
    pub fn stage(&mut self, runs: Vec<(String, i32, Run)>, sync: bool) -> Result<(), RuntimeError> {
        let io = |e: std::io::Error| RuntimeError::Invalid(format!("writing {}: {e}", self.path.display()));
        let before = self.file.metadata().map_err(io)?.len();
        let mut text = String::new();
        for (topic, partition, run) in &runs {
            text.push_str(&format!("{topic}\t{partition}\t{}\t{}\t{}\n", run.source, run.target, run.len));
        }
        self.staged = Some((before, runs));
        self.file.write_all(text.as_bytes()).map_err(io)?;
        if sync {
            self.file.sync_data().map_err(io)?;
        }
        Ok(())
    }

    /// The staged round committed: its runs translate from now on.
    pub fn commit(&mut self) {
        let Some((_, runs)) = self.staged.take() else { return };
        self.lines += runs.len();
        for (topic, partition, run) in runs {
            push(self.runs.entry((topic, partition)).or_default(), run);
        }
        if self.lines > 2 * self.runs.values().map(VecDeque::len).sum::<usize>().max(1024)
            && let Err(error) = self.rewrite()
        {
            tracing::warn!(path = %self.path.display(), %error, "cannot compact a mirror's offset map; it is rewritten later");
        }
    }

    /// The staged round's transaction aborted: its lines are cut off the file.
    pub fn rollback(&mut self) {
        if let Some((before, _)) = self.staged.take()
            && let Err(error) = self.file.set_len(before)
        {
            // The position was not committed, so these runs are dropped at the next start anyway.
            tracing::warn!(path = %self.path.display(), %error, "cannot cut an aborted round off a mirror's offset map");
        }
    }

    /// The target offset from which a group that committed `source_offset` resumes; `None` while
    /// nothing of the partition was copied.
    pub fn translate(&self, topic: &str, partition: i32, source_offset: i64) -> Option<i64> {
        let runs = self.runs.get(&(topic.to_string(), partition))?;
        let last = runs.back()?;
        // The first run ending past the offset holds the first copied record at or after it.
        let at = runs.partition_point(|r| r.source_end() <= source_offset);
        Some(match runs.get(at) {
            Some(run) => run.target + (source_offset - run.source).max(0),
            // Past everything copied: right after the last copied record.
            None => last.target + last.len,
        })
    }

    fn rewrite(&mut self) -> Result<(), RuntimeError> {
        let mut text = String::new();
        for ((topic, partition), runs) in &self.runs {
            for run in runs {
                text.push_str(&format!("{topic}\t{partition}\t{}\t{}\t{}\n", run.source, run.target, run.len));
            }
        }
        sluice_broker::host::write_file_atomically(&self.path, text.as_bytes())?;
        self.file = OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(|e| RuntimeError::Invalid(format!("opening {}: {e}", self.path.display())))?;
        self.lines = self.runs.values().map(VecDeque::len).sum();
        Ok(())
    }
}

/// Adds a partition's newest run. Runs it overlaps (a round whose transaction did not commit, the
/// same source records copied again since) are dropped: the newer line wins.
fn push(runs: &mut VecDeque<Run>, run: Run) {
    while runs.back().is_some_and(|r| r.source >= run.source) {
        runs.pop_back();
    }
    if let Some(last) = runs.back_mut()
        && last.source_end() > run.source
    {
        last.len = run.source - last.source;
    }
    runs.push_back(run);
    while runs.len() > RUNS_PER_PARTITION_MAX {
        runs.pop_front();
    }
}

fn parse(line: &[u8]) -> Option<(String, i32, Run)> {
    let line = std::str::from_utf8(line).ok()?.strip_suffix('\n')?;
    let mut fields = line.split('\t');
    let topic = fields.next()?.to_string();
    let partition = fields.next()?.parse().ok()?;
    let run = Run { source: fields.next()?.parse().ok()?, target: fields.next()?.parse().ok()?, len: fields.next()?.parse().ok()? };
    (fields.next().is_none() && run.len > 0 && run.source >= 0 && run.target >= 0).then_some((topic, partition, run))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_break_at_gaps_on_either_side() {
        // Source 10,11,12 then 15 (a marker and an aborted record skipped); the producer put the
        // first two in one batch at 100 and the rest in another at 103 (someone wrote 102).
        let runs = runs(&[10, 11, 12, 15], &[(100, 2), (103, 2)]);
        assert_eq!(
            runs,
            [Run { source: 10, target: 100, len: 2 }, Run { source: 12, target: 103, len: 1 }, Run { source: 15, target: 104, len: 1 }]
        );
    }

    #[test]
    fn offsets_translate_to_the_first_copied_record_at_or_after_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut map = OffsetMap::open(&dir.path().join("m")).unwrap();
        assert_eq!(map.translate("t", 0, 5), None);
        let staged = runs(&[10, 11, 12, 15], &[(100, 2), (103, 2)]);
        map.stage(staged.into_iter().map(|r| ("t".to_string(), 0, r)).collect(), true).unwrap();
        map.commit();
        assert_eq!(map.translate("t", 0, 0), Some(100), "before everything: the oldest run's start");
        assert_eq!(map.translate("t", 0, 11), Some(101));
        assert_eq!(map.translate("t", 0, 12), Some(103));
        assert_eq!(map.translate("t", 0, 13), Some(104), "in a source gap: the next copied record");
        assert_eq!(map.translate("t", 0, 16), Some(105), "past the copy: after its last record");

        // An aborted round leaves nothing behind, in memory or on disk.
        map.stage(vec![("t".to_string(), 0, Run { source: 16, target: 200, len: 5 })], true).unwrap();
        map.rollback();
        assert_eq!(map.translate("t", 0, 17), Some(105));
        // A round staged and then lost in a crash: dropped at start, from the committed position.
        map.stage(vec![("t".to_string(), 0, Run { source: 16, target: 106, len: 5 })], true).unwrap();
        drop(map);
        let mut map = OffsetMap::open(&dir.path().join("m")).unwrap();
        assert_eq!(map.translate("t", 0, 17), Some(107));
        map.truncate_from("t", 0, 16);
        assert_eq!(map.translate("t", 0, 17), Some(105));
        assert_eq!(map.translate("t", 0, 12), Some(103), "the committed runs survived");
        // The same source records copied again: after another restart the newer run wins.
        map.stage(vec![("t".to_string(), 0, Run { source: 16, target: 110, len: 5 })], true).unwrap();
        map.commit();
        drop(map);
        let map = OffsetMap::open(&dir.path().join("m")).unwrap();
        assert_eq!(map.translate("t", 0, 17), Some(111));
        assert_eq!(map.translate("t", 0, 11), Some(101));
    }

    #[test]
    fn a_torn_line_is_cut_off_and_appends_go_on_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m");
        std::fs::write(&path, "t\t0\t0\t0\t5\nt\t0\t5\t6\t5\nt\t0\t10\t1").unwrap();
        let mut map = OffsetMap::open(&path).unwrap();
        assert_eq!(map.translate("t", 0, 7), Some(8));
        assert_eq!(map.translate("t", 0, 10), Some(11), "the torn run is not used");
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 2, "and is cut off");
        for i in 0..300 {
            let source = 10 + i * 2;
            map.stage(vec![("t".to_string(), 0, Run { source, target: source + 100, len: 1 })], false).unwrap();
            map.commit();
        }
        let lines = std::fs::read_to_string(&path).unwrap().lines().count();
        assert_eq!(lines, 302, "one line per run");
        assert_eq!(OffsetMap::open(&path).unwrap().translate("t", 0, 500), Some(600));
    }
}
