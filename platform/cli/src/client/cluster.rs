//! Cluster discovery: connect to the first reachable bootstrap broker, learn its API versions, find (or
//! create) the topic with Metadata/CreateTopics, wait until every partition has a leader, and spread the
//! partitions over connections to their leaders.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use kafka_protocol::messages::{
    ApiKey, CreateTopicsRequest, MetadataRequest, TopicName, create_topics_request::CreatableTopic, metadata_request::MetadataRequestTopic,
};
use kafka_protocol::protocol::StrBytes;

use super::wire::{BrokerApis, CREATE_TOPICS_VERSIONS, Connection, METADATA_VERSIONS};
use super::{Unreachable, error_label};

/// How long to wait for a topic's partitions to get leaders (e.g. right after creating it).
const TOPIC_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the first exchange (ApiVersions) with a bootstrap broker may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(8);
/// Pause between Metadata polls while waiting for leaders.
const TOPIC_READY_POLL: Duration = Duration::from_millis(100);
/// CreateTopics timeout the broker is asked to honour.
const CREATE_TOPICS_TIMEOUT_MS: i32 = 30_000;
/// Kafka error codes this module reacts to rather than reports.
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const LEADER_NOT_AVAILABLE: i16 = 5;
const TOPIC_ALREADY_EXISTS: i16 = 36;
/// Replication factor meaning "the broker's default" (CreateTopics v4+).
const DEFAULT_REPLICATION_FACTOR: i16 = -1;

/// A connection to a bootstrap broker together with what it told us about versions.
pub(crate) struct Bootstrap {
    pub(crate) conn: Connection,
    pub(crate) apis: BrokerApis,
    pub(crate) metadata_version: i16,
}

/// Connects to the first reachable broker of `brokers` and negotiates API versions with it. Versions
/// picked here are used on every connection: a cluster runs one broker version.
pub(crate) async fn bootstrap(brokers: &[String]) -> Result<Bootstrap> {
    let mut failures = Vec::new();
    for addr in brokers.iter().map(|b| b.trim()).filter(|b| !b.is_empty()) {
        let attempt = async {
            let mut conn = Connection::open(addr).await?;
            // A peer that accepts connections but never answers (a stuck process, a firewall that
            // swallows packets) must fail in seconds, not after the long per-request timeout.
            let apis = match tokio::time::timeout(HANDSHAKE_TIMEOUT, conn.api_versions()).await {
                Ok(apis) => apis?,
                Err(_) => {
                    return Err(Unreachable(format!(
                        "broker at {addr} accepted the connection but sent no ApiVersions response within {}s \
                         (is that a Kafka listener, and is the broker healthy?)",
                        HANDSHAKE_TIMEOUT.as_secs()
                    ))
                    .into());
                }
            };
            let metadata_version = apis.pick(ApiKey::Metadata, METADATA_VERSIONS)?;
            anyhow::Ok(Bootstrap { conn, apis, metadata_version })
        };
        match attempt.await {
            Ok(bootstrap) => return Ok(bootstrap),
            Err(e) if failures.is_empty() && brokers.len() == 1 => return Err(e),
            Err(e) => failures.push(format!("{e:#}")),
        }
    }
    match failures.len() {
        0 => bail!("no brokers given (--brokers host:port)"),
        1 => bail!("{}", failures.remove(0)),
        // Every one failed; whatever the individual reasons, the cluster was not reached.
        _ => Err(Unreachable(format!("no bootstrap broker reachable:\n  {}", failures.join("\n  "))).into()),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PartitionMeta {
    pub(crate) id: i32,
    /// Broker id of the leader, or -1 while there is none.
    pub(crate) leader: i32,
}

#[derive(Debug, Clone)]
pub(crate) struct TopicMeta {
    pub(crate) partitions: Vec<PartitionMeta>,
    /// Broker id → "host:port" as advertised.
    pub(crate) brokers: HashMap<i32, String>,
}

/// Describes `topic`, or `None` if the broker does not know it.
async fn describe_topic(boot: &mut Bootstrap, topic: &str) -> Result<Option<TopicMeta>> {
    let version = boot.metadata_version;
    let mut request = MetadataRequest::default()
        .with_topics(Some(vec![MetadataRequestTopic::default().with_name(Some(TopicName(StrBytes::from_string(topic.to_string()))))]));
    // The field exists from v4 on; earlier versions never auto-create for non-empty topic lists
    // anyway, and the encoder refuses a non-default value it cannot send.
    if version >= 4 {
        request = request.with_allow_auto_topic_creation(false);
    }
    let response = boot.conn.call(&request, version).await?;
    let Some(entry) = response.topics.iter().find(|t| t.name.as_ref().is_some_and(|name| name.as_str() == topic)) else {
        bail!("broker at {} left topic `{topic}` out of its Metadata response", boot.conn.addr);
    };
    match entry.error_code {
        0 | LEADER_NOT_AVAILABLE => {}
        UNKNOWN_TOPIC_OR_PARTITION => return Ok(None),
        code => bail!("Metadata for topic `{topic}` failed: {}", error_label(code)),
    }
    let brokers = response
        .brokers
        .iter()
        .map(|b| {
            // IPv6 literals need brackets to be joined with a port.
            let host = b.host.as_str();
            let addr = if host.contains(':') { format!("[{host}]:{}", b.port) } else { format!("{host}:{}", b.port) };
            (b.node_id.0, addr)
        })
        .collect();
    let mut partitions: Vec<PartitionMeta> = entry
        .partitions
        .iter()
        .map(|p| PartitionMeta { id: p.partition_index, leader: if p.error_code == 0 { p.leader_id.0 } else { -1 } })
        .collect();
    partitions.sort_by_key(|p| p.id);
    Ok(Some(TopicMeta { partitions, brokers }))
}

async fn create_topic(boot: &mut Bootstrap, topic: &str, partitions: i32) -> Result<()> {
    let version = boot.apis.pick(ApiKey::CreateTopics, CREATE_TOPICS_VERSIONS)?;
    // Before v4 the replication factor cannot be left to the broker; one replica is what a benchmark
    // against a single node needs.
    let replication = if version >= 4 { DEFAULT_REPLICATION_FACTOR } else { 1 };
    let request = CreateTopicsRequest::default().with_timeout_ms(CREATE_TOPICS_TIMEOUT_MS).with_topics(vec![
        CreatableTopic::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_string())))
            .with_num_partitions(partitions)
            .with_replication_factor(replication),
    ]);
    let response = boot.conn.call(&request, version).await?;
    for result in &response.topics {
        match result.error_code {
            // Someone else created it between our Metadata and CreateTopics calls: fine.
            0 | TOPIC_ALREADY_EXISTS => {}
            code => {
                let detail = result.error_message.as_ref().map(|m| format!(": {}", m.as_str())).unwrap_or_default();
                bail!("creating topic `{topic}` failed with {}{detail}", error_label(code));
            }
        }
    }
    Ok(())
}

/// Finds `topic`, creating it with `create_partitions` partitions if it is missing and a count was
/// given, then waits until every partition has a leader.
pub(crate) async fn ensure_topic(boot: &mut Bootstrap, topic: &str, create_partitions: Option<i32>) -> Result<TopicMeta> {
    match (describe_topic(boot, topic).await?, create_partitions) {
        (Some(meta), Some(wanted)) if meta.partitions.len() != wanted as usize && !meta.partitions.is_empty() => {
            eprintln!(
                "note: topic `{topic}` already exists with {} partitions; using those instead of --partitions {wanted}",
                meta.partitions.len()
            );
        }
        (Some(_), _) => {}
        (None, None) => bail!("topic `{topic}` does not exist on {} (`sluice bench produce --partitions N` creates it)", boot.conn.addr),
        (None, Some(partitions)) => {
            create_topic(boot, topic, partitions).await?;
            eprintln!("created topic `{topic}` with {partitions} partition(s)");
        }
    }
    let deadline = Instant::now() + TOPIC_READY_TIMEOUT;
    loop {
        if let Some(meta) = describe_topic(boot, topic).await?
            && !meta.partitions.is_empty()
            && meta.partitions.iter().all(|p| p.leader >= 0)
        {
            return Ok(meta);
        }
        if Instant::now() >= deadline {
            bail!("topic `{topic}` still has partitions without a leader after {}s", TOPIC_READY_TIMEOUT.as_secs());
        }
        tokio::time::sleep(TOPIC_READY_POLL).await;
    }
}

/// Pairs each partition with the address of its leader. With a single broker in the metadata the
/// bootstrap address is used as given: it is known to work from here, while the advertised one may be
/// a wildcard or an in-container name.
pub(crate) fn routes(meta: &TopicMeta, bootstrap_addr: &str) -> Result<Vec<(i32, String)>> {
    let single_broker = meta.brokers.len() <= 1;
    meta.partitions
        .iter()
        .map(|p| {
            let addr = if single_broker {
                bootstrap_addr.to_string()
            } else {
                match meta.brokers.get(&p.leader) {
                    Some(addr) => addr.clone(),
                    None => bail!("the leader of partition {} (broker {}) is missing from Metadata", p.id, p.leader),
                }
            };
            Ok((p.id, addr))
        })
        .collect()
}

/// Spreads each leader's partitions over `connections` connections to it, round-robin. With fewer
/// partitions than connections, `share` decides: producers may share partitions (like independent
/// producers would), while readers must not (they would read the same records twice), so surplus
/// connections are dropped.
pub(crate) fn assign(routes: &[(i32, String)], connections: u32, share: bool) -> Vec<(String, Vec<i32>)> {
    let mut by_leader: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for (partition, addr) in routes {
        by_leader.entry(addr.as_str()).or_default().push(*partition);
    }
    let connections = connections.max(1) as usize;
    let mut out = Vec::new();
    for (addr, partitions) in by_leader {
        if partitions.len() >= connections || !share {
            for slot in 0..connections.min(partitions.len()) {
                let mine = partitions.iter().skip(slot).step_by(connections).copied().collect();
                out.push((addr.to_string(), mine));
            }
        } else {
            for slot in 0..connections {
                out.push((addr.to_string(), vec![partitions[slot % partitions.len()]]));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_spread_over_connections() {
        let routes: Vec<(i32, String)> = (0..5).map(|p| (p, if p % 2 == 0 { "a:1".to_string() } else { "b:1".to_string() })).collect();
        let plan = assign(&routes, 2, true);
        assert_eq!(
            plan,
            vec![("a:1".to_string(), vec![0, 4]), ("a:1".to_string(), vec![2]), ("b:1".to_string(), vec![1]), ("b:1".to_string(), vec![3]),]
        );
        let shared = assign(&[(0, "a:1".to_string())], 3, true);
        assert_eq!(shared.len(), 3);
        assert!(shared.iter().all(|(_, parts)| parts == &[0]));
        assert_eq!(assign(&[(0, "a:1".to_string())], 3, false), vec![("a:1".to_string(), vec![0])]);
    }
}
