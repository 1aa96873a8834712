//! Finding the records of a failing batch that fail on their own, so the dead-letter policy diverts
//! exactly those (as Kafka Connect's `errors.deadletterqueue` does) and lets the rest through.
//!
//! The batch `0..n` failed as a whole. If the error names the failing record (the guest reported its
//! index), the batch splits around it: the records before it are retried, it is dead, the records
//! after it are retried. Otherwise the batch is bisected: each half is retried, and a failing half is
//! split again until single records remain. `k` bad records among `n` cost `O(k log n)` calls.
//!
//! Calls are bounded by [`ISOLATION_CALLS_MAX`]: a module that fails everything (or times out on
//! every call) would otherwise cost `2n` calls. When the budget runs out, every range not yet
//! decided is dead-lettered whole with the last error, so the partition always moves on.
//!
//! A retried range runs the module again on records it has seen in the failed call; a module's
//! in-memory state may see them twice (outputs of failed calls are always discarded).

use std::ops::Range;

use sluice_wasm::PluginError;

/// Most module calls spent isolating the failures of one batch.
pub const ISOLATION_CALLS_MAX: usize = 64;

/// The fate of part of a batch, in input order.
#[derive(Debug)]
pub enum Outcome<T> {
    /// A range that succeeded, with its outputs.
    Ok(T),
    /// One input record (by index in the batch) that fails on its own, and why.
    Failed { index: usize, error: String },
}

/// Splits a failed batch of `len` records into succeeding ranges and failed records, calling `call`
/// on sub-ranges. `first_error` is the error of the whole batch.
pub fn isolate<T>(len: usize, first_error: PluginError, mut call: impl FnMut(Range<usize>) -> Result<T, PluginError>) -> Vec<Outcome<T>> {
    /// A range still to decide: not tried on its own yet, or failed with this error.
    enum Pending {
        Untried(Range<usize>),
        Failed(Range<usize>, PluginError),
    }
    let mut outcomes = Vec::new();
    let mut calls = 0usize;
    let mut last_error = first_error.clone();
    // A stack whose top is always the leftmost undecided range, so outcomes come out in input order.
    let mut pending = vec![Pending::Failed(0..len, first_error)];
    while let Some(next) = pending.pop() {
        match next {
            Pending::Untried(range) if calls >= ISOLATION_CALLS_MAX => {
                let error = format!(
                    "not isolated: the budget of {ISOLATION_CALLS_MAX} calls to find the failing records ran out; last error: {last_error}"
                );
                outcomes.extend(range.map(|index| Outcome::Failed { index, error: error.clone() }));
            }
            Pending::Untried(range) => {
                calls += 1;
                match call(range.clone()) {
                    Ok(value) => outcomes.push(Outcome::Ok(value)),
                    Err(error) => {
                        last_error = error.clone();
                        pending.push(Pending::Failed(range, error));
                    }
                }
            }
            Pending::Failed(range, error) if range.len() <= 1 => {
                outcomes.extend(range.map(|index| Outcome::Failed { index, error: error.to_string() }));
            }
            Pending::Failed(range, error) => {
                let mut pieces = Vec::with_capacity(3);
                match reported_index(&error).map(|i| range.start + i).filter(|i| range.contains(i)) {
                    Some(failed) => {
                        if failed > range.start {
                            pieces.push(Pending::Untried(range.start..failed));
                        }
                        pieces.push(Pending::Failed(failed..failed + 1, error));
                        if failed + 1 < range.end {
                            pieces.push(Pending::Untried(failed + 1..range.end));
                        }
                    }
                    None => {
                        let middle = range.start + range.len() / 2;
                        pieces.push(Pending::Untried(range.start..middle));
                        pieces.push(Pending::Untried(middle..range.end));
                    }
                }
                pending.extend(pieces.into_iter().rev());
            }
        }
    }
    outcomes
}

/// The index, within the range it was called on, of the record the guest said failed.
fn reported_index(error: &PluginError) -> Option<usize> {
    match error {
        PluginError::GuestError { record_index, .. } | PluginError::ConnectorError { record_index, .. } => *record_index,
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `isolate` on `len` records where the ones in `bad` fail; returns the dead indices, the
    /// indices that came out in successful ranges (in order), and the number of calls.
    fn run(len: usize, bad: &[usize]) -> (Vec<usize>, Vec<usize>, usize) {
        let mut calls = 0;
        let outcomes = isolate(len, guest_error("batch failed", None), |range| {
            calls += 1;
            if range.clone().any(|i| bad.contains(&i)) {
                Err(guest_error(&format!("bad in {range:?}"), None))
            } else {
                Ok(range.collect::<Vec<_>>())
            }
        });
        let mut dead = Vec::new();
        let mut good = Vec::new();
        for outcome in outcomes {
            match outcome {
                Outcome::Ok(indices) => good.extend(indices),
                Outcome::Failed { index, .. } => {
                    dead.push(index);
                    good.push(usize::MAX);
                }
            }
        }
        good.retain(|i| *i != usize::MAX);
        (dead, good, calls)
    }

    fn guest_error(message: &str, record_index: Option<usize>) -> PluginError {
        PluginError::GuestError { world: sluice_wasm::World::Transform, message: message.into(), record_index }
    }

    #[test]
    fn a_record_the_guest_names_is_dead_without_bisecting() {
        let mut calls = Vec::new();
        let outcomes = isolate(100, guest_error("record 41 is bad", Some(41)), |range| {
            calls.push(range.clone());
            Ok::<_, PluginError>(range)
        });
        assert_eq!(calls, vec![0..41, 42..100], "two calls: the records before and after the one named");
        assert!(
            matches!(outcomes.as_slice(), [Outcome::Ok(a), Outcome::Failed { index: 41, .. }, Outcome::Ok(b)] if *a == (0..41) && *b == (42..100))
        );
    }

    #[test]
    fn one_bad_record_among_many_is_found_and_the_rest_pass_in_order() {
        let (dead, good, calls) = run(5000, &[1234]);
        assert_eq!(dead, vec![1234]);
        assert_eq!(good, (0..5000).filter(|i| *i != 1234).collect::<Vec<_>>());
        assert!(calls <= 2 * 13, "bisection takes O(log n) calls, took {calls}");
    }

    #[test]
    fn outcomes_keep_input_order_with_several_bad_records() {
        let (dead, good, _) = run(100, &[0, 7, 8, 99]);
        assert_eq!(dead, vec![0, 7, 8, 99]);
        assert_eq!(good, (0..100).filter(|i| ![0, 7, 8, 99].contains(i)).collect::<Vec<_>>());
    }

    #[test]
    fn a_module_that_fails_everything_costs_a_bounded_number_of_calls() {
        let all: Vec<usize> = (0..5000).collect();
        let (dead, good, calls) = run(5000, &all);
        assert_eq!(dead, all, "every record is dead-lettered, in order");
        assert!(good.is_empty());
        assert!(calls <= ISOLATION_CALLS_MAX, "{calls} calls");
    }
}
