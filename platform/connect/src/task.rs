//! The seam between the runtime and a connector's code: a task drives a *module* through a small
//! trait — [`SourceModule`] or [`SinkModule`] — that the Wasm `source` / `sink` world bindings
//! implement (`crate::wasm`), and Rust test fixtures too. The runtime owns everything around the
//! module: the thread and its lifecycle (`sluice-runtime`'s supervisor), writing to and reading from
//! the broker, positions, the error policy, metrics and logs.
//!
//! [`SourceDriver`] is the supervised task of a source connector: `start` fences the task's previous
//! transactional producer and hands the module its last saved positions; each `step` polls the
//! module, writes the records it returned in one broker transaction (creating missing output topics
//! with the broker's defaults), commits, then saves the positions the module reported. A poll that
//! returns nothing sleeps for the idle time the module asked for (bounded by [`IDLE_MAX`]).
//!
//! Failures: a retriable module error or a broker error resets the task (its open transaction is
//! aborted, the module is stopped) and the supervisor retries with backoff, showing the error; a
//! non-retriable module error stops the task `FAILED` with the error as its trace, counted in
//! `sluice_connector_errors_total{kind="task_failed"}` and logged, until the connector is restarted
//! or resumed.
//!
//! Not yet here (the next pieces): the sink driver (committed input → `put` → the target
//! transaction that also holds the input position), the transform chain between module and topics,
//! and positions committed inside the records' transaction (today they are saved right after it
//! commits: at least once across a crash between the two).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{Map, Value};
use sluice_broker::host::{Host, HostError, ProducerRecord, TransactionalProducer};
use sluice_runtime::{DeploymentMetrics, LogBuffer, RuntimeError, Step, Task, TaskControl};
use sluice_wasm::LogLevel;

use crate::config::ConnectorType;
use crate::offsets::{ConnectorOffset, OffsetStore, check_entry};
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
    /// Positions after these records, per source partition (saved once the records are committed).
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

/// What the tasks of one connector share with the manager.
pub struct TaskShared {
    pub host: Host,
    pub plugin: Arc<dyn ConnectorPlugin>,
    pub offsets: Arc<OffsetStore>,
    pub metrics: DeploymentMetrics,
    /// Bytes of keys and values written (sources) or read (sinks).
    pub bytes_out: prometheus::IntCounter,
    pub logs: Arc<LogBuffer>,
    /// `tasks.max`, the plugin's keys and `topic.prefix`, per task below.
    pub config: TaskConfig,
    /// The connector's database connections, if it declares any: each task start makes its own.
    pub sql: Option<SqlFactory>,
}

impl TaskShared {
    pub fn task_config(&self, task: i32) -> TaskConfig {
        TaskConfig { task, ..self.config.clone() }
    }

    fn transactional_id(&self, task: i32) -> String {
        format!("__sluice-connect-{}-{task}", self.config.connector)
    }
}

/// The supervised task of a source connector.
pub struct SourceDriver {
    shared: Arc<TaskShared>,
    config: TaskConfig,
    module: Option<Box<dyn SourceModule>>,
    producer: Option<TransactionalProducer>,
    /// A failure found while starting that no retry can fix: the next step reports it.
    fatal: Option<String>,
}

impl SourceDriver {
    pub fn new(shared: Arc<TaskShared>, task: i32) -> SourceDriver {
        let config = shared.task_config(task);
        SourceDriver { shared, config, module: None, producer: None, fatal: None }
    }

    fn failed(&self, message: String) -> Step {
        self.shared.metrics.error("task_failed").inc();
        self.shared.logs.push(LogLevel::Error, &format!("task {} failed: {message}", self.config.task));
        Step::Failed(message)
    }

    /// The partition a record goes to.
    fn partition_for(&self, record: &SourceRecord, partitions: i32) -> i32 {
        match (record.partition, &record.key) {
            (Some(p), _) => p,
            (None, Some(key)) => sluice_protocol::partitioner::partition_for_key(key.as_ref(), partitions as usize),
            (None, None) => self.config.task.rem_euclid(partitions.max(1)),
        }
    }

    fn write(&mut self, records: Vec<SourceRecord>) -> Result<(u64, u64), RuntimeError> {
        let host = &self.shared.host;
        let mut batches: BTreeMap<(String, i32), Vec<ProducerRecord>> = BTreeMap::new();
        let mut partitions_of: BTreeMap<String, i32> = BTreeMap::new();
        let (mut count, mut bytes) = (0u64, 0u64);
        for record in records {
            let partitions = match partitions_of.get(&record.topic) {
                Some(n) => *n,
                None => {
                    let info = match host.topic(&record.topic) {
                        Some(info) => info,
                        None => match host.create_topic(&record.topic, None, &BTreeMap::new()) {
                            Ok(info) => info,
                            // Created meanwhile by someone else.
                            Err(HostError::TopicRefused(_)) if host.topic(&record.topic).is_some() => {
                                host.topic(&record.topic).ok_or_else(|| HostError::UnknownTopic(record.topic.clone()))?
                            }
                            Err(error) => return Err(error.into()),
                        },
                    };
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
        let producer = self.producer.as_mut().ok_or_else(|| RuntimeError::Invalid("the task has no producer".into()))?;
        for ((topic, partition), batch) in &batches {
            producer.send(topic, *partition, batch)?;
        }
        producer.commit()?;
        Ok((count, bytes))
    }
}

impl Task for SourceDriver {
    fn start(&mut self, _control: &TaskControl) -> Result<(), RuntimeError> {
        self.fatal = None;
        self.producer = Some(self.shared.host.producer(&self.shared.transactional_id(self.config.task), TXN_TIMEOUT_MS)?);
        let positions = self.shared.offsets.read(&self.config.connector).map_err(RuntimeError::from)?;
        let sql = self.shared.sql.as_ref().map(|make| make.open().map(|sql| Arc::new(SqlSession::new(sql, false)))).transpose()?;
        let mut module = match self.shared.plugin.source_module(&self.config, &self.shared.logs, sql) {
            Ok(module) => module,
            Err(error) => {
                self.fatal = Some(error.to_string());
                return Ok(());
            }
        };
        match module.start(&self.config, &positions.offsets) {
            Ok(()) => self.module = Some(module),
            Err(error) if error.retriable => return Err(RuntimeError::Invalid(format!("starting the module: {}", error.message))),
            Err(error) => self.fatal = Some(format!("starting the module: {}", error.message)),
        }
        Ok(())
    }

    fn step(&mut self, control: &TaskControl) -> Result<Step, RuntimeError> {
        if let Some(message) = self.fatal.take() {
            return Ok(self.failed(message));
        }
        let Some(module) = self.module.as_mut() else { return Err(RuntimeError::Invalid("the task has no module".into())) };
        let started = Instant::now();
        let poll = module.poll();
        self.shared.metrics.process_seconds.observe(started.elapsed().as_secs_f64());
        let poll = match poll {
            Ok(poll) => poll,
            Err(error) if error.retriable => {
                self.shared.metrics.error("poll_retriable").inc();
                return Err(RuntimeError::Invalid(format!("poll: {}", error.message)));
            }
            Err(error) => return Ok(self.failed(format!("poll: {}", error.message))),
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
        // refused after the records committed would make the task retry from the old position and
        // write the same records again on every retry.
        let positions: Vec<ConnectorOffset> =
            poll.positions.into_iter().map(|(partition, offset)| ConnectorOffset { partition, offset: Some(offset) }).collect();
        if let Some(error) = positions.iter().find_map(|entry| check_entry(ConnectorType::Source, entry).err()) {
            return Ok(self.failed(format!("poll returned a position the runtime cannot store: {error}")));
        }
        let (count, bytes) = self.write(poll.records)?;
        if !positions.is_empty() {
            self.shared.offsets.alter(&self.config.connector, &positions).map_err(RuntimeError::from)?;
        }
        self.shared.metrics.records_out.inc_by(count);
        self.shared.bytes_out.inc_by(bytes);
        Ok(Step::Progress)
    }

    fn reset(&mut self) {
        if let Some(mut producer) = self.producer.take() {
            let _ = producer.abort();
        }
        if let Some(mut module) = self.module.take() {
            module.stop();
        }
    }
}
