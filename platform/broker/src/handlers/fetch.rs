//! Fetch: serves stored batches byte for byte, below each partition's high watermark, or for
//! read_committed consumers below its last stable offset, with the aborted transactions overlapping
//! what is returned so the client can drop their records (and every control batch).
//!
//! If the first pass finds fewer than `min_bytes`, the request waits (up to `max_wait_ms`) for any of
//! its partitions' high watermarks to move, then reads again. The wait is a deferred reply, so the
//! connection keeps reading requests meanwhile. Incremental fetch sessions (KIP-227) are not
//! implemented: every response carries session id 0, which tells clients to send full fetches.
//!
//! Records are never read into memory here: a read returns the stored ranges of the segment files
//! (`PartitionLog::read_slices`), and the connection's writer sends them with `sendfile` between the
//! response's framing (`sluice_protocol::encode_fetch_framing`). A Fetch reply costs the broker its
//! framing and a file handle per range, whatever its size, and its bytes go from the page cache to the
//! socket without a copy through user space.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::fetch_response::{AbortedTransaction, FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{FetchRequest, FetchResponse, ProducerId};
use sluice_storage::{FileSlice, StorageError};
use tokio::sync::watch;

use super::{Reply, Response};
use crate::broker::Broker;
use crate::error::storage_error_code;
use crate::topic::Topic;

/// The longest a fetch may wait for data, whatever the client asks.
pub(crate) const FETCH_WAIT_MS_MAX: i32 = 300_000;

/// A Fetch response with its record sets as file slices: `slices[i]` is the record set of the i-th
/// partition (in response order) whose `records` is `None`. Partitions answered with an error carry
/// an empty record set inline.
pub(crate) struct FetchReply {
    pub(crate) response: FetchResponse,
    pub(crate) slices: Vec<Vec<FileSlice>>,
}

impl FetchReply {
    /// Record bytes the reply will send.
    pub(crate) fn record_bytes(&self) -> usize {
        self.slices.iter().flatten().map(|slice| slice.len).sum()
    }
}

struct FetchPlan {
    topics: Vec<FetchTopic>,
    max_bytes: usize,
    /// isolation_level = 1: read below the last stable offset and report aborted transactions.
    read_committed: bool,
    /// The broker id of a follower copying partitions (`replica_id` >= 0); consumers send -1.
    replica: Option<i32>,
}

fn partition_error(index: i32, error: ResponseError) -> PartitionData {
    // librdkafka cannot parse a null record set, even on an error: always send an empty one.
    PartitionData::default()
        .with_partition_index(index)
        .with_error_code(error.code())
        .with_high_watermark(-1)
        .with_records(Some(Bytes::new()))
}

/// One pass over every requested partition. Returns the reply and the record bytes it carries.
fn read_all(broker: &Broker, plan: &FetchPlan) -> (FetchReply, usize, bool) {
    let mut total = 0usize;
    let max_bytes = plan.max_bytes;
    let mut any_error = false;
    let mut slices = Vec::new();
    let responses = plan
        .topics
        .iter()
        .map(|fetch_topic| {
            let topic: Option<Arc<Topic>> = broker.topic(fetch_topic.topic.0.as_str());
            let partitions = fetch_topic
                .partitions
                .iter()
                .map(|fp| {
                    let partition =
                        match topic.as_ref().map_or(Err(ResponseError::UnknownTopicOrPartition), |t| t.led_partition(fp.partition)) {
                            Ok(partition) => partition,
                            Err(error) => {
                                any_error = true;
                                return partition_error(fp.partition, error);
                            }
                        };
                    if fp.current_leader_epoch > partition.leader_epoch() {
                        any_error = true;
                        return partition_error(fp.partition, ResponseError::UnknownLeaderEpoch);
                    }
                    if fp.current_leader_epoch >= 0 && fp.current_leader_epoch < partition.leader_epoch() {
                        any_error = true;
                        return partition_error(fp.partition, ResponseError::FencedLeaderEpoch);
                    }
                    let remaining = max_bytes.saturating_sub(total);
                    let partition_max = (fp.partition_max_bytes.max(0) as usize).min(remaining);
                    // KIP-74: the first partition with data returns at least one whole batch, even
                    // one larger than the limits, so an oversized batch never wedges a consumer.
                    let min_one = total == 0;
                    if let Some(replica) = plan.replica {
                        return match follower_read(broker, &partition, replica, fp, partition_max, min_one) {
                            Ok((data, read_slices, bytes)) => {
                                total += bytes;
                                slices.push(read_slices);
                                data.with_partition_index(fp.partition)
                            }
                            Err(error) => {
                                any_error = true;
                                partition_error(fp.partition, error)
                                    .with_high_watermark(partition.high_watermark())
                                    .with_log_start_offset(partition.log_start_offset())
                            }
                        };
                    }
                    let quick = partition.read_is_quick();
                    let read = || partition.read_isolated_slices(fp.fetch_offset, partition_max, min_one, plan.read_committed);
                    match broker.file_calls().run(quick, read) {
                        Ok(isolated) => {
                            let read = isolated.read;
                            total += read.bytes;
                            if let Some(topic) = &topic
                                && read.bytes > 0
                            {
                                topic.metrics.bytes_out.inc_by(read.bytes as u64);
                                topic.metrics.records_out.inc_by(read.next_offset.saturating_sub(fp.fetch_offset).max(0) as u64);
                            }
                            let aborted = isolated.aborted.map(|list| {
                                list.into_iter()
                                    .map(|a| {
                                        AbortedTransaction::default()
                                            .with_producer_id(ProducerId(a.producer_id))
                                            .with_first_offset(a.first_offset)
                                    })
                                    .collect()
                            });
                            slices.push(read.slices);
                            PartitionData::default()
                                .with_partition_index(fp.partition)
                                .with_high_watermark(isolated.high_watermark)
                                .with_last_stable_offset(isolated.last_stable_offset)
                                .with_log_start_offset(read.log_start_offset)
                                .with_aborted_transactions(aborted)
                                .with_records(None)
                        }
                        Err(error) => {
                            any_error = true;
                            if !matches!(error, StorageError::OffsetOutOfRange { .. }) {
                                tracing::warn!(topic = fetch_topic.topic.0.as_str(), partition = fp.partition, %error, "fetch failed");
                            }
                            partition_error(fp.partition, storage_error_code(&error))
                                .with_high_watermark(partition.high_watermark())
                                .with_log_start_offset(partition.log_start_offset())
                        }
                    }
                })
                .collect();
            FetchableTopicResponse::default()
                .with_topic(fetch_topic.topic.clone())
                .with_topic_id(fetch_topic.topic_id)
                .with_partitions(partitions)
        })
        .collect();
    (FetchReply { response: FetchResponse::default().with_responses(responses), slices }, total, any_error)
}

/// A follower's fetch (`replica_id` >= 0): records its progress (which may move the high watermark
/// and the ISR), then reads up to the log end. Followers never read committed-only.
fn follower_read(
    broker: &Broker,
    partition: &Arc<crate::topic::Partition>,
    replica: i32,
    request: &FetchPartition,
    max_bytes: usize,
    min_one: bool,
) -> Result<(PartitionData, Vec<FileSlice>, usize), ResponseError> {
    let fetch_offset = request.fetch_offset;
    // Progress counts only for an offset this log holds: a follower asking beyond its end has a
    // tail this leader never wrote (it truncates on OFFSET_OUT_OF_RANGE), not these records.
    if fetch_offset < partition.log_start_offset() || fetch_offset > partition.log_end_offset() {
        return Err(ResponseError::OffsetOutOfRange);
    }
    crate::replication::follower_fetched(broker, partition, replica, fetch_offset, request.log_start_offset)?;
    let quick = partition.read_is_quick();
    let (read, hw) = broker.file_calls().run(quick, || partition.read_for_follower(fetch_offset, max_bytes, min_one)).map_err(|error| {
        if !matches!(error, StorageError::OffsetOutOfRange { .. }) {
            tracing::warn!(topic = partition.topic.as_str(), partition = partition.index, replica, %error, "replica fetch failed");
        }
        storage_error_code(&error)
    })?;
    let data = PartitionData::default()
        .with_high_watermark(hw)
        .with_last_stable_offset(partition.last_stable_offset())
        .with_log_start_offset(read.log_start_offset)
        .with_records(None);
    Ok((data, read.slices, read.bytes))
}

pub(crate) async fn handle(broker: &Arc<Broker>, request: FetchRequest, version: i16) -> Reply {
    if request.session_id != 0 {
        return Reply::Ready(FetchResponse::default().with_error_code(ResponseError::FetchSessionIdNotFound.code()).into());
    }
    let broker_max = broker.config().fetch_bytes_max();
    // Fetch v0-2 had no response-level limit.
    let max_bytes = if version >= 3 && request.max_bytes > 0 { (request.max_bytes as usize).min(broker_max) } else { broker_max };
    let replica = (request.replica_id.0 >= 0).then_some(request.replica_id.0);
    let plan = FetchPlan { topics: request.topics, max_bytes, read_committed: request.isolation_level == 1, replica };
    let (reply, total, any_error) = read_all(broker, &plan);
    let max_wait = request.max_wait_ms.clamp(0, FETCH_WAIT_MS_MAX) as u64;
    let min_bytes = request.min_bytes.max(0) as usize;
    if total >= min_bytes.max(1) || max_wait == 0 || any_error {
        return Reply::Fetch(reply);
    }
    let mut watches: Vec<watch::Receiver<i64>> = plan
        .topics
        .iter()
        .filter_map(|t| broker.topic(t.topic.0.as_str()).map(|topic| (topic, t)))
        .flat_map(|(topic, t)| {
            t.partitions
                .iter()
                .filter_map(move |p| topic.partition(p.partition))
                // A follower waits for new records, a consumer for newly committed ones.
                .map(|p| if replica.is_some() { p.watch_log_end() } else { p.watch_high_watermark() })
                .collect::<Vec<_>>()
        })
        .collect();
    if watches.is_empty() {
        return Reply::Fetch(reply);
    }
    let broker = Arc::clone(broker);
    Reply::Deferred(Box::pin(async move {
        let deadline = Instant::now() + Duration::from_millis(max_wait);
        // The first pass's reply is superseded by the one below.
        drop(reply);
        for receiver in watches.iter_mut() {
            receiver.borrow_and_update();
        }
        // Records that arrived between the first read and the subscriptions changed nothing the
        // receivers will report: read once more before waiting, or such a fetch (a follower's, whose
        // next fetch is what moves the high watermark) would sleep its whole max_wait_ms.
        let (mut reply, total, any_error) = read_all(&broker, &plan);
        let mut done = total >= min_bytes.max(1) || any_error;
        while !done {
            let changed = futures::future::select_all(watches.iter_mut().map(|w| Box::pin(w.changed())));
            match tokio::time::timeout_at(deadline.into(), changed).await {
                Err(_) => break,
                Ok((Err(_), _, _)) => break,
                Ok((Ok(()), _, _)) => {}
            }
            let (again, total, any_error) = read_all(&broker, &plan);
            reply = again;
            done = total >= min_bytes || any_error;
        }
        if Instant::now() >= deadline {
            // Data may have arrived right at the deadline.
            reply = read_all(&broker, &plan).0;
        }
        Response::Fetch(reply)
    }))
}
