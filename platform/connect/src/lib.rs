//! `sluice-connect`: the in-broker connector runtime. Connectors move rows between external systems
//! and topics; their code is a module (a Wasm component implementing the `source` or `sink` world)
//! that the runtime drives on `sluice-runtime`'s supervisor, seeing the broker only
//! through `sluice_broker::host`.
//!
//! In the order a request travels:
//! - [`api`]: Kafka Connect's REST API on the admin port (`/connectors`, `/connector-plugins`), with
//!   Connect's shapes, status codes and `{"error_code", "message"}` errors ([`error`]).
//! - [`config`]: a connector's Connect-style config map, validated key by key (unknown keys are
//!   refused), the `errors.*` keys mapped onto the runtime's error policy.
//! - [`manager`]: connectors by name, each a `TaskSet` of `tasks.max` tasks; create, reconfigure,
//!   pause, resume, stop, restart, delete, status, offsets; persisted by [`store`], positions by
//!   [`offsets`] (KIP-875 shapes).
//! - [`plugins`]: what `connector.class` names: registry modules implementing `source`/`sink`, Java
//!   class aliases of the first-party ones.
//! - [`task`]: the seam — [`task::SourceModule`] / [`task::SinkModule`], which the Wasm world
//!   bindings implement ([`wasm`]) — and [`task::SourceDriver`], the supervised source task.
//! - [`sink`]: [`sink::SinkDriver`], the supervised sink task: committed input → `put` → one
//!   target-database transaction holding the rows and the input positions.
//! - [`sql`]: the host side of the `sql` capability (PostgreSQL, MySQL/MariaDB, SQLite through
//!   sqlx): connections by the names the config declares, bounded results, exact values, and the
//!   time spent waiting on the database.
//! - [`wasm`]: the Wasm `source` / `sink` modules behind the seam: `describe`, grants of exactly the
//!   directories of `file` keys, instances per task, failures mapped to retriable or fatal.
//! - [`testing`]: Rust fixture plugins, registered only for the end-to-end tests.
//!
//! [`ConnectExtension`] plugs it into the broker as a `host::Extension` named `connect` (data in
//! `<data-dir>/__connect/`); it takes its modules from `Plugins`, which must start before it.

use std::sync::Arc;

use parking_lot::Mutex;
use sluice_broker::host::{Extension, Host, StartError};
use sluice_runtime::Plugins;

pub mod api;
pub mod chain;
pub mod config;
pub mod error;
pub mod manager;
pub mod offsets;
pub mod plugins;
pub mod sink;
pub mod sql;
pub mod store;
pub mod task;
pub mod testing;
pub mod wasm;

pub use error::ConnectError;
pub use manager::ConnectorManager;

pub struct ConnectExtension {
    plugins: Plugins,
    manager: Mutex<Option<Arc<ConnectorManager>>>,
}

impl ConnectExtension {
    pub fn new(plugins: Plugins) -> ConnectExtension {
        ConnectExtension { plugins, manager: Mutex::new(None) }
    }
}

impl Extension for ConnectExtension {
    fn name(&self) -> &'static str {
        "connect"
    }

    fn start(&self, host: Host) -> Result<axum::Router, StartError> {
        let catalog = plugins::Catalog::new(Some(self.plugins.clone()));
        if std::env::var(testing::TEST_PLUGINS_ENV).is_ok_and(|v| v == "1") {
            tracing::warn!(env = testing::TEST_PLUGINS_ENV, "test connector plugins are registered (for Sluice's own tests)");
            testing::register(&catalog);
        }
        let manager = ConnectorManager::open(host, catalog)?;
        // A connector loads its plugin and its chain's transforms by name whenever a task starts.
        let users = Arc::downgrade(&manager);
        self.plugins.on_module_users(move |module| users.upgrade().map(|m| m.module_users(module)).unwrap_or_default());
        manager.start_all();
        *self.manager.lock() = Some(Arc::clone(&manager));
        Ok(api::router(manager))
    }

    fn stop(&self) {
        if let Some(manager) = self.manager.lock().take() {
            manager.stop_all();
        }
    }
}
