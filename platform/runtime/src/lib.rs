//! `sluice-runtime`: what every in-broker plugin runtime shares, so that a runtime (transforms,
//! connectors, mirrors) is a thin crate that only says what is special about it.
//!
//! A runtime is a `sluice_broker::host::Extension`. It reads and writes through the broker's
//! `host` (a committed reader, a transactional producer) and takes the rest from here:
//!
//! - [`Plugins`] ([`plugins`]): the one Wasm engine and compiled-code cache of the broker and the
//!   [`ModuleRegistry`] ([`registry`]): modules uploaded once, by digest and by name, served at
//!   `/v1/plugins`. It is an extension of its own, started before the runtimes that use it.
//! - [`Supervisor`] / [`TaskSet`] / [`Task`] ([`supervisor`]): one thread per task, backoff after
//!   errors, FAILED on a policy stop, pause / resume / restart / stop, and a reconcile tick that picks
//!   up partitions added to an input topic.
//! - [`ErrorPolicy`] ([`policy`], [`isolate`]): retries, then stop / dead-letter / skip of exactly the
//!   records that fail.
//! - [`LogBuffer`] ([`logs`]) and [`MetricFamilies`] ([`metrics`]): what operators see, keyed by
//!   the runtime's kind.
//! - [`store::JsonFiles`]: deployments persisted one JSON file per name, replaced atomically (a
//!   broker on its own); [`DeploymentLog`] ([`deployment_log`]): in a cluster, deployments and their
//!   modules in the replicated `__sluice_plugins` topic, followed by every broker.
//! - [`RuntimeError`] ([`error`]), shown over HTTP as the broker's `ApiError`; [`http`]: body parsing
//!   and blocking calls for runtimes' admin routes.

pub mod deployment_log;
pub mod error;
pub mod http;
pub mod isolate;
pub mod logs;
pub mod metrics;
pub mod plugins;
pub mod policy;
pub mod registry;
pub mod store;
pub mod supervisor;

pub use deployment_log::DeploymentLog;
pub use error::RuntimeError;
pub use logs::{LogBuffer, LogLine};
pub use metrics::{DeploymentMetrics, MetricFamilies};
pub use plugins::Plugins;
pub use policy::{ErrorPolicy, OnFailure, RetryPolicy, Verdict};
pub use registry::{Builtin, ModuleInfo, ModuleRegistry};
pub use sluice_broker::host::ApiError;
pub use supervisor::{Step, Supervisor, Task, TaskControl, TaskSet, TaskState, TaskStatus};
