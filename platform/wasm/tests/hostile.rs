//! Hostile modules: each must be stopped with a clear error while the host — and a well-behaved
//! instance beside it — keeps running.

mod common;

use std::time::{Duration, Instant};

use common::{engine, guest, input, instance_config, load, out};
use sluice_wasm::{Grants, Limits, LogLevel, PluginError, World};

fn hostile(engine: &sluice_wasm::Engine, mode: &str, limits: Limits) -> sluice_wasm::TransformInstance {
    let (mut config, _) = instance_config(&[("mode", mode)]);
    config.limits = limits;
    load(engine, "fixture-hostile").instantiate(config, out()).unwrap()
}

fn quick_limits() -> Limits {
    Limits { memory_bytes: 32 << 20, cpu_ms_per_call: 200 }
}

#[test]
fn garbage_bytes_core_modules_and_truncated_components_are_invalid_modules() {
    let engine = engine();
    let cases: [(&[u8], &str); 4] = [
        (b"", "too short to be WebAssembly"),
        (b"this is not wasm at all", "not WebAssembly"),
        (b"\0asm\x01\0\0\0", "a core WebAssembly module, not a component"),
        (&guest("identity")[..4096], "invalid module"),
    ];
    for (bytes, expected) in cases {
        match engine.load_transform(bytes) {
            Err(error @ PluginError::InvalidModule(_)) => assert!(error.to_string().contains(expected), "{error}"),
            Err(other) => panic!("expected InvalidModule for {expected:?}, got {other:?}"),
            Ok(_) => panic!("garbage loaded: {expected:?}"),
        }
    }
}

#[test]
fn a_component_of_another_world_is_refused_at_load() {
    let error = engine().load_transform(&guest("fixture-wrong-world")).err().expect("must be refused");
    assert!(matches!(error, PluginError::WrongWorld(_)), "{error:?}");
    assert!(error.to_string().contains("sluice:plugin/transformer@0.1.0"), "{error}");
}

#[test]
fn inspect_names_the_world_of_each_component_and_explains_a_component_of_none() {
    let engine = engine();
    for name in ["identity", "json-filter", "fixture-hostile", "fixture-raw-bad-output"] {
        let component = engine.inspect(&guest(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(component.worlds(), [World::Transform], "{name}");
        // The inspected component becomes a typed module without compiling again.
        assert_eq!(component.transform().unwrap().digest(), component.digest());
    }
    let error = engine.inspect(&guest("fixture-wrong-world")).err().expect("of no world");
    assert!(matches!(error, PluginError::WrongWorld(_)), "{error:?}");
    let message = error.to_string();
    assert!(message.contains("of no world this host runs"), "{message}");
    assert!(message.contains("a transform exports `sluice:plugin/transformer@0.1.0`"), "{message}");
    assert!(message.contains("this component exports `process`"), "{message}");
    assert!(engine.compile(&guest("fixture-wrong-world")).unwrap().worlds().is_empty());
    assert_eq!(World::from_name("transform"), Some(World::Transform));
    assert_eq!(World::from_name("source"), Some(World::Source));
    assert_eq!(World::from_name("sink"), Some(World::Sink));
    assert_eq!(World::from_name("mirror-policy"), Some(World::MirrorPolicy));
    assert_eq!(World::from_name("replicator"), None);
}

#[test]
fn the_future_version_fixture_is_the_real_wit_with_only_the_version_bumped() {
    let root = common::workspace_root();
    let real = std::fs::read_to_string(root.join("sdk/wit/plugin.wit")).unwrap();
    let fixture = std::fs::read_to_string(root.join("platform/wasm/fixtures/future-version/wit/plugin.wit")).unwrap();
    let expected = real.replace("package sluice:plugin@0.1.0;", "package sluice:plugin@0.2.0;");
    assert_ne!(expected, real, "sdk/wit changed version: update WIT_VERSION and this fixture");
    assert_eq!(fixture, expected, "regenerate the fixture: sed 's/@0.1.0;/@0.2.0;/' sdk/wit/plugin.wit");
}

#[test]
fn a_component_built_against_the_next_minor_version_is_refused() {
    let error = engine().load_transform(&guest("fixture-future-version")).err().expect("must be refused");
    assert!(matches!(error, PluginError::WrongWorld(_)), "{error:?}");
    assert!(error.to_string().contains("sluice:plugin/transformer@0.1.0"), "{error}");
}

#[test]
fn an_instance_that_outlives_its_module_and_engine_is_still_interrupted() {
    // Regression: the epoch ticker stopped with the last `Engine` handle, and an instance does not
    // hold its module, so an instance kept after its module was dropped could loop forever.
    let mut instance = {
        let engine = engine();
        hostile(&engine, "loop", quick_limits())
    };
    assert_eq!(instance.process(&[input(b"x", 0)]).unwrap_err(), PluginError::CpuTimeout { limit_ms: 200 });
}

#[test]
fn an_infinite_loop_is_interrupted_at_the_cpu_limit_and_poisons_the_instance() {
    let engine = engine();
    let mut instance = hostile(&engine, "loop", quick_limits());
    let started = Instant::now();
    let error = instance.process(&[input(b"x", 0)]).unwrap_err();
    let elapsed = started.elapsed();
    assert_eq!(error, PluginError::CpuTimeout { limit_ms: 200 });
    assert!(elapsed >= Duration::from_millis(200) && elapsed < Duration::from_secs(3), "interrupted after {elapsed:?}");
    assert!(instance.poisoned().is_some());
    assert!(matches!(instance.process(&[input(b"x", 1)]), Err(PluginError::Poisoned(_))));
}

#[test]
fn a_loop_in_init_fails_instantiation_with_a_timeout() {
    let engine = engine();
    let (mut config, _) = instance_config(&[("mode", "loop-in-init")]);
    config.limits = quick_limits();
    let error = load(&engine, "fixture-hostile").instantiate(config, out()).err().unwrap();
    assert_eq!(error, PluginError::CpuTimeout { limit_ms: 200 });
}

#[test]
fn a_guest_sleeping_for_an_hour_is_stopped_at_the_cpu_bound() {
    // Regression (hostile modules, item 14): `std::thread::sleep` is a WASI clock wait that blocks
    // in host code, where epoch interruption cannot fire, so it held the runner's thread for as long
    // as the guest asked. Every WASI wait now gives up when the call's budget is spent.
    let engine = engine();
    let mut instance = hostile(&engine, "sleep", quick_limits());
    let started = Instant::now();
    let error = instance.process(&[input(b"x", 0)]).unwrap_err();
    let elapsed = started.elapsed();
    assert_eq!(error, PluginError::CpuTimeout { limit_ms: 200 });
    assert!(elapsed >= Duration::from_millis(190) && elapsed < Duration::from_secs(3), "stopped after {elapsed:?}");
    assert!(matches!(instance.process(&[input(b"x", 1)]), Err(PluginError::Poisoned(_))));

    // A short sleep inside the budget is allowed (and charged).
    let mut napping = hostile(&engine, "sleep-briefly", quick_limits());
    assert_eq!(napping.process(&[input(b"x", 0)]).unwrap().len(), 1);
}

#[test]
fn a_sleep_in_init_fails_instantiation_at_the_cpu_bound() {
    let engine = engine();
    let (mut config, _) = instance_config(&[("mode", "sleep-in-init")]);
    config.limits = quick_limits();
    let started = Instant::now();
    let error = load(&engine, "fixture-hostile").instantiate(config, out()).err().unwrap();
    assert_eq!(error, PluginError::CpuTimeout { limit_ms: 200 });
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
}

#[test]
fn run_with_watchdog_gives_up_on_an_init_that_outlasts_it() {
    let engine = engine();
    let module = load(&engine, "fixture-hostile");
    // The guest may run 5 s by its own limits; the deploy path will not wait that long.
    let (mut config, _) = instance_config(&[("mode", "loop-in-init")]);
    config.limits = Limits { memory_bytes: 32 << 20, cpu_ms_per_call: 5_000 };
    let slow = module.clone();
    let started = Instant::now();
    let error = sluice_wasm::run_with_watchdog("trial-init", Duration::from_millis(300), move || slow.instantiate(config, out()))
        .err()
        .expect("the watchdog fires first");
    assert_eq!(error, PluginError::Watchdog { limit_ms: 300 });
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
    assert_eq!(error.to_string(), "did not finish within 300 ms");

    // Work that finishes in time hands its result back.
    let (config, _) = instance_config(&[]);
    let mut instance =
        sluice_wasm::run_with_watchdog("trial-init", Duration::from_secs(30), move || module.instantiate(config, out())).unwrap();
    assert_eq!(instance.process(&[input(b"x", 0)]).unwrap().len(), 1);
}

#[test]
fn a_guest_error_says_which_record_of_the_batch_failed() {
    let engine = engine();
    let mut instance = hostile(&engine, "fail-on-bad", quick_limits());
    let batch = [input(b"ok", 10), input(b"ok", 11), input(b"bad", 12), input(b"ok", 13)];
    match instance.process(&batch) {
        Err(PluginError::GuestError { world: World::Transform, message, record_index: Some(2) }) => {
            assert_eq!(message, "record at partition 0 offset 12: mode=fail-on-bad: offset 12 is bad");
        }
        other => panic!("expected a guest error at record 2, got {other:?}"),
    }
    // Not left over from one call to the next: a clean batch, then a failure at the first record.
    assert_eq!(instance.process(&batch[..2]).unwrap().len(), 2);
    let error = instance.process(&[input(b"bad", 20)]).unwrap_err();
    assert!(matches!(error, PluginError::GuestError { record_index: Some(0), .. }), "{error:?}");
}

#[test]
fn a_memory_bomb_hits_the_cap() {
    let engine = engine();
    let mut instance = hostile(&engine, "memory-bomb", quick_limits());
    match instance.process(&[input(b"x", 0)]) {
        Err(PluginError::OutOfMemory { limit_bytes, requested_bytes }) => {
            assert_eq!(limit_bytes, 32 << 20);
            assert!(requested_bytes > limit_bytes);
        }
        other => panic!("expected OutOfMemory, got {other:?}"),
    }
    assert!(instance.poisoned().unwrap().contains("memory limit exceeded"));
}

#[test]
fn a_panic_is_a_trap_that_carries_the_panic_message() {
    let engine = engine();
    let mut instance = hostile(&engine, "panic", quick_limits());
    let error = instance.process(&[input(b"x", 41)]).unwrap_err();
    assert!(matches!(error, PluginError::Trap(_)), "{error:?}");
    assert!(error.to_string().contains("mode=panic: boom at offset 41"), "{error}");
    assert!(matches!(instance.process(&[input(b"x", 42)]), Err(PluginError::Poisoned(_))));
}

#[test]
fn a_stack_overflow_is_a_trap() {
    let engine = engine();
    let error = hostile(&engine, "stack-overflow", quick_limits()).process(&[input(b"x", 0)]).unwrap_err();
    assert!(matches!(error, PluginError::Trap(_)), "{error:?}");
    assert!(error.to_string().contains("stack"), "{error}");
}

#[test]
fn malformed_output_is_refused() {
    let engine = engine();
    // The SDK refuses an oversized record itself, naming the input record...
    let error = hostile(&engine, "oversized-record", quick_limits()).process(&[input(b"x", 0)]).unwrap_err();
    assert!(matches!(error, PluginError::GuestError { record_index: Some(0), .. }), "{error:?}");
    assert!(error.to_string().contains("an output record of 1048577 bytes"), "{error}");
    // ...and the host refuses one from a guest that does not check.
    let (config, _) = instance_config(&[("mode", "oversized")]);
    let mut raw = load(&engine, "fixture-raw-bad-output").instantiate(config, out()).unwrap();
    let error = raw.process(&[input(b"x", 0)]).unwrap_err();
    assert_eq!(error, PluginError::MalformedOutput("record 0 is 1048577 bytes (key, value and headers); the limit is 1048576".into()));

    let error = hostile(&engine, "too-many-records", quick_limits()).process(&[input(b"x", 0)]).unwrap_err();
    assert!(error.to_string().contains("100001 records from one batch"), "{error}");

    let (config, _) = instance_config(&[]);
    let mut raw = load(&engine, "fixture-raw-bad-output").instantiate(config, out()).unwrap();
    let error = raw.process(&[input(b"x", 0)]).unwrap_err();
    assert_eq!(error, PluginError::MalformedOutput("record 0 names output 7 but the transform has 1 output topics".into()));
}

#[test]
fn guest_errors_and_refused_config_are_reported_with_the_guests_message() {
    let engine = engine();
    let error = hostile(&engine, "guest-error", quick_limits()).process(&[input(b"x", 3)]).unwrap_err();
    assert_eq!(
        error,
        PluginError::GuestError {
            world: World::Transform,
            message: "record at partition 0 offset 3: mode=guest-error: cannot handle offset 3".into(),
            record_index: Some(0),
        }
    );
    assert_eq!(error.to_string(), "transform error: record at partition 0 offset 3: mode=guest-error: cannot handle offset 3");
    let (config, _) = instance_config(&[("mode", "reject-config")]);
    let error = load(&engine, "fixture-hostile").instantiate(config, out()).err().unwrap();
    assert_eq!(error, PluginError::InitFailed("init: mode=reject-config: this transform refuses to start".into()));
}

#[test]
fn log_floods_are_capped_per_call() {
    let engine = engine();
    let (config, logs) = instance_config(&[("mode", "log-flood")]);
    let mut instance = load(&engine, "fixture-hostile").instantiate(config, out()).unwrap();
    assert_eq!(instance.process(&[input(b"x", 0)]).unwrap().len(), 1);
    let lines = logs.lines();
    assert_eq!(lines.len(), sluice_wasm::LOG_MESSAGES_PER_CALL_MAX + 1);
    assert_eq!(lines[0], (LogLevel::Info, "line 0".to_owned()));
    assert_eq!(lines.last().unwrap(), &(LogLevel::Warn, "744 log messages dropped (limit 256 per call)".to_owned()));
}

#[test]
fn stdout_and_stderr_are_discarded_without_limit() {
    let engine = engine();
    // 10 000 writes take ~0.1 s on a loaded machine: a roomy CPU bound keeps this about the sink.
    let mut instance = hostile(&engine, "stderr-flood", Limits { memory_bytes: 32 << 20, cpu_ms_per_call: 2_000 });
    assert_eq!(instance.process(&[input(b"x", 0)]).unwrap().len(), 1);
    assert_eq!(instance.process(&[input(b"x", 1)]).unwrap().len(), 1);
}

#[test]
fn the_sandbox_grants_no_environment_or_filesystem_unless_asked() {
    let engine = engine();
    let module = load(&engine, "fixture-hostile");
    let (config, _) = instance_config(&[("mode", "probe-sandbox")]);
    let output = module.instantiate(config, out()).unwrap().process(&[input(b"x", 0)]).unwrap();
    assert_eq!(output[0].value.as_deref(), Some(&b""[..]), "no environment variables");
    let fs = String::from_utf8(output[1].value.clone().unwrap()).unwrap();
    assert!(fs.starts_with("error:"), "no filesystem: {fs}");

    let (mut config, _) = instance_config(&[("mode", "probe-sandbox")]);
    config.grants = Grants { env: vec![("REGION".into(), "eu".into())], ..Grants::default() };
    let output = module.instantiate(config, out()).unwrap().process(&[input(b"x", 0)]).unwrap();
    assert_eq!(output[0].value.as_deref(), Some(&b"REGION=eu"[..]));
}

#[test]
fn a_read_write_directory_grant_lets_the_guest_write_there_and_only_there() {
    let engine = engine();
    let module = load(&engine, "fixture-hostile");
    let dir = tempfile::tempdir().unwrap();
    let write = |grants: Grants| {
        let (mut config, _) = instance_config(&[("mode", "write-file")]);
        config.grants = grants;
        let output = module.instantiate(config, out()).unwrap().process(&[input(b"hello", 0)]).unwrap();
        String::from_utf8(output[0].value.clone().unwrap()).unwrap()
    };
    let mount = (dir.path().to_owned(), "/data".to_owned());
    assert!(write(Grants::default()).starts_with("error:"));
    assert!(write(Grants { read_only_dirs: vec![mount.clone()], ..Grants::default() }).starts_with("error:"));
    assert!(!dir.path().join("written.txt").exists());
    assert_eq!(write(Grants { read_write_dir: Some(mount), ..Grants::default() }), "ok");
    assert_eq!(std::fs::read(dir.path().join("written.txt")).unwrap(), b"hello");
}

#[test]
fn a_good_instance_keeps_running_beside_hostile_ones() {
    let engine = engine();
    let identity = load(&engine, "identity");
    let (config, _) = instance_config(&[]);
    let mut good = identity.instantiate(config, out()).unwrap();
    let batch: Vec<_> = (0..100).map(|i| input(&[7u8; 100], i)).collect();

    let hostile_engine = engine.clone();
    let hostile_threads: Vec<_> = ["loop", "memory-bomb", "panic", "stack-overflow"]
        .into_iter()
        .map(|mode| {
            let engine = hostile_engine.clone();
            std::thread::spawn(move || {
                let limits = Limits { memory_bytes: 32 << 20, cpu_ms_per_call: 500 };
                hostile(&engine, mode, limits).process(&[input(b"x", 0)]).unwrap_err()
            })
        })
        .collect();
    // While they misbehave, the good instance keeps transforming on this thread.
    let deadline = Instant::now() + Duration::from_millis(700);
    let mut batches = 0;
    while Instant::now() < deadline {
        assert_eq!(good.process(&batch).unwrap().len(), 100);
        batches += 1;
    }
    let errors: Vec<PluginError> = hostile_threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(matches!(errors[0], PluginError::CpuTimeout { .. }));
    assert!(matches!(errors[1], PluginError::OutOfMemory { .. }));
    assert!(matches!(errors[2], PluginError::Trap(_)));
    assert!(matches!(errors[3], PluginError::Trap(_)));
    assert!(batches > 10, "the good instance only ran {batches} batches");
    // And after them: the good instance, and new instances of every module, still work.
    assert_eq!(good.process(&batch).unwrap().len(), 100);
    assert_eq!(hostile(&engine, "identity", quick_limits()).process(&batch).unwrap().len(), 100);
}

#[test]
fn limits_change_between_calls_without_reinstantiating() {
    let engine = engine();
    let identity = load(&engine, "identity");
    let (mut config, _) = instance_config(&[]);
    config.limits = Limits { memory_bytes: 4 << 20, cpu_ms_per_call: 1_000 };
    let mut instance = identity.instantiate(config, out()).unwrap();
    // 8 MiB of values cannot be lowered into a 4 MiB guest...
    let big: Vec<_> = (0..8).map(|i| input(&vec![1u8; 1 << 20], i)).collect();
    instance.set_limits(Limits { memory_bytes: 64 << 20, cpu_ms_per_call: 1_000 }).unwrap();
    // ...but after raising the cap, the next call has room.
    assert_eq!(instance.process(&big).unwrap().len(), 8);
    let held = instance.memory_bytes();
    assert!(held > 8 << 20 && held <= 64 << 20, "the guest holds {held} bytes");

    // Lowering the CPU bound takes effect on the next call too.
    let mut looping = hostile(&engine, "loop", Limits { memory_bytes: 32 << 20, cpu_ms_per_call: 60_000 });
    looping.set_limits(Limits { memory_bytes: 32 << 20, cpu_ms_per_call: 50 }).unwrap();
    let started = Instant::now();
    assert_eq!(looping.process(&[input(b"x", 0)]).unwrap_err(), PluginError::CpuTimeout { limit_ms: 50 });
    assert!(started.elapsed() < Duration::from_secs(2));

    // Lowering the memory cap below what a new batch needs stops that batch.
    let (mut config, _) = instance_config(&[]);
    config.limits = Limits { memory_bytes: 64 << 20, cpu_ms_per_call: 1_000 };
    let mut shrinking = identity.instantiate(config, out()).unwrap();
    shrinking.set_limits(Limits { memory_bytes: 4 << 20, cpu_ms_per_call: 1_000 }).unwrap();
    assert!(matches!(shrinking.process(&big), Err(PluginError::OutOfMemory { limit_bytes, .. }) if limit_bytes == 4 << 20));
}

#[test]
fn out_of_range_requests_are_refused_before_touching_the_guest() {
    let engine = engine();
    let module = load(&engine, "identity");
    let (mut config, _) = instance_config(&[]);
    config.limits.memory_bytes = 0;
    assert!(matches!(module.instantiate(config, out()), Err(PluginError::InvalidRequest(_))));
    let (config, _) = instance_config(&[]);
    assert!(matches!(module.instantiate(config, Vec::new()), Err(PluginError::InvalidRequest(_))));
    let (config, _) = instance_config(&[]);
    let mut instance = module.instantiate(config, out()).unwrap();
    assert!(instance.set_limits(Limits { memory_bytes: 1 << 20, cpu_ms_per_call: 0 }).is_err());
    let too_many: Vec<_> = (0..=sluice_wasm::INPUT_RECORDS_PER_CALL_MAX as i64).map(|i| input(b"", i)).collect();
    assert!(matches!(instance.process(&too_many), Err(PluginError::InvalidRequest(_))));
}

/// What the data path sends: the batch as one buffer (`process_batch`).
fn one_buffer(records: &[sluice_wasm::InputRecord]) -> sluice_wasm::InputBatch {
    let mut batch = sluice_wasm::InputBatch::new(0);
    for record in records {
        batch.push_record(record);
    }
    batch
}

#[test]
fn hostile_guests_called_with_one_buffer_get_the_same_answers() {
    let engine = engine();
    let batch = one_buffer(&[input(b"x", 3)]);
    let error = hostile(&engine, "oversized-record", quick_limits()).process_batch(batch.all()).unwrap_err();
    assert!(matches!(error, PluginError::GuestError { record_index: Some(0), .. }), "{error:?}");
    assert!(error.to_string().contains("an output record of 1048577 bytes"), "{error}");
    let error = hostile(&engine, "too-many-records", quick_limits()).process_batch(batch.all()).unwrap_err();
    assert!(error.to_string().contains("more than 100000 records from one batch"), "{error}");
    let error = hostile(&engine, "guest-error", quick_limits()).process_batch(batch.all()).unwrap_err();
    assert_eq!(
        error,
        PluginError::GuestError {
            world: World::Transform,
            message: "record at partition 0 offset 3: mode=guest-error: cannot handle offset 3".into(),
            record_index: Some(0),
        }
    );
    // Aliased output (every record claims the same 1 MiB of guest memory): with one buffer the SDK
    // copies each record into it inside the guest, so the guest's own memory cap stops it.
    let error = hostile(&engine, "aliased-output", quick_limits()).process_batch(batch.all()).unwrap_err();
    assert!(matches!(error, PluginError::OutOfMemory { .. } | PluginError::Trap(_)), "{error:?}");
    for mode in ["loop", "memory-bomb", "panic", "stack-overflow"] {
        let mut instance = hostile(&engine, mode, quick_limits());
        let error = instance.process_batch(batch.all()).unwrap_err();
        assert!(instance.poisoned().is_some(), "{mode}: {error}");
        assert!(matches!(instance.process_batch(batch.all()), Err(PluginError::Poisoned(_))), "{mode}");
    }
}

#[test]
fn malformed_encoded_output_is_refused_and_leaves_the_instance_usable() {
    let engine = engine();
    let batch = one_buffer(&[input(b"x", 0)]);
    let cases = [
        ("index", "record 0 names output 7 but the transform has 1 output topics"),
        ("truncated", "output record 0 (at byte 0): bad key length"),
        ("negative-length", "output record 0 (at byte 0): bad key length"),
        ("header-count", "record 0 has 4294967295 headers; the limit is 1024"),
        ("past-end", "output record 0 (at byte 0): bad value length"),
        ("oversized", "record 0 is 1048577 bytes (key, value and headers); the limit is 1048576"),
    ];
    for (mode, message) in cases {
        let (config, _) = instance_config(&[("mode", mode)]);
        let mut raw = load(&engine, "fixture-raw-bad-output").instantiate(config, out()).unwrap();
        assert!(raw.batch_abi());
        assert_eq!(raw.process_batch(batch.all()).unwrap_err(), PluginError::MalformedOutput(message.into()), "{mode}");
        assert!(raw.poisoned().is_none(), "{mode}");
    }
}
