//! The error policy every runtime applies when a module fails on a batch: retry with backoff, then
//! stop, dead-letter the records that fail, or skip them — Kafka Connect's `errors.retry.timeout` /
//! `errors.retry.delay.max.ms` followed by `errors.tolerance` (`none` stops; `all` dead-letters when
//! `errors.deadletterqueue.topic.name` is set, else skips).
//!
//! Only the failing records are dead-lettered or skipped: [`crate::isolate`] finds them, and the rest
//! of the batch goes through. Dead letters carry the original record with context headers saying
//! where it came from and why ([`context_headers`]).

use std::ops::Range;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sluice_wasm::PluginError;

use crate::error::RuntimeError;
use crate::isolate::{self, Outcome};
use crate::supervisor::TaskControl;

/// Retries and what follows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorPolicy {
    pub retry: RetryPolicy,
    pub on_failure: OnFailure,
}

impl Default for ErrorPolicy {
    fn default() -> Self {
        ErrorPolicy { retry: RetryPolicy::NONE, on_failure: OnFailure::Stop }
    }
}

/// How a failing batch is retried before `on_failure` applies. Retries stop at whichever limit comes
/// first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Calls in all, the first included: 1 means no retry.
    pub max_attempts: u32,
    /// Total time spent retrying (Connect's `errors.retry.timeout`); `None` for no time limit.
    pub timeout_ms: Option<u64>,
    /// The first backoff, doubled after each attempt…
    pub backoff_ms: u64,
    /// …up to this (Connect's `errors.retry.delay.max.ms`).
    pub backoff_max_ms: u64,
}

impl RetryPolicy {
    pub const NONE: RetryPolicy = RetryPolicy { max_attempts: 1, timeout_ms: None, backoff_ms: 0, backoff_max_ms: 0 };
    /// Bounds a spec may set.
    pub const ATTEMPTS_MAX: u32 = 1_000;
    pub const BACKOFF_MS_MAX: u64 = 600_000;

    pub fn validate(&self) -> Result<(), RuntimeError> {
        if self.max_attempts == 0 || self.max_attempts > Self::ATTEMPTS_MAX {
            return Err(RuntimeError::Invalid(format!("retries need 1..={} attempts", Self::ATTEMPTS_MAX)));
        }
        if self.backoff_ms > Self::BACKOFF_MS_MAX || self.backoff_max_ms > Self::BACKOFF_MS_MAX {
            return Err(RuntimeError::Invalid(format!("a retry backoff is at most {} ms", Self::BACKOFF_MS_MAX)));
        }
        Ok(())
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let cap = self.backoff_max_ms.max(self.backoff_ms);
        Duration::from_millis(self.backoff_ms.saturating_mul(1u64 << attempt.min(20)).min(cap))
    }
}

/// What happens to a batch that still fails after its retries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// The task stops (`FAILED`) with the error; nothing of the batch is written and its input is not
    /// consumed. Resume after fixing.
    Stop,
    /// The failing records go to `topic` (with context headers if `context_headers`), the rest of the
    /// batch through; both commit with the input progress.
    DeadLetter { topic: String, context_headers: bool },
    /// The failing records are dropped (logged and counted), the rest go through.
    Skip,
}

/// What the policy made of a batch.
pub enum Verdict<T> {
    /// The batch (or its good parts) went through: outputs of successful ranges and the records that
    /// failed, in input order. `Failed` records are to be dead-lettered or skipped per `on_failure`.
    Done(Vec<Outcome<T>>),
    /// The policy stops the task with this error.
    Stop(PluginError),
    /// The task was asked to stop or pause while retrying: nothing is decided.
    Interrupted,
}

/// Applies `policy` to a batch of `len` records: `call` processes a range of it.
pub fn apply<T>(
    policy: &ErrorPolicy,
    len: usize,
    control: &TaskControl,
    mut call: impl FnMut(Range<usize>) -> Result<T, PluginError>,
) -> Verdict<T> {
    let started = Instant::now();
    let mut attempt = 0u32;
    let error = loop {
        let error = match call(0..len) {
            Ok(value) => return Verdict::Done(vec![Outcome::Ok(value)]),
            Err(error) => error,
        };
        attempt += 1;
        let out_of_time = policy.retry.timeout_ms.is_some_and(|t| started.elapsed() >= Duration::from_millis(t));
        if attempt >= policy.retry.max_attempts || out_of_time {
            break error;
        }
        let backoff = policy.retry.backoff(attempt - 1);
        tracing::warn!(task = control.id(), attempt, %error, backoff_ms = backoff.as_millis() as u64, "a batch failed; retrying");
        if control.sleep(backoff) || control.interrupted() {
            return Verdict::Interrupted;
        }
    };
    match policy.on_failure {
        OnFailure::Stop => Verdict::Stop(error),
        OnFailure::DeadLetter { .. } | OnFailure::Skip => Verdict::Done(isolate::isolate(len, error, call)),
    }
}

/// Headers that say where a dead letter came from and why: `sluice.error`, `sluice.<kind>` (the
/// deployment's name), `sluice.source.topic`, `sluice.source.partition`, `sluice.source.offset`.
pub fn context_headers(kind: &str, name: &str, topic: &str, partition: i32, offset: i64, error: &str) -> Vec<(String, Option<Bytes>)> {
    vec![
        ("sluice.error".into(), Some(Bytes::from(error.to_string()))),
        (format!("sluice.{kind}"), Some(Bytes::from(name.to_string()))),
        ("sluice.source.topic".into(), Some(Bytes::from(topic.to_string()))),
        ("sluice.source.partition".into(), Some(Bytes::from(partition.to_string()))),
        ("sluice.source.offset".into(), Some(Bytes::from(offset.to_string()))),
    ]
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    fn retry(max_attempts: u32, on_failure: OnFailure) -> ErrorPolicy {
        ErrorPolicy { retry: RetryPolicy { max_attempts, timeout_ms: None, backoff_ms: 1, backoff_max_ms: 4 }, on_failure }
    }

    #[test]
    fn a_batch_that_fails_twice_then_succeeds_is_retried_whole() {
        let calls = Cell::new(0);
        let verdict = apply(&retry(3, OnFailure::Stop), 10, &TaskControl::detached(0), |range| {
            calls.set(calls.get() + 1);
            if calls.get() < 3 {
                Err(PluginError::GuestError { world: sluice_wasm::World::Transform, message: "flaky".into(), record_index: None })
            } else {
                Ok(range)
            }
        });
        let Verdict::Done(outcomes) = verdict else { panic!("not done") };
        assert!(matches!(outcomes.as_slice(), [Outcome::Ok(r)] if *r == (0..10)));
        assert_eq!(calls.get(), 3);
    }

    #[test]
    fn retries_end_in_a_stop_or_in_isolating_the_bad_record() {
        let control = TaskControl::detached(0);
        let bad = |range: Range<usize>| {
            if range.contains(&3) {
                Err(PluginError::GuestError { world: sluice_wasm::World::Transform, message: "bad".into(), record_index: None })
            } else {
                Ok(range)
            }
        };
        assert!(matches!(apply(&retry(2, OnFailure::Stop), 10, &control, bad), Verdict::Stop(_)));
        let dead_letter = OnFailure::DeadLetter { topic: "dlq".into(), context_headers: true };
        let Verdict::Done(outcomes) = apply(&retry(2, dead_letter), 10, &control, bad) else { panic!("not done") };
        let failed: Vec<usize> =
            outcomes.iter().filter_map(|o| if let Outcome::Failed { index, .. } = o { Some(*index) } else { None }).collect();
        let passed: Vec<usize> =
            outcomes.iter().filter_map(|o| if let Outcome::Ok(r) = o { Some(r.clone()) } else { None }).flatten().collect();
        assert_eq!(failed, vec![3]);
        assert_eq!(passed, vec![0, 1, 2, 4, 5, 6, 7, 8, 9]);
    }
}
