//! The broker's side of the controller quorum: topic changes go to the quorum as commands, and
//! every broker applies what the quorum committed to its own data directory.
//!
//! The quorum is the source of truth for topics, their partitions' placement and leadership. Each
//! broker follows it with one reconciler ([`follow`]): after every applied log entry it opens the
//! partitions placed on it, removes topics the quorum deleted, applies settings and sets which of
//! its partitions it leads. A broker that handles CreateTopics (or another topic change) writes the
//! command, then waits until its own reconciler has applied it, so the client sees the topic on the
//! broker it asked as soon as the request returns; other brokers follow within milliseconds.
//!
//! Topics created before a node kept its topics in the quorum (a data directory from an earlier
//! version) are handed to the quorum at start-up with their ids, placed on this broker.
//!
//! A local topic is removed only when the quorum's applied state is at least as new as the topic's
//! creation (its `created_at` log index): a node whose applied state trails its data directory after
//! a restart never mistakes "not applied yet" for "deleted".

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use sluice_cluster::{Command, Controller, NO_LEADER, Outcome, TopicState};
use uuid::Uuid;

use crate::broker::Broker;
use crate::config::TopicConfig;
use crate::coordinator::COORDINATOR_REPLICATION_FACTOR;
use crate::error::BrokerError;
use crate::metastore::{ProducerIdSource, TopicDefinition};
use crate::replication::Target;
use crate::topic::{INTERNAL_TOPICS, PLUGINS_TOPIC, is_internal_topic};

/// How long a topic change waits for a live broker to place partitions on.
const PLACE_WAIT: Duration = Duration::from_secs(10);
/// How often topics from before the quorum are offered to it again after a failed hand-over.
const ADOPT_RETRY: Duration = Duration::from_secs(1);
/// How often a broker looks again, with no metadata change, at internal topics the quorum lacks.
const INTERNAL_TOPIC_RECHECK: Duration = Duration::from_secs(5);

/// Waits for `work` from blocking code: a handler's `blocking` section, a spawn_blocking task, a
/// runtime's own thread, or (moved off it first) an async worker thread. The broker's runtime is
/// multi-threaded, so `block_in_place` is always allowed. Build timers inside `work` (an `async`
/// block): the caller's thread may have no runtime context.
pub(crate) fn wait<F: Future>(runtime: &tokio::runtime::Handle, work: F) -> F::Output {
    tokio::task::block_in_place(|| runtime.block_on(work))
}

/// Connections to peer brokers by address, opened on first use and replaced once closed: the
/// transaction coordinator's marker writer and the plugin host's calls each keep one.
pub(crate) struct PeerConnections {
    options: sluice_client::ConnectionOptions,
    open: parking_lot::Mutex<std::collections::HashMap<String, sluice_client::Connection>>,
}

impl PeerConnections {
    /// Connections whose requests carry `client_id`.
    pub(crate) fn new(client_id: String) -> PeerConnections {
        PeerConnections {
            options: sluice_client::ConnectionOptions { client_id, ..sluice_client::ConnectionOptions::default() },
            open: parking_lot::Mutex::default(),
        }
    }

    pub(crate) async fn get(&self, addr: &str) -> Result<sluice_client::Connection, String> {
        if let Some(open) = self.open.lock().get(addr).filter(|c| !c.is_closed()) {
            return Ok(open.clone());
        }
        let opened = sluice_client::Connection::open(addr, &self.options).await.map_err(|e| format!("cannot reach {addr}: {e}"))?;
        self.open.lock().insert(addr.to_string(), opened.clone());
        Ok(opened)
    }

    /// Drops the connection to `addr` (it failed or timed out); the next call opens a new one.
    pub(crate) fn forget(&self, addr: &str) {
        self.open.lock().remove(addr);
    }
}

/// The broker's settings of a topic, as the quorum stores them (it does not read them).
pub(crate) fn encode_config(config: &TopicConfig) -> Result<String, BrokerError> {
    serde_json::to_string(config).map_err(|e| BrokerError::InvalidConfig(e.to_string()))
}

fn decode_config(topic: &str, text: &str) -> TopicConfig {
    if text.is_empty() {
        return TopicConfig::default();
    }
    serde_json::from_str(text).unwrap_or_else(|error| {
        tracing::error!(topic, %error, "the controller holds settings this broker cannot read; using the defaults");
        TopicConfig::default()
    })
}

/// Places `count` partitions with `factor` replicas each on the live brokers: partition `p`'s
/// replicas are the `factor` brokers from position `start + p` on, round-robin (Kafka starts at a
/// random broker so that topics do not all begin on the same one), so the preferred leaders (the
/// first replicas) spread over the brokers. Waits for enough live brokers while a cluster starts.
/// Blocking.
pub(crate) fn place(
    broker: &Broker,
    controller: &Controller,
    count: usize,
    factor: usize,
    start: usize,
) -> Result<Vec<Vec<i32>>, BrokerError> {
    let runtime = broker.runtime()?;
    let deadline = Instant::now() + PLACE_WAIT;
    let mut changes = controller.subscribe();
    loop {
        let live: Vec<i32> = controller.with_metadata(|m, _| m.live_brokers().map(|b| b.registration.broker_id).collect());
        if !live.is_empty() && live.len() >= factor {
            let n = live.len();
            return Ok((0..count).map(|p| (0..factor).map(|r| live[start.wrapping_add(p).wrapping_add(r) % n]).collect()).collect());
        }
        let waited = wait(runtime, async { tokio::time::timeout_at(deadline.into(), changes.changed()).await });
        if !matches!(waited, Ok(Ok(()))) {
            return Err(if live.is_empty() {
                BrokerError::Timeout(format!(
                    "no broker registered with the controller within {PLACE_WAIT:?}: is a majority of the controller voters running?"
                ))
            } else {
                BrokerError::InvalidReplicationFactor(format!(
                    "{factor} replicas per partition need {factor} live brokers; {} are live ({live:?})",
                    live.len()
                ))
            });
        }
    }
}

/// How long a stopping broker waits for the quorum to move its partitions to other brokers.
const CONTROLLED_SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

/// Kafka's controlled shutdown, run when the broker is asked to stop and before it stops serving:
/// the quorum fences this broker now, which moves every partition it leads to another in-sync
/// replica and takes it out of the ISRs it shares, and this broker waits until it has applied that
/// (it leads nothing any more). Clients then find the new leaders while this broker still answers
/// (NOT_LEADER_OR_FOLLOWER), instead of after its connections drop. Skipped when no other broker
/// is live (nobody to hand over to); bounded by [`CONTROLLED_SHUTDOWN_WAIT`] (a quorum without a
/// majority cannot fence anyone: the broker stops anyway, as after a crash).
pub(crate) async fn controlled_shutdown(broker: &Broker, controller: &Controller) {
    let node = broker.node_id();
    let Some(incarnation) = broker.incarnation() else { return };
    let (others_live, leading) = controller.with_metadata(|m, _| {
        (
            m.live_brokers().any(|b| b.registration.broker_id != node),
            m.topics.values().flat_map(|t| &t.partitions).filter(|p| p.leader == node).count(),
        )
    });
    // Alone, or without a quorum leader to fence it, there is nothing to hand over (or nobody to
    // do it): stop as a crash would.
    if !others_live || controller.leader().is_none() || !broker.config().controlled_shutdown() {
        return;
    }
    let started = Instant::now();
    let moved = tokio::time::timeout(CONTROLLED_SHUTDOWN_WAIT, async {
        if let Some(index) = controller.shut_down_broker(node, incarnation).await? {
            broker.reconciled_to(index).await;
        }
        Ok::<(), sluice_cluster::ControllerError>(())
    })
    .await;
    let elapsed_ms = started.elapsed().as_millis() as u64;
    match moved {
        Ok(Ok(())) => tracing::info!(
            partitions = leading,
            elapsed_ms,
            "controlled shutdown: the partitions this broker led moved to other in-sync replicas"
        ),
        Ok(Err(error)) => {
            tracing::warn!(%error, "controlled shutdown failed; stopping anyway (the controller fences this broker when it is gone)")
        }
        Err(_) => tracing::warn!(
            wait_ms = CONTROLLED_SHUTDOWN_WAIT.as_millis() as u64,
            "controlled shutdown did not finish in time; stopping anyway (the controller fences this broker when it is gone)"
        ),
    }
}

/// Producer id blocks from the quorum, so that no two brokers hand out the same id.
pub(crate) struct QuorumProducerIds {
    controller: Arc<Controller>,
    runtime: tokio::runtime::Handle,
    broker_id: i32,
}

impl QuorumProducerIds {
    /// Called from the runtime the broker serves on.
    pub(crate) fn new(broker: &Broker, controller: Arc<Controller>) -> QuorumProducerIds {
        QuorumProducerIds { controller, runtime: tokio::runtime::Handle::current(), broker_id: broker.node_id() }
    }
}

impl ProducerIdSource for QuorumProducerIds {
    fn reserve(&self, count: i64, at_least: i64) -> Result<i64, BrokerError> {
        let command = Command::AllocateProducerIds { broker_id: self.broker_id, count, at_least };
        match wait(&self.runtime, self.controller.write(command)) {
            Ok(Outcome::ProducerIds { first }) => Ok(first),
            Ok(other) => Err(BrokerError::InvalidRequest(format!("the controller refused producer ids: {other:?}"))),
            Err(error) => Err(BrokerError::Timeout(format!("cannot reserve producer ids: {error}"))),
        }
    }

    fn ever_reserved(&self, producer_id: i64) -> bool {
        self.controller.with_metadata(|m, _| producer_id < m.next_producer_id)
    }
}

/// Applies the quorum's topics to this broker after every change, until the controller stops.
pub(crate) async fn follow(broker: Arc<Broker>, controller: Arc<Controller>) {
    let mut changes = controller.subscribe();
    loop {
        let (b, c) = (Arc::clone(&broker), Arc::clone(&controller));
        let adopt = match tokio::task::spawn_blocking(move || reconcile(&b, &c)).await {
            Ok(adopt) => adopt,
            Err(error) => {
                tracing::error!(%error, "applying the controller's metadata failed");
                Vec::new()
            }
        };
        let mut retry = false;
        for command in adopt {
            let Command::CreateTopic { name, id, .. } = &command else { continue };
            let id = Uuid::from_u128(*id);
            let (name, id) = (name.clone(), id);
            if is_internal_topic(&name) {
                match controller.write_committed(command).await.map(|c| c.outcome) {
                    Ok(Outcome::Applied) => tracing::info!(topic = name, "created an internal topic of the cluster"),
                    // Another broker created it first.
                    Ok(Outcome::TopicExists) => {}
                    Ok(other) => tracing::warn!(topic = name, ?other, "the controller refused an internal topic; retrying"),
                    Err(error) => tracing::warn!(topic = name, %error, "cannot create an internal topic yet; retrying"),
                }
                continue;
            }
            match controller.write_committed(command).await.map(|c| (c.index, c.outcome)) {
                Ok((index, Outcome::Applied)) => {
                    tracing::info!(topic = name, "handed a topic from before the controller quorum to it");
                    let quorum = controller.with_metadata(|m, _| m.quorum_id);
                    let b = Arc::clone(&broker);
                    let stamped = tokio::task::spawn_blocking(move || b.mark_handed_over(&name, id, quorum, index)).await;
                    if let Ok(Err(error)) = stamped {
                        tracing::error!(%error, "cannot record a topic handed to the controller");
                    }
                }
                Ok((_, Outcome::TopicExists)) => tracing::error!(
                    topic = name,
                    "another broker's topic of the same name is in the cluster; this broker's copy stays out of service: \
                     rename or delete one of them"
                ),
                Ok((_, other)) => tracing::error!(topic = name, ?other, "the controller refused a topic from before the quorum"),
                Err(error) => {
                    tracing::warn!(topic = name, %error, "cannot hand a topic to the controller yet; retrying");
                    retry = true;
                }
            }
        }
        // An internal topic the quorum lacks is looked at again even when nothing changes, so that
        // the fallback of `proposes_internal_topic` comes due.
        if retry {
            let _ = tokio::time::timeout(ADOPT_RETRY, changes.changed()).await;
        } else if broker.internal_topics_missing() {
            let _ = tokio::time::timeout(INTERNAL_TOPIC_RECHECK, changes.changed()).await;
        } else if changes.changed().await.is_err() {
            return;
        }
    }
}

/// One pass: makes this broker's topics what the quorum says. Returns the commands that hand
/// topics from before the quorum to it (written by the caller: a write waits for its commit).
fn reconcile(broker: &Arc<Broker>, controller: &Controller) -> Vec<Command> {
    let node = broker.node_id();
    let incarnation = broker.incarnation();
    let (index, registered, current, topics, cluster_id, quorum, addresses) = controller.with_metadata(|m, index| {
        let me = m.brokers.get(&node);
        let addresses: std::collections::BTreeMap<i32, String> =
            m.live_brokers().map(|b| (b.registration.broker_id, format!("{}:{}", b.registration.host, b.registration.port))).collect();
        (
            index,
            me.is_some(),
            // The state holds this process's own registration: it is at least as new as this
            // process, so what it says this broker leads is true now, not before a restart.
            me.is_some_and(|b| incarnation.is_none_or(|i| b.registration.incarnation == i)),
            m.topics.clone(),
            m.cluster_id.clone(),
            m.quorum_id,
            addresses,
        )
    });
    if let Some(cluster_id) = &cluster_id {
        broker.set_quorum_cluster_id(cluster_id);
    }
    let _control = broker.control();
    let mut leadership_changes = 0usize;
    let mut follow: std::collections::BTreeMap<i32, (String, Vec<Target>)> = std::collections::BTreeMap::new();
    for (name, state) in &topics {
        match apply_topic(broker, node, quorum, current, name, state) {
            Ok(changes) => leadership_changes += changes,
            Err(error) => tracing::error!(topic = name, %error, "cannot apply the controller's topic on this broker"),
        }
        // The partitions held here and led by another live broker: copy them from it.
        if let Some(topic) = broker.topic(name).filter(|t| t.id == Uuid::from_u128(state.id) && current) {
            for partition in topic.partitions.read().iter() {
                let Some(p) = state.partitions.get(partition.index as usize) else { continue };
                if p.leader == node || p.leader == NO_LEADER {
                    continue;
                }
                if let Some(addr) = addresses.get(&p.leader) {
                    let entry = follow.entry(p.leader).or_insert_with(|| (addr.clone(), Vec::new()));
                    entry.1.push(Target { partition: Arc::clone(partition), leader_epoch: p.leader_epoch });
                }
            }
        }
    }
    if let Ok(runtime) = broker.runtime() {
        broker.fetchers().update(broker, runtime, follow);
    }
    if current {
        broker.leading_as_the_quorum_says();
    }
    broker.follow_coordinator_partition();
    let mut adopt = Vec::new();
    if current && registered && broker.is_clustered() {
        for name in INTERNAL_TOPICS {
            let missing_since = broker.internal_topic_missing_since(name, !topics.contains_key(name));
            if let Some(since) = missing_since {
                adopt.extend(create_internal_topic(broker, &addresses, name, since.elapsed()));
            }
        }
    }
    for topic in broker.topics() {
        let name = topic.name.as_str();
        if topics.contains_key(name) {
            continue;
        }
        if !topic.belongs_to(quorum) {
            // From before the quorum (or from another quorum: a controller directory started
            // afresh): hand it over once this broker is registered (the quorum places partitions
            // only on registered brokers). Never deleted: this quorum never had it.
            if registered {
                let config = match encode_config(&topic.config.read()) {
                    Ok(config) => config,
                    Err(error) => {
                        tracing::error!(topic = name, %error, "cannot encode the topic's settings");
                        continue;
                    }
                };
                let assignments = (0..topic.partition_count()).map(|_| vec![node]).collect();
                adopt.push(Command::CreateTopic { name: name.to_string(), id: topic.id.as_u128(), config, assignments });
            }
        } else if topic.created_at.load(Ordering::Acquire) <= index {
            // The quorum has applied the topic's creation and no longer has it: it was deleted.
            if let Err(error) = broker.remove_topic_locally(name) {
                tracing::error!(topic = name, %error, "cannot remove a topic the controller deleted");
            }
        }
    }
    if leadership_changes > 0 {
        tracing::info!(partitions = leadership_changes, "partition leadership on this broker changed");
    }
    let (leaderless, under_replicated, reassigning) =
        controller.with_metadata(|m, _| (m.offline_partitions(), m.under_replicated_partitions(), m.reassigning_partitions()));
    broker.metrics().leaderless_partitions.set(leaderless as i64);
    broker.metrics().under_replicated_partitions.set(under_replicated as i64);
    broker.metrics().reassigning_partitions.set(reassigning as i64);
    broker.set_reconciled(index);
    if current && !broker.caught_up() {
        tracing::info!(index, "caught up with the controller quorum: serving clients");
        broker.set_caught_up();
    }
    adopt
}

/// How long the quorum may lack an internal topic before brokers other than the lowest-id live one
/// propose it: during a rolling upgrade that broker may run a version that does not know the topic.
pub(crate) const INTERNAL_TOPIC_FALLBACK: std::time::Duration = std::time::Duration::from_secs(30);

/// Whether this broker proposes an internal topic the quorum has lacked for `missing_for`: the live
/// broker with the lowest id at once, any other after [`INTERNAL_TOPIC_FALLBACK`]. Two proposals
/// cannot both create it: the quorum applies the first and refuses the next (the name exists).
fn proposes_internal_topic(node: i32, live: &std::collections::BTreeMap<i32, String>, missing_for: std::time::Duration) -> bool {
    live.keys().next() == Some(&node) || (live.contains_key(&node) && missing_for >= INTERNAL_TOPIC_FALLBACK)
}

/// The command that creates one of the [`INTERNAL_TOPICS`] (`__sluice_coordinator`, see
/// `coordinator`; `__sluice_plugins`, see `sluice_runtime::deployment_log`), once the cluster has as many live
/// brokers as its replicas need: proposed as [`proposes_internal_topic`] says, its replicas the
/// lowest live ids (the first its preferred leader).
fn create_internal_topic(
    broker: &Broker,
    live: &std::collections::BTreeMap<i32, String>,
    name: &str,
    missing_for: std::time::Duration,
) -> Option<Command> {
    if !broker.is_clustered() || !proposes_internal_topic(broker.node_id(), live, missing_for) {
        return None;
    }
    if live.keys().next() != Some(&broker.node_id()) {
        tracing::warn!(
            topic = name,
            missing_s = missing_for.as_secs(),
            "the cluster still lacks an internal topic the lowest-id live broker should have created (an older version?): proposing it"
        );
    }
    let factor = COORDINATOR_REPLICATION_FACTOR.min(broker.config().controller_voters().len());
    if live.len() < factor {
        tracing::info!(topic = name, live = live.len(), needed = factor, "waiting for brokers before creating an internal topic");
        return None;
    }
    let replicas: Vec<i32> = live.keys().copied().take(factor).collect();
    let mut settings = crate::coordinator::coordinator_topic_config(factor);
    if name == PLUGINS_TOPIC {
        // Deployments by name and module chunks by digest: the latest of each is what counts.
        settings.overrides.insert("cleanup.policy".into(), "compact".into());
    }
    let config = match encode_config(&settings) {
        Ok(config) => config,
        Err(error) => {
            tracing::error!(topic = name, %error, "cannot encode an internal topic's settings");
            return None;
        }
    };
    Some(Command::CreateTopic { name: name.to_string(), id: Uuid::new_v4().as_u128(), config, assignments: vec![replicas] })
}

/// Applies one of the quorum's topics; returns how many of its partitions here changed leadership.
/// `up_to_date`: the state holds this process's registration (else this broker leads nothing yet).
fn apply_topic(broker: &Broker, node: i32, quorum: u64, up_to_date: bool, name: &str, state: &TopicState) -> Result<usize, BrokerError> {
    let id = Uuid::from_u128(state.id);
    let hosted: Vec<i32> = (0..state.partitions.len() as i32).filter(|&p| state.partitions[p as usize].replicas.contains(&node)).collect();
    let total = state.partitions.len() as i32;
    let config = decode_config(name, &state.config);
    let mut local = broker.topic(name);
    if let Some(topic) = local.as_ref().filter(|t| t.id != id) {
        if !topic.belongs_to(quorum) {
            // Another topic of this name is the cluster's (reported when the hand-over was
            // refused): this copy is kept on disk but serves nobody.
            for partition in topic.partitions.read().iter() {
                partition.set_leadership(false, partition.leader_epoch());
            }
            return Ok(0);
        }
        if topic.created_at.load(Ordering::Acquire) > state.created_at {
            // This broker already holds a newer topic of that name than the state applied here.
            return Ok(0);
        }
        broker.remove_topic_locally(name)?;
        local = None;
    }
    let topic = match local {
        None => {
            let definition = TopicDefinition {
                name: name.to_string(),
                id,
                partitions: total,
                config,
                hosted: Some(hosted),
                created_at: Some(state.created_at),
                quorum: Some(quorum),
            };
            let topic = broker.open_new_topic(&definition)?;
            tracing::info!(topic = name, partitions = total, held_here = ?topic.hosted(), "opened topic placed by the controller");
            topic
        }
        Some(topic) => {
            if !topic.belongs_to(quorum) {
                topic.stamp(quorum, state.created_at);
                broker.save_definition(&topic)?;
            }
            // New partitions placed here, and existing ones a reassignment moved here.
            // Both lists ascend (binary searches: a topic may have 100,000 partitions).
            let held = topic.hosted();
            let added: Vec<i32> = hosted.iter().copied().filter(|p| held.binary_search(p).is_err()).collect();
            if total > topic.partition_count() || !added.is_empty() {
                broker.grow_topic_locally(&topic, total, added)?;
            }
            // Partitions a completed reassignment moved away. Only on a state that holds this
            // process's registration: an older one (applied after a restart) may predate the
            // reassignment that placed a partition here, and this copy may be the only one in sync.
            let gone: Vec<i32> = held.iter().copied().filter(|p| hosted.binary_search(p).is_err()).collect();
            if up_to_date && !gone.is_empty() {
                broker.drop_partitions_locally(&topic, &gone)?;
            }
            if *topic.config.read() != config {
                broker.configure_topic_locally(&topic, config)?;
            }
            topic
        }
    };
    let mut changed = 0;
    for partition in topic.partitions.read().iter() {
        let Some(state) = state.partitions.get(partition.index as usize) else { continue };
        if !up_to_date {
            if partition.set_leadership(false, state.leader_epoch) {
                changed += 1;
            }
            continue;
        }
        if partition.apply_replica_state(node, state, topic.id.as_u128()) {
            tracing::debug!(
                topic = name,
                partition = partition.index,
                leader = state.leader,
                epoch = state.leader_epoch,
                "leadership changed"
            );
            changed += 1;
        }
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::{INTERNAL_TOPIC_FALLBACK, proposes_internal_topic};

    #[test]
    fn the_lowest_live_broker_creates_internal_topics_and_the_others_only_when_it_does_not() {
        let live: BTreeMap<i32, String> = [(1, "a".to_string()), (2, "b".to_string()), (3, "c".to_string())].into();
        assert!(proposes_internal_topic(1, &live, Duration::ZERO));
        assert!(!proposes_internal_topic(2, &live, Duration::ZERO));
        assert!(!proposes_internal_topic(3, &live, INTERNAL_TOPIC_FALLBACK - Duration::from_millis(1)));
        // A rolling upgrade: broker 1 runs a version that does not know the topic.
        assert!(proposes_internal_topic(2, &live, INTERNAL_TOPIC_FALLBACK));
        assert!(proposes_internal_topic(3, &live, INTERNAL_TOPIC_FALLBACK));
        // A broker that is not live (fenced) never proposes.
        assert!(!proposes_internal_topic(4, &live, INTERNAL_TOPIC_FALLBACK * 10));
    }
}
