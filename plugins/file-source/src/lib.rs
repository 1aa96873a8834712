//! `file-source`: every line appended to a file becomes a record, like Kafka Connect's
//! `FileStreamSource`, with its configuration keys:
//! - `file` (required): the file's absolute path on the broker's host. The broker grants this
//!   connector read access to the directory holding it, and nothing else.
//! - `topic` (required): the topic the lines go to (`topic.prefix`, if set, in front).
//! - `batch.size`: most lines per poll (default 2000, as Connect's).
//!
//! Each record's value is one line without its newline; a last line without a newline waits until
//! its newline arrives. The position is Connect's: partition `{"filename": <file>}`, offset
//! `{"position": <byte offset after the last line written>}`, so the broker's transaction of the
//! records and the saved position make every line arrive once across task restarts. A file that does
//! not exist yet is waited for; one that shrinks below the saved position (truncated or replaced)
//! stops the task with an error rather than reading from an arbitrary point. One task only, as in
//! Connect (`tasks.max=1`).

use std::fs::File;
use std::io::{ErrorKind, Read, Seek, SeekFrom};

use serde_json::json;
use sluice::connector::{ConfigKey, KeyType, Poll, Position, Source, SourceRecord};
use sluice::{Config, Error, Result};

/// Connect's default `batch.size`.
pub const BATCH_SIZE_DEFAULT: usize = 2_000;
/// The largest `batch.size` accepted: the broker takes at most 10,000 records per poll.
pub const BATCH_SIZE_MAX: usize = 10_000;
/// The longest line: the broker's default `max.message.bytes` less room for the record's framing.
pub const LINE_BYTES_MAX: usize = (1 << 20) - 1024;
/// Bytes read from the file per poll.
pub const READ_BYTES_PER_POLL_MAX: usize = 4 << 20;
/// How long to wait when nothing new was written.
pub const IDLE_MS: u32 = 250;

#[derive(Debug)]
pub struct FileSource {
    file: String,
    topic: String,
    batch_size: usize,
    /// Byte offset after the last line handed to the broker.
    position: u64,
}

impl FileSource {
    fn partition(&self) -> serde_json::Value {
        json!({ "filename": self.file })
    }

    fn read_from_position(&self) -> Result<Option<Vec<u8>>> {
        let mut file = match File::open(&self.file) {
            Ok(file) => file,
            Err(error) if error.kind() == ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(Error::retriable(format_args!("opening {}: {error}", self.file))),
        };
        let length = file.metadata().map_err(|e| Error::retriable(format_args!("reading {}: {e}", self.file)))?.len();
        if length < self.position {
            return Err(Error::msg(format_args!(
                "{} is {length} bytes, shorter than the committed position {}: it was truncated or replaced; \
                 reset the connector's offsets to read it from the start",
                self.file, self.position
            )));
        }
        let unread = usize::try_from(length - self.position).unwrap_or(usize::MAX).min(READ_BYTES_PER_POLL_MAX);
        if unread == 0 {
            return Ok(Some(Vec::new()));
        }
        file.seek(SeekFrom::Start(self.position)).map_err(|e| Error::retriable(format_args!("reading {}: {e}", self.file)))?;
        let mut bytes = Vec::with_capacity(unread);
        file.take(unread as u64).read_to_end(&mut bytes).map_err(|e| Error::retriable(format_args!("reading {}: {e}", self.file)))?;
        Ok(Some(bytes))
    }
}

/// The complete lines at the start of `bytes`, at most `max` of them, and the bytes they take
/// (newlines included). A line longer than `LINE_BYTES_MAX` is an error.
pub fn complete_lines(bytes: &[u8], max: usize) -> Result<(Vec<&[u8]>, usize)> {
    let mut lines = Vec::new();
    let mut consumed = 0;
    while lines.len() < max {
        let rest = &bytes[consumed..];
        match rest.iter().position(|b| *b == b'\n') {
            Some(end) if end > LINE_BYTES_MAX => sluice::bail!("a line of {end} bytes; lines are at most {LINE_BYTES_MAX}"),
            Some(end) => {
                let line = &rest[..end];
                lines.push(line.strip_suffix(b"\r").unwrap_or(line));
                consumed += end + 1;
            }
            None if rest.len() > LINE_BYTES_MAX => sluice::bail!("a line longer than {LINE_BYTES_MAX} bytes"),
            None => break,
        }
    }
    Ok((lines, consumed))
}

#[sluice::source]
impl Source for FileSource {
    fn keys() -> Vec<ConfigKey> {
        vec![
            ConfigKey::new("file", KeyType::File, "The file to read, an absolute path on the broker's host.").required(),
            ConfigKey::new("topic", KeyType::String, "The topic to write the lines to.").required(),
            ConfigKey::new("batch.size", KeyType::Int, "The most lines one poll returns.").default_value("2000"),
        ]
    }

    fn init(config: &Config, positions: Vec<Position>) -> Result<FileSource> {
        if config.get("task.id").is_some_and(|task| task != "0") {
            sluice::bail!("file-source reads its file from one task; set tasks.max=1");
        }
        let file = config.require("file")?.to_owned();
        let topic = format!("{}{}", config.get("topic.prefix").unwrap_or(""), config.require("topic")?);
        let batch_size = match config.get("batch.size") {
            None => BATCH_SIZE_DEFAULT,
            Some(text) => match text.trim().parse::<usize>() {
                Ok(n) if (1..=BATCH_SIZE_MAX).contains(&n) => n,
                _ => sluice::bail!("batch.size must be 1..={BATCH_SIZE_MAX}, not {text:?}"),
            },
        };
        let mut source = FileSource { file, topic, batch_size, position: 0 };
        let partition = source.partition();
        if let Some(saved) = positions.iter().find(|p| p.partition == partition) {
            source.position = saved.offset["position"]
                .as_u64()
                .ok_or_else(|| Error::msg(format_args!("the saved offset {} has no numeric \"position\"", saved.offset)))?;
        }
        Ok(source)
    }

    fn poll(&mut self) -> Result<Poll> {
        let Some(bytes) = self.read_from_position()? else { return Ok(Poll::idle(IDLE_MS)) };
        let (lines, consumed) =
            complete_lines(&bytes, self.batch_size).map_err(|e| e.context(format_args!("{} at byte {}", self.file, self.position)))?;
        if lines.is_empty() {
            return Ok(Poll::idle(IDLE_MS));
        }
        let records = lines.into_iter().map(|line| SourceRecord::new(&self.topic, line)).collect();
        self.position += consumed as u64;
        Ok(Poll::records(records, vec![Position::new(self.partition(), json!({ "position": self.position }))]))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn config(file: &str) -> Config {
        Config::from_pairs([("file", file), ("topic", "lines"), ("batch.size", "2")])
    }

    fn values(poll: &Poll) -> Vec<&[u8]> {
        poll.records.iter().map(|r| r.value.as_deref().unwrap()).collect()
    }

    #[test]
    fn complete_lines_only_in_batches_of_batch_size_resuming_from_the_saved_position() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.txt");
        let path_text = path.to_str().unwrap();
        let mut file = File::create(&path).unwrap();
        file.write_all(b"one\ntwo\r\nthree\nfour").unwrap();
        let mut source = FileSource::init(&config(path_text), Vec::new()).unwrap();
        let first = source.poll().unwrap();
        assert_eq!(values(&first), vec![&b"one"[..], b"two"]);
        assert_eq!(first.positions[0].offset, json!({"position": 9}));
        assert_eq!(first.positions[0].partition, json!({"filename": path_text}));
        assert_eq!(values(&source.poll().unwrap()), vec![&b"three"[..]]);
        assert!(source.poll().unwrap().records.is_empty(), "`four` has no newline yet");
        file.write_all(b"\n").unwrap();
        assert_eq!(values(&source.poll().unwrap()), vec![&b"four"[..]]);

        let mut resumed = FileSource::init(&config(path_text), first.positions.clone()).unwrap();
        assert_eq!(values(&resumed.poll().unwrap()), vec![&b"three"[..], b"four"]);
    }

    #[test]
    fn a_missing_file_is_waited_for_and_a_truncated_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("later.txt");
        let mut source = FileSource::init(&config(path.to_str().unwrap()), Vec::new()).unwrap();
        assert_eq!(source.poll().unwrap(), Poll::idle(IDLE_MS));
        std::fs::write(&path, "a\nb\n").unwrap();
        assert_eq!(source.poll().unwrap().records.len(), 2);
        std::fs::write(&path, "").unwrap();
        let error = source.poll().unwrap_err();
        assert!(!error.is_retriable() && error.message().contains("truncated"), "{error}");
    }

    #[test]
    fn bad_configuration_is_refused() {
        assert!(FileSource::init(&Config::from_pairs([("topic", "t")]), Vec::new()).is_err());
        let many_tasks = Config::from_pairs([("file", "/tmp/x"), ("topic", "t"), ("task.id", "1")]);
        assert!(FileSource::init(&many_tasks, Vec::new()).unwrap_err().message().contains("tasks.max=1"));
        let batch = Config::from_pairs([("file", "/tmp/x"), ("topic", "t"), ("batch.size", "0")]);
        assert!(FileSource::init(&batch, Vec::new()).is_err());
    }
}
