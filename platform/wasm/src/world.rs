//! The worlds of `sluice:plugin` this host runs. Adding one:
//! a variant here with its name and export, a `bindgen!` module in `lib.rs` reusing the shared
//! interfaces, its own imports in [`World::add_imports`], its export check in [`World::check`], and
//! a typed module/instance pair beside `transform.rs` built on `Sandbox`. The engine, linker setup,
//! limits, store, memory cap, CPU bound and error classification are shared and stay as they are.

use std::fmt;

use wasmtime::component::{HasSelf, InstancePre, Linker};

use crate::WIT_VERSION;
use crate::bindings::mirror_policy::MirrorPolicyPre;
use crate::bindings::sink::SinkPre;
use crate::bindings::source::SourcePre;
use crate::bindings::transform::TransformPre;
use crate::host::HostState;

/// A world of the `sluice:plugin` package: what a component exports decides which it implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum World {
    /// Reads records of one topic, writes records to output topics (`interface transformer`).
    Transform,
    /// Reads an outside system, returns records and source positions (`interface source-connector`).
    Source,
    /// Writes committed records to an outside system (`interface sink-connector`).
    Sink,
    /// Names and picks what a mirror copies (`interface replication-policy`).
    MirrorPolicy,
}

impl World {
    /// Every world this host runs.
    pub const ALL: [World; 4] = [World::Transform, World::Source, World::Sink, World::MirrorPolicy];

    /// The world's name in the WIT and in APIs (`"transform"`).
    pub fn name(self) -> &'static str {
        match self {
            World::Transform => "transform",
            World::Source => "source",
            World::Sink => "sink",
            World::MirrorPolicy => "mirror-policy",
        }
    }

    /// The world of this name, if the host runs it.
    pub fn from_name(name: &str) -> Option<World> {
        World::ALL.into_iter().find(|world| world.name() == name)
    }

    /// The interface a component of this world exports; its name carries the package version.
    pub fn export(self) -> String {
        match self {
            World::Transform => format!("sluice:plugin/transformer@{WIT_VERSION}"),
            World::Source => format!("sluice:plugin/source-connector@{WIT_VERSION}"),
            World::Sink => format!("sluice:plugin/sink-connector@{WIT_VERSION}"),
            World::MirrorPolicy => format!("sluice:plugin/replication-policy@{WIT_VERSION}"),
        }
    }

    /// Link the imports this world has beyond the shared ones (WASI and `host`).
    pub(crate) fn add_imports(self, linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
        match self {
            // A transform and a mirror policy import only `host`.
            World::Transform | World::MirrorPolicy => Ok(()),
            // Connectors may import `sql` (answered by the runtime's `SqlHost`, if it gave one).
            World::Source | World::Sink => crate::bindings::sql::add_to_linker::<HostState, HasSelf<HostState>>(linker, |state| state),
        }
    }

    /// Check that a component whose imports this world's linker satisfies exports the world's
    /// functions with the right types.
    pub(crate) fn check(self, pre: &InstancePre<HostState>) -> wasmtime::Result<()> {
        match self {
            World::Transform => TransformPre::new(pre.clone()).map(drop),
            World::Source => SourcePre::new(pre.clone()).map(drop),
            World::Sink => SinkPre::new(pre.clone()).map(drop),
            World::MirrorPolicy => MirrorPolicyPre::new(pre.clone()).map(drop),
        }
    }
}

impl fmt::Display for World {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
