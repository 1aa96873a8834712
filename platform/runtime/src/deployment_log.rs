//! The cluster's deployment log: in a cluster, a runtime keeps its deployments in the replicated
//! internal topic `__sluice_plugins` (one partition) instead of files of one broker, so
//! that every broker knows every deployment and runs the part of it whose input it leads — and a
//! deployment outlives the broker that took it. Kafka Connect keeps connector configs in a config
//! topic the same way.
//!
//! Records (keys are UTF-8; the newest record of a key is what counts). The topic is marked
//! `cleanup.policy=compact`, but the storage has no log cleaner yet, so it keeps every record: each
//! deploy of a new module adds the module's size, each change about a kilobyte, and a follower
//! reads all of it at start. Tombstones for removed deployments and unused modules are written all
//! the same, for the cleaner to act on. (With a cleaner, forgetting a module would race a
//! concurrent deploy of the same bytes that found its chunks already in the log.)
//! - `<kind>/<name>` → the runtime's own encoding of the deployment; no value: deleted;
//! - `module/<digest>/<index>/<count>` → chunk `index` of the `count` chunks of a component (at most
//!   [`MODULE_CHUNK_BYTES`] each), written in one transaction before the first deployment that
//!   uses it. A deployment names its module by digest and the offset of its first chunk; a broker
//!   that lacks the module reads the chunks from there ([`DeploymentLog::read_module`]).
//!
//! Every write is a transaction of the broker's plugin host (transactional id
//! `__sluice-plugins-<kind>-<broker>`), so a follower reading committed records never sees half a
//! module. Each broker's follower thread ([`DeploymentLog::follow`]) reads the log from the start
//! and hands every change of its kind to the runtime in log order; a write returns once this
//! broker's follower has applied it, so an admin call sees its own change.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::{Condvar, Mutex};
use sluice_broker::host::{CommittedReader, Host, HostError, PLUGINS_TOPIC, ProducerRecord, ReaderLimits, StopFlag, TransactionalProducer};
use sluice_wasm::MODULE_BYTES_MAX;

use crate::RuntimeError;

/// Largest chunk of a module in one record.
pub const MODULE_CHUNK_BYTES: usize = 512 << 10;
/// Largest deployment record a follower accepts (specs are a few kilobytes).
pub const DEPLOYMENT_RECORD_BYTES_MAX: usize = 1 << 20;
/// Most chunks a module may have: [`MODULE_BYTES_MAX`] in [`MODULE_CHUNK_BYTES`] pieces.
const MODULE_CHUNKS_MAX: usize = MODULE_BYTES_MAX.div_ceil(MODULE_CHUNK_BYTES);
const TXN_TIMEOUT_MS: i32 = 60_000;
/// How long a write waits for this broker's follower to apply it.
const APPLY_WAIT: Duration = Duration::from_secs(30);
/// A follower with nothing to read waits this long for new records before looking again.
const IDLE_WAIT: Duration = Duration::from_millis(500);
/// Pause after a failed read (the topic not created yet, its leader moving).
const RETRY_PAUSE: Duration = Duration::from_secs(1);
/// Records a follower decodes per read.
const FOLLOW_BATCH_RECORDS: usize = 64;

/// One change of a deployment, in log order.
#[derive(Debug, Clone)]
pub struct Change {
    pub name: String,
    /// The deployment's record; `None`: deleted.
    pub record: Option<Bytes>,
    pub offset: i64,
}

pub struct DeploymentLog {
    host: Host,
    kind: &'static str,
    writer: Mutex<Option<TransactionalProducer>>,
    followed: Mutex<Followed>,
    applied: Condvar,
    stop: StopFlag,
    follower: Mutex<Option<std::thread::JoinHandle<()>>>,
}

#[derive(Default)]
struct Followed {
    /// Past the last record the follower handed over.
    position: i64,
    /// Digest → offset of the first chunk of its latest copy in the log.
    modules: HashMap<String, i64>,
}

impl DeploymentLog {
    /// The log of deployments of `kind` (`transform`, `connector`, `mirror`), or `None` on a broker
    /// that is not in a cluster (its deployments stay in its own files).
    pub fn open(host: &Host, kind: &'static str) -> Option<Arc<DeploymentLog>> {
        host.is_clustered().then(|| {
            let stop = StopFlag::default();
            Arc::new(DeploymentLog {
                host: host.stopping_on(stop.clone()),
                kind,
                writer: Mutex::new(None),
                followed: Mutex::new(Followed::default()),
                applied: Condvar::new(),
                stop,
                follower: Mutex::new(None),
            })
        })
    }

    /// Writes `name`'s record (`None`: deletes it) and waits until this broker has applied it;
    /// returns the record's offset. Blocking.
    pub fn put(&self, name: &str, record: Option<Vec<u8>>) -> Result<i64, RuntimeError> {
        if record.as_ref().is_some_and(|r| r.len() > DEPLOYMENT_RECORD_BYTES_MAX) {
            return Err(RuntimeError::Invalid(format!("a deployment record is at most {DEPLOYMENT_RECORD_BYTES_MAX} bytes")));
        }
        let key = format!("{}/{name}", self.kind);
        let last =
            self.write(vec![ProducerRecord { key: Some(Bytes::from(key)), value: record.map(Bytes::from), ..ProducerRecord::default() }])?;
        self.wait_applied(last)?;
        Ok(last)
    }

    /// Makes sure the log holds the component `digest` (`bytes`); returns the offset of its first
    /// chunk, for the deployment records that use it. Blocking.
    pub fn publish_module(&self, digest: &str, bytes: &[u8]) -> Result<i64, RuntimeError> {
        if let Some(&offset) = self.followed.lock().modules.get(digest) {
            return Ok(offset);
        }
        if bytes.len() > MODULE_BYTES_MAX {
            return Err(RuntimeError::Invalid(format!("the module is {} bytes; at most {MODULE_BYTES_MAX}", bytes.len())));
        }
        let count = bytes.len().div_ceil(MODULE_CHUNK_BYTES).max(1);
        let chunks: Vec<ProducerRecord> = (0..count)
            .map(|index| {
                let range = index * MODULE_CHUNK_BYTES..((index + 1) * MODULE_CHUNK_BYTES).min(bytes.len());
                ProducerRecord {
                    key: Some(Bytes::from(format!("module/{digest}/{index}/{count}"))),
                    value: Some(Bytes::copy_from_slice(&bytes[range])),
                    ..ProducerRecord::default()
                }
            })
            .collect();
        let last = self.write(chunks)?;
        self.wait_applied(last)?;
        Ok(self.followed.lock().modules.get(digest).copied().unwrap_or(last + 1 - count as i64))
    }

    /// Removes the component `digest` (`bytes` long) from the log, for a module no deployment uses
    /// any more: a tombstone for each chunk, which compaction then drops with the chunk. Blocking.
    pub fn forget_module(&self, digest: &str, bytes: usize) -> Result<(), RuntimeError> {
        let count = bytes.div_ceil(MODULE_CHUNK_BYTES).max(1);
        if count > MODULE_CHUNKS_MAX {
            return Err(RuntimeError::Invalid(format!("a module of {bytes} bytes cannot be in the plugin log")));
        }
        let tombstones = (0..count)
            .map(|index| ProducerRecord { key: Some(Bytes::from(format!("module/{digest}/{index}/{count}"))), ..ProducerRecord::default() })
            .collect();
        let last = self.write(tombstones)?;
        self.wait_applied(last)
    }

    /// The component `digest` from the log, reading its chunks from `from` on (a later copy, if
    /// compaction removed that one, is further on). The caller checks the bytes against the digest.
    /// Blocking.
    pub fn read_module(&self, digest: &str, from: i64) -> Result<Vec<u8>, RuntimeError> {
        let limits = ReaderLimits { read_bytes_max: 2 * MODULE_CHUNK_BYTES + (64 << 10), ..ReaderLimits::default() };
        let mut reader = self.host.reader(PLUGINS_TOPIC, 0, from.max(0))?.with_limits(limits);
        let prefix = format!("module/{digest}/");
        let mut chunks: BTreeMap<usize, Bytes> = BTreeMap::new();
        let mut expected: Option<usize> = None;
        loop {
            let batch = reader.next_batch(16)?;
            for record in batch.records {
                let Some(key) = record.key.as_deref().and_then(|k| std::str::from_utf8(k).ok()) else { continue };
                let Some((index, count)) = key.strip_prefix(&prefix).and_then(chunk_position) else { continue };
                let Some(value) = record.value else { continue };
                if expected.is_some_and(|c| c != count) || value.len() > MODULE_CHUNK_BYTES {
                    return Err(RuntimeError::Invalid(format!("the plugin log holds a malformed chunk of module {digest}")));
                }
                expected = Some(count);
                chunks.insert(index, value);
            }
            if let Some(count) = expected
                && chunks.len() == count
            {
                let mut bytes = Vec::with_capacity(chunks.values().map(Bytes::len).sum());
                chunks.values().for_each(|chunk| bytes.extend_from_slice(chunk));
                return Ok(bytes);
            }
            if reader.position() >= reader.last_stable_offset() {
                return Err(RuntimeError::NotFound { what: "module in the plugin log", name: digest.to_string() });
            }
        }
    }

    /// Starts the follower thread: reads the log from the start and calls `apply` with every change
    /// of this log's kind, in order, and `caught_up` whenever it has read to the end (at most every
    /// [`IDLE_WAIT`] while nothing is written). Runs until [`DeploymentLog::stop`].
    pub fn follow(
        self: &Arc<Self>,
        mut apply: impl FnMut(Change) + Send + 'static,
        mut caught_up: impl FnMut() + Send + 'static,
    ) -> Result<(), RuntimeError> {
        let log = Arc::clone(self);
        let thread = std::thread::Builder::new()
            .name(format!("{}-deployments", self.kind))
            .spawn(move || {
                let mut reader: Option<CommittedReader> = None;
                while !log.stop.raised() {
                    let position = log.followed.lock().position;
                    let current = match reader.as_mut() {
                        Some(current) => current,
                        None => match log.host.reader(PLUGINS_TOPIC, 0, position) {
                            Ok(made) => reader.insert(made),
                            Err(error) => {
                                tracing::debug!(kind = log.kind, %error, "cannot read the plugin log yet");
                                std::thread::sleep(RETRY_PAUSE);
                                continue;
                            }
                        },
                    };
                    match current.next_batch(FOLLOW_BATCH_RECORDS) {
                        Ok(batch) => {
                            let idle = batch.records.is_empty();
                            for record in batch.records {
                                if let Some(change) = log.take(record) {
                                    // A bug in one change must not stop this broker from applying
                                    // every later one (and every write from waiting 30 s).
                                    let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| apply(change)));
                                    if applied.is_err() {
                                        tracing::error!(kind = log.kind, "applying a change of the plugin log panicked; skipped");
                                    }
                                }
                            }
                            log.followed.lock().position = batch.next_offset;
                            log.applied.notify_all();
                            if batch.next_offset >= current.last_stable_offset() {
                                caught_up();
                            }
                            if idle {
                                current.wait_for_records(IDLE_WAIT);
                            }
                        }
                        Err(HostError::UndecodableBatch { offset, next_offset, reason, .. }) => {
                            tracing::error!(kind = log.kind, offset, reason, "skipping an undecodable batch of the plugin log");
                            current.seek(next_offset);
                        }
                        Err(HostError::OffsetOutOfRange { log_start, .. }) => {
                            tracing::error!(
                                kind = log.kind,
                                log_start,
                                "the plugin log starts past this broker's position; reading on from its start"
                            );
                            current.seek(log_start);
                            log.followed.lock().position = log_start;
                        }
                        Err(error) => {
                            tracing::warn!(kind = log.kind, %error, "reading the plugin log failed; retrying");
                            reader = None;
                            std::thread::sleep(RETRY_PAUSE);
                        }
                    }
                }
            })
            .map_err(|e| RuntimeError::Thread(e.to_string()))?;
        *self.follower.lock() = Some(thread);
        Ok(())
    }

    /// Stops the follower and waits for it to exit (within [`IDLE_WAIT`], a failing read's retry
    /// pause, or the change it is applying). Not from the follower's own callbacks.
    pub fn stop_and_join(&self) {
        self.stop();
        if let Some(thread) = self.follower.lock().take() {
            let _ = thread.join();
        }
    }

    /// Tells the follower to stop.
    pub fn stop(&self) {
        self.stop.raise();
        // Under the lock: a writer between its check and its wait would miss the wake-up.
        let _followed = self.followed.lock();
        self.applied.notify_all();
    }

    pub fn stopped(&self) -> bool {
        self.stop.raised()
    }

    /// What one record means to this log's follower.
    fn take(&self, record: sluice_broker::host::ConsumedRecord) -> Option<Change> {
        let key = record.key.as_deref().and_then(|k| std::str::from_utf8(k).ok())?;
        if let Some(rest) = key.strip_prefix("module/") {
            if let Some((digest, position)) = rest.split_once('/')
                && chunk_position(position).is_some_and(|(index, _)| index == 0)
            {
                let mut followed = self.followed.lock();
                match record.value {
                    Some(_) => followed.modules.insert(digest.to_string(), record.offset),
                    // Forgotten: a later deploy of the same bytes writes them again.
                    None => followed.modules.remove(digest),
                };
            }
            return None;
        }
        let name = key.strip_prefix(self.kind)?.strip_prefix('/')?;
        if record.value.as_ref().is_some_and(|v| v.len() > DEPLOYMENT_RECORD_BYTES_MAX) {
            tracing::error!(kind = self.kind, name, offset = record.offset, "skipping an oversized deployment record");
            return None;
        }
        Some(Change { name: name.to_string(), record: record.value, offset: record.offset })
    }

    /// Writes `records` in one transaction; returns the offset of the last. Blocking.
    fn write(&self, records: Vec<ProducerRecord>) -> Result<i64, RuntimeError> {
        let mut writer = self.writer.lock();
        let mut written = || -> Result<i64, HostError> {
            if writer.is_none() {
                let id = format!("__sluice-plugins-{}-{}", self.kind, self.host.node_id());
                *writer = Some(self.host.producer(&id, TXN_TIMEOUT_MS)?);
            }
            let producer = writer.as_mut().expect("made above");
            let placed = producer.send_placed(PLUGINS_TOPIC, 0, &records)?;
            producer.commit()?;
            Ok(placed.last().map_or(-1, |&(base, count)| base + count as i64 - 1))
        };
        let result = written();
        if result.is_err()
            && let Some(mut producer) = writer.take()
        {
            let _ = producer.abort();
        }
        Ok(result?)
    }

    /// Waits until the follower is past `offset`.
    fn wait_applied(&self, offset: i64) -> Result<(), RuntimeError> {
        let deadline = Instant::now() + APPLY_WAIT;
        let mut followed = self.followed.lock();
        while followed.position <= offset {
            if self.stop.raised() || self.applied.wait_until(&mut followed, deadline).timed_out() {
                return Err(RuntimeError::Invalid(format!(
                    "the change was written to the plugin log (offset {offset}) but this broker has not applied it within {APPLY_WAIT:?}; \
                     it will take effect when it does"
                )));
            }
        }
        Ok(())
    }
}

/// `<index>/<count>` of a module chunk's key, checked: index below count, count within bounds.
fn chunk_position(text: &str) -> Option<(usize, usize)> {
    let (index, count) = text.split_once('/')?;
    let (index, count): (usize, usize) = (index.parse().ok()?, count.parse().ok()?);
    (index < count && count <= MODULE_CHUNKS_MAX).then_some((index, count))
}

#[cfg(test)]
mod tests {
    use super::chunk_position;

    #[test]
    fn chunk_keys_are_checked() {
        assert_eq!(chunk_position("0/3"), Some((0, 3)));
        assert_eq!(chunk_position("2/3"), Some((2, 3)));
        assert_eq!(chunk_position("3/3"), None);
        assert_eq!(chunk_position("0/1000000"), None);
        assert_eq!(chunk_position("x/3"), None);
        assert_eq!(chunk_position("1"), None);
    }
}
