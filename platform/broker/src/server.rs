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
//! at most `queued.max.requests` requests ahead of its writer; `max.connections` bounds connections;
//! idle connections close after `connections.max.idle.ms`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use kafka_protocol::messages::ApiKey;
use sluice_protocol::{DecodeError, FRAME_LENGTH_BYTES, decode_request, encode_response, parse_frame_length};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};

use crate::broker::Broker;
use crate::handlers::{self, ConnCtx, Reply};

/// A frame's buffer grows by at most this much per read, so memory follows received bytes.
const FRAME_READ_STEP_BYTES: usize = 1024 * 1024;
/// Responses are written once this many bytes are queued, or when no more are ready.
const WRITE_COALESCE_BYTES: usize = 1024 * 1024;
/// An output buffer that grew past this for a large fetch is released after the write.
const OUTPUT_BUFFER_KEEP_BYTES: usize = 4 * 1024 * 1024;

struct InFlight {
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    reply: Reply,
    started: Instant,
}

pub async fn run_kafka_listener(broker: Arc<Broker>, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
    let connection_slots = Arc::new(Semaphore::new(broker.config.max_connections()));
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
        let _ = stream.set_nodelay(true);
        let broker = Arc::clone(&broker);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            broker.metrics.connections.inc();
            if let Err(reason) = serve_connection(&broker, stream, peer, shutdown).await {
                tracing::debug!(%peer, reason, "connection closed");
            }
            broker.metrics.connections.dec();
            drop(permit);
        });
    }
}

async fn serve_connection(
    broker: &Arc<Broker>,
    stream: TcpStream,
    peer: SocketAddr,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    let ctx = ConnCtx { local_addr: stream.local_addr().map_err(|e| e.to_string())?, peer_addr: peer };
    let (mut reader, writer) = stream.into_split();
    let (sender, receiver) = mpsc::channel::<InFlight>(broker.config.queued_requests_max());
    let writer_task = tokio::spawn(write_responses(Arc::clone(broker), writer, receiver));
    let idle = Duration::from_millis(broker.config.connection_idle_ms());
    let request_bytes_max = broker.config.request_bytes_max();
    let result = loop {
        let mut prefix = [0u8; FRAME_LENGTH_BYTES];
        let read = tokio::select! {
            read = tokio::time::timeout(idle, reader.read_exact(&mut prefix)) => read,
            _ = shutdown.changed() => break Ok(()),
        };
        match read {
            Err(_) => break Err("idle timeout".to_string()),
            Ok(Err(error)) if error.kind() == std::io::ErrorKind::UnexpectedEof => break Ok(()),
            Ok(Err(error)) => break Err(error.to_string()),
            Ok(Ok(_)) => {}
        }
        let length = match parse_frame_length(prefix, request_bytes_max) {
            Ok(length) => length,
            Err(error) => {
                broker.metrics.decode_errors.inc();
                tracing::warn!(%peer, %error, "closing connection: bad frame");
                break Err(error.to_string());
            }
        };
        let mut frame = BytesMut::new();
        while frame.len() < length {
            frame.reserve((length - frame.len()).min(FRAME_READ_STEP_BYTES));
            let limit = length - frame.len();
            let read = tokio::time::timeout(idle, (&mut reader).take(limit as u64).read_buf(&mut frame)).await;
            match read {
                Ok(Ok(0)) => return finish(sender, writer_task, Err("peer closed mid-request".into())).await,
                Ok(Ok(_)) => {}
                Ok(Err(error)) => return finish(sender, writer_task, Err(error.to_string())).await,
                Err(_) => return finish(sender, writer_task, Err("idle timeout mid-request".into())).await,
            }
        }
        let started = Instant::now();
        let request = match decode_request(frame.freeze()) {
            Ok(request) => request,
            Err(error) => match error_reply(broker, &error) {
                Some(in_flight) => {
                    if sender.send(in_flight).await.is_err() {
                        break Err("writer closed".into());
                    }
                    continue;
                }
                None => {
                    broker.metrics.decode_errors.inc();
                    tracing::warn!(%peer, %error, "closing connection: undecodable request");
                    break Err(error.to_string());
                }
            },
        };
        let api_key = request.api_key;
        let version = request.version;
        let correlation_id = request.header.correlation_id;
        if let Some(api) = broker.metrics.api(api_key) {
            api.requests.inc();
        }
        let reply = handlers::dispatch(broker, &ctx, request).await;
        if sender.send(InFlight { api_key, version, correlation_id, reply, started }).await.is_err() {
            break Err("writer closed".into());
        }
    };
    finish(sender, writer_task, result).await
}

async fn finish(
    sender: mpsc::Sender<InFlight>,
    writer_task: tokio::task::JoinHandle<()>,
    result: Result<(), String>,
) -> Result<(), String> {
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
            if let Some(api) = broker.metrics.api(ApiKey::ApiVersions) {
                api.errors.inc();
            }
            Some(InFlight {
                api_key: ApiKey::ApiVersions,
                version: 0,
                correlation_id: meta.correlation_id,
                reply: Reply::Ready(handlers::api_versions::unsupported_version()),
                started: Instant::now(),
            })
        }
        DecodeError::UnsupportedVersion { api_key, .. } | DecodeError::Malformed { api_key, .. } => {
            if let Some(api) = broker.metrics.api(*api_key) {
                api.errors.inc();
            }
            None
        }
        _ => None,
    }
}

async fn write_responses(broker: Arc<Broker>, mut writer: tokio::net::tcp::OwnedWriteHalf, mut receiver: mpsc::Receiver<InFlight>) {
    let mut out = BytesMut::with_capacity(64 * 1024);
    while let Some(in_flight) = receiver.recv().await {
        let body = match in_flight.reply {
            Reply::Ready(body) => Some(body),
            Reply::Deferred(future) => Some(future.await),
            Reply::NoResponse => None,
        };
        if let Some(body) = body
            && let Err(error) = encode_response(in_flight.api_key, in_flight.version, in_flight.correlation_id, &body, &mut out)
        {
            tracing::error!(%error, "cannot encode response; closing connection");
            return;
        }
        if let Some(api) = broker.metrics.api(in_flight.api_key) {
            api.latency.observe(in_flight.started.elapsed().as_secs_f64());
        }
        if receiver.is_empty() || out.len() >= WRITE_COALESCE_BYTES {
            if writer.write_all(&out).await.is_err() {
                return;
            }
            if out.capacity() > OUTPUT_BUFFER_KEEP_BYTES {
                out = BytesMut::with_capacity(64 * 1024);
            } else {
                out.clear();
            }
        }
    }
    if !out.is_empty() {
        let _ = writer.write_all(&out).await;
    }
    let _ = writer.shutdown().await;
}
