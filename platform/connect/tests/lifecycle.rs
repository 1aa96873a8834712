//! The connector lifecycle on a broker opened in-process, with the `test-counter-source` fixture
//! driven by the real source driver: tasks start and write, pause and resume, stop (positions kept,
//! alterable only then), a task that fails for good shows FAILED with its trace and a metric, restart
//! and reconfigure bring it back from its saved position, connectors come back after a restart in
//! their target state, and a kind with no driver yet fails visibly. (`tests/test_connect.py` drives
//! the same runtime through the REST API and the CLI of a real broker process.)

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use sluice_broker::host::Host;
use sluice_broker::{Broker, BrokerConfig};
use sluice_connect::config::{ConfigKeyDef, ConnectorType};
use sluice_connect::manager::ConnectorStatus;
use sluice_connect::offsets::ConnectorOffset;
use sluice_connect::plugins::{Catalog, ConnectorPlugin, PluginSpec};
use sluice_connect::store::TargetState;
use sluice_connect::task::{SinkModule, SourceModule, TaskConfig, TaskContext};
use sluice_connect::{ConnectError, ConnectorManager, testing};

/// Fields drop in order: the manager (stopping its tasks) before the runtime they wait on.
struct Fixture {
    manager: Arc<ConnectorManager>,
    host: Host,
    broker: Arc<Broker>,
    runtime: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

fn catalog() -> Catalog {
    let catalog = Catalog::new(None);
    testing::register(&catalog);
    catalog.register(Arc::new(NoDriverSink::default()));
    catalog
}

fn open() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let broker = Broker::open(BrokerConfig::default(), dir.path()).unwrap();
    let host = Host::for_tests(broker.clone(), "connect", runtime.handle().clone());
    let manager = ConnectorManager::open(host.clone(), catalog()).unwrap();
    manager.start_all();
    Fixture { manager, host, broker, runtime, _dir: dir }
}

fn config(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn counter(name: &str, topic: &str, extra: &[(&str, &str)]) -> BTreeMap<String, String> {
    let mut c = config(&[("name", name), ("connector.class", testing::COUNTER_SOURCE), ("topic", topic), ("counter.batch", "5")]);
    c.extend(config(extra));
    c
}

fn wait_for<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Fixture {
    /// Every committed value of every partition of `topic`.
    fn values(&self, topic: &str) -> Vec<String> {
        let Some(info) = self.host.topic(topic) else { return Vec::new() };
        let mut out = Vec::new();
        for p in 0..info.partitions {
            let mut reader = self.host.reader(topic, p, 0).unwrap();
            while reader.position() < reader.last_stable_offset() {
                let batch = reader.next_batch(1000).unwrap();
                out.extend(batch.records.into_iter().map(|r| String::from_utf8(r.value.unwrap().to_vec()).unwrap()));
            }
        }
        out.sort();
        out
    }

    fn status(&self, name: &str) -> ConnectorStatus {
        self.manager.status(name).unwrap()
    }

    fn task_states(&self, name: &str) -> Vec<String> {
        self.status(name).tasks.into_iter().map(|t| t.state).collect()
    }

    fn metric(&self, family: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let families = self.host.metrics().gather();
        let family = families.iter().find(|f| f.name() == family)?;
        family
            .get_metric()
            .iter()
            .find(|m| labels.iter().all(|(k, v)| m.get_label().iter().any(|l| l.name() == *k && l.value() == *v)))
            .map(|m| if m.get_gauge().value() != 0.0 { m.get_gauge().value() } else { m.get_counter().value() })
    }
}

fn expected(tasks: i32, per_task: u64) -> Vec<String> {
    let mut out: Vec<String> = (0..tasks).flat_map(|t| (0..per_task).map(move |n| format!("{t}:{n}"))).collect();
    out.sort();
    out
}

#[test]
fn tasks_write_and_pause_resume_and_stop_keep_positions_that_only_a_stopped_connector_may_alter() {
    let f = open();
    let info = f.manager.create(counter("count", "numbers", &[("tasks.max", "2"), ("counter.max", "40")]), TargetState::Running).unwrap();
    assert_eq!((info.kind.as_str(), info.tasks.len()), ("source", 2));
    wait_for("80 records", || (f.values("numbers") == expected(2, 40)).then_some(()));
    let status = f.status("count");
    assert_eq!(status.connector.state, "RUNNING");
    assert_eq!(f.task_states("count"), vec!["RUNNING", "RUNNING"]);
    let offsets = serde_json::to_value(f.manager.offsets("count").unwrap()).unwrap();
    assert_eq!(
        offsets,
        json!({"offsets": [
            {"partition": {"task": 0}, "offset": {"next": 40}},
            {"partition": {"task": 1}, "offset": {"next": 40}},
        ]})
    );

    f.manager.pause("count").unwrap();
    assert_eq!(f.task_states("count"), vec!["PAUSED", "PAUSED"]);
    assert_eq!(f.status("count").connector.state, "PAUSED");
    f.manager.resume("count").unwrap();
    wait_for("tasks RUNNING again", || (f.task_states("count") == ["RUNNING", "RUNNING"]).then_some(()));

    let rewind = [ConnectorOffset {
        partition: json!({"task": 0}).as_object().unwrap().clone(),
        offset: Some(json!({"next": 35}).as_object().unwrap().clone()),
    }];
    let refused = f.manager.alter_offsets("count", &rewind).unwrap_err();
    assert!(matches!(refused, ConnectError::WrongState(_)), "{refused}");
    assert!(refused.to_string().contains("STOPPED"));

    f.manager.stop("count").unwrap();
    let stopped = f.status("count");
    assert_eq!((stopped.connector.state.as_str(), stopped.tasks.len()), ("STOPPED", 0));
    assert!(f.manager.tasks("count").unwrap().is_empty(), "a stopped connector has no tasks");
    f.manager.alter_offsets("count", &rewind).unwrap();
    f.manager.resume("count").unwrap();
    // Task 0 writes 35..40 again (positions are what the operator said), task 1 nothing new.
    wait_for("task 0 to redo 35..40", || (f.values("numbers").len() == 85).then_some(()));
    let values = f.values("numbers");
    assert_eq!(values.iter().filter(|v| *v == "0:37").count(), 2);

    f.manager.stop("count").unwrap();
    f.manager.reset_offsets("count").unwrap();
    assert!(f.manager.offsets("count").unwrap().offsets.is_empty());
    f.manager.delete("count").unwrap();
    assert!(matches!(f.manager.status("count"), Err(ConnectError::ConnectorNotFound(_))));
}

#[test]
fn a_task_that_fails_for_good_shows_failed_with_its_trace_and_restart_or_reconfigure_brings_it_back() {
    let f = open();
    f.manager
        .create(
            counter("flaky", "flaky-out", &[("tasks.max", "2"), ("counter.fail.at", "12"), ("counter.max", "30")]),
            TargetState::Running,
        )
        .unwrap();
    let failed = wait_for("both tasks FAILED", || {
        let status = f.status("flaky");
        (status.tasks.iter().all(|t| t.state == "FAILED")).then_some(status)
    });
    assert_eq!(failed.connector.state, "RUNNING", "the connector itself runs; its tasks failed");
    let trace = failed.tasks[0].trace.clone().unwrap();
    assert!(trace.contains("counter.fail.at=12"), "{trace}");
    assert_eq!(f.values("flaky-out"), expected(2, 12), "everything before the failure was committed");
    assert_eq!(f.metric("sluice_connector_tasks", &[("connector", "flaky"), ("state", "FAILED")]), Some(2.0));
    assert_eq!(f.metric("sluice_connector_errors_total", &[("connector", "flaky"), ("kind", "task_failed")]), Some(2.0));
    assert!(f.manager.logs("flaky", 10).unwrap().iter().any(|l| l.message.contains("failed")));

    let shown = f.manager.restart("flaky", true, true).unwrap().unwrap();
    assert_eq!(shown.connector.state, "RUNNING", "onlyFailed leaves a running connector alone");
    assert!(shown.tasks.iter().all(|t| t.state == "RESTARTING"));
    // The same position fails again: FAILED once more, not a silent stop.
    wait_for("FAILED again", || f.status("flaky").tasks.iter().all(|t| t.state == "FAILED").then_some(()));

    let mut fixed = counter("flaky", "flaky-out", &[("tasks.max", "2"), ("counter.max", "30")]);
    fixed.insert("name".into(), "flaky".into());
    let (created, _) = f.manager.put_config("flaky", fixed).unwrap();
    assert!(!created);
    wait_for("every record once", || (f.values("flaky-out") == expected(2, 30)).then_some(()));
    assert_eq!(f.task_states("flaky"), vec!["RUNNING", "RUNNING"]);
}

#[test]
fn connectors_come_back_after_a_restart_in_their_target_state_with_their_config() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let broker = Broker::open(BrokerConfig::default(), dir.path()).unwrap();
    {
        let host = Host::for_tests(broker.clone(), "connect", runtime.handle().clone());
        let manager = ConnectorManager::open(host, catalog()).unwrap();
        let secret =
            counter("kept", "kept-out", &[("counter.max", "5"), ("connection.url", "sqlite::memory:"), ("connection.password", "hunter2")]);
        manager.create(secret, TargetState::Paused).unwrap();
        manager.create(counter("halted", "halted-out", &[]), TargetState::Stopped).unwrap();
        assert_eq!(manager.config("kept").unwrap()["connection.password"], "********");
        manager.stop_all();
    }
    drop(broker);
    let broker = Broker::open(BrokerConfig::default(), dir.path()).unwrap();
    let host = Host::for_tests(broker, "connect", runtime.handle().clone());
    // A fresh registry: the metrics of the first manager died with the first broker.
    let manager = ConnectorManager::open(host, catalog()).unwrap();
    manager.start_all();
    assert_eq!(manager.names(), vec!["halted", "kept"]);
    let kept = manager.status("kept").unwrap();
    assert_eq!((kept.connector.state.as_str(), kept.tasks.len()), ("PAUSED", 1));
    assert_eq!(manager.status("halted").unwrap().connector.state, "STOPPED");
    let config = manager.config("kept").unwrap();
    assert_eq!((config["connection.password"].as_str(), config["counter.max"].as_str()), ("********", "5"));
    manager.stop_all();
}

#[test]
fn create_refuses_bad_configs_and_duplicates_and_a_sink_whose_module_cannot_start_fails_visibly() {
    let f = open();
    let error = f.manager.create(counter("bad", "t", &[("counter.mxa", "1"), ("tasks.max", "100")]), TargetState::Running).unwrap_err();
    let message = error.to_string();
    assert!(message.contains("contains the following 2 error(s)"), "{message}");
    assert!(message.contains("counter.mxa") && message.contains("tasks.max"), "{message}");
    f.manager.create(counter("once", "t", &[("counter.max", "1")]), TargetState::Running).unwrap();
    assert!(matches!(f.manager.create(counter("once", "t", &[]), TargetState::Running), Err(ConnectError::ConnectorExists(_))));

    let sink = config(&[("name", "to-db"), ("connector.class", "test-no-driver-sink"), ("topics", "t")]);
    f.manager.create(sink, TargetState::Running).unwrap();
    wait_for("the sink task FAILED", || (f.task_states("to-db") == ["FAILED"]).then_some(()));
    let status = f.status("to-db");
    assert_eq!((status.connector.state.as_str(), status.kind.as_str()), ("RUNNING", "sink"));
    assert!(status.tasks[0].trace.as_deref().unwrap().contains("no sink module in this test"), "{:?}", status.tasks);
    assert_eq!(f.metric("sluice_connector_tasks", &[("connector", "to-db"), ("state", "FAILED")]), Some(1.0));
    let _ = (&f.broker, &f.runtime);
}

/// A sink plugin whose module cannot be made, to show what a task that cannot start looks like.
#[derive(Default)]
struct NoDriverSink {
    spec: Option<PluginSpec>,
}

impl NoDriverSink {
    fn spec_value() -> PluginSpec {
        PluginSpec {
            name: "test-no-driver-sink".into(),
            class: "test-no-driver-sink".into(),
            kind: ConnectorType::Sink,
            version: "0".into(),
            keys: Vec::<ConfigKeyDef>::new(),
        }
    }
}

impl ConnectorPlugin for NoDriverSink {
    fn spec(&self) -> &PluginSpec {
        static SPEC: std::sync::OnceLock<PluginSpec> = std::sync::OnceLock::new();
        self.spec.as_ref().unwrap_or_else(|| SPEC.get_or_init(NoDriverSink::spec_value))
    }

    fn source_module(&self, _: &TaskConfig, _: TaskContext) -> Result<Box<dyn SourceModule>, ConnectError> {
        Err(ConnectError::BadRequest("a sink".into()))
    }

    fn sink_module(&self, _: &TaskConfig, _: TaskContext) -> Result<Box<dyn SinkModule>, ConnectError> {
        Err(ConnectError::BadRequest("no sink module in this test".into()))
    }
}
