//! The controller's Raft log and vote on disk, under the controller's directory:
//!
//! - `raft.log`: records `[len: u32][crc32c: u32][rmp-serde payload]`, each an entry or a purge mark.
//!   An append writes its entries in one `write` and `fdatasync`s before Raft hears it is durable.
//!   Truncation (a new leader overwrote a suffix) cuts the file at the first removed entry. Purging
//!   (entries a snapshot covers) rewrites the file: a purge mark and the entries that remain, into
//!   `raft.log.tmp`, fsynced and renamed over the log.
//! - `vote`: the term and vote, replaced atomically with fsync before a vote is cast.
//! - `committed`: the last committed log id, a hint that lets a restarted node re-apply its
//!   committed entries before it hears from a leader; written without fsync (losing it is safe).
//!
//! Only the tail of the log can be torn (every append is flushed before it is acknowledged): a last
//! record cut short or failing its CRC is removed at open. A bad record with valid ones after it is
//! corruption, and the controller refuses to start rather than forget committed entries.
//!
//! The metadata log is small (snapshots purge it), so every live entry is also kept in memory;
//! replication reads never touch the disk.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{Entry, LogId, LogState, RaftLogReader, StorageError, StorageIOError, Vote};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use sluice_storage::fs::{Durability, sync_dir, write_atomically};

use crate::{NodeId, TypeConfig};

/// The largest record the log holds: one entry (a command is at most a few KiB; membership entries
/// list the voters). Checked before a read allocates for it.
pub const RECORD_BYTES_MAX: usize = 16 * 1024 * 1024;
const HEADER_BYTES: usize = 8;
const LOG_FILE: &str = "raft.log";
const VOTE_FILE: &str = "vote";
const COMMITTED_FILE: &str = "committed";
/// Small files (vote, committed id) larger than this are not ours.
const SMALL_FILE_BYTES_MAX: u64 = 64 * 1024;

#[derive(Serialize, Deserialize)]
enum Record {
    Entry(Entry<TypeConfig>),
    /// Entries up to and including this id were purged (a snapshot covers them).
    Purged(LogId<NodeId>),
}

/// The log: its file (taken only by the storage task's calls, on blocking threads, held across their
/// I/O) and the live entries readers see (locked only briefly, never across I/O: openraft's
/// replication reads them on the async worker threads).
struct LogFile {
    dir: PathBuf,
    file: Mutex<FileState>,
    entries: RwLock<Entries>,
}

struct FileState {
    file: File,
    /// Bytes of valid records in the file: where the next append lands.
    len: u64,
}

#[derive(Default)]
struct Entries {
    /// Live entries by index, with the file offset where each one's record starts.
    map: BTreeMap<u64, (u64, Entry<TypeConfig>)>,
    last_purged: Option<LogId<NodeId>>,
}

fn corrupt(path: &Path, at: u64, what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("{} is corrupt at byte {at}: {what}", path.display()))
}

fn encode(record: &Record, out: &mut Vec<u8>) -> io::Result<()> {
    let payload = rmp_serde::to_vec(record).map_err(io::Error::other)?;
    if payload.len() > RECORD_BYTES_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("a Raft log record of {} bytes exceeds {RECORD_BYTES_MAX}", payload.len()),
        ));
    }
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&crc32c::crc32c(&payload).to_be_bytes());
    out.extend_from_slice(&payload);
    Ok(())
}

impl LogFile {
    fn open(dir: &Path) -> io::Result<LogFile> {
        let path = dir.join(LOG_FILE);
        let mut file = OpenOptions::new().read(true).append(true).create(true).open(&path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let mut entries = Entries::default();
        let mut at = 0usize;
        let mut torn = None;
        while at < bytes.len() {
            let rest = &bytes[at..];
            if rest.len() < HEADER_BYTES {
                torn = Some("a partial record header");
                break;
            }
            let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            let crc = u32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]);
            if len == 0 && rest.iter().all(|&b| b == 0) {
                // Zeros where an append's data never reached the disk (the size did).
                torn = Some("zeros after the last record");
                break;
            }
            if len > RECORD_BYTES_MAX {
                return Err(corrupt(&path, at as u64, &format!("a record claims {len} bytes")));
            }
            if rest.len() < HEADER_BYTES + len {
                torn = Some("a partial record");
                break;
            }
            let payload = &rest[HEADER_BYTES..HEADER_BYTES + len];
            if crc32c::crc32c(payload) != crc {
                if rest.len() == HEADER_BYTES + len {
                    torn = Some("the last record fails its checksum");
                    break;
                }
                return Err(corrupt(&path, at as u64, "a record fails its checksum and records follow it"));
            }
            match rmp_serde::from_slice::<Record>(payload) {
                Ok(Record::Entry(entry)) => {
                    entries.map.insert(entry.log_id.index, (at as u64, entry));
                }
                Ok(Record::Purged(id)) => {
                    entries.map.retain(|&index, _| index > id.index);
                    entries.last_purged = Some(id);
                }
                Err(e) => return Err(corrupt(&path, at as u64, &format!("undecodable record: {e}"))),
            }
            at += HEADER_BYTES + len;
        }
        if let Some(why) = torn {
            tracing::warn!(path = %path.display(), at, why, "removing the torn tail of the controller's log");
            file.set_len(at as u64)?;
            file.sync_data()?;
        }
        let file = FileState { file, len: at as u64 };
        Ok(LogFile { dir: dir.to_path_buf(), file: Mutex::new(file), entries: RwLock::new(entries) })
    }

    fn append(&self, entries: Vec<Entry<TypeConfig>>) -> io::Result<()> {
        let mut file = self.file.lock();
        let mut buf = Vec::new();
        let mut placed = Vec::with_capacity(entries.len());
        for entry in entries {
            let offset = file.len + buf.len() as u64;
            encode(&Record::Entry(entry.clone()), &mut buf)?;
            placed.push((offset, entry));
        }
        if let Err(e) = file.file.write_all(&buf).and_then(|()| file.file.sync_data()) {
            // Leave the file as it was, so a later append does not follow a half-written one.
            let len = file.len;
            let _ = file.file.set_len(len);
            return Err(e);
        }
        file.len += buf.len() as u64;
        let mut live = self.entries.write();
        for (offset, entry) in placed {
            live.map.insert(entry.log_id.index, (offset, entry));
        }
        Ok(())
    }

    /// Removes every entry at `index` and after.
    fn truncate(&self, index: u64) -> io::Result<()> {
        let mut file = self.file.lock();
        let Some((first, offset)) = self.entries.read().map.range(index..).next().map(|(&i, &(o, _))| (i, o)) else {
            return Ok(());
        };
        file.file.set_len(offset)?;
        file.file.sync_data()?;
        file.len = offset;
        self.entries.write().map.split_off(&first);
        Ok(())
    }

    /// Forgets every entry up to and including `id`, rewriting the file without them.
    fn purge(&self, id: LogId<NodeId>) -> io::Result<()> {
        let mut file = self.file.lock();
        let path = self.dir.join(LOG_FILE);
        let temp = self.dir.join(format!("{LOG_FILE}.tmp"));
        // Memory changes only once the new file is in place: a failure leaves the log as it was.
        let mut buf = Vec::new();
        encode(&Record::Purged(id), &mut buf)?;
        let mut kept = BTreeMap::new();
        for (&index, (_, entry)) in self.entries.read().map.range(id.index + 1..) {
            let offset = buf.len() as u64;
            encode(&Record::Entry(entry.clone()), &mut buf)?;
            kept.insert(index, (offset, entry.clone()));
        }
        let mut new_file = File::create(&temp)?;
        new_file.write_all(&buf)?;
        new_file.sync_all()?;
        fs::rename(&temp, &path)?;
        sync_dir(&self.dir).map_err(io::Error::other)?;
        *file = FileState { file: OpenOptions::new().read(true).append(true).open(&path)?, len: buf.len() as u64 };
        *self.entries.write() = Entries { map: kept, last_purged: Some(id) };
        Ok(())
    }
}

fn read_small<T: for<'de> Deserialize<'de>>(path: &Path) -> io::Result<Option<T>> {
    let bytes = match fs::metadata(path) {
        Ok(meta) if meta.len() > SMALL_FILE_BYTES_MAX => {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("{} holds {} bytes", path.display(), meta.len())));
        }
        Ok(_) => fs::read(path)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    rmp_serde::from_slice(&bytes).map(Some).map_err(|e| corrupt(path, 0, &e.to_string()))
}

fn write_small<T: Serialize>(path: &Path, value: &T, durability: Durability) -> io::Result<()> {
    let bytes = rmp_serde::to_vec(value).map_err(io::Error::other)?;
    write_atomically(path, &bytes, durability).map_err(io::Error::other)
}

/// The Raft log and vote of one controller node; clones share the same files (the reader half
/// openraft asks for is a clone).
#[derive(Clone)]
pub struct LogStore {
    log: Arc<LogFile>,
    dir: PathBuf,
}

/// Runs file work off the async worker threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> io::Result<T> + Send + 'static) -> io::Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(io::Error::other)?
}

impl LogStore {
    /// Opens (or creates) the log under `dir`.
    pub fn open(dir: &Path) -> io::Result<LogStore> {
        fs::create_dir_all(dir)?;
        let log = LogFile::open(dir)?;
        // The directory entries of a new log survive a power cut before any vote relies on them.
        sync_dir(dir).map_err(io::Error::other)?;
        Ok(LogStore { log: Arc::new(log), dir: dir.to_path_buf() })
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        let start = match range.start_bound() {
            Bound::Included(&i) => Bound::Included(i),
            Bound::Excluded(&i) => Bound::Excluded(i),
            Bound::Unbounded => Bound::Unbounded,
        };
        let end = match range.end_bound() {
            Bound::Included(&i) => Bound::Included(i),
            Bound::Excluded(&i) => Bound::Excluded(i),
            Bound::Unbounded => Bound::Unbounded,
        };
        let live = self.log.entries.read();
        Ok(live.map.range((start, end)).map(|(_, (_, entry))| entry.clone()).collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let live = self.log.entries.read();
        let last_log_id = live.map.values().next_back().map(|(_, e)| e.log_id).or(live.last_purged);
        Ok(LogState { last_purged_log_id: live.last_purged, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let path = self.dir.join(VOTE_FILE);
        let vote = *vote;
        blocking(move || write_small(&path, &vote, Durability::Fsync)).await.map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        read_small(&self.dir.join(VOTE_FILE)).map_err(|e| StorageIOError::read_vote(&e).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), StorageError<NodeId>> {
        let path = self.dir.join(COMMITTED_FILE);
        blocking(move || write_small(&path, &committed, Durability::PageCache)).await.map_err(|e| StorageIOError::write(&e).into())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        // Written without fsync: after a power cut it may be empty or torn. It is only a hint, so
        // such a file means "unknown" (the leader tells this node again), not a failed start.
        match read_small::<Option<LogId<NodeId>>>(&self.dir.join(COMMITTED_FILE)) {
            Ok(committed) => Ok(committed.flatten()),
            Err(error) => {
                tracing::warn!(%error, "ignoring the controller's committed-index hint");
                Ok(None)
            }
        }
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<_> = entries.into_iter().collect();
        let log = self.log.clone();
        let result = blocking(move || log.append(entries)).await;
        match result {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                let error = StorageIOError::write_logs(&e);
                callback.log_io_completed(Err(e));
                Err(error.into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let log = self.log.clone();
        blocking(move || log.truncate(log_id.index)).await.map_err(|e| StorageIOError::write_logs(&e).into())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let log = self.log.clone();
        blocking(move || log.purge(log_id)).await.map_err(|e| StorageIOError::write_logs(&e).into())
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;
    use crate::metadata::Command;

    fn entry(term: u64, index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Normal(Command::FenceBroker { broker_id: 1, epoch: index }),
        }
    }

    fn indexes(log: &LogFile) -> Vec<u64> {
        log.entries.read().map.keys().copied().collect()
    }

    #[test]
    fn entries_survive_reopen_with_truncation_and_purge() {
        let dir = tempfile::tempdir().unwrap();
        let log = LogFile::open(dir.path()).unwrap();
        log.append((1..=5).map(|i| entry(1, i)).collect()).unwrap();
        log.truncate(4).unwrap();
        log.append(vec![entry(2, 4)]).unwrap();
        drop(log);
        let log = LogFile::open(dir.path()).unwrap();
        assert_eq!(indexes(&log), vec![1, 2, 3, 4]);
        assert_eq!(log.entries.read().map[&4].1.log_id.leader_id.term, 2);
        log.purge(LogId::new(CommittedLeaderId::new(1, 1), 2)).unwrap();
        log.append(vec![entry(2, 5)]).unwrap();
        drop(log);
        let log = LogFile::open(dir.path()).unwrap();
        assert_eq!(indexes(&log), vec![3, 4, 5]);
        assert_eq!(log.entries.read().last_purged.map(|id| id.index), Some(2));
    }

    /// After a torn tail behind entry 1: the log opens with entry 1 alone, and the next append lands
    /// where the torn bytes were (a reopen sees both entries).
    fn reopens_with_entry_1_and_appends_after_it(dir: &Path) {
        let log = LogFile::open(dir).unwrap();
        assert_eq!(indexes(&log), vec![1]);
        log.append(vec![entry(1, 2)]).unwrap();
        drop(log);
        assert_eq!(indexes(&LogFile::open(dir).unwrap()), vec![1, 2]);
    }

    #[test]
    fn a_torn_tail_is_removed_and_the_log_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let log = LogFile::open(dir.path()).unwrap();
        log.append(vec![entry(1, 1), entry(1, 2)]).unwrap();
        let full = log.file.lock().len;
        drop(log);
        // A crash in the middle of the second record's write.
        let file = OpenOptions::new().write(true).open(dir.path().join(LOG_FILE)).unwrap();
        file.set_len(full - 3).unwrap();
        drop(file);
        reopens_with_entry_1_and_appends_after_it(dir.path());
    }

    #[test]
    fn zeros_after_the_last_record_are_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let log = LogFile::open(dir.path()).unwrap();
        log.append(vec![entry(1, 1)]).unwrap();
        drop(log);
        let mut file = OpenOptions::new().append(true).open(dir.path().join(LOG_FILE)).unwrap();
        file.write_all(&[0; 100]).unwrap();
        drop(file);
        reopens_with_entry_1_and_appends_after_it(dir.path());
    }

    #[test]
    fn a_bad_record_before_good_ones_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let log = LogFile::open(dir.path()).unwrap();
        log.append(vec![entry(1, 1), entry(1, 2)]).unwrap();
        drop(log);
        let path = dir.path().join(LOG_FILE);
        let mut bytes = fs::read(&path).unwrap();
        bytes[HEADER_BYTES + 2] ^= 0xff;
        fs::write(&path, &bytes).unwrap();
        let error = LogFile::open(dir.path()).err().expect("refused");
        assert!(error.to_string().contains("checksum"), "{error}");
        // An absurd length is refused before anything is allocated for it.
        bytes[..4].copy_from_slice(&u32::MAX.to_be_bytes());
        fs::write(&path, &bytes).unwrap();
        let error = LogFile::open(dir.path()).err().expect("refused");
        assert!(error.to_string().contains("claims"), "{error}");
    }
}
