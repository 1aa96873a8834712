//! The broker's shared state and the control-plane operations on it: opening the data directory,
//! creating, altering and deleting topics, and allocating producer ids. Kafka handlers and the admin
//! API both call these, so a topic created over HTTP and one created by CreateTopics follow one path.
//!
//! Control-plane changes are serialised by `control` (a blocking mutex held only around file work,
//! never across an `.await`); the data plane reads the topic map concurrently without it.
//!
//! The broker builds its parts in dependency order and hands each what it needs: the offsets store;
//! the group coordinator (over the offsets); the topic registry and the producer-id allocator; then the
//! transaction coordinator over all four. None of them sees the `Broker`, so none can reach back into
//! it; only this module, the handlers, the admin API and `host` do.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::Mutex;
use sluice_cluster::{Command, Committed, Controller, ControllerError, Outcome};
use sluice_storage::PartitionLog;
use tokio::sync::watch;
use uuid::Uuid;

use crate::budget::ByteBudget;
use crate::config::{BrokerConfig, TopicConfig};
use crate::coordinator::{CoordinatorDeps, Coordinators, Hosting};
use crate::error::BrokerError;
use crate::file_calls::FileCalls;
use crate::internal_log::SharedLog;
use crate::metastore::{MetaStore, ProducerIds, TopicDefinition};
use crate::metrics::Metrics;
use crate::now_ms;
use crate::topic::{COORDINATOR_TOPIC, FlushPolicy, Partition, RESERVED_TOPIC_NAMES, Topic, TopicName, Topics};

/// The broker: its settings, its topics and the coordinators. Opaque outside the crate; runtimes see
/// it only through `host::Host`.
pub struct Broker {
    config: BrokerConfig,
    data_dir: PathBuf,
    cluster_id: String,
    topics: Arc<Topics>,
    meta: MetaStore,
    /// Serialises topic creation, deletion and reconfiguration.
    control: Mutex<()>,
    metrics: Metrics,
    /// This broker's own coordinators: every client's on a single node, only its plugins' in a
    /// cluster (see `coordinator`).
    local: Arc<Coordinators>,
    /// Whether the clients' coordinators live on the leader of `__sluice_coordinator-0` (a cluster
    /// of several voters) instead of in `local`.
    clustered: bool,
    /// Where the clients' coordinators of a cluster are, seen from here.
    hosting: Mutex<Hosting>,
    producer_ids: Arc<ProducerIds>,
    /// Frames being read or handled, over all connections (`queued.max.request.bytes`).
    request_bytes: Arc<ByteBudget>,
    /// Record bytes of Fetch replies queued to sockets and not yet sent, over all connections: a
    /// gauge, not a limit (the records are file ranges, not memory: see `handlers::fetch`).
    fetch_reply_bytes: Arc<ByteBudget>,
    /// Where appends and Fetch reads run (see `file_calls`).
    file_calls: FileCalls,
    /// This node's voter of the controller quorum, once `run` started it (absent in tests that
    /// open a broker without serving it).
    controller: OnceLock<Arc<Controller>>,
    /// The quorum's cluster id, once known.
    quorum_cluster_id: OnceLock<String>,
    /// The runtime the broker serves on, for blocking callers that wait for the controller.
    runtime: OnceLock<tokio::runtime::Handle>,
    /// The controller log index up to which this broker's topics follow the quorum.
    reconciled: watch::Sender<u64>,
    /// Whether this broker has caught up with the quorum since it started: see [`Broker::caught_up`].
    caught_up: watch::Sender<bool>,
    /// Since when each internal topic the quorum lacks has been found missing (`cluster`'s
    /// fallback for a cluster whose lowest-id broker does not create it).
    internal_topics_missing: Mutex<std::collections::BTreeMap<&'static str, std::time::Instant>>,
    /// This process's registration with the quorum (new at every start): until the quorum's state
    /// holds it, that state may predate this process and the broker leads nothing.
    incarnation: OnceLock<u128>,
    /// The follower side of replication: fetch tasks copying partitions led elsewhere.
    fetchers: crate::replication::Fetchers,
    /// ISR changes of the partitions this broker leads, on their way to the controller.
    isr_proposals: crate::replication::IsrProposals,
    /// Whether hanging transactions were looked for since this broker first led what the quorum says.
    hanging_checked: std::sync::atomic::AtomicBool,
    /// Held for the broker's lifetime: a second broker on the same directory would corrupt it.
    _dir_lock: fs::File,
}

/// How long a topic change waits for this broker to apply what the controller committed.
const RECONCILE_WAIT: Duration = Duration::from_secs(10);

/// Result of CreateTopics / POST /v1/topics for one topic.
pub(crate) struct CreatedTopic {
    pub(crate) topic: Arc<Topic>,
}

impl Broker {
    /// Opens (or initialises) the data directory and recovers every partition. Blocking file I/O.
    pub fn open(config: BrokerConfig, data_dir: &Path) -> Result<Arc<Broker>, BrokerError> {
        fs::create_dir_all(data_dir).map_err(|e| BrokerError::io(e, "create data directory", data_dir))?;
        let lock_path = data_dir.join(".lock");
        let dir_lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| BrokerError::io(e, "open", &lock_path))?;
        dir_lock.try_lock().map_err(|_| BrokerError::DataDirInUse { dir: data_dir.to_path_buf(), lock: lock_path.clone() })?;
        let budget = sluice_storage::configure_open_files();
        tracing::info!(
            soft_before = ?budget.soft_before,
            soft = ?budget.soft_after,
            hard = ?budget.hard,
            sealed_segment_files_open_max = budget.sealed_files_open_max,
            "open-file limit"
        );
        let meta = MetaStore::open(data_dir)?;
        let cluster = meta.cluster_meta()?;
        let metrics = Metrics::new();
        let now = now_ms();
        let topics = Arc::new(Topics::default());
        let definitions = meta.load_topics()?;
        let started = std::time::Instant::now();
        let mut partition_count = 0usize;
        for definition in &definitions {
            let topic = open_topic(&config, data_dir, definition, &metrics, now)?;
            partition_count += topic.partition_count() as usize;
            topics.insert(topic);
        }
        let (mut offline, mut quarantined) = (0i64, 0i64);
        for topic in topics.all() {
            for partition in topic.partitions.read().iter() {
                let (is_offline, quarantined_segments) = partition.health();
                offline += i64::from(is_offline);
                quarantined += quarantined_segments as i64;
            }
        }
        metrics.offline_partitions.set(offline);
        metrics.quarantined_segments.set(quarantined);
        if offline > 0 {
            tracing::error!(
                offline_partitions = offline,
                "started without some partitions; they answer KAFKA_STORAGE_ERROR until a restart opens them"
            );
        }
        remove_orphan_partitions(data_dir, &definitions);
        let producer_ids = Arc::new(ProducerIds::open(meta.clone())?);
        let deps = CoordinatorDeps { config: &config, topics: &topics, producer_ids: &producer_ids };
        let local = Arc::new(Coordinators::open_local(&deps, data_dir, now)?);
        tracing::info!(
            topics = definitions.len(),
            partitions = partition_count,
            committed_offsets = local.offsets.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "recovered data directory {}",
            data_dir.display()
        );
        local.transactions.recover();
        let clustered = config.controller_voters().len() > 1;
        let request_bytes = ByteBudget::new(config.queued_request_bytes_max() as usize);
        let fetch_reply_bytes = ByteBudget::new(usize::MAX);
        let file_calls = FileCalls::new(metrics.slow_file_calls.clone());
        Ok(Arc::new(Broker {
            quorum_cluster_id: OnceLock::new(),
            config,
            data_dir: data_dir.to_path_buf(),
            cluster_id: cluster.cluster_id,
            topics,
            meta,
            control: Mutex::new(()),
            metrics,
            local,
            clustered,
            hosting: Mutex::new(Hosting::Elsewhere),
            producer_ids,
            request_bytes,
            fetch_reply_bytes,
            file_calls,
            controller: OnceLock::new(),
            runtime: OnceLock::new(),
            reconciled: watch::channel(0).0,
            caught_up: watch::channel(false).0,
            internal_topics_missing: Mutex::new(std::collections::BTreeMap::new()),
            incarnation: OnceLock::new(),
            fetchers: crate::replication::Fetchers::default(),
            isr_proposals: crate::replication::IsrProposals::default(),
            hanging_checked: std::sync::atomic::AtomicBool::new(false),
            _dir_lock: dir_lock,
        }))
    }

    pub(crate) fn config(&self) -> &BrokerConfig {
        &self.config
    }

    pub(crate) fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The cluster's id: the quorum's once this broker has seen it, else its data directory's.
    pub(crate) fn cluster_id(&self) -> &str {
        self.quorum_cluster_id.get().map_or(&self.cluster_id, String::as_str)
    }

    /// The cluster id this data directory was created with.
    pub(crate) fn local_cluster_id(&self) -> &str {
        &self.cluster_id
    }

    /// Records the quorum's cluster id (the first broker's to register); it never changes after.
    pub(crate) fn set_quorum_cluster_id(&self, id: &str) {
        if self.quorum_cluster_id.get().is_none() {
            if id != self.cluster_id {
                tracing::info!(cluster_id = id, local = self.cluster_id, "this broker joined a cluster: clients see its id from now on");
            }
            let _ = self.quorum_cluster_id.set(id.to_string());
        }
    }

    pub(crate) fn request_bytes(&self) -> &Arc<ByteBudget> {
        &self.request_bytes
    }

    pub(crate) fn fetch_reply_bytes(&self) -> &Arc<ByteBudget> {
        &self.fetch_reply_bytes
    }

    /// Runs a request's append or Fetch read (see `file_calls`).
    pub(crate) fn file_calls(&self) -> &FileCalls {
        &self.file_calls
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// This broker's own coordinators: its plugins' (and on a single node, every client's).
    pub(crate) fn local_coordinators(&self) -> &Arc<Coordinators> {
        &self.local
    }

    /// The coordinators clients use: the local ones on a single node; in a cluster the ones loaded
    /// here while this broker leads `__sluice_coordinator-0`, else NOT_COORDINATOR (or
    /// COORDINATOR_LOAD_IN_PROGRESS while they load).
    pub(crate) fn coordinators(&self) -> Result<Arc<Coordinators>, kafka_protocol::ResponseError> {
        if !self.clustered {
            return Ok(Arc::clone(&self.local));
        }
        self.hosting.lock().serving()
    }

    /// Whether clients' coordinators live on a replicated partition (a cluster of several voters).
    pub(crate) fn is_clustered(&self) -> bool {
        self.clustered
    }

    /// Loads or unloads the clients' coordinators to match this broker's leadership of
    /// `__sluice_coordinator-0` (after every reconcile). A load runs in the background.
    pub(crate) fn follow_coordinator_partition(self: &Arc<Self>) {
        if !self.clustered {
            return;
        }
        let leading = self.partition(COORDINATOR_TOPIC, 0).ok().filter(|p| p.is_leader());
        if !self.hosting.lock().follow(leading.as_ref()) {
            return;
        }
        let (Some(partition), Ok(runtime)) = (leading, self.runtime()) else { return };
        let broker = Arc::clone(self);
        let epoch = partition.leader_epoch();
        runtime.spawn_blocking(move || broker.load_coordinators(partition, epoch));
    }

    fn load_coordinators(self: &Arc<Self>, partition: Arc<Partition>, epoch: i32) {
        let started = std::time::Instant::now();
        tracing::info!(epoch, "leading {COORDINATOR_TOPIC}: loading the group and transaction coordinators");
        let min_insync = self.topic(COORDINATOR_TOPIC).map_or(1, |t| t.config.read().min_insync_replicas(&self.config));
        let log = SharedLog::new(Arc::clone(&partition), epoch, min_insync);
        let remote = self.controller().map(|c| {
            Arc::new(crate::markers::QuorumMarkers::new(self.node_id(), Arc::clone(c))) as Arc<dyn crate::transactions::RemoteMarkers>
        });
        let deps = CoordinatorDeps { config: &self.config, topics: &self.topics, producer_ids: &self.producer_ids };
        // Before coordinators were replicated the lowest voter coordinated, in its own logs.
        let was_coordinator = self.config.controller_voters().keys().next().is_some_and(|&id| id as i32 == self.node_id());
        let loaded = Coordinators::load(&deps, log, remote, was_coordinator.then_some(&*self.local));
        let mut hosting = self.hosting.lock();
        let wanted = matches!(&*hosting, Hosting::Loading { epoch: e } if *e == epoch);
        match loaded {
            Ok(coordinators) if wanted && partition.is_leader() && partition.leader_epoch() == epoch => {
                tracing::info!(
                    epoch,
                    committed_offsets = coordinators.offsets.len(),
                    transactional_ids = coordinators.transactions.len(),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "coordinating groups and transactions"
                );
                if let Ok(runtime) = self.runtime() {
                    coordinators.start(runtime);
                }
                let coordinators = Arc::new(coordinators);
                *hosting = Hosting::Loaded(Arc::clone(&coordinators));
                drop(hosting);
                // Markers of transactions that were deciding when the last coordinator stopped; their
                // ids answer CONCURRENT_TRANSACTIONS (clients retry) until this is done.
                coordinators.transactions.finish_prepared();
            }
            Ok(coordinators) => {
                coordinators.unload();
                if wanted {
                    // Leadership went while loading, without a reconcile yet to say so.
                    *hosting = Hosting::Elsewhere;
                }
                tracing::info!(epoch, "leadership of {COORDINATOR_TOPIC} moved on while loading; discarded");
            }
            Err(error) => {
                tracing::error!(epoch, %error, "could not load the coordinators; retrying in a second");
                if wanted {
                    *hosting = Hosting::Elsewhere;
                    if let Ok(runtime) = self.runtime() {
                        let broker = Arc::clone(self);
                        runtime.spawn(async move {
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            broker.follow_coordinator_partition();
                        });
                    }
                }
            }
        }
    }

    /// Whether a coordinator here handed `producer_id` to a transactional id (such a producer only
    /// writes inside transactions).
    pub(crate) fn owns_transactional_producer(&self, producer_id: i64) -> bool {
        let mut owned = false;
        self.each_coordinators(|c| owned |= c.transactions.owns_producer(producer_id));
        owned
    }

    /// Runs `f` on every coordinator set this broker holds: the local one and a loaded cluster one.
    pub(crate) fn each_coordinators(&self, mut f: impl FnMut(&Coordinators)) {
        f(&self.local);
        let loaded = match &*self.hosting.lock() {
            Hosting::Loaded(c) => Some(Arc::clone(c)),
            _ => None,
        };
        if let Some(c) = loaded {
            f(&c);
        }
    }

    pub(crate) fn producer_ids(&self) -> &ProducerIds {
        &self.producer_ids
    }

    pub(crate) fn controller(&self) -> Option<&Arc<Controller>> {
        self.controller.get()
    }

    pub(crate) fn isr_proposals(&self) -> &crate::replication::IsrProposals {
        &self.isr_proposals
    }

    pub(crate) fn fetchers(&self) -> &crate::replication::Fetchers {
        &self.fetchers
    }

    /// This process's registration incarnation, once it registers with the quorum.
    pub(crate) fn incarnation(&self) -> Option<u128> {
        self.incarnation.get().copied()
    }

    pub(crate) fn set_incarnation(&self, incarnation: u128) {
        let _ = self.incarnation.set(incarnation);
    }

    /// Once, when this broker first leads what the quorum says: on the coordinator node, aborts
    /// transactions its partitions hold open that the coordinator does not know (start-up recovery
    /// could not: partitions of a cluster lead nothing when the data directory is opened).
    pub(crate) fn leading_as_the_quorum_says(&self) {
        // In a cluster the periodic check finds hanging transactions instead (`markers`): the
        // partitions led here may hold transactions of coordinators on other brokers.
        if !self.hanging_checked.swap(true, Ordering::AcqRel) && !self.clustered {
            self.local.transactions.abort_hanging();
        }
    }

    /// Joins the broker to its controller quorum: topic changes and producer ids go through it from
    /// now on. Called from the runtime the broker serves on.
    pub(crate) fn set_controller(self: &Arc<Self>, controller: Arc<Controller>) {
        let _ = self.runtime.set(tokio::runtime::Handle::current());
        self.producer_ids.use_cluster(Box::new(crate::cluster::QuorumProducerIds::new(self, Arc::clone(&controller))));
        self.local.transactions.use_remote_markers(Arc::new(crate::markers::QuorumMarkers::new(self.node_id(), Arc::clone(&controller))));
        // `run` starts one controller per broker; a second would be a bug, and the first stays.
        let _ = self.controller.set(controller);
    }

    /// The runtime the broker serves on, once it runs (blocking callers use it to wait).
    pub(crate) fn runtime(&self) -> Result<&tokio::runtime::Handle, BrokerError> {
        self.runtime.get().ok_or(BrokerError::ShuttingDown)
    }

    /// The node that coordinates the clients' consumer groups and transactions: this one alone; in a
    /// cluster, the leader of `__sluice_coordinator-0` as the quorum says (`None` while it has none).
    pub(crate) fn coordinator_node(&self) -> Option<i32> {
        if !self.clustered {
            return Some(self.node_id());
        }
        let controller = self.controller()?;
        controller.with_metadata(|m, _| {
            m.topics.get(COORDINATOR_TOPIC).and_then(|t| t.partitions.first()).map(|p| p.leader).filter(|&l| l != sluice_cluster::NO_LEADER)
        })
    }

    pub(crate) fn node_id(&self) -> i32 {
        self.config.node_id()
    }

    pub(crate) fn topic(&self, name: &str) -> Option<Arc<Topic>> {
        self.topics.get(name)
    }

    pub(crate) fn partition(&self, topic: &str, index: i32) -> Result<Arc<Partition>, BrokerError> {
        self.topics.partition(topic, index)
    }

    /// Whether the partition exists in the cluster, without allocating.
    pub(crate) fn partition_exists(&self, topic: &str, index: i32) -> bool {
        self.topics.contains_partition(topic, index)
    }

    /// All topics, sorted by name.
    pub(crate) fn topics(&self) -> Vec<Arc<Topic>> {
        self.topics.all()
    }

    /// Finds a topic, creating it with the broker's defaults when auto-creation is on.
    pub(crate) fn topic_or_auto_create(&self, name: &str) -> Result<Arc<Topic>, BrokerError> {
        if let Some(topic) = self.topic(name) {
            return Ok(topic);
        }
        if !self.config.auto_create_topics() {
            return Err(BrokerError::UnknownTopic(name.to_string()));
        }
        match self.create_topic(name, None, TopicConfig::default(), false) {
            Ok(created) => {
                tracing::info!(topic = name, partitions = created.topic.partition_count(), "auto-created topic");
                Ok(created.topic)
            }
            // Another request created it between our look-up and our create.
            Err(BrokerError::TopicExists(_)) => self.topic(name).ok_or_else(|| BrokerError::UnknownTopic(name.to_string())),
            Err(error) => Err(error),
        }
    }

    /// Creates a topic, its partitions placed by the broker. Blocking: call from a blocking context.
    pub(crate) fn create_topic(
        &self,
        name: &str,
        partitions: Option<i32>,
        config: TopicConfig,
        validate_only: bool,
    ) -> Result<CreatedTopic, BrokerError> {
        self.create_topic_placed(name, partitions, None, None, config, validate_only)
    }

    /// Creates a topic, with the replica assignment the client gave (checked by the caller with
    /// [`Broker::check_assignments`]) or one the broker picks with `factor` replicas per partition
    /// (`default.replication.factor` when `None`). In a cluster the controller quorum decides, and
    /// this returns once this broker applied the decision. Blocking file I/O.
    pub(crate) fn create_topic_placed(
        &self,
        name: &str,
        partitions: Option<i32>,
        assignments: Option<Vec<Vec<i32>>>,
        factor: Option<usize>,
        config: TopicConfig,
        validate_only: bool,
    ) -> Result<CreatedTopic, BrokerError> {
        let factor = factor.unwrap_or_else(|| self.config.default_replication_factor());
        let name = TopicName::parse(name)?;
        refuse_internal(name.as_str())?;
        let partitions = match &assignments {
            Some(assignments) => assignments.len() as i32,
            None => partitions.unwrap_or_else(|| self.config.num_partitions()),
        };
        let max = self.config.partitions_per_topic_max();
        if partitions < 1 || partitions > max {
            return Err(BrokerError::InvalidPartitions(format!("{partitions} is outside 1..={max} (max.partitions.per.topic)")));
        }
        let control = self.control.lock();
        if self.topics.contains(name.as_str()) {
            return Err(BrokerError::TopicExists(name.as_str().to_string()));
        }
        if self.topics.len() >= self.config.topics_max() {
            return Err(BrokerError::PolicyViolation(format!(
                "the cluster already holds max.topics = {} topics",
                self.config.topics_max()
            )));
        }
        // Kafka's rule: names that differ only in '.' vs '_' collide in metric names.
        if let Some(clash) = self.topics.metric_clash(name.as_str()) {
            return Err(BrokerError::InvalidTopic(format!(
                "'{}' collides with existing topic '{clash}' ('.' and '_' are interchangeable in metric names)",
                name.as_str()
            )));
        }
        let id = Uuid::new_v4();
        if assignments.is_none() {
            self.check_factor(factor)?;
        }
        if validate_only {
            let topic = Topic::new(name.clone(), id, config, partitions, 0, self.metrics.topic(name.as_str()));
            return Ok(CreatedTopic { topic: Arc::new(topic) });
        }
        let Some(controller) = self.controller() else {
            let definition =
                TopicDefinition { name: name.as_str().to_string(), id, partitions, config, hosted: None, created_at: None, quorum: None };
            let topic = self.open_new_topic(&definition)?;
            return Ok(CreatedTopic { topic });
        };
        drop(control);
        let assignments = match assignments {
            Some(assignments) => assignments,
            None => crate::cluster::place(self, controller, partitions as usize, factor, id.as_u128() as usize)?,
        };
        let command = Command::CreateTopic {
            name: name.as_str().to_string(),
            id: id.as_u128(),
            config: crate::cluster::encode_config(&config)?,
            assignments,
        };
        // Whatever the outcome, this broker first catches up to it: a TopicExists answer then finds
        // the other request's topic here.
        let committed = self.controller_write(controller, command)?;
        self.wait_reconciled(committed.index)?;
        match committed.outcome {
            Outcome::Applied => {}
            Outcome::TopicExists => return Err(BrokerError::TopicExists(name.as_str().to_string())),
            other => return Err(BrokerError::InvalidRequest(format!("the controller refused the topic: {}", refusal(other)))),
        }
        let topic = self.topic(name.as_str()).filter(|t| t.id == id).ok_or_else(|| BrokerError::UnknownTopic(name.as_str().to_string()))?;
        Ok(CreatedTopic { topic })
    }

    /// The registered brokers (this one alone without a quorum).
    fn known_brokers(&self) -> Vec<i32> {
        match self.controller() {
            Some(controller) => controller.with_metadata(|m, _| m.brokers.keys().copied().collect()),
            None => vec![self.node_id()],
        }
    }

    /// Refuses a replication factor the cluster cannot place: more replicas than brokers.
    pub(crate) fn check_factor(&self, factor: usize) -> Result<(), BrokerError> {
        let brokers = self.known_brokers().len().max(1);
        if factor == 0 || factor > brokers || factor > sluice_cluster::REPLICAS_MAX {
            return Err(BrokerError::InvalidReplicationFactor(format!(
                "{factor}: the cluster has {brokers} broker(s), and each replica of a partition needs its own broker"
            )));
        }
        Ok(())
    }

    /// Checks the replication factor and the replica assignments a client gave: each partition the
    /// same number of distinct brokers of the cluster. `factor` -1 means the default (or the
    /// assignments' own).
    pub(crate) fn check_assignments(&self, factor: i16, assignments: &[Vec<i32>]) -> Result<(), BrokerError> {
        if assignments.is_empty() {
            return match factor {
                -1 => Ok(()),
                f if f > 0 => self.check_factor(f as usize),
                f => Err(BrokerError::InvalidReplicationFactor(format!("{f}: a partition needs at least one replica"))),
            };
        }
        if factor != -1 {
            return Err(BrokerError::InvalidRequest("give either a replication factor or replica assignments, not both".into()));
        }
        let known = self.known_brokers();
        let width = assignments[0].len();
        for replicas in assignments {
            if replicas.is_empty() || replicas.len() != width || replicas.len() > sluice_cluster::REPLICAS_MAX {
                return Err(BrokerError::InvalidReplicationFactor(format!(
                    "replica list {replicas:?}: every partition needs the same number (1 to {}) of replicas",
                    sluice_cluster::REPLICAS_MAX
                )));
            }
            if let Some(id) = replicas.iter().find(|id| !known.contains(id)) {
                return Err(BrokerError::InvalidReplicationFactor(format!("broker {id} is not in the cluster (brokers: {known:?})")));
            }
            if replicas.iter().enumerate().any(|(i, r)| replicas[..i].contains(r)) {
                return Err(BrokerError::InvalidReplicationFactor(format!("replica list {replicas:?} names a broker twice")));
            }
        }
        Ok(())
    }

    /// How many replicas the topic's partitions have (its first partition's, as the quorum says).
    pub(crate) fn replication_factor(&self, topic: &Topic) -> usize {
        match self.controller() {
            Some(controller) => controller
                .with_metadata(|m, _| m.topics.get(topic.name.as_str()).and_then(|t| t.partitions.first()).map_or(1, |p| p.replicas.len())),
            None => 1,
        }
    }

    /// Deletes a topic and its data. Blocking file I/O.
    pub(crate) fn delete_topic(&self, name: &str) -> Result<(), BrokerError> {
        refuse_internal(name)?;
        let Some(controller) = self.controller() else {
            let _control = self.control.lock();
            return self.remove_topic_locally(name);
        };
        let topic = self.topic(name).ok_or_else(|| BrokerError::UnknownTopic(name.to_string()))?;
        let command = Command::DeleteTopic { name: name.to_string(), id: topic.id.as_u128() };
        let committed = self.controller_write(controller, command)?;
        self.wait_reconciled(committed.index)?;
        if committed.outcome != Outcome::Applied {
            return Err(BrokerError::UnknownTopic(name.to_string()));
        }
        tracing::info!(topic = name, "deleted topic");
        Ok(())
    }

    /// Grows a topic to `total` partitions. Blocking file I/O.
    pub(crate) fn add_partitions(&self, name: &str, total: i32, validate_only: bool) -> Result<(), BrokerError> {
        self.add_partitions_placed(name, total, None, validate_only)
    }

    /// Grows a topic to `total` partitions, placed as the client said (checked by the caller with
    /// [`Broker::check_assignments`]) or as the broker picks. Blocking file I/O.
    pub(crate) fn add_partitions_placed(
        &self,
        name: &str,
        total: i32,
        assignments: Option<Vec<Vec<i32>>>,
        validate_only: bool,
    ) -> Result<(), BrokerError> {
        refuse_internal(name)?;
        let control = self.control.lock();
        let topic = self.topic(name).ok_or_else(|| BrokerError::UnknownTopic(name.to_string()))?;
        let current = topic.partition_count();
        let max = self.config.partitions_per_topic_max();
        if total <= current {
            return Err(BrokerError::InvalidPartitions(format!(
                "topic '{name}' has {current} partitions; the new count must be larger (partitions cannot be removed)"
            )));
        }
        if total > max {
            return Err(BrokerError::InvalidPartitions(format!("{total} exceeds max.partitions.per.topic = {max}")));
        }
        if let Some(assignments) = &assignments
            && assignments.len() as i32 != total - current
        {
            return Err(BrokerError::InvalidRequest(format!(
                "{} replica assignments for {} new partitions",
                assignments.len(),
                total - current
            )));
        }
        if validate_only {
            return Ok(());
        }
        let Some(controller) = self.controller() else {
            return self.grow_topic_locally(&topic, total, (current..total).collect());
        };
        drop(control);
        let start = (topic.id.as_u128() as usize).wrapping_add(current as usize);
        let assignments = match assignments {
            Some(assignments) => assignments,
            None => crate::cluster::place(self, controller, (total - current) as usize, self.replication_factor(&topic), start)?,
        };
        let command = Command::CreatePartitions { name: name.to_string(), id: topic.id.as_u128(), assignments };
        let committed = self.controller_write(controller, command)?;
        self.wait_reconciled(committed.index)?;
        match committed.outcome {
            Outcome::Applied => Ok(()),
            Outcome::UnknownTopic => Err(BrokerError::UnknownTopic(name.to_string())),
            other => Err(BrokerError::InvalidPartitions(format!("the controller refused the partitions: {}", refusal(other)))),
        }
    }

    /// Replaces a topic's overrides with `config` (already validated). Blocking file I/O.
    pub(crate) fn set_topic_config(&self, name: &str, config: TopicConfig, validate_only: bool) -> Result<(), BrokerError> {
        let control = self.control.lock();
        let topic = self.topic(name).ok_or_else(|| BrokerError::UnknownTopic(name.to_string()))?;
        if validate_only {
            return Ok(());
        }
        let Some(controller) = self.controller() else {
            return self.configure_topic_locally(&topic, config);
        };
        drop(control);
        let command =
            Command::SetTopicConfig { name: name.to_string(), id: topic.id.as_u128(), config: crate::cluster::encode_config(&config)? };
        let committed = self.controller_write(controller, command)?;
        self.wait_reconciled(committed.index)?;
        match committed.outcome {
            Outcome::Applied => Ok(()),
            Outcome::UnknownTopic => Err(BrokerError::UnknownTopic(name.to_string())),
            other => Err(BrokerError::InvalidConfig(format!("the controller refused the settings: {}", refusal(other)))),
        }
    }

    /// Preferred leader election (Kafka's ElectLeaders with the PREFERRED type): `partitions` by
    /// topic name and index, or every partition. Returns each partition's result (for every
    /// partition: the ones whose leader changed). Blocking.
    pub(crate) fn elect_preferred_leaders(
        &self,
        partitions: Option<Vec<(String, i32)>>,
    ) -> Result<Vec<(String, i32, sluice_cluster::Election)>, BrokerError> {
        let Some(controller) = self.controller() else {
            return Err(BrokerError::InvalidRequest("this broker has no controller".into()));
        };
        // Names become the quorum's topic ids; a name it does not know answers for itself. Every
        // partition: those whose preferred replica does not lead.
        let mut unknown = Vec::new();
        let named: Vec<(String, u128, i32)> = controller.with_metadata(|m, _| match partitions {
            None => m.not_led_by_preferred(),
            Some(list) => list
                .into_iter()
                .filter_map(|(name, index)| match m.topics.get(&name) {
                    Some(topic) => Some((name, topic.id, index)),
                    None => {
                        unknown.push((name, index, sluice_cluster::Election::UnknownPartition));
                        None
                    }
                })
                .collect(),
        });
        let mut results = self.write_in_chunks(
            controller,
            &named,
            sluice_cluster::ELECTIONS_PER_COMMAND_MAX,
            |partitions| Command::ElectPreferredLeaders { partitions },
            |outcome| match outcome {
                Outcome::Elections(elections) => Ok(elections),
                other => Err(format!("the controller refused the election: {}", refusal(other))),
            },
        )?;
        results.extend(unknown);
        Ok(results)
    }

    /// Writes `items` to the quorum in commands of at most `per_command` (`command` builds one),
    /// waits until this broker applied each, and collects the per-item results `results` takes out
    /// of each outcome (or the refusal it names). Blocking.
    fn write_in_chunks<I: Clone, R>(
        &self,
        controller: &Controller,
        items: &[I],
        per_command: usize,
        command: impl Fn(Vec<I>) -> Command,
        results: impl Fn(Outcome) -> Result<Vec<R>, String>,
    ) -> Result<Vec<R>, BrokerError> {
        let mut collected = Vec::with_capacity(items.len());
        for chunk in items.chunks(per_command) {
            let committed = self.controller_write(controller, command(chunk.to_vec()))?;
            self.wait_reconciled(committed.index)?;
            collected.extend(results(committed.outcome).map_err(BrokerError::InvalidRequest)?);
        }
        Ok(collected)
    }

    /// Partition reassignment (Kafka's AlterPartitionReassignments): each (topic, partition) to its
    /// target replicas, or `None` to cancel the reassignment in progress. Returns each partition's
    /// result once this broker has applied it. Blocking.
    pub(crate) fn reassign_partitions(
        &self,
        partitions: Vec<(String, i32, Option<Vec<i32>>)>,
    ) -> Result<Vec<(String, i32, sluice_cluster::Reassigned)>, BrokerError> {
        let Some(controller) = self.controller() else {
            return Err(BrokerError::InvalidRequest("this broker has no controller".into()));
        };
        let mut unknown = Vec::new();
        let named: Vec<sluice_cluster::Reassignment> = controller.with_metadata(|m, _| {
            partitions
                .into_iter()
                .filter_map(|(topic, partition, target)| match m.topics.get(&topic) {
                    Some(state) => Some(sluice_cluster::Reassignment { id: state.id, topic, partition, target }),
                    None => {
                        unknown.push((topic, partition, sluice_cluster::Reassigned::UnknownPartition));
                        None
                    }
                })
                .collect()
        });
        let mut results = self.write_in_chunks(
            controller,
            &named,
            sluice_cluster::REASSIGNMENTS_PER_COMMAND_MAX,
            |partitions| Command::ReassignPartitions { partitions },
            |outcome| match outcome {
                Outcome::Reassignments(done) => Ok(done),
                other => Err(format!("the controller refused the reassignment: {}", refusal(other))),
            },
        )?;
        results.extend(unknown);
        Ok(results)
    }

    /// The reassignments in progress (Kafka's ListPartitionReassignments), of every partition or of
    /// the named ones, sorted.
    pub(crate) fn list_reassignments(&self, named: Option<&[(String, i32)]>) -> Vec<Moving> {
        let Some(controller) = self.controller() else { return Vec::new() };
        let named: Option<HashSet<(&str, i32)>> = named.map(|list| list.iter().map(|(t, i)| (t.as_str(), *i)).collect());
        controller.with_metadata(|m, _| {
            let mut found = Vec::new();
            for (name, topic) in &m.topics {
                for (index, p) in topic.partitions.iter().enumerate() {
                    let wanted = named.as_ref().is_none_or(|set| set.contains(&(name.as_str(), index as i32)));
                    if p.reassigning() && wanted {
                        found.push((name.clone(), index as i32, p.replicas.clone(), p.adding.clone(), p.removing.clone()));
                    }
                }
            }
            found
        })
    }

    /// Appends a command to the controller's log and waits for its commit. Blocking.
    pub(crate) fn controller_write(&self, controller: &Controller, command: Command) -> Result<Committed, BrokerError> {
        crate::cluster::wait(self.runtime()?, controller.write_committed(command)).map_err(|error| match error {
            ControllerError::NoLeader(after) => {
                BrokerError::Timeout(format!("no controller leader answered within {after:?}: is a majority of the voters running?"))
            }
            other => BrokerError::Controller(other),
        })
    }

    /// Waits until this broker applied the controller log up to `index` to its own topics. Blocking.
    pub(crate) fn wait_reconciled(&self, index: u64) -> Result<(), BrokerError> {
        let mut applied = self.reconciled.subscribe();
        // Built inside the runtime: a timer needs its context.
        let waited = crate::cluster::wait(self.runtime()?, async {
            tokio::time::timeout(RECONCILE_WAIT, applied.wait_for(|&done| done >= index)).await.map(|r| r.map(|_| ()))
        });
        match waited {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(BrokerError::ShuttingDown),
            Err(_) => Err(BrokerError::Timeout(format!(
                "the controller committed the change, but this broker did not apply it within {RECONCILE_WAIT:?}"
            ))),
        }
    }

    /// Whether broker `id` is registered and not fenced, as this broker's applied quorum state says
    /// (always true without a controller: a single node in tests).
    pub(crate) fn is_live_broker(&self, id: i32) -> bool {
        self.controller().is_none_or(|c| c.with_metadata(|m, _| m.brokers.get(&id).is_some_and(|b| !b.fenced)))
    }

    /// Waits (async) until this broker applied the controller log up to `index`.
    pub(crate) async fn reconciled_to(&self, index: u64) {
        let mut applied = self.reconciled.subscribe();
        let _ = applied.wait_for(|&done| done >= index).await;
    }

    /// Says that this broker's topics reflect the controller log up to `index`.
    pub(crate) fn set_reconciled(&self, index: u64) {
        self.reconciled.send_if_modified(|done| {
            let newer = index > *done;
            *done = (*done).max(index);
            newer
        });
    }

    /// Since when the quorum has lacked the internal topic `name`, as this broker saw it (`missing`:
    /// it lacks it now; `false` forgets the time).
    pub(crate) fn internal_topic_missing_since(&self, name: &'static str, missing: bool) -> Option<std::time::Instant> {
        let mut since = self.internal_topics_missing.lock();
        if !missing {
            since.remove(name);
            return None;
        }
        Some(*since.entry(name).or_insert_with(std::time::Instant::now))
    }

    /// Whether the quorum lacks an internal topic, as this broker last saw it.
    pub(crate) fn internal_topics_missing(&self) -> bool {
        !self.internal_topics_missing.lock().is_empty()
    }

    /// Whether this broker has applied the quorum's state up to its own registration (Kafka's
    /// "caught up with the metadata log"): only then is its view of the cluster newer than this
    /// process. Before that, a restarted broker's view is the one it had when it died: leaders that
    /// have moved since, an old ISR, and on a cluster's first start its own directory's cluster id.
    /// Clients are answered only once this holds (ApiVersions excepted). It stays true while the
    /// process runs: later, a broker trails the quorum by moments, as in Kafka.
    pub fn caught_up(&self) -> bool {
        *self.caught_up.borrow()
    }

    /// Waits until [`Broker::caught_up`] holds.
    pub(crate) async fn wait_caught_up(&self) {
        let mut caught_up = self.caught_up.subscribe();
        let _ = caught_up.wait_for(|&done| done).await;
    }

    pub(crate) fn set_caught_up(&self) {
        self.caught_up.send_if_modified(|done| !std::mem::replace(done, true));
    }

    /// Opens a new topic's partitions held here and records its definition. The caller holds
    /// `control`. Blocking file I/O.
    pub(crate) fn open_new_topic(&self, definition: &TopicDefinition) -> Result<Arc<Topic>, BrokerError> {
        let topic = topic_of(definition, &self.metrics)?;
        // Partition directories first, definition last: a crash in between leaves orphans that the
        // next start removes, never a definition pointing at missing partitions.
        let opened = open_partitions(&self.config, &self.data_dir, &topic, definition.hosted(), now_ms())?;
        topic.partitions.write().extend(opened);
        self.meta.save_topic(definition)?;
        self.topics.insert(Arc::clone(&topic));
        Ok(topic)
    }

    /// Removes a topic and its data from this broker. The caller holds `control`. Blocking file I/O.
    pub(crate) fn remove_topic_locally(&self, name: &str) -> Result<(), BrokerError> {
        let Some(topic) = self.topics.remove(name) else {
            return Err(BrokerError::UnknownTopic(name.to_string()));
        };
        self.meta.remove_topic(name)?;
        let partitions = topic.partitions.read().clone();
        for partition in &partitions {
            if let Err(error) = partition.delete() {
                tracing::warn!(topic = name, partition = partition.index, %error, "could not remove partition directory; it will be removed at the next start");
            }
        }
        self.metrics.forget_topic(name, topic.partition_count());
        self.local.offsets.forget_topic(name);
        if self.clustered
            && let Ok(coordinators) = self.coordinators()
            && let Ok(runtime) = self.runtime()
        {
            // An acks=all write on the coordinator log: not under the control lock held here.
            let name = name.to_string();
            runtime.spawn_blocking(move || coordinators.offsets.forget_topic(&name));
        }
        tracing::info!(topic = name, "removed topic from this broker");
        Ok(())
    }

    /// Grows a topic to `total` partitions and opens `hosted`, partitions newly held here: new
    /// ones, or existing ones the controller moved here (a reassignment). The caller holds
    /// `control`. Blocking file I/O.
    pub(crate) fn grow_topic_locally(&self, topic: &Arc<Topic>, total: i32, hosted: Vec<i32>) -> Result<(), BrokerError> {
        let opened = open_partitions(&self.config, &self.data_dir, topic, hosted, now_ms())?;
        {
            let mut partitions = topic.partitions.write();
            partitions.extend(opened);
            partitions.sort_by_key(|p| p.index);
        }
        topic.partition_total.store(total, Ordering::Release);
        self.save_definition(topic)
    }

    /// Removes the partitions `gone` (ascending) from this broker: the controller moved them to other brokers
    /// (a reassignment completed). The definition is saved first, so a crash midway leaves only
    /// directories that the next start removes as orphans. The caller holds `control`. Blocking
    /// file I/O.
    pub(crate) fn drop_partitions_locally(&self, topic: &Arc<Topic>, gone: &[i32]) -> Result<(), BrokerError> {
        let removed: Vec<Arc<Partition>> = {
            let mut partitions = topic.partitions.write();
            let (removed, kept) = std::mem::take(&mut *partitions).into_iter().partition(|p| gone.binary_search(&p.index).is_ok());
            *partitions = kept;
            removed
        };
        self.save_definition(topic)?;
        for partition in removed {
            partition.set_leadership(false, partition.leader_epoch());
            if let Err(error) = partition.delete() {
                tracing::warn!(topic = topic.name.as_str(), partition = partition.index, %error, "could not remove a moved partition's directory; it will be removed at the next start");
            }
            self.metrics.forget_partition(topic.name.as_str(), partition.index);
            tracing::info!(
                topic = topic.name.as_str(),
                partition = partition.index,
                "removed a partition the controller moved to other brokers"
            );
        }
        Ok(())
    }

    /// Applies new settings to a topic here. The caller holds `control`. Blocking file I/O.
    pub(crate) fn configure_topic_locally(&self, topic: &Topic, config: TopicConfig) -> Result<(), BrokerError> {
        let log_config = config.log_config(&self.config);
        let policy = FlushPolicy::from_flush_messages(config.flush_messages(&self.config));
        *topic.config.write() = config;
        self.save_definition(topic)?;
        for partition in topic.partitions.read().iter() {
            partition.reconfigure(log_config.clone(), policy);
        }
        Ok(())
    }

    /// Stamps a topic this broker handed to the quorum as the quorum's, at once: were the quorum
    /// to delete it before the next pass, that pass must not hand it over again.
    pub(crate) fn mark_handed_over(&self, name: &str, id: Uuid, quorum: u64, index: u64) -> Result<(), BrokerError> {
        let _control = self.control.lock();
        match self.topic(name).filter(|t| t.id == id) {
            Some(topic) => {
                topic.stamp(quorum, index);
                self.save_definition(&topic)
            }
            None => Ok(()),
        }
    }

    /// Serialises changes to this broker's topics (the reconciler holds it for a whole pass).
    pub(crate) fn control(&self) -> parking_lot::MutexGuard<'_, ()> {
        self.control.lock()
    }

    pub(crate) fn save_definition(&self, topic: &Topic) -> Result<(), BrokerError> {
        let created_at = topic.created_at.load(Ordering::Acquire);
        let definition = TopicDefinition {
            name: topic.name.as_str().to_string(),
            id: topic.id,
            partitions: topic.partition_count(),
            config: topic.config.read().clone(),
            hosted: (created_at > 0).then(|| topic.hosted()),
            created_at: (created_at > 0).then_some(created_at),
            quorum: (created_at > 0).then(|| topic.quorum.load(Ordering::Acquire)),
        };
        self.meta.save_topic(&definition)
    }

    /// Clean shutdown: flush and close every log so the next start skips full recovery. Blocking
    /// file I/O.
    pub fn close(&self) {
        // Waits for a reconciler pass that is opening or removing partitions.
        let _control = self.control.lock();
        let started = std::time::Instant::now();
        let partitions: Vec<Arc<Partition>> = self.topics().iter().flat_map(|t| t.partitions.read().clone()).collect();
        // Each close is a handful of fsyncs (segment, producer snapshot, recovery point, clean
        // marker, directory) that wait on the disk, not the CPU: run them side by side so a broker
        // with thousands of partitions stops in seconds (300 partitions one by one took 11 s on a
        // busy disk).
        let next = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..CLOSE_THREADS.min(partitions.len()) {
                scope.spawn(|| {
                    while let Some(partition) = partitions.get(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)) {
                        if let Err(error) = partition.close() {
                            tracing::error!(topic = partition.topic.as_str(), partition = partition.index, %error, "close failed; the next start will run recovery");
                        }
                    }
                });
            }
        });
        self.local.close();
        tracing::info!(partitions = partitions.len(), elapsed_ms = started.elapsed().as_millis() as u64, "closed all logs");
    }
}

/// Clients may read the coordinators' topic, never create, delete, grow or write it.
pub(crate) fn refuse_internal(name: &str) -> Result<(), BrokerError> {
    if name == COORDINATOR_TOPIC {
        return Err(BrokerError::InvalidTopic(format!("'{name}' is the group and transaction coordinators' internal topic")));
    }
    if name == crate::topic::PLUGINS_TOPIC {
        return Err(BrokerError::InvalidTopic(format!("'{name}' is the plugin host's internal topic (deployments and modules)")));
    }
    Ok(())
}

/// Why the controller did not apply a command, in words.
/// A partition being reassigned: topic, partition, replicas, the ones being added, the ones leaving.
pub(crate) type Moving = (String, i32, Vec<i32>, Vec<i32>, Vec<i32>);

fn refusal(outcome: Outcome) -> String {
    match outcome {
        Outcome::Rejected(reason) => reason,
        other => format!("{other:?}"),
    }
}

/// Threads that close partitions at shutdown, side by side.
const CLOSE_THREADS: usize = 16;

pub(crate) fn partition_dir(data_dir: &Path, topic: &str, index: i32) -> PathBuf {
    data_dir.join(format!("{topic}-{index}"))
}

/// A topic as its definition describes it, with no partition opened yet.
fn topic_of(definition: &TopicDefinition, metrics: &Metrics) -> Result<Arc<Topic>, BrokerError> {
    let name = TopicName::parse(&definition.name)?;
    let topic = Topic::new(
        name,
        definition.id,
        definition.config.clone(),
        definition.partitions,
        definition.created_at.unwrap_or(0),
        metrics.topic(&definition.name),
    );
    topic.quorum.store(definition.quorum.unwrap_or(0), Ordering::Release);
    Ok(Arc::new(topic))
}

fn open_topic(
    config: &BrokerConfig,
    data_dir: &Path,
    definition: &TopicDefinition,
    metrics: &Metrics,
    now: i64,
) -> Result<Arc<Topic>, BrokerError> {
    let topic = topic_of(definition, metrics)?;
    // At start-up a partition that cannot be opened must not keep the others from serving: it is
    // reported and stays offline (KAFKA_STORAGE_ERROR) until a restart opens it.
    let topic_config = topic.config.read().clone();
    let log_config = topic_config.log_config(config);
    let policy = FlushPolicy::from_flush_messages(topic_config.flush_messages(config));
    let opened = definition.hosted().into_iter().map(|index| {
        let dir = partition_dir(data_dir, topic.name.as_str(), index);
        let log = PartitionLog::open(&dir, log_config.clone(), now).unwrap_or_else(|error| {
            tracing::error!(topic = topic.name.as_str(), partition = index, dir = %dir.display(), %error, "cannot open partition; it stays offline");
            PartitionLog::offline(&dir, log_config.clone(), format!("it could not be opened at start-up: {error}"))
        });
        starting(&topic, Partition::new(topic.name.clone(), index, dir, log, policy, now))
    });
    topic.partitions.write().extend(opened);
    Ok(topic)
}

/// A partition of a topic the quorum holds leads nothing until the reconciler says it does: a
/// broker restarting must not take writes for a partition another broker now leads.
fn starting(topic: &Topic, partition: Arc<Partition>) -> Arc<Partition> {
    if topic.created_at.load(Ordering::Acquire) > 0 {
        partition.set_leadership(false, 0);
        partition.forget_high_watermark();
    }
    partition
}

fn open_partitions(
    config: &BrokerConfig,
    data_dir: &Path,
    topic: &Arc<Topic>,
    indices: Vec<i32>,
    now: i64,
) -> Result<Vec<Arc<Partition>>, BrokerError> {
    let topic_config = topic.config.read().clone();
    let log_config = topic_config.log_config(config);
    let policy = FlushPolicy::from_flush_messages(topic_config.flush_messages(config));
    indices
        .into_iter()
        .map(|index| {
            let dir = partition_dir(data_dir, topic.name.as_str(), index);
            let log = PartitionLog::open(&dir, log_config.clone(), now)?;
            Ok(starting(topic, Partition::new(topic.name.clone(), index, dir, log, policy, now)))
        })
        .collect()
}

/// Removes `<topic>-<n>` directories that no topic definition claims: the remains of a deletion
/// that a crash interrupted.
fn remove_orphan_partitions(data_dir: &Path, definitions: &[TopicDefinition]) {
    let claimed: HashSet<String> =
        definitions.iter().flat_map(|d| d.hosted().into_iter().map(move |p| format!("{}-{p}", d.name))).collect();
    let Ok(entries) = fs::read_dir(data_dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        // The broker's own logs (`__consumer_offsets-0`, `__consumer_groups-0`, …) look like partitions
        // but are never claimed by a topic definition.
        let looks_like_partition = name.rsplit_once('-').is_some_and(|(topic, p)| {
            !topic.is_empty() && !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && !RESERVED_TOPIC_NAMES.contains(&topic)
        });
        if looks_like_partition && entry.path().is_dir() && !claimed.contains(&name) {
            tracing::warn!(dir = %entry.path().display(), "removing partition directory of a deleted topic");
            if let Err(error) = fs::remove_dir_all(entry.path()) {
                tracing::warn!(dir = %entry.path().display(), %error, "could not remove orphan partition directory");
            }
        }
    }
}
