//! The `mirror-policy` world: [`PolicyModule`] (a component checked against the world, instantiated
//! once per mirror run) and [`PolicyInstance`] (`target-topics`, `select-groups`, `filter`). Built
//! on `sandbox` as the other worlds are. What the host checks here: one answer per name or record,
//! target names Kafka accepts, rewritten records within the output record limits.

use crate::bindings::mirror_policy::{MirrorPolicy, MirrorPolicyPre};
use crate::bindings::replication_policy::{PolicyInfo, RecordAction};
use crate::connector::{check_record_size, record_bytes};
use crate::engine::{CompiledComponent, Tier, WorldPre};
use crate::host::HostState;
use crate::limits::*;
use crate::sandbox::{InstanceConfig, Sandbox};
use crate::{InputRecord, PluginError, World};

/// A loaded mirror policy: compiled, checked against the world. Cheap to clone.
#[derive(Clone)]
pub struct PolicyModule {
    component: CompiledComponent,
    pre: WorldPre<MirrorPolicyPre<HostState>>,
}

impl PolicyModule {
    pub(crate) fn new(component: CompiledComponent) -> Result<PolicyModule, PluginError> {
        let pre = WorldPre::new(&component, World::MirrorPolicy, MirrorPolicyPre::new)?;
        Ok(PolicyModule { component, pre })
    }

    pub fn component(&self) -> &CompiledComponent {
        &self.component
    }

    /// Make an instance with its own memory and limits and run its `init` with the policy's
    /// configuration (`config.config`) and the source cluster's alias, under the CPU bound.
    pub fn instantiate(&self, config: InstanceConfig, source_alias: &str) -> Result<PolicyInstance, PluginError> {
        let (tier, pre) = self.pre.current(&self.component)?;
        let mut sandbox = Sandbox::new(&self.component, tier, &config)?;
        let (bindings, init) = sandbox.call(|store| {
            let bindings = pre.instantiate(&mut *store)?;
            let init = bindings.sluice_plugin_replication_policy().call_init(&mut *store, &config.config, source_alias)?;
            Ok((bindings, init))
        })?;
        match init {
            Ok(info) => Ok(PolicyInstance { sandbox, bindings, info }),
            Err(message) => Err(PluginError::InitFailed(truncate_message(message, GUEST_ERROR_BYTES_MAX))),
        }
    }
}

impl CompiledComponent {
    /// This component as a mirror policy, or `WrongWorld`.
    pub fn mirror_policy(&self) -> Result<PolicyModule, PluginError> {
        PolicyModule::new(self.clone())
    }
}

/// A live policy instance, driven from one thread at a time (`Send`, not `Sync`).
pub struct PolicyInstance {
    sandbox: Sandbox,
    bindings: MirrorPolicy,
    info: PolicyInfo,
}

impl PolicyInstance {
    /// Whether the module now has optimized code and this instance runs baseline code: replace it
    /// (instantiate again) at the next safe point.
    pub fn superseded(&self) -> bool {
        self.sandbox.superseded()
    }

    /// The compiler of the code this instance runs.
    pub fn tier(&self) -> Tier {
        self.sandbox.tier()
    }

    /// Whether `init` asked for every batch to go through `filter`.
    pub fn filters_records(&self) -> bool {
        self.info.filters_records
    }

    /// The target name of each source topic: `Ok(None)` leaves it out; `Err(why)` is a name Kafka
    /// would refuse (topic names are 1..=249 bytes of letters, digits, `.`, `_`, `-`; not `.` or `..`;
    /// names starting with `__` belong to the broker), for that topic alone.
    pub fn target_topics(&mut self, topics: &[String]) -> Result<Vec<Result<Option<String>, String>>, PluginError> {
        check_names("topics", topics)?;
        let bindings = &self.bindings;
        let answer = self.sandbox.call(|store| bindings.sluice_plugin_replication_policy().call_target_topics(store, topics))?;
        let names = answer.map_err(|message| guest_error("target-topics", message))?;
        check_count("target-topics", names.len(), topics.len())?;
        Ok(names
            .into_iter()
            .map(|name| match name {
                Some(target) => match invalid_topic_name(&target)
                    .or_else(|| target.starts_with("__").then(|| "names starting with '__' belong to the broker".to_string()))
                {
                    Some(why) => Err(format!("the policy named its copy {:?}: {why}", truncate_message(target, 300))),
                    None => Ok(Some(target)),
                },
                None => Ok(None),
            })
            .collect())
    }

    /// Whether each group's offsets are synced.
    pub fn select_groups(&mut self, groups: &[String]) -> Result<Vec<bool>, PluginError> {
        check_names("groups", groups)?;
        let bindings = &self.bindings;
        let answer = self.sandbox.call(|store| bindings.sluice_plugin_replication_policy().call_select_groups(store, groups))?;
        let selected = answer.map_err(|message| guest_error("select-groups", message))?;
        check_count("select-groups", selected.len(), groups.len())?;
        Ok(selected)
    }

    /// One action per record of `batch` (at most `INPUT_RECORDS_PER_CALL_MAX`); a rewritten record
    /// within `OUTPUT_HEADERS_PER_RECORD_MAX` headers and `OUTPUT_RECORD_BYTES_MAX` bytes, or the size
    /// of the record it replaces when that is larger (so a large record can always be copied).
    pub fn filter(&mut self, topic: &str, batch: &[InputRecord]) -> Result<Vec<RecordAction>, PluginError> {
        if batch.len() > INPUT_RECORDS_PER_CALL_MAX {
            return Err(PluginError::InvalidRequest(format!(
                "{} records in one batch; the limit is {INPUT_RECORDS_PER_CALL_MAX}",
                batch.len()
            )));
        }
        let bindings = &self.bindings;
        let answer = self.sandbox.call(|store| bindings.sluice_plugin_replication_policy().call_filter(store, topic, batch))?;
        let actions = answer.map_err(|message| guest_error("filter", message))?;
        check_count("filter", actions.len(), batch.len())?;
        for (idx, (action, input)) in actions.iter().zip(batch).enumerate() {
            if let RecordAction::Replace(record) = action {
                let input_bytes = record_bytes(input.key.as_deref(), input.value.as_deref(), &input.headers);
                if record_bytes(record.key.as_deref(), record.value.as_deref(), &record.headers) > input_bytes {
                    check_record_size(idx, record.key.as_deref(), record.value.as_deref(), &record.headers)?;
                } else if record.headers.len() > OUTPUT_HEADERS_PER_RECORD_MAX {
                    return Err(PluginError::MalformedOutput(format!("record {idx} has {} headers", record.headers.len())));
                }
            }
        }
        Ok(actions)
    }

    pub fn poisoned(&self) -> Option<&str> {
        self.sandbox.poisoned()
    }
}

fn guest_error(call: &str, message: String) -> PluginError {
    PluginError::GuestError {
        world: World::MirrorPolicy,
        message: format!("{call}: {}", truncate_message(message, GUEST_ERROR_BYTES_MAX)),
        record_index: None,
    }
}

fn check_names(what: &str, names: &[String]) -> Result<(), PluginError> {
    if names.len() > POLICY_NAMES_PER_CALL_MAX {
        return Err(PluginError::InvalidRequest(format!("{} {what} in one call; at most {POLICY_NAMES_PER_CALL_MAX}", names.len())));
    }
    Ok(())
}

fn check_count(call: &str, got: usize, asked: usize) -> Result<(), PluginError> {
    if got != asked {
        return Err(PluginError::MalformedOutput(format!("{call} returned {got} answers for {asked} questions; give one each, in order")));
    }
    Ok(())
}

/// Why `name` is not a topic name Kafka accepts, if it is not.
pub fn invalid_topic_name(name: &str) -> Option<String> {
    if name.is_empty() || name.len() > OUTPUT_NAME_BYTES_MAX {
        return Some(format!("topic names are 1..={OUTPUT_NAME_BYTES_MAX} bytes"));
    }
    if name == "." || name == ".." {
        return Some("'.' and '..' are not topic names".into());
    }
    if let Some(bad) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        return Some(format!("'{}' is not allowed in a topic name (letters, digits, '.', '_', '-')", bad.escape_default()));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_kafkas_rules() {
        assert_eq!(invalid_topic_name("east.orders-v2_x"), None);
        assert!(invalid_topic_name("").is_some());
        assert!(invalid_topic_name("..").is_some());
        assert!(invalid_topic_name("a/b").unwrap().contains("'/'"));
        assert!(invalid_topic_name(&"x".repeat(250)).is_some());
        assert_eq!(invalid_topic_name(&"x".repeat(249)), None);
    }
}
