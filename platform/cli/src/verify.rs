//! `sluice verify produce|consume`: the verifiable producer and consumer. `produce` writes records whose
//! values are the sequence numbers 0..N and reports how many were acknowledged, with latency
//! percentiles; `consume` reads a topic from the beginning to its end and checks that the sequence is
//! complete: no gaps, no duplicates, nothing unparsable. Both print a table or `--json`, and exit 1 when
//! something was lost — a quick end-to-end check of a network path and a cluster.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{Result, bail};
use bytes::Bytes;
use clap::{Args, Subcommand};
use serde_json::json;

use crate::consume::{Consumer, Start};
use crate::output::{group_digits, print_json, print_table, table};
use crate::produce::{Producer, ProducerOptions, now_ms, sleep_until};
use sluice_client::Client;
use sluice_client::ProducerRecord;

/// Largest `--count`: the consumer keeps one byte per sequence number.
const VERIFY_RECORDS_MAX: u64 = 100_000_000;
/// Gaps listed in the report; the count is always exact.
const GAPS_SHOWN_MAX: usize = 20;

#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub common: crate::Common,
    #[command(subcommand)]
    pub cmd: VerifyCmd,
}

#[derive(Debug, Subcommand)]
pub enum VerifyCmd {
    /// Produce the sequence 0..COUNT and report acknowledged / failed records and latency (kafka-verifiable-producer.sh).
    #[command(after_help = "Example:\n  sluice verify produce --topic check --count 10000 --acks all --json")]
    Produce {
        /// Topic to write to (must exist).
        #[arg(long)]
        topic: String,
        /// Records to produce.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=VERIFY_RECORDS_MAX))]
        count: u64,
        #[command(flatten)]
        producer: ProducerOptions,
    },
    /// Read a topic from the beginning to its end and check the sequence for gaps and duplicates (kafka-verifiable-consumer.sh).
    #[command(after_help = "Example:\n  sluice verify consume --topic check --expect 10000")]
    Consume {
        /// Topic to read.
        #[arg(long)]
        topic: String,
        /// The sequence should be exactly 0..N [default: 0 up to the largest number seen].
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=VERIFY_RECORDS_MAX))]
        expect: Option<u64>,
    },
}

pub(crate) async fn run(cmd: VerifyCmd, brokers: &[String], as_json: bool) -> Result<()> {
    let in_flight = match &cmd {
        VerifyCmd::Produce { producer, .. } => producer.in_flight as usize,
        VerifyCmd::Consume { .. } => sluice_client::connection::MAX_IN_FLIGHT_DEFAULT,
    };
    let client = crate::conn::connect_with_in_flight(brokers, in_flight).await?;
    match cmd {
        VerifyCmd::Produce { topic, count, producer } => produce(&client, &topic, count, producer, as_json).await,
        VerifyCmd::Consume { topic, expect } => consume(&client, &topic, expect, as_json).await,
    }
}

async fn produce(client: &Client, topic: &str, count: u64, options: ProducerOptions, as_json: bool) -> Result<()> {
    let mut producer = Producer::new(client, topic, options).await?;
    let started = Instant::now();
    for seq in 0..count {
        let record = ProducerRecord { key: None, value: Bytes::from(seq.to_string()), headers: Vec::new(), timestamp_ms: now_ms() };
        producer.send(client, record, &|| format!("record {seq}")).await?;
        if producer.next_deadline().is_some_and(|d| d <= Instant::now()) {
            producer.flush_expired(client).await?;
        }
        // Let acknowledgements and lingering batches progress between records.
        if seq % 1024 == 0 {
            tokio::select! {
                biased;
                _ = sleep_until(producer.next_deadline()) => producer.flush_expired(client).await?,
                _ = tokio::task::yield_now() => {}
            }
        }
    }
    let partitions = producer.partition_count();
    let tally = producer.close(client).await?;
    let seconds = started.elapsed().as_secs_f64();
    let round = |v: Option<f64>| v.map(|v| (v * 1000.0).round() / 1000.0);
    if as_json {
        print_json(&json!({
            "topic": topic,
            "partitions": partitions,
            "sent": count,
            "acked": tally.acked,
            "failed": tally.failed,
            "seconds": (seconds * 1000.0).round() / 1000.0,
            "records_per_s": if seconds > 0.0 { (tally.acked as f64 / seconds).round() } else { 0.0 },
            "latency_ms": {"p50": round(tally.latency_ms(0.5)), "p99": round(tally.latency_ms(0.99)), "max": round(tally.latency_ms(1.0))},
            "errors": tally.errors.iter().map(|(c, n)| (sluice_client::codes::error_label(*c), *n)).collect::<BTreeMap<_, _>>(),
        }));
    } else {
        let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2} ms"));
        let mut t = table(["SENT", "ACKED", "FAILED", "RECORDS/S", "P50", "P99", "MAX"]);
        t.add_row(vec![
            group_digits(count),
            group_digits(tally.acked),
            group_digits(tally.failed),
            group_digits(if seconds > 0.0 { (tally.acked as f64 / seconds) as u64 } else { 0 }),
            ms(tally.latency_ms(0.5)),
            ms(tally.latency_ms(0.99)),
            ms(tally.latency_ms(1.0)),
        ]);
        print_table(&t);
    }
    if tally.failed > 0 || tally.acked < count {
        bail!("{} of {count} records were not acknowledged: {}", count - tally.acked.min(count), tally.describe_errors());
    }
    Ok(())
}

/// What the consumer saw of the sequence.
#[derive(Debug, Default, PartialEq, Eq)]
struct Check {
    records: u64,
    unique: u64,
    duplicates: u64,
    invalid: u64,
    missing: u64,
    /// The first gaps as inclusive ranges.
    gaps: Vec<(u64, u64)>,
}

/// Counts per sequence number; one byte each, saturating.
struct Seen(Vec<u8>);

impl Seen {
    fn add(&mut self, check: &mut Check, value: Option<&[u8]>) {
        check.records += 1;
        let seq =
            value.and_then(|v| std::str::from_utf8(v).ok()).and_then(|s| s.trim().parse::<u64>().ok()).filter(|&s| s < VERIFY_RECORDS_MAX);
        let Some(seq) = seq else {
            check.invalid += 1;
            return;
        };
        let idx = seq as usize;
        if idx >= self.0.len() {
            self.0.resize(idx + 1, 0);
        }
        if self.0[idx] > 0 {
            check.duplicates += 1;
        } else {
            check.unique += 1;
        }
        self.0[idx] = self.0[idx].saturating_add(1);
    }

    fn finish(&self, check: &mut Check, expect: Option<u64>) {
        let end = expect.map_or(self.0.len(), |n| n as usize);
        let mut idx = 0;
        while idx < end {
            if self.0.get(idx).copied().unwrap_or(0) == 0 {
                let start = idx;
                while idx < end && self.0.get(idx).copied().unwrap_or(0) == 0 {
                    idx += 1;
                }
                check.missing += (idx - start) as u64;
                if check.gaps.len() < GAPS_SHOWN_MAX {
                    check.gaps.push((start as u64, idx as u64 - 1));
                }
            } else {
                idx += 1;
            }
        }
        // With an expected count, numbers at or past it are unexpected, so they count as invalid.
        if let Some(n) = expect {
            let beyond: u64 = self.0.iter().skip(n as usize).filter(|&&c| c > 0).count() as u64;
            check.invalid += beyond;
            check.unique -= beyond;
        }
    }
}

async fn consume(client: &Client, topic_name: &str, expect: Option<u64>, as_json: bool) -> Result<()> {
    let topic = client.topic(topic_name).await?;
    let partitions: Vec<i32> = topic.partitions.iter().map(|p| p.id).collect();
    let mut consumer = Consumer::new(topic, true)?;
    consumer.assign(client, &partitions, Start::Earliest, &BTreeMap::new()).await?;
    let started = Instant::now();
    let mut check = Check::default();
    let mut seen = Seen(Vec::new());
    loop {
        for (_, record) in consumer.poll(client).await? {
            seen.add(&mut check, record.value.as_deref());
        }
        if consumer.caught_up() {
            break;
        }
    }
    seen.finish(&mut check, expect);
    let seconds = started.elapsed().as_secs_f64();
    let ok = check.missing == 0 && check.duplicates == 0 && check.invalid == 0;
    if as_json {
        print_json(&json!({
            "topic": topic_name,
            "records": check.records,
            "unique": check.unique,
            "duplicates": check.duplicates,
            "missing": check.missing,
            "invalid": check.invalid,
            "gaps": check.gaps.iter().map(|(a, b)| json!([a, b])).collect::<Vec<_>>(),
            "seconds": (seconds * 1000.0).round() / 1000.0,
            "ok": ok,
        }));
    } else {
        let mut t = table(["RECORDS", "UNIQUE", "DUPLICATES", "MISSING", "INVALID", "RESULT"]);
        t.add_row(vec![
            group_digits(check.records),
            group_digits(check.unique),
            group_digits(check.duplicates),
            group_digits(check.missing),
            group_digits(check.invalid),
            if ok { "ok".to_string() } else { "FAILED".to_string() },
        ]);
        print_table(&t);
        if !check.gaps.is_empty() {
            let gaps: Vec<String> = check.gaps.iter().map(|(a, b)| if a == b { a.to_string() } else { format!("{a}-{b}") }).collect();
            println!("missing: {}", gaps.join(", "));
        }
    }
    if !ok {
        bail!(
            "sequence check failed on `{topic_name}`: {} missing, {} duplicated, {} not a sequence number",
            check.missing,
            check.duplicates,
            check.invalid
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_and_duplicates_are_counted() {
        let mut check = Check::default();
        let mut seen = Seen(Vec::new());
        for v in ["0", "1", "1", "4", "x", "5"] {
            seen.add(&mut check, Some(v.as_bytes()));
        }
        seen.add(&mut check, None);
        seen.finish(&mut check, Some(7));
        assert_eq!(check, Check { records: 7, unique: 4, duplicates: 1, invalid: 2, missing: 3, gaps: vec![(2, 3), (6, 6)] });
    }
}
