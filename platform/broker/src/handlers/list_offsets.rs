//! ListOffsets (earliest, latest, max timestamp, by timestamp) and DeleteRecords.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::delete_records_response::{DeleteRecordsPartitionResult, DeleteRecordsTopicResult};
use kafka_protocol::messages::list_offsets_response::{ListOffsetsPartitionResponse, ListOffsetsTopicResponse};
use kafka_protocol::messages::{DeleteRecordsRequest, DeleteRecordsResponse, ListOffsetsRequest, ListOffsetsResponse};

use super::{blocking, map_partitions};
use crate::broker::Broker;

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

pub(crate) fn delete_records(broker: &Broker, request: DeleteRecordsRequest) -> DeleteRecordsResponse {
    let topics = map_partitions(
        &request.topics,
        |t| &t.partitions,
        |t, p| {
            let name = t.name.0.as_str();
            let result = DeleteRecordsPartitionResult::default().with_partition_index(p.partition_index);
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
                    result.with_low_watermark(low_watermark)
                }
                Err(error) => result.with_error_code(crate::error::storage_error_code(&error).code()).with_low_watermark(-1),
            }
        },
        |t, partitions| DeleteRecordsTopicResult::default().with_name(t.name.clone()).with_partitions(partitions),
    );
    DeleteRecordsResponse::default().with_topics(topics)
}
