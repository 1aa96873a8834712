//! Time a host import spends waiting on something outside the guest is not charged to the guest's
//! CPU bound — the mechanism the `sql` capability will use while a database answers — and the
//! guest's own time still is. `fixtures/host-wait` calls `sluice-test:host-wait/sleep`, a host
//! import linked only in this crate's tests (feature `test-host-imports`).

mod common;

use std::time::{Duration, Instant};

use common::{engine, input, instance_config, load, out};
use sluice_wasm::{Limits, PluginError};

fn limits(cpu_ms_per_call: u64) -> Limits {
    Limits { memory_bytes: 32 << 20, cpu_ms_per_call }
}

#[test]
fn time_spent_waiting_in_a_host_import_is_not_charged_to_the_cpu_bound() {
    let engine = engine();
    let (mut config, _) = instance_config(&[("sleep-ms", "150")]);
    config.limits = limits(200);
    let mut instance = load(&engine, "fixture-host-wait").instantiate(config, out()).unwrap();
    // Four records, 150 ms of host wait each: 600 ms of wall-clock time under a 200 ms CPU bound.
    let batch: Vec<_> = (0..4).map(|i| input(b"x", i)).collect();
    let started = Instant::now();
    let output = instance.process(&batch).unwrap();
    assert!(started.elapsed() >= Duration::from_millis(600), "the host waited {:?}", started.elapsed());
    assert_eq!(output.len(), 4);
    // Again on the same instance: each call starts with a clean account.
    assert_eq!(instance.process(&batch).unwrap().len(), 4);
}

#[test]
fn the_guests_own_time_around_host_waits_is_still_bounded() {
    let engine = engine();
    let (mut config, _) = instance_config(&[("sleep-ms", "300"), ("spin", "true")]);
    config.limits = limits(200);
    let mut instance = load(&engine, "fixture-host-wait").instantiate(config, out()).unwrap();
    let started = Instant::now();
    let error = instance.process(&[input(b"x", 0)]).unwrap_err();
    let elapsed = started.elapsed();
    assert_eq!(error, PluginError::CpuTimeout { limit_ms: 200 });
    // 300 ms waiting (uncharged), then the spin is stopped after its own 200 ms.
    assert!(elapsed >= Duration::from_millis(490) && elapsed < Duration::from_secs(3), "stopped after {elapsed:?}");
}
