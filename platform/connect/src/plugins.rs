//! Connector plugins: what `connector.class` can name, and what `GET /connector-plugins` lists.
//!
//! A plugin is a module in the shared registry (`sluice-runtime`'s `ModuleRegistry`) whose component
//! implements the `source` or the `sink` world (the registry lists each module's worlds): a
//! [`WasmPlugin`], whose version and keys come from the guest's `describe`, called once per module
//! digest. Rust plugins can be registered directly ([`Catalog::register`]) — only tests do (see
//! [`crate::testing`]).
//!
//! `connector.class` may also be one of the Java class names people's existing configs carry
//! ([`JAVA_CLASS_ALIASES`]): it resolves to the first-party module of the same job.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use sluice_runtime::{ModuleInfo, Plugins};

use crate::config::{ConfigKeyDef, ConnectorType};
use crate::error::ConnectError;
use crate::task::{SinkModule, SourceModule, TaskConfig, TaskContext};
use crate::wasm::WasmPlugin;

/// Java connector classes accepted as `connector.class`, and the module each stands for.
pub const JAVA_CLASS_ALIASES: &[(&str, &str)] = &[
    ("io.confluent.connect.jdbc.JdbcSourceConnector", "jdbc-source"),
    ("io.confluent.connect.jdbc.JdbcSinkConnector", "jdbc-sink"),
    ("io.debezium.connector.postgresql.PostgresConnector", "postgres-cdc"),
];

/// The world names a connector module implements.
pub const SOURCE_WORLD: &str = "source";
pub const SINK_WORLD: &str = "sink";

/// What a plugin is, as validation and `GET /connector-plugins` see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginSpec {
    /// The registry name (`jdbc-source`): what `connector.class` names.
    pub name: String,
    /// What `GET /connector-plugins` shows as `class` (the name, for modules).
    pub class: String,
    pub kind: ConnectorType,
    pub version: String,
    /// The keys the plugin reads (besides the runtime's own).
    pub keys: Vec<ConfigKeyDef>,
}

/// A connector plugin the runtime can run: it makes the module each task drives.
pub trait ConnectorPlugin: Send + Sync {
    fn spec(&self) -> &PluginSpec;
    /// A source module for one task. Called on the task's thread, at every (re)start of the task.
    fn source_module(&self, task: &TaskConfig, context: TaskContext) -> Result<Box<dyn SourceModule>, ConnectError>;
    /// A sink module for one task; its context's `sql` has the managed connection when the connector
    /// declares a `default` one.
    fn sink_module(&self, task: &TaskConfig, context: TaskContext) -> Result<Box<dyn SinkModule>, ConnectError>;
}

/// The kind of connector a registry module is, by the worlds it implements; `None` for a transform.
pub fn connector_kind(module: &ModuleInfo) -> Option<ConnectorType> {
    if module.worlds.iter().any(|w| w == SOURCE_WORLD) {
        Some(ConnectorType::Source)
    } else if module.worlds.iter().any(|w| w == SINK_WORLD) {
        Some(ConnectorType::Sink)
    } else {
        None
    }
}

/// Resolves a `connector.class` to a plugin name: a Java alias, else the name itself.
pub fn plugin_name_for_class(class: &str) -> &str {
    JAVA_CLASS_ALIASES.iter().find(|(java, _)| *java == class).map_or(class, |(_, module)| module)
}

/// Every connector plugin the runtime knows: Rust plugins registered in-process, then the registry's.
#[derive(Clone)]
pub struct Catalog {
    plugins: Option<Plugins>,
    builtin: Arc<RwLock<BTreeMap<String, Arc<dyn ConnectorPlugin>>>>,
    /// Registry modules already described, by name, with the digest they were described at (a name
    /// uploaded again is described again); `None` for one that failed to describe, so a module whose
    /// `describe` loops costs its CPU bound once, not on every listing. At most one entry per name.
    described: Arc<Mutex<BTreeMap<String, Described>>>,
}

/// What describing one registry module at one digest gave.
struct Described {
    digest: String,
    plugin: Option<Arc<WasmPlugin>>,
}

impl Catalog {
    /// `plugins`: the shared registry (`None` in tests that need no modules).
    pub fn new(plugins: Option<Plugins>) -> Catalog {
        Catalog { plugins, builtin: Arc::default(), described: Arc::default() }
    }

    /// Adds a Rust plugin (tests' fixtures; first-party connectors ship as Wasm modules instead).
    pub fn register(&self, plugin: Arc<dyn ConnectorPlugin>) {
        self.builtin.write().insert(plugin.spec().name.clone(), plugin);
    }

    /// The shared registry's plugin host, if the catalog has one.
    pub fn plugins(&self) -> Option<&Plugins> {
        self.plugins.as_ref()
    }

    fn modules(&self) -> Vec<ModuleInfo> {
        self.plugins.as_ref().and_then(|p| p.registry().ok()).map(|r| r.list()).unwrap_or_default()
    }

    /// Every plugin, builtin first, sorted by name within each.
    pub fn list(&self) -> Vec<PluginSpec> {
        let mut specs: Vec<PluginSpec> = self.builtin.read().values().map(|p| p.spec().clone()).collect();
        for module in self.modules() {
            if connector_kind(&module).is_none() || specs.iter().any(|s| s.name == module.name) {
                continue;
            }
            if let Some(plugin) = self.described(&module) {
                specs.push(plugin.spec().clone());
            }
        }
        specs
    }

    /// The Wasm plugin of a registry module implementing `source` or `sink`, described once per
    /// digest. A module that cannot be loaded or described is logged once and left out.
    fn described(&self, module: &ModuleInfo) -> Option<Arc<WasmPlugin>> {
        connector_kind(module)?;
        if let Some(described) = self.described.lock().get(&module.name)
            && described.digest == module.digest
        {
            return described.plugin.clone();
        }
        let registry = self.plugins.as_ref()?.registry().ok()?;
        let loaded = registry
            .load(&module.digest)
            .map_err(ConnectError::from)
            .and_then(|component| WasmPlugin::from_component(&module.name, &component));
        match loaded {
            Ok(Some(plugin)) => {
                let plugin = Arc::new(plugin);
                self.described
                    .lock()
                    .insert(module.name.clone(), Described { digest: module.digest.clone(), plugin: Some(Arc::clone(&plugin)) });
                Some(plugin)
            }
            Ok(None) => None,
            Err(error) => {
                tracing::warn!(module = module.name, %error, "a connector module cannot be used");
                self.described.lock().insert(module.name.clone(), Described { digest: module.digest.clone(), plugin: None });
                None
            }
        }
    }

    /// The plugin a `connector.class` (or a plugin path segment) names.
    pub fn resolve(&self, class: &str) -> Option<Arc<dyn ConnectorPlugin>> {
        let name = plugin_name_for_class(class);
        if let Some(plugin) = self.builtin.read().get(name) {
            return Some(Arc::clone(plugin));
        }
        let module = self.plugins.as_ref()?.registry().ok()?.get(name)?;
        self.described(&module).map(|plugin| plugin as Arc<dyn ConnectorPlugin>)
    }

    /// The registry's Wasm transforms, as (name, version): `GET /connector-plugins?connectorsOnly=false`.
    pub fn transforms(&self) -> Vec<(String, String)> {
        self.modules()
            .into_iter()
            .filter(|m| m.worlds.iter().any(|w| w == "transform"))
            .map(|m| (m.name, m.digest.get(..12).unwrap_or_default().to_string()))
            .collect()
    }

    /// The registry's transform `name`, compiled (a step of a connector's chain). Blocking: the first
    /// use of a digest may compile it.
    pub fn transform_module(&self, name: &str) -> Result<sluice_wasm::TransformModule, ConnectError> {
        let registry = self.plugins.as_ref().ok_or_else(|| ConnectError::NotFound("no module registry".into()))?.registry()?;
        let info = registry.get(name).ok_or_else(|| {
            ConnectError::NotFound(format!("module '{name}' is not in the registry (upload it with `sluice plugin upload`)"))
        })?;
        Ok(registry.load(&info.digest)?.transform().map_err(sluice_runtime::RuntimeError::from)?)
    }

    /// Whether `module` is a Wasm transform in the registry (a `transforms.<alias>.type`).
    pub fn is_transform(&self, module: &str) -> bool {
        let Some(registry) = self.plugins.as_ref().and_then(|p| p.registry().ok()) else { return false };
        registry.get(module).is_some_and(|m| m.worlds.iter().any(|w| w == "transform"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn module(name: &str, worlds: &[&str]) -> ModuleInfo {
        ModuleInfo {
            name: name.into(),
            digest: "0123456789abcdef0123".into(),
            bytes: 10,
            worlds: worlds.iter().map(|w| w.to_string()).collect(),
            uploaded_at_ms: 0,
            builtin: true,
        }
    }

    #[test]
    fn registry_modules_implementing_source_or_sink_are_connector_plugins_transforms_are_not() {
        assert_eq!(connector_kind(&module("jdbc-source", &["source"])), Some(ConnectorType::Source));
        assert_eq!(connector_kind(&module("jdbc-sink", &["sink"])), Some(ConnectorType::Sink));
        assert_eq!(connector_kind(&module("pii-mask", &["transform"])), None);
    }

    #[test]
    fn java_class_names_are_aliases_of_the_first_party_modules() {
        assert_eq!(plugin_name_for_class("io.confluent.connect.jdbc.JdbcSourceConnector"), "jdbc-source");
        assert_eq!(plugin_name_for_class("io.confluent.connect.jdbc.JdbcSinkConnector"), "jdbc-sink");
        assert_eq!(plugin_name_for_class("io.debezium.connector.postgresql.PostgresConnector"), "postgres-cdc");
        assert_eq!(plugin_name_for_class("file-source"), "file-source");
    }
}
