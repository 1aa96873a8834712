//! The cluster path of the host's transactional producer: in a cluster of several brokers a plugin's
//! transactions and input positions live where the clients' do — in the replicated coordinators on
//! the leader of `__sluice_coordinator-0` — and its records go to each output partition's leader.
//! A broker's own plugins therefore survive the loss of any broker, the one they run on included:
//! whoever runs them next finds their committed positions and fences their open transactions.
//!
//! Every call is a Kafka request over the network (to this broker itself when it is the coordinator
//! or the leader), exactly what a transactional Java client sends: InitProducerId, AddPartitionsToTxn,
//! Produce with acks=all, AddOffsetsToTxn, TxnOffsetCommit, EndTxn and OffsetFetch with
//! `require_stable`. A plugin's input partition that another broker leads is read the way a
//! read_committed consumer reads it: Fetch (isolation level 1) and ListOffsets at its leader
//! (`CommittedReader`'s remote source). One code path, the one clients exercise, instead of a second in-process one per
//! placement. Requests carry a client id starting with [`PEER_CLIENT_ID_PREFIX`], which lets the
//! handlers accept the broker's reserved (`__sluice…`) names from a peer broker; until the cluster
//! authenticates its peers (the security issue's broker principal) that prefix is the only thing
//! that separates a peer from a client, so the reservation guards against accidents, not attacks.
//!
//! While the coordinator or a leader moves (NOT_COORDINATOR, NOT_LEADER_OR_FOLLOWER, a refused
//! connection, CONCURRENT_TRANSACTIONS while a commit completes) a call is retried with the same
//! request for up to [`RETRY_WAIT`]. A retried Produce carries the same producer sequence, so the
//! leader's idempotence drops a copy it already has; a retried EndTxn finds its transaction
//! completing or completed and succeeds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::txn_offset_commit_request::{TxnOffsetCommitRequestPartition, TxnOffsetCommitRequestTopic};
use kafka_protocol::messages::{
    AddOffsetsToTxnRequest, AddPartitionsToTxnRequest, BrokerId, EndTxnRequest, FetchRequest, GroupId, InitProducerIdRequest,
    ListOffsetsRequest, OffsetFetchRequest, ProduceRequest, ProducerId, TopicName, TransactionalId, TxnOffsetCommitRequest,
};
use kafka_protocol::protocol::Request;

use sluice_cluster::{Controller, NO_LEADER};

use super::{HostError, StopFlag};
use crate::cluster::PeerConnections;
use crate::handlers::str_bytes;
use crate::topic::COORDINATOR_TOPIC;

/// Client ids of requests one broker sends another on behalf of its plugins. The prefix is reserved
/// (`__sluice`), so no client's default id starts with it.
pub const PEER_CLIENT_ID_PREFIX: &str = "__sluice-broker-";

/// Whether a request came from a peer broker's plugin host (see the module's note on trust).
pub(crate) fn is_peer(client_id: &str) -> bool {
    client_id.starts_with(PEER_CLIENT_ID_PREFIX)
}

/// How long one call keeps retrying while the coordinator or a leader moves. Longer than a leader
/// election after a broker's session expires (≈ 10 s by default), shorter than a transaction's timeout.
pub(crate) const RETRY_WAIT: Duration = Duration::from_secs(30);
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// One request may take as long as an acks=all write waits for the ISR (the handler's durability
/// wait, 30 s); past this the connection is dropped and the call retried.
const CALL_TIMEOUT: Duration = Duration::from_secs(35);
/// How long an acks=all Produce may wait for the ISR, as its `timeout_ms`.
const PRODUCE_TIMEOUT_MS: i32 = 30_000;

const PRODUCE_VERSION: i16 = 9;
const INIT_PRODUCER_ID_VERSION: i16 = 4;
const ADD_PARTITIONS_VERSION: i16 = 3;
const ADD_OFFSETS_VERSION: i16 = 3;
const TXN_OFFSET_COMMIT_VERSION: i16 = 3;
const END_TXN_VERSION: i16 = 3;
/// v7: `require_stable` (KIP-447), the last version with one group per request.
const OFFSET_FETCH_VERSION: i16 = 7;
/// v12: what followers send too (the last version that names topics rather than ids).
const FETCH_VERSION: i16 = 12;
/// v2+: `isolation_level`, so "latest" is the last stable offset for a read_committed reader.
const LIST_OFFSETS_VERSION: i16 = 4;
/// ListOffsets' special timestamps.
pub(crate) const EARLIEST: i64 = -2;
pub(crate) const LATEST: i64 = -1;

/// Errors that mean "ask again, possibly elsewhere": the coordinator or leader is moving, loading,
/// or finishing the previous transaction.
fn retriable(code: i16) -> bool {
    [
        ResponseError::NotCoordinator,
        ResponseError::CoordinatorNotAvailable,
        ResponseError::CoordinatorLoadInProgress,
        ResponseError::ConcurrentTransactions,
        ResponseError::NotLeaderOrFollower,
        ResponseError::LeaderNotAvailable,
        ResponseError::UnknownTopicOrPartition,
        ResponseError::NotEnoughReplicas,
        ResponseError::NotEnoughReplicasAfterAppend,
        ResponseError::RequestTimedOut,
        ResponseError::UnstableOffsetCommit,
    ]
    .iter()
    .any(|e| e.code() == code)
}

/// Whom a call goes to.
enum Target<'a> {
    /// The leader of `__sluice_coordinator-0`: the group and transaction coordinator.
    Coordinator,
    Leader(&'a str, i32),
}

/// A broker's way to the cluster's coordinators and partition leaders, shared by its plugins'
/// producers: one connection per peer address, opened on first use and replaced when it closes.
/// Fetches do not use them: a server answers a connection's requests in order, so a long poll
/// would hold up every acks=all Produce and EndTxn behind it. Each remote reader fetches over its
/// own connections ([`Peers::fetch_connections`]).
pub(crate) struct Peers {
    controller: Arc<Controller>,
    runtime: tokio::runtime::Handle,
    client_id: String,
    connections: PeerConnections,
}

impl Peers {
    pub(crate) fn new(node: i32, controller: Arc<Controller>, runtime: tokio::runtime::Handle) -> Peers {
        let client_id = format!("{PEER_CLIENT_ID_PREFIX}{node}");
        Peers { controller, runtime, connections: PeerConnections::new(client_id.clone()), client_id }
    }

    /// Connections for one reader's fetches, apart from the shared ones.
    pub(crate) fn fetch_connections(&self) -> PeerConnections {
        PeerConnections::new(self.client_id.clone())
    }

    /// The address of `target` as the quorum names it now.
    fn address(&self, target: &Target<'_>) -> Result<String, String> {
        let (topic, index) = match target {
            Target::Coordinator => (COORDINATOR_TOPIC, 0),
            Target::Leader(topic, index) => (*topic, *index),
        };
        self.controller.with_metadata(|m, _| {
            let Some(state) = m.partition(topic, index) else { return Err(format!("the controller does not know {topic}-{index}")) };
            if state.leader == NO_LEADER {
                return Err(format!("{topic}-{index} has no leader"));
            }
            match m.brokers.get(&state.leader).filter(|b| !b.fenced) {
                Some(b) => Ok(format!("{}:{}", b.registration.host, b.registration.port)),
                None => Err(format!("the leader of {topic}-{index} (broker {}) is fenced", state.leader)),
            }
        })
    }

    /// Sends `request` to `target` over the shared connections until it answers with something
    /// other than a retriable error (`code` reads the answer's error), [`RETRY_WAIT`] has passed, or
    /// `stop` is raised. Blocking.
    fn call<R: Request>(
        &self,
        target: Target<'_>,
        request: &R,
        version: i16,
        action: &str,
        stop: &StopFlag,
        code: impl Fn(&R::Response) -> i16,
    ) -> Result<R::Response, HostError> {
        self.call_on(&self.connections, target, request, version, action, stop, code)
    }

    /// [`call`](Self::call) over the connections of `pool`.
    #[allow(clippy::too_many_arguments)]
    fn call_on<R: Request>(
        &self,
        pool: &PeerConnections,
        target: Target<'_>,
        request: &R,
        version: i16,
        action: &str,
        stop: &StopFlag,
        code: impl Fn(&R::Response) -> i16,
    ) -> Result<R::Response, HostError> {
        crate::cluster::wait(&self.runtime, async {
            let deadline = Instant::now() + RETRY_WAIT;
            loop {
                let problem = match self.address(&target) {
                    Err(why) => why,
                    Ok(addr) => match pool.get(&addr).await {
                        Err(why) => why,
                        Ok(connection) => match tokio::time::timeout(CALL_TIMEOUT, connection.call(request, version)).await {
                            Ok(Ok(response)) => {
                                let answered = code(&response);
                                if !retriable(answered) {
                                    return Ok(response);
                                }
                                format!("{addr} answered {}", sluice_client::codes::error_label(answered))
                            }
                            Ok(Err(error)) => {
                                pool.forget(&addr);
                                format!("{addr}: {error}")
                            }
                            Err(_) => {
                                pool.forget(&addr);
                                format!("{addr} did not answer within {CALL_TIMEOUT:?}")
                            }
                        },
                    },
                };
                if stop.raised() {
                    return Err(HostError::Refused { action: action.to_string(), reason: format!("the task is stopping ({problem})") });
                }
                if Instant::now() >= deadline {
                    return Err(HostError::Refused {
                        action: action.to_string(),
                        reason: format!("still failing after {RETRY_WAIT:?}: {problem}"),
                    });
                }
                tracing::debug!(action, problem, "retrying a plugin's call to a peer");
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        })
    }

    /// InitProducerId: fences earlier producers of the id and aborts their open transaction.
    pub(crate) fn init_producer_id(&self, transactional_id: &str, timeout_ms: i32, stop: &StopFlag) -> Result<(i64, i16), HostError> {
        let action = format!("initialising transactional id '{transactional_id}'");
        let request = InitProducerIdRequest::default()
            .with_transactional_id(Some(TransactionalId(str_bytes(transactional_id))))
            .with_transaction_timeout_ms(timeout_ms)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1);
        let response = self.call(Target::Coordinator, &request, INIT_PRODUCER_ID_VERSION, &action, stop, |r| r.error_code)?;
        checked(&action, response.error_code)?;
        Ok((response.producer_id.0, response.producer_epoch))
    }

    pub(crate) fn add_partition(&self, txn: &TxnIds<'_>, topic: &str, partition: i32) -> Result<(), HostError> {
        let action = format!("adding {topic}-{partition} to transaction '{}'", txn.transactional_id);
        let request = AddPartitionsToTxnRequest::default()
            .with_v3_and_below_transactional_id(TransactionalId(str_bytes(txn.transactional_id)))
            .with_v3_and_below_producer_id(ProducerId(txn.producer_id))
            .with_v3_and_below_producer_epoch(txn.epoch)
            .with_v3_and_below_topics(vec![
                AddPartitionsToTxnTopic::default().with_name(TopicName(str_bytes(topic))).with_partitions(vec![partition]),
            ]);
        let first_code = |r: &kafka_protocol::messages::AddPartitionsToTxnResponse| {
            r.results_by_topic_v3_and_below
                .iter()
                .flat_map(|t| t.results_by_partition.iter())
                .map(|p| p.partition_error_code)
                .find(|&c| c != 0)
                .unwrap_or(r.error_code)
        };
        let response = self.call(Target::Coordinator, &request, ADD_PARTITIONS_VERSION, &action, txn.stop, first_code)?;
        checked(&action, first_code(&response))
    }

    /// Appends one encoded transactional batch to the partition's leader with acks=all; returns its
    /// base offset.
    pub(crate) fn produce(&self, txn: &TxnIds<'_>, topic: &str, partition: i32, batch: Bytes) -> Result<i64, HostError> {
        let action = format!("writing to {topic}-{partition} in transaction '{}'", txn.transactional_id);
        let request = ProduceRequest::default()
            .with_transactional_id(Some(TransactionalId(str_bytes(txn.transactional_id))))
            .with_acks(-1)
            .with_timeout_ms(PRODUCE_TIMEOUT_MS)
            .with_topic_data(vec![
                TopicProduceData::default()
                    .with_name(TopicName(str_bytes(topic)))
                    .with_partition_data(vec![PartitionProduceData::default().with_index(partition).with_records(Some(batch))]),
            ]);
        let only = |r: &kafka_protocol::messages::ProduceResponse| {
            r.responses.iter().flat_map(|t| t.partition_responses.iter()).next().map(|p| (p.error_code, p.base_offset))
        };
        let response = self.call(Target::Leader(topic, partition), &request, PRODUCE_VERSION, &action, txn.stop, |r| {
            only(r).map_or(ResponseError::UnknownServerError.code(), |(c, _)| c)
        })?;
        let (code, base_offset) = only(&response).unwrap_or((ResponseError::UnknownServerError.code(), -1));
        checked(&action, code)?;
        Ok(base_offset)
    }

    pub(crate) fn add_offsets(&self, txn: &TxnIds<'_>, group: &str) -> Result<(), HostError> {
        let action = format!("adding group '{group}' to transaction '{}'", txn.transactional_id);
        let request = AddOffsetsToTxnRequest::default()
            .with_transactional_id(TransactionalId(str_bytes(txn.transactional_id)))
            .with_producer_id(ProducerId(txn.producer_id))
            .with_producer_epoch(txn.epoch)
            .with_group_id(GroupId(str_bytes(group)));
        let response = self.call(Target::Coordinator, &request, ADD_OFFSETS_VERSION, &action, txn.stop, |r| r.error_code)?;
        checked(&action, response.error_code)
    }

    pub(crate) fn txn_offset_commit(&self, txn: &TxnIds<'_>, group: &str, offsets: &[(String, i32, i64)]) -> Result<(), HostError> {
        let action = format!("sending offsets for group '{group}' in transaction '{}'", txn.transactional_id);
        let mut topics: Vec<TxnOffsetCommitRequestTopic> = Vec::new();
        for (topic, partition, offset) in offsets {
            let entry = TxnOffsetCommitRequestPartition::default().with_partition_index(*partition).with_committed_offset(*offset);
            match topics.iter_mut().find(|t| t.name.0.as_str() == topic) {
                Some(t) => t.partitions.push(entry),
                None => topics.push(
                    TxnOffsetCommitRequestTopic::default().with_name(TopicName(str_bytes(topic.as_str()))).with_partitions(vec![entry]),
                ),
            }
        }
        let request = TxnOffsetCommitRequest::default()
            .with_transactional_id(TransactionalId(str_bytes(txn.transactional_id)))
            .with_group_id(GroupId(str_bytes(group)))
            .with_producer_id(ProducerId(txn.producer_id))
            .with_producer_epoch(txn.epoch)
            .with_generation_id(-1)
            .with_topics(topics);
        let first_code = |r: &kafka_protocol::messages::TxnOffsetCommitResponse| {
            r.topics.iter().flat_map(|t| t.partitions.iter()).map(|p| p.error_code).find(|&c| c != 0).unwrap_or(0)
        };
        let response = self.call(Target::Coordinator, &request, TXN_OFFSET_COMMIT_VERSION, &action, txn.stop, first_code)?;
        checked(&action, first_code(&response))
    }

    pub(crate) fn end_txn(&self, txn: &TxnIds<'_>, commit: bool) -> Result<(), HostError> {
        let action = format!("{} transaction '{}'", if commit { "committing" } else { "aborting" }, txn.transactional_id);
        let request = EndTxnRequest::default()
            .with_transactional_id(TransactionalId(str_bytes(txn.transactional_id)))
            .with_producer_id(ProducerId(txn.producer_id))
            .with_producer_epoch(txn.epoch)
            .with_committed(commit);
        let response = self.call(Target::Coordinator, &request, END_TXN_VERSION, &action, txn.stop, |r| r.error_code)?;
        checked(&action, response.error_code)
    }

    /// The offset `group` committed for a partition, once no open transaction has one staged
    /// (`require_stable`: a runner must not start from a position its predecessor is about to move).
    pub(crate) fn committed_offset(&self, group: &str, topic: &str, partition: i32, stop: &StopFlag) -> Result<Option<i64>, HostError> {
        let action = format!("reading the committed offset of {topic}-{partition} for group '{group}'");
        let request =
            OffsetFetchRequest::default().with_group_id(GroupId(str_bytes(group))).with_require_stable(true).with_topics(Some(vec![
                OffsetFetchRequestTopic::default().with_name(TopicName(str_bytes(topic))).with_partition_indexes(vec![partition]),
            ]));
        let first = |r: &kafka_protocol::messages::OffsetFetchResponse| {
            let found = r.topics.iter().flat_map(|t| t.partitions.iter()).next();
            match found {
                Some(p) if p.error_code != 0 => (p.error_code, -1),
                Some(p) => (r.error_code, p.committed_offset),
                None => (r.error_code, -1),
            }
        };
        let response = self.call(Target::Coordinator, &request, OFFSET_FETCH_VERSION, &action, stop, |r| first(r).0)?;
        let (code, offset) = first(&response);
        checked(&action, code)?;
        Ok((offset >= 0).then_some(offset))
    }
}

/// One partition's answer to a read_committed Fetch from its leader.
pub(crate) struct Fetched {
    pub(crate) last_stable_offset: i64,
    /// (producer id, first offset) of the aborted transactions in the range, as Kafka sends them.
    pub(crate) aborted: Vec<(i64, i64)>,
    pub(crate) records: Bytes,
}

/// Why a remote read failed: the position is below the leader's log start, or anything else.
pub(crate) enum FetchError {
    OutOfRange { log_start: i64 },
    Failed(HostError),
}

impl Peers {
    /// A read_committed Fetch of one partition from its leader, as a consumer sends it (replica id
    /// -1): up to `max_bytes` of whole batches at `offset`, waiting up to `max_wait_ms` for some.
    /// Over the reader's own connections (`pool`, from [`Peers::fetch_connections`]).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn fetch(
        &self,
        pool: &PeerConnections,
        stop: &StopFlag,
        topic: &str,
        partition: i32,
        offset: i64,
        max_bytes: usize,
        max_wait_ms: i32,
    ) -> Result<Fetched, FetchError> {
        let action = format!("reading {topic}-{partition} from its leader");
        let max_bytes = max_bytes.min(i32::MAX as usize) as i32;
        let request = FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(max_wait_ms)
            .with_min_bytes(1)
            .with_max_bytes(max_bytes)
            .with_isolation_level(1)
            .with_session_id(0)
            .with_session_epoch(-1)
            .with_topics(vec![FetchTopic::default().with_topic(TopicName(str_bytes(topic))).with_partitions(vec![
                    FetchPartition::default()
                        .with_partition(partition)
                        .with_fetch_offset(offset)
                        .with_current_leader_epoch(-1)
                        .with_partition_max_bytes(max_bytes),
                ])]);
        let code = |r: &kafka_protocol::messages::FetchResponse| {
            if r.error_code != 0 {
                return r.error_code;
            }
            r.responses.iter().flat_map(|t| t.partitions.iter()).next().map_or(ResponseError::UnknownServerError.code(), |p| p.error_code)
        };
        let response = self
            .call_on(pool, Target::Leader(topic, partition), &request, FETCH_VERSION, &action, stop, code)
            .map_err(FetchError::Failed)?;
        let answered = code(&response);
        let Some(answer) = response.responses.into_iter().flat_map(|t| t.partitions.into_iter()).next() else {
            return Err(FetchError::Failed(HostError::Refused { action, reason: "the leader's answer names no partition".into() }));
        };
        if answered == ResponseError::OffsetOutOfRange.code() && offset < answer.log_start_offset {
            return Err(FetchError::OutOfRange { log_start: answer.log_start_offset });
        }
        checked(&action, answered).map_err(FetchError::Failed)?;
        Ok(Fetched {
            last_stable_offset: answer.last_stable_offset,
            aborted: answer.aborted_transactions.unwrap_or_default().iter().map(|a| (a.producer_id.0, a.first_offset)).collect(),
            records: answer.records.unwrap_or_default(),
        })
    }

    /// ListOffsets at the partition's leader: [`EARLIEST`], [`LATEST`] (the last stable offset when
    /// `read_committed`, else the high watermark) or the first offset at or after a timestamp (-1
    /// when there is none).
    pub(crate) fn list_offset(
        &self,
        topic: &str,
        partition: i32,
        timestamp: i64,
        read_committed: bool,
        stop: &StopFlag,
    ) -> Result<i64, HostError> {
        let action = format!("looking up an offset of {topic}-{partition} at its leader");
        let request = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_isolation_level(i8::from(read_committed))
            .with_topics(vec![ListOffsetsTopic::default().with_name(TopicName(str_bytes(topic))).with_partitions(vec![
                ListOffsetsPartition::default().with_partition_index(partition).with_timestamp(timestamp).with_current_leader_epoch(-1),
            ])]);
        let only = |r: &kafka_protocol::messages::ListOffsetsResponse| {
            r.topics
                .iter()
                .flat_map(|t| t.partitions.iter())
                .next()
                .map_or((ResponseError::UnknownServerError.code(), -1), |p| (p.error_code, p.offset))
        };
        let response = self.call(Target::Leader(topic, partition), &request, LIST_OFFSETS_VERSION, &action, stop, |r| only(r).0)?;
        let (code, offset) = only(&response);
        checked(&action, code)?;
        Ok(offset)
    }
}

/// The producer a transactional call speaks for.
pub(crate) struct TxnIds<'a> {
    pub(crate) transactional_id: &'a str,
    pub(crate) producer_id: i64,
    pub(crate) epoch: i16,
    /// The producer's task's stop signal.
    pub(crate) stop: &'a StopFlag,
}

fn checked(action: &str, code: i16) -> Result<(), HostError> {
    match ResponseError::try_from_code(code) {
        None => Ok(()),
        Some(error) => Err(super::producer::refused(action.to_string(), error)),
    }
}
