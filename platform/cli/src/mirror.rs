//! `sluice mirror`: mirrors through the broker's `/v1/mirrors` API. A mirror runs inside this (the
//! target) broker and copies topics from another Kafka-protocol cluster.

use std::time::Duration;

use anyhow::Result;
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::connector::call;
use crate::exit::usage;
use crate::output::{group_digits, print_json, print_table, table};

/// Promoting and deleting write transaction markers and fsync topic metadata.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Args)]
pub struct MirrorArgs {
    #[command(flatten)]
    pub common: crate::Common,
    #[command(subcommand)]
    pub cmd: MirrorCmd,
}

#[derive(Debug, Subcommand)]
pub enum MirrorCmd {
    /// Start mirroring topics from another cluster into this broker.
    #[command(
        after_help = "Examples:\n  sluice mirror create dr --source-bootstrap 10.0.0.5:9092 --topics 'orders|payments-.*' --exclude '.*-test' --groups 'billing|audit'\n  \
                            sluice mirror create east --source-bootstrap 10.0.0.5:9092 --source-alias east --topics 'orders' --mode rename\n\n\
                            In preserve mode (the default) each selected source topic gets a read-only topic of the same name,\n\
                            partition count and offsets here, batch for batch. Promote it to write to it.\n\
                            In rename mode (MirrorMaker 2's) the copy is a normal topic named '<alias>.<topic>' (or '<topic>' with\n\
                            --policy identity), written exactly once by transactions; records carry their origin cluster in the\n\
                            'sluice.origin' header and are never copied back to it, so two-way mirrors do not loop.\n\
                            --policy also takes a mirror-policy module (a .wasm file, uploaded to the registry under its file name,\n\
                            or the name of a module there) that names the copies, picks topics and groups, and may filter or\n\
                            rewrite records: see examples/mirror-policies/."
    )]
    Create {
        name: String,
        /// host:port of the source cluster (comma-separated or repeated).
        #[arg(long, required = true, value_delimiter = ',')]
        source_bootstrap: Vec<String>,
        /// A short name for the source cluster (MirrorMaker 2's alias); defaults to the mirror's name.
        #[arg(long)]
        source_alias: Option<String>,
        /// Source topics to mirror: a regular expression matching whole names.
        #[arg(long)]
        topics: String,
        /// Source topics to leave out (a regular expression).
        #[arg(long)]
        exclude: Option<String>,
        /// Consumer groups whose committed offsets are copied (a regular expression; none without it).
        #[arg(long)]
        groups: Option<String>,
        /// preserve: same names and offsets, read-only copies; rename: MirrorMaker 2's renamed, writable copies.
        #[arg(long, default_value = "preserve", value_parser = ["preserve", "rename"])]
        mode: String,
        /// Rename mode's replication policy: default ('<alias>.<topic>'), identity ('<topic>'), the name of a
        /// mirror-policy module in the broker's registry, or a .wasm file (uploaded under its file name).
        #[arg(long)]
        policy: Option<String>,
        /// A setting passed to the policy's init, KEY=VALUE (repeatable).
        #[arg(long = "policy-config", value_name = "KEY=VALUE")]
        policy_config: Vec<String>,
    },
    /// List mirrors with their state and lag.
    #[command(after_help = "Example:\n  sluice mirror list")]
    List,
    /// A mirror's state, its source's reachability, and per partition: lag, record age, bytes/s.
    #[command(after_help = "Example:\n  sluice mirror status dr")]
    Status { name: String },
    /// Pause copying (nothing is lost; resume continues where the copy ends).
    #[command(after_help = "Example:\n  sluice mirror pause dr")]
    Pause { name: String },
    /// Resume copying (also retries after a failure).
    #[command(after_help = "Example:\n  sluice mirror resume dr")]
    Resume { name: String },
    /// Make mirror topics normal, writable topics (all of the mirror's, or those named).
    #[command(after_help = "Examples:\n  sluice mirror promote dr --topic orders\n  sluice mirror promote dr\n\n\
                            The mirror stops copying a promoted topic for good. Transactions the source left open in the\n\
                            copy are aborted, and the source's producer state is forgotten: producers that fail over\n\
                            start a new session, as with any new cluster.")]
    Promote {
        name: String,
        /// A topic to promote (repeatable); without it, every topic of the mirror.
        #[arg(long = "topic")]
        topics: Vec<String>,
    },
    /// Delete a mirror. Its topics keep their data and are promoted to normal topics.
    #[command(after_help = "Example:\n  sluice mirror delete dr")]
    Delete { name: String },
}

fn path_segment(name: &str) -> Result<&str> {
    if name.is_empty() || name.contains(['/', '?', '#', '%', ' ']) {
        return usage(format!("'{name}' is not a mirror name (letters, digits, '.', '_', '-')"));
    }
    Ok(name)
}

fn age(ms: Option<i64>) -> String {
    match ms {
        None => "-".into(),
        Some(ms) if ms < 1000 => format!("{ms}ms"),
        Some(ms) if ms < 120_000 => format!("{:.1}s", ms as f64 / 1000.0),
        Some(ms) => format!("{}m", ms / 60_000),
    }
}

fn rate(bytes_per_second: u64) -> String {
    match bytes_per_second {
        b if b >= 1 << 20 => format!("{:.1} MiB/s", b as f64 / (1 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB/s", b as f64 / 1024.0),
        b => format!("{b} B/s"),
    }
}

fn print_status(status: &Value) {
    let text = |v: &Value| v.as_str().unwrap_or("-").to_string();
    println!("Mirror:   {}", text(&status["name"]));
    println!("State:    {}", text(&status["state"]));
    match status["policy"].as_str() {
        Some(policy) => {
            let config: Vec<String> = status["policy_config"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect();
            let config = if config.is_empty() { String::new() } else { format!(" [{}]", config.join(", ")) };
            println!("Mode:     {} (policy {policy}{config}, alias {})", text(&status["mode"]), text(&status["source_alias"]))
        }
        None => println!("Mode:     {}", text(&status["mode"])),
    }
    let sources: Vec<&str> = status["source_bootstrap"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    let reachable = if status["source_reachable"].as_bool() == Some(true) { "reachable" } else { "UNREACHABLE" };
    println!("Source:   {} ({reachable})", sources.join(","));
    match status["exclude"].as_str() {
        Some(exclude) => println!("Topics:   {} (excluding {exclude})", text(&status["topics"])),
        None => println!("Topics:   {}", text(&status["topics"])),
    }
    println!(
        "Copied:   {} records, {} bytes ({}); lag {} records",
        group_digits(status["records"].as_u64().unwrap_or(0)),
        group_digits(status["bytes"].as_u64().unwrap_or(0)),
        rate(status["bytes_per_second"].as_u64().unwrap_or(0)),
        group_digits(status["lag_records"].as_i64().unwrap_or(0).max(0) as u64)
    );
    if let Some(error) = status["error"].as_str() {
        println!("Error:    {error}");
    }
    // In rename mode the copy's offsets are its own: COPIED-TO is the source offset it resumes from.
    let renames = status["policy"].is_string();
    let copy_end = if renames { "COPIED-TO" } else { "COPY-END" };
    let mut out = table(["TOPIC", "PARTITION", "SOURCE-END", copy_end, "LAG", "LAG-TIME", "RECORD-AGE", "RATE", "ERROR"]);
    for p in status["partitions"].as_array().into_iter().flatten() {
        let topic = match (text(&p["topic"]), text(&p["target_topic"])) {
            (source, target) if source == target => source,
            (source, target) => format!("{source} -> {target}"),
        };
        let mut error = p["error"].as_str().unwrap_or("").to_string();
        if let Some(looped) = p["records_looped"].as_u64().filter(|&n| n > 0) {
            error = format!("{looped} records from this cluster not copied back{}{error}", if error.is_empty() { "" } else { "; " });
        }
        if let Some(filtered) = p["records_filtered"].as_u64().filter(|&n| n > 0) {
            error = format!("{filtered} records dropped by the policy{}{error}", if error.is_empty() { "" } else { "; " });
        }
        out.add_row(vec![
            topic,
            p["partition"].to_string(),
            p["source_high_watermark"].to_string(),
            p["target_end_offset"].to_string(),
            p["lag_records"].to_string(),
            age(p["lag_ms"].as_i64()),
            age(p["last_record_age_ms"].as_i64()),
            rate(p["bytes_per_second"].as_u64().unwrap_or(0)),
            error,
        ]);
    }
    print_table(&out);
    let groups = status["group_offsets"].as_object().cloned().unwrap_or_default();
    if !groups.is_empty() {
        println!();
        let mut out = table(["GROUP", "PARTITIONS", "SYNCED", "ERROR"]);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
        for (group, sync) in &groups {
            out.add_row(vec![
                group.clone(),
                sync["partitions"].to_string(),
                sync["synced_at_ms"].as_i64().map_or("-".into(), |at| format!("{} ago", age(Some((now - at).max(0))))),
                sync["error"].as_str().unwrap_or("").to_string(),
            ]);
        }
        print_table(&out);
    }
    for (topic, why) in status["topic_errors"].as_object().into_iter().flatten() {
        println!("not mirrored: {topic}: {}", why.as_str().unwrap_or_default());
    }
    let promoted: Vec<&str> = status["promoted"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    if !promoted.is_empty() {
        println!("promoted: {}", promoted.join(", "));
    }
}

fn print_promoted(outcome: &Value, verb: &str) {
    let topics = outcome["promoted"].as_array().cloned().unwrap_or_default();
    println!("{verb}; {} topic(s) promoted to normal, writable topics.", topics.len());
    let mut out = table(["TOPIC", "END-OFFSETS", "ABORTED-SOURCE-TRANSACTIONS"]);
    for topic in &topics {
        let ends: Vec<String> = topic["end_offsets"].as_array().into_iter().flatten().map(Value::to_string).collect();
        out.add_row(vec![
            topic["topic"].as_str().unwrap_or("-").to_string(),
            ends.join(","),
            topic["aborted_transactions"].as_array().map_or(0, Vec::len).to_string(),
        ]);
    }
    if !topics.is_empty() {
        print_table(&out);
    }
}

pub(crate) async fn run(cmd: MirrorCmd, admin_url: &str, as_json: bool) -> Result<()> {
    match cmd {
        MirrorCmd::Create { name, source_bootstrap, source_alias, topics, exclude, groups, mode, policy, policy_config } => {
            if mode == "preserve" && (policy.is_some() || !policy_config.is_empty()) {
                return usage(
                    "--policy and --policy-config apply to mode 'rename' only; preserve mode keeps the source's names".to_string(),
                );
            }
            let mut config = serde_json::Map::new();
            for pair in &policy_config {
                let Some((key, value)) = pair.split_once('=') else {
                    return usage(format!("--policy-config '{pair}' is not KEY=VALUE"));
                };
                config.insert(key.to_string(), Value::String(value.to_string()));
            }
            let policy = match policy {
                Some(file) if file.ends_with(".wasm") => {
                    let path = std::path::Path::new(&file);
                    let module = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default().replace('_', "-");
                    // Never replace a module that is not a policy, or one shipped with the broker.
                    let (status, text) =
                        crate::http::request(admin_url, "GET", &format!("/v1/plugins/{}", path_segment(&module)?), None, REQUEST_TIMEOUT)
                            .await?;
                    if status == 200 {
                        let existing: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                        let is_policy = existing["worlds"].as_array().into_iter().flatten().any(|w| w.as_str() == Some("mirror-policy"));
                        if existing["builtin"].as_bool() == Some(true) || !is_policy {
                            return usage(format!(
                                "the broker's registry has a module '{module}' that is {}; rename {file} (the module takes the file's name)",
                                if is_policy { "shipped with the broker" } else { "not a mirror policy" }
                            ));
                        }
                    }
                    let (info, size) = crate::connector::upload_module(admin_url, path, &module).await?;
                    if !info["worlds"].as_array().into_iter().flatten().any(|w| w.as_str() == Some("mirror-policy")) {
                        return usage(format!(
                            "{file} is not a mirror policy (it implements {}); build one with #[sluice::mirror_policy]",
                            info["worlds"]
                        ));
                    }
                    if !as_json {
                        println!("Uploaded policy {module} ({} KiB, sha256 {}).", size / 1024, info["digest"].as_str().unwrap_or("?"));
                    }
                    module
                }
                Some(name) => name,
                None => "default".into(),
            };
            let body = json!({
                "name": name,
                "source_bootstrap": source_bootstrap,
                "source_alias": source_alias,
                "topics": topics,
                "exclude": exclude,
                "groups": groups,
                "mode": mode,
                "policy": policy,
                "policy_config": config,
            });
            let status = call(admin_url, "POST", "/v1/mirrors", Some(body), REQUEST_TIMEOUT).await?;
            if as_json {
                print_json(&status);
            } else {
                println!("Created mirror {name} from {}.", source_bootstrap.join(","));
                println!("Check it with: sluice mirror status {name}");
            }
        }
        MirrorCmd::List => {
            let answer = call(admin_url, "GET", "/v1/mirrors", None, REQUEST_TIMEOUT).await?;
            if as_json {
                print_json(&answer);
                return Ok(());
            }
            let mut out = table(["NAME", "STATE", "MODE", "SOURCE", "TOPICS", "PARTITIONS", "LAG", "ERROR"]);
            for m in answer["mirrors"].as_array().into_iter().flatten() {
                let sources: Vec<&str> = m["source_bootstrap"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
                out.add_row(vec![
                    m["name"].as_str().unwrap_or("-").to_string(),
                    m["state"].as_str().unwrap_or("-").to_string(),
                    m["mode"].as_str().unwrap_or("-").to_string(),
                    sources.join(","),
                    m["topics"].as_str().unwrap_or("-").to_string(),
                    m["partitions"].as_array().map_or(0, Vec::len).to_string(),
                    m["lag_records"].to_string(),
                    m["error"].as_str().unwrap_or("").to_string(),
                ]);
            }
            print_table(&out);
        }
        MirrorCmd::Status { name } => {
            let status = call(admin_url, "GET", &format!("/v1/mirrors/{}", path_segment(&name)?), None, REQUEST_TIMEOUT).await?;
            if as_json {
                print_json(&status);
            } else {
                print_status(&status);
            }
        }
        MirrorCmd::Pause { name } => {
            let status = call(admin_url, "POST", &format!("/v1/mirrors/{}/pause", path_segment(&name)?), None, REQUEST_TIMEOUT).await?;
            if as_json { print_json(&status) } else { println!("Paused mirror {name}.") }
        }
        MirrorCmd::Resume { name } => {
            let status = call(admin_url, "POST", &format!("/v1/mirrors/{}/resume", path_segment(&name)?), None, REQUEST_TIMEOUT).await?;
            if as_json { print_json(&status) } else { println!("Resumed mirror {name}.") }
        }
        MirrorCmd::Promote { name, topics } => {
            let body = if topics.is_empty() { json!({}) } else { json!({ "topics": topics }) };
            let outcome =
                call(admin_url, "POST", &format!("/v1/mirrors/{}/promote", path_segment(&name)?), Some(body), REQUEST_TIMEOUT).await?;
            if as_json {
                print_json(&outcome);
            } else {
                print_promoted(&outcome, &format!("Promoted topics of mirror {name}"));
            }
        }
        MirrorCmd::Delete { name } => {
            let outcome = call(admin_url, "DELETE", &format!("/v1/mirrors/{}", path_segment(&name)?), None, REQUEST_TIMEOUT).await?;
            if as_json {
                print_json(&outcome);
            } else {
                print_promoted(&outcome, &format!("Deleted mirror {name}"));
            }
        }
    }
    Ok(())
}
