//! RecordBatch v2: encode records into one batch for Produce; walk a fetched record set batch by
//! batch without decoding ([`split_batches`], what a mirror passes through as it is); and decode one
//! into records ([`decode_batches`]). A fetch may end in a partial batch (brokers cut at `max_bytes`),
//! so only whole batches are returned; decoding skips control batches (transaction markers).

use bytes::{Bytes, BytesMut};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, NO_PARTITION_LEADER_EPOCH, NO_PRODUCER_EPOCH, NO_PRODUCER_ID, NO_SEQUENCE, Record, RecordBatchDecoder, RecordBatchEncoder,
    RecordEncodeOptions, TimestampType,
};

use crate::error::{ClientError, Result};

/// Bytes before a batch's `batchLength` field ends: base offset (8) and the length itself (4).
pub const BATCH_LENGTH_PREFIX_BYTES: usize = 12;
/// A v2 batch header: up to and including the record count.
pub const BATCH_HEADER_BYTES: usize = 61;
/// Offset of the magic byte in a batch header; only v2 (magic 2) is read.
const MAGIC_AT: usize = 16;
const ATTRIBUTES_AT: usize = 21;
const LAST_OFFSET_DELTA_AT: usize = 23;
const PRODUCER_ID_AT: usize = 43;
const RECORD_COUNT_AT: usize = 57;
const SUPPORTED_MAGIC: u8 = 2;
/// Attribute bits: transactional and control (a transaction marker).
const TRANSACTIONAL_FLAG: i16 = 1 << 4;
const CONTROL_FLAG: i16 = 1 << 5;

/// One record to produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerRecord {
    pub key: Option<Bytes>,
    pub value: Bytes,
    pub headers: Vec<(String, Bytes)>,
    pub timestamp_ms: i64,
}

impl ProducerRecord {
    /// Bytes of payload: key, value, header names and values.
    pub fn payload_bytes(&self) -> usize {
        self.key.as_ref().map_or(0, |k| k.len()) + self.value.len() + self.headers.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
    }
}

/// One record read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerRecord {
    pub offset: i64,
    pub timestamp_ms: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Option<Bytes>)>,
}

/// Encodes `records` as one batch (offsets 0..n; the broker assigns the real ones).
pub fn encode_batch(records: &[ProducerRecord], compression: Compression) -> Result<Bytes> {
    let wire: Vec<Record> = records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut record = Record {
                transactional: false,
                control: false,
                partition_leader_epoch: NO_PARTITION_LEADER_EPOCH,
                producer_id: NO_PRODUCER_ID,
                producer_epoch: NO_PRODUCER_EPOCH,
                timestamp_type: TimestampType::Creation,
                offset: i as i64,
                // The encoder starts a new batch whenever `offset - sequence` changes: with the same
                // NO_SEQUENCE on every record, each record became a batch of its own (a header and a
                // compression frame per record). Keeping `offset - sequence` at 1 yields one batch
                // whose base sequence is NO_SEQUENCE (no idempotence).
                sequence: NO_SEQUENCE.wrapping_add(i as i32),
                timestamp: r.timestamp_ms,
                key: r.key.clone(),
                value: Some(r.value.clone()),
                headers: Default::default(),
                delete_horizon: false,
            };
            for (name, value) in &r.headers {
                record.headers.insert(StrBytes::from_string(name.clone()), Some(value.clone()));
            }
            record
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(&mut buf, wire.iter(), &RecordEncodeOptions { version: 2, compression })
        .map_err(|e| ClientError::Records { detail: format!("encoding a record batch: {e:#}") })?;
    Ok(buf.freeze())
}

/// One whole batch of a record set, undecoded: the header fields a reader needs to route it and to
/// know where the next fetch starts, and the batch's bytes exactly as stored (CRC and compression
/// untouched).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawBatch {
    pub base_offset: i64,
    /// Offset of the batch's last record (base offset + last offset delta).
    pub last_offset: i64,
    pub record_count: i32,
    pub producer_id: i64,
    pub transactional: bool,
    /// A transaction marker rather than user records.
    pub control: bool,
    pub bytes: Bytes,
}

/// The whole v2 batches at the front of `data`, in order; a partial batch at the end is left out (fetch
/// it again from its base offset). Reads headers only: nothing is decompressed or copied.
pub fn split_batches(data: &Bytes) -> Result<Vec<RawBatch>> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while data.len() - at >= BATCH_LENGTH_PREFIX_BYTES {
        let header = &data[at..];
        let base_offset = be_i64(header, 0);
        let batch_length = be_i32(header, 8);
        let Ok(batch_length) = usize::try_from(batch_length) else {
            return Err(ClientError::Records { detail: format!("the batch at offset {base_offset} declares a negative length") });
        };
        let total = BATCH_LENGTH_PREFIX_BYTES + batch_length;
        if data.len() - at < total {
            break;
        }
        if total < BATCH_HEADER_BYTES {
            return Err(ClientError::Records {
                detail: format!("the batch at offset {base_offset} is {total} bytes, shorter than a header"),
            });
        }
        if header[MAGIC_AT] != SUPPORTED_MAGIC {
            return Err(ClientError::Records {
                detail: format!("the batch at offset {base_offset} is not in the v2 record format (magic {})", header[MAGIC_AT]),
            });
        }
        let attributes = i16::from_be_bytes([header[ATTRIBUTES_AT], header[ATTRIBUTES_AT + 1]]);
        out.push(RawBatch {
            base_offset,
            last_offset: base_offset + i64::from(be_i32(header, LAST_OFFSET_DELTA_AT)),
            record_count: be_i32(header, RECORD_COUNT_AT),
            producer_id: be_i64(header, PRODUCER_ID_AT),
            transactional: attributes & TRANSACTIONAL_FLAG != 0,
            control: attributes & CONTROL_FLAG != 0,
            bytes: data.slice(at..at + total),
        });
        at += total;
    }
    Ok(out)
}

/// The offset after the last whole batch at the front of `data` (where the next fetch starts once
/// these batches are taken), or `None` when there is no whole batch. Reads batch headers only and
/// allocates nothing; a malformed header ends the scan.
pub fn whole_batches_end(data: &[u8]) -> Option<i64> {
    let mut at = 0usize;
    let mut end = None;
    while data.len() - at >= BATCH_HEADER_BYTES {
        let header = &data[at..];
        let total = usize::try_from(be_i32(header, 8)).ok()? + BATCH_LENGTH_PREFIX_BYTES;
        if total < BATCH_HEADER_BYTES || data.len() - at < total {
            break;
        }
        end = Some(be_i64(header, 0) + i64::from(be_i32(header, LAST_OFFSET_DELTA_AT)) + 1);
        at += total;
    }
    end
}

/// Decodes the whole batches of a fetched record set, skipping control batches and records before
/// `from_offset` (a compressed batch is always returned whole, so it may start earlier). Returns the
/// records and the offset to fetch next (past the last whole batch, even if it held only skipped records).
pub fn decode_batches(data: &Bytes, from_offset: i64) -> Result<(Vec<ConsumerRecord>, i64)> {
    let mut out = Vec::new();
    let mut next_offset = from_offset;
    for raw in split_batches(data)? {
        next_offset = next_offset.max(raw.last_offset + 1);
        if raw.control {
            continue;
        }
        let mut batch = raw.bytes.clone();
        let set = RecordBatchDecoder::decode(&mut batch)
            .map_err(|e| ClientError::Records { detail: format!("decoding the batch at offset {}: {e:#}", raw.base_offset) })?;
        for record in set.records {
            next_offset = next_offset.max(record.offset + 1);
            if record.control || record.offset < from_offset {
                continue;
            }
            out.push(ConsumerRecord {
                offset: record.offset,
                timestamp_ms: record.timestamp,
                key: record.key,
                value: record.value,
                headers: record.headers.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            });
        }
    }
    Ok((out, next_offset))
}

fn be_i64(bytes: &[u8], at: usize) -> i64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    i64::from_be_bytes(b)
}

fn be_i32(bytes: &[u8], at: usize) -> i32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[at..at + 4]);
    i32::from_be_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(value: &str) -> ProducerRecord {
        ProducerRecord {
            key: Some(Bytes::from_static(b"k")),
            value: Bytes::copy_from_slice(value.as_bytes()),
            headers: vec![("h".into(), Bytes::from_static(b"v"))],
            timestamp_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn round_trip_skips_earlier_records_and_partial_tails() {
        for compression in [Compression::None, Compression::Gzip, Compression::Snappy, Compression::Lz4, Compression::Zstd] {
            let batch = encode_batch(&[rec("a"), rec("b"), rec("c")], compression).expect("encode");
            let mut joined = BytesMut::from(&batch[..]);
            joined.extend_from_slice(&batch[..batch.len() / 2]);
            let (records, next) = decode_batches(&joined.freeze(), 1).expect("decode");
            assert_eq!(next, 3);
            let values: Vec<_> = records.iter().map(|r| r.value.clone().unwrap_or_default()).collect();
            assert_eq!(values, [Bytes::from_static(b"b"), Bytes::from_static(b"c")]);
            assert_eq!(records[0].headers, [("h".to_string(), Some(Bytes::from_static(b"v")))]);
            assert_eq!(records[0].timestamp_ms, 1_700_000_000_000);
        }
    }

    #[test]
    fn split_keeps_whole_batches_byte_for_byte() {
        let first = encode_batch(&[rec("a"), rec("b")], Compression::Zstd).expect("encode");
        let mut second = BytesMut::from(&encode_batch(&[rec("c")], Compression::None).expect("encode")[..]);
        // Give the second batch base offset 2, as a broker would have stored it.
        second[..8].copy_from_slice(&2i64.to_be_bytes());
        let mut set = BytesMut::from(&first[..]);
        set.extend_from_slice(&second);
        set.extend_from_slice(&first[..20]);
        let set = set.freeze();
        let batches = split_batches(&set).expect("split");
        // Two records encode as one batch (they used to be one batch each).
        assert_eq!(batches.len(), 2, "{batches:?}");
        assert_eq!((batches[0].base_offset, batches[0].last_offset, batches[0].record_count), (0, 1, 2));
        assert_eq!((batches[1].base_offset, batches[1].last_offset, batches[1].record_count), (2, 2, 1));
        assert_eq!(batches[0].bytes, first);
        assert!(!batches[0].control && !batches[0].transactional && batches[0].producer_id == -1);
        // The batch header says "no idempotence": base sequence -1 (bytes 53..57).
        assert_eq!(&batches[0].bytes[53..57], &(-1i32).to_be_bytes());
        // Where the next fetch starts: after the last whole batch, the partial one left out.
        assert_eq!(whole_batches_end(&set), Some(3));
        assert_eq!(whole_batches_end(&first[..first.len() - 1]), None);
        assert_eq!(whole_batches_end(&[]), None);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut bad = vec![0u8; 8];
        bad.extend_from_slice(&(-5i32).to_be_bytes());
        assert!(decode_batches(&Bytes::from(bad), 0).is_err());
        let mut wrong_magic = vec![0u8; 8];
        wrong_magic.extend_from_slice(&60i32.to_be_bytes());
        wrong_magic.extend_from_slice(&[0u8; 60]);
        assert!(decode_batches(&Bytes::from(wrong_magic), 0).is_err());
        let mut too_short = vec![0u8; 8];
        too_short.extend_from_slice(&10i32.to_be_bytes());
        too_short.extend_from_slice(&[2u8; 10]);
        assert!(split_batches(&Bytes::from(too_short)).is_err());
        assert_eq!(decode_batches(&Bytes::from_static(&[1, 2, 3]), 7).expect("short").1, 7);
    }
}
