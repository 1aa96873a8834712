//! Kafka framing over TCP: a 4-byte big-endian length, then a request header and body (or a response
//! header and body). Everything read off the socket is bounded and decoded into `Result`s; a broker that
//! sends garbage gets an error naming its address, never a panic or an unbounded allocation.
//!
//! These are the building blocks of [`crate::Connection`]; they are public for tools that drive their
//! own sockets (a load generator that pre-encodes requests, for one).

use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::error::{ClientError, Result};

/// How long to wait for a TCP connection before giving up on a broker.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest response frame accepted; a bigger length prefix means a confused or hostile peer.
pub const MAX_RESPONSE_FRAME_BYTES: usize = 256 * 1024 * 1024;
/// Kafka's default `socket.request.max.bytes`; brokers drop connections that send larger requests.
pub const MAX_REQUEST_FRAME_BYTES: usize = 100 * 1024 * 1024;
/// How long one response may take. Produce requests carry a 30 s timeout of their own, and a broker
/// that has not answered a few seconds after that is stuck rather than slow.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(35);
/// Bytes of the length prefix in front of every frame.
pub const FRAME_PREFIX_BYTES: usize = 4;
/// Bytes of the correlation id that opens every response header.
pub const CORRELATION_ID_BYTES: usize = 4;

/// Opens a TCP connection with a bounded wait and an error that says where.
pub async fn connect(addr: &str) -> Result<TcpStream> {
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(ClientError::Connect { addr: addr.to_string(), source: e.into() }),
        Err(_) => return Err(ClientError::ConnectTimeout { addr: addr.to_string(), timeout: CONNECT_TIMEOUT }),
    };
    // Requests go out whole; Nagle's algorithm would only delay the small ones.
    stream.set_nodelay(true).map_err(|e| ClientError::io(e, addr, "setting TCP_NODELAY on the connection to"))?;
    Ok(stream)
}

/// Encodes a request body once, so it can be sent many times behind fresh headers.
pub fn encode_body<R: Encodable>(body: &R, api_key: ApiKey, version: i16) -> Result<Bytes> {
    let encode_error = |e: &dyn std::fmt::Display| ClientError::Encode { api: api_key, version, detail: format!("{e:#}") };
    let size = body.compute_size(version).map_err(|e| encode_error(&e))?;
    if size > MAX_REQUEST_FRAME_BYTES {
        return Err(ClientError::RequestTooLarge { api: api_key, bytes: size, limit: MAX_REQUEST_FRAME_BYTES });
    }
    let mut buf = BytesMut::with_capacity(size);
    body.encode(&mut buf, version).map_err(|e| encode_error(&e))?;
    Ok(buf.freeze())
}

/// The length prefix and request header for a body of `body_len` bytes. Sent in front of a
/// pre-encoded body, this is the only per-request encoding work.
pub fn request_prefix(api_key: ApiKey, version: i16, correlation_id: i32, client_id: &str, body_len: usize) -> Result<Bytes> {
    let header = RequestHeader::default()
        .with_request_api_key(api_key as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_string(client_id.to_string())));
    let header_version = api_key.request_header_version(version);
    let encode_error = |e: &dyn std::fmt::Display| ClientError::Encode { api: api_key, version, detail: format!("{e:#}") };
    let header_len = header.compute_size(header_version).map_err(|e| encode_error(&e))?;
    let frame_len = header_len + body_len;
    if frame_len > MAX_REQUEST_FRAME_BYTES {
        return Err(ClientError::RequestTooLarge { api: api_key, bytes: frame_len, limit: MAX_REQUEST_FRAME_BYTES });
    }
    let mut buf = BytesMut::with_capacity(FRAME_PREFIX_BYTES + header_len);
    // Bounded by MAX_REQUEST_FRAME_BYTES just above, so it fits.
    buf.put_u32(frame_len as u32);
    header.encode(&mut buf, header_version).map_err(|e| encode_error(&e))?;
    Ok(buf.freeze())
}

/// Writes one request frame: the prefix from [`request_prefix`] followed by the body, in one vectored
/// write where the socket allows it (the body is shared, never copied).
pub async fn write_frame<W: AsyncWrite + Unpin>(writer: &mut W, prefix: Bytes, body: Bytes, addr: &str) -> Result<()> {
    let mut frame = prefix.chain(body);
    writer.write_all_buf(&mut frame).await.map_err(|e| ClientError::io(e, addr, "sending a request to"))
}

/// Checks a response frame's declared length: not negative, not over [`MAX_RESPONSE_FRAME_BYTES`], and
/// not the start of an HTTP answer.
pub fn check_frame_prefix(prefix: [u8; FRAME_PREFIX_BYTES], addr: &str) -> Result<usize> {
    if &prefix == b"HTTP" {
        return Err(ClientError::protocol(
            addr,
            format!("{addr} answered in HTTP; that is a web server (the broker's admin port?), not the Kafka listener"),
        ));
    }
    let declared = i32::from_be_bytes(prefix);
    usize::try_from(declared).ok().filter(|&len| len <= MAX_RESPONSE_FRAME_BYTES).ok_or_else(|| {
        ClientError::protocol(
            addr,
            format!(
                "broker at {addr} sent a {declared}-byte response frame (limit {MAX_RESPONSE_FRAME_BYTES}); \
                 is that really a Kafka-protocol broker?"
            ),
        )
    })
}

/// Reads one response frame, rejecting lengths that are negative or over [`MAX_RESPONSE_FRAME_BYTES`].
pub async fn read_frame<R: AsyncRead + Unpin>(reader: &mut R, addr: &str) -> Result<Bytes> {
    let mut prefix = [0u8; FRAME_PREFIX_BYTES];
    reader.read_exact(&mut prefix).await.map_err(|e| ClientError::io(e, addr, "reading a response from"))?;
    let len = check_frame_prefix(prefix, addr)?;
    // Filled through a `take` so a read never runs into the next frame, and without zeroing first:
    // fetch responses can be tens of megabytes.
    let mut frame = BytesMut::with_capacity(len);
    let mut limited = (&mut *reader).take(len as u64);
    while frame.len() < len {
        let n = limited.read_buf(&mut frame).await.map_err(|e| ClientError::io(e, addr, "reading a response from"))?;
        if n == 0 {
            return Err(ClientError::ConnectionLost {
                addr: addr.to_string(),
                reason: format!("broker at {addr} closed the connection in the middle of a response"),
            });
        }
    }
    Ok(frame.freeze())
}

/// Like [`read_frame`], but gives up after [`RESPONSE_TIMEOUT`].
pub async fn read_frame_timed<R: AsyncRead + Unpin>(reader: &mut R, addr: &str, api_key: ApiKey) -> Result<Bytes> {
    tokio::time::timeout(RESPONSE_TIMEOUT, read_frame(reader, addr)).await.map_err(|_| ClientError::ResponseTimeout {
        addr: addr.to_string(),
        api: api_key,
        timeout: RESPONSE_TIMEOUT,
    })?
}

/// The correlation id a response frame answers (the first field of every response header).
pub fn frame_correlation_id(frame: &[u8]) -> Option<i32> {
    frame.get(..CORRELATION_ID_BYTES).map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// Decodes a response frame: the header (whose version depends on the API and version), a check that it
/// answers `correlation_id`, then the body.
pub fn decode_response<R: Decodable>(api_key: ApiKey, version: i16, correlation_id: i32, frame: Bytes, addr: &str) -> Result<R> {
    let (answered, body) =
        sluice_protocol::decode_response(api_key, version, frame).map_err(|e| ClientError::protocol(addr, format!("{e} from {addr}")))?;
    if answered != correlation_id {
        return Err(ClientError::protocol(
            addr,
            format!(
                "broker at {addr} answered correlation id {answered} where {correlation_id} was due; \
                 responses must come back in request order"
            ),
        ));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::{MetadataRequest, MetadataResponse, ResponseHeader};

    #[tokio::test]
    async fn oversized_negative_truncated_and_http_frames_are_rejected() {
        let mut huge: &[u8] = &[0x7f, 0xff, 0xff, 0xff];
        assert!(matches!(read_frame(&mut huge, "x").await, Err(ClientError::Protocol { .. })));
        let mut negative: &[u8] = &[0xff, 0xff, 0xff, 0xff];
        assert!(matches!(read_frame(&mut negative, "x").await, Err(ClientError::Protocol { .. })));
        let mut short: &[u8] = &[0, 0, 0, 8, 1, 2, 3];
        assert!(matches!(read_frame(&mut short, "x").await, Err(ClientError::ConnectionLost { .. })));
        let mut http: &[u8] = b"HTTP/1.1 400 Bad Request\r\n";
        let error = read_frame(&mut http, "x:1").await.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains("answered in HTTP"), "{error}");
        let mut ok: &[u8] = &[0, 0, 0, 2, 7, 9, 0xaa];
        assert_eq!(read_frame(&mut ok, "x").await.ok().as_deref(), Some(&[7u8, 9][..]));
    }

    #[test]
    fn a_request_frame_is_its_length_then_header_then_body() {
        let body = encode_body(&MetadataRequest::default().with_topics(None), ApiKey::Metadata, 9).expect("encode");
        let prefix = request_prefix(ApiKey::Metadata, 9, 42, "me", body.len()).expect("prefix");
        let declared = u32::from_be_bytes(prefix[..4].try_into().expect("4 bytes")) as usize;
        assert_eq!(declared, prefix.len() - FRAME_PREFIX_BYTES + body.len());
        // api key, version, correlation id lead the header.
        assert_eq!(&prefix[4..8], &[0, 3, 0, 9]);
        assert_eq!(&prefix[8..12], &42i32.to_be_bytes());
        assert!(matches!(
            request_prefix(ApiKey::Produce, 9, 1, "me", MAX_REQUEST_FRAME_BYTES),
            Err(ClientError::RequestTooLarge { api: ApiKey::Produce, .. })
        ));
    }

    #[test]
    fn responses_must_answer_the_request_they_follow() {
        let mut frame = BytesMut::new();
        ResponseHeader::default().with_correlation_id(7).encode(&mut frame, ApiKey::Metadata.response_header_version(9)).expect("header");
        MetadataResponse::default().encode(&mut frame, 9).expect("body");
        let frame = frame.freeze();
        assert_eq!(frame_correlation_id(&frame), Some(7));
        assert!(decode_response::<MetadataResponse>(ApiKey::Metadata, 9, 7, frame.clone(), "x").is_ok());
        let wrong = decode_response::<MetadataResponse>(ApiKey::Metadata, 9, 8, frame.clone(), "x").err().map(|e| e.to_string());
        assert!(wrong.is_some_and(|m| m.contains("correlation id 7 where 8 was due")));
        assert!(decode_response::<MetadataResponse>(ApiKey::Metadata, 9, 7, frame.slice(..6), "x").is_err());
        assert_eq!(frame_correlation_id(&[1, 2]), None);
    }
}
