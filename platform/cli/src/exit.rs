//! Exit codes, so scripts can tell failures apart without parsing messages:
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | the operation failed: the cluster returned an error (unknown topic, non-empty group, …), or a check failed (`verify`) |
//! | 2 | usage error: bad flags or values (clap's own code), a missing profile, an unreadable input file |
//! | 3 | the cluster could not be reached: connection refused or timed out, connection lost, no response in time |

use std::fmt;
use std::process::ExitCode;

pub(crate) const OK: u8 = 0;
pub(crate) const FAILED: u8 = 1;
pub(crate) const USAGE: u8 = 2;
pub(crate) const UNREACHABLE: u8 = 3;

/// An error in what the user asked for, found after clap's parsing (which exits 2 itself).
#[derive(Debug)]
pub(crate) struct UsageError(pub(crate) String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// `Err(UsageError)` as an `anyhow::Error`, for `?`-style early returns.
pub(crate) fn usage<T>(message: impl Into<String>) -> anyhow::Result<T> {
    Err(UsageError(message.into()).into())
}

/// The exit code for an error: the most specific marker anywhere in its chain wins.
pub(crate) fn code_for(error: &anyhow::Error) -> u8 {
    if error.chain().any(|e| e.is::<UsageError>()) {
        USAGE
    } else if error.chain().any(|e| e.is::<crate::client::Unreachable>()) {
        UNREACHABLE
    } else {
        FAILED
    }
}

/// Prints `error` (with its causes) to stderr and turns it into the process exit code.
pub(crate) fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::from(OK),
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(code_for(&error))
        }
    }
}
