//! The transaction coordinator: Kafka's transactional producer protocol on a single node.
//!
//! A transactional id maps to a producer id and epoch (`InitProducerId`), and its transaction moves
//! through Kafka's states: Empty → Ongoing (the first `AddPartitionsToTxn` / `AddOffsetsToTxn`) →
//! PrepareCommit / PrepareAbort (`EndTxn`, or a timeout) → CompleteCommit / CompleteAbort. Every state
//! change is written to the broker's keyed log `__transaction_state-0` before it is acknowledged;
//! with fsync-before-ack (`log.flush.interval.messages=1`) the changes a crash must not lose
//! (partitions added, offsets sent, the commit/abort decision) are fsynced first, otherwise they rely
//! on the page cache like the records they describe. Completing a transaction writes a marker (control batch) to each of its partitions and,
//! on commit, the offsets it carries to the group offsets store; only then is the state Complete.
//!
//! Markers are written before EndTxn is answered: the coordinator appends them itself to the partitions
//! it leads, and in a cluster sends WriteTxnMarkers to the leaders of the others ([`RemoteMarkers`]),
//! as Kafka's coordinator does. Either way a marker counts as written once it is durable the way an
//! acks=all record is (fsynced under fsync-before-ack, and on every in-sync replica of a replicated
//! partition), so a leader change cannot lose it. A partition whose leader cannot take its marker yet
//! (moving, or below `min.insync.replicas`) leaves the transaction in its Prepare state; EndTxn answers
//! with the cause, and the background tick tries again until every marker is written. Recovery at start-up finishes every transaction
//! found in a Prepare state, and aborts transactions that partitions still hold open without a
//! coordinator record (a "hanging" transaction), so no last stable offset stays stuck. Ongoing
//! transactions survive a restart and are aborted by `transaction.timeout.ms` if their producer does
//! not come back to finish them.
//!
//! Fencing: `InitProducerId` bumps the epoch, aborting any ongoing transaction with the new epoch, so
//! requests from the old producer (a zombie) fail with PRODUCER_FENCED at the coordinator and with
//! INVALID_PRODUCER_EPOCH at partitions. A transaction that times out is aborted the same way.
//!
//! Locking: one mutex per transactional id, held across the blocking file work of one operation (never
//! across an `.await`); a transactional produce holds it around its append, so no record can land in
//! a partition after that partition's marker.
//!
//! Dependencies, given at construction (the coordinator never sees the `Broker`): the topic registry
//! (where markers go), the producer-id allocator, the committed-offsets store (where a commit's
//! offsets go) and the group coordinator (KIP-447 membership checks on TxnOffsetCommit).
//!
//! Errors: refusals are `BrokerError::Protocol` with Kafka's code, because the transaction protocol
//! is defined by those codes (PRODUCER_FENCED, INVALID_TXN_STATE, CONCURRENT_TRANSACTIONS…) and
//! clients act on them exactly; failures underneath (the state log, a marker append) keep their cause.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use dashmap::DashMap;
use kafka_protocol::ResponseError;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sluice_storage::{ControlType, StorageError, TxnMarker};

use crate::error::{BrokerError, refuse};
use crate::groups::{GROUP_ID_BYTES_MAX, GroupCoordinator};
use crate::internal_log::{BATCH_RECORD_BYTES_MAX, KeyedEntry, KeyedLog, SharedLog, record_bytes_max};
use crate::metastore::ProducerIds;
use crate::offsets::{COMMIT_METADATA_BYTES_MAX, CommittedOffset, OffsetStore, OffsetWrite, offset_record_bytes_max};
use crate::topic::{TOPIC_NAME_BYTES_MAX, Topics};

pub(crate) const TXN_STATE_DIR_NAME: &str = "__transaction_state-0";
/// This store's tag in the coordinator's shared log.
const SHARED_TAG: u8 = b't';
/// Longest transactional id accepted (Kafka sets none; ids are usually an application id plus a task).
pub(crate) const TRANSACTIONAL_ID_BYTES_MAX: usize = 4096;
/// Most partitions one transaction may touch.
pub(crate) const TXN_PARTITIONS_MAX: usize = 10_000;
/// Most consumer groups one transaction may carry offsets for.
pub(crate) const TXN_GROUPS_MAX: usize = 64;
/// Most offsets one transaction may carry across its groups. Bounded by the state log: a transaction's
/// whole state is one record, and its offsets are one commit (see the assertions below).
pub(crate) const TXN_OFFSETS_MAX: usize = 3_000;

/// The most bytes one transactional id's state takes in the state log, at every cap above, from
/// rmp-serde's encoding: the key (the id, a string header of up to 5) and the value (an array of the
/// fields; integers of up to 9, the status a short string, each partition an array of a topic name
/// and an i32, each group a name and a map header, each staged offset a key like a partition's and
/// a `CommittedOffset` with its metadata).
const TXN_RECORD_BYTES_MAX: usize = {
    const FIXED_FIELDS: usize = 128;
    const PARTITION: usize = 1 + 5 + TOPIC_NAME_BYTES_MAX + 5;
    const GROUP: usize = 5 + GROUP_ID_BYTES_MAX + 5;
    const OFFSET: usize = PARTITION + 29 + COMMIT_METADATA_BYTES_MAX;
    record_bytes_max(
        5 + TRANSACTIONAL_ID_BYTES_MAX,
        FIXED_FIELDS + 10 + TXN_PARTITIONS_MAX * PARTITION + TXN_GROUPS_MAX * GROUP + TXN_OFFSETS_MAX * OFFSET,
    )
};
// Any state the caps accept is one record of the state log…
const _: () = assert!(TXN_RECORD_BYTES_MAX <= BATCH_RECORD_BYTES_MAX);
// …and a commit writes its staged offsets as one commit of the offsets log (all in one group at worst).
const _: () = assert!(
    TXN_OFFSETS_MAX * offset_record_bytes_max(GROUP_ID_BYTES_MAX, TOPIC_NAME_BYTES_MAX, COMMIT_METADATA_BYTES_MAX)
        <= BATCH_RECORD_BYTES_MAX
);

/// Rough bytes per live transactional id in the state log, for the rewrite heuristic.
pub(crate) const ENTRY_BYTES_ESTIMATE: u64 = 256;
/// No producer id / epoch (Kafka's `RecordBatch.NO_PRODUCER_ID` / `NO_PRODUCER_EPOCH`).
const NO_PRODUCER_ID: i64 = -1;
const NO_PRODUCER_EPOCH: i16 = -1;

/// Kafka's transaction states (the names DescribeTransactions and ListTransactions report).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum TxnStatus {
    Empty,
    Ongoing,
    PrepareCommit,
    PrepareAbort,
    CompleteCommit,
    CompleteAbort,
}

impl TxnStatus {
    pub(crate) fn name(self) -> &'static str {
        match self {
            TxnStatus::Empty => "Empty",
            TxnStatus::Ongoing => "Ongoing",
            TxnStatus::PrepareCommit => "PrepareCommit",
            TxnStatus::PrepareAbort => "PrepareAbort",
            TxnStatus::CompleteCommit => "CompleteCommit",
            TxnStatus::CompleteAbort => "CompleteAbort",
        }
    }

    pub(crate) const ALL: [TxnStatus; 6] = [
        TxnStatus::Empty,
        TxnStatus::Ongoing,
        TxnStatus::PrepareCommit,
        TxnStatus::PrepareAbort,
        TxnStatus::CompleteCommit,
        TxnStatus::CompleteAbort,
    ];

    fn is_prepare(self) -> bool {
        matches!(self, TxnStatus::PrepareCommit | TxnStatus::PrepareAbort)
    }
}

fn no_producer_id() -> i64 {
    NO_PRODUCER_ID
}

fn no_producer_epoch() -> i16 {
    NO_PRODUCER_EPOCH
}

/// What the coordinator keeps per transactional id; each change is one record in the state log.
/// Fields are encoded in order (rmp-serde arrays): new fields go last, with a default, so records
/// written by an older broker still read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct TxnMetadata {
    producer_id: i64,
    producer_epoch: i16,
    timeout_ms: i32,
    status: TxnStatus,
    /// (topic, partition) written in the current transaction.
    partitions: BTreeSet<(String, i32)>,
    /// Groups added with AddOffsetsToTxn and the offsets sent for them (TxnOffsetCommit), which
    /// become committed offsets only when the transaction commits.
    pending_offsets: BTreeMap<String, BTreeMap<(String, i32), CommittedOffset>>,
    /// When the current transaction started (its first partition or group); 0 when none.
    start_ms: i64,
    /// Broker time of the last change: an idle id expires `transactional.id.expiration.ms` after it.
    last_update_ms: i64,
    /// KIP-360: the producer id before the last rotation to a fresh one (epochs ran out).
    #[serde(default = "no_producer_id")]
    last_producer_id: i64,
    /// KIP-360: the epoch a client that asked for a bump with its current epoch had before it, so the
    /// client's retry (it lost the answer) gets the same answer; -1 after a fresh InitProducerId,
    /// which fences every earlier instance for good.
    #[serde(default = "no_producer_epoch")]
    last_producer_epoch: i16,
}

impl TxnMetadata {
    fn new(producer_id: i64, timeout_ms: i32, now: i64) -> TxnMetadata {
        TxnMetadata {
            producer_id,
            producer_epoch: 0,
            timeout_ms,
            status: TxnStatus::Empty,
            partitions: BTreeSet::new(),
            pending_offsets: BTreeMap::new(),
            start_ms: 0,
            last_update_ms: now,
            last_producer_id: NO_PRODUCER_ID,
            last_producer_epoch: NO_PRODUCER_EPOCH,
        }
    }

    /// Starts a transaction if none is open; returns whether it did.
    fn begin_if_needed(&mut self, now: i64) -> bool {
        if self.status == TxnStatus::Ongoing {
            return false;
        }
        self.status = TxnStatus::Ongoing;
        self.partitions.clear();
        self.pending_offsets.clear();
        self.start_ms = now;
        true
    }

    /// Ends the current transaction in `status` (a Complete state, or Empty after InitProducerId).
    fn finish(&mut self, status: TxnStatus, now: i64) {
        self.status = status;
        self.partitions.clear();
        self.pending_offsets.clear();
        self.start_ms = 0;
        self.last_update_ms = now;
    }

    fn staged_offsets(&self) -> usize {
        self.pending_offsets.values().map(BTreeMap::len).sum()
    }

    fn staged_keys(&self) -> impl Iterator<Item = (&str, &str, i32)> {
        self.pending_offsets.iter().flat_map(|(group, offsets)| offsets.keys().map(move |(topic, p)| (group.as_str(), topic.as_str(), *p)))
    }

    fn stages(&self, group: &str, topic: &str, partition: i32) -> bool {
        self.pending_offsets.get(group).is_some_and(|offsets| offsets.contains_key(&(topic.to_string(), partition)))
    }
}

/// A transaction as DescribeTransactions / ListTransactions / the admin API show it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct TxnView {
    pub(crate) transactional_id: String,
    pub(crate) producer_id: i64,
    pub(crate) producer_epoch: i16,
    pub(crate) state: &'static str,
    pub(crate) timeout_ms: i32,
    pub(crate) start_ms: i64,
    pub(crate) partitions: Vec<(String, i32)>,
    pub(crate) groups: Vec<String>,
}

/// Per-entry outcome of a request naming many partitions, in the request's order: `None` for success.
pub(crate) type EntryResults = Vec<Option<ResponseError>>;

/// Per-id slot: `None` until InitProducerId creates the id, and again once it expired.
type Slot = Arc<Mutex<Option<TxnMetadata>>>;

#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct TxnCounters {
    pub(crate) committed: u64,
    pub(crate) aborted: u64,
    pub(crate) timed_out: u64,
    pub(crate) fenced: u64,
}

/// What the coordinator needs from the rest of the broker, handed over once at start-up.
pub(crate) struct TxnDeps {
    pub(crate) topics: Arc<Topics>,
    pub(crate) producer_ids: Arc<ProducerIds>,
    pub(crate) offsets: Arc<OffsetStore>,
    pub(crate) groups: Arc<GroupCoordinator>,
    /// For topic settings the coordinator obeys (`min.insync.replicas` for markers).
    pub(crate) config: Arc<crate::config::BrokerConfig>,
}

/// The coordinator's settings, from the broker's config.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TxnSettings {
    /// `transaction.max.timeout.ms`.
    pub(crate) max_timeout_ms: i32,
    /// Whether state changes that must survive a crash are fsynced (fsync-before-ack brokers), or
    /// left to the page cache like acknowledged records are (the default policy).
    pub(crate) fsync: bool,
    /// `transactional.id.expiration.ms`.
    pub(crate) id_expiration_ms: i64,
}

/// Why a marker could not be written on the partition's leader elsewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MarkerError {
    /// The partition already holds a newer producer epoch: this transaction cannot be open there.
    StaleEpoch,
    /// The cluster no longer has the partition (its topic was deleted).
    Gone,
    /// Not written (no leader, unreachable, not enough in-sync replicas…): the completion is retried.
    NotWritten(String),
}

/// Writes markers to the partitions of a cluster that this node does not lead: on their leaders,
/// with WriteTxnMarkers. Blocking (the coordinator calls it under a transactional id's lock).
pub(crate) trait RemoteMarkers: Send + Sync {
    /// One outcome per partition, in order; `Ok` once the marker is durable as an acks=all write.
    fn write(&self, marker: &TxnMarker, partitions: &[(String, i32)]) -> Vec<Result<(), MarkerError>>;
}

pub(crate) struct TransactionCoordinator {
    log: KeyedLog,
    deps: TxnDeps,
    /// Set when the broker joins a cluster: partitions led elsewhere get their markers through it.
    remote: std::sync::OnceLock<Arc<dyn RemoteMarkers>>,
    settings: TxnSettings,
    txns: DashMap<String, Slot>,
    /// Producer id → transactional id: transactional produce checks the producer belongs to the id
    /// it names, and plain produce refuses a transactional id's producer.
    by_producer: DashMap<i64, String>,
    /// (group, topic, partition) → how many open transactions stage an offset for it, so OffsetFetch
    /// with require_stable answers without touching (or waiting for) any transaction's lock.
    pending_index: DashMap<(String, String, i32), usize>,
    counters: Mutex<TxnCounters>,
}

/// Producer id → (epoch, partitions) of the transactions the coordinator has open.
pub(crate) type OpenByProducer = BTreeMap<i64, (i16, BTreeSet<(String, i32)>)>;

fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, BrokerError> {
    rmp_serde::to_vec(value).map_err(|source| BrokerError::Encode { what: "transaction state", source })
}

/// The epoch after `epoch`, or `None` when it would run out and the id needs a new producer id.
fn bump(epoch: i16) -> Option<i16> {
    (epoch < i16::MAX - 1).then_some(epoch + 1)
}

/// Kafka's `isEpochExhausted`.
fn epoch_exhausted(epoch: i16) -> bool {
    bump(epoch).is_none()
}

/// One replayed record: an id's state or its tombstone.
fn replay(state: &mut BTreeMap<String, TxnMetadata>, key: &[u8], value: Option<&[u8]>) {
    let Ok(id) = rmp_serde::from_slice::<String>(key) else {
        tracing::warn!("skipping an unreadable key in the transaction state log");
        return;
    };
    match value.map(rmp_serde::from_slice::<TxnMetadata>) {
        Some(Ok(metadata)) => {
            state.insert(id, metadata);
        }
        Some(Err(error)) => tracing::warn!(transactional_id = id, %error, "skipping an unreadable transaction state record"),
        None => {
            state.remove(&id);
        }
    }
}

impl TransactionCoordinator {
    /// Opens (replays) the state log. Call `recover` once every partition is open.
    pub(crate) fn open(data_dir: &Path, now: i64, deps: TxnDeps, settings: TxnSettings) -> Result<TransactionCoordinator, BrokerError> {
        let mut state: BTreeMap<String, TxnMetadata> = BTreeMap::new();
        let log = KeyedLog::open(data_dir, TXN_STATE_DIR_NAME, now, |key, value| replay(&mut state, key, value))?;
        Ok(TransactionCoordinator::from_replayed(log, state, deps, settings))
    }

    /// The clients' transactions of a cluster, replayed from the coordinator's replicated log. Call
    /// `recover` next. Blocking.
    pub(crate) fn open_shared(log: Arc<SharedLog>, deps: TxnDeps, settings: TxnSettings) -> Result<TransactionCoordinator, BrokerError> {
        let mut state: BTreeMap<String, TxnMetadata> = BTreeMap::new();
        let log = KeyedLog::open_shared(log, "transactions", SHARED_TAG, |key, value| replay(&mut state, key, value))?;
        Ok(TransactionCoordinator::from_replayed(log, state, deps, settings))
    }

    fn from_replayed(log: KeyedLog, state: BTreeMap<String, TxnMetadata>, deps: TxnDeps, settings: TxnSettings) -> TransactionCoordinator {
        let coordinator = TransactionCoordinator {
            log,
            deps,
            remote: std::sync::OnceLock::new(),
            settings,
            txns: DashMap::new(),
            by_producer: DashMap::new(),
            pending_index: DashMap::new(),
            counters: Mutex::default(),
        };
        for (id, metadata) in state {
            coordinator.by_producer.insert(metadata.producer_id, id.clone());
            for (group, topic, partition) in metadata.staged_keys() {
                coordinator.index_pending(group, topic, partition);
            }
            coordinator.txns.insert(id, Arc::new(Mutex::new(Some(metadata))));
        }
        coordinator
    }

    /// Appends every id's state to a shared log and returns where that snapshot starts (see
    /// `internal_log`); `None` when an id was busy (its change may be on its way to the log), and
    /// the caller tries again later. Blocking.
    pub(crate) fn snapshot(&self) -> Result<Option<i64>, BrokerError> {
        let mut log = self.log.lock();
        let Some(live) = self.live_states(None) else { return Ok(None) };
        log.snapshot(&live).map(Some)
    }

    /// Copies the clients' transactional ids (not `__sluice…`) into the coordinators' shared log,
    /// which must be new (see `OffsetStore::copy_clients_to`). Returns how many were copied; `None`
    /// when an id was busy. Blocking.
    pub(crate) fn copy_clients_to(&self, log: &Arc<SharedLog>) -> Result<Option<usize>, BrokerError> {
        let _held = self.log.lock();
        let Some(live) = self.live_states(None) else { return Ok(None) };
        let live: Vec<(Vec<u8>, Vec<u8>)> = live
            .into_iter()
            .filter(|(key, _)| rmp_serde::from_slice::<String>(key).is_ok_and(|id| !crate::host::is_internal_name(&id)))
            .collect();
        if !live.is_empty() {
            KeyedLog::open_shared(Arc::clone(log), "transactions", SHARED_TAG, |_, _| {})?.lock().snapshot(&live)?;
        }
        Ok(Some(live.len()))
    }

    /// Every id's encoded state, for a rewrite or a snapshot: the caller holds the log, so no change
    /// is appended meanwhile. `current` is an id whose slot the caller holds, with the state to use
    /// for it; any other slot is only tried, and `None` comes back if one is busy.
    fn live_states(&self, current: Option<(&str, Option<&TxnMetadata>)>) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
        let slots: Vec<(String, Slot)> = self.txns.iter().map(|e| (e.key().clone(), Arc::clone(e.value()))).collect();
        let mut live = Vec::with_capacity(slots.len());
        for (id, slot) in slots {
            let encoded = match current {
                Some((current, state)) if current == id => match state {
                    Some(metadata) => (encode(&id), encode(metadata)),
                    None => continue,
                },
                _ => {
                    let guard = slot.try_lock()?;
                    match guard.as_ref() {
                        Some(metadata) => (encode(&id), encode(metadata)),
                        None => continue,
                    }
                }
            };
            match encoded {
                (Ok(k), Ok(v)) => live.push((k, v)),
                _ => return None,
            }
        }
        Some(live)
    }

    /// From now on, markers for partitions this node does not lead go to their leaders through
    /// `remote` (a broker that joined a cluster). The first call wins.
    pub(crate) fn use_remote_markers(&self, remote: Arc<dyn RemoteMarkers>) {
        let _ = self.remote.set(remote);
    }

    fn existing_slot(&self, transactional_id: &str) -> Option<Slot> {
        self.txns.get(transactional_id).map(|s| Arc::clone(s.value()))
    }

    /// Whether `slot` is still the id's slot (expiry removes slots under their lock).
    fn is_current(&self, transactional_id: &str, slot: &Slot) -> bool {
        self.txns.get(transactional_id).is_some_and(|current| Arc::ptr_eq(current.value(), slot))
    }

    /// Runs `f` under the lock of the id's slot, creating the slot if needed.
    fn with_slot<T>(&self, transactional_id: &str, f: impl FnOnce(&mut Option<TxnMetadata>) -> T) -> T {
        loop {
            let slot = match self.existing_slot(transactional_id) {
                Some(slot) => slot,
                None => Arc::clone(self.txns.entry(transactional_id.to_string()).or_default().value()),
            };
            let mut guard = slot.lock();
            // The id expired between the look-up and the lock: its slot left the map, and a change
            // made to it would be lost. Look again.
            if self.is_current(transactional_id, &slot) {
                return f(&mut guard);
            }
        }
    }

    /// Writes the id's new state to the state log; `must_survive` changes are fsynced when the broker
    /// fsyncs before acknowledging. Under the page-cache policy nothing is fsynced, exactly as for the
    /// records themselves: a process crash loses nothing (the page cache survives it), a power cut may
    /// lose the last moments of both records and decisions, consistently. `None` is a tombstone.
    fn persist(&self, transactional_id: &str, metadata: Option<&TxnMetadata>, must_survive: bool) -> Result<(), BrokerError> {
        let fsync = must_survive && self.settings.fsync;
        let entry: KeyedEntry = (encode(transactional_id)?, metadata.map(encode).transpose()?);
        let mut log = self.log.lock();
        log.append(&[entry], fsync)?;
        if log.wants_rewrite(self.txns.len(), ENTRY_BYTES_ESTIMATE) {
            drop(log);
            self.rewrite_log(transactional_id, metadata);
        }
        Ok(())
    }

    /// Makes `next` the id's state: it is written to the state log first, then published to memory
    /// and the indexes. If the write fails, nothing changes, so no decision the log does not hold is
    /// ever acted on (the background tick acts on what memory holds).
    fn change(&self, transactional_id: &str, current: &mut TxnMetadata, next: TxnMetadata, must_survive: bool) -> Result<(), BrokerError> {
        self.persist(transactional_id, Some(&next), must_survive)?;
        for (group, topic, partition) in current.staged_keys() {
            if !next.stages(group, topic, partition) {
                self.unindex_pending(group, topic, partition);
            }
        }
        for (group, topic, partition) in next.staged_keys() {
            if !current.stages(group, topic, partition) {
                self.index_pending(group, topic, partition);
            }
        }
        if next.producer_id != current.producer_id {
            self.by_producer.remove_if(&current.producer_id, |_, owner| owner == transactional_id);
            self.by_producer.insert(next.producer_id, transactional_id.to_string());
        }
        *current = next;
        Ok(())
    }

    /// Compacts the state log. The caller holds `current`'s slot and passes its state; other slots
    /// are only tried: if one is busy the rewrite waits for a later persist rather than block.
    fn rewrite_log(&self, current: &str, current_state: Option<&TxnMetadata>) {
        // The log lock first: no other id can append between the snapshot and the swap (one that is
        // waiting for it holds its slot, so the snapshot below gives up instead of missing its change).
        let mut log = self.log.lock();
        let Some(live) = self.live_states(Some((current, current_state))) else { return };
        if let Err(error) = log.rewrite(&live) {
            tracing::warn!(%error, "transaction state log rewrite failed; keeping the current log");
        }
    }

    /// InitProducerId for a transactional id: creates the id, or bumps its epoch (fencing the previous
    /// producer and aborting its open transaction). `expected` is the (producer id, epoch) a KIP-360
    /// client sends to recover; it is checked as Kafka's coordinator checks it.
    pub(crate) fn init_producer_id(
        &self,
        transactional_id: &str,
        timeout_ms: i32,
        expected: Option<(i64, i16)>,
    ) -> Result<(i64, i16), BrokerError> {
        if transactional_id.len() > TRANSACTIONAL_ID_BYTES_MAX {
            return refuse(ResponseError::InvalidRequest);
        }
        if timeout_ms <= 0 || timeout_ms > self.settings.max_timeout_ms {
            return refuse(ResponseError::InvalidTransactionTimeout);
        }
        self.with_slot(transactional_id, |slot| match slot.as_mut() {
            None => {
                let fresh = self.register(transactional_id, timeout_ms)?;
                let answer = (fresh.producer_id, fresh.producer_epoch);
                *slot = Some(fresh);
                Ok(answer)
            }
            Some(current) => self.reinitialise(transactional_id, current, timeout_ms, expected),
        })
    }

    /// A new transactional id: a fresh producer id at epoch 0, durable before it is answered.
    fn register(&self, transactional_id: &str, timeout_ms: i32) -> Result<TxnMetadata, BrokerError> {
        let producer_id = self.deps.producer_ids.allocate()?;
        // Claimed before anything else can learn the id, so no plain write can use it first.
        self.by_producer.insert(producer_id, transactional_id.to_string());
        let fresh = TxnMetadata::new(producer_id, timeout_ms, crate::now_ms());
        if let Err(error) = self.persist(transactional_id, Some(&fresh), true) {
            self.by_producer.remove(&producer_id);
            return Err(error);
        }
        tracing::info!(transactional_id, producer_id, "registered a transactional id");
        Ok(fresh)
    }

    /// InitProducerId for an existing id. Kafka's rules (`TransactionCoordinator.handleInitProducerId`,
    /// `TransactionMetadata.prepareIncrementProducerEpoch`): a KIP-360 request must name the current
    /// producer id (or the previous one, if its epochs ran out); with the current epoch it bumps, with
    /// the epoch before the last bump it is a retry and gets the current one back, anything else is
    /// PRODUCER_FENCED. Without an expectation (a new instance) it bumps, and forgets the previous
    /// epoch so no older instance can retry its way back in.
    fn reinitialise(
        &self,
        transactional_id: &str,
        current: &mut TxnMetadata,
        timeout_ms: i32,
        expected: Option<(i64, i16)>,
    ) -> Result<(i64, i16), BrokerError> {
        if let Some((producer_id, epoch)) = expected {
            let known = producer_id == current.producer_id || (producer_id == current.last_producer_id && epoch_exhausted(epoch));
            if !known {
                return refuse(ResponseError::ProducerFenced);
            }
            if epoch != current.producer_epoch {
                if epoch == current.last_producer_epoch && current.last_producer_epoch != NO_PRODUCER_EPOCH && !current.status.is_prepare()
                {
                    return Ok((current.producer_id, current.producer_epoch));
                }
                return refuse(ResponseError::ProducerFenced);
            }
        }
        let epoch_before = current.producer_epoch;
        match current.status {
            TxnStatus::PrepareCommit | TxnStatus::PrepareAbort => {
                // A completion that failed earlier: finish it, then fence its producer like any other.
                if let Err(error) = self.complete(transactional_id, current) {
                    tracing::warn!(transactional_id, %error, "cannot finish an earlier completion yet");
                    return refuse(ResponseError::ConcurrentTransactions);
                }
            }
            TxnStatus::Ongoing => {
                // The previous producer's transaction: abort it under a new epoch, which fences it.
                self.fence_and_abort(transactional_id, current, "a new producer initialised the transactional id")?;
                self.counters.lock().fenced += 1;
            }
            TxnStatus::Empty | TxnStatus::CompleteCommit | TxnStatus::CompleteAbort => {}
        }
        let mut next = current.clone();
        if next.producer_epoch == epoch_before {
            self.bump_epoch(&mut next)?;
        }
        next.timeout_ms = timeout_ms;
        next.last_producer_epoch = if expected.is_some() { epoch_before } else { NO_PRODUCER_EPOCH };
        next.finish(TxnStatus::Empty, crate::now_ms());
        self.change(transactional_id, current, next, true)?;
        Ok((current.producer_id, current.producer_epoch))
    }

    /// Moves the state to the next epoch, or to a fresh producer id when the epoch space is used up.
    fn bump_epoch(&self, metadata: &mut TxnMetadata) -> Result<(), BrokerError> {
        match bump(metadata.producer_epoch) {
            Some(next) => metadata.producer_epoch = next,
            None => {
                metadata.last_producer_id = metadata.producer_id;
                metadata.producer_id = self.deps.producer_ids.allocate()?;
                metadata.producer_epoch = 0;
            }
        }
        Ok(())
    }

    /// Aborts the ongoing transaction under a bumped epoch: the markers carry the new epoch, so the
    /// old producer's later writes fail at every partition it touched.
    fn fence_and_abort(&self, transactional_id: &str, current: &mut TxnMetadata, why: &str) -> Result<(), BrokerError> {
        let old_epoch = current.producer_epoch;
        let mut next = current.clone();
        if let Some(bumped) = bump(next.producer_epoch) {
            next.producer_epoch = bumped;
        }
        next.status = TxnStatus::PrepareAbort;
        next.last_update_ms = crate::now_ms();
        self.change(transactional_id, current, next, true)?;
        tracing::info!(
            transactional_id,
            producer_id = current.producer_id,
            old_epoch,
            new_epoch = current.producer_epoch,
            why,
            "aborting a transaction and fencing its producer"
        );
        self.complete(transactional_id, current)?;
        if current.producer_epoch == old_epoch {
            // The epoch space ran out: move to a new producer id now, so the old one is fenced.
            let mut next = current.clone();
            self.bump_epoch(&mut next)?;
            self.change(transactional_id, current, next, true)?;
        }
        Ok(())
    }

    /// Writes the markers (and, on commit, the offsets) of a transaction in a Prepare state, then
    /// records it Complete.
    fn complete(&self, transactional_id: &str, current: &mut TxnMetadata) -> Result<(), BrokerError> {
        let (control, complete) = match current.status {
            TxnStatus::PrepareCommit => (ControlType::Commit, TxnStatus::CompleteCommit),
            TxnStatus::PrepareAbort => (ControlType::Abort, TxnStatus::CompleteAbort),
            _ => return Ok(()),
        };
        let marker = TxnMarker { producer_id: current.producer_id, producer_epoch: current.producer_epoch, control, coordinator_epoch: 0 };
        let now = crate::now_ms();
        let mut elsewhere: Vec<(String, i32)> = Vec::new();
        let mut appended = Vec::new();
        for (topic, index) in &current.partitions {
            let partition = match self.deps.topics.partition(topic, *index) {
                Ok(partition) => partition,
                // Led by another broker, or held here but not led yet: its leader writes it.
                Err(_) if self.remote.get().is_some() && self.deps.topics.contains_partition(topic, *index) => {
                    elsewhere.push((topic.clone(), *index));
                    continue;
                }
                // Held here but not led (yet): a restarted broker's partitions lead nothing until the
                // quorum says so. The marker must still be written, so the transaction stays in its
                // Prepare state and the background tick tries again; skipping the partition would
                // record it Complete with the partition still open, and the hanging-transaction
                // check would later abort a committed transaction there.
                Err(error @ BrokerError::NotLeader { .. }) => {
                    tracing::warn!(
                        transactional_id,
                        topic,
                        partition = index,
                        "a partition of the transaction is not led here yet; its marker waits"
                    );
                    return Err(error);
                }
                Err(_) => {
                    tracing::warn!(
                        transactional_id,
                        topic,
                        partition = index,
                        "partition of a transaction no longer exists; no marker written"
                    );
                    continue;
                }
            };
            // Appended now, made durable below, all together: one follower fetch round (and one
            // fsync per partition) for every partition this broker leads, not one after another.
            let min_insync = self.deps.topics.get(topic).map_or(1, |t| t.config.read().min_insync_replicas(&self.deps.config));
            match partition.write_marker(&marker, min_insync, now) {
                Ok((end, epoch)) => appended.push((partition, end, epoch, min_insync)),
                Err(BrokerError::Storage(StorageError::InvalidProducerEpoch { current: epoch, got, .. })) => {
                    // A newer epoch already wrote here: this transaction cannot be open in it.
                    tracing::warn!(
                        transactional_id,
                        topic,
                        partition = index,
                        current = epoch,
                        got,
                        "marker older than the partition's producer epoch; skipped"
                    );
                }
                Err(error) => {
                    tracing::error!(transactional_id, topic, partition = index, %error, "cannot write a transaction marker; the transaction stays in {}", current.status.name());
                    return Err(error);
                }
            }
        }
        // Under fsync-before-ack the markers must be durable before the offsets and the Complete
        // record that presuppose them: otherwise a power cut could keep those and lose a marker, and
        // recovery would abort a committed transaction. On a replicated partition a marker must also
        // be on every in-sync replica, or a new leader would not have it.
        if self.settings.fsync {
            for (partition, ..) in &appended {
                partition.flush_blocking()?;
            }
        }
        let replicated: Vec<_> = appended.iter().filter(|(partition, ..)| partition.is_replicated()).collect();
        if !replicated.is_empty() {
            let handle =
                tokio::runtime::Handle::try_current().map_err(|_| BrokerError::Timeout("no runtime to wait for the replicas on".into()))?;
            let waits = replicated.iter().map(|(partition, end, epoch, min_insync)| partition.wait_marker(*end, *epoch, *min_insync));
            let results = tokio::task::block_in_place(|| handle.block_on(futures::future::join_all(waits)));
            for ((partition, ..), result) in replicated.iter().zip(results) {
                if let Err(error) = result {
                    tracing::error!(transactional_id, topic = partition.topic.as_str(), partition = partition.index, %error, "a transaction marker did not reach the in-sync replicas; the transaction stays in {}", current.status.name());
                    return Err(error);
                }
            }
        }
        if let (Some(remote), false) = (self.remote.get(), elsewhere.is_empty()) {
            let outcomes = remote.write(&marker, &elsewhere);
            let mut unwritten = Vec::new();
            for ((topic, index), outcome) in elsewhere.iter().zip(outcomes) {
                match outcome {
                    Ok(()) => {}
                    Err(MarkerError::StaleEpoch) => tracing::warn!(
                        transactional_id,
                        topic,
                        partition = index,
                        "marker older than the partition's producer epoch on its leader; skipped"
                    ),
                    Err(MarkerError::Gone) => tracing::warn!(
                        transactional_id,
                        topic,
                        partition = index,
                        "partition of a transaction no longer exists; no marker written"
                    ),
                    Err(MarkerError::NotWritten(why)) => unwritten.push(format!("{topic}-{index}: {why}")),
                }
            }
            if !unwritten.is_empty() {
                tracing::warn!(transactional_id, partitions = ?unwritten, "markers not written on the partitions' leaders; the transaction stays in {}", current.status.name());
                return Err(BrokerError::Timeout(format!(
                    "transaction markers not written yet on {} partition(s) led elsewhere (first: {}); retried in the background",
                    unwritten.len(),
                    unwritten[0]
                )));
            }
        }
        if control == ControlType::Commit {
            for (group, offsets) in &current.pending_offsets {
                let writes: Vec<OffsetWrite> = offsets.iter().map(|(k, v)| (k.clone(), Some(v.clone()))).collect();
                self.deps.offsets.write(group, writes, self.settings.fsync)?;
            }
        }
        let mut next = current.clone();
        next.finish(complete, now);
        // Not fsynced: if this record is lost, recovery completes the transaction again, and markers
        // and offsets written twice change nothing.
        self.change(transactional_id, current, next, false)?;
        let mut counters = self.counters.lock();
        match control {
            ControlType::Commit => counters.committed += 1,
            ControlType::Abort => counters.aborted += 1,
        }
        Ok(())
    }

    /// Checks that a request comes from the id's current producer.
    fn check_producer(metadata: &TxnMetadata, producer_id: i64, epoch: i16) -> Result<(), BrokerError> {
        if producer_id != metadata.producer_id {
            return refuse(ResponseError::InvalidProducerIdMapping);
        }
        if epoch < metadata.producer_epoch {
            return refuse(ResponseError::ProducerFenced);
        }
        if epoch > metadata.producer_epoch {
            return refuse(ResponseError::InvalidProducerEpoch);
        }
        Ok(())
    }

    /// Locks the id's state for a request from `producer_id`/`epoch` that may extend the transaction.
    fn with_open_txn<T>(
        &self,
        transactional_id: &str,
        producer_id: i64,
        epoch: i16,
        f: impl FnOnce(&mut TxnMetadata) -> Result<T, BrokerError>,
    ) -> Result<T, BrokerError> {
        let slot = self.existing_slot(transactional_id).ok_or(BrokerError::Protocol(ResponseError::InvalidProducerIdMapping))?;
        let mut guard = slot.lock();
        let metadata = guard.as_mut().ok_or(BrokerError::Protocol(ResponseError::InvalidProducerIdMapping))?;
        Self::check_producer(metadata, producer_id, epoch)?;
        if metadata.status.is_prepare() {
            return refuse(ResponseError::ConcurrentTransactions);
        }
        f(metadata)
    }

    fn index_pending(&self, group: &str, topic: &str, partition: i32) {
        *self.pending_index.entry((group.to_string(), topic.to_string(), partition)).or_insert(0) += 1;
    }

    fn unindex_pending(&self, group: &str, topic: &str, partition: i32) {
        self.pending_index.remove_if_mut(&(group.to_string(), topic.to_string(), partition), |_, count| {
            *count = count.saturating_sub(1);
            *count == 0
        });
    }

    /// AddPartitionsToTxn for partitions that exist (the handler answers for the others, which
    /// fail the whole request, as in Kafka).
    pub(crate) fn add_partitions(
        &self,
        transactional_id: &str,
        producer_id: i64,
        epoch: i16,
        partitions: &[(String, i32)],
    ) -> Result<(), BrokerError> {
        self.with_open_txn(transactional_id, producer_id, epoch, |current| {
            // Markers go to partitions this node leads, or, in a cluster, to any partition's leader.
            let reachable = |t: &str, p: i32| {
                if self.remote.get().is_some() { self.deps.topics.contains_partition(t, p) } else { self.deps.topics.leads_partition(t, p) }
            };
            if partitions.iter().any(|(t, p)| !reachable(t, *p)) {
                return refuse(ResponseError::UnknownTopicOrPartition);
            }
            // Its markers would land in a read-only mirror's copy.
            for (topic, _) in partitions {
                if let Some(topic) = self.deps.topics.get(topic) {
                    topic.check_writable()?;
                }
            }
            let now = crate::now_ms();
            let mut next = current.clone();
            let began = next.begin_if_needed(now);
            let fresh = partitions.iter().filter(|tp| !next.partitions.contains(*tp)).count();
            if next.partitions.len() + fresh > TXN_PARTITIONS_MAX {
                tracing::warn!(transactional_id, limit = TXN_PARTITIONS_MAX, "transaction refused: too many partitions");
                return refuse(ResponseError::InvalidRequest);
            }
            if !began && fresh == 0 {
                return Ok(());
            }
            next.partitions.extend(partitions.iter().cloned());
            next.last_update_ms = now;
            self.change(transactional_id, current, next, true)
        })
    }

    /// AddOffsetsToTxn: the transaction will carry offsets for `group`.
    pub(crate) fn add_offsets(&self, transactional_id: &str, producer_id: i64, epoch: i16, group: &str) -> Result<(), BrokerError> {
        if group.is_empty() || group.len() > GROUP_ID_BYTES_MAX {
            return refuse(ResponseError::InvalidGroupId);
        }
        self.with_open_txn(transactional_id, producer_id, epoch, |current| {
            let now = crate::now_ms();
            let mut next = current.clone();
            let began = next.begin_if_needed(now);
            if !began && next.pending_offsets.contains_key(group) {
                return Ok(());
            }
            if next.pending_offsets.len() >= TXN_GROUPS_MAX {
                tracing::warn!(transactional_id, limit = TXN_GROUPS_MAX, "transaction refused: too many groups");
                return refuse(ResponseError::InvalidRequest);
            }
            next.pending_offsets.entry(group.to_string()).or_default();
            next.last_update_ms = now;
            self.change(transactional_id, current, next, true)
        })
    }

    /// TxnOffsetCommit: stages offsets for a group added to the ongoing transaction. The group
    /// membership the client claims (KIP-447) is checked when it sends one. Returns an outcome per
    /// entry, in order.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn txn_offset_commit(
        &self,
        transactional_id: &str,
        group: &str,
        producer_id: i64,
        epoch: i16,
        generation: i32,
        member_id: &str,
        offsets: Vec<((String, i32), CommittedOffset)>,
    ) -> Result<EntryResults, BrokerError> {
        if group.len() > GROUP_ID_BYTES_MAX {
            return refuse(ResponseError::InvalidGroupId);
        }
        if !member_id.is_empty() && generation >= 0 {
            match self.deps.groups.check_commit(group, member_id, generation) {
                Ok(()) | Err(ResponseError::RebalanceInProgress) => {}
                Err(error) => return refuse(error),
            }
        }
        self.with_open_txn(transactional_id, producer_id, epoch, |current| {
            if current.status != TxnStatus::Ongoing || !current.pending_offsets.contains_key(group) {
                return refuse(ResponseError::InvalidTxnState);
            }
            if current.staged_offsets() + offsets.len() > TXN_OFFSETS_MAX {
                tracing::warn!(transactional_id, limit = TXN_OFFSETS_MAX, "transaction refused: too many offsets");
                return refuse(ResponseError::InvalidRequest);
            }
            let mut next = current.clone();
            let staged = next.pending_offsets.entry(group.to_string()).or_default();
            let mut results = Vec::with_capacity(offsets.len());
            for (key, offset) in offsets {
                let error = if !self.deps.topics.contains_partition(&key.0, key.1) {
                    Some(ResponseError::UnknownTopicOrPartition)
                } else if offset.metadata.as_ref().is_some_and(|m| m.len() > COMMIT_METADATA_BYTES_MAX) {
                    Some(ResponseError::OffsetMetadataTooLarge)
                } else {
                    staged.insert(key, offset);
                    None
                };
                results.push(error);
            }
            if results.iter().any(Option::is_none) {
                next.last_update_ms = crate::now_ms();
                self.change(transactional_id, current, next, true)?;
            }
            Ok(results)
        })
    }

    /// EndTxn: commit or abort the ongoing transaction. Retrying a finished EndTxn with the same
    /// decision succeeds; the opposite decision is INVALID_TXN_STATE.
    pub(crate) fn end_txn(&self, transactional_id: &str, producer_id: i64, epoch: i16, commit: bool) -> Result<(), BrokerError> {
        let slot = self.existing_slot(transactional_id).ok_or(BrokerError::Protocol(ResponseError::InvalidProducerIdMapping))?;
        let mut guard = slot.lock();
        let current = guard.as_mut().ok_or(BrokerError::Protocol(ResponseError::InvalidProducerIdMapping))?;
        Self::check_producer(current, producer_id, epoch)?;
        match (current.status, commit) {
            (TxnStatus::Ongoing, _) => {
                let mut next = current.clone();
                next.status = if commit { TxnStatus::PrepareCommit } else { TxnStatus::PrepareAbort };
                next.last_update_ms = crate::now_ms();
                self.change(transactional_id, current, next, true)?;
                self.complete(transactional_id, current)
            }
            (TxnStatus::PrepareCommit, true) | (TxnStatus::PrepareAbort, false) => self.complete(transactional_id, current),
            (TxnStatus::CompleteCommit, true) | (TxnStatus::CompleteAbort, false) => Ok(()),
            _ => refuse(ResponseError::InvalidTxnState),
        }
    }

    /// Whether `producer_id` belongs to a transactional id. Such a producer only writes inside
    /// transactions; a plain (idempotent) write carrying its id is refused, or it could raise the
    /// partition's epoch past the transaction's markers (issue 10, item 5).
    pub(crate) fn owns_producer(&self, producer_id: i64) -> bool {
        self.by_producer.contains_key(&producer_id)
    }

    /// Runs `append` for a transactional produce from `producer_id`/`epoch` to (topic, partition),
    /// after checking that the producer's transaction is open and holds that partition. The id's lock
    /// is held across the append, so it cannot interleave with the transaction's completion.
    /// `transactional_id` is the id the request names: the producer id must belong to it.
    pub(crate) fn transactional_append<T>(
        &self,
        transactional_id: &str,
        producer_id: i64,
        epoch: i16,
        topic: &str,
        partition: i32,
        append: impl FnOnce() -> T,
    ) -> Result<T, BrokerError> {
        let unmapped = BrokerError::Protocol(ResponseError::InvalidProducerIdMapping);
        if self.by_producer.get(&producer_id).is_none_or(|owner| owner.value() != transactional_id) {
            return Err(unmapped);
        }
        let slot = self.existing_slot(transactional_id).ok_or(unmapped)?;
        let guard = slot.lock();
        let Some(metadata) = guard.as_ref() else { return refuse(ResponseError::InvalidProducerIdMapping) };
        if producer_id != metadata.producer_id {
            return refuse(ResponseError::InvalidProducerIdMapping);
        }
        if epoch != metadata.producer_epoch {
            return refuse(ResponseError::InvalidProducerEpoch);
        }
        if metadata.status != TxnStatus::Ongoing || !metadata.partitions.contains(&(topic.to_string(), partition)) {
            return refuse(ResponseError::InvalidTxnState);
        }
        Ok(append())
    }

    /// The background tick, every `transaction.abort.timed.out.transaction.cleanup.interval.ms`:
    /// retries completions that failed, aborts (and fences) transactions open longer than their
    /// `transaction.timeout.ms`, and forgets ids idle longer than `transactional.id.expiration.ms`.
    pub(crate) fn abort_expired(&self, now: i64) {
        let slots: Vec<(String, Slot)> = self.txns.iter().map(|e| (e.key().clone(), Arc::clone(e.value()))).collect();
        for (id, slot) in slots {
            let mut guard = slot.lock();
            let Some(current) = guard.as_mut() else {
                // A creation that failed left an empty slot behind.
                self.txns.remove_if(&id, |_, s| Arc::ptr_eq(s, &slot));
                continue;
            };
            match current.status {
                TxnStatus::PrepareCommit | TxnStatus::PrepareAbort => {
                    // A completion that failed (a marker write error): retry it here, so partitions
                    // do not wait for the transactional id's next request, which may never come.
                    if let Err(error) = self.complete(&id, current) {
                        tracing::warn!(transactional_id = id, %error, "retrying an interrupted transaction completion failed; will retry");
                    }
                }
                TxnStatus::Ongoing if now - current.start_ms > i64::from(current.timeout_ms) => {
                    match self.fence_and_abort(&id, current, "transaction.timeout.ms expired") {
                        Ok(()) => self.counters.lock().timed_out += 1,
                        Err(error) => tracing::error!(transactional_id = id, %error, "could not abort an expired transaction"),
                    }
                }
                TxnStatus::Ongoing => {}
                TxnStatus::Empty | TxnStatus::CompleteCommit | TxnStatus::CompleteAbort => {
                    if now - current.last_update_ms > self.settings.id_expiration_ms {
                        let producer_id = current.producer_id;
                        match self.persist(&id, None, false) {
                            Ok(()) => {
                                *guard = None;
                                self.by_producer.remove_if(&producer_id, |_, owner| *owner == id);
                                self.txns.remove_if(&id, |_, s| Arc::ptr_eq(s, &slot));
                                tracing::info!(
                                    transactional_id = id,
                                    producer_id,
                                    "transactional id expired (transactional.id.expiration.ms)"
                                );
                            }
                            Err(error) => tracing::warn!(transactional_id = id, %error, "could not expire a transactional id"),
                        }
                    }
                }
            }
        }
    }

    /// Start-up recovery, after every partition is open: finish transactions a crash left in a
    /// Prepare state, then abort transactions that partitions hold open but the coordinator does not
    /// (their last stable offset would otherwise never move).
    pub(crate) fn recover(&self) {
        let open = self.finish_prepared();
        self.abort_hanging_in(&open);
    }

    /// Finishes transactions left in a Prepare state (a crash, or a coordinator that moved) and
    /// returns the open ones. A cluster's coordinator loading on a new leader does only this: the
    /// partitions it leads may hold transactions of this broker's own plugins, which it never sees;
    /// hanging ones are found by the periodic check instead (`markers::abort_hanging_elsewhere`).
    pub(crate) fn finish_prepared(&self) -> OpenByProducer {
        let slots: Vec<(String, Slot)> = self.txns.iter().map(|e| (e.key().clone(), Arc::clone(e.value()))).collect();
        let mut open: OpenByProducer = BTreeMap::new();
        for (id, slot) in slots {
            let mut guard = slot.lock();
            let Some(current) = guard.as_mut() else { continue };
            if current.status.is_prepare() {
                tracing::info!(transactional_id = id, state = current.status.name(), "completing a transaction interrupted by a restart");
                if let Err(error) = self.complete(&id, current) {
                    tracing::error!(transactional_id = id, %error, "could not complete an interrupted transaction; will retry on the next request");
                }
            }
            // A transaction still in a Prepare state (its markers could not all be written yet) is
            // known too: its partitions are not hanging, and the tick finishes it.
            if current.status == TxnStatus::Ongoing || current.status.is_prepare() {
                open.insert(current.producer_id, (current.producer_epoch, current.partitions.clone()));
            }
        }
        open
    }

    /// How many transactional ids the coordinator holds.
    pub(crate) fn len(&self) -> usize {
        self.txns.len()
    }

    /// Aborts transactions that partitions this broker leads hold open but the coordinator does not
    /// know. Run at start-up for the partitions led from the start (a single node's), and by the
    /// reconciler once this broker leads what the quorum says (a cluster's partitions lead nothing
    /// at start-up). Only the coordinator node may judge: elsewhere every transaction looks unknown.
    pub(crate) fn abort_hanging(&self) {
        self.abort_hanging_in(&self.ongoing());
    }

    /// The transactions this coordinator has ongoing or deciding (Prepare states, whose markers are
    /// on their way), by producer id.
    pub(crate) fn ongoing(&self) -> OpenByProducer {
        let slots: Vec<Slot> = self.txns.iter().map(|e| Arc::clone(e.value())).collect();
        let mut open: OpenByProducer = BTreeMap::new();
        for slot in slots {
            let guard = slot.lock();
            if let Some(current) = guard.as_ref().filter(|c| c.status == TxnStatus::Ongoing || c.status.is_prepare()) {
                open.insert(current.producer_id, (current.producer_epoch, current.partitions.clone()));
            }
        }
        open
    }

    fn abort_hanging_in(&self, open: &OpenByProducer) {
        let now = crate::now_ms();
        // A mirror topic's transactions belong to the source cluster: its markers end them, and
        // promotion aborts what is left. A marker written here would make the copy differ.
        for topic in self.deps.topics.all().into_iter().filter(|t| t.mirror().is_none()) {
            // Markers go only to partitions this broker leads (a follower copies its leader's).
            for partition in topic.partitions.read().iter().filter(|p| p.is_leader()) {
                let hanging: Vec<(i64, i16)> = partition
                    .open_transactions()
                    .into_iter()
                    .filter(|(producer, _)| {
                        open.get(producer).is_none_or(|(_, parts)| !parts.contains(&(topic.name.as_str().to_string(), partition.index)))
                    })
                    .collect();
                for (producer_id, epoch) in hanging {
                    let epoch = open.get(&producer_id).map_or(epoch, |(e, _)| (*e).max(epoch));
                    let marker = TxnMarker { producer_id, producer_epoch: epoch, control: ControlType::Abort, coordinator_epoch: 0 };
                    tracing::warn!(
                        topic = topic.name.as_str(),
                        partition = partition.index,
                        producer_id,
                        "aborting a hanging transaction the coordinator has no record of"
                    );
                    if let Err(error) = partition.append_marker(&marker, now) {
                        tracing::error!(topic = topic.name.as_str(), partition = partition.index, producer_id, %error, "could not abort a hanging transaction");
                    }
                }
            }
        }
    }

    /// Whether any ongoing transaction has staged offsets for this group and partition (OffsetFetch
    /// with require_stable answers UNSTABLE_OFFSET_COMMIT then).
    pub(crate) fn has_pending_offset(&self, group: &str, topic: &str, partition: i32) -> bool {
        self.pending_index.get(&(group.to_string(), topic.to_string(), partition)).is_some_and(|count| *count > 0)
    }

    pub(crate) fn describe(&self, transactional_id: &str) -> Option<TxnView> {
        let slot = self.existing_slot(transactional_id)?;
        let guard = slot.lock();
        guard.as_ref().map(|m| view(transactional_id, m))
    }

    pub(crate) fn list(&self) -> Vec<TxnView> {
        let slots: Vec<(String, Slot)> = self.txns.iter().map(|e| (e.key().clone(), Arc::clone(e.value()))).collect();
        let mut views: Vec<TxnView> = slots.iter().filter_map(|(id, slot)| slot.lock().as_ref().map(|m| view(id, m))).collect();
        views.sort_by(|a, b| a.transactional_id.cmp(&b.transactional_id));
        views
    }

    pub(crate) fn counters(&self) -> TxnCounters {
        *self.counters.lock()
    }

    pub(crate) fn ongoing_count(&self) -> usize {
        self.txns.iter().filter(|e| e.value().try_lock().is_none_or(|g| g.as_ref().is_some_and(|m| m.status == TxnStatus::Ongoing))).count()
    }

    pub(crate) fn close(&self) {
        self.log.close();
    }
}

fn view(transactional_id: &str, metadata: &TxnMetadata) -> TxnView {
    TxnView {
        transactional_id: transactional_id.to_string(),
        producer_id: metadata.producer_id,
        producer_epoch: metadata.producer_epoch,
        state: metadata.status.name(),
        timeout_ms: metadata.timeout_ms,
        start_ms: if metadata.status == TxnStatus::Ongoing { metadata.start_ms } else { -1 },
        partitions: metadata.partitions.iter().cloned().collect(),
        groups: metadata.pending_offsets.keys().cloned().collect(),
    }
}

#[cfg(test)]
mod tests {
    use sluice_storage::AppendMode;

    use super::*;
    use crate::BrokerConfig;
    use crate::broker::Broker;
    use crate::config::TopicConfig;
    use crate::now_ms;
    use crate::record_batch::{BatchBuilder, BatchProducer, RecordRef};

    fn open(dir: &Path, settings: &[(&str, &str)]) -> Arc<Broker> {
        let broker = Broker::open(BrokerConfig::from_settings(settings.iter().copied()).unwrap(), dir).unwrap();
        if broker.topic("t").is_none() {
            broker.create_topic("t", Some(1), TopicConfig::default(), false).unwrap();
        }
        broker
    }

    /// A transactional record from the producer, appended the way a transactional Produce is.
    fn write(broker: &Broker, transactional_id: &str, producer_id: i64, epoch: i16) {
        let partition = broker.partition("t", 0).unwrap();
        let mut batch = BatchBuilder::new(BatchProducer { producer_id, epoch, base_sequence: 0, transactional: true });
        batch.push(&RecordRef { key: None, value: Some(b"v"), headers: &[], timestamp_ms: now_ms() });
        let mut bytes = batch.finish();
        let mode = AppendMode::AssignOffsets { leader_epoch: 0 };
        broker
            .local_coordinators()
            .transactions
            .transactional_append(transactional_id, producer_id, epoch, "t", 0, || partition.append(&mut bytes, mode, now_ms()))
            .unwrap()
            .unwrap();
    }

    /// Issue 10, item 6: EndTxn set PrepareCommit in memory before writing it to the state log; when
    /// the write failed the client was told so, yet the background tick carried the commit out. The
    /// same for InitProducerId's fencing bump. State changes now go to a copy, which is published only
    /// once the state log has it.
    #[test]
    fn a_decision_the_state_log_did_not_take_is_never_acted_on() {
        let dir = tempfile::tempdir().unwrap();
        let broker = open(dir.path(), &[]);
        let txns = &broker.local_coordinators().transactions;
        let (producer_id, epoch) = txns.init_producer_id("tx", 60_000, None).unwrap();
        txns.add_partitions("tx", producer_id, epoch, &[("t".to_string(), 0)]).unwrap();
        write(&broker, "tx", producer_id, epoch);

        txns.log.lock().break_for_tests();
        assert!(matches!(txns.end_txn("tx", producer_id, epoch, true), Err(BrokerError::Storage(_))));
        assert_eq!(txns.describe("tx").unwrap().state, "Ongoing", "the refused commit is not pending in memory");
        txns.abort_expired(now_ms());
        assert_eq!(broker.partition("t", 0).unwrap().last_stable_offset(), 0, "no marker for a decision never recorded");

        assert!(txns.init_producer_id("tx", 60_000, None).is_err());
        let view = txns.describe("tx").unwrap();
        assert_eq!((view.state, view.producer_epoch), ("Ongoing", epoch), "a failed InitProducerId fenced no one");
    }

    /// A broker restarting with a transaction in PrepareCommit opens its quorum partitions as
    /// non-leaders: completing it then skipped them as if gone and recorded it Complete, and once the
    /// partitions led, the hanging-transaction check aborted the committed records. Now the marker
    /// waits (the transaction stays PrepareCommit, and is not taken for a hanging one) until the
    /// partition leads here, and the tick commits it.
    #[test]
    fn a_commit_whose_partition_is_not_led_yet_waits_for_it_and_is_never_aborted() {
        let dir = tempfile::tempdir().unwrap();
        let broker = open(dir.path(), &[]);
        let txns = &broker.local_coordinators().transactions;
        let (producer_id, epoch) = txns.init_producer_id("tx", 60_000, None).unwrap();
        txns.add_partitions("tx", producer_id, epoch, &[("t".to_string(), 0)]).unwrap();
        write(&broker, "tx", producer_id, epoch);
        let partition = broker.topic("t").unwrap().partition(0).unwrap();

        partition.set_leadership(false, 0);
        assert!(matches!(txns.end_txn("tx", producer_id, epoch, true), Err(BrokerError::NotLeader { .. })));
        assert_eq!(txns.describe("tx").unwrap().state, "PrepareCommit", "decided, not complete");

        partition.set_leadership(true, 0);
        txns.abort_hanging();
        assert_eq!(partition.last_stable_offset(), 0, "a transaction in PrepareCommit is not hanging: nothing aborted");
        txns.abort_expired(now_ms());
        assert_eq!(txns.describe("tx").unwrap().state, "CompleteCommit");
        assert_eq!(partition.last_stable_offset(), 2, "the record and the commit marker");
        assert!(partition.open_transactions().is_empty());
    }

    /// State records written before the KIP-360 fields existed still read, with "none" for them.
    #[test]
    fn state_written_by_an_older_broker_still_reads() {
        // The fields as they were, in order (rmp-serde writes a struct as an array, like a tuple).
        let before =
            (7i64, 3i16, 60_000i32, TxnStatus::CompleteCommit, BTreeSet::<(String, i32)>::new(), BTreeMap::<String, ()>::new(), 0i64, 5i64);
        let read: TxnMetadata = rmp_serde::from_slice(&encode(&before).unwrap()).unwrap();
        assert_eq!((read.producer_id, read.producer_epoch, read.status), (7, 3, TxnStatus::CompleteCommit));
        assert_eq!((read.last_producer_id, read.last_producer_epoch), (NO_PRODUCER_ID, NO_PRODUCER_EPOCH));
    }

    /// Issue 10, item 17: an expired transactional id is removed with a tombstone, so it stays gone
    /// after a restart.
    #[test]
    fn an_expired_transactional_id_stays_forgotten_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let settings = [("transactional.id.expiration.ms", "1")];
        {
            let broker = open(dir.path(), &settings);
            broker.local_coordinators().transactions.init_producer_id("gone", 60_000, None).unwrap();
            broker.local_coordinators().transactions.init_producer_id("kept", 60_000, None).unwrap();
            broker.local_coordinators().transactions.abort_expired(now_ms() + 10);
            assert!(broker.local_coordinators().transactions.describe("gone").is_none());
            broker.close();
        }
        let broker = open(dir.path(), &settings);
        assert!(broker.local_coordinators().transactions.describe("gone").is_none());
        assert!(broker.local_coordinators().transactions.list().is_empty());
    }

    /// Issue 10, item 6: the internal logs took batches of at most 1 MiB while TXN_PARTITIONS_MAX and
    /// TXN_OFFSETS_MAX let one transaction's state (one record) grow to hundreds of megabytes, so an
    /// accepted AddPartitionsToTxn or TxnOffsetCommit could fail to persist, and a commit fail to
    /// write its offsets. The largest state the caps allow, and its offsets, must fit.
    #[test]
    fn the_largest_transaction_the_caps_allow_fits_the_internal_logs() {
        let name = |i: usize| format!("{i:0>249}");
        let metadata_max = "m".repeat(COMMIT_METADATA_BYTES_MAX);
        let offset =
            CommittedOffset { offset: i64::MAX, leader_epoch: i32::MAX, metadata: Some(metadata_max), commit_timestamp_ms: i64::MAX };
        let groups: Vec<String> = (0..TXN_GROUPS_MAX).map(|g| format!("{g:0>width$}", width = GROUP_ID_BYTES_MAX)).collect();
        // Every offset in the first group: the largest single commit of the offsets log.
        let first_group: BTreeMap<(String, i32), CommittedOffset> =
            (0..TXN_OFFSETS_MAX).map(|i| ((name(i), i32::MAX - i as i32), offset.clone())).collect();
        let mut pending_offsets: BTreeMap<String, BTreeMap<(String, i32), CommittedOffset>> =
            groups.iter().skip(1).map(|g| (g.clone(), BTreeMap::new())).collect();
        pending_offsets.insert(groups[0].clone(), first_group.clone());
        let metadata = TxnMetadata {
            producer_id: i64::MAX,
            producer_epoch: i16::MAX,
            timeout_ms: i32::MAX,
            status: TxnStatus::PrepareCommit,
            partitions: (0..TXN_PARTITIONS_MAX).map(|i| (name(i), i32::MAX - i as i32)).collect(),
            pending_offsets,
            start_ms: i64::MAX,
            last_update_ms: i64::MAX,
            last_producer_id: i64::MAX,
            last_producer_epoch: i16::MAX,
        };
        let dir = tempfile::tempdir().unwrap();
        let log = KeyedLog::open(dir.path(), TXN_STATE_DIR_NAME, 0, |_, _| {}).unwrap();
        let id = "t".repeat(TRANSACTIONAL_ID_BYTES_MAX);
        log.lock().append(&[(encode(&id).unwrap(), Some(encode(&metadata).unwrap()))], false).expect("the state fits one record");
        let offsets = OffsetStore::open(dir.path(), 0).unwrap();
        let commit: Vec<OffsetWrite> = first_group.into_iter().map(|(k, v)| (k, Some(v))).collect();
        offsets.write(&groups[0], commit, false).expect("its offsets fit one commit");
    }
}
