//! The cluster's controller quorum: the Raft-replicated metadata log that every Sluice node runs a
//! voter of (KRaft's combined mode), on [`openraft`].
//!
//! - [`metadata`]: the state the quorum agrees on and the commands that change it;
//! - [`log_store`]: the Raft log and vote on disk;
//! - [`state_machine`]: the applied state and its snapshots;
//! - [`network`]: the framed TCP transport between nodes;
//! - [`controller`]: one node — starts Raft, forwards writes to the leader, fences brokers whose
//!   heartbeats stop, registers and heartbeats this node's broker.
//!
//! A single node is a one-voter quorum with no listener; `controller.quorum.voters` with more than
//! one voter makes each node listen on its own voter address.

// `declare_raft_types!` names the default snapshot type unqualified.
use std::io::Cursor;

pub mod controller;
pub mod log_store;
pub mod metadata;
pub mod network;
pub mod state_machine;

pub use controller::{Controller, ControllerConfig, ControllerError, ControllerStatus, HeartbeatReply, parse_voters};
pub use metadata::{
    BrokerRegistration, BrokerState, Command, Committed, ELECTIONS_PER_COMMAND_MAX, Election, ISR_CHANGES_PER_COMMAND_MAX, IsrChange,
    Metadata, NO_LEADER, Outcome, PartitionState, REASSIGNMENTS_PER_COMMAND_MAX, REPLICAS_MAX, Reassigned, Reassignment, TopicState,
};

/// Node ids as Raft sees them (Kafka's `node.id`, which is non-negative).
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// openraft's type parameters for the controller quorum.
    pub TypeConfig:
        D = Command,
        R = Outcome,
        NodeId = NodeId,
        Node = openraft::BasicNode,
);
