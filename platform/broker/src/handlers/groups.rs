//! Consumer-group APIs: membership (JoinGroup, SyncGroup, Heartbeat, LeaveGroup), inspection
//! (ListGroups, DescribeGroups), deletion (DeleteGroups, OffsetDelete) and committed offsets
//! (OffsetCommit, OffsetFetch). Membership logic lives in `crate::groups`, durable offsets in
//! `crate::offsets`; this module translates between them and the wire.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_request::OffsetCommitRequestPartition;
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

use super::{ConnCtx, blocking, map_partitions, per_partition, str_bytes};
use crate::broker::Broker;
use crate::coordinator::Coordinators;
use crate::groups::{GroupState, JoinRequest, check_group_id};
use crate::host::is_internal_name;
use crate::offsets::{COMMIT_METADATA_BYTES_MAX, CommittedOffset, OffsetWrite};

/// Most entries one OffsetCommit may carry. Kafka sets none; a consumer commits the partitions it
/// was assigned, and one with more than this many partitions per commit does not exist. Checked
/// before anything is built per entry.
pub(crate) const OFFSET_COMMIT_PARTITIONS_MAX: usize = 10_000;

/// Groups under `__sluice` hold the positions of the broker's own runtimes (transforms, connectors,
/// mirrors); clients may read them but not join, commit to or delete them. Also applies the
/// group-id limit, like every group API.
fn writable(broker: &Broker, group: &str) -> Result<Arc<Coordinators>, ResponseError> {
    let coordinators = coordinated(broker, group)?;
    if is_internal_name(group) { Err(ResponseError::GroupAuthorizationFailed) } else { Ok(coordinators) }
}

/// The group-id limit, then the coordinators, or NOT_COORDINATOR on a node that does not
/// coordinate groups (clients then ask FindCoordinator again; see `coordinator`).
fn coordinated(broker: &Broker, group: &str) -> Result<Arc<Coordinators>, ResponseError> {
    check_group_id(group)?;
    broker.coordinators()
}

fn error_code(result: Result<(), ResponseError>) -> i16 {
    result.err().map_or(0, |e| e.code())
}

pub(crate) async fn join_group(
    broker: &Arc<Broker>,
    ctx: &ConnCtx,
    request: JoinGroupRequest,
    version: i16,
    client_id: String,
) -> JoinGroupResponse {
    let coordinators = match writable(broker, request.group_id.0.as_str()) {
        Ok(coordinators) => coordinators,
        Err(error) => return JoinGroupResponse::default().with_error_code(error.code()).with_generation_id(-1),
    };
    coordinators.groups.join(join_request(ctx, request, version, client_id)).await
}

/// What the coordinator keeps of a JoinGroup. The decoder hands out metadata as zero-copy slices of
/// the request frame; a member lives for minutes or days, so it gets its own copy of the few bytes it
/// needs instead of keeping the whole frame (up to `socket.request.max.bytes`) alive.
fn join_request(ctx: &ConnCtx, request: JoinGroupRequest, version: i16, client_id: String) -> JoinRequest {
    JoinRequest {
        group_id: request.group_id.0.to_string(),
        member_id: request.member_id.to_string(),
        group_instance_id: request.group_instance_id.map(|i| i.to_string()),
        client_id,
        client_host: format!("/{}", ctx.peer_addr.ip()),
        session_timeout_ms: request.session_timeout_ms,
        rebalance_timeout_ms: if version >= 1 { request.rebalance_timeout_ms } else { request.session_timeout_ms },
        protocol_type: request.protocol_type.to_string(),
        protocols: request.protocols.iter().map(|p| (p.name.to_string(), Bytes::copy_from_slice(&p.metadata))).collect(),
        require_known_member_id: version >= 4,
    }
}

/// The assignments a SyncGroup's leader hands out, by member id: copies, for the reason above.
fn sync_assignments(request: &SyncGroupRequest) -> Vec<(String, Bytes)> {
    request.assignments.iter().map(|a| (a.member_id.to_string(), Bytes::copy_from_slice(&a.assignment))).collect()
}

pub(crate) async fn sync_group(broker: &Arc<Broker>, request: SyncGroupRequest) -> SyncGroupResponse {
    let coordinators = match writable(broker, request.group_id.0.as_str()) {
        Ok(coordinators) => coordinators,
        Err(error) => return SyncGroupResponse::default().with_error_code(error.code()),
    };
    let assignments = sync_assignments(&request);
    coordinators
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

pub(crate) fn heartbeat(broker: &Broker, request: HeartbeatRequest) -> HeartbeatResponse {
    let result = writable(broker, request.group_id.0.as_str())
        .and_then(|c| c.groups.heartbeat(request.group_id.0.as_str(), request.member_id.as_str(), request.generation_id));
    HeartbeatResponse::default().with_error_code(error_code(result))
}

pub(crate) fn leave_group(broker: &Arc<Broker>, request: LeaveGroupRequest, version: i16) -> LeaveGroupResponse {
    // v0-2 name one member; v3+ a batch.
    let member_ids: Vec<String> =
        if version >= 3 { request.members.iter().map(|m| m.member_id.to_string()).collect() } else { vec![request.member_id.to_string()] };
    let results = match writable(broker, request.group_id.0.as_str()) {
        Ok(c) => c.groups.leave(request.group_id.0.as_str(), &member_ids),
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
fn all_groups(coordinators: &Coordinators) -> Vec<(String, GroupState, String)> {
    let mut groups = coordinators.groups.list();
    for group in coordinators.offsets.groups() {
        if !groups.iter().any(|(g, _, _)| *g == group) {
            groups.push((group, GroupState::Empty, "consumer".to_string()));
        }
    }
    groups.sort_by(|a, b| a.0.cmp(&b.0));
    groups
}

pub(crate) fn list_groups(broker: &Broker, request: ListGroupsRequest) -> ListGroupsResponse {
    // Kafka asks every broker and merges: each lists the groups it coordinates, here all or none.
    let Ok(coordinators) = broker.coordinators() else { return ListGroupsResponse::default() };
    let groups = all_groups(&coordinators)
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

pub(crate) fn describe_groups(broker: &Broker, request: DescribeGroupsRequest) -> DescribeGroupsResponse {
    let groups = request
        .groups
        .into_iter()
        .map(|group_id| {
            let coordinators = match coordinated(broker, group_id.0.as_str()) {
                Ok(coordinators) => coordinators,
                Err(error) => return DescribedGroup::default().with_group_id(group_id).with_error_code(error.code()),
            };
            let id = group_id.0.to_string();
            let described = DescribedGroup::default().with_group_id(group_id);
            match coordinators.groups.describe(&id) {
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
                None if coordinators.offsets.has_group(&id) => {
                    described.with_group_state(str_bytes("Empty")).with_protocol_type(str_bytes("consumer"))
                }
                // Kafka describes a group it has never heard of as Dead, without an error.
                None => described.with_group_state(str_bytes("Dead")),
            }
        })
        .collect();
    DescribeGroupsResponse::default().with_groups(groups)
}

pub(crate) fn delete_groups(broker: &Broker, request: DeleteGroupsRequest) -> DeleteGroupsResponse {
    let results = request
        .groups_names
        .into_iter()
        .map(|group_id| {
            let coordinators = match writable(broker, group_id.0.as_str()) {
                Ok(coordinators) => coordinators,
                Err(error) => return DeletableGroupResult::default().with_group_id(group_id).with_error_code(error.code()),
            };
            let id = group_id.0.to_string();
            let result = DeletableGroupResult::default().with_group_id(group_id);
            match blocking(|| coordinators.groups.delete_group(&id)) {
                Ok(()) => result,
                Err(error) => result.with_error_code(error.code()),
            }
        })
        .collect();
    DeleteGroupsResponse::default().with_results(results)
}

pub(crate) fn offset_commit(broker: &Broker, request: OffsetCommitRequest) -> OffsetCommitResponse {
    let group = request.group_id.0.as_str();
    let count: usize = request.topics.iter().map(|t| t.partitions.len()).sum();
    // Whole-request checks come first, before anything is built per entry: a request is at most
    // `socket.request.max.bytes`, but what it asks to store could be many times that.
    let refusal = writable(broker, group)
        .and_then(|c| if count > OFFSET_COMMIT_PARTITIONS_MAX { Err(ResponseError::InvalidCommitOffsetSize) } else { Ok(c) })
        .and_then(|c| c.groups.check_commit(group, request.member_id.as_str(), request.generation_id_or_member_epoch).map(|()| c));
    let mut codes = vec![refusal.as_ref().err().map_or(0, |e| e.code()); count];
    if let Ok(coordinators) = refusal {
        // Per entry: unknown partitions and oversized metadata are answered alone; the others are
        // deduplicated (a partition named twice keeps its last offset, as two commits would), and
        // only then copied, with the names of existing topics only.
        let mut accepted: BTreeMap<(&str, i32), &OffsetCommitRequestPartition> = BTreeMap::new();
        let mut position = 0;
        for topic in &request.topics {
            for p in &topic.partitions {
                codes[position] = if !broker.partition_exists(topic.name.0.as_str(), p.partition_index) {
                    ResponseError::UnknownTopicOrPartition.code()
                } else if p.committed_metadata.as_ref().is_some_and(|m| m.len() > COMMIT_METADATA_BYTES_MAX) {
                    ResponseError::OffsetMetadataTooLarge.code()
                } else {
                    accepted.insert((topic.name.0.as_str(), p.partition_index), p);
                    0
                };
                position += 1;
            }
        }
        let now = crate::now_ms();
        let entries: Vec<OffsetWrite> = accepted
            .into_iter()
            .map(|((topic, partition), p)| {
                let committed = CommittedOffset::from_request(
                    p.committed_offset,
                    p.committed_leader_epoch,
                    p.committed_metadata.as_ref().map(|m| m.as_str()),
                    now,
                );
                ((topic.to_string(), partition), Some(committed))
            })
            .collect();
        let fsync = broker.config().flush_before_ack();
        // The store checks the commit's encoded size before encoding anything (CommitTooLarge).
        if let Err(error) = blocking(|| coordinators.offsets.write(group, entries, fsync)) {
            tracing::warn!(group, %error, "cannot write committed offsets");
            codes.iter_mut().filter(|code| **code == 0).for_each(|code| *code = error.code());
        }
    }
    let topics = per_partition(
        &request.topics,
        codes,
        |t| &t.partitions,
        |p, code| OffsetCommitResponsePartition::default().with_partition_index(p.partition_index).with_error_code(code),
        |t, partitions| OffsetCommitResponseTopic::default().with_name(t.name.clone()).with_partitions(partitions),
    );
    OffsetCommitResponse::default().with_topics(topics)
}

/// One topic's partitions with their committed offset, if any.
type TopicOffsets = (String, Vec<(i32, Option<CommittedOffset>)>);

/// Committed offsets of one group for the requested partitions, or for all it has when `topics` is
/// None. Partitions without a commit report offset -1, as Kafka does.
fn fetch_group_offsets(coordinators: &Coordinators, group: &str, topics: Option<Vec<(String, Vec<i32>)>>) -> Vec<TopicOffsets> {
    match topics {
        Some(topics) => topics
            .into_iter()
            .map(|(topic, partitions)| {
                let offsets = partitions.into_iter().map(|p| (p, coordinators.offsets.get(group, &topic, p))).collect();
                (topic, offsets)
            })
            .collect(),
        None => {
            let mut by_topic: Vec<TopicOffsets> = Vec::new();
            for ((topic, partition), offset) in coordinators.offsets.group(group) {
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

pub(crate) fn offset_fetch(broker: &Broker, request: OffsetFetchRequest, version: i16) -> OffsetFetchResponse {
    // require_stable (v7+, KIP-447): a partition with offsets staged by an open transaction answers
    // UNSTABLE_OFFSET_COMMIT, and the client retries until the transaction ends.
    let unstable = |coordinators: &Coordinators, group: &str, topic: &str, partition: i32| {
        request.require_stable && coordinators.transactions.has_pending_offset(group, topic, partition)
    };
    let code = ResponseError::UnstableOffsetCommit.code();
    if version >= 8 {
        let groups = request
            .groups
            .into_iter()
            .map(|g| {
                let coordinators = match coordinated(broker, g.group_id.0.as_str()) {
                    Ok(coordinators) => coordinators,
                    Err(error) => return OffsetFetchResponseGroup::default().with_group_id(g.group_id).with_error_code(error.code()),
                };
                let id = g.group_id.0.to_string();
                let wanted = g.topics.map(|ts| ts.into_iter().map(|t| (t.name.0.to_string(), t.partition_indexes)).collect());
                let entries = fetch_group_offsets(&coordinators, &id, wanted);
                let mut topics: Vec<OffsetFetchResponseTopics> =
                    offset_fetch_topics!(entries, OffsetFetchResponseTopics, OffsetFetchResponsePartitions);
                for topic in topics.iter_mut() {
                    for partition in
                        topic.partitions.iter_mut().filter(|p| unstable(&coordinators, &id, topic.name.0.as_str(), p.partition_index))
                    {
                        partition.error_code = code;
                    }
                }
                OffsetFetchResponseGroup::default().with_group_id(g.group_id).with_topics(topics)
            })
            .collect();
        return OffsetFetchResponse::default().with_groups(groups);
    }
    let coordinators = match coordinated(broker, request.group_id.0.as_str()) {
        Ok(coordinators) => coordinators,
        Err(error) => return offset_fetch_refused(request, version, error),
    };
    let group = request.group_id.0.to_string();
    let wanted = request.topics.clone().map(|ts| ts.into_iter().map(|t| (t.name.0.to_string(), t.partition_indexes)).collect());
    let entries = fetch_group_offsets(&coordinators, &group, wanted);
    let mut topics: Vec<OffsetFetchResponseTopic> = offset_fetch_topics!(entries, OffsetFetchResponseTopic, OffsetFetchResponsePartition);
    for topic in topics.iter_mut() {
        for partition in topic.partitions.iter_mut().filter(|p| unstable(&coordinators, &group, topic.name.0.as_str(), p.partition_index)) {
            partition.error_code = code;
        }
    }
    OffsetFetchResponse::default().with_topics(topics)
}

/// An OffsetFetch below v8 refused as a whole.
fn offset_fetch_refused(request: OffsetFetchRequest, version: i16, error: ResponseError) -> OffsetFetchResponse {
    {
        // v2+ has a request-level error; v1 only per partition.
        if version >= 2 {
            return OffsetFetchResponse::default().with_error_code(error.code());
        }
        let topics = request.topics.unwrap_or_default().into_iter().map(|t| {
            let partitions = t
                .partition_indexes
                .iter()
                .map(|p| {
                    OffsetFetchResponsePartition::default().with_partition_index(*p).with_committed_offset(-1).with_error_code(error.code())
                })
                .collect();
            OffsetFetchResponseTopic::default().with_name(t.name).with_partitions(partitions)
        });
        OffsetFetchResponse::default().with_topics(topics.collect())
    }
}

pub(crate) fn offset_delete(broker: &Broker, request: OffsetDeleteRequest) -> OffsetDeleteResponse {
    let group = request.group_id.0.to_string();
    let coordinators = match writable(broker, &group) {
        Ok(coordinators) => coordinators,
        Err(error) => return OffsetDeleteResponse::default().with_error_code(error.code()),
    };
    if !coordinators.offsets.has_group(&group) && coordinators.groups.describe(&group).is_none() {
        return OffsetDeleteResponse::default().with_error_code(ResponseError::GroupIdNotFound.code());
    }
    let subscribed = coordinators.groups.subscribed_topics(&group);
    let mut deletions = Vec::new();
    let topics = map_partitions(
        &request.topics,
        |t| &t.partitions,
        |t, p| {
            let response = OffsetDeleteResponsePartition::default().with_partition_index(p.partition_index);
            let name = t.name.0.as_str();
            if subscribed.iter().any(|s| s == name) {
                return response.with_error_code(ResponseError::GroupSubscribedToTopic.code());
            }
            // Only what is stored is named again: a request's topic names are copied no more often
            // than the group has offsets.
            if coordinators.offsets.get(&group, name, p.partition_index).is_some() {
                deletions.push((name.to_string(), p.partition_index));
            }
            response
        },
        |t, partitions| OffsetDeleteResponseTopic::default().with_name(t.name.clone()).with_partitions(partitions),
    );
    if let Err(error) = blocking(|| coordinators.offsets.remove(&group, deletions)) {
        return OffsetDeleteResponse::default().with_error_code(error.code());
    }
    OffsetDeleteResponse::default().with_topics(topics)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use bytes::BytesMut;
    use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
    use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
    use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind};
    use kafka_protocol::protocol::{Encodable, StrBytes};

    use super::*;

    /// A request as the server hands it to a handler: decoded from a frame whose other bytes (here
    /// a 1 MiB unknown tagged field, which the protocol allows) make it large.
    fn decode_padded<Req: Encodable>(api_key: ApiKey, version: i16, request: &Req) -> (Bytes, RequestKind) {
        let header = RequestHeader::default()
            .with_request_api_key(api_key as i16)
            .with_request_api_version(version)
            .with_client_id(Some(StrBytes::from_static_str("c")));
        let mut framed = BytesMut::new();
        sluice_protocol::encode_request(&header, api_key, request, &mut framed).unwrap();
        let frame = framed.freeze().slice(sluice_protocol::FRAME_LENGTH_BYTES..);
        let decoded = sluice_protocol::decode_request(frame.clone()).unwrap();
        (frame, decoded.body)
    }

    fn points_into(frame: &Bytes, bytes: &Bytes) -> bool {
        let range = frame.as_ptr_range();
        !bytes.is_empty() && range.contains(&bytes.as_ptr())
    }

    /// Issue 10, item 4: a member's subscription metadata and assignment were zero-copy slices of
    /// the request frame, so a JoinGroup padded to 100 MiB kept 100 MiB alive for the member's
    /// lifetime (times members, times groups). What the coordinator keeps must be its own bytes.
    #[test]
    fn what_a_member_keeps_does_not_hold_the_request_frame() {
        let padding = BTreeMap::from([(1000, Bytes::from(vec![0u8; 1 << 20]))]);
        let join = JoinGroupRequest::default()
            .with_group_id(GroupId(StrBytes::from_static_str("g")))
            .with_session_timeout_ms(10_000)
            .with_protocol_type(StrBytes::from_static_str("consumer"))
            .with_protocols(vec![
                JoinGroupRequestProtocol::default()
                    .with_name(StrBytes::from_static_str("range"))
                    .with_metadata(Bytes::from_static(b"subscription")),
            ])
            .with_unknown_tagged_fields(padding.clone());
        let (frame, RequestKind::JoinGroup(decoded)) = decode_padded(ApiKey::JoinGroup, 7, &join) else { panic!("not a JoinGroup") };
        assert!(frame.len() > 1 << 20);
        let ctx = ConnCtx { local_addr: "127.0.0.1:9092".parse().unwrap(), peer_addr: "127.0.0.1:5000".parse().unwrap() };
        let kept = join_request(&ctx, decoded, 7, "c".into());
        assert_eq!(kept.protocols[0].1, Bytes::from_static(b"subscription"));
        assert!(!points_into(&frame, &kept.protocols[0].1), "the subscription is a slice of the request frame");

        let sync = SyncGroupRequest::default()
            .with_group_id(GroupId(StrBytes::from_static_str("g")))
            .with_member_id(StrBytes::from_static_str("m"))
            .with_assignments(vec![
                SyncGroupRequestAssignment::default()
                    .with_member_id(StrBytes::from_static_str("m"))
                    .with_assignment(Bytes::from_static(b"assignment")),
            ])
            .with_unknown_tagged_fields(padding);
        let (frame, RequestKind::SyncGroup(decoded)) = decode_padded(ApiKey::SyncGroup, 5, &sync) else { panic!("not a SyncGroup") };
        let kept = sync_assignments(&decoded);
        assert_eq!(kept[0].1, Bytes::from_static(b"assignment"));
        assert!(!points_into(&frame, &kept[0].1), "the assignment is a slice of the request frame");
    }
}
