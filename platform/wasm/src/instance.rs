//! One running transform instance: a store with its own memory, the per-call CPU bound, and the
//! calls across the boundary — one per batch.

use std::sync::Arc;

use wasmtime::{Store, Trap};
use wasmtime_wasi::WasiCtxBuilder;

use crate::bindings::Transform;
use crate::host::{HostState, LogSink, MemoryCapExceeded, TracingLogSink};
use crate::limits::*;
use crate::module::Module;
use crate::{InputRecord, OutputRecord, TransformError};

/// What WASI capabilities a deployment grants. Default: none — no environment variables, no
/// filesystem, no network. (Clocks and random numbers are always available; std needs them.)
#[derive(Clone, Debug, Default)]
pub struct Grants {
    /// Environment variables the guest sees.
    pub env: Vec<(String, String)>,
    /// Host directories mounted read-only: `(host path, guest path)`.
    pub read_only_dirs: Vec<(std::path::PathBuf, String)>,
    /// Let the guest open TCP/UDP sockets and resolve names.
    pub network: bool,
}

/// Everything one instance is made with.
#[derive(Clone)]
pub struct InstanceConfig {
    /// The deployed output topics; index 0 is the default output. At least one.
    pub outputs: Vec<String>,
    /// Deploy-time key/value configuration, passed to the guest's `init`.
    pub config: Vec<(String, String)>,
    pub limits: Limits,
    pub grants: Grants,
    pub log_sink: Arc<dyn LogSink>,
}

impl InstanceConfig {
    /// Defaults: no config, default limits, no grants, logs to `tracing` under `transform`.
    pub fn new(transform: &str, outputs: Vec<String>) -> InstanceConfig {
        InstanceConfig {
            outputs,
            config: Vec::new(),
            limits: Limits::default(),
            grants: Grants::default(),
            log_sink: Arc::new(TracingLogSink { transform: transform.to_owned() }),
        }
    }

    fn validate(&self) -> Result<(), TransformError> {
        self.limits.validate().map_err(TransformError::InvalidRequest)?;
        if self.outputs.is_empty() || self.outputs.len() > OUTPUTS_MAX {
            return Err(TransformError::InvalidRequest(format!("{} output topics; 1..={OUTPUTS_MAX} allowed", self.outputs.len())));
        }
        if let Some(name) = self.outputs.iter().find(|name| name.is_empty() || name.len() > OUTPUT_NAME_BYTES_MAX) {
            return Err(TransformError::InvalidRequest(format!("output topic name {name:?} must be 1..={OUTPUT_NAME_BYTES_MAX} bytes")));
        }
        let config_bytes: usize = self.config.iter().map(|(k, v)| k.len() + v.len()).sum();
        if self.config.len() > CONFIG_ENTRIES_MAX || config_bytes > CONFIG_BYTES_MAX {
            return Err(TransformError::InvalidRequest(format!(
                "config of {} entries, {config_bytes} bytes; limits {CONFIG_ENTRIES_MAX} entries, {CONFIG_BYTES_MAX} bytes",
                self.config.len()
            )));
        }
        Ok(())
    }
}

/// A live instance. Not shared: the broker drives each from one thread at a time (`Send`, not `Sync`).
pub struct Instance {
    store: Store<HostState>,
    bindings: Transform,
    limits: Limits,
    /// The engine's epoch tick in milliseconds, to turn `cpu_ms_per_call` into ticks.
    tick_ms: u64,
    outputs_len: usize,
    /// Set by a trap, timeout or memory exhaustion: the guest's state is unknown, so no further calls.
    poisoned: Option<String>,
}

impl Instance {
    pub(crate) fn new(module: &Module, config: InstanceConfig) -> Result<Instance, TransformError> {
        config.validate()?;
        let wasi = wasi_ctx(&config.grants)?;
        let state = HostState {
            wasi,
            table: wasmtime::component::ResourceTable::new(),
            log_sink: config.log_sink.clone(),
            memory_bytes_max: config.limits.memory_bytes,
            memory_bytes_used: 0,
            log_count: 0,
            last_error_log: None,
        };
        let mut store = Store::new(&module.engine.inner.engine, state);
        store.limiter(|state| state);
        store.epoch_deadline_trap();
        let tick_ms = u64::try_from(module.engine.inner.epoch_tick.as_millis()).unwrap_or(1).max(1);
        arm_deadline(&mut store, config.limits, tick_ms);
        store.data_mut().begin_call();
        let bindings = match module.pre.instantiate(&mut store) {
            Ok(bindings) => bindings,
            Err(e) => return Err(classify(e, &mut store, config.limits)),
        };
        let mut instance = Instance { store, bindings, limits: config.limits, tick_ms, outputs_len: config.outputs.len(), poisoned: None };
        arm_deadline(&mut instance.store, instance.limits, tick_ms);
        let result = instance.bindings.sluice_plugin_transformer().call_init(&mut instance.store, &config.config, &config.outputs);
        instance.store.data_mut().end_call();
        match result {
            Ok(Ok(())) => Ok(instance),
            Ok(Err(message)) => Err(TransformError::InitFailed(truncate_message(message, GUEST_ERROR_BYTES_MAX))),
            Err(e) => Err(classify(e, &mut instance.store, instance.limits)),
        }
    }

    /// Transform one batch. A failure inside the call — trap, timeout, memory exhaustion, output the
    /// canonical ABI rejects — poisons the instance: every later call returns `Poisoned`. A
    /// `GuestError` (the guest's own `Err`) or a `MalformedOutput` found by the host's checks of
    /// well-formed output leaves it usable; the broker decides whether to stop the transform.
    pub fn process(&mut self, batch: &[InputRecord]) -> Result<Vec<OutputRecord>, TransformError> {
        if let Some(reason) = &self.poisoned {
            return Err(TransformError::Poisoned(reason.clone()));
        }
        if batch.len() > INPUT_RECORDS_PER_CALL_MAX {
            return Err(TransformError::InvalidRequest(format!(
                "{} records in one batch; the limit is {INPUT_RECORDS_PER_CALL_MAX}",
                batch.len()
            )));
        }
        arm_deadline(&mut self.store, self.limits, self.tick_ms);
        self.store.data_mut().begin_call();
        let result = self.bindings.sluice_plugin_transformer().call_process(&mut self.store, batch);
        self.store.data_mut().end_call();
        match result {
            Ok(Ok(records)) => {
                self.validate_output(&records)?;
                Ok(records)
            }
            Ok(Err(error)) => Err(TransformError::GuestError(truncate_message(error.message, GUEST_ERROR_BYTES_MAX))),
            Err(e) => {
                let error = classify(e, &mut self.store, self.limits);
                // The guest stopped mid-way; its state can no longer be trusted.
                self.poisoned = Some(error.to_string());
                Err(error)
            }
        }
    }

    /// Change the limits; the next call runs under them. Memory already allocated is kept.
    pub fn set_limits(&mut self, limits: Limits) -> Result<(), TransformError> {
        limits.validate().map_err(TransformError::InvalidRequest)?;
        self.limits = limits;
        self.store.data_mut().memory_bytes_max = limits.memory_bytes;
        Ok(())
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Bytes of linear memory the guest holds now (for metrics; it never shrinks).
    pub fn memory_bytes(&self) -> usize {
        self.store.data().memory_bytes_used
    }

    /// Why the instance cannot be called any more, if it cannot.
    pub fn poisoned(&self) -> Option<&str> {
        self.poisoned.as_deref()
    }

    fn validate_output(&self, records: &[OutputRecord]) -> Result<(), TransformError> {
        if records.len() > OUTPUT_RECORDS_PER_CALL_MAX {
            return Err(TransformError::MalformedOutput(format!(
                "{} records from one batch; the limit is {OUTPUT_RECORDS_PER_CALL_MAX}",
                records.len()
            )));
        }
        for (idx, record) in records.iter().enumerate() {
            if record.output as usize >= self.outputs_len {
                return Err(TransformError::MalformedOutput(format!(
                    "record {idx} names output {} but the transform has {} output topics",
                    record.output, self.outputs_len
                )));
            }
            if record.headers.len() > OUTPUT_HEADERS_PER_RECORD_MAX {
                return Err(TransformError::MalformedOutput(format!(
                    "record {idx} has {} headers; the limit is {OUTPUT_HEADERS_PER_RECORD_MAX}",
                    record.headers.len()
                )));
            }
            let bytes = record.key.as_ref().map_or(0, Vec::len)
                + record.value.as_ref().map_or(0, Vec::len)
                + record.headers.iter().map(|h| h.key.len() + h.value.len()).sum::<usize>();
            if bytes > OUTPUT_RECORD_BYTES_MAX {
                return Err(TransformError::MalformedOutput(format!(
                    "record {idx} is {bytes} bytes (key, value and headers); the limit is {OUTPUT_RECORD_BYTES_MAX}"
                )));
            }
        }
        Ok(())
    }
}

fn arm_deadline(store: &mut Store<HostState>, limits: Limits, tick_ms: u64) {
    // The deadline fires between `ticks - 1` and `ticks` ticks from now; one extra tick makes the
    // bound a floor: a call always gets at least `cpu_ms_per_call`.
    let ticks = limits.cpu_ms_per_call.div_ceil(tick_ms) + 1;
    store.set_epoch_deadline(ticks);
}

/// Map a wasmtime error from a call to our error.
fn classify(error: wasmtime::Error, store: &mut Store<HostState>, limits: Limits) -> TransformError {
    if let Some(cap) = error.downcast_ref::<MemoryCapExceeded>() {
        return TransformError::OutOfMemory { limit_bytes: cap.limit_bytes, requested_bytes: cap.requested_bytes };
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => TransformError::CpuTimeout { limit_ms: limits.cpu_ms_per_call },
        Some(trap) => {
            let mut message = trap.to_string();
            if let Some(logged) = store.data_mut().last_error_log.take() {
                message.push_str("; the guest logged: ");
                message.push_str(&logged);
            }
            TransformError::Trap(message)
        }
        // Not a trap: the canonical ABI refused what the guest handed back (a pointer out of bounds,
        // invalid UTF-8, a bad discriminant) or a host import failed.
        None => TransformError::MalformedOutput(format!("{error:#}")),
    }
}

fn wasi_ctx(grants: &Grants) -> Result<wasmtime_wasi::WasiCtx, TransformError> {
    // stdin is closed; stdout and stderr accept and discard everything (a bounded buffer would make
    // `eprintln!` panic once full). Guests log through the `host.log` import.
    let mut builder = WasiCtxBuilder::new();
    for (key, value) in &grants.env {
        builder.env(key, value);
    }
    for (host_path, guest_path) in &grants.read_only_dirs {
        builder
            .preopened_dir(host_path, guest_path, wasmtime_wasi::FsPerms::ReadOnly)
            .map_err(|e| TransformError::InvalidRequest(format!("granting {}: {e:#}", host_path.display())))?;
    }
    builder.allow_tcp(grants.network).allow_udp(grants.network).allow_ip_name_lookup(grants.network);
    if grants.network {
        builder.inherit_network();
    }
    Ok(builder.build())
}
