//! `/v1/mirrors` on the broker's admin API.
//!
//! | method and path | what |
//! |---|---|
//! | `GET /v1/mirrors` | every mirror's status |
//! | `POST /v1/mirrors` | create: `{"name", "source_bootstrap": ["host:port"], "topics": "regex", "exclude"?, "source_alias"?, "groups"?, "mode"?: "preserve" \| "rename", "policy"?: "default" \| "identity" \| <mirror-policy module>, "policy_config"?: {..}}` |
//! | `GET /v1/mirrors/{name}` | state, the source's reachability, per partition: lag in records and ms, record age, bytes/s |
//! | `POST /v1/mirrors/{name}/pause`, `/resume` | pause; resume (also retries after a failure) |
//! | `POST /v1/mirrors/{name}/promote` | `{"topics": [..]}` or `{}` for all: make mirror topics normal, writable topics |
//! | `DELETE /v1/mirrors/{name}` | stop the mirror and forget it; its topics are promoted (they keep their data) |

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use sluice_runtime::ApiError;
use sluice_runtime::http::{blocking, body};

use crate::manager::{MirrorManager, MirrorStatus, PromoteOutcome};
use crate::spec::MirrorSpec;

/// Largest request body.
pub const BODY_BYTES_MAX: usize = 64 * 1024;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PromoteRequest {
    topics: Option<Vec<String>>,
}

pub fn router(manager: Arc<MirrorManager>) -> Router {
    Router::new()
        .route("/v1/mirrors", get(list).post(create))
        .route("/v1/mirrors/{name}", get(status).delete(delete))
        .route("/v1/mirrors/{name}/pause", post(pause))
        .route("/v1/mirrors/{name}/resume", post(resume))
        .route("/v1/mirrors/{name}/promote", post(promote))
        .layer(DefaultBodyLimit::max(BODY_BYTES_MAX))
        .with_state(manager)
}

async fn list(State(manager): State<Arc<MirrorManager>>) -> Json<serde_json::Value> {
    let mirrors = tokio::task::spawn_blocking(move || manager.list()).await.unwrap_or_default();
    Json(serde_json::json!({ "mirrors": mirrors }))
}

async fn create(
    State(manager): State<Arc<MirrorManager>>,
    payload: Result<Json<MirrorSpec>, JsonRejection>,
) -> Result<(StatusCode, Json<MirrorStatus>), ApiError> {
    let spec = body(payload)?;
    let status = blocking(move || manager.create(spec)).await?;
    Ok((StatusCode::CREATED, Json(status)))
}

async fn status(State(manager): State<Arc<MirrorManager>>, Path(name): Path<String>) -> Result<Json<MirrorStatus>, ApiError> {
    blocking(move || manager.status(&name)).await.map(Json)
}

async fn delete(State(manager): State<Arc<MirrorManager>>, Path(name): Path<String>) -> Result<Json<PromoteOutcome>, ApiError> {
    blocking(move || manager.delete(&name)).await.map(Json)
}

async fn pause(State(manager): State<Arc<MirrorManager>>, Path(name): Path<String>) -> Result<Json<MirrorStatus>, ApiError> {
    blocking(move || manager.set_paused(&name, true)).await.map(Json)
}

async fn resume(State(manager): State<Arc<MirrorManager>>, Path(name): Path<String>) -> Result<Json<MirrorStatus>, ApiError> {
    blocking(move || manager.set_paused(&name, false)).await.map(Json)
}

async fn promote(
    State(manager): State<Arc<MirrorManager>>,
    Path(name): Path<String>,
    payload: Result<Json<PromoteRequest>, JsonRejection>,
) -> Result<Json<PromoteOutcome>, ApiError> {
    let request = body(payload)?;
    blocking(move || manager.promote(&name, request.topics)).await.map(Json)
}
