//! The one RecordBatch v2 encoder for records the broker writes itself: the in-process transactional
//! producer (transforms, connectors, mirrors) and the keyed internal logs (committed offsets,
//! transaction state). Clients' batches are never re-encoded; they are stored as they arrive.
//!
//! It writes straight into one buffer (no per-record structs), knows the encoded size of a record
//! before writing it, so callers can split output at a topic's `max.message.bytes`, and writes only
//! uncompressed batches. Layout (Kafka's `RecordBatch` v2, all integers big-endian):
//!
//! ```text
//! baseOffset i64 | batchLength i32 | partitionLeaderEpoch i32 | magic i8 (2) | crc u32 (CRC-32C of
//! everything after it) | attributes i16 | lastOffsetDelta i32 | baseTimestamp i64 | maxTimestamp i64 |
//! producerId i64 | producerEpoch i16 | baseSequence i32 | recordCount i32 | records…
//! record: length varint | attributes i8 | timestampDelta varlong | offsetDelta varint |
//!         keyLength varint (-1 = null) | key | valueLength varint | value | headerCount varint |
//!         headers (keyLength varint | key | valueLength varint (-1 = null) | value)
//! ```

use bytes::{BufMut, BytesMut};

pub use sluice_storage::BATCH_HEADER_BYTES;

/// Offset of the CRC field and of what it covers.
const CRC_OFFSET: usize = 17;
const ATTRIBUTES_OFFSET: usize = 21;
const TRANSACTIONAL_FLAG: i16 = 1 << 4;

/// Who writes the batch: a producer id and epoch with the first record's sequence (idempotent and
/// transactional writers), or none (`BatchProducer::NONE`, for the broker's internal logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchProducer {
    pub producer_id: i64,
    pub epoch: i16,
    pub base_sequence: i32,
    pub transactional: bool,
}

impl BatchProducer {
    pub const NONE: BatchProducer = BatchProducer { producer_id: -1, epoch: -1, base_sequence: -1, transactional: false };
}

/// A record to encode; borrowed, so callers keep their own representation.
#[derive(Debug, Clone, Copy)]
pub struct RecordRef<'a> {
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub headers: &'a [(String, Option<bytes::Bytes>)],
    pub timestamp_ms: i64,
}

/// Builds one batch. Records get consecutive offset deltas from 0; the log assigns the base offset.
pub struct BatchBuilder {
    buf: BytesMut,
    producer: BatchProducer,
    record_count: i32,
    base_timestamp: i64,
    max_timestamp: i64,
}

impl BatchBuilder {
    pub fn new(producer: BatchProducer) -> BatchBuilder {
        Self::with_capacity(producer, 0)
    }

    /// `capacity`: the expected size of the finished batch, to allocate once.
    pub fn with_capacity(producer: BatchProducer, capacity: usize) -> BatchBuilder {
        let mut buf = BytesMut::with_capacity(capacity.max(BATCH_HEADER_BYTES));
        buf.put_bytes(0, BATCH_HEADER_BYTES);
        BatchBuilder { buf, producer, record_count: 0, base_timestamp: -1, max_timestamp: -1 }
    }

    /// Size of the batch if it were finished now.
    pub fn size_bytes(&self) -> usize {
        self.buf.len()
    }

    /// How many bytes `record` adds to this batch (its length prefix included).
    pub fn record_bytes(&self, record: &RecordRef<'_>) -> usize {
        let body = self.body_bytes(record);
        varint_len(zigzag32(body as i32)) + body
    }

    fn deltas(&self, record: &RecordRef<'_>) -> (i64, i32) {
        let base = if self.record_count == 0 { record.timestamp_ms } else { self.base_timestamp };
        (record.timestamp_ms.wrapping_sub(base), self.record_count)
    }

    fn body_bytes(&self, record: &RecordRef<'_>) -> usize {
        let (timestamp_delta, offset_delta) = self.deltas(record);
        let bytes_field = |b: Option<&[u8]>| match b {
            Some(b) => varint_len(zigzag32(b.len() as i32)) + b.len(),
            None => 1,
        };
        let headers: usize =
            record.headers.iter().map(|(k, v)| varint_len(zigzag32(k.len() as i32)) + k.len() + bytes_field(v.as_deref())).sum();
        1 + varint_len(zigzag64(timestamp_delta))
            + varint_len(zigzag32(offset_delta))
            + bytes_field(record.key)
            + bytes_field(record.value)
            + varint_len(zigzag32(record.headers.len() as i32))
            + headers
    }

    /// Appends a record. Sizes above `i32::MAX` cannot occur: callers bound records far below that
    /// (`max.message.bytes`).
    pub fn push(&mut self, record: &RecordRef<'_>) {
        let (timestamp_delta, offset_delta) = self.deltas(record);
        let body = self.body_bytes(record);
        self.buf.reserve(varint_len(zigzag32(body as i32)) + body);
        put_varint(&mut self.buf, zigzag32(body as i32));
        self.buf.put_i8(0);
        put_varint(&mut self.buf, zigzag64(timestamp_delta));
        put_varint(&mut self.buf, zigzag32(offset_delta));
        put_bytes_field(&mut self.buf, record.key);
        put_bytes_field(&mut self.buf, record.value);
        put_varint(&mut self.buf, zigzag32(record.headers.len() as i32));
        for (key, value) in record.headers {
            put_bytes_field(&mut self.buf, Some(key.as_bytes()));
            put_bytes_field(&mut self.buf, value.as_deref());
        }
        if self.record_count == 0 {
            self.base_timestamp = record.timestamp_ms;
        }
        self.max_timestamp = self.max_timestamp.max(record.timestamp_ms);
        self.record_count += 1;
    }

    /// Fills in the header and the CRC. An empty builder yields an empty buffer (nothing to append).
    pub fn finish(mut self) -> BytesMut {
        if self.record_count == 0 {
            return BytesMut::new();
        }
        let batch_length = (self.buf.len() - 12) as i32;
        let mut attributes: i16 = 0;
        if self.producer.transactional {
            attributes |= TRANSACTIONAL_FLAG;
        }
        let header = &mut self.buf[..BATCH_HEADER_BYTES];
        header[0..8].copy_from_slice(&0i64.to_be_bytes());
        header[8..12].copy_from_slice(&batch_length.to_be_bytes());
        header[12..16].copy_from_slice(&0i32.to_be_bytes());
        header[16] = 2;
        header[ATTRIBUTES_OFFSET..23].copy_from_slice(&attributes.to_be_bytes());
        header[23..27].copy_from_slice(&(self.record_count - 1).to_be_bytes());
        header[27..35].copy_from_slice(&self.base_timestamp.to_be_bytes());
        header[35..43].copy_from_slice(&self.max_timestamp.to_be_bytes());
        header[43..51].copy_from_slice(&self.producer.producer_id.to_be_bytes());
        header[51..53].copy_from_slice(&self.producer.epoch.to_be_bytes());
        header[53..57].copy_from_slice(&self.producer.base_sequence.to_be_bytes());
        header[57..61].copy_from_slice(&self.record_count.to_be_bytes());
        let crc = crc32c::crc32c(&self.buf[ATTRIBUTES_OFFSET..]);
        self.buf[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
        self.buf
    }
}

fn zigzag32(v: i32) -> u64 {
    ((v << 1) ^ (v >> 31)) as u32 as u64
}

fn zigzag64(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

fn put_varint(buf: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        buf.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    buf.put_u8(v as u8);
}

fn put_bytes_field(buf: &mut BytesMut, bytes: Option<&[u8]>) {
    match bytes {
        Some(b) => {
            put_varint(buf, zigzag32(b.len() as i32));
            buf.put_slice(b);
        }
        None => put_varint(buf, zigzag32(-1)),
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use kafka_protocol::records::RecordBatchDecoder;

    use super::*;

    #[test]
    fn batches_decode_with_kafkas_decoder_and_sizes_are_exact() {
        let headers = vec![("h1".to_string(), Some(Bytes::from_static(b"v"))), ("null".to_string(), None)];
        let records = [
            RecordRef { key: Some(b"k1"), value: Some(&[7u8; 300]), headers: &headers, timestamp_ms: 1_700_000_000_123 },
            RecordRef { key: None, value: None, headers: &[], timestamp_ms: 1_700_000_000_000 },
            RecordRef { key: Some(b""), value: Some(b"last"), headers: &[], timestamp_ms: 1_700_000_009_999 },
        ];
        let producer = BatchProducer { producer_id: 42, epoch: 3, base_sequence: 17, transactional: true };
        let mut builder = BatchBuilder::new(producer);
        for record in &records {
            let before = builder.size_bytes();
            let expected = builder.record_bytes(record);
            builder.push(record);
            assert_eq!(builder.size_bytes() - before, expected, "record_bytes predicts what push writes");
        }
        let batch = builder.finish().freeze();
        // The storage engine's validator accepts it (CRC, counts, framing).
        let mut copy = batch.to_vec();
        let header = sluice_storage::BatchHeader::parse(&copy).unwrap();
        assert_eq!(header.total_size(), copy.len());
        assert!(header.is_transactional());
        copy.truncate(header.total_size());

        let mut bytes = batch.clone();
        let sets = RecordBatchDecoder::decode_all(&mut bytes).unwrap();
        let decoded: Vec<_> = sets.into_iter().flat_map(|s| s.records).collect();
        assert_eq!(decoded.len(), 3);
        assert_eq!(decoded[0].key.as_deref(), Some(&b"k1"[..]));
        assert_eq!(decoded[0].value.as_deref(), Some(&[7u8; 300][..]));
        assert_eq!(decoded[0].headers.len(), 2);
        assert_eq!(decoded[0].timestamp, 1_700_000_000_123);
        assert_eq!(decoded[1].timestamp, 1_700_000_000_000, "a timestamp before the base one encodes as a negative delta");
        assert!(decoded[1].key.is_none() && decoded[1].value.is_none());
        assert_eq!(decoded[2].key.as_deref(), Some(&b""[..]));
        assert_eq!(decoded[2].offset, 2);
        assert_eq!((decoded[2].producer_id, decoded[2].producer_epoch, decoded[2].sequence), (42, 3, 19));
        assert!(decoded[2].transactional);
    }

    #[test]
    fn an_empty_builder_yields_nothing() {
        assert!(BatchBuilder::new(BatchProducer::NONE).finish().is_empty());
    }
}
