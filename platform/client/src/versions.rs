//! The API version ranges (inclusive) this client implements, and [`BrokerApis`], what one broker
//! advertised in ApiVersions. Every request goes out at the newest version both sides support, so the
//! same client works against Sluice, Apache Kafka and other Kafka-compatible brokers.

use std::collections::HashMap;

use kafka_protocol::messages::ApiKey;

use crate::error::{ClientError, Result};

/// Produce stops at v9, the first flexible version, which every current broker accepts.
pub const PRODUCE_VERSIONS: (i16, i16) = (3, 9);
/// Fetch stops at v12 because v13+ address topics by id.
pub const FETCH_VERSIONS: (i16, i16) = (4, 12);
pub const METADATA_VERSIONS: (i16, i16) = (1, 12);
pub const CREATE_TOPICS_VERSIONS: (i16, i16) = (2, 7);
pub const LIST_OFFSETS_VERSIONS: (i16, i16) = (1, 7);
pub const FIND_COORDINATOR_VERSIONS: (i16, i16) = (1, 4);
pub const DELETE_TOPICS_VERSIONS: (i16, i16) = (1, 6);
pub const CREATE_PARTITIONS_VERSIONS: (i16, i16) = (0, 3);
pub const DELETE_RECORDS_VERSIONS: (i16, i16) = (0, 2);
pub const DESCRIBE_CONFIGS_VERSIONS: (i16, i16) = (1, 4);
pub const INCREMENTAL_ALTER_CONFIGS_VERSIONS: (i16, i16) = (0, 1);
pub const LIST_GROUPS_VERSIONS: (i16, i16) = (0, 4);
pub const DESCRIBE_GROUPS_VERSIONS: (i16, i16) = (0, 5);
pub const DELETE_GROUPS_VERSIONS: (i16, i16) = (0, 2);
pub const JOIN_GROUP_VERSIONS: (i16, i16) = (1, 9);
pub const SYNC_GROUP_VERSIONS: (i16, i16) = (0, 5);
pub const HEARTBEAT_VERSIONS: (i16, i16) = (0, 4);
pub const LEAVE_GROUP_VERSIONS: (i16, i16) = (0, 5);
pub const OFFSET_COMMIT_VERSIONS: (i16, i16) = (2, 8);
/// v8 batches several groups in one request; one group at a time is what the client asks.
pub const OFFSET_FETCH_VERSIONS: (i16, i16) = (1, 7);
/// The ApiVersions version tried first (the newest one implemented).
pub const API_VERSIONS_VERSION: i16 = 3;

/// The API version ranges one broker advertised.
#[derive(Debug, Clone)]
pub struct BrokerApis {
    addr: String,
    ranges: HashMap<i16, (i16, i16)>,
}

impl BrokerApis {
    pub fn new(addr: &str, ranges: impl IntoIterator<Item = (i16, (i16, i16))>) -> BrokerApis {
        BrokerApis { addr: addr.to_string(), ranges: ranges.into_iter().collect() }
    }

    /// How many APIs the broker advertised.
    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The broker's range for `api`, if it supports it at all.
    pub fn range(&self, api: ApiKey) -> Option<(i16, i16)> {
        self.ranges.get(&(api as i16)).copied()
    }

    /// The newest version of `api` that both the broker and `ours` (inclusive) support.
    pub fn pick(&self, api: ApiKey, ours: (i16, i16)) -> Result<i16> {
        let Some((min, max)) = self.range(api) else {
            return Err(ClientError::UnsupportedApi { addr: self.addr.clone(), api });
        };
        let (low, high) = (min.max(ours.0), max.min(ours.1));
        if low > high {
            return Err(ClientError::NoCommonVersion {
                addr: self.addr.clone(),
                api,
                broker_min: min,
                broker_max: max,
                ours_min: ours.0,
                ours_max: ours.1,
            });
        }
        Ok(high)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_shared_version_is_picked() {
        let apis = BrokerApis::new("b:1", [(ApiKey::Fetch as i16, (4, 17))]);
        assert_eq!(apis.pick(ApiKey::Fetch, FETCH_VERSIONS).ok(), Some(12));
        assert!(matches!(apis.pick(ApiKey::Fetch, (0, 3)), Err(ClientError::NoCommonVersion { broker_min: 4, .. })));
        let missing = apis.pick(ApiKey::Produce, PRODUCE_VERSIONS).err().map(|e| e.to_string());
        assert!(missing.is_some_and(|m| m.contains("Produce")));
    }
}
