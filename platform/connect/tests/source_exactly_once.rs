//! Source connectors are exactly once across a crash: the source driver commits a poll's records and
//! the marker that decides its positions in one broker transaction, and a restarted task settles the
//! positions by that marker before the module sees them. Each test runs a task of a fixture source
//! over a numbered "table", stops a step where a crash could hit (`CrashPoint`), drops the driver and
//! the broker without closing anything, reopens them, and checks that every row is in the output
//! topic exactly once and that the module was handed the position matching the committed rows.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use serde_json::{Map, Value, json};
use sluice_broker::host::Host;
use sluice_broker::{Broker, BrokerConfig};
use sluice_connect::ConnectError;
use sluice_connect::config::{ConfigKeyDef, ConnectorType};
use sluice_connect::offsets::{ConnectorOffset, OffsetStore};
use sluice_connect::plugins::{ConnectorPlugin, PluginSpec};
use sluice_connect::task::{
    CrashPoint, SinkModule, SourceDriver, SourceModule, SourcePoll, SourceRecord, TaskConfig, TaskContext, TaskGauges, TaskShared,
};
use sluice_connect::task::{ModuleError, settle_stopped_tasks};
use sluice_runtime::{LogBuffer, MetricFamilies, Task, TaskControl};

const CONNECTOR: &str = "rows";
const TOPIC: &str = "rows-out";
/// Rows per poll.
const BATCH: u64 = 5;

/// The positions each `start` of the fixture module was handed (its `next` row), in order.
type Starts = Arc<Mutex<Vec<Option<u64>>>>;

/// A source over rows 0, 1, 2, …: each poll writes the next [`BATCH`] as `row-<n>` (to a topic of
/// three partitions, keyed by the row, so one transaction spans partitions) and reports
/// `{"table": "rows"}` → `{"next": n}`.
struct RowsPlugin {
    spec: PluginSpec,
    starts: Starts,
}

struct RowsSource {
    next: u64,
    starts: Starts,
}

impl ConnectorPlugin for RowsPlugin {
    fn spec(&self) -> &PluginSpec {
        &self.spec
    }

    fn source_module(&self, _task: &TaskConfig, _context: TaskContext) -> Result<Box<dyn SourceModule>, ConnectError> {
        Ok(Box::new(RowsSource { next: 0, starts: Arc::clone(&self.starts) }))
    }

    fn sink_module(&self, _task: &TaskConfig, _context: TaskContext) -> Result<Box<dyn SinkModule>, ConnectError> {
        Err(ConnectError::BadRequest("a source".into()))
    }
}

fn partition() -> Map<String, Value> {
    json!({"table": "rows"}).as_object().unwrap().clone()
}

impl SourceModule for RowsSource {
    fn start(&mut self, _task: &TaskConfig, positions: &[ConnectorOffset]) -> Result<(), ModuleError> {
        let next = positions.iter().find(|p| p.partition == partition()).and_then(|p| p.offset.as_ref()?.get("next")?.as_u64());
        self.starts.lock().push(next);
        self.next = next.unwrap_or(0);
        Ok(())
    }

    fn poll(&mut self) -> Result<SourcePoll, ModuleError> {
        let records = (self.next..self.next + BATCH)
            .map(|n| SourceRecord {
                topic: TOPIC.into(),
                key: Some(Bytes::from(format!("{n}"))),
                value: Some(Bytes::from(format!("row-{n}"))),
                timestamp_ms: -1,
                ..Default::default()
            })
            .collect();
        self.next += BATCH;
        let offset = json!({"next": self.next}).as_object().unwrap().clone();
        Ok(SourcePoll { records, positions: vec![(partition(), offset)], idle: Duration::ZERO })
    }

    fn stop(&mut self) {}
}

/// One incarnation of the broker and of task 0 of the connector: dropping it without `reset` or
/// `close` is the crash.
struct Incarnation {
    driver: SourceDriver,
    host: Host,
    offsets: Arc<OffsetStore>,
    broker: Arc<Broker>,
}

fn boot(dir: &Path, runtime: &tokio::runtime::Runtime, starts: &Starts) -> Incarnation {
    let broker = Broker::open(BrokerConfig::default(), dir).unwrap();
    let host = Host::for_tests(broker.clone(), "connect", runtime.handle().clone());
    if host.topic(TOPIC).is_none() {
        host.create_topic(TOPIC, Some(3), &BTreeMap::new()).unwrap();
    }
    let offsets = Arc::new(OffsetStore::open(&host.data_dir().unwrap()).unwrap());
    let spec = PluginSpec {
        name: "test-rows".into(),
        class: "test-rows".into(),
        kind: ConnectorType::Source,
        version: "0".into(),
        keys: Vec::<ConfigKeyDef>::new(),
    };
    let families = MetricFamilies::register(host.metrics(), "connector").unwrap();
    let shared = Arc::new(TaskShared {
        host: host.clone(),
        plugin: Arc::new(RowsPlugin { spec, starts: Arc::clone(starts) }),
        offsets: Arc::clone(&offsets),
        metrics: families.deployment(CONNECTOR),
        bytes_out: prometheus::IntCounter::new("bytes_out_test", "test").unwrap(),
        gauges: TaskGauges::register(host.metrics()).unwrap(),
        logs: Arc::new(LogBuffer::new(CONNECTOR)),
        config: TaskConfig { connector: CONNECTOR.into(), task: 0, tasks: 1, config: BTreeMap::new(), topic_prefix: None },
        sql: None,
        policy: Default::default(),
        chain: Vec::new(),
    });
    let mut driver = SourceDriver::new(shared, 0);
    driver.start(&TaskControl::detached(0)).unwrap();
    Incarnation { driver, host, offsets, broker }
}

impl Incarnation {
    fn step(&mut self) {
        self.driver.step(&TaskControl::detached(0)).unwrap();
    }

    /// Steps with a crash at `point`: the step fails and nothing is cleaned up.
    fn crash_at(mut self, point: CrashPoint) {
        self.driver.crash_at(point);
        let error = self.driver.step(&TaskControl::detached(0)).unwrap_err();
        assert!(error.to_string().contains("simulated crash"), "{error}");
        drop(self);
    }

    /// The committed rows of the output topic, in row order (duplicates kept).
    fn rows(&self) -> Vec<u64> {
        let mut rows = Vec::new();
        for p in 0..self.host.topic(TOPIC).unwrap().partitions {
            let mut reader = self.host.reader(TOPIC, p, 0).unwrap();
            while reader.position() < reader.last_stable_offset() {
                for record in reader.next_batch(1000).unwrap().records {
                    let value = String::from_utf8(record.value.unwrap().to_vec()).unwrap();
                    rows.push(value.strip_prefix("row-").unwrap().parse().unwrap());
                }
            }
        }
        rows.sort();
        rows
    }

    /// The connector's settled `next`, as `GET .../offsets` shows it.
    fn settled_next(&self) -> Option<u64> {
        let offsets = self.offsets.read(CONNECTOR).unwrap().offsets;
        offsets.iter().find(|p| p.partition == partition()).and_then(|p| p.offset.as_ref()?.get("next")?.as_u64())
    }

    fn pending_seq(&self) -> Option<i64> {
        self.offsets.pending(CONNECTOR, 0).unwrap().map(|p| p.seq)
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

#[test]
fn a_crash_before_the_commit_aborts_the_records_and_drops_the_staged_positions() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime();
    let starts = Starts::default();
    let mut first = boot(dir.path(), &runtime, &starts);
    first.step();
    first.step();
    assert_eq!((first.settled_next(), first.pending_seq()), (Some(10), None));
    // Rows 10..15 and their marker are sent; the transaction is open when the process dies.
    first.crash_at(CrashPoint::BeforeCommit);

    let mut second = boot(dir.path(), &runtime, &starts);
    assert_eq!(*starts.lock(), vec![None, Some(10)], "the module starts from the position of the committed rows");
    assert_eq!(second.pending_seq(), None, "the staged positions were dropped");
    assert_eq!(second.rows(), (0..10).collect::<Vec<_>>(), "the open transaction's rows were aborted");
    second.step();
    assert_eq!(second.rows(), (0..15).collect::<Vec<_>>(), "each row exactly once");
    assert_eq!(second.settled_next(), Some(15));
    let _ = &second.broker;
}

#[test]
fn a_crash_after_the_commit_before_settling_promotes_the_positions_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime();
    let starts = Starts::default();
    let mut first = boot(dir.path(), &runtime, &starts);
    first.step();
    first.step();
    // Rows 10..15 and their marker commit; the process dies before the positions are promoted.
    first.crash_at(CrashPoint::BeforeSettle);

    let mut second = boot(dir.path(), &runtime, &starts);
    assert_eq!(*starts.lock(), vec![None, Some(15)], "the committed transaction's positions were promoted before the module started");
    assert_eq!(second.pending_seq(), None);
    assert_eq!(second.settled_next(), Some(15));
    second.step();
    assert_eq!(second.rows(), (0..20).collect::<Vec<_>>(), "each row exactly once");

    // The same window twice in a row (the marker's sequence keeps counting on its partition).
    second.crash_at(CrashPoint::BeforeSettle);
    let third = boot(dir.path(), &runtime, &starts);
    assert_eq!(starts.lock().last(), Some(&Some(25)));
    third.crash_at(CrashPoint::BeforeCommit);
    let mut fourth = boot(dir.path(), &runtime, &starts);
    assert_eq!(starts.lock().last(), Some(&Some(25)));
    fourth.step();
    assert_eq!(fourth.rows(), (0..30).collect::<Vec<_>>(), "each row exactly once");
    let _ = &fourth.broker;
}

#[test]
fn a_stopped_connector_has_its_pending_positions_settled_without_its_task_starting() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime();
    let starts = Starts::default();
    let mut first = boot(dir.path(), &runtime, &starts);
    first.step();
    first.crash_at(CrashPoint::BeforeSettle);

    // The broker comes back with the connector STOPPED: its task does not start, so the manager
    // settles for it (fencing the task's producer first).
    let broker = Broker::open(BrokerConfig::default(), dir.path()).unwrap();
    let host = Host::for_tests(broker.clone(), "connect", runtime.handle().clone());
    let offsets = OffsetStore::open(&host.data_dir().unwrap()).unwrap();
    assert!(offsets.pending(CONNECTOR, 0).unwrap().is_some());
    settle_stopped_tasks(&host, &offsets, CONNECTOR).unwrap();
    assert_eq!(offsets.pending(CONNECTOR, 0).unwrap(), None);
    let next = offsets.read(CONNECTOR).unwrap().offsets[0].offset.clone().unwrap()["next"].clone();
    assert_eq!(next, json!(10));
    settle_stopped_tasks(&host, &offsets, CONNECTOR).unwrap();
    assert_eq!(offsets.read(CONNECTOR).unwrap().offsets.len(), 1, "settling twice changes nothing");
}
