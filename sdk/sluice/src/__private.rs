//! Not public API: what `#[sluice::transform]` expands to calls into this module.
//!
//! `init` and `run_batch` are the target-independent core (the native test harness uses them too);
//! the rest exists only on wasm32 and adapts the `wit-bindgen` types of `sdk/wit` to the SDK's.

use std::rc::Rc;

use crate::{Config, Error, OutputRecord, Record, Result, Writer};

/// The shape of a transform without state: `fn(Record, &mut Writer) -> Result<()>`.
pub type TransformFn = fn(Record, &mut Writer) -> Result<()>;

/// The shape of a transform with state: it gets what its init returned on every call.
pub type StatefulTransformFn<S> = fn(&S, Record, &mut Writer) -> Result<()>;

/// The shape of an init function: checks the configuration and returns the transform's state
/// (`()` for an init that only checks).
pub type InitFn<S> = fn(&Config) -> Result<S>;

/// The init of a transform that names none.
pub fn no_init(_config: &Config) -> Result<()> {
    Ok(())
}

/// What `init` establishes for the instance's lifetime.
pub struct State<S> {
    outputs: Rc<[String]>,
    user: S,
}

/// Install the configuration, remember the outputs, run the user's init and keep what it returns.
pub fn init<S>(config: Vec<(String, String)>, outputs: Vec<String>, user_init: InitFn<S>) -> Result<State<S>> {
    if outputs.is_empty() {
        return Err(Error::msg("a transform needs at least one output topic"));
    }
    let config = Config::from_pairs(config);
    crate::config::set_current(config.clone());
    let user = user_init(&config).map_err(|e| e.context("init"))?;
    Ok(State { outputs: outputs.into(), user })
}

/// Run the transform over a batch; the first error stops the batch, names the record in its
/// message and carries its index in the batch (`Error::record_index`).
pub fn run_batch<S>(
    state: &State<S>,
    records: impl Iterator<Item = Record>,
    mut run: impl FnMut(&S, Record, &mut Writer) -> Result<()>,
) -> Result<Vec<(OutputRecord, u32)>> {
    let mut writer = Writer::with_outputs(state.outputs.clone());
    for (record_idx, record) in records.enumerate() {
        let (partition, offset) = (record.partition, record.offset);
        run(&state.user, record, &mut writer)
            .map_err(|e| e.context(format_args!("record at partition {partition} offset {offset}")).at_record(record_idx))?;
    }
    Ok(writer.take_records())
}

/// A connector's `init`: install the configuration, parse the positions the host passed (sources),
/// and make the task's state.
pub fn connector_init<T>(config: Vec<(String, String)>, init: impl FnOnce(&Config) -> Result<T>) -> Result<T> {
    let config = Config::from_pairs(config);
    crate::config::set_current(config.clone());
    // No "init" context here: the host names the call in its own message.
    init(&config)
}

pub fn source_init<S: crate::connector::Source>(config: Vec<(String, String)>, positions: Vec<(String, String)>) -> Result<S> {
    let positions = crate::connector::parse_positions(positions)?;
    connector_init(config, |config| S::init(config, positions))
}

pub fn sink_init<S: crate::connector::Sink>(config: Vec<(String, String)>) -> Result<S> {
    connector_init(config, S::init)
}

/// A position as the JSON texts the host stores.
pub fn position_text(position: &crate::connector::Position) -> (String, String) {
    (position.partition.to_string(), position.offset.to_string())
}

/// An error as the host sees it: message, retriable, the failing record's index.
pub fn error_parts(error: Error) -> (String, bool, Option<u32>) {
    let retriable = error.is_retriable();
    let record_idx = error.record_index().and_then(|idx| u32::try_from(idx).ok());
    (error.into_message(), retriable, record_idx)
}

#[cfg(target_arch = "wasm32")]
pub use wasm::*;

#[cfg(target_arch = "wasm32")]
mod wasm {
    use std::any::Any;
    use std::cell::RefCell;

    use super::{InitFn, State, init, run_batch};
    use crate::log::Level;
    use crate::{Header, Record, Result, Writer};

    pub use wit_bindgen;

    /// The generated bindings of the `sluice:plugin/transform` world. The `export!` macro they define
    /// is `bindings::__export_transform!`, invoked by `#[sluice::transform]` in the user's crate.
    pub mod bindings {
        wit_bindgen::generate!({
            path: "../wit",
            world: "transform",
            runtime_path: "::sluice::__private::wit_bindgen::rt",
            pub_export_macro: true,
            export_macro_name: "__export_transform",
            default_bindings_module: "::sluice::__private::bindings",
        });
    }

    use bindings::sluice::plugin::host;
    use bindings::sluice::plugin::types;

    pub use bindings::exports::sluice::plugin::transformer::Guest;
    pub use types::{InputRecord as WitInputRecord, OutputRecord as WitOutputRecord, TransformError as WitTransformError};

    thread_local! {
        /// The instance's `State<S>`, for the `S` of the transform this component exports (one per
        /// component: `export_process` downcasts it once per batch).
        static STATE: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
    }

    pub fn host_log(level: Level, message: &str) {
        let level = match level {
            Level::Trace => types::LogLevel::Trace,
            Level::Debug => types::LogLevel::Debug,
            Level::Info => types::LogLevel::Info,
            Level::Warn => types::LogLevel::Warn,
            Level::Error => types::LogLevel::Error,
        };
        host::log(level, message);
    }

    pub fn host_gauge(name: &str, value: f64) {
        host::set_gauge(name, value);
    }

    /// The `init` export (the generated glue turns the error into the WIT's message string).
    pub fn export_init<S: 'static>(config: Vec<(String, String)>, outputs: Vec<String>, user_init: InitFn<S>) -> Result<()> {
        crate::log::set_host_log(host_log);
        crate::metrics::set_host_gauge(host_gauge);
        // A panic traps the instance; log its message first so the host can say why.
        std::panic::set_hook(Box::new(|info| host_log(Level::Error, &info.to_string())));
        let state = init(config, outputs, user_init)?;
        STATE.with(|current| *current.borrow_mut() = Some(Box::new(state)));
        Ok(())
    }

    /// The `process` export.
    pub fn export_process<S: 'static>(
        batch: Vec<types::InputRecord>,
        run: impl FnMut(&S, Record, &mut Writer) -> Result<()>,
    ) -> Result<Vec<types::OutputRecord>, types::TransformError> {
        STATE.with(|current| {
            let current = current.borrow();
            let state = current
                .as_ref()
                .and_then(|state| state.downcast_ref::<State<S>>())
                .ok_or_else(|| types::TransformError { message: "process called before init".to_owned() })?;
            // Moves, no copies: the byte vectors the host lowered become the SDK's records as they are.
            let records = batch.into_iter().map(|r| Record {
                key: r.key,
                value: r.value,
                headers: r.headers.into_iter().map(|h| Header { key: h.key, value: h.value }).collect(),
                timestamp_ms: r.timestamp_ms,
                partition: r.partition,
                offset: r.offset,
            });
            let written = run_batch(state, records, run).map_err(|e| {
                // Tell the host which record failed, so its error policy can act on that one alone.
                if let Some(record_idx) = e.record_index().and_then(|idx| u32::try_from(idx).ok()) {
                    host::report_failed_record(record_idx);
                }
                types::TransformError { message: e.into_message() }
            })?;
            Ok(written
                .into_iter()
                .map(|(r, output)| types::OutputRecord {
                    key: r.key,
                    value: r.value,
                    headers: r.headers.into_iter().map(|h| types::Header { key: h.key, value: h.value }).collect(),
                    timestamp_ms: r.timestamp_ms,
                    output,
                })
                .collect())
        })
    }
}
