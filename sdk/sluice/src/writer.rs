//! The `Writer` a transform emits records through: to the default output, or to a named output topic.

use std::rc::Rc;

use crate::{Error, Header, OutputRecord, Record, Result};

/// Collects the records a transform writes for one batch.
pub struct Writer {
    /// The deployed output topics; index 0 is the default. Shared by every batch's writer.
    outputs: Rc<[String]>,
    sink: Sink,
    /// A record refused by `write` (over the broker's size limit): the batch fails with it once the
    /// transform returns from the record that wrote it.
    refused: Option<Error>,
}

/// The most a written record's key, value and headers may hold together: the broker refuses a
/// larger one (Kafka's default `max.message.bytes`, 1 MiB), so the writer refuses it at once,
/// naming the input record, instead of copying it into the batch's output first.
pub const OUTPUT_RECORD_BYTES_MAX: usize = 1 << 20;

/// Refuses a record over [`OUTPUT_RECORD_BYTES_MAX`].
fn check_size(key: Option<&[u8]>, value: Option<&[u8]>, headers: &[Header]) -> Result<()> {
    let bytes =
        key.map_or(0, <[u8]>::len) + value.map_or(0, <[u8]>::len) + headers.iter().map(|h| h.key.len() + h.value.len()).sum::<usize>();
    if bytes > OUTPUT_RECORD_BYTES_MAX {
        return Err(Error::msg(format!(
            "an output record of {bytes} bytes (key, value and headers) is over the broker's limit of {OUTPUT_RECORD_BYTES_MAX}"
        )));
    }
    Ok(())
}

/// Where written records go: kept as values (native tests, and hosts that call `process`), or
/// encoded at once into the buffer `process-encoded` returns.
enum Sink {
    Collect(Vec<(OutputRecord, u32)>),
    Encode { buf: Vec<u8>, count: usize },
}

/// What [`Writer::write`] takes: a [`Record`] (written on as it is — key, value, headers and
/// timestamp — without copying its bytes into values of its own) or an [`OutputRecord`].
pub trait Writable: sealed::Sealed {
    #[doc(hidden)]
    fn write_into(self, writer: &mut Writer, output_idx: u32);
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for crate::Record {}
    impl Sealed for crate::OutputRecord {}
}

impl Writable for Record {
    fn write_into(self, writer: &mut Writer, output_idx: u32) {
        if let Err(error) = check_size(self.key(), self.value(), &self.headers) {
            writer.refused.get_or_insert(error);
            return;
        }
        match &mut writer.sink {
            Sink::Collect(records) => records.push((self.into_output(), output_idx)),
            Sink::Encode { buf, count } => {
                encode(buf, output_idx, self.timestamp_ms, self.key(), self.value(), &self.headers);
                *count += 1;
            }
        }
    }
}

impl Writable for OutputRecord {
    fn write_into(self, writer: &mut Writer, output_idx: u32) {
        if let Err(error) = check_size(self.key.as_deref(), self.value.as_deref(), &self.headers) {
            writer.refused.get_or_insert(error);
            return;
        }
        match &mut writer.sink {
            Sink::Collect(records) => records.push((self, output_idx)),
            Sink::Encode { buf, count } => {
                encode(buf, output_idx, self.timestamp_ms, self.key.as_deref(), self.value.as_deref(), &self.headers);
                *count += 1;
            }
        }
    }
}

/// One output record in `batch-transformer`'s layout (`sdk/wit/plugin.wit`).
fn encode(buf: &mut Vec<u8>, output_idx: u32, timestamp_ms: i64, key: Option<&[u8]>, value: Option<&[u8]>, headers: &[Header]) {
    buf.extend_from_slice(&output_idx.to_le_bytes());
    buf.extend_from_slice(&timestamp_ms.to_le_bytes());
    buf.extend_from_slice(&len_or_none(key).to_le_bytes());
    buf.extend_from_slice(&len_or_none(value).to_le_bytes());
    buf.extend_from_slice(&(headers.len() as u32).to_le_bytes());
    buf.extend_from_slice(key.unwrap_or_default());
    buf.extend_from_slice(value.unwrap_or_default());
    for header in headers {
        buf.extend_from_slice(&(header.key.len() as u32).to_le_bytes());
        buf.extend_from_slice(header.key.as_bytes());
        buf.extend_from_slice(&(header.value.len() as u32).to_le_bytes());
        buf.extend_from_slice(&header.value);
    }
}

fn len_or_none(bytes: Option<&[u8]>) -> i32 {
    // Wasm32 memory is 4 GiB, so a length beyond i32 cannot occur in a valid record; saturating
    // makes the host refuse the output instead of misreading it.
    bytes.map_or(-1, |bytes| i32::try_from(bytes.len()).unwrap_or(i32::MAX))
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
        Writer { outputs, sink: Sink::Collect(Vec::new()), refused: None }
    }

    /// A writer that encodes what is written for `process-encoded`; `capacity`: bytes to reserve.
    pub(crate) fn encoding(outputs: Rc<[String]>, capacity: usize) -> Self {
        Writer { outputs, sink: Sink::Encode { buf: Vec::with_capacity(capacity), count: 0 }, refused: None }
    }

    /// Write a record to the default (first) output topic. A record over
    /// [`OUTPUT_RECORD_BYTES_MAX`] is not written: the batch fails, naming the input record.
    pub fn write(&mut self, record: impl Writable) {
        record.write_into(self, 0);
    }

    /// Write a record to the output topic named `topic`, which must be one of the deployed outputs.
    pub fn write_to(&mut self, topic: &str, record: impl Writable) -> Result<()> {
        let output_idx = self.output_idx(topic)?;
        record.write_into(self, output_idx);
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
    pub fn write_to_idx(&mut self, output_idx: u32, record: impl Writable) -> Result<()> {
        if output_idx as usize >= self.outputs.len() {
            return Err(Error::msg(format!("output index {output_idx} out of range: {} outputs", self.outputs.len())));
        }
        record.write_into(self, output_idx);
        Ok(())
    }

    /// The deployed output topics, default first.
    pub fn outputs(&self) -> &[String] {
        &self.outputs
    }

    /// The records written so far, each with its output topic's name. In a Wasm instance called
    /// through `process-encoded` records are encoded as they are written, and this is empty.
    pub fn records(&self) -> impl Iterator<Item = (&str, &OutputRecord)> {
        let records = match &self.sink {
            Sink::Collect(records) => records.as_slice(),
            Sink::Encode { .. } => &[],
        };
        records.iter().map(|(record, output_idx)| (self.outputs.get(*output_idx as usize).map_or("", String::as_str), record))
    }

    /// Records written so far.
    pub fn len(&self) -> usize {
        match &self.sink {
            Sink::Collect(records) => records.len(),
            Sink::Encode { count, .. } => *count,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The first record `write` refused since the last call, if any.
    pub(crate) fn take_refused(&mut self) -> Option<Error> {
        self.refused.take()
    }

    pub(crate) fn take_records(&mut self) -> Vec<(OutputRecord, u32)> {
        match &mut self.sink {
            Sink::Collect(records) => std::mem::take(records),
            Sink::Encode { .. } => Vec::new(),
        }
    }

    pub(crate) fn take_encoded(&mut self) -> Vec<u8> {
        match &mut self.sink {
            Sink::Encode { buf, count } => {
                *count = 0;
                std::mem::take(buf)
            }
            Sink::Collect(_) => Vec::new(),
        }
    }
}
