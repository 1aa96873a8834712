//! The broker's one error type, and its mapping to Kafka error codes (for the wire) and HTTP statuses
//! (for the admin API). Inside the broker errors carry what went wrong and where; the mapping to a
//! code happens only at those edges (`handlers`, `admin`, and `host` for runtimes).

use std::io;
use std::path::PathBuf;

use kafka_protocol::ResponseError;
use sluice_storage::StorageError;

use crate::host::StartError;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("invalid topic: {0}")]
    InvalidTopic(String),
    #[error("topic '{0}' does not exist")]
    UnknownTopic(String),
    #[error("partition {partition} of topic '{topic}' does not exist")]
    UnknownPartition { topic: String, partition: i32 },
    #[error("this broker does not lead partition {partition} of topic '{topic}'; ask the leader (see Metadata or `sluice topic describe`)")]
    NotLeader { topic: String, partition: i32 },
    /// acks=all with fewer in-sync replicas than `min.insync.replicas`: nothing was written.
    #[error("only {isr} replicas are in sync, fewer than min.insync.replicas = {min_insync}; nothing was written")]
    NotEnoughReplicas { isr: usize, min_insync: usize },
    /// The ISR shrank below `min.insync.replicas` while an acks=all write waited: it is in the
    /// leader's log, but not on enough replicas to be promised.
    #[error("the write is in the leader's log but only {isr} replicas are in sync, fewer than min.insync.replicas = {min_insync}")]
    NotEnoughReplicasAfterAppend { isr: usize, min_insync: usize },
    #[error("topic '{0}' already exists")]
    TopicExists(String),
    #[error("invalid partition count: {0}")]
    InvalidPartitions(String),
    #[error("invalid replication factor: {0}")]
    InvalidReplicationFactor(String),
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    #[error("policy violation: {0}")]
    PolicyViolation(String),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("group '{0}' is not empty")]
    NonEmptyGroup(String),
    /// A write or a change to a topic that a mirror keeps equal to its source.
    #[error(
        "topic '{topic}' is a read-only mirror written by mirror '{mirror}'; to write to it, promote it first (sluice mirror promote {mirror} --topic {topic})"
    )]
    ReadOnlyMirror { topic: String, mirror: String },
    #[error("group '{0}' does not exist")]
    UnknownGroup(String),
    /// A request the transaction coordinator refuses by Kafka's transaction protocol: a fenced
    /// producer, a wrong state, an unknown producer id. These outcomes *are* the protocol (KIP-98):
    /// clients drive their state machines by the exact code, so the code is what is kept.
    #[error("refused by the transaction coordinator: {0}")]
    Protocol(ResponseError),
    #[error("request timed out: {0}")]
    Timeout(String),
    /// A commit whose records could exceed the offsets log's batch limit (checked before encoding).
    #[error("the commit for group '{group}' would take up to {bytes} bytes, more than the {limit} one commit may")]
    CommitTooLarge { group: String, bytes: usize, limit: usize },
    /// A log or file operation failed (partition logs, the broker's own logs, metadata files).
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// An fsync failed: the kernel may have dropped dirty pages, so nothing written to the partition
    /// since the last good fsync can be promised, and it stops acknowledging writes.
    #[error("{partition}: {reason}; the partition stops acknowledging writes")]
    DurabilityLost { partition: String, reason: String },
    #[error("the broker is shutting down")]
    ShuttingDown,
    /// A file the broker wrote itself does not read back (a topic definition, an internal log record).
    #[error("{}: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },
    /// State the broker could not serialise for its own logs (a bug, not an operating error).
    #[error("cannot encode {what}: {source}")]
    Encode {
        what: &'static str,
        #[source]
        source: rmp_serde::encode::Error,
    },
    #[error("data directory {} is in use by another sluice process (lock held on {})", dir.display(), lock.display())]
    DataDirInUse { dir: PathBuf, lock: PathBuf },
    #[error("cannot listen for {what} on {address}: {source}{hint}")]
    Bind {
        what: &'static str,
        address: String,
        #[source]
        source: io::Error,
        hint: &'static str,
    },
    #[error("cannot start {name}: {source}")]
    ExtensionStart {
        name: &'static str,
        #[source]
        source: StartError,
    },
    /// A task of the broker's own panicked or was cancelled.
    #[error("a broker task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The controller quorum's voter could not start (its storage, its listener, its configuration).
    #[error("{0}")]
    Controller(#[from] sluice_cluster::ControllerError),
}

impl BrokerError {
    /// An I/O failure of the broker's own, with what it was doing to which path.
    pub(crate) fn io(error: io::Error, what: impl std::fmt::Display, path: &std::path::Path) -> BrokerError {
        BrokerError::Storage(StorageError::Io(error, format!("{what} {}", path.display())))
    }

    pub(crate) fn kafka(&self) -> ResponseError {
        match self {
            BrokerError::InvalidTopic(_) => ResponseError::InvalidTopicException,
            BrokerError::UnknownTopic(_) | BrokerError::UnknownPartition { .. } => ResponseError::UnknownTopicOrPartition,
            BrokerError::NotLeader { .. } => ResponseError::NotLeaderOrFollower,
            BrokerError::NotEnoughReplicas { .. } => ResponseError::NotEnoughReplicas,
            BrokerError::NotEnoughReplicasAfterAppend { .. } => ResponseError::NotEnoughReplicasAfterAppend,
            BrokerError::TopicExists(_) => ResponseError::TopicAlreadyExists,
            BrokerError::InvalidPartitions(_) => ResponseError::InvalidPartitions,
            BrokerError::InvalidReplicationFactor(_) => ResponseError::InvalidReplicationFactor,
            BrokerError::InvalidConfig(_) => ResponseError::InvalidConfig,
            BrokerError::PolicyViolation(_) => ResponseError::PolicyViolation,
            BrokerError::InvalidRequest(_) | BrokerError::ReadOnlyMirror { .. } => ResponseError::InvalidRequest,
            BrokerError::NonEmptyGroup(_) => ResponseError::NonEmptyGroup,
            BrokerError::UnknownGroup(_) => ResponseError::GroupIdNotFound,
            BrokerError::Protocol(code) => *code,
            BrokerError::Timeout(_) => ResponseError::RequestTimedOut,
            BrokerError::CommitTooLarge { .. } => ResponseError::InvalidCommitOffsetSize,
            BrokerError::Storage(error) => storage_error_code(error),
            BrokerError::DurabilityLost { .. } | BrokerError::ShuttingDown | BrokerError::Corrupt { .. } => {
                ResponseError::KafkaStorageError
            }
            BrokerError::Encode { .. }
            | BrokerError::DataDirInUse { .. }
            | BrokerError::Bind { .. }
            | BrokerError::ExtensionStart { .. }
            | BrokerError::Task(_)
            | BrokerError::Controller(_) => ResponseError::UnknownServerError,
        }
    }

    pub(crate) fn code(&self) -> i16 {
        self.kafka().code()
    }

    pub(crate) fn http_status(&self) -> u16 {
        match self {
            BrokerError::UnknownTopic(_) | BrokerError::UnknownPartition { .. } | BrokerError::UnknownGroup(_) => 404,
            BrokerError::TopicExists(_) | BrokerError::NonEmptyGroup(_) => 409,
            BrokerError::Timeout(_) => 504,
            BrokerError::NotLeader { .. } => 421,
            BrokerError::NotEnoughReplicas { .. } | BrokerError::NotEnoughReplicasAfterAppend { .. } => 503,
            BrokerError::InvalidTopic(_)
            | BrokerError::InvalidPartitions(_)
            | BrokerError::InvalidReplicationFactor(_)
            | BrokerError::InvalidConfig(_)
            | BrokerError::PolicyViolation(_)
            | BrokerError::InvalidRequest(_)
            | BrokerError::ReadOnlyMirror { .. }
            | BrokerError::CommitTooLarge { .. }
            | BrokerError::Protocol(_) => 400,
            // A refused batch (too large, corrupt) is the caller's; a failed file operation is ours.
            BrokerError::Storage(StorageError::Io(..) | StorageError::Offline { .. }) => 500,
            BrokerError::Storage(_) => 400,
            _ => 500,
        }
    }
}

/// Shorthand for a transaction-protocol refusal.
pub(crate) fn refuse<T>(code: ResponseError) -> Result<T, BrokerError> {
    Err(BrokerError::Protocol(code))
}

pub(crate) fn storage_error_code(error: &StorageError) -> ResponseError {
    match error {
        StorageError::CorruptMessage(_) => ResponseError::CorruptMessage,
        StorageError::InvalidRecord(_) => ResponseError::InvalidRecord,
        StorageError::RecordTooLarge { .. } => ResponseError::MessageTooLarge,
        StorageError::OffsetOutOfRange { .. } => ResponseError::OffsetOutOfRange,
        StorageError::OutOfOrderSequence { .. } => ResponseError::OutOfOrderSequenceNumber,
        StorageError::InvalidProducerEpoch { .. } => ResponseError::InvalidProducerEpoch,
        StorageError::InvalidTimestamp { .. } => ResponseError::InvalidTimestamp,
        StorageError::Offline { .. } | StorageError::Io(..) => ResponseError::KafkaStorageError,
        StorageError::NotLeader(_) => ResponseError::NotLeaderOrFollower,
        #[allow(unreachable_patterns)]
        _ => ResponseError::UnknownServerError,
    }
}
