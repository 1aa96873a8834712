//! The one error type of the storage crate. Every fallible call in the crate returns `StorageError`;
//! the broker maps each variant to a Kafka error code at its edge (see the comments on the variants),
//! so the variants carry enough context in their messages to be shown to a client or an operator.

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// Framing or CRC-32C failure: the bytes are not what the producer meant to send.
    /// Maps to CORRUPT_MESSAGE (2).
    #[error("corrupt message: {0}")]
    CorruptMessage(String),
    /// Well-framed bytes that break a rule of the format or of the log (record counts, offsets).
    /// Maps to INVALID_RECORD (87).
    #[error("invalid record: {0}")]
    InvalidRecord(String),
    /// A batch larger than `max.message.bytes`. Maps to MESSAGE_TOO_LARGE (10).
    #[error("record batch of {size} bytes exceeds max.message.bytes ({max})")]
    RecordTooLarge { size: usize, max: u32 },
    /// A read or DeleteRecords outside `[log_start_offset, log_end_offset]`. Maps to OFFSET_OUT_OF_RANGE (1).
    #[error("offset {requested} is out of range: the log holds offsets [{start}, {end}]")]
    OffsetOutOfRange { requested: i64, start: i64, end: i64 },
    /// An idempotent producer skipped or reordered a sequence number. Maps to OUT_OF_ORDER_SEQUENCE_NUMBER (45).
    #[error("out of order sequence number for producer {producer_id}: expected {expected}, got {got}")]
    OutOfOrderSequence { producer_id: i64, expected: i32, got: i32 },
    /// A zombie producer: its epoch is older than one the log has seen. Maps to INVALID_PRODUCER_EPOCH (47).
    #[error("producer {producer_id} has epoch {got}, older than its current epoch {current}")]
    InvalidProducerEpoch { producer_id: i64, current: i16, got: i16 },
    /// A CreateTime record's timestamp is further from the broker's clock than
    /// `message.timestamp.before.max.ms` / `message.timestamp.after.max.ms` allow. Maps to
    /// INVALID_TIMESTAMP (32).
    #[error(
        "timestamp {timestamp} is out of range: the topic accepts CreateTime timestamps within [{earliest}, {latest}] \
         (message.timestamp.before.max.ms / message.timestamp.after.max.ms)"
    )]
    InvalidTimestamp { timestamp: i64, earliest: i64, latest: i64 },
    /// The partition cannot serve the call: it could not be opened at start-up, or a write left
    /// memory and disk in doubt and it refuses changes until a restart recovers it from its files.
    /// Maps to KAFKA_STORAGE_ERROR (56).
    #[error("partition {dir} is offline: {reason}")]
    Offline { dir: String, reason: String },
    /// A write from a role this replica no longer has: a leader's append after it stopped leading (or
    /// in an older leader epoch), a follower's copy after it became the leader. Checked under the
    /// log's lock, so a role change and a write never interleave. Maps to NOT_LEADER_OR_FOLLOWER (6).
    #[error("{0}")]
    NotLeader(String),
    /// A file operation failed; the string names the operation and the path. Maps to KAFKA_STORAGE_ERROR.
    #[error("{1}: {0}")]
    Io(#[source] io::Error, String),
}

/// Attaches "what were we doing, to which file" to an `io::Error`. The context is built lazily so the
/// happy path formats nothing.
pub(crate) trait IoContext<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, StorageError>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, StorageError> {
        self.map_err(|error| StorageError::Io(error, what()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_name_the_operation() {
        let result: io::Result<()> = Err(io::Error::new(io::ErrorKind::NotFound, "gone"));
        let error = result.context(|| "open /x/00000000000000000000.log".to_string()).unwrap_err();
        assert_eq!(error.to_string(), "open /x/00000000000000000000.log: gone");
        assert!(std::error::Error::source(&error).is_some());
    }
}
