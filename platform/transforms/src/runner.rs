//! One runner per input partition of a deployment: a supervised task (`sluice-runtime`) on a thread
//! of its own (Wasm calls are synchronous and CPU-bound) that loops read → process → commit.
//!
//! Exactly once: each batch's output records and the input position after the batch are written in
//! one transaction of the partition's transactional producer (`__sluice-transform-<name>-<p>`), the
//! same mechanism Kafka clients use. On (re)start the runner initialises that producer, which aborts
//! whatever transaction a crashed predecessor left open, then reads the committed position from the
//! transform's group and continues from there. Input is read read_committed (the host's committed
//! reader), so aborted input records are never transformed. Per-key order holds: one runner per
//! input partition, in order.
//!
//! A failing batch goes through the deployment's error policy (`sluice_runtime::policy`): retries,
//! then stop, or dead-letter exactly the records that fail while the rest is transformed and
//! committed in the same transaction.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use sluice_broker::host::{CommittedReader, Host, HostError, ProducerRecord, TransactionalProducer, Visited};
use sluice_runtime::isolate::Outcome;
use sluice_runtime::policy::{self, OnFailure, Verdict};
use sluice_runtime::{DeploymentMetrics, LogBuffer, RuntimeError, Step, Task, TaskControl};
use sluice_wasm::{
    InputBatch, InputRecord, InputSlice, InstanceConfig, Limits, LogLevel, Output, PluginError, TransformInstance, TransformModule, World,
};

use crate::spec::{Partitioning, TransformSpec};

/// How long an idle runner waits for new input before checking its flags again.
const IDLE_WAIT: Duration = Duration::from_millis(200);
/// Transaction timeout of the runners' producers: a crashed runner's open transaction is aborted by
/// its successor's init anyway; this only bounds how long one can hold read_committed readers back.
const TXN_TIMEOUT_MS: i32 = 60_000;

/// Where one partition's runner stands, for status and lag.
#[derive(Debug, Default)]
pub struct PartitionState {
    /// Next input offset to transform.
    pub position: AtomicI64,
    /// The input's last stable offset at the runner's latest read: the lag `status` shows when
    /// another broker leads the input (asking that broker would put a network call, retried through
    /// a failover, in every status request).
    pub last_stable: AtomicI64,
    pub records_in: AtomicU64,
    pub records_out: AtomicU64,
    pub dead_lettered: AtomicU64,
}

/// What the runners of one deployment share with the manager and the API.
pub struct Shared {
    pub spec: TransformSpec,
    pub module: TransformModule,
    pub version: u64,
    pub limits: Mutex<Limits>,
    /// Bumped on every limits change; runners apply the new limits before their next call.
    pub limits_version: AtomicU64,
    /// One entry per input partition, grown when the input topic gains partitions.
    pub partitions: Mutex<BTreeMap<i32, Arc<PartitionState>>>,
    pub metrics: DeploymentMetrics,
    pub logs: Arc<LogBuffer>,
}

impl Shared {
    pub fn partition_state(&self, partition: i32) -> Arc<PartitionState> {
        Arc::clone(self.partitions.lock().entry(partition).or_default())
    }
}

pub struct Runner {
    host: Host,
    shared: Arc<Shared>,
    partition: i32,
    state: Arc<PartitionState>,
    producer: Option<TransactionalProducer>,
    reader: Option<CommittedReader>,
    instance: Option<TransformInstance>,
    limits_seen: u64,
    /// The batch being transformed, encoded once as the module gets it; its memory is kept for the
    /// next batch.
    inputs: InputBatch,
}

impl Runner {
    pub fn new(host: Host, shared: Arc<Shared>, partition: i32) -> Runner {
        let state = shared.partition_state(partition);
        Runner {
            host,
            shared,
            partition,
            state,
            producer: None,
            reader: None,
            instance: None,
            limits_seen: u64::MAX,
            inputs: InputBatch::new(partition),
        }
    }

    fn name(&self) -> &str {
        &self.shared.spec.name
    }

    fn ensure_instance(&mut self) -> Result<&mut TransformInstance, PluginError> {
        // Between batches: an instance on baseline code moves to the optimized code once it exists
        // (a new instance, so the guest's `init` runs again, as after a poisoned call).
        if self.instance.as_ref().is_some_and(TransformInstance::superseded) {
            self.instance = None;
            tracing::info!(transform = self.name(), partition = self.partition, "moving to the optimized code");
        }
        if self.instance.as_ref().is_some_and(|i| i.poisoned().is_none()) {
            let version = self.shared.limits_version.load(Ordering::Acquire);
            if version != self.limits_seen {
                let limits = *self.shared.limits.lock();
                if let Some(instance) = self.instance.as_mut() {
                    instance.set_limits(limits)?;
                }
                self.limits_seen = version;
            }
        } else {
            let spec = &self.shared.spec;
            let mut config = InstanceConfig::new(&spec.name);
            config.config = spec.config.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            self.limits_seen = self.shared.limits_version.load(Ordering::Acquire);
            config.limits = *self.shared.limits.lock();
            config.log_sink = Arc::clone(&self.shared.logs) as Arc<dyn sluice_wasm::LogSink>;
            self.instance = Some(self.shared.module.instantiate(config, spec.output_topics.clone())?);
        }
        self.instance.as_mut().ok_or_else(|| PluginError::Engine("no instance".into()))
    }

    /// One call of the module on `inputs`; a poisoned instance is dropped so the next call gets a
    /// fresh one.
    fn call(&mut self, inputs: InputSlice<'_>) -> Result<Vec<Output>, PluginError> {
        let started = Instant::now();
        let outcome = self.ensure_instance().and_then(|instance| instance.process_batch(inputs));
        self.shared.metrics.process_seconds.observe(started.elapsed().as_secs_f64());
        if let Err(error) = &outcome {
            self.shared.metrics.error(error_kind(error)).inc();
            if self.instance.as_ref().is_none_or(|i| i.poisoned().is_some()) {
                self.instance = None;
            }
        }
        outcome
    }

    fn producer(&mut self) -> Result<&mut TransactionalProducer, RuntimeError> {
        self.producer.as_mut().ok_or_else(|| RuntimeError::Invalid("the runner has no producer".into()))
    }

    fn seek(&mut self, offset: i64) {
        if let Some(reader) = self.reader.as_mut() {
            reader.seek(offset);
        }
    }

    fn failed(&mut self, error: &dyn std::fmt::Display) -> Step {
        let position = self.state.position.load(Ordering::Acquire);
        let message = format!("{error} (input {}-{} at offset {position})", self.shared.spec.input_topic, self.partition);
        self.shared.logs.push(LogLevel::Error, &format!("stopped: {message}"));
        Step::Failed(message)
    }

    fn partition_count(&self, topic: &str) -> Result<i32, RuntimeError> {
        Ok(self.host.topic(topic).ok_or_else(|| HostError::UnknownTopic(topic.to_string()))?.partitions.max(1))
    }

    /// A stored input batch that cannot be decoded: stop, or under the dead-letter policy record it
    /// (its offsets and the reason, no payload) and move past it. Retrying cannot help.
    fn undecodable(&mut self, error: PluginError, offset: i64, next: i64) -> Result<Step, RuntimeError> {
        let OnFailure::DeadLetter { topic, .. } = self.shared.spec.policy().on_failure else {
            return Ok(self.failed(&error));
        };
        let spec = &self.shared.spec;
        let mut headers = policy::context_headers("transform", &spec.name, &spec.input_topic, self.partition, offset, &error.to_string());
        headers.push(("sluice.source.next_offset".into(), Some(Bytes::from(next.to_string()))));
        let record = ProducerRecord { key: None, value: None, headers, timestamp_ms: -1 };
        let partition = self.partition % self.partition_count(&topic)?;
        let (group, input) = (spec.group(), spec.input_topic.clone());
        let own = self.partition;
        let producer = self.producer()?;
        producer.send(&topic, partition, &[record])?;
        producer.send_offsets(&group, &[(input, own, next)])?;
        producer.commit()?;
        tracing::warn!(transform = self.name(), partition = self.partition, offset, %error, "undecodable input batch recorded in the dead-letter topic and skipped");
        self.seek(next);
        self.state.position.store(next, Ordering::Release);
        Ok(Step::Progress)
    }

    /// Writes the outputs, the dead letters and the new input position in one transaction.
    fn commit(&mut self, inputs: &InputBatch, outcomes: Vec<Outcome<Vec<Output>>>, next: i64) -> Result<(), RuntimeError> {
        let spec = self.shared.spec.clone();
        let now = sluice_broker::host::now_ms();
        let on_failure = spec.policy().on_failure;
        // Keyed by output index (the dead-letter topic is one past the outputs) and partition: no
        // topic name is cloned per record.
        let dead_letter_index = spec.output_topics.len();
        let mut grouped = Groups::default();
        let counts: Vec<i32> = spec.output_topics.iter().map(|t| self.partition_count(t)).collect::<Result<_, _>>()?;
        let (mut written, mut dead) = (0u64, Vec::new());
        for outcome in outcomes {
            match outcome {
                Outcome::Ok(outputs) => {
                    written += outputs.len() as u64;
                    for output in outputs {
                        let index = output.output as usize;
                        let count =
                            *counts.get(index).ok_or_else(|| RuntimeError::Invalid(format!("output index {index} out of range")))?;
                        let partition = match (spec.partitioning, output.key.as_deref()) {
                            _ if count == 1 => 0,
                            (Partitioning::KeyHash, Some(key)) => sluice_protocol::partitioner::partition_for_key(key, count as usize),
                            _ => self.partition % count,
                        };
                        grouped.push((index, partition), producer_record(output, now));
                    }
                }
                Outcome::Failed { index, error } => dead.push((index, error)),
            }
        }
        if let (OnFailure::DeadLetter { topic, .. }, false) = (&on_failure, dead.is_empty()) {
            let count = self.partition_count(topic)?;
            for (index, message) in &dead {
                let input = inputs.record(*index);
                let partition = match input.key.as_deref() {
                    Some(key) => sluice_protocol::partitioner::partition_for_key(key, count as usize),
                    None => self.partition % count,
                };
                grouped.push((dead_letter_index, partition), dead_letter(&spec, self.partition, &input, message));
            }
            tracing::warn!(transform = spec.name, partition = self.partition, records = dead.len(), topic, error = %dead[0].1, "records sent to the dead-letter topic");
            self.shared.logs.push(LogLevel::Warn, &format!("{} records sent to {topic}: {}", dead.len(), dead[0].1));
        }
        let own = self.partition;
        let producer = self.producer()?;
        for ((index, partition), records) in grouped.sorted() {
            let topic = match (spec.output_topics.get(index), &on_failure) {
                (Some(topic), _) => topic,
                (None, OnFailure::DeadLetter { topic, .. }) => topic,
                (None, _) => return Err(RuntimeError::Invalid(format!("output index {index} out of range"))),
            };
            producer.send(topic, partition, &records)?;
        }
        producer.send_offsets(&spec.group(), &[(spec.input_topic.clone(), own, next)])?;
        producer.commit()?;
        let dead_count = dead.len() as u64;
        self.state.position.store(next, Ordering::Release);
        self.state.records_in.fetch_add(inputs.len() as u64, Ordering::Relaxed);
        self.state.records_out.fetch_add(written, Ordering::Relaxed);
        self.state.dead_lettered.fetch_add(dead_count, Ordering::Relaxed);
        self.shared.metrics.records_in.inc_by(inputs.len() as u64);
        self.shared.metrics.records_out.inc_by(written);
        self.shared.metrics.dead_lettered.inc_by(dead_count);
        Ok(())
    }
}

impl Task for Runner {
    /// Initialises the transactional producer (fencing any predecessor) and the reader at the
    /// committed position, or at the deployment's start position when none is committed.
    fn start(&mut self, control: &TaskControl) -> Result<(), RuntimeError> {
        let spec = &self.shared.spec;
        self.host = control.host(&self.host);
        let host = &self.host;
        let mut producer = host.producer(&spec.transactional_id(self.partition), TXN_TIMEOUT_MS)?;
        let position = match host.committed_offset(&spec.group(), &spec.input_topic, self.partition)? {
            Some(committed) => committed,
            None => {
                // First start: pin the start position (`--from latest` or a timestamp resolves to an
                // offset now), so a restart before the first batch does not resolve it again and skip
                // the records that arrived in between.
                let start = host.resolve_start(&spec.input_topic, self.partition, spec.start_position())?;
                producer.send_offsets(&spec.group(), &[(spec.input_topic.clone(), self.partition, start)])?;
                producer.commit()?;
                start
            }
        };
        self.reader = Some(host.reader(&spec.input_topic, self.partition, position)?);
        self.state.position.store(position, Ordering::Release);
        self.producer = Some(producer);
        Ok(())
    }

    fn step(&mut self, control: &TaskControl) -> Result<Step, RuntimeError> {
        let reader = self.reader.as_mut().ok_or_else(|| RuntimeError::Invalid("the runner has no reader".into()))?;
        let position = reader.position();
        let mut inputs = std::mem::take(&mut self.inputs);
        inputs.clear();
        let read = reader.visit_batch(self.shared.spec.batch_records(), |record| {
            inputs.push(record.key, record.value, record.headers(), record.timestamp_ms, record.offset);
        });
        let step = self.transform(&inputs, position, read, control);
        self.inputs = inputs;
        if let Some(reader) = &self.reader {
            self.state.last_stable.store(reader.last_stable_offset(), Ordering::Release);
        }
        step
    }

    fn reset(&mut self) {
        if let Some(producer) = self.producer.as_mut() {
            let _ = producer.abort();
        }
        self.producer = None;
        self.reader = None;
    }
}

impl Runner {
    /// The rest of a step, on the batch just read into `inputs`.
    fn transform(
        &mut self,
        inputs: &InputBatch,
        position: i64,
        read: Result<Visited, HostError>,
        control: &TaskControl,
    ) -> Result<Step, RuntimeError> {
        let reader = self.reader.as_mut().ok_or_else(|| RuntimeError::Invalid("the runner has no reader".into()))?;
        let lag = reader.lag();
        let batch = match read {
            Ok(batch) => batch,
            Err(HostError::OffsetOutOfRange { log_start, .. }) => {
                tracing::warn!(
                    transform = self.name(),
                    partition = self.partition,
                    position,
                    log_start,
                    "input position was deleted by retention; skipping to the log start"
                );
                self.seek(log_start);
                self.state.position.store(log_start, Ordering::Release);
                return Ok(Step::Progress);
            }
            Err(HostError::UndecodableBatch { offset, next_offset, reason, .. }) => {
                let error = PluginError::GuestError {
                    world: World::Transform,
                    message: format!("input batch at offset {offset} cannot be decoded: {reason}"),
                    record_index: None,
                };
                self.seek(position);
                return self.undecodable(error, offset, next_offset);
            }
            Err(error) => return Err(error.into()),
        };
        self.shared.metrics.lag(self.partition).set(lag);
        if inputs.is_empty() {
            if batch.next_offset == position {
                if let Some(reader) = self.reader.as_mut() {
                    reader.wait_for_records(IDLE_WAIT);
                }
                return Ok(Step::Idle);
            }
            // Only markers or aborted records: skip them (progress is committed with the next batch).
            self.state.position.store(batch.next_offset, Ordering::Release);
            return Ok(Step::Progress);
        }
        let verdict = policy::apply(&self.shared.spec.policy(), inputs.len(), control, |range| self.call(inputs.slice(range)));
        let step = match verdict {
            Verdict::Done(outcomes) => self.commit(inputs, outcomes, batch.next_offset).map(|()| Step::Progress),
            Verdict::Stop(error) => Ok(self.failed(&error)),
            Verdict::Interrupted => Ok(Step::Idle),
        };
        if self.state.position.load(Ordering::Acquire) != batch.next_offset {
            // Not committed (an error, a stop, an interruption): read it again next time.
            self.seek(position);
        }
        step
    }
}

/// Output records by (output index, partition), in the order each group was first written to.
/// Consecutive records nearly always share a group (one output, one partition), so the last group
/// is tried first: no map lookup per record.
#[derive(Default)]
struct Groups {
    groups: Vec<((usize, i32), Vec<ProducerRecord>)>,
    last: usize,
}

impl Groups {
    fn push(&mut self, group: (usize, i32), record: ProducerRecord) {
        if self.groups.get(self.last).is_none_or(|(key, _)| *key != group) {
            self.last = match self.groups.iter().position(|(key, _)| *key == group) {
                Some(idx) => idx,
                None => {
                    self.groups.push((group, Vec::new()));
                    self.groups.len() - 1
                }
            };
        }
        self.groups[self.last].1.push(record);
    }

    /// The groups by output index, then partition (the order transactions add partitions in).
    fn sorted(mut self) -> impl Iterator<Item = ((usize, i32), Vec<ProducerRecord>)> {
        self.groups.sort_by_key(|(key, _)| *key);
        self.groups.into_iter()
    }
}

/// The input record as it was, with its original headers, plus the context headers.
fn dead_letter(spec: &TransformSpec, partition: i32, input: &InputRecord, message: &str) -> ProducerRecord {
    let mut headers: Vec<(String, Option<Bytes>)> =
        input.headers.iter().map(|h| (h.key.clone(), Some(Bytes::from(h.value.clone())))).collect();
    headers.extend(policy::context_headers("transform", &spec.name, &spec.input_topic, partition, input.offset, message));
    ProducerRecord {
        key: input.key.clone().map(Bytes::from),
        value: input.value.clone().map(Bytes::from),
        headers,
        timestamp_ms: input.timestamp_ms,
    }
}

fn producer_record(output: Output, now: i64) -> ProducerRecord {
    ProducerRecord {
        key: output.key,
        value: output.value,
        headers: output.headers.into_iter().map(|(key, value)| (key, Some(value))).collect(),
        timestamp_ms: if output.timestamp_ms >= 0 { output.timestamp_ms } else { now },
    }
}

fn error_kind(error: &PluginError) -> &'static str {
    match error {
        PluginError::GuestError { .. } => "guest_error",
        PluginError::Trap(_) => "trap",
        PluginError::CpuTimeout { .. } => "cpu_timeout",
        PluginError::OutOfMemory { .. } => "out_of_memory",
        PluginError::MalformedOutput(_) => "malformed_output",
        PluginError::InitFailed(_) => "init_failed",
        PluginError::Watchdog { .. } => "watchdog",
        _ => "other",
    }
}
