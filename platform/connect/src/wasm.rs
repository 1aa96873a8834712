//! Wasm connectors: registry modules whose component exports the `source` or `sink` world, seen
//! through the seam traits of [`crate::task`]. [`WasmPlugin`] is what `connector.class` resolves to
//! (its spec comes from the guest's `describe`); each task gets a [`WasmSource`] or [`WasmSink`]
//! that instantiates the module at `start` — with the task's config, its positions, the CPU and
//! memory limits of every plugin instance, and the grants its config earns — and drops the
//! instance at `stop`.
//!
//! Grants: a key the connector declares of type `file` names a path on the broker's host; the
//! instance gets exactly the directory holding it (read-only for a source, read-write for a sink)
//! and nothing else. Without such a key a connector gets no file system, network or environment.
//!
//! Failures map onto the seam's: the guest's own error keeps its `retriable` flag; a trap, a CPU or
//! memory limit, or output that breaks the contract (garbage) is fatal — the instance is poisoned,
//! and the task shows FAILED with the reason until restarted.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::{Map, Value};
use sluice_wasm::{
    CompiledComponent, ConfigType as WitConfigType, ConnectorSpec, DirAccess, Grants, InstanceConfig, PluginError, SinkInstance,
    SourceInstance, SourcePosition,
};

use crate::config::{ConfigKeyDef, ConfigType, ConnectorType};
use crate::error::ConnectError;
use crate::offsets::{ConnectorOffset, OFFSET_ENTRIES_MAX};
use crate::plugins::{ConnectorPlugin, PluginSpec};
use crate::task::{ModuleError, PutError, SinkModule, SinkRecord, SourceModule, SourcePoll, SourceRecord, TaskConfig, TaskContext};

// Every position the offset store keeps for a connector can be handed back to `init`.
const _: () = assert!(OFFSET_ENTRIES_MAX <= sluice_wasm::SOURCE_POSITIONS_PER_INIT_MAX);

/// A registry module implementing the `source` or `sink` world.
pub struct WasmPlugin {
    spec: PluginSpec,
    module: Module,
    /// The keys of type `file`: their directories are granted.
    file_keys: Vec<String>,
}

enum Module {
    Source(sluice_wasm::SourceModule),
    Sink(sluice_wasm::SinkModule),
}

impl WasmPlugin {
    /// The plugin of a compiled component named `name`, if it is a connector: its world says the
    /// kind, its `describe` the version and keys. `Ok(None)` for a component of another world.
    /// Blocking (instantiates the module once to call `describe`).
    pub fn from_component(name: &str, component: &CompiledComponent) -> Result<Option<WasmPlugin>, ConnectError> {
        let config = InstanceConfig::new(name);
        let (module, spec, kind) = if let Ok(source) = component.source() {
            let spec = source.describe(&config).map_err(|e| describe_failed(name, &e))?;
            (Module::Source(source), spec, ConnectorType::Source)
        } else if let Ok(sink) = component.sink() {
            let spec = sink.describe(&config).map_err(|e| describe_failed(name, &e))?;
            (Module::Sink(sink), spec, ConnectorType::Sink)
        } else {
            return Ok(None);
        };
        let file_keys = spec.keys.iter().filter(|k| k.type_ == WitConfigType::File).map(|k| k.name.clone()).collect();
        Ok(Some(WasmPlugin { spec: plugin_spec(name, kind, spec), module, file_keys }))
    }
}

/// The instance config of one task: the plugin's keys plus `task.id`, `tasks.max` and
/// `topic.prefix`; default limits; the directories of its `file` keys; its log lines to the
/// connector's log buffer (which writes them to `tracing` too); its gauges to the task's series.
fn instance_config(
    file_keys: &[String],
    context: &TaskContext,
    task: &TaskConfig,
    access: DirAccess,
) -> Result<InstanceConfig, ModuleError> {
    let mut config = InstanceConfig::new(&format!("{}-{}", task.connector, task.task));
    config.log_sink = Arc::clone(&context.logs) as Arc<dyn sluice_wasm::LogSink>;
    config.sql = context.sql.clone().map(|sql| sql as Arc<dyn sluice_wasm::SqlHost>);
    config.gauges = Some(Arc::clone(&context.gauges));
    config.config = task.config.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    config.config.push(("task.id".into(), task.task.to_string()));
    config.config.push(("tasks.max".into(), task.tasks.to_string()));
    if let Some(prefix) = &task.topic_prefix {
        config.config.push(("topic.prefix".into(), prefix.clone()));
    }
    config.grants = grants(file_keys, &task.config, access)?;
    Ok(config)
}

/// Exactly the directories of the files the config's `file` keys name.
fn grants(file_keys: &[String], config: &BTreeMap<String, String>, access: DirAccess) -> Result<Grants, ModuleError> {
    let mut grants = Grants::default();
    for key in file_keys {
        let Some(path) = config.get(key) else { continue };
        let granted =
            Grants::directory_of(Path::new(path), access).map_err(|e| ModuleError::fatal(format!("{key}: {}", plugin_message(&e))))?;
        grants.read_only_dirs.extend(granted.read_only_dirs);
        if let Some(dir) = granted.read_write_dir {
            if grants.read_write_dir.as_ref().is_some_and(|existing| *existing != dir) {
                return Err(ModuleError::fatal("a sink is granted one directory: its `file` keys must name files in the same one"));
            }
            grants.read_write_dir = Some(dir);
        }
    }
    Ok(grants)
}

fn describe_failed(name: &str, error: &PluginError) -> ConnectError {
    ConnectError::BadRequest(format!("connector module '{name}' failed to describe itself: {error}"))
}

/// `InvalidRequest`'s text without its prefix, for messages that already say what was wrong.
fn plugin_message(error: &PluginError) -> String {
    match error {
        PluginError::InvalidRequest(message) => message.clone(),
        other => other.to_string(),
    }
}

fn plugin_spec(name: &str, kind: ConnectorType, spec: ConnectorSpec) -> PluginSpec {
    let group = match kind {
        ConnectorType::Source => "Source",
        ConnectorType::Sink => "Sink",
    };
    let keys = spec
        .keys
        .into_iter()
        .map(|key| {
            let kind = match key.type_ {
                WitConfigType::String | WitConfigType::File => ConfigType::String,
                WitConfigType::Int => ConfigType::Int,
                WitConfigType::Long => ConfigType::Long,
                WitConfigType::Boolean => ConfigType::Boolean,
                WitConfigType::List => ConfigType::List,
                WitConfigType::Password => ConfigType::Password,
            };
            let mut def = ConfigKeyDef::new(&key.name, kind, group, &key.documentation);
            if key.required {
                def = def.required();
            }
            if let Some(default) = &key.default_value {
                def = def.default_value(default);
            }
            def
        })
        .collect();
    PluginSpec { name: name.to_string(), class: name.to_string(), kind, version: spec.version, keys }
}

impl ConnectorPlugin for WasmPlugin {
    fn spec(&self) -> &PluginSpec {
        &self.spec
    }

    fn source_module(&self, _task: &TaskConfig, context: TaskContext) -> Result<Box<dyn SourceModule>, ConnectError> {
        match &self.module {
            Module::Source(module) => {
                Ok(Box::new(WasmSource { file_keys: self.file_keys.clone(), context, module: module.clone(), instance: None }))
            }
            Module::Sink(_) => Err(ConnectError::BadRequest(format!("'{}' is a sink connector", self.spec.name))),
        }
    }

    fn sink_module(&self, _task: &TaskConfig, context: TaskContext) -> Result<Box<dyn SinkModule>, ConnectError> {
        match &self.module {
            Module::Sink(module) => {
                Ok(Box::new(WasmSink { file_keys: self.file_keys.clone(), context, module: module.clone(), instance: None }))
            }
            Module::Source(_) => Err(ConnectError::BadRequest(format!("'{}' is a source connector", self.spec.name))),
        }
    }
}

/// How a plugin failure reaches the seam: the guest's own error keeps its flag; everything else
/// (trap, limits, garbage, a poisoned instance) is fatal.
fn module_error(error: PluginError) -> ModuleError {
    match error {
        PluginError::ConnectorError { message, retriable, .. } => ModuleError { message, retriable },
        other => ModuleError::fatal(other.to_string()),
    }
}

/// One source task's Wasm instance.
pub struct WasmSource {
    file_keys: Vec<String>,
    context: TaskContext,
    module: sluice_wasm::SourceModule,
    instance: Option<SourceInstance>,
}

impl SourceModule for WasmSource {
    fn start(&mut self, task: &TaskConfig, positions: &[ConnectorOffset]) -> Result<(), ModuleError> {
        let config = instance_config(&self.file_keys, &self.context, task, DirAccess::ReadOnly)?;
        let positions: Vec<SourcePosition> = positions
            .iter()
            .filter_map(|p| {
                let offset = p.offset.as_ref()?;
                Some(SourcePosition {
                    partition: Value::Object(p.partition.clone()).to_string(),
                    offset: Value::Object(offset.clone()).to_string(),
                })
            })
            .collect();
        self.instance = Some(self.module.instantiate(config, &positions).map_err(module_error)?);
        Ok(())
    }

    fn poll(&mut self) -> Result<SourcePoll, ModuleError> {
        let instance = self.instance.as_mut().ok_or_else(|| ModuleError::fatal("poll before start"))?;
        let result = instance.poll().map_err(module_error)?;
        // The driver checks them against the offset store's rules before it writes the records.
        let mut positions = Vec::with_capacity(result.positions.len());
        for (idx, position) in result.positions.into_iter().enumerate() {
            positions.push((json_object(idx, "partition", &position.partition)?, json_object(idx, "offset", &position.offset)?));
        }
        let records = result
            .records
            .into_iter()
            .map(|r| SourceRecord {
                topic: r.topic,
                partition: r.partition,
                key: r.key.map(Bytes::from),
                value: r.value.map(Bytes::from),
                headers: r.headers.into_iter().map(|h| (h.key, Some(Bytes::from(h.value)))).collect(),
                timestamp_ms: r.timestamp_ms,
            })
            .collect();
        Ok(SourcePoll { records, positions, idle: std::time::Duration::from_millis(u64::from(result.idle_ms)) })
    }

    fn stop(&mut self) {
        self.instance = None;
    }
}

/// A position's partition or offset must be a JSON object (Kafka Connect's maps).
fn json_object(idx: usize, what: &str, text: &str) -> Result<Map<String, Value>, ModuleError> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(ModuleError::fatal(format!("malformed output: poll's position {idx} has a {what} that is not a JSON object"))),
    }
}

/// One sink task's Wasm instance.
pub struct WasmSink {
    file_keys: Vec<String>,
    context: TaskContext,
    module: sluice_wasm::SinkModule,
    instance: Option<SinkInstance>,
}

impl SinkModule for WasmSink {
    fn start(&mut self, task: &TaskConfig) -> Result<(), ModuleError> {
        let config = instance_config(&self.file_keys, &self.context, task, DirAccess::ReadWrite)?;
        self.instance = Some(self.module.instantiate(config).map_err(module_error)?);
        Ok(())
    }

    fn put(&mut self, batch: &[SinkRecord]) -> Result<(), PutError> {
        let instance =
            self.instance.as_mut().ok_or_else(|| PutError { message: "put before start".into(), retriable: false, record: None })?;
        // Topics once per batch; each record names its topic by index.
        let mut topics: Vec<String> = Vec::new();
        let records: Vec<sluice_wasm::SinkRecord> = batch
            .iter()
            .map(|r| {
                let topic = match topics.iter().position(|t| *t == r.topic) {
                    Some(idx) => idx,
                    None => {
                        topics.push(r.topic.clone());
                        topics.len() - 1
                    }
                };
                sluice_wasm::SinkRecord {
                    topic: topic as u32,
                    record: sluice_wasm::input_record(
                        r.key.as_deref(),
                        r.value.as_deref(),
                        r.headers.iter().map(|(key, value)| (key.as_str(), value.as_deref())),
                        r.timestamp_ms,
                        r.partition,
                        r.offset,
                    ),
                }
            })
            .collect();
        instance.put(&topics, &records).map_err(|error| match error {
            PluginError::ConnectorError { message, retriable, record_index, .. } => PutError { message, retriable, record: record_index },
            other => PutError { message: other.to_string(), retriable: false, record: None },
        })
    }

    fn stop(&mut self) {
        self.instance = None;
    }
}
