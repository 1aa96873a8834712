//! The RecordBatch v2 parsers a producer's bytes meet: `sluice_storage`'s header parser and the
//! append-side validator (`validate_batches`, what `PartitionLog::append` runs on a Produce request's
//! records before any byte is stored), and the vendored `kafka-protocol` decoder that reads stored
//! batches back (the transform runner, the internal logs).
//!
//! Input: byte 0 holds flags (bit 0: rewrite every batch's CRC-32C first, so that mutations inside a
//! batch get past the checksum to the checks behind it); the rest is the buffer.
//!
//! Checks beyond "never panics": what the validator accepts is exactly framed (the batches' sizes add
//! up to the input, each CRC-32C matches), and every uncompressed batch it accepts decodes with the
//! reference decoder to the record count its header claims, with offsets base..=last. Stored bytes
//! that a reader of the log cannot decode would be a poison pill for every consumer and transform.
#![no_main]

use bytes::{Buf, Bytes};
use kafka_protocol::records::{Compression, RecordBatchDecoder};
use libfuzzer_sys::fuzz_target;
use sluice_fuzz::{CRC_COVERED_FROM, fix_crcs};
use sluice_storage::{BATCH_HEADER_BYTES, BatchHeader, validate_batches};

/// The validator's batch limit in this target: Kafka's default `max.message.bytes`.
const MAX_BATCH_BYTES: u32 = 1_048_588;

fuzz_target!(|input: &[u8]| {
    let Some((&flags, rest)) = input.split_first() else {
        return;
    };
    let mut data = rest.to_vec();
    if flags & 1 != 0 {
        fix_crcs(&mut data);
    }
    let data = &data[..];

    if let Some(header) = BatchHeader::parse(data) {
        let _ = (header.last_offset(), header.total_size(), header.compression(), header.timestamp_type());
    }

    if let Ok(headers) = validate_batches(data, MAX_BATCH_BYTES) {
        let mut position = 0usize;
        for header in &headers {
            let size = header.total_size();
            let batch = &data[position..position + size];
            assert!(size >= BATCH_HEADER_BYTES && size <= MAX_BATCH_BYTES as usize, "accepted a batch of {size} bytes");
            assert_eq!(BatchHeader::parse(batch).as_ref(), Some(header));
            assert_eq!(crc32c::crc32c(&batch[CRC_COVERED_FROM..]), header.crc, "accepted a batch whose CRC does not match");
            assert!(header.record_count >= 1 && i64::from(header.record_count) == i64::from(header.last_offset_delta) + 1);
            if header.compression() == 0 {
                let mut bytes = Bytes::copy_from_slice(batch);
                let set = RecordBatchDecoder::decode(&mut bytes)
                    .unwrap_or_else(|error| panic!("storage accepted a batch the reference decoder refuses: {error:#}"));
                assert_eq!(set.records.len(), header.record_count as usize);
                for (i, record) in set.records.iter().enumerate() {
                    assert_eq!(record.offset, header.base_offset.wrapping_add(i as i64));
                }
            }
            position += size;
        }
        assert_eq!(position, data.len(), "accepted input with bytes after its last batch");
    }

    // The reference decoder on the same bytes: every batch in turn until one fails. Compressed payloads
    // are refused rather than decompressed here (decompression bounds are the transform runner's), so
    // the header, the record-count preallocation and the record parser are what is exercised.
    let mut bytes = Bytes::copy_from_slice(data);
    while bytes.has_remaining() {
        let refuse_compressed = |payload: &mut Bytes, compression: Compression| match compression {
            Compression::None => Ok(payload.clone()),
            other => Err(anyhow::anyhow!("{other:?} is not decompressed in this target")),
        };
        if RecordBatchDecoder::decode_with_custom_compression(&mut bytes, Some(refuse_compressed)).is_err() {
            break;
        }
    }
});
