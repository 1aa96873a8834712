//! Broker and topic configuration, by Kafka's names.
//!
//! Settings arrive as strings (a TOML file, then `--set name=value` on the command line, later ones
//! winning) and are parsed here, once, into typed values. Every name is checked against the tables
//! below: an unknown name is an error that names it and suggests the closest known one, because a
//! silently ignored typo (`log.retention.hour`) is how data disappears in production.
//!
//! Topic-level settings (`retention.ms`, ...) have broker-level defaults (`log.retention.ms`, ...);
//! [`TopicConfig`] resolves a topic's overrides against those defaults into a storage `LogConfig`.

use std::collections::BTreeMap;

use sluice_storage::{LogConfig, TimestampType};

/// How a broker setting is parsed and what it means; the `doc` shows up in errors and DescribeConfigs.
pub struct SettingSpec {
    pub name: &'static str,
    pub default: &'static str,
    pub doc: &'static str,
    kind: Kind,
}

#[derive(Clone, Copy)]
enum Kind {
    /// A signed integer within inclusive bounds.
    Int {
        min: i64,
        max: i64,
    },
    Bool,
    /// One of a fixed set of values.
    Choice(&'static [&'static str]),
    /// A comma-separated list of choices (cleanup.policy).
    ChoiceList(&'static [&'static str]),
    Text,
    /// `controller.quorum.voters`: empty, or `ID@HOST:PORT,...`.
    Voters,
}

const DAY_MS: &str = "604800000";

/// Bounds shared by several settings.
/// Kafka 4.0 (KIP-1030) raised the minimum of `segment.bytes` / `log.segment.bytes` from 14 bytes to
/// 1 MiB: tiny segments multiply files and descriptors without bound. A stored topic override below it
/// (from an older version) is raised to it when the topic's log is configured.
const SEGMENT_BYTES_MIN: i64 = 1024 * 1024;
const SEGMENT_BYTES_MAX: i64 = sluice_storage::SEGMENT_BYTES_MAX as i64;
const REQUEST_BYTES_LIMIT: i64 = 1 << 30;

/// Broker settings, by Kafka's names. Settings whose topic-level twin exists are listed in
/// [`TOPIC_SETTINGS`] with the broker name they default from.
pub const BROKER_SETTINGS: &[SettingSpec] = &[
    SettingSpec {
        name: "node.id",
        default: "1",
        doc: "This broker's id in Metadata responses.",
        kind: Kind::Int { min: 0, max: i32::MAX as i64 },
    },
    SettingSpec { name: "broker.id", default: "1", doc: "Alias of node.id.", kind: Kind::Int { min: 0, max: i32::MAX as i64 } },
    SettingSpec {
        name: "num.partitions",
        default: "1",
        doc: "Partitions of topics created without a count (auto-created or CreateTopics with -1).",
        kind: Kind::Int { min: 1, max: 10_000 },
    },
    SettingSpec {
        name: "default.replication.factor",
        default: "1",
        doc: "Replication factor of new topics the broker creates without one (auto-created, or CreateTopics with -1); at most the number of brokers.",
        kind: Kind::Int { min: 1, max: sluice_cluster::REPLICAS_MAX as i64 },
    },
    SettingSpec {
        name: "min.insync.replicas",
        default: "1",
        doc: "Default min.insync.replicas: an acks=all write is refused (NOT_ENOUGH_REPLICAS) while fewer replicas are in sync.",
        kind: Kind::Int { min: 1, max: sluice_cluster::REPLICAS_MAX as i64 },
    },
    SettingSpec {
        name: "replica.lag.time.max.ms",
        default: "30000",
        doc: "A follower that has not caught up with the leader's log end for this long leaves the ISR.",
        kind: Kind::Int { min: 100, max: 3_600_000 },
    },
    SettingSpec {
        name: "replica.fetch.max.bytes",
        default: "1048576",
        doc: "Bytes a follower fetches per partition per request (at least one batch, whatever its size).",
        kind: Kind::Int { min: 1024, max: 1 << 30 },
    },
    SettingSpec {
        name: "replica.fetch.wait.max.ms",
        default: "500",
        doc: "How long a follower's fetch waits at the leader for new data.",
        kind: Kind::Int { min: 1, max: 60_000 },
    },
    SettingSpec {
        name: "auto.create.topics.enable",
        default: "true",
        doc: "Create a topic when a client asks for its metadata.",
        kind: Kind::Bool,
    },
    SettingSpec {
        name: "advertised.listeners",
        default: "",
        doc: "PLAINTEXT://host:port clients should connect to; empty = the address each client connected to.",
        kind: Kind::Text,
    },
    SettingSpec {
        name: "controller.quorum.voters",
        default: "",
        doc: "The controller quorum, ID@HOST:PORT,... (every node a voter; each listens on its own entry); empty = a one-voter quorum.",
        kind: Kind::Voters,
    },
    SettingSpec {
        name: "broker.session.timeout.ms",
        default: "9000",
        doc: "The controller fences a broker that sends no heartbeat for this long.",
        kind: Kind::Int { min: 100, max: 3_600_000 },
    },
    SettingSpec {
        name: "broker.heartbeat.interval.ms",
        default: "500",
        doc: "How often a broker heartbeats to the controller (less than broker.session.timeout.ms). A broker that misses \
              one and a half intervals and whose listener refuses connections is fenced at once.",
        kind: Kind::Int { min: 10, max: 600_000 },
    },
    SettingSpec {
        name: "auto.leader.rebalance.enable",
        default: "true",
        doc: "The active controller moves partition leadership back to each partition's preferred replica (the first) \
              once it is in sync again, e.g. after a broker restart.",
        kind: Kind::Bool,
    },
    SettingSpec {
        name: "controlled.shutdown.enable",
        default: "true",
        doc: "A broker asked to stop (SIGTERM) first has the controller move the partitions it leads to other in-sync \
              replicas and take it out of their ISRs, and stops serving only then (Kafka's controlled shutdown).",
        kind: Kind::Bool,
    },
    SettingSpec {
        name: "leader.imbalance.check.interval.seconds",
        default: "300",
        doc: "How often the active controller looks for brokers that lead too few of their preferred partitions.",
        kind: Kind::Int { min: 1, max: 86_400 },
    },
    SettingSpec {
        name: "leader.imbalance.per.broker.percentage",
        default: "10",
        doc: "A broker is rebalanced when more than this percentage of the partitions it is preferred for are led by others.",
        kind: Kind::Int { min: 0, max: 100 },
    },
    SettingSpec {
        name: "log.segment.bytes",
        default: "1073741824",
        doc: "Default segment.bytes.",
        kind: Kind::Int { min: SEGMENT_BYTES_MIN, max: SEGMENT_BYTES_MAX },
    },
    SettingSpec { name: "log.roll.ms", default: DAY_MS, doc: "Default segment.ms.", kind: Kind::Int { min: 1, max: i64::MAX } },
    SettingSpec {
        name: "log.retention.ms",
        default: DAY_MS,
        doc: "Default retention.ms; -1 keeps data forever.",
        kind: Kind::Int { min: -1, max: i64::MAX },
    },
    SettingSpec {
        name: "log.retention.bytes",
        default: "-1",
        doc: "Default retention.bytes per partition; -1 means unlimited.",
        kind: Kind::Int { min: -1, max: i64::MAX },
    },
    SettingSpec {
        name: "log.retention.check.interval.ms",
        default: "300000",
        doc: "How often retention runs.",
        kind: Kind::Int { min: 1, max: i64::MAX },
    },
    SettingSpec {
        name: "log.cleanup.policy",
        default: "delete",
        doc: "Default cleanup.policy.",
        kind: Kind::ChoiceList(&["delete", "compact"]),
    },
    SettingSpec {
        name: "log.index.interval.bytes",
        default: "4096",
        doc: "Default index.interval.bytes.",
        kind: Kind::Int { min: 0, max: i32::MAX as i64 },
    },
    SettingSpec {
        name: "log.message.timestamp.type",
        default: "CreateTime",
        doc: "Default message.timestamp.type.",
        kind: Kind::Choice(&["CreateTime", "LogAppendTime"]),
    },
    SettingSpec {
        name: "log.message.timestamp.after.max.ms",
        default: "3600000",
        doc: "Default message.timestamp.after.max.ms: a CreateTime record may be dated at most this far ahead of the broker's clock, or the batch is refused with INVALID_TIMESTAMP. Also bounds how long a future-dated record already on disk can delay time retention.",
        kind: Kind::Int { min: 0, max: i64::MAX },
    },
    SettingSpec {
        name: "log.message.timestamp.before.max.ms",
        default: "9223372036854775807",
        doc: "Default message.timestamp.before.max.ms: a CreateTime record may be dated at most this far behind the broker's clock, or the batch is refused with INVALID_TIMESTAMP.",
        kind: Kind::Int { min: 0, max: i64::MAX },
    },
    SettingSpec {
        name: "message.max.bytes",
        default: "1048588",
        doc: "Default max.message.bytes (largest record batch).",
        kind: Kind::Int { min: 0, max: REQUEST_BYTES_LIMIT },
    },
    SettingSpec {
        name: "log.flush.interval.messages",
        default: "9223372036854775807",
        doc: "1 = fsync before acknowledging (group commit); N > 1 = fsync in the background every N messages; the default relies on the page cache like Kafka.",
        kind: Kind::Int { min: 1, max: i64::MAX },
    },
    SettingSpec {
        name: "log.flush.interval.ms",
        default: "-1",
        doc: "fsync dirty partitions in the background at least this often; -1 = never on a timer.",
        kind: Kind::Int { min: -1, max: i64::MAX },
    },
    SettingSpec {
        name: "socket.request.max.bytes",
        default: "104857600",
        doc: "Largest request frame accepted; larger frames close the connection.",
        kind: Kind::Int { min: 1024, max: REQUEST_BYTES_LIMIT },
    },
    SettingSpec {
        name: "max.connections",
        default: "10000",
        doc: "Client connections accepted at once; further connections wait.",
        kind: Kind::Int { min: 1, max: 1_000_000 },
    },
    SettingSpec {
        name: "max.connections.per.ip",
        default: "1000",
        doc: "Client connections accepted at once from one IP address; further connections from it are closed at once.",
        kind: Kind::Int { min: 1, max: 1_000_000 },
    },
    SettingSpec {
        name: "socket.request.read.timeout.ms",
        default: "60000",
        doc: "A request must arrive whole within this long of its first byte; slower peers (slow drips) are disconnected.",
        kind: Kind::Int { min: 1, max: i64::MAX },
    },
    SettingSpec {
        name: "queued.max.requests",
        default: "500",
        doc: "Requests read ahead per connection before the broker stops reading it.",
        kind: Kind::Int { min: 1, max: 100_000 },
    },
    SettingSpec {
        name: "queued.max.request.bytes",
        default: "134217728",
        doc: "Bytes of requests being read or handled across all connections; past it the broker stops reading sockets until some are handled (a larger frame waits to be read alone).",
        kind: Kind::Int { min: 1024, max: u32::MAX as i64 },
    },
    SettingSpec {
        name: "socket.reply.buffer.max.bytes",
        default: "1048576",
        doc: "Built but unsent reply bytes per connection; past it the broker stops reading that connection's requests until the peer reads its replies.",
        kind: Kind::Int { min: 0, max: REQUEST_BYTES_LIMIT },
    },
    SettingSpec {
        name: "plugins.compilers",
        default: "tiered",
        doc: "How Wasm plugins are compiled: tiered = Winch's baseline code at once (a cold deploy serves 3–4x sooner than with Cranelift), then Cranelift's optimized code compiled in the background, cached, and switched to between batches; optimized = Cranelift only (a cold deploy waits for it: up to seconds for large modules); baseline = Winch only (fastest deploys, slower code, nothing cached).",
        kind: Kind::Choice(&["tiered", "optimized", "baseline"]),
    },
    SettingSpec {
        name: "fetch.reply.memory.max.bytes",
        default: "67108864",
        doc: "Deprecated, no effect: Fetch replies are sent from the segment files (sendfile) and are never built in memory. Accepted so that existing configurations still load.",
        kind: Kind::Int { min: 0, max: i64::MAX },
    },
    SettingSpec {
        name: "connections.max.idle.ms",
        default: "600000",
        doc: "Close connections idle this long.",
        kind: Kind::Int { min: 1, max: i64::MAX },
    },
    SettingSpec {
        name: "fetch.max.bytes",
        default: "57671680",
        doc: "Largest Fetch response, whatever the client asks for.",
        kind: Kind::Int { min: 1024, max: REQUEST_BYTES_LIMIT },
    },
    SettingSpec {
        name: "group.initial.rebalance.delay.ms",
        default: "3000",
        doc: "How long the first rebalance of an empty group waits for more members.",
        kind: Kind::Int { min: 0, max: 600_000 },
    },
    SettingSpec {
        name: "group.min.session.timeout.ms",
        default: "6000",
        doc: "Smallest session.timeout.ms a consumer may ask for.",
        kind: Kind::Int { min: 1, max: i32::MAX as i64 },
    },
    SettingSpec {
        name: "group.max.session.timeout.ms",
        default: "1800000",
        doc: "Largest session.timeout.ms a consumer may ask for.",
        kind: Kind::Int { min: 1, max: i32::MAX as i64 },
    },
    SettingSpec {
        name: "group.max.size",
        default: "1000",
        doc: "Members one consumer group may have.",
        kind: Kind::Int { min: 1, max: 1_000_000 },
    },
    SettingSpec {
        name: "transaction.max.timeout.ms",
        default: "900000",
        doc: "Largest transaction.timeout.ms a transactional producer may ask for.",
        kind: Kind::Int { min: 1, max: i32::MAX as i64 },
    },
    SettingSpec {
        name: "transaction.abort.timed.out.transaction.cleanup.interval.ms",
        default: "10000",
        doc: "How often transactions open longer than their timeout are looked for and aborted.",
        kind: Kind::Int { min: 1, max: i32::MAX as i64 },
    },
    SettingSpec {
        name: "max.topics",
        default: "10000",
        doc: "Topics this broker will hold (a bound on metadata memory).",
        kind: Kind::Int { min: 1, max: 1_000_000 },
    },
    SettingSpec {
        name: "max.partitions.per.topic",
        default: "10000",
        doc: "Partitions one topic may have.",
        kind: Kind::Int { min: 1, max: 100_000 },
    },
    SettingSpec {
        name: "offsets.retention.ms",
        default: DAY_MS,
        doc: "Committed offsets of a group with no members are deleted this long after it became empty (or after the commit, for groups that never had members).",
        kind: Kind::Int { min: 1, max: i64::MAX },
    },
    SettingSpec {
        name: "offsets.retention.check.interval.ms",
        default: "600000",
        doc: "How often expired offsets, and empty groups without offsets, are removed.",
        kind: Kind::Int { min: 1, max: i64::MAX },
    },
    SettingSpec {
        name: "transactional.id.expiration.ms",
        default: DAY_MS,
        doc: "A transactional id with no transaction open is forgotten after this long without a request.",
        kind: Kind::Int { min: 1, max: i32::MAX as i64 },
    },
    SettingSpec {
        name: "producer.id.expiration.ms",
        default: "86400000",
        doc: "An idempotent producer's sequence state in a partition is forgotten this long (broker time) after its last write.",
        kind: Kind::Int { min: 1, max: i64::MAX },
    },
];

/// Topic settings: (topic name, broker setting it defaults from). A topic setting without a broker
/// twin defaults to the value in the second table.
pub const TOPIC_SETTINGS: &[(&str, &str)] = &[
    ("cleanup.policy", "log.cleanup.policy"),
    ("retention.ms", "log.retention.ms"),
    ("retention.bytes", "log.retention.bytes"),
    ("segment.bytes", "log.segment.bytes"),
    ("segment.ms", "log.roll.ms"),
    ("max.message.bytes", "message.max.bytes"),
    ("message.timestamp.type", "log.message.timestamp.type"),
    ("message.timestamp.after.max.ms", "log.message.timestamp.after.max.ms"),
    ("message.timestamp.before.max.ms", "log.message.timestamp.before.max.ms"),
    ("index.interval.bytes", "log.index.interval.bytes"),
    ("flush.messages", "log.flush.interval.messages"),
    ("flush.ms", "log.flush.interval.ms"),
    ("min.insync.replicas", "min.insync.replicas"),
];

/// Topic settings that exist in Kafka and that clients set routinely but whose broker-side
/// behaviour is fixed or not implemented yet (documented). They are accepted so that tools which set
/// them work, and DescribeConfigs reports them.
pub const TOPIC_SETTINGS_ACCEPTED: &[(&str, &str)] = &[
    ("unclean.leader.election.enable", "false"),
    ("compression.type", "producer"),
    ("delete.retention.ms", "86400000"),
    ("min.compaction.lag.ms", "0"),
    ("preallocate", "false"),
];

fn spec(name: &str) -> Option<&'static SettingSpec> {
    BROKER_SETTINGS.iter().find(|s| s.name == name)
}

/// A setting that was refused: its name and why, with a suggestion where one fits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name}: {message}")]
pub struct ConfigError {
    pub name: String,
    pub message: String,
}

fn check_value(spec_kind: Kind, name: &str, value: &str) -> Result<(), ConfigError> {
    let fail = |message: String| Err(ConfigError { name: name.to_string(), message });
    match spec_kind {
        Kind::Int { min, max } => match value.trim().parse::<i64>() {
            Ok(v) if v >= min && v <= max => Ok(()),
            Ok(v) => fail(format!("{v} is out of range [{min}, {max}]")),
            Err(_) => fail(format!("'{value}' is not an integer")),
        },
        Kind::Bool => match value.trim() {
            "true" | "false" => Ok(()),
            _ => fail(format!("'{value}' is not true or false")),
        },
        Kind::Choice(choices) => {
            if choices.contains(&value.trim()) {
                Ok(())
            } else {
                fail(format!("'{value}' is not one of {}", choices.join(", ")))
            }
        }
        Kind::ChoiceList(choices) => {
            for part in value.split(',') {
                if !choices.contains(&part.trim()) {
                    return fail(format!("'{}' is not one of {}", part.trim(), choices.join(", ")));
                }
            }
            Ok(())
        }
        Kind::Text => Ok(()),
        Kind::Voters if value.trim().is_empty() => Ok(()),
        Kind::Voters => sluice_cluster::parse_voters(value).map(|_| ()).or_else(fail),
    }
}

/// The closest name in `candidates` to `name`, if it is close enough to be a plausible typo.
pub(crate) fn suggest<'a>(name: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    candidates.map(|c| (edit_distance(name, c), c)).filter(|(d, c)| *d <= 3.max(c.len() / 4)).min_by_key(|(d, _)| *d).map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == *cb { prev } else { 1 + prev.min(row[j]).min(row[j + 1]) };
            prev = cur;
        }
    }
    row[b.len()]
}

/// Kafka's aliases in coarser units; normalised to the canonical name at parse time.
fn normalise(name: &str, value: &str) -> Option<(&'static str, String)> {
    let scaled = |canonical: &'static str, factor: i64| {
        value.trim().parse::<i64>().ok().map(|v| (canonical, if v < 0 { v.to_string() } else { (v.saturating_mul(factor)).to_string() }))
    };
    match name {
        "log.retention.hours" => scaled("log.retention.ms", 3_600_000),
        "log.retention.minutes" => scaled("log.retention.ms", 60_000),
        "log.roll.hours" => scaled("log.roll.ms", 3_600_000),
        _ => None,
    }
}

/// The broker's settings after parsing and validation.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    values: BTreeMap<&'static str, String>,
    /// Names set explicitly (file or command line), for DescribeConfigs' config_source.
    explicit: Vec<&'static str>,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        let values = BROKER_SETTINGS.iter().map(|s| (s.name, s.default.to_string())).collect();
        BrokerConfig { values, explicit: Vec::new() }
    }
}

impl BrokerConfig {
    /// Applies settings in order; later ones win. Fails on the first unknown name or bad value.
    pub fn from_settings<'a>(settings: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Self, ConfigError> {
        let mut config = BrokerConfig::default();
        for (name, value) in settings {
            config.set(name, value)?;
        }
        Ok(config)
    }

    pub fn set(&mut self, name: &str, value: &str) -> Result<(), ConfigError> {
        let (name, value) = match normalise(name, value) {
            Some((canonical, v)) => (canonical, v),
            None => (name, value.to_string()),
        };
        let Some(spec) = spec(name) else {
            let known = BROKER_SETTINGS.iter().map(|s| s.name).chain(["log.retention.hours", "log.retention.minutes", "log.roll.hours"]);
            let message = match suggest(name, known) {
                Some(hint) => format!("unknown broker setting; did you mean '{hint}'? (`sluice server --help-config` lists them all)"),
                None if TOPIC_SETTINGS.iter().any(|(t, _)| *t == name) => {
                    let broker = TOPIC_SETTINGS.iter().find(|(t, _)| *t == name).map(|(_, b)| *b).unwrap_or_default();
                    format!("'{name}' is a topic setting; the broker-wide default is '{broker}'")
                }
                None => "unknown broker setting (`sluice server --help-config` lists them all)".to_string(),
            };
            return Err(ConfigError { name: name.to_string(), message });
        };
        check_value(spec.kind, name, &value)?;
        // broker.id is Kafka's older name for node.id; keep both in step.
        let canonical = if name == "broker.id" { "node.id" } else { spec.name };
        self.values.insert(canonical, value.trim().to_string());
        if !self.explicit.contains(&canonical) {
            self.explicit.push(canonical);
        }
        Ok(())
    }

    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    pub(crate) fn is_explicit(&self, name: &str) -> bool {
        self.explicit.contains(&name)
    }

    /// All settings, for DescribeConfigs on the broker resource.
    pub(crate) fn entries(&self) -> impl Iterator<Item = (&'static str, &str)> {
        self.values.iter().map(|(k, v)| (*k, v.as_str()))
    }

    fn int(&self, name: &str) -> i64 {
        // Values were validated as integers when set and defaults are integers by construction.
        self.get(name).and_then(|v| v.parse().ok()).unwrap_or_default()
    }

    pub(crate) fn node_id(&self) -> i32 {
        self.int("node.id") as i32
    }
    /// The controller quorum's voters; a one-voter quorum of this node when none are set.
    pub(crate) fn controller_voters(&self) -> std::collections::BTreeMap<u64, String> {
        let text = self.get("controller.quorum.voters").unwrap_or("");
        match sluice_cluster::parse_voters(text) {
            Ok(voters) => voters,
            // Empty (checked when the setting was accepted): this node alone.
            Err(_) => std::collections::BTreeMap::from([(self.node_id() as u64, String::new())]),
        }
    }
    pub(crate) fn broker_session_timeout_ms(&self) -> u64 {
        self.int("broker.session.timeout.ms") as u64
    }
    pub(crate) fn broker_heartbeat_interval_ms(&self) -> u64 {
        self.int("broker.heartbeat.interval.ms") as u64
    }
    /// `auto.leader.rebalance.enable` and `leader.imbalance.check.interval.seconds`.
    pub(crate) fn leader_rebalance_interval(&self) -> Option<std::time::Duration> {
        (self.get("auto.leader.rebalance.enable") == Some("true"))
            .then(|| std::time::Duration::from_secs(self.int("leader.imbalance.check.interval.seconds") as u64))
    }
    /// `controlled.shutdown.enable`.
    pub(crate) fn controlled_shutdown(&self) -> bool {
        self.get("controlled.shutdown.enable") == Some("true")
    }
    pub(crate) fn leader_imbalance_ratio(&self) -> f64 {
        self.int("leader.imbalance.per.broker.percentage") as f64 / 100.0
    }
    pub(crate) fn num_partitions(&self) -> i32 {
        self.int("num.partitions") as i32
    }
    pub(crate) fn default_replication_factor(&self) -> usize {
        self.int("default.replication.factor").max(1) as usize
    }
    pub(crate) fn replica_lag_time_max_ms(&self) -> i64 {
        self.int("replica.lag.time.max.ms")
    }
    /// Per partition per follower fetch: at least `message.max.bytes`, so the largest batch a
    /// producer may write always fits one fetch.
    pub(crate) fn replica_fetch_max_bytes(&self) -> i32 {
        self.int("replica.fetch.max.bytes").max(self.int("message.max.bytes")).min(i32::MAX as i64) as i32
    }
    pub(crate) fn replica_fetch_wait_max_ms(&self) -> i32 {
        self.int("replica.fetch.wait.max.ms") as i32
    }
    pub(crate) fn auto_create_topics(&self) -> bool {
        self.get("auto.create.topics.enable") == Some("true")
    }
    pub(crate) fn advertised_listener(&self) -> Option<(String, i32)> {
        let value = self.get("advertised.listeners")?.trim();
        let address = value.split(',').next()?.trim();
        let address = address.split_once("://").map(|(_, a)| a).unwrap_or(address);
        let (host, port) = address.rsplit_once(':')?;
        Some((host.to_string(), port.parse().ok()?))
    }
    pub(crate) fn retention_check_interval_ms(&self) -> u64 {
        self.int("log.retention.check.interval.ms") as u64
    }
    pub(crate) fn request_bytes_max(&self) -> usize {
        self.int("socket.request.max.bytes") as usize
    }
    pub(crate) fn max_connections(&self) -> usize {
        self.int("max.connections") as usize
    }
    pub(crate) fn max_connections_per_ip(&self) -> usize {
        self.int("max.connections.per.ip") as usize
    }
    pub(crate) fn request_read_timeout_ms(&self) -> u64 {
        self.int("socket.request.read.timeout.ms") as u64
    }
    pub(crate) fn queued_requests_max(&self) -> usize {
        self.int("queued.max.requests") as usize
    }
    pub(crate) fn queued_request_bytes_max(&self) -> u32 {
        self.int("queued.max.request.bytes") as u32
    }
    pub(crate) fn connection_reply_bytes_max(&self) -> usize {
        self.int("socket.reply.buffer.max.bytes") as usize
    }
    pub(crate) fn connection_idle_ms(&self) -> u64 {
        self.int("connections.max.idle.ms") as u64
    }
    pub(crate) fn fetch_bytes_max(&self) -> usize {
        self.int("fetch.max.bytes") as usize
    }
    pub(crate) fn group_initial_rebalance_delay_ms(&self) -> u64 {
        self.int("group.initial.rebalance.delay.ms") as u64
    }
    pub(crate) fn group_session_timeout_bounds_ms(&self) -> (i32, i32) {
        (self.int("group.min.session.timeout.ms") as i32, self.int("group.max.session.timeout.ms") as i32)
    }
    pub(crate) fn group_size_max(&self) -> usize {
        self.int("group.max.size") as usize
    }
    pub(crate) fn transaction_max_timeout_ms(&self) -> i32 {
        self.int("transaction.max.timeout.ms") as i32
    }
    pub(crate) fn transaction_expiry_check_ms(&self) -> u64 {
        self.int("transaction.abort.timed.out.transaction.cleanup.interval.ms") as u64
    }
    pub(crate) fn topics_max(&self) -> usize {
        self.int("max.topics") as usize
    }
    pub(crate) fn partitions_per_topic_max(&self) -> i32 {
        self.int("max.partitions.per.topic") as i32
    }
    /// Whether the broker-wide default is fsync-before-acknowledge (`log.flush.interval.messages=1`);
    /// the broker's own logs (committed offsets) follow it.
    pub(crate) fn flush_before_ack(&self) -> bool {
        crate::topic::FlushPolicy::from_flush_messages(self.int("log.flush.interval.messages")) == crate::topic::FlushPolicy::BeforeAck
    }
    pub(crate) fn flush_interval_ms(&self) -> Option<u64> {
        let v = self.int("log.flush.interval.ms");
        (v > 0).then_some(v as u64)
    }
    pub(crate) fn offsets_retention_ms(&self) -> i64 {
        self.int("offsets.retention.ms")
    }
    pub(crate) fn offsets_retention_check_ms(&self) -> u64 {
        self.int("offsets.retention.check.interval.ms") as u64
    }
    pub(crate) fn transactional_id_expiration_ms(&self) -> i64 {
        self.int("transactional.id.expiration.ms")
    }
    pub(crate) fn producer_id_expiration_ms(&self) -> u64 {
        self.int("producer.id.expiration.ms") as u64
    }
}

/// Where a topic setting's effective value comes from (DescribeConfigs' config_source).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConfigSource {
    /// Set on the topic (Kafka's DYNAMIC_TOPIC_CONFIG = 1).
    Topic,
    /// Set in the broker's file or command line (STATIC_BROKER_CONFIG = 4).
    StaticBroker,
    /// Built-in default (DEFAULT_CONFIG = 5).
    Default,
}

impl ConfigSource {
    pub(crate) fn kafka_code(self) -> i8 {
        match self {
            ConfigSource::Topic => 1,
            ConfigSource::StaticBroker => 4,
            ConfigSource::Default => 5,
        }
    }
}

/// The read-only topic setting that names the mirror writing a topic (see [`TopicConfig::mirror`]).
pub const MIRROR_SETTING: &str = "sluice.mirror";

/// One topic's explicit overrides. Only validated values get in.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct TopicConfig {
    pub(crate) overrides: BTreeMap<String, String>,
    /// Set while the topic is a read-only mirror: the name of the mirror that writes it. Clients see
    /// it as the read-only setting `sluice.mirror`; only the mirror runtime sets it (through the
    /// host) and only promotion clears it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) mirror: Option<String>,
    /// The source topic's id when the mirror created the copy (if the source sends ids): a source
    /// topic deleted and created again has another id, and is not the log this copy continues.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) mirror_source_id: Option<String>,
}

/// Checks one topic setting. Errors carry Kafka's INVALID_CONFIG meaning.
pub(crate) fn validate_topic_setting(name: &str, value: &str) -> Result<(), ConfigError> {
    if name == MIRROR_SETTING {
        return Err(ConfigError {
            name: name.into(),
            message: "set by the broker for topics a mirror writes; create a mirror with `sluice mirror create` instead".into(),
        });
    }
    if let Some((_, broker_name)) = TOPIC_SETTINGS.iter().find(|(t, _)| *t == name) {
        let broker_spec =
            spec(broker_name).ok_or_else(|| ConfigError { name: name.to_string(), message: "internal: no broker twin".into() })?;
        let kind = match (name, broker_spec.kind) {
            // Kafka lets topics say -1 (never) for these even though the broker-side minimum is 1.
            ("segment.ms", _) => Kind::Int { min: 1, max: i64::MAX },
            ("flush.messages", _) => Kind::Int { min: 1, max: i64::MAX },
            (_, kind) => kind,
        };
        return check_value(kind, name, value);
    }
    if let Some((_, _)) = TOPIC_SETTINGS_ACCEPTED.iter().find(|(t, _)| *t == name) {
        return match name {
            "compression.type" if value.trim() != "producer" => Err(ConfigError {
                name: name.into(),
                message: format!(
                    "'{value}': Sluice stores batches as producers compressed them and does not recompress; use compression.type=producer and set compression on the producer"
                ),
            }),
            "unclean.leader.election.enable" if value.trim() == "true" => Err(ConfigError {
                name: name.into(),
                message: "Sluice never elects a leader from outside the ISR (it would lose acknowledged records); only false is accepted"
                    .into(),
            }),
            "unclean.leader.election.enable" | "preallocate" => check_value(Kind::Bool, name, value),
            "delete.retention.ms" | "min.compaction.lag.ms" => check_value(Kind::Int { min: 0, max: i64::MAX }, name, value),
            _ => Ok(()),
        };
    }
    let known = TOPIC_SETTINGS.iter().map(|(t, _)| *t).chain(TOPIC_SETTINGS_ACCEPTED.iter().map(|(t, _)| *t));
    let message = match suggest(name, known) {
        Some(hint) => format!("unknown topic setting; did you mean '{hint}'?"),
        None => "unknown topic setting".to_string(),
    };
    Err(ConfigError { name: name.to_string(), message })
}

impl TopicConfig {
    pub(crate) fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Self, ConfigError> {
        let mut config = TopicConfig::default();
        for (name, value) in pairs {
            validate_topic_setting(name, value)?;
            config.overrides.insert(name.to_string(), value.trim().to_string());
        }
        Ok(config)
    }

    /// The effective value of a topic setting and where it came from.
    pub(crate) fn effective(&self, name: &str, broker: &BrokerConfig) -> Option<(String, ConfigSource)> {
        if let Some(v) = self.overrides.get(name) {
            return Some((v.clone(), ConfigSource::Topic));
        }
        if let Some((_, broker_name)) = TOPIC_SETTINGS.iter().find(|(t, _)| *t == name) {
            let source = if broker.is_explicit(broker_name) { ConfigSource::StaticBroker } else { ConfigSource::Default };
            return broker.get(broker_name).map(|v| (v.to_string(), source));
        }
        TOPIC_SETTINGS_ACCEPTED.iter().find(|(t, _)| *t == name).map(|(_, d)| (d.to_string(), ConfigSource::Default))
    }

    /// Every topic setting with its effective value, for DescribeConfigs (`sluice.mirror` last, on
    /// a mirror topic only).
    pub(crate) fn all_effective(&self, broker: &BrokerConfig) -> Vec<(&'static str, String, ConfigSource)> {
        TOPIC_SETTINGS
            .iter()
            .map(|(t, _)| *t)
            .chain(TOPIC_SETTINGS_ACCEPTED.iter().map(|(t, _)| *t))
            .filter_map(|name| self.effective(name, broker).map(|(v, s)| (name, v, s)))
            .chain(self.mirror.iter().map(|m| (MIRROR_SETTING, m.clone(), ConfigSource::Topic)))
            .collect()
    }

    fn int(&self, name: &str, broker: &BrokerConfig) -> i64 {
        self.effective(name, broker).and_then(|(v, _)| v.parse().ok()).unwrap_or(-1)
    }

    /// The storage engine's view of this topic.
    pub(crate) fn log_config(&self, broker: &BrokerConfig) -> LogConfig {
        let positive = |v: i64| (v > 0).then_some(v as u64);
        let policy = self.effective("cleanup.policy", broker).map(|(v, _)| v).unwrap_or_default();
        LogConfig {
            segment_bytes: self.int("segment.bytes", broker).max(SEGMENT_BYTES_MIN) as u64,
            segment_ms: positive(self.int("segment.ms", broker)),
            // -1 keeps data forever; 0 expires everything at the next retention check.
            retention_ms: u64::try_from(self.int("retention.ms", broker)).ok(),
            retention_bytes: (self.int("retention.bytes", broker) >= 0).then(|| self.int("retention.bytes", broker) as u64),
            index_interval_bytes: self.int("index.interval.bytes", broker).clamp(0, i32::MAX as i64) as u32,
            max_batch_bytes: self.int("max.message.bytes", broker).clamp(0, u32::MAX as i64) as u32,
            timestamp_type: match self.effective("message.timestamp.type", broker).map(|(v, _)| v).as_deref() {
                Some("LogAppendTime") => TimestampType::LogAppendTime,
                _ => TimestampType::CreateTime,
            },
            delete_enabled: policy.split(',').any(|p| p.trim() == "delete"),
            timestamp_after_max_ms: self.int("message.timestamp.after.max.ms", broker).max(0) as u64,
            timestamp_before_max_ms: self.int("message.timestamp.before.max.ms", broker).max(0) as u64,
            producer_id_expiration_ms: broker.producer_id_expiration_ms(),
        }
    }

    /// `flush.messages` for this topic: 1 means fsync before acknowledging.
    pub(crate) fn flush_messages(&self, broker: &BrokerConfig) -> i64 {
        self.int("flush.messages", broker)
    }

    /// `min.insync.replicas` for this topic.
    pub(crate) fn min_insync_replicas(&self, broker: &BrokerConfig) -> usize {
        self.int("min.insync.replicas", broker).max(1) as usize
    }

    pub(crate) fn flush_ms(&self, broker: &BrokerConfig) -> Option<u64> {
        let v = self.int("flush.ms", broker);
        (v > 0).then_some(v as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_setting_suggests_the_closest_name() {
        let error = BrokerConfig::from_settings([("log.retention.hour", "5")]).unwrap_err();
        assert_eq!(error.name, "log.retention.hour");
        assert!(error.message.contains("log.retention.hours"), "{error}");
    }

    #[test]
    fn topic_setting_at_broker_level_points_to_the_broker_name() {
        let error = BrokerConfig::from_settings([("retention.ms", "5")]).unwrap_err();
        assert!(error.message.contains("log.retention.ms"), "{error}");
    }

    #[test]
    fn bad_values_are_rejected_with_the_reason() {
        assert!(BrokerConfig::from_settings([("num.partitions", "abc")]).unwrap_err().message.contains("not an integer"));
        assert!(BrokerConfig::from_settings([("num.partitions", "0")]).unwrap_err().message.contains("out of range"));
        assert!(BrokerConfig::from_settings([("auto.create.topics.enable", "yes")]).is_err());
    }

    #[test]
    fn hours_alias_normalises_to_ms() {
        let config = BrokerConfig::from_settings([("log.retention.hours", "2")]).unwrap();
        assert_eq!(config.get("log.retention.ms"), Some("7200000"));
    }

    #[test]
    fn topic_overrides_resolve_against_broker_defaults() {
        let broker = BrokerConfig::from_settings([("log.segment.bytes", "1048576")]).unwrap();
        let topic = TopicConfig::from_pairs([("retention.ms", "1000"), ("cleanup.policy", "compact")]).unwrap();
        let log = topic.log_config(&broker);
        assert_eq!(log.segment_bytes, 1_048_576);
        assert_eq!(log.retention_ms, Some(1000));
        assert!(!log.delete_enabled);
        assert_eq!(topic.effective("segment.bytes", &broker).unwrap().1, ConfigSource::StaticBroker);
        assert_eq!(topic.effective("retention.ms", &broker).unwrap().1, ConfigSource::Topic);
        assert_eq!(topic.effective("max.message.bytes", &broker).unwrap().1, ConfigSource::Default);
    }

    /// Regression (issue 10, item 9): `segment.bytes` could be 14, so a topic could be made to hold
    /// millions of segments. Kafka 4.0's minimum is 1 MiB, for the topic and the broker default.
    #[test]
    fn segment_bytes_below_one_mebibyte_is_refused() {
        assert!(TopicConfig::from_pairs([("segment.bytes", "14")]).unwrap_err().message.contains("out of range"));
        assert!(TopicConfig::from_pairs([("segment.bytes", "1048575")]).is_err());
        assert!(TopicConfig::from_pairs([("segment.bytes", "1048576")]).is_ok());
        assert!(BrokerConfig::from_settings([("log.segment.bytes", "1000")]).is_err());
        // An override stored by an older version still opens, raised to the minimum.
        let stored =
            TopicConfig { overrides: [("segment.bytes".to_string(), "14".to_string())].into(), mirror: None, mirror_source_id: None };
        assert_eq!(stored.log_config(&BrokerConfig::default()).segment_bytes, 1_048_576);
    }

    #[test]
    fn timestamp_bounds_default_to_kafka_4_and_resolve_per_topic() {
        let broker = BrokerConfig::default();
        let log = TopicConfig::default().log_config(&broker);
        assert_eq!((log.timestamp_after_max_ms, log.timestamp_before_max_ms), (3_600_000, i64::MAX as u64));
        let broker = BrokerConfig::from_settings([("log.message.timestamp.before.max.ms", "86400000")]).unwrap();
        let topic = TopicConfig::from_pairs([("message.timestamp.after.max.ms", "60000")]).unwrap();
        let log = topic.log_config(&broker);
        assert_eq!((log.timestamp_after_max_ms, log.timestamp_before_max_ms), (60_000, 86_400_000));
        assert!(TopicConfig::from_pairs([("message.timestamp.after.max.ms", "-1")]).is_err());
    }

    #[test]
    fn topic_settings_are_validated() {
        assert!(TopicConfig::from_pairs([("retention.ms", "soon")]).is_err());
        assert!(TopicConfig::from_pairs([("retention.mss", "1")]).unwrap_err().message.contains("retention.ms"));
        assert!(TopicConfig::from_pairs([("compression.type", "zstd")]).is_err());
        assert!(TopicConfig::from_pairs([("cleanup.policy", "delete,compact")]).is_ok());
    }
}
