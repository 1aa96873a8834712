//! `sluice-wasm`: the host runtime for WebAssembly plugins, for every world of `sluice:plugin`.
//!
//! Guests are components of a world in `sdk/wit/plugin.wit` — the only thing this crate shares with
//! the guest SDK: `transform`, the connector worlds `source` and `sink` (`connector`), and
//! `mirror-policy` (`policy`).
//! In the data's path:
//!
//! 1. [`Engine`] — one per broker, for every world: a wasmtime engine with the component model and
//!    epoch interruption, a background thread ticking the epoch, one linker per world (the shared
//!    imports — WASI with nothing granted and every wait bounded, the `host` interface — plus the
//!    world's own), and the on-disk cache of compiled modules (digest-checked before use).
//! 2. [`Engine::compile`] turns bytes into a [`CompiledComponent`] (checks they are a component,
//!    compiles it or loads the cached compilation); [`Engine::inspect`] also says which
//!    [`World`]s it implements; [`Engine::load_transform`] checks it is a transform. Compiling takes
//!    up to seconds for large modules (BENCHMARKS.md): call it on a blocking thread, never on the
//!    data path.
//! 3. [`TransformModule::instantiate`] makes a [`TransformInstance`]: its own store, memory cap, CPU
//!    bound, grants, config and output topics; runs the guest's `init`.
//! 4. [`TransformInstance::process_batch`] sends one [`InputBatch`] across — as one buffer when the
//!    transform exports `batch-transformer` (the SDK's do), as [`InputRecord`]s to `process`
//!    otherwise — and checks the [`Output`]s that come back; [`TransformInstance::process`] is the
//!    record-list form (connector chains use it).
//!
//! What every world shares lives once: the store setup and the one way into a guest (`sandbox`:
//! memory cap, CPU bound with host waits uncharged, the bound on bytes copied out of the guest,
//! error classification), the host state and `host` imports (`host`), WASI and [`Grants`] (`wasi`).
//! A world adds only its bindings, its typed module/instance pair and its own imports (`world`).
//!
//! Calls are synchronous: the broker runs each instance on a thread of its own (or a blocking pool),
//! and the epoch deadline bounds how long a call can hold that thread; every WASI wait gives up when
//! the call's budget is spent, so no guest can block a thread past it. Async calls would let one
//! thread multiplex instances, but a plugin call waits only where the host lets it, so async would
//! only add a fiber switch per call and yield at epoch ticks — see ARCHITECTURE.md.
//!
//! Modules: `engine` (engine, per-world linkers, ticker, compiled components), `cache`, `world`,
//! `sandbox` (store, limits, calls, errors), `host` (host state and imports), `wasi`, `transform`
//! (the transform world), `connector` (the source and sink worlds), `policy` (the mirror-policy world), `sql` (the connector worlds'
//! database import, answered by a [`SqlHost`] the connector runtime provides), `watchdog`, `limits`, `error`.

mod batch;
mod cache;
mod connector;
mod engine;
mod error;
mod host;
mod limits;
mod policy;
mod sandbox;
mod sql;
#[cfg(feature = "test-host-imports")]
mod test_imports;
mod transform;
mod wasi;
mod watchdog;
mod world;

/// Generated from `sdk/wit`: one module per world. The interfaces every world shares (`types`,
/// `host`) are generated once, with the transform world; later worlds reuse them with `with:`, so
/// one `host` implementation serves all.
mod bindings {
    pub(crate) mod transform {
        wasmtime::component::bindgen!({
            path: "../../sdk/wit",
            world: "transform",
            additional_derives: [PartialEq, Eq],
        });
    }

    /// A transform that also exports `batch-transformer` (one buffer per batch each way).
    pub(crate) mod batch_transform {
        wasmtime::component::bindgen!({
            path: "../../sdk/wit",
            world: "batch-transform",
            with: {
                "sluice:plugin/types": super::transform::sluice::plugin::types,
                "sluice:plugin/host": super::transform::sluice::plugin::host,
            },
        });
    }

    /// The connector worlds share `connector-types` and `sql` too: generated with `source`, reused
    /// by `sink`. (`PartialEq` only: `sql`'s values hold floats.)
    pub(crate) mod source {
        wasmtime::component::bindgen!({
            path: "../../sdk/wit",
            world: "source",
            additional_derives: [PartialEq],
            with: {
                "sluice:plugin/types": super::transform::sluice::plugin::types,
                "sluice:plugin/host": super::transform::sluice::plugin::host,
            },
        });
    }

    pub(crate) mod sink {
        wasmtime::component::bindgen!({
            path: "../../sdk/wit",
            world: "sink",
            additional_derives: [PartialEq],
            with: {
                "sluice:plugin/types": super::transform::sluice::plugin::types,
                "sluice:plugin/host": super::transform::sluice::plugin::host,
                "sluice:plugin/connector-types": super::source::sluice::plugin::connector_types,
                "sluice:plugin/sql": super::source::sluice::plugin::sql,
            },
        });
    }

    pub(crate) mod mirror_policy {
        wasmtime::component::bindgen!({
            path: "../../sdk/wit",
            world: "mirror-policy",
            additional_derives: [PartialEq, Eq],
            with: {
                "sluice:plugin/types": super::transform::sluice::plugin::types,
                "sluice:plugin/host": super::transform::sluice::plugin::host,
            },
        });
    }

    pub(crate) use mirror_policy::exports::sluice::plugin::replication_policy;
    pub(crate) use source::sluice::plugin::{connector_types, sql};
    pub(crate) use transform::sluice::plugin::{host, types};
}

pub use batch::{InputBatch, InputSlice, Output};
pub use bindings::connector_types::{
    ConfigKey, ConfigType, ConnectorError, ConnectorSpec, PollResult, PutError, SinkRecord, SourcePosition, SourceRecord,
};
pub use bindings::replication_policy::{PolicyInfo, RecordAction, Rewritten};
pub use bindings::types::{Header, InputRecord, LogLevel, OutputRecord};
pub use connector::{SinkInstance, SinkModule, SourceInstance, SourceModule};
pub use engine::{CacheWrite, CompiledComponent, Compilers, EPOCH_TICK_DEFAULT, Engine, EngineConfig, Tier};
pub use error::PluginError;
pub use host::{GaugeSink, LogSink, TracingLogSink, valid_gauge_name};
pub use limits::*;
pub use policy::{PolicyInstance, PolicyModule, invalid_topic_name};
pub use sandbox::InstanceConfig;
pub use sql::{SqlCallError, SqlColumn, SqlConnection, SqlDialect, SqlFailure, SqlHost, SqlRows, SqlValue};
pub use transform::{TransformInstance, TransformModule};
pub use wasi::{DirAccess, Grants};
pub use watchdog::run_with_watchdog;
pub use world::World;

/// An [`InputRecord`] copied from a record's borrowed parts, as the host holds them (a header value
/// Kafka allows to be null becomes empty: the WIT's header values are bytes).
pub fn input_record<'a>(
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
    timestamp_ms: i64,
    partition: i32,
    offset: i64,
) -> InputRecord {
    InputRecord {
        key: key.map(<[u8]>::to_vec),
        value: value.map(<[u8]>::to_vec),
        headers: headers
            .into_iter()
            .map(|(key, value)| Header { key: key.to_owned(), value: value.map_or_else(Vec::new, <[u8]>::to_vec) })
            .collect(),
        timestamp_ms,
        partition,
        offset,
    }
}

// The broker shares modules across threads and moves each instance to a thread of its own.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    const fn send<T: Send>() {}
    send_sync::<Engine>();
    send_sync::<CompiledComponent>();
    send_sync::<TransformModule>();
    send::<TransformInstance>();
    send_sync::<SourceModule>();
    send_sync::<SinkModule>();
    send::<SourceInstance>();
    send::<SinkInstance>();
    send_sync::<PolicyModule>();
    send::<PolicyInstance>();
};

/// The version of the `sluice:plugin` WIT package this host implements; components built against an
/// incompatible version are `WrongWorld`.
pub const WIT_VERSION: &str = "0.1.0";
