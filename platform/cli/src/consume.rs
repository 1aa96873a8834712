//! `sluice consume TOPIC`: print records (kafka-console-consumer.sh, kcat -C). Without `--group` every
//! partition is read directly; with `--group` the process is a real group member (see
//! `sluice_client::group`), shares partitions with the other members, commits what it printed every few seconds
//! and on exit, and leaves the group on Ctrl-C / SIGTERM. The [`Consumer`] engine under it is shared with
//! `verify consume`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::{Map, Value, json};
use sluice_client::codes::{self, OFFSET_OUT_OF_RANGE, UNKNOWN_TOPIC_OR_PARTITION};
use sluice_client::group::{HEARTBEAT_INTERVAL, Heartbeat};
use sluice_client::records::decode_batches;
use sluice_client::{Client, ClientError, ConsumerRecord, FetchOptions, GroupMember, Isolation, OffsetSpec, PartitionFetch, TopicInfo};

use crate::exit::usage;
use crate::output::{bytes_json, bytes_text, time_arg};

/// How long a Fetch waits for new records before returning empty, in milliseconds.
const FETCH_WAIT_MS: i32 = 500;
/// Upper bound on one Fetch response.
const FETCH_BYTES_MAX: i32 = 50 * 1024 * 1024;
/// Upper bound on one partition's share of a Fetch response.
const PARTITION_FETCH_BYTES_MAX: i32 = 1024 * 1024;
/// How often a group member commits what it has printed (Kafka's `auto.commit.interval.ms`).
const COMMIT_INTERVAL: Duration = Duration::from_secs(5);
/// Longest `--format` template accepted.
const FORMAT_BYTES_MAX: usize = 4096;

#[derive(Debug, Args)]
pub struct ConsumeArgs {
    #[command(flatten)]
    pub common: crate::Common,
    /// Topic to read.
    pub topic: String,

    /// Start at the earliest offset (with --group: where the group has no committed offset).
    #[arg(long, conflicts_with_all = ["offset", "from_time"])]
    pub from_beginning: bool,

    /// Start at this offset in every partition read; negative N means N records before the end.
    #[arg(long, allow_negative_numbers = true, conflicts_with_all = ["from_time", "group"])]
    pub offset: Option<i64>,

    /// Start at the first record at or after this time (RFC 3339 or epoch ms).
    #[arg(long, value_name = "TIME", value_parser = time_arg, conflicts_with = "group")]
    pub from_time: Option<i64>,

    /// Only read these partitions (repeatable or comma separated) [default: all].
    #[arg(short, long = "partition", value_delimiter = ',', conflicts_with = "group")]
    pub partitions: Vec<i32>,

    /// Join this consumer group: share partitions with its other members and commit offsets.
    #[arg(short, long)]
    pub group: Option<String>,

    /// Exit after this many records.
    #[arg(short = 'n', long, value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,

    /// Exit once every partition read is caught up to its end (like kcat -e) instead of waiting for more.
    #[arg(short = 'e', long)]
    pub exit_at_end: bool,

    /// Output: `text` (the value), `json` (one object per line), or a template with %t %p %o %k %v %h %T
    /// (topic, partition, offset, key, value, headers, timestamp ms), %% and \n \t escapes.
    #[arg(short, long, default_value = "text")]
    pub format: String,
}

/// How each record is printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Format {
    Text,
    Json,
    Template(Vec<Piece>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Piece {
    Literal(String),
    Topic,
    Partition,
    Offset,
    Key,
    Value,
    Headers,
    Timestamp,
}

impl Format {
    pub(crate) fn parse(text: &str) -> Result<Format> {
        match text {
            "text" => return Ok(Format::Text),
            "json" => return Ok(Format::Json),
            _ => {}
        }
        if text.len() > FORMAT_BYTES_MAX {
            return usage(format!("--format is longer than {FORMAT_BYTES_MAX} bytes"));
        }
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut chars = text.chars();
        let mut ends_with_newline = false;
        while let Some(c) = chars.next() {
            ends_with_newline = false;
            match c {
                '%' => {
                    let piece = match chars.next() {
                        Some('t') => Piece::Topic,
                        Some('p') => Piece::Partition,
                        Some('o') => Piece::Offset,
                        Some('k') => Piece::Key,
                        Some('v') | Some('s') => Piece::Value,
                        Some('h') => Piece::Headers,
                        Some('T') => Piece::Timestamp,
                        Some('%') => {
                            literal.push('%');
                            continue;
                        }
                        other => {
                            return usage(format!(
                                "--format: unknown placeholder %{} (use %t %p %o %k %v %h %T or %%, or `text` / `json`)",
                                other.map(String::from).unwrap_or_default()
                            ));
                        }
                    };
                    if !literal.is_empty() {
                        pieces.push(Piece::Literal(std::mem::take(&mut literal)));
                    }
                    pieces.push(piece);
                }
                '\\' => match chars.next() {
                    Some('n') => {
                        literal.push('\n');
                        ends_with_newline = true;
                    }
                    Some('t') => literal.push('\t'),
                    Some('\\') => literal.push('\\'),
                    Some(other) => {
                        literal.push('\\');
                        literal.push(other);
                    }
                    None => literal.push('\\'),
                },
                c => literal.push(c),
            }
        }
        // A template prints one line per record unless it ends its own line.
        if !ends_with_newline {
            literal.push('\n');
        }
        pieces.push(Piece::Literal(literal));
        Ok(Format::Template(pieces))
    }

    pub(crate) fn write(&self, out: &mut impl Write, topic: &str, partition: i32, record: &ConsumerRecord) -> std::io::Result<()> {
        match self {
            Format::Text => {
                out.write_all(record.value.as_deref().unwrap_or_default())?;
                out.write_all(b"\n")
            }
            Format::Json => {
                let headers: Map<String, Value> = record.headers.iter().map(|(k, v)| (k.clone(), bytes_json(v.as_deref()))).collect();
                let line = json!({
                    "topic": topic,
                    "partition": partition,
                    "offset": record.offset,
                    "timestamp": record.timestamp_ms,
                    "key": bytes_json(record.key.as_deref()),
                    "value": bytes_json(record.value.as_deref()),
                    "headers": headers,
                });
                writeln!(out, "{line}")
            }
            Format::Template(pieces) => {
                for piece in pieces {
                    match piece {
                        Piece::Literal(text) => out.write_all(text.as_bytes())?,
                        Piece::Topic => out.write_all(topic.as_bytes())?,
                        Piece::Partition => write!(out, "{partition}")?,
                        Piece::Offset => write!(out, "{}", record.offset)?,
                        Piece::Key => out.write_all(record.key.as_deref().unwrap_or_default())?,
                        Piece::Value => out.write_all(record.value.as_deref().unwrap_or_default())?,
                        Piece::Timestamp => write!(out, "{}", record.timestamp_ms)?,
                        Piece::Headers => {
                            let text: Vec<String> =
                                record.headers.iter().map(|(k, v)| format!("{k}={}", bytes_text(v.as_deref()))).collect();
                            out.write_all(text.join(",").as_bytes())?;
                        }
                    }
                }
                Ok(())
            }
        }
    }
}

/// Where reading starts in partitions without a committed offset.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Start {
    Earliest,
    Latest,
    /// An absolute offset, or (negative) that many records before the end.
    Offset(i64),
    Time(i64),
}

/// Reads a set of partitions of one topic with Fetch, tracking positions and high watermarks.
pub(crate) struct Consumer {
    pub(crate) topic: TopicInfo,
    /// Partition → next offset to fetch.
    positions: BTreeMap<i32, i64>,
    /// Partition → high watermark in the last response.
    high_watermarks: BTreeMap<i32, i64>,
    /// With `--exit-at-end` the fetch does not wait for new records.
    wait_ms: i32,
}

impl Consumer {
    pub(crate) fn new(topic: TopicInfo, exit_at_end: bool) -> Result<Consumer> {
        Ok(Consumer {
            topic,
            positions: BTreeMap::new(),
            high_watermarks: BTreeMap::new(),
            wait_ms: if exit_at_end { 0 } else { FETCH_WAIT_MS },
        })
    }

    /// Starts reading `partitions` at the offsets `start` resolves to (after `committed`, if any).
    pub(crate) async fn assign(&mut self, client: &Client, partitions: &[i32], start: Start, committed: &BTreeMap<i32, i64>) -> Result<()> {
        self.positions.clear();
        self.high_watermarks.clear();
        let open: Vec<i32> = partitions.iter().copied().filter(|p| !committed.contains_key(p)).collect();
        for p in partitions {
            if let Some(&offset) = committed.get(p) {
                self.positions.insert(*p, offset);
            }
        }
        if open.is_empty() {
            return Ok(());
        }
        let topic = &self.topic;
        let resolved: BTreeMap<i32, i64> = match start {
            Start::Earliest => client.list_offsets_all(topic, &open, OffsetSpec::Earliest).await?,
            Start::Latest => client.list_offsets_all(topic, &open, OffsetSpec::Latest).await?,
            Start::Offset(offset) if offset >= 0 => open.iter().map(|&p| (p, offset)).collect(),
            Start::Offset(back) => {
                let low = client.list_offsets_all(topic, &open, OffsetSpec::Earliest).await?;
                let high = client.list_offsets_all(topic, &open, OffsetSpec::Latest).await?;
                high.iter().map(|(&p, &h)| (p, (h + back).max(low.get(&p).copied().unwrap_or(0)))).collect()
            }
            Start::Time(ts) => {
                let by_time = client.list_offsets_all(topic, &open, OffsetSpec::Timestamp(ts)).await?;
                let latest = client.list_offsets_all(topic, &open, OffsetSpec::Latest).await?;
                by_time.iter().map(|(&p, &o)| (p, if o < 0 { latest.get(&p).copied().unwrap_or(0) } else { o })).collect()
            }
        };
        self.positions.extend(resolved);
        Ok(())
    }

    pub(crate) fn positions(&self) -> &BTreeMap<i32, i64> {
        &self.positions
    }

    /// True once every assigned partition has been fetched up to the high watermark it reported.
    pub(crate) fn caught_up(&self) -> bool {
        self.positions.iter().all(|(p, pos)| self.high_watermarks.get(p).is_some_and(|hw| pos >= hw))
    }

    /// One Fetch round to every leader; returns the records in partition order.
    pub(crate) async fn poll(&mut self, client: &Client) -> Result<Vec<(i32, ConsumerRecord)>> {
        if self.positions.is_empty() {
            // Nothing assigned (e.g. more group members than partitions): wait like an empty fetch would.
            tokio::time::sleep(Duration::from_millis(self.wait_ms.max(100) as u64)).await;
            return Ok(Vec::new());
        }
        let mut by_leader: BTreeMap<i32, Vec<(i32, i64)>> = BTreeMap::new();
        for (&p, &offset) in &self.positions {
            let leader = self.topic.partitions.iter().find(|tp| tp.id == p).map_or(-1, |tp| tp.leader);
            by_leader.entry(leader).or_default().push((p, offset));
        }
        let options =
            FetchOptions { max_wait_ms: self.wait_ms, min_bytes: 1, max_bytes: FETCH_BYTES_MAX, isolation: Isolation::ReadUncommitted };
        let mut out = Vec::new();
        for (leader, partitions) in by_leader {
            if leader < 0 {
                // Refresh and retry next round; a partition without a leader is usually electing one.
                self.topic = client.topic(&self.topic.name).await?;
                continue;
            }
            let wanted: Vec<PartitionFetch> = partitions
                .iter()
                .map(|&(partition, offset)| PartitionFetch {
                    topic: self.topic.name.clone(),
                    partition,
                    offset,
                    max_bytes: PARTITION_FETCH_BYTES_MAX,
                })
                .collect();
            let fetched = client.fetch(leader, &wanted, &options).await.context("Fetch")?;
            for pd in fetched {
                let p = pd.partition;
                let Some(&position) = self.positions.get(&p) else { continue };
                match pd.error.as_ref().map(|e| e.code) {
                    None => {}
                    Some(OFFSET_OUT_OF_RANGE) => {
                        let low = client.list_offsets_all(&self.topic, &[p], OffsetSpec::Earliest).await?;
                        let high = client.list_offsets_all(&self.topic, &[p], OffsetSpec::Latest).await?;
                        let (low, high) = (low.get(&p).copied().unwrap_or(0), high.get(&p).copied().unwrap_or(0));
                        let reset = if position < low { low } else { high };
                        eprintln!("note: offset {position} is out of range for partition {p} ({low}..{high}); continuing at {reset}");
                        self.positions.insert(p, reset);
                        continue;
                    }
                    Some(UNKNOWN_TOPIC_OR_PARTITION) => {
                        bail!("topic `{}` partition {p} no longer exists (was it deleted?)", self.topic.name)
                    }
                    Some(other) => bail!("Fetch of `{}` partition {p} failed: {}", self.topic.name, codes::error_label(other)),
                }
                self.high_watermarks.insert(p, pd.high_watermark);
                if !pd.records.is_empty() {
                    let (records, next) = decode_batches(&pd.records, position)
                        .with_context(|| format!("reading `{}` partition {p} at offset {position}", self.topic.name))?;
                    self.positions.insert(p, next.max(position));
                    out.extend(records.into_iter().map(|r| (p, r)));
                }
            }
        }
        Ok(out)
    }
}

/// Set on Ctrl-C or SIGTERM; loops check it between fetches.
pub(crate) fn stop_flag() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        flag.store(true, Ordering::SeqCst);
    });
    stop
}

pub(crate) async fn run(args: ConsumeArgs, brokers: &[String], as_json: bool) -> Result<()> {
    let format = if as_json { Format::Json } else { Format::parse(&args.format)? };
    let client = crate::conn::connect(brokers).await?;
    let topic = client.topic(&args.topic).await?;
    for p in &args.partitions {
        if !topic.partitions.iter().any(|tp| tp.id == *p) {
            return usage(format!("topic `{}` has no partition {p} (it has {})", topic.name, topic.partitions.len()));
        }
    }
    let start = match (args.from_beginning, args.offset, args.from_time) {
        (true, _, _) => Start::Earliest,
        (_, Some(offset), _) => Start::Offset(offset),
        (_, _, Some(ts)) => Start::Time(ts),
        _ => Start::Latest,
    };
    let stop = stop_flag();
    let mut consumer = Consumer::new(topic.clone(), args.exit_at_end)?;
    let mut member = match &args.group {
        Some(group) => {
            let member = GroupMember::join(&client, group, vec![args.topic.clone()]).await?;
            announce(&member, &args.topic);
            Some(member)
        }
        None => None,
    };
    // Printed-up-to positions (next offset), which is what a group commits.
    let mut printed = start_consumer(&client, &mut consumer, member.as_ref(), &args, start).await?;

    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut count = 0u64;
    let mut last_heartbeat = Instant::now();
    let mut last_commit = Instant::now();
    let mut committed = printed.clone();
    let mut pipe_closed = false;
    let outcome: Result<()> = async {
        'outer: loop {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            if let Some(m) = member.as_mut() {
                if last_heartbeat.elapsed() >= HEARTBEAT_INTERVAL {
                    last_heartbeat = Instant::now();
                    if m.heartbeat(&client).await? == Heartbeat::Rebalance {
                        // Commit before giving partitions up, so the next owner starts where we stopped.
                        let _ = m.commit(&client, &by_topic(&args.topic, &printed)).await;
                        m.rejoin(&client).await?;
                        announce(m, &args.topic);
                        printed = start_consumer(&client, &mut consumer, Some(m), &args, start).await?;
                        committed = printed.clone();
                        last_heartbeat = Instant::now();
                        continue;
                    }
                }
                if last_commit.elapsed() >= COMMIT_INTERVAL && printed != committed {
                    last_commit = Instant::now();
                    match m.commit(&client, &by_topic(&args.topic, &printed)).await {
                        Ok(()) => committed = printed.clone(),
                        // The group is rebalancing; the next heartbeat says so and we rejoin then.
                        Err(ClientError::RejoinNeeded { .. }) => last_heartbeat = Instant::now() - HEARTBEAT_INTERVAL,
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            let records = consumer.poll(&client).await?;
            for (partition, record) in &records {
                if let Err(e) = format.write(&mut out, &args.topic, *partition, record) {
                    if e.kind() == std::io::ErrorKind::BrokenPipe {
                        pipe_closed = true;
                        break 'outer;
                    }
                    bail!("writing to stdout failed: {e}");
                }
                printed.insert(*partition, record.offset + 1);
                count += 1;
                if args.count.is_some_and(|n| count >= n) {
                    break 'outer;
                }
            }
            match out.flush() {
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                    pipe_closed = true;
                    break;
                }
                Err(e) => bail!("writing to stdout failed: {e}"),
                Ok(()) => {}
            }
            if args.exit_at_end && consumer.caught_up() {
                break;
            }
        }
        Ok(())
    }
    .await;
    if !pipe_closed {
        let _ = out.flush();
    }
    if let Some(m) = member.as_mut() {
        // Commit and leave even after an error, so the group neither replays nor waits for our session.
        if printed != committed {
            commit_on_exit(&client, m, &by_topic(&args.topic, &printed)).await.context("committing offsets on exit")?;
        }
        m.leave(&client).await.context("leaving the group")?;
    }
    outcome
}

/// Commits what was printed. If the group is rebalancing (another member just left too), rejoins
/// first: a classic group only takes commits from members of its current generation.
async fn commit_on_exit(client: &Client, member: &mut GroupMember, offsets: &BTreeMap<String, BTreeMap<i32, i64>>) -> Result<()> {
    match member.commit(client, offsets).await {
        Err(ClientError::RejoinNeeded { .. }) => {
            member.rejoin(client).await?;
            Ok(member.commit(client, offsets).await?)
        }
        other => Ok(other?),
    }
}

/// Positions where a (re)started consumer begins, which are also what it would commit.
async fn start_consumer(
    client: &Client,
    consumer: &mut Consumer,
    member: Option<&GroupMember>,
    args: &ConsumeArgs,
    start: Start,
) -> Result<BTreeMap<i32, i64>> {
    match member {
        Some(m) => {
            let partitions = m.assignment.get(&args.topic).cloned().unwrap_or_default();
            let committed = m.committed(client).await?.remove(&args.topic).unwrap_or_default();
            consumer.assign(client, &partitions, start, &committed).await?;
        }
        None => {
            let partitions: Vec<i32> =
                if args.partitions.is_empty() { consumer.topic.partitions.iter().map(|p| p.id).collect() } else { args.partitions.clone() };
            consumer.assign(client, &partitions, start, &BTreeMap::new()).await?;
        }
    }
    Ok(consumer.positions().clone())
}

fn announce(member: &GroupMember, topic: &str) {
    let partitions: BTreeSet<i32> = member.assignment.get(topic).map(|p| p.iter().copied().collect()).unwrap_or_default();
    let list = partitions.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(",");
    eprintln!("joined group `{}` (generation {}) with partitions [{list}] of `{topic}`", member.group, member.generation);
}

fn by_topic(topic: &str, positions: &BTreeMap<i32, i64>) -> BTreeMap<String, BTreeMap<i32, i64>> {
    BTreeMap::from([(topic.to_string(), positions.clone())])
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn record() -> ConsumerRecord {
        ConsumerRecord {
            offset: 7,
            timestamp_ms: 1000,
            key: Some(Bytes::from_static(b"k")),
            value: Some(Bytes::from_static(b"v")),
            headers: vec![("h".into(), Some(Bytes::from_static(b"x")))],
        }
    }

    fn render(format: &str) -> String {
        let mut out = Vec::new();
        Format::parse(format).expect("format").write(&mut out, "t", 2, &record()).expect("write");
        String::from_utf8(out).expect("utf8")
    }

    #[test]
    fn formats_render() {
        assert_eq!(render("text"), "v\n");
        assert_eq!(render("%t/%p@%o %k=%v [%h] %T 100%%"), "t/2@7 k=v [h=x] 1000 100%\n");
        assert_eq!(render("%k\\t%v\\n"), "k\tv\n");
        let line: Value = serde_json::from_str(&render("json")).expect("json");
        assert_eq!(
            line,
            json!({"topic": "t", "partition": 2, "offset": 7, "timestamp": 1000, "key": "k", "value": "v", "headers": {"h": "x"}})
        );
        assert!(Format::parse("%z").is_err());
    }
}
