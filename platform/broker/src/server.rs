//! The Kafka listener: accepts connections and runs each as a read → dispatch → write pipeline.
//!
//! Per connection, the reading task decodes one request at a time and runs its handler; handlers do
//! their ordered work (appending, joining a group) before returning, and may hand back the rest as a
//! deferred future (waiting for an fsync, a long-poll fetch). A writer task awaits those in request
//! order and writes responses, so Kafka's one-response-per-request-in-order contract holds while
//! several requests of one connection wait for the same group commit.
//!
//! Limits: frames are capped by `socket.request.max.bytes` and their buffers grow only as bytes
//! actually arrive (a peer claiming 100 MiB and sending nothing costs nothing); each connection reads
//! at most `queued.max.requests` requests ahead of its writer, and stops reading while its built but
//! unsent replies exceed `socket.reply.buffer.max.bytes`; every frame's bytes are reserved from
//! `queued.max.request.bytes` as they arrive; `max.connections` bounds connections and
//! `max.connections.per.ip` those from one address; connections that send nothing, or whose peer reads
//! nothing, for `connections.max.idle.ms` are closed, and so are peers whose request does not arrive
//! whole within `socket.request.read.timeout.ms` of its first byte (a slow drip cannot hold a slot).
//! See `budget` for the memory budgets.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use kafka_protocol::messages::ApiKey;
use rustix::net::SendFlags;
use sluice_protocol::{
    DecodeError, EncodeError, FRAME_LENGTH_BYTES, FrameError, decode_request, encode_fetch_framing, encode_response, parse_frame_length,
};
use sluice_storage::FileSlice;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};

use crate::broker::Broker;
use crate::budget::{ByteBudget, Charge};
use crate::handlers::fetch::FetchReply;
use crate::handlers::{self, ConnCtx, Reply, Response};

/// A frame's buffer grows by at most this much per read, so memory follows received bytes.
const FRAME_READ_STEP_BYTES: usize = 1024 * 1024;
/// Responses are written once this many bytes are queued, or when no more are ready.
const WRITE_COALESCE_BYTES: usize = 1024 * 1024;
/// An output buffer that grew past this is released after the write.
const OUTPUT_BUFFER_KEEP_BYTES: usize = 4 * 1024 * 1024;
/// The most one `sendfile` call may send on Linux.
const SENDFILE_CALL_BYTES_MAX: usize = 0x7fff_f000;
/// Chunks of a stored range copied through memory where `sendfile` is not available.
const COPY_CHUNK_BYTES: usize = 256 * 1024;
/// How long a request waits for a starting broker to catch up with the controller quorum before its
/// connection is closed (the client then asks another broker): a cluster forming or a restarted
/// broker catches up within a second or two; longer means no quorum.
const CATCH_UP_WAIT: Duration = Duration::from_secs(5);

struct InFlight {
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    reply: Reply,
    started: Instant,
    /// The reply's bytes while it waits for the writer (Fetch replies built by the reader).
    charges: Vec<Charge>,
}

/// Connections open per peer address, for `max.connections.per.ip`.
#[derive(Default)]
struct ConnectionsPerIp {
    open: parking_lot::Mutex<HashMap<IpAddr, usize>>,
}

impl ConnectionsPerIp {
    fn try_open(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<IpSlot> {
        let mut open = self.open.lock();
        let count = open.entry(ip).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(IpSlot { table: Arc::clone(self), ip })
    }
}

struct IpSlot {
    table: Arc<ConnectionsPerIp>,
    ip: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut open = self.table.open.lock();
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

pub(crate) async fn run_kafka_listener(broker: Arc<Broker>, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
    let connection_slots = Arc::new(Semaphore::new(broker.config().max_connections()));
    let per_ip = Arc::new(ConnectionsPerIp::default());
    let per_ip_max = broker.config().max_connections_per_ip();
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&connection_slots).acquire_owned() => match permit { Ok(p) => p, Err(_) => return },
            _ = shutdown.changed() => return,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(error) => {
                    // Typically EMFILE: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let Some(ip_slot) = per_ip.try_open(peer.ip(), per_ip_max) else {
            broker.metrics().connections_refused.inc();
            tracing::warn!(%peer, max = per_ip_max, "closing connection: max.connections.per.ip reached for this address");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let broker = Arc::clone(&broker);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            broker.metrics().connections.inc();
            if let Err(reason) = serve_connection(&broker, stream, peer, shutdown).await {
                tracing::debug!(%peer, %reason, "connection closed");
            }
            broker.metrics().connections.dec();
            drop(ip_slot);
            drop(permit);
        });
    }
}

/// Why a connection ended other than by the peer closing it between requests (for the debug log).
#[derive(Debug)]
enum Disconnect {
    IdleTimeout,
    /// A request that did not arrive whole within `socket.request.read.timeout.ms`.
    RequestTimeout,
    Io(std::io::Error),
    /// A frame length out of bounds.
    BadFrame(FrameError),
    /// A request that cannot be decoded.
    BadRequest(DecodeError),
    PeerClosedMidRequest,
    WriterClosed,
    /// The broker had not caught up with the controller quorum within [`CATCH_UP_WAIT`].
    NotCaughtUp,
}

impl std::fmt::Display for Disconnect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Disconnect::IdleTimeout => f.write_str("idle timeout"),
            Disconnect::RequestTimeout => f.write_str("request not received whole within socket.request.read.timeout.ms"),
            Disconnect::Io(error) => write!(f, "{error}"),
            Disconnect::BadFrame(error) => write!(f, "bad frame: {error}"),
            Disconnect::BadRequest(error) => write!(f, "undecodable request: {error}"),
            Disconnect::PeerClosedMidRequest => f.write_str("peer closed mid-request"),
            Disconnect::WriterClosed => f.write_str("writer closed"),
            Disconnect::NotCaughtUp => write!(f, "this broker has not caught up with the controller quorum within {CATCH_UP_WAIT:?}"),
        }
    }
}

async fn serve_connection(
    broker: &Arc<Broker>,
    stream: TcpStream,
    peer: SocketAddr,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), Disconnect> {
    let ctx = ConnCtx { local_addr: stream.local_addr().map_err(Disconnect::Io)?, peer_addr: peer };
    let (mut reader, writer) = stream.into_split();
    let (sender, receiver) = mpsc::channel::<InFlight>(broker.config().queued_requests_max());
    let unsent = ByteBudget::new(broker.config().connection_reply_bytes_max());
    let writer_task = tokio::spawn(write_responses(Arc::clone(broker), writer, receiver, Arc::clone(&unsent)));
    let idle = Duration::from_millis(broker.config().connection_idle_ms());
    let request_bytes_max = broker.config().request_bytes_max();
    let request_timeout = Duration::from_millis(broker.config().request_read_timeout_ms());
    let result = loop {
        // Muted while the peer leaves its replies unread: the writer wakes us as it writes them (or
        // closes the connection when the peer reads nothing for `connections.max.idle.ms`).
        tokio::select! {
            _ = unsent.wait_within() => {}
            _ = sender.closed() => break Err(Disconnect::WriterClosed),
            _ = shutdown.changed() => break Ok(()),
        }
        let mut prefix = [0u8; FRAME_LENGTH_BYTES];
        let read = tokio::select! {
            read = tokio::time::timeout(idle, reader.read_exact(&mut prefix[..1])) => read,
            _ = shutdown.changed() => break Ok(()),
        };
        match read {
            Err(_) => break Err(Disconnect::IdleTimeout),
            Ok(Err(error)) if error.kind() == std::io::ErrorKind::UnexpectedEof => break Ok(()),
            Ok(Err(error)) => break Err(Disconnect::Io(error)),
            Ok(Ok(_)) => {}
        }
        // From its first byte, the request has `socket.request.read.timeout.ms` to arrive whole.
        let deadline = tokio::time::Instant::now() + request_timeout;
        match tokio::time::timeout_at(deadline, reader.read_exact(&mut prefix[1..])).await {
            Err(_) => break Err(Disconnect::RequestTimeout),
            Ok(Err(error)) if error.kind() == std::io::ErrorKind::UnexpectedEof => break Err(Disconnect::PeerClosedMidRequest),
            Ok(Err(error)) => break Err(Disconnect::Io(error)),
            Ok(Ok(_)) => {}
        }
        let length = match parse_frame_length(prefix, request_bytes_max) {
            Ok(length) => length,
            Err(error) => {
                broker.metrics().decode_errors.inc();
                tracing::warn!(%peer, %error, "closing connection: bad frame");
                break Err(Disconnect::BadFrame(error));
            }
        };
        // The bytes that arrive are charged to `queued.max.request.bytes` (each read waits while it is
        // spent); the charge is held until the handler has returned.
        let mut reserved = broker.request_bytes().charge(0);
        let mut frame = BytesMut::new();
        while frame.len() < length {
            let step = (length - frame.len()).min(FRAME_READ_STEP_BYTES);
            if tokio::time::timeout_at(deadline, broker.request_bytes().wait_for_room(!frame.is_empty())).await.is_err() {
                return finish(sender, writer_task, Err(Disconnect::RequestTimeout)).await;
            }
            frame.reserve(step);
            let limit = length - frame.len();
            let read = tokio::time::timeout_at(deadline, (&mut reader).take(limit as u64).read_buf(&mut frame)).await;
            match read {
                Ok(Ok(0)) => return finish(sender, writer_task, Err(Disconnect::PeerClosedMidRequest)).await,
                Ok(Ok(read)) => reserved.grow(read),
                Ok(Err(error)) => return finish(sender, writer_task, Err(Disconnect::Io(error))).await,
                Err(_) => return finish(sender, writer_task, Err(Disconnect::RequestTimeout)).await,
            }
        }
        let started = Instant::now();
        let request = match decode_request(frame.freeze()) {
            Ok(request) => request,
            Err(error) => match error_reply(broker, &error) {
                Some(in_flight) => {
                    if sender.send(in_flight).await.is_err() {
                        break Err(Disconnect::WriterClosed);
                    }
                    continue;
                }
                None => {
                    broker.metrics().decode_errors.inc();
                    tracing::warn!(%peer, %error, "closing connection: undecodable request");
                    break Err(Disconnect::BadRequest(error));
                }
            },
        };
        let api_key = request.api_key;
        let version = request.version;
        let correlation_id = request.header.correlation_id;
        if let Some(api) = broker.metrics().api(api_key) {
            api.requests.inc();
        }
        // A starting broker's view of the cluster may predate this process (a restarted broker's is
        // the one it died with): everything but the handshake waits until it has caught up.
        if api_key != ApiKey::ApiVersions && !broker.caught_up() {
            tokio::select! {
                waited = tokio::time::timeout(CATCH_UP_WAIT, broker.wait_caught_up()) => if waited.is_err() {
                    tracing::warn!(%peer, ?api_key, "closing connection: this broker has not caught up with the controller quorum \
                        (is a majority of the controller voters running?)");
                    return finish(sender, writer_task, Err(Disconnect::NotCaughtUp)).await;
                },
                _ = shutdown.changed() => break Ok(()),
            }
        }
        let reply = handlers::dispatch(broker, &ctx, request).await;
        drop(reserved);
        let charges = match &reply {
            Reply::Fetch(fetch) => charge_fetch(broker, &unsent, fetch),
            _ => Vec::new(),
        };
        if sender.send(InFlight { api_key, version, correlation_id, reply, started, charges }).await.is_err() {
            break Err(Disconnect::WriterClosed);
        }
    };
    finish(sender, writer_task, result).await
}

async fn finish(
    sender: mpsc::Sender<InFlight>,
    writer_task: tokio::task::JoinHandle<()>,
    result: Result<(), Disconnect>,
) -> Result<(), Disconnect> {
    drop(sender);
    let _ = writer_task.await;
    result
}

/// Requests that cannot be decoded still get an answer where Kafka gives one: an ApiVersions at a
/// version we do not know is answered with v0 and UNSUPPORTED_VERSION, so the client can pick a
/// version we do support. Everything else closes the connection, as Kafka does.
fn error_reply(broker: &Broker, error: &DecodeError) -> Option<InFlight> {
    match error {
        DecodeError::UnsupportedVersion { meta, api_key: ApiKey::ApiVersions, .. } => {
            if let Some(api) = broker.metrics().api(ApiKey::ApiVersions) {
                api.errors.inc();
            }
            Some(InFlight {
                api_key: ApiKey::ApiVersions,
                version: 0,
                correlation_id: meta.correlation_id,
                reply: Reply::Ready(handlers::api_versions::unsupported_version()),
                started: Instant::now(),
                charges: Vec::new(),
            })
        }
        DecodeError::UnsupportedVersion { api_key, .. }
        | DecodeError::Malformed { api_key, .. }
        | DecodeError::TrailingBytes { api_key, .. }
        | DecodeError::TooLarge { api_key, .. } => {
            if let Some(api) = broker.metrics().api(*api_key) {
                api.errors.inc();
            }
            None
        }
        _ => None,
    }
}

/// A Fetch reply's record bytes, held until it is written: against the connection's
/// `socket.reply.buffer.max.bytes` (its reader stops reading requests past it, so a peer that pipelines
/// Fetches and reads nothing has about one reply queued), and counted in the broker's gauge of unsent
/// Fetch bytes. The records are file ranges, not memory; the framing is small.
fn charge_fetch(broker: &Broker, unsent: &Arc<ByteBudget>, fetch: &FetchReply) -> Vec<Charge> {
    let bytes = fetch.record_bytes();
    if bytes == 0 {
        return Vec::new();
    }
    vec![unsent.charge(bytes), broker.fetch_reply_bytes().charge(bytes)]
}

async fn write_responses(
    broker: Arc<Broker>,
    mut writer: tokio::net::tcp::OwnedWriteHalf,
    mut receiver: mpsc::Receiver<InFlight>,
    unsent: Arc<ByteBudget>,
) {
    // A peer that reads nothing for this long is gone or hostile; its replies are dropped with it.
    let stall = Duration::from_millis(broker.config().connection_idle_ms());
    let mut out = Outgoing::default();
    let mut held: Vec<Charge> = Vec::new();
    while let Some(in_flight) = receiver.recv().await {
        held.extend(in_flight.charges);
        let response = match in_flight.reply {
            Reply::Ready(body) => Some(Response::Message(body)),
            Reply::Fetch(fetch) => Some(Response::Fetch(fetch)),
            Reply::Deferred(future) => {
                let response = future.await;
                if let Response::Fetch(fetch) = &response {
                    held.extend(charge_fetch(&broker, &unsent, fetch));
                }
                Some(response)
            }
            Reply::NoResponse => None,
        };
        if let Some(response) = response
            && let Err(error) = out.push(in_flight.api_key, in_flight.version, in_flight.correlation_id, response)
        {
            tracing::error!(%error, "cannot encode response; closing connection");
            return;
        }
        if let Some(api) = broker.metrics().api(in_flight.api_key) {
            api.latency.observe(in_flight.started.elapsed().as_secs_f64());
        }
        if receiver.is_empty() || out.queued_bytes() >= WRITE_COALESCE_BYTES {
            match tokio::time::timeout(stall, out.write_to(writer.as_ref())).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    tracing::debug!(%error, "closing connection: write failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!("closing connection: the peer read none of its replies for connections.max.idle.ms");
                    return;
                }
            }
            held.clear();
        }
    }
    if !out.is_empty() {
        let _ = tokio::time::timeout(stall, out.write_to(writer.as_ref())).await;
    }
    let _ = writer.shutdown().await;
}

/// Responses encoded and not yet written: their bytes, with the file ranges of Fetch replies to be
/// sent at positions among them.
#[derive(Default)]
struct Outgoing {
    out: BytesMut,
    /// (position in `out`, range): the range's bytes go before `out[position..]`. In order.
    splices: Vec<(usize, FileSlice)>,
    spliced_bytes: usize,
    /// For file systems that cannot `sendfile`: ranges are copied through this buffer instead.
    copy_buffer: Vec<u8>,
}

impl Outgoing {
    fn push(&mut self, api_key: ApiKey, version: i16, correlation_id: i32, response: Response) -> Result<(), EncodeError> {
        match response {
            Response::Message(body) => encode_response(api_key, version, correlation_id, &body, &mut self.out),
            Response::Fetch(fetch) => {
                let lengths: Vec<usize> = fetch.slices.iter().map(|s| s.iter().map(|slice| slice.len).sum()).collect();
                let positions = encode_fetch_framing(version, correlation_id, &fetch.response, &lengths, &mut self.out)?;
                for (position, slices) in positions.into_iter().zip(fetch.slices) {
                    for slice in slices {
                        self.spliced_bytes += slice.len;
                        self.splices.push((position, slice));
                    }
                }
                Ok(())
            }
        }
    }

    fn queued_bytes(&self) -> usize {
        self.out.len() + self.spliced_bytes
    }

    fn is_empty(&self) -> bool {
        self.queued_bytes() == 0
    }

    /// Writes everything queued, then forgets it.
    async fn write_to(&mut self, stream: &TcpStream) -> std::io::Result<()> {
        let mut cursor = 0;
        for (position, slice) in &self.splices {
            // MSG_MORE: the framing goes out in the same segments as the records after it.
            send_all(stream, &self.out[cursor..*position], true).await?;
            send_file(stream, slice, &mut self.copy_buffer).await?;
            cursor = *position;
        }
        send_all(stream, &self.out[cursor..], false).await?;
        self.splices.clear();
        self.spliced_bytes = 0;
        if self.out.capacity() > OUTPUT_BUFFER_KEEP_BYTES {
            self.out = BytesMut::with_capacity(64 * 1024);
        } else {
            self.out.clear();
        }
        if self.copy_buffer.capacity() > 0 {
            self.copy_buffer = Vec::new();
        }
        Ok(())
    }
}

async fn send_all(stream: &TcpStream, mut bytes: &[u8], more: bool) -> std::io::Result<()> {
    let flags = if more { SendFlags::MORE | SendFlags::NOSIGNAL } else { SendFlags::NOSIGNAL };
    while !bytes.is_empty() {
        stream.writable().await?;
        match stream.try_io(Interest::WRITABLE, || rustix::net::send(stream, bytes, flags).map_err(std::io::Error::from)) {
            Ok(sent) => bytes = bytes.get(sent..).unwrap_or_default(),
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// Sends a stored range with `sendfile`: from the page cache to the socket, with no copy through user
/// space. Where the file system cannot (`EINVAL`, `ENOSYS`, `EOPNOTSUPP`), the rest of the range is
/// copied through `copy_buffer` in chunks instead.
async fn send_file(stream: &TcpStream, slice: &FileSlice, copy_buffer: &mut Vec<u8>) -> std::io::Result<()> {
    let end = slice.position + slice.len as u64;
    let mut offset = slice.position;
    while offset < end {
        stream.writable().await?;
        let count = usize::try_from(end - offset).unwrap_or(usize::MAX).min(SENDFILE_CALL_BYTES_MAX);
        let sent = stream.try_io(Interest::WRITABLE, || {
            rustix::fs::sendfile(stream, &*slice.file, Some(&mut offset), count).map_err(std::io::Error::from)
        });
        match sent {
            Ok(0) => return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "a segment file ended inside a stored range")),
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(error)
                if matches!(
                    rustix::io::Errno::from_io_error(&error),
                    Some(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS | rustix::io::Errno::OPNOTSUPP)
                ) =>
            {
                return copy_range(stream, slice, offset, copy_buffer).await;
            }
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// `send_file` without `sendfile`: reads the rest of the range from `offset` in chunks and sends them.
async fn copy_range(stream: &TcpStream, slice: &FileSlice, mut offset: u64, copy_buffer: &mut Vec<u8>) -> std::io::Result<()> {
    let end = slice.position + slice.len as u64;
    while offset < end {
        let len = usize::try_from(end - offset).unwrap_or(usize::MAX).min(COPY_CHUNK_BYTES);
        copy_buffer.clear();
        let chunk = FileSlice { file: Arc::clone(&slice.file), position: offset, len };
        tokio::task::block_in_place(|| chunk.read_into(copy_buffer))?;
        send_all(stream, copy_buffer, true).await?;
        offset += len as u64;
    }
    Ok(())
}
