//! `sluice cluster info`: brokers, controller and cluster id from Metadata, the APIs the bootstrap broker
//! supports, and the admin API's `/health` and `/v1/cluster` (the controller quorum and the brokers
//! registered with it) when `--admin-url` answers (a Kafka broker has none; that is reported, not an
//! error). `sluice cluster elect-leaders`: preferred leader election (Kafka's ElectLeaders, as
//! `kafka-leader-election.sh --election-type PREFERRED` sends it).

use anyhow::Result;
use clap::Args;
use serde_json::{Value, json};

use crate::http;
use crate::output::{print_json, print_table, table};

#[derive(Debug, Args)]
pub struct ClusterArgs {
    #[command(flatten)]
    pub common: crate::Common,
    #[command(subcommand)]
    pub cmd: ClusterCmd,
}

#[derive(Debug, clap::Subcommand)]
pub enum ClusterCmd {
    /// Brokers, controller, cluster id, topic count and admin-API health.
    #[command(after_help = "Examples:\n  sluice cluster info\n  sluice --profile prod cluster info --json")]
    Info,
    /// Moves leadership back to each partition's preferred replica (the first), where it is in sync.
    #[command(
        name = "elect-leaders",
        after_help = "Examples:\n  sluice cluster elect-leaders                  # every partition\n  \
                      sluice cluster elect-leaders --topic orders --partition 0 --partition 3"
    )]
    ElectLeaders {
        /// Only this topic's partitions (all of them unless --partition is given).
        #[arg(long)]
        topic: Option<String>,
        /// Only these partitions of --topic.
        #[arg(long, requires = "topic")]
        partition: Vec<i32>,
    },
}

pub(crate) async fn run(cmd: ClusterCmd, brokers: &[String], admin_url: &str, as_json: bool) -> Result<()> {
    let client = crate::conn::connect(brokers).await?;
    if let ClusterCmd::ElectLeaders { topic, partition } = cmd {
        return elect_leaders(&client, topic, partition, as_json).await;
    }
    let meta = client.metadata(None).await?;
    let api_count = client.apis().len();
    let health = match http::get(admin_url, "/health").await {
        Ok((200, body)) => Ok(serde_json::from_str::<Value>(&body).unwrap_or(Value::String(body))),
        Ok((status, body)) => Err(format!("HTTP {status}: {}", body.trim())),
        Err(e) => Err(format!("{e:#}")),
    };
    // The controller quorum and registered brokers, from the admin API (a Kafka broker has none).
    let quorum = match http::get(admin_url, "/v1/cluster").await {
        Ok((200, body)) => serde_json::from_str::<Value>(&body).ok(),
        _ => None,
    };
    if as_json {
        let brokers: Vec<Value> = meta
            .brokers
            .iter()
            .map(|b| json!({"id": b.id, "host": b.host, "port": b.port, "rack": b.rack, "controller": b.id == meta.controller_id}))
            .collect();
        let admin = match &health {
            Ok(body) => json!({"url": admin_url, "reachable": true, "health": body}),
            Err(e) => json!({"url": admin_url, "reachable": false, "error": e}),
        };
        print_json(&json!({
            "bootstrap": client.bootstrap_addr(),
            "cluster_id": meta.cluster_id,
            "controller_id": meta.controller_id,
            "brokers": brokers,
            "topics": meta.topics.len(),
            "apis_supported": api_count,
            "admin": admin,
            "quorum": quorum,
        }));
        return Ok(());
    }
    println!("Cluster id:  {}", meta.cluster_id.as_deref().unwrap_or("(not reported)"));
    println!("Controller:  {}", meta.controller_id);
    println!("Bootstrap:   {} ({api_count} APIs supported)", client.bootstrap_addr());
    println!("Topics:      {}", meta.topics.len());
    match &health {
        Ok(body) => println!("Admin API:   {admin_url} — {}", body.get("status").and_then(Value::as_str).unwrap_or("ok")),
        Err(e) => println!("Admin API:   {admin_url} — unreachable ({e})"),
    }
    println!();
    let mut t = table(["ID", "HOST", "PORT", "RACK", "CONTROLLER"]);
    for b in &meta.brokers {
        t.add_row(vec![
            b.id.to_string(),
            b.host.clone(),
            b.port.to_string(),
            b.rack.clone().unwrap_or_else(|| "-".into()),
            if b.id == meta.controller_id { "yes".into() } else { String::new() },
        ]);
    }
    print_table(&t);
    if let Some(quorum) = &quorum {
        print_quorum(quorum);
    }
    Ok(())
}

/// The controller quorum as the admin API's node sees it, and the brokers registered with it.
fn print_quorum(quorum: &Value) {
    let controller = &quorum["controller"];
    let id = |v: &Value| v.as_u64().map_or_else(|| "none".to_string(), |n| n.to_string());
    let voters: Vec<String> = controller["voters"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| match v["addr"].as_str() {
            Some(addr) if !addr.is_empty() => format!("{}@{addr}", id(&v["id"])),
            _ => id(&v["id"]),
        })
        .collect();
    println!();
    println!(
        "Quorum:      leader {}, term {}; node {} is {}; voters {}",
        id(&controller["leader_id"]),
        controller["term"],
        id(&controller["node_id"]),
        controller["role"].as_str().unwrap_or("?"),
        voters.join(", ")
    );
    let p = &quorum["partitions"];
    if p.is_object() {
        println!(
            "Partitions:  {} in {} topics; {} leaderless, {} under-replicated",
            p["partitions"], p["topics"], p["leaderless"], p["under_replicated"]
        );
    }
    let mut t = table(["REGISTERED", "HOST", "PORT", "EPOCH", "STATE"]);
    for b in quorum["brokers"].as_array().into_iter().flatten() {
        let text = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_string);
        t.add_row(vec![text(&b["id"]), text(&b["host"]), text(&b["port"]), text(&b["epoch"]), text(&b["state"])]);
    }
    print_table(&t);
}

/// ElectLeaders (PREFERRED) for every partition, one topic's, or some of one topic's; prints each
/// partition's result. Exits non-zero when a named partition could not be given to its preferred
/// replica (ELECTION_NOT_NEEDED is success).
async fn elect_leaders(client: &sluice_client::Client, topic: Option<String>, partitions: Vec<i32>, as_json: bool) -> Result<()> {
    use kafka_protocol::ResponseError;
    use kafka_protocol::messages::elect_leaders_request::TopicPartitions;
    use kafka_protocol::messages::{ElectLeadersRequest, TopicName};
    use kafka_protocol::protocol::StrBytes;

    let named = match topic {
        None => None,
        Some(name) => {
            let partitions = if partitions.is_empty() {
                let meta = client.metadata(Some(std::slice::from_ref(&name))).await?;
                let Some(found) = meta.topic(&name).filter(|t| t.error_code == 0) else { anyhow::bail!("topic `{name}` does not exist") };
                found.partitions.iter().map(|p| p.id).collect()
            } else {
                partitions
            };
            Some(vec![TopicPartitions::default().with_topic(TopicName(StrBytes::from_string(name))).with_partitions(partitions)])
        }
    };
    let request = ElectLeadersRequest::default().with_election_type(0).with_topic_partitions(named).with_timeout_ms(30_000);
    let response = client.call(&request, 2).await?;
    if let Some(error) = ResponseError::try_from_code(response.error_code) {
        anyhow::bail!("the election was refused: {error}");
    }
    let mut rows = Vec::new();
    for topic in &response.replica_election_results {
        for p in &topic.partition_result {
            let outcome = match ResponseError::try_from_code(p.error_code) {
                None => "elected".to_string(),
                Some(ResponseError::ElectionNotNeeded) => "already led by its preferred replica".to_string(),
                Some(error) => p.error_message.as_ref().map_or_else(|| error.to_string(), |m| format!("{error}: {m}")),
            };
            let ok = matches!(ResponseError::try_from_code(p.error_code), None | Some(ResponseError::ElectionNotNeeded));
            rows.push((topic.topic.0.to_string(), p.partition_id, ok, outcome));
        }
    }
    rows.sort();
    if as_json {
        let results: Vec<Value> =
            rows.iter().map(|(t, p, ok, outcome)| json!({"topic": t, "partition": p, "ok": ok, "result": outcome})).collect();
        print_json(&json!({ "results": results }));
    } else if rows.is_empty() {
        println!("Every partition is led by its preferred replica.");
    } else {
        let mut t = table(["TOPIC", "PARTITION", "RESULT"]);
        for (topic, partition, _, outcome) in &rows {
            t.add_row(vec![topic.clone(), partition.to_string(), outcome.clone()]);
        }
        print_table(&t);
    }
    let failed = rows.iter().filter(|(_, _, ok, _)| !ok).count();
    if failed > 0 {
        anyhow::bail!("{failed} partition(s) could not be given to their preferred replica");
    }
    Ok(())
}
