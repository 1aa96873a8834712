//! The in-process transactional producer: what a transactional Kafka client does, for code running
//! inside the broker. It goes through the same transaction coordinator and the same checked append
//! path as a client's requests, so an in-broker pipeline gets exactly the guarantee a Kafka client
//! gets: its output records and its input progress (committed group offsets) become visible together
//! when `commit` returns, or not at all.
//!
//! ```text
//! let mut producer = host.producer("__sluice-transform-orders-0", 60_000)?;
//! producer.send("orders-clean", 3, &records)?;          // any number of partitions
//! producer.send_offsets("__sluice-transform-orders", &[("orders".into(), 0, next_offset)])?;
//! producer.commit()?;                                    // or producer.abort()
//! ```
//!
//! A second `init` with the same transactional id (a restarted runner) fences this one: its calls then
//! fail with [`HostError::Fenced`], and its open transaction is aborted. Records are split into
//! batches that fit the target topic's `max.message.bytes`. Every method does blocking file I/O.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::ResponseError;

use super::remote::{Peers, TxnIds};
use super::{HostError, StopFlag};
use crate::broker::Broker;
use crate::error::{BrokerError, storage_error_code};
use crate::offsets::CommittedOffset;
use crate::record_batch::{BATCH_HEADER_BYTES, BatchBuilder, BatchProducer, RecordRef};
use crate::topic::Partition;

/// One record to write.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProducerRecord {
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Option<Bytes>)>,
    /// Milliseconds since the epoch; the producer uses the current time when this is negative.
    pub timestamp_ms: i64,
}

pub struct TransactionalProducer {
    broker: Arc<Broker>,
    transactional_id: String,
    producer_id: i64,
    epoch: i16,
    /// Next sequence per partition (idempotence applies inside transactions too).
    sequences: HashMap<(String, i32), i32>,
    /// Partitions and groups already added to the current transaction, and the offset each
    /// partition reached, for the durability wait before commit.
    partitions: HashMap<(String, i32), i64>,
    groups: HashSet<String>,
    /// In a cluster: the coordinators and leaders over the network (`remote`); on a single node, the
    /// broker's own coordinators in process.
    peers: Option<Arc<Peers>>,
    /// The task's stop signal: a cluster call stops retrying once it is raised.
    stop: StopFlag,
}

/// Where one partition's batches go: this broker's copy in process, or its leader over the network.
enum Destination {
    Local(Arc<Partition>),
    Leader(Arc<Peers>),
}

/// A coordinator or partition refusal as a host error.
pub(super) fn refused(action: String, error: ResponseError) -> HostError {
    match error {
        ResponseError::ProducerFenced | ResponseError::InvalidProducerEpoch | ResponseError::InvalidProducerIdMapping => {
            HostError::Fenced { action }
        }
        ResponseError::RequestTimedOut => HostError::TimedOut(action),
        ResponseError::KafkaStorageError => HostError::Storage(action),
        other => HostError::Refused { action, reason: format!("{other:?}") },
    }
}

/// A coordinator failure as a host error: protocol refusals by their code, the rest with their cause.
fn failed(action: String, error: BrokerError) -> HostError {
    match error {
        BrokerError::Protocol(code) => refused(action, code),
        BrokerError::Timeout(_) => HostError::TimedOut(action),
        other => HostError::Storage(format!("{action}: {other}")),
    }
}

impl TransactionalProducer {
    pub(super) fn init(
        broker: Arc<Broker>,
        peers: Option<Arc<Peers>>,
        stop: StopFlag,
        transactional_id: &str,
        timeout_ms: i32,
    ) -> Result<TransactionalProducer, HostError> {
        let (producer_id, epoch) = match &peers {
            Some(peers) => peers.init_producer_id(transactional_id, timeout_ms, &stop)?,
            None => broker
                .local_coordinators()
                .transactions
                .init_producer_id(transactional_id, timeout_ms, None)
                .map_err(|e| failed(format!("initialising transactional id '{transactional_id}'"), e))?,
        };
        Ok(TransactionalProducer {
            broker,
            transactional_id: transactional_id.to_string(),
            producer_id,
            epoch,
            sequences: HashMap::new(),
            partitions: HashMap::new(),
            groups: HashSet::new(),
            peers,
            stop,
        })
    }

    fn ids(&self) -> TxnIds<'_> {
        TxnIds { transactional_id: &self.transactional_id, producer_id: self.producer_id, epoch: self.epoch, stop: &self.stop }
    }

    pub fn transactional_id(&self) -> &str {
        &self.transactional_id
    }

    pub fn producer_id(&self) -> i64 {
        self.producer_id
    }

    pub fn epoch(&self) -> i16 {
        self.epoch
    }

    /// Writes `records` to one partition inside the current transaction (starting one if needed), in
    /// as many batches as the topic's `max.message.bytes` requires, and returns the offset of the
    /// first. Empty input writes nothing and returns -1.
    pub fn send(&mut self, topic: &str, partition: i32, records: &[ProducerRecord]) -> Result<i64, HostError> {
        Ok(self.send_placed(topic, partition, records)?.first().map_or(-1, |&(base_offset, _)| base_offset))
    }

    /// As [`send`](Self::send), but says where every record went: (base offset, record count) of
    /// each batch written, in order. Other writers' batches may lie between them. On a single node
    /// the batches are appended in process through the transaction coordinator's checked path; in
    /// a cluster they go to the partition's leader with acks=all (durable on the ISR when this
    /// returns, so `commit` has nothing left to wait for).
    pub fn send_placed(&mut self, topic: &str, partition: i32, records: &[ProducerRecord]) -> Result<Vec<(i64, usize)>, HostError> {
        let mut placed = Vec::new();
        if records.is_empty() {
            return Ok(placed);
        }
        let key = (topic.to_string(), partition);
        let action = || format!("writing to {topic}-{partition} in transaction '{}'", self.transactional_id);
        let Some(owner) = self.broker.topic(topic) else { return Err(HostError::UnknownTopic(topic.to_string())) };
        owner.check_writable().map_err(HostError::from_broker)?;
        let (destination, limit_bytes) = match &self.peers {
            Some(peers) => {
                if !(0..owner.partition_count()).contains(&partition) {
                    return Err(HostError::UnknownPartition { topic: topic.to_string(), partition });
                }
                let limit = owner.config.read().log_config(self.broker.config()).max_batch_bytes as usize;
                (Destination::Leader(Arc::clone(peers)), limit)
            }
            None => {
                let target = self.broker.partition(topic, partition).map_err(HostError::from_broker)?;
                let limit = target.max_batch_bytes() as usize;
                (Destination::Local(target), limit)
            }
        };
        if !self.partitions.contains_key(&key) {
            match &destination {
                Destination::Leader(peers) => peers.add_partition(&self.ids(), topic, partition)?,
                Destination::Local(_) => self
                    .broker
                    .local_coordinators()
                    .transactions
                    .add_partitions(&self.transactional_id, self.producer_id, self.epoch, std::slice::from_ref(&key))
                    .map_err(|e| failed(action(), e))?,
            }
            self.partitions.insert(key.clone(), 0);
        }
        let now = crate::now_ms();
        let mut remaining = records;
        while !remaining.is_empty() {
            let sequence = self.sequences.get(&key).copied().unwrap_or(0);
            let producer = BatchProducer { producer_id: self.producer_id, epoch: self.epoch, base_sequence: sequence, transactional: true };
            let (batch, taken) = encode_fitting(remaining, producer, limit_bytes, now)
                .map_err(|record_bytes| HostError::RecordTooLarge { action: action(), record_bytes, limit_bytes })?;
            let (base_offset, next_offset) = match &destination {
                Destination::Leader(peers) => {
                    let base_offset = peers.produce(&self.ids(), topic, partition, batch.freeze())?;
                    (base_offset, base_offset + taken as i64)
                }
                Destination::Local(target) => {
                    let appended = self.append_local((topic, partition), target, batch, now, action)?;
                    (appended.base_offset, appended.last_offset + 1)
                }
            };
            placed.push((base_offset, taken));
            self.sequences.insert(key.clone(), sequence.wrapping_add(taken as i32) & i32::MAX);
            self.partitions.insert(key.clone(), next_offset);
            remaining = &remaining[taken..];
        }
        Ok(placed)
    }

    /// Appends one transactional batch to this broker's copy through the coordinator's check (the
    /// producer still owns the transaction).
    fn append_local(
        &self,
        (topic, partition): (&str, i32),
        target: &Partition,
        mut batch: bytes::BytesMut,
        now: i64,
        action: impl Fn() -> String,
    ) -> Result<sluice_storage::AppendResult, HostError> {
        self.broker
            .local_coordinators()
            .transactions
            .transactional_append(&self.transactional_id, self.producer_id, self.epoch, topic, partition, || {
                target.append(&mut batch, sluice_storage::AppendMode::AssignOffsets { leader_epoch: target.leader_epoch() }, now)
            })
            .map_err(|e| failed(action(), e))?
            .map_err(|e| match e {
                sluice_storage::StorageError::Io(..) => HostError::Storage(format!("{}: {e}", action())),
                other => refused(action(), storage_error_code(&other)),
            })
    }

    /// Stages consumer-group offsets (topic, partition, next offset to read) to commit with the
    /// transaction: a runner's input progress.
    pub fn send_offsets(&mut self, group: &str, offsets: &[(String, i32, i64)]) -> Result<(), HostError> {
        let action = || format!("sending offsets for group '{group}' in transaction '{}'", self.transactional_id);
        if let Some(peers) = self.peers.clone() {
            if !self.groups.contains(group) {
                peers.add_offsets(&self.ids(), group)?;
                self.groups.insert(group.to_string());
            }
            return peers.txn_offset_commit(&self.ids(), group, offsets);
        }
        if !self.groups.contains(group) {
            self.broker
                .local_coordinators()
                .transactions
                .add_offsets(&self.transactional_id, self.producer_id, self.epoch, group)
                .map_err(|e| failed(action(), e))?;
            self.groups.insert(group.to_string());
        }
        let now = crate::now_ms();
        let entries = offsets
            .iter()
            .map(|(topic, partition, offset)| ((topic.clone(), *partition), CommittedOffset::from_request(*offset, -1, None, now)))
            .collect();
        let results = self
            .broker
            .local_coordinators()
            .transactions
            .txn_offset_commit(&self.transactional_id, group, self.producer_id, self.epoch, -1, "", entries)
            .map_err(|e| failed(action(), e))?;
        match results.into_iter().flatten().next() {
            Some(error) => Err(refused(action(), error)),
            None => Ok(()),
        }
    }

    /// Commits the current transaction: its records become visible to read_committed consumers and
    /// its offsets become the groups' committed offsets, together. Under fsync-before-ack the records
    /// are made durable first, as a client's acks would have waited for.
    pub fn commit(&mut self) -> Result<(), HostError> {
        if self.partitions.is_empty() && self.groups.is_empty() {
            return Ok(());
        }
        if self.peers.is_none() {
            self.wait_durable()?;
        }
        self.end(true)
    }

    /// Aborts the current transaction: its records stay in the log but read_committed consumers skip
    /// them, and its offsets are dropped.
    pub fn abort(&mut self) -> Result<(), HostError> {
        if self.partitions.is_empty() && self.groups.is_empty() {
            return Ok(());
        }
        self.end(false)
    }

    fn end(&mut self, commit: bool) -> Result<(), HostError> {
        let result = match &self.peers {
            Some(peers) => peers.end_txn(&self.ids(), commit),
            None => {
                self.broker.local_coordinators().transactions.end_txn(&self.transactional_id, self.producer_id, self.epoch, commit).map_err(
                    |e| failed(format!("{} transaction '{}'", if commit { "committing" } else { "aborting" }, self.transactional_id), e),
                )
            }
        };
        // A transaction that did not end is still open: a following `abort` must send EndTxn
        // rather than find nothing to do (the transaction would then hang until its timeout). A
        // fenced producer's transaction is its successor's to end.
        if result.as_ref().is_ok() || result.as_ref().is_err_and(HostError::is_fenced) {
            self.partitions.clear();
            self.groups.clear();
        }
        result
    }

    fn wait_durable(&self) -> Result<(), HostError> {
        for ((topic, index), end) in &self.partitions {
            let Ok(partition) = self.broker.partition(topic, *index) else { continue };
            partition.wait_durable_blocking(*end).map_err(|e| match e {
                BrokerError::Timeout(_) => HostError::TimedOut(format!("making {topic}-{index} durable")),
                other => HostError::Storage(format!("making {topic}-{index} durable: {other}")),
            })?;
        }
        Ok(())
    }
}

/// Encodes a prefix of `records` into one batch of at most `limit_bytes`; returns it and how many
/// records it holds (at least one), or the size of a first record that alone exceeds the limit.
fn encode_fitting(
    records: &[ProducerRecord],
    producer: BatchProducer,
    limit_bytes: usize,
    now: i64,
) -> Result<(bytes::BytesMut, usize), usize> {
    let mut builder = BatchBuilder::new(producer);
    let mut taken = 0;
    for record in records {
        let timestamp_ms = if record.timestamp_ms >= 0 { record.timestamp_ms } else { now };
        let view = RecordRef { key: record.key.as_deref(), value: record.value.as_deref(), headers: &record.headers, timestamp_ms };
        let bytes = builder.record_bytes(&view);
        if builder.size_bytes() + bytes > limit_bytes {
            if taken == 0 {
                return Err(BATCH_HEADER_BYTES + bytes);
            }
            break;
        }
        builder.push(&view);
        taken += 1;
    }
    Ok((builder.finish(), taken))
}
