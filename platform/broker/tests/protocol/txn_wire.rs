//! Kafka transactions at the wire level: the coordinator's state machine and its error codes, markers
//! and the last stable offset as fetches see them, transactional offsets, and the timeout abort.
//! Real clients (librdkafka) run the same flows end to end in `tests/test_transactions.py`.

use std::time::Duration;

use crate::common::*;
use bytes::Bytes;
use kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::txn_offset_commit_request::{TxnOffsetCommitRequestPartition, TxnOffsetCommitRequestTopic};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

const INVALID_TXN_STATE: i16 = 48;
const INVALID_PRODUCER_ID_MAPPING: i16 = 49;
const INVALID_TRANSACTION_TIMEOUT: i16 = 50;
const INVALID_PRODUCER_EPOCH: i16 = 47;
const PRODUCER_FENCED: i16 = 90;
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const UNSTABLE_OFFSET_COMMIT: i16 = 88;

fn s(value: &str) -> StrBytes {
    StrBytes::from_string(value.to_string())
}

fn txn_batch(values: &[&str], producer_id: i64, epoch: i16, sequence: i32) -> Bytes {
    batch_from(values, Writer::transactional(producer_id, epoch, sequence))
}

async fn init(client: &mut Client, id: &str, timeout_ms: i32) -> (i16, i64, i16) {
    let request =
        InitProducerIdRequest::default().with_transactional_id(Some(TransactionalId(s(id)))).with_transaction_timeout_ms(timeout_ms);
    let response: InitProducerIdResponse = client.call(ApiKey::InitProducerId, 3, &request).await;
    (response.error_code, response.producer_id.0, response.producer_epoch)
}

async fn add_partition(client: &mut Client, id: &str, producer_id: i64, epoch: i16, topic: &str, partition: i32) -> i16 {
    let request = AddPartitionsToTxnRequest::default()
        .with_v3_and_below_transactional_id(TransactionalId(s(id)))
        .with_v3_and_below_producer_id(ProducerId(producer_id))
        .with_v3_and_below_producer_epoch(epoch)
        .with_v3_and_below_topics(vec![AddPartitionsToTxnTopic::default().with_name(TopicName(s(topic))).with_partitions(vec![partition])]);
    let response: AddPartitionsToTxnResponse = client.call(ApiKey::AddPartitionsToTxn, 3, &request).await;
    response.results_by_topic_v3_and_below[0].results_by_partition[0].partition_error_code
}

async fn end(client: &mut Client, id: &str, producer_id: i64, epoch: i16, commit: bool) -> i16 {
    let request = EndTxnRequest::default()
        .with_transactional_id(TransactionalId(s(id)))
        .with_producer_id(ProducerId(producer_id))
        .with_producer_epoch(epoch)
        .with_committed(commit);
    let response: EndTxnResponse = client.call(ApiKey::EndTxn, 3, &request).await;
    response.error_code
}

async fn txn_produce(client: &mut Client, id: &str, topic: &str, records: Bytes) -> (i16, i64) {
    let request =
        ProduceRequest::default().with_transactional_id(Some(TransactionalId(s(id)))).with_acks(-1).with_timeout_ms(5000).with_topic_data(
            vec![
                TopicProduceData::default()
                    .with_name(TopicName(s(topic)))
                    .with_partition_data(vec![PartitionProduceData::default().with_index(0).with_records(Some(records))]),
            ],
        );
    let response: ProduceResponse = client.call(ApiKey::Produce, 9, &request).await;
    let p = &response.responses[0].partition_responses[0];
    (p.error_code, p.base_offset)
}

struct Fetched {
    high_watermark: i64,
    last_stable_offset: i64,
    aborted: Vec<(i64, i64)>,
    values: Vec<(i64, String)>,
}

async fn fetch_isolated(client: &mut Client, topic: &str, offset: i64, read_committed: bool) -> Fetched {
    let request = FetchRequest::default()
        .with_max_wait_ms(0)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_isolation_level(if read_committed { 1 } else { 0 })
        .with_topics(vec![FetchTopic::default().with_topic(TopicName(s(topic))).with_partitions(vec![
            FetchPartition::default().with_partition(0).with_fetch_offset(offset).with_partition_max_bytes(1 << 20),
        ])]);
    let response: FetchResponse = client.call(ApiKey::Fetch, 12, &request).await;
    let p = &response.responses[0].partitions[0];
    assert_eq!(p.error_code, 0);
    let records = p.records.clone().unwrap_or_default();
    // Control records (markers) have no value; data records here always do.
    let values = {
        let mut buf = records;
        kafka_protocol::records::RecordBatchDecoder::decode_all(&mut buf)
            .unwrap()
            .into_iter()
            .flat_map(|set| set.records)
            .filter(|r| !r.control)
            .map(|r| (r.offset, String::from_utf8(r.value.unwrap().to_vec()).unwrap()))
            .collect()
    };
    Fetched {
        high_watermark: p.high_watermark,
        last_stable_offset: p.last_stable_offset,
        aborted: p.aborted_transactions.clone().unwrap_or_default().iter().map(|a| (a.producer_id.0, a.first_offset)).collect(),
        values,
    }
}

async fn latest_offset(client: &mut Client, topic: &str, read_committed: bool) -> i64 {
    let request = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_isolation_level(if read_committed { 1 } else { 0 })
        .with_topics(vec![
            ListOffsetsTopic::default()
                .with_name(TopicName(s(topic)))
                .with_partitions(vec![ListOffsetsPartition::default().with_partition_index(0).with_timestamp(-1)]),
        ]);
    let response: ListOffsetsResponse = client.call(ApiKey::ListOffsets, 5, &request).await;
    response.topics[0].partitions[0].offset
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_and_abort_move_the_last_stable_offset_and_abort_is_reported() {
    let broker = start(&[]).await;
    let mut client = Client::connect(broker.kafka).await;
    assert_eq!(create_topic(&mut client, "tx", 1, &[]).await, 0);
    let (error, pid, epoch) = init(&mut client, "t1", 60_000).await;
    assert_eq!((error, epoch), (0, 0));

    assert_eq!(add_partition(&mut client, "t1", pid, epoch, "tx", 0).await, 0);
    assert_eq!(txn_produce(&mut client, "t1", "tx", txn_batch(&["a", "b", "c"], pid, epoch, 0)).await, (0, 0));
    let open = fetch_isolated(&mut client, "tx", 0, true).await;
    assert_eq!(
        (open.high_watermark, open.last_stable_offset, open.values.len()),
        (3, 0, 0),
        "nothing is stable while the transaction is open"
    );
    assert_eq!(fetch_isolated(&mut client, "tx", 0, false).await.values.len(), 3, "read_uncommitted sees open records");
    assert_eq!((latest_offset(&mut client, "tx", true).await, latest_offset(&mut client, "tx", false).await), (0, 3));

    assert_eq!(end(&mut client, "t1", pid, epoch, true).await, 0);
    let committed = fetch_isolated(&mut client, "tx", 0, true).await;
    assert_eq!(committed.last_stable_offset, 4, "three records and the commit marker");
    assert_eq!(committed.values.iter().map(|(_, v)| v.as_str()).collect::<Vec<_>>(), vec!["a", "b", "c"]);
    assert!(committed.aborted.is_empty());

    assert_eq!(add_partition(&mut client, "t1", pid, epoch, "tx", 0).await, 0);
    assert_eq!(txn_produce(&mut client, "t1", "tx", txn_batch(&["x", "y"], pid, epoch, 3)).await, (0, 4));
    assert_eq!(end(&mut client, "t1", pid, epoch, false).await, 0);
    let after = fetch_isolated(&mut client, "tx", 0, true).await;
    assert_eq!(after.last_stable_offset, 7);
    assert_eq!(after.aborted, vec![(pid, 4)], "the aborted range is reported so clients drop x and y");
    assert_eq!(latest_offset(&mut client, "tx", true).await, 7);
    // A read that ends before the aborted range does not carry it.
    assert!(fetch_isolated(&mut client, "tx", 7, true).await.aborted.is_empty());
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_and_stale_requests_get_kafka_error_codes_and_leave_the_log_intact() {
    let broker = start(&[("transaction.max.timeout.ms", "60000")]).await;
    let mut client = Client::connect(broker.kafka).await;
    assert_eq!(create_topic(&mut client, "bad", 1, &[]).await, 0);

    assert_eq!(end(&mut client, "nobody", 5, 0, true).await, INVALID_PRODUCER_ID_MAPPING);
    assert_eq!(init(&mut client, "t2", 60_001).await.0, INVALID_TRANSACTION_TIMEOUT);
    let (_, pid, e0) = init(&mut client, "t2", 30_000).await;
    assert_eq!(end(&mut client, "t2", pid, e0, true).await, INVALID_TXN_STATE, "EndTxn with no transaction");
    assert_eq!(
        txn_produce(&mut client, "t2", "bad", txn_batch(&["early"], pid, e0, 0)).await.0,
        INVALID_TXN_STATE,
        "produce before AddPartitionsToTxn"
    );
    assert_eq!(add_partition(&mut client, "t2", pid, e0, "missing", 0).await, UNKNOWN_TOPIC_OR_PARTITION);
    assert_eq!(add_partition(&mut client, "t2", pid + 1, e0, "bad", 0).await, INVALID_PRODUCER_ID_MAPPING);

    // A second InitProducerId fences the first producer.
    let (_, pid_again, e1) = init(&mut client, "t2", 30_000).await;
    assert_eq!((pid_again, e1), (pid, e0 + 1));
    assert_eq!(add_partition(&mut client, "t2", pid, e0, "bad", 0).await, PRODUCER_FENCED);
    assert_eq!(add_partition(&mut client, "t2", pid, e1 + 1, "bad", 0).await, INVALID_PRODUCER_EPOCH);
    assert_eq!(add_partition(&mut client, "t2", pid, e1, "bad", 0).await, 0);
    assert_eq!(txn_produce(&mut client, "t2", "bad", txn_batch(&["zombie"], pid, e0, 0)).await.0, INVALID_PRODUCER_EPOCH);
    assert_eq!(txn_produce(&mut client, "t2", "bad", txn_batch(&["ok"], pid, e1, 0)).await.0, 0);
    // A second batch from another producer cannot ride along behind a checked first batch.
    let mut mixed = txn_batch(&["ok-too"], pid, e1, 1).to_vec();
    mixed.extend_from_slice(&txn_batch(&["stowaway"], pid + 7, 0, 0));
    assert_eq!(txn_produce(&mut client, "t2", "bad", Bytes::from(mixed)).await.0, 87, "INVALID_RECORD");
    // A non-transactional batch on a transactional request, and the reverse, are refused.
    assert_ne!(txn_produce(&mut client, "t2", "bad", batch(&["plain"])).await.0, 0);
    assert_ne!(produce(&mut client, "bad", 0, txn_batch(&["sneaky"], pid, e1, 1), -1).await.0, 0);

    // TxnOffsetCommit for a group never added to the transaction.
    let request = TxnOffsetCommitRequest::default()
        .with_transactional_id(TransactionalId(s("t2")))
        .with_group_id(GroupId(s("g")))
        .with_producer_id(ProducerId(pid))
        .with_producer_epoch(e1)
        .with_generation_id(-1)
        .with_topics(vec![
            TxnOffsetCommitRequestTopic::default()
                .with_name(TopicName(s("bad")))
                .with_partitions(vec![TxnOffsetCommitRequestPartition::default().with_partition_index(0).with_committed_offset(1)]),
        ]);
    let response: TxnOffsetCommitResponse = client.call(ApiKey::TxnOffsetCommit, 3, &request).await;
    assert_eq!(response.topics[0].partitions[0].error_code, INVALID_TXN_STATE);

    assert_eq!(end(&mut client, "t2", pid, e1, true).await, 0);
    assert_eq!(end(&mut client, "t2", pid, e1, true).await, 0, "a retried commit succeeds");
    assert_eq!(end(&mut client, "t2", pid, e1, false).await, INVALID_TXN_STATE, "abort after commit");

    let all = fetch_isolated(&mut client, "bad", 0, false).await;
    assert_eq!(all.values.iter().map(|(_, v)| v.as_str()).collect::<Vec<_>>(), vec!["ok"], "refused batches never reached the log");
    let committed = fetch_isolated(&mut client, "bad", 0, true).await;
    assert_eq!((committed.last_stable_offset, committed.high_watermark), (2, 2));
    broker.stop().await;
}

async fn offset_fetch(client: &mut Client, group: &str, topic: &str, require_stable: bool) -> (i16, i64) {
    let request = OffsetFetchRequest::default()
        .with_group_id(GroupId(s(group)))
        .with_require_stable(require_stable)
        .with_topics(Some(vec![OffsetFetchRequestTopic::default().with_name(TopicName(s(topic))).with_partition_indexes(vec![0])]));
    let response: OffsetFetchResponse = client.call(ApiKey::OffsetFetch, 7, &request).await;
    let p = &response.topics[0].partitions[0];
    (p.error_code, p.committed_offset)
}

async fn send_offsets(client: &mut Client, id: &str, pid: i64, epoch: i16, group: &str, topic: &str, offset: i64) -> (i16, i16) {
    let request = AddOffsetsToTxnRequest::default()
        .with_transactional_id(TransactionalId(s(id)))
        .with_producer_id(ProducerId(pid))
        .with_producer_epoch(epoch)
        .with_group_id(GroupId(s(group)));
    let added: AddOffsetsToTxnResponse = client.call(ApiKey::AddOffsetsToTxn, 3, &request).await;
    let request = TxnOffsetCommitRequest::default()
        .with_transactional_id(TransactionalId(s(id)))
        .with_group_id(GroupId(s(group)))
        .with_producer_id(ProducerId(pid))
        .with_producer_epoch(epoch)
        .with_generation_id(-1)
        .with_topics(vec![
            TxnOffsetCommitRequestTopic::default()
                .with_name(TopicName(s(topic)))
                .with_partitions(vec![TxnOffsetCommitRequestPartition::default().with_partition_index(0).with_committed_offset(offset)]),
        ]);
    let committed: TxnOffsetCommitResponse = client.call(ApiKey::TxnOffsetCommit, 3, &request).await;
    (added.error_code, committed.topics[0].partitions[0].error_code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactional_offsets_are_visible_only_after_commit() {
    let broker = start(&[]).await;
    let mut client = Client::connect(broker.kafka).await;
    assert_eq!(create_topic(&mut client, "in", 1, &[]).await, 0);
    let (_, pid, epoch) = init(&mut client, "t3", 30_000).await;

    assert_eq!(send_offsets(&mut client, "t3", pid, epoch, "g", "in", 42).await, (0, 0));
    assert_eq!(offset_fetch(&mut client, "g", "in", true).await.0, UNSTABLE_OFFSET_COMMIT);
    assert_eq!(offset_fetch(&mut client, "g", "in", false).await, (0, -1), "not committed yet");
    assert_eq!(end(&mut client, "t3", pid, epoch, true).await, 0);
    assert_eq!(offset_fetch(&mut client, "g", "in", true).await, (0, 42));

    assert_eq!(send_offsets(&mut client, "t3", pid, epoch, "g", "in", 99).await, (0, 0));
    assert_eq!(end(&mut client, "t3", pid, epoch, false).await, 0);
    assert_eq!(offset_fetch(&mut client, "g", "in", true).await, (0, 42), "aborted offsets are dropped");
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_transaction_is_aborted_at_its_timeout_and_its_producer_fenced() {
    let broker = start(&[("transaction.abort.timed.out.transaction.cleanup.interval.ms", "100")]).await;
    let mut client = Client::connect(broker.kafka).await;
    assert_eq!(create_topic(&mut client, "slow", 1, &[]).await, 0);
    let (_, pid, epoch) = init(&mut client, "t4", 300).await;
    assert_eq!(add_partition(&mut client, "t4", pid, epoch, "slow", 0).await, 0);
    assert_eq!(txn_produce(&mut client, "t4", "slow", txn_batch(&["lost"], pid, epoch, 0)).await.0, 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let fetched = fetch_isolated(&mut client, "slow", 0, true).await;
        if fetched.last_stable_offset == 2 {
            assert_eq!(fetched.aborted, vec![(pid, 0)]);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the transaction was not aborted in time");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(end(&mut client, "t4", pid, epoch, true).await, PRODUCER_FENCED);
    broker.stop().await;
}

const TRANSACTIONAL_ID_AUTHORIZATION_FAILED: i16 = 53;
const GROUP_AUTHORIZATION_FAILED: i16 = 30;

/// Issue 10, item 15: transactional ids and groups under `__sluice` belong to the broker's runtimes.
/// Before, any client could InitProducerId `__sluice-transform-<name>-<p>` (fencing the runner) or
/// commit to `__sluice-transform-<name>` (moving its input position).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_reserved_for_the_broker_are_refused_to_clients() {
    let broker = start(&[]).await;
    let mut client = Client::connect(broker.kafka).await;
    assert_eq!(create_topic(&mut client, "tx", 1, &[]).await, 0);
    assert_eq!(init(&mut client, "__sluice-transform-t-0", 60_000).await.0, TRANSACTIONAL_ID_AUTHORIZATION_FAILED);
    assert_eq!(end(&mut client, "__sluice-transform-t-0", 0, 0, true).await, TRANSACTIONAL_ID_AUTHORIZATION_FAILED);

    let commit = OffsetCommitRequest::default().with_group_id(GroupId(s("__sluice-transform-t"))).with_topics(vec![
        kafka_protocol::messages::offset_commit_request::OffsetCommitRequestTopic::default().with_name(TopicName(s("tx"))).with_partitions(
            vec![kafka_protocol::messages::offset_commit_request::OffsetCommitRequestPartition::default().with_committed_offset(5)],
        ),
    ]);
    let response: OffsetCommitResponse = client.call(ApiKey::OffsetCommit, 8, &commit).await;
    assert_eq!(response.topics[0].partitions[0].error_code, GROUP_AUTHORIZATION_FAILED);
    let join = JoinGroupRequest::default()
        .with_group_id(GroupId(s("__sluice-transform-t")))
        .with_session_timeout_ms(10_000)
        .with_rebalance_timeout_ms(10_000)
        .with_protocol_type(s("consumer"));
    let response: JoinGroupResponse = client.call(ApiKey::JoinGroup, 5, &join).await;
    assert_eq!(response.error_code, GROUP_AUTHORIZATION_FAILED);
    // Reading a runtime's group stays allowed (operators look at transform positions).
    assert_eq!(offset_fetch(&mut client, "__sluice-transform-t", "tx", false).await, (0, -1));

    // A transactional produce must come from the producer its transactional id owns: t2's request
    // cannot carry t1's producer id into t1's transaction.
    let (_, pid, epoch) = init(&mut client, "t1", 60_000).await;
    assert_eq!(init(&mut client, "t2", 60_000).await.0, 0);
    assert_eq!(add_partition(&mut client, "t1", pid, epoch, "tx", 0).await, 0);
    assert_eq!(txn_produce(&mut client, "t2", "tx", txn_batch(&["smuggled"], pid, epoch, 0)).await.0, INVALID_PRODUCER_ID_MAPPING);
    assert_eq!(txn_produce(&mut client, "t1", "tx", txn_batch(&["own"], pid, epoch, 0)).await, (0, 0));
    broker.stop().await;
}

const INVALID_TXN_STATE_CODE: i16 = INVALID_TXN_STATE;
const UNKNOWN_PRODUCER_ID: i16 = 59;
const INVALID_GROUP_ID: i16 = 24;
const TRANSACTIONAL_ID_NOT_FOUND: i16 = 105;

/// InitProducerId v4: with a transactional id or without, with the (producer id, epoch) a KIP-360
/// client sends to recover (-1, -1 for none).
async fn init_v4(client: &mut Client, id: Option<&str>, expected: (i64, i16)) -> (i16, i64, i16) {
    let request = InitProducerIdRequest::default()
        .with_transactional_id(id.map(|id| TransactionalId(s(id))))
        .with_transaction_timeout_ms(60_000)
        .with_producer_id(ProducerId(expected.0))
        .with_producer_epoch(expected.1);
    let response: InitProducerIdResponse = client.call(ApiKey::InitProducerId, 4, &request).await;
    (response.error_code, response.producer_id.0, response.producer_epoch)
}

/// Issue 10, item 5, as reproduced from outside: a plain idempotent batch carrying an open
/// transaction's producer id with epoch+1 was accepted; the commit marker (old epoch) was then
/// skipped, the last stable offset stuck, and the client's successful commit_transaction() showed
/// read_committed consumers none of its records. Kafka refuses non-transactional writes from a
/// producer with an open transaction; Sluice refuses them from any transactional id's producer id,
/// and from producer ids it never handed out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_write_with_a_transactional_producer_id_is_refused_and_the_commit_stays_a_commit() {
    let broker = start(&[]).await;
    let mut client = Client::connect(broker.kafka).await;
    assert_eq!(create_topic(&mut client, "tx", 1, &[]).await, 0);
    let (_, pid, epoch) = init(&mut client, "victim", 60_000).await;
    assert_eq!(add_partition(&mut client, "victim", pid, epoch, "tx", 0).await, 0);
    assert_eq!(txn_produce(&mut client, "victim", "tx", txn_batch(&["1", "2", "3", "4", "5"], pid, epoch, 0)).await, (0, 0));

    let hijack = batch_from(&["hijack"], Writer::idempotent(pid, epoch + 1, 0));
    assert_eq!(produce(&mut client, "tx", 0, hijack, -1).await.0, INVALID_TXN_STATE_CODE);
    let same_epoch = batch_from(&["hijack"], Writer::idempotent(pid, epoch, 5));
    assert_eq!(produce(&mut client, "tx", 0, same_epoch, -1).await.0, INVALID_TXN_STATE_CODE);
    let made_up = batch_from(&["made-up"], Writer::idempotent(pid + 500_000, 0, 0));
    assert_eq!(produce(&mut client, "tx", 0, made_up, -1).await.0, UNKNOWN_PRODUCER_ID);

    assert_eq!(end(&mut client, "victim", pid, epoch, true).await, 0);
    let committed = fetch_isolated(&mut client, "tx", 0, true).await;
    assert_eq!(committed.values.iter().map(|(_, v)| v.as_str()).collect::<Vec<_>>(), vec!["1", "2", "3", "4", "5"]);
    assert_eq!(committed.last_stable_offset, 6, "five records and the commit marker, nothing stuck");
    broker.stop().await;
}

/// Issue 10, item 5: InitProducerId without a transactional id used to answer any (producer id,
/// epoch) with epoch+1 — a client could take over a transactional producer's id. Kafka's coordinator
/// ignores both fields when there is no transactional id and hands out a fresh producer id (clients
/// bump an idempotent producer's epoch themselves); Sluice now does the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_producer_id_without_a_transactional_id_never_bumps_another_producers_epoch() {
    let broker = start(&[]).await;
    let mut client = Client::connect(broker.kafka).await;
    let (_, pid, epoch) = init(&mut client, "owner", 60_000).await;
    let (error, other_pid, other_epoch) = init_v4(&mut client, None, (pid, epoch)).await;
    assert_eq!(error, 0);
    assert_ne!(other_pid, pid, "a fresh producer id, not the transactional producer's");
    assert_eq!(other_epoch, 0);
    let (_, fresh, _) = init_v4(&mut client, None, (-1, -1)).await;
    assert!(fresh > other_pid);
    broker.stop().await;
}

/// Issue 9 (left by the previous session): KIP-360's retry. A transactional client that lost the
/// answer to InitProducerId(expected = its current epoch) retries with the same expectation; Kafka
/// answers with the epoch it already bumped to instead of PRODUCER_FENCED. A fresh InitProducerId
/// (another instance) forgets that previous epoch, so the old instance is fenced for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_init_producer_id_with_the_previous_epoch_gets_the_same_epoch_back() {
    let broker = start(&[]).await;
    let mut client = Client::connect(broker.kafka).await;
    let (_, pid, epoch) = init_v4(&mut client, Some("retry"), (-1, -1)).await;
    assert_eq!(init_v4(&mut client, Some("retry"), (pid, epoch)).await, (0, pid, epoch + 1));
    assert_eq!(init_v4(&mut client, Some("retry"), (pid, epoch)).await, (0, pid, epoch + 1), "the retry gets the same answer");
    assert_eq!(init_v4(&mut client, Some("retry"), (pid + 1, epoch)).await.0, PRODUCER_FENCED, "another producer id is fenced");
    assert_eq!(init_v4(&mut client, Some("retry"), (-1, -1)).await, (0, pid, epoch + 2), "a new instance takes over");
    assert_eq!(init_v4(&mut client, Some("retry"), (pid, epoch)).await.0, PRODUCER_FENCED);
    assert_eq!(init_v4(&mut client, Some("retry"), (pid, epoch + 1)).await.0, PRODUCER_FENCED);
    broker.stop().await;
}

/// Issue 10, item 17: transactional ids used to live forever. Like Kafka's
/// `transactional.id.expiration.ms`, an id with no open transaction is forgotten after that long
/// without a request; one with an open transaction is not (its timeout ends the transaction first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_transactional_ids_expire_and_open_transactions_do_not() {
    let broker =
        start(&[("transactional.id.expiration.ms", "500"), ("transaction.abort.timed.out.transaction.cleanup.interval.ms", "100")]).await;
    let mut client = Client::connect(broker.kafka).await;
    assert_eq!(create_topic(&mut client, "tx", 1, &[]).await, 0);
    assert_eq!(init(&mut client, "idle", 60_000).await.0, 0);
    let (_, pid, epoch) = init(&mut client, "busy", 60_000).await;
    assert_eq!(add_partition(&mut client, "busy", pid, epoch, "tx", 0).await, 0);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let request =
        DescribeTransactionsRequest::default().with_transactional_ids(vec![TransactionalId(s("idle")), TransactionalId(s("busy"))]);
    let described: DescribeTransactionsResponse = client.call(ApiKey::DescribeTransactions, 0, &request).await;
    assert_eq!(described.transaction_states[0].error_code, TRANSACTIONAL_ID_NOT_FOUND, "the idle id expired");
    assert_eq!(described.transaction_states[1].error_code, 0);
    assert_eq!(described.transaction_states[1].transaction_state.as_str(), "Ongoing");
    assert_eq!(end(&mut client, "busy", pid, epoch, true).await, 0);
    broker.stop().await;
}

/// Issue 10, item 2: the group-id limit applies to the transactional group APIs too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactional_offset_apis_refuse_a_group_id_over_the_limit() {
    let broker = start(&[]).await;
    let mut client = Client::connect(broker.kafka).await;
    assert_eq!(create_topic(&mut client, "in", 1, &[]).await, 0);
    let (_, pid, epoch) = init(&mut client, "t5", 30_000).await;
    let long = "g".repeat(2_000);
    assert_eq!(send_offsets(&mut client, "t5", pid, epoch, &long, "in", 1).await, (INVALID_GROUP_ID, INVALID_GROUP_ID));
    broker.stop().await;
}

async fn write_markers(client: &mut Client, producer_id: i64, epoch: i16, commit: bool, topic: &str, partitions: Vec<i32>) -> Vec<i16> {
    use kafka_protocol::messages::write_txn_markers_request::{WritableTxnMarker, WritableTxnMarkerTopic};
    let request = WriteTxnMarkersRequest::default().with_markers(vec![
        WritableTxnMarker::default()
            .with_producer_id(ProducerId(producer_id))
            .with_producer_epoch(epoch)
            .with_transaction_result(commit)
            .with_topics(vec![WritableTxnMarkerTopic::default().with_name(TopicName(s(topic))).with_partition_indexes(partitions)]),
    ]);
    let response: WriteTxnMarkersResponse = client.call(ApiKey::WriteTxnMarkers, 1, &request).await;
    response.markers[0].topics[0].partitions.iter().map(|p| p.error_code).collect()
}

/// WriteTxnMarkers is what a coordinator on another broker sends a partition's leader: a commit
/// marker ends the transaction there, and what cannot be written gets Kafka's code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_txn_markers_end_a_transaction_and_refuse_what_they_cannot_write() {
    let broker = start(&[]).await;
    let mut client = Client::connect(broker.kafka).await;
    assert_eq!(create_topic(&mut client, "wm", 1, &[]).await, 0);
    init(&mut client, "wm-1", 60_000).await;
    let (error, pid, epoch) = init(&mut client, "wm-1", 60_000).await;
    assert_eq!((error, epoch), (0, 1), "a second InitProducerId bumps the epoch");
    assert_eq!(add_partition(&mut client, "wm-1", pid, epoch, "wm", 0).await, 0);
    assert_eq!(txn_produce(&mut client, "wm-1", "wm", txn_batch(&["a", "b"], pid, epoch, 0)).await, (0, 0));
    assert_eq!(fetch_isolated(&mut client, "wm", 0, true).await.last_stable_offset, 0);

    assert_eq!(write_markers(&mut client, pid, epoch - 1, true, "wm", vec![0]).await, vec![INVALID_PRODUCER_EPOCH], "a fenced epoch");
    assert_eq!(write_markers(&mut client, pid, epoch, true, "nope", vec![0]).await, vec![UNKNOWN_TOPIC_OR_PARTITION]);
    assert_eq!(write_markers(&mut client, pid, epoch, true, "wm", vec![0]).await, vec![0]);
    let committed = fetch_isolated(&mut client, "wm", 0, true).await;
    assert_eq!(committed.last_stable_offset, 3, "two records and the marker");
    assert_eq!(committed.values.iter().map(|(_, v)| v.as_str()).collect::<Vec<_>>(), vec!["a", "b"]);

    // More partitions than one transaction may have: refused whole, nothing written.
    let codes = write_markers(&mut client, pid, epoch, false, "wm", (0..10_001).map(|_| 0).collect()).await;
    assert!(codes.len() == 10_001 && codes.iter().all(|&c| c == 42), "INVALID_REQUEST for every partition");
    assert_eq!(fetch_isolated(&mut client, "wm", 0, false).await.high_watermark, 3);
    broker.stop().await;
}
