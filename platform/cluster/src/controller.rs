//! One node of the controller quorum: the Raft instance, its peer listener, the active controller's
//! duties (fencing brokers whose heartbeats stop) and the broker side of registration and heartbeats.
//!
//! Any node takes a metadata write or a heartbeat; a node that is not the leader forwards it to the
//! one that is, and while there is none (an election) the caller retries until [`REQUEST_TIMEOUT`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use openraft::error::{ClientWriteError, InitializeError, RaftError};
use openraft::{BasicNode, Raft, ServerState, SnapshotPolicy};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::log_store::LogStore;
use crate::metadata::{BrokerRegistration, Command, Committed, ELECTIONS_PER_COMMAND_MAX, Election, Metadata, Outcome};
use crate::network::{self, Network, Peer, Reply, Request, SNAPSHOT_CHUNK_BYTES};
use crate::state_machine::{SNAPSHOT_EVERY_ENTRIES, StateMachine};
use crate::{NodeId, TypeConfig};

/// How long a write or heartbeat waits for a leader (an election takes one to two election timeouts).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The deadline of one forwarded request.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(3);
/// Pause between attempts while there is no leader.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// How often the active controller looks for brokers whose session expired, or that missed a
/// heartbeat and have no listener any more.
const FENCE_CHECK_INTERVAL: Duration = Duration::from_millis(250);
/// How long the active controller waits for a TCP connection to an overdue broker's listener. Only a
/// refusal counts (no process listens: the broker is gone); a timeout proves nothing.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// When a broker's heartbeat connection closed, its listener is probed at once and again this much
/// later.
const SUSPECT_RECHECK: Duration = Duration::from_millis(50);
/// Raft's timing. Leaders send heartbeats every 100 ms. openraft's followers grant no vote within a
/// leader lease of `ELECTION_TIMEOUT_MAX_MS` after the leader's last heartbeat, and stand for
/// election only after the lease plus a random 0.6–1.2 s: 1.8–2.4 s without a word from the
/// leader. Kafka's KRaft is similar (`controller.quorum.fetch.timeout.ms` = 2000, then an election
/// timeout of 1000); much shorter timeouts elect needlessly on a loaded two-core machine. A leader
/// whose process is gone is replaced sooner: see [`LEADER_CHECK_INTERVAL`].
const RAFT_HEARTBEAT_MS: u64 = 100;
const ELECTION_TIMEOUT_MIN_MS: u64 = 600;
const ELECTION_TIMEOUT_MAX_MS: u64 = 1200;
/// How often a follower voter checks on the quorum's leader. Once the leader lease has passed
/// without a heartbeat, it probes the leader's voter address; if the connection is refused (no
/// process listens: the leader is gone, not slow), it stands for election at once instead of
/// waiting out Raft's random timeout. Survivors stand one after another, by voter id, `ELECT_STAGGER`
/// apart, so that two do not split the vote.
const LEADER_CHECK_INTERVAL: Duration = Duration::from_millis(50);
const ELECT_STAGGER: Duration = Duration::from_millis(300);
/// Log entries kept after a snapshot, so a briefly lagging follower catches up without one.
pub const LOG_KEPT_AFTER_SNAPSHOT: u64 = 1000;

/// What a node needs to join the quorum.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    pub node_id: NodeId,
    /// Every voter's id and controller address (`host:port`). A single voter needs no address.
    pub voters: BTreeMap<NodeId, String>,
    /// Where this node keeps its Raft log, vote and snapshot.
    pub dir: PathBuf,
    /// A broker whose heartbeats stop for this long is fenced (Kafka's `broker.session.timeout.ms`).
    pub session_timeout: Duration,
    /// How often a broker heartbeats (Kafka's `broker.heartbeat.interval.ms`).
    pub heartbeat_interval: Duration,
    /// A snapshot is taken after this many entries ([`SNAPSHOT_EVERY_ENTRIES`] by default) ...
    pub snapshot_every_entries: u64,
    /// ... and this many entries before it stay in the log ([`LOG_KEPT_AFTER_SNAPSHOT`] by default),
    /// so a briefly lagging follower catches up without a snapshot.
    pub log_kept_after_snapshot: u64,
    /// How often the active controller moves leadership back to preferred replicas (Kafka's
    /// `auto.leader.rebalance.enable` and `leader.imbalance.check.interval.seconds`); `None`: never
    /// on its own.
    pub leader_rebalance_interval: Option<Duration>,
    /// A broker is rebalanced when more than this share of the partitions it is preferred for are
    /// led by others (Kafka's `leader.imbalance.per.broker.percentage` / 100).
    pub leader_imbalance_ratio: f64,
}

impl ControllerConfig {
    /// A one-voter quorum: the embedded default.
    pub fn single(node_id: NodeId, dir: PathBuf) -> ControllerConfig {
        ControllerConfig {
            node_id,
            voters: BTreeMap::from([(node_id, String::new())]),
            dir,
            session_timeout: Duration::from_secs(9),
            heartbeat_interval: Duration::from_millis(500),
            snapshot_every_entries: SNAPSHOT_EVERY_ENTRIES,
            log_kept_after_snapshot: LOG_KEPT_AFTER_SNAPSHOT,
            leader_rebalance_interval: Some(Duration::from_secs(300)),
            leader_imbalance_ratio: 0.1,
        }
    }
}

/// Parses Kafka's `controller.quorum.voters` form: `1@host:port,2@host:port,3@host:port`.
pub fn parse_voters(text: &str) -> Result<BTreeMap<NodeId, String>, String> {
    let mut voters = BTreeMap::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (id, addr) = item.split_once('@').ok_or_else(|| format!("`{item}`: expected ID@HOST:PORT, e.g. 1@127.0.0.1:9093"))?;
        let id: NodeId = id.trim().parse().map_err(|_| format!("`{item}`: `{id}` is not a node id"))?;
        let (host, port) = addr.rsplit_once(':').ok_or_else(|| format!("`{item}`: `{addr}` has no :PORT"))?;
        if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(format!("`{item}`: `{addr}` is not HOST:PORT"));
        }
        if voters.insert(id, addr.to_string()).is_some() {
            return Err(format!("node {id} is listed twice"));
        }
    }
    if voters.is_empty() {
        return Err("no voters listed".into());
    }
    Ok(voters)
}

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("controller configuration: {0}")]
    Config(String),
    #[error("controller storage in {dir}: {source}")]
    Storage { dir: PathBuf, source: io::Error },
    #[error("cannot listen for controller peers on {addr}: {source}")]
    Listen { addr: String, source: io::Error },
    #[error("no controller leader answered within {0:?}: is a majority of the voters running and reachable?")]
    NoLeader(Duration),
    #[error("the metadata write failed: {0}")]
    Write(String),
    #[error("the controller stopped: {0}")]
    Stopped(String),
}

/// Why a node could not take a request itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum WriteError {
    #[error("not the controller leader")]
    NotLeader,
    #[error("{0}")]
    Failed(String),
}

/// The active controller's answer to a broker heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HeartbeatReply {
    Alive,
    /// The broker's registration is gone or superseded: it must register again.
    Reregister(String),
}

/// A voter as `sluice cluster` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Voter {
    pub id: NodeId,
    pub addr: String,
}

/// This node's view of the quorum.
#[derive(Debug, Clone, Serialize)]
pub struct ControllerStatus {
    pub node_id: NodeId,
    /// leader, follower, candidate or learner.
    pub role: &'static str,
    pub leader_id: Option<NodeId>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub last_applied_index: Option<u64>,
    pub voters: Vec<Voter>,
}

/// Forwarded requests in flight to one peer at once, besides heartbeats: several, so that a burst of
/// writes (a restarted broker's ISR changes, thousands at a time) is committed in batches.
const WRITE_LANES: usize = 4;

/// The connections to one peer for forwarded requests, each used one request at a time. Heartbeats
/// have their own, so that no burst of writes delays them past the session timeout (and the active
/// controller can read a closed heartbeat connection as a sign of a dead broker).
struct Lanes {
    heartbeats: tokio::sync::Mutex<Peer>,
    writes: Vec<tokio::sync::Mutex<Peer>>,
    next: std::sync::atomic::AtomicUsize,
}

impl Lanes {
    fn new(addr: &str) -> Lanes {
        Lanes {
            heartbeats: tokio::sync::Mutex::new(Peer::new(addr.to_string())),
            writes: (0..WRITE_LANES).map(|_| tokio::sync::Mutex::new(Peer::new(addr.to_string()))).collect(),
            next: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// The connection for `request`: the heartbeat lane, or a free write lane (else the next one
    /// in turn, waited for).
    async fn lane(&self, request: &Request) -> tokio::sync::MutexGuard<'_, Peer> {
        if matches!(request, Request::Heartbeat { .. }) {
            return self.heartbeats.lock().await;
        }
        if let Some(free) = self.writes.iter().find_map(|lane| lane.try_lock().ok()) {
            return free;
        }
        let turn = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % self.writes.len();
        self.writes[turn].lock().await
    }
}

/// The active controller's record of broker heartbeats, valid for one term.
#[derive(Default)]
struct Liveness {
    term: u64,
    /// broker id → when it was last heard from in this term.
    seen: HashMap<i32, Seen>,
    /// Brokers whose heartbeat connection closed since their last heartbeat: probed at once.
    suspects: HashSet<i32>,
}

/// Why the active controller fences a broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FenceReason {
    /// No heartbeat within `broker.session.timeout.ms`.
    SessionExpired,
    /// Overdue, and its listener refuses connections: no process serves it.
    ListenerGone,
}

#[derive(Debug, Clone, Copy)]
struct Seen {
    epoch: u64,
    /// The last heartbeat, or the moment this leader first saw the broker (its session starts then).
    at: Instant,
    /// Whether `at` is a heartbeat (false: only the start of this leader's view of the broker).
    heard: bool,
}

pub struct Controller {
    config: ControllerConfig,
    raft: Raft<TypeConfig>,
    state: StateMachine,
    liveness: Mutex<Liveness>,
    /// Wakes the fence check before its next tick (a heartbeat connection closed).
    check_fences: Arc<Notify>,
    /// The quorum leader this node last took an AppendEntries (a heartbeat) from, and when.
    heard_from_leader: Mutex<Option<(NodeId, Instant)>>,
    /// Connections to peers for forwarded requests.
    peers: BTreeMap<NodeId, Lanes>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// The task that registers this process's broker and heartbeats for it.
    broker_task: Mutex<Option<tokio::task::AbortHandle>>,
}

impl Controller {
    /// Opens this node's storage, joins the quorum and starts serving peers.
    pub async fn start(config: ControllerConfig) -> Result<Arc<Controller>, ControllerError> {
        let Some(own_addr) = config.voters.get(&config.node_id).cloned() else {
            return Err(ControllerError::Config(format!(
                "node {} is not among the controller voters ({}); every node is a voter for now",
                config.node_id,
                config.voters.keys().map(|id| id.to_string()).collect::<Vec<_>>().join(", ")
            )));
        };
        if config.session_timeout <= config.heartbeat_interval {
            return Err(ControllerError::Config(format!(
                "the broker session timeout ({:?}) must be longer than the heartbeat interval ({:?})",
                config.session_timeout, config.heartbeat_interval
            )));
        }
        let storage = |source| ControllerError::Storage { dir: config.dir.clone(), source };
        let log = LogStore::open(&config.dir).map_err(storage)?;
        let state = StateMachine::open(&config.dir).map_err(storage)?;
        let raft_config = openraft::Config {
            cluster_name: "sluice".into(),
            heartbeat_interval: RAFT_HEARTBEAT_MS,
            election_timeout_min: ELECTION_TIMEOUT_MIN_MS,
            election_timeout_max: ELECTION_TIMEOUT_MAX_MS,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_every_entries),
            max_in_snapshot_log_to_keep: config.log_kept_after_snapshot,
            snapshot_max_chunk_size: SNAPSHOT_CHUNK_BYTES,
            ..Default::default()
        }
        .validate()
        .map_err(|e| ControllerError::Config(e.to_string()))?;

        // Bind before Raft starts, so an address in use fails the start instead of a peer's RPCs.
        let listener = if config.voters.len() > 1 {
            Some(TcpListener::bind(&own_addr).await.map_err(|source| ControllerError::Listen { addr: own_addr.clone(), source })?)
        } else {
            None
        };
        let raft = Raft::new(config.node_id, Arc::new(raft_config), Network { source: config.node_id }, log, state.clone())
            .await
            .map_err(|e| ControllerError::Stopped(e.to_string()))?;

        let members: BTreeMap<NodeId, BasicNode> = config.voters.iter().map(|(&id, addr)| (id, BasicNode::new(addr))).collect();
        let initialized = raft.is_initialized().await.map_err(|e| ControllerError::Stopped(e.to_string()))?;
        if !initialized {
            // Every voter initializes with the same membership; openraft makes that safe.
            match raft.initialize(members.clone()).await {
                Ok(()) | Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
                Err(e) => {
                    let _ = raft.shutdown().await;
                    return Err(ControllerError::Stopped(e.to_string()));
                }
            }
        } else {
            // Two nodes with different voter sets could each form a majority of their own: refuse.
            // Read from the Raft core itself: its metrics are published only once its loop runs.
            let stored: BTreeMap<NodeId, BasicNode> = raft
                .with_raft_state(|state| state.membership_state.effective().nodes().map(|(&id, node)| (id, node.clone())).collect())
                .await
                .map_err(|e| ControllerError::Stopped(e.to_string()))?;
            if stored != members {
                let _ = raft.shutdown().await;
                let describe = |m: &BTreeMap<NodeId, BasicNode>| {
                    m.iter()
                        .map(|(id, n)| if n.addr.is_empty() { id.to_string() } else { format!("{id}@{}", n.addr) })
                        .collect::<Vec<_>>()
                        .join(",")
                };
                return Err(ControllerError::Config(format!(
                    "this data directory's quorum has the voters `{}` but controller.quorum.voters says `{}`; changing the \
                     voters of an existing quorum is not supported yet: start with the stored voters, or with a fresh data directory",
                    describe(&stored),
                    describe(&members)
                )));
            }
        }

        let peers = config.voters.iter().filter(|&(&id, _)| id != config.node_id).map(|(&id, addr)| (id, Lanes::new(addr))).collect();
        let controller = Arc::new(Controller {
            config,
            raft,
            state,
            liveness: Mutex::new(Liveness::default()),
            check_fences: Arc::new(Notify::new()),
            heard_from_leader: Mutex::new(None),
            peers,
            tasks: Mutex::new(Vec::new()),
            broker_task: Mutex::new(None),
        });
        let mut tasks = Vec::new();
        if let Some(listener) = listener {
            tasks.push(tokio::spawn(network::serve(listener, Arc::downgrade(&controller))));
        }
        tasks.push(tokio::spawn(fence_expired_brokers(Arc::downgrade(&controller), Arc::clone(&controller.check_fences))));
        if controller.config.voters.len() > 1 {
            tasks.push(tokio::spawn(replace_a_gone_leader(Arc::downgrade(&controller))));
        }
        if let Some(every) = controller.config.leader_rebalance_interval {
            tasks.push(tokio::spawn(rebalance_leaders(Arc::downgrade(&controller), every)));
        }
        tasks.push(tokio::spawn(log_quorum_changes(
            controller.config.node_id,
            controller.raft.metrics(),
            Arc::clone(&controller.check_fences),
        )));
        controller.tasks.lock().extend(tasks);
        tracing::info!(node_id = controller.config.node_id, voters = ?controller.config.voters, "controller started");
        Ok(controller)
    }

    pub fn node_id(&self) -> NodeId {
        self.config.node_id
    }

    /// The cluster metadata as applied on this node (a follower may trail the leader by a moment).
    pub fn metadata(&self) -> Metadata {
        self.state.applied().read().metadata.clone()
    }

    /// Reads the cluster metadata as applied on this node, and the log index it reflects, without
    /// copying it. Holds off applying while `read` runs: keep it short.
    pub fn with_metadata<R>(&self, read: impl FnOnce(&Metadata, u64) -> R) -> R {
        let applied = self.state.applied().read();
        read(&applied.metadata, applied.last_applied.map_or(0, |id| id.index))
    }

    /// The last log index this node applied.
    pub fn applied_index(&self) -> u64 {
        *self.state.subscribe().borrow()
    }

    /// The controller quorum's leader as this node knows it.
    pub fn leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }

    /// Changes whenever this node applies log entries (the value is the last applied index).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.state.subscribe()
    }

    pub fn status(&self) -> ControllerStatus {
        let metrics = self.raft.metrics().borrow().clone();
        ControllerStatus {
            node_id: self.config.node_id,
            role: role_name(metrics.state),
            leader_id: metrics.current_leader,
            term: metrics.current_term,
            last_log_index: metrics.last_log_index,
            last_applied_index: metrics.last_applied.map(|id| id.index),
            voters: self.config.voters.iter().map(|(&id, addr)| Voter { id, addr: addr.clone() }).collect(),
        }
    }

    /// Waits until this node knows a leader, or `timeout` passes; returns it.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Option<NodeId> {
        let mut metrics = self.raft.metrics();
        let found = tokio::time::timeout(timeout, metrics.wait_for(|m| m.current_leader.is_some())).await;
        match found {
            Ok(Ok(m)) => m.current_leader,
            _ => None,
        }
    }

    /// Appends `command` to the metadata log through the leader and returns what applying it did.
    pub async fn write(&self, command: Command) -> Result<Outcome, ControllerError> {
        Ok(self.write_committed(command).await?.outcome)
    }

    /// Like [`Controller::write`], and says at which log index the command committed.
    pub async fn write_committed(&self, command: Command) -> Result<Committed, ControllerError> {
        let reply = self.route(|| Request::Write(command.clone())).await?;
        match reply {
            Reply::Write(Ok(committed)) => Ok(committed),
            Reply::Write(Err(e)) => Err(ControllerError::Write(e.to_string())),
            _ => Err(ControllerError::Write("the leader answered another request".into())),
        }
    }

    /// One broker heartbeat, through the leader.
    pub async fn heartbeat(&self, broker_id: i32, epoch: u64) -> Result<HeartbeatReply, ControllerError> {
        match self.route(|| Request::Heartbeat { broker_id, epoch }).await? {
            Reply::Heartbeat(Ok(reply)) => Ok(reply),
            Reply::Heartbeat(Err(e)) => Err(ControllerError::Write(e.to_string())),
            _ => Err(ControllerError::Write("the leader answered another request".into())),
        }
    }

    /// Registers this process's broker and keeps heartbeating for it until the controller stops;
    /// registers again whenever the leader says its registration is gone.
    pub fn run_broker(self: &Arc<Self>, registration: BrokerRegistration) {
        let controller = Arc::downgrade(self);
        let task = tokio::spawn(async move {
            loop {
                let Some(epoch) = register(&controller, &registration).await else { return };
                tracing::info!(broker_id = registration.broker_id, epoch, "broker registered with the controller");
                loop {
                    let Some(this) = controller.upgrade() else { return };
                    let interval = this.config.heartbeat_interval;
                    drop(this);
                    tokio::time::sleep(interval).await;
                    let Some(this) = controller.upgrade() else { return };
                    match this.heartbeat(registration.broker_id, epoch).await {
                        Ok(HeartbeatReply::Alive) => {}
                        Ok(HeartbeatReply::Reregister(why)) => {
                            tracing::warn!(broker_id = registration.broker_id, why, "registering the broker again");
                            break;
                        }
                        Err(error) => tracing::warn!(broker_id = registration.broker_id, %error, "broker heartbeat failed"),
                    }
                }
            }
        });
        *self.broker_task.lock() = Some(task.abort_handle());
        self.tasks.lock().push(task);
    }

    /// Kafka's controlled shutdown, for a broker about to stop: ends its heartbeats and fences its
    /// registration of incarnation `incarnation` now, so that the quorum moves the partitions it
    /// leads to other in-sync replicas and takes it out of their ISRs while it still serves, instead
    /// of after its process is gone. Returns the log index of the fencing (None: not registered
    /// with that incarnation, or already fenced).
    pub async fn shut_down_broker(&self, broker_id: i32, incarnation: u128) -> Result<Option<u64>, ControllerError> {
        if let Some(task) = self.broker_task.lock().take() {
            task.abort();
        }
        let epoch = self.with_metadata(|m, _| {
            m.brokers.get(&broker_id).filter(|b| b.registration.incarnation == incarnation && !b.fenced).map(|b| b.epoch)
        });
        let Some(epoch) = epoch else { return Ok(None) };
        let committed = self.write_committed(Command::FenceBroker { broker_id, epoch }).await?;
        Ok((committed.outcome == Outcome::Applied).then_some(committed.index))
    }

    /// Stops serving peers and leaves the quorum's Raft loop.
    pub async fn shutdown(&self) {
        for task in self.tasks.lock().drain(..) {
            task.abort();
        }
        if let Err(error) = self.raft.shutdown().await {
            tracing::warn!(%error, "controller Raft loop did not stop cleanly");
        }
    }

    /// Sends a request to the leader (itself or a peer), retrying through elections.
    async fn route(&self, request: impl Fn() -> Request) -> Result<Reply, ControllerError> {
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        loop {
            let leader = self.raft.current_leader().await;
            let reply = match leader {
                // Bounded too: a leader cut off from a majority keeps its role until it hears of a
                // newer term, and its writes wait for a commit that will not come.
                Some(id) if id == self.config.node_id => {
                    tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), self.handle(request())).await.ok()
                }
                Some(id) => match self.peers.get(&id) {
                    Some(lanes) => {
                        let request = request();
                        match lanes.lane(&request).await.call(&request, FORWARD_TIMEOUT).await {
                            Ok(reply) => Some(reply),
                            Err(error) => {
                                tracing::debug!(leader = id, %error, "forwarding to the controller leader failed");
                                None
                            }
                        }
                    }
                    None => None,
                },
                None => None,
            };
            match reply {
                Some(Reply::Write(Err(WriteError::NotLeader)) | Reply::Heartbeat(Err(WriteError::NotLeader))) | None => {}
                Some(reply) => return Ok(reply),
            }
            if Instant::now() >= deadline {
                return Err(ControllerError::NoLeader(REQUEST_TIMEOUT));
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    /// Answers one request from a peer (or from this node's own [`Controller::route`]).
    pub(crate) async fn handle(&self, request: Request) -> Reply {
        match request {
            Request::AppendEntries(rpc) => {
                let from = rpc.vote.leader_id().voted_for().filter(|_| rpc.vote.is_committed());
                let reply = self.raft.append_entries(rpc).await;
                if let (Some(leader), Ok(answer)) = (from, &reply)
                    && !matches!(answer, openraft::raft::AppendEntriesResponse::HigherVote(_))
                {
                    *self.heard_from_leader.lock() = Some((leader, Instant::now()));
                }
                Reply::AppendEntries(reply)
            }
            Request::Vote(rpc) => Reply::Vote(self.raft.vote(rpc).await),
            Request::InstallSnapshot(rpc) => Reply::InstallSnapshot(self.raft.install_snapshot(rpc).await),
            Request::Write(command) => Reply::Write(self.write_local(command).await),
            Request::Heartbeat { broker_id, epoch } => Reply::Heartbeat(self.heartbeat_local(broker_id, epoch).await),
        }
    }

    async fn write_local(&self, command: Command) -> Result<Committed, WriteError> {
        // Refused before the log: an entry the log cannot hold would stop Raft on every node.
        if let Err(reason) = command.validate() {
            return Ok(Committed { index: 0, outcome: Outcome::Rejected(reason) });
        }
        if let Command::RegisterBroker(registration) = &command
            && let Some(reason) = self.duplicate_registration(registration)
        {
            return Ok(Committed { index: 0, outcome: Outcome::Rejected(reason) });
        }
        match self.raft.client_write(command).await {
            Ok(response) => Ok(Committed { index: response.log_id.index, outcome: response.data }),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => Err(WriteError::NotLeader),
            Err(e) => Err(WriteError::Failed(e.to_string())),
        }
    }

    /// Kafka's DUPLICATE_BROKER_REGISTRATION: another process (another incarnation) holds this
    /// broker id and heartbeated within the session timeout. Two processes with one `node.id` would
    /// otherwise replace each other's registration forever; a restarted broker is accepted once its
    /// predecessor's session expires (or at once, if it was fenced already). Judged on the leader,
    /// which alone sees heartbeats; a new leader gives every broker a full session first.
    fn duplicate_registration(&self, registration: &BrokerRegistration) -> Option<String> {
        let id = registration.broker_id;
        let (current, same_listener) = {
            let applied = self.state.applied().read();
            let existing = applied.metadata.brokers.get(&id)?;
            if existing.fenced || existing.registration.incarnation == registration.incarnation {
                return None;
            }
            let old = &existing.registration;
            (existing.epoch, old.host == registration.host && old.port == registration.port)
        };
        let liveness = self.liveness.lock();
        let Seen { epoch, at, heard } = *liveness.seen.get(&id)?;
        // A restarted broker: the new process serves the listener its predecessor registered (one
        // port has one listener), and the predecessor stopped heartbeating. It takes over at once, so a
        // rolling restart does not wait out a session per broker.
        if same_listener && heard && at.elapsed() > self.overdue_after() {
            return None;
        }
        (epoch == current && at.elapsed() <= self.config.session_timeout).then(|| {
            format!(
                "broker {id} is registered by another live process (epoch {current}, heard from {:?} ago): is `node.id` {id} \
                 used twice? A restarted broker is taken once the old session expires (broker.session.timeout.ms = {:?})",
                at.elapsed(),
                self.config.session_timeout
            )
        })
    }

    async fn heartbeat_local(&self, broker_id: i32, epoch: u64) -> Result<HeartbeatReply, WriteError> {
        // A leader judges a broker's epoch only once it has applied an entry of its own term (the
        // blank entry it commits on election): then everything committed before it is applied too.
        // Until then the caller retries, as it does while there is no leader.
        let term = {
            let metrics = self.raft.metrics();
            let metrics = metrics.borrow();
            if metrics.current_leader != Some(self.config.node_id)
                || metrics.last_applied.map(|id| id.leader_id.term) != Some(metrics.current_term)
            {
                return Err(WriteError::NotLeader);
            }
            metrics.current_term
        };
        let fenced = {
            let applied = self.state.applied().read();
            match applied.metadata.brokers.get(&broker_id) {
                None => return Ok(HeartbeatReply::Reregister(format!("broker {broker_id} is not registered"))),
                Some(state) if state.epoch != epoch => {
                    return Ok(HeartbeatReply::Reregister(format!("broker {broker_id}'s current epoch is {}, not {epoch}", state.epoch)));
                }
                Some(state) => state.fenced,
            }
        };
        {
            let mut liveness = self.liveness.lock();
            if liveness.term != term {
                *liveness = Liveness { term, ..Liveness::default() };
            }
            liveness.seen.insert(broker_id, Seen { epoch, at: Instant::now(), heard: true });
            liveness.suspects.remove(&broker_id);
        }
        if fenced {
            match self.write_local(Command::UnfenceBroker { broker_id, epoch }).await?.outcome {
                Outcome::Applied => tracing::info!(broker_id, epoch, "broker heartbeats again: unfenced"),
                other => tracing::warn!(broker_id, epoch, ?other, "unfencing the broker changed nothing"),
            }
        }
        Ok(HeartbeatReply::Alive)
    }

    /// On a follower voter: stands for election at once when the quorum's leader has been silent for
    /// longer than the leader lease (no voter would grant a vote earlier) and its voter address
    /// refuses connections: its process is gone, so Raft's random election timeout on top would only
    /// keep the cluster without a controller, and so without fencing and leader elections, for
    /// another 0.6–1.2 s. A leader that is slow, paused or cut off is left to Raft's own timers.
    async fn replace_if_gone(&self) {
        let Some((leader, heard)) = *self.heard_from_leader.lock() else { return };
        let me = self.config.node_id;
        {
            let metrics = self.raft.metrics();
            let metrics = metrics.borrow();
            if metrics.state == ServerState::Leader || metrics.current_leader.is_some_and(|l| l != leader) {
                return;
            }
        }
        // The survivors stand in voter-id order, so that two of them do not split the vote.
        let rank = self.config.voters.keys().filter(|&&id| id != leader && id < me).count() as u32;
        let lease = Duration::from_millis(ELECTION_TIMEOUT_MAX_MS);
        if heard.elapsed() < lease + LEADER_CHECK_INTERVAL + ELECT_STAGGER * rank {
            return;
        }
        let Some(address) = self.config.voters.get(&leader) else { return };
        if !refuses(address).await {
            return;
        }
        tracing::info!(node_id = me, leader, silent = ?heard.elapsed(), "the controller leader's process is gone: standing for election");
        // Once per stagger: an election a peer still inside its lease refused is tried again.
        *self.heard_from_leader.lock() = Some((leader, heard + ELECT_STAGGER));
        if let Err(error) = self.raft.trigger().elect().await {
            tracing::warn!(node_id = me, %error, "cannot start an election");
        }
    }

    /// On the leader: the peer connection that carried broker `broker_id`'s heartbeats closed. A
    /// process that exits closes its connections at once, so this is the earliest sign of a killed
    /// broker: its listener is probed now rather than after a missed heartbeat (a connection closed
    /// for any other reason finds the listener up, and changes nothing).
    pub(crate) fn heartbeat_connection_closed(&self, broker_id: i32) {
        if self.raft.metrics().borrow().current_leader != Some(self.config.node_id) {
            return;
        }
        self.liveness.lock().suspects.insert(broker_id);
        self.check_fences.notify_one();
        // An exiting process closes its sockets one by one: if the listener outlived the
        // connection by a moment, the next look finds it gone.
        let wake = Arc::clone(&self.check_fences);
        tokio::spawn(async move {
            tokio::time::sleep(SUSPECT_RECHECK).await;
            wake.notify_one();
        });
    }

    /// How long a broker may go unheard before the active controller probes its listener: one and a
    /// half heartbeat intervals (one missed heartbeat, with slack for a late one).
    fn overdue_after(&self) -> Duration {
        self.config.heartbeat_interval.mul_f64(1.5)
    }

    /// On the leader: fences every unfenced broker whose last heartbeat is older than the session, and
    /// at once every broker that is overdue (not heard from in this term, or not for one and a half
    /// heartbeat intervals) and whose listener refuses connections: no process serves it, so waiting
    /// out the session would only keep its partitions without a leader (a killed broker is noticed in
    /// about a heartbeat interval instead of `broker.session.timeout.ms`). A broker that is merely
    /// slow, paused or cut off still accepts or times out, and keeps its full session.
    async fn fence_expired(&self) {
        let metrics = self.raft.metrics().borrow().clone();
        if metrics.current_leader != Some(self.config.node_id) {
            return;
        }
        let now = Instant::now();
        let overdue_after = self.overdue_after();
        let (expired, overdue) = {
            let applied = self.state.applied().read();
            let mut liveness = self.liveness.lock();
            if liveness.term != metrics.current_term {
                // A new term: every broker gets a full session from now to reach the new leader.
                *liveness = Liveness { term: metrics.current_term, ..Liveness::default() };
            }
            let mut expired = Vec::new();
            let mut overdue = Vec::new();
            for broker in applied.metadata.live_brokers() {
                let id = broker.registration.broker_id;
                // This node's own broker shares its process: if this check runs, that broker runs
                // too, however late its heartbeats (a stalled process must not fence itself).
                if id as u64 == self.config.node_id {
                    continue;
                }
                let seen = liveness.seen.entry(id).or_insert(Seen { epoch: broker.epoch, at: now, heard: false });
                if seen.epoch != broker.epoch {
                    *seen = Seen { epoch: broker.epoch, at: now, heard: false };
                }
                let silent = now.duration_since(seen.at);
                if silent > self.config.session_timeout {
                    expired.push((id, broker.epoch));
                } else if !seen.heard || silent > overdue_after || liveness.suspects.contains(&id) {
                    let address = format!("{}:{}", broker.registration.host, broker.registration.port);
                    overdue.push((id, broker.epoch, address));
                }
            }
            (expired, overdue)
        };
        let mut fence: Vec<(i32, u64, FenceReason)> =
            expired.into_iter().map(|(id, epoch)| (id, epoch, FenceReason::SessionExpired)).collect();
        fence.extend(refusing(overdue).await.into_iter().map(|(id, epoch)| (id, epoch, FenceReason::ListenerGone)));
        for (broker_id, epoch, why) in fence {
            // A heartbeat may have arrived while an earlier broker's fence was being written, or
            // while the probe ran.
            let heard_since = self.liveness.lock().seen.get(&broker_id).is_some_and(|s| {
                s.epoch == epoch
                    && s.heard
                    && (s.at > now || (why == FenceReason::SessionExpired && s.at.elapsed() <= self.config.session_timeout))
            });
            if heard_since {
                continue;
            }
            if why == FenceReason::SessionExpired {
                tracing::warn!(broker_id, epoch, timeout = ?self.config.session_timeout, "no heartbeat within the session timeout: fencing the broker");
            } else {
                tracing::warn!(broker_id, epoch, "the broker missed its heartbeat and its listener refuses connections: fencing it now");
            }
            if let Err(error) = self.write_local(Command::FenceBroker { broker_id, epoch }).await {
                tracing::warn!(broker_id, %error, "fencing the broker failed");
            }
        }
    }
}

/// The brokers among `overdue` whose listener refuses a TCP connection (all probed at once, each
/// within [`PROBE_TIMEOUT`]).
async fn refusing(overdue: Vec<(i32, u64, String)>) -> Vec<(i32, u64)> {
    let mut probes = tokio::task::JoinSet::new();
    for (id, epoch, address) in overdue {
        probes.spawn(async move { refuses(&address).await.then_some((id, epoch)) });
    }
    let mut refused = Vec::new();
    while let Some(probe) = probes.join_next().await {
        if let Ok(Some(broker)) = probe {
            refused.push(broker);
        }
    }
    refused
}

/// Whether a TCP connection to `address` is refused within [`PROBE_TIMEOUT`]: nothing listens there.
/// A timeout or any other failure proves nothing and answers false.
async fn refuses(address: &str) -> bool {
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(address)).await,
        Ok(Err(error)) if error.kind() == std::io::ErrorKind::ConnectionRefused
    )
}

fn role_name(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

/// Logs each change of this node's role, the leader or the term, and a fatal stop of the Raft loop.
/// A node that becomes the leader looks for dead brokers at once (`check_fences`): the previous
/// leader's process may have taken a broker with it.
/// openraft's own logs are off by default (`sluice server` filters them): they report every failed
/// RPC to a down peer, twice a second, at ERROR.
async fn log_quorum_changes(
    node_id: NodeId,
    mut metrics: watch::Receiver<openraft::RaftMetrics<NodeId, BasicNode>>,
    check_fences: Arc<Notify>,
) {
    let mut last = None;
    while metrics.changed().await.is_ok() {
        let (now, fatal) = {
            let m = metrics.borrow_and_update();
            ((role_name(m.state), m.current_leader, m.current_term), m.running_state.clone().err())
        };
        if let Some(fatal) = fatal {
            tracing::error!(node_id, error = %fatal, "the controller's Raft loop stopped");
            return;
        }
        if last != Some(now) {
            let (role, leader, term) = now;
            tracing::info!(node_id, role, leader = ?leader, term, "controller quorum changed");
            if role == "leader" {
                check_fences.notify_one();
            }
            last = Some(now);
        }
    }
}

async fn fence_expired_brokers(controller: Weak<Controller>, wake: Arc<Notify>) {
    loop {
        let _ = tokio::time::timeout(FENCE_CHECK_INTERVAL, wake.notified()).await;
        let Some(controller) = controller.upgrade() else { return };
        controller.fence_expired().await;
    }
}

/// On the active controller, every `every`: gives the partitions of imbalanced brokers back to their
/// preferred leaders (Kafka's automatic leader rebalance). After a broker restarts, its partitions
/// are led by others until it has caught up and rejoined their ISRs; this brings them back.
async fn rebalance_leaders(controller: Weak<Controller>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(controller) = controller.upgrade() else { return };
        if controller.leader() != Some(controller.config.node_id) {
            continue;
        }
        let ratio = controller.config.leader_imbalance_ratio;
        let mut partitions = controller.with_metadata(|m, _| m.imbalanced_partitions(ratio));
        if partitions.is_empty() {
            continue;
        }
        // The rest, if any, at the next check.
        partitions.truncate(ELECTIONS_PER_COMMAND_MAX);
        let count = partitions.len();
        match controller.write_local(Command::ElectPreferredLeaders { partitions }).await {
            Ok(Committed { outcome: Outcome::Elections(results), .. }) => {
                let elected = results.iter().filter(|(_, _, e)| *e == Election::Elected).count();
                tracing::info!(candidates = count, elected, "leadership moved back to preferred replicas");
            }
            Ok(Committed { outcome, .. }) => tracing::warn!(?outcome, "the preferred leader election changed nothing"),
            Err(error) => tracing::warn!(%error, "cannot elect preferred leaders"),
        }
    }
}

async fn replace_a_gone_leader(controller: Weak<Controller>) {
    loop {
        tokio::time::sleep(LEADER_CHECK_INTERVAL).await;
        let Some(controller) = controller.upgrade() else { return };
        controller.replace_if_gone().await;
    }
}

/// Registers until the quorum accepts; `None` once the controller is gone.
async fn register(controller: &Weak<Controller>, registration: &BrokerRegistration) -> Option<u64> {
    loop {
        let this = controller.upgrade()?;
        match this.write(Command::RegisterBroker(registration.clone())).await {
            Ok(Outcome::Registered { epoch }) => return Some(epoch),
            Ok(Outcome::Rejected(reason)) => {
                tracing::warn!(broker_id = registration.broker_id, reason, "the controller refused the broker's registration; retrying")
            }
            Ok(other) => tracing::error!(broker_id = registration.broker_id, ?other, "the controller refused the broker's registration"),
            Err(error) => tracing::warn!(broker_id = registration.broker_id, %error, "broker registration failed; retrying"),
        }
        drop(this);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn voters_parse_like_kafkas() {
        let voters = parse_voters("1@127.0.0.1:9093, 2@localhost:9094,3@[::1]:9095").unwrap();
        assert_eq!(voters.len(), 3);
        assert_eq!(voters[&3], "[::1]:9095");
        for bad in ["", "1@", "x@h:1", "1@h", "1@h:0", "1@h:1,1@h:2", "1h:1"] {
            assert!(parse_voters(bad).is_err(), "{bad} should not parse");
        }
    }
}
