//! Where the request path's appends and Fetch reads run: on the worker thread while they are quick,
//! moved off it while they may block.
//!
//! An append or a Fetch's index lookup is a copy into or out of the page cache: tens of
//! microseconds. Running it through `tokio::task::block_in_place` hands the worker's run queue to
//! another thread for every call — two thread switches per request, which cost a fifth to a third
//! of the produce rate (BENCHMARKS.md, "File calls on the worker threads"). But such a call can
//! block, and then the worker's other tasks (other connections, the group coordinator's timers,
//! the admin API) must not wait behind it:
//! - when the caller knows it may (an append that rolls a segment, which fsyncs; a log held by a
//!   writer) it says so, and the call goes through `block_in_place`;
//! - when the kernel makes calls slow (writers throttled once dirty pages pile up, reads waiting on
//!   the disk), two calls of [`SLOW_FILE_CALL`] or more within [`SLOW_AGAIN_WITHIN`] send every call
//!   of the next [`OFFLOAD_WINDOW`] through `block_in_place`, and calls made there that are still
//!   slow keep the window open. One slow call alone moves nothing: on a busy machine a call is also
//!   slow when its thread is preempted, about once a second under load, while throttling makes
//!   every write slow, one after another.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prometheus::IntCounter;

/// A file call that takes this long is the kernel throttling or waiting on the disk, not a copy.
pub(crate) const SLOW_FILE_CALL: Duration = Duration::from_millis(5);

/// Two slow calls this close together mean the kernel is holding file calls up, not a preemption.
pub(crate) const SLOW_AGAIN_WITHIN: Duration = Duration::from_millis(100);

/// How long file calls leave the worker threads once they are found slow.
pub(crate) const OFFLOAD_WINDOW: Duration = Duration::from_millis(500);

pub(crate) struct FileCalls {
    epoch: Instant,
    /// Nanoseconds after `epoch` until which calls go through `block_in_place`.
    offload_until: AtomicU64,
    /// Nanoseconds after `epoch` at which the last slow call ended (0: none yet).
    last_slow: AtomicU64,
    slow: IntCounter,
}

impl FileCalls {
    pub(crate) fn new(slow: IntCounter) -> FileCalls {
        FileCalls { epoch: Instant::now(), offload_until: AtomicU64::new(0), last_slow: AtomicU64::new(0), slow }
    }

    /// Runs `f` (blocking file I/O) from a worker thread: inline if `quick` (the caller's word that
    /// it neither fsyncs nor waits for a lock held across file work) and calls are not being moved,
    /// else through `block_in_place`.
    pub(crate) fn run<T>(&self, quick: bool, f: impl FnOnce() -> T) -> T {
        let started = Instant::now();
        // Relaxed: a stale read only runs one call inline that could have been moved, or the reverse.
        let offload = !quick || self.nanos(started) < self.offload_until.load(Ordering::Relaxed);
        let result = if offload { off_worker(f) } else { f() };
        let took = started.elapsed();
        if took >= SLOW_FILE_CALL {
            self.slow.inc();
            let ended = self.nanos(started + took);
            let previous = self.last_slow.swap(ended, Ordering::Relaxed);
            let again = previous != 0 && ended.saturating_sub(previous) <= duration_nanos(SLOW_AGAIN_WITHIN);
            if offload || again {
                self.offload_until.fetch_max(ended.saturating_add(duration_nanos(OFFLOAD_WINDOW)), Ordering::Relaxed);
            }
        }
        result
    }

    /// Whether calls are being moved off the worker threads now.
    #[cfg(test)]
    pub(crate) fn offloading(&self) -> bool {
        self.nanos(Instant::now()) < self.offload_until.load(Ordering::Relaxed)
    }

    fn nanos(&self, at: Instant) -> u64 {
        duration_nanos(at.saturating_duration_since(self.epoch))
    }
}

fn duration_nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// `block_in_place` where it exists: it panics on a current-thread runtime (tests, tools), where
/// there is no other worker to keep running anyway, so the call runs in place.
pub(crate) fn off_worker<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|handle| handle.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn calls() -> FileCalls {
        FileCalls::new(IntCounter::new("slow", "slow").expect("counter"))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn slow_calls_one_after_another_move_the_next_ones_off_the_worker() {
        let calls = calls();
        assert_eq!(calls.run(true, || 7), 7);
        assert!(!calls.offloading(), "a fast call leaves calls inline");
        assert_eq!(calls.slow.get(), 0);
        calls.run(true, || std::thread::sleep(SLOW_FILE_CALL * 2));
        assert_eq!(calls.slow.get(), 1);
        assert!(!calls.offloading(), "one slow call (a preemption, one cold read) moves nothing");
        calls.run(true, || std::thread::sleep(SLOW_FILE_CALL * 2));
        assert_eq!(calls.slow.get(), 2);
        assert!(calls.offloading(), "after slow calls one after another, calls leave the worker");
        // Offloaded calls still run and return their value.
        assert_eq!(calls.run(true, || 8), 8);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_call_the_caller_says_may_block_is_moved_and_keeps_the_window_open_while_slow() {
        let calls = calls();
        assert_eq!(calls.run(false, || 9), 9);
        assert!(!calls.offloading(), "a quick call the caller moved opens no window");
        calls.run(false, || std::thread::sleep(SLOW_FILE_CALL * 2));
        assert!(calls.offloading(), "a moved call that was slow keeps later calls moved");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn on_a_current_thread_runtime_calls_run_in_place() {
        let calls = calls();
        calls.run(false, || std::thread::sleep(SLOW_FILE_CALL * 2));
        assert_eq!(calls.run(true, || 10), 10, "no block_in_place panic on a current-thread runtime");
    }
}
