//! The sink driver: the supervised task of a sink connector. It reads committed input itself (a
//! `host` committed reader per assigned partition; no consumer group), hands batches to the module's
//! `put`, and makes the result exactly once:
//!
//! - **With a `default` database connection** (`connection.url`): before each `put` the driver
//!   begins a transaction on that connection (the *managed* connection, `sql::SqlSession`); the
//!   module writes the batch through it; then the driver writes the input positions to a table it
//!   owns in the same database ([`POSITIONS_TABLE`], one row per connector, topic and partition) and
//!   commits. The rows and the positions commit together or not at all, so on restart the task reads
//!   its positions back from the target and a crash at any instant neither loses nor repeats a row.
//! - **Without one** (a file sink): positions go to the connector's offset store right after `put`
//!   returns — at least once across a crash between the two, said in the README.
//!
//! Partitions are spread over the tasks by a stable hash of topic and partition (so adding a
//! partition never moves an existing one to another task); topics named by `topics.regex`, topics
//! that appear later and partitions added later are picked up within [`ASSIGNMENT_REFRESH`].
//!
//! Failures: a retriable `put` error (the target is down) or a database error of the driver's own
//! rolls the transaction back and resets the task: the supervisor backs off, shows the error in the
//! status, and starts the task again from the positions in the target — nothing is lost and the
//! batch is not applied twice. A permanent error goes to the error policy: `errors.tolerance=none`
//! stops the task FAILED; `all` isolates the failing records (each attempt inside a SAVEPOINT, so
//! the good records of the batch stay in the transaction), sends them to the dead-letter topic with
//! context headers (or skips them), and commits the rest with the positions. Dead letters commit
//! before the target transaction: a crash between the two dead-letters a record twice, never loses
//! it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{Map, Value, json};
use sluice_broker::host::{CommittedReader, Host, HostError, ProducerRecord, TopicInfo, TransactionalProducer, is_internal_name};
use sluice_runtime::isolate::Outcome;
use sluice_runtime::policy::{self, context_headers};
use sluice_runtime::{OnFailure, RuntimeError, Step, Task, TaskControl, Verdict};
use sluice_wasm::{LogLevel, PluginError, World};

use crate::chain::{Applied, Chain, ChainRecord, Side};
use crate::config::TopicSelection;
use crate::error::ConnectError;
use crate::offsets::ConnectorOffset;
use crate::sql::{ConnHandle, Dialect, Sql, SqlFactory, SqlSession, SqlValue};
use crate::task::{PutError, SinkModule, SinkRecord, Started, TaskConfig, TaskShared, start_module};

/// The table, in the target database, where sink tasks keep their input positions.
pub const POSITIONS_TABLE: &str = "sluice_connect_offsets";
/// Most records one `put` gets.
pub const PUT_RECORDS_MAX: usize = 5_000;
/// How often a task looks for topics and partitions it should read.
pub const ASSIGNMENT_REFRESH: Duration = Duration::from_secs(5);
/// How long an idle task waits for new input before looking again.
const IDLE_WAIT: Duration = Duration::from_millis(100);
/// How often positions of a sink with a database are copied to the offset store for
/// `GET /connectors/{name}/offsets` (the target's table is what the task resumes from).
const OFFSETS_MIRROR_INTERVAL: Duration = Duration::from_secs(1);
/// Transaction timeout of the dead-letter producer.
const DLQ_TXN_TIMEOUT_MS: i32 = 60_000;

/// What a sink task needs beyond [`TaskShared`]: its input.
pub struct SinkSettings {
    pub topics: TopicSelection,
}

/// The task a partition belongs to: a stable hash, so adding partitions never moves another.
pub fn task_of(topic: &str, partition: i32, tasks: u32) -> i32 {
    // FNV-1a: stable across builds and platforms (std's hasher is not).
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in topic.as_bytes().iter().chain(&partition.to_be_bytes()) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash % u64::from(tasks.max(1))) as i32
}

/// Creates a topic with the broker's defaults unless it exists (or was created meanwhile).
pub fn ensure_topic(host: &Host, name: &str) -> Result<TopicInfo, HostError> {
    if let Some(info) = host.topic(name) {
        return Ok(info);
    }
    match host.create_topic(name, None, &BTreeMap::new()) {
        Ok(info) => Ok(info),
        Err(HostError::TopicRefused(_)) if host.topic(name).is_some() => {
            host.topic(name).ok_or_else(|| HostError::UnknownTopic(name.into()))
        }
        Err(error) => Err(error),
    }
}

/// The target-database side: the managed connection and the positions table.
struct Target {
    session: Arc<SqlSession>,
    dialect: Dialect,
}

impl Target {
    fn placeholder(&self, n: usize) -> String {
        match self.dialect {
            Dialect::Postgres => format!("${n}"),
            Dialect::MySql | Dialect::Sqlite => "?".to_string(),
        }
    }

    fn raw(&self, statement: &str) -> Result<(), ConnectError> {
        self.session.with_managed(|sql, handle| sql.execute(handle, statement, &[]).map(drop))
    }

    fn create_table(&self) -> Result<(), ConnectError> {
        self.raw(&format!(
            "CREATE TABLE IF NOT EXISTS {POSITIONS_TABLE} (connector VARCHAR(255) NOT NULL, topic VARCHAR(255) NOT NULL, \
             kafka_partition INTEGER NOT NULL, next_offset BIGINT NOT NULL, PRIMARY KEY (connector, topic, kafka_partition))"
        ))
    }

    fn read(&self, connector: &str) -> Result<BTreeMap<(String, i32), i64>, ConnectError> {
        let statement =
            format!("SELECT topic, kafka_partition, next_offset FROM {POSITIONS_TABLE} WHERE connector = {}", self.placeholder(1));
        let rows = self.session.with_managed(|sql, handle| sql.query(handle, &statement, &[SqlValue::Text(connector.to_string())]))?;
        let mut positions = BTreeMap::new();
        for row in rows.rows {
            if let [SqlValue::Text(topic), SqlValue::Int(partition), SqlValue::Int(offset)] = row.as_slice() {
                positions.insert((topic.clone(), *partition as i32), *offset);
            } else {
                return Err(ConnectError::BadRequest(format!("{POSITIONS_TABLE} holds a row of unexpected types: {row:?}")));
            }
        }
        Ok(positions)
    }

    fn upsert(
        &self,
        sql: &mut Sql,
        handle: ConnHandle,
        connector: &str,
        positions: &BTreeMap<(String, i32), i64>,
    ) -> Result<(), ConnectError> {
        let (a, b, c, d) = (self.placeholder(1), self.placeholder(2), self.placeholder(3), self.placeholder(4));
        let statement = match self.dialect {
            Dialect::MySql => format!(
                "INSERT INTO {POSITIONS_TABLE} (connector, topic, kafka_partition, next_offset) VALUES ({a}, {b}, {c}, {d}) \
                 ON DUPLICATE KEY UPDATE next_offset = VALUES(next_offset)"
            ),
            Dialect::Postgres | Dialect::Sqlite => format!(
                "INSERT INTO {POSITIONS_TABLE} (connector, topic, kafka_partition, next_offset) VALUES ({a}, {b}, {c}, {d}) \
                 ON CONFLICT (connector, topic, kafka_partition) DO UPDATE SET next_offset = excluded.next_offset"
            ),
        };
        let rows: Vec<Vec<SqlValue>> = positions
            .iter()
            .map(|((topic, partition), offset)| {
                vec![
                    SqlValue::Text(connector.to_string()),
                    SqlValue::Text(topic.clone()),
                    SqlValue::Int(i64::from(*partition)),
                    SqlValue::Int(*offset),
                ]
            })
            .collect();
        sql.execute_batch(handle, &statement, &rows).map(drop)
    }
}

/// A sink's KIP-875 entry (its shape checked by `offsets::check_entry`) as (topic, partition) and
/// the offset, `None` for a `null` one.
fn sink_position(entry: &ConnectorOffset) -> Option<((String, i32), Option<i64>)> {
    let topic = entry.partition.get("kafka_topic").and_then(Value::as_str)?;
    let partition = i32::try_from(entry.partition.get("kafka_partition").and_then(Value::as_i64)?).ok()?;
    let offset = entry.offset.as_ref().and_then(|o| o.get("kafka_offset")).and_then(Value::as_i64);
    Some(((topic.to_string(), partition), offset))
}

/// KIP-875 for a sink with a database: sets (`Some`, a `null` offset deleting) or resets (`None`)
/// the connector's positions in the target's table, which is where its tasks start from. Called
/// while the connector is stopped.
pub fn alter_target_positions(sql: &SqlFactory, connector: &str, entries: Option<&[ConnectorOffset]>) -> Result<(), ConnectError> {
    let session = Arc::new(SqlSession::new(sql.open()?, true));
    let target = Target { dialect: session.managed_dialect()?, session };
    target.create_table()?;
    let p = |n| target.placeholder(n);
    let delete_all = format!("DELETE FROM {POSITIONS_TABLE} WHERE connector = {}", p(1));
    let delete_one =
        format!("DELETE FROM {POSITIONS_TABLE} WHERE connector = {} AND topic = {} AND kafka_partition = {}", p(1), p(2), p(3));
    target.session.with_managed(|sql, handle| {
        sql.begin(handle)?;
        let written = (|| {
            let Some(entries) = entries else {
                return sql.execute(handle, &delete_all, &[SqlValue::Text(connector.to_string())]).map(drop);
            };
            let mut set = BTreeMap::new();
            for entry in entries {
                let Some(((topic, partition), offset)) = sink_position(entry) else { continue };
                match offset {
                    Some(offset) => {
                        set.insert((topic, partition), offset);
                    }
                    None => {
                        let params = [SqlValue::Text(connector.to_string()), SqlValue::Text(topic), SqlValue::Int(i64::from(partition))];
                        sql.execute(handle, &delete_one, &params)?;
                    }
                }
            }
            target.upsert(sql, handle, connector, &set)
        })();
        match written {
            Ok(()) => sql.commit(handle),
            Err(error) => {
                let _ = sql.rollback(handle);
                Err(error)
            }
        }
    })
}

/// One assigned input partition.
struct Input {
    reader: CommittedReader,
}

/// The supervised task of a sink connector.
pub struct SinkDriver {
    shared: Arc<TaskShared>,
    /// The connector's host for this task: its cluster calls stop retrying when the task stops.
    host: Host,
    settings: Arc<SinkSettings>,
    config: TaskConfig,
    module: Option<Box<dyn SinkModule>>,
    target: Option<Target>,
    inputs: BTreeMap<(String, i32), Input>,
    /// Where each partition resumes (read at start from the target or the offset store).
    positions: BTreeMap<(String, i32), i64>,
    next_input: usize,
    assigned_at: Option<Instant>,
    dlq: Option<TransactionalProducer>,
    mirrored_at: Option<Instant>,
    /// Positions changed since they were last copied to the offset store.
    unmirrored: bool,
    fatal: Option<String>,
    /// `sluice_connector_lag_records{connector,task}`.
    lag: prometheus::IntGauge,
    /// The `transforms` chain between the topics and `put`.
    chain: Chain,
}

impl SinkDriver {
    pub fn new(shared: Arc<TaskShared>, settings: Arc<SinkSettings>, task: i32) -> SinkDriver {
        let config = shared.task_config(task);
        let lag = shared.gauges.lag.with_label_values(&[&config.connector, &task.to_string()]);
        let chain = Chain::new(&shared.chain, Side::Sink, Arc::clone(&shared.logs), format!("{}-{task}", config.connector));
        SinkDriver {
            lag,
            chain,
            host: shared.host.clone(),
            shared,
            settings,
            config,
            module: None,
            target: None,
            inputs: BTreeMap::new(),
            positions: BTreeMap::new(),
            next_input: 0,
            assigned_at: None,
            dlq: None,
            mirrored_at: None,
            unmirrored: false,
            fatal: None,
        }
    }

    fn failed(&self, message: String) -> Step {
        self.shared.fail(self.config.task, message)
    }

    /// The partitions this task reads now.
    fn assignment(&self) -> BTreeSet<(String, i32)> {
        let host = &self.shared.host;
        let topics: Vec<TopicInfo> = match &self.settings.topics {
            TopicSelection::None => Vec::new(),
            TopicSelection::List(names) => names.iter().filter_map(|name| host.topic(name)).collect(),
            TopicSelection::Regex(pattern) => match regex::Regex::new(&format!("^(?:{pattern})$")) {
                Ok(re) => host.topics().into_iter().filter(|t| !is_internal_name(&t.name) && re.is_match(&t.name)).collect(),
                Err(_) => Vec::new(),
            },
        };
        topics
            .iter()
            .flat_map(|t| (0..t.partitions).map(move |p| (t.name.clone(), p)))
            .filter(|(topic, partition)| task_of(topic, *partition, self.config.tasks) == self.config.task)
            .collect()
    }

    /// Opens readers for newly assigned partitions at their positions (the earliest offset for a
    /// partition never read) and drops readers of partitions gone.
    fn refresh_assignment(&mut self) -> Result<(), RuntimeError> {
        let assigned = self.assignment();
        self.inputs.retain(|key, _| assigned.contains(key));
        for key in assigned {
            if self.inputs.contains_key(&key) {
                continue;
            }
            let host = &self.host;
            let offset = match self.positions.get(&key) {
                Some(offset) => *offset,
                None => {
                    let earliest = host.resolve_start(&key.0, key.1, sluice_broker::host::StartPosition::Earliest)?;
                    // Where a failed batch rewinds to; written to the target with the first batch.
                    self.positions.insert(key.clone(), earliest);
                    earliest
                }
            };
            let reader = host.reader(&key.0, key.1, offset)?;
            self.inputs.insert(key, Input { reader });
        }
        self.assigned_at = Some(Instant::now());
        Ok(())
    }

    /// Up to [`PUT_RECORDS_MAX`] committed records from the assigned partitions, taking turns, and
    /// where each partition read up to.
    fn read(&mut self) -> Result<(Vec<SinkRecord>, BTreeMap<(String, i32), i64>), RuntimeError> {
        let mut records = Vec::new();
        let mut read_to = BTreeMap::new();
        let count = self.inputs.len();
        let keys: Vec<(String, i32)> = self.inputs.keys().cloned().collect();
        for turn in 0..count {
            if records.len() >= PUT_RECORDS_MAX {
                break;
            }
            let key = &keys[(self.next_input + turn) % count];
            let input = self.inputs.get_mut(key).expect("key from the map");
            let before = input.reader.position();
            let batch = input.reader.next_batch(PUT_RECORDS_MAX - records.len())?;
            if batch.next_offset > before {
                read_to.insert(key.clone(), batch.next_offset);
            }
            records.extend(batch.records.into_iter().map(|r| SinkRecord {
                topic: key.0.clone(),
                partition: key.1,
                offset: r.offset,
                key: r.key,
                value: r.value,
                headers: r.headers,
                timestamp_ms: r.timestamp_ms,
            }));
        }
        if count > 0 {
            self.next_input = (self.next_input + 1) % count;
        }
        Ok((records, read_to))
    }

    /// Rewinds every reader to the last committed position (after a batch that did not commit).
    fn rewind(&mut self) {
        for (key, input) in &mut self.inputs {
            if let Some(offset) = self.positions.get(key) {
                input.reader.seek(*offset);
            }
        }
    }

    /// Writes dead letters in one broker transaction.
    fn dead_letter(&mut self, topic: &str, context: bool, failed: &[(&SinkRecord, String)]) -> Result<(), RuntimeError> {
        let host = self.host.clone();
        let info = ensure_topic(&host, topic)?;
        if self.dlq.is_none() {
            let id = format!("__sluice-connect-{}-{}-dlq", self.config.connector, self.config.task);
            self.dlq = Some(host.producer(&id, DLQ_TXN_TIMEOUT_MS)?);
        }
        let producer = self.dlq.as_mut().expect("made above");
        let mut by_partition: BTreeMap<i32, Vec<ProducerRecord>> = BTreeMap::new();
        for (record, error) in failed {
            let mut headers = record.headers.clone();
            if context {
                headers.extend(context_headers("connector", &self.config.connector, &record.topic, record.partition, record.offset, error));
            }
            let partition = record.partition.rem_euclid(info.partitions.max(1));
            by_partition.entry(partition).or_default().push(ProducerRecord {
                key: record.key.clone(),
                value: record.value.clone(),
                headers,
                timestamp_ms: record.timestamp_ms,
            });
        }
        for (partition, records) in &by_partition {
            producer.send(topic, *partition, records)?;
        }
        producer.commit()?;
        Ok(())
    }

    /// Copies changed positions to the offset store (what `GET .../offsets` shows): at once with
    /// `force` (no database, or the task is idle), else at most every [`OFFSETS_MIRROR_INTERVAL`].
    fn mirror_positions(&mut self, force: bool) -> Result<(), RuntimeError> {
        if !self.unmirrored || (!force && self.mirrored_at.is_some_and(|at| at.elapsed() < OFFSETS_MIRROR_INTERVAL)) {
            return Ok(());
        }
        // Only this task's partitions: `positions` also holds the others' as they were when this
        // task started, and copying those would overwrite what their own tasks copied since.
        let entries: Vec<ConnectorOffset> = self
            .positions
            .iter()
            .filter(|((topic, partition), _)| task_of(topic, *partition, self.config.tasks) == self.config.task)
            .map(|((topic, partition), offset)| ConnectorOffset {
                partition: as_object(json!({"kafka_topic": topic, "kafka_partition": partition})),
                offset: Some(as_object(json!({"kafka_offset": offset}))),
            })
            .collect();
        if !entries.is_empty() {
            self.shared.offsets.alter(&self.config.connector, &entries).map_err(RuntimeError::from)?;
        }
        self.mirrored_at = Some(Instant::now());
        self.unmirrored = false;
        Ok(())
    }

    /// One `put` of `records[range]`: an attempt the batch transaction can undo alone.
    fn put_range(module: &mut dyn SinkModule, target: Option<&Target>, records: &[SinkRecord]) -> Result<(), PluginError> {
        let db = |outcome: Result<(), ConnectError>| {
            outcome.map_err(|e| sink_error(&PutError { message: e.to_string(), retriable: e.is_retriable(), record: None }))
        };
        if let Some(target) = target {
            db(target.session.start_attempt())?;
        }
        // A transform chain may fan a batch out past what one `put` takes.
        let mut put = Ok(());
        for (chunk, records) in records.chunks(PUT_RECORDS_MAX).enumerate() {
            put = module.put(records).map_err(|error| PutError { record: error.record.map(|i| chunk * PUT_RECORDS_MAX + i), ..error });
            if put.is_err() {
                break;
            }
        }
        match put {
            Ok(()) => target.map_or(Ok(()), |t| db(t.session.keep_attempt())),
            Err(error) => {
                if let Some(target) = target {
                    db(target.session.rollback_attempt())?;
                }
                Err(sink_error(&error))
            }
        }
    }
}

/// What the transform chain made of a batch.
struct Transformed {
    /// What goes to `put`.
    records: Vec<SinkRecord>,
    /// For each of `records`, the index of the read record it came from.
    origins: Vec<usize>,
    /// Read records (by index) the chain set aside, and why.
    set_aside: Vec<(usize, String)>,
}

/// One batch: the records as read, and what the chain made of them (none without a chain).
struct Batch<'a> {
    read: &'a [SinkRecord],
    transformed: Option<Transformed>,
}

impl Batch<'_> {
    fn to_put(&self) -> &[SinkRecord] {
        self.transformed.as_ref().map_or(self.read, |t| &t.records)
    }

    /// The read record a record of `to_put` came from.
    fn original(&self, index: usize) -> &SinkRecord {
        match &self.transformed {
            Some(t) => &self.read[t.origins[index]],
            None => &self.read[index],
        }
    }

    fn set_aside(&self) -> Vec<(&SinkRecord, String)> {
        self.transformed.iter().flat_map(|t| &t.set_aside).map(|(index, error)| (&self.read[*index], error.clone())).collect()
    }
}

fn as_object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

fn sink_error(error: &PutError) -> PluginError {
    PluginError::ConnectorError {
        world: World::Sink,
        message: error.message.clone(),
        retriable: error.retriable,
        record_index: error.record,
    }
}

fn is_retriable(error: &PluginError) -> bool {
    matches!(error, PluginError::ConnectorError { retriable: true, .. })
}

impl Task for SinkDriver {
    fn start(&mut self, control: &TaskControl) -> Result<(), RuntimeError> {
        self.host = control.host(&self.shared.host);
        self.fatal = None;
        self.inputs.clear();
        self.assigned_at = None;
        self.positions.clear();
        // Positions: the target's table when there is a database, else the offset store; the store
        // also holds what an operator set with PATCH for partitions the target has no row for.
        for entry in self.shared.offsets.read(&self.config.connector).map_err(RuntimeError::from)?.offsets {
            if let Some((key, Some(offset))) = sink_position(&entry) {
                self.positions.insert(key, offset);
            }
        }
        // With a `default` connection the driver owns its transaction: exactly once.
        let managed = self.shared.sql.as_ref().filter(|sql| sql.has_default);
        let session = match managed {
            Some(make) => {
                let session = Arc::new(SqlSession::new(make.open().map_err(RuntimeError::from)?, true));
                let dialect = session.managed_dialect().map_err(RuntimeError::from)?;
                let target = Target { session: Arc::clone(&session), dialect };
                target.create_table().map_err(RuntimeError::from)?;
                self.positions.extend(target.read(&self.config.connector).map_err(RuntimeError::from)?);
                // The store may be behind the target (a crash within a mirror interval of the last
                // batch): copy the target's positions once even if this task gets no input.
                self.unmirrored = true;
                self.target = Some(target);
                Some(session)
            }
            None => self.shared.sql_session(false)?,
        };
        let made = self.shared.plugin.sink_module(&self.config, self.shared.context(self.config.task, session));
        match start_module(made, |module| module.start(&self.config), &mut self.chain)? {
            Started::Ready(module) => self.module = Some(module),
            Started::Failed(message) => self.fatal = Some(message),
        }
        Ok(())
    }

    fn step(&mut self, control: &TaskControl) -> Result<Step, RuntimeError> {
        if let Some(message) = self.fatal.take() {
            return Ok(self.failed(message));
        }
        if self.assigned_at.is_none_or(|at| at.elapsed() >= ASSIGNMENT_REFRESH) {
            self.refresh_assignment()?;
        }
        let (records, read_to) = self.read()?;
        // What is left after the committed positions, before this batch is written.
        let lag: i64 = self
            .inputs
            .iter()
            .map(|(key, input)| {
                let committed = self.positions.get(key).copied().unwrap_or_else(|| input.reader.position());
                (input.reader.last_stable_offset() - committed).max(0)
            })
            .sum();
        self.lag.set(lag);
        if records.is_empty() {
            // Partitions may have moved past aborted transactions or markers only: keep that.
            if !read_to.is_empty() {
                self.commit_positions(&read_to)?;
            }
            self.mirror_positions(true)?;
            let single = self.inputs.len() == 1;
            match self.inputs.values_mut().next() {
                Some(input) if single => input.reader.wait_for_records(IDLE_WAIT),
                _ => {
                    control.sleep(IDLE_WAIT);
                }
            }
            return Ok(Step::Idle);
        }
        let bytes: u64 =
            records.iter().map(|r| r.key.as_ref().map_or(0, Bytes::len) as u64 + r.value.as_ref().map_or(0, Bytes::len) as u64).sum();
        self.shared.metrics.records_in.inc_by(records.len() as u64);
        let started = Instant::now();
        let transformed = if self.chain.is_empty() {
            None
        } else {
            match self.transform(&records, control) {
                Ok(transformed) => Some(transformed),
                Err(step) => {
                    self.rewind();
                    return Ok(step);
                }
            }
        };
        let batch = Batch { read: &records, transformed };
        let put = batch.to_put().len();
        let result = if put == 0 {
            // The chain filtered the batch out (or set all of it aside): only positions move.
            self.set_aside(&batch.set_aside()).and_then(|()| self.commit_positions(&read_to)).map(|()| None)
        } else {
            self.put_and_commit(&batch, &read_to, control)
        };
        self.shared.metrics.process_seconds.observe(started.elapsed().as_secs_f64());
        match result {
            Ok(Some(step)) => {
                self.rewind();
                Ok(step)
            }
            Ok(None) => {
                self.shared.metrics.records_out.inc_by(put as u64);
                self.shared.bytes_out.inc_by(bytes);
                Ok(Step::Progress)
            }
            Err(error) => {
                self.rewind();
                Err(error)
            }
        }
    }

    fn reset(&mut self) {
        if let Some(target) = self.target.take() {
            target.session.abort_batch();
        }
        if let Some(mut producer) = self.dlq.take() {
            let _ = producer.abort();
        }
        if let Some(mut module) = self.module.take() {
            module.stop();
        }
        self.chain.stop();
        self.inputs.clear();
    }
}

impl SinkDriver {
    /// Runs a batch through the transform chain under the error policy: the records to `put`, where
    /// each came from, and the input records set aside (failing on their own, for the dead-letter
    /// topic or to skip); or
    /// the step when the policy stops the task or it was interrupted while retrying (the batch did
    /// not commit; the caller rewinds).
    fn transform(&mut self, records: &[SinkRecord], control: &TaskControl) -> Result<Transformed, Step> {
        let inputs: Vec<ChainRecord> =
            records.iter().enumerate().map(|(idx, r)| ChainRecord { origin: idx, ..ChainRecord::from(r) }).collect();
        match self.chain.apply(&self.shared.policy, &inputs, control) {
            Applied::Done { records: out, failed } => Ok(Transformed {
                origins: out.iter().map(|r| r.origin).collect(),
                records: out.into_iter().map(SinkRecord::from).collect(),
                set_aside: failed,
            }),
            Applied::Stop(error) => Err(self.failed(error.to_string())),
            Applied::Interrupted => Err(Step::Idle),
        }
    }

    /// Dead-letters or skips (per the policy) records that failed on their own, logging each.
    fn set_aside(&mut self, failed: &[(&SinkRecord, String)]) -> Result<(), RuntimeError> {
        if failed.is_empty() {
            return Ok(());
        }
        match self.shared.policy.on_failure.clone() {
            OnFailure::DeadLetter { topic, context_headers } => {
                self.dead_letter(&topic, context_headers, failed)?;
                self.shared.metrics.dead_lettered.inc_by(failed.len() as u64);
            }
            OnFailure::Skip | OnFailure::Stop => self.shared.metrics.error("skipped").inc_by(failed.len() as u64),
        }
        for (record, error) in failed {
            self.shared.logs.push(
                LogLevel::Warn,
                &format!("record {}-{}@{} failed and was set aside: {error}", record.topic, record.partition, record.offset),
            );
        }
        Ok(())
    }

    /// Commits positions alone (input that held no records for the sink).
    fn commit_positions(&mut self, read_to: &BTreeMap<(String, i32), i64>) -> Result<(), RuntimeError> {
        if let Some(target) = &self.target {
            let connector = &self.config.connector;
            target.session.start_batch();
            target.session.finish_batch(|sql, handle| target.upsert(sql, handle, connector, read_to)).map_err(RuntimeError::from)?;
        }
        self.positions.extend(read_to.iter().map(|(k, v)| (k.clone(), *v)));
        self.unmirrored = true;
        self.mirror_positions(self.target.is_none())
    }

    /// Puts `records` under the error policy and commits them with `read_to`. `Ok(Some(step))`: the
    /// batch did not commit and the task stops or pauses; `Err`: it did not commit and the task is
    /// retried after a backoff.
    fn put_and_commit(
        &mut self,
        batch: &Batch,
        read_to: &BTreeMap<(String, i32), i64>,
        control: &TaskControl,
    ) -> Result<Option<Step>, RuntimeError> {
        let records = batch.to_put();
        let mut module = self.module.take().ok_or_else(|| RuntimeError::Invalid("the task has no module".into()))?;
        if let Some(target) = &self.target {
            target.session.start_batch();
        }
        let target = self.target.as_ref();
        let mut unavailable: Option<PluginError> = None;
        let verdict = policy::apply(&self.shared.policy, records.len(), control, |range| {
            if let Some(error) = &unavailable {
                return Err(error.clone());
            }
            let outcome = SinkDriver::put_range(module.as_mut(), target, &records[range]);
            if let Err(error) = &outcome
                && is_retriable(error)
            {
                unavailable = Some(error.clone());
            }
            outcome
        });
        self.module = Some(module);
        let rollback = |target: Option<&Target>| {
            if let Some(target) = target {
                target.session.abort_batch();
            }
        };
        if let Some(error) = unavailable {
            rollback(self.target.as_ref());
            self.shared.metrics.error("put_retriable").inc();
            return Err(RuntimeError::Invalid(error.to_string()));
        }
        let outcomes = match verdict {
            Verdict::Done(outcomes) => outcomes,
            Verdict::Stop(error) => {
                rollback(self.target.as_ref());
                return Ok(Some(self.failed(error.to_string())));
            }
            Verdict::Interrupted => {
                rollback(self.target.as_ref());
                return Ok(Some(Step::Idle));
            }
        };
        // Dead letters are the records as they were read (as Connect's are), whatever the chain made.
        let mut failed = batch.set_aside();
        failed.extend(outcomes.into_iter().filter_map(|outcome| match outcome {
            Outcome::Failed { index, error } => Some((batch.original(index), error)),
            Outcome::Ok(()) => None,
        }));
        if let Err(error) = self.set_aside(&failed) {
            rollback(self.target.as_ref());
            return Err(error);
        }
        if let Some(target) = &self.target {
            let connector = &self.config.connector;
            target.session.finish_batch(|sql, handle| target.upsert(sql, handle, connector, read_to)).map_err(RuntimeError::from)?;
        }
        self.positions.extend(read_to.iter().map(|(k, v)| (k.clone(), *v)));
        self.unmirrored = true;
        self.mirror_positions(self.target.is_none())?;
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_spread_over_tasks_and_stay_put_when_partitions_are_added() {
        let before: Vec<i32> = (0..8).map(|p| task_of("orders", p, 3)).collect();
        let after: Vec<i32> = (0..16).map(|p| task_of("orders", p, 3)).collect();
        assert_eq!(before[..], after[..8]);
        let used: BTreeSet<i32> = after.iter().copied().collect();
        assert_eq!(used, BTreeSet::from([0, 1, 2]));
        assert!((0..100).all(|p| task_of("t", p, 1) == 0));
    }
}
