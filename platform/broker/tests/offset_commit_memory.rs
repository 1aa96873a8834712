//! Issue 10, item 2: one OffsetCommit must not cost the broker more than a small multiple of its own
//! size. Before the fix, a 102 KB OffsetCommit (a 32,000-byte group id and 5,000 entries for the same
//! partition) made the broker clone the group id into every entry's key and encode them all before
//! any size check: peak RSS went from 34 MB to 528 MB. Alone in its test binary, so the process's
//! peak RSS is this scenario's.

mod common;

use common::*;
use kafka_protocol::messages::offset_commit_request::{OffsetCommitRequestPartition, OffsetCommitRequestTopic};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

const INVALID_GROUP_ID: i16 = 24;
const INVALID_COMMIT_OFFSET_SIZE: i16 = 28;

fn commit(group: &str, entries: impl Iterator<Item = (i32, i64)>) -> OffsetCommitRequest {
    let partitions = entries
        .map(|(partition, offset)| OffsetCommitRequestPartition::default().with_partition_index(partition).with_committed_offset(offset))
        .collect();
    OffsetCommitRequest::default()
        .with_group_id(GroupId(StrBytes::from_string(group.to_string())))
        .with_generation_id_or_member_epoch(-1)
        .with_topics(vec![
            OffsetCommitRequestTopic::default().with_name(TopicName(StrBytes::from_static_str("t"))).with_partitions(partitions),
        ])
}

fn error_codes(response: &OffsetCommitResponse) -> Vec<i16> {
    let mut codes: Vec<i16> = response.topics.iter().flat_map(|t| t.partitions.iter().map(|p| p.error_code)).collect();
    codes.dedup();
    codes
}

async fn committed(client: &mut Client, group: &str) -> (i16, i64) {
    let request = OffsetFetchRequest::default().with_group_id(GroupId(StrBytes::from_string(group.to_string()))).with_topics(Some(vec![
        OffsetFetchRequestTopic::default().with_name(TopicName(StrBytes::from_static_str("t"))).with_partition_indexes(vec![0]),
    ]));
    let response: OffsetFetchResponse = client.call(ApiKey::OffsetFetch, 7, &request).await;
    (response.error_code, response.topics[0].partitions[0].committed_offset)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offset_commit_costs_memory_in_proportion_to_its_size_not_its_entries_times_its_group_id() {
    let broker = start(&[]).await;
    let mut client = Client::connect(broker.kafka).await;
    assert_eq!(create_topic(&mut client, "t", 1, &[]).await, 0);
    let baseline = peak_rss_bytes();

    // The reproduction: a 32,000-byte group id and 5,000 entries in a ~100 KB request.
    let huge_group = "g".repeat(32_000);
    let response: OffsetCommitResponse = client.call(ApiKey::OffsetCommit, 8, &commit(&huge_group, (0..5_000).map(|i| (0, i)))).await;
    assert_eq!(error_codes(&response), vec![INVALID_GROUP_ID], "a group id over the limit is refused on every group API");

    // A group id at the limit with 5,000 entries for one partition: deduplicated, the last one wins.
    let group = "g".repeat(1024);
    let response: OffsetCommitResponse = client.call(ApiKey::OffsetCommit, 8, &commit(&group, (0..5_000).map(|i| (0, i)))).await;
    assert_eq!(error_codes(&response), vec![0]);
    assert_eq!(committed(&mut client, &group).await, (0, 4_999));

    // More entries than any consumer sends in one commit: refused before anything is built.
    let response: OffsetCommitResponse = client.call(ApiKey::OffsetCommit, 8, &commit("many", (0..20_000).map(|i| (0, i)))).await;
    assert_eq!(error_codes(&response), vec![INVALID_COMMIT_OFFSET_SIZE]);
    assert_eq!(committed(&mut client, "many").await, (0, -1), "nothing of a refused commit is kept");

    let grown = peak_rss_bytes().saturating_sub(baseline);
    assert!(grown < 64 << 20, "peak RSS grew by {} MiB for requests of a few hundred KB", grown >> 20);
    broker.stop().await;
}
