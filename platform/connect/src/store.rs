//! Connectors as persisted: `<data-dir>/__connect/connectors/<name>.json` holds the config map as
//! given (passwords included: the directory is readable by the broker's user only) and the target
//! state, replaced atomically on every change. At start every stored connector comes back in its
//! target state.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sluice_runtime::store::JsonFiles;

use crate::error::ConnectError;

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
    files: JsonFiles<StoredConnector>,
}

impl Store {
    /// `root`: the extension's directory. Blocking file I/O.
    pub fn open(root: &Path) -> Result<Store, ConnectError> {
        Ok(Store { files: JsonFiles::open(root.join("connectors"), "connector")? })
    }

    pub fn save(&self, connector: &StoredConnector) -> Result<(), ConnectError> {
        Ok(self.files.save(&connector.name, connector)?)
    }

    pub fn remove(&self, name: &str) -> Result<(), ConnectError> {
        Ok(self.files.remove(name)?)
    }

    /// Every stored connector, by name; unreadable files are reported and skipped.
    pub fn load_all(&self) -> Vec<StoredConnector> {
        self.files.load_all()
    }
}
