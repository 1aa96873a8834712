//! `host`: the only part of the broker that code running inside it may use — the Wasm transform
//! runtime today, connectors and mirrors next. Everything else in the crate is the broker's own.
//!
//! A runtime is an [`Extension`]: the broker calls [`Extension::start`] once its logs are recovered,
//! with a [`Host`] handle, merges the routes it returns into the admin API, and calls
//! [`Extension::stop`] before the logs close. Through the handle a runtime can:
//!
//! - look at topics ([`Host::topic`], [`Host::topics`]) and create them ([`Host::create_topic`]);
//! - read a partition's **committed** records ([`Host::reader`] → [`CommittedReader`]): what a
//!   read_committed Kafka consumer sees, decoded, with aborted transactions and control batches
//!   filtered out and decompression bounded;
//! - write records and consumer-group offsets in one transaction ([`Host::producer`] →
//!   [`TransactionalProducer`]): what a transactional Kafka producer does, through the same
//!   coordinator and checked append path as clients' requests;
//! - read committed group offsets ([`Host::committed_offset`]), resolve start positions
//!   ([`Host::resolve_start`]), own a data subdirectory ([`Host::data_dir`]), register metrics
//!   ([`Host::metrics`]) and run async work ([`Host::runtime`]).
//!
//! Nothing of `sluice-storage` or `kafka-protocol` crosses this boundary: records are plain bytes
//! ([`ProducerRecord`], [`ConsumedRecord`]) and failures are [`HostError`]. Every method that does
//! file I/O says so; call those from a blocking context (a runtime's own threads), never from an
//! async task.
//!
//! Names that start with [`INTERNAL_PREFIX`] (transactional ids, consumer groups) belong to the
//! broker and its runtimes: Kafka clients cannot use them, so no client can fence a runner or move
//! its input position.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use crate::broker::Broker;
use crate::config::TopicConfig;
use crate::error::BrokerError;

mod mirror;
mod producer;
mod reader;
mod remote;
#[cfg(test)]
mod tests;

pub use crate::admin::{ADMIN_BODY_BYTES_MAX, ApiError, json_body};
pub use crate::topic::PLUGINS_TOPIC;
pub use mirror::{MirroredAppend, Promotion};
pub use producer::{ProducerRecord, TransactionalProducer};
pub use reader::{CommittedReader, ConsumedRecord, FetchedRecords, ReadBatch, ReaderLimits, RecordView, Visited, decode_fetched};
pub use remote::PEER_CLIENT_ID_PREFIX;
pub(crate) use remote::is_peer;

/// The prefix of transactional ids and group ids reserved for the broker's own runtimes.
pub const INTERNAL_PREFIX: &str = "__sluice";

/// Whether a client-supplied transactional id or group id is reserved for the broker.
pub fn is_internal_name(name: &str) -> bool {
    name.starts_with(INTERNAL_PREFIX)
}

/// A plugin task's stop signal as the host sees it. Calls that wait on the cluster — retries while
/// a coordinator or leader moves, a remote reader's long poll — give up once it is raised, so
/// stopping or redeploying a plugin never waits out a failover. A task passes its flag with
/// [`Host::stopping_on`]; a default flag is never raised.
#[derive(Debug, Clone, Default)]
pub struct StopFlag(Arc<std::sync::atomic::AtomicBool>);

impl StopFlag {
    pub fn raise(&self) {
        self.0.store(true, std::sync::atomic::Ordering::Release);
    }

    pub fn raised(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// What an extension's `start` may fail with: its own error type, boxed.
pub type StartError = Box<dyn std::error::Error + Send + Sync>;

/// A subsystem that runs inside the broker process through a [`Host`]: the Wasm transform runtime,
/// connectors, mirrors. It lives in its own crate (the broker does not depend on it) and plugs in
/// with `ServerOptions::extensions`.
pub trait Extension: Send + Sync {
    /// A short lowercase name (`transforms`, `connect`, `mirror`): it names the extension's data
    /// subdirectory (`<data-dir>/__<name>`) and appears in logs.
    fn name(&self) -> &'static str;
    /// Called once the broker has recovered its logs and before clients are served, on a blocking
    /// thread (it may compile modules or read files). Returns routes merged into the admin API (their
    /// paths must not collide with the broker's own).
    fn start(&self, host: Host) -> Result<axum::Router, StartError>;
    /// Called at shutdown, after clients are disconnected and before the logs close. Must return
    /// once the extension no longer writes through its host.
    fn stop(&self);
}

/// Why a host operation failed, in terms a runtime can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("topic '{0}' does not exist")]
    UnknownTopic(String),
    #[error("partition {partition} of topic '{topic}' does not exist")]
    UnknownPartition { topic: String, partition: i32 },
    /// The topic could not be created (bad name, partitions or config, or it exists).
    #[error("{0}")]
    TopicRefused(String),
    /// The position is below the log start (retention or DeleteRecords removed it).
    #[error("offset {offset} of {topic}-{partition} was deleted; the log now starts at {log_start}")]
    OffsetOutOfRange { topic: String, partition: i32, offset: i64, log_start: i64 },
    /// A stored batch that cannot be decoded within the reader's limits (corrupt compressed data, a
    /// decompression bomb). `next_offset` is past it: seek there to skip it.
    #[error("cannot decode the batch at offset {offset} of {topic}-{partition}: {reason}")]
    UndecodableBatch { topic: String, partition: i32, offset: i64, next_offset: i64, reason: String },
    /// Another producer with the same transactional id took over: this one must stop.
    #[error("{action}: fenced by a newer producer with the same transactional id")]
    Fenced { action: String },
    /// A record larger than the topic's `max.message.bytes` can hold.
    #[error("{action}: a record of {record_bytes} bytes does not fit in a batch of at most {limit_bytes} bytes (max.message.bytes)")]
    RecordTooLarge { action: String, record_bytes: usize, limit_bytes: usize },
    /// The transaction coordinator or a partition refused the operation (Kafka's error name).
    #[error("{action}: {reason}")]
    Refused { action: String, reason: String },
    /// Waiting for durability (fsync before acknowledging) took too long.
    #[error("{0}: timed out")]
    TimedOut(String),
    /// The disk failed or the broker is shutting down.
    #[error("storage: {0}")]
    Storage(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl HostError {
    pub fn is_fenced(&self) -> bool {
        matches!(self, HostError::Fenced { .. })
    }

    fn from_broker(error: BrokerError) -> HostError {
        match error {
            BrokerError::UnknownTopic(topic) => HostError::UnknownTopic(topic),
            BrokerError::UnknownPartition { topic, partition } => HostError::UnknownPartition { topic, partition },
            BrokerError::InvalidTopic(_)
            | BrokerError::TopicExists(_)
            | BrokerError::InvalidPartitions(_)
            | BrokerError::InvalidReplicationFactor(_)
            | BrokerError::InvalidConfig(_)
            | BrokerError::PolicyViolation(_) => HostError::TopicRefused(error.to_string()),
            BrokerError::Timeout(what) => HostError::TimedOut(what),
            BrokerError::InvalidRequest(what) => HostError::InvalidArgument(what),
            error @ BrokerError::ReadOnlyMirror { .. } => HostError::Refused { action: "writing".into(), reason: error.to_string() },
            other => HostError::Storage(other.to_string()),
        }
    }
}

/// A topic as a runtime sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    pub name: String,
    pub partitions: i32,
    /// The largest batch the topic accepts (`max.message.bytes`).
    pub max_message_bytes: usize,
}

/// Where a reader starts when no position was committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartPosition {
    Earliest,
    /// The last stable offset: only records committed from now on.
    Latest,
    /// This offset, clamped to what exists.
    Offset(i64),
    /// The first record with a timestamp at or after this (ms since the epoch), or the end.
    Timestamp(i64),
}

/// Offsets of one partition, as a read_committed consumer sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionOffsets {
    pub log_start: i64,
    pub last_stable: i64,
    pub high_watermark: i64,
}

impl PartitionOffsets {
    fn of(partition: &crate::topic::Partition) -> PartitionOffsets {
        PartitionOffsets {
            log_start: partition.log_start_offset(),
            last_stable: partition.last_stable_offset(),
            high_watermark: partition.high_watermark(),
        }
    }
}

/// The handle a runtime gets at start. Cheap to clone; every clone speaks for the same extension.
#[derive(Clone)]
pub struct Host {
    broker: Arc<Broker>,
    extension: &'static str,
    runtime: tokio::runtime::Handle,
    /// In a cluster, the way to the clients' coordinators and the partitions' leaders, made on first
    /// use (the controller joins after the host is built).
    peers: Arc<std::sync::OnceLock<Arc<remote::Peers>>>,
    /// The stop signal of the task this handle works for (never raised on the extension's own).
    stop: StopFlag,
}

impl Host {
    pub(crate) fn new(broker: Arc<Broker>, extension: &'static str, runtime: tokio::runtime::Handle) -> Host {
        Host { broker, extension, runtime, peers: Arc::default(), stop: StopFlag::default() }
    }

    /// This handle for one task: its calls that wait on the cluster, and the producers and readers
    /// it makes, give up once `stop` is raised (see [`StopFlag`]).
    pub fn stopping_on(&self, stop: StopFlag) -> Host {
        Host { stop, ..self.clone() }
    }

    /// `None` on a single node (the broker's own coordinators serve its plugins in process); in a
    /// cluster the network path of [`remote`], or an error before the controller has started.
    fn peers(&self) -> Result<Option<Arc<remote::Peers>>, HostError> {
        if !self.broker.is_clustered() {
            return Ok(None);
        }
        if let Some(peers) = self.peers.get() {
            return Ok(Some(Arc::clone(peers)));
        }
        let Some(controller) = self.broker.controller() else {
            return Err(HostError::Refused { action: "reaching the cluster".into(), reason: "the controller has not started yet".into() });
        };
        let made = Arc::new(remote::Peers::new(self.broker.node_id(), Arc::clone(controller), self.runtime.clone()));
        Ok(Some(Arc::clone(self.peers.get_or_init(|| made))))
    }

    /// A host over a broker opened in-process, for runtimes' own tests.
    pub fn for_tests(broker: Arc<Broker>, extension: &'static str, runtime: tokio::runtime::Handle) -> Host {
        Host::new(broker, extension, runtime)
    }

    pub fn extension_name(&self) -> &'static str {
        self.extension
    }

    pub fn cluster_id(&self) -> &str {
        self.broker.cluster_id()
    }

    pub fn node_id(&self) -> i32 {
        self.broker.node_id()
    }

    /// Whether this broker is one of a cluster's (a controller quorum of its own or of several).
    /// A runtime keeps its deployments in [`PLUGINS_TOPIC`] then, and runs each partition's work
    /// on the partition's leader.
    pub fn is_clustered(&self) -> bool {
        self.broker.is_clustered()
    }

    /// Whether this broker leads the partition now (on a single node: whether it exists).
    pub fn leads(&self, topic: &str, partition: i32) -> bool {
        self.broker.topic(topic).is_some_and(|t| t.led_partition(partition).is_ok())
    }

    /// The broker that leads the partition now, as the controller says; `None` while it has no
    /// leader (or does not exist). On a single node, this broker for every partition it has.
    pub fn leader_of(&self, topic: &str, partition: i32) -> Option<i32> {
        let Some(controller) = self.broker.controller().filter(|_| self.broker.is_clustered()) else {
            return self.leads(topic, partition).then(|| self.broker.node_id());
        };
        controller.with_metadata(|m, _| {
            let state = m.partition(topic, partition)?;
            (state.leader != sluice_cluster::NO_LEADER).then_some(state.leader)
        })
    }

    pub fn topic(&self, name: &str) -> Option<TopicInfo> {
        self.broker.topic(name).map(|t| topic_info(&self.broker, &t))
    }

    /// Every topic, sorted by name (the broker's internal logs are not topics).
    pub fn topics(&self) -> Vec<TopicInfo> {
        self.broker.topics().iter().map(|t| topic_info(&self.broker, t)).collect()
    }

    /// Creates a topic with `partitions` (or the broker's default) and Kafka-named configs. Blocking
    /// file I/O.
    pub fn create_topic(&self, name: &str, partitions: Option<i32>, configs: &BTreeMap<String, String>) -> Result<TopicInfo, HostError> {
        let config = TopicConfig::from_pairs(configs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .map_err(|e| HostError::TopicRefused(format!("topic '{name}': {e}")))?;
        let created = self.broker.create_topic(name, partitions, config, false).map_err(HostError::from_broker)?;
        Ok(topic_info(&self.broker, &created.topic))
    }

    /// Grows a topic to `total` partitions (they only grow). Blocking file I/O.
    pub fn create_partitions(&self, topic: &str, total: i32) -> Result<TopicInfo, HostError> {
        self.broker.add_partitions(topic, total, false).map_err(HostError::from_broker)?;
        self.topic(topic).ok_or_else(|| HostError::UnknownTopic(topic.to_string()))
    }

    /// The partition's offsets, from this broker when it leads the partition, else (in a cluster)
    /// from the leader. Blocking in a cluster.
    pub fn partition_offsets(&self, topic: &str, partition: i32) -> Result<PartitionOffsets, HostError> {
        match self.broker.partition(topic, partition) {
            Ok(p) => Ok(PartitionOffsets::of(&p)),
            Err(BrokerError::NotLeader { .. }) if self.broker.is_clustered() => {
                let peers = self.peers()?.ok_or_else(|| HostError::Storage("no way to the cluster".into()))?;
                Ok(PartitionOffsets {
                    log_start: peers.list_offset(topic, partition, remote::EARLIEST, false, &self.stop)?,
                    last_stable: peers.list_offset(topic, partition, remote::LATEST, true, &self.stop)?,
                    high_watermark: peers.list_offset(topic, partition, remote::LATEST, false, &self.stop)?,
                })
            }
            Err(error) => Err(HostError::from_broker(error)),
        }
    }

    /// The partition's offsets if this broker leads it; `None` if it does not (or the partition does
    /// not exist). Never a network call.
    pub fn local_partition_offsets(&self, topic: &str, partition: i32) -> Option<PartitionOffsets> {
        self.broker.partition(topic, partition).ok().map(|p| PartitionOffsets::of(&p))
    }

    /// The offset a group committed for a partition (the next one to read), if any. In a cluster this
    /// asks the coordinator (waiting while an open transaction has an offset staged for it), so it
    /// can fail; a failure is not "nothing committed". Blocking.
    pub fn committed_offset(&self, group: &str, topic: &str, partition: i32) -> Result<Option<i64>, HostError> {
        let local = || self.broker.local_coordinators().offsets.get(group, topic, partition).map(|c| c.offset);
        match self.peers()? {
            // A plugin of a cluster from before plugins' positions moved to the cluster's
            // coordinators has them in this broker's own: used until it commits in the cluster.
            Some(peers) => Ok(peers.committed_offset(group, topic, partition, &self.stop)?.or_else(local)),
            None => Ok(local()),
        }
    }

    /// Turns a start position into an offset of the partition now. Blocking file I/O (timestamps).
    pub fn resolve_start(&self, topic: &str, partition: i32, start: StartPosition) -> Result<i64, HostError> {
        let p = match self.broker.partition(topic, partition) {
            Ok(p) => p,
            Err(BrokerError::NotLeader { .. }) if self.broker.is_clustered() => {
                return self.resolve_start_at_leader(topic, partition, start);
            }
            Err(error) => return Err(HostError::from_broker(error)),
        };
        let (first, end) = (p.log_start_offset(), p.last_stable_offset());
        Ok(match start {
            StartPosition::Earliest => first,
            StartPosition::Latest => end,
            StartPosition::Offset(offset) => offset.clamp(first, end),
            StartPosition::Timestamp(ts) => match p.offset_for_timestamp(ts) {
                Ok(Some((offset, _))) => offset.clamp(first, end),
                Ok(None) => end,
                Err(error) => return Err(HostError::Storage(error.to_string())),
            },
        })
    }

    /// [`resolve_start`](Self::resolve_start) for a partition another broker leads: ListOffsets there.
    fn resolve_start_at_leader(&self, topic: &str, partition: i32, start: StartPosition) -> Result<i64, HostError> {
        let peers = self.peers()?.ok_or_else(|| HostError::Storage("no way to the cluster".into()))?;
        let first = peers.list_offset(topic, partition, remote::EARLIEST, true, &self.stop)?;
        let end = peers.list_offset(topic, partition, remote::LATEST, true, &self.stop)?;
        Ok(match start {
            StartPosition::Earliest => first,
            StartPosition::Latest => end,
            StartPosition::Offset(offset) => offset.clamp(first, end),
            StartPosition::Timestamp(ts) => match peers.list_offset(topic, partition, ts, true, &self.stop)? {
                offset if offset >= 0 => offset.clamp(first, end),
                _ => end,
            },
        })
    }

    /// A reader of one partition's committed records, starting at `offset`: from this broker's log
    /// when it leads the partition, else (in a cluster) from the leader over the network.
    pub fn reader(&self, topic: &str, partition: i32, offset: i64) -> Result<CommittedReader, HostError> {
        match self.broker.partition(topic, partition) {
            Ok(p) => Ok(CommittedReader::new(p, offset, ReaderLimits::default(), self.runtime.clone())),
            Err(BrokerError::NotLeader { .. }) if self.broker.is_clustered() => {
                let peers = self.peers()?.ok_or_else(|| HostError::Storage("no way to the cluster".into()))?;
                Ok(CommittedReader::remote(
                    peers,
                    self.stop.clone(),
                    topic,
                    partition,
                    offset,
                    ReaderLimits::default(),
                    self.runtime.clone(),
                ))
            }
            Err(error) => Err(HostError::from_broker(error)),
        }
    }

    /// Initialises the transactional producer `transactional_id` (InitProducerId): fences any
    /// earlier producer of that id and aborts its open transaction. `timeout_ms` is the
    /// transaction timeout. Blocking file I/O.
    pub fn producer(&self, transactional_id: &str, timeout_ms: i32) -> Result<TransactionalProducer, HostError> {
        TransactionalProducer::init(Arc::clone(&self.broker), self.peers()?, self.stop.clone(), transactional_id, timeout_ms)
    }

    /// The extension's own directory, `<data-dir>/__<name>`, created if needed. Blocking file I/O.
    pub fn data_dir(&self) -> Result<PathBuf, HostError> {
        let dir = self.broker.data_dir().join(format!("__{}", self.extension));
        std::fs::create_dir_all(&dir).map_err(|e| HostError::Storage(format!("cannot create {}: {e}", dir.display())))?;
        Ok(dir)
    }

    /// The broker's Prometheus registry (served at `/metrics`, names prefixed `sluice_`).
    pub fn metrics(&self) -> &prometheus::Registry {
        &self.broker.metrics().registry
    }

    /// Whether the broker fsyncs before it acknowledges (`flush.messages=1`, the fsync-before-ack
    /// mode): a runtime's own files that must agree with the log after a crash are then fsynced
    /// too; otherwise they are as durable as the log (they survive a process crash, not a power cut).
    pub fn flushes_before_ack(&self) -> bool {
        self.broker.config().flush_before_ack()
    }

    /// The value of a broker setting (`sluice server --set name=value`, or its default), for the
    /// settings that configure extensions (`plugins.compilers`). `None` for a name the broker does
    /// not know.
    pub fn setting(&self, name: &str) -> Option<String> {
        self.broker.config().get(name).map(str::to_owned)
    }

    /// The broker's tokio runtime, for async work and for blocking threads that need to wait.
    pub fn runtime(&self) -> &tokio::runtime::Handle {
        &self.runtime
    }
}

fn topic_info(broker: &Broker, topic: &crate::topic::Topic) -> TopicInfo {
    let max_message_bytes = topic.config.read().log_config(broker.config()).max_batch_bytes as usize;
    TopicInfo { name: topic.name.as_str().to_string(), partitions: topic.partition_count(), max_message_bytes }
}

/// Milliseconds since the Unix epoch by the broker's clock (the broker's own code uses this one too).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Replaces `path` with `contents` atomically and durably: a temporary file beside it, fsynced, renamed
/// over it, and the directory fsynced. A crash leaves the old contents or the new, never a mix; a
/// leftover `<name>.tmp` may be deleted. The one implementation the broker uses for its own metadata.
/// Blocking file I/O.
pub fn write_file_atomically(path: &std::path::Path, contents: &[u8]) -> Result<(), HostError> {
    sluice_storage::fs::write_atomically(path, contents, sluice_storage::fs::Durability::Fsync)
        .map_err(|e| HostError::Storage(e.to_string()))
}
