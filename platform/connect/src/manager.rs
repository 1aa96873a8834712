//! The connector manager: connectors by name, each a `sluice-runtime` `TaskSet` of `tasks.max`
//! tasks on the shared supervisor, with Kafka Connect's lifecycle:
//!
//! | operation | what happens |
//! |---|---|
//! | create (`initial_state` RUNNING, PAUSED or STOPPED) | validate, persist, start the tasks (paused, or none) |
//! | reconfigure | validate, persist, replace every task; the target state stays |
//! | pause | tasks stay, stop working (PAUSED); nothing is lost |
//! | resume | PAUSED or STOPPED → RUNNING (a stopped connector's tasks start again) |
//! | stop | tasks shut down (the connector shows STOPPED with no tasks); config and positions stay (positions a crash left pending are settled), and positions may then be altered or reset |
//! | restart | plain: the connector, if it FAILED; `includeTasks`: its tasks too; `onlyFailed`: only what FAILED |
//! | delete | stop and forget (positions stay, as in Connect: a new connector of the same name resumes from them) |
//!
//! A connector shows FAILED, with the reason as its trace, when it cannot run at all (its plugin is
//! gone, its config no longer validates, its kind has no driver yet); a task shows FAILED when its
//! module failed for good. Either way a log line says so and `sluice_connector_state` /
//! `sluice_connector_tasks` show it at the next scrape.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntCounterVec, IntGaugeVec, Opts};
use serde::Serialize;
use sluice_broker::host::Host;
use sluice_runtime::supervisor::TaskFactory;
use sluice_runtime::{LogBuffer, MetricFamilies, RuntimeError, Supervisor, Task, TaskSet, TaskState};

use crate::chain::{ORIGIN_OUTPUT, StepSpec};
use crate::config::{self, ConnectorConfig, ConnectorType, Validation, masked, unmask};
use crate::error::ConnectError;
use crate::offsets::{ConnectorOffset, ConnectorOffsets, OffsetStore, check_entry};
use crate::plugins::{Catalog, ConnectorPlugin};
use crate::sink::{SinkDriver, SinkSettings};
use crate::sql::SqlFactory;
use crate::store::{Store, StoredConnector, TargetState};
use crate::task::{SourceDriver, TaskConfig, TaskGauges, TaskShared, settle_stopped_tasks};

/// Most connectors one broker runs.
pub const CONNECTORS_MAX: usize = 1_000;

/// `GET /connectors/{name}/status`: Kafka Connect's `ConnectorStateInfo`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ConnectorStatus {
    pub name: String,
    pub connector: StateInfo,
    pub tasks: Vec<TaskStateInfo>,
    #[serde(rename = "type")]
    pub kind: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StateInfo {
    pub state: String,
    pub worker_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
    /// The latest warning in the connector's log, while it is recent ([`WARNING_SHOWN_MS`]):
    /// a replication slot retaining too much WAL, records set aside (Sluice's addition).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// How long a warning in a connector's log shows in its status.
pub const WARNING_SHOWN_MS: i64 = 5 * 60 * 1000;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TaskStateInfo {
    pub id: i32,
    pub state: String,
    pub worker_id: String,
    /// Why it FAILED.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
    /// Errors the task backed off from and retried since it started (Sluice's addition).
    #[serde(skip_serializing_if = "is_zero")]
    pub retries: u64,
    /// The last of them, while it is retrying (Sluice's addition).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// `GET /connectors/{name}`: Kafka Connect's `ConnectorInfo`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ConnectorInfo {
    pub name: String,
    pub config: BTreeMap<String, String>,
    pub tasks: Vec<TaskId>,
    #[serde(rename = "type")]
    pub kind: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TaskId {
    pub connector: String,
    pub task: i32,
}

/// `GET /connectors/{name}/tasks`: one entry per task.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TaskInfo {
    pub id: TaskId,
    pub config: BTreeMap<String, String>,
}

struct Connector {
    stored: StoredConnector,
    kind: Option<ConnectorType>,
    tasks_max: u32,
    tasks: Option<Arc<TaskSet>>,
    /// Why the connector itself cannot run.
    failure: Option<String>,
    logs: Arc<LogBuffer>,
}

pub struct ConnectorManager {
    host: Host,
    catalog: Catalog,
    store: Store,
    offsets: Arc<OffsetStore>,
    families: MetricFamilies,
    bytes: IntCounterVec,
    gauges: TaskGauges,
    supervisor: Supervisor,
    worker_id: String,
    connectors: Mutex<BTreeMap<String, Connector>>,
    /// Serialises changes (stopping tasks happens outside `connectors`' lock).
    control: Mutex<()>,
}

fn not_found(name: &str) -> ConnectError {
    ConnectError::ConnectorNotFound(name.to_string())
}

impl ConnectorManager {
    /// Opens the stored connectors' directory and registers the metrics. Call
    /// [`ConnectorManager::start_all`] to start them. Blocking file I/O.
    pub fn open(host: Host, catalog: Catalog) -> Result<Arc<ConnectorManager>, ConnectError> {
        let dir = host.data_dir()?;
        let store = Store::open(&dir)?;
        let offsets = Arc::new(OffsetStore::open(&dir)?);
        let families = MetricFamilies::register(host.metrics(), "connector")?;
        let metric_error = |e: prometheus::Error| ConnectError::Runtime(RuntimeError::Invalid(format!("registering metrics: {e}")));
        let bytes = IntCounterVec::new(
            Opts::new("connector_bytes_out_total", "Bytes of keys and values a connector wrote (committed)"),
            &["connector"],
        )
        .map_err(metric_error)?;
        host.metrics().register(Box::new(bytes.clone())).map_err(metric_error)?;
        let gauges = TaskGauges::register(host.metrics()).map_err(metric_error)?;
        let supervisor = Supervisor::new("connector")?;
        let worker_id = format!("sluice-node-{}", host.node_id());
        let manager = Arc::new(ConnectorManager {
            host,
            catalog,
            store,
            offsets,
            families,
            bytes,
            gauges,
            supervisor,
            worker_id,
            connectors: Mutex::new(BTreeMap::new()),
            control: Mutex::new(()),
        });
        let states = StateMetrics::new(Arc::downgrade(&manager)).map_err(metric_error)?;
        manager.host.metrics().register(Box::new(states)).map_err(metric_error)?;
        Ok(manager)
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    pub fn cluster_id(&self) -> &str {
        self.host.cluster_id()
    }

    /// Starts every stored connector in its target state (at broker start).
    pub fn start_all(&self) {
        let _control = self.control.lock();
        for stored in self.store.load_all() {
            let name = stored.name.clone();
            let connector = self.start(stored);
            match &connector.failure {
                Some(failure) => tracing::error!(connector = name, %failure, "a stored connector cannot run; it shows FAILED"),
                None => tracing::info!(connector = name, state = ?connector.stored.target_state, "connector restored"),
            }
            self.connectors.lock().insert(name, connector);
        }
    }

    /// The connectors that load the registry module `module` by name: as their `connector.class`,
    /// or as a step of their transform chain (`transforms.<alias>.type`).
    pub fn module_users(&self, module: &str) -> Vec<String> {
        let connectors = self.connectors.lock();
        connectors
            .iter()
            .filter(|(_, connector)| {
                let config = &connector.stored.config;
                config.get("connector.class").is_some_and(|class| crate::plugins::plugin_name_for_class(class.trim()) == module)
                    || config.iter().any(|(key, value)| key.starts_with("transforms.") && key.ends_with(".type") && value.trim() == module)
            })
            .map(|(name, _)| format!("connector '{name}'"))
            .collect()
    }

    /// Validates `raw` for the plugin its `connector.class` names.
    pub fn validate(&self, raw: &BTreeMap<String, String>) -> (Option<ConnectorConfig>, Validation) {
        let plugin = raw.get("connector.class").and_then(|class| self.catalog.resolve(class.trim()));
        let is_transform = |module: &str| self.catalog.is_transform(module);
        config::validate(raw, &config::Context { plugin: plugin.as_ref().map(|p| p.spec()), is_transform: &is_transform })
    }

    fn checked(&self, raw: &BTreeMap<String, String>) -> Result<(ConnectorConfig, Arc<dyn ConnectorPlugin>), ConnectError> {
        let (parsed, validation) = self.validate(raw);
        let parsed = parsed.ok_or_else(|| ConnectError::InvalidConfig(validation.messages()))?;
        let plugin = self.catalog.resolve(&parsed.class).ok_or_else(|| ConnectError::InvalidConfig(validation.messages()))?;
        Ok((parsed, plugin))
    }

    /// Makes the runtime state of a stored connector and starts its tasks per its target state.
    fn start(&self, stored: StoredConnector) -> Connector {
        let logs = Arc::new(LogBuffer::new(&stored.name));
        let mut connector = Connector { stored, kind: None, tasks_max: 0, tasks: None, failure: None, logs };
        let (parsed, plugin) = match self.checked(&connector.stored.config) {
            Ok(checked) => checked,
            Err(error) => {
                if let Some(plugin) = connector.stored.config.get("connector.class").and_then(|c| self.catalog.resolve(c)) {
                    connector.kind = Some(plugin.spec().kind);
                }
                connector.failure = Some(error.to_string());
                return connector;
            }
        };
        connector.kind = Some(parsed.kind());
        connector.tasks_max = parsed.tasks_max;
        if connector.stored.target_state == TargetState::Stopped {
            self.settle_or_warn(&connector.stored.name);
            return connector;
        }
        let chain = match self.resolve_chain(&parsed) {
            Ok(chain) => chain,
            Err(error) => {
                connector.failure = Some(error.to_string());
                return connector;
            }
        };
        let name = connector.stored.name.clone();
        let shared = Arc::new(TaskShared {
            host: self.host.clone(),
            plugin,
            offsets: Arc::clone(&self.offsets),
            metrics: self.families.deployment(&name),
            bytes_out: self.bytes.with_label_values(&[&name]),
            gauges: self.gauges.clone(),
            logs: Arc::clone(&connector.logs),
            config: TaskConfig {
                connector: name.clone(),
                task: 0,
                tasks: parsed.tasks_max,
                config: parsed.plugin_config.clone(),
                topic_prefix: parsed.topic_prefix.clone(),
            },
            sql: SqlFactory::new(parsed.connections.clone(), self.host.runtime().clone()),
            policy: parsed.errors.policy(),
            chain,
        });
        let tasks_max = parsed.tasks_max as i32;
        let make: TaskFactory = match parsed.kind() {
            ConnectorType::Source => Box::new(move |task| Ok(Box::new(SourceDriver::new(Arc::clone(&shared), task)) as Box<dyn Task>)),
            ConnectorType::Sink => {
                let settings = Arc::new(SinkSettings { topics: parsed.topics.clone() });
                Box::new(move |task| Ok(Box::new(SinkDriver::new(Arc::clone(&shared), Arc::clone(&settings), task)) as Box<dyn Task>))
            }
        };
        let set = TaskSet::new(
            "connector",
            &name,
            connector.stored.target_state == TargetState::Paused,
            make,
            Box::new(move || (0..tasks_max).collect()),
        );
        self.supervisor.insert(&name, Arc::clone(&set));
        connector.tasks = Some(set);
        connector
    }

    /// The `transforms` chain with each step's module as the registry holds it now.
    fn resolve_chain(&self, parsed: &ConnectorConfig) -> Result<Vec<StepSpec>, ConnectError> {
        parsed
            .transforms
            .iter()
            .map(|step| {
                let module = self
                    .catalog
                    .transform_module(&step.module)
                    .map_err(|e| ConnectError::BadRequest(format!("transform '{}' ({}): {e}", step.alias, step.module)))?;
                let outputs = std::iter::once(ORIGIN_OUTPUT.to_string()).chain(step.outputs.iter().cloned()).collect();
                let config = step.config.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                Ok(StepSpec { alias: step.alias.clone(), module_name: step.module.clone(), module, config, outputs })
            })
            .collect()
    }

    /// Settles the positions a stopped connector's tasks left pending (see `crate::task`); a failure
    /// is logged, and the next start or alteration settles them again.
    fn settle_or_warn(&self, name: &str) {
        if let Err(error) = settle_stopped_tasks(&self.host, &self.offsets, name) {
            tracing::warn!(connector = name, %error, "cannot settle the pending positions of a stopped connector yet");
        }
    }

    /// Takes a connector's tasks out of the supervisor and stops them (each aborts what it had open).
    fn stop_tasks(&self, name: &str) {
        let set = self.connectors.lock().get_mut(name).and_then(|c| c.tasks.take());
        self.supervisor.remove(name);
        if let Some(set) = set {
            set.stop();
        }
    }

    /// Replaces a connector's runtime state (after its tasks were stopped) with a fresh start.
    fn restart_connector(&self, name: &str) -> Result<(), ConnectError> {
        self.stop_tasks(name);
        let stored = self.connectors.lock().get(name).map(|c| c.stored.clone()).ok_or_else(|| not_found(name))?;
        let logs = self.connectors.lock().get(name).map(|c| Arc::clone(&c.logs));
        let mut connector = self.start(stored);
        if let Some(logs) = logs {
            connector.logs = logs;
        }
        self.connectors.lock().insert(name.to_string(), connector);
        Ok(())
    }

    /// `POST /connectors`. `initial_state`: KIP-980's RUNNING, PAUSED or STOPPED.
    pub fn create(&self, raw: BTreeMap<String, String>, initial_state: TargetState) -> Result<ConnectorInfo, ConnectError> {
        let _control = self.control.lock();
        let name = raw.get("name").cloned().unwrap_or_default();
        if self.connectors.lock().contains_key(&name) {
            return Err(ConnectError::ConnectorExists(name));
        }
        if self.connectors.lock().len() >= CONNECTORS_MAX {
            return Err(ConnectError::BadRequest(format!("this broker already runs {CONNECTORS_MAX} connectors; delete some first")));
        }
        self.checked(&raw)?;
        let stored =
            StoredConnector { name: name.clone(), config: raw, target_state: initial_state, created_at_ms: sluice_broker::host::now_ms() };
        self.store.save(&stored)?;
        let connector = self.start(stored);
        tracing::info!(connector = name, state = ?initial_state, "connector created");
        self.connectors.lock().insert(name.clone(), connector);
        self.info(&name)
    }

    /// `PUT /connectors/{name}/config`: creates or reconfigures. Returns whether it was created.
    pub fn put_config(&self, name: &str, mut raw: BTreeMap<String, String>) -> Result<(bool, ConnectorInfo), ConnectError> {
        let existing = self.connectors.lock().get(name).map(|c| c.stored.clone());
        let Some(existing) = existing else {
            return self.create(raw, TargetState::Running).map(|info| (true, info));
        };
        let _control = self.control.lock();
        unmask(&mut raw, &existing.config);
        self.checked(&raw)?;
        let stored = StoredConnector { config: raw, ..existing };
        self.store.save(&stored)?;
        self.stop_tasks(name);
        let logs = self.connectors.lock().get(name).map(|c| Arc::clone(&c.logs));
        let mut connector = self.start(stored);
        if let Some(logs) = logs {
            connector.logs = logs;
        }
        self.connectors.lock().insert(name.to_string(), connector);
        tracing::info!(connector = name, "connector reconfigured; its tasks were replaced");
        Ok((false, self.info(name)?))
    }

    pub fn delete(&self, name: &str) -> Result<(), ConnectError> {
        let _control = self.control.lock();
        if !self.connectors.lock().contains_key(name) {
            return Err(not_found(name));
        }
        self.stop_tasks(name);
        let removed = self.connectors.lock().remove(name);
        self.store.remove(name)?;
        self.families.forget(name, 0);
        let _ = self.bytes.remove_label_values(&[name]);
        self.gauges.forget(name, removed.as_ref().map_or(0, |c| c.tasks_max));
        tracing::info!(connector = name, tasks = removed.map_or(0, |c| c.tasks_max), "connector deleted; its positions are kept");
        Ok(())
    }

    fn set_target(&self, name: &str, target: TargetState) -> Result<TargetState, ConnectError> {
        let mut connectors = self.connectors.lock();
        let connector = connectors.get_mut(name).ok_or_else(|| not_found(name))?;
        let previous = connector.stored.target_state;
        if previous != target {
            connector.stored.target_state = target;
            self.store.save(&connector.stored)?;
        }
        Ok(previous)
    }

    pub fn pause(&self, name: &str) -> Result<(), ConnectError> {
        let _control = self.control.lock();
        let previous = self.set_target(name, TargetState::Paused)?;
        let set = self.connectors.lock().get(name).and_then(|c| c.tasks.clone());
        match set {
            Some(set) => set.set_paused(true),
            None if previous == TargetState::Stopped => self.restart_connector(name)?,
            None => {}
        }
        tracing::info!(connector = name, "connector paused");
        Ok(())
    }

    pub fn resume(&self, name: &str) -> Result<(), ConnectError> {
        let _control = self.control.lock();
        let previous = self.set_target(name, TargetState::Running)?;
        let set = self.connectors.lock().get(name).and_then(|c| c.tasks.clone());
        match set {
            Some(set) => set.set_paused(false),
            None if previous == TargetState::Stopped => self.restart_connector(name)?,
            None => {}
        }
        tracing::info!(connector = name, "connector resumed");
        Ok(())
    }

    /// `PUT /connectors/{name}/stop`: idempotent.
    pub fn stop(&self, name: &str) -> Result<(), ConnectError> {
        let _control = self.control.lock();
        self.set_target(name, TargetState::Stopped)?;
        self.stop_tasks(name);
        if let Some(connector) = self.connectors.lock().get_mut(name) {
            connector.failure = None;
        }
        self.settle_or_warn(name);
        tracing::info!(connector = name, "connector stopped; its config and positions are kept");
        Ok(())
    }

    /// `POST /connectors/{name}/restart`. Returns the status with what restarts shown RESTARTING, or
    /// `None` for a plain restart (no body, as in Connect).
    pub fn restart(&self, name: &str, include_tasks: bool, only_failed: bool) -> Result<Option<ConnectorStatus>, ConnectError> {
        let _control = self.control.lock();
        let before = self.status(name)?;
        let stopped = before.connector.state == "STOPPED";
        let connector_failed = before.connector.state == "FAILED";
        let restart_connector = !stopped && (connector_failed || !only_failed);
        let failed_tasks = before.tasks.iter().any(|t| t.state == "FAILED");
        let restart_tasks = !stopped && include_tasks && (!only_failed || failed_tasks);
        if connector_failed || (restart_tasks && !only_failed) {
            self.restart_connector(name)?;
        } else if restart_tasks {
            let set = self.connectors.lock().get(name).and_then(|c| c.tasks.clone());
            if let Some(set) = set {
                set.clear_failures(true);
            }
        }
        tracing::info!(connector = name, include_tasks, only_failed, "connector restart requested");
        if !include_tasks && !only_failed {
            return Ok(None);
        }
        let mut shown = before;
        if restart_connector {
            shown.connector.state = "RESTARTING".into();
            shown.connector.trace = None;
        }
        for task in &mut shown.tasks {
            if restart_tasks && (!only_failed || task.state == "FAILED") {
                task.state = "RESTARTING".into();
                task.trace = None;
            }
        }
        Ok(Some(shown))
    }

    pub fn names(&self) -> Vec<String> {
        self.connectors.lock().keys().cloned().collect()
    }

    pub fn config(&self, name: &str) -> Result<BTreeMap<String, String>, ConnectError> {
        let connectors = self.connectors.lock();
        let connector = connectors.get(name).ok_or_else(|| not_found(name))?;
        Ok(masked_config(&connector.stored.config))
    }

    pub fn info(&self, name: &str) -> Result<ConnectorInfo, ConnectError> {
        let connectors = self.connectors.lock();
        let connector = connectors.get(name).ok_or_else(|| not_found(name))?;
        let tasks = if connector.stored.target_state == TargetState::Stopped || connector.failure.is_some() {
            Vec::new()
        } else {
            (0..connector.tasks_max as i32).map(|task| TaskId { connector: name.to_string(), task }).collect()
        };
        Ok(ConnectorInfo {
            name: name.to_string(),
            config: masked_config(&connector.stored.config),
            tasks,
            kind: connector.kind.map_or("unknown", ConnectorType::as_str).to_string(),
        })
    }

    pub fn tasks(&self, name: &str) -> Result<Vec<TaskInfo>, ConnectError> {
        let info = self.info(name)?;
        Ok(info
            .tasks
            .iter()
            .map(|id| {
                let mut config = info.config.clone();
                config.insert("task.id".into(), id.task.to_string());
                TaskInfo { id: id.clone(), config }
            })
            .collect())
    }

    pub fn status(&self, name: &str) -> Result<ConnectorStatus, ConnectError> {
        let connectors = self.connectors.lock();
        let connector = connectors.get(name).ok_or_else(|| not_found(name))?;
        let worker_id = self.worker_id.clone();
        let (state, trace) = match (&connector.failure, connector.stored.target_state) {
            (_, TargetState::Stopped) => ("STOPPED", None),
            (Some(failure), _) => ("FAILED", Some(failure.clone())),
            (None, TargetState::Paused) => ("PAUSED", None),
            (None, TargetState::Running) => ("RUNNING", None),
        };
        let statuses: BTreeMap<i32, sluice_runtime::TaskStatus> =
            connector.tasks.as_ref().map(|set| set.statuses().into_iter().map(|s| (s.id, s)).collect()).unwrap_or_default();
        let tasks = match &connector.tasks {
            None => Vec::new(),
            Some(_) => (0..connector.tasks_max as i32)
                .map(|id| match statuses.get(&id) {
                    Some(status) => TaskStateInfo {
                        id,
                        state: status.state.as_str().to_string(),
                        worker_id: worker_id.clone(),
                        trace: (status.state == TaskState::Failed).then(|| status.error.clone()).flatten(),
                        retries: status.retries,
                        last_error: (status.state != TaskState::Failed).then(|| status.error.clone()).flatten(),
                    },
                    None => TaskStateInfo {
                        id,
                        state: "UNASSIGNED".into(),
                        worker_id: worker_id.clone(),
                        trace: None,
                        retries: 0,
                        last_error: None,
                    },
                })
                .collect(),
        };
        Ok(ConnectorStatus {
            name: name.to_string(),
            connector: StateInfo {
                state: state.to_string(),
                worker_id,
                trace,
                warning: connector.logs.last_warning(WARNING_SHOWN_MS).map(|line| line.message),
            },
            tasks,
            kind: connector.kind.map_or("unknown", ConnectorType::as_str).to_string(),
        })
    }

    pub fn task_status(&self, name: &str, task: i32) -> Result<TaskStateInfo, ConnectError> {
        self.status(name)?
            .tasks
            .into_iter()
            .find(|t| t.id == task)
            .ok_or_else(|| ConnectError::NotFound(format!("No status found for task {name}-{task}")))
    }

    /// Recent lines of a connector's log (runtime notes about its tasks).
    pub fn logs(&self, name: &str, n: usize) -> Result<Vec<sluice_runtime::LogLine>, ConnectError> {
        let connectors = self.connectors.lock();
        Ok(connectors.get(name).ok_or_else(|| not_found(name))?.logs.recent(n))
    }

    pub fn offsets(&self, name: &str) -> Result<ConnectorOffsets, ConnectError> {
        if !self.connectors.lock().contains_key(name) {
            return Err(not_found(name));
        }
        self.offsets.read(name)
    }

    /// KIP-875: offsets change only while the connector is STOPPED.
    fn require_stopped(&self, name: &str) -> Result<ConnectorType, ConnectError> {
        let connectors = self.connectors.lock();
        let connector = connectors.get(name).ok_or_else(|| not_found(name))?;
        if connector.stored.target_state != TargetState::Stopped || connector.tasks.is_some() {
            return Err(ConnectError::WrongState(format!(
                "Connectors must be in the STOPPED state before their offsets can be modified. This can be done for the specified connector by issuing a 'PUT' request to the '/connectors/{name}/stop' endpoint"
            )));
        }
        Ok(connector.kind.unwrap_or(ConnectorType::Source))
    }

    pub fn alter_offsets(&self, name: &str, entries: &[ConnectorOffset]) -> Result<(), ConnectError> {
        let _control = self.control.lock();
        let kind = self.require_stopped(name)?;
        if entries.is_empty() {
            return Err(ConnectError::BadRequest("Partitions / offsets need to be provided for an alter offsets request".into()));
        }
        if entries.len() > crate::offsets::OFFSET_ENTRIES_MAX {
            return Err(ConnectError::BadRequest(format!("at most {} entries per request", crate::offsets::OFFSET_ENTRIES_MAX)));
        }
        for entry in entries {
            check_entry(kind, entry)?;
        }
        if kind == ConnectorType::Sink {
            self.alter_sink_target(name, Some(entries))?;
        } else {
            // Positions whose transaction committed are settled first, so the alteration starts
            // from where the records are (it drops whatever stays pending).
            settle_stopped_tasks(&self.host, &self.offsets, name)?;
        }
        self.offsets.alter(name, entries)?;
        tracing::info!(connector = name, entries = entries.len(), "connector offsets altered");
        Ok(())
    }

    pub fn reset_offsets(&self, name: &str) -> Result<(), ConnectError> {
        let _control = self.control.lock();
        if self.require_stopped(name)? == ConnectorType::Sink {
            self.alter_sink_target(name, None)?;
        }
        self.offsets.reset(name)?;
        tracing::info!(connector = name, "connector offsets reset");
        Ok(())
    }

    /// A sink with a `default` connection starts from the positions in its target's table: KIP-875
    /// changes go there too (before the broker's copy, so a failure leaves both as they were).
    fn alter_sink_target(&self, name: &str, entries: Option<&[ConnectorOffset]>) -> Result<(), ConnectError> {
        let config = self.connectors.lock().get(name).map(|c| c.stored.config.clone()).ok_or_else(|| not_found(name))?;
        let (parsed, _) = self.checked(&config)?;
        match SqlFactory::new(parsed.connections, self.host.runtime().clone()).filter(|sql| sql.has_default) {
            Some(sql) => crate::sink::alter_target_positions(&sql, name, entries),
            None => Ok(()),
        }
    }

    /// Stops every task (broker shutdown); connectors start again, as stored, at the next start.
    pub fn stop_all(&self) {
        self.supervisor.stop_all();
        self.connectors.lock().clear();
    }
}

fn masked_config(config: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    config.iter().map(|(k, v)| (k.clone(), masked(k, v))).collect()
}

/// Gauges computed at scrape time from the connectors' statuses:
/// `sluice_connector_state{connector,state}` (1 for its current state) and
/// `sluice_connector_tasks{connector,state}` (how many tasks are in each state).
struct StateMetrics {
    manager: Weak<ConnectorManager>,
    state: IntGaugeVec,
    tasks: IntGaugeVec,
}

impl StateMetrics {
    fn new(manager: Weak<ConnectorManager>) -> Result<StateMetrics, prometheus::Error> {
        Ok(StateMetrics {
            manager,
            state: IntGaugeVec::new(
                Opts::new("connector_state", "1 for each connector's current state (RUNNING, PAUSED, STOPPED, FAILED)"),
                &["connector", "state"],
            )?,
            tasks: IntGaugeVec::new(Opts::new("connector_tasks", "A connector's tasks in each state"), &["connector", "state"])?,
        })
    }
}

impl Collector for StateMetrics {
    fn desc(&self) -> Vec<&Desc> {
        self.state.desc().into_iter().chain(self.tasks.desc()).collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.state.reset();
        self.tasks.reset();
        if let Some(manager) = self.manager.upgrade() {
            for name in manager.names() {
                let Ok(status) = manager.status(&name) else { continue };
                self.state.with_label_values(&[&name, &status.connector.state]).set(1);
                for task in &status.tasks {
                    self.tasks.with_label_values(&[&name, &task.state]).inc();
                }
            }
        }
        let mut families = self.state.collect();
        families.extend(self.tasks.collect());
        families
    }
}
