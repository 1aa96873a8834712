//! What every runtime's admin routes share: reading a JSON body with a clear 400, and running a
//! blocking manager call off the async workers with its error shown as the broker's `ApiError`.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use sluice_broker::host::ApiError;

use crate::RuntimeError;

/// The request body, or a 400 that says what is wrong with it.
pub fn body<T>(payload: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    payload.map(|Json(v)| v).map_err(|e| ApiError::bad_request(format!("bad request body: {}", e.body_text())))
}

/// Runs `f` (file I/O, compiling, locks) on a blocking thread.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, RuntimeError> + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ApiError::internal(e.to_string()))?.map_err(ApiError::from)
}
