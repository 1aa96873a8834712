//! The client's one error type. Each variant says where (which broker address, which API, which
//! topic or group) and keeps the Kafka error code when the cluster refused something, so callers can
//! react to the code and people can read the message. [`ClientError::is_unreachable`] tells "the
//! cluster could not be reached" from "the cluster said no"; the CLI turns that into its exit code 3.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::messages::ApiKey;

use crate::codes::error_label;

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// A Kafka error code with the broker's message, when it sent one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaError {
    pub code: i16,
    pub message: Option<String>,
}

impl KafkaError {
    pub fn new(code: i16, message: Option<&str>) -> KafkaError {
        KafkaError { code, message: message.filter(|m| !m.is_empty()).map(str::to_string) }
    }

    /// `None` for code 0 (no error).
    pub fn from_code(code: i16, message: Option<&str>) -> Option<KafkaError> {
        (code != 0).then(|| KafkaError::new(code, message))
    }
}

impl std::fmt::Display for KafkaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.message {
            Some(message) => write!(f, "{}: {message}", error_label(self.code)),
            None => f.write_str(&error_label(self.code)),
        }
    }
}

impl std::error::Error for KafkaError {}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    #[error("no bootstrap brokers given")]
    NoBrokers,

    /// The TCP connection was refused or failed.
    #[error("cannot connect to broker at {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: Arc<io::Error>,
    },

    #[error("connecting to broker at {addr} timed out after {}s", timeout.as_secs())]
    ConnectTimeout { addr: String, timeout: Duration },

    /// A peer that accepts connections but never answers (a stuck process, a firewall that swallows
    /// packets, not a Kafka listener).
    #[error(
        "broker at {addr} accepted the connection but sent no ApiVersions response within {}s \
         (is that a Kafka listener, and is the broker healthy?)",
        timeout.as_secs()
    )]
    HandshakeTimeout { addr: String, timeout: Duration },

    #[error("broker at {addr} sent no {api:?} response within {}s", timeout.as_secs())]
    ResponseTimeout { addr: String, api: ApiKey, timeout: Duration },

    /// The connection closed, was reset or failed after it was open; requests on it are lost.
    #[error("{reason}")]
    ConnectionLost { addr: String, reason: String },

    #[error("no bootstrap broker reachable:\n  {}", failures.join("\n  "))]
    NoBootstrapReachable { failures: Vec<String> },

    /// The peer sent something no Kafka broker would: a bad frame length, a wrong correlation id, an
    /// undecodable response, HTTP.
    #[error("{detail}")]
    Protocol { addr: String, detail: String },

    /// A request this client could not encode (a field the negotiated version cannot carry).
    #[error("encoding a {api:?} v{version} request failed: {detail}")]
    Encode { api: ApiKey, version: i16, detail: String },

    #[error("a {api:?} request would be {bytes} bytes, over the {limit}-byte limit brokers accept")]
    RequestTooLarge { api: ApiKey, bytes: usize, limit: usize },

    #[error("broker at {addr} does not support the {api:?} API, which this client needs")]
    UnsupportedApi { addr: String, api: ApiKey },

    #[error("broker at {addr} supports {api:?} v{broker_min}-v{broker_max}, but this client implements only v{ours_min}-v{ours_max}")]
    NoCommonVersion { addr: String, api: ApiKey, broker_min: i16, broker_max: i16, ours_min: i16, ours_max: i16 },

    /// The cluster answered with an error code.
    #[error("{operation} failed: {error}")]
    Kafka { operation: String, error: KafkaError },

    #[error("topic `{topic}` does not exist on {addr}")]
    UnknownTopic { topic: String, addr: String },

    #[error("topic `{topic}` has no partition {partition}")]
    UnknownPartition { topic: String, partition: i32 },

    #[error("partition {partition} of `{topic}` has no leader right now; try again in a moment")]
    NoLeader { topic: String, partition: i32 },

    #[error("broker {node_id} is missing from the cluster metadata")]
    UnknownBroker { node_id: i32 },

    #[error("topic `{topic}` still has partitions without a leader after {}s", timeout.as_secs())]
    TopicNotReady { topic: String, timeout: Duration },

    #[error("no coordinator became available for group `{group}` on {addr}")]
    CoordinatorNotAvailable { group: String, addr: String },

    /// A commit or heartbeat refused because the group moved on (rebalancing, or this member was
    /// evicted): the member must rejoin before it can commit again.
    #[error("{operation} in group `{group}` needs a rejoin: {error}")]
    RejoinNeeded { group: String, operation: String, error: KafkaError },

    #[error("group `{group}` did not settle after {attempts} join attempts (last: {last})")]
    GroupUnsettled { group: String, attempts: u32, last: String },

    /// What a group member sent or was assigned could not be used.
    #[error("group `{group}`: {detail}")]
    Group { group: String, detail: String },

    /// Record batches that could not be encoded or decoded.
    #[error("{detail}")]
    Records { detail: String },

    /// A request this client refuses to send (a bad argument from the caller).
    #[error("{0}")]
    InvalidRequest(String),
}

impl ClientError {
    /// True when the cluster could not be reached at all (refused, timed out, connection lost, no
    /// response in time), as opposed to a cluster that answered with an error.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            ClientError::Connect { .. }
                | ClientError::ConnectTimeout { .. }
                | ClientError::HandshakeTimeout { .. }
                | ClientError::ResponseTimeout { .. }
                | ClientError::ConnectionLost { .. }
                | ClientError::NoBootstrapReachable { .. }
        )
    }

    /// True when not even a TCP connection could be made: usually nothing listens at the address.
    pub fn is_connect_failure(&self) -> bool {
        matches!(self, ClientError::Connect { .. } | ClientError::ConnectTimeout { .. })
    }

    /// The Kafka error code, when the cluster answered with one.
    pub fn kafka_code(&self) -> Option<i16> {
        match self {
            ClientError::Kafka { error, .. } | ClientError::RejoinNeeded { error, .. } => Some(error.code),
            _ => None,
        }
    }

    pub(crate) fn kafka(operation: impl Into<String>, error: KafkaError) -> ClientError {
        ClientError::Kafka { operation: operation.into(), error }
    }

    pub(crate) fn protocol(addr: &str, detail: impl Into<String>) -> ClientError {
        ClientError::Protocol { addr: addr.to_string(), detail: detail.into() }
    }

    /// An I/O error on an open connection, phrased by what it means.
    pub(crate) fn io(error: io::Error, addr: &str, doing: &str) -> ClientError {
        let reason = match error.kind() {
            io::ErrorKind::UnexpectedEof => format!("broker at {addr} closed the connection"),
            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => format!("broker at {addr} reset the connection ({error})"),
            _ => format!("{doing} broker at {addr} failed: {error}"),
        };
        ClientError::ConnectionLost { addr: addr.to_string(), reason }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreachable_is_told_from_refused() {
        let refused = ClientError::Connect { addr: "h:1".into(), source: Arc::new(io::Error::from(io::ErrorKind::ConnectionRefused)) };
        assert!(refused.is_unreachable() && refused.is_connect_failure());
        assert!(refused.to_string().starts_with("cannot connect to broker at h:1"));
        let said_no = ClientError::kafka("creating topic `t`", KafkaError::new(36, Some("exists")));
        assert!(!said_no.is_unreachable());
        assert_eq!(said_no.kafka_code(), Some(36));
        assert_eq!(said_no.to_string(), "creating topic `t` failed: TOPIC_ALREADY_EXISTS (36): exists");
        let lost = ClientError::io(io::Error::from(io::ErrorKind::UnexpectedEof), "h:1", "reading a response from");
        assert!(lost.is_unreachable() && !lost.is_connect_failure());
        assert_eq!(lost.to_string(), "broker at h:1 closed the connection");
    }
}
