//! Fetch: raw record-batch bytes per partition from its leader, with the watermarks and the aborted
//! transactions a read_committed reader needs. Nothing is decoded or decompressed here (decode with
//! [`crate::records`] if records are wanted, or pass the batches through as they are).
//!
//! [`Client::send_fetch`] returns once the request is queued, so a reader can keep several fetches in
//! flight on one broker connection: a mirror over a long link fetches the next range of some
//! partitions while the previous answer for others is still on the wire.

use bytes::Bytes;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{ApiKey, FetchRequest, FetchResponse};

use crate::client::Client;
use crate::connection::Pending;
use crate::error::{ClientError, KafkaError, Result};
use crate::topic_name;
use crate::versions::FETCH_VERSIONS;

/// Which records a fetch may return.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Isolation {
    /// Everything below the high watermark, open and aborted transactions included.
    #[default]
    ReadUncommitted,
    /// Only below the last stable offset; the response lists the aborted transactions to drop.
    ReadCommitted,
}

/// Request-wide settings of a Fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchOptions {
    /// How long the broker may hold the request waiting for `min_bytes`.
    pub max_wait_ms: i32,
    pub min_bytes: i32,
    /// Upper bound on the whole response (the broker still returns one batch if the first is bigger).
    pub max_bytes: i32,
    pub isolation: Isolation,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions { max_wait_ms: 500, min_bytes: 1, max_bytes: 50 * 1024 * 1024, isolation: Isolation::ReadUncommitted }
    }
}

/// One partition to read, from `offset`, at most `max_bytes` of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionFetch {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub max_bytes: i32,
}

/// A transaction whose records (from `first_offset` on, by `producer_id`) a read_committed reader drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbortedTransaction {
    pub producer_id: i64,
    pub first_offset: i64,
}

/// One partition's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedPartition {
    pub topic: String,
    pub partition: i32,
    /// OFFSET_OUT_OF_RANGE, NOT_LEADER_OR_FOLLOWER and so on; the other fields are then meaningless.
    pub error: Option<KafkaError>,
    pub high_watermark: i64,
    pub last_stable_offset: i64,
    pub log_start_offset: i64,
    /// Listed for read_committed fetches only.
    pub aborted_transactions: Vec<AbortedTransaction>,
    /// Whole stored batches, byte for byte, possibly ending in a partial one (see
    /// [`crate::records::split_batches`]).
    pub records: Bytes,
}

/// A sent Fetch whose answer is still to come.
pub struct PendingFetch {
    response: Pending<FetchResponse>,
    addr: String,
}

impl PendingFetch {
    /// Every partition the broker answered for.
    pub async fn wait(self) -> Result<Vec<FetchedPartition>> {
        let response = self.response.wait().await?;
        if let Some(error) = KafkaError::from_code(response.error_code, None) {
            return Err(ClientError::kafka(format!("Fetch from broker at {}", self.addr), error));
        }
        Ok(response
            .responses
            .into_iter()
            .flat_map(|t| {
                let topic = t.topic.0.to_string();
                t.partitions.into_iter().map(move |p| FetchedPartition {
                    topic: topic.clone(),
                    partition: p.partition_index,
                    error: KafkaError::from_code(p.error_code, None),
                    high_watermark: p.high_watermark,
                    last_stable_offset: p.last_stable_offset,
                    log_start_offset: p.log_start_offset,
                    aborted_transactions: p
                        .aborted_transactions
                        .unwrap_or_default()
                        .iter()
                        .map(|a| AbortedTransaction { producer_id: a.producer_id.0, first_offset: a.first_offset })
                        .collect(),
                    records: p.records.unwrap_or_default(),
                })
            })
            .collect())
    }
}

/// The Fetch request for `partitions`, grouped by topic in the order first seen.
pub fn fetch_request(partitions: &[PartitionFetch], options: &FetchOptions) -> FetchRequest {
    let mut topics: Vec<FetchTopic> = Vec::new();
    for p in partitions {
        let entry = FetchPartition::default()
            .with_partition(p.partition)
            .with_fetch_offset(p.offset)
            .with_current_leader_epoch(-1)
            .with_log_start_offset(-1)
            .with_partition_max_bytes(p.max_bytes);
        match topics.iter_mut().find(|t| t.topic.0.as_str() == p.topic) {
            Some(topic) => topic.partitions.push(entry),
            None => topics.push(FetchTopic::default().with_topic(topic_name(&p.topic)).with_partitions(vec![entry])),
        }
    }
    FetchRequest::default()
        .with_replica_id((-1).into())
        .with_max_wait_ms(options.max_wait_ms)
        .with_min_bytes(options.min_bytes)
        .with_max_bytes(options.max_bytes)
        .with_isolation_level(match options.isolation {
            Isolation::ReadUncommitted => 0,
            Isolation::ReadCommitted => 1,
        })
        // Session 0, epoch -1: a plain full fetch, no incremental fetch session.
        .with_session_id(0)
        .with_session_epoch(-1)
        .with_topics(topics)
}

impl Client {
    /// Sends one Fetch for `partitions` (all led by broker `leader`) and returns once it is queued.
    pub async fn send_fetch(&self, leader: i32, partitions: &[PartitionFetch], options: &FetchOptions) -> Result<PendingFetch> {
        if partitions.is_empty() {
            return Err(ClientError::InvalidRequest("a Fetch request needs at least one partition".to_string()));
        }
        let version = self.version(ApiKey::Fetch, FETCH_VERSIONS)?;
        let addr = self.node_addr(leader)?;
        let conn = self.connection(&addr).await?;
        let response = conn.send(&fetch_request(partitions, options), version).await?;
        Ok(PendingFetch { response, addr })
    }

    /// Fetches `partitions` from broker `leader` and waits for the answer.
    pub async fn fetch(&self, leader: i32, partitions: &[PartitionFetch], options: &FetchOptions) -> Result<Vec<FetchedPartition>> {
        self.send_fetch(leader, partitions, options).await?.wait().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_grouped_by_topic_in_one_request() {
        let want = |topic: &str, partition, offset| PartitionFetch { topic: topic.into(), partition, offset, max_bytes: 1024 };
        let options = FetchOptions { isolation: Isolation::ReadCommitted, ..FetchOptions::default() };
        let request = fetch_request(&[want("a", 0, 5), want("b", 1, 7), want("a", 2, 9)], &options);
        assert_eq!(request.isolation_level, 1);
        assert_eq!(request.session_epoch, -1);
        let layout: Vec<(String, Vec<(i32, i64)>)> = request
            .topics
            .iter()
            .map(|t| (t.topic.0.to_string(), t.partitions.iter().map(|p| (p.partition, p.fetch_offset)).collect()))
            .collect();
        assert_eq!(layout, [("a".to_string(), vec![(0, 5), (2, 9)]), ("b".to_string(), vec![(1, 7)])]);
    }
}
