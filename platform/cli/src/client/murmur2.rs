//! Kafka's key partitioner lives in `sluice-protocol` (the broker's transform runtime uses it too).

pub(crate) use sluice_protocol::partitioner::partition_for_key;
