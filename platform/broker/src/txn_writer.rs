//! The in-process transactional producer: what a transactional Kafka client does, for code running
//! inside the broker (Wasm transforms, connectors, mirrors). It goes through the same transaction
//! coordinator and the same checked append path as a client's requests, so an in-broker pipeline gets
//! exactly the guarantee a Kafka client gets: its output records and its input progress (committed
//! group offsets) become visible together when `commit` returns, or not at all.
//!
//! ```text
//! let mut writer = TransactionalProducer::init(broker, "transform-orders-0", 60_000)?;
//! writer.send("orders-clean", 3, &records)?;           // any number of partitions
//! writer.send_offsets("transform-orders", &[("orders".into(), 0, next_offset)])?;
//! writer.commit()?;                                       // or writer.abort()
//! ```
//!
//! A second `init` with the same transactional id (a restarted runner) fences this one: its calls then
//! fail with PRODUCER_FENCED / INVALID_PRODUCER_EPOCH, and its open transaction is aborted.
//! Every method does blocking file I/O: call them from a blocking context.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use kafka_protocol::ResponseError;
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType};
use sluice_storage::AppendMode;

use crate::broker::Broker;
use crate::error::{BrokerError, storage_error_code};
use crate::offsets::CommittedOffset;
use crate::topic::FlushPolicy;

/// Longest a commit waits for its records' fsync under fsync-before-ack (a produce request's default
/// timeout); after it the commit fails and the caller aborts.
const DURABILITY_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// One record to write.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OutRecord {
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Option<Bytes>)>,
    /// Milliseconds since the epoch; the writer uses the current time when this is negative.
    pub timestamp_ms: i64,
}

/// Why a transactional operation failed: the Kafka error a client would have seen, and what was
/// being done.
#[derive(Debug, thiserror::Error)]
#[error("{action}: {error:?}")]
pub struct TxnError {
    pub action: String,
    pub error: ResponseError,
}

impl TxnError {
    fn new(action: impl Into<String>, error: ResponseError) -> TxnError {
        TxnError { action: action.into(), error }
    }

    /// Another producer with the same transactional id took over: this one must stop.
    pub fn is_fenced(&self) -> bool {
        matches!(self.error, ResponseError::ProducerFenced | ResponseError::InvalidProducerEpoch | ResponseError::InvalidProducerIdMapping)
    }
}

impl From<TxnError> for BrokerError {
    fn from(error: TxnError) -> BrokerError {
        BrokerError::Storage(error.to_string())
    }
}

pub struct TransactionalProducer {
    broker: Arc<Broker>,
    transactional_id: String,
    producer_id: i64,
    epoch: i16,
    /// Next sequence per partition (idempotence applies inside transactions too).
    sequences: HashMap<(String, i32), i32>,
    /// Partitions and groups already added to the current transaction, and the offsets each
    /// partition reached, for the durability wait before commit.
    partitions: HashMap<(String, i32), i64>,
    groups: HashSet<String>,
}

impl TransactionalProducer {
    /// InitProducerId for `transactional_id`: fences any previous producer of that id and aborts its
    /// open transaction.
    pub fn init(broker: Arc<Broker>, transactional_id: &str, timeout_ms: i32) -> Result<TransactionalProducer, TxnError> {
        let (producer_id, epoch) = broker
            .transactions
            .init_producer_id(&broker, transactional_id, timeout_ms, None)
            .map_err(|e| TxnError::new(format!("initialising transactional id '{transactional_id}'"), e))?;
        Ok(TransactionalProducer {
            broker,
            transactional_id: transactional_id.to_string(),
            producer_id,
            epoch,
            sequences: HashMap::new(),
            partitions: HashMap::new(),
            groups: HashSet::new(),
        })
    }

    pub fn producer_id(&self) -> i64 {
        self.producer_id
    }

    pub fn epoch(&self) -> i16 {
        self.epoch
    }

    /// Writes `records` to one partition inside the current transaction (starting one if needed) and
    /// returns the offset of the first. Empty input writes nothing and returns -1.
    pub fn send(&mut self, topic: &str, partition: i32, records: &[OutRecord]) -> Result<i64, TxnError> {
        if records.is_empty() {
            return Ok(-1);
        }
        let key = (topic.to_string(), partition);
        let action = || format!("writing to {topic}-{partition} in transaction '{}'", self.transactional_id);
        if !self.partitions.contains_key(&key) {
            let results = self
                .broker
                .transactions
                .add_partitions(&self.broker, &self.transactional_id, self.producer_id, self.epoch, std::slice::from_ref(&key))
                .map_err(|e| TxnError::new(action(), e))?;
            if let Some(error) = results.into_iter().find_map(|(_, e)| e) {
                return Err(TxnError::new(action(), error));
            }
            self.partitions.insert(key.clone(), 0);
        }
        let target = self.broker.partition(topic, partition).map_err(|e| TxnError::new(action(), e.kafka()))?;
        let sequence = self.sequences.get(&key).copied().unwrap_or(0);
        let mut batch = encode_batch(records, self.producer_id, self.epoch, sequence).map_err(|e| TxnError::new(action(), e))?;
        let appended = self
            .broker
            .transactions
            .transactional_append(self.producer_id, self.epoch, topic, partition, || {
                target.append(&mut batch, AppendMode::AssignOffsets { leader_epoch: target.leader_epoch }, crate::now_ms())
            })
            .map_err(|e| TxnError::new(action(), e))?
            .map_err(|e| TxnError::new(action(), storage_error_code(&e)))?;
        self.sequences.insert(key.clone(), sequence.wrapping_add(records.len() as i32) & i32::MAX);
        self.partitions.insert(key, appended.last_offset + 1);
        Ok(appended.base_offset)
    }

    /// Stages consumer-group offsets (topic, partition, next offset to read) to commit with the
    /// transaction: the runner's input progress.
    pub fn send_offsets(&mut self, group: &str, offsets: &[(String, i32, i64)]) -> Result<(), TxnError> {
        let action = || format!("sending offsets for group '{group}' in transaction '{}'", self.transactional_id);
        if !self.groups.contains(group) {
            self.broker
                .transactions
                .add_offsets(&self.transactional_id, self.producer_id, self.epoch, group)
                .map_err(|e| TxnError::new(action(), e))?;
            self.groups.insert(group.to_string());
        }
        let now = crate::now_ms();
        let entries = offsets
            .iter()
            .map(|(topic, partition, offset)| {
                (
                    (topic.clone(), *partition),
                    CommittedOffset { offset: *offset, leader_epoch: -1, metadata: None, commit_timestamp_ms: now },
                )
            })
            .collect();
        let results = self
            .broker
            .transactions
            .txn_offset_commit(&self.broker, &self.transactional_id, group, self.producer_id, self.epoch, -1, "", entries)
            .map_err(|e| TxnError::new(action(), e))?;
        match results.into_iter().find_map(|(_, e)| e) {
            Some(error) => Err(TxnError::new(action(), error)),
            None => Ok(()),
        }
    }

    /// Commits the current transaction: its records become visible to read_committed consumers and
    /// its offsets become the groups' committed offsets, together. Under fsync-before-ack the records
    /// are made durable first, as a client's acks would have waited for.
    pub fn commit(&mut self) -> Result<(), TxnError> {
        if self.partitions.is_empty() && self.groups.is_empty() {
            return Ok(());
        }
        self.wait_durable()?;
        self.end(true)
    }

    /// Aborts the current transaction: its records stay in the log but read_committed consumers skip
    /// them, and its offsets are dropped.
    pub fn abort(&mut self) -> Result<(), TxnError> {
        if self.partitions.is_empty() && self.groups.is_empty() {
            return Ok(());
        }
        self.end(false)
    }

    fn end(&mut self, commit: bool) -> Result<(), TxnError> {
        let result = self.broker.transactions.end_txn(&self.broker, &self.transactional_id, self.producer_id, self.epoch, commit);
        self.partitions.clear();
        self.groups.clear();
        result.map_err(|e| {
            TxnError::new(format!("{} transaction '{}'", if commit { "committing" } else { "aborting" }, self.transactional_id), e)
        })
    }

    fn wait_durable(&self) -> Result<(), TxnError> {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return Ok(());
        };
        for ((topic, index), end) in &self.partitions {
            let Ok(partition) = self.broker.partition(topic, *index) else { continue };
            if partition.policy() == FlushPolicy::BeforeAck {
                let action = || format!("making {topic}-{index} durable");
                tokio::task::block_in_place(|| handle.block_on(tokio::time::timeout(DURABILITY_WAIT, partition.wait_durable(*end))))
                    .map_err(|_| TxnError::new(action(), ResponseError::RequestTimedOut))?
                    .map_err(|e| TxnError::new(action(), e.kafka()))?;
            }
        }
        Ok(())
    }
}

/// Encodes one transactional, idempotent record batch.
fn encode_batch(records: &[OutRecord], producer_id: i64, epoch: i16, sequence: i32) -> Result<Vec<u8>, ResponseError> {
    let now = crate::now_ms();
    let encoded: Vec<Record> = records
        .iter()
        .enumerate()
        .map(|(i, r)| Record {
            transactional: true,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id,
            producer_epoch: epoch,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: sequence.wrapping_add(i as i32) & i32::MAX,
            timestamp: if r.timestamp_ms >= 0 { r.timestamp_ms } else { now },
            key: r.key.clone(),
            value: r.value.clone(),
            headers: r.headers.iter().map(|(k, v)| (StrBytes::from_string(k.clone()), v.clone())).collect::<IndexMap<_, _>>(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(&mut buf, encoded.iter(), &RecordEncodeOptions { version: 2, compression: Compression::None })
        .map_err(|_| ResponseError::CorruptMessage)?;
    Ok(buf.to_vec())
}
