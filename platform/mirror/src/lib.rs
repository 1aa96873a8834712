//! `sluice-mirror`: the in-broker replicator. A mirror runs inside the target broker and copies
//! topics from any Kafka-protocol cluster (another Sluice, Apache Kafka, Redpanda, …).
//!
//! **Preserve mode** (the default): each selected source topic gets a read-only mirror topic of the
//! same name, partition count and explicitly set configs, whose batches equal the source's byte for
//! byte — offsets, timestamps, keys, values, headers, producer ids, compression and transaction
//! markers. Consumers fail over with no offset translation; group offsets are copied as they are.
//! A mirror topic carries the read-only setting `sluice.mirror`; clients cannot write to it or
//! change it until it is promoted.
//!
//! **Rename mode** (MirrorMaker 2's): a replication policy — a `mirror-policy` Wasm module from the
//! registry; `default` (`{alias}.{topic}`) and `identity` ship with the broker — names the copies,
//! picks topics and groups and may filter or rewrite records. Records are written again, exactly
//! once, by one transaction per round that also commits the mirror's positions; each carries its
//! origin cluster so two-way mirrors never loop; group offsets are translated exactly through the
//! source → target offset map (`offset_map`).
//!
//! - [`spec`]: what an operator asks for, validated, and what is stored.
//! - [`task`]: the replication loop (fetch from the source, append as it is), one supervised task
//!   per mirror on `sluice-runtime`.
//! - [`state`]: per-partition progress, the source's reachability, metrics.
//! - [`manager`]: mirrors by name; create, pause, resume, promote, delete, restore at start.
//! - [`api`]: `/v1/mirrors` on the admin API.
//!
//! It sees the broker only through `sluice_broker::host` (mirror topics, `append_mirrored`,
//! `promote_mirror_topic`, the transactional producer), the source only through `sluice-client`,
//! and policies only through `sluice-runtime`'s registry and `sluice-wasm`'s `PolicyInstance`.

use std::sync::Arc;

use parking_lot::Mutex;
use sluice_broker::host::{Extension, Host, StartError};
use sluice_runtime::Plugins;

pub mod api;
pub mod manager;
pub mod offset_map;
pub mod spec;
pub mod state;
pub mod task;

pub use manager::MirrorManager;

/// The mirror runtime as a broker extension. It takes rename mode's policies from `Plugins`, which
/// must start before it.
pub struct MirrorExtension {
    plugins: Plugins,
    manager: Mutex<Option<Arc<MirrorManager>>>,
}

impl MirrorExtension {
    pub fn new(plugins: Plugins) -> MirrorExtension {
        MirrorExtension { plugins, manager: Mutex::new(None) }
    }
}

impl Extension for MirrorExtension {
    fn name(&self) -> &'static str {
        "mirror"
    }

    fn start(&self, host: Host) -> Result<axum::Router, StartError> {
        let manager = Arc::new(MirrorManager::open(host, self.plugins.clone())?);
        // A rename-mode mirror loads its policy module by name whenever it makes an instance.
        let users = Arc::downgrade(&manager);
        self.plugins.on_module_users(move |module| users.upgrade().map(|m| m.policy_users(module)).unwrap_or_default());
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
