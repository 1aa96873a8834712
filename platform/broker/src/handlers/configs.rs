//! DescribeConfigs, AlterConfigs and IncrementalAlterConfigs for topics (and DescribeConfigs for the
//! broker, whose settings are static: they come from the config file and `--set`).

use kafka_protocol::ResponseError;
use kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::describe_configs_response::{DescribeConfigsResourceResult, DescribeConfigsResult};
use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse as IncrementalResourceResponse;
use kafka_protocol::messages::{
    AlterConfigsRequest, AlterConfigsResponse, DescribeConfigsRequest, DescribeConfigsResponse, IncrementalAlterConfigsRequest,
    IncrementalAlterConfigsResponse,
};

use kafka_protocol::protocol::StrBytes;

use super::{blocking, str_bytes};
use crate::broker::Broker;
use crate::config::{MIRROR_SETTING, TopicConfig, validate_topic_setting};
use crate::error::BrokerError;

pub(crate) const RESOURCE_TOPIC: i8 = 2;
pub(crate) const RESOURCE_BROKER: i8 = 4;

fn config_entry(name: &str, value: &str, source: i8, read_only: bool) -> DescribeConfigsResourceResult {
    DescribeConfigsResourceResult::default()
        .with_name(str_bytes(name))
        .with_value(Some(str_bytes(value)))
        .with_config_source(source)
        .with_read_only(read_only)
}

pub(crate) fn describe_configs(broker: &Broker, request: DescribeConfigsRequest, _version: i16) -> DescribeConfigsResponse {
    let results = request
        .resources
        .into_iter()
        .map(|resource| {
            let name = resource.resource_name.to_string();
            let wanted = |key: &str| resource.configuration_keys.as_ref().is_none_or(|keys| keys.iter().any(|k| k.as_str() == key));
            let result = DescribeConfigsResult::default()
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name.clone());
            match resource.resource_type {
                RESOURCE_TOPIC => match broker.topic(&name) {
                    Some(topic) => {
                        let entries = topic
                            .config
                            .read()
                            .all_effective(broker.config())
                            .into_iter()
                            .filter(|(k, _, _)| wanted(k))
                            .map(|(k, v, source)| config_entry(k, &v, source.kafka_code(), k == MIRROR_SETTING))
                            .collect();
                        result.with_configs(entries)
                    }
                    None => result
                        .with_error_code(ResponseError::UnknownTopicOrPartition.code())
                        .with_error_message(Some(str_bytes(format!("topic '{name}' does not exist")))),
                },
                RESOURCE_BROKER => {
                    if !name.is_empty() && name != broker.node_id().to_string() {
                        return result
                            .with_error_code(ResponseError::InvalidRequest.code())
                            .with_error_message(Some(str_bytes(format!("this is broker {}", broker.node_id()))));
                    }
                    let entries = broker
                        .config()
                        .entries()
                        .filter(|(k, _)| wanted(k))
                        .map(|(k, v)| config_entry(k, v, if broker.config().is_explicit(k) { 4 } else { 5 }, true))
                        .collect();
                    result.with_configs(entries)
                }
                other => result
                    .with_error_code(ResponseError::InvalidRequest.code())
                    .with_error_message(Some(str_bytes(format!("resource type {other} is not supported")))),
            }
        })
        .collect();
    DescribeConfigsResponse::default().with_results(results)
}

fn static_broker_error() -> BrokerError {
    BrokerError::InvalidRequest("broker settings are static in Sluice: change them in the config file or with --set and restart".into())
}

fn apply_topic_config(broker: &Broker, name: &str, config: TopicConfig, validate_only: bool) -> Result<(), BrokerError> {
    if let Some(topic) = broker.topic(name) {
        topic.check_writable()?;
    }
    blocking(|| broker.set_topic_config(name, config, validate_only))?;
    if !validate_only {
        tracing::info!(topic = name, "altered topic configuration");
    }
    Ok(())
}

/// The outcome of altering one resource, as (error code, error message): topics are altered by
/// `alter_topic`; broker settings are static; other resource types do not exist here.
fn alter_resource(resource_type: i8, alter_topic: impl FnOnce() -> Result<(), BrokerError>) -> (i16, Option<StrBytes>) {
    let outcome = match resource_type {
        RESOURCE_TOPIC => alter_topic(),
        RESOURCE_BROKER => Err(static_broker_error()),
        other => Err(BrokerError::InvalidRequest(format!("resource type {other} is not supported"))),
    };
    match outcome {
        Ok(()) => (0, None),
        Err(error) => (error.code(), Some(str_bytes(error.to_string()))),
    }
}

pub(crate) fn alter_configs(broker: &Broker, request: AlterConfigsRequest) -> AlterConfigsResponse {
    let responses = request
        .resources
        .into_iter()
        .map(|resource| {
            let name = resource.resource_name.to_string();
            // AlterConfigs replaces the whole set of overrides.
            let (code, message) = alter_resource(resource.resource_type, || {
                TopicConfig::from_pairs(resource.configs.iter().filter_map(|c| c.value.as_ref().map(|v| (c.name.as_str(), v.as_str()))))
                    .map_err(|e| BrokerError::InvalidConfig(e.to_string()))
                    .and_then(|config| apply_topic_config(broker, &name, config, request.validate_only))
            });
            AlterConfigsResourceResponse::default()
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name)
                .with_error_code(code)
                .with_error_message(message)
        })
        .collect();
    AlterConfigsResponse::default().with_responses(responses)
}

const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;
const OP_APPEND: i8 = 2;
const OP_SUBTRACT: i8 = 3;

pub(crate) fn incremental_alter_configs(broker: &Broker, request: IncrementalAlterConfigsRequest) -> IncrementalAlterConfigsResponse {
    let responses = request
        .resources
        .into_iter()
        .map(|resource| {
            let name = resource.resource_name.to_string();
            let (code, message) = alter_resource(resource.resource_type, || {
                let topic = broker.topic(&name).ok_or_else(|| BrokerError::UnknownTopic(name.clone()))?;
                let mut config = topic.config.read().clone();
                for change in &resource.configs {
                    let key = change.name.to_string();
                    let value = change.value.as_ref().map(|v| v.to_string()).unwrap_or_default();
                    let current = || config.effective(&key, broker.config()).map(|(v, _)| v).unwrap_or_default();
                    let list = |s: &str| s.split(',').map(str::trim).filter(|p| !p.is_empty()).map(str::to_string).collect::<Vec<_>>();
                    let new_value = match change.config_operation {
                        OP_SET => Some(value),
                        OP_DELETE => None,
                        OP_APPEND => {
                            let mut items = list(&current());
                            items.extend(list(&value).into_iter().filter(|v| !list(&current()).contains(v)));
                            Some(items.join(","))
                        }
                        OP_SUBTRACT => {
                            let remove = list(&value);
                            Some(list(&current()).into_iter().filter(|v| !remove.contains(v)).collect::<Vec<_>>().join(","))
                        }
                        other => return Err(BrokerError::InvalidRequest(format!("unknown config operation {other}"))),
                    };
                    match new_value {
                        Some(v) => {
                            validate_topic_setting(&key, &v).map_err(|e| BrokerError::InvalidConfig(e.to_string()))?;
                            config.overrides.insert(key, v);
                        }
                        None => {
                            config.overrides.remove(&key);
                        }
                    }
                }
                apply_topic_config(broker, &name, config, request.validate_only)
            });
            IncrementalResourceResponse::default()
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name)
                .with_error_code(code)
                .with_error_message(message)
        })
        .collect();
    IncrementalAlterConfigsResponse::default().with_responses(responses)
}
