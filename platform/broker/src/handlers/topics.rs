//! CreateTopics, DeleteTopics and CreatePartitions: the Kafka face of the broker's topic
//! operations (the admin API calls the same `Broker` methods).

use std::collections::HashSet;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::alter_partition_reassignments_response::{ReassignablePartitionResponse, ReassignableTopicResponse};
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_response::{CreatableTopicConfigs, CreatableTopicResult};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::elect_leaders_response::{PartitionResult, ReplicaElectionResult};
use kafka_protocol::messages::list_partition_reassignments_response::{OngoingPartitionReassignment, OngoingTopicReassignment};
use kafka_protocol::messages::{
    AlterPartitionReassignmentsRequest, AlterPartitionReassignmentsResponse, BrokerId, CreatePartitionsRequest, CreatePartitionsResponse,
    CreateTopicsRequest, CreateTopicsResponse, DeleteTopicsRequest, DeleteTopicsResponse, ElectLeadersRequest, ElectLeadersResponse,
    ListPartitionReassignmentsRequest, ListPartitionReassignmentsResponse, TopicName,
};
use sluice_cluster::{Election, Reassigned};
use uuid::Uuid;

use super::{blocking, str_bytes};
use crate::broker::Broker;
use crate::config::TopicConfig;
use crate::error::BrokerError;

/// Topics one CreateTopics or DeleteTopics request may name.
pub(crate) const TOPICS_PER_REQUEST_MAX: usize = 10_000;

pub(crate) fn create_topics(broker: &Broker, request: CreateTopicsRequest, version: i16) -> CreateTopicsResponse {
    let mut seen = HashSet::new();
    let duplicates: HashSet<String> = request.topics.iter().map(|t| t.name.0.to_string()).filter(|n| !seen.insert(n.clone())).collect();
    let too_many = request.topics.len() > TOPICS_PER_REQUEST_MAX;
    let results = request
        .topics
        .into_iter()
        .map(|t| {
            let name = t.name.0.to_string();
            let fail = |error: BrokerError| {
                CreatableTopicResult::default()
                    .with_name(t.name.clone())
                    .with_error_code(error.code())
                    .with_error_message(Some(str_bytes(error.to_string())))
                    .with_num_partitions(-1)
                    .with_replication_factor(-1)
            };
            if too_many {
                return fail(BrokerError::InvalidRequest(format!("more than {TOPICS_PER_REQUEST_MAX} topics in one request")));
            }
            if duplicates.contains(&name) {
                return fail(BrokerError::InvalidRequest(format!("topic '{name}' appears more than once in the request")));
            }
            let assignments: Vec<Vec<i32>> = t.assignments.iter().map(|a| a.broker_ids.iter().map(|b| b.0).collect()).collect();
            if let Err(error) = broker.check_assignments(t.replication_factor, &assignments) {
                return fail(error);
            }
            let partitions = if !assignments.is_empty() {
                if t.num_partitions != -1 {
                    return fail(BrokerError::InvalidRequest("give either num_partitions or replica assignments, not both".into()));
                }
                Some(assignments.len() as i32)
            } else if t.num_partitions == -1 {
                None
            } else {
                Some(t.num_partitions)
            };
            let pairs: Vec<(String, String)> =
                t.configs.iter().filter_map(|c| c.value.as_ref().map(|v| (c.name.to_string(), v.to_string()))).collect();
            let config = match TopicConfig::from_pairs(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))) {
                Ok(config) => config,
                Err(error) => return fail(BrokerError::InvalidConfig(error.to_string())),
            };
            let placed = (!assignments.is_empty()).then_some(assignments);
            let factor = (t.replication_factor > 0).then_some(t.replication_factor as usize);
            match blocking(|| broker.create_topic_placed(&name, partitions, placed, factor, config, request.validate_only)) {
                Ok(created) => {
                    if !request.validate_only {
                        tracing::info!(topic = name, partitions = created.topic.partition_count(), "created topic");
                    }
                    let configs = (version >= 5).then(|| {
                        created
                            .topic
                            .config
                            .read()
                            .all_effective(broker.config())
                            .into_iter()
                            .map(|(k, v, source)| {
                                CreatableTopicConfigs::default()
                                    .with_name(str_bytes(k))
                                    .with_value(Some(str_bytes(v)))
                                    .with_config_source(source.kafka_code())
                            })
                            .collect()
                    });
                    CreatableTopicResult::default()
                        .with_name(t.name.clone())
                        .with_topic_id(created.topic.id)
                        .with_num_partitions(partitions.unwrap_or_else(|| broker.config().num_partitions()))
                        .with_replication_factor(if request.validate_only {
                            factor.unwrap_or_else(|| broker.config().default_replication_factor()) as i16
                        } else {
                            broker.replication_factor(&created.topic) as i16
                        })
                        .with_configs(configs)
                }
                Err(error) => fail(error),
            }
        })
        .collect();
    CreateTopicsResponse::default().with_topics(results)
}

pub(crate) fn delete_topics(broker: &Broker, request: DeleteTopicsRequest, version: i16) -> DeleteTopicsResponse {
    // v6 names topics by name or id in `topics`; earlier versions list names in `topic_names`.
    let targets: Vec<(Option<String>, Uuid)> = if version >= 6 {
        request.topics.into_iter().map(|t| (t.name.map(|n| n.0.to_string()), t.topic_id)).collect()
    } else {
        request.topic_names.into_iter().map(|n| (Some(n.0.to_string()), Uuid::nil())).collect()
    };
    if targets.len() > TOPICS_PER_REQUEST_MAX {
        return DeleteTopicsResponse::default();
    }
    let responses = targets
        .into_iter()
        .map(|(name, id)| {
            let name = name.or_else(|| broker.topics().into_iter().find(|t| t.id == id).map(|t| t.name.as_str().to_string()));
            let Some(name) = name else {
                return DeletableTopicResult::default().with_topic_id(id).with_error_code(ResponseError::UnknownTopicId.code());
            };
            let topic_id = broker.topic(&name).map(|t| t.id).unwrap_or(id);
            let result = DeletableTopicResult::default().with_name(Some(TopicName(str_bytes(name.clone())))).with_topic_id(topic_id);
            match blocking(|| broker.delete_topic(&name)) {
                Ok(()) => result,
                Err(error) => result.with_error_code(error.code()).with_error_message(Some(str_bytes(error.to_string()))),
            }
        })
        .collect();
    DeleteTopicsResponse::default().with_responses(responses)
}

pub(crate) fn create_partitions(broker: &Broker, request: CreatePartitionsRequest) -> CreatePartitionsResponse {
    let results = request
        .topics
        .into_iter()
        .map(|t| {
            let name = t.name.0.to_string();
            let result = CreatePartitionsTopicResult::default().with_name(t.name.clone());
            let assignments: Vec<Vec<i32>> = t.assignments.iter().flatten().map(|a| a.broker_ids.iter().map(|b| b.0).collect()).collect();
            let outcome = broker
                .check_assignments(-1, &assignments)
                .map_err(|e| BrokerError::InvalidRequest(e.to_string()))
                .and_then(|()| broker.topic(&name).map_or(Ok(()), |topic| topic.check_writable()))
                .and_then(|()| {
                    let placed = (!assignments.is_empty()).then_some(assignments);
                    blocking(|| broker.add_partitions_placed(&name, t.count, placed, request.validate_only))
                });
            match outcome {
                Ok(()) => {
                    if !request.validate_only {
                        tracing::info!(topic = name, partitions = t.count, "added partitions");
                    }
                    result
                }
                Err(error) => result.with_error_code(error.code()).with_error_message(Some(str_bytes(error.to_string()))),
            }
        })
        .collect();
    CreatePartitionsResponse::default().with_results(results)
}

/// Partitions one AlterPartitionReassignments or ListPartitionReassignments request may name; a
/// longer list is refused as a whole.
pub(crate) const REASSIGNMENT_PARTITIONS_MAX: usize = 100_000;

/// AlterPartitionReassignments (KIP-455): moves partitions to new replicas through the controller,
/// or cancels a move in progress (`replicas: null`). Answered once the controller committed the
/// change and this broker applied it; the copy itself runs on (ListPartitionReassignments shows it).
/// From v1, `allow_replication_factor_change: false` refuses a target with another replica count.
pub(crate) fn alter_partition_reassignments(
    broker: &Broker,
    request: AlterPartitionReassignmentsRequest,
    version: i16,
) -> AlterPartitionReassignmentsResponse {
    let respond = |by_topic: std::collections::BTreeMap<String, Vec<ReassignablePartitionResponse>>| {
        let responses = by_topic
            .into_iter()
            .map(|(topic, partitions)| {
                ReassignableTopicResponse::default().with_name(TopicName(str_bytes(topic))).with_partitions(partitions)
            })
            .collect();
        AlterPartitionReassignmentsResponse::default()
            .with_allow_replication_factor_change(request.allow_replication_factor_change)
            .with_responses(responses)
    };
    let partition_result = |index: i32, error: Option<ResponseError>, message: Option<String>| {
        ReassignablePartitionResponse::default()
            .with_partition_index(index)
            .with_error_code(error.map_or(0, |e| e.code()))
            .with_error_message(message.map(str_bytes))
    };
    let named = request.topics.iter().map(|t| t.partitions.len()).sum::<usize>();
    if named > REASSIGNMENT_PARTITIONS_MAX {
        return AlterPartitionReassignmentsResponse::default()
            .with_error_code(ResponseError::InvalidRequest.code())
            .with_error_message(Some(str_bytes(format!("at most {REASSIGNMENT_PARTITIONS_MAX} partitions per request"))));
    }
    // v0 had no flag and allowed any replica count.
    let keep_factor = version >= 1 && !request.allow_replication_factor_change;
    let factors: std::collections::HashMap<(String, i32), usize> = match (keep_factor, broker.controller()) {
        (true, Some(controller)) => controller.with_metadata(|m, _| {
            request
                .topics
                .iter()
                .flat_map(|t| t.partitions.iter().map(move |p| (t.name.0.to_string(), p.partition_index)))
                .filter_map(|(topic, index)| {
                    let state = m.partition(&topic, index)?;
                    Some(((topic, index), state.original_replicas().len()))
                })
                .collect()
        }),
        _ => std::collections::HashMap::new(),
    };
    let mut by_topic: std::collections::BTreeMap<String, Vec<ReassignablePartitionResponse>> = std::collections::BTreeMap::new();
    let mut wanted = Vec::with_capacity(named);
    for topic in &request.topics {
        let name = topic.name.0.to_string();
        for p in &topic.partitions {
            // A target longer than any partition may have is refused here: it would otherwise travel
            // into the controller's log.
            if p.replicas.as_ref().is_some_and(|r| r.len() > sluice_cluster::REPLICAS_MAX) {
                let message = format!("a partition has at most {} replicas", sluice_cluster::REPLICAS_MAX);
                by_topic.entry(name.clone()).or_default().push(partition_result(
                    p.partition_index,
                    Some(ResponseError::InvalidReplicaAssignment),
                    Some(message),
                ));
                continue;
            }
            let target: Option<Vec<i32>> = p.replicas.as_ref().map(|r| r.iter().map(|b| b.0).collect());
            let current = factors.get(&(name.clone(), p.partition_index));
            if let (Some(target), Some(&current)) = (&target, current)
                && target.len() != current
            {
                let message = format!(
                    "the partition has {current} replicas and the target {}; set allow_replication_factor_change to change that",
                    target.len()
                );
                by_topic.entry(name.clone()).or_default().push(partition_result(
                    p.partition_index,
                    Some(ResponseError::InvalidReplicationFactor),
                    Some(message),
                ));
                continue;
            }
            wanted.push((name.clone(), p.partition_index, target));
        }
    }
    if !wanted.is_empty() {
        let results = match blocking(|| broker.reassign_partitions(wanted.clone())) {
            Ok(results) => results,
            Err(error) => {
                let (code, message) = (error.kafka(), error.to_string());
                for (topic, index, _) in wanted {
                    by_topic.entry(topic).or_default().push(partition_result(index, Some(code), Some(message.clone())));
                }
                return respond(by_topic);
            }
        };
        for (topic, index, result) in results {
            let (error, message) = match result {
                Reassigned::Started | Reassigned::Completed | Reassigned::Cancelled => (None, None),
                Reassigned::NoReassignmentInProgress => (Some(ResponseError::NoReassignmentInProgress), None),
                Reassigned::Invalid(reason) => (Some(ResponseError::InvalidReplicaAssignment), Some(reason)),
                Reassigned::UnknownPartition => (Some(ResponseError::UnknownTopicOrPartition), None),
            };
            by_topic.entry(topic).or_default().push(partition_result(index, error, message));
        }
    }
    respond(by_topic)
}

/// ListPartitionReassignments: the reassignments in progress, of every partition or the named ones.
pub(crate) fn list_partition_reassignments(
    broker: &Broker,
    request: ListPartitionReassignmentsRequest,
) -> ListPartitionReassignmentsResponse {
    let named: Option<Vec<(String, i32)>> = request
        .topics
        .as_ref()
        .map(|topics| topics.iter().flat_map(|t| t.partition_indexes.iter().map(|&p| (t.name.0.to_string(), p))).collect());
    if named.as_ref().is_some_and(|list| list.len() > REASSIGNMENT_PARTITIONS_MAX) {
        return ListPartitionReassignmentsResponse::default()
            .with_error_code(ResponseError::InvalidRequest.code())
            .with_error_message(Some(str_bytes(format!("at most {REASSIGNMENT_PARTITIONS_MAX} partitions per request"))));
    }
    let brokers = |ids: Vec<i32>| ids.into_iter().map(BrokerId).collect::<Vec<_>>();
    let mut by_topic: std::collections::BTreeMap<String, Vec<OngoingPartitionReassignment>> = std::collections::BTreeMap::new();
    for (topic, index, replicas, adding, removing) in broker.list_reassignments(named.as_deref()) {
        by_topic.entry(topic).or_default().push(
            OngoingPartitionReassignment::default()
                .with_partition_index(index)
                .with_replicas(brokers(replicas))
                .with_adding_replicas(brokers(adding))
                .with_removing_replicas(brokers(removing)),
        );
    }
    let topics = by_topic
        .into_iter()
        .map(|(topic, partitions)| OngoingTopicReassignment::default().with_name(TopicName(str_bytes(topic))).with_partitions(partitions))
        .collect();
    ListPartitionReassignmentsResponse::default().with_topics(topics)
}

/// Partitions one ElectLeaders request may name; a longer list is refused as a whole.
pub(crate) const ELECT_LEADERS_PARTITIONS_MAX: usize = 100_000;

/// ElectLeaders: preferred leader election (type 0) through the controller. Unclean election
/// (type 1) is refused: a leader is only ever elected from the ISR here.
pub(crate) fn elect_leaders(broker: &Broker, request: ElectLeadersRequest, version: i16) -> ElectLeadersResponse {
    let refuse = |error: ResponseError, message: String| {
        let results = request
            .topic_partitions
            .iter()
            .flatten()
            .map(|t| {
                let partition_result = t
                    .partitions
                    .iter()
                    .map(|&p| {
                        PartitionResult::default()
                            .with_partition_id(p)
                            .with_error_code(error.code())
                            .with_error_message(Some(str_bytes(message.clone())))
                    })
                    .collect();
                ReplicaElectionResult::default().with_topic(t.topic.clone()).with_partition_result(partition_result)
            })
            .collect();
        ElectLeadersResponse::default().with_error_code(if version >= 1 { error.code() } else { 0 }).with_replica_election_results(results)
    };
    if request.election_type != 0 {
        return refuse(
            ResponseError::InvalidRequest,
            "unclean leader election is not supported (unclean.leader.election.enable accepts only false)".into(),
        );
    }
    let named: Option<Vec<(String, i32)>> = request
        .topic_partitions
        .as_ref()
        .map(|topics| topics.iter().flat_map(|t| t.partitions.iter().map(|&p| (t.topic.0.to_string(), p))).collect());
    if named.as_ref().is_some_and(|list| list.len() > ELECT_LEADERS_PARTITIONS_MAX) {
        return refuse(ResponseError::InvalidRequest, format!("at most {ELECT_LEADERS_PARTITIONS_MAX} partitions per request"));
    }
    let results = match blocking(|| broker.elect_preferred_leaders(named)) {
        Ok(results) => results,
        Err(error) => return refuse(error.kafka(), error.to_string()),
    };
    let mut by_topic: std::collections::BTreeMap<String, Vec<PartitionResult>> = std::collections::BTreeMap::new();
    for (topic, partition, election) in results {
        let (error, message) = match election {
            Election::Elected => (None, None),
            Election::NotNeeded => (Some(ResponseError::ElectionNotNeeded), Some("the preferred replica leads already")),
            Election::PreferredNotAvailable => {
                (Some(ResponseError::PreferredLeaderNotAvailable), Some("the preferred replica is fenced or not in the ISR"))
            }
            Election::UnknownPartition => (Some(ResponseError::UnknownTopicOrPartition), None),
        };
        let entry = PartitionResult::default()
            .with_partition_id(partition)
            .with_error_code(error.map_or(0, |e| e.code()))
            .with_error_message(message.map(str_bytes));
        by_topic.entry(topic).or_default().push(entry);
    }
    let results = by_topic
        .into_iter()
        .map(|(topic, partition_result)| {
            ReplicaElectionResult::default().with_topic(TopicName(str_bytes(topic))).with_partition_result(partition_result)
        })
        .collect();
    ElectLeadersResponse::default().with_replica_election_results(results)
}
