//! RecordBatch v2 for the CLI: encode the records of one produce batch, and decode the record sets of
//! a Fetch response into records. A fetch may end in a partial batch (brokers cut at `max_bytes`), so
//! only whole batches are decoded; control batches (transaction markers) are skipped.

use anyhow::{Context, Result};
use bytes::{Bytes, BytesMut};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, NO_PARTITION_LEADER_EPOCH, NO_PRODUCER_EPOCH, NO_PRODUCER_ID, NO_SEQUENCE, Record, RecordBatchDecoder, RecordBatchEncoder,
    RecordEncodeOptions, TimestampType,
};

/// Bytes before a batch's `batchLength` field ends: base offset (8) and the length itself (4).
const BATCH_LENGTH_PREFIX_BYTES: usize = 12;
/// Offset of the magic byte in a batch header; only v2 (magic 2) is decoded.
const MAGIC_OFFSET: usize = 16;

/// One record as the CLI produces it.
#[derive(Debug, Clone)]
pub(crate) struct OutRecord {
    pub(crate) key: Option<Bytes>,
    pub(crate) value: Bytes,
    pub(crate) headers: Vec<(String, Bytes)>,
    pub(crate) timestamp_ms: i64,
}

impl OutRecord {
    /// Bytes of payload: key, value, header names and values.
    pub(crate) fn payload_bytes(&self) -> usize {
        self.key.as_ref().map_or(0, |k| k.len()) + self.value.len() + self.headers.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
    }
}

/// Encodes `records` as one batch (offsets 0..n, the broker assigns real ones).
pub(crate) fn encode_batch(records: &[OutRecord], compression: Compression) -> Result<Bytes> {
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
                sequence: NO_SEQUENCE,
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
        .context("encoding a record batch")?;
    Ok(buf.freeze())
}

/// One record as the CLI consumes it.
#[derive(Debug, Clone)]
pub(crate) struct InRecord {
    pub(crate) offset: i64,
    pub(crate) timestamp_ms: i64,
    pub(crate) key: Option<Bytes>,
    pub(crate) value: Option<Bytes>,
    pub(crate) headers: Vec<(String, Option<Bytes>)>,
}

/// Decodes the whole batches of a fetched record set, skipping control batches and records before
/// `from_offset` (a compressed batch is always returned whole, so it may start earlier). Returns the
/// records and the offset to fetch next (past the last whole batch, even if it held only skipped records).
pub(crate) fn decode_fetched(data: &Bytes, from_offset: i64) -> Result<(Vec<InRecord>, i64)> {
    let mut out = Vec::new();
    let mut next_offset = from_offset;
    let mut at = 0usize;
    while data.len() - at >= BATCH_LENGTH_PREFIX_BYTES {
        let header = &data[at..];
        let base_offset = i64::from_be_bytes(header[0..8].try_into().unwrap_or([0; 8]));
        let batch_length = i32::from_be_bytes(header[8..12].try_into().unwrap_or([0; 4]));
        let Ok(batch_length) = usize::try_from(batch_length) else { anyhow::bail!("a fetched batch declares a negative length") };
        let total = BATCH_LENGTH_PREFIX_BYTES + batch_length;
        if data.len() - at < total {
            break; // A partial batch at the end: fetch it again from its start next time.
        }
        if header.get(MAGIC_OFFSET).copied() != Some(2) {
            anyhow::bail!("a fetched batch at offset {base_offset} is not in the v2 record format (magic {:?})", header.get(MAGIC_OFFSET));
        }
        let mut batch = data.slice(at..at + total);
        at += total;
        let set = RecordBatchDecoder::decode(&mut batch).with_context(|| format!("decoding the batch at offset {base_offset}"))?;
        for record in set.records {
            next_offset = next_offset.max(record.offset + 1);
            if record.control || record.offset < from_offset {
                continue;
            }
            out.push(InRecord {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(value: &str) -> OutRecord {
        OutRecord {
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
            let (records, next) = decode_fetched(&joined.freeze(), 1).expect("decode");
            assert_eq!(next, 3);
            let values: Vec<_> = records.iter().map(|r| r.value.clone().unwrap_or_default()).collect();
            assert_eq!(values, [Bytes::from_static(b"b"), Bytes::from_static(b"c")]);
            assert_eq!(records[0].headers, [("h".to_string(), Some(Bytes::from_static(b"v")))]);
            assert_eq!(records[0].timestamp_ms, 1_700_000_000_000);
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut bad = vec![0u8; 8];
        bad.extend_from_slice(&(-5i32).to_be_bytes());
        assert!(decode_fetched(&Bytes::from(bad), 0).is_err());
        let mut wrong_magic = vec![0u8; 8];
        wrong_magic.extend_from_slice(&10i32.to_be_bytes());
        wrong_magic.extend_from_slice(&[0u8; 10]);
        assert!(decode_fetched(&Bytes::from(wrong_magic), 0).is_err());
        assert_eq!(decode_fetched(&Bytes::from_static(&[1, 2, 3]), 7).expect("short").1, 7);
    }
}
