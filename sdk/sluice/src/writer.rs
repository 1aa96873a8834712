//! The `Writer` a transform emits records through: to the default output, or to a named output topic.

use std::rc::Rc;

use crate::{Error, OutputRecord, Result};

/// Collects the records a transform writes for one batch.
pub struct Writer {
    /// The deployed output topics; index 0 is the default. Shared by every batch's writer.
    outputs: Rc<[String]>,
    records: Vec<(OutputRecord, u32)>,
}

impl Writer {
    /// A writer whose outputs are `outputs` (the first is the default; none means one output named
    /// `"output"`); for tests, see also [`crate::testing::Harness`].
    pub fn new<S: Into<String>>(outputs: impl IntoIterator<Item = S>) -> Self {
        let mut outputs: Vec<String> = outputs.into_iter().map(Into::into).collect();
        if outputs.is_empty() {
            outputs.push("output".to_owned());
        }
        Writer::with_outputs(outputs.into())
    }

    pub(crate) fn with_outputs(outputs: Rc<[String]>) -> Self {
        Writer { outputs, records: Vec::new() }
    }

    /// Write a record to the default (first) output topic.
    pub fn write(&mut self, record: impl Into<OutputRecord>) {
        self.records.push((record.into(), 0));
    }

    /// Write a record to the output topic named `topic`, which must be one of the deployed outputs.
    pub fn write_to(&mut self, topic: &str, record: impl Into<OutputRecord>) -> Result<()> {
        let output_idx = self.output_idx(topic)?;
        self.records.push((record.into(), output_idx));
        Ok(())
    }

    /// The index of a deployed output topic, for writers that route many records to one topic.
    pub fn output_idx(&self, topic: &str) -> Result<u32> {
        let position = self
            .outputs
            .iter()
            .position(|name| name == topic)
            .ok_or_else(|| Error::msg(format!("output topic `{topic}` is not one of this transform's outputs {:?}", self.outputs)))?;
        u32::try_from(position).map_err(|_| Error::msg("too many output topics"))
    }

    /// Write a record to the output with this index (see [`Writer::output_idx`]).
    pub fn write_to_idx(&mut self, output_idx: u32, record: impl Into<OutputRecord>) -> Result<()> {
        if output_idx as usize >= self.outputs.len() {
            return Err(Error::msg(format!("output index {output_idx} out of range: {} outputs", self.outputs.len())));
        }
        self.records.push((record.into(), output_idx));
        Ok(())
    }

    /// The deployed output topics, default first.
    pub fn outputs(&self) -> &[String] {
        &self.outputs
    }

    /// The records written so far, each with its output topic's name.
    pub fn records(&self) -> impl Iterator<Item = (&str, &OutputRecord)> {
        self.records.iter().map(|(record, output_idx)| (self.outputs.get(*output_idx as usize).map_or("", String::as_str), record))
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub(crate) fn take_records(&mut self) -> Vec<(OutputRecord, u32)> {
        std::mem::take(&mut self.records)
    }
}
