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
//!
//! In rename mode the source is read read_committed and its records are written again, under the
//! name the policy gives (a `mirror-policy` Wasm instance, asked once per topic; it may also leave
//! groups out and, when it says so at `init`, drop or rewrite records), by one broker transaction
//! per round that also commits each partition's next source offset (as the offset of the group [`position_group`] on the target partition). A
//! crash aborts the open transaction; the task's next start fences it and resumes from the committed
//! positions, so no record is lost or written twice. Each record carries the cluster it was first
//! written on ([`ORIGIN_HEADER`]); records that originated on this cluster are not copied back.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_broker::host::{Host, HostError, ProducerRecord, ReaderLimits, TransactionalProducer, now_ms};
use sluice_client::{
    Client, ClientOptions, ConfigResource, FetchOptions, FetchedPartition, Isolation, OffsetSpec, PartitionFetch, PendingFetch,
};
use sluice_runtime::{Plugins, RuntimeError, Step, Task, TaskControl};
use sluice_wasm::{InputRecord, InstanceConfig, PolicyInstance, PolicyModule, RecordAction};

use crate::offset_map::{OffsetMap, Run};
use crate::spec::{Mode, ORIGIN_HEADER};
use crate::state::{MirrorShared, PartitionProgress};

/// How often the source's topic list and partition counts are read again.
pub const METADATA_REFRESH: Duration = Duration::from_secs(10);
/// Bytes asked per partition per fetch, and per fetch in all. A round costs one round trip to the
/// source, so what one fetch may carry bounds the rate over a link with latency (measured with 50 ms
/// of round trip: 1 MiB per partition gave 65 MiB/s): large shares keep the link busy, and the
/// total stays below a Kafka broker's default `fetch.max.bytes` (50 MiB) and our
/// `fetch.reply.memory.max.bytes` (64 MiB).
pub const FETCH_PARTITION_BYTES: i32 = 8 << 20;
pub const FETCH_BYTES: i32 = 32 << 20;
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

/// Largest file of rename mode's copy names (a name is at most 249 bytes; a mirror copies at most a
/// few thousand topics).
const TARGETS_FILE_BYTES_MAX: u64 = 16 << 20;

/// Where a rename-mode mirror keeps the name of each source topic's copy.
pub fn targets_path(host: &Host, mirror: &str) -> Result<std::path::PathBuf, RuntimeError> {
    let dir = host.data_dir()?.join("targets");
    std::fs::create_dir_all(&dir).map_err(|e| RuntimeError::file(&dir, e))?;
    Ok(dir.join(format!("{mirror}.json")))
}

/// Most bytes of records (keys, values, headers) passed to one `filter` call: what the guest holds
/// of a call stays well inside its default memory (64 MiB), however large the fetched batch.
pub const FILTER_CALL_BYTES_MAX: usize = 8 << 20;

/// Largest append buffer kept between rounds: a partition's fetch share plus room for its last batch.
const APPEND_BUFFER_KEEP_BYTES: usize = 2 * FETCH_PARTITION_BYTES as usize;

/// Kafka error codes the loop reacts to.
const OFFSET_OUT_OF_RANGE: i16 = 1;
/// Rename mode's transaction timeout: a round's writes and commit take far less.
const TXN_TIMEOUT_MS: i32 = 60_000;

/// The group whose committed offsets on a rename-mode target partition are the mirror's next source
/// offsets; also the mirror's transactional id.
pub fn position_group(mirror: &str) -> String {
    format!("__sluice-mirror-{mirror}")
}

pub struct MirrorTask {
    host: Host,
    plugins: Plugins,
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
    /// Rename mode: the transactional producer (opened, fencing the previous one, at start).
    producer: Option<TransactionalProducer>,
    /// Rename mode: each partition's next source offset, as last committed.
    positions: BTreeMap<(String, i32), i64>,
    /// Rename mode: partitions with no committed position yet, read from the source's log start
    /// (records below it were never anyone's to copy, so none count as lost).
    fresh: BTreeSet<(String, i32)>,
    /// The source cluster's id (what rename mode's origin header says), from the last refresh.
    source_cluster: Option<String>,
    /// Rename mode: the source → target offset map group offsets are translated with.
    map: Option<OffsetMap>,
    /// The next round's fetches, sent before this round's answers were written (a round trip to
    /// the source overlaps the writing).
    prefetch: Option<Prefetch>,
    /// Preserve mode: the buffer one partition's batches are gathered in before they are appended,
    /// kept between rounds. A fresh buffer per append grew new memory every round: reallocation
    /// copies and page faults zeroing it were 29 % of the target's samples, 12 % with the kept
    /// buffer (BENCHMARKS.md, issue 13).
    append_buffer: Vec<u8>,
    /// Rename mode: the replication policy's instance (made again after it traps).
    policy: Option<PolicyInstance>,
    /// The module `policy` was made from, to make its successor on optimized code from.
    policy_module: Option<PolicyModule>,
    /// Rename mode: source topics the policy left out (or named after another topic's copy), not
    /// asked about again while the task runs.
    left_out: BTreeSet<String>,
}

/// Fetches sent, with the offset each partition was asked from.
struct Prefetch {
    asked: BTreeMap<(String, i32), i64>,
    pending: Vec<PendingFetch>,
}

impl MirrorTask {
    pub fn new(host: Host, plugins: Plugins, shared: Arc<MirrorShared>) -> MirrorTask {
        MirrorTask {
            host,
            plugins,
            shared,
            client: None,
            topics: BTreeMap::new(),
            refreshed: None,
            skip_to: BTreeMap::new(),
            diverged: BTreeMap::new(),
            rotation: 0,
            groups_synced: None,
            configs_synced: None,
            producer: None,
            positions: BTreeMap::new(),
            fresh: BTreeSet::new(),
            source_cluster: None,
            map: None,
            prefetch: None,
            append_buffer: Vec::new(),
            policy: None,
            policy_module: None,
            left_out: BTreeSet::new(),
        }
    }

    /// The topic `source` is copied to (its own name in preserve mode).
    fn target(&self, source: &str) -> String {
        self.shared.target_of(source).unwrap_or_else(|| source.to_string())
    }

    /// Rename mode: makes the policy's instance (from the registry module the spec names) unless a
    /// usable one is running.
    fn ensure_policy(&mut self) -> Result<&mut PolicyInstance, RuntimeError> {
        // A poisoned instance is replaced from the registry, by the module's name. One on baseline
        // code whose optimized code is now ready is replaced from the same module version: moving to
        // better code is not a reload, and must not fail because the name was deleted meanwhile.
        if let Some(policy) = &self.policy {
            if policy.poisoned().is_some() {
                self.policy = None;
                self.policy_module = None;
            } else if policy.superseded() {
                self.policy = None;
            }
        }
        if self.policy.is_none() {
            let module = self.shared.spec.policy_module().to_string();
            let policy = match &self.policy_module {
                Some(policy) => policy.clone(),
                None => {
                    let registry = self.plugins.registry()?;
                    let info = registry.get(&module).ok_or_else(|| {
                        RuntimeError::Invalid(format!(
                            "policy module '{module}' is not in the broker's registry; upload it again under that name"
                        ))
                    })?;
                    registry.load(&info.digest)?.mirror_policy().map_err(|e| policy_error(&module, e))?
                }
            };
            let mut config = InstanceConfig::new(&format!("mirror-policy/{}", self.name()));
            config.config = self.shared.spec.policy_config.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            let instance = policy.instantiate(config, self.shared.spec.alias()).map_err(|e| policy_error(&module, e))?;
            tracing::info!(
                mirror = self.name(),
                policy = module,
                filters_records = instance.filters_records(),
                code = instance.tier().name(),
                "replication policy loaded"
            );
            self.policy = Some(instance);
            self.policy_module = Some(policy);
        }
        Ok(self.policy.as_mut().expect("made above"))
    }

    /// Rename mode: asks the policy about the topics it has not answered for yet, in name order. A
    /// name is kept for as long as the mirror exists (`targets_path`, written before anything is
    /// copied under it): a position belongs to its copy, so a copy is never renamed, even if the
    /// policy changes its mind after a restart. A name another source topic is copied to already,
    /// or one Kafka refuses, leaves the later topic out with the reason as its error.
    fn name_targets(&mut self, topics: &[String]) -> Result<(), RuntimeError> {
        let named = self.shared.targets();
        let mut unnamed: Vec<String> = topics.iter().filter(|t| !named.contains_key(*t) && !self.left_out.contains(*t)).cloned().collect();
        unnamed.sort();
        let module = self.shared.spec.policy_module().to_string();
        let mut added = false;
        for chunk in unnamed.chunks(sluice_wasm::POLICY_NAMES_PER_CALL_MAX) {
            let names = self.ensure_policy()?.target_topics(chunk).map_err(|e| policy_error(&module, e))?;
            for (source, target) in chunk.iter().zip(names) {
                let target = match target {
                    Ok(Some(target)) => target,
                    Ok(None) => {
                        self.left_out.insert(source.clone());
                        continue;
                    }
                    Err(why) => {
                        self.shared.set_topic_error(source, Some(format!("replication policy '{module}': {why}")));
                        self.left_out.insert(source.clone());
                        continue;
                    }
                };
                match self.shared.set_target(source, &target) {
                    Ok(()) => added = true,
                    Err(other) => {
                        let error = format!("policy '{module}' names it '{target}', which topic '{other}' is copied to already");
                        self.shared.set_topic_error(source, Some(error));
                        self.left_out.insert(source.clone());
                    }
                }
            }
        }
        if added {
            let json = serde_json::to_vec_pretty(&self.shared.targets()).map_err(|e| RuntimeError::Invalid(e.to_string()))?;
            sluice_broker::host::write_file_atomically(&targets_path(&self.host, self.name())?, &json)?;
        }
        Ok(())
    }

    /// Rename mode: the copies named in earlier runs of this mirror.
    fn load_targets(&mut self) -> Result<(), RuntimeError> {
        let path = targets_path(&self.host, self.name())?;
        let bytes = match std::fs::metadata(&path) {
            Ok(meta) if meta.len() > TARGETS_FILE_BYTES_MAX => {
                return Err(RuntimeError::file(&path, format!("{} bytes is larger than any names file Sluice writes", meta.len())));
            }
            Ok(_) => std::fs::read(&path).map_err(|e| RuntimeError::file(&path, e))?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(error) => return Err(RuntimeError::file(&path, error)),
        };
        let stored: BTreeMap<String, String> = serde_json::from_slice(&bytes).map_err(|e| RuntimeError::file(&path, e))?;
        for (source, target) in stored {
            // Written by `name_targets`, which never gives two topics one copy.
            if let Err(other) = self.shared.set_target(&source, &target) {
                return Err(RuntimeError::file(&path, format!("topics '{other}' and '{source}' share the copy '{target}'")));
            }
        }
        Ok(())
    }

    fn renames(&self) -> bool {
        self.shared.spec.mode == Mode::Rename
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
        // A cluster without an id (very old Kafka) is named by its alias.
        self.source_cluster = Some(meta.cluster_id.clone().unwrap_or_else(|| self.shared.spec.alias().to_string()));
        let promoted = self.shared.promoted();
        let selected: Vec<sluice_client::TopicInfo> = meta
            .topics
            .into_iter()
            .filter(|t| !t.internal && t.error_code == 0 && self.shared.topic_selection.wants(&t.name) && !promoted.contains(&t.name))
            .collect();
        if self.renames() {
            self.name_targets(&selected.iter().map(|t| t.name.clone()).collect::<Vec<_>>())?;
        }
        let mut topics = BTreeMap::new();
        for topic in selected {
            if self.renames() && self.shared.target_of(&topic.name).is_none() {
                // The policy left it out (or its name is taken: the topic error says so).
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
        if self.renames() {
            return self.ensure_renamed_target(source);
        }
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

    /// Rename mode's target topic: a normal, writable topic named by the policy, created with the
    /// source's partition count and explicit configs and grown with it. An existing topic of that
    /// name is written into (as MirrorMaker 2 does) unless it is another mirror's read-only copy.
    fn ensure_renamed_target(&self, source: &sluice_client::TopicInfo) -> Result<(), RuntimeError> {
        let target = self.target(&source.name);
        let partitions = source.partitions.len() as i32;
        match self.host.topic(&target) {
            None => {
                let configs = self.source_configs(&source.name).unwrap_or_else(|error| {
                    tracing::warn!(mirror = self.name(), topic = source.name, %error, "cannot read the source topic's configs; the copy starts with the defaults");
                    BTreeMap::new()
                });
                let created = self.host.create_topic(&target, Some(partitions), &configs)?;
                tracing::info!(
                    mirror = self.name(),
                    topic = source.name,
                    target,
                    partitions = created.partitions,
                    "created a renamed copy"
                );
            }
            Some(existing) => {
                if let Some(owner) = self.host.mirror_of(&target) {
                    return Err(RuntimeError::Invalid(format!(
                        "the target topic '{target}' is a read-only copy of mirror '{owner}'; exclude '{}' or promote '{target}' there first",
                        source.name
                    )));
                }
                if existing.partitions < partitions {
                    self.host.create_partitions(&target, partitions)?;
                    tracing::info!(mirror = self.name(), target, from = existing.partitions, to = partitions, "renamed copy grew");
                }
            }
        }
        Ok(())
    }

    /// Rename mode: where a partition's copy resumes (its committed position, read once per start).
    fn position(&mut self, topic: &str, partition: i32) -> Result<i64, HostError> {
        let key = (topic.to_string(), partition);
        if let Some(&position) = self.positions.get(&key) {
            return Ok(position);
        }
        let target = self.target(topic);
        let position = match self.host.committed_offset(&position_group(self.name()), &target, partition)? {
            Some(offset) => offset,
            None => {
                self.fresh.insert(key.clone());
                0
            }
        };
        // Runs past the committed position belong to a round that did not commit.
        if let Some(map) = self.map.as_mut() {
            map.truncate_from(topic, partition, position);
        }
        self.positions.insert(key, position);
        Ok(position)
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
                let configs = copied_configs(entries);
                Ok(if self.renames() {
                    let target = self.target(&topic);
                    self.host.sync_renamed_topic_configs(&target, self.name(), COPIED_CONFIGS, &configs)?
                } else {
                    self.host.sync_mirror_topic_configs(&topic, self.name(), COPIED_CONFIGS, &configs)?
                })
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
        let listed = self.block_on(CONNECT_TIMEOUT, "listing groups", self.client()?.list_all_groups())?;
        let mut state = BTreeMap::new();
        let mut selected: Vec<String> =
            listed.into_iter().map(|g| g.group_id).filter(|g| !g.starts_with("__") && selection.is_match(g)).take(GROUPS_MAX).collect();
        if self.renames() && !selected.is_empty() {
            let module = self.shared.spec.policy_module().to_string();
            let keep = self.ensure_policy()?.select_groups(&selected).map_err(|e| policy_error(&module, e))?;
            let mut keep = keep.into_iter();
            selected.retain(|_| keep.next().unwrap_or(false));
        }
        let client = self.client()?;
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
                            if let Some(map) = &self.map {
                                // Rename mode: the target offset of the first copied record at or
                                // after the group's; nothing while none is copied, nor before this
                                // run has read the partition's committed position (until then the
                                // map may still hold runs of a round that never committed).
                                if !self.positions.contains_key(&(topic.clone(), partition)) {
                                    continue;
                                }
                                let Some(translated) = map.translate(&topic, partition, offset) else { continue };
                                entries.push((self.target(&topic), partition, translated));
                                continue;
                            }
                            let Ok(end) = self.host.partition_offsets(&topic, partition).map(|o| o.high_watermark) else { continue };
                            entries.push((topic.clone(), partition, offset.min(end)));
                        }
                    }
                    sync.partitions = entries.len();
                    let written = if self.renames() {
                        self.host.sync_translated_group_offsets(&group, &entries)
                    } else {
                        self.host.sync_group_offsets(&self.shared.name, &group, &entries)
                    };
                    match written {
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
        let partitions: Vec<(String, i32, i32)> = self
            .topics
            .iter()
            .filter(|(name, _)| !promoted.contains(*name))
            .flat_map(|(name, topic)| topic.partitions.iter().map(move |p| (name.clone(), p.id, p.leader)))
            .collect();
        for (name, id, leader) in partitions {
            let name = &name;
            let key = (name.clone(), id);
            if let Some(why) = self.diverged.get(&key) {
                let why = why.clone();
                self.shared.progress(name, id, |p| p.error = Some(why));
                continue;
            }
            let copy_end = if self.shared.spec.mode == Mode::Rename {
                let target = self.target(name);
                self.host.partition_offsets(&target, id).map(|_| None)
            } else {
                self.host.partition_offsets(name, id).map(|offsets| Some(offsets.high_watermark))
            };
            let end = match copy_end.and_then(|end| end.map_or_else(|| self.position(name, id), Ok)) {
                Ok(end) => end,
                Err(error) => {
                    // The copy was deleted on this cluster, or is being grown: the next refresh
                    // creates or grows it again. The other partitions go on.
                    stale_metadata = true;
                    self.shared.progress(name, id, |p| p.error = Some(error.to_string()));
                    continue;
                }
            };
            let offset = self.skip_to.get(&key).copied().filter(|&skip| skip > end).unwrap_or(end);
            if leader < 0 {
                self.shared.progress(name, id, |p| p.error = Some("the source partition has no leader".into()));
                continue;
            }
            requested.insert(key, (end, offset));
            wanted.push((leader, PartitionFetch { topic: name.clone(), partition: id, offset, max_bytes: FETCH_PARTITION_BYTES }));
        }
        if stale_metadata {
            self.refreshed = None;
        }
        if wanted.is_empty() {
            std::thread::sleep(Duration::from_millis(FETCH_MAX_WAIT_MS as u64));
            return Ok(0);
        }
        // Rename mode writes records again: an aborted transaction's must never be among them.
        let isolation = if self.renames() { Isolation::ReadCommitted } else { Isolation::ReadUncommitted };
        let options = FetchOptions { max_wait_ms: FETCH_MAX_WAIT_MS, min_bytes: 1, max_bytes: FETCH_BYTES, isolation };
        // The fetches sent last round (or, without them, fetches sent now), answered; used for the
        // partitions still wanted from the offset they were asked from.
        let sent = match self.prefetch.take() {
            Some(prefetch) => prefetch,
            None => self.send_fetches(&wanted, &options)?,
        };
        let answers = self.block_on(FETCH_TIMEOUT, "fetching", async {
            let mut all = Vec::new();
            for answer in futures::future::join_all(sent.pending.into_iter().map(PendingFetch::wait)).await {
                all.extend(answer?);
            }
            Ok(all)
        })?;
        let answers: Vec<FetchedPartition> = answers
            .into_iter()
            .filter(|a| {
                let key = (a.topic.clone(), a.partition);
                sent.asked.get(&key).is_some_and(|asked| requested.get(&key).is_some_and(|&(_, offset)| offset == *asked))
            })
            .collect();
        // Send the next round's fetches now, from where these answers leave each partition, so that
        // the round trip overlaps the writing below. A partition whose answer is not written as
        // predicted (an error, a skip) is asked again next round.
        let ends: BTreeMap<(&str, i32), i64> = answers
            .iter()
            .filter(|a| a.error.is_none())
            .filter_map(|a| sluice_client::records::whole_batches_end(&a.records).map(|end| ((a.topic.as_str(), a.partition), end)))
            .collect();
        let mut next = wanted;
        for (_, want) in next.iter_mut() {
            if let Some(&end) = ends.get(&(want.topic.as_str(), want.partition)) {
                want.offset = want.offset.max(end);
            }
        }
        // A prefetch that could not be sent is a fetch made next round.
        self.prefetch = self.send_fetches(&next, &options).ok();
        self.shared.set_source_error(None);
        let mut written = 0;
        let mut out_of_range = Vec::new();
        let mut staged = Vec::new();
        let mut aborting = None;
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
                let applied = if self.renames() {
                    self.stage(&answer, offset).map(|stage| {
                        staged.extend(stage);
                        0
                    })
                } else {
                    self.apply(&answer, end, offset)
                };
                match applied {
                    Ok(bytes) => written += bytes,
                    Err(Applied::Abort(error)) => {
                        aborting = Some(error);
                        break;
                    }
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
        if let Some(error) = aborting {
            self.abort_round();
            return Err(RuntimeError::Invalid(error));
        }
        if !staged.is_empty() {
            written += self.commit_round(staged)?;
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
                Err(Applied::OutOfRange | Applied::Abort(_)) => {}
            }
        }
        Ok(written)
    }

    /// Sends one Fetch per source leader (answers are awaited later), the partition order turned
    /// every call: a batch larger than a partition's share comes back whole only for the first
    /// partition of an answer (KIP-74), so every partition gets to be first, as with Kafka's
    /// consumers.
    fn send_fetches(&mut self, wanted: &[(i32, PartitionFetch)], options: &FetchOptions) -> Result<Prefetch, RuntimeError> {
        let asked = wanted.iter().map(|(_, w)| ((w.topic.clone(), w.partition), w.offset)).collect();
        let mut wanted = wanted.to_vec();
        self.rotation = self.rotation.wrapping_add(1);
        if !wanted.is_empty() {
            let turn = self.rotation % wanted.len();
            wanted.rotate_left(turn);
        }
        let mut by_leader: BTreeMap<i32, Vec<PartitionFetch>> = BTreeMap::new();
        for (leader, want) in wanted {
            by_leader.entry(leader).or_default().push(want);
        }
        let client = self.client()?;
        let pending = self.block_on(CONNECT_TIMEOUT, "fetching", async {
            let mut pending = Vec::new();
            for (leader, wants) in &by_leader {
                pending.push(client.send_fetch(*leader, wants, options).await?);
            }
            Ok(pending)
        })?;
        Ok(Prefetch { asked, pending })
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
        // One buffer for every append, kept between rounds (see `append_buffer`).
        let mut bytes = std::mem::take(&mut self.append_buffer);
        bytes.clear();
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
            self.append_buffer = bytes;
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
        let appended = self.host.append_mirrored(topic, partition, &self.shared.name, &mut bytes);
        if bytes.capacity() <= APPEND_BUFFER_KEEP_BYTES {
            self.append_buffer = bytes;
        }
        let appended = appended.map_err(|e| Applied::Failed(e.to_string()))?;
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

    /// Rename mode: decodes one partition's answer (read_committed, from the copy's position
    /// `offset`) and writes its records into the round's transaction under the target name, each
    /// with its origin. Records that originated on this cluster are left out (no loops).
    fn stage(&mut self, answer: &FetchedPartition, offset: i64) -> Result<Option<Staged>, Applied> {
        let (topic, partition) = (answer.topic.as_str(), answer.partition);
        if let Some(error) = &answer.error {
            if error.code == OFFSET_OUT_OF_RANGE {
                return Err(Applied::OutOfRange);
            }
            return Err(Applied::Stale(format!("the source answered {error}")));
        }
        if offset > answer.high_watermark && answer.high_watermark >= 0 {
            return Err(Applied::Diverged(format!(
                "the copy's position {offset} is past the source's high watermark {}: was the source topic recreated or truncated? Delete the mirror's position to copy it again",
                answer.high_watermark
            )));
        }
        let aborted: Vec<(i64, i64)> = answer.aborted_transactions.iter().map(|a| (a.producer_id, a.first_offset)).collect();
        let fetched = sluice_broker::host::decode_fetched(&answer.records, &aborted, offset, &ReaderLimits::default())
            .map_err(|e| Applied::Failed(e.to_string()))?;
        let now = now_ms();
        if fetched.next_offset <= offset {
            self.shared.progress(topic, partition, |p| {
                p.observe(answer.high_watermark, offset, now);
                if !answer.records.is_empty() {
                    p.error = Some("waiting for a batch larger than a fetch share to come back whole".into());
                }
            });
            return Ok(None);
        }
        let here = self.host.cluster_id().to_string();
        let fetched_count = fetched.records.len() as u64;
        let origin = Bytes::from(self.source_cluster.clone().unwrap_or_else(|| self.shared.spec.alias().to_string()));
        let mut staged = Staged {
            topic: topic.to_string(),
            partition,
            next_offset: fetched.next_offset,
            source_high_watermark: answer.high_watermark,
            records: 0,
            bytes: 0,
            looped: 0,
            filtered: 0,
            last_timestamp: None,
            runs: Vec::new(),
        };
        let mut records = Vec::with_capacity(fetched.records.len());
        let mut source_offsets = Vec::with_capacity(fetched.records.len());
        for record in fetched.records {
            let mut headers = record.headers;
            match headers.iter().find(|(key, _)| key == ORIGIN_HEADER) {
                Some((_, Some(from))) if from.as_ref() == here.as_bytes() => {
                    staged.looped += 1;
                    continue;
                }
                Some(_) => {}
                None => headers.push((ORIGIN_HEADER.to_string(), Some(origin.clone()))),
            }
            source_offsets.push(record.offset);
            records.push(ProducerRecord { key: record.key, value: record.value, headers, timestamp_ms: record.timestamp_ms });
        }
        let module = self.shared.spec.policy_module().to_string();
        let policy = self.ensure_policy().map_err(|e| Applied::Abort(e.to_string()))?;
        if policy.filters_records() && !records.is_empty() {
            (records, source_offsets) = filter_records(policy, topic, partition, records, source_offsets)
                .map_err(|e| Applied::Abort(policy_error(&module, e).to_string()))?;
            staged.filtered = (fetched_count - staged.looped) - records.len() as u64;
        }
        for record in &records {
            staged.bytes += (record.key.as_ref().map_or(0, Bytes::len) + record.value.as_ref().map_or(0, Bytes::len)) as u64;
            staged.last_timestamp = Some(record.timestamp_ms);
        }
        staged.records = records.len() as u64;
        let target = self.target(topic);
        let producer = self.producer.as_mut().ok_or_else(|| Applied::Abort("the mirror's producer is not open".into()))?;
        let placed = producer.send_placed(&target, partition, &records).map_err(|e| Applied::Abort(e.to_string()))?;
        staged.runs = crate::offset_map::runs(&source_offsets, &placed);
        Ok(Some(staged))
    }

    /// Rename mode: commits the round's records with the positions they move the copy to.
    fn commit_round(&mut self, staged: Vec<Staged>) -> Result<u64, RuntimeError> {
        let group = position_group(self.name());
        let offsets: Vec<(String, i32, i64)> = staged.iter().map(|s| (self.target(&s.topic), s.partition, s.next_offset)).collect();
        // The runs are written before the transaction commits: a committed position always has its
        // runs (see `offset_map`).
        let runs: Vec<(String, i32, Run)> =
            staged.iter().flat_map(|s| s.runs.iter().map(|run| (s.topic.clone(), s.partition, *run))).collect();
        if let Some(map) = self.map.as_mut()
            && let Err(error) = map.stage(runs, self.host.flushes_before_ack())
        {
            self.abort_round();
            return Err(error);
        }
        let producer = self.producer.as_mut().ok_or_else(|| RuntimeError::Invalid("the mirror's producer is not open".into()))?;
        if let Err(error) = producer.send_offsets(&group, &offsets).and_then(|()| producer.commit()) {
            self.abort_round();
            return Err(error.into());
        }
        if let Some(map) = self.map.as_mut() {
            map.commit();
        }
        let now = now_ms();
        let mut written = 0;
        for stage in staged {
            let key = (stage.topic.clone(), stage.partition);
            self.positions.insert(key.clone(), stage.next_offset);
            self.fresh.remove(&key);
            self.skip_to.remove(&key);
            self.shared.metrics.copied(&self.shared.name, stage.records, stage.bytes);
            written += stage.bytes;
            self.shared.progress(&stage.topic, stage.partition, |p: &mut PartitionProgress| {
                p.records += stage.records;
                p.bytes += stage.bytes;
                p.records_looped += stage.looped;
                p.records_filtered += stage.filtered;
                p.last_record_timestamp_ms = stage.last_timestamp.or(p.last_record_timestamp_ms);
                p.observe(stage.source_high_watermark, stage.next_offset, now);
            });
        }
        Ok(written)
    }

    /// Rename mode: aborts the round's transaction and forgets the positions read so far (the next
    /// start reads them again, as committed).
    fn abort_round(&mut self) {
        if let Some(map) = self.map.as_mut() {
            map.rollback();
        }
        if let Some(producer) = self.producer.as_mut()
            && let Err(error) = producer.abort()
        {
            tracing::warn!(mirror = self.name(), %error, "cannot abort the round's transaction; the producer is opened again");
            self.producer = None;
        }
        self.positions.clear();
        self.fresh.clear();
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
        let key = (topic.to_string(), partition);
        if self.fresh.contains(&key) {
            // Nothing was copied from this partition yet: start where the source's log starts.
            self.skip_to.insert(key, start);
            return Ok(());
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

/// Rename mode: one partition's records written into the round's transaction, not committed yet.
struct Staged {
    topic: String,
    partition: i32,
    /// The source offset the partition's copy resumes from once the transaction commits.
    next_offset: i64,
    source_high_watermark: i64,
    records: u64,
    bytes: u64,
    /// Records that originated on this cluster, not copied back.
    looped: u64,
    /// Records the policy dropped.
    filtered: u64,
    last_timestamp: Option<i64>,
    /// Where the records went, for the offset map.
    runs: Vec<Run>,
}

enum Applied {
    /// OFFSET_OUT_OF_RANGE: see `out_of_range`.
    OutOfRange,
    /// Rename mode: the round's transaction cannot go on (a write failed part-way): abort it all.
    Abort(String),
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

fn policy_error(module: &str, error: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Invalid(format!("replication policy '{module}': {error}"))
}

/// Rename mode: passes one partition's records through the policy's `filter`
/// (`INPUT_RECORDS_PER_CALL_MAX` records and `FILTER_CALL_BYTES_MAX` bytes at a time) and applies
/// its actions. A rewritten record keeps its
/// timestamp and the origin header it had, whatever headers the policy returned.
fn filter_records(
    policy: &mut PolicyInstance,
    topic: &str,
    partition: i32,
    records: Vec<ProducerRecord>,
    source_offsets: Vec<i64>,
) -> Result<(Vec<ProducerRecord>, Vec<i64>), sluice_wasm::PluginError> {
    let mut kept = Vec::with_capacity(records.len());
    let mut kept_offsets = Vec::with_capacity(records.len());
    let mut records = records.into_iter().zip(source_offsets).peekable();
    while records.peek().is_some() {
        // Up to INPUT_RECORDS_PER_CALL_MAX records and FILTER_CALL_BYTES_MAX bytes (at least one record).
        let mut chunk: Vec<(ProducerRecord, i64)> = Vec::new();
        let mut chunk_bytes = 0usize;
        while chunk.len() < sluice_wasm::INPUT_RECORDS_PER_CALL_MAX
            && let Some((record, _)) = records.peek()
        {
            let bytes = record.key.as_ref().map_or(0, Bytes::len)
                + record.value.as_ref().map_or(0, Bytes::len)
                + record.headers.iter().map(|(k, v)| k.len() + v.as_ref().map_or(0, Bytes::len)).sum::<usize>();
            if !chunk.is_empty() && chunk_bytes + bytes > FILTER_CALL_BYTES_MAX {
                break;
            }
            chunk_bytes += bytes;
            chunk.extend(records.next());
        }
        let inputs: Vec<InputRecord> = chunk
            .iter()
            .map(|(record, offset)| {
                let headers = record.headers.iter().map(|(key, value)| (key.as_str(), value.as_deref()));
                sluice_wasm::input_record(record.key.as_deref(), record.value.as_deref(), headers, record.timestamp_ms, partition, *offset)
            })
            .collect();
        let actions = policy.filter(topic, &inputs)?;
        for ((record, offset), action) in chunk.into_iter().zip(actions) {
            match action {
                RecordAction::Keep => kept.push(record),
                RecordAction::Drop => continue,
                RecordAction::Replace(new) => {
                    let origin = record.headers.into_iter().find(|(key, _)| key == ORIGIN_HEADER);
                    let mut headers: Vec<(String, Option<Bytes>)> =
                        new.headers.into_iter().filter(|h| h.key != ORIGIN_HEADER).map(|h| (h.key, Some(Bytes::from(h.value)))).collect();
                    headers.extend(origin);
                    kept.push(ProducerRecord {
                        key: new.key.map(Bytes::from),
                        value: new.value.map(Bytes::from),
                        headers,
                        timestamp_ms: record.timestamp_ms,
                    });
                }
            }
            kept_offsets.push(offset);
        }
    }
    Ok((kept, kept_offsets))
}

/// A stored batch's max timestamp (bytes 35..43 of the v2 header).
fn max_timestamp(batch: &[u8]) -> i64 {
    batch.get(35..43).and_then(|b| b.try_into().ok()).map(i64::from_be_bytes).unwrap_or(-1)
}

impl Task for MirrorTask {
    fn start(&mut self, control: &TaskControl) -> Result<(), RuntimeError> {
        self.host = control.host(&self.host);
        let options = ClientOptions { client_id: format!("sluice-mirror-{}", self.shared.name), ..ClientOptions::default() };
        let bootstrap = self.shared.spec.source_bootstrap.clone();
        let client = self.block_on(CONNECT_TIMEOUT, "connecting", Client::connect(&bootstrap, options))?;
        self.client = Some(client);
        self.shared.set_source_error(None);
        if self.renames() {
            // Fences the previous run's producer: its open transaction is aborted before the
            // positions it might have moved are read.
            self.producer = Some(self.host.producer(&position_group(self.name()), TXN_TIMEOUT_MS)?);
            self.positions.clear();
            self.fresh.clear();
            let path = self.host.data_dir()?.join("offset-maps").join(self.name());
            self.map = Some(OffsetMap::open(&path)?);
            if self.shared.targets().is_empty() {
                self.load_targets()?;
            }
            self.ensure_policy()?;
        }
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
        self.prefetch = None;
        // Rename mode: the open round is aborted here, or fenced by the next start.
        self.abort_round();
        self.producer = None;
    }
}
