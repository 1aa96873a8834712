//! Wire-level scenarios against a real broker on ephemeral ports: requests are encoded with the same
//! codec crate clients use, sent over TCP, and the answers checked field by field. The black-box
//! suite in `tests/` covers real client libraries; these pin protocol details quickly.

use std::time::Duration;

use crate::common::*;
use bytes::Bytes;
use kafka_protocol::messages::*;

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

/// Issue 10, item 17: idempotent-producer state used to expire by the timestamps the client wrote
/// in its batches. A producer whose records carry old timestamps (a replay, a backfill, a skewed
/// clock) was forgotten at the next check, and the retry of a batch whose acknowledgement it lost
/// was then written twice. Expiry now runs on broker time, as Kafka's `producer.id.expiration.ms`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_producer_state_expires_by_broker_time_not_record_timestamps() {
    let broker = start(&[("log.retention.check.interval.ms", "100")]).await;
    let mut client = Client::connect(broker.kafka).await;
    assert_eq!(create_topic(&mut client, "idem", 1, &[]).await, 0);
    let init: InitProducerIdResponse =
        client.call(ApiKey::InitProducerId, 4, &InitProducerIdRequest::default().with_transaction_timeout_ms(60_000)).await;
    assert_eq!(init.error_code, 0);
    let two_days_ago = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64 - 2 * 86_400_000;
    let writer = Writer { timestamp_ms: two_days_ago, ..Writer::idempotent(init.producer_id.0, init.producer_epoch, 0) };
    assert_eq!(produce(&mut client, "idem", 0, batch_from(&["once"], writer), -1).await, (0, 0));
    // Several expiry checks run meanwhile.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(produce(&mut client, "idem", 0, batch_from(&["once"], writer), -1).await, (0, 0), "the retry is recognised, not appended");
    let (_, high_watermark, records) = fetch(&mut client, "idem", 0, 0, 0).await;
    assert_eq!((high_watermark, values(records).len()), (1, 1));
    broker.stop().await;
}
