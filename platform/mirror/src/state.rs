//! What a mirror's task shares with the manager and the API: per-partition progress, the source's
//! reachability, the promoted topics, and the metrics.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use parking_lot::{Mutex, RwLock};
use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};
use serde::Serialize;
use sluice_runtime::RuntimeError;

use crate::spec::MirrorSpec;

/// Where one partition's copy stands.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PartitionProgress {
    /// The source's high watermark at the last fetch.
    pub source_high_watermark: i64,
    /// The copy's end offset (the next offset to copy).
    pub target_end_offset: i64,
    /// Records copied since the broker started.
    pub records: u64,
    pub bytes: u64,
    /// Records the source deleted (retention) before they were copied.
    pub records_lost: u64,
    /// Rename mode: records that originated on this cluster, not copied back (loop prevention).
    pub records_looped: u64,
    /// Rename mode: records the replication policy dropped.
    pub records_filtered: u64,
    /// Max timestamp of the last batch copied.
    pub last_record_timestamp_ms: Option<i64>,
    /// When the copy was last level with the source (broker time).
    pub caught_up_at_ms: Option<i64>,
    pub error: Option<String>,
    /// (broker time, `bytes`) about once a second over the last [`RATE_WINDOW_MS`], for bytes/s.
    #[serde(skip)]
    samples: VecDeque<(i64, u64)>,
}

/// The window bytes/s is measured over.
pub const RATE_WINDOW_MS: i64 = 10_000;

impl PartitionProgress {
    /// Records a fetch's outcome: the source's end and the copy's end now.
    pub fn observe(&mut self, source_high_watermark: i64, target_end_offset: i64, now_ms: i64) {
        self.source_high_watermark = source_high_watermark;
        self.target_end_offset = target_end_offset;
        if target_end_offset >= source_high_watermark {
            self.caught_up_at_ms = Some(now_ms);
        }
        self.error = None;
        if self.samples.back().is_none_or(|(at, _)| now_ms - at >= 1000) {
            self.samples.push_back((now_ms, self.bytes));
        }
        while self.samples.front().is_some_and(|(at, _)| now_ms - at > RATE_WINDOW_MS) {
            self.samples.pop_front();
        }
    }

    /// Bytes copied per second over the window (0 until there are two samples).
    pub fn bytes_per_second(&self, now_ms: i64) -> u64 {
        match self.samples.front() {
            Some(&(at, bytes)) if now_ms > at => (self.bytes.saturating_sub(bytes)).saturating_mul(1000) / (now_ms - at) as u64,
            _ => 0,
        }
    }

    pub fn lag_records(&self) -> i64 {
        (self.source_high_watermark - self.target_end_offset).max(0)
    }

    /// How long the copy has been behind the source (0 while level).
    pub fn lag_ms(&self, now_ms: i64) -> i64 {
        if self.lag_records() > 0 { self.caught_up_at_ms.map_or(0, |at| (now_ms - at).max(0)) } else { 0 }
    }

    /// Age of the newest record copied (its timestamp against the broker's clock).
    pub fn record_age_ms(&self, now_ms: i64) -> Option<i64> {
        self.last_record_timestamp_ms.filter(|ts| *ts >= 0).map(|ts| (now_ms - ts).max(0))
    }
}

/// The mirror runtime's metrics, one family per quantity, labelled by mirror.
pub struct MirrorMetrics {
    records: IntCounterVec,
    bytes: IntCounterVec,
    lag: IntGaugeVec,
    lag_ms: IntGaugeVec,
    record_age_ms: IntGaugeVec,
    bytes_per_second: IntGaugeVec,
    failing: IntGaugeVec,
    reachable: IntGaugeVec,
}

/// A per-partition gauge family of [`MirrorMetrics`].
fn partition_gauge(name: &str, help: &str) -> Result<IntGaugeVec, RuntimeError> {
    IntGaugeVec::new(Opts::new(name, help), &["mirror", "topic", "partition"]).map_err(metric_error)
}

fn metric_error(error: prometheus::Error) -> RuntimeError {
    RuntimeError::Invalid(format!("registering metrics: {error}"))
}

impl MirrorMetrics {
    pub fn register(registry: &Registry) -> Result<MirrorMetrics, RuntimeError> {
        let metrics = MirrorMetrics {
            records: IntCounterVec::new(Opts::new("mirror_records_total", "Records a mirror copied from its source"), &["mirror"])
                .map_err(metric_error)?,
            bytes: IntCounterVec::new(Opts::new("mirror_bytes_total", "Record-batch bytes a mirror copied from its source"), &["mirror"])
                .map_err(metric_error)?,
            lag: partition_gauge("mirror_lag_records", "Records on the source not copied yet, by partition")?,
            lag_ms: partition_gauge("mirror_lag_ms", "How long a partition's copy has been behind the source (0 while level)")?,
            record_age_ms: partition_gauge("mirror_record_age_ms", "Age of the newest record copied, by its timestamp")?,
            bytes_per_second: partition_gauge("mirror_bytes_per_second", "Bytes copied per second over the last minute, by partition")?,
            failing: partition_gauge("mirror_partition_failing", "1 while a partition's last round failed (the status says why)")?,
            reachable: IntGaugeVec::new(
                Opts::new("mirror_source_reachable", "1 while the last exchange with the source succeeded"),
                &["mirror"],
            )
            .map_err(metric_error)?,
        };
        registry.register(Box::new(metrics.records.clone())).map_err(metric_error)?;
        registry.register(Box::new(metrics.bytes.clone())).map_err(metric_error)?;
        for family in [&metrics.lag, &metrics.lag_ms, &metrics.record_age_ms, &metrics.bytes_per_second, &metrics.failing] {
            registry.register(Box::new(family.clone())).map_err(metric_error)?;
        }
        registry.register(Box::new(metrics.reachable.clone())).map_err(metric_error)?;
        Ok(metrics)
    }

    pub fn copied(&self, mirror: &str, records: u64, bytes: u64) {
        self.records.with_label_values(&[mirror]).inc_by(records);
        self.bytes.with_label_values(&[mirror]).inc_by(bytes);
    }

    fn partition(&self, mirror: &str, topic: &str, partition: i32, progress: &PartitionProgress, now_ms: i64) {
        let labels = [mirror, topic, &partition.to_string()];
        self.lag.with_label_values(&labels).set(progress.lag_records());
        self.lag_ms.with_label_values(&labels).set(progress.lag_ms(now_ms));
        if let Some(age) = progress.record_age_ms(now_ms) {
            self.record_age_ms.with_label_values(&labels).set(age);
        }
        self.bytes_per_second.with_label_values(&labels).set(progress.bytes_per_second(now_ms) as i64);
        self.failing.with_label_values(&labels).set(i64::from(progress.error.is_some()));
    }

    fn reachable(&self, mirror: &str, reachable: bool) {
        self.reachable.with_label_values(&[mirror]).set(i64::from(reachable));
    }

    /// Drops a deleted mirror's series.
    pub fn forget(&self, mirror: &str, partitions: &[(String, i32)]) {
        let _ = self.records.remove_label_values(&[mirror]);
        let _ = self.bytes.remove_label_values(&[mirror]);
        let _ = self.reachable.remove_label_values(&[mirror]);
        self.forget_partitions(mirror, partitions);
    }

    /// Drops the per-partition series of partitions no longer mirrored (promoted).
    pub fn forget_partitions(&self, mirror: &str, partitions: &[(String, i32)]) {
        for (topic, partition) in partitions {
            let labels = [mirror, topic, &partition.to_string()];
            for family in [&self.lag, &self.lag_ms, &self.record_age_ms, &self.bytes_per_second, &self.failing] {
                let _ = family.remove_label_values(&labels);
            }
        }
    }
}

/// Where one group's offset sync stands.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GroupSync {
    /// Partitions of mirrored topics the group has offsets for on the source.
    pub partitions: usize,
    /// Broker time of the last sync that went through.
    pub synced_at_ms: Option<i64>,
    /// Why the last sync did not (the group is active here, …).
    pub error: Option<String>,
}

pub struct MirrorShared {
    pub name: String,
    pub spec: MirrorSpec,
    /// The spec's topic and group patterns, compiled once.
    pub topic_selection: crate::spec::Selection,
    pub group_selection: Option<regex::Regex>,
    pub metrics: std::sync::Arc<MirrorMetrics>,
    promoted: RwLock<BTreeSet<String>>,
    partitions: Mutex<BTreeMap<(String, i32), PartitionProgress>>,
    /// Why a matching topic is not mirrored (it exists here as a normal topic, …).
    topic_errors: Mutex<BTreeMap<String, String>>,
    source_error: Mutex<Option<String>>,
    groups: Mutex<BTreeMap<String, GroupSync>>,
    /// Rename mode: each mirrored source topic's copy, as the policy named it (the task's one record
    /// of the names, also read by the status).
    targets: Mutex<BTreeMap<String, String>>,
    /// Held by the task while it appends, and by promotion: a topic is never written while it is
    /// being promoted.
    pub writing: Mutex<()>,
}

impl MirrorShared {
    /// Fails only for a spec that does not validate (its patterns are compiled here, once).
    pub fn new(spec: MirrorSpec, promoted: BTreeSet<String>, metrics: std::sync::Arc<MirrorMetrics>) -> Result<MirrorShared, RuntimeError> {
        let (topics, groups) = (spec.selection()?, spec.group_selection()?);
        Ok(MirrorShared::with(spec, promoted, metrics, topics, groups, None))
    }

    /// The shared state of a stored mirror whose spec no longer validates: it selects nothing and
    /// reports why, so that it can be listed, promoted and deleted, never run.
    pub fn invalid(spec: MirrorSpec, promoted: BTreeSet<String>, metrics: std::sync::Arc<MirrorMetrics>, why: &str) -> MirrorShared {
        MirrorShared::with(spec, promoted, metrics, crate::spec::Selection::nothing(), None, Some(why.to_string()))
    }

    fn with(
        spec: MirrorSpec,
        promoted: BTreeSet<String>,
        metrics: std::sync::Arc<MirrorMetrics>,
        topic_selection: crate::spec::Selection,
        group_selection: Option<regex::Regex>,
        source_error: Option<String>,
    ) -> MirrorShared {
        MirrorShared {
            name: spec.name.clone(),
            topic_selection,
            group_selection,
            spec,
            metrics,
            promoted: RwLock::new(promoted),
            partitions: Mutex::new(BTreeMap::new()),
            topic_errors: Mutex::new(BTreeMap::new()),
            source_error: Mutex::new(source_error),
            groups: Mutex::new(BTreeMap::new()),
            targets: Mutex::new(BTreeMap::new()),
            writing: Mutex::new(()),
        }
    }

    /// The topic `source` is copied to: the same name in preserve mode, the policy's name in
    /// rename mode (`None` while the policy has not named it).
    pub fn target_of(&self, source: &str) -> Option<String> {
        match self.spec.mode {
            crate::spec::Mode::Preserve => Some(source.to_string()),
            crate::spec::Mode::Rename => self.targets.lock().get(source).cloned(),
        }
    }

    /// Names `source`'s copy, unless another source topic is copied to `target` already: then
    /// that topic, and nothing changes.
    pub fn set_target(&self, source: &str, target: &str) -> Result<(), String> {
        let mut targets = self.targets.lock();
        if let Some((other, _)) = targets.iter().find(|(s, t)| *t == target && *s != source) {
            return Err(other.clone());
        }
        targets.insert(source.to_string(), target.to_string());
        Ok(())
    }

    /// Every copy named so far (source → target).
    pub fn targets(&self) -> BTreeMap<String, String> {
        self.targets.lock().clone()
    }

    pub fn promoted(&self) -> BTreeSet<String> {
        self.promoted.read().clone()
    }

    pub fn add_promoted(&self, topic: &str) {
        self.promoted.write().insert(topic.to_string());
        let mut partitions = self.partitions.lock();
        let gone: Vec<(String, i32)> = partitions.keys().filter(|(t, _)| t == topic).cloned().collect();
        self.metrics.forget_partitions(&self.name, &gone);
        partitions.retain(|(t, _), _| t != topic);
    }

    /// Updates one partition's progress (creating it) and its lag gauge.
    pub fn progress(&self, topic: &str, partition: i32, update: impl FnOnce(&mut PartitionProgress)) {
        let mut partitions = self.partitions.lock();
        let progress = partitions.entry((topic.to_string(), partition)).or_default();
        update(progress);
        self.metrics.partition(&self.name, topic, partition, progress, sluice_broker::host::now_ms());
    }

    pub fn partitions(&self) -> BTreeMap<(String, i32), PartitionProgress> {
        self.partitions.lock().clone()
    }

    pub fn set_topic_error(&self, topic: &str, error: Option<String>) {
        let mut errors = self.topic_errors.lock();
        match error {
            Some(error) => errors.insert(topic.to_string(), error),
            None => errors.remove(topic),
        };
    }

    pub fn topic_errors(&self) -> BTreeMap<String, String> {
        self.topic_errors.lock().clone()
    }

    pub fn set_source_error(&self, error: Option<String>) {
        self.metrics.reachable(&self.name, error.is_none());
        *self.source_error.lock() = error;
    }

    /// Replaces the groups' sync state with this round's.
    pub fn set_groups(&self, groups: BTreeMap<String, GroupSync>) {
        *self.groups.lock() = groups;
    }

    pub fn groups(&self) -> BTreeMap<String, GroupSync> {
        self.groups.lock().clone()
    }

    pub fn source_error(&self) -> Option<String> {
        self.source_error.lock().clone()
    }
}
