//! Connector plugins: what `connector.class` can name, and what `GET /connector-plugins` lists.
//!
//! A plugin is a module in the shared registry (`sluice-runtime`'s `ModuleRegistry`) that implements
//! the `source` or the `sink` world. Until those worlds exist in `sluice-wasm`, no uploaded module
//! implements one, so the registry contributes nothing; [`specs_from_modules`] is the code path that
//! will list them, and its unit test feeds it a stub registry entry. Rust plugins can be registered
//! directly ([`Catalog::register`]) — only tests do (see [`crate::testing`]).
//!
//! `connector.class` may also be one of the Java class names people's existing configs carry
//! ([`JAVA_CLASS_ALIASES`]): it resolves to the first-party module of the same job.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::RwLock;
use sluice_runtime::{ModuleInfo, Plugins};

use crate::config::{ConfigKeyDef, ConnectorType};
use crate::error::ConnectError;
use crate::task::{SinkModule, SourceModule, TaskConfig};

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
    fn source_module(&self, task: &TaskConfig) -> Result<Box<dyn SourceModule>, ConnectError>;
    /// A sink module for one task.
    fn sink_module(&self, task: &TaskConfig) -> Result<Box<dyn SinkModule>, ConnectError>;
}

/// A connector module in the registry. Its world's host bindings are the next piece of work, so it
/// cannot make tasks yet; a connector that names one shows FAILED with that reason.
struct RegistryModule {
    spec: PluginSpec,
}

impl RegistryModule {
    fn unsupported(&self) -> ConnectError {
        ConnectError::BadRequest(format!(
            "module '{}' implements the `{}` world, whose host bindings this broker does not have yet",
            self.spec.name,
            self.spec.kind.as_str()
        ))
    }
}

impl ConnectorPlugin for RegistryModule {
    fn spec(&self) -> &PluginSpec {
        &self.spec
    }

    fn source_module(&self, _: &TaskConfig) -> Result<Box<dyn SourceModule>, ConnectError> {
        Err(self.unsupported())
    }

    fn sink_module(&self, _: &TaskConfig) -> Result<Box<dyn SinkModule>, ConnectError> {
        Err(self.unsupported())
    }
}

/// The connector plugins in registry entries: modules implementing the `source` or `sink` world.
pub fn specs_from_modules(modules: &[ModuleInfo]) -> Vec<PluginSpec> {
    modules
        .iter()
        .filter_map(|module| {
            let kind = if module.worlds.iter().any(|w| w == SOURCE_WORLD) {
                ConnectorType::Source
            } else if module.worlds.iter().any(|w| w == SINK_WORLD) {
                ConnectorType::Sink
            } else {
                return None;
            };
            Some(PluginSpec {
                name: module.name.clone(),
                class: module.name.clone(),
                kind,
                version: module.digest.get(..12).unwrap_or(&module.digest).to_string(),
                keys: Vec::new(),
            })
        })
        .collect()
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
}

impl Catalog {
    /// `plugins`: the shared registry (`None` in tests that need no modules).
    pub fn new(plugins: Option<Plugins>) -> Catalog {
        Catalog { plugins, builtin: Arc::default() }
    }

    /// Adds a Rust plugin (tests' fixtures; first-party connectors ship as Wasm modules instead).
    pub fn register(&self, plugin: Arc<dyn ConnectorPlugin>) {
        self.builtin.write().insert(plugin.spec().name.clone(), plugin);
    }

    fn modules(&self) -> Vec<ModuleInfo> {
        self.plugins.as_ref().and_then(|p| p.registry().ok()).map(|r| r.list()).unwrap_or_default()
    }

    /// Every plugin, builtin first, sorted by name within each.
    pub fn list(&self) -> Vec<PluginSpec> {
        let builtin = self.builtin.read();
        let mut specs: Vec<PluginSpec> = builtin.values().map(|p| p.spec().clone()).collect();
        specs.extend(specs_from_modules(&self.modules()).into_iter().filter(|s| !builtin.contains_key(&s.name)));
        specs
    }

    /// The plugin a `connector.class` (or a plugin path segment) names.
    pub fn resolve(&self, class: &str) -> Option<Arc<dyn ConnectorPlugin>> {
        let name = plugin_name_for_class(class);
        if let Some(plugin) = self.builtin.read().get(name) {
            return Some(Arc::clone(plugin));
        }
        let module = self.plugins.as_ref()?.registry().ok()?.get(name)?;
        let spec = specs_from_modules(std::slice::from_ref(&module)).pop()?;
        Some(Arc::new(RegistryModule { spec }))
    }

    /// The registry's Wasm transforms, as (name, version): `GET /connector-plugins?connectorsOnly=false`.
    pub fn transforms(&self) -> Vec<(String, String)> {
        self.modules()
            .into_iter()
            .filter(|m| m.worlds.iter().any(|w| w == "transform"))
            .map(|m| (m.name, m.digest.get(..12).unwrap_or_default().to_string()))
            .collect()
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
        let specs =
            specs_from_modules(&[module("jdbc-source", &["source"]), module("pii-mask", &["transform"]), module("jdbc-sink", &["sink"])]);
        let listed: Vec<(&str, ConnectorType, &str)> = specs.iter().map(|s| (s.name.as_str(), s.kind, s.version.as_str())).collect();
        assert_eq!(
            listed,
            vec![("jdbc-source", ConnectorType::Source, "0123456789ab"), ("jdbc-sink", ConnectorType::Sink, "0123456789ab")]
        );
    }

    #[test]
    fn java_class_names_are_aliases_of_the_first_party_modules() {
        assert_eq!(plugin_name_for_class("io.confluent.connect.jdbc.JdbcSourceConnector"), "jdbc-source");
        assert_eq!(plugin_name_for_class("io.confluent.connect.jdbc.JdbcSinkConnector"), "jdbc-sink");
        assert_eq!(plugin_name_for_class("io.debezium.connector.postgresql.PostgresConnector"), "postgres-cdc");
        assert_eq!(plugin_name_for_class("file-source"), "file-source");
    }
}
