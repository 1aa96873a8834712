//! A loaded transform: compiled, checked against the world, ready to instantiate any number of times
//! (one instance per input partition). Cheap to clone.

use std::time::Duration;

use crate::bindings::TransformPre;
use crate::host::HostState;
use crate::instance::{Instance, InstanceConfig};
use crate::{Engine, TransformError};

#[derive(Clone)]
pub struct Module {
    pub(crate) engine: Engine,
    pub(crate) pre: TransformPre<HostState>,
    digest: String,
    cache_hit: bool,
    load_time: Duration,
}

impl Module {
    pub(crate) fn new(engine: Engine, pre: TransformPre<HostState>, digest: String, cache_hit: bool, load_time: Duration) -> Module {
        Module { engine, pre, digest, cache_hit, load_time }
    }

    /// The sha256 of the component's bytes, lower-case hex: identifies a module version.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Whether `load` found the compilation in the on-disk cache.
    pub fn cache_hit(&self) -> bool {
        self.cache_hit
    }

    /// How long `load` took (compile or cached load, plus the world check).
    pub fn load_time(&self) -> Duration {
        self.load_time
    }

    /// Make an instance with its own memory, limits, configuration and outputs, and run its `init`.
    pub fn instantiate(&self, config: InstanceConfig) -> Result<Instance, TransformError> {
        Instance::new(self, config)
    }
}
