//! Wire-level scenarios against a real broker on ephemeral ports: requests are encoded with the same
//! codec crate clients use, sent over TCP, and the answers checked field by field. The black-box
//! suite in `tests/` covers real client libraries; these pin protocol details quickly.

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

struct TestBroker {
    kafka: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), String>>,
    _dir: tempfile::TempDir,
}

async fn start(settings: &[(&str, &str)]) -> TestBroker {
    let dir = tempfile::tempdir().unwrap();
    let config = BrokerConfig::from_settings(settings.iter().copied()).unwrap();
    let options =
        ServerOptions { data_dir: dir.path().to_path_buf(), listen: "127.0.0.1:0".into(), admin_listen: "127.0.0.1:0".into(), config };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (bound_tx, bound_rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(sluice_broker::run(
        options,
        async move {
            let _ = stop_rx.await;
        },
        move |bound| {
            let _ = bound_tx.send(bound.kafka);
        },
    ));
    let kafka = tokio::time::timeout(Duration::from_secs(10), bound_rx).await.unwrap().unwrap();
    TestBroker { kafka, stop: Some(stop_tx), task, _dir: dir }
}

impl TestBroker {
    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(10), self.task).await.unwrap().unwrap().unwrap();
    }
}

struct Client {
    stream: TcpStream,
    correlation_id: i32,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        Client { stream: TcpStream::connect(addr).await.unwrap(), correlation_id: 0 }
    }

    async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    async fn read_frame(&mut self) -> Option<Bytes> {
        let mut len = [0u8; 4];
        match tokio::time::timeout(Duration::from_secs(10), self.stream.read_exact(&mut len)).await.expect("response in time") {
            Ok(_) => {}
            Err(_) => return None,
        }
        let mut frame = vec![0u8; i32::from_be_bytes(len) as usize];
        self.stream.read_exact(&mut frame).await.ok()?;
        Some(Bytes::from(frame))
    }

    async fn call<Req: Encodable, Resp: Decodable>(&mut self, api_key: ApiKey, version: i16, request: &Req) -> Resp {
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

fn batch(values: &[&str]) -> Bytes {
    let records: Vec<Record> = values
        .iter()
        .enumerate()
        .map(|(i, v)| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: -1,
            timestamp: 1_700_000_000_000 + i as i64,
            key: Some(Bytes::from(format!("k{i}"))),
            value: Some(Bytes::from(v.to_string())),
            headers: IndexMap::new(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(&mut buf, records.iter(), &RecordEncodeOptions { version: 2, compression: Compression::None }).unwrap();
    buf.freeze()
}

async fn create_topic(client: &mut Client, name: &str, partitions: i32, configs: &[(&str, &str)]) -> i16 {
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

async fn produce(client: &mut Client, topic: &str, partition: i32, records: Bytes, acks: i16) -> (i16, i64) {
    let request = ProduceRequest::default().with_acks(acks).with_timeout_ms(5000).with_topic_data(vec![
        TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_string(topic.into())))
            .with_partition_data(vec![PartitionProduceData::default().with_index(partition).with_records(Some(records))]),
    ]);
    let response: ProduceResponse = client.call(ApiKey::Produce, 9, &request).await;
    let p = &response.responses[0].partition_responses[0];
    (p.error_code, p.base_offset)
}

async fn fetch(client: &mut Client, topic: &str, partition: i32, offset: i64, max_wait_ms: i32) -> (i16, i64, Bytes) {
    let request = FetchRequest::default().with_max_wait_ms(max_wait_ms).with_min_bytes(1).with_max_bytes(1 << 20).with_topics(vec![
        FetchTopic::default().with_topic(TopicName(StrBytes::from_string(topic.into()))).with_partitions(vec![
            FetchPartition::default().with_partition(partition).with_fetch_offset(offset).with_partition_max_bytes(1 << 20),
        ]),
    ]);
    let response: FetchResponse = client.call(ApiKey::Fetch, 12, &request).await;
    let p = &response.responses[0].partitions[0];
    (p.error_code, p.high_watermark, p.records.clone().unwrap_or_default())
}

fn values(records: Bytes) -> Vec<(i64, String)> {
    let mut buf = records;
    RecordBatchDecoder::decode_all(&mut buf)
        .unwrap()
        .into_iter()
        .flat_map(|set| set.records)
        .map(|r| (r.offset, String::from_utf8(r.value.unwrap().to_vec()).unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_versions_advertises_exactly_the_supported_table() {
    let broker = start(&[]).await;
    let mut client = Client::connect(broker.kafka).await;
    let response: ApiVersionsResponse = client.call(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default()).await;
    assert_eq!(response.error_code, 0);
    assert_eq!(response.api_keys.len(), sluice_protocol::SUPPORTED_APIS.len());
    for (key, min, max) in sluice_protocol::SUPPORTED_APIS {
        let entry = response.api_keys.iter().find(|k| k.api_key == *key as i16).expect("advertised");
        assert_eq!((entry.min_version, entry.max_version), (*min, *max), "{key:?}");
    }
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_then_fetch_returns_the_stored_bytes_with_assigned_offsets() {
    let broker = start(&[]).await;
    let mut client = Client::connect(broker.kafka).await;
    assert_eq!(create_topic(&mut client, "wire", 2, &[("retention.ms", "3600000")]).await, 0);
    assert_eq!(create_topic(&mut client, "wire", 2, &[]).await, kafka_protocol::ResponseError::TopicAlreadyExists.code());
    assert_eq!(produce(&mut client, "wire", 1, batch(&["a", "b", "c"]), -1).await, (0, 0));
    assert_eq!(produce(&mut client, "wire", 1, batch(&["d"]), 1).await, (0, 3));
    let (error, high_watermark, records) = fetch(&mut client, "wire", 1, 0, 0).await;
    assert_eq!((error, high_watermark), (0, 4));
    assert_eq!(values(records), vec![(0, "a".into()), (1, "b".into()), (2, "c".into()), (3, "d".into())]);
    // A fetch from the middle of a batch returns the whole batch; clients skip the earlier records.
    let (_, _, records) = fetch(&mut client, "wire", 1, 3, 0).await;
    assert_eq!(values(records), vec![(3, "d".into())]);
    let (error, _, _) = fetch(&mut client, "wire", 1, 99, 0).await;
    assert_eq!(error, kafka_protocol::ResponseError::OffsetOutOfRange.code());
    let (error, _) = produce(&mut client, "missing-topic", 0, batch(&["x"]), 1).await;
    assert_eq!(error, kafka_protocol::ResponseError::UnknownTopicOrPartition.code());
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_batch_is_refused_and_the_connection_stays_usable() {
    let broker = start(&[]).await;
    let mut client = Client::connect(broker.kafka).await;
    assert_eq!(create_topic(&mut client, "crc", 1, &[]).await, 0);
    let mut bad = batch(&["payload"]).to_vec();
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    let (error, _) = produce(&mut client, "crc", 0, Bytes::from(bad), 1).await;
    assert_eq!(error, kafka_protocol::ResponseError::CorruptMessage.code());
    assert_eq!(produce(&mut client, "crc", 0, batch(&["good"]), 1).await, (0, 0));
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_fetch_wakes_when_data_arrives() {
    let broker = start(&[]).await;
    let mut admin = Client::connect(broker.kafka).await;
    assert_eq!(create_topic(&mut admin, "poll", 1, &[]).await, 0);
    let addr = broker.kafka;
    let waiter = tokio::spawn(async move {
        let mut consumer = Client::connect(addr).await;
        let started = std::time::Instant::now();
        let (_, _, records) = fetch(&mut consumer, "poll", 0, 0, 5000).await;
        (started.elapsed(), values(records))
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(produce(&mut admin, "poll", 0, batch(&["wake"]), 1).await, (0, 0));
    let (elapsed, got) = waiter.await.unwrap();
    assert_eq!(got, vec![(0, "wake".to_string())]);
    assert!(elapsed < Duration::from_secs(4), "fetch waited {elapsed:?} instead of waking on the produce");
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsync_before_ack_acknowledges_and_serves_every_write() {
    let broker = start(&[("log.flush.interval.messages", "1")]).await;
    let mut client = Client::connect(broker.kafka).await;
    assert_eq!(create_topic(&mut client, "durable", 1, &[]).await, 0);
    for i in 0..20 {
        assert_eq!(produce(&mut client, "durable", 0, batch(&["x"]), -1).await, (0, i));
    }
    let (_, high_watermark, records) = fetch(&mut client, "durable", 0, 0, 0).await;
    assert_eq!(high_watermark, 20);
    assert_eq!(values(records).len(), 20);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_frames_close_only_their_connection() {
    let broker = start(&[]).await;
    // A negative length, an absurd length, a huge array count, and an unknown api key.
    let mut huge_array = Vec::new();
    huge_array.extend_from_slice(&(ApiKey::Metadata as i16).to_be_bytes());
    huge_array.extend_from_slice(&1i16.to_be_bytes());
    huge_array.extend_from_slice(&1i32.to_be_bytes());
    huge_array.extend_from_slice(&(-1i16).to_be_bytes());
    huge_array.extend_from_slice(&i32::MAX.to_be_bytes());
    let mut framed = (huge_array.len() as i32).to_be_bytes().to_vec();
    framed.extend_from_slice(&huge_array);
    let unknown_key = [0, 0, 0, 8, 0x27, 0x0f, 0, 0, 0, 0, 0, 1];
    for hostile in [(-1i32).to_be_bytes().to_vec(), i32::MAX.to_be_bytes().to_vec(), framed, unknown_key.to_vec()] {
        let mut client = Client::connect(broker.kafka).await;
        client.send_raw(&hostile).await;
        assert!(client.read_frame().await.is_none(), "the broker should close the connection");
    }
    // An ApiVersions at a version from the future gets v0 with UNSUPPORTED_VERSION.
    let mut client = Client::connect(broker.kafka).await;
    client.send_raw(&[0, 0, 0, 10, 0, 18, 0, 99, 0, 0, 0, 7, 0xff, 0xff]).await;
    let frame = client.read_frame().await.expect("an answer");
    let (correlation_id, response) = sluice_protocol::decode_response::<ApiVersionsResponse>(ApiKey::ApiVersions, 0, frame).unwrap();
    assert_eq!(correlation_id, 7);
    assert_eq!(response.error_code, kafka_protocol::ResponseError::UnsupportedVersion.code());
    // The broker is still fine.
    let mut client = Client::connect(broker.kafka).await;
    let response: ApiVersionsResponse = client.call(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default()).await;
    assert_eq!(response.error_code, 0);
    broker.stop().await;
}
