//! What the connector tests share: a broker opened in-process in a temp directory, with the real
//! `plugins` extension (registry, engine) and the connector manager, Wasm guests uploaded to the
//! registry as an operator would, and helpers to read topics, wait, and call the REST API.
#![allow(dead_code)]

#[path = "guests.rs"]
mod guests;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use sluice_broker::host::{Extension, Host};
use sluice_broker::{Broker, BrokerConfig};
use sluice_connect::ConnectorManager;
use sluice_connect::plugins::Catalog;
use sluice_connect::sql::{ConnectionSpec, Sql, SqlLimits, SqlValue};
use sluice_runtime::Plugins;

/// Every guest the wasm-connector tests upload.
pub const GUESTS: &[&str] = &["file-source", "file-sink", "fixture-hostile-source", "pii-mask"];

/// Fields drop in order: the connectors' tasks stop first (as in the broker's shutdown), then the
/// runtime they wait on.
pub struct Fixture {
    pub stops_tasks: StopsTasks,
    pub manager: Arc<ConnectorManager>,
    pub host: Host,
    pub broker: Arc<Broker>,
    pub runtime: tokio::runtime::Runtime,
    pub dir: tempfile::TempDir,
}

/// Stops the manager's tasks when dropped, if the manager is still alive. A task thread waiting on
/// the runtime (a reader's long poll) never wakes once the runtime shuts down, so the tasks must
/// stop before it, and on the test's thread: an HTTP connection task of [`Fixture::get`] may hold the
/// router (and so the manager) a little longer and drop it on a runtime worker, which must then
/// have nothing left to join.
pub struct StopsTasks(std::sync::Weak<ConnectorManager>);

impl Drop for StopsTasks {
    fn drop(&mut self) {
        if let Some(manager) = self.0.upgrade() {
            manager.stop_all();
        }
    }
}

pub fn open(guests: &[&str]) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (manager, host, broker) = start(dir.path(), &runtime, guests);
    Fixture::from_parts(manager, host, broker, runtime, dir)
}

/// Opens a broker in `dir` with the plugins extension and the connector manager, uploading
/// `guests` first (a restarted broker finds them in its registry: pass none).
pub fn start(dir: &std::path::Path, runtime: &tokio::runtime::Runtime, guests: &[&str]) -> (Arc<ConnectorManager>, Host, Arc<Broker>) {
    let broker = Broker::open(BrokerConfig::default(), dir).unwrap();
    let plugins = Plugins::new();
    // The registry's own routes (`/v1/plugins`) are not under test here.
    let _routes = plugins.start(Host::for_tests(broker.clone(), "plugins", runtime.handle().clone())).unwrap();
    let registry = plugins.registry().unwrap();
    for name in guests {
        registry.add(name, &guests::guest(name), false).unwrap_or_else(|e| panic!("registering {name}: {e}"));
    }
    let host = Host::for_tests(broker.clone(), "connect", runtime.handle().clone());
    let manager = ConnectorManager::open(host.clone(), Catalog::new(Some(plugins))).unwrap();
    manager.start_all();
    (manager, host, broker)
}

pub fn config(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

pub fn wait_for<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    // Generous: it returns as soon as the condition holds, and `test.sh` runs these beside the
    // other test binaries and the fuzz job on two cores, where compiling a connector module alone
    // can take many seconds (a 30 s bound failed there once).
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn append(path: &std::path::Path, text: &str) {
    std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap().write_all(text.as_bytes()).unwrap();
}

/// Every committed value of `topic`, partition by partition, in offset order.
pub fn values(host: &Host, topic: &str) -> Vec<String> {
    let Some(info) = host.topic(topic) else { return Vec::new() };
    let mut out = Vec::new();
    for p in 0..info.partitions {
        let mut reader = host.reader(topic, p, 0).unwrap();
        while reader.position() < reader.last_stable_offset() {
            let batch = reader.next_batch(1000).unwrap();
            out.extend(batch.records.into_iter().map(|r| String::from_utf8(r.value.unwrap().to_vec()).unwrap()));
        }
    }
    out
}

impl Fixture {
    /// A fixture around a broker (re)started with [`start`].
    pub fn from_parts(
        manager: Arc<ConnectorManager>,
        host: Host,
        broker: Arc<Broker>,
        runtime: tokio::runtime::Runtime,
        dir: tempfile::TempDir,
    ) -> Fixture {
        Fixture { stops_tasks: StopsTasks(Arc::downgrade(&manager)), manager, host, broker, runtime, dir }
    }

    pub fn values(&self, topic: &str) -> Vec<String> {
        values(&self.host, topic)
    }

    /// The values of a gauge family (by the end of its name) for one connector's series.
    pub fn gauges(&self, family: &str, connector: &str) -> Vec<f64> {
        self.host
            .metrics()
            .gather()
            .into_iter()
            .filter(|f| f.name().ends_with(family))
            .flat_map(|f| f.get_metric().to_vec())
            .filter(|metric| metric.get_label().iter().any(|l| l.name() == "connector" && l.value() == connector))
            .map(|metric| metric.get_gauge().value())
            .collect()
    }

    pub fn task_state(&self, name: &str) -> (String, Option<String>) {
        let status = self.manager.status(name).unwrap();
        let task = status.tasks.into_iter().next().expect("one task");
        (task.state, task.trace)
    }

    /// `GET path` on the connector REST API, served on an ephemeral port: (status, JSON body).
    pub fn get(&self, path: &str) -> (u16, Value) {
        let listener = self.runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let router = sluice_connect::api::router(Arc::clone(&self.manager));
        let server = self.runtime.spawn(async move { axum::serve(listener, router).await });
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        write!(stream, "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        server.abort();
        let _ = self.runtime.block_on(server);
        let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        (status, serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}")))
    }
}

/// A connection of the test's own to a database: to prepare a source, or to look at what a sink wrote.
pub struct Target {
    pub sql: Sql,
    pub conn: sluice_connect::sql::ConnHandle,
    _runtime: tokio::runtime::Runtime,
}

impl Target {
    pub fn open(url: &str, user: Option<&str>, password: Option<&str>) -> Target {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let spec = ConnectionSpec::parse("default", url, user, password).unwrap();
        let mut sql = Sql::new(BTreeMap::from([("default".to_string(), spec)]), runtime.handle().clone(), SqlLimits::default()).unwrap();
        let conn = sql.open("default").unwrap();
        Target { sql, conn, _runtime: runtime }
    }

    pub fn rows(&mut self, query: &str) -> Vec<Vec<SqlValue>> {
        match self.sql.query(self.conn, query, &[]) {
            Ok(rows) => rows.rows,
            Err(_) => Vec::new(),
        }
    }

    pub fn ints(&mut self, query: &str) -> Vec<i64> {
        self.rows(query)
            .into_iter()
            .map(|row| match row.first() {
                Some(SqlValue::Int(i)) => *i,
                Some(SqlValue::Decimal(d)) => d.parse().unwrap(),
                other => panic!("not an integer: {other:?}"),
            })
            .collect()
    }

    /// Runs a statement that must succeed.
    pub fn exec(&mut self, statement: &str) {
        self.sql.execute(self.conn, statement, &[]).unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
}
