//! Crash recovery: reopen after clean and unclean shutdowns (an unclean one is simulated by dropping
//! the log without `close`), garbage and torn writes at the end of the last or a middle segment,
//! corrupted index files, and the persisted offsets.

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

#[test]
fn garbage_in_a_middle_segment_truncates_there_and_drops_later_segments() {
    for (kind, clean) in [(0, true), (1, false), (2, true), (3, false)] {
        let dir = tempfile::tempdir().unwrap();
        let mut log = PartitionLog::open(dir.path(), small_config(1000), NOW).unwrap();
        append_batches(&mut log, 0, 50, NOW);
        if clean {
            log.close().unwrap();
        }
        drop(log);
        let files = segment_files(dir.path());
        assert!(files.len() >= 5);
        let middle = &files[2];
        let middle_end: i64 = files[3].file_stem().unwrap().to_str().unwrap().parse().unwrap();
        // A valid batch re-addressed to the next offset overlaps the next segment: also not acceptable.
        let (name, junk) = garbage_kinds(middle, middle_end).swap_remove(kind);
        let original_len = middle.metadata().unwrap().len();
        append_bytes(middle, &junk);

        let mut log = PartitionLog::open(dir.path(), small_config(1000), NOW).unwrap();
        assert_eq!(log.log_end_offset(), middle_end, "{name}");
        assert_eq!(log.segment_count(), 3, "{name}");
        assert_eq!(segment_files(dir.path()).len(), 3, "{name}");
        assert_eq!(middle.metadata().unwrap().len(), original_len, "{name}");
        assert_eq!(values(&read_all(&log)), expected_values(middle_end as usize / 3), "{name}");
        assert_eq!(log.append(&mut batch_of(&["after"], NOW), ASSIGN, NOW).unwrap().base_offset, middle_end, "{name}");
        let later = log.read(middle_end, 1 << 20, middle_end + 1, true).unwrap();
        assert_eq!(values(&sluice_storage::testing::decode(&later.bytes).unwrap()), vec!["after"]);
    }
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
    let first = &segment_files(dir.path())[0];
    let mut bytes = fs::read(first).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x10;
    fs::write(first, &bytes).unwrap();

    let log = PartitionLog::open(dir.path(), small_config(1000), NOW).unwrap();
    assert_eq!(log.segment_count(), 1);
    assert!(log.log_end_offset() < 15);
    assert_eq!(values(&read_all(&log)), expected_values(log.log_end_offset() as usize / 3));
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
