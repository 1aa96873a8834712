//! The module registry: every Wasm component the broker knows, uploaded once and referenced by
//! deployments by name or digest. Transforms deploy from it; `connector.class` names a module in it;
//! `GET /v1/plugins` (and Kafka Connect's `/connector-plugins`) list it.
//!
//! On disk, under the plugins directory (`<data-dir>/__plugins/`):
//! - `modules/<sha256>.wasm`: each component, by content (uploading the same bytes twice stores them
//!   once);
//! - `index.json`: names → digests, with what each module implements, replaced atomically.
//!
//! Compiled code is cached by the engine (`cache/`), and loaded modules are kept in memory by digest,
//! so a module that several deployments use is compiled once.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sluice_broker::host::write_file_atomically;
use sluice_wasm::{CompiledComponent, Engine, MODULE_BYTES_MAX};

use crate::error::RuntimeError;

/// Longest module name: names appear in URLs and in `connector.class`.
pub const MODULE_NAME_BYTES_MAX: usize = 128;
/// Most named modules the registry keeps (each is up to `MODULE_BYTES_MAX` on disk).
pub const MODULES_MAX: usize = 1_000;
const INDEX_BYTES_MAX: u64 = 16 << 20;

/// What the registry says about one module.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleInfo {
    pub name: String,
    /// sha256 of the component, lower-case hex.
    pub digest: String,
    pub bytes: usize,
    /// The worlds it implements (`transform`, …).
    pub worlds: Vec<String>,
    pub uploaded_at_ms: i64,
    /// Shipped with the broker (first-party plugins) rather than uploaded.
    #[serde(default)]
    pub builtin: bool,
}

/// A module that ships inside the broker's binary (the first-party plugins in `plugins/`).
#[derive(Debug, Clone, Copy)]
pub struct Builtin {
    pub name: &'static str,
    /// The world it implements (`transform`, `source`, `sink`), so that it is listed (and offered as
    /// a connector or a transform) before it is ever compiled.
    pub world: &'static str,
    pub bytes: &'static [u8],
}

#[derive(Default, Serialize, Deserialize)]
struct Index {
    modules: BTreeMap<String, ModuleInfo>,
}

pub struct ModuleRegistry {
    dir: PathBuf,
    engine: Engine,
    index: Mutex<Index>,
    /// Loaded (compiled) modules by digest.
    loaded: Mutex<HashMap<String, CompiledComponent>>,
}

pub fn digest_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Module names as topic names: letters, digits, `.`, `_`, `-`.
pub fn validate_name(what: &str, name: &str, max: usize) -> Result<(), RuntimeError> {
    if name.is_empty() || name.len() > max {
        return Err(RuntimeError::Invalid(format!("{what} names are 1..={max} characters")));
    }
    if let Some(bad) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        return Err(RuntimeError::Invalid(format!("{what} name '{name}' contains '{bad}'; use letters, digits, '.', '_' and '-'")));
    }
    Ok(())
}

impl ModuleRegistry {
    /// Opens the registry in `dir` (created if needed). Blocking file I/O.
    pub fn open(dir: &Path, engine: Engine) -> Result<ModuleRegistry, RuntimeError> {
        let modules = dir.join("modules");
        fs::create_dir_all(&modules).map_err(|e| RuntimeError::file(&modules, e))?;
        let index_path = dir.join("index.json");
        let index = match fs::metadata(&index_path) {
            Ok(meta) if meta.len() > INDEX_BYTES_MAX => {
                return Err(RuntimeError::file(&index_path, format!("{} bytes is larger than any index Sluice writes", meta.len())));
            }
            Ok(_) => {
                let bytes = fs::read(&index_path).map_err(|e| RuntimeError::file(&index_path, e))?;
                serde_json::from_slice(&bytes).map_err(|e| RuntimeError::file(&index_path, e))?
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Index::default(),
            Err(error) => return Err(RuntimeError::file(&index_path, error)),
        };
        Ok(ModuleRegistry { dir: dir.to_path_buf(), engine, index: Mutex::new(index), loaded: Mutex::new(HashMap::new()) })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    fn module_path(&self, digest: &str) -> PathBuf {
        self.dir.join("modules").join(format!("{digest}.wasm"))
    }

    fn save_index(&self, index: &Index) -> Result<(), RuntimeError> {
        let json = serde_json::to_vec_pretty(index).map_err(|e| RuntimeError::Invalid(e.to_string()))?;
        write_file_atomically(&self.dir.join("index.json"), &json)?;
        Ok(())
    }

    /// Checks and compiles `bytes`, stores them by digest, and names them `name` (replacing what the
    /// name pointed to). Blocking: compiling takes up to seconds.
    pub fn add(&self, name: &str, bytes: &[u8], builtin: bool) -> Result<(ModuleInfo, CompiledComponent), RuntimeError> {
        validate_name("module", name, MODULE_NAME_BYTES_MAX)?;
        if bytes.len() > MODULE_BYTES_MAX {
            return Err(RuntimeError::Invalid(format!("the module is {} bytes; at most {MODULE_BYTES_MAX}", bytes.len())));
        }
        let digest = digest_hex(bytes);
        let module = self.load_bytes(&digest, bytes)?;
        let path = self.module_path(&digest);
        if !path.exists() {
            write_file_atomically(&path, bytes)?;
        }
        let info = ModuleInfo {
            name: name.to_string(),
            digest,
            bytes: bytes.len(),
            worlds: module.worlds().into_iter().map(|w| w.name().to_string()).collect(),
            uploaded_at_ms: sluice_broker::host::now_ms(),
            builtin,
        };
        let mut index = self.index.lock();
        if !index.modules.contains_key(name) && index.modules.len() >= MODULES_MAX {
            return Err(RuntimeError::Invalid(format!("the registry already holds {MODULES_MAX} modules; delete some first")));
        }
        if index.modules.get(name).is_some_and(|old| old.digest == info.digest && old.builtin == builtin) {
            return Ok((index.modules[name].clone(), module));
        }
        index.modules.insert(name.to_string(), info.clone());
        self.save_index(&index)?;
        tracing::info!(module = name, digest = info.digest, bytes = info.bytes, builtin, "module registered");
        Ok((info, module))
    }

    /// Names the modules that ship with the broker (`builtin`), storing their bytes without compiling
    /// them: a module is compiled the first time something loads it, so a broker that never uses one
    /// never pays for it. A builtin of an earlier broker version is replaced by this one's, and one
    /// this version no longer ships is forgotten; a module a user uploaded under the same name is kept
    /// (theirs wins, with a warning). Blocking file I/O.
    pub fn add_builtins(&self, builtins: &[Builtin]) -> Result<(), RuntimeError> {
        let mut index = self.index.lock();
        let before = index.modules.clone();
        index.modules.retain(|name, module| !module.builtin || builtins.iter().any(|b| b.name == name));
        for builtin in builtins {
            validate_name("module", builtin.name, MODULE_NAME_BYTES_MAX)?;
            let digest = digest_hex(builtin.bytes);
            match index.modules.get(builtin.name) {
                Some(existing) if !existing.builtin => {
                    tracing::warn!(
                        module = builtin.name,
                        "an uploaded module has the name of a first-party plugin; the uploaded one is used"
                    );
                    continue;
                }
                Some(existing) if existing.digest == digest => continue,
                _ => {}
            }
            let path = self.module_path(&digest);
            if !path.exists() {
                write_file_atomically(&path, builtin.bytes)?;
            }
            let info = ModuleInfo {
                name: builtin.name.to_string(),
                digest,
                bytes: builtin.bytes.len(),
                worlds: vec![builtin.world.to_string()],
                uploaded_at_ms: sluice_broker::host::now_ms(),
                builtin: true,
            };
            index.modules.insert(builtin.name.to_string(), info);
        }
        if index.modules != before {
            self.save_index(&index)?;
        }
        Ok(())
    }

    fn load_bytes(&self, digest: &str, bytes: &[u8]) -> Result<CompiledComponent, RuntimeError> {
        if let Some(module) = self.loaded.lock().get(digest) {
            return Ok(module.clone());
        }
        // `inspect`: a component of no world this host runs is refused here, with what it lacks.
        let module = self.engine.inspect(bytes)?;
        self.loaded.lock().insert(digest.to_string(), module.clone());
        Ok(module)
    }

    /// The compiled component with this digest (from memory, the compiled cache, or by compiling the
    /// stored component). Blocking.
    pub fn load(&self, digest: &str) -> Result<CompiledComponent, RuntimeError> {
        if let Some(module) = self.loaded.lock().get(digest) {
            return Ok(module.clone());
        }
        let path = self.module_path(digest);
        let bytes = fs::read(&path).map_err(|e| RuntimeError::file(&path, e))?;
        if digest_hex(&bytes) != digest {
            return Err(RuntimeError::file(&path, "the stored component does not match its digest"));
        }
        self.load_bytes(digest, &bytes)
    }

    /// The stored component's bytes, checked against its digest. Blocking file I/O.
    pub fn bytes(&self, digest: &str) -> Result<Vec<u8>, RuntimeError> {
        let path = self.module_path(digest);
        let bytes = fs::read(&path).map_err(|e| RuntimeError::file(&path, e))?;
        if digest_hex(&bytes) != digest {
            return Err(RuntimeError::file(&path, "the stored component does not match its digest"));
        }
        Ok(bytes)
    }

    /// The stored component with this digest, if any (for modules stored before the registry existed,
    /// see [`ModuleRegistry::import`]).
    pub fn has_digest(&self, digest: &str) -> bool {
        self.module_path(digest).exists()
    }

    /// Stores a component by digest without naming it (a deployment that uploaded its own bytes).
    /// Blocking.
    pub fn import(&self, bytes: &[u8]) -> Result<(String, CompiledComponent), RuntimeError> {
        if bytes.len() > MODULE_BYTES_MAX {
            return Err(RuntimeError::Invalid(format!("the module is {} bytes; at most {MODULE_BYTES_MAX}", bytes.len())));
        }
        let digest = digest_hex(bytes);
        let module = self.load_bytes(&digest, bytes)?;
        let path = self.module_path(&digest);
        if !path.exists() {
            write_file_atomically(&path, bytes)?;
        }
        Ok((digest, module))
    }

    pub fn get(&self, name: &str) -> Option<ModuleInfo> {
        self.index.lock().modules.get(name).cloned()
    }

    pub fn list(&self) -> Vec<ModuleInfo> {
        self.index.lock().modules.values().cloned().collect()
    }

    /// Forgets a name. The component stays while something uses its digest (see `collect_garbage`).
    pub fn remove(&self, name: &str) -> Result<ModuleInfo, RuntimeError> {
        let mut index = self.index.lock();
        let info = index.modules.remove(name).ok_or_else(|| RuntimeError::NotFound { what: "module", name: name.to_string() })?;
        self.save_index(&index)?;
        Ok(info)
    }

    /// Removes stored components that no name and no digest in `in_use` refers to.
    pub fn collect_garbage(&self, in_use: &[String]) {
        let named: Vec<String> = self.index.lock().modules.values().map(|m| m.digest.clone()).collect();
        let Ok(entries) = fs::read_dir(self.dir.join("modules")) else { return };
        for entry in entries.flatten() {
            let file = entry.file_name().to_string_lossy().to_string();
            if let Some(digest) = file.strip_suffix(".wasm")
                && !named.iter().chain(in_use).any(|d| d == digest)
            {
                let _ = fs::remove_file(entry.path());
                self.loaded.lock().remove(digest);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use sluice_wasm::EngineConfig;

    use super::*;

    fn registry(dir: &Path) -> ModuleRegistry {
        ModuleRegistry::open(dir, Engine::new(EngineConfig::default()).unwrap()).unwrap()
    }

    fn names(registry: &ModuleRegistry) -> Vec<(String, bool)> {
        registry.list().into_iter().map(|m| (m.name, m.builtin)).collect()
    }

    #[test]
    fn builtins_are_named_without_compiling_replaced_by_a_new_version_and_never_over_an_upload() {
        let dir = tempfile::tempdir().unwrap();
        // Not components at all: naming them must not compile them.
        let v1 = [Builtin { name: "jdbc-source", world: "source", bytes: b"v1" }, Builtin { name: "old", world: "sink", bytes: b"o" }];
        let registry = registry(dir.path());
        registry.add_builtins(&v1).unwrap();
        assert_eq!(names(&registry), vec![("jdbc-source".into(), true), ("old".into(), true)]);
        let info = registry.get("jdbc-source").unwrap();
        assert_eq!((info.worlds, info.bytes), (vec!["source".to_string()], 2));
        assert!(registry.has_digest(&digest_hex(b"v1")));

        // The next broker version ships new bytes and no longer ships `old`; the index is kept on disk.
        let v2 = [Builtin { name: "jdbc-source", world: "source", bytes: b"v2" }];
        let reopened = self::registry(dir.path());
        reopened.add_builtins(&v2).unwrap();
        assert_eq!(names(&reopened), vec![("jdbc-source".into(), true)]);
        assert_eq!(reopened.get("jdbc-source").unwrap().digest, digest_hex(b"v2"));

        // A module a user put under a builtin's name stays theirs.
        let mut index = reopened.index.lock();
        index.modules.get_mut("jdbc-source").unwrap().builtin = false;
        drop(index);
        reopened.add_builtins(&[Builtin { name: "jdbc-source", world: "source", bytes: b"v3" }]).unwrap();
        assert_eq!(reopened.get("jdbc-source").unwrap().digest, digest_hex(b"v2"));
        assert!(!reopened.get("jdbc-source").unwrap().builtin);
    }
}
