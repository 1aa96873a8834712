//! `sluice produce TOPIC`: lines from stdin or a file become records (kafka-console-producer.sh with
//! `parse.key`, kcat -P). The [`Producer`] engine under it is shared with `verify produce`.
//!
//! Records are partitioned like the Java client: an explicit `--partition`, else murmur2 of the key,
//! else a sticky partition that moves on with every batch sent. Each partition accumulates a batch
//! until it reaches `--batch-bytes` or has waited `--linger-ms`; batches go to their leader's
//! pipelined connection (`sluice-client`), which keeps up to `--in-flight` Produce requests
//! outstanding; each request's answer is awaited on a task of its own that reports the acks.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, IsTerminal, Read};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use clap::Args;
use clap::builder::TypedValueParser as _;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use kafka_protocol::records::Compression;
use serde_json::json;
use sluice_client::codes::error_label;
use sluice_client::records::encode_batch;
use sluice_client::{Client, ConfigResource, PartitionBatch, ProducedPartition, ProducerRecord, TopicInfo, partition_for_key};
use tokio::sync::mpsc;

use crate::bench::{Acks, CompressionArg};
use crate::exit::usage;
use crate::output::{group_digits, key_value, print_json};

/// Default `--max-line-bytes`: Kafka's default `max.message.bytes` (1 MiB) plus room for a key.
const LINE_BYTES_MAX_DEFAULT: usize = 1024 * 1024;
/// Hard ceiling for `--max-line-bytes` and `--batch-bytes`: well past any broker's `message.max.bytes`.
const LINE_BYTES_LIMIT: usize = 64 * 1024 * 1024;
/// Kafka's default `max.message.bytes`, assumed when the broker does not say.
const MAX_MESSAGE_BYTES_DEFAULT: usize = 1_048_588;
/// Room for a batch header (61 bytes) and a record's framing when comparing with `max.message.bytes`.
const BATCH_OVERHEAD_BYTES: usize = 128;
/// Per-record framing estimate when filling batches.
const RECORD_OVERHEAD_BYTES: usize = 24;
/// The Produce request's own timeout.
const PRODUCE_TIMEOUT_MS: i32 = 30_000;
/// Lines buffered between the reading thread and the producer.
const LINE_QUEUE_DEPTH: usize = 4096;
/// Largest `--in-flight`.
const IN_FLIGHT_MAX: i64 = 64;
/// How often the progress bar is redrawn.
const PROGRESS_TICK: Duration = Duration::from_millis(200);
/// Largest latency the histogram resolves, in microseconds (one hour).
const LATENCY_MAX_US: u64 = 3_600_000_000;

#[derive(Debug, Args)]
pub struct ProduceArgs {
    #[command(flatten)]
    pub common: crate::Common,
    /// Topic to write to (must exist).
    pub topic: String,

    /// Read lines from this file instead of stdin.
    #[arg(short, long)]
    pub file: Option<PathBuf>,

    /// Split each line at the first SEP into key and value (like parse.key=true key.separator=SEP).
    #[arg(short = 'K', long, value_name = "SEP")]
    pub key_separator: Option<String>,

    /// A header added to every record, key=value (repeatable).
    #[arg(short = 'H', long = "header", value_name = "KEY=VALUE", value_parser = key_value)]
    pub headers: Vec<(String, String)>,

    #[command(flatten)]
    pub producer: ProducerOptions,

    /// Longest input line accepted, in bytes.
    #[arg(long, default_value_t = LINE_BYTES_MAX_DEFAULT, value_parser = clap::value_parser!(u64).range(1..=LINE_BYTES_LIMIT as u64).map(|v| v as usize))]
    pub max_line_bytes: usize,

    /// Never show the progress bar.
    #[arg(short, long)]
    pub quiet: bool,
}

/// How records are sent; shared with `verify produce`.
#[derive(Debug, Clone, Args)]
pub struct ProducerOptions {
    /// Send every record to this partition [default: by key hash (murmur2), else sticky].
    #[arg(short, long)]
    pub partition: Option<i32>,

    /// Compression codec for record batches.
    #[arg(long, value_enum, default_value_t = CompressionArg::None)]
    pub compression: CompressionArg,

    /// Acknowledgements to wait for: 0 (none), 1 (leader) or all.
    #[arg(long, value_enum, default_value_t = Acks::All)]
    pub acks: Acks,

    /// Largest batch per partition, in bytes before compression.
    #[arg(long, default_value_t = 16384, value_parser = clap::value_parser!(u64).range(128..=LINE_BYTES_LIMIT as u64).map(|v| v as usize))]
    pub batch_bytes: usize,

    /// How long a partially filled batch waits for more records, in milliseconds.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub linger_ms: u64,

    /// Produce requests outstanding per broker connection.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=IN_FLIGHT_MAX))]
    pub in_flight: u32,
}

/// What the acks said, summed.
#[derive(Debug)]
pub(crate) struct Tally {
    pub(crate) acked: u64,
    pub(crate) failed: u64,
    pub(crate) bytes: u64,
    pub(crate) requests: u64,
    /// Kafka error code → failed batches.
    pub(crate) errors: BTreeMap<i16, u64>,
    /// The first error message a broker sent with a failure.
    pub(crate) first_error: Option<String>,
    /// Enqueue → acknowledgement latency per record, in microseconds.
    pub(crate) latency_us: Histogram<u64>,
    /// Partition → offsets acknowledged (first, last): where the records went.
    pub(crate) offsets: BTreeMap<i32, (i64, i64)>,
}

impl Tally {
    fn new() -> Result<Tally> {
        let latency_us = Histogram::new_with_bounds(1, LATENCY_MAX_US, 3).map_err(|e| anyhow!("creating a latency histogram: {e}"))?;
        Ok(Tally {
            acked: 0,
            failed: 0,
            bytes: 0,
            requests: 0,
            errors: BTreeMap::new(),
            first_error: None,
            latency_us,
            offsets: BTreeMap::new(),
        })
    }

    pub(crate) fn latency_ms(&self, quantile: f64) -> Option<f64> {
        (!self.latency_us.is_empty()).then(|| self.latency_us.value_at_quantile(quantile) as f64 / 1000.0)
    }

    pub(crate) fn describe_errors(&self) -> String {
        let mut text = self.errors.iter().map(|(code, n)| format!("{} ×{n}", error_label(*code))).collect::<Vec<_>>().join(", ");
        if let Some(message) = &self.first_error {
            text.push_str(&format!(" (first: {message})"));
        }
        text
    }
}

/// One batch on its way: what the ack must account for.
struct BatchMeta {
    partition: i32,
    records: u64,
    payload_bytes: u64,
    /// When each record was handed to the producer, for latency.
    enqueued: Vec<Instant>,
}

/// What a sent batch's task reports.
enum Event {
    /// A batch's fate: its base offset, or an error code and message.
    Acked { batch: BatchMeta, result: std::result::Result<i64, (i16, Option<String>)> },
    /// The request failed as a whole (the connection broke); nothing more will come for it.
    Fatal(anyhow::Error),
}

/// Records accumulating for one partition.
struct Pending {
    records: Vec<ProducerRecord>,
    enqueued: Vec<Instant>,
    bytes: usize,
    first_at: Instant,
}

/// A batching, pipelining producer for one topic.
pub(crate) struct Producer {
    topic: TopicInfo,
    options: ProducerOptions,
    compression: Compression,
    /// `max.message.bytes` of the topic: the largest batch the broker accepts.
    max_message_bytes: usize,
    pending: BTreeMap<i32, Pending>,
    /// Partition → broker id of its leader.
    leaders: HashMap<i32, i32>,
    events_tx: mpsc::UnboundedSender<Event>,
    events_rx: mpsc::UnboundedReceiver<Event>,
    sticky_partition: usize,
    outstanding_batches: u64,
    pub(crate) tally: Tally,
}

impl Producer {
    /// Looks up `topic`, its leaders and its `max.message.bytes`.
    pub(crate) async fn new(client: &Client, topic: &str, options: ProducerOptions) -> Result<Producer> {
        let info = client.topic(topic).await?;
        if info.partitions.is_empty() || info.partitions.iter().any(|p| p.leader < 0) {
            bail!("topic `{topic}` has partitions without a leader right now; try again in a moment");
        }
        if let Some(p) = options.partition
            && !info.partitions.iter().any(|tp| tp.id == p)
        {
            return usage(format!("topic `{topic}` has no partition {p} (it has {})", info.partitions.len()));
        }
        let max_message_bytes = max_message_bytes(client, topic).await.unwrap_or(MAX_MESSAGE_BYTES_DEFAULT);
        let mut leaders = HashMap::new();
        for p in &info.partitions {
            leaders.insert(p.id, info.leader_of(p.id)?);
        }
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        Ok(Producer {
            compression: options.compression.into(),
            sticky_partition: (std::process::id() as usize) % info.partitions.len(),
            topic: info,
            options,
            max_message_bytes,
            pending: BTreeMap::new(),
            leaders,
            events_tx,
            events_rx,
            outstanding_batches: 0,
            tally: Tally::new()?,
        })
    }

    pub(crate) fn partition_count(&self) -> usize {
        self.topic.partitions.len()
    }

    /// The partition a record goes to.
    fn partition_for(&self, key: Option<&[u8]>) -> i32 {
        if let Some(p) = self.options.partition {
            return p;
        }
        match key {
            Some(key) => partition_for_key(key, self.topic.partitions.len()),
            None => self.topic.partitions[self.sticky_partition % self.topic.partitions.len()].id,
        }
    }

    /// Adds a record, sending its partition's batch first if the record would overflow it.
    /// `what` names the record in errors (e.g. "line 12").
    pub(crate) async fn send(&mut self, client: &Client, record: ProducerRecord, what: &dyn Fn() -> String) -> Result<()> {
        let size = record.payload_bytes() + RECORD_OVERHEAD_BYTES;
        if size + BATCH_OVERHEAD_BYTES > self.max_message_bytes {
            bail!(
                "{} is a {size}-byte record, over the topic's max.message.bytes ({}); the broker would reject it",
                what(),
                self.max_message_bytes
            );
        }
        let partition = self.partition_for(record.key.as_deref());
        let batch_limit = self.options.batch_bytes.min(self.max_message_bytes - BATCH_OVERHEAD_BYTES);
        if self.pending.get(&partition).is_some_and(|p| p.bytes + size > batch_limit) {
            self.flush_partition(client, partition).await?;
        }
        let now = Instant::now();
        let pending =
            self.pending.entry(partition).or_insert_with(|| Pending { records: Vec::new(), enqueued: Vec::new(), bytes: 0, first_at: now });
        pending.records.push(record);
        pending.enqueued.push(now);
        pending.bytes += size;
        self.drain_events()?;
        Ok(())
    }

    /// When the oldest pending batch has lingered long enough.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.pending.values().map(|p| p.first_at + Duration::from_millis(self.options.linger_ms)).min()
    }

    /// Sends every batch that has lingered long enough.
    pub(crate) async fn flush_expired(&mut self, client: &Client) -> Result<()> {
        let linger = Duration::from_millis(self.options.linger_ms);
        let now = Instant::now();
        let due: Vec<i32> = self.pending.iter().filter(|(_, p)| p.first_at + linger <= now).map(|(&id, _)| id).collect();
        for partition in due {
            self.flush_partition(client, partition).await?;
        }
        self.drain_events()
    }

    async fn flush_partition(&mut self, client: &Client, partition: i32) -> Result<()> {
        let Some(pending) = self.pending.remove(&partition) else { return Ok(()) };
        if pending.records.is_empty() {
            return Ok(());
        }
        // The sticky partitioner moves on once a batch is sent, spreading unkeyed records over time.
        if self.options.partition.is_none() && self.topic.partitions[self.sticky_partition % self.topic.partitions.len()].id == partition {
            self.sticky_partition = (self.sticky_partition + 1) % self.topic.partitions.len();
        }
        let batch = encode_batch(&pending.records, self.compression)?;
        let meta = BatchMeta {
            partition,
            records: pending.records.len() as u64,
            payload_bytes: pending.records.iter().map(|r| r.payload_bytes() as u64).sum(),
            enqueued: pending.enqueued,
        };
        let leader = self.leaders.get(&partition).copied().ok_or_else(|| anyhow!("no leader known for partition {partition}"))?;
        let batches = [PartitionBatch { topic: self.topic.name.clone(), partition, records: batch }];
        // Returns once the request is queued on the leader's connection, which keeps up to `--in-flight`
        // outstanding: that wait is the producer's back-pressure. The answer is awaited on its own task.
        let sent = client.send_produce(leader, &batches, self.options.acks.into(), PRODUCE_TIMEOUT_MS).await?;
        self.outstanding_batches += 1;
        let events = self.events_tx.clone();
        tokio::spawn(async move {
            let event = match sent.wait().await {
                Ok(results) => Event::Acked { batch: meta, result: batch_result(results, partition) },
                Err(error) => Event::Fatal(error.into()),
            };
            let _ = events.send(event);
        });
        Ok(())
    }

    fn apply(&mut self, event: Event) -> Result<()> {
        match event {
            Event::Fatal(error) => Err(error),
            Event::Acked { batch, result } => {
                self.outstanding_batches = self.outstanding_batches.saturating_sub(1);
                self.tally.requests += 1;
                match result {
                    Ok(base_offset) => {
                        let now = Instant::now();
                        for at in &batch.enqueued {
                            let micros = u64::try_from(now.duration_since(*at).as_micros()).unwrap_or(u64::MAX).max(1);
                            self.tally.latency_us.saturating_record(micros);
                        }
                        self.tally.acked += batch.records;
                        self.tally.bytes += batch.payload_bytes;
                        if base_offset >= 0 {
                            let last = base_offset + batch.records as i64 - 1;
                            let entry = self.tally.offsets.entry(batch.partition).or_insert((base_offset, last));
                            entry.0 = entry.0.min(base_offset);
                            entry.1 = entry.1.max(last);
                        }
                    }
                    Err((code, message)) => {
                        self.tally.failed += batch.records;
                        *self.tally.errors.entry(code).or_default() += 1;
                        if self.tally.first_error.is_none() {
                            self.tally.first_error = Some(message.unwrap_or_else(|| error_label(code)));
                        }
                    }
                }
                Ok(())
            }
        }
    }

    /// Applies whatever acks have arrived, without waiting.
    pub(crate) fn drain_events(&mut self) -> Result<()> {
        while let Ok(event) = self.events_rx.try_recv() {
            self.apply(event)?;
        }
        Ok(())
    }

    /// Sends every pending batch and waits for all acknowledgements.
    pub(crate) async fn close(mut self, client: &Client) -> Result<Tally> {
        let partitions: Vec<i32> = self.pending.keys().copied().collect();
        for partition in partitions {
            self.flush_partition(client, partition).await?;
        }
        while self.outstanding_batches > 0 {
            match self.events_rx.recv().await {
                Some(event) => self.apply(event)?,
                None => break,
            }
        }
        Ok(self.tally)
    }
}

/// The result for `partition` among a Produce's results: its base offset, or the error.
fn batch_result(results: Vec<ProducedPartition>, partition: i32) -> std::result::Result<i64, (i16, Option<String>)> {
    match results.into_iter().find(|r| r.partition == partition) {
        Some(ProducedPartition { error: None, base_offset, .. }) => Ok(base_offset),
        Some(ProducedPartition { error: Some(e), .. }) => Err((e.code, e.message)),
        None => Err((-1, Some(format!("no response for partition {partition}")))),
    }
}

/// The topic's `max.message.bytes`, if the broker tells.
async fn max_message_bytes(client: &Client, topic: &str) -> Option<usize> {
    let keys = ["max.message.bytes".to_string()];
    let configs = client.describe_configs(&ConfigResource::Topic(topic.to_string()), Some(&keys)).await.ok()?;
    configs.iter().find(|c| c.name == "max.message.bytes")?.value.as_ref()?.parse().ok()
}

/// One input line, or the reason reading stopped.
enum Line {
    Data { number: u64, bytes: Vec<u8>, consumed: u64 },
    TooLong { number: u64 },
    Failed(std::io::Error),
}

/// Reads lines on a blocking thread, each bounded by `max_bytes`, stripping `\n` / `\r\n`.
fn spawn_line_reader(input: Box<dyn Read + Send>, max_bytes: usize) -> mpsc::Receiver<Line> {
    let (tx, rx) = mpsc::channel(LINE_QUEUE_DEPTH);
    std::thread::spawn(move || {
        let mut reader = BufReader::with_capacity(64 * 1024, input);
        let mut number = 0u64;
        loop {
            let mut line = Vec::new();
            // One byte more than allowed (plus the newline) tells an over-long line from a full one.
            let limit = (max_bytes + 2) as u64;
            match (&mut reader).take(limit).read_until(b'\n', &mut line) {
                Ok(0) => return,
                Ok(n) => {
                    number += 1;
                    let consumed = n as u64;
                    if line.last() == Some(&b'\n') {
                        line.pop();
                        if line.last() == Some(&b'\r') {
                            line.pop();
                        }
                    }
                    if line.len() > max_bytes {
                        let _ = tx.blocking_send(Line::TooLong { number });
                        return;
                    }
                    if tx.blocking_send(Line::Data { number, bytes: line, consumed }).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Line::Failed(e));
                    return;
                }
            }
        }
    });
    rx
}

/// Splits a line into key and value at the first `separator`.
fn split_key(line: Vec<u8>, separator: Option<&[u8]>, number: u64) -> Result<(Option<Bytes>, Bytes)> {
    let Some(separator) = separator else { return Ok((None, Bytes::from(line))) };
    let Some(at) = line.windows(separator.len()).position(|w| w == separator) else {
        bail!(
            "line {number} has no key separator `{}` (every line must be KEY{}VALUE)",
            String::from_utf8_lossy(separator),
            String::from_utf8_lossy(separator)
        );
    };
    let line = Bytes::from(line);
    Ok((Some(line.slice(..at)), line.slice(at + separator.len()..)))
}

pub(crate) async fn run(args: ProduceArgs, brokers: &[String], as_json: bool) -> Result<()> {
    if args.key_separator.as_deref() == Some("") {
        return usage("--key-separator must not be empty");
    }
    let (input, total_bytes): (Box<dyn Read + Send>, Option<u64>) = match &args.file {
        Some(path) => {
            let file = std::fs::File::open(path).map_err(|e| crate::exit::UsageError(format!("cannot open {}: {e}", path.display())))?;
            let size = file.metadata().ok().map(|m| m.len());
            (Box::new(file), size)
        }
        None => (Box::new(std::io::stdin()), None),
    };
    let client = crate::conn::connect_with_in_flight(brokers, args.producer.in_flight as usize).await?;
    let mut producer = Producer::new(&client, &args.topic, args.producer.clone()).await?;
    let headers: Vec<(String, Bytes)> = args.headers.iter().map(|(k, v)| (k.clone(), Bytes::copy_from_slice(v.as_bytes()))).collect();
    let separator = args.key_separator.as_deref().map(str::as_bytes);

    let show_progress = !args.quiet && std::io::stderr().is_terminal();
    let progress = if show_progress {
        let bar = match total_bytes {
            Some(total) => ProgressBar::new(total).with_style(
                ProgressStyle::with_template("{bar:30} {bytes}/{total_bytes} {msg} ({eta})")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            ),
            None => ProgressBar::new_spinner()
                .with_style(ProgressStyle::with_template("{spinner} {msg}").unwrap_or_else(|_| ProgressStyle::default_spinner())),
        };
        bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        Some(bar)
    } else {
        None
    };

    let started = Instant::now();
    let mut lines = spawn_line_reader(input, args.max_line_bytes);
    let mut read_bytes = 0u64;
    let mut records_in = 0u64;
    let mut last_draw = Instant::now();
    let outcome: Result<()> = async {
        loop {
            let deadline = producer.next_deadline();
            let line = tokio::select! {
                line = lines.recv() => line,
                _ = sleep_until(deadline) => {
                    producer.flush_expired(&client).await?;
                    continue;
                }
            };
            match line {
                None => return Ok(()),
                Some(Line::Failed(e)) => bail!("reading input failed: {e}"),
                Some(Line::TooLong { number }) => {
                    bail!("line {number} is longer than --max-line-bytes ({} bytes)", args.max_line_bytes)
                }
                Some(Line::Data { number, bytes, consumed }) => {
                    read_bytes += consumed;
                    records_in += 1;
                    let (key, value) = split_key(bytes, separator, number)?;
                    let record = ProducerRecord { key, value, headers: headers.clone(), timestamp_ms: now_ms() };
                    producer.send(&client, record, &|| format!("line {number}")).await?;
                    if producer.next_deadline().is_some_and(|d| d <= Instant::now()) {
                        producer.flush_expired(&client).await?;
                    }
                    if let Some(bar) = &progress
                        && last_draw.elapsed() >= PROGRESS_TICK
                    {
                        last_draw = Instant::now();
                        if total_bytes.is_some() {
                            bar.set_position(read_bytes);
                        }
                        bar.set_message(format!("{} records sent, {} acked", group_digits(records_in), group_digits(producer.tally.acked)));
                        bar.tick();
                    }
                }
            }
        }
    }
    .await;
    let tally = match outcome {
        // Whatever was read before the failure still goes out, then the failure is reported.
        Err(error) => {
            let _ = producer.close(&client).await;
            if let Some(bar) = &progress {
                bar.finish_and_clear();
            }
            return Err(error);
        }
        Ok(()) => producer.close(&client).await.context("finishing the produce")?,
    };
    if let Some(bar) = &progress {
        bar.finish_and_clear();
    }
    let seconds = started.elapsed().as_secs_f64();
    let rate = if seconds > 0.0 { tally.acked as f64 / seconds } else { 0.0 };
    if as_json {
        let partitions: BTreeMap<String, serde_json::Value> =
            tally.offsets.iter().map(|(p, (first, last))| (p.to_string(), json!({"first_offset": first, "last_offset": last}))).collect();
        print_json(&json!({
            "topic": args.topic,
            "records": tally.acked,
            "failed": tally.failed,
            "bytes": tally.bytes,
            "seconds": (seconds * 1000.0).round() / 1000.0,
            "records_per_s": rate.round(),
            "partitions": partitions,
            "errors": tally.errors.iter().map(|(c, n)| (error_label(*c), *n)).collect::<BTreeMap<_, _>>(),
        }));
    } else if !args.quiet && records_in > 0 && (progress.is_some() || args.file.is_some() || records_in >= 1000 || tally.failed > 0) {
        // A summary for bulk input; a handful of interactive lines need none.
        eprintln!(
            "produced {} records ({} bytes) to `{}` in {:.2}s: {} records/s, {:.2} MB/s{}",
            group_digits(tally.acked),
            group_digits(tally.bytes),
            args.topic,
            seconds,
            group_digits(rate as u64),
            if seconds > 0.0 { tally.bytes as f64 / seconds / (1024.0 * 1024.0) } else { 0.0 },
            if args.producer.acks == Acks::None { " (acks=0: sent, not confirmed)" } else { "" }
        );
    }
    if tally.failed > 0 {
        bail!("{} of {} records were not written: {}", group_digits(tally.failed), group_digits(records_in), tally.describe_errors());
    }
    Ok(())
}

pub(crate) use sluice_broker::host::now_ms;

/// Sleeps until `deadline`, or forever when there is none.
pub(crate) async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_split_at_the_first_separator() {
        let (key, value) = split_key(b"k:v:w".to_vec(), Some(b":"), 1).expect("split");
        assert_eq!((key.as_deref(), &value[..]), (Some(&b"k"[..]), &b"v:w"[..]));
        let (key, value) = split_key(b"a=>b".to_vec(), Some(b"=>"), 1).expect("split");
        assert_eq!((key.as_deref(), &value[..]), (Some(&b"a"[..]), &b"b"[..]));
        assert!(split_key(b"novalue".to_vec(), Some(b":"), 3).expect_err("no sep").to_string().contains("line 3"));
        assert_eq!(split_key(b"x".to_vec(), None, 1).expect("plain").0, None);
    }
}
