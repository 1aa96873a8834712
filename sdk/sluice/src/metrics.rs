//! Metrics from a plugin: `sluice::metrics::gauge("retained_wal_bytes", bytes as f64)`.
//!
//! In a Wasm instance a gauge goes to the host's `set-gauge` import; a connector task's gauges are
//! exported as `sluice_connector_plugin_gauge{connector, task, name}`. Names are 1..=64 bytes of
//! lower-case letters, digits and `_`, starting with a letter, at most 32 per instance; the host
//! ignores others, and NaN or infinite values. Natively (unit tests) the last value of each name is
//! kept per thread for [`native_gauge`].

#[cfg(not(target_arch = "wasm32"))]
use std::cell::RefCell;
#[cfg(not(target_arch = "wasm32"))]
use std::collections::BTreeMap;

/// Where gauges go on wasm32: the `host.set-gauge` import of the world the component exports,
/// registered by that world's export glue at `init` (a function pointer, as `log`'s, so that one
/// world's bindings do not pull in another's).
#[cfg(target_arch = "wasm32")]
static HOST_GAUGE: std::sync::OnceLock<fn(&str, f64)> = std::sync::OnceLock::new();

#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub fn set_host_gauge(gauge: fn(&str, f64)) {
    let _ = HOST_GAUGE.set(gauge);
}

#[cfg(not(target_arch = "wasm32"))]
thread_local! {
    static NATIVE_GAUGES: RefCell<BTreeMap<String, f64>> = const { RefCell::new(BTreeMap::new()) };
}

/// Sets gauge `name` to `value`.
pub fn gauge(name: &str, value: f64) {
    #[cfg(target_arch = "wasm32")]
    {
        if let Some(gauge) = HOST_GAUGE.get() {
            gauge(name, value);
        }
    }
    #[cfg(not(target_arch = "wasm32"))]
    NATIVE_GAUGES.with(|gauges| {
        gauges.borrow_mut().insert(name.to_owned(), value);
    });
}

/// The last value set for `name` on this thread, natively (for tests); `None` on wasm32.
pub fn native_gauge(name: &str) -> Option<f64> {
    #[cfg(not(target_arch = "wasm32"))]
    {
        NATIVE_GAUGES.with(|gauges| gauges.borrow().get(name).copied())
    }
    #[cfg(target_arch = "wasm32")]
    {
        let _ = name;
        None
    }
}
