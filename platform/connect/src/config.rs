//! A connector's configuration: Kafka Connect's flat JSON map of strings, parsed at the boundary into a
//! [`ConnectorConfig`] that cannot be wrong, with every problem reported key by key (the shape
//! `PUT /connector-plugins/{plugin}/config/validate` answers with).
//!
//! The runtime owns these keys; everything else must be a key the connector's plugin declares, or it
//! is refused (a key nobody reads is never silently ignored):
//!
//! | key | meaning |
//! |---|---|
//! | `name` | the connector's name (must match the URL) |
//! | `connector.class` | a module in the registry (`jdbc-source`…), or a Java class name that is an alias of one |
//! | `tasks.max` | how many tasks (threads) run the connector, 1..=[`TASKS_MAX_LIMIT`] |
//! | `topics`, `topics.regex` | a sink's input: a comma-separated list, or a regex (exactly one of them) |
//! | `topic.prefix` | a source's output topics are named `{topic.prefix}…` (the plugin says how) |
//! | `transforms`, `transforms.<alias>.type`, `transforms.<alias>.<key>` | a chain of Wasm transforms from the registry, applied in process, each with its config (`crate::chain`) |
//! | `transforms.<alias>.outputs` | topics that step may route records to, besides the record's own |
//! | `errors.tolerance` | `none` (a failure stops the task) or `all` (failing records are dead-lettered or skipped) |
//! | `errors.retry.timeout` | ms to keep retrying a failing operation (0: no retry, -1: without a time limit) |
//! | `errors.retry.delay.max.ms` | the longest wait between retries |
//! | `errors.deadletterqueue.topic.name`, `.topic.replication.factor`, `.context.headers.enable` | a sink's dead-letter topic and whether dead letters carry context headers |
//! | `connection.url`, `connection.user`, `connection.password` | the `sql` capability's connection named `default` (JDBC URLs accepted) |
//! | `database.hostname`, `database.port`, `database.user`, `database.password`, `database.dbname` | the same, Debezium's way (PostgreSQL) |
//! | `connections`, `connections.<name>.url`, `.user`, `.password` | further named connections |
//!
//! How the `errors.*` keys map onto `sluice_runtime::ErrorPolicy` is [`ErrorHandling::policy`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sluice_runtime::{ErrorPolicy, OnFailure, RetryPolicy};

use crate::plugins::PluginSpec;
use crate::sql::{ConnectionSpec, ValueError};

/// Longest connector name: it names files and becomes part of transactional ids.
pub const CONNECTOR_NAME_BYTES_MAX: usize = 100;
/// Most keys in one connector config.
pub const CONFIG_KEYS_MAX: usize = 1_000;
pub const CONFIG_KEY_BYTES_MAX: usize = 256;
pub const CONFIG_VALUE_BYTES_MAX: usize = 64 * 1024;
/// Most tasks one connector may run (each is a thread).
pub const TASKS_MAX_LIMIT: u32 = 64;
/// Longest transform chain.
pub const TRANSFORMS_MAX: usize = 16;
/// Longest `topics.regex`, and the most memory its compiled form may take.
pub const TOPICS_REGEX_BYTES_MAX: usize = 1024;
const TOPICS_REGEX_COMPILED_BYTES_MAX: usize = 1 << 20;
/// Most topics a sink's `topics` may list.
pub const TOPICS_MAX: usize = 1_000;
/// Most named connections.
pub const CONNECTIONS_MAX: usize = 16;
/// What a secret looks like in `GET /connectors/{name}/config`.
pub const MASK: &str = "********";
/// Connect's first retry backoff (`errors.retry.timeout` retries start here and double).
pub const RETRY_BACKOFF_FIRST_MS: u64 = 300;

/// A connector reads from an external system into topics, or from topics into one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConnectorType {
    Source,
    Sink,
}

impl ConnectorType {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectorType::Source => "source",
            ConnectorType::Sink => "sink",
        }
    }
}

/// Connect's config types, as `validate` shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigType {
    String,
    Int,
    Long,
    Boolean,
    List,
    Password,
    Class,
}

impl ConfigType {
    pub fn as_str(self) -> &'static str {
        match self {
            ConfigType::String => "STRING",
            ConfigType::Int => "INT",
            ConfigType::Long => "LONG",
            ConfigType::Boolean => "BOOLEAN",
            ConfigType::List => "LIST",
            ConfigType::Password => "PASSWORD",
            ConfigType::Class => "CLASS",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Importance {
    High,
    Medium,
    Low,
}

impl Importance {
    pub fn as_str(self) -> &'static str {
        match self {
            Importance::High => "HIGH",
            Importance::Medium => "MEDIUM",
            Importance::Low => "LOW",
        }
    }
}

/// One key a connector accepts. A name ending in `.*` stands for every key under that prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigKeyDef {
    pub name: String,
    pub kind: ConfigType,
    pub required: bool,
    pub default: Option<String>,
    pub importance: Importance,
    pub documentation: String,
    pub group: String,
    pub recommended: Vec<String>,
}

impl ConfigKeyDef {
    pub fn new(name: &str, kind: ConfigType, group: &str, documentation: &str) -> ConfigKeyDef {
        ConfigKeyDef {
            name: name.to_string(),
            kind,
            required: false,
            default: None,
            importance: Importance::Medium,
            documentation: documentation.to_string(),
            group: group.to_string(),
            recommended: Vec::new(),
        }
    }

    pub fn required(mut self) -> ConfigKeyDef {
        self.required = true;
        self.importance = Importance::High;
        self
    }

    pub fn default_value(mut self, value: &str) -> ConfigKeyDef {
        self.default = Some(value.to_string());
        self
    }

    pub fn recommended(mut self, values: &[&str]) -> ConfigKeyDef {
        self.recommended = values.iter().map(|v| v.to_string()).collect();
        self
    }

    /// Whether this definition covers `key`.
    pub fn covers(&self, key: &str) -> bool {
        match self.name.strip_suffix('*') {
            Some(prefix) => key.starts_with(prefix) && key.len() > prefix.len(),
            None => self.name == key,
        }
    }
}

pub const GROUP_COMMON: &str = "Common";
pub const GROUP_TRANSFORMS: &str = "Transforms";
pub const GROUP_ERRORS: &str = "Error Handling";
pub const GROUP_CONNECTIONS: &str = "Connections";

/// The keys the runtime owns, in the order `validate` lists them.
pub fn runtime_keys() -> Vec<ConfigKeyDef> {
    use ConfigType::*;
    vec![
        ConfigKeyDef::new("name", String, GROUP_COMMON, "Globally unique name to use for this connector.").required(),
        ConfigKeyDef::new(
            "connector.class",
            Class,
            GROUP_COMMON,
            "A connector plugin in the module registry (GET /connector-plugins), or a Java class name that is an alias of one.",
        )
        .required(),
        ConfigKeyDef::new("tasks.max", Int, GROUP_COMMON, "Number of tasks (threads) that run this connector.").default_value("1"),
        ConfigKeyDef::new("topics", List, GROUP_COMMON, "A sink's input topics, comma-separated (this or topics.regex)."),
        ConfigKeyDef::new("topics.regex", String, GROUP_COMMON, "A sink's input topics, as a regular expression (this or topics)."),
        ConfigKeyDef::new("topic.prefix", String, GROUP_COMMON, "A source's output topic names start with this."),
        ConfigKeyDef::new(
            "transforms",
            List,
            GROUP_TRANSFORMS,
            "Aliases of the Wasm transforms applied in order to each record; each needs transforms.<alias>.type, a transform module in the registry.",
        ),
        ConfigKeyDef::new(
            "errors.tolerance",
            String,
            GROUP_ERRORS,
            "none: a failing record stops the task (FAILED). all: failing records go to the dead-letter topic, or are skipped without one.",
        )
        .default_value("none")
        .recommended(&["none", "all"]),
        ConfigKeyDef::new(
            "errors.retry.timeout",
            Long,
            GROUP_ERRORS,
            "Milliseconds to keep retrying a failed operation, with backoff; 0 for no retries, -1 without a time limit.",
        )
        .default_value("0"),
        ConfigKeyDef::new("errors.retry.delay.max.ms", Long, GROUP_ERRORS, "The longest wait between two retries, in milliseconds.")
            .default_value("60000"),
        ConfigKeyDef::new(
            "errors.deadletterqueue.topic.name",
            String,
            GROUP_ERRORS,
            "A sink's dead-letter topic for records that fail (with errors.tolerance=all).",
        )
        .default_value(""),
        ConfigKeyDef::new(
            "errors.deadletterqueue.topic.replication.factor",
            Int,
            GROUP_ERRORS,
            "Replication factor of the dead-letter topic: 1 (or -1 for the broker's default) on a single-node broker.",
        )
        .default_value("-1"),
        ConfigKeyDef::new(
            "errors.deadletterqueue.context.headers.enable",
            Boolean,
            GROUP_ERRORS,
            "Whether dead letters carry headers saying where they came from and why.",
        )
        .default_value("false"),
        ConfigKeyDef::new(
            "connection.url",
            String,
            GROUP_CONNECTIONS,
            "The database of the connection named `default`: postgres://, mysql://, mariadb://, sqlite: or a JDBC URL.",
        ),
        ConfigKeyDef::new("connection.user", String, GROUP_CONNECTIONS, "User of the `default` connection."),
        ConfigKeyDef::new("connection.password", Password, GROUP_CONNECTIONS, "Password of the `default` connection (kept in the broker)."),
        ConfigKeyDef::new("database.hostname", String, GROUP_CONNECTIONS, "PostgreSQL host of the `default` connection (Debezium's way)."),
        ConfigKeyDef::new("database.port", Int, GROUP_CONNECTIONS, "PostgreSQL port of the `default` connection.").default_value("5432"),
        ConfigKeyDef::new("database.user", String, GROUP_CONNECTIONS, "User of the `default` connection (Debezium's way)."),
        ConfigKeyDef::new("database.password", Password, GROUP_CONNECTIONS, "Password of the `default` connection (Debezium's way)."),
        ConfigKeyDef::new("database.dbname", String, GROUP_CONNECTIONS, "Database of the `default` connection (Debezium's way)."),
        ConfigKeyDef::new(
            "connections",
            List,
            GROUP_CONNECTIONS,
            "Names of further connections, each with connections.<name>.url (.user, .password).",
        ),
    ]
}

/// Whether a key holds a secret: shown masked, never logged.
pub fn is_secret(key: &str) -> bool {
    key == "password" || key.ends_with(".password")
}

/// How a value is shown in `GET /connectors/{name}/config`: secrets masked, and the password part
/// of a URL's user info or `password=` parameter masked too.
pub fn masked(key: &str, value: &str) -> String {
    if is_secret(key) {
        return if value.is_empty() { String::new() } else { MASK.to_string() };
    }
    if key.ends_with(".url") { mask_url(value) } else { value.to_string() }
}

fn mask_url(url: &str) -> String {
    let mut out = url.to_string();
    if let Some(scheme_end) = out.find("://") {
        let rest = &out[scheme_end + 3..];
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@')
            && let Some(colon) = rest[..at].find(':')
        {
            let start = scheme_end + 3 + colon + 1;
            out.replace_range(start..scheme_end + 3 + at, MASK);
        }
    }
    let lower = out.to_ascii_lowercase();
    if let Some(position) = lower.find("password=") {
        let start = position + "password=".len();
        let end = out[start..].find('&').map_or(out.len(), |e| start + e);
        out.replace_range(start..end, MASK);
    }
    out
}

/// A PUT of a config read back from `GET .../config` carries masked values: they keep what is stored.
pub fn unmask(new: &mut BTreeMap<String, String>, old: &BTreeMap<String, String>) {
    for (key, value) in new.iter_mut() {
        if let Some(stored) = old.get(key)
            && *value != *stored
            && *value == masked(key, stored)
        {
            value.clone_from(stored);
        }
    }
}

/// Letters, digits, `.`, `_`, `-`: a valid Kafka topic name.
pub fn check_topic_name(name: &str) -> Result<(), ValueError> {
    if name.is_empty() || name.len() > 249 || name == "." || name == ".." {
        return Err(format!("'{name}' is not a valid topic name (1..=249 characters)").into());
    }
    match name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        Some(bad) => Err(format!("topic name '{name}' contains '{bad}'").into()),
        None => Ok(()),
    }
}

/// What a sink reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicSelection {
    /// Sources: no input.
    None,
    List(Vec<String>),
    Regex(String),
}

/// One step of the transform chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransformStep {
    pub alias: String,
    /// A transform module in the registry.
    pub module: String,
    /// `transforms.<alias>.<key>` without the prefix (and without `type` and `outputs`).
    pub config: BTreeMap<String, String>,
    /// `transforms.<alias>.outputs`: topics the step may route records to besides the record's own.
    pub outputs: Vec<String>,
}

/// The `errors.*` keys, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorHandling {
    pub tolerate_all: bool,
    /// `errors.retry.timeout`: 0 no retries, -1 no time limit.
    pub retry_timeout_ms: i64,
    pub retry_delay_max_ms: u64,
    pub dead_letter_topic: Option<String>,
    pub context_headers: bool,
}

impl Default for ErrorHandling {
    fn default() -> Self {
        ErrorHandling {
            tolerate_all: false,
            retry_timeout_ms: 0,
            retry_delay_max_ms: 60_000,
            dead_letter_topic: None,
            context_headers: false,
        }
    }
}

impl ErrorHandling {
    /// The runtime's error policy for these keys:
    ///
    /// - `errors.retry.timeout=0` → no retry (`RetryPolicy::NONE`); `T > 0` → retries with a backoff
    ///   starting at [`RETRY_BACKOFF_FIRST_MS`] and doubling up to `errors.retry.delay.max.ms`, for at
    ///   most `T` ms; `-1` → the same without a time limit, bounded by
    ///   `RetryPolicy::ATTEMPTS_MAX` attempts.
    /// - then `errors.tolerance=none` → `OnFailure::Stop` (the task shows FAILED with the error);
    ///   `all` with `errors.deadletterqueue.topic.name` → `OnFailure::DeadLetter` (context headers
    ///   per `errors.deadletterqueue.context.headers.enable`); `all` without one → `OnFailure::Skip`.
    pub fn policy(&self) -> ErrorPolicy {
        let retry = match self.retry_timeout_ms {
            0 => RetryPolicy::NONE,
            timeout => RetryPolicy {
                max_attempts: RetryPolicy::ATTEMPTS_MAX,
                timeout_ms: u64::try_from(timeout).ok(),
                backoff_ms: RETRY_BACKOFF_FIRST_MS.min(self.retry_delay_max_ms),
                backoff_max_ms: self.retry_delay_max_ms,
            },
        };
        let on_failure = match (&self.dead_letter_topic, self.tolerate_all) {
            (_, false) => OnFailure::Stop,
            (Some(topic), true) => OnFailure::DeadLetter { topic: topic.clone(), context_headers: self.context_headers },
            (None, true) => OnFailure::Skip,
        };
        ErrorPolicy { retry, on_failure }
    }
}

/// A validated connector config.
#[derive(Debug, Clone)]
pub struct ConnectorConfig {
    pub name: String,
    /// `connector.class` as given.
    pub class: String,
    /// The plugin it resolved to.
    pub plugin: PluginSpec,
    pub tasks_max: u32,
    pub topics: TopicSelection,
    pub topic_prefix: Option<String>,
    pub transforms: Vec<TransformStep>,
    pub errors: ErrorHandling,
    pub connections: BTreeMap<String, ConnectionSpec>,
    /// The keys the plugin reads (every key the runtime does not own).
    pub plugin_config: BTreeMap<String, String>,
    /// Everything as given.
    pub raw: BTreeMap<String, String>,
}

impl ConnectorConfig {
    pub fn kind(&self) -> ConnectorType {
        self.plugin.kind
    }
}

/// What the validation of a config found: errors per key (an empty list for a key that is fine).
#[derive(Debug, Clone, Default)]
pub struct Validation {
    /// Every key checked: the runtime's, the plugin's, and any given key that neither knows.
    pub values: BTreeMap<String, Vec<String>>,
    /// Keys neither the runtime nor the plugin knows, in the order found.
    pub unknown: Vec<String>,
}

impl Validation {
    fn error(&mut self, key: &str, message: impl Into<String>) {
        self.values.entry(key.to_string()).or_default().push(message.into());
    }

    pub fn error_count(&self) -> usize {
        self.values.values().filter(|errors| !errors.is_empty()).count()
    }

    /// Every error as `key: message`, for a 400's message.
    pub fn messages(&self) -> Vec<String> {
        self.values.iter().flat_map(|(key, errors)| errors.iter().map(move |e| format!("{key}: {e}"))).collect()
    }
}

/// What validation needs to know beyond the config itself.
pub struct Context<'a> {
    /// The plugin `connector.class` names, if any.
    pub plugin: Option<&'a PluginSpec>,
    /// Whether a module name is a deployed Wasm transform in the registry.
    pub is_transform: &'a dyn Fn(&str) -> bool,
}

fn parse_bool(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

fn list(value: &str) -> Vec<String> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect()
}

/// Parses and validates `raw`. Returns the config when there is no error.
pub fn validate(raw: &BTreeMap<String, String>, context: &Context<'_>) -> (Option<ConnectorConfig>, Validation) {
    let mut v = Validation::default();
    let runtime = runtime_keys();
    for key in &runtime {
        v.values.insert(key.name.clone(), Vec::new());
    }
    if raw.len() > CONFIG_KEYS_MAX {
        v.error("name", format!("the config has {} keys; at most {CONFIG_KEYS_MAX}", raw.len()));
        return (None, v);
    }
    for (key, value) in raw {
        if key.len() > CONFIG_KEY_BYTES_MAX {
            let shown: String = key.chars().take(40).collect();
            v.error(&format!("{shown}…"), format!("keys are at most {CONFIG_KEY_BYTES_MAX} bytes"));
        } else if value.len() > CONFIG_VALUE_BYTES_MAX {
            v.error(key, format!("values are at most {CONFIG_VALUE_BYTES_MAX} bytes; this one is {}", value.len()));
        }
    }
    let get = |key: &str| raw.get(key).map(|s| s.trim()).filter(|s| !s.is_empty());

    // name
    let name = get("name").unwrap_or_default().to_string();
    if name.is_empty() {
        v.error("name", "Missing required configuration \"name\" which has no default value.");
    } else if let Err(error) = sluice_runtime::registry::validate_name("connector", &name, CONNECTOR_NAME_BYTES_MAX) {
        v.error("name", error.to_string());
    }

    // connector.class
    let class = get("connector.class").unwrap_or_default().to_string();
    if class.is_empty() {
        v.error("connector.class", "Missing required configuration \"connector.class\" which has no default value.");
    } else if context.plugin.is_none() {
        v.error(
            "connector.class",
            format!(
                "Failed to find any class that implements Connector and which name matches {class}; the connector plugins are listed at GET /connector-plugins"
            ),
        );
    }
    let kind = context.plugin.map(|p| p.kind);

    // tasks.max
    let tasks_max = match get("tasks.max").map(str::parse::<i64>) {
        None => 1,
        Some(Ok(n)) if (1..=i64::from(TASKS_MAX_LIMIT)).contains(&n) => n as u32,
        Some(_) => {
            v.error("tasks.max", format!("Invalid value {}: must be an integer in 1..={TASKS_MAX_LIMIT}", raw["tasks.max"]));
            1
        }
    };

    // topics / topics.regex / topic.prefix
    let mut topics = TopicSelection::None;
    match (get("topics"), get("topics.regex"), kind) {
        (Some(_), _, Some(ConnectorType::Source)) => {
            v.error("topics", "topics applies to sink connectors; a source names its output with topic.prefix")
        }
        (_, Some(_), Some(ConnectorType::Source)) => v.error("topics.regex", "topics.regex applies to sink connectors"),
        (Some(_), Some(_), _) => {
            v.error("topics", "Must configure one of topics or topics.regex, not both");
            v.error("topics.regex", "Must configure one of topics or topics.regex, not both");
        }
        (None, None, Some(ConnectorType::Sink)) => {
            v.error("topics", "Must configure one of topics or topics.regex");
            v.error("topics.regex", "Must configure one of topics or topics.regex");
        }
        (Some(list_value), None, _) => {
            let names = list(list_value);
            if names.is_empty() {
                v.error("topics", "Must list at least one topic");
            } else if names.len() > TOPICS_MAX {
                v.error("topics", format!("{} topics; at most {TOPICS_MAX}", names.len()));
            }
            for topic in &names {
                if let Err(error) = check_topic_name(topic) {
                    v.error("topics", error);
                }
            }
            topics = TopicSelection::List(names);
        }
        (None, Some(pattern), _) => {
            if pattern.len() > TOPICS_REGEX_BYTES_MAX {
                v.error("topics.regex", format!("at most {TOPICS_REGEX_BYTES_MAX} bytes"));
            } else {
                match regex::RegexBuilder::new(pattern).size_limit(TOPICS_REGEX_COMPILED_BYTES_MAX).build() {
                    Ok(_) => topics = TopicSelection::Regex(pattern.to_string()),
                    Err(error) => v.error("topics.regex", format!("not a valid regular expression: {error}")),
                }
            }
        }
        (None, None, _) => {}
    }
    let topic_prefix = get("topic.prefix").map(str::to_string);
    if let Some(prefix) = &topic_prefix {
        if kind == Some(ConnectorType::Sink) {
            v.error("topic.prefix", "topic.prefix applies to source connectors");
        } else if let Some(bad) = prefix.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
            v.error("topic.prefix", format!("'{prefix}' contains '{bad}', which cannot be part of a topic name"));
        }
    }

    // transforms
    let mut transforms = Vec::new();
    let aliases = get("transforms").map(list).unwrap_or_default();
    if aliases.len() > TRANSFORMS_MAX {
        v.error("transforms", format!("{} transforms; at most {TRANSFORMS_MAX}", aliases.len()));
    }
    for (i, alias) in aliases.iter().enumerate() {
        if aliases[..i].contains(alias) {
            v.error("transforms", format!("Duplicate alias provided: {alias}"));
            continue;
        }
        let prefix = format!("transforms.{alias}.");
        let type_key = format!("{prefix}type");
        v.values.entry(type_key.clone()).or_default();
        let mut step = TransformStep { alias: alias.clone(), module: String::new(), config: BTreeMap::new(), outputs: Vec::new() };
        match get(&type_key) {
            None => v.error(&type_key, format!("Missing required configuration \"{type_key}\" which has no default value.")),
            Some(module) if (context.is_transform)(module) => step.module = module.to_string(),
            Some(module) => v.error(
                &type_key,
                format!("'{module}' is not a Wasm transform in the module registry (Java SMT classes do not run here; upload a transform with `sluice plugin upload` and name it)"),
            ),
        }
        for (key, value) in raw.range(prefix.clone()..) {
            let Some(sub) = key.strip_prefix(&prefix) else { break };
            match sub {
                "type" => {}
                "predicate" | "negate" => {
                    v.values.entry(key.clone()).or_default().push("predicates are not supported; filter in the transform itself".into())
                }
                "outputs" => {
                    let errors = v.values.entry(key.clone()).or_default();
                    let outputs = list(value);
                    if outputs.len() >= sluice_wasm::OUTPUTS_MAX {
                        errors.push(format!("{} topics; at most {}", outputs.len(), sluice_wasm::OUTPUTS_MAX - 1));
                    }
                    for (i, topic) in outputs.iter().enumerate() {
                        if let Err(error) = check_topic_name(topic) {
                            errors.push(error.into());
                        } else if outputs[..i].contains(topic) {
                            errors.push(format!("'{topic}' is listed twice"));
                        }
                    }
                    step.outputs = outputs;
                }
                _ => {
                    v.values.entry(key.clone()).or_default();
                    step.config.insert(sub.to_string(), value.clone());
                }
            }
        }
        transforms.push(step);
    }

    // errors.*
    let mut errors = ErrorHandling::default();
    match get("errors.tolerance") {
        None | Some("none") => {}
        Some("all") => errors.tolerate_all = true,
        Some(other) => v.error("errors.tolerance", format!("Invalid value {other}: String must be one of: none, all")),
    }
    match get("errors.retry.timeout").map(str::parse::<i64>) {
        None => {}
        Some(Ok(ms)) if ms >= -1 => errors.retry_timeout_ms = ms,
        Some(_) => v.error("errors.retry.timeout", "must be a number of milliseconds, 0 (no retries) or -1 (no time limit)"),
    }
    match get("errors.retry.delay.max.ms").map(str::parse::<u64>) {
        None => {}
        Some(Ok(ms)) if ms <= RetryPolicy::BACKOFF_MS_MAX => errors.retry_delay_max_ms = ms,
        Some(_) => v.error("errors.retry.delay.max.ms", format!("must be 0..={} milliseconds", RetryPolicy::BACKOFF_MS_MAX)),
    }
    if let Some(topic) = get("errors.deadletterqueue.topic.name") {
        if kind == Some(ConnectorType::Source) {
            v.error("errors.deadletterqueue.topic.name", "dead-letter topics apply to sink connectors (as in Kafka Connect)");
        } else if let Err(error) = check_topic_name(topic) {
            v.error("errors.deadletterqueue.topic.name", error);
        } else if let TopicSelection::List(inputs) = &topics
            && inputs.iter().any(|t| t == topic)
        {
            v.error("errors.deadletterqueue.topic.name", "the dead-letter topic cannot also be an input topic");
        } else {
            errors.dead_letter_topic = Some(topic.to_string());
        }
    }
    match get("errors.deadletterqueue.topic.replication.factor") {
        None | Some("1") | Some("-1") => {}
        Some(other) => v.error(
            "errors.deadletterqueue.topic.replication.factor",
            format!("Invalid value {other}: a single-node broker keeps one replica (use 1 or -1)"),
        ),
    }
    match get("errors.deadletterqueue.context.headers.enable").map(parse_bool) {
        None => {}
        Some(Some(enabled)) => errors.context_headers = enabled,
        Some(None) => v.error("errors.deadletterqueue.context.headers.enable", "Expected value to be either true or false"),
    }
    let policy = errors.policy();
    if let Err(error) = policy.retry.validate() {
        v.error("errors.retry.timeout", error.to_string());
    }

    // connections
    let connections = parse_connections(raw, &mut v);

    // plugin keys, and keys nobody knows
    let plugin_keys: &[ConfigKeyDef] = context.plugin.map_or(&[], |p| &p.keys);
    for key in plugin_keys.iter().filter(|k| !k.name.ends_with('*')) {
        v.values.entry(key.name.clone()).or_default();
        if key.required && get(&key.name).is_none() && key.default.is_none() {
            v.error(&key.name, format!("Missing required configuration \"{}\" which has no default value.", key.name));
        }
    }
    let mut plugin_config = BTreeMap::new();
    for (key, value) in raw {
        let runtime_owned = runtime.iter().any(|k| k.covers(key))
            || key.starts_with("transforms.") && v.values.contains_key(key)
            || key.starts_with("connections.") && v.values.contains_key(key);
        if runtime_owned {
            continue;
        }
        if plugin_keys.iter().any(|k| k.covers(key)) {
            v.values.entry(key.clone()).or_default();
            plugin_config.insert(key.clone(), value.clone());
            continue;
        }
        if context.plugin.is_none() {
            // Without a plugin nothing can be said about its keys; connector.class already failed.
            v.values.entry(key.clone()).or_default();
            continue;
        }
        let owner = context.plugin.map_or("the connector", |p| p.name.as_str());
        let hint = if key.starts_with("transforms.") {
            " (transform keys are transforms.<alias>.<key> for an alias listed in `transforms`)".to_string()
        } else if key.starts_with("connections.") {
            " (connection keys are connections.<name>.url|user|password for a name listed in `connections`)".to_string()
        } else {
            String::new()
        };
        v.error(key, format!("Unknown configuration key: neither {owner} nor the connector runtime reads '{key}'{hint}"));
        v.unknown.push(key.clone());
    }

    if v.error_count() > 0 {
        return (None, v);
    }
    let Some(plugin) = context.plugin.cloned() else { return (None, v) };
    let config = ConnectorConfig {
        name,
        class,
        plugin,
        tasks_max,
        topics,
        topic_prefix,
        transforms,
        errors,
        connections,
        plugin_config,
        raw: raw.clone(),
    };
    (Some(config), v)
}

fn parse_connections(raw: &BTreeMap<String, String>, v: &mut Validation) -> BTreeMap<String, ConnectionSpec> {
    let get = |key: &str| raw.get(key).map(|s| s.trim()).filter(|s| !s.is_empty());
    let mut out = BTreeMap::new();
    let jdbc = get("connection.url");
    let debezium = get("database.hostname");
    match (jdbc, debezium) {
        (Some(_), Some(_)) => v.error("database.hostname", "give the default connection as connection.url or as database.*, not both"),
        (Some(url), None) => match ConnectionSpec::parse("default", url, get("connection.user"), get("connection.password")) {
            Ok(spec) => {
                out.insert("default".to_string(), spec);
            }
            Err(error) => v.error("connection.url", error),
        },
        (None, Some(host)) => {
            let port = match get("database.port").map(str::parse::<u16>) {
                None => Some(5432),
                Some(Ok(port)) if port > 0 => Some(port),
                Some(_) => {
                    v.error("database.port", "must be a port number, 1..=65535");
                    None
                }
            };
            let dbname = get("database.dbname");
            if dbname.is_none() {
                v.error("database.dbname", "Missing required configuration \"database.dbname\" (with database.hostname)");
            }
            if let (Some(port), Some(dbname)) = (port, dbname) {
                match ConnectionSpec::postgres("default", host, port, dbname, get("database.user"), get("database.password")) {
                    Ok(spec) => {
                        out.insert("default".to_string(), spec);
                    }
                    Err(error) => v.error("database.hostname", error),
                }
            }
        }
        (None, None) => {
            for key in ["connection.user", "connection.password"] {
                if get(key).is_some() {
                    v.error(key, "given without connection.url");
                }
            }
            for key in ["database.port", "database.user", "database.password", "database.dbname"] {
                if get(key).is_some() {
                    v.error(key, "given without database.hostname");
                }
            }
        }
    }
    let names = get("connections").map(list).unwrap_or_default();
    if names.len() + out.len() > CONNECTIONS_MAX {
        v.error("connections", format!("at most {CONNECTIONS_MAX} connections"));
        return out;
    }
    for name in names {
        if let Err(error) = sluice_runtime::registry::validate_name("connection", &name, 64) {
            v.error("connections", error.to_string());
            continue;
        }
        if out.contains_key(&name) {
            v.error("connections", format!("connection '{name}' is declared twice (`default` comes from connection.url or database.*)"));
            continue;
        }
        let key = |part: &str| format!("connections.{name}.{part}");
        for part in ["url", "user", "password"] {
            v.values.entry(key(part)).or_default();
        }
        let Some(url) = get(&key("url")) else {
            v.error(&key("url"), format!("Missing required configuration \"{}\"", key("url")));
            continue;
        };
        match ConnectionSpec::parse(&name, url, get(&key("user")), get(&key("password"))) {
            Ok(spec) => {
                out.insert(name, spec);
            }
            Err(error) => v.error(&key("url"), error),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::PluginSpec;

    fn sink() -> PluginSpec {
        PluginSpec {
            name: "jdbc-sink".into(),
            class: "io.confluent.connect.jdbc.JdbcSinkConnector".into(),
            kind: ConnectorType::Sink,
            version: "1".into(),
            keys: vec![ConfigKeyDef::new("insert.mode", ConfigType::String, "Writes", "insert, upsert or update")],
        }
    }

    fn config(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn check(raw: &BTreeMap<String, String>, plugin: Option<&PluginSpec>) -> (Option<ConnectorConfig>, Validation) {
        let is_transform = |m: &str| m == "pii-mask";
        validate(raw, &Context { plugin, is_transform: &is_transform })
    }

    #[test]
    fn a_connect_sink_config_parses_and_maps_its_error_keys_onto_the_policy() {
        let plugin = sink();
        let raw = config(&[
            ("name", "orders-out"),
            ("connector.class", "io.confluent.connect.jdbc.JdbcSinkConnector"),
            ("tasks.max", "3"),
            ("topics", "orders, refunds"),
            ("insert.mode", "upsert"),
            ("transforms", "mask"),
            ("transforms.mask.type", "pii-mask"),
            ("transforms.mask.fields", "email"),
            ("transforms.mask.outputs", "orders-eu, orders-us"),
            ("errors.tolerance", "all"),
            ("errors.retry.timeout", "30000"),
            ("errors.retry.delay.max.ms", "5000"),
            ("errors.deadletterqueue.topic.name", "orders-dlq"),
            ("errors.deadletterqueue.context.headers.enable", "true"),
            ("connection.url", "jdbc:postgresql://127.0.0.1:5432/shop"),
            ("connection.user", "app"),
            ("connection.password", "s3cret"),
        ]);
        let (parsed, validation) = check(&raw, Some(&plugin));
        assert_eq!(validation.error_count(), 0, "{:?}", validation.messages());
        let parsed = parsed.unwrap();
        assert_eq!(parsed.tasks_max, 3);
        assert_eq!(parsed.topics, TopicSelection::List(vec!["orders".into(), "refunds".into()]));
        assert_eq!(parsed.transforms[0].module, "pii-mask");
        assert_eq!(parsed.transforms[0].config.get("fields").map(String::as_str), Some("email"));
        assert_eq!(parsed.transforms[0].outputs, ["orders-eu", "orders-us"]);
        assert!(!parsed.transforms[0].config.contains_key("outputs"), "the runtime's key, not the transform's");
        assert_eq!(parsed.plugin_config.keys().collect::<Vec<_>>(), vec!["insert.mode"]);
        assert!(parsed.connections.contains_key("default"));
        let policy = parsed.errors.policy();
        assert_eq!(policy.on_failure, OnFailure::DeadLetter { topic: "orders-dlq".into(), context_headers: true });
        assert_eq!(policy.retry.timeout_ms, Some(30_000));
        assert_eq!((policy.retry.backoff_ms, policy.retry.backoff_max_ms), (300, 5_000));
    }

    #[test]
    fn tolerance_and_retry_keys_map_as_the_readme_says() {
        let none = ErrorHandling::default().policy();
        assert_eq!(none, ErrorPolicy { retry: RetryPolicy::NONE, on_failure: OnFailure::Stop });
        let skip = ErrorHandling { tolerate_all: true, retry_timeout_ms: -1, ..Default::default() }.policy();
        assert_eq!(skip.on_failure, OnFailure::Skip);
        assert_eq!((skip.retry.timeout_ms, skip.retry.max_attempts), (None, RetryPolicy::ATTEMPTS_MAX));
    }

    #[test]
    fn unknown_keys_are_refused_with_a_message_never_ignored() {
        let plugin = sink();
        let raw = config(&[
            ("name", "x"),
            ("connector.class", "jdbc-sink"),
            ("topics", "t"),
            ("insert.mdoe", "upsert"),
            ("transforms.other.type", "pii-mask"),
            ("errors.log.enable", "true"),
        ]);
        let (parsed, validation) = check(&raw, Some(&plugin));
        assert!(parsed.is_none());
        assert_eq!(validation.unknown, vec!["errors.log.enable", "insert.mdoe", "transforms.other.type"]);
        assert!(validation.values["insert.mdoe"][0].contains("neither jdbc-sink nor the connector runtime reads"));
    }

    #[test]
    fn bad_values_are_reported_key_by_key() {
        let plugin = sink();
        let raw = config(&[
            ("name", "bad/name"),
            ("connector.class", "jdbc-sink"),
            ("tasks.max", "0"),
            ("topics", "a"),
            ("topics.regex", "a.*"),
            ("topic.prefix", "p-"),
            ("errors.tolerance", "some"),
            ("errors.deadletterqueue.topic.replication.factor", "3"),
            ("transforms", "m,n"),
            ("transforms.m.type", "org.apache.kafka.connect.transforms.RegexRouter"),
            ("transforms.n.type", "pii-mask"),
            ("transforms.n.outputs", "ok,bad topic,ok"),
            ("connection.url", "oracle://db"),
        ]);
        let (_, validation) = check(&raw, Some(&plugin));
        for key in [
            "name",
            "tasks.max",
            "topics",
            "topics.regex",
            "topic.prefix",
            "errors.tolerance",
            "errors.deadletterqueue.topic.replication.factor",
            "transforms.m.type",
            "transforms.n.outputs",
            "connection.url",
        ] {
            assert!(!validation.values[key].is_empty(), "{key} should have an error: {:?}", validation.messages());
        }
        assert_eq!(validation.values["transforms.n.outputs"].len(), 2, "a bad name and a duplicate: {:?}", validation.messages());
        let (_, missing) = check(&config(&[("name", "x"), ("connector.class", "nope")]), None);
        assert!(missing.values["connector.class"][0].contains("Failed to find any class"));
    }

    #[test]
    fn secrets_are_masked_and_a_masked_value_put_back_keeps_the_stored_one() {
        assert_eq!(masked("connection.password", "pw"), MASK);
        assert_eq!(masked("connections.dw.password", "pw"), MASK);
        assert_eq!(masked("connection.url", "postgres://u:pw@h:5432/db"), format!("postgres://u:{MASK}@h:5432/db"));
        assert_eq!(
            masked("connection.url", "jdbc:mysql://h/db?user=u&password=pw&ssl=1"),
            format!("jdbc:mysql://h/db?user=u&password={MASK}&ssl=1")
        );
        assert_eq!(masked("topics", "a,b"), "a,b");
        let old = config(&[("connection.password", "pw"), ("tasks.max", "1")]);
        let mut new = config(&[("connection.password", MASK), ("tasks.max", "2")]);
        unmask(&mut new, &old);
        assert_eq!(new["connection.password"], "pw");
        let mut changed = config(&[("connection.password", "new")]);
        unmask(&mut changed, &old);
        assert_eq!(changed["connection.password"], "new");
    }
}
