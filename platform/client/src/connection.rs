//! One TCP connection to one broker, pipelined: many requests can be outstanding at once, from one
//! task or many, up to a bound. Kafka answers a connection's requests in the order they arrived, so a
//! writer task sends frames in queue order and hands each (correlation id, reply slot) to a reader
//! task, which reads the next response frame, checks its correlation id and completes that slot.
//!
//! A [`Connection`] is a cheap handle (clone it freely). [`Connection::send`] returns a [`Pending`]
//! once the request is queued; awaiting [`Pending::wait`] gives the decoded response. Sending several
//! before waiting is what keeps a long link busy (a mirror fetching over a WAN, a producer with
//! several batches in flight). Every wait is bounded: a response must start within
//! [`wire::RESPONSE_TIMEOUT`], and a write must finish within the same time.
//!
//! When anything fails on the socket (reset, timeout, a malformed or out-of-order frame), the
//! connection closes: the request that hit it gets that error, every other outstanding one
//! [`ClientError::ConnectionLost`], and [`Connection::is_closed`] turns true so a pool opens a new one.

use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, ApiVersionsRequest, ApiVersionsResponse, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Request, StrBytes};
use tokio::io::BufReader;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio::task::AbortHandle;

use crate::codes;
use crate::error::{ClientError, Result};
use crate::versions::{API_VERSIONS_VERSION, BrokerApis};
use crate::wire;

/// Kafka clients keep at most 5 requests in flight per connection by default.
pub const MAX_IN_FLIGHT_DEFAULT: usize = 5;
/// Upper bound on requests in flight per connection: beyond this, queueing only adds latency and memory.
pub const MAX_IN_FLIGHT_LIMIT: usize = 256;
/// Buffer for reading response frames; larger reads bypass it and land straight in the frame.
const READ_BUFFER_BYTES: usize = 64 * 1024;

/// How a connection identifies itself and how much it pipelines.
#[derive(Debug, Clone)]
pub struct ConnectionOptions {
    /// Sent as every request header's client id and as ApiVersions' software name, so broker logs and
    /// quotas can tell this client's traffic apart. Letters, digits, `-` and `.`.
    pub client_id: String,
    /// Requests outstanding on one connection at most (1..=[`MAX_IN_FLIGHT_LIMIT`]).
    pub max_in_flight: usize,
}

impl Default for ConnectionOptions {
    fn default() -> Self {
        ConnectionOptions { client_id: "sluice-client".to_string(), max_in_flight: MAX_IN_FLIGHT_DEFAULT }
    }
}

/// A pipelined connection to one broker. Clones share the socket.
#[derive(Clone)]
pub struct Connection {
    shared: Arc<Shared>,
}

struct Shared {
    addr: String,
    client_id: String,
    /// Requests for the writer task, in the order they go on the wire.
    requests: mpsc::Sender<Outgoing>,
    /// One permit per outstanding request: queued, written, or awaiting its response.
    in_flight: Arc<Semaphore>,
    next_correlation_id: AtomicI32,
    /// Set when either task stops: the connection takes no more requests.
    closed: Arc<AtomicBool>,
    /// Both tasks end when the last handle (connection or pending response) is dropped.
    tasks: [AbortHandle; 2],
}

impl Drop for Shared {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// A request on its way to the writer task.
struct Outgoing {
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    body: Bytes,
    reply: Reply,
    permit: OwnedSemaphorePermit,
}

enum Reply {
    /// The response frame, header included.
    Response(oneshot::Sender<Result<Bytes>>),
    /// A request without a response (Produce with acks=0): done once written.
    Written(oneshot::Sender<Result<()>>),
}

impl Reply {
    fn fail(self, error: ClientError) {
        match self {
            Reply::Response(tx) => {
                let _ = tx.send(Err(error));
            }
            Reply::Written(tx) => {
                let _ = tx.send(Err(error));
            }
        }
    }
}

/// A written request whose response the reader task awaits.
struct InFlight {
    api_key: ApiKey,
    correlation_id: i32,
    reply: oneshot::Sender<Result<Bytes>>,
    /// Released when the response is delivered (or the connection fails).
    _permit: OwnedSemaphorePermit,
}

impl Connection {
    /// Connects to `addr` (bounded by [`wire::CONNECT_TIMEOUT`]) and starts the writer and reader tasks.
    pub async fn open(addr: &str, options: &ConnectionOptions) -> Result<Connection> {
        if !(1..=MAX_IN_FLIGHT_LIMIT).contains(&options.max_in_flight) {
            return Err(ClientError::InvalidRequest(format!(
                "max_in_flight must be 1..={MAX_IN_FLIGHT_LIMIT}, not {}",
                options.max_in_flight
            )));
        }
        let stream = wire::connect(addr).await?;
        let (read_half, write_half) = stream.into_split();
        let (requests_tx, requests_rx) = mpsc::channel(options.max_in_flight);
        let (in_flight_tx, in_flight_rx) = mpsc::channel(options.max_in_flight);
        let (stop_tx, stop_rx) = watch::channel(false);
        let stop = Arc::new(stop_tx);
        let closed = Arc::new(AtomicBool::new(false));
        let writer = tokio::spawn(write_loop(
            write_half,
            requests_rx,
            in_flight_tx,
            Stopper { stop: stop.clone(), closed: closed.clone(), watch: stop_rx.clone() },
            addr.to_string(),
            options.client_id.clone(),
        ));
        let reader = tokio::spawn(read_loop(
            BufReader::with_capacity(READ_BUFFER_BYTES, read_half),
            in_flight_rx,
            Stopper { stop, closed: closed.clone(), watch: stop_rx },
            addr.to_string(),
        ));
        Ok(Connection {
            shared: Arc::new(Shared {
                addr: addr.to_string(),
                client_id: options.client_id.clone(),
                requests: requests_tx,
                in_flight: Arc::new(Semaphore::new(options.max_in_flight)),
                next_correlation_id: AtomicI32::new(0),
                closed,
                tasks: [writer.abort_handle(), reader.abort_handle()],
            }),
        })
    }

    pub fn addr(&self) -> &str {
        &self.shared.addr
    }

    /// True once the connection failed; it takes no more requests.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    /// Queues `request` at `version` and returns once it is queued (waiting first while the
    /// connection already has its maximum in flight). The response comes from [`Pending::wait`].
    pub async fn send<R: Request>(&self, request: &R, version: i16) -> Result<Pending<R::Response>> {
        let api_key = api_key_of::<R>()?;
        let body = wire::encode_body(request, api_key, version)?;
        self.send_encoded(api_key, version, body).await
    }

    /// Like [`Connection::send`] for a body encoded beforehand (with [`wire::encode_body`]).
    pub async fn send_encoded<T: Decodable>(&self, api_key: ApiKey, version: i16, body: Bytes) -> Result<Pending<T>> {
        let frame = self.send_raw(api_key, version, body).await?;
        Ok(Pending { frame, _response: PhantomData })
    }

    /// Queues a request whose response frame the caller decodes itself.
    pub async fn send_raw(&self, api_key: ApiKey, version: i16, body: Bytes) -> Result<PendingFrame> {
        let (tx, rx) = oneshot::channel();
        let correlation_id = self.enqueue(api_key, version, body, Reply::Response(tx)).await?;
        Ok(PendingFrame { connection: self.clone(), api_key, version, correlation_id, rx })
    }

    /// Sends a request the broker will not answer (Produce with acks=0); returns once it is written.
    pub async fn send_without_response(&self, api_key: ApiKey, version: i16, body: Bytes) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.enqueue(api_key, version, body, Reply::Written(tx)).await?;
        rx.await.unwrap_or_else(|_| Err(self.lost()))
    }

    /// Sends one request and waits for its response.
    pub async fn call<R: Request>(&self, request: &R, version: i16) -> Result<R::Response> {
        self.send(request, version).await?.wait().await
    }

    async fn enqueue(&self, api_key: ApiKey, version: i16, body: Bytes, reply: Reply) -> Result<i32> {
        if self.is_closed() {
            return Err(self.lost());
        }
        let permit = self.shared.in_flight.clone().acquire_owned().await.map_err(|_| self.lost())?;
        let correlation_id = self.shared.next_correlation_id.fetch_add(1, Ordering::Relaxed);
        let outgoing = Outgoing { api_key, version, correlation_id, body, reply, permit };
        self.shared.requests.send(outgoing).await.map_err(|_| self.lost())?;
        Ok(correlation_id)
    }

    fn lost(&self) -> ClientError {
        ClientError::ConnectionLost {
            addr: self.shared.addr.clone(),
            reason: format!("the connection to broker at {} failed before the response arrived", self.shared.addr),
        }
    }

    /// Asks the broker which API versions it supports. A broker that does not know our ApiVersions
    /// version answers UNSUPPORTED_VERSION in the v0 layout with its own range, and we retry once at the
    /// newest version we share.
    pub async fn api_versions(&self) -> Result<BrokerApis> {
        let addr = self.addr().to_string();
        let mut version = API_VERSIONS_VERSION;
        for _attempt in 0..2 {
            let request = ApiVersionsRequest::default()
                .with_client_software_name(StrBytes::from_string(self.shared.client_id.clone()))
                .with_client_software_version(StrBytes::from_static_str(env!("CARGO_PKG_VERSION")));
            let body = wire::encode_body(&request, ApiKey::ApiVersions, version)?;
            let pending = self.send_raw(ApiKey::ApiVersions, version, body).await?;
            let correlation_id = pending.correlation_id;
            let mut frame = pending.wait().await?;
            // ApiVersions responses always use header v0, so old clients can parse the error below.
            let header = ResponseHeader::decode(&mut frame, ApiKey::ApiVersions.response_header_version(version))
                .map_err(|e| ClientError::protocol(&addr, format!("malformed ApiVersions response header from {addr}: {e:#}")))?;
            if header.correlation_id != correlation_id {
                return Err(ClientError::protocol(
                    &addr,
                    format!("broker at {addr} answered correlation id {} where {correlation_id} was due", header.correlation_id),
                ));
            }
            // The error code leads the body in every version; peek at it to pick the layout to decode.
            let error_code = frame.get(..2).map(|b| i16::from_be_bytes([b[0], b[1]]));
            let layout = if error_code == Some(codes::UNSUPPORTED_VERSION) { 0 } else { version };
            let response = ApiVersionsResponse::decode(&mut frame, layout)
                .map_err(|e| ClientError::protocol(&addr, format!("malformed ApiVersions v{layout} response from {addr}: {e:#}")))?;
            let apis = BrokerApis::new(&addr, response.api_keys.iter().map(|k| (k.api_key, (k.min_version, k.max_version))));
            match response.error_code {
                codes::NONE => return Ok(apis),
                codes::UNSUPPORTED_VERSION => {
                    let retry = apis.pick(ApiKey::ApiVersions, (0, API_VERSIONS_VERSION))?;
                    if retry == version {
                        break;
                    }
                    version = retry;
                }
                code => return Err(ClientError::kafka(format!("ApiVersions on {addr}"), crate::KafkaError::new(code, None))),
            }
        }
        Err(ClientError::protocol(&addr, format!("broker at {addr} kept rejecting ApiVersions as UNSUPPORTED_VERSION")))
    }
}

/// A sent request's response frame, still to arrive.
pub struct PendingFrame {
    /// Keeps the connection's tasks alive until the response is in.
    connection: Connection,
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    rx: oneshot::Receiver<Result<Bytes>>,
}

impl PendingFrame {
    pub fn correlation_id(&self) -> i32 {
        self.correlation_id
    }

    /// The response frame (header included), whose correlation id the reader already checked.
    pub async fn wait(self) -> Result<Bytes> {
        self.rx.await.unwrap_or_else(|_| Err(self.connection.lost()))
    }

    async fn decode<T: Decodable>(self) -> Result<T> {
        let (api_key, version, correlation_id) = (self.api_key, self.version, self.correlation_id);
        let connection = self.connection.clone();
        let frame = self.wait().await?;
        wire::decode_response(api_key, version, correlation_id, frame, connection.addr())
    }
}

/// A sent request's decoded response, still to arrive.
pub struct Pending<T> {
    frame: PendingFrame,
    _response: PhantomData<fn() -> T>,
}

impl<T: Decodable> Pending<T> {
    pub async fn wait(self) -> Result<T> {
        self.frame.decode().await
    }
}

fn api_key_of<R: Request>() -> Result<ApiKey> {
    ApiKey::try_from(R::KEY).map_err(|()| ClientError::InvalidRequest(format!("unknown api key {}", R::KEY)))
}

/// Shared by the writer and reader tasks: whichever fails first stops the other and closes the
/// connection to new requests.
struct Stopper {
    stop: Arc<watch::Sender<bool>>,
    closed: Arc<AtomicBool>,
    watch: watch::Receiver<bool>,
}

impl Stopper {
    fn stop(&self) {
        self.closed.store(true, Ordering::Release);
        self.stop.send_replace(true);
    }

    async fn stopped(&mut self) {
        // An error means the sender is gone, which also means stop.
        let _ = self.watch.wait_for(|stopped| *stopped).await;
    }
}

async fn write_loop(
    mut writer: OwnedWriteHalf,
    mut requests: mpsc::Receiver<Outgoing>,
    in_flight: mpsc::Sender<InFlight>,
    mut stopper: Stopper,
    addr: String,
    client_id: String,
) {
    loop {
        let outgoing = tokio::select! {
            biased;
            () = stopper.stopped() => break,
            next = requests.recv() => match next {
                Some(outgoing) => outgoing,
                None => break,
            },
        };
        let Outgoing { api_key, version, correlation_id, body, reply, permit } = outgoing;
        let prefix = match wire::request_prefix(api_key, version, correlation_id, &client_id, body.len()) {
            Ok(prefix) => prefix,
            Err(error) => {
                // Nothing was written: this request fails, the connection is fine.
                reply.fail(error);
                continue;
            }
        };
        let written = tokio::select! {
            biased;
            () = stopper.stopped() => {
                reply.fail(lost(&addr));
                break;
            }
            written = tokio::time::timeout(wire::RESPONSE_TIMEOUT, wire::write_frame(&mut writer, prefix, body, &addr)) => written,
        };
        let written = written.unwrap_or_else(|_| {
            Err(ClientError::ConnectionLost {
                addr: addr.clone(),
                reason: format!(
                    "sending a {api_key:?} request to broker at {addr} did not finish within {}s",
                    wire::RESPONSE_TIMEOUT.as_secs()
                ),
            })
        });
        if let Err(error) = written {
            reply.fail(error);
            break;
        }
        match reply {
            Reply::Written(tx) => {
                drop(permit);
                let _ = tx.send(Ok(()));
            }
            Reply::Response(tx) => {
                let entry = InFlight { api_key, correlation_id, reply: tx, _permit: permit };
                if in_flight.send(entry).await.is_err() {
                    break;
                }
            }
        }
    }
    stopper.stop();
    // Requests still queued are dropped with the receiver: their waiters see the connection lost.
}

async fn read_loop(mut reader: BufReader<OwnedReadHalf>, mut in_flight: mpsc::Receiver<InFlight>, mut stopper: Stopper, addr: String) {
    loop {
        let entry = tokio::select! {
            biased;
            () = stopper.stopped() => break,
            next = in_flight.recv() => match next {
                Some(entry) => entry,
                None => break,
            },
        };
        let frame = tokio::select! {
            biased;
            () = stopper.stopped() => {
                let _ = entry.reply.send(Err(lost(&addr)));
                break;
            }
            frame = wire::read_frame_timed(&mut reader, &addr, entry.api_key) => frame,
        };
        let checked = frame.and_then(|frame| match wire::frame_correlation_id(&frame) {
            Some(id) if id == entry.correlation_id => Ok(frame),
            other => Err(ClientError::protocol(
                &addr,
                format!(
                    "broker at {addr} answered correlation id {other:?} where {} was due; responses must come back in request order",
                    entry.correlation_id
                ),
            )),
        });
        let failed = checked.is_err();
        let _ = entry.reply.send(checked);
        if failed {
            break;
        }
    }
    stopper.stop();
    in_flight.close();
    while let Ok(entry) = in_flight.try_recv() {
        let _ = entry.reply.send(Err(lost(&addr)));
    }
}

fn lost(addr: &str) -> ClientError {
    ClientError::ConnectionLost {
        addr: addr.to_string(),
        reason: format!("the connection to broker at {addr} failed before the response arrived"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{BufMut, BytesMut};
    use kafka_protocol::messages::{MetadataRequest, MetadataResponse};
    use kafka_protocol::protocol::Encodable;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A peer that reads `n` Metadata requests before answering any, then answers them in order with the
    /// request's correlation id (or a wrong one when `corrupt`), each naming its position as cluster id.
    async fn peer(n: usize, corrupt: bool) -> (String, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let task = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let mut ids = Vec::new();
            for _ in 0..n {
                let len = socket.read_u32().await.expect("length") as usize;
                let mut frame = vec![0u8; len];
                socket.read_exact(&mut frame).await.expect("frame");
                ids.push(i32::from_be_bytes(frame[4..8].try_into().expect("id")));
            }
            for (position, id) in ids.into_iter().enumerate() {
                let mut body = BytesMut::new();
                ResponseHeader::default()
                    .with_correlation_id(if corrupt { id + 100 } else { id })
                    .encode(&mut body, ApiKey::Metadata.response_header_version(9))
                    .expect("header");
                MetadataResponse::default()
                    .with_cluster_id(Some(StrBytes::from_string(position.to_string())))
                    .encode(&mut body, 9)
                    .expect("encode");
                let mut out = BytesMut::new();
                out.put_u32(body.len() as u32);
                out.extend_from_slice(&body);
                socket.write_all(&out).await.expect("write");
            }
            // Stay open until the client is done.
            let _ = socket.read_u8().await;
        });
        (addr, task)
    }

    #[tokio::test]
    async fn requests_pipeline_and_responses_match_in_order() {
        let (addr, _peer) = peer(4, false).await;
        let options = ConnectionOptions { client_id: "test".into(), max_in_flight: 4 };
        let conn = Connection::open(&addr, &options).await.expect("open");
        // All four are sent before any response exists: the peer answers only after reading four.
        let mut pending = Vec::new();
        for _ in 0..4 {
            pending.push(conn.send(&MetadataRequest::default().with_topics(None), 9).await.expect("send"));
        }
        for (position, p) in pending.into_iter().enumerate() {
            let response = p.wait().await.expect("response");
            assert_eq!(response.cluster_id.as_deref(), Some(position.to_string().as_str()));
        }
        assert!(!conn.is_closed());
    }

    #[tokio::test]
    async fn an_out_of_order_answer_closes_the_connection_for_everyone() {
        let (addr, _peer) = peer(2, true).await;
        let conn = Connection::open(&addr, &ConnectionOptions::default()).await.expect("open");
        let first = conn.send(&MetadataRequest::default().with_topics(None), 9).await.expect("send");
        let second = conn.send(&MetadataRequest::default().with_topics(None), 9).await.expect("send");
        let error = first.wait().await.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains("responses must come back in request order"), "{error}");
        assert!(matches!(second.wait().await, Err(ClientError::ConnectionLost { .. })));
        assert!(conn.is_closed());
        assert!(matches!(conn.send(&MetadataRequest::default(), 9).await, Err(ClientError::ConnectionLost { .. })));
    }

    #[tokio::test]
    async fn refused_connections_name_the_address() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        drop(listener);
        let error = Connection::open(&addr, &ConnectionOptions::default()).await.err().expect("refused");
        assert!(error.is_connect_failure() && error.to_string().contains(&addr), "{error}");
        let bad = ConnectionOptions { max_in_flight: 0, ..ConnectionOptions::default() };
        assert!(matches!(Connection::open(&addr, &bad).await, Err(ClientError::InvalidRequest(_))));
    }
}
