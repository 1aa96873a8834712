//! `sluice-storage`: the durable core of Sluice. It stores Kafka RecordBatch v2 bytes in a segmented
//! log on local disk, one `PartitionLog` per partition directory, and knows nothing about sockets,
//! tokio or request codecs. The broker's produce path ends in `PartitionLog::append`, its fetch path
//! in `PartitionLog::read`. The contract with the broker is `API.md` next to this crate's manifest.
//!
//! Modules, in data-path order: `batch` (v2 framing, CRC-32C, header rewrites), `producer`
//! (idempotent sequences), `log` (the partition log), `segment` (one `.log` with its indexes),
//! `index` (the sparse offset and time indexes), `epoch` (the leader-epoch cache replication
//! truncates by), `handles` (the process's budget of open files),
//! `error`, `fs` (the one atomic file replace, for the broker and in-broker runtimes too), and `testing`
//! (batch builders for tests).

pub mod batch;
mod epoch;
pub mod error;
pub mod fs;
pub mod handles;
mod index;
pub mod log;
mod producer;
mod segment;
pub mod testing;
pub mod txn;

pub use batch::{BATCH_HEADER_BYTES, BatchHeader, ControlType, TimestampType, TxnMarker, validate_batches, validate_stored_batches};
pub use epoch::LEADER_EPOCHS_MAX;
pub use error::StorageError;
pub use handles::{OpenFilesBudget, configure_open_files};
pub use log::{
    APPEND_BYTES_MAX, AppendMode, AppendResult, FileSlice, LogConfig, PartitionLog, READ_BYTES_MAX, ReadResult, RetentionStats,
    SEGMENT_BYTES_MAX, SlicedRead, TIMESTAMP_AFTER_MAX_MS_DEFAULT,
};
pub use txn::AbortedTxn;
