//! `sluice-client`: a Kafka-protocol client library, async (tokio) and bounded, that depends on no
//! broker crate, so what it does works against Sluice, Apache Kafka and other Kafka-compatible brokers.
//! The `sluice` CLI's client commands are built on it; a replicator inside the broker (a mirror) is
//! meant to be.
//!
//! Layout, in the order a request travels:
//! - [`wire`]: framing (length prefix, request header, correlation ids), every response frame bounded
//!   by [`wire::MAX_RESPONSE_FRAME_BYTES`] before anything is allocated;
//! - [`connection`]: one pipelined TCP connection per broker, many requests in flight, ApiVersions;
//! - [`versions`]: the API versions implemented and the negotiation against what a broker advertised;
//! - [`client`]: [`Client`], bootstrap, Metadata and routing to partition leaders ([`metadata`]) and
//!   group coordinators, ListOffsets;
//! - [`produce`] and [`fetch`]: raw record-batch bytes in and out, pipelined; [`records`] encodes,
//!   splits and decodes RecordBatch v2;
//! - [`group`]: a classic consumer-group member (range assignor) and group offsets;
//! - [`admin`]: topics, configs, groups;
//! - [`error`]: [`ClientError`], one enum for all of it; [`codes`]: Kafka error codes by name.
//!
//! ```no_run
//! # async fn example() -> sluice_client::Result<()> {
//! use sluice_client::{Client, ClientOptions, FetchOptions, PartitionFetch};
//! let client = Client::connect(&["127.0.0.1:9092".to_string()], ClientOptions::default()).await?;
//! let topic = client.topic("orders").await?;
//! let leader = topic.leader_of(0)?;
//! let want = PartitionFetch { topic: "orders".into(), partition: 0, offset: 0, max_bytes: 1 << 20 };
//! for answer in client.fetch(leader, &[want], &FetchOptions::default()).await? {
//!     println!("{} bytes of batches, high watermark {}", answer.records.len(), answer.high_watermark);
//! }
//! # Ok(()) }
//! ```

pub mod admin;
pub mod client;
pub mod codes;
pub mod connection;
pub mod error;
pub mod fetch;
pub mod group;
pub mod metadata;
pub mod produce;
pub mod records;
pub mod versions;
pub mod wire;

pub use admin::{
    ConfigChange, ConfigEntry, ConfigResource, ConfigSource, GroupDescription, GroupListing, MemberDescription, NewTopic, Outcome,
};
pub use client::{Client, ClientOptions, OffsetSpec, Watermarks};
pub use connection::{Connection, ConnectionOptions, Pending, PendingFrame};
pub use error::{ClientError, KafkaError, Result};
pub use fetch::{AbortedTransaction, FetchOptions, FetchedPartition, Isolation, PartitionFetch, PendingFetch};
pub use group::{GroupMember, Heartbeat};
/// The protocol crate this client speaks through, for [`Client::call`] with requests it has no method for.
pub use kafka_protocol;
pub use metadata::{BrokerInfo, ClusterMeta, PartitionInfo, Routes, TopicInfo};
pub use produce::{Acks, PartitionBatch, PendingProduce, ProducedPartition};
pub use records::{ConsumerRecord, ProducerRecord, RawBatch};
/// Kafka's key partitioner (murmur2, as the Java client), from the codec crate the broker uses too.
pub use sluice_protocol::partitioner::{murmur2, partition_for_key};

use kafka_protocol::messages::{GroupId, TopicName};
use kafka_protocol::protocol::StrBytes;

fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

fn topic_name(s: &str) -> TopicName {
    TopicName(str_bytes(s))
}

fn group_id(s: &str) -> GroupId {
    GroupId(str_bytes(s))
}
