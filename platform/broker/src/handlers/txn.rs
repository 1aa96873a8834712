//! The transactional APIs: InitProducerId with a transactional id, AddPartitionsToTxn,
//! AddOffsetsToTxn, TxnOffsetCommit, EndTxn, DescribeTransactions and ListTransactions. They check
//! shapes and bounds and call the transaction coordinator (`crate::transactions`), which owns the
//! state machine. WriteTxnMarkers is the coordinator's request to a partition's leader elsewhere in
//! the cluster (`crate::markers`).

use std::sync::Arc;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::add_partitions_to_txn_response::{AddPartitionsToTxnPartitionResult, AddPartitionsToTxnTopicResult};
use kafka_protocol::messages::describe_transactions_response::{TopicData, TransactionState};
use kafka_protocol::messages::list_transactions_response::TransactionState as ListedTransaction;
use kafka_protocol::messages::txn_offset_commit_response::{TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic};
use kafka_protocol::messages::write_txn_markers_response::{
    WritableTxnMarkerPartitionResult, WritableTxnMarkerResult, WritableTxnMarkerTopicResult,
};
use kafka_protocol::messages::{
    AddOffsetsToTxnRequest, AddOffsetsToTxnResponse, AddPartitionsToTxnRequest, AddPartitionsToTxnResponse, DescribeTransactionsRequest,
    DescribeTransactionsResponse, EndTxnRequest, EndTxnResponse, InitProducerIdRequest, InitProducerIdResponse, ListTransactionsRequest,
    ListTransactionsResponse, ProducerId, TopicName, TransactionalId, TxnOffsetCommitRequest, TxnOffsetCommitResponse,
};
use kafka_protocol::messages::{WriteTxnMarkersRequest, WriteTxnMarkersResponse};
use sluice_storage::{ControlType, StorageError, TxnMarker};

use super::{blocking, per_partition, str_bytes};
use crate::broker::Broker;
use crate::coordinator::Coordinators;
use crate::error::{BrokerError, refuse};
use crate::groups::check_group_id;
use crate::host::is_internal_name;
use crate::offsets::CommittedOffset;
use crate::transactions::{TXN_OFFSETS_MAX, TXN_PARTITIONS_MAX, TxnStatus};

/// Transactional ids and groups under `__sluice` belong to the broker's own runtimes: a client that
/// names one could fence a transform's runner or move its input position. Peer brokers (`peer`, see
/// `host::PEER_CLIENT_ID_PREFIX`) use them for their plugins. A node that does not coordinate
/// transactions answers NOT_COORDINATOR.
fn reserved(broker: &Broker, transactional_id: &str, group: Option<&str>, peer: bool) -> Result<Arc<Coordinators>, BrokerError> {
    let coordinators = broker.coordinators().map_err(BrokerError::Protocol)?;
    if peer {
        return Ok(coordinators);
    }
    if is_internal_name(transactional_id) {
        tracing::debug!(transactional_id, "refused a reserved transactional id");
        return refuse(ResponseError::TransactionalIdAuthorizationFailed);
    }
    if group.is_some_and(is_internal_name) {
        return refuse(ResponseError::GroupAuthorizationFailed);
    }
    Ok(coordinators)
}

/// InitProducerId with a non-empty transactional id.
pub(crate) fn init_producer_id(
    broker: &Broker,
    request: &InitProducerIdRequest,
    transactional_id: &str,
    peer: bool,
) -> InitProducerIdResponse {
    let expected = (request.producer_id.0 >= 0 && request.producer_epoch >= 0).then_some((request.producer_id.0, request.producer_epoch));
    let outcome = reserved(broker, transactional_id, None, peer)
        .and_then(|c| blocking(|| c.transactions.init_producer_id(transactional_id, request.transaction_timeout_ms, expected)));
    match outcome {
        Ok((producer_id, epoch)) => InitProducerIdResponse::default().with_producer_id(ProducerId(producer_id)).with_producer_epoch(epoch),
        Err(error) => {
            tracing::debug!(transactional_id, %error, "InitProducerId refused");
            InitProducerIdResponse::default().with_error_code(error.code()).with_producer_id(ProducerId(-1)).with_producer_epoch(-1)
        }
    }
}

pub(crate) fn add_partitions_to_txn(broker: &Broker, request: AddPartitionsToTxnRequest, peer: bool) -> AddPartitionsToTxnResponse {
    // v4+ batches several transactions for broker-to-broker verification; clients use v0-3, the only
    // versions advertised.
    let topics = request.v3_and_below_topics;
    let count: usize = topics.iter().map(|t| t.partitions.len()).sum();
    // Whole-request checks first, before anything is built per partition.
    let refusal = if count > TXN_PARTITIONS_MAX {
        refuse(ResponseError::InvalidRequest)
    } else {
        reserved(broker, request.v3_and_below_transactional_id.0.as_str(), None, peer)
    };
    let codes = match refusal {
        Err(error) => vec![error.code(); count],
        // As in Kafka, one unknown partition fails the request: it gets UNKNOWN_TOPIC_OR_PARTITION,
        // the others OPERATION_NOT_ATTEMPTED.
        Ok(_) if topics.iter().any(|t| t.partitions.iter().any(|p| !broker.partition_exists(t.name.0.as_str(), *p))) => topics
            .iter()
            .flat_map(|t| {
                t.partitions.iter().map(|p| {
                    let error = if broker.partition_exists(t.name.0.as_str(), *p) {
                        ResponseError::OperationNotAttempted
                    } else {
                        ResponseError::UnknownTopicOrPartition
                    };
                    error.code()
                })
            })
            .collect(),
        Ok(coordinators) => {
            let wanted: Vec<(String, i32)> =
                topics.iter().flat_map(|t| t.partitions.iter().map(move |p| (t.name.0.to_string(), *p))).collect();
            let outcome = blocking(|| {
                coordinators.transactions.add_partitions(
                    request.v3_and_below_transactional_id.0.as_str(),
                    request.v3_and_below_producer_id.0,
                    request.v3_and_below_producer_epoch,
                    &wanted,
                )
            });
            match outcome {
                Ok(()) => vec![0; count],
                Err(error) => vec![error.code(); count],
            }
        }
    };
    let results = per_partition(
        &topics,
        codes,
        |t| &t.partitions,
        |p, code| AddPartitionsToTxnPartitionResult::default().with_partition_index(*p).with_partition_error_code(code),
        |t, partitions| AddPartitionsToTxnTopicResult::default().with_name(t.name.clone()).with_results_by_partition(partitions),
    );
    AddPartitionsToTxnResponse::default().with_results_by_topic_v3_and_below(results)
}

pub(crate) fn add_offsets_to_txn(broker: &Broker, request: AddOffsetsToTxnRequest, peer: bool) -> AddOffsetsToTxnResponse {
    let group = request.group_id.0.as_str();
    let outcome = check_group_id(group)
        .map_err(BrokerError::Protocol)
        .and_then(|()| reserved(broker, request.transactional_id.0.as_str(), Some(group), peer))
        .and_then(|coordinators| {
            blocking(|| {
                coordinators.transactions.add_offsets(
                    request.transactional_id.0.as_str(),
                    request.producer_id.0,
                    request.producer_epoch,
                    group,
                )
            })
        });
    AddOffsetsToTxnResponse::default().with_error_code(outcome.err().map_or(0, |e| e.code()))
}

pub(crate) fn txn_offset_commit(broker: &Broker, request: TxnOffsetCommitRequest, peer: bool) -> TxnOffsetCommitResponse {
    let group = request.group_id.0.as_str();
    let count: usize = request.topics.iter().map(|t| t.partitions.len()).sum();
    // Whole-request checks first, before anything is built per entry.
    let refusal = check_group_id(group).map_err(BrokerError::Protocol).and_then(|()| {
        if count > TXN_OFFSETS_MAX {
            refuse(ResponseError::InvalidRequest)
        } else {
            reserved(broker, request.transactional_id.0.as_str(), Some(group), peer)
        }
    });
    let codes = match refusal {
        Err(error) => vec![error.code(); count],
        Ok(coordinators) => {
            let now = crate::now_ms();
            // Entries of unknown topics are answered here; only existing topics' names (at most
            // TOPIC_NAME_BYTES_MAX) are copied, once per entry.
            let mut codes = vec![0; count];
            let mut offsets = Vec::with_capacity(count);
            let mut positions = Vec::with_capacity(count);
            let mut position = 0;
            for topic in &request.topics {
                let known = broker.topic(topic.name.0.as_str()).is_some();
                for p in &topic.partitions {
                    if known {
                        let offset = CommittedOffset::from_request(
                            p.committed_offset,
                            p.committed_leader_epoch,
                            p.committed_metadata.as_ref().map(|m| m.as_str()),
                            now,
                        );
                        offsets.push(((topic.name.0.to_string(), p.partition_index), offset));
                        positions.push(position);
                    } else {
                        codes[position] = ResponseError::UnknownTopicOrPartition.code();
                    }
                    position += 1;
                }
            }
            let outcome = blocking(|| {
                coordinators.transactions.txn_offset_commit(
                    request.transactional_id.0.as_str(),
                    group,
                    request.producer_id.0,
                    request.producer_epoch,
                    request.generation_id,
                    request.member_id.as_str(),
                    offsets,
                )
            });
            match outcome {
                Ok(results) => {
                    for (position, error) in positions.into_iter().zip(results) {
                        codes[position] = error.map_or(0, |e| e.code());
                    }
                }
                Err(error) => positions.into_iter().for_each(|position| codes[position] = error.code()),
            }
            codes
        }
    };
    let topics = per_partition(
        &request.topics,
        codes,
        |t| &t.partitions,
        |p, code| TxnOffsetCommitResponsePartition::default().with_partition_index(p.partition_index).with_error_code(code),
        |t, partitions| TxnOffsetCommitResponseTopic::default().with_name(t.name.clone()).with_partitions(partitions),
    );
    TxnOffsetCommitResponse::default().with_topics(topics)
}

pub(crate) fn end_txn(broker: &Broker, request: EndTxnRequest, peer: bool) -> EndTxnResponse {
    let id = request.transactional_id.0.to_string();
    let outcome = reserved(broker, &id, None, peer)
        .and_then(|c| blocking(|| c.transactions.end_txn(&id, request.producer_id.0, request.producer_epoch, request.committed)));
    if let Err(error) = &outcome {
        tracing::debug!(transactional_id = id, commit = request.committed, %error, "EndTxn refused");
    }
    EndTxnResponse::default()
        .with_error_code(outcome.err().map_or(0, |e| e.code()))
        .with_producer_id(request.producer_id)
        .with_producer_epoch(request.producer_epoch)
}

pub(crate) fn describe_transactions(broker: &Broker, request: DescribeTransactionsRequest) -> DescribeTransactionsResponse {
    let coordinators = broker.coordinators();
    let states = request
        .transactional_ids
        .into_iter()
        .map(|id| match coordinators.as_ref().map(|c| c.transactions.describe(id.0.as_str())) {
            Err(error) => TransactionState::default()
                .with_transactional_id(id)
                .with_error_code(error.code())
                .with_transaction_state(str_bytes(""))
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1),
            Ok(None) => TransactionState::default()
                .with_transactional_id(id)
                .with_error_code(ResponseError::TransactionalIdNotFound.code())
                .with_transaction_state(str_bytes(""))
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1),
            Ok(Some(view)) => {
                let mut topics: Vec<TopicData> = Vec::new();
                for (topic, partition) in view.partitions {
                    match topics.last_mut() {
                        Some(last) if last.topic.0.as_str() == topic => last.partitions.push(partition),
                        _ => topics.push(TopicData::default().with_topic(TopicName(str_bytes(topic))).with_partitions(vec![partition])),
                    }
                }
                TransactionState::default()
                    .with_transactional_id(id)
                    .with_transaction_state(str_bytes(view.state))
                    .with_transaction_timeout_ms(view.timeout_ms)
                    .with_transaction_start_time_ms(view.start_ms)
                    .with_producer_id(ProducerId(view.producer_id))
                    .with_producer_epoch(view.producer_epoch)
                    .with_topics(topics)
            }
        })
        .collect();
    DescribeTransactionsResponse::default().with_transaction_states(states)
}

pub(crate) fn list_transactions(broker: &Broker, request: ListTransactionsRequest) -> ListTransactionsResponse {
    let known: Vec<&str> = TxnStatus::ALL.iter().map(|s| s.name()).collect();
    let unknown: Vec<_> = request.state_filters.iter().filter(|s| !known.contains(&s.as_str())).cloned().collect();
    let now = crate::now_ms();
    // Kafka asks every broker and merges: each lists the transactions it coordinates.
    let listed = broker.coordinators().map(|c| c.transactions.list()).unwrap_or_default();
    let states = listed
        .into_iter()
        .filter(|v| request.state_filters.is_empty() || request.state_filters.iter().any(|s| s.as_str() == v.state))
        .filter(|v| request.producer_id_filters.is_empty() || request.producer_id_filters.iter().any(|p| p.0 == v.producer_id))
        // v1: only transactions running longer than the filter (Ongoing ones have a start time).
        .filter(|v| request.duration_filter < 0 || (v.start_ms >= 0 && now - v.start_ms > request.duration_filter))
        .map(|v| {
            ListedTransaction::default()
                .with_transactional_id(TransactionalId(str_bytes(v.transactional_id)))
                .with_producer_id(ProducerId(v.producer_id))
                .with_transaction_state(str_bytes(v.state))
        })
        .collect();
    ListTransactionsResponse::default().with_unknown_state_filters(unknown).with_transaction_states(states)
}

/// The most partitions one WriteTxnMarkers request may name (a coordinator sends one transaction's
/// partitions per leader, at most `TXN_PARTITIONS_MAX`).
pub(crate) const MARKER_PARTITIONS_MAX: usize = TXN_PARTITIONS_MAX;

/// WriteTxnMarkers: writes each marker to the partitions this broker leads and answers once each is
/// durable the way an acks=all record is (refused under `min.insync.replicas`, fsynced under
/// fsync-before-ack, on every in-sync replica). Every marker is appended before any is waited for,
/// so the replicas confirm them all in the same fetch rounds. A partition led elsewhere answers
/// NOT_LEADER_OR_FOLLOWER (the coordinator asks its new leader), an epoch older than the partition's
/// producer epoch INVALID_PRODUCER_EPOCH (that transaction cannot be open here).
pub(crate) async fn write_txn_markers(broker: &std::sync::Arc<Broker>, request: WriteTxnMarkersRequest) -> WriteTxnMarkersResponse {
    let named: usize = request.markers.iter().flat_map(|m| m.topics.iter()).map(|t| t.partition_indexes.len()).sum();
    let refuse_all = named > MARKER_PARTITIONS_MAX;
    if refuse_all {
        tracing::warn!(partitions = named, limit = MARKER_PARTITIONS_MAX, "WriteTxnMarkers refused: too many partitions");
    }
    let now = crate::now_ms();
    // One future per partition, in request order; polled together, each appends at its first poll
    // and then waits for its replicas alongside the others.
    let mut writes = Vec::with_capacity(if refuse_all { 0 } else { named });
    for marker in request.markers.iter().filter(|_| !refuse_all) {
        let txn_marker = TxnMarker {
            producer_id: marker.producer_id.0,
            producer_epoch: marker.producer_epoch,
            control: if marker.transaction_result { ControlType::Commit } else { ControlType::Abort },
            coordinator_epoch: marker.coordinator_epoch,
        };
        for topic in &marker.topics {
            for &index in &topic.partition_indexes {
                let name = topic.name.0.as_str();
                writes.push(async move {
                    match write_marker(broker, name, index, &txn_marker, now).await {
                        Ok(()) => 0,
                        Err(error) => {
                            tracing::debug!(topic = name, partition = index, producer_id = txn_marker.producer_id, %error, "transaction marker not written");
                            error.code()
                        }
                    }
                });
            }
        }
    }
    let mut codes = futures::future::join_all(writes).await.into_iter();
    let markers = request
        .markers
        .iter()
        .map(|marker| {
            let topics = marker
                .topics
                .iter()
                .map(|topic| {
                    let partitions = topic
                        .partition_indexes
                        .iter()
                        .map(|&index| {
                            let code = codes.next().unwrap_or(ResponseError::InvalidRequest.code());
                            WritableTxnMarkerPartitionResult::default().with_partition_index(index).with_error_code(code)
                        })
                        .collect();
                    WritableTxnMarkerTopicResult::default().with_name(topic.name.clone()).with_partitions(partitions)
                })
                .collect();
            WritableTxnMarkerResult::default().with_producer_id(marker.producer_id).with_topics(topics)
        })
        .collect();
    WriteTxnMarkersResponse::default().with_markers(markers)
}

async fn write_marker(broker: &std::sync::Arc<Broker>, topic: &str, index: i32, marker: &TxnMarker, now: i64) -> Result<(), BrokerError> {
    let partition = broker.partition(topic, index)?;
    let config = broker.topic(topic).map(|t| t.config.read().clone());
    if let Some(mirror) = config.as_ref().and_then(|c| c.mirror.clone()) {
        return Err(BrokerError::ReadOnlyMirror { topic: topic.to_string(), mirror });
    }
    let min_insync = config.map_or(1, |c| c.min_insync_replicas(broker.config()));
    let (end, epoch) = match blocking(|| partition.write_marker(marker, min_insync, now)) {
        Err(BrokerError::Storage(StorageError::InvalidProducerEpoch { .. })) => return refuse(ResponseError::InvalidProducerEpoch),
        other => other?,
    };
    partition.wait_marker(end, epoch, min_insync).await
}
