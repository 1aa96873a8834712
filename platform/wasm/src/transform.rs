//! The `transform` world: [`TransformModule`] (a component checked against the world, ready to
//! instantiate once per input partition) and [`TransformInstance`] (one batch per call, output
//! validated before the broker sees it). Everything not specific to transforms lives in `sandbox`.

use std::time::Duration;

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
}

impl TransformModule {
    pub(crate) fn new(component: CompiledComponent) -> Result<TransformModule, PluginError> {
        let pre = WorldPre::new(&component, World::Transform, TransformPre::new)?;
        Ok(TransformModule { component, pre })
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
        let (tier, pre) = self.pre.current(&self.component)?;
        let mut sandbox = Sandbox::new(&self.component, tier, &config)?;
        let init = sandbox.call(|store| {
            let bindings = pre.instantiate(&mut *store)?;
            let init = bindings.sluice_plugin_transformer().call_init(&mut *store, &config.config, &outputs)?;
            Ok((bindings, init))
        })?;
        match init {
            (bindings, Ok(())) => Ok(TransformInstance { sandbox, bindings, outputs_len: outputs.len() }),
            (_, Err(message)) => Err(PluginError::InitFailed(truncate_message(message, GUEST_ERROR_BYTES_MAX))),
        }
    }
}

/// A live transform instance. Not shared: the broker drives each from one thread at a time (`Send`,
/// not `Sync`).
pub struct TransformInstance {
    sandbox: Sandbox,
    bindings: Transform,
    outputs_len: usize,
}

impl TransformInstance {
    /// Transform one batch. A failure inside the call — trap, timeout, memory exhaustion, output the
    /// canonical ABI or `OUTPUT_BYTES_PER_CALL_MAX` refuses — poisons the instance: every later call
    /// returns `Poisoned`. A `GuestError` (the guest's own `Err`) or a `MalformedOutput` found by the
    /// host's checks of well-formed output leaves it usable; the broker decides what to do.
    pub fn process(&mut self, batch: &[InputRecord]) -> Result<Vec<OutputRecord>, PluginError> {
        if batch.len() > INPUT_RECORDS_PER_CALL_MAX {
            return Err(PluginError::InvalidRequest(format!(
                "{} records in one batch; the limit is {INPUT_RECORDS_PER_CALL_MAX}",
                batch.len()
            )));
        }
        let bindings = &self.bindings;
        match self.sandbox.call(|store| bindings.sluice_plugin_transformer().call_process(store, batch))? {
            Ok(records) => {
                self.validate_output(&records)?;
                Ok(records)
            }
            Err(error) => {
                let record_index = self.sandbox.store().data().failed_record.map(|idx| idx as usize).filter(|idx| *idx < batch.len());
                Err(PluginError::GuestError {
                    world: World::Transform,
                    message: truncate_message(error.message, GUEST_ERROR_BYTES_MAX),
                    record_index,
                })
            }
        }
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
