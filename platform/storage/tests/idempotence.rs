//! Idempotent producers: duplicates of recent batches return their original offsets, gaps and stale
//! epochs are refused, and all of it survives a reopen (the state is rebuilt from the log).

mod common;

use common::*;
use sluice_storage::testing::BatchBuilder;
use sluice_storage::{AppendMode, AppendResult, PartitionLog, StorageError};

fn produce(log: &mut PartitionLog, producer_id: i64, epoch: i16, sequence: i32, records: usize) -> Result<AppendResult, StorageError> {
    let mut bytes = BatchBuilder::new(NOW).producer(producer_id, epoch, sequence).records(records, 8).build();
    log.append(&mut bytes, ASSIGN, NOW)
}

#[test]
fn a_retried_batch_gets_its_original_offsets_and_is_not_written_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), small_config(1 << 20), NOW).unwrap();
    let first = produce(&mut log, 1, 0, 0, 3).unwrap();
    assert_eq!((first.base_offset, first.last_offset, first.duplicate), (0, 2, false));
    let size = log.size_bytes();
    let retry = produce(&mut log, 1, 0, 0, 3).unwrap();
    assert_eq!((retry.base_offset, retry.last_offset, retry.duplicate, retry.record_count, retry.byte_count), (0, 2, true, 0, 0));
    assert_eq!((log.log_end_offset(), log.size_bytes()), (3, size));
    assert_eq!(produce(&mut log, 1, 0, 3, 2).unwrap().base_offset, 3);
}

#[test]
fn any_of_the_last_five_batches_is_recognised() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), small_config(1 << 20), NOW).unwrap();
    for i in 0..7 {
        produce(&mut log, 4, 0, i * 2, 2).unwrap();
    }
    // Batch 2 (sequences 4..=5, offsets 4..=5) is among the last five.
    let retry = produce(&mut log, 4, 0, 4, 2).unwrap();
    assert_eq!((retry.base_offset, retry.last_offset, retry.duplicate), (4, 5, true));
    // Batch 1 is not: it is neither a known duplicate nor the next sequence.
    assert!(matches!(produce(&mut log, 4, 0, 2, 2), Err(StorageError::OutOfOrderSequence { producer_id: 4, expected: 14, got: 2 })));
    assert_eq!(log.log_end_offset(), 14);
}

#[test]
fn gaps_and_stale_epochs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), small_config(1 << 20), NOW).unwrap();
    produce(&mut log, 9, 2, 0, 5).unwrap();
    assert!(matches!(produce(&mut log, 9, 2, 6, 1), Err(StorageError::OutOfOrderSequence { expected: 5, got: 6, .. })));
    assert!(matches!(produce(&mut log, 9, 1, 5, 1), Err(StorageError::InvalidProducerEpoch { current: 2, got: 1, .. })));
    assert!(matches!(produce(&mut log, 9, 3, 5, 1), Err(StorageError::OutOfOrderSequence { expected: 0, got: 5, .. })));
    assert_eq!(log.log_end_offset(), 5);
    // A new epoch starts over at sequence 0; the old epoch is fenced from then on.
    assert_eq!(produce(&mut log, 9, 3, 0, 1).unwrap().base_offset, 5);
    assert!(matches!(produce(&mut log, 9, 2, 5, 1), Err(StorageError::InvalidProducerEpoch { current: 3, .. })));
    // Producers are independent, and batches without a producer id skip all of this.
    assert_eq!(produce(&mut log, 10, 0, 77, 1).unwrap().base_offset, 6);
    assert_eq!(log.append(&mut batch_of(&["plain"], NOW), ASSIGN, NOW).unwrap().base_offset, 7);
}

#[test]
fn sequences_wrap_around() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), small_config(1 << 20), NOW).unwrap();
    produce(&mut log, 1, 0, i32::MAX - 1, 3).unwrap();
    assert!(matches!(produce(&mut log, 1, 0, 0, 1), Err(StorageError::OutOfOrderSequence { expected: 1, got: 0, .. })));
    assert_eq!(produce(&mut log, 1, 0, 1, 1).unwrap().base_offset, 3);
}

#[test]
fn several_batches_in_one_append_are_checked_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), small_config(1 << 20), NOW).unwrap();
    let batch = |sequence: i32, n: usize| BatchBuilder::new(NOW).producer(5, 0, sequence).records(n, 4).build();
    let mut two = [batch(0, 2), batch(2, 3)].concat();
    let result = log.append(&mut two, ASSIGN, NOW).unwrap();
    assert_eq!((result.base_offset, result.last_offset, result.record_count), (0, 4, 5));
    // A retry inside a larger append cannot be half applied: refused, nothing written.
    let mut mixed = [batch(2, 3), batch(5, 1)].concat();
    assert!(matches!(log.append(&mut mixed, ASSIGN, NOW), Err(StorageError::OutOfOrderSequence { expected: 5, got: 2, .. })));
    let mut gap = [batch(5, 1), batch(7, 1)].concat();
    assert!(matches!(log.append(&mut gap, ASSIGN, NOW), Err(StorageError::OutOfOrderSequence { expected: 6, got: 7, .. })));
    assert_eq!(log.log_end_offset(), 5);
}

#[test]
fn producer_state_is_rebuilt_at_open() {
    for clean in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let mut log = PartitionLog::open(dir.path(), small_config(400), NOW).unwrap();
        for i in 0..20 {
            produce(&mut log, 1, 0, i * 3, 3).unwrap();
            produce(&mut log, 2, 5, i, 1).unwrap();
        }
        assert!(log.segment_count() > 3);
        if clean {
            log.close().unwrap();
        }
        drop(log);

        let mut log = PartitionLog::open(dir.path(), small_config(400), NOW + 1000).unwrap();
        let end = log.log_end_offset();
        let retry = produce(&mut log, 1, 0, 57, 3).unwrap();
        assert!(retry.duplicate, "clean {clean}");
        assert_eq!((retry.base_offset, retry.last_offset), (end - 4, end - 2));
        assert!(matches!(produce(&mut log, 1, 0, 61, 1), Err(StorageError::OutOfOrderSequence { expected: 60, .. })));
        assert!(matches!(produce(&mut log, 2, 4, 20, 1), Err(StorageError::InvalidProducerEpoch { current: 5, .. })));
        assert_eq!(produce(&mut log, 1, 0, 60, 1).unwrap().base_offset, end);
        assert_eq!(produce(&mut log, 2, 5, 20, 1).unwrap().base_offset, end + 1);
    }
}

#[test]
fn producers_idle_for_longer_than_the_expiration_are_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), small_config(1 << 20), NOW).unwrap();
    produce(&mut log, 1, 3, 10, 1).unwrap();
    const DAY_MS: i64 = 86_400_000;
    log.enforce_retention(NOW + DAY_MS - 1).unwrap();
    assert!(matches!(produce(&mut log, 1, 3, 12, 1), Err(StorageError::OutOfOrderSequence { .. })));
    log.enforce_retention(NOW + DAY_MS + 1).unwrap();
    // Unknown again: whatever sequence it resumes at is accepted.
    assert_eq!(produce(&mut log, 1, 3, 12, 1).unwrap().base_offset, 1);

    // And a reopen long after the last batch does not resurrect it.
    produce(&mut log, 7, 0, 0, 1).unwrap();
    log.close().unwrap();
    let mut log = PartitionLog::open(dir.path(), small_config(1 << 20), NOW + 2 * DAY_MS).unwrap();
    assert_eq!(produce(&mut log, 7, 0, 50, 1).unwrap().base_offset, 3);
}

#[test]
fn a_clean_close_snapshots_producer_state_and_damaged_or_stale_snapshots_are_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let snapshot = dir.path().join("producer-state");
    let mut log = PartitionLog::open(dir.path(), small_config(1 << 20), NOW).unwrap();
    for i in 0..4 {
        produce(&mut log, 1, 0, i, 1).unwrap();
    }
    log.close().unwrap();
    assert!(snapshot.exists());
    let mut log = PartitionLog::open(dir.path(), small_config(1 << 20), NOW).unwrap();
    assert!(!snapshot.exists(), "a snapshot is used once");
    assert!(produce(&mut log, 1, 0, 3, 1).unwrap().duplicate);
    log.close().unwrap();

    // Damaged: ignored, and the state is rebuilt from the log.
    let mut bytes = std::fs::read(&snapshot).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&snapshot, &bytes).unwrap();
    let mut log = PartitionLog::open(dir.path(), small_config(1 << 20), NOW).unwrap();
    assert!(produce(&mut log, 1, 0, 3, 1).unwrap().duplicate);
    produce(&mut log, 1, 0, 4, 1).unwrap();
    log.close().unwrap();

    // Stale: the log lost its last batch while down, so the snapshot (which remembers sequence 4) no
    // longer describes it. Trusting it would acknowledge a retry of the lost batch as a duplicate. The
    // lost batch was below the recovery point (acknowledged and fsynced), so its offset is not handed
    // out again: the retry is written anew after it.
    let file = segment_files(dir.path()).pop().unwrap();
    let len = file.metadata().unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&file).unwrap().set_len(len - 1).unwrap();
    let mut log = PartitionLog::open(dir.path(), small_config(1 << 20), NOW).unwrap();
    assert_eq!(log.log_end_offset(), 5);
    let retry = produce(&mut log, 1, 0, 4, 1).unwrap();
    assert_eq!((retry.duplicate, retry.base_offset), (false, 5));
}

/// A promoted mirror's log holds another cluster's producer ids. After `fence_producers` a local
/// producer with the same id is a new producer there, not a duplicate of a foreign batch or out
/// of sequence — also after a clean or an unclean reopen, which rebuild the state from the log.
#[test]
fn fenced_producer_state_stays_forgotten_across_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), small_config(1 << 20), NOW).unwrap();
    // "Foreign" producer 3 wrote sequences 0..=1 at epoch 0.
    let mut foreign = BatchBuilder::new(NOW).producer(3, 0, 0).records(2, 8).build();
    log.append(&mut foreign, AppendMode::PreserveOffsets, NOW).unwrap();
    let fresh = |log: &mut PartitionLog| produce(log, 3, 0, 0, 2);
    assert!(fresh(&mut log).unwrap().duplicate, "before the fence, a local batch with the same id and sequences is taken for a retry");

    // An open transaction must be ended first.
    let mut open_txn = BatchBuilder::new(NOW).producer(5, 0, 0).attributes(0x10).records(1, 8).build();
    log.append(&mut open_txn, ASSIGN, NOW).unwrap();
    assert!(matches!(log.fence_producers(), Err(StorageError::InvalidRecord(_))));
    let abort =
        sluice_storage::TxnMarker { producer_id: 5, producer_epoch: 0, control: sluice_storage::ControlType::Abort, coordinator_epoch: 0 };
    log.append_marker(&abort, 0, NOW).unwrap();
    assert_eq!(log.fence_producers().unwrap(), 4);

    let first = fresh(&mut log).unwrap();
    assert_eq!((first.base_offset, first.duplicate), (4, false), "a fenced id starts fresh");
    log.close().unwrap();

    // Clean reopen: the local producer's own state (written after the fence) is kept.
    let mut log = PartitionLog::open(dir.path(), small_config(1 << 20), NOW).unwrap();
    assert!(produce(&mut log, 3, 0, 0, 2).unwrap().duplicate, "the local batch after the fence is still recognised");
    assert_eq!(produce(&mut log, 3, 0, 2, 1).unwrap().base_offset, 6);
    drop(log);

    // Unclean reopen: the state is rebuilt from every batch, the foreign ones too, and forgotten again.
    let mut log = PartitionLog::open(dir.path(), small_config(1 << 20), NOW).unwrap();
    let retry = produce(&mut log, 3, 0, 0, 2).unwrap();
    assert_eq!((retry.base_offset, retry.duplicate), (4, true), "a retry matches the local batch, never the foreign one");
    assert_eq!(produce(&mut log, 3, 0, 3, 1).unwrap().base_offset, 7, "the local producer continues");
}
