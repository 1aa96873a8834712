//! `sluice topic …`: create, list, describe, alter-config, add-partitions, delete, delete-records and
//! reassign, the jobs of `kafka-topics.sh`, `kafka-configs.sh --entity-type topics`,
//! `kafka-delete-records.sh` and `kafka-reassign-partitions.sh`, all over the Kafka protocol
//! (CreateTopics, Metadata, ListOffsets, DescribeConfigs, IncrementalAlterConfigs, CreatePartitions,
//! DeleteTopics, DeleteRecords, AlterPartitionReassignments, ListPartitionReassignments).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use sluice_client::codes::{TOPIC_ALREADY_EXISTS, error_label};
use sluice_client::{Client, ConfigChange, ConfigEntry, ConfigResource, ConfigSource, NewTopic, OffsetSpec, TopicInfo};

use crate::exit::usage;
use crate::output::{key_value, parse_time, print_json, print_table, table};

/// Largest partition count accepted on the command line (Kafka has no hard limit; this catches typos).
const PARTITIONS_MAX: i64 = 100_000;
/// The timeout the broker is asked to honour for topic changes.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `create` / `add-partitions` wait for every partition to have a leader.
const LEADERS_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Args)]
pub struct TopicArgs {
    #[command(flatten)]
    pub common: crate::Common,
    #[command(subcommand)]
    pub cmd: TopicCmd,
}

#[derive(Debug, Subcommand)]
pub enum TopicCmd {
    /// Create a topic (kafka-topics.sh --create).
    #[command(after_help = "Example:\n  sluice topic create orders -p 6 -c retention.ms=86400000 -c cleanup.policy=delete")]
    Create {
        name: String,
        /// Number of partitions [default: the broker's num.partitions].
        #[arg(short, long, value_parser = clap::value_parser!(i32).range(1..=PARTITIONS_MAX))]
        partitions: Option<i32>,
        /// Replication factor [default: the broker's default.replication.factor].
        #[arg(short = 'r', long, visible_alias = "replication-factor", value_parser = clap::value_parser!(i16).range(1..))]
        replicas: Option<i16>,
        /// A topic setting, key=value (repeatable).
        #[arg(short = 'c', long = "config", value_name = "KEY=VALUE", value_parser = key_value)]
        configs: Vec<(String, String)>,
        /// Succeed without changes if the topic already exists.
        #[arg(long)]
        if_not_exists: bool,
    },
    /// List topics with their partition counts (kafka-topics.sh --list).
    #[command(after_help = "Examples:\n  sluice topic list\n  sluice topic list --json | jq -r '.[].name'")]
    List {
        /// Include internal topics such as __consumer_offsets.
        #[arg(long)]
        internal: bool,
    },
    /// Partitions (leader, replicas, ISR, low/high watermark) and non-default configs (kafka-topics.sh --describe).
    #[command(after_help = "Examples:\n  sluice topic describe orders\n  sluice topic describe orders --all-configs --json")]
    Describe {
        name: String,
        /// Show every config, defaults included, with its source.
        #[arg(long)]
        all_configs: bool,
    },
    /// Set or remove topic settings (kafka-configs.sh --alter --entity-type topics).
    #[command(after_help = "Example:\n  sluice topic alter-config orders --set retention.ms=3600000 --delete segment.bytes")]
    AlterConfig {
        name: String,
        /// key=value to set (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE", value_parser = key_value)]
        set: Vec<(String, String)>,
        /// A key to reset to its default (repeatable).
        #[arg(long = "delete", value_name = "KEY")]
        delete: Vec<String>,
    },
    /// Raise a topic's partition count to a new total (kafka-topics.sh --alter --partitions).
    #[command(after_help = "Example (grow `orders` to 12 partitions in all):\n  sluice topic add-partitions orders -p 12")]
    AddPartitions {
        name: String,
        /// The new total number of partitions (as in kafka-topics.sh), more than the current count.
        #[arg(short, long, value_parser = clap::value_parser!(i32).range(1..=PARTITIONS_MAX))]
        partitions: i32,
    },
    /// Delete a topic and all its records (kafka-topics.sh --delete).
    #[command(after_help = "Example:\n  sluice topic delete orders")]
    Delete { name: String },
    /// Delete the records before an offset or a time (kafka-delete-records.sh).
    #[command(after_help = "Examples:\n  sluice topic delete-records orders --partition 0 --offset 1000\n  \
                          sluice topic delete-records orders --before 2024-05-01T00:00:00Z   # every partition\n  \
                          sluice topic delete-records orders --offset -1                      # everything so far")]
    DeleteRecords {
        name: String,
        /// Only this partition [default: every partition].
        #[arg(long)]
        partition: Option<i32>,
        /// Delete records below this offset; -1 means up to the high watermark.
        #[arg(long, allow_negative_numbers = true, required_unless_present = "before", conflicts_with = "before")]
        offset: Option<i64>,
        /// Delete records older than this time (RFC 3339 or epoch ms).
        #[arg(long, value_name = "TIME")]
        before: Option<String>,
    },
    /// Move partitions to other brokers, or cancel a move (kafka-reassign-partitions.sh --execute / --cancel).
    #[command(after_help = "Examples:\n  \
                          sluice topic reassign orders --partition 0 --replicas 2,3 --wait   # move partition 0 to brokers 2 and 3\n  \
                          sluice topic reassign orders --replicas 1,2,3                      # every partition, three replicas\n  \
                          sluice topic reassign orders --partition 0 --cancel\n  \
                          sluice topic reassign --plan plan.json --wait                       # kafka-reassign-partitions.sh's JSON")]
    Reassign {
        /// The topic [not with --plan].
        #[arg(required_unless_present = "plan", conflicts_with = "plan")]
        name: Option<String>,
        /// Only this partition (repeatable) [default: every partition].
        #[arg(long)]
        partition: Vec<i32>,
        /// The target replicas, broker ids separated by commas, the preferred leader first.
        #[arg(long, value_delimiter = ',', num_args = 1.., required_unless_present_any = ["cancel", "plan"], conflicts_with = "cancel")]
        replicas: Option<Vec<i32>>,
        /// Cancel the moves in progress: the partitions keep the replicas they had.
        #[arg(long)]
        cancel: bool,
        /// A plan in kafka-reassign-partitions.sh's JSON: {"version":1,"partitions":[{"topic":…,"partition":…,"replicas":[…]}]}.
        #[arg(long, value_name = "FILE")]
        plan: Option<std::path::PathBuf>,
        /// Wait until the new replicas are in sync and the partitions have moved.
        #[arg(long, conflicts_with = "cancel")]
        wait: bool,
    },
    /// Partitions being moved: replicas, and the brokers being added and removed (kafka-reassign-partitions.sh --list).
    #[command(after_help = "Examples:\n  sluice topic reassignments\n  sluice topic reassignments orders --json")]
    Reassignments {
        /// Only this topic's partitions.
        name: Option<String>,
    },
}

pub(crate) async fn run(cmd: TopicCmd, brokers: &[String], as_json: bool) -> Result<()> {
    match cmd {
        TopicCmd::Create { name, partitions, replicas, configs, if_not_exists } => {
            let client = crate::conn::connect(brokers).await?;
            create(&client, &name, partitions, replicas, &configs, if_not_exists, as_json).await
        }
        TopicCmd::List { internal } => list(&crate::conn::connect(brokers).await?, internal, as_json).await,
        TopicCmd::Describe { name, all_configs } => describe(&crate::conn::connect(brokers).await?, &name, all_configs, as_json).await,
        TopicCmd::AlterConfig { name, set, delete } => {
            if set.is_empty() && delete.is_empty() {
                return usage("nothing to change: give --set key=value and/or --delete key");
            }
            alter_config(&crate::conn::connect(brokers).await?, &name, &set, &delete, as_json).await
        }
        TopicCmd::AddPartitions { name, partitions } => {
            add_partitions(&crate::conn::connect(brokers).await?, &name, partitions, as_json).await
        }
        TopicCmd::Delete { name } => delete(&crate::conn::connect(brokers).await?, &name, as_json).await,
        TopicCmd::DeleteRecords { name, partition, offset, before } => {
            let before = before.as_deref().map(parse_time).transpose()?;
            delete_records(&crate::conn::connect(brokers).await?, &name, partition, offset, before, as_json).await
        }
        TopicCmd::Reassign { name, partition, replicas, cancel, plan, wait } => {
            let client = crate::conn::connect(brokers).await?;
            let moves = crate::reassign::moves(&client, name.as_deref(), &partition, replicas.as_deref(), cancel, plan.as_deref()).await?;
            crate::reassign::reassign(&client, moves, wait, as_json).await
        }
        TopicCmd::Reassignments { name } => crate::reassign::list(&crate::conn::connect(brokers).await?, name.as_deref(), as_json).await,
    }
}

async fn create(
    client: &Client,
    name: &str,
    partitions: Option<i32>,
    replicas: Option<i16>,
    configs: &[(String, String)],
    if_not_exists: bool,
    as_json: bool,
) -> Result<()> {
    let new = NewTopic { name: name.to_string(), partitions, replication_factor: replicas, configs: configs.to_vec() };
    let outcomes = client.create_topics(&[new], ADMIN_TIMEOUT).await?;
    let Some(outcome) = outcomes.into_iter().find(|o| o.name == name) else {
        bail!("CreateTopics returned no result for `{name}`");
    };
    match outcome.error {
        None => {}
        Some(e) if e.code == TOPIC_ALREADY_EXISTS && if_not_exists => {
            if as_json {
                print_json(&json!({"topic": name, "created": false}));
            } else {
                println!("topic `{name}` already exists");
            }
            return Ok(());
        }
        Some(e) if e.code == TOPIC_ALREADY_EXISTS => {
            bail!("topic `{name}` already exists on {} (use --if-not-exists to accept that)", client.bootstrap_addr())
        }
        Some(e) => bail!("creating topic `{name}` failed: {e}"),
    }
    let topic = wait_for_leaders(client, name, None).await?;
    if as_json {
        print_json(&json!({"topic": name, "created": true, "partitions": topic.partitions.len()}));
    } else {
        println!("created topic `{name}` with {} partition(s)", topic.partitions.len());
    }
    Ok(())
}

/// Waits until `name` has (at least `count`) partitions, each with a leader.
async fn wait_for_leaders(client: &Client, name: &str, count: Option<usize>) -> Result<TopicInfo> {
    Ok(client.wait_for_leaders(name, count, LEADERS_TIMEOUT).await?)
}

async fn list(client: &Client, internal: bool, as_json: bool) -> Result<()> {
    let meta = client.metadata(None).await?;
    let topics: Vec<&TopicInfo> = meta.topics.iter().filter(|t| internal || !(t.internal || t.name.starts_with("__"))).collect();
    if as_json {
        let items: Vec<Value> = topics
            .iter()
            .map(|t| {
                json!({
                    "name": t.name,
                    "partitions": t.partitions.len(),
                    "replicas": t.partitions.first().map_or(0, |p| p.replicas.len()),
                    "internal": t.internal,
                })
            })
            .collect();
        print_json(&Value::Array(items));
        return Ok(());
    }
    let mut t = table(["NAME", "PARTITIONS", "REPLICAS"]);
    for topic in topics {
        t.add_row(vec![
            topic.name.clone(),
            topic.partitions.len().to_string(),
            topic.partitions.first().map_or(0, |p| p.replicas.len()).to_string(),
        ]);
    }
    print_table(&t);
    Ok(())
}

async fn describe_configs(client: &Client, name: &str) -> Result<Vec<ConfigEntry>> {
    Ok(client.describe_configs(&ConfigResource::Topic(name.to_string()), None).await?)
}

async fn describe(client: &Client, name: &str, all_configs: bool, as_json: bool) -> Result<()> {
    let topic = client.topic(name).await?;
    let watermarks = client.watermarks(&topic).await?;
    let configs = describe_configs(client, name).await?;
    let ids: Vec<i32> = topic.partitions.iter().map(|p| p.id).collect();
    let moving = crate::reassign::moving_partitions(client, name, &ids).await?;
    let shown: Vec<&ConfigEntry> = configs.iter().filter(|c| all_configs || c.source == ConfigSource::Topic).collect();
    let shown_value = |c: &ConfigEntry| if c.sensitive { Some("(sensitive)".to_string()) } else { c.value.clone() };
    if as_json {
        let partitions: Vec<Value> = topic
            .partitions
            .iter()
            .map(|p| {
                let w = watermarks.get(&p.id);
                json!({
                    "partition": p.id,
                    "leader": p.leader,
                    "replicas": p.replicas,
                    "isr": p.isr,
                    "adding": moving.get(&p.id).map(|m| &m.0),
                    "removing": moving.get(&p.id).map(|m| &m.1),
                    "low_watermark": w.map(|w| w.low),
                    "high_watermark": w.map(|w| w.high),
                    "error": if p.error_code == 0 { Value::Null } else { Value::String(error_label(p.error_code)) },
                })
            })
            .collect();
        let configs: Vec<Value> =
            shown.iter().map(|c| json!({"name": c.name, "value": shown_value(c), "source": c.source.label()})).collect();
        print_json(&json!({"name": topic.name, "internal": topic.internal, "partitions": partitions, "configs": configs}));
        return Ok(());
    }
    println!(
        "Topic: {}  Partitions: {}  Replicas: {}",
        topic.name,
        topic.partitions.len(),
        topic.partitions.first().map_or(0, |p| p.replicas.len())
    );
    println!();
    let mut header = vec!["PARTITION", "LEADER", "REPLICAS", "ISR", "LOW", "HIGH", "RECORDS"];
    // Only while a partition is being moved (sluice topic reassign): which brokers join and leave.
    if !moving.is_empty() {
        header.push("MOVING");
    }
    let mut t = table(header);
    let join = |ids: &[i32]| ids.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(",");
    for p in &topic.partitions {
        let w = watermarks.get(&p.id);
        let mut row = vec![
            p.id.to_string(),
            if p.leader >= 0 { p.leader.to_string() } else { "none".to_string() },
            join(&p.replicas),
            join(&p.isr),
            w.map_or("?".into(), |w| w.low.to_string()),
            w.map_or("?".into(), |w| w.high.to_string()),
            w.map_or("?".into(), |w| (w.high - w.low).to_string()),
        ];
        if !moving.is_empty() {
            row.push(moving.get(&p.id).map_or(String::new(), |(adding, removing)| {
                let mut parts = Vec::new();
                if !adding.is_empty() {
                    parts.push(format!("adding {}", join(adding)));
                }
                if !removing.is_empty() {
                    parts.push(format!("removing {}", join(removing)));
                }
                parts.join("; ")
            }));
        }
        t.add_row(row);
    }
    print_table(&t);
    println!();
    if shown.is_empty() {
        println!("Configs: all defaults (--all-configs shows them)");
    } else {
        let mut t = table(["CONFIG", "VALUE", "SOURCE"]);
        for c in shown {
            t.add_row(vec![c.name.clone(), shown_value(c).unwrap_or_default(), c.source.label().to_string()]);
        }
        print_table(&t);
    }
    Ok(())
}

async fn alter_config(client: &Client, name: &str, set: &[(String, String)], delete: &[String], as_json: bool) -> Result<()> {
    client.topic(name).await?;
    let mut changes: Vec<ConfigChange> = set.iter().map(|(k, v)| ConfigChange::Set(k.clone(), v.clone())).collect();
    changes.extend(delete.iter().map(|k| ConfigChange::Delete(k.clone())));
    client.alter_configs(&ConfigResource::Topic(name.to_string()), &changes).await?;
    if as_json {
        let set: BTreeMap<&str, &str> = set.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        print_json(&json!({"topic": name, "set": set, "deleted": delete}));
    } else {
        println!("updated the configs of topic `{name}`: {} set, {} reset to default", set.len(), delete.len());
    }
    Ok(())
}

async fn add_partitions(client: &Client, name: &str, total: i32, as_json: bool) -> Result<()> {
    let topic = client.topic(name).await?;
    let current = topic.partitions.len();
    if total as usize <= current {
        return usage(format!(
            "topic `{name}` already has {current} partitions; -p is the new total (as in kafka-topics.sh), so it must be more than {current}"
        ));
    }
    client.create_partitions(name, total, ADMIN_TIMEOUT).await?;
    wait_for_leaders(client, name, Some(total as usize)).await?;
    if as_json {
        print_json(&json!({"topic": name, "partitions_before": current, "partitions": total}));
    } else {
        println!("topic `{name}` now has {total} partitions (was {current})");
    }
    Ok(())
}

async fn delete(client: &Client, name: &str, as_json: bool) -> Result<()> {
    client.topic(name).await?;
    for outcome in client.delete_topics(&[name.to_string()], ADMIN_TIMEOUT).await? {
        if let Some(e) = outcome.error {
            bail!("deleting topic `{name}` failed: {e}");
        }
    }
    if as_json {
        print_json(&json!({"topic": name, "deleted": true}));
    } else {
        println!("deleted topic `{name}`");
    }
    Ok(())
}

async fn delete_records(
    client: &Client,
    name: &str,
    partition: Option<i32>,
    offset: Option<i64>,
    before: Option<i64>,
    as_json: bool,
) -> Result<()> {
    let topic = client.topic(name).await?;
    let partitions: Vec<i32> = match partition {
        Some(p) if topic.partitions.iter().any(|tp| tp.id == p) => vec![p],
        Some(p) => return usage(format!("topic `{name}` has no partition {p} (it has {})", topic.partitions.len())),
        None => topic.partitions.iter().map(|p| p.id).collect(),
    };
    let targets: BTreeMap<i32, i64> = match (offset, before) {
        (Some(o), _) if o < -1 => return usage(format!("--offset {o}: use an offset ≥ 0, or -1 for the high watermark")),
        (Some(o), _) => partitions.iter().map(|&p| (p, o)).collect(),
        (None, Some(ts)) => {
            let by_time = client.list_offsets_all(&topic, &partitions, OffsetSpec::Timestamp(ts)).await?;
            let latest = client.list_offsets_all(&topic, &partitions, OffsetSpec::Latest).await?;
            // No record at or after the time means every record is older: delete up to the end.
            by_time.iter().map(|(&p, &o)| (p, if o < 0 { latest.get(&p).copied().unwrap_or(-1) } else { o })).collect()
        }
        (None, None) => return usage("give --offset O or --before TIME"),
    };
    let results = client.delete_records(&topic, &targets, ADMIN_TIMEOUT).await?;
    if as_json {
        let items: Vec<Value> = results.iter().map(|(p, low)| json!({"partition": p, "low_watermark": low})).collect();
        print_json(&json!({"topic": name, "partitions": items}));
    } else {
        let mut t = table(["PARTITION", "LOW WATERMARK"]);
        for (p, low) in &results {
            t.add_row(vec![p.to_string(), low.to_string()]);
        }
        print_table(&t);
    }
    Ok(())
}
