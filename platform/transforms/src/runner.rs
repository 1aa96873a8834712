//! One runner per input partition of a deployment: a thread of its own (Wasm calls are synchronous
//! and CPU-bound) that loops read → process → write-and-commit.
//!
//! Exactly once: each batch's output records and the input position after the batch are written in
//! one transaction of the partition's transactional producer (`__sluice-transform-<name>-<p>`), the
//! same mechanism Kafka clients use. On (re)start the runner initialises that producer, which aborts
//! whatever transaction a crashed predecessor left open, then reads the committed position from the
//! transform's group and continues from there. Input is read read_committed, so aborted input
//! records are never transformed. Per-key order holds: one runner per input partition, in order.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::records::RecordBatchDecoder;
use parking_lot::Mutex;
use sluice_broker::Broker;
use sluice_broker::topic::Partition;
use sluice_broker::txn_writer::{OutRecord, TransactionalProducer, TxnError};
use sluice_wasm::{Header, InputRecord, InstanceConfig, Limits, OutputRecord, PluginError, TransformInstance, TransformModule};

use crate::metrics::TransformMetrics;
use crate::spec::{ErrorPolicy, Partitioning, StartFrom, TransformSpec};

/// Bytes read from the input partition per step (whole batches; at least one).
const READ_BYTES_MAX: usize = 1 << 20;
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
    pub module: TransformModule,
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

/// One decoded input record with where it came from.
struct Input {
    record: InputRecord,
}

pub fn spawn(
    broker: Arc<Broker>,
    shared: Arc<Shared>,
    partition: i32,
    handle: tokio::runtime::Handle,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name(format!("transform-{}-{partition}", shared.spec.name)).spawn(move || {
        let _runtime = handle.enter();
        let mut runner = Runner { broker, shared, partition, handle, writer: None, instance: None, limits_seen: u64::MAX };
        runner.run();
    })
}

struct Runner {
    broker: Arc<Broker>,
    shared: Arc<Shared>,
    partition: i32,
    handle: tokio::runtime::Handle,
    writer: Option<TransactionalProducer>,
    instance: Option<TransformInstance>,
    limits_seen: u64,
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
                // Even paused from the start, pin the start position now (see `ensure_writer`).
                if self.writer.is_none()
                    && let Err(error) = self.ensure_writer()
                {
                    tracing::warn!(transform = self.name(), partition = self.partition, %error, "cannot initialise the transform's producer; retrying");
                }
                std::thread::sleep(IDLE_WAIT);
                continue;
            }
            if let Err(error) = self.step() {
                tracing::warn!(transform = self.name(), partition = self.partition, %error, "transform runner step failed; retrying");
                self.abort_quietly();
                self.writer = None;
                std::thread::sleep(INFRA_BACKOFF);
            }
        }
        self.abort_quietly();
        tracing::info!(transform = self.name(), partition = self.partition, "transform runner stopped");
    }

    fn abort_quietly(&mut self) {
        if let Some(writer) = self.writer.as_mut() {
            let _ = writer.abort();
        }
    }

    fn input_partition(&self) -> Result<Arc<Partition>, String> {
        self.broker.partition(&self.shared.spec.input_topic, self.partition).map_err(|e| e.to_string())
    }

    /// Initialises the transactional producer (fencing any predecessor) and loads the committed
    /// position, or the deployment's start position when none is committed.
    fn ensure_writer(&mut self) -> Result<(), String> {
        if self.writer.is_some() {
            return Ok(());
        }
        let spec = &self.shared.spec;
        let mut writer = TransactionalProducer::init(Arc::clone(&self.broker), &spec.transactional_id(self.partition), TXN_TIMEOUT_MS)
            .map_err(|e| e.to_string())?;
        let input = self.input_partition()?;
        let position = match self.broker.offsets.get(&spec.group(), &spec.input_topic, self.partition) {
            Some(committed) => committed.offset,
            None => {
                // First start: pin the start position (`--from latest` or a timestamp resolves to an
                // offset now), so a restart before the first batch does not resolve it again and skip
                // the records that arrived in between.
                let start = start_position(&input, spec.from)?;
                writer
                    .send_offsets(&spec.group(), &[(spec.input_topic.clone(), self.partition, start)])
                    .and_then(|()| writer.commit())
                    .map_err(|e| e.to_string())?;
                start
            }
        };
        self.state().position.store(position, Ordering::Release);
        self.writer = Some(writer);
        Ok(())
    }

    fn ensure_instance(&mut self) -> Result<(), PluginError> {
        if self.instance.as_ref().is_some_and(|i| i.poisoned().is_none()) {
            let version = self.shared.limits_version.load(Ordering::Acquire);
            if version != self.limits_seen {
                let limits = *self.shared.limits.lock();
                if let Some(instance) = self.instance.as_mut() {
                    instance.set_limits(limits)?;
                }
                self.limits_seen = version;
            }
            return Ok(());
        }
        let spec = &self.shared.spec;
        let mut config = InstanceConfig::new(&spec.name);
        config.config = spec.config.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        self.limits_seen = self.shared.limits_version.load(Ordering::Acquire);
        config.limits = *self.shared.limits.lock();
        config.log_sink = Arc::clone(&self.shared.logs) as Arc<dyn sluice_wasm::LogSink>;
        self.instance = Some(self.shared.module.instantiate(config, spec.output_topics.clone())?);
        Ok(())
    }

    /// One read → process → commit round, or a bounded wait when there is nothing to read.
    fn step(&mut self) -> Result<(), String> {
        self.ensure_writer()?;
        let input = self.input_partition()?;
        let position = self.state().position.load(Ordering::Acquire);
        let (batch, next) = match read_batch(&input, position, self.shared.spec.batch_records()) {
            Ok(read) => read,
            Err(ReadError::OutOfRange { start }) => {
                tracing::warn!(
                    transform = self.name(),
                    partition = self.partition,
                    position,
                    start,
                    "input position was deleted by retention; skipping to the log start"
                );
                self.state().position.store(start, Ordering::Release);
                return Ok(());
            }
            Err(ReadError::Other(error)) => return Err(error),
        };
        self.shared.metrics.lag(self.partition).set(input.last_stable_offset() - position);
        if batch.is_empty() {
            if next > position {
                // Only markers or aborted records: skip them (progress is committed with the next batch).
                self.state().position.store(next, Ordering::Release);
                return Ok(());
            }
            let mut watch = input.watch_high_watermark();
            watch.borrow_and_update();
            if input.last_stable_offset() <= position {
                let _ = self.handle.block_on(async { tokio::time::timeout(IDLE_WAIT, watch.changed()).await });
            }
            return Ok(());
        }
        self.process_batch(batch, next)
    }

    fn process_batch(&mut self, batch: Vec<Input>, next: i64) -> Result<(), String> {
        let records: Vec<InputRecord> = batch.into_iter().map(|i| i.record).collect();
        let mut attempt = 0u32;
        loop {
            let started = Instant::now();
            let outcome = self.ensure_instance().and_then(|()| match self.instance.as_mut() {
                Some(instance) => instance.process(&records),
                None => Err(PluginError::Engine("no instance".into())),
            });
            self.shared.metrics.process_seconds.observe(started.elapsed().as_secs_f64());
            match outcome {
                Ok(outputs) => return self.commit(&records, outputs, next),
                Err(error) => {
                    self.shared.metrics.error(error_kind(&error)).inc();
                    if self.instance.as_ref().is_none_or(|i| i.poisoned().is_some()) {
                        self.instance = None;
                    }
                    match self.shared.spec.error_policy.clone() {
                        ErrorPolicy::Stop => return self.fail(&error),
                        ErrorPolicy::DeadLetter(topic) => return self.dead_letter(&topic, &records, &error, next),
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
        }
    }

    fn fail(&mut self, error: &PluginError) -> Result<(), String> {
        let position = self.state().position.load(Ordering::Acquire);
        let message = format!("{error} (input {}-{} at offset {position})", self.shared.spec.input_topic, self.partition);
        tracing::error!(transform = self.name(), partition = self.partition, error = %message, "transform stopped");
        self.shared.logs.push(sluice_wasm::LogLevel::Error, &format!("stopped: {message}"));
        *self.state().failure.lock() = Some(message);
        Ok(())
    }

    /// Writes the outputs and the new input position in one transaction.
    fn commit(&mut self, inputs: &[InputRecord], outputs: Vec<OutputRecord>, next: i64) -> Result<(), String> {
        let spec = &self.shared.spec;
        let now = sluice_broker::now_ms();
        let mut grouped: BTreeMap<(usize, i32), Vec<OutRecord>> = BTreeMap::new();
        let mut counts = Vec::with_capacity(spec.output_topics.len());
        for topic in &spec.output_topics {
            let topic_ref = self.broker.topic(topic).ok_or_else(|| format!("output topic '{topic}' no longer exists"))?;
            counts.push(topic_ref.partition_count().max(1));
        }
        let written = outputs.len() as u64;
        for output in outputs {
            let index = output.output as usize;
            let count = *counts.get(index).ok_or_else(|| format!("output index {index} out of range"))?;
            let partition = match (spec.partitioning, output.key.as_deref()) {
                (Partitioning::KeyHash, Some(key)) => sluice_protocol::partitioner::partition_for_key(key, count as usize),
                _ => self.partition % count,
            };
            grouped.entry((index, partition)).or_default().push(out_record(output, now));
        }
        let writer = self.writer.as_mut().ok_or("no producer")?;
        let result = (|| -> Result<(), TxnError> {
            for ((index, partition), records) in &grouped {
                writer.send(&spec.output_topics[*index], *partition, records)?;
            }
            writer.send_offsets(&spec.group(), &[(spec.input_topic.clone(), self.partition, next)])?;
            writer.commit()
        })();
        if let Err(error) = result {
            if error.is_fenced() {
                // Another runner of this partition (a redeploy) took over: stop writing.
                tracing::warn!(transform = self.name(), partition = self.partition, %error, "fenced by a newer runner");
                self.writer = None;
            }
            return Err(error.to_string());
        }
        let state = self.state();
        state.position.store(next, Ordering::Release);
        state.records_in.fetch_add(inputs.len() as u64, Ordering::Relaxed);
        state.records_out.fetch_add(written, Ordering::Relaxed);
        self.shared.metrics.records_in.inc_by(inputs.len() as u64);
        self.shared.metrics.records_out.inc_by(written);
        Ok(())
    }

    /// The dead-letter policy: the failing batch's input goes to `topic`, with the error in headers,
    /// committed together with the input position.
    fn dead_letter(&mut self, topic: &str, inputs: &[InputRecord], error: &PluginError, next: i64) -> Result<(), String> {
        let spec = &self.shared.spec;
        let count = self.broker.topic(topic).ok_or_else(|| format!("dead-letter topic '{topic}' does not exist"))?.partition_count().max(1);
        let message = error.to_string();
        let mut grouped: BTreeMap<i32, Vec<OutRecord>> = BTreeMap::new();
        for input in inputs {
            let partition = match input.key.as_deref() {
                Some(key) => sluice_protocol::partitioner::partition_for_key(key, count as usize),
                None => self.partition % count,
            };
            let mut headers: Vec<(String, Option<Bytes>)> =
                input.headers.iter().map(|h| (h.key.clone(), Some(Bytes::from(h.value.clone())))).collect();
            headers.push(("sluice.error".into(), Some(Bytes::from(message.clone()))));
            headers.push(("sluice.transform".into(), Some(Bytes::from(spec.name.clone()))));
            headers.push(("sluice.source.topic".into(), Some(Bytes::from(spec.input_topic.clone()))));
            headers.push(("sluice.source.partition".into(), Some(Bytes::from(self.partition.to_string()))));
            headers.push(("sluice.source.offset".into(), Some(Bytes::from(input.offset.to_string()))));
            grouped.entry(partition).or_default().push(OutRecord {
                key: input.key.clone().map(Bytes::from),
                value: input.value.clone().map(Bytes::from),
                headers,
                timestamp_ms: input.timestamp_ms,
            });
        }
        let writer = self.writer.as_mut().ok_or("no producer")?;
        let result = (|| -> Result<(), TxnError> {
            for (partition, records) in &grouped {
                writer.send(topic, *partition, records)?;
            }
            writer.send_offsets(&spec.group(), &[(spec.input_topic.clone(), self.partition, next)])?;
            writer.commit()
        })();
        result.map_err(|e| e.to_string())?;
        tracing::warn!(transform = self.name(), partition = self.partition, records = inputs.len(), topic, %message, "batch sent to the dead-letter topic");
        self.shared.logs.push(sluice_wasm::LogLevel::Warn, &format!("{} records sent to {topic}: {message}", inputs.len()));
        let state = self.state();
        state.position.store(next, Ordering::Release);
        state.dead_lettered.fetch_add(inputs.len() as u64, Ordering::Relaxed);
        self.shared.metrics.dead_lettered.inc_by(inputs.len() as u64);
        Ok(())
    }
}

fn out_record(output: OutputRecord, now: i64) -> OutRecord {
    OutRecord {
        key: output.key.map(Bytes::from),
        value: output.value.map(Bytes::from),
        headers: output.headers.into_iter().map(|h| (h.key, Some(Bytes::from(h.value)))).collect(),
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
        _ => "other",
    }
}

/// Where a partition's first deployment starts reading.
fn start_position(input: &Partition, from: StartFrom) -> Result<i64, String> {
    let start = input.log_start_offset();
    let end = input.last_stable_offset();
    Ok(match from {
        StartFrom::Earliest => start,
        StartFrom::Latest => end,
        StartFrom::Offset(offset) => offset.clamp(start, end),
        StartFrom::Timestamp(ts) => match input.log.read().offset_for_timestamp(ts).map_err(|e| e.to_string())? {
            Some((offset, _)) => offset.min(end),
            None => end,
        },
    })
}

enum ReadError {
    OutOfRange { start: i64 },
    Other(String),
}

/// Reads up to `max_records` committed records at or after `position`. Returns them and the offset to
/// continue from (past every batch looked at, control batches and aborted records included).
fn read_batch(input: &Partition, position: i64, max_records: usize) -> Result<(Vec<Input>, i64), ReadError> {
    let read = match input.read_isolated(position, READ_BYTES_MAX, true, true) {
        Ok(read) => read,
        Err(sluice_storage::StorageError::OffsetOutOfRange { start, .. }) if position < start => {
            return Err(ReadError::OutOfRange { start });
        }
        Err(error) => return Err(ReadError::Other(error.to_string())),
    };
    let aborted = read.aborted.unwrap_or_default();
    let mut bytes = read.read.bytes;
    if bytes.is_empty() {
        return Ok((Vec::new(), position));
    }
    let sets = RecordBatchDecoder::decode_all(&mut bytes).map_err(|e| ReadError::Other(format!("decoding input batches: {e}")))?;
    let mut out = Vec::new();
    let mut next = position;
    for record in sets.into_iter().flat_map(|s| s.records) {
        if out.len() >= max_records {
            break;
        }
        if record.offset < position {
            next = next.max(record.offset + 1);
            continue;
        }
        next = record.offset + 1;
        if record.control {
            continue;
        }
        if record.transactional
            && aborted
                .iter()
                .any(|a| a.producer_id == record.producer_id && record.offset >= a.first_offset && record.offset < a.last_offset)
        {
            continue;
        }
        out.push(Input {
            record: InputRecord {
                key: record.key.map(|k| k.to_vec()),
                value: record.value.map(|v| v.to_vec()),
                headers: record
                    .headers
                    .into_iter()
                    .map(|(k, v)| Header { key: k.to_string(), value: v.map(|v| v.to_vec()).unwrap_or_default() })
                    .collect(),
                timestamp_ms: record.timestamp,
                partition: input.index,
                offset: record.offset,
            },
        });
    }
    Ok((out, next))
}
