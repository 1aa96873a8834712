//! An in-memory, single-node Kafka-protocol broker for end-to-end tests of the load generator: just
//! enough ApiVersions, Metadata, CreateTopics, Produce and Fetch to drive the real client code over real
//! sockets (pipelining, acks=0 barriers, compressed batches, fetches cut off mid-batch).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, anyhow, bail};
use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::metadata_response::{MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, BrokerId, CreateTopicsRequest, CreateTopicsResponse, FetchRequest, FetchResponse, MetadataRequest,
    MetadataResponse, ProduceRequest, ProduceResponse, RequestHeader, ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use sluice_client::wire::read_frame;

const SUPPORTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 9),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::CreateTopics, 2, 7),
];

#[derive(Default)]
struct Log {
    /// (base offset, next offset, batch bytes with the base offset assigned)
    batches: Vec<(i64, i64, Bytes)>,
    end: i64,
    records: u64,
}

type Topics = Arc<Mutex<HashMap<String, Vec<Log>>>>;

pub(super) struct MockBroker {
    pub(super) addr: String,
    topics: Topics,
}

impl MockBroker {
    pub(super) async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr").to_string();
        let topics = Topics::default();
        let shared = topics.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let topics = shared.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve(stream, topics).await {
                        eprintln!("mock broker: {e:#}");
                    }
                });
            }
        });
        Self { addr, topics }
    }

    /// Records stored in `topic` across partitions.
    pub(super) fn records(&self, topic: &str) -> u64 {
        let topics = self.topics.lock().expect("lock");
        topics.get(topic).map_or(0, |parts| parts.iter().map(|log| log.records).sum())
    }
}

fn be_i32(bytes: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

fn encode<R: Encodable>(body: &R, version: i16) -> Result<Bytes> {
    let mut buf = BytesMut::new();
    body.encode(&mut buf, version)?;
    Ok(buf.freeze())
}

async fn serve(stream: TcpStream, topics: Topics) -> Result<()> {
    let (read_half, mut writer) = stream.into_split();
    let mut reader = BufReader::new(read_half);
    // A closed connection ends the loop; that is how every client goes away.
    while let Ok(mut frame) = read_frame(&mut reader, "client").await {
        let key = frame.get(..4).context("short request")?;
        let api_key = ApiKey::try_from(i16::from_be_bytes([key[0], key[1]])).map_err(|()| anyhow!("api key"))?;
        let version = i16::from_be_bytes([key[2], key[3]]);
        let header = RequestHeader::decode(&mut frame, api_key.request_header_version(version))?;
        let body = match api_key {
            ApiKey::ApiVersions => Some(encode(
                &ApiVersionsResponse::default().with_api_keys(
                    SUPPORTED
                        .iter()
                        .map(|&(k, min, max)| ApiVersion::default().with_api_key(k as i16).with_min_version(min).with_max_version(max))
                        .collect(),
                ),
                version,
            )?),
            ApiKey::Metadata => Some(metadata(&topics, &MetadataRequest::decode(&mut frame, version)?, version)?),
            ApiKey::CreateTopics => Some(create(&topics, &CreateTopicsRequest::decode(&mut frame, version)?, version)?),
            ApiKey::Produce => produce(&topics, ProduceRequest::decode(&mut frame, version)?, version)?,
            ApiKey::Fetch => Some(fetch(&topics, &FetchRequest::decode(&mut frame, version)?, version)?),
            other => bail!("mock broker does not implement {other:?}"),
        };
        if let Some(body) = body {
            let mut out = BytesMut::new();
            out.put_u32(0);
            ResponseHeader::default()
                .with_correlation_id(header.correlation_id)
                .encode(&mut out, api_key.response_header_version(version))?;
            out.extend_from_slice(&body);
            let len = u32::try_from(out.len() - 4)?;
            out[..4].copy_from_slice(&len.to_be_bytes());
            writer.write_all(&out).await?;
        }
    }
    Ok(())
}

fn metadata(topics: &Topics, request: &MetadataRequest, version: i16) -> Result<Bytes> {
    let topics = topics.lock().map_err(|_| anyhow!("poisoned"))?;
    let entries = request
        .topics
        .iter()
        .flatten()
        .filter_map(|t| t.name.clone())
        .map(|name| {
            let entry = MetadataResponseTopic::default().with_name(Some(name.clone()));
            match topics.get(name.as_str()) {
                None => entry.with_error_code(3),
                Some(parts) => entry.with_partitions(
                    (0..parts.len())
                        .map(|p| MetadataResponsePartition::default().with_partition_index(p as i32).with_leader_id(BrokerId(0)))
                        .collect(),
                ),
            }
        })
        .collect();
    // Advertise a different host than the test connects to: a single-broker cluster must be reached
    // through the bootstrap address.
    let broker = MetadataResponseBroker::default()
        .with_node_id(BrokerId(0))
        .with_host(StrBytes::from_static_str("advertised.invalid"))
        .with_port(9092);
    encode(&MetadataResponse::default().with_brokers(vec![broker]).with_topics(entries), version)
}

fn create(topics: &Topics, request: &CreateTopicsRequest, version: i16) -> Result<Bytes> {
    let mut topics = topics.lock().map_err(|_| anyhow!("poisoned"))?;
    let results = request
        .topics
        .iter()
        .map(|t| {
            let partitions = usize::try_from(t.num_partitions).unwrap_or(1);
            topics.entry(t.name.as_str().to_string()).or_insert_with(|| (0..partitions).map(|_| Log::default()).collect());
            CreatableTopicResult::default().with_name(t.name.clone())
        })
        .collect();
    encode(&CreateTopicsResponse::default().with_topics(results), version)
}

fn produce(topics: &Topics, request: ProduceRequest, version: i16) -> Result<Option<Bytes>> {
    let mut topics = topics.lock().map_err(|_| anyhow!("poisoned"))?;
    let mut responses = Vec::new();
    for topic in request.topic_data {
        let mut partitions = Vec::new();
        for data in topic.partition_data {
            let log = topics.get_mut(topic.name.as_str()).and_then(|parts| parts.get_mut(data.index as usize));
            let Some(log) = log else {
                partitions.push(PartitionProduceResponse::default().with_index(data.index).with_error_code(3));
                continue;
            };
            let base = log.end;
            let mut rest = data.records.unwrap_or_default();
            while rest.len() >= 61 {
                let len = usize::try_from(be_i32(&rest, 8))? + 12;
                let mut batch = BytesMut::from(&rest[..len]);
                // The base offset is outside the CRC, so assigning it keeps the batch valid.
                batch[..8].copy_from_slice(&log.end.to_be_bytes());
                let next = log.end + i64::from(be_i32(&batch, 23)) + 1;
                log.records += u64::try_from(be_i32(&batch, 57))?;
                log.batches.push((log.end, next, batch.freeze()));
                log.end = next;
                rest = rest.slice(len..);
            }
            partitions.push(PartitionProduceResponse::default().with_index(data.index).with_base_offset(base));
        }
        responses.push(TopicProduceResponse::default().with_name(topic.name).with_partition_responses(partitions));
    }
    if request.acks == 0 {
        return Ok(None);
    }
    Ok(Some(encode(&ProduceResponse::default().with_responses(responses), version)?))
}

fn fetch(topics: &Topics, request: &FetchRequest, version: i16) -> Result<Bytes> {
    let topics = topics.lock().map_err(|_| anyhow!("poisoned"))?;
    let mut responses = Vec::new();
    for topic in &request.topics {
        let mut partitions = Vec::new();
        for wanted in &topic.partitions {
            let Some(log) = topics.get(topic.topic.as_str()).and_then(|parts| parts.get(wanted.partition as usize)) else {
                partitions.push(PartitionData::default().with_partition_index(wanted.partition).with_error_code(3));
                continue;
            };
            if wanted.fetch_offset > log.end {
                partitions.push(PartitionData::default().with_partition_index(wanted.partition).with_error_code(1));
                continue;
            }
            // Like Kafka's file slices: whole batches from the one holding the fetch offset, the last
            // one possibly cut off at the size limit (but always at least one whole batch).
            let limit = usize::try_from(wanted.partition_max_bytes).unwrap_or(0);
            let mut out = BytesMut::new();
            for (_, _, batch) in log.batches.iter().filter(|(_, next, _)| *next > wanted.fetch_offset) {
                if out.is_empty() || out.len() + batch.len() <= limit {
                    out.extend_from_slice(batch);
                } else {
                    let room = limit.saturating_sub(out.len());
                    out.extend_from_slice(&batch[..room.min(batch.len())]);
                    break;
                }
            }
            partitions.push(
                PartitionData::default()
                    .with_partition_index(wanted.partition)
                    .with_high_watermark(log.end)
                    .with_last_stable_offset(log.end)
                    .with_log_start_offset(0)
                    .with_records(Some(out.freeze())),
            );
        }
        responses.push(FetchableTopicResponse::default().with_topic(topic.topic.clone()).with_partitions(partitions));
    }
    encode(&FetchResponse::default().with_responses(responses), version)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::super::{BenchCmd, ConsumeArgs, ProduceArgs, consume, produce};
    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: BenchCmd,
    }

    fn produce_args(broker: &MockBroker, extra: &[&str]) -> ProduceArgs {
        let mut argv = vec!["bench", "produce", "--brokers", &broker.addr];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv).expect("produce args").cmd {
            BenchCmd::Produce(args) => args,
            BenchCmd::Consume(_) => unreachable!("parsed produce"),
        }
    }

    fn consume_args(broker: &MockBroker, extra: &[&str]) -> ConsumeArgs {
        let mut argv = vec!["bench", "consume", "--brokers", &broker.addr];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv).expect("consume args").cmd {
            BenchCmd::Consume(args) => args,
            BenchCmd::Produce(_) => unreachable!("parsed consume"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn produce_then_consume_end_to_end() {
        let broker = MockBroker::start().await;

        // Pipelined, acks=1, several batches per request, a record count that is not a whole number
        // of requests.
        let args = produce_args(
            &broker,
            &[
                "--topic",
                "t",
                "--partitions",
                "3",
                "--records",
                "10007",
                "--record-size",
                "50",
                "--batch-bytes",
                "1024",
                "--batches-per-request",
                "2",
                "--in-flight",
                "4",
            ],
        );
        let summary = produce::measure(&args).await.expect("produce");
        assert_eq!(summary.tally.records, 10_007);
        assert_eq!(summary.tally.payload_bytes, 10_007 * 50);
        assert!(summary.tally.errors.is_empty());
        let latencies = summary.tally.latency_us.as_ref().map(|h| h.len());
        assert_eq!(latencies, Some(summary.tally.requests));
        assert_eq!(broker.records("t"), 10_007);
        let table = summary.to_table();
        assert!(table.contains("p99.9") && table.contains("10,007"), "{table}");

        // acks=0 over two connections with compression: the trailing barrier means everything is
        // stored by the time the run returns.
        let args =
            produce_args(&broker, &["--topic", "t", "--records", "5000", "--acks", "0", "--connections", "2", "--compression", "zstd"]);
        let summary = produce::measure(&args).await.expect("produce acks=0");
        assert_eq!(summary.tally.records, 5000);
        assert!(summary.tally.latency_us.is_none());
        assert_eq!(broker.records("t"), 15_007);

        // Read everything back to the high watermark.
        let summary = consume::measure(&consume_args(&broker, &["--topic", "t", "--in-flight", "2"])).await.expect("consume");
        assert_eq!(summary.tally.records, 15_007);
        assert!(summary.tally.errors.is_empty());

        // Small partition limits make the mock cut batches off mid-way; a record target stops early.
        let args = consume_args(&broker, &["--topic", "t", "--records", "12000", "--partition-max-bytes", "3000"]);
        let summary = consume::measure(&args).await.expect("consume with a target");
        assert!(summary.tally.records >= 12_000 && summary.tally.records <= 15_007);

        // A duration run on a caught-up topic keeps polling without errors until the deadline.
        let args = consume_args(&broker, &["--topic", "t", "--duration", "300ms"]);
        let summary = consume::measure(&args).await.expect("consume for a duration");
        assert_eq!(summary.tally.records, 15_007);
        assert!(summary.seconds >= 0.3);
    }

    #[tokio::test]
    async fn missing_topic_is_a_clear_error() {
        let broker = MockBroker::start().await;
        let error = produce::measure(&produce_args(&broker, &["--topic", "nope", "--records", "1"])).await.err().map(|e| e.to_string());
        assert!(error.is_some_and(|e| e.contains("does not exist") && e.contains("--partitions")));
    }
}
