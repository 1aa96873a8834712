//! Connectors as persisted: `<data-dir>/__connect/connectors/<name>.json` holds the config map as
//! given (passwords included: the directory is readable by the broker's user only) and the target
//! state, replaced atomically on every change. At start every stored connector comes back in its
//! target state.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sluice_broker::host::write_file_atomically;

use crate::error::ConnectError;

/// Largest connector file read back (configs are bounded well below this).
const CONNECTOR_FILE_BYTES_MAX: u64 = 128 << 20;

/// What the operator asked a connector to be (Kafka Connect's target states).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "UPPERCASE")]
pub enum TargetState {
    #[default]
    Running,
    Paused,
    /// Tasks shut down, config and positions kept (KIP-875).
    Stopped,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredConnector {
    pub name: String,
    pub config: BTreeMap<String, String>,
    pub target_state: TargetState,
    pub created_at_ms: i64,
}

pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// `root`: the extension's directory. Blocking file I/O.
    pub fn open(root: &Path) -> Result<Store, ConnectError> {
        let dir = root.join("connectors");
        fs::create_dir_all(&dir).map_err(|e| ConnectError::file(&dir, e))?;
        restrict(&dir)?;
        Ok(Store { dir })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    pub fn save(&self, connector: &StoredConnector) -> Result<(), ConnectError> {
        let json = serde_json::to_vec_pretty(connector).map_err(|e| ConnectError::BadRequest(e.to_string()))?;
        write_file_atomically(&self.path(&connector.name), &json)?;
        Ok(())
    }

    pub fn remove(&self, name: &str) -> Result<(), ConnectError> {
        let path = self.path(name);
        match fs::remove_file(&path) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(ConnectError::file(&path, error)),
            _ => Ok(()),
        }
    }

    /// Every stored connector, by name; unreadable files are reported and skipped.
    pub fn load_all(&self) -> Vec<StoredConnector> {
        let Ok(entries) = fs::read_dir(&self.dir) else { return Vec::new() };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let loaded = fs::metadata(&path)
                .map_err(|e| e.to_string())
                .and_then(|m| if m.len() > CONNECTOR_FILE_BYTES_MAX { Err("too large".to_string()) } else { Ok(()) })
                .and_then(|()| fs::read(&path).map_err(|e| e.to_string()))
                .and_then(|bytes| serde_json::from_slice::<StoredConnector>(&bytes).map_err(|e| e.to_string()));
            match loaded {
                Ok(connector) => out.push(connector),
                Err(error) => tracing::error!(file = %path.display(), %error, "skipping an unreadable connector file"),
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}

/// Connector files hold passwords: only the broker's user may read the directory.
fn restrict(dir: &Path) -> Result<(), ConnectError> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|e| ConnectError::file(dir, e))
}
