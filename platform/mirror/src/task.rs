//! The replication loop of one mirror: a supervised task (`sluice-runtime`) on a thread of its own.
//!
//! Each step fetches the next range of every mirrored partition from the source, all partitions led
//! by one source broker in one Fetch and every source broker at once, then appends what came back
//! to the target partitions as it is (`Host::append_mirrored`: offsets, timestamps, producer ids,
//! compression and transaction markers unchanged). The target partition's end offset *is* the
//! mirror's position: there is nothing else to commit, so a crash of either side or a cut link
//! resumes exactly where the copy ends, with no gap and no duplicate.
//!
//! Every [`METADATA_REFRESH`] the task lists the source's topics again: new matching topics get a
//! read-only mirror topic with the source's partition count and explicitly set configs, and topics
//! that gained partitions grow on the target too.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_broker::host::{Host, HostError, now_ms};
use sluice_client::{Client, ClientOptions, ConfigResource, FetchOptions, FetchedPartition, OffsetSpec, PartitionFetch};
use sluice_runtime::{RuntimeError, Step, Task, TaskControl};

use crate::state::{MirrorShared, PartitionProgress};

/// How often the source's topic list and partition counts are read again.
pub const METADATA_REFRESH: Duration = Duration::from_secs(10);
/// Bytes asked per partition per fetch, and per fetch in all.
pub const FETCH_PARTITION_BYTES: i32 = 1 << 20;
pub const FETCH_BYTES: i32 = 16 << 20;
/// How long the source may hold a fetch when there is nothing new.
pub const FETCH_MAX_WAIT_MS: i32 = 500;
/// Longest a fetch round may take (the source's answer, or a dead link).
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest connecting to the source may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// The source topic configs a mirror topic takes over when they are set explicitly on the source.
pub const COPIED_CONFIGS: &[&str] =
    &["cleanup.policy", "retention.ms", "retention.bytes", "max.message.bytes", "message.timestamp.type", "segment.bytes", "segment.ms"];

/// Kafka error codes the loop reacts to.
const OFFSET_OUT_OF_RANGE: i16 = 1;

pub struct MirrorTask {
    host: Host,
    shared: Arc<MirrorShared>,
    client: Option<Client>,
    /// Source metadata of the mirrored topics, from the last refresh.
    topics: BTreeMap<String, sluice_client::TopicInfo>,
    refreshed: Option<Instant>,
    /// Where a partition's next fetch starts when it is not the target's end: after the source's
    /// retention deleted records the copy never had, the copy skips to the source's log start.
    skip_to: BTreeMap<(String, i32), i64>,
}

impl MirrorTask {
    pub fn new(host: Host, shared: Arc<MirrorShared>) -> MirrorTask {
        MirrorTask { host, shared, client: None, topics: BTreeMap::new(), refreshed: None, skip_to: BTreeMap::new() }
    }

    fn name(&self) -> &str {
        &self.shared.name
    }

    fn block_on<T>(
        &self,
        timeout: Duration,
        what: &str,
        future: impl Future<Output = sluice_client::Result<T>>,
    ) -> Result<T, RuntimeError> {
        let outcome = self.host.runtime().block_on(async { tokio::time::timeout(timeout, future).await });
        match outcome {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(self.source_error(what, &error)),
            Err(_) => Err(self.source_error(what, &format!("no answer within {} s", timeout.as_secs()))),
        }
    }

    fn source_error(&self, what: &str, error: &dyn std::fmt::Display) -> RuntimeError {
        let message = format!("source cluster ({}): {what}: {error}", self.shared.spec.source_bootstrap.join(","));
        self.shared.set_source_error(Some(message.clone()));
        RuntimeError::Invalid(message)
    }

    fn client(&self) -> Result<&Client, RuntimeError> {
        self.client.as_ref().ok_or_else(|| RuntimeError::Invalid("not connected to the source".into()))
    }

    /// Lists the source's topics again and makes the target match: mirror topics created, grown.
    fn refresh(&mut self) -> Result<(), RuntimeError> {
        let selection = self.shared.spec.selection()?;
        let meta = self.block_on(CONNECT_TIMEOUT, "reading metadata", self.client()?.metadata(None))?;
        let promoted = self.shared.promoted();
        let mut topics = BTreeMap::new();
        for topic in meta.topics.into_iter().filter(|t| !t.internal && t.error_code == 0 && selection.wants(&t.name)) {
            if promoted.contains(&topic.name) {
                continue;
            }
            match self.ensure_target(&topic) {
                Ok(()) => {
                    self.shared.set_topic_error(&topic.name, None);
                    topics.insert(topic.name.clone(), topic);
                }
                Err(error) => {
                    tracing::warn!(mirror = self.name(), topic = topic.name, %error, "topic not mirrored");
                    self.shared.set_topic_error(&topic.name, Some(error.to_string()));
                }
            }
        }
        self.topics = topics;
        self.refreshed = Some(Instant::now());
        Ok(())
    }

    /// The target's copy of `source`: created read-only with the source's partition count and
    /// explicit configs, grown when the source grew. A target topic that exists but is not this
    /// mirror's copy is left alone.
    fn ensure_target(&self, source: &sluice_client::TopicInfo) -> Result<(), RuntimeError> {
        let name = &source.name;
        let partitions = source.partitions.len() as i32;
        match self.host.topic(name) {
            None => {
                let configs = self.source_configs(name);
                let created = match self.host.create_mirror_topic(name, partitions, &configs, self.name()) {
                    Err(HostError::TopicRefused(why)) if !configs.is_empty() => {
                        tracing::warn!(
                            mirror = self.name(),
                            topic = name,
                            why,
                            "the source's topic configs were refused here; creating the mirror topic with the defaults"
                        );
                        self.host.create_mirror_topic(name, partitions, &BTreeMap::new(), self.name())
                    }
                    other => other,
                }?;
                tracing::info!(mirror = self.name(), topic = name, partitions = created.partitions, "created a mirror topic");
            }
            Some(existing) => {
                let owner = self.host.mirror_of(name);
                if owner.as_deref() != Some(self.name()) {
                    return Err(RuntimeError::Invalid(match owner {
                        Some(other) => format!("topic '{name}' on this cluster is mirrored by mirror '{other}'"),
                        None => format!(
                            "topic '{name}' already exists on this cluster as a normal topic; delete it or exclude it from the mirror"
                        ),
                    }));
                }
                if existing.partitions < partitions {
                    self.host.create_partitions(name, partitions)?;
                    tracing::info!(mirror = self.name(), topic = name, from = existing.partitions, to = partitions, "mirror topic grew");
                }
            }
        }
        Ok(())
    }

    /// The configs set explicitly on the source topic that a mirror topic takes over.
    fn source_configs(&self, topic: &str) -> BTreeMap<String, String> {
        let Ok(client) = self.client() else { return BTreeMap::new() };
        let keys: Vec<String> = COPIED_CONFIGS.iter().map(|k| k.to_string()).collect();
        let resource = ConfigResource::Topic(topic.to_string());
        match self.block_on(CONNECT_TIMEOUT, "describing topic configs", client.describe_configs(&resource, Some(&keys))) {
            Ok(entries) => entries
                .into_iter()
                .filter(|e| e.source == sluice_client::ConfigSource::Topic && COPIED_CONFIGS.contains(&e.name.as_str()))
                .filter_map(|e| e.value.map(|v| (e.name, v)))
                .collect(),
            Err(error) => {
                tracing::warn!(mirror = self.name(), topic, %error, "cannot read the source topic's configs; using the defaults");
                BTreeMap::new()
            }
        }
    }

    /// One fetch round over every mirrored partition; returns the bytes written.
    fn round(&mut self) -> Result<u64, RuntimeError> {
        let promoted = self.shared.promoted();
        let mut by_leader: BTreeMap<i32, Vec<PartitionFetch>> = BTreeMap::new();
        for (name, topic) in &self.topics {
            if promoted.contains(name) {
                continue;
            }
            for partition in &topic.partitions {
                let key = (name.clone(), partition.id);
                let end = self.host.partition_offsets(name, partition.id)?.high_watermark;
                let offset = self.skip_to.get(&key).copied().filter(|&skip| skip > end).unwrap_or(end);
                if partition.leader < 0 {
                    self.shared.progress(name, partition.id, |p| p.error = Some("the source partition has no leader".into()));
                    continue;
                }
                by_leader.entry(partition.leader).or_default().push(PartitionFetch {
                    topic: name.clone(),
                    partition: partition.id,
                    offset,
                    max_bytes: FETCH_PARTITION_BYTES,
                });
            }
        }
        if by_leader.is_empty() {
            std::thread::sleep(Duration::from_millis(FETCH_MAX_WAIT_MS as u64));
            return Ok(0);
        }
        let options = FetchOptions { max_wait_ms: FETCH_MAX_WAIT_MS, min_bytes: 1, max_bytes: FETCH_BYTES, ..FetchOptions::default() };
        let client = self.client()?;
        let answers = self.block_on(FETCH_TIMEOUT, "fetching", async {
            let sends = by_leader.iter().map(|(leader, wants)| client.fetch(*leader, wants, &options));
            let mut all = Vec::new();
            for answer in futures::future::join_all(sends).await {
                all.extend(answer?);
            }
            Ok(all)
        })?;
        self.shared.set_source_error(None);
        let requested: BTreeMap<(String, i32), i64> =
            by_leader.into_values().flatten().map(|want| ((want.topic, want.partition), want.offset)).collect();
        let mut written = 0;
        let mut stale_metadata = false;
        // Promotion waits for this: no append lands in a topic while it is being promoted.
        let shared = Arc::clone(&self.shared);
        let _writing = shared.writing.lock();
        let promoted = self.shared.promoted();
        for answer in answers {
            let key = (answer.topic.clone(), answer.partition);
            let Some(&offset) = requested.get(&key) else { continue };
            if promoted.contains(&answer.topic) {
                continue;
            }
            match self.apply(&answer, offset) {
                Ok(bytes) => written += bytes,
                Err(Applied::Stale(error)) => {
                    stale_metadata = true;
                    self.shared.progress(&answer.topic, answer.partition, |p| p.error = Some(error));
                }
                Err(Applied::Failed(error)) => {
                    tracing::warn!(mirror = self.name(), topic = answer.topic, partition = answer.partition, %error, "partition not mirrored");
                    self.shared.progress(&answer.topic, answer.partition, |p| p.error = Some(error));
                }
            }
        }
        if stale_metadata {
            self.refreshed = None;
        }
        Ok(written)
    }

    /// Appends one partition's answer; returns the bytes written.
    fn apply(&mut self, answer: &FetchedPartition, offset: i64) -> Result<u64, Applied> {
        let (topic, partition) = (answer.topic.as_str(), answer.partition);
        if let Some(error) = &answer.error {
            if error.code == OFFSET_OUT_OF_RANGE {
                return self.out_of_range(topic, partition, offset).map(|()| 0);
            }
            // NOT_LEADER_OR_FOLLOWER, UNKNOWN_TOPIC_OR_PARTITION and the like: ask the source again.
            return Err(Applied::Stale(format!("the source answered {error}")));
        }
        let batches = sluice_client::records::split_batches(&answer.records).map_err(|e| Applied::Failed(e.to_string()))?;
        let mut bytes = Vec::new();
        let mut last_timestamp = None;
        for batch in batches.iter().filter(|b| b.last_offset >= offset) {
            if batch.base_offset < offset {
                return Err(Applied::Failed(format!(
                    "the source's batch {}..={} straddles the copy's end {offset}: the logs have diverged (was the source topic recreated?)",
                    batch.base_offset, batch.last_offset
                )));
            }
            bytes.extend_from_slice(&batch.bytes);
            last_timestamp = Some(max_timestamp(&batch.bytes));
        }
        let now = now_ms();
        if bytes.is_empty() {
            if offset > answer.high_watermark && answer.high_watermark >= 0 {
                return Err(Applied::Failed(format!(
                    "the copy ends at offset {offset}, past the source's high watermark {}: the logs have diverged (was the source topic recreated or truncated?)",
                    answer.high_watermark
                )));
            }
            self.shared.progress(topic, partition, |p| p.observe(answer.high_watermark, offset, now));
            return Ok(0);
        }
        let appended =
            self.host.append_mirrored(topic, partition, &self.shared.name, &mut bytes).map_err(|e| Applied::Failed(e.to_string()))?;
        if let Some(&skip) = self.skip_to.get(&(topic.to_string(), partition)) {
            // The first batch after a skip has landed: the copy now starts where the source does.
            if appended.next_offset > skip {
                self.skip_to.remove(&(topic.to_string(), partition));
                let _ = self.host.advance_mirror_start(topic, partition, &self.shared.name, skip);
            }
        }
        self.shared.metrics.copied(&self.shared.name, appended.records, appended.bytes);
        self.shared.progress(topic, partition, |p: &mut PartitionProgress| {
            p.records += appended.records;
            p.bytes += appended.bytes;
            p.last_record_timestamp_ms = last_timestamp.or(p.last_record_timestamp_ms);
            p.observe(answer.high_watermark, appended.next_offset, now);
        });
        Ok(appended.bytes)
    }

    /// The copy's end is outside the source's log: below its start (retention deleted records the
    /// copy never had: skip to the start, and count what was lost) or above its end (diverged).
    fn out_of_range(&mut self, topic: &str, partition: i32, offset: i64) -> Result<(), Applied> {
        let client = self.client().map_err(|e| Applied::Failed(e.to_string()))?;
        let info = self.topics.get(topic).cloned().ok_or_else(|| Applied::Stale("unknown source topic".into()))?;
        let specs: BTreeMap<i32, OffsetSpec> = [(partition, OffsetSpec::Earliest)].into();
        let start = self
            .block_on(CONNECT_TIMEOUT, "listing offsets", client.list_offsets(&info, &specs))
            .map_err(|e| Applied::Stale(e.to_string()))?
            .get(&partition)
            .copied()
            .ok_or_else(|| Applied::Stale("no log start offset in the answer".into()))?;
        if offset >= start {
            return Err(Applied::Failed(format!(
                "the copy ends at offset {offset}, past the source's log: the logs have diverged (was the source topic recreated or truncated?)"
            )));
        }
        let lost = start - offset;
        tracing::warn!(
            mirror = self.name(),
            topic,
            partition,
            from = offset,
            to = start,
            lost,
            "the source deleted records before they were copied; the copy skips to the source's log start"
        );
        self.skip_to.insert((topic.to_string(), partition), start);
        self.shared.progress(topic, partition, |p| {
            p.records_lost += lost as u64;
            p.error =
                Some(format!("{lost} records were deleted on the source (retention) before they were copied; skipped to offset {start}"));
        });
        Ok(())
    }
}

enum Applied {
    /// The source's metadata changed (leader moved, topic deleted): refresh and try again.
    Stale(String),
    Failed(String),
}

/// A stored batch's max timestamp (bytes 35..43 of the v2 header).
fn max_timestamp(batch: &[u8]) -> i64 {
    batch.get(35..43).and_then(|b| b.try_into().ok()).map(i64::from_be_bytes).unwrap_or(-1)
}

impl Task for MirrorTask {
    fn start(&mut self, _control: &TaskControl) -> Result<(), RuntimeError> {
        let options = ClientOptions { client_id: format!("sluice-mirror-{}", self.shared.name), ..ClientOptions::default() };
        let bootstrap = self.shared.spec.source_bootstrap.clone();
        let client = self.block_on(CONNECT_TIMEOUT, "connecting", Client::connect(&bootstrap, options))?;
        self.client = Some(client);
        self.shared.set_source_error(None);
        self.refresh()
    }

    fn step(&mut self, control: &TaskControl) -> Result<Step, RuntimeError> {
        if self.refreshed.is_none_or(|at| at.elapsed() >= METADATA_REFRESH) {
            self.refresh()?;
        }
        if control.interrupted() {
            return Ok(Step::Idle);
        }
        let written = self.round()?;
        Ok(if written > 0 { Step::Progress } else { Step::Idle })
    }

    fn reset(&mut self) {
        self.client = None;
        self.refreshed = None;
    }
}
