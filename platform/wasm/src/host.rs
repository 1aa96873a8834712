//! What the host keeps per instance inside the wasmtime store, whatever the world, and the imports
//! every world gets: `host.log`, `host.report-failed-record`, `host.set-gauge`, the memory cap as a
//! `ResourceLimiter`, and the clock of the current call that the CPU bound reads.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::LogLevel;
use crate::bindings::{host, types};
use crate::limits::{
    GAUGE_NAME_BYTES_MAX, GAUGES_PER_INSTANCE_MAX, HOST_WAIT_MS_PER_CALL_MAX, LOG_MESSAGE_BYTES_MAX, LOG_MESSAGES_PER_CALL_MAX,
    truncate_message,
};

/// Where a plugin's log lines go. The broker implements it to write its own log and keep the lines
/// for the API; one sink per deployment, so it knows which plugin is speaking.
pub trait LogSink: Send + Sync {
    fn log(&self, level: LogLevel, message: &str);
}

/// Where a plugin's gauges (`host.set-gauge`) go: the runtime exports them with the deployment's
/// metrics. Names reaching it are valid and at most [`GAUGES_PER_INSTANCE_MAX`] per instance.
pub trait GaugeSink: Send + Sync {
    fn set(&self, name: &str, value: f64);
}

/// Whether `name` may name a gauge: 1..=[`GAUGE_NAME_BYTES_MAX`] bytes of `[a-z0-9_]`, starting with a
/// letter (it becomes a Prometheus label value, but also reads as a metric name).
pub fn valid_gauge_name(name: &str) -> bool {
    name.len() <= GAUGE_NAME_BYTES_MAX
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// A sink that writes to `tracing` under the plugin's name.
pub struct TracingLogSink {
    pub plugin: String,
}

impl LogSink for TracingLogSink {
    fn log(&self, level: LogLevel, message: &str) {
        let plugin = self.plugin.as_str();
        match level {
            LogLevel::Trace => tracing::trace!(plugin, "{message}"),
            LogLevel::Debug => tracing::debug!(plugin, "{message}"),
            LogLevel::Info => tracing::info!(plugin, "{message}"),
            LogLevel::Warn => tracing::warn!(plugin, "{message}"),
            LogLevel::Error => tracing::error!(plugin, "{message}"),
        }
    }
}

/// The error a memory growth past the cap traps with; `sandbox` maps it to `OutOfMemory`.
#[derive(Debug, thiserror::Error)]
#[error("memory limit exceeded: {requested_bytes} bytes requested, limit {limit_bytes}")]
pub(crate) struct MemoryCapExceeded {
    pub limit_bytes: usize,
    pub requested_bytes: usize,
}

/// The clock of the call in progress: what the CPU bound charges the guest. The epoch callback
/// and the bounded WASI waits (`wasi.rs`) read it; host imports that wait add to `uncharged`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CallClock {
    started: Instant,
    budget: Duration,
    /// Time spent in host imports waiting on something outside the guest, this call.
    uncharged: Duration,
}

impl CallClock {
    pub fn start(budget: Duration) -> CallClock {
        CallClock { started: Instant::now(), budget, uncharged: Duration::ZERO }
    }

    /// What the guest has used so far: the call's wall-clock time less the host's waits (up to
    /// `HOST_WAIT_MS_PER_CALL_MAX`; beyond that, waits are charged too).
    pub fn charged(&self) -> Duration {
        let uncharged = self.uncharged.min(Duration::from_millis(HOST_WAIT_MS_PER_CALL_MAX));
        self.started.elapsed().saturating_sub(uncharged)
    }

    /// What is left of the budget; zero once it is spent.
    pub fn remaining(&self) -> Duration {
        self.budget.saturating_sub(self.charged())
    }
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
    /// The current call's clock; set by `begin_call`.
    pub clock: CallClock,
    /// Log calls in the current call; reset by `begin_call`.
    pub log_count: usize,
    /// The last error-level line of the current call (the SDK logs panics there), for trap messages.
    pub last_error_log: Option<String>,
    /// What the guest passed to `report-failed-record` in the current call.
    pub failed_record: Option<u32>,
    /// What answers the connector worlds' `sql` import (`None`: no databases).
    pub sql: Option<Arc<dyn crate::SqlHost>>,
    /// Where `set-gauge` goes (`None`: ignored).
    pub gauge_sink: Option<Arc<dyn GaugeSink>>,
    /// The gauge names this instance has set (bounded by `GAUGES_PER_INSTANCE_MAX`).
    pub gauge_names: BTreeSet<String>,
}

impl HostState {
    pub fn new(wasi: WasiCtx, log_sink: Arc<dyn LogSink>, memory_bytes_max: usize, sql: Option<Arc<dyn crate::SqlHost>>) -> HostState {
        HostState {
            wasi,
            table: ResourceTable::new(),
            log_sink,
            memory_bytes_max,
            memory_bytes_used: 0,
            clock: CallClock::start(Duration::ZERO),
            log_count: 0,
            last_error_log: None,
            failed_record: None,
            sql,
            gauge_sink: None,
            gauge_names: BTreeSet::new(),
        }
    }

    pub fn begin_call(&mut self, budget: Duration) {
        self.clock = CallClock::start(budget);
        self.log_count = 0;
        self.last_error_log = None;
        self.failed_record = None;
    }

    /// Report log lines dropped in the call that just ended.
    pub fn end_call(&mut self) {
        if self.log_count > LOG_MESSAGES_PER_CALL_MAX {
            let dropped = self.log_count - LOG_MESSAGES_PER_CALL_MAX;
            self.log_sink.log(LogLevel::Warn, &format!("{dropped} log messages dropped (limit {LOG_MESSAGES_PER_CALL_MAX} per call)"));
        }
    }

    /// Run `wait` — the part of a host import that waits on something outside the guest, such as
    /// a database — without charging its time to the guest's CPU budget (up to
    /// `HOST_WAIT_MS_PER_CALL_MAX` per call). Every import that waits goes through here, and only
    /// those: work whose cost the guest controls (copying its arguments, formatting) stays
    /// charged, so a guest cannot stretch a call by making the host busy.
    pub fn uncharged<R>(&mut self, wait: impl FnOnce(&mut HostState) -> R) -> R {
        let started = Instant::now();
        let result = wait(self);
        self.clock.uncharged += started.elapsed();
        result
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

    fn report_failed_record(&mut self, index: u32) {
        self.failed_record = Some(index);
    }

    fn set_gauge(&mut self, name: String, value: f64) {
        let Some(sink) = &self.gauge_sink else { return };
        if !value.is_finite() || !valid_gauge_name(&name) {
            return;
        }
        if !self.gauge_names.contains(&name) {
            if self.gauge_names.len() >= GAUGES_PER_INSTANCE_MAX {
                return;
            }
            self.gauge_names.insert(name.clone());
        }
        sink.set(&name, value);
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

#[cfg(test)]
mod tests {
    use super::valid_gauge_name;

    #[test]
    fn gauge_names_are_short_lower_case_identifiers() {
        for good in ["retained_wal_bytes", "a", "lag2", &"x".repeat(64)] {
            assert!(valid_gauge_name(good), "{good}");
        }
        for bad in ["", "Retained", "2lag", "_x", "a-b", "a b", "a.b", "é", &"x".repeat(65)] {
            assert!(!valid_gauge_name(bad), "{bad}");
        }
    }
}
