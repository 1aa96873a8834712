//! `dr-filter`: an example mirror policy for a rename-mode mirror that copies only what a disaster
//! recovery site needs.
//!
//! - Topics are copied as `<target.prefix><topic>` (`dr.` by default); topics listed in
//!   `skip.topics` are not copied.
//! - Consumer groups whose id starts with `skip.groups.prefix` (`test-` by default) are not synced.
//! - Records whose key starts with `drop.key.prefix` (when set) are not copied.
//! - The header named by `strip.header` (when set) is removed from every record copied.
//!
//! Build and use it:
//!
//! ```text
//! cargo build --release --target wasm32-wasip2 -p dr-filter
//! sluice mirror create dr --source-bootstrap east:9092 --topics '.*' --groups '.*' --mode rename \
//!     --policy target/wasm32-wasip2/release/dr_filter.wasm --policy-config drop.key.prefix=internal-
//! ```

use sluice::mirror::{Action, Policy};
use sluice::{Config, Record, Result};

#[derive(Debug)]
pub struct DrFilter {
    prefix: String,
    skip_topics: Vec<String>,
    skip_groups_prefix: String,
    drop_key_prefix: Option<Vec<u8>>,
    strip_header: Option<String>,
}

#[sluice::mirror_policy]
impl Policy for DrFilter {
    fn init(config: &Config, _source_alias: &str) -> Result<DrFilter> {
        const KEYS: [&str; 5] = ["target.prefix", "skip.topics", "skip.groups.prefix", "drop.key.prefix", "strip.header"];
        if let Some((key, _)) = config.iter().find(|(key, _)| !KEYS.contains(key)) {
            sluice::bail!("unknown policy_config key {key:?}; this policy reads {}", KEYS.join(", "));
        }
        Ok(DrFilter {
            prefix: config.get("target.prefix").unwrap_or("dr.").to_owned(),
            skip_topics: config.list("skip.topics").into_iter().map(str::to_owned).collect(),
            skip_groups_prefix: config.get("skip.groups.prefix").unwrap_or("test-").to_owned(),
            drop_key_prefix: config.get("drop.key.prefix").filter(|p| !p.is_empty()).map(|p| p.as_bytes().to_vec()),
            strip_header: config.get("strip.header").filter(|h| !h.is_empty()).map(str::to_owned),
        })
    }

    fn target_topic(&self, topic: &str) -> Option<String> {
        (!self.skip_topics.iter().any(|t| t == topic)).then(|| format!("{}{topic}", self.prefix))
    }

    fn sync_group(&self, group: &str) -> bool {
        !group.starts_with(&self.skip_groups_prefix)
    }

    fn filters_records(&self) -> bool {
        self.drop_key_prefix.is_some() || self.strip_header.is_some()
    }

    fn filter(&self, _topic: &str, record: Record) -> Result<Action> {
        if let Some(prefix) = &self.drop_key_prefix
            && record.key().is_some_and(|key| key.starts_with(prefix))
        {
            return Ok(Action::Drop);
        }
        match &self.strip_header {
            Some(name) if record.header(name).is_some() => {
                let mut out = record.into_output();
                out.headers.retain(|h| &h.key != name);
                Ok(Action::Replace(out))
            }
            _ => Ok(Action::Keep),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(pairs: &[(&str, &str)]) -> DrFilter {
        DrFilter::init(&Config::from_pairs(pairs.iter().copied()), "east").unwrap()
    }

    #[test]
    fn names_groups_and_records() {
        let p = policy(&[("skip.topics", "audit"), ("drop.key.prefix", "internal-"), ("strip.header", "trace")]);
        assert_eq!(p.target_topic("orders").as_deref(), Some("dr.orders"));
        assert_eq!(p.target_topic("audit"), None);
        assert!(p.sync_group("billing") && !p.sync_group("test-1"));
        assert!(p.filters_records());
        assert_eq!(p.filter("orders", Record::new("v").with_key("internal-1")).unwrap(), Action::Drop);
        assert_eq!(p.filter("orders", Record::new("v").with_key("k")).unwrap(), Action::Keep);
        let Action::Replace(out) = p.filter("orders", Record::new("v").with_header("trace", "x").with_header("keep", "y")).unwrap() else {
            panic!("the header is stripped")
        };
        assert_eq!(out.headers.len(), 1);
        assert!(!policy(&[]).filters_records(), "naming only: no per-record calls");
        assert!(DrFilter::init(&Config::from_pairs([("typo", "1")]), "east").is_err());
    }
}
