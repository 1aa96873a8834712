//! The cluster metadata the controller quorum agrees on, and the records that change it.
//!
//! Every change is a [`Command`] appended to the Raft log; every node applies the committed commands
//! in log order to its own [`Metadata`], so all of them hold the same state at the same log index.
//! `apply` is therefore deterministic: it looks at nothing but the command, the state and the log
//! index, and a command that does not fit the state (a stale broker epoch) changes nothing and says so.
//!
//! Brokers follow KRaft's model: a broker registers with its id and an incarnation id (new each time
//! its process starts), and the registration's log index becomes its *broker epoch*. Heartbeats carry
//! that epoch; the active controller fences a broker whose heartbeats stop and unfences it when they
//! resume. A registration from a new incarnation replaces the old one (a restarted process).
//!
//! Topics follow Kafka's model too: each partition has replicas, an in-sync replica set (ISR), a
//! leader and a leader epoch. The controller elects leaders here, in `apply`: when a broker is
//! fenced its partitions move to another live member of their ISR, or go offline (leader
//! [`NO_LEADER`]) when none is left; when it comes back, offline partitions whose ISR names it get it
//! as leader again. Every leader change bumps the partition's leader epoch. Unclean election (a
//! leader from outside the ISR) never happens here. A partition's leader changes its ISR with
//! [`Command::AlterPartition`] (Kafka's AlterPartition): a follower that falls behind leaves it, one
//! that caught up joins it; every ISR or leader change bumps the partition epoch, so a proposal made
//! from an older picture of the partition is refused instead of undoing a newer change. A leader
//! sends its ISR changes in batches ([`Command::AlterPartitions`], as Kafka's AlterPartition request
//! carries many partitions): a broker that comes back rejoins thousands of ISRs in a few log entries.
//!
//! Partitions move between brokers Kafka's way (KIP-455, [`Command::ReassignPartitions`]): the
//! partition's replicas become the target replicas followed by the ones being removed, the new ones
//! copy the log from the leader and join the ISR like any follower, and once every target replica
//! is in the ISR the reassignment completes here, in `apply`: the replicas become the target, the
//! removed ones leave the ISR, and a leader that is no longer a replica hands over to an in-sync
//! target replica in a new leader epoch.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The longest host name a registration may carry (DNS names are at most 253 bytes).
pub const HOST_BYTES_MAX: usize = 255;
/// The longest rack id a registration may carry.
pub const RACK_BYTES_MAX: usize = 255;
/// The longest cluster id a registration may carry (Kafka's are 22 characters).
pub const CLUSTER_ID_BYTES_MAX: usize = 64;
/// Kafka's limit on topic names (so that `<topic>-<partition>` fits a file name).
pub const TOPIC_NAME_BYTES_MAX: usize = 249;
/// Partitions one command may create. The broker's `max.partitions.per.topic` is usually lower.
pub const PARTITIONS_PER_COMMAND_MAX: usize = 100_000;
/// Partitions one preferred leader election names (each with its topic's name: ~2.7 MB at most, well
/// within a Raft log record). Larger elections are split into several.
pub const ELECTIONS_PER_COMMAND_MAX: usize = 10_000;
/// ISR changes one [`Command::AlterPartitions`] carries (each with its topic's name: ~2.8 MB at most).
pub const ISR_CHANGES_PER_COMMAND_MAX: usize = 10_000;
/// Partitions one [`Command::ReassignPartitions`] moves (each with its topic's name and up to
/// [`REPLICAS_MAX`] brokers: ~2.9 MB at most).
pub const REASSIGNMENTS_PER_COMMAND_MAX: usize = 10_000;
/// Replicas one partition may have.
pub const REPLICAS_MAX: usize = 16;
/// The largest topic configuration the quorum stores (the broker's encoding of its overrides).
pub const TOPIC_CONFIG_BYTES_MAX: usize = 64 * 1024;
/// Producer ids one allocation may reserve.
pub const PRODUCER_ID_BLOCK_MAX: i64 = 1_000_000;
/// A partition's leader while none of its in-sync replicas is alive (Kafka's -1).
pub const NO_LEADER: i32 = -1;

/// Where a broker serves Kafka clients, and who it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerRegistration {
    pub broker_id: i32,
    /// Chosen at random when the broker process starts: tells a restart from a retried request.
    pub incarnation: u128,
    pub host: String,
    pub port: u16,
    pub rack: Option<String>,
    /// The cluster id this broker's data directory has; the first registration's becomes the
    /// cluster's, and every broker then tells clients that one.
    #[serde(default)]
    pub cluster_id: Option<String>,
}

impl BrokerRegistration {
    /// Refuses what no real broker would send, before it reaches the log.
    pub fn validate(&self) -> Result<(), String> {
        if self.broker_id < 0 {
            return Err(format!("broker id {} is negative", self.broker_id));
        }
        if self.host.is_empty() || self.host.len() > HOST_BYTES_MAX {
            return Err(format!("host must be 1 to {HOST_BYTES_MAX} bytes, not {}", self.host.len()));
        }
        if self.rack.as_ref().is_some_and(|r| r.len() > RACK_BYTES_MAX) {
            return Err(format!("rack must be at most {RACK_BYTES_MAX} bytes"));
        }
        if self.cluster_id.as_ref().is_some_and(|c| c.is_empty() || c.len() > CLUSTER_ID_BYTES_MAX) {
            return Err(format!("a cluster id must be 1 to {CLUSTER_ID_BYTES_MAX} bytes"));
        }
        Ok(())
    }
}

/// One change to the cluster metadata: what the Raft log holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// A broker process announces itself; its epoch becomes the log index of this record.
    RegisterBroker(BrokerRegistration),
    /// The active controller saw no heartbeat from this broker epoch within the session timeout.
    FenceBroker { broker_id: i32, epoch: u64 },
    /// A fenced broker epoch heartbeats again.
    UnfenceBroker { broker_id: i32, epoch: u64 },
    /// A new topic: `assignments[p]` lists partition `p`'s replicas, the first preferred as leader.
    /// `config` is the broker's encoding of the topic's settings; the quorum stores it unread.
    CreateTopic { name: String, id: u128, config: String, assignments: Vec<Vec<i32>> },
    /// Removes the topic `name` if its id is still `id` (not a later topic of the same name).
    DeleteTopic { name: String, id: u128 },
    /// Appends partitions to topic `name` (id `id`): their replica assignments, in order.
    CreatePartitions { name: String, id: u128, assignments: Vec<Vec<i32>> },
    /// Replaces the settings of topic `name` (id `id`).
    SetTopicConfig { name: String, id: u128, config: String },
    /// Reserves `count` producer ids for a broker, none below `at_least` (ids a node handed out
    /// before it joined a quorum).
    AllocateProducerIds { broker_id: i32, count: i64, at_least: i64 },
    /// Kafka's AlterPartitionReassignments: moves each named partition to its target replicas, or
    /// cancels the reassignment in progress (`target: None`). At most
    /// [`REASSIGNMENTS_PER_COMMAND_MAX`] partitions; each is judged on its own.
    ReassignPartitions { partitions: Vec<Reassignment> },
    /// A partition's leader replaces its ISR. Applied only while `broker_id` still leads the
    /// partition in `leader_epoch` and the partition is still at `partition_epoch` (nothing changed
    /// it since the leader looked); the new ISR must hold the leader and only live replicas.
    AlterPartition { topic: String, id: u128, partition: i32, broker_id: i32, leader_epoch: i32, partition_epoch: i32, isr: Vec<i32> },
    /// Kafka's preferred leader election: each named partition (topic, topic id, index) whose
    /// preferred replica (the first) is live and in the ISR but does not lead gets it as leader, in
    /// a new leader epoch. At most [`ELECTIONS_PER_COMMAND_MAX`] partitions.
    ElectPreferredLeaders { partitions: Vec<(String, u128, i32)> },
    /// Several [`Command::AlterPartition`]s from one leader, each judged on its own (at most
    /// [`ISR_CHANGES_PER_COMMAND_MAX`]).
    AlterPartitions { changes: Vec<IsrChange> },
}

/// One partition's ISR change, as [`Command::AlterPartition`] carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IsrChange {
    pub topic: String,
    pub id: u128,
    pub partition: i32,
    pub broker_id: i32,
    pub leader_epoch: i32,
    pub partition_epoch: i32,
    pub isr: Vec<i32>,
}

impl IsrChange {
    fn validate(&self) -> Result<(), String> {
        let IsrChange { topic, isr, broker_id, .. } = self;
        check_topic_name(topic)?;
        if isr.is_empty() || isr.len() > REPLICAS_MAX {
            return Err(format!("an ISR has 1 to {REPLICAS_MAX} members, not {}", isr.len()));
        }
        if !isr.contains(broker_id) {
            return Err(format!("the ISR {isr:?} must hold its leader {broker_id}"));
        }
        if isr.iter().enumerate().any(|(i, r)| isr[..i].contains(r)) {
            return Err(format!("the ISR {isr:?} names a broker twice"));
        }
        Ok(())
    }
}

/// One partition's reassignment, as [`Command::ReassignPartitions`] carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reassignment {
    pub topic: String,
    pub id: u128,
    pub partition: i32,
    /// The replicas the partition should have, the preferred leader first; `None` cancels.
    pub target: Option<Vec<i32>>,
}

/// What a reassignment did to one partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reassigned {
    /// The new replicas are copying the log; the partition moves once they are all in sync.
    Started,
    /// Nothing to copy: the partition has its target replicas now (a shrink, or the target it had).
    Completed,
    /// The reassignment in progress was cancelled: the partition keeps the replicas it had before.
    Cancelled,
    /// A cancellation, but nothing was being reassigned.
    NoReassignmentInProgress,
    /// The target cannot be used (unregistered broker, a broker twice, none), or the change would
    /// leave no in-sync replica; nothing changed.
    Invalid(String),
    /// No such topic (with that id) or partition.
    UnknownPartition,
}

/// What a preferred leader election did to one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Election {
    /// The preferred replica leads now, in a new leader epoch.
    Elected,
    /// It led already.
    NotNeeded,
    /// It is fenced or out of the ISR: nothing changed.
    PreferredNotAvailable,
    /// No such topic (with that id) or partition.
    UnknownPartition,
}

impl From<IsrChange> for Command {
    /// One ISR change as the single-partition command (what a leader sends for a batch of one).
    fn from(change: IsrChange) -> Command {
        let IsrChange { topic, id, partition, broker_id, leader_epoch, partition_epoch, isr } = change;
        Command::AlterPartition { topic, id, partition, broker_id, leader_epoch, partition_epoch, isr }
    }
}

impl Command {
    /// The change an [`Command::AlterPartition`] carries.
    fn single_isr_change(&self) -> Option<IsrChange> {
        let Command::AlterPartition { topic, id, partition, broker_id, leader_epoch, partition_epoch, isr } = self else {
            return None;
        };
        Some(IsrChange {
            topic: topic.clone(),
            id: *id,
            partition: *partition,
            broker_id: *broker_id,
            leader_epoch: *leader_epoch,
            partition_epoch: *partition_epoch,
            isr: isr.clone(),
        })
    }

    /// Refuses a command no real node would propose, before it reaches the log (it is checked again
    /// when applied, where a refusal changes nothing).
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Command::RegisterBroker(registration) => registration.validate(),
            Command::FenceBroker { .. } | Command::UnfenceBroker { .. } | Command::DeleteTopic { .. } => Ok(()),
            Command::CreateTopic { name, config, assignments, .. } => {
                check_topic_name(name)?;
                check_config(config)?;
                if assignments.is_empty() {
                    return Err("a topic needs at least one partition".into());
                }
                check_assignments(assignments)
            }
            Command::CreatePartitions { assignments, .. } => check_assignments(assignments),
            Command::SetTopicConfig { config, .. } => check_config(config),
            Command::AlterPartition { .. } => self.single_isr_change().map_or(Ok(()), |change| change.validate()),
            Command::AlterPartitions { changes } => {
                if changes.is_empty() || changes.len() > ISR_CHANGES_PER_COMMAND_MAX {
                    return Err(format!("a batch carries 1 to {ISR_CHANGES_PER_COMMAND_MAX} ISR changes, not {}", changes.len()));
                }
                changes.iter().try_for_each(IsrChange::validate)
            }
            Command::ElectPreferredLeaders { partitions } => {
                if partitions.len() > ELECTIONS_PER_COMMAND_MAX {
                    return Err(format!("{} partitions in one election exceed {ELECTIONS_PER_COMMAND_MAX}", partitions.len()));
                }
                partitions.iter().try_for_each(|(name, _, _)| check_topic_name(name))
            }
            Command::ReassignPartitions { partitions } => {
                if partitions.is_empty() || partitions.len() > REASSIGNMENTS_PER_COMMAND_MAX {
                    return Err(format!("a reassignment names 1 to {REASSIGNMENTS_PER_COMMAND_MAX} partitions, not {}", partitions.len()));
                }
                partitions.iter().try_for_each(|r| {
                    check_topic_name(&r.topic)?;
                    match &r.target {
                        Some(target) if target.len() > REPLICAS_MAX => {
                            Err(format!("a partition has at most {REPLICAS_MAX} replicas, not {}", target.len()))
                        }
                        _ => Ok(()),
                    }
                })
            }
            Command::AllocateProducerIds { count, at_least, .. } => {
                if !(1..=PRODUCER_ID_BLOCK_MAX).contains(count) || *at_least < 0 {
                    return Err(format!("cannot reserve {count} producer ids from {at_least}"));
                }
                Ok(())
            }
        }
    }
}

fn check_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > TOPIC_NAME_BYTES_MAX {
        return Err(format!("a topic name must be 1 to {TOPIC_NAME_BYTES_MAX} bytes, not {}", name.len()));
    }
    Ok(())
}

fn check_config(config: &str) -> Result<(), String> {
    if config.len() > TOPIC_CONFIG_BYTES_MAX {
        return Err(format!("a topic configuration of {} bytes exceeds {TOPIC_CONFIG_BYTES_MAX}", config.len()));
    }
    Ok(())
}

fn check_assignments(assignments: &[Vec<i32>]) -> Result<(), String> {
    if assignments.len() > PARTITIONS_PER_COMMAND_MAX {
        return Err(format!("{} partitions in one command exceed {PARTITIONS_PER_COMMAND_MAX}", assignments.len()));
    }
    for replicas in assignments {
        if replicas.is_empty() || replicas.len() > REPLICAS_MAX {
            return Err(format!("a partition needs 1 to {REPLICAS_MAX} replicas, not {}", replicas.len()));
        }
        if replicas.iter().enumerate().any(|(i, r)| replicas[..i].contains(r)) {
            return Err(format!("replica list {replicas:?} names a broker twice"));
        }
    }
    Ok(())
}

fn elect_preferred(state: &mut PartitionState, live: &[i32]) -> Election {
    let Some(&preferred) = state.replicas.first() else { return Election::UnknownPartition };
    if state.leader == preferred {
        return Election::NotNeeded;
    }
    if !live.contains(&preferred) || !state.isr.contains(&preferred) {
        return Election::PreferredNotAvailable;
    }
    state.leader = preferred;
    state.leader_epoch += 1;
    state.partition_epoch += 1;
    Election::Elected
}

/// What applying a command did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// A registration took effect (or was already in effect): the broker's epoch.
    Registered { epoch: u64 },
    /// The command changed the state.
    Applied,
    /// The command did not fit the state and changed nothing.
    Rejected(String),
    /// CreateTopic: a topic of that name exists.
    TopicExists,
    /// The topic is gone, or is another topic of the same name now.
    UnknownTopic,
    /// AllocateProducerIds: the first id of the reserved block.
    ProducerIds { first: i64 },
    /// AlterPartition: the partition changed since the proposal (another leader, epoch or ISR);
    /// the proposer reads the partition again.
    StalePartition,
    /// ElectPreferredLeaders: each named partition's result, in order.
    Elections(Vec<(String, i32, Election)>),
    /// AlterPartitions: each change's outcome, in order.
    Altered(Vec<Outcome>),
    /// ReassignPartitions: each named partition's result, in order.
    Reassignments(Vec<(String, i32, Reassigned)>),
}

/// What the log committed: where, and what applying it did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committed {
    /// The log index of the command: a node that has applied this index sees its effect.
    pub index: u64,
    pub outcome: Outcome,
}

/// A registered broker as the quorum knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerState {
    pub registration: BrokerRegistration,
    /// The log index of the registration.
    pub epoch: u64,
    /// Fenced brokers lead nothing and are not offered to clients.
    pub fenced: bool,
}

/// One partition's placement and leadership.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionState {
    /// Every broker that holds a copy, the preferred leader first.
    pub replicas: Vec<i32>,
    /// The replicas known to hold every committed record; a leader is elected only from these.
    pub isr: Vec<i32>,
    /// The broker that serves the partition, or [`NO_LEADER`].
    pub leader: i32,
    /// Bumped at every leader change; clients and followers are fenced by it.
    pub leader_epoch: i32,
    /// Bumped at every change of the leader or the ISR (Kafka's partition epoch): an
    /// [`Command::AlterPartition`] made from an older state is refused.
    #[serde(default)]
    pub partition_epoch: i32,
    /// While a reassignment runs (KIP-455): the target replicas not yet in the ISR's company of
    /// replicas before it started; they copy the log and join the ISR.
    #[serde(default)]
    pub adding: Vec<i32>,
    /// While a reassignment runs: the replicas that leave once every target replica is in sync.
    #[serde(default)]
    pub removing: Vec<i32>,
}

impl PartitionState {
    /// Whether a reassignment is in progress.
    pub fn reassigning(&self) -> bool {
        !self.adding.is_empty() || !self.removing.is_empty()
    }

    /// The replicas the partition had before the reassignment in progress (all of them if none).
    pub fn original_replicas(&self) -> Vec<i32> {
        self.replicas.iter().copied().filter(|r| !self.adding.contains(r)).collect()
    }

    /// The replicas a reassignment in progress moves the partition to (all of them if none).
    pub fn target_replicas(&self) -> Vec<i32> {
        self.replicas.iter().copied().filter(|r| !self.removing.contains(r)).collect()
    }

    /// Gives the partition `replicas`: out of the ISR go the brokers that are not among them, and
    /// a leader that is not hands over to the first in-sync one that is live (none: offline), in a
    /// new leader epoch.
    fn set_replicas(&mut self, replicas: Vec<i32>, live: &[i32]) {
        self.isr.retain(|r| replicas.contains(r));
        if !replicas.contains(&self.leader) {
            self.leader = replicas.iter().copied().find(|r| self.isr.contains(r) && live.contains(r)).unwrap_or(NO_LEADER);
            self.leader_epoch += 1;
        }
        self.replicas = replicas;
        self.adding.clear();
        self.removing.clear();
        self.partition_epoch += 1;
    }

    /// Completes the reassignment in progress once every target replica is in the ISR.
    fn try_complete_reassignment(&mut self, live: &[i32]) -> bool {
        if !self.reassigning() {
            return false;
        }
        let target = self.target_replicas();
        if !target.iter().all(|r| self.isr.contains(r)) {
            return false;
        }
        self.set_replicas(target, live);
        true
    }

    /// Starts moving the partition to `target` (replacing a reassignment in progress), or cancels
    /// the one in progress. Judged against `registered` brokers.
    fn reassign(&mut self, target: Option<&[i32]>, registered: &[i32], live: &[i32]) -> Reassigned {
        let original = self.original_replicas();
        let Some(target) = target else {
            if !self.reassigning() {
                return Reassigned::NoReassignmentInProgress;
            }
            if !self.isr.iter().any(|r| original.contains(r)) {
                return Reassigned::Invalid(
                    "cancelling would leave no in-sync replica: every replica the partition had before is out of sync; \
                     reassign it to replicas that include an in-sync one instead"
                        .into(),
                );
            }
            self.set_replicas(original, live);
            return Reassigned::Cancelled;
        };
        if target.is_empty() || target.len() > REPLICAS_MAX {
            return Reassigned::Invalid(format!("a partition needs 1 to {REPLICAS_MAX} replicas, not {}", target.len()));
        }
        if target.iter().enumerate().any(|(i, r)| target[..i].contains(r)) {
            return Reassigned::Invalid(format!("replica list {target:?} names a broker twice"));
        }
        if let Some(unknown) = target.iter().find(|r| !registered.contains(r)) {
            return Reassigned::Invalid(format!("broker {unknown} is not registered"));
        }
        if !self.reassigning() && target == original.as_slice() {
            return Reassigned::Completed;
        }
        // The target first (its first replica is the preferred leader), then those that leave.
        let mut replicas = target.to_vec();
        replicas.extend(original.iter().copied().filter(|r| !target.contains(r)));
        // Replicas a replaced reassignment was adding and this one does not want leave at once.
        self.isr.retain(|r| replicas.contains(r));
        if self.isr.is_empty() {
            return Reassigned::Invalid("the change would leave no in-sync replica".into());
        }
        self.adding = target.iter().copied().filter(|r| !original.contains(r)).collect();
        self.removing = original.iter().copied().filter(|r| !target.contains(r)).collect();
        self.replicas = replicas;
        if !self.replicas.contains(&self.leader) {
            self.leader = self.replicas.iter().copied().find(|r| self.isr.contains(r) && live.contains(r)).unwrap_or(NO_LEADER);
            self.leader_epoch += 1;
        }
        self.partition_epoch += 1;
        // Nothing to add (a shrink, or back to the replicas before): done in this step.
        if !self.reassigning() || self.try_complete_reassignment(live) { Reassigned::Completed } else { Reassigned::Started }
    }
}

/// A topic as the quorum knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicState {
    pub id: u128,
    /// The log index of the CreateTopic command.
    pub created_at: u64,
    /// The broker's encoding of the topic's settings.
    pub config: String,
    pub partitions: Vec<PartitionState>,
}

/// The state every controller node holds, rebuilt from snapshot + log at start-up.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    pub brokers: BTreeMap<i32, BrokerState>,
    #[serde(default)]
    pub topics: BTreeMap<String, TopicState>,
    /// The next producer id no broker has reserved.
    #[serde(default)]
    pub next_producer_id: i64,
    /// Set by the first registration that carries one.
    #[serde(default)]
    pub cluster_id: Option<String>,
    /// This quorum's identity (from the first registration's incarnation; 0 until then). Brokers
    /// stamp their topics with it, so a topic created in another quorum (a controller directory
    /// wiped and started afresh) is never mistaken for one this quorum deleted.
    #[serde(default)]
    pub quorum_id: u64,
}

impl Metadata {
    /// The state of partition `index` of `topic`, if the quorum has it.
    pub fn partition(&self, topic: &str, index: i32) -> Option<&PartitionState> {
        self.topics.get(topic)?.partitions.get(usize::try_from(index).ok()?)
    }

    /// Applies the command committed at log `index`.
    /// One ISR change (validated): applied only while its proposer still leads the partition in the
    /// epochs it saw, and only to replicas of the partition, a joining one alive.
    fn alter_partition(&mut self, change: &IsrChange, live: &[i32]) -> Outcome {
        let IsrChange { topic, id, partition, broker_id, leader_epoch, partition_epoch, isr } = change;
        let Some(state) = self
            .topics
            .get_mut(topic)
            .filter(|t| t.id == *id)
            .and_then(|t| usize::try_from(*partition).ok().and_then(|p| t.partitions.get_mut(p)))
        else {
            return Outcome::UnknownTopic;
        };
        if state.leader != *broker_id || state.leader_epoch != *leader_epoch || state.partition_epoch != *partition_epoch {
            return Outcome::StalePartition;
        }
        if let Some(outsider) = isr.iter().find(|r| !state.replicas.contains(r)) {
            return Outcome::Rejected(format!("broker {outsider} holds no replica of the partition"));
        }
        // A joining replica must be alive: a fenced broker cannot be caught up.
        if let Some(dead) = isr.iter().find(|r| !state.isr.contains(r) && !live.contains(r)) {
            return Outcome::Rejected(format!("broker {dead} is fenced and cannot join the ISR"));
        }
        state.isr = isr.clone();
        state.partition_epoch += 1;
        // A reassignment waits for exactly this: its new replicas in the ISR.
        state.try_complete_reassignment(live);
        Outcome::Applied
    }

    pub fn apply(&mut self, index: u64, command: &Command) -> Outcome {
        match command {
            Command::RegisterBroker(registration) => {
                if let Err(reason) = registration.validate() {
                    return Outcome::Rejected(reason);
                }
                let id = registration.broker_id;
                if self.cluster_id.is_none() {
                    self.cluster_id = registration.cluster_id.clone();
                }
                if self.quorum_id == 0 {
                    self.quorum_id = registration.incarnation as u64 | 1;
                }
                if let Some(existing) = self.brokers.get_mut(&id)
                    && existing.registration.incarnation == registration.incarnation
                {
                    // The same process asking again (its first request's reply was lost): same epoch,
                    // but its address may have been corrected.
                    existing.registration = registration.clone();
                    let epoch = existing.epoch;
                    if std::mem::replace(&mut existing.fenced, false) {
                        self.broker_returned(id);
                    }
                    return Outcome::Registered { epoch };
                }
                let restarted = self.brokers.contains_key(&id);
                let state = BrokerState { registration: registration.clone(), epoch: index, fenced: false };
                self.brokers.insert(id, state);
                if restarted {
                    // A new process may have lost what its predecessor had not made durable (a
                    // power cut under the page-cache policy): as in Kafka, it comes back like a
                    // fenced broker — out of every ISR it shared, its partitions led by another
                    // in-sync replica — and rejoins as a follower once it has caught up. Only
                    // partitions it alone holds in sync stay (or become) its own, in a new term.
                    self.broker_lost(id);
                }
                self.broker_returned(id);
                Outcome::Registered { epoch: index }
            }
            Command::FenceBroker { broker_id, epoch } => self.set_fenced(*broker_id, *epoch, true),
            Command::UnfenceBroker { broker_id, epoch } => self.set_fenced(*broker_id, *epoch, false),
            Command::CreateTopic { name, id, config, assignments } => {
                if let Err(reason) = command.validate() {
                    return Outcome::Rejected(reason);
                }
                if self.topics.contains_key(name) {
                    return Outcome::TopicExists;
                }
                if let Err(reason) = self.check_registered(assignments) {
                    return Outcome::Rejected(reason);
                }
                let partitions = assignments.iter().map(|replicas| self.new_partition(replicas)).collect();
                self.topics.insert(name.clone(), TopicState { id: *id, created_at: index, config: config.clone(), partitions });
                Outcome::Applied
            }
            Command::DeleteTopic { name, id } => match self.topics.get(name) {
                Some(topic) if topic.id == *id => {
                    self.topics.remove(name);
                    Outcome::Applied
                }
                _ => Outcome::UnknownTopic,
            },
            Command::CreatePartitions { name, id, assignments } => {
                if let Err(reason) = command.validate().and_then(|()| self.check_registered(assignments)) {
                    return Outcome::Rejected(reason);
                }
                let partitions: Vec<PartitionState> = assignments.iter().map(|replicas| self.new_partition(replicas)).collect();
                match self.topics.get_mut(name) {
                    Some(topic) if topic.id == *id => {
                        if topic.partitions.len() + partitions.len() > PARTITIONS_PER_COMMAND_MAX {
                            return Outcome::Rejected(format!("a topic may have at most {PARTITIONS_PER_COMMAND_MAX} partitions"));
                        }
                        topic.partitions.extend(partitions);
                        Outcome::Applied
                    }
                    _ => Outcome::UnknownTopic,
                }
            }
            Command::SetTopicConfig { name, id, config } => {
                if let Err(reason) = command.validate() {
                    return Outcome::Rejected(reason);
                }
                match self.topics.get_mut(name) {
                    Some(topic) if topic.id == *id => {
                        topic.config = config.clone();
                        Outcome::Applied
                    }
                    _ => Outcome::UnknownTopic,
                }
            }
            Command::AllocateProducerIds { count, at_least, .. } => {
                if let Err(reason) = command.validate() {
                    return Outcome::Rejected(reason);
                }
                // Not tied to registration: a broker may need ids before its registration commits.
                let first = self.next_producer_id.max(*at_least);
                match first.checked_add(*count) {
                    Some(next) => {
                        self.next_producer_id = next;
                        Outcome::ProducerIds { first }
                    }
                    None => Outcome::Rejected("producer ids are exhausted".into()),
                }
            }
            Command::AlterPartition { .. } => {
                if let Err(reason) = command.validate() {
                    return Outcome::Rejected(reason);
                }
                let live: Vec<i32> = self.live_brokers().map(|b| b.registration.broker_id).collect();
                match command.single_isr_change() {
                    Some(change) => self.alter_partition(&change, &live),
                    None => Outcome::Rejected("not an ISR change".into()),
                }
            }
            Command::AlterPartitions { changes } => {
                if let Err(reason) = command.validate() {
                    return Outcome::Rejected(reason);
                }
                let live: Vec<i32> = self.live_brokers().map(|b| b.registration.broker_id).collect();
                Outcome::Altered(changes.iter().map(|change| self.alter_partition(change, &live)).collect())
            }
            Command::ReassignPartitions { partitions } => {
                if let Err(reason) = command.validate() {
                    return Outcome::Rejected(reason);
                }
                let registered: Vec<i32> = self.brokers.keys().copied().collect();
                let live: Vec<i32> = self.live_brokers().map(|b| b.registration.broker_id).collect();
                let mut results = Vec::with_capacity(partitions.len());
                for Reassignment { topic, id, partition, target } in partitions {
                    let state = self
                        .topics
                        .get_mut(topic)
                        .filter(|t| t.id == *id)
                        .and_then(|t| usize::try_from(*partition).ok().and_then(|p| t.partitions.get_mut(p)));
                    let result = state.map_or(Reassigned::UnknownPartition, |state| state.reassign(target.as_deref(), &registered, &live));
                    results.push((topic.clone(), *partition, result));
                }
                Outcome::Reassignments(results)
            }
            Command::ElectPreferredLeaders { partitions } => {
                if let Err(reason) = command.validate() {
                    return Outcome::Rejected(reason);
                }
                let live: Vec<i32> = self.live_brokers().map(|b| b.registration.broker_id).collect();
                let mut results = Vec::with_capacity(partitions.len());
                for (name, id, index) in partitions {
                    let state = self
                        .topics
                        .get_mut(name)
                        .filter(|t| t.id == *id)
                        .and_then(|t| usize::try_from(*index).ok().and_then(|p| t.partitions.get_mut(p)));
                    let result = state.map_or(Election::UnknownPartition, |state| elect_preferred(state, &live));
                    results.push((name.clone(), *index, result));
                }
                Outcome::Elections(results)
            }
        }
    }

    /// Every partition whose preferred replica (the first) does not lead it.
    pub fn not_led_by_preferred(&self) -> Vec<(String, u128, i32)> {
        let mut found = Vec::new();
        for (name, topic) in &self.topics {
            for (index, p) in topic.partitions.iter().enumerate() {
                if p.replicas.first().is_some_and(|&first| first != p.leader) {
                    found.push((name.clone(), topic.id, index as i32));
                }
            }
        }
        found
    }

    /// The partitions whose preferred leader could lead but does not, of the brokers that lead
    /// fewer than `1 - ratio` of the partitions they are preferred for (Kafka's
    /// `leader.imbalance.per.broker.percentage`): what an automatic rebalance elects. Empty when
    /// every broker is within the ratio.
    pub fn imbalanced_partitions(&self, ratio: f64) -> Vec<(String, u128, i32)> {
        // Broker → (partitions it is preferred for, those of them it does not lead but could).
        type Preferred = BTreeMap<i32, (usize, Vec<(String, u128, i32)>)>;
        let mut preferred: Preferred = BTreeMap::new();
        for (name, topic) in &self.topics {
            for (index, p) in topic.partitions.iter().enumerate() {
                let Some(&first) = p.replicas.first() else { continue };
                let entry = preferred.entry(first).or_default();
                entry.0 += 1;
                if p.leader != first && self.is_live(first) && p.isr.contains(&first) {
                    entry.1.push((name.clone(), topic.id, index as i32));
                }
            }
        }
        preferred.into_values().filter(|(total, movable)| movable.len() as f64 > ratio * *total as f64).flat_map(|(_, m)| m).collect()
    }

    fn set_fenced(&mut self, broker_id: i32, epoch: u64, fenced: bool) -> Outcome {
        match self.brokers.get_mut(&broker_id) {
            None => Outcome::Rejected(format!("broker {broker_id} is not registered")),
            Some(state) if state.epoch != epoch => Outcome::Rejected(format!("broker {broker_id} has epoch {}, not {epoch}", state.epoch)),
            Some(state) => {
                state.fenced = fenced;
                if fenced {
                    self.broker_lost(broker_id);
                } else {
                    self.broker_returned(broker_id);
                }
                Outcome::Applied
            }
        }
    }

    fn is_live(&self, broker_id: i32) -> bool {
        self.brokers.get(&broker_id).is_some_and(|b| !b.fenced)
    }

    fn check_registered(&self, assignments: &[Vec<i32>]) -> Result<(), String> {
        match assignments.iter().flatten().find(|id| !self.brokers.contains_key(id)) {
            Some(id) => Err(format!("broker {id} is not registered")),
            None => Ok(()),
        }
    }

    fn new_partition(&self, replicas: &[i32]) -> PartitionState {
        let leader = replicas.iter().copied().find(|&r| self.is_live(r)).unwrap_or(NO_LEADER);
        PartitionState {
            replicas: replicas.to_vec(),
            isr: replicas.to_vec(),
            leader,
            leader_epoch: 0,
            partition_epoch: 0,
            adding: Vec::new(),
            removing: Vec::new(),
        }
    }

    fn partitions_mut(&mut self) -> impl Iterator<Item = &mut PartitionState> {
        self.topics.values_mut().flat_map(|t| t.partitions.iter_mut())
    }

    /// A fenced broker leaves every ISR it is not the last member of, and its partitions get
    /// another leader from their ISR, or none.
    fn broker_lost(&mut self, broker_id: i32) {
        let live: Vec<i32> = self.live_brokers().map(|b| b.registration.broker_id).collect();
        for partition in self.partitions_mut() {
            if partition.isr.len() > 1 && partition.isr.contains(&broker_id) {
                partition.isr.retain(|&r| r != broker_id);
                partition.partition_epoch += 1;
            }
            if partition.leader == broker_id {
                partition.leader = partition.isr.iter().copied().find(|r| *r != broker_id && live.contains(r)).unwrap_or(NO_LEADER);
                partition.leader_epoch += 1;
                partition.partition_epoch += 1;
            }
        }
    }

    /// A broker back in service leads the offline partitions whose ISR names it.
    fn broker_returned(&mut self, broker_id: i32) {
        for partition in self.partitions_mut() {
            if partition.leader == NO_LEADER && partition.isr.contains(&broker_id) {
                partition.leader = broker_id;
                partition.leader_epoch += 1;
                partition.partition_epoch += 1;
            }
        }
    }

    /// Brokers clients may be sent to: registered and not fenced.
    pub fn live_brokers(&self) -> impl Iterator<Item = &BrokerState> {
        self.brokers.values().filter(|b| !b.fenced)
    }

    /// Brokers a Metadata response lists: the live ones, and the fenced ones that still hold a
    /// replica of some partition (an offline replica, until it comes back or is reassigned). A
    /// client keeps its state for a listed broker; librdkafka drops a broker that leaves the list,
    /// and when a partition moves off that broker in the same response, the drop can undo the move
    /// and leave the partition without a leader until the client's next re-query a second later.
    pub fn listed_brokers(&self) -> impl Iterator<Item = &BrokerState> {
        let fenced: Vec<i32> = self.brokers.values().filter(|b| b.fenced).map(|b| b.registration.broker_id).collect();
        let mut holding: Vec<i32> = Vec::new();
        if !fenced.is_empty() {
            'scan: for partition in self.topics.values().flat_map(|t| &t.partitions) {
                for replica in &partition.replicas {
                    if fenced.contains(replica) && !holding.contains(replica) {
                        holding.push(*replica);
                        if holding.len() == fenced.len() {
                            break 'scan;
                        }
                    }
                }
            }
        }
        self.brokers.values().filter(move |b| !b.fenced || holding.contains(&b.registration.broker_id))
    }

    /// Partitions without a leader, over all topics (Kafka's offline partitions).
    pub fn offline_partitions(&self) -> usize {
        self.topics.values().flat_map(|t| &t.partitions).filter(|p| p.leader == NO_LEADER).count()
    }

    /// Partitions with a reassignment in progress, over all topics.
    pub fn reassigning_partitions(&self) -> usize {
        self.topics.values().flat_map(|t| &t.partitions).filter(|p| p.reassigning()).count()
    }

    /// Partitions whose ISR is smaller than their replica set, over all topics.
    pub fn under_replicated_partitions(&self) -> usize {
        self.topics.values().flat_map(|t| &t.partitions).filter(|p| p.isr.len() < p.replicas.len()).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registration(id: i32, incarnation: u128) -> BrokerRegistration {
        BrokerRegistration {
            broker_id: id,
            incarnation,
            host: "127.0.0.1".into(),
            port: 9092,
            rack: None,
            cluster_id: Some(format!("c{id}")),
        }
    }

    #[test]
    fn a_registration_takes_its_log_index_as_epoch() {
        let mut meta = Metadata::default();
        assert_eq!(meta.apply(7, &Command::RegisterBroker(registration(1, 10))), Outcome::Registered { epoch: 7 });
        // A retry from the same process keeps the epoch; a restarted process gets a new one.
        assert_eq!(meta.apply(9, &Command::RegisterBroker(registration(1, 10))), Outcome::Registered { epoch: 7 });
        assert_eq!(meta.apply(12, &Command::RegisterBroker(registration(1, 11))), Outcome::Registered { epoch: 12 });
        assert_eq!(meta.brokers[&1].epoch, 12);
        // The first registration names the cluster.
        meta.apply(13, &Command::RegisterBroker(registration(2, 1)));
        assert_eq!(meta.cluster_id.as_deref(), Some("c1"));
        assert_eq!(meta.quorum_id, 11, "the first registration's incarnation, odd so never 0");
    }

    #[test]
    fn fencing_needs_the_current_epoch() {
        let mut meta = Metadata::default();
        meta.apply(3, &Command::RegisterBroker(registration(2, 1)));
        assert!(matches!(meta.apply(4, &Command::FenceBroker { broker_id: 2, epoch: 2 }), Outcome::Rejected(_)));
        assert!(!meta.brokers[&2].fenced);
        assert_eq!(meta.apply(5, &Command::FenceBroker { broker_id: 2, epoch: 3 }), Outcome::Applied);
        assert_eq!(meta.live_brokers().count(), 0);
        assert_eq!(meta.apply(6, &Command::UnfenceBroker { broker_id: 2, epoch: 3 }), Outcome::Applied);
        assert_eq!(meta.live_brokers().count(), 1);
        assert!(matches!(meta.apply(7, &Command::FenceBroker { broker_id: 9, epoch: 3 }), Outcome::Rejected(_)));
    }

    #[test]
    fn absurd_registrations_are_rejected() {
        let mut meta = Metadata::default();
        let mut bad = registration(1, 1);
        bad.host = "h".repeat(HOST_BYTES_MAX + 1);
        assert!(matches!(meta.apply(1, &Command::RegisterBroker(bad)), Outcome::Rejected(_)));
        assert!(matches!(meta.apply(2, &Command::RegisterBroker(registration(-1, 1))), Outcome::Rejected(_)));
        assert!(meta.brokers.is_empty());
    }

    fn create(meta: &mut Metadata, index: u64, name: &str, assignments: Vec<Vec<i32>>) -> Outcome {
        meta.apply(index, &Command::CreateTopic { name: name.into(), id: index as u128, config: String::new(), assignments })
    }

    #[test]
    fn topics_are_placed_on_registered_brokers_only() {
        let mut meta = Metadata::default();
        meta.apply(1, &Command::RegisterBroker(registration(1, 1)));
        meta.apply(2, &Command::RegisterBroker(registration(2, 1)));
        assert!(matches!(create(&mut meta, 3, "t", vec![vec![1], vec![3]]), Outcome::Rejected(_)));
        assert!(matches!(create(&mut meta, 4, "t", vec![vec![1, 1]]), Outcome::Rejected(_)));
        assert!(matches!(create(&mut meta, 5, "t", vec![]), Outcome::Rejected(_)));
        assert_eq!(create(&mut meta, 6, "t", vec![vec![1], vec![2, 1]]), Outcome::Applied);
        assert_eq!(create(&mut meta, 7, "t", vec![vec![1]]), Outcome::TopicExists);
        let topic = &meta.topics["t"];
        assert_eq!((topic.created_at, topic.partitions[1].leader, topic.partitions[1].isr.clone()), (6, 2, vec![2, 1]));
        // Deletion and growth name the topic's id, so a late command cannot touch a newer topic.
        assert_eq!(meta.apply(8, &Command::DeleteTopic { name: "t".into(), id: 1 }), Outcome::UnknownTopic);
        let grow = Command::CreatePartitions { name: "t".into(), id: 6, assignments: vec![vec![2]] };
        assert_eq!(meta.apply(9, &grow), Outcome::Applied);
        assert_eq!(meta.topics["t"].partitions.len(), 3);
        assert_eq!(meta.apply(10, &Command::DeleteTopic { name: "t".into(), id: 6 }), Outcome::Applied);
        assert!(meta.topics.is_empty());
    }

    #[test]
    fn leaders_move_within_the_isr_when_brokers_are_fenced() {
        let mut meta = Metadata::default();
        for id in 1..=3 {
            meta.apply(id as u64, &Command::RegisterBroker(registration(id, 1)));
        }
        create(&mut meta, 4, "t", vec![vec![1, 2], vec![1]]);
        meta.apply(5, &Command::FenceBroker { broker_id: 1, epoch: 1 });
        let [replicated, single] = &meta.topics["t"].partitions[..] else { panic!() };
        assert_eq!((replicated.leader, replicated.leader_epoch, replicated.isr.clone()), (2, 1, vec![2]));
        assert_eq!((single.leader, single.leader_epoch, single.isr.clone()), (NO_LEADER, 1, vec![1]));
        assert_eq!((meta.offline_partitions(), meta.under_replicated_partitions()), (1, 1));
        // Back: it leads what only it can lead; the other partition keeps its leader (broker 1 is
        // out of that ISR until it catches up).
        meta.apply(6, &Command::UnfenceBroker { broker_id: 1, epoch: 1 });
        let [replicated, single] = &meta.topics["t"].partitions[..] else { panic!() };
        assert_eq!((replicated.leader, replicated.leader_epoch), (2, 1));
        assert_eq!((single.leader, single.leader_epoch), (1, 2));
        // A restarted process starts a new leader term for what only it holds in sync.
        meta.apply(7, &Command::RegisterBroker(registration(1, 2)));
        assert_eq!((meta.topics["t"].partitions[1].leader, meta.topics["t"].partitions[1].leader_epoch), (1, 4));
    }

    #[test]
    fn preferred_leaders_return_when_they_are_in_sync() {
        let mut meta = Metadata::default();
        for id in 1..=3 {
            meta.apply(id as u64, &Command::RegisterBroker(registration(id, 1)));
        }
        create(&mut meta, 4, "t", vec![vec![1, 2], vec![2, 1], vec![1, 3]]);
        meta.apply(5, &Command::FenceBroker { broker_id: 1, epoch: 1 });
        meta.apply(6, &Command::UnfenceBroker { broker_id: 1, epoch: 1 });
        // Broker 1 is back but out of the ISRs: nothing to elect yet.
        assert!(meta.imbalanced_partitions(0.1).is_empty());
        let named = |list: &[(i32, u128)]| Command::ElectPreferredLeaders {
            partitions: list.iter().map(|&(p, id)| ("t".to_string(), id, p)).collect(),
        };
        let outcome = meta.apply(7, &named(&[(0, 4), (1, 4), (5, 4), (0, 9)]));
        let results: Vec<Election> = match outcome {
            Outcome::Elections(results) => results.into_iter().map(|(_, _, e)| e).collect(),
            other => panic!("{other:?}"),
        };
        assert_eq!(results, [Election::PreferredNotAvailable, Election::NotNeeded, Election::UnknownPartition, Election::UnknownPartition]);
        // Once it rejoins the ISRs, both of its preferred partitions are imbalanced (2 of 2 > 10 %).
        for (p, leader) in [(0, 2), (2, 3)] {
            let epochs = (meta.topics["t"].partitions[p].leader_epoch, meta.topics["t"].partitions[p].partition_epoch);
            let alter = Command::AlterPartition {
                topic: "t".into(),
                id: 4,
                partition: p as i32,
                broker_id: leader,
                leader_epoch: epochs.0,
                partition_epoch: epochs.1,
                isr: vec![leader, 1],
            };
            assert_eq!(meta.apply(8 + p as u64, &alter), Outcome::Applied);
        }
        let imbalanced = meta.imbalanced_partitions(0.1);
        assert_eq!(imbalanced, vec![("t".to_string(), 4, 0), ("t".to_string(), 4, 2)]);
        let epoch = meta.topics["t"].partitions[0].leader_epoch;
        assert_eq!(meta.not_led_by_preferred(), imbalanced);
        let elected = meta.apply(20, &Command::ElectPreferredLeaders { partitions: imbalanced });
        assert_eq!(elected, Outcome::Elections(vec![("t".into(), 0, Election::Elected), ("t".into(), 2, Election::Elected)]));
        let p0 = &meta.topics["t"].partitions[0];
        assert_eq!((p0.leader, p0.leader_epoch), (1, epoch + 1));
        assert!(meta.imbalanced_partitions(0.1).is_empty());
    }

    #[test]
    fn clients_see_fenced_brokers_only_while_they_hold_replicas() {
        let mut meta = Metadata::default();
        for id in 1..=3 {
            meta.apply(id as u64, &Command::RegisterBroker(registration(id, 1)));
        }
        create(&mut meta, 4, "t", vec![vec![1, 2]]);
        let listed = |meta: &Metadata| meta.listed_brokers().map(|b| b.registration.broker_id).collect::<Vec<_>>();
        meta.apply(5, &Command::FenceBroker { broker_id: 1, epoch: 1 });
        meta.apply(6, &Command::FenceBroker { broker_id: 3, epoch: 3 });
        // Broker 1 is an offline replica of t-0; broker 3 holds nothing.
        assert_eq!(listed(&meta), vec![1, 2]);
        assert_eq!(meta.live_brokers().map(|b| b.registration.broker_id).collect::<Vec<_>>(), vec![2]);
        meta.apply(7, &Command::DeleteTopic { name: "t".into(), id: 4 });
        assert_eq!(listed(&meta), vec![2]);
    }

    #[test]
    fn leaders_change_their_isr_only_from_the_current_state() {
        let mut meta = Metadata::default();
        for id in 1..=3 {
            meta.apply(id as u64, &Command::RegisterBroker(registration(id, 1)));
        }
        create(&mut meta, 4, "t", vec![vec![1, 2, 3]]);
        let alter = |broker_id, leader_epoch, partition_epoch, isr: Vec<i32>| Command::AlterPartition {
            topic: "t".into(),
            id: 4,
            partition: 0,
            broker_id,
            leader_epoch,
            partition_epoch,
            isr,
        };
        // Only the leader, from the current epochs, with itself in the ISR.
        assert_eq!(meta.apply(5, &alter(2, 0, 0, vec![2])), Outcome::StalePartition);
        assert!(matches!(meta.apply(6, &alter(1, 0, 0, vec![2])), Outcome::Rejected(_)));
        assert!(matches!(meta.apply(7, &alter(1, 0, 0, vec![1, 4])), Outcome::Rejected(_)));
        assert_eq!(meta.apply(8, &alter(1, 0, 0, vec![1, 2])), Outcome::Applied);
        let p = &meta.topics["t"].partitions[0];
        assert_eq!((p.isr.clone(), p.partition_epoch, p.leader_epoch), (vec![1, 2], 1, 0));
        assert_eq!((meta.under_replicated_partitions(), meta.offline_partitions()), (1, 0));
        // A proposal from before that change is refused: it would undo it.
        assert_eq!(meta.apply(9, &alter(1, 0, 0, vec![1, 2, 3])), Outcome::StalePartition);
        // A fenced broker cannot join; a live one can.
        meta.apply(10, &Command::FenceBroker { broker_id: 3, epoch: 3 });
        assert!(matches!(meta.apply(11, &alter(1, 0, 1, vec![1, 2, 3])), Outcome::Rejected(_)));
        meta.apply(12, &Command::UnfenceBroker { broker_id: 3, epoch: 3 });
        assert_eq!(meta.apply(13, &alter(1, 0, 1, vec![1, 2, 3])), Outcome::Applied);
        // Fencing the leader moves leadership within the ISR and bumps both epochs.
        meta.apply(14, &Command::FenceBroker { broker_id: 1, epoch: 1 });
        let p = &meta.topics["t"].partitions[0];
        assert_eq!((p.leader, p.isr.clone(), p.leader_epoch, p.partition_epoch), (2, vec![2, 3], 1, 4));
        // A leader that restarts (a new incarnation, never fenced) hands over too: its log may
        // have lost what it had not made durable.
        meta.apply(15, &Command::UnfenceBroker { broker_id: 1, epoch: 1 });
        meta.apply(16, &Command::RegisterBroker(registration(2, 9)));
        let p = &meta.topics["t"].partitions[0];
        assert_eq!((p.leader, p.isr.clone(), p.leader_epoch), (3, vec![3], 2));

        // A batch: each change judged alone, in order (the second sees the first's new epoch).
        let change = |partition_epoch, isr: Vec<i32>| IsrChange {
            topic: "t".into(),
            id: 4,
            partition: 0,
            broker_id: 3,
            leader_epoch: 2,
            partition_epoch,
            isr,
        };
        let epoch = meta.topics["t"].partitions[0].partition_epoch;
        let batch =
            Command::AlterPartitions { changes: vec![change(epoch, vec![3, 1]), change(epoch, vec![3]), change(epoch + 1, vec![3])] };
        assert_eq!(meta.apply(17, &batch), Outcome::Altered(vec![Outcome::Applied, Outcome::StalePartition, Outcome::Applied]));
        assert_eq!(meta.topics["t"].partitions[0].isr, vec![3]);
        let invalid = Command::AlterPartitions { changes: vec![change(epoch + 2, vec![1])] };
        assert!(matches!(meta.apply(18, &invalid), Outcome::Rejected(_)), "a change without its leader in the ISR");
        assert!(Command::AlterPartitions { changes: Vec::new() }.validate().is_err());
    }

    fn reassign(meta: &mut Metadata, index: u64, target: Option<Vec<i32>>) -> Reassigned {
        let command = Command::ReassignPartitions { partitions: vec![Reassignment { topic: "t".into(), id: 5, partition: 0, target }] };
        match meta.apply(index, &command) {
            Outcome::Reassignments(mut results) => results.remove(0).2,
            other => panic!("unexpected outcome {other:?}"),
        }
    }

    fn isr_change(meta: &Metadata, isr: Vec<i32>) -> Command {
        let p = &meta.topics["t"].partitions[0];
        Command::AlterPartition {
            topic: "t".into(),
            id: 5,
            partition: 0,
            broker_id: p.leader,
            leader_epoch: p.leader_epoch,
            partition_epoch: p.partition_epoch,
            isr,
        }
    }

    #[test]
    fn a_reassignment_moves_a_partition_once_its_new_replicas_are_in_sync() {
        let mut meta = Metadata::default();
        for id in 1..=4 {
            meta.apply(id as u64, &Command::RegisterBroker(registration(id, 1)));
        }
        create(&mut meta, 5, "t", vec![vec![1]]);
        // From broker 1 to brokers 2 and 3: they are added, 1 leads until they are in sync.
        assert_eq!(reassign(&mut meta, 6, Some(vec![2, 3])), Reassigned::Started);
        let p = meta.topics["t"].partitions[0].clone();
        assert_eq!((p.replicas, p.adding, p.removing, p.isr, p.leader), (vec![2, 3, 1], vec![2, 3], vec![1], vec![1], 1));
        assert_eq!(meta.under_replicated_partitions(), 1);
        // One new replica in sync: still moving.
        assert_eq!(meta.apply(7, &isr_change(&meta, vec![1, 2])), Outcome::Applied);
        assert!(meta.topics["t"].partitions[0].reassigning());
        // Both: the partition moves, broker 1 leaves, broker 2 (the first target replica) leads.
        assert_eq!(meta.apply(8, &isr_change(&meta, vec![1, 2, 3])), Outcome::Applied);
        let p = meta.topics["t"].partitions[0].clone();
        assert!(!p.reassigning());
        assert_eq!((p.replicas, p.isr, p.leader, p.leader_epoch), (vec![2, 3], vec![2, 3], 2, 1));
        assert_eq!(meta.under_replicated_partitions(), 0);
        // A shrink needs no copy: done at once, the leader stays.
        assert_eq!(reassign(&mut meta, 9, Some(vec![2])), Reassigned::Completed);
        let p = meta.topics["t"].partitions[0].clone();
        assert_eq!((p.replicas, p.isr, p.leader, p.leader_epoch), (vec![2], vec![2], 2, 1));
        // Nothing to cancel; the same replicas again is nothing to do.
        assert_eq!(reassign(&mut meta, 10, None), Reassigned::NoReassignmentInProgress);
        assert_eq!(reassign(&mut meta, 11, Some(vec![2])), Reassigned::Completed);
    }

    #[test]
    fn a_reassignment_can_be_replaced_or_cancelled_and_refuses_what_cannot_work() {
        let mut meta = Metadata::default();
        for id in 1..=4 {
            meta.apply(id as u64, &Command::RegisterBroker(registration(id, 1)));
        }
        create(&mut meta, 5, "t", vec![vec![1, 2]]);
        assert_eq!(reassign(&mut meta, 6, Some(vec![3, 4])), Reassigned::Started);
        assert_eq!(meta.apply(7, &isr_change(&meta, vec![1, 2, 3])), Outcome::Applied);
        // Replaced: 3 (in sync) is no longer wanted and leaves the ISR at once.
        assert_eq!(reassign(&mut meta, 8, Some(vec![4, 1])), Reassigned::Started);
        let p = meta.topics["t"].partitions[0].clone();
        assert_eq!((p.replicas, p.adding, p.removing, p.isr), (vec![4, 1, 2], vec![4], vec![2], vec![1, 2]));
        // Cancelled: back to 1 and 2.
        assert_eq!(reassign(&mut meta, 9, None), Reassigned::Cancelled);
        let p = meta.topics["t"].partitions[0].clone();
        assert!(!p.reassigning());
        assert_eq!((p.replicas, p.isr, p.leader), (vec![1, 2], vec![1, 2], 1));
        // Refused, changing nothing.
        for bad in [vec![], vec![3, 3], vec![9]] {
            assert!(matches!(reassign(&mut meta, 10, Some(bad)), Reassigned::Invalid(_)));
        }
        assert_eq!(meta.topics["t"].partitions[0].replicas, vec![1, 2]);
        let unknown = Reassignment { topic: "t".into(), id: 5, partition: 7, target: Some(vec![1]) };
        let outcome = meta.apply(11, &Command::ReassignPartitions { partitions: vec![unknown] });
        assert_eq!(outcome, Outcome::Reassignments(vec![("t".into(), 7, Reassigned::UnknownPartition)]));
        assert!(Command::ReassignPartitions { partitions: Vec::new() }.validate().is_err());
        let huge = Reassignment { topic: "t".into(), id: 5, partition: 0, target: Some((0..=REPLICAS_MAX as i32).collect()) };
        assert!(Command::ReassignPartitions { partitions: vec![huge] }.validate().is_err(), "never reaches the log");
        // A partition whose every original replica fell out of sync cannot be cancelled back.
        assert_eq!(reassign(&mut meta, 12, Some(vec![3, 4])), Reassigned::Started);
        assert_eq!(meta.apply(13, &isr_change(&meta, vec![1, 2, 3])), Outcome::Applied);
        meta.apply(14, &Command::FenceBroker { broker_id: 1, epoch: 1 });
        meta.apply(15, &Command::FenceBroker { broker_id: 2, epoch: 2 });
        let p = meta.topics["t"].partitions[0].clone();
        assert_eq!((p.isr, p.leader), (vec![3], 3));
        assert!(matches!(reassign(&mut meta, 16, None), Reassigned::Invalid(_)));
        // 4 joins: the move completes, led by 3.
        assert_eq!(meta.apply(17, &isr_change(&meta, vec![3, 4])), Outcome::Applied);
        let p = meta.topics["t"].partitions[0].clone();
        assert_eq!((p.replicas, p.isr, p.leader), (vec![3, 4], vec![3, 4], 3));
    }

    #[test]
    fn producer_id_blocks_never_overlap() {
        let mut meta = Metadata::default();
        meta.apply(1, &Command::RegisterBroker(registration(1, 1)));
        let allocate = |count, at_least| Command::AllocateProducerIds { broker_id: 1, count, at_least };
        assert_eq!(meta.apply(2, &allocate(1000, 0)), Outcome::ProducerIds { first: 0 });
        assert_eq!(meta.apply(3, &allocate(1000, 5000)), Outcome::ProducerIds { first: 5000 });
        assert_eq!(meta.apply(4, &allocate(10, 0)), Outcome::ProducerIds { first: 6000 });
        assert!(matches!(meta.apply(5, &allocate(0, 0)), Outcome::Rejected(_)));
        assert!(matches!(meta.apply(6, &allocate(1, -1)), Outcome::Rejected(_)));
        assert_eq!(meta.next_producer_id, 6010);
    }
}
