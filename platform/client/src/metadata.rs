//! What Metadata says about a cluster (brokers, topics, partitions, leaders), and [`Routes`]: where a
//! request for a partition or a broker id must go. Pure: no I/O, so routing is unit-tested here.

use std::collections::{BTreeMap, HashMap};

use kafka_protocol::messages::MetadataResponse;

use crate::error::{ClientError, Result};

/// One partition as Metadata describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    pub id: i32,
    /// Broker id of the leader, or -1 while there is none.
    pub leader: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    pub error_code: i16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    pub name: String,
    /// The topic's id (Metadata v10+), which changes when a topic is deleted and created again;
    /// `None` from brokers that do not send one.
    pub id: Option<String>,
    pub internal: bool,
    pub error_code: i16,
    /// Sorted by partition id.
    pub partitions: Vec<PartitionInfo>,
}

impl TopicInfo {
    pub fn partition(&self, id: i32) -> Option<&PartitionInfo> {
        self.partitions.iter().find(|p| p.id == id)
    }

    /// The leader of partition `id`, or an error saying why there is none.
    pub fn leader_of(&self, id: i32) -> Result<i32> {
        match self.partition(id) {
            None => Err(ClientError::UnknownPartition { topic: self.name.clone(), partition: id }),
            Some(p) if p.leader < 0 => Err(ClientError::NoLeader { topic: self.name.clone(), partition: id }),
            Some(p) => Ok(p.leader),
        }
    }

    /// `partitions` grouped by the broker id of their leader.
    pub fn group_by_leader(&self, partitions: impl IntoIterator<Item = i32>) -> Result<BTreeMap<i32, Vec<i32>>> {
        let mut out: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
        for partition in partitions {
            out.entry(self.leader_of(partition)?).or_default().push(partition);
        }
        Ok(out)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerInfo {
    pub id: i32,
    pub host: String,
    pub port: i32,
    pub rack: Option<String>,
}

impl BrokerInfo {
    /// `host:port`, with IPv6 literals in brackets.
    pub fn addr(&self) -> String {
        join_host_port(&self.host, self.port)
    }
}

pub(crate) fn join_host_port(host: &str, port: i32) -> String {
    if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") }
}

/// What one Metadata call returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterMeta {
    pub cluster_id: Option<String>,
    pub controller_id: i32,
    pub brokers: Vec<BrokerInfo>,
    /// Sorted by name.
    pub topics: Vec<TopicInfo>,
}

impl ClusterMeta {
    pub fn topic(&self, name: &str) -> Option<&TopicInfo> {
        self.topics.iter().find(|t| t.name == name)
    }

    pub(crate) fn from_response(response: &MetadataResponse) -> ClusterMeta {
        let brokers: Vec<BrokerInfo> = response
            .brokers
            .iter()
            .map(|b| BrokerInfo { id: b.node_id.0, host: b.host.to_string(), port: b.port, rack: b.rack.as_ref().map(|r| r.to_string()) })
            .collect();
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
                    id: (!t.topic_id.is_nil()).then(|| t.topic_id.to_string()),
                    internal: t.is_internal,
                    error_code: t.error_code,
                    partitions,
                }
            })
            .collect();
        topics.sort_by(|a, b| a.name.cmp(&b.name));
        ClusterMeta {
            cluster_id: response.cluster_id.as_ref().map(|c| c.to_string()),
            controller_id: response.controller_id.0,
            brokers,
            topics,
        }
    }
}

/// Where to send a request meant for broker id N.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routes {
    bootstrap_addr: String,
    /// Broker id → advertised address, from the last Metadata response.
    brokers: HashMap<i32, String>,
}

impl Routes {
    pub fn new(bootstrap_addr: &str) -> Routes {
        Routes { bootstrap_addr: bootstrap_addr.to_string(), brokers: HashMap::new() }
    }

    /// Learns the brokers of a Metadata response.
    pub fn update(&mut self, meta: &ClusterMeta) {
        self.brokers = meta.brokers.iter().map(|b| (b.id, b.addr())).collect();
    }

    /// The address of broker `node_id`. With a single broker in the cluster the bootstrap address is used
    /// as given: it is known to work from here, while the advertised one may be a wildcard or an
    /// in-container name.
    pub fn addr_of(&self, node_id: i32) -> Result<String> {
        if self.brokers.len() <= 1 {
            return Ok(self.bootstrap_addr.clone());
        }
        self.brokers.get(&node_id).cloned().ok_or(ClientError::UnknownBroker { node_id })
    }

    /// The address for a broker found outside Metadata (a group coordinator), by the same rule.
    pub fn addr_for(&self, broker: &BrokerInfo) -> String {
        if self.brokers.len() <= 1 { self.bootstrap_addr.clone() } else { broker.addr() }
    }

    /// Each partition of `topic` with the address of its leader.
    pub fn leaders(&self, topic: &TopicInfo) -> Result<Vec<(i32, String)>> {
        topic.partitions.iter().map(|p| Ok((p.id, self.addr_of(topic.leader_of(p.id)?)?))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(leaders: &[i32]) -> TopicInfo {
        TopicInfo {
            name: "t".into(),
            id: None,
            internal: false,
            error_code: 0,
            partitions: leaders
                .iter()
                .enumerate()
                .map(|(id, &leader)| PartitionInfo { id: id as i32, leader, replicas: vec![], isr: vec![], error_code: 0 })
                .collect(),
        }
    }

    fn meta(brokers: &[(i32, &str, i32)]) -> ClusterMeta {
        ClusterMeta {
            cluster_id: None,
            controller_id: 0,
            brokers: brokers.iter().map(|&(id, host, port)| BrokerInfo { id, host: host.into(), port, rack: None }).collect(),
            topics: vec![],
        }
    }

    #[test]
    fn partitions_route_to_their_leaders() {
        let mut routes = Routes::new("boot:9092");
        routes.update(&meta(&[(1, "a", 9092), (2, "::1", 9093)]));
        let t = topic(&[1, 2, 1]);
        assert_eq!(routes.leaders(&t).expect("routes"), [(0, "a:9092".into()), (1, "[::1]:9093".into()), (2, "a:9092".into())]);
        assert_eq!(t.group_by_leader([0, 1, 2]).expect("grouped"), BTreeMap::from([(1, vec![0, 2]), (2, vec![1])]));
        assert!(matches!(routes.addr_of(7), Err(ClientError::UnknownBroker { node_id: 7 })));
    }

    #[test]
    fn a_single_broker_is_reached_at_the_bootstrap_address() {
        let mut routes = Routes::new("127.0.0.1:40000");
        routes.update(&meta(&[(0, "0.0.0.0", 9092)]));
        assert_eq!(routes.addr_of(0).expect("addr"), "127.0.0.1:40000");
        assert_eq!(routes.addr_for(&BrokerInfo { id: 0, host: "container".into(), port: 1, rack: None }), "127.0.0.1:40000");
    }

    #[test]
    fn partitions_without_a_leader_or_unknown_ones_are_errors() {
        let t = topic(&[0, -1]);
        assert!(matches!(t.leader_of(1), Err(ClientError::NoLeader { partition: 1, .. })));
        assert!(matches!(t.leader_of(5), Err(ClientError::UnknownPartition { partition: 5, .. })));
        assert!(t.group_by_leader([0, 1]).is_err());
    }
}
