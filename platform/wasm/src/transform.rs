//! The `transform` world: [`TransformModule`] (a component checked against the world, ready to
//! instantiate once per input partition) and [`TransformInstance`] (one batch per call, output
//! validated before the broker sees it). A transform that exports `batch-transformer` is called
//! through it (`batch`: one buffer each way); one that exports only `process` gets its records as a
//! list, and the host converts at the boundary, so the runtime sees one interface either way.
//! Everything not specific to transforms lives in `sandbox`.

use std::time::Duration;

use wasmtime::Store;

use crate::batch::{InputSlice, Output, decode_output};
use crate::bindings::batch_transform::{BatchTransform, BatchTransformPre};
use crate::bindings::transform::{Transform, TransformPre};
use crate::engine::{CompiledComponent, Tier, WorldPre};
use crate::host::HostState;
use crate::limits::*;
use crate::sandbox::{InstanceConfig, Sandbox};
use crate::{InputRecord, OutputRecord, PluginError, World};

/// A loaded transform: compiled, checked against the world, ready to instantiate any number of
/// times. Cheap to clone.
#[derive(Clone)]
pub struct TransformModule {
    component: CompiledComponent,
    pre: WorldPre<TransformPre<HostState>>,
    /// Set when the component also exports `batch-transformer`.
    batch: Option<WorldPre<BatchTransformPre<HostState>>>,
}

impl TransformModule {
    pub(crate) fn new(component: CompiledComponent) -> Result<TransformModule, PluginError> {
        let pre = WorldPre::new(&component, World::Transform, TransformPre::new)?;
        // Not exporting `batch-transformer` (or exporting it with other types) is no error: the
        // transform is called through `process`, as before the interface existed.
        let batch = WorldPre::new(&component, World::Transform, BatchTransformPre::new).ok();
        Ok(TransformModule { component, pre, batch })
    }

    /// The compiled component this module was made from.
    pub fn component(&self) -> &CompiledComponent {
        &self.component
    }

    /// The sha256 of the component's bytes, lower-case hex: identifies a module version.
    pub fn digest(&self) -> &str {
        self.component.digest()
    }

    /// The compiler of the best code so far (see [`CompiledComponent::tier`]).
    pub fn tier(&self) -> Tier {
        self.component.tier()
    }

    /// Whether the component exports `batch-transformer` (batches cross as one buffer each way).
    pub fn batch_abi(&self) -> bool {
        self.batch.is_some()
    }

    /// Whether loading found the compilation in the on-disk cache.
    pub fn cache_hit(&self) -> bool {
        self.component.cache_hit()
    }

    /// How long compiling (or loading the cached compilation) took.
    pub fn load_time(&self) -> Duration {
        self.component.load_time()
    }

    /// Make an instance with its own memory, limits, configuration and output topics (index 0 is
    /// the default output), and run its `init` under the CPU bound.
    pub fn instantiate(&self, config: InstanceConfig, outputs: Vec<String>) -> Result<TransformInstance, PluginError> {
        if outputs.is_empty() || outputs.len() > OUTPUTS_MAX {
            return Err(PluginError::InvalidRequest(format!("{} output topics; 1..={OUTPUTS_MAX} allowed", outputs.len())));
        }
        if let Some(name) = outputs.iter().find(|name| name.is_empty() || name.len() > OUTPUT_NAME_BYTES_MAX) {
            return Err(PluginError::InvalidRequest(format!("output topic name {name:?} must be 1..={OUTPUT_NAME_BYTES_MAX} bytes")));
        }
        let (config, outputs) = (&config, &outputs);
        let (sandbox, bindings, init) = match &self.batch {
            Some(batch) => self.start(batch, config, |pre, store| {
                let bindings = pre.instantiate(&mut *store)?;
                let init = bindings.sluice_plugin_transformer().call_init(&mut *store, &config.config, outputs)?;
                Ok((Bindings::Batch(bindings), init))
            })?,
            None => self.start(&self.pre, config, |pre, store| {
                let bindings = pre.instantiate(&mut *store)?;
                let init = bindings.sluice_plugin_transformer().call_init(&mut *store, &config.config, outputs)?;
                Ok((Bindings::Records(bindings), init))
            })?,
        };
        match init {
            Ok(()) => Ok(TransformInstance { sandbox, bindings, outputs_len: outputs.len() }),
            Err(message) => Err(PluginError::InitFailed(truncate_message(message, GUEST_ERROR_BYTES_MAX))),
        }
    }
}

impl TransformModule {
    /// A sandbox on the best code `pres` has so far, and `instantiate` (instantiation and `init`)
    /// run in it under the CPU bound.
    fn start<P: Clone>(
        &self,
        pres: &WorldPre<P>,
        config: &InstanceConfig,
        instantiate: impl FnOnce(&P, &mut Store<HostState>) -> wasmtime::Result<(Bindings, Result<(), String>)>,
    ) -> Result<(Sandbox, Bindings, Result<(), String>), PluginError> {
        let (tier, pre) = pres.current(&self.component)?;
        let mut sandbox = Sandbox::new(&self.component, tier, config)?;
        let (bindings, init) = sandbox.call(|store| instantiate(&pre, store))?;
        Ok((sandbox, bindings, init))
    }
}

/// The instance's exports: `process` only, or `process-encoded` too.
enum Bindings {
    Records(Transform),
    Batch(BatchTransform),
}

/// A live transform instance. Not shared: the broker drives each from one thread at a time (`Send`,
/// not `Sync`).
pub struct TransformInstance {
    sandbox: Sandbox,
    bindings: Bindings,
    outputs_len: usize,
}

fn check_input_len(records: usize) -> Result<(), PluginError> {
    if records > INPUT_RECORDS_PER_CALL_MAX {
        return Err(PluginError::InvalidRequest(format!("{records} records in one batch; the limit is {INPUT_RECORDS_PER_CALL_MAX}")));
    }
    Ok(())
}

impl TransformInstance {
    /// Transform one batch given as records. A failure inside the call — trap, timeout, memory
    /// exhaustion, output the canonical ABI or `OUTPUT_BYTES_PER_CALL_MAX` refuses — poisons the
    /// instance: every later call returns `Poisoned`. A `GuestError` (the guest's own `Err`) or a
    /// `MalformedOutput` found by the host's checks of well-formed output leaves it usable; the
    /// broker decides what to do.
    pub fn process(&mut self, batch: &[InputRecord]) -> Result<Vec<OutputRecord>, PluginError> {
        check_input_len(batch.len())?;
        let result = match &self.bindings {
            Bindings::Records(bindings) => self.sandbox.call(|store| bindings.sluice_plugin_transformer().call_process(store, batch))?,
            Bindings::Batch(bindings) => self.sandbox.call(|store| bindings.sluice_plugin_transformer().call_process(store, batch))?,
        };
        match result {
            Ok(records) => {
                self.validate_output(&records)?;
                Ok(records)
            }
            Err(error) => Err(self.guest_error(error.message, batch.len())),
        }
    }

    /// Transform one batch given as one buffer ([`crate::InputBatch`]), the data path's form: one
    /// copy into the guest and one out, and the output's keys and values are slices of what came
    /// out. Errors and poisoning as for [`TransformInstance::process`]. A transform that exports only
    /// `process` gets the records as a list.
    pub fn process_batch(&mut self, batch: InputSlice<'_>) -> Result<Vec<Output>, PluginError> {
        check_input_len(batch.len())?;
        let bindings = match &self.bindings {
            Bindings::Batch(bindings) => bindings,
            Bindings::Records(_) => {
                let records = self.process(&batch.decode())?;
                return Ok(records.into_iter().map(Output::from).collect());
            }
        };
        let (partition, count) = (batch.partition, batch.count as u32);
        let result = self
            .sandbox
            .call(|store| bindings.sluice_plugin_batch_transformer().call_process_encoded(store, partition, count, batch.bytes))?;
        match result {
            Ok(encoded) => decode_output(encoded, self.outputs_len),
            Err(error) => Err(self.guest_error(error.message, batch.len())),
        }
    }

    /// Whether this instance takes batches as one buffer (`batch-transformer`).
    pub fn batch_abi(&self) -> bool {
        matches!(self.bindings, Bindings::Batch(_))
    }

    fn guest_error(&self, message: String, batch_len: usize) -> PluginError {
        let record_index = self.sandbox.store().data().failed_record.map(|idx| idx as usize).filter(|idx| *idx < batch_len);
        PluginError::GuestError { world: World::Transform, message: truncate_message(message, GUEST_ERROR_BYTES_MAX), record_index }
    }

    /// Change the limits; the next call runs under them. Memory already allocated is kept.
    pub fn set_limits(&mut self, limits: Limits) -> Result<(), PluginError> {
        self.sandbox.set_limits(limits)
    }

    pub fn limits(&self) -> Limits {
        self.sandbox.limits()
    }

    /// Bytes of linear memory the guest holds now (for metrics; it never shrinks).
    pub fn memory_bytes(&self) -> usize {
        self.sandbox.memory_bytes()
    }

    /// Why the instance cannot be called any more, if it cannot.
    pub fn poisoned(&self) -> Option<&str> {
        self.sandbox.poisoned()
    }

    /// The compiler of the code this instance runs.
    pub fn tier(&self) -> Tier {
        self.sandbox.tier()
    }

    /// Whether the module now has optimized code and this instance runs baseline code: replace it
    /// (instantiate again) between batches.
    pub fn superseded(&self) -> bool {
        self.sandbox.superseded()
    }

    fn validate_output(&self, records: &[OutputRecord]) -> Result<(), PluginError> {
        if records.len() > OUTPUT_RECORDS_PER_CALL_MAX {
            return Err(PluginError::MalformedOutput(format!(
                "{} records from one batch; the limit is {OUTPUT_RECORDS_PER_CALL_MAX}",
                records.len()
            )));
        }
        for (idx, record) in records.iter().enumerate() {
            if record.output as usize >= self.outputs_len {
                return Err(PluginError::MalformedOutput(format!(
                    "record {idx} names output {} but the transform has {} output topics",
                    record.output, self.outputs_len
                )));
            }
            crate::connector::check_record_size(idx, record.key.as_deref(), record.value.as_deref(), &record.headers)?;
        }
        Ok(())
    }
}
