//! The Kafka wire codec as Sluice speaks it: framing limits, request decoding, response encoding and
//! the table of API versions the broker implements.
//!
//! This crate sits between the socket and the broker's handlers. It is a pure codec: no I/O, no async,
//! no broker state. Message bodies are encoded and decoded by the `kafka-protocol` crate; what this
//! crate adds is the boundary discipline — every length that comes off the wire is checked against a
//! named limit before anything is allocated, every malformed input becomes a typed [`DecodeError`]
//! (never a panic), and only the versions in [`SUPPORTED_APIS`] are ever decoded, so the broker
//! advertises exactly what it implements.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::{Decodable, Encodable};

pub use kafka_protocol;

pub mod partitioner;

/// Bytes of the big-endian length prefix in front of every request and response.
pub const FRAME_LENGTH_BYTES: usize = 4;

/// The fixed part of every request header: api key (i16), api version (i16), correlation id (i32).
pub const REQUEST_HEADER_FIXED_BYTES: usize = 8;

/// Kafka's default `socket.request.max.bytes` (100 MiB). The broker may lower or raise it.
pub const DEFAULT_REQUEST_BYTES_MAX: usize = 100 * 1024 * 1024;

/// Responses are built in memory; a response larger than this is an internal error, not something to
/// send. Fetch responses are bounded by `fetch.max.bytes` well below it.
pub const RESPONSE_BYTES_MAX: usize = 1024 * 1024 * 1024;

/// The APIs and version ranges the broker implements, in api-key order. ApiVersions advertises this
/// table verbatim and [`decode_request`] refuses anything outside it.
///
/// Upper bounds stop where a newer version would change semantics we do not implement yet: Fetch v13+
/// and Produce v13 address topics by id only, OffsetCommit v9+ / OffsetFetch v9+ belong to the KIP-848
/// consumer protocol, ListOffsets v8+ adds earliest-local / tiered timestamps. AddPartitionsToTxn v4+ is
/// broker-to-broker verification; AddOffsetsToTxn, EndTxn and TxnOffsetCommit v4+ (and EndTxn v5)
/// belong to KIP-890's transaction protocol version 2, which bumps the epoch on every commit.
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
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::AddPartitionsToTxn, 0, 3),
    (ApiKey::AddOffsetsToTxn, 0, 3),
    (ApiKey::EndTxn, 0, 3),
    (ApiKey::TxnOffsetCommit, 0, 3),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
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
}

impl DecodeError {
    /// The request's identity, when enough bytes arrived to know it.
    pub fn meta(&self) -> Option<RequestMeta> {
        match self {
            DecodeError::TooShort { .. } => None,
            DecodeError::UnknownApiKey { meta } | DecodeError::UnsupportedVersion { meta, .. } | DecodeError::Malformed { meta, .. } => {
                Some(*meta)
            }
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
pub fn decode_request(frame: Bytes) -> Result<DecodedRequest, DecodeError> {
    let meta = peek_meta(&frame).ok_or(DecodeError::TooShort { length: frame.len() })?;
    let api_key = ApiKey::try_from(meta.api_key).map_err(|_| DecodeError::UnknownApiKey { meta })?;
    let Some((min, max)) = supported_versions(api_key) else {
        return Err(DecodeError::UnknownApiKey { meta });
    };
    if meta.api_version < min || meta.api_version > max {
        return Err(DecodeError::UnsupportedVersion { meta, api_key, min, max });
    }
    let mut buf = frame;
    let header_version = api_key.request_header_version(meta.api_version);
    let header = RequestHeader::decode(&mut buf, header_version).map_err(|error| DecodeError::Malformed {
        meta,
        api_key,
        reason: format!("header: {error}"),
    })?;
    let body = RequestKind::decode(api_key, &mut buf, meta.api_version).map_err(|error| DecodeError::Malformed {
        meta,
        api_key,
        reason: error.to_string(),
    })?;
    Ok(DecodedRequest { header, api_key, version: meta.api_version, body })
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

/// Decodes a response frame body (after the length prefix) for `api_key` at `version`.
pub fn decode_response<R: Decodable>(api_key: ApiKey, version: i16, mut frame: Bytes) -> Result<(i32, R), String> {
    if frame.remaining() < 4 {
        return Err("response shorter than its correlation id".to_string());
    }
    let header = ResponseHeader::decode(&mut frame, api_key.response_header_version(version)).map_err(|e| e.to_string())?;
    let body = R::decode(&mut frame, version).map_err(|e| e.to_string())?;
    Ok((header.correlation_id, body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::{ApiVersionsRequest, MetadataRequest};
    use proptest::prelude::*;

    fn frame_for<R: Encodable>(api_key: ApiKey, version: i16, body: &R) -> Bytes {
        let header = RequestHeader::default()
            .with_request_api_key(api_key as i16)
            .with_request_api_version(version)
            .with_correlation_id(42)
            .with_client_id(Some("test".into()));
        let mut out = BytesMut::new();
        encode_request(&header, api_key, body, &mut out).unwrap();
        out.freeze().slice(FRAME_LENGTH_BYTES..)
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
        // the vendored patch it asked the allocator for tens of gigabytes and aborted the process.
        let mut frame = Vec::new();
        frame.extend_from_slice(&(ApiKey::Metadata as i16).to_be_bytes());
        frame.extend_from_slice(&0i16.to_be_bytes());
        frame.extend_from_slice(&7i32.to_be_bytes());
        frame.extend_from_slice(&(-1i16).to_be_bytes());
        frame.extend_from_slice(&i32::MAX.to_be_bytes());
        let error = decode_request(Bytes::from(frame)).unwrap_err();
        assert!(matches!(error, DecodeError::Malformed { .. }), "{error:?}");
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
