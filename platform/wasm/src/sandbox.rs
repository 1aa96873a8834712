//! The store setup every world shares: one [`Sandbox`] per instance holds the wasmtime store with
//! its memory cap, CPU bound and host-copy bound, and is the only way into the guest — each call
//! goes through [`Sandbox::call`], which arms the budget, runs the call, and turns what went wrong
//! into a [`PluginError`] (poisoning the instance when the guest stopped midway).

use std::sync::Arc;
use std::time::Duration;

use wasmtime::{Store, Trap, UpdateDeadline};

use crate::engine::{Code, CompiledComponent, Tier};
use crate::host::{GaugeSink, HostState, LogSink, MemoryCapExceeded, TracingLogSink};
use crate::limits::{CONFIG_BYTES_MAX, CONFIG_ENTRIES_MAX, Limits, OUTPUT_BYTES_PER_CALL_MAX};
use crate::wasi::WaitOutlastsBudget;
use crate::{Engine, Grants, PluginError, SqlHost};

/// Everything an instance of any world is made with. World-specific arguments (a transform's
/// output topics) are passed to that world's `instantiate`.
#[derive(Clone)]
pub struct InstanceConfig {
    /// Deploy-time key/value configuration, passed to the guest's `init`.
    pub config: Vec<(String, String)>,
    pub limits: Limits,
    pub grants: Grants,
    pub log_sink: Arc<dyn LogSink>,
    /// What answers the `sql` import of the connector worlds; `None` for transforms and for
    /// connectors without databases.
    pub sql: Option<Arc<dyn SqlHost>>,
    /// Where the guest's `set-gauge` calls go; `None` ignores them.
    pub gauges: Option<Arc<dyn GaugeSink>>,
}

impl InstanceConfig {
    /// Defaults: no config, default limits, no grants, logs to `tracing` under `plugin`'s name.
    pub fn new(plugin: &str) -> InstanceConfig {
        InstanceConfig {
            config: Vec::new(),
            limits: Limits::default(),
            grants: Grants::default(),
            log_sink: Arc::new(TracingLogSink { plugin: plugin.to_owned() }),
            sql: None,
            gauges: None,
        }
    }

    fn validate(&self) -> Result<(), PluginError> {
        self.limits.validate()?;
        let config_bytes: usize = self.config.iter().map(|(k, v)| k.len() + v.len()).sum();
        if self.config.len() > CONFIG_ENTRIES_MAX || config_bytes > CONFIG_BYTES_MAX {
            return Err(PluginError::InvalidRequest(format!(
                "config of {} entries, {config_bytes} bytes; limits {CONFIG_ENTRIES_MAX} entries, {CONFIG_BYTES_MAX} bytes",
                self.config.len()
            )));
        }
        Ok(())
    }
}

/// One instance's store and limits. Not shared: driven from one thread at a time.
pub(crate) struct Sandbox {
    store: Store<HostState>,
    limits: Limits,
    /// The engine's epoch tick, to turn durations into deadlines.
    tick: Duration,
    /// Set by a trap, timeout or memory exhaustion: the guest's state is unknown, so no further calls.
    poisoned: Option<String>,
    /// Keeps the engine's epoch ticker running while the instance lives: the CPU bound is only as
    /// good as the ticker, and an instance can outlive every module and engine handle its owner
    /// held (a regression: an instance whose module was dropped looped forever).
    _engine: Engine,
    /// The compiler of the code this instance runs, and the component's code, to tell when better
    /// code exists (`superseded`).
    tier: Tier,
    code: Arc<Code>,
}

impl Sandbox {
    /// A store for an instance of `component`'s code of `tier` (the tier of the pre-instantiation
    /// the world instantiates in it).
    pub fn new(component: &CompiledComponent, tier: Tier, config: &InstanceConfig) -> Result<Sandbox, PluginError> {
        let engine = component.engine();
        config.validate()?;
        let mut state = HostState::new(config.grants.wasi_ctx()?, config.log_sink.clone(), config.limits.memory_bytes, config.sql.clone());
        state.gauge_sink = config.gauges.clone();
        let mut store = Store::new(&engine.inner.compiler(tier).engine, state);
        store.limiter(|state| state);
        // Lifting what the guest returns or passes to an import checks this before allocating.
        store.set_hostcall_fuel(OUTPUT_BYTES_PER_CALL_MAX);
        let tick = engine.inner.epoch_tick;
        // The deadline only says "look again": the budget itself is the call's clock, which leaves
        // out the host's waits. At each deadline the guest is stopped if its charged time is spent,
        // or given a new deadline for what is left.
        store.epoch_deadline_callback(move |store| {
            let remaining = store.data().clock.remaining();
            if remaining.is_zero() { Ok(UpdateDeadline::Interrupt) } else { Ok(UpdateDeadline::Continue(deadline_ticks(remaining, tick))) }
        });
        Ok(Sandbox {
            store,
            limits: config.limits,
            tick,
            poisoned: None,
            _engine: engine.clone(),
            tier,
            code: Arc::clone(component.code()),
        })
    }

    /// Make a call into the guest (instantiation and `init`, or one batch) under the instance's
    /// limits. An error from the call — trap, timeout, memory exhaustion, output the canonical ABI
    /// or the host-copy bound refuses — poisons the instance: every later call returns `Poisoned`.
    pub fn call<R>(&mut self, call: impl FnOnce(&mut Store<HostState>) -> wasmtime::Result<R>) -> Result<R, PluginError> {
        if let Some(reason) = &self.poisoned {
            return Err(PluginError::Poisoned(reason.clone()));
        }
        let budget = Duration::from_millis(self.limits.cpu_ms_per_call);
        self.store.data_mut().begin_call(budget);
        self.store.set_epoch_deadline(deadline_ticks(budget, self.tick));
        let result = call(&mut self.store);
        self.store.data_mut().end_call();
        result.map_err(|error| {
            let error = self.classify(error);
            self.poisoned = Some(error.to_string());
            error
        })
    }

    /// The store, for what a world does between calls (reading what the call left in the host state).
    pub fn store(&self) -> &Store<HostState> {
        &self.store
    }

    /// Change the limits; the next call runs under them. Memory already allocated is kept.
    pub fn set_limits(&mut self, limits: Limits) -> Result<(), PluginError> {
        limits.validate()?;
        self.limits = limits;
        self.store.data_mut().memory_bytes_max = limits.memory_bytes;
        Ok(())
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    pub fn memory_bytes(&self) -> usize {
        self.store.data().memory_bytes_used
    }

    pub fn poisoned(&self) -> Option<&str> {
        self.poisoned.as_deref()
    }

    /// The compiler of the code this instance runs.
    pub fn tier(&self) -> Tier {
        self.tier
    }

    /// Whether the component now has better code than this instance runs: the owner replaces the
    /// instance at its next safe point (a new instance runs `init` again).
    pub fn superseded(&self) -> bool {
        self.tier == Tier::Baseline && self.code.tier() == Tier::Optimized
    }

    /// Map a wasmtime error from a call to ours.
    fn classify(&mut self, error: wasmtime::Error) -> PluginError {
        if let Some(cap) = error.downcast_ref::<MemoryCapExceeded>() {
            return PluginError::OutOfMemory { limit_bytes: cap.limit_bytes, requested_bytes: cap.requested_bytes };
        }
        if error.downcast_ref::<WaitOutlastsBudget>().is_some() {
            return PluginError::CpuTimeout { limit_ms: self.limits.cpu_ms_per_call };
        }
        match error.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => PluginError::CpuTimeout { limit_ms: self.limits.cpu_ms_per_call },
            Some(trap) => {
                let mut message = trap.to_string();
                if let Some(logged) = self.store.data_mut().last_error_log.take() {
                    message.push_str("; the guest logged: ");
                    message.push_str(&logged);
                }
                PluginError::Trap(message)
            }
            None => {
                let message = format!("{error:#}");
                // wasmtime's hostcall fuel ran out while lifting: its error type is private, so it
                // is recognised by its message (`tests/output_bound.rs` pins it).
                if message.contains("fuel allocated for hostcalls has been exhausted") {
                    return PluginError::MalformedOutput(format!(
                        "the guest handed the host more than {OUTPUT_BYTES_PER_CALL_MAX} bytes in one call \
                         (OUTPUT_BYTES_PER_CALL_MAX: keys, values and headers of all output records, \
                         counted before they are copied)"
                    ));
                }
                // Not a trap: the canonical ABI refused what the guest handed back (a pointer out of
                // bounds, invalid UTF-8, a bad discriminant) or a host import failed.
                PluginError::MalformedOutput(message)
            }
        }
    }
}

/// Epoch ticks for a deadline at least `duration` from now: the deadline fires between `ticks - 1`
/// and `ticks` ticks from now, so one extra tick makes it a floor.
fn deadline_ticks(duration: Duration, tick: Duration) -> u64 {
    let ticks = duration.as_nanos().div_ceil(tick.as_nanos().max(1));
    u64::try_from(ticks).unwrap_or(u64::MAX - 1) + 1
}
