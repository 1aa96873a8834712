//! ListOffsets (earliest, latest, max timestamp, by timestamp) and DeleteRecords.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::delete_records_response::{DeleteRecordsPartitionResult, DeleteRecordsTopicResult};
use kafka_protocol::messages::list_offsets_response::{ListOffsetsPartitionResponse, ListOffsetsTopicResponse};
use kafka_protocol::messages::{DeleteRecordsRequest, DeleteRecordsResponse, ListOffsetsRequest, ListOffsetsResponse};

use std::sync::Arc;

use super::{blocking, map_partitions};
use crate::broker::Broker;
use crate::topic::Partition;

pub(crate) const LATEST_TIMESTAMP: i64 = -1;
pub(crate) const EARLIEST_TIMESTAMP: i64 = -2;
pub(crate) const MAX_TIMESTAMP: i64 = -3;

pub(crate) fn list_offsets(broker: &Broker, request: ListOffsetsRequest, version: i16) -> ListOffsetsResponse {
    // read_committed consumers may only see offsets below the last stable offset.
    let read_committed = request.isolation_level == 1;
    let topics = map_partitions(
        &request.topics,
        |t| &t.partitions,
        |t, p| {
            let name = t.name.0.as_str();
            let response = ListOffsetsPartitionResponse::default().with_partition_index(p.partition_index);
            let partition = match broker.partition(name, p.partition_index) {
                Ok(partition) => partition,
                Err(error) => return response.with_error_code(error.code()).with_offset(-1).with_timestamp(-1),
            };
            if p.current_leader_epoch > partition.leader_epoch() {
                return response.with_error_code(ResponseError::UnknownLeaderEpoch.code());
            }
            // leader_epoch exists from v4; encoding it at older versions is refused by the codec.
            let epoch = if version >= 4 { partition.leader_epoch() } else { -1 };
            let visible_end = if read_committed { partition.last_stable_offset() } else { partition.high_watermark() };
            match p.timestamp {
                LATEST_TIMESTAMP => response.with_offset(visible_end).with_timestamp(-1).with_leader_epoch(epoch),
                EARLIEST_TIMESTAMP => response.with_offset(partition.log_start_offset()).with_timestamp(-1).with_leader_epoch(epoch),
                MAX_TIMESTAMP => match partition.max_timestamp() {
                    Some((timestamp, offset)) => response.with_offset(offset).with_timestamp(timestamp).with_leader_epoch(epoch),
                    None => response.with_offset(-1).with_timestamp(-1),
                },
                timestamp if timestamp >= 0 => match blocking(|| partition.offset_for_timestamp(timestamp)) {
                    Ok(Some((offset, found))) if offset < visible_end => {
                        response.with_offset(offset).with_timestamp(found).with_leader_epoch(epoch)
                    }
                    Ok(_) => response.with_offset(-1).with_timestamp(-1),
                    Err(error) => {
                        response.with_error_code(crate::error::storage_error_code(&error).code()).with_offset(-1).with_timestamp(-1)
                    }
                },
                _ => response.with_error_code(ResponseError::InvalidRequest.code()).with_offset(-1).with_timestamp(-1),
            }
        },
        |t, partitions| ListOffsetsTopicResponse::default().with_name(t.name.clone()).with_partitions(partitions),
    );
    ListOffsetsResponse::default().with_topics(topics)
}

/// The longest a DeleteRecords request waits for the followers (its `timeout_ms` is capped here).
const DELETE_RECORDS_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(60);

/// DeleteRecords: moves each partition's log start on its leader, then, as Kafka does, answers once
/// every in-sync follower has moved its copy's log start too (the low watermark; followers learn the
/// leader's log start from their fetches), so a later leader never serves what was deleted. A
/// partition whose followers do not follow within the request's `timeout_ms` answers
/// REQUEST_TIMED_OUT (its leader has deleted the records; the followers follow when they fetch).
pub(crate) async fn delete_records(broker: &Broker, request: DeleteRecordsRequest) -> DeleteRecordsResponse {
    let mut waits: Vec<(String, i32, Arc<Partition>, i64)> = Vec::new();
    let mut topics = map_partitions(
        &request.topics,
        |t| &t.partitions,
        |t, p| {
            let name = t.name.0.as_str();
            let result = DeleteRecordsPartitionResult::default().with_partition_index(p.partition_index);
            // The internal topics' logs are the coordinators' and the plugin host's state.
            if let Err(error) = crate::broker::refuse_internal(name) {
                return result.with_error_code(error.code()).with_low_watermark(-1);
            }
            let partition = match broker.partition(name, p.partition_index) {
                Ok(partition) => partition,
                Err(error) => return result.with_error_code(error.code()).with_low_watermark(-1),
            };
            if let Some(error) = broker.topic(name).and_then(|topic| topic.check_writable().err()) {
                return result.with_error_code(error.code()).with_low_watermark(partition.log_start_offset());
            }
            let high_watermark = partition.high_watermark();
            // -1 means "everything up to the high watermark".
            let offset = if p.offset == -1 { high_watermark } else { p.offset };
            if offset < 0 || offset > high_watermark {
                return result.with_error_code(ResponseError::OffsetOutOfRange.code()).with_low_watermark(partition.log_start_offset());
            }
            match blocking(|| partition.delete_records_before(offset)) {
                Ok(low_watermark) => {
                    tracing::info!(topic = name, partition = p.partition_index, low_watermark, "deleted records");
                    if partition.is_replicated() {
                        waits.push((name.to_string(), p.partition_index, Arc::clone(&partition), low_watermark));
                    }
                    result.with_low_watermark(low_watermark)
                }
                Err(error) => result.with_error_code(crate::error::storage_error_code(&error).code()).with_low_watermark(-1),
            }
        },
        |t, partitions| DeleteRecordsTopicResult::default().with_name(t.name.clone()).with_partitions(partitions),
    );
    let wait = std::time::Duration::from_millis(request.timeout_ms.max(0) as u64).min(DELETE_RECORDS_WAIT_MAX);
    let deadline = tokio::time::Instant::now() + wait;
    for (name, index, partition, offset) in waits {
        let low_watermark = loop {
            let low = partition.replica_set().low_watermark(partition.log_start_offset());
            if low >= offset || !partition.is_leader() || tokio::time::Instant::now() >= deadline {
                break low;
            }
            tokio::time::sleep(FOLLOWER_POLL).await;
        };
        let Some(result) = topics
            .iter_mut()
            .filter(|t| t.name.0.as_str() == name)
            .flat_map(|t| t.partitions.iter_mut())
            .find(|r| r.partition_index == index)
        else {
            continue;
        };
        if low_watermark < offset {
            let error = if partition.is_leader() { ResponseError::RequestTimedOut } else { ResponseError::NotLeaderOrFollower };
            tracing::warn!(topic = name, partition = index, low_watermark, offset, %error, "the followers did not move their log start in time");
            result.error_code = error.code();
        }
    }
    DeleteRecordsResponse::default().with_topics(topics)
}

/// How often DeleteRecords looks at the followers' log starts while it waits.
const FOLLOWER_POLL: std::time::Duration = std::time::Duration::from_millis(10);
