//! Crash recovery: reopen after clean and unclean shutdowns (an unclean one is simulated by dropping
//! the log without `close`), garbage and torn writes at the end of the last segment (cut off),
//! corruption in acknowledged data (quarantined, later segments kept, offsets never reused),
//! corrupted index files, the persisted offsets, and offline partitions.

mod common;

use std::fs;
use std::path::Path;

use common::*;
use sluice_storage::{BatchHeader, PartitionLog};

/// What a consumer sees plus the log's offsets, to compare before and after a reopen.
fn snapshot(log: &PartitionLog) -> (Vec<String>, i64, i64) {
    (values(&read_all(log)), log.log_start_offset(), log.log_end_offset())
}

fn index_files(dir: &Path) -> Vec<(std::path::PathBuf, u64)> {
    let mut files: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "index" || e == "timeindex"))
        .map(|p| {
            let len = p.metadata().unwrap().len();
            (p, len)
        })
        .collect();
    files.sort();
    files
}

#[test]
fn reopen_after_a_clean_close_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), small_config(1000), NOW).unwrap();
    append_batches(&mut log, 0, 50, NOW);
    let before = snapshot(&log);
    let (segments, size, max) = (log.segment_count(), log.size_bytes(), log.max_timestamp());
    log.close().unwrap();
    let indexes = index_files(dir.path());

    let mut log = PartitionLog::open(dir.path(), small_config(1000), NOW).unwrap();
    assert!(!dir.path().join("clean-shutdown").exists(), "the marker is consumed at open");
    assert_eq!(snapshot(&log), before);
    assert_eq!((log.segment_count(), log.size_bytes(), log.max_timestamp()), (segments, size, max));
    assert_eq!(index_files(dir.path()), indexes, "intact indexes are kept as they are");
    assert_eq!(log.append(&mut batch_of(&["more"], NOW), ASSIGN, NOW).unwrap().base_offset, 150);
}

#[test]
fn reopen_after_a_crash_keeps_everything_written() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), small_config(1000), NOW).unwrap();
    append_batches(&mut log, 0, 50, NOW);
    let before = snapshot(&log);
    drop(log);
    assert!(dir.path().join("recovery-point").exists(), "rolls record the recovery point");
    let log = PartitionLog::open(dir.path(), small_config(1000), NOW).unwrap();
    assert_eq!(snapshot(&log), before);
}

/// The three kinds of tail garbage the end-to-end suite uses.
fn garbage_kinds(log_file: &Path, next_offset: i64) -> Vec<(&'static str, Vec<u8>)> {
    let next = first_batch_as(log_file, next_offset);
    let mut bad_crc = next.clone();
    *bad_crc.last_mut().unwrap() ^= 0xFF;
    vec![("random", garbage(4096, 7)), ("torn batch", next[..next.len() / 2].to_vec()), ("bad crc", bad_crc), ("lone bytes", vec![0, 0, 0])]
}

#[test]
fn garbage_after_the_last_segment_is_cut_off_after_clean_and_unclean_shutdowns() {
    for clean in [true, false] {
        for kind in 0..4 {
            let dir = tempfile::tempdir().unwrap();
            let mut log = PartitionLog::open(dir.path(), small_config(1000), NOW).unwrap();
            append_batches(&mut log, 0, 20, NOW);
            let before = snapshot(&log);
            if clean {
                log.close().unwrap();
            }
            drop(log);
            let newest = segment_files(dir.path()).pop().unwrap();
            let original_len = newest.metadata().unwrap().len();
            let (name, junk) = garbage_kinds(&newest, 60).swap_remove(kind);
            append_bytes(&newest, &junk);

            let mut log = PartitionLog::open(dir.path(), small_config(1000), NOW).unwrap();
            assert_eq!(snapshot(&log), before, "{name}, clean {clean}");
            assert_eq!(newest.metadata().unwrap().len(), original_len, "{name}, clean {clean}: cut exactly at the valid end");
            assert_eq!(log.append(&mut batch_of(&["next"], NOW), ASSIGN, NOW).unwrap().base_offset, 60);
            drop(log);
            let log = PartitionLog::open(dir.path(), small_config(1000), NOW).unwrap();
            assert_eq!(values(&read_all(&log)).last().unwrap(), "next");
        }
    }
}

/// Values of `append_batches(_, 0, n, _)` at offsets outside `lost`.
fn expected_values_without(n: usize, lost: std::ops::Range<i64>) -> Vec<String> {
    expected_values(n).into_iter().enumerate().filter(|(offset, _)| !lost.contains(&(*offset as i64))).map(|(_, v)| v).collect()
}

/// Base offset and file position of every batch in a segment file.
fn batch_positions(log_file: &Path) -> Vec<(i64, usize)> {
    let bytes = fs::read(log_file).unwrap();
    let mut out = Vec::new();
    let mut position = 0;
    while let Some(header) = bytes.get(position..).and_then(BatchHeader::parse) {
        out.push((header.base_offset, position));
        position += header.total_size();
    }
    out
}

fn base_of(log_file: &Path) -> i64 {
    log_file.file_stem().unwrap().to_str().unwrap().parse().unwrap()
}

/// Regression (issue 10, item 10): an invalid batch anywhere cut the log there and deleted every later
/// segment, losing acknowledged data and handing its offsets out again. Garbage after a closed
/// segment's batches now stays in the file, unserved and reported, and nothing else changes.
#[test]
fn garbage_in_a_middle_segment_is_quarantined_and_later_segments_are_kept() {
    for (kind, clean) in [(0, true), (1, false), (2, true), (3, false)] {
        let dir = tempfile::tempdir().unwrap();
        let mut log = PartitionLog::open(dir.path(), small_config(1000), NOW).unwrap();
        append_batches(&mut log, 0, 50, NOW);
        let before = snapshot(&log);
        if clean {
            log.close().unwrap();
        }
        drop(log);
        let files = segment_files(dir.path());
        assert!(files.len() >= 5);
        let middle = &files[2];
        let middle_end = base_of(&files[3]);
        // A valid batch re-addressed to the next offset overlaps the next segment: also not acceptable.
        let (name, junk) = garbage_kinds(middle, middle_end).swap_remove(kind);
        append_bytes(middle, &junk);
        let with_junk = fs::read(middle).unwrap();

        let mut log = PartitionLog::open(dir.path(), small_config(1000), NOW).unwrap();
        assert_eq!(snapshot(&log), before, "{name}");
        assert_eq!(segment_files(dir.path()), files, "{name}");
        assert_eq!(fs::read(middle).unwrap(), with_junk, "{name}: the quarantined bytes stay as they were");
        assert_eq!(log.quarantined_segment_count(), 1, "{name}"); // new-api
        assert_eq!(log.append(&mut batch_of(&["after"], NOW), ASSIGN, NOW).unwrap().base_offset, 150, "{name}");
    }
}

/// Regression (issue 10, item 10): a corrupt batch in a closed segment deleted every later segment at
/// the next start, clean or not. Now only the corrupt batch and what follows it in its own segment are
/// lost (kept aside in the file, reported); later segments and the log end stay.
#[test]
fn a_corrupt_batch_in_a_closed_segment_is_quarantined_and_later_segments_are_kept() {
    for clean in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let mut log = PartitionLog::open(dir.path(), small_config(1000), NOW).unwrap();
        append_batches(&mut log, 0, 50, NOW);
        if clean {
            log.close().unwrap();
        }
        drop(log);
        let files = segment_files(dir.path());
        let middle = &files[2];
        // Flip a byte in the last batch of a middle segment: a clean start scans it (it lies at or after
        // the last index entry) and so does an unclean one.
        let (lost_from, position) = *batch_positions(middle).last().unwrap();
        let mut bytes = fs::read(middle).unwrap();
        bytes[position + 70] ^= 0x01;
        fs::write(middle, &bytes).unwrap();

        let mut log = PartitionLog::open(dir.path(), small_config(1000), NOW).unwrap();
        assert_eq!(log.log_end_offset(), 150, "clean {clean}");
        assert_eq!(segment_files(dir.path()), files, "clean {clean}: no segment was deleted");
        assert_eq!(values(&read_all(&log)), expected_values_without(50, lost_from..base_of(&files[3])), "clean {clean}");
        assert_eq!(fs::read(middle).unwrap(), bytes, "clean {clean}: the corrupt bytes are kept for inspection");
        assert_eq!(log.quarantined_segment_count(), 1, "clean {clean}"); // new-api
        assert_eq!(log.append(&mut batch_of(&["after"], NOW), ASSIGN, NOW).unwrap().base_offset, 150, "clean {clean}");
        // The next start finds the same, and still keeps everything else.
        log.close().unwrap();
        drop(log);
        let log = PartitionLog::open(dir.path(), small_config(1000), NOW).unwrap();
        assert_eq!((log.log_end_offset(), log.quarantined_segment_count()), (151, 1), "clean {clean}"); // new-api
    }
}

/// Regression (issue 10, item 10): a corrupt batch in the active segment below the recovery point (data
/// a clean shutdown had fsynced) was cut off like a torn write, and its offsets were handed out again
/// to new records. It is quarantined instead, and the log continues at the old end.
#[test]
fn corruption_below_the_recovery_point_never_reuses_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), small_config(1 << 20), NOW).unwrap();
    append_batches(&mut log, 0, 40, NOW);
    log.close().unwrap();
    drop(log);
    let file = segment_files(dir.path()).pop().unwrap();
    let (lost_from, position) = *batch_positions(&file).last().unwrap();
    let mut bytes = fs::read(&file).unwrap();
    bytes[position + 70] ^= 0x01;
    fs::write(&file, &bytes).unwrap();

    let mut log = PartitionLog::open(dir.path(), small_config(1 << 20), NOW).unwrap();
    assert_eq!(log.log_end_offset(), 120);
    assert_eq!(log.append(&mut batch_of(&["after"], NOW), ASSIGN, NOW).unwrap().base_offset, 120, "offset 117 is not given out twice");
    let mut expected = expected_values_without(40, lost_from..120);
    expected.push("after".to_string());
    assert_eq!(values(&read_all(&log)), expected);
    assert_eq!(fs::read(&file).unwrap(), bytes, "the corrupt bytes are kept");
}

#[test]
fn a_torn_last_batch_is_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), small_config(1 << 20), NOW).unwrap();
    append_batches(&mut log, 0, 10, NOW);
    drop(log);
    let file = segment_files(dir.path()).pop().unwrap();
    let len = file.metadata().unwrap().len();
    fs::OpenOptions::new().write(true).open(&file).unwrap().set_len(len - 10).unwrap();

    let mut log = PartitionLog::open(dir.path(), small_config(1 << 20), NOW).unwrap();
    assert_eq!(log.log_end_offset(), 27);
    assert_eq!(values(&read_all(&log)), expected_values(9));
    assert_eq!(log.append(&mut batch_of(&["x"], NOW), ASSIGN, NOW).unwrap().base_offset, 27);
}

#[test]
fn an_unclean_shutdown_scans_the_active_segment_in_full() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), small_config(1 << 20), NOW).unwrap();
    append_batches(&mut log, 0, 40, NOW);
    let offset_20 = log.read(20, 1, 120, true).unwrap();
    drop(log);
    // Flip a byte inside the batch holding offset 20, which the index covers: only a full scan sees it.
    let file = segment_files(dir.path()).pop().unwrap();
    let mut bytes = fs::read(&file).unwrap();
    let position = bytes.windows(offset_20.bytes.len()).position(|w| w == &offset_20.bytes[..]).unwrap();
    bytes[position + 70] ^= 0x01;
    fs::write(&file, &bytes).unwrap();

    let log = PartitionLog::open(dir.path(), small_config(1 << 20), NOW).unwrap();
    let header = BatchHeader::parse(&offset_20.bytes).unwrap();
    assert_eq!(log.log_end_offset(), header.base_offset);
    assert_eq!(values(&read_all(&log)), expected_values(header.base_offset as usize / 3));
}

#[test]
fn without_a_recovery_point_every_segment_is_scanned() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), small_config(1000), NOW).unwrap();
    append_batches(&mut log, 0, 40, NOW);
    drop(log);
    fs::remove_file(dir.path().join("recovery-point")).unwrap();
    let files = segment_files(dir.path());
    let first = &files[0];
    // A flipped byte inside an indexed batch of the first segment: only a full scan sees it.
    let positions = batch_positions(first);
    let (lost_from, position) = positions[positions.len() / 2];
    let mut bytes = fs::read(first).unwrap();
    bytes[position + 70] ^= 0x10;
    fs::write(first, &bytes).unwrap();

    let log = PartitionLog::open(dir.path(), small_config(1000), NOW).unwrap();
    assert_eq!((log.segment_count(), log.log_end_offset()), (files.len(), 120));
    assert_eq!(values(&read_all(&log)), expected_values_without(40, lost_from..base_of(&files[1])));
}

/// Issue 10, item 9: a partition that cannot be opened is represented by an offline log, so the
/// broker can start with the others. It holds no file and fails every call that touches data.
#[test]
fn an_offline_log_fails_every_data_call_and_holds_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p-0");
    fs::write(&path, b"a file where the partition directory should be").unwrap();
    let error = PartitionLog::open(&path, small_config(1000), NOW).unwrap_err();
    let mut log = PartitionLog::offline(&path, small_config(1000), error.to_string());
    assert!(log.offline_reason().is_some_and(|r| r.contains("create partition directory")));
    let offline = |result: Result<(), sluice_storage::StorageError>| matches!(result, Err(sluice_storage::StorageError::Offline { .. }));
    assert!(offline(log.append(&mut batch_of(&["x"], NOW), ASSIGN, NOW).map(drop)));
    assert!(offline(log.read(0, 1 << 20, 1, true).map(drop)));
    assert!(offline(log.offset_for_timestamp(0).map(drop)));
    assert!(offline(log.delete_records_before(0).map(drop)));
    assert!(offline(log.flush()));
    assert!(log.sync_target().is_none());
    assert_eq!(log.enforce_retention(NOW).unwrap().segments_deleted, 0);
    log.close().unwrap();
    assert_eq!((log.log_start_offset(), log.log_end_offset(), log.size_bytes(), log.max_timestamp()), (0, 0, 0, None));
    assert_eq!(fs::read(&path).unwrap(), b"a file where the partition directory should be");
}

#[test]
fn corrupted_index_files_are_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), small_config(1200), NOW).unwrap();
    append_batches(&mut log, 0, 80, NOW);
    let expected: Vec<(i64, i64)> = (0..80).map(|i| (3 * i, 3 * i + 2)).collect();
    log.close().unwrap();
    let indexes = index_files(dir.path());
    assert!(indexes.len() >= 6 && indexes.iter().all(|(_, len)| *len > 0), "{indexes:?}");

    // Segment 0: random bytes over the offset index. Segment 1: time index torn. Segment 2: both
    // index files deleted. Segment 3: a structurally fine last entry pointing into the middle of a batch.
    fs::write(&indexes[0].0, garbage(indexes[0].1 as usize, 3)).unwrap();
    fs::OpenOptions::new().write(true).open(&indexes[3].0).unwrap().set_len(indexes[3].1 / 2 + 1).unwrap();
    fs::remove_file(&indexes[4].0).unwrap();
    fs::remove_file(&indexes[5].0).unwrap();
    let mut offset_index = fs::read(&indexes[6].0).unwrap();
    let last = offset_index.len() - 8;
    let position = u32::from_be_bytes(offset_index[last + 4..].try_into().unwrap());
    offset_index[last + 4..].copy_from_slice(&(position + 5).to_be_bytes());
    fs::write(&indexes[6].0, &offset_index).unwrap();

    let log = PartitionLog::open(dir.path(), small_config(1200), NOW).unwrap();
    for &(base, last) in &expected {
        for offset in base..=last {
            let header = BatchHeader::parse(&log.read(offset, 1, 240, true).unwrap().bytes).unwrap();
            assert_eq!((header.base_offset, header.last_offset()), (base, last), "offset {offset}");
        }
    }
    assert_eq!(log.offset_for_timestamp(NOW + 401).unwrap(), Some((121, NOW + 401)));
    assert_eq!(log.max_timestamp(), Some((NOW + 792, 239)));
    assert_eq!(index_files(dir.path()), indexes, "rebuilt indexes match the originals");
}

#[test]
fn stray_files_are_cleaned_up_and_an_empty_directory_opens_empty() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p-0");
    fs::create_dir(&path).unwrap();
    fs::write(path.join("log-start-offset.tmp"), b"12").unwrap();
    fs::write(path.join("00000000000000000100.index"), [0u8; 8]).unwrap();
    fs::write(path.join("notes.txt"), b"operator notes").unwrap();
    let log = PartitionLog::open(&path, small_config(1000), NOW).unwrap();
    assert_eq!((log.log_start_offset(), log.log_end_offset(), log.segment_count()), (0, 0, 1));
    assert!(!path.join("log-start-offset.tmp").exists());
    assert!(!path.join("00000000000000000100.index").exists());
    assert!(path.join("notes.txt").exists());
    assert!(path.join("00000000000000000000.log").exists());
}

#[test]
fn a_log_start_beyond_the_recovered_end_restarts_the_log_there() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), small_config(1 << 20), NOW).unwrap();
    append_batches(&mut log, 0, 10, NOW);
    log.delete_records_before(15).unwrap();
    drop(log);
    // The crash took back most of the data, but the durable log start survived.
    let file = segment_files(dir.path()).pop().unwrap();
    let bytes = fs::read(&file).unwrap();
    let two_batches = 2 * BatchHeader::parse(&bytes).unwrap().total_size();
    fs::write(&file, &bytes[..two_batches]).unwrap();

    let mut log = PartitionLog::open(dir.path(), small_config(1 << 20), NOW).unwrap();
    assert_eq!((log.log_start_offset(), log.log_end_offset(), log.size_bytes()), (15, 15, 0));
    assert_eq!(log.append(&mut batch_of(&["x"], NOW), ASSIGN, NOW).unwrap().base_offset, 15);
}

#[test]
fn an_empty_trailing_segment_is_dropped_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), small_config(1000), NOW).unwrap();
    append_batches(&mut log, 0, 20, NOW);
    let end = log.log_end_offset();
    drop(log);
    // As if a roll to a gap offset had created its file and crashed before the first write.
    fs::write(dir.path().join(format!("{:020}.log", end + 1000)), b"").unwrap();
    let mut log = PartitionLog::open(dir.path(), small_config(1000), NOW).unwrap();
    assert_eq!(log.log_end_offset(), end);
    assert_eq!(log.append(&mut batch_of(&["x"], NOW), ASSIGN, NOW).unwrap().base_offset, end);
}
