//! The admin HTTP API on `--admin-listen`: health, Prometheus metrics, and JSON endpoints for topics
//! and consumer groups. It calls the same `Broker` operations as the Kafka handlers.
//!
//! Every error is JSON (`{"error": "...", "code": "..."}`) with a fitting status; a malformed body
//! is a 400 that says what was wrong, never a 500. Bodies are capped at [`ADMIN_BODY_BYTES_MAX`].

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus::Encoder;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::broker::Broker;
use crate::config::TopicConfig;
use crate::error::BrokerError;
use crate::groups::decode_assignment;

/// Admin request bodies are small JSON documents.
pub const ADMIN_BODY_BYTES_MAX: usize = 1024 * 1024;

pub(crate) fn router(broker: Arc<Broker>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/cluster", get(describe_cluster))
        .route("/v1/topics", get(list_topics).post(create_topic))
        .route("/v1/topics/{name}", get(describe_topic).delete(delete_topic))
        .route("/v1/groups", get(list_groups))
        .route("/v1/groups/{id}", get(describe_group).delete(delete_group))
        .route("/v1/transactions", get(list_transactions))
        .route("/v1/transactions/{id}", get(describe_transaction))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint; see the README's admin API section") })
        .layer(DefaultBodyLimit::max(ADMIN_BODY_BYTES_MAX))
        .with_state(broker)
}

/// An admin API error: a JSON body `{"error": "<sentence saying what to do>", "code": "<machine-readable>"}`
/// with an HTTP status. The one REST error type of the broker and of every runtime's routes
/// (re-exported as `host::ApiError`).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into() }
    }

    /// 400 `invalid_request`.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    /// 404 with `code` naming what was not found (`unknown_transform`, …).
    pub fn not_found(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, code, message)
    }

    /// 409 `conflict`.
    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// 500 `internal`.
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

impl From<BrokerError> for ApiError {
    fn from(error: BrokerError) -> ApiError {
        let status = StatusCode::from_u16(error.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let code = match status {
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::CONFLICT => "conflict",
            StatusCode::BAD_REQUEST => "invalid",
            _ => "internal",
        };
        ApiError::new(status, code, error.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message, "code": self.code }))).into_response()
    }
}

/// A JSON request body, or a 400 `bad_body` that says what was wrong with it.
pub fn json_body<T>(payload: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    payload.map(|Json(v)| v).map_err(|rejection| ApiError::new(StatusCode::BAD_REQUEST, "bad_body", rejection.body_text()))
}

async fn health(State(broker): State<Arc<Broker>>) -> Json<serde_json::Value> {
    Json(json!({ "status": "ok", "cluster_id": broker.cluster_id(), "node_id": broker.node_id() }))
}

/// GET /v1/cluster: this node's view of the controller quorum and the brokers registered with it.
async fn describe_cluster(State(broker): State<Arc<Broker>>) -> Response {
    let Some(controller) = broker.controller() else {
        return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "starting", "the controller has not started yet").into_response();
    };
    let (brokers, partitions) = controller.with_metadata(|m, _| {
        let brokers: Vec<serde_json::Value> = m
            .brokers
            .values()
            .map(|b| {
                json!({
                    "id": b.registration.broker_id,
                    "host": b.registration.host,
                    "port": b.registration.port,
                    "rack": b.registration.rack,
                    "epoch": b.epoch,
                    "state": if b.fenced { "fenced" } else { "live" },
                })
            })
            .collect();
        let partitions = json!({
            "topics": m.topics.len(),
            "partitions": m.topics.values().map(|t| t.partitions.len()).sum::<usize>(),
            "leaderless": m.offline_partitions(),
            "under_replicated": m.under_replicated_partitions(),
            "reassigning": m.reassigning_partitions(),
        });
        (brokers, partitions)
    });
    Json(json!({
        "cluster_id": broker.cluster_id(),
        "node_id": broker.node_id(),
        "caught_up": broker.caught_up(),
        "controller": controller.status(),
        "brokers": brokers,
        "partitions": partitions,
    }))
    .into_response()
}

async fn metrics(State(broker): State<Arc<Broker>>) -> Response {
    refresh_state_gauges(&broker);
    let mut text = Vec::new();
    if let Err(error) = prometheus::TextEncoder::new().encode(&broker.metrics().registry.gather(), &mut text) {
        return ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", error.to_string()).into_response();
    }
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// Gauges that describe state are computed at scrape time rather than kept up to date per request.
fn refresh_state_gauges(broker: &Broker) {
    let metrics = broker.metrics();
    for topic in broker.topics() {
        for partition in topic.partitions.read().iter() {
            let labels = [topic.name.as_str(), &partition.index.to_string()];
            let stats = partition.stats();
            metrics.log_size_bytes.with_label_values(&labels).set(stats.size_bytes as i64);
            metrics.log_end_offset.with_label_values(&labels).set(stats.log_end_offset);
            metrics.unstable_records.with_label_values(&labels).set(partition.high_watermark() - partition.last_stable_offset());
        }
    }
    let mut counters = crate::transactions::TxnCounters::default();
    let mut ongoing = 0;
    broker.each_coordinators(|c| {
        let more = c.transactions.counters();
        counters.committed += more.committed;
        counters.aborted += more.aborted;
        counters.timed_out += more.timed_out;
        counters.fenced += more.fenced;
        ongoing += c.transactions.ongoing_count();
    });
    for (outcome, value) in
        [("committed", counters.committed), ("aborted", counters.aborted), ("timed_out", counters.timed_out), ("fenced", counters.fenced)]
    {
        metrics.transactions_finished.with_label_values(&[outcome]).set(value as i64);
    }
    metrics.transactions_ongoing.set(ongoing as i64);
    if let Some(controller) = broker.controller() {
        let status = controller.status();
        let (registered, fenced) = controller.with_metadata(|m, _| (m.brokers.len(), m.brokers.values().filter(|b| b.fenced).count()));
        metrics.controller_is_leader.set(i64::from(status.leader_id == Some(status.node_id)));
        metrics.controller_term.set(status.term as i64);
        metrics.registered_brokers.set(registered as i64);
        metrics.fenced_brokers.set(fenced as i64);
    }
    metrics.request_bytes_in_flight.set(broker.request_bytes().used() as i64);
    metrics.fetch_reply_bytes_unsent.set(broker.fetch_reply_bytes().used() as i64);
    metrics.group_lag.reset();
    let groups = group_ids(broker);
    metrics.groups.set(groups.len() as i64);
    for group in groups {
        for lag in group_lag(broker, &group) {
            metrics.group_lag.with_label_values(&[group.as_str(), lag.topic.as_str(), &lag.partition.to_string()]).set(lag.lag);
        }
    }
}

/// The groups whose coordinator is here: this broker's plugins', and in a cluster the clients' while
/// it coordinates them.
fn group_ids(broker: &Broker) -> Vec<String> {
    let mut ids = Vec::new();
    broker.each_coordinators(|c| ids.extend(c.groups.list().into_iter().map(|(g, _, _)| g).chain(c.offsets.groups())));
    ids.sort();
    ids.dedup();
    ids
}

#[derive(Serialize)]
struct PartitionLag {
    topic: String,
    partition: i32,
    committed_offset: i64,
    high_watermark: i64,
    lag: i64,
    metadata: Option<String>,
}

fn group_lag(broker: &Broker, group: &str) -> Vec<PartitionLag> {
    let Ok(coordinators) = broker.coordinators() else { return Vec::new() };
    coordinators
        .offsets
        .group(group)
        .into_iter()
        .map(|((topic, partition), committed)| {
            let high_watermark = broker.partition(&topic, partition).map(|p| p.high_watermark()).unwrap_or(-1);
            PartitionLag {
                lag: if high_watermark >= 0 { (high_watermark - committed.offset).max(0) } else { 0 },
                topic,
                partition,
                committed_offset: committed.offset,
                high_watermark,
                metadata: committed.metadata,
            }
        })
        .collect()
}

fn topic_summary(broker: &Broker, topic: &crate::topic::Topic) -> serde_json::Value {
    json!({
        "name": topic.name.as_str(),
        "id": topic.id.to_string(),
        "partitions": topic.partition_count(),
        "replication_factor": broker.replication_factor(topic),
        "configs": topic.config.read().overrides,
        "node_id": broker.node_id(),
    })
}

async fn list_topics(State(broker): State<Arc<Broker>>) -> Json<serde_json::Value> {
    Json(json!(broker.topics().iter().map(|t| topic_summary(&broker, t)).collect::<Vec<_>>()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateTopicBody {
    name: String,
    partitions: Option<i32>,
    #[serde(default)]
    configs: BTreeMap<String, String>,
    #[serde(default)]
    replication_factor: Option<i16>,
}

impl CreateTopicBody {
    /// The handler's checks before it calls the broker; the topic's settings when they pass.
    fn topic_config(&self) -> Result<TopicConfig, BrokerError> {
        if let Some(factor) = self.replication_factor.filter(|&r| r < 1 || r as usize > sluice_cluster::REPLICAS_MAX) {
            return Err(BrokerError::InvalidReplicationFactor(format!(
                "{factor}: a partition has 1 to {} replicas",
                sluice_cluster::REPLICAS_MAX
            )));
        }
        TopicConfig::from_pairs(self.configs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .map_err(|e| BrokerError::InvalidConfig(e.to_string()))
    }
}

/// What `POST /v1/topics` does with a body before the broker sees it: axum's JSON extraction, the
/// handler's checks and the topic-name rules. The fuzz target in `fuzz/` calls it; an `Err` is the
/// 400 a client gets.
pub fn check_create_topic_body(body: &[u8]) -> Result<(), BrokerError> {
    let Json(request) =
        Json::<CreateTopicBody>::from_bytes(body).map_err(|rejection| BrokerError::InvalidRequest(rejection.body_text()))?;
    request.topic_config()?;
    crate::topic::TopicName::parse(&request.name).map(drop)
}

async fn create_topic(
    State(broker): State<Arc<Broker>>,
    payload: Result<Json<CreateTopicBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let request = json_body(payload)?;
    let config = request.topic_config()?;
    let broker_for_create = Arc::clone(&broker);
    let factor = request.replication_factor.map(|r| r as usize);
    let created = tokio::task::spawn_blocking(move || {
        broker_for_create.create_topic_placed(&request.name, request.partitions, None, factor, config, false)
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))??;
    tracing::info!(topic = created.topic.name.as_str(), partitions = created.topic.partition_count(), "created topic (admin API)");
    Ok((StatusCode::CREATED, Json(topic_summary(&broker, &created.topic))).into_response())
}

async fn describe_topic(State(broker): State<Arc<Broker>>, Path(name): Path<String>) -> Result<Json<serde_json::Value>, ApiError> {
    let topic = broker.topic(&name).ok_or_else(|| BrokerError::UnknownTopic(name.clone()))?;
    let partitions: Vec<serde_json::Value> = topic
        .partitions
        .read()
        .iter()
        .map(|p| {
            let stats = p.stats();
            let (replicas, isr) = {
                let set = p.replica_set();
                if set.replicas.is_empty() {
                    (vec![broker.node_id()], vec![broker.node_id()])
                } else {
                    (set.replicas.clone(), set.isr.clone())
                }
            };
            json!({
                "partition": p.index,
                // Held here: led by this broker, or by another (this copy follows it), or by nobody.
                "leader": if p.is_leader() { broker.node_id() } else { -1 },
                "leader_epoch": p.leader_epoch(),
                "replicas": replicas,
                "isr": isr,
                "log_start_offset": stats.log_start_offset,
                "high_watermark": p.high_watermark(),
                "log_end_offset": stats.log_end_offset,
                "size_bytes": stats.size_bytes,
                "segments": stats.segments,
            })
        })
        .collect();
    let configs: Vec<serde_json::Value> = topic
        .config
        .read()
        .all_effective(broker.config())
        .into_iter()
        .map(|(name, value, source)| json!({ "name": name, "value": value, "source": format!("{source:?}") }))
        .collect();
    let mut summary = topic_summary(&broker, &topic);
    summary["partition_details"] = json!(partitions);
    summary["effective_configs"] = json!(configs);
    Ok(Json(summary))
}

async fn delete_topic(State(broker): State<Arc<Broker>>, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
    tokio::task::spawn_blocking(move || broker.delete_topic(&name)).await.map_err(|e| ApiError::internal(e.to_string()))??;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_groups(State(broker): State<Arc<Broker>>) -> Json<serde_json::Value> {
    let groups: Vec<serde_json::Value> = group_ids(&broker)
        .into_iter()
        .map(|id| {
            let view = broker.coordinators().ok().and_then(|c| c.groups.describe(&id));
            let lag: i64 = group_lag(&broker, &id).iter().map(|l| l.lag).sum();
            json!({
                "group_id": id,
                "state": view.as_ref().map_or("Empty", |v| v.state.name()),
                "protocol_type": view.as_ref().map_or("consumer".to_string(), |v| v.protocol_type.clone()),
                "members": view.as_ref().map_or(0, |v| v.members.len()),
                "total_lag": lag,
            })
        })
        .collect();
    Json(json!(groups))
}

async fn describe_group(State(broker): State<Arc<Broker>>, Path(id): Path<String>) -> Result<Json<serde_json::Value>, ApiError> {
    let view = coordinators(&broker)?.groups.describe(&id);
    let offsets = group_lag(&broker, &id);
    if view.is_none() && offsets.is_empty() {
        return Err(BrokerError::UnknownGroup(id).into());
    }
    let members: Vec<serde_json::Value> = view
        .as_ref()
        .map(|v| {
            v.members
                .iter()
                .map(|m| {
                    let assignment: Vec<serde_json::Value> = decode_assignment(&m.assignment).into_iter().map(|(t, ps)| json!({ "topic": t, "partitions": ps })).collect();
                    json!({ "member_id": m.member_id, "client_id": m.client_id, "host": m.client_host, "group_instance_id": m.group_instance_id, "assignment": assignment })
                })
                .collect()
        })
        .unwrap_or_default();
    let total_lag: i64 = offsets.iter().map(|l| l.lag).sum();
    Ok(Json(json!({
        "group_id": id,
        "state": view.as_ref().map_or("Empty", |v| v.state.name()),
        "generation": view.as_ref().map_or(-1, |v| v.generation),
        "protocol_type": view.as_ref().map_or(String::new(), |v| v.protocol_type.clone()),
        "protocol": view.as_ref().map_or(String::new(), |v| v.protocol_name.clone()),
        "members": members,
        "offsets": offsets,
        "total_lag": total_lag,
    })))
}

async fn delete_group(State(broker): State<Arc<Broker>>, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    let coordinators = coordinators(&broker)?;
    tokio::task::spawn_blocking(move || coordinators.groups.delete_group(&id)).await.map_err(|e| ApiError::internal(e.to_string()))??;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_transactions(State(broker): State<Arc<Broker>>) -> Json<serde_json::Value> {
    let mut transactions = Vec::new();
    broker.each_coordinators(|c| transactions.extend(c.transactions.list()));
    Json(serde_json::json!({ "transactions": transactions }))
}

/// The coordinators of groups and transactional ids (the plugins' too), or an error naming the broker
/// that has them.
fn coordinators(broker: &Broker) -> Result<Arc<crate::coordinator::Coordinators>, ApiError> {
    broker.coordinators().map_err(|error| {
        let whereabouts = match broker.coordinator_node() {
            Some(node) => format!("broker {node} coordinates the cluster's groups and transactions: ask its admin API"),
            None => "the cluster's coordinator is not elected yet: retry in a moment".to_string(),
        };
        ApiError::new(StatusCode::MISDIRECTED_REQUEST, "not_coordinator", format!("{error:?}: {whereabouts}"))
    })
}

async fn describe_transaction(State(broker): State<Arc<Broker>>, Path(id): Path<String>) -> Result<Json<serde_json::Value>, ApiError> {
    match coordinators(&broker)?.transactions.describe(&id) {
        Some(view) => Ok(Json(serde_json::to_value(view).unwrap_or_default())),
        None => Err(ApiError::new(StatusCode::NOT_FOUND, "unknown_transactional_id", format!("no transactional id '{id}'"))),
    }
}
