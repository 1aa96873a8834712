//! `sluice bench consume`. Each connection owns some partitions and keeps up to `--in-flight` Fetch
//! requests outstanding. A partition's next offset is only known once the previous response for it has
//! been read, so a partition is in at most one outstanding fetch; pipelining comes from splitting a
//! connection's partitions over several requests. Responses are walked batch header by batch header
//! (base offset, length, last offset delta, record count); records are never decoded or decompressed.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::fetch_response::PartitionData;
use kafka_protocol::messages::{ApiKey, FetchRequest, FetchResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use tokio::io::BufReader;
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use super::ConsumeArgs;
use super::report::{Summary, error_label};
use super::stats::{self, Goal, Meter, Tally};
use sluice_client::versions::FETCH_VERSIONS;
use sluice_client::wire::{self, FRAME_PREFIX_BYTES};

/// How long the broker may hold a fetch open waiting for `FETCH_MIN_BYTES` of new data (only asked
/// for once every partition of a connection is caught up; see `consume`).
const FETCH_MAX_WAIT_MS: i32 = 500;
const FETCH_MAX_WAIT: Duration = Duration::from_millis(FETCH_MAX_WAIT_MS as u64);
/// Answer as soon as there is anything at all.
const FETCH_MIN_BYTES: i32 = 1;
/// READ_UNCOMMITTED: count every record up to the high watermark.
const ISOLATION_READ_UNCOMMITTED: i8 = 0;
const ISOLATION_READ_COMMITTED: i8 = 1;
/// Session id 0 with epoch -1 asks for a plain full fetch, without an incremental fetch session.
const NO_FETCH_SESSION_ID: i32 = 0;
const NO_FETCH_SESSION_EPOCH: i32 = -1;
/// Pause before re-fetching a partition whose last fetch failed.
const FETCH_ERROR_BACKOFF: Duration = Duration::from_millis(100);
/// Failed fetches in a row after which a partition is given up on (~5 s of retries).
const MAX_CONSECUTIVE_FETCH_ERRORS: u32 = 50;
/// A run that waits for records (`--records`, or reading to the end) fails after this long without one.
const STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Read buffer for fetch responses; larger reads bypass it and land straight in the frame.
const READ_BUFFER_BYTES: usize = 256 * 1024;
/// Kafka's OFFSET_OUT_OF_RANGE error code.
const OFFSET_OUT_OF_RANGE: i16 = 1;

/// v2 record batch layout: baseOffset i64 @0, batchLength i32 @8 (bytes after this field),
/// partitionLeaderEpoch i32 @12, magic i8 @16, crc u32 @17, attributes i16 @21, lastOffsetDelta i32
/// @23, baseTimestamp i64 @27, maxTimestamp i64 @35, producerId i64 @43, producerEpoch i16 @51,
/// baseSequence i32 @53, recordCount i32 @57, records @61.
const BATCH_HEADER_BYTES: usize = 61;
/// baseOffset + batchLength: the part of the header not counted by batchLength.
const BATCH_LOG_OVERHEAD: usize = 12;
const BATCH_LENGTH_AT: usize = 8;
const MAGIC_AT: usize = 16;
const ATTRIBUTES_AT: usize = 21;
const LAST_OFFSET_DELTA_AT: usize = 23;
const RECORD_COUNT_AT: usize = 57;
const SUPPORTED_MAGIC: i8 = 2;
/// Attribute bit of control batches (transaction markers), whose records are not user data.
const CONTROL_BATCH_FLAG: i16 = 1 << 5;

pub(super) async fn run(args: ConsumeArgs) -> Result<()> {
    let summary = measure(&args).await?;
    summary.print(args.target.json);
    summary.fail_if_nothing_succeeded("fetch")
}

/// Sets up, reads and returns the summary without printing it.
pub(super) async fn measure(args: &ConsumeArgs) -> Result<Summary> {
    let target = &args.target;
    let super::Setup { version, routes } =
        super::setup(&target.conn.resolve()?.brokers, &target.topic, None, ApiKey::Fetch, FETCH_VERSIONS).await?;
    let assignment = super::assign(&routes, target.connections, false);

    let mut connections = Vec::with_capacity(assignment.len());
    for (addr, partitions) in assignment {
        let stream = wire::connect(&addr).await?;
        connections.push((addr, stream, partitions));
    }
    let settings = format!(
        "topic={} partitions={} connections={} in-flight={} fetch-max-bytes={} partition-max-bytes={} fetch=v{version}",
        target.topic,
        routes.len(),
        connections.len(),
        target.in_flight,
        args.fetch_max_bytes,
        args.partition_max_bytes,
    );

    let meter = Arc::new(Meter::default());
    let started = Instant::now();
    let (goal, stall_after, stall_hint) = match (args.records, args.duration) {
        (_, Some(duration)) => (Goal::Duration(duration), None, ""),
        (Some(records), None) => {
            (Goal::Records(records), Some(STALL_TIMEOUT), "does the topic hold as many records as --records asks for?")
        }
        (None, None) => (Goal::Open, Some(STALL_TIMEOUT), "the broker stopped serving records below the high watermark"),
    };
    let config = Arc::new(Config {
        topic: TopicName(StrBytes::from_string(target.topic.clone())),
        version,
        fetch_max_bytes: args.fetch_max_bytes,
        partition_max_bytes: args.partition_max_bytes,
        isolation_level: if args.read_committed { ISOLATION_READ_COMMITTED } else { ISOLATION_READ_UNCOMMITTED },
        in_flight: target.in_flight as usize,
        meter: meter.clone(),
        stop: Stop {
            target: args.records,
            deadline: args.duration.map(|d| started + d),
            until_caught_up: args.records.is_none() && args.duration.is_none(),
        },
    });
    let mut tasks = JoinSet::new();
    for (addr, stream, partitions) in connections {
        tasks.spawn(config.clone().consume(addr, stream, partitions));
    }
    let tally = stats::drive(tasks, &meter, goal, started, stall_after, stall_hint).await?;
    let seconds = started.elapsed().as_secs_f64();

    let latency_note = "not measured for consume";
    Ok(Summary { mode: "consume", settings, seconds, tally, latency_note })
}

/// When to stop reading.
struct Stop {
    target: Option<u64>,
    deadline: Option<Instant>,
    /// Neither a count nor a duration: stop once every partition reaches its high watermark.
    until_caught_up: bool,
}

impl Stop {
    fn reached(&self, meter: &Meter) -> bool {
        self.target.is_some_and(|target| meter.records() >= target) || self.deadline.is_some_and(|deadline| Instant::now() >= deadline)
    }
}

/// Settings shared by all connections.
struct Config {
    topic: TopicName,
    version: i16,
    fetch_max_bytes: i32,
    partition_max_bytes: i32,
    isolation_level: i8,
    in_flight: usize,
    meter: Arc<Meter>,
    stop: Stop,
}

/// Read position of one partition.
struct Cursor {
    partition: i32,
    next_offset: i64,
    /// In an outstanding fetch.
    busy: bool,
    /// Reached the high watermark (only when reading to the end).
    done: bool,
    /// At the high watermark as of the last response (more may still arrive).
    caught_up: bool,
    /// Not to be fetched again before this (after an error, or an empty answer).
    retry_at: Option<Instant>,
    consecutive_errors: u32,
}

impl Cursor {
    fn ready(&self, now: Instant) -> bool {
        !self.busy && !self.done && self.retry_at.is_none_or(|at| at <= now)
    }
}

/// A fetch on the wire, waiting for its response.
struct Pending {
    correlation_id: i32,
    sent_at: Instant,
    /// Indexes into the connection's cursors.
    members: Vec<usize>,
}

impl Config {
    async fn consume(self: Arc<Self>, addr: String, stream: TcpStream, partitions: Vec<i32>) -> Result<Tally> {
        let (read_half, mut writer) = stream.into_split();
        let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, read_half);
        let mut cursors: Vec<Cursor> = partitions
            .iter()
            .map(|&partition| Cursor {
                partition,
                next_offset: 0,
                busy: false,
                done: false,
                caught_up: false,
                retry_at: None,
                consecutive_errors: 0,
            })
            .collect();
        // Spread the partitions over the pipeline: each request takes a share of the idle ones.
        let per_request = cursors.len().div_ceil(self.in_flight).max(1);
        let mut pending: VecDeque<Pending> = VecDeque::with_capacity(self.in_flight);
        let mut tally = Tally::default();
        let mut correlation_id: i32 = 0;
        loop {
            if self.stop.reached(&self.meter) {
                break;
            }
            let now = Instant::now();
            while pending.len() < self.in_flight {
                let members: Vec<usize> = (0..cursors.len()).filter(|&i| cursors[i].ready(now)).take(per_request).collect();
                if members.is_empty() {
                    break;
                }
                // The broker answers a connection's requests in order, so a long-polling fetch would
                // hold back the responses queued behind it. Only long-poll once nothing has data.
                let long_poll = cursors.iter().all(|c| c.caught_up || c.done);
                let request = self.fetch_request(&cursors, &members, long_poll);
                let body = wire::encode_body(&request, ApiKey::Fetch, self.version)?;
                let prefix = wire::request_prefix(ApiKey::Fetch, self.version, correlation_id, crate::conn::CLIENT_ID, body.len())?;
                wire::write_frame(&mut writer, prefix, body, &addr).await?;
                tally.requests += 1;
                for &i in &members {
                    cursors[i].busy = true;
                }
                pending.push_back(Pending { correlation_id, sent_at: now, members });
                correlation_id = correlation_id.wrapping_add(1);
            }
            let Some(fetch) = pending.pop_front() else {
                if cursors.iter().all(|c| c.done) {
                    break;
                }
                // Every remaining partition is backing off; sleep until the first may go again.
                let wake = cursors.iter().filter(|c| !c.done).filter_map(|c| c.retry_at).min().unwrap_or(now + FETCH_ERROR_BACKOFF);
                // ...but not past the end of a timed run.
                let wake = self.stop.deadline.map_or(wake, |deadline| wake.min(deadline));
                tokio::time::sleep_until(wake.into()).await;
                continue;
            };
            let read = wire::read_frame_timed(&mut reader, &addr, ApiKey::Fetch);
            let frame = match self.stop.deadline {
                // A caught-up fetch long-polls; a timed run ends on time rather than waiting it out.
                // The connection is dropped right after, so abandoning a half-read frame is fine.
                Some(deadline) => match tokio::time::timeout_at(deadline.into(), read).await {
                    Ok(frame) => frame?,
                    Err(_) => break,
                },
                None => read.await?,
            };
            tally.wire_bytes += (frame.len() + FRAME_PREFIX_BYTES) as u64;
            let response: FetchResponse = wire::decode_response(ApiKey::Fetch, self.version, fetch.correlation_id, frame, &addr)?;
            if response.error_code != 0 {
                bail!("Fetch from {addr} failed: {}", error_label(response.error_code));
            }
            for &i in &fetch.members {
                cursors[i].busy = false;
            }
            for data in response.responses.iter().flat_map(|topic| topic.partitions.iter()) {
                // Only partitions this fetch asked for; anything else is ignored.
                let Some(&i) = fetch.members.iter().find(|&&i| cursors[i].partition == data.partition_index) else {
                    continue;
                };
                self.apply(&mut cursors[i], data, fetch.sent_at, &mut tally)?;
            }
        }
        Ok(tally)
    }

    fn fetch_request(&self, cursors: &[Cursor], members: &[usize], long_poll: bool) -> FetchRequest {
        let partitions = members
            .iter()
            .map(|&i| {
                FetchPartition::default()
                    .with_partition(cursors[i].partition)
                    .with_fetch_offset(cursors[i].next_offset)
                    .with_partition_max_bytes(self.partition_max_bytes)
            })
            .collect();
        FetchRequest::default()
            .with_max_wait_ms(if long_poll { FETCH_MAX_WAIT_MS } else { 0 })
            .with_min_bytes(FETCH_MIN_BYTES)
            .with_max_bytes(self.fetch_max_bytes)
            .with_isolation_level(self.isolation_level)
            .with_session_id(NO_FETCH_SESSION_ID)
            .with_session_epoch(NO_FETCH_SESSION_EPOCH)
            .with_topics(vec![FetchTopic::default().with_topic(self.topic.clone()).with_partitions(partitions)])
    }

    /// Folds one partition's part of a fetch response into its cursor and the tally.
    fn apply(&self, cursor: &mut Cursor, data: &PartitionData, sent_at: Instant, tally: &mut Tally) -> Result<()> {
        let partition = cursor.partition;
        match data.error_code {
            0 => {
                cursor.consecutive_errors = 0;
                cursor.retry_at = None;
                let records = data.records.as_deref().unwrap_or_default();
                let scan = scan_batches(records, cursor.next_offset)
                    .with_context(|| format!("reading partition {partition} at offset {}", cursor.next_offset))?;
                match scan.next_offset {
                    Some(next) => cursor.next_offset = next,
                    None if scan.complete_batches == 0 && !records.is_empty() => bail!(
                        "partition {partition}: the batch at offset {} is larger than --partition-max-bytes ({}) and \
                         the broker sent only part of it; raise --partition-max-bytes",
                        cursor.next_offset,
                        self.partition_max_bytes
                    ),
                    None if scan.complete_batches > 0 => {
                        bail!("partition {partition}: asked for offset {} but the broker sent only earlier batches", cursor.next_offset)
                    }
                    // Nothing new. Poll no faster than a long-polling broker would answer.
                    None => cursor.retry_at = Some(sent_at + FETCH_MAX_WAIT),
                }
                cursor.caught_up = cursor.next_offset >= data.high_watermark;
                tally.records += scan.records;
                tally.payload_bytes += scan.bytes;
                self.meter.add(scan.records, scan.bytes);
                if self.stop.until_caught_up && cursor.next_offset >= data.high_watermark {
                    cursor.done = true;
                }
            }
            // The log no longer starts at 0 (retention, DeleteRecords): begin at its first offset.
            OFFSET_OUT_OF_RANGE if data.log_start_offset > cursor.next_offset => {
                cursor.next_offset = data.log_start_offset;
            }
            code => {
                tally.count_error(code);
                cursor.consecutive_errors += 1;
                if cursor.consecutive_errors >= MAX_CONSECUTIVE_FETCH_ERRORS {
                    return Err(anyhow!(
                        "partition {partition}: {} fetches in a row failed, the last with {}",
                        cursor.consecutive_errors,
                        error_label(code)
                    ));
                }
                cursor.retry_at = Some(Instant::now() + FETCH_ERROR_BACKOFF);
            }
        }
        Ok(())
    }
}

/// What [`scan_batches`] found.
#[derive(Debug, Default, PartialEq, Eq)]
struct Scan {
    /// Records in data batches at or past the fetch offset (control batches excluded).
    records: u64,
    /// Bytes of those batches.
    bytes: u64,
    /// One past the last offset of the last complete batch at or past the fetch offset.
    next_offset: Option<i64>,
    /// Complete batches seen, including any before the fetch offset.
    complete_batches: usize,
}

/// Walks the v2 batch headers in a fetch response's record data. A trailing partial batch (the broker
/// stops at the size limit mid-batch) is ignored; it is fetched again next time.
fn scan_batches(data: &[u8], fetch_offset: i64) -> Result<Scan> {
    let mut scan = Scan::default();
    let mut rest = data;
    while rest.len() >= BATCH_LOG_OVERHEAD {
        let base_offset = be_i64(rest, 0);
        let length = be_i32(rest, BATCH_LENGTH_AT);
        let total = usize::try_from(length)
            .ok()
            .map(|len| len + BATCH_LOG_OVERHEAD)
            .filter(|&total| total >= BATCH_HEADER_BYTES)
            .ok_or_else(|| anyhow!("corrupt record batch at offset {base_offset}: batch length {length}"))?;
        let Some(batch) = rest.get(..total) else { break };
        let magic = batch[MAGIC_AT] as i8;
        if magic != SUPPORTED_MAGIC {
            bail!("the batch at offset {base_offset} uses message format v{magic}; `sluice bench` reads only v2");
        }
        let attributes = i16::from_be_bytes([batch[ATTRIBUTES_AT], batch[ATTRIBUTES_AT + 1]]);
        let last_offset_delta = be_i32(batch, LAST_OFFSET_DELTA_AT);
        let record_count = be_i32(batch, RECORD_COUNT_AT);
        let (Ok(last_offset_delta), Ok(record_count)) = (u32::try_from(last_offset_delta), u64::try_from(record_count)) else {
            bail!("corrupt record batch at offset {base_offset}: last offset delta {last_offset_delta}, {record_count} records");
        };
        let next_offset = base_offset
            .checked_add(i64::from(last_offset_delta) + 1)
            .ok_or_else(|| anyhow!("corrupt record batch: offset {base_offset} + {last_offset_delta} overflows"))?;
        scan.complete_batches += 1;
        // A fetch may start inside an earlier batch; only what reaches the fetch offset is new.
        if next_offset > fetch_offset {
            if attributes & CONTROL_BATCH_FLAG == 0 {
                scan.records += record_count;
            }
            scan.bytes += total as u64;
            scan.next_offset = Some(next_offset);
        }
        rest = &rest[total..];
    }
    Ok(scan)
}

/// Big-endian reads at offsets the caller has bounds-checked (`at + 8 <= bytes.len()`).
fn be_i64(bytes: &[u8], at: usize) -> i64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    i64::from_be_bytes(b)
}

fn be_i32(bytes: &[u8], at: usize) -> i32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[at..at + 4]);
    i32::from_be_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::records::{Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType};

    fn batch(base: i64, count: i64) -> Vec<u8> {
        let records: Vec<Record> = (0..count)
            .map(|i| Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: -1,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset: base + i,
                sequence: (base + i - 1) as i32,
                timestamp: 0,
                key: None,
                value: Some(bytes::Bytes::from_static(b"hello")),
                headers: Default::default(),
            })
            .collect();
        let mut buf = bytes::BytesMut::new();
        let options = RecordEncodeOptions { version: 2, compression: Compression::Lz4 };
        RecordBatchEncoder::encode(&mut buf, &records, &options).expect("encode");
        buf.to_vec()
    }

    #[test]
    fn scans_headers_and_ignores_a_partial_tail() {
        let (first, second) = (batch(0, 3), batch(3, 5));
        let mut data = [first.clone(), second.clone()].concat();
        let whole = scan_batches(&data, 0).expect("scan");
        assert_eq!(whole, Scan { records: 8, bytes: data.len() as u64, next_offset: Some(8), complete_batches: 2 });
        // Starting inside the second batch skips the first one entirely.
        let from_four = scan_batches(&data, 4).expect("scan");
        assert_eq!((from_four.records, from_four.next_offset), (5, Some(8)));
        // A cut-off second batch is left for the next fetch.
        data.truncate(first.len() + 20);
        let cut = scan_batches(&data, 0).expect("scan");
        assert_eq!(cut, Scan { records: 3, bytes: first.len() as u64, next_offset: Some(3), complete_batches: 1 });
        // Only a fragment: no progress, no error.
        assert_eq!(scan_batches(&second[..30], 3).expect("scan"), Scan::default());
    }

    #[test]
    fn rejects_corrupt_headers() {
        let mut bad_length = batch(0, 2);
        bad_length[8..12].copy_from_slice(&(-5i32).to_be_bytes());
        assert!(scan_batches(&bad_length, 0).is_err());
        let mut old_magic = batch(0, 2);
        old_magic[MAGIC_AT] = 1;
        assert!(scan_batches(&old_magic, 0).is_err());
        let mut negative_count = batch(0, 2);
        negative_count[RECORD_COUNT_AT..RECORD_COUNT_AT + 4].copy_from_slice(&(-1i32).to_be_bytes());
        assert!(scan_batches(&negative_count, 0).is_err());
    }
}
