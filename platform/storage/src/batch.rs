//! Kafka RecordBatch v2 framing: parsing the 61-byte header, validating a producer's buffer (sizes,
//! magic, CRC-32C, record counts, and for uncompressed batches the records' own varint framing), and
//! the in-place header rewrites the log makes when it assigns offsets.
//!
//! This is the first thing a produce touches inside the storage crate: `PartitionLog::append` runs
//! these checks on the whole buffer before any byte reaches a segment, so nothing unvalidated is ever
//! stored or served. Batches are never decompressed: compressed batches are checked at the header and
//! CRC level and then pass through byte for byte. All parsing is bounds-checked; bad bytes produce a
//! `StorageError`, never a panic.
//!
//! Layout (big-endian): baseOffset i64 @0, batchLength i32 @8 (bytes after this field),
//! partitionLeaderEpoch i32 @12, magic i8 @16, crc u32 @17 (CRC-32C over attributes @21 to the end),
//! attributes i16 @21, lastOffsetDelta i32 @23, baseTimestamp i64 @27, maxTimestamp i64 @35,
//! producerId i64 @43, producerEpoch i16 @51, baseSequence i32 @53, recordCount i32 @57, records @61.

use crate::error::StorageError;

/// Size of the fixed RecordBatch v2 header that precedes the records.
pub const BATCH_HEADER_BYTES: usize = 61;
/// The base offset and batch length fields, which `batchLength` does not count: a batch occupies
/// `LOG_OVERHEAD_BYTES + batchLength` bytes.
pub const LOG_OVERHEAD_BYTES: usize = 12;
/// The smallest `batchLength` a v2 batch can have: a header with no records.
pub const BATCH_LENGTH_MIN: usize = BATCH_HEADER_BYTES - LOG_OVERHEAD_BYTES;
/// The only message format this log stores.
pub const MAGIC_V2: i8 = 2;
/// Kafka's default `max.message.bytes`: 1 MiB of records plus the log overhead.
pub const MAX_BATCH_BYTES_DEFAULT: u32 = 1_048_588;

/// Compression codec ids in the low three attribute bits.
pub const COMPRESSION_NONE: u8 = 0;
/// zstd, the highest codec id Kafka defines; 5..=7 are invalid.
const COMPRESSION_CODEC_MAX: u8 = 4;

const BATCH_LENGTH_AT: usize = 8;
const PARTITION_LEADER_EPOCH_AT: usize = 12;
const CRC_AT: usize = 17;
/// The CRC covers everything from the attributes to the end of the batch, so the base offset and
/// the partition leader epoch can be rewritten without recomputing it.
const ATTRIBUTES_AT: usize = 21;
const MAX_TIMESTAMP_AT: usize = 35;

const COMPRESSION_MASK: i16 = 0x07;
const TIMESTAMP_TYPE_BIT: i16 = 0x08;
const TRANSACTIONAL_BIT: i16 = 0x10;
const CONTROL_BIT: i16 = 0x20;

/// `message.timestamp.type`: whether record timestamps come from the producer or from the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TimestampType {
    #[default]
    CreateTime,
    LogAppendTime,
}

/// The fixed header of one RecordBatch v2, as stored on the wire and on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    pub batch_length: i32,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub record_count: i32,
}

impl BatchHeader {
    /// Parses the header at the start of `bytes` without checking any field; `None` when fewer than
    /// `BATCH_HEADER_BYTES` bytes are given.
    pub fn parse(bytes: &[u8]) -> Option<BatchHeader> {
        let mut r = Reader::new(bytes.get(..BATCH_HEADER_BYTES)?);
        Some(BatchHeader {
            base_offset: r.i64()?,
            batch_length: r.i32()?,
            partition_leader_epoch: r.i32()?,
            magic: r.i8()?,
            crc: r.u32()?,
            attributes: r.i16()?,
            last_offset_delta: r.i32()?,
            base_timestamp: r.i64()?,
            max_timestamp: r.i64()?,
            producer_id: r.i64()?,
            producer_epoch: r.i16()?,
            base_sequence: r.i32()?,
            record_count: r.i32()?,
        })
    }

    /// Offset of the batch's last record. Saturates rather than overflowing on a garbage header.
    pub fn last_offset(&self) -> i64 {
        self.base_offset.saturating_add(i64::from(self.last_offset_delta))
    }

    /// Bytes the whole batch occupies: 12 + batch_length (12 for a negative, i.e. invalid, length).
    pub fn total_size(&self) -> usize {
        LOG_OVERHEAD_BYTES.saturating_add(usize::try_from(self.batch_length).unwrap_or(0))
    }

    pub fn compression(&self) -> u8 {
        (self.attributes & COMPRESSION_MASK) as u8
    }

    pub fn is_transactional(&self) -> bool {
        self.attributes & TRANSACTIONAL_BIT != 0
    }

    pub fn is_control(&self) -> bool {
        self.attributes & CONTROL_BIT != 0
    }

    pub fn timestamp_type(&self) -> TimestampType {
        if self.attributes & TIMESTAMP_TYPE_BIT != 0 { TimestampType::LogAppendTime } else { TimestampType::CreateTime }
    }

    /// Whether the batch takes part in idempotent-producer sequence checks.
    pub(crate) fn is_idempotent(&self) -> bool {
        self.producer_id >= 0 && self.base_sequence >= 0
    }
}

/// The type in a control record's key (Kafka's `ControlRecordType`): how a transaction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlType {
    Abort,
    Commit,
}

/// A transaction marker as the transaction coordinator writes it to each partition of a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnMarker {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub control: ControlType,
    /// The coordinator's epoch, carried in the record's value as Kafka does; 0 on a single node.
    pub coordinator_epoch: i32,
}

/// Bytes of a control batch: the header and one 17-byte record (length varint + 16-byte body).
pub(crate) const CONTROL_BATCH_BYTES: usize = BATCH_HEADER_BYTES + 17;

/// Encodes the control batch for `marker` at base offset 0: transactional and control attribute bits,
/// the marker's producer id and epoch, no sequence, and one record whose key is (version 0, type) and
/// whose value is (version 0, coordinator epoch).
pub(crate) fn encode_control_batch(marker: &TxnMarker, timestamp_ms: i64) -> Vec<u8> {
    let mut out = Vec::with_capacity(CONTROL_BATCH_BYTES);
    out.extend_from_slice(&0i64.to_be_bytes());
    out.extend_from_slice(&((CONTROL_BATCH_BYTES - LOG_OVERHEAD_BYTES) as i32).to_be_bytes());
    out.extend_from_slice(&0i32.to_be_bytes());
    out.push(MAGIC_V2 as u8);
    out.extend_from_slice(&0u32.to_be_bytes());
    out.extend_from_slice(&(TRANSACTIONAL_BIT | CONTROL_BIT).to_be_bytes());
    out.extend_from_slice(&0i32.to_be_bytes());
    out.extend_from_slice(&timestamp_ms.to_be_bytes());
    out.extend_from_slice(&timestamp_ms.to_be_bytes());
    out.extend_from_slice(&marker.producer_id.to_be_bytes());
    out.extend_from_slice(&marker.producer_epoch.to_be_bytes());
    out.extend_from_slice(&(-1i32).to_be_bytes());
    out.extend_from_slice(&1i32.to_be_bytes());
    // The record, with zigzag varints: length 16, attributes 0, timestamp delta 0, offset delta 0,
    // key length 4, key, value length 6, value, no headers.
    let control_type: i16 = match marker.control {
        ControlType::Abort => 0,
        ControlType::Commit => 1,
    };
    out.extend_from_slice(&[32, 0, 0, 0, 8]);
    out.extend_from_slice(&0i16.to_be_bytes());
    out.extend_from_slice(&control_type.to_be_bytes());
    out.push(12);
    out.extend_from_slice(&0i16.to_be_bytes());
    out.extend_from_slice(&marker.coordinator_epoch.to_be_bytes());
    out.push(0);
    let crc = batch_crc(&out);
    put(&mut out, CRC_AT, crc.to_be_bytes());
    out
}

/// The type of a control batch's first record, read from its key. `batch` starts at the batch header;
/// it may be cut after the first record. `None` when the record or its key cannot be read or the type
/// is one this log does not track (Kafka's later control types).
pub(crate) fn control_type(batch: &[u8]) -> Option<ControlType> {
    let mut r = Reader::new(batch.get(BATCH_HEADER_BYTES..)?);
    let length = usize::try_from(r.varint()?).ok()?;
    let mut body = Reader::new(r.take(length)?);
    body.i8()?;
    body.varlong()?;
    body.varint()?;
    if body.varint()? < 4 {
        return None;
    }
    let _version = body.i16()?;
    match body.i16()? {
        0 => Some(ControlType::Abort),
        1 => Some(ControlType::Commit),
        _ => None,
    }
}

/// Who sent a buffer, which decides how strict validation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// A producer: every batch must be dense (record count == last offset delta + 1, inner offset
    /// deltas 0, 1, 2, ...) and control batches are refused, as Kafka does for client writes.
    Client,
    /// Offset-preserving writes (replicas, mirrors): batches may come from a compacted log, so a batch
    /// may hold fewer records than its offset range (even none), and control batches are allowed.
    Replica,
}

/// A batch that passed validation, with what the log needs beyond the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ValidatedBatch {
    pub header: BatchHeader,
    /// Offset delta of the first record carrying the batch's largest timestamp. Known only for
    /// uncompressed CreateTime batches; 0 (the first record) otherwise.
    pub max_timestamp_offset_delta: i32,
    /// Smallest and largest timestamp the batch carries, for the topic's timestamp bounds: every
    /// record's and the header's max timestamp for an uncompressed batch; the header's base and max
    /// timestamps for a compressed one, whose records are never decompressed. Kafka's "no timestamp"
    /// (-1) is left out, as Kafka does. None when nothing carries a timestamp.
    pub timestamp_range: Option<(i64, i64)>,
}

/// Kafka's `RecordBatch.NO_TIMESTAMP`: a record without a timestamp, exempt from timestamp bounds.
pub(crate) const NO_TIMESTAMP: i64 = -1;

/// Widens `range` to include `timestamp`, unless it is `NO_TIMESTAMP`.
fn widen(range: &mut Option<(i64, i64)>, timestamp: i64) {
    if timestamp == NO_TIMESTAMP {
        return;
    }
    *range = Some(match *range {
        Some((low, high)) => (low.min(timestamp), high.max(timestamp)),
        None => (timestamp, timestamp),
    });
}

/// Validates a buffer of concatenated batches as a producer sent them: sizes, magic 2, CRC-32C,
/// record count >= 1 and == last_offset_delta + 1, each batch <= `max_batch_bytes`, no trailing bytes.
/// For uncompressed batches the records' varint framing is walked too, and their count and offset
/// deltas checked. Returns the headers in order.
pub fn validate_batches(buf: &[u8], max_batch_bytes: u32) -> Result<Vec<BatchHeader>, StorageError> {
    let mut batches = Vec::new();
    validate(buf, max_batch_bytes, Origin::Client, &mut batches)?;
    Ok(batches.into_iter().map(|b| b.header).collect())
}

/// Validates batches as another broker stores them (read by a replica or a mirror): as
/// [`validate_batches`], but with the stored offsets (which may have gaps left by compaction) and any
/// producer state. Returns the headers in order.
pub fn validate_stored_batches(buf: &[u8], max_batch_bytes: u32) -> Result<Vec<BatchHeader>, StorageError> {
    let mut batches = Vec::new();
    validate(buf, max_batch_bytes, Origin::Replica, &mut batches)?;
    Ok(batches.into_iter().map(|b| b.header).collect())
}

/// The crate's validation entry point; appends one `ValidatedBatch` per batch to `out`.
pub(crate) fn validate(buf: &[u8], max_batch_bytes: u32, origin: Origin, out: &mut Vec<ValidatedBatch>) -> Result<(), StorageError> {
    let mut position = 0usize;
    while position < buf.len() {
        let rest = buf.get(position..).unwrap_or_default();
        let at = |what: String| format!("batch {} at byte {position}: {what}", out.len());
        if rest.len() < LOG_OVERHEAD_BYTES {
            return Err(StorageError::CorruptMessage(at(format!("{} trailing bytes are too few for a batch", rest.len()))));
        }
        let batch_length = read_i32(rest, BATCH_LENGTH_AT).unwrap_or(-1);
        let Some(length) = usize::try_from(batch_length).ok().filter(|l| *l >= BATCH_LENGTH_MIN) else {
            return Err(StorageError::CorruptMessage(at(format!(
                "batch length {batch_length} is below the minimum of {BATCH_LENGTH_MIN}"
            ))));
        };
        let size = LOG_OVERHEAD_BYTES + length;
        if size > max_batch_bytes as usize {
            return Err(StorageError::RecordTooLarge { size, max: max_batch_bytes });
        }
        let Some(bytes) = rest.get(..size) else {
            return Err(StorageError::CorruptMessage(at(format!("batch claims {size} bytes but only {} remain", rest.len()))));
        };
        let batch = check_batch(bytes, origin).map_err(|error| match error {
            StorageError::CorruptMessage(m) => StorageError::CorruptMessage(at(m)),
            StorageError::InvalidRecord(m) => StorageError::InvalidRecord(at(m)),
            other => other,
        })?;
        out.push(batch);
        position += size;
    }
    Ok(())
}

/// Checks one whole batch (`bytes` is exactly the batch). Messages lack the batch's position; the
/// caller adds it.
fn check_batch(bytes: &[u8], origin: Origin) -> Result<ValidatedBatch, StorageError> {
    let corrupt = |m: String| Err(StorageError::CorruptMessage(m));
    let invalid = |m: String| Err(StorageError::InvalidRecord(m));
    let Some(header) = BatchHeader::parse(bytes) else {
        return corrupt(format!("{} bytes are too few for a batch header", bytes.len()));
    };
    if header.magic != MAGIC_V2 {
        return invalid(format!("magic {} is not supported; only RecordBatch v2 (magic 2) is", header.magic));
    }
    let computed = batch_crc(bytes);
    if computed != header.crc {
        return corrupt(format!("CRC-32C mismatch: the batch says {:#010x}, its bytes give {computed:#010x}", header.crc));
    }
    if header.compression() > COMPRESSION_CODEC_MAX {
        return invalid(format!("unknown compression codec {}", header.compression()));
    }
    if header.last_offset_delta < 0 {
        return invalid(format!("negative last offset delta {}", header.last_offset_delta));
    }
    let offsets_spanned = i64::from(header.last_offset_delta) + 1;
    match origin {
        Origin::Client => {
            if header.is_control() {
                return invalid("control batches cannot be written by clients".to_string());
            }
            if header.is_transactional() && !header.is_idempotent() {
                return invalid(format!(
                    "transactional batch without a producer id and sequence (producer id {}, base sequence {})",
                    header.producer_id, header.base_sequence
                ));
            }
            if header.record_count < 1 || i64::from(header.record_count) != offsets_spanned {
                return invalid(format!(
                    "record count {} does not match last offset delta {} (a producer batch holds last offset delta + 1 >= 1 records)",
                    header.record_count, header.last_offset_delta
                ));
            }
        }
        Origin::Replica => {
            if header.record_count < 0 || i64::from(header.record_count) > offsets_spanned {
                return invalid(format!(
                    "record count {} does not fit last offset delta {}",
                    header.record_count, header.last_offset_delta
                ));
            }
        }
    }
    let mut max_timestamp_offset_delta = 0;
    let mut timestamp_range = None;
    if header.compression() == COMPRESSION_NONE {
        (max_timestamp_offset_delta, timestamp_range) = check_records(&header, bytes, origin)?;
    } else {
        widen(&mut timestamp_range, header.base_timestamp);
    }
    widen(&mut timestamp_range, header.max_timestamp);
    Ok(ValidatedBatch { header, max_timestamp_offset_delta, timestamp_range })
}

/// Walks the records of an uncompressed batch: framing, count, offset deltas, and for a producer's
/// batch that header keys are UTF-8. Returns the offset delta of the first record with the largest
/// timestamp (0 for LogAppendTime batches, whose record timestamps are ignored) and the range of the
/// records' timestamps.
fn check_records(header: &BatchHeader, bytes: &[u8], origin: Origin) -> Result<(i32, Option<(i64, i64)>), StorageError> {
    let mut count: i64 = 0;
    let mut previous_delta: i64 = -1;
    let mut best: Option<(i64, i32)> = None;
    let mut range = None;
    let records = match origin {
        Origin::Client => Records::checking_header_keys(bytes),
        Origin::Replica => Records::new(bytes),
    };
    for record in records {
        let record = record.map_err(|error| match error {
            RecordError::Framing(_) => StorageError::CorruptMessage(format!("record {count}: {error}")),
            RecordError::HeaderKeyNotUtf8 { .. } => {
                StorageError::InvalidRecord(format!("record {count}: {error} (Kafka header keys are strings)"))
            }
        })?;
        let delta = i64::from(record.offset_delta);
        let in_order = match origin {
            Origin::Client => delta == count,
            Origin::Replica => delta > previous_delta && delta <= i64::from(header.last_offset_delta),
        };
        if !in_order {
            return Err(StorageError::InvalidRecord(format!(
                "record {count} has offset delta {delta}; inner offset deltas must run 0, 1, 2, ... within the batch"
            )));
        }
        let timestamp = header.base_timestamp.wrapping_add(record.timestamp_delta);
        if best.is_none_or(|(t, _)| timestamp > t) {
            best = Some((timestamp, record.offset_delta));
        }
        widen(&mut range, timestamp);
        previous_delta = delta;
        count += 1;
    }
    if count != i64::from(header.record_count) {
        return Err(StorageError::InvalidRecord(format!("header says {} records, the batch holds {count}", header.record_count)));
    }
    if header.timestamp_type() == TimestampType::LogAppendTime {
        return Ok((0, range));
    }
    Ok((best.map_or(0, |(_, delta)| delta), range))
}

/// The CRC-32C a batch's bytes give: over everything from the attributes to the end.
pub(crate) fn batch_crc(batch: &[u8]) -> u32 {
    crc32c::crc32c(batch.get(ATTRIBUTES_AT..).unwrap_or_default())
}

/// Offset where the CRC-covered region of a batch starts, for callers that checksum incrementally.
pub(crate) const CRC_COVERED_FROM: usize = ATTRIBUTES_AT;

/// Rewrites the base offset: outside the CRC, so no recompute.
pub(crate) fn set_base_offset(batch: &mut [u8], base_offset: i64) {
    put(batch, 0, base_offset.to_be_bytes());
}

/// Rewrites the partition leader epoch: outside the CRC, so no recompute.
pub(crate) fn set_partition_leader_epoch(batch: &mut [u8], epoch: i32) {
    put(batch, PARTITION_LEADER_EPOCH_AT, epoch.to_be_bytes());
}

/// Stamps a batch for a LogAppendTime topic: max timestamp = `now_ms`, timestamp-type bit set, and
/// the CRC recomputed because both fields are covered by it.
pub(crate) fn set_log_append_time(batch: &mut [u8], now_ms: i64) {
    let attributes = read_i16(batch, ATTRIBUTES_AT).unwrap_or(0) | TIMESTAMP_TYPE_BIT;
    put(batch, ATTRIBUTES_AT, attributes.to_be_bytes());
    put(batch, MAX_TIMESTAMP_AT, now_ms.to_be_bytes());
    let crc = batch_crc(batch);
    put(batch, CRC_AT, crc.to_be_bytes());
}

fn put<const N: usize>(batch: &mut [u8], at: usize, value: [u8; N]) {
    if let Some(field) = batch.get_mut(at..).and_then(|rest| rest.first_chunk_mut::<N>()) {
        *field = value;
    }
}

fn read_i32(bytes: &[u8], at: usize) -> Option<i32> {
    Reader::new(bytes.get(at..)?).i32()
}

fn read_i16(bytes: &[u8], at: usize) -> Option<i16> {
    Reader::new(bytes.get(at..)?).i16()
}

/// What the log needs from one record: where it sits in the batch and its timestamp delta.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecordInfo {
    pub offset_delta: i32,
    pub timestamp_delta: i64,
}

/// Why a record could not be walked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RecordError {
    /// The bytes do not frame a record.
    Framing(&'static str),
    /// Header number `header` of the record has a key that is not UTF-8 (checked only when asked).
    HeaderKeyNotUtf8 { header: i32 },
}

impl std::fmt::Display for RecordError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecordError::Framing(why) => f.write_str(why),
            RecordError::HeaderKeyNotUtf8 { header } => write!(f, "header {header} has a key that is not valid UTF-8"),
        }
    }
}

/// Walks the records of an uncompressed batch, checking each record's framing (length, key, value,
/// headers) without copying anything. Stops after the first error.
pub(crate) struct Records<'a> {
    reader: Reader<'a>,
    /// Also check that header keys are UTF-8 (a producer's batch; stored data is read as it is).
    check_header_keys: bool,
}

impl<'a> Records<'a> {
    /// `batch` is a whole uncompressed batch, header included.
    pub(crate) fn new(batch: &'a [u8]) -> Records<'a> {
        Records { reader: Reader::new(batch.get(BATCH_HEADER_BYTES..).unwrap_or_default()), check_header_keys: false }
    }

    /// As `new`, and a header key that is not UTF-8 is an error: clients decode header keys as
    /// strings, and one that fails to decode breaks every consumer of the topic.
    pub(crate) fn checking_header_keys(batch: &'a [u8]) -> Records<'a> {
        Records { check_header_keys: true, ..Records::new(batch) }
    }

    fn next_record(&mut self) -> Result<RecordInfo, RecordError> {
        use RecordError::Framing;
        let length = self.reader.varint().ok_or(Framing("record length is not a valid varint"))?;
        let length = usize::try_from(length).map_err(|_| Framing("negative record length"))?;
        let body = self.reader.take(length).ok_or(Framing("record length runs past the end of the batch"))?;
        let mut r = Reader::new(body);
        const SHORT: RecordError = Framing("record is shorter than its fields");
        let _attributes = r.i8().ok_or(SHORT)?;
        let timestamp_delta = r.varlong().ok_or(SHORT)?;
        let offset_delta = r.varint().ok_or(SHORT)?;
        skip_bytes(&mut r, true).ok_or(Framing("bad key length"))?;
        skip_bytes(&mut r, true).ok_or(Framing("bad value length"))?;
        let headers = r.varint().filter(|n| *n >= 0).ok_or(Framing("bad header count"))?;
        for header in 0..headers {
            let key = read_bytes(&mut r).ok_or(Framing("bad header key length"))?;
            if self.check_header_keys && std::str::from_utf8(key).is_err() {
                return Err(RecordError::HeaderKeyNotUtf8 { header });
            }
            skip_bytes(&mut r, true).ok_or(Framing("bad header value length"))?;
        }
        if !r.is_empty() {
            return Err(Framing("record has bytes after its last header"));
        }
        Ok(RecordInfo { offset_delta, timestamp_delta })
    }
}

impl Iterator for Records<'_> {
    type Item = Result<RecordInfo, RecordError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.reader.is_empty() {
            return None;
        }
        let record = self.next_record();
        if record.is_err() {
            self.reader = Reader::new(&[]);
        }
        Some(record)
    }
}

/// Reads a varint-length-prefixed, non-null byte string.
fn read_bytes<'a>(r: &mut Reader<'a>) -> Option<&'a [u8]> {
    let length = r.varint()?;
    r.take(usize::try_from(length).ok()?)
}

/// Skips a varint-length-prefixed byte string; length -1 means null where `nullable`.
fn skip_bytes(r: &mut Reader<'_>, nullable: bool) -> Option<()> {
    let length = r.varint()?;
    if length == -1 && nullable {
        return Some(());
    }
    r.take(usize::try_from(length).ok()?).map(|_| ())
}

/// A bounds-checked big-endian and varint reader over a byte slice. Every read returns `None` instead
/// of panicking when the bytes run out.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.bytes.split_first_chunk::<N>()?;
        self.bytes = rest;
        Some(*head)
    }

    pub(crate) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let head = self.bytes.get(..n)?;
        self.bytes = self.bytes.get(n..)?;
        Some(head)
    }

    pub(crate) fn i8(&mut self) -> Option<i8> {
        self.array().map(i8::from_be_bytes)
    }

    pub(crate) fn i16(&mut self) -> Option<i16> {
        self.array().map(i16::from_be_bytes)
    }

    pub(crate) fn i32(&mut self) -> Option<i32> {
        self.array().map(i32::from_be_bytes)
    }

    pub(crate) fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_be_bytes)
    }

    pub(crate) fn i64(&mut self) -> Option<i64> {
        self.array().map(i64::from_be_bytes)
    }

    /// Unsigned LEB128 of at most `max_bytes` bytes.
    fn unsigned_varint(&mut self, max_bytes: u32) -> Option<u64> {
        let mut value = 0u64;
        for i in 0..max_bytes {
            let (&byte, rest) = self.bytes.split_first()?;
            self.bytes = rest;
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }

    /// A zigzag varint that must fit an i32 (Kafka's `varint`).
    pub(crate) fn varint(&mut self) -> Option<i32> {
        let raw = u32::try_from(self.unsigned_varint(5)?).ok()?;
        Some(((raw >> 1) as i32) ^ -((raw & 1) as i32))
    }

    /// A zigzag varint that must fit an i64 (Kafka's `varlong`).
    pub(crate) fn varlong(&mut self) -> Option<i64> {
        let raw = self.unsigned_varint(10)?;
        Some(((raw >> 1) as i64) ^ -((raw & 1) as i64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::BatchBuilder;

    fn one_batch() -> Vec<u8> {
        BatchBuilder::new(1_000).record(Some(b"k"), Some(b"v1")).record_at(5, None, Some(b"v2")).build()
    }

    #[test]
    fn parses_the_header_the_builder_writes() {
        let bytes = BatchBuilder::new(1_000).producer(7, 2, 40).record(None, Some(b"a")).record_at(9, None, Some(b"b")).build();
        let headers = validate_batches(&bytes, MAX_BATCH_BYTES_DEFAULT).unwrap();
        assert_eq!(headers.len(), 1);
        let h = headers[0];
        assert_eq!((h.magic, h.last_offset_delta, h.record_count), (2, 1, 2));
        assert_eq!((h.base_timestamp, h.max_timestamp), (1_000, 1_009));
        assert_eq!((h.producer_id, h.producer_epoch, h.base_sequence), (7, 2, 40));
        assert_eq!(h.total_size(), bytes.len());
        assert_eq!(h.compression(), COMPRESSION_NONE);
        assert_eq!(h.timestamp_type(), TimestampType::CreateTime);
        assert!(!h.is_transactional() && !h.is_control());
    }

    #[test]
    fn accepts_concatenated_batches_and_rejects_trailing_bytes() {
        let mut buf = one_batch();
        buf.extend_from_slice(&one_batch());
        assert_eq!(validate_batches(&buf, MAX_BATCH_BYTES_DEFAULT).unwrap().len(), 2);
        buf.extend_from_slice(&[0; 5]);
        assert!(matches!(validate_batches(&buf, MAX_BATCH_BYTES_DEFAULT), Err(StorageError::CorruptMessage(m)) if m.contains("batch 2")));
    }

    #[test]
    fn rejects_a_flipped_payload_bit_as_corrupt() {
        let mut buf = one_batch();
        let last = buf.len() - 1;
        buf[last] ^= 0x01;
        assert!(matches!(validate_batches(&buf, MAX_BATCH_BYTES_DEFAULT), Err(StorageError::CorruptMessage(m)) if m.contains("CRC")));
    }

    #[test]
    fn enforces_the_size_limit_before_looking_further() {
        let buf = one_batch();
        let max = (buf.len() - 1) as u32;
        assert!(matches!(validate_batches(&buf, max), Err(StorageError::RecordTooLarge { size, max: m }) if size == buf.len() && m == max));
    }

    #[test]
    fn rejects_wrong_magic_and_bad_lengths() {
        let mut buf = one_batch();
        buf[16] = 1;
        assert!(matches!(validate_batches(&buf, MAX_BATCH_BYTES_DEFAULT), Err(StorageError::InvalidRecord(_))));
        let mut buf = one_batch();
        buf[8..12].copy_from_slice(&10i32.to_be_bytes());
        assert!(matches!(validate_batches(&buf, MAX_BATCH_BYTES_DEFAULT), Err(StorageError::CorruptMessage(_))));
        let mut buf = one_batch();
        let too_long = buf.len() as i32;
        buf[8..12].copy_from_slice(&too_long.to_be_bytes());
        assert!(matches!(validate_batches(&buf, MAX_BATCH_BYTES_DEFAULT), Err(StorageError::CorruptMessage(m)) if m.contains("remain")));
    }

    #[test]
    fn rejects_a_header_key_that_is_not_utf8() {
        // Found by the record_batch fuzz target: the log stored it, and the transform runner's decoder
        // (like every client's) refused the batch for good, stalling the transform on it.
        let bad = BatchBuilder::new(1_000).record_with_headers(0, None, Some(b"v"), &[(b"trace\xff", Some(b"x"))]).build();
        match validate_batches(&bad, MAX_BATCH_BYTES_DEFAULT) {
            Err(StorageError::InvalidRecord(message)) => assert!(message.contains("not valid UTF-8"), "{message}"),
            other => panic!("expected InvalidRecord, got {other:?}"),
        }
        let good = BatchBuilder::new(1_000).record_with_headers(0, None, Some(b"v"), &[("tracé".as_bytes(), None)]).build();
        assert!(validate_batches(&good, MAX_BATCH_BYTES_DEFAULT).is_ok());
    }

    #[test]
    fn rejects_a_record_count_that_disagrees_with_the_records() {
        // Lie about the count in the header and fix the CRC up, so only the record walk can tell.
        let mut buf = one_batch();
        buf[57..61].copy_from_slice(&3i32.to_be_bytes());
        buf[23..27].copy_from_slice(&2i32.to_be_bytes());
        let crc = batch_crc(&buf);
        buf[17..21].copy_from_slice(&crc.to_be_bytes());
        assert!(matches!(validate_batches(&buf, MAX_BATCH_BYTES_DEFAULT), Err(StorageError::InvalidRecord(m)) if m.contains("holds 2")));
    }

    #[test]
    fn rejects_control_batches_from_clients_but_not_from_replicas() {
        let buf = BatchBuilder::new(0).attributes(CONTROL_BIT).record(None, None).build();
        assert!(matches!(validate_batches(&buf, MAX_BATCH_BYTES_DEFAULT), Err(StorageError::InvalidRecord(_))));
        let mut out = Vec::new();
        validate(&buf, MAX_BATCH_BYTES_DEFAULT, Origin::Replica, &mut out).unwrap();
        assert!(out[0].header.is_control());
    }

    #[test]
    fn passes_compressed_batches_through_without_looking_inside() {
        let buf = BatchBuilder::new(0).compressed(4, 3, b"opaque zstd frame").build();
        let headers = validate_batches(&buf, MAX_BATCH_BYTES_DEFAULT).unwrap();
        assert_eq!((headers[0].compression(), headers[0].record_count), (4, 3));
    }

    #[test]
    fn finds_the_record_with_the_largest_timestamp() {
        let buf = BatchBuilder::new(100).record_at(0, None, None).record_at(50, None, None).record_at(7, None, None).build();
        let mut out = Vec::new();
        validate(&buf, MAX_BATCH_BYTES_DEFAULT, Origin::Client, &mut out).unwrap();
        assert_eq!(out[0].max_timestamp_offset_delta, 1);
    }

    #[test]
    fn rewrites_keep_the_batch_valid() {
        let mut buf = one_batch();
        set_base_offset(&mut buf, 1234);
        set_partition_leader_epoch(&mut buf, 9);
        set_log_append_time(&mut buf, 55_555);
        let h = validate_batches(&buf, MAX_BATCH_BYTES_DEFAULT).unwrap()[0];
        assert_eq!((h.base_offset, h.partition_leader_epoch, h.max_timestamp), (1234, 9, 55_555));
        assert_eq!(h.timestamp_type(), TimestampType::LogAppendTime);
    }

    #[test]
    fn varints_round_trip_and_reject_overlong_encodings() {
        for (bytes, want) in [(&[0x00][..], 0), (&[0x01][..], -1), (&[0x02][..], 1), (&[0xfe, 0xff, 0xff, 0xff, 0x0f][..], i32::MAX)] {
            assert_eq!(Reader::new(bytes).varint(), Some(want));
        }
        assert_eq!(Reader::new(&[0xff, 0xff, 0xff, 0xff, 0xff, 0x01]).varint(), None);
        assert_eq!(Reader::new(&[0x80]).varint(), None);
        assert_eq!(Reader::new(&[0xff; 11]).varlong(), None);
    }
}
