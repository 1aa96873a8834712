//! Topics and partitions as the request path sees them: a partition wraps one storage
//! `PartitionLog` with what the network side needs around it — the high watermark that fetches wait
//! on, and group commit for fsync-before-acknowledge.
//!
//! In a cluster a broker holds only the partitions the controller placed on it, and serves a
//! partition only while the controller names it the leader: everything else answers
//! NOT_LEADER_OR_FOLLOWER, which sends clients to refresh their metadata. A partition held here but
//! led elsewhere is a follower: `replication` copies the leader's batches into it.
//!
//! Consumers read only below the high watermark. The leader's own contribution to it is the log end
//! offset when the broker relies on the page cache and the flushed offset when it fsyncs before
//! acknowledging, so a consumer never sees a record that a power cut could take back; while the ISR
//! has other members, the high watermark is also at most what each of them has fetched, so a
//! consumer never sees a record a leader change could take back. A follower learns its high
//! watermark from the leader's fetch replies.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use parking_lot::{Mutex, RwLock};
use sluice_storage::{
    AbortedTxn, AppendMode, AppendResult, LogConfig, PartitionLog, ReadResult, RetentionStats, SlicedRead, StorageError, TxnMarker,
};
use tokio::sync::watch;
use uuid::Uuid;

use crate::config::TopicConfig;
use crate::error::BrokerError;
use crate::metrics::TopicMetrics;
use crate::replication::ReplicaSet;

/// A topic name as Kafka allows it: 1..=249 characters of `[a-zA-Z0-9._-]`, not `.` or `..`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct TopicName(String);

/// Kafka's limit, chosen so that `<topic>-<partition>` fits a 255-byte file name.
pub(crate) const TOPIC_NAME_BYTES_MAX: usize = 249;

/// Names the broker keeps for its own logs.
pub(crate) const RESERVED_TOPIC_NAMES: &[&str] = &["__consumer_offsets", "__transaction_state", "__consumer_groups", "__cluster"];

/// The internal topic of a cluster's group and transaction coordinators (one partition, replicated;
/// its leader coordinates). Clients may read it; only the coordinators write, create or delete it.
pub(crate) const COORDINATOR_TOPIC: &str = "__sluice_coordinator";

/// The internal topic of a cluster's plugin host (one partition, replicated, `cleanup.policy=compact`
/// for when the log cleaner exists): plugin deployments and their modules, written by the broker
/// that takes a deploy and read by every broker (`sluice_runtime::deployment_log`). Clients may
/// read it; only peers (by client id) write it, and nobody creates or deletes it.
pub const PLUGINS_TOPIC: &str = "__sluice_plugins";

/// The topics the cluster creates for itself.
pub(crate) const INTERNAL_TOPICS: [&str; 2] = [COORDINATOR_TOPIC, PLUGINS_TOPIC];

/// Whether `name` is one of the [`INTERNAL_TOPICS`].
pub(crate) fn is_internal_topic(name: &str) -> bool {
    INTERNAL_TOPICS.contains(&name)
}

impl TopicName {
    pub(crate) fn parse(name: &str) -> Result<TopicName, BrokerError> {
        let invalid = |why: &str| Err(BrokerError::InvalidTopic(format!("'{name}' {why}")));
        if name.is_empty() {
            return invalid("is empty");
        }
        if name.len() > TOPIC_NAME_BYTES_MAX {
            return invalid(&format!("is longer than {TOPIC_NAME_BYTES_MAX} characters"));
        }
        if name == "." || name == ".." {
            return invalid("is not allowed");
        }
        if let Some(bad) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
            return invalid(&format!("contains '{bad}'; topic names use only letters, digits, '.', '_' and '-'"));
        }
        if RESERVED_TOPIC_NAMES.contains(&name) {
            return invalid("is reserved for the broker's internal use");
        }
        Ok(TopicName(name.to_string()))
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

/// Every topic by name: the one map the data plane reads without the control plane's lock. The
/// broker changes it (create, delete); the transaction coordinator shares it to find the partitions
/// its markers go to.
#[derive(Default)]
pub(crate) struct Topics {
    by_name: DashMap<String, Arc<Topic>>,
}

impl Topics {
    pub(crate) fn get(&self, name: &str) -> Option<Arc<Topic>> {
        self.by_name.get(name).map(|t| Arc::clone(t.value()))
    }

    /// A partition this broker leads. One that exists in the cluster but is hosted elsewhere, or
    /// is hosted here but led by another broker, is NOT_LEADER_OR_FOLLOWER.
    pub(crate) fn partition(&self, topic: &str, index: i32) -> Result<Arc<Partition>, BrokerError> {
        let found = self.get(topic).ok_or_else(|| BrokerError::UnknownTopic(topic.to_string()))?;
        found.led_partition(index).map_err(|error| match error {
            kafka_protocol::ResponseError::NotLeaderOrFollower => BrokerError::NotLeader { topic: topic.to_string(), partition: index },
            _ => BrokerError::UnknownPartition { topic: topic.to_string(), partition: index },
        })
    }

    /// Whether the partition exists in the cluster (held here or not), without allocating.
    pub(crate) fn contains_partition(&self, topic: &str, index: i32) -> bool {
        self.by_name.get(topic).is_some_and(|t| (0..t.value().partition_count()).contains(&index))
    }

    /// Whether this broker leads the partition.
    pub(crate) fn leads_partition(&self, topic: &str, index: i32) -> bool {
        self.by_name.get(topic).is_some_and(|t| t.value().partition(index).is_some_and(|p| p.is_leader()))
    }

    /// All topics, sorted by name.
    pub(crate) fn all(&self) -> Vec<Arc<Topic>> {
        let mut topics: Vec<_> = self.by_name.iter().map(|t| Arc::clone(t.value())).collect();
        topics.sort_by(|a, b| a.name.cmp(&b.name));
        topics
    }

    pub(crate) fn len(&self) -> usize {
        self.by_name.len()
    }

    pub(crate) fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// A topic whose name differs from `name` only in '.' versus '_' (they collide in metric names).
    pub(crate) fn metric_clash(&self, name: &str) -> Option<String> {
        let canonical = name.replace('.', "_");
        self.by_name.iter().find(|t| t.key().replace('.', "_") == canonical).map(|t| t.key().clone())
    }

    pub(crate) fn insert(&self, topic: Arc<Topic>) {
        self.by_name.insert(topic.name.as_str().to_string(), topic);
    }

    pub(crate) fn remove(&self, name: &str) -> Option<Arc<Topic>> {
        self.by_name.remove(name).map(|(_, t)| t)
    }
}

/// One topic. Its partition list only grows (CreatePartitions); configs change under AlterConfigs.
pub(crate) struct Topic {
    pub(crate) name: TopicName,
    pub(crate) id: Uuid,
    pub(crate) config: RwLock<TopicConfig>,
    /// The partitions this broker holds, by ascending index: all of them on a single node, the
    /// ones the controller placed here in a cluster.
    pub(crate) partitions: RwLock<Vec<Arc<Partition>>>,
    /// How many partitions the topic has in the cluster, held here or not.
    pub(crate) partition_total: AtomicI32,
    /// The controller log index that created the topic; 0 for a topic from before this node kept
    /// its topics in the controller quorum (it is handed to the quorum at start-up).
    pub(crate) created_at: AtomicU64,
    /// The quorum `created_at` belongs to; 0 with it.
    pub(crate) quorum: AtomicU64,
    pub(crate) metrics: TopicMetrics,
}

impl Topic {
    pub(crate) fn new(name: TopicName, id: Uuid, config: TopicConfig, total: i32, created_at: u64, metrics: TopicMetrics) -> Topic {
        Topic {
            name,
            id,
            config: RwLock::new(config),
            partitions: RwLock::new(Vec::new()),
            partition_total: AtomicI32::new(total),
            created_at: AtomicU64::new(created_at),
            quorum: AtomicU64::new(0),
            metrics,
        }
    }

    /// The partition `index` if this broker holds it.
    pub(crate) fn partition(&self, index: i32) -> Option<Arc<Partition>> {
        let partitions = self.partitions.read();
        // Dense on a single node: position = index.
        if let Some(found) = usize::try_from(index).ok().and_then(|i| partitions.get(i)).filter(|p| p.index == index) {
            return Some(Arc::clone(found));
        }
        partitions.binary_search_by_key(&index, |p| p.index).ok().map(|i| Arc::clone(&partitions[i]))
    }

    /// The partition `index` if this broker leads it; else NOT_LEADER_OR_FOLLOWER if it exists in
    /// the cluster, UNKNOWN_TOPIC_OR_PARTITION if not. The data path's look-up.
    pub(crate) fn led_partition(&self, index: i32) -> Result<Arc<Partition>, kafka_protocol::ResponseError> {
        match self.partition(index) {
            Some(partition) if partition.is_leader() => Ok(partition),
            Some(_) => Err(kafka_protocol::ResponseError::NotLeaderOrFollower),
            None if (0..self.partition_count()).contains(&index) => Err(kafka_protocol::ResponseError::NotLeaderOrFollower),
            None => Err(kafka_protocol::ResponseError::UnknownTopicOrPartition),
        }
    }

    /// Partitions in the cluster, including those other brokers hold.
    pub(crate) fn partition_count(&self) -> i32 {
        self.partition_total.load(Ordering::Acquire)
    }

    /// Whether the topic was created in (or handed to) the quorum `quorum`: only then do its
    /// `created_at` and its absence from that quorum's state mean anything.
    pub(crate) fn belongs_to(&self, quorum: u64) -> bool {
        quorum != 0 && self.quorum.load(Ordering::Acquire) == quorum && self.created_at.load(Ordering::Acquire) > 0
    }

    /// Records that the quorum `quorum` created (or took over) the topic at log index `index`.
    pub(crate) fn stamp(&self, quorum: u64, index: u64) {
        self.created_at.store(index, Ordering::Release);
        self.quorum.store(quorum, Ordering::Release);
    }

    /// The indices of the partitions this broker holds.
    pub(crate) fn hosted(&self) -> Vec<i32> {
        self.partitions.read().iter().map(|p| p.index).collect()
    }

    /// The mirror that writes this topic, while it is a read-only mirror.
    pub(crate) fn mirror(&self) -> Option<String> {
        self.config.read().mirror.clone()
    }

    /// Refuses writes and changes from clients (and from other runtimes) while a mirror owns the
    /// topic: produce, DeleteRecords, CreatePartitions, config changes.
    pub(crate) fn check_writable(&self) -> Result<(), BrokerError> {
        match &self.config.read().mirror {
            Some(mirror) => Err(BrokerError::ReadOnlyMirror { topic: self.name.as_str().to_string(), mirror: mirror.clone() }),
            None => Ok(()),
        }
    }
}

/// How long a write waits for its fsync under fsync-before-ack when the writer gave no timeout (a
/// produce request's default `request.timeout.ms`).
pub(crate) const DURABILITY_WAIT_DEFAULT: Duration = Duration::from_secs(30);

/// How a partition makes writes durable, from `flush.messages`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FlushPolicy {
    /// fsync before acknowledging (flush.messages = 1); group commit shares one fsync among all
    /// writes that arrive while the previous fsync runs.
    BeforeAck,
    /// Rely on the page cache; fsync in the background after this many messages (or never).
    Background { messages: u64 },
}

impl FlushPolicy {
    pub(crate) fn from_flush_messages(messages: i64) -> FlushPolicy {
        if messages <= 1 { FlushPolicy::BeforeAck } else { FlushPolicy::Background { messages: messages as u64 } }
    }
}

pub(crate) struct Partition {
    pub(crate) topic: TopicName,
    pub(crate) index: i32,
    pub(crate) dir: PathBuf,
    /// The storage log. Private: every use goes through a method here, so the high watermark, the
    /// flush bookkeeping and the log cannot drift apart.
    log: RwLock<PartitionLog>,
    /// Bumped by the controller at every leadership change, sent in every response that carries
    /// one; requests from clients that know a newer epoch are refused (they know more than us).
    leader_epoch: AtomicI32,
    /// Whether the controller names this broker the partition's leader (always, on a single node).
    leader: AtomicBool,
    /// The replicas, the ISR and (while leading) each follower's progress: see `replication`.
    replicas: Mutex<ReplicaSet>,
    /// Whether the ISR names a broker besides this one: the high watermark then waits for them.
    replicated: AtomicBool,
    /// Exclusive end of the log; followers' fetches waiting for data watch it.
    log_end: watch::Sender<i64>,
    /// Exclusive upper bound of what consumers may read. Fetches waiting for data watch it.
    high_watermark: watch::Sender<i64>,
    /// Exclusive upper bound of what is known to be on stable storage.
    flushed: watch::Sender<i64>,
    flush_running: AtomicBool,
    /// Why the last fsync failed; once set, the partition stops acknowledging writes.
    flush_failed: Mutex<Option<String>>,
    policy: RwLock<FlushPolicy>,
    /// Records appended since the last fsync, for the background flush policy.
    pub(crate) unflushed_records: AtomicU64,
    /// Wall-clock ms of the last completed fsync, for `flush.ms`.
    pub(crate) last_flush_ms: AtomicI64,
}

impl Partition {
    pub(crate) fn new(topic: TopicName, index: i32, dir: PathBuf, log: PartitionLog, policy: FlushPolicy, now_ms: i64) -> Arc<Partition> {
        let end = log.log_end_offset();
        Arc::new(Partition {
            topic,
            index,
            dir,
            log: RwLock::new(log),
            leader_epoch: AtomicI32::new(0),
            leader: AtomicBool::new(true),
            replicas: Mutex::new(ReplicaSet::default()),
            replicated: AtomicBool::new(false),
            log_end: watch::channel(end).0,
            // Everything recovered at start-up passed its CRC and is as durable as the disk made it.
            high_watermark: watch::channel(end).0,
            flushed: watch::channel(end).0,
            flush_running: AtomicBool::new(false),
            flush_failed: Mutex::new(None),
            policy: RwLock::new(policy),
            unflushed_records: AtomicU64::new(0),
            last_flush_ms: AtomicI64::new(now_ms),
        })
    }

    pub(crate) fn leader_epoch(&self) -> i32 {
        self.leader_epoch.load(Ordering::Acquire)
    }

    pub(crate) fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Acquire)
    }

    /// What the controller says about this partition's leadership. Returns whether it changed.
    /// Flips under the log's write lock: every append checks the role it was made for under that
    /// lock, so no write lands in a role the partition no longer has.
    pub(crate) fn set_leadership(&self, leader: bool, epoch: i32) -> bool {
        let log = self.log.write();
        let was = (self.leader.swap(leader, Ordering::AcqRel), self.leader_epoch.swap(epoch, Ordering::AcqRel));
        drop(log);
        let changed = was != (leader, epoch);
        if changed {
            // acks=all writes waiting for the ISR (`wait_replicated`) look at the role when the
            // high watermark's watch wakes them: wake them now, so that they answer
            // NOT_LEADER_OR_FOLLOWER at once (the client goes to the new leader) instead of when
            // their timeout ends or this broker's connections close.
            self.high_watermark.send_modify(|_| {});
        }
        changed
    }

    /// The role check every write makes under the log's write lock.
    fn check_leader(&self, epoch: Option<i32>) -> Result<(), StorageError> {
        if self.is_leader() && epoch.is_none_or(|e| e == self.leader_epoch()) {
            return Ok(());
        }
        Err(StorageError::NotLeader(format!(
            "this broker no longer leads partition {}-{} (leader epoch now {})",
            self.topic.as_str(),
            self.index,
            self.leader_epoch()
        )))
    }

    /// A partition of a topic the quorum holds starts with its high watermark at the log start:
    /// what the log holds beyond that may be a tail no other replica has (a leader that died before
    /// its followers fetched), and only the ISR can say what is committed. A leader raises it as its
    /// ISR confirms; a follower learns it from the leader.
    pub(crate) fn forget_high_watermark(&self) {
        let start = self.log.read().log_start_offset();
        self.high_watermark.send_replace(start);
    }

    /// What the controller says about the partition: its leadership, replicas and ISR. Returns
    /// whether the leadership changed. A new leader term starts every follower as caught up now
    /// (Kafka does the same): the ISR is the controller's, and lag is measured from here.
    pub(crate) fn apply_replica_state(&self, node: i32, state: &sluice_cluster::PartitionState, topic_id: u128) -> bool {
        let leader = state.leader == node;
        let new_term = (self.is_leader(), self.leader_epoch()) != (leader, state.leader_epoch);
        let mut replicas = self.replicas.lock();
        replicas.update(node, state, topic_id, new_term, crate::now_ms(), self.log_end_offset());
        // Before the flip: a write that sees this broker lead must also see whether it waits for
        // followers.
        self.replicated.store(leader && state.isr.iter().any(|&r| r != node), Ordering::Release);
        drop(replicas);
        let changed = self.set_leadership(leader, state.leader_epoch);
        if leader {
            // A smaller ISR may let the high watermark move; either way, writers waiting for
            // acks=all look again (they fail if this broker no longer leads).
            self.advance_high_watermark();
        }
        self.high_watermark.send_modify(|_| {});
        changed
    }

    /// How many replicas are in sync, this one included (1 on a single node).
    pub(crate) fn isr_len(&self) -> usize {
        self.replicas.lock().isr.len().max(1)
    }

    /// Whether acks=all writes wait for other replicas.
    pub(crate) fn is_replicated(&self) -> bool {
        self.replicated.load(Ordering::Acquire)
    }

    pub(crate) fn replica_set(&self) -> parking_lot::MutexGuard<'_, ReplicaSet> {
        self.replicas.lock()
    }

    /// The exclusive end of the log. Every write publishes the new end before it releases the log's
    /// lock, so a read of the log (which takes the lock) never returns records beyond what this
    /// says. A follower's next fetch offset is what it read: were the end published after the lock
    /// went, a follower could ask from an offset this still put beyond the end and be refused with
    /// OFFSET_OUT_OF_RANGE — it then paused and re-checked its epochs, and every acks=all write
    /// waited for it (the 500 ms stalls of RF=3 produce in BENCHMARKS.md).
    pub(crate) fn log_end_offset(&self) -> i64 {
        *self.log_end.borrow()
    }

    pub(crate) fn watch_log_end(&self) -> watch::Receiver<i64> {
        self.log_end.subscribe()
    }

    /// What this replica counts towards the high watermark: all it holds under the page-cache
    /// policy, what is on stable storage under fsync-before-ack.
    fn local_visible_end(&self) -> i64 {
        if self.policy() == FlushPolicy::BeforeAck { *self.flushed.borrow() } else { self.log_end_offset() }
    }

    /// Moves the leader's high watermark to what every ISR member (this one included) holds.
    /// Nothing on a follower: it learns its high watermark from the leader.
    pub(crate) fn advance_high_watermark(&self) {
        if !self.is_leader() {
            return;
        }
        let local = self.local_visible_end();
        let target = if self.is_replicated() { self.replicas.lock().isr_floor(local) } else { local };
        self.high_watermark.send_if_modified(|hw| raise(hw, target));
    }

    /// A follower's high watermark: the leader's, as far as this copy reaches. Nothing once this
    /// broker leads the partition (the ISR sets it then).
    pub(crate) fn set_follower_high_watermark(&self, leader_high_watermark: i64) {
        let target = leader_high_watermark.min(self.log_end_offset());
        self.high_watermark.send_if_modified(|hw| !self.is_leader() && raise(hw, target));
    }

    /// A follower's copy of the leader's batches, in leader epoch `epoch`: refused once this broker
    /// leads the partition or follows it in another epoch, and unless the batches continue the log
    /// exactly where it ends (a stale reply after a truncation would leave a hole). Blocking file I/O.
    pub(crate) fn append_as_follower(&self, batches: &[u8], epoch: i32, now_ms: i64) -> Result<AppendResult, StorageError> {
        let mut log = self.log.write();
        if self.is_leader() || self.leader_epoch() != epoch {
            return Err(StorageError::NotLeader(format!(
                "partition {}-{} is no longer a follower in leader epoch {epoch}",
                self.topic.as_str(),
                self.index
            )));
        }
        let end = log.log_end_offset();
        if let Some(first) = sluice_storage::BatchHeader::parse(batches).filter(|h| h.base_offset != end) {
            return Err(StorageError::InvalidRecord(format!(
                "the leader's batches start at offset {}, not at this copy's log end {end}",
                first.base_offset
            )));
        }
        let result = log.append_preserved(batches, now_ms)?;
        // Published before the lock goes: see `log_end_offset`.
        let end = result.last_offset + 1;
        self.log_end.send_if_modified(|e| raise(e, end));
        drop(log);
        self.unflushed_records.fetch_add(result.record_count, Ordering::Relaxed);
        Ok(result)
    }

    /// The latest leader epoch in the log and, for OffsetForLeaderEpoch, where an epoch's records
    /// end here (KIP-101): see `PartitionLog::end_offset_for_epoch`.
    pub(crate) fn latest_epoch(&self) -> Option<i32> {
        self.log.read().latest_epoch()
    }

    pub(crate) fn end_offset_for_epoch(&self, epoch: i32) -> Option<(i32, i64)> {
        self.log.read().end_offset_for_epoch(epoch)
    }

    /// Cuts a follower's log at `offset` (a divergent tail after a leader change). Never on a
    /// leader. Blocking file I/O.
    pub(crate) fn truncate_to(&self, offset: i64) -> Result<i64, StorageError> {
        let mut log = self.log.write();
        if self.is_leader() {
            return Err(StorageError::NotLeader(format!("partition {}-{} leads: its log is not cut", self.topic.as_str(), self.index)));
        }
        let end = log.truncate_to(offset, crate::now_ms())?;
        let start = log.log_start_offset();
        self.log_end.send_replace(end);
        drop(log);
        // The watermarks follow the log down (they only move up otherwise). A follower's high
        // watermark is never above what the leader committed, so this cuts nothing a consumer saw.
        self.high_watermark.send_modify(|hw| *hw = (*hw).min(end).max(start));
        self.flushed.send_modify(|f| *f = (*f).min(end));
        Ok(end)
    }

    /// Empties a follower's log and restarts it at `offset`, the leader's log start (its own log ends
    /// before it: retention at the leader removed what it misses). Never on a leader. Blocking file I/O.
    pub(crate) fn restart_at(&self, offset: i64) -> Result<i64, StorageError> {
        let mut log = self.log.write();
        if self.is_leader() {
            return Err(StorageError::NotLeader(format!("partition {}-{} leads: its log is not emptied", self.topic.as_str(), self.index)));
        }
        let end = log.restart_at(offset, crate::now_ms())?;
        self.log_end.send_replace(end);
        drop(log);
        self.high_watermark.send_replace(end);
        self.flushed.send_replace(end);
        Ok(end)
    }

    /// Reads for a follower's fetch: up to the log end, not the high watermark (a follower copies
    /// what consumers may not see yet). Blocking file I/O.
    pub(crate) fn read_for_follower(&self, offset: i64, max_bytes: usize, min_one: bool) -> Result<(SlicedRead, i64), StorageError> {
        let hw = self.high_watermark();
        let log = self.log.read();
        let end = log.log_end_offset();
        Ok((log.read_slices(offset, max_bytes, end, min_one)?, hw))
    }

    /// Reads whole batches from `offset` up to the log end (a coordinator replaying its log on the
    /// leader). Blocking file I/O.
    pub(crate) fn read_to_end(&self, offset: i64, max_bytes: usize) -> Result<sluice_storage::ReadResult, StorageError> {
        let log = self.log.read();
        let end = log.log_end_offset();
        log.read(offset, max_bytes, end, true)
    }

    pub(crate) fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    pub(crate) fn high_watermark(&self) -> i64 {
        *self.high_watermark.borrow()
    }

    pub(crate) fn watch_high_watermark(&self) -> watch::Receiver<i64> {
        self.high_watermark.subscribe()
    }

    pub(crate) fn policy(&self) -> FlushPolicy {
        *self.policy.read()
    }

    /// Applies a topic's new settings to its log and flush policy.
    pub(crate) fn reconfigure(&self, config: LogConfig, policy: FlushPolicy) {
        self.log.write().set_config(config);
        self.set_policy(policy);
    }

    fn set_policy(&self, policy: FlushPolicy) {
        *self.policy.write() = policy;
        if policy != FlushPolicy::BeforeAck {
            // Anything flushed-but-not-visible becomes visible: the page-cache policy shows the log end.
            self.advance_high_watermark();
        }
    }

    /// Appends producer (or replica) batches. Blocking file I/O: call from a blocking context.
    pub(crate) fn append(&self, batches: &mut [u8], mode: AppendMode, now_ms: i64) -> Result<AppendResult, StorageError> {
        let mut log = self.log.write();
        if let AppendMode::AssignOffsets { leader_epoch } = mode {
            self.check_leader(Some(leader_epoch))?;
        }
        let result = log.append(batches, mode, now_ms)?;
        if !result.duplicate {
            // Published before the lock goes: see `log_end_offset`.
            let end = result.last_offset + 1;
            self.log_end.send_if_modified(|e| raise(e, end));
        }
        drop(log);
        if !result.duplicate {
            self.unflushed_records.fetch_add(result.record_count, Ordering::Relaxed);
        }
        if self.policy() != FlushPolicy::BeforeAck {
            self.advance_high_watermark();
        }
        Ok(result)
    }

    /// Whether an append of `bytes` bytes now is a page-cache copy: no segment roll (which fsyncs),
    /// and no one holding the log (a roll, a flush, retention) for as long as that takes.
    pub(crate) fn append_is_quick(&self, bytes: usize, now_ms: i64) -> bool {
        self.log.try_read().is_some_and(|log| !log.append_may_roll(bytes as u64, now_ms))
    }

    /// Whether a read now is a page-cache lookup, not a wait for a writer holding the log.
    pub(crate) fn read_is_quick(&self) -> bool {
        !self.log.is_locked_exclusive()
    }

    /// Appends a transaction marker (see `PartitionLog::append_marker`) and makes it visible like any
    /// append: at once under the page-cache policy; after the next group-committed fsync, which this
    /// starts, under fsync-before-ack. Blocking file I/O.
    pub(crate) fn append_marker(self: &Arc<Self>, marker: &TxnMarker, now_ms: i64) -> Result<AppendResult, StorageError> {
        let mut log = self.log.write();
        self.check_leader(None)?;
        let result = log.append_marker(marker, self.leader_epoch(), now_ms)?;
        // Published before the lock goes: see `log_end_offset`.
        let end = result.last_offset + 1;
        self.log_end.send_if_modified(|e| raise(e, end));
        drop(log);
        self.unflushed_records.fetch_add(1, Ordering::Relaxed);
        if self.policy() == FlushPolicy::BeforeAck {
            if tokio::runtime::Handle::try_current().is_ok() {
                self.start_flush();
            } else {
                self.flush_blocking()?;
            }
        } else {
            self.advance_high_watermark();
        }
        Ok(result)
    }

    /// Appends a transaction marker the way an acks=all record is written: refused while a
    /// replicated partition's ISR is below `min_insync` (Kafka writes markers with acks=all too), then
    /// appended. Returns the offset after the marker and the leader epoch it was written in, for
    /// [`Partition::wait_marker`]. Blocking file I/O.
    pub(crate) fn write_marker(self: &Arc<Self>, marker: &TxnMarker, min_insync: usize, now_ms: i64) -> Result<(i64, i32), BrokerError> {
        if self.is_replicated() && self.isr_len() < min_insync {
            return Err(BrokerError::NotEnoughReplicas { isr: self.isr_len(), min_insync });
        }
        let epoch = self.leader_epoch();
        let appended = self.append_marker(marker, now_ms)?;
        Ok((appended.last_offset + 1, epoch))
    }

    /// Waits until a marker [`Partition::write_marker`] wrote is durable: fsynced under
    /// fsync-before-ack, and on every in-sync replica (at least `min_insync`) of a replicated partition.
    pub(crate) async fn wait_marker(self: &Arc<Self>, end: i64, epoch: i32, min_insync: usize) -> Result<(), BrokerError> {
        self.wait_durable_within(end, DURABILITY_WAIT_DEFAULT).await?;
        if self.is_replicated() {
            self.wait_replicated(end, epoch, min_insync, DURABILITY_WAIT_DEFAULT).await?;
        }
        Ok(())
    }

    /// The last stable offset: below it every transaction is decided. Never above the high watermark.
    pub(crate) fn last_stable_offset(&self) -> i64 {
        let hw = self.high_watermark();
        self.log.read().last_stable_offset().min(hw)
    }

    /// Reads for a fetch at either isolation level: below the high watermark (read_uncommitted) or
    /// the last stable offset (read_committed). Returns the read, the bound used, and for
    /// read_committed the aborted transactions overlapping what was returned. Blocking file I/O.
    pub(crate) fn read_isolated(
        &self,
        offset: i64,
        max_bytes: usize,
        min_one: bool,
        read_committed: bool,
    ) -> Result<IsolatedRead<ReadResult>, StorageError> {
        self.isolated(offset, read_committed, |log, upper| log.read(offset, max_bytes, upper, min_one), |read| read.next_offset)
    }

    /// [`read_isolated`](Self::read_isolated) as file slices, for a Fetch sent with `sendfile`.
    pub(crate) fn read_isolated_slices(
        &self,
        offset: i64,
        max_bytes: usize,
        min_one: bool,
        read_committed: bool,
    ) -> Result<IsolatedRead<SlicedRead>, StorageError> {
        self.isolated(offset, read_committed, |log, upper| log.read_slices(offset, max_bytes, upper, min_one), |read| read.next_offset)
    }

    /// One isolated read: `read` gets the log and the bound; `next_offset` says where what it
    /// returned ends.
    fn isolated<R>(
        &self,
        offset: i64,
        read_committed: bool,
        read: impl FnOnce(&PartitionLog, i64) -> Result<R, StorageError>,
        next_offset: impl FnOnce(&R) -> i64,
    ) -> Result<IsolatedRead<R>, StorageError> {
        let hw = self.high_watermark();
        let log = self.log.read();
        let last_stable = log.last_stable_offset().min(hw);
        let upper = if read_committed { last_stable } else { hw };
        let read = read(&log, upper)?;
        let next_offset = next_offset(&read);
        let aborted = if read_committed && next_offset > offset {
            Some(log.aborted_transactions(offset, next_offset))
        } else if read_committed {
            Some(Vec::new())
        } else {
            None
        };
        Ok(IsolatedRead { read, high_watermark: hw, last_stable_offset: last_stable, aborted })
    }

    /// Waits until everything below `offset` is on stable storage, starting an fsync if none is
    /// running. Concurrent callers share fsyncs: while one runs, later appends accumulate and the next
    /// fsync covers all of them (group commit).
    pub(crate) async fn wait_durable(self: &Arc<Self>, offset: i64) -> Result<(), BrokerError> {
        let mut flushed = self.flushed.subscribe();
        loop {
            if let Some(reason) = self.flush_failed.lock().clone() {
                return Err(BrokerError::DurabilityLost { partition: format!("{}-{}", self.topic.as_str(), self.index), reason });
            }
            if *flushed.borrow_and_update() >= offset {
                return Ok(());
            }
            self.start_flush();
            if flushed.changed().await.is_err() {
                return Err(BrokerError::ShuttingDown);
            }
        }
    }

    /// The one append-then-wait-durable path for every writer (produce requests, the in-process
    /// producer): under fsync-before-ack, waits up to `timeout` for everything below `offset` to be on
    /// stable storage; under the page-cache policy, returns at once.
    pub(crate) async fn wait_durable_within(self: &Arc<Self>, offset: i64, timeout: Duration) -> Result<(), BrokerError> {
        if self.policy() != FlushPolicy::BeforeAck {
            return Ok(());
        }
        match tokio::time::timeout(timeout, self.wait_durable(offset)).await {
            Ok(result) => result,
            Err(_) => Err(BrokerError::Timeout(format!("fsync did not complete within {} ms", timeout.as_millis()))),
        }
    }

    /// acks=all on a replicated partition: waits up to `timeout` until the high watermark passes
    /// `offset` (every ISR member holds it). Fails when this broker stops leading the partition
    /// meanwhile (the client retries with the new leader; its idempotent sequence numbers keep the
    /// retry from writing twice) and when the ISR shrank below `min_insync` before the write was
    /// replicated (Kafka's NOT_ENOUGH_REPLICAS_AFTER_APPEND).
    /// `epoch`: the leader epoch the write was appended in; a later term (even this broker's own,
    /// after leading elsewhere in between) may have truncated it.
    pub(crate) async fn wait_replicated(
        self: &Arc<Self>,
        offset: i64,
        epoch: i32,
        min_insync: usize,
        timeout: Duration,
    ) -> Result<(), BrokerError> {
        let mut hw = self.high_watermark.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if !self.is_leader() || self.leader_epoch() != epoch {
                return Err(BrokerError::NotLeader { topic: self.topic.as_str().to_string(), partition: self.index });
            }
            if *hw.borrow_and_update() >= offset {
                let isr = self.isr_len();
                if isr < min_insync {
                    return Err(BrokerError::NotEnoughReplicasAfterAppend { isr, min_insync });
                }
                return Ok(());
            }
            match tokio::time::timeout_at(deadline, hw.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(BrokerError::ShuttingDown),
                Err(_) => {
                    return Err(BrokerError::Timeout(format!(
                        "the in-sync replicas did not all confirm the write within {} ms",
                        timeout.as_millis()
                    )));
                }
            }
        }
    }

    /// [`Self::wait_durable_within`] with [`DURABILITY_WAIT_DEFAULT`], for blocking callers (threads
    /// of in-broker runtimes). Without a tokio runtime (tests) it fsyncs itself.
    /// On a replicated partition it also waits for the ISR (the in-process writers' acks=all).
    pub(crate) fn wait_durable_blocking(self: &Arc<Self>, offset: i64) -> Result<(), BrokerError> {
        let replicated = self.is_replicated();
        let epoch = self.leader_epoch();
        if self.policy() != FlushPolicy::BeforeAck && !replicated {
            return Ok(());
        }
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => tokio::task::block_in_place(|| {
                handle.block_on(async {
                    self.wait_durable_within(offset, DURABILITY_WAIT_DEFAULT).await?;
                    if replicated { self.wait_replicated(offset, epoch, 1, DURABILITY_WAIT_DEFAULT).await } else { Ok(()) }
                })
            }),
            Err(_) if self.policy() == FlushPolicy::BeforeAck => self.flush_blocking().map_err(BrokerError::Storage),
            Err(_) => Ok(()),
        }
    }

    /// Starts the background flush loop unless one is running.
    pub(crate) fn start_flush(self: &Arc<Self>) {
        if !self.flush_running.swap(true, Ordering::AcqRel) {
            let partition = Arc::clone(self);
            tokio::spawn(async move { partition.flush_loop().await });
        }
    }

    async fn flush_loop(self: Arc<Self>) {
        loop {
            let Some((file, end)) = self.log.read().sync_target() else {
                // An offline partition has nothing to sync (and takes no appends to wait on).
                self.flush_running.store(false, Ordering::Release);
                return;
            };
            if end <= *self.flushed.borrow() {
                self.flush_running.store(false, Ordering::Release);
                // An append may have landed between reading the target and clearing the flag; its
                // writer saw the flag set and is waiting on us, so look once more before leaving.
                let end_now = self.log.read().log_end_offset();
                if end_now <= *self.flushed.borrow() || self.flush_running.swap(true, Ordering::AcqRel) {
                    return;
                }
                continue;
            }
            let pending = self.unflushed_records.swap(0, Ordering::Relaxed);
            match tokio::task::spawn_blocking(move || file.sync_data()).await {
                Ok(Ok(())) => {
                    self.log.write().mark_flushed(end);
                    self.last_flush_ms.store(crate::now_ms(), Ordering::Relaxed);
                    self.flushed.send_if_modified(|f| raise(f, end));
                    if self.policy() == FlushPolicy::BeforeAck {
                        self.advance_high_watermark();
                    }
                }
                Ok(Err(error)) => {
                    // After a failed fsync the kernel may have dropped the dirty pages: nothing
                    // written since the last good fsync can be promised. Stop acknowledging.
                    tracing::error!(topic = self.topic.as_str(), partition = self.index, %error, "fsync failed; partition stops acknowledging writes");
                    self.unflushed_records.fetch_add(pending, Ordering::Relaxed);
                    *self.flush_failed.lock() = Some(format!("fsync of {} failed: {error}", self.dir.display()));
                    self.flushed.send_modify(|_| {});
                    self.flush_running.store(false, Ordering::Release);
                    return;
                }
                Err(join_error) => {
                    tracing::error!(%join_error, "fsync task failed");
                    self.flush_running.store(false, Ordering::Release);
                    return;
                }
            }
        }
    }

    /// Makes everything appended visible and durable now (shutdown, tests).
    pub(crate) fn flush_blocking(&self) -> Result<(), StorageError> {
        let mut log = self.log.write();
        log.flush()?;
        let end = log.log_end_offset();
        drop(log);
        self.flushed.send_if_modified(|f| raise(f, end));
        self.advance_high_watermark();
        Ok(())
    }

    /// After DeleteRecords or truncation the visible range may start above old fetch positions;
    /// nothing to do for the high watermark, which only moves forward.
    pub(crate) fn log_start_offset(&self) -> i64 {
        self.log.read().log_start_offset()
    }

    /// The largest batch the partition accepts (`max.message.bytes`).
    pub(crate) fn max_batch_bytes(&self) -> u32 {
        self.log.read().config().max_batch_bytes
    }

    /// The first offset with a timestamp at or after `timestamp_ms`, with that timestamp. Blocking
    /// file I/O.
    pub(crate) fn offset_for_timestamp(&self, timestamp_ms: i64) -> Result<Option<(i64, i64)>, StorageError> {
        self.log.read().offset_for_timestamp(timestamp_ms)
    }

    /// The largest timestamp in the log and its offset (ListOffsets' MAX_TIMESTAMP).
    pub(crate) fn max_timestamp(&self) -> Option<(i64, i64)> {
        self.log.read().max_timestamp()
    }

    /// DeleteRecords: moves the log start to `offset`. Blocking file I/O.
    pub(crate) fn delete_records_before(&self, offset: i64) -> Result<i64, StorageError> {
        self.log.write().delete_records_before(offset)
    }

    /// Retention by time and size (and idempotent-producer expiry). Blocking file I/O.
    pub(crate) fn enforce_retention(&self, now_ms: i64) -> Result<RetentionStats, StorageError> {
        self.log.write().enforce_retention(now_ms)
    }

    /// Transactions with records here and no marker yet: (producer id, the epoch the partition last
    /// saw from it).
    /// See `PartitionLog::fence_producers`. Blocking file I/O.
    pub(crate) fn fence_producers(&self) -> Result<i64, StorageError> {
        self.log.write().fence_producers()
    }

    /// (producer id, first offset) of every transaction open in this partition.
    pub(crate) fn open_transaction_starts(&self) -> Vec<(i64, i64)> {
        self.log.read().ongoing_transactions()
    }

    /// The producer epoch this partition last saw from `producer_id` (0 if it does not remember it).
    pub(crate) fn open_transaction_epoch(&self, producer_id: i64) -> i16 {
        self.log.read().producer_epoch(producer_id).unwrap_or(0)
    }

    pub(crate) fn open_transactions(&self) -> Vec<(i64, i16)> {
        let log = self.log.read();
        log.ongoing_transactions().into_iter().map(|(producer, _)| (producer, log.producer_epoch(producer).unwrap_or(0))).collect()
    }

    /// Whether the partition is offline (it could not be opened, or a write left it in doubt), and
    /// how many of its segments recovery quarantined.
    pub(crate) fn health(&self) -> (bool, usize) {
        let log = self.log.read();
        (log.offline_reason().is_some(), log.quarantined_segment_count())
    }

    /// Sizes and offsets for the admin API and metrics, read under one lock.
    pub(crate) fn stats(&self) -> PartitionStats {
        let log = self.log.read();
        PartitionStats {
            log_start_offset: log.log_start_offset(),
            log_end_offset: log.log_end_offset(),
            size_bytes: log.size_bytes(),
            segments: log.segment_count(),
        }
    }

    /// Clean shutdown of the log (flush, snapshot, clean marker). Blocking file I/O.
    pub(crate) fn close(&self) -> Result<(), StorageError> {
        self.log.write().close()
    }

    /// Removes the partition's directory (its topic was deleted). Blocking file I/O.
    pub(crate) fn delete(&self) -> Result<(), StorageError> {
        self.log.write().delete()
    }
}

/// What `Partition::stats` returns.
pub(crate) struct PartitionStats {
    pub(crate) log_start_offset: i64,
    pub(crate) log_end_offset: i64,
    pub(crate) size_bytes: u64,
    pub(crate) segments: usize,
}

/// What `Partition::read_isolated` returns.
pub(crate) struct IsolatedRead<R> {
    pub(crate) read: R,
    pub(crate) high_watermark: i64,
    pub(crate) last_stable_offset: i64,
    /// For read_committed: aborted transactions overlapping the returned records.
    pub(crate) aborted: Option<Vec<AbortedTxn>>,
}

fn raise(value: &mut i64, to: i64) -> bool {
    if to > *value {
        *value = to;
        true
    } else {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_kafka_rules() {
        assert!(TopicName::parse("orders.v1_EU-2").is_ok());
        assert!(TopicName::parse("").is_err());
        assert!(TopicName::parse("..").is_err());
        assert!(TopicName::parse("a/b").is_err());
        assert!(TopicName::parse("spaces are bad").is_err());
        assert!(TopicName::parse(&"x".repeat(250)).is_err());
        assert!(TopicName::parse("__consumer_offsets").is_err());
    }
}
