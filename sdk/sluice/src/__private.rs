//! Not public API: what `#[sluice::transform]` expands to calls into this module.
//!
//! `init` and `run_batch` are the target-independent core (the native test harness uses them too);
//! the rest exists only on wasm32 and adapts the `wit-bindgen` types of `sdk/wit` to the SDK's.

use std::rc::Rc;

use crate::record::Data;
use crate::{Config, Error, Header, OutputRecord, Record, Result, Writer};

/// The shape of a transform without state: `fn(Record, &mut Writer) -> Result<()>`.
pub type TransformFn = fn(Record, &mut Writer) -> Result<()>;

/// The shape of a transform with state: it gets what its init returned on every call.
pub type StatefulTransformFn<S> = fn(&S, Record, &mut Writer) -> Result<()>;

/// The shape of an init function: checks the configuration and returns the transform's state
/// (`()` for an init that only checks).
pub type InitFn<S> = fn(&Config) -> Result<S>;

/// The init of a transform that names none.
pub fn no_init(_config: &Config) -> Result<()> {
    Ok(())
}

/// What `init` establishes for the instance's lifetime.
pub struct State<S> {
    outputs: Rc<[String]>,
    user: S,
}

/// Install the configuration, remember the outputs, run the user's init and keep what it returns.
pub fn init<S>(config: Vec<(String, String)>, outputs: Vec<String>, user_init: InitFn<S>) -> Result<State<S>> {
    if outputs.is_empty() {
        return Err(Error::msg("a transform needs at least one output topic"));
    }
    let config = Config::from_pairs(config);
    crate::config::set_current(config.clone());
    let user = user_init(&config).map_err(|e| e.context("init"))?;
    Ok(State { outputs: outputs.into(), user })
}

/// Run the transform over a batch; the first error stops the batch, names the record in its
/// message and carries its index in the batch (`Error::record_index`).
pub fn run_batch<S>(
    state: &State<S>,
    records: impl Iterator<Item = Record>,
    run: impl FnMut(&S, Record, &mut Writer) -> Result<()>,
) -> Result<Vec<(OutputRecord, u32)>> {
    let mut writer = Writer::with_outputs(state.outputs.clone());
    run_records(state, records.map(Ok), run, &mut writer)?;
    Ok(writer.take_records())
}

/// `run_batch` for `process-encoded`: `count` records of `partition` encoded in `batch` (the
/// layout of `sdk/wit/plugin.wit`) in, the output records encoded the same way out. Records are
/// views of `batch`, which is not copied.
pub fn run_encoded<S>(
    state: &State<S>,
    partition: i32,
    count: u32,
    batch: Vec<u8>,
    run: impl FnMut(&S, Record, &mut Writer) -> Result<()>,
) -> Result<Vec<u8>> {
    // Output is usually about as large as input (identity, filters, small rewrites).
    let mut writer = Writer::encoding(state.outputs.clone(), batch.len());
    let records = decode_batch(Rc::new(batch), partition, count);
    run_records(state, records, run, &mut writer)?;
    Ok(writer.take_encoded())
}

fn run_records<S>(
    state: &State<S>,
    records: impl Iterator<Item = Result<Record>>,
    mut run: impl FnMut(&S, Record, &mut Writer) -> Result<()>,
    writer: &mut Writer,
) -> Result<()> {
    for (record_idx, record) in records.enumerate() {
        let record = record?;
        let (partition, offset) = (record.partition, record.offset);
        run(&state.user, record, writer)
            .and_then(|()| writer.take_refused().map_or(Ok(()), Err))
            .map_err(|e| e.context(format_args!("record at partition {partition} offset {offset}")).at_record(record_idx))?;
    }
    Ok(())
}

/// The records of an encoded input batch, each a view of `batch`. The host is trusted to encode
/// correctly, but a buffer that does not parse is an error, not a trap.
fn decode_batch(batch: Rc<Vec<u8>>, partition: i32, count: u32) -> impl Iterator<Item = Result<Record>> {
    let mut at = 0usize;
    let mut left = count;
    std::iter::from_fn(move || {
        if left == 0 {
            // Trailing bytes are one error, then the end (`at` moves past them).
            let trailing = at != batch.len();
            at = batch.len();
            return trailing.then(|| Err(Error::msg("the host sent more bytes than records in the batch")));
        }
        left -= 1;
        let record = decode_record(&batch, &mut at, partition);
        if record.is_none() {
            left = 0;
            at = batch.len();
        }
        Some(record.ok_or_else(|| Error::msg("the host sent a batch that does not parse")))
    })
}

fn decode_record(batch: &Rc<Vec<u8>>, at: &mut usize, partition: i32) -> Option<Record> {
    let fixed: &[u8; 28] = batch.get(*at..*at + 28)?.try_into().ok()?;
    let offset = i64::from_le_bytes(fixed[0..8].try_into().ok()?);
    let timestamp_ms = i64::from_le_bytes(fixed[8..16].try_into().ok()?);
    let key_len = i32::from_le_bytes(fixed[16..20].try_into().ok()?);
    let value_len = i32::from_le_bytes(fixed[20..24].try_into().ok()?);
    let header_count = u32::from_le_bytes(fixed[24..28].try_into().ok()?);
    *at += 28;
    let mut part = |len: i32| -> Option<Option<Data>> {
        if len == -1 {
            return Some(None);
        }
        let range = *at..at.checked_add(usize::try_from(len).ok()?)?;
        batch.get(range.clone())?;
        *at = range.end;
        Some(Some(Data::Shared(Rc::clone(batch), range)))
    };
    let key = part(key_len)?;
    let value = part(value_len)?;
    let mut headers = Vec::new();
    for _ in 0..header_count {
        let mut sized = || -> Option<&[u8]> {
            let len = u32::from_le_bytes(batch.get(*at..*at + 4)?.try_into().ok()?) as usize;
            let bytes = batch.get(*at + 4..(*at + 4).checked_add(len)?)?;
            *at += 4 + len;
            Some(bytes)
        };
        let key = String::from_utf8_lossy(sized()?).into_owned();
        let value = sized()?.to_vec();
        headers.push(Header { key, value });
    }
    Some(Record { key, value, headers, timestamp_ms, partition, offset })
}

/// A connector's `init`: install the configuration, parse the positions the host passed (sources),
/// and make the task's state.
pub fn connector_init<T>(config: Vec<(String, String)>, init: impl FnOnce(&Config) -> Result<T>) -> Result<T> {
    let config = Config::from_pairs(config);
    crate::config::set_current(config.clone());
    // No "init" context here: the host names the call in its own message.
    init(&config)
}

pub fn source_init<S: crate::connector::Source>(config: Vec<(String, String)>, positions: Vec<(String, String)>) -> Result<S> {
    let positions = crate::connector::parse_positions(positions)?;
    connector_init(config, |config| S::init(config, positions))
}

pub fn sink_init<S: crate::connector::Sink>(config: Vec<(String, String)>) -> Result<S> {
    connector_init(config, S::init)
}

/// A position as the JSON texts the host stores.
pub fn position_text(position: &crate::connector::Position) -> (String, String) {
    (position.partition.to_string(), position.offset.to_string())
}

/// An error as the host sees it: message, retriable, the failing record's index.
pub fn error_parts(error: Error) -> (String, bool, Option<u32>) {
    let retriable = error.is_retriable();
    let record_idx = error.record_index().and_then(|idx| u32::try_from(idx).ok());
    (error.into_message(), retriable, record_idx)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An input batch in `batch-transformer`'s layout, as the host encodes it.
    fn encode_input(records: &[Record]) -> Vec<u8> {
        let mut buf = Vec::new();
        for r in records {
            buf.extend_from_slice(&r.offset.to_le_bytes());
            buf.extend_from_slice(&r.timestamp_ms.to_le_bytes());
            buf.extend_from_slice(&r.key().map_or(-1, |k| k.len() as i32).to_le_bytes());
            buf.extend_from_slice(&r.value().map_or(-1, |v| v.len() as i32).to_le_bytes());
            buf.extend_from_slice(&(r.headers.len() as u32).to_le_bytes());
            buf.extend_from_slice(r.key().unwrap_or_default());
            buf.extend_from_slice(r.value().unwrap_or_default());
            for h in &r.headers {
                buf.extend_from_slice(&(h.key.len() as u32).to_le_bytes());
                buf.extend_from_slice(h.key.as_bytes());
                buf.extend_from_slice(&(h.value.len() as u32).to_le_bytes());
                buf.extend_from_slice(&h.value);
            }
        }
        buf
    }

    /// The host's reading of an output buffer: (output, timestamp, key, value, headers).
    type Decoded = (u32, i64, Option<Vec<u8>>, Option<Vec<u8>>, Vec<(String, Vec<u8>)>);

    fn decode_output(buf: &[u8]) -> Vec<Decoded> {
        let mut at = 0;
        let mut take = |len: usize| {
            let bytes = buf[at..at + len].to_vec();
            at += len;
            bytes
        };
        let mut out = Vec::new();
        let mut left = buf.len();
        while left > 0 {
            let output = u32::from_le_bytes(take(4).try_into().unwrap());
            let ts = i64::from_le_bytes(take(8).try_into().unwrap());
            let key_len = i32::from_le_bytes(take(4).try_into().unwrap());
            let value_len = i32::from_le_bytes(take(4).try_into().unwrap());
            let count = u32::from_le_bytes(take(4).try_into().unwrap());
            let key = (key_len >= 0).then(|| take(key_len as usize));
            let value = (value_len >= 0).then(|| take(value_len as usize));
            let mut used = 24 + key.as_ref().map_or(0, Vec::len) + value.as_ref().map_or(0, Vec::len);
            let headers = (0..count)
                .map(|_| {
                    let k = u32::from_le_bytes(take(4).try_into().unwrap()) as usize;
                    let k = String::from_utf8(take(k)).unwrap();
                    let v = u32::from_le_bytes(take(4).try_into().unwrap()) as usize;
                    let v = take(v);
                    used += 8 + k.len() + v.len();
                    (k, v)
                })
                .collect();
            left -= used;
            out.push((output, ts, key, value, headers));
        }
        out
    }

    fn sample() -> Vec<Record> {
        vec![
            Record::new("one").with_key("k1").with_header("h", "x").with_header("g", "").with_timestamp_ms(5).with_position(2, 10),
            Record { value: None, ..Record::new("").with_position(2, 11) },
            Record::new("").with_timestamp_ms(-1).with_position(2, 12),
        ]
    }

    #[test]
    fn encoded_batches_decode_to_views_and_written_records_encode_as_the_host_reads_them() {
        let state = init(Vec::new(), vec!["a".into(), "b".into()], no_init).unwrap();
        let records = sample();
        let mut seen = Vec::new();
        let output = run_encoded(&state, 2, 3, encode_input(&records), |_, record, out| {
            seen.push(record.clone());
            if record.offset() == 11 {
                out.write_to("b", OutputRecord::new("new").with_key("nk").with_header("z", "1"))?;
            }
            out.write(record);
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, records);
        assert!(matches!(seen[0].value, Some(Data::Shared(..))), "a view of the batch, not a copy");
        let decoded = decode_output(&output);
        assert_eq!(
            decoded,
            vec![
                (0, 5, Some(b"k1".to_vec()), Some(b"one".to_vec()), vec![("h".into(), b"x".to_vec()), ("g".into(), vec![])]),
                (1, -1, Some(b"nk".to_vec()), Some(b"new".to_vec()), vec![("z".into(), b"1".to_vec())]),
                (0, 0, None, None, vec![]),
                (0, -1, None, Some(vec![]), vec![]),
            ]
        );
    }

    #[test]
    fn the_failing_record_is_named_and_a_batch_that_does_not_parse_is_an_error() {
        let state = init(Vec::new(), vec!["a".into()], no_init).unwrap();
        let records = sample();
        let error = run_encoded(
            &state,
            2,
            3,
            encode_input(&records),
            |_, record, _| {
                if record.offset() == 12 { Err(Error::msg("no")) } else { Ok(()) }
            },
        )
        .unwrap_err();
        assert_eq!(error.record_index(), Some(2));
        assert_eq!(error.message(), "record at partition 2 offset 12: no");
        let mut cut = encode_input(&records);
        cut.truncate(cut.len() - 1);
        let error = run_encoded(&state, 2, 3, cut, |_, _, _| Ok(())).unwrap_err();
        assert_eq!(error.message(), "the host sent a batch that does not parse");
        let error = run_encoded(&state, 2, 2, encode_input(&records), |_, _, _| Ok(())).unwrap_err();
        assert_eq!(error.message(), "the host sent more bytes than records in the batch");
        // The decoder ends after its error, whoever drives it.
        let decoded: Vec<_> = decode_batch(Rc::new(encode_input(&records)), 2, 2).collect();
        assert_eq!(decoded.len(), 3);
        assert!(decoded[2].is_err());
        let mut cut = encode_input(&records);
        cut.truncate(30);
        assert_eq!(decode_batch(Rc::new(cut), 2, 3).count(), 1);
        assert!(run_encoded(&state, 2, 0, Vec::new(), |_, _, _| Ok(())).unwrap().is_empty());
    }

    #[test]
    fn a_record_over_the_size_limit_fails_the_batch_at_its_input_record_without_being_copied() {
        let state = init(Vec::new(), vec!["a".into()], no_init).unwrap();
        let records = sample();
        let error = run_encoded(&state, 2, 3, encode_input(&records), |_, record, out| {
            if record.offset() == 11 {
                out.write(OutputRecord::new(vec![0; crate::OUTPUT_RECORD_BYTES_MAX]).with_header("h", "x"));
            }
            out.write(record);
            Ok(())
        })
        .unwrap_err();
        assert_eq!(error.record_index(), Some(1));
        assert_eq!(
            error.message(),
            "record at partition 2 offset 11: an output record of 1048578 bytes (key, value and headers) is over the broker's limit of 1048576"
        );
        // Exactly at the limit is fine, natively as in Wasm.
        let written = run_batch(&state, records.into_iter().take(1), |_, _, out| {
            out.write(OutputRecord::new(vec![0; crate::OUTPUT_RECORD_BYTES_MAX]));
            Ok(())
        })
        .unwrap();
        assert_eq!(written.len(), 1);
    }
}

#[cfg(target_arch = "wasm32")]
pub use wasm::*;

#[cfg(target_arch = "wasm32")]
mod wasm {
    use std::any::Any;
    use std::cell::RefCell;

    use super::{InitFn, State, init, run_batch, run_encoded};
    use crate::log::Level;
    use crate::record::Data;
    use crate::{Error, Header, Record, Result, Writer};

    pub use wit_bindgen;

    /// The generated bindings of the `sluice:plugin/batch-transform` world (the `transform` world
    /// plus `batch-transformer`). The `export!` macro they define is
    /// `bindings::__export_transform!`, invoked by `#[sluice::transform]` in the user's crate.
    pub mod bindings {
        wit_bindgen::generate!({
            path: "../wit",
            world: "batch-transform",
            runtime_path: "::sluice::__private::wit_bindgen::rt",
            pub_export_macro: true,
            export_macro_name: "__export_transform",
            default_bindings_module: "::sluice::__private::bindings",
        });
    }

    use bindings::sluice::plugin::host;
    use bindings::sluice::plugin::types;

    pub use bindings::exports::sluice::plugin::batch_transformer::Guest as BatchGuest;
    pub use bindings::exports::sluice::plugin::transformer::Guest;
    pub use types::{InputRecord as WitInputRecord, OutputRecord as WitOutputRecord, TransformError as WitTransformError};

    thread_local! {
        /// The instance's `State<S>`, for the `S` of the transform this component exports (one per
        /// component: `export_process` downcasts it once per batch).
        static STATE: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
    }

    pub fn host_log(level: Level, message: &str) {
        let level = match level {
            Level::Trace => types::LogLevel::Trace,
            Level::Debug => types::LogLevel::Debug,
            Level::Info => types::LogLevel::Info,
            Level::Warn => types::LogLevel::Warn,
            Level::Error => types::LogLevel::Error,
        };
        host::log(level, message);
    }

    pub fn host_gauge(name: &str, value: f64) {
        host::set_gauge(name, value);
    }

    /// The `init` export (the generated glue turns the error into the WIT's message string).
    pub fn export_init<S: 'static>(config: Vec<(String, String)>, outputs: Vec<String>, user_init: InitFn<S>) -> Result<()> {
        crate::log::set_host_log(host_log);
        crate::metrics::set_host_gauge(host_gauge);
        // A panic traps the instance; log its message first so the host can say why.
        std::panic::set_hook(Box::new(|info| host_log(Level::Error, &info.to_string())));
        let state = init(config, outputs, user_init)?;
        STATE.with(|current| *current.borrow_mut() = Some(Box::new(state)));
        Ok(())
    }

    /// Runs `f` on the instance's state, or says that `init` has not run.
    fn with_state<S: 'static, T>(f: impl FnOnce(&State<S>) -> Result<T, types::TransformError>) -> Result<T, types::TransformError> {
        STATE.with(|current| {
            let current = current.borrow();
            let state = current
                .as_ref()
                .and_then(|state| state.downcast_ref::<State<S>>())
                .ok_or_else(|| types::TransformError { message: "process called before init".to_owned() })?;
            f(state)
        })
    }

    /// A batch's error as the host sees it; tells the host which record failed first, so its error
    /// policy can act on that one alone.
    fn transform_error(error: Error) -> types::TransformError {
        if let Some(record_idx) = error.record_index().and_then(|idx| u32::try_from(idx).ok()) {
            host::report_failed_record(record_idx);
        }
        types::TransformError { message: error.into_message() }
    }

    /// The `process` export (hosts that do not call `process-encoded`).
    pub fn export_process<S: 'static>(
        batch: Vec<types::InputRecord>,
        run: impl FnMut(&S, Record, &mut Writer) -> Result<()>,
    ) -> Result<Vec<types::OutputRecord>, types::TransformError> {
        with_state(|state: &State<S>| {
            // Moves, no copies: the byte vectors the host lowered become the SDK's records as they are.
            let records = batch.into_iter().map(|r| Record {
                key: r.key.map(Data::Owned),
                value: r.value.map(Data::Owned),
                headers: r.headers.into_iter().map(|h| Header { key: h.key, value: h.value }).collect(),
                timestamp_ms: r.timestamp_ms,
                partition: r.partition,
                offset: r.offset,
            });
            let written = run_batch(state, records, run).map_err(transform_error)?;
            Ok(written
                .into_iter()
                .map(|(r, output)| types::OutputRecord {
                    key: r.key,
                    value: r.value,
                    headers: r.headers.into_iter().map(|h| types::Header { key: h.key, value: h.value }).collect(),
                    timestamp_ms: r.timestamp_ms,
                    output,
                })
                .collect())
        })
    }

    /// The `process-encoded` export: one buffer in, one out.
    pub fn export_process_encoded<S: 'static>(
        partition: i32,
        count: u32,
        batch: Vec<u8>,
        run: impl FnMut(&S, Record, &mut Writer) -> Result<()>,
    ) -> Result<Vec<u8>, types::TransformError> {
        with_state(|state: &State<S>| run_encoded(state, partition, count, batch, run).map_err(transform_error))
    }
}
