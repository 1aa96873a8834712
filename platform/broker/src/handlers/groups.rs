//! Consumer-group APIs: membership (JoinGroup, SyncGroup, Heartbeat, LeaveGroup), inspection
//! (ListGroups, DescribeGroups), deletion (DeleteGroups, OffsetDelete) and committed offsets
//! (OffsetCommit, OffsetFetch). Membership logic lives in `crate::groups`, durable offsets in
//! `crate::offsets`; this module translates between them and the wire.

use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_response::{OffsetCommitResponsePartition, OffsetCommitResponseTopic};
use kafka_protocol::messages::offset_delete_response::{OffsetDeleteResponsePartition, OffsetDeleteResponseTopic};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions, OffsetFetchResponseTopic,
    OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{
    DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest, DescribeGroupsResponse, GroupId, HeartbeatRequest, HeartbeatResponse,
    JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest, LeaveGroupResponse, ListGroupsRequest, ListGroupsResponse, OffsetCommitRequest,
    OffsetCommitResponse, OffsetDeleteRequest, OffsetDeleteResponse, OffsetFetchRequest, OffsetFetchResponse, SyncGroupRequest,
    SyncGroupResponse, TopicName,
};

use super::{ConnCtx, blocking, str_bytes};
use crate::broker::Broker;
use crate::groups::{GroupState, JoinRequest};
use crate::host::is_internal_name;
use crate::offsets::{COMMIT_METADATA_BYTES_MAX, CommittedOffset};

/// Groups under `__sluice` hold the positions of the broker's own runtimes (transforms, connectors,
/// mirrors); clients may read them but not join, commit to or delete them.
fn writable(group: &str) -> Result<(), ResponseError> {
    if is_internal_name(group) { Err(ResponseError::GroupAuthorizationFailed) } else { Ok(()) }
}

fn error_code(result: Result<(), ResponseError>) -> i16 {
    result.err().map_or(0, |e| e.code())
}

pub async fn join_group(
    broker: &Arc<Broker>,
    ctx: &ConnCtx,
    request: JoinGroupRequest,
    version: i16,
    client_id: String,
) -> JoinGroupResponse {
    if let Err(error) = writable(request.group_id.0.as_str()) {
        return JoinGroupResponse::default().with_error_code(error.code()).with_generation_id(-1);
    }
    let join = JoinRequest {
        group_id: request.group_id.0.to_string(),
        member_id: request.member_id.to_string(),
        group_instance_id: request.group_instance_id.map(|i| i.to_string()),
        client_id,
        client_host: format!("/{}", ctx.peer_addr.ip()),
        session_timeout_ms: request.session_timeout_ms,
        rebalance_timeout_ms: if version >= 1 { request.rebalance_timeout_ms } else { request.session_timeout_ms },
        protocol_type: request.protocol_type.to_string(),
        protocols: request.protocols.into_iter().map(|p| (p.name.to_string(), p.metadata)).collect(),
        require_known_member_id: version >= 4,
    };
    broker.groups.join(join).await
}

pub async fn sync_group(broker: &Arc<Broker>, request: SyncGroupRequest) -> SyncGroupResponse {
    if let Err(error) = writable(request.group_id.0.as_str()) {
        return SyncGroupResponse::default().with_error_code(error.code());
    }
    let assignments: Vec<(String, Bytes)> = request.assignments.into_iter().map(|a| (a.member_id.to_string(), a.assignment)).collect();
    broker
        .groups
        .sync(
            request.group_id.0.as_str(),
            request.member_id.as_str(),
            request.generation_id,
            request.protocol_type.as_ref().map(|s| s.as_str()),
            request.protocol_name.as_ref().map(|s| s.as_str()),
            assignments,
        )
        .await
}

pub fn heartbeat(broker: &Broker, request: HeartbeatRequest) -> HeartbeatResponse {
    let result = writable(request.group_id.0.as_str())
        .and_then(|()| broker.groups.heartbeat(request.group_id.0.as_str(), request.member_id.as_str(), request.generation_id));
    HeartbeatResponse::default().with_error_code(error_code(result))
}

pub fn leave_group(broker: &Arc<Broker>, request: LeaveGroupRequest, version: i16) -> LeaveGroupResponse {
    // v0-2 name one member; v3+ a batch.
    let member_ids: Vec<String> =
        if version >= 3 { request.members.iter().map(|m| m.member_id.to_string()).collect() } else { vec![request.member_id.to_string()] };
    let results = match writable(request.group_id.0.as_str()) {
        Ok(()) => broker.groups.leave(request.group_id.0.as_str(), &member_ids),
        Err(error) => member_ids.into_iter().map(|id| (id, Err(error))).collect(),
    };
    if version >= 3 {
        let members = results
            .into_iter()
            .zip(request.members)
            .map(|((id, result), m)| {
                MemberResponse::default()
                    .with_member_id(str_bytes(id))
                    .with_group_instance_id(m.group_instance_id)
                    .with_error_code(error_code(result))
            })
            .collect();
        return LeaveGroupResponse::default().with_members(members);
    }
    LeaveGroupResponse::default().with_error_code(results.into_iter().next().map_or(0, |(_, r)| error_code(r)))
}

/// Live groups plus groups that only have committed offsets (shown as Empty, like Kafka).
fn all_groups(broker: &Broker) -> Vec<(String, GroupState, String)> {
    let mut groups = broker.groups.list();
    for group in broker.offsets.groups() {
        if !groups.iter().any(|(g, _, _)| *g == group) {
            groups.push((group, GroupState::Empty, "consumer".to_string()));
        }
    }
    groups.sort_by(|a, b| a.0.cmp(&b.0));
    groups
}

pub fn list_groups(broker: &Broker, request: ListGroupsRequest) -> ListGroupsResponse {
    let groups = all_groups(broker)
        .into_iter()
        .filter(|(_, state, _)| {
            request.states_filter.is_empty() || request.states_filter.iter().any(|s| s.as_str().eq_ignore_ascii_case(state.name()))
        })
        .map(|(id, state, protocol_type)| {
            ListedGroup::default()
                .with_group_id(GroupId(str_bytes(id)))
                .with_protocol_type(str_bytes(protocol_type))
                .with_group_state(str_bytes(state.name()))
                .with_group_type(str_bytes("classic"))
        })
        .collect();
    ListGroupsResponse::default().with_groups(groups)
}

pub fn describe_groups(broker: &Broker, request: DescribeGroupsRequest) -> DescribeGroupsResponse {
    let groups = request
        .groups
        .into_iter()
        .map(|group_id| {
            let id = group_id.0.to_string();
            let described = DescribedGroup::default().with_group_id(group_id);
            match broker.groups.describe(&id) {
                Some(view) => described
                    .with_group_state(str_bytes(view.state.name()))
                    .with_protocol_type(str_bytes(view.protocol_type))
                    .with_protocol_data(str_bytes(view.protocol_name))
                    .with_members(
                        view.members
                            .into_iter()
                            .map(|m| {
                                DescribedGroupMember::default()
                                    .with_member_id(str_bytes(m.member_id))
                                    .with_group_instance_id(m.group_instance_id.map(str_bytes))
                                    .with_client_id(str_bytes(m.client_id))
                                    .with_client_host(str_bytes(m.client_host))
                                    .with_member_metadata(m.metadata)
                                    .with_member_assignment(m.assignment)
                            })
                            .collect(),
                    ),
                None if !broker.offsets.group(&id).is_empty() => {
                    described.with_group_state(str_bytes("Empty")).with_protocol_type(str_bytes("consumer"))
                }
                // Kafka describes a group it has never heard of as Dead, without an error.
                None => described.with_group_state(str_bytes("Dead")),
            }
        })
        .collect();
    DescribeGroupsResponse::default().with_groups(groups)
}

pub fn delete_groups(broker: &Broker, request: DeleteGroupsRequest) -> DeleteGroupsResponse {
    let results = request
        .groups_names
        .into_iter()
        .map(|group_id| {
            let id = group_id.0.to_string();
            let result = DeletableGroupResult::default().with_group_id(group_id);
            if let Err(error) = writable(&id) {
                return result.with_error_code(error.code());
            }
            let has_offsets = !broker.offsets.group(&id).is_empty();
            match broker.groups.remove_if_empty(&id) {
                Err(error) => result.with_error_code(error.code()),
                Ok(false) if !has_offsets => result.with_error_code(ResponseError::GroupIdNotFound.code()),
                Ok(_) => match blocking(|| broker.offsets.delete_group(&id)) {
                    Ok(()) => {
                        tracing::info!(group = id, "deleted consumer group");
                        result
                    }
                    Err(error) => result.with_error_code(error.code()),
                },
            }
        })
        .collect();
    DeleteGroupsResponse::default().with_results(results)
}

pub fn offset_commit(broker: &Broker, request: OffsetCommitRequest) -> OffsetCommitResponse {
    let group = request.group_id.0.to_string();
    let membership = writable(&group)
        .and_then(|()| broker.groups.check_commit(&group, request.member_id.as_str(), request.generation_id_or_member_epoch));
    let now = crate::now_ms();
    let mut entries = Vec::new();
    let mut topics: Vec<OffsetCommitResponseTopic> = request
        .topics
        .iter()
        .map(|t| {
            let name = t.name.0.to_string();
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let response = OffsetCommitResponsePartition::default().with_partition_index(p.partition_index);
                    let error = if let Err(error) = membership {
                        Some(error)
                    } else if broker.partition(&name, p.partition_index).is_err() {
                        Some(ResponseError::UnknownTopicOrPartition)
                    } else if p.committed_metadata.as_ref().is_some_and(|m| m.len() > COMMIT_METADATA_BYTES_MAX) {
                        Some(ResponseError::OffsetMetadataTooLarge)
                    } else {
                        entries.push((
                            (name.clone(), p.partition_index),
                            Some(CommittedOffset {
                                offset: p.committed_offset,
                                leader_epoch: p.committed_leader_epoch,
                                metadata: p.committed_metadata.as_ref().map(|m| m.to_string()),
                                commit_timestamp_ms: now,
                            }),
                        ));
                        None
                    };
                    response.with_error_code(error.map_or(0, |e| e.code()))
                })
                .collect();
            OffsetCommitResponseTopic::default().with_name(t.name.clone()).with_partitions(partitions)
        })
        .collect();
    let fsync = broker.config.flush_before_ack();
    if let Err(error) = blocking(|| broker.offsets.write(&group, entries, fsync)) {
        tracing::error!(group, %error, "cannot write committed offsets");
        for topic in topics.iter_mut() {
            for partition in topic.partitions.iter_mut() {
                if partition.error_code == 0 {
                    partition.error_code = error.code();
                }
            }
        }
    }
    OffsetCommitResponse::default().with_topics(topics)
}

/// One topic's partitions with their committed offset, if any.
type TopicOffsets = (String, Vec<(i32, Option<CommittedOffset>)>);

/// Committed offsets of one group for the requested partitions, or for all it has when `topics` is
/// None. Partitions without a commit report offset -1, as Kafka does.
fn fetch_group_offsets(broker: &Broker, group: &str, topics: Option<Vec<(String, Vec<i32>)>>) -> Vec<TopicOffsets> {
    match topics {
        Some(topics) => topics
            .into_iter()
            .map(|(topic, partitions)| {
                let offsets = partitions.into_iter().map(|p| (p, broker.offsets.get(group, &topic, p))).collect();
                (topic, offsets)
            })
            .collect(),
        None => {
            let mut by_topic: Vec<TopicOffsets> = Vec::new();
            for ((topic, partition), offset) in broker.offsets.group(group) {
                match by_topic.last_mut() {
                    Some((t, list)) if *t == topic => list.push((partition, Some(offset))),
                    _ => by_topic.push((topic, vec![(partition, Some(offset))])),
                }
            }
            by_topic
        }
    }
}

/// OffsetFetch v0-7 and v8 carry the same per-topic data in two sets of wire types; one macro
/// builds either so the two shapes cannot drift apart.
macro_rules! offset_fetch_topics {
    ($entries:expr, $topic_type:ty, $partition_type:ty) => {
        $entries
            .into_iter()
            .map(|(topic, partitions)| {
                <$topic_type>::default().with_name(TopicName(str_bytes(topic))).with_partitions(
                    partitions
                        .into_iter()
                        .map(|(p, offset)| {
                            let response = <$partition_type>::default().with_partition_index(p);
                            match offset {
                                Some(o) => response
                                    .with_committed_offset(o.offset)
                                    .with_committed_leader_epoch(o.leader_epoch)
                                    .with_metadata(Some(str_bytes(o.metadata.unwrap_or_default()))),
                                None => response.with_committed_offset(-1).with_metadata(Some(str_bytes(""))),
                            }
                        })
                        .collect(),
                )
            })
            .collect()
    };
}

pub fn offset_fetch(broker: &Broker, request: OffsetFetchRequest, version: i16) -> OffsetFetchResponse {
    // require_stable (v7+, KIP-447): a partition with offsets staged by an open transaction answers
    // UNSTABLE_OFFSET_COMMIT, and the client retries until the transaction ends.
    let unstable = |group: &str, topic: &str, partition: i32| {
        request.require_stable && broker.transactions.has_pending_offset(group, topic, partition)
    };
    let code = ResponseError::UnstableOffsetCommit.code();
    if version >= 8 {
        let groups = request
            .groups
            .into_iter()
            .map(|g| {
                let id = g.group_id.0.to_string();
                let wanted = g.topics.map(|ts| ts.into_iter().map(|t| (t.name.0.to_string(), t.partition_indexes)).collect());
                let entries = fetch_group_offsets(broker, &id, wanted);
                let mut topics: Vec<OffsetFetchResponseTopics> =
                    offset_fetch_topics!(entries, OffsetFetchResponseTopics, OffsetFetchResponsePartitions);
                for topic in topics.iter_mut() {
                    for partition in topic.partitions.iter_mut().filter(|p| unstable(&id, topic.name.0.as_str(), p.partition_index)) {
                        partition.error_code = code;
                    }
                }
                OffsetFetchResponseGroup::default().with_group_id(g.group_id).with_topics(topics)
            })
            .collect();
        return OffsetFetchResponse::default().with_groups(groups);
    }
    let group = request.group_id.0.to_string();
    let wanted = request.topics.clone().map(|ts| ts.into_iter().map(|t| (t.name.0.to_string(), t.partition_indexes)).collect());
    let entries = fetch_group_offsets(broker, &group, wanted);
    let mut topics: Vec<OffsetFetchResponseTopic> = offset_fetch_topics!(entries, OffsetFetchResponseTopic, OffsetFetchResponsePartition);
    for topic in topics.iter_mut() {
        for partition in topic.partitions.iter_mut().filter(|p| unstable(&group, topic.name.0.as_str(), p.partition_index)) {
            partition.error_code = code;
        }
    }
    OffsetFetchResponse::default().with_topics(topics)
}

pub fn offset_delete(broker: &Broker, request: OffsetDeleteRequest) -> OffsetDeleteResponse {
    let group = request.group_id.0.to_string();
    if let Err(error) = writable(&group) {
        return OffsetDeleteResponse::default().with_error_code(error.code());
    }
    if broker.offsets.group(&group).is_empty() && broker.groups.describe(&group).is_none() {
        return OffsetDeleteResponse::default().with_error_code(ResponseError::GroupIdNotFound.code());
    }
    let subscribed = broker.groups.subscribed_topics(&group);
    let mut deletions = Vec::new();
    let topics = request
        .topics
        .into_iter()
        .map(|t| {
            let name = t.name.0.to_string();
            let partitions = t
                .partitions
                .into_iter()
                .map(|p| {
                    let response = OffsetDeleteResponsePartition::default().with_partition_index(p.partition_index);
                    if subscribed.contains(&name) {
                        return response.with_error_code(ResponseError::GroupSubscribedToTopic.code());
                    }
                    deletions.push(((name.clone(), p.partition_index), None));
                    response
                })
                .collect();
            OffsetDeleteResponseTopic::default().with_name(t.name).with_partitions(partitions)
        })
        .collect();
    if let Err(error) = blocking(|| broker.offsets.write(&group, deletions, false)) {
        return OffsetDeleteResponse::default().with_error_code(error.code());
    }
    OffsetDeleteResponse::default().with_topics(topics)
}
