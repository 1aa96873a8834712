//! `sluice topic reassign` and `sluice topic reassignments`: moving partitions between brokers with
//! KIP-455's AlterPartitionReassignments and ListPartitionReassignments, the jobs of
//! `kafka-reassign-partitions.sh --execute | --verify | --cancel`. A plan file in that tool's JSON
//! format is accepted as it is.

use std::collections::{BTreeMap, BTreeSet};
use std::io::IsTerminal;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use kafka_protocol::messages::alter_partition_reassignments_request::{ReassignablePartition, ReassignableTopic};
use kafka_protocol::messages::list_partition_reassignments_request::ListPartitionReassignmentsTopics;
use kafka_protocol::messages::{AlterPartitionReassignmentsRequest, BrokerId, ListPartitionReassignmentsRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use serde::Deserialize;
use serde_json::{Value, json};
use sluice_client::Client;
use sluice_client::codes::error_label;

use crate::exit::usage;
use crate::output::{print_json, print_table, table};

/// The largest plan file read (a plan for 100,000 partitions is a few MB).
const PLAN_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// How often `--wait` asks how the copy is going.
const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// One partition's move: its topic, index and target replicas (`None`: cancel).
type Move = (String, i32, Option<Vec<i32>>);

/// kafka-reassign-partitions.sh's plan: `{"version":1,"partitions":[{"topic":…,"partition":…,"replicas":[…]}]}`.
#[derive(Deserialize)]
struct Plan {
    partitions: Vec<PlanEntry>,
}

#[derive(Deserialize)]
struct PlanEntry {
    topic: String,
    partition: i32,
    replicas: Vec<i32>,
}

/// The moves a command line asks for: `--plan FILE`, or `topic` with `--partition`s (every
/// partition when none is given) and `--replicas` or `--cancel`.
pub(crate) async fn moves(
    client: &Client,
    topic: Option<&str>,
    partitions: &[i32],
    replicas: Option<&[i32]>,
    cancel: bool,
    plan: Option<&Path>,
) -> Result<Vec<Move>> {
    if let Some(path) = plan {
        let size = std::fs::metadata(path).with_context(|| format!("cannot read the plan {}", path.display()))?.len();
        if size > PLAN_BYTES_MAX {
            return usage(format!("the plan {} is {size} bytes; at most {PLAN_BYTES_MAX} are read", path.display()));
        }
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read the plan {}", path.display()))?;
        let plan: Plan = match serde_json::from_str(&text) {
            Ok(plan) => plan,
            Err(error) => return usage(format!("the plan {} is not a reassignment plan: {error}", path.display())),
        };
        if plan.partitions.is_empty() {
            return usage("the plan names no partition");
        }
        return Ok(plan.partitions.into_iter().map(|p| (p.topic, p.partition, (!cancel).then_some(p.replicas))).collect());
    }
    let Some(topic) = topic else { return usage("name a topic, or give --plan FILE") };
    if replicas.is_none() && !cancel {
        return usage("give --replicas BROKER,… (the target replicas, preferred leader first) or --cancel");
    }
    let partitions: Vec<i32> =
        if partitions.is_empty() { client.topic(topic).await?.partitions.iter().map(|p| p.id).collect() } else { partitions.to_vec() };
    Ok(partitions.into_iter().map(|p| (topic.to_string(), p, replicas.map(<[i32]>::to_vec))).collect())
}

/// Sends the moves; prints each partition's result; with `wait`, follows the copy until every
/// started move has completed. Fails when a partition was refused.
pub(crate) async fn reassign(client: &Client, moves: Vec<Move>, wait: bool, as_json: bool) -> Result<()> {
    let mut by_topic: BTreeMap<String, Vec<ReassignablePartition>> = std::collections::BTreeMap::new();
    for (topic, partition, target) in &moves {
        let replicas = target.as_ref().map(|r| r.iter().copied().map(BrokerId).collect());
        by_topic
            .entry(topic.clone())
            .or_default()
            .push(ReassignablePartition::default().with_partition_index(*partition).with_replicas(replicas));
    }
    let topics = by_topic
        .into_iter()
        .map(|(name, partitions)| {
            ReassignableTopic::default().with_name(TopicName(StrBytes::from_string(name))).with_partitions(partitions)
        })
        .collect();
    let request = AlterPartitionReassignmentsRequest::default()
        .with_timeout_ms(30_000)
        .with_allow_replication_factor_change(true)
        .with_topics(topics);
    let response = client.call(&request, 1).await?;
    if response.error_code != 0 {
        let message = response.error_message.as_ref().map_or_else(String::new, |m| format!(": {m}"));
        bail!("the reassignment was refused: {}{message}", error_label(response.error_code));
    }
    let mut rows = Vec::new();
    for topic in &response.responses {
        for p in &topic.partitions {
            let outcome = match p.error_code {
                0 => Ok(()),
                code => Err(p.error_message.as_ref().map_or_else(|| error_label(code), |m| format!("{}: {m}", error_label(code)))),
            };
            rows.push((topic.name.0.to_string(), p.partition_index, outcome));
        }
    }
    rows.sort();
    let cancel = moves.iter().all(|(_, _, target)| target.is_none());
    let started: Vec<(String, i32)> = rows.iter().filter(|(_, _, r)| r.is_ok()).map(|(t, p, _)| (t.clone(), *p)).collect();
    let failed = rows.iter().filter(|(_, _, r)| r.is_err()).count();
    if !as_json {
        let mut t = table(["TOPIC", "PARTITION", "RESULT"]);
        for (topic, partition, outcome) in &rows {
            let text = match outcome {
                Ok(()) if cancel => "cancelled".to_string(),
                Ok(()) => "accepted".to_string(),
                Err(message) => message.clone(),
            };
            t.add_row(vec![topic.clone(), partition.to_string(), text]);
        }
        print_table(&t);
    }
    let waited = if wait && !cancel && !started.is_empty() { Some(wait_for(client, &started, as_json).await?) } else { None };
    if as_json {
        let results: Vec<Value> =
            rows.iter().map(|(t, p, r)| json!({"topic": t, "partition": p, "ok": r.is_ok(), "error": r.as_ref().err()})).collect();
        print_json(&json!({"results": results, "completed_in_ms": waited.map(|d| d.as_millis() as u64)}));
    } else if let Some(elapsed) = waited {
        println!("Every accepted partition has its new replicas ({:.1} s).", elapsed.as_secs_f64());
    } else if !cancel && !started.is_empty() {
        println!("The new replicas are copying; `sluice topic reassignments` shows the moves in progress.");
    }
    if failed > 0 {
        bail!("{failed} partition(s) were refused");
    }
    Ok(())
}

/// One partition's move in progress: topic, partition, replicas, adding, removing.
pub(crate) type Moving = (String, i32, Vec<i32>, Vec<i32>, Vec<i32>);

/// The moves in progress of `topic`'s partitions, by partition: (adding, removing). Empty when the
/// broker does not support ListPartitionReassignments.
pub(crate) async fn moving_partitions(client: &Client, topic: &str, partitions: &[i32]) -> Result<BTreeMap<i32, (Vec<i32>, Vec<i32>)>> {
    if client.apis().range(kafka_protocol::messages::ApiKey::ListPartitionReassignments).is_none() || partitions.is_empty() {
        return Ok(BTreeMap::new());
    }
    let named: Vec<(String, i32)> = partitions.iter().map(|&p| (topic.to_string(), p)).collect();
    Ok(in_progress(client, Some(&named)).await?.into_iter().map(|(_, p, _, adding, removing)| (p, (adding, removing))).collect())
}

/// The moves in progress among `named` (all when `None`).
async fn in_progress(client: &Client, named: Option<&[(String, i32)]>) -> Result<Vec<Moving>> {
    let topics = named.map(|list| {
        let mut by_topic: BTreeMap<&str, Vec<i32>> = std::collections::BTreeMap::new();
        for (topic, partition) in list {
            by_topic.entry(topic.as_str()).or_default().push(*partition);
        }
        by_topic
            .into_iter()
            .map(|(name, partitions)| {
                ListPartitionReassignmentsTopics::default()
                    .with_name(TopicName(StrBytes::from_string(name.to_string())))
                    .with_partition_indexes(partitions)
            })
            .collect()
    });
    let request = ListPartitionReassignmentsRequest::default().with_timeout_ms(30_000).with_topics(topics);
    let response = client.call(&request, 0).await?;
    if response.error_code != 0 {
        bail!("listing reassignments failed: {}", error_label(response.error_code));
    }
    let ids = |list: &[BrokerId]| list.iter().map(|b| b.0).collect::<Vec<i32>>();
    let mut found = Vec::new();
    for topic in &response.topics {
        for p in &topic.partitions {
            found.push((topic.name.0.to_string(), p.partition_index, ids(&p.replicas), ids(&p.adding_replicas), ids(&p.removing_replicas)));
        }
    }
    found.sort();
    Ok(found)
}

/// Polls until none of `named` is moving; a spinner on a terminal says how many still are.
async fn wait_for(client: &Client, named: &[(String, i32)], quiet: bool) -> Result<Duration> {
    let started = Instant::now();
    let spinner = (!quiet && std::io::stderr().is_terminal()).then(|| {
        let bar = ProgressBar::new_spinner()
            .with_style(ProgressStyle::with_template("{spinner} {msg} ({elapsed})").unwrap_or_else(|_| ProgressStyle::default_spinner()));
        bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        bar
    });
    loop {
        let moving = in_progress(client, Some(named)).await?;
        if moving.is_empty() {
            if let Some(bar) = &spinner {
                bar.finish_and_clear();
            }
            return Ok(started.elapsed());
        }
        if let Some(bar) = &spinner {
            let adding: BTreeSet<i32> = moving.iter().flat_map(|m| m.3.iter().copied()).collect();
            bar.set_message(format!("{} of {} partitions copying to brokers {adding:?}", moving.len(), named.len()));
            bar.tick();
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// `sluice topic reassignments`: the moves in progress, of one topic or all.
pub(crate) async fn list(client: &Client, topic: Option<&str>, as_json: bool) -> Result<()> {
    let named: Option<Vec<(String, i32)>> = match topic {
        Some(name) => Some(client.topic(name).await?.partitions.iter().map(|p| (name.to_string(), p.id)).collect()),
        None => None,
    };
    let moving = in_progress(client, named.as_deref()).await?;
    if as_json {
        let list: Vec<Value> = moving
            .iter()
            .map(|(t, p, replicas, adding, removing)| {
                json!({"topic": t, "partition": p, "replicas": replicas, "adding": adding, "removing": removing})
            })
            .collect();
        print_json(&json!({ "reassignments": list }));
        return Ok(());
    }
    if moving.is_empty() {
        println!("No partition is being reassigned.");
        return Ok(());
    }
    let join = |ids: &[i32]| ids.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(",");
    let mut t = table(["TOPIC", "PARTITION", "REPLICAS", "ADDING", "REMOVING"]);
    for (topic, partition, replicas, adding, removing) in &moving {
        t.add_row(vec![topic.clone(), partition.to_string(), join(replicas), join(adding), join(removing)]);
    }
    print_table(&t);
    Ok(())
}
