//! Logging from a plugin: `sluice::log::info!("skipped {n} records")`.
//!
//! In a Wasm instance each line goes to the host's `log` import and lands in the broker's log and the
//! transform's log in the API (the host bounds its size and rate). Natively (unit tests) lines go to
//! stderr and are kept per thread for [`crate::testing::Harness::logs`].

#[cfg(not(target_arch = "wasm32"))]
use std::cell::RefCell;
use std::fmt;

pub use crate::{__sluice_debug as debug, __sluice_error as error, __sluice_info as info, __sluice_trace as trace, __sluice_warn as warn};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Trace => "TRACE",
            Level::Debug => "DEBUG",
            Level::Info => "INFO",
            Level::Warn => "WARN",
            Level::Error => "ERROR",
        })
    }
}

/// Where lines go on wasm32: the `host.log` import of the world the component exports, registered by
/// that world's export glue at `init`. A function pointer rather than a direct call so that a
/// connector component does not link the transform world's bindings (their type information would
/// make the component claim the transform world's exports too).
#[cfg(target_arch = "wasm32")]
static HOST_LOG: std::sync::OnceLock<fn(Level, &str)> = std::sync::OnceLock::new();

#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub fn set_host_log(log: fn(Level, &str)) {
    let _ = HOST_LOG.set(log);
}

#[cfg(not(target_arch = "wasm32"))]
thread_local! {
    /// Lines logged natively, for tests. Bounded so a chatty test cannot grow it without end.
    static NATIVE_LINES: RefCell<Vec<(Level, String)>> = const { RefCell::new(Vec::new()) };
}

/// Lines kept natively per thread; older ones are dropped beyond this.
#[cfg(not(target_arch = "wasm32"))]
const NATIVE_LINES_MAX: usize = 10_000;

/// Log one message. The macros call this; call it directly when the level is dynamic.
pub fn log(level: Level, message: &str) {
    #[cfg(target_arch = "wasm32")]
    {
        if let Some(log) = HOST_LOG.get() {
            log(level, message);
        }
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        eprintln!("[transform {level}] {message}");
        NATIVE_LINES.with(|lines| {
            let mut lines = lines.borrow_mut();
            if lines.len() >= NATIVE_LINES_MAX {
                lines.remove(0);
            }
            lines.push((level, message.to_owned()));
        });
    }
}

/// Take the lines logged natively on this thread so far (none on wasm32, where the host has them).
pub(crate) fn take_native_lines() -> Vec<(Level, String)> {
    #[cfg(not(target_arch = "wasm32"))]
    return NATIVE_LINES.with(|lines| std::mem::take(&mut *lines.borrow_mut()));
    #[cfg(target_arch = "wasm32")]
    Vec::new()
}

#[doc(hidden)]
#[macro_export]
macro_rules! __sluice_trace {
    ($($arg:tt)*) => { $crate::log::log($crate::log::Level::Trace, &::std::format!($($arg)*)) };
}
#[doc(hidden)]
#[macro_export]
macro_rules! __sluice_debug {
    ($($arg:tt)*) => { $crate::log::log($crate::log::Level::Debug, &::std::format!($($arg)*)) };
}
#[doc(hidden)]
#[macro_export]
macro_rules! __sluice_info {
    ($($arg:tt)*) => { $crate::log::log($crate::log::Level::Info, &::std::format!($($arg)*)) };
}
#[doc(hidden)]
#[macro_export]
macro_rules! __sluice_warn {
    ($($arg:tt)*) => { $crate::log::log($crate::log::Level::Warn, &::std::format!($($arg)*)) };
}
#[doc(hidden)]
#[macro_export]
macro_rules! __sluice_error {
    ($($arg:tt)*) => { $crate::log::log($crate::log::Level::Error, &::std::format!($($arg)*)) };
}
