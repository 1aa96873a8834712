//! [`JsonFiles`]: what a runtime persists about its deployments, one JSON file per name in a directory
//! of its own, each replaced atomically on every change. Transforms keep their deployments in one,
//! connectors their configs (which hold passwords: the directory is readable by the broker's user
//! only, for every runtime).

use std::fs;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;
use sluice_broker::host::write_file_atomically;

use crate::RuntimeError;

/// Largest file read back: deployments are bounded well below this, so a larger file is not ours.
pub const JSON_FILE_BYTES_MAX: u64 = 128 << 20;

/// One JSON file per deployment name under one directory.
pub struct JsonFiles<T> {
    dir: PathBuf,
    /// What the files hold, for log lines ("transform deployment", "connector").
    what: &'static str,
    _records: PhantomData<fn() -> T>,
}

impl<T: Serialize + DeserializeOwned> JsonFiles<T> {
    /// Creates `dir` if needed, readable by the broker's user only. Blocking file I/O.
    pub fn open(dir: PathBuf, what: &'static str) -> Result<JsonFiles<T>, RuntimeError> {
        use std::os::unix::fs::PermissionsExt;
        fs::create_dir_all(&dir).map_err(|e| RuntimeError::file(&dir, e))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).map_err(|e| RuntimeError::file(&dir, e))?;
        Ok(JsonFiles { dir, what, _records: PhantomData })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    /// Writes `record` as `name`'s file, replacing the previous one atomically and durably.
    pub fn save(&self, name: &str, record: &T) -> Result<(), RuntimeError> {
        let json = serde_json::to_vec_pretty(record).map_err(|e| RuntimeError::Invalid(format!("cannot encode the {}: {e}", self.what)))?;
        write_file_atomically(&self.path(name), &json)?;
        Ok(())
    }

    /// Removes `name`'s file; a missing one is not an error.
    pub fn remove(&self, name: &str) -> Result<(), RuntimeError> {
        let path = self.path(name);
        match fs::remove_file(&path) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(RuntimeError::file(&path, error)),
            _ => Ok(()),
        }
    }

    /// Every stored record, in file-name order; unreadable files are logged and skipped, so one
    /// damaged file never keeps the others from starting.
    pub fn load_all(&self) -> Vec<T> {
        let Ok(entries) = fs::read_dir(&self.dir) else { return Vec::new() };
        let mut paths: Vec<PathBuf> =
            entries.flatten().map(|entry| entry.path()).filter(|path| path.extension().is_some_and(|e| e == "json")).collect();
        paths.sort();
        paths
            .into_iter()
            .filter_map(|path| match read(&path) {
                Ok(record) => Some(record),
                Err(error) => {
                    tracing::error!(file = %path.display(), %error, "skipping an unreadable {} file", self.what);
                    None
                }
            })
            .collect()
    }
}

fn read<T: DeserializeOwned>(path: &Path) -> Result<T, RuntimeError> {
    let length = fs::metadata(path).map_err(|e| RuntimeError::file(path, e))?.len();
    if length > JSON_FILE_BYTES_MAX {
        return Err(RuntimeError::file(path, format!("{length} bytes, more than the {JSON_FILE_BYTES_MAX} a deployment file may hold")));
    }
    let bytes = fs::read(path).map_err(|e| RuntimeError::file(path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| RuntimeError::file(path, e))
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Entry {
        value: u32,
    }

    #[test]
    fn saves_replaces_removes_and_skips_damaged_files() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let files = JsonFiles::<Entry>::open(root.path().join("things"), "thing").unwrap();
        assert_eq!(fs::metadata(files.dir()).unwrap().permissions().mode() & 0o777, 0o700);
        files.save("b", &Entry { value: 2 }).unwrap();
        files.save("a", &Entry { value: 1 }).unwrap();
        files.save("a", &Entry { value: 3 }).unwrap();
        fs::write(files.dir().join("broken.json"), b"{not json").unwrap();
        fs::write(files.dir().join("notes.txt"), b"ignored").unwrap();
        assert_eq!(files.load_all(), vec![Entry { value: 3 }, Entry { value: 2 }]);
        files.remove("a").unwrap();
        files.remove("never-saved").unwrap();
        assert_eq!(files.load_all(), vec![Entry { value: 2 }]);
    }
}
