//! Storage crash recovery over arbitrary segment bytes: the input becomes the `.log` files of one
//! partition directory, `PartitionLog::open` recovers it, and then the log must behave.
//!
//! Input layout: byte 0 holds flags (bit 0: a `clean-shutdown` marker is present; bit 1: a
//! `recovery-point` file is present, holding the i64 in the next 8 bytes; bit 2: every batch's
//! CRC-32C is rewritten to match, so that mutations get past the checksum to the offset checks). The rest is split at
//! [`SEGMENT_SEPARATOR`] into at most [`SEGMENTS_MAX`] segment files; each is named after the base
//! offset in its own first 8 bytes when that is a plausible offset above the previous segment's (so a
//! real segment file is a valid seed), and after the previous base + 1 otherwise. No index files are
//! written: recovery rebuilds them, so every batch it keeps has been CRC-checked.
//!
//! Checks: recovery succeeds (bad bytes are cut off, never a reason not to open); everything the log
//! serves from its start to its end is whole v2 batches with matching CRC-32C and increasing offsets
//! (offsets that recovery found lost — a quarantined segment, a log shorter than its recovery point —
//! serve nothing while nothing follows them, and a read there gets the next append);
//! an append after recovery lands at the recovered log end and reads back; and a clean close and
//! reopen keeps the log's start and end.
#![no_main]

use std::fs;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use sluice_fuzz::{CRC_COVERED_FROM, fix_crcs};
use sluice_storage::testing::BatchBuilder;
use sluice_storage::{AppendMode, BATCH_HEADER_BYTES, BatchHeader, LogConfig, PartitionLog};

const SEGMENT_SEPARATOR: &[u8] = b"#segment#";
const SEGMENTS_MAX: usize = 4;
const NOW_MS: i64 = 1_700_000_000_000;
const READ_BYTES: usize = 1024 * 1024;
/// Base offsets and recovery points taken from the input stay far below where offsets run out.
const BASE_OFFSET_MAX: i64 = 1 << 48;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, mut rest)) = data.split_first() else {
        return;
    };
    let scratch = if Path::new("/dev/shm").is_dir() { tempfile::tempdir_in("/dev/shm") } else { tempfile::tempdir() };
    let scratch = scratch.expect("temp dir");
    let dir = scratch.path().join("topic-0");
    fs::create_dir(&dir).expect("partition dir");
    if flags & 1 != 0 {
        fs::write(dir.join("clean-shutdown"), b"").expect("marker");
    }
    if flags & 2 != 0 {
        let Some((point, tail)) = rest.split_first_chunk::<8>() else {
            return;
        };
        // Kept below BASE_OFFSET_MAX like the segment names: a recovery point near i64::MAX puts the
        // log end where no offset is left to append at, which the log refuses with a clear error.
        let point = i64::from_be_bytes(*point);
        let point = if point > BASE_OFFSET_MAX { point % BASE_OFFSET_MAX } else { point };
        fs::write(dir.join("recovery-point"), point.to_string()).expect("recovery point");
        rest = tail;
    }
    let mut previous_base: Option<i64> = None;
    for segment in split(rest).into_iter().take(SEGMENTS_MAX) {
        let claimed = segment.first_chunk::<8>().map(|b| i64::from_be_bytes(*b));
        let base = match (claimed, previous_base) {
            (Some(c), None) if (0..BASE_OFFSET_MAX).contains(&c) => c,
            (Some(c), Some(p)) if c > p && c < BASE_OFFSET_MAX => c,
            (_, Some(p)) => p + 1,
            (_, None) => 0,
        };
        let mut segment = segment.to_vec();
        if flags & 4 != 0 {
            fix_crcs(&mut segment);
        }
        fs::write(dir.join(format!("{base:020}.log")), segment).expect("segment");
        previous_base = Some(base);
    }

    let mut log = PartitionLog::open(&dir, LogConfig::default(), NOW_MS).unwrap_or_else(|e| panic!("recovery failed: {e}"));
    let (start, end) = (log.log_start_offset(), log.log_end_offset());
    assert!(0 <= start && start <= end, "start {start} end {end}");
    let gap = check_served(&log, start, end);

    let batch = BatchBuilder::new(NOW_MS).record(Some(b"key"), Some(b"value")).build();
    let appended = log.append(&mut batch.clone(), AppendMode::AssignOffsets { leader_epoch: 0 }, NOW_MS);
    let end = match appended {
        Ok(result) => {
            assert_eq!(result.base_offset, end, "an append after recovery must land at the recovered log end");
            assert_eq!(log.log_end_offset(), end + 1);
            let from = gap.unwrap_or(end);
            assert_eq!(check_served(&log, from, end + 1), None, "a read at {from} did not reach the appended batch");
            end + 1
        }
        Err(error) => panic!("append after recovery failed at log end {end}: {error}"),
    };

    log.close().expect("close");
    drop(log);
    let reopened = PartitionLog::open(&dir, LogConfig::default(), NOW_MS).unwrap_or_else(|e| panic!("reopen failed: {e}"));
    assert_eq!((reopened.log_start_offset(), reopened.log_end_offset()), (start, end), "a clean restart lost or invented offsets");
    assert_eq!(check_served(&reopened, start, end), None, "a gap before the appended batch serves nothing after a restart");
});

fn split(mut bytes: &[u8]) -> Vec<&[u8]> {
    let mut parts = Vec::new();
    while let Some(at) = bytes.windows(SEGMENT_SEPARATOR.len()).position(|w| w == SEGMENT_SEPARATOR) {
        parts.push(&bytes[..at]);
        bytes = &bytes[at + SEGMENT_SEPARATOR.len()..];
    }
    parts.push(bytes);
    parts
}

/// Reads `from..end` and checks that every byte served belongs to a whole, CRC-valid v2 batch, in
/// offset order, and that reads make progress until the end.
/// Returns where a trailing gap of lost offsets begins, if the reads found one.
fn check_served(log: &PartitionLog, from: i64, end: i64) -> Option<i64> {
    let mut offset = from;
    let mut reads = 0;
    while offset < end {
        reads += 1;
        assert!(reads < 100_000, "reading {from}..{end} does not make progress at {offset}");
        let read = log.read(offset, READ_BYTES, i64::MAX, true).unwrap_or_else(|e| panic!("read at {offset} of {from}..{end}: {e}"));
        let bytes = &read.bytes[..];
        if bytes.is_empty() {
            // Offsets from here to the end were lost (a quarantined segment, a log shorter than its
            // recovery point) and nothing readable follows: they are never handed out again, and the
            // caller checks that the next append is what a reader at this offset gets.
            return Some(offset);
        }
        let mut position = 0;
        while position < bytes.len() {
            let header = BatchHeader::parse(&bytes[position..]).expect("a served batch has a whole header");
            let size = header.total_size();
            assert!(size >= BATCH_HEADER_BYTES && position + size <= bytes.len(), "served a cut batch");
            let batch = &bytes[position..position + size];
            assert_eq!(header.magic, 2);
            assert_eq!(crc32c::crc32c(&batch[CRC_COVERED_FROM..]), header.crc, "served a batch whose CRC does not match");
            assert!(header.last_offset() >= offset, "served batch ending at {} for a read at {offset}", header.last_offset());
            assert!(header.last_offset() < end, "served batch ending at {} past the log end {end}", header.last_offset());
            offset = header.last_offset() + 1;
            position += size;
        }
    }
    None
}
