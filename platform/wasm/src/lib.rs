//! `sluice-wasm`: the host runtime for WebAssembly transforms.
//!
//! Guests are components of the `sluice:plugin/transform` world in `sdk/wit/plugin.wit` — the only
//! thing this crate shares with the guest SDK. In the data's path:
//!
//! 1. [`Engine`] — one per broker: a wasmtime engine with the component model and epoch interruption,
//!    a background thread ticking the epoch, the linker (WASI p2 with nothing granted, plus the
//!    `host` import), and the on-disk cache of compiled modules.
//! 2. [`Engine::load`] turns bytes into a [`Module`]: checks they are a component, compiles it (or
//!    loads the cached compilation) and checks it is of the transform world. Compiling takes up to
//!    seconds for large modules (BENCHMARKS.md): call it on a blocking thread, never on the data path.
//! 3. [`Module::instantiate`] makes an [`Instance`]: its own store, memory cap, CPU bound, config and
//!    output topics; runs the guest's `init`.
//! 4. [`Instance::process`] sends one batch of [`InputRecord`]s across and validates the
//!    [`OutputRecord`]s that come back.
//!
//! Calls are synchronous: the broker runs each instance on a thread of its own (or a blocking pool),
//! and the epoch deadline bounds how long a call can hold that thread. Async calls would let one
//! thread multiplex instances, but a transform call never waits on I/O (none is granted), so async
//! would only add a fiber switch per call and yield at epoch ticks — see ARCHITECTURE.md.
//!
//! Modules: `engine` (engine, linker, ticker), `cache` (compiled-module cache), `module`, `instance`
//! (store, limits, calls, output validation), `host` (the host-side state and imports), `limits`,
//! `error`.

mod cache;
mod engine;
mod error;
mod host;
mod instance;
mod limits;
mod module;

/// Generated from `sdk/wit`: the host side of the transform world.
mod bindings {
    wasmtime::component::bindgen!({
        path: "../../sdk/wit",
        world: "transform",
        additional_derives: [PartialEq, Eq],
    });
}

pub use bindings::sluice::plugin::types::{Header, InputRecord, LogLevel, OutputRecord};
pub use engine::{EPOCH_TICK_DEFAULT, Engine, EngineConfig};
pub use error::TransformError;
pub use host::{LogSink, TracingLogSink};
pub use instance::{Grants, Instance, InstanceConfig};
pub use limits::*;
pub use module::Module;

// The broker shares modules across threads and moves each instance to a thread of its own.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    const fn send<T: Send>() {}
    send_sync::<Engine>();
    send_sync::<Module>();
    send::<Instance>();
};

/// The version of the `sluice:plugin` WIT package this host implements; components built against an
/// incompatible version are `WrongWorld`.
pub const WIT_VERSION: &str = "0.1.0";
