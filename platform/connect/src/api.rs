//! Kafka Connect's REST API on the broker's admin port, with Connect's paths, JSON shapes, status
//! codes and `{"error_code": N, "message": "..."}` errors, so Connect's tooling and scripts work:
//!
//! | method and path | answer |
//! |---|---|
//! | `GET /` | `{"version", "commit", "kafka_cluster_id"}` |
//! | `GET /connectors` | names; `?expand=status` and/or `?expand=info`: `{name: {"status": …, "info": …}}` |
//! | `POST /connectors` | `{"name", "config", "initial_state"?}` → 201 with the connector's info; 409 if it exists |
//! | `GET /connectors/{name}` | `{"name", "config", "tasks", "type"}` |
//! | `DELETE /connectors/{name}` | 204 |
//! | `GET /connectors/{name}/config` | the config map, secrets masked |
//! | `PUT /connectors/{name}/config` | create (201) or reconfigure (200) |
//! | `GET /connectors/{name}/status` | connector and task states (`RUNNING`, `PAUSED`, `STOPPED`, `FAILED`, `UNASSIGNED`), `trace` when FAILED |
//! | `GET /connectors/{name}/tasks`, `GET …/tasks/{task}/status` | task ids and configs; one task's state |
//! | `PUT /connectors/{name}/pause`, `/resume` | 202 |
//! | `PUT /connectors/{name}/stop` | 204 |
//! | `POST /connectors/{name}/restart?includeTasks=&onlyFailed=` | 204 (plain), else 202 with the status, restarting instances shown `RESTARTING` |
//! | `GET /connectors/{name}/offsets` | KIP-875 `{"offsets": [{"partition", "offset"}]}` |
//! | `PATCH /connectors/{name}/offsets`, `DELETE …` | alter or reset (STOPPED connectors only, else 400): 200 `{"message"}` |
//! | `GET /connector-plugins` | `[{"class", "type", "version"}]`; `?connectorsOnly=false` adds the Wasm transforms |
//! | `GET /connector-plugins/{plugin}/config` | the plugin's config keys |
//! | `PUT /connector-plugins/{plugin}/config/validate` | Connect's `ConfigInfos`: `{"name", "error_count", "groups", "configs": [{"definition", "value"}]}` |

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post, put};
use serde_json::{Value, json};

use crate::config::{self, ConfigKeyDef, GROUP_CONNECTIONS, GROUP_TRANSFORMS, Validation, is_secret};
use crate::error::{ConnectError, error_body};
use crate::manager::ConnectorManager;
use crate::offsets::ConnectorOffsets;
use crate::plugins::plugin_name_for_class;
use crate::store::TargetState;

/// Largest request body (a connector config with its transforms and connections).
pub const CONNECT_BODY_BYTES_MAX: usize = 1024 * 1024;

type Manager = Arc<ConnectorManager>;

pub fn router(manager: Manager) -> Router {
    Router::new()
        .route("/", get(server_info))
        .route("/connectors", get(list).post(create))
        .route("/connectors/{name}", get(info).delete(delete))
        .route("/connectors/{name}/config", get(get_config).put(put_config))
        .route("/connectors/{name}/status", get(status))
        .route("/connectors/{name}/tasks", get(tasks))
        .route("/connectors/{name}/tasks/{task}/status", get(task_status))
        .route("/connectors/{name}/pause", put(pause))
        .route("/connectors/{name}/resume", put(resume))
        .route("/connectors/{name}/stop", put(stop))
        .route("/connectors/{name}/restart", post(restart))
        .route("/connectors/{name}/offsets", get(get_offsets).patch(alter_offsets).delete(reset_offsets))
        .route("/connectors/{name}/{*rest}", any(not_found))
        .route("/connector-plugins", get(plugins))
        .route("/connector-plugins/{plugin}/config", get(plugin_config))
        .route("/connector-plugins/{plugin}/config/validate", put(validate))
        .route("/connector-plugins/{plugin}/{*rest}", any(not_found))
        .method_not_allowed_fallback(|| async { error_body(StatusCode::METHOD_NOT_ALLOWED, "HTTP 405 Method Not Allowed") })
        .layer(DefaultBodyLimit::max(CONNECT_BODY_BYTES_MAX))
        .with_state(manager)
}

async fn not_found() -> Response {
    error_body(StatusCode::NOT_FOUND, "HTTP 404 Not Found")
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, ConnectError> + Send + 'static) -> Result<T, ConnectError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ConnectError::Runtime(sluice_runtime::RuntimeError::Thread(e.to_string())))?
}

fn json_response(status: StatusCode, value: impl serde::Serialize) -> Response {
    (status, axum::Json(value)).into_response()
}

/// A request body as JSON, or Connect's 400 (413 when over [`CONNECT_BODY_BYTES_MAX`]).
fn parse_body(body: Result<Bytes, BytesRejection>) -> Result<Value, ConnectError> {
    let bytes = body.map_err(|rejection| ConnectError::BadRequest(format!("cannot read the request body: {}", rejection.body_text())))?;
    if bytes.is_empty() {
        return Err(ConnectError::BadRequest("the request needs a JSON body".into()));
    }
    serde_json::from_slice(&bytes).map_err(|e| ConnectError::BadRequest(format!("the request body is not valid JSON: {e}")))
}

/// A config map: strings (numbers and booleans are taken as their text, as Connect's JSON mapper does).
fn config_map(value: &Value, what: &str) -> Result<BTreeMap<String, String>, ConnectError> {
    let Value::Object(map) = value else {
        return Err(ConnectError::BadRequest(format!("{what} must be a JSON object of strings")));
    };
    if map.len() > config::CONFIG_KEYS_MAX {
        return Err(ConnectError::BadRequest(format!("{what} has {} keys; at most {}", map.len(), config::CONFIG_KEYS_MAX)));
    }
    map.iter()
        .map(|(key, value)| {
            let text = match value {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => return Err(ConnectError::BadRequest(format!("{what}: the value of '{key}' must be a string"))),
            };
            Ok((key.clone(), text))
        })
        .collect()
}

/// Query parameters, repeated keys kept in order.
fn query_pairs(query: &Option<String>) -> Vec<(String, String)> {
    let Some(query) = query else { return Vec::new() };
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (pair.to_string(), String::new()),
        })
        .collect()
}

fn bool_param(pairs: &[(String, String)], name: &str) -> Result<bool, ConnectError> {
    match pairs.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.to_ascii_lowercase()) {
        None => Ok(false),
        Some(v) if v == "true" => Ok(true),
        Some(v) if v == "false" => Ok(false),
        Some(v) => Err(ConnectError::BadRequest(format!("query parameter {name} must be true or false, not '{v}'"))),
    }
}

/// Connect's check that a config's `name` matches the one the request gives.
fn check_name(name: &str, config: &mut BTreeMap<String, String>) -> Result<(), ConnectError> {
    match config.get("name") {
        Some(included) if included != name => Err(ConnectError::BadRequest(format!(
            "Connector name configuration ({included}) doesn't match connector name in the URL ({name})"
        ))),
        Some(_) => Ok(()),
        None => {
            config.insert("name".into(), name.to_string());
            Ok(())
        }
    }
}

async fn server_info(State(manager): State<Manager>) -> Response {
    json_response(
        StatusCode::OK,
        json!({ "version": env!("CARGO_PKG_VERSION"), "commit": "sluice", "kafka_cluster_id": manager.cluster_id() }),
    )
}

async fn list(State(manager): State<Manager>, RawQuery(query): RawQuery) -> Result<Response, ConnectError> {
    let pairs = query_pairs(&query);
    let expand: Vec<String> =
        pairs.iter().filter(|(k, _)| k == "expand").flat_map(|(_, v)| v.split(',').map(str::to_string).collect::<Vec<_>>()).collect();
    if !pairs.iter().any(|(k, _)| k == "expand") {
        return Ok(json_response(StatusCode::OK, manager.names()));
    }
    blocking(move || {
        let mut out = serde_json::Map::new();
        for name in manager.names() {
            let mut entry = serde_json::Map::new();
            for expansion in &expand {
                // A connector deleted meanwhile is left out, as Connect does.
                let value = match expansion.as_str() {
                    "status" => manager.status(&name).ok().map(|s| serde_json::to_value(s).unwrap_or_default()),
                    "info" => manager.info(&name).ok().map(|i| serde_json::to_value(i).unwrap_or_default()),
                    _ => None,
                };
                if let Some(value) = value {
                    entry.insert(expansion.clone(), value);
                }
            }
            out.insert(name, Value::Object(entry));
        }
        Ok(json_response(StatusCode::OK, Value::Object(out)))
    })
    .await
}

async fn create(State(manager): State<Manager>, body: Result<Bytes, BytesRejection>) -> Result<Response, ConnectError> {
    let request = parse_body(body)?;
    let name = request.get("name").and_then(Value::as_str).map(str::trim).unwrap_or_default().to_string();
    let mut config = match request.get("config") {
        Some(value) => config_map(value, "config")?,
        None => return Err(ConnectError::BadRequest("the request needs \"config\", the connector's configuration".into())),
    };
    let initial_state = match request.get("initial_state") {
        None | Some(Value::Null) => TargetState::Running,
        Some(value) => serde_json::from_value::<TargetState>(value.clone())
            .map_err(|_| ConnectError::BadRequest("initial_state must be RUNNING, PAUSED or STOPPED".into()))?,
    };
    check_name(&name, &mut config)?;
    let created = blocking(move || manager.create(config, initial_state)).await?;
    let location = format!("/connectors/{}", created.name);
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], axum::Json(created)).into_response())
}

async fn info(State(manager): State<Manager>, Path(name): Path<String>) -> Result<Response, ConnectError> {
    Ok(json_response(StatusCode::OK, manager.info(&name)?))
}

async fn delete(State(manager): State<Manager>, Path(name): Path<String>) -> Result<StatusCode, ConnectError> {
    blocking(move || manager.delete(&name)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn get_config(State(manager): State<Manager>, Path(name): Path<String>) -> Result<Response, ConnectError> {
    Ok(json_response(StatusCode::OK, manager.config(&name)?))
}

async fn put_config(
    State(manager): State<Manager>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ConnectError> {
    let mut config = config_map(&parse_body(body)?, "the connector config")?;
    check_name(&name, &mut config)?;
    let (created, info) = blocking(move || manager.put_config(&name, config)).await?;
    Ok(if created {
        (StatusCode::CREATED, [(header::LOCATION, format!("/connectors/{}", info.name))], axum::Json(info)).into_response()
    } else {
        json_response(StatusCode::OK, info)
    })
}

async fn status(State(manager): State<Manager>, Path(name): Path<String>) -> Result<Response, ConnectError> {
    Ok(json_response(StatusCode::OK, manager.status(&name)?))
}

async fn tasks(State(manager): State<Manager>, Path(name): Path<String>) -> Result<Response, ConnectError> {
    Ok(json_response(StatusCode::OK, manager.tasks(&name)?))
}

async fn task_status(State(manager): State<Manager>, Path((name, task)): Path<(String, String)>) -> Result<Response, ConnectError> {
    let task: i32 = task.parse().map_err(|_| ConnectError::NotFound("HTTP 404 Not Found".into()))?;
    Ok(json_response(StatusCode::OK, manager.task_status(&name, task)?))
}

async fn pause(State(manager): State<Manager>, Path(name): Path<String>) -> Result<StatusCode, ConnectError> {
    blocking(move || manager.pause(&name)).await?;
    Ok(StatusCode::ACCEPTED)
}

async fn resume(State(manager): State<Manager>, Path(name): Path<String>) -> Result<StatusCode, ConnectError> {
    blocking(move || manager.resume(&name)).await?;
    Ok(StatusCode::ACCEPTED)
}

async fn stop(State(manager): State<Manager>, Path(name): Path<String>) -> Result<StatusCode, ConnectError> {
    blocking(move || manager.stop(&name)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn restart(State(manager): State<Manager>, Path(name): Path<String>, RawQuery(query): RawQuery) -> Result<Response, ConnectError> {
    let pairs = query_pairs(&query);
    let include_tasks = bool_param(&pairs, "includeTasks")?;
    let only_failed = bool_param(&pairs, "onlyFailed")?;
    Ok(match blocking(move || manager.restart(&name, include_tasks, only_failed)).await? {
        None => StatusCode::NO_CONTENT.into_response(),
        Some(status) => json_response(StatusCode::ACCEPTED, status),
    })
}

async fn get_offsets(State(manager): State<Manager>, Path(name): Path<String>) -> Result<Response, ConnectError> {
    Ok(json_response(StatusCode::OK, blocking(move || manager.offsets(&name)).await?))
}

async fn alter_offsets(
    State(manager): State<Manager>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ConnectError> {
    let request: ConnectorOffsets = serde_json::from_value(parse_body(body)?).map_err(|e| {
        ConnectError::BadRequest(format!("the body must be {{\"offsets\": [{{\"partition\": {{…}}, \"offset\": {{…}}}}]}}: {e}"))
    })?;
    blocking(move || manager.alter_offsets(&name, &request.offsets)).await?;
    Ok(json_response(StatusCode::OK, json!({"message": "The offsets for this connector have been altered successfully"})))
}

async fn reset_offsets(State(manager): State<Manager>, Path(name): Path<String>) -> Result<Response, ConnectError> {
    blocking(move || manager.reset_offsets(&name)).await?;
    Ok(json_response(StatusCode::OK, json!({"message": "The offsets for this connector have been reset successfully"})))
}

async fn plugins(State(manager): State<Manager>, RawQuery(query): RawQuery) -> Result<Response, ConnectError> {
    let pairs = query_pairs(&query);
    let connectors_only = match pairs.iter().rev().find(|(k, _)| k == "connectorsOnly") {
        None => true,
        Some((_, v)) => !v.eq_ignore_ascii_case("false"),
    };
    // Listing describes registry modules not seen before (instantiating each once): blocking work.
    let listing = Arc::clone(&manager);
    let specs = blocking(move || Ok(listing.catalog().list())).await?;
    let mut out: Vec<Value> =
        specs.into_iter().map(|spec| json!({"class": spec.class, "type": spec.kind.as_str(), "version": spec.version})).collect();
    if !connectors_only {
        out.extend(
            manager
                .catalog()
                .transforms()
                .into_iter()
                .map(|(name, version)| json!({"class": name, "type": "transformation", "version": version})),
        );
    }
    Ok(json_response(StatusCode::OK, out))
}

/// Connect's `ConfigKeyInfo`.
fn definition_json(key: &ConfigKeyDef, order: i64) -> Value {
    json!({
        "name": key.name,
        "type": key.kind.as_str(),
        "required": key.required,
        "default_value": key.default,
        "importance": key.importance.as_str(),
        "documentation": key.documentation,
        "group": key.group,
        "order": order,
        "width": "NONE",
        "display_name": key.name,
        "dependents": [],
    })
}

async fn plugin_config(State(manager): State<Manager>, Path(plugin): Path<String>) -> Result<Response, ConnectError> {
    // Resolving may describe a registry module for the first time (instantiating it): blocking work.
    let found =
        blocking(move || manager.catalog().resolve(&plugin).ok_or_else(|| ConnectError::NotFound(format!("Unknown plugin {plugin}."))))
            .await?;
    let keys: Vec<Value> = found.spec().keys.iter().enumerate().map(|(i, k)| definition_json(k, i as i64 + 1)).collect();
    Ok(json_response(StatusCode::OK, keys))
}

/// The definition shown for a key: the runtime's, the plugin's, a transform's or connection's own
/// key, or (for a key nobody knows) a stand-in whose value carries the error.
fn definition_for(key: &str, runtime: &[ConfigKeyDef], plugin: &[ConfigKeyDef]) -> ConfigKeyDef {
    if let Some(found) = runtime.iter().chain(plugin).find(|k| k.covers(key)) {
        return ConfigKeyDef { name: key.to_string(), ..found.clone() };
    }
    let (group, documentation) = if key.starts_with("transforms.") {
        (GROUP_TRANSFORMS, "A key of a transform in the chain (transforms.<alias>.type names its module; other keys are its config).")
    } else if key.starts_with("connections.") {
        (GROUP_CONNECTIONS, "A named connection of the sql capability.")
    } else {
        ("Unknown", "Not a key of this plugin or of the connector runtime.")
    };
    let kind = if is_secret(key) { config::ConfigType::Password } else { config::ConfigType::String };
    ConfigKeyDef::new(key, kind, group, documentation)
}

/// Connect's `ConfigInfos` for a validation.
fn config_infos(class: &str, raw: &BTreeMap<String, String>, validation: &Validation, plugin_keys: &[ConfigKeyDef]) -> Value {
    let runtime = config::runtime_keys();
    let mut groups: Vec<String> = Vec::new();
    let mut configs = Vec::new();
    // The runtime's keys in their documented order, then everything else by name.
    let mut keys: Vec<String> = runtime.iter().map(|k| k.name.clone()).collect();
    keys.extend(plugin_keys.iter().filter(|k| !k.name.ends_with('*')).map(|k| k.name.clone()));
    keys.extend(validation.values.keys().filter(|k| !runtime.iter().any(|r| &r.name == *k)).cloned());
    let mut seen = std::collections::HashSet::new();
    for (order, key) in keys.into_iter().filter(|k| seen.insert(k.clone())).enumerate() {
        let definition = definition_for(&key, &runtime, plugin_keys);
        if !groups.contains(&definition.group) {
            groups.push(definition.group.clone());
        }
        let value = raw.get(&key).map(|v| if is_secret(&key) && !v.is_empty() { "[hidden]".to_string() } else { v.clone() });
        let errors = validation.values.get(&key).cloned().unwrap_or_default();
        configs.push(json!({
            "definition": definition_json(&definition, order as i64 + 1),
            "value": {
                "name": key,
                "value": value.or_else(|| definition.default.clone()),
                "recommended_values": definition.recommended,
                "errors": errors,
                "visible": true,
            },
        }));
    }
    json!({ "name": class, "error_count": validation.error_count(), "groups": groups, "configs": configs })
}

async fn validate(
    State(manager): State<Manager>,
    Path(plugin): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ConnectError> {
    let mut raw = config_map(&parse_body(body)?, "the connector config")?;
    match raw.get("connector.class") {
        Some(class) if plugin_name_for_class(class.trim()) != plugin_name_for_class(&plugin) => {
            return Err(ConnectError::BadRequest(format!("Included connector type {class} does not match request type {plugin}")));
        }
        Some(_) => {}
        None => {
            raw.insert("connector.class".into(), plugin.clone());
        }
    }
    let body = blocking(move || {
        // Resolving may describe a registry module for the first time (instantiating it).
        let found = manager.catalog().resolve(&plugin).ok_or_else(|| {
            ConnectError::BadRequest(format!(
                "Failed to find any class that implements Connector and which name matches {plugin}; the connector plugins are listed at GET /connector-plugins"
            ))
        })?;
        let (_, validation) = manager.validate(&raw);
        Ok(config_infos(&found.spec().class, &raw, &validation, &found.spec().keys))
    })
    .await?;
    Ok(json_response(StatusCode::OK, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_keep_repeats_and_booleans_are_strict() {
        let pairs = query_pairs(&Some("expand=status&expand=info&includeTasks=TRUE".into()));
        assert_eq!(pairs.len(), 3);
        assert!(bool_param(&pairs, "includeTasks").unwrap());
        assert!(!bool_param(&pairs, "onlyFailed").unwrap());
        assert!(bool_param(&query_pairs(&Some("onlyFailed=yes".into())), "onlyFailed").is_err());
    }

    #[test]
    fn config_maps_take_scalars_as_text_and_refuse_the_rest() {
        let map = config_map(&json!({"tasks.max": 2, "a": "b", "c": true}), "config").unwrap();
        assert_eq!(map["tasks.max"], "2");
        assert_eq!(map["c"], "true");
        assert!(config_map(&json!({"a": {"b": 1}}), "config").is_err());
        assert!(config_map(&json!([1]), "config").is_err());
        let mut named = BTreeMap::new();
        check_name("x", &mut named).unwrap();
        assert_eq!(named["name"], "x");
        assert!(check_name("y", &mut named).unwrap_err().to_string().contains("doesn't match connector name in the URL"));
    }
}
