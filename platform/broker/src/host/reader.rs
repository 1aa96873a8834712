//! The committed reader: one partition's records as a read_committed Kafka consumer sees them, for
//! code running inside the broker.
//!
//! It reads whole stored batches below the last stable offset, drops control batches (transaction
//! markers) and the records of aborted transactions, and decodes the rest into [`ConsumedRecord`]s
//! whose keys, values and header values are slices of one buffer per batch (no copy per record).
//! Decompression is bounded ([`ReaderLimits::decompressed_batch_bytes_max`]): a batch that
//! decompresses past the bound, or does not decode at all, is reported as
//! [`HostError::UndecodableBatch`] with the offset past it, so the caller's error policy decides
//! whether to stop, skip (dead-letter) or retry — the reader never loops on it silently.

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use sluice_storage::{AbortedTxn, BatchHeader, StorageError, TimestampType};

use super::HostError;
use crate::topic::Partition;

/// Why a stored batch's records cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum DecodeError {
    #[error("record {record}: truncated")]
    Truncated { record: usize },
    #[error("record {record}: varint too long")]
    VarintTooLong { record: usize },
    #[error("record {record}: negative {what}")]
    Negative { record: usize, what: &'static str },
    #[error("record {record}: a header without a key")]
    HeaderWithoutKey { record: usize },
    #[error("negative record count {0}")]
    NegativeCount(i32),
    #[error("{codec}: {message}")]
    Codec { codec: &'static str, message: String },
    #[error("{codec} data decompresses to more than {max} bytes")]
    TooLarge { codec: &'static str, max: usize },
    #[error("unknown compression codec {0}")]
    UnknownCodec(u8),
}

/// What one reader may hold at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReaderLimits {
    /// Stored bytes read per `next_batch` (whole batches; at least one).
    pub read_bytes_max: usize,
    /// The most one batch may decompress to. Kafka sets no such bound; a few kilobytes of zstd can
    /// claim gigabytes, so an in-broker reader needs one.
    pub decompressed_batch_bytes_max: usize,
}

impl Default for ReaderLimits {
    fn default() -> Self {
        ReaderLimits { read_bytes_max: 1 << 20, decompressed_batch_bytes_max: 64 << 20 }
    }
}

/// One committed record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumedRecord {
    pub offset: i64,
    /// Milliseconds since the epoch (the batch's LogAppendTime when the topic uses it).
    pub timestamp_ms: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    /// In record order; keys may repeat (Kafka allows it).
    pub headers: Vec<(String, Option<Bytes>)>,
}

/// What `next_batch` returns.
#[derive(Debug, Default)]
pub struct ReadBatch {
    pub records: Vec<ConsumedRecord>,
    /// Where the next read starts: past every record looked at, including markers and aborted
    /// records. Committing this offset as progress skips them for good.
    pub next_offset: i64,
}

pub struct CommittedReader {
    partition: Arc<Partition>,
    position: i64,
    limits: ReaderLimits,
    runtime: tokio::runtime::Handle,
}

impl CommittedReader {
    pub(super) fn new(partition: Arc<Partition>, position: i64, limits: ReaderLimits, runtime: tokio::runtime::Handle) -> CommittedReader {
        CommittedReader { partition, position, limits, runtime }
    }

    pub fn with_limits(mut self, limits: ReaderLimits) -> CommittedReader {
        self.limits = limits;
        self
    }

    pub fn topic(&self) -> &str {
        self.partition.topic.as_str()
    }

    pub fn partition(&self) -> i32 {
        self.partition.index
    }

    /// The next offset to read.
    pub fn position(&self) -> i64 {
        self.position
    }

    /// Moves the reader (after a failed commit, to re-read from the committed position).
    pub fn seek(&mut self, offset: i64) {
        self.position = offset;
    }

    pub fn last_stable_offset(&self) -> i64 {
        self.partition.last_stable_offset()
    }

    /// Committed records not yet read.
    pub fn lag(&self) -> i64 {
        (self.last_stable_offset() - self.position).max(0)
    }

    /// Reads up to `max_records` committed records at or after the position and moves past them.
    /// An empty batch with `next_offset` above the old position means only markers or aborted
    /// records were there; an empty batch at the same position means nothing is committed yet.
    /// Blocking file I/O.
    pub fn next_batch(&mut self, max_records: usize) -> Result<ReadBatch, HostError> {
        let position = self.position;
        let read = match self.partition.read_isolated(position, self.limits.read_bytes_max, true, true) {
            Ok(read) => read,
            Err(StorageError::OffsetOutOfRange { start, .. }) if position < start => {
                return Err(HostError::OffsetOutOfRange {
                    topic: self.topic().to_string(),
                    partition: self.partition(),
                    offset: position,
                    log_start: start,
                });
            }
            Err(error) => return Err(HostError::Storage(format!("reading {}-{}: {error}", self.topic(), self.partition()))),
        };
        let aborted = read.aborted.unwrap_or_default();
        let mut bytes = read.read.bytes;
        let mut batch = ReadBatch { records: Vec::new(), next_offset: position };
        while batch.records.len() < max_records {
            let Some(header) = BatchHeader::parse(&bytes) else { break };
            let size = header.total_size();
            if size > bytes.len() {
                break;
            }
            let stored = bytes.split_to(size);
            let batch_end = header.last_offset() + 1;
            if header.is_control() || batch_end <= position {
                batch.next_offset = batch.next_offset.max(batch_end);
                continue;
            }
            if header.is_transactional() && is_aborted(&aborted, header.producer_id, header.base_offset) {
                batch.next_offset = batch.next_offset.max(batch_end);
                continue;
            }
            let mut records = Vec::new();
            if let Err(reason) = decode_records(&header, stored, self.limits.decompressed_batch_bytes_max, &mut records) {
                // Records of this read before the bad batch are still good: hand them out first, and
                // report the batch on the next call, which starts at it.
                if !batch.records.is_empty() {
                    break;
                }
                return Err(HostError::UndecodableBatch {
                    topic: self.topic().to_string(),
                    partition: self.partition(),
                    offset: header.base_offset,
                    next_offset: batch_end,
                    reason: reason.to_string(),
                });
            }
            for record in records {
                if record.offset < position {
                    continue;
                }
                if batch.records.len() >= max_records {
                    break;
                }
                batch.next_offset = record.offset + 1;
                batch.records.push(record);
            }
            if batch.records.len() >= max_records {
                break;
            }
            batch.next_offset = batch.next_offset.max(batch_end);
        }
        self.position = batch.next_offset;
        Ok(batch)
    }

    /// Waits up to `timeout` for committed records past the position (returns at once if there are
    /// some). Blocking: call from the runtime's own thread, not from an async task.
    pub fn wait_for_records(&self, timeout: Duration) {
        let mut watch = self.partition.watch_high_watermark();
        watch.borrow_and_update();
        if self.partition.last_stable_offset() > self.position {
            return;
        }
        let _ = self.runtime.block_on(async { tokio::time::timeout(timeout, watch.changed()).await });
    }
}

fn is_aborted(aborted: &[AbortedTxn], producer_id: i64, offset: i64) -> bool {
    aborted.iter().any(|a| a.producer_id == producer_id && offset >= a.first_offset && offset < a.last_offset)
}

/// Decodes one stored batch's records. The batch passed framing and CRC checks when it was
/// appended; what can still be wrong is inside compressed data, so every length is checked.
fn decode_records(header: &BatchHeader, stored: Bytes, decompressed_max: usize, out: &mut Vec<ConsumedRecord>) -> Result<(), DecodeError> {
    const RECORDS_START: usize = 61;
    let payload = stored.slice(RECORDS_START.min(stored.len())..);
    let mut body = match header.compression() {
        0 => payload,
        codec => decompress(codec, &payload, decompressed_max)?,
    };
    let log_append_time = header.timestamp_type() == TimestampType::LogAppendTime;
    let count = usize::try_from(header.record_count).map_err(|_| DecodeError::NegativeCount(header.record_count))?;
    // Every record takes at least 7 bytes: preallocate from what is there, not from the header.
    out.reserve(count.min(body.len() / 7));
    for i in 0..count {
        let mut cursor = Cursor { bytes: &mut body, record: i };
        let length = cursor.varint()?;
        let length = usize::try_from(length).map_err(|_| DecodeError::Negative { record: i, what: "length" })?;
        let mut record = cursor.take(length)?;
        let mut c = Cursor { bytes: &mut record, record: i };
        let _attributes = c.u8()?;
        let timestamp_delta = c.varlong()?;
        let offset_delta = c.varint()?;
        let key = c.nullable_bytes()?;
        let value = c.nullable_bytes()?;
        let header_count = usize::try_from(c.varint()?).map_err(|_| DecodeError::Negative { record: i, what: "header count" })?;
        // Each header takes at least 2 bytes.
        let mut headers = Vec::with_capacity(header_count.min(c.bytes.len() / 2));
        for _ in 0..header_count {
            let name = c.nullable_bytes()?.ok_or(DecodeError::HeaderWithoutKey { record: i })?;
            headers.push((String::from_utf8_lossy(&name).into_owned(), c.nullable_bytes()?));
        }
        out.push(ConsumedRecord {
            offset: header.base_offset + i64::from(offset_delta),
            timestamp_ms: if log_append_time { header.max_timestamp } else { header.base_timestamp.wrapping_add(timestamp_delta) },
            key,
            value,
            headers,
        });
    }
    Ok(())
}

struct Cursor<'a> {
    bytes: &'a mut Bytes,
    record: usize,
}

impl Cursor<'_> {
    fn short(&self) -> DecodeError {
        DecodeError::Truncated { record: self.record }
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        if self.bytes.is_empty() {
            return Err(self.short());
        }
        Ok(self.bytes.get_u8())
    }

    fn unsigned(&mut self, max_bytes: usize) -> Result<u64, DecodeError> {
        let mut value = 0u64;
        for i in 0..max_bytes {
            let byte = self.u8()?;
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(DecodeError::VarintTooLong { record: self.record })
    }

    fn varint(&mut self) -> Result<i32, DecodeError> {
        let raw = self.unsigned(5)? as u32;
        Ok(((raw >> 1) as i32) ^ -((raw & 1) as i32))
    }

    fn varlong(&mut self) -> Result<i64, DecodeError> {
        let raw = self.unsigned(10)?;
        Ok(((raw >> 1) as i64) ^ -((raw & 1) as i64))
    }

    fn take(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        if n > self.bytes.len() {
            return Err(self.short());
        }
        Ok(self.bytes.split_to(n))
    }

    fn nullable_bytes(&mut self) -> Result<Option<Bytes>, DecodeError> {
        match self.varint()? {
            -1 => Ok(None),
            n if n < 0 => Err(DecodeError::Negative { record: self.record, what: "length" }),
            n => self.take(n as usize).map(Some),
        }
    }
}

/// Decompresses one batch's records with Kafka's codecs (1 gzip, 2 snappy, 3 lz4, 4 zstd), refusing
/// to produce more than `max` bytes.
fn decompress(codec: u8, payload: &[u8], max: usize) -> Result<Bytes, DecodeError> {
    let bounded = |reader: &mut dyn Read, codec: &'static str| -> Result<Bytes, DecodeError> {
        let mut out = Vec::new();
        // One byte past the bound tells "exactly at the limit" from "over it".
        reader.take(max as u64 + 1).read_to_end(&mut out).map_err(|e| DecodeError::Codec { codec, message: e.to_string() })?;
        if out.len() > max {
            return Err(DecodeError::TooLarge { codec, max });
        }
        Ok(Bytes::from(out))
    };
    let codec_error = |codec: &'static str| move |e: std::io::Error| DecodeError::Codec { codec, message: e.to_string() };
    match codec {
        1 => bounded(&mut flate2::read::GzDecoder::new(payload), "gzip"),
        2 => snappy(payload, max),
        3 => bounded(&mut lz4::Decoder::new(payload).map_err(codec_error("lz4"))?, "lz4"),
        4 => bounded(&mut zstd::stream::read::Decoder::new(payload).map_err(codec_error("zstd"))?, "zstd"),
        other => Err(DecodeError::UnknownCodec(other)),
    }
}

/// Kafka's snappy: the xerial framing (a magic header, then length-prefixed blocks) that the Java
/// client writes, or a raw snappy block from clients that skip the framing.
fn snappy(payload: &[u8], max: usize) -> Result<Bytes, DecodeError> {
    const XERIAL_MAGIC: &[u8] = b"\x82SNAPPY\x00";
    const XERIAL_HEADER_BYTES: usize = 16;
    let broken = |message: &str| DecodeError::Codec { codec: "snappy", message: message.to_string() };
    let block = |compressed: &[u8], out: &mut Vec<u8>| -> Result<(), DecodeError> {
        let len = snap::raw::decompress_len(compressed).map_err(|e| broken(&e.to_string()))?;
        if out.len().saturating_add(len) > max {
            return Err(DecodeError::TooLarge { codec: "snappy", max });
        }
        let start = out.len();
        out.resize(start + len, 0);
        snap::raw::Decoder::new().decompress(compressed, &mut out[start..]).map_err(|e| broken(&e.to_string()))?;
        Ok(())
    };
    let mut out = Vec::new();
    if !payload.starts_with(XERIAL_MAGIC) {
        block(payload, &mut out)?;
        return Ok(Bytes::from(out));
    }
    let mut rest = payload.get(XERIAL_HEADER_BYTES..).ok_or_else(|| broken("truncated header"))?;
    while !rest.is_empty() {
        let (len, tail) = rest.split_first_chunk::<4>().ok_or_else(|| broken("truncated block length"))?;
        let len = u32::from_be_bytes(*len) as usize;
        let compressed = tail.get(..len).ok_or_else(|| broken("truncated block"))?;
        block(compressed, &mut out)?;
        rest = &tail[len..];
    }
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn decompression_stops_at_the_bound() {
        let zeros = vec![0u8; 10 << 20];
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&zeros).unwrap();
        let gz = gz.finish().unwrap();
        assert!(gz.len() < 64 << 10, "a small input that claims much more");
        assert_eq!(decompress(1, &gz, 10 << 20).unwrap().len(), 10 << 20, "exactly at the bound is fine");
        assert_eq!(decompress(1, &gz, 1 << 20).unwrap_err(), DecodeError::TooLarge { codec: "gzip", max: 1 << 20 });
        let zstd = zstd::bulk::compress(&zeros, 3).unwrap();
        assert!(matches!(decompress(4, &zstd, 1 << 20).unwrap_err(), DecodeError::TooLarge { .. }));
        let raw = snap::raw::Encoder::new().compress_vec(&zeros).unwrap();
        assert!(matches!(decompress(2, &raw, 1 << 20).unwrap_err(), DecodeError::TooLarge { .. }));
        assert!(decompress(4, b"not zstd at all", 1 << 20).is_err());
    }
}
