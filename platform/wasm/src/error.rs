//! The crate's one error type, for every world. Every variant reads as a complete sentence for an
//! operator: the broker shows `to_string()` as the plugin's state message.

use crate::World;

/// Why loading, instantiating or calling a plugin failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PluginError {
    /// The bytes are not a WebAssembly component wasmtime can compile.
    #[error("invalid module: {0}")]
    InvalidModule(String),
    /// A component, but not of the world it was loaded as (or, from [`crate::Engine::inspect`], of
    /// no world this host runs): missing or mistyped exports, imports the host does not provide,
    /// another version of the `sluice:plugin` package.
    #[error("wrong world: {0}")]
    WrongWorld(String),
    /// The guest's `init` refused its configuration.
    #[error("init failed: {0}")]
    InitFailed(String),
    /// The guest returned its own error for a call. `record_index` is the position in the batch
    /// of the record that failed, when the guest said which (`host.report-failed-record`).
    #[error("{world} error: {message}")]
    GuestError { world: World, message: String, record_index: Option<usize> },
    /// A connector (`source` or `sink`) returned its own error from `init`, `poll` or `put`.
    /// `retriable`: the guest says the outside system was unavailable and the call is worth making
    /// again later; `record_index`: for `put`, the position in the batch of the record that failed.
    #[error("{world} error: {message}{}", if *retriable { " (retriable)" } else { "" })]
    ConnectorError { world: World, message: String, retriable: bool, record_index: Option<usize> },
    /// The guest trapped (panic, `unreachable`, out-of-bounds access, stack overflow).
    #[error("trapped: {0}")]
    Trap(String),
    /// A call used more than `cpu_ms_per_call`: running guest code, or blocked in a WASI wait
    /// (a sleep) that would have outlasted the rest of its budget.
    #[error("CPU limit exceeded: a call ran longer than {limit_ms} ms and was interrupted")]
    CpuTimeout { limit_ms: u64 },
    /// The guest tried to grow its memory past `memory_bytes`.
    #[error("memory limit exceeded: the guest asked for {requested_bytes} bytes, the limit is {limit_bytes}")]
    OutOfMemory { limit_bytes: usize, requested_bytes: usize },
    /// The guest's output broke the contract: a record over a size limit, too many records or
    /// bytes, an output index no deployed topic has, or values the canonical ABI rejects.
    #[error("malformed output: {0}")]
    MalformedOutput(String),
    /// An earlier trap or timeout left this instance unusable; the broker must instantiate again.
    #[error("instance poisoned by an earlier failure ({0}); instantiate the module again")]
    Poisoned(String),
    /// Work handed to [`crate::run_with_watchdog`] did not finish in time.
    #[error("did not finish within {limit_ms} ms")]
    Watchdog { limit_ms: u64 },
    /// The caller passed something outside the limits (config size, outputs, batch size, limits).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The engine could not be set up (should not happen with valid configuration).
    #[error("wasm engine: {0}")]
    Engine(String),
}
