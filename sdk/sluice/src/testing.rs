//! Run a transform natively in unit tests, through the same init and batch loop the Wasm export uses.
//!
//! ```
//! use sluice::{Record, Result, Writer, testing::Harness};
//!
//! fn run(record: Record, out: &mut Writer) -> Result<()> {
//!     if record.value_str()? != "drop me" {
//!         out.write(record);
//!     }
//!     Ok(())
//! }
//!
//! let written = Harness::new(run).process(vec![Record::new("keep"), Record::new("drop me")]).unwrap();
//! assert_eq!(written.len(), 1);
//! assert_eq!(written[0].topic, "output");
//! ```
//!
//! A transform with state is tested with the init that makes its state:
//!
//! ```
//! use sluice::{Config, Record, Result, Writer, testing::Harness};
//!
//! struct Prefix(String);
//!
//! fn setup(config: &Config) -> Result<Prefix> {
//!     Ok(Prefix(config.require("prefix")?.to_owned()))
//! }
//!
//! fn run(prefix: &Prefix, record: Record, out: &mut Writer) -> Result<()> {
//!     let value = format!("{}{}", prefix.0, record.value_str()?);
//!     out.write(record.into_output().with_value(value));
//!     Ok(())
//! }
//!
//! let written = Harness::stateful(setup, run).config("prefix", "> ").process(vec![Record::new("hi")]).unwrap();
//! assert_eq!(written[0].record.value.as_deref(), Some(&b"> hi"[..]));
//! ```

use crate::__private::{InitFn, StatefulTransformFn, TransformFn, no_init, run_batch};
use crate::log::Level;
use crate::{OutputRecord, Record, Result};

/// A record a transform wrote, with the name of its output topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    pub topic: String,
    pub record: OutputRecord,
}

/// The transform function a harness drives.
enum Run<S> {
    Plain(TransformFn),
    Stateful(StatefulTransformFn<S>),
}

/// A native stand-in for the broker: configuration, output topics, and batches. `S` is the state
/// the transform's init returns (`()` for a transform without state).
pub struct Harness<S = ()> {
    run: Run<S>,
    init: InitFn<S>,
    config: Vec<(String, String)>,
    outputs: Vec<String>,
}

impl Harness<()> {
    /// A harness for `#[sluice::transform] fn run(Record, &mut Writer)`.
    pub fn new(run: TransformFn) -> Self {
        Harness { run: Run::Plain(run), init: no_init, config: Vec::new(), outputs: vec!["output".to_owned()] }
    }

    /// Set the deploy-time init function of a transform without state
    /// (`#[sluice::transform(init = check)]` with `fn check(&Config) -> Result<()>`).
    pub fn init(mut self, init: fn(&crate::Config) -> Result<()>) -> Self {
        self.init = init;
        self
    }
}

impl<S> Harness<S> {
    /// A harness for `#[sluice::transform(init = init)] fn run(&S, Record, &mut Writer)`.
    pub fn stateful(init: InitFn<S>, run: StatefulTransformFn<S>) -> Self {
        Harness { run: Run::Stateful(run), init, config: Vec::new(), outputs: vec!["output".to_owned()] }
    }

    /// Add a deploy-time configuration entry.
    pub fn config(mut self, key: &str, value: &str) -> Self {
        self.config.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Set the deployed output topics (the first is the default). Defaults to `["output"]`.
    pub fn outputs(mut self, outputs: &[&str]) -> Self {
        self.outputs = outputs.iter().map(|s| (*s).to_owned()).collect();
        self
    }

    /// Deploy (run init) and process one batch; records get consecutive offsets from 0. An error
    /// that stopped the batch says in [`crate::Error::record_index`] which record it stopped at.
    pub fn process(&self, batch: Vec<Record>) -> Result<Vec<Written>> {
        let state = crate::__private::init(self.config.clone(), self.outputs.clone(), self.init)?;
        let _ = crate::log::take_native_lines();
        let records = batch.into_iter().enumerate().map(|(i, r)| if r.offset == 0 { Record { offset: i as i64, ..r } } else { r });
        let written = run_batch(&state, records, |user, record, out| match self.run {
            Run::Plain(run) => run(record, out),
            Run::Stateful(run) => run(user, record, out),
        })?;
        Ok(written
            .into_iter()
            .map(|(record, output_idx)| Written { topic: self.outputs.get(output_idx as usize).cloned().unwrap_or_default(), record })
            .collect())
    }

    /// Lines the transform logged on this thread since the last `process` began.
    pub fn logs(&self) -> Vec<(Level, String)> {
        crate::log::take_native_lines()
    }
}
