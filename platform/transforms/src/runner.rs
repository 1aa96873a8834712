//! One runner per input partition of a deployment: a thread of its own (Wasm calls are synchronous
//! and CPU-bound) that loops read → process → write-and-commit.
//!
//! Exactly once: each batch's output records and the input position after the batch are written in
//! one transaction of the partition's transactional producer (`__sluice-transform-<name>-<p>`), the
//! same mechanism Kafka clients use. On (re)start the runner initialises that producer, which aborts
//! whatever transaction a crashed predecessor left open, then reads the committed position from the
//! transform's group and continues from there. Input is read read_committed (the host's committed
//! reader), so aborted input records are never transformed. Per-key order holds: one runner per
//! input partition, in order.
//!
//! A failing batch goes through the deployment's error policy. With the dead-letter policy only the
//! records that fail go to the dead-letter topic: the guest may say which record failed; otherwise
//! the runner bisects the batch ([`crate::isolate`]) and the rest of the batch is transformed and
//! committed in the same transaction as the dead letters.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use sluice_broker::host::{CommittedReader, ConsumedRecord, Host, HostError, ProducerRecord, StartPosition, TransactionalProducer};
use sluice_wasm::{Header, InputRecord, Instance, InstanceConfig, Limits, Module, OutputRecord, TransformError};

use crate::isolate::{self, Outcome};
use crate::metrics::TransformMetrics;
use crate::spec::{ErrorPolicy, Partitioning, StartFrom, TransformSpec};

/// How long an idle runner waits for new input before checking its flags again.
const IDLE_WAIT: Duration = Duration::from_millis(200);
/// Transaction timeout of the runners' producers: a crashed runner's open transaction is aborted by
/// its successor's init anyway; this only bounds how long one can hold read_committed readers back.
const TXN_TIMEOUT_MS: i32 = 60_000;
/// Backoff after an infrastructure error (not the module's): storage, fencing races.
const INFRA_BACKOFF: Duration = Duration::from_millis(500);
/// Longest backoff of the retry policy.
const RETRY_BACKOFF_CAP: Duration = Duration::from_secs(60);

/// Where one partition's runner stands, for status and lag.
#[derive(Debug, Default)]
pub struct PartitionState {
    /// Next input offset to transform.
    pub position: AtomicI64,
    /// Set when the module failed and the policy stopped this partition.
    pub failure: Mutex<Option<String>>,
    pub records_in: AtomicU64,
    pub records_out: AtomicU64,
    pub dead_lettered: AtomicU64,
}

/// What the runners of one deployment share with the manager and the API.
pub struct Shared {
    pub spec: TransformSpec,
    pub module: Module,
    pub version: u64,
    pub paused: AtomicBool,
    pub stop: AtomicBool,
    pub limits: Mutex<Limits>,
    /// Bumped on every limits change; runners apply the new limits before their next call.
    pub limits_version: AtomicU64,
    pub partitions: Vec<Arc<PartitionState>>,
    pub metrics: TransformMetrics,
    pub logs: Arc<crate::logs::LogBuffer>,
}

pub fn spawn(host: Host, shared: Arc<Shared>, partition: i32) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name(format!("transform-{}-{partition}", shared.spec.name)).spawn(move || {
        let _runtime = host.runtime().enter();
        let mut runner = Runner { host, shared, partition, producer: None, reader: None, instance: None, limits_seen: u64::MAX };
        runner.run();
    })
}

struct Runner {
    host: Host,
    shared: Arc<Shared>,
    partition: i32,
    producer: Option<TransactionalProducer>,
    reader: Option<CommittedReader>,
    instance: Option<Instance>,
    limits_seen: u64,
}

/// What one failing batch's records become under the dead-letter policy.
struct Split {
    outputs: Vec<OutputRecord>,
    dead: Vec<(usize, String)>,
}

impl Runner {
    fn state(&self) -> &PartitionState {
        &self.shared.partitions[self.partition as usize]
    }

    fn name(&self) -> &str {
        &self.shared.spec.name
    }

    fn run(&mut self) {
        tracing::info!(transform = self.name(), partition = self.partition, version = self.shared.version, "transform runner started");
        while !self.shared.stop.load(Ordering::Acquire) {
            if self.shared.paused.load(Ordering::Acquire) || self.state().failure.lock().is_some() {
                // Even paused from the start, pin the start position now (see `ensure_producer`).
                if self.producer.is_none()
                    && let Err(error) = self.ensure_producer()
                {
                    tracing::warn!(transform = self.name(), partition = self.partition, %error, "cannot initialise the transform's producer; retrying");
                }
                std::thread::sleep(IDLE_WAIT);
                continue;
            }
            if let Err(error) = self.step() {
                tracing::warn!(transform = self.name(), partition = self.partition, %error, "transform runner step failed; retrying");
                self.abort_quietly();
                // Start over from the committed position with a fresh producer (which fences any
                // zombie and aborts what was left open).
                self.producer = None;
                self.reader = None;
                std::thread::sleep(INFRA_BACKOFF);
            }
        }
        self.abort_quietly();
        tracing::info!(transform = self.name(), partition = self.partition, "transform runner stopped");
    }

    fn abort_quietly(&mut self) {
        if let Some(producer) = self.producer.as_mut() {
            let _ = producer.abort();
        }
    }

    /// Initialises the transactional producer (fencing any predecessor) and the reader at the
    /// committed position, or at the deployment's start position when none is committed.
    fn ensure_producer(&mut self) -> Result<(), HostError> {
        if self.producer.is_some() && self.reader.is_some() {
            return Ok(());
        }
        let spec = &self.shared.spec;
        let mut producer = self.host.producer(&spec.transactional_id(self.partition), TXN_TIMEOUT_MS)?;
        let position = match self.host.committed_offset(&spec.group(), &spec.input_topic, self.partition) {
            Some(committed) => committed,
            None => {
                // First start: pin the start position (`--from latest` or a timestamp resolves to an
                // offset now), so a restart before the first batch does not resolve it again and skip
                // the records that arrived in between.
                let start = self.host.resolve_start(&spec.input_topic, self.partition, start_position(spec.from))?;
                producer.send_offsets(&spec.group(), &[(spec.input_topic.clone(), self.partition, start)])?;
                producer.commit()?;
                start
            }
        };
        self.reader = Some(self.host.reader(&spec.input_topic, self.partition, position)?);
        self.state().position.store(position, Ordering::Release);
        self.producer = Some(producer);
        Ok(())
    }

    fn ensure_instance(&mut self) -> Result<&mut Instance, TransformError> {
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
            let mut config = InstanceConfig::new(&spec.name, spec.output_topics.clone());
            config.config = spec.config.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            self.limits_seen = self.shared.limits_version.load(Ordering::Acquire);
            config.limits = *self.shared.limits.lock();
            config.log_sink = Arc::clone(&self.shared.logs) as Arc<dyn sluice_wasm::LogSink>;
            self.instance = Some(self.shared.module.instantiate(config)?);
        }
        self.instance.as_mut().ok_or_else(|| TransformError::Engine("no instance".into()))
    }

    /// One call of the module on `inputs`; a poisoned instance is dropped so the next call gets a
    /// fresh one.
    fn call(&mut self, inputs: &[InputRecord]) -> Result<Vec<OutputRecord>, TransformError> {
        let started = Instant::now();
        let outcome = self.ensure_instance().and_then(|instance| instance.process(inputs));
        self.shared.metrics.process_seconds.observe(started.elapsed().as_secs_f64());
        if let Err(error) = &outcome {
            self.shared.metrics.error(error_kind(error)).inc();
            if self.instance.as_ref().is_none_or(|i| i.poisoned().is_some()) {
                self.instance = None;
            }
        }
        outcome
    }

    /// One read → process → commit round, or a bounded wait when there is nothing to read.
    fn step(&mut self) -> Result<(), HostError> {
        self.ensure_producer()?;
        let reader = self.reader.as_mut().ok_or_else(|| HostError::InvalidArgument("no reader".into()))?;
        let position = reader.position();
        let read = reader.next_batch(self.shared.spec.batch_records());
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
                self.state().position.store(log_start, Ordering::Release);
                return Ok(());
            }
            Err(HostError::UndecodableBatch { offset, next_offset, reason, .. }) => {
                let error = TransformError::GuestError(format!("input batch at offset {offset} cannot be decoded: {reason}"));
                self.seek(position);
                return self.undecodable(&error, offset, next_offset);
            }
            Err(error) => return Err(error),
        };
        self.shared.metrics.lag(self.partition).set(lag);
        if batch.records.is_empty() {
            if batch.next_offset == position {
                if let Some(reader) = self.reader.as_ref() {
                    reader.wait_for_records(IDLE_WAIT);
                }
            } else {
                // Only markers or aborted records: skip them (progress is committed with the next batch).
                self.state().position.store(batch.next_offset, Ordering::Release);
            }
            return Ok(());
        }
        let inputs: Vec<InputRecord> = batch.records.into_iter().map(|r| input_record(r, self.partition)).collect();
        let result = self.process_batch(&inputs, batch.next_offset);
        if self.state().position.load(Ordering::Acquire) != batch.next_offset {
            // Not committed (an error, or the policy stopped the partition): read it again next time.
            self.seek(position);
        }
        result
    }

    fn seek(&mut self, offset: i64) {
        if let Some(reader) = self.reader.as_mut() {
            reader.seek(offset);
        }
    }

    fn process_batch(&mut self, inputs: &[InputRecord], next: i64) -> Result<(), HostError> {
        let mut attempt = 0u32;
        loop {
            let error = match self.call(inputs) {
                Ok(outputs) => return self.commit(inputs, Split { outputs, dead: Vec::new() }, next),
                Err(error) => error,
            };
            match self.shared.spec.error_policy.clone() {
                ErrorPolicy::Stop => return self.fail(&error),
                ErrorPolicy::DeadLetter(_) => {
                    let split = self.isolate(inputs, error);
                    return self.commit(inputs, split, next);
                }
                ErrorPolicy::Retry { max_attempts, backoff_ms } => {
                    attempt += 1;
                    if attempt >= max_attempts {
                        return self.fail(&error);
                    }
                    let backoff = Duration::from_millis(backoff_ms.saturating_mul(1 << attempt.min(16))).min(RETRY_BACKOFF_CAP);
                    tracing::warn!(transform = self.name(), partition = self.partition, attempt, %error, backoff_ms = backoff.as_millis() as u64, "transform failed on a batch; retrying");
                    std::thread::sleep(backoff);
                    if self.shared.stop.load(Ordering::Acquire) {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Finds the records of a failing batch that fail on their own: the rest is transformed.
    fn isolate(&mut self, inputs: &[InputRecord], first_error: TransformError) -> Split {
        let mut split = Split { outputs: Vec::new(), dead: Vec::new() };
        let outcomes = isolate::isolate(inputs.len(), first_error, |range| self.call(&inputs[range]));
        for outcome in outcomes {
            match outcome {
                Outcome::Ok(outputs) => split.outputs.extend(outputs),
                Outcome::Failed { index, error } => split.dead.push((index, error.to_string())),
            }
        }
        split
    }

    fn fail(&mut self, error: &TransformError) -> Result<(), HostError> {
        let position = self.state().position.load(Ordering::Acquire);
        let message = format!("{error} (input {}-{} at offset {position})", self.shared.spec.input_topic, self.partition);
        tracing::error!(transform = self.name(), partition = self.partition, error = %message, "transform stopped");
        self.shared.logs.push(sluice_wasm::LogLevel::Error, &format!("stopped: {message}"));
        *self.state().failure.lock() = Some(message);
        Ok(())
    }

    /// A stored input batch that cannot be decoded: stop, or under the dead-letter policy record it
    /// (its offsets and the reason, no payload) and move past it. Retrying cannot help.
    fn undecodable(&mut self, error: &TransformError, offset: i64, next: i64) -> Result<(), HostError> {
        let ErrorPolicy::DeadLetter(topic) = self.shared.spec.error_policy.clone() else {
            return self.fail(error);
        };
        let spec = &self.shared.spec;
        let mut headers = context_headers(spec, self.partition, offset, &error.to_string());
        headers.push(("sluice.source.next_offset".into(), Some(Bytes::from(next.to_string()))));
        let record = ProducerRecord { key: None, value: None, headers, timestamp_ms: -1 };
        let partition = self.partition % self.partition_count(&topic)?;
        let producer = self.producer.as_mut().ok_or_else(|| HostError::InvalidArgument("no producer".into()))?;
        producer.send(&topic, partition, &[record])?;
        producer.send_offsets(&spec.group(), &[(spec.input_topic.clone(), self.partition, next)])?;
        producer.commit()?;
        tracing::warn!(transform = self.name(), partition = self.partition, offset, %error, "undecodable input batch recorded in the dead-letter topic and skipped");
        self.seek(next);
        self.state().position.store(next, Ordering::Release);
        Ok(())
    }

    fn partition_count(&self, topic: &str) -> Result<i32, HostError> {
        Ok(self.host.topic(topic).ok_or_else(|| HostError::UnknownTopic(topic.to_string()))?.partitions.max(1))
    }

    /// Writes the outputs, the dead letters and the new input position in one transaction.
    fn commit(&mut self, inputs: &[InputRecord], split: Split, next: i64) -> Result<(), HostError> {
        let spec = &self.shared.spec;
        let now = sluice_broker::host::now_ms();
        let mut grouped: BTreeMap<(String, i32), Vec<ProducerRecord>> = BTreeMap::new();
        let mut counts = Vec::with_capacity(spec.output_topics.len());
        for topic in &spec.output_topics {
            counts.push(self.partition_count(topic)?);
        }
        let written = split.outputs.len() as u64;
        for output in split.outputs {
            let index = output.output as usize;
            let count = *counts.get(index).ok_or_else(|| HostError::InvalidArgument(format!("output index {index} out of range")))?;
            let partition = match (spec.partitioning, output.key.as_deref()) {
                (Partitioning::KeyHash, Some(key)) => sluice_protocol::partitioner::partition_for_key(key, count as usize),
                _ => self.partition % count,
            };
            grouped.entry((spec.output_topics[index].clone(), partition)).or_default().push(producer_record(output, now));
        }
        let dead_count = split.dead.len() as u64;
        if let (ErrorPolicy::DeadLetter(topic), false) = (&spec.error_policy, split.dead.is_empty()) {
            let count = self.partition_count(topic)?;
            for (index, message) in &split.dead {
                let input = &inputs[*index];
                let partition = match input.key.as_deref() {
                    Some(key) => sluice_protocol::partitioner::partition_for_key(key, count as usize),
                    None => self.partition % count,
                };
                grouped.entry((topic.clone(), partition)).or_default().push(dead_letter(spec, self.partition, input, message));
            }
            let (_, first) = &split.dead[0];
            tracing::warn!(transform = self.name(), partition = self.partition, records = dead_count, topic, error = %first, "records sent to the dead-letter topic");
            self.shared.logs.push(sluice_wasm::LogLevel::Warn, &format!("{dead_count} records sent to {topic}: {first}"));
        }
        let producer = self.producer.as_mut().ok_or_else(|| HostError::InvalidArgument("no producer".into()))?;
        let result = (|| -> Result<(), HostError> {
            for ((topic, partition), records) in &grouped {
                producer.send(topic, *partition, records)?;
            }
            producer.send_offsets(&spec.group(), &[(spec.input_topic.clone(), self.partition, next)])?;
            producer.commit()
        })();
        if let Err(error) = result {
            if error.is_fenced() {
                // Another runner of this partition (a redeploy) took over: stop writing.
                tracing::warn!(transform = self.name(), partition = self.partition, %error, "fenced by a newer runner");
                self.producer = None;
            }
            return Err(error);
        }
        let state = self.state();
        state.position.store(next, Ordering::Release);
        state.records_in.fetch_add(inputs.len() as u64, Ordering::Relaxed);
        state.records_out.fetch_add(written, Ordering::Relaxed);
        state.dead_lettered.fetch_add(dead_count, Ordering::Relaxed);
        self.shared.metrics.records_in.inc_by(inputs.len() as u64);
        self.shared.metrics.records_out.inc_by(written);
        self.shared.metrics.dead_lettered.inc_by(dead_count);
        Ok(())
    }
}

/// Headers that say where a dead letter came from and why.
fn context_headers(spec: &TransformSpec, partition: i32, offset: i64, message: &str) -> Vec<(String, Option<Bytes>)> {
    vec![
        ("sluice.error".into(), Some(Bytes::from(message.to_string()))),
        ("sluice.transform".into(), Some(Bytes::from(spec.name.clone()))),
        ("sluice.source.topic".into(), Some(Bytes::from(spec.input_topic.clone()))),
        ("sluice.source.partition".into(), Some(Bytes::from(partition.to_string()))),
        ("sluice.source.offset".into(), Some(Bytes::from(offset.to_string()))),
    ]
}

/// The input record as it was, with its original headers, plus the context headers.
fn dead_letter(spec: &TransformSpec, partition: i32, input: &InputRecord, message: &str) -> ProducerRecord {
    let mut headers: Vec<(String, Option<Bytes>)> =
        input.headers.iter().map(|h| (h.key.clone(), Some(Bytes::from(h.value.clone())))).collect();
    headers.extend(context_headers(spec, partition, input.offset, message));
    ProducerRecord {
        key: input.key.clone().map(Bytes::from),
        value: input.value.clone().map(Bytes::from),
        headers,
        timestamp_ms: input.timestamp_ms,
    }
}

fn input_record(record: ConsumedRecord, partition: i32) -> InputRecord {
    InputRecord {
        key: record.key.map(|k| k.to_vec()),
        value: record.value.map(|v| v.to_vec()),
        headers: record
            .headers
            .into_iter()
            .map(|(key, value)| Header { key, value: value.map(|v| v.to_vec()).unwrap_or_default() })
            .collect(),
        timestamp_ms: record.timestamp_ms,
        partition,
        offset: record.offset,
    }
}

fn producer_record(output: OutputRecord, now: i64) -> ProducerRecord {
    ProducerRecord {
        key: output.key.map(Bytes::from),
        value: output.value.map(Bytes::from),
        headers: output.headers.into_iter().map(|h| (h.key, Some(Bytes::from(h.value)))).collect(),
        timestamp_ms: if output.timestamp_ms >= 0 { output.timestamp_ms } else { now },
    }
}

fn error_kind(error: &TransformError) -> &'static str {
    match error {
        TransformError::GuestError(_) => "guest_error",
        TransformError::Trap(_) => "trap",
        TransformError::CpuTimeout { .. } => "cpu_timeout",
        TransformError::OutOfMemory { .. } => "out_of_memory",
        TransformError::MalformedOutput(_) => "malformed_output",
        TransformError::InitFailed(_) => "init_failed",
        _ => "other",
    }
}

fn start_position(from: StartFrom) -> StartPosition {
    match from {
        StartFrom::Earliest => StartPosition::Earliest,
        StartFrom::Latest => StartPosition::Latest,
        StartFrom::Offset(offset) => StartPosition::Offset(offset),
        StartFrom::Timestamp(ts) => StartPosition::Timestamp(ts),
    }
}
