//! `Plugins`: the one Wasm engine and module registry of a broker, shared by every runtime. It is an
//! extension of its own (named `plugins`, data in `<data-dir>/__plugins/`) that must be listed
//! before the runtimes that use it, and it serves the registry over HTTP:
//!
//! | method and path | what |
//! |---|---|
//! | `GET /v1/plugins` | every registered module: name, digest, size, worlds, builtin |
//! | `POST /v1/plugins` | `{"name": "...", "module_base64": "..."}`: check, compile and register a module |
//! | `GET /v1/plugins/{name}` | one module |
//! | `DELETE /v1/plugins/{name}` | forget a name (deployments pinned to the module's digest keep running); 409 while a deployment that looks the module up by name (a mirror's policy) uses it |

use std::sync::{Arc, OnceLock};

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine as _;
use serde::Deserialize;
use sluice_broker::host::{ApiError, Extension, Host, StartError, json_body, write_file_atomically};
use sluice_wasm::{Compilers, Engine, EngineConfig, MODULE_BYTES_MAX};

use crate::error::RuntimeError;
use crate::registry::{Builtin, ModuleInfo, ModuleRegistry};

/// Largest upload body: the module limit in base64 plus room for the name.
pub const UPLOAD_BODY_BYTES_MAX: usize = MODULE_BYTES_MAX / 3 * 4 + 64 * 1024;

/// Says which deployments use a registry module by its name (`"mirror dr"`, ...): a runtime that
/// looks a module up by name when it (re)starts an instance registers one, so that the module
/// cannot be deleted from under it.
pub type ModuleUsers = Box<dyn Fn(&str) -> Vec<String> + Send + Sync>;

/// The shared engine and registry. Cheap to clone: every clone is the same registry.
#[derive(Clone, Default)]
pub struct Plugins {
    started: Arc<OnceLock<Started>>,
    /// The modules that ship with the broker, named in the registry at start.
    builtins: &'static [Builtin],
    users: Arc<parking_lot::Mutex<Vec<ModuleUsers>>>,
}

struct Started {
    host: Host,
    registry: ModuleRegistry,
}

impl Plugins {
    pub fn new() -> Plugins {
        Plugins::default()
    }

    /// With the first-party modules the binary carries: they are in the registry from the first start
    /// (compiled when first used), and cannot be deleted.
    pub fn with_builtins(builtins: &'static [Builtin]) -> Plugins {
        Plugins { started: Arc::default(), builtins, users: Arc::default() }
    }

    fn started(&self) -> Result<&Started, RuntimeError> {
        self.started
            .get()
            .ok_or_else(|| RuntimeError::Invalid("the plugins extension has not started (list it before the runtimes that use it)".into()))
    }

    /// The registry. Runtimes call this from their own `start`, which runs after this extension's.
    pub fn registry(&self) -> Result<&ModuleRegistry, RuntimeError> {
        Ok(&self.started()?.registry)
    }

    pub fn engine(&self) -> Result<&Engine, RuntimeError> {
        Ok(self.started()?.registry.engine())
    }

    pub fn host(&self) -> Result<&Host, RuntimeError> {
        Ok(&self.started()?.host)
    }

    /// Registers a runtime's [`ModuleUsers`]: `DELETE /v1/plugins/{name}` is refused while any
    /// names a user of `name`.
    pub fn on_module_users(&self, users: impl Fn(&str) -> Vec<String> + Send + Sync + 'static) {
        self.users.lock().push(Box::new(users));
    }

    /// Every deployment that uses the module `name` by name, from every runtime.
    pub fn users_of(&self, name: &str) -> Vec<String> {
        self.users.lock().iter().flat_map(|users| users(name)).collect()
    }
}

impl Extension for Plugins {
    fn name(&self) -> &'static str {
        "plugins"
    }

    fn start(&self, host: Host) -> Result<Router, StartError> {
        let dir = host.data_dir()?;
        let compilers = match host.setting("plugins.compilers").as_deref() {
            Some("optimized") => Compilers::Optimized,
            Some("baseline") => Compilers::Baseline,
            _ => Compilers::Tiered,
        };
        let engine = Engine::new(EngineConfig {
            cache_dir: Some(dir.join("cache")),
            cache_write: |path, bytes| write_file_atomically(path, bytes).map_err(std::io::Error::other),
            compilers,
            ..Default::default()
        })
        .map_err(RuntimeError::from)?;
        let registry = ModuleRegistry::open(&dir, engine)?;
        registry.add_builtins(self.builtins)?;
        tracing::info!(modules = registry.list().len(), dir = %dir.display(), "module registry opened");
        self.started.set(Started { host, registry }).map_err(|_| RuntimeError::Invalid("the plugins extension started twice".into()))?;
        Ok(routes(self.clone()))
    }

    fn stop(&self) {}
}

fn routes(plugins: Plugins) -> Router {
    Router::new()
        .route("/v1/plugins", get(list).post(upload).layer(DefaultBodyLimit::max(UPLOAD_BODY_BYTES_MAX)))
        .route("/v1/plugins/{name}", get(describe).delete(remove))
        .with_state(plugins)
}

#[derive(Deserialize)]
struct UploadRequest {
    name: String,
    module_base64: String,
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, RuntimeError> + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ApiError::internal(e.to_string()))?.map_err(ApiError::from)
}

async fn list(State(plugins): State<Plugins>) -> Result<Json<serde_json::Value>, ApiError> {
    let modules = plugins.registry()?.list();
    Ok(Json(serde_json::json!({ "plugins": modules })))
}

async fn describe(State(plugins): State<Plugins>, Path(name): Path<String>) -> Result<Json<ModuleInfo>, ApiError> {
    let registry = plugins.registry()?;
    registry.get(&name).map(Json).ok_or_else(|| RuntimeError::NotFound { what: "module", name }.to_api())
}

async fn upload(
    State(plugins): State<Plugins>,
    payload: Result<Json<UploadRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<ModuleInfo>), ApiError> {
    let request = json_body(payload)?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(request.module_base64.as_bytes())
        .map_err(|e| ApiError::bad_request(format!("module_base64 is not base64: {e}")))?;
    let info = blocking(move || Ok(plugins.registry()?.add(&request.name, &bytes, false)?.0)).await?;
    Ok((StatusCode::CREATED, Json(info)))
}

async fn remove(State(plugins): State<Plugins>, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
    blocking(move || {
        let registry = plugins.registry()?;
        if registry.get(&name).is_some_and(|m| m.builtin) {
            return Err(RuntimeError::Invalid(format!("'{name}' ships with the broker and cannot be deleted")));
        }
        let users = plugins.users_of(&name);
        if !users.is_empty() {
            return Err(RuntimeError::InUse(format!(
                "module '{name}' is in use by {}; delete those or point them at another module first",
                users.join(", ")
            )));
        }
        registry.remove(&name).map(|_| StatusCode::NO_CONTENT)
    })
    .await
}
