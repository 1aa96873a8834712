//! The partition log through its public API: appends, reads, timestamps, DeleteRecords, retention,
//! offset-preserving appends and the guards on bad input.

mod common;

use common::*;
use sluice_storage::testing::{BatchBuilder, decode};
use sluice_storage::{AppendMode, BatchHeader, LogConfig, PartitionLog, StorageError, TimestampType, validate_batches};

#[test]
fn append_and_read_round_trip_across_segment_rolls() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), small_config(1000), NOW).unwrap();
    assert_eq!((log.log_start_offset(), log.log_end_offset(), log.segment_count()), (0, 0, 1));
    let results = append_batches(&mut log, 0, 60, NOW);
    for (i, result) in results.iter().enumerate() {
        assert_eq!((result.base_offset, result.last_offset, result.record_count), (3 * i as i64, 3 * i as i64 + 2, 3));
        assert!(!result.duplicate);
        assert_eq!(result.log_append_time, -1);
    }
    assert_eq!(log.log_end_offset(), 180);
    assert!(log.segment_count() >= 6, "{} segments", log.segment_count());
    let files = segment_files(dir.path());
    assert_eq!(files.len(), log.segment_count());
    assert!(files.iter().all(|f| f.metadata().unwrap().len() <= 1000));
    assert_eq!(log.size_bytes(), files.iter().map(|f| f.metadata().unwrap().len()).sum::<u64>());

    let records = read_all(&log);
    assert_eq!(values(&records), expected_values(60));
    assert_eq!(records.iter().map(|r| r.offset).collect::<Vec<_>>(), (0..180).collect::<Vec<_>>());

    // Every offset is served starting with the batch that holds it.
    for offset in 0..180 {
        let read = log.read(offset, 1, 180, true).unwrap();
        let header = BatchHeader::parse(&read.bytes).unwrap();
        assert!(header.base_offset <= offset && offset <= header.last_offset(), "offset {offset}");
        assert_eq!(read.bytes.len(), header.total_size());
        assert_eq!((read.log_start_offset, read.log_end_offset), (0, 180));
    }
}

#[test]
fn reads_honour_max_bytes_min_one_and_the_upper_bound() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), small_config(1 << 20), NOW).unwrap();
    append_batches(&mut log, 0, 10, NOW);
    let size = BatchHeader::parse(&log.read(0, 1, 30, true).unwrap().bytes).unwrap().total_size();
    // All batches have the same size here: values have the same length.
    assert_eq!(log.size_bytes(), 10 * size as u64);

    let two = log.read(0, 2 * size + size / 2, 30, false).unwrap();
    assert_eq!(two.bytes.len(), 2 * size);
    assert!(log.read(0, size - 1, 30, false).unwrap().bytes.is_empty());
    assert_eq!(log.read(0, size - 1, 30, true).unwrap().bytes.len(), size);
    assert!(log.read(0, 0, 30, false).unwrap().bytes.is_empty());

    // The upper bound (the high watermark) stops at whole batches below it.
    let bounded = log.read(0, 1 << 20, 6, false).unwrap();
    assert_eq!(decode(&bounded.bytes).unwrap().last().unwrap().offset, 5);
    assert!(log.read(3, 1 << 20, 5, true).unwrap().bytes.is_empty(), "a batch reaching the bound is not served");
    assert!(log.read(7, 1 << 20, 6, true).unwrap().bytes.is_empty());

    // The log end reads as empty; beyond it, or below the start, is out of range.
    let at_end = log.read(30, 1 << 20, 30, true).unwrap();
    assert!(at_end.bytes.is_empty());
    assert_eq!(at_end.log_end_offset, 30);
    assert!(matches!(log.read(31, 100, 31, true), Err(StorageError::OffsetOutOfRange { requested: 31, start: 0, end: 30 })));
    assert!(matches!(log.read(-1, 100, 30, true), Err(StorageError::OffsetOutOfRange { .. })));
}

#[test]
fn reads_continue_into_later_segments() {
    let dir = tempfile::tempdir().unwrap();
    // Every batch gets its own segment.
    let mut log = PartitionLog::open(dir.path(), small_config(50), NOW).unwrap();
    append_batches(&mut log, 0, 8, NOW);
    assert_eq!(log.segment_count(), 8);
    let read = log.read(4, 1 << 20, 24, false).unwrap();
    let records = decode(&read.bytes).unwrap();
    assert_eq!((records.first().unwrap().offset, records.last().unwrap().offset), (3, 23));
}

#[test]
fn index_lookups_are_correct_with_small_intervals_and_after_reopen() {
    for interval in [0u32, 1, 100, 1000] {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig { index_interval_bytes: interval, ..small_config(4000) };
        let mut log = PartitionLog::open(dir.path(), config.clone(), NOW).unwrap();
        let mut expected = Vec::new();
        for i in 0..120usize {
            // Batches of varying record counts and sizes.
            let n = 1 + i % 5;
            let mut bytes = BatchBuilder::new(NOW).records(n, (i * 7) % 90).build();
            let result = log.append(&mut bytes, ASSIGN, NOW).unwrap();
            expected.push((result.base_offset, result.last_offset));
        }
        let index_bytes: u64 = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "index"))
            .map(|p| p.metadata().unwrap().len())
            .sum();
        if interval <= 100 {
            assert!(index_bytes > 0, "interval {interval}: no index entries written");
        }
        let check = |log: &PartitionLog| {
            for &(base, last) in &expected {
                for offset in base..=last {
                    let header = BatchHeader::parse(&log.read(offset, 1, i64::MAX, true).unwrap().bytes).unwrap();
                    assert_eq!((header.base_offset, header.last_offset()), (base, last), "interval {interval}, offset {offset}");
                }
            }
        };
        check(&log);
        log.close().unwrap();
        let log = PartitionLog::open(dir.path(), config, NOW).unwrap();
        check(&log);
    }
}

#[test]
fn offset_for_timestamp_finds_the_first_record_at_or_after() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), small_config(400), NOW).unwrap();
    // Batch i: three records at NOW + 10i, +1, +2.
    append_batches(&mut log, 0, 30, NOW);
    assert!(log.segment_count() > 3);
    assert_eq!(log.offset_for_timestamp(0).unwrap(), Some((0, NOW)));
    assert_eq!(log.offset_for_timestamp(NOW).unwrap(), Some((0, NOW)));
    assert_eq!(log.offset_for_timestamp(NOW + 1).unwrap(), Some((1, NOW + 1)));
    assert_eq!(log.offset_for_timestamp(NOW + 3).unwrap(), Some((3, NOW + 10)));
    assert_eq!(log.offset_for_timestamp(NOW + 152).unwrap(), Some((47, NOW + 152)));
    assert_eq!(log.offset_for_timestamp(NOW + 292).unwrap(), Some((89, NOW + 292)));
    assert_eq!(log.offset_for_timestamp(NOW + 293).unwrap(), None);
    // Below the log start nothing is returned.
    log.delete_records_before(50).unwrap();
    assert_eq!(log.offset_for_timestamp(0).unwrap(), Some((50, NOW + 162)));
}

#[test]
fn max_timestamp_names_the_record_that_carries_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), small_config(1 << 20), NOW).unwrap();
    assert_eq!(log.max_timestamp(), None);
    let mut builder = BatchBuilder::new(NOW);
    for i in 0..10 {
        builder = builder.record_at(if i == 7 { 50_000 } else { i }, None, Some(b"v"));
    }
    log.append(&mut builder.build(), ASSIGN, NOW).unwrap();
    append_batches(&mut log, 1, 2, NOW);
    assert_eq!(log.max_timestamp(), Some((NOW + 50_000, 7)));
    log.close().unwrap();
    let log = PartitionLog::open(dir.path(), small_config(1 << 20), NOW).unwrap();
    assert_eq!(log.max_timestamp(), Some((NOW + 50_000, 7)));
}

#[test]
fn log_append_time_stamps_batches_and_keeps_them_valid() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig { timestamp_type: TimestampType::LogAppendTime, ..small_config(1 << 20) };
    let mut log = PartitionLog::open(dir.path(), config, NOW).unwrap();
    let mut bytes = batch_of(&["a", "b"], 12_345);
    let result = log.append(&mut bytes, ASSIGN, NOW + 5).unwrap();
    assert_eq!(result.log_append_time, NOW + 5);
    let read = log.read(0, 1 << 20, 2, true).unwrap();
    assert_eq!(&read.bytes[..], &bytes[..], "the stored bytes are the rewritten buffer");
    let header = validate_batches(&read.bytes, u32::MAX).unwrap()[0];
    assert_eq!((header.timestamp_type(), header.max_timestamp, header.base_timestamp), (TimestampType::LogAppendTime, NOW + 5, 12_345));
    assert!(decode(&read.bytes).unwrap().iter().all(|r| r.timestamp == NOW + 5));
    assert_eq!(log.offset_for_timestamp(NOW).unwrap(), Some((0, NOW + 5)));
}

#[test]
fn leader_epoch_and_offsets_are_rewritten_and_compressed_batches_pass_through() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), small_config(1 << 20), NOW).unwrap();
    append_batches(&mut log, 0, 1, NOW);
    let original = BatchBuilder::new(NOW).base_offset(999).compressed(3, 4, b"\x04\x22\x4d\x18 opaque lz4 frame").build();
    let mut bytes = original.clone();
    let result = log.append(&mut bytes, AppendMode::AssignOffsets { leader_epoch: 7 }, NOW).unwrap();
    assert_eq!((result.base_offset, result.last_offset, result.record_count), (3, 6, 4));
    let read = log.read(3, 1 << 20, 7, true).unwrap();
    assert_eq!(&read.bytes[..], &bytes[..]);
    // Only the base offset and the leader epoch changed; the CRC-covered bytes are untouched.
    assert_eq!(&read.bytes[16..], &original[16..]);
    let header = BatchHeader::parse(&read.bytes).unwrap();
    assert_eq!((header.base_offset, header.partition_leader_epoch, header.compression()), (3, 7, 3));
    assert_eq!(log.offset_for_timestamp(NOW).unwrap(), Some((0, NOW)));
}

#[test]
fn bad_batches_are_rejected_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig { max_batch_bytes: 300, ..small_config(1 << 20) };
    let mut log = PartitionLog::open(dir.path(), config, NOW).unwrap();
    let good = batch_of(&["a"], NOW);

    let mut flipped = good.clone();
    *flipped.last_mut().unwrap() ^= 0x40;
    assert!(matches!(log.append(&mut flipped, ASSIGN, NOW), Err(StorageError::CorruptMessage(m)) if m.contains("CRC")));

    // A good batch followed by a bad one: the whole append is refused.
    let mut mixed = [good.clone(), flipped].concat();
    assert!(matches!(log.append(&mut mixed, ASSIGN, NOW), Err(StorageError::CorruptMessage(_))));

    let mut big = BatchBuilder::new(NOW).records(1, 400).build();
    assert!(matches!(log.append(&mut big, ASSIGN, NOW), Err(StorageError::RecordTooLarge { max: 300, .. })));
    assert!(matches!(log.append(&mut [], ASSIGN, NOW), Err(StorageError::InvalidRecord(_))));
    let mut truncated = good[..good.len() - 3].to_vec();
    assert!(matches!(log.append(&mut truncated, ASSIGN, NOW), Err(StorageError::CorruptMessage(_))));

    assert_eq!((log.log_end_offset(), log.size_bytes()), (0, 0));
    let mut ok = good;
    assert_eq!(log.append(&mut ok, ASSIGN, NOW).unwrap().base_offset, 0);
}

#[test]
fn preserve_offsets_accepts_gaps_and_refuses_going_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), small_config(300), NOW).unwrap();
    let mut first = BatchBuilder::new(NOW).base_offset(0).records(3, 5).build();
    log.append(&mut first, AppendMode::PreserveOffsets, NOW).unwrap();
    let mut gap = BatchBuilder::new(NOW).base_offset(10).records(2, 5).build();
    log.append(&mut gap, AppendMode::PreserveOffsets, NOW).unwrap();
    // A compacted batch: offsets 100..=104 with records only at 100 and 104.
    let mut compacted = BatchBuilder::new(NOW).base_offset(100).record(None, Some(b"x")).skip_offsets(3).record(None, Some(b"y")).build();
    let result = log.append(&mut compacted, AppendMode::PreserveOffsets, NOW).unwrap();
    assert_eq!((result.base_offset, result.last_offset, result.record_count), (100, 104, 2));
    assert_eq!(log.log_end_offset(), 105);

    assert_eq!(BatchHeader::parse(&log.read(5, 1, 105, true).unwrap().bytes).unwrap().base_offset, 10);
    assert_eq!(BatchHeader::parse(&log.read(50, 1, 105, true).unwrap().bytes).unwrap().base_offset, 100);
    let offsets: Vec<i64> = read_all(&log).iter().map(|r| r.offset).collect();
    assert_eq!(offsets, vec![0, 1, 2, 10, 11, 100, 104]);

    let mut back = BatchBuilder::new(NOW).base_offset(104).records(1, 5).build();
    assert!(matches!(log.append(&mut back, AppendMode::PreserveOffsets, NOW), Err(StorageError::InvalidRecord(_))));
    let mut unordered =
        [BatchBuilder::new(NOW).base_offset(200).records(2, 5).build(), BatchBuilder::new(NOW).base_offset(201).records(1, 5).build()]
            .concat();
    assert!(matches!(log.append(&mut unordered, AppendMode::PreserveOffsets, NOW), Err(StorageError::InvalidRecord(_))));
    assert_eq!(log.log_end_offset(), 105);

    // Producer appends continue after the replicated offsets.
    assert_eq!(log.append(&mut batch_of(&["p"], NOW), ASSIGN, NOW).unwrap().base_offset, 105);
    log.close().unwrap();
    let log = PartitionLog::open(dir.path(), small_config(300), NOW).unwrap();
    assert_eq!(read_all(&log).iter().map(|r| r.offset).collect::<Vec<_>>(), vec![0, 1, 2, 10, 11, 100, 104, 105]);
}

#[test]
fn a_replica_starting_far_ahead_names_the_first_segment_after_its_first_batch() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), small_config(1 << 20), NOW).unwrap();
    let mut bytes = BatchBuilder::new(NOW).base_offset(10_000_000_000).records(2, 5).build();
    log.append(&mut bytes, AppendMode::PreserveOffsets, NOW).unwrap();
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (10_000_000_000, 10_000_000_002));
    assert_eq!(segment_files(dir.path()).len(), 1);
    assert!(segment_files(dir.path())[0].ends_with("00000000010000000000.log"));
    drop(log);
    let log = PartitionLog::open(dir.path(), small_config(1 << 20), NOW).unwrap();
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (10_000_000_000, 10_000_000_002));
}

#[test]
fn delete_records_moves_the_start_durably_and_drops_whole_segments() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), small_config(400), NOW).unwrap();
    append_batches(&mut log, 0, 30, NOW);
    let segments = log.segment_count();
    assert_eq!(log.delete_records_before(25).unwrap(), 25);
    assert!(log.segment_count() < segments);
    assert_eq!(log.log_start_offset(), 25);
    assert!(matches!(log.read(24, 100, 90, true), Err(StorageError::OffsetOutOfRange { start: 25, .. })));
    let first = BatchHeader::parse(&log.read(25, 1, 90, true).unwrap().bytes).unwrap();
    assert_eq!(first.base_offset, 24, "the batch holding the new start is served whole");
    assert_eq!(log.delete_records_before(10).unwrap(), 25, "the start never moves back");
    assert!(matches!(log.delete_records_before(91), Err(StorageError::OffsetOutOfRange { .. })));

    drop(log);
    let mut log = PartitionLog::open(dir.path(), small_config(400), NOW).unwrap();
    assert_eq!(log.log_start_offset(), 25);
    assert_eq!(read_all(&log).first().unwrap().offset, 25);

    // Up to the end: everything goes, and appends continue at the old end.
    assert_eq!(log.delete_records_before(90).unwrap(), 90);
    assert_eq!((log.segment_count(), log.size_bytes(), log.log_end_offset()), (1, 0, 90));
    assert_eq!(log.append(&mut batch_of(&["next"], NOW), ASSIGN, NOW).unwrap().base_offset, 90);
    log.close().unwrap();
    let log = PartitionLog::open(dir.path(), small_config(400), NOW).unwrap();
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (90, 91));
}

#[test]
fn retention_by_time_deletes_old_segments_and_rolls_an_expired_active_one() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig { retention_ms: Some(60_000), ..small_config(400) };
    let mut log = PartitionLog::open(dir.path(), config, NOW).unwrap();
    append_batches(&mut log, 0, 20, NOW - 120_000);
    append_batches(&mut log, 20, 20, NOW);
    let before = log.segment_count();
    let stats = log.enforce_retention(NOW).unwrap();
    assert!(stats.segments_deleted > 0 && stats.segments_deleted < before);
    assert!(stats.bytes_deleted > 0);
    // Only whole segments whose newest record is older than the cutoff went.
    assert!(log.log_start_offset() > 0 && log.log_start_offset() <= 60);
    let records = read_all(&log);
    assert!(records.iter().filter(|r| r.offset < 60).all(|r| r.timestamp < NOW - 60_000));
    assert_eq!(records.last().unwrap().offset, 119);

    // Much later, everything has expired, including the active segment.
    let stats = log.enforce_retention(NOW + 10 * 60_000).unwrap();
    assert!(stats.segments_deleted > 0);
    assert_eq!((log.segment_count(), log.size_bytes(), log.log_start_offset(), log.log_end_offset()), (1, 0, 120, 120));
    assert_eq!(log.append(&mut batch_of(&["after"], NOW), ASSIGN, NOW).unwrap().base_offset, 120);

    // Retention does nothing when the policy does not include delete.
    let mut config = log.config().clone();
    config.delete_enabled = false;
    log.set_config(config);
    assert_eq!(log.enforce_retention(NOW + 100 * 60_000).unwrap().segments_deleted, 0);
}

#[test]
fn retention_by_size_keeps_the_newest_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig { retention_bytes: Some(1500), ..small_config(400) };
    let mut log = PartitionLog::open(dir.path(), config, NOW).unwrap();
    append_batches(&mut log, 0, 60, NOW);
    let stats = log.enforce_retention(NOW).unwrap();
    assert!(stats.segments_deleted > 0);
    assert!(log.size_bytes() >= 1500 && log.size_bytes() < 1500 + 400, "{} bytes left", log.size_bytes());
    assert_eq!(log.log_end_offset(), 180);
    assert_eq!(read_all(&log).last().unwrap().offset, 179);
    assert_eq!(log.enforce_retention(NOW).unwrap().segments_deleted, 0);
}

#[test]
fn segments_roll_on_time_since_their_first_append() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig { segment_ms: Some(1000), ..small_config(1 << 20) };
    let mut log = PartitionLog::open(dir.path(), config, NOW).unwrap();
    log.append(&mut batch_of(&["a"], NOW), ASSIGN, NOW).unwrap();
    log.append(&mut batch_of(&["b"], NOW), ASSIGN, NOW + 999).unwrap();
    assert_eq!(log.segment_count(), 1);
    log.append(&mut batch_of(&["c"], NOW), ASSIGN, NOW + 1000).unwrap();
    assert_eq!(log.segment_count(), 2);
    log.append(&mut batch_of(&["d"], NOW), ASSIGN, NOW + 1999).unwrap();
    assert_eq!(log.segment_count(), 2);
}

#[test]
fn append_may_roll_predicts_every_roll() {
    // Checked against the log itself: before each append, the prediction says whether the segment
    // count is about to change (by size here, by time below).
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), small_config(1000), NOW).unwrap();
    let mut rolls = 0;
    for i in 0..40 {
        let mut batch = batch_of(&["some value", "another value"], NOW);
        let predicted = log.append_may_roll(batch.len() as u64, NOW);
        let before = (log.segment_count(), log.size_bytes());
        log.append(&mut batch, ASSIGN, NOW).unwrap();
        let rolled = log.segment_count() != before.0;
        // An empty active segment (the first append) is reported too: replacing one also fsyncs.
        assert_eq!(predicted, rolled || before.1 == 0, "append {i}");
        rolls += usize::from(rolled);
    }
    assert!(rolls >= 3, "{rolls} rolls");

    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig { segment_ms: Some(1000), ..small_config(1 << 20) };
    let mut log = PartitionLog::open(dir.path(), config, NOW).unwrap();
    log.append(&mut batch_of(&["a"], NOW), ASSIGN, NOW).unwrap();
    assert!(!log.append_may_roll(100, NOW + 999));
    assert!(log.append_may_roll(100, NOW + 1000));
}

#[test]
fn segment_bytes_is_clamped_below_2_gib() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), LogConfig { segment_bytes: u64::MAX, ..LogConfig::default() }, NOW).unwrap();
    assert_eq!(log.config().segment_bytes, sluice_storage::SEGMENT_BYTES_MAX);
    log.set_config(LogConfig { segment_bytes: 5 << 30, ..LogConfig::default() });
    assert_eq!(log.config().segment_bytes, sluice_storage::SEGMENT_BYTES_MAX);
}

#[test]
fn flush_close_and_delete() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("topic-0");
    let mut log = PartitionLog::open(&path, small_config(1 << 20), NOW).unwrap();
    append_batches(&mut log, 0, 3, NOW);
    let (file, end) = log.sync_target().unwrap();
    file.sync_data().unwrap();
    assert_eq!(end, 9);
    log.mark_flushed(end);
    assert_eq!(log.recovery_point(), 9);
    log.flush().unwrap();

    log.close().unwrap();
    assert!(path.join("clean-shutdown").exists());
    // The log stays usable after close; the first change takes the marker away again.
    append_batches(&mut log, 3, 1, NOW);
    assert!(!path.join("clean-shutdown").exists());
    log.close().unwrap();

    log.delete().unwrap();
    assert!(!path.exists());
    assert!(matches!(log.read(0, 100, 12, true), Err(StorageError::Io(..))));
    assert!(matches!(log.append(&mut batch_of(&["x"], NOW), ASSIGN, NOW), Err(StorageError::Io(..))));
}

const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;

/// Regression (issue 10, item 8): any timestamp was accepted, so one record dated in the year 3000
/// could switch time retention off. CreateTime batches must now lie within Kafka's bounds
/// (`message.timestamp.after.max.ms`, 1 hour by default; `message.timestamp.before.max.ms`, unlimited
/// by default), judged on every record, the header's max timestamp, and for compressed batches the
/// header's base and max timestamps.
#[test]
fn create_time_timestamps_outside_the_accepted_window_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), small_config(1 << 20), NOW).unwrap();
    let error = log.append(&mut batch_of(&["future"], NOW + 2 * HOUR), ASSIGN, NOW).unwrap_err();
    assert!(matches!(error, StorageError::InvalidTimestamp { timestamp, .. } if timestamp == NOW + 2 * HOUR), "{error}"); // new-api
    // One record of the batch is enough.
    let mut mixed =
        BatchBuilder::new(NOW).record_at(0, None, Some(b"a")).record_at(2 * HOUR, None, Some(b"b")).record_at(1, None, None).build();
    assert!(log.append(&mut mixed, ASSIGN, NOW).is_err());
    // A header whose max timestamp lies about the records is judged by what it says: retention reads it.
    let mut lying = batch_of(&["x"], NOW);
    lying[35..43].copy_from_slice(&(NOW + 2 * HOUR).to_be_bytes());
    let crc = crc32c::crc32c(&lying[21..]);
    lying[17..21].copy_from_slice(&crc.to_be_bytes());
    assert!(log.append(&mut lying, ASSIGN, NOW).is_err());
    // A compressed batch is judged by its header.
    let mut compressed = BatchBuilder::new(NOW + 2 * HOUR).compressed(4, 3, b"opaque zstd frame").build();
    assert!(log.append(&mut compressed, ASSIGN, NOW).is_err());
    assert_eq!(log.log_end_offset(), 0, "nothing was written");

    // Inside the window, long-past timestamps, and records without one (-1) are accepted.
    log.append(&mut batch_of(&["soon"], NOW + HOUR), ASSIGN, NOW).unwrap();
    log.append(&mut batch_of(&["old"], 0), ASSIGN, NOW).unwrap();
    log.append(&mut BatchBuilder::new(-1).record(None, Some(b"none")).build(), ASSIGN, NOW).unwrap();
    // Offset-preserving appends (mirrors, replicas) keep the source's timestamps as they are.
    let mut mirrored = BatchBuilder::new(NOW + 2 * HOUR).base_offset(10).record(None, Some(b"m")).build();
    log.append(&mut mirrored, AppendMode::PreserveOffsets, NOW).unwrap();
    // A LogAppendTime topic replaces the producer's timestamps, so they are not judged.
    log.set_config(LogConfig { timestamp_type: TimestampType::LogAppendTime, ..small_config(1 << 20) });
    log.append(&mut batch_of(&["stamped"], NOW + 2 * HOUR), ASSIGN, NOW).unwrap();

    // The bound into the past is a setting too.
    log.set_config(LogConfig { timestamp_before_max_ms: DAY as u64, ..small_config(1 << 20) }); // new-api
    assert!(log.append(&mut batch_of(&["too old"], NOW - 2 * DAY), ASSIGN, NOW).is_err()); // new-api
    log.append(&mut batch_of(&["recent"], NOW - DAY + 1), ASSIGN, NOW).unwrap();
    log.set_config(LogConfig { timestamp_after_max_ms: u64::MAX, ..small_config(1 << 20) }); // new-api
    log.append(&mut batch_of(&["unbounded"], i64::MAX - 10), ASSIGN, NOW).unwrap(); // new-api
}

/// Regression (issue 10, item 8): time retention judged a segment by its largest timestamp and deletes
/// only from the oldest segment on, so one record dated in the year 3000 kept its segment, and so every
/// later one, until the disk filled. A timestamp counts at most `message.timestamp.after.max.ms` past
/// the segment's last write, so such a record (written by a mirror, or before the bound existed) holds
/// its segment for at most that much longer than an ordinary one.
#[test]
fn a_future_dated_record_does_not_pin_time_retention() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig { retention_ms: Some(DAY as u64), ..small_config(400) };
    let mut log = PartitionLog::open(dir.path(), config, NOW).unwrap();
    const YEAR_3000: i64 = 32_503_680_000_000;
    let mut outlier = BatchBuilder::new(YEAR_3000).records(3, 90).build();
    log.append(&mut outlier, AppendMode::PreserveOffsets, NOW).unwrap();
    append_batches(&mut log, 1, 30, NOW - 10 * DAY);
    let segments = log.segment_count();
    assert!(segments > 4, "{segments} segments");
    // Within a day of the writes nothing has expired: the outlier counts as written an hour later.
    assert_eq!(log.enforce_retention(NOW + DAY).unwrap().segments_deleted, 0);
    // Past that, every segment goes, the outlier's first.
    let stats = log.enforce_retention(NOW + DAY + 2 * HOUR).unwrap();
    assert_eq!(stats.segments_deleted, segments, "the expired active segment is rolled and deleted too");
    assert_eq!((log.log_start_offset(), log.log_end_offset(), log.size_bytes()), (93, 93, 0));
}

/// Issue 10, item 11: clients decode header keys as strings, so one record with a key that is not
/// UTF-8 breaks every consumer of the topic. Producer batches with such a key are refused as
/// INVALID_RECORD; header values are any bytes. (Compressed batches are not decompressed, so their
/// records are not checked; see API.md.)
#[test]
fn header_keys_must_be_utf8() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), small_config(1 << 20), NOW).unwrap();
    let headers: [(&[u8], Option<&[u8]>); 2] = [(b"trace-id", Some(&[0xff, 0x00])), (&[0xc3, 0x28], Some(b"v"))];
    let mut bad = BatchBuilder::new(NOW).record(None, Some(b"a")).record_with_headers(0, None, Some(b"b"), &headers).build();
    let error = log.append(&mut bad, ASSIGN, NOW).unwrap_err();
    assert!(matches!(&error, StorageError::InvalidRecord(m) if m.contains("record 1") && m.contains("UTF-8")), "{error}");
    assert_eq!(log.log_end_offset(), 0);
    let headers: [(&[u8], Option<&[u8]>); 3] =
        [(b"trace-id", Some(&[0xff, 0x00])), ("clé-ключ".as_bytes(), None), (b"", Some(b"empty key is a string too"))];
    let mut good = BatchBuilder::new(NOW).record_with_headers(0, None, Some(b"b"), &headers).build();
    log.append(&mut good, ASSIGN, NOW).unwrap();
}
