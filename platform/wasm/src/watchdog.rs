//! Running plugin work that must not hold its caller past a deadline — deploy-time `init` above
//! all, which the broker would otherwise run on a shared blocking pool — on a thread of its own.

use std::sync::mpsc;
use std::time::Duration;

use crate::PluginError;

/// Run `work` on a new thread and wait at most `timeout` for it. On time, its result; otherwise
/// `Watchdog`, and the thread is left to finish on its own (plugin calls end by themselves: the CPU
/// bound and the bounded WASI waits stop them within `cpu_ms_per_call` plus
/// `HOST_WAIT_MS_PER_CALL_MAX`), its result dropped — an instance made late is discarded whole.
///
/// ```no_run
/// # fn f(module: sluice_wasm::TransformModule, config: sluice_wasm::InstanceConfig) -> Result<(), sluice_wasm::PluginError> {
/// use std::time::Duration;
/// let outputs = vec!["out".to_owned()];
/// let trial = sluice_wasm::run_with_watchdog("trial-init", Duration::from_secs(30), move || module.instantiate(config, outputs))?;
/// # Ok(()) }
/// ```
pub fn run_with_watchdog<T, F>(name: &str, timeout: Duration, work: F) -> Result<T, PluginError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, PluginError> + Send + 'static,
{
    let (done, result) = mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name(format!("wasm-{name}"))
        .spawn(move || {
            // The receiver is gone if the watchdog gave up; the result is then dropped here.
            let _ = done.send(work());
        })
        .map_err(|e| PluginError::Engine(format!("starting a thread for {name}: {e}")))?;
    match result.recv_timeout(timeout) {
        Ok(result) => result,
        Err(mpsc::RecvTimeoutError::Timeout) => {
            Err(PluginError::Watchdog { limit_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX) })
        }
        // The thread ended without sending: `work` panicked.
        Err(mpsc::RecvTimeoutError::Disconnected) => Err(PluginError::Engine(format!("{name} panicked"))),
    }
}
