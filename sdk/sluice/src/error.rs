//! The SDK's error type: a message. Whatever a plugin returns as an error reaches the broker (a
//! transform's as the `transform-error` of the batch, a connector's as its `connector-error` or
//! `put-error`), so the message is what an operator reads.

use std::fmt;

/// A transform error: a human-readable message.
///
/// Any `std::error::Error` converts into it with `?` (JSON and MessagePack errors included); use
/// [`Error::msg`] or [`bail!`](crate::bail) for your own.
pub struct Error {
    message: String,
    /// Set by the batch loop: the position in the batch of the record whose call returned this.
    record_idx: Option<usize>,
    /// For connectors: the outside system was unavailable, so the call is worth making again later.
    retriable: bool,
}

/// `Result` with the SDK's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn msg(message: impl fmt::Display) -> Self {
        Error { message: message.to_string(), record_idx: None, retriable: false }
    }

    /// A connector error worth retrying later (the database or file is unavailable for now): the
    /// runtime backs off and calls again, instead of stopping the task FAILED.
    pub fn retriable(message: impl fmt::Display) -> Self {
        Error { retriable: true, ..Error::msg(message) }
    }

    pub fn is_retriable(&self) -> bool {
        self.retriable
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// Prefix the message with what was being done: `"parsing value: expected ..."`.
    pub fn context(self, context: impl fmt::Display) -> Self {
        Error { message: format!("{context}: {}", self.message), ..self }
    }

    /// For an error that stopped a batch: the position in the batch (0 is the first) of the record
    /// the transform failed on. The SDK reports it to the broker, whose error policy can then act
    /// on that record alone; [`crate::testing::Harness`] shows it too.
    pub fn record_index(&self) -> Option<usize> {
        self.record_idx
    }

    /// Says which record of the batch failed: a sink's `put` returns this so the runtime's error
    /// policy can act on that record alone (transforms get it set by the batch loop).
    pub fn at_record(self, record_idx: usize) -> Self {
        Error { record_idx: Some(record_idx), ..self }
    }

    pub fn into_message(self) -> String {
        self.message
    }
}

// Like anyhow, `Error` deliberately does not implement `std::error::Error`, so that this blanket
// conversion can exist.
impl<E: std::error::Error> From<E> for Error {
    fn from(error: E) -> Self {
        Error::msg(error)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Error({:?})", self.message)
    }
}

/// Return early with an [`Error`] built like `format!`.
#[macro_export]
macro_rules! bail {
    ($($arg:tt)*) => {
        return ::core::result::Result::Err($crate::Error::msg(::std::format!($($arg)*)))
    };
}
