//! The host's transactional producer and committed reader, against a broker opened in-process:
//! output and progress commit together, aborts stay invisible, a restarted producer fences the old
//! one, everything holds across a crash (no clean close), aborted ranges are filtered between
//! interleaved producers, output is split at `max.message.bytes`, and undecodable input is reported
//! with the offset past it.

use bytes::Bytes;
use std::collections::BTreeMap;

use super::*;
use crate::BrokerConfig;

struct Fixture {
    _runtime: tokio::runtime::Runtime,
    host: Host,
}

fn open(dir: &std::path::Path) -> Fixture {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let broker = Broker::open(BrokerConfig::default(), dir).unwrap();
    let host = Host::new(broker, "tests", runtime.handle().clone());
    Fixture { _runtime: runtime, host }
}

fn create(host: &Host, topic: &str, configs: &[(&str, &str)]) {
    let configs: BTreeMap<String, String> = configs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    host.create_topic(topic, Some(1), &configs).unwrap();
}

fn record(value: &str) -> ProducerRecord {
    ProducerRecord {
        key: Some(Bytes::from_static(b"k")),
        value: Some(Bytes::from(value.to_string())),
        headers: Vec::new(),
        timestamp_ms: -1,
    }
}

/// Every value a read_committed reader of partition 0 gets, through the host's reader.
fn committed_values(host: &Host, topic: &str) -> Vec<String> {
    let mut reader = host.reader(topic, 0, 0).unwrap();
    let mut values = Vec::new();
    for _ in 0..10_000 {
        if reader.position() >= reader.last_stable_offset() {
            return values;
        }
        let batch = reader.next_batch(7).unwrap();
        values.extend(batch.records.into_iter().map(|r| String::from_utf8(r.value.unwrap().to_vec()).unwrap()));
    }
    panic!("the reader made no progress");
}

#[test]
fn output_and_progress_commit_together_aborts_stay_invisible_and_fencing_survives_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = open(dir.path());
    let host = &fixture.host;
    create(host, "out", &[]);
    create(host, "in", &[]);

    let mut producer = host.producer("__sluice-test-x-0", 30_000).unwrap();
    producer.send("out", 0, &[record("a"), record("b")]).unwrap();
    producer.send_offsets("__sluice-test-x", &[("in".to_string(), 0, 2)]).unwrap();
    assert!(committed_values(host, "out").is_empty(), "nothing is visible before the commit");
    assert!(host.committed_offset("__sluice-test-x", "in", 0).unwrap().is_none());
    producer.commit().unwrap();
    assert_eq!(committed_values(host, "out"), vec!["a", "b"]);
    assert_eq!(host.committed_offset("__sluice-test-x", "in", 0).unwrap(), Some(2));

    producer.send("out", 0, &[record("dropped")]).unwrap();
    producer.send_offsets("__sluice-test-x", &[("in".to_string(), 0, 3)]).unwrap();
    producer.abort().unwrap();
    producer.send("out", 0, &[record("c")]).unwrap();
    producer.commit().unwrap();
    assert_eq!(committed_values(host, "out"), vec!["a", "b", "c"]);
    assert_eq!(host.committed_offset("__sluice-test-x", "in", 0).unwrap(), Some(2), "the aborted progress was dropped");

    // A restarted runner fences this one; its open transaction is aborted.
    producer.send("out", 0, &[record("zombie")]).unwrap();
    let mut successor = host.producer("__sluice-test-x-0", 30_000).unwrap();
    let fenced = producer.send("out", 0, &[record("zombie-2")]).unwrap_err();
    assert!(fenced.is_fenced(), "{fenced}");
    assert!(producer.commit().unwrap_err().is_fenced());
    successor.send("out", 0, &[record("d")]).unwrap();
    successor.commit().unwrap();
    assert_eq!(committed_values(host, "out"), vec!["a", "b", "c", "d"]);

    // Without a clean close (a crash), state comes back from the logs.
    successor.send("out", 0, &[record("in-flight")]).unwrap();
    drop((successor, producer, fixture));
    let fixture = open(dir.path());
    let host = &fixture.host;
    assert_eq!(host.broker.local_coordinators().transactions.describe("__sluice-test-x-0").unwrap().state, "Ongoing");
    assert_eq!(committed_values(host, "out"), vec!["a", "b", "c", "d"], "the in-flight transaction is not visible");
    let mut restarted = host.producer("__sluice-test-x-0", 30_000).unwrap();
    restarted.send("out", 0, &[record("e")]).unwrap();
    restarted.commit().unwrap();
    assert_eq!(committed_values(host, "out"), vec!["a", "b", "c", "d", "e"]);
    assert_eq!(host.committed_offset("__sluice-test-x", "in", 0).unwrap(), Some(2));
}

#[test]
fn the_reader_filters_aborted_ranges_of_interleaved_producers_and_stops_at_the_open_one() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = open(dir.path());
    let host = &fixture.host;
    create(host, "t", &[]);
    let mut a = host.producer("__sluice-test-a", 30_000).unwrap();
    let mut b = host.producer("__sluice-test-b", 30_000).unwrap();
    let mut c = host.producer("__sluice-test-c", 30_000).unwrap();
    a.send("t", 0, &[record("a1")]).unwrap();
    b.send("t", 0, &[record("b1"), record("b2")]).unwrap();
    a.send("t", 0, &[record("a2")]).unwrap();
    b.abort().unwrap();
    a.commit().unwrap();
    b.send("t", 0, &[record("b3")]).unwrap();
    b.commit().unwrap();
    c.send("t", 0, &[record("c1")]).unwrap();
    a.send("t", 0, &[record("a3")]).unwrap();
    a.commit().unwrap();
    // c's transaction is open: the reader must stop before c1, whatever it has read ahead.
    assert_eq!(committed_values(host, "t"), vec!["a1", "a2", "b3"]);
    let mut reader = host.reader("t", 0, 0).unwrap();
    let mut seen = Vec::new();
    while reader.position() < reader.last_stable_offset() {
        seen.extend(reader.next_batch(1).unwrap().records.into_iter().map(|r| r.offset));
    }
    assert_eq!(reader.position(), reader.last_stable_offset(), "markers and aborted records are skipped, never past the LSO");
    assert_eq!(seen.len(), 3, "one record per call, each committed record once: {seen:?}");
    c.commit().unwrap();
    assert_eq!(committed_values(host, "t"), vec!["a1", "a2", "b3", "c1", "a3"]);
}

#[test]
fn output_is_split_at_the_topics_batch_limit_and_an_oversized_record_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = open(dir.path());
    let host = &fixture.host;
    create(host, "small", &[("max.message.bytes", "10000")]);
    let mut producer = host.producer("__sluice-test-split", 30_000).unwrap();
    let values: Vec<String> = (0..100).map(|i| format!("{i:04}{}", "x".repeat(500))).collect();
    let records: Vec<ProducerRecord> = values.iter().map(|v| record(v)).collect();
    assert_eq!(producer.send("small", 0, &records).unwrap(), 0);
    producer.commit().unwrap();
    assert_eq!(committed_values(host, "small"), values, "50 KB of records in batches of at most 10 KB, in order");
    let huge = record(&"y".repeat(20_000));
    let error = producer.send("small", 0, &[huge]).unwrap_err();
    assert!(matches!(error, HostError::RecordTooLarge { limit_bytes: 10_000, .. }), "{error}");
}

#[test]
fn undecodable_and_oversized_batches_are_reported_with_the_offset_past_them() {
    use kafka_protocol::records::{Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType};
    let dir = tempfile::tempdir().unwrap();
    let fixture = open(dir.path());
    let host = &fixture.host;
    create(host, "in", &[]);
    let partition = host.broker.partition("in", 0).unwrap();
    let append = |compression: Compression, value: Vec<u8>, corrupt: bool| {
        let record = Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: 0,
            sequence: -1,
            timestamp: crate::now_ms(),
            key: None,
            value: Some(Bytes::from(value)),
            headers: Default::default(),
        };
        let mut buf = bytes::BytesMut::new();
        RecordBatchEncoder::encode(&mut buf, [record].iter(), &RecordEncodeOptions { version: 2, compression }).unwrap();
        if corrupt {
            // Garbage where the gzip stream is, with a CRC that matches it: storage accepts it (it
            // does not decompress), so only a reader can find it.
            for byte in &mut buf[61..] {
                *byte = 0x5a;
            }
            let crc = crc32c::crc32c(&buf[21..]);
            buf[17..21].copy_from_slice(&crc.to_be_bytes());
        }
        partition.append(&mut buf, sluice_storage::AppendMode::AssignOffsets { leader_epoch: 0 }, crate::now_ms()).unwrap();
    };
    append(Compression::None, b"before".to_vec(), false);
    append(Compression::Gzip, b"will be garbage".to_vec(), true);
    append(Compression::Zstd, vec![0u8; 2 << 20], false);
    append(Compression::Lz4, b"after".to_vec(), false);

    let mut reader =
        host.reader("in", 0, 0).unwrap().with_limits(ReaderLimits { read_bytes_max: 1 << 20, decompressed_batch_bytes_max: 1 << 20 });
    let first = reader.next_batch(100).unwrap();
    assert_eq!(first.records.len(), 1, "the good record before the bad batch comes out first");
    let error = reader.next_batch(100).unwrap_err();
    let HostError::UndecodableBatch { offset: 1, next_offset: 2, .. } = error else { panic!("{error}") };
    reader.seek(2);
    let error = reader.next_batch(100).unwrap_err();
    let HostError::UndecodableBatch { offset: 2, next_offset: 3, reason, .. } = error else { panic!("{error}") };
    assert!(reason.contains("more than"), "the zstd bomb stops at the bound: {reason}");
    reader.seek(3);
    let last = reader.next_batch(100).unwrap();
    assert_eq!(last.records[0].value.as_deref(), Some(&b"after"[..]));
}

#[test]
fn headers_keep_their_order_and_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = open(dir.path());
    let host = &fixture.host;
    create(host, "h", &[]);
    let mut producer = host.producer("__sluice-test-h", 30_000).unwrap();
    let headers = vec![
        ("trace".to_string(), Some(Bytes::from_static(b"1"))),
        ("trace".to_string(), Some(Bytes::from_static(b"2"))),
        ("empty".to_string(), None),
    ];
    producer.send("h", 0, &[ProducerRecord { key: None, value: None, headers: headers.clone(), timestamp_ms: 1_700_000_000_000 }]).unwrap();
    producer.commit().unwrap();
    let record = host.reader("h", 0, 0).unwrap().next_batch(10).unwrap().records.remove(0);
    assert_eq!(record.headers, headers);
    assert_eq!(record.timestamp_ms, 1_700_000_000_000);
    assert!(record.key.is_none() && record.value.is_none());
}

/// Rename-mode mirrors decode another cluster's Fetch answers: only committed records come out
/// (aborted transactions and markers dropped, interleaved producers told apart), a partial batch at
/// the end waits for the next fetch, and a batch whose bytes do not match its CRC fails the answer.
#[test]
fn fetched_answers_decode_to_committed_records_and_corrupt_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = open(dir.path());
    let host = &fixture.host;
    create(host, "src", &[]);
    let mut a = host.producer("__sluice-test-fa", 30_000).unwrap();
    let mut b = host.producer("__sluice-test-fb", 30_000).unwrap();
    a.send("src", 0, &[record("a1")]).unwrap();
    b.send("src", 0, &[record("b-aborted")]).unwrap();
    a.send("src", 0, &[record("a2")]).unwrap();
    b.abort().unwrap();
    a.commit().unwrap();
    b.send("src", 0, &[record("b1")]).unwrap();
    b.commit().unwrap();

    let partition = host.broker.partition("src", 0).unwrap();
    let read = partition.read_isolated(0, 1 << 20, true, true).unwrap();
    let aborted: Vec<(i64, i64)> = read.aborted.unwrap().iter().map(|t| (t.producer_id, t.first_offset)).collect();
    assert_eq!(aborted.len(), 1);
    let bytes = read.read.bytes;
    let limits = ReaderLimits::default();
    let values = |decoded: &FetchedRecords| -> Vec<String> {
        decoded.records.iter().map(|r| String::from_utf8(r.value.clone().unwrap().to_vec()).unwrap()).collect()
    };
    let all = decode_fetched(&bytes, &aborted, 0, &limits).unwrap();
    assert_eq!(values(&all), ["a1", "a2", "b1"]);
    assert_eq!(all.next_offset, partition.last_stable_offset(), "markers are stepped over");
    assert_eq!(values(&decode_fetched(&bytes, &aborted, 2, &limits).unwrap()), ["a2", "b1"]);

    // A partial batch at the end is left for the next fetch.
    let cut = bytes.slice(..bytes.len() - 5);
    let partial = decode_fetched(&cut, &aborted, 0, &limits).unwrap();
    assert!(partial.next_offset < all.next_offset);
    assert_eq!(values(&partial), ["a1", "a2", "b1"][..partial.records.len()]);

    // One flipped byte in a record: the CRC says so, and nothing of the answer is used.
    let mut corrupt = bytes.to_vec();
    let at = corrupt.windows(2).position(|w| w == b"a2").unwrap();
    corrupt[at] = b'x';
    let error = decode_fetched(&Bytes::from(corrupt), &aborted, 0, &limits).unwrap_err();
    assert!(error.to_string().contains("CRC"), "{error}");
}

/// The positions of the broker's own runtimes are never expired by `offsets.retention.ms`: an input
/// partition idle for longer must not send its transform or mirror back to the start.
#[test]
fn runtime_positions_never_expire() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = open(dir.path());
    let host = &fixture.host;
    create(host, "in", &[]);
    let mut producer = host.producer("__sluice-test-positions", 30_000).unwrap();
    producer.send_offsets("__sluice-test-positions", &[("in".to_string(), 0, 42)]).unwrap();
    producer.commit().unwrap();
    let year_ms = 365 * 24 * 3600 * 1000;
    host.broker.local_coordinators().groups.expire(now_ms() + year_ms);
    assert_eq!(host.committed_offset("__sluice-test-positions", "in", 0).unwrap(), Some(42));
}
