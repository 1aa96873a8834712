//! The seam between the runtime and a connector's code: a task drives a *module* through a small
//! trait — [`SourceModule`] or [`SinkModule`] — that the Wasm `source` / `sink` world bindings
//! implement (`crate::wasm`), and Rust test fixtures too. The runtime owns everything around the
//! module: the thread and its lifecycle (`sluice-runtime`'s supervisor), writing to and reading from
//! the broker, positions, the error policy, metrics and logs.
//!
//! [`SourceDriver`] is the supervised task of a source connector: `start` fences the task's previous
//! transactional producer, settles the positions its last transaction left pending (below) and hands
//! the module the connector's positions; each `step` polls the module and writes the records it
//! returned in one broker transaction (creating missing output topics with the broker's defaults),
//! together with the positions the module reported. A poll that returns nothing sleeps for the idle
//! time the module asked for (bounded by [`IDLE_MAX`]).
//!
//! Exactly once: a poll's records and its positions commit together or not at all, so a crash at any
//! instant neither loses nor repeats a source row. The positions live in the [`OffsetStore`] file,
//! which cannot join the transaction, so the transaction carries a marker instead:
//!
//! 1. the driver stages the positions in the store as the task's pending set, with a sequence number
//!    S one more than the marker the task's group (named like its transactional id) has committed on
//!    the partition the transaction writes first;
//! 2. it sends the records and, with `send_offsets`, S as that group's offset on that partition;
//! 3. it commits: the records and the marker become visible together;
//! 4. it settles the pending set: promotes it into the stored positions.
//!
//! After a crash anywhere in 1–4, the next `start` creates the producer (which aborts the dead
//! incarnation's open transaction, or finishes its prepared commit), then reads the marker: at least
//! S means the transaction committed and the set is promoted; less (or none) means it did not, its
//! records are aborted, and the set is dropped, so the module polls the same rows again from the old
//! position. The marker sits on a partition the records went to rather than on a topic of its own:
//! the group offset needs an existing partition (TxnOffsetCommit refuses unknown ones), and this way
//! no topic of the runtime's shows up for clients, counts against `max.topics`, or can be deleted on
//! its own. (Deleting the marker's topic deletes its offsets too: done after a crash in the window
//! between 3 and 4 and before the task starts again, it drops the set, and rows the transaction also
//! wrote to other topics are written again.) A poll with positions but no records saves them
//! directly: no row depends on them, so a crash that forgets them only makes the module look again.
//!
//! A pending set is settled when its task starts. A STOPPED connector's tasks do not start, so the
//! manager settles theirs ([`settle_stopped_tasks`]) when it stops a connector, when it restores a
//! stopped one at broker start, and before KIP-875 alters its positions. The marker is a group offset:
//! it expires `offsets.retention.ms` after the broker started if nothing commits again, so a set left
//! unsettled that long (a task that cannot start) would be dropped even if its transaction committed.
//!
//! Failures: a retriable module error or a broker error resets the task (its open transaction is
//! aborted, the module is stopped) and the supervisor retries with backoff, showing the error; a
//! non-retriable module error stops the task `FAILED` with the error as its trace, counted in
//! `sluice_connector_errors_total{kind="task_failed"}` and logged, until the connector is restarted
//! or resumed.
//!
//! The connector's `transforms` chain (`crate::chain`) runs between `poll` and the topics, under the
//! connector's error policy.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{Map, Value};
use sluice_broker::host::{Host, ProducerRecord, TransactionalProducer};
use sluice_runtime::{DeploymentMetrics, ErrorPolicy, LogBuffer, RuntimeError, Step, Task, TaskControl};
use sluice_wasm::LogLevel;

use crate::chain::{Applied, Chain, ChainRecord, Side, StepSpec};
use crate::config::ConnectorType;
use crate::error::ConnectError;
use crate::offsets::{ConnectorOffset, OffsetStore, PendingPositions, check_entry};
use crate::plugins::ConnectorPlugin;
use crate::sql::{SqlFactory, SqlSession};

/// The longest a source task sleeps after an empty poll (it wakes early when stopped).
pub const IDLE_MAX: Duration = Duration::from_secs(5);
/// Most records one poll may return.
pub const POLL_RECORDS_MAX: usize = 10_000;
/// Most positions one poll may report.
pub const POLL_POSITIONS_MAX: usize = 1_000;
/// Transaction timeout of source tasks' producers: a crashed task's open transaction is aborted by
/// its successor's start anyway; this bounds how long it can hold read_committed readers back.
const TXN_TIMEOUT_MS: i32 = 60_000;

/// What a task is told about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskConfig {
    pub connector: String,
    /// 0..tasks
    pub task: i32,
    /// `tasks.max`
    pub tasks: u32,
    /// The keys the plugin reads (the runtime's own keys are not passed on).
    pub config: BTreeMap<String, String>,
    /// A source's `topic.prefix`.
    pub topic_prefix: Option<String>,
}

/// What a task hands the module it makes, besides its config.
#[derive(Clone)]
pub struct TaskContext {
    /// The connector's log buffer, where the module's own log lines go (besides `tracing`).
    pub logs: Arc<LogBuffer>,
    /// The task's database connections, when the connector declares any.
    pub sql: Option<Arc<SqlSession>>,
    /// Where the module's own gauges go (`sluice_connector_plugin_gauge{connector,task,name}`).
    pub gauges: Arc<dyn sluice_wasm::GaugeSink>,
}

/// An error a module reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleError {
    pub message: String,
    /// Worth trying again later (the source database is down); otherwise the task stops FAILED.
    pub retriable: bool,
}

impl ModuleError {
    pub fn fatal(message: impl Into<String>) -> ModuleError {
        ModuleError { message: message.into(), retriable: false }
    }

    pub fn retriable(message: impl Into<String>) -> ModuleError {
        ModuleError { message: message.into(), retriable: true }
    }
}

/// One record a source module produced.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SourceRecord {
    pub topic: String,
    /// `None`: by the key's hash (murmur2, as Kafka's clients), or the task's number without a key.
    pub partition: Option<i32>,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Option<Bytes>)>,
    /// Milliseconds since the epoch; negative for "now".
    pub timestamp_ms: i64,
}

/// What one poll returned.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SourcePoll {
    pub records: Vec<SourceRecord>,
    /// Positions after these records, per source partition (committed with the records).
    pub positions: Vec<(Map<String, Value>, Map<String, Value>)>,
    /// With no records: how long to wait before polling again.
    pub idle: Duration,
}

/// A source connector's code, as the source driver calls it. One instance per task, on the task's
/// thread; calls block.
pub trait SourceModule: Send {
    /// Prepares the task with the positions saved for the connector (every task sees all of them
    /// and picks its own).
    fn start(&mut self, task: &TaskConfig, positions: &[ConnectorOffset]) -> Result<(), ModuleError>;
    fn poll(&mut self) -> Result<SourcePoll, ModuleError>;
    /// Releases what the module holds; `start` comes again before the next poll.
    fn stop(&mut self);
}

/// One committed input record a sink module receives.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SinkRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Option<Bytes>)>,
    pub timestamp_ms: i64,
}

/// Why a `put` failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutError {
    pub message: String,
    /// The target was unavailable: retry the batch later (with backoff, shown in the status).
    pub retriable: bool,
    /// The record (index in the batch) that failed on its own, for the dead-letter policy.
    pub record: Option<usize>,
}

/// A sink connector's code, as the sink driver (`crate::sink`) calls it.
pub trait SinkModule: Send {
    fn start(&mut self, task: &TaskConfig) -> Result<(), ModuleError>;
    /// Writes a batch; the driver commits the target transaction holding it and the input position.
    fn put(&mut self, batch: &[SinkRecord]) -> Result<(), PutError>;
    fn stop(&mut self);
}

/// What starting a task's module (and its transform chain) gave.
pub(crate) enum Started<M: ?Sized> {
    Ready(Box<M>),
    /// A failure no retry fixes: the task shows it FAILED at its next step.
    Failed(String),
}

/// Makes a task's module and starts it, then instantiates the connector's transform chain; `Err`
/// for a failure worth retrying after a backoff.
pub(crate) fn start_module<M: ?Sized>(
    made: Result<Box<M>, ConnectError>,
    start: impl FnOnce(&mut M) -> Result<(), ModuleError>,
    chain: &mut Chain,
) -> Result<Started<M>, RuntimeError> {
    let mut module = match made {
        Ok(module) => module,
        Err(error) => return Ok(Started::Failed(error.to_string())),
    };
    match start(&mut module) {
        Ok(()) => {}
        Err(error) if error.retriable => return Err(RuntimeError::Invalid(format!("starting the module: {}", error.message))),
        Err(error) => return Ok(Started::Failed(format!("starting the module: {}", error.message))),
    }
    Ok(match chain.start() {
        Ok(()) => Started::Ready(module),
        Err(error) => Started::Failed(error.message),
    })
}

/// Per-task gauges: `sluice_connector_lag_records{connector,task}` (a sink task's input records not
/// yet written: last stable offset minus position over its partitions) and
/// `sluice_connector_position_age_seconds{connector,task}` (seconds since a source task's position
/// last moved: a poll's records or positions committed).
#[derive(Clone)]
pub struct TaskGauges {
    pub lag: prometheus::IntGaugeVec,
    pub position_age: prometheus::GaugeVec,
    /// `sluice_connector_plugin_gauge{connector,task,name}`: what modules set with `set-gauge`.
    pub plugin: prometheus::GaugeVec,
    /// The plugin gauges' label sets, so a deleted connector's series can be dropped.
    plugin_series: Arc<parking_lot::Mutex<std::collections::BTreeSet<(String, String, String)>>>,
}

impl TaskGauges {
    pub fn register(registry: &prometheus::Registry) -> Result<TaskGauges, prometheus::Error> {
        let lag = prometheus::IntGaugeVec::new(
            prometheus::Opts::new("connector_lag_records", "A sink task's input records not yet written, over its partitions"),
            &["connector", "task"],
        )?;
        let position_age = prometheus::GaugeVec::new(
            prometheus::Opts::new("connector_position_age_seconds", "Seconds since a source task's position last moved"),
            &["connector", "task"],
        )?;
        let plugin = prometheus::GaugeVec::new(
            prometheus::Opts::new("connector_plugin_gauge", "A gauge a connector's module sets itself (host.set-gauge), by name"),
            &["connector", "task", "name"],
        )?;
        registry.register(Box::new(lag.clone()))?;
        registry.register(Box::new(position_age.clone()))?;
        registry.register(Box::new(plugin.clone()))?;
        Ok(TaskGauges { lag, position_age, plugin, plugin_series: Arc::default() })
    }

    /// Where one task's module gauges go.
    pub fn plugin_sink(&self, connector: &str, task: i32) -> Arc<dyn sluice_wasm::GaugeSink> {
        Arc::new(PluginGaugeSink { gauges: self.clone(), connector: connector.to_string(), task: task.to_string() })
    }

    /// Drops a deleted connector's series.
    pub fn forget(&self, connector: &str, tasks: u32) {
        for task in 0..tasks {
            let task = task.to_string();
            let _ = self.lag.remove_label_values(&[connector, task.as_str()]);
            let _ = self.position_age.remove_label_values(&[connector, task.as_str()]);
        }
        self.plugin_series.lock().retain(|(c, task, name)| {
            if c != connector {
                return true;
            }
            let _ = self.plugin.remove_label_values(&[c, task, name]);
            false
        });
    }
}

/// One task's module gauges: at most `GAUGES_PER_INSTANCE_MAX` names per task (across its
/// restarts), kept to drop them with the connector.
struct PluginGaugeSink {
    gauges: TaskGauges,
    connector: String,
    task: String,
}

impl sluice_wasm::GaugeSink for PluginGaugeSink {
    fn set(&self, name: &str, value: f64) {
        let key = (self.connector.clone(), self.task.clone(), name.to_string());
        {
            // The host bounds names per instance; a task makes a new instance at every restart, so
            // the task's names are bounded here too.
            let mut series = self.gauges.plugin_series.lock();
            if !series.contains(&key) {
                let task_names = series
                    .range((self.connector.clone(), self.task.clone(), String::new())..)
                    .take_while(|(c, t, _)| *c == self.connector && *t == self.task)
                    .count();
                if task_names >= sluice_wasm::GAUGES_PER_INSTANCE_MAX {
                    return;
                }
                series.insert(key);
            }
        }
        self.gauges.plugin.with_label_values(&[&self.connector, &self.task, name]).set(value);
    }
}

/// One task's position age: reset when its position moves, published on every step.
pub(crate) struct PositionAge {
    moved_at: Instant,
    gauge: prometheus::Gauge,
}

impl PositionAge {
    pub(crate) fn new(shared: &TaskShared, task: i32) -> PositionAge {
        let gauge = shared.gauges.position_age.with_label_values(&[&shared.config.connector, &task.to_string()]);
        PositionAge { moved_at: Instant::now(), gauge }
    }

    pub(crate) fn moved(&mut self) {
        self.moved_at = Instant::now();
        self.gauge.set(0.0);
    }

    pub(crate) fn publish(&self) {
        self.gauge.set(self.moved_at.elapsed().as_secs_f64());
    }
}

/// What the tasks of one connector share with the manager.
pub struct TaskShared {
    pub host: Host,
    pub plugin: Arc<dyn ConnectorPlugin>,
    pub offsets: Arc<OffsetStore>,
    pub metrics: DeploymentMetrics,
    /// Bytes of keys and values written (sources) or read (sinks).
    pub bytes_out: prometheus::IntCounter,
    pub gauges: TaskGauges,
    pub logs: Arc<LogBuffer>,
    /// `tasks.max`, the plugin's keys and `topic.prefix`, per task below.
    pub config: TaskConfig,
    /// The connector's database connections, if it declares any: each task start makes its own.
    pub sql: Option<SqlFactory>,
    /// The `errors.*` keys: what happens to records a transform or `put` fails on.
    pub policy: ErrorPolicy,
    /// The `transforms` chain, resolved when the connector started.
    pub chain: Vec<StepSpec>,
}

impl TaskShared {
    pub fn task_config(&self, task: i32) -> TaskConfig {
        TaskConfig { task, ..self.config.clone() }
    }

    /// The task's database connections, if the connector declares any (`managed`: a sink's
    /// `default` connection, whose transaction the driver owns).
    pub(crate) fn sql_session(&self, managed: bool) -> Result<Option<Arc<SqlSession>>, ConnectError> {
        self.sql.as_ref().map(|make| make.open().map(|sql| Arc::new(SqlSession::new(sql, managed)))).transpose()
    }

    /// What a task's module is made with.
    pub(crate) fn context(&self, task: i32, sql: Option<Arc<SqlSession>>) -> TaskContext {
        TaskContext { logs: Arc::clone(&self.logs), sql, gauges: self.gauges.plugin_sink(&self.config.connector, task) }
    }

    /// A task failing for good: counted, logged to the connector's log, FAILED with `message`.
    pub(crate) fn fail(&self, task: i32, message: String) -> Step {
        self.metrics.error("task_failed").inc();
        self.logs.push(LogLevel::Error, &format!("task {task} failed: {message}"));
        Step::Failed(message)
    }

    fn transactional_id(&self, task: i32) -> String {
        transactional_id(&self.config.connector, task)
    }
}

/// A source task's transactional id, which also names the group whose offsets carry its markers.
fn transactional_id(connector: &str, task: i32) -> String {
    format!("__sluice-connect-{connector}-{task}")
}

/// Settles the task's pending positions, if it has some, by the marker its transaction committed (or
/// did not). `producer` is the task's freshly initialised producer: its creation fenced the previous
/// one and finished or aborted its transaction, so the marker is final.
fn settle(host: &Host, offsets: &OffsetStore, connector: &str, task: i32, producer: &TransactionalProducer) -> Result<(), ConnectError> {
    let Some(pending) = offsets.pending(connector, task)? else { return Ok(()) };
    let marker = host.committed_offset(producer.transactional_id(), &pending.marker_topic, pending.marker_partition)?;
    let committed = marker.is_some_and(|m| m >= pending.seq);
    offsets.settle(connector, task, pending.seq, committed)
}

/// Settles every pending set of a connector whose tasks are not running (STOPPED), fencing each such
/// task's producer first: such a set would otherwise wait for the task's next start, and its marker
/// could expire meanwhile. Blocking file I/O.
pub fn settle_stopped_tasks(host: &Host, offsets: &OffsetStore, connector: &str) -> Result<(), ConnectError> {
    for task in offsets.pending_tasks(connector)? {
        let producer = host.producer(&transactional_id(connector, task), TXN_TIMEOUT_MS)?;
        settle(host, offsets, connector, task, &producer)?;
    }
    Ok(())
}

/// For tests: where a step stops as if the process died there (no abort, no settling).
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    /// The records and the marker were sent; the transaction is still open.
    BeforeCommit,
    /// The transaction committed; its pending positions were not promoted.
    BeforeSettle,
}

/// The supervised task of a source connector.
pub struct SourceDriver {
    shared: Arc<TaskShared>,
    /// The connector's host for this task: its cluster calls stop retrying when the task stops.
    host: Host,
    config: TaskConfig,
    module: Option<Box<dyn SourceModule>>,
    producer: Option<TransactionalProducer>,
    /// A failure found while starting that no retry can fix: the next step reports it.
    fatal: Option<String>,
    crash_at: Option<CrashPoint>,
    age: PositionAge,
    /// The `transforms` chain between `poll` and the topics.
    chain: Chain,
}

/// Records grouped by the partition they go to, in order.
type Batches = BTreeMap<(String, i32), Vec<ProducerRecord>>;

impl SourceDriver {
    pub fn new(shared: Arc<TaskShared>, task: i32) -> SourceDriver {
        let config = shared.task_config(task);
        let age = PositionAge::new(&shared, task);
        let chain = Chain::new(&shared.chain, Side::Source, Arc::clone(&shared.logs), format!("{}-{task}", config.connector));
        SourceDriver { host: shared.host.clone(), shared, config, module: None, producer: None, fatal: None, crash_at: None, age, chain }
    }

    /// For tests: the next step with records and positions stops at `point` with an error, as if the
    /// process died there; drop the driver without `reset` to leave the broker as a crash would.
    #[doc(hidden)]
    pub fn crash_at(&mut self, point: CrashPoint) {
        self.crash_at = Some(point);
    }

    fn crash(&mut self, point: CrashPoint) -> Result<(), RuntimeError> {
        if self.crash_at == Some(point) {
            self.crash_at = None;
            return Err(RuntimeError::Invalid(format!("simulated crash at {point:?}")));
        }
        Ok(())
    }

    fn failed(&self, message: String) -> Step {
        self.shared.fail(self.config.task, message)
    }

    /// Runs a poll's records through the transform chain under the error policy: `Ok(Ok(records))`
    /// to write (records failing on their own were skipped and logged, as Connect skips a source
    /// record its SMTs fail on with `errors.tolerance=all`); `Ok(Err(step))` when the policy stops
    /// the task. Interrupted while retrying, the poll's records are lost to the module's position,
    /// so the task starts again from its committed positions (`Err`).
    fn transform(&mut self, records: Vec<SourceRecord>, control: &TaskControl) -> Result<Result<Vec<SourceRecord>, Step>, RuntimeError> {
        let inputs: Vec<ChainRecord> = records.into_iter().map(ChainRecord::from).collect();
        match self.chain.apply(&self.shared.policy, &inputs, control) {
            Applied::Done { records, failed } => {
                if let Some((index, error)) = failed.first() {
                    self.shared.metrics.error("skipped").inc_by(failed.len() as u64);
                    self.shared.logs.push(
                        LogLevel::Warn,
                        &format!(
                            "{} record(s) failed in the transform chain and were skipped (errors.tolerance=all); the first, for '{}': {error}",
                            failed.len(),
                            inputs[*index].topic
                        ),
                    );
                }
                Ok(Ok(records.into_iter().map(SourceRecord::from).collect()))
            }
            Applied::Stop(error) => Ok(Err(self.failed(error.to_string()))),
            Applied::Interrupted => Err(RuntimeError::Invalid(
                "paused or stopped while retrying the transform chain; the task starts again from its committed positions".into(),
            )),
        }
    }

    /// The partition a record goes to.
    fn partition_for(&self, record: &SourceRecord, partitions: i32) -> i32 {
        match (record.partition, &record.key) {
            (Some(p), _) => p,
            (None, Some(key)) => sluice_protocol::partitioner::partition_for_key(key.as_ref(), partitions as usize),
            (None, None) => self.config.task.rem_euclid(partitions.max(1)),
        }
    }

    /// Groups the records by partition, creating missing topics; returns them with their count and
    /// bytes.
    fn batches(&self, records: Vec<SourceRecord>) -> Result<(Batches, u64, u64), RuntimeError> {
        let host = &self.host;
        let mut batches = Batches::new();
        let mut partitions_of: BTreeMap<String, i32> = BTreeMap::new();
        let (mut count, mut bytes) = (0u64, 0u64);
        for record in records {
            let partitions = match partitions_of.get(&record.topic) {
                Some(n) => *n,
                None => {
                    let info = crate::sink::ensure_topic(host, &record.topic)?;
                    partitions_of.insert(record.topic.clone(), info.partitions);
                    info.partitions
                }
            };
            let partition = self.partition_for(&record, partitions);
            if !(0..partitions).contains(&partition) {
                return Err(RuntimeError::Invalid(format!(
                    "the module wrote to partition {partition} of '{}', which has {partitions}",
                    record.topic
                )));
            }
            count += 1;
            bytes += record.key.as_ref().map_or(0, |k| k.len() as u64) + record.value.as_ref().map_or(0, |v| v.len() as u64);
            batches.entry((record.topic, partition)).or_default().push(ProducerRecord {
                key: record.key,
                value: record.value,
                headers: record.headers,
                timestamp_ms: record.timestamp_ms,
            });
        }
        Ok((batches, count, bytes))
    }

    /// Writes the batches and, if there are positions, stages them and commits their marker in the
    /// same transaction, then commits and settles (see the module docs for the order and why).
    /// `count` and `bytes` are the batches' records and bytes, counted once they commit.
    fn write(&mut self, batches: Batches, count: u64, bytes: u64, positions: Vec<ConnectorOffset>) -> Result<Option<Step>, RuntimeError> {
        let connector = self.config.connector.clone();
        let group = self.shared.transactional_id(self.config.task);
        let staged = match batches.keys().next() {
            Some((topic, partition)) if !positions.is_empty() => {
                // One more than the marker the group holds on this partition: only this task's
                // transactions move it (the group name is internal), one at a time, so it reaches
                // `seq` exactly when this transaction commits.
                let seq = self.host.committed_offset(&group, topic, *partition)?.unwrap_or(0).max(0) + 1;
                let pending = PendingPositions { seq, marker_topic: topic.clone(), marker_partition: *partition, entries: positions };
                match self.shared.offsets.stage(&connector, self.config.task, pending) {
                    Ok(()) => {}
                    Err(ConnectError::BadRequest(message)) => {
                        return Ok(Some(self.failed(format!("poll returned positions the runtime cannot store: {message}"))));
                    }
                    Err(error) => return Err(error.into()),
                }
                Some((topic.clone(), *partition, seq))
            }
            _ => None,
        };
        let producer = self.producer.as_mut().ok_or_else(|| RuntimeError::Invalid("the task has no producer".into()))?;
        for ((topic, partition), batch) in &batches {
            producer.send(topic, *partition, batch)?;
        }
        if let Some((topic, partition, seq)) = &staged {
            producer.send_offsets(&group, &[(topic.clone(), *partition, *seq)])?;
        }
        self.crash(CrashPoint::BeforeCommit)?;
        let producer = self.producer.as_mut().ok_or_else(|| RuntimeError::Invalid("the task has no producer".into()))?;
        producer.commit()?;
        self.shared.metrics.records_out.inc_by(count);
        self.shared.bytes_out.inc_by(bytes);
        self.crash(CrashPoint::BeforeSettle)?;
        if let Some((_, _, seq)) = staged {
            self.shared.offsets.settle(&connector, self.config.task, seq, true).map_err(RuntimeError::from)?;
        }
        Ok(None)
    }
}

impl Task for SourceDriver {
    fn start(&mut self, control: &TaskControl) -> Result<(), RuntimeError> {
        self.host = control.host(&self.shared.host);
        self.fatal = None;
        let producer = self.host.producer(&self.shared.transactional_id(self.config.task), TXN_TIMEOUT_MS)?;
        // Before the positions are read: they must include the last transaction's if it committed.
        settle(&self.host, &self.shared.offsets, &self.config.connector, self.config.task, &producer)?;
        self.producer = Some(producer);
        let positions = self.shared.offsets.read(&self.config.connector).map_err(RuntimeError::from)?;
        let made = self.shared.plugin.source_module(&self.config, self.shared.context(self.config.task, self.shared.sql_session(false)?));
        match start_module(made, |module| module.start(&self.config, &positions.offsets), &mut self.chain)? {
            Started::Ready(module) => self.module = Some(module),
            Started::Failed(message) => self.fatal = Some(message),
        }
        Ok(())
    }

    fn step(&mut self, control: &TaskControl) -> Result<Step, RuntimeError> {
        if let Some(message) = self.fatal.take() {
            return Ok(self.failed(message));
        }
        self.age.publish();
        let Some(module) = self.module.as_mut() else { return Err(RuntimeError::Invalid("the task has no module".into())) };
        let started = Instant::now();
        let poll = module.poll();
        self.shared.metrics.process_seconds.observe(started.elapsed().as_secs_f64());
        let poll = match poll {
            Ok(poll) => poll,
            Err(error) if error.retriable => {
                self.shared.metrics.error("poll_retriable").inc();
                return Err(RuntimeError::Invalid(error.message));
            }
            // A Wasm module's message already says which call failed (`poll: …`).
            Err(error) => return Ok(self.failed(error.message)),
        };
        if poll.records.len() > POLL_RECORDS_MAX || poll.positions.len() > POLL_POSITIONS_MAX {
            let message = format!(
                "poll returned {} records and {} positions; at most {POLL_RECORDS_MAX} and {POLL_POSITIONS_MAX}",
                poll.records.len(),
                poll.positions.len()
            );
            return Ok(self.failed(message));
        }
        if poll.records.is_empty() && poll.positions.is_empty() {
            control.sleep(poll.idle.min(IDLE_MAX));
            return Ok(Step::Idle);
        }
        // Positions are checked against the offset store's rules before any record is written: one
        // refused after the records committed could never be settled.
        let positions: Vec<ConnectorOffset> =
            poll.positions.into_iter().map(|(partition, offset)| ConnectorOffset { partition, offset: Some(offset) }).collect();
        if let Some(error) = positions.iter().find_map(|entry| check_entry(ConnectorType::Source, entry).err()) {
            return Ok(self.failed(format!("poll returned a position the runtime cannot store: {error}")));
        }
        let records = if self.chain.is_empty() || poll.records.is_empty() {
            poll.records
        } else {
            match self.transform(poll.records, control)? {
                Ok(records) => records,
                Err(step) => return Ok(step),
            }
        };
        if records.is_empty() && positions.is_empty() {
            return Ok(Step::Progress);
        }
        if records.is_empty() {
            return match self.shared.offsets.save_positions(&self.config.connector, &positions) {
                Ok(()) => {
                    self.age.moved();
                    Ok(Step::Progress)
                }
                Err(ConnectError::BadRequest(message)) => {
                    Ok(self.failed(format!("poll returned positions the runtime cannot store: {message}")))
                }
                Err(error) => Err(error.into()),
            };
        }
        let (batches, count, bytes) = self.batches(records)?;
        let step = self.write(batches, count, bytes, positions)?;
        if step.is_none() {
            self.age.moved();
        }
        Ok(step.unwrap_or(Step::Progress))
    }

    fn reset(&mut self) {
        if let Some(mut producer) = self.producer.take() {
            let _ = producer.abort();
        }
        if let Some(mut module) = self.module.take() {
            module.stop();
        }
        self.chain.stop();
    }
}
