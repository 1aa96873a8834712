//! The Sluice broker: a Kafka-protocol server over the `sluice-storage` log, one node of a cluster
//! whose controller quorum (`sluice-cluster`) places topics and elects partition leaders.
//!
//! Layout, in the order a request meets it:
//! - `server`: the accept loop and each connection's read → dispatch → write pipeline.
//! - `sluice_protocol` (its own crate): framing limits and request/response codecs.
//! - `handlers`: one module per group of Kafka APIs; they check bounds and call the broker.
//! - `broker`: shared state and control-plane operations (topics), and how the parts are wired.
//! - `cluster`: the broker's side of the controller quorum: topic changes as commands, and the
//!   reconciler that applies the quorum's topics and partition leadership to this broker.
//! - `topic`: the topic registry, topics and partitions around the storage log: high watermark,
//!   group commit.
//! - `groups` and `offsets`: the consumer-group coordinator and durable committed offsets.
//! - `transactions`: the transaction coordinator.
//! - [`host`]: what in-broker runtimes (transforms, connectors, mirrors) may use: the extension
//!   hook, the committed reader and the transactional producer.
//! - `record_batch`: the one RecordBatch v2 encoder for records the broker writes itself.
//! - `internal_log`: the keyed logs behind committed offsets and transaction state.
//! - `metastore`: durable topic definitions, cluster identity and the producer-id allocator.
//! - [`config`]: Kafka-named broker and topic settings, parsed and validated once.
//! - `admin` and `metrics`: the HTTP admin API and Prometheus metrics.
//!
//! [`run`] ties them together: open the data directory (recovering every log), bind both listeners,
//! start background maintenance, and on shutdown close every log cleanly.
//!
//! Public: [`run`] with [`ServerOptions`] and [`Bound`], [`BrokerConfig`] and the settings tables in
//! [`config`] (for `sluice server --help-config`), [`BrokerError`], and [`host`] — the boundary for
//! in-broker runtimes, which reach the opaque [`Broker`] only through it. Everything else is the
//! broker's own.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

mod admin;

/// Entry points for the fuzz targets in `fuzz/` (not an API).
#[doc(hidden)]
pub mod fuzz {
    pub use crate::admin::check_create_topic_body;
}
mod broker;
mod budget;
mod cluster;
pub mod config;
mod coordinator;
mod error;
mod file_calls;
mod group_records;
mod groups;
mod handlers;
pub mod host;
mod internal_log;
mod markers;
mod metastore;
mod metrics;
mod offsets;
mod record_batch;
mod replication;
mod server;
mod topic;
mod transactions;

pub use broker::Broker;
pub use config::BrokerConfig;
pub use error::BrokerError;
pub(crate) use host::now_ms;

/// How often the maintenance task checks background flush policies.
const MAINTENANCE_TICK: Duration = Duration::from_millis(200);

/// How `sluice server` (or a test) runs a broker.
pub struct ServerOptions {
    pub data_dir: PathBuf,
    pub listen: String,
    pub admin_listen: String,
    pub config: BrokerConfig,
    /// Runtimes that run inside the broker through [`host::Host`] (the Wasm transform runtime,
    /// connectors, mirrors): started once the logs are recovered, stopped before they close.
    pub extensions: Vec<Arc<dyn host::Extension>>,
}

/// Addresses actually bound (useful when asked for port 0).
pub struct Bound {
    pub kafka: SocketAddr,
    pub admin: SocketAddr,
}

async fn bind(address: &str, what: &'static str) -> Result<(TcpListener, SocketAddr), BrokerError> {
    let failed = |source: std::io::Error| {
        let hint = if source.kind() == std::io::ErrorKind::AddrInUse { " (is another broker running? pick another port)" } else { "" };
        BrokerError::Bind { what, address: address.to_string(), source, hint }
    };
    let listener = TcpListener::bind(address).await.map_err(failed)?;
    let local = listener.local_addr().map_err(failed)?;
    Ok((listener, local))
}

/// Runs the broker until `shutdown` resolves, then closes every log cleanly.
pub async fn run(options: ServerOptions, shutdown: impl Future<Output = ()>, on_bound: impl FnOnce(&Bound)) -> Result<(), BrokerError> {
    let (kafka_listener, kafka) = bind(&options.listen, "Kafka clients").await?;
    let (admin_listener, admin) = bind(&options.admin_listen, "the admin API").await?;
    let bound = Bound { kafka, admin };
    let data_dir = options.data_dir.clone();
    let config = options.config;
    let broker = tokio::task::spawn_blocking(move || Broker::open(config, &data_dir)).await??;
    let controller = start_controller(&broker, &options.data_dir, kafka).await?;
    let follower = tokio::spawn(cluster::follow(Arc::clone(&broker), Arc::clone(&controller)));
    let isr_keeper = tokio::spawn(replication::maintain_isr(Arc::clone(&broker), Arc::clone(&controller)));
    let mut admin_router = admin::router(Arc::clone(&broker));
    for extension in &options.extensions {
        let name = extension.name();
        let host = host::Host::new(Arc::clone(&broker), name, tokio::runtime::Handle::current());
        let extension = Arc::clone(extension);
        // Starting may compile Wasm modules or read files: keep it off the async workers.
        let routes = tokio::task::spawn_blocking(move || extension.start(host))
            .await?
            .map_err(|source| BrokerError::ExtensionStart { name, source })?;
        admin_router = admin_router.merge(routes);
    }
    let (stop_sender, stop) = watch::channel(false);
    let kafka_task = tokio::spawn(server::run_kafka_listener(Arc::clone(&broker), kafka_listener, stop.clone()));
    let mut admin_stop = stop.clone();
    let admin_task = tokio::spawn(async move {
        let served = axum::serve(admin_listener, admin_router).with_graceful_shutdown(async move {
            let _ = admin_stop.changed().await;
        });
        if let Err(error) = served.await {
            tracing::error!(%error, "admin API server failed");
        }
    });
    broker.local_coordinators().start(&tokio::runtime::Handle::current());
    let maintenance = tokio::spawn(run_maintenance(Arc::clone(&broker)));
    tracing::info!(kafka = %bound.kafka, admin = %bound.admin, data_dir = %options.data_dir.display(), cluster_id = broker.cluster_id(), "sluice broker ready");
    on_bound(&bound);
    shutdown.await;
    tracing::info!("shutting down");
    cluster::controlled_shutdown(&broker, &controller).await;
    let _ = stop_sender.send(true);
    let _ = kafka_task.await;
    let _ = tokio::time::timeout(Duration::from_secs(5), admin_task).await;
    broker.local_coordinators().unload();
    maintenance.abort();
    let extensions = options.extensions.clone();
    tokio::task::spawn_blocking(move || extensions.iter().for_each(|e| e.stop())).await?;
    // Let in-flight connections finish their current request before the logs close under them.
    tokio::time::sleep(Duration::from_millis(100)).await;
    follower.abort();
    isr_keeper.abort();
    broker.fetchers().stop();
    controller.shutdown().await;
    let closing = Arc::clone(&broker);
    tokio::task::spawn_blocking(move || closing.close()).await?;
    tracing::info!("shutdown complete");
    Ok(())
}

/// Starts this node's voter of the controller quorum (`<data-dir>/__controller/`) and registers the
/// broker with it: a one-voter quorum unless `controller.quorum.voters` lists more. The broker serves
/// clients whether or not a quorum has formed yet; registration and heartbeats retry in the background.
async fn start_controller(
    broker: &Arc<Broker>,
    data_dir: &std::path::Path,
    kafka: SocketAddr,
) -> Result<Arc<sluice_cluster::Controller>, BrokerError> {
    let config = broker.config();
    let node_id = broker.node_id();
    let controller_config = sluice_cluster::ControllerConfig {
        voters: config.controller_voters(),
        session_timeout: Duration::from_millis(config.broker_session_timeout_ms()),
        heartbeat_interval: Duration::from_millis(config.broker_heartbeat_interval_ms()),
        leader_rebalance_interval: config.leader_rebalance_interval(),
        leader_imbalance_ratio: config.leader_imbalance_ratio(),
        ..sluice_cluster::ControllerConfig::single(node_id as u64, data_dir.join("__controller"))
    };
    let controller = sluice_cluster::Controller::start(controller_config).await?;
    // Where clients reach this broker: the advertised listener, else the bound address (an
    // unspecified bind address is no use to another host: set advertised.listeners for that).
    let (host, port) = match config.advertised_listener() {
        Some((host, port)) => (host, port as u16),
        None if kafka.ip().is_unspecified() => ("localhost".to_string(), kafka.port()),
        None => (kafka.ip().to_string(), kafka.port()),
    };
    let incarnation = uuid::Uuid::new_v4().as_u128();
    broker.set_incarnation(incarnation);
    let cluster_id = Some(broker.local_cluster_id().to_string());
    controller.run_broker(sluice_cluster::BrokerRegistration { broker_id: node_id, incarnation, host, port, rack: None, cluster_id });
    broker.set_controller(Arc::clone(&controller));
    Ok(controller)
}

/// Background work: retention (and idempotent-producer expiry) on `log.retention.check.interval.ms`,
/// transaction timeouts and transactional-id expiry on
/// `transaction.abort.timed.out.transaction.cleanup.interval.ms`, offset expiry and group clean-up on
/// `offsets.retention.check.interval.ms`, and fsyncs for the background flush policies
/// (`flush.messages` > 1, `flush.ms`).
async fn run_maintenance(broker: Arc<Broker>) {
    let retention_every = Duration::from_millis(broker.config().retention_check_interval_ms());
    let mut last_retention = std::time::Instant::now();
    let txn_check_every = Duration::from_millis(broker.config().transaction_expiry_check_ms());
    let mut last_txn_check = std::time::Instant::now();
    let mut hanging = markers::HangingWatch::default();
    let groups_check_every = Duration::from_millis(broker.config().offsets_retention_check_ms());
    let mut last_groups_check = std::time::Instant::now();
    let mut tick = tokio::time::interval(MAINTENANCE_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = now_ms();
        for topic in broker.topics() {
            let flush_every_ms = topic.config.read().flush_ms(broker.config()).or(broker.config().flush_interval_ms());
            for partition in topic.partitions.read().iter() {
                let unflushed = partition.unflushed_records.load(Ordering::Relaxed);
                if unflushed == 0 {
                    continue;
                }
                let due_by_count = matches!(partition.policy(), topic::FlushPolicy::Background { messages } if unflushed >= messages);
                let due_by_time = flush_every_ms.is_some_and(|ms| now - partition.last_flush_ms.load(Ordering::Relaxed) >= ms as i64);
                if due_by_count || due_by_time {
                    partition.start_flush();
                }
            }
        }
        if last_txn_check.elapsed() >= txn_check_every {
            last_txn_check = std::time::Instant::now();
            let coordinator = Arc::clone(&broker);
            let _ = tokio::task::spawn_blocking(move || {
                coordinator.each_coordinators(|c| {
                    c.transactions.abort_expired(now_ms());
                    c.compact();
                })
            })
            .await;
            markers::abort_hanging_elsewhere(&broker, &mut hanging).await;
        }
        if last_groups_check.elapsed() >= groups_check_every {
            last_groups_check = std::time::Instant::now();
            let broker = Arc::clone(&broker);
            let _ = tokio::task::spawn_blocking(move || broker.each_coordinators(|c| c.groups.expire(now_ms()))).await;
        }
        if last_retention.elapsed() >= retention_every {
            last_retention = std::time::Instant::now();
            let broker = Arc::clone(&broker);
            let _ = tokio::task::spawn_blocking(move || enforce_retention(&broker)).await;
        }
    }
}

fn enforce_retention(broker: &Broker) {
    let now = now_ms();
    for topic in broker.topics() {
        for partition in topic.partitions.read().iter() {
            match partition.enforce_retention(now) {
                Ok(stats) if stats.segments_deleted > 0 => {
                    tracing::info!(
                        topic = topic.name.as_str(),
                        partition = partition.index,
                        segments = stats.segments_deleted,
                        bytes = stats.bytes_deleted,
                        "retention deleted segments"
                    );
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(topic = topic.name.as_str(), partition = partition.index, %error, "retention failed"),
            }
        }
    }
}
