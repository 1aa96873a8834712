//! `sluice bench produce`. One record batch is encoded up front and shared by every partition and
//! request: a v2 batch names no partition, its offsets are deltas from a base the broker assigns, and
//! without idempotence its sequence is -1, so the same bytes are valid everywhere. Each connection then
//! encodes its whole cycle of request bodies (its partitions in round-robin groups of
//! `--batches-per-request`), and per request only a header with a fresh correlation id is encoded. A
//! writer task pipelines requests under an in-flight semaphore; a reader task takes responses in order,
//! matches them to a FIFO of send times and records latencies.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ApiKey, ApiVersionsRequest, ProduceRequest, ProduceResponse, ResponseHeader, TopicName};
use kafka_protocol::protocol::{Decodable, StrBytes};
use kafka_protocol::records::{
    Compression, NO_PARTITION_LEADER_EPOCH, NO_PRODUCER_EPOCH, NO_PRODUCER_ID, Record, RecordBatchEncoder, RecordEncodeOptions,
    TimestampType,
};
use tokio::io::{AsyncRead, AsyncWrite, BufReader};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

use super::report::{Summary, describe_errors, group_digits};
use super::stats::{self, Goal, Meter, Tally};
use super::{Acks, DEFAULT_PRODUCE_RECORDS, ProduceArgs, arg_name};
use sluice_client::versions::PRODUCE_VERSIONS;
use sluice_client::wire;

/// Bytes of a v2 record batch header, before the first record.
const RECORD_BATCH_HEADER_BYTES: usize = 61;
/// The record batch format written (v2, the only one current brokers accept from new clients).
const RECORD_BATCH_MAGIC: i8 = 2;
/// Cap on records per batch, so a tiny `--record-size` with a huge `--batch-bytes` stays sane.
const MAX_RECORDS_PER_BATCH: usize = 100_000;
/// Produce request timeout the broker is asked to honour (Kafka's default `request.timeout.ms`).
const PRODUCE_TIMEOUT_MS: i32 = 30_000;
/// If this many batches on one connection fail before any succeeds, the run stops: the broker is
/// rejecting everything and more of the same measures nothing.
const ABORT_AFTER_FAILED_BATCHES: u64 = 100;
/// Cap on pre-encoded request bodies per run; past it, lower --batch-bytes or use fewer partitions.
const MAX_PREENCODED_BYTES: usize = 1024 * 1024 * 1024;
/// Read buffer for produce responses (small, many of them).
const READ_BUFFER_BYTES: usize = 64 * 1024;
/// ApiVersions v0 has an empty body, so it is the cheapest request to use as a barrier.
const BARRIER_API_VERSIONS_VERSION: i16 = 0;
/// Seed for the record value generator, fixed so runs are comparable.
const VALUE_SEED: u64 = 0x9E37_79B9_7F4A_7C15;

pub(super) async fn run(args: ProduceArgs) -> Result<()> {
    let summary = measure(&args).await?;
    summary.print(args.target.json);
    summary.fail_if_nothing_succeeded("produce request")
}

/// Sets up, runs the load and returns the summary without printing it.
pub(super) async fn measure(args: &ProduceArgs) -> Result<Summary> {
    let target = &args.target;
    let super::Setup { version, routes } =
        super::setup(&target.conn.resolve()?.brokers, &target.topic, args.partitions, ApiKey::Produce, PRODUCE_VERSIONS).await?;
    let assignment = super::assign(&routes, target.connections, true);

    let template = BatchTemplate::new(args.record_size as usize, args.batch_bytes as usize, args.compression.into())?;
    let plan = Arc::new(Plan {
        topic: TopicName(StrBytes::from_string(target.topic.clone())),
        acks: args.acks.wire_value(),
        version,
        record_size: u64::from(args.record_size),
        template,
    });

    // Everything expensive happens before the clock starts: encoding and connecting.
    let mut connections = Vec::with_capacity(assignment.len());
    let mut preencoded = 0;
    for (addr, partitions) in assignment {
        let groups = plan.groups(&partitions, args.batches_per_request as usize)?;
        preencoded += groups.iter().map(|g| g.body.len()).sum::<usize>();
        if preencoded > MAX_PREENCODED_BYTES {
            bail!("the pre-encoded requests would exceed {} MiB; lower --batch-bytes or --connections", MAX_PREENCODED_BYTES >> 20);
        }
        let stream = wire::connect(&addr).await?;
        connections.push((addr, stream, groups));
    }

    if args.rate.is_some() && args.acks == Acks::None {
        bail!("--rate measures latency, which acks=0 has none of; use --acks 1 or --acks all");
    }
    let settings = format!(
        "topic={} partitions={} connections={} in-flight={} acks={} compression={} record-size={} \
         records/batch={} bytes/batch={} batches/request={} rate={} produce=v{version}",
        target.topic,
        routes.len(),
        connections.len(),
        target.in_flight,
        arg_name(&args.acks),
        arg_name(&args.compression),
        args.record_size,
        plan.template.records_per_batch(),
        plan.template.full.len(),
        args.batches_per_request,
        args.rate.map_or_else(|| "max".to_string(), |rate| format!("{rate}/s")),
    );

    let meter = Arc::new(Meter::default());
    let started = Instant::now();
    let (budget, goal) = match (args.records, args.duration) {
        (_, Some(duration)) => (Budget::Until(started + duration), Goal::Duration(duration)),
        (records, None) => {
            let records = records.unwrap_or(DEFAULT_PRODUCE_RECORDS);
            (Budget::Records(AtomicU64::new(records)), Goal::Records(records))
        }
    };
    let budget = Arc::new(budget);
    let pacer = args.rate.map(|rate| Arc::new(Pacer::new(started, rate)));
    let mut tasks = JoinSet::new();
    for (addr, stream, groups) in connections {
        let sender = Sender { plan: plan.clone(), budget: budget.clone(), meter: meter.clone(), pacer: pacer.clone(), groups, addr };
        let (read_half, write_half) = stream.into_split();
        if args.acks == Acks::None {
            tasks.spawn(sender.fire_and_forget(read_half, write_half));
        } else {
            let permits = Arc::new(Semaphore::new(target.in_flight as usize));
            let (queue_tx, queue_rx) = mpsc::unbounded_channel();
            let receiver =
                Receiver { plan: plan.clone(), meter: meter.clone(), addr: sender.addr.clone(), permits: permits.clone(), queue: queue_rx };
            tasks.spawn(receiver.run(read_half));
            tasks.spawn(async move {
                let mut write_half = write_half;
                Ok(sender.send_all(&mut write_half, Some((permits, queue_tx))).await?.0)
            });
        }
    }
    let tally = stats::drive(tasks, &meter, goal, started, None, "").await?;
    let seconds = started.elapsed().as_secs_f64();

    let latency_note = "not measured: with acks=0 the broker sends no response";
    Ok(Summary { mode: "produce", settings, seconds, tally, latency_note })
}

/// How much is left to send: a record count shared by all connections, or a deadline.
enum Budget {
    Records(AtomicU64),
    Until(Instant),
}

impl Budget {
    /// Takes up to `want` records from the budget; 0 means stop.
    fn claim(&self, want: u64) -> u64 {
        match self {
            Budget::Records(left) => {
                let mut current = left.load(Ordering::Relaxed);
                loop {
                    let take = current.min(want);
                    if take == 0 {
                        return 0;
                    }
                    match left.compare_exchange_weak(current, current - take, Ordering::Relaxed, Ordering::Relaxed) {
                        Ok(_) => return take,
                        Err(actual) => current = actual,
                    }
                }
            }
            Budget::Until(deadline) => {
                if Instant::now() < *deadline {
                    want
                } else {
                    0
                }
            }
        }
    }
}

/// The send schedule of `--rate`: records are claimed in order by every connection, and a request is
/// due when the records before it would have been sent at the rate.
struct Pacer {
    started: Instant,
    nanos_per_record: f64,
    claimed: AtomicU64,
}

impl Pacer {
    fn new(started: Instant, records_per_second: u64) -> Self {
        Self { started, nanos_per_record: 1e9 / records_per_second as f64, claimed: AtomicU64::new(0) }
    }

    /// When a request of `records` records is due.
    fn due(&self, records: u64) -> Instant {
        let before = self.claimed.fetch_add(records, Ordering::Relaxed);
        self.started + std::time::Duration::from_nanos((before as f64 * self.nanos_per_record) as u64)
    }

    /// Waits for the turn of a request of `records` records, and returns the moment its latency
    /// counts from: when it was due if the sender was already late (held up waiting for an in-flight
    /// slot, or stalled itself: a stall must show in the percentiles, not thin out the load), else
    /// when the wait ended (the sleep's own lateness is the client's).
    async fn wait_turn(&self, records: u64) -> Instant {
        let due = self.due(records);
        if due <= Instant::now() {
            return due;
        }
        wait_until(due).await;
        Instant::now()
    }
}

/// How close to a deadline tokio's timer brings us before a thread's sleep takes over.
const COARSE_SLEEP_MARGIN: std::time::Duration = std::time::Duration::from_millis(2);

/// Sleeps until `due` with the operating system's sleep, not tokio's millisecond ticks. tokio's timer
/// wheel ticks every millisecond, so at 6,000 requests/s its wake-ups would release them in bursts
/// of six, each queueing behind the others: a load not at the rate asked for, and latency that is
/// the client's own. The coarse part of a long wait stays on tokio's timer (no thread held).
async fn wait_until(due: Instant) {
    let now = Instant::now();
    if due <= now {
        return;
    }
    if due - now > COARSE_SLEEP_MARGIN {
        tokio::time::sleep_until((due - COARSE_SLEEP_MARGIN).into()).await;
    }
    let precise = tokio::task::spawn_blocking(move || {
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
    });
    // The closure cannot panic; a runtime shutting down only ends the wait early.
    let _ = precise.await;
}

/// The records of one batch and their encoding.
struct BatchTemplate {
    records: Vec<Record>,
    compression: Compression,
    /// The full batch, encoded once and shared by every request.
    full: Bytes,
}

impl BatchTemplate {
    fn new(record_size: usize, batch_bytes: usize, compression: Compression) -> Result<Self> {
        let count = records_per_batch(record_size, batch_bytes);
        let timestamp = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let mut letters = Letters(VALUE_SEED);
        let records: Vec<Record> = (0..count)
            .map(|i| {
                let offset = i as i64;
                Record {
                    transactional: false,
                    control: false,
                    delete_horizon: false,
                    partition_leader_epoch: NO_PARTITION_LEADER_EPOCH,
                    producer_id: NO_PRODUCER_ID,
                    producer_epoch: NO_PRODUCER_EPOCH,
                    timestamp_type: TimestampType::Creation,
                    offset,
                    // The encoder starts a new batch whenever `offset - sequence` changes; keeping
                    // it at 1 yields one batch whose base sequence is -1 (no idempotence).
                    sequence: (offset - 1) as i32,
                    timestamp,
                    key: None,
                    value: Some(letters.take(record_size)),
                    headers: Default::default(),
                }
            })
            .collect();
        let full = encode_batch(&records, compression)?;
        Ok(Self { records, compression, full })
    }

    fn records_per_batch(&self) -> usize {
        self.records.len()
    }

    /// A batch of only the first `count` records, for the last request of a `--records` run.
    fn encode_first(&self, count: usize) -> Result<Bytes> {
        encode_batch(&self.records[..count.min(self.records.len())], self.compression)
    }
}

fn encode_batch(records: &[Record], compression: Compression) -> Result<Bytes> {
    let mut buf = BytesMut::new();
    let options = RecordEncodeOptions { version: RECORD_BATCH_MAGIC, compression };
    RecordBatchEncoder::encode(&mut buf, records, &options)
        .with_context(|| format!("encoding a record batch with {compression:?} compression"))?;
    Ok(buf.freeze())
}

/// Record values: uppercase letters from a xorshift generator, as Kafka's perf tool uses, so that
/// compression has realistic (not degenerate) work to do.
struct Letters(u64);

impl Letters {
    fn take(&mut self, len: usize) -> Bytes {
        let mut value = Vec::with_capacity(len);
        for _ in 0..len {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            value.push(b'A' + (self.0 % 26) as u8);
        }
        Bytes::from(value)
    }
}

/// How many records of `record_size` bytes fit in `batch_bytes` (at least one).
fn records_per_batch(record_size: usize, batch_bytes: usize) -> usize {
    let budget = batch_bytes.saturating_sub(RECORD_BATCH_HEADER_BYTES);
    let (mut used, mut count) = (0, 0);
    while count < MAX_RECORDS_PER_BATCH {
        let size = encoded_record_len(record_size, count);
        if used + size > budget {
            break;
        }
        used += size;
        count += 1;
    }
    count.max(1)
}

/// Encoded size of one record inside an uncompressed v2 batch: a varint length, then attributes,
/// timestamp delta (0 here), offset delta, null key, value length, value and an empty header count.
fn encoded_record_len(value_len: usize, offset_delta: usize) -> usize {
    let body = 1 + 1 + varint_len(offset_delta as i64) + 1 + varint_len(value_len as i64) + value_len + 1;
    varint_len(body as i64) + body
}

/// Bytes of a zigzag varint.
fn varint_len(value: i64) -> usize {
    let mut zigzag = ((value << 1) ^ (value >> 63)) as u64;
    let mut len = 1;
    while zigzag >= 0x80 {
        zigzag >>= 7;
        len += 1;
    }
    len
}

/// What a run sends, shared by all connections.
struct Plan {
    topic: TopicName,
    acks: i16,
    version: i16,
    record_size: u64,
    template: BatchTemplate,
}

/// One pre-encoded request: a batch for each of a few partitions.
struct Group {
    body: Bytes,
    partitions: Vec<i32>,
    batches: Credits,
    records: u64,
}

impl Plan {
    fn request_body(&self, batches: Vec<(i32, Bytes)>) -> Result<Bytes> {
        let partition_data = batches
            .into_iter()
            .map(|(partition, batch)| PartitionProduceData::default().with_index(partition).with_records(Some(batch)))
            .collect();
        let request = ProduceRequest::default()
            .with_acks(self.acks)
            .with_timeout_ms(PRODUCE_TIMEOUT_MS)
            .with_topic_data(vec![TopicProduceData::default().with_name(self.topic.clone()).with_partition_data(partition_data)]);
        Ok(wire::encode_body(&request, ApiKey::Produce, self.version)?)
    }

    /// Encodes the request cycle for a connection owning `partitions`.
    fn groups(&self, partitions: &[i32], per_request: usize) -> Result<Vec<Group>> {
        let per_batch = self.template.records_per_batch();
        let per_batch_u32 = u32::try_from(per_batch).context("records per batch overflow")?;
        partitions
            .chunks(per_request.max(1))
            .map(|chunk| {
                let body = self.request_body(chunk.iter().map(|&p| (p, self.template.full.clone())).collect())?;
                // The header adds a few dozen bytes; check the limit now rather than on first send.
                wire::request_prefix(ApiKey::Produce, self.version, 0, crate::conn::CLIENT_ID, body.len())?;
                Ok(Group {
                    body,
                    partitions: chunk.to_vec(),
                    batches: chunk.iter().map(|&p| (p, per_batch_u32)).collect(),
                    records: (chunk.len() * per_batch) as u64,
                })
            })
            .collect()
    }

    /// A one-off request carrying only `records` of `group`'s records: full batches first, then one
    /// short batch. Used once per connection at most, at the end of a `--records` run.
    fn partial(&self, group: &Group, records: u64) -> Result<(Bytes, Credits)> {
        let per_batch = self.template.records_per_batch() as u64;
        let (full, rest) = ((records / per_batch) as usize, records % per_batch);
        let mut batches = Vec::new();
        let mut credits = Vec::new();
        for &partition in group.partitions.iter().take(full) {
            batches.push((partition, self.template.full.clone()));
            credits.push((partition, per_batch as u32));
        }
        if rest > 0
            && let Some(&partition) = group.partitions.get(full)
        {
            batches.push((partition, self.template.encode_first(rest as usize)?));
            credits.push((partition, rest as u32));
        }
        Ok((self.request_body(batches)?, credits.into()))
    }
}

/// (partition, records) for each batch of a request, to credit acknowledgements.
type Credits = Arc<[(i32, u32)]>;

/// A request on the wire, waiting for its response.
struct InFlight {
    correlation_id: i32,
    sent_at: Instant,
    batches: Credits,
}

/// The sending half of one connection.
struct Sender {
    plan: Arc<Plan>,
    budget: Arc<Budget>,
    meter: Arc<Meter>,
    pacer: Option<Arc<Pacer>>,
    groups: Vec<Group>,
    addr: String,
}

impl Sender {
    /// Sends requests until the budget runs out. With `pipeline`, each request first takes an
    /// in-flight permit and is queued for the reader; without (acks=0), sent records count at once.
    /// Returns the tally and the next unused correlation id.
    async fn send_all<W: AsyncWrite + Unpin>(
        &self,
        writer: &mut W,
        pipeline: Option<(Arc<Semaphore>, mpsc::UnboundedSender<InFlight>)>,
    ) -> Result<(Tally, i32)> {
        let mut tally = Tally::default();
        let mut correlation_id: i32 = 0;
        for group in self.groups.iter().cycle() {
            // Under --rate, wait for the request's turn; latency then counts from the moment it was
            // due, including any wait for an in-flight slot (a slow broker must not be hidden by the
            // load slowing down), but not the sleep's lateness in waking us.
            let mut ready_at = None;
            if let Some(pacer) = &self.pacer {
                ready_at = Some(pacer.wait_turn(group.records).await);
            }
            if let Some((permits, _)) = &pipeline {
                // Closed only when the reader is gone, and then its error is the one worth reporting.
                let Ok(permit) = permits.acquire().await else { break };
                // The reader returns the permit when the response arrives.
                permit.forget();
            }
            let take = self.budget.claim(group.records);
            if take == 0 {
                break;
            }
            let (body, batches) =
                if take == group.records { (group.body.clone(), group.batches.clone()) } else { self.plan.partial(group, take)? };
            let prefix = wire::request_prefix(ApiKey::Produce, self.plan.version, correlation_id, crate::conn::CLIENT_ID, body.len())?;
            let frame_bytes = (prefix.len() + body.len()) as u64;
            if let Some((_, queue)) = &pipeline {
                let in_flight = InFlight { correlation_id, sent_at: ready_at.unwrap_or_else(Instant::now), batches };
                if queue.send(in_flight).is_err() {
                    break;
                }
            }
            wire::write_frame(writer, prefix, body, &self.addr).await?;
            tally.requests += 1;
            tally.wire_bytes += frame_bytes;
            if pipeline.is_none() {
                tally.records += take;
                tally.payload_bytes += take * self.plan.record_size;
                self.meter.add(take, take * self.plan.record_size);
            }
            correlation_id = correlation_id.wrapping_add(1);
        }
        Ok((tally, correlation_id))
    }

    /// acks=0: send everything, then prove the broker processed it. It never answers such Produce
    /// requests but handles a connection's requests in order, so the response to one trailing
    /// ApiVersions request arrives only after all of them were handled.
    async fn fire_and_forget<R, W>(self, read_half: R, mut write_half: W) -> Result<Tally>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let (tally, correlation_id) = self.send_all(&mut write_half, None).await?;
        let body = wire::encode_body(&ApiVersionsRequest::default(), ApiKey::ApiVersions, BARRIER_API_VERSIONS_VERSION)?;
        let prefix =
            wire::request_prefix(ApiKey::ApiVersions, BARRIER_API_VERSIONS_VERSION, correlation_id, crate::conn::CLIENT_ID, body.len())?;
        let barrier = async {
            wire::write_frame(&mut write_half, prefix, body, &self.addr).await?;
            let mut reader = read_half;
            wire::read_frame_timed(&mut reader, &self.addr, ApiKey::ApiVersions).await
        };
        let frame = barrier.await.context(
            "waiting for the broker to process the acks=0 requests (a broker reports a failed acks=0 produce by closing the connection)",
        )?;
        // Only the correlation id matters; the body is ignored.
        let header_version = ApiKey::ApiVersions.response_header_version(BARRIER_API_VERSIONS_VERSION);
        let mut frame = frame;
        let header =
            ResponseHeader::decode(&mut frame, header_version).with_context(|| format!("malformed response header from {}", self.addr))?;
        if header.correlation_id != correlation_id {
            bail!("broker at {} answered correlation id {} where {correlation_id} was due", self.addr, header.correlation_id);
        }
        Ok(tally)
    }
}

/// The receiving half of one connection.
struct Receiver {
    plan: Arc<Plan>,
    meter: Arc<Meter>,
    addr: String,
    permits: Arc<Semaphore>,
    queue: mpsc::UnboundedReceiver<InFlight>,
}

impl Receiver {
    async fn run<R: AsyncRead + Unpin>(mut self, read_half: R) -> Result<Tally> {
        let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, read_half);
        let mut tally = Tally::with_latency()?;
        let mut failed_batches = 0u64;
        while let Some(request) = self.queue.recv().await {
            let frame = wire::read_frame_timed(&mut reader, &self.addr, ApiKey::Produce).await?;
            let latency = request.sent_at.elapsed();
            let response: ProduceResponse =
                wire::decode_response(ApiKey::Produce, self.plan.version, request.correlation_id, frame, &self.addr)?;
            let mut acked = 0u64;
            for partition in response.responses.iter().flat_map(|topic| topic.partition_responses.iter()) {
                let Some(&(_, records)) = request.batches.iter().find(|(p, _)| *p == partition.index) else {
                    continue;
                };
                if partition.error_code == 0 {
                    acked += u64::from(records);
                } else {
                    tally.count_error(partition.error_code);
                    failed_batches += 1;
                }
            }
            tally.record_latency(latency);
            tally.records += acked;
            tally.payload_bytes += acked * self.plan.record_size;
            self.meter.add(acked, acked * self.plan.record_size);
            self.permits.add_permits(1);
            if tally.records == 0 && failed_batches >= ABORT_AFTER_FAILED_BATCHES {
                return Err(anyhow!(
                    "the first {} batches sent to {} all failed ({}); giving up",
                    group_digits(failed_batches),
                    self.addr,
                    describe_errors(&tally.errors)
                ));
            }
        }
        Ok(tally)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn i32_at(bytes: &[u8], at: usize) -> i32 {
        i32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
    }

    #[test]
    fn pre_encoded_batch_has_expected_header() {
        let template = BatchTemplate::new(100, 16384, Compression::None).expect("encode");
        let n = template.records_per_batch();
        let batch = &template.full[..];
        assert!(n > 100, "a 16 KiB batch holds well over 100 records of 100 bytes, got {n}");
        assert!(batch.len() <= 16384, "batch of {} bytes overshoots --batch-bytes", batch.len());
        // The size model used to derive records per batch matches the encoder exactly.
        let modelled: usize = (0..n).map(|i| encoded_record_len(100, i)).sum();
        assert_eq!(batch.len(), RECORD_BATCH_HEADER_BYTES + modelled);

        assert_eq!(i64::from_be_bytes(batch[0..8].try_into().expect("8 bytes")), 0, "base offset");
        assert_eq!(i32_at(batch, 8) as usize, batch.len() - 12, "batch length");
        assert_eq!(batch[16] as i8, RECORD_BATCH_MAGIC);
        assert_eq!(i16::from_be_bytes([batch[21], batch[22]]), 0, "attributes: no compression");
        assert_eq!(i32_at(batch, 23) as usize, n - 1, "last offset delta");
        assert_eq!(i64::from_be_bytes(batch[43..51].try_into().expect("8 bytes")), NO_PRODUCER_ID);
        assert_eq!(i32_at(batch, 53), -1, "base sequence");
        assert_eq!(i32_at(batch, 57) as usize, n, "record count");

        let short = template.encode_first(7).expect("encode");
        assert_eq!(i32_at(&short, 57), 7);
        assert_eq!(i32_at(&short, 23), 6);
    }

    #[test]
    fn compressed_batch_sets_codec_bits() {
        for (compression, bits) in [(Compression::Gzip, 1), (Compression::Snappy, 2), (Compression::Lz4, 3), (Compression::Zstd, 4)] {
            let template = BatchTemplate::new(100, 16384, compression).expect("encode");
            let batch = &template.full;
            assert_eq!(i16::from_be_bytes([batch[21], batch[22]]) & 0x7, bits, "{compression:?}");
            assert_eq!(i32_at(batch, 57) as usize, template.records_per_batch());
            // Random letters hold ~4.7 bits per byte: entropy coders shrink them, LZ4 and Snappy barely.
            if matches!(compression, Compression::Gzip | Compression::Zstd) {
                let plain = BatchTemplate::new(100, 16384, Compression::None).expect("encode").full.len();
                assert!(batch.len() < plain * 4 / 5, "{compression:?}: {} of {plain} bytes", batch.len());
            }
        }
    }

    #[test]
    fn the_pacer_spaces_requests_by_their_records() {
        let started = Instant::now();
        let pacer = Pacer::new(started, 1000);
        assert_eq!(pacer.due(500), started);
        assert_eq!(pacer.due(500), started + std::time::Duration::from_millis(500));
        assert_eq!(pacer.due(10), started + std::time::Duration::from_secs(1));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_late_request_counts_from_when_it_was_due() {
        let started = Instant::now() - std::time::Duration::from_secs(1);
        let pacer = Pacer::new(started, 1000);
        // Due at `started`, a second ago: no wait, and the second counts.
        assert_eq!(pacer.wait_turn(10).await, started);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_pacer_never_sends_early() {
        // Both paths: a wait shorter than the coarse margin (a thread's sleep only) and a longer one.
        for wait in [std::time::Duration::from_micros(300), COARSE_SLEEP_MARGIN * 3] {
            let due = Instant::now() + wait;
            wait_until(due).await;
            assert!(Instant::now() >= due, "woke before the request was due ({wait:?})");
        }
    }

    #[test]
    fn budget_claims_exactly() {
        let budget = Budget::Records(AtomicU64::new(10));
        assert_eq!(budget.claim(4), 4);
        assert_eq!(budget.claim(4), 4);
        assert_eq!(budget.claim(4), 2);
        assert_eq!(budget.claim(4), 0);
    }

    #[test]
    fn partial_request_credits_the_remainder() {
        let template = BatchTemplate::new(10, 512, Compression::None).expect("encode");
        let per_batch = template.records_per_batch() as u64;
        let plan = Plan { topic: TopicName(StrBytes::from_static_str("t")), acks: 1, version: 9, record_size: 10, template };
        let groups = plan.groups(&[0, 1, 2], 3).expect("groups");
        assert_eq!(groups.len(), 1);
        let (_, credits) = plan.partial(&groups[0], per_batch + 3).expect("partial");
        assert_eq!(&credits[..], &[(0, per_batch as u32), (1, 3)]);
    }
}
