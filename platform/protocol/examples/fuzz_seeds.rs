//! Writes codec-encoded seeds for the fuzz targets in `fuzz/` (see `fuzz/README.md`):
//! `<dir>/request_decoder/` gets a default-valued request of every supported API and version plus a
//! few filled-in ones, `<dir>/record_batch/` gets record batches in every compression. Seeds captured
//! from real clients come from `fuzz/capture_seeds.py`.
//!
//! `cargo run --release -p sluice-protocol --example fuzz_seeds -- fuzz/seeds`

use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::offset_commit_request::{OffsetCommitRequestPartition, OffsetCommitRequestTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ApiKey, GroupId, MetadataRequest, OffsetCommitRequest, ProduceRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType};
use sluice_protocol::{SUPPORTED_APIS, samples};

fn main() -> std::io::Result<()> {
    let root = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "fuzz/seeds".to_string()));
    let requests = root.join("request_decoder");
    let batches = root.join("record_batch");
    std::fs::create_dir_all(&requests)?;
    std::fs::create_dir_all(&batches)?;

    let mut written = 0;
    for &(api_key, min, max) in SUPPORTED_APIS {
        for version in min..=max {
            if let Some(frame) = samples::default_request(api_key, version, 1) {
                write(&requests, &format!("default-{api_key:?}-v{version}"), &frame)?;
                written += 1;
            }
        }
    }

    let topic = || TopicName(StrBytes::from_static_str("orders"));
    let metadata = MetadataRequest::default().with_topics(Some(vec![MetadataRequestTopic::default().with_name(Some(topic()))]));
    for version in [0, 4, 9, 12] {
        write(&requests, &format!("filled-Metadata-v{version}"), &sample(ApiKey::Metadata, version, &metadata))?;
    }
    let partitions =
        (0..3).map(|p| OffsetCommitRequestPartition::default().with_partition_index(p).with_committed_offset(100 + i64::from(p)));
    let commit = OffsetCommitRequest::default()
        .with_group_id(GroupId(StrBytes::from_static_str("payments")))
        .with_topics(vec![OffsetCommitRequestTopic::default().with_name(topic()).with_partitions(partitions.collect())]);
    for version in [2, 8] {
        write(&requests, &format!("filled-OffsetCommit-v{version}"), &sample(ApiKey::OffsetCommit, version, &commit))?;
    }
    let produce = ProduceRequest::default().with_acks(-1).with_timeout_ms(30_000).with_topic_data(vec![
        TopicProduceData::default()
            .with_name(topic())
            .with_partition_data(vec![PartitionProduceData::default().with_index(0).with_records(Some(batch(Compression::None)))]),
    ]);
    for version in [3, 9] {
        write(&requests, &format!("filled-Produce-v{version}"), &sample(ApiKey::Produce, version, &produce))?;
    }

    for compression in [Compression::None, Compression::Gzip, Compression::Snappy, Compression::Lz4, Compression::Zstd] {
        // The record_batch target's flags byte first: 1 = rewrite CRCs after mutation.
        write(&batches, &format!("encoded-{compression:?}"), &[&[1u8][..], &batch(compression)].concat())?;
        written += 1;
    }
    println!("wrote {written} default requests and record batches under {}", root.display());
    Ok(())
}

fn sample<R: kafka_protocol::protocol::Encodable>(api_key: ApiKey, version: i16, body: &R) -> Bytes {
    samples::frame(api_key, version, 1, body).expect("the sample encodes at this version")
}

/// Three records with keys, values and a header, as a producer would send them.
fn batch(compression: Compression) -> Bytes {
    let records: Vec<Record> = (0..3)
        .map(|i| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: 7,
            producer_epoch: 0,
            timestamp_type: TimestampType::Creation,
            offset: i,
            sequence: i as i32,
            timestamp: 1_700_000_000_000 + i,
            key: Some(Bytes::from(format!("key-{i}"))),
            value: Some(Bytes::from(format!("value-{i}-{}", "x".repeat(40)))),
            headers: [(StrBytes::from_static_str("trace"), Some(Bytes::from_static(b"abc")))].into_iter().collect(),
        })
        .collect();
    let mut out = BytesMut::new();
    RecordBatchEncoder::encode(&mut out, &records, &RecordEncodeOptions { version: 2, compression }).expect("encode batch");
    out.freeze()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(dir.join(name), bytes)
}
