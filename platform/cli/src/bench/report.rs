//! The end-of-run summary: a small table for people or one JSON object for scripts, both on stdout.

use std::fmt::Write as _;

use serde_json::{Map, Value, json};

use super::stats::Tally;

/// Bytes per "MB" in reported rates: 2^20, as Kafka's own perf tools count.
pub(super) const MB: f64 = 1024.0 * 1024.0;

/// Everything the summary shows.
pub(super) struct Summary {
    pub(super) mode: &'static str,
    /// One line describing the run's settings, shown above the table.
    pub(super) settings: String,
    pub(super) seconds: f64,
    pub(super) tally: Tally,
    /// Why latency is absent, when it is (e.g. acks=0).
    pub(super) latency_note: &'static str,
}

impl Summary {
    /// A run where every request failed measured nothing; that is an error, not a result.
    pub(super) fn fail_if_nothing_succeeded(&self, what: &str) -> anyhow::Result<()> {
        if self.tally.records == 0 && self.tally.error_count() > 0 {
            anyhow::bail!("every {what} failed: {}", describe_errors(&self.tally.errors));
        }
        Ok(())
    }

    fn rate(&self, amount: u64) -> f64 {
        if self.seconds > 0.0 { amount as f64 / self.seconds } else { 0.0 }
    }

    /// Latency quantile in milliseconds, if latency was measured.
    fn latency_ms(&self, quantile: Option<f64>) -> Option<f64> {
        let histogram = self.tally.latency_us.as_ref().filter(|h| !h.is_empty())?;
        let micros = match quantile {
            Some(q) => histogram.value_at_quantile(q),
            None => histogram.max(),
        };
        Some(micros as f64 / 1000.0)
    }

    pub(super) fn print(&self, as_json: bool) {
        if as_json {
            println!("{}", self.to_json());
        } else {
            print!("{}", self.to_table());
        }
    }

    pub(super) fn to_json(&self) -> Value {
        let errors: Map<String, Value> = self.tally.errors.iter().map(|(code, n)| (code.to_string(), json!(n))).collect();
        json!({
            "mode": self.mode,
            "records": self.tally.records,
            "bytes": self.tally.payload_bytes,
            "wire_bytes": self.tally.wire_bytes,
            "seconds": round3(self.seconds),
            "mb_per_s": round3(self.rate(self.tally.payload_bytes) / MB),
            "wire_mb_per_s": round3(self.rate(self.tally.wire_bytes) / MB),
            "records_per_s": round3(self.rate(self.tally.records)),
            "requests": self.tally.requests,
            "p50_ms": self.latency_ms(Some(0.5)).map(round3),
            "p99_ms": self.latency_ms(Some(0.99)).map(round3),
            "p999_ms": self.latency_ms(Some(0.999)).map(round3),
            "max_ms": self.latency_ms(None).map(round3),
            "errors": errors,
        })
    }

    pub(super) fn to_table(&self) -> String {
        let t = &self.tally;
        let mut out = String::new();
        let mut row = |key: &str, value: String| {
            let _ = writeln!(out, "  {key:<14} {value}");
        };
        row("records", group_digits(t.records));
        row("seconds", format!("{:.3}", self.seconds));
        row("records/s", group_digits(self.rate(t.records) as u64));
        row(
            "MB/s",
            format!("{:.2}  ({:.2} MB of {})", self.rate(t.payload_bytes) / MB, t.payload_bytes as f64 / MB, payload_name(self.mode)),
        );
        row("wire MB/s", format!("{:.2}  ({:.2} MB in frames)", self.rate(t.wire_bytes) / MB, t.wire_bytes as f64 / MB));
        row("requests", group_digits(t.requests));
        let latency = match [Some(0.5), Some(0.99), Some(0.999), None].map(|q| self.latency_ms(q)) {
            [Some(p50), Some(p99), Some(p999), Some(max)] => {
                format!("p50 {p50:.3}  p99 {p99:.3}  p99.9 {p999:.3}  max {max:.3}")
            }
            _ => self.latency_note.to_string(),
        };
        row("latency ms", latency);
        row("errors", if t.errors.is_empty() { "none".to_string() } else { describe_errors(&t.errors) });
        format!("{} {}\n{out}", self.mode, self.settings)
    }
}

fn payload_name(mode: &str) -> &'static str {
    if mode == "produce" { "record values" } else { "record batches" }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

pub(super) use crate::output::group_digits;
pub(super) use sluice_client::codes::error_label;

/// `{3: 12, 6: 1}` → `UNKNOWN_TOPIC_OR_PARTITION (3) ×12, NOT_LEADER_OR_FOLLOWER (6) ×1`.
pub(super) fn describe_errors(errors: &std::collections::BTreeMap<i16, u64>) -> String {
    errors.iter().map(|(code, n)| format!("{} ×{}", error_label(*code), group_digits(*n))).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_digits() {
        assert_eq!(error_label(3), "UNKNOWN_TOPIC_OR_PARTITION (3)");
        assert_eq!(error_label(-1), "UNKNOWN_SERVER_ERROR (-1)");
        assert_eq!(error_label(9999), "UNKNOWN_ERROR_CODE (9999)");
        assert_eq!(group_digits(0), "0");
        assert_eq!(group_digits(999), "999");
        assert_eq!(group_digits(1_234_567), "1,234,567");
    }

    #[test]
    fn json_has_the_documented_keys() {
        let mut tally = Tally::with_latency().expect("histogram");
        tally.records = 10;
        tally.payload_bytes = 1000;
        tally.record_latency(std::time::Duration::from_millis(2));
        tally.count_error(6);
        let summary = Summary { mode: "produce", settings: String::new(), seconds: 2.0, tally, latency_note: "" };
        let value = summary.to_json();
        for key in ["mode", "records", "bytes", "seconds", "mb_per_s", "records_per_s", "p50_ms", "p99_ms", "p999_ms", "max_ms", "errors"] {
            assert!(value.get(key).is_some(), "missing {key}");
        }
        assert_eq!(value["records_per_s"], json!(5.0));
        assert_eq!(value["errors"]["6"], json!(1));
        assert!(value["p50_ms"].as_f64().is_some_and(|ms| (ms - 2.0).abs() < 0.01));
    }
}
