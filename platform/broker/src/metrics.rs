//! Prometheus metrics. Counters on the hot path are resolved to handles once (per API key at start,
//! per topic at topic creation) so a request costs an atomic add, not a label lookup. Gauges that
//! describe state (log sizes, group lag) are computed when `/metrics` is scraped.

use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use kafka_protocol::messages::ApiKey;

/// Per-API handles, indexed by api key.
pub struct ApiMetrics {
    pub requests: IntCounter,
    pub errors: IntCounter,
    pub latency: Histogram,
}

pub struct TopicMetrics {
    pub bytes_in: IntCounter,
    pub bytes_out: IntCounter,
    pub records_in: IntCounter,
    pub records_out: IntCounter,
}

pub struct Metrics {
    pub registry: Registry,
    apis: Vec<Option<ApiMetrics>>,
    bytes_in: IntCounterVec,
    bytes_out: IntCounterVec,
    records_in: IntCounterVec,
    records_out: IntCounterVec,
    pub connections: IntGauge,
    pub groups: IntGauge,
    pub group_lag: IntGaugeVec,
    pub log_size_bytes: IntGaugeVec,
    pub log_end_offset: IntGaugeVec,
    pub unstable_records: IntGaugeVec,
    pub transactions_finished: IntGaugeVec,
    pub transactions_ongoing: IntGauge,
    pub decode_errors: IntCounter,
    /// Appends and Fetch reads that took `file_calls::SLOW_FILE_CALL` or more (see `file_calls`).
    pub slow_file_calls: IntCounter,
    /// Connections closed at accept because their address had `max.connections.per.ip` open.
    pub connections_refused: IntCounter,
    /// Request bytes being read or handled, against `queued.max.request.bytes` (set at scrape time).
    pub request_bytes_in_flight: IntGauge,
    /// Record bytes of Fetch replies queued to sockets and not yet sent (set at scrape time).
    pub fetch_reply_bytes_unsent: IntGauge,
    /// Partitions that could not be opened at start-up and answer KAFKA_STORAGE_ERROR.
    pub offline_partitions: IntGauge,
    /// Segments whose corrupt tail recovery kept aside at start-up (see the storage crate's API.md).
    pub quarantined_segments: IntGauge,
    /// The controller quorum as this node sees it (set at scrape time).
    pub controller_is_leader: IntGauge,
    pub controller_term: IntGauge,
    pub registered_brokers: IntGauge,
    pub fenced_brokers: IntGauge,
    pub leaderless_partitions: IntGauge,
    pub under_replicated_partitions: IntGauge,
    pub reassigning_partitions: IntGauge,
}

fn must<T>(result: prometheus::Result<T>) -> T {
    // Metric names and labels are constants of this file; a failure here is a programming error
    // caught by the first test that builds a broker.
    result.expect("metric definition")
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new_custom(Some("sluice".into()), None).expect("registry");
        let requests = IntCounterVec::new(Opts::new("requests_total", "Kafka requests handled, by API"), &["api"]);
        let errors = IntCounterVec::new(
            Opts::new("request_errors_total", "Kafka requests that could not be decoded (malformed, or an unsupported version), by API"),
            &["api"],
        );
        let latency = HistogramVec::new(
            HistogramOpts::new("request_duration_seconds", "Time from a request's arrival to its response being queued, by API")
                .buckets(vec![0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
            &["api"],
        );
        let (requests, errors, latency) = (must(requests), must(errors), must(latency));
        let counter_vec = |name: &str, help: &str, labels: &[&str]| must(IntCounterVec::new(Opts::new(name, help), labels));
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| must(IntGaugeVec::new(Opts::new(name, help), labels));
        let metrics = Metrics {
            apis: Vec::new(),
            bytes_in: counter_vec("bytes_in_total", "Record batch bytes appended, by topic", &["topic"]),
            bytes_out: counter_vec("bytes_out_total", "Record batch bytes served to consumers, by topic", &["topic"]),
            records_in: counter_vec("records_in_total", "Records appended, by topic", &["topic"]),
            records_out: counter_vec(
                "records_out_total",
                "Offsets served to consumers, by topic: for each partition of a Fetch, from its fetch offset to the end of the batches returned",
                &["topic"],
            ),
            connections: must(IntGauge::new("active_connections", "Open client connections")),
            groups: must(IntGauge::new("consumer_groups", "Consumer groups known to the coordinator")),
            group_lag: gauge_vec("consumer_group_lag", "High watermark minus committed offset", &["group", "topic", "partition"]),
            log_size_bytes: gauge_vec("log_size_bytes", "Bytes on disk, by partition", &["topic", "partition"]),
            log_end_offset: gauge_vec("log_end_offset", "Next offset to be assigned, by partition", &["topic", "partition"]),
            unstable_records: gauge_vec(
                "unstable_offsets",
                "High watermark minus last stable offset: offsets held back from read_committed consumers by open transactions",
                &["topic", "partition"],
            ),
            transactions_finished: gauge_vec(
                "transactions_finished",
                "Transactions finished since start, by outcome (committed, aborted, timed_out, fenced)",
                &["outcome"],
            ),
            transactions_ongoing: must(IntGauge::new("transactions_ongoing", "Transactions currently open")),
            decode_errors: must(IntCounter::new("malformed_requests_total", "Frames that could not be decoded")),
            slow_file_calls: must(IntCounter::new(
                "slow_file_calls_total",
                "Appends and Fetch reads that took 5 ms or more (the kernel throttling writers, reads waiting on the disk, a segment roll's fsync); two within 100 ms move the next 500 ms of them off the worker threads",
            )),
            request_bytes_in_flight: must(IntGauge::new(
                "request_bytes_in_flight",
                "Bytes of requests being read or handled, across connections (bounded by queued.max.request.bytes)",
            )),
            fetch_reply_bytes_unsent: must(IntGauge::new(
                "fetch_reply_bytes_unsent",
                "Record bytes of Fetch replies queued to sockets and not yet sent (file ranges sent with sendfile, not held in memory)",
            )),
            connections_refused: must(IntCounter::new(
                "connections_refused_total",
                "Connections closed at accept because their address reached max.connections.per.ip",
            )),
            offline_partitions: must(IntGauge::new(
                "offline_partitions",
                "Partitions that could not be opened at start-up; they answer KAFKA_STORAGE_ERROR until a restart opens them",
            )),
            quarantined_segments: must(IntGauge::new(
                "quarantined_segments",
                "Segments in which recovery found a corrupt batch in acknowledged data; the bytes from it on are kept aside and not served",
            )),
            controller_is_leader: must(IntGauge::new(
                "controller_is_leader",
                "1 if this node is the leader of the controller quorum (the active controller), else 0",
            )),
            controller_term: must(IntGauge::new("controller_term", "The controller quorum's Raft term as this node knows it")),
            registered_brokers: must(IntGauge::new("registered_brokers", "Brokers registered with the controller quorum")),
            fenced_brokers: must(IntGauge::new(
                "fenced_brokers",
                "Registered brokers the active controller fenced because their heartbeats stopped",
            )),
            leaderless_partitions: must(IntGauge::new(
                "leaderless_partitions",
                "Partitions in the cluster with no live in-sync replica to lead them (Kafka's OfflinePartitionsCount); clients cannot use them",
            )),
            under_replicated_partitions: must(IntGauge::new(
                "under_replicated_partitions",
                "Partitions in the cluster whose in-sync replica set is smaller than their replica set",
            )),
            reassigning_partitions: must(IntGauge::new(
                "reassigning_partitions",
                "Partitions in the cluster being moved to other replicas (Kafka's ReassigningPartitions)",
            )),
            registry,
        };
        let mut metrics = metrics;
        for collector in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(errors.clone()),
            Box::new(latency.clone()),
            Box::new(metrics.bytes_in.clone()),
            Box::new(metrics.bytes_out.clone()),
            Box::new(metrics.records_in.clone()),
            Box::new(metrics.records_out.clone()),
            Box::new(metrics.connections.clone()),
            Box::new(metrics.groups.clone()),
            Box::new(metrics.group_lag.clone()),
            Box::new(metrics.log_size_bytes.clone()),
            Box::new(metrics.log_end_offset.clone()),
            Box::new(metrics.unstable_records.clone()),
            Box::new(metrics.transactions_finished.clone()),
            Box::new(metrics.transactions_ongoing.clone()),
            Box::new(metrics.decode_errors.clone()),
            Box::new(metrics.slow_file_calls.clone()),
            Box::new(metrics.connections_refused.clone()),
            Box::new(metrics.request_bytes_in_flight.clone()),
            Box::new(metrics.fetch_reply_bytes_unsent.clone()),
            Box::new(metrics.offline_partitions.clone()),
            Box::new(metrics.controller_is_leader.clone()),
            Box::new(metrics.controller_term.clone()),
            Box::new(metrics.registered_brokers.clone()),
            Box::new(metrics.fenced_brokers.clone()),
            Box::new(metrics.leaderless_partitions.clone()),
            Box::new(metrics.under_replicated_partitions.clone()),
            Box::new(metrics.reassigning_partitions.clone()),
            Box::new(metrics.quarantined_segments.clone()),
        ] {
            must(metrics.registry.register(collector));
        }
        let max_key = sluice_protocol::SUPPORTED_APIS.iter().map(|(k, _, _)| *k as usize).max().unwrap_or(0);
        metrics.apis = (0..=max_key).map(|_| None).collect();
        for &(api_key, _, _) in sluice_protocol::SUPPORTED_APIS {
            let name = format!("{api_key:?}");
            metrics.apis[api_key as usize] = Some(ApiMetrics {
                requests: requests.with_label_values(&[&name]),
                errors: errors.with_label_values(&[&name]),
                latency: latency.with_label_values(&[&name]),
            });
        }
        metrics
    }

    pub fn api(&self, api_key: ApiKey) -> Option<&ApiMetrics> {
        self.apis.get(api_key as usize).and_then(Option::as_ref)
    }

    pub fn topic(&self, topic: &str) -> TopicMetrics {
        TopicMetrics {
            bytes_in: self.bytes_in.with_label_values(&[topic]),
            bytes_out: self.bytes_out.with_label_values(&[topic]),
            records_in: self.records_in.with_label_values(&[topic]),
            records_out: self.records_out.with_label_values(&[topic]),
        }
    }

    /// Drops a deleted topic's series so they stop being exported.
    /// Drops the gauges of one partition this broker no longer holds (it was moved away).
    pub fn forget_partition(&self, topic: &str, partition: i32) {
        let p = partition.to_string();
        let _ = self.log_size_bytes.remove_label_values(&[topic, &p]);
        let _ = self.log_end_offset.remove_label_values(&[topic, &p]);
    }

    pub fn forget_topic(&self, topic: &str, partitions: i32) {
        for vec in [&self.bytes_in, &self.bytes_out, &self.records_in, &self.records_out] {
            let _ = vec.remove_label_values(&[topic]);
        }
        for p in 0..partitions {
            let p = p.to_string();
            let _ = self.log_size_bytes.remove_label_values(&[topic, &p]);
            let _ = self.log_end_offset.remove_label_values(&[topic, &p]);
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
