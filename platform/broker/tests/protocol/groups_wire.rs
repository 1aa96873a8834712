//! Consumer-group state at the wire level: what a hostile or careless client can leave behind, and
//! the group-id limit on every group API. Real clients run the group protocol end to end in
//! `tests/test_groups.py` and `tests/test_offsets.py`.

use std::time::{Duration, Instant};

use crate::common::*;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::offset_commit_request::{OffsetCommitRequestPartition, OffsetCommitRequestTopic};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

const INVALID_GROUP_ID: i16 = 24;
const MEMBER_ID_REQUIRED: i16 = 79;

fn s(value: &str) -> StrBytes {
    StrBytes::from_string(value.to_string())
}

async fn listed_groups(client: &mut Client) -> Vec<String> {
    let response: ListGroupsResponse = client.call(ApiKey::ListGroups, 4, &ListGroupsRequest::default()).await;
    response.groups.iter().map(|g| g.group_id.0.to_string()).collect()
}

async fn join(client: &mut Client, group: &str, member_id: &str, session_timeout_ms: i32) -> JoinGroupResponse {
    let request = JoinGroupRequest::default()
        .with_group_id(GroupId(s(group)))
        .with_member_id(s(member_id))
        .with_session_timeout_ms(session_timeout_ms)
        .with_rebalance_timeout_ms(session_timeout_ms)
        .with_protocol_type(s("consumer"))
        .with_protocols(vec![JoinGroupRequestProtocol::default().with_name(s("range")).with_metadata(bytes::Bytes::from_static(b"m"))]);
    client.call(ApiKey::JoinGroup, 5, &request).await
}

async fn commit(client: &mut Client, group: &str, offset: i64) -> i16 {
    let request = OffsetCommitRequest::default().with_group_id(GroupId(s(group))).with_generation_id_or_member_epoch(-1).with_topics(vec![
        OffsetCommitRequestTopic::default()
            .with_name(TopicName(s("t")))
            .with_partitions(vec![OffsetCommitRequestPartition::default().with_partition_index(0).with_committed_offset(offset)]),
    ]);
    let response: OffsetCommitResponse = client.call(ApiKey::OffsetCommit, 8, &request).await;
    response.topics[0].partitions[0].error_code
}

async fn committed(client: &mut Client, group: &str) -> (i16, i64) {
    let request = OffsetFetchRequest::default()
        .with_group_id(GroupId(s(group)))
        .with_topics(Some(vec![OffsetFetchRequestTopic::default().with_name(TopicName(s("t"))).with_partition_indexes(vec![0])]));
    let response: OffsetFetchResponse = client.call(ApiKey::OffsetFetch, 7, &request).await;
    (response.error_code, response.topics.first().map_or(-2, |t| t.partitions[0].committed_offset))
}

/// Waits until `check` holds, up to `limit`.
async fn eventually(limit: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Issue 10, item 17: a JoinGroup answered only with MEMBER_ID_REQUIRED used to create a group that
/// lived forever (its pending member id went after 5 minutes, the group never), so a client could
/// fill the coordinator with group ids. Now the pending id lives for the session timeout it asked for,
/// and an empty group without offsets is forgotten at the next check. A group whose offsets are kept
/// stays listed until `offsets.retention.ms` after it emptied, then goes with its offsets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_without_members_or_offsets_are_forgotten_and_offsets_expire_by_broker_time() {
    let broker =
        start(&[("group.min.session.timeout.ms", "500"), ("offsets.retention.check.interval.ms", "100"), ("offsets.retention.ms", "3000")])
            .await;
    let mut client = Client::connect(broker.kafka).await;
    assert_eq!(create_topic(&mut client, "t", 1, &[]).await, 0);

    assert_eq!(join(&mut client, "drive-by", "", 500).await.error_code, MEMBER_ID_REQUIRED);
    assert!(listed_groups(&mut client).await.contains(&"drive-by".to_string()));
    assert_eq!(commit(&mut client, "standalone", 7).await, 0);

    assert!(
        eventually(Duration::from_secs(10), async || !listed_groups(&mut client).await.contains(&"drive-by".to_string())).await,
        "a group that never got a member is still held"
    );
    assert_eq!(committed(&mut client, "standalone").await, (0, 7), "offsets younger than offsets.retention.ms stay");
    assert!(
        eventually(Duration::from_secs(10), async || committed(&mut client, "standalone").await == (0, -1)).await,
        "offsets of a group without members expire offsets.retention.ms after their commit"
    );
    assert!(!listed_groups(&mut client).await.contains(&"standalone".to_string()));
    broker.stop().await;
}

/// Issue 10, item 2: the group-id limit applies to every group API, not only JoinGroup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_group_api_refuses_a_group_id_over_the_limit() {
    let broker = start(&[]).await;
    let mut client = Client::connect(broker.kafka).await;
    assert_eq!(create_topic(&mut client, "t", 1, &[]).await, 0);
    let long = "g".repeat(2_000);
    assert_eq!(commit(&mut client, &long, 1).await, INVALID_GROUP_ID);
    assert_eq!(committed(&mut client, &long).await.0, INVALID_GROUP_ID);
    let deleted: DeleteGroupsResponse =
        client.call(ApiKey::DeleteGroups, 2, &DeleteGroupsRequest::default().with_groups_names(vec![GroupId(s(&long))])).await;
    assert_eq!(deleted.results[0].error_code, INVALID_GROUP_ID);
    let described: DescribeGroupsResponse =
        client.call(ApiKey::DescribeGroups, 5, &DescribeGroupsRequest::default().with_groups(vec![GroupId(s(&long))])).await;
    assert_eq!(described.groups[0].error_code, INVALID_GROUP_ID);
    let heartbeat: HeartbeatResponse =
        client.call(ApiKey::Heartbeat, 4, &HeartbeatRequest::default().with_group_id(GroupId(s(&long))).with_member_id(s("m"))).await;
    assert_eq!(heartbeat.error_code, INVALID_GROUP_ID);
    broker.stop().await;
}
