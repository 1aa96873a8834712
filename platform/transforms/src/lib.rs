//! `sluice-transforms`: the in-broker runtime for WebAssembly transforms.
//!
//! A transform reads one input topic, runs the user's component (`sluice-wasm`) on each batch and
//! writes the results to its output topics, exactly once: every batch's output and the input
//! position after it commit in one Kafka transaction (`sluice_broker::txn_writer`).
//!
//! - [`spec`]: the deployment spec, its validation and its files under `<data-dir>/__transforms/`.
//! - [`manager`]: deployments by name; deploy, redeploy, pause, resume, limits, delete, restore.
//! - [`runner`]: one thread per input partition: read committed input → process → commit.
//! - [`api`]: `/v1/transforms` on the admin API. [`logs`], [`metrics`]: what operators see.
//!
//! [`TransformsExtension`] plugs all of it into `sluice_broker::run`.

use std::sync::Arc;

use parking_lot::Mutex;
use sluice_broker::{Broker, Extension};

pub mod api;
pub mod error;
pub mod logs;
pub mod manager;
pub mod metrics;
pub mod runner;
pub mod spec;

pub use manager::TransformManager;

/// The transform runtime as a broker extension.
#[derive(Default)]
pub struct TransformsExtension {
    manager: Mutex<Option<Arc<TransformManager>>>,
}

impl Extension for TransformsExtension {
    fn start(&self, broker: Arc<Broker>) -> Result<axum::Router, String> {
        let handle = tokio::runtime::Handle::try_current().map_err(|e| format!("the transform runtime needs a tokio runtime: {e}"))?;
        let manager = Arc::new(TransformManager::open(broker, handle)?);
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
