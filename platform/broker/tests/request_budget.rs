//! Issue 10, item 3: the bytes of requests being read are bounded across connections. Before, each
//! connection could hold a partly received frame of up to `socket.request.max.bytes`, so 30
//! connections that each sent 4 MiB of a 5 MiB frame and stopped held 120 MiB. Now they hold at most
//! twice `queued.max.request.bytes` (plus a read step each) until their request deadline, when they
//! are closed and other clients are served. Alone in its test binary, so the process's peak RSS is
//! this scenario's.

mod common;

use std::time::Duration;

use common::*;
use kafka_protocol::messages::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const BUDGET: usize = 8 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partly_sent_requests_hold_at_most_the_request_budget() {
    let budget = BUDGET.to_string();
    let broker = start(&[("queued.max.request.bytes", &budget), ("socket.request.read.timeout.ms", "4000")]).await;
    let baseline = peak_rss_bytes();
    let mut stalled = Vec::new();
    for _ in 0..30 {
        let mut stream = TcpStream::connect(broker.kafka).await.unwrap();
        // Sent from its own task: once the budget is spent the broker stops reading, and the write blocks.
        stalled.push(tokio::spawn(async move {
            static CHUNK: [u8; 64 * 1024] = [0xAA; 64 * 1024];
            if stream.write_all(&(5u32 << 20).to_be_bytes()).await.is_ok() {
                for _ in 0..64 {
                    if stream.write_all(&CHUNK).await.is_err() {
                        break;
                    }
                }
            }
            stream
        }));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let broker_grew = peak_rss_bytes().saturating_sub(baseline);
    assert!(
        broker_grew < 56 << 20,
        "30 stalled 4 MiB frames grew the broker by about {} MiB (budget {} MiB: twice that, plus one read step per connection)",
        broker_grew >> 20,
        BUDGET >> 20
    );
    // Other clients wait rather than fail: the stalled frames are closed at their request deadline
    // (4 s here), which releases the budget, and the new request is then served.
    let mut client = Client::connect(broker.kafka).await;
    let response: ApiVersionsResponse = client.call(ApiKey::ApiVersions, 0, &ApiVersionsRequest::default()).await;
    assert_eq!(response.error_code, 0);
    for task in stalled {
        task.abort();
    }
    broker.stop().await;
}
