//! Durable cluster metadata: the cluster id, topic definitions and the producer-id high-water mark,
//! kept as small JSON files under `<data-dir>/__cluster/`.
//!
//! Each file is replaced atomically (write a temporary file, fsync it, rename over the old one, fsync
//! the directory), so a crash leaves either the old or the new definition, never half of one. Topic
//! deletion removes the definition first and the partition directories after; start-up removes
//! partition directories that no definition claims, finishing a deletion a crash interrupted.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::TopicConfig;

/// Definitions larger than this are not ours; refuse to parse them rather than allocate.
const DEFINITION_BYTES_MAX: u64 = 16 * 1024 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterMeta {
    pub cluster_id: String,
    pub format_version: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TopicDefinition {
    pub name: String,
    pub id: Uuid,
    pub partitions: i32,
    pub config: TopicConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ProducerIdBlock {
    /// Producer ids below this may have been handed out; a restarted broker starts here.
    next_unreserved: i64,
}

pub struct MetaStore {
    dir: PathBuf,
    topics_dir: PathBuf,
}

pub type MetaResult<T> = Result<T, String>;

fn io_context(what: &str, path: &Path) -> impl Fn(std::io::Error) -> String {
    let context = format!("{what} {}", path.display());
    move |e| format!("{context}: {e}")
}

/// Atomically replaces `path` with `bytes`.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> MetaResult<()> {
    let tmp = path.with_extension("tmp");
    let mut file = fs::File::create(&tmp).map_err(io_context("create", &tmp))?;
    file.write_all(bytes).map_err(io_context("write", &tmp))?;
    file.sync_all().map_err(io_context("fsync", &tmp))?;
    fs::rename(&tmp, path).map_err(io_context("rename onto", path))?;
    if let Some(parent) = path.parent() {
        fs::File::open(parent).and_then(|d| d.sync_all()).map_err(io_context("fsync directory", parent))?;
    }
    Ok(())
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> MetaResult<T> {
    let len = fs::metadata(path).map_err(io_context("stat", path))?.len();
    if len > DEFINITION_BYTES_MAX {
        return Err(format!("{} is {len} bytes, larger than any definition Sluice writes", path.display()));
    }
    let bytes = fs::read(path).map_err(io_context("read", path))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("{} is not a valid definition: {e}", path.display()))
}

impl MetaStore {
    pub fn open(data_dir: &Path) -> MetaResult<MetaStore> {
        let dir = data_dir.join("__cluster");
        let topics_dir = dir.join("topics");
        fs::create_dir_all(&topics_dir).map_err(io_context("create", &topics_dir))?;
        Ok(MetaStore { dir, topics_dir })
    }

    /// The cluster id, created on first start.
    pub fn cluster_meta(&self) -> MetaResult<ClusterMeta> {
        let path = self.dir.join("meta.json");
        if path.exists() {
            return read_json(&path);
        }
        let meta = ClusterMeta { cluster_id: Uuid::new_v4().simple().to_string(), format_version: 1 };
        write_atomically(&path, &serde_json::to_vec_pretty(&meta).map_err(|e| e.to_string())?)?;
        Ok(meta)
    }

    pub fn load_topics(&self) -> MetaResult<Vec<TopicDefinition>> {
        let mut topics = Vec::new();
        for entry in fs::read_dir(&self.topics_dir).map_err(io_context("list", &self.topics_dir))? {
            let path = entry.map_err(io_context("list", &self.topics_dir))?.path();
            if path.extension().and_then(|e| e.to_str()) == Some("json") {
                topics.push(read_json(&path)?);
            }
        }
        topics.sort_by(|a: &TopicDefinition, b| a.name.cmp(&b.name));
        Ok(topics)
    }

    pub fn save_topic(&self, topic: &TopicDefinition) -> MetaResult<()> {
        let path = self.topics_dir.join(format!("{}.json", topic.name));
        write_atomically(&path, &serde_json::to_vec_pretty(topic).map_err(|e| e.to_string())?)
    }

    pub fn remove_topic(&self, name: &str) -> MetaResult<()> {
        let path = self.topics_dir.join(format!("{name}.json"));
        fs::remove_file(&path).map_err(io_context("remove", &path))?;
        fs::File::open(&self.topics_dir).and_then(|d| d.sync_all()).map_err(io_context("fsync directory", &self.topics_dir))
    }

    /// Reserves `count` producer ids and returns the first. The reservation is durable before any id
    /// is handed out, so a restarted broker never reuses one (a reused id would collide with the
    /// producer state rebuilt from the log).
    pub fn reserve_producer_ids(&self, count: i64) -> MetaResult<i64> {
        let path = self.dir.join("producer-ids.json");
        let first = if path.exists() { read_json::<ProducerIdBlock>(&path)?.next_unreserved } else { 0 };
        let block = ProducerIdBlock { next_unreserved: first + count };
        write_atomically(&path, &serde_json::to_vec(&block).map_err(|e| e.to_string())?)?;
        Ok(first)
    }
}
