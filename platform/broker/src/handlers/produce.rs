//! Produce and InitProducerId. Transactional batches are appended only after the transaction
//! coordinator confirms the producer's transaction is open and holds the partition (on a broker that
//! is not the coordinator, the partition's producer state checks the epoch; see `crate::markers`).
//!
//! A produce request's batches are validated and appended by the storage engine in request order
//! (idempotent sequence checks happen there, under the partition lock). With the page-cache flush
//! policy the response is ready at once; with fsync-before-ack the response is deferred until a
//! group-committed fsync covers the batch, and the connection keeps reading meanwhile. With
//! acks=all on a partition whose ISR has other members, the response also waits until the high
//! watermark passes the batch (every in-sync replica holds it); with fewer in-sync replicas than
//! `min.insync.replicas`, acks=all writes are refused before anything is written.

use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::produce_response::{BatchIndexAndErrorMessage, PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProduceRequest, ProduceResponse, ProducerId, ResponseKind};
use sluice_storage::{AppendMode, BatchHeader, StorageError};

use super::{Reply, Response, blocking, str_bytes};
use crate::broker::Broker;
use crate::error::{BrokerError, storage_error_code};
use crate::topic::{DURABILITY_WAIT_DEFAULT, FlushPolicy, Partition};

struct PendingDurability {
    topic_idx: usize,
    partition_idx: usize,
    partition: Arc<Partition>,
    offset: i64,
    /// acks=all on a replicated partition: `min.insync.replicas`, checked again once replicated.
    replicated: Option<usize>,
    /// The leader epoch the batch was appended in.
    epoch: i32,
}

fn error_response(index: i32, error: ResponseError, message: Option<String>) -> PartitionProduceResponse {
    PartitionProduceResponse::default()
        .with_index(index)
        .with_error_code(error.code())
        .with_base_offset(-1)
        .with_error_message(message.map(str_bytes))
}

pub(crate) async fn handle(broker: &Arc<Broker>, request: ProduceRequest, version: i16, peer: bool) -> Reply {
    let acks = request.acks;
    if !matches!(acks, -1..=1) {
        let responses = request
            .topic_data
            .iter()
            .map(|t| {
                TopicProduceResponse::default().with_name(t.name.clone()).with_partition_responses(
                    t.partition_data.iter().map(|p| error_response(p.index, ResponseError::InvalidRequiredAcks, None)).collect(),
                )
            })
            .collect();
        return Reply::Ready(ProduceResponse::default().with_responses(responses).into());
    }
    let now = crate::now_ms();
    let transactional_id = request.transactional_id.as_ref().map(|t| t.0.as_str()).unwrap_or_default();
    let mut pending = Vec::new();
    let mut responses = Vec::with_capacity(request.topic_data.len());
    for (topic_idx, topic_data) in request.topic_data.into_iter().enumerate() {
        let name = topic_data.name.0.to_string();
        let topic = broker.topic(&name);
        // Peers write the plugin host's topic (their plugin logs); nobody writes the coordinators'
        // through Produce.
        let internal = if peer && name == crate::topic::PLUGINS_TOPIC { None } else { crate::broker::refuse_internal(&name).err() };
        let read_only = topic.as_ref().and_then(|t| t.check_writable().err()).or(internal);
        let mut partition_responses = Vec::with_capacity(topic_data.partition_data.len());
        for (partition_idx, data) in topic_data.partition_data.into_iter().enumerate() {
            let index = data.index;
            if let Some(error) = &read_only {
                partition_responses.push(error_response(index, error.kafka(), Some(error.to_string())));
                continue;
            }
            let partition = match topic.as_ref().map_or(Err(ResponseError::UnknownTopicOrPartition), |t| t.led_partition(index)) {
                Ok(partition) => partition,
                Err(error) => {
                    partition_responses.push(error_response(index, error, None));
                    continue;
                }
            };
            let Some(records) = data.records else {
                partition_responses.push(error_response(index, ResponseError::CorruptMessage, Some("no record batch".into())));
                continue;
            };
            let min_insync =
                if acks == -1 { topic.as_ref().map_or(1, |t| t.config.read().min_insync_replicas(broker.config())) } else { 1 };
            if min_insync > 1 && partition.isr_len() < min_insync {
                let error = BrokerError::NotEnoughReplicas { isr: partition.isr_len(), min_insync };
                partition_responses.push(error_response(index, error.kafka(), Some(error.to_string())));
                continue;
            }
            // The storage engine rewrites offsets in place; the request frame is shared, so copy the
            // batch bytes once here (per batch, never per record).
            let mut batch = records.to_vec();
            let epoch = partition.leader_epoch();
            let mode = AppendMode::AssignOffsets { leader_epoch: epoch };
            let header = BatchHeader::parse(&batch);
            let transactional = header.is_some_and(|h| h.is_transactional());
            if !same_producer_throughout(&batch) {
                let why = "every batch of one partition's records must come from the same producer, epoch and transactional state";
                partition_responses.push(error_response(index, ResponseError::InvalidRecord, Some(why.into())));
                continue;
            }
            if transactional == transactional_id.is_empty() {
                let why = if transactional {
                    "transactional batches need the request's transactional id"
                } else {
                    "a transactional request carries non-transactional batches"
                };
                partition_responses.push(error_response(index, ResponseError::InvalidRecord, Some(why.into())));
                continue;
            }
            // A plain write with a producer id (idempotent) must come from an idempotent producer:
            // Kafka refuses one from a producer with an open transaction; Sluice refuses any
            // transactional id's producer (it only writes in transactions) and ids it never handed out.
            if let Some(h) = header.filter(|h| !transactional && h.producer_id >= 0) {
                let refusal = if broker.owns_transactional_producer(h.producer_id) {
                    Some((ResponseError::InvalidTxnState, "the producer id belongs to a transactional id; write in a transaction"))
                } else if !broker.producer_ids().ever_allocated(h.producer_id) {
                    Some((ResponseError::UnknownProducerId, "this producer id was never handed out by InitProducerId"))
                } else {
                    None
                };
                if let Some((error, why)) = refusal {
                    tracing::debug!(topic = name, partition = index, producer_id = h.producer_id, why, "idempotent produce refused");
                    partition_responses.push(error_response(index, error, Some(why.into())));
                    continue;
                }
            }
            let appended = match header.filter(|_| transactional) {
                // The coordinator checks the producer belongs to the request's transactional id and
                // its transaction holds this partition, and keeps the transaction from completing
                // while the batch is appended.
                Some(h) => match reserved_id(transactional_id, peer).and_then(|id| {
                    blocking(|| {
                        let Ok(coordinators) = broker.coordinators() else {
                            // The coordinator is another broker: it checked this partition into the
                            // transaction (AddPartitionsToTxn) and its marker ends it here; the
                            // partition's producer state refuses an older epoch (a zombie).
                            return Ok(partition.append(&mut batch, mode, now));
                        };
                        coordinators.transactions.transactional_append(id, h.producer_id, h.producer_epoch, &name, index, || {
                            partition.append(&mut batch, mode, now)
                        })
                    })
                }) {
                    Ok(appended) => appended,
                    Err(error) => {
                        tracing::debug!(
                            topic = name,
                            partition = index,
                            producer_id = h.producer_id,
                            %error,
                            "transactional produce refused"
                        );
                        partition_responses.push(error_response(index, error.kafka(), None));
                        continue;
                    }
                },
                // The coordinator's slot lock a transactional append waits for can be held across an fsync
                // (EndTxn), so those stay on `blocking`; a plain append runs on the worker when quick.
                None => broker.file_calls().run(partition.append_is_quick(batch.len(), now), || partition.append(&mut batch, mode, now)),
            };
            match appended {
                Ok(result) => {
                    if let Some(topic) = &topic {
                        topic.metrics.bytes_in.inc_by(result.byte_count);
                        topic.metrics.records_in.inc_by(result.record_count);
                    }
                    let replicated = (acks == -1 && partition.is_replicated()).then_some(min_insync);
                    if acks != 0 && (partition.policy() == FlushPolicy::BeforeAck || replicated.is_some()) {
                        pending.push(PendingDurability {
                            topic_idx,
                            partition_idx,
                            partition: Arc::clone(&partition),
                            offset: result.last_offset + 1,
                            replicated,
                            epoch,
                        });
                    }
                    partition_responses.push(
                        PartitionProduceResponse::default()
                            .with_index(index)
                            .with_base_offset(result.base_offset)
                            .with_log_append_time_ms(result.log_append_time)
                            .with_log_start_offset(result.log_start_offset),
                    );
                }
                Err(error) => {
                    let code = storage_error_code(&error);
                    if !matches!(error, StorageError::OutOfOrderSequence { .. }) {
                        tracing::debug!(topic = name, partition = index, %error, "produce rejected");
                    }
                    let mut response = error_response(index, code, Some(error.to_string()));
                    if version >= 8 && matches!(error, StorageError::InvalidRecord(_) | StorageError::CorruptMessage(_)) {
                        response = response.with_record_errors(vec![
                            BatchIndexAndErrorMessage::default()
                                .with_batch_index(0)
                                .with_batch_index_error_message(Some(str_bytes(error.to_string()))),
                        ]);
                    }
                    partition_responses.push(response);
                }
            }
        }
        responses.push(TopicProduceResponse::default().with_name(topic_data.name).with_partition_responses(partition_responses));
    }
    if acks == 0 {
        return Reply::NoResponse;
    }
    let response = ProduceResponse::default().with_responses(responses);
    if pending.is_empty() {
        return Reply::Ready(response.into());
    }
    let wait = if request.timeout_ms > 0 { Duration::from_millis(request.timeout_ms as u64) } else { DURABILITY_WAIT_DEFAULT };
    Reply::Deferred(Box::pin(async move {
        let mut response = response;
        for p in pending {
            let mut outcome = p.partition.wait_durable_within(p.offset, wait).await;
            if let (Ok(()), Some(min_insync)) = (&outcome, p.replicated) {
                outcome = p.partition.wait_replicated(p.offset, p.epoch, min_insync, wait).await;
            }
            let error = match outcome {
                Ok(()) => continue,
                Err(error) => (error.kafka(), error.to_string()),
            };
            if let Some(entry) = response.responses.get_mut(p.topic_idx).and_then(|t| t.partition_responses.get_mut(p.partition_idx)) {
                entry.error_code = error.0.code();
                entry.error_message = Some(str_bytes(error.1));
            }
        }
        Response::Message(ResponseKind::from(response))
    }))
}

pub(crate) fn init_producer_id(broker: &Broker, request: InitProducerIdRequest, peer: bool) -> InitProducerIdResponse {
    if let Some(transactional_id) = request.transactional_id.as_ref().filter(|t| !t.0.is_empty()) {
        return super::txn::init_producer_id(broker, &request, &transactional_id.0.to_string(), peer);
    }
    // Without a transactional id, Kafka's coordinator ignores the producer id and epoch a KIP-360
    // client sends and hands out a fresh producer id: it cannot tell whose id it was given, and
    // bumping the epoch of an arbitrary id would let any client take over another producer's id.
    // (Clients bump an idempotent producer's epoch themselves, or ask for a fresh id like this.)
    match blocking(|| broker.producer_ids().allocate()) {
        Ok(id) => InitProducerIdResponse::default().with_producer_id(ProducerId(id)).with_producer_epoch(0),
        Err(error) => {
            tracing::error!(%error, "cannot allocate a producer id");
            InitProducerIdResponse::default().with_error_code(error.code()).with_producer_id(ProducerId(-1)).with_producer_epoch(-1)
        }
    }
}

/// The request's transactional id, unless it is one of the broker's own (`__sluice…`) and the
/// request does not come from a peer broker's plugin host.
fn reserved_id(transactional_id: &str, peer: bool) -> Result<&str, BrokerError> {
    if !peer && crate::host::is_internal_name(transactional_id) {
        Err(BrokerError::Protocol(ResponseError::TransactionalIdAuthorizationFailed))
    } else {
        Ok(transactional_id)
    }
}

/// Whether every batch in `records` has the first batch's producer id, epoch and transactional bit.
/// The transaction check looks at the first header; a later batch must not slip another producer's
/// transaction past it. Framing is validated later by the log; here a short tail just ends the walk.
fn same_producer_throughout(records: &[u8]) -> bool {
    let Some(first) = BatchHeader::parse(records) else { return true };
    let mut position = first.total_size();
    while let Some(header) = records.get(position..).and_then(BatchHeader::parse) {
        if header.producer_id != first.producer_id
            || header.producer_epoch != first.producer_epoch
            || header.is_transactional() != first.is_transactional()
        {
            return false;
        }
        let size = header.total_size();
        if size <= 12 {
            break;
        }
        position = position.saturating_add(size);
    }
    true
}
