//! The crate's one error type. Every variant reads as a complete sentence for an operator: the broker
//! shows `to_string()` as the transform's state message.

/// Why loading, instantiating or calling a transform failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransformError {
    /// The bytes are not a WebAssembly component wasmtime can compile.
    #[error("invalid module: {0}")]
    InvalidModule(String),
    /// A component, but not of the `sluice:plugin@0.1.0` transform world (missing or mistyped exports,
    /// imports the host does not provide, another version of the package).
    #[error("wrong world: {0}")]
    WrongWorld(String),
    /// The guest's `init` refused its configuration or outputs.
    #[error("init failed: {0}")]
    InitFailed(String),
    /// The guest returned an error for a batch (its own message).
    #[error("transform error: {0}")]
    GuestError(String),
    /// The guest trapped (panic, `unreachable`, out-of-bounds access, stack overflow).
    #[error("trapped: {0}")]
    Trap(String),
    /// A call ran longer than `cpu_ms_per_call`.
    #[error("CPU limit exceeded: a call ran longer than {limit_ms} ms and was interrupted")]
    CpuTimeout { limit_ms: u64 },
    /// The guest tried to grow its memory past `memory_bytes`.
    #[error("memory limit exceeded: the guest asked for {requested_bytes} bytes, the limit is {limit_bytes}")]
    OutOfMemory { limit_bytes: usize, requested_bytes: usize },
    /// The guest's output broke the contract: a record over a size limit, too many records, an
    /// output index no deployed topic has, or values the canonical ABI rejects.
    #[error("malformed output: {0}")]
    MalformedOutput(String),
    /// An earlier trap or timeout left this instance unusable; the broker must instantiate again.
    #[error("instance poisoned by an earlier failure ({0}); instantiate the module again")]
    Poisoned(String),
    /// The caller passed something outside the limits (config size, outputs, batch size, limits).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The engine could not be set up (should not happen with valid configuration).
    #[error("wasm engine: {0}")]
    Engine(String),
}
