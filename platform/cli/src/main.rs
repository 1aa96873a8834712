//! `sluice`: the one binary. `sluice server` runs a broker; `sluice bench` drives one with load.
//! Further commands (topics, groups, produce/consume, transforms) join as their issues land.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sluice_broker::{BrokerConfig, ServerOptions};

mod bench;

#[derive(Parser)]
#[command(name = "sluice", version, about = "Sluice: a Kafka-compatible streaming platform with WebAssembly plugins")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a broker.
    ///
    /// Example: sluice server --data-dir ./sluice-data --set num.partitions=3 --set log.flush.interval.messages=1
    Server(ServerArgs),
    /// Load-test a Kafka-compatible broker (produce or consume) and report throughput and latency.
    ///
    /// Example: sluice bench produce --topic bench --record-size 1024 --records 1000000 --acks 1
    Bench(bench::BenchArgs),
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
    /// A TOML file of broker settings by Kafka's names, e.g. `"log.retention.ms" = 3600000`.
    #[arg(long)]
    config: Option<PathBuf>,
    /// A broker setting, overriding the file: --set name=value (repeatable).
    #[arg(long = "set", value_name = "NAME=VALUE")]
    settings: Vec<String>,
    /// List every broker setting with its default and meaning, then exit.
    #[arg(long)]
    help_config: bool,
}

/// Flattens a TOML document into (dotted name, value) pairs: `log.retention.ms = 5` in TOML is a
/// nested table, and `"log.retention.ms" = 5` a quoted key; both mean the same setting.
fn flatten_toml(prefix: &str, table: &toml::Table, out: &mut Vec<(String, String)>) -> Result<(), String> {
    for (key, value) in table {
        let name = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
        match value {
            toml::Value::Table(inner) => flatten_toml(&name, inner, out)?,
            toml::Value::String(s) => out.push((name, s.clone())),
            toml::Value::Integer(i) => out.push((name, i.to_string())),
            toml::Value::Boolean(b) => out.push((name, b.to_string())),
            toml::Value::Float(f) => out.push((name, f.to_string())),
            toml::Value::Array(items) => {
                let parts: Result<Vec<String>, String> = items
                    .iter()
                    .map(|v| match v {
                        toml::Value::String(s) => Ok(s.clone()),
                        other => Ok(other.to_string()),
                    })
                    .collect();
                out.push((name, parts?.join(",")));
            }
            toml::Value::Datetime(_) => return Err(format!("{name}: dates are not a valid setting value")),
        }
    }
    Ok(())
}

fn load_config(args: &ServerArgs) -> Result<BrokerConfig, String> {
    let mut pairs = Vec::new();
    if let Some(path) = &args.config {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
        let table: toml::Table = text.parse().map_err(|e| format!("config file {} is not valid TOML: {e}", path.display()))?;
        flatten_toml("", &table, &mut pairs).map_err(|e| format!("config file {}: {e}", path.display()))?;
    }
    for setting in &args.settings {
        let (name, value) =
            setting.split_once('=').ok_or_else(|| format!("--set {setting}: expected NAME=VALUE, e.g. --set num.partitions=3"))?;
        pairs.push((name.trim().to_string(), value.trim().to_string()));
    }
    BrokerConfig::from_settings(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))).map_err(|e| format!("invalid setting {e}"))
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
    let options = ServerOptions { data_dir: args.data_dir, listen: args.listen, admin_listen: args.admin_listen, config };
    match runtime.block_on(sluice_broker::run(options, shutdown_signal(), |_| {})) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "broker failed");
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Server(args) => run_server(args),
        Command::Bench(args) => {
            let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(r) => r,
                Err(error) => {
                    eprintln!("error: cannot start the async runtime: {error}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(bench::run(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("error: {error:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
