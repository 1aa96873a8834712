//! Issue 10, item 18: connection slots cannot be held forever. Before, the idle timeout applied per
//! read, so a peer dripping one byte at a time kept its slot (and a frame buffer) for as long as it
//! liked, and one address could take every slot.

use std::time::{Duration, Instant};

use crate::common::*;
use kafka_protocol::messages::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn answers(client: &mut Client) -> bool {
    let response: ApiVersionsResponse = client.call(ApiKey::ApiVersions, 0, &ApiVersionsRequest::default()).await;
    response.error_code == 0
}

/// True when the broker closes the connection within `within`.
async fn closed_by_broker(stream: &mut TcpStream, within: Duration) -> bool {
    let mut byte = [0u8; 1];
    matches!(tokio::time::timeout(within, stream.read(&mut byte)).await, Ok(Ok(0)) | Ok(Err(_)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_drips_in_is_cut_off_at_the_request_deadline() {
    let broker = start(&[("socket.request.read.timeout.ms", "1000")]).await;
    let mut dripping = TcpStream::connect(broker.kafka).await.unwrap();
    // A 100-byte frame, one byte every 200 ms: each read is quick, the request never completes in time.
    let started = Instant::now();
    let mut frame = vec![0u8, 0, 0, 100];
    frame.extend(std::iter::repeat_n(0u8, 100));
    let mut cut_off = false;
    for byte in frame {
        if dripping.write_all(&[byte]).await.is_err() {
            cut_off = true;
            break;
        }
        if closed_by_broker(&mut dripping, Duration::from_millis(200)).await {
            cut_off = true;
            break;
        }
    }
    assert!(cut_off, "a request dripping in for {:?} was never cut off", started.elapsed());
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(5), "cut off after {elapsed:?}");
    // Whole requests are unaffected.
    let mut client = Client::connect(broker.kafka).await;
    assert!(answers(&mut client).await);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_take_every_connection_slot() {
    let broker = start(&[("max.connections.per.ip", "3")]).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut client = Client::connect(broker.kafka).await;
        assert!(answers(&mut client).await);
        held.push(client);
    }
    let mut fourth = TcpStream::connect(broker.kafka).await.unwrap();
    assert!(closed_by_broker(&mut fourth, Duration::from_secs(5)).await, "a fourth connection from 127.0.0.1 was kept");
    // The three still work, and a slot given back can be taken again.
    for client in held.iter_mut() {
        assert!(answers(client).await);
    }
    drop(held.pop());
    let mut again = None;
    for _ in 0..50 {
        // The slot is given back when the broker notices the close; retry until it has.
        let mut stream = TcpStream::connect(broker.kafka).await.unwrap();
        if !closed_by_broker(&mut stream, Duration::from_millis(200)).await {
            again = Some(Client::from_stream(stream));
            break;
        }
    }
    let mut again = again.expect("the slot was never given back");
    assert!(answers(&mut again).await);
    broker.stop().await;
}
