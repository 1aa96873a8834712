//! The mirror manager: mirrors by name, each one supervised task (`sluice-runtime`) copying every
//! selected topic; create, pause, resume, promote, delete, and start-up from the stored mirrors.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use parking_lot::Mutex;
use serde::Serialize;
use sluice_broker::host::{Host, Promotion, now_ms};
use sluice_runtime::store::JsonFiles;
use sluice_runtime::{Plugins, RuntimeError, Supervisor, Task, TaskSet, TaskState};

use crate::spec::{MirrorSpec, Mode, StoredMirror};
use crate::state::{MirrorMetrics, MirrorShared};
use crate::task::MirrorTask;

/// Most mirrors one broker runs.
pub const MIRRORS_MAX: usize = 64;

struct Running {
    stored: StoredMirror,
    shared: Arc<MirrorShared>,
    tasks: Arc<TaskSet>,
    /// Why a stored mirror's spec no longer validates: it is listed as FAILED and never runs; it
    /// can be promoted and deleted.
    invalid: Option<String>,
}

pub struct MirrorManager {
    host: Host,
    /// The module registry rename mode's policies come from.
    plugins: Plugins,
    store: JsonFiles<StoredMirror>,
    metrics: Arc<MirrorMetrics>,
    supervisor: Supervisor,
    mirrors: Mutex<BTreeMap<String, Running>>,
    /// Serialises creates, deletes and promotions.
    control: Mutex<()>,
}

/// `GET /v1/mirrors/{name}`.
#[derive(Debug, Clone, Serialize)]
pub struct MirrorStatus {
    pub name: String,
    /// RUNNING | PAUSED | FAILED | UNASSIGNED (starting, or backing off after an error)
    pub state: TaskState,
    /// The last error the mirror is backing off from (the source unreachable, …).
    pub error: Option<String>,
    pub source_bootstrap: Vec<String>,
    pub source_alias: String,
    pub mode: Mode,
    /// Rename mode's policy (a `mirror-policy` module; `default` and `identity` are the builtins).
    pub policy: Option<String>,
    /// The policy's configuration.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub policy_config: BTreeMap<String, String>,
    pub topics: String,
    pub exclude: Option<String>,
    pub groups: Option<String>,
    pub created_at_ms: i64,
    pub source_reachable: bool,
    /// Records on the source not copied yet, over every partition.
    pub lag_records: i64,
    pub records: u64,
    pub bytes: u64,
    pub bytes_per_second: u64,
    pub partitions: Vec<PartitionStatus>,
    /// Matching source topics that are not mirrored, and why.
    pub topic_errors: BTreeMap<String, String>,
    /// The selected consumer groups' offset sync.
    pub group_offsets: BTreeMap<String, crate::state::GroupSync>,
    pub promoted: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PartitionStatus {
    /// The source topic.
    pub topic: String,
    /// Its copy here (the same name in preserve mode).
    pub target_topic: String,
    pub partition: i32,
    pub source_high_watermark: i64,
    pub target_end_offset: i64,
    pub lag_records: i64,
    /// How long the copy has been behind the source (0 while level).
    pub lag_ms: i64,
    /// Age of the newest record copied (its timestamp against the broker's clock).
    pub last_record_age_ms: Option<i64>,
    pub records: u64,
    pub bytes: u64,
    pub bytes_per_second: u64,
    pub records_lost: u64,
    /// Rename mode: records not copied back to the cluster they came from.
    pub records_looped: u64,
    /// Rename mode: records the replication policy dropped.
    pub records_filtered: u64,
    pub error: Option<String>,
}

/// `POST /v1/mirrors/{name}/promote`.
#[derive(Debug, Clone, Serialize)]
pub struct PromoteOutcome {
    pub mirror: String,
    pub promoted: Vec<Promoted>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Promoted {
    pub topic: String,
    /// End offset of each partition when it was promoted; the source's producer state below it is
    /// forgotten.
    pub end_offsets: Vec<i64>,
    /// (producer id, partition) of transactions the source left open, aborted here.
    pub aborted_transactions: Vec<(i64, i32)>,
}

impl From<Promotion> for Promoted {
    fn from(p: Promotion) -> Promoted {
        Promoted { topic: p.topic, end_offsets: p.producer_fences, aborted_transactions: p.aborted_transactions }
    }
}

impl MirrorManager {
    pub fn open(host: Host, plugins: Plugins) -> Result<MirrorManager, RuntimeError> {
        let store = JsonFiles::open(host.data_dir()?.join("mirrors"), "mirror")?;
        let metrics = Arc::new(MirrorMetrics::register(host.metrics())?);
        let supervisor = Supervisor::new("mirror")?;
        Ok(MirrorManager { host, plugins, store, metrics, supervisor, mirrors: Mutex::new(BTreeMap::new()), control: Mutex::new(()) })
    }

    /// Starts every stored mirror (at broker start).
    pub fn start_all(&self) {
        let _control = self.control.lock();
        for stored in self.store.load_all() {
            let name = stored.spec.name.clone();
            if let Err(error) = stored.spec.validate() {
                tracing::error!(mirror = name, %error, "a stored mirror is not valid; it is listed as FAILED and does not run: delete it (its topics are promoted) and create it again");
                self.load_invalid(stored, &error.to_string());
                continue;
            }
            match self.start(stored) {
                Ok(()) => tracing::info!(mirror = name, "mirror restored"),
                Err(error) => tracing::error!(mirror = name, %error, "a stored mirror could not be started"),
            }
        }
    }

    /// Lists a stored mirror whose spec no longer validates, without running it.
    fn load_invalid(&self, stored: StoredMirror, why: &str) {
        let name = stored.spec.name.clone();
        let why = format!("the stored mirror is not valid ({why}); delete it and create it again");
        let shared = Arc::new(MirrorShared::invalid(stored.spec.clone(), stored.promoted.clone(), Arc::clone(&self.metrics), &why));
        let factory = Box::new(|_id: i32| Err(RuntimeError::Invalid("an invalid mirror does not run".into())));
        let tasks = TaskSet::new("mirror", &name, true, factory, Box::new(Vec::new));
        self.mirrors.lock().insert(name, Running { stored, shared, tasks, invalid: Some(why) });
    }

    fn start(&self, stored: StoredMirror) -> Result<(), RuntimeError> {
        let name = stored.spec.name.clone();
        let shared = Arc::new(MirrorShared::new(stored.spec.clone(), stored.promoted.clone(), Arc::clone(&self.metrics))?);
        let (host, plugins, task_shared) = (self.host.clone(), self.plugins.clone(), Arc::clone(&shared));
        let factory = Box::new(move |_id: i32| {
            Ok(Box::new(MirrorTask::new(host.clone(), plugins.clone(), Arc::clone(&task_shared))) as Box<dyn Task>)
        });
        let tasks = TaskSet::new("mirror", &name, stored.paused, factory, Box::new(|| vec![0]));
        self.supervisor.insert(&name, Arc::clone(&tasks));
        self.mirrors.lock().insert(name, Running { stored, shared, tasks, invalid: None });
        Ok(())
    }

    pub fn create(&self, spec: MirrorSpec) -> Result<MirrorStatus, RuntimeError> {
        spec.validate()?;
        if spec.mode == Mode::Rename {
            self.check_policy(spec.policy_module())?;
        }
        let _control = self.control.lock();
        let name = spec.name.clone();
        {
            let mirrors = self.mirrors.lock();
            if mirrors.contains_key(&name) {
                return Err(RuntimeError::Invalid(format!("a mirror named '{name}' exists; delete it first, or pick another name")));
            }
            if mirrors.len() >= MIRRORS_MAX {
                return Err(RuntimeError::Invalid(format!("this broker runs {MIRRORS_MAX} mirrors, the most it may")));
            }
        }
        let stored = StoredMirror { spec, paused: false, created_at_ms: now_ms(), promoted: BTreeSet::new() };
        self.store.save(&name, &stored)?;
        self.start(stored)?;
        tracing::info!(mirror = name, "mirror created");
        self.status(&name)
    }

    /// A rename-mode mirror's policy must be a `mirror-policy` module in the registry.
    fn check_policy(&self, module: &str) -> Result<(), RuntimeError> {
        let registry = self.plugins.registry()?;
        let policies: Vec<String> =
            registry.list().into_iter().filter(|m| m.worlds.iter().any(|w| w == "mirror-policy")).map(|m| m.name).collect();
        match registry.get(module) {
            Some(info) if info.worlds.iter().any(|w| w == "mirror-policy") => Ok(()),
            Some(info) => Err(RuntimeError::Invalid(format!(
                "policy: module '{module}' is a {} module, not a mirror policy; policies here: {}",
                info.worlds.join("/"),
                policies.join(", ")
            ))),
            None => Err(RuntimeError::Invalid(format!(
                "policy: no module '{module}' in the broker's registry; upload it first (`sluice plugin upload FILE.wasm --name {module}`, or `sluice mirror create --policy FILE.wasm`); policies here: {}",
                policies.join(", ")
            ))),
        }
    }

    /// The mirrors whose replication policy is the registry module `module`.
    pub fn policy_users(&self, module: &str) -> Vec<String> {
        let mirrors = self.mirrors.lock();
        mirrors
            .iter()
            .filter(|(_, running)| running.stored.spec.mode == Mode::Rename && running.stored.spec.policy_module() == module)
            .map(|(name, _)| format!("mirror '{name}'"))
            .collect()
    }

    pub fn list(&self) -> Vec<MirrorStatus> {
        let names: Vec<String> = self.mirrors.lock().keys().cloned().collect();
        names.iter().filter_map(|name| self.status(name).ok()).collect()
    }

    pub fn status(&self, name: &str) -> Result<MirrorStatus, RuntimeError> {
        let mirrors = self.mirrors.lock();
        let running = mirrors.get(name).ok_or_else(|| not_found(name))?;
        let task = running.tasks.statuses().into_iter().next();
        let shared = &running.shared;
        let spec = &running.stored.spec;
        let now = now_ms();
        let partitions: Vec<PartitionStatus> = shared
            .partitions()
            .into_iter()
            .map(|((topic, partition), p)| PartitionStatus {
                target_topic: shared.target_of(&topic).unwrap_or_default(),
                topic,
                partition,
                source_high_watermark: p.source_high_watermark,
                target_end_offset: p.target_end_offset,
                lag_records: p.lag_records(),
                lag_ms: p.lag_ms(now),
                last_record_age_ms: p.record_age_ms(now),
                records: p.records,
                bytes: p.bytes,
                bytes_per_second: p.bytes_per_second(now),
                records_lost: p.records_lost,
                records_looped: p.records_looped,
                records_filtered: p.records_filtered,
                error: p.error.clone(),
            })
            .collect();
        let source_error = shared.source_error();
        Ok(MirrorStatus {
            name: name.to_string(),
            state: if running.invalid.is_some() { TaskState::Failed } else { task.as_ref().map_or(TaskState::Unassigned, |t| t.state) },
            error: task.and_then(|t| t.error).or_else(|| source_error.clone()),
            source_bootstrap: spec.source_bootstrap.clone(),
            source_alias: spec.source_alias.clone().unwrap_or_else(|| spec.name.clone()),
            mode: spec.mode,
            policy: (spec.mode == Mode::Rename).then(|| spec.policy.clone()),
            policy_config: spec.policy_config.clone(),
            topics: spec.topics.clone(),
            exclude: spec.exclude.clone(),
            groups: spec.groups.clone(),
            created_at_ms: running.stored.created_at_ms,
            source_reachable: source_error.is_none(),
            lag_records: partitions.iter().map(|p| p.lag_records).sum(),
            records: partitions.iter().map(|p| p.records).sum(),
            bytes: partitions.iter().map(|p| p.bytes).sum(),
            bytes_per_second: partitions.iter().map(|p| p.bytes_per_second).sum(),
            partitions,
            topic_errors: shared.topic_errors(),
            group_offsets: shared.groups(),
            promoted: shared.promoted().into_iter().collect(),
        })
    }

    pub fn set_paused(&self, name: &str, paused: bool) -> Result<MirrorStatus, RuntimeError> {
        {
            let _control = self.control.lock();
            let mut mirrors = self.mirrors.lock();
            let running = mirrors.get_mut(name).ok_or_else(|| not_found(name))?;
            if let Some(why) = &running.invalid {
                return Err(RuntimeError::Invalid(format!("mirror '{name}' cannot run: {why}")));
            }
            let mut stored = running.stored.clone();
            stored.paused = paused;
            self.store.save(name, &stored)?;
            running.stored = stored;
            running.tasks.set_paused(paused);
            if !paused {
                running.tasks.clear_failures(true);
            }
        }
        tracing::info!(mirror = name, paused, "mirror {}", if paused { "paused" } else { "resumed" });
        self.status(name)
    }

    /// Makes `topics` (every topic the mirror owns when `None`) normal, writable topics. The mirror
    /// stops copying them for good (they stay promoted even if they match).
    pub fn promote(&self, name: &str, topics: Option<Vec<String>>) -> Result<PromoteOutcome, RuntimeError> {
        let _control = self.control.lock();
        let (shared, mode) = {
            let mirrors = self.mirrors.lock();
            let running = mirrors.get(name).ok_or_else(|| not_found(name))?;
            (Arc::clone(&running.shared), running.stored.spec.mode)
        };
        if mode == Mode::Rename {
            return Err(RuntimeError::Invalid(format!(
                "mirror '{name}' runs in rename mode: its copies are normal, writable topics already; pause or delete the mirror to stop copying"
            )));
        }
        let owned: Vec<String> =
            self.host.topics().into_iter().filter(|t| self.host.mirror_of(&t.name).as_deref() == Some(name)).map(|t| t.name).collect();
        let wanted = match topics {
            Some(topics) if topics.is_empty() => return Err(RuntimeError::Invalid("name at least one topic to promote".into())),
            Some(topics) => {
                if let Some(other) = topics.iter().find(|t| !owned.contains(t)) {
                    return Err(RuntimeError::Invalid(format!("topic '{other}' is not a mirror topic of mirror '{name}'")));
                }
                topics
            }
            None => owned,
        };
        let mut outcome = PromoteOutcome { mirror: name.to_string(), promoted: Vec::new() };
        for topic in wanted {
            // Recorded before the topic changes: after a crash in between, the mirror does not copy
            // into it again, and promoting again finishes the job.
            {
                let mut mirrors = self.mirrors.lock();
                let running = mirrors.get_mut(name).ok_or_else(|| not_found(name))?;
                let mut stored = running.stored.clone();
                stored.promoted.insert(topic.clone());
                self.store.save(name, &stored)?;
                running.stored = stored;
            }
            let _writing = shared.writing.lock();
            shared.add_promoted(&topic);
            outcome.promoted.push(self.host.promote_mirror_topic(&topic, name)?.into());
        }
        Ok(outcome)
    }

    /// Stops a mirror and forgets it. Its topics keep their data and become normal, writable topics
    /// (as if promoted), so that nothing is left read-only without an owner. If promoting fails, the
    /// mirror is started again as it was and the error returned.
    pub fn delete(&self, name: &str) -> Result<PromoteOutcome, RuntimeError> {
        let (tasks, shared, mode) = {
            let mirrors = self.mirrors.lock();
            let running = mirrors.get(name).ok_or_else(|| not_found(name))?;
            (Arc::clone(&running.tasks), Arc::clone(&running.shared), running.stored.spec.mode)
        };
        tasks.stop();
        // Rename mode's copies are writable already; its positions stay committed (a mirror created
        // again under the same name resumes from them).
        let outcome = match mode {
            Mode::Preserve => self.promote(name, None),
            Mode::Rename => Ok(PromoteOutcome { mirror: name.to_string(), promoted: Vec::new() }),
        };
        let _control = self.control.lock();
        self.supervisor.remove(name);
        let Some(running) = self.mirrors.lock().remove(name) else { return outcome };
        match outcome {
            Ok(outcome) => {
                self.store.remove(name)?;
                // A mirror created again under this name asks its policy for names afresh (its
                // positions, kept by copy name, resume where the names are the same).
                if let Ok(path) = crate::task::targets_path(&self.host, name)
                    && let Err(error) = std::fs::remove_file(&path)
                    && error.kind() != std::io::ErrorKind::NotFound
                {
                    tracing::warn!(mirror = name, %error, "could not remove the mirror's copy names");
                }
                let partitions: Vec<(String, i32)> = shared.partitions().into_keys().collect();
                self.metrics.forget(name, &partitions);
                tracing::info!(mirror = name, topics = outcome.promoted.len(), "mirror deleted; its topics were promoted");
                Ok(outcome)
            }
            Err(error) => {
                tracing::warn!(mirror = name, %error, "deleting the mirror failed while promoting its topics; it runs on");
                if let Err(restart) = self.start(running.stored) {
                    tracing::error!(mirror = name, error = %restart, "the mirror could not be started again");
                }
                Err(error)
            }
        }
    }

    pub fn stop_all(&self) {
        self.supervisor.stop_all();
    }
}

fn not_found(name: &str) -> RuntimeError {
    RuntimeError::NotFound { what: "mirror", name: name.to_string() }
}
