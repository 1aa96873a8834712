//! The Kafka wire codec as Sluice speaks it: framing limits, request decoding, response encoding and
//! the table of API versions the broker implements.
//!
//! This crate sits between the socket and the broker's handlers. It is a pure codec: no I/O, no async,
//! no broker state. Message bodies are encoded and decoded by the `kafka-protocol` crate; what this
//! crate adds is the boundary discipline — every length that comes off the wire is checked against a
//! named limit before anything is allocated, every malformed input becomes a typed [`DecodeError`]
//! (never a panic), and only the versions in [`SUPPORTED_APIS`] are ever decoded, so the broker
//! advertises exactly what it implements.
//!
//! A decoded request is bounded by its frame: at most [`TRAILING_BYTES_MAX`] bytes may follow its body,
//! and the structure it decodes to (array elements, tagged-field entries) may take at most
//! [`DECODED_BYTES_PER_FRAME_BYTE_MAX`] bytes per frame byte, or [`DECODED_BYTES_FLOOR`] for small
//! requests. Without that, a frame of two-byte array elements decodes to 40 times its size, since
//! every element becomes an 80-byte struct.

use std::ops::Range;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::buf::{ByteBuf, DecodeBudgetExceeded};
use kafka_protocol::protocol::{Decodable, Encodable};

pub use fetch_framing::encode_fetch_framing;
pub use kafka_protocol;

pub mod fetch_framing;
pub mod partitioner;
pub mod samples;

/// Bytes of the big-endian length prefix in front of every request and response.
pub const FRAME_LENGTH_BYTES: usize = 4;

/// The fixed part of every request header: api key (i16), api version (i16), correlation id (i32).
pub const REQUEST_HEADER_FIXED_BYTES: usize = 8;

/// Kafka's default `socket.request.max.bytes` (100 MiB). The broker may lower or raise it.
pub const DEFAULT_REQUEST_BYTES_MAX: usize = 100 * 1024 * 1024;

/// Responses are built in memory; a response larger than this is an internal error, not something to
/// send. Fetch responses are bounded by `fetch.max.bytes` well below it.
pub const RESPONSE_BYTES_MAX: usize = 1024 * 1024 * 1024;

/// A request may decode to at most this many bytes of in-memory structure per byte of its frame. The
/// structure counted is what the wire bytes do not hold themselves: array elements (`size_of` each,
/// charged before any is built) and unknown tagged fields (a B-tree node each); strings and byte
/// fields are zero-copy slices of the frame. Real clients stay far below: their arrays hold topic
/// names, offsets and record batches, not bare counts.
pub const DECODED_BYTES_PER_FRAME_BYTE_MAX: usize = 8;

/// Every request may decode to this much, whatever its size: the structs of a small request (an
/// 80-byte topic entry from a 3-byte name) are bigger than 8 times their wire bytes, harmlessly.
pub const DECODED_BYTES_FLOOR: usize = 64 * 1024;

/// Bytes that may follow a request's body, ignored. Apache Kafka ignores any number; librdkafka (and
/// so kcat and confluent-kafka) sends three, `01 00 00`, after a Metadata v12 request for all topics.
/// A few are tolerated for that; more are refused ([`DecodeError::TrailingBytes`]), so a frame cannot
/// be padded to make the zero-copy slices of its decoded request pin far more memory than they hold.
pub const TRAILING_BYTES_MAX: usize = 64;

/// The most structure a request frame of `frame_bytes` may decode to.
pub fn decoded_bytes_max(frame_bytes: usize) -> usize {
    frame_bytes.saturating_mul(DECODED_BYTES_PER_FRAME_BYTE_MAX).max(DECODED_BYTES_FLOOR)
}

/// The APIs and version ranges the broker implements, in api-key order. ApiVersions advertises this
/// table verbatim and [`decode_request`] refuses anything outside it.
///
/// Upper bounds stop where a newer version would change semantics we do not implement yet: Fetch v13+
/// and Produce v13 address topics by id only, OffsetCommit v9+ / OffsetFetch v9+ belong to the KIP-848
/// consumer protocol, ListOffsets v8+ adds earliest-local / tiered timestamps. AddPartitionsToTxn v4+ is
/// broker-to-broker verification; AddOffsetsToTxn, EndTxn and TxnOffsetCommit v4+ (and EndTxn v5)
/// belong to KIP-890's transaction protocol version 2, which bumps the epoch on every commit.
/// WriteTxnMarkers is broker-to-broker (a transaction coordinator to a partition's leader); like
/// Kafka without an authorizer, the listener does not tell brokers from clients.
pub const SUPPORTED_APIS: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 9),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 7),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::OffsetCommit, 2, 8),
    (ApiKey::OffsetFetch, 1, 8),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::ListGroups, 0, 4),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::DeleteRecords, 0, 2),
    (ApiKey::InitProducerId, 0, 4),
    (ApiKey::OffsetForLeaderEpoch, 2, 4),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::AddPartitionsToTxn, 0, 3),
    (ApiKey::AddOffsetsToTxn, 0, 3),
    (ApiKey::EndTxn, 0, 3),
    (ApiKey::WriteTxnMarkers, 1, 1),
    (ApiKey::TxnOffsetCommit, 0, 3),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::ElectLeaders, 0, 2),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::AlterPartitionReassignments, 0, 1),
    (ApiKey::ListPartitionReassignments, 0, 0),
    (ApiKey::OffsetDelete, 0, 0),
    (ApiKey::DescribeCluster, 0, 1),
    (ApiKey::DescribeTransactions, 0, 0),
    (ApiKey::ListTransactions, 0, 1),
];

/// The version range the broker implements for `api_key`, if it implements that API at all.
pub fn supported_versions(api_key: ApiKey) -> Option<(i16, i16)> {
    SUPPORTED_APIS.iter().find(|(key, _, _)| *key == api_key).map(|&(_, min, max)| (min, max))
}

/// What a frame is about, read from its first eight bytes without decoding anything else. Error
/// responses need the correlation id even when the rest of the request cannot be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestMeta {
    pub api_key: i16,
    pub api_version: i16,
    pub correlation_id: i32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame length {length} is negative")]
    NegativeLength { length: i32 },
    #[error("frame length {length} is smaller than a request header ({REQUEST_HEADER_FIXED_BYTES} bytes)")]
    TooShort { length: i32 },
    #[error("frame length {length} exceeds socket.request.max.bytes ({max})")]
    TooLarge { length: i32, max: usize },
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("request of {length} bytes is shorter than a request header")]
    TooShort { length: usize },
    #[error("unknown api key {}", meta.api_key)]
    UnknownApiKey { meta: RequestMeta },
    #[error("{api_key:?} v{} is not supported (supported: v{min}..=v{max})", meta.api_version)]
    UnsupportedVersion { meta: RequestMeta, api_key: ApiKey, min: i16, max: i16 },
    #[error("malformed {api_key:?} v{} request: {reason}", meta.api_version)]
    Malformed { meta: RequestMeta, api_key: ApiKey, reason: String },
    #[error(
        "malformed {api_key:?} v{} request: {trailing} bytes follow the request body (at most {TRAILING_BYTES_MAX})",
        meta.api_version
    )]
    TrailingBytes { meta: RequestMeta, api_key: ApiKey, trailing: usize },
    #[error(
        "{api_key:?} v{} request of {frame_bytes} bytes would decode to more than {decoded_bytes_max} bytes \
         ({DECODED_BYTES_PER_FRAME_BYTE_MAX} per frame byte)",
        meta.api_version
    )]
    TooLarge { meta: RequestMeta, api_key: ApiKey, frame_bytes: usize, decoded_bytes_max: usize },
}

impl DecodeError {
    /// The request's identity, when enough bytes arrived to know it.
    pub fn meta(&self) -> Option<RequestMeta> {
        match self {
            DecodeError::TooShort { .. } => None,
            DecodeError::UnknownApiKey { meta }
            | DecodeError::UnsupportedVersion { meta, .. }
            | DecodeError::Malformed { meta, .. }
            | DecodeError::TrailingBytes { meta, .. }
            | DecodeError::TooLarge { meta, .. } => Some(*meta),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("encoding {api_key:?} v{version} response failed: {reason}")]
    Encode { api_key: ApiKey, version: i16, reason: String },
    #[error("{api_key:?} response of {size} bytes exceeds the response limit of {RESPONSE_BYTES_MAX} bytes")]
    TooLarge { api_key: ApiKey, size: usize },
}

/// Checks the 4-byte length prefix of a request frame against `request_bytes_max`.
pub fn parse_frame_length(prefix: [u8; FRAME_LENGTH_BYTES], request_bytes_max: usize) -> Result<usize, FrameError> {
    let length = i32::from_be_bytes(prefix);
    if length < 0 {
        return Err(FrameError::NegativeLength { length });
    }
    // Checked before the caller allocates a buffer of this size.
    if length as usize > request_bytes_max {
        return Err(FrameError::TooLarge { length, max: request_bytes_max });
    }
    if (length as usize) < REQUEST_HEADER_FIXED_BYTES {
        return Err(FrameError::TooShort { length });
    }
    Ok(length as usize)
}

/// Reads the api key, version and correlation id at the front of a request frame.
pub fn peek_meta(frame: &[u8]) -> Option<RequestMeta> {
    let fixed = frame.get(..REQUEST_HEADER_FIXED_BYTES)?;
    Some(RequestMeta {
        api_key: i16::from_be_bytes([fixed[0], fixed[1]]),
        api_version: i16::from_be_bytes([fixed[2], fixed[3]]),
        correlation_id: i32::from_be_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]),
    })
}

/// A request decoded at a version the broker implements.
#[derive(Debug)]
pub struct DecodedRequest {
    pub header: RequestHeader,
    pub api_key: ApiKey,
    pub version: i16,
    pub body: RequestKind,
}

/// Decodes one request frame (without its length prefix). Record batches inside Produce requests stay
/// as `Bytes` slices of `frame`: they are validated by the storage engine, not here.
///
/// The body must end at most [`TRAILING_BYTES_MAX`] bytes before the frame does
/// ([`DecodeError::TrailingBytes`]), and decoding stops with [`DecodeError::TooLarge`] before it would
/// build more than [`decoded_bytes_max`] bytes.
pub fn decode_request(frame: Bytes) -> Result<DecodedRequest, DecodeError> {
    let meta = peek_meta(&frame).ok_or(DecodeError::TooShort { length: frame.len() })?;
    let api_key = ApiKey::try_from(meta.api_key).map_err(|_| DecodeError::UnknownApiKey { meta })?;
    let Some((min, max)) = supported_versions(api_key) else {
        return Err(DecodeError::UnknownApiKey { meta });
    };
    if meta.api_version < min || meta.api_version > max {
        return Err(DecodeError::UnsupportedVersion { meta, api_key, min, max });
    }
    let frame_bytes = frame.len();
    let mut buf = BudgetedBytes::new(frame);
    let failed = |error: anyhow::Error, part: &str| {
        if error.chain().any(|cause| cause.is::<DecodeBudgetExceeded>()) {
            DecodeError::TooLarge { meta, api_key, frame_bytes, decoded_bytes_max: decoded_bytes_max(frame_bytes) }
        } else {
            DecodeError::Malformed { meta, api_key, reason: format!("{part}{error:#}") }
        }
    };
    let header_version = api_key.request_header_version(meta.api_version);
    let header = RequestHeader::decode(&mut buf, header_version).map_err(|error| failed(error, "header: "))?;
    let body = RequestKind::decode(api_key, &mut buf, meta.api_version).map_err(|error| failed(error, ""))?;
    if buf.remaining() > TRAILING_BYTES_MAX {
        return Err(DecodeError::TrailingBytes { meta, api_key, trailing: buf.remaining() });
    }
    Ok(DecodedRequest { header, api_key, version: meta.api_version, body })
}

/// A request frame being decoded, with what it may still decode to: the codec charges every array
/// and tagged-field map against `budget_bytes` before building it (see [`decoded_bytes_max`]).
struct BudgetedBytes {
    bytes: Bytes,
    budget_bytes: usize,
}

impl BudgetedBytes {
    fn new(frame: Bytes) -> BudgetedBytes {
        let budget_bytes = decoded_bytes_max(frame.len());
        BudgetedBytes { bytes: frame, budget_bytes }
    }
}

impl Buf for BudgetedBytes {
    fn remaining(&self) -> usize {
        self.bytes.remaining()
    }

    fn chunk(&self) -> &[u8] {
        self.bytes.chunk()
    }

    fn advance(&mut self, count: usize) {
        self.bytes.advance(count)
    }

    fn copy_to_bytes(&mut self, len: usize) -> Bytes {
        self.bytes.copy_to_bytes(len)
    }
}

impl ByteBuf for BudgetedBytes {
    fn peek_bytes(&mut self, range: Range<usize>) -> Bytes {
        self.bytes.slice(range)
    }

    fn get_bytes(&mut self, size: usize) -> Bytes {
        self.bytes.split_to(size)
    }

    fn charge_decoded(&mut self, bytes: usize) -> Result<(), DecodeBudgetExceeded> {
        match self.budget_bytes.checked_sub(bytes) {
            Some(left) => {
                self.budget_bytes = left;
                Ok(())
            }
            None => Err(DecodeBudgetExceeded { requested: bytes, remaining: self.budget_bytes }),
        }
    }
}

/// Appends one length-prefixed response frame to `out`.
pub fn encode_response(
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &ResponseKind,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    let encode_error = |reason: String| EncodeError::Encode { api_key, version, reason };
    let header_version = api_key.response_header_version(version);
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    let header_bytes = header.compute_size(header_version).map_err(|e| encode_error(e.to_string()))?;
    let body_bytes = response_size(body, version).map_err(|e| encode_error(e.to_string()))?;
    let size = header_bytes + body_bytes;
    if size > RESPONSE_BYTES_MAX {
        return Err(EncodeError::TooLarge { api_key, size });
    }
    out.reserve(FRAME_LENGTH_BYTES + size);
    out.put_u32(size as u32);
    let start = out.len();
    header.encode(out, header_version).map_err(|e| encode_error(e.to_string()))?;
    body.encode(out, version).map_err(|e| encode_error(e.to_string()))?;
    debug_assert_eq!(out.len() - start, size, "computed size must match encoded size");
    Ok(())
}

fn response_size(body: &ResponseKind, version: i16) -> anyhow::Result<usize> {
    // ResponseKind has no compute_size of its own; encoding into a counting sink would copy every
    // fetched byte twice, so dispatch to the message's own size computation instead.
    macro_rules! size {
        ($($variant:ident),*) => {
            match body {
                $(ResponseKind::$variant(message) => message.compute_size(version),)*
                other => {
                    let mut scratch = BytesMut::new();
                    other.encode(&mut scratch, version).map(|()| scratch.len())
                }
            }
        };
    }
    size!(
        Produce,
        Fetch,
        ListOffsets,
        Metadata,
        OffsetCommit,
        OffsetFetch,
        FindCoordinator,
        JoinGroup,
        Heartbeat,
        LeaveGroup,
        SyncGroup,
        DescribeGroups,
        ListGroups,
        ApiVersions,
        CreateTopics,
        DeleteTopics,
        DeleteRecords,
        InitProducerId,
        DescribeConfigs,
        AlterConfigs,
        CreatePartitions,
        DeleteGroups,
        IncrementalAlterConfigs,
        OffsetDelete,
        DescribeCluster
    )
}

/// Builds a request frame (length prefix included). Used by Sluice's own clients (bench, CLI, tests).
pub fn encode_request<R: Encodable>(header: &RequestHeader, api_key: ApiKey, body: &R, out: &mut BytesMut) -> Result<(), EncodeError> {
    let version = header.request_api_version;
    let encode_error = |reason: String| EncodeError::Encode { api_key, version, reason };
    let header_version = api_key.request_header_version(version);
    let size = header.compute_size(header_version).map_err(|e| encode_error(e.to_string()))?
        + body.compute_size(version).map_err(|e| encode_error(e.to_string()))?;
    out.reserve(FRAME_LENGTH_BYTES + size);
    out.put_u32(size as u32);
    header.encode(out, header_version).map_err(|e| encode_error(e.to_string()))?;
    body.encode(out, version).map_err(|e| encode_error(e.to_string()))?;
    Ok(())
}

/// Why a response frame could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum ResponseDecodeError {
    #[error("{api_key:?} response of {length} bytes is shorter than its correlation id")]
    Truncated { api_key: ApiKey, length: usize },
    #[error("malformed {api_key:?} v{version} response header: {message}")]
    Header { api_key: ApiKey, version: i16, message: String },
    #[error("malformed {api_key:?} v{version} response: {message}")]
    Body { api_key: ApiKey, version: i16, message: String },
}

/// Decodes a response frame body (after the length prefix) for `api_key` at `version`: its
/// correlation id and its body.
pub fn decode_response<R: Decodable>(api_key: ApiKey, version: i16, mut frame: Bytes) -> Result<(i32, R), ResponseDecodeError> {
    if frame.remaining() < 4 {
        return Err(ResponseDecodeError::Truncated { api_key, length: frame.remaining() });
    }
    let header = ResponseHeader::decode(&mut frame, api_key.response_header_version(version)).map_err(|e| ResponseDecodeError::Header {
        api_key,
        version,
        message: format!("{e:#}"),
    })?;
    let body = R::decode(&mut frame, version).map_err(|e| ResponseDecodeError::Body { api_key, version, message: format!("{e:#}") })?;
    Ok((header.correlation_id, body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::{ApiVersionsRequest, MetadataRequest};
    use proptest::prelude::*;

    fn frame_for<R: Encodable>(api_key: ApiKey, version: i16, body: &R) -> Bytes {
        samples::frame(api_key, version, 42, body).unwrap()
    }

    #[test]
    fn frame_length_limits() {
        assert_eq!(parse_frame_length((-1i32).to_be_bytes(), 100), Err(FrameError::NegativeLength { length: -1 }));
        assert_eq!(parse_frame_length(101i32.to_be_bytes(), 100), Err(FrameError::TooLarge { length: 101, max: 100 }));
        assert_eq!(parse_frame_length(3i32.to_be_bytes(), 100), Err(FrameError::TooShort { length: 3 }));
        assert_eq!(parse_frame_length(100i32.to_be_bytes(), 100), Ok(100));
    }

    #[test]
    fn every_supported_range_is_decodable_by_the_codec() {
        for &(api_key, min, max) in SUPPORTED_APIS {
            let codec = api_key.valid_versions();
            assert!(min <= max, "{api_key:?}");
            assert!(codec.min <= min && max <= codec.max, "{api_key:?} v{min}..=v{max} outside codec range {codec}");
        }
    }

    #[test]
    fn roundtrip_metadata_request() {
        for version in 0..=12 {
            let frame = frame_for(ApiKey::Metadata, version, &MetadataRequest::default());
            let decoded = decode_request(frame).unwrap();
            assert_eq!(decoded.version, version);
            assert_eq!(decoded.header.correlation_id, 42);
            assert!(matches!(decoded.body, RequestKind::Metadata(_)));
        }
    }

    #[test]
    fn unsupported_version_keeps_correlation_id() {
        let mut frame = frame_for(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default()).to_vec();
        frame[2..4].copy_from_slice(&99i16.to_be_bytes());
        match decode_request(Bytes::from(frame)) {
            Err(DecodeError::UnsupportedVersion { meta, api_key: ApiKey::ApiVersions, .. }) => {
                assert_eq!(meta.correlation_id, 42)
            }
            other => panic!("expected UnsupportedVersion, got {other:?}"),
        }
    }

    #[test]
    fn huge_array_count_is_an_error_not_an_allocation() {
        // Metadata v0: header (api key, version, correlation id, client id) then topics: array of i32
        // count. A count of i32::MAX with no elements behind it must fail cleanly and quickly; before
        // the vendored patch it asked the allocator for tens of gigabytes and aborted the process. Now
        // the decode budget refuses the count before a single element is built.
        let mut frame = Vec::new();
        frame.extend_from_slice(&(ApiKey::Metadata as i16).to_be_bytes());
        frame.extend_from_slice(&0i16.to_be_bytes());
        frame.extend_from_slice(&7i32.to_be_bytes());
        frame.extend_from_slice(&(-1i16).to_be_bytes());
        frame.extend_from_slice(&i32::MAX.to_be_bytes());
        let error = decode_request(Bytes::from(frame)).unwrap_err();
        assert!(matches!(error, DecodeError::TooLarge { .. }), "{error:?}");
        assert_eq!(error.meta().map(|m| m.correlation_id), Some(7));
    }

    #[test]
    fn every_supported_version_decodes_and_refuses_padding() {
        for &(api_key, min, max) in SUPPORTED_APIS {
            for version in min..=max {
                let frame = samples::default_request(api_key, version, 42).expect("every supported API has a sample");
                let decoded = decode_request(frame.clone()).unwrap_or_else(|e| panic!("{api_key:?} v{version}: {e}"));
                assert_eq!((decoded.api_key, decoded.version), (api_key, version));
                let mut tolerated = frame.to_vec();
                tolerated.resize(frame.len() + TRAILING_BYTES_MAX, 0);
                decode_request(Bytes::from(tolerated)).unwrap_or_else(|e| panic!("{api_key:?} v{version} with tolerated bytes: {e}"));
                // Before the fix, any number of bytes after the body was ignored and the request served.
                for trailing in [TRAILING_BYTES_MAX + 1, 1 << 20] {
                    let mut padded = frame.to_vec();
                    padded.resize(frame.len() + trailing, 0);
                    match decode_request(Bytes::from(padded)) {
                        Err(DecodeError::TrailingBytes { meta, api_key: key, trailing: n }) => {
                            assert_eq!((key, n, meta.correlation_id), (api_key, trailing, 42), "{api_key:?} v{version}");
                        }
                        other => panic!("{api_key:?} v{version} with {trailing} trailing bytes: {other:?}"),
                    }
                }
            }
        }
    }

    #[test]
    fn librdkafkas_metadata_for_all_topics_still_decodes() {
        // Captured from confluent-kafka 2.16 (librdkafka 2.16.0), `AdminClient.list_topics()`: Metadata
        // v12 with null topics, then `01 00 00` after the body's tagged fields. Apache Kafka ignores them.
        let hex = "0003000c00000003000772646b61666b610000000000010000";
        let frame: Vec<u8> = (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
        let decoded = decode_request(Bytes::from(frame)).unwrap();
        match decoded.body {
            RequestKind::Metadata(request) => assert_eq!(request.topics, None),
            other => panic!("{other:?}"),
        }
    }

    /// Metadata v0 asking for `count` topics named `name`.
    fn metadata_v0_frame(count: usize, name: &str) -> Bytes {
        use kafka_protocol::messages::TopicName;
        use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
        let topics = (0..count).map(|_| MetadataRequestTopic::default().with_name(Some(TopicName(name.to_string().into())))).collect();
        frame_for(ApiKey::Metadata, 0, &MetadataRequest::default().with_topics(Some(topics)))
    }

    #[test]
    fn requests_of_tiny_elements_cannot_decode_to_many_times_their_size() {
        // 3 wire bytes per topic (i16 length, one-byte name) became an 80-byte struct each: a 100 MiB
        // frame decoded to 2.7 GiB. Now the frame may decode to DECODED_BYTES_PER_FRAME_BYTE_MAX times
        // its size at most, so this one is refused before its topics are built.
        let frame = metadata_v0_frame(200_000, "a");
        let frame_bytes = frame.len();
        match decode_request(frame) {
            Err(DecodeError::TooLarge { api_key: ApiKey::Metadata, frame_bytes: n, decoded_bytes_max: max, .. }) => {
                assert_eq!((n, max), (frame_bytes, frame_bytes * DECODED_BYTES_PER_FRAME_BYTE_MAX));
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
    }

    #[test]
    fn many_unknown_tagged_fields_are_charged_against_the_budget() {
        // Metadata v12 (flexible): every unknown tagged field of 0 bytes is 2-3 wire bytes, and each
        // became an entry in a B-tree map. 30,000 of them are far more structure than 8 x 90 KB.
        let mut frame = frame_for(ApiKey::Metadata, 12, &MetadataRequest::default()).to_vec();
        assert_eq!(frame.pop(), Some(0), "the request's own tagged-field count ends the frame");
        let count: u32 = 30_000;
        put_uvarint(&mut frame, count);
        for tag in 0..count {
            put_uvarint(&mut frame, tag + 1000);
            put_uvarint(&mut frame, 0);
        }
        let error = decode_request(Bytes::from(frame)).unwrap_err();
        assert!(matches!(error, DecodeError::TooLarge { .. }), "{error:?}");
    }

    fn put_uvarint(out: &mut Vec<u8>, mut value: u32) {
        while value >= 0x80 {
            out.push((value as u8) | 0x80);
            value >>= 7;
        }
        out.push(value as u8);
    }

    #[test]
    fn large_requests_shaped_like_real_clients_still_decode() {
        use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
        use kafka_protocol::messages::offset_commit_request::{OffsetCommitRequestPartition, OffsetCommitRequestTopic};
        use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
        use kafka_protocol::messages::{FetchRequest, GroupId, OffsetCommitRequest, ProduceRequest, TopicName};
        let name = |i: usize| TopicName(format!("orders-{i:05}").into());
        // A consumer of 5,000 partitions committing every one of them (no metadata).
        for version in [2, 8] {
            let partitions =
                (0..5_000).map(|p| OffsetCommitRequestPartition::default().with_partition_index(p).with_committed_offset(1 << 40));
            let request = OffsetCommitRequest::default()
                .with_group_id(GroupId("payments".into()))
                .with_topics(vec![OffsetCommitRequestTopic::default().with_name(name(0)).with_partitions(partitions.collect())]);
            decode_request(frame_for(ApiKey::OffsetCommit, version, &request)).unwrap_or_else(|e| panic!("OffsetCommit v{version}: {e}"));
        }
        // A fetch of 1,000 topics with 10 partitions each.
        for version in [4, 12] {
            let topics = (0..1_000).map(|t| {
                let partitions = (0..10).map(|p| FetchPartition::default().with_partition(p).with_partition_max_bytes(1 << 20));
                FetchTopic::default().with_topic(name(t)).with_partitions(partitions.collect())
            });
            let request = FetchRequest::default().with_max_bytes(50 << 20).with_topics(topics.collect());
            decode_request(frame_for(ApiKey::Fetch, version, &request)).unwrap_or_else(|e| panic!("Fetch v{version}: {e}"));
        }
        // Metadata for 10,000 named topics, and a produce to 2,000 partitions of small batches.
        for version in [0, 12] {
            let topics =
                (0..10_000).map(|t| kafka_protocol::messages::metadata_request::MetadataRequestTopic::default().with_name(Some(name(t))));
            let request = MetadataRequest::default().with_topics(Some(topics.collect()));
            decode_request(frame_for(ApiKey::Metadata, version, &request)).unwrap_or_else(|e| panic!("Metadata v{version}: {e}"));
        }
        for version in [3, 9] {
            let batch = Bytes::from(vec![0u8; 80]);
            let partitions = (0..2_000).map(|p| PartitionProduceData::default().with_index(p).with_records(Some(batch.clone())));
            let request = ProduceRequest::default()
                .with_acks(-1)
                .with_topic_data(vec![TopicProduceData::default().with_name(name(0)).with_partition_data(partitions.collect())]);
            decode_request(frame_for(ApiKey::Produce, version, &request)).unwrap_or_else(|e| panic!("Produce v{version}: {e}"));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Arbitrary bytes behind a valid (api key, version) prefix never panic the decoder.
        #[test]
        fn decoding_arbitrary_bodies_never_panics(
            api_idx in 0..SUPPORTED_APIS.len(),
            version_pick in any::<u8>(),
            body in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let (api_key, min, max) = SUPPORTED_APIS[api_idx];
            let version = min + (version_pick as i16 % (max - min + 1));
            let mut frame = Vec::with_capacity(8 + body.len());
            frame.extend_from_slice(&(api_key as i16).to_be_bytes());
            frame.extend_from_slice(&version.to_be_bytes());
            frame.extend_from_slice(&1i32.to_be_bytes());
            frame.extend_from_slice(&body);
            let _ = decode_request(Bytes::from(frame));
        }

        /// Totally arbitrary frames never panic either.
        #[test]
        fn decoding_arbitrary_frames_never_panics(frame in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_request(Bytes::from(frame));
        }

        /// Valid requests survive single-byte corruption without panicking.
        #[test]
        fn corrupted_valid_requests_never_panic(version in 0i16..=12, idx in any::<usize>(), byte in any::<u8>()) {
            let mut frame = frame_for(ApiKey::Metadata, version, &MetadataRequest::default()).to_vec();
            let i = idx % frame.len();
            frame[i] = byte;
            let _ = decode_request(Bytes::from(frame));
        }
    }
}
