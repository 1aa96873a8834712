//! Where the request path's file calls run: on the worker thread while they are fast, moved off it
//! while the kernel makes them slow.
//!
//! An append or a Fetch's index lookup is a copy into or out of the page cache: tens of
//! microseconds. Running it through `tokio::task::block_in_place` hands the worker's run queue to
//! another thread for every call — two thread switches per request, which cost a third of the
//! produce rate (BENCHMARKS.md, "File calls on the worker threads"). But the kernel can make the
//! same call slow: writers are throttled once dirty pages pile up, a cold read waits for the disk.
//! Then the worker's other tasks (other connections, the group coordinator's timers, the admin API)
//! must not wait behind it. So when a call takes [`SLOW_FILE_CALL`] or more for the second time
//! within [`SLOW_AGAIN_WITHIN`], every file call of the next [`OFFLOAD_WINDOW`] goes through
//! `block_in_place`; the first call after the window runs inline again. One slow call alone does not
//! move anything: on a busy machine a call is also slow when its thread is preempted, which happens
//! about once a second under load, while throttling makes every write slow, one after another.
//! A single stall (one cold read) costs the worker's other tasks that one wait.

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

    /// Runs `f` (blocking file I/O) from a worker thread of a multi-threaded runtime.
    pub(crate) fn run<T>(&self, f: impl FnOnce() -> T) -> T {
        let started = Instant::now();
        let now = self.nanos(started);
        // Relaxed: a stale read only runs one call inline that could have been moved, or the reverse.
        if now < self.offload_until.load(Ordering::Relaxed) {
            return tokio::task::block_in_place(f);
        }
        let result = f();
        let took = started.elapsed();
        if took >= SLOW_FILE_CALL {
            self.slow.inc();
            let ended = self.nanos(started + took);
            let previous = self.last_slow.swap(ended, Ordering::Relaxed);
            if previous != 0 && ended.saturating_sub(previous) <= SLOW_AGAIN_WITHIN.as_nanos() as u64 {
                self.offload_until.fetch_max(self.nanos(started + took + OFFLOAD_WINDOW), Ordering::Relaxed);
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
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_call_moves_the_next_ones_off_the_worker() {
        let calls = FileCalls::new(IntCounter::new("slow", "slow").expect("counter"));
        assert_eq!(calls.run(|| 7), 7);
        assert!(!calls.offloading(), "a fast call leaves calls inline");
        assert_eq!(calls.slow.get(), 0);
        calls.run(|| std::thread::sleep(SLOW_FILE_CALL * 2));
        assert_eq!(calls.slow.get(), 1);
        assert!(!calls.offloading(), "one slow call (a preemption, one cold read) moves nothing");
        calls.run(|| std::thread::sleep(SLOW_FILE_CALL * 2));
        assert_eq!(calls.slow.get(), 2);
        assert!(calls.offloading(), "after slow calls one after another, calls leave the worker");
        // Offloaded calls still run and return their value.
        assert_eq!(calls.run(|| 8), 8);
    }
}
