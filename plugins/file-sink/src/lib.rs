//! `file-sink`: writes each record's value as one line to a file, like Kafka Connect's
//! `FileStreamSink`, with its configuration keys:
//! - `file` (required): the file's absolute path on the broker's host (created if missing, appended
//!   to). The broker grants this connector read-write access to the directory holding it, and
//!   nothing else.
//! - `topics` / `topics.regex`: the input topics (read by the runtime, not by this plugin).
//!
//! A value is written as its bytes and a newline (a null value as `null`, as Connect's
//! `String.valueOf` does). Each batch is written with one `write` and flushed; a failed write is
//! retriable (the disk may have room again later).

use std::fs::{File, OpenOptions};
use std::io::Write;

use sluice::connector::{ConfigKey, KeyType, Sink, SinkRecord};
use sluice::{Config, Error, Result};

#[derive(Debug)]
pub struct FileSink {
    path: String,
    file: Option<File>,
}

impl FileSink {
    fn file(&mut self) -> Result<&mut File> {
        if self.file.is_none() {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .map_err(|e| Error::retriable(format_args!("opening {}: {e}", self.path)))?;
            self.file = Some(file);
        }
        Ok(self.file.as_mut().expect("opened above"))
    }
}

/// The lines of a batch, as one buffer.
pub fn lines(batch: &[SinkRecord]) -> Vec<u8> {
    let mut out = Vec::with_capacity(batch.iter().map(|r| r.value.as_ref().map_or(4, Vec::len) + 1).sum());
    for record in batch {
        out.extend_from_slice(record.value.as_deref().unwrap_or(b"null"));
        out.push(b'\n');
    }
    out
}

#[sluice::sink]
impl Sink for FileSink {
    fn keys() -> Vec<ConfigKey> {
        vec![ConfigKey::new("file", KeyType::File, "The file to append to, an absolute path on the broker's host.").required()]
    }

    fn init(config: &Config) -> Result<FileSink> {
        let path = config.require("file")?.to_owned();
        let mut sink = FileSink { path, file: None };
        // Open now so that a path the grant does not cover fails the task at once, with its reason.
        sink.file()?;
        Ok(sink)
    }

    fn put(&mut self, batch: Vec<SinkRecord>) -> Result<()> {
        let bytes = lines(&batch);
        let path = self.path.clone();
        let file = self.file()?;
        let written = file.write_all(&bytes).and_then(|()| file.flush());
        if let Err(error) = written {
            // The file's state after a failed append is unknown: open it again next time.
            self.file = None;
            return Err(Error::retriable(format_args!("writing {path}: {error}")));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::rc::Rc;

    use super::*;

    fn record(value: Option<&str>, offset: i64) -> SinkRecord {
        SinkRecord {
            topic: Rc::from("t"),
            partition: 0,
            offset,
            key: None,
            value: value.map(|v| v.as_bytes().to_vec()),
            headers: Vec::new(),
            timestamp_ms: 0,
        }
    }

    #[test]
    fn values_are_appended_one_per_line_and_null_as_null() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.txt");
        std::fs::write(&path, "before\n").unwrap();
        let mut sink = FileSink::init(&Config::from_pairs([("file", path.to_str().unwrap())])).unwrap();
        sink.put(vec![record(Some("a"), 0), record(None, 1)]).unwrap();
        sink.put(vec![record(Some("b"), 2)]).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "before\na\nnull\nb\n");
    }

    #[test]
    fn a_file_in_a_missing_directory_fails_init() {
        let error = FileSink::init(&Config::from_pairs([("file", "/nonexistent-dir/x.txt")])).unwrap_err();
        assert!(error.message().contains("opening"), "{error}");
    }
}
