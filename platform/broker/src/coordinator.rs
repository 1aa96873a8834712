//! The group and transaction coordinators as one unit, and where a cluster's live.
//!
//! Every broker has **local** coordinators over its own keyed logs (`__consumer_offsets-0`,
//! `__transaction_state-0` in the data directory). A single node serves clients and plugins with
//! them. In a cluster they serve this broker's plugins only (whose group and transactional ids,
//! `__sluice…`, clients cannot use), and the **clients'** coordinators live on the leader of the
//! replicated partition `__sluice_coordinator-0`, Kafka's model for `__consumer_offsets` and
//! `__transaction_state`:
//!
//! - the broker that becomes its leader loads them (replays the partition; clients hear
//!   COORDINATOR_LOAD_IN_PROGRESS meanwhile), finishes transactions left in a Prepare state, and
//!   serves; FindCoordinator on any broker names that leader;
//! - every change is an acks=all write in the leader epoch they were loaded in, so a change a client
//!   was told about is on every in-sync replica and the next leader replays it;
//! - a broker that stops leading it unloads them: waiting joins and syncs answer NOT_COORDINATOR,
//!   and so does everything after (the client finds the new coordinator and retries).
//!
//! The log holds the committed offsets, the transactions and each group's settled membership
//! (`group_records`), so after a move members carry on in their generation, and committed offsets
//! and transactions with them. It is compacted by snapshots ([`Coordinators::compact`]).

use std::sync::Arc;

use kafka_protocol::ResponseError;
use parking_lot::Mutex;

use crate::config::{BrokerConfig, TopicConfig};
use crate::error::BrokerError;
use crate::group_records::GroupStore;
use crate::groups::GroupCoordinator;
use crate::internal_log::{BATCH_BYTES_MAX, SharedLog};
use crate::metastore::ProducerIds;
use crate::offsets::OffsetStore;
use crate::topic::{Partition, Topics};
use crate::transactions::{RemoteMarkers, TransactionCoordinator, TxnDeps, TxnSettings};

/// The shared log is compacted once it exceeds this size and is several times its live data.
const COMPACT_THRESHOLD_BYTES: u64 = 64 * 1024 * 1024;
const COMPACT_GARBAGE_RATIO: u64 = 4;

/// The coordinators' replication factor in a cluster (Kafka's `offsets.topic.replication.factor`
/// default), or the number of voters when there are fewer.
pub(crate) const COORDINATOR_REPLICATION_FACTOR: usize = 3;

/// The settings of `__sluice_coordinator`: kept forever (compaction is the coordinators' own),
/// batches as large as one change of the stores, and writes refused unless one replica besides the
/// leader has them.
pub(crate) fn coordinator_topic_config(replicas: usize) -> TopicConfig {
    let mut config = TopicConfig::default();
    let min_insync = replicas.saturating_sub(1).max(1);
    for (name, value) in [
        ("retention.ms", "-1".to_string()),
        ("retention.bytes", "-1".to_string()),
        ("max.message.bytes", BATCH_BYTES_MAX.to_string()),
        ("min.insync.replicas", min_insync.to_string()),
    ] {
        config.overrides.insert(name.to_string(), value);
    }
    config
}

/// What the coordinators need from the broker.
pub(crate) struct CoordinatorDeps<'a> {
    pub(crate) config: &'a BrokerConfig,
    pub(crate) topics: &'a Arc<Topics>,
    pub(crate) producer_ids: &'a Arc<ProducerIds>,
}

impl CoordinatorDeps<'_> {
    fn settings(&self) -> TxnSettings {
        TxnSettings {
            max_timeout_ms: self.config.transaction_max_timeout_ms(),
            fsync: self.config.flush_before_ack(),
            id_expiration_ms: self.config.transactional_id_expiration_ms(),
        }
    }

    fn txn_deps(&self, offsets: &Arc<OffsetStore>, groups: &Arc<GroupCoordinator>) -> TxnDeps {
        TxnDeps {
            topics: Arc::clone(self.topics),
            producer_ids: Arc::clone(self.producer_ids),
            offsets: Arc::clone(offsets),
            groups: Arc::clone(groups),
            config: Arc::new(self.config.clone()),
        }
    }
}

/// One set of coordinators: the committed offsets, the groups over them, the transactions over both.
pub(crate) struct Coordinators {
    pub(crate) offsets: Arc<OffsetStore>,
    pub(crate) groups: Arc<GroupCoordinator>,
    pub(crate) transactions: TransactionCoordinator,
    /// The replicated log a cluster's coordinators were loaded from (`None` for local ones).
    shared: Option<Arc<SharedLog>>,
    /// The group session sweeper of loaded coordinators, stopped when they unload.
    sweeper: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Coordinators {
    /// This broker's own coordinators, from its data directory. Call `transactions.recover()` once
    /// every partition is open. Blocking file I/O.
    pub(crate) fn open_local(deps: &CoordinatorDeps<'_>, data_dir: &std::path::Path, now: i64) -> Result<Coordinators, BrokerError> {
        let offsets = Arc::new(OffsetStore::open(data_dir, now)?);
        let groups = Arc::new(GroupCoordinator::new(deps.config, Arc::clone(&offsets), GroupStore::open(data_dir, now)?));
        let transactions = TransactionCoordinator::open(data_dir, now, deps.txn_deps(&offsets, &groups), deps.settings())?;
        Ok(Coordinators { offsets, groups, transactions, shared: None, sweeper: Mutex::new(None) })
    }

    /// A cluster's coordinators, loaded from `__sluice_coordinator-0` on its leader: replays both
    /// stores. Transactions left in a Prepare state are finished once they serve
    /// (`transactions.finish_prepared()`), as Kafka's coordinator sends markers after loading. Blocking.
    /// `import`: this broker's local coordinators when it was the coordinator before coordinators
    /// were replicated (the lowest voter); their clients' entries are copied into a new log first.
    pub(crate) fn load(
        deps: &CoordinatorDeps<'_>,
        log: Arc<SharedLog>,
        remote: Option<Arc<dyn RemoteMarkers>>,
        import: Option<&Coordinators>,
    ) -> Result<Coordinators, BrokerError> {
        if let Some(local) = import
            && log.partition().log_end_offset() == 0
        {
            // A transaction changing meanwhile: the load is tried again a second later (nothing was
            // written yet, so the log is still new then).
            let transactions =
                local.transactions.copy_clients_to(&log)?.ok_or(BrokerError::Protocol(ResponseError::CoordinatorLoadInProgress))?;
            let offsets = local.offsets.copy_clients_to(&log)?;
            if offsets + transactions > 0 {
                tracing::info!(offsets, transactions, "copied the clients' offsets and transactions from this broker's own logs");
            }
        }
        let offsets = Arc::new(OffsetStore::open_shared(Arc::clone(&log))?);
        let groups = Arc::new(GroupCoordinator::new(deps.config, Arc::clone(&offsets), GroupStore::open_shared(Arc::clone(&log))?));
        let transactions = TransactionCoordinator::open_shared(Arc::clone(&log), deps.txn_deps(&offsets, &groups), deps.settings())?;
        if let Some(remote) = remote {
            transactions.use_remote_markers(remote);
        }
        Ok(Coordinators { offsets, groups, transactions, shared: Some(log), sweeper: Mutex::new(None) })
    }

    /// The leader epoch of the shared log these were loaded in (`None` for local coordinators).
    pub(crate) fn epoch(&self) -> Option<i32> {
        self.shared.as_ref().map(|log| log.epoch())
    }

    /// Whether these coordinators may serve: local ones always, loaded ones while their broker leads
    /// the shared log in the epoch they were loaded in.
    pub(crate) fn is_current(&self) -> bool {
        self.shared.as_ref().is_none_or(|log| log.is_current())
    }

    /// Starts the group session sweeper (on the runtime the broker serves on).
    pub(crate) fn start(&self, runtime: &tokio::runtime::Handle) {
        let task = runtime.spawn(Arc::clone(&self.groups).run_session_sweeper());
        if let Some(previous) = self.sweeper.lock().replace(task) {
            previous.abort();
        }
    }

    /// Stops serving: see the module docs.
    pub(crate) fn unload(&self) {
        if let Some(task) = self.sweeper.lock().take() {
            task.abort();
        }
        self.groups.unload();
    }

    /// Compacts the shared log once it is large and mostly garbage: each store appends a snapshot of
    /// its live entries, then the log drops everything before the oldest snapshot (no store needs a
    /// record from before its own snapshot). Any failure leaves the log as it was, to be retried on
    /// a later tick. Blocking.
    pub(crate) fn compact(&self) {
        let Some(log) = &self.shared else { return };
        let size = log.size_bytes();
        let live = self.offsets.len() as u64 * crate::offsets::ENTRY_BYTES_ESTIMATE
            + self.transactions.len() as u64 * crate::transactions::ENTRY_BYTES_ESTIMATE
            + self.groups.recorded_bytes();
        if size <= COMPACT_THRESHOLD_BYTES || size <= COMPACT_GARBAGE_RATIO * live || !log.is_current() {
            return;
        }
        let started = std::time::Instant::now();
        let offsets = match self.offsets.snapshot() {
            Ok(start) => start,
            Err(error) => return tracing::warn!(%error, "could not snapshot the committed offsets; the coordinator log is compacted later"),
        };
        let transactions = match self.transactions.snapshot() {
            Ok(Some(start)) => start,
            Ok(None) => return tracing::debug!("a transaction was changing; the coordinator log is compacted later"),
            Err(error) => return tracing::warn!(%error, "could not snapshot the transactions; the coordinator log is compacted later"),
        };
        let groups = match self.groups.snapshot() {
            Ok(start) => start,
            Err(error) => return tracing::warn!(%error, "could not snapshot the groups; the coordinator log is compacted later"),
        };
        match log.truncate_before(offsets.min(transactions).min(groups)) {
            Ok(start) => tracing::info!(
                size_before = size,
                size_after = log.size_bytes(),
                log_start = start,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "compacted the coordinator log"
            ),
            Err(error) => tracing::warn!(%error, "could not drop the coordinator log's compacted prefix"),
        }
    }

    pub(crate) fn close(&self) {
        self.offsets.close();
        self.groups.close();
        self.transactions.close();
    }
}

/// Where a cluster's client coordinators are, seen from one broker.
pub(crate) enum Hosting {
    /// Another broker leads `__sluice_coordinator-0` (or nobody does yet).
    Elsewhere,
    /// This broker leads it in `epoch` and is replaying it.
    Loading {
        epoch: i32,
    },
    Loaded(Arc<Coordinators>),
}

impl Hosting {
    /// The coordinators clients may use here, or why not.
    pub(crate) fn serving(&self) -> Result<Arc<Coordinators>, ResponseError> {
        match self {
            Hosting::Loaded(coordinators) if coordinators.is_current() => Ok(Arc::clone(coordinators)),
            Hosting::Loading { .. } => Err(ResponseError::CoordinatorLoadInProgress),
            Hosting::Loaded(_) | Hosting::Elsewhere => Err(ResponseError::NotCoordinator),
        }
    }

    /// What to do now that this broker leads the shared log in `leading` (or not at all): `true` to
    /// start a load in that epoch. Unloads what no longer matches.
    pub(crate) fn follow(&mut self, leading: Option<&Arc<Partition>>) -> bool {
        let epoch = leading.map(|p| p.leader_epoch());
        match (&*self, epoch) {
            (Hosting::Loaded(c), Some(e)) if c.epoch() == Some(e) => false,
            (Hosting::Loading { epoch: loading }, Some(e)) if *loading == e => false,
            (_, Some(e)) => {
                self.unload();
                *self = Hosting::Loading { epoch: e };
                true
            }
            (_, None) => {
                self.unload();
                *self = Hosting::Elsewhere;
                false
            }
        }
    }

    fn unload(&mut self) {
        if let Hosting::Loaded(coordinators) = self {
            tracing::info!(epoch = coordinators.epoch(), "this broker no longer coordinates groups and transactions");
            coordinators.unload();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use kafka_protocol::ResponseError;
    use sluice_storage::{LogConfig, PartitionLog};

    use crate::error::BrokerError;
    use crate::internal_log::SharedLog;
    use crate::offsets::{CommittedOffset, OffsetStore};
    use crate::topic::{COORDINATOR_TOPIC, FlushPolicy, Partition, TopicName};

    fn shared_partition(dir: &std::path::Path) -> Arc<Partition> {
        let config = LogConfig { retention_ms: None, retention_bytes: None, max_batch_bytes: 16 << 20, ..LogConfig::default() };
        let log = PartitionLog::open(&dir.join("p"), config, 0).unwrap();
        Partition::new(
            TopicName::parse(COORDINATOR_TOPIC).unwrap(),
            0,
            dir.join("p"),
            log,
            FlushPolicy::Background { messages: u64::MAX },
            0,
        )
    }

    fn commit(store: &OffsetStore, group: &str, partition: i32, offset: i64) -> Result<(), BrokerError> {
        store.write(group, vec![(("t".into(), partition), Some(CommittedOffset::from_request(offset, -1, None, 0)))], false)
    }

    #[test]
    fn a_new_leader_replays_what_was_written_and_a_snapshot_lets_the_prefix_go() {
        let dir = tempfile::tempdir().unwrap();
        let partition = shared_partition(dir.path());
        let log = SharedLog::new(Arc::clone(&partition), partition.leader_epoch(), 1);
        let store = OffsetStore::open_shared(Arc::clone(&log)).unwrap();
        for round in 0..50 {
            for p in 0..4 {
                commit(&store, "g", p, round * 10 + i64::from(p)).unwrap();
            }
        }
        store.remove("g", vec![("t".into(), 3)]).unwrap();
        let end = partition.log_end_offset();
        assert_eq!(end, 201, "one record per commit, one tombstone");

        let start = store.snapshot().unwrap();
        assert_eq!(start, end, "the snapshot starts where the log ended");
        log.truncate_before(start).unwrap();
        assert_eq!(partition.log_start_offset(), start);

        // Whoever loads the log next (the same partition here) sees the same offsets.
        let again = OffsetStore::open_shared(SharedLog::new(Arc::clone(&partition), partition.leader_epoch(), 1)).unwrap();
        assert_eq!(again.group("g"), store.group("g"));
        assert_eq!(again.get("g", "t", 2).unwrap().offset, 492);
        assert!(again.get("g", "t", 3).is_none(), "a deleted offset stays deleted");
    }

    #[test]
    fn the_old_coordinators_client_offsets_move_into_a_new_log() {
        let dir = tempfile::tempdir().unwrap();
        let local = OffsetStore::open(&dir.path().join("local"), 0).unwrap();
        commit(&local, "app", 0, 42).unwrap();
        commit(&local, "__sluice-transform-t", 0, 7).unwrap();
        let partition = shared_partition(dir.path());
        let log = SharedLog::new(Arc::clone(&partition), partition.leader_epoch(), 1);
        assert_eq!(local.copy_clients_to(&log).unwrap(), 1, "only the clients' group is the cluster's");
        let shared = OffsetStore::open_shared(log).unwrap();
        assert_eq!(shared.get("app", "t", 0).unwrap().offset, 42);
        assert!(!shared.has_group("__sluice-transform-t"), "plugins keep theirs in their broker's own store");
    }

    #[test]
    fn a_deposed_leader_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let partition = shared_partition(dir.path());
        let store = OffsetStore::open_shared(SharedLog::new(Arc::clone(&partition), partition.leader_epoch(), 1)).unwrap();
        commit(&store, "g", 0, 5).unwrap();
        // Another term began (this broker leads again, or not at all): the loaded store is stale.
        partition.set_leadership(true, partition.leader_epoch() + 1);
        let refused = commit(&store, "g", 0, 6).unwrap_err();
        assert!(matches!(refused, BrokerError::Protocol(ResponseError::NotCoordinator)), "{refused:?}");
        assert_eq!(store.get("g", "t", 0).unwrap().offset, 5, "memory keeps only what the log took");
        assert_eq!(partition.log_end_offset(), 1);
        partition.set_leadership(false, partition.leader_epoch());
        assert!(matches!(commit(&store, "g", 0, 7), Err(BrokerError::Protocol(ResponseError::NotCoordinator))));
    }
}
