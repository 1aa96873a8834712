//! `ConnectError`, the one error type of the connector runtime, and how it looks on the wire: Kafka
//! Connect's `{"error_code": <HTTP status>, "message": "..."}` with the same status Connect would use
//! (404 for an unknown connector, 409 for one that already exists, 400 for a bad request or a
//! connector in the wrong state, 500 for what went wrong inside).

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use sluice_broker::host::HostError;
use sluice_runtime::RuntimeError;

/// What kind of failure a `sql` call met, so that a guest (and the sink driver) can tell a retriable
/// outage from a row the target refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqlFailure {
    /// The connection name is not one the connector's config declares.
    UnknownConnection,
    /// The call broke one of the capability's limits (rows, bytes, parameters, open connections…).
    Limit,
    /// The database could not be reached or the connection broke: worth retrying later.
    Unavailable,
    /// The statement was refused (syntax, constraint, type); `sqlstate` says which. Retrying the
    /// same statement gives the same answer.
    Refused,
    /// The database timed out the statement or the call took longer than the capability allows.
    TimedOut,
    /// A value the capability cannot represent (a type with no mapping); cast it in SQL.
    Unsupported,
    /// The call does not make sense (unknown handle, commit without a transaction…).
    Misuse,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// A request or a configuration that does not make sense; the message says what to change.
    #[error("{0}")]
    BadRequest(String),
    #[error("Connector {0} not found")]
    ConnectorNotFound(String),
    #[error("Connector {0} already exists")]
    ConnectorExists(String),
    /// A connector config that failed validation: every error, key by key.
    #[error("Connector configuration is invalid and contains the following {} error(s):\n{}\nYou can also find the above list of errors at the endpoint `/connector-plugins/{{connectorType}}/config/validate`", .0.len(), .0.join("\n"))]
    InvalidConfig(Vec<String>),
    #[error("{0}")]
    NotFound(String),
    /// An operation the connector's state does not allow (offsets of a running connector…).
    #[error("{0}")]
    WrongState(String),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Host(#[from] HostError),
    /// A file of the runtime's own could not be read or written.
    #[error("{path}: {message}")]
    File { path: String, message: String },
    /// A `sql` capability call failed.
    #[error("sql: {message}")]
    Sql { failure: SqlFailure, sqlstate: Option<String>, message: String },
}

impl ConnectError {
    pub fn file(path: &std::path::Path, error: impl std::fmt::Display) -> ConnectError {
        ConnectError::File { path: path.display().to_string(), message: error.to_string() }
    }

    pub fn sql(failure: SqlFailure, message: impl Into<String>) -> ConnectError {
        ConnectError::Sql { failure, sqlstate: None, message: message.into() }
    }

    /// The HTTP status Kafka Connect answers with for this kind of failure.
    pub fn status(&self) -> StatusCode {
        match self {
            ConnectError::BadRequest(_) | ConnectError::InvalidConfig(_) | ConnectError::WrongState(_) => StatusCode::BAD_REQUEST,
            ConnectError::ConnectorNotFound(_) | ConnectError::NotFound(_) => StatusCode::NOT_FOUND,
            ConnectError::ConnectorExists(_) => StatusCode::CONFLICT,
            ConnectError::Runtime(RuntimeError::Invalid(_)) => StatusCode::BAD_REQUEST,
            ConnectError::Runtime(RuntimeError::NotFound { .. }) => StatusCode::NOT_FOUND,
            ConnectError::Host(HostError::UnknownTopic(_) | HostError::TopicRefused(_) | HostError::InvalidArgument(_)) => {
                StatusCode::BAD_REQUEST
            }
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// For the `sql` capability: whether trying the same call later may succeed.
    pub fn is_retriable(&self) -> bool {
        matches!(self, ConnectError::Sql { failure: SqlFailure::Unavailable | SqlFailure::TimedOut, .. })
    }
}

impl From<ConnectError> for RuntimeError {
    fn from(error: ConnectError) -> RuntimeError {
        match error {
            ConnectError::Runtime(inner) => inner,
            ConnectError::Host(inner) => RuntimeError::Host(inner),
            other => RuntimeError::Invalid(other.to_string()),
        }
    }
}

/// Kafka Connect's error body.
pub fn error_body(status: StatusCode, message: &str) -> Response {
    (status, Json(serde_json::json!({ "error_code": status.as_u16(), "message": message }))).into_response()
}

impl IntoResponse for ConnectError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %self, "connect REST request failed");
        }
        error_body(status, &self.to_string())
    }
}
