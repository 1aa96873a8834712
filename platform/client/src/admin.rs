//! Admin calls: topics (create with configs, delete, grow, delete records), configs (describe,
//! alter incrementally) and groups (list, describe, delete). Calls that name several resources return
//! one outcome per resource, so a caller can accept "already exists" for one and fail on another; calls
//! about one resource return an error for its error code.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::{
    ApiKey, CreatePartitionsRequest, CreateTopicsRequest, DeleteGroupsRequest, DeleteRecordsRequest, DeleteTopicsRequest,
    DescribeConfigsRequest, DescribeGroupsRequest, IncrementalAlterConfigsRequest, ListGroupsRequest,
    create_partitions_request::CreatePartitionsTopic,
    create_topics_request::{CreatableTopic, CreatableTopicConfig},
    delete_records_request::{DeleteRecordsPartition, DeleteRecordsTopic},
    delete_topics_request::DeleteTopicState,
    describe_configs_request::DescribeConfigsResource,
    incremental_alter_configs_request::{AlterConfigsResource, AlterableConfig},
};

use crate::client::Client;
use crate::error::{ClientError, KafkaError, Result};
use crate::metadata::TopicInfo;
use crate::versions::{
    CREATE_PARTITIONS_VERSIONS, CREATE_TOPICS_VERSIONS, DELETE_GROUPS_VERSIONS, DELETE_RECORDS_VERSIONS, DELETE_TOPICS_VERSIONS,
    DESCRIBE_CONFIGS_VERSIONS, DESCRIBE_GROUPS_VERSIONS, INCREMENTAL_ALTER_CONFIGS_VERSIONS, LIST_GROUPS_VERSIONS,
};
use crate::{group_id, str_bytes, topic_name};

/// A topic to create. `None` leaves partitions or replication to the broker's defaults (CreateTopics
/// v4+; older brokers get 1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewTopic {
    pub name: String,
    pub partitions: Option<i32>,
    pub replication_factor: Option<i16>,
    /// Topic settings by Kafka's names (`retention.ms`, `cleanup.policy`, ...).
    pub configs: Vec<(String, String)>,
}

/// One resource's outcome in a call about several.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub name: String,
    pub error: Option<KafkaError>,
}

/// What a config is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigResource {
    Topic(String),
    Broker(i32),
}

impl ConfigResource {
    fn wire(&self) -> (i8, String) {
        match self {
            ConfigResource::Topic(name) => (2, name.clone()),
            ConfigResource::Broker(id) => (4, id.to_string()),
        }
    }

    fn describe(&self) -> String {
        match self {
            ConfigResource::Topic(name) => format!("`{name}`"),
            ConfigResource::Broker(id) => format!("broker {id}"),
        }
    }
}

/// Where a config value comes from (DescribeConfigs `config_source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigSource {
    Topic,
    DynamicBroker,
    DynamicDefaultBroker,
    StaticBroker,
    Default,
    DynamicBrokerLogger,
    ClientMetrics,
    Group,
    Unknown,
}

impl ConfigSource {
    fn from_wire(source: i8) -> ConfigSource {
        match source {
            1 => ConfigSource::Topic,
            2 => ConfigSource::DynamicBroker,
            3 => ConfigSource::DynamicDefaultBroker,
            4 => ConfigSource::StaticBroker,
            5 => ConfigSource::Default,
            6 => ConfigSource::DynamicBrokerLogger,
            7 => ConfigSource::ClientMetrics,
            8 => ConfigSource::Group,
            _ => ConfigSource::Unknown,
        }
    }

    /// Kafka's name for it, in kebab case.
    pub fn label(self) -> &'static str {
        match self {
            ConfigSource::Topic => "topic",
            ConfigSource::DynamicBroker => "dynamic-broker",
            ConfigSource::DynamicDefaultBroker => "dynamic-default-broker",
            ConfigSource::StaticBroker => "static-broker",
            ConfigSource::Default => "default",
            ConfigSource::DynamicBrokerLogger => "dynamic-broker-logger",
            ConfigSource::ClientMetrics => "client-metrics",
            ConfigSource::Group => "group",
            ConfigSource::Unknown => "unknown",
        }
    }
}

/// One config as DescribeConfigs reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigEntry {
    pub name: String,
    /// `None` for sensitive values and unset ones.
    pub value: Option<String>,
    pub source: ConfigSource,
    pub sensitive: bool,
    pub read_only: bool,
}

/// One change of IncrementalAlterConfigs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigChange {
    Set(String, String),
    /// Back to the default.
    Delete(String),
}

/// One group as ListGroups reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupListing {
    pub group_id: String,
    /// Empty when the broker does not say (ListGroups before v4).
    pub state: String,
    pub protocol_type: String,
}

/// One group as DescribeGroups reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDescription {
    pub group_id: String,
    pub state: String,
    pub protocol_type: String,
    /// The assignor the group settled on, for consumer groups.
    pub protocol: String,
    pub members: Vec<MemberDescription>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberDescription {
    pub member_id: String,
    pub client_id: String,
    pub host: String,
    /// The member's subscription, in its protocol type's format.
    pub metadata: Bytes,
    /// The member's assignment; for consumers see [`crate::group::decode_assignment`].
    pub assignment: Bytes,
}

impl Client {
    /// CreateTopics for `topics`: one outcome per topic (TOPIC_ALREADY_EXISTS among them).
    pub async fn create_topics(&self, topics: &[NewTopic], timeout: Duration) -> Result<Vec<Outcome>> {
        let version = self.version(ApiKey::CreateTopics, CREATE_TOPICS_VERSIONS)?;
        // "The broker's default" (-1) exists from v4 on; before that, ask for what a default broker has.
        let default = if version >= 4 { -1 } else { 1 };
        let request = CreateTopicsRequest::default().with_timeout_ms(timeout_ms(timeout)).with_topics(
            topics
                .iter()
                .map(|t| {
                    CreatableTopic::default()
                        .with_name(topic_name(&t.name))
                        .with_num_partitions(t.partitions.unwrap_or(default))
                        .with_replication_factor(t.replication_factor.unwrap_or(default as i16))
                        .with_configs(
                            t.configs
                                .iter()
                                .map(|(k, v)| CreatableTopicConfig::default().with_name(str_bytes(k)).with_value(Some(str_bytes(v))))
                                .collect(),
                        )
                })
                .collect(),
        );
        let response = self.call(&request, version).await?;
        Ok(response
            .topics
            .iter()
            .map(|r| Outcome {
                name: r.name.0.to_string(),
                error: KafkaError::from_code(r.error_code, r.error_message.as_ref().map(|m| m.as_str())),
            })
            .collect())
    }

    /// DeleteTopics for `names`: one outcome per topic.
    pub async fn delete_topics(&self, names: &[String], timeout: Duration) -> Result<Vec<Outcome>> {
        let version = self.version(ApiKey::DeleteTopics, DELETE_TOPICS_VERSIONS)?;
        let mut request = DeleteTopicsRequest::default().with_timeout_ms(timeout_ms(timeout));
        if version >= 6 {
            request.topics = names.iter().map(|n| DeleteTopicState::default().with_name(Some(topic_name(n)))).collect();
        } else {
            request.topic_names = names.iter().map(|n| topic_name(n)).collect();
        }
        let response = self.call(&request, version).await?;
        Ok(response
            .responses
            .iter()
            .map(|r| Outcome {
                name: r.name.as_ref().map(|n| n.0.to_string()).unwrap_or_default(),
                error: KafkaError::from_code(r.error_code, r.error_message.as_ref().map(|m| m.as_str())),
            })
            .collect())
    }

    /// Raises `topic`'s partition count to `total`.
    pub async fn create_partitions(&self, topic: &str, total: i32, timeout: Duration) -> Result<()> {
        let version = self.version(ApiKey::CreatePartitions, CREATE_PARTITIONS_VERSIONS)?;
        let request = CreatePartitionsRequest::default()
            .with_timeout_ms(timeout_ms(timeout))
            .with_topics(vec![CreatePartitionsTopic::default().with_name(topic_name(topic)).with_count(total).with_assignments(None)]);
        let response = self.call(&request, version).await?;
        for r in &response.results {
            if let Some(error) = KafkaError::from_code(r.error_code, r.error_message.as_ref().map(|m| m.as_str())) {
                return Err(ClientError::kafka(format!("adding partitions to `{topic}`"), error));
            }
        }
        Ok(())
    }

    /// DeleteRecords: moves each partition's log start offset up to `targets[partition]` (-1: the high
    /// watermark), asking each leader. Returns the new low watermarks.
    pub async fn delete_records(&self, topic: &TopicInfo, targets: &BTreeMap<i32, i64>, timeout: Duration) -> Result<BTreeMap<i32, i64>> {
        let version = self.version(ApiKey::DeleteRecords, DELETE_RECORDS_VERSIONS)?;
        let mut out = BTreeMap::new();
        for (leader, partitions) in topic.group_by_leader(targets.keys().copied())? {
            let request = DeleteRecordsRequest::default().with_timeout_ms(timeout_ms(timeout)).with_topics(vec![
                DeleteRecordsTopic::default().with_name(topic_name(&topic.name)).with_partitions(
                    partitions
                        .iter()
                        .filter_map(|p| {
                            targets.get(p).map(|&offset| DeleteRecordsPartition::default().with_partition_index(*p).with_offset(offset))
                        })
                        .collect(),
                ),
            ]);
            let response = self.call_node(leader, &request, version).await?;
            for t in &response.topics {
                for p in &t.partitions {
                    if let Some(error) = KafkaError::from_code(p.error_code, None) {
                        return Err(ClientError::kafka(
                            format!("deleting records of `{}` partition {}", topic.name, p.partition_index),
                            error,
                        ));
                    }
                    out.insert(p.partition_index, p.low_watermark);
                }
            }
        }
        Ok(out)
    }

    /// DescribeConfigs of one resource: `keys`, or every config when `None`. Sorted by name.
    pub async fn describe_configs(&self, resource: &ConfigResource, keys: Option<&[String]>) -> Result<Vec<ConfigEntry>> {
        let version = self.version(ApiKey::DescribeConfigs, DESCRIBE_CONFIGS_VERSIONS)?;
        let (resource_type, resource_name) = resource.wire();
        let request = DescribeConfigsRequest::default().with_resources(vec![
            DescribeConfigsResource::default()
                .with_resource_type(resource_type)
                .with_resource_name(str_bytes(&resource_name))
                .with_configuration_keys(keys.map(|keys| keys.iter().map(|k| str_bytes(k)).collect())),
        ]);
        let response = self.call(&request, version).await?;
        let Some(result) = response.results.first() else {
            return Err(ClientError::protocol(
                self.bootstrap_addr(),
                format!("DescribeConfigs returned no result for {}", resource.describe()),
            ));
        };
        if let Some(error) = KafkaError::from_code(result.error_code, result.error_message.as_ref().map(|m| m.as_str())) {
            return Err(ClientError::kafka(format!("describing the configs of {}", resource.describe()), error));
        }
        let mut entries: Vec<ConfigEntry> = result
            .configs
            .iter()
            .map(|c| ConfigEntry {
                name: c.name.to_string(),
                value: c.value.as_ref().map(|v| v.to_string()),
                source: ConfigSource::from_wire(c.config_source),
                sensitive: c.is_sensitive,
                read_only: c.read_only,
            })
            .collect();
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }

    /// IncrementalAlterConfigs of one resource.
    pub async fn alter_configs(&self, resource: &ConfigResource, changes: &[ConfigChange]) -> Result<()> {
        /// IncrementalAlterConfigs operations.
        const OP_SET: i8 = 0;
        const OP_DELETE: i8 = 1;
        let version = self.version(ApiKey::IncrementalAlterConfigs, INCREMENTAL_ALTER_CONFIGS_VERSIONS)?;
        let (resource_type, resource_name) = resource.wire();
        let configs = changes
            .iter()
            .map(|change| match change {
                ConfigChange::Set(k, v) => {
                    AlterableConfig::default().with_name(str_bytes(k)).with_config_operation(OP_SET).with_value(Some(str_bytes(v)))
                }
                ConfigChange::Delete(k) => {
                    AlterableConfig::default().with_name(str_bytes(k)).with_config_operation(OP_DELETE).with_value(None)
                }
            })
            .collect();
        let request = IncrementalAlterConfigsRequest::default().with_resources(vec![
            AlterConfigsResource::default()
                .with_resource_type(resource_type)
                .with_resource_name(str_bytes(&resource_name))
                .with_configs(configs),
        ]);
        let response = self.call(&request, version).await?;
        for r in &response.responses {
            if let Some(error) = KafkaError::from_code(r.error_code, r.error_message.as_ref().map(|m| m.as_str())) {
                return Err(ClientError::kafka(format!("altering the configs of {}", resource.describe()), error));
            }
        }
        Ok(())
    }

    /// ListGroups on the bootstrap broker, sorted by group id.
    pub async fn list_groups(&self) -> Result<Vec<GroupListing>> {
        let version = self.version(ApiKey::ListGroups, LIST_GROUPS_VERSIONS)?;
        let response = self.call(&ListGroupsRequest::default(), version).await?;
        if let Some(error) = KafkaError::from_code(response.error_code, None) {
            return Err(ClientError::kafka(format!("ListGroups on {}", self.bootstrap_addr()), error));
        }
        let mut groups: Vec<GroupListing> = response
            .groups
            .iter()
            .map(|g| GroupListing {
                group_id: g.group_id.0.to_string(),
                state: g.group_state.to_string(),
                protocol_type: g.protocol_type.to_string(),
            })
            .collect();
        groups.sort_by(|a, b| a.group_id.cmp(&b.group_id));
        Ok(groups)
    }

    /// ListGroups on every broker of the cluster (each lists only the groups it coordinates), merged
    /// and sorted by id.
    pub async fn list_all_groups(&self) -> Result<Vec<GroupListing>> {
        let version = self.version(ApiKey::ListGroups, LIST_GROUPS_VERSIONS)?;
        let meta = self.metadata(Some(&[])).await?;
        let mut groups: BTreeMap<String, GroupListing> = BTreeMap::new();
        for broker in &meta.brokers {
            let response = self.call_node(broker.id, &ListGroupsRequest::default(), version).await?;
            if let Some(error) = KafkaError::from_code(response.error_code, None) {
                return Err(ClientError::kafka(format!("ListGroups on broker {}", broker.id), error));
            }
            for g in &response.groups {
                groups.entry(g.group_id.0.to_string()).or_insert_with(|| GroupListing {
                    group_id: g.group_id.0.to_string(),
                    state: g.group_state.to_string(),
                    protocol_type: g.protocol_type.to_string(),
                });
            }
        }
        Ok(groups.into_values().collect())
    }

    /// DescribeGroups of `group` on its coordinator (from [`Client::find_coordinator`]).
    pub async fn describe_group(&self, coordinator: &str, group: &str) -> Result<GroupDescription> {
        let version = self.version(ApiKey::DescribeGroups, DESCRIBE_GROUPS_VERSIONS)?;
        let response = self.call_at(coordinator, &DescribeGroupsRequest::default().with_groups(vec![group_id(group)]), version).await?;
        let Some(described) = response.groups.into_iter().next() else {
            return Err(ClientError::protocol(coordinator, format!("DescribeGroups returned nothing for `{group}`")));
        };
        if let Some(error) = KafkaError::from_code(described.error_code, described.error_message.as_ref().map(|m| m.as_str())) {
            return Err(ClientError::kafka(format!("describing group `{group}`"), error));
        }
        Ok(GroupDescription {
            group_id: described.group_id.0.to_string(),
            state: described.group_state.to_string(),
            protocol_type: described.protocol_type.to_string(),
            protocol: described.protocol_data.to_string(),
            members: described
                .members
                .into_iter()
                .map(|m| MemberDescription {
                    member_id: m.member_id.to_string(),
                    client_id: m.client_id.to_string(),
                    host: m.client_host.to_string(),
                    metadata: m.member_metadata,
                    assignment: m.member_assignment,
                })
                .collect(),
        })
    }

    /// DeleteGroups of `groups` on `coordinator`: one outcome per group (NON_EMPTY_GROUP among them).
    pub async fn delete_groups(&self, coordinator: &str, groups: &[String]) -> Result<Vec<Outcome>> {
        let version = self.version(ApiKey::DeleteGroups, DELETE_GROUPS_VERSIONS)?;
        let request = DeleteGroupsRequest::default().with_groups_names(groups.iter().map(|g| group_id(g)).collect());
        let response = self.call_at(coordinator, &request, version).await?;
        Ok(response
            .results
            .iter()
            .map(|r| Outcome { name: r.group_id.0.to_string(), error: KafkaError::from_code(r.error_code, None) })
            .collect())
    }
}

/// A request timeout in the i32 milliseconds Kafka carries, saturating.
fn timeout_ms(timeout: Duration) -> i32 {
    i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX)
}
