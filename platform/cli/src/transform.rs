//! `sluice transform`: scaffold and build a transform crate, and deploy and manage transforms on a
//! broker through its admin API (`/v1/transforms`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::exit::usage;
use crate::http;
use crate::output::{key_value, print_json, print_table, table};
use crate::sdk_bundle;

/// Deploying compiles the module and runs its `init`: allow for a slow first compile.
const DEPLOY_TIMEOUT: Duration = Duration::from_secs(120);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Largest module the CLI will upload (the broker's own limit).
const MODULE_BYTES_MAX: u64 = 64 * 1024 * 1024;

#[derive(Debug, Args)]
pub struct TransformArgs {
    #[command(flatten)]
    pub common: crate::Common,
    #[command(subcommand)]
    pub cmd: TransformCmd,
}

#[derive(Debug, Subcommand)]
pub enum TransformCmd {
    /// Create a transform crate that builds, with a unit test, in a new directory.
    #[command(after_help = "Example:\n  sluice transform init big-orders && cd big-orders && cargo test && sluice transform build")]
    Init {
        /// Crate (and directory) name.
        name: String,
        /// Create it here instead of ./NAME.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Use this SDK crate (sdk/sluice of a Sluice checkout) [env: SLUICE_SDK_PATH; default: the SDK built
        /// into this binary, unpacked once to $XDG_DATA_HOME/sluice/sdk/VERSION (~/.local/share/sluice/sdk/VERSION)].
        #[arg(long, env = "SLUICE_SDK_PATH")]
        sdk_path: Option<PathBuf>,
    },
    /// Build a transform crate to a WebAssembly component (cargo build --release --target wasm32-wasip2).
    #[command(
        after_help = "Example:\n  sluice transform build            # in the crate's directory\n  sluice transform build ./big-orders"
    )]
    Build {
        /// The crate's directory.
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// Deploy a .wasm component (or redeploy under the same name: it resumes where the old one stopped).
    #[command(
        after_help = "Examples:\n  sluice transform deploy target/wasm32-wasip2/release/big_orders.wasm --name big-orders \\\n      --input-topic orders --output-topic big-orders --config threshold=1000\n  \
                            sluice transform deploy mask.wasm --name mask --input-topic users --output-topic users-masked \\\n      --error-policy dead-letter:users-dlq --memory-mb 32 --cpu-ms-per-call 200\n  \
                            sluice transform deploy --module pii-mask --name mask --input-topic users --output-topic users-masked \\\n      --config fields=email,phone"
    )]
    Deploy(DeployArgs),
    /// List deployed transforms with state, lag and counts.
    #[command(after_help = "Example:\n  sluice transform list")]
    List,
    /// One transform: state, error, lag and throughput per partition, recent log lines.
    #[command(after_help = "Example:\n  sluice transform status big-orders")]
    Status { name: String },
    /// Pause a transform (its runners stop reading; nothing is lost).
    #[command(after_help = "Example:\n  sluice transform pause big-orders")]
    Pause { name: String },
    /// Resume a paused or failed transform (a failed partition retries the batch it failed on).
    #[command(after_help = "Example:\n  sluice transform resume big-orders")]
    Resume { name: String },
    /// Change memory and CPU limits of a running transform; applied before its next call, no restart.
    #[command(after_help = "Example:\n  sluice transform set-limits big-orders --memory-mb 128 --cpu-ms-per-call 500")]
    SetLimits {
        name: String,
        #[arg(long)]
        memory_mb: Option<u64>,
        #[arg(long)]
        cpu_ms_per_call: Option<u64>,
    },
    /// Stop and remove a transform (its output topics and committed positions stay).
    #[command(after_help = "Example:\n  sluice transform delete big-orders")]
    Delete { name: String },
}

#[derive(Debug, Args)]
pub struct DeployArgs {
    /// The .wasm component (from `sluice transform build`).
    #[arg(required_unless_present = "module")]
    pub file: Option<PathBuf>,
    /// Instead of a file: a module already in the broker's registry (`sluice plugin list`), such as the
    /// first-party `pii-mask`, `json-filter`, `router` or `json-to-msgpack`.
    #[arg(long, conflicts_with = "file")]
    pub module: Option<String>,
    #[arg(long)]
    pub name: String,
    #[arg(long)]
    pub input_topic: String,
    /// Output topic (repeatable; the first is the default output).
    #[arg(long = "output-topic", required = true)]
    pub output_topics: Vec<String>,
    /// Deploy-time configuration passed to the transform: key=value (repeatable).
    #[arg(long = "config", value_parser = key_value)]
    pub config: Vec<(String, String)>,
    /// Where a new transform starts: earliest, latest, offset:N or timestamp:MS (a redeploy resumes instead).
    #[arg(long, default_value = "earliest")]
    pub from: String,
    /// stop, dead-letter:TOPIC, or retry:ATTEMPTS[:BACKOFF_MS].
    #[arg(long, default_value = "stop")]
    pub error_policy: String,
    /// key-hash (default) or same-as-input.
    #[arg(long, default_value = "key-hash")]
    pub partitioning: String,
    #[arg(long)]
    pub memory_mb: Option<u64>,
    #[arg(long)]
    pub cpu_ms_per_call: Option<u64>,
    /// Records per call into the module.
    #[arg(long)]
    pub batch_records: Option<u64>,
}

pub(crate) async fn run(cmd: TransformCmd, admin_url: &str, as_json: bool) -> Result<()> {
    match cmd {
        TransformCmd::Init { name, dir, sdk_path } => init(&name, dir, sdk_path),
        TransformCmd::Build { dir } => build(&dir, as_json),
        TransformCmd::Deploy(args) => deploy(args, admin_url, as_json).await,
        TransformCmd::List => list(admin_url, as_json).await,
        TransformCmd::Status { name } => {
            let status = call(admin_url, "GET", &format!("/v1/transforms/{name}"), None, REQUEST_TIMEOUT).await?;
            print_status(&status, as_json);
            Ok(())
        }
        TransformCmd::Pause { name } => action(admin_url, &name, "pause", as_json).await,
        TransformCmd::Resume { name } => action(admin_url, &name, "resume", as_json).await,
        TransformCmd::SetLimits { name, memory_mb, cpu_ms_per_call } => {
            if memory_mb.is_none() && cpu_ms_per_call.is_none() {
                return usage("give --memory-mb and/or --cpu-ms-per-call");
            }
            let body = json!({"memory_bytes": memory_mb.map(|m| m * 1024 * 1024), "cpu_ms_per_call": cpu_ms_per_call});
            let status = call(admin_url, "PATCH", &format!("/v1/transforms/{name}"), Some(body), REQUEST_TIMEOUT).await?;
            print_status(&status, as_json);
            Ok(())
        }
        TransformCmd::Delete { name } => {
            call(admin_url, "DELETE", &format!("/v1/transforms/{name}"), None, REQUEST_TIMEOUT).await?;
            if as_json {
                print_json(&json!({"deleted": name}));
            } else {
                println!("Deleted transform {name}.");
            }
            Ok(())
        }
    }
}

/// One admin API call; a non-2xx answer becomes an error carrying the API's message.
async fn call(admin_url: &str, method: &str, path: &str, body: Option<Value>, timeout: Duration) -> Result<Value> {
    let bytes = body.map(|b| serde_json::to_vec(&b)).transpose()?;
    let (status, text) = http::request(admin_url, method, path, bytes.as_deref(), timeout).await?;
    let parsed: Value =
        if text.trim().is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text.clone())) };
    if !(200..300).contains(&status) {
        let message = parsed.get("error").and_then(Value::as_str).map(str::to_string).unwrap_or_else(|| text.trim().to_string());
        if status == 404 && message.is_empty() {
            bail!("{admin_url} has no transform API (is it a Sluice broker's admin URL? set --admin-url)");
        }
        bail!("{message} (HTTP {status} from {admin_url})");
    }
    Ok(parsed)
}

async fn action(admin_url: &str, name: &str, verb: &str, as_json: bool) -> Result<()> {
    let status = call(admin_url, "POST", &format!("/v1/transforms/{name}/{verb}"), None, REQUEST_TIMEOUT).await?;
    print_status(&status, as_json);
    Ok(())
}

fn parse_from(text: &str) -> Result<Value> {
    Ok(match text.split_once(':') {
        None if text == "earliest" || text == "latest" => json!(text),
        Some(("offset", n)) => json!({"offset": n.parse::<i64>().context("--from offset:N needs a number")?}),
        Some(("timestamp", ms)) => json!({"timestamp": crate::output::parse_time(ms)?}),
        _ => return usage(format!("--from {text}: use earliest, latest, offset:N or timestamp:MS")),
    })
}

fn parse_policy(text: &str) -> Result<Value> {
    let mut parts = text.split(':');
    Ok(match (parts.next(), parts.next(), parts.next()) {
        (Some("stop"), None, None) => json!("stop"),
        (Some("dead-letter"), Some(topic), None) if !topic.is_empty() => json!({"dead_letter": topic}),
        (Some("retry"), Some(attempts), backoff) => json!({"retry": {
            "max_attempts": attempts.parse::<u32>().context("--error-policy retry:ATTEMPTS needs a number")?,
            "backoff_ms": backoff.map(str::parse::<u64>).transpose().context("retry backoff must be milliseconds")?.unwrap_or(100),
        }}),
        _ => return usage(format!("--error-policy {text}: use stop, dead-letter:TOPIC or retry:ATTEMPTS[:BACKOFF_MS]")),
    })
}

async fn deploy(args: DeployArgs, admin_url: &str, as_json: bool) -> Result<()> {
    // The component's bytes, or the registry's name for it.
    let (module, size) = match (&args.file, &args.module) {
        (Some(file), _) => {
            let size = std::fs::metadata(file).map_err(|e| crate::exit::UsageError(format!("cannot read {}: {e}", file.display())))?.len();
            if size > MODULE_BYTES_MAX {
                return usage(format!("{} is {size} bytes; modules may be at most {MODULE_BYTES_MAX}", file.display()));
            }
            let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
            (("module_base64", Value::String(base64::engine::general_purpose::STANDARD.encode(&bytes))), Some(size))
        }
        (None, Some(name)) => (("module", Value::String(name.clone())), None),
        (None, None) => return usage("give the .wasm file or --module NAME".to_string()),
    };
    let partitioning = match args.partitioning.as_str() {
        "key-hash" => "key_hash",
        "same-as-input" => "same_as_input",
        other => return usage(format!("--partitioning {other}: use key-hash or same-as-input")),
    };
    let mut body = json!({
        "name": args.name,
        "input_topic": args.input_topic,
        "output_topics": args.output_topics,
        "config": args.config.into_iter().map(|(k, v)| (k, Value::String(v))).collect::<serde_json::Map<String, Value>>(),
        "from": parse_from(&args.from)?,
        "error_policy": parse_policy(&args.error_policy)?,
        "partitioning": partitioning,
        "memory_bytes": args.memory_mb.map(|m| m * 1024 * 1024),
        "cpu_ms_per_call": args.cpu_ms_per_call,
        "batch_records": args.batch_records,
    });
    body[module.0] = module.1;
    let started = std::time::Instant::now();
    let status = call(admin_url, "POST", "/v1/transforms", Some(body), DEPLOY_TIMEOUT).await?;
    if as_json {
        print_json(&status);
    } else {
        println!(
            "Deployed {} version {} ({} KiB, sha256 {}) in {} ms.",
            status["name"].as_str().unwrap_or("?"),
            status["version"],
            size.or(status["module_bytes"].as_u64()).unwrap_or(0) / 1024,
            status["module_digest"].as_str().unwrap_or("?").get(..12).unwrap_or("?"),
            started.elapsed().as_millis()
        );
        println!("Check it with: sluice transform status {}", status["name"].as_str().unwrap_or("?"));
    }
    Ok(())
}

async fn list(admin_url: &str, as_json: bool) -> Result<()> {
    let answer = call(admin_url, "GET", "/v1/transforms", None, REQUEST_TIMEOUT).await?;
    let transforms = answer.get("transforms").and_then(Value::as_array).cloned().unwrap_or_default();
    if as_json {
        print_json(&Value::Array(transforms));
        return Ok(());
    }
    if transforms.is_empty() {
        println!(
            "No transforms deployed. Deploy one with: sluice transform deploy FILE.wasm --name NAME --input-topic IN --output-topic OUT"
        );
        return Ok(());
    }
    let mut t = table(["NAME", "STATE", "VERSION", "INPUT", "OUTPUTS", "RECORDS IN", "RECORDS OUT", "LAG"]);
    for s in &transforms {
        t.add_row(vec![
            s["name"].as_str().unwrap_or("").to_string(),
            s["state"].as_str().unwrap_or("").to_string(),
            s["version"].to_string(),
            s["input_topic"].as_str().unwrap_or("").to_string(),
            s["output_topics"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(",")).unwrap_or_default(),
            s["records_in"].to_string(),
            s["records_out"].to_string(),
            s["lag"].to_string(),
        ]);
    }
    print_table(&t);
    Ok(())
}

fn print_status(status: &Value, as_json: bool) {
    if as_json {
        print_json(status);
        return;
    }
    let text = |k: &str| status[k].as_str().unwrap_or("").to_string();
    println!("Transform:   {} (version {}, sha256 {})", text("name"), status["version"], text("module_digest").get(..12).unwrap_or(""));
    println!("State:       {}", text("state"));
    match status["code"].as_str() {
        Some("baseline") => {
            println!("Code:        baseline (Winch; optimized code is being compiled, runners switch to it between batches)")
        }
        Some(code) => println!("Code:        {code}"),
        None => {}
    }
    if status["boundary"].as_str() == Some("per_record") {
        println!("Boundary:    per record (built with an older SDK; rebuild it for the one-buffer boundary, several times cheaper)");
    }
    if let Some(error) = status["error"].as_str() {
        println!("Error:       {error}");
    }
    println!(
        "Topics:      {} -> {}",
        text("input_topic"),
        status["output_topics"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", ")).unwrap_or_default()
    );
    println!(
        "Limits:      {} MiB memory, {} ms CPU per call",
        status["memory_bytes"].as_u64().unwrap_or(0) / (1024 * 1024),
        status["cpu_ms_per_call"]
    );
    println!(
        "Records:     {} in, {} out, {} dead-lettered; lag {}",
        status["records_in"], status["records_out"], status["dead_lettered"], status["lag"]
    );
    println!();
    let mut t = table(["PARTITION", "POSITION", "LAST STABLE", "LAG", "RECORDS IN", "ERROR"]);
    for p in status["partitions"].as_array().into_iter().flatten() {
        t.add_row(vec![
            p["partition"].to_string(),
            p["position"].to_string(),
            p["last_stable_offset"].to_string(),
            p["lag"].to_string(),
            p["records_in"].to_string(),
            p["error"].as_str().unwrap_or("-").to_string(),
        ]);
    }
    print_table(&t);
    if let Some(broker) = status["broker_id"].as_i64() {
        // A cluster: this broker runs the partitions above (those it leads); the rest run on theirs.
        let elsewhere: Vec<String> = status["partitions_elsewhere"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| match p["broker_id"].as_i64() {
                Some(leader) => format!("{} on broker {leader}", p["partition"]),
                None => format!("{} (no leader now)", p["partition"]),
            })
            .collect();
        println!("\nThe partitions above run on broker {broker}, which leads them.");
        if !elsewhere.is_empty() {
            println!("Elsewhere (ask their broker for details): {}", elsewhere.join(", "));
        }
    }
    let logs = status["logs"].as_array().cloned().unwrap_or_default();
    if !logs.is_empty() {
        println!("\nRecent log lines:");
        for line in logs {
            println!("  [{}] {}", line["level"].as_str().unwrap_or(""), line["message"].as_str().unwrap_or(""));
        }
    }
}

fn init(name: &str, dir: Option<PathBuf>, sdk_path: Option<PathBuf>) -> Result<()> {
    if name.is_empty()
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        || name.starts_with(|c: char| c.is_ascii_digit())
    {
        return usage(format!("`{name}` is not a valid crate name: use letters, digits, '-' and '_', not starting with a digit"));
    }
    let dir = dir.unwrap_or_else(|| PathBuf::from(name));
    if dir.exists() && std::fs::read_dir(&dir).map(|mut d| d.next().is_some()).unwrap_or(true) {
        return usage(format!("{} already exists and is not empty", dir.display()));
    }
    let sdk = match sdk_path {
        Some(sdk) => {
            let sdk = sdk.canonicalize().map_err(|e| crate::exit::UsageError(format!("SDK path {}: {e}", sdk.display())))?;
            if !sdk.join("Cargo.toml").exists() {
                return usage(format!("{} is not the SDK crate (no Cargo.toml); point --sdk-path at sdk/sluice", sdk.display()));
            }
            sdk
        }
        // The SDK this binary carries, so a binary installed anywhere scaffolds a crate that builds.
        None => {
            let Some(root) = sdk_bundle::default_root() else {
                return usage("cannot tell where to unpack the Sluice SDK: set XDG_DATA_HOME or HOME, or pass --sdk-path");
            };
            sdk_bundle::unpack(&root).context("unpacking the Sluice SDK")?
        }
    };
    std::fs::create_dir_all(dir.join("src")).with_context(|| format!("creating {}", dir.display()))?;
    let manifest = format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"

# cdylib: the WebAssembly component the broker runs; rlib: native unit tests with `cargo test`.
[lib]
crate-type = ["cdylib", "rlib"]

[dependencies]
sluice = {{ path = {sdk} }}
serde = {{ version = "1", features = ["derive"] }}

[profile.release]
opt-level = 3
lto = true
codegen-units = 1

# A crate of its own, not a member of an enclosing workspace.
[workspace]
"#,
        // A TOML string, quoted and escaped, whatever the path holds.
        sdk = toml::Value::String(sdk.display().to_string())
    );
    std::fs::write(dir.join("Cargo.toml"), manifest)?;
    std::fs::write(dir.join("src/lib.rs"), LIB_TEMPLATE)?;
    std::fs::write(dir.join(".gitignore"), "/target\n")?;
    println!("Created transform crate `{name}` in {}, using the Sluice SDK in {}.", dir.display(), sdk.display());
    println!("Next:");
    println!("  cd {} && cargo test                      # unit-test it natively", dir.display());
    println!("  sluice transform build                     # -> target/wasm32-wasip2/release/{}.wasm", name.replace('-', "_"));
    println!(
        "  sluice transform deploy target/wasm32-wasip2/release/{}.wasm --name {name} --input-topic IN --output-topic OUT",
        name.replace('-', "_")
    );
    Ok(())
}

const LIB_TEMPLATE: &str = r#"//! A Sluice transform: `run` is called for every record of the input topic; whatever it writes goes
//! to the output topics, exactly once. Build: `sluice transform build`; test: `cargo test`.

use sluice::{Record, Result, Writer};

#[sluice::transform]
fn run(record: Record, out: &mut Writer) -> Result<()> {
    // Drop records without a value; upper-case the rest (replace with your logic).
    let Some(value) = record.value() else {
        return Ok(());
    };
    let upper = String::from_utf8_lossy(value).to_uppercase();
    out.write(record.into_output().with_value(upper));
    Ok(())
}

#[cfg(test)]
mod tests {
    use sluice::Record;
    use sluice::testing::Harness;

    #[test]
    fn upper_cases_values_and_drops_empty_ones() {
        let written = Harness::new(super::run).process(vec![Record::new("hello"), Record::default()]).unwrap();
        assert_eq!(written.len(), 1);
        assert_eq!(written[0].record.value.as_deref(), Some(&b"HELLO"[..]));
    }
}
"#;

fn build(dir: &Path, as_json: bool) -> Result<()> {
    let manifest = dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).map_err(|e| {
        crate::exit::UsageError(format!("{}: {e} (run this in a transform crate, or pass its directory)", manifest.display()))
    })?;
    let name = text
        .lines()
        .skip_while(|l| l.trim() != "[package]")
        .find_map(|l| l.trim().strip_prefix("name").map(|rest| rest.trim_start_matches([' ', '=']).trim().trim_matches('"').to_string()))
        .ok_or_else(|| crate::exit::UsageError(format!("{} has no [package] name", manifest.display())))?;
    let started = std::time::Instant::now();
    let status = std::process::Command::new("cargo")
        .args(["build", "--release", "--target", "wasm32-wasip2", "--manifest-path"])
        .arg(&manifest)
        .status()
        .context("running cargo (is Rust installed?)")?;
    if !status.success() {
        bail!("cargo build failed (if the target is missing: rustup target add wasm32-wasip2)");
    }
    let target_dir = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| dir.join("target"));
    let artifact = target_dir.join("wasm32-wasip2/release").join(format!("{}.wasm", name.replace('-', "_")));
    let size = std::fs::metadata(&artifact).with_context(|| format!("cargo succeeded but {} is missing", artifact.display()))?.len();
    if as_json {
        print_json(&json!({"module": artifact, "bytes": size, "seconds": started.elapsed().as_secs_f64()}));
    } else {
        println!("Built {} ({} KiB) in {:.1} s.", artifact.display(), size / 1024, started.elapsed().as_secs_f64());
    }
    Ok(())
}
