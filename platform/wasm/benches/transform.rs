//! `cargo bench -p sluice-wasm --bench transform` — the numbers behind BENCHMARKS.md:
//!
//! 1. identity: records/s through one instance on one thread, 100-byte values, 1000 per batch, with
//!    the batch as a list of records (`process`) and as one buffer (`process_batch`, the data path);
//! 2. json-filter: the same filter code natively and in Wasm (both ways), records/s and the Wasm
//!    overhead;
//! 3. deploy: compile + world check + instantiate of identity and of a component with ~2 MB of code
//!    (`fixtures/bulky`): tiered (until an instance runs Winch's code, until Cranelift's is
//!    ready), Cranelift only, and from the cache.
//!
//! Set `BENCH_SECONDS` to change the time per throughput measurement (default 3), and
//! `BENCH_COMPILERS=baseline` to run the throughput parts on Winch's code instead of Cranelift's.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{guest, instance_config, out};
use sluice_wasm::{Compilers, Engine, EngineConfig, InputBatch, InputRecord, Tier};

const BATCH_RECORDS: usize = 1_000;
const VALUE_BYTES: usize = 100;

fn main() {
    let seconds: f64 = std::env::var("BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(3.0);
    let budget = Duration::from_secs_f64(seconds);
    // `BENCH_ONLY=identity|json-filter|json-filter-wasm|deploy` runs one part (for profiling).
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let run = |part: &str| only.is_empty() || only == part;
    if run("identity") {
        identity(budget);
    }
    if run("json-filter") || only == "json-filter-wasm" {
        json_filter(budget, only != "json-filter-wasm");
    }
    if run("deploy") {
        deploy();
    }
}

/// Run `f` on batches until `budget` is spent; records per second.
fn throughput(budget: Duration, records_per_call: usize, mut f: impl FnMut() -> usize) -> f64 {
    for _ in 0..20 {
        f();
    }
    let started = Instant::now();
    let mut records = 0usize;
    while started.elapsed() < budget {
        let kept = f();
        std::hint::black_box(kept);
        records += records_per_call;
    }
    records as f64 / started.elapsed().as_secs_f64()
}

/// The engine the throughput parts run on: Cranelift's code (what every instance runs after the
/// tier-up), or Winch's with `BENCH_COMPILERS=baseline`.
fn throughput_engine() -> Engine {
    let compilers = match std::env::var("BENCH_COMPILERS").as_deref() {
        Ok("baseline") => Compilers::Baseline,
        _ => Compilers::Optimized,
    };
    Engine::new(EngineConfig { compilers, ..EngineConfig::default() }).unwrap()
}

fn identity(budget: Duration) {
    let engine = throughput_engine();
    let module = engine.load_transform(&guest("identity")).unwrap();
    let (config, _) = instance_config(&[]);
    let mut instance = module.instantiate(config, out()).unwrap();
    let batch: Vec<InputRecord> = (0..BATCH_RECORDS as i64)
        .map(|offset| InputRecord {
            key: None,
            value: Some(vec![b'x'; VALUE_BYTES]),
            headers: Vec::new(),
            timestamp_ms: 1_700_000_000_000,
            partition: 0,
            offset,
        })
        .collect();
    let rate = throughput(budget, BATCH_RECORDS, || instance.process(&batch).unwrap().len());
    println!(
        "identity (wasm, records): {:.2} M records/s, {:.0} MB/s of values ({VALUE_BYTES} B values, {BATCH_RECORDS} per batch, one thread)",
        rate / 1e6,
        rate * VALUE_BYTES as f64 / 1e6
    );
    let encoded = one_buffer(&batch);
    let rate = throughput(budget, BATCH_RECORDS, || instance.process_batch(encoded.all()).unwrap().len());
    println!(
        "identity (wasm, one buffer): {:.2} M records/s, {:.0} MB/s of values ({VALUE_BYTES} B values, {BATCH_RECORDS} per batch, one thread)",
        rate / 1e6,
        rate * VALUE_BYTES as f64 / 1e6
    );
}

/// The batch as the runtime hands it over (`process_batch`).
fn one_buffer(records: &[InputRecord]) -> InputBatch {
    let mut batch = InputBatch::new(0);
    for record in records {
        batch.push_record(record);
    }
    batch
}

fn json_values() -> Vec<Vec<u8>> {
    (0..BATCH_RECORDS)
        .map(|i| {
            let status = if i % 2 == 0 { "shipped" } else { "pending" };
            format!(r#"{{"id":{i},"status":"{status}","customer":{{"country":"DE","tier":"gold"}},"amount":12.5}}"#).into_bytes()
        })
        .collect()
}

fn json_filter(budget: Duration, with_native: bool) {
    let values = json_values();
    let config = [("field", "status"), ("equals", "shipped")];
    let mean_bytes = values.iter().map(Vec::len).sum::<usize>() / values.len();

    // Natively: the plugin's own init and run, the per-batch copies a host would make (inputs into
    // records, kept records out of the writer), no boundary.
    let filter = json_filter::Filter::from_config(&sluice::Config::from_pairs(config)).unwrap();
    let mut native = || {
        let mut writer = sluice::Writer::new(["out"]);
        for (offset, value) in values.iter().enumerate() {
            let record = sluice::Record::new(value.clone()).with_position(0, offset as i64);
            json_filter::run(&filter, record, &mut writer).unwrap();
        }
        writer.len()
    };

    let engine = throughput_engine();
    let (instance_config, _) = instance_config(&config);
    let mut instance = engine.load_transform(&guest("json-filter")).unwrap().instantiate(instance_config, out()).unwrap();
    let batch: Vec<InputRecord> = values
        .iter()
        .enumerate()
        .map(|(offset, value)| InputRecord {
            key: None,
            value: Some(value.clone()),
            headers: Vec::new(),
            timestamp_ms: 0,
            partition: 0,
            offset: offset as i64,
        })
        .collect();
    let encoded = one_buffer(&batch);
    assert_eq!(native(), BATCH_RECORDS / 2);
    assert_eq!(instance.process(&batch).unwrap().len(), BATCH_RECORDS / 2);
    assert_eq!(instance.process_batch(encoded.all()).unwrap().len(), BATCH_RECORDS / 2);

    // The three take turns in short slices, so that the VM's speed, which drifts by tens of percent
    // within a minute, moves them alike; each round gives one ratio, and the medians are reported.
    let slice = Duration::from_millis(250);
    let rounds = ((budget.as_secs_f64() / slice.as_secs_f64()) as usize).max(3);
    let (mut native_rates, mut record_rates, mut buffer_rates) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        if with_native {
            native_rates.push(throughput(slice, BATCH_RECORDS, &mut native));
        }
        record_rates.push(throughput(slice, BATCH_RECORDS, || instance.process(&batch).unwrap().len()));
        buffer_rates.push(throughput(slice, BATCH_RECORDS, || instance.process_batch(encoded.all()).unwrap().len()));
    }
    let median = |mut xs: Vec<f64>| {
        xs.sort_by(f64::total_cmp);
        xs.get(xs.len() / 2).copied().unwrap_or(f64::NAN)
    };
    let ratios = |wasm: &[f64]| median(native_rates.iter().zip(wasm).map(|(n, w)| n / w).collect());
    let (record_ratio, buffer_ratio) = (ratios(&record_rates), ratios(&buffer_rates));
    let native = median(native_rates.clone());
    for (how, rates, ratio) in [("records", record_rates, record_ratio), ("one buffer", buffer_rates, buffer_ratio)] {
        println!(
            "json-filter ({mean_bytes} B JSON values, half kept, medians of {rounds} interleaved rounds): native {:.2} M records/s, wasm ({how}) {:.2} M records/s; wasm time / native time = {ratio:.2}",
            native / 1e6,
            median(rates) / 1e6,
        );
    }
}

fn deploy() {
    for name in ["identity", "fixture-bulky"] {
        deploy_one(name);
    }
}

fn deploy_one(name: &str) {
    let bytes = guest(name);
    let median = |mut samples: Vec<Duration>| {
        samples.sort();
        samples[samples.len() / 2]
    };
    let mut baseline = Vec::new();
    let mut optimized = Vec::new();
    let mut compiled = Vec::new();
    let mut cached = Vec::new();
    for _ in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let config = EngineConfig { cache_dir: Some(dir.path().to_owned()), ..EngineConfig::default() };
        // Tiered (the default): a running instance on Winch's code, then the wait for Cranelift's.
        let engine = Engine::new(config.clone()).unwrap();
        let started = Instant::now();
        let module = engine.load_transform(&bytes).unwrap();
        let instance = module.instantiate(instance_config(&[]).0, out()).unwrap();
        baseline.push(started.elapsed());
        assert_eq!(instance.tier(), Tier::Baseline);
        module.component().wait_optimized();
        optimized.push(started.elapsed());
        drop((instance, module, engine));
        // Cranelift only, in the caller (what a cold deploy cost before tiering).
        let engine = Engine::new(EngineConfig { compilers: Compilers::Optimized, ..EngineConfig::default() }).unwrap();
        let started = Instant::now();
        let module = engine.load_transform(&bytes).unwrap();
        drop(module.instantiate(instance_config(&[]).0, out()).unwrap());
        compiled.push(started.elapsed());
        // A restart: the tier-up above cached Cranelift's code.
        let engine = Engine::new(config).unwrap();
        let started = Instant::now();
        let module = engine.load_transform(&bytes).unwrap();
        drop(module.instantiate(instance_config(&[]).0, out()).unwrap());
        cached.push(started.elapsed());
        assert!(module.cache_hit());
    }
    println!(
        "deploy of {name} ({:.2} MB file, {:.2} MB of code), medians of 5: tiered: running on Winch's code after {:.0} ms, \
         Cranelift's ready after {:.0} ms; Cranelift only: compile + check + instantiate {:.0} ms; from the cache {:.1} ms",
        bytes.len() as f64 / 1e6,
        common::code_bytes(&bytes) as f64 / 1e6,
        median(baseline).as_secs_f64() * 1e3,
        median(optimized).as_secs_f64() * 1e3,
        median(compiled).as_secs_f64() * 1e3,
        median(cached).as_secs_f64() * 1e3
    );
}
