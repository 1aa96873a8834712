//! The SDK's error type: a message. Whatever a transform returns as an error reaches the broker as the
//! `transform-error` of the batch, so the message is what an operator reads.

use std::fmt;

/// A transform error: a human-readable message.
///
/// Any `std::error::Error` converts into it with `?` (JSON and MessagePack errors included); use
/// [`Error::msg`] or [`bail!`](crate::bail) for your own.
pub struct Error {
    message: String,
    /// Set by the batch loop: the position in the batch of the record whose call returned this.
    record_idx: Option<usize>,
}

/// `Result` with the SDK's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn msg(message: impl fmt::Display) -> Self {
        Error { message: message.to_string(), record_idx: None }
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

    pub(crate) fn at_record(self, record_idx: usize) -> Self {
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
