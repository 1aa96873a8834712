//! The classic consumer-group coordinator: membership, rebalances and liveness for JoinGroup,
//! SyncGroup, Heartbeat and LeaveGroup.
//!
//! Each group is a small state machine guarded by its own mutex:
//!
//! ```text
//! Empty --join--> PreparingRebalance --all joined / deadline--> CompletingRebalance --leader syncs--> Stable
//!   ^                  ^                                              |                              |
//!   +--last member-----+-------------- join, leave, session expiry ---+------------------------------+
//! ```
//!
//! Requests that must wait (a join until the rebalance completes, a follower's sync until the leader
//! sends the assignment) park a oneshot sender in the member and await the receiver *after* releasing
//! the lock; the lock is never held across an `.await`. Timers (the initial-join delay, the rebalance
//! deadline) are tasks that re-check the group under its lock and give up if a newer rebalance has
//! started (`rebalance_id`). A sweeper removes members whose session expired.
//!
//! The coordinator owns a group's lifecycle, including its committed offsets once the group is
//! deleted; it gets the offsets store at construction.
//!
//! Settled states are recorded (`group_records`): the leader's SyncGroup writes the new generation
//! with every member's assignment before anyone gets it, and a group that empties writes its
//! generation. A coordinator loads them at start (a restarted single node, the next leader of a
//! cluster's coordinator partition) as Stable groups whose members' sessions start afresh, so
//! members carry on in their generation without a rebalance.
//!
//! Errors: membership outcomes are Kafka's own codes (`ResponseError`). They are the group protocol
//! itself (REBALANCE_IN_PROGRESS, ILLEGAL_GENERATION, MEMBER_ID_REQUIRED…): clients drive their
//! state machines by the exact code, and there is nothing below them to wrap.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::{ConsumerProtocolAssignment, ConsumerProtocolSubscription, JoinGroupResponse, SyncGroupResponse};
use kafka_protocol::protocol::{Decodable, StrBytes};
use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::config::BrokerConfig;
use crate::error::BrokerError;
use crate::group_records::{GroupRecord, GroupStore, MemberRecord};
use crate::offsets::OffsetStore;

/// Group ids and member ids longer than this are refused before they are stored.
pub(crate) const GROUP_ID_BYTES_MAX: usize = 1024;

/// The group-id check every group API applies before anything else (Kafka allows an empty id on
/// the offset APIs, for consumers without a group, so emptiness is each API's own rule).
pub(crate) fn check_group_id(group_id: &str) -> Result<(), ResponseError> {
    if group_id.len() > GROUP_ID_BYTES_MAX { Err(ResponseError::InvalidGroupId) } else { Ok(()) }
}
/// Protocols one member may offer in a JoinGroup.
pub(crate) const MEMBER_PROTOCOLS_MAX: usize = 32;
/// Bytes of subscription metadata per protocol, and of one member's assignment.
pub(crate) const MEMBER_METADATA_BYTES_MAX: usize = 1024 * 1024;
/// How often the sweeper looks for expired sessions.
const SESSION_SWEEP_INTERVAL: Duration = Duration::from_millis(250);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

impl GroupState {
    pub(crate) fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
        }
    }
}

struct Member {
    group_instance_id: Option<String>,
    client_id: String,
    client_host: String,
    session_timeout: Duration,
    rebalance_timeout: Duration,
    protocols: Vec<(String, Bytes)>,
    assignment: Bytes,
    last_heartbeat: Instant,
    join_waiter: Option<oneshot::Sender<JoinGroupResponse>>,
    sync_waiter: Option<oneshot::Sender<Result<Bytes, ResponseError>>>,
}

impl Member {
    fn metadata_for(&self, protocol: &str) -> Bytes {
        self.protocols.iter().find(|(n, _)| n == protocol).map(|(_, m)| m.clone()).unwrap_or_default()
    }
}

struct Group {
    state: GroupState,
    generation: i32,
    protocol_type: Option<String>,
    protocol_name: Option<String>,
    leader: Option<String>,
    /// Ordered by member id so the leader choice and member lists are deterministic.
    members: BTreeMap<String, Member>,
    /// Member ids handed out with MEMBER_ID_REQUIRED that have not joined yet, with when they expire.
    pending: BTreeMap<String, Instant>,
    rebalance_id: u64,
    /// The first rebalance of an empty group waits this long for more members to arrive.
    join_delay_until: Option<Instant>,
    rebalance_deadline: Instant,
    /// Broker time (ms) the group last became Empty: its offsets expire `offsets.retention.ms` later.
    empty_since_ms: i64,
    /// Removed from the coordinator's map: a request that locked it just before must look again.
    dead: bool,
}

/// What a join does next: answer at once, or wait for the rebalance to complete.
enum JoinStep {
    Answer(JoinGroupResponse),
    Wait(oneshot::Receiver<JoinGroupResponse>),
}

impl Group {
    fn new() -> Group {
        Group {
            state: GroupState::Empty,
            generation: 0,
            protocol_type: None,
            protocol_name: None,
            leader: None,
            members: BTreeMap::new(),
            pending: BTreeMap::new(),
            rebalance_id: 0,
            join_delay_until: None,
            rebalance_deadline: Instant::now(),
            empty_since_ms: crate::now_ms(),
            dead: false,
        }
    }

    /// Moves to Empty after the last member left.
    fn become_empty(&mut self) {
        self.state = GroupState::Empty;
        self.generation += 1;
        self.leader = None;
        self.empty_since_ms = crate::now_ms();
    }

    /// Nothing in it but its name: no members, no member ids waiting to join.
    fn is_idle(&self) -> bool {
        self.state == GroupState::Empty && self.members.is_empty() && self.pending.is_empty()
    }

    /// A group as it was recorded: Stable with its members, their sessions starting `now`, or Empty.
    fn from_record(record: GroupRecord, now: Instant) -> Group {
        let mut group = Group::new();
        group.generation = record.generation;
        group.protocol_type = record.protocol_type;
        group.empty_since_ms = record.empty_since_ms;
        if record.members.is_empty() {
            return group;
        }
        let protocol = record.protocol_name.clone().unwrap_or_default();
        group.state = GroupState::Stable;
        group.protocol_name = record.protocol_name;
        group.leader = record.leader;
        for m in record.members {
            let member = Member {
                group_instance_id: m.group_instance_id,
                client_id: m.client_id,
                client_host: m.client_host,
                session_timeout: Duration::from_millis(m.session_timeout_ms),
                rebalance_timeout: Duration::from_millis(m.rebalance_timeout_ms),
                protocols: vec![(protocol.clone(), m.subscription)],
                assignment: m.assignment,
                last_heartbeat: now,
                join_waiter: None,
                sync_waiter: None,
            };
            group.members.insert(m.member_id, member);
        }
        group
    }

    /// The record of this group as Stable (the members with their assignments) or Empty; `None`
    /// in any other state, which is never recorded.
    fn record(&self) -> Option<GroupRecord> {
        let members = match self.state {
            GroupState::Empty => Vec::new(),
            GroupState::Stable | GroupState::CompletingRebalance => {
                let protocol = self.protocol_name.clone().unwrap_or_default();
                self.members
                    .iter()
                    .map(|(id, m)| MemberRecord {
                        member_id: id.clone(),
                        group_instance_id: m.group_instance_id.clone(),
                        client_id: m.client_id.clone(),
                        client_host: m.client_host.clone(),
                        session_timeout_ms: m.session_timeout.as_millis() as u64,
                        rebalance_timeout_ms: m.rebalance_timeout.as_millis() as u64,
                        subscription: m.metadata_for(&protocol),
                        assignment: m.assignment.clone(),
                    })
                    .collect()
            }
            GroupState::PreparingRebalance => return None,
        };
        Some(GroupRecord {
            generation: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol_name.clone(),
            leader: self.leader.clone(),
            empty_since_ms: self.empty_since_ms,
            members,
        })
    }
}

/// What a JoinGroup asks for, parsed out of any request version.
pub(crate) struct JoinRequest {
    pub(crate) group_id: String,
    pub(crate) member_id: String,
    pub(crate) group_instance_id: Option<String>,
    pub(crate) client_id: String,
    pub(crate) client_host: String,
    pub(crate) session_timeout_ms: i32,
    pub(crate) rebalance_timeout_ms: i32,
    pub(crate) protocol_type: String,
    /// (name, subscription metadata) per protocol offered. Kept as long as the member lives: the
    /// bytes must be the member's own, never a slice of the request frame.
    pub(crate) protocols: Vec<(String, Bytes)>,
    /// v4+: a member without an id is told to come back with the one we assign.
    pub(crate) require_known_member_id: bool,
}

/// A member as DescribeGroups and the admin API show it.
pub(crate) struct MemberView {
    pub(crate) member_id: String,
    pub(crate) group_instance_id: Option<String>,
    pub(crate) client_id: String,
    pub(crate) client_host: String,
    pub(crate) metadata: Bytes,
    pub(crate) assignment: Bytes,
}

pub(crate) struct GroupView {
    pub(crate) state: GroupState,
    pub(crate) generation: i32,
    pub(crate) protocol_type: String,
    pub(crate) protocol_name: String,
    pub(crate) members: Vec<MemberView>,
}

pub(crate) struct GroupCoordinator {
    groups: DashMap<String, Arc<Mutex<Group>>>,
    /// Committed offsets: deleting a group deletes them.
    offsets: Arc<OffsetStore>,
    /// Settled membership (see the module docs).
    store: GroupStore,
    /// Records are fsynced before they count (`flush.before.ack`).
    fsync: bool,
    initial_delay: Duration,
    session_bounds_ms: (i32, i32),
    group_size_max: usize,
    /// `offsets.retention.ms`.
    offsets_retention_ms: i64,
    /// Broker time the coordinator started: groups it has no state for count as empty since then.
    started_ms: i64,
    /// Set by [`GroupCoordinator::unload`]: joins answer NOT_COORDINATOR instead of creating groups.
    unloaded: std::sync::atomic::AtomicBool,
}

fn join_error(error: ResponseError, member_id: &str) -> JoinGroupResponse {
    JoinGroupResponse::default()
        .with_error_code(error.code())
        .with_member_id(StrBytes::from_string(member_id.to_string()))
        .with_generation_id(-1)
}

impl GroupCoordinator {
    /// The coordinator over `store`'s recorded groups.
    pub(crate) fn new(config: &BrokerConfig, offsets: Arc<OffsetStore>, store: GroupStore) -> GroupCoordinator {
        let now = Instant::now();
        let groups = DashMap::new();
        for (group_id, record) in store.groups() {
            groups.insert(group_id, Arc::new(Mutex::new(Group::from_record(record, now))));
        }
        GroupCoordinator {
            groups,
            offsets,
            store,
            fsync: config.flush_before_ack(),
            initial_delay: Duration::from_millis(config.group_initial_rebalance_delay_ms()),
            session_bounds_ms: config.group_session_timeout_bounds_ms(),
            group_size_max: config.group_size_max(),
            offsets_retention_ms: config.offsets_retention_ms(),
            started_ms: crate::now_ms(),
            unloaded: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn group(&self, group_id: &str) -> Option<Arc<Mutex<Group>>> {
        self.groups.get(group_id).map(|g| Arc::clone(g.value()))
    }

    fn group_or_create(&self, group_id: &str) -> Arc<Mutex<Group>> {
        Arc::clone(self.groups.entry(group_id.to_string()).or_insert_with(|| Arc::new(Mutex::new(Group::new()))).value())
    }

    pub(crate) async fn join(self: &Arc<Self>, request: JoinRequest) -> JoinGroupResponse {
        let (min, max) = self.session_bounds_ms;
        if request.group_id.is_empty() || request.group_id.len() > GROUP_ID_BYTES_MAX || request.member_id.len() > GROUP_ID_BYTES_MAX {
            return join_error(ResponseError::InvalidGroupId, &request.member_id);
        }
        if request.session_timeout_ms < min || request.session_timeout_ms > max {
            return join_error(ResponseError::InvalidSessionTimeout, &request.member_id);
        }
        if request.protocol_type.is_empty() || request.protocols.is_empty() || request.protocols.len() > MEMBER_PROTOCOLS_MAX {
            return join_error(ResponseError::InconsistentGroupProtocol, &request.member_id);
        }
        if request.protocols.iter().any(|(_, m)| m.len() > MEMBER_METADATA_BYTES_MAX) {
            return join_error(ResponseError::InvalidRequest, &request.member_id);
        }
        let member_id = request.member_id.clone();
        let step = loop {
            if self.unloaded.load(std::sync::atomic::Ordering::Acquire) {
                return join_error(ResponseError::NotCoordinator, &member_id);
            }
            let group_arc = self.group_or_create(&request.group_id);
            let mut group = group_arc.lock();
            // The group was removed (expired, deleted, unloaded) between the look-up and the lock:
            // a new one takes its place in the map, and this request must join that one.
            if group.dead {
                continue;
            }
            break self.join_locked(&group_arc, &mut group, request);
        };
        match step {
            JoinStep::Answer(response) => response,
            JoinStep::Wait(receiver) => receiver.await.unwrap_or_else(|_| join_error(ResponseError::RebalanceInProgress, &member_id)),
        }
    }

    /// The part of a join done under the group's lock.
    fn join_locked(self: &Arc<Self>, group_arc: &Arc<Mutex<Group>>, group: &mut Group, request: JoinRequest) -> JoinStep {
        let now = Instant::now();
        if group.state != GroupState::Empty {
            let same_type = group.protocol_type.as_deref() == Some(request.protocol_type.as_str());
            let shares_protocol =
                request.protocols.iter().any(|(name, _)| group.members.values().all(|m| m.protocols.iter().any(|(n, _)| n == name)));
            if !same_type || !shares_protocol {
                return JoinStep::Answer(join_error(ResponseError::InconsistentGroupProtocol, &request.member_id));
            }
        }
        let mut member_id = request.member_id.clone();
        if member_id.is_empty() {
            member_id = format!("{}-{}", request.client_id, uuid::Uuid::new_v4());
            if group.members.len() + group.pending.len() >= self.group_size_max {
                return JoinStep::Answer(join_error(ResponseError::GroupMaxSizeReached, ""));
            }
            if request.require_known_member_id {
                // KIP-394: the id is held for the session timeout the client asked for; if it does
                // not come back by then, it is forgotten (and so is the group, if nothing else is in it).
                group.pending.insert(member_id.clone(), now + Duration::from_millis(request.session_timeout_ms as u64));
                return JoinStep::Answer(join_error(ResponseError::MemberIdRequired, &member_id));
            }
        } else if !group.members.contains_key(&member_id) && group.pending.remove(&member_id).is_none() {
            return JoinStep::Answer(join_error(ResponseError::UnknownMemberId, &member_id));
        }
        if !group.members.contains_key(&member_id) && group.members.len() >= self.group_size_max {
            return JoinStep::Answer(join_error(ResponseError::GroupMaxSizeReached, &member_id));
        }
        // Kafka's rule: a follower that rejoins a settled generation with the metadata it already
        // has gets that generation back. Starting a new rebalance for it would make clients that
        // rejoin eagerly (kafka-python does after every assignment) rebalance forever.
        if matches!(group.state, GroupState::CompletingRebalance | GroupState::Stable)
            && group.leader.as_deref() != Some(member_id.as_str())
            && group.members.get(&member_id).is_some_and(|m| m.protocols == request.protocols)
        {
            if let Some(member) = group.members.get_mut(&member_id) {
                member.last_heartbeat = now;
            }
            return JoinStep::Answer(current_join_response(group, &member_id));
        }
        // In CompletingRebalance the leader may rejoin unchanged too (it lost the response); it
        // must get the member list again rather than restart the round.
        if group.state == GroupState::CompletingRebalance
            && group.leader.as_deref() == Some(member_id.as_str())
            && group.members.get(&member_id).is_some_and(|m| m.protocols == request.protocols)
        {
            return JoinStep::Answer(current_join_response(group, &member_id));
        }
        let (sender, receiver) = oneshot::channel();
        let member = group.members.entry(member_id.clone()).or_insert_with(|| Member {
            group_instance_id: request.group_instance_id.clone(),
            client_id: request.client_id.clone(),
            client_host: request.client_host.clone(),
            session_timeout: Duration::ZERO,
            rebalance_timeout: Duration::ZERO,
            protocols: Vec::new(),
            assignment: Bytes::new(),
            last_heartbeat: now,
            join_waiter: None,
            sync_waiter: None,
        });
        member.session_timeout = Duration::from_millis(request.session_timeout_ms as u64);
        // Clients older than JoinGroup v1 have no rebalance timeout; Kafka uses the session timeout.
        member.rebalance_timeout = Duration::from_millis(request.rebalance_timeout_ms.max(request.session_timeout_ms) as u64);
        member.protocols = request.protocols;
        member.last_heartbeat = now;
        if let Some(previous) = member.join_waiter.replace(sender) {
            // The same member joined twice before the rebalance finished; only the newest
            // request gets the answer, the older one is told to rejoin.
            let _ = previous.send(join_error(ResponseError::RebalanceInProgress, &member_id));
        }
        group.protocol_type = Some(request.protocol_type);
        match group.state {
            GroupState::PreparingRebalance => {
                if let Some(until) = group.join_delay_until {
                    // A newcomer during the initial delay extends it, within the rebalance deadline.
                    group.join_delay_until = Some((now + self.initial_delay).min(group.rebalance_deadline).max(until));
                }
            }
            _ => self.prepare_rebalance(group_arc, group, &request.group_id),
        }
        self.try_complete_join(group);
        JoinStep::Wait(receiver)
    }

    /// Starts a rebalance: every member must rejoin before the deadline.
    fn prepare_rebalance(self: &Arc<Self>, group_arc: &Arc<Mutex<Group>>, group: &mut Group, group_id: &str) {
        let now = Instant::now();
        let was_empty = group.state == GroupState::Empty;
        group.state = GroupState::PreparingRebalance;
        group.rebalance_id += 1;
        // Followers waiting for an assignment of the old generation will not get one.
        for member in group.members.values_mut() {
            if let Some(waiter) = member.sync_waiter.take() {
                let _ = waiter.send(Err(ResponseError::RebalanceInProgress));
            }
        }
        let rebalance_timeout = group.members.values().map(|m| m.rebalance_timeout).max().unwrap_or(Duration::from_secs(60));
        group.rebalance_deadline = now + rebalance_timeout;
        group.join_delay_until =
            (was_empty && !self.initial_delay.is_zero()).then(|| (now + self.initial_delay).min(group.rebalance_deadline));
        tracing::debug!(group = group_id, generation = group.generation, "preparing rebalance");
        let coordinator = Arc::clone(self);
        let group_arc = Arc::clone(group_arc);
        let rebalance_id = group.rebalance_id;
        let group_id = group_id.to_string();
        tokio::spawn(async move { coordinator.rebalance_timer(group_arc, rebalance_id, group_id).await });
    }

    async fn rebalance_timer(self: Arc<Self>, group_arc: Arc<Mutex<Group>>, rebalance_id: u64, group_id: String) {
        loop {
            let wake_at = {
                let group = group_arc.lock();
                if group.rebalance_id != rebalance_id || group.state != GroupState::PreparingRebalance {
                    return;
                }
                group.join_delay_until.map_or(group.rebalance_deadline, |d| d.min(group.rebalance_deadline))
            };
            tokio::time::sleep_until(wake_at.into()).await;
            let mut group = group_arc.lock();
            if group.rebalance_id != rebalance_id || group.state != GroupState::PreparingRebalance {
                return;
            }
            let now = Instant::now();
            if group.join_delay_until.is_some_and(|d| now >= d) {
                group.join_delay_until = None;
            }
            if now >= group.rebalance_deadline {
                // Members that did not rejoin in time are out.
                let missing: Vec<String> =
                    group.members.iter().filter(|(_, m)| m.join_waiter.is_none()).map(|(id, _)| id.clone()).collect();
                for id in &missing {
                    tracing::info!(group = group_id, member = id, "member did not rejoin before the rebalance deadline; removing it");
                    group.members.remove(id);
                }
                group.join_delay_until = None;
                if group.members.is_empty() {
                    group.become_empty();
                    self.record_later(&group_id);
                    return;
                }
            }
            if self.try_complete_join(&mut group) {
                return;
            }
        }
    }

    /// Completes the join phase when every member has rejoined and no initial delay is running.
    fn try_complete_join(&self, group: &mut Group) -> bool {
        if group.state != GroupState::PreparingRebalance || group.join_delay_until.is_some() {
            return false;
        }
        if group.members.is_empty() || group.members.values().any(|m| m.join_waiter.is_none()) {
            return false;
        }
        group.generation += 1;
        group.state = GroupState::CompletingRebalance;
        let protocol = select_protocol(&group.members);
        group.protocol_name = Some(protocol.clone());
        if group.leader.as_ref().is_none_or(|l| !group.members.contains_key(l)) {
            group.leader = group.members.keys().next().cloned();
        }
        let now = Instant::now();
        let responses: Vec<(String, JoinGroupResponse)> =
            group.members.keys().map(|id| (id.clone(), current_join_response(group, id))).collect();
        for (id, response) in responses {
            if let Some(member) = group.members.get_mut(&id) {
                member.last_heartbeat = now;
                member.assignment = Bytes::new();
                if let Some(waiter) = member.join_waiter.take() {
                    let _ = waiter.send(response);
                }
            }
        }
        let generation = group.generation;
        tracing::info!(generation, members = group.members.len(), protocol, "rebalance: join phase complete");
        true
    }

    pub(crate) async fn sync(
        self: &Arc<Self>,
        group_id: &str,
        member_id: &str,
        generation: i32,
        protocol_type: Option<&str>,
        protocol_name: Option<&str>,
        assignments: Vec<(String, Bytes)>,
    ) -> SyncGroupResponse {
        let error = |e: ResponseError| SyncGroupResponse::default().with_error_code(e.code());
        let Some(group_arc) = self.group(group_id) else {
            return error(ResponseError::UnknownMemberId);
        };
        if assignments.iter().any(|(_, a)| a.len() > MEMBER_METADATA_BYTES_MAX) {
            return error(ResponseError::InvalidRequest);
        }
        let (receiver, settle) = {
            let mut group = group_arc.lock();
            if !group.members.contains_key(member_id) {
                return error(ResponseError::UnknownMemberId);
            }
            if generation != group.generation {
                return error(ResponseError::IllegalGeneration);
            }
            if protocol_type.is_some_and(|t| Some(t) != group.protocol_type.as_deref())
                || protocol_name.is_some_and(|n| Some(n) != group.protocol_name.as_deref())
            {
                return error(ResponseError::InconsistentGroupProtocol);
            }
            let ok = |assignment: Bytes, group: &Group| {
                SyncGroupResponse::default()
                    .with_protocol_type(group.protocol_type.clone().map(StrBytes::from_string))
                    .with_protocol_name(group.protocol_name.clone().map(StrBytes::from_string))
                    .with_assignment(assignment)
            };
            match group.state {
                GroupState::Empty | GroupState::PreparingRebalance => return error(ResponseError::RebalanceInProgress),
                GroupState::Stable => {
                    let assignment = group.members.get(member_id).map(|m| m.assignment.clone()).unwrap_or_default();
                    return ok(assignment, &group);
                }
                GroupState::CompletingRebalance => {}
            }
            let (sender, receiver) = oneshot::channel();
            if let Some(member) = group.members.get_mut(member_id) {
                member.last_heartbeat = Instant::now();
                member.sync_waiter = Some(sender);
            }
            let mut settle = None;
            if group.leader.as_deref() == Some(member_id) {
                let mut by_member: BTreeMap<String, Bytes> = assignments.into_iter().collect();
                for member in group.members.iter_mut() {
                    member.1.assignment = by_member.remove(member.0).unwrap_or_default();
                }
                settle = Some(group.rebalance_id);
            }
            (receiver, settle)
        };
        if let Some(rebalance_id) = settle {
            self.settle(&group_arc, group_id, rebalance_id);
        }
        match receiver.await {
            Ok(Ok(assignment)) => {
                let group = group_arc.lock();
                SyncGroupResponse::default()
                    .with_protocol_type(group.protocol_type.clone().map(StrBytes::from_string))
                    .with_protocol_name(group.protocol_name.clone().map(StrBytes::from_string))
                    .with_assignment(assignment)
            }
            Ok(Err(e)) => error(e),
            Err(_) => error(ResponseError::RebalanceInProgress),
        }
    }

    /// The leader handed out the assignments of rebalance `rebalance_id`: records the generation,
    /// then makes the group Stable and answers every member waiting in SyncGroup with the
    /// assignments that were recorded (a leader that retried its SyncGroup meanwhile may have set
    /// others; the record is what a later coordinator hands out, so it is what members get). If the
    /// record cannot be written the members hear why (NOT_COORDINATOR when this broker no longer
    /// coordinates, else COORDINATOR_NOT_AVAILABLE) and the group rebalances again, as Kafka's
    /// does. If the group moved on meanwhile, its new rebalance already told the waiting members.
    /// Blocking while the record is written.
    fn settle(self: &Arc<Self>, group_arc: &Arc<Mutex<Group>>, group_id: &str, rebalance_id: u64) {
        let settling = |group: &Group| !group.dead && group.state == GroupState::CompletingRebalance && group.rebalance_id == rebalance_id;
        let mut recorded: HashMap<String, Bytes> = HashMap::new();
        let written = crate::file_calls::off_worker(|| {
            self.store.write_with(group_id, self.fsync, || {
                let group = group_arc.lock();
                if !settling(&group) {
                    return None;
                }
                let record = group.record();
                if let Some(record) = &record {
                    recorded = record.members.iter().map(|m| (m.member_id.clone(), m.assignment.clone())).collect();
                }
                Some(record)
            })
        });
        let mut group = group_arc.lock();
        if !settling(&group) {
            return;
        }
        match written {
            Ok(()) => {
                group.state = GroupState::Stable;
                let now = Instant::now();
                for (id, member) in group.members.iter_mut() {
                    member.last_heartbeat = now;
                    if let Some(assignment) = recorded.remove(id) {
                        member.assignment = assignment;
                    }
                    if let Some(waiter) = member.sync_waiter.take() {
                        let _ = waiter.send(Ok(member.assignment.clone()));
                    }
                }
                tracing::info!(group = group_id, generation = group.generation, "rebalance complete: group is stable");
            }
            Err(error) => {
                let code = match error {
                    BrokerError::Protocol(code @ (ResponseError::NotCoordinator | ResponseError::CoordinatorNotAvailable)) => code,
                    _ => ResponseError::CoordinatorNotAvailable,
                };
                tracing::warn!(group = group_id, generation = group.generation, %error, "could not record the group's new generation; rebalancing again");
                for member in group.members.values_mut() {
                    member.assignment = Bytes::new();
                    if let Some(waiter) = member.sync_waiter.take() {
                        let _ = waiter.send(Err(code));
                    }
                }
                self.prepare_rebalance(group_arc, &mut group, group_id);
            }
        }
    }

    /// Records the group's current state if it is settled (Empty or Stable), or forgets it if it is
    /// gone. Blocking file I/O.
    fn record(&self, group_id: &str) {
        if self.unloaded.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        let written = self.store.write_with(group_id, self.fsync, || match self.group(group_id) {
            // Unloaded meanwhile (this broker stopped coordinating, or is shutting down): the group
            // is not gone, so nothing is written.
            _ if self.unloaded.load(std::sync::atomic::Ordering::Acquire) => None,
            Some(group_arc) => {
                let group = group_arc.lock();
                if group.dead { Some(None) } else { group.record().filter(|_| group.state != GroupState::CompletingRebalance).map(Some) }
            }
            None => Some(None),
        });
        if let Err(error) = written {
            tracing::warn!(group = group_id, %error, "could not record the group's state");
        }
    }

    /// [`GroupCoordinator::record`] on a blocking thread, for code that holds the group's lock.
    fn record_later(self: &Arc<Self>, group_id: &str) {
        let coordinator = Arc::clone(self);
        let group_id = group_id.to_string();
        tokio::task::spawn_blocking(move || coordinator.record(&group_id));
    }

    pub(crate) fn heartbeat(&self, group_id: &str, member_id: &str, generation: i32) -> Result<(), ResponseError> {
        let Some(group_arc) = self.group(group_id) else {
            return Err(ResponseError::UnknownMemberId);
        };
        let mut group = group_arc.lock();
        let state = group.state;
        let current_generation = group.generation;
        let Some(member) = group.members.get_mut(member_id) else {
            return Err(ResponseError::UnknownMemberId);
        };
        member.last_heartbeat = Instant::now();
        if state == GroupState::PreparingRebalance {
            return Err(ResponseError::RebalanceInProgress);
        }
        if generation != current_generation {
            return Err(ResponseError::IllegalGeneration);
        }
        Ok(())
    }

    /// Removes members (LeaveGroup); returns an error per member id.
    pub(crate) fn leave(self: &Arc<Self>, group_id: &str, member_ids: &[String]) -> Vec<(String, Result<(), ResponseError>)> {
        let Some(group_arc) = self.group(group_id) else {
            return member_ids.iter().map(|m| (m.clone(), Err(ResponseError::UnknownMemberId))).collect();
        };
        let mut group = group_arc.lock();
        let mut results = Vec::with_capacity(member_ids.len());
        let mut removed = false;
        for id in member_ids {
            match group.members.remove(id) {
                Some(member) => {
                    if let Some(waiter) = member.join_waiter {
                        let _ = waiter.send(join_error(ResponseError::UnknownMemberId, id));
                    }
                    tracing::info!(group = group_id, member = id, "member left the group");
                    removed = true;
                    results.push((id.clone(), Ok(())));
                }
                None => results.push((id.clone(), Err(ResponseError::UnknownMemberId))),
            }
        }
        if removed {
            self.after_membership_loss(&group_arc, &mut group, group_id);
        }
        results
    }

    fn after_membership_loss(self: &Arc<Self>, group_arc: &Arc<Mutex<Group>>, group: &mut Group, group_id: &str) {
        if group.members.is_empty() {
            group.become_empty();
            group.rebalance_id += 1;
            group.join_delay_until = None;
            self.record_later(group_id);
        } else if group.state == GroupState::PreparingRebalance {
            self.try_complete_join(group);
        } else {
            self.prepare_rebalance(group_arc, group, group_id);
        }
    }

    /// This coordinator stops coordinating (a cluster's coordinator moved to another broker): every
    /// member waiting in a join or sync hears NOT_COORDINATOR now, finds the new coordinator and
    /// joins there, and every group is forgotten (committed offsets stay in the replicated log).
    pub(crate) fn unload(&self) {
        self.unloaded.store(true, std::sync::atomic::Ordering::Release);
        let groups: Vec<Arc<Mutex<Group>>> = self.groups.iter().map(|g| Arc::clone(g.value())).collect();
        self.groups.clear();
        for group in groups {
            let mut group = group.lock();
            group.dead = true;
            for (member_id, member) in group.members.iter_mut() {
                if let Some(waiter) = member.join_waiter.take() {
                    let _ = waiter.send(join_error(ResponseError::NotCoordinator, member_id));
                }
                if let Some(waiter) = member.sync_waiter.take() {
                    let _ = waiter.send(Err(ResponseError::NotCoordinator));
                }
            }
            group.members.clear();
        }
    }

    /// Removes members whose session expired; runs until the coordinator is dropped.
    pub(crate) async fn run_session_sweeper(self: Arc<Self>) {
        // Members loaded from the records have had no chance to heartbeat while the broker started.
        // (The groups are collected first: a group's lock is never taken under a map shard's lock,
        // which `remove_locked` takes under the group's.)
        let now = Instant::now();
        for group in self.groups.iter().map(|e| Arc::clone(e.value())).collect::<Vec<_>>() {
            group.lock().members.values_mut().for_each(|m| m.last_heartbeat = now);
        }
        let mut tick = tokio::time::interval(SESSION_SWEEP_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = Instant::now();
            let groups: Vec<(String, Arc<Mutex<Group>>)> = self.groups.iter().map(|g| (g.key().clone(), Arc::clone(g.value()))).collect();
            for (group_id, group_arc) in groups {
                let mut group = group_arc.lock();
                // Ids handed out with MEMBER_ID_REQUIRED expire if the client never comes back.
                group.pending.retain(|_, expires| now < *expires);
                // Members parked in a join or sync are waiting on us, not the other way round.
                let expired: Vec<String> = group
                    .members
                    .iter()
                    .filter(|(_, m)| {
                        m.join_waiter.is_none() && m.sync_waiter.is_none() && now.duration_since(m.last_heartbeat) > m.session_timeout
                    })
                    .map(|(id, _)| id.clone())
                    .collect();
                if expired.is_empty() {
                    continue;
                }
                for id in &expired {
                    tracing::info!(group = group_id, member = id, "session expired; removing member");
                    group.members.remove(id);
                }
                self.after_membership_loss(&group_arc, &mut group, &group_id);
            }
        }
    }

    /// Validates an OffsetCommit's membership claims. `generation` -1 with an empty member id is a
    /// standalone commit (no group management), allowed while the group has no members.
    pub(crate) fn check_commit(&self, group_id: &str, member_id: &str, generation: i32) -> Result<(), ResponseError> {
        let group_arc = match self.group(group_id) {
            Some(g) => g,
            None if generation < 0 => return Ok(()),
            None => return Err(ResponseError::IllegalGeneration),
        };
        let group = group_arc.lock();
        if generation < 0 && member_id.is_empty() {
            return if group.members.is_empty() { Ok(()) } else { Err(ResponseError::UnknownMemberId) };
        }
        if !group.members.contains_key(member_id) {
            return Err(ResponseError::UnknownMemberId);
        }
        if generation != group.generation {
            return Err(ResponseError::IllegalGeneration);
        }
        match group.state {
            GroupState::PreparingRebalance | GroupState::CompletingRebalance => Err(ResponseError::RebalanceInProgress),
            _ => Ok(()),
        }
    }

    pub(crate) fn describe(&self, group_id: &str) -> Option<GroupView> {
        let group_arc = self.group(group_id)?;
        let group = group_arc.lock();
        let protocol = group.protocol_name.clone().unwrap_or_default();
        Some(GroupView {
            state: group.state,
            generation: group.generation,
            protocol_type: group.protocol_type.clone().unwrap_or_default(),
            protocol_name: if group.state == GroupState::Stable || group.state == GroupState::CompletingRebalance {
                protocol.clone()
            } else {
                String::new()
            },
            members: group
                .members
                .iter()
                .map(|(id, m)| MemberView {
                    member_id: id.clone(),
                    group_instance_id: m.group_instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    metadata: m.metadata_for(&protocol),
                    assignment: m.assignment.clone(),
                })
                .collect(),
        })
    }

    /// Groups with live state, with their state and protocol type.
    pub(crate) fn list(&self) -> Vec<(String, GroupState, String)> {
        // Collected before any group is locked (see `run_session_sweeper`).
        let arcs: Vec<(String, Arc<Mutex<Group>>)> = self.groups.iter().map(|g| (g.key().clone(), Arc::clone(g.value()))).collect();
        let mut groups: Vec<_> = arcs
            .into_iter()
            .map(|(id, group)| {
                let group = group.lock();
                (id, group.state, group.protocol_type.clone().unwrap_or_default())
            })
            .collect();
        groups.sort_by(|a, b| a.0.cmp(&b.0));
        groups
    }

    /// Forgets an empty group. Fails if it has members.
    fn remove_if_empty(&self, group_id: &str) -> Result<bool, BrokerError> {
        let Some(group_arc) = self.group(group_id) else {
            return Ok(false);
        };
        let mut group = group_arc.lock();
        if !group.members.is_empty() {
            return Err(BrokerError::NonEmptyGroup(group_id.to_string()));
        }
        self.remove_locked(group_id, &group_arc, &mut group);
        Ok(true)
    }

    /// Removes a group from the map while holding its lock, marking it dead for anyone who looked it
    /// up before.
    fn remove_locked(&self, group_id: &str, group_arc: &Arc<Mutex<Group>>, group: &mut Group) {
        group.dead = true;
        self.groups.remove_if(group_id, |_, current| Arc::ptr_eq(current, group_arc));
    }

    /// Kafka's offset expiry (KIP-211) and group clean-up, run every
    /// `offsets.retention.check.interval.ms`. Offsets of a group with members never expire; those of
    /// an empty group expire `offsets.retention.ms` after it became empty (or after their commit, if
    /// later); those of the broker's own runtimes (`__sluice…` groups) never do. An empty group loaded
    /// from its record counts as empty since the time recorded (as Kafka's, whose group metadata
    /// carries it; brokers' clocks are assumed to agree); a group the coordinator has no state for
    /// (it only committed) counts as empty since the broker started. Then a
    /// group with nothing left — no members, no member ids waiting, no offsets — is forgotten.
    /// Blocking file I/O.
    pub(crate) fn expire(&self, now_ms: i64) {
        for group_id in self.offsets.groups() {
            // The positions of the broker's own runtimes (a transform's input, a rename-mode
            // mirror's source offsets) are not a client's: an input partition idle for longer than
            // the retention must not send its runtime back to the start after a restart.
            if crate::host::is_internal_name(&group_id) {
                continue;
            }
            let empty_since = match self.group(&group_id) {
                Some(group_arc) => {
                    let group = group_arc.lock();
                    if !group.members.is_empty() || group.state != GroupState::Empty {
                        continue;
                    }
                    group.empty_since_ms
                }
                None => self.started_ms,
            };
            let expired: Vec<(String, i32)> = self
                .offsets
                .group(&group_id)
                .into_iter()
                .filter(|(_, committed)| now_ms.saturating_sub(committed.commit_timestamp_ms.max(empty_since)) >= self.offsets_retention_ms)
                .map(|(key, _)| key)
                .collect();
            if expired.is_empty() {
                continue;
            }
            let count = expired.len();
            match self.offsets.remove(&group_id, expired) {
                Ok(()) => tracing::info!(group = group_id, offsets = count, "expired committed offsets (offsets.retention.ms)"),
                Err(error) => tracing::warn!(group = group_id, %error, "could not expire committed offsets"),
            }
        }
        let groups: Vec<(String, Arc<Mutex<Group>>)> = self.groups.iter().map(|g| (g.key().clone(), Arc::clone(g.value()))).collect();
        for (group_id, group_arc) in groups {
            let mut group = group_arc.lock();
            if group.is_idle() && !self.offsets.has_group(&group_id) {
                self.remove_locked(&group_id, &group_arc, &mut group);
                drop(group);
                self.record(&group_id);
                tracing::debug!(group = group_id, "forgot an empty group");
            }
        }
    }

    /// Deletes an empty group and its committed offsets (DeleteGroups, the admin API). Blocking file
    /// I/O.
    pub(crate) fn delete_group(&self, group_id: &str) -> Result<(), BrokerError> {
        let has_offsets = self.offsets.has_group(group_id);
        if !self.remove_if_empty(group_id)? && !has_offsets {
            return Err(BrokerError::UnknownGroup(group_id.to_string()));
        }
        self.offsets.delete_group(group_id)?;
        self.record(group_id);
        tracing::info!(group = group_id, "deleted consumer group");
        Ok(())
    }

    /// Bytes of the groups' latest records, for the coordinator log's garbage estimate.
    pub(crate) fn recorded_bytes(&self) -> u64 {
        self.store.live_bytes()
    }

    /// See [`GroupStore::snapshot`].
    pub(crate) fn snapshot(&self) -> Result<i64, BrokerError> {
        self.store.snapshot()
    }

    pub(crate) fn close(&self) {
        self.store.close();
    }

    /// Topics the group's consumers subscribe to (decoded from the consumer protocol's metadata).
    pub(crate) fn subscribed_topics(&self, group_id: &str) -> Vec<String> {
        let Some(view) = self.describe(group_id) else { return Vec::new() };
        if view.protocol_type != "consumer" {
            return Vec::new();
        }
        let mut topics: Vec<String> = view.members.iter().flat_map(|m| decode_subscription(&m.metadata)).collect();
        topics.sort();
        topics.dedup();
        topics
    }
}

/// The JoinGroup answer of the current generation for `member_id`: the leader also gets every
/// member's subscription, to compute the assignment from.
fn current_join_response(group: &Group, member_id: &str) -> JoinGroupResponse {
    let protocol = group.protocol_name.clone().unwrap_or_default();
    let leader = group.leader.clone().unwrap_or_default();
    let members = if member_id == leader {
        group
            .members
            .iter()
            .map(|(id, m)| {
                JoinGroupResponseMember::default()
                    .with_member_id(StrBytes::from_string(id.clone()))
                    .with_group_instance_id(m.group_instance_id.clone().map(StrBytes::from_string))
                    .with_metadata(m.metadata_for(&protocol))
            })
            .collect()
    } else {
        Vec::new()
    };
    JoinGroupResponse::default()
        .with_generation_id(group.generation)
        .with_protocol_type(group.protocol_type.clone().map(StrBytes::from_string))
        .with_protocol_name(Some(StrBytes::from_string(protocol)))
        .with_leader(StrBytes::from_string(leader))
        .with_member_id(StrBytes::from_string(member_id.to_string()))
        .with_members(members)
}

/// Picks the protocol every member supports that most members list first (Kafka's vote).
fn select_protocol(members: &BTreeMap<String, Member>) -> String {
    let candidates: Vec<&String> = members
        .values()
        .next()
        .map(|first| {
            first.protocols.iter().map(|(n, _)| n).filter(|n| members.values().all(|m| m.protocols.iter().any(|(p, _)| p == *n))).collect()
        })
        .unwrap_or_default();
    let mut votes: BTreeMap<&String, usize> = BTreeMap::new();
    for member in members.values() {
        if let Some(choice) = member.protocols.iter().map(|(n, _)| n).find(|n| candidates.contains(n)) {
            *votes.entry(choice).or_default() += 1;
        }
    }
    candidates.iter().max_by_key(|c| votes.get(*c).copied().unwrap_or(0)).map(|c| (*c).clone()).unwrap_or_default()
}

/// Topics named in a consumer-protocol subscription (empty if the bytes are not one).
pub(crate) fn decode_subscription(metadata: &Bytes) -> Vec<String> {
    let mut buf = metadata.clone();
    if buf.len() < 2 {
        return Vec::new();
    }
    let version = i16::from_be_bytes([buf[0], buf[1]]);
    let _ = bytes::Buf::get_i16(&mut buf);
    ConsumerProtocolSubscription::decode(&mut buf, version.clamp(0, 3))
        .map(|s| s.topics.iter().map(|t| t.to_string()).collect())
        .unwrap_or_default()
}

/// (topic, partitions) pairs in a consumer-protocol assignment (empty if the bytes are not one).
pub(crate) fn decode_assignment(assignment: &Bytes) -> Vec<(String, Vec<i32>)> {
    let mut buf = assignment.clone();
    if buf.len() < 2 {
        return Vec::new();
    }
    let version = i16::from_be_bytes([buf[0], buf[1]]);
    let _ = bytes::Buf::get_i16(&mut buf);
    ConsumerProtocolAssignment::decode(&mut buf, version.clamp(0, 3))
        .map(|a| a.assigned_partitions.iter().map(|tp| (tp.topic.to_string(), tp.partitions.clone())).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A coordinator over a fresh directory, which lives as long as the returned guard.
    fn coordinator() -> (Arc<GroupCoordinator>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        (coordinator_in(dir.path()), dir)
    }

    fn coordinator_in(dir: &std::path::Path) -> Arc<GroupCoordinator> {
        let config = BrokerConfig::from_settings([("group.initial.rebalance.delay.ms", "0")]).unwrap();
        let offsets = Arc::new(OffsetStore::open(dir, 0).unwrap());
        Arc::new(GroupCoordinator::new(&config, offsets, GroupStore::open(dir, 0).unwrap()))
    }

    fn join_request(member_id: &str, metadata: &'static [u8]) -> JoinRequest {
        JoinRequest {
            group_id: "g".into(),
            member_id: member_id.into(),
            group_instance_id: None,
            client_id: "c".into(),
            client_host: "/127.0.0.1".into(),
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 10_000,
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), Bytes::from_static(metadata))],
            require_known_member_id: false,
        }
    }

    /// Two members join together and the leader syncs; returns (leader, follower, generation).
    async fn stable_group(coordinator: &Arc<GroupCoordinator>) -> (String, String, i32) {
        let first = coordinator.join(join_request("", b"m")).await;
        let a = first.member_id.to_string();
        // The second member's join starts a rebalance that needs the first to rejoin too.
        let second = tokio::spawn({
            let coordinator = Arc::clone(coordinator);
            async move { coordinator.join(join_request("", b"m")).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let again = coordinator.join(join_request(&a, b"m")).await;
        let second = second.await.unwrap();
        assert_eq!(again.generation_id, second.generation_id);
        let (leader, follower) =
            if again.leader.as_str() == a { (a, second.member_id.to_string()) } else { (second.member_id.to_string(), a) };
        let generation = again.generation_id;
        let follower_sync = tokio::spawn({
            let coordinator = Arc::clone(coordinator);
            let follower = follower.clone();
            async move { coordinator.sync("g", &follower, generation, None, None, Vec::new()).await }
        });
        let assignments = vec![(leader.clone(), Bytes::from_static(b"L")), (follower.clone(), Bytes::from_static(b"F"))];
        assert_eq!(coordinator.sync("g", &leader, generation, None, None, assignments).await.error_code, 0);
        assert_eq!(follower_sync.await.unwrap().assignment, Bytes::from_static(b"F"));
        (leader, follower, generation)
    }

    #[tokio::test]
    async fn unchanged_follower_rejoin_keeps_the_generation() {
        // Regression: every JoinGroup used to start a rebalance, so a client that rejoins eagerly after
        // an assignment kept its group rebalancing forever.
        let (coordinator, _dir) = coordinator();
        let (_, follower, generation) = stable_group(&coordinator).await;
        let rejoin = coordinator.join(join_request(&follower, b"m")).await;
        assert_eq!((rejoin.error_code, rejoin.generation_id), (0, generation));
        assert_eq!(coordinator.describe("g").unwrap().state, GroupState::Stable);
        assert_eq!(coordinator.heartbeat("g", &follower, generation), Ok(()));
    }

    #[tokio::test]
    async fn changed_metadata_or_leader_rejoin_starts_a_rebalance() {
        let (coordinator, _dir) = coordinator();
        let (leader, follower, generation) = stable_group(&coordinator).await;
        let pending = tokio::spawn({
            let coordinator = Arc::clone(&coordinator);
            let follower = follower.clone();
            async move { coordinator.join(join_request(&follower, b"changed")).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(coordinator.describe("g").unwrap().state, GroupState::PreparingRebalance);
        assert_eq!(coordinator.heartbeat("g", &leader, generation), Err(ResponseError::RebalanceInProgress));
        let leader_rejoin = coordinator.join(join_request(&leader, b"m")).await;
        assert_eq!(leader_rejoin.generation_id, generation + 1);
        assert_eq!(pending.await.unwrap().generation_id, generation + 1);
    }

    #[tokio::test]
    async fn leaving_member_triggers_a_rebalance_and_the_last_one_empties_the_group() {
        let (coordinator, _dir) = coordinator();
        let (leader, follower, _) = stable_group(&coordinator).await;
        assert!(coordinator.leave("g", std::slice::from_ref(&follower))[0].1.is_ok());
        assert_eq!(coordinator.describe("g").unwrap().state, GroupState::PreparingRebalance);
        let rejoin = coordinator.join(join_request(&leader, b"m")).await;
        assert_eq!(rejoin.members.len(), 1, "the leader gets only itself to assign to");
        assert!(coordinator.leave("g", std::slice::from_ref(&leader))[0].1.is_ok());
        assert_eq!(coordinator.describe("g").unwrap().state, GroupState::Empty);
    }

    #[tokio::test]
    async fn a_stable_group_is_loaded_as_it_was_recorded_and_its_members_carry_on() {
        let dir = tempfile::tempdir().unwrap();
        let first = coordinator_in(dir.path());
        let (leader, follower, generation) = stable_group(&first).await;
        first.close();

        // The next coordinator (a restarted node, a new leader of the coordinator partition).
        let next = coordinator_in(dir.path());
        let view = next.describe("g").expect("the group is loaded");
        assert_eq!((view.state, view.generation, view.protocol_name.as_str()), (GroupState::Stable, generation, "range"));
        assert_eq!(view.members.len(), 2);
        for member in [&leader, &follower] {
            assert_eq!(next.heartbeat("g", member, generation), Ok(()), "no rejoin needed");
            assert_eq!(next.check_commit("g", member, generation), Ok(()), "commits in the generation are accepted");
        }
        let again = next.sync("g", &follower, generation, None, None, Vec::new()).await;
        assert_eq!((again.error_code, again.assignment), (0, Bytes::from_static(b"F")), "the assignment survived");
        // An unchanged follower rejoin keeps the generation, as before the move.
        assert_eq!(next.join(join_request(&follower, b"m")).await.generation_id, generation);
        assert_eq!(next.heartbeat("g", &follower, generation - 1), Err(ResponseError::IllegalGeneration));
    }

    #[tokio::test]
    async fn an_emptied_group_keeps_its_generation_and_a_deleted_one_is_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let first = coordinator_in(dir.path());
        let (leader, follower, generation) = stable_group(&first).await;
        first.leave("g", &[leader, follower]);
        // The empty state is recorded in the background.
        let recorded = |c: &GroupCoordinator| c.store.groups().first().is_some_and(|(_, r)| r.members.is_empty());
        for _ in 0..100 {
            if recorded(&first) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(recorded(&first), "the empty group was recorded");
        first.close();

        let next = coordinator_in(dir.path());
        let view = next.describe("g").expect("the group is loaded");
        assert_eq!((view.state, view.members.len()), (GroupState::Empty, 0));
        assert!(view.generation > generation, "generations never go back: a zombie of generation {generation} stays fenced");
        next.delete_group("g").unwrap();
        next.close();
        assert!(coordinator_in(dir.path()).describe("g").is_none(), "a deleted group stays deleted");
    }

    #[tokio::test]
    async fn a_generation_that_cannot_be_recorded_is_not_handed_out() {
        let (coordinator, _dir) = coordinator();
        let first = coordinator.join(join_request("", b"m")).await;
        let generation = first.generation_id;
        let member = first.member_id.to_string();
        coordinator.store.break_for_tests();
        let answer = coordinator.sync("g", &member, generation, None, None, vec![(member.clone(), Bytes::from_static(b"A"))]).await;
        assert_eq!(answer.error_code, ResponseError::CoordinatorNotAvailable.code());
        assert_eq!(coordinator.describe("g").unwrap().state, GroupState::PreparingRebalance, "the group rebalances again");
        assert_eq!(coordinator.heartbeat("g", &member, generation), Err(ResponseError::RebalanceInProgress));
    }

    #[tokio::test]
    async fn unloading_answers_a_parked_join_and_every_later_one_with_not_coordinator() {
        let (coordinator, _dir) = coordinator();
        let (leader, _, generation) = stable_group(&coordinator).await;
        // The leader rejoins and parks until the other member rejoins too, which never happens.
        let parked = tokio::spawn({
            let coordinator = Arc::clone(&coordinator);
            let leader = leader.clone();
            async move { coordinator.join(join_request(&leader, b"m")).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        coordinator.unload();
        let answered = tokio::time::timeout(Duration::from_secs(5), parked).await.expect("answered at once").unwrap();
        assert_eq!(answered.error_code, ResponseError::NotCoordinator.code());
        assert_eq!(coordinator.join(join_request("", b"m")).await.error_code, ResponseError::NotCoordinator.code());
        assert!(coordinator.describe("g").is_none(), "no group is left behind");
        assert!(coordinator.heartbeat("g", &leader, generation).is_err());
    }
}
