//! What a deployment is: the spec an operator sends (`POST /v1/transforms`, `sluice transform
//! deploy`), its validation, and how deployments persist in the data directory.
//!
//! Deployments live in `<data-dir>/__transforms/deployments/<name>.json` (spec, module digest,
//! version, paused), replaced atomically. Modules live in the shared registry (`sluice-runtime`,
//! `<data-dir>/__plugins/`); components that earlier versions kept in `__transforms/modules/` are
//! moved there at start.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sluice_broker::host::StartPosition;
use sluice_runtime::registry::validate_name as validate_module_name;
use sluice_runtime::store::JsonFiles;
use sluice_runtime::{OnFailure, RetryPolicy, RuntimeError};
use sluice_wasm::Limits;

/// Longest transform name: it becomes part of transactional ids and a group id.
pub const TRANSFORM_NAME_BYTES_MAX: usize = 100;
/// Records handed to the module per call at most (one call per batch, never per record).
pub const BATCH_RECORDS_DEFAULT: usize = 5_000;
pub const BATCH_RECORDS_MAX: usize = sluice_wasm::INPUT_RECORDS_PER_CALL_MAX;

/// Where a new deployment starts reading when its group has no committed position for a partition.
/// A redeploy under the same name resumes from the committed positions and ignores this.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum StartFrom {
    #[default]
    Earliest,
    Latest,
    /// The same offset in every input partition (clamped to what exists).
    Offset(i64),
    /// The first record at or after this timestamp (ms since the epoch), per partition.
    Timestamp(i64),
}

/// What happens when the module fails on a batch (guest error, trap, timeout, memory cap, malformed
/// output).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TransformErrorPolicy {
    /// Stop the transform's partition in the `failed` state with the error; nothing of the batch is
    /// written and its input is not consumed. Resume after fixing (redeploy, or `resume`).
    #[default]
    Stop,
    /// Write the input records that fail (found by bisecting a failing batch, or named by the
    /// module) to this topic, with the error in headers; transform the rest; commit both with the
    /// input progress, and go on.
    DeadLetter(String),
    /// Retry the batch with exponential backoff (starting at `backoff_ms`), `max_attempts` times,
    /// then stop.
    Retry { max_attempts: u32, backoff_ms: u64 },
}

/// How output records are spread over an output topic's partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Partitioning {
    /// By the murmur2 hash of the key, as Kafka's clients do (records without a key go to the input
    /// partition's number modulo the output's partition count).
    #[default]
    KeyHash,
    /// The input record's partition (modulo the output's partition count).
    SameAsInput,
}

/// A deployment request, minus the module bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransformSpec {
    pub name: String,
    pub input_topic: String,
    pub output_topics: Vec<String>,
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    #[serde(default)]
    pub from: StartFrom,
    #[serde(default)]
    pub error_policy: TransformErrorPolicy,
    #[serde(default)]
    pub partitioning: Partitioning,
    #[serde(default)]
    pub memory_bytes: Option<usize>,
    #[serde(default)]
    pub cpu_ms_per_call: Option<u64>,
    #[serde(default)]
    pub batch_records: Option<usize>,
}

impl TransformSpec {
    pub fn limits(&self) -> Limits {
        let defaults = Limits::default();
        Limits {
            memory_bytes: self.memory_bytes.unwrap_or(defaults.memory_bytes),
            cpu_ms_per_call: self.cpu_ms_per_call.unwrap_or(defaults.cpu_ms_per_call),
        }
    }

    pub fn batch_records(&self) -> usize {
        self.batch_records.unwrap_or(BATCH_RECORDS_DEFAULT)
    }

    /// The consumer group holding the transform's committed input positions.
    pub fn group(&self) -> String {
        group_for(&self.name)
    }

    /// The transactional id of the runner of one input partition.
    pub fn transactional_id(&self, partition: i32) -> String {
        format!("__sluice-transform-{}-{partition}", self.name)
    }

    /// The runtime's error policy for this spec.
    pub fn policy(&self) -> sluice_runtime::ErrorPolicy {
        match &self.error_policy {
            TransformErrorPolicy::Stop => sluice_runtime::ErrorPolicy::default(),
            TransformErrorPolicy::DeadLetter(topic) => sluice_runtime::ErrorPolicy {
                retry: RetryPolicy::NONE,
                on_failure: OnFailure::DeadLetter { topic: topic.clone(), context_headers: true },
            },
            TransformErrorPolicy::Retry { max_attempts, backoff_ms } => sluice_runtime::ErrorPolicy {
                retry: RetryPolicy {
                    max_attempts: *max_attempts,
                    timeout_ms: None,
                    backoff_ms: *backoff_ms,
                    backoff_max_ms: RETRY_BACKOFF_CAP_MS,
                },
                on_failure: OnFailure::Stop,
            },
        }
    }

    pub fn start_position(&self) -> StartPosition {
        match self.from {
            StartFrom::Earliest => StartPosition::Earliest,
            StartFrom::Latest => StartPosition::Latest,
            StartFrom::Offset(offset) => StartPosition::Offset(offset),
            StartFrom::Timestamp(ts) => StartPosition::Timestamp(ts),
        }
    }

    /// Checks everything that does not need the broker (topics are checked by the manager).
    pub fn validate(&self) -> Result<(), RuntimeError> {
        let invalid = |message: String| Err(RuntimeError::Invalid(message));
        validate_name(&self.name)?;
        if self.output_topics.is_empty() {
            return invalid("at least one output topic is required (--output-topic)".into());
        }
        if self.output_topics.len() > sluice_wasm::OUTPUTS_MAX {
            return invalid(format!("{} output topics; at most {}", self.output_topics.len(), sluice_wasm::OUTPUTS_MAX));
        }
        if let Some(dup) = self.output_topics.iter().enumerate().find(|(i, t)| self.output_topics[..*i].contains(t)) {
            return invalid(format!("output topic '{}' is listed twice", dup.1));
        }
        if self.output_topics.contains(&self.input_topic) {
            return invalid("the input topic cannot also be an output topic (the transform would read its own output)".into());
        }
        self.limits().validate().map_err(|e| RuntimeError::Invalid(format!("limits: {e}")))?;
        if self.batch_records.is_some_and(|n| n == 0 || n > BATCH_RECORDS_MAX) {
            return invalid(format!("batch_records must be 1..={BATCH_RECORDS_MAX}"));
        }
        match &self.error_policy {
            TransformErrorPolicy::DeadLetter(topic) if topic == &self.input_topic || self.output_topics.contains(topic) => {
                return invalid("the dead-letter topic must differ from the input and output topics".into());
            }
            TransformErrorPolicy::Retry { .. } => self.policy().retry.validate()?,
            _ => {}
        }
        Ok(())
    }
}

/// The longest backoff of the retry policy.
const RETRY_BACKOFF_CAP_MS: u64 = 60_000;

pub fn group_for(name: &str) -> String {
    format!("__sluice-transform-{name}")
}

pub fn validate_name(name: &str) -> Result<(), RuntimeError> {
    validate_module_name("transform", name, TRANSFORM_NAME_BYTES_MAX)
}

/// A deployment as persisted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredDeployment {
    pub spec: TransformSpec,
    /// sha256 of the module bytes: its file name under `modules/`, and the module's version.
    pub module_digest: String,
    pub module_bytes: usize,
    /// 1 for the first deployment of a name, +1 for every redeploy.
    pub version: u64,
    pub paused: bool,
    pub deployed_at_ms: i64,
    /// In a cluster: the offset of the module's first chunk in the plugin log, where a broker
    /// without the module reads it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module_offset: Option<i64>,
    /// In a cluster, for a change of an existing deployment (pause, resume, limits): the plugin
    /// log offset of the record it was made from. Every broker ignores the change if another came
    /// between (a delete, a redeploy), so a stale change never resurrects or rolls back anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub based_on: Option<i64>,
}

impl StoredDeployment {
    /// Whether `other` is the same deployment (same deploy of the same module), perhaps paused or
    /// limited differently: those apply without restarting the runners.
    pub fn same_deploy(&self, other: &StoredDeployment) -> bool {
        self.version == other.version && self.module_digest == other.module_digest && self.deployed_at_ms == other.deployed_at_ms
    }
}

pub struct Store {
    root: PathBuf,
    deployments: JsonFiles<StoredDeployment>,
}

impl Store {
    /// `root`: the runtime's directory (`<data-dir>/__transforms`). Blocking file I/O.
    pub fn open(root: &Path) -> Result<Store, RuntimeError> {
        let deployments = JsonFiles::open(root.join("deployments"), "transform deployment")?;
        Ok(Store { root: root.to_path_buf(), deployments })
    }

    /// A component an earlier version stored under `__transforms/modules/`, to move into the
    /// registry; removed once moved.
    pub fn legacy_module(&self, digest: &str) -> Option<(PathBuf, Vec<u8>)> {
        let path = self.root.join("modules").join(format!("{digest}.wasm"));
        fs::read(&path).ok().map(|bytes| (path, bytes))
    }

    pub fn save(&self, deployment: &StoredDeployment) -> Result<(), RuntimeError> {
        self.deployments.save(&deployment.spec.name, deployment)
    }

    pub fn remove(&self, name: &str) -> Result<(), RuntimeError> {
        self.deployments.remove(name)
    }

    /// Every stored deployment, by name; unreadable files are reported and skipped.
    pub fn load_all(&self) -> Vec<StoredDeployment> {
        self.deployments.load_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> TransformSpec {
        serde_json::from_value(serde_json::json!({"name": "t1", "input_topic": "in", "output_topics": ["out"]})).unwrap()
    }

    #[test]
    fn a_minimal_spec_gets_defaults_and_validates() {
        let spec = spec();
        spec.validate().unwrap();
        assert_eq!(
            (spec.from, spec.partitioning, spec.error_policy.clone()),
            (StartFrom::Earliest, Partitioning::KeyHash, TransformErrorPolicy::Stop)
        );
        assert_eq!(spec.transactional_id(3), "__sluice-transform-t1-3");
    }

    #[test]
    fn bad_specs_are_refused_with_a_reason() {
        let mut bad = spec();
        bad.output_topics.push("in".into());
        assert!(bad.validate().unwrap_err().to_string().contains("input topic"));
        let mut bad = spec();
        bad.name = "a/b".into();
        assert!(bad.validate().is_err());
        let mut bad = spec();
        bad.error_policy = TransformErrorPolicy::DeadLetter("out".into());
        assert!(bad.validate().is_err());
        let mut bad = spec();
        bad.memory_bytes = Some(10);
        assert!(bad.validate().is_err());
        let mut bad = spec();
        bad.output_topics.clear();
        assert!(bad.validate().is_err());
        let parsed: Result<TransformSpec, _> = serde_json::from_value(
            serde_json::json!({"name": "t", "input_topic": "in", "output_topics": ["o"], "from": {"offset": 5}, "error_policy": {"retry": {"max_attempts": 3, "backoff_ms": 100}}}),
        );
        let parsed = parsed.unwrap();
        assert_eq!(parsed.from, StartFrom::Offset(5));
        parsed.validate().unwrap();
    }
}
