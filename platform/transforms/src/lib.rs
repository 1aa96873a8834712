//! `sluice-transforms`: the in-broker runtime for WebAssembly transforms.
//!
//! A transform reads one input topic, runs the user's component (`sluice-wasm`) on each batch and
//! writes the results to its output topics, exactly once: every batch's output and the input
//! position after it commit in one Kafka transaction. It sees the broker only through
//! `sluice_broker::host`: a committed reader per input partition and a transactional producer.
//!
//! - [`spec`]: the deployment spec, its validation and its files under `<data-dir>/__transforms/`.
//! - [`manager`]: deployments by name on `sluice-runtime`'s supervisor and module registry; deploy,
//!   redeploy, pause, resume, limits, delete, restore.
//! - [`runner`]: the supervised task of one input partition: read committed input → process →
//!   commit, through the runtime's error policy.
//! - [`api`]: `/v1/transforms` on the admin API.
//!
//! [`TransformsExtension`] plugs all of it into the broker as a `host::Extension`.

use std::sync::Arc;

use parking_lot::Mutex;
use sluice_broker::host::{Extension, Host, StartError};
use sluice_runtime::Plugins;

pub mod api;
pub mod manager;
pub mod runner;
pub mod spec;

pub use manager::TransformManager;

/// The transform runtime as a broker extension. It takes its modules from `plugins`, which must be
/// listed before it among the broker's extensions.
pub struct TransformsExtension {
    plugins: Plugins,
    manager: Mutex<Option<Arc<TransformManager>>>,
}

impl TransformsExtension {
    pub fn new(plugins: Plugins) -> TransformsExtension {
        TransformsExtension { plugins, manager: Mutex::new(None) }
    }
}

impl Extension for TransformsExtension {
    fn name(&self) -> &'static str {
        "transforms"
    }

    fn start(&self, host: Host) -> Result<axum::Router, StartError> {
        let manager = Arc::new(TransformManager::open(host, self.plugins.clone())?);
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
