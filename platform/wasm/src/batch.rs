//! The one-buffer-per-batch encoding of `interface batch-transformer` (`sdk/wit/plugin.wit` has the
//! layout): [`InputBatch`] is what the host sends, [`Output`] what it reads back. One buffer crosses
//! the boundary each way instead of one list element, key, value and header each, and the output's
//! keys and values stay slices of the one buffer the guest returned until the broker encodes them.

use std::ops::Range;

use bytes::Bytes;

use crate::limits::{OUTPUT_HEADERS_PER_RECORD_MAX, OUTPUT_RECORD_BYTES_MAX, OUTPUT_RECORDS_PER_CALL_MAX};
use crate::{Header, InputRecord, OutputRecord, PluginError};

/// Bytes before an input record's key: offset, timestamp, key and value lengths, header count.
const INPUT_FIXED: usize = 8 + 8 + 4 + 4 + 4;
/// Bytes before an output record's key: output, timestamp, key and value lengths, header count.
const OUTPUT_FIXED: usize = 4 + 8 + 4 + 4 + 4;
/// Bytes of a header before and between its key and value: the two lengths.
const HEADER_FIXED: usize = 4 + 4;

/// Input records of one partition, encoded back to back, with where each starts so that any range
/// of them can be sent on its own (the error policy's isolation calls sub-ranges).
#[derive(Clone, Debug, Default)]
pub struct InputBatch {
    buf: Vec<u8>,
    starts: Vec<usize>,
    partition: i32,
}

impl InputBatch {
    /// An empty batch of records from `partition`.
    pub fn new(partition: i32) -> InputBatch {
        InputBatch { buf: Vec::new(), starts: Vec::new(), partition }
    }

    /// Append a record. A header key that is not UTF-8 is stored with U+FFFD for the bad bytes, and
    /// a null header value as an empty one, as for `InputRecord`.
    pub fn push<'a>(
        &mut self,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: impl IntoIterator<Item = (&'a [u8], Option<&'a [u8]>)>,
        timestamp_ms: i64,
        offset: i64,
    ) {
        self.starts.push(self.buf.len());
        let buf = &mut self.buf;
        buf.reserve(INPUT_FIXED + key.map_or(0, <[u8]>::len) + value.map_or(0, <[u8]>::len));
        buf.extend_from_slice(&offset.to_le_bytes());
        buf.extend_from_slice(&timestamp_ms.to_le_bytes());
        buf.extend_from_slice(&len_or_none(key).to_le_bytes());
        buf.extend_from_slice(&len_or_none(value).to_le_bytes());
        let count_at = buf.len();
        buf.extend_from_slice(&0u32.to_le_bytes());
        buf.extend_from_slice(key.unwrap_or_default());
        buf.extend_from_slice(value.unwrap_or_default());
        let mut count = 0u32;
        for (key, value) in headers {
            match std::str::from_utf8(key) {
                Ok(key) => put_bytes(buf, key.as_bytes()),
                Err(_) => put_bytes(buf, String::from_utf8_lossy(key).as_bytes()),
            }
            put_bytes(buf, value.unwrap_or_default());
            count += 1;
        }
        buf[count_at..count_at + 4].copy_from_slice(&count.to_le_bytes());
    }

    /// Append an [`InputRecord`] (its partition is the batch's).
    pub fn push_record(&mut self, record: &InputRecord) {
        let headers = record.headers.iter().map(|h| (h.key.as_bytes(), Some(h.value.as_slice())));
        self.push(record.key.as_deref(), record.value.as_deref(), headers, record.timestamp_ms, record.offset);
    }

    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// Records in the batch.
    pub fn len(&self) -> usize {
        self.starts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }

    /// Encoded bytes in the batch.
    pub fn encoded_len(&self) -> usize {
        self.buf.len()
    }

    /// Empty it, keeping its memory for the next batch — up to [`InputBatch::KEEP_BYTES`]: the
    /// buffer of an unusually large batch (compressed input decompresses to up to 64 MiB) is freed.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.starts.clear();
        if self.buf.capacity() > Self::KEEP_BYTES {
            self.buf = Vec::new();
        }
    }

    /// Encoded bytes an emptied batch keeps allocated for the next one.
    pub const KEEP_BYTES: usize = 8 << 20;

    /// The records in `range` (indexes into the batch), encoded; panics outside `0..len()`, like
    /// slicing.
    pub fn slice(&self, range: Range<usize>) -> InputSlice<'_> {
        let _in_bounds = &self.starts[range.clone()];
        let start = self.starts.get(range.start).copied().unwrap_or(self.buf.len());
        let end = self.starts.get(range.end).copied().unwrap_or(self.buf.len());
        InputSlice { bytes: &self.buf[start..end], count: range.len(), partition: self.partition }
    }

    /// The whole batch.
    pub fn all(&self) -> InputSlice<'_> {
        self.slice(0..self.len())
    }

    /// Record `idx` decoded (for a dead letter, or a transform without the batch export).
    pub fn record(&self, idx: usize) -> InputRecord {
        let slice = self.slice(idx..idx + 1);
        decode_input(slice.bytes, self.partition).expect("an InputBatch holds only what push encoded")
    }
}

/// Records of an [`InputBatch`], as sent to the guest.
#[derive(Clone, Copy, Debug)]
pub struct InputSlice<'a> {
    pub(crate) bytes: &'a [u8],
    pub(crate) count: usize,
    pub(crate) partition: i32,
}

impl InputSlice<'_> {
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The records as [`InputRecord`]s, for a transform that exports only `process`.
    pub(crate) fn decode(&self) -> Vec<InputRecord> {
        let mut records = Vec::with_capacity(self.count);
        let mut rest = self.bytes;
        while !rest.is_empty() {
            let (record, used) = decode_one_input(rest, self.partition).expect("an InputBatch holds only what push encoded");
            records.push(record);
            rest = &rest[used..];
        }
        records
    }
}

/// A record a transform wrote: key, value and header values are slices of the buffer the guest
/// returned (no copy per record), ready to hand to the broker's batch encoder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Output {
    /// Index into the deployment's output topics.
    pub output: u32,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Bytes)>,
    /// -1: the broker sets it.
    pub timestamp_ms: i64,
}

impl From<OutputRecord> for Output {
    fn from(record: OutputRecord) -> Output {
        Output {
            output: record.output,
            key: record.key.map(Bytes::from),
            value: record.value.map(Bytes::from),
            headers: record.headers.into_iter().map(|h| (h.key, Bytes::from(h.value))).collect(),
            timestamp_ms: record.timestamp_ms,
        }
    }
}

/// Reads the guest's output buffer: every length checked against what is left before it is used,
/// every record against the limits `process`'s output has, and the output index against the
/// deployment's `outputs`. One bad record refuses the whole output.
pub(crate) fn decode_output(buf: Vec<u8>, outputs: usize) -> Result<Vec<Output>, PluginError> {
    let buf = Bytes::from(buf);
    let mut records = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        let idx = records.len();
        if idx >= OUTPUT_RECORDS_PER_CALL_MAX {
            return Err(PluginError::MalformedOutput(format!(
                "more than {OUTPUT_RECORDS_PER_CALL_MAX} records from one batch (OUTPUT_RECORDS_PER_CALL_MAX)"
            )));
        }
        let bad = |what: &str| PluginError::MalformedOutput(format!("output record {idx} (at byte {at}): {what}"));
        let mut reader = Reader { buf: &buf, at };
        let fixed = reader.take(OUTPUT_FIXED).ok_or_else(|| bad("the buffer ends inside the record's fixed fields"))?;
        let output = u32::from_le_bytes(fixed[0..4].try_into().unwrap_or_default());
        let timestamp_ms = i64::from_le_bytes(fixed[4..12].try_into().unwrap_or_default());
        let key_len = i32::from_le_bytes(fixed[12..16].try_into().unwrap_or_default());
        let value_len = i32::from_le_bytes(fixed[16..20].try_into().unwrap_or_default());
        let header_count = u32::from_le_bytes(fixed[20..24].try_into().unwrap_or_default()) as usize;
        if output as usize >= outputs {
            return Err(PluginError::MalformedOutput(format!(
                "record {idx} names output {output} but the transform has {outputs} output topics"
            )));
        }
        if header_count > OUTPUT_HEADERS_PER_RECORD_MAX {
            return Err(PluginError::MalformedOutput(format!(
                "record {idx} has {header_count} headers; the limit is {OUTPUT_HEADERS_PER_RECORD_MAX}"
            )));
        }
        let key = reader.optional(key_len).ok_or_else(|| bad("bad key length"))?;
        let value = reader.optional(value_len).ok_or_else(|| bad("bad value length"))?;
        let mut size = key.as_ref().map_or(0, Range::len) + value.as_ref().map_or(0, Range::len);
        let mut headers = Vec::with_capacity(header_count.min(reader.left() / HEADER_FIXED));
        for _ in 0..header_count {
            let key = reader.sized().ok_or_else(|| bad("bad header key length"))?;
            let header_value = reader.sized().ok_or_else(|| bad("bad header value length"))?;
            size += key.len() + header_value.len();
            let key = std::str::from_utf8(&buf[key]).map_err(|_| bad("a header key is not UTF-8"))?.to_owned();
            headers.push((key, buf.slice(header_value)));
        }
        if size > OUTPUT_RECORD_BYTES_MAX {
            return Err(PluginError::MalformedOutput(format!(
                "record {idx} is {size} bytes (key, value and headers); the limit is {OUTPUT_RECORD_BYTES_MAX}"
            )));
        }
        records.push(Output {
            output,
            key: key.map(|range| buf.slice(range)),
            value: value.map(|range| buf.slice(range)),
            headers,
            timestamp_ms,
        });
        at = reader.at;
    }
    Ok(records)
}

/// A cursor over a buffer from outside: every read says `None` instead of running past the end.
struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn left(&self) -> usize {
        self.buf.len() - self.at
    }

    fn take(&mut self, len: usize) -> Option<&'a [u8]> {
        let bytes = self.buf.get(self.at..self.at.checked_add(len)?)?;
        self.at += len;
        Some(bytes)
    }

    fn range(&mut self, len: usize) -> Option<Range<usize>> {
        let start = self.at;
        self.take(len).map(|_| start..start + len)
    }

    /// `len` bytes, or none for -1; any other negative length is an error.
    fn optional(&mut self, len: i32) -> Option<Option<Range<usize>>> {
        match len {
            -1 => Some(None),
            len if len >= 0 => self.range(len as usize).map(Some),
            _ => None,
        }
    }

    /// A `u32` length, then that many bytes.
    fn sized(&mut self) -> Option<Range<usize>> {
        let len = u32::from_le_bytes(self.take(4)?.try_into().ok()?) as usize;
        self.range(len)
    }
}

fn len_or_none(bytes: Option<&[u8]>) -> i32 {
    // Record parts come from stored batches whose sizes are far below 2 GiB.
    bytes.map_or(-1, |bytes| i32::try_from(bytes.len()).unwrap_or(i32::MAX))
}

fn put_bytes(buf: &mut Vec<u8>, bytes: &[u8]) {
    buf.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    buf.extend_from_slice(bytes);
}

fn decode_input(bytes: &[u8], partition: i32) -> Option<InputRecord> {
    decode_one_input(bytes, partition).map(|(record, _)| record)
}

/// One input record and the bytes it took.
fn decode_one_input(bytes: &[u8], partition: i32) -> Option<(InputRecord, usize)> {
    let mut reader = Reader { buf: bytes, at: 0 };
    let fixed = reader.take(INPUT_FIXED)?;
    let offset = i64::from_le_bytes(fixed[0..8].try_into().ok()?);
    let timestamp_ms = i64::from_le_bytes(fixed[8..16].try_into().ok()?);
    let key_len = i32::from_le_bytes(fixed[16..20].try_into().ok()?);
    let value_len = i32::from_le_bytes(fixed[20..24].try_into().ok()?);
    let header_count = u32::from_le_bytes(fixed[24..28].try_into().ok()?) as usize;
    let key = reader.optional(key_len)?.map(|range| bytes[range].to_vec());
    let value = reader.optional(value_len)?.map(|range| bytes[range].to_vec());
    let mut headers = Vec::with_capacity(header_count.min(reader.left() / HEADER_FIXED));
    for _ in 0..header_count {
        let key = reader.sized()?;
        let value = reader.sized()?;
        headers.push(Header { key: String::from_utf8_lossy(&bytes[key]).into_owned(), value: bytes[value].to_vec() });
    }
    Some((InputRecord { key, value, headers, timestamp_ms, partition, offset }, reader.at))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(offset: i64, key: Option<&str>, value: Option<&str>, headers: &[(&str, &str)]) -> InputRecord {
        InputRecord {
            key: key.map(|k| k.as_bytes().to_vec()),
            value: value.map(|v| v.as_bytes().to_vec()),
            headers: headers.iter().map(|(k, v)| Header { key: (*k).to_owned(), value: v.as_bytes().to_vec() }).collect(),
            timestamp_ms: 1_000 + offset,
            partition: 3,
            offset,
        }
    }

    fn encode_output(records: &[Output]) -> Vec<u8> {
        let mut buf = Vec::new();
        for r in records {
            buf.extend_from_slice(&r.output.to_le_bytes());
            buf.extend_from_slice(&r.timestamp_ms.to_le_bytes());
            buf.extend_from_slice(&len_or_none(r.key.as_deref()).to_le_bytes());
            buf.extend_from_slice(&len_or_none(r.value.as_deref()).to_le_bytes());
            buf.extend_from_slice(&(r.headers.len() as u32).to_le_bytes());
            buf.extend_from_slice(r.key.as_deref().unwrap_or_default());
            buf.extend_from_slice(r.value.as_deref().unwrap_or_default());
            for (k, v) in &r.headers {
                put_bytes(&mut buf, k.as_bytes());
                put_bytes(&mut buf, v);
            }
        }
        buf
    }

    #[test]
    fn input_records_round_trip_and_slice_by_index() {
        let records =
            vec![input(7, Some("k"), Some("v"), &[("h", "1"), ("", "")]), input(8, None, Some(""), &[]), input(9, Some(""), None, &[])];
        let mut batch = InputBatch::new(3);
        for record in &records {
            batch.push_record(record);
        }
        assert_eq!(batch.len(), 3);
        assert_eq!(batch.all().decode(), records);
        assert_eq!(batch.slice(1..3).decode(), records[1..3]);
        assert_eq!(batch.slice(1..1).decode(), vec![]);
        assert_eq!(batch.slice(3..3).len(), 0);
        assert_eq!(batch.record(2), records[2]);
        batch.clear();
        assert!(batch.is_empty());
        assert_eq!(batch.encoded_len(), 0);
        assert!(batch.buf.capacity() > 0, "a small batch's memory is kept");
        batch.push(None, Some(&vec![0; InputBatch::KEEP_BYTES + 1]), [], 0, 0);
        batch.clear();
        assert_eq!(batch.buf.capacity(), 0, "a large batch's memory is not");
    }

    #[test]
    fn a_header_key_that_is_not_utf8_is_replaced_and_a_null_header_value_is_empty() {
        let mut batch = InputBatch::new(0);
        batch.push(None, None, [(&b"a\xffb"[..], None)], 0, 0);
        let record = batch.record(0);
        assert_eq!(record.headers, vec![Header { key: "a\u{fffd}b".into(), value: vec![] }]);
    }

    #[test]
    fn output_round_trips_with_slices_of_one_buffer() {
        let records = vec![
            Output {
                output: 1,
                key: Some(Bytes::from_static(b"k")),
                value: None,
                headers: vec![("h".into(), Bytes::from_static(b"x"))],
                timestamp_ms: -1,
            },
            Output { output: 0, key: None, value: Some(Bytes::from_static(b"")), headers: vec![], timestamp_ms: 5 },
        ];
        assert_eq!(decode_output(encode_output(&records), 2).unwrap(), records);
        assert_eq!(decode_output(Vec::new(), 1).unwrap(), vec![]);
    }

    #[test]
    fn malformed_output_is_refused_whole() {
        let good = Output { output: 0, key: Some(Bytes::from_static(b"key")), value: None, headers: vec![], timestamp_ms: 0 };
        let buf = encode_output(&[good.clone()]);
        let refused = |buf: Vec<u8>, outputs: usize| match decode_output(buf, outputs) {
            Err(PluginError::MalformedOutput(message)) => message,
            other => panic!("expected MalformedOutput, got {other:?}"),
        };
        // Cut short anywhere.
        for cut in 1..buf.len() {
            refused(buf[..cut].to_vec(), 1);
        }
        // An output index past the deployment's outputs.
        assert!(refused(buf.clone(), 0).contains("names output 0"));
        // A key length past the end, and a negative length other than -1.
        let mut long = buf.clone();
        long[12..16].copy_from_slice(&i32::MAX.to_le_bytes());
        assert!(refused(long, 1).contains("bad key length"));
        let mut negative = buf.clone();
        negative[12..16].copy_from_slice(&(-2i32).to_le_bytes());
        assert!(refused(negative, 1).contains("bad key length"));
        // An absurd header count is refused before anything is allocated for it.
        let mut headers = buf.clone();
        headers[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(refused(headers, 1).contains("headers; the limit"));
        // A header count within the limit but past the buffer.
        let mut short = buf.clone();
        short[20..24].copy_from_slice(&3u32.to_le_bytes());
        assert!(refused(short, 1).contains("bad header key length"));
        // A header key that is not UTF-8.
        let mut bad_key = encode_output(&[Output { headers: vec![("h".into(), Bytes::new())], ..good.clone() }]);
        let at = OUTPUT_FIXED + 3 + 4;
        bad_key[at] = 0xff;
        assert!(refused(bad_key, 1).contains("not UTF-8"));
        // A record over the size limit.
        let big = Output { value: Some(Bytes::from(vec![0; OUTPUT_RECORD_BYTES_MAX])), ..good };
        assert!(refused(encode_output(&[big]), 1).contains("the limit is"));
    }
}
