//! `identity-replication-policy`: MirrorMaker 2's `IdentityReplicationPolicy`. Copies keep their
//! source topic's name; every topic and group the mirror's patterns select is copied and synced.
//! Records are copied as they are; A→B plus B→A does not loop because the broker marks each record
//! with the cluster it was first written on, whatever the names. It takes no configuration.

use sluice::mirror::Policy;
use sluice::{Config, Result};

#[derive(Debug)]
pub struct IdentityPolicy;

#[sluice::mirror_policy]
impl Policy for IdentityPolicy {
    fn init(config: &Config, _source_alias: &str) -> Result<IdentityPolicy> {
        if let Some((key, _)) = config.iter().next() {
            sluice::bail!("unknown policy_config key {key:?}; this policy takes no configuration");
        }
        Ok(IdentityPolicy)
    }

    fn target_topic(&self, topic: &str) -> Option<String> {
        Some(topic.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_stay_the_same() {
        let policy = IdentityPolicy::init(&Config::from_pairs(Vec::<(String, String)>::new()), "east").unwrap();
        assert_eq!(policy.target_topic("orders").as_deref(), Some("orders"));
        assert!(IdentityPolicy::init(&Config::from_pairs([("x", "y")]), "east").is_err());
    }
}
