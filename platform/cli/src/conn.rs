//! Where the CLI connects: `--brokers` and `--admin-url`, their environment variables, named profiles
//! in a TOML file, and the built-in defaults (the broker's own defaults from `sluice server`).
//!
//! Precedence, highest first: the flag, the environment variable (`SLUICE_BROKERS`, `SLUICE_ADMIN_URL`),
//! the profile (named by `--profile` / `SLUICE_PROFILE`, else the file's `default`), the default
//! (`127.0.0.1:9092`, `http://127.0.0.1:9644`). The profile file is
//! `$SLUICE_PROFILES`, else `$XDG_CONFIG_HOME/sluice/profiles.toml`, else `~/.config/sluice/profiles.toml`:
//!
//! ```toml
//! default = "local"
//! [profiles.local]
//! brokers = "127.0.0.1:9092"
//! [profiles.prod]
//! brokers = ["kafka-1:9092", "kafka-2:9092"]
//! admin_url = "http://kafka-1:9644"
//! ```

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use sluice_client::connection::MAX_IN_FLIGHT_DEFAULT;
use sluice_client::{Client, ClientOptions};

use crate::exit::usage;

/// The Kafka listener `sluice server` binds by default.
pub(crate) const DEFAULT_BROKERS: &str = "127.0.0.1:9092";
/// The admin listener `sluice server` binds by default.
pub(crate) const DEFAULT_ADMIN_URL: &str = "http://127.0.0.1:9644";
/// The client id the CLI's requests carry, so broker logs can tell its traffic apart.
pub(crate) const CLIENT_ID: &str = "sluice";

/// Connects to the first reachable of `brokers` and negotiates API versions.
pub(crate) async fn connect(brokers: &[String]) -> Result<Client> {
    connect_with_in_flight(brokers, MAX_IN_FLIGHT_DEFAULT).await
}

/// Like [`connect`], with up to `in_flight` requests outstanding per broker connection.
pub(crate) async fn connect_with_in_flight(brokers: &[String], in_flight: usize) -> Result<Client> {
    let options = ClientOptions { client_id: CLIENT_ID.to_string(), max_in_flight_per_connection: in_flight };
    Ok(Client::connect(brokers, options).await?)
}

/// Largest profile file read; it holds a few addresses, so anything bigger is a wrong path.
const PROFILE_FILE_BYTES_MAX: u64 = 1024 * 1024;

#[derive(Debug, Clone, Default, Args)]
pub struct ConnArgs {
    /// Bootstrap brokers, host:port, comma separated [env: SLUICE_BROKERS; else the profile; else 127.0.0.1:9092]
    #[arg(long, global = true, value_name = "HOST:PORT,...")]
    pub brokers: Option<String>,

    /// The broker's HTTP admin API [env: SLUICE_ADMIN_URL; else the profile; else http://127.0.0.1:9644]
    #[arg(long, global = true, value_name = "URL")]
    pub admin_url: Option<String>,

    /// A named cluster from the profile file (~/.config/sluice/profiles.toml) [env: SLUICE_PROFILE]
    #[arg(long, global = true, value_name = "NAME")]
    pub profile: Option<String>,
}

/// The resolved connection settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) brokers: Vec<String>,
    pub(crate) admin_url: String,
}

impl ConnArgs {
    /// Applies the precedence rules with the process environment and the profile file.
    pub(crate) fn resolve(&self) -> Result<Target> {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let file = profile_file_path();
        let profile_text = match &file {
            Some(path) if path.exists() => Some(read_profile_file(path)?),
            _ => None,
        };
        resolve_with(self, env("SLUICE_BROKERS"), env("SLUICE_ADMIN_URL"), env("SLUICE_PROFILE"), file.as_ref(), profile_text.as_deref())
    }
}

fn profile_file_path() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("SLUICE_PROFILES").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(dir).join("sluice/profiles.toml"));
    }
    std::env::var_os("HOME").filter(|p| !p.is_empty()).map(|home| PathBuf::from(home).join(".config/sluice/profiles.toml"))
}

fn read_profile_file(path: &PathBuf) -> Result<String> {
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    if size > PROFILE_FILE_BYTES_MAX {
        return usage(format!("profile file {} is {size} bytes, over the {PROFILE_FILE_BYTES_MAX}-byte limit", path.display()));
    }
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(e) => usage(format!("cannot read profile file {}: {e}", path.display())),
    }
}

/// One profile's settings, each optional.
#[derive(Debug, Default)]
struct Profile {
    brokers: Option<String>,
    admin_url: Option<String>,
}

/// Looks up `name` (or the file's `default`) in the profile file's text.
fn pick_profile(text: &str, path: &str, name: Option<&str>) -> Result<Option<Profile>> {
    let table: toml::Table = match text.parse() {
        Ok(t) => t,
        Err(e) => return usage(format!("profile file {path} is not valid TOML: {e}")),
    };
    let name = match name {
        Some(name) => name.to_string(),
        None => match table.get("default") {
            Some(toml::Value::String(name)) => name.clone(),
            Some(_) => return usage(format!("profile file {path}: `default` must be a profile name (a string)")),
            None => return Ok(None),
        },
    };
    let profiles = table.get("profiles").and_then(|p| p.as_table());
    let Some(entry) = profiles.and_then(|p| p.get(&name)) else {
        let known: Vec<&str> = profiles.map(|p| p.keys().map(String::as_str).collect()).unwrap_or_default();
        let known = if known.is_empty() { "none".to_string() } else { known.join(", ") };
        return usage(format!("profile `{name}` is not defined in {path} (profiles there: {known})"));
    };
    let Some(entry) = entry.as_table() else {
        return usage(format!("profile file {path}: [profiles.{name}] must be a table"));
    };
    let mut profile = Profile::default();
    for (key, value) in entry {
        let text = match value {
            toml::Value::String(s) => s.clone(),
            toml::Value::Array(items) if key == "brokers" => {
                let parts: Option<Vec<&str>> = items.iter().map(|v| v.as_str()).collect();
                match parts {
                    Some(parts) => parts.join(","),
                    None => return usage(format!("profile `{name}` in {path}: `brokers` must be strings")),
                }
            }
            _ => return usage(format!("profile `{name}` in {path}: `{key}` must be a string")),
        };
        match key.as_str() {
            "brokers" => profile.brokers = Some(text),
            "admin_url" | "admin-url" => profile.admin_url = Some(text),
            other => return usage(format!("profile `{name}` in {path}: unknown key `{other}` (known: brokers, admin_url)")),
        }
    }
    Ok(Some(profile))
}

fn resolve_with(
    args: &ConnArgs,
    env_brokers: Option<String>,
    env_admin: Option<String>,
    env_profile: Option<String>,
    file: Option<&PathBuf>,
    file_text: Option<&str>,
) -> Result<Target> {
    let profile_name = args.profile.clone().or(env_profile);
    let path = file.map(|p| p.display().to_string()).unwrap_or_else(|| "~/.config/sluice/profiles.toml".to_string());
    let profile = match file_text {
        Some(text) => pick_profile(text, &path, profile_name.as_deref())?,
        None if profile_name.is_some() => {
            return usage(format!("profile `{}` was asked for, but there is no profile file at {path}", profile_name.unwrap_or_default()));
        }
        None => None,
    }
    .unwrap_or_default();
    let brokers_text = args.brokers.clone().or(env_brokers).or(profile.brokers).unwrap_or_else(|| DEFAULT_BROKERS.to_string());
    let brokers: Vec<String> = brokers_text.split(',').map(|b| b.trim().to_string()).filter(|b| !b.is_empty()).collect();
    if brokers.is_empty() {
        return usage("no brokers given: pass --brokers host:port (or set SLUICE_BROKERS)");
    }
    for broker in &brokers {
        if broker.contains("://") || !broker.contains(':') {
            return usage(format!("broker address `{broker}` must be host:port, e.g. 127.0.0.1:9092"));
        }
    }
    let admin_url = args.admin_url.clone().or(env_admin).or(profile.admin_url).unwrap_or_else(|| DEFAULT_ADMIN_URL.to_string());
    Ok(Target { brokers, admin_url: admin_url.trim_end_matches('/').to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
default = "local"
[profiles.local]
brokers = "l:1"
[profiles.prod]
brokers = ["p1:9092", "p2:9092"]
admin_url = "http://p1:9644/"
"#;

    fn args(brokers: Option<&str>, profile: Option<&str>) -> ConnArgs {
        ConnArgs { brokers: brokers.map(str::to_string), admin_url: None, profile: profile.map(str::to_string) }
    }

    #[test]
    fn precedence_is_flag_env_profile_default() {
        let path = PathBuf::from("/p.toml");
        let t = resolve_with(&args(None, None), None, None, None, None, None).expect("defaults");
        assert_eq!(t, Target { brokers: vec![DEFAULT_BROKERS.into()], admin_url: DEFAULT_ADMIN_URL.into() });
        let t = resolve_with(&args(None, None), None, None, None, Some(&path), Some(FILE)).expect("default profile");
        assert_eq!(t.brokers, ["l:1"]);
        let t = resolve_with(&args(None, None), None, None, Some("prod".into()), Some(&path), Some(FILE)).expect("env profile");
        assert_eq!((t.brokers, t.admin_url.as_str()), (vec!["p1:9092".to_string(), "p2:9092".to_string()], "http://p1:9644"));
        let t = resolve_with(&args(None, Some("prod")), Some("e:1".into()), None, None, Some(&path), Some(FILE)).expect("env wins");
        assert_eq!(t.brokers, ["e:1"]);
        let t = resolve_with(&args(Some("f:1"), Some("prod")), Some("e:1".into()), None, None, Some(&path), Some(FILE)).expect("flag");
        assert_eq!(t.brokers, ["f:1"]);
    }

    #[test]
    fn bad_profiles_and_addresses_are_usage_errors() {
        let path = PathBuf::from("/p.toml");
        let missing = resolve_with(&args(None, Some("nope")), None, None, None, Some(&path), Some(FILE)).expect_err("unknown profile");
        assert!(missing.to_string().contains("local, prod"), "{missing}");
        assert_eq!(crate::exit::code_for(&missing), crate::exit::USAGE);
        assert!(resolve_with(&args(Some("http://x:1"), None), None, None, None, None, None).is_err());
        assert!(resolve_with(&args(Some(" , "), None), None, None, None, None, None).is_err());
        assert!(resolve_with(&args(None, None), None, None, None, Some(&path), Some("default = 3")).is_err());
    }
}
