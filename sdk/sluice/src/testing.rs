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

use crate::__private::{TransformFn, run_batch};
use crate::log::Level;
use crate::{Config, OutputRecord, Record, Result};

/// A record a transform wrote, with the name of its output topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    pub topic: String,
    pub record: OutputRecord,
}

/// A native stand-in for the broker: configuration, output topics, and batches.
pub struct Harness {
    run: TransformFn,
    config: Vec<(String, String)>,
    outputs: Vec<String>,
    init: Option<fn(&Config) -> Result<()>>,
}

impl Harness {
    pub fn new(run: TransformFn) -> Self {
        Harness { run, config: Vec::new(), outputs: vec!["output".to_owned()], init: None }
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

    /// Set the deploy-time init function (`#[sluice::transform(init = ...)]`).
    pub fn init(mut self, init: fn(&Config) -> Result<()>) -> Self {
        self.init = Some(init);
        self
    }

    /// Deploy (run init) and process one batch; records get consecutive offsets from 0.
    pub fn process(&self, batch: Vec<Record>) -> Result<Vec<Written>> {
        let state = crate::__private::init(self.config.clone(), self.outputs.clone(), self.init)?;
        let _ = crate::log::take_native_lines();
        let records = batch.into_iter().enumerate().map(|(i, r)| if r.offset == 0 { Record { offset: i as i64, ..r } } else { r });
        let written = run_batch(&state, records, self.run)?;
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
