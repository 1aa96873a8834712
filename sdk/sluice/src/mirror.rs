//! Mirror policies: what a mirror (`sluice mirror create --policy`) copies and what the copies are
//! called. A policy is a type that implements [`Policy`], marked with `#[sluice::mirror_policy]`:
//!
//! ```
//! use sluice::mirror::{Action, Policy};
//! use sluice::{Config, Record, Result};
//!
//! /// Copies `orders.*` topics as `dr-<topic>`, syncs every group but `test-*`, and drops records
//! /// whose key starts with `internal-`.
//! struct Dr;
//!
//! #[sluice::mirror_policy]
//! impl Policy for Dr {
//!     fn init(_config: &Config, _source_alias: &str) -> Result<Dr> {
//!         Ok(Dr)
//!     }
//!
//!     fn target_topic(&self, topic: &str) -> Option<String> {
//!         topic.starts_with("orders").then(|| format!("dr-{topic}"))
//!     }
//!
//!     fn sync_group(&self, group: &str) -> bool {
//!         !group.starts_with("test-")
//!     }
//!
//!     fn filters_records(&self) -> bool {
//!         true
//!     }
//!
//!     fn filter(&self, _topic: &str, record: Record) -> Result<Action> {
//!         Ok(if record.key().is_some_and(|k| k.starts_with(b"internal-")) { Action::Drop } else { Action::Keep })
//!     }
//! }
//! # fn main() {}
//! ```
//!
//! The mirror's own `topics`, `exclude` and `groups` patterns are applied first; the policy sees
//! what they selected. Naming and group selection apply to rename mode (preserve mode keeps the
//! source's names); `filter` is called only in rename mode and only when [`Policy::filters_records`]
//! says so, once per batch of one partition, so a naming-only policy costs nothing per record.
//!
//! Everything here is plain Rust: `cargo test` calls the trait's methods directly. Built for
//! wasm32-wasip2, the attribute adds the export glue of the `mirror-policy` world.

use crate::record::Data;
use crate::{Config, Header, OutputRecord, Record, Result};

/// What happens to one record a rename-mode mirror copies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Copied as it is.
    Keep,
    /// Not copied. A consumer group's offset that points at it translates to the next copied record.
    Drop,
    /// Copied with this record's key, value and headers. Its timestamp, partition and order stay the
    /// source's (the record's `timestamp_ms` is not used), and the broker keeps the header that says
    /// which cluster the record came from.
    Replace(OutputRecord),
}

/// A mirror's replication policy.
pub trait Policy: Sized + 'static {
    /// Called once per mirror run. `config`: the mirror's `policy_config`; `source_alias`: the short
    /// name of the source cluster (`--source-alias`, or the mirror's name). An error fails the mirror
    /// with the message.
    fn init(config: &Config, source_alias: &str) -> Result<Self>;

    /// The name of `topic`'s copy, or `None` to leave the topic out. Asked once per topic: the broker
    /// keeps the name for as long as the mirror exists, across restarts (a copy is never renamed).
    /// A name Kafka would refuse, or one starting with `__`, leaves that topic out with an error.
    fn target_topic(&self, topic: &str) -> Option<String>;

    /// Whether `group`'s committed offsets are synced (every group the mirror's pattern selected,
    /// unless overridden).
    fn sync_group(&self, group: &str) -> bool {
        let _ = group;
        true
    }

    /// Whether [`Policy::filter`] is called on every record a rename-mode mirror copies.
    fn filters_records(&self) -> bool {
        false
    }

    /// What to do with one record of source topic `topic` (rename mode, when
    /// [`Policy::filters_records`]). An error stops the mirror's round; it is retried with backoff.
    ///
    /// Decide from the record alone (and the configuration): the same records are filtered again
    /// after a round that did not commit (a crash, a failed write, a restart), and only a decision
    /// that comes out the same keeps the copy exactly once. Hence `&self`.
    fn filter(&self, topic: &str, record: Record) -> Result<Action> {
        let _ = (topic, record);
        Ok(Action::Keep)
    }
}

/// Runs `filter` over a batch: one action per record, in order; the first error names its record.
pub fn filter_batch<P: Policy>(policy: &P, topic: &str, records: impl Iterator<Item = Record>) -> Result<Vec<Action>> {
    records
        .enumerate()
        .map(|(idx, record)| {
            let offset = record.offset;
            policy.filter(topic, record).map_err(|e| e.context(format_args!("record at offset {offset}")).at_record(idx))
        })
        .collect()
}

/// A record as the host passes it (for the export glue).
#[doc(hidden)]
pub fn input_record(
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<Header>,
    timestamp_ms: i64,
    partition: i32,
    offset: i64,
) -> Record {
    Record { key: key.map(Data::Owned), value: value.map(Data::Owned), headers, timestamp_ms, partition, offset }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Prefix(String);

    impl Policy for Prefix {
        fn init(config: &Config, source_alias: &str) -> Result<Prefix> {
            Ok(Prefix(config.get("prefix").unwrap_or(source_alias).to_owned()))
        }

        fn target_topic(&self, topic: &str) -> Option<String> {
            Some(format!("{}.{topic}", self.0))
        }

        fn filter(&self, _topic: &str, record: Record) -> Result<Action> {
            match record.value_str()? {
                "drop" => Ok(Action::Drop),
                "bad" => Err(crate::Error::msg("refused")),
                _ => Ok(Action::Replace(record.into_output().with_value("seen"))),
            }
        }
    }

    #[test]
    fn a_policy_names_selects_and_filters() {
        let policy = Prefix::init(&Config::from_pairs(Vec::<(String, String)>::new()), "east").unwrap();
        assert_eq!(policy.target_topic("orders").as_deref(), Some("east.orders"));
        assert!(policy.sync_group("anything"), "groups are synced unless the policy says otherwise");
        assert!(!policy.filters_records());
        let records = vec![Record::new("a").with_position(0, 7), Record::new("drop").with_position(0, 8)];
        let actions = filter_batch(&policy, "orders", records.into_iter()).unwrap();
        assert_eq!(actions[1], Action::Drop);
        assert!(matches!(&actions[0], Action::Replace(r) if r.value.as_deref() == Some(&b"seen"[..])));
        let error = filter_batch(&policy, "orders", [Record::new("bad").with_position(0, 9)].into_iter()).unwrap_err();
        assert_eq!(error.record_index(), Some(0));
        assert!(error.message().contains("offset 9"), "{}", error.message());
    }
}
