//! A classic-protocol consumer-group member (JoinGroup → SyncGroup → Heartbeat / OffsetCommit →
//! LeaveGroup) with the `range` assignor, as Kafka's consumers implement it, so a member shares
//! partitions with Java / librdkafka consumers that also offer `range`. Also the offset calls outside a
//! generation (OffsetFetch, and OffsetCommit as admin tools and mirrors use it).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ConsumerProtocolAssignment, ConsumerProtocolSubscription, HeartbeatRequest, JoinGroupRequest, LeaveGroupRequest,
    OffsetCommitRequest, OffsetFetchRequest, SyncGroupRequest, consumer_protocol_assignment, join_group_request::JoinGroupRequestProtocol,
    leave_group_request::MemberIdentity, offset_commit_request::OffsetCommitRequestPartition,
    offset_commit_request::OffsetCommitRequestTopic, offset_fetch_request::OffsetFetchRequestTopic,
    sync_group_request::SyncGroupRequestAssignment,
};
use kafka_protocol::protocol::{Decodable, Encodable};

use crate::client::Client;
use crate::codes as code;
use crate::codes::error_label;
use crate::error::{ClientError, KafkaError, Result};
use crate::versions::{
    HEARTBEAT_VERSIONS, JOIN_GROUP_VERSIONS, LEAVE_GROUP_VERSIONS, OFFSET_COMMIT_VERSIONS, OFFSET_FETCH_VERSIONS, SYNC_GROUP_VERSIONS,
};
use crate::{group_id, str_bytes, topic_name};

/// The protocol type every Kafka consumer uses; members of other types (e.g. Connect) cannot share.
const CONSUMER_PROTOCOL_TYPE: &str = "consumer";
/// The only assignor offered; Kafka consumers all implement it.
const RANGE_ASSIGNOR: &str = "range";
/// Version of the subscription / assignment schema written (v0: topics and user data).
const CONSUMER_PROTOCOL_VERSION: i16 = 0;
/// Newest subscription / assignment schema this client can read; newer ones only append fields.
const CONSUMER_PROTOCOL_VERSION_MAX: i16 = 3;
/// How long the coordinator waits without a heartbeat before it evicts us.
pub const SESSION_TIMEOUT_MS: i32 = 10_000;
/// How long the coordinator waits for members to rejoin during a rebalance.
const REBALANCE_TIMEOUT_MS: i32 = 20_000;
/// Heartbeats per session timeout, as Kafka's consumer does (`heartbeat.interval.ms` = session / 3).
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(SESSION_TIMEOUT_MS as u64 / 3);
/// Join attempts before giving up; each retriable error costs one.
const JOIN_ATTEMPTS_MAX: u32 = 20;
/// Pause between join attempts after a retriable error.
const JOIN_RETRY_PAUSE: Duration = Duration::from_millis(200);

/// The negotiated versions of the group APIs.
#[derive(Debug, Clone, Copy)]
struct Versions {
    join: i16,
    sync: i16,
    heartbeat: i16,
    leave: i16,
}

/// What a heartbeat learned.
#[derive(Debug, PartialEq, Eq)]
pub enum Heartbeat {
    Stable,
    /// The group is rebalancing (a member joined or left): commit and rejoin.
    Rebalance,
}

/// One membership of a consumer group.
pub struct GroupMember {
    pub group: String,
    coordinator: String,
    pub member_id: String,
    pub generation: i32,
    topics: Vec<String>,
    versions: Versions,
    /// Partitions assigned to this member, by topic.
    pub assignment: BTreeMap<String, Vec<i32>>,
}

impl GroupMember {
    /// Finds the coordinator, joins `group` subscribed to `topics` and waits for an assignment.
    pub async fn join(client: &Client, group: &str, topics: Vec<String>) -> Result<GroupMember> {
        let versions = Versions {
            join: client.version(ApiKey::JoinGroup, JOIN_GROUP_VERSIONS)?,
            sync: client.version(ApiKey::SyncGroup, SYNC_GROUP_VERSIONS)?,
            heartbeat: client.version(ApiKey::Heartbeat, HEARTBEAT_VERSIONS)?,
            leave: client.version(ApiKey::LeaveGroup, LEAVE_GROUP_VERSIONS)?,
        };
        let coordinator = client.find_coordinator(group).await?;
        let mut member = GroupMember {
            group: group.to_string(),
            coordinator,
            member_id: String::new(),
            generation: -1,
            topics,
            versions,
            assignment: BTreeMap::new(),
        };
        member.rejoin(client).await?;
        Ok(member)
    }

    /// Runs JoinGroup and SyncGroup until the group settles and this member has its assignment.
    pub async fn rejoin(&mut self, client: &Client) -> Result<()> {
        let mut subscription = BytesMut::new();
        subscription.put_i16(CONSUMER_PROTOCOL_VERSION);
        ConsumerProtocolSubscription::default()
            .with_topics(self.topics.iter().map(|t| str_bytes(t)).collect())
            .encode(&mut subscription, CONSUMER_PROTOCOL_VERSION)
            .map_err(|e| ClientError::Records { detail: format!("encoding a group subscription: {e:#}") })?;
        let subscription = subscription.freeze();
        let mut last_error = String::new();
        for _attempt in 0..JOIN_ATTEMPTS_MAX {
            let request = JoinGroupRequest::default()
                .with_group_id(group_id(&self.group))
                .with_session_timeout_ms(SESSION_TIMEOUT_MS)
                .with_rebalance_timeout_ms(REBALANCE_TIMEOUT_MS)
                .with_member_id(str_bytes(&self.member_id))
                .with_protocol_type(str_bytes(CONSUMER_PROTOCOL_TYPE))
                .with_protocols(vec![
                    JoinGroupRequestProtocol::default().with_name(str_bytes(RANGE_ASSIGNOR)).with_metadata(subscription.clone()),
                ]);
            let coordinator = self.coordinator.clone();
            let joined = client.call_at(&coordinator, &request, self.versions.join).await?;
            match joined.error_code {
                code::NONE => {}
                code::MEMBER_ID_REQUIRED => {
                    self.member_id = joined.member_id.to_string();
                    continue;
                }
                code::UNKNOWN_MEMBER_ID | code::ILLEGAL_GENERATION => {
                    self.member_id.clear();
                    continue;
                }
                code::REBALANCE_IN_PROGRESS | code::COORDINATOR_LOAD_IN_PROGRESS => {
                    last_error = error_label(joined.error_code);
                    tokio::time::sleep(JOIN_RETRY_PAUSE).await;
                    continue;
                }
                code::NOT_COORDINATOR | code::COORDINATOR_NOT_AVAILABLE => {
                    last_error = error_label(joined.error_code);
                    tokio::time::sleep(JOIN_RETRY_PAUSE).await;
                    self.coordinator = client.find_coordinator(&self.group).await?;
                    continue;
                }
                other => return Err(ClientError::kafka(format!("joining group `{}`", self.group), KafkaError::new(other, None))),
            }
            self.member_id = joined.member_id.to_string();
            self.generation = joined.generation_id;
            if let Some(protocol) = &joined.protocol_name
                && protocol.as_str() != RANGE_ASSIGNOR
            {
                return Err(ClientError::Group {
                    group: self.group.clone(),
                    detail: format!("the group settled on assignor `{}`, which this client does not implement", protocol.as_str()),
                });
            }
            let assignments = if joined.leader.as_str() == self.member_id {
                let mut subscriptions = BTreeMap::new();
                for member in &joined.members {
                    subscriptions.insert(member.member_id.to_string(), decode_subscription(&member.metadata)?);
                }
                let wanted: Vec<String> = subscriptions.values().flatten().cloned().collect::<BTreeSet<_>>().into_iter().collect();
                let meta = client.metadata(Some(&wanted)).await?;
                let counts: BTreeMap<String, usize> =
                    meta.topics.iter().filter(|t| t.error_code == 0).map(|t| (t.name.clone(), t.partitions.len())).collect();
                range_assign(&subscriptions, &counts)
                    .into_iter()
                    .map(|(member, assignment)| {
                        Ok(SyncGroupRequestAssignment::default()
                            .with_member_id(str_bytes(&member))
                            .with_assignment(encode_assignment(&assignment)?))
                    })
                    .collect::<Result<Vec<_>>>()?
            } else {
                Vec::new()
            };
            let mut sync = SyncGroupRequest::default()
                .with_group_id(group_id(&self.group))
                .with_generation_id(self.generation)
                .with_member_id(str_bytes(&self.member_id))
                .with_assignments(assignments);
            if self.versions.sync >= 5 {
                sync = sync.with_protocol_type(Some(str_bytes(CONSUMER_PROTOCOL_TYPE))).with_protocol_name(Some(str_bytes(RANGE_ASSIGNOR)));
            }
            let synced = client.call_at(&coordinator, &sync, self.versions.sync).await?;
            match synced.error_code {
                code::NONE => {
                    self.assignment = decode_assignment(&synced.assignment)?;
                    return Ok(());
                }
                code::REBALANCE_IN_PROGRESS => {
                    last_error = error_label(synced.error_code);
                    continue;
                }
                code::UNKNOWN_MEMBER_ID | code::ILLEGAL_GENERATION => {
                    last_error = error_label(synced.error_code);
                    self.member_id.clear();
                    continue;
                }
                other => return Err(ClientError::kafka(format!("SyncGroup for group `{}`", self.group), KafkaError::new(other, None))),
            }
        }
        Err(ClientError::GroupUnsettled { group: self.group.clone(), attempts: JOIN_ATTEMPTS_MAX, last: last_error })
    }

    /// Tells the coordinator we are alive; learns whether a rebalance started.
    pub async fn heartbeat(&mut self, client: &Client) -> Result<Heartbeat> {
        let request = HeartbeatRequest::default()
            .with_group_id(group_id(&self.group))
            .with_generation_id(self.generation)
            .with_member_id(str_bytes(&self.member_id));
        let coordinator = self.coordinator.clone();
        let response = client.call_at(&coordinator, &request, self.versions.heartbeat).await?;
        match response.error_code {
            code::NONE => Ok(Heartbeat::Stable),
            code::REBALANCE_IN_PROGRESS => Ok(Heartbeat::Rebalance),
            code::UNKNOWN_MEMBER_ID | code::ILLEGAL_GENERATION | code::FENCED_INSTANCE_ID => {
                // Evicted (e.g. the process was stopped for longer than the session): join afresh.
                self.member_id.clear();
                Ok(Heartbeat::Rebalance)
            }
            other => Err(ClientError::kafka(format!("heartbeat in group `{}`", self.group), KafkaError::new(other, None))),
        }
    }

    /// Commits `offsets` (topic → partition → next offset to read) as this member.
    pub async fn commit(&self, client: &Client, offsets: &BTreeMap<String, BTreeMap<i32, i64>>) -> Result<()> {
        commit_offsets(client, &self.coordinator, &self.group, self.generation, &self.member_id, offsets).await
    }

    /// Committed offsets of this member's assignment.
    pub async fn committed(&self, client: &Client) -> Result<BTreeMap<String, BTreeMap<i32, i64>>> {
        fetch_offsets(client, &self.coordinator, &self.group, Some(&self.assignment)).await
    }

    /// Leaves the group so the others rebalance at once instead of after the session timeout.
    pub async fn leave(&self, client: &Client) -> Result<()> {
        let mut request = LeaveGroupRequest::default().with_group_id(group_id(&self.group));
        if self.versions.leave >= 3 {
            request.members = vec![MemberIdentity::default().with_member_id(str_bytes(&self.member_id))];
        } else {
            request.member_id = str_bytes(&self.member_id);
        }
        let coordinator = self.coordinator.clone();
        let response = client.call_at(&coordinator, &request, self.versions.leave).await?;
        match response.error_code {
            code::NONE | code::UNKNOWN_MEMBER_ID => Ok(()),
            other => Err(ClientError::kafka(format!("leaving group `{}`", self.group), KafkaError::new(other, None))),
        }
    }
}

/// Commits offsets to `group` on `coordinator`. Outside a generation (`generation` -1, empty member id)
/// this is how admin tools set an empty group's offsets.
pub async fn commit_offsets(
    client: &Client,
    coordinator: &str,
    group: &str,
    generation: i32,
    member_id: &str,
    offsets: &BTreeMap<String, BTreeMap<i32, i64>>,
) -> Result<()> {
    if offsets.values().all(|p| p.is_empty()) {
        return Ok(());
    }
    let version = client.version(ApiKey::OffsetCommit, OFFSET_COMMIT_VERSIONS)?;
    let mut request = OffsetCommitRequest::default()
        .with_group_id(group_id(group))
        .with_generation_id_or_member_epoch(generation)
        .with_member_id(str_bytes(member_id))
        .with_topics(
            offsets
                .iter()
                .map(|(topic, partitions)| {
                    OffsetCommitRequestTopic::default().with_name(topic_name(topic)).with_partitions(
                        partitions
                            .iter()
                            .map(|(&p, &offset)| {
                                OffsetCommitRequestPartition::default().with_partition_index(p).with_committed_offset(offset)
                            })
                            .collect(),
                    )
                })
                .collect(),
        );
    if (2..=4).contains(&version) {
        request.retention_time_ms = -1;
    }
    if version >= 6 {
        request.topics.iter_mut().flat_map(|t| t.partitions.iter_mut()).for_each(|p| p.committed_leader_epoch = -1);
    }
    let response = client.call_at(coordinator, &request, version).await?;
    for topic in &response.topics {
        for p in &topic.partitions {
            if let Some(error) = KafkaError::from_code(p.error_code, None) {
                let operation = format!("committing offsets ({} partition {})", topic.name.0.as_str(), p.partition_index);
                // Inside a generation these mean the group moved on: rejoin, then commit again.
                if generation >= 0
                    && matches!(p.error_code, code::UNKNOWN_MEMBER_ID | code::ILLEGAL_GENERATION | code::REBALANCE_IN_PROGRESS)
                {
                    return Err(ClientError::RejoinNeeded { group: group.to_string(), operation, error });
                }
                return Err(ClientError::kafka(format!("{operation} for group `{group}`"), error));
            }
        }
    }
    Ok(())
}

/// Committed offsets of `group`, for `only` (topic → partitions) or for everything when `None`.
/// Partitions without a committed offset are left out.
pub async fn fetch_offsets(
    client: &Client,
    coordinator: &str,
    group: &str,
    only: Option<&BTreeMap<String, Vec<i32>>>,
) -> Result<BTreeMap<String, BTreeMap<i32, i64>>> {
    let version = client.version(ApiKey::OffsetFetch, OFFSET_FETCH_VERSIONS)?;
    if only.is_none() && version < 2 {
        return Err(ClientError::InvalidRequest(format!(
            "the broker's OffsetFetch v{version} cannot list all of a group's offsets (v2+ needed)"
        )));
    }
    let request = OffsetFetchRequest::default().with_group_id(group_id(group)).with_topics(only.map(|topics| {
        topics
            .iter()
            .map(|(t, partitions)| OffsetFetchRequestTopic::default().with_name(topic_name(t)).with_partition_indexes(partitions.clone()))
            .collect()
    }));
    let response = client.call_at(coordinator, &request, version).await?;
    if version >= 2 && response.error_code != 0 {
        return Err(ClientError::kafka(
            format!("fetching committed offsets of group `{group}`"),
            KafkaError::new(response.error_code, None),
        ));
    }
    let mut out: BTreeMap<String, BTreeMap<i32, i64>> = BTreeMap::new();
    for topic in &response.topics {
        for p in &topic.partitions {
            if let Some(error) = KafkaError::from_code(p.error_code, None) {
                return Err(ClientError::kafka(
                    format!(
                        "fetching the committed offset of {} partition {} for group `{group}`",
                        topic.name.0.as_str(),
                        p.partition_index
                    ),
                    error,
                ));
            }
            if p.committed_offset >= 0 {
                out.entry(topic.name.0.to_string()).or_default().insert(p.partition_index, p.committed_offset);
            }
        }
    }
    Ok(out)
}

impl Client {
    /// Committed offsets of `group` (topic → partition → next offset to read), for `only` or for every
    /// partition it has committed; finds the coordinator first.
    pub async fn group_offsets(
        &self,
        group: &str,
        only: Option<&BTreeMap<String, Vec<i32>>>,
    ) -> Result<BTreeMap<String, BTreeMap<i32, i64>>> {
        let coordinator = self.find_coordinator(group).await?;
        fetch_offsets(self, &coordinator, group, only).await
    }

    /// Commits `offsets` to `group` outside any generation, as admin tools and mirrors do (the group
    /// must have no active members); finds the coordinator first.
    pub async fn commit_group_offsets(&self, group: &str, offsets: &BTreeMap<String, BTreeMap<i32, i64>>) -> Result<()> {
        let coordinator = self.find_coordinator(group).await?;
        commit_offsets(self, &coordinator, group, -1, "", offsets).await
    }
}

/// Reads the topics out of a member's subscription metadata.
pub fn decode_subscription(metadata: &Bytes) -> Result<Vec<String>> {
    let mut buf = metadata.clone();
    if buf.remaining() < 2 {
        return Err(ClientError::Records { detail: format!("a group member sent subscription metadata of {} bytes", metadata.len()) });
    }
    let version = buf.get_i16().clamp(0, CONSUMER_PROTOCOL_VERSION_MAX);
    let subscription = ConsumerProtocolSubscription::decode(&mut buf, version)
        .map_err(|e| ClientError::Records { detail: format!("decoding a member's subscription: {e:#}") })?;
    Ok(subscription.topics.iter().map(|t| t.to_string()).collect())
}

/// Reads an assignment (topic → partitions); empty bytes mean nothing assigned.
pub fn decode_assignment(bytes: &Bytes) -> Result<BTreeMap<String, Vec<i32>>> {
    let mut buf = bytes.clone();
    if buf.remaining() < 2 {
        return Ok(BTreeMap::new());
    }
    let version = buf.get_i16().clamp(0, CONSUMER_PROTOCOL_VERSION_MAX);
    let assignment = ConsumerProtocolAssignment::decode(&mut buf, version)
        .map_err(|e| ClientError::Records { detail: format!("decoding a group assignment: {e:#}") })?;
    let mut out: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for tp in assignment.assigned_partitions {
        let partitions = out.entry(tp.topic.0.to_string()).or_default();
        partitions.extend(tp.partitions);
        partitions.sort_unstable();
    }
    Ok(out)
}

fn encode_assignment(assignment: &BTreeMap<String, Vec<i32>>) -> Result<Bytes> {
    let mut buf = BytesMut::new();
    buf.put_i16(CONSUMER_PROTOCOL_VERSION);
    ConsumerProtocolAssignment::default()
        .with_assigned_partitions(
            assignment
                .iter()
                .map(|(topic, partitions)| {
                    consumer_protocol_assignment::TopicPartition::default()
                        .with_topic(topic_name(topic))
                        .with_partitions(partitions.clone())
                })
                .collect(),
        )
        .encode(&mut buf, CONSUMER_PROTOCOL_VERSION)
        .map_err(|e| ClientError::Records { detail: format!("encoding a group assignment: {e:#}") })?;
    Ok(buf.freeze())
}

/// Kafka's `RangeAssignor`: per topic, the members subscribed to it in member-id order each get a
/// contiguous range of partitions; the first `partitions % members` get one extra.
pub fn range_assign(
    subscriptions: &BTreeMap<String, Vec<String>>,
    partition_counts: &BTreeMap<String, usize>,
) -> BTreeMap<String, BTreeMap<String, Vec<i32>>> {
    let mut out: BTreeMap<String, BTreeMap<String, Vec<i32>>> = subscriptions.keys().map(|m| (m.clone(), BTreeMap::new())).collect();
    for (topic, &count) in partition_counts {
        let members: Vec<&String> = subscriptions.iter().filter(|(_, topics)| topics.contains(topic)).map(|(m, _)| m).collect();
        if members.is_empty() {
            continue;
        }
        let per_member = count / members.len();
        let extra = count % members.len();
        for (member_idx, member) in members.iter().enumerate() {
            let start = per_member * member_idx + member_idx.min(extra);
            let len = per_member + usize::from(member_idx < extra);
            if len > 0 {
                let partitions = (start..start + len).map(|p| p as i32).collect();
                out.entry((*member).clone()).or_default().insert(topic.clone(), partitions);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_assignment_matches_kafka() {
        let subs = BTreeMap::from([
            ("a".to_string(), vec!["t".to_string(), "u".to_string()]),
            ("b".to_string(), vec!["t".to_string()]),
            ("c".to_string(), vec!["t".to_string()]),
        ]);
        let counts = BTreeMap::from([("t".to_string(), 7), ("u".to_string(), 2)]);
        let plan = range_assign(&subs, &counts);
        assert_eq!(plan["a"]["t"], [0, 1, 2]);
        assert_eq!(plan["b"]["t"], [3, 4]);
        assert_eq!(plan["c"]["t"], [5, 6]);
        assert_eq!(plan["a"]["u"], [0, 1]);
        assert!(!plan["b"].contains_key("u"));
    }

    #[test]
    fn subscription_and_assignment_round_trip() {
        let mut sub = BytesMut::new();
        sub.put_i16(1);
        ConsumerProtocolSubscription::default().with_topics(vec![str_bytes("orders")]).encode(&mut sub, 1).expect("encode");
        assert_eq!(decode_subscription(&sub.freeze()).expect("decode"), ["orders"]);
        let assignment = BTreeMap::from([("orders".to_string(), vec![0, 2])]);
        assert_eq!(decode_assignment(&encode_assignment(&assignment).expect("encode")).expect("decode"), assignment);
        assert!(decode_assignment(&Bytes::new()).expect("empty").is_empty());
        assert!(decode_subscription(&Bytes::from_static(&[0])).is_err());
    }
}
