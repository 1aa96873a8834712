//! Issue 10, item 1: Fetch replies that their peers never read must not pile up in the broker. Before
//! the budgets, each connection read up to `queued.max.requests` Fetches ahead and built every reply:
//! one connection pipelining 40 Fetches of 16 MiB pinned 640 MiB, and twenty connections with one
//! unread Fetch each pinned 320 MiB. Since issue 11 a reply's records are file ranges sent with
//! `sendfile`, never built in memory, and a connection whose peer does not read stops being read
//! (`socket.reply.buffer.max.bytes`). Alone in its test binary, so the process's peak RSS is this
//! scenario's.

mod common;

use std::time::Duration;

use bytes::BytesMut;
use common::*;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use tokio::net::{TcpSocket, TcpStream};

const TOPIC: &str = "big";
const FETCH_BYTES: i32 = 16 << 20;

/// A Fetch of up to 16 MiB of the topic's one partition, from its start, answered at once.
fn whole_topic_fetch() -> FetchRequest {
    FetchRequest::default().with_max_wait_ms(0).with_min_bytes(1).with_max_bytes(FETCH_BYTES).with_topics(vec![
        FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_static_str(TOPIC)))
            .with_partitions(vec![FetchPartition::default().with_partition(0).with_fetch_offset(0).with_partition_max_bytes(FETCH_BYTES)]),
    ])
}

/// The same Fetch as a framed request, for connections that pipeline it without reading.
fn fetch_request(correlation_id: i32) -> BytesMut {
    let request = whole_topic_fetch();
    let header = RequestHeader::default()
        .with_request_api_key(ApiKey::Fetch as i16)
        .with_request_api_version(12)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("never-reads")));
    let mut out = BytesMut::new();
    sluice_protocol::encode_request(&header, ApiKey::Fetch, &request, &mut out).unwrap();
    out
}

/// A connection whose peer reads nothing: a small receive buffer, so replies back up into the broker.
async fn never_reading(addr: std::net::SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(addr).await.unwrap()
}

async fn fetched_bytes(client: &mut Client) -> usize {
    let response: FetchResponse = client.call(ApiKey::Fetch, 12, &whole_topic_fetch()).await;
    let partition = &response.responses[0].partitions[0];
    assert_eq!(partition.error_code, 0);
    partition.records.as_ref().map_or(0, |r| r.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_that_are_never_read_cost_a_bounded_amount_of_memory() {
    let broker = start(&[]).await;
    let mut client = Client::connect(broker.kafka).await;
    assert_eq!(create_topic(&mut client, TOPIC, 1, &[]).await, 0);
    // 16 MiB in batches of ~1 MiB.
    let value = "v".repeat(100 * 1024);
    let values: Vec<&str> = (0..10).map(|_| value.as_str()).collect();
    for _ in 0..16 {
        assert_eq!(produce(&mut client, TOPIC, 0, batch(&values), -1).await.0, 0);
    }
    // A Fetch gets what it asks for, in whole batches.
    let unpressured = fetched_bytes(&mut client).await;
    assert!(unpressured > FETCH_BYTES as usize - (2 << 20) && unpressured <= FETCH_BYTES as usize, "{unpressured} bytes");
    let baseline = peak_rss_bytes();

    // One connection pipelines 40 Fetches of 16 MiB and reads nothing.
    let mut pipelining = never_reading(broker.kafka).await;
    let mut requests = BytesMut::new();
    for correlation_id in 0..40 {
        requests.extend_from_slice(&fetch_request(correlation_id));
    }
    let sender = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        // Blocks once the broker stops reading this connection; that is the point.
        let _ = pipelining.write_all(&requests).await;
        pipelining
    });
    // Twenty connections with one unread Fetch each.
    let mut idle_readers = Vec::new();
    for correlation_id in 0..20 {
        let mut stream = never_reading(broker.kafka).await;
        tokio::io::AsyncWriteExt::write_all(&mut stream, &fetch_request(correlation_id)).await.unwrap();
        idle_readers.push(stream);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    // A reader that reads still gets all it asks for, and the broker still takes writes.
    assert_eq!(fetched_bytes(&mut client).await, unpressured, "readers that read must not be starved");
    assert_eq!(produce(&mut client, TOPIC, 0, batch(&["still-writable"]), -1).await.0, 0);

    // 61 replies of 16 MiB are queued; none is in memory.
    let grown = peak_rss_bytes().saturating_sub(baseline);
    assert!(grown < 24 << 20, "unread Fetch replies raised peak RSS by {} MiB; their records should be file ranges", grown >> 20);

    drop(idle_readers);
    sender.abort();
    drop(sender);
    // The whole topic again, with the batch written under attack.
    assert!(fetched_bytes(&mut client).await > unpressured);
    broker.stop().await;
}
