//! The transform manager: deployments by name, each a supervised set of runners (one per input
//! partition, `sluice-runtime`'s supervisor), its module from the shared registry. Deploy, redeploy
//! (same name: the new module resumes from the committed positions), pause, resume, limit changes
//! without a restart, delete, and start-up from the stored deployments. Partitions added to an input
//! topic get a runner within the supervisor's reconcile interval.
//!
//! On a broker of its own the deployments are files of that broker. In a cluster they live in the
//! plugin log (`sluice_runtime::deployment_log`): a deploy, pause, limit change or delete on any
//! broker is written there, and every broker's follower applies it. Each broker runs the runners
//! of the input partitions it leads; when leadership moves, the supervisor's reconcile stops the
//! runner on the old leader and starts one on the new (its InitProducerId fences the old one, so
//! the hand-over is exactly once).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use parking_lot::Mutex;
use serde::Serialize;
use sluice_broker::host::Host;
use sluice_runtime::deployment_log::Change;
use sluice_runtime::{DeploymentLog, LogBuffer, LogLine, MetricFamilies, Plugins, RuntimeError, Supervisor, Task, TaskSet, TaskState};
use sluice_wasm::{InstanceConfig, Limits, TransformModule, run_with_watchdog};

use crate::runner::{Runner, Shared};
use crate::spec::{Store, StoredDeployment, TransformErrorPolicy, TransformSpec};

/// Longest a deploy waits for the trial `init` (past the module's own CPU bound, which stops it first).
const TRIAL_INIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// Lines of a deployment's log a status shows.
const STATUS_LOG_LINES: usize = 20;
/// How soon a deployment read from the plugin log that could not start is tried again (doubling
/// up to [`APPLY_RETRY_MAX`]), and how soon moving this broker's own deployments into the log is.
const APPLY_RETRY: std::time::Duration = std::time::Duration::from_secs(5);
const APPLY_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(300);
/// Transaction timeout of the transactions that move a deployment's positions into the cluster.
const ADOPT_TXN_TIMEOUT_MS: i32 = 60_000;

struct Deployment {
    stored: StoredDeployment,
    shared: Arc<Shared>,
    tasks: Arc<TaskSet>,
}

pub struct TransformManager {
    host: Host,
    plugins: Plugins,
    store: Store,
    families: MetricFamilies,
    supervisor: Supervisor,
    deployments: Mutex<BTreeMap<String, Deployment>>,
    /// Serialises deploys, deletes and restarts (compiling happens outside `deployments`' lock).
    control: Mutex<()>,
    /// In a cluster: where deployments live (this broker's files are not used).
    log: Option<Arc<DeploymentLog>>,
    /// In a cluster: the plugin log's accepted record of every deployment (what every broker
    /// agrees is deployed, whether or not it runs here), by name.
    accepted: Mutex<BTreeMap<String, Accepted>>,
    /// When to try again to move this broker's own deployment files into the plugin log (`None`:
    /// nothing left to move).
    adopt_retry_at: Mutex<Option<Instant>>,
}

/// A deployment's latest accepted record in the plugin log.
struct Accepted {
    offset: i64,
    stored: StoredDeployment,
    /// Why it does not run on this broker yet, and when to try again.
    waiting: Option<Waiting>,
}

struct Waiting {
    error: String,
    next: Instant,
    delay: std::time::Duration,
}

/// What a deploy names as its module: bytes uploaded with it, or a module in the registry.
pub enum ModuleSource {
    Bytes(Vec<u8>),
    Registered(String),
}

/// `GET /v1/transforms/{name}`.
#[derive(Debug, Clone, Serialize)]
pub struct TransformStatus {
    pub name: String,
    /// running | paused | failed
    pub state: &'static str,
    pub error: Option<String>,
    pub version: u64,
    pub module_digest: String,
    pub module_bytes: usize,
    /// Which compiler made the code new instances run: `baseline` (Winch) right after a cold
    /// deploy, `optimized` (Cranelift) once the background compile is done; runners move to it
    /// between batches.
    pub code: &'static str,
    /// How batches cross into the module: `one_buffer` (built with the current SDK: it exports
    /// `batch-transformer`) or `per_record` (an older build: one list element per key, value and
    /// header — correct, but the boundary costs several times more; rebuild it).
    pub boundary: &'static str,
    pub deployed_at_ms: i64,
    pub input_topic: String,
    pub output_topics: Vec<String>,
    pub error_policy: TransformErrorPolicy,
    pub memory_bytes: usize,
    pub cpu_ms_per_call: u64,
    pub records_in: u64,
    pub records_out: u64,
    pub dead_lettered: u64,
    pub lag: i64,
    pub partitions: Vec<PartitionStatus>,
    /// In a cluster: the broker this status comes from (it runs `partitions`), and the input
    /// partitions other brokers lead (their runners are there).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broker_id: Option<i32>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub partitions_elsewhere: Vec<PartitionElsewhere>,
    pub logs: Vec<LogLine>,
}

/// An input partition whose runner is on another broker (its leader).
#[derive(Debug, Clone, Serialize)]
pub struct PartitionElsewhere {
    pub partition: i32,
    /// The partition's leader; `None` while it has none.
    pub broker_id: Option<i32>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PartitionStatus {
    pub partition: i32,
    /// RUNNING | PAUSED | FAILED | STOPPED | UNASSIGNED (Kafka Connect's task states).
    pub state: TaskState,
    pub position: i64,
    pub last_stable_offset: i64,
    pub lag: i64,
    pub records_in: u64,
    pub records_out: u64,
    pub error: Option<String>,
    /// Infrastructure errors the runner backed off from since it started.
    pub retries: u64,
}

impl TransformManager {
    pub fn open(host: Host, plugins: Plugins) -> Result<TransformManager, RuntimeError> {
        let store = Store::open(&host.data_dir()?)?;
        let families = MetricFamilies::register(host.metrics(), "transform")?;
        let supervisor = Supervisor::new("transform")?;
        let log = DeploymentLog::open(&host, "transform");
        Ok(TransformManager {
            host,
            plugins,
            store,
            families,
            supervisor,
            deployments: Mutex::new(BTreeMap::new()),
            control: Mutex::new(()),
            log,
            accepted: Mutex::new(BTreeMap::new()),
            adopt_retry_at: Mutex::new(Some(Instant::now())),
        })
    }

    /// The compiled module of a stored deployment, moving components an earlier version kept in
    /// `__transforms/modules/` into the registry.
    fn stored_module(&self, digest: &str) -> Result<TransformModule, RuntimeError> {
        let registry = self.plugins.registry()?;
        if !registry.has_digest(digest)
            && let Some((path, bytes)) = self.store.legacy_module(digest)
        {
            registry.import(&bytes)?;
            let _ = std::fs::remove_file(&path);
            tracing::info!(digest, "moved a transform module into the plugin registry");
        }
        Ok(registry.load(digest)?.transform()?)
    }

    /// Starts every stored deployment (at broker start). A deployment whose module no longer loads
    /// is reported and left stopped; the others start. In a cluster: starts following the plugin
    /// log instead, which starts the deployments as it reads them.
    pub fn start_all(self: &Arc<Self>) {
        if let Some(log) = &self.log {
            let (apply, adopt) = (Arc::downgrade(self), Arc::downgrade(self));
            let followed = log.follow(
                move |change| {
                    if let Some(manager) = apply.upgrade() {
                        manager.apply(change);
                    }
                },
                move || {
                    let Some(manager) = adopt.upgrade() else { return };
                    manager.adopt_when_due();
                    manager.retry_pending();
                },
            );
            if let Err(error) = followed {
                tracing::error!(%error, "cannot follow the plugin log: no transform runs on this broker");
            }
            return;
        }
        let stored = self.store.load_all();
        let _control = self.control.lock();
        for deployment in stored {
            let name = deployment.spec.name.clone();
            let started = std::time::Instant::now();
            let module = match self.stored_module(&deployment.module_digest) {
                Ok(module) => module,
                Err(error) => {
                    tracing::error!(transform = name, %error, "cannot load a deployed transform's module; it stays stopped");
                    continue;
                }
            };
            let cache_hit = module.cache_hit();
            match self.start(deployment, module) {
                Ok(()) => {
                    tracing::info!(transform = name, cache_hit, elapsed_ms = started.elapsed().as_millis() as u64, "transform restored")
                }
                Err(error) => tracing::error!(transform = name, %error, "cannot start a deployed transform"),
            }
        }
    }

    /// Applies one change read from the plugin log (cluster). Runs on the log's follower thread;
    /// every broker takes the same decisions from the same records, in the same order.
    fn apply(&self, change: Change) {
        let _control = self.control.lock();
        if self.log.as_ref().is_some_and(|log| log.stopped()) {
            return;
        }
        let name = change.name;
        let Some(record) = change.record else {
            self.accepted.lock().remove(&name);
            if let Some(stored) = self.stop(&name) {
                let partitions = self.host.topic(&stored.spec.input_topic).map_or(0, |t| t.partitions.max(0) as usize);
                self.families.forget(&name, partitions);
                self.collect_garbage();
                tracing::info!(transform = name, "transform deleted");
            }
            return;
        };
        let stored: StoredDeployment = match serde_json::from_slice(&record) {
            Ok(stored) => stored,
            Err(error) => {
                tracing::error!(transform = name, offset = change.offset, %error, "skipping an unreadable deployment in the plugin log");
                return;
            }
        };
        if stored.spec.name != name {
            tracing::error!(transform = name, offset = change.offset, "skipping a deployment record filed under another name");
            return;
        }
        {
            let mut accepted = self.accepted.lock();
            if let Some(base) = stored.based_on
                && accepted.get(&name).map(|a| a.offset) != Some(base)
            {
                tracing::warn!(
                    transform = name,
                    offset = change.offset,
                    "ignoring a change made from an outdated deployment (another change came first)"
                );
                return;
            }
            accepted.insert(name, Accepted { offset: change.offset, stored: stored.clone(), waiting: None });
        }
        self.apply_deployment(stored);
    }

    /// Runs `stored` (accepted from the plugin log) on this broker: in place when only its pause
    /// state or limits changed, else by (re)starting it. One that cannot start now (its module
    /// cannot be read while the log's leader moves) is retried, [`APPLY_RETRY`] at first and then
    /// less often, until it starts or a newer change replaces it.
    fn apply_deployment(&self, stored: StoredDeployment) {
        let name = stored.spec.name.clone();
        {
            let mut deployments = self.deployments.lock();
            if let Some(current) = deployments.get_mut(&name).filter(|d| d.stored.same_deploy(&stored)) {
                // A pause, resume or limit change: no restart.
                current.tasks.set_paused(stored.paused);
                if current.stored.paused && !stored.paused {
                    current.tasks.clear_failures(true);
                }
                let limits = stored.spec.limits();
                if *current.shared.limits.lock() != limits {
                    *current.shared.limits.lock() = limits;
                    current.shared.limits_version.fetch_add(1, Ordering::AcqRel);
                }
                current.stored = stored;
                return;
            }
        }
        let started = self.cluster_module(&stored).and_then(|module| {
            self.stop(&name);
            self.start(stored.clone(), module)
        });
        let mut accepted = self.accepted.lock();
        let Some(entry) = accepted.get_mut(&name) else { return };
        match started {
            Ok(()) => {
                entry.waiting = None;
                tracing::info!(transform = name, version = stored.version, "transform deployed (from the plugin log)");
            }
            Err(error) => {
                let delay = entry.waiting.as_ref().map_or(APPLY_RETRY, |w| (w.delay * 2).min(APPLY_RETRY_MAX));
                tracing::error!(transform = name, %error, retry_s = delay.as_secs(), "cannot start a deployed transform on this broker; retrying");
                entry.waiting = Some(Waiting { error: error.to_string(), next: Instant::now() + delay, delay });
            }
        }
        drop(accepted);
        self.collect_garbage();
    }

    /// Retries the accepted deployments that could not start, once their pause is over (on the
    /// follower's thread, whenever it has read to the end).
    fn retry_pending(&self) {
        let now = Instant::now();
        let due: Vec<StoredDeployment> =
            self.accepted.lock().values().filter(|a| a.waiting.as_ref().is_some_and(|w| w.next <= now)).map(|a| a.stored.clone()).collect();
        for stored in due {
            let _control = self.control.lock();
            if self.log.as_ref().is_some_and(|log| log.stopped()) {
                return;
            }
            self.apply_deployment(stored);
        }
    }

    /// The module of a deployment read from the plugin log: from the registry, or (first use on
    /// this broker) from the log's chunks, checked against its digest before it is compiled.
    fn cluster_module(&self, stored: &StoredDeployment) -> Result<TransformModule, RuntimeError> {
        let registry = self.plugins.registry()?;
        if !registry.has_digest(&stored.module_digest) {
            let log = self.log.as_ref().ok_or_else(|| RuntimeError::Invalid("not in a cluster".into()))?;
            let bytes = log.read_module(&stored.module_digest, stored.module_offset.unwrap_or(0))?;
            let digest = sluice_runtime::registry::digest_hex(&bytes);
            if digest != stored.module_digest {
                return Err(RuntimeError::Invalid(format!("the plugin log's copy of module {} has digest {digest}", stored.module_digest)));
            }
            registry.import(&bytes)?;
        }
        Ok(registry.load(&stored.module_digest)?.transform()?)
    }

    /// Once the follower has read the whole log: deployments this broker kept in its own files
    /// (from before it was in a cluster, or before deployments moved into the plugin log) that the
    /// log does not have are written to it — their input positions first, into the cluster's
    /// coordinators, so that the runners on other brokers resume where this broker's stopped — and
    /// the files removed. Returns whether every file was dealt with.
    fn adopt_local_deployments(&self) -> bool {
        let Some(log) = &self.log else { return true };
        let mut done = true;
        for mut stored in self.store.load_all() {
            let name = stored.spec.name.clone();
            if self.accepted.lock().contains_key(&name) {
                // The cluster's deployment of that name is the one that runs.
                if let Err(error) = self.store.remove(&name) {
                    tracing::warn!(transform = name, %error, "cannot remove a deployment file the plugin log replaces");
                }
                continue;
            }
            let adopted = self.plugins.registry().and_then(|registry| {
                self.copy_positions_to_the_cluster(&stored.spec)?;
                let bytes = registry.bytes(&stored.module_digest)?;
                stored.module_offset = Some(log.publish_module(&stored.module_digest, &bytes)?);
                stored.based_on = None;
                let record = serde_json::to_vec(&stored).map_err(|e| RuntimeError::Invalid(e.to_string()))?;
                log.put(&name, Some(record))?;
                self.store.remove(&name)
            });
            match adopted {
                Ok(()) => tracing::info!(transform = name, "moved a deployment of this broker into the cluster's plugin log"),
                Err(error) => {
                    done = false;
                    tracing::error!(transform = name, %error, "cannot move a deployment into the cluster's plugin log yet; retrying");
                }
            }
        }
        done
    }

    /// Commits the input positions this broker's own coordinators hold for `spec`'s runners into
    /// the cluster's, one partition per transaction with that partition's transactional id (what
    /// its runner would do). Positions the cluster already has are left alone.
    fn copy_positions_to_the_cluster(&self, spec: &TransformSpec) -> Result<(), RuntimeError> {
        let partitions = self.host.topic(&spec.input_topic).map_or(0, |t| t.partitions);
        let group = spec.group();
        for partition in 0..partitions {
            // The cluster's position if it has one, else this broker's own.
            let Some(position) = self.host.committed_offset(&group, &spec.input_topic, partition)? else { continue };
            let mut producer = self.host.producer(&spec.transactional_id(partition), ADOPT_TXN_TIMEOUT_MS)?;
            producer.send_offsets(&group, &[(spec.input_topic.clone(), partition, position)])?;
            producer.commit()?;
        }
        Ok(())
    }

    fn start(&self, stored: StoredDeployment, module: TransformModule) -> Result<(), RuntimeError> {
        let spec = stored.spec.clone();
        // In a cluster this broker may learn of the input topic after the deployment: its runners
        // start once it leads a partition of it.
        if self.log.is_none() && self.host.topic(&spec.input_topic).is_none() {
            return Err(RuntimeError::Invalid(format!("input topic '{}' does not exist", spec.input_topic)));
        }
        let shared = Arc::new(Shared {
            limits: Mutex::new(spec.limits()),
            limits_version: AtomicU64::new(0),
            partitions: Mutex::new(BTreeMap::new()),
            metrics: self.families.deployment(&spec.name),
            logs: Arc::new(LogBuffer::new(&spec.name)),
            module,
            version: stored.version,
            spec,
        });
        let (factory_host, factory_shared) = (self.host.clone(), Arc::clone(&shared));
        let (wanted_host, input) = (self.host.clone(), shared.spec.input_topic.clone());
        // In a cluster, each broker runs the partitions it leads.
        let clustered = self.host.is_clustered();
        let make = if clustered { TaskSet::new_moving } else { TaskSet::new };
        let tasks = make(
            "transform",
            &shared.spec.name,
            stored.paused,
            Box::new(move |partition| {
                Ok(Box::new(Runner::new(factory_host.clone(), Arc::clone(&factory_shared), partition)) as Box<dyn Task>)
            }),
            Box::new(move || {
                let partitions = wanted_host.topic(&input).map_or(0, |t| t.partitions);
                (0..partitions).filter(|&p| !clustered || wanted_host.leads(&input, p)).collect()
            }),
        );
        let name = stored.spec.name.clone();
        self.supervisor.insert(&name, Arc::clone(&tasks));
        self.deployments.lock().insert(name, Deployment { stored, shared, tasks });
        Ok(())
    }

    /// Stops a deployment's runners and waits for them (each aborts its open transaction).
    fn stop(&self, name: &str) -> Option<StoredDeployment> {
        let deployment = self.deployments.lock().remove(name)?;
        self.supervisor.remove(name);
        deployment.tasks.stop();
        Some(deployment.stored)
    }

    /// Deploys (or redeploys) a module. Blocking: compiles the module and runs the guest's `init` once
    /// with the deployment's configuration, so a module that cannot start is refused here, with its
    /// message, rather than failing later in the runners.
    pub fn deploy(&self, spec: TransformSpec, source: ModuleSource) -> Result<TransformStatus, RuntimeError> {
        spec.validate()?;
        let missing = |what: &str, topic: &str| {
            RuntimeError::Invalid(format!("{what} topic '{topic}' does not exist; create it first (sluice topic create {topic})"))
        };
        let input = self.host.topic(&spec.input_topic).ok_or_else(|| missing("input", &spec.input_topic))?;
        for topic in &spec.output_topics {
            self.host.topic(topic).ok_or_else(|| missing("output", topic))?;
        }
        if let TransformErrorPolicy::DeadLetter(topic) = &spec.error_policy {
            self.host.topic(topic).ok_or_else(|| missing("dead-letter", topic))?;
        }
        if input.partitions < 1 {
            return Err(RuntimeError::Invalid("the input topic has no partitions".into()));
        }
        let registry = self.plugins.registry()?;
        let mut uploaded = None;
        let (digest, module_bytes, module) = match source {
            ModuleSource::Bytes(bytes) => {
                let (digest, component) = registry.import(&bytes)?;
                let length = bytes.len();
                uploaded = Some(bytes);
                (digest, length, component.transform()?)
            }
            ModuleSource::Registered(name) => {
                let info = registry.get(&name).ok_or(RuntimeError::NotFound { what: "module", name })?;
                (info.digest.clone(), info.bytes, registry.load(&info.digest)?.transform()?)
            }
        };
        // A trial instance runs the guest's `init` with the deployment's config, on a watchdog thread:
        // a module that refuses its config is refused here, and one whose `init` never returns cannot
        // hang the deploy (or the admin API thread serving it).
        let mut trial = InstanceConfig::new(&spec.name);
        trial.config = spec.config.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        trial.limits = spec.limits();
        let (trial_module, outputs) = (module.clone(), spec.output_topics.clone());
        run_with_watchdog(&spec.name, TRIAL_INIT_TIMEOUT, move || trial_module.instantiate(trial, outputs).map(drop))?;

        if let Some(log) = &self.log {
            // Every broker (this one too) starts it when its follower reads the record.
            let bytes = match uploaded {
                Some(bytes) => bytes,
                None => registry.bytes(&digest)?,
            };
            let module_offset = Some(log.publish_module(&digest, &bytes)?);
            let name = spec.name.clone();
            let previous = self.accepted.lock().get(&name).map(|a| a.stored.clone());
            let version = previous.as_ref().map_or(0, |p| p.version) + 1;
            let stored = StoredDeployment {
                module_digest: digest,
                module_bytes,
                version,
                paused: false,
                deployed_at_ms: sluice_broker::host::now_ms(),
                module_offset,
                based_on: None,
                spec,
            };
            tracing::info!(transform = name, version, digest = stored.module_digest, "transform deployed to the cluster");
            self.put(&stored, None)?;
            if let Some(previous) = previous {
                self.forget_module_if_unused(&previous);
            }
            return self.status(&name);
        }

        let _control = self.control.lock();
        let previous = self.stop(&spec.name);
        let stored = StoredDeployment {
            module_digest: digest,
            module_bytes,
            version: previous.as_ref().map_or(1, |p| p.version + 1),
            paused: false,
            deployed_at_ms: sluice_broker::host::now_ms(),
            module_offset: None,
            based_on: None,
            spec,
        };
        let name = stored.spec.name.clone();
        self.store.save(&stored)?;
        tracing::info!(
            transform = name,
            version = stored.version,
            digest = stored.module_digest,
            cache_hit = module.cache_hit(),
            load_ms = module.load_time().as_millis() as u64,
            code = module.tier().name(),
            "transform deployed"
        );
        self.start(stored, module)?;
        self.collect_garbage();
        self.status(&name)
    }

    fn collect_garbage(&self) {
        let in_use: Vec<String> = self.deployments.lock().values().map(|d| d.stored.module_digest.clone()).collect();
        if let Ok(registry) = self.plugins.registry() {
            registry.collect_garbage(&in_use);
        }
    }

    /// Writes a deployment's record to the plugin log (cluster): a change of the record at offset
    /// `based_on`, or (`None`) a deploy that replaces whatever is there. Returns once this broker
    /// applied it; an error if another change came first and every broker ignored this one.
    fn put(&self, stored: &StoredDeployment, based_on: Option<i64>) -> Result<(), RuntimeError> {
        let log = self.log.as_ref().ok_or_else(|| RuntimeError::Invalid("not in a cluster".into()))?;
        let name = &stored.spec.name;
        let record = StoredDeployment { based_on, ..stored.clone() };
        let record = serde_json::to_vec(&record).map_err(|e| RuntimeError::Invalid(format!("cannot encode the deployment: {e}")))?;
        let offset = log.put(name, Some(record))?;
        if self.accepted.lock().get(name).map(|a| a.offset) != Some(offset) {
            return Err(RuntimeError::Invalid(format!(
                "transform '{name}' changed (another broker's deploy, change or delete came first); look at it again and retry"
            )));
        }
        Ok(())
    }

    /// A deployment's accepted record and its offset in the plugin log, for a change (cluster).
    fn stored(&self, name: &str) -> Result<(StoredDeployment, i64), RuntimeError> {
        self.accepted.lock().get(name).map(|a| (a.stored.clone(), a.offset)).ok_or_else(|| not_found(name))
    }

    /// Moves this broker's own deployment files into the plugin log when due (at start, then
    /// [`APPLY_RETRY`] after a failure), on a thread of its own: each write waits for the log's
    /// follower, whose thread calls this.
    fn adopt_when_due(self: &Arc<Self>) {
        {
            let mut at = self.adopt_retry_at.lock();
            match *at {
                Some(due) if due <= Instant::now() => *at = None,
                _ => return,
            }
        }
        let manager = Arc::clone(self);
        let spawned = std::thread::Builder::new().name("transform-adopt".into()).spawn(move || {
            if !manager.adopt_local_deployments() {
                *manager.adopt_retry_at.lock() = Some(Instant::now() + APPLY_RETRY);
            }
        });
        if let Err(error) = spawned {
            tracing::error!(%error, "cannot move this broker's deployments into the plugin log; retrying");
            *self.adopt_retry_at.lock() = Some(Instant::now() + APPLY_RETRY);
        }
    }

    /// After `gone` was replaced or deleted in the plugin log: tombstones for its module's chunks
    /// when no deployment in the log uses them any more (a failure is logged and leaves them).
    fn forget_module_if_unused(&self, gone: &StoredDeployment) {
        let Some(log) = &self.log else { return };
        if self.accepted.lock().values().any(|a| a.stored.module_digest == gone.module_digest) {
            return;
        }
        match log.forget_module(&gone.module_digest, gone.module_bytes) {
            Ok(()) => tracing::info!(digest = gone.module_digest, "removed a module no transform uses from the plugin log"),
            Err(error) => tracing::warn!(digest = gone.module_digest, %error, "cannot remove an unused module from the plugin log"),
        }
    }

    pub fn delete(&self, name: &str) -> Result<(), RuntimeError> {
        if let Some(log) = &self.log {
            let (stored, _) = self.stored(name)?;
            log.put(name, None)?;
            self.forget_module_if_unused(&stored);
            return Ok(());
        }
        let _control = self.control.lock();
        let stored = self.stop(name).ok_or_else(|| not_found(name))?;
        self.store.remove(name)?;
        let partitions = self.host.topic(&stored.spec.input_topic).map_or(0, |t| t.partitions.max(0) as usize);
        self.families.forget(name, partitions);
        self.collect_garbage();
        tracing::info!(transform = name, "transform deleted");
        Ok(())
    }

    /// Pause (`true`) or resume. Resuming also clears a failed partition's error, so it retries the
    /// batch it failed on (after, say, a config or data fix elsewhere).
    pub fn set_paused(&self, name: &str, paused: bool) -> Result<TransformStatus, RuntimeError> {
        if self.log.is_some() {
            let (mut stored, offset) = self.stored(name)?;
            stored.paused = paused;
            self.put(&stored, Some(offset))?;
            tracing::info!(transform = name, paused, "transform {} in the cluster", if paused { "paused" } else { "resumed" });
            return self.status(name);
        }
        {
            let mut deployments = self.deployments.lock();
            let deployment = deployments.get_mut(name).ok_or_else(|| not_found(name))?;
            deployment.tasks.set_paused(paused);
            if !paused {
                deployment.tasks.clear_failures(true);
            }
            deployment.stored.paused = paused;
            self.store.save(&deployment.stored)?;
        }
        tracing::info!(transform = name, paused, "transform {}", if paused { "paused" } else { "resumed" });
        self.status(name)
    }

    /// New memory / CPU limits, applied by every runner before its next call: no restart.
    pub fn set_limits(
        &self,
        name: &str,
        memory_bytes: Option<usize>,
        cpu_ms_per_call: Option<u64>,
    ) -> Result<TransformStatus, RuntimeError> {
        if self.log.is_some() {
            let (mut stored, offset) = self.stored(name)?;
            let current = stored.spec.limits();
            let limits = Limits {
                memory_bytes: memory_bytes.unwrap_or(current.memory_bytes),
                cpu_ms_per_call: cpu_ms_per_call.unwrap_or(current.cpu_ms_per_call),
            };
            limits.validate().map_err(|e| RuntimeError::Invalid(format!("limits: {e}")))?;
            stored.spec.memory_bytes = Some(limits.memory_bytes);
            stored.spec.cpu_ms_per_call = Some(limits.cpu_ms_per_call);
            self.put(&stored, Some(offset))?;
            return self.status(name);
        }
        {
            let mut deployments = self.deployments.lock();
            let deployment = deployments.get_mut(name).ok_or_else(|| not_found(name))?;
            let current = *deployment.shared.limits.lock();
            let limits = Limits {
                memory_bytes: memory_bytes.unwrap_or(current.memory_bytes),
                cpu_ms_per_call: cpu_ms_per_call.unwrap_or(current.cpu_ms_per_call),
            };
            limits.validate().map_err(|e| RuntimeError::Invalid(format!("limits: {e}")))?;
            *deployment.shared.limits.lock() = limits;
            deployment.shared.limits_version.fetch_add(1, Ordering::AcqRel);
            deployment.stored.spec.memory_bytes = Some(limits.memory_bytes);
            deployment.stored.spec.cpu_ms_per_call = Some(limits.cpu_ms_per_call);
            self.store.save(&deployment.stored)?;
        }
        self.status(name)
    }

    pub fn list(&self) -> Vec<TransformStatus> {
        let names: Vec<String> = self.deployments.lock().keys().cloned().collect();
        names.iter().filter_map(|n| self.status(n).ok()).collect()
    }

    /// Never waits on the network: an input partition another broker leads shows the lag its
    /// runner saw at its latest read.
    pub fn status(&self, name: &str) -> Result<TransformStatus, RuntimeError> {
        let deployments = self.deployments.lock();
        let Some(deployment) = deployments.get(name) else {
            // In a cluster: deployed, but not running on this broker yet.
            if let Some(waiting) = self.accepted.lock().get(name).and_then(|a| a.waiting.as_ref()) {
                return Err(RuntimeError::Invalid(format!(
                    "transform '{name}' is deployed in the cluster but cannot start on this broker yet (retrying): {}",
                    waiting.error
                )));
            }
            return Err(not_found(name));
        };
        let shared = &deployment.shared;
        let spec = &shared.spec;
        let tasks: BTreeMap<i32, sluice_runtime::TaskStatus> = deployment.tasks.statuses().into_iter().map(|t| (t.id, t)).collect();
        let partitions: Vec<PartitionStatus> = tasks
            .values()
            .map(|task| {
                let state = shared.partition_state(task.id);
                let position = state.position.load(Ordering::Acquire);
                let last_stable = match self.host.local_partition_offsets(&spec.input_topic, task.id) {
                    Some(offsets) => offsets.last_stable,
                    None => state.last_stable.load(Ordering::Acquire).max(position),
                };
                PartitionStatus {
                    partition: task.id,
                    state: task.state,
                    position,
                    last_stable_offset: last_stable,
                    lag: (last_stable - position).max(0),
                    records_in: state.records_in.load(Ordering::Relaxed),
                    records_out: state.records_out.load(Ordering::Relaxed),
                    error: task.error.clone(),
                    retries: task.retries,
                }
            })
            .collect();
        let failure = partitions.iter().find(|p| p.state == TaskState::Failed).and_then(|p| p.error.clone());
        let limits = *shared.limits.lock();
        let clustered = self.log.is_some();
        let partitions_elsewhere = if clustered {
            let count = self.host.topic(&spec.input_topic).map_or(0, |t| t.partitions);
            (0..count)
                .filter(|p| !tasks.contains_key(p))
                .map(|partition| PartitionElsewhere { partition, broker_id: self.host.leader_of(&spec.input_topic, partition) })
                .collect()
        } else {
            Vec::new()
        };
        Ok(TransformStatus {
            name: name.to_string(),
            state: if failure.is_some() {
                "failed"
            } else if deployment.tasks.paused() {
                "paused"
            } else {
                "running"
            },
            error: failure,
            version: deployment.stored.version,
            module_digest: deployment.stored.module_digest.clone(),
            module_bytes: deployment.stored.module_bytes,
            code: deployment.shared.module.tier().name(),
            boundary: if deployment.shared.module.batch_abi() { "one_buffer" } else { "per_record" },
            deployed_at_ms: deployment.stored.deployed_at_ms,
            input_topic: spec.input_topic.clone(),
            output_topics: spec.output_topics.clone(),
            error_policy: spec.error_policy.clone(),
            memory_bytes: limits.memory_bytes,
            cpu_ms_per_call: limits.cpu_ms_per_call,
            records_in: partitions.iter().map(|p| p.records_in).sum(),
            records_out: partitions.iter().map(|p| p.records_out).sum(),
            dead_lettered: shared.partitions.lock().values().map(|p| p.dead_lettered.load(Ordering::Relaxed)).sum(),
            lag: partitions.iter().map(|p| p.lag).sum(),
            partitions,
            broker_id: clustered.then(|| self.host.node_id()),
            partitions_elsewhere,
            logs: shared.logs.recent(STATUS_LOG_LINES),
        })
    }

    /// Stops every runner (broker shutdown). Deployments stay stored and start again at the next start.
    pub fn stop_all(&self) {
        if let Some(log) = &self.log {
            log.stop_and_join();
        }
        // After a change the follower is applying: it applies nothing once the log is stopped.
        let _control = self.control.lock();
        self.supervisor.stop_all();
        self.deployments.lock().clear();
    }
}

fn not_found(name: &str) -> RuntimeError {
    RuntimeError::NotFound { what: "transform", name: name.to_string() }
}
