//! `sluice bench produce|consume`: a load generator that speaks the Kafka wire protocol itself, so it
//! measures the broker rather than a client library. Produce pre-encodes its record batches and whole
//! request bodies once and only stamps a fresh request header on each send, pipelines up to
//! `--in-flight` requests per TCP connection (Kafka answers a connection's requests in order, so a FIFO
//! of send times is enough to match responses) and records send→response latency in an HDR histogram.
//! Consume reads every partition from the earliest offset with pipelined Fetch requests and walks only
//! the 61-byte v2 batch headers to count records and advance offsets, never decoding records. Both
//! negotiate versions with ApiVersions first, route partitions to their leaders from Metadata, show a
//! progress bar on stderr and print a table (or one JSON object with `--json`) on stdout.

mod consume;
#[cfg(test)]
mod mock_broker;
mod produce;
mod report;
mod stats;

use std::collections::BTreeMap;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use kafka_protocol::messages::ApiKey;
use kafka_protocol::records::Compression;
use sluice_client::codes::TOPIC_ALREADY_EXISTS;
use sluice_client::{ClientError, NewTopic};

use crate::exit::UsageError;

/// Largest `--connections` per leader; beyond this the client, not the broker, is what gets measured.
const MAX_CONNECTIONS: i64 = 256;
/// Largest `--in-flight`; Kafka clients default to 5, and deeper pipelines only add queueing.
const MAX_IN_FLIGHT: i64 = 1024;
/// Largest `--partitions` accepted for topic creation.
const MAX_PARTITIONS: i64 = 100_000;
/// Largest `--record-size`: well past Kafka's 1 MiB `message.max.bytes` default.
const MAX_RECORD_BYTES: i64 = 16 * 1024 * 1024;
/// `--batch-bytes` bounds: one v2 batch header plus a record at the low end, 64 MiB at the high end.
const MIN_BATCH_BYTES: i64 = 128;
const MAX_BATCH_BYTES: i64 = 64 * 1024 * 1024;
/// Largest `--fetch-max-bytes`: half the response frame limit, leaving room for the one oversized
/// batch a broker may add to make progress.
const MAX_FETCH_BYTES: i64 = 128 * 1024 * 1024;
/// Largest `--batches-per-request`.
const MAX_BATCHES_PER_REQUEST: i64 = 10_000;
/// Records produced when neither `--records` nor `--duration` is given.
const DEFAULT_PRODUCE_RECORDS: u64 = 1_000_000;
/// Longest accepted `--duration` (a day); a typo like `30h` for `30s` should not pass silently forever.
const MAX_DURATION_SECS: f64 = 24.0 * 3600.0;

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub cmd: BenchCmd,
}

#[derive(Debug, Subcommand)]
pub enum BenchCmd {
    /// Write generated records as fast as the broker takes them; report throughput and latency.
    #[command(after_help = "Example:\n  sluice bench produce --topic bench --partitions 6 --records 1000000 --acks all --compression lz4")]
    Produce(ProduceArgs),
    /// Read a topic from the earliest offset as fast as the broker serves it; report throughput.
    #[command(after_help = "Example:\n  sluice bench consume --topic bench --json")]
    Consume(ConsumeArgs),
}

/// Where to connect and how hard to push; shared by both subcommands.
#[derive(Debug, Clone, Args)]
pub struct TargetArgs {
    /// Bootstrap brokers, admin URL and profile (see `sluice --help`).
    #[command(flatten)]
    pub conn: crate::conn::ConnArgs,

    /// Topic to write to or read from.
    #[arg(long)]
    pub topic: String,

    /// TCP connections per partition leader; the leader's partitions are spread across them.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=MAX_CONNECTIONS))]
    pub connections: u32,

    /// Requests outstanding per connection, pipelined on the one socket.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=MAX_IN_FLIGHT))]
    pub in_flight: u32,

    /// Print the summary as one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct ProduceArgs {
    #[command(flatten)]
    pub target: TargetArgs,

    /// Create the topic with this many partitions if it does not exist.
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..=MAX_PARTITIONS))]
    pub partitions: Option<i32>,

    /// Bytes of each record's value (records have no key and no headers).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=MAX_RECORD_BYTES))]
    pub record_size: u32,

    /// Records to produce [default: 1000000 unless --duration is given].
    #[arg(long, conflicts_with = "duration", value_parser = clap::value_parser!(u64).range(1..))]
    pub records: Option<u64>,

    /// Produce for this long instead of a fixed record count (e.g. 30s, 500ms, 2m).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Target size of one uncompressed record batch; the records per batch are derived from it.
    #[arg(long, default_value_t = 16384, value_parser = clap::value_parser!(u32).range(MIN_BATCH_BYTES..=MAX_BATCH_BYTES))]
    pub batch_bytes: u32,

    /// Batches (for distinct partitions, taken round-robin) carried by one Produce request.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=MAX_BATCHES_PER_REQUEST))]
    pub batches_per_request: u32,

    /// Acknowledgements to wait for: 0 (none; the broker sends no response), 1 (leader) or all.
    #[arg(long, value_enum, default_value_t = Acks::One)]
    pub acks: Acks,

    /// Compression codec for the record batches.
    #[arg(long, value_enum, default_value_t = CompressionArg::None)]
    pub compression: CompressionArg,

    /// Send at this many records per second in all (spread over the connections) instead of as fast
    /// as the broker takes them, to measure latency at a fixed load. Requests are sent on a fixed
    /// schedule; one that cannot go when due (all --in-flight slots busy) counts its latency from when
    /// it was due, so a stalled broker shows up in the percentiles instead of slowing the load.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub rate: Option<u64>,
}

#[derive(Debug, Clone, Args)]
pub struct ConsumeArgs {
    #[command(flatten)]
    pub target: TargetArgs,

    /// Stop after this many records [default: read every partition up to its high watermark].
    #[arg(long, conflicts_with = "duration", value_parser = clap::value_parser!(u64).range(1..))]
    pub records: Option<u64>,

    /// Read for this long (e.g. 30s), waiting for new records once caught up.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Upper bound on the bytes of one Fetch response.
    #[arg(long, default_value_t = 52_428_800, value_parser = clap::value_parser!(i32).range(1..=MAX_FETCH_BYTES))]
    pub fetch_max_bytes: i32,

    /// Upper bound on the bytes returned for one partition in one Fetch response.
    #[arg(long, default_value_t = 1_048_576, value_parser = clap::value_parser!(i32).range(1..=MAX_FETCH_BYTES))]
    pub partition_max_bytes: i32,

    /// Fetch with isolation_level=read_committed: read up to the last stable offset only.
    #[arg(long)]
    pub read_committed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Acks {
    #[value(name = "0")]
    None,
    #[value(name = "1")]
    One,
    #[value(name = "all", alias = "-1")]
    All,
}

impl From<Acks> for sluice_client::Acks {
    fn from(value: Acks) -> Self {
        match value {
            Acks::None => sluice_client::Acks::None,
            Acks::One => sluice_client::Acks::Leader,
            Acks::All => sluice_client::Acks::All,
        }
    }
}

impl Acks {
    /// The value of the Produce request's `acks` field.
    pub(crate) fn wire_value(self) -> i16 {
        sluice_client::Acks::from(self).wire_value()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompressionArg {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl From<CompressionArg> for Compression {
    fn from(value: CompressionArg) -> Self {
        match value {
            CompressionArg::None => Compression::None,
            CompressionArg::Gzip => Compression::Gzip,
            CompressionArg::Snappy => Compression::Snappy,
            CompressionArg::Lz4 => Compression::Lz4,
            CompressionArg::Zstd => Compression::Zstd,
        }
    }
}

/// How long a topic's partitions may take to get leaders (e.g. right after creating it).
const TOPIC_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// CreateTopics timeout the broker is asked to honour.
const CREATE_TOPICS_TIMEOUT: Duration = Duration::from_secs(30);

/// What setting up a run learned: the negotiated version of the API the run drives, and each
/// partition with the address of its leader.
struct Setup {
    version: i16,
    routes: Vec<(i32, String)>,
}

/// Connects, negotiates `api` within `ours`, finds `topic` (creating it with `create_partitions`
/// partitions if it is missing and a count was given) and waits until every partition has a leader.
async fn setup(brokers: &[String], topic: &str, create_partitions: Option<i32>, api: ApiKey, ours: (i16, i16)) -> anyhow::Result<Setup> {
    let client = crate::conn::connect(brokers).await?;
    let version = client.version(api, ours)?;
    match (client.topic(topic).await, create_partitions) {
        (Ok(meta), Some(wanted)) if meta.partitions.len() != wanted as usize && !meta.partitions.is_empty() => {
            eprintln!(
                "note: topic `{topic}` already exists with {} partitions; using those instead of --partitions {wanted}",
                meta.partitions.len()
            );
        }
        (Ok(_), _) => {}
        (Err(ClientError::UnknownTopic { addr, .. }), None) => {
            anyhow::bail!("topic `{topic}` does not exist on {addr} (`sluice bench produce --partitions N` creates it)")
        }
        (Err(ClientError::UnknownTopic { .. }), Some(partitions)) => {
            let new = NewTopic { name: topic.to_string(), partitions: Some(partitions), ..NewTopic::default() };
            for outcome in client.create_topics(&[new], CREATE_TOPICS_TIMEOUT).await? {
                match outcome.error {
                    // Someone else created it between our Metadata and CreateTopics calls: fine.
                    Some(e) if e.code != TOPIC_ALREADY_EXISTS => anyhow::bail!("creating topic `{topic}` failed with {e}"),
                    _ => {}
                }
            }
            eprintln!("created topic `{topic}` with {partitions} partition(s)");
        }
        (Err(e), _) => return Err(e.into()),
    }
    let meta = client.wait_for_leaders(topic, None, TOPIC_READY_TIMEOUT).await?;
    Ok(Setup { version, routes: client.leader_addrs(&meta)? })
}

/// Spreads each leader's partitions over `connections` connections to it, round-robin. With fewer
/// partitions than connections, `share` decides: producers may share partitions (like independent
/// producers would), while readers must not (they would read the same records twice), so surplus
/// connections are dropped.
fn assign(routes: &[(i32, String)], connections: u32, share: bool) -> Vec<(String, Vec<i32>)> {
    let mut by_leader: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for (partition, addr) in routes {
        by_leader.entry(addr.as_str()).or_default().push(*partition);
    }
    let connections = connections.max(1) as usize;
    let mut out = Vec::new();
    for (addr, partitions) in by_leader {
        if partitions.len() >= connections || !share {
            for slot in 0..connections.min(partitions.len()) {
                let mine = partitions.iter().skip(slot).step_by(connections).copied().collect();
                out.push((addr.to_string(), mine));
            }
        } else {
            for slot in 0..connections {
                out.push((addr.to_string(), vec![partitions[slot % partitions.len()]]));
            }
        }
    }
    out
}

/// The command-line spelling of a value-enum argument, for the summary's settings line.
fn arg_name<T: ValueEnum>(value: &T) -> String {
    value.to_possible_value().map_or_else(String::new, |v| v.get_name().to_string())
}

/// Runs `sluice bench produce` or `sluice bench consume`.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.cmd {
        BenchCmd::Produce(args) => produce::run(args).await,
        BenchCmd::Consume(args) => consume::run(args).await,
    }
}

/// Parses `30s`, `500ms`, `2m`, `1h`, `1.5s` or a bare number of seconds.
fn parse_duration(text: &str) -> Result<Duration, UsageError> {
    let text = text.trim();
    let unit_at = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(unit_at);
    let value: f64 = number.parse().map_err(|_| UsageError(format!("`{text}` is not a duration (try 30s, 500ms or 2m)")))?;
    let seconds = match unit.trim() {
        "" | "s" | "sec" | "secs" => value,
        "ms" => value / 1000.0,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => return Err(UsageError(format!("unknown unit `{other}` in `{text}` (use ms, s, m or h)"))),
    };
    if !(seconds.is_finite() && seconds > 0.0) {
        return Err(UsageError(format!("`{text}` must be longer than zero")));
    }
    if seconds > MAX_DURATION_SECS {
        return Err(UsageError(format!("`{text}` is longer than the {}h limit", MAX_DURATION_SECS / 3600.0)));
    }
    Ok(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[test]
    fn partitions_spread_over_connections() {
        let routes: Vec<(i32, String)> = (0..5).map(|p| (p, if p % 2 == 0 { "a:1".to_string() } else { "b:1".to_string() })).collect();
        let plan = assign(&routes, 2, true);
        assert_eq!(
            plan,
            vec![("a:1".to_string(), vec![0, 4]), ("a:1".to_string(), vec![2]), ("b:1".to_string(), vec![1]), ("b:1".to_string(), vec![3]),]
        );
        let shared = assign(&[(0, "a:1".to_string())], 3, true);
        assert_eq!(shared.len(), 3);
        assert!(shared.iter().all(|(_, parts)| parts == &[0]));
        assert_eq!(assign(&[(0, "a:1".to_string())], 3, false), vec![("a:1".to_string(), vec![0])]);
    }

    /// Stands in for the CLI's top-level parser, which owns the `bench` subcommand.
    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: BenchCmd,
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("30s").ok(), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms").ok(), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m").ok(), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h").ok(), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1.5s").ok(), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("7").ok(), Some(Duration::from_secs(7)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("10 parsecs").is_err());
        assert!(parse_duration("1000h").is_err());
    }

    #[test]
    fn arguments_parse() {
        Cli::command().debug_assert();

        let cli = Cli::try_parse_from([
            "bench",
            "produce",
            "--topic",
            "t",
            "--brokers",
            "a:1,b:2",
            "--duration",
            "2s",
            "--acks",
            "all",
            "--compression",
            "zstd",
            "--partitions",
            "4",
        ])
        .expect("valid produce arguments");
        let BenchCmd::Produce(args) = cli.cmd else { panic!("expected produce") };
        assert_eq!(args.target.conn.brokers.as_deref(), Some("a:1,b:2"));
        assert_eq!(args.duration, Some(Duration::from_secs(2)));
        assert_eq!(args.acks.wire_value(), -1);
        assert_eq!(args.compression, CompressionArg::Zstd);
        assert_eq!(args.partitions, Some(4));
        assert_eq!((args.record_size, args.batch_bytes, args.target.in_flight), (100, 16384, 8));

        let cli = Cli::try_parse_from(["bench", "produce", "--topic", "t", "--acks", "0"]).expect("acks 0");
        let BenchCmd::Produce(args) = cli.cmd else { panic!("expected produce") };
        assert_eq!(args.acks, Acks::None);

        let cli = Cli::try_parse_from(["bench", "consume", "--topic", "t", "--records", "10"]).expect("consume");
        let BenchCmd::Consume(args) = cli.cmd else { panic!("expected consume") };
        assert_eq!(args.records, Some(10));
        assert_eq!(args.fetch_max_bytes, 52_428_800);

        assert!(Cli::try_parse_from(["bench", "produce", "--topic", "t", "--records", "5", "--duration", "1s"]).is_err());
        assert!(Cli::try_parse_from(["bench", "produce", "--topic", "t", "--in-flight", "0"]).is_err());
        assert!(Cli::try_parse_from(["bench", "produce", "--topic", "t", "--acks", "2"]).is_err());
    }
}
