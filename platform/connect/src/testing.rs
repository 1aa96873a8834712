//! Test fixtures: Rust plugins that exercise the runtime (lifecycle, positions, failures) without a
//! Wasm module. They are not connectors for users: the broker registers them only when the
//! environment variable [`TEST_PLUGINS_ENV`] is `1` (the end-to-end tests set it), and logs a warning
//! when it does.
//!
//! `test-counter-source` writes `"<task>:<n>"` for n = 0, 1, 2, … to `topic` (with `topic.prefix` in
//! front), keyed `task-<task>`, `counter.batch` records per poll, and saves `{"task": t}` →
//! `{"next": n}` as its position. `counter.max` stops it (idle) after that many records per task;
//! `counter.fail.at` makes the poll that would write that number fail for good (the task shows
//! FAILED with the message); `counter.interval.ms` sleeps before each poll.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Map, Value, json};

use crate::config::{ConfigKeyDef, ConfigType, ConnectorType};
use crate::error::ConnectError;
use crate::offsets::ConnectorOffset;
use crate::plugins::{Catalog, ConnectorPlugin, PluginSpec};
use crate::task::{ModuleError, SinkModule, SourceModule, SourcePoll, SourceRecord, TaskConfig, TaskContext};

/// `1` registers the test plugins.
pub const TEST_PLUGINS_ENV: &str = "SLUICE_CONNECT_TEST_PLUGINS";
pub const COUNTER_SOURCE: &str = "test-counter-source";

/// Registers the test plugins in `catalog`.
pub fn register(catalog: &Catalog) {
    catalog.register(Arc::new(CounterPlugin::new()));
}

pub struct CounterPlugin {
    spec: PluginSpec,
}

impl CounterPlugin {
    pub fn new() -> CounterPlugin {
        let key = |name: &str, kind, doc: &str| ConfigKeyDef::new(name, kind, "Counter", doc);
        CounterPlugin {
            spec: PluginSpec {
                name: COUNTER_SOURCE.into(),
                class: COUNTER_SOURCE.into(),
                kind: ConnectorType::Source,
                version: env!("CARGO_PKG_VERSION").into(),
                keys: vec![
                    key("topic", ConfigType::String, "Output topic (after topic.prefix).").required(),
                    key("counter.max", ConfigType::Long, "Records per task, then idle."),
                    key("counter.fail.at", ConfigType::Long, "The number whose poll fails for good."),
                    key("counter.batch", ConfigType::Int, "Records per poll.").default_value("10"),
                    key("counter.interval.ms", ConfigType::Long, "Sleep before each poll.").default_value("0"),
                ],
            },
        }
    }
}

impl Default for CounterPlugin {
    fn default() -> Self {
        CounterPlugin::new()
    }
}

impl ConnectorPlugin for CounterPlugin {
    fn spec(&self) -> &PluginSpec {
        &self.spec
    }

    fn source_module(&self, _task: &TaskConfig, _context: TaskContext) -> Result<Box<dyn SourceModule>, ConnectError> {
        Ok(Box::new(CounterSource::default()))
    }

    fn sink_module(&self, _task: &TaskConfig, _context: TaskContext) -> Result<Box<dyn SinkModule>, ConnectError> {
        Err(ConnectError::BadRequest(format!("{COUNTER_SOURCE} is a source")))
    }
}

#[derive(Default)]
struct CounterSource {
    task: i32,
    topic: String,
    next: u64,
    max: Option<u64>,
    fail_at: Option<u64>,
    batch: u64,
    interval: Duration,
}

fn number(task: &TaskConfig, key: &str) -> Result<Option<u64>, ModuleError> {
    task.config
        .get(key)
        .map(|v| v.trim().parse::<u64>().map_err(|_| ModuleError::fatal(format!("{key} must be a non-negative integer"))))
        .transpose()
}

impl SourceModule for CounterSource {
    fn start(&mut self, task: &TaskConfig, positions: &[ConnectorOffset]) -> Result<(), ModuleError> {
        self.task = task.task;
        let topic = task.config.get("topic").ok_or_else(|| ModuleError::fatal("topic is required"))?;
        self.topic = format!("{}{topic}", task.topic_prefix.as_deref().unwrap_or(""));
        self.max = number(task, "counter.max")?;
        self.fail_at = number(task, "counter.fail.at")?;
        self.batch = number(task, "counter.batch")?.unwrap_or(10).clamp(1, 10_000);
        self.interval = Duration::from_millis(number(task, "counter.interval.ms")?.unwrap_or(0).min(10_000));
        let mine = json!({"task": self.task});
        self.next = positions
            .iter()
            .find(|p| Value::Object(p.partition.clone()) == mine)
            .and_then(|p| p.offset.as_ref()?.get("next")?.as_u64())
            .unwrap_or(0);
        Ok(())
    }

    fn poll(&mut self) -> Result<SourcePoll, ModuleError> {
        if !self.interval.is_zero() {
            std::thread::sleep(self.interval);
        }
        if self.fail_at == Some(self.next) {
            return Err(ModuleError::fatal(format!("the counter of task {} reached counter.fail.at={}", self.task, self.next)));
        }
        let end = self.max.map_or(u64::MAX, |max| max.min(self.next + self.batch)).min(self.next + self.batch);
        let end = self.fail_at.filter(|f| *f > self.next).map_or(end, |f| end.min(f));
        if end <= self.next {
            return Ok(SourcePoll { idle: Duration::from_millis(100), ..Default::default() });
        }
        let records = (self.next..end)
            .map(|n| SourceRecord {
                topic: self.topic.clone(),
                partition: None,
                key: Some(Bytes::from(format!("task-{}", self.task))),
                value: Some(Bytes::from(format!("{}:{n}", self.task))),
                headers: Vec::new(),
                timestamp_ms: -1,
            })
            .collect();
        self.next = end;
        let mut partition = Map::new();
        partition.insert("task".into(), json!(self.task));
        let mut offset = Map::new();
        offset.insert("next".into(), json!(self.next));
        Ok(SourcePoll { records, positions: vec![(partition, offset)], idle: Duration::ZERO })
    }

    fn stop(&mut self) {}
}
