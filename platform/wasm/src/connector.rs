//! The connector worlds, `source` and `sink`: [`SourceModule`] / [`SinkModule`] (a component checked
//! against its world, instantiated once per connector task) and [`SourceInstance`] /
//! [`SinkInstance`] (one `poll` or `put` per call). Built on `sandbox` exactly as `transform.rs` is:
//! the same store, memory cap, CPU bound per call, bound on bytes copied out of the guest, and error
//! classification. What is special here is what the host checks in what a connector returns: topic
//! names, record sizes, source positions (JSON objects of bounded size), the failing record's index.

use crate::bindings::connector_types::{ConnectorSpec, PollResult, SinkRecord, SourcePosition};
use crate::bindings::sink::{Sink, SinkPre};
use crate::bindings::source::{Source, SourcePre};
use crate::engine::{CompiledComponent, WorldPre};
use crate::host::HostState;
use crate::limits::*;
use crate::sandbox::{InstanceConfig, Sandbox};
use crate::{Header, PluginError, World};

/// A loaded source connector: compiled, checked against the `source` world. Cheap to clone.
#[derive(Clone)]
pub struct SourceModule {
    component: CompiledComponent,
    pre: WorldPre<SourcePre<HostState>>,
}

/// A loaded sink connector: compiled, checked against the `sink` world. Cheap to clone.
#[derive(Clone)]
pub struct SinkModule {
    component: CompiledComponent,
    pre: WorldPre<SinkPre<HostState>>,
}

impl SourceModule {
    pub(crate) fn new(component: CompiledComponent) -> Result<SourceModule, PluginError> {
        let pre = WorldPre::new(&component, World::Source, SourcePre::new)?;
        Ok(SourceModule { component, pre })
    }

    pub fn component(&self) -> &CompiledComponent {
        &self.component
    }

    /// The connector's version and config keys, from an instance made for this call alone (no
    /// `init`, nothing granted, default limits).
    pub fn describe(&self, config: &InstanceConfig) -> Result<ConnectorSpec, PluginError> {
        let config = InstanceConfig { config: Vec::new(), grants: Default::default(), ..config.clone() };
        let (tier, pre) = self.pre.current(&self.component)?;
        let mut sandbox = Sandbox::new(&self.component, tier, &config)?;
        let spec = sandbox.call(|store| {
            let bindings = pre.instantiate(&mut *store)?;
            bindings.sluice_plugin_source_connector().call_describe(&mut *store)
        })?;
        check_spec(spec)
    }

    /// Make an instance with its own memory, limits, grants and configuration, and run its `init`
    /// with the connector's last committed positions, under the CPU bound.
    pub fn instantiate(&self, config: InstanceConfig, positions: &[SourcePosition]) -> Result<SourceInstance, PluginError> {
        if positions.len() > SOURCE_POSITIONS_PER_INIT_MAX {
            return Err(PluginError::InvalidRequest(format!("{} positions; at most {SOURCE_POSITIONS_PER_INIT_MAX}", positions.len())));
        }
        // A connector's state (positions, connections, what it has buffered) lives in its instance,
        // so it cannot move to optimized code mid-run as a transform does: it waits for it here.
        self.component.wait_optimized();
        let (tier, pre) = self.pre.current(&self.component)?;
        let mut sandbox = Sandbox::new(&self.component, tier, &config)?;
        let (bindings, init) = sandbox.call(|store| {
            let bindings = pre.instantiate(&mut *store)?;
            let init = bindings.sluice_plugin_source_connector().call_init(&mut *store, &config.config, positions)?;
            Ok((bindings, init))
        })?;
        match init {
            Ok(()) => Ok(SourceInstance { sandbox, bindings }),
            Err(error) => Err(connector_error(World::Source, "init", error.message, error.retriable, None)),
        }
    }
}

impl SinkModule {
    pub(crate) fn new(component: CompiledComponent) -> Result<SinkModule, PluginError> {
        let pre = WorldPre::new(&component, World::Sink, SinkPre::new)?;
        Ok(SinkModule { component, pre })
    }

    pub fn component(&self) -> &CompiledComponent {
        &self.component
    }

    /// The connector's version and config keys (see [`SourceModule::describe`]).
    pub fn describe(&self, config: &InstanceConfig) -> Result<ConnectorSpec, PluginError> {
        let config = InstanceConfig { config: Vec::new(), grants: Default::default(), ..config.clone() };
        let (tier, pre) = self.pre.current(&self.component)?;
        let mut sandbox = Sandbox::new(&self.component, tier, &config)?;
        let spec = sandbox.call(|store| {
            let bindings = pre.instantiate(&mut *store)?;
            bindings.sluice_plugin_sink_connector().call_describe(&mut *store)
        })?;
        check_spec(spec)
    }

    /// Make an instance and run its `init`, under the CPU bound.
    pub fn instantiate(&self, config: InstanceConfig) -> Result<SinkInstance, PluginError> {
        // A connector's state (positions, connections, what it has buffered) lives in its instance,
        // so it cannot move to optimized code mid-run as a transform does: it waits for it here.
        self.component.wait_optimized();
        let (tier, pre) = self.pre.current(&self.component)?;
        let mut sandbox = Sandbox::new(&self.component, tier, &config)?;
        let (bindings, init) = sandbox.call(|store| {
            let bindings = pre.instantiate(&mut *store)?;
            let init = bindings.sluice_plugin_sink_connector().call_init(&mut *store, &config.config)?;
            Ok((bindings, init))
        })?;
        match init {
            Ok(()) => Ok(SinkInstance { sandbox, bindings }),
            Err(error) => Err(connector_error(World::Sink, "init", error.message, error.retriable, None)),
        }
    }
}

impl CompiledComponent {
    /// This component as a source connector, or `WrongWorld`.
    pub fn source(&self) -> Result<SourceModule, PluginError> {
        SourceModule::new(self.clone())
    }

    /// This component as a sink connector, or `WrongWorld`.
    pub fn sink(&self) -> Result<SinkModule, PluginError> {
        SinkModule::new(self.clone())
    }
}

/// A live source instance, driven from one thread at a time (`Send`, not `Sync`).
pub struct SourceInstance {
    sandbox: Sandbox,
    bindings: Source,
}

impl SourceInstance {
    /// Poll once. A trap, timeout, memory exhaustion or output the ABI or the host-copy bound
    /// refuses poisons the instance (`Poisoned` afterwards); the guest's own error is
    /// `ConnectorError` and output that breaks the contract is `MalformedOutput` — both leave it
    /// usable, and the runtime decides.
    pub fn poll(&mut self) -> Result<PollResult, PluginError> {
        let bindings = &self.bindings;
        match self.sandbox.call(|store| bindings.sluice_plugin_source_connector().call_poll(store))? {
            Ok(result) => {
                check_poll(&result)?;
                Ok(result)
            }
            Err(error) => Err(connector_error(World::Source, "poll", error.message, error.retriable, None)),
        }
    }

    pub fn poisoned(&self) -> Option<&str> {
        self.sandbox.poisoned()
    }

    pub fn memory_bytes(&self) -> usize {
        self.sandbox.memory_bytes()
    }

    pub fn limits(&self) -> Limits {
        self.sandbox.limits()
    }
}

/// A live sink instance, driven from one thread at a time (`Send`, not `Sync`).
pub struct SinkInstance {
    sandbox: Sandbox,
    bindings: Sink,
}

impl SinkInstance {
    /// Write one batch. `topics` are the names the records' `topic` indexes point into. The guest's
    /// error is `ConnectorError` with the failing record's index when the guest named one inside
    /// the batch (an index outside it is dropped, as for transforms).
    pub fn put(&mut self, topics: &[String], batch: &[SinkRecord]) -> Result<(), PluginError> {
        if batch.len() > INPUT_RECORDS_PER_CALL_MAX {
            return Err(PluginError::InvalidRequest(format!(
                "{} records in one batch; the limit is {INPUT_RECORDS_PER_CALL_MAX}",
                batch.len()
            )));
        }
        if topics.len() > SINK_TOPICS_PER_BATCH_MAX {
            return Err(PluginError::InvalidRequest(format!("{} topics in one batch; at most {SINK_TOPICS_PER_BATCH_MAX}", topics.len())));
        }
        if let Some(record) = batch.iter().find(|r| r.topic as usize >= topics.len()) {
            return Err(PluginError::InvalidRequest(format!("a record names topic {} of {}", record.topic, topics.len())));
        }
        let bindings = &self.bindings;
        match self.sandbox.call(|store| bindings.sluice_plugin_sink_connector().call_put(store, topics, batch))? {
            Ok(()) => Ok(()),
            Err(error) => {
                let record_index = error.record_index.map(|idx| idx as usize).filter(|idx| *idx < batch.len());
                Err(connector_error(World::Sink, "put", error.message, error.retriable, record_index))
            }
        }
    }

    pub fn poisoned(&self) -> Option<&str> {
        self.sandbox.poisoned()
    }

    pub fn memory_bytes(&self) -> usize {
        self.sandbox.memory_bytes()
    }

    pub fn limits(&self) -> Limits {
        self.sandbox.limits()
    }
}

fn connector_error(world: World, call: &str, message: String, retriable: bool, record_index: Option<usize>) -> PluginError {
    PluginError::ConnectorError {
        world,
        message: format!("{call}: {}", truncate_message(message, GUEST_ERROR_BYTES_MAX)),
        retriable,
        record_index,
    }
}

fn check_spec(spec: ConnectorSpec) -> Result<ConnectorSpec, PluginError> {
    if spec.keys.len() > CONNECTOR_KEYS_MAX {
        return Err(PluginError::MalformedOutput(format!("describe listed {} keys; at most {CONNECTOR_KEYS_MAX}", spec.keys.len())));
    }
    let too_long = |text: &str| text.len() > CONNECTOR_SPEC_TEXT_BYTES_MAX;
    if too_long(&spec.version) {
        return Err(PluginError::MalformedOutput(format!("describe's version is over {CONNECTOR_SPEC_TEXT_BYTES_MAX} bytes")));
    }
    for key in &spec.keys {
        if key.name.is_empty() || too_long(&key.name) || too_long(&key.documentation) || key.default_value.as_deref().is_some_and(too_long)
        {
            return Err(PluginError::MalformedOutput(format!(
                "describe's key {:?}: names are 1..={CONNECTOR_SPEC_TEXT_BYTES_MAX} bytes, and so are documentation and defaults at most",
                truncate_message(key.name.clone(), 64)
            )));
        }
    }
    Ok(spec)
}

fn check_poll(result: &PollResult) -> Result<(), PluginError> {
    if result.records.len() > SOURCE_RECORDS_PER_POLL_MAX {
        return Err(PluginError::MalformedOutput(format!(
            "poll returned {} records; at most {SOURCE_RECORDS_PER_POLL_MAX}",
            result.records.len()
        )));
    }
    if result.positions.len() > SOURCE_POSITIONS_PER_POLL_MAX {
        return Err(PluginError::MalformedOutput(format!(
            "poll returned {} positions; at most {SOURCE_POSITIONS_PER_POLL_MAX}",
            result.positions.len()
        )));
    }
    for (idx, record) in result.records.iter().enumerate() {
        if record.topic.is_empty() || record.topic.len() > OUTPUT_NAME_BYTES_MAX {
            return Err(PluginError::MalformedOutput(format!(
                "record {idx} names a topic of {} bytes; topic names are 1..={OUTPUT_NAME_BYTES_MAX}",
                record.topic.len()
            )));
        }
        if record.partition.is_some_and(|p| p < 0) {
            return Err(PluginError::MalformedOutput(format!("record {idx} names partition {:?}", record.partition)));
        }
        check_record_size(idx, record.key.as_deref(), record.value.as_deref(), &record.headers)?;
    }
    for (idx, position) in result.positions.iter().enumerate() {
        for (what, text) in [("partition", &position.partition), ("offset", &position.offset)] {
            if text.len() > SOURCE_POSITION_BYTES_MAX {
                return Err(PluginError::MalformedOutput(format!(
                    "position {idx}: its {what} is {} bytes; at most {SOURCE_POSITION_BYTES_MAX}",
                    text.len()
                )));
            }
        }
    }
    Ok(())
}

/// Key + value + header bytes of one record.
pub(crate) fn record_bytes(key: Option<&[u8]>, value: Option<&[u8]>, headers: &[Header]) -> usize {
    key.map_or(0, <[u8]>::len) + value.map_or(0, <[u8]>::len) + headers.iter().map(|h| h.key.len() + h.value.len()).sum::<usize>()
}

/// Key + value + headers of one record against `OUTPUT_RECORD_BYTES_MAX`, headers against
/// `OUTPUT_HEADERS_PER_RECORD_MAX`.
pub(crate) fn check_record_size(idx: usize, key: Option<&[u8]>, value: Option<&[u8]>, headers: &[Header]) -> Result<(), PluginError> {
    if headers.len() > OUTPUT_HEADERS_PER_RECORD_MAX {
        return Err(PluginError::MalformedOutput(format!(
            "record {idx} has {} headers; the limit is {OUTPUT_HEADERS_PER_RECORD_MAX}",
            headers.len()
        )));
    }
    let bytes = record_bytes(key, value, headers);
    if bytes > OUTPUT_RECORD_BYTES_MAX {
        return Err(PluginError::MalformedOutput(format!(
            "record {idx} is {bytes} bytes (key, value and headers); the limit is {OUTPUT_RECORD_BYTES_MAX}"
        )));
    }
    Ok(())
}
