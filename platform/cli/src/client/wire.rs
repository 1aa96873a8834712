//! Kafka framing over TCP: a 4-byte big-endian length, then a request header and body (or a response
//! header and body). Everything read off the socket is bounded and decoded into `Result`s; a broker that
//! sends garbage gets an error naming its address, never a panic or an unbounded allocation. Failing to
//! reach a broker (refused, timed out, connection lost) is an [`Unreachable`] error: exit code 3.

use std::collections::HashMap;
use std::io;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

use super::Unreachable;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, ApiVersionsRequest, ApiVersionsResponse, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, Request, StrBytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long to wait for a TCP connection before giving up on a broker.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest response frame accepted; a bigger length prefix means a confused or hostile peer.
pub(crate) const MAX_RESPONSE_FRAME_BYTES: usize = 256 * 1024 * 1024;
/// Kafka's default `socket.request.max.bytes`; brokers drop connections that send larger requests.
pub(crate) const MAX_REQUEST_FRAME_BYTES: usize = 100 * 1024 * 1024;
/// How long one response may take. Produce requests carry a 30 s timeout of their own, and a broker
/// that has not answered a few seconds after that is stuck rather than slow.
pub(crate) const RESPONSE_TIMEOUT: Duration = Duration::from_secs(35);
/// Bytes of the length prefix in front of every frame.
pub(crate) const FRAME_PREFIX_BYTES: usize = 4;
/// Sent as the request header's client id so broker logs can tell the CLI's traffic apart.
const CLIENT_ID: &str = "sluice";
/// Appended to connection errors: the usual cause is that nothing is listening.
const SERVER_HINT: &str = "is `sluice server` running and listening there?";

/// The ApiVersions version tried first (the newest one this tool implements).
const API_VERSIONS_VERSION: i16 = 3;
/// Kafka's UNSUPPORTED_VERSION error code.
const UNSUPPORTED_VERSION: i16 = 35;

/// Version ranges (inclusive) this tool implements. Fetch stops at v12 because v13+ address topics by
/// id; Produce stops at v9, the first flexible version, which every current broker accepts.
pub(crate) const PRODUCE_VERSIONS: (i16, i16) = (3, 9);
pub(crate) const FETCH_VERSIONS: (i16, i16) = (4, 12);
pub(crate) const METADATA_VERSIONS: (i16, i16) = (1, 12);
pub(crate) const CREATE_TOPICS_VERSIONS: (i16, i16) = (2, 7);

/// Opens a TCP connection with a bounded wait and an error that says where and what to check.
pub(crate) async fn connect(addr: &str) -> Result<TcpStream> {
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(Unreachable(format!("cannot connect to broker at {addr}: {e} ({SERVER_HINT})")).into()),
        Err(_) => {
            return Err(Unreachable(format!(
                "connecting to broker at {addr} timed out after {}s ({SERVER_HINT})",
                CONNECT_TIMEOUT.as_secs()
            ))
            .into());
        }
    };
    // Requests go out whole; Nagle's algorithm would only delay the small ones.
    stream.set_nodelay(true).with_context(|| format!("setting TCP_NODELAY on the connection to {addr}"))?;
    Ok(stream)
}

/// Encodes a request body once, so it can be sent many times behind fresh headers.
pub(crate) fn encode_body<R: Encodable>(body: &R, api_key: ApiKey, version: i16) -> Result<Bytes> {
    let size = body.compute_size(version).with_context(|| format!("sizing a {api_key:?} v{version} request"))?;
    let mut buf = BytesMut::with_capacity(size);
    body.encode(&mut buf, version).with_context(|| format!("encoding a {api_key:?} v{version} request"))?;
    Ok(buf.freeze())
}

/// The length prefix and request header for a body of `body_len` bytes. Sent in front of a
/// pre-encoded body, this is the only per-request encoding work.
pub(crate) fn request_prefix(api_key: ApiKey, version: i16, correlation_id: i32, body_len: usize) -> Result<Bytes> {
    let header = RequestHeader::default()
        .with_request_api_key(api_key as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str(CLIENT_ID)));
    let header_version = api_key.request_header_version(version);
    let header_len = header.compute_size(header_version)?;
    let frame_len = header_len + body_len;
    if frame_len > MAX_REQUEST_FRAME_BYTES {
        bail!(
            "a {api_key:?} request would be {frame_len} bytes, over the {MAX_REQUEST_FRAME_BYTES}-byte limit \
             brokers accept"
        );
    }
    let mut buf = BytesMut::with_capacity(FRAME_PREFIX_BYTES + header_len);
    // Bounded by MAX_REQUEST_FRAME_BYTES just above, so it fits.
    buf.put_u32(frame_len as u32);
    header.encode(&mut buf, header_version)?;
    Ok(buf.freeze())
}

/// Writes one request frame: the prefix from [`request_prefix`] followed by the body, in one vectored
/// write where the socket allows it (the body is shared, never copied).
pub(crate) async fn write_frame<W: AsyncWrite + Unpin>(writer: &mut W, prefix: Bytes, body: Bytes, addr: &str) -> Result<()> {
    let mut frame = prefix.chain(body);
    writer.write_all_buf(&mut frame).await.map_err(|e| io_error(e, addr, "sending a request to"))
}

/// Reads one response frame, rejecting lengths that are negative or over [`MAX_RESPONSE_FRAME_BYTES`].
pub(crate) async fn read_frame<R: AsyncRead + Unpin>(reader: &mut R, addr: &str) -> Result<Bytes> {
    let mut prefix = [0u8; FRAME_PREFIX_BYTES];
    reader.read_exact(&mut prefix).await.map_err(|e| io_error(e, addr, "reading a response from"))?;
    if &prefix == b"HTTP" {
        bail!("{addr} answered in HTTP; that is a web server (the broker's admin port?), not the Kafka listener");
    }
    let declared = i32::from_be_bytes(prefix);
    let len = usize::try_from(declared).ok().filter(|&len| len <= MAX_RESPONSE_FRAME_BYTES).ok_or_else(|| {
        anyhow!(
            "broker at {addr} sent a {declared}-byte response frame (limit {MAX_RESPONSE_FRAME_BYTES}); \
                 is that really a Kafka-protocol broker?"
        )
    })?;
    // Filled through a `take` so a read never runs into the next frame, and without zeroing first:
    // fetch responses can be tens of megabytes.
    let mut frame = BytesMut::with_capacity(len);
    let mut limited = (&mut *reader).take(len as u64);
    while frame.len() < len {
        let n = limited.read_buf(&mut frame).await.map_err(|e| io_error(e, addr, "reading a response from"))?;
        if n == 0 {
            bail!("broker at {addr} closed the connection in the middle of a response");
        }
    }
    Ok(frame.freeze())
}

/// Like [`read_frame`], but gives up after [`RESPONSE_TIMEOUT`].
pub(crate) async fn read_frame_timed<R: AsyncRead + Unpin>(reader: &mut R, addr: &str, api_key: ApiKey) -> Result<Bytes> {
    tokio::time::timeout(RESPONSE_TIMEOUT, read_frame(reader, addr))
        .await
        .map_err(|_| Unreachable(format!("broker at {addr} sent no {api_key:?} response within {}s", RESPONSE_TIMEOUT.as_secs())))?
}

/// Decodes a response frame: the header (whose version depends on the API and version), a check that it
/// answers `correlation_id`, then the body.
pub(crate) fn decode_response<R: Decodable>(api_key: ApiKey, version: i16, correlation_id: i32, mut frame: Bytes, addr: &str) -> Result<R> {
    let header = ResponseHeader::decode(&mut frame, api_key.response_header_version(version))
        .with_context(|| format!("malformed {api_key:?} response header from {addr}"))?;
    if header.correlation_id != correlation_id {
        bail!(
            "broker at {addr} answered correlation id {} where {correlation_id} was due; \
             responses must come back in request order",
            header.correlation_id
        );
    }
    R::decode(&mut frame, version).with_context(|| format!("malformed {api_key:?} v{version} response from {addr}"))
}

fn io_error(error: io::Error, addr: &str, doing: &str) -> anyhow::Error {
    let message = match error.kind() {
        io::ErrorKind::UnexpectedEof => format!("broker at {addr} closed the connection"),
        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => format!("broker at {addr} reset the connection ({error})"),
        _ => format!("{doing} broker at {addr} failed: {error}"),
    };
    Unreachable(message).into()
}

/// A plain request/response connection, used for setup (ApiVersions, Metadata, CreateTopics) before
/// the socket is handed to a pipelined benchmark loop.
pub(crate) struct Connection {
    pub(crate) addr: String,
    stream: TcpStream,
    next_correlation_id: i32,
}

impl Connection {
    pub(crate) async fn open(addr: &str) -> Result<Self> {
        Ok(Self { addr: addr.to_string(), stream: connect(addr).await?, next_correlation_id: 0 })
    }

    fn correlation_id(&mut self) -> i32 {
        let id = self.next_correlation_id;
        self.next_correlation_id = id.wrapping_add(1);
        id
    }

    /// Sends one request and waits for its response.
    pub(crate) async fn call<R: Request>(&mut self, request: &R, version: i16) -> Result<R::Response> {
        let api_key = ApiKey::try_from(R::KEY).map_err(|()| anyhow!("unknown api key {}", R::KEY))?;
        let (correlation_id, frame) = self.round_trip(api_key, version, encode_body(request, api_key, version)?).await?;
        decode_response(api_key, version, correlation_id, frame, &self.addr)
    }

    /// Sends a request and reads the next frame, returning it with the correlation id it must carry.
    async fn round_trip(&mut self, api_key: ApiKey, version: i16, body: Bytes) -> Result<(i32, Bytes)> {
        let correlation_id = self.correlation_id();
        let prefix = request_prefix(api_key, version, correlation_id, body.len())?;
        write_frame(&mut self.stream, prefix, body, &self.addr).await?;
        Ok((correlation_id, read_frame_timed(&mut self.stream, &self.addr, api_key).await?))
    }

    /// Asks the broker which API versions it supports. A broker that does not know our ApiVersions
    /// version answers UNSUPPORTED_VERSION in the v0 layout with its own range, and we retry once at the
    /// newest version we share.
    pub(crate) async fn api_versions(&mut self) -> Result<BrokerApis> {
        let mut version = API_VERSIONS_VERSION;
        for _attempt in 0..2 {
            let request = ApiVersionsRequest::default()
                .with_client_software_name(StrBytes::from_static_str(CLIENT_ID))
                .with_client_software_version(StrBytes::from_static_str(env!("CARGO_PKG_VERSION")));
            let body = encode_body(&request, ApiKey::ApiVersions, version)?;
            let (correlation_id, mut frame) = self.round_trip(ApiKey::ApiVersions, version, body).await?;
            // ApiVersions responses always use header v0, so old clients can parse the error below.
            let header = ResponseHeader::decode(&mut frame, ApiKey::ApiVersions.response_header_version(version))
                .with_context(|| format!("malformed ApiVersions response header from {}", self.addr))?;
            if header.correlation_id != correlation_id {
                bail!("broker at {} answered correlation id {} where {correlation_id} was due", self.addr, header.correlation_id);
            }
            // The error code leads the body in every version; peek at it to pick the layout to decode.
            let error_code = frame.get(..2).map(|b| i16::from_be_bytes([b[0], b[1]]));
            let layout = if error_code == Some(UNSUPPORTED_VERSION) { 0 } else { version };
            let response = ApiVersionsResponse::decode(&mut frame, layout)
                .with_context(|| format!("malformed ApiVersions v{layout} response from {}", self.addr))?;
            let apis = BrokerApis {
                addr: self.addr.clone(),
                ranges: response.api_keys.iter().map(|k| (k.api_key, (k.min_version, k.max_version))).collect(),
            };
            match response.error_code {
                0 => return Ok(apis),
                UNSUPPORTED_VERSION => {
                    let retry = apis.pick(ApiKey::ApiVersions, (0, API_VERSIONS_VERSION))?;
                    if retry == version {
                        break;
                    }
                    version = retry;
                }
                code => bail!("broker at {} rejected ApiVersions: {}", self.addr, super::error_label(code)),
            }
        }
        bail!("broker at {} kept rejecting ApiVersions as UNSUPPORTED_VERSION", self.addr)
    }
}

/// The API version ranges one broker advertised.
pub(crate) struct BrokerApis {
    addr: String,
    ranges: HashMap<i16, (i16, i16)>,
}

impl BrokerApis {
    /// How many APIs the broker advertised.
    pub(crate) fn len(&self) -> usize {
        self.ranges.len()
    }

    /// The newest version of `api` that both the broker and this tool (`ours`, inclusive) support.
    pub(crate) fn pick(&self, api: ApiKey, ours: (i16, i16)) -> Result<i16> {
        let Some(&(min, max)) = self.ranges.get(&(api as i16)) else {
            bail!("broker at {} does not support the {api:?} API, which `sluice` needs", self.addr);
        };
        let (low, high) = (min.max(ours.0), max.min(ours.1));
        if low > high {
            bail!("broker at {} supports {api:?} v{min}-v{max}, but `sluice` implements only v{}-v{}", self.addr, ours.0, ours.1);
        }
        Ok(high)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_picking() {
        let apis = BrokerApis { addr: "b:1".into(), ranges: HashMap::from([(ApiKey::Fetch as i16, (4, 17))]) };
        assert_eq!(apis.pick(ApiKey::Fetch, FETCH_VERSIONS).ok(), Some(12));
        assert!(apis.pick(ApiKey::Fetch, (0, 3)).is_err());
        let missing = apis.pick(ApiKey::Produce, PRODUCE_VERSIONS).err().map(|e| e.to_string());
        assert!(missing.is_some_and(|m| m.contains("Produce")));
    }

    #[tokio::test]
    async fn oversized_and_truncated_frames_are_rejected() {
        let mut huge: &[u8] = &[0x7f, 0xff, 0xff, 0xff];
        assert!(read_frame(&mut huge, "x").await.is_err());
        let mut negative: &[u8] = &[0xff, 0xff, 0xff, 0xff];
        assert!(read_frame(&mut negative, "x").await.is_err());
        let mut short: &[u8] = &[0, 0, 0, 8, 1, 2, 3];
        assert!(read_frame(&mut short, "x").await.is_err());
        let mut ok: &[u8] = &[0, 0, 0, 2, 7, 9, 0xaa];
        assert_eq!(read_frame(&mut ok, "x").await.ok().as_deref(), Some(&[7u8, 9][..]));
    }
}
