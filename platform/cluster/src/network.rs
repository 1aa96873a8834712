//! How controller nodes talk: one TCP connection per peer, carrying request/reply frames
//! `[len: u32][rmp-serde body]`, one request at a time per connection. The same listener takes Raft's
//! RPCs (AppendEntries, Vote, InstallSnapshot) and the requests any node forwards to the active
//! controller (metadata writes, broker heartbeats).
//!
//! Limits: a frame over [`FRAME_BYTES_MAX`] is refused before anything is allocated for it and the
//! connection closed; at most [`CONNECTIONS_MAX`] peers are served at once; a connection idle for
//! [`IDLE_TIMEOUT`], a request not answered within [`HANDLE_TIMEOUT`] or a reply not taken within
//! [`WRITE_TIMEOUT`] closes the connection; every call has a deadline.

use std::io;
use std::sync::{Arc, Weak};
use std::time::Duration;

use openraft::BasicNode;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable};
use openraft::network::{RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::controller::{Controller, HeartbeatReply, WriteError};
use crate::metadata::{Command, Committed};
use crate::{NodeId, TypeConfig};

/// The largest frame either side accepts: an AppendEntries of openraft's default 300 entries of
/// bounded commands, or one snapshot chunk ([`SNAPSHOT_CHUNK_BYTES`]), fit well inside it.
pub const FRAME_BYTES_MAX: usize = 32 * 1024 * 1024;
/// Snapshot chunk size handed to openraft.
pub const SNAPSHOT_CHUNK_BYTES: u64 = 4 * 1024 * 1024;
/// Peers served at once; more wait for a slot (a cluster has a handful of nodes).
pub const CONNECTIONS_MAX: usize = 64;
/// A connection that sends nothing for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest a request is worked on for a peer (a forwarded write waits for its commit).
pub const HANDLE_TIMEOUT: Duration = Duration::from_secs(15);
/// A reply the peer does not take within this closes the connection.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Serialize, Deserialize)]
pub(crate) enum Request {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// A metadata write forwarded to the node that believes it is the leader.
    Write(Command),
    Heartbeat {
        broker_id: i32,
        epoch: u64,
    },
}

#[derive(Serialize, Deserialize)]
pub(crate) enum Reply {
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    InstallSnapshot(Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>),
    Write(Result<Committed, WriteError>),
    Heartbeat(Result<HeartbeatReply, WriteError>),
}

async fn write_frame<T: Serialize>(stream: &mut TcpStream, value: &T) -> io::Result<()> {
    let body = rmp_serde::to_vec(value).map_err(io::Error::other)?;
    if body.len() > FRAME_BYTES_MAX {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("a {} byte frame exceeds {FRAME_BYTES_MAX}", body.len())));
    }
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    stream.write_all(&frame).await
}

async fn read_frame<T: DeserializeOwned>(stream: &mut TcpStream) -> io::Result<T> {
    let len = stream.read_u32().await? as usize;
    if len > FRAME_BYTES_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a peer announced a {len} byte frame; the limit is {FRAME_BYTES_MAX}"),
        ));
    }
    // Grown as bytes arrive, not allocated from the announced length: a peer that announces a large
    // frame and sends little costs little.
    let mut body = Vec::new();
    (&mut *stream).take(len as u64).read_to_end(&mut body).await?;
    if body.len() != len {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the peer closed the connection inside a frame"));
    }
    rmp_serde::from_slice(&body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("undecodable frame: {e}")))
}

/// A connection to one peer, opened on first use and again after any failure.
pub(crate) struct Peer {
    addr: String,
    stream: Option<TcpStream>,
}

impl Peer {
    pub(crate) fn new(addr: String) -> Peer {
        Peer { addr, stream: None }
    }

    /// Sends `request` and waits for its reply, all within `deadline`. Cancel-safe: the connection is
    /// taken out for the exchange and put back only after a complete one, so a caller that gives up
    /// (openraft times out its own RPCs too) drops it, and a late reply is never read as the answer
    /// to the next request.
    pub(crate) async fn call(&mut self, request: &Request, deadline: Duration) -> io::Result<Reply> {
        let addr = &self.addr;
        let taken = self.stream.take();
        let exchange = async move {
            let mut stream = match taken {
                Some(stream) => stream,
                None => {
                    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
                        .await
                        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("connecting to {addr} timed out")))??;
                    stream.set_nodelay(true)?;
                    stream
                }
            };
            write_frame(&mut stream, request).await?;
            let reply = read_frame(&mut stream).await?;
            Ok::<_, io::Error>((stream, reply))
        };
        match tokio::time::timeout(deadline, exchange).await {
            Ok(Ok((stream, reply))) => {
                self.stream = Some(stream);
                Ok(reply)
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, format!("{} did not answer within {deadline:?}", self.addr))),
        }
    }
}

/// Hands openraft one [`PeerNetwork`] per peer.
pub(crate) struct Network {
    /// This node, named in timeouts.
    pub(crate) source: NodeId,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerNetwork;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerNetwork {
        PeerNetwork { source: self.source, target, peer: Peer::new(node.addr.clone()) }
    }
}

pub(crate) struct PeerNetwork {
    source: NodeId,
    target: NodeId,
    peer: Peer,
}

type RpcResult<T, E = openraft::error::Infallible> = Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>;

impl PeerNetwork {
    async fn rpc<T, E>(
        &mut self,
        action: RPCTypes,
        request: Request,
        option: &RPCOption,
        pick: impl FnOnce(Reply) -> Option<Result<T, RaftError<NodeId, E>>>,
    ) -> RpcResult<T, E>
    where
        E: std::error::Error,
    {
        let reply = match self.peer.call(&request, option.hard_ttl()).await {
            Ok(reply) => reply,
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                return Err(RPCError::Timeout(Timeout { action, id: self.source, target: self.target, timeout: option.hard_ttl() }));
            }
            Err(e) => return Err(RPCError::Unreachable(Unreachable::new(&e))),
        };
        match pick(reply) {
            Some(Ok(response)) => Ok(response),
            Some(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            None => Err(RPCError::Network(NetworkError::new(&io::Error::new(io::ErrorKind::InvalidData, "a reply to another request")))),
        }
    }
}

impl RaftNetwork<TypeConfig> for PeerNetwork {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        self.rpc(RPCTypes::AppendEntries, Request::AppendEntries(rpc), &option, |r| match r {
            Reply::AppendEntries(r) => Some(r),
            _ => None,
        })
        .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.rpc(RPCTypes::InstallSnapshot, Request::InstallSnapshot(rpc), &option, |r| match r {
            Reply::InstallSnapshot(r) => Some(r),
            _ => None,
        })
        .await
    }

    async fn vote(&mut self, rpc: VoteRequest<NodeId>, option: RPCOption) -> RpcResult<VoteResponse<NodeId>> {
        self.rpc(RPCTypes::Vote, Request::Vote(rpc), &option, |r| match r {
            Reply::Vote(r) => Some(r),
            _ => None,
        })
        .await
    }
}

/// Serves peers on `listener` until this task is aborted (the controller's shutdown), which also
/// ends every connection it serves. It holds the controller weakly: a dropped controller ends it.
pub(crate) async fn serve(listener: TcpListener, controller: Weak<Controller>) {
    let slots = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    // Dropped with this task: aborts every connection task.
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of descriptors, most likely: wait instead of spinning.
                tracing::warn!(%error, "controller listener cannot accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let controller = controller.clone();
        connections.spawn(async move {
            let _permit = permit;
            let _ = stream.set_nodelay(true);
            if let Err(error) = serve_connection(stream, &controller).await
                && error.kind() != io::ErrorKind::UnexpectedEof
            {
                tracing::debug!(%peer, %error, "controller peer connection closed");
            }
        });
    }
}

async fn serve_connection(mut stream: TcpStream, controller: &Weak<Controller>) -> io::Result<()> {
    // The broker whose heartbeats this connection carries: when it closes, the leader looks at
    // that broker at once (its process may be gone).
    let mut heartbeats_of = None;
    let served = serve_requests(&mut stream, controller, &mut heartbeats_of).await;
    if let (Some(broker_id), Some(controller)) = (heartbeats_of, controller.upgrade()) {
        controller.heartbeat_connection_closed(broker_id);
    }
    served
}

async fn serve_requests(stream: &mut TcpStream, controller: &Weak<Controller>, heartbeats_of: &mut Option<i32>) -> io::Result<()> {
    loop {
        let request: Request = match tokio::time::timeout(IDLE_TIMEOUT, read_frame(stream)).await {
            Ok(request) => request?,
            Err(_) => return Ok(()),
        };
        if let Request::Heartbeat { broker_id, .. } = &request {
            *heartbeats_of = Some(*broker_id);
        }
        let Some(controller) = controller.upgrade() else { return Ok(()) };
        // A request that cannot be answered in time is dropped with its connection: the peer
        // has given up on it by then, and its slot must not be held.
        let Ok(reply) = tokio::time::timeout(HANDLE_TIMEOUT, controller.handle(request)).await else { return Ok(()) };
        drop(controller);
        match tokio::time::timeout(WRITE_TIMEOUT, write_frame(stream, &reply)).await {
            Ok(written) => written?,
            // A peer that does not read its replies loses its connection.
            Err(_) => return Ok(()),
        }
    }
}
