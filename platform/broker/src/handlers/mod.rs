//! One module per Kafka API group. Each handler authenticates nothing yet (no SASL), checks bounds,
//! delegates to the broker, and builds the response for the request's version.
//!
//! Plain appends and Fetch reads (page-cache copies measured in microseconds) run on the worker
//! thread through `Broker::file_calls`, which moves them off it when they may block (a segment roll,
//! a log held by a writer) or while the kernel makes them slow; other file work (transactional
//! appends, topic creation, offset commits, anything that may fsync) goes through [`blocking`]. Waiting
//! (fsync before ack, long polls) is handed back as a [`Reply::Deferred`] future so the connection
//! keeps reading.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use kafka_protocol::messages::{RequestKind, ResponseKind};
use kafka_protocol::protocol::StrBytes;
use sluice_protocol::DecodedRequest;

use crate::broker::Broker;

pub(crate) mod api_versions;
pub(crate) mod configs;
pub(crate) mod fetch;
pub(crate) mod groups;
pub(crate) mod list_offsets;
pub(crate) mod metadata;
pub(crate) mod produce;
pub(crate) mod topics;
pub(crate) mod txn;

/// The connection a request arrived on.
pub(crate) struct ConnCtx {
    pub local_addr: SocketAddr,
    pub peer_addr: SocketAddr,
}

/// A response as the connection's writer gets it.
// `Message` is by far the common case; boxing it to shrink the enum would add an allocation per
// response on the hot path.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Response {
    Message(ResponseKind),
    /// A Fetch response whose record sets are file slices, sent with `sendfile` (see `fetch`).
    Fetch(fetch::FetchReply),
}

/// A deferred reply.
pub(crate) type ResponseFuture = Pin<Box<dyn Future<Output = Response> + Send>>;

#[allow(clippy::large_enum_variant)]
pub(crate) enum Reply {
    Ready(ResponseKind),
    Fetch(fetch::FetchReply),
    /// Completed by the connection's writer, in request order.
    Deferred(ResponseFuture),
    /// Produce with acks=0: Kafka sends nothing back.
    NoResponse,
}

pub(crate) async fn dispatch(broker: &Arc<Broker>, ctx: &ConnCtx, request: DecodedRequest) -> Reply {
    let version = request.version;
    let client_id = request.header.client_id.as_ref().map(|c| c.to_string()).unwrap_or_default();
    let ready = |r: ResponseKind| Reply::Ready(r);
    let peer = crate::host::is_peer(&client_id);
    match request.body {
        RequestKind::ApiVersions(_) => ready(api_versions::handle().into()),
        RequestKind::Metadata(r) => ready(metadata::metadata(broker, ctx, r, version).await.into()),
        RequestKind::DescribeCluster(r) => ready(metadata::describe_cluster(broker, ctx, r).into()),
        RequestKind::FindCoordinator(r) => ready(metadata::find_coordinator(broker, ctx, r, version).into()),
        RequestKind::Produce(r) => produce::handle(broker, r, version, peer).await,
        RequestKind::Fetch(r) => fetch::handle(broker, r, version).await,
        RequestKind::ListOffsets(r) => ready(list_offsets::list_offsets(broker, r, version).into()),
        RequestKind::OffsetForLeaderEpoch(r) => ready(crate::replication::offset_for_leader_epoch(broker, r).into()),
        RequestKind::DeleteRecords(r) => ready(list_offsets::delete_records(broker, r).await.into()),
        RequestKind::InitProducerId(r) => ready(produce::init_producer_id(broker, r, peer).into()),
        RequestKind::CreateTopics(r) => ready(topics::create_topics(broker, r, version).into()),
        RequestKind::DeleteTopics(r) => ready(topics::delete_topics(broker, r, version).into()),
        RequestKind::CreatePartitions(r) => ready(topics::create_partitions(broker, r).into()),
        RequestKind::ElectLeaders(r) => ready(topics::elect_leaders(broker, r, version).into()),
        RequestKind::AlterPartitionReassignments(r) => ready(topics::alter_partition_reassignments(broker, r, version).into()),
        RequestKind::ListPartitionReassignments(r) => ready(topics::list_partition_reassignments(broker, r).into()),
        RequestKind::DescribeConfigs(r) => ready(configs::describe_configs(broker, r, version).into()),
        RequestKind::AlterConfigs(r) => ready(configs::alter_configs(broker, r).into()),
        RequestKind::IncrementalAlterConfigs(r) => ready(configs::incremental_alter_configs(broker, r).into()),
        RequestKind::JoinGroup(r) => ready(groups::join_group(broker, ctx, r, version, client_id).await.into()),
        RequestKind::SyncGroup(r) => ready(groups::sync_group(broker, r).await.into()),
        RequestKind::Heartbeat(r) => ready(groups::heartbeat(broker, r).into()),
        RequestKind::LeaveGroup(r) => ready(groups::leave_group(broker, r, version).into()),
        RequestKind::ListGroups(r) => ready(groups::list_groups(broker, r).into()),
        RequestKind::DescribeGroups(r) => ready(groups::describe_groups(broker, r).into()),
        RequestKind::DeleteGroups(r) => ready(groups::delete_groups(broker, r).into()),
        RequestKind::OffsetCommit(r) => ready(groups::offset_commit(broker, r).into()),
        RequestKind::OffsetFetch(r) => ready(groups::offset_fetch(broker, r, version).into()),
        RequestKind::OffsetDelete(r) => ready(groups::offset_delete(broker, r).into()),
        RequestKind::AddPartitionsToTxn(r) => ready(txn::add_partitions_to_txn(broker, r, peer).into()),
        RequestKind::AddOffsetsToTxn(r) => ready(txn::add_offsets_to_txn(broker, r, peer).into()),
        RequestKind::TxnOffsetCommit(r) => ready(txn::txn_offset_commit(broker, r, peer).into()),
        RequestKind::EndTxn(r) => ready(txn::end_txn(broker, r, peer).into()),
        RequestKind::WriteTxnMarkers(r) => ready(txn::write_txn_markers(broker, r).await.into()),
        RequestKind::DescribeTransactions(r) => ready(txn::describe_transactions(broker, r).into()),
        RequestKind::ListTransactions(r) => ready(txn::list_transactions(broker, r).into()),
        // decode_request only yields the APIs in SUPPORTED_APIS, all matched above.
        other => {
            tracing::error!(request = ?std::mem::discriminant(&other), "request kind without a handler");
            Reply::NoResponse
        }
    }
}

pub(crate) fn str_bytes(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}

/// The per-topic, per-partition walk of a request into a response: `partition` answers one
/// partition of a topic, `topic` wraps a topic's answers. Request and response types differ per API;
/// the walk is the same.
pub(crate) fn map_partitions<T, P, R, TR>(
    topics: &[T],
    partitions_of: impl Fn(&T) -> &[P],
    mut partition: impl FnMut(&T, &P) -> R,
    topic: impl Fn(&T, Vec<R>) -> TR,
) -> Vec<TR> {
    topics
        .iter()
        .map(|t| {
            let partitions = partitions_of(t).iter().map(|p| partition(t, p)).collect();
            topic(t, partitions)
        })
        .collect()
}

/// [`map_partitions`] for a request whose entries were already answered with one error code each,
/// in request order.
pub(crate) fn per_partition<T, P, R, TR>(
    topics: &[T],
    codes: Vec<i16>,
    partitions_of: impl Fn(&T) -> &[P],
    partition: impl Fn(&P, i16) -> R,
    topic: impl Fn(&T, Vec<R>) -> TR,
) -> Vec<TR> {
    let mut codes = codes.into_iter();
    map_partitions(topics, partitions_of, |_, p| partition(p, codes.next().unwrap_or_default()), topic)
}

/// Runs blocking file work on this worker thread, moving other tasks off it first.
pub(crate) fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}
