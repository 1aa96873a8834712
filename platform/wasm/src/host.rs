//! What the host keeps per instance inside the wasmtime store, and the imports it serves: WASI (with
//! nothing granted unless the deployer said so), `host.log`, and the memory cap as a
//! `ResourceLimiter`.

use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::LogLevel;
use crate::bindings::sluice::plugin::{host, types};
use crate::limits::{LOG_MESSAGE_BYTES_MAX, LOG_MESSAGES_PER_CALL_MAX, truncate_message};

/// Where a transform's log lines go. The broker implements it to write its own log and keep the
/// lines for the API; one sink per deployment, so it knows which transform is speaking.
pub trait LogSink: Send + Sync {
    fn log(&self, level: LogLevel, message: &str);
}

/// A sink that writes to `tracing` under the transform's name.
pub struct TracingLogSink {
    pub transform: String,
}

impl LogSink for TracingLogSink {
    fn log(&self, level: LogLevel, message: &str) {
        let transform = self.transform.as_str();
        match level {
            LogLevel::Trace => tracing::trace!(transform, "{message}"),
            LogLevel::Debug => tracing::debug!(transform, "{message}"),
            LogLevel::Info => tracing::info!(transform, "{message}"),
            LogLevel::Warn => tracing::warn!(transform, "{message}"),
            LogLevel::Error => tracing::error!(transform, "{message}"),
        }
    }
}

/// The error a memory growth past the cap traps with; `instance` maps it to `OutOfMemory`.
#[derive(Debug, thiserror::Error)]
#[error("memory limit exceeded: {requested_bytes} bytes requested, limit {limit_bytes}")]
pub(crate) struct MemoryCapExceeded {
    pub limit_bytes: usize,
    pub requested_bytes: usize,
}

/// The data of one instance's store.
pub(crate) struct HostState {
    pub wasi: WasiCtx,
    pub table: ResourceTable,
    pub log_sink: Arc<dyn LogSink>,
    /// Memory cap in bytes, for all the instance's linear memories together; read on every growth,
    /// so `set_limits` takes effect at once.
    pub memory_bytes_max: usize,
    /// Bytes of linear memory the instance holds (memories only grow).
    pub memory_bytes_used: usize,
    /// Log calls in the current call; reset by `begin_call`.
    pub log_count: usize,
    /// The last error-level line of the current call (the SDK logs panics there), for trap messages.
    pub last_error_log: Option<String>,
}

impl HostState {
    pub fn begin_call(&mut self) {
        self.log_count = 0;
        self.last_error_log = None;
    }

    /// Report log lines dropped in the call that just ended.
    pub fn end_call(&mut self) {
        if self.log_count > LOG_MESSAGES_PER_CALL_MAX {
            let dropped = self.log_count - LOG_MESSAGES_PER_CALL_MAX;
            self.log_sink.log(LogLevel::Warn, &format!("{dropped} log messages dropped (limit {LOG_MESSAGES_PER_CALL_MAX} per call)"));
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl types::Host for HostState {}

impl host::Host for HostState {
    fn log(&mut self, level: LogLevel, message: String) {
        self.log_count += 1;
        if self.log_count > LOG_MESSAGES_PER_CALL_MAX {
            return;
        }
        let message = truncate_message(message, LOG_MESSAGE_BYTES_MAX);
        self.log_sink.log(level, &message);
        if level == LogLevel::Error {
            self.last_error_log = Some(message);
        }
    }
}

impl wasmtime::ResourceLimiter for HostState {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let requested_bytes = self.memory_bytes_used.saturating_sub(current).saturating_add(desired);
        if requested_bytes > self.memory_bytes_max {
            // An error rather than `Ok(false)`: the guest traps at once with a cause we can name,
            // instead of failing an allocation and aborting with a bare `unreachable`.
            return Err(wasmtime::Error::new(MemoryCapExceeded { limit_bytes: self.memory_bytes_max, requested_bytes }));
        }
        self.memory_bytes_used = requested_bytes;
        Ok(true)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        // Growth we allowed failed anyway (the OS refused); the exact size is unknown, so keep counting
        // it as used: the cap errs on the safe side.
        tracing::debug!("guest memory growth failed: {error:#}");
        Ok(())
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= TABLE_ELEMENTS_MAX)
    }

    fn instances(&self) -> usize {
        INSTANCES_MAX
    }

    fn tables(&self) -> usize {
        TABLES_MAX
    }

    fn memories(&self) -> usize {
        MEMORIES_MAX
    }
}

/// Bounds on what one component may create besides memory. A Rust component built by wasm32-wasip2
/// has a handful of core instances (the program, the WASI adapter, shims), one or two tables and
/// memories; these leave room and stop a hostile component from creating thousands.
const TABLE_ELEMENTS_MAX: usize = 100_000;
const INSTANCES_MAX: usize = 32;
const TABLES_MAX: usize = 32;
const MEMORIES_MAX: usize = 8;
