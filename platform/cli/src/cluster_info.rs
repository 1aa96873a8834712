//! `sluice cluster info`: brokers, controller and cluster id from Metadata, the APIs the bootstrap broker
//! supports, and the admin API's `/health` when `--admin-url` answers (a Kafka broker has none; that is
//! reported, not an error).

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
}

pub(crate) async fn run(_cmd: ClusterCmd, brokers: &[String], admin_url: &str, as_json: bool) -> Result<()> {
    let client = crate::conn::connect(brokers).await?;
    let meta = client.metadata(None).await?;
    let api_count = client.apis().len();
    let health = match http::get(admin_url, "/health").await {
        Ok((200, body)) => Ok(serde_json::from_str::<Value>(&body).unwrap_or(Value::String(body))),
        Ok((status, body)) => Err(format!("HTTP {status}: {}", body.trim())),
        Err(e) => Err(format!("{e:#}")),
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
    Ok(())
}
