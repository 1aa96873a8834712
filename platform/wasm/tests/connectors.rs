//! The `source` and `sink` worlds: the first-party file connectors and a hostile source, built for
//! wasm32-wasip2 and run through `SourceModule` / `SinkModule` — world detection, `describe`, the
//! directory grant (exactly the configured file's directory), positions, and every way a hostile
//! source fails staying inside its instance with a typed error.

mod common;

use std::time::{Duration, Instant};

use common::{engine, guest, instance_config};
use sluice_wasm::{
    ConfigType, DirAccess, Grants, InputRecord, Limits, PluginError, SinkModule, SinkRecord, SourceModule, SourcePosition, World,
};

fn source(name: &str) -> SourceModule {
    engine().compile(&guest(name)).unwrap().source().unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn sink(name: &str) -> SinkModule {
    engine().compile(&guest(name)).unwrap().sink().unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn quick_limits() -> Limits {
    Limits { memory_bytes: 32 << 20, cpu_ms_per_call: 200 }
}

#[test]
fn connectors_are_detected_by_world_and_transforms_stay_transforms() {
    let engine = engine();
    assert_eq!(engine.inspect(&guest("file-source")).unwrap().worlds(), [World::Source]);
    assert_eq!(engine.inspect(&guest("fixture-hostile-source")).unwrap().worlds(), [World::Source]);
    assert_eq!(engine.inspect(&guest("file-sink")).unwrap().worlds(), [World::Sink]);
    assert_eq!(engine.inspect(&guest("pii-mask")).unwrap().worlds(), [World::Transform]);
    let error = engine.compile(&guest("file-sink")).unwrap().source().err().expect("a sink is no source");
    assert!(matches!(error, PluginError::WrongWorld(_)) && error.to_string().contains("sluice:plugin/source-connector@0.1.0"), "{error}");
    assert!(engine.load_transform(&guest("file-source")).is_err());
}

#[test]
fn describe_lists_the_keys_with_file_keys_marked() {
    let (config, _) = instance_config(&[]);
    let spec = source("file-source").describe(&config).unwrap();
    assert_eq!(spec.version, env!("CARGO_PKG_VERSION"));
    let keys: Vec<(&str, ConfigType, bool)> = spec.keys.iter().map(|k| (k.name.as_str(), k.type_, k.required)).collect();
    assert_eq!(keys, [("file", ConfigType::File, true), ("topic", ConfigType::String, true), ("batch.size", ConfigType::Int, false)]);
    let sink_keys: Vec<String> = sink("file-sink").describe(&config).unwrap().keys.into_iter().map(|k| k.name).collect();
    assert_eq!(sink_keys, ["file"]);
}

#[test]
fn the_file_source_reads_lines_in_its_granted_directory_and_resumes_from_a_position() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("in.txt");
    std::fs::write(&path, "alpha\nbeta\ngamma\n").unwrap();
    let file = path.to_str().unwrap();
    let module = source("file-source");
    let (mut config, _) = instance_config(&[("file", file), ("topic", "lines"), ("batch.size", "2")]);
    config.grants = Grants::directory_of(&path, DirAccess::ReadOnly).unwrap();
    let mut instance = module.instantiate(config.clone(), &[]).unwrap();
    let first = instance.poll().unwrap();
    let values: Vec<&[u8]> = first.records.iter().map(|r| r.value.as_deref().unwrap()).collect();
    assert_eq!(values, [&b"alpha"[..], b"beta"]);
    assert!(first.records.iter().all(|r| r.topic == "lines" && r.partition.is_none()));
    let position = first.positions[0].clone();
    assert_eq!(serde_json::from_str::<serde_json::Value>(&position.offset).unwrap(), serde_json::json!({"position": 11}));

    let mut resumed = module.instantiate(config, std::slice::from_ref(&position)).unwrap();
    let rest = resumed.poll().unwrap();
    assert_eq!(rest.records.iter().map(|r| r.value.clone().unwrap()).collect::<Vec<_>>(), [b"gamma".to_vec()]);
    let idle = resumed.poll().unwrap();
    assert!(idle.records.is_empty() && idle.idle_ms > 0, "{idle:?}");
}

#[test]
fn a_connector_reaches_exactly_its_directory() {
    let granted = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let module = sink("file-sink");
    // Configured for a file outside the granted directory: the guest cannot open it.
    let outside = elsewhere.path().join("out.txt");
    let (mut config, _) = instance_config(&[("file", outside.to_str().unwrap())]);
    config.grants = Grants::directory_of(&granted.path().join("out.txt"), DirAccess::ReadWrite).unwrap();
    let error = module.instantiate(config).err().expect("outside the grant");
    assert!(matches!(error, PluginError::ConnectorError { world: World::Sink, .. }), "{error:?}");
    assert!(!outside.exists());
    // Without any grant, neither.
    let (config, _) = instance_config(&[("file", granted.path().join("out.txt").to_str().unwrap())]);
    assert!(module.instantiate(config).is_err());
    // Grants need an absolute path in an existing directory.
    assert!(Grants::directory_of(std::path::Path::new("relative.txt"), DirAccess::ReadOnly).is_err());
    assert!(Grants::directory_of(&elsewhere.path().join("missing/x.txt"), DirAccess::ReadOnly).is_err());
}

#[test]
fn the_file_sink_appends_each_batch_as_lines() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.txt");
    let (mut config, _) = instance_config(&[("file", path.to_str().unwrap())]);
    config.grants = Grants::directory_of(&path, DirAccess::ReadWrite).unwrap();
    let mut instance = sink("file-sink").instantiate(config).unwrap();
    let record = |topic: u32, value: Option<&str>, offset: i64| SinkRecord {
        topic,
        record: InputRecord {
            key: None,
            value: value.map(|v| v.as_bytes().to_vec()),
            headers: Vec::new(),
            timestamp_ms: 0,
            partition: 0,
            offset,
        },
    };
    let topics = vec!["a".to_owned(), "b".to_owned()];
    instance.put(&topics, &[record(0, Some("one"), 0), record(1, None, 0)]).unwrap();
    instance.put(&topics, &[record(0, Some("two"), 1)]).unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "one\nnull\ntwo\n");
    let error = instance.put(&topics, &[record(2, Some("x"), 2)]).unwrap_err();
    assert!(matches!(error, PluginError::InvalidRequest(_)), "a topic index outside `topics` is the caller's error: {error:?}");
}

fn hostile(mode: &str) -> Result<sluice_wasm::SourceInstance, PluginError> {
    let (mut config, _) = instance_config(&[("mode", mode)]);
    config.limits = quick_limits();
    source("fixture-hostile-source").instantiate(config, &[])
}

#[test]
fn a_hostile_source_fails_alone_with_a_typed_error() {
    let mut looping = hostile("loop").unwrap();
    let started = Instant::now();
    assert_eq!(looping.poll().unwrap_err(), PluginError::CpuTimeout { limit_ms: 200 });
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    assert!(matches!(looping.poll().unwrap_err(), PluginError::Poisoned(_)));

    let error = hostile("trap").unwrap().poll().unwrap_err();
    assert!(matches!(&error, PluginError::Trap(message) if message.contains("poll panicked on purpose")), "{error:?}");

    let error = hostile("garbage").unwrap().poll().unwrap_err();
    assert!(matches!(&error, PluginError::MalformedOutput(message) if message.contains("topic")), "{error:?}");

    let error = hostile("flaky").unwrap().poll().unwrap_err();
    assert!(matches!(&error, PluginError::ConnectorError { retriable: true, .. }), "{error:?}");

    let error = hostile("fail-init").err().expect("init refuses");
    assert!(matches!(&error, PluginError::ConnectorError { retriable: false, message, .. } if message.contains("fail-init")), "{error:?}");

    // An instance beside them is unaffected.
    let mut fine = hostile("fine").unwrap();
    assert_eq!(fine.poll().unwrap().records.len(), 1);
}

#[test]
fn positions_handed_to_init_are_bounded() {
    let too_many = vec![SourcePosition { partition: "{}".into(), offset: "{}".into() }; sluice_wasm::SOURCE_POSITIONS_PER_INIT_MAX + 1];
    let (config, _) = instance_config(&[("mode", "fine")]);
    let error = source("fixture-hostile-source").instantiate(config, &too_many).err().unwrap();
    assert!(matches!(error, PluginError::InvalidRequest(_)), "{error:?}");
}
