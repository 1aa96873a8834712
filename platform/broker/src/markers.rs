//! Transaction markers across brokers: Kafka's WriteTxnMarkers, both ways.
//!
//! The transaction coordinator (one node of a cluster, see `Broker::coordinator_node`) writes the
//! markers of the partitions it leads itself. For every other partition of a transaction it asks the
//! partition's leader, as the quorum names it, with WriteTxnMarkers ([`QuorumMarkers`]); that leader
//! appends the marker and answers once it is durable as an acks=all record would be (the handler is
//! `handlers::txn::write_txn_markers`). A leader that is moving, unreachable or short of in-sync
//! replicas is asked again for up to [`MARKER_WAIT`]; after that the transaction stays in its Prepare
//! state and the coordinator's background tick tries again, so a marker is written exactly when the
//! partition can take it, and never on a copy that is not the leader's.
//!
//! A transactional produce to a partition on a broker that is not the coordinator is appended without
//! asking the coordinator (as Kafka did before KIP-890): the coordinator checked the partition into
//! the transaction, and the partition's producer state refuses a fenced (older) epoch. The price is
//! Kafka's "hanging transaction": a batch that arrives after its transaction's marker (a client
//! that writes after EndTxn, or a retry from before it) opens a transaction the coordinator never
//! hears of, and the partition's last stable offset would stay behind it forever. So every broker
//! that is not the coordinator watches the open transactions of the partitions it leads
//! ([`HangingWatch`]); one still open `transaction.max.timeout.ms` + [`HANGING_GRACE_CHECKS`] timeout
//! checks after it was
//! first seen (longer than the coordinator lets any transaction run) is looked up at the
//! coordinator (ListTransactions by producer id, then DescribeTransactions), and aborted here unless
//! the coordinator has it ongoing with this partition. The coordinator's own partitions cannot hang:
//! there a transactional append holds the transaction's lock.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kafka_protocol::ResponseError;
use kafka_protocol::messages::write_txn_markers_request::{WritableTxnMarker, WritableTxnMarkerTopic};
use kafka_protocol::messages::{
    DescribeTransactionsRequest, ListTransactionsRequest, ProducerId, TopicName, TransactionalId, WriteTxnMarkersRequest,
};
use sluice_client::{Connection, ConnectionOptions};
use sluice_cluster::Controller;
use sluice_storage::{ControlType, TxnMarker};

use crate::broker::Broker;
use crate::error::BrokerError;
use crate::handlers::str_bytes;
use crate::transactions::{MarkerError, RemoteMarkers, TxnStatus};

/// The WriteTxnMarkers version brokers send (the only one the codec has).
pub(crate) const MARKERS_VERSION: i16 = 1;
/// How long one completion keeps asking the leaders of its partitions before it leaves the rest to
/// the coordinator's background retry (EndTxn is answered with the cause meanwhile).
const MARKER_WAIT: Duration = Duration::from_secs(10);
/// Pause between rounds of asking, while leaders move.
const MARKER_RETRY: Duration = Duration::from_millis(100);
/// One WriteTxnMarkers call may take as long as the leader's replicas need to confirm it (the
/// handler waits for them up to `DURABILITY_WAIT_DEFAULT`); past this the connection is dropped.
const CALL_TIMEOUT: Duration = Duration::from_secs(35);

/// How long past `transaction.max.timeout.ms` a transaction may stay open on a partition whose
/// leader is not its coordinator before that leader asks the coordinator about it, in runs of the
/// coordinator's timeout check (`transaction.abort.timed.out.transaction.cleanup.interval.ms`, 10 s
/// by default): time for that check to abort the transaction and for its markers to arrive.
const HANGING_GRACE_CHECKS: u32 = 6;
/// The versions of the coordinator's APIs the hanging-transaction check sends.
const LIST_TRANSACTIONS_VERSION: i16 = 1;
const DESCRIBE_TRANSACTIONS_VERSION: i16 = 0;
/// Producer ids asked about in one ListTransactions; more wait for the next check.
const HANGING_CHECK_PRODUCERS_MAX: usize = 1000;

/// The coordinator's way to the leaders of partitions it does not lead.
pub(crate) struct QuorumMarkers {
    controller: Arc<Controller>,
    runtime: tokio::runtime::Handle,
    /// One connection per leader address.
    connections: crate::cluster::PeerConnections,
}

impl QuorumMarkers {
    /// Called from the runtime the broker serves on.
    pub(crate) fn new(node: i32, controller: Arc<Controller>) -> QuorumMarkers {
        QuorumMarkers {
            controller,
            runtime: tokio::runtime::Handle::current(),
            connections: crate::cluster::PeerConnections::new(format!("sluice-txn-coordinator-{node}")),
        }
    }

    /// Sends the marker for `partitions` (indexes into `all`) to one leader; one error code each.
    async fn call(&self, addr: &str, marker: &TxnMarker, all: &[(String, i32)], partitions: &[usize]) -> Result<Vec<i16>, String> {
        let mut topics: Vec<WritableTxnMarkerTopic> = Vec::new();
        for &i in partitions {
            let (topic, index) = &all[i];
            match topics.last_mut() {
                Some(last) if last.name.0.as_str() == topic => last.partition_indexes.push(*index),
                _ => topics.push(
                    WritableTxnMarkerTopic::default().with_name(TopicName(str_bytes(topic.as_str()))).with_partition_indexes(vec![*index]),
                ),
            }
        }
        let request = WriteTxnMarkersRequest::default().with_markers(vec![
            WritableTxnMarker::default()
                .with_producer_id(ProducerId(marker.producer_id))
                .with_producer_epoch(marker.producer_epoch)
                .with_transaction_result(marker.control == ControlType::Commit)
                .with_coordinator_epoch(marker.coordinator_epoch)
                .with_topics(topics),
        ]);
        let connection = self.connections.get(addr).await?;
        let response = match tokio::time::timeout(CALL_TIMEOUT, connection.call(&request, MARKERS_VERSION)).await {
            Ok(Ok(response)) => response,
            Ok(Err(error)) => {
                self.connections.forget(addr);
                return Err(format!("{addr}: {error}"));
            }
            Err(_) => {
                self.connections.forget(addr);
                return Err(format!("{addr} did not answer within {CALL_TIMEOUT:?}"));
            }
        };
        // Answers are matched by name and index, not position: a leader owes us no order.
        let mut codes: HashMap<(&str, i32), i16> = HashMap::new();
        for result in &response.markers {
            for topic in &result.topics {
                for p in &topic.partitions {
                    codes.insert((topic.name.0.as_str(), p.partition_index), p.error_code);
                }
            }
        }
        Ok(partitions
            .iter()
            .map(|&i| codes.get(&(all[i].0.as_str(), all[i].1)).copied().unwrap_or(ResponseError::UnknownServerError.code()))
            .collect())
    }

    async fn write_all(&self, marker: &TxnMarker, partitions: &[(String, i32)]) -> Vec<Result<(), MarkerError>> {
        let mut outcomes: Vec<Option<Result<(), MarkerError>>> = vec![None; partitions.len()];
        let mut problems: Vec<String> = vec![String::new(); partitions.len()];
        let deadline = Instant::now() + MARKER_WAIT;
        loop {
            // Each pending partition's leader as the quorum names it now.
            let mut by_leader: BTreeMap<String, Vec<usize>> = BTreeMap::new();
            self.controller.with_metadata(|m, _| {
                for (i, (topic, index)) in partitions.iter().enumerate() {
                    if outcomes[i].is_some() {
                        continue;
                    }
                    let state = m.topics.get(topic).and_then(|t| usize::try_from(*index).ok().and_then(|p| t.partitions.get(p)));
                    let Some(state) = state else {
                        outcomes[i] = Some(Err(MarkerError::Gone));
                        continue;
                    };
                    match m.brokers.get(&state.leader).filter(|b| !b.fenced) {
                        Some(leader) => {
                            by_leader.entry(format!("{}:{}", leader.registration.host, leader.registration.port)).or_default().push(i)
                        }
                        None => problems[i] = "the partition has no leader".into(),
                    }
                }
            });
            let calls = by_leader.into_iter().map(|(addr, indices)| async move {
                let result = self.call(&addr, marker, partitions, &indices).await;
                (indices, result)
            });
            for (indices, result) in futures::future::join_all(calls).await {
                match result {
                    Ok(codes) => {
                        for (&i, code) in indices.iter().zip(codes) {
                            match code {
                                0 => outcomes[i] = Some(Ok(())),
                                c if c == ResponseError::InvalidProducerEpoch.code() => outcomes[i] = Some(Err(MarkerError::StaleEpoch)),
                                c => problems[i] = format!("the leader answered {}", sluice_client::codes::error_label(c)),
                            }
                        }
                    }
                    Err(why) => indices.into_iter().for_each(|i| problems[i] = why.clone()),
                }
            }
            if outcomes.iter().all(Option::is_some) || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(MARKER_RETRY).await;
        }
        outcomes.into_iter().zip(problems).map(|(outcome, why)| outcome.unwrap_or(Err(MarkerError::NotWritten(why)))).collect()
    }
}

impl RemoteMarkers for QuorumMarkers {
    fn write(&self, marker: &TxnMarker, partitions: &[(String, i32)]) -> Vec<Result<(), MarkerError>> {
        crate::cluster::wait(&self.runtime, self.write_all(marker, partitions))
    }
}

/// An open transaction on a partition this broker leads: (topic, partition, producer id, first offset).
type OpenTxn = (String, i32, i64, i64);

/// What the hanging-transaction check remembers between runs: when each open transaction of the
/// partitions this broker leads was first seen open (lost at a restart, which only delays a check).
#[derive(Default)]
pub(crate) struct HangingWatch {
    first_seen: HashMap<OpenTxn, Instant>,
}

/// One run of the check (on the broker's maintenance tick, on every broker of a cluster: the
/// partitions one leads may hold transactions of the clients' coordinator, wherever it is, and of
/// its own plugins' coordinator). A single node checks at start-up instead.
pub(crate) async fn abort_hanging_elsewhere(broker: &Arc<Broker>, watch: &mut HangingWatch) {
    if !broker.is_clustered() {
        watch.first_seen.clear();
        return;
    }
    let Some(controller) = broker.controller() else { return };
    let now = Instant::now();
    let mut open: Vec<OpenTxn> = Vec::new();
    for topic in broker.topics().into_iter().filter(|t| t.mirror().is_none()) {
        for partition in topic.partitions.read().iter().filter(|p| p.is_leader()) {
            for (producer, first_offset) in partition.open_transaction_starts() {
                open.push((topic.name.as_str().to_string(), partition.index, producer, first_offset));
            }
        }
    }
    watch.first_seen.retain(|key, _| open.contains(key));
    for key in &open {
        watch.first_seen.entry(key.clone()).or_insert(now);
    }
    let limit = Duration::from_millis(broker.config().transaction_max_timeout_ms().max(0) as u64)
        + Duration::from_millis(broker.config().transaction_expiry_check_ms()) * HANGING_GRACE_CHECKS;
    let mut overdue: Vec<OpenTxn> =
        watch.first_seen.iter().filter(|(_, seen)| now.duration_since(**seen) > limit).map(|(k, _)| k.clone()).collect();
    if overdue.is_empty() {
        return;
    }
    overdue.sort();
    // What the coordinators have ongoing: this broker's plugins' and the clients' (asked over the
    // network unless they are loaded here).
    let mut ongoing: HashMap<i64, (i16, Vec<(String, i32)>)> = HashMap::new();
    let mut add = |open: crate::transactions::OpenByProducer| {
        for (producer, (epoch, partitions)) in open {
            ongoing.insert(producer, (epoch, partitions.into_iter().collect()));
        }
    };
    add(broker.local_coordinators().transactions.ongoing());
    match broker.coordinators() {
        Ok(coordinators) => add(coordinators.transactions.ongoing()),
        Err(_) => {
            let Some(coordinator) = broker.coordinator_node() else {
                tracing::debug!("the cluster has no transaction coordinator now; hanging transactions are checked later");
                return;
            };
            let address = controller.with_metadata(|m, _| {
                m.brokers.get(&coordinator).filter(|b| !b.fenced).map(|b| format!("{}:{}", b.registration.host, b.registration.port))
            });
            let Some(address) = address else {
                tracing::debug!(coordinator, "the transaction coordinator is not live; hanging transactions are checked later");
                return;
            };
            match ongoing_at_coordinator(broker.node_id(), &address, &overdue).await {
                Ok(remote) => ongoing.extend(remote),
                Err(error) => {
                    tracing::warn!(coordinator, %error, "cannot ask the transaction coordinator about transactions open too long; will retry");
                    return;
                }
            }
        }
    }
    for (topic, index, producer_id, first_offset) in overdue {
        if ongoing.get(&producer_id).is_some_and(|(_, parts)| parts.contains(&(topic.clone(), index))) {
            continue;
        }
        let Ok(partition) = broker.partition(&topic, index) else { continue };
        let epoch = partition.open_transaction_epoch(producer_id).max(ongoing.get(&producer_id).map_or(0, |(e, _)| *e));
        let marker = TxnMarker { producer_id, producer_epoch: epoch, control: ControlType::Abort, coordinator_epoch: 0 };
        tracing::warn!(
            topic,
            partition = index,
            producer_id,
            first_offset,
            "aborting a hanging transaction: open longer than transaction.max.timeout.ms and its coordinator does not have it ongoing here"
        );
        let min_insync = broker.topic(&topic).map_or(1, |t| t.config.read().min_insync_replicas(broker.config()));
        let written = {
            let partition = Arc::clone(&partition);
            let now = crate::now_ms();
            tokio::task::spawn_blocking(move || partition.write_marker(&marker, min_insync, now)).await
        };
        let outcome = match written {
            Ok(Ok((end, epoch))) => partition.wait_marker(end, epoch, min_insync).await,
            Ok(Err(error)) => Err(error),
            Err(error) => Err(BrokerError::Timeout(error.to_string())),
        };
        match outcome {
            Ok(()) => {
                watch.first_seen.remove(&(topic, index, producer_id, first_offset));
            }
            Err(error) => {
                tracing::warn!(topic, partition = index, producer_id, %error, "could not abort a hanging transaction; will retry")
            }
        }
    }
}

/// Producer id → (epoch, partitions) of each of `overdue`'s producers whose transaction the
/// coordinator has ongoing (or deciding: Prepare states, whose markers are on their way).
async fn ongoing_at_coordinator(node: i32, address: &str, overdue: &[OpenTxn]) -> Result<HashMap<i64, (i16, Vec<(String, i32)>)>, String> {
    let options = ConnectionOptions { client_id: format!("sluice-hanging-check-{node}"), ..ConnectionOptions::default() };
    let connection = Connection::open(address, &options).await.map_err(|e| format!("{address}: {e}"))?;
    let mut producers: Vec<ProducerId> = overdue.iter().map(|(_, _, p, _)| ProducerId(*p)).collect();
    producers.sort_by_key(|p| p.0);
    producers.dedup();
    producers.truncate(HANGING_CHECK_PRODUCERS_MAX);
    let listed = tokio::time::timeout(
        CALL_TIMEOUT,
        connection.call(
            &ListTransactionsRequest::default().with_producer_id_filters(producers).with_duration_filter(-1),
            LIST_TRANSACTIONS_VERSION,
        ),
    )
    .await
    .map_err(|_| format!("{address} did not answer ListTransactions"))?
    .map_err(|e| format!("ListTransactions: {e}"))?;
    let ids: Vec<TransactionalId> = listed.transaction_states.iter().map(|t| t.transactional_id.clone()).collect();
    let mut ongoing = HashMap::new();
    if ids.is_empty() {
        return Ok(ongoing);
    }
    let described = tokio::time::timeout(
        CALL_TIMEOUT,
        connection.call(&DescribeTransactionsRequest::default().with_transactional_ids(ids), DESCRIBE_TRANSACTIONS_VERSION),
    )
    .await
    .map_err(|_| format!("{address} did not answer DescribeTransactions"))?
    .map_err(|e| format!("DescribeTransactions: {e}"))?;
    let live = [TxnStatus::Ongoing, TxnStatus::PrepareCommit, TxnStatus::PrepareAbort].map(TxnStatus::name);
    for state in described.transaction_states {
        if state.error_code != 0 || !live.contains(&state.transaction_state.as_str()) {
            continue;
        }
        let partitions = state.topics.iter().flat_map(|t| t.partitions.iter().map(move |p| (t.topic.0.as_str().to_string(), *p))).collect();
        ongoing.insert(state.producer_id.0, (state.producer_epoch, partitions));
    }
    Ok(ongoing)
}
