//! The runtime's error type, and its HTTP face (`ApiError`) at the edge.

use axum::http::StatusCode;
use sluice_broker::host::{ApiError, HostError};
use sluice_wasm::PluginError;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The broker refused or failed an operation (storage, fencing, a missing topic).
    #[error(transparent)]
    Host(#[from] HostError),
    /// Loading, instantiating or calling a module failed.
    #[error(transparent)]
    Plugin(#[from] PluginError),
    /// A request or stored spec that does not make sense; the message says what to change.
    #[error("{0}")]
    Invalid(String),
    /// `what` (a transform, a module, a connector…) named `name` does not exist.
    #[error("no {what} named '{name}'")]
    NotFound { what: &'static str, name: String },
    /// A file of the runtime's own could not be read or written.
    #[error("{path}: {message}")]
    File { path: String, message: String },
    /// The operation would break something that uses the resource; the message names the users.
    #[error("{0}")]
    InUse(String),
    /// A task thread could not be started.
    #[error("cannot start a thread: {0}")]
    Thread(String),
}

impl RuntimeError {
    pub fn file(path: &std::path::Path, error: impl std::fmt::Display) -> RuntimeError {
        RuntimeError::File { path: path.display().to_string(), message: error.to_string() }
    }

    /// The admin API's answer for this error.
    pub fn to_api(&self) -> ApiError {
        match self {
            RuntimeError::Invalid(message) => ApiError::bad_request(message.clone()),
            RuntimeError::InUse(message) => ApiError::conflict(message.clone()),
            RuntimeError::NotFound { what, .. } => ApiError::new(StatusCode::NOT_FOUND, not_found_code(what), format!("{self}")),
            RuntimeError::Host(HostError::UnknownTopic(_) | HostError::TopicRefused(_) | HostError::InvalidArgument(_)) => {
                ApiError::bad_request(self.to_string())
            }
            RuntimeError::Plugin(error) => {
                let code = match error {
                    PluginError::InvalidModule(_) => "invalid_module",
                    PluginError::WrongWorld(_) => "wrong_world",
                    PluginError::InitFailed(_) => "init_failed",
                    PluginError::InvalidRequest(_) => "invalid_request",
                    _ => "module_error",
                };
                ApiError::new(StatusCode::BAD_REQUEST, code, error.to_string())
            }
            _ => ApiError::internal(self.to_string()),
        }
    }
}

fn not_found_code(what: &str) -> &'static str {
    match what {
        "transform" => "unknown_transform",
        "module" => "unknown_module",
        "connector" => "unknown_connector",
        "mirror" => "unknown_mirror",
        _ => "not_found",
    }
}

impl From<RuntimeError> for ApiError {
    fn from(error: RuntimeError) -> ApiError {
        error.to_api()
    }
}
