//! Not public API: what `#[sluice::transform]` expands to calls into this module.
//!
//! `init` and `run_batch` are the target-independent core (the native test harness uses them too);
//! the rest exists only on wasm32 and adapts the `wit-bindgen` types of `sdk/wit` to the SDK's.

use std::rc::Rc;

use crate::{Config, Error, OutputRecord, Record, Result, Writer};

/// The shape of a user's transform function.
pub type TransformFn = fn(Record, &mut Writer) -> Result<()>;

/// The shape of a user's init function.
pub type InitFn = fn(&Config) -> Result<()>;

/// What `init` establishes for the instance's lifetime.
pub struct State {
    outputs: Rc<[String]>,
}

/// Install the configuration, remember the outputs, run the user's init.
pub fn init(config: Vec<(String, String)>, outputs: Vec<String>, user_init: Option<InitFn>) -> Result<State> {
    if outputs.is_empty() {
        return Err(Error::msg("a transform needs at least one output topic"));
    }
    let config = Config::from_pairs(config);
    crate::config::set_current(config.clone());
    if let Some(user_init) = user_init {
        user_init(&config).map_err(|e| e.context("init"))?;
    }
    Ok(State { outputs: outputs.into() })
}

/// Run the transform over a batch; the first error stops the batch and names the record.
pub fn run_batch(state: &State, records: impl Iterator<Item = Record>, run: TransformFn) -> Result<Vec<(OutputRecord, u32)>> {
    let mut writer = Writer::with_outputs(state.outputs.clone());
    for record in records {
        let (partition, offset) = (record.partition, record.offset);
        run(record, &mut writer).map_err(|e| e.context(format_args!("record at partition {partition} offset {offset}")))?;
    }
    Ok(writer.take_records())
}

#[cfg(target_arch = "wasm32")]
pub use wasm::*;

#[cfg(target_arch = "wasm32")]
mod wasm {
    use std::cell::RefCell;

    use super::{InitFn, State, TransformFn, init, run_batch};
    use crate::log::Level;
    use crate::{Header, Record};

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
        static STATE: RefCell<Option<State>> = const { RefCell::new(None) };
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

    /// The `init` export.
    pub fn export_init(config: Vec<(String, String)>, outputs: Vec<String>, user_init: Option<InitFn>) -> Result<(), String> {
        // A panic traps the instance; log its message first so the host can say why.
        std::panic::set_hook(Box::new(|info| host_log(Level::Error, &info.to_string())));
        let state = init(config, outputs, user_init).map_err(crate::Error::into_message)?;
        STATE.with(|current| *current.borrow_mut() = Some(state));
        Ok(())
    }

    /// The `process` export.
    pub fn export_process(batch: Vec<types::InputRecord>, run: TransformFn) -> Result<Vec<types::OutputRecord>, types::TransformError> {
        STATE.with(|current| {
            let current = current.borrow();
            let state = current.as_ref().ok_or_else(|| types::TransformError { message: "process called before init".to_owned() })?;
            // Moves, no copies: the byte vectors the host lowered become the SDK's records as they are.
            let records = batch.into_iter().map(|r| Record {
                key: r.key,
                value: r.value,
                headers: r.headers.into_iter().map(|h| Header { key: h.key, value: h.value }).collect(),
                timestamp_ms: r.timestamp_ms,
                partition: r.partition,
                offset: r.offset,
            });
            let written = run_batch(state, records, run).map_err(|e| types::TransformError { message: e.into_message() })?;
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
