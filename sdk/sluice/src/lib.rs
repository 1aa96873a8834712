//! `sluice`: the Rust SDK for Sluice WebAssembly plugins: transforms, connectors ([`connector`]:
//! `#[sluice::source]`, `#[sluice::sink]`) and mirror policies ([`mirror`]: `#[sluice::mirror_policy]`).
//!
//! A transform is one function and one attribute:
//!
//! ```
//! use sluice::{Record, Result, Writer};
//!
//! #[sluice::transform]
//! fn run(record: Record, out: &mut Writer) -> Result<()> {
//!     out.write(record);
//!     Ok(())
//! }
//! # fn main() {}
//! ```
//!
//! Built with `cargo build --release --target wasm32-wasip2`, the crate becomes a component of the
//! `sluice:plugin/transform` world (`sdk/wit/plugin.wit`), which the broker runs one batch per call.
//! Built natively, the same code is an ordinary library: `cargo test` exercises the function through
//! [`testing::Harness`], and logging goes to stderr instead of the broker.
//!
//! Layers, from the user down: the [`transform`] attribute (in `sluice-macros`), the pure record types
//! ([`Record`], [`OutputRecord`], [`Writer`], [`Config`]) that never touch the ABI, and `__private`,
//! which holds the generated `wit-bindgen` glue (wasm32 only) and the batch loop shared by the Wasm
//! export and the native test harness.

// The generated bindings name `::sluice::...` paths so that the export glue expands the same way in
// users' crates and here.
extern crate self as sluice;

mod config;
pub mod connector;
mod error;
pub mod json;
pub mod log;
pub mod metrics;
pub mod mirror;
mod record;
pub mod sql;
pub mod testing;
mod writer;

#[doc(hidden)]
pub mod __private;

pub use config::{Config, config};
pub use error::{Error, Result};
pub use record::{Header, OutputRecord, Record};
pub use writer::{OUTPUT_RECORD_BYTES_MAX, Writable, Writer};

/// Marks the transform function: `fn(Record, &mut Writer) -> sluice::Result<()>`.
///
/// `#[sluice::transform(init = make)]` also names a function run once per instance, at deploy
/// time, before the first batch; its error refuses the deployment with its message. Either it only
/// checks the configuration — `fn make(&Config) -> Result<()>` — or it builds the transform's state
/// — `fn make(&Config) -> Result<State>` — and the transform takes that state first, on every call:
///
/// ```
/// use sluice::{Config, Record, Result, Writer};
///
/// struct Threshold(f64);
///
/// impl Threshold {
///     fn from_config(config: &Config) -> Result<Threshold> {
///         Ok(Threshold(config.require("threshold")?.parse()?))
///     }
/// }
///
/// #[sluice::transform(init = Threshold::from_config)]
/// fn run(threshold: &Threshold, record: Record, out: &mut Writer) -> Result<()> {
///     if record.value_str()?.parse::<f64>()? >= threshold.0 {
///         out.write(record);
///     }
///     Ok(())
/// }
/// # fn main() {}
/// ```
///
/// The macro refuses any other signature with an error pointing at the offending part
/// (`tests/ui` holds every case).
pub use sluice_macros::transform;

/// Marks `impl sluice::connector::Source for T`: on wasm32 the component exports the `source` world,
/// driving `T` (see [`connector`]).
pub use sluice_macros::source;

/// Marks `impl sluice::connector::Sink for T`: on wasm32 the component exports the `sink` world,
/// driving `T` (see [`connector`]).
pub use sluice_macros::sink;

/// Marks `impl sluice::mirror::Policy for T`: on wasm32 the component exports the `mirror-policy`
/// world, driving `T` (see [`mirror`]).
pub use sluice_macros::mirror_policy;

/// Re-exported so transforms use the same versions the SDK's helpers are written against.
pub use rmp_serde;
pub use serde;
pub use serde_json;
