//! Metadata, DescribeCluster and FindCoordinator: where things are. On a single node the answer is
//! always this broker, at the address the client reached it on unless `advertised.listeners` says
//! otherwise (so `localhost`, `127.0.0.1` and a container's address all work without configuration).

use std::sync::Arc;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::metadata_response::{MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic};
use kafka_protocol::messages::{
    BrokerId, DescribeClusterRequest, DescribeClusterResponse, FindCoordinatorRequest, FindCoordinatorResponse, MetadataRequest,
    MetadataResponse, TopicName,
};
use uuid::Uuid;

use super::{ConnCtx, blocking, str_bytes};
use crate::broker::Broker;
use crate::topic::Topic;

/// Topics one Metadata request may name; the rest of the request is refused as invalid.
pub(crate) const METADATA_TOPICS_MAX: usize = 100_000;

pub(crate) fn advertised(broker: &Broker, ctx: &ConnCtx) -> (String, i32) {
    broker.config().advertised_listener().unwrap_or_else(|| (ctx.local_addr.ip().to_string(), ctx.local_addr.port() as i32))
}

fn topic_entry(broker: &Broker, topic: &Topic) -> MetadataResponseTopic {
    let node = BrokerId(broker.node_id());
    let partitions = topic
        .partitions
        .read()
        .iter()
        .map(|p| {
            MetadataResponsePartition::default()
                .with_partition_index(p.index)
                .with_leader_id(node)
                .with_leader_epoch(p.leader_epoch)
                .with_replica_nodes(vec![node])
                .with_isr_nodes(vec![node])
        })
        .collect();
    MetadataResponseTopic::default()
        .with_name(Some(TopicName(str_bytes(topic.name.as_str()))))
        .with_topic_id(topic.id)
        .with_partitions(partitions)
}

fn error_entry(name: Option<String>, id: Uuid, error: ResponseError) -> MetadataResponseTopic {
    MetadataResponseTopic::default().with_name(name.map(|n| TopicName(str_bytes(n)))).with_topic_id(id).with_error_code(error.code())
}

pub(crate) async fn metadata(broker: &Arc<Broker>, ctx: &ConnCtx, request: MetadataRequest, version: i16) -> MetadataResponse {
    let (host, port) = advertised(broker, ctx);
    let node = BrokerId(broker.node_id());
    // v0 asks for all topics with an empty list; v1+ with null.
    let all_topics = match &request.topics {
        None => true,
        Some(topics) => version == 0 && topics.is_empty(),
    };
    // v0-3 have no allow_auto_topic_creation field and always allowed it.
    let allow_auto_create = version < 4 || request.allow_auto_topic_creation;
    let topics = if all_topics {
        broker.topics().iter().map(|t| topic_entry(broker, t)).collect()
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
                    match found {
                        Ok(topic) => topic_entry(broker, &topic),
                        Err(error) => error_entry(Some(name), Uuid::nil(), error.kafka()),
                    }
                }
                None => match broker.topics().into_iter().find(|topic| topic.id == t.topic_id) {
                    Some(topic) => topic_entry(broker, &topic),
                    None => error_entry(None, t.topic_id, ResponseError::UnknownTopicId),
                },
            })
            .collect()
    };
    MetadataResponse::default()
        .with_brokers(vec![MetadataResponseBroker::default().with_node_id(node).with_host(str_bytes(host)).with_port(port)])
        .with_cluster_id(Some(str_bytes(broker.cluster_id().to_string())))
        .with_controller_id(node)
        .with_topics(topics)
}

pub(crate) fn describe_cluster(broker: &Broker, ctx: &ConnCtx, _request: DescribeClusterRequest) -> DescribeClusterResponse {
    let (host, port) = advertised(broker, ctx);
    let node = BrokerId(broker.node_id());
    DescribeClusterResponse::default()
        .with_cluster_id(str_bytes(broker.cluster_id().to_string()))
        .with_controller_id(node)
        .with_brokers(vec![DescribeClusterBroker::default().with_broker_id(node).with_host(str_bytes(host)).with_port(port)])
}

/// Key types: 0 = consumer group, 1 = transaction. This broker coordinates groups; transactions
/// are not implemented yet, so it says so instead of pretending.
pub(crate) fn find_coordinator(broker: &Broker, ctx: &ConnCtx, request: FindCoordinatorRequest, version: i16) -> FindCoordinatorResponse {
    let (host, port) = advertised(broker, ctx);
    let node = BrokerId(broker.node_id());
    let error = match request.key_type {
        // Groups and transactions: this node coordinates both.
        0 | 1 => None,
        _ => Some(ResponseError::InvalidRequest),
    };
    if version >= 4 {
        let coordinators = request
            .coordinator_keys
            .into_iter()
            .map(|key| {
                let entry = Coordinator::default().with_key(key);
                match error {
                    None => entry.with_node_id(node).with_host(str_bytes(host.clone())).with_port(port),
                    Some(e) => {
                        entry.with_node_id(BrokerId(-1)).with_error_code(e.code()).with_error_message(Some(str_bytes(e.to_string())))
                    }
                }
            })
            .collect();
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    match error {
        None => FindCoordinatorResponse::default().with_node_id(node).with_host(str_bytes(host)).with_port(port),
        Some(e) => FindCoordinatorResponse::default()
            .with_node_id(BrokerId(-1))
            .with_error_code(e.code())
            .with_error_message(Some(str_bytes(e.to_string()))),
    }
}
