//! A mirror's spec: what the operator asked for, validated at the boundary, and what is stored of
//! it under `<data-dir>/__mirror/mirrors/`.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use sluice_runtime::RuntimeError;

/// Longest mirror name (it appears in topic configs, metric labels and file names).
pub const NAME_BYTES_MAX: usize = 128;
/// Most bootstrap addresses one mirror may list.
pub const BOOTSTRAP_ADDRS_MAX: usize = 32;
/// Largest compiled topic or group pattern.
pub const REGEX_COMPILED_BYTES_MAX: usize = 1 << 20;
/// Longest pattern as given.
pub const REGEX_BYTES_MAX: usize = 4096;

/// How the target's topics relate to the source's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Same names, same offsets, the source's batches byte for byte; the copies are read-only.
    #[default]
    Preserve,
    /// MirrorMaker 2's renamed, writable copies: the records are written again (new offsets) by
    /// one transaction per round that also commits the mirror's source positions, each carrying
    /// the cluster it was first written on ([`ORIGIN_HEADER`]).
    Rename,
}

/// The builtin policy `policy: "default"` names (MirrorMaker 2's `DefaultReplicationPolicy`:
/// `{source-alias}.{topic}`).
pub const DEFAULT_POLICY_MODULE: &str = "default-replication-policy";
/// The builtin policy `policy: "identity"` names (`IdentityReplicationPolicy`: the source's names).
pub const IDENTITY_POLICY_MODULE: &str = "identity-replication-policy";
/// Most `policy_config` entries, and their bytes in all.
pub const POLICY_CONFIG_ENTRIES_MAX: usize = 256;
pub const POLICY_CONFIG_BYTES_MAX: usize = 64 * 1024;
/// Longest policy module name (as the module registry's).
pub const POLICY_NAME_BYTES_MAX: usize = 128;

fn default_policy() -> String {
    "default".to_string()
}

/// The record header rename mode adds: the cluster id of the cluster where the record was first
/// written. A record whose origin is the target cluster is not copied back to it, so A→B plus B→A
/// never loops, whatever the names.
pub const ORIGIN_HEADER: &str = "sluice.origin";

/// `POST /v1/mirrors`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorSpec {
    pub name: String,
    /// `host:port` addresses of the source cluster (any Kafka-protocol cluster).
    pub source_bootstrap: Vec<String>,
    /// A short name for the source cluster (MirrorMaker 2's alias); defaults to the mirror's name.
    #[serde(default)]
    pub source_alias: Option<String>,
    /// Source topics to mirror: a regular expression that must match the whole name.
    pub topics: String,
    /// Source topics to leave out, matched the same way.
    #[serde(default)]
    pub exclude: Option<String>,
    /// Consumer groups whose committed offsets on the mirrored topics are copied (a regular
    /// expression matching whole ids); none when absent.
    #[serde(default)]
    pub groups: Option<String>,
    #[serde(default)]
    pub mode: Mode,
    /// Rename mode's replication policy: a `mirror-policy` module in the broker's registry, by name;
    /// `default` (`{source-alias}.{topic}`) and `identity` (the source's names) are the builtins.
    #[serde(default = "default_policy")]
    pub policy: String,
    /// The policy's configuration, passed to its `init`. Not written when empty, so that a broker
    /// from before policies were modules still reads a stored mirror that has none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub policy_config: BTreeMap<String, String>,
}

impl MirrorSpec {
    pub fn validate(&self) -> Result<(), RuntimeError> {
        let invalid = |m: String| Err(RuntimeError::Invalid(m));
        if self.name.is_empty() || self.name.len() > NAME_BYTES_MAX {
            return invalid(format!("a mirror name must be 1 to {NAME_BYTES_MAX} bytes"));
        }
        if !self.name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) || self.name.starts_with('.') {
            return invalid(format!("mirror name '{}': use letters, digits, '-', '_' and '.' (not first)", self.name));
        }
        if self.source_bootstrap.is_empty() || self.source_bootstrap.len() > BOOTSTRAP_ADDRS_MAX {
            return invalid(format!("source_bootstrap: give 1 to {BOOTSTRAP_ADDRS_MAX} host:port addresses of the source cluster"));
        }
        for addr in &self.source_bootstrap {
            let port = addr.rsplit_once(':').and_then(|(host, port)| (!host.is_empty()).then_some(port));
            if addr.len() > 512 || port.is_none_or(|p| p.parse::<u16>().is_err()) {
                return invalid(format!("source_bootstrap: '{addr}' is not host:port"));
            }
        }
        if let Some(alias) = &self.source_alias
            && (alias.is_empty()
                || alias.len() > NAME_BYTES_MAX
                || !alias.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_')))
        {
            return invalid(format!("source_alias '{alias}': use 1 to {NAME_BYTES_MAX} letters, digits, '-' or '_'"));
        }
        if self.mode == Mode::Preserve && (self.policy != "default" || !self.policy_config.is_empty()) {
            return invalid("policy: preserve mode keeps the source's names; a policy applies to mode 'rename' only".into());
        }
        sluice_runtime::registry::validate_name("policy module", &self.policy, POLICY_NAME_BYTES_MAX)?;
        let config_bytes: usize = self.policy_config.iter().map(|(k, v)| k.len() + v.len()).sum();
        if self.policy_config.len() > POLICY_CONFIG_ENTRIES_MAX || config_bytes > POLICY_CONFIG_BYTES_MAX {
            return invalid(format!(
                "policy_config: at most {POLICY_CONFIG_ENTRIES_MAX} entries and {POLICY_CONFIG_BYTES_MAX} bytes in all"
            ));
        }
        self.selection()?;
        self.group_selection()?;
        Ok(())
    }

    /// The alias of the source cluster: `source_alias`, or the mirror's name.
    pub fn alias(&self) -> &str {
        self.source_alias.as_deref().unwrap_or(&self.name)
    }

    /// The registry module of the rename-mode policy (`default` and `identity` name the builtins).
    pub fn policy_module(&self) -> &str {
        match self.policy.as_str() {
            "default" => DEFAULT_POLICY_MODULE,
            "identity" => IDENTITY_POLICY_MODULE,
            other => other,
        }
    }

    /// The compiled group selection, if groups are synced.
    pub fn group_selection(&self) -> Result<Option<regex::Regex>, RuntimeError> {
        self.groups.as_deref().map(|p| pattern("groups", p)).transpose()
    }

    /// The compiled topic selection.
    pub fn selection(&self) -> Result<Selection, RuntimeError> {
        Ok(Selection {
            include: pattern("topics", &self.topics)?,
            exclude: self.exclude.as_deref().map(|p| pattern("exclude", p)).transpose()?,
        })
    }
}

fn pattern(key: &str, text: &str) -> Result<regex::Regex, RuntimeError> {
    if text.len() > REGEX_BYTES_MAX {
        return Err(RuntimeError::Invalid(format!("{key}: a pattern may be at most {REGEX_BYTES_MAX} bytes")));
    }
    regex::RegexBuilder::new(&format!("^(?:{text})$"))
        .size_limit(REGEX_COMPILED_BYTES_MAX)
        .build()
        .map_err(|e| RuntimeError::Invalid(format!("{key}: '{text}' is not a valid regular expression: {e}")))
}

/// Which source topics a mirror copies.
#[derive(Debug, Clone)]
pub struct Selection {
    include: regex::Regex,
    exclude: Option<regex::Regex>,
}

impl Selection {
    /// Selects no topic (a stored mirror whose spec no longer validates).
    pub fn nothing() -> Selection {
        Selection { include: regex::Regex::new("[^\\s\\S]").expect("a constant pattern"), exclude: None }
    }

    /// Internal topics (`__consumer_offsets`, `__transaction_state`, names starting with `__`) are
    /// never mirrored: they belong to the source cluster's coordinators.
    pub fn wants(&self, topic: &str) -> bool {
        !topic.starts_with("__") && self.include.is_match(topic) && !self.exclude.as_ref().is_some_and(|e| e.is_match(topic))
    }
}

/// What is stored of a mirror.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredMirror {
    pub spec: MirrorSpec,
    pub paused: bool,
    pub created_at_ms: i64,
    /// Topics promoted to normal topics: no longer mirrored, even if they still match.
    #[serde(default)]
    pub promoted: BTreeSet<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> MirrorSpec {
        MirrorSpec {
            name: "dr".into(),
            source_bootstrap: vec!["10.0.0.1:9092".into()],
            source_alias: None,
            topics: "orders|payments.*".into(),
            exclude: Some("payments-test".into()),
            groups: None,
            mode: Mode::Preserve,
            policy: "default".into(),
            policy_config: BTreeMap::new(),
        }
    }

    #[test]
    fn patterns_match_whole_names_and_internal_topics_are_never_selected() {
        let selection = spec().selection().unwrap();
        assert!(selection.wants("orders"));
        assert!(!selection.wants("orders-eu"), "a pattern matches the whole name, as Kafka's topic patterns do");
        assert!(selection.wants("payments-eu"));
        assert!(!selection.wants("payments-test"));
        let all = MirrorSpec { topics: ".*".into(), exclude: None, ..spec() };
        assert!(!all.selection().unwrap().wants("__consumer_offsets"));
    }

    #[test]
    fn policy_shorthands_name_the_builtin_modules() {
        let rename = MirrorSpec { mode: Mode::Rename, ..spec() };
        assert_eq!(rename.policy_module(), DEFAULT_POLICY_MODULE);
        assert_eq!(MirrorSpec { policy: "identity".into(), ..rename.clone() }.policy_module(), IDENTITY_POLICY_MODULE);
        assert_eq!(MirrorSpec { policy: "my-policy".into(), ..rename }.policy_module(), "my-policy");
        // A mirror stored before policies were modules reads as it did.
        let stored: MirrorSpec =
            serde_json::from_str(r#"{"name":"m","source_bootstrap":["h:1"],"topics":"t","mode":"rename","policy":"identity"}"#).unwrap();
        assert_eq!(stored.policy_module(), IDENTITY_POLICY_MODULE);
    }

    #[test]
    fn bad_specs_say_what_to_change() {
        let error = |s: MirrorSpec| s.validate().unwrap_err().to_string();
        assert!(error(MirrorSpec { name: "a/b".into(), ..spec() }).contains("mirror name"));
        assert!(error(MirrorSpec { source_bootstrap: vec![], ..spec() }).contains("source_bootstrap"));
        assert!(error(MirrorSpec { source_bootstrap: vec!["host".into()], ..spec() }).contains("host:port"));
        assert!(error(MirrorSpec { topics: "(".into(), ..spec() }).contains("not a valid regular expression"));
        assert!(error(MirrorSpec { topics: "a{1000}{1000}".into(), ..spec() }).contains("topics"));
        assert!(error(MirrorSpec { policy: "identity".into(), ..spec() }).contains("mode 'rename' only"));
        let rename = MirrorSpec { mode: Mode::Rename, ..spec() };
        assert!(error(MirrorSpec { policy: "../x".into(), ..rename.clone() }).contains("policy module name"));
        let huge = (0..300).map(|i| (i.to_string(), String::new())).collect();
        assert!(error(MirrorSpec { policy_config: huge, ..rename }).contains("policy_config"));
        MirrorSpec { mode: Mode::Rename, ..spec() }.validate().unwrap();
        assert!(error(MirrorSpec { groups: Some("[".into()), ..spec() }).contains("groups"));
        spec().validate().unwrap();
    }
}
