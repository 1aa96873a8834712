//! What replication needs from the log: the leader-epoch cache (first offset of each epoch,
//! OffsetForLeaderEpoch answers, its checkpoint across clean and unclean reopens and crashes, its
//! trimming by retention and DeleteRecords) and truncation of a divergent tail (`truncate_to`) at
//! every kind of cut point, with the state derived from the log (idempotent producers,
//! transactions, the aborted-transaction index, the producer fence) following it.

mod common;

use std::fs;
use std::path::Path;

use common::*;
use sluice_storage::testing::BatchBuilder;
use sluice_storage::{AbortedTxn, AppendMode, AppendResult, ControlType, LogConfig, PartitionLog, StorageError, TxnMarker};

const CHECKPOINT: &str = "leader-epoch-checkpoint";
const SEGMENT_BYTES: u64 = 1000;
/// The epochs `fill` writes in: batches 0..10 in epoch 0, 10..25 in epoch 2, 25..40 in epoch 5.
const FILLED_EPOCHS: [(i32, i64); 3] = [(0, 0), (2, 30), (5, 75)];
const FILLED_END: i64 = 120;
const TRANSACTIONAL: i16 = 0x10;

fn config() -> LogConfig {
    small_config(SEGMENT_BYTES)
}

fn in_epoch(epoch: i32) -> AppendMode {
    AppendMode::AssignOffsets { leader_epoch: epoch }
}

/// 40 batches of three records, values "v{batch}-{record}", batch `i` at offsets `3i..3i+2`, in the
/// epochs of `FILLED_EPOCHS`; nine batches fit a segment, so segments start at 0, 27, 54, 81, 108.
fn fill(log: &mut PartitionLog) {
    for i in 0..40i64 {
        let epoch = match i {
            0..10 => 0,
            10..25 => 2,
            _ => 5,
        };
        let values = [format!("v{i}-0"), format!("v{i}-1"), format!("v{i}-2")];
        let refs: Vec<&str> = values.iter().map(String::as_str).collect();
        log.append(&mut batch_of(&refs, NOW + i * 10), in_epoch(epoch), NOW).unwrap();
    }
}

fn segment_bases(dir: &Path) -> Vec<i64> {
    segment_files(dir).iter().map(|p| p.file_stem().unwrap().to_str().unwrap().parse().unwrap()).collect()
}

/// Values `fill` wrote at offsets `[from, to)`.
fn filled_values(from: i64, to: i64) -> Vec<String> {
    (from..to).map(|offset| format!("v{}-{}", offset / 3, offset % 3)).collect()
}

/// What a consumer sees, the log's range and its epoch cache: compared before and after reopens.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LogState {
    /// (offset, value) of every record from the log start.
    records: Vec<(i64, String)>,
    start: i64,
    end: i64,
    epochs: Vec<(i32, i64)>,
}

impl LogState {
    fn values(&self) -> Vec<String> {
        self.records.iter().map(|(_, value)| value.clone()).collect()
    }
}

fn state(log: &PartitionLog) -> LogState {
    let records = read_all(log).into_iter().map(|r| (r.offset, String::from_utf8(r.value.unwrap_or_default()).unwrap())).collect();
    LogState { records, start: log.log_start_offset(), end: log.log_end_offset(), epochs: log.leader_epochs().to_vec() }
}

/// Closes the log first when `clean`; otherwise drops it as a crash would.
fn reopen(dir: &Path, mut log: PartitionLog, clean: bool) -> PartitionLog {
    if clean {
        log.close().unwrap();
    }
    drop(log);
    PartitionLog::open(dir, config(), NOW).unwrap()
}

fn write_checkpoint(dir: &Path, entries: &[(i32, i64)]) {
    let mut text = format!("0\n{}\n", entries.len());
    for (epoch, offset) in entries {
        text.push_str(&format!("{epoch} {offset}\n"));
    }
    fs::write(dir.join(CHECKPOINT), text).unwrap();
}

#[test]
fn the_cache_holds_the_first_offset_of_each_newer_epoch_from_every_write_path() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), config(), NOW).unwrap();
    assert_eq!((log.latest_epoch(), log.end_offset_for_epoch(0)), (None, None));
    for epoch in [0, 0, 2, 2, 5] {
        log.append(&mut batch_of(&["a", "b", "c"], NOW), in_epoch(epoch), NOW).unwrap();
    }
    assert_eq!(log.leader_epochs(), &[(0, 0), (2, 6), (5, 12)]);
    let answers: Vec<_> = [0, 1, 2, 3, 5, 7].iter().map(|e| log.end_offset_for_epoch(*e)).collect();
    assert_eq!(answers, vec![Some((0, 6)), Some((0, 6)), Some((2, 12)), Some((2, 12)), Some((5, 15)), Some((5, 15))]);
    assert_eq!(log.end_offset_for_epoch(-1), None);

    // An older epoch and an unstamped replica batch are accepted and add nothing.
    log.append(&mut batch_of(&["old"], NOW), in_epoch(3), NOW).unwrap();
    let mut unstamped = BatchBuilder::new(NOW).base_offset(16).record(None, Some(b"r")).build();
    log.append(&mut unstamped, AppendMode::PreserveOffsets, NOW).unwrap();
    assert_eq!(log.leader_epochs(), &[(0, 0), (2, 6), (5, 12)]);
    // A replica keeps the leader's epochs; a marker carries the epoch it is written in.
    let mut replica = BatchBuilder::new(NOW).base_offset(20).partition_leader_epoch(6).records(2, 4).build();
    log.append(&mut replica, AppendMode::PreserveOffsets, NOW).unwrap();
    let marker = TxnMarker { producer_id: 1, producer_epoch: 0, control: ControlType::Commit, coordinator_epoch: 0 };
    assert_eq!(log.append_marker(&marker, 8, NOW).unwrap().base_offset, 22);
    assert_eq!(log.leader_epochs(), &[(0, 0), (2, 6), (5, 12), (6, 20), (8, 22)]);
    assert_eq!((log.latest_epoch(), log.end_offset_for_epoch(5), log.end_offset_for_epoch(7)), (Some(8), Some((5, 20)), Some((6, 22))));
    assert_eq!(fs::read_to_string(dir.path().join(CHECKPOINT)).unwrap(), "0\n5\n0 0\n2 6\n5 12\n6 20\n8 22\n");

    for clean in [true, false] {
        log = reopen(dir.path(), log, clean);
        assert_eq!(log.leader_epochs(), &[(0, 0), (2, 6), (5, 12), (6, 20), (8, 22)], "clean {clean}");
    }
}

#[test]
fn a_checkpoint_ahead_of_the_log_is_trimmed_and_a_missing_or_damaged_one_is_seeded() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), config(), NOW).unwrap();
    fill(&mut log);
    drop(log);
    // A crash after the checkpoint named new epochs and before their batches reached the log.
    write_checkpoint(dir.path(), &[FILLED_EPOCHS[0], FILLED_EPOCHS[1], FILLED_EPOCHS[2], (7, FILLED_END), (9, FILLED_END + 5)]);
    let log = PartitionLog::open(dir.path(), config(), NOW).unwrap();
    assert_eq!(log.leader_epochs(), &FILLED_EPOCHS);
    assert_eq!(fs::read_to_string(dir.path().join(CHECKPOINT)).unwrap(), "0\n3\n0 0\n2 30\n5 75\n", "rewritten at open");
    drop(log);

    for damage in ["", "0\n2\n0 0\n", "0\n1\n5 x\n", "0\n2\n5 10\n2 20\n"] {
        fs::write(dir.path().join(CHECKPOINT), damage).unwrap();
        let log = PartitionLog::open(dir.path(), config(), NOW).unwrap();
        assert_eq!(log.leader_epochs(), &[(0, 0)], "{damage:?}: one entry, epoch 0 from the log start");
        drop(log);
    }
    fs::remove_file(dir.path().join(CHECKPOINT)).unwrap();
    let mut log = PartitionLog::open(dir.path(), config(), NOW).unwrap();
    assert_eq!(log.leader_epochs(), &[(0, 0)]);
    log.append(&mut batch_of(&["x"], NOW), in_epoch(6), NOW).unwrap();
    assert_eq!(log.leader_epochs(), &[(0, 0), (6, FILLED_END)]);

    // An empty log has nothing to seed, and gets no file.
    let empty = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(empty.path(), config(), NOW).unwrap();
    assert!(log.leader_epochs().is_empty() && !empty.path().join(CHECKPOINT).exists());
}

#[test]
fn retention_and_delete_records_move_the_first_entry_up_to_the_log_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), config(), NOW).unwrap();
    fill(&mut log);
    assert_eq!(log.delete_records_before(20).unwrap(), 20);
    assert_eq!(log.leader_epochs(), &[(0, 20), (2, 30), (5, 75)], "the start lies inside epoch 0");
    assert_eq!(log.delete_records_before(40).unwrap(), 40);
    assert_eq!(log.leader_epochs(), &[(2, 40), (5, 75)]);
    assert_eq!(log.end_offset_for_epoch(0), None, "older than every epoch the log still holds");
    assert_eq!((log.end_offset_for_epoch(2), log.end_offset_for_epoch(4)), (Some((2, 75)), Some((2, 75))));
    log = reopen(dir.path(), log, false);
    assert_eq!(log.leader_epochs(), &[(2, 40), (5, 75)]);

    let mut config = config();
    config.retention_bytes = Some(250);
    log.set_config(config);
    let deleted = log.enforce_retention(NOW).unwrap();
    assert!(deleted.segments_deleted > 0);
    let start = log.log_start_offset();
    assert!(start > 75, "retention kept only the last segments");
    assert_eq!(log.leader_epochs(), &[(5, start)]);
    assert_eq!((log.end_offset_for_epoch(2), log.end_offset_for_epoch(5)), (None, Some((5, FILLED_END))));
    log = reopen(dir.path(), log, false);
    assert_eq!(log.leader_epochs(), &[(5, start)]);
    // Emptied by DeleteRecords: no epoch is left to answer for.
    log.delete_records_before(FILLED_END).unwrap();
    assert_eq!((log.leader_epochs(), log.latest_epoch()), (&[][..], None));
}

/// Truncates a freshly filled log (after `delete_before`, if any) to `cut`, checks the result has
/// range `[start, end)` with `epochs`, that clean and unclean reopens give the same log, and that both
/// append modes continue at the new end.
fn check_truncation(name: &str, delete_before: Option<i64>, cut: i64, (start, end): (i64, i64), epochs: &[(i32, i64)]) {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), config(), NOW).unwrap();
    fill(&mut log);
    assert_eq!(segment_bases(dir.path()), vec![0, 27, 54, 81, 108]);
    if let Some(offset) = delete_before {
        log.delete_records_before(offset).unwrap();
    }
    assert_eq!(log.truncate_to(cut, NOW).unwrap(), end, "{name}");
    let after = state(&log);
    assert_eq!((after.values(), after.start, after.end, &after.epochs[..]), (filled_values(start, end), start, end, epochs), "{name}");
    assert!(log.recovery_point() <= end, "{name}");
    assert_eq!(log.read(end, 1 << 20, i64::MAX, true).unwrap().bytes.len(), 0, "{name}");
    assert!(matches!(log.read(end + 1, 1 << 20, i64::MAX, true), Err(StorageError::OffsetOutOfRange { .. })), "{name}");
    assert!(segment_bases(dir.path()).iter().all(|base| *base <= end), "{name}: no segment starts beyond the end");
    assert_eq!(segment_bases(dir.path()).len(), log.segment_count(), "{name}");

    // A crash first: a clean close rewrites the recovery point and would hide a stale one.
    for clean in [false, true] {
        log = reopen(dir.path(), log, clean);
        assert_eq!(state(&log), after, "{name}, reopened clean {clean}");
    }
    let assigned = log.append(&mut batch_of(&["after"], NOW), in_epoch(9), NOW).unwrap();
    assert_eq!(assigned.base_offset, end, "{name}");
    let mut replica = BatchBuilder::new(NOW).base_offset(end + 1).partition_leader_epoch(11).record(None, Some(b"replica")).build();
    assert_eq!(log.append(&mut replica, AppendMode::PreserveOffsets, NOW).unwrap().base_offset, end + 1, "{name}");
    let mut epochs = epochs.to_vec();
    epochs.extend([(9, end), (11, end + 1)]);
    for clean in [false, true] {
        log = reopen(dir.path(), log, clean);
        let reopened = state(&log);
        let mut values = filled_values(start, end);
        values.extend(["after".to_string(), "replica".to_string()]);
        assert_eq!(
            (reopened.values(), reopened.start, reopened.end, &reopened.epochs),
            (values, start, end + 2, &epochs),
            "{name}, clean {clean}"
        );
    }
}

#[test]
fn truncation_inside_the_active_segment_rounds_down_to_the_batch_start() {
    check_truncation("active, inside a batch", None, 115, (0, 114), &FILLED_EPOCHS);
}

#[test]
fn truncation_at_a_segment_base_makes_the_previous_segment_active() {
    check_truncation("at the active segment's base", None, 108, (0, 108), &FILLED_EPOCHS);
    check_truncation("at a sealed segment's base", None, 54, (0, 54), &FILLED_EPOCHS[..2]);
}

#[test]
fn truncation_into_a_sealed_segment_deletes_every_later_one() {
    check_truncation("three segments back, inside a batch", None, 17, (0, 15), &FILLED_EPOCHS[..1]);
    check_truncation("inside the batch that starts epoch 5", None, 76, (0, 75), &FILLED_EPOCHS[..2]);
}

#[test]
fn truncation_that_keeps_no_record_restarts_the_log_empty() {
    check_truncation("below the log start", Some(40), 20, (20, 20), &[]);
    check_truncation("inside the batch holding the log start", Some(31), 32, (31, 31), &[]);
    check_truncation("at the first offset", None, 0, (0, 0), &[]);
    check_truncation("below zero", None, -5, (0, 0), &[]);
}

#[test]
fn a_follower_behind_its_leaders_log_start_restarts_there() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), config(), NOW).unwrap();
    fill(&mut log);
    assert_eq!(log.restart_at(500, NOW).unwrap(), 500);
    let after = state(&log);
    assert_eq!((after.records.len(), after.start, after.end, after.epochs.len()), (0, 500, 500, 0));
    assert!(log.recovery_point() <= 500);
    // The leader's batches continue from there, and survive a crash and a clean reopen.
    let mut replica = BatchBuilder::new(NOW).base_offset(500).partition_leader_epoch(7).record(None, Some(b"from the leader")).build();
    log.append(&mut replica, AppendMode::PreserveOffsets, NOW).unwrap();
    for clean in [false, true] {
        log = reopen(dir.path(), log, clean);
        let reopened = state(&log);
        assert_eq!(
            (reopened.values(), reopened.start, reopened.end, reopened.epochs),
            (vec!["from the leader".to_string()], 500, 501, vec![(7, 500)]),
            "clean {clean}"
        );
    }
}

#[test]
fn truncation_at_or_after_the_end_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), config(), NOW).unwrap();
    fill(&mut log);
    let before = state(&log);
    assert_eq!(log.truncate_to(FILLED_END, NOW).unwrap(), FILLED_END);
    assert_eq!(log.truncate_to(FILLED_END + 50, NOW).unwrap(), FILLED_END);
    assert_eq!(state(&log), before);
    assert_eq!(before.values(), expected_values(40));
}

#[test]
fn offline_and_failed_logs_refuse_truncation() {
    let dir = tempfile::tempdir().unwrap();
    let mut offline = PartitionLog::offline(dir.path(), config(), "disk gone".to_string());
    assert!(matches!(offline.truncate_to(0, NOW), Err(StorageError::Offline { .. })));
    assert_eq!((offline.latest_epoch(), offline.end_offset_for_epoch(3)), (None, None));
    let mut deleted = PartitionLog::open(dir.path(), config(), NOW).unwrap();
    deleted.delete().unwrap();
    assert!(deleted.truncate_to(0, NOW).is_err());
}

fn produce(log: &mut PartitionLog, producer_id: i64, sequence: i32, records: usize, attributes: i16) -> AppendResult {
    let mut bytes = BatchBuilder::new(NOW).producer(producer_id, 0, sequence).attributes(attributes).records(records, 8).build();
    log.append(&mut bytes, in_epoch(1), NOW).unwrap()
}

#[test]
fn a_producer_whose_batches_were_cut_may_send_them_again() {
    for clean in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let mut log = PartitionLog::open(dir.path(), config(), NOW).unwrap();
        for batch in 0..6 {
            produce(&mut log, 1, batch * 2, 2, 0); // offsets 2b..=2b+1
        }
        assert_eq!(log.truncate_to(7, NOW).unwrap(), 6, "rounded down to the batch at 6..=7");
        for (sequence, offset) in [(6, 6), (8, 8)] {
            let resent = produce(&mut log, 1, sequence, 2, 0);
            assert_eq!((resent.base_offset, resent.duplicate), (offset, false), "clean {clean}");
        }
        let retry = produce(&mut log, 1, 2, 2, 0);
        assert_eq!((retry.base_offset, retry.duplicate), (2, true), "a batch below the cut is still known");
        log = reopen(dir.path(), log, clean);
        assert_eq!(log.truncate_to(8, NOW).unwrap(), 8);
        log = reopen(dir.path(), log, clean);
        assert_eq!(produce(&mut log, 1, 8, 2, 0).base_offset, 8, "clean {clean}");
        let mut gap = BatchBuilder::new(NOW).producer(1, 0, 20).records(1, 8).build();
        assert!(matches!(log.append(&mut gap, in_epoch(1), NOW), Err(StorageError::OutOfOrderSequence { expected: 10, .. })));
    }
}

#[test]
fn a_transaction_whose_marker_was_cut_is_open_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), config(), NOW).unwrap();
    let abort = TxnMarker { producer_id: 7, producer_epoch: 0, control: ControlType::Abort, coordinator_epoch: 0 };
    log.append(&mut batch_of(&["a"], NOW), in_epoch(1), NOW).unwrap(); // 0
    produce(&mut log, 7, 0, 3, TRANSACTIONAL); // 1..=3
    assert_eq!(log.append_marker(&abort, 1, NOW).unwrap().base_offset, 4);
    produce(&mut log, 8, 0, 1, TRANSACTIONAL); // 5
    let commit = TxnMarker { producer_id: 8, control: ControlType::Commit, ..abort };
    log.append_marker(&commit, 1, NOW).unwrap(); // 6
    log.append(&mut batch_of(&["b"], NOW), in_epoch(1), NOW).unwrap(); // 7
    let aborted = AbortedTxn { producer_id: 7, first_offset: 1, last_offset: 4 };
    assert_eq!((log.aborted_transactions(0, 8), log.last_stable_offset()), (vec![aborted], 8));

    assert_eq!(log.truncate_to(4, NOW).unwrap(), 4);
    let open_again = |log: &PartitionLog, when: &str| {
        assert!(log.aborted_transactions(0, 100).is_empty(), "{when}");
        assert_eq!(log.aborted_transaction_count(), 0, "{when}");
        assert_eq!((log.last_stable_offset(), log.ongoing_transactions()), (1, vec![(7, 1)]), "{when}");
    };
    open_again(&log, "after the truncation");
    log = reopen(dir.path(), log, false);
    open_again(&log, "after a crash");
    log = reopen(dir.path(), log, true);
    open_again(&log, "after a clean close");

    // The coordinator's abort, written again, lands in the index again, once.
    assert_eq!(log.append_marker(&abort, 2, NOW).unwrap().base_offset, 4);
    assert_eq!((log.aborted_transactions(0, 5), log.last_stable_offset()), (vec![aborted], 5));
    log = reopen(dir.path(), log, false);
    assert_eq!((log.aborted_transactions(0, 5), log.aborted_transaction_count()), (vec![aborted], 1));
}

#[test]
fn the_producer_fence_is_honoured_by_the_rebuild_after_a_truncation() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), config(), NOW).unwrap();
    for batch in 0..3 {
        produce(&mut log, 1, batch * 2, 2, 0); // a mirrored producer, offsets 0..=5
    }
    assert_eq!(log.fence_producers().unwrap(), 6);
    assert_eq!(log.truncate_to(4, NOW).unwrap(), 4);
    // The rebuild meets producer 1's batches again, below the fence: it is forgotten again, so a
    // local producer with the same id starts fresh instead of being judged by foreign sequences.
    let local = produce(&mut log, 1, 100, 1, 0);
    assert_eq!((local.base_offset, local.duplicate), (4, false));
    assert_eq!(fs::read_to_string(dir.path().join("producer-fence")).unwrap().trim(), "6", "the fence file is kept");
}
