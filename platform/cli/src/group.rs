//! `sluice group …`: list, describe (members, assignments, committed offsets and lag), reset-offsets and
//! delete — the jobs of `kafka-consumer-groups.sh`, over ListGroups, DescribeGroups, OffsetFetch,
//! ListOffsets, OffsetCommit and DeleteGroups.

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use clap::{ArgGroup, Args, Subcommand};
use serde_json::{Value, json};
use sluice_client::codes::{self, GROUP_ID_NOT_FOUND, NON_EMPTY_GROUP};
use sluice_client::group::{commit_offsets, decode_assignment, fetch_offsets};
use sluice_client::{Client, ClientError, GroupDescription, OffsetSpec};

use crate::exit::usage;
use crate::output::{print_json, print_table, table, time_arg};

#[derive(Debug, Args)]
pub struct GroupArgs {
    #[command(flatten)]
    pub common: crate::Common,
    #[command(subcommand)]
    pub cmd: GroupCmd,
}

#[derive(Debug, Subcommand)]
pub enum GroupCmd {
    /// List consumer groups with their state (kafka-consumer-groups.sh --list).
    #[command(after_help = "Example:\n  sluice group list")]
    List,
    /// Members, assignments, committed offsets, end offsets and lag per partition (kafka-consumer-groups.sh --describe).
    #[command(
        after_help = "Examples:\n  sluice group describe billing\n  sluice group describe billing --json | jq '.partitions[] | select(.lag > 0)'"
    )]
    Describe { group: String },
    /// Move a group's committed offsets (kafka-consumer-groups.sh --reset-offsets). The group must have no active members.
    #[command(
        group(ArgGroup::new("to").required(true).args(["to_earliest", "to_latest", "to_datetime", "to_offset", "shift_by"])),
        after_help = "Examples:\n  sluice group reset-offsets billing --topic orders --to-earliest --dry-run\n  \
                      sluice group reset-offsets billing --topic orders --to-datetime 2024-05-01T00:00:00Z\n  \
                      sluice group reset-offsets billing --topic orders --shift-by -100"
    )]
    ResetOffsets {
        group: String,
        /// The topic whose offsets move.
        #[arg(long)]
        topic: String,
        /// Only these partitions (repeatable or comma separated) [default: all].
        #[arg(long = "partition", value_delimiter = ',')]
        partitions: Vec<i32>,
        /// To the earliest offset still in the log.
        #[arg(long)]
        to_earliest: bool,
        /// To the end of the log (skip everything so far).
        #[arg(long)]
        to_latest: bool,
        /// To the first record at or after this time (RFC 3339 or epoch ms).
        #[arg(long, value_name = "TIME", value_parser = time_arg)]
        to_datetime: Option<i64>,
        /// To this offset (clamped to the log's range).
        #[arg(long)]
        to_offset: Option<i64>,
        /// Move by N (negative: back), from the committed offset (the earliest where none), clamped to the log.
        #[arg(long, allow_negative_numbers = true, value_name = "N")]
        shift_by: Option<i64>,
        /// Print the plan without committing it.
        #[arg(long)]
        dry_run: bool,
    },
    /// Delete an empty group and its committed offsets (kafka-consumer-groups.sh --delete).
    #[command(after_help = "Example:\n  sluice group delete billing")]
    Delete { group: String },
}

pub(crate) async fn run(cmd: GroupCmd, brokers: &[String], as_json: bool) -> Result<()> {
    let client = crate::conn::connect(brokers).await?;
    match cmd {
        GroupCmd::List => list(&client, as_json).await,
        GroupCmd::Describe { group } => describe(&client, &group, as_json).await,
        GroupCmd::ResetOffsets { group, topic, partitions, to_earliest, to_latest, to_datetime, to_offset, shift_by, dry_run } => {
            let target = match (to_earliest, to_latest, to_datetime, to_offset, shift_by) {
                (true, ..) => Target::Earliest,
                (_, true, ..) => Target::Latest,
                (_, _, Some(ts), ..) => Target::Time(ts),
                (_, _, _, Some(o), _) => Target::Offset(o),
                (.., Some(n)) => Target::Shift(n),
                _ => return usage("give one of --to-earliest, --to-latest, --to-datetime, --to-offset, --shift-by"),
            };
            reset_offsets(&client, &group, &topic, &partitions, target, dry_run, as_json).await
        }
        GroupCmd::Delete { group } => delete(&client, &group, as_json).await,
    }
}

async fn list(client: &Client, as_json: bool) -> Result<()> {
    let groups: Vec<(String, String, String)> =
        client.list_all_groups().await?.into_iter().map(|g| (g.group_id, g.state, g.protocol_type)).collect();
    if as_json {
        let items: Vec<Value> = groups
            .iter()
            .map(|(id, state, kind)| json!({"group": id, "state": if state.is_empty() { Value::Null } else { json!(state) }, "protocol_type": kind}))
            .collect();
        print_json(&Value::Array(items));
        return Ok(());
    }
    let mut t = table(["GROUP", "STATE", "PROTOCOL TYPE"]);
    for (id, state, kind) in groups {
        t.add_row(vec![id, if state.is_empty() { "?".into() } else { state }, kind]);
    }
    print_table(&t);
    Ok(())
}

async fn describe_group(client: &Client, coordinator: &str, group: &str) -> Result<GroupDescription> {
    match client.describe_group(coordinator, group).await {
        Err(e) if e.kafka_code() == Some(GROUP_ID_NOT_FOUND) => bail!("consumer group `{group}` does not exist (see `sluice group list`)"),
        other => Ok(other?),
    }
}

/// One row of `group describe`.
struct PartitionRow {
    topic: String,
    partition: i32,
    committed: Option<i64>,
    end: Option<i64>,
    member: Option<(String, String, String)>,
}

async fn describe(client: &Client, group: &str, as_json: bool) -> Result<()> {
    let coordinator = client.find_coordinator(group).await?;
    let described = describe_group(client, &coordinator, group).await?;
    let offsets = fetch_offsets(client, &coordinator, group, None).await?;
    let state = described.state.clone();
    if (state == "Dead" || state.is_empty()) && offsets.is_empty() && described.members.is_empty() {
        bail!("consumer group `{group}` does not exist on {} (see `sluice group list`)", client.bootstrap_addr());
    }
    // Partition → (member id, client id, host) from the members' assignments.
    let mut owners: BTreeMap<(String, i32), (String, String, String)> = BTreeMap::new();
    let mut members_json = Vec::new();
    for m in &described.members {
        let assignment =
            if described.protocol_type == "consumer" { decode_assignment(&m.assignment).unwrap_or_default() } else { BTreeMap::new() };
        for (topic, partitions) in &assignment {
            for p in partitions {
                owners.insert((topic.clone(), *p), (m.member_id.clone(), m.client_id.clone(), m.host.clone()));
            }
        }
        members_json.push(json!({
            "member_id": m.member_id,
            "client_id": m.client_id,
            "host": m.host,
            "assignment": assignment,
        }));
    }
    let mut topics: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for (topic, partitions) in &offsets {
        topics.entry(topic.clone()).or_default().extend(partitions.keys());
    }
    for (topic, p) in owners.keys() {
        topics.entry(topic.clone()).or_default().push(*p);
    }
    let mut rows = Vec::new();
    for (topic, mut partitions) in topics {
        partitions.sort_unstable();
        partitions.dedup();
        // A committed offset can outlive its topic; show it without an end offset then.
        let ends = match client.topic(&topic).await {
            Ok(info) => {
                let wanted: BTreeMap<i32, OffsetSpec> =
                    partitions.iter().filter(|p| info.partition(**p).is_some()).map(|&p| (p, OffsetSpec::Latest)).collect();
                client.list_offsets(&info, &wanted).await?
            }
            Err(_) => BTreeMap::new(),
        };
        for p in partitions {
            rows.push(PartitionRow {
                committed: offsets.get(&topic).and_then(|o| o.get(&p)).copied(),
                end: ends.get(&p).copied(),
                member: owners.get(&(topic.clone(), p)).cloned(),
                topic: topic.clone(),
                partition: p,
            });
        }
    }
    let lag = |r: &PartitionRow| match (r.committed, r.end) {
        (Some(c), Some(e)) => Some((e - c).max(0)),
        _ => None,
    };
    if as_json {
        let partitions: Vec<Value> = rows
            .iter()
            .map(|r| {
                json!({
                    "topic": r.topic,
                    "partition": r.partition,
                    "committed_offset": r.committed,
                    "end_offset": r.end,
                    "lag": lag(r),
                    "member_id": r.member.as_ref().map(|m| m.0.clone()),
                    "client_id": r.member.as_ref().map(|m| m.1.clone()),
                    "host": r.member.as_ref().map(|m| m.2.clone()),
                })
            })
            .collect();
        print_json(&json!({
            "group": group,
            "state": state,
            "protocol_type": described.protocol_type,
            "protocol": described.protocol,
            "members": members_json,
            "partitions": partitions,
            "total_lag": rows.iter().filter_map(lag).sum::<i64>(),
        }));
        return Ok(());
    }
    let assignor = if described.protocol.is_empty() { "-" } else { described.protocol.as_str() };
    println!("Group: {group}  State: {state}  Members: {}  Assignor: {assignor}", described.members.len());
    println!();
    let mut t = table(["TOPIC", "PARTITION", "CURRENT-OFFSET", "LOG-END-OFFSET", "LAG", "CONSUMER-ID", "HOST", "CLIENT-ID"]);
    let dash = || "-".to_string();
    for r in &rows {
        t.add_row(vec![
            r.topic.clone(),
            r.partition.to_string(),
            r.committed.map_or_else(dash, |c| c.to_string()),
            r.end.map_or_else(dash, |e| e.to_string()),
            lag(r).map_or_else(dash, |l| l.to_string()),
            r.member.as_ref().map_or_else(dash, |m| m.0.clone()),
            r.member.as_ref().map_or_else(dash, |m| m.2.clone()),
            r.member.as_ref().map_or_else(dash, |m| m.1.clone()),
        ]);
    }
    print_table(&t);
    Ok(())
}

#[derive(Debug, Clone, Copy)]
enum Target {
    Earliest,
    Latest,
    Time(i64),
    Offset(i64),
    Shift(i64),
}

async fn reset_offsets(
    client: &Client,
    group: &str,
    topic_name: &str,
    only: &[i32],
    target: Target,
    dry_run: bool,
    as_json: bool,
) -> Result<()> {
    let topic = client.topic(topic_name).await?;
    let partitions: Vec<i32> = if only.is_empty() { topic.partitions.iter().map(|p| p.id).collect() } else { only.to_vec() };
    for p in &partitions {
        if !topic.partitions.iter().any(|tp| tp.id == *p) {
            return usage(format!("topic `{topic_name}` has no partition {p} (it has {})", topic.partitions.len()));
        }
    }
    let coordinator = client.find_coordinator(group).await?;
    // A group the coordinator cannot describe has no members to protect; the commit below says more.
    let described = match client.describe_group(&coordinator, group).await {
        Err(e) if e.kafka_code().is_some() => None,
        other => Some(other?),
    };
    if let Some(g) = described
        && !g.members.is_empty()
    {
        bail!(
            "group `{group}` has {} active member(s) (state {}); offsets can only be reset while it is empty — \
             stop its consumers first (as kafka-consumer-groups.sh requires), then retry",
            g.members.len(),
            g.state
        );
    }
    let low = client.list_offsets_all(&topic, &partitions, OffsetSpec::Earliest).await?;
    let high = client.list_offsets_all(&topic, &partitions, OffsetSpec::Latest).await?;
    let current = fetch_offsets(client, &coordinator, group, Some(&BTreeMap::from([(topic_name.to_string(), partitions.clone())])))
        .await?
        .remove(topic_name)
        .unwrap_or_default();
    let by_time = match target {
        Target::Time(ts) => client.list_offsets_all(&topic, &partitions, OffsetSpec::Timestamp(ts)).await?,
        _ => BTreeMap::new(),
    };
    let mut plan: BTreeMap<i32, i64> = BTreeMap::new();
    for &p in &partitions {
        let (lo, hi) = (low.get(&p).copied().unwrap_or(0), high.get(&p).copied().unwrap_or(0));
        let wanted = match target {
            Target::Earliest => lo,
            Target::Latest => hi,
            Target::Time(_) => by_time.get(&p).copied().filter(|o| *o >= 0).unwrap_or(hi),
            Target::Offset(o) => o,
            Target::Shift(n) => current.get(&p).copied().unwrap_or(lo).saturating_add(n),
        };
        plan.insert(p, wanted.clamp(lo, hi.max(lo)));
    }
    if !dry_run {
        let offsets = BTreeMap::from([(topic_name.to_string(), plan.clone())]);
        match commit_offsets(client, &coordinator, group, -1, "", &offsets).await {
            // Members joined since the check above.
            Err(e @ ClientError::Kafka { .. })
                if matches!(e.kafka_code(), Some(codes::UNKNOWN_MEMBER_ID | codes::ILLEGAL_GENERATION | codes::REBALANCE_IN_PROGRESS)) =>
            {
                bail!("{e} (the group has active members; stop them first)")
            }
            other => other?,
        }
    }
    if as_json {
        let rows: Vec<Value> = plan
            .iter()
            .map(|(p, new)| json!({"topic": topic_name, "partition": p, "previous_offset": current.get(p), "new_offset": new}))
            .collect();
        print_json(&json!({"group": group, "dry_run": dry_run, "partitions": rows}));
    } else {
        let mut t = table(["TOPIC", "PARTITION", "PREVIOUS-OFFSET", "NEW-OFFSET"]);
        for (p, new) in &plan {
            t.add_row(vec![topic_name.to_string(), p.to_string(), current.get(p).map_or("-".into(), |c| c.to_string()), new.to_string()]);
        }
        print_table(&t);
        if dry_run {
            println!("\n(dry run: nothing committed; run again without --dry-run to apply)");
        }
    }
    Ok(())
}

async fn delete(client: &Client, group: &str, as_json: bool) -> Result<()> {
    let coordinator = client.find_coordinator(group).await?;
    for outcome in client.delete_groups(&coordinator, &[group.to_string()]).await? {
        match outcome.error {
            None => {}
            Some(e) if e.code == NON_EMPTY_GROUP => {
                bail!("group `{group}` still has active members; stop its consumers first, then delete it")
            }
            Some(e) if e.code == GROUP_ID_NOT_FOUND => bail!("consumer group `{group}` does not exist (see `sluice group list`)"),
            Some(e) => bail!("deleting group `{group}` failed: {e}"),
        }
    }
    if as_json {
        print_json(&json!({"group": group, "deleted": true}));
    } else {
        println!("deleted group `{group}`");
    }
    Ok(())
}
