//! [`Client`]: a negotiated session with one cluster. It bootstraps from the first reachable address,
//! keeps the API versions that broker advertised (a cluster runs one broker version), learns broker
//! addresses from Metadata, and holds one pipelined [`Connection`] per broker address, opened on first
//! use and reopened after a failure. Methods take `&self`: share a client between tasks (in an `Arc`)
//! and their requests pipeline on the same connections.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    ApiKey, FindCoordinatorRequest, ListOffsetsRequest, MetadataRequest,
    list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic},
};
use kafka_protocol::protocol::Request;

use crate::codes;
use crate::connection::{Connection, ConnectionOptions, MAX_IN_FLIGHT_DEFAULT};
use crate::error::{ClientError, KafkaError, Result};
use crate::metadata::{BrokerInfo, ClusterMeta, Routes, TopicInfo};
use crate::versions::{BrokerApis, FIND_COORDINATOR_VERSIONS, LIST_OFFSETS_VERSIONS, METADATA_VERSIONS};
use crate::{str_bytes, topic_name};

/// How long the first exchange (ApiVersions) with a bootstrap broker may take: a peer that accepts
/// connections but never answers must fail in seconds, not after the long per-request timeout.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(8);
/// FindCoordinator attempts while the coordinator is still loading (right after a broker starts).
const FIND_COORDINATOR_ATTEMPTS: u32 = 20;
const FIND_COORDINATOR_PAUSE: Duration = Duration::from_millis(250);

/// Settings of a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The request header's client id; see [`ConnectionOptions::client_id`].
    pub client_id: String,
    /// Requests outstanding per broker connection at most.
    pub max_in_flight_per_connection: usize,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions { client_id: "sluice-client".to_string(), max_in_flight_per_connection: MAX_IN_FLIGHT_DEFAULT }
    }
}

/// Where ListOffsets looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetSpec {
    /// The log start offset.
    Earliest,
    /// The high watermark: the offset the next record will get.
    Latest,
    /// The first offset whose timestamp is at or after this one, in milliseconds.
    Timestamp(i64),
}

impl OffsetSpec {
    /// The ListOffsets timestamp that asks for this.
    pub fn wire_timestamp(self) -> i64 {
        match self {
            OffsetSpec::Earliest => -2,
            OffsetSpec::Latest => -1,
            OffsetSpec::Timestamp(ms) => ms,
        }
    }
}

/// Low and high watermark of one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watermarks {
    pub low: i64,
    pub high: i64,
}

/// A negotiated session with a cluster.
pub struct Client {
    bootstrap_addr: String,
    apis: BrokerApis,
    metadata_version: i16,
    connection_options: ConnectionOptions,
    /// One connection per broker address. A std mutex: held only to look up or insert, never across
    /// an `.await`.
    connections: Mutex<HashMap<String, Connection>>,
    /// Broker ids → addresses, from the last Metadata response.
    routes: Mutex<Routes>,
}

impl Client {
    /// Connects to the first reachable of `bootstrap` (host:port each) and negotiates API versions.
    pub async fn connect(bootstrap: &[String], options: ClientOptions) -> Result<Client> {
        let connection_options = ConnectionOptions { client_id: options.client_id, max_in_flight: options.max_in_flight_per_connection };
        let (conn, apis) = bootstrap_connection(bootstrap, &connection_options).await?;
        let metadata_version = apis.pick(ApiKey::Metadata, METADATA_VERSIONS)?;
        let addr = conn.addr().to_string();
        Ok(Client {
            routes: Mutex::new(Routes::new(&addr)),
            connections: Mutex::new(HashMap::from([(addr.clone(), conn)])),
            bootstrap_addr: addr,
            apis,
            metadata_version,
            connection_options,
        })
    }

    /// The address the client bootstrapped from.
    pub fn bootstrap_addr(&self) -> &str {
        &self.bootstrap_addr
    }

    /// What the bootstrap broker advertised.
    pub fn apis(&self) -> &BrokerApis {
        &self.apis
    }

    /// The newest version of `api` both sides support.
    pub fn version(&self, api: ApiKey, ours: (i16, i16)) -> Result<i16> {
        self.apis.pick(api, ours)
    }

    /// The connection to `addr`, opened if there is none or the last one failed.
    pub async fn connection(&self, addr: &str) -> Result<Connection> {
        if let Some(conn) = self.lock_connections().get(addr).filter(|c| !c.is_closed()) {
            return Ok(conn.clone());
        }
        let fresh = Connection::open(addr, &self.connection_options).await?;
        let mut connections = self.lock_connections();
        // Another task may have opened one meanwhile; keep a single connection per address.
        match connections.get(addr).filter(|c| !c.is_closed()) {
            Some(existing) => Ok(existing.clone()),
            None => {
                connections.insert(addr.to_string(), fresh.clone());
                Ok(fresh)
            }
        }
    }

    fn lock_connections(&self) -> std::sync::MutexGuard<'_, HashMap<String, Connection>> {
        // A panic while holding this lock cannot leave the map inconsistent (single inserts).
        self.connections.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn lock_routes(&self) -> std::sync::MutexGuard<'_, Routes> {
        self.routes.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sends `request` at `version` to the bootstrap broker.
    pub async fn call<R: Request>(&self, request: &R, version: i16) -> Result<R::Response> {
        self.call_at(&self.bootstrap_addr, request, version).await
    }

    /// Sends `request` at `version` to the broker at `addr`.
    pub async fn call_at<R: Request>(&self, addr: &str, request: &R, version: i16) -> Result<R::Response> {
        self.connection(addr).await?.call(request, version).await
    }

    /// Sends `request` to broker `node_id`, as the last Metadata response placed it.
    pub async fn call_node<R: Request>(&self, node_id: i32, request: &R, version: i16) -> Result<R::Response> {
        let addr = self.node_addr(node_id)?;
        self.call_at(&addr, request, version).await
    }

    /// The address to reach broker `node_id` at (see [`Routes::addr_of`]).
    pub fn node_addr(&self, node_id: i32) -> Result<String> {
        self.lock_routes().addr_of(node_id)
    }

    /// Each partition of `topic` with the address of its leader.
    pub fn leader_addrs(&self, topic: &TopicInfo) -> Result<Vec<(i32, String)>> {
        self.lock_routes().leaders(topic)
    }

    /// Metadata for `topics` (all topics when `None`). Never creates topics. Updates the routes.
    pub async fn metadata(&self, topics: Option<&[String]>) -> Result<ClusterMeta> {
        let version = self.metadata_version;
        let mut request = MetadataRequest::default().with_topics(
            topics.map(|names| names.iter().map(|name| MetadataRequestTopic::default().with_name(Some(topic_name(name)))).collect()),
        );
        // The field exists from v4 on; earlier versions never auto-create for a non-empty topic list
        // anyway, and the encoder refuses a non-default value it cannot send.
        if version >= 4 {
            request = request.with_allow_auto_topic_creation(false);
        }
        let response = self.call(&request, version).await?;
        let meta = ClusterMeta::from_response(&response);
        self.lock_routes().update(&meta);
        Ok(meta)
    }

    /// Metadata for one topic that must exist.
    pub async fn topic(&self, name: &str) -> Result<TopicInfo> {
        let meta = self.metadata(Some(&[name.to_string()])).await?;
        let Some(topic) = meta.topic(name).cloned() else {
            return Err(ClientError::protocol(
                &self.bootstrap_addr,
                format!("broker at {} left topic `{name}` out of its Metadata response", self.bootstrap_addr),
            ));
        };
        match topic.error_code {
            codes::NONE | codes::LEADER_NOT_AVAILABLE => Ok(topic),
            codes::UNKNOWN_TOPIC_OR_PARTITION => {
                Err(ClientError::UnknownTopic { topic: name.to_string(), addr: self.bootstrap_addr.clone() })
            }
            other => {
                Err(ClientError::kafka(format!("Metadata for topic `{name}` on {}", self.bootstrap_addr), KafkaError::new(other, None)))
            }
        }
    }

    /// Waits until `name` has at least `min_partitions` partitions (when given), each with a leader,
    /// polling Metadata for up to `timeout` (right after creating a topic, leaders take a moment).
    pub async fn wait_for_leaders(&self, name: &str, min_partitions: Option<usize>, timeout: Duration) -> Result<TopicInfo> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let meta = self.metadata(Some(&[name.to_string()])).await?;
            if let Some(topic) = meta.topic(name)
                && topic.error_code == codes::NONE
                && !topic.partitions.is_empty()
                && min_partitions.is_none_or(|n| topic.partitions.len() >= n)
                && topic.partitions.iter().all(|p| p.leader >= 0)
            {
                return Ok(topic.clone());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ClientError::TopicNotReady { topic: name.to_string(), timeout });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// ListOffsets for partitions of `topic`, each asked of its leader. The answer maps partition →
    /// offset; -1 means no record at or after that timestamp.
    pub async fn list_offsets(&self, topic: &TopicInfo, specs: &BTreeMap<i32, OffsetSpec>) -> Result<BTreeMap<i32, i64>> {
        let version = self.version(ApiKey::ListOffsets, LIST_OFFSETS_VERSIONS)?;
        let mut out = BTreeMap::new();
        for (leader, partitions) in topic.group_by_leader(specs.keys().copied())? {
            let mut request = ListOffsetsRequest::default().with_replica_id((-1).into()).with_topics(vec![
                ListOffsetsTopic::default().with_name(topic_name(&topic.name)).with_partitions(
                    partitions
                        .iter()
                        .filter_map(|p| {
                            specs
                                .get(p)
                                .map(|spec| ListOffsetsPartition::default().with_partition_index(*p).with_timestamp(spec.wire_timestamp()))
                        })
                        .collect(),
                ),
            ]);
            if version >= 4 {
                request.topics.iter_mut().flat_map(|t| t.partitions.iter_mut()).for_each(|p| p.current_leader_epoch = -1);
            }
            let response = self.call_node(leader, &request, version).await?;
            for t in &response.topics {
                for p in &t.partitions {
                    if let Some(error) = KafkaError::from_code(p.error_code, None) {
                        return Err(ClientError::kafka(format!("ListOffsets for `{}` partition {}", topic.name, p.partition_index), error));
                    }
                    out.insert(p.partition_index, p.offset);
                }
            }
        }
        Ok(out)
    }

    /// The same spec for each of `partitions`.
    pub async fn list_offsets_all(&self, topic: &TopicInfo, partitions: &[i32], spec: OffsetSpec) -> Result<BTreeMap<i32, i64>> {
        self.list_offsets(topic, &partitions.iter().map(|&p| (p, spec)).collect()).await
    }

    /// Low and high watermark of every partition of `topic`.
    /// Partitions without a leader (their broker is down) are left out: nobody can answer for them.
    pub async fn watermarks(&self, topic: &TopicInfo) -> Result<BTreeMap<i32, Watermarks>> {
        let all: Vec<i32> = topic.partitions.iter().filter(|p| p.leader >= 0).map(|p| p.id).collect();
        let earliest = self.list_offsets_all(topic, &all, OffsetSpec::Earliest).await?;
        let latest = self.list_offsets_all(topic, &all, OffsetSpec::Latest).await?;
        Ok(earliest.iter().map(|(&p, &low)| (p, Watermarks { low, high: latest.get(&p).copied().unwrap_or(low) })).collect())
    }

    /// The address of `group`'s coordinator.
    pub async fn find_coordinator(&self, group: &str) -> Result<String> {
        let version = self.version(ApiKey::FindCoordinator, FIND_COORDINATOR_VERSIONS)?;
        let mut request = FindCoordinatorRequest::default();
        if version >= 4 {
            request.coordinator_keys = vec![str_bytes(group)];
        } else {
            request.key = str_bytes(group);
        }
        for _attempt in 0..FIND_COORDINATOR_ATTEMPTS {
            let response = self.call(&request, version).await?;
            let (error, message, node, host, port) = if version >= 4 {
                let Some(c) = response.coordinators.first() else {
                    return Err(ClientError::protocol(
                        &self.bootstrap_addr,
                        format!("FindCoordinator returned no coordinator for `{group}`"),
                    ));
                };
                (c.error_code, c.error_message.clone(), c.node_id.0, c.host.to_string(), c.port)
            } else {
                (response.error_code, response.error_message.clone(), response.node_id.0, response.host.to_string(), response.port)
            };
            match error {
                codes::NONE => return Ok(self.lock_routes().addr_for(&BrokerInfo { id: node, host, port, rack: None })),
                codes::COORDINATOR_NOT_AVAILABLE | codes::COORDINATOR_LOAD_IN_PROGRESS => tokio::time::sleep(FIND_COORDINATOR_PAUSE).await,
                other => {
                    return Err(ClientError::kafka(
                        format!("FindCoordinator for group `{group}`"),
                        KafkaError::new(other, message.as_ref().map(|m| m.as_str())),
                    ));
                }
            }
        }
        Err(ClientError::CoordinatorNotAvailable { group: group.to_string(), addr: self.bootstrap_addr.clone() })
    }
}

/// Connects to the first reachable broker of `brokers` and negotiates API versions with it.
async fn bootstrap_connection(brokers: &[String], options: &ConnectionOptions) -> Result<(Connection, BrokerApis)> {
    let addrs: Vec<&str> = brokers.iter().map(|b| b.trim()).filter(|b| !b.is_empty()).collect();
    let mut failures: Vec<ClientError> = Vec::new();
    for addr in &addrs {
        let attempt = async {
            let conn = Connection::open(addr, options).await?;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, conn.api_versions()).await {
                Ok(apis) => Ok((conn, apis?)),
                Err(_) => Err(ClientError::HandshakeTimeout { addr: addr.to_string(), timeout: HANDSHAKE_TIMEOUT }),
            }
        };
        match attempt.await {
            Ok(found) => return Ok(found),
            Err(e) => failures.push(e),
        }
    }
    match failures.len() {
        0 => Err(ClientError::NoBrokers),
        1 => Err(failures.remove(0)),
        // Every one failed; whatever the individual reasons, the cluster was not reached.
        _ => Err(ClientError::NoBootstrapReachable { failures: failures.iter().map(ToString::to_string).collect() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FetchOptions, PartitionBatch, produce::Acks};

    fn is_send_sync<T: Send + Sync>(_: &T) {}
    fn is_send<T: Send>(_: T) {}

    /// A client is shared between tasks (a mirror runs one per partition set), so it and the futures
    /// of its calls must be `Send`; this fails to compile otherwise.
    #[allow(dead_code)]
    fn shared_between_tasks(client: &Client) {
        is_send_sync(client);
        is_send(client.metadata(None));
        is_send(client.fetch(0, &[], &FetchOptions::default()));
        is_send(client.produce(0, &[] as &[PartitionBatch], Acks::All, 1000));
        is_send(client.find_coordinator("g"));
    }

    #[test]
    fn offset_specs_map_to_listoffsets_timestamps() {
        assert_eq!(OffsetSpec::Earliest.wire_timestamp(), -2);
        assert_eq!(OffsetSpec::Latest.wire_timestamp(), -1);
        assert_eq!(OffsetSpec::Timestamp(1_700_000_000_000).wire_timestamp(), 1_700_000_000_000);
    }

    #[tokio::test]
    async fn bootstrap_reports_every_unreachable_address() {
        let mut addrs = Vec::new();
        for _ in 0..2 {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            addrs.push(listener.local_addr().expect("addr").to_string());
        }
        // Both listeners are closed now: nothing answers at either address.
        let error = Client::connect(&addrs, ClientOptions::default()).await.err().expect("unreachable");
        assert!(error.is_unreachable(), "{error}");
        assert!(addrs.iter().all(|a| error.to_string().contains(a.as_str())), "{error}");
        let one = Client::connect(&addrs[..1], ClientOptions::default()).await.err().expect("unreachable");
        assert!(one.is_connect_failure(), "{one}");
        assert!(matches!(Client::connect(&[" ".to_string()], ClientOptions::default()).await, Err(ClientError::NoBrokers)));
    }
}
