//! `sluice`: the one binary. `sluice server` runs a broker; every other command is a Kafka-protocol
//! client that works against any Kafka-compatible cluster: `topic`, `produce`, `consume`, `group`,
//! `cluster`, `verify`, `transform` and `bench`, plus `completions`; `connector` and `plugin` speak to
//! a broker's admin API (Kafka Connect's REST API and the module registry).
//!
//! Layout: the Kafka protocol client is the `sluice-client` crate (framing, version negotiation,
//! metadata, record batches, group membership); one module per command group turns arguments into
//! client calls and prints; `conn` resolves where to connect (flags, environment, profiles) and opens
//! the client; `http` is the bounded admin-API client; `output` prints tables and JSON; `exit` maps
//! failures to exit codes; `sdk_bundle` is the guest SDK packed into the binary for `transform init`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand};
use sluice_broker::{BrokerConfig, ServerOptions};

mod bench;
mod cluster_info;
mod conn;
mod connector;
mod consume;
mod exit;
mod group;
mod http;
mod mirror;
mod output;
mod produce;
mod reassign;
mod sdk_bundle;
mod topic;
mod transform;
mod verify;

const MAIN_HELP: &str = "\
Connection: --brokers / SLUICE_BROKERS, --admin-url / SLUICE_ADMIN_URL, --profile / SLUICE_PROFILE
(profiles in ~/.config/sluice/profiles.toml). A flag beats the environment, which beats the profile,
which beats the defaults 127.0.0.1:9092 and http://127.0.0.1:9644.

Exit codes: 0 ok, 1 the cluster refused or a check failed, 2 usage error, 3 cluster unreachable.

Examples:
  sluice topic create orders -p 6
  printf 'k1:hello\\nk2:world\\n' | sluice produce orders -K:
  sluice consume orders --from-beginning -e --format '%k => %v (p%p @%o)'
  sluice group describe billing";

#[derive(Parser)]
#[command(name = "sluice", version, about = "Sluice: a Kafka-compatible streaming platform with WebAssembly plugins", after_help = MAIN_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Connection and output flags shared by every client command.
#[derive(Debug, Clone, Default, Args)]
pub struct Common {
    #[command(flatten)]
    pub conn: conn::ConnArgs,

    /// Print stable, machine-readable JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Run a broker.
    #[command(after_help = "Example:\n  sluice server --data-dir ./sluice-data --set num.partitions=3 --set log.flush.interval.messages=1")]
    Server(ServerArgs),
    /// Create, list, describe, alter, grow and delete topics; delete records.
    #[command(after_help = "Examples:\n  sluice topic create orders -p 6\n  sluice topic describe orders")]
    Topic(topic::TopicArgs),
    /// Write lines from stdin or a file as records.
    #[command(after_help = "Examples:\n  printf 'user-1:hello\\n' | sluice produce greetings -K: -H source=cli\n  \
                            sluice produce orders --file orders.txt --compression zstd --acks all")]
    Produce(produce::ProduceArgs),
    /// Print records, optionally as a member of a consumer group.
    #[command(after_help = "Examples:\n  sluice consume orders --from-beginning -e\n  \
                            sluice consume orders --group billing --format json\n  \
                            sluice consume orders --from-time 2024-05-01T00:00:00Z -n 10 --format '%p %o %k %v %h'")]
    Consume(consume::ConsumeArgs),
    /// List, describe, reset and delete consumer groups.
    #[command(after_help = "Examples:\n  sluice group list\n  sluice group reset-offsets billing --topic orders --to-earliest --dry-run")]
    Group(group::GroupArgs),
    /// Cluster-wide information.
    #[command(after_help = "Example:\n  sluice cluster info")]
    Cluster(cluster_info::ClusterArgs),
    /// Verifiable producer and consumer: end-to-end checks with sequence numbers.
    #[command(
        after_help = "Example:\n  sluice verify produce --topic check --count 10000 && sluice verify consume --topic check --expect 10000"
    )]
    Verify(verify::VerifyArgs),
    /// WebAssembly transforms: scaffold, build, deploy, inspect, pause, resume, delete.
    #[command(after_help = "Examples:\n  sluice transform init big-orders\n  sluice transform build ./big-orders\n  \
                            sluice transform deploy big_orders.wasm --name big-orders --input-topic orders --output-topic big-orders\n  \
                            sluice transform status big-orders")]
    Transform(transform::TransformArgs),
    /// Connectors (Kafka Connect's REST API on the admin port): create, list, status, config, pause,
    /// resume, stop, restart, delete, offsets.
    #[command(
        after_help = "Examples:\n  sluice connector create orders-src --file orders-source.json\n  sluice connector status orders-src\n  \
                            sluice connector stop orders-src && sluice connector offsets orders-src --reset"
    )]
    Connector(connector::ConnectorArgs),
    /// Mirrors: copy topics from another Kafka-protocol cluster into this broker, offset for offset;
    /// create, list, status, pause, resume, promote, delete.
    #[command(after_help = "Examples:\n  sluice mirror create dr --source-bootstrap 10.0.0.5:9092 --topics 'orders|payments-.*'\n  \
                            sluice mirror status dr\n  sluice mirror promote dr --topic orders")]
    Mirror(mirror::MirrorArgs),
    /// The broker's module registry: list, upload and delete Wasm components (transforms, connectors, mirror policies).
    #[command(
        after_help = "Examples:\n  sluice plugin list\n  sluice plugin upload pii_mask.wasm --name pii-mask\n  sluice plugin delete pii-mask"
    )]
    Plugin(connector::PluginArgs),
    /// Load-test a Kafka-compatible broker (produce or consume) and report throughput and latency.
    #[command(after_help = "Example:\n  sluice bench produce --topic bench --record-size 1024 --records 1000000 --acks 1")]
    Bench(bench::BenchArgs),
    /// Print a shell completion script.
    #[command(after_help = "Examples:\n  sluice completions bash > /etc/bash_completion.d/sluice\n  \
                            sluice completions zsh > \"${fpath[1]}/_sluice\"\n  \
                            sluice completions fish > ~/.config/fish/completions/sluice.fish")]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(clap::Args)]
struct ServerArgs {
    /// Directory holding the logs, topic definitions and committed offsets.
    #[arg(long, default_value = "./sluice-data", env = "SLUICE_DATA_DIR")]
    data_dir: PathBuf,
    /// Address for Kafka clients.
    #[arg(long, default_value = "127.0.0.1:9092", env = "SLUICE_LISTEN")]
    listen: String,
    /// Address for the HTTP admin API and /metrics.
    #[arg(long, default_value = "127.0.0.1:9644", env = "SLUICE_ADMIN_LISTEN")]
    admin_listen: String,
    /// This node's id (Kafka's node.id; the same as --set node.id=N).
    #[arg(long, env = "SLUICE_NODE_ID")]
    node_id: Option<u32>,
    /// The controller quorum, ID@HOST:PORT,... (Kafka's controller.quorum.voters): every listed node
    /// is a voter and listens for its peers on its own entry. Unset: this node is a one-voter quorum.
    #[arg(long, value_name = "ID@HOST:PORT,...", env = "SLUICE_CONTROLLER_VOTERS")]
    controller_voters: Option<String>,
    /// A TOML file of broker settings by Kafka's names, e.g. `"log.retention.ms" = 3600000`.
    #[arg(long)]
    config: Option<PathBuf>,
    /// A broker setting, overriding the file: --set name=value (repeatable).
    #[arg(long = "set", value_name = "NAME=VALUE")]
    settings: Vec<String>,
    /// List every broker setting with its default and meaning, then exit.
    #[arg(long)]
    help_config: bool,
    /// Log line format on stderr: `text` for people (coloured only on a terminal), `json` (one object per
    /// line with timestamp, level, message, target and fields) for log shippers.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "SLUICE_LOG_FORMAT")]
    log_format: LogFormat,
}

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Installs the `tracing` subscriber: `RUST_LOG` if set, else `default_filter`, to stderr. Colour codes
/// only when stderr is a terminal and `NO_COLOR` is unset: in a file or a pipe they are noise that log
/// tools show as `\x1b[2m`.
fn init_logging(default_filter: &str, format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let ansi = std::io::stderr().is_terminal() && !no_color;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(ansi).init(),
        // Message and fields at the top level of each object, where log shippers look for them.
        LogFormat::Json => builder.json().flatten_event(true).with_ansi(false).init(),
    }
}

/// Flattens a TOML document into (dotted name, value) pairs: `log.retention.ms = 5` in TOML is a
/// nested table, and `"log.retention.ms" = 5` a quoted key; both mean the same setting.
fn flatten_toml(prefix: &str, table: &toml::Table, out: &mut Vec<(String, String)>) -> anyhow::Result<()> {
    for (key, value) in table {
        let name = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
        match value {
            toml::Value::Table(inner) => flatten_toml(&name, inner, out)?,
            toml::Value::String(s) => out.push((name, s.clone())),
            toml::Value::Integer(i) => out.push((name, i.to_string())),
            toml::Value::Boolean(b) => out.push((name, b.to_string())),
            toml::Value::Float(f) => out.push((name, f.to_string())),
            toml::Value::Array(items) => {
                let parts: Vec<String> = items
                    .iter()
                    .map(|v| match v {
                        toml::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                    .collect();
                out.push((name, parts.join(",")));
            }
            toml::Value::Datetime(_) => anyhow::bail!("{name}: dates are not a valid setting value"),
        }
    }
    Ok(())
}

fn load_config(args: &ServerArgs) -> anyhow::Result<BrokerConfig> {
    use anyhow::anyhow;
    let mut pairs = Vec::new();
    if let Some(path) = &args.config {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow!("cannot read config file {}: {e}", path.display()))?;
        let table: toml::Table = text.parse().map_err(|e| anyhow!("config file {} is not valid TOML: {e}", path.display()))?;
        flatten_toml("", &table, &mut pairs).map_err(|e| anyhow!("config file {}: {e}", path.display()))?;
    }
    for setting in &args.settings {
        let (name, value) =
            setting.split_once('=').ok_or_else(|| anyhow!("--set {setting}: expected NAME=VALUE, e.g. --set num.partitions=3"))?;
        pairs.push((name.trim().to_string(), value.trim().to_string()));
    }
    // The dedicated flags win over the file and --set.
    if let Some(id) = args.node_id {
        pairs.push(("node.id".to_string(), id.to_string()));
    }
    if let Some(voters) = &args.controller_voters {
        pairs.push(("controller.quorum.voters".to_string(), voters.clone()));
    }
    BrokerConfig::from_settings(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))).map_err(|e| anyhow!("invalid setting {e}"))
}

fn print_settings() {
    println!("{:<36} {:<22} MEANING", "SETTING", "DEFAULT");
    for spec in sluice_broker::config::BROKER_SETTINGS {
        println!("{:<36} {:<22} {}", spec.name, spec.default, spec.doc);
    }
    println!("\nTopic settings (per topic; the broker setting in brackets is the default):");
    for (topic, broker) in sluice_broker::config::TOPIC_SETTINGS {
        println!("  {topic:<34} [{broker}]");
    }
    for (topic, default) in sluice_broker::config::TOPIC_SETTINGS_ACCEPTED {
        println!("  {topic:<34} (default {default})");
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(error) => {
            tracing::error!(%error, "cannot install SIGTERM handler");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("received SIGTERM"),
        _ = tokio::signal::ctrl_c() => tracing::info!("received SIGINT"),
    }
}

fn run_server(args: ServerArgs) -> ExitCode {
    if args.help_config {
        print_settings();
        return ExitCode::SUCCESS;
    }
    let config = match load_config(&args) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("sluice").build() {
        Ok(r) => r,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let options = ServerOptions {
        data_dir: args.data_dir,
        listen: args.listen,
        admin_listen: args.admin_listen,
        config,
        extensions: {
            // One Wasm engine and module registry, shared by every runtime; it starts first.
            let plugins = sluice_runtime::Plugins::with_builtins(builtin::BUILTIN_PLUGINS);
            vec![
                std::sync::Arc::new(plugins.clone()),
                std::sync::Arc::new(sluice_transforms::TransformsExtension::new(plugins.clone())),
                std::sync::Arc::new(sluice_connect::ConnectExtension::new(plugins.clone())),
                std::sync::Arc::new(sluice_mirror::MirrorExtension::new(plugins)),
            ]
        },
    };
    match runtime.block_on(sluice_broker::run(options, shutdown_signal(), |_| {})) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "broker failed");
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Runs one client command on a fresh runtime and maps its outcome to an exit code.
fn run_client<F>(future: F) -> ExitCode
where
    F: std::future::Future<Output = anyhow::Result<()>>,
{
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(r) => r,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let code = exit::report(runtime.block_on(future));
    // Reader threads blocked on stdin must not keep the process alive.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    code
}

/// The first-party plugins (`plugins/`), built for wasm32-wasip2 by build.rs and carried in the binary.
mod builtin {
    include!(concat!(env!("OUT_DIR"), "/builtin_plugins.rs"));
}

/// The process allocator, for the server and the client commands alike. Measured with
/// tests/test_hostile_clients.py (12 MB requests at ~10/s beside unread Fetch replies): with glibc's
/// malloc the broker's peak RSS reached 324 MiB and stayed at 261 MiB after the load, although what
/// it held live was bounded by the request and reply budgets.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Client commands log only warnings unless RUST_LOG asks for more: their stderr is for people.
    match &cli.command {
        // openraft reports every failed RPC to a down controller peer at ERROR, twice a second; the
        // controller logs the quorum's changes itself (RUST_LOG=openraft=info brings them back).
        Command::Server(args) => init_logging("info,openraft=off", args.log_format),
        _ => init_logging("warn", LogFormat::Text),
    }
    match cli.command {
        Command::Server(args) => run_server(args),
        Command::Bench(args) => run_client(bench::run(args)),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "sluice", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::Topic(args) => run_client(async move {
            let target = args.common.conn.resolve()?;
            topic::run(args.cmd, &target.brokers, args.common.json).await
        }),
        Command::Produce(args) => run_client(async move {
            let target = args.common.conn.resolve()?;
            let json = args.common.json;
            produce::run(args, &target.brokers, json).await
        }),
        Command::Consume(args) => run_client(async move {
            let target = args.common.conn.resolve()?;
            let json = args.common.json;
            consume::run(args, &target.brokers, json).await
        }),
        Command::Group(args) => run_client(async move {
            let target = args.common.conn.resolve()?;
            group::run(args.cmd, &target.brokers, args.common.json).await
        }),
        Command::Cluster(args) => run_client(async move {
            let target = args.common.conn.resolve()?;
            cluster_info::run(args.cmd, &target.brokers, &target.admin_url, args.common.json).await
        }),
        Command::Transform(args) => run_client(async move {
            let target = args.common.conn.resolve()?;
            transform::run(args.cmd, &target.admin_url, args.common.json).await
        }),
        Command::Connector(args) => run_client(async move {
            let target = args.common.conn.resolve()?;
            connector::run(args.cmd, &target.admin_url, args.common.json).await
        }),
        Command::Mirror(args) => run_client(async move {
            let target = args.common.conn.resolve()?;
            mirror::run(args.cmd, &target.admin_url, args.common.json).await
        }),
        Command::Plugin(args) => run_client(async move {
            let target = args.common.conn.resolve()?;
            connector::run_plugin(args.cmd, &target.admin_url, args.common.json).await
        }),
        Command::Verify(args) => run_client(async move {
            let target = args.common.conn.resolve()?;
            verify::run(args.cmd, &target.brokers, args.common.json).await
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_parses_and_has_an_example() {
        Cli::command().debug_assert();
        fn check(cmd: &clap::Command, path: &str) {
            for sub in cmd.get_subcommands() {
                let path = format!("{path} {}", sub.get_name());
                if sub.get_name() != "help" {
                    let help = sub.get_after_help().map(|h| h.to_string()).unwrap_or_default();
                    assert!(help.contains("sluice"), "`{path}` has no example in its help");
                }
                check(sub, &path);
            }
        }
        check(&Cli::command(), "sluice");
        assert!(Cli::try_parse_from(["sluice", "consume", "t", "--offset", "5", "--group", "g"]).is_err());
        assert!(Cli::try_parse_from(["sluice", "group", "reset-offsets", "g", "--topic", "t"]).is_err());
        assert!(Cli::try_parse_from(["sluice", "topic", "list", "--brokers", "a:1", "--json"]).is_ok());
        assert!(Cli::try_parse_from(["sluice", "topic", "--brokers", "a:1", "describe", "x"]).is_ok());
    }
}
