//! Transactions at the log level: transactional batches open a transaction that bounds the last
//! stable offset until a marker ends it; aborts land in the aborted-transaction index; all of it is
//! recovered after a clean close (snapshot) and after a crash (header walk), including an abort whose
//! index entry never reached the disk.

mod common;

use common::*;
use sluice_storage::testing::{BatchBuilder, decode};
use sluice_storage::{AbortedTxn, AppendResult, ControlType, PartitionLog, StorageError, TxnMarker};

const TRANSACTIONAL: i16 = 0x10;

fn txn_batch(producer_id: i64, epoch: i16, sequence: i32, records: usize) -> Vec<u8> {
    BatchBuilder::new(NOW).producer(producer_id, epoch, sequence).attributes(TRANSACTIONAL).records(records, 8).build()
}

fn produce_txn(log: &mut PartitionLog, producer_id: i64, epoch: i16, sequence: i32, records: usize) -> AppendResult {
    log.append(&mut txn_batch(producer_id, epoch, sequence, records), ASSIGN, NOW).unwrap()
}

fn marker(producer_id: i64, epoch: i16, control: ControlType) -> TxnMarker {
    TxnMarker { producer_id, producer_epoch: epoch, control, coordinator_epoch: 0 }
}

#[test]
fn an_open_transaction_holds_the_last_stable_offset_until_its_marker() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), small_config(1 << 20), NOW).unwrap();
    log.append(&mut batch_of(&["a", "b"], NOW), ASSIGN, NOW).unwrap();
    assert_eq!(log.last_stable_offset(), 2);
    produce_txn(&mut log, 7, 0, 0, 3); // offsets 2..=4
    log.append(&mut batch_of(&["c"], NOW), ASSIGN, NOW).unwrap(); // 5
    produce_txn(&mut log, 8, 0, 0, 1); // 6
    assert_eq!((log.last_stable_offset(), log.log_end_offset()), (2, 7));
    assert_eq!(log.ongoing_transactions(), vec![(7, 2), (8, 6)]);

    let committed = log.append_marker(&marker(7, 0, ControlType::Commit), 0, NOW).unwrap();
    assert_eq!(committed.base_offset, 7);
    assert_eq!(log.last_stable_offset(), 6, "producer 8's transaction still holds the LSO");
    let aborted = log.append_marker(&marker(8, 0, ControlType::Abort), 0, NOW).unwrap();
    assert_eq!(aborted.base_offset, 8);
    assert_eq!(log.last_stable_offset(), 9);
    assert_eq!(log.aborted_transactions(0, 9), vec![AbortedTxn { producer_id: 8, first_offset: 6, last_offset: 8 }]);
    assert!(log.aborted_transactions(0, 6).is_empty(), "a read ending before the aborted range does not need it");

    // The markers are real control records: stored and served like any batch.
    let read = log.read(7, 1 << 20, 9, false).unwrap();
    let headers: Vec<_> = sluice_storage::testing::decode(&read.bytes).unwrap().into_iter().map(|r| r.offset).collect();
    assert_eq!(headers, vec![7, 8]);
}

#[test]
fn markers_from_a_fenced_epoch_are_refused_and_a_fencing_abort_bumps_the_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), small_config(1 << 20), NOW).unwrap();
    produce_txn(&mut log, 3, 5, 0, 2);
    assert!(matches!(log.append_marker(&marker(3, 4, ControlType::Commit), 0, NOW), Err(StorageError::InvalidProducerEpoch { .. })));
    assert_eq!(log.last_stable_offset(), 0);
    // The coordinator aborts a zombie's transaction with a bumped epoch: the zombie is fenced after it.
    log.append_marker(&marker(3, 6, ControlType::Abort), 0, NOW).unwrap();
    assert!(matches!(log.append(&mut txn_batch(3, 5, 2, 1), ASSIGN, NOW), Err(StorageError::InvalidProducerEpoch { .. })));
    produce_txn(&mut log, 3, 6, 0, 1);
    assert_eq!(log.ongoing_transactions(), vec![(3, 3)]);
}

#[test]
fn clients_cannot_write_control_batches_or_transactional_batches_without_a_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), small_config(1 << 20), NOW).unwrap();
    let mut control = BatchBuilder::new(NOW).producer(1, 0, 0).attributes(TRANSACTIONAL | 0x20).records(1, 4).build();
    assert!(matches!(log.append(&mut control, ASSIGN, NOW), Err(StorageError::InvalidRecord(_))));
    let mut unsequenced = BatchBuilder::new(NOW).attributes(TRANSACTIONAL).records(1, 4).build();
    assert!(matches!(log.append(&mut unsequenced, ASSIGN, NOW), Err(StorageError::InvalidRecord(_))));
    assert_eq!(log.log_end_offset(), 0);
}

fn transactional_history(log: &mut PartitionLog) {
    produce_txn(log, 1, 0, 0, 2); // 0..=1
    log.append_marker(&marker(1, 0, ControlType::Abort), 0, NOW).unwrap(); // 2
    produce_txn(log, 2, 0, 0, 2); // 3..=4
    log.append_marker(&marker(2, 0, ControlType::Commit), 0, NOW).unwrap(); // 5
    produce_txn(log, 1, 0, 2, 1); // 6, still open
}

fn assert_history(log: &PartitionLog) {
    assert_eq!(log.log_end_offset(), 7);
    assert_eq!(log.last_stable_offset(), 6);
    assert_eq!(log.ongoing_transactions(), vec![(1, 6)]);
    assert_eq!(log.aborted_transactions(0, 7), vec![AbortedTxn { producer_id: 1, first_offset: 0, last_offset: 2 }]);
}

#[test]
fn transaction_state_survives_a_clean_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), small_config(1 << 20), NOW).unwrap();
    transactional_history(&mut log);
    log.close().unwrap();
    drop(log);
    let log = PartitionLog::open(dir.path(), small_config(1 << 20), NOW).unwrap();
    assert_history(&log);
}

#[test]
fn transaction_state_survives_a_crash_even_without_the_index_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), small_config(1 << 20), NOW).unwrap();
    transactional_history(&mut log);
    drop(log); // no close: the next open is a crash recovery
    let log = PartitionLog::open(dir.path(), small_config(1 << 20), NOW).unwrap();
    assert_history(&log);
    drop(log);
    // A crash between writing an abort marker and its index entry: the header walk finds the abort.
    std::fs::remove_file(dir.path().join("aborted-txns")).unwrap();
    let log = PartitionLog::open(dir.path(), small_config(1 << 20), NOW).unwrap();
    assert_history(&log);
    assert!(dir.path().join("aborted-txns").exists(), "the recovered index is written back");
}

#[test]
fn aborted_entries_follow_the_log_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), small_config(1 << 20), NOW).unwrap();
    transactional_history(&mut log);
    log.append_marker(&marker(1, 0, ControlType::Commit), 0, NOW).unwrap(); // 7
    assert_eq!(log.aborted_transaction_count(), 1);
    log.delete_records_before(3).unwrap();
    assert_eq!(log.aborted_transaction_count(), 0);
    drop(log);
    let log = PartitionLog::open(dir.path(), small_config(1 << 20), NOW).unwrap();
    assert_eq!(log.aborted_transaction_count(), 0);
    assert_eq!(log.last_stable_offset(), log.log_end_offset());
    let records = decode(&log.read(3, 1 << 20, 8, false).unwrap().bytes).unwrap();
    assert_eq!(records.len(), 5, "three data records and two markers");
}

#[test]
fn recovery_walks_past_the_header_read_ahead_without_losing_markers() {
    // Regression: the header walk reads ahead 64 KiB at a time; a batch straddling that boundary once
    // made it skip ahead into stale bytes and miss markers, so committed transactions looked open
    // after a crash (and were then aborted as hanging).
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), small_config(64 << 20), NOW).unwrap();
    let mut sequence = 0;
    for i in 0..60 {
        let mut bytes = BatchBuilder::new(NOW).producer(4, 0, sequence).attributes(TRANSACTIONAL).records(50, 90).build();
        log.append(&mut bytes, ASSIGN, NOW).unwrap();
        sequence += 50;
        let control = if i % 7 == 3 { ControlType::Abort } else { ControlType::Commit };
        log.append_marker(&marker(4, 0, control), 0, NOW).unwrap();
    }
    assert!(log.size_bytes() > 4 * 64 * 1024, "the log must span several read-ahead windows");
    let (end, aborted) = (log.log_end_offset(), log.aborted_transactions(0, i64::MAX));
    drop(log);
    std::fs::remove_file(dir.path().join("aborted-txns")).unwrap();
    let log = PartitionLog::open(dir.path(), small_config(64 << 20), NOW).unwrap();
    assert_eq!((log.log_end_offset(), log.last_stable_offset()), (end, end));
    assert!(log.ongoing_transactions().is_empty());
    assert_eq!(log.aborted_transactions(0, i64::MAX), aborted);
    assert_eq!(aborted.len(), 9);
}

#[test]
fn an_open_transaction_with_old_record_timestamps_survives_a_crash() {
    // Reprocessing pipelines keep their input's timestamps: fresh data can carry day-old timestamps.
    // Recovery must still find the open transaction (it used to skip segments by record time).
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), small_config(1 << 20), NOW).unwrap();
    produce_txn(&mut log, 5, 0, 0, 2);
    drop(log);
    let three_days_later = NOW + 3 * 86_400_000;
    let log = PartitionLog::open(dir.path(), small_config(1 << 20), three_days_later).unwrap();
    assert_eq!(log.ongoing_transactions(), vec![(5, 0)]);
    assert_eq!(log.last_stable_offset(), 0);
}

/// Regression (issue 10, item 7): the abort's index entry was put in memory before the file, so when
/// the file write failed the partition went on acknowledging, a clean shutdown then wrote its marker,
/// and the restart skipped the rebuild: the aborted records reached read_committed consumers as if
/// committed. Now a failed index write ends the transaction nowhere (the last stable offset stays
/// before its records), the log refuses changes until a restart, and that restart rebuilds the entry.
#[test]
fn a_failed_aborted_index_write_stops_the_log_and_the_restart_rebuilds_the_entry() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), small_config(1 << 20), NOW).unwrap();
    log.append(&mut batch_of(&["before"], NOW), ASSIGN, NOW).unwrap(); // 0
    produce_txn(&mut log, 5, 0, 0, 3); // 1..=3
    // A directory where the index file should be: every write to it fails, even for root.
    let index_path = dir.path().join("aborted-txns");
    std::fs::create_dir(&index_path).unwrap();

    assert!(log.append_marker(&marker(5, 0, ControlType::Abort), 0, NOW).is_err(), "the index write failed");
    // Nothing of the aborted transaction may look committed: the last stable offset stays at its start.
    assert_eq!(log.last_stable_offset(), 1);
    // The log is in doubt until a restart: no more changes are accepted or acknowledged.
    assert!(matches!(log.append(&mut batch_of(&["after"], NOW), ASSIGN, NOW), Err(StorageError::Offline { .. })));
    assert!(matches!(log.append_marker(&marker(5, 0, ControlType::Abort), 0, NOW), Err(StorageError::Offline { .. })));
    // Reads still work.
    assert_eq!(values(&decode(&log.read(0, 1 << 20, 1, false).unwrap().bytes).unwrap()), vec!["before"]);
    // A shutdown after the failure is not clean, so the next open walks the log again.
    assert!(log.close().is_err());
    drop(log);
    assert!(!dir.path().join("clean-shutdown").exists());

    std::fs::remove_dir(&index_path).unwrap();
    let mut log = PartitionLog::open(dir.path(), small_config(1 << 20), NOW).unwrap();
    assert_eq!(log.log_end_offset(), 5, "the marker at 4 is in the log");
    assert_eq!(log.last_stable_offset(), 5);
    assert_eq!(log.aborted_transactions(0, 5), vec![AbortedTxn { producer_id: 5, first_offset: 1, last_offset: 4 }]);
    assert_eq!(log.append(&mut batch_of(&["after"], NOW), ASSIGN, NOW).unwrap().base_offset, 5);
    // And the rebuilt entry reached the file: a clean restart keeps it.
    log.close().unwrap();
    drop(log);
    let log = PartitionLog::open(dir.path(), small_config(1 << 20), NOW).unwrap();
    assert_eq!(log.aborted_transactions(0, 6), vec![AbortedTxn { producer_id: 5, first_offset: 1, last_offset: 4 }]);
}
