//! `default-replication-policy`: MirrorMaker 2's `DefaultReplicationPolicy`. A source topic `orders`
//! is copied as `{source-alias}.orders`; every topic and group the mirror's patterns select is copied
//! and synced; records are copied as they are.
//!
//! Configuration (the mirror's `policy_config`):
//! - `replication.policy.separator`: what goes between the alias and the topic, `.` by default (as
//!   in MirrorMaker 2). Letters, digits, `.`, `_` and `-` only, since it becomes part of topic names.

use sluice::mirror::Policy;
use sluice::{Config, Result};

pub const SEPARATOR_KEY: &str = "replication.policy.separator";

#[derive(Debug)]
pub struct DefaultPolicy {
    prefix: String,
}

#[sluice::mirror_policy]
impl Policy for DefaultPolicy {
    fn init(config: &Config, source_alias: &str) -> Result<DefaultPolicy> {
        if let Some((key, _)) = config.iter().find(|(key, _)| *key != SEPARATOR_KEY) {
            sluice::bail!("unknown policy_config key {key:?}; this policy reads only {SEPARATOR_KEY:?}");
        }
        let separator = config.get(SEPARATOR_KEY).unwrap_or(".");
        if separator.is_empty() || !separator.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')) {
            sluice::bail!("{SEPARATOR_KEY} {separator:?}: use one or more of letters, digits, '.', '_' and '-'");
        }
        Ok(DefaultPolicy { prefix: format!("{source_alias}{separator}") })
    }

    fn target_topic(&self, topic: &str) -> Option<String> {
        Some(format!("{}{topic}", self.prefix))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn init(pairs: &[(&str, &str)]) -> Result<DefaultPolicy> {
        DefaultPolicy::init(&Config::from_pairs(pairs.iter().copied()), "east")
    }

    #[test]
    fn topics_are_prefixed_with_the_alias() {
        assert_eq!(init(&[]).unwrap().target_topic("orders").as_deref(), Some("east.orders"));
        assert_eq!(init(&[(SEPARATOR_KEY, "-")]).unwrap().target_topic("orders").as_deref(), Some("east-orders"));
        assert!(init(&[]).unwrap().sync_group("billing"));
    }

    #[test]
    fn bad_config_is_refused() {
        assert!(init(&[(SEPARATOR_KEY, "/")]).unwrap_err().message().contains("separator"));
        assert!(init(&[("separator", ".")]).unwrap_err().message().contains("unknown policy_config key"));
    }
}
