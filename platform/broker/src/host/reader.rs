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

use bytes::Bytes;
use sluice_storage::{AbortedTxn, BatchHeader, StorageError, TimestampType};

use super::HostError;
use super::StopFlag;
use super::remote::{FetchError, Peers};
use crate::cluster::PeerConnections;
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

/// One committed record borrowed from the reader's buffer, for [`CommittedReader::visit_batch`]:
/// no allocation and no reference counting per record or field.
#[derive(Debug, Clone, Copy)]
pub struct RecordView<'a> {
    pub offset: i64,
    /// Milliseconds since the epoch (the batch's LogAppendTime when the topic uses it).
    pub timestamp_ms: i64,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    body: &'a [u8],
    headers: &'a [HeaderSpan],
}

impl<'a> RecordView<'a> {
    /// The headers in record order (keys may repeat, as Kafka allows), as raw key and value bytes.
    pub fn headers(&self) -> impl ExactSizeIterator<Item = (&'a [u8], Option<&'a [u8]>)> + 'a {
        let body = self.body;
        self.headers.iter().map(move |h| (&body[h.key.range()], h.value.get(body)))
    }
}

/// What [`CommittedReader::visit_batch`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Visited {
    /// Records handed to the visitor.
    pub records: usize,
    /// As [`ReadBatch::next_offset`].
    pub next_offset: i64,
}

/// Where a field lies in a batch's record bytes; `NULL` for a null key, value or header value.
#[derive(Debug, Clone, Copy)]
struct Span {
    start: u32,
    len: u32,
}

impl Span {
    const NULL: Span = Span { start: u32::MAX, len: 0 };

    fn range(self) -> std::ops::Range<usize> {
        self.start as usize..self.start as usize + self.len as usize
    }

    fn get(self, body: &[u8]) -> Option<&[u8]> {
        (self.start != u32::MAX).then(|| &body[self.range()])
    }

    fn slice(self, body: &Bytes) -> Option<Bytes> {
        (self.start != u32::MAX).then(|| body.slice(self.range()))
    }
}

#[derive(Debug, Clone, Copy)]
struct HeaderSpan {
    key: Span,
    value: Span,
}

/// One decoded record: its fields as spans of the batch's record bytes, its headers as a run of
/// the reader's header spans.
#[derive(Debug, Clone, Copy)]
struct RecordSpans {
    offset: i64,
    timestamp_ms: i64,
    key: Span,
    value: Span,
    headers: (u32, u32),
}

/// A batch's decoded records, kept between calls so that steady reading allocates nothing.
#[derive(Debug, Default)]
struct Scratch {
    records: Vec<RecordSpans>,
    headers: Vec<HeaderSpan>,
}

impl Scratch {
    /// Entries kept between batches; a batch of many tiny records may need more, once.
    const KEEP: usize = 1 << 16;

    fn clear(&mut self) {
        self.records.clear();
        self.headers.clear();
        if self.records.capacity() > Self::KEEP {
            self.records.shrink_to(Self::KEEP);
        }
        if self.headers.capacity() > Self::KEEP {
            self.headers.shrink_to(Self::KEEP);
        }
    }
}

pub struct CommittedReader {
    source: Source,
    position: i64,
    limits: ReaderLimits,
    runtime: tokio::runtime::Handle,
    scratch: Scratch,
}

/// Where the stored batches come from: this broker's copy (it leads the partition, or led it when
/// the reader was made: what lies below the high watermark is committed on every replica), or, in a
/// cluster, the leader over the network — a read_committed Fetch, decoded the same way.
enum Source {
    Local(Arc<Partition>),
    Remote(Box<RemoteSource>),
}

struct RemoteSource {
    peers: Arc<Peers>,
    /// This reader's own connections (a long poll must not hold up the shared ones).
    connections: PeerConnections,
    stop: StopFlag,
    topic: String,
    index: i32,
    /// The leader's last stable offset in its latest answer.
    last_stable: i64,
    /// A long poll's answer (`wait_for_records`), kept for the read at its offset.
    buffered: Option<(i64, super::remote::Fetched)>,
}

enum ReadFailure {
    OutOfRange { log_start: i64 },
    Failed(HostError),
}

impl RemoteSource {
    fn fetch(&mut self, position: i64, max_bytes: usize, wait_ms: i32) -> Result<super::remote::Fetched, ReadFailure> {
        let fetched = match self.buffered.take() {
            Some((at, fetched)) if at == position => fetched,
            _ => self.peers.fetch(&self.connections, &self.stop, &self.topic, self.index, position, max_bytes, wait_ms).map_err(
                |e| match e {
                    FetchError::OutOfRange { log_start } => ReadFailure::OutOfRange { log_start },
                    FetchError::Failed(error) => ReadFailure::Failed(error),
                },
            )?,
        };
        self.last_stable = fetched.last_stable_offset;
        Ok(fetched)
    }
}

/// Kafka's Fetch names each aborted transaction by producer and first offset only; a consumer drops
/// that producer's transactional batches from there to its abort marker. The same spans as the
/// local log's index gives them: each ends at the producer's first control batch at or after its
/// start in `records`, or past them.
fn aborted_spans(aborted: &[(i64, i64)], records: &Bytes) -> Vec<AbortedTxn> {
    let mut markers: Vec<(i64, i64)> = Vec::new();
    let mut at = 0usize;
    while let Some(header) = records.get(at..).and_then(BatchHeader::parse) {
        let size = header.total_size();
        if size <= 12 || at + size > records.len() {
            break;
        }
        if header.is_control() {
            markers.push((header.producer_id, header.base_offset));
        }
        at += size;
    }
    aborted
        .iter()
        .map(|&(producer_id, first_offset)| AbortedTxn {
            producer_id,
            first_offset,
            last_offset: markers
                .iter()
                .find(|&&(p, offset)| p == producer_id && offset >= first_offset)
                .map_or(i64::MAX, |&(_, offset)| offset),
        })
        .collect()
}

impl CommittedReader {
    pub(super) fn new(partition: Arc<Partition>, position: i64, limits: ReaderLimits, runtime: tokio::runtime::Handle) -> CommittedReader {
        CommittedReader { source: Source::Local(partition), position, limits, runtime, scratch: Scratch::default() }
    }

    /// A reader of a partition another broker leads, through `peers` (its fetches give up retrying
    /// once `stop` is raised).
    pub(super) fn remote(
        peers: Arc<Peers>,
        stop: StopFlag,
        topic: &str,
        index: i32,
        position: i64,
        limits: ReaderLimits,
        runtime: tokio::runtime::Handle,
    ) -> CommittedReader {
        let connections = peers.fetch_connections();
        let remote = RemoteSource { peers, connections, stop, topic: topic.to_string(), index, last_stable: position, buffered: None };
        CommittedReader { source: Source::Remote(Box::new(remote)), position, limits, runtime, scratch: Scratch::default() }
    }

    pub fn with_limits(mut self, limits: ReaderLimits) -> CommittedReader {
        self.limits = limits;
        self
    }

    pub fn topic(&self) -> &str {
        match &self.source {
            Source::Local(partition) => partition.topic.as_str(),
            Source::Remote(remote) => &remote.topic,
        }
    }

    pub fn partition(&self) -> i32 {
        match &self.source {
            Source::Local(partition) => partition.index,
            Source::Remote(remote) => remote.index,
        }
    }

    /// The next offset to read.
    pub fn position(&self) -> i64 {
        self.position
    }

    /// Moves the reader (after a failed commit, to re-read from the committed position).
    pub fn seek(&mut self, offset: i64) {
        self.position = offset;
    }

    /// The partition's last stable offset: this broker's, or the leader's in its latest answer.
    pub fn last_stable_offset(&self) -> i64 {
        match &self.source {
            Source::Local(partition) => partition.last_stable_offset(),
            Source::Remote(remote) => remote.last_stable,
        }
    }

    /// Committed records not yet read.
    pub fn lag(&self) -> i64 {
        (self.last_stable_offset() - self.position).max(0)
    }

    /// Reads up to `max_records` committed records at or after the position and moves past them.
    /// An empty batch with `next_offset` above the old position means only markers or aborted
    /// records were there; an empty batch at the same position means nothing is committed yet.
    /// The records' fields are slices of the stored (or decompressed) batch. Blocking file I/O.
    pub fn next_batch(&mut self, max_records: usize) -> Result<ReadBatch, HostError> {
        let mut records = Vec::new();
        let visited = self.read(max_records, |body, record, headers| {
            records.push(ConsumedRecord {
                offset: record.offset,
                timestamp_ms: record.timestamp_ms,
                key: record.key.slice(body),
                value: record.value.slice(body),
                headers: headers
                    .iter()
                    .map(|h| (String::from_utf8_lossy(&body[h.key.range()]).into_owned(), h.value.slice(body)))
                    .collect(),
            })
        })?;
        Ok(ReadBatch { records, next_offset: visited.next_offset })
    }

    /// As [`next_batch`](Self::next_batch), but hands each record to `visit` as a borrowed view
    /// instead of building owned records: for a runtime that copies the fields somewhere anyway
    /// (into a Wasm guest), this saves an allocation or two atomic operations per field.
    pub fn visit_batch(&mut self, max_records: usize, mut visit: impl FnMut(RecordView<'_>)) -> Result<Visited, HostError> {
        self.read(max_records, |body, record, headers| {
            visit(RecordView {
                offset: record.offset,
                timestamp_ms: record.timestamp_ms,
                key: record.key.get(body),
                value: record.value.get(body),
                body,
                headers,
            })
        })
    }

    fn read(&mut self, max_records: usize, mut emit: impl FnMut(&Bytes, &RecordSpans, &[HeaderSpan])) -> Result<Visited, HostError> {
        let position = self.position;
        let max_bytes = self.limits.read_bytes_max;
        let read = match &mut self.source {
            Source::Local(partition) => match partition.read_isolated(position, max_bytes, true, true) {
                Ok(read) => Ok((read.read.bytes, read.aborted.unwrap_or_default())),
                Err(StorageError::OffsetOutOfRange { start, .. }) if position < start => Err(ReadFailure::OutOfRange { log_start: start }),
                Err(error) => Err(ReadFailure::Failed(HostError::Storage(format!(
                    "reading {}-{}: {error}",
                    partition.topic.as_str(),
                    partition.index
                )))),
            },
            Source::Remote(remote) => remote.fetch(position, max_bytes, 0).map(|f| {
                let aborted = aborted_spans(&f.aborted, &f.records);
                (f.records, aborted)
            }),
        };
        let (mut bytes, aborted) = match read {
            Ok(read) => read,
            Err(ReadFailure::OutOfRange { log_start }) => {
                return Err(HostError::OffsetOutOfRange {
                    topic: self.topic().to_string(),
                    partition: self.partition(),
                    offset: position,
                    log_start,
                });
            }
            Err(ReadFailure::Failed(error)) => return Err(error),
        };
        let mut visited = Visited { records: 0, next_offset: position };
        while visited.records < max_records {
            let Some(header) = BatchHeader::parse(&bytes) else { break };
            let size = header.total_size();
            if size > bytes.len() {
                break;
            }
            let stored = bytes.split_to(size);
            let batch_end = header.last_offset() + 1;
            if header.is_control() || batch_end <= position {
                visited.next_offset = visited.next_offset.max(batch_end);
                continue;
            }
            if header.is_transactional() && is_aborted(&aborted, header.producer_id, header.base_offset) {
                visited.next_offset = visited.next_offset.max(batch_end);
                continue;
            }
            self.scratch.clear();
            // The whole batch is decoded before any of it is handed out: a batch is good or bad as a
            // whole.
            let body = match decode_records(&header, stored, self.limits.decompressed_batch_bytes_max, &mut self.scratch) {
                Ok(body) => body,
                Err(reason) => {
                    // Records of this read before the bad batch are still good: hand them out first,
                    // and report the batch on the next call, which starts at it.
                    if visited.records > 0 {
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
            };
            for record in &self.scratch.records {
                if record.offset < position {
                    continue;
                }
                if visited.records >= max_records {
                    break;
                }
                let (first, count) = record.headers;
                emit(&body, record, &self.scratch.headers[first as usize..(first + count) as usize]);
                visited.records += 1;
                visited.next_offset = record.offset + 1;
            }
            if visited.records >= max_records {
                break;
            }
            visited.next_offset = visited.next_offset.max(batch_end);
        }
        self.scratch.clear();
        self.position = visited.next_offset;
        Ok(visited)
    }

    /// Waits up to `timeout` for committed records past the position (returns at once if there are
    /// some). Blocking: call from the runtime's own thread, not from an async task. A remote reader
    /// long-polls the leader and keeps its answer for the next read; a failure here is left for that
    /// read to report.
    pub fn wait_for_records(&mut self, timeout: Duration) {
        let position = self.position;
        let max_bytes = self.limits.read_bytes_max;
        match &mut self.source {
            Source::Local(partition) => {
                let mut watch = partition.watch_high_watermark();
                watch.borrow_and_update();
                if partition.last_stable_offset() > position {
                    return;
                }
                let _ = self.runtime.block_on(async { tokio::time::timeout(timeout, watch.changed()).await });
            }
            Source::Remote(remote) => {
                if remote.buffered.as_ref().is_some_and(|(at, f)| *at == position && !f.records.is_empty()) {
                    return;
                }
                let wait_ms = timeout.as_millis().min(i32::MAX as u128) as i32;
                if let Ok(fetched) = remote.fetch(position, max_bytes, wait_ms) {
                    remote.buffered = Some((position, fetched));
                }
            }
        }
    }
}

/// Records fetched from another cluster, decoded by [`decode_fetched`].
#[derive(Debug, Default)]
pub struct FetchedRecords {
    pub records: Vec<ConsumedRecord>,
    /// Past every whole batch looked at (markers and aborted records included): where the next
    /// fetch starts. A partial batch at the end is left for that fetch.
    pub next_offset: i64,
}

/// Decodes a read_committed Fetch answer from another Kafka-protocol cluster the way a consumer
/// does: whole batches only (a partial one at the end is left for the next fetch), each checked
/// (framing, magic 2, CRC-32C) before anything is decoded, control batches dropped, the batches of
/// the `aborted` transactions (producer id, first offset: the answer's list) dropped, records
/// before `from_offset` dropped, and decompression bounded by
/// `limits.decompressed_batch_bytes_max`. A batch that fails any check fails the whole answer:
/// the source's bytes are not this broker's to guess at.
pub fn decode_fetched(data: &Bytes, aborted: &[(i64, i64)], from_offset: i64, limits: &ReaderLimits) -> Result<FetchedRecords, HostError> {
    // The whole batches at the front.
    let mut whole = 0usize;
    while let Some(header) = BatchHeader::parse(&data[whole..]) {
        let size = header.total_size();
        if header.batch_length < 0 || data.len() - whole < size {
            break;
        }
        whole += size;
    }
    let headers = sluice_storage::validate_stored_batches(&data[..whole], u32::MAX)
        .map_err(|error| HostError::Refused { action: "decoding fetched records".into(), reason: error.to_string() })?;
    let mut aborted: Vec<(i64, i64)> = aborted.to_vec();
    aborted.sort_by_key(|&(_, first)| first);
    let mut pending = aborted.into_iter().peekable();
    let mut aborting: Vec<i64> = Vec::new();
    let mut out = FetchedRecords { records: Vec::new(), next_offset: from_offset };
    let mut scratch = Scratch::default();
    let mut at = 0usize;
    let mut decoded_bytes = 0usize;
    for header in headers {
        let stored = data.slice(at..at + header.total_size());
        at += header.total_size();
        let batch_end = header.last_offset() + 1;
        // One answer decodes to at most about one batch's bound: the rest waits for the next fetch.
        if decoded_bytes >= limits.decompressed_batch_bytes_max {
            break;
        }
        out.next_offset = out.next_offset.max(batch_end);
        // Transactions aborted from this batch on: their producers' batches are dropped until
        // their marker.
        while let Some(&(producer_id, _)) = pending.peek().filter(|&&(_, first)| first <= header.last_offset()) {
            aborting.push(producer_id);
            pending.next();
        }
        if header.is_control() {
            aborting.retain(|&p| p != header.producer_id);
            continue;
        }
        if batch_end <= from_offset || (header.is_transactional() && aborting.contains(&header.producer_id)) {
            continue;
        }
        scratch.clear();
        let body =
            decode_records(&header, stored, limits.decompressed_batch_bytes_max, &mut scratch).map_err(|reason| HostError::Refused {
                action: format!("decoding the fetched batch at offset {}", header.base_offset),
                reason: reason.to_string(),
            })?;
        decoded_bytes += body.len();
        for record in scratch.records.iter().filter(|r| r.offset >= from_offset) {
            let (first, count) = record.headers;
            out.records.push(ConsumedRecord {
                offset: record.offset,
                timestamp_ms: record.timestamp_ms,
                key: record.key.slice(&body),
                value: record.value.slice(&body),
                headers: scratch.headers[first as usize..(first + count) as usize]
                    .iter()
                    .map(|h| (String::from_utf8_lossy(&body[h.key.range()]).into_owned(), h.value.slice(&body)))
                    .collect(),
            });
        }
    }
    Ok(out)
}

fn is_aborted(aborted: &[AbortedTxn], producer_id: i64, offset: i64) -> bool {
    aborted.iter().any(|a| a.producer_id == producer_id && offset >= a.first_offset && offset < a.last_offset)
}

/// Decodes one stored batch's records into `out` as spans of the returned record bytes. The batch
/// passed framing and CRC checks when it was appended; what can still be wrong is inside
/// compressed data, so every length is checked.
fn decode_records(header: &BatchHeader, stored: Bytes, decompressed_max: usize, out: &mut Scratch) -> Result<Bytes, DecodeError> {
    const RECORDS_START: usize = 61;
    let payload = stored.slice(RECORDS_START.min(stored.len())..);
    let body = match header.compression() {
        0 => payload,
        codec => decompress(codec, &payload, decompressed_max)?,
    };
    // Spans are u32 (u32::MAX marks null): a stored batch is far below 4 GiB, and so is the
    // decompression bound.
    if body.len() >= u32::MAX as usize {
        return Err(DecodeError::TooLarge { codec: "record", max: u32::MAX as usize });
    }
    let log_append_time = header.timestamp_type() == TimestampType::LogAppendTime;
    let count = usize::try_from(header.record_count).map_err(|_| DecodeError::NegativeCount(header.record_count))?;
    // Every record takes at least 7 bytes: preallocate from what is there, not from the header.
    out.records.reserve(count.min(body.len() / 7));
    let mut c = Cursor { bytes: &body, at: 0, record: 0 };
    for i in 0..count {
        c.record = i;
        let length = c.varint()?;
        let length = usize::try_from(length).map_err(|_| DecodeError::Negative { record: i, what: "length" })?;
        let end = c.at.checked_add(length).filter(|&end| end <= body.len()).ok_or(DecodeError::Truncated { record: i })?;
        let mut r = Cursor { bytes: &body[..end], at: c.at, record: i };
        c.at = end;
        let _attributes = r.u8()?;
        let timestamp_delta = r.varlong()?;
        let offset_delta = r.varint()?;
        let key = r.nullable_bytes()?;
        let value = r.nullable_bytes()?;
        let header_count = usize::try_from(r.varint()?).map_err(|_| DecodeError::Negative { record: i, what: "header count" })?;
        let first = out.headers.len();
        // Each header takes at least 2 bytes.
        out.headers.reserve(header_count.min(r.remaining() / 2));
        for _ in 0..header_count {
            let key = r.nullable_bytes()?;
            if key.start == u32::MAX {
                return Err(DecodeError::HeaderWithoutKey { record: i });
            }
            let value = r.nullable_bytes()?;
            out.headers.push(HeaderSpan { key, value });
        }
        out.records.push(RecordSpans {
            offset: header.base_offset + i64::from(offset_delta),
            timestamp_ms: if log_append_time { header.max_timestamp } else { header.base_timestamp.wrapping_add(timestamp_delta) },
            key,
            value,
            // Both fit: header spans are bounded by the body's length.
            headers: (first as u32, header_count as u32),
        });
    }
    Ok(body)
}

/// Reads one record's fields from a batch's record bytes, up to the end of the record.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
    record: usize,
}

impl Cursor<'_> {
    fn short(&self) -> DecodeError {
        DecodeError::Truncated { record: self.record }
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.at
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        let byte = *self.bytes.get(self.at).ok_or_else(|| self.short())?;
        self.at += 1;
        Ok(byte)
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

    fn nullable_bytes(&mut self) -> Result<Span, DecodeError> {
        match self.varint()? {
            -1 => Ok(Span::NULL),
            n if n < 0 => Err(DecodeError::Negative { record: self.record, what: "length" }),
            n => {
                let len = n as usize;
                if len > self.remaining() {
                    return Err(self.short());
                }
                // `at` and `len` are within the body, which fits in u32.
                let span = Span { start: self.at as u32, len: len as u32 };
                self.at += len;
                Ok(span)
            }
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

    /// A one-record transactional batch of `producer_id` at `base_offset`; a control batch (a
    /// marker, as far as the headers go) when `control`.
    fn batch_at(producer_id: i64, base_offset: i64, control: bool) -> Vec<u8> {
        use crate::record_batch::{BatchBuilder, BatchProducer, RecordRef};
        let mut builder = BatchBuilder::new(BatchProducer { producer_id, epoch: 0, base_sequence: 0, transactional: true });
        builder.push(&RecordRef { key: None, value: Some(b"v"), headers: &[], timestamp_ms: 0 });
        let mut bytes = builder.finish().to_vec();
        bytes[0..8].copy_from_slice(&base_offset.to_be_bytes());
        if control {
            // Attributes sit after base offset, length, leader epoch, magic and CRC.
            let attributes = i16::from_be_bytes([bytes[21], bytes[22]]) | 0x20;
            bytes[21..23].copy_from_slice(&attributes.to_be_bytes());
        }
        bytes
    }

    #[test]
    fn a_fetched_aborted_transaction_ends_at_its_producers_marker() {
        let mut records = Vec::new();
        for (producer, offset, control) in [(7, 0, false), (8, 1, false), (8, 2, true), (7, 3, false), (7, 4, true), (8, 5, false)] {
            records.extend(batch_at(producer, offset, control));
        }
        let records = Bytes::from(records);
        // Producer 8's marker at 2 is a commit of an earlier transaction as far as the list goes: the
        // span of its aborted transaction from 5 has no marker in this answer and runs past it.
        let spans = aborted_spans(&[(7, 0), (8, 5)], &records);
        assert_eq!(
            spans,
            vec![
                AbortedTxn { producer_id: 7, first_offset: 0, last_offset: 4 },
                AbortedTxn { producer_id: 8, first_offset: 5, last_offset: i64::MAX },
            ]
        );
        assert!(is_aborted(&spans, 7, 3) && !is_aborted(&spans, 8, 1) && is_aborted(&spans, 8, 5));
        // A partial batch at the end is not looked into.
        let cut = records.slice(..records.len() - 3);
        assert_eq!(aborted_spans(&[(8, 5)], &cut)[0].last_offset, i64::MAX);
    }
}
