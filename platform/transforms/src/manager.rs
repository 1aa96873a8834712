//! The transform manager: deployments by name, each a supervised set of runners (one per input
//! partition, `sluice-runtime`'s supervisor), its module from the shared registry. Deploy, redeploy
//! (same name: the new module resumes from the committed positions), pause, resume, limit changes
//! without a restart, delete, and start-up from the stored deployments. Partitions added to an input
//! topic get a runner within the supervisor's reconcile interval.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use serde::Serialize;
use sluice_broker::host::Host;
use sluice_runtime::{LogBuffer, LogLine, MetricFamilies, Plugins, RuntimeError, Supervisor, Task, TaskSet, TaskState};
use sluice_wasm::{InstanceConfig, Limits, TransformModule, run_with_watchdog};

use crate::runner::{Runner, Shared};
use crate::spec::{Store, StoredDeployment, TransformErrorPolicy, TransformSpec};

/// Longest a deploy waits for the trial `init` (past the module's own CPU bound, which stops it first).
const TRIAL_INIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// Lines of a deployment's log a status shows.
const STATUS_LOG_LINES: usize = 20;

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
    pub logs: Vec<LogLine>,
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
        Ok(TransformManager {
            host,
            plugins,
            store,
            families,
            supervisor,
            deployments: Mutex::new(BTreeMap::new()),
            control: Mutex::new(()),
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
    /// is reported and left stopped; the others start.
    pub fn start_all(&self) {
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

    fn start(&self, stored: StoredDeployment, module: TransformModule) -> Result<(), RuntimeError> {
        let spec = stored.spec.clone();
        if self.host.topic(&spec.input_topic).is_none() {
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
        let tasks = TaskSet::new(
            "transform",
            &shared.spec.name,
            stored.paused,
            Box::new(move |partition| {
                Ok(Box::new(Runner::new(factory_host.clone(), Arc::clone(&factory_shared), partition)) as Box<dyn Task>)
            }),
            Box::new(move || wanted_host.topic(&input).map_or(Vec::new(), |t| (0..t.partitions).collect())),
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
        let (digest, module_bytes, module) = match source {
            ModuleSource::Bytes(bytes) => {
                let (digest, component) = registry.import(&bytes)?;
                (digest, bytes.len(), component.transform()?)
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

        let _control = self.control.lock();
        let previous = self.stop(&spec.name);
        let stored = StoredDeployment {
            module_digest: digest,
            module_bytes,
            version: previous.as_ref().map_or(1, |p| p.version + 1),
            paused: false,
            deployed_at_ms: sluice_broker::host::now_ms(),
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

    pub fn delete(&self, name: &str) -> Result<(), RuntimeError> {
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

    pub fn status(&self, name: &str) -> Result<TransformStatus, RuntimeError> {
        let deployments = self.deployments.lock();
        let deployment = deployments.get(name).ok_or_else(|| not_found(name))?;
        let shared = &deployment.shared;
        let spec = &shared.spec;
        let tasks: BTreeMap<i32, sluice_runtime::TaskStatus> = deployment.tasks.statuses().into_iter().map(|t| (t.id, t)).collect();
        let partitions: Vec<PartitionStatus> = tasks
            .values()
            .map(|task| {
                let state = shared.partition_state(task.id);
                let position = state.position.load(Ordering::Acquire);
                let last_stable = self.host.partition_offsets(&spec.input_topic, task.id).map_or(position, |o| o.last_stable);
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
            logs: shared.logs.recent(STATUS_LOG_LINES),
        })
    }

    /// Stops every runner (broker shutdown). Deployments stay stored and start again at the next start.
    pub fn stop_all(&self) {
        self.supervisor.stop_all();
        self.deployments.lock().clear();
    }
}

fn not_found(name: &str) -> RuntimeError {
    RuntimeError::NotFound { what: "transform", name: name.to_string() }
}
