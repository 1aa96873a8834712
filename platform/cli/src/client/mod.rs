//! The CLI's Kafka client: just enough of the protocol to administer and use any Kafka-compatible
//! cluster. `wire` frames requests and negotiates versions, `cluster` bootstraps and reads metadata,
//! `records` encodes and decodes RecordBatch v2, `group` is a classic consumer-group member with the
//! range assignor, `murmur2` is the Java client's key partitioner and `http` the admin-API probe.
//!
//! [`Client`] owns one connection per broker address and routes requests to partition leaders and
//! group coordinators. Every request version is negotiated against what the broker advertised, so the
//! same binary works against Sluice, Apache Kafka and other Kafka-compatible brokers.

pub(crate) mod cluster;
pub(crate) mod group;
pub(crate) mod http;
pub(crate) mod murmur2;
pub(crate) mod records;
pub(crate) mod wire;

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use anyhow::{Context, Result, anyhow, bail};
use kafka_protocol::ResponseError;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    ApiKey, FindCoordinatorRequest, GroupId, ListOffsetsRequest, MetadataRequest, TopicName,
    list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic},
};
use kafka_protocol::protocol::{Request, StrBytes};

use wire::{BrokerApis, Connection};

/// The API versions (inclusive) this client implements, beyond the ones `wire` lists for bench.
pub(crate) const LIST_OFFSETS_VERSIONS: (i16, i16) = (1, 7);
pub(crate) const FIND_COORDINATOR_VERSIONS: (i16, i16) = (1, 4);
pub(crate) const DELETE_TOPICS_VERSIONS: (i16, i16) = (1, 6);
pub(crate) const CREATE_PARTITIONS_VERSIONS: (i16, i16) = (0, 3);
pub(crate) const DELETE_RECORDS_VERSIONS: (i16, i16) = (0, 2);
pub(crate) const DESCRIBE_CONFIGS_VERSIONS: (i16, i16) = (1, 4);
pub(crate) const INCREMENTAL_ALTER_CONFIGS_VERSIONS: (i16, i16) = (0, 1);
pub(crate) const LIST_GROUPS_VERSIONS: (i16, i16) = (0, 4);
pub(crate) const DESCRIBE_GROUPS_VERSIONS: (i16, i16) = (0, 5);
pub(crate) const DELETE_GROUPS_VERSIONS: (i16, i16) = (0, 2);
pub(crate) const JOIN_GROUP_VERSIONS: (i16, i16) = (1, 9);
pub(crate) const SYNC_GROUP_VERSIONS: (i16, i16) = (0, 5);
pub(crate) const HEARTBEAT_VERSIONS: (i16, i16) = (0, 4);
pub(crate) const LEAVE_GROUP_VERSIONS: (i16, i16) = (0, 5);
pub(crate) const OFFSET_COMMIT_VERSIONS: (i16, i16) = (2, 8);
/// v8 batches several groups in one request; one group at a time is all the CLI needs.
pub(crate) const OFFSET_FETCH_VERSIONS: (i16, i16) = (1, 7);

/// ListOffsets timestamps with special meanings.
pub(crate) const LATEST_TIMESTAMP: i64 = -1;
pub(crate) const EARLIEST_TIMESTAMP: i64 = -2;

/// Kafka error codes the client reacts to rather than only reports.
pub(crate) mod code {
    pub(crate) const NONE: i16 = 0;
    pub(crate) const OFFSET_OUT_OF_RANGE: i16 = 1;
    pub(crate) const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    pub(crate) const LEADER_NOT_AVAILABLE: i16 = 5;
    pub(crate) const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
    pub(crate) const COORDINATOR_NOT_AVAILABLE: i16 = 15;
    pub(crate) const NOT_COORDINATOR: i16 = 16;
    pub(crate) const ILLEGAL_GENERATION: i16 = 22;
    pub(crate) const UNKNOWN_MEMBER_ID: i16 = 25;
    pub(crate) const REBALANCE_IN_PROGRESS: i16 = 27;
    pub(crate) const GROUP_ID_NOT_FOUND: i16 = 69;
    pub(crate) const NON_EMPTY_GROUP: i16 = 68;
    pub(crate) const MEMBER_ID_REQUIRED: i16 = 79;
    pub(crate) const FENCED_INSTANCE_ID: i16 = 82;
}

/// A failure to reach a broker at all (refused, timed out, connection lost): exit code 3, so scripts can
/// tell "the cluster is down or the address is wrong" from "the cluster said no".
#[derive(Debug)]
pub(crate) struct Unreachable(pub(crate) String);

impl fmt::Display for Unreachable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unreachable {}

/// `3` → `UNKNOWN_TOPIC_OR_PARTITION (3)`: Kafka's own constant names, which is what people search for.
pub(crate) fn error_label(code: i16) -> String {
    let name = match ResponseError::try_from_code(code) {
        None => "NONE".to_string(),
        Some(ResponseError::Unknown(_)) => "UNKNOWN_ERROR_CODE".to_string(),
        Some(error) => {
            let camel = error.to_string();
            let mut snake = String::with_capacity(camel.len() + 8);
            for (i, c) in camel.chars().enumerate() {
                if c.is_ascii_uppercase() && i > 0 {
                    snake.push('_');
                }
                snake.push(c.to_ascii_uppercase());
            }
            snake
        }
    };
    format!("{name} ({code})")
}

/// An error label followed by the broker's message, when it sent one.
pub(crate) fn error_with_message(code: i16, message: Option<&StrBytes>) -> String {
    match message.map(|m| m.as_str()).filter(|m| !m.is_empty()) {
        Some(message) => format!("{}: {message}", error_label(code)),
        None => error_label(code),
    }
}

pub(crate) fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

pub(crate) fn topic_name(s: &str) -> TopicName {
    TopicName(str_bytes(s))
}

pub(crate) fn group_id(s: &str) -> GroupId {
    GroupId(str_bytes(s))
}

/// One partition as Metadata describes it.
#[derive(Debug, Clone)]
pub(crate) struct PartitionInfo {
    pub(crate) id: i32,
    /// Broker id of the leader, or -1 while there is none.
    pub(crate) leader: i32,
    pub(crate) replicas: Vec<i32>,
    pub(crate) isr: Vec<i32>,
    pub(crate) error_code: i16,
}

#[derive(Debug, Clone)]
pub(crate) struct TopicInfo {
    pub(crate) name: String,
    pub(crate) internal: bool,
    pub(crate) error_code: i16,
    /// Sorted by partition id.
    pub(crate) partitions: Vec<PartitionInfo>,
}

#[derive(Debug, Clone)]
pub(crate) struct BrokerInfo {
    pub(crate) id: i32,
    pub(crate) host: String,
    pub(crate) port: i32,
    pub(crate) rack: Option<String>,
}

impl BrokerInfo {
    pub(crate) fn addr(&self) -> String {
        // IPv6 literals need brackets to be joined with a port.
        if self.host.contains(':') { format!("[{}]:{}", self.host, self.port) } else { format!("{}:{}", self.host, self.port) }
    }
}

/// What one Metadata call returned.
#[derive(Debug, Clone)]
pub(crate) struct ClusterMeta {
    pub(crate) cluster_id: Option<String>,
    pub(crate) controller_id: i32,
    pub(crate) brokers: Vec<BrokerInfo>,
    pub(crate) topics: Vec<TopicInfo>,
}

impl ClusterMeta {
    pub(crate) fn topic(&self, name: &str) -> Option<&TopicInfo> {
        self.topics.iter().find(|t| t.name == name)
    }
}

/// Low and high watermark of one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Watermarks {
    pub(crate) low: i64,
    pub(crate) high: i64,
}

/// A negotiated session with a cluster: the bootstrap broker's API versions, the last metadata seen, and
/// one connection per broker address, opened on first use.
pub(crate) struct Client {
    bootstrap_addr: String,
    apis: BrokerApis,
    metadata_version: i16,
    conns: HashMap<String, Connection>,
    /// Broker id → address from the last Metadata response.
    broker_addrs: HashMap<i32, String>,
}

impl Client {
    /// Connects to the first reachable of `brokers` and negotiates API versions.
    pub(crate) async fn connect(brokers: &[String]) -> Result<Client> {
        let boot = cluster::bootstrap(brokers).await?;
        let addr = boot.conn.addr.clone();
        let mut conns = HashMap::new();
        conns.insert(addr.clone(), boot.conn);
        Ok(Client { bootstrap_addr: addr, apis: boot.apis, metadata_version: boot.metadata_version, conns, broker_addrs: HashMap::new() })
    }

    pub(crate) fn bootstrap_addr(&self) -> &str {
        &self.bootstrap_addr
    }

    pub(crate) fn apis(&self) -> &BrokerApis {
        &self.apis
    }

    /// The newest version of `api` both sides support.
    pub(crate) fn version(&self, api: ApiKey, ours: (i16, i16)) -> Result<i16> {
        self.apis.pick(api, ours)
    }

    /// Sends `request` at `version` to the bootstrap broker.
    pub(crate) async fn call<R: Request>(&mut self, request: &R, version: i16) -> Result<R::Response> {
        let addr = self.bootstrap_addr.clone();
        self.call_at(&addr, request, version).await
    }

    /// Sends `request` at `version` to the broker at `addr`, connecting first if needed.
    pub(crate) async fn call_at<R: Request>(&mut self, addr: &str, request: &R, version: i16) -> Result<R::Response> {
        if !self.conns.contains_key(addr) {
            let conn = Connection::open(addr).await?;
            self.conns.insert(addr.to_string(), conn);
        }
        let conn = self.conns.get_mut(addr).ok_or_else(|| anyhow!("no connection to {addr}"))?;
        let result = conn.call(request, version).await;
        if result.is_err() {
            // The stream may hold half a response now; the next call reconnects.
            self.conns.remove(addr);
        }
        result
    }

    /// Sends `request` to broker `node_id` (as the last Metadata response placed it).
    pub(crate) async fn call_node<R: Request>(&mut self, node_id: i32, request: &R, version: i16) -> Result<R::Response> {
        let addr = self.node_addr(node_id)?;
        self.call_at(&addr, request, version).await
    }

    /// The address to reach broker `node_id` at. With a single broker in the cluster the bootstrap
    /// address is used as given: it is known to work from here, while the advertised one may be a
    /// wildcard or an in-container name.
    pub(crate) fn node_addr(&self, node_id: i32) -> Result<String> {
        if self.broker_addrs.len() <= 1 {
            return Ok(self.bootstrap_addr.clone());
        }
        self.broker_addrs.get(&node_id).cloned().ok_or_else(|| anyhow!("broker {node_id} is missing from the cluster metadata"))
    }

    /// Metadata for `topics` (all topics when `None`). Never creates topics.
    pub(crate) async fn metadata(&mut self, topics: Option<&[String]>) -> Result<ClusterMeta> {
        let version = self.metadata_version;
        let mut request = MetadataRequest::default().with_topics(
            topics.map(|names| names.iter().map(|name| MetadataRequestTopic::default().with_name(Some(topic_name(name)))).collect()),
        );
        if version >= 4 {
            request = request.with_allow_auto_topic_creation(false);
        }
        let response = self.call(&request, version).await?;
        let brokers: Vec<BrokerInfo> = response
            .brokers
            .iter()
            .map(|b| BrokerInfo { id: b.node_id.0, host: b.host.to_string(), port: b.port, rack: b.rack.as_ref().map(|r| r.to_string()) })
            .collect();
        self.broker_addrs = brokers.iter().map(|b| (b.id, b.addr())).collect();
        let mut topics: Vec<TopicInfo> = response
            .topics
            .iter()
            .map(|t| {
                let mut partitions: Vec<PartitionInfo> = t
                    .partitions
                    .iter()
                    .map(|p| PartitionInfo {
                        id: p.partition_index,
                        leader: if p.error_code == 0 { p.leader_id.0 } else { -1 },
                        replicas: p.replica_nodes.iter().map(|r| r.0).collect(),
                        isr: p.isr_nodes.iter().map(|r| r.0).collect(),
                        error_code: p.error_code,
                    })
                    .collect();
                partitions.sort_by_key(|p| p.id);
                TopicInfo {
                    name: t.name.as_ref().map(|n| n.0.to_string()).unwrap_or_default(),
                    internal: t.is_internal,
                    error_code: t.error_code,
                    partitions,
                }
            })
            .collect();
        topics.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(ClusterMeta {
            cluster_id: response.cluster_id.as_ref().map(|c| c.to_string()),
            controller_id: response.controller_id.0,
            brokers,
            topics,
        })
    }

    /// Metadata for one topic that must exist; the error says how to create it.
    pub(crate) async fn topic(&mut self, name: &str) -> Result<TopicInfo> {
        let meta = self.metadata(Some(&[name.to_string()])).await?;
        let topic = meta
            .topic(name)
            .cloned()
            .ok_or_else(|| anyhow!("broker at {} left topic `{name}` out of its Metadata response", self.bootstrap_addr))?;
        match topic.error_code {
            code::NONE | code::LEADER_NOT_AVAILABLE => Ok(topic),
            code::UNKNOWN_TOPIC_OR_PARTITION => bail!(
                "topic `{name}` does not exist on {} (create it with `sluice topic create {name}`, or list topics with `sluice topic list`)",
                self.bootstrap_addr
            ),
            other => bail!("Metadata for topic `{name}` failed on {}: {}", self.bootstrap_addr, error_label(other)),
        }
    }

    /// ListOffsets for `topic`: `timestamps` maps partition → timestamp (or [`LATEST_TIMESTAMP`] /
    /// [`EARLIEST_TIMESTAMP`]). Each partition is asked of its leader. The answer maps partition →
    /// offset; -1 means no record at or after that timestamp.
    pub(crate) async fn list_offsets(&mut self, topic: &TopicInfo, timestamps: &BTreeMap<i32, i64>) -> Result<BTreeMap<i32, i64>> {
        let version = self.version(ApiKey::ListOffsets, LIST_OFFSETS_VERSIONS)?;
        let mut by_leader: BTreeMap<i32, Vec<(i32, i64)>> = BTreeMap::new();
        for (&partition, &timestamp) in timestamps {
            let leader = topic.partitions.iter().find(|p| p.id == partition).map(|p| p.leader).unwrap_or(-1);
            if leader < 0 {
                bail!("partition {partition} of `{}` has no leader right now; try again in a moment", topic.name);
            }
            by_leader.entry(leader).or_default().push((partition, timestamp));
        }
        let mut out = BTreeMap::new();
        for (leader, partitions) in by_leader {
            let mut request = ListOffsetsRequest::default().with_replica_id((-1).into()).with_topics(vec![
                ListOffsetsTopic::default().with_name(topic_name(&topic.name)).with_partitions(
                    partitions.iter().map(|&(p, ts)| ListOffsetsPartition::default().with_partition_index(p).with_timestamp(ts)).collect(),
                ),
            ]);
            if version >= 4 {
                request.topics.iter_mut().flat_map(|t| t.partitions.iter_mut()).for_each(|p| p.current_leader_epoch = -1);
            }
            let response = self.call_node(leader, &request, version).await.context("ListOffsets")?;
            for t in &response.topics {
                for p in &t.partitions {
                    if p.error_code != 0 {
                        bail!("ListOffsets for `{}` partition {} failed: {}", topic.name, p.partition_index, error_label(p.error_code));
                    }
                    out.insert(p.partition_index, p.offset);
                }
            }
        }
        Ok(out)
    }

    /// Low and high watermark of every partition of `topic`.
    pub(crate) async fn watermarks(&mut self, topic: &TopicInfo) -> Result<BTreeMap<i32, Watermarks>> {
        let earliest = self.list_offsets(topic, &topic.partitions.iter().map(|p| (p.id, EARLIEST_TIMESTAMP)).collect()).await?;
        let latest = self.list_offsets(topic, &topic.partitions.iter().map(|p| (p.id, LATEST_TIMESTAMP)).collect()).await?;
        Ok(earliest.iter().map(|(&p, &low)| (p, Watermarks { low, high: latest.get(&p).copied().unwrap_or(low) })).collect())
    }

    /// The address of `group`'s coordinator.
    pub(crate) async fn find_coordinator(&mut self, group: &str) -> Result<String> {
        let version = self.version(ApiKey::FindCoordinator, FIND_COORDINATOR_VERSIONS)?;
        let mut request = FindCoordinatorRequest::default();
        if version >= 4 {
            request.coordinator_keys = vec![str_bytes(group)];
        } else {
            request.key = str_bytes(group);
        }
        // The coordinator may still be loading right after a broker starts; that passes in moments.
        for _attempt in 0..20 {
            let response = self.call(&request, version).await?;
            let (error, message, node, host, port) = if version >= 4 {
                let c = response.coordinators.first().ok_or_else(|| anyhow!("FindCoordinator returned no coordinator for `{group}`"))?;
                (c.error_code, c.error_message.clone(), c.node_id.0, c.host.to_string(), c.port)
            } else {
                (response.error_code, response.error_message.clone(), response.node_id.0, response.host.to_string(), response.port)
            };
            match error {
                code::NONE => {
                    let info = BrokerInfo { id: node, host, port, rack: None };
                    // Same reasoning as `node_addr`: on a one-broker cluster, use the address that works.
                    return Ok(if self.broker_addrs.len() <= 1 { self.bootstrap_addr.clone() } else { info.addr() });
                }
                code::COORDINATOR_NOT_AVAILABLE | code::COORDINATOR_LOAD_IN_PROGRESS => {
                    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                }
                other => bail!("FindCoordinator for group `{group}` failed: {}", error_with_message(other, message.as_ref())),
            }
        }
        bail!("no coordinator became available for group `{group}` on {}", self.bootstrap_addr)
    }
}
