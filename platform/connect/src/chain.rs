//! A connector's transform chain: `transforms=a,b` with `transforms.a.type=<module>` names Wasm
//! transforms from the module registry, applied in order inside the task, as Kafka Connect applies
//! its SMTs — a source's records between `poll` and the topics, a sink's between the topics and
//! `put`. Each step is the same `transform` world a deployed transform implements, instantiated once
//! per task with its `transforms.<alias>.*` keys as config.
//!
//! Outputs: a step's output 0 is the record's own topic, named [`ORIGIN_OUTPUT`] in the list its
//! `init` gets; `transforms.<alias>.outputs` adds topics a step may route records to (a router
//! writing `orders-eu`), indices 1.. in the order listed. A source writes rerouted records to those
//! topics (created with the broker's defaults if missing, partitioned by key); a sink sees them as
//! that topic (a JDBC sink's `${topic}` table name follows it).
//!
//! Where a record came from: a sink's records are transformed one at a time, so each output keeps
//! the topic, partition and offset of the input record it came from (what `put` and dead letters
//! report, and what `pk.mode=kafka` keys on); a source's records, which carry no offsets, go through
//! in runs that share a topic and partition. An output with timestamp -1 keeps its input's
//! timestamp (for a source's run, the run's first record's; a source's "now" stays "now"). Header
//! values cross the boundary as bytes: a null header value comes back empty.
//!
//! Failures: any step's error, trap or limit fails the records given to the chain; the task's error
//! policy decides (retry, then stop, or set the failing input records aside — a sink dead-letters
//! them, a source skips and logs them, as Connect does). An instance that trapped is made again for
//! the next call. Output is bounded per batch ([`CHAIN_RECORDS_MAX`], [`CHAIN_BYTES_MAX`]) so that a
//! fan-out step cannot make one batch cost unbounded memory.

use std::sync::Arc;

use bytes::Bytes;
use sluice_runtime::isolate::Outcome;
use sluice_runtime::{ErrorPolicy, LogBuffer, TaskControl, Verdict};
use sluice_wasm::{Header, InputRecord, InstanceConfig, LogLevel, OutputRecord, PluginError, TransformInstance, TransformModule, World};

use crate::task::{ModuleError, SinkRecord, SourceRecord};

/// The name a step's `init` gets for output 0: the record's own topic.
pub const ORIGIN_OUTPUT: &str = "${topic}";
/// Most records one batch may hold after any step.
pub const CHAIN_RECORDS_MAX: usize = 100_000;
/// Most key, value and header bytes one batch may hold after any step.
pub const CHAIN_BYTES_MAX: usize = 256 << 20;
/// Most records handed to one transform call (a source's runs are cut to this size).
pub const CHAIN_CALL_RECORDS_MAX: usize = 1_000;

/// One step, resolved when the connector starts: the registry's module at that moment (a module
/// uploaded again under the same name is used from the connector's next restart).
#[derive(Clone)]
pub struct StepSpec {
    pub alias: String,
    pub module_name: String,
    pub module: TransformModule,
    pub config: Vec<(String, String)>,
    /// [`ORIGIN_OUTPUT`], then `transforms.<alias>.outputs`.
    pub outputs: Vec<String>,
}

/// A record inside the chain, with where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct ChainRecord {
    pub topic: String,
    /// A source's `None` lets the partitioner choose.
    pub partition: Option<i32>,
    /// A sink's input offset; -1 for a source's records.
    pub offset: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Option<Bytes>)>,
    pub timestamp_ms: i64,
    /// The index, in the batch given to [`Chain::apply`], of the input record this one came from
    /// (a sink's dead letters carry that record as it was read).
    pub origin: usize,
}

impl ChainRecord {
    /// Key, value and header bytes.
    pub fn bytes(&self) -> usize {
        self.key.as_ref().map_or(0, Bytes::len)
            + self.value.as_ref().map_or(0, Bytes::len)
            + self.headers.iter().map(|(k, v)| k.len() + v.as_ref().map_or(0, Bytes::len)).sum::<usize>()
    }
}

impl From<SourceRecord> for ChainRecord {
    fn from(r: SourceRecord) -> ChainRecord {
        ChainRecord {
            topic: r.topic,
            partition: r.partition,
            offset: -1,
            key: r.key,
            value: r.value,
            headers: r.headers,
            timestamp_ms: r.timestamp_ms,
            origin: 0,
        }
    }
}

impl From<ChainRecord> for SourceRecord {
    fn from(r: ChainRecord) -> SourceRecord {
        SourceRecord {
            topic: r.topic,
            partition: r.partition,
            key: r.key,
            value: r.value,
            headers: r.headers,
            timestamp_ms: r.timestamp_ms,
        }
    }
}

impl From<&SinkRecord> for ChainRecord {
    fn from(r: &SinkRecord) -> ChainRecord {
        ChainRecord {
            topic: r.topic.clone(),
            partition: Some(r.partition),
            offset: r.offset,
            key: r.key.clone(),
            value: r.value.clone(),
            headers: r.headers.clone(),
            timestamp_ms: r.timestamp_ms,
            origin: 0,
        }
    }
}

impl From<ChainRecord> for SinkRecord {
    fn from(r: ChainRecord) -> SinkRecord {
        SinkRecord {
            topic: r.topic,
            partition: r.partition.unwrap_or(0),
            offset: r.offset,
            key: r.key,
            value: r.value,
            headers: r.headers,
            timestamp_ms: r.timestamp_ms,
        }
    }
}

/// What running a batch through the chain under the error policy gave.
pub enum Applied {
    /// The outputs, and the inputs (by index) that failed on their own, to set aside.
    Done { records: Vec<ChainRecord>, failed: Vec<(usize, String)> },
    /// The policy stops the task with this error.
    Stop(PluginError),
    /// The task was paused or stopped while a retry waited: nothing was decided.
    Interrupted,
}

/// Which side of the topics the chain runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Source,
    Sink,
}

/// One task's chain: an instance per step.
pub struct Chain {
    steps: Vec<Step>,
    side: Side,
    logs: Arc<LogBuffer>,
    /// `<connector>-<task>`, naming the instances in logs.
    label: String,
}

struct Step {
    spec: StepSpec,
    instance: Option<TransformInstance>,
}

impl Chain {
    pub fn new(specs: &[StepSpec], side: Side, logs: Arc<LogBuffer>, label: String) -> Chain {
        Chain { steps: specs.iter().map(|spec| Step { spec: spec.clone(), instance: None }).collect(), side, logs, label }
    }

    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Instantiates every step (running its `init`), so that a step its config breaks fails the task
    /// when it starts; the message says which step.
    pub fn start(&mut self) -> Result<(), ModuleError> {
        for step in &mut self.steps {
            if step.instance.is_none() {
                let instance =
                    instantiate(&step.spec, &self.logs, &self.label).map_err(|e| ModuleError::fatal(step_message(&step.spec, &e)))?;
                step.instance = Some(instance);
            }
        }
        Ok(())
    }

    /// Drops every instance.
    pub fn stop(&mut self) {
        for step in &mut self.steps {
            step.instance = None;
        }
    }

    /// Runs `inputs` through the chain under `policy`: retried, then stopping or isolating the
    /// records that fail on their own (see `sluice_runtime::policy`).
    pub fn apply(&mut self, policy: &ErrorPolicy, inputs: &[ChainRecord], control: &TaskControl) -> Applied {
        // What the ranges that succeeded made, together: bounded across the policy's retries and
        // isolation as each range is. Once over, ranges are not run any more (and succeed empty, so
        // the policy ends at once) and the batch stops the task.
        let (mut records_kept, mut bytes_kept, mut over) = (0usize, 0usize, false);
        let verdict = sluice_runtime::policy::apply(policy, inputs.len(), control, |range| {
            if over {
                return Ok(Vec::new());
            }
            let out = self.run(&inputs[range])?;
            records_kept += out.len();
            bytes_kept += out.iter().map(ChainRecord::bytes).sum::<usize>();
            if records_kept > CHAIN_RECORDS_MAX || bytes_kept > CHAIN_BYTES_MAX {
                over = true;
                return Ok(Vec::new());
            }
            Ok(out)
        });
        if over {
            return Applied::Stop(PluginError::MalformedOutput(format!(
                "the transform chain made more than {CHAIN_RECORDS_MAX} records or {CHAIN_BYTES_MAX} bytes from one batch of {} records",
                inputs.len()
            )));
        }
        match verdict {
            Verdict::Done(outcomes) => {
                let mut records = Vec::with_capacity(inputs.len());
                let mut failed = Vec::new();
                for outcome in outcomes {
                    match outcome {
                        Outcome::Ok(out) => records.extend(out),
                        Outcome::Failed { index, error } => failed.push((index, error)),
                    }
                }
                Applied::Done { records, failed }
            }
            Verdict::Stop(error) => Applied::Stop(error),
            Verdict::Interrupted => Applied::Interrupted,
        }
    }

    /// Runs `records` through every step. An error fails all of them (the policy isolates which);
    /// its `record_index` is set when the first step named the failing record.
    fn run(&mut self, records: &[ChainRecord]) -> Result<Vec<ChainRecord>, PluginError> {
        let mut current: Option<Vec<ChainRecord>> = None;
        for (idx, step) in self.steps.iter_mut().enumerate() {
            let input = current.as_deref().unwrap_or(records);
            let output = step.run(input, self.side, &self.logs, &self.label).map_err(|error| chain_error(&step.spec, idx == 0, error))?;
            current = Some(output);
        }
        Ok(current.unwrap_or_else(|| records.to_vec()))
    }
}

impl Step {
    fn instance(&mut self, logs: &Arc<LogBuffer>, label: &str) -> Result<&mut TransformInstance, PluginError> {
        // Between calls: an instance on baseline code moves to the optimized code once it exists.
        if self.instance.as_ref().is_some_and(TransformInstance::superseded) {
            self.instance = None;
        }
        if self.instance.is_none() {
            self.instance = Some(instantiate(&self.spec, logs, label)?);
        }
        Ok(self.instance.as_mut().expect("made above"))
    }

    /// One step over `input`, call by call: a sink's records one at a time, a source's in runs of
    /// one topic and partition. A `GuestError`'s `record_index` is made relative to `input`.
    fn run(&mut self, input: &[ChainRecord], side: Side, logs: &Arc<LogBuffer>, label: &str) -> Result<Vec<ChainRecord>, PluginError> {
        let mut output = Vec::with_capacity(input.len());
        let mut bytes = 0usize;
        let mut start = 0usize;
        while start < input.len() {
            let origin = &input[start];
            let end = match side {
                Side::Sink => start + 1,
                Side::Source => {
                    let limit = (start + CHAIN_CALL_RECORDS_MAX).min(input.len());
                    start + input[start..limit].iter().take_while(|r| r.topic == origin.topic && r.partition == origin.partition).count()
                }
            };
            let batch: Vec<InputRecord> = input[start..end].iter().map(input_record).collect();
            let instance = self.instance(logs, label)?;
            let outputs = match instance.process(&batch) {
                Ok(outputs) => outputs,
                Err(error) => {
                    if let Some(reason) = instance.poisoned().map(str::to_owned) {
                        logs.push(LogLevel::Warn, &format!("transform '{}' is made again after: {reason}", self.spec.alias));
                        self.instance = None;
                    }
                    return Err(match error {
                        PluginError::GuestError { world, message, record_index } => {
                            PluginError::GuestError { world, message, record_index: record_index.map(|i| start + i) }
                        }
                        other => other,
                    });
                }
            };
            for out in outputs {
                bytes += out.key.as_ref().map_or(0, Vec::len)
                    + out.value.as_ref().map_or(0, Vec::len)
                    + out.headers.iter().map(|h| h.key.len() + h.value.len()).sum::<usize>();
                if output.len() >= CHAIN_RECORDS_MAX || bytes > CHAIN_BYTES_MAX {
                    return Err(PluginError::MalformedOutput(format!(
                        "the step made more than {CHAIN_RECORDS_MAX} records or {CHAIN_BYTES_MAX} bytes from one batch"
                    )));
                }
                output.push(chain_record(out, origin, &self.spec.outputs, side));
            }
            start = end;
        }
        Ok(output)
    }
}

fn instantiate(spec: &StepSpec, logs: &Arc<LogBuffer>, label: &str) -> Result<TransformInstance, PluginError> {
    let mut config = InstanceConfig::new(&format!("{label}-{}", spec.alias));
    config.log_sink = Arc::clone(logs) as Arc<dyn sluice_wasm::LogSink>;
    config.config = spec.config.clone();
    spec.module.instantiate(config, spec.outputs.clone())
}

fn input_record(r: &ChainRecord) -> InputRecord {
    InputRecord {
        key: r.key.as_ref().map(|k| k.to_vec()),
        value: r.value.as_ref().map(|v| v.to_vec()),
        headers: r
            .headers
            .iter()
            .map(|(key, value)| Header { key: key.clone(), value: value.as_ref().map_or_else(Vec::new, |v| v.to_vec()) })
            .collect(),
        timestamp_ms: r.timestamp_ms,
        partition: r.partition.unwrap_or(-1),
        offset: r.offset,
    }
}

/// An output record where its output index sends it (checked by the instance against `outputs`).
fn chain_record(out: OutputRecord, origin: &ChainRecord, outputs: &[String], side: Side) -> ChainRecord {
    let (topic, partition) = match out.output {
        0 => (origin.topic.clone(), origin.partition),
        // A source's rerouted record is partitioned by key in its new topic; a sink's keeps its
        // input partition (where it came from, not where it goes).
        n => (outputs[n as usize].clone(), if side == Side::Sink { origin.partition } else { None }),
    };
    ChainRecord {
        topic,
        partition,
        offset: origin.offset,
        key: out.key.map(Bytes::from),
        value: out.value.map(Bytes::from),
        headers: out.headers.into_iter().map(|h| (h.key, Some(Bytes::from(h.value)))).collect(),
        timestamp_ms: if out.timestamp_ms < 0 { origin.timestamp_ms } else { out.timestamp_ms },
        origin: origin.origin,
    }
}

fn step_message(spec: &StepSpec, error: &PluginError) -> String {
    match error {
        PluginError::GuestError { message, .. } => format!("transform '{}' ({}): {message}", spec.alias, spec.module_name),
        other => format!("transform '{}' ({}): {other}", spec.alias, spec.module_name),
    }
}

/// A step's failure as the policy sees it: a guest error naming the step, keeping the failing
/// record's index only when it indexes the chain's input (the first step's).
fn chain_error(spec: &StepSpec, first: bool, error: PluginError) -> PluginError {
    let record_index = match &error {
        PluginError::GuestError { record_index, .. } if first => *record_index,
        _ => None,
    };
    PluginError::GuestError { world: World::Transform, message: step_message(spec, &error), record_index }
}
