//! The process's budget of open files, as far as the storage crate spends it.
//!
//! A partition holds exactly one file open for as long as it lives: its active segment's `.log`.
//! Index files are opened for each write and closed again (they are written in groups of 32 entries),
//! and sealed segments — the many old ones a long retention keeps — open their `.log` only when read,
//! through the cache here. The cache keeps the most recently read sealed files open, up to a limit
//! shared by every partition of the process; past it the least recently used is closed. The limit is
//! process-wide because the thing it protects, `RLIMIT_NOFILE`, is: a per-partition cap would still let
//! enough partitions exhaust it, and a broker that runs out of descriptors can neither serve nor
//! restart.
//!
//! `configure_open_files` raises the soft descriptor limit to the hard one (as Kafka's packaging asks
//! operators to) and sizes the cache to a quarter of what is then available, so that sockets, the
//! active segments and the rest of the broker keep the other three quarters.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};

use parking_lot::Mutex;

/// How many sealed-segment files the process keeps open when nobody set a limit (tests, tools).
pub const SEALED_FILES_OPEN_MAX_DEFAULT: usize = 1024;
/// `configure_open_files` gives the cache this share of the descriptor limit (1 / 4).
const SEALED_FILES_SHARE_DIVISOR: u64 = 4;
/// Bounds on the cache size `configure_open_files` picks: enough to serve a few consumers reading
/// history in parallel, and no more than is useful (a hit saves one `open`).
const SEALED_FILES_OPEN_MIN: usize = 16;
const SEALED_FILES_OPEN_MAX: usize = 4096;
/// When the hard limit is "unlimited", the soft limit is raised to this instead: Linux refuses an
/// unlimited descriptor limit (it is capped by `fs.nr_open`, 1 Mi by default).
const OPEN_FILES_UNLIMITED_TARGET: u64 = 1 << 20;

/// What `configure_open_files` found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFilesBudget {
    /// The soft `RLIMIT_NOFILE` before and after (None = unlimited).
    pub soft_before: Option<u64>,
    pub soft_after: Option<u64>,
    /// The hard limit, which an unprivileged process cannot raise.
    pub hard: Option<u64>,
    /// How many sealed-segment files the process now keeps open at most.
    pub sealed_files_open_max: usize,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and sizes the sealed-file cache to a quarter of
/// the result. Call once at start-up, before opening partitions. A refused raise is logged and the
/// current limit used: the broker can still run, with the smaller budget.
pub fn configure_open_files() -> OpenFilesBudget {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let before = getrlimit(Resource::Nofile);
    let target = before.maximum.unwrap_or(OPEN_FILES_UNLIMITED_TARGET);
    let mut soft_after = before.current;
    if before.current.is_some_and(|current| current < target) {
        match setrlimit(Resource::Nofile, rustix::process::Rlimit { current: Some(target), maximum: before.maximum }) {
            Ok(()) => soft_after = Some(target),
            Err(error) => tracing::warn!(%error, soft = ?before.current, hard = ?before.maximum, "could not raise the open-file limit"),
        }
    }
    let available = soft_after.unwrap_or(OPEN_FILES_UNLIMITED_TARGET);
    let share = usize::try_from(available / SEALED_FILES_SHARE_DIVISOR).unwrap_or(usize::MAX);
    let sealed_files_open_max = share.clamp(SEALED_FILES_OPEN_MIN, SEALED_FILES_OPEN_MAX);
    set_sealed_files_open_max(sealed_files_open_max);
    OpenFilesBudget { soft_before: before.current, soft_after, hard: before.maximum, sealed_files_open_max }
}

/// Sets how many sealed-segment files the process keeps open; files beyond it are closed, least
/// recently read first (a read in progress keeps its file until it finishes).
pub fn set_sealed_files_open_max(n: usize) {
    let mut cache = CACHE.lock();
    cache.capacity = n.max(1);
    cache.evict_to_capacity();
}

/// How many sealed-segment files the cache holds open now.
pub fn sealed_files_open() -> usize {
    CACHE.lock().open.len()
}

static CACHE: LazyLock<Mutex<Cache>> = LazyLock::new(|| Mutex::new(Cache::new(SEALED_FILES_OPEN_MAX_DEFAULT)));
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

struct Cache {
    capacity: usize,
    /// Bumped on every use; the smallest stamp is the least recently used file.
    clock: u64,
    /// Open files by segment id, with the stamp of their last use.
    open: HashMap<u64, (Arc<File>, u64)>,
    /// Segment ids by last-use stamp, for eviction.
    by_use: BTreeMap<u64, u64>,
}

impl Cache {
    fn new(capacity: usize) -> Cache {
        Cache { capacity, clock: 0, open: HashMap::new(), by_use: BTreeMap::new() }
    }

    fn touch(&mut self, id: u64) -> Option<Arc<File>> {
        self.clock += 1;
        let stamp = self.clock;
        let (file, used) = self.open.get_mut(&id)?;
        self.by_use.remove(used);
        *used = stamp;
        self.by_use.insert(stamp, id);
        Some(Arc::clone(file))
    }

    fn insert(&mut self, id: u64, file: Arc<File>) {
        self.clock += 1;
        self.open.insert(id, (file, self.clock));
        self.by_use.insert(self.clock, id);
        self.evict_to_capacity();
    }

    fn remove(&mut self, id: u64) {
        if let Some((_, used)) = self.open.remove(&id) {
            self.by_use.remove(&used);
        }
    }

    fn evict_to_capacity(&mut self) {
        while self.open.len() > self.capacity {
            let Some((_, id)) = self.by_use.pop_first() else { break };
            self.open.remove(&id);
        }
    }
}

/// A sealed segment's `.log`, opened read-only through the process-wide cache when it is read.
/// Dropping it (the segment was deleted or the log dropped) closes the cached file.
#[derive(Debug)]
pub(crate) struct CachedFile {
    id: u64,
    path: PathBuf,
}

impl CachedFile {
    pub(crate) fn new(path: &Path) -> CachedFile {
        CachedFile { id: NEXT_ID.fetch_add(1, Ordering::Relaxed), path: path.to_path_buf() }
    }

    /// The open file, from the cache or opened now (outside the cache's lock, so a slow open holds up
    /// no other partition).
    pub(crate) fn get(&self) -> std::io::Result<Arc<File>> {
        if let Some(file) = CACHE.lock().touch(self.id) {
            return Ok(file);
        }
        let file = Arc::new(File::open(&self.path)?);
        let mut cache = CACHE.lock();
        if let Some(raced) = cache.touch(self.id) {
            return Ok(raced);
        }
        cache.insert(self.id, Arc::clone(&file));
        Ok(file)
    }
}

impl Drop for CachedFile {
    fn drop(&mut self) {
        CACHE.lock().remove(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_recently_used_file_is_closed_first() {
        let mut cache = Cache::new(2);
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, name).unwrap();
            Arc::new(File::open(path).unwrap())
        };
        cache.insert(1, file("a"));
        cache.insert(2, file("b"));
        assert!(cache.touch(1).is_some());
        cache.insert(3, file("c"));
        assert!(cache.touch(2).is_none(), "2 was used least recently");
        assert!(cache.touch(1).is_some() && cache.touch(3).is_some());
        cache.remove(1);
        assert_eq!((cache.open.len(), cache.by_use.len()), (1, 1));
        cache.capacity = 0;
        cache.evict_to_capacity();
        assert!(cache.open.is_empty() && cache.by_use.is_empty());
    }
}
