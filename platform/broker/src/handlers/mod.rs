//! One module per Kafka API group. Each handler authenticates nothing yet (no SASL), checks bounds,
//! delegates to the broker, and builds the response for the request's version.
//!
//! Handlers that touch files call them through `tokio::task::block_in_place` (appends and reads are
//! page-cache copies measured in microseconds) and hand waiting (fsync, long polls) back as a
//! [`Reply::Deferred`] future so the connection keeps reading.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use kafka_protocol::messages::{RequestKind, ResponseKind};
use kafka_protocol::protocol::StrBytes;
use sluice_protocol::DecodedRequest;

use crate::broker::Broker;

pub mod api_versions;
pub mod configs;
pub mod fetch;
pub mod groups;
pub mod list_offsets;
pub mod metadata;
pub mod produce;
pub mod topics;
pub mod txn;

/// The connection a request arrived on.
pub struct ConnCtx {
    pub local_addr: SocketAddr,
    pub peer_addr: SocketAddr,
}

pub type ResponseFuture = Pin<Box<dyn Future<Output = ResponseKind> + Send>>;

// `Ready` is by far the common case; boxing it to shrink the enum would add an allocation per
// response on the hot path.
#[allow(clippy::large_enum_variant)]
pub enum Reply {
    Ready(ResponseKind),
    /// Completed by the connection's writer, in request order.
    Deferred(ResponseFuture),
    /// Produce with acks=0: Kafka sends nothing back.
    NoResponse,
}

pub async fn dispatch(broker: &Arc<Broker>, ctx: &ConnCtx, request: DecodedRequest) -> Reply {
    let version = request.version;
    let client_id = request.header.client_id.as_ref().map(|c| c.to_string()).unwrap_or_default();
    let ready = |r: ResponseKind| Reply::Ready(r);
    match request.body {
        RequestKind::ApiVersions(_) => ready(api_versions::handle().into()),
        RequestKind::Metadata(r) => ready(metadata::metadata(broker, ctx, r, version).await.into()),
        RequestKind::DescribeCluster(r) => ready(metadata::describe_cluster(broker, ctx, r).into()),
        RequestKind::FindCoordinator(r) => ready(metadata::find_coordinator(broker, ctx, r, version).into()),
        RequestKind::Produce(r) => produce::handle(broker, r, version).await,
        RequestKind::Fetch(r) => fetch::handle(broker, r, version).await,
        RequestKind::ListOffsets(r) => ready(list_offsets::list_offsets(broker, r, version).into()),
        RequestKind::DeleteRecords(r) => ready(list_offsets::delete_records(broker, r).into()),
        RequestKind::InitProducerId(r) => ready(produce::init_producer_id(broker, r).into()),
        RequestKind::CreateTopics(r) => ready(topics::create_topics(broker, r, version).into()),
        RequestKind::DeleteTopics(r) => ready(topics::delete_topics(broker, r, version).into()),
        RequestKind::CreatePartitions(r) => ready(topics::create_partitions(broker, r).into()),
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
        RequestKind::AddPartitionsToTxn(r) => ready(txn::add_partitions_to_txn(broker, r).into()),
        RequestKind::AddOffsetsToTxn(r) => ready(txn::add_offsets_to_txn(broker, r).into()),
        RequestKind::TxnOffsetCommit(r) => ready(txn::txn_offset_commit(broker, r).into()),
        RequestKind::EndTxn(r) => ready(txn::end_txn(broker, r).into()),
        RequestKind::DescribeTransactions(r) => ready(txn::describe_transactions(broker, r).into()),
        RequestKind::ListTransactions(r) => ready(txn::list_transactions(broker, r).into()),
        // decode_request only yields the APIs in SUPPORTED_APIS, all matched above.
        other => {
            tracing::error!(request = ?std::mem::discriminant(&other), "request kind without a handler");
            Reply::NoResponse
        }
    }
}

pub fn str_bytes(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}

/// Runs blocking file work on this worker thread, moving other tasks off it first.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}
