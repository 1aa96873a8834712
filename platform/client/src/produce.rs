//! Produce: record batches (already encoded, e.g. by [`crate::records::encode_batch`] or fetched from
//! another cluster) to partition leaders. [`Client::send_produce`] returns once the request is queued, so
//! a caller can keep several in flight per leader; [`PendingProduce::wait`] gives each partition's result.

use bytes::Bytes;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ApiKey, ProduceRequest, ProduceResponse};

use crate::client::Client;
use crate::connection::Pending;
use crate::error::{ClientError, KafkaError, Result};
use crate::topic_name;
use crate::versions::PRODUCE_VERSIONS;
use crate::wire;

/// Acknowledgements a Produce waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acks {
    /// None: the broker does not answer; a write is done once sent.
    None,
    /// The leader has appended it.
    Leader,
    /// Every in-sync replica has it.
    All,
}

impl Acks {
    pub fn wire_value(self) -> i16 {
        match self {
            Acks::None => 0,
            Acks::Leader => 1,
            Acks::All => -1,
        }
    }
}

/// One partition's record batches (one or more whole v2 batches, back to back).
#[derive(Debug, Clone)]
pub struct PartitionBatch {
    pub topic: String,
    pub partition: i32,
    pub records: Bytes,
}

/// What the leader said about one partition's batches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducedPartition {
    pub topic: String,
    pub partition: i32,
    /// Offset of the first record written, or -1 (acks=0, or an error).
    pub base_offset: i64,
    /// The broker's append time when the topic uses LogAppendTime, else -1.
    pub log_append_time_ms: i64,
    pub log_start_offset: i64,
    pub error: Option<KafkaError>,
}

/// A sent Produce whose results are still to come.
pub struct PendingProduce {
    /// `None` for acks=0: nothing comes back.
    response: Option<Pending<ProduceResponse>>,
    sent: Vec<(String, i32)>,
}

impl PendingProduce {
    /// Each partition's result, in the order the batches were given. With acks=0 every partition
    /// reports base offset -1 and no error.
    pub async fn wait(self) -> Result<Vec<ProducedPartition>> {
        let Some(pending) = self.response else {
            return Ok(self.sent.into_iter().map(|(topic, partition)| unanswered(topic, partition, None)).collect());
        };
        let response = pending.wait().await?;
        Ok(self
            .sent
            .into_iter()
            .map(|(topic, partition)| {
                let found = response
                    .responses
                    .iter()
                    .filter(|t| t.name.0.as_str() == topic)
                    .flat_map(|t| t.partition_responses.iter())
                    .find(|p| p.index == partition);
                match found {
                    Some(p) => ProducedPartition {
                        base_offset: p.base_offset,
                        log_append_time_ms: p.log_append_time_ms,
                        log_start_offset: p.log_start_offset,
                        error: KafkaError::from_code(p.error_code, p.error_message.as_ref().map(|m| m.as_str())),
                        topic,
                        partition,
                    },
                    None => {
                        let missing = KafkaError { code: -1, message: Some(format!("no response for {topic} partition {partition}")) };
                        unanswered(topic, partition, Some(missing))
                    }
                }
            })
            .collect())
    }
}

fn unanswered(topic: String, partition: i32, error: Option<KafkaError>) -> ProducedPartition {
    ProducedPartition { topic, partition, base_offset: -1, log_append_time_ms: -1, log_start_offset: -1, error }
}

impl Client {
    /// Sends `batches` (all led by broker `leader`) in one Produce request and returns once it is queued
    /// (with acks=0: once it is written).
    pub async fn send_produce(&self, leader: i32, batches: &[PartitionBatch], acks: Acks, timeout_ms: i32) -> Result<PendingProduce> {
        if batches.is_empty() {
            return Err(ClientError::InvalidRequest("a Produce request needs at least one batch".to_string()));
        }
        let version = self.version(ApiKey::Produce, PRODUCE_VERSIONS)?;
        let mut topics: Vec<TopicProduceData> = Vec::new();
        for batch in batches {
            let data = PartitionProduceData::default().with_index(batch.partition).with_records(Some(batch.records.clone()));
            match topics.iter_mut().find(|t| t.name.0.as_str() == batch.topic) {
                Some(topic) => topic.partition_data.push(data),
                None => topics.push(TopicProduceData::default().with_name(topic_name(&batch.topic)).with_partition_data(vec![data])),
            }
        }
        let request = ProduceRequest::default().with_acks(acks.wire_value()).with_timeout_ms(timeout_ms).with_topic_data(topics);
        let body = wire::encode_body(&request, ApiKey::Produce, version)?;
        let conn = self.connection(&self.node_addr(leader)?).await?;
        let sent = batches.iter().map(|b| (b.topic.clone(), b.partition)).collect();
        if acks == Acks::None {
            conn.send_without_response(ApiKey::Produce, version, body).await?;
            return Ok(PendingProduce { response: None, sent });
        }
        Ok(PendingProduce { response: Some(conn.send_encoded(ApiKey::Produce, version, body).await?), sent })
    }

    /// Produces `batches` to broker `leader` and waits for the results.
    pub async fn produce(&self, leader: i32, batches: &[PartitionBatch], acks: Acks, timeout_ms: i32) -> Result<Vec<ProducedPartition>> {
        self.send_produce(leader, batches, acks, timeout_ms).await?.wait().await
    }
}
