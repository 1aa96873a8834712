//! `sluice connector` and `sluice plugin`: connectors through the broker's Kafka Connect REST API
//! (`/connectors`, the same API Connect's own tooling uses) and modules through the plugin registry
//! (`/v1/plugins`). Tables for people, `--json` for scripts; an error the API returns exits 1 with
//! its message.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use clap::{Args, Subcommand};
use serde_json::{Map, Value, json};

use crate::exit::usage;
use crate::http;
use crate::output::{key_value, print_json, print_table, table};

/// Stopping or restarting waits for tasks to finish what they were doing.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Uploading compiles the module.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(120);
/// Largest module or config file the CLI reads.
const MODULE_BYTES_MAX: u64 = 64 * 1024 * 1024;
const CONFIG_FILE_BYTES_MAX: u64 = 1024 * 1024;

#[derive(Debug, Args)]
pub struct ConnectorArgs {
    #[command(flatten)]
    pub common: crate::Common,
    #[command(subcommand)]
    pub cmd: ConnectorCmd,
}

#[derive(Debug, Subcommand)]
pub enum ConnectorCmd {
    /// Create a connector from a Kafka Connect config (a JSON file and/or --config key=value).
    #[command(after_help = "Examples:\n  sluice connector create orders-src --file orders-source.json\n  \
                            sluice connector create orders-src --config connector.class=jdbc-source \\\n      \
                            --config connection.url=jdbc:postgresql://127.0.0.1:5432/shop --config mode=incrementing --stopped")]
    Create {
        name: String,
        /// A JSON file: Connect's `{"name": .., "config": {..}}` or just the config map.
        #[arg(long)]
        file: Option<PathBuf>,
        /// A config key (repeatable; wins over the file).
        #[arg(long = "config", short = 'c', value_parser = key_value)]
        config: Vec<(String, String)>,
        /// Create it paused (its tasks start but do not work until resumed).
        #[arg(long, conflicts_with = "stopped")]
        paused: bool,
        /// Create it stopped (no tasks; positions can be set first with `connector offsets --set`).
        #[arg(long)]
        stopped: bool,
    },
    /// List connectors with their type, state and tasks.
    #[command(after_help = "Example:\n  sluice connector list")]
    List,
    /// A connector's state and its tasks' (with the trace of what FAILED).
    #[command(after_help = "Example:\n  sluice connector status orders-src")]
    Status { name: String },
    /// Show a connector's config (secrets masked), or change keys of it (--set, --unset).
    #[command(
        after_help = "Examples:\n  sluice connector config orders-src\n  sluice connector config orders-src --set tasks.max=2 --unset poll.interval.ms"
    )]
    Config {
        name: String,
        /// key=value to set (repeatable); the connector's tasks are replaced with the new config.
        #[arg(long = "set", value_parser = key_value)]
        set: Vec<(String, String)>,
        /// A key to remove (repeatable).
        #[arg(long)]
        unset: Vec<String>,
    },
    /// Pause a connector: its tasks stop working; nothing is lost.
    #[command(after_help = "Example:\n  sluice connector pause orders-src")]
    Pause { name: String },
    /// Resume a paused or stopped connector.
    #[command(after_help = "Example:\n  sluice connector resume orders-src")]
    Resume { name: String },
    /// Stop a connector: its tasks shut down; config and positions stay (and positions may be changed).
    #[command(after_help = "Example:\n  sluice connector stop orders-src")]
    Stop { name: String },
    /// Restart a connector (and with --include-tasks its tasks; --only-failed: only what FAILED).
    #[command(
        after_help = "Examples:\n  sluice connector restart orders-src --include-tasks --only-failed\n  sluice connector restart orders-src"
    )]
    Restart {
        name: String,
        #[arg(long)]
        include_tasks: bool,
        #[arg(long)]
        only_failed: bool,
    },
    /// Delete a connector (its positions are kept: a connector created again under the name resumes).
    #[command(after_help = "Example:\n  sluice connector delete orders-src")]
    Delete { name: String },
    /// Show a connector's positions, or (stopped connectors only) set or reset them.
    #[command(after_help = "Examples:\n  sluice connector offsets orders-src\n  \
                            sluice connector offsets orders-src --set '{\"offsets\": [{\"partition\": {\"table\": \"orders\"}, \"offset\": {\"incrementing\": 0}}]}'\n  \
                            sluice connector offsets orders-src --reset")]
    Offsets {
        name: String,
        /// KIP-875 JSON: {"offsets": [{"partition": {..}, "offset": {..}}]} (an offset of null removes it).
        #[arg(long, conflicts_with = "reset")]
        set: Option<String>,
        /// Forget every position.
        #[arg(long)]
        reset: bool,
    },
}

#[derive(Debug, Args)]
pub struct PluginArgs {
    #[command(flatten)]
    pub common: crate::Common,
    #[command(subcommand)]
    pub cmd: PluginCmd,
}

#[derive(Debug, Subcommand)]
pub enum PluginCmd {
    /// List the modules in the broker's registry (transforms and connectors) and the connector plugins.
    #[command(after_help = "Example:\n  sluice plugin list")]
    List,
    /// Upload a .wasm component to the registry under a name (replacing what the name held).
    #[command(after_help = "Example:\n  sluice plugin upload target/wasm32-wasip2/release/pii_mask.wasm --name pii-mask")]
    Upload {
        file: PathBuf,
        #[arg(long)]
        name: String,
    },
    /// Forget a module's name. Refused while a connector or mirror loads the module by that name;
    /// transforms keep running (they are pinned to the module's digest).
    #[command(after_help = "Example:\n  sluice plugin delete pii-mask")]
    Delete { name: String },
}

/// Uploads a `.wasm` file to the broker's module registry under `name`; the registry's answer and
/// the file's size.
pub(crate) async fn upload_module(admin_url: &str, file: &std::path::Path, name: &str) -> Result<(Value, u64)> {
    let size = std::fs::metadata(file).map_err(|e| crate::exit::UsageError(format!("cannot read {}: {e}", file.display())))?.len();
    if size > MODULE_BYTES_MAX {
        return usage(format!("{} is {size} bytes; modules may be at most {MODULE_BYTES_MAX}", file.display()));
    }
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let body = json!({"name": name, "module_base64": base64::engine::general_purpose::STANDARD.encode(&bytes)});
    Ok((call(admin_url, "POST", "/v1/plugins", Some(body), UPLOAD_TIMEOUT).await?, size))
}

/// One admin API call; a non-2xx answer becomes an error with the API's message (Connect's
/// `message` or the registry's `error`).
pub(crate) async fn call(admin_url: &str, method: &str, path: &str, body: Option<Value>, timeout: Duration) -> Result<Value> {
    let bytes = body.map(|b| serde_json::to_vec(&b)).transpose()?;
    let (status, text) = http::request(admin_url, method, path, bytes.as_deref(), timeout).await?;
    let parsed: Value =
        if text.trim().is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text.clone())) };
    if !(200..300).contains(&status) {
        let message = parsed
            .get("message")
            .or_else(|| parsed.get("error"))
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| text.trim().to_string());
        bail!("{message} (HTTP {status} from {admin_url})");
    }
    Ok(parsed)
}

fn path_segment(name: &str) -> Result<&str> {
    if name.is_empty() || name.contains(['/', '?', '#', '%', ' ']) {
        return usage(format!("'{name}' is not a connector name (letters, digits, '.', '_', '-')"));
    }
    Ok(name)
}

fn read_config_file(path: &PathBuf) -> Result<Map<String, Value>> {
    let size = std::fs::metadata(path).map_err(|e| crate::exit::UsageError(format!("cannot read {}: {e}", path.display())))?.len();
    if size > CONFIG_FILE_BYTES_MAX {
        return usage(format!("{} is {size} bytes; a connector config file is at most {CONFIG_FILE_BYTES_MAX}", path.display()));
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let value: Value = serde_json::from_str(&text).map_err(|e| crate::exit::UsageError(format!("{} is not JSON: {e}", path.display())))?;
    match value {
        Value::Object(mut map) if map.get("config").is_some_and(Value::is_object) => match map.remove("config") {
            Some(Value::Object(config)) => Ok(config),
            _ => usage("\"config\" must be an object"),
        },
        Value::Object(map) => Ok(map),
        _ => usage(format!("{} must hold a JSON object", path.display())),
    }
}

pub(crate) async fn run(cmd: ConnectorCmd, admin_url: &str, as_json: bool) -> Result<()> {
    match cmd {
        ConnectorCmd::Create { name, file, config, paused, stopped } => {
            let mut map = match &file {
                Some(path) => read_config_file(path)?,
                None => Map::new(),
            };
            for (key, value) in config {
                map.insert(key, Value::String(value));
            }
            if map.is_empty() {
                return usage("give the connector's config with --file and/or --config key=value");
            }
            let state = if stopped {
                "STOPPED"
            } else if paused {
                "PAUSED"
            } else {
                "RUNNING"
            };
            let body = json!({"name": name, "config": map, "initial_state": state});
            let info = call(admin_url, "POST", "/connectors", Some(body), REQUEST_TIMEOUT).await?;
            if as_json {
                print_json(&info);
            } else {
                let tasks = info["tasks"].as_array().map_or(0, Vec::len);
                println!("Created {} connector {name} ({state}, {tasks} task(s)).", info["type"].as_str().unwrap_or("?"));
                println!("Check it with: sluice connector status {name}");
            }
            Ok(())
        }
        ConnectorCmd::List => list(admin_url, as_json).await,
        ConnectorCmd::Status { name } => {
            let status = call(admin_url, "GET", &format!("/connectors/{}/status", path_segment(&name)?), None, REQUEST_TIMEOUT).await?;
            print_status(&status, as_json);
            Ok(())
        }
        ConnectorCmd::Config { name, set, unset } => {
            let path = format!("/connectors/{}/config", path_segment(&name)?);
            let mut config = call(admin_url, "GET", &path, None, REQUEST_TIMEOUT).await?;
            if !set.is_empty() || !unset.is_empty() {
                let Some(map) = config.as_object_mut() else { bail!("the broker sent a config that is not an object") };
                for (key, value) in set {
                    map.insert(key, Value::String(value));
                }
                for key in unset {
                    if map.remove(&key).is_none() {
                        return usage(format!("connector {name} has no key '{key}'"));
                    }
                }
                let info = call(admin_url, "PUT", &path, Some(config), REQUEST_TIMEOUT).await?;
                config = info["config"].clone();
                if !as_json {
                    println!("Reconfigured connector {name}; its tasks were replaced.");
                }
            }
            if as_json {
                print_json(&config);
            } else {
                let mut out = table(["KEY", "VALUE"]);
                for (key, value) in config.as_object().into_iter().flatten() {
                    out.add_row(vec![key.clone(), value.as_str().unwrap_or_default().to_string()]);
                }
                print_table(&out);
            }
            Ok(())
        }
        ConnectorCmd::Pause { name } => verb(admin_url, "PUT", &name, "pause", "Paused", as_json).await,
        ConnectorCmd::Resume { name } => verb(admin_url, "PUT", &name, "resume", "Resumed", as_json).await,
        ConnectorCmd::Stop { name } => verb(admin_url, "PUT", &name, "stop", "Stopped", as_json).await,
        ConnectorCmd::Restart { name, include_tasks, only_failed } => {
            let path = format!("/connectors/{}/restart?includeTasks={include_tasks}&onlyFailed={only_failed}", path_segment(&name)?);
            let status = call(admin_url, "POST", &path, None, REQUEST_TIMEOUT).await?;
            if status.is_null() {
                if as_json {
                    print_json(&json!({"restarted": name}));
                } else {
                    println!("Restarted connector {name}.");
                }
            } else {
                print_status(&status, as_json);
            }
            Ok(())
        }
        ConnectorCmd::Delete { name } => {
            call(admin_url, "DELETE", &format!("/connectors/{}", path_segment(&name)?), None, REQUEST_TIMEOUT).await?;
            if as_json {
                print_json(&json!({"deleted": name}));
            } else {
                println!("Deleted connector {name} (its positions are kept).");
            }
            Ok(())
        }
        ConnectorCmd::Offsets { name, set, reset } => {
            let path = format!("/connectors/{}/offsets", path_segment(&name)?);
            let answer = if reset {
                call(admin_url, "DELETE", &path, None, REQUEST_TIMEOUT).await?
            } else if let Some(body) = set {
                let value: Value = serde_json::from_str(&body)
                    .map_err(|e| crate::exit::UsageError(format!("--set needs KIP-875 JSON ({{\"offsets\": [..]}}): {e}")))?;
                call(admin_url, "PATCH", &path, Some(value), REQUEST_TIMEOUT).await?
            } else {
                let offsets = call(admin_url, "GET", &path, None, REQUEST_TIMEOUT).await?;
                if as_json {
                    print_json(&offsets);
                } else {
                    let mut out = table(["PARTITION", "OFFSET"]);
                    for entry in offsets["offsets"].as_array().into_iter().flatten() {
                        out.add_row(vec![entry["partition"].to_string(), entry["offset"].to_string()]);
                    }
                    print_table(&out);
                }
                return Ok(());
            };
            if as_json {
                print_json(&answer);
            } else {
                println!("{}", answer["message"].as_str().unwrap_or("done"));
            }
            Ok(())
        }
    }
}

async fn verb(admin_url: &str, method: &str, name: &str, verb: &str, done: &str, as_json: bool) -> Result<()> {
    call(admin_url, method, &format!("/connectors/{}/{verb}", path_segment(name)?), None, REQUEST_TIMEOUT).await?;
    if as_json {
        print_json(&json!({"connector": name, "requested": verb}));
    } else {
        println!("{done} connector {name}.");
    }
    Ok(())
}

async fn list(admin_url: &str, as_json: bool) -> Result<()> {
    let all = call(admin_url, "GET", "/connectors?expand=status&expand=info", None, REQUEST_TIMEOUT).await?;
    if as_json {
        print_json(&all);
        return Ok(());
    }
    let mut out = table(["NAME", "TYPE", "STATE", "TASKS", "CLASS"]);
    for (name, entry) in all.as_object().into_iter().flatten() {
        let tasks = entry["status"]["tasks"].as_array().cloned().unwrap_or_default();
        let running = tasks.iter().filter(|t| t["state"] == "RUNNING").count();
        let failed = tasks.iter().filter(|t| t["state"] == "FAILED").count();
        let summary =
            if failed > 0 { format!("{running}/{} ({failed} FAILED)", tasks.len()) } else { format!("{running}/{}", tasks.len()) };
        out.add_row(vec![
            name.clone(),
            entry["status"]["type"].as_str().unwrap_or("?").to_string(),
            entry["status"]["connector"]["state"].as_str().unwrap_or("?").to_string(),
            summary,
            entry["info"]["config"]["connector.class"].as_str().unwrap_or("?").to_string(),
        ]);
    }
    print_table(&out);
    Ok(())
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or_default().chars().take(120).collect()
}

fn print_status(status: &Value, as_json: bool) {
    if as_json {
        print_json(status);
        return;
    }
    let connector = &status["connector"];
    println!(
        "Connector {} ({}): {} on {}",
        status["name"].as_str().unwrap_or("?"),
        status["type"].as_str().unwrap_or("?"),
        connector["state"].as_str().unwrap_or("?"),
        connector["worker_id"].as_str().unwrap_or("?")
    );
    if let Some(trace) = connector["trace"].as_str() {
        println!("  trace: {trace}");
    }
    if let Some(warning) = connector["warning"].as_str() {
        println!("  warning: {warning}");
    }
    let mut out = table(["TASK", "STATE", "RETRIES", "ERROR"]);
    for task in status["tasks"].as_array().into_iter().flatten() {
        let error = task["trace"].as_str().or_else(|| task["last_error"].as_str()).map(first_line).unwrap_or_default();
        out.add_row(vec![
            task["id"].to_string(),
            task["state"].as_str().unwrap_or("?").to_string(),
            task["retries"].as_u64().unwrap_or(0).to_string(),
            error,
        ]);
    }
    print_table(&out);
}

pub(crate) async fn run_plugin(cmd: PluginCmd, admin_url: &str, as_json: bool) -> Result<()> {
    match cmd {
        PluginCmd::List => {
            let modules = call(admin_url, "GET", "/v1/plugins", None, REQUEST_TIMEOUT).await?;
            let connectors = call(admin_url, "GET", "/connector-plugins", None, REQUEST_TIMEOUT).await?;
            if as_json {
                print_json(&json!({"modules": modules["plugins"], "connector_plugins": connectors}));
                return Ok(());
            }
            let mut out = table(["NAME", "KIND", "SIZE", "DIGEST", "SHIPPED"]);
            for module in modules["plugins"].as_array().into_iter().flatten() {
                let worlds: Vec<&str> = module["worlds"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
                out.add_row(vec![
                    module["name"].as_str().unwrap_or("?").to_string(),
                    worlds.join(","),
                    format!("{} KiB", module["bytes"].as_u64().unwrap_or(0) / 1024),
                    module["digest"].as_str().unwrap_or("?").chars().take(12).collect(),
                    if module["builtin"].as_bool() == Some(true) { "yes" } else { "no" }.to_string(),
                ]);
            }
            // Connector plugins that are not modules (only the test fixtures today).
            for plugin in connectors.as_array().into_iter().flatten() {
                let class = plugin["class"].as_str().unwrap_or("?");
                let listed = modules["plugins"].as_array().into_iter().flatten().any(|m| m["name"].as_str() == Some(class));
                if !listed {
                    out.add_row(vec![
                        class.to_string(),
                        plugin["type"].as_str().unwrap_or("?").to_string(),
                        "-".into(),
                        "-".into(),
                        "yes".into(),
                    ]);
                }
            }
            print_table(&out);
            Ok(())
        }
        PluginCmd::Delete { name } => {
            call(admin_url, "DELETE", &format!("/v1/plugins/{}", path_segment(&name)?), None, REQUEST_TIMEOUT).await?;
            if as_json {
                print_json(&json!({ "deleted": name }));
            } else {
                println!("Deleted module name {name}.");
            }
            Ok(())
        }
        PluginCmd::Upload { file, name } => {
            let (info, size) = upload_module(admin_url, &file, &name).await?;
            if as_json {
                print_json(&info);
            } else {
                let worlds: Vec<&str> = info["worlds"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
                println!(
                    "Uploaded {} ({} KiB, {}, sha256 {}).",
                    info["name"].as_str().unwrap_or("?"),
                    size / 1024,
                    worlds.join(","),
                    info["digest"].as_str().unwrap_or("?").chars().take(12).collect::<String>()
                );
            }
            Ok(())
        }
    }
}
