//! Small durable files: the one atomic file replace of the platform. The log uses it for its offset
//! files, snapshots and the aborted-transaction index; the broker for topic definitions, the cluster
//! id and producer-id blocks; in-broker runtimes (through `sluice_broker::host`) for their own state.
//!
//! A replace writes `<name>.tmp` beside the target, renames it over the target and, when asked to be
//! durable, fsyncs the data before the rename and the directory after it. A crash at any point leaves
//! either the old contents or the new ones, never a mix; a leftover `.tmp` is garbage its owner may
//! delete at the next start.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{IoContext, StorageError};

/// What a temporary file is called while it is being written.
pub const TEMP_SUFFIX: &str = ".tmp";

/// Whether a replace must survive a power cut once it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync the data before the rename and the directory after it.
    Fsync,
    /// Atomic against a process crash only: the page cache holds the new file.
    PageCache,
}

/// Replaces `path` with `contents` atomically; see the module docs.
pub fn write_atomically(path: &Path, contents: &[u8], durability: Durability) -> Result<(), StorageError> {
    let temp = temp_path(path);
    let mut file = fs::File::create(&temp).context(|| format!("create {}", temp.display()))?;
    file.write_all(contents).context(|| format!("write {}", temp.display()))?;
    if durability == Durability::Fsync {
        file.sync_all().context(|| format!("fsync {}", temp.display()))?;
    }
    fs::rename(&temp, path).context(|| format!("rename {} to {}", temp.display(), path.display()))?;
    if durability == Durability::Fsync
        && let Some(dir) = path.parent()
    {
        sync_dir(dir)?;
    }
    Ok(())
}

/// fsyncs a directory, so the names created, renamed or removed in it survive a power cut.
pub fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    fs::File::open(dir).and_then(|d| d.sync_all()).context(|| format!("fsync directory {}", dir.display()))
}

fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(TEMP_SUFFIX);
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replace_leaves_only_the_new_contents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("topic.v1.json");
        write_atomically(&path, b"old", Durability::Fsync).unwrap();
        write_atomically(&path, b"new", Durability::PageCache).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec!["topic.v1.json"], "no temporary file is left behind");
    }

    #[test]
    fn a_failed_replace_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let error = write_atomically(&dir.path().join("missing/x"), b"x", Durability::Fsync).unwrap_err();
        assert!(error.to_string().contains("create ") && error.to_string().contains("missing/x.tmp"), "{error}");
    }
}
