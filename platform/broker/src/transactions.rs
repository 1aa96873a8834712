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
//! Where Kafka's coordinator sends WriteTxnMarkers to partition leaders, this node appends the markers
//! itself, synchronously, before answering EndTxn. Recovery at start-up finishes every transaction
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

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use dashmap::DashMap;
use kafka_protocol::ResponseError;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sluice_storage::{ControlType, StorageError, TxnMarker};

use crate::broker::Broker;
use crate::error::BrokerError;
use crate::internal_log::{KeyedEntry, KeyedLog};
use crate::offsets::{COMMIT_METADATA_BYTES_MAX, CommittedOffset, OffsetWrite};

pub const TXN_STATE_DIR_NAME: &str = "__transaction_state-0";
/// Longest transactional id accepted (Kafka sets none; ids are usually an application id plus a task).
pub const TRANSACTIONAL_ID_BYTES_MAX: usize = 4096;
/// Most partitions one transaction may touch.
pub const TXN_PARTITIONS_MAX: usize = 10_000;
/// Most consumer groups one transaction may carry offsets for.
pub const TXN_GROUPS_MAX: usize = 64;
/// Most offsets one transaction may carry across its groups.
pub const TXN_OFFSETS_MAX: usize = 100_000;
/// Rough bytes per live transactional id in the state log, for the rewrite heuristic.
const ENTRY_BYTES_ESTIMATE: u64 = 256;

/// Kafka's transaction states (the names DescribeTransactions and ListTransactions report).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnStatus {
    Empty,
    Ongoing,
    PrepareCommit,
    PrepareAbort,
    CompleteCommit,
    CompleteAbort,
}

impl TxnStatus {
    pub fn name(self) -> &'static str {
        match self {
            TxnStatus::Empty => "Empty",
            TxnStatus::Ongoing => "Ongoing",
            TxnStatus::PrepareCommit => "PrepareCommit",
            TxnStatus::PrepareAbort => "PrepareAbort",
            TxnStatus::CompleteCommit => "CompleteCommit",
            TxnStatus::CompleteAbort => "CompleteAbort",
        }
    }

    pub const ALL: [TxnStatus; 6] = [
        TxnStatus::Empty,
        TxnStatus::Ongoing,
        TxnStatus::PrepareCommit,
        TxnStatus::PrepareAbort,
        TxnStatus::CompleteCommit,
        TxnStatus::CompleteAbort,
    ];
}

/// What the coordinator keeps per transactional id; each change is one record in the state log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TxnMetadata {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub timeout_ms: i32,
    pub status: TxnStatus,
    /// (topic, partition) written in the current transaction.
    pub partitions: BTreeSet<(String, i32)>,
    /// Groups added with AddOffsetsToTxn and the offsets sent for them (TxnOffsetCommit), which
    /// become committed offsets only when the transaction commits.
    pub pending_offsets: BTreeMap<String, BTreeMap<(String, i32), CommittedOffset>>,
    /// When the current transaction started (its first partition or group); 0 when none.
    pub start_ms: i64,
    pub last_update_ms: i64,
}

/// A transaction as DescribeTransactions / ListTransactions / the admin API show it.
#[derive(Debug, Clone, Serialize)]
pub struct TxnView {
    pub transactional_id: String,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub state: &'static str,
    pub timeout_ms: i32,
    pub start_ms: i64,
    pub partitions: Vec<(String, i32)>,
    pub groups: Vec<String>,
}

/// Per-partition outcome of a request naming many partitions: `None` for success.
pub type PartitionResults = Vec<((String, i32), Option<ResponseError>)>;

/// Per-id slot: `None` until InitProducerId creates the id.
type Slot = Arc<Mutex<Option<TxnMetadata>>>;

#[derive(Debug, Default, Clone, Copy)]
pub struct TxnCounters {
    pub committed: u64,
    pub aborted: u64,
    pub timed_out: u64,
    pub fenced: u64,
}

pub struct TransactionCoordinator {
    log: KeyedLog,
    txns: DashMap<String, Slot>,
    /// Producer id → transactional id, for checks on transactional produce.
    by_producer: DashMap<i64, String>,
    /// (group, topic, partition) → how many open transactions stage an offset for it, so OffsetFetch
    /// with require_stable answers without touching (or waiting for) any transaction's lock.
    pending_index: DashMap<(String, String, i32), usize>,
    max_timeout_ms: i32,
    /// Whether state changes that must survive a crash are fsynced (fsync-before-ack brokers), or
    /// left to the page cache like acknowledged records are (the default policy).
    fsync: bool,
    counters: Mutex<TxnCounters>,
}

fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, BrokerError> {
    rmp_serde::to_vec(value).map_err(|e| BrokerError::Storage(e.to_string()))
}

/// A storage or encoding failure while the coordinator records or completes a transaction.
fn storage_failure(error: impl std::fmt::Display) -> ResponseError {
    tracing::error!(%error, "transaction coordinator storage failure");
    ResponseError::KafkaStorageError
}

/// The epoch after `epoch`, or `None` when it would run out and the id needs a new producer id.
fn bump(epoch: i16) -> Option<i16> {
    (epoch < i16::MAX - 1).then_some(epoch + 1)
}

impl TransactionCoordinator {
    /// Opens (replays) the state log. `fsync`: make decisions durable against power loss before acting
    /// on them, as the broker's flush policy does for records (`log.flush.interval.messages=1`).
    pub fn open(data_dir: &Path, now: i64, max_timeout_ms: i32, fsync: bool) -> Result<TransactionCoordinator, String> {
        let mut state: BTreeMap<String, TxnMetadata> = BTreeMap::new();
        let log = KeyedLog::open(data_dir, TXN_STATE_DIR_NAME, now, |key, value| {
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
        })?;
        let coordinator = TransactionCoordinator {
            log,
            txns: DashMap::new(),
            by_producer: DashMap::new(),
            pending_index: DashMap::new(),
            max_timeout_ms,
            fsync,
            counters: Mutex::default(),
        };
        for (id, metadata) in state {
            coordinator.by_producer.insert(metadata.producer_id, id.clone());
            for (group, offsets) in &metadata.pending_offsets {
                for (topic, partition) in offsets.keys() {
                    coordinator.index_pending(group, topic, *partition);
                }
            }
            coordinator.txns.insert(id, Arc::new(Mutex::new(Some(metadata))));
        }
        Ok(coordinator)
    }

    fn slot(&self, transactional_id: &str) -> Slot {
        if let Some(slot) = self.txns.get(transactional_id) {
            return Arc::clone(slot.value());
        }
        Arc::clone(self.txns.entry(transactional_id.to_string()).or_default().value())
    }

    fn existing_slot(&self, transactional_id: &str) -> Option<Slot> {
        self.txns.get(transactional_id).map(|s| Arc::clone(s.value()))
    }

    /// Writes the id's new state to the state log; `must_survive` changes are fsynced when the broker
    /// fsyncs before acknowledging. Under the page-cache policy nothing is fsynced, exactly as for the
    /// records themselves: a process crash loses nothing (the page cache survives it), a power cut may
    /// lose the last moments of both records and decisions, consistently.
    fn persist(&self, transactional_id: &str, metadata: &TxnMetadata, must_survive: bool) -> Result<(), ResponseError> {
        let fsync = must_survive && self.fsync;
        let entry: KeyedEntry = (encode(transactional_id).map_err(storage_failure)?, Some(encode(metadata).map_err(storage_failure)?));
        let mut log = self.log.lock();
        log.append(&[entry], fsync).map_err(storage_failure)?;
        if log.wants_rewrite(self.txns.len(), ENTRY_BYTES_ESTIMATE) {
            drop(log);
            self.rewrite_log(transactional_id, metadata);
        }
        Ok(())
    }

    /// Compacts the state log. The caller holds `current`'s slot and passes its state; other slots
    /// are only tried: if one is busy the rewrite waits for a later persist rather than block.
    fn rewrite_log(&self, current: &str, current_state: &TxnMetadata) {
        // The log lock first: no other id can append between the snapshot and the swap (one that is
        // waiting for it holds its slot, so the snapshot below gives up instead of missing its change).
        let mut log = self.log.lock();
        let slots: Vec<(String, Slot)> = self.txns.iter().map(|e| (e.key().clone(), Arc::clone(e.value()))).collect();
        let mut live = Vec::with_capacity(slots.len());
        for (id, slot) in slots {
            let encoded = if id == current {
                (encode(&id), encode(current_state))
            } else {
                let Some(guard) = slot.try_lock() else { return };
                match guard.as_ref() {
                    Some(metadata) => (encode(&id), encode(metadata)),
                    None => continue,
                }
            };
            match encoded {
                (Ok(k), Ok(v)) => live.push((k, v)),
                _ => return,
            }
        }
        if let Err(error) = log.rewrite(&live) {
            tracing::warn!(%error, "transaction state log rewrite failed; keeping the current log");
        }
    }

    /// InitProducerId for a transactional id: creates the id, or bumps its epoch (fencing the previous
    /// producer and aborting its open transaction). `expected` is the (producer id, epoch) a KIP-360
    /// client sends to recover; it must match the current ones.
    pub fn init_producer_id(
        &self,
        broker: &Broker,
        transactional_id: &str,
        timeout_ms: i32,
        expected: Option<(i64, i16)>,
    ) -> Result<(i64, i16), ResponseError> {
        if transactional_id.len() > TRANSACTIONAL_ID_BYTES_MAX {
            return Err(ResponseError::InvalidRequest);
        }
        if timeout_ms <= 0 || timeout_ms > self.max_timeout_ms {
            return Err(ResponseError::InvalidTransactionTimeout);
        }
        let now = crate::now_ms();
        let slot = self.slot(transactional_id);
        let mut guard = slot.lock();
        let Some(metadata) = guard.as_mut() else {
            let producer_id = broker.allocate_producer_id().map_err(|e| e.kafka())?;
            let metadata = TxnMetadata {
                producer_id,
                producer_epoch: 0,
                timeout_ms,
                status: TxnStatus::Empty,
                partitions: BTreeSet::new(),
                pending_offsets: BTreeMap::new(),
                start_ms: 0,
                last_update_ms: now,
            };
            self.persist(transactional_id, &metadata, true)?;
            self.by_producer.insert(producer_id, transactional_id.to_string());
            *guard = Some(metadata);
            tracing::info!(transactional_id, producer_id, "registered a transactional id");
            return Ok((producer_id, 0));
        };
        if let Some((producer_id, epoch)) = expected
            && (producer_id != metadata.producer_id || epoch != metadata.producer_epoch)
        {
            return Err(ResponseError::ProducerFenced);
        }
        match metadata.status {
            TxnStatus::PrepareCommit | TxnStatus::PrepareAbort => {
                // A completion that failed earlier: finish it, then fence its producer like any other.
                self.complete(broker, transactional_id, metadata).map_err(|_| ResponseError::ConcurrentTransactions)?;
                self.bump_epoch(broker, metadata)?;
            }
            TxnStatus::Ongoing => {
                // The previous producer's transaction: abort it under a new epoch, which fences it.
                self.fence_and_abort(broker, transactional_id, metadata, "a new producer initialised the transactional id")?;
                self.counters.lock().fenced += 1;
            }
            TxnStatus::Empty | TxnStatus::CompleteCommit | TxnStatus::CompleteAbort => {
                self.bump_epoch(broker, metadata)?;
            }
        }
        metadata.timeout_ms = timeout_ms;
        metadata.status = TxnStatus::Empty;
        metadata.partitions.clear();
        self.release_pending(metadata);
        metadata.start_ms = 0;
        metadata.last_update_ms = now;
        self.persist(transactional_id, metadata, true)?;
        self.by_producer.insert(metadata.producer_id, transactional_id.to_string());
        Ok((metadata.producer_id, metadata.producer_epoch))
    }

    /// Moves the id to the next epoch, or to a fresh producer id when the epoch space is used up.
    fn bump_epoch(&self, broker: &Broker, metadata: &mut TxnMetadata) -> Result<(), ResponseError> {
        match bump(metadata.producer_epoch) {
            Some(next) => metadata.producer_epoch = next,
            None => {
                let fresh = broker.allocate_producer_id().map_err(|e| e.kafka())?;
                self.by_producer.remove(&metadata.producer_id);
                metadata.producer_id = fresh;
                metadata.producer_epoch = 0;
            }
        }
        Ok(())
    }

    /// Aborts the ongoing transaction under a bumped epoch: the markers carry the new epoch, so the
    /// old producer's later writes fail at every partition it touched.
    fn fence_and_abort(&self, broker: &Broker, transactional_id: &str, metadata: &mut TxnMetadata, why: &str) -> Result<(), ResponseError> {
        let old_epoch = metadata.producer_epoch;
        let old_producer = metadata.producer_id;
        if let Some(next) = bump(metadata.producer_epoch) {
            metadata.producer_epoch = next;
        }
        metadata.status = TxnStatus::PrepareAbort;
        metadata.last_update_ms = crate::now_ms();
        self.persist(transactional_id, metadata, true)?;
        tracing::info!(
            transactional_id,
            producer_id = old_producer,
            old_epoch,
            new_epoch = metadata.producer_epoch,
            why,
            "aborting a transaction and fencing its producer"
        );
        self.complete(broker, transactional_id, metadata)?;
        if metadata.producer_epoch == old_epoch {
            // The epoch space ran out: the next InitProducerId moves to a new producer id.
            self.bump_epoch(broker, metadata)?;
        }
        Ok(())
    }

    /// Writes the markers (and, on commit, the offsets) of a transaction in a Prepare state, then
    /// records it Complete.
    fn complete(&self, broker: &Broker, transactional_id: &str, metadata: &mut TxnMetadata) -> Result<(), ResponseError> {
        let (control, complete) = match metadata.status {
            TxnStatus::PrepareCommit => (ControlType::Commit, TxnStatus::CompleteCommit),
            TxnStatus::PrepareAbort => (ControlType::Abort, TxnStatus::CompleteAbort),
            _ => return Ok(()),
        };
        let marker =
            TxnMarker { producer_id: metadata.producer_id, producer_epoch: metadata.producer_epoch, control, coordinator_epoch: 0 };
        let now = crate::now_ms();
        for (topic, index) in &metadata.partitions {
            let Ok(partition) = broker.partition(topic, *index) else {
                tracing::warn!(
                    transactional_id,
                    topic,
                    partition = index,
                    "partition of a transaction no longer exists; no marker written"
                );
                continue;
            };
            let appended = partition.append_marker(&marker, now).and_then(|_| {
                // Under fsync-before-ack the marker must be durable before the offsets and the
                // Complete record that presuppose it: otherwise a power cut could keep those and
                // lose the marker, and recovery would abort a committed transaction.
                if self.fsync { partition.flush_blocking() } else { Ok(()) }
            });
            match appended {
                Ok(_) => {}
                Err(StorageError::InvalidProducerEpoch { current, got, .. }) => {
                    // A newer epoch already wrote here: this transaction cannot be open in it.
                    tracing::warn!(
                        transactional_id,
                        topic,
                        partition = index,
                        current,
                        got,
                        "marker older than the partition's producer epoch; skipped"
                    );
                }
                Err(error) => {
                    tracing::error!(transactional_id, topic, partition = index, %error, "cannot write a transaction marker; the transaction stays in {}", metadata.status.name());
                    return Err(ResponseError::KafkaStorageError);
                }
            }
        }
        if control == ControlType::Commit {
            let fsync = broker.config.flush_before_ack();
            for (group, offsets) in &metadata.pending_offsets {
                let writes: Vec<OffsetWrite> = offsets.iter().map(|(k, v)| (k.clone(), Some(v.clone()))).collect();
                broker.offsets.write(group, writes, fsync).map_err(storage_failure)?;
            }
        }
        metadata.status = complete;
        metadata.partitions.clear();
        self.release_pending(metadata);
        metadata.start_ms = 0;
        metadata.last_update_ms = now;
        // Not fsynced: if this record is lost, recovery completes the transaction again, and markers
        // and offsets written twice change nothing.
        self.persist(transactional_id, metadata, false)?;
        let mut counters = self.counters.lock();
        match control {
            ControlType::Commit => counters.committed += 1,
            ControlType::Abort => counters.aborted += 1,
        }
        Ok(())
    }

    /// Checks that a request comes from the id's current producer.
    fn check_producer(metadata: &TxnMetadata, producer_id: i64, epoch: i16) -> Result<(), ResponseError> {
        if producer_id != metadata.producer_id {
            return Err(ResponseError::InvalidProducerIdMapping);
        }
        if epoch < metadata.producer_epoch {
            return Err(ResponseError::ProducerFenced);
        }
        if epoch > metadata.producer_epoch {
            return Err(ResponseError::InvalidProducerEpoch);
        }
        Ok(())
    }

    /// Locks the id's state for a request from `producer_id`/`epoch` that may extend the transaction.
    fn with_open_txn<T>(
        &self,
        transactional_id: &str,
        producer_id: i64,
        epoch: i16,
        f: impl FnOnce(&mut TxnMetadata) -> Result<T, ResponseError>,
    ) -> Result<T, ResponseError> {
        let slot = self.existing_slot(transactional_id).ok_or(ResponseError::InvalidProducerIdMapping)?;
        let mut guard = slot.lock();
        let metadata = guard.as_mut().ok_or(ResponseError::InvalidProducerIdMapping)?;
        Self::check_producer(metadata, producer_id, epoch)?;
        match metadata.status {
            TxnStatus::PrepareCommit | TxnStatus::PrepareAbort => Err(ResponseError::ConcurrentTransactions),
            _ => f(metadata),
        }
    }

    fn begin_if_needed(&self, metadata: &mut TxnMetadata, now: i64) -> bool {
        if metadata.status == TxnStatus::Ongoing {
            return false;
        }
        metadata.status = TxnStatus::Ongoing;
        metadata.partitions.clear();
        self.release_pending(metadata);
        metadata.start_ms = now;
        true
    }

    fn index_pending(&self, group: &str, topic: &str, partition: i32) {
        *self.pending_index.entry((group.to_string(), topic.to_string(), partition)).or_insert(0) += 1;
    }

    /// Drops the transaction's staged offsets, and their entries in the require_stable index.
    fn release_pending(&self, metadata: &mut TxnMetadata) {
        for (group, offsets) in std::mem::take(&mut metadata.pending_offsets) {
            for (topic, partition) in offsets.into_keys() {
                let key = (group.clone(), topic, partition);
                self.pending_index.remove_if_mut(&key, |_, count| {
                    *count = count.saturating_sub(1);
                    *count == 0
                });
            }
        }
    }

    /// AddPartitionsToTxn. Unknown partitions fail the whole request (the others get
    /// OPERATION_NOT_ATTEMPTED), as in Kafka. Returns a per-partition result.
    pub fn add_partitions(
        &self,
        broker: &Broker,
        transactional_id: &str,
        producer_id: i64,
        epoch: i16,
        partitions: &[(String, i32)],
    ) -> Result<PartitionResults, ResponseError> {
        self.with_open_txn(transactional_id, producer_id, epoch, |metadata| {
            let unknown: Vec<bool> = partitions.iter().map(|(t, p)| broker.partition(t, *p).is_err()).collect();
            if unknown.iter().any(|u| *u) {
                return Ok(partitions
                    .iter()
                    .zip(unknown)
                    .map(|(tp, u)| {
                        (tp.clone(), Some(if u { ResponseError::UnknownTopicOrPartition } else { ResponseError::OperationNotAttempted }))
                    })
                    .collect());
            }
            let now = crate::now_ms();
            let mut changed = self.begin_if_needed(metadata, now);
            let new: Vec<&(String, i32)> = partitions.iter().filter(|tp| !metadata.partitions.contains(*tp)).collect();
            if metadata.partitions.len() + new.len() > TXN_PARTITIONS_MAX {
                tracing::warn!(transactional_id, limit = TXN_PARTITIONS_MAX, "transaction refused: too many partitions");
                return Err(ResponseError::InvalidRequest);
            }
            for tp in new {
                metadata.partitions.insert(tp.clone());
                changed = true;
            }
            if changed {
                metadata.last_update_ms = now;
                self.persist(transactional_id, metadata, true)?;
            }
            Ok(partitions.iter().map(|tp| (tp.clone(), None)).collect())
        })
    }

    /// AddOffsetsToTxn: the transaction will carry offsets for `group`.
    pub fn add_offsets(&self, transactional_id: &str, producer_id: i64, epoch: i16, group: &str) -> Result<(), ResponseError> {
        if group.is_empty() {
            return Err(ResponseError::InvalidGroupId);
        }
        self.with_open_txn(transactional_id, producer_id, epoch, |metadata| {
            let now = crate::now_ms();
            let began = self.begin_if_needed(metadata, now);
            if !began && metadata.pending_offsets.contains_key(group) {
                return Ok(());
            }
            if metadata.pending_offsets.len() >= TXN_GROUPS_MAX {
                tracing::warn!(transactional_id, limit = TXN_GROUPS_MAX, "transaction refused: too many groups");
                return Err(ResponseError::InvalidRequest);
            }
            metadata.pending_offsets.entry(group.to_string()).or_default();
            metadata.last_update_ms = now;
            self.persist(transactional_id, metadata, true)
        })
    }

    /// TxnOffsetCommit: stages offsets for a group added to the ongoing transaction. The group
    /// membership the client claims (KIP-447) is checked when it sends one.
    #[allow(clippy::too_many_arguments)]
    pub fn txn_offset_commit(
        &self,
        broker: &Broker,
        transactional_id: &str,
        group: &str,
        producer_id: i64,
        epoch: i16,
        generation: i32,
        member_id: &str,
        offsets: Vec<((String, i32), CommittedOffset)>,
    ) -> Result<PartitionResults, ResponseError> {
        if !member_id.is_empty() && generation >= 0 {
            match broker.groups.check_commit(group, member_id, generation) {
                Ok(()) | Err(ResponseError::RebalanceInProgress) => {}
                Err(error) => return Err(error),
            }
        }
        self.with_open_txn(transactional_id, producer_id, epoch, |metadata| {
            if metadata.status != TxnStatus::Ongoing || !metadata.pending_offsets.contains_key(group) {
                return Err(ResponseError::InvalidTxnState);
            }
            let total: usize = metadata.pending_offsets.values().map(BTreeMap::len).sum();
            if total + offsets.len() > TXN_OFFSETS_MAX {
                tracing::warn!(transactional_id, limit = TXN_OFFSETS_MAX, "transaction refused: too many offsets");
                return Err(ResponseError::InvalidRequest);
            }
            let mut results = Vec::with_capacity(offsets.len());
            let mut accepted = Vec::new();
            for (key, offset) in offsets {
                let error = if broker.partition(&key.0, key.1).is_err() {
                    Some(ResponseError::UnknownTopicOrPartition)
                } else if offset.metadata.as_ref().is_some_and(|m| m.len() > COMMIT_METADATA_BYTES_MAX) {
                    Some(ResponseError::OffsetMetadataTooLarge)
                } else {
                    accepted.push((key.clone(), offset));
                    None
                };
                results.push((key, error));
            }
            if !accepted.is_empty() {
                let staged = metadata.pending_offsets.entry(group.to_string()).or_default();
                let mut fresh = Vec::new();
                for (key, offset) in accepted {
                    if staged.insert(key.clone(), offset).is_none() {
                        fresh.push(key);
                    }
                }
                for (topic, partition) in fresh {
                    self.index_pending(group, &topic, partition);
                }
                metadata.last_update_ms = crate::now_ms();
                self.persist(transactional_id, metadata, true)?;
            }
            Ok(results)
        })
    }

    /// EndTxn: commit or abort the ongoing transaction. Retrying a finished EndTxn with the same
    /// decision succeeds; the opposite decision is INVALID_TXN_STATE.
    pub fn end_txn(
        &self,
        broker: &Broker,
        transactional_id: &str,
        producer_id: i64,
        epoch: i16,
        commit: bool,
    ) -> Result<(), ResponseError> {
        let slot = self.existing_slot(transactional_id).ok_or(ResponseError::InvalidProducerIdMapping)?;
        let mut guard = slot.lock();
        let metadata = guard.as_mut().ok_or(ResponseError::InvalidProducerIdMapping)?;
        Self::check_producer(metadata, producer_id, epoch)?;
        match (metadata.status, commit) {
            (TxnStatus::Ongoing, _) => {
                metadata.status = if commit { TxnStatus::PrepareCommit } else { TxnStatus::PrepareAbort };
                metadata.last_update_ms = crate::now_ms();
                self.persist(transactional_id, metadata, true)?;
                self.complete(broker, transactional_id, metadata)
            }
            (TxnStatus::PrepareCommit, true) | (TxnStatus::PrepareAbort, false) => self.complete(broker, transactional_id, metadata),
            (TxnStatus::CompleteCommit, true) | (TxnStatus::CompleteAbort, false) => Ok(()),
            _ => Err(ResponseError::InvalidTxnState),
        }
    }

    /// Runs `append` for a transactional produce from `producer_id`/`epoch` to (topic, partition),
    /// after checking that the producer's transaction is open and holds that partition. The id's lock
    /// is held across the append, so it cannot interleave with the transaction's completion.
    /// `transactional_id` is the id the request names: the producer id must belong to it.
    pub fn transactional_append<T>(
        &self,
        transactional_id: &str,
        producer_id: i64,
        epoch: i16,
        topic: &str,
        partition: i32,
        append: impl FnOnce() -> T,
    ) -> Result<T, ResponseError> {
        if self.by_producer.get(&producer_id).is_none_or(|owner| owner.value() != transactional_id) {
            return Err(ResponseError::InvalidProducerIdMapping);
        }
        let slot = self.existing_slot(transactional_id).ok_or(ResponseError::InvalidProducerIdMapping)?;
        let guard = slot.lock();
        let metadata = guard.as_ref().ok_or(ResponseError::InvalidProducerIdMapping)?;
        if producer_id != metadata.producer_id {
            return Err(ResponseError::InvalidProducerIdMapping);
        }
        if epoch != metadata.producer_epoch {
            return Err(ResponseError::InvalidProducerEpoch);
        }
        if metadata.status != TxnStatus::Ongoing || !metadata.partitions.contains(&(topic.to_string(), partition)) {
            return Err(ResponseError::InvalidTxnState);
        }
        Ok(append())
    }

    /// Aborts (and fences) transactions open longer than their `transaction.timeout.ms`, and retries
    /// completions that failed.
    pub fn abort_expired(&self, broker: &Broker, now: i64) {
        let slots: Vec<(String, Slot)> = self.txns.iter().map(|e| (e.key().clone(), Arc::clone(e.value()))).collect();
        for (id, slot) in slots {
            let mut guard = slot.lock();
            let Some(metadata) = guard.as_mut() else { continue };
            if matches!(metadata.status, TxnStatus::PrepareCommit | TxnStatus::PrepareAbort) {
                // A completion that failed (a marker write error): retry it here, so partitions do not
                // wait for the transactional id's next request, which may never come.
                if let Err(error) = self.complete(broker, &id, metadata) {
                    tracing::warn!(transactional_id = id, ?error, "retrying an interrupted transaction completion failed; will retry");
                }
                continue;
            }
            if metadata.status != TxnStatus::Ongoing || now - metadata.start_ms <= i64::from(metadata.timeout_ms) {
                continue;
            }
            match self.fence_and_abort(broker, &id, metadata, "transaction.timeout.ms expired") {
                Ok(()) => self.counters.lock().timed_out += 1,
                Err(error) => tracing::error!(transactional_id = id, %error, "could not abort an expired transaction"),
            }
        }
    }

    /// Start-up recovery, after every partition is open: finish transactions a crash left in a
    /// Prepare state, then abort transactions that partitions hold open but the coordinator does not
    /// (their last stable offset would otherwise never move).
    pub fn recover(&self, broker: &Broker) {
        let slots: Vec<(String, Slot)> = self.txns.iter().map(|e| (e.key().clone(), Arc::clone(e.value()))).collect();
        let mut open: BTreeMap<i64, (i16, BTreeSet<(String, i32)>)> = BTreeMap::new();
        for (id, slot) in slots {
            let mut guard = slot.lock();
            let Some(metadata) = guard.as_mut() else { continue };
            if matches!(metadata.status, TxnStatus::PrepareCommit | TxnStatus::PrepareAbort) {
                tracing::info!(transactional_id = id, state = metadata.status.name(), "completing a transaction interrupted by a restart");
                if let Err(error) = self.complete(broker, &id, metadata) {
                    tracing::error!(transactional_id = id, %error, "could not complete an interrupted transaction; will retry on the next request");
                }
            }
            if metadata.status == TxnStatus::Ongoing {
                open.insert(metadata.producer_id, (metadata.producer_epoch, metadata.partitions.clone()));
            }
        }
        let now = crate::now_ms();
        for topic in broker.topics() {
            for partition in topic.partitions.read().iter() {
                let hanging: Vec<(i64, i16)> = {
                    let log = partition.log.read();
                    log.ongoing_transactions()
                        .into_iter()
                        .filter(|(producer, _)| {
                            open.get(producer).is_none_or(|(_, parts)| !parts.contains(&(topic.name.as_str().to_string(), partition.index)))
                        })
                        .map(|(producer, _)| (producer, log.producer_epoch(producer).unwrap_or(0)))
                        .collect()
                };
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
    pub fn has_pending_offset(&self, group: &str, topic: &str, partition: i32) -> bool {
        self.pending_index.get(&(group.to_string(), topic.to_string(), partition)).is_some_and(|count| *count > 0)
    }

    pub fn describe(&self, transactional_id: &str) -> Option<TxnView> {
        let slot = self.existing_slot(transactional_id)?;
        let guard = slot.lock();
        guard.as_ref().map(|m| view(transactional_id, m))
    }

    pub fn list(&self) -> Vec<TxnView> {
        let slots: Vec<(String, Slot)> = self.txns.iter().map(|e| (e.key().clone(), Arc::clone(e.value()))).collect();
        let mut views: Vec<TxnView> = slots.iter().filter_map(|(id, slot)| slot.lock().as_ref().map(|m| view(id, m))).collect();
        views.sort_by(|a, b| a.transactional_id.cmp(&b.transactional_id));
        views
    }

    pub fn counters(&self) -> TxnCounters {
        *self.counters.lock()
    }

    pub fn ongoing_count(&self) -> usize {
        self.txns.iter().filter(|e| e.value().try_lock().is_none_or(|g| g.as_ref().is_some_and(|m| m.status == TxnStatus::Ongoing))).count()
    }

    pub fn close(&self) {
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
