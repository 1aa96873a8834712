//! Regression tests for the Sluice patch to the vendored `kafka-protocol` record-batch decoder (see
//! `third_party/kafka-protocol/SLUICE-PATCH.md`). The broker decodes stored batches with it in the
//! transform runner and the internal logs; a producer controls those bytes.

use bytes::{Bytes, BytesMut};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType};

/// Offset of `recordCount` in a v2 batch header; the CRC-32C at offset 17 covers offset 21 onwards.
const RECORD_COUNT_AT: usize = 57;
const CRC_AT: usize = 17;
const CRC_COVERED_FROM: usize = 21;

fn batch(compression: Compression) -> Vec<u8> {
    let records: Vec<Record> = (0..2)
        .map(|i| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i,
            // One batch: the encoder splits where offset minus sequence changes.
            sequence: i as i32,
            timestamp: 1_700_000_000_000,
            key: None,
            value: Some(Bytes::from_static(b"value")),
            headers: [(StrBytes::from_static_str("h"), None)].into_iter().collect(),
        })
        .collect();
    let mut out = BytesMut::new();
    RecordBatchEncoder::encode(&mut out, &records, &RecordEncodeOptions { version: 2, compression }).unwrap();
    out.to_vec()
}

/// The batch with its header's record count replaced (and its CRC recomputed, so the lie is valid).
fn claiming(mut batch: Vec<u8>, record_count: i32) -> Bytes {
    batch[RECORD_COUNT_AT..RECORD_COUNT_AT + 4].copy_from_slice(&record_count.to_be_bytes());
    let crc = crc32c::crc32c(&batch[CRC_COVERED_FROM..]);
    batch[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
    Bytes::from(batch)
}

#[test]
fn a_batch_claiming_two_billion_records_is_an_error_not_an_abort() {
    // Before the patch, `decode_new_records` reserved `record_count` records (~150 bytes each) up
    // front: a ~100-byte gzip batch claiming i32::MAX records asked for ~300 GB and the failed
    // allocation aborted the whole broker. The storage engine cannot catch this at produce time: it
    // never decompresses, and the count matches a legal last-offset delta.
    for compression in [Compression::None, Compression::Gzip, Compression::Zstd, Compression::Lz4, Compression::Snappy] {
        let mut bytes = claiming(batch(compression), i32::MAX);
        let error = RecordBatchDecoder::decode(&mut bytes).expect_err("two records cannot satisfy a count of i32::MAX");
        assert!(!error.to_string().is_empty(), "{compression:?}");
    }
}

#[test]
fn honest_batches_still_decode() {
    for compression in [Compression::None, Compression::Gzip, Compression::Zstd, Compression::Lz4, Compression::Snappy] {
        let mut bytes = claiming(batch(compression), 2);
        let set = RecordBatchDecoder::decode(&mut bytes).unwrap();
        assert_eq!(set.records.len(), 2, "{compression:?}");
    }
}
