//! The compiled-module cache: a second engine on the same directory (a broker restart) loads without
//! compiling, and a damaged cache file costs a recompile, never an error.

mod common;

use common::{guest, input, instance_config};
use sluice_wasm::{Engine, EngineConfig};

#[test]
fn a_restart_loads_the_compiled_module_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = guest("json-filter");
    let config = EngineConfig { cache_dir: Some(dir.path().to_owned()), ..EngineConfig::default() };

    let first = Engine::new(config.clone()).unwrap().load(&bytes).unwrap();
    assert!(!first.cache_hit());
    let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].starts_with(first.digest()) && files[0].ends_with(".cwasm"), "{files:?}");

    let restarted = Engine::new(config.clone()).unwrap();
    let second = restarted.load(&bytes).unwrap();
    assert!(second.cache_hit());
    eprintln!("compile + check: {:?}; cached load + check: {:?}", first.load_time(), second.load_time());
    assert!(second.load_time() < first.load_time(), "cached {:?} vs compiled {:?}", second.load_time(), first.load_time());

    let (instance_config, _) = instance_config(&[("field", "a")]);
    let mut instance = second.instantiate(instance_config).unwrap();
    assert_eq!(instance.process(&[input(br#"{"a":1}"#, 0), input(b"{}", 1)]).unwrap().len(), 1);

    // A damaged file is discarded and the module compiled again.
    std::fs::write(dir.path().join(&files[0]), b"damaged").unwrap();
    let third = Engine::new(config).unwrap().load(&bytes).unwrap();
    assert!(!third.cache_hit());
    assert!(std::fs::read(dir.path().join(&files[0])).unwrap().len() > 1000, "rewritten");
}

#[test]
fn a_component_with_two_megabytes_of_code_deploys_and_runs() {
    let bytes = guest("fixture-bulky");
    assert!(common::code_bytes(&bytes) > 1_900_000, "the fixture should carry ~2 MB of code");
    let engine = Engine::new(EngineConfig::default()).unwrap();
    // How long this takes is a benchmark (BENCHMARKS.md, `benches/transform.rs`), not a test: a
    // timed assertion fails on a loaded machine and proves nothing on an idle one.
    let module = engine.load(&bytes).unwrap();
    let (instance_config, _) = instance_config(&[]);
    let mut instance = module.instantiate(instance_config).unwrap();
    let output = instance.process(&[input(b"abc", 0), input(b"abc", 1)]).unwrap();
    assert_eq!(output.len(), 2);
    assert_ne!(output[0].headers[0].value, output[1].headers[0].value, "different generated functions ran");
}
