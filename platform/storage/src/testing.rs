//! Test support, public so the broker's tests can use it too: `BatchBuilder` encodes valid
//! uncompressed RecordBatch v2 buffers (or "compressed" ones with an opaque payload, which the log
//! never opens), and `decode` turns stored bytes back into records for assertions. Not on any data
//! path; it allocates freely.

use crate::batch::{BATCH_HEADER_BYTES, BatchHeader, MAGIC_V2, Reader, TimestampType, batch_crc};
use crate::error::StorageError;

/// Builds one RecordBatch v2. Defaults: base offset 0, leader epoch -1, no producer id (-1/-1/-1),
/// no compression, CreateTime.
#[derive(Debug, Clone)]
pub struct BatchBuilder {
    base_offset: i64,
    partition_leader_epoch: i32,
    attributes: i16,
    base_timestamp: i64,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
    records: Vec<u8>,
    record_count: i32,
    next_offset_delta: i32,
    max_timestamp_delta: Option<i64>,
    compressed: Option<i32>,
}

impl BatchBuilder {
    pub fn new(base_timestamp: i64) -> BatchBuilder {
        BatchBuilder {
            base_offset: 0,
            partition_leader_epoch: -1,
            attributes: 0,
            base_timestamp,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
            records: Vec::new(),
            record_count: 0,
            next_offset_delta: 0,
            max_timestamp_delta: None,
            compressed: None,
        }
    }

    /// Marks the batch as idempotent: producer id, epoch and the first record's sequence number.
    pub fn producer(mut self, producer_id: i64, producer_epoch: i16, base_sequence: i32) -> BatchBuilder {
        self.producer_id = producer_id;
        self.producer_epoch = producer_epoch;
        self.base_sequence = base_sequence;
        self
    }

    pub fn base_offset(mut self, base_offset: i64) -> BatchBuilder {
        self.base_offset = base_offset;
        self
    }

    pub fn partition_leader_epoch(mut self, epoch: i32) -> BatchBuilder {
        self.partition_leader_epoch = epoch;
        self
    }

    /// ORs raw attribute bits in (transactional 0x10, control 0x20, LogAppendTime 0x08).
    pub fn attributes(mut self, bits: i16) -> BatchBuilder {
        self.attributes |= bits;
        self
    }

    /// A record with the batch's base timestamp.
    pub fn record(self, key: Option<&[u8]>, value: Option<&[u8]>) -> BatchBuilder {
        self.record_at(0, key, value)
    }

    /// A record `timestamp_delta` ms after the batch's base timestamp.
    pub fn record_at(self, timestamp_delta: i64, key: Option<&[u8]>, value: Option<&[u8]>) -> BatchBuilder {
        self.record_with_headers(timestamp_delta, key, value, &[])
    }

    pub fn record_with_headers(
        mut self,
        timestamp_delta: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&[u8], Option<&[u8]>)],
    ) -> BatchBuilder {
        let mut body = vec![0u8];
        put_varlong(&mut body, timestamp_delta);
        put_varlong(&mut body, i64::from(self.next_offset_delta));
        put_bytes(&mut body, key);
        put_bytes(&mut body, value);
        put_varlong(&mut body, headers.len() as i64);
        for (header_key, header_value) in headers {
            put_bytes(&mut body, Some(header_key));
            put_bytes(&mut body, *header_value);
        }
        put_varlong(&mut self.records, body.len() as i64);
        self.records.extend_from_slice(&body);
        self.record_count += 1;
        self.next_offset_delta += 1;
        self.max_timestamp_delta = Some(self.max_timestamp_delta.map_or(timestamp_delta, |m| m.max(timestamp_delta)));
        self
    }

    /// `n` records of `value_bytes` bytes each, timestamps 0, 1, 2, ... ms after the base timestamp.
    pub fn records(mut self, n: usize, value_bytes: usize) -> BatchBuilder {
        let value = vec![b'x'; value_bytes];
        for i in 0..n {
            self = self.record_at(i as i64, None, Some(&value));
        }
        self
    }

    /// Leaves `n` offsets unused before the next record, as log compaction does.
    pub fn skip_offsets(mut self, n: i32) -> BatchBuilder {
        self.next_offset_delta += n;
        self
    }

    /// Makes the batch "compressed" with `codec` (1..=4) and an opaque payload claiming `record_count`
    /// records. Valid as far as the log can tell, which never decompresses.
    pub fn compressed(mut self, codec: u8, record_count: i32, payload: &[u8]) -> BatchBuilder {
        self.attributes = (self.attributes & !0x07) | i16::from(codec & 0x07);
        self.records = payload.to_vec();
        self.record_count = record_count;
        self.next_offset_delta = record_count;
        self.compressed = Some(record_count);
        self
    }

    pub fn build(&self) -> Vec<u8> {
        let batch_length = (BATCH_HEADER_BYTES - 12 + self.records.len()) as i32;
        let last_offset_delta = (self.next_offset_delta - 1).max(0);
        let max_timestamp = self.base_timestamp.wrapping_add(self.max_timestamp_delta.unwrap_or(0));
        let mut out = Vec::with_capacity(BATCH_HEADER_BYTES + self.records.len());
        out.extend_from_slice(&self.base_offset.to_be_bytes());
        out.extend_from_slice(&batch_length.to_be_bytes());
        out.extend_from_slice(&self.partition_leader_epoch.to_be_bytes());
        out.push(MAGIC_V2 as u8);
        out.extend_from_slice(&0u32.to_be_bytes());
        out.extend_from_slice(&self.attributes.to_be_bytes());
        out.extend_from_slice(&last_offset_delta.to_be_bytes());
        out.extend_from_slice(&self.base_timestamp.to_be_bytes());
        out.extend_from_slice(&max_timestamp.to_be_bytes());
        out.extend_from_slice(&self.producer_id.to_be_bytes());
        out.extend_from_slice(&self.producer_epoch.to_be_bytes());
        out.extend_from_slice(&self.base_sequence.to_be_bytes());
        out.extend_from_slice(&self.record_count.to_be_bytes());
        out.extend_from_slice(&self.records);
        let crc = batch_crc(&out);
        if let Some(field) = out.get_mut(17..21) {
            field.copy_from_slice(&crc.to_be_bytes());
        }
        out
    }
}

/// Zigzag varint, Kafka's encoding for record fields.
fn put_varlong(out: &mut Vec<u8>, value: i64) {
    let mut v = ((value << 1) ^ (value >> 63)) as u64;
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_bytes(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        Some(b) => {
            put_varlong(out, b.len() as i64);
            out.extend_from_slice(b);
        }
        None => put_varlong(out, -1),
    }
}

/// One record as a consumer would see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedRecord {
    pub offset: i64,
    pub timestamp: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
}

/// Decodes concatenated uncompressed batches (as `PartitionLog::read` returns them) into records.
pub fn decode(mut buf: &[u8]) -> Result<Vec<DecodedRecord>, StorageError> {
    let bad = |m: &str| StorageError::CorruptMessage(format!("decode: {m}"));
    let mut out = Vec::new();
    while !buf.is_empty() {
        let header = BatchHeader::parse(buf).ok_or_else(|| bad("short header"))?;
        let batch = buf.get(..header.total_size()).ok_or_else(|| bad("short batch"))?;
        if header.compression() != 0 {
            return Err(bad("compressed batch"));
        }
        let mut r = Reader::new(batch.get(BATCH_HEADER_BYTES..).unwrap_or_default());
        for _ in 0..header.record_count {
            let length = r.varint().and_then(|l| usize::try_from(l).ok()).ok_or_else(|| bad("record length"))?;
            let mut body = Reader::new(r.take(length).ok_or_else(|| bad("record body"))?);
            let fields = (|| {
                body.i8()?;
                let timestamp_delta = body.varlong()?;
                let offset_delta = body.varint()?;
                let key = nullable(&mut body)?;
                let value = nullable(&mut body)?;
                Some((timestamp_delta, offset_delta, key, value))
            })();
            let (timestamp_delta, offset_delta, key, value) = fields.ok_or_else(|| bad("record fields"))?;
            let timestamp = match header.timestamp_type() {
                TimestampType::LogAppendTime => header.max_timestamp,
                TimestampType::CreateTime => header.base_timestamp.wrapping_add(timestamp_delta),
            };
            out.push(DecodedRecord { offset: header.base_offset.saturating_add(i64::from(offset_delta)), timestamp, key, value });
        }
        buf = buf.get(header.total_size()..).unwrap_or_default();
    }
    Ok(out)
}

fn nullable(r: &mut Reader<'_>) -> Option<Option<Vec<u8>>> {
    let length = r.varint()?;
    if length < 0 {
        return Some(None);
    }
    Some(Some(r.take(usize::try_from(length).ok()?)?.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_output_decodes_back() {
        let bytes = BatchBuilder::new(500)
            .base_offset(10)
            .record(Some(b"k"), Some(b"v"))
            .record_with_headers(3, None, None, &[(b"h", Some(b"x")), (b"n", None)])
            .build();
        let records = decode(&bytes).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(records[0], DecodedRecord { offset: 10, timestamp: 500, key: Some(b"k".to_vec()), value: Some(b"v".to_vec()) });
        assert_eq!((records[1].offset, records[1].timestamp, records[1].value.clone()), (11, 503, None));
        crate::batch::validate_batches(&bytes, u32::MAX).unwrap();
    }
}
