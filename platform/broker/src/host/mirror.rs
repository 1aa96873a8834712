//! What the mirror runtime needs of the broker: read-only mirror topics it creates and owns, an
//! offset-preserving append of the source's batches as they are, and promotion to a normal topic.
//!
//! A mirror topic carries the read-only setting `sluice.mirror` (the owning mirror's name). While it
//! is set, clients' produce, DeleteRecords, CreatePartitions and config changes are refused with
//! INVALID_REQUEST and a message that says how to promote, and so are other runtimes' writes; only
//! [`Host::append_mirrored`] from the owning mirror writes to it.

use std::collections::BTreeMap;

use sluice_storage::{AppendMode, ControlType, TxnMarker};

use super::{Host, HostError, TopicInfo, topic_info};
use crate::config::TopicConfig;
use crate::error::BrokerError;

/// What one mirrored append wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MirroredAppend {
    /// The offset after the last batch written: where the next fetch from the source starts.
    pub next_offset: i64,
    pub records: u64,
    pub bytes: u64,
}

/// What promoting one topic did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Promotion {
    pub topic: String,
    /// Transactions the source left open in the copy, aborted with markers: (producer id, partition).
    pub aborted_transactions: Vec<(i64, i32)>,
    /// Per partition, the offset below which the source's producer state is forgotten.
    pub producer_fences: Vec<i64>,
}

impl Host {
    /// Creates `name` as a read-only mirror topic owned by `mirror`, with the source's partition
    /// count and Kafka-named configs. Blocking file I/O.
    pub fn create_mirror_topic(
        &self,
        name: &str,
        partitions: i32,
        configs: &BTreeMap<String, String>,
        mirror: &str,
        source_id: Option<&str>,
    ) -> Result<TopicInfo, HostError> {
        // A setting this broker does not take (another cluster's name or range) is left out, not the
        // whole topic: the others (retention above all) still hold.
        let (taken, refused): (Vec<_>, Vec<_>) = configs.iter().partition(|(k, v)| crate::config::validate_topic_setting(k, v).is_ok());
        for (key, value) in &refused {
            tracing::warn!(
                topic = name,
                mirror,
                key,
                value,
                "a source topic setting is not valid here; the mirror topic is created without it"
            );
        }
        let mut config = TopicConfig::from_pairs(taken.into_iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .map_err(|e| HostError::TopicRefused(format!("topic '{name}': {e}")))?;
        config.mirror = Some(mirror.to_string());
        config.mirror_source_id = source_id.map(str::to_string);
        let created = self.broker.create_topic(name, Some(partitions), config, false).map_err(HostError::from_broker)?;
        Ok(topic_info(&self.broker, &created.topic))
    }

    /// Makes the mirror topic's settings among `keys` equal the source's `configs`: a key the source
    /// sets is set (if valid here), a key the source no longer sets is removed (back to this
    /// broker's default). Other settings are left alone. Returns whether anything changed. Blocking
    /// file I/O when something changed.
    pub fn sync_mirror_topic_configs(
        &self,
        topic: &str,
        mirror: &str,
        keys: &[&str],
        configs: &BTreeMap<String, String>,
    ) -> Result<bool, HostError> {
        self.sync_copied_configs(topic, mirror, keys, configs, |owner| match owner.as_deref() {
            Some(owner) if owner == mirror => Ok(()),
            _ => Err(format!("the topic is not a mirror topic of mirror '{mirror}'")),
        })
    }

    /// Rename mode's counterpart of [`sync_mirror_topic_configs`](Self::sync_mirror_topic_configs),
    /// for a renamed copy (a normal topic; refused for another mirror's read-only copy).
    pub fn sync_renamed_topic_configs(
        &self,
        topic: &str,
        mirror: &str,
        keys: &[&str],
        configs: &BTreeMap<String, String>,
    ) -> Result<bool, HostError> {
        self.sync_copied_configs(topic, mirror, keys, configs, |owner| match owner {
            Some(other) => Err(format!("the topic is a read-only copy of mirror '{other}'")),
            None => Ok(()),
        })
    }

    /// The sync itself; `allowed` judges the topic by its owning mirror, if any.
    fn sync_copied_configs(
        &self,
        topic: &str,
        mirror: &str,
        keys: &[&str],
        configs: &BTreeMap<String, String>,
        allowed: impl FnOnce(Option<String>) -> Result<(), String>,
    ) -> Result<bool, HostError> {
        let owner = self.broker.topic(topic).ok_or_else(|| HostError::UnknownTopic(topic.to_string()))?;
        allowed(owner.mirror()).map_err(|reason| HostError::Refused { action: format!("syncing the configs of {topic}"), reason })?;
        let current = owner.config.read().clone();
        let mut next = current.clone();
        for key in keys {
            match configs.get(*key) {
                Some(value) if crate::config::validate_topic_setting(key, value).is_ok() => {
                    next.overrides.insert(key.to_string(), value.trim().to_string());
                }
                // Warned once when the copy was created; this runs every sync.
                Some(value) => tracing::debug!(topic, mirror, key, value, "a source topic setting is not valid here; not synced"),
                None => {
                    next.overrides.remove(*key);
                }
            }
        }
        if next == current {
            return Ok(false);
        }
        self.broker.set_topic_config(topic, next, false).map_err(HostError::from_broker)?;
        tracing::info!(topic, mirror, "mirror topic settings synced from the source");
        Ok(true)
    }

    /// The id of the source topic a mirror topic was created from, if the source sent one.
    pub fn mirror_source_id(&self, topic: &str) -> Option<String> {
        self.broker.topic(topic).and_then(|t| t.config.read().mirror_source_id.clone())
    }

    /// The mirror that owns `topic`, if it is a read-only mirror topic.
    pub fn mirror_of(&self, topic: &str) -> Option<String> {
        self.broker.topic(topic).and_then(|t| t.mirror())
    }

    fn owned_partition(
        &self,
        topic: &str,
        partition: i32,
        mirror: &str,
    ) -> Result<(std::sync::Arc<crate::topic::Topic>, std::sync::Arc<crate::topic::Partition>), HostError> {
        let owner = self.broker.topic(topic).ok_or_else(|| HostError::UnknownTopic(topic.to_string()))?;
        if owner.mirror().as_deref() != Some(mirror) {
            return Err(HostError::Refused {
                action: format!("mirroring into {topic}-{partition}"),
                reason: format!("the topic is not a mirror topic of mirror '{mirror}'"),
            });
        }
        // Offset-preserving appends go to the leader's log only: a follower's copy would be
        // truncated by replication (in a cluster the mirror writes the partitions its broker leads).
        let target = owner.led_partition(partition).map_err(|error| match error {
            kafka_protocol::ResponseError::NotLeaderOrFollower => {
                HostError::from_broker(BrokerError::NotLeader { topic: topic.to_string(), partition })
            }
            _ => HostError::UnknownPartition { topic: topic.to_string(), partition },
        })?;
        Ok((owner, target))
    }

    /// Appends batches fetched from the source as they are: offsets, timestamps, producer ids,
    /// compression and transaction markers unchanged; the topic's `max.message.bytes` does not apply
    /// (the source accepted them). Every batch must start at or after the
    /// partition's end (gaps are allowed: the source may have compacted or deleted records).
    /// Under fsync-before-ack it returns once the batches are durable. Blocking file I/O.
    pub fn append_mirrored(&self, topic: &str, partition: i32, mirror: &str, batches: &mut [u8]) -> Result<MirroredAppend, HostError> {
        let (owner, target) = self.owned_partition(topic, partition, mirror)?;
        let appended = target
            .append(batches, AppendMode::PreserveOffsets, crate::now_ms())
            .map_err(|e| HostError::Refused { action: format!("mirroring into {topic}-{partition}"), reason: e.to_string() })?;
        let next_offset = appended.last_offset + 1;
        if target.policy() == crate::topic::FlushPolicy::BeforeAck {
            target.wait_durable_blocking(next_offset).map_err(HostError::from_broker)?;
        }
        owner.metrics.bytes_in.inc_by(appended.byte_count);
        owner.metrics.records_in.inc_by(appended.record_count);
        Ok(MirroredAppend { next_offset, records: appended.record_count, bytes: appended.byte_count })
    }

    /// Copies a source group's committed offsets (topic, partition, next offset) into the same group
    /// here, as an admin tool's commit outside any generation would: refused while the group has
    /// active members here (their own commits win), and only for partitions of mirror topics owned
    /// by `mirror`. Returns how many were written. Blocking file I/O.
    pub fn sync_group_offsets(&self, mirror: &str, group: &str, offsets: &[(String, i32, i64)]) -> Result<usize, HostError> {
        self.write_synced_offsets(group, offsets, |topic| topic.mirror().as_deref() == Some(mirror))
    }

    /// Rename mode's counterpart of [`sync_group_offsets`](Self::sync_group_offsets): writes a
    /// source group's offsets, translated to the renamed copies (normal topics, not mirror topics),
    /// under the same rules.
    pub fn sync_translated_group_offsets(&self, group: &str, offsets: &[(String, i32, i64)]) -> Result<usize, HostError> {
        self.write_synced_offsets(group, offsets, |topic| topic.mirror().is_none())
    }

    /// Entries at or below what the group has committed here are not written: a group that failed
    /// over and read on from there is never sent back by the source's older offsets (as MirrorMaker
    /// 2 does).
    fn write_synced_offsets(
        &self,
        group: &str,
        offsets: &[(String, i32, i64)],
        writable: impl Fn(&crate::topic::Topic) -> bool,
    ) -> Result<usize, HostError> {
        let refused = |reason: String| HostError::Refused { action: format!("syncing the offsets of group '{group}'"), reason };
        crate::groups::check_group_id(group).map_err(|_| refused("the group id is too long".into()))?;
        if super::is_internal_name(group) {
            return Err(refused("the name is reserved for the broker's own runtimes".into()));
        }
        // The clients' coordinators: in a cluster, only on the broker that leads their log (a mirror
        // elsewhere retries until plugins reach coordinators on other brokers).
        let coordinators = self
            .broker
            .coordinators()
            .map_err(|_| refused("this broker does not coordinate the cluster's groups at the moment; retrying".into()))?;
        coordinators.groups.check_commit(group, "", -1).map_err(|_| refused("the group has active members on this cluster".into()))?;
        let now = crate::now_ms();
        let mut entries = Vec::new();
        for (topic, partition, offset) in offsets {
            if !self.broker.topic(topic).is_some_and(|t| writable(&t)) {
                continue;
            }
            if coordinators.offsets.get(group, topic, *partition).is_some_and(|c| c.offset >= *offset) {
                continue;
            }
            entries.push(((topic.clone(), *partition), Some(crate::offsets::CommittedOffset::from_request(*offset, -1, None, now))));
        }
        let written = entries.len();
        if written > 0 {
            coordinators.offsets.write(group, entries, self.broker.config().flush_before_ack()).map_err(HostError::from_broker)?;
        }
        Ok(written)
    }

    /// Makes a mirror topic a normal, writable topic. The source's open transactions in the copy are
    /// aborted with markers (the source's coordinator will never end them here), and the source's
    /// idempotent-producer state is fenced off: producer ids from the source cluster may equal ids
    /// this broker hands out, and a local producer is never judged against a foreign producer's
    /// sequences. Producers that fail over start a new session (InitProducerId) as with any new
    /// cluster. Only the owning mirror may promote. Blocking file I/O.
    pub fn promote_mirror_topic(&self, topic: &str, mirror: &str) -> Result<Promotion, HostError> {
        let owner = self.broker.topic(topic).ok_or_else(|| HostError::UnknownTopic(topic.to_string()))?;
        if owner.mirror().as_deref() != Some(mirror) {
            return Err(HostError::Refused {
                action: format!("promoting {topic}"),
                reason: format!("the topic is not a mirror topic of mirror '{mirror}'"),
            });
        }
        let mut promotion = Promotion { topic: topic.to_string(), aborted_transactions: Vec::new(), producer_fences: Vec::new() };
        let partitions = owner.partitions.read().clone();
        let now = crate::now_ms();
        for partition in &partitions {
            for (producer_id, producer_epoch) in partition.open_transactions() {
                let marker = TxnMarker { producer_id, producer_epoch, control: ControlType::Abort, coordinator_epoch: 0 };
                partition
                    .append_marker(&marker, now)
                    .map_err(|e| HostError::Storage(format!("aborting the source's transaction in {topic}-{}: {e}", partition.index)))?;
                promotion.aborted_transactions.push((producer_id, partition.index));
            }
            let fence = partition
                .fence_producers()
                .map_err(|e| HostError::Storage(format!("fencing the source's producers in {topic}-{}: {e}", partition.index)))?;
            promotion.producer_fences.push(fence);
        }
        let mut config = owner.config.read().clone();
        config.mirror = None;
        config.mirror_source_id = None;
        self.broker.set_topic_config(topic, config, false).map_err(HostError::from_broker)?;
        tracing::info!(topic, mirror, aborted = promotion.aborted_transactions.len(), "promoted a mirror topic to a writable topic");
        Ok(promotion)
    }
}
