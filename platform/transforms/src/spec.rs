//! What a deployment is: the spec an operator sends (`POST /v1/transforms`, `sluice transform
//! deploy`), its validation, and how deployments persist in the data directory.
//!
//! Layout under `<data-dir>/__transforms/`:
//! - `modules/<sha256>.wasm` — the uploaded components, by content;
//! - `deployments/<name>.json` — one file per deployment (spec, module digest, version, paused),
//!   replaced atomically (temp file, fsync, rename);
//! - `cache/` — wasmtime's compiled modules (see `sluice-wasm`), so a restart does not recompile.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sluice_wasm::Limits;

use crate::error::ApiError;

pub const TRANSFORMS_DIR: &str = "__transforms";
/// Longest transform name: it becomes part of transactional ids and a group id.
pub const TRANSFORM_NAME_BYTES_MAX: usize = 100;
/// Records handed to the module per call at most (one call per batch, never per record).
pub const BATCH_RECORDS_DEFAULT: usize = 5_000;
pub const BATCH_RECORDS_MAX: usize = sluice_wasm::INPUT_RECORDS_PER_CALL_MAX;
/// Retry policy bounds.
pub const RETRY_ATTEMPTS_MAX: u32 = 1_000;
pub const RETRY_BACKOFF_MS_MAX: u64 = 600_000;

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
pub enum ErrorPolicy {
    /// Stop the transform's partition in the `failed` state with the error; nothing of the batch is
    /// written and its input is not consumed. Resume after fixing (redeploy, or `resume`).
    #[default]
    Stop,
    /// Write the failing batch's input records to this topic, with the error in headers, commit them
    /// with the input progress, and go on.
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
    pub error_policy: ErrorPolicy,
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

    /// Checks everything that does not need the broker (topics are checked by the manager).
    pub fn validate(&self) -> Result<(), ApiError> {
        validate_name(&self.name)?;
        if self.output_topics.is_empty() {
            return Err(ApiError::bad_request("at least one output topic is required (--output-topic)"));
        }
        if self.output_topics.len() > sluice_wasm::OUTPUTS_MAX {
            return Err(ApiError::bad_request(format!("{} output topics; at most {}", self.output_topics.len(), sluice_wasm::OUTPUTS_MAX)));
        }
        if let Some(dup) = self.output_topics.iter().enumerate().find(|(i, t)| self.output_topics[..*i].contains(t)) {
            return Err(ApiError::bad_request(format!("output topic '{}' is listed twice", dup.1)));
        }
        if self.output_topics.contains(&self.input_topic) {
            return Err(ApiError::bad_request("the input topic cannot also be an output topic (the transform would read its own output)"));
        }
        self.limits().validate().map_err(|e| ApiError::bad_request(format!("limits: {e}")))?;
        if self.batch_records.is_some_and(|n| n == 0 || n > BATCH_RECORDS_MAX) {
            return Err(ApiError::bad_request(format!("batch_records must be 1..={BATCH_RECORDS_MAX}")));
        }
        match &self.error_policy {
            ErrorPolicy::DeadLetter(topic) if topic == &self.input_topic || self.output_topics.contains(topic) => {
                return Err(ApiError::bad_request("the dead-letter topic must differ from the input and output topics"));
            }
            ErrorPolicy::Retry { max_attempts, backoff_ms }
                if *max_attempts == 0 || *max_attempts > RETRY_ATTEMPTS_MAX || *backoff_ms > RETRY_BACKOFF_MS_MAX =>
            {
                return Err(ApiError::bad_request(format!(
                    "retry needs 1..={RETRY_ATTEMPTS_MAX} attempts and a backoff of at most {RETRY_BACKOFF_MS_MAX} ms"
                )));
            }
            _ => {}
        }
        Ok(())
    }
}

pub fn group_for(name: &str) -> String {
    format!("__sluice-transform-{name}")
}

pub fn validate_name(name: &str) -> Result<(), ApiError> {
    if name.is_empty() || name.len() > TRANSFORM_NAME_BYTES_MAX {
        return Err(ApiError::bad_request(format!("transform names are 1..={TRANSFORM_NAME_BYTES_MAX} characters")));
    }
    if let Some(bad) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        return Err(ApiError::bad_request(format!("transform name '{name}' contains '{bad}'; use letters, digits, '.', '_' and '-'")));
    }
    Ok(())
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
}

pub struct Store {
    root: PathBuf,
}

impl Store {
    pub fn open(data_dir: &Path) -> Result<Store, String> {
        let root = data_dir.join(TRANSFORMS_DIR);
        for dir in [root.join("modules"), root.join("deployments"), root.join("cache")] {
            fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        Ok(Store { root })
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.root.join("cache")
    }

    fn module_path(&self, digest: &str) -> PathBuf {
        self.root.join("modules").join(format!("{digest}.wasm"))
    }

    fn deployment_path(&self, name: &str) -> PathBuf {
        self.root.join("deployments").join(format!("{name}.json"))
    }

    pub fn save_module(&self, digest: &str, bytes: &[u8]) -> Result<(), String> {
        let path = self.module_path(digest);
        if path.exists() {
            return Ok(());
        }
        write_atomically(&path, bytes)
    }

    pub fn load_module(&self, digest: &str) -> Result<Vec<u8>, String> {
        let path = self.module_path(digest);
        fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    }

    pub fn save(&self, deployment: &StoredDeployment) -> Result<(), String> {
        let json = serde_json::to_vec_pretty(deployment).map_err(|e| e.to_string())?;
        write_atomically(&self.deployment_path(&deployment.spec.name), &json)
    }

    pub fn remove(&self, name: &str) -> Result<(), String> {
        match fs::remove_file(self.deployment_path(name)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(format!("cannot remove deployment {name}: {e}")),
            _ => Ok(()),
        }
    }

    /// Every stored deployment; unreadable files are reported and skipped.
    pub fn load_all(&self) -> Vec<StoredDeployment> {
        let Ok(entries) = fs::read_dir(self.root.join("deployments")) else { return Vec::new() };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            match fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<StoredDeployment>(&b).map_err(|e| e.to_string()))
            {
                Ok(deployment) => out.push(deployment),
                Err(error) => tracing::error!(file = %path.display(), %error, "skipping an unreadable transform deployment"),
            }
        }
        out.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
        out
    }

    /// Removes module files no deployment refers to.
    pub fn collect_garbage(&self, live: &[String]) {
        let Ok(entries) = fs::read_dir(self.root.join("modules")) else { return };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if let Some(digest) = name.strip_suffix(".wasm")
                && !live.iter().any(|d| d == digest)
            {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let temp = path.with_extension("tmp");
    let mut file = fs::File::create(&temp).map_err(|e| format!("cannot create {}: {e}", temp.display()))?;
    file.write_all(bytes).and_then(|()| file.sync_all()).map_err(|e| format!("cannot write {}: {e}", temp.display()))?;
    fs::rename(&temp, path).map_err(|e| format!("cannot rename {}: {e}", temp.display()))?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| format!("cannot fsync {}: {e}", dir.display()))?;
    }
    Ok(())
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
            (StartFrom::Earliest, Partitioning::KeyHash, ErrorPolicy::Stop)
        );
        assert_eq!(spec.transactional_id(3), "__sluice-transform-t1-3");
    }

    #[test]
    fn bad_specs_are_refused_with_a_reason() {
        let mut bad = spec();
        bad.output_topics.push("in".into());
        assert!(bad.validate().unwrap_err().message.contains("input topic"));
        let mut bad = spec();
        bad.name = "a/b".into();
        assert!(bad.validate().is_err());
        let mut bad = spec();
        bad.error_policy = ErrorPolicy::DeadLetter("out".into());
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
