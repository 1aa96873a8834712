//! `/v1/transforms` on the broker's admin API.
//!
//! | method and path | what |
//! |---|---|
//! | `GET /v1/transforms` | every deployment's status |
//! | `POST /v1/transforms` | deploy or redeploy: the spec's fields plus `module_base64` (the `.wasm` component) or `module` (a name in the plugin registry, `/v1/plugins`) |
//! | `GET /v1/transforms/{name}` | state, error, lag and counts per partition, recent log lines |
//! | `PATCH /v1/transforms/{name}` | `{"memory_bytes": .., "cpu_ms_per_call": ..}`: new limits, no restart |
//! | `POST /v1/transforms/{name}/pause`, `/resume` | pause; resume (also retries a failed partition) |
//! | `DELETE /v1/transforms/{name}` | stop and forget (output topics and committed positions stay) |

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use serde::Deserialize;

use sluice_runtime::ApiError;
use sluice_runtime::http::{blocking, body};

use crate::manager::{ModuleSource, TransformManager, TransformStatus};
use crate::spec::TransformSpec;

/// Largest deploy body: the module limit in base64 plus room for the spec.
pub const DEPLOY_BODY_BYTES_MAX: usize = sluice_wasm::MODULE_BYTES_MAX / 3 * 4 + 1024 * 1024;
/// Largest body of the other requests.
const SMALL_BODY_BYTES_MAX: usize = 64 * 1024;

#[derive(Deserialize)]
struct DeployRequest {
    #[serde(flatten)]
    spec: TransformSpec,
    module_base64: Option<String>,
    module: Option<String>,
}

#[derive(Deserialize)]
struct LimitsRequest {
    memory_bytes: Option<usize>,
    cpu_ms_per_call: Option<u64>,
}

pub fn router(manager: Arc<TransformManager>) -> Router {
    Router::new()
        .route("/v1/transforms", get(list).post(deploy).layer(DefaultBodyLimit::max(DEPLOY_BODY_BYTES_MAX)))
        .route("/v1/transforms/{name}", get(status).delete(delete).patch(limits).layer(DefaultBodyLimit::max(SMALL_BODY_BYTES_MAX)))
        .route("/v1/transforms/{name}/pause", post(pause))
        .route("/v1/transforms/{name}/resume", post(resume))
        .with_state(manager)
}

async fn list(State(manager): State<Arc<TransformManager>>) -> Json<serde_json::Value> {
    let transforms = tokio::task::spawn_blocking(move || manager.list()).await.unwrap_or_default();
    Json(serde_json::json!({ "transforms": transforms }))
}

async fn deploy(
    State(manager): State<Arc<TransformManager>>,
    payload: Result<Json<DeployRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<TransformStatus>), ApiError> {
    let request = body(payload)?;
    let source = match (request.module_base64, request.module) {
        (Some(encoded), None) => ModuleSource::Bytes(
            base64::engine::general_purpose::STANDARD
                .decode(encoded.as_bytes())
                .map_err(|e| ApiError::bad_request(format!("module_base64 is not base64: {e}")))?,
        ),
        (None, Some(name)) => ModuleSource::Registered(name),
        _ => {
            return Err(ApiError::bad_request(
                "give the module as module_base64 (the component) or module (a name in /v1/plugins), not both",
            ));
        }
    };
    let status = blocking(move || manager.deploy(request.spec, source)).await?;
    Ok((StatusCode::CREATED, Json(status)))
}

async fn status(State(manager): State<Arc<TransformManager>>, Path(name): Path<String>) -> Result<Json<TransformStatus>, ApiError> {
    blocking(move || manager.status(&name)).await.map(Json)
}

async fn delete(State(manager): State<Arc<TransformManager>>, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
    blocking(move || manager.delete(&name)).await.map(|()| StatusCode::NO_CONTENT)
}

async fn limits(
    State(manager): State<Arc<TransformManager>>,
    Path(name): Path<String>,
    payload: Result<Json<LimitsRequest>, JsonRejection>,
) -> Result<Json<TransformStatus>, ApiError> {
    let request = body(payload)?;
    blocking(move || manager.set_limits(&name, request.memory_bytes, request.cpu_ms_per_call)).await.map(Json)
}

async fn pause(State(manager): State<Arc<TransformManager>>, Path(name): Path<String>) -> Result<Json<TransformStatus>, ApiError> {
    blocking(move || manager.set_paused(&name, true)).await.map(Json)
}

async fn resume(State(manager): State<Arc<TransformManager>>, Path(name): Path<String>) -> Result<Json<TransformStatus>, ApiError> {
    blocking(move || manager.set_paused(&name, false)).await.map(Json)
}
