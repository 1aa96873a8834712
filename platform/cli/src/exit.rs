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

use sluice_client::ClientError;

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

/// A failure to reach something the client library does not cover (the admin API over HTTP): exit
/// code 3, like the library's own unreachable errors.
#[derive(Debug)]
pub(crate) struct Unreachable(pub(crate) String);

impl fmt::Display for Unreachable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unreachable {}

/// The client library's error anywhere in `error`'s chain.
fn client_error(error: &anyhow::Error) -> Option<&ClientError> {
    error.chain().find_map(|e| e.downcast_ref::<ClientError>())
}

/// The exit code for an error: the most specific marker anywhere in its chain wins.
pub(crate) fn code_for(error: &anyhow::Error) -> u8 {
    if error.chain().any(|e| e.is::<UsageError>()) {
        USAGE
    } else if error.chain().any(|e| e.is::<Unreachable>()) || client_error(error).is_some_and(ClientError::is_unreachable) {
        UNREACHABLE
    } else {
        FAILED
    }
}

/// What to try next, for the errors people hit most: nothing listening, a topic that is not there.
fn hint(error: &anyhow::Error) -> Option<String> {
    match client_error(error)? {
        e if e.is_connect_failure() => Some("is `sluice server` running and listening there?".to_string()),
        ClientError::UnknownTopic { topic, .. } => {
            Some(format!("create it with `sluice topic create {topic}`, or list topics with `sluice topic list`"))
        }
        _ => None,
    }
}

/// Prints `error` (with its causes, and a hint where one helps) to stderr and turns it into the process
/// exit code.
pub(crate) fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::from(OK),
        Err(error) => {
            match hint(&error) {
                Some(hint) => eprintln!("error: {error:#} ({hint})"),
                None => eprintln!("error: {error:#}"),
            }
            ExitCode::from(code_for(&error))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_errors_keep_their_exit_codes_through_context() {
        use anyhow::Context as _;
        let refused =
            ClientError::Connect { addr: "h:1".into(), source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused).into() };
        let wrapped = Err::<(), _>(refused).context("listing topics").expect_err("an error");
        assert_eq!(code_for(&wrapped), UNREACHABLE);
        assert!(hint(&wrapped).is_some_and(|h| h.contains("sluice server")));
        let refused_by_cluster = anyhow::Error::new(ClientError::UnknownTopic { topic: "t".into(), addr: "h:1".into() });
        assert_eq!(code_for(&refused_by_cluster), FAILED);
        assert!(hint(&refused_by_cluster).is_some_and(|h| h.contains("sluice topic create t")));
        assert_eq!(code_for(&anyhow::Error::new(Unreachable("admin".into()))), UNREACHABLE);
        assert_eq!(code_for(&anyhow::Error::new(UsageError("bad".into()))), USAGE);
    }
}
