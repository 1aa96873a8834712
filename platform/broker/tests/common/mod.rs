//! Helpers shared by the wire-level test files: a broker on ephemeral ports and a minimal client
//! that encodes requests with the same codec crate clients use.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::records::{Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType};
use sluice_broker::{BrokerConfig, ServerOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct TestBroker {
    pub admin: SocketAddr,
    pub kafka: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), sluice_broker::BrokerError>>,
    _dir: tempfile::TempDir,
}

pub async fn start(settings: &[(&str, &str)]) -> TestBroker {
    let dir = tempfile::tempdir().unwrap();
    let config = BrokerConfig::from_settings(settings.iter().copied()).unwrap();
    let options = ServerOptions {
        data_dir: dir.path().to_path_buf(),
        listen: "127.0.0.1:0".into(),
        admin_listen: "127.0.0.1:0".into(),
        config,
        extensions: Vec::new(),
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (bound_tx, bound_rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(sluice_broker::run(
        options,
        async move {
            let _ = stop_rx.await;
        },
        move |bound| {
            let _ = bound_tx.send((bound.kafka, bound.admin));
        },
    ));
    let (kafka, admin) = tokio::time::timeout(Duration::from_secs(10), bound_rx).await.unwrap().unwrap();
    TestBroker { kafka, admin, stop: Some(stop_tx), task, _dir: dir }
}

impl TestBroker {
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(10), self.task).await.unwrap().unwrap().unwrap();
    }
}

pub struct Client {
    stream: TcpStream,
    correlation_id: i32,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        Client { stream: TcpStream::connect(addr).await.unwrap(), correlation_id: 0 }
    }

    pub fn from_stream(stream: TcpStream) -> Client {
        Client { stream, correlation_id: 0 }
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    pub async fn read_frame(&mut self) -> Option<Bytes> {
        let mut len = [0u8; 4];
        match tokio::time::timeout(Duration::from_secs(10), self.stream.read_exact(&mut len)).await.expect("response in time") {
            Ok(_) => {}
            Err(_) => return None,
        }
        let mut frame = vec![0u8; i32::from_be_bytes(len) as usize];
        self.stream.read_exact(&mut frame).await.ok()?;
        Some(Bytes::from(frame))
    }

    pub async fn call<Req: Encodable, Resp: Decodable>(&mut self, api_key: ApiKey, version: i16, request: &Req) -> Resp {
        self.correlation_id += 1;
        let header = RequestHeader::default()
            .with_request_api_key(api_key as i16)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation_id)
            .with_client_id(Some(StrBytes::from_static_str("wire-test")));
        let mut out = BytesMut::new();
        sluice_protocol::encode_request(&header, api_key, request, &mut out).unwrap();
        self.send_raw(&out).await;
        let frame = self.read_frame().await.expect("a response");
        let (correlation_id, response) = sluice_protocol::decode_response::<Resp>(api_key, version, frame).unwrap();
        assert_eq!(correlation_id, self.correlation_id);
        response
    }
}

/// Who writes a test batch and when.
#[derive(Debug, Clone, Copy)]
pub struct Writer {
    pub producer_id: i64,
    pub epoch: i16,
    /// The first record's sequence number.
    pub sequence: i32,
    pub transactional: bool,
    /// The first record's timestamp; later records follow at 1 ms steps.
    pub timestamp_ms: i64,
}

/// A plain (non-idempotent) producer.
pub const PLAIN: Writer = Writer { producer_id: -1, epoch: -1, sequence: -1, transactional: false, timestamp_ms: 1_700_000_000_000 };

impl Writer {
    pub fn idempotent(producer_id: i64, epoch: i16, sequence: i32) -> Writer {
        Writer { producer_id, epoch, sequence, ..PLAIN }
    }

    pub fn transactional(producer_id: i64, epoch: i16, sequence: i32) -> Writer {
        Writer { transactional: true, ..Writer::idempotent(producer_id, epoch, sequence) }
    }
}

/// One uncompressed batch of `values` (keys `k0`, `k1`, …) from `writer`.
pub fn batch_from(values: &[&str], writer: Writer) -> Bytes {
    let records: Vec<Record> = values
        .iter()
        .enumerate()
        .map(|(i, v)| Record {
            transactional: writer.transactional,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: writer.producer_id,
            producer_epoch: writer.epoch,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: if writer.sequence < 0 { -1 } else { writer.sequence + i as i32 },
            timestamp: writer.timestamp_ms + i as i64,
            key: Some(Bytes::from(format!("k{i}"))),
            value: Some(Bytes::from(v.to_string())),
            headers: IndexMap::new(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(&mut buf, records.iter(), &RecordEncodeOptions { version: 2, compression: Compression::None }).unwrap();
    buf.freeze()
}

pub fn batch(values: &[&str]) -> Bytes {
    batch_from(values, PLAIN)
}

/// The process's peak resident set size so far (VmHWM), in bytes.
pub fn peak_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM in /proc/self/status");
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

pub async fn create_topic(client: &mut Client, name: &str, partitions: i32, configs: &[(&str, &str)]) -> i16 {
    let topic = CreatableTopic::default()
        .with_name(TopicName(StrBytes::from_string(name.into())))
        .with_num_partitions(partitions)
        .with_replication_factor(1)
        .with_configs(
            configs
                .iter()
                .map(|(k, v)| {
                    CreatableTopicConfig::default()
                        .with_name(StrBytes::from_string(k.to_string()))
                        .with_value(Some(StrBytes::from_string(v.to_string())))
                })
                .collect(),
        );
    let response: CreateTopicsResponse =
        client.call(ApiKey::CreateTopics, 5, &CreateTopicsRequest::default().with_topics(vec![topic]).with_timeout_ms(5000)).await;
    response.topics[0].error_code
}

pub async fn produce(client: &mut Client, topic: &str, partition: i32, records: Bytes, acks: i16) -> (i16, i64) {
    let request = ProduceRequest::default().with_acks(acks).with_timeout_ms(5000).with_topic_data(vec![
        TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_string(topic.into())))
            .with_partition_data(vec![PartitionProduceData::default().with_index(partition).with_records(Some(records))]),
    ]);
    let response: ProduceResponse = client.call(ApiKey::Produce, 9, &request).await;
    let p = &response.responses[0].partition_responses[0];
    (p.error_code, p.base_offset)
}

pub async fn fetch(client: &mut Client, topic: &str, partition: i32, offset: i64, max_wait_ms: i32) -> (i16, i64, Bytes) {
    let request = FetchRequest::default().with_max_wait_ms(max_wait_ms).with_min_bytes(1).with_max_bytes(1 << 20).with_topics(vec![
        FetchTopic::default().with_topic(TopicName(StrBytes::from_string(topic.into()))).with_partitions(vec![
            FetchPartition::default().with_partition(partition).with_fetch_offset(offset).with_partition_max_bytes(1 << 20),
        ]),
    ]);
    let response: FetchResponse = client.call(ApiKey::Fetch, 12, &request).await;
    let p = &response.responses[0].partitions[0];
    (p.error_code, p.high_watermark, p.records.clone().unwrap_or_default())
}

pub fn values(records: Bytes) -> Vec<(i64, String)> {
    let mut buf = records;
    RecordBatchDecoder::decode_all(&mut buf)
        .unwrap()
        .into_iter()
        .flat_map(|set| set.records)
        .map(|r| (r.offset, String::from_utf8(r.value.unwrap().to_vec()).unwrap()))
        .collect()
}
