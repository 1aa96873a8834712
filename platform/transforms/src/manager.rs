//! The transform manager: deployments by name, each with its module and one runner thread per input
//! partition. Deploy, redeploy (same name: the new module resumes from the committed positions),
//! pause, resume, limit changes without a restart, delete, and start-up from the stored deployments.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;

use parking_lot::Mutex;
use serde::Serialize;
use sluice_broker::Broker;
use sluice_wasm::{Engine, EngineConfig, InstanceConfig, Limits, PluginError, TransformModule};

use crate::error::ApiError;
use crate::logs::{LogBuffer, LogLine};
use crate::metrics::MetricFamilies;
use crate::runner::{self, PartitionState, Shared};
use crate::spec::{ErrorPolicy, Store, StoredDeployment, TransformSpec};

struct Running {
    stored: StoredDeployment,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

pub struct TransformManager {
    broker: Arc<Broker>,
    engine: Engine,
    store: Store,
    families: MetricFamilies,
    handle: tokio::runtime::Handle,
    deployments: Mutex<BTreeMap<String, Running>>,
    /// Serialises deploys, deletes and restarts (compiling happens outside `deployments`' lock).
    control: Mutex<()>,
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
    pub deployed_at_ms: i64,
    pub input_topic: String,
    pub output_topics: Vec<String>,
    pub error_policy: ErrorPolicy,
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
    pub position: i64,
    pub last_stable_offset: i64,
    pub lag: i64,
    pub records_in: u64,
    pub records_out: u64,
    pub error: Option<String>,
}

/// Limits and log lines a status shows.
const STATUS_LOG_LINES: usize = 20;

impl TransformManager {
    pub fn open(broker: Arc<Broker>, handle: tokio::runtime::Handle) -> Result<TransformManager, String> {
        let store = Store::open(&broker.data_dir)?;
        let engine = Engine::new(EngineConfig { cache_dir: Some(store.cache_dir()), ..Default::default() }).map_err(|e| e.to_string())?;
        let families = MetricFamilies::register(&broker.metrics.registry)?;
        Ok(TransformManager { broker, engine, store, families, handle, deployments: Mutex::new(BTreeMap::new()), control: Mutex::new(()) })
    }

    /// Starts every stored deployment (at broker start). A deployment whose module no longer loads
    /// is reported and left stopped; the others start.
    pub fn start_all(&self) {
        let stored = self.store.load_all();
        let _control = self.control.lock();
        for deployment in stored {
            let name = deployment.spec.name.clone();
            let started = std::time::Instant::now();
            let module = match self
                .store
                .load_module(&deployment.module_digest)
                .and_then(|b| self.engine.load_transform(&b).map_err(|e| e.to_string()))
            {
                Ok(module) => module,
                Err(error) => {
                    tracing::error!(transform = name, %error, "cannot load a deployed transform's module; it stays stopped");
                    continue;
                }
            };
            match self.start(deployment, module.clone()) {
                Ok(()) => tracing::info!(
                    transform = name,
                    cache_hit = module.cache_hit(),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "transform restored"
                ),
                Err(error) => tracing::error!(transform = name, %error, "cannot start a deployed transform"),
            }
        }
    }

    fn start(&self, stored: StoredDeployment, module: TransformModule) -> Result<(), ApiError> {
        let spec = stored.spec.clone();
        let topic = self
            .broker
            .topic(&spec.input_topic)
            .ok_or_else(|| ApiError::bad_request(format!("input topic '{}' does not exist", spec.input_topic)))?;
        let partitions = topic.partition_count().max(0) as usize;
        let logs = Arc::new(LogBuffer::new(&spec.name));
        let shared = Arc::new(Shared {
            limits: Mutex::new(spec.limits()),
            limits_version: AtomicU64::new(0),
            paused: AtomicBool::new(stored.paused),
            stop: AtomicBool::new(false),
            partitions: (0..partitions).map(|_| Arc::new(PartitionState::default())).collect(),
            metrics: self.families.for_transform(&spec.name),
            logs,
            module,
            version: stored.version,
            spec,
        });
        let mut threads = Vec::with_capacity(partitions);
        for p in 0..partitions as i32 {
            match runner::spawn(Arc::clone(&self.broker), Arc::clone(&shared), p, self.handle.clone()) {
                Ok(thread) => threads.push(thread),
                Err(error) => {
                    // Stop the runners already started rather than leave them untracked.
                    shared.stop.store(true, Ordering::Release);
                    for thread in threads {
                        let _ = thread.join();
                    }
                    return Err(ApiError::internal(format!("cannot start a runner thread: {error}")));
                }
            }
        }
        self.deployments.lock().insert(stored.spec.name.clone(), Running { stored, shared, threads });
        Ok(())
    }

    /// Stops a deployment's runners and waits for them (each finishes or aborts its transaction).
    fn stop(&self, name: &str) -> Option<StoredDeployment> {
        let running = self.deployments.lock().remove(name)?;
        running.shared.stop.store(true, Ordering::Release);
        for thread in running.threads {
            let _ = thread.join();
        }
        Some(running.stored)
    }

    /// Deploys (or redeploys) a module. Blocking: compiles the module and runs the guest's `init` once
    /// with the deployment's configuration, so a module that cannot start is refused here, with its
    /// message, rather than failing later in the runners.
    pub fn deploy(&self, spec: TransformSpec, bytes: Vec<u8>) -> Result<TransformStatus, ApiError> {
        spec.validate()?;
        if bytes.len() > sluice_wasm::MODULE_BYTES_MAX {
            return Err(ApiError::bad_request(format!("the module is {} bytes; at most {}", bytes.len(), sluice_wasm::MODULE_BYTES_MAX)));
        }
        let missing = |what: &str, topic: &str| {
            ApiError::bad_request(format!("{what} topic '{topic}' does not exist; create it first (sluice topic create {topic})"))
        };
        let input = self.broker.topic(&spec.input_topic).ok_or_else(|| missing("input", &spec.input_topic))?;
        for topic in &spec.output_topics {
            self.broker.topic(topic).ok_or_else(|| missing("output", topic))?;
        }
        if let ErrorPolicy::DeadLetter(topic) = &spec.error_policy {
            self.broker.topic(topic).ok_or_else(|| missing("dead-letter", topic))?;
        }
        if input.partition_count() < 1 {
            return Err(ApiError::bad_request("the input topic has no partitions"));
        }
        let module = self.engine.load_transform(&bytes).map_err(module_error)?;
        let mut trial = InstanceConfig::new(&spec.name);
        trial.config = spec.config.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        trial.limits = spec.limits();
        module.instantiate(trial, spec.output_topics.clone()).map_err(module_error)?;

        let _control = self.control.lock();
        let previous = self.stop(&spec.name);
        let stored = StoredDeployment {
            module_digest: module.digest().to_string(),
            module_bytes: bytes.len(),
            version: previous.as_ref().map_or(1, |p| p.version + 1),
            paused: false,
            deployed_at_ms: sluice_broker::now_ms(),
            spec,
        };
        let name = stored.spec.name.clone();
        self.store.save_module(&stored.module_digest, &bytes).map_err(ApiError::internal)?;
        self.store.save(&stored).map_err(ApiError::internal)?;
        tracing::info!(
            transform = name,
            version = stored.version,
            digest = stored.module_digest,
            cache_hit = module.cache_hit(),
            load_ms = module.load_time().as_millis() as u64,
            "transform deployed"
        );
        self.start(stored, module)?;
        self.collect_garbage();
        self.status(&name)
    }

    fn collect_garbage(&self) {
        let live: Vec<String> = self.deployments.lock().values().map(|r| r.stored.module_digest.clone()).collect();
        self.store.collect_garbage(&live);
    }

    pub fn delete(&self, name: &str) -> Result<(), ApiError> {
        let _control = self.control.lock();
        let stored = self.stop(name).ok_or_else(|| ApiError::not_found(name))?;
        self.store.remove(name).map_err(ApiError::internal)?;
        let partitions = self.broker.topic(&stored.spec.input_topic).map_or(0, |t| t.partition_count().max(0) as usize);
        self.families.forget(name, partitions);
        self.collect_garbage();
        tracing::info!(transform = name, "transform deleted");
        Ok(())
    }

    /// Pause (`true`) or resume. Resuming also clears a failed partition's error, so it retries the
    /// batch it failed on (after, say, a config or data fix elsewhere).
    pub fn set_paused(&self, name: &str, paused: bool) -> Result<TransformStatus, ApiError> {
        {
            let mut deployments = self.deployments.lock();
            let running = deployments.get_mut(name).ok_or_else(|| ApiError::not_found(name))?;
            running.shared.paused.store(paused, Ordering::Release);
            if !paused {
                for partition in &running.shared.partitions {
                    *partition.failure.lock() = None;
                }
            }
            running.stored.paused = paused;
            self.store.save(&running.stored).map_err(ApiError::internal)?;
        }
        tracing::info!(transform = name, paused, "transform {}", if paused { "paused" } else { "resumed" });
        self.status(name)
    }

    /// New memory / CPU limits, applied by every runner before its next call: no restart.
    pub fn set_limits(&self, name: &str, memory_bytes: Option<usize>, cpu_ms_per_call: Option<u64>) -> Result<TransformStatus, ApiError> {
        {
            let mut deployments = self.deployments.lock();
            let running = deployments.get_mut(name).ok_or_else(|| ApiError::not_found(name))?;
            let current = *running.shared.limits.lock();
            let limits = Limits {
                memory_bytes: memory_bytes.unwrap_or(current.memory_bytes),
                cpu_ms_per_call: cpu_ms_per_call.unwrap_or(current.cpu_ms_per_call),
            };
            limits.validate().map_err(|e| ApiError::bad_request(format!("limits: {e}")))?;
            *running.shared.limits.lock() = limits;
            running.shared.limits_version.fetch_add(1, Ordering::AcqRel);
            running.stored.spec.memory_bytes = Some(limits.memory_bytes);
            running.stored.spec.cpu_ms_per_call = Some(limits.cpu_ms_per_call);
            self.store.save(&running.stored).map_err(ApiError::internal)?;
        }
        self.status(name)
    }

    pub fn list(&self) -> Vec<TransformStatus> {
        let names: Vec<String> = self.deployments.lock().keys().cloned().collect();
        names.iter().filter_map(|n| self.status(n).ok()).collect()
    }

    pub fn status(&self, name: &str) -> Result<TransformStatus, ApiError> {
        let deployments = self.deployments.lock();
        let running = deployments.get(name).ok_or_else(|| ApiError::not_found(name))?;
        let shared = &running.shared;
        let spec = &shared.spec;
        let input = self.broker.topic(&spec.input_topic);
        let partitions: Vec<PartitionStatus> = shared
            .partitions
            .iter()
            .enumerate()
            .map(|(p, state)| {
                let position = state.position.load(Ordering::Acquire);
                let last_stable = input.as_ref().and_then(|t| t.partition(p as i32)).map_or(position, |p| p.last_stable_offset());
                PartitionStatus {
                    partition: p as i32,
                    position,
                    last_stable_offset: last_stable,
                    lag: (last_stable - position).max(0),
                    records_in: state.records_in.load(Ordering::Relaxed),
                    records_out: state.records_out.load(Ordering::Relaxed),
                    error: state.failure.lock().clone(),
                }
            })
            .collect();
        let error = partitions.iter().find_map(|p| p.error.clone());
        let limits = *shared.limits.lock();
        Ok(TransformStatus {
            name: name.to_string(),
            state: if error.is_some() {
                "failed"
            } else if shared.paused.load(Ordering::Acquire) {
                "paused"
            } else {
                "running"
            },
            error,
            version: running.stored.version,
            module_digest: running.stored.module_digest.clone(),
            module_bytes: running.stored.module_bytes,
            deployed_at_ms: running.stored.deployed_at_ms,
            input_topic: spec.input_topic.clone(),
            output_topics: spec.output_topics.clone(),
            error_policy: spec.error_policy.clone(),
            memory_bytes: limits.memory_bytes,
            cpu_ms_per_call: limits.cpu_ms_per_call,
            records_in: partitions.iter().map(|p| p.records_in).sum(),
            records_out: partitions.iter().map(|p| p.records_out).sum(),
            dead_lettered: shared.partitions.iter().map(|p| p.dead_lettered.load(Ordering::Relaxed)).sum(),
            lag: partitions.iter().map(|p| p.lag).sum(),
            partitions,
            logs: shared.logs.recent(STATUS_LOG_LINES),
        })
    }

    /// Stops every runner (broker shutdown). Deployments stay stored and start again at the next start.
    pub fn stop_all(&self) {
        let names: Vec<String> = self.deployments.lock().keys().cloned().collect();
        for running in names.iter().filter_map(|n| self.deployments.lock().get(n).map(|r| Arc::clone(&r.shared))) {
            running.stop.store(true, Ordering::Release);
        }
        for name in names {
            self.stop(&name);
        }
    }
}

fn module_error(error: PluginError) -> ApiError {
    let code = match error {
        PluginError::InvalidModule(_) => "invalid_module",
        PluginError::WrongWorld(_) => "wrong_world",
        PluginError::InitFailed(_) => "init_failed",
        _ => "module_error",
    };
    ApiError::new(axum::http::StatusCode::BAD_REQUEST, code, error.to_string())
}
