//! Prometheus metrics per transform, registered in the broker's registry (served at `/metrics`):
//! `sluice_transform_records_in_total{transform}`, `sluice_transform_records_out_total`,
//! `sluice_transform_dead_lettered_total`, `sluice_transform_errors_total{transform,kind}`,
//! `sluice_transform_process_seconds{transform}` (one observation per batch) and
//! `sluice_transform_lag{transform,partition}` (last stable offset minus position).

use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

pub struct MetricFamilies {
    records_in: IntCounterVec,
    records_out: IntCounterVec,
    dead_lettered: IntCounterVec,
    errors: IntCounterVec,
    process_seconds: HistogramVec,
    lag: IntGaugeVec,
}

impl MetricFamilies {
    pub fn register(registry: &Registry) -> Result<MetricFamilies, String> {
        let counter =
            |name: &str, help: &str, labels: &[&str]| IntCounterVec::new(Opts::new(name, help), labels).map_err(|e| e.to_string());
        let families = MetricFamilies {
            records_in: counter("transform_records_in_total", "Input records a transform consumed (committed)", &["transform"])?,
            records_out: counter("transform_records_out_total", "Output records a transform wrote (committed)", &["transform"])?,
            dead_lettered: counter("transform_dead_lettered_total", "Input records sent to the dead-letter topic", &["transform"])?,
            errors: counter("transform_errors_total", "Batches the module failed on, by kind", &["transform", "kind"])?,
            process_seconds: HistogramVec::new(
                HistogramOpts::new("transform_process_seconds", "Time of one process call (one batch), by transform")
                    .buckets(vec![0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0]),
                &["transform"],
            )
            .map_err(|e| e.to_string())?,
            lag: IntGaugeVec::new(
                Opts::new("transform_lag", "Input records not yet transformed, by partition"),
                &["transform", "partition"],
            )
            .map_err(|e| e.to_string())?,
        };
        for collector in [
            Box::new(families.records_in.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(families.records_out.clone()),
            Box::new(families.dead_lettered.clone()),
            Box::new(families.errors.clone()),
            Box::new(families.process_seconds.clone()),
            Box::new(families.lag.clone()),
        ] {
            registry.register(collector).map_err(|e| e.to_string())?;
        }
        Ok(families)
    }

    pub fn for_transform(&self, name: &str) -> TransformMetrics {
        TransformMetrics {
            name: name.to_string(),
            records_in: self.records_in.with_label_values(&[name]),
            records_out: self.records_out.with_label_values(&[name]),
            dead_lettered: self.dead_lettered.with_label_values(&[name]),
            errors: self.errors.clone(),
            process_seconds: self.process_seconds.with_label_values(&[name]),
            lag: self.lag.clone(),
        }
    }

    /// Drops a deleted transform's series.
    pub fn forget(&self, name: &str, partitions: usize) {
        let _ = self.records_in.remove_label_values(&[name]);
        let _ = self.records_out.remove_label_values(&[name]);
        let _ = self.dead_lettered.remove_label_values(&[name]);
        let _ = self.process_seconds.remove_label_values(&[name]);
        for p in 0..partitions {
            let _ = self.lag.remove_label_values(&[name, &p.to_string()]);
        }
    }
}

pub struct TransformMetrics {
    name: String,
    pub records_in: IntCounter,
    pub records_out: IntCounter,
    pub dead_lettered: IntCounter,
    errors: IntCounterVec,
    pub process_seconds: Histogram,
    lag: IntGaugeVec,
}

impl TransformMetrics {
    pub fn error(&self, kind: &str) -> IntCounter {
        self.errors.with_label_values(&[&self.name, kind])
    }

    pub fn lag(&self, partition: i32) -> IntGauge {
        self.lag.with_label_values(&[&self.name, &partition.to_string()])
    }
}
