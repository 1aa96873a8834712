//! Counting while a benchmark runs: per-connection tallies merged at the end (so the hot path shares
//! nothing but two relaxed atomic counters for the progress bar), and the loop that drives the
//! connection tasks while redrawing progress.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::task::JoinSet;

use super::report::{MB, group_digits};

/// Largest latency the histogram resolves, in microseconds (one hour); larger values saturate.
const LATENCY_MAX_US: u64 = 3_600_000_000;
/// Significant decimal digits kept by the latency histogram.
const LATENCY_SIGNIFICANT_DIGITS: u8 = 3;
/// How often the progress bar is redrawn and rates recomputed.
const PROGRESS_TICK: Duration = Duration::from_millis(250);

/// What one connection did; merged across connections for the summary.
#[derive(Debug, Default)]
pub(super) struct Tally {
    pub(super) requests: u64,
    pub(super) records: u64,
    /// Produce: record value bytes acknowledged. Consume: record batch bytes received.
    pub(super) payload_bytes: u64,
    /// Frame bytes including length prefixes: sent for produce, received for consume.
    pub(super) wire_bytes: u64,
    /// Kafka error code → occurrences (one per failed partition in a response).
    pub(super) errors: BTreeMap<i16, u64>,
    /// Send → response latency in microseconds; `None` where nothing was measured.
    pub(super) latency_us: Option<Histogram<u64>>,
}

impl Tally {
    pub(super) fn with_latency() -> Result<Self> {
        let histogram = Histogram::new_with_bounds(1, LATENCY_MAX_US, LATENCY_SIGNIFICANT_DIGITS)
            .map_err(|e| anyhow!("creating the latency histogram: {e}"))?;
        Ok(Self { latency_us: Some(histogram), ..Self::default() })
    }

    pub(super) fn record_latency(&mut self, latency: Duration) {
        if let Some(histogram) = &mut self.latency_us {
            let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX).max(1);
            histogram.saturating_record(micros);
        }
    }

    pub(super) fn count_error(&mut self, code: i16) {
        *self.errors.entry(code).or_default() += 1;
    }

    pub(super) fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    pub(super) fn merge(&mut self, other: Tally) -> Result<()> {
        self.requests += other.requests;
        self.records += other.records;
        self.payload_bytes += other.payload_bytes;
        self.wire_bytes += other.wire_bytes;
        for (code, n) in other.errors {
            *self.errors.entry(code).or_default() += n;
        }
        match (&mut self.latency_us, other.latency_us) {
            (Some(mine), Some(theirs)) => mine.add(&theirs).map_err(|e| anyhow!("merging latency histograms: {e}"))?,
            (mine @ None, Some(theirs)) => *mine = Some(theirs),
            (_, None) => {}
        }
        Ok(())
    }
}

/// Live counters the progress bar reads; connections add to them as responses arrive.
#[derive(Debug, Default)]
pub(super) struct Meter {
    records: AtomicU64,
    bytes: AtomicU64,
}

impl Meter {
    pub(super) fn add(&self, records: u64, bytes: u64) {
        // Relaxed: these only feed the display and the stop checks, which tolerate a stale read.
        self.records.fetch_add(records, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(super) fn records(&self) -> u64 {
        self.records.load(Ordering::Relaxed)
    }

    fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

/// What the progress bar measures against.
pub(super) enum Goal {
    Records(u64),
    Duration(Duration),
    /// Runs until the data runs out; only a spinner.
    Open,
}

/// The stderr progress bar with instantaneous rates (indicatif hides it when stderr is not a terminal).
struct Progress {
    bar: ProgressBar,
    goal: Goal,
    started: Instant,
    last_at: Instant,
    last_records: u64,
    last_bytes: u64,
}

impl Progress {
    fn new(goal: Goal, started: Instant) -> Self {
        let (bar, template) = match goal {
            Goal::Records(n) => (ProgressBar::new(n), "{spinner} [{elapsed_precise}] {bar:30} {percent:>3}% {msg}"),
            Goal::Duration(d) => {
                (ProgressBar::new(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)), "{spinner} [{elapsed_precise}] {bar:30} {msg}")
            }
            Goal::Open => (ProgressBar::new_spinner(), "{spinner} [{elapsed_precise}] {msg}"),
        };
        // The templates are constants; should one ever fail to parse, the default style still works.
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        Self { bar, goal, started, last_at: started, last_records: 0, last_bytes: 0 }
    }

    fn update(&mut self, meter: &Meter) {
        let now = Instant::now();
        let (records, bytes) = (meter.records(), meter.bytes());
        let dt = now.duration_since(self.last_at).as_secs_f64().max(f64::EPSILON);
        let records_per_s = records.saturating_sub(self.last_records) as f64 / dt;
        let mb_per_s = bytes.saturating_sub(self.last_bytes) as f64 / MB / dt;
        (self.last_at, self.last_records, self.last_bytes) = (now, records, bytes);
        match self.goal {
            Goal::Records(_) => self.bar.set_position(records),
            Goal::Duration(_) => self.bar.set_position(u64::try_from(now.duration_since(self.started).as_millis()).unwrap_or(u64::MAX)),
            Goal::Open => self.bar.tick(),
        }
        self.bar.set_message(format!(
            "{} records  {} rec/s  {mb_per_s:.1} MB/s",
            group_digits(records),
            group_digits(records_per_s as u64)
        ));
    }
}

/// Runs the connection tasks to completion while redrawing progress; the first task error aborts the
/// rest. With `stall_after`, the run fails if no record arrives for that long (`stall_hint` explains).
pub(super) async fn drive(
    mut tasks: JoinSet<Result<Tally>>,
    meter: &Meter,
    goal: Goal,
    started: Instant,
    stall_after: Option<Duration>,
    stall_hint: &str,
) -> Result<Tally> {
    let mut progress = Progress::new(goal, started);
    let mut ticker = tokio::time::interval(PROGRESS_TICK);
    let mut total = Tally::default();
    let (mut last_records, mut last_change) = (0, Instant::now());
    let outcome = loop {
        tokio::select! {
            joined = tasks.join_next() => match joined {
                None => break Ok(()),
                Some(Ok(Ok(tally))) => total.merge(tally)?,
                Some(Ok(Err(e))) => break Err(e),
                Some(Err(e)) => break Err(anyhow!("a benchmark connection task died: {e}")),
            },
            _ = ticker.tick() => {
                progress.update(meter);
                let records = meter.records();
                if records != last_records {
                    (last_records, last_change) = (records, Instant::now());
                } else if let Some(limit) = stall_after && last_change.elapsed() >= limit {
                    break Err(anyhow!(
                        "no records arrived for {}s ({} so far); {stall_hint}",
                        limit.as_secs(),
                        group_digits(records)
                    ));
                }
            }
        }
    };
    progress.bar.finish_and_clear();
    if let Err(e) = outcome {
        tasks.abort_all();
        return Err(e);
    }
    Ok(total)
}
