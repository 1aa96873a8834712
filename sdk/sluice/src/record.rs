//! Record types as transforms see them. Pure data: no ABI, no host calls, so they behave the same in
//! a Wasm instance and in a native `cargo test`.

use std::fmt;
use std::ops::Range;
use std::rc::Rc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Error, Result};

/// A Kafka record header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub key: String,
    pub value: Vec<u8>,
}

/// A record read from the input topic.
///
/// In a Wasm instance its key and value are views of the one buffer the broker sent the batch in:
/// reading them copies nothing, and writing the record on (`out.write(record)`) copies its bytes
/// once, straight into the buffer the broker gets back.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Record {
    pub(crate) key: Option<Data>,
    pub(crate) value: Option<Data>,
    pub(crate) headers: Vec<Header>,
    pub(crate) timestamp_ms: i64,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
}

/// Bytes a record holds: its own, or a range of a batch buffer that every record of the batch
/// shares.
#[derive(Clone)]
pub(crate) enum Data {
    Owned(Vec<u8>),
    Shared(Rc<Vec<u8>>, Range<usize>),
}

impl Data {
    pub(crate) fn as_slice(&self) -> &[u8] {
        match self {
            Data::Owned(bytes) => bytes,
            Data::Shared(buf, range) => &buf[range.clone()],
        }
    }

    pub(crate) fn into_vec(self) -> Vec<u8> {
        match self {
            Data::Owned(bytes) => bytes,
            Data::Shared(buf, range) => buf[range].to_vec(),
        }
    }
}

impl From<Vec<u8>> for Data {
    fn from(bytes: Vec<u8>) -> Data {
        Data::Owned(bytes)
    }
}

impl PartialEq for Data {
    fn eq(&self, other: &Data) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for Data {}

impl fmt::Debug for Data {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_slice(), f)
    }
}

impl Record {
    /// A record with this value and nothing else; for tests. Chain `with_*` for the other fields.
    pub fn new(value: impl Into<Vec<u8>>) -> Self {
        Record { value: Some(Data::Owned(value.into())), ..Record::default() }
    }

    /// A record whose value is `value` serialized as JSON; for tests.
    pub fn from_json<T: Serialize + ?Sized>(value: &T) -> Result<Self> {
        Ok(Record::new(serde_json::to_vec(value)?))
    }

    pub fn with_key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.key = Some(Data::Owned(key.into()));
        self
    }

    pub fn with_header(mut self, key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push(Header { key: key.into(), value: value.into() });
        self
    }

    pub fn with_timestamp_ms(mut self, timestamp_ms: i64) -> Self {
        self.timestamp_ms = timestamp_ms;
        self
    }

    pub fn with_position(mut self, partition: i32, offset: i64) -> Self {
        self.partition = partition;
        self.offset = offset;
        self
    }

    pub fn key(&self) -> Option<&[u8]> {
        self.key.as_ref().map(Data::as_slice)
    }

    pub fn value(&self) -> Option<&[u8]> {
        self.value.as_ref().map(Data::as_slice)
    }

    pub fn headers(&self) -> &[Header] {
        &self.headers
    }

    /// The value of the first header named `key`.
    pub fn header(&self, key: &str) -> Option<&[u8]> {
        self.headers.iter().find(|h| h.key == key).map(|h| h.value.as_slice())
    }

    pub fn timestamp_ms(&self) -> i64 {
        self.timestamp_ms
    }

    pub fn partition(&self) -> i32 {
        self.partition
    }

    pub fn offset(&self) -> i64 {
        self.offset
    }

    /// The value as UTF-8 text.
    pub fn value_str(&self) -> Result<&str> {
        Ok(std::str::from_utf8(self.require_value()?)?)
    }

    /// The value parsed as JSON into `T` (`serde_json::Value` for untyped access).
    pub fn value_json<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(self.require_value()?).map_err(|e| Error::from(e).context("value is not the expected JSON"))
    }

    /// The JSON value at `path` (object keys, outermost first) in the record's value, or `None`
    /// when it is not there; an error when the value is missing or is not JSON. Cheaper than
    /// `value_json::<Value>()` followed by lookups: nothing but the result is built
    /// ([`crate::json::at_path`]).
    pub fn value_json_at<S: AsRef<str>>(&self, path: &[S]) -> Result<Option<serde_json::Value>> {
        crate::json::at_path(self.require_value()?, path).map_err(|e| e.context("value is not the expected JSON"))
    }

    /// The value decoded from MessagePack into `T`.
    pub fn value_msgpack<T: DeserializeOwned>(&self) -> Result<T> {
        rmp_serde::from_slice(self.require_value()?).map_err(|e| Error::from(e).context("value is not the expected MessagePack"))
    }

    /// Keep key, value, headers and timestamp for output (drops partition and offset): the identity
    /// transform is `out.write(record)`, which calls this.
    pub fn into_output(self) -> OutputRecord {
        OutputRecord {
            key: self.key.map(Data::into_vec),
            value: self.value.map(Data::into_vec),
            headers: self.headers,
            timestamp_ms: self.timestamp_ms,
        }
    }

    fn require_value(&self) -> Result<&[u8]> {
        self.value().ok_or_else(|| Error::msg(format!("record at offset {} has no value", self.offset)))
    }
}

/// A record a transform writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputRecord {
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<Header>,
    /// Milliseconds since the Unix epoch; [`OutputRecord::BROKER_TIMESTAMP`] lets the broker set it.
    pub timestamp_ms: i64,
}

impl Default for OutputRecord {
    fn default() -> Self {
        OutputRecord { key: None, value: None, headers: Vec::new(), timestamp_ms: OutputRecord::BROKER_TIMESTAMP }
    }
}

impl OutputRecord {
    /// The broker stamps the record when it writes it.
    pub const BROKER_TIMESTAMP: i64 = -1;

    /// A new record with this value, no key, no headers and a broker-set timestamp.
    pub fn new(value: impl Into<Vec<u8>>) -> Self {
        OutputRecord { value: Some(value.into()), ..OutputRecord::default() }
    }

    /// A new record whose value is `value` as JSON.
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<Self> {
        Ok(OutputRecord::new(serde_json::to_vec(value)?))
    }

    /// A new record whose value is `value` as MessagePack (maps keep their field names).
    pub fn msgpack<T: Serialize + ?Sized>(value: &T) -> Result<Self> {
        Ok(OutputRecord::new(rmp_serde::to_vec_named(value)?))
    }

    pub fn with_key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.key = Some(key.into());
        self
    }

    pub fn with_value(mut self, value: impl Into<Vec<u8>>) -> Self {
        self.value = Some(value.into());
        self
    }

    /// Replace the value with `value` as JSON.
    pub fn with_json_value<T: Serialize + ?Sized>(mut self, value: &T) -> Result<Self> {
        self.value = Some(serde_json::to_vec(value)?);
        Ok(self)
    }

    /// Replace the value with `value` as MessagePack (maps keep their field names).
    pub fn with_msgpack_value<T: Serialize + ?Sized>(mut self, value: &T) -> Result<Self> {
        self.value = Some(rmp_serde::to_vec_named(value)?);
        Ok(self)
    }

    pub fn with_header(mut self, key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push(Header { key: key.into(), value: value.into() });
        self
    }

    pub fn with_timestamp_ms(mut self, timestamp_ms: i64) -> Self {
        self.timestamp_ms = timestamp_ms;
        self
    }

    /// The value parsed as JSON; for assertions in tests.
    pub fn value_json<T: DeserializeOwned>(&self) -> Result<T> {
        Ok(serde_json::from_slice(self.value.as_deref().ok_or_else(|| Error::msg("record has no value"))?)?)
    }

    /// The value decoded from MessagePack; for assertions in tests.
    pub fn value_msgpack<T: DeserializeOwned>(&self) -> Result<T> {
        Ok(rmp_serde::from_slice(self.value.as_deref().ok_or_else(|| Error::msg("record has no value"))?)?)
    }
}

impl From<Record> for OutputRecord {
    fn from(record: Record) -> Self {
        record.into_output()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, serde::Serialize, Debug, PartialEq)]
    struct Order {
        id: u32,
        amount: f64,
    }

    #[test]
    fn json_and_msgpack_round_trip() {
        let order = Order { id: 7, amount: 12.5 };
        let record = Record::from_json(&order).unwrap().with_key("k").with_position(3, 42);
        assert_eq!(record.value_json::<Order>().unwrap(), order);
        let out = OutputRecord::msgpack(&order).unwrap();
        assert_eq!(out.value_msgpack::<Order>().unwrap(), order);
        assert_eq!(record.partition(), 3);
        assert_eq!(record.offset(), 42);
    }

    #[test]
    fn missing_or_bad_values_are_errors_with_context() {
        let empty = Record { offset: 9, ..Record::default() };
        assert_eq!(empty.value_json::<Order>().unwrap_err().message(), "record at offset 9 has no value");
        let bad = Record::new("not json");
        assert!(bad.value_json::<Order>().unwrap_err().message().starts_with("value is not the expected JSON"));
    }

    #[test]
    fn into_output_keeps_key_value_headers_and_timestamp() {
        let record = Record::new("v").with_key("k").with_header("h", "1").with_timestamp_ms(5).with_position(1, 2);
        let out = record.into_output();
        assert_eq!(out.key.as_deref(), Some(&b"k"[..]));
        assert_eq!(out.value.as_deref(), Some(&b"v"[..]));
        assert_eq!(out.headers, vec![Header { key: "h".into(), value: b"1".to_vec() }]);
        assert_eq!(out.timestamp_ms, 5);
    }
}
