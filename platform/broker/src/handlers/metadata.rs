//! Metadata, DescribeCluster and FindCoordinator: where things are. The brokers and each partition's
//! leader, replicas and ISR come from the controller quorum's state as this broker applied it. This
//! broker itself is always listed at the address the client reached it on unless
//! `advertised.listeners` says otherwise (so `localhost`, `127.0.0.1` and a container's address all
//! work without configuration); other brokers at the address they registered.

use std::sync::Arc;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::metadata_response::{MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic};
use kafka_protocol::messages::{
    BrokerId, DescribeClusterRequest, DescribeClusterResponse, FindCoordinatorRequest, FindCoordinatorResponse, MetadataRequest,
    MetadataResponse, TopicName,
};
use sluice_cluster::{Metadata, NO_LEADER};
use uuid::Uuid;

use super::{ConnCtx, blocking, str_bytes};
use crate::broker::Broker;
use crate::topic::Topic;

/// Topics one Metadata request may name; the rest of the request is refused as invalid.
pub(crate) const METADATA_TOPICS_MAX: usize = 100_000;

pub(crate) fn advertised(broker: &Broker, ctx: &ConnCtx) -> (String, i32) {
    broker.config().advertised_listener().unwrap_or_else(|| (ctx.local_addr.ip().to_string(), ctx.local_addr.port() as i32))
}

/// A broker as clients see it: id, address, rack.
struct Node {
    id: i32,
    host: String,
    port: i32,
    rack: Option<String>,
}

/// Which brokers a response names besides this one.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Listing {
    /// Live brokers only (DescribeCluster, FindCoordinator).
    Live,
    /// Live brokers and fenced ones that still hold replicas (Metadata: see
    /// [`Metadata::listed_brokers`]).
    WithOfflineReplicas,
}

/// The brokers clients may use: this one (at the address the client reached it on) and, in a
/// cluster, the other brokers the quorum knows, as `listing` says.
fn nodes(broker: &Broker, ctx: &ConnCtx, cluster: Option<&Metadata>, listing: Listing) -> Vec<Node> {
    let (host, port) = advertised(broker, ctx);
    let mut nodes = vec![Node { id: broker.node_id(), host, port, rack: None }];
    if let Some(cluster) = cluster {
        let others: Vec<&sluice_cluster::BrokerState> = match listing {
            Listing::Live => cluster.live_brokers().collect(),
            Listing::WithOfflineReplicas => cluster.listed_brokers().collect(),
        };
        for state in others.into_iter().filter(|b| b.registration.broker_id != broker.node_id()) {
            let r = &state.registration;
            nodes.push(Node { id: r.broker_id, host: r.host.clone(), port: i32::from(r.port), rack: r.rack.clone() });
        }
    }
    nodes
}

/// The id clients see as the controller: the quorum's leader when it is a live broker, else this
/// broker (any broker takes admin requests and forwards them to the quorum).
fn controller_id(broker: &Broker, cluster: Option<&Metadata>) -> BrokerId {
    let leader = broker.controller().and_then(|c| c.leader()).map(|id| id as i32);
    match (leader, cluster) {
        (Some(id), Some(cluster)) if cluster.live_brokers().any(|b| b.registration.broker_id == id) => BrokerId(id),
        _ => BrokerId(broker.node_id()),
    }
}

fn topic_entry(broker: &Broker, topic: &Topic, cluster: Option<&Metadata>) -> MetadataResponseTopic {
    let node = BrokerId(broker.node_id());
    let placed = cluster.and_then(|c| c.topics.get(topic.name.as_str()).filter(|t| t.id == topic.id.as_u128()).map(|t| (c, t)));
    let partitions = match placed {
        Some((cluster, state)) => state
            .partitions
            .iter()
            .enumerate()
            .map(|(index, p)| {
                let ids = |list: &[i32]| list.iter().map(|&id| BrokerId(id)).collect::<Vec<_>>();
                let offline: Vec<i32> =
                    p.replicas.iter().copied().filter(|r| !cluster.live_brokers().any(|b| b.registration.broker_id == *r)).collect();
                let entry = MetadataResponsePartition::default()
                    .with_partition_index(index as i32)
                    .with_leader_id(BrokerId(p.leader))
                    .with_leader_epoch(p.leader_epoch)
                    .with_replica_nodes(ids(&p.replicas))
                    .with_isr_nodes(ids(&p.isr))
                    .with_offline_replicas(ids(&offline));
                if p.leader == NO_LEADER { entry.with_error_code(ResponseError::LeaderNotAvailable.code()) } else { entry }
            })
            .collect(),
        // A single node (or a topic this broker holds from before the quorum, until it is handed over).
        None => topic
            .partitions
            .read()
            .iter()
            .map(|p| {
                MetadataResponsePartition::default()
                    .with_partition_index(p.index)
                    .with_leader_id(node)
                    .with_leader_epoch(p.leader_epoch())
                    .with_replica_nodes(vec![node])
                    .with_isr_nodes(vec![node])
            })
            .collect(),
    };
    MetadataResponseTopic::default()
        .with_name(Some(TopicName(str_bytes(topic.name.as_str()))))
        .with_topic_id(topic.id)
        .with_is_internal(crate::topic::is_internal_topic(topic.name.as_str()))
        .with_partitions(partitions)
}

fn error_entry(name: Option<String>, id: Uuid, error: ResponseError) -> MetadataResponseTopic {
    MetadataResponseTopic::default().with_name(name.map(|n| TopicName(str_bytes(n)))).with_topic_id(id).with_error_code(error.code())
}

/// Runs `build` over the quorum's metadata (read in place), or over none on a broker without one.
fn with_cluster<R>(broker: &Broker, build: impl FnOnce(Option<&Metadata>) -> R) -> R {
    match broker.controller() {
        Some(controller) => controller.with_metadata(|m, _| build(Some(m))),
        None => build(None),
    }
}

pub(crate) async fn metadata(broker: &Arc<Broker>, ctx: &ConnCtx, request: MetadataRequest, version: i16) -> MetadataResponse {
    // v0 asks for all topics with an empty list; v1+ with null.
    let all_topics = match &request.topics {
        None => true,
        Some(topics) => version == 0 && topics.is_empty(),
    };
    // v0-3 have no allow_auto_topic_creation field and always allowed it.
    let allow_auto_create = version < 4 || request.allow_auto_topic_creation;
    // Found (or auto-created) first: creation waits for the controller, which must not happen while
    // the quorum's state is read below.
    let found: Vec<Result<Arc<Topic>, MetadataResponseTopic>> = if all_topics {
        broker.topics().into_iter().map(Ok).collect()
    } else {
        let requested = request.topics.unwrap_or_default();
        if requested.len() > METADATA_TOPICS_MAX {
            return MetadataResponse::default().with_error_code(ResponseError::InvalidRequest.code());
        }
        requested
            .into_iter()
            .map(|t| match t.name {
                Some(name) => {
                    let name = name.0.to_string();
                    let found = if allow_auto_create {
                        blocking(|| broker.topic_or_auto_create(&name))
                    } else {
                        broker.topic(&name).ok_or(crate::error::BrokerError::UnknownTopic(name.clone()))
                    };
                    found.map_err(|error| error_entry(Some(name), Uuid::nil(), error.kafka()))
                }
                None => broker
                    .topics()
                    .into_iter()
                    .find(|topic| topic.id == t.topic_id)
                    .ok_or_else(|| error_entry(None, t.topic_id, ResponseError::UnknownTopicId)),
            })
            .collect()
    };
    with_cluster(broker, |cluster| {
        let topics = found.into_iter().map(|f| f.map_or_else(|entry| entry, |topic| topic_entry(broker, &topic, cluster))).collect();
        let brokers = nodes(broker, ctx, cluster, Listing::WithOfflineReplicas)
            .into_iter()
            .map(|n| {
                MetadataResponseBroker::default()
                    .with_node_id(BrokerId(n.id))
                    .with_host(str_bytes(n.host))
                    .with_port(n.port)
                    .with_rack(n.rack.map(str_bytes))
            })
            .collect();
        MetadataResponse::default()
            .with_brokers(brokers)
            .with_cluster_id(Some(str_bytes(broker.cluster_id().to_string())))
            .with_controller_id(controller_id(broker, cluster))
            .with_topics(topics)
    })
}

pub(crate) fn describe_cluster(broker: &Broker, ctx: &ConnCtx, _request: DescribeClusterRequest) -> DescribeClusterResponse {
    with_cluster(broker, |cluster| {
        let brokers = nodes(broker, ctx, cluster, Listing::Live)
            .into_iter()
            .map(|n| {
                DescribeClusterBroker::default()
                    .with_broker_id(BrokerId(n.id))
                    .with_host(str_bytes(n.host))
                    .with_port(n.port)
                    .with_rack(n.rack.map(str_bytes))
            })
            .collect();
        DescribeClusterResponse::default()
            .with_cluster_id(str_bytes(broker.cluster_id().to_string()))
            .with_controller_id(controller_id(broker, cluster))
            .with_brokers(brokers)
    })
}

/// Key types: 0 = consumer group, 1 = transaction. One node coordinates both: the leader of
/// `__sluice_coordinator-0` in a cluster ([`Broker::coordinator_node`]); while it has none, or it is
/// fenced, clients hear COORDINATOR_NOT_AVAILABLE and retry.
pub(crate) fn find_coordinator(broker: &Broker, ctx: &ConnCtx, request: FindCoordinatorRequest, version: i16) -> FindCoordinatorResponse {
    let coordinator = broker.coordinator_node();
    let found: Result<Node, ResponseError> = match (request.key_type, coordinator) {
        (0 | 1, None) => Err(ResponseError::CoordinatorNotAvailable),
        (0 | 1, Some(coordinator)) => with_cluster(broker, |cluster| {
            nodes(broker, ctx, cluster, Listing::Live)
                .into_iter()
                .find(|n| n.id == coordinator)
                .ok_or(ResponseError::CoordinatorNotAvailable)
        }),
        _ => Err(ResponseError::InvalidRequest),
    };
    if version >= 4 {
        let coordinators = request
            .coordinator_keys
            .into_iter()
            .map(|key| {
                let entry = Coordinator::default().with_key(key);
                match &found {
                    Ok(node) => entry.with_node_id(BrokerId(node.id)).with_host(str_bytes(node.host.clone())).with_port(node.port),
                    Err(e) => entry.with_node_id(BrokerId(-1)).with_error_code(e.code()).with_error_message(Some(str_bytes(e.to_string()))),
                }
            })
            .collect();
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    match found {
        Ok(node) => FindCoordinatorResponse::default().with_node_id(BrokerId(node.id)).with_host(str_bytes(node.host)).with_port(node.port),
        Err(e) => FindCoordinatorResponse::default()
            .with_node_id(BrokerId(-1))
            .with_error_code(e.code())
            .with_error_message(Some(str_bytes(e.to_string()))),
    }
}
