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

use sluice_broker::host::{Host, now_ms};
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
/// How often the mirrored topics' settings are compared with the source's.
pub const CONFIG_SYNC_INTERVAL: Duration = Duration::from_secs(15);
/// How often the selected groups' committed offsets are copied.
pub const GROUP_SYNC_INTERVAL: Duration = Duration::from_secs(5);
/// Most source groups one mirror syncs (each costs a FindCoordinator and an OffsetFetch per round).
pub const GROUPS_MAX: usize = 1000;
/// Longest one round of group offset fetches may take.
const GROUP_SYNC_TIMEOUT: Duration = Duration::from_secs(30);
/// Requests to the source in flight at once for config and group sync.
pub const SOURCE_REQUESTS_CONCURRENT: usize = 16;
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
    /// Partitions whose copy no longer matches the source, with why: never written again.
    diverged: BTreeMap<(String, i32), String>,
    /// Turns the partition order of fetches.
    rotation: usize,
    groups_synced: Option<Instant>,
    configs_synced: Option<Instant>,
}

impl MirrorTask {
    pub fn new(host: Host, shared: Arc<MirrorShared>) -> MirrorTask {
        MirrorTask {
            host,
            shared,
            client: None,
            topics: BTreeMap::new(),
            refreshed: None,
            skip_to: BTreeMap::new(),
            diverged: BTreeMap::new(),
            rotation: 0,
            groups_synced: None,
            configs_synced: None,
        }
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
        let meta = self.block_on(CONNECT_TIMEOUT, "reading metadata", self.client()?.metadata(None))?;
        let promoted = self.shared.promoted();
        let mut topics = BTreeMap::new();
        for topic in meta.topics.into_iter().filter(|t| !t.internal && t.error_code == 0 && self.shared.topic_selection.wants(&t.name)) {
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
                let configs = self.source_configs(name).unwrap_or_else(|error| {
                    tracing::warn!(mirror = self.name(), topic = name, %error, "cannot read the source topic's configs; the copy starts with the defaults");
                    BTreeMap::new()
                });
                let created = self.host.create_mirror_topic(name, partitions, &configs, self.name(), source.id.as_deref())?;
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
                if let (Some(copied), Some(now)) = (self.host.mirror_source_id(name), source.id.as_ref())
                    && &copied != now
                {
                    return Err(RuntimeError::Invalid(format!(
                        "the source topic '{name}' was deleted and created again (its id changed from {copied} to {now}); the copy here is kept as it is and no longer mirrored: delete it here to mirror the new topic, or promote it"
                    )));
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
    fn source_configs(&self, topic: &str) -> Result<BTreeMap<String, String>, RuntimeError> {
        let keys: Vec<String> = COPIED_CONFIGS.iter().map(|k| k.to_string()).collect();
        let resource = ConfigResource::Topic(topic.to_string());
        let entries =
            self.block_on(CONNECT_TIMEOUT, "describing topic configs", self.client()?.describe_configs(&resource, Some(&keys)))?;
        Ok(copied_configs(entries))
    }

    /// Brings every mirror topic's copied settings in line with the source's (changed, added or
    /// removed there since the copy was made).
    fn sync_configs(&mut self) {
        self.configs_synced = Some(Instant::now());
        let Ok(client) = self.client() else { return };
        let keys: Vec<String> = COPIED_CONFIGS.iter().map(|k| k.to_string()).collect();
        let names: Vec<String> = self.topics.keys().cloned().collect();
        // One DescribeConfigs per topic, SOURCE_REQUESTS_CONCURRENT at a time: over a link with
        // latency, one after another would hold the copy up for a round trip per topic.
        let described = self.block_on(CONFIG_SYNC_INTERVAL, "describing topic configs", async {
            use futures::StreamExt;
            let asks = names.iter().map(|topic| {
                let keys = &keys;
                async move { (topic.clone(), client.describe_configs(&ConfigResource::Topic(topic.clone()), Some(keys)).await) }
            });
            Ok(futures::stream::iter(asks).buffer_unordered(SOURCE_REQUESTS_CONCURRENT).collect::<Vec<_>>().await)
        });
        let Ok(described) = described else { return };
        // Under the lock promotion takes: a topic promoted meanwhile must not get its mirror
        // settings written back.
        let shared = Arc::clone(&self.shared);
        let _writing = shared.writing.lock();
        let promoted = shared.promoted();
        for (topic, entries) in described.into_iter().filter(|(t, _)| !promoted.contains(t)) {
            let synced = entries.map_err(|e| RuntimeError::Invalid(e.to_string())).and_then(|entries| {
                Ok(self.host.sync_mirror_topic_configs(&topic, self.name(), COPIED_CONFIGS, &copied_configs(entries))?)
            });
            if let Err(error) = synced {
                tracing::warn!(mirror = self.name(), topic, %error, "topic settings not synced this round");
            }
        }
    }

    /// Copies the selected groups' committed offsets on mirrored partitions, each clamped to the
    /// copy's end (a consumer that fails over must not be sent past what is here, or its
    /// `auto.offset.reset` would move it). A group with active members here is left alone.
    fn sync_groups(&mut self) -> Result<(), RuntimeError> {
        self.groups_synced = Some(Instant::now());
        let Some(selection) = self.shared.group_selection.clone() else { return Ok(()) };
        let client = self.client()?;
        let listed = self.block_on(CONNECT_TIMEOUT, "listing groups", client.list_all_groups())?;
        let mut state = BTreeMap::new();
        let selected: Vec<String> =
            listed.into_iter().map(|g| g.group_id).filter(|g| !g.starts_with("__") && selection.is_match(g)).take(GROUPS_MAX).collect();
        // Each group: FindCoordinator + OffsetFetch, SOURCE_REQUESTS_CONCURRENT groups at a time.
        let fetched = self.block_on(GROUP_SYNC_TIMEOUT, "fetching group offsets", async {
            use futures::StreamExt;
            let asks = selected.into_iter().map(|group| async move {
                let offsets = client.group_offsets(&group, None).await;
                (group, offsets)
            });
            Ok(futures::stream::iter(asks).buffer_unordered(SOURCE_REQUESTS_CONCURRENT).collect::<Vec<_>>().await)
        })?;
        // Under the lock promotion takes, and against the promoted set as it is now.
        let shared = Arc::clone(&self.shared);
        let _writing = shared.writing.lock();
        let promoted = shared.promoted();
        for (group, offsets) in fetched {
            let mut sync = crate::state::GroupSync::default();
            match offsets {
                Ok(offsets) => {
                    let mut entries = Vec::new();
                    for (topic, partitions) in offsets.into_iter().filter(|(t, _)| self.topics.contains_key(t) && !promoted.contains(t)) {
                        for (partition, offset) in partitions {
                            let Ok(end) = self.host.partition_offsets(&topic, partition).map(|o| o.high_watermark) else { continue };
                            entries.push((topic.clone(), partition, offset.min(end)));
                        }
                    }
                    sync.partitions = entries.len();
                    match self.host.sync_group_offsets(&self.shared.name, &group, &entries) {
                        Ok(_) => sync.synced_at_ms = Some(now_ms()),
                        Err(error) => sync.error = Some(error.to_string()),
                    }
                }
                Err(error) => sync.error = Some(error.to_string()),
            }
            state.insert(group, sync);
        }
        // A source that answered is reachable, whatever one group's fetch said.
        self.shared.set_source_error(None);
        self.shared.set_groups(state);
        Ok(())
    }

    /// One fetch round over every mirrored partition; returns the bytes written.
    fn round(&mut self) -> Result<u64, RuntimeError> {
        let promoted = self.shared.promoted();
        let mut wanted: Vec<(i32, PartitionFetch)> = Vec::new();
        // (copy end, fetch offset) per partition asked for.
        let mut requested: BTreeMap<(String, i32), (i64, i64)> = BTreeMap::new();
        let mut stale_metadata = false;
        for (name, topic) in &self.topics {
            if promoted.contains(name) {
                continue;
            }
            for partition in &topic.partitions {
                let key = (name.clone(), partition.id);
                if let Some(why) = self.diverged.get(&key) {
                    let why = why.clone();
                    self.shared.progress(name, partition.id, |p| p.error = Some(why));
                    continue;
                }
                let end = match self.host.partition_offsets(name, partition.id) {
                    Ok(offsets) => offsets.high_watermark,
                    Err(error) => {
                        // The copy was deleted on this cluster, or is being grown: the next refresh
                        // creates or grows it again. The other partitions go on.
                        stale_metadata = true;
                        self.shared.progress(name, partition.id, |p| p.error = Some(error.to_string()));
                        continue;
                    }
                };
                let offset = self.skip_to.get(&key).copied().filter(|&skip| skip > end).unwrap_or(end);
                if partition.leader < 0 {
                    self.shared.progress(name, partition.id, |p| p.error = Some("the source partition has no leader".into()));
                    continue;
                }
                requested.insert(key, (end, offset));
                wanted.push((
                    partition.leader,
                    PartitionFetch { topic: name.clone(), partition: partition.id, offset, max_bytes: FETCH_PARTITION_BYTES },
                ));
            }
        }
        if stale_metadata {
            self.refreshed = None;
        }
        if wanted.is_empty() {
            std::thread::sleep(Duration::from_millis(FETCH_MAX_WAIT_MS as u64));
            return Ok(0);
        }
        // A batch larger than a partition's share comes back whole only for the first partition of
        // an answer (KIP-74): rotate the order every round, as Kafka's consumers do, so that every
        // partition gets to be first.
        self.rotation = self.rotation.wrapping_add(1);
        let turn = self.rotation % wanted.len();
        wanted.rotate_left(turn);
        let mut by_leader: BTreeMap<i32, Vec<PartitionFetch>> = BTreeMap::new();
        for (leader, want) in wanted {
            by_leader.entry(leader).or_default().push(want);
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
        let mut written = 0;
        let mut out_of_range = Vec::new();
        {
            // Promotion waits for this: no append lands in a topic while it is being promoted.
            let shared = Arc::clone(&self.shared);
            let _writing = shared.writing.lock();
            let promoted = self.shared.promoted();
            for answer in answers {
                let key = (answer.topic.clone(), answer.partition);
                let Some(&(end, offset)) = requested.get(&key) else { continue };
                if promoted.contains(&answer.topic) {
                    continue;
                }
                match self.apply(&answer, end, offset) {
                    Ok(bytes) => written += bytes,
                    Err(Applied::OutOfRange) => out_of_range.push((key, end)),
                    Err(Applied::Stale(error)) => {
                        self.refreshed = None;
                        self.shared.progress(&answer.topic, answer.partition, |p| p.error = Some(error));
                    }
                    Err(Applied::Diverged(error)) => {
                        tracing::error!(mirror = self.name(), topic = answer.topic, partition = answer.partition, %error, "partition no longer mirrored");
                        self.shared.progress(&answer.topic, answer.partition, |p| p.error = Some(error.clone()));
                        self.diverged.insert(key, error);
                    }
                    Err(Applied::Failed(error)) => {
                        tracing::warn!(mirror = self.name(), topic = answer.topic, partition = answer.partition, %error, "partition not mirrored");
                        self.shared.progress(&answer.topic, answer.partition, |p| p.error = Some(error));
                    }
                }
            }
        }
        // Outside the lock: asking the source for its log start may take a while.
        for ((topic, partition), end) in out_of_range {
            match self.out_of_range(&topic, partition, end) {
                Ok(()) => {}
                Err(Applied::Diverged(error)) => {
                    self.shared.progress(&topic, partition, |p| p.error = Some(error.clone()));
                    self.diverged.insert((topic, partition), error);
                }
                Err(Applied::Stale(error) | Applied::Failed(error)) => {
                    self.refreshed = None;
                    self.shared.progress(&topic, partition, |p| p.error = Some(error));
                }
                Err(Applied::OutOfRange) => {}
            }
        }
        Ok(written)
    }

    /// Appends one partition's answer (asked from `offset`; the copy ends at `end`); returns the
    /// bytes written.
    fn apply(&mut self, answer: &FetchedPartition, end: i64, offset: i64) -> Result<u64, Applied> {
        let (topic, partition) = (answer.topic.as_str(), answer.partition);
        if let Some(error) = &answer.error {
            if error.code == OFFSET_OUT_OF_RANGE {
                return Err(Applied::OutOfRange);
            }
            // NOT_LEADER_OR_FOLLOWER, UNKNOWN_TOPIC_OR_PARTITION and the like: ask the source again.
            return Err(Applied::Stale(format!("the source answered {error}")));
        }
        let batches = sluice_client::records::split_batches(&answer.records).map_err(|e| Applied::Failed(e.to_string()))?;
        let mut bytes = Vec::new();
        let mut last_timestamp = None;
        for batch in batches.iter().filter(|b| b.last_offset >= offset) {
            // After a skip the fetch starts at the source's log start, which may lie inside a batch
            // (DeleteRecords): that batch is copied whole. A batch reaching below the copy's end
            // means the two logs are not the same log.
            if batch.base_offset < end {
                return Err(Applied::Diverged(format!(
                    "the source's batch {}..={} straddles the copy's end {end}: the logs have diverged (was the source topic recreated?); the copy is kept as it is",
                    batch.base_offset, batch.last_offset
                )));
            }
            bytes.extend_from_slice(&batch.bytes);
            last_timestamp = Some(max_timestamp(&batch.bytes));
        }
        let now = now_ms();
        if bytes.is_empty() {
            if end > answer.high_watermark && answer.high_watermark >= 0 {
                return Err(Applied::Diverged(format!(
                    "the copy ends at offset {end}, past the source's high watermark {}: the logs have diverged (was the source topic recreated or truncated?); the copy is kept as it is",
                    answer.high_watermark
                )));
            }
            if !answer.records.is_empty() {
                // Only part of a batch came back (it is larger than this partition's share): the
                // rotation makes this partition first in a later round, where it comes whole.
                self.shared.progress(topic, partition, |p| {
                    p.observe(answer.high_watermark, end, now);
                    p.error = Some("waiting for a batch larger than a fetch share to come back whole".into());
                });
                return Ok(0);
            }
            self.shared.progress(topic, partition, |p| p.observe(answer.high_watermark, end, now));
            return Ok(0);
        }
        let appended =
            self.host.append_mirrored(topic, partition, &self.shared.name, &mut bytes).map_err(|e| Applied::Failed(e.to_string()))?;
        // The first batch after a skip has landed: the gap stays (as after compaction), and what the
        // copy held before it is kept.
        self.skip_to.remove(&(topic.to_string(), partition));
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
            return Err(Applied::Diverged(format!(
                "the copy ends at offset {offset}, past the source's log: the logs have diverged (was the source topic recreated or truncated?); the copy is kept as it is"
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
    /// OFFSET_OUT_OF_RANGE: see `out_of_range`.
    OutOfRange,
    /// The source's metadata changed (leader moved, topic deleted): refresh and try again.
    Stale(String),
    /// The copy and the source are no longer the same log: the partition stops being mirrored
    /// (until the broker restarts) and says why.
    Diverged(String),
    Failed(String),
}

/// The settings a copy takes over: those of [`COPIED_CONFIGS`] set explicitly on the source topic.
fn copied_configs(entries: Vec<sluice_client::ConfigEntry>) -> BTreeMap<String, String> {
    entries
        .into_iter()
        .filter(|e| e.source == sluice_client::ConfigSource::Topic && COPIED_CONFIGS.contains(&e.name.as_str()))
        .filter_map(|e| e.value.map(|v| (e.name, v)))
        .collect()
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
        if self.configs_synced.is_none_or(|at| at.elapsed() >= CONFIG_SYNC_INTERVAL) {
            self.sync_configs();
        }
        if self.groups_synced.is_none_or(|at| at.elapsed() >= GROUP_SYNC_INTERVAL)
            && let Err(error) = self.sync_groups()
        {
            // Copying records goes on; the status shows the error.
            tracing::warn!(mirror = self.name(), %error, "group offsets not synced this round");
        }
        Ok(if written > 0 { Step::Progress } else { Step::Idle })
    }

    fn reset(&mut self) {
        self.client = None;
        self.refreshed = None;
    }
}
