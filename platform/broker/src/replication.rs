//! Partition replication, Kafka's model: followers copy the leader's log with the Fetch API, the
//! leader tracks which followers are in sync, and the high watermark advances only when every
//! in-sync replica (ISR) holds a record.
//!
//! - **Followers** ([`Fetchers`]): one task per leader broker fetches every partition this broker
//!   follows from it, in one Fetch request with this broker's id as `replica_id`, and appends the
//!   batches byte for byte (offsets, leader epochs and producer state as the leader wrote them).
//!   Before it fetches in a new leader epoch, a follower asks the leader where its own latest epoch
//!   ends (OffsetForLeaderEpoch, KIP-101/279) and cuts off whatever it holds beyond that: a tail
//!   written by an old leader that the new one never had. Its high watermark is the leader's, as far
//!   as its copy reaches.
//! - **Leaders** ([`ReplicaSet`]): a follower's fetch offset says it holds everything below it. A
//!   follower that has reached the leader's log end within `replica.lag.time.max.ms` stays in the
//!   ISR; one that has not is removed, and one that reaches the high watermark again is added,
//!   both through the controller ([`Command::AlterPartitions`]), which refuses a proposal made from
//!   an outdated picture of the partition. Proposals queue ([`IsrProposals`]) and go in batches, up
//!   to [`ISR_BATCHES_IN_FLIGHT`] at once: a broker that comes back rejoins thousands of ISRs in a
//!   few log entries rather than one each. The controller itself removes a fenced broker.
//! - **Writes**: acks=all waits until the high watermark passes the write (`Partition::wait_replicated`);
//!   with fewer in-sync replicas than `min.insync.replicas` it is refused before anything is written.
//!
//! Unclean leader election does not exist: a leader is only ever elected from the ISR, so a record
//! acknowledged with acks=all survives any leader change while one ISR member survives.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::offset_for_leader_epoch_request::{OffsetForLeaderPartition, OffsetForLeaderTopic};
use kafka_protocol::messages::offset_for_leader_epoch_response::{EpochEndOffset, OffsetForLeaderTopicResult};
use kafka_protocol::messages::{BrokerId, FetchRequest, OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use parking_lot::Mutex;
use sluice_client::{Connection, ConnectionOptions};
use sluice_cluster::{Command, Controller, ISR_CHANGES_PER_COMMAND_MAX, IsrChange, Outcome, PartitionState};
use sluice_storage::BatchHeader;
use tokio::sync::{Semaphore, mpsc, watch};

use crate::broker::Broker;
use crate::topic::Partition;

/// The Fetch version followers send: the newest that names topics (v13+ uses topic ids).
const FETCH_VERSION: i16 = 12;
/// The OffsetForLeaderEpoch version followers send: the first with `replica_id`.
const EPOCHS_VERSION: i16 = 3;
/// How long a follower waits before trying again after an error (the leader unreachable, not the
/// leader yet, not leading any more): short, because a leader change is when it matters.
const RETRY: Duration = Duration::from_millis(200);
/// How much longer than its own wait a follower's fetch may take before the connection is dropped.
const FETCH_GRACE: Duration = Duration::from_secs(10);
/// Batches of ISR changes in flight to the controller at once (it has four write lanes per peer);
/// proposals that arrive meanwhile wait and go in the next batch.
const ISR_BATCHES_IN_FLIGHT: usize = 4;

/// A partition's replicas and ISR as the controller committed them, and while this broker leads
/// it, each follower's progress.
#[derive(Debug, Default)]
pub(crate) struct ReplicaSet {
    pub(crate) replicas: Vec<i32>,
    pub(crate) isr: Vec<i32>,
    pub(crate) partition_epoch: i32,
    topic_id: u128,
    node: i32,
    followers: HashMap<i32, Progress>,
    /// An AlterPartition of this partition is on its way to the controller: no second one until it
    /// is answered (the second would be refused as stale anyway).
    proposing: bool,
    /// A follower proposed for the ISR and not yet confirmed: the high watermark already waits for
    /// it (Kafka's "maximal ISR"), since the controller may count it in sync before we hear so.
    joining: Option<i32>,
    /// The log end when this broker became the leader: a follower joins the ISR only once it holds
    /// everything before this leader's term (the high watermark of a new leader may lag the old one's).
    term_start: i64,
}

#[derive(Debug, Clone, Copy)]
struct Progress {
    /// The follower holds every offset below this (its last fetch offset); -1 until it fetched in
    /// this leader term.
    end: i64,
    /// The last time its fetch offset reached the leader's log end (as of that fetch or the previous).
    caught_up_ms: i64,
    last_fetch_ms: i64,
    leader_end_at_last_fetch: i64,
    /// The follower's log start offset, as its last fetch reported it; -1 until it fetched in this
    /// leader term.
    log_start: i64,
}

impl ReplicaSet {
    /// Takes the controller's state; `new_term`: this broker's leadership or leader epoch changed.
    /// `leader_end`: this replica's log end now.
    pub(crate) fn update(&mut self, node: i32, state: &PartitionState, topic_id: u128, new_term: bool, now_ms: i64, leader_end: i64) {
        // A new partition epoch settles any proposal: the ISR it names is the committed one.
        let settled = state.partition_epoch != self.partition_epoch;
        self.replicas.clone_from(&state.replicas);
        self.isr.clone_from(&state.isr);
        self.partition_epoch = state.partition_epoch;
        self.topic_id = topic_id;
        self.node = node;
        if new_term {
            self.followers.clear();
            self.term_start = leader_end;
        }
        if new_term || settled {
            self.proposing = false;
            self.joining = None;
        }
        if state.leader != node {
            self.followers.clear();
            return;
        }
        for &replica in state.replicas.iter().filter(|&&r| r != node) {
            // Kafka's rule: a new leader counts every follower as caught up now, and measures lag
            // from here.
            self.followers.entry(replica).or_insert(Progress {
                end: -1,
                caught_up_ms: now_ms,
                last_fetch_ms: now_ms,
                leader_end_at_last_fetch: 0,
                log_start: -1,
            });
        }
        let replicas = &state.replicas;
        self.followers.retain(|r, _| replicas.contains(r));
    }

    /// The high watermark the ISR allows: `local` (this replica's own end) capped by what every
    /// other ISR member holds. A member that has not fetched in this term holds nothing known yet.
    pub(crate) fn isr_floor(&self, local: i64) -> i64 {
        self.isr
            .iter()
            .chain(&self.joining)
            .filter(|&&r| r != self.node)
            .map(|r| self.followers.get(r).map_or(-1, |p| p.end))
            .fold(local, i64::min)
    }

    /// Withdraws the proposal [`ReplicaSet::fetched`] just made (its replica may not join).
    fn cancel_join(&mut self) {
        self.proposing = false;
        self.joining = None;
    }

    /// Records the log start offset a follower's fetch reported.
    fn record_log_start(&mut self, replica: i32, log_start: i64) {
        if let Some(progress) = self.followers.get_mut(&replica) {
            progress.log_start = log_start;
        }
    }

    /// Kafka's low watermark: the lowest log start offset of this replica (`local`) and every other
    /// ISR member (-1 for one that has not fetched in this term). DeleteRecords waits for it.
    pub(crate) fn low_watermark(&self, local: i64) -> i64 {
        self.isr.iter().filter(|&&r| r != self.node).map(|r| self.followers.get(r).map_or(-1, |p| p.log_start)).fold(local, i64::min)
    }

    /// Whether `replica` holds a copy of the partition.
    pub(crate) fn has_replica(&self, replica: i32) -> bool {
        replica != self.node && self.replicas.contains(&replica)
    }

    /// Records a follower's fetch. Returns the ISR to propose when the follower caught up with the
    /// high watermark while out of the ISR.
    fn fetched(&mut self, replica: i32, fetch_offset: i64, leader_end: i64, high_watermark: i64, now_ms: i64) -> Option<Vec<i32>> {
        let progress = self.followers.get_mut(&replica)?;
        progress.end = fetch_offset.min(leader_end);
        if fetch_offset >= leader_end {
            progress.caught_up_ms = now_ms;
        } else if fetch_offset >= progress.leader_end_at_last_fetch {
            // It now holds what the leader held at its previous fetch: caught up as of then.
            progress.caught_up_ms = progress.caught_up_ms.max(progress.last_fetch_ms);
        }
        progress.leader_end_at_last_fetch = leader_end;
        progress.last_fetch_ms = now_ms;
        if self.isr.contains(&replica) || self.proposing || fetch_offset < high_watermark.max(self.term_start) {
            return None;
        }
        self.proposing = true;
        self.joining = Some(replica);
        let mut isr = self.isr.clone();
        isr.push(replica);
        Some(isr)
    }

    /// The ISR without the members that have not caught up within `lag_max_ms`, if any must go.
    fn without_laggards(&mut self, now_ms: i64, lag_max_ms: i64) -> Option<Vec<i32>> {
        if self.proposing {
            return None;
        }
        let node = self.node;
        let lagging = |r: &i32| *r != node && self.followers.get(r).is_none_or(|p| now_ms - p.caught_up_ms > lag_max_ms);
        if !self.isr.iter().any(lagging) {
            return None;
        }
        let isr: Vec<i32> = self.isr.iter().copied().filter(|r| !lagging(r)).collect();
        self.proposing = true;
        Some(isr)
    }

    fn change(&self, partition: &Partition, isr: Vec<i32>) -> IsrChange {
        IsrChange {
            topic: partition.topic.as_str().to_string(),
            id: self.topic_id,
            partition: partition.index,
            broker_id: self.node,
            leader_epoch: partition.leader_epoch(),
            partition_epoch: self.partition_epoch,
            isr,
        }
    }
}

/// A partition's ISR change on its way to the controller.
struct Proposal {
    partition: Arc<Partition>,
    change: IsrChange,
}

/// The queue of ISR proposals of the partitions this broker leads. Unbounded, yet bounded by the
/// partitions: each has at most one proposal queued or in flight (`ReplicaSet::proposing`).
#[derive(Default)]
pub(crate) struct IsrProposals {
    queue: std::sync::OnceLock<mpsc::UnboundedSender<Proposal>>,
}

impl IsrProposals {
    /// Queues `change`; without a controller (never for a replicated partition) it is dropped and
    /// the partition may propose again.
    fn propose(&self, partition: &Arc<Partition>, change: IsrChange) {
        let proposal = Proposal { partition: Arc::clone(partition), change };
        let queued = self.queue.get().is_some_and(|queue| queue.send(proposal).is_ok());
        if !queued {
            withdraw(partition);
        }
    }
}

/// The proposal of `partition` was not applied: it may propose again (and the high watermark stops
/// waiting for a joining follower the controller did not take).
fn withdraw(partition: &Partition) {
    let mut set = partition.replica_set();
    set.proposing = false;
    set.joining = None;
}

/// Sends queued ISR proposals to the controller in batches until the queue closes.
async fn send_isr_changes(controller: Arc<Controller>, mut queue: mpsc::UnboundedReceiver<Proposal>) {
    let lanes = Arc::new(Semaphore::new(ISR_BATCHES_IN_FLIGHT));
    loop {
        let Ok(lane) = Arc::clone(&lanes).acquire_owned().await else { return };
        let Some(first) = queue.recv().await else { return };
        let mut batch = vec![first];
        while batch.len() < ISR_CHANGES_PER_COMMAND_MAX {
            match queue.try_recv() {
                Ok(proposal) => batch.push(proposal),
                Err(_) => break,
            }
        }
        let controller = Arc::clone(&controller);
        tokio::spawn(async move {
            commit_isr_changes(&controller, batch).await;
            drop(lane);
        });
    }
}

/// One batch: a single AlterPartition, or AlterPartitions for several. The reconciler applies what
/// commits (the new partition epoch settles each proposal); a change not applied is withdrawn.
async fn commit_isr_changes(controller: &Controller, batch: Vec<Proposal>) {
    let count = batch.len();
    let command = match &batch[..] {
        [one] => Command::from(one.change.clone()),
        _ => Command::AlterPartitions { changes: batch.iter().map(|p| p.change.clone()).collect() },
    };
    let outcomes: Vec<Result<Outcome, String>> = match controller.write(command).await {
        Ok(Outcome::Altered(outcomes)) if outcomes.len() == count => outcomes.into_iter().map(Ok).collect(),
        Ok(outcome) if count == 1 => vec![Ok(outcome)],
        Ok(outcome) => vec![Err(format!("the controller refused the batch: {outcome:?}")); count],
        Err(error) => vec![Err(format!("cannot reach the controller: {error}")); count],
    };
    let mut applied = 0usize;
    for (proposal, outcome) in batch.iter().zip(outcomes) {
        let (topic, partition, isr) = (proposal.change.topic.as_str(), proposal.change.partition, &proposal.change.isr);
        match outcome {
            // The reconciler applies the new partition epoch, which settles the proposal; until
            // then the high watermark keeps waiting for a joining follower.
            Ok(Outcome::Applied) => {
                applied += 1;
                if count == 1 {
                    tracing::info!(topic, partition, ?isr, "ISR changed");
                } else {
                    tracing::debug!(topic, partition, ?isr, "ISR changed");
                }
            }
            Ok(outcome) => {
                tracing::debug!(topic, partition, ?isr, ?outcome, "ISR change not applied");
                withdraw(&proposal.partition);
            }
            Err(why) => {
                tracing::warn!(topic, partition, ?isr, why, "ISR change not sent");
                withdraw(&proposal.partition);
            }
        }
    }
    if count > 1 {
        tracing::info!(partitions = count, applied, "ISR changes committed in one batch");
    }
}

/// A follower's fetch reached the leader: records its progress, moves the high watermark, and
/// proposes the follower for the ISR when it caught up. Refuses a broker that holds no replica.
/// `log_start`: the follower's log start offset, from its request.
pub(crate) fn follower_fetched(
    broker: &Broker,
    partition: &Arc<Partition>,
    replica: i32,
    fetch_offset: i64,
    log_start: i64,
) -> Result<(), ResponseError> {
    let now = crate::now_ms();
    let proposal = {
        let mut set = partition.replica_set();
        if !set.has_replica(replica) {
            return Err(ResponseError::NotLeaderOrFollower);
        }
        set.record_log_start(replica, log_start);
        match set.fetched(replica, fetch_offset, partition.log_end_offset(), partition.high_watermark(), now) {
            // A fenced broker cannot join (the controller refuses it): one in controlled shutdown
            // still fetches until it stops, and proposing it would hold the high watermark for it
            // (it counts as joining) until the refusal comes back.
            Some(_) if !broker.is_live_broker(replica) => {
                set.cancel_join();
                None
            }
            Some(isr) => Some(set.change(partition, isr)),
            None => None,
        }
    };
    partition.advance_high_watermark();
    if let Some(change) = proposal {
        broker.isr_proposals().propose(partition, change);
    }
    Ok(())
}

/// Removes followers that stopped keeping up from the ISR of every partition this broker leads,
/// until the controller stops. Runs on the broker's runtime.
pub(crate) async fn maintain_isr(broker: Arc<Broker>, controller: Arc<Controller>) {
    let (queue, proposals) = mpsc::unbounded_channel();
    if broker.isr_proposals().queue.set(queue).is_err() {
        tracing::error!("the ISR keeper started twice; this one stops");
        return;
    }
    let sender = tokio::spawn(send_isr_changes(controller, proposals));
    let _stop_sender = AbortOnDrop(sender);
    let lag_max = broker.config().replica_lag_time_max_ms();
    let mut tick = tokio::time::interval(Duration::from_millis((lag_max / 4).clamp(50, 1000) as u64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = crate::now_ms();
        for topic in broker.topics() {
            for partition in topic.partitions.read().iter().filter(|p| p.is_leader() && p.is_replicated()) {
                let proposal = {
                    let mut set = partition.replica_set();
                    set.without_laggards(now, lag_max).map(|isr| set.change(partition, isr))
                };
                if let Some(change) = proposal {
                    tracing::warn!(
                        topic = topic.name.as_str(),
                        partition = partition.index,
                        lag_max_ms = lag_max,
                        "a follower fell behind; removing it from the ISR"
                    );
                    broker.isr_proposals().propose(partition, change);
                }
            }
        }
    }
}

/// A partition this broker follows, and the leader epoch it follows it in.
#[derive(Clone)]
pub(crate) struct Target {
    pub(crate) partition: Arc<Partition>,
    pub(crate) leader_epoch: i32,
}

impl Target {
    fn key(&self) -> (String, i32) {
        (self.partition.topic.as_str().to_string(), self.partition.index)
    }

    fn same(&self, other: &Target) -> bool {
        Arc::ptr_eq(&self.partition, &other.partition) && self.leader_epoch == other.leader_epoch
    }
}

/// The follower side: one fetch task per leader broker.
#[derive(Default)]
pub(crate) struct Fetchers {
    by_leader: Mutex<HashMap<i32, Fetcher>>,
}

struct Fetcher {
    addr: String,
    targets: watch::Sender<Vec<Target>>,
    task: tokio::task::AbortHandle,
}

impl Fetchers {
    /// Makes the fetch tasks follow `wanted`: leader id → (its address, the partitions to copy
    /// from it). Tasks for leaders no longer wanted stop; their partitions' logs stay as they are.
    pub(crate) fn update(&self, broker: &Arc<Broker>, runtime: &tokio::runtime::Handle, wanted: BTreeMap<i32, (String, Vec<Target>)>) {
        let mut by_leader = self.by_leader.lock();
        by_leader.retain(|leader, fetcher| {
            let keep = wanted.get(leader).is_some_and(|(addr, _)| *addr == fetcher.addr);
            if !keep {
                fetcher.task.abort();
            }
            keep
        });
        for (leader, (addr, targets)) in wanted {
            match by_leader.get(&leader) {
                Some(fetcher) => {
                    fetcher.targets.send_if_modified(|current| {
                        let unchanged = current.len() == targets.len() && current.iter().zip(&targets).all(|(a, b)| a.same(b));
                        if !unchanged {
                            *current = targets;
                        }
                        !unchanged
                    });
                }
                None => {
                    tracing::info!(leader, addr, partitions = targets.len(), "following partitions led by another broker");
                    let (sender, receiver) = watch::channel(targets);
                    let task = runtime.spawn(fetch_from(Arc::clone(broker), leader, addr.clone(), receiver)).abort_handle();
                    by_leader.insert(leader, Fetcher { addr, targets: sender, task });
                }
            }
        }
    }

    /// Stops every fetch task (shutdown).
    pub(crate) fn stop(&self) {
        for (_, fetcher) in self.by_leader.lock().drain() {
            fetcher.task.abort();
        }
    }
}

/// Copies the partitions in `targets` from broker `leader`, until the task is aborted.
async fn fetch_from(broker: Arc<Broker>, leader: i32, addr: String, mut targets: watch::Receiver<Vec<Target>>) {
    let node = broker.node_id();
    let options = ConnectionOptions { client_id: format!("sluice-replica-{node}"), ..ConnectionOptions::default() };
    let mut connection: Option<Connection> = None;
    // The leader epoch each partition's log was last reconciled with the leader's (truncated).
    let mut settled: HashMap<(String, i32), i32> = HashMap::new();
    // Partitions the leader refused, and until when they wait: one partition's trouble (a leader
    // that has not applied the new epoch yet) must not slow its siblings down.
    let mut paused: HashMap<(String, i32), tokio::time::Instant> = HashMap::new();
    let mut failures = 0u32;
    let mut round = 0usize;
    loop {
        if failures > 0 {
            let pause = RETRY * failures.min(10);
            let _ = tokio::time::timeout(pause, targets.changed()).await;
        }
        let current: Vec<Target> = targets.borrow_and_update().clone();
        if current.is_empty() {
            if targets.changed().await.is_err() {
                return;
            }
            continue;
        }
        let conn = match connection.as_ref().filter(|c| !c.is_closed()) {
            Some(conn) => conn.clone(),
            None => match Connection::open(&addr, &options).await {
                Ok(conn) => {
                    connection = Some(conn.clone());
                    conn
                }
                Err(error) => {
                    if failures == 0 {
                        tracing::warn!(leader, addr, %error, "cannot reach the leader to copy partitions; retrying");
                    }
                    failures += 1;
                    continue;
                }
            },
        };
        let unsettled: Vec<&Target> = current.iter().filter(|t| settled.get(&t.key()) != Some(&t.leader_epoch)).collect();
        if !unsettled.is_empty() {
            match settle(&conn, node, &unsettled).await {
                Ok(done) => settled.extend(done),
                Err(error) => {
                    tracing::debug!(leader, %error, "OffsetForLeaderEpoch failed");
                    connection = None;
                    failures += 1;
                    continue;
                }
            }
        }
        let now = tokio::time::Instant::now();
        paused.retain(|_, until| *until > now);
        let mut ready: Vec<&Target> =
            current.iter().filter(|t| settled.get(&t.key()) == Some(&t.leader_epoch) && !paused.contains_key(&t.key())).collect();
        if ready.is_empty() {
            failures = failures.max(1);
            continue;
        }
        // Kafka's fetcher rotates too: a response fills up in request order, so no partition may
        // always come last.
        round = round.wrapping_add(1);
        let by = round % ready.len();
        ready.rotate_left(by);
        let wait_ms = broker.config().replica_fetch_wait_max_ms();
        let request = fetch_request(&broker, node, &ready, wait_ms);
        let response =
            match tokio::time::timeout(Duration::from_millis(wait_ms as u64) + FETCH_GRACE, conn.call(&request, FETCH_VERSION)).await {
                Ok(Ok(response)) => response,
                Ok(Err(error)) => {
                    tracing::debug!(leader, %error, "replica fetch failed");
                    connection = None;
                    failures += 1;
                    continue;
                }
                Err(_) => {
                    tracing::warn!(leader, "replica fetch got no answer; reconnecting");
                    connection = None;
                    failures += 1;
                    continue;
                }
            };
        if response.error_code != 0 {
            tracing::debug!(leader, code = response.error_code, "replica fetch refused");
            failures += 1;
            continue;
        }
        for topic in response.responses {
            for answer in topic.partitions {
                let Some(target) = ready
                    .iter()
                    .find(|t| t.partition.topic.as_str() == topic.topic.0.as_str() && t.partition.index == answer.partition_index)
                else {
                    continue;
                };
                if !copy(&broker, target, answer, &mut settled).await {
                    paused.insert(target.key(), tokio::time::Instant::now() + RETRY);
                }
            }
        }
        failures = 0;
    }
}

/// Applies one partition's fetch answer to its follower log. Returns false when the partition must
/// wait before fetching again.
///
/// The append runs on this worker thread when it is a page-cache copy (`Broker::file_calls`, as a
/// leader's appends do): handing each partition's append to a blocking thread cost two thread
/// switches per partition per fetch, which is what a profile of RF=3 produce spent a third of its
/// samples on (BENCHMARKS.md, "Replication"). It appends from the response's buffer as it came.
async fn copy(
    broker: &Broker,
    target: &Target,
    answer: kafka_protocol::messages::fetch_response::PartitionData,
    settled: &mut HashMap<(String, i32), i32>,
) -> bool {
    let partition = &target.partition;
    let (topic, index) = (partition.topic.as_str(), partition.index);
    match ResponseError::try_from_code(answer.error_code) {
        None => {}
        Some(ResponseError::OffsetOutOfRange) => {
            // Our log ends before the leader's starts (retention there removed what we miss): start
            // over from the leader's start, as Kafka's followers do. Otherwise our log ends beyond
            // the leader's (a tail the epoch check did not catch): check the epochs again.
            let (end, leader_start) = (partition.log_end_offset(), answer.log_start_offset);
            if end < leader_start {
                let follower = Arc::clone(partition);
                match tokio::task::spawn_blocking(move || follower.restart_at(leader_start)).await {
                    Ok(Ok(_)) => tracing::warn!(
                        topic,
                        partition = index,
                        log_end = end,
                        leader_log_start = leader_start,
                        "this copy ended before the leader's log starts; it starts over from there"
                    ),
                    Ok(Err(error)) => tracing::error!(topic, partition = index, %error, "cannot restart the follower's log"),
                    Err(error) => tracing::error!(%error, "restart task failed"),
                }
            } else {
                settled.remove(&target.key());
            }
            return false;
        }
        Some(error) => {
            tracing::debug!(topic, partition = index, %error, "the leader refused a replica fetch");
            return false;
        }
    }
    let records = answer.records.unwrap_or_default();
    let whole = whole_batches(&records);
    if whole > 0 {
        let epoch = target.leader_epoch;
        let now = crate::now_ms();
        let quick = partition.append_is_quick(whole, now);
        let appended = broker.file_calls().run(quick, || partition.append_as_follower(&records[..whole], epoch, now));
        if let Err(error) = appended {
            tracing::warn!(topic, partition = index, %error, "cannot append the leader's batches; checking the log against the leader again");
            settled.remove(&target.key());
            return false;
        }
    }
    partition.set_follower_high_watermark(answer.high_watermark);
    // The leader's log start moved (DeleteRecords, retention): so does this copy's, as Kafka's
    // followers do, so that what was deleted does not come back when this replica leads.
    let leader_start = answer.log_start_offset.min(partition.log_end_offset());
    if leader_start > partition.log_start_offset() {
        let follower = Arc::clone(partition);
        match tokio::task::spawn_blocking(move || follower.delete_records_before(leader_start)).await {
            Ok(Ok(start)) => tracing::debug!(topic, partition = index, log_start = start, "moved the log start with the leader's"),
            Ok(Err(error)) => tracing::warn!(topic, partition = index, %error, "cannot move the log start with the leader's"),
            Err(error) => tracing::error!(%error, "log start task failed"),
        }
    }
    true
}

/// Bytes of `records` that are whole batches (a reply may end in part of one).
fn whole_batches(records: &Bytes) -> usize {
    let mut end = 0usize;
    while let Some(header) = records.get(end..).and_then(BatchHeader::parse) {
        let size = header.total_size();
        if size <= 12 || end + size > records.len() {
            break;
        }
        end += size;
    }
    end
}

fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_string()))
}

fn fetch_request(broker: &Broker, node: i32, targets: &[&Target], wait_ms: i32) -> FetchRequest {
    let partition_max = broker.config().replica_fetch_max_bytes();
    let mut topics: Vec<FetchTopic> = Vec::new();
    for target in targets {
        let p = &target.partition;
        let entry = FetchPartition::default()
            .with_partition(p.index)
            .with_fetch_offset(p.log_end_offset())
            .with_current_leader_epoch(target.leader_epoch)
            .with_log_start_offset(p.log_start_offset())
            .with_partition_max_bytes(partition_max);
        match topics.iter_mut().find(|t| t.topic.0.as_str() == p.topic.as_str()) {
            Some(topic) => topic.partitions.push(entry),
            None => topics.push(FetchTopic::default().with_topic(topic_name(p.topic.as_str())).with_partitions(vec![entry])),
        }
    }
    FetchRequest::default()
        .with_replica_id(BrokerId(node))
        .with_max_wait_ms(wait_ms)
        .with_min_bytes(1)
        .with_max_bytes(broker.config().fetch_bytes_max().min(i32::MAX as usize) as i32)
        .with_isolation_level(0)
        .with_session_id(0)
        .with_session_epoch(-1)
        .with_topics(topics)
}

/// KIP-101/279: for each partition entering a new leader epoch, asks the leader where this log's
/// latest epoch ends there and truncates what lies beyond. Returns the partitions now settled (with
/// the epoch they were settled for); the others are asked again later.
async fn settle(conn: &Connection, node: i32, targets: &[&Target]) -> Result<Vec<((String, i32), i32)>, sluice_client::ClientError> {
    let mut done = Vec::new();
    let mut asked: Vec<(&Target, i32)> = Vec::new();
    for target in targets {
        match target.partition.latest_epoch() {
            // An empty log (or one with no epoch yet) has nothing to cut.
            None => done.push((target.key(), target.leader_epoch)),
            Some(latest) => asked.push((target, latest)),
        }
    }
    if asked.is_empty() {
        return Ok(done);
    }
    let mut topics: Vec<OffsetForLeaderTopic> = Vec::new();
    for (target, latest) in &asked {
        let p = &target.partition;
        let entry = OffsetForLeaderPartition::default()
            .with_partition(p.index)
            .with_current_leader_epoch(target.leader_epoch)
            .with_leader_epoch(*latest);
        match topics.iter_mut().find(|t| t.topic.0.as_str() == p.topic.as_str()) {
            Some(topic) => topic.partitions.push(entry),
            None => topics.push(OffsetForLeaderTopic::default().with_topic(topic_name(p.topic.as_str())).with_partitions(vec![entry])),
        }
    }
    let request = OffsetForLeaderEpochRequest::default().with_replica_id(BrokerId(node)).with_topics(topics);
    let response = conn.call(&request, EPOCHS_VERSION).await?;
    for topic in response.topics {
        for answer in topic.partitions {
            let Some((target, latest)) =
                asked.iter().find(|(t, _)| t.partition.topic.as_str() == topic.topic.0.as_str() && t.partition.index == answer.partition)
            else {
                continue;
            };
            if let Some(error) = ResponseError::try_from_code(answer.error_code) {
                tracing::debug!(topic = topic.topic.0.as_str(), partition = answer.partition, %error, "the leader cannot answer for its epochs yet");
                continue;
            }
            let partition = &target.partition;
            let cut = if answer.leader_epoch < 0 || answer.end_offset < 0 {
                // The leader holds nothing from our epochs: keep only what was committed (KIP-279's fallback).
                partition.high_watermark()
            } else if answer.leader_epoch == *latest {
                answer.end_offset
            } else {
                // The leader's epoch is older than ours: the records we wrote in newer epochs are
                // not there; cut at whichever ends first.
                let ours = partition.end_offset_for_epoch(answer.leader_epoch).map_or(answer.end_offset, |(_, end)| end);
                answer.end_offset.min(ours)
            };
            if cut < partition.log_end_offset() {
                let follower = Arc::clone(partition);
                let end_before = partition.log_end_offset();
                match tokio::task::spawn_blocking(move || follower.truncate_to(cut)).await {
                    Ok(Ok(end)) => tracing::warn!(
                        topic = partition.topic.as_str(),
                        partition = partition.index,
                        from = end_before,
                        to = end,
                        leader_epoch = target.leader_epoch,
                        "truncated a tail the new leader does not have"
                    ),
                    Ok(Err(error)) => {
                        tracing::error!(topic = partition.topic.as_str(), partition = partition.index, %error, "cannot truncate the follower's log");
                        continue;
                    }
                    Err(error) => {
                        tracing::error!(%error, "truncation task failed");
                        continue;
                    }
                }
            }
            done.push((target.key(), target.leader_epoch));
        }
    }
    Ok(done)
}

/// OffsetForLeaderEpoch (API 23) on the leader: where each asked epoch ends in its log. Followers
/// use it to find their divergent tail (KIP-101); consumers use it to detect truncation after a
/// leader change (KIP-320).
pub(crate) fn offset_for_leader_epoch(broker: &Broker, request: OffsetForLeaderEpochRequest) -> OffsetForLeaderEpochResponse {
    let topics = request
        .topics
        .into_iter()
        .map(|topic| {
            let found = broker.topic(topic.topic.0.as_str());
            let partitions = topic
                .partitions
                .into_iter()
                .map(|asked| {
                    let fail = |error: ResponseError| {
                        EpochEndOffset::default()
                            .with_partition(asked.partition)
                            .with_error_code(error.code())
                            .with_leader_epoch(-1)
                            .with_end_offset(-1)
                    };
                    let partition =
                        match found.as_ref().map_or(Err(ResponseError::UnknownTopicOrPartition), |t| t.led_partition(asked.partition)) {
                            Ok(partition) => partition,
                            Err(error) => return fail(error),
                        };
                    let epoch = partition.leader_epoch();
                    if asked.current_leader_epoch > epoch {
                        return fail(ResponseError::UnknownLeaderEpoch);
                    }
                    if asked.current_leader_epoch >= 0 && asked.current_leader_epoch < epoch {
                        return fail(ResponseError::FencedLeaderEpoch);
                    }
                    let (leader_epoch, end_offset) = partition.end_offset_for_epoch(asked.leader_epoch).unwrap_or((-1, -1));
                    EpochEndOffset::default().with_partition(asked.partition).with_leader_epoch(leader_epoch).with_end_offset(end_offset)
                })
                .collect();
            OffsetForLeaderTopicResult::default().with_topic(topic.topic).with_partitions(partitions)
        })
        .collect();
    OffsetForLeaderEpochResponse::default().with_topics(topics)
}

/// Aborts a task when dropped (the ISR keeper's batch sender stops with it).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(leader: i32, isr: Vec<i32>) -> PartitionState {
        PartitionState { replicas: vec![1, 2, 3], isr, leader, leader_epoch: 1, partition_epoch: 4, adding: vec![], removing: vec![] }
    }

    #[test]
    fn the_high_watermark_waits_for_every_isr_member() {
        let mut set = ReplicaSet::default();
        set.update(1, &state(1, vec![1, 2, 3]), 7, true, 1000, 0);
        // Nobody fetched in this term yet: nothing is known to be replicated.
        assert_eq!(set.isr_floor(100), -1);
        assert_eq!(set.fetched(2, 80, 100, 0, 1001), None);
        assert_eq!(set.fetched(3, 60, 100, 0, 1001), None);
        assert_eq!(set.isr_floor(100), 60);
        // Out of the ISR, a slow follower no longer holds the high watermark back.
        set.update(1, &state(1, vec![1, 2]), 7, false, 1002, 0);
        assert_eq!(set.isr_floor(100), 80);
        // Back at the high watermark, it is proposed for the ISR once.
        assert_eq!(set.fetched(3, 80, 100, 80, 1003), Some(vec![1, 2, 3]));
        assert_eq!(set.fetched(3, 90, 100, 80, 1004), None, "one proposal at a time");
        // While it is proposed, the high watermark already waits for it (the controller may count
        // it in sync first).
        assert_eq!(set.isr_floor(100), 80);
        set.fetched(2, 100, 100, 80, 1005);
        assert_eq!(set.isr_floor(100), 90);
        // The committed ISR settles the proposal.
        set.update(1, &PartitionState { partition_epoch: 5, ..state(1, vec![1, 2, 3]) }, 7, false, 1006, 0);
        assert_eq!((set.proposing, set.joining), (false, None));
    }

    #[test]
    fn a_follower_joins_only_with_everything_before_the_leaders_term() {
        let mut set = ReplicaSet::default();
        // This leader's term began at offset 50; its high watermark still lags at 10.
        set.update(1, &state(1, vec![1, 2]), 7, true, 0, 50);
        assert_eq!(set.fetched(3, 40, 60, 10, 1), None, "at the high watermark, but missing the old leader's tail");
        assert_eq!(set.fetched(3, 50, 60, 10, 2), Some(vec![1, 2, 3]));
    }

    #[test]
    fn followers_that_stop_catching_up_leave_the_isr() {
        let mut set = ReplicaSet::default();
        set.update(1, &state(1, vec![1, 2, 3]), 7, true, 0, 0);
        // Follower 2 keeps reaching the log end; follower 3 fetches but never catches up.
        for now in (1000..=40_000).step_by(1000) {
            set.fetched(2, now, now, 0, now);
            set.fetched(3, 5, now, 0, now);
        }
        assert_eq!(set.without_laggards(40_000, 30_000), Some(vec![1, 2]));
        assert_eq!(set.without_laggards(40_000, 30_000), None, "one proposal at a time");
    }

    #[test]
    fn only_other_replicas_fetch_as_followers() {
        let mut set = ReplicaSet::default();
        set.update(1, &state(1, vec![1, 2, 3]), 7, true, 0, 0);
        assert!(set.has_replica(2) && set.has_replica(3));
        assert!(!set.has_replica(1), "the leader itself");
        assert!(!set.has_replica(4), "a broker without a copy");
        // As a follower it tracks nobody.
        set.update(1, &state(2, vec![1, 2, 3]), 7, true, 0, 0);
        assert_eq!(set.fetched(3, 10, 10, 0, 1), None);
    }
}
