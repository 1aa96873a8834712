//! The descriptors a partition log holds, counted in /proc/self/fd. One test in its own binary, so no
//! other test opens files while it counts.

mod common;

use common::*;
use sluice_storage::PartitionLog;

fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Regression (issue 10, item 9): every segment held its `.log`, `.index` and `.timeindex` open for the
/// life of the broker, so enough segments (`segment.bytes` could be 14) exhausted the process's
/// descriptors and the broker could then not even restart. A log now holds one file open, its active
/// segment's `.log`; sealed segments are opened when read, through a cache capped process-wide.
#[test]
fn a_log_holds_one_file_open_however_many_segments_it_has() {
    sluice_storage::handles::set_sealed_files_open_max(8); // new-api
    let dir = tempfile::tempdir().unwrap();
    let before = open_descriptors();
    let mut log = PartitionLog::open(dir.path(), small_config(300), NOW).unwrap();
    append_batches(&mut log, 0, 400, NOW);
    let segments = log.segment_count();
    assert!(segments >= 200, "{segments} segments");
    assert!(open_descriptors() - before <= 1, "{} descriptors for {segments} segments", open_descriptors() - before);
    log.close().unwrap();
    drop(log);
    assert_eq!(open_descriptors(), before);

    let log = PartitionLog::open(dir.path(), small_config(300), NOW).unwrap();
    assert!(open_descriptors() - before <= 1 + 8, "{} descriptors after a reopen", open_descriptors() - before);
    // Reading everything opens every sealed segment in turn; the cache keeps at most 8 of them open.
    assert_eq!(values(&read_all(&log)), expected_values(400));
    assert!(sluice_storage::handles::sealed_files_open() <= 8); // new-api
    assert!(open_descriptors() - before <= 1 + 8, "{} descriptors after reading every segment", open_descriptors() - before);
    drop(log);
    assert_eq!(open_descriptors(), before, "dropping the log closes its cached files");
}
