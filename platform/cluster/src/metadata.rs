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

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The longest host name a registration may carry (DNS names are at most 253 bytes).
pub const HOST_BYTES_MAX: usize = 255;
/// The longest rack id a registration may carry.
pub const RACK_BYTES_MAX: usize = 255;

/// Where a broker serves Kafka clients, and who it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerRegistration {
    pub broker_id: i32,
    /// Chosen at random when the broker process starts: tells a restart from a retried request.
    pub incarnation: u128,
    pub host: String,
    pub port: u16,
    pub rack: Option<String>,
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
}

impl Command {
    /// Refuses a command no real node would propose, before it reaches the log (it is checked again
    /// when applied, where a refusal changes nothing).
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Command::RegisterBroker(registration) => registration.validate(),
            Command::FenceBroker { .. } | Command::UnfenceBroker { .. } => Ok(()),
        }
    }
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

/// The state every controller node holds, rebuilt from snapshot + log at start-up.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    pub brokers: BTreeMap<i32, BrokerState>,
}

impl Metadata {
    /// Applies the command committed at log `index`.
    pub fn apply(&mut self, index: u64, command: &Command) -> Outcome {
        match command {
            Command::RegisterBroker(registration) => {
                if let Err(reason) = registration.validate() {
                    return Outcome::Rejected(reason);
                }
                if let Some(existing) = self.brokers.get_mut(&registration.broker_id)
                    && existing.registration.incarnation == registration.incarnation
                {
                    // The same process asking again (its first request's reply was lost): same epoch,
                    // but its address may have been corrected.
                    existing.registration = registration.clone();
                    existing.fenced = false;
                    return Outcome::Registered { epoch: existing.epoch };
                }
                let state = BrokerState { registration: registration.clone(), epoch: index, fenced: false };
                self.brokers.insert(registration.broker_id, state);
                Outcome::Registered { epoch: index }
            }
            Command::FenceBroker { broker_id, epoch } => self.set_fenced(*broker_id, *epoch, true),
            Command::UnfenceBroker { broker_id, epoch } => self.set_fenced(*broker_id, *epoch, false),
        }
    }

    fn set_fenced(&mut self, broker_id: i32, epoch: u64, fenced: bool) -> Outcome {
        match self.brokers.get_mut(&broker_id) {
            None => Outcome::Rejected(format!("broker {broker_id} is not registered")),
            Some(state) if state.epoch != epoch => Outcome::Rejected(format!("broker {broker_id} has epoch {}, not {epoch}", state.epoch)),
            Some(state) => {
                state.fenced = fenced;
                Outcome::Applied
            }
        }
    }

    /// Brokers clients may be sent to: registered and not fenced.
    pub fn live_brokers(&self) -> impl Iterator<Item = &BrokerState> {
        self.brokers.values().filter(|b| !b.fenced)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registration(id: i32, incarnation: u128) -> BrokerRegistration {
        BrokerRegistration { broker_id: id, incarnation, host: "127.0.0.1".into(), port: 9092, rack: None }
    }

    #[test]
    fn a_registration_takes_its_log_index_as_epoch() {
        let mut meta = Metadata::default();
        assert_eq!(meta.apply(7, &Command::RegisterBroker(registration(1, 10))), Outcome::Registered { epoch: 7 });
        // A retry from the same process keeps the epoch; a restarted process gets a new one.
        assert_eq!(meta.apply(9, &Command::RegisterBroker(registration(1, 10))), Outcome::Registered { epoch: 7 });
        assert_eq!(meta.apply(12, &Command::RegisterBroker(registration(1, 11))), Outcome::Registered { epoch: 12 });
        assert_eq!(meta.brokers[&1].epoch, 12);
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
}
