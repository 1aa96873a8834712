//! The applied side of the controller: [`Metadata`] as of the last applied log entry, the cluster
//! membership, and snapshots of both.
//!
//! The state lives in memory and is rebuilt at start-up from the last snapshot (`snapshot` in the
//! controller's directory, replaced atomically with fsync) plus the log entries after it. A snapshot
//! is written when openraft asks for one (every [`SNAPSHOT_EVERY_ENTRIES`] entries), after which the
//! log before it is purged.

use std::io::{self, Cursor};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use openraft::storage::RaftStateMachine;
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageError, StorageIOError, StoredMembership,
};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use sluice_storage::fs::{Durability, write_atomically};
use tokio::sync::watch;

use crate::metadata::{Metadata, Outcome};
use crate::{NodeId, TypeConfig};

/// openraft builds a snapshot after this many entries since the last one.
pub const SNAPSHOT_EVERY_ENTRIES: u64 = 5000;
/// A snapshot file larger than this is not ours; refuse it rather than allocate for it.
pub const SNAPSHOT_BYTES_MAX: u64 = 256 * 1024 * 1024;
const SNAPSHOT_FILE: &str = "snapshot";

/// What the applied entries add up to.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Applied {
    pub last_applied: Option<LogId<NodeId>>,
    pub membership: StoredMembership<NodeId, BasicNode>,
    pub metadata: Metadata,
}

#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, BasicNode>,
    /// rmp-serde of [`Applied`].
    data: Vec<u8>,
}

/// The state machine openraft drives; clones share the state.
#[derive(Clone)]
pub struct StateMachine {
    applied: Arc<RwLock<Applied>>,
    /// The index of the last applied entry, for whoever waits on metadata changes.
    changes: Arc<watch::Sender<u64>>,
    dir: PathBuf,
    snapshots_built: Arc<AtomicU64>,
    /// The last log id of the snapshot file; taken while the file is replaced, so a build (openraft
    /// runs it in a task of its own) and an install never write at once, and an older snapshot never
    /// replaces a newer one.
    saved: Arc<tokio::sync::Mutex<Option<LogId<NodeId>>>>,
}

fn read_snapshot(path: &Path) -> io::Result<Option<StoredSnapshot>> {
    let len = match std::fs::metadata(path) {
        Ok(meta) => meta.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if len > SNAPSHOT_BYTES_MAX {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("{} holds {len} bytes", path.display())));
    }
    let bytes = std::fs::read(path)?;
    rmp_serde::from_slice(&bytes)
        .map(Some)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{} is not a snapshot: {e}", path.display())))
}

fn decode_applied(data: &[u8]) -> io::Result<Applied> {
    rmp_serde::from_slice(data).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("undecodable snapshot: {e}")))
}

impl StateMachine {
    /// Loads the last snapshot under `dir`, if any.
    pub fn open(dir: &Path) -> io::Result<StateMachine> {
        let stored = read_snapshot(&dir.join(SNAPSHOT_FILE))?;
        let saved = stored.as_ref().and_then(|s| s.meta.last_log_id);
        let applied = match stored {
            Some(stored) => decode_applied(&stored.data)?,
            None => Applied::default(),
        };
        let index = applied.last_applied.map_or(0, |id| id.index);
        Ok(StateMachine {
            applied: Arc::new(RwLock::new(applied)),
            changes: Arc::new(watch::Sender::new(index)),
            dir: dir.to_path_buf(),
            snapshots_built: Arc::new(AtomicU64::new(0)),
            saved: Arc::new(tokio::sync::Mutex::new(saved)),
        })
    }

    pub fn applied(&self) -> &Arc<RwLock<Applied>> {
        &self.applied
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Replaces the snapshot file (atomically, with fsync, off the async worker threads) unless it
    /// already holds this snapshot or a newer one.
    async fn persist(&self, stored: StoredSnapshot) -> io::Result<()> {
        let mut saved = self.saved.lock().await;
        if saved.is_some() && stored.meta.last_log_id <= *saved {
            return Ok(());
        }
        let last = stored.meta.last_log_id;
        let path = self.dir.join(SNAPSHOT_FILE);
        tokio::task::spawn_blocking(move || {
            let bytes = rmp_serde::to_vec(&stored).map_err(io::Error::other)?;
            write_atomically(&path, &bytes, Durability::Fsync).map_err(io::Error::other)
        })
        .await
        .map_err(io::Error::other)??;
        *saved = last;
        Ok(())
    }

    fn publish(&self) {
        let index = self.applied.read().last_applied.map_or(0, |id| id.index);
        self.changes.send_replace(index);
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let applied = self.applied.read().clone();
        let data = rmp_serde::to_vec(&applied).map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        let built = self.snapshots_built.fetch_add(1, Ordering::Relaxed);
        let snapshot_id = match applied.last_applied {
            Some(id) => format!("{}-{}-{built}", id.leader_id, id.index),
            None => format!("empty-{built}"),
        };
        let meta = SnapshotMeta { last_log_id: applied.last_applied, last_membership: applied.membership.clone(), snapshot_id };
        let stored = StoredSnapshot { meta: meta.clone(), data: data.clone() };
        self.persist(stored).await.map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>), StorageError<NodeId>> {
        let applied = self.applied.read();
        Ok((applied.last_applied, applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Outcome>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut outcomes = Vec::new();
        {
            let mut applied = self.applied.write();
            for entry in entries {
                applied.last_applied = Some(entry.log_id);
                let outcome = match entry.payload {
                    EntryPayload::Blank => Outcome::Applied,
                    EntryPayload::Normal(command) => applied.metadata.apply(entry.log_id.index, &command),
                    EntryPayload::Membership(membership) => {
                        applied.membership = StoredMembership::new(Some(entry.log_id), membership);
                        Outcome::Applied
                    }
                };
                outcomes.push(outcome);
            }
        }
        self.publish();
        Ok(outcomes)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let data = snapshot.into_inner();
        let mut applied = decode_applied(&data).map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        // The meta is what the leader vouches for; the state must agree with it.
        applied.last_applied = meta.last_log_id;
        applied.membership = meta.last_membership.clone();
        let stored = StoredSnapshot { meta: meta.clone(), data };
        self.persist(stored).await.map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        *self.applied.write() = applied;
        self.publish();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let path = self.dir.join(SNAPSHOT_FILE);
        let stored = tokio::task::spawn_blocking(move || read_snapshot(&path))
            .await
            .map_err(io::Error::other)
            .and_then(|r| r)
            .map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        Ok(stored.map(|s| Snapshot { meta: s.meta, snapshot: Box::new(Cursor::new(s.data)) }))
    }
}
