//! Durable cluster metadata: the cluster id, topic definitions and the producer-id high-water mark,
//! kept as small JSON files under `<data-dir>/__cluster/`, and the producer-id allocator built on it.
//!
//! Each file is replaced atomically (`sluice_storage::fs::write_atomically`: a temporary file, fsync,
//! rename, fsync the directory), so a crash leaves either the old or the new definition, never half of
//! one. Topic deletion removes the definition first and the partition directories after; start-up
//! removes partition directories that no definition claims, finishing a deletion a crash interrupted.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sluice_storage::fs::{Durability, sync_dir, write_atomically};
use uuid::Uuid;

use crate::config::TopicConfig;
use crate::error::BrokerError;

/// Definitions larger than this are not ours; refuse to parse them rather than allocate.
const DEFINITION_BYTES_MAX: u64 = 16 * 1024 * 1024;
/// Producer ids are reserved on disk in blocks, so an InitProducerId costs an fsync only once per block.
const PRODUCER_ID_BLOCK: i64 = 1000;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ClusterMeta {
    pub(crate) cluster_id: String,
    pub(crate) format_version: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct TopicDefinition {
    pub(crate) name: String,
    pub(crate) id: Uuid,
    /// Partitions in the cluster.
    pub(crate) partitions: i32,
    pub(crate) config: TopicConfig,
    /// The partitions this broker holds; absent: all of them (a topic from before this node kept
    /// its topics in the controller quorum).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) hosted: Option<Vec<i32>>,
    /// The controller log index that created the topic; absent for a topic from before then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) created_at: Option<u64>,
    /// The quorum `created_at` is an index of (`Metadata::quorum_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) quorum: Option<u64>,
}

impl TopicDefinition {
    /// The partitions this broker holds.
    pub(crate) fn hosted(&self) -> Vec<i32> {
        self.hosted.clone().unwrap_or_else(|| (0..self.partitions).collect())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ProducerIdBlock {
    /// Producer ids below this may have been handed out; a restarted broker starts here.
    next_unreserved: i64,
}

/// The files under `__cluster/`. Cheap to clone: it is only their paths.
#[derive(Clone)]
pub(crate) struct MetaStore {
    dir: PathBuf,
    topics_dir: PathBuf,
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), BrokerError> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| BrokerError::Corrupt { path: path.to_path_buf(), reason: e.to_string() })?;
    Ok(write_atomically(path, &bytes, Durability::Fsync)?)
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, BrokerError> {
    let len = fs::metadata(path).map_err(|e| BrokerError::io(e, "stat", path))?.len();
    if len > DEFINITION_BYTES_MAX {
        return Err(BrokerError::Corrupt {
            path: path.to_path_buf(),
            reason: format!("{len} bytes, larger than any definition Sluice writes"),
        });
    }
    let bytes = fs::read(path).map_err(|e| BrokerError::io(e, "read", path))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| BrokerError::Corrupt { path: path.to_path_buf(), reason: format!("not a valid definition: {e}") })
}

impl MetaStore {
    pub(crate) fn open(data_dir: &Path) -> Result<MetaStore, BrokerError> {
        let dir = data_dir.join("__cluster");
        let topics_dir = dir.join("topics");
        fs::create_dir_all(&topics_dir).map_err(|e| BrokerError::io(e, "create", &topics_dir))?;
        Ok(MetaStore { dir, topics_dir })
    }

    /// The cluster id, created on first start.
    pub(crate) fn cluster_meta(&self) -> Result<ClusterMeta, BrokerError> {
        let path = self.dir.join("meta.json");
        if path.exists() {
            return read_json(&path);
        }
        let meta = ClusterMeta { cluster_id: Uuid::new_v4().simple().to_string(), format_version: 1 };
        write_json(&path, &meta)?;
        Ok(meta)
    }

    pub(crate) fn load_topics(&self) -> Result<Vec<TopicDefinition>, BrokerError> {
        let list_error = |e| BrokerError::io(e, "list", &self.topics_dir);
        let mut topics = Vec::new();
        for entry in fs::read_dir(&self.topics_dir).map_err(list_error)? {
            let path = entry.map_err(list_error)?.path();
            if path.extension().and_then(|e| e.to_str()) == Some("json") {
                topics.push(read_json(&path)?);
            }
        }
        topics.sort_by(|a: &TopicDefinition, b| a.name.cmp(&b.name));
        Ok(topics)
    }

    pub(crate) fn save_topic(&self, topic: &TopicDefinition) -> Result<(), BrokerError> {
        write_json(&self.topics_dir.join(format!("{}.json", topic.name)), topic)
    }

    pub(crate) fn remove_topic(&self, name: &str) -> Result<(), BrokerError> {
        let path = self.topics_dir.join(format!("{name}.json"));
        fs::remove_file(&path).map_err(|e| BrokerError::io(e, "remove", &path))?;
        Ok(sync_dir(&self.topics_dir)?)
    }

    fn producer_ids_path(&self) -> PathBuf {
        self.dir.join("producer-ids.json")
    }

    /// Producer ids below this may have been handed out before (by this run or an earlier one).
    fn producer_ids_reserved(&self) -> Result<i64, BrokerError> {
        let path = self.producer_ids_path();
        if !path.exists() {
            return Ok(0);
        }
        Ok(read_json::<ProducerIdBlock>(&path)?.next_unreserved)
    }

    /// Reserves `count` producer ids and returns the first. The reservation is durable before any id
    /// is handed out, so a restarted broker never reuses one (a reused id would collide with the
    /// producer state rebuilt from the log).
    fn reserve_producer_ids(&self, count: i64) -> Result<i64, BrokerError> {
        let first = self.producer_ids_reserved()?;
        write_json(&self.producer_ids_path(), &ProducerIdBlock { next_unreserved: first + count })?;
        Ok(first)
    }
}

/// Where a broker in a cluster gets its blocks of producer ids: the controller quorum, so that no
/// two brokers hand out the same id.
pub(crate) trait ProducerIdSource: Send + Sync {
    /// Reserves `count` ids, none below `at_least`; returns the first.
    fn reserve(&self, count: i64, at_least: i64) -> Result<i64, BrokerError>;
    /// Whether any broker may have handed out `producer_id`.
    fn ever_reserved(&self, producer_id: i64) -> bool;
}

/// Hands out producer ids never handed out before, across restarts (blocks reserved durably before
/// use), and knows which ids were ever handed out — a producer id a client made up is not one of them.
/// Shared by InitProducerId for idempotent producers and the transaction coordinator.
pub(crate) struct ProducerIds {
    meta: MetaStore,
    /// (next id to hand out, end of the reserved block).
    block: Mutex<(i64, i64)>,
    /// Ids below this may be in use: read on every idempotent produce, so no lock.
    handed_out_below: AtomicI64,
    /// Set once the broker joined a controller quorum: blocks come from it from then on.
    cluster: std::sync::OnceLock<Box<dyn ProducerIdSource>>,
}

impl ProducerIds {
    pub(crate) fn open(meta: MetaStore) -> Result<ProducerIds, BrokerError> {
        let reserved = meta.producer_ids_reserved()?;
        Ok(ProducerIds {
            meta,
            block: Mutex::new((reserved, reserved)),
            handed_out_below: AtomicI64::new(reserved),
            cluster: std::sync::OnceLock::new(),
        })
    }

    /// From now on, blocks come from the cluster (and never below what this broker reserved alone).
    pub(crate) fn use_cluster(&self, source: Box<dyn ProducerIdSource>) {
        let _ = self.cluster.set(source);
    }

    /// A fresh producer id. Blocking file I/O (and, in a cluster, a controller write) once per block.
    pub(crate) fn allocate(&self) -> Result<i64, BrokerError> {
        let mut block = self.block.lock();
        if block.0 >= block.1 {
            let first = match self.cluster.get() {
                Some(cluster) => {
                    let first = cluster.reserve(PRODUCER_ID_BLOCK, self.meta.producer_ids_reserved()?)?;
                    // Kept locally too, so that this node alone (its quorum lost) never reuses them.
                    write_json(&self.meta.producer_ids_path(), &ProducerIdBlock { next_unreserved: first + PRODUCER_ID_BLOCK })?;
                    first
                }
                None => self.meta.reserve_producer_ids(PRODUCER_ID_BLOCK)?,
            };
            *block = (first, first + PRODUCER_ID_BLOCK);
        }
        let id = block.0;
        block.0 += 1;
        self.handed_out_below.store(block.0, Ordering::Release);
        Ok(id)
    }

    /// Whether `producer_id` may have been handed out by this broker (now or before a restart). A
    /// producer id no InitProducerId returned was made up by the client: it might be handed to a
    /// transactional id later, and a write under it now could fence that id's producer in advance.
    pub(crate) fn ever_allocated(&self, producer_id: i64) -> bool {
        (0..self.handed_out_below.load(Ordering::Acquire)).contains(&producer_id)
            || (producer_id >= 0 && self.cluster.get().is_some_and(|c| c.ever_reserved(producer_id)))
    }
}
