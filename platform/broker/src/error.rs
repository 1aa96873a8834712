//! The broker's error type and its mapping to Kafka error codes (for the wire) and HTTP statuses
//! (for the admin API). Mapping happens only at those edges.

use kafka_protocol::ResponseError;
use sluice_storage::StorageError;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("invalid topic: {0}")]
    InvalidTopic(String),
    #[error("topic '{0}' does not exist")]
    UnknownTopic(String),
    #[error("partition {partition} of topic '{topic}' does not exist")]
    UnknownPartition { topic: String, partition: i32 },
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
    #[error("storage error: {0}")]
    Storage(String),
    #[error(transparent)]
    Log(#[from] StorageError),
    #[error("request timed out: {0}")]
    Timeout(String),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("group '{0}' is not empty")]
    NonEmptyGroup(String),
    #[error("group '{0}' does not exist")]
    UnknownGroup(String),
}

impl BrokerError {
    pub fn kafka(&self) -> ResponseError {
        match self {
            BrokerError::InvalidTopic(_) => ResponseError::InvalidTopicException,
            BrokerError::UnknownTopic(_) | BrokerError::UnknownPartition { .. } => ResponseError::UnknownTopicOrPartition,
            BrokerError::TopicExists(_) => ResponseError::TopicAlreadyExists,
            BrokerError::InvalidPartitions(_) => ResponseError::InvalidPartitions,
            BrokerError::InvalidReplicationFactor(_) => ResponseError::InvalidReplicationFactor,
            BrokerError::InvalidConfig(_) => ResponseError::InvalidConfig,
            BrokerError::PolicyViolation(_) => ResponseError::PolicyViolation,
            BrokerError::Storage(_) => ResponseError::KafkaStorageError,
            BrokerError::Log(error) => storage_error_code(error),
            BrokerError::Timeout(_) => ResponseError::RequestTimedOut,
            BrokerError::InvalidRequest(_) => ResponseError::InvalidRequest,
            BrokerError::NonEmptyGroup(_) => ResponseError::NonEmptyGroup,
            BrokerError::UnknownGroup(_) => ResponseError::GroupIdNotFound,
        }
    }

    pub fn code(&self) -> i16 {
        self.kafka().code()
    }

    pub fn http_status(&self) -> u16 {
        match self {
            BrokerError::UnknownTopic(_) | BrokerError::UnknownPartition { .. } | BrokerError::UnknownGroup(_) => 404,
            BrokerError::TopicExists(_) | BrokerError::NonEmptyGroup(_) => 409,
            BrokerError::Storage(_) | BrokerError::Log(StorageError::Io(..) | StorageError::Offline { .. }) => 500,
            BrokerError::Timeout(_) => 504,
            _ => 400,
        }
    }
}

pub fn storage_error_code(error: &StorageError) -> ResponseError {
    match error {
        StorageError::CorruptMessage(_) => ResponseError::CorruptMessage,
        StorageError::InvalidRecord(_) => ResponseError::InvalidRecord,
        StorageError::RecordTooLarge { .. } => ResponseError::MessageTooLarge,
        StorageError::OffsetOutOfRange { .. } => ResponseError::OffsetOutOfRange,
        StorageError::OutOfOrderSequence { .. } => ResponseError::OutOfOrderSequenceNumber,
        StorageError::InvalidProducerEpoch { .. } => ResponseError::InvalidProducerEpoch,
        StorageError::InvalidTimestamp { .. } => ResponseError::InvalidTimestamp,
        StorageError::Offline { .. } | StorageError::Io(..) => ResponseError::KafkaStorageError,
        #[allow(unreachable_patterns)]
        _ => ResponseError::UnknownServerError,
    }
}
