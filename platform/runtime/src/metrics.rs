//! Prometheus metrics per deployment, registered in the broker's registry (served at `/metrics`) under
//! the runtime's kind (`transform`, `connector`, `mirror`). For transforms:
//! `sluice_transform_records_in_total{transform}`, `sluice_transform_records_out_total`,
//! `sluice_transform_dead_lettered_total`, `sluice_transform_errors_total{transform,kind}`,
//! `sluice_transform_process_seconds{transform}` (one observation per module call) and
//! `sluice_transform_lag{transform,partition}` (last stable offset minus position). A connector's
//! series are `sluice_connector_…{connector}`, a mirror's `sluice_mirror_…{mirror}`.

use prometheus::core::Collector;
use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use crate::error::RuntimeError;

pub struct MetricFamilies {
    kind: &'static str,
    records_in: IntCounterVec,
    records_out: IntCounterVec,
    dead_lettered: IntCounterVec,
    errors: IntCounterVec,
    process_seconds: HistogramVec,
    lag: IntGaugeVec,
}

fn metric_error(error: prometheus::Error) -> RuntimeError {
    RuntimeError::Invalid(format!("registering metrics: {error}"))
}

impl MetricFamilies {
    /// Registers the families of one runtime kind (`transform`, `connector`, `mirror`).
    pub fn register(registry: &Registry, kind: &'static str) -> Result<MetricFamilies, RuntimeError> {
        let counter = |name: &str, help: String, labels: &[&str]| {
            IntCounterVec::new(Opts::new(format!("{kind}_{name}"), help), labels).map_err(metric_error)
        };
        let families = MetricFamilies {
            kind,
            records_in: counter("records_in_total", format!("Input records a {kind} consumed (committed)"), &[kind])?,
            records_out: counter("records_out_total", format!("Output records a {kind} wrote (committed)"), &[kind])?,
            dead_lettered: counter("dead_lettered_total", "Input records sent to the dead-letter topic".into(), &[kind])?,
            errors: counter("errors_total", "Module calls that failed, by kind of failure".into(), &[kind, "kind"])?,
            process_seconds: HistogramVec::new(
                HistogramOpts::new(format!("{kind}_process_seconds"), format!("Time of one module call, by {kind}"))
                    .buckets(vec![0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0]),
                &[kind],
            )
            .map_err(metric_error)?,
            lag: IntGaugeVec::new(Opts::new(format!("{kind}_lag"), "Input records not yet processed, by partition"), &[kind, "partition"])
                .map_err(metric_error)?,
        };
        for collector in [
            Box::new(families.records_in.clone()) as Box<dyn Collector>,
            Box::new(families.records_out.clone()),
            Box::new(families.dead_lettered.clone()),
            Box::new(families.errors.clone()),
            Box::new(families.process_seconds.clone()),
            Box::new(families.lag.clone()),
        ] {
            registry.register(collector).map_err(metric_error)?;
        }
        Ok(families)
    }

    /// The series of one deployment.
    pub fn deployment(&self, name: &str) -> DeploymentMetrics {
        DeploymentMetrics {
            name: name.to_string(),
            records_in: self.records_in.with_label_values(&[name]),
            records_out: self.records_out.with_label_values(&[name]),
            dead_lettered: self.dead_lettered.with_label_values(&[name]),
            errors: self.errors.clone(),
            process_seconds: self.process_seconds.with_label_values(&[name]),
            lag: self.lag.clone(),
        }
    }

    /// Drops a deleted deployment's series.
    pub fn forget(&self, name: &str, partitions: usize) {
        let _ = self.records_in.remove_label_values(&[name]);
        let _ = self.records_out.remove_label_values(&[name]);
        let _ = self.dead_lettered.remove_label_values(&[name]);
        let _ = self.process_seconds.remove_label_values(&[name]);
        for p in 0..partitions {
            let _ = self.lag.remove_label_values(&[name, &p.to_string()]);
        }
        tracing::debug!(kind = self.kind, name, "metrics series removed");
    }
}

pub struct DeploymentMetrics {
    name: String,
    pub records_in: IntCounter,
    pub records_out: IntCounter,
    pub dead_lettered: IntCounter,
    errors: IntCounterVec,
    pub process_seconds: Histogram,
    lag: IntGaugeVec,
}

impl DeploymentMetrics {
    pub fn error(&self, kind: &str) -> IntCounter {
        self.errors.with_label_values(&[&self.name, kind])
    }

    pub fn lag(&self, partition: i32) -> IntGauge {
        self.lag.with_label_values(&[&self.name, &partition.to_string()])
    }
}
