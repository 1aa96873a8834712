//! Property tests: validation never panics on arbitrary bytes, any single flipped bit in the
//! CRC-covered range is caught, and random append sequences survive a reopen intact.

mod common;

use common::*;
use proptest::prelude::*;
use sluice_storage::testing::BatchBuilder;
use sluice_storage::{LogConfig, PartitionLog, StorageError, validate_batches};

/// Where the CRC-covered bytes of a batch start (the attributes field).
const CRC_COVERED_FROM: usize = 21;

fn valid_batch(records: usize, value_bytes: usize, ts: i64) -> Vec<u8> {
    BatchBuilder::new(ts).producer(3, 1, 0).records(records, value_bytes).build()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn validation_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600), max in any::<u32>()) {
        let _ = validate_batches(&bytes, max);
    }

    #[test]
    fn validation_never_panics_on_damaged_valid_batches(
        records in 1usize..6,
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        cut in any::<usize>(),
    ) {
        // Mostly-valid input reaches much deeper into the checks than random bytes do.
        let mut bytes = [valid_batch(records, 5, 1_000), valid_batch(1, 0, 2_000)].concat();
        for (at, value) in edits {
            let len = bytes.len();
            bytes[at % len] = value;
        }
        let len = bytes.len();
        bytes.truncate(cut % (len + 1));
        let _ = validate_batches(&bytes, u32::MAX);
    }

    #[test]
    fn any_flipped_bit_in_the_crc_covered_range_is_rejected(records in 1usize..8, value_bytes in 0usize..40, bit in any::<usize>()) {
        let mut bytes = valid_batch(records, value_bytes, 5_000);
        prop_assert!(validate_batches(&bytes, u32::MAX).is_ok());
        let covered_bits = (bytes.len() - CRC_COVERED_FROM) * 8;
        let bit = bit % covered_bits;
        bytes[CRC_COVERED_FROM + bit / 8] ^= 1 << (bit % 8);
        let result = validate_batches(&bytes, u32::MAX);
        prop_assert!(matches!(result, Err(StorageError::CorruptMessage(_))), "{result:?}");
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// Append `batches` batches of `records` records with values of `value_bytes` bytes.
    Append { batches: usize, records: usize, value_bytes: usize },
    /// Reopen, after a clean close or a simulated crash.
    Reopen { clean: bool },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1usize..4, 1usize..5, 0usize..120).prop_map(|(batches, records, value_bytes)| Op::Append { batches, records, value_bytes }),
        1 => any::<bool>().prop_map(|clean| Op::Reopen { clean }),
    ]
}

proptest! {
    // Each case creates files and fsyncs on rolls, so fewer cases than the pure properties above.
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn random_appends_survive_reopen(ops in proptest::collection::vec(op(), 1..25), segment_bytes in 200u64..3000, interval in 0u32..400) {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig { index_interval_bytes: interval, ..small_config(segment_bytes) };
        let mut log = PartitionLog::open(dir.path(), config.clone(), NOW).unwrap();
        let mut expected: Vec<String> = Vec::new();
        for op in ops {
            match op {
                Op::Append { batches, records, value_bytes } => {
                    let mut buffer = Vec::new();
                    for b in 0..batches {
                        let values: Vec<String> = (0..records).map(|r| format!("{}-{b}-{r}-{}", expected.len(), "x".repeat(value_bytes))).collect();
                        let refs: Vec<&str> = values.iter().map(String::as_str).collect();
                        buffer.extend_from_slice(&batch_of(&refs, NOW));
                        expected.extend(values);
                    }
                    let result = log.append(&mut buffer, ASSIGN, NOW).unwrap();
                    prop_assert_eq!(result.last_offset + 1, expected.len() as i64);
                }
                Op::Reopen { clean } => {
                    if clean {
                        log.close().unwrap();
                    }
                    drop(log);
                    log = PartitionLog::open(dir.path(), config.clone(), NOW).unwrap();
                }
            }
            prop_assert_eq!(log.log_end_offset(), expected.len() as i64);
        }
        drop(log);
        let log = PartitionLog::open(dir.path(), config, NOW).unwrap();
        let records = read_all(&log);
        prop_assert_eq!(values(&records), expected.clone());
        prop_assert_eq!(records.iter().map(|r| r.offset).collect::<Vec<_>>(), (0..expected.len() as i64).collect::<Vec<_>>());
        // Every offset is found through the (loaded or rebuilt) indexes.
        for offset in 0..expected.len() as i64 {
            let read = log.read(offset, 1, i64::MAX, true).unwrap();
            let first = sluice_storage::testing::decode(&read.bytes).unwrap();
            prop_assert!(first.iter().any(|r| r.offset == offset));
        }
    }
}

/// Files of a partition directory that recovery reads, for damaging.
fn partition_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_file()).collect();
    files.sort();
    files
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Whatever happens to the files while the broker is down, opening and reading never panic, and
    /// a reopened log keeps accepting appends at its log end.
    #[test]
    fn damaged_files_never_panic_recovery(
        clean in any::<bool>(),
        damage in proptest::collection::vec((any::<usize>(), any::<usize>(), proptest::collection::vec(any::<u8>(), 1..16), any::<bool>()), 1..6),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig { index_interval_bytes: 0, ..small_config(700) };
        let mut log = PartitionLog::open(dir.path(), config.clone(), NOW).unwrap();
        for i in 0..3 {
            let mut bytes = BatchBuilder::new(NOW).producer(1, 0, i * 4).records(4, 9).build();
            log.append(&mut bytes, ASSIGN, NOW).unwrap();
            append_batches(&mut log, i as usize, 2, NOW);
        }
        if clean {
            log.close().unwrap();
        }
        drop(log);
        for (file, at, bytes, cut) in damage {
            let files = partition_files(dir.path());
            let path = &files[file % files.len()];
            let mut contents = std::fs::read(path).unwrap();
            if cut {
                contents.truncate(at % (contents.len() + 1));
            } else {
                let at = at % (contents.len() + 1);
                let end = (at + bytes.len()).min(contents.len());
                contents.splice(at..end, bytes);
            }
            std::fs::write(path, contents).unwrap();
        }
        if let Ok(mut log) = PartitionLog::open(dir.path(), config, NOW) {
            let (start, end) = (log.log_start_offset(), log.log_end_offset());
            let mut offset = start;
            while offset < end {
                let Ok(read) = log.read(offset, 1, end, true) else { break };
                let Ok(records) = sluice_storage::testing::decode(&read.bytes) else { break };
                let Some(last) = records.last() else { break };
                offset = last.offset + 1;
            }
            let _ = log.offset_for_timestamp(NOW);
            let _ = log.max_timestamp();
            let appended = log.append(&mut batch_of(&["after"], NOW), ASSIGN, NOW).unwrap();
            prop_assert_eq!(appended.base_offset, end);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// `read` and `read_slices` serve exactly the whole batches a plain walk over every stored batch
    /// picks — from the batch holding the offset, while they fit `max_bytes` (the first one always
    /// under `min_one`) and end below the bound — whatever the segment and index layout.
    #[test]
    fn reads_and_slices_serve_the_batches_a_plain_walk_picks(
        // Batches from ~70 B to ~18 KiB: smaller and larger than the 4 KiB buffer of the boundary walk.
        batches in proptest::collection::vec((1usize..6, prop_oneof![0usize..300, 2000usize..3000]), 1..40),
        segment_bytes in 300u64..40_000,
        interval in 0u32..8000,
        queries in proptest::collection::vec((any::<u16>(), 0usize..50_000, any::<u16>(), any::<bool>()), 1..40),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig { index_interval_bytes: interval, ..small_config(segment_bytes) };
        let mut log = PartitionLog::open(dir.path(), config, NOW).unwrap();
        // (base offset, last offset, bytes) of every stored batch, in order.
        let mut stored: Vec<(i64, i64, Vec<u8>)> = Vec::new();
        for (records, value_bytes) in batches {
            let values: Vec<String> = (0..records).map(|r| format!("{r}{}", "v".repeat(value_bytes))).collect();
            let refs: Vec<&str> = values.iter().map(String::as_str).collect();
            let mut bytes = batch_of(&refs, NOW);
            let result = log.append(&mut bytes, ASSIGN, NOW).unwrap();
            stored.push((result.base_offset, result.last_offset, bytes));
        }
        let end = log.log_end_offset();
        for (offset, max_bytes, bound, min_one) in queries {
            let offset = i64::from(offset) % (end + 1);
            let upper_bound = i64::from(bound) % (end + 2);
            let mut expected = Vec::new();
            let mut next_offset = offset;
            if offset < upper_bound {
                for (_, last, bytes) in stored.iter().skip_while(|(_, last, _)| *last < offset) {
                    let fits = expected.len() + bytes.len() <= max_bytes || (expected.is_empty() && min_one);
                    if !fits || *last >= upper_bound {
                        break;
                    }
                    expected.extend_from_slice(bytes);
                    next_offset = last + 1;
                }
            }
            let read = log.read(offset, max_bytes, upper_bound, min_one).unwrap();
            prop_assert_eq!(&read.bytes[..], &expected[..], "read({}, {}, {}, {})", offset, max_bytes, upper_bound, min_one);
            prop_assert_eq!(read.next_offset, next_offset);
            let sliced = log.read_slices(offset, max_bytes, upper_bound, min_one).unwrap();
            let mut materialised = Vec::new();
            for slice in &sliced.slices {
                slice.read_into(&mut materialised).unwrap();
            }
            prop_assert_eq!(&materialised[..], &expected[..]);
            prop_assert_eq!(sliced.bytes, expected.len());
            prop_assert_eq!(sliced.next_offset, next_offset);
        }
    }
}
