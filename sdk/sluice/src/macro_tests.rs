//! Compile tests of `#[sluice::transform]`, as doc tests (no extra test dependency): each
//! `compile_fail` block is a signature the macro must refuse, each plain block one it must accept.
//!
//! Accepted: the plain form and `init = path`.
//!
//! ```
//! use sluice::{Config, Record, Result, Writer};
//! fn setup(_config: &Config) -> Result<()> { Ok(()) }
//! #[sluice::transform(init = setup)]
//! fn run(record: Record, out: &mut Writer) -> Result<()> { out.write(record); Ok(()) }
//! fn main() {}
//! ```
//!
//! Refused: async.
//!
//! ```compile_fail
//! #[sluice::transform]
//! async fn run(record: sluice::Record, out: &mut sluice::Writer) -> sluice::Result<()> { Ok(()) }
//! fn main() {}
//! ```
//!
//! Refused: generic.
//!
//! ```compile_fail
//! #[sluice::transform]
//! fn run<T>(record: sluice::Record, out: &mut sluice::Writer) -> sluice::Result<()> { Ok(()) }
//! fn main() {}
//! ```
//!
//! Refused: one parameter.
//!
//! ```compile_fail
//! #[sluice::transform]
//! fn run(record: sluice::Record) -> sluice::Result<()> { Ok(()) }
//! fn main() {}
//! ```
//!
//! Refused: no return type.
//!
//! ```compile_fail
//! #[sluice::transform]
//! fn run(record: sluice::Record, out: &mut sluice::Writer) {}
//! fn main() {}
//! ```
//!
//! Refused: parameters of the wrong types (caught by the type check the macro emits).
//!
//! ```compile_fail
//! #[sluice::transform]
//! fn run(record: Vec<u8>, out: &mut sluice::Writer) -> sluice::Result<()> { Ok(()) }
//! fn main() {}
//! ```
//!
//! Refused: an init function of the wrong type.
//!
//! ```compile_fail
//! fn setup() -> sluice::Result<()> { Ok(()) }
//! #[sluice::transform(init = setup)]
//! fn run(record: sluice::Record, out: &mut sluice::Writer) -> sluice::Result<()> { Ok(()) }
//! fn main() {}
//! ```
//!
//! Refused: an unknown argument.
//!
//! ```compile_fail
//! #[sluice::transform(threads = 4)]
//! fn run(record: sluice::Record, out: &mut sluice::Writer) -> sluice::Result<()> { Ok(()) }
//! fn main() {}
//! ```
