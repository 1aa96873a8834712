//! Helpers shared by the integration tests: small-segment configs, batch shortcuts, and a reader that
//! walks the whole log the way a consumer would.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use sluice_storage::testing::{BatchBuilder, DecodedRecord, decode};
use sluice_storage::{AppendMode, AppendResult, LogConfig, PartitionLog};

/// A wall-clock-like "now" so producer-state expiration (one day) behaves as in production.
pub const NOW: i64 = 1_700_000_000_000;

pub const ASSIGN: AppendMode = AppendMode::AssignOffsets { leader_epoch: 0 };

/// Small segments and a small index interval so a few appends exercise rolls and index lookups.
pub fn small_config(segment_bytes: u64) -> LogConfig {
    LogConfig {
        segment_bytes,
        segment_ms: None,
        retention_ms: None,
        retention_bytes: None,
        index_interval_bytes: 64,
        ..LogConfig::default()
    }
}

/// One batch whose records carry the given values, timestamps `ts`, `ts + 1`, ...
pub fn batch_of(values: &[&str], ts: i64) -> Vec<u8> {
    let mut builder = BatchBuilder::new(ts);
    for (i, value) in values.iter().enumerate() {
        builder = builder.record_at(i as i64, Some(b"key"), Some(value.as_bytes()));
    }
    builder.build()
}

/// Appends `n` batches of three records each, values "v{batch}-{record}".
pub fn append_batches(log: &mut PartitionLog, first: usize, n: usize, ts: i64) -> Vec<AppendResult> {
    (first..first + n)
        .map(|i| {
            let values = [format!("v{i}-0"), format!("v{i}-1"), format!("v{i}-2")];
            let refs: Vec<&str> = values.iter().map(String::as_str).collect();
            let mut bytes = batch_of(&refs, ts + i as i64 * 10);
            log.append(&mut bytes, ASSIGN, NOW).unwrap()
        })
        .collect()
}

/// Values appended by `append_batches(_, 0, n, _)`.
pub fn expected_values(n: usize) -> Vec<String> {
    (0..n).flat_map(|i| (0..3).map(move |r| format!("v{i}-{r}"))).collect()
}

/// Every record from the log start to the log end, read in modest chunks like a consumer.
pub fn read_all(log: &PartitionLog) -> Vec<DecodedRecord> {
    let mut out = Vec::new();
    let mut position = log.log_start_offset();
    let end = log.log_end_offset();
    while position < end {
        let read = log.read(position, 700, end, true).unwrap();
        if read.bytes.is_empty() {
            break;
        }
        let records = decode(&read.bytes).unwrap();
        let from = position;
        for record in records.into_iter().filter(|r| r.offset >= from) {
            position = record.offset + 1;
            out.push(record);
        }
    }
    out
}

pub fn values(records: &[DecodedRecord]) -> Vec<String> {
    records.iter().map(|r| String::from_utf8(r.value.clone().unwrap_or_default()).unwrap()).collect()
}

/// The `.log` files of a partition directory, oldest first.
pub fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "log")).collect();
    files.sort();
    files
}

pub fn append_bytes(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    std::fs::OpenOptions::new().append(true).open(path).unwrap().write_all(bytes).unwrap();
}

/// The first batch of a segment file re-addressed to `next_offset`: a valid batch (the base offset
/// is outside the CRC) that would be the next append.
pub fn first_batch_as(log_file: &Path, next_offset: i64) -> Vec<u8> {
    let bytes = std::fs::read(log_file).unwrap();
    let length = i32::from_be_bytes(bytes[8..12].try_into().unwrap()) as usize;
    let mut batch = bytes[..12 + length].to_vec();
    batch[..8].copy_from_slice(&next_offset.to_be_bytes());
    batch
}

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
pub fn garbage(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
