//! Consumer-group membership in the coordinators' keyed log, the way Kafka keeps its group metadata
//! records in `__consumer_offsets`: one record per group, keyed by the group id, holding what the
//! group looked like when it last settled — its generation, protocol, leader and every member with
//! its subscription and assignment (a Stable generation), or just its generation once it became Empty.
//! A tombstone forgets the group. A single node keeps them in its data directory
//! (`__consumer_groups-0`); a cluster's coordinators keep them in `__sluice_coordinator-0` beside
//! the offsets and transactions (tag `g`), so the broker that takes over coordination loads every
//! settled group as it was and its members carry on: heartbeats, commits and transactional offset
//! commits in their generation are accepted without a rebalance.
//!
//! A record is written before the generation it describes is handed out (the leader's SyncGroup
//! waits for it) and when a group empties; in-between states (a rebalance under way) are not
//! recorded, as in Kafka: a coordinator that takes over mid-rebalance loads the last settled
//! generation and its members rejoin. Membership too large for one batch of the log is recorded
//! without its members (the next coordinator loads the group empty, with its generation, and the
//! members rejoin) rather than refusing the group.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::error::BrokerError;
use crate::internal_log::{BATCH_RECORD_BYTES_MAX, KeyedEntry, KeyedLog, SharedLog, record_bytes_max};

pub(crate) const GROUPS_DIR_NAME: &str = "__consumer_groups-0";
/// This store's tag in the coordinator's shared log.
const SHARED_TAG: u8 = b'g';
/// What rmp-serde adds to a member's strings and bytes at most: the array header, eight string or
/// binary headers of up to 5 bytes, an `Option` and two u64s of up to 9.
const MEMBER_OVERHEAD_BYTES_MAX: usize = 64;
/// The same for the group's own fields.
const GROUP_OVERHEAD_BYTES_MAX: usize = 64;

/// A group as it last settled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct GroupRecord {
    pub(crate) generation: i32,
    pub(crate) protocol_type: Option<String>,
    pub(crate) protocol_name: Option<String>,
    pub(crate) leader: Option<String>,
    /// Broker time (ms) the group became empty; meaningful when `members` is empty.
    pub(crate) empty_since_ms: i64,
    /// Empty for an Empty group, or when the membership was too large to record.
    pub(crate) members: Vec<MemberRecord>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct MemberRecord {
    pub(crate) member_id: String,
    pub(crate) group_instance_id: Option<String>,
    pub(crate) client_id: String,
    pub(crate) client_host: String,
    pub(crate) session_timeout_ms: u64,
    pub(crate) rebalance_timeout_ms: u64,
    /// The member's metadata for the group's protocol.
    #[serde(with = "bytes_as_bin")]
    pub(crate) subscription: Bytes,
    #[serde(with = "bytes_as_bin")]
    pub(crate) assignment: Bytes,
}

/// `Bytes` as MessagePack binary (serde's default for a byte container is an array of integers).
mod bytes_as_bin {
    use bytes::Bytes;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(bytes: &Bytes, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(bytes)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Bytes, D::Error> {
        serde_bytes::ByteBuf::deserialize(deserializer).map(|buf| Bytes::from(buf.into_vec()))
    }
}

impl MemberRecord {
    fn bytes_max(&self) -> usize {
        self.member_id.len()
            + self.group_instance_id.as_ref().map_or(0, String::len)
            + self.client_id.len()
            + self.client_host.len()
            + self.subscription.len()
            + self.assignment.len()
            + MEMBER_OVERHEAD_BYTES_MAX
    }
}

impl GroupRecord {
    /// The most bytes this record takes in a batch of the log, keyed by a group id of `group_bytes`.
    fn record_bytes_max(&self, group_bytes: usize) -> usize {
        let strings =
            [&self.protocol_type, &self.protocol_name, &self.leader].iter().map(|s| s.as_ref().map_or(0, String::len)).sum::<usize>();
        let members = self.members.iter().map(MemberRecord::bytes_max).sum::<usize>();
        record_bytes_max(group_bytes, strings + members + GROUP_OVERHEAD_BYTES_MAX)
    }
}

fn encode(record: &GroupRecord) -> Result<Vec<u8>, BrokerError> {
    rmp_serde::to_vec(record).map_err(|source| BrokerError::Encode { what: "a group's membership", source })
}

/// The last record of every group, as encoded in the log (what a snapshot or rewrite copies).
type Live = HashMap<String, Vec<u8>>;

fn replay(live: &mut Live, key: &[u8], value: Option<&[u8]>) {
    let Ok(group) = std::str::from_utf8(key) else {
        tracing::warn!("skipping a group record whose key is not a group id");
        return;
    };
    match value {
        Some(value) => {
            live.insert(group.to_string(), value.to_vec());
        }
        None => {
            live.remove(group);
        }
    }
}

pub(crate) struct GroupStore {
    log: KeyedLog,
    live: Mutex<Live>,
}

impl GroupStore {
    /// A single node's (or a cluster broker's own plugins') group records. Blocking file I/O.
    pub(crate) fn open(data_dir: &Path, now: i64) -> Result<GroupStore, BrokerError> {
        let mut live = Live::new();
        let log = KeyedLog::open(data_dir, GROUPS_DIR_NAME, now, |key, value| replay(&mut live, key, value))?;
        Ok(GroupStore { log, live: Mutex::new(live) })
    }

    /// A cluster's clients' group records, replayed from the coordinator's replicated log. Blocking.
    pub(crate) fn open_shared(log: Arc<SharedLog>) -> Result<GroupStore, BrokerError> {
        let mut live = Live::new();
        let log = KeyedLog::open_shared(log, "groups", SHARED_TAG, |key, value| replay(&mut live, key, value))?;
        Ok(GroupStore { log, live: Mutex::new(live) })
    }

    /// Every group's last record. An unreadable record is skipped (its group starts afresh).
    pub(crate) fn groups(&self) -> Vec<(String, GroupRecord)> {
        self.live
            .lock()
            .iter()
            .filter_map(|(group, value)| match rmp_serde::from_slice::<GroupRecord>(value) {
                Ok(record) => Some((group.clone(), record)),
                Err(error) => {
                    tracing::warn!(group, %error, "skipping an unreadable group record; the group starts empty");
                    None
                }
            })
            .collect()
    }

    /// Bytes of the live records.
    pub(crate) fn live_bytes(&self) -> u64 {
        self.live.lock().iter().map(|(group, value)| (group.len() + value.len()) as u64).sum()
    }

    /// Records a group's new state, or forgets it (`None`), building the record with `build` while
    /// holding the log: writes of one store are appended in the order their states were built, so
    /// the log's last record of a group is its newest state. `build` returns `None` when there is
    /// nothing to write. A record too large for one batch is written without its members (see the
    /// module docs). Blocking file I/O (a cluster's: an acks=all write).
    pub(crate) fn write_with(
        &self,
        group: &str,
        fsync: bool,
        build: impl FnOnce() -> Option<Option<GroupRecord>>,
    ) -> Result<(), BrokerError> {
        let mut log = self.log.lock();
        let Some(record) = build() else { return Ok(()) };
        let value = match record {
            Some(mut record) => {
                if record.record_bytes_max(group.len()) > BATCH_RECORD_BYTES_MAX {
                    tracing::warn!(
                        group,
                        members = record.members.len(),
                        "the group's membership is too large for one record; recorded without its members (they rejoin after a coordinator move)"
                    );
                    record.members.clear();
                }
                Some(encode(&record)?)
            }
            None if !self.live.lock().contains_key(group) => return Ok(()),
            None => None,
        };
        let entry: KeyedEntry = (group.as_bytes().to_vec(), value);
        let appended = log.append(std::slice::from_ref(&entry), fsync);
        // Even when the append failed: it may still have reached the log (an acks=all wait that
        // timed out, an fsync that failed after the write), and a later snapshot must not copy the
        // previous state after it — a group's generation never goes back. A state that never got
        // there is one the coordinator built: newer than what the members hold, so they rejoin.
        let mut live = self.live.lock();
        match entry.1 {
            Some(value) => {
                live.insert(group.to_string(), value);
            }
            None => {
                live.remove(group);
            }
        }
        appended?;
        let (entries, bytes) = (live.len(), live.iter().map(|(g, v)| (g.len() + v.len()) as u64).sum::<u64>());
        if log.wants_rewrite(entries, bytes / entries.max(1) as u64 + 1) {
            let records: Vec<(Vec<u8>, Vec<u8>)> = live.iter().map(|(g, v)| (g.as_bytes().to_vec(), v.clone())).collect();
            drop(live);
            if let Err(error) = log.rewrite(&records) {
                tracing::warn!(%error, "group records log rewrite failed; keeping the current log");
            }
        }
        Ok(())
    }

    /// Appends every live record to a shared log and returns where that snapshot starts (see
    /// `internal_log`). Blocking.
    pub(crate) fn snapshot(&self) -> Result<i64, BrokerError> {
        let mut log = self.log.lock();
        let records: Vec<(Vec<u8>, Vec<u8>)> = self.live.lock().iter().map(|(g, v)| (g.as_bytes().to_vec(), v.clone())).collect();
        log.snapshot(&records)
    }

    pub(crate) fn close(&self) {
        self.log.close();
    }
}

#[cfg(test)]
impl GroupStore {
    pub(crate) fn break_for_tests(&self) {
        self.log.lock().break_for_tests();
    }
}
